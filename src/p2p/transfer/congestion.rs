//! Congestion control and pacing: a model of the path in the manner of BBR.
//!
//! Loss is a poor congestion signal on the links this transfer is for: on Wi-Fi, or a
//! lossy tunnel, 1 to 5 % of datagrams vanish whatever the sending rate, and a controller
//! that halves its window at each loss (Reno, CUBIC) crawls. So, like BBR, the sender
//! measures instead of guessing:
//!
//! - the bottleneck bandwidth: the largest delivery rate sampled over the last
//!   [`BW_WINDOW_ROUNDS`] round trips, and at least over a whole `ProbeBw` gain cycle
//!   (bytes newly acknowledged over the time they took);
//! - the propagation delay: the smallest RTT seen since the last `ProbeRtt`.
//!
//! It then paces datagrams at `pacing_gain * bandwidth` and allows `1.25 * bandwidth *
//! min_rtt`, plus headroom for acknowledgements that arrive in bursts, plus a fixed
//! [`QUEUE_ALLOWANCE`] in flight.
//! `Startup` doubles the rate every round trip (gain 2/ln 2) until the bandwidth stops
//! growing by a quarter for three rounds; one round of `Drain` empties the queue that built;
//! then `ProbeBw` cycles its gain through 1.25, 0.75 and six rounds of 1 to find more room
//! and give it back. Every [`PROBE_RTT_INTERVAL`], `ProbeRtt` keeps only
//! [`PROBE_RTT_WINDOW`] datagrams in flight for [`PROBE_RTT_TIME`] (or two round trips),
//! so that the queue drains, and the smallest RTT seen meanwhile is the new min RTT.
//!
//! That refresh is what makes transfers share a bottleneck. The window is a multiple of
//! bandwidth x min RTT, so a transfer that started while others had built a queue, and
//! took the queue's delay for the path's, keeps a window several times theirs, which under
//! a FIFO queue wins it a larger share, which raises its bandwidth estimate and its window
//! again: on a 100 Mbit/s link with a sub-millisecond RTT, the last of four transfers took
//! 68 Mbit/s and left the others 8 each. The queue only drains if every transfer through
//! it probes at once, so `ProbeRtt` starts on the wall clock's multiples of the interval
//! (the driver passes the epoch, [`Congestion::new`]): transfers from any clients that
//! keep time drain together, and all measure the same delay. A retransmission timeout, a
//! sign that the path changed completely, starts over from `Startup`.
//!
//! Pacing is a token bucket refilled at the pacing rate and capped at a small burst, so
//! the driver can send a batch of datagrams (one GSO call) per wake-up without flooding a
//! queue. The cap only bounds what an idle sender saves up. A sender held back by the
//! bucket sleeps until it holds a datagram again, and its timer fires late: tokio's has
//! millisecond ticks, and a busy thread wakes later still. Capped at a millisecond's worth,
//! the bucket lost that lateness at every wake-up, and the rate that left fell below the
//! rate paced, which lowered the bandwidth measured, and the pacing rate with it (see
//! [`BW_WINDOW_PHASES`] for the other half of that drift). So a held sender is credited
//! for up to [`TIMER_SLACK`] of lateness: it sends what it would have sent on time, in one
//! burst no larger than the lateness.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many round trips the bandwidth estimate remembers at least...
pub const BW_WINDOW_ROUNDS: u64 = 10;
/// ...and how many `ProbeBw` phases. In BBR ten rounds outlast the eight-phase cycle, so
/// what the phase at gain 1.25 found is still the estimate when the next one comes. On a
/// LAN a phase lasts [`MIN_PHASE`], many round trips, and a window of ten rounds forgot it
/// within milliseconds: the estimate then followed the rate that actually left, a little
/// below the rate paced, down and down between probes (a clean veth carried 3.6 Gbit/s in
/// some runs and 2 in others, with both sides half idle).
const BW_WINDOW_PHASES: u32 = PROBE_GAINS.len() as u32 + 2;
/// Datagrams allowed in flight before the first estimate.
const INITIAL_WINDOW: u64 = 32;
/// Never fewer datagrams than this in flight.
const MIN_WINDOW: u64 = 16;
/// How often `ProbeRtt` measures the min RTT again (BBRv2's 5 s).
pub const PROBE_RTT_INTERVAL: Duration = Duration::from_secs(5);
/// A transfer younger than this skips a `ProbeRtt` (it has just measured).
const PROBE_RTT_MIN_AGE: Duration = Duration::from_secs(1);
/// Datagrams in flight during `ProbeRtt`: BBR's four.
pub const PROBE_RTT_WINDOW: u64 = 4;
/// How long `ProbeRtt` lasts at least (or two RTTs as it starts, if longer). BBR's 200 ms
/// lets unsynchronised transfers overlap; these start together, so a drained queue and a
/// few round trips are enough.
pub const PROBE_RTT_TIME: Duration = Duration::from_millis(50);
/// The pacing gain of `Startup`: the rate doubles each round trip.
const STARTUP_GAIN: f64 = 2.885;
/// ProbeBw's gain cycle, one phase per min-RTT.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// The shortest `ProbeBw` phase. A phase lasts one min RTT, which on a LAN is a tenth of a
/// millisecond: shorter than a pacing burst, so that probing up would find nothing and
/// transfers would stay wherever they had started.
const MIN_PHASE: Duration = Duration::from_millis(5);
/// The window's multiple of the bandwidth-delay product outside `Startup`.
const CWND_GAIN: f64 = 1.25;
/// Datagrams every transfer may keep queued at the bottleneck beyond its share of the
/// bandwidth-delay product, whatever its rate: the same for all, so that under a FIFO
/// queue, where each one's share follows what it has queued, a transfer with more than
/// its share queues no more than the others and loses the excess (the Vegas and FAST
/// argument). A window proportional to the bandwidth alone would keep any split as it is.
const QUEUE_ALLOWANCE: u64 = 16;
/// Extra time's worth of bandwidth allowed in flight, for acknowledgements that are
/// delayed or arrive in batches.
const ACK_HEADROOM: Duration = Duration::from_millis(2);
/// The pacing bucket holds at least this many datagrams' worth...
const MIN_BURST: u64 = 16;
/// ...or this long at the pacing rate, whichever is more.
const BURST_TIME: Duration = Duration::from_millis(1);
/// How late the driver's timer may fire after the bucket held a datagram back without
/// the sender losing the time (see the module docs).
const TIMER_SLACK: Duration = Duration::from_millis(4);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw {
        phase: usize,
        since: Instant,
    },
    /// Draining the queue until `until`; then back to `ProbeBw`, or to `Startup` if the
    /// bandwidth had not been found yet. `min_rtt` is the smallest RTT seen meanwhile.
    ProbeRtt {
        until: Instant,
        filled: bool,
        min_rtt: Option<Duration>,
    },
}

