//! Login lockout: N consecutive failures for a username lock it for a while.
//!
//! Counted per username, whatever connection or address the attempts come from. A login in
//! progress counts as a possible failure until it finishes, so opening many connections and
//! guessing in parallel gains nothing: at most `max_failures` guesses are ever in flight or
//! failed for one name before it locks. Pure bookkeeping; the caller passes `now`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Entries kept before unlocked ones are pruned, so random names cannot grow the map forever.
const PRUNE_ABOVE: usize = 10_000;

/// Failure counts and locks for every username that has failed recently.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    duration: Duration,
    entries: HashMap<String, Entry>,
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Right password: the failure count resets.
    Succeeded,
    /// Wrong password or unknown name: one more failure.
    Failed,
    /// Not decided (an internal error): the count is unchanged.
    Abandoned,
}

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    in_flight: u32,
    locked_until: Option<Instant>,
}

impl Lockout {
    /// `max_failures` consecutive failures lock a name for `duration`. Zero failures disables it.
    pub fn new(max_failures: u32, duration: Duration) -> Self {
        Self { max_failures, duration, entries: HashMap::new() }
    }

    /// Starts a login attempt for `name`, or says how long the name stays locked.
    ///
    /// Every `Ok` must be followed by exactly one [`Lockout::finish`].
    pub fn begin(&mut self, name: &str, now: Instant) -> Result<(), Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        if self.entries.len() > PRUNE_ABOVE {
            self.entries.retain(|_, e| e.in_flight > 0 || e.locked_until.is_some_and(|t| t > now));
        }
        let entry = self.entries.entry(name.to_owned()).or_default();
        if let Some(until) = entry.locked_until {
            if until > now {
                return Err(until - now);
            }
            *entry = Entry { in_flight: entry.in_flight, ..Entry::default() };
        }
        if entry.failures + entry.in_flight >= self.max_failures {
            // Enough guesses are already being checked; one of them may lock the name.
            return Err(Duration::from_secs(1));
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// Ends an attempt begun with [`Lockout::begin`]. Returns the lock duration if this
    /// failure locked the name.
    pub fn finish(&mut self, name: &str, outcome: Attempt, now: Instant) -> Option<Duration> {
        let entry = self.entries.get_mut(name)?;
        entry.in_flight = entry.in_flight.saturating_sub(1);
        match outcome {
            Attempt::Succeeded => {
                entry.failures = 0;
                entry.locked_until = None;
            }
            Attempt::Failed => {
                entry.failures += 1;
                if entry.failures >= self.max_failures {
                    entry.failures = 0;
                    entry.locked_until = Some(now + self.duration);
                    return Some(self.duration);
                }
            }
            Attempt::Abandoned => {}
        }
        if entry.in_flight == 0 && entry.failures == 0 && entry.locked_until.is_none() {
            self.entries.remove(name);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: Duration = Duration::from_secs(10);

    fn fail(l: &mut Lockout, name: &str, now: Instant) -> Option<Duration> {
        l.begin(name, now).unwrap();
        l.finish(name, Attempt::Failed, now)
    }

    #[test]
    fn third_consecutive_failure_locks_until_expiry() {
        let mut l = Lockout::new(3, LOCK);
        let t0 = Instant::now();
        assert_eq!(fail(&mut l, "alice", t0), None);
        assert_eq!(fail(&mut l, "alice", t0), None);
        assert_eq!(fail(&mut l, "alice", t0), Some(LOCK));
        assert_eq!(l.begin("alice", t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        assert!(l.begin("bob", t0).is_ok(), "other names are unaffected");
        assert!(l.begin("alice", t0 + LOCK).is_ok(), "the lock expires");
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut l = Lockout::new(3, LOCK);
        let t0 = Instant::now();
        fail(&mut l, "alice", t0);
        fail(&mut l, "alice", t0);
        l.begin("alice", t0).unwrap();
        assert_eq!(l.finish("alice", Attempt::Succeeded, t0), None);
        assert_eq!(fail(&mut l, "alice", t0), None);
        assert_eq!(fail(&mut l, "alice", t0), None);
        assert_eq!(fail(&mut l, "alice", t0), Some(LOCK));
    }

    #[test]
    fn after_expiry_the_count_starts_again() {
        let mut l = Lockout::new(2, LOCK);
        let t0 = Instant::now();
        fail(&mut l, "a", t0);
        fail(&mut l, "a", t0);
        let later = t0 + LOCK;
        assert_eq!(fail(&mut l, "a", later), None);
        assert_eq!(fail(&mut l, "a", later), Some(LOCK));
    }

    #[test]
    fn parallel_guesses_cannot_exceed_the_limit() {
        let mut l = Lockout::new(3, LOCK);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.begin("alice", t0).unwrap();
        }
        assert!(l.begin("alice", t0).is_err(), "a fourth concurrent guess is refused");
        l.finish("alice", Attempt::Failed, t0);
        l.finish("alice", Attempt::Failed, t0);
        assert_eq!(l.finish("alice", Attempt::Failed, t0), Some(LOCK));
    }

    #[test]
    fn zero_disables_lockout() {
        let mut l = Lockout::new(0, LOCK);
        for _ in 0..100 {
            assert_eq!(fail(&mut l, "a", Instant::now()), None);
        }
    }
}
