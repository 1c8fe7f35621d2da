//! What the private-chat listener lets strangers take, and how fast an open chat may talk.
//!
//! Pure bookkeeping; the caller passes `now`. Anyone who can reach the listener's port can
//! open connections to it, token or not, so the slots where a connection waits for its
//! `Hello` come in two lanes ([`Handshakes`]):
//!
//! - A **stranger** (an address no token is expected from) takes a slot from a shared pool of
//!   [`HandshakeLimits::strangers`], at most [`HandshakeLimits::per_addr`] per address (per
//!   /64 for IPv6, where one host has many), and is refused at once past either.
//! - The **expected peer** is known by address before it connects: the server's
//!   introduction names it along with the token. A connection from that address goes to a
//!   lane of its own, [`HandshakeLimits::reserved`] slots per address, which nobody
//!   elsewhere can fill. Someone behind the same address (a shared NAT) can; so when that
//!   lane is full, the oldest connection in it that has not said anything yet is evicted to
//!   make room. The real peer sends its `Hello` as soon as it is connected, so it stops
//!   being evictable after one round trip; idle connections evict only each other.
//!
//! An open chat draws each received message from a [`TokenBucket`](crate::limit::TokenBucket)
//! ([`Rate`]: a burst, then a steady rate); a peer that goes past it is flooding and the chat
//! is closed.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::limit::addr_key;

/// How many connections may wait for their `Hello` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Connections from addresses no token is expected from, all together.
    pub strangers: usize,
    /// Connections from any one such address (IPv6: one /64).
    pub per_addr: usize,
    /// Connections from the address of a peer whose token is expected.
    pub reserved: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self { strangers: 32, per_addr: 4, reserved: 4 }
    }
}

/// One handshake's place in [`Handshakes`].
pub type HandshakeId = u64;

/// Where an admitted connection waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// This handshake; give it back with [`Handshakes::finish`].
    pub id: HandshakeId,
    /// True if it took a slot of the expected peer's lane.
    pub reserved: bool,
    /// A handshake that had to make room for this one: close it now.
    pub evict: Option<HandshakeId>,
}

/// Why a connection was refused a handshake slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This address holds as many handshakes as one address may.
    #[error("too many handshakes from this address at once")]
    PerAddr,
    /// Strangers hold every slot of the shared pool.
    #[error("too many handshakes at once")]
    Full,
    /// The expected peer's lane is full of connections that have all said hello already.
    #[error("the expected peer's handshake slots are all in use")]
    ReservedBusy,
}

/// The handshakes in progress, by lane.
#[derive(Debug)]
pub struct Handshakes {
    limits: HandshakeLimits,
    next: HandshakeId,
    /// Stranger handshakes per address key.
    per_addr: HashMap<IpAddr, usize>,
    /// Every handshake: its address key and lane.
    live: HashMap<HandshakeId, (IpAddr, bool)>,
    /// The reserved lane, oldest first: (id, address key, has said something).
    reserved: Vec<(HandshakeId, IpAddr, bool)>,
    strangers: usize,
}

impl Handshakes {
    /// No handshakes yet, under `limits`.
    pub fn new(limits: HandshakeLimits) -> Self {
        Self {
            limits,
            next: 1,
            per_addr: HashMap::new(),
            live: HashMap::new(),
            reserved: Vec::new(),
            strangers: 0,
        }
    }

    /// Finds a slot for a connection from `ip`; `expected` says whether a token is expected
    /// from that address (see [`addr_key`]).
    pub fn admit(&mut self, ip: IpAddr, expected: bool) -> Result<Admitted, Refusal> {
        let key = addr_key(ip);
        let mut evict = None;
        if expected {
            let in_lane = self.reserved.iter().filter(|(_, k, _)| *k == key).count();
            if in_lane >= self.limits.reserved {
                let idle = self.reserved.iter().position(|(_, k, heard)| *k == key && !heard);
                let Some(idle) = idle else {
                    return Err(Refusal::ReservedBusy);
                };
                let (old, _, _) = self.reserved.remove(idle);
                self.live.remove(&old);
                evict = Some(old);
            }
        } else {
            let from_addr = self.per_addr.get(&key).copied().unwrap_or(0);
            if from_addr >= self.limits.per_addr {
                return Err(Refusal::PerAddr);
            }
            if self.strangers >= self.limits.strangers {
                return Err(Refusal::Full);
            }
            self.per_addr.insert(key, from_addr + 1);
            self.strangers += 1;
        }
        let id = self.next;
        self.next += 1;
        self.live.insert(id, (key, expected));
        if expected {
            self.reserved.push((id, key, false));
        }
        Ok(Admitted { id, reserved: expected, evict })
    }

