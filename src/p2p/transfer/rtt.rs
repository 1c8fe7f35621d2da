//! Round-trip time estimation and the retransmission timeout, as RFC 6298 computes them.
//!
//! `SRTT` and `RTTVAR` are smoothed from samples with gains 1/8 and 1/4, the timeout is
//! `SRTT + max(G, 4 * RTTVAR)` clamped to `[min_rto, max_rto]`, and each expiry doubles it
//! until a fresh sample arrives. Samples come only from chunks sent once (Karn's rule): the
//! sender never asks which copy of a retransmitted chunk an acknowledgement is for.
//!
//! One deliberate difference: RFC 6298 rounds the timeout up to one second. Like Linux
//! (200 ms) this uses a smaller floor, [`RttEstimator::new`]'s `min_rto`, because a
//! transfer between two machines on one network would otherwise stall for a second at
//! every lost tail. And a lost tail rarely waits even for that: [`RttEstimator::pto`] is
//! the sooner timeout of a tail loss probe (RFC 8985), which the sender uses first.

use std::time::Duration;

use super::receiver::ACK_DELAY;

/// Clock granularity `G` of RFC 6298.
const GRANULARITY: Duration = Duration::from_millis(1);
/// The timeout before any sample, as RFC 6298 (2.1) sets it.
const INITIAL_RTO: Duration = Duration::from_secs(1);
/// The shortest tail loss probe timeout (Linux's: shorter ones fire on a late timer or a
/// late acknowledgement rather than on a loss).
const MIN_PTO: Duration = Duration::from_millis(10);

/// Smoothed RTT, its variation and the retransmission timeout. (The min RTT is the
/// congestion model's, which measures it again in `ProbeRtt`.)
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator with no samples whose timeout stays within `[min_rto, max_rto]`.
    pub fn new(min_rto: Duration, max_rto: Duration) -> Self {
        Self { srtt: None, rttvar: Duration::ZERO, backoff: 0, min_rto, max_rto }
    }

    /// Takes one RTT measurement (RFC 6298, 2.2 and 2.3) and resets the backoff.
    pub fn on_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        self.backoff = 0;
    }

    /// A timeout expired: the next one is twice as long (RFC 6298, 5.5).
    pub fn on_timeout(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => INITIAL_RTO,
            Some(srtt) => srtt + GRANULARITY.max(self.rttvar * 4),
        };
        let rto = base.clamp(self.min_rto, self.max_rto);
        rto.saturating_mul(1 << self.backoff).min(self.max_rto)
    }

    /// The tail loss probe timeout (RFC 8985, 7.2): twice the smoothed RTT and the
    /// receiver's acknowledgement delay, at least [`MIN_PTO`]; `None` before any sample, or
    /// when it would come no sooner than the retransmission timeout.
    pub fn pto(&self) -> Option<Duration> {
        let pto = (self.srtt? * 2 + ACK_DELAY).max(MIN_PTO);
        (pto < self.rto()).then_some(pto)
    }

    /// The smoothed RTT, if there has been a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn follows_rfc_6298() {
        let mut rtt = RttEstimator::new(ms(200), ms(60_000));
        assert_eq!(rtt.rto(), ms(1000), "before any sample");
        rtt.on_sample(ms(100));
        // SRTT = 100, RTTVAR = 50: RTO = 100 + 4 * 50.
        assert_eq!(rtt.rto(), ms(300));
        rtt.on_sample(ms(200));
        // RTTVAR = 3/4 * 50 + 1/4 * 100 = 62.5; SRTT = 7/8 * 100 + 1/8 * 200 = 112.5.
        assert_eq!(rtt.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(rtt.rto(), Duration::from_micros(112_500 + 250_000));
    }

    #[test]
    fn backs_off_and_stays_within_its_bounds() {
        let mut rtt = RttEstimator::new(ms(200), ms(5_000));
        rtt.on_sample(ms(1));
        assert_eq!(rtt.rto(), ms(200), "floored at min_rto");
        rtt.on_timeout();
        assert_eq!(rtt.rto(), ms(400));
        for _ in 0..20 {
            rtt.on_timeout();
        }
        assert_eq!(rtt.rto(), ms(5_000), "capped at max_rto");
        rtt.on_sample(ms(1));
        assert_eq!(rtt.rto(), ms(200), "a fresh sample resets the backoff");
    }

    #[test]
    fn the_probe_timeout_comes_before_the_retransmission_timeout_or_not_at_all() {
        let mut rtt = RttEstimator::new(ms(200), ms(5_000));
        assert_eq!(rtt.pto(), None, "before any sample");
        rtt.on_sample(Duration::from_micros(300));
        assert_eq!(rtt.pto(), Some(ms(10)), "a LAN: the floor");
        let mut rtt = RttEstimator::new(ms(200), ms(5_000));
        rtt.on_sample(ms(50));
        assert_eq!(rtt.pto(), Some(ms(101)));
        // A steady 150 ms: the RTO is the floor, 200 ms, sooner than 2 * 150 + 1.
        let mut steady = RttEstimator::new(ms(200), ms(5_000));
        for _ in 0..30 {
            steady.on_sample(ms(150));
        }
        assert_eq!(steady.rto(), ms(200));
        assert_eq!(steady.pto(), None);
    }
}
