//! Private-chat requests waiting for an answer: who asked whom, and until when.
//!
//! Pure bookkeeping, like [`lockout`](super::lockout): the caller passes `now`. The
//! [`Hub`](super::hub::Hub) keeps one table under its routing lock, so that a request, its
//! answer, its expiry and either side logging out are ordered with presence and delivery. A
//! request is keyed by `(requester, target)`; there is at most one per pair and direction.

use std::collections::HashMap;

use tokio::time::Instant;

/// Requests not yet accepted, declined or expired.
#[derive(Debug, Default)]
pub struct PendingRequests {
    /// `(requester, target)` -> when the request expires.
    pending: HashMap<(String, String), Instant>,
}

impl PendingRequests {
    /// Records that `from` asked `to`, until `expires`. False if that request already waits.
    pub fn ask(&mut self, from: &str, to: &str, expires: Instant, now: Instant) -> bool {
        let key = (from.to_owned(), to.to_owned());
        if self.pending.get(&key).is_some_and(|&until| until > now) {
            return false;
        }
        self.pending.insert(key, expires);
        true
    }

    /// Removes the request of `from` to `to`; false if there is none or it has expired.
    pub fn take(&mut self, from: &str, to: &str, now: Instant) -> bool {
        self.pending.remove(&(from.to_owned(), to.to_owned())).is_some_and(|until| until > now)
    }

    /// Removes and returns every request that has expired by `now`, as `(requester, target)`.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.pending.remove(key);
        }
        expired
    }

    /// When the next request expires, if any waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// Removes and returns every request `user` made or received, as `(requester, target)`.
    pub fn forget(&mut self, user: &str) -> Vec<(String, String)> {
        let gone: Vec<_> =
            self.pending.keys().filter(|(from, to)| from == user || to == user).cloned().collect();
        for key in &gone {
            self.pending.remove(key);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINUTE: Duration = Duration::from_secs(60);

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn one_request_per_pair_and_direction_answered_once() {
        let now = Instant::now();
        let mut table = PendingRequests::default();
        assert!(table.ask("alice", "bob", now + MINUTE, now));
        assert!(!table.ask("alice", "bob", now + MINUTE, now), "already waiting");
        assert!(table.ask("bob", "alice", now + MINUTE, now), "the other direction is its own");
        assert!(!table.take("bob", "carol", now));
        assert!(table.take("alice", "bob", now));
        assert!(!table.take("alice", "bob", now), "answered once");
        assert!(table.ask("alice", "bob", now + MINUTE, now), "and then it can be asked again");
    }

    #[test]
    fn requests_expire_at_their_deadline_and_not_before() {
        let now = Instant::now();
        let mut table = PendingRequests::default();
        table.ask("alice", "bob", now + MINUTE, now);
        table.ask("carol", "bob", now + 2 * MINUTE, now);
        assert_eq!(table.next_deadline(), Some(now + MINUTE));
        assert!(table.expire(now + MINUTE - Duration::from_millis(1)).is_empty());
        assert_eq!(table.expire(now + MINUTE), [pair("alice", "bob")]);
        assert_eq!(table.next_deadline(), Some(now + 2 * MINUTE));
        // An answer that comes after the deadline, before the expiry ran, is too late.
        assert!(!table.take("carol", "bob", now + 2 * MINUTE));
        assert_eq!(table.next_deadline(), None);
        // A stale entry does not block a new request.
        table.ask("dave", "bob", now + MINUTE, now);
        assert!(table.ask("dave", "bob", now + 3 * MINUTE, now + 2 * MINUTE));
    }

    #[test]
    fn forgetting_a_user_drops_their_requests_both_ways() {
        let now = Instant::now();
        let mut table = PendingRequests::default();
        table.ask("alice", "bob", now + MINUTE, now);
        table.ask("bob", "carol", now + MINUTE, now);
        table.ask("carol", "dave", now + MINUTE, now);
        let mut gone = table.forget("bob");
        gone.sort();
        assert_eq!(gone, [pair("alice", "bob"), pair("bob", "carol")]);
        assert!(table.take("carol", "dave", now));
    }
}
