//! Path MTU discovery for a transfer, in the manner of DPLPMTUD (RFC 8899): start at a size
//! every path carries, then probe upward with padded datagrams that the receiver
//! acknowledges, and raise the datagram size to each one that arrives.
//!
//! The search climbs a table of the MTUs that real links have (IPv6's minimum, tunnels,
//! PPPoE, Ethernet, jumbo frames, loopback) instead of bisecting byte by byte: a probe that
//! goes unanswered [`MAX_PROBES`] times ends the search, and so does a size the local
//! interface refuses outright (`EMSGSIZE`, reported through [`Search::too_big`]). A lost
//! probe is not taken for congestion.
//!
//! The path can also shrink under a running transfer (a route change, a VPN coming up):
//! datagrams of the size in use then vanish without a word, a black hole. The sender tells
//! the search of every retransmission timeout and of every acknowledgement of data. A
//! timeout above the base size ([`Search::on_data_timeout`]) brings the size back to the
//! base one, and the search starts over once data is acknowledged again (RFC 8899's black
//! hole detection). Like the machines, it does no I/O and reads no
//! clock.

use std::time::{Duration, Instant};

/// Link MTUs worth trying, ascending: IPv6's minimum (every path carries it), common tunnel
/// sizes, PPPoE, Ethernet, jumbo frames, and the largest datagram IP can carry.
const PLATEAUS: [usize; 7] = [1280, 1380, 1420, 1492, 1500, 9000, 65_535];

/// Unanswered probes of one size before the search stops below it (RFC 8899's MAX_PROBES).
pub const MAX_PROBES: u32 = 3;

/// Bytes of UDP header under every datagram.
const UDP_HEADER: usize = 8;

/// Bytes of IP header under a datagram to a peer: 20 for IPv4, 40 for IPv6.
pub fn ip_header(peer: std::net::SocketAddr) -> usize {
    if peer.ip().to_canonical().is_ipv4() {
        20
    } else {
        40
    }
}

/// The search for the largest UDP payload (header, packet and tag) the path carries.
#[derive(Debug, Clone)]
pub struct Search {
    /// The size the search started from.
    base: usize,
    /// The largest datagram known to pass (the base one until a probe is answered).
    current: usize,
    /// Sizes still to try, ascending, all above `current`.
    candidates: Vec<usize>,
    /// Every size above the base that may be tried (not refused by the interface): what a
    /// search starts over with.
    ladder: Vec<usize>,
    /// The size fell back after a black hole and data has not been acknowledged since: no
    /// probe goes out (it would be lost with everything else in an outage).
    held: bool,
    /// Black holes found.
    black_holes: u64,
    /// The probe waiting for its answer: its size and when to give up on it.
    probe: Option<(usize, Instant)>,
    /// Unanswered probes of the first candidate.
    failures: u32,
    /// Probes sent, answered or not.
    sent: u64,
}

impl Search {
    /// A search for datagrams of at most `largest` bytes (the sender's chunk ceiling and its
    /// overhead) over IP headers of `ip_header` bytes; it starts at the size of IPv6's
    /// minimum MTU, or at `largest` if that is smaller.
    pub fn new(ip_header: usize, largest: usize) -> Self {
        let payload = |mtu: usize| mtu - ip_header - UDP_HEADER;
        let current = payload(PLATEAUS[0]).min(largest);
        let mut candidates: Vec<usize> = PLATEAUS[1..]
            .iter()
            .map(|&mtu| payload(mtu).min(largest))
            .filter(|&size| size > current)
            .collect();
        candidates.dedup();
        Self {
            base: current,
            current,
            ladder: candidates.clone(),
            candidates,
            held: false,
            black_holes: 0,
            probe: None,
            failures: 0,
            sent: 0,
        }
    }

    /// The largest datagram to send now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Probes sent so far.
    pub fn probes_sent(&self) -> u64 {
        self.sent
    }

