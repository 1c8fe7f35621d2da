//! One progress bar per running transfer: bytes, rate and ETA, counted from what the
//! receiver acknowledged.
//!
//! Two ways to draw them. Without the line editor, indicatif draws them on stderr (hidden
//! when it is not a terminal), and printed lines go out through [`Bars::suspend`] so that
//! they never land in the middle of a bar. With the line editor, every write to the terminal
//! must go through its printer (or the cursor moves under whoever else draws, and a stale
//! copy of a bar stays in the scrollback); there indicatif only keeps the count, rate and
//! ETA, and the caller draws [`Bars::lines`] through that printer.

use std::time::{Duration, Instant};

use confab::client::format;
use confab::p2p::transfer::{TransferEvent, TransferId};
use indicatif::ProgressStyle;
use indicatif::{BinaryBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget};
use unicode_width::UnicodeWidthChar;

/// How often the caller-drawn bars are redrawn for progress alone.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// The width of the bar itself, between its brackets.
const BAR_WIDTH: u64 = 30;

/// The bars of the transfers under way.
pub struct Bars {
    multi: MultiProgress,
    /// In the order they started, which is the order they are drawn in.
    bars: Vec<(TransferId, String, ProgressBar)>,
    /// When the caller was last told to redraw; `None` when indicatif draws.
    drawn_at: Option<Instant>,
}

impl Bars {
    /// Bars that indicatif draws on stderr, if it is a terminal.
    pub fn on_stderr() -> Self {
        Bars { multi: MultiProgress::new(), bars: Vec::new(), drawn_at: None }
    }

    /// Bars that only count; the caller draws [`Bars::lines`].
    pub fn drawn_by_caller() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        Bars { multi, bars: Vec::new(), drawn_at: Some(Instant::now()) }
    }

    /// Starts, moves or ends a bar for `event`; true if a caller-drawn bar should be redrawn.
    pub fn update(&mut self, event: &TransferEvent) -> bool {
        let changed = match event {
            TransferEvent::Started { transfer, resume_from, .. } => {
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let bar = self.multi.add(ProgressBar::new(transfer.size).with_style(style));
                let (arrow, name) = (transfer.direction.arrow(), format::sanitize(&transfer.name));
                let prefix = format!("{arrow} {name}");
                bar.set_prefix(prefix.clone());
                bar.set_position(*resume_from);
                bar.reset_eta();
                self.bars.push((transfer.id, prefix, bar));
                true
            }
            TransferEvent::Progress { id, done, .. } => {
                if let Some((_, _, bar)) = self.bars.iter().find(|(i, ..)| i == id) {
                    bar.set_position(*done);
                }
                self.drawn_at.is_some_and(|at| at.elapsed() >= REDRAW_EVERY)
            }
            TransferEvent::Sent { transfer, .. }
            | TransferEvent::Received { transfer, .. }
            | TransferEvent::Failed { transfer, .. } => {
                let Some(at) = self.bars.iter().position(|(i, ..)| *i == transfer.id) else {
                    return false;
                };
                let (_, _, bar) = self.bars.remove(at);
                bar.finish_and_clear();
                true
            }
            TransferEvent::Offered { .. }
            | TransferEvent::Waiting { .. }
            | TransferEvent::Rerouted { .. } => false,
        };
        if changed && self.drawn_at.is_some() {
            self.drawn_at = Some(Instant::now());
        }
        changed && self.drawn_at.is_some()
    }

    /// True if [`Bars::lines`] is the caller's to draw.
    pub fn is_drawn_by_caller(&self) -> bool {
        self.drawn_at.is_some()
    }

    /// One line per bar, each cut to fit in `columns` without wrapping.
    pub fn lines(&self, columns: usize) -> Vec<String> {
        self.bars.iter().map(|(_, prefix, bar)| fit(&line(prefix, bar), columns)).collect()
    }

    /// Runs `print` with indicatif's bars off the screen, then draws them again.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.multi.suspend(print)
    }
}

/// A bar as its template above draws it.
fn line(prefix: &str, bar: &ProgressBar) -> String {
    let (done, total) = (bar.position(), bar.length().unwrap_or(0));
    let fill = (BAR_WIDTH * done).checked_div(total).unwrap_or(BAR_WIDTH).min(BAR_WIDTH);
    let mut drawn = "=".repeat(fill as usize);
    if fill < BAR_WIDTH {
        drawn.push(if fill > 0 { '>' } else { ' ' });
        drawn.push_str(&" ".repeat((BAR_WIDTH - fill - 1) as usize));
    }
    format!(
        "{prefix} [{drawn}] {}/{} {}/s ETA {:#}",
        BinaryBytes(done),
        BinaryBytes(total),
        BinaryBytes(bar.per_sec() as u64),
        HumanDuration(bar.eta()),
    )
}

/// `text` cut to less than `columns` cells, so that it never wraps to a second row.
fn fit(text: &str, columns: usize) -> String {
    let mut room = columns.saturating_sub(1);
    text.chars()
        .take_while(|c| {
            let width = c.width().unwrap_or(0);
            let fits = width <= room;
            room = room.saturating_sub(width);
            fits
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab::p2p::transfer::{Direction, Transfer};

    fn transfer() -> Transfer {
        Transfer {
            id: 7,
            peer: "bob".into(),
            name: "clip.mp4".into(),
            size: 4 << 20,
            direction: Direction::Send,
        }
    }

    #[test]
    fn caller_drawn_bars_are_one_line_each_and_go_when_the_transfer_ends() {
        let mut bars = Bars::drawn_by_caller();
        let route = confab::p2p::transfer::Route::Direct("192.0.2.1:1".parse().unwrap());
        assert!(bars.update(&TransferEvent::Started {
            transfer: transfer(),
            resume_from: 0,
            route
        }));
        let lines = bars.lines(200);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("↑ clip.mp4 [      "), "{lines:?}");
        assert!(lines[0].contains("0 B/4.00 MiB"), "{lines:?}");
        bars.bars[0].2.set_position(2 << 20);
        assert!(bars.lines(200)[0].contains(&format!("[{}>", "=".repeat(15))));
        assert_eq!(bars.lines(20)[0].chars().count(), 19, "cut to fit the terminal");

        let sent = TransferEvent::Sent { transfer: transfer(), stats: Default::default() };
        assert!(bars.update(&sent));
        assert!(bars.lines(200).is_empty());
        assert!(!bars.update(&sent), "an unknown transfer changes nothing");
    }
}
