//! Several transfers through one bottleneck, in virtual time: the share each one gets.
//!
//! The machines are driven directly, each sender with its own receiver, over one simulated
//! link that all of them share both ways (its rate, queue and delay are
//! [`sim`](super::sim)'s): the endpoint's checks and encryption are tested there and would
//! only slow this down. Datagrams carry their seal's bytes, unencrypted, so that the
//! bottleneck sees their real size.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::Sha256;

use super::sim::{Link, Pipe};
use super::wire::{self, HEADER_LEN, TAG_LEN};
use super::{Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig};

/// Bytes of a datagram around its plaintext: the clear header and the tag.
const SEAL: usize = HEADER_LEN + TAG_LEN;

/// One transfer: its two machines and when it starts.
struct Flow {
    sender: Sender,
    receiver: Option<Receiver>,
    starts: Instant,
}

/// What a run measured: each flow's throughput, in bytes per second of virtual time, over
/// the window when all of them were running.
#[derive(Debug)]
struct Shares {
    rates: Vec<f64>,
}

impl Shares {
    /// Jain's fairness index: 1 when every flow gets the same, 1/n when one gets all.
    fn jain(&self) -> f64 {
        let sum: f64 = self.rates.iter().sum();
        let squares: f64 = self.rates.iter().map(|r| r * r).sum();
        sum * sum / (self.rates.len() as f64 * squares)
    }

    fn total(&self) -> f64 {
        self.rates.iter().sum()
    }
}

