//! How fast one logged-in user may send requests, per kind, and when they are flooding.
//!
//! Each kind of request ([`Kind`]: direct messages, group messages, broadcasts, history and
//! everything else) draws on a token bucket of its own ([`UserRates`], `--rate-*`), so a
//! burst of `/history` does not cost a user their messages. A request past its bucket is
//! answered at once with `RateLimited` and not run. Every refusal in turn draws on a
//! refusal bucket: a client that keeps sending after being told to slow down empties it and
//! is disconnected as flooding ([`Verdict::Flooding`]). A broadcast is the one request whose
//! cost lands on everybody else's queue, so its default is the tightest: at its rate no
//! bystander's queue can fill from one flooder.
//!
//! Pure bookkeeping with `now` passed in; [`Limiter`] is per session.

use std::time::Duration;

use tokio::time::Instant;

use super::limits::Limit;
use crate::limit::TokenBucket;
use crate::protocol::Request;

/// The kinds of request that have buckets of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/msg`.
    Direct,
    /// `/groupmsg`.
    Group,
    /// `/broadcast`.
    Broadcast,
    /// `/history`.
    History,
    /// Everything else (lists, blocks, groups, private chats, pings).
    Other,
}

impl Kind {
    /// The bucket a request draws on; `None` for the session's own requests (logout).
    pub fn of(request: &Request) -> Option<Kind> {
        Some(match request {
            Request::Msg { .. } => Kind::Direct,
            Request::GroupMsg { .. } => Kind::Group,
            Request::Broadcast { .. } => Kind::Broadcast,
            Request::History { .. } => Kind::History,
            Request::Logout => return None,
            _ => Kind::Other,
        })
    }

    /// What the refusal calls these requests.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Direct => "messages",
            Kind::Group => "group messages",
            Kind::Broadcast => "broadcasts",
            Kind::History => "history requests",
            Kind::Other => "requests",
        }
    }
}

/// Each kind's limit (`None`: unlimited), and how many refusals make a flood.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRates {
    /// `/msg` (`--rate-msg`).
    pub direct: Option<Limit>,
    /// `/groupmsg` (`--rate-groupmsg`).
    pub group: Option<Limit>,
    /// `/broadcast` (`--rate-broadcast`).
    pub broadcast: Option<Limit>,
    /// `/history` (`--rate-history`).
    pub history: Option<Limit>,
    /// Every other request (`--rate-other`).
    pub other: Option<Limit>,
    /// Refusals: past this bucket the user is disconnected as flooding (`--rate-refusals`).
    pub refusals: Option<Limit>,
}

impl Default for UserRates {
    fn default() -> Self {
        Self {
            direct: Some(Limit::new(5.0, 30)),
            group: Some(Limit::new(5.0, 30)),
            broadcast: Some(Limit::new(1.0, 10)),
            history: Some(Limit::new(2.0, 10)),
            other: Some(Limit::new(10.0, 50)),
            refusals: Some(Limit::new(1.0, 20)),
        }
    }
}

impl UserRates {
    /// No limit on anything (the relay benchmark's setting).
    pub fn off() -> Self {
        Self {
            direct: None,
            group: None,
            broadcast: None,
            history: None,
            other: None,
            refusals: None,
        }
    }

    fn limit(&self, kind: Kind) -> Option<Limit> {
        match kind {
            Kind::Direct => self.direct,
            Kind::Group => self.group,
            Kind::Broadcast => self.broadcast,
            Kind::History => self.history,
            Kind::Other => self.other,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Refuse it with `RateLimited`: one more of its kind may come after the duration.
    Refuse(Duration),
    /// Refuse it and end the session: the user keeps sending past their limits.
    Flooding,
}

/// One session's buckets, created as each kind is first used.
#[derive(Debug)]
pub struct Limiter {
    buckets: [Option<TokenBucket>; 5],
    refusals: Option<TokenBucket>,
}

impl Limiter {
    /// Nothing used yet.
    pub fn new() -> Self {
        Self { buckets: [None, None, None, None, None], refusals: None }
    }

    /// Whether a request of `kind` at `now` may run under `rates`.
    pub fn check(&mut self, rates: &UserRates, kind: Kind, now: Instant) -> Verdict {
        let Some(limit) = rates.limit(kind) else {
            return Verdict::Allow;
        };
        let bucket = self.buckets[kind as usize].get_or_insert_with(|| limit.bucket(now));
        let Err(wait) = bucket.try_take(now) else {
            return Verdict::Allow;
        };
        if self.refused(rates, now) {
            Verdict::Refuse(wait)
        } else {
            Verdict::Flooding
        }
    }

    /// Counts a refusal at `now` (a rate's, or any other: a malformed frame, say); false if
    /// it is one too many and the session is flooding.
    pub fn refused(&mut self, rates: &UserRates, now: Instant) -> bool {
        let Some(limit) = rates.refusals else {
            return true;
        };
        self.refusals.get_or_insert_with(|| limit.bucket(now)).take(now)
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> UserRates {
        UserRates {
            direct: Some(Limit::new(10.0, 3)),
            broadcast: Some(Limit::new(1.0, 2)),
            refusals: Some(Limit::new(1.0, 4)),
            ..UserRates::off()
        }
    }

    #[test]
    fn each_kind_has_its_own_bucket() {
        let now = Instant::now();
        let mut l = Limiter::new();
        let r = rates();
        assert_eq!(l.check(&r, Kind::Broadcast, now), Verdict::Allow);
        assert_eq!(l.check(&r, Kind::Broadcast, now), Verdict::Allow);
        assert_eq!(l.check(&r, Kind::Broadcast, now), Verdict::Refuse(Duration::from_secs(1)));
        assert!((0..3).all(|_| l.check(&r, Kind::Direct, now) == Verdict::Allow));
        assert!((0..100).all(|_| l.check(&r, Kind::History, now) == Verdict::Allow), "off");
        let later = now + Duration::from_secs(1);
        assert_eq!(l.check(&r, Kind::Broadcast, later), Verdict::Allow, "refilled");
    }

    #[test]
    fn refusals_past_their_bucket_are_a_flood() {
        let now = Instant::now();
        let mut l = Limiter::new();
        let r = rates();
        for _ in 0..2 {
            assert_eq!(l.check(&r, Kind::Broadcast, now), Verdict::Allow);
        }
        for _ in 0..4 {
            assert!(matches!(l.check(&r, Kind::Broadcast, now), Verdict::Refuse(_)));
        }
        assert_eq!(l.check(&r, Kind::Broadcast, now), Verdict::Flooding);
    }

    #[test]
    fn an_occasional_refusal_is_forgiven() {
        let start = Instant::now();
        let mut l = Limiter::new();
        let r = rates();
        // Two broadcasts every second, for a minute: one refused each second, never a flood.
        for sec in 0..60 {
            let now = start + Duration::from_secs(sec);
            for _ in 0..2 {
                assert_ne!(l.check(&r, Kind::Broadcast, now), Verdict::Flooding, "at {sec} s");
            }
        }
    }

    #[test]
    fn requests_sort_into_kinds() {
        let msg = Request::Msg { to: "bob".into(), text: "hi".into(), send_id: None };
        assert_eq!(Kind::of(&msg), Some(Kind::Direct));
        assert_eq!(Kind::of(&Request::Broadcast { text: "x".into() }), Some(Kind::Broadcast));
        assert_eq!(Kind::of(&Request::List), Some(Kind::Other));
        assert_eq!(Kind::of(&Request::Logout), None);
    }
}