    /// Handshake `id` has sent its first frame: it can no longer be evicted.
    pub fn heard(&mut self, id: HandshakeId) {
        if let Some(entry) = self.reserved.iter_mut().find(|(i, _, _)| *i == id) {
            entry.2 = true;
        }
    }

    /// Handshake `id` is over (or was evicted); its slot is free. Unknown ids are ignored.
    pub fn finish(&mut self, id: HandshakeId) {
        let Some((key, reserved)) = self.live.remove(&id) else {
            return;
        };
        if reserved {
            self.reserved.retain(|(i, _, _)| *i != id);
            return;
        }
        self.strangers -= 1;
        match self.per_addr.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.per_addr.remove(&key);
            }
        }
    }

    /// Handshakes in progress: (strangers, reserved).
    pub fn counts(&self) -> (usize, usize) {
        (self.strangers, self.reserved.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    const LIMITS: HandshakeLimits = HandshakeLimits { strangers: 6, per_addr: 2, reserved: 2 };

    #[test]
    fn strangers_are_capped_per_address_and_in_all() {
        let mut h = Handshakes::new(LIMITS);
        let a = h.admit(v4(2), false).unwrap();
        h.admit(v4(2), false).unwrap();
        assert_eq!(h.admit(v4(2), false), Err(Refusal::PerAddr));
        for last in 3..=6 {
            h.admit(v4(last), false).unwrap();
        }
        assert_eq!(h.admit(v4(7), false), Err(Refusal::Full));
        assert_eq!(h.counts(), (6, 0));
        h.finish(a.id);
        h.finish(a.id);
        assert_eq!(h.counts(), (5, 0), "finishing twice frees one slot");
        h.admit(v4(2), false).unwrap();
        assert_eq!(h.admit(v4(2), false), Err(Refusal::PerAddr));
    }

    #[test]
    fn the_expected_peer_gets_in_when_strangers_hold_every_slot() {
        let mut h = Handshakes::new(LIMITS);
        for last in 2..=7 {
            h.admit(v4(last), false).unwrap();
        }
        assert_eq!(h.admit(v4(1), false), Err(Refusal::Full));
        let peer = h.admit(v4(1), true).unwrap();
        assert_eq!((peer.reserved, peer.evict), (true, None));
        assert_eq!(h.counts(), (6, 1));
    }

    #[test]
    fn a_full_reserved_lane_evicts_its_oldest_silent_connection() {
        let mut h = Handshakes::new(LIMITS);
        let first = h.admit(v4(1), true).unwrap();
        let second = h.admit(v4(1), true).unwrap();
        let third = h.admit(v4(1), true).unwrap();
        assert_eq!(third.evict, Some(first.id));
        h.finish(first.id); // the evicted task ends later: no effect on the others
        assert_eq!(h.counts(), (0, 2));
        // Once both in the lane have spoken, a newcomer must wait its turn.
        h.heard(second.id);
        h.heard(third.id);
        assert_eq!(h.admit(v4(1), true), Err(Refusal::ReservedBusy));
        h.finish(second.id);
        assert_eq!(h.admit(v4(1), true).unwrap().evict, None);
        // Another expected address has a lane of its own.
        assert!(h.admit(v4(9), true).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.5".parse().unwrap();
        assert_eq!(addr_key(mapped), v4(5));
        let mut h = Handshakes::new(LIMITS);
        h.admit(a, false).unwrap();
        h.admit(b, false).unwrap();
        assert_eq!(h.admit(a, false), Err(Refusal::PerAddr));
        assert!(h.admit(c, false).is_ok());
    }
}