/// Runs `n` transfers big enough never to finish, the k-th starting `stagger * k` after
/// the first, over `link`; measures from `from` to `until` after the first one started.
fn share(n: usize, stagger: Duration, link: &Link, from: Duration, until: Duration) -> Shares {
    let start = Instant::now();
    let size = 1 << 40;
    let zeros = Bytes::from(vec![0u8; 1 << 20]);
    let mut flows: Vec<Flow> = (0..n)
        .map(|k| {
            let starts = start + stagger * k as u32;
            // Every flow counts ProbeRtt phases from the same instant, as the engines do
            // from the wall clock.
            let config = SenderConfig { probe_rtt_epoch: Some(start), ..SenderConfig::default() };
            let sender = Sender::new("f", size, config, 20, starts);
            Flow { sender, receiver: None, starts }
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(n as u64);
    let (mut forward, mut back) = (Pipe::default(), Pipe::default());
    let mut now = start;
    let mut measured_from: Option<Vec<u64>> = None;
    let mut out = Vec::new();
    loop {
        if measured_from.is_none() && now >= start + from {
            measured_from = Some(flows.iter().map(|f| f.sender.progress().0).collect());
        }
        if now >= start + until {
            break;
        }
        for flow in &mut flows {
            if flow.receiver.is_none() && now >= flow.starts {
                let config = ReceiverConfig::default();
                let mut receiver = Receiver::new(size, wire::DEFAULT_CHUNK_SIZE, config, now);
                receiver.accept(now, 0, Sha256::default());
                flow.receiver = Some(receiver);
            }
        }
        while let Some(datagram) = forward.pop_due(now) {
            if let Some(receiver) = flows[usize::from(datagram[0])].receiver.as_mut() {
                receiver.handle(now, wire::parse(plaintext(&datagram)).unwrap());
            }
        }
        while let Some(datagram) = back.pop_due(now) {
            let sender = &mut flows[usize::from(datagram[0])].sender;
            sender.handle(now, wire::parse(plaintext(&datagram)).unwrap());
        }
        for (k, flow) in flows.iter_mut().enumerate() {
            let Some(receiver) = flow.receiver.as_mut() else { continue };
            while let Some(range) = flow.sender.wants_data() {
                let len = (range.end - range.start) as usize;
                flow.sender.push_data(now, zeros.slice(..len));
            }
            while flow.sender.poll_event().is_some() {}
            while receiver.poll_write().is_some() {}
            while let Some(event) = receiver.poll_event() {
                assert!(matches!(event, ReceiverEvent::Verified), "flow {k}: {event:?}");
            }
            out.clear();
            out.push(k as u8);
            while flow.sender.poll_transmit(now, &mut out) {
                out.resize(out.len() + SEAL - 1, 0);
                forward.send(now, link, &mut rng, std::mem::replace(&mut out, vec![k as u8]));
            }
            while receiver.poll_transmit(now, &mut out) {
                out.resize(out.len() + SEAL - 1, 0);
                back.send(now, link, &mut rng, std::mem::replace(&mut out, vec![k as u8]));
            }
        }
        let starts = flows.iter().filter(|f| f.receiver.is_none()).map(|f| f.starts);
        let timers = flows.iter().flat_map(|f| {
            let receiver = f.receiver.as_ref().and_then(Receiver::poll_timeout);
            let sender = f.receiver.as_ref().and_then(|_| f.sender.poll_timeout());
            [sender, receiver].into_iter().flatten()
        });
        let next = [forward.next_due(), back.next_due(), Some(start + until)]
            .into_iter()
            .flatten()
            .chain(starts)
            .chain(timers)
            .min()
            .unwrap();
        now = next.max(now + Duration::from_micros(1));
        for flow in flows.iter_mut().filter(|f| f.receiver.is_some()) {
            flow.sender.handle_timeout(now);
            flow.receiver.as_mut().unwrap().handle_timeout(now);
        }
    }
    let before = measured_from.unwrap();
    let secs = (until - from).as_secs_f64();
    let rates =
        flows.iter().zip(before).map(|(f, b)| (f.sender.progress().0 - b) as f64 / secs).collect();
    Shares { rates }
}

/// The plaintext of a datagram of this harness: after the flow's byte, before the seal.
fn plaintext(datagram: &[u8]) -> &[u8] {
    &datagram[1..datagram.len() - (SEAL - 1)]
}

/// A bottleneck of `mbit` Mbit/s with a one-way delay of `delay` and 50 ms of queue, as a
/// tbf would have, on an Ethernet MTU.
fn bottleneck(mbit: f64, delay: Duration) -> Link {
    Link {
        rate: mbit * 1e6 / 8.0,
        delay,
        queue: Duration::from_millis(50),
        mtu: 1472,
        ..Link::default()
    }
}

fn mbit(shares: &Shares) -> Vec<String> {
    shares.rates.iter().map(|r| format!("{:.1}", r * 8e-6)).collect()
}

#[test]
fn four_transfers_started_apart_share_a_bottleneck_fairly() {
    // 25 Mbit/s, 20 ms round trip; each newcomer finds a queue the others built.
    let link = bottleneck(25.0, Duration::from_millis(10));
    let shares = share(4, Duration::from_secs(1), &link, secs(8), secs(20));
    assert!(shares.total() > 0.85 * link.rate, "the link is used: {:?}", mbit(&shares));
    assert!(shares.jain() >= 0.95, "Jain's index {:.3}: {:?}", shares.jain(), mbit(&shares));
}

#[test]
fn four_transfers_on_a_lan_share_it_fairly() {
    // 100 Mbit/s with a tenth of a millisecond of round trip: the queue's delay is all
    // the delay there is, so a transfer that took it for the path's would keep a window
    // many times the others' (the benchmark's 68 : 8 : 8 : 8).
    for stagger in [Duration::ZERO, Duration::from_millis(300), Duration::from_secs(1)] {
        let link = bottleneck(100.0, Duration::from_micros(50));
        let shares = share(4, stagger, &link, secs(6), secs(12));
        assert!(shares.total() > 0.85 * link.rate, "the link is used: {:?}", mbit(&shares));
        let jain = shares.jain();
        assert!(jain >= 0.95, "{stagger:?} apart: Jain's index {jain:.3}: {:?}", mbit(&shares));
    }
}

#[test]
fn random_loss_is_not_taken_for_congestion() {
    // Alone on 100 Mbit/s with a 20 ms round trip, 1 % and 5 % of datagrams lost at random:
    // a loss-based controller would crawl; this one keeps most of the link.
    for loss in [0.01, 0.05] {
        let link = Link { loss, ..bottleneck(100.0, Duration::from_millis(10)) };
        let shares = share(1, Duration::ZERO, &link, secs(3), secs(10));
        let got = shares.total() / link.rate;
        assert!(got > 0.8, "{loss} loss: {:.0} % of the link", got * 100.0);
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
