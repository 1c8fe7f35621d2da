//! The tokens a private-chat listener accepts: at most one per expected peer, each used once,
//! with the key the server vouched for that peer.
//!
//! Pure bookkeeping; the caller passes `now`. Accepting a request happens in two steps
//! because of a race: the server sends the requester its token at the same moment as it
//! answers the target, so the requester's `Hello` can reach the target's listener before the
//! target has read the answer. So the target first [`reserve`](Tokens::reserve)s a slot for
//! the requester (before asking the server), then [`fill`](Tokens::fill)s it with the token
//! from the answer. A `Hello` that finds an unfilled slot is told to [`Verdict::Wait`]; one
//! that finds no slot or an expired slot is rejected. Otherwise the caller's check runs with
//! the slot's token and key (the Noise handshake, which opens only if the peer used both);
//! a `Hello` that passes consumes the token, so it cannot be replayed. One that fails does
//! not consume the slot: otherwise anyone able to reach the port could spoil a chat by
//! guessing badly.
//!
//! A filled slot also knows the address the peer is coming from (the server's introduction
//! says), so that the listener can keep handshake slots for it that strangers cannot take
//! ([`Tokens::expects_from`], and [`super::limits`]).

use std::collections::HashMap;
use std::net::IpAddr;

use tokio::time::Instant;

use crate::limit::addr_key;
use crate::protocol::{PublicKey, Token};

/// Expected peers and their tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    expected: HashMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// The token and the peer's key; `None` until the server's answer has been read.
    token: Option<(Token, PublicKey)>,
    /// The peer's address key ([`addr_key`]), from the same answer.
    from: Option<IpAddr>,
    until: Instant,
}

/// What to do with a `Hello` from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<T> {
    /// The check passed, with this outcome: open the chat. The token is used up.
    Accept(T),
    /// A token for this peer is on its way: check again when it arrives.
    Wait,
    /// Close the connection.
    Reject(Rejection),
}

/// Why a `Hello` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No token is expected from this user: never issued, or already used.
    #[error("no token is expected from this user (never issued, or already used)")]
    Unexpected,
    /// The handshake did not open with the token and key the server issued for this user.
    #[error("wrong token or key")]
    WrongToken,
    /// The token was not used in time.
    #[error("the token has expired")]
    Expired,
}

impl Tokens {
    /// Expects a token for `peer`, to arrive by [`Tokens::fill`]; replaces any earlier one.
    pub fn reserve(&mut self, peer: &str, until: Instant) {
        self.expected.insert(peer.to_owned(), Slot { token: None, from: None, until });
    }

    /// Sets the token and key for a reserved `peer`, who will connect from `from`, valid
    /// until `until`. False if nothing was reserved.
    pub fn fill(
        &mut self,
        peer: &str,
        (token, key): (Token, PublicKey),
        from: IpAddr,
        until: Instant,
    ) -> bool {
        let Some(slot) = self.expected.get_mut(peer) else {
            return false;
        };
        *slot = Slot { token: Some((token, key)), from: Some(addr_key(from)), until };
        true
    }

    /// Whether a live token is expected from a peer at `ip` (compared by [`addr_key`]).
    pub fn expects_from(&self, ip: IpAddr, now: Instant) -> bool {
        let key = addr_key(ip);
        self.expected.values().any(|slot| slot.from == Some(key) && slot.until > now)
    }

    /// Forgets what was expected for `peer`.
    pub fn cancel(&mut self, peer: &str) {
        self.expected.remove(peer);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.expected.clear();
    }