/// One delivery-rate sample: its round, when it was taken, and bytes per second.
#[derive(Debug, Clone, Copy)]
struct BwSample {
    round: u64,
    at: Instant,
    rate: f64,
}

/// What one acknowledgement taught about the path.
#[derive(Debug, Clone, Copy)]
pub struct AckSample {
    /// Bytes delivered in total, this acknowledgement included.
    pub delivered: u64,
    /// Bytes that had been delivered when the newest newly acknowledged chunk was sent.
    pub delivered_at_send: u64,
    /// Delivery rate in bytes per second, if it could be measured.
    pub rate: Option<f64>,
}

/// The sender's model of the path: how fast to pace and how much to keep in flight.
#[derive(Debug, Clone)]
pub struct Congestion {
    mode: Mode,
    datagram: u64,
    /// Delivery-rate samples as a monotonic queue: each is larger than every one after
    /// it, so the front is the largest in the window.
    bw_samples: VecDeque<BwSample>,
    btl_bw: f64,
    min_rtt: Option<Duration>,
    /// When the next `ProbeRtt` starts.
    next_probe_rtt: Instant,
    round: u64,
    next_round_delivered: u64,
    full_bw: f64,
    full_bw_rounds: u32,
    tokens: f64,
    refilled: Instant,
    /// The last [`can_send`](Self::can_send) said no: the sender is waiting for tokens.
    held: bool,
}

