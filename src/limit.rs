//! Rate limits and address keys, shared by the server's admission and the direct links'
//! listener: pure bookkeeping, with `now` passed in.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

/// The address that per-address limits count by: an IPv4 address (IPv4-mapped IPv6 ones
/// included) as it is, an IPv6 address by its /64.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A rate limit: up to `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many may come at once after a quiet spell.
    pub burst: u32,
    /// How many a second may come, steadily.
    pub per_second: u32,
}

/// A token bucket for one [`Rate`], kept as the time at which it would be full again
/// (GCRA, as the `governor` crate does it): exact, with no fractions of a token to lose.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time that one token stands for.
    interval: Duration,
    /// How far ahead of `now` the full-again time may run: the burst, less one token.
    tolerance: Duration,
    /// When the bucket would be full again, if nothing more were taken.
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self::with_interval(rate.burst, Duration::from_secs(1) / rate.per_second.max(1), now)
    }

    /// A full bucket at `now` holding `burst` tokens, refilled one per `interval`: for rates
    /// below one a second.
    pub fn with_interval(burst: u32, interval: Duration, now: Instant) -> Self {
        let interval = interval.max(Duration::from_nanos(1));
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        Self { interval, tolerance, full_at: now }
    }

    /// Takes one token at `now`; false (and nothing taken) if the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        self.try_take(now).is_ok()
    }

    /// Takes one token at `now`, or tells how long until one could be taken.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let full_at = self.full_at.max(now);
        let ahead = full_at - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.full_at = full_at + self.interval;
        Ok(())
    }

    /// Takes `n` tokens at once at `now` (a datagram's bytes, say), if the bucket is not
    /// empty: like a single token, it may run the bucket into debt by the rest, which later
    /// takes wait out. False (nothing taken) if it is empty.
    pub fn take_n(&mut self, n: u32, now: Instant) -> bool {
        let full_at = self.full_at.max(now);
        if full_at - now > self.tolerance {
            return false;
        }
        self.full_at = full_at + self.interval.saturating_mul(n);
        true
    }

    /// Whether a token could be taken at `now` (nothing is taken).
    pub fn can_take(&self, now: Instant) -> bool {
        self.full_at.max(now) - now <= self.tolerance
    }

    /// Whether the bucket has refilled completely by `now`, so forgetting it loses nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        self.full_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_takes_many_tokens_at_once_and_waits_out_the_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate { burst: 1000, per_second: 1000 }, start);
        assert!(bucket.take_n(1500, start), "a full bucket takes more than its burst once");
        assert!(!bucket.take_n(1, start), "then it owes");
        // 1500 tokens took 1.5 s; the burst of 1000 may run ahead by 0.999 s.
        assert!(!bucket.take_n(1, start + Duration::from_millis(500)));
        assert!(bucket.take_n(1, start + Duration::from_millis(501)));
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate { burst: 5, per_second: 10 }, start);
        assert!((0..5).all(|_| bucket.take(start)));
        assert!(!bucket.take(start), "the burst is spent");
        assert!(!bucket.take(start + Duration::from_millis(99)));
        assert!(bucket.take(start + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!bucket.take(start + Duration::from_millis(100)));
        // A long quiet spell refills the burst, no more.
        let later = start + Duration::from_secs(60);
        assert!((0..5).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn a_bucket_refills_exactly_under_frequent_calls() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate { burst: 1, per_second: 20 }, start);
        let mut taken = 0;
        // Asked every millisecond for ten seconds: 1 at once plus 20 a second.
        for ms in 0..10_000 {
            if bucket.take(start + Duration::from_millis(ms)) {
                taken += 1;
            }
        }
        assert_eq!(taken, 200);
    }
}