    /// Judges a `Hello` from `peer`: `open` is tried with the token and key expected from
    /// `peer` and says whether the hello was made with them (`Some` of what it made).
    pub fn check<T>(
        &mut self,
        peer: &str,
        now: Instant,
        open: impl FnOnce(&Token, &PublicKey) -> Option<T>,
    ) -> Verdict<T> {
        let verdict = match self.expected.get(peer) {
            None => Verdict::Reject(Rejection::Unexpected),
            Some(slot) if slot.until <= now => Verdict::Reject(Rejection::Expired),
            Some(Slot { token: None, .. }) => Verdict::Wait,
            Some(Slot { token: Some((token, key)), .. }) => match open(token, key) {
                Some(opened) => Verdict::Accept(opened),
                None => Verdict::Reject(Rejection::WrongToken),
            },
        };
        if matches!(verdict, Verdict::Accept(_) | Verdict::Reject(Rejection::Expired)) {
            self.expected.remove(peer);
        }
        self.expected.retain(|_, slot| slot.until > now);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TTL: Duration = Duration::from_secs(30);
    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const KEY: PublicKey = PublicKey([5; 32]);

    /// Checks a hello that was made with `token` (and the right key).
    fn check(tokens: &mut Tokens, peer: &str, token: &Token, now: Instant) -> Verdict<()> {
        tokens.check(peer, now, |expected, key| (expected == token && *key == KEY).then_some(()))
    }

    #[test]
    fn a_token_is_accepted_once_for_its_user_only() {
        let now = Instant::now();
        let (mut tokens, token) = (Tokens::default(), Token::random());
        tokens.reserve("alice", now + TTL);
        assert!(tokens.fill("alice", (token, KEY), HOME, now + TTL));
        assert_eq!(
            check(&mut tokens, "carol", &token, now),
            Verdict::Reject(Rejection::Unexpected)
        );
        assert_eq!(check(&mut tokens, "alice", &token, now), Verdict::Accept(()));
        assert_eq!(
            check(&mut tokens, "alice", &token, now),
            Verdict::Reject(Rejection::Unexpected)
        );
    }

    #[test]
    fn a_wrong_token_is_rejected_without_spoiling_the_right_one() {
        let now = Instant::now();
        let (mut tokens, token) = (Tokens::default(), Token::random());
        tokens.reserve("alice", now + TTL);
        tokens.fill("alice", (token, KEY), HOME, now + TTL);
        let forged = Token::random();
        assert_eq!(
            check(&mut tokens, "alice", &forged, now),
            Verdict::Reject(Rejection::WrongToken)
        );
        assert_eq!(check(&mut tokens, "alice", &token, now), Verdict::Accept(()));
    }

    #[test]
    fn a_hello_before_the_token_waits_for_it() {
        let now = Instant::now();
        let (mut tokens, token) = (Tokens::default(), Token::random());
        tokens.reserve("alice", now + TTL);
        assert_eq!(check(&mut tokens, "alice", &token, now), Verdict::Wait);
        tokens.fill("alice", (token, KEY), HOME, now + TTL);
        assert_eq!(check(&mut tokens, "alice", &token, now), Verdict::Accept(()));
        assert!(!tokens.fill("bob", (token, KEY), HOME, now + TTL), "nothing reserved for bob");
        assert_eq!(check(&mut tokens, "bob", &token, now), Verdict::Reject(Rejection::Unexpected));
    }

    #[test]
    fn tokens_expire_and_cancelled_slots_are_gone() {
        let now = Instant::now();
        let (mut tokens, token) = (Tokens::default(), Token::random());
        tokens.reserve("alice", now + TTL);
        tokens.fill("alice", (token, KEY), HOME, now + TTL);
        assert_eq!(
            check(&mut tokens, "alice", &token, now + TTL),
            Verdict::Reject(Rejection::Expired)
        );
        assert_eq!(
            check(&mut tokens, "alice", &token, now),
            Verdict::Reject(Rejection::Unexpected)
        );
        tokens.reserve("bob", now + TTL);
        tokens.cancel("bob");
        assert_eq!(check(&mut tokens, "bob", &token, now), Verdict::Reject(Rejection::Unexpected));
        tokens.reserve("carol", now + TTL);
        tokens.fill("carol", (token, KEY), HOME, now + TTL);
        tokens.clear();
        assert_eq!(
            check(&mut tokens, "carol", &token, now),
            Verdict::Reject(Rejection::Unexpected)
        );
    }

    #[test]
    fn a_filled_slot_expects_its_peer_by_address_until_it_expires() {
        let now = Instant::now();
        let (mut tokens, token) = (Tokens::default(), Token::random());
        tokens.reserve("alice", now + TTL);
        assert!(!tokens.expects_from(HOME, now), "the address is not known before the answer");
        tokens.fill("alice", (token, KEY), HOME, now + TTL);
        assert!(tokens.expects_from(HOME, now));
        assert!(tokens.expects_from("::ffff:127.0.0.1".parse().unwrap(), now));
        assert!(!tokens.expects_from("127.0.0.2".parse().unwrap(), now));
        assert!(!tokens.expects_from(HOME, now + TTL));
        assert_eq!(check(&mut tokens, "alice", &token, now), Verdict::Accept(()));
        assert!(!tokens.expects_from(HOME, now), "a used token expects nobody");
    }

    #[test]
    fn stale_slots_are_pruned() {
        let now = Instant::now();
        let mut tokens = Tokens::default();
        for i in 0..100 {
            tokens.reserve(&format!("user{i}"), now + TTL);
        }
        check(&mut tokens, "nobody", &Token::random(), now + TTL);
        assert!(tokens.expected.is_empty());
    }
}
