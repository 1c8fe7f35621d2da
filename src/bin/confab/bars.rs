//! One progress bar per running transfer: bytes, rate and ETA, counted from what the
//! receiver acknowledged. Drawn on stderr, and only when it is a terminal (indicatif hides
//! them otherwise).

use std::collections::HashMap;

use confab::client::format;
use confab::p2p::transfer::{TransferEvent, TransferId};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bars of the transfers under way.
#[derive(Default)]
pub struct Bars {
    multi: MultiProgress,
    bars: HashMap<TransferId, ProgressBar>,
}

impl Bars {
    /// Starts, moves or ends a bar for `event`.
    pub fn update(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::Started { transfer, resume_from, .. } => {
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let bar = self.multi.add(ProgressBar::new(transfer.size).with_style(style));
                let (arrow, name) = (transfer.direction.arrow(), format::sanitize(&transfer.name));
                bar.set_prefix(format!("{arrow} {name}"));
                bar.set_position(*resume_from);
                bar.reset_eta();
                self.bars.insert(transfer.id, bar);
            }
            TransferEvent::Progress { id, done, .. } => {
                if let Some(bar) = self.bars.get(id) {
                    bar.set_position(*done);
                }
            }
            TransferEvent::Sent { transfer, .. }
            | TransferEvent::Received { transfer, .. }
            | TransferEvent::Failed { transfer, .. } => {
                if let Some(bar) = self.bars.remove(&transfer.id) {
                    bar.finish_and_clear();
                }
            }
            TransferEvent::Offered { .. } | TransferEvent::Waiting { .. } => {}
        }
    }
}