impl Congestion {
    /// A fresh model for datagrams of at most `datagram` bytes, starting at `now`.
    /// `ProbeRtt` starts at `epoch` plus multiples of [`PROBE_RTT_INTERVAL`].
    pub fn new(datagram: usize, now: Instant, epoch: Instant) -> Self {
        Self {
            mode: Mode::Startup,
            datagram: datagram as u64,
            bw_samples: VecDeque::new(),
            btl_bw: 0.0,
            min_rtt: None,
            next_probe_rtt: next_boundary(epoch, now + PROBE_RTT_MIN_AGE),
            round: 0,
            next_round_delivered: 0,
            full_bw: 0.0,
            full_bw_rounds: 0,
            tokens: (MIN_BURST * datagram as u64) as f64,
            refilled: now,
            held: false,
        }
    }

    /// Datagrams grow (or shrink) to `datagram` bytes: the path MTU search found a new size.
    /// The window's floor and the pacing burst are counted in datagrams of this size.
    pub fn set_datagram(&mut self, datagram: usize) {
        self.datagram = datagram as u64;
    }

    /// Takes what an acknowledgement taught: a delivery-rate sample and, if the chunk it
    /// acknowledged was not a retransmission, an RTT sample.
    pub fn on_ack(&mut self, now: Instant, sample: AckSample, rtt: Option<Duration>) {
        match &mut self.mode {
            Mode::ProbeRtt { min_rtt, .. } => {
                if let Some(rtt) = rtt {
                    *min_rtt = Some(min_rtt.map_or(rtt, |min| min.min(rtt)));
                }
            }
            _ => {
                if let Some(rtt) = rtt.filter(|&r| self.min_rtt.is_none_or(|min| r <= min)) {
                    self.min_rtt = Some(rtt);
                }
            }
        }
        match self.mode {
            Mode::ProbeRtt { until, filled, min_rtt } if now >= until => {
                // The drained queue showed the path's delay: it is the min RTT from now.
                self.min_rtt = min_rtt.or(self.min_rtt);
                self.mode =
                    if filled { Mode::ProbeBw { phase: 2, since: now } } else { Mode::Startup };
            }
            Mode::ProbeRtt { .. } => {}
            mode if now >= self.next_probe_rtt => {
                // Long enough for the queue to drain and its last datagrams to be answered:
                // every transfer through it is probing at the same moment.
                let until = now + PROBE_RTT_TIME.max(rtt.unwrap_or_default() * 2);
                self.mode = Mode::ProbeRtt { until, filled: mode != Mode::Startup, min_rtt: None };
                // Counted from here, whatever ends this one (a timeout restarts Startup).
                self.next_probe_rtt = next_boundary(self.next_probe_rtt, until);
            }
            _ => {}
        }
        let round_start = sample.delivered_at_send >= self.next_round_delivered;
        if round_start {
            self.round += 1;
            self.next_round_delivered = sample.delivered;
        }
        if let Some(rate) = sample.rate.filter(|r| r.is_finite() && *r > 0.0) {
            while self.bw_samples.back().is_some_and(|s| s.rate <= rate) {
                self.bw_samples.pop_back();
            }
            self.bw_samples.push_back(BwSample { round: self.round, at: now, rate });
        }
        let span = self.phase_time() * BW_WINDOW_PHASES;
        while self.bw_samples.front().is_some_and(|s| {
            s.round + BW_WINDOW_ROUNDS < self.round && now.saturating_duration_since(s.at) > span
        }) {
            self.bw_samples.pop_front();
        }
        self.btl_bw = self.bw_samples.front().map_or(0.0, |s| s.rate);
        if round_start {
            self.on_round(now);
        }
        if let Mode::ProbeBw { phase, since } = self.mode {
            if now.duration_since(since) >= self.phase_time() {
                let phase = (phase + 1) % PROBE_GAINS.len();
                self.mode = Mode::ProbeBw { phase, since: now };
            }
        }
    }