    /// Times the size fell back to the base one because the path stopped carrying it.
    pub fn black_holes(&self) -> u64 {
        self.black_holes
    }

    /// True once no larger size is left to try.
    pub fn is_done(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The size of a probe to send now, if one is due; it is given up `timeout` from `now`
    /// (the sender's retransmission timeout).
    pub fn poll_probe(&mut self, now: Instant, timeout: Duration) -> Option<usize> {
        if self.probe.is_some() || self.held {
            return None;
        }
        let size = *self.candidates.first()?;
        self.probe = Some((size, now + timeout));
        self.sent += 1;
        Some(size)
    }

    /// When the probe in flight is given up, if one is.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probe.map(|(_, deadline)| deadline)
    }

    /// Gives up the probe in flight if its time has passed; after [`MAX_PROBES`] of one
    /// size, nothing from that size up is tried again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.probe.is_some_and(|(_, deadline)| now >= deadline) {
            self.probe = None;
            self.failures += 1;
            if self.failures >= MAX_PROBES {
                self.candidates.clear();
            }
        }
    }

    /// The receiver answered a probe of `size` bytes; returns whether the size went up.
    pub fn on_ack(&mut self, size: usize) -> bool {
        if self.held || size <= self.current || !self.candidates.contains(&size) {
            return false;
        }
        self.current = size;
        self.candidates.retain(|&candidate| candidate > size);
        self.failures = 0;
        if self.probe.is_some_and(|(probe, _)| probe <= size) {
            self.probe = None;
        }
        true
    }

    /// The local interface refused a datagram of `size` bytes as too large: nothing that
    /// size or larger is tried again. Returns whether the current size came down (the
    /// interface's MTU shrank under a running transfer).
    pub fn too_big(&mut self, size: usize) -> bool {
        self.candidates.retain(|&candidate| candidate < size);
        self.ladder.retain(|&candidate| candidate < size);
        if self.probe.is_some_and(|(probe, _)| probe >= size) {
            self.probe = None;
        }
        if self.current < size {
            return false;
        }
        self.current = self.base.min(size.saturating_sub(1)).max(1);
        true
    }

    /// A retransmission timeout of data expired: everything in flight was lost. Above the
    /// base size that is taken for a black hole, and the size falls back to the base one;
    /// returns whether it did.
    ///
    /// The first timeout is enough. A fall that was not needed (a tail loss, say) costs only
    /// the few round trips the search takes to climb back, where waiting for a second
    /// timeout, twice as late with the backoff, stalled a path that had shrunk three times
    /// as long: 0.6 s against 0.2 s on the veth of docs/BENCHMARKS.md.
    pub fn on_data_timeout(&mut self) -> bool {
        if self.current <= self.base {
            return false;
        }
        self.black_holes += 1;
        self.current = self.base;
        self.candidates = self.ladder.clone();
        self.probe = None;
        self.failures = 0;
        self.held = true;
        true
    }

    /// Data was acknowledged: the path carries the size in use, and a search held after a
    /// black hole goes on.
    pub fn on_data_acked(&mut self) {
        self.held = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTO: Duration = Duration::from_millis(200);

    /// Runs the search against a path that carries datagrams up to `path` bytes and an
    /// interface that refuses those above `interface`; returns the final size.
    fn settle(largest: usize, path: usize, interface: usize) -> (usize, u64) {
        let mut search = Search::new(20, largest);
        let mut now = Instant::now();
        for _ in 0..100 {
            if let Some(size) = search.poll_probe(now, RTO) {
                if size > interface {
                    search.too_big(size);
                } else if size <= path {
                    search.on_ack(size);
                }
                continue;
            }
            let Some(deadline) = search.poll_timeout() else {
                break;
            };
            now = deadline;
            search.handle_timeout(now);
        }
        assert!(search.is_done(), "the search ends");
        (search.current(), search.probes_sent())
    }

    #[test]
    fn it_starts_at_ipv6_minimum_and_climbs_to_what_the_path_carries() {
        assert_eq!(Search::new(40, 65_000).current(), 1232);
        assert_eq!(Search::new(20, 65_000).current(), 1252);
        // An Ethernet path under IPv4: 1500 - 20 - 8.
        assert_eq!(settle(9_000, 1472, 65_535).0, 1472);
        // A jumbo-frame path, up to the sender's ceiling.
        assert_eq!(settle(8_972, 8_972, 65_535).0, 8_972);
        assert_eq!(settle(65_045, 65_507, 65_535).0, 65_045);
        // A WireGuard tunnel in the way (MTU 1420).
        assert_eq!(settle(9_000, 1392, 65_535).0, 1392);
    }

    #[test]
    fn unanswered_probes_end_the_search_after_max_probes() {
        let (size, probes) = settle(9_000, 1472, 65_535);
        assert_eq!(size, 1472);
        // 1380, 1420, 1492 and 1500 answered at once, then 9000 three times.
        assert_eq!(probes, 4 + u64::from(MAX_PROBES));
    }

    #[test]
    fn an_interface_that_refuses_a_size_ends_the_search_at_once() {
        // A chunk ceiling far above a 1500-byte interface: no probe of 9000 is waited for.
        let (size, probes) = settle(65_000, 65_535, 1472);
        assert_eq!(size, 1472);
        assert_eq!(probes, 5);
    }

    #[test]
    fn a_small_ceiling_is_never_probed_past() {
        let mut search = Search::new(20, 1045);
        assert_eq!(search.current(), 1045);
        assert!(search.is_done());
        assert_eq!(search.poll_probe(Instant::now(), RTO), None);
    }

    #[test]
    fn stray_or_stale_answers_change_nothing() {
        let mut search = Search::new(20, 9_000);
        let now = Instant::now();
        assert_eq!(search.poll_probe(now, RTO), Some(1352));
        assert!(!search.on_ack(4_000), "a size never probed");
        assert!(!search.on_ack(1000), "a size below the current one");
        assert!(search.on_ack(1352));
        assert!(!search.on_ack(1352), "the same answer twice");
        assert_eq!(search.current(), 1352);
    }

    #[test]
    fn a_path_that_shrinks_under_the_transfer_is_found_and_searched_again() {
        let mut search = Search::new(20, 9_000);
        let now = Instant::now();
        for size in [1352, 1392, 1464, 1472, 8972] {
            assert_eq!(search.poll_probe(now, RTO), Some(size));
            assert!(search.on_ack(size));
        }
        assert_eq!(search.current(), 8972);
        // A timeout: a black hole. Back to the base size, and no probe until data gets
        // through again; an answer to a probe from before the fall changes nothing.
        assert!(search.on_data_timeout());
        assert_eq!((search.current(), search.black_holes()), (1252, 1));
        assert_eq!(search.poll_probe(now, RTO), None);
        assert!(!search.on_ack(8972));
        // At the base size there is nothing smaller to fall to.
        assert!(!search.on_data_timeout());
        assert!(!search.on_data_timeout());
        search.on_data_acked();
        // The search climbs again, to what the path carries now.
        for size in [1352, 1392, 1464, 1472] {
            assert_eq!(search.poll_probe(now, RTO), Some(size));
            assert!(search.on_ack(size));
        }
        let mut now = now;
        for _ in 0..MAX_PROBES {
            assert_eq!(search.poll_probe(now, RTO), Some(8972));
            now += RTO;
            search.handle_timeout(now);
        }
        assert!(search.is_done());
        assert_eq!(search.current(), 1472);
    }

    #[test]
    fn an_interface_that_shrinks_brings_the_size_down() {
        let mut search = Search::new(20, 9_000);
        search.on_ack(1392);
        assert!(search.too_big(1300));
        assert!(search.current() < 1300);
        assert!(!search.too_big(9_000), "a refused probe above the current size");
    }
}