    /// A retransmission timeout: the model is stale, so measure again from `Startup`.
    pub fn on_rto(&mut self) {
        self.mode = Mode::Startup;
        self.bw_samples.clear();
        self.btl_bw = 0.0;
        self.full_bw = 0.0;
        self.full_bw_rounds = 0;
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        if let Mode::ProbeRtt { .. } = self.mode {
            return PROBE_RTT_WINDOW * self.datagram;
        }
        let floor = MIN_WINDOW * self.datagram;
        let Some(min_rtt) = self.min_rtt.filter(|_| self.btl_bw > 0.0) else {
            return INITIAL_WINDOW * self.datagram;
        };
        let bdp = self.btl_bw * min_rtt.as_secs_f64();
        let headroom = self.btl_bw * ACK_HEADROOM.as_secs_f64();
        if self.mode == Mode::Startup {
            return ((STARTUP_GAIN * bdp + headroom) as u64).max(floor);
        }
        let allowance = QUEUE_ALLOWANCE * self.datagram;
        ((CWND_GAIN * bdp + headroom) as u64 + allowance).max(floor)
    }

    /// The pacing rate in bytes per second; `srtt` sets it before the first estimate.
    pub fn pacing_rate(&self, srtt: Option<Duration>) -> f64 {
        let gain = match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0 / STARTUP_GAIN,
            Mode::ProbeRtt { .. } => 1.0,
            Mode::ProbeBw { phase, .. } => PROBE_GAINS[phase],
        };
        if self.btl_bw > 0.0 {
            return gain * self.btl_bw;
        }
        let rtt = srtt.unwrap_or(Duration::from_millis(100)).max(Duration::from_micros(10));
        STARTUP_GAIN * (INITIAL_WINDOW * self.datagram) as f64 / rtt.as_secs_f64()
    }

    /// Whether `bytes` may leave now; refills the bucket first.
    pub fn can_send(&mut self, now: Instant, bytes: usize, srtt: Option<Duration>) -> bool {
        let rate = self.pacing_rate(srtt);
        let burst = (MIN_BURST * self.datagram) as f64;
        // A sender that was held back is owed the time its timer fired late.
        let time = if self.held { TIMER_SLACK } else { BURST_TIME };
        let cap = burst.max(rate * time.as_secs_f64());
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        // The cap bounds what accrues, never takes back what a wake-up was credited.
        self.tokens = (self.tokens + rate * elapsed).min(cap.max(self.tokens));
        self.refilled = now;
        self.held = self.tokens < bytes as f64;
        !self.held
    }

    /// `bytes` left: take them from the bucket.
    pub fn on_sent(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When the bucket will hold `bytes` again.
    pub fn next_send_time(&self, bytes: usize, srtt: Option<Duration>) -> Instant {
        let missing = (bytes as f64 - self.tokens).max(0.0);
        let wait = missing / self.pacing_rate(srtt);
        self.refilled + Duration::from_secs_f64(wait.min(1.0))
    }

    /// How long one `ProbeBw` phase lasts: a min RTT, and at least [`MIN_PHASE`].
    fn phase_time(&self) -> Duration {
        self.min_rtt.unwrap_or_default().max(MIN_PHASE)
    }

    /// The bottleneck bandwidth estimate in bytes per second (0 before the first sample).
    pub fn bandwidth(&self) -> f64 {
        self.btl_bw
    }

    fn on_round(&mut self, now: Instant) {
        match self.mode {
            Mode::Startup => {
                if self.btl_bw >= self.full_bw * 1.25 {
                    self.full_bw = self.btl_bw;
                    self.full_bw_rounds = 0;
                } else {
                    self.full_bw_rounds += 1;
                    if self.full_bw_rounds >= 3 {
                        self.mode = Mode::Drain;
                    }
                }
            }
            Mode::Drain => self.mode = Mode::ProbeBw { phase: 2, since: now },
            Mode::ProbeBw { .. } | Mode::ProbeRtt { .. } => {}
        }
    }
}

/// An epoch for [`Congestion::new`] on the wall clock: an instant whose distance from now
/// is the time since the last multiple of [`PROBE_RTT_INTERVAL`] since 1970. Clients whose
/// clocks agree (NTP keeps them within milliseconds) get the same `ProbeRtt` phases. Read
/// by drivers; the model itself reads no clock.
pub fn wall_clock_epoch() -> Instant {
    let since_1970 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let into_interval = (since_1970 % PROBE_RTT_INTERVAL.as_nanos()) as u64;
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(into_interval)).unwrap_or(now)
}

/// The first of `epoch` plus multiples of [`PROBE_RTT_INTERVAL`] that is after `after`.
fn next_boundary(epoch: Instant, after: Instant) -> Instant {
    let interval = PROBE_RTT_INTERVAL.as_nanos();
    let since = after.saturating_duration_since(epoch).as_nanos();
    let steps = since / interval + 1;
    epoch + Duration::from_nanos((steps * interval) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DG: usize = 1000;

    /// Feeds `rounds` round trips of acknowledgements at `rate` bytes/s.
    fn feed(cc: &mut Congestion, now: &mut Instant, delivered: &mut u64, rate: f64, rounds: u32) {
        for _ in 0..rounds {
            let before = *delivered;
            *delivered += 10_000;
            *now += Duration::from_millis(10);
            let sample =
                AckSample { delivered: *delivered, delivered_at_send: before, rate: Some(rate) };
            cc.on_ack(*now, sample, Some(Duration::from_millis(10)));
        }
    }

    /// One acknowledgement every 10 ms until `until`, at `rate`, each with an RTT of `rtt`.
    fn ack_until(cc: &mut Congestion, now: &mut Instant, until: Instant, rate: f64, rtt: Duration) {
        while *now < until {
            *now += Duration::from_millis(10);
            let delivered = cc.next_round_delivered + 10_000;
            let sample = AckSample {
                delivered,
                delivered_at_send: cc.next_round_delivered,
                rate: Some(rate),
            };
            cc.on_ack(*now, sample, Some(rtt));
        }
    }

    #[test]
    fn transfers_that_measured_different_delays_agree_after_probing_rtt_together() {
        let ms = Duration::from_millis;
        let epoch = Instant::now();
        let (mut now_a, mut now_b) = (epoch, epoch);
        // Same bandwidth; the first saw the empty path (1 ms), the second started behind a
        // queue and never saw less than 20 ms: its window is many times the first's.
        let (mut early, mut late) =
            (Congestion::new(DG, epoch, epoch), Congestion::new(DG, epoch, epoch));
        ack_until(&mut early, &mut now_a, epoch + ms(100), 1e6, ms(1));
        ack_until(&mut early, &mut now_a, epoch + ms(4_900), 1e6, ms(20));
        ack_until(&mut late, &mut now_b, epoch + ms(4_900), 1e6, ms(20));
        assert!(late.window() > early.window() + 15_000, "{} vs {}", late.window(), early.window());
        // Both reach the same wall-clock boundary and drain the queue together: the RTT
        // falls to the path's during ProbeRtt, and both keep that.
        for (cc, now) in [(&mut early, &mut now_a), (&mut late, &mut now_b)] {
            ack_until(cc, now, epoch + ms(5_010), 1e6, ms(20));
            assert!(matches!(cc.mode, Mode::ProbeRtt { .. }), "{:?}", cc.mode);
            assert_eq!(cc.window(), PROBE_RTT_WINDOW * DG as u64);
            ack_until(cc, now, epoch + ms(5_400), 1e6, ms(1));
            assert!(matches!(cc.mode, Mode::ProbeBw { .. }), "{:?}", cc.mode);
            assert_eq!(cc.min_rtt, Some(ms(1)));
        }
        assert_eq!(early.window(), late.window(), "the same bandwidth, the same window");
    }

    #[test]
    fn leaves_startup_when_the_bandwidth_stops_growing_and_paces_near_it() {
        let mut now = Instant::now();
        let mut cc = Congestion::new(DG, now, now);
        let mut delivered = 0;
        feed(&mut cc, &mut now, &mut delivered, 1e6, 1);
        assert_eq!(cc.mode, Mode::Startup);
        assert!(cc.pacing_rate(None) > 2.0 * 1e6, "startup paces above the estimate");
        feed(&mut cc, &mut now, &mut delivered, 1e6, 5);
        assert!(matches!(cc.mode, Mode::ProbeBw { .. }), "{:?}", cc.mode);
        let rate = cc.pacing_rate(None);
        assert!((0.7e6..=1.3e6).contains(&rate), "probe paces near the bottleneck: {rate}");
        // 1.25 * bdp + headroom + allowance: 1.25 * 1e6 * 0.01 + 1e6 * 0.002 + 16 * 1000.
        assert_eq!(cc.window(), 30_500);
    }

    #[test]
    fn remembers_what_a_probe_found_for_a_whole_gain_cycle_on_a_lan() {
        let start = Instant::now();
        let mut cc = Congestion::new(DG, start, start);
        let rtt = Duration::from_micros(100);
        let mut delivered = 0;
        let mut ack = |cc: &mut Congestion, at: Instant, rate: f64| {
            let before = delivered;
            delivered += 10_000;
            let sample = AckSample { delivered, delivered_at_send: before, rate: Some(rate) };
            cc.on_ack(at, sample, Some(rtt));
        };
        ack(&mut cc, start, 8e6);
        // A hundred round trips later, but within one cycle of 5 ms phases.
        for i in 1..=100 {
            ack(&mut cc, start + rtt * i, 1e6);
        }
        assert_eq!(cc.bandwidth(), 8e6, "the probe's sample outlasts ten round trips");
        let later = start + MIN_PHASE * BW_WINDOW_PHASES + Duration::from_millis(1);
        ack(&mut cc, later, 1e6);
        assert_eq!(cc.bandwidth(), 1e6, "and is forgotten after a cycle");
    }

    #[test]
    fn forgets_old_bandwidth_and_restarts_after_a_timeout() {
        let mut now = Instant::now();
        let mut cc = Congestion::new(DG, now, now);
        let mut delivered = 0;
        feed(&mut cc, &mut now, &mut delivered, 8e6, 3);
        feed(&mut cc, &mut now, &mut delivered, 1e6, BW_WINDOW_ROUNDS as u32 + 2);
        assert_eq!(cc.bandwidth(), 1e6, "samples older than the window are forgotten");
        cc.on_rto();
        assert_eq!(cc.bandwidth(), 0.0);
        assert_eq!(cc.window(), INITIAL_WINDOW * DG as u64);
    }

    #[test]
    fn the_bucket_paces_bursts() {
        let now = Instant::now();
        let mut cc = Congestion::new(DG, now, now);
        let srtt = Some(Duration::from_millis(10));
        let mut sent = 0;
        while cc.can_send(now, DG, srtt) {
            cc.on_sent(DG);
            sent += 1;
        }
        assert_eq!(sent, MIN_BURST, "one burst at first");
        let next = cc.next_send_time(DG, srtt);
        assert!(next > now);
        assert!(cc.can_send(next, DG, srtt), "and one more datagram when the bucket says");
    }

    #[test]
    fn a_late_wake_up_sends_what_was_due_but_an_idle_sender_saves_only_a_burst() {
        let start = Instant::now();
        let srtt = Some(Duration::from_millis(10));
        let drain = |cc: &mut Congestion, at: Instant| {
            let mut sent = 0;
            while cc.can_send(at, DG, srtt) {
                cc.on_sent(DG);
                sent += 1;
            }
            sent
        };
        // Held back, then woken 3 ms late: three milliseconds' worth leaves, on time on
        // average. (The initial rate is 2.885 * 32 datagrams per 10 ms: about 9 per ms.)
        let mut cc = Congestion::new(DG, start, start);
        drain(&mut cc, start);
        let due = cc.next_send_time(DG, srtt);
        let late = drain(&mut cc, due + Duration::from_millis(3));
        let per_ms = cc.pacing_rate(srtt) / 1000.0 / DG as f64;
        assert!(late as f64 >= 2.5 * per_ms, "{late} datagrams at {per_ms:.1} per ms");
        // Idle for as long (nothing held back): only the burst was saved up.
        let mut cc = Congestion::new(DG, start, start);
        let idle = drain(&mut cc, due + Duration::from_millis(3));
        assert_eq!(idle as u64, MIN_BURST, "an idle sender saves one burst");
    }
}
