//! The server's UDP endpoint: where clients learn their public address, and the relay of
//! last resort between two clients that find no direct path.
//!
//! The datagrams are in [`crate::protocol::rendezvous`]. [`Rendezvous`] is the pure
//! bookkeeping (with `now` passed in): each logged-in session's binding (its id, secret,
//! last counter and the address its last genuine bind came from), the relay links the
//! introductions made, and the caps. [`serve`] is the socket loop around it.
//!
//! - A bind is genuine if its HMAC opens under the session's secret and its counter is
//!   above the last one; the answer goes to the address it came from, so a forged source
//!   address gets nothing back, and a stranger's datagrams are never answered. Datagrams
//!   that fail (unknown session, wrong tag, unknown link, a source that is not the link's)
//!   draw on a bucket per source address, and once it is empty that address's datagrams
//!   are dropped unread: no HMAC is computed for a flood.
//! - A relay link joins the two users of one introduction. A datagram on it is forwarded
//!   only from the address one side's bind proved, only to the address the other side's
//!   bind proved, unchanged, and only within the link's and the sending user's byte rates
//!   (`--relay-link-rate`, `--relay-user-rate`). A link unused for [`LINK_IDLE`] is
//!   forgotten, and so is every link of a user who logs out.
//! - Private chats relayed over the TCP connections ([`Rendezvous::relay_chat`]) use the
//!   same links and caps.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limit::{addr_key, Rate, TokenBucket};
use crate::protocol::rendezvous::{self, Datagram};
use crate::protocol::{LinkId, Token, UdpBinding};

/// A relay link unused this long is forgotten.
pub const LINK_IDLE: Duration = Duration::from_secs(120);
/// Failed datagrams one source address may send: a burst, then a rate.
const STRANGER_RATE: Rate = Rate { burst: 64, per_second: 16 };
/// Source addresses whose failures are remembered at most (a full table forgets the
/// addresses whose buckets have refilled, or else all of them).
const MAX_STRANGERS: usize = 16_384;
/// How much of a byte cap may pass at once after a quiet spell, in seconds of its rate.
const BURST_SECONDS: f64 = 0.05;

/// The relay's caps, in bytes a second (0: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCaps {
    /// One link (both directions together).
    pub link: u64,
    /// One user's relayed traffic, over all their links.
    pub user: u64,
}

impl Default for RelayCaps {
    fn default() -> Self {
        // 100 Mbit/s a link, 200 Mbit/s a user.
        Self { link: 12_500_000, user: 25_000_000 }
    }
}

/// What the UDP endpoint has done, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Genuine binds answered.
    pub binds: u64,
    /// Datagrams forwarded on a link.
    pub relayed: u64,
    /// Bytes forwarded on links (datagrams and chat frames).
    pub relayed_bytes: u64,
    /// Relayed datagrams dropped for a cap.
    pub over_cap: u64,
    /// Datagrams that failed: unknown, forged, replayed, foreign.
    pub refused: u64,
    /// Datagrams dropped unread because their source had failed too often.
    pub limited: u64,
}

/// What to do with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answer `to` with these bytes.
    Answer(Vec<u8>),
    /// Forward the datagram, unchanged, to this address.
    Forward(SocketAddr),
    /// Drop it.
    Drop,
}

/// The sessions' bindings, the relay links, the caps.
pub struct Rendezvous {
    state: Mutex<State>,
    caps: RelayCaps,
    port: u16,
}

struct State {
    bindings: HashMap<u64, Binding>,
    by_user: HashMap<String, u64>,
    links: HashMap<LinkId, Link>,
    users: HashMap<String, ByteBucket>,
    strangers: HashMap<IpAddr, TokenBucket>,
    stats: RendezvousStats,
}

struct Binding {
    user: String,
    secret: Token,
    counter: u64,
    addr: Option<SocketAddr>,
}

struct Link {
    ends: [String; 2],
    bucket: ByteBucket,
    used: Instant,
}

impl Rendezvous {
    /// Bookkeeping for a UDP endpoint on `port` (0: none; bindings are still made, so that
    /// chats can be relayed over TCP), relaying within `caps`.
    pub fn new(port: u16, caps: RelayCaps) -> Self {
        let state = State {
            bindings: HashMap::new(),
            by_user: HashMap::new(),
            links: HashMap::new(),
            users: HashMap::new(),
            strangers: HashMap::new(),
            stats: RendezvousStats::default(),
        };
        Self { state: Mutex::new(state), caps, port }
    }

    /// A fresh binding for `user`'s new session, replacing any earlier one; `None` without
    /// a UDP endpoint.
    pub fn register(&self, user: &str) -> Option<UdpBinding> {
        if self.port == 0 {
            return None;
        }
        let binding = UdpBinding { port: self.port, id: rand::random(), secret: Token::random() };
        let mut state = self.state();
        if let Some(old) = state.by_user.insert(user.to_owned(), binding.id) {
            state.bindings.remove(&old);
        }
        let entry =
            Binding { user: user.to_owned(), secret: binding.secret, counter: 0, addr: None };
        state.bindings.insert(binding.id, entry);
        Some(binding)
    }

    /// `user`'s session has ended: its binding and every link it is on are forgotten.
    pub fn unregister(&self, user: &str) {
        let mut state = self.state();
        if let Some(id) = state.by_user.remove(user) {
            state.bindings.remove(&id);
        }
        state.links.retain(|_, link| !link.ends.iter().any(|end| end == user));
        state.users.remove(user);
    }

    /// The address `user`'s last genuine bind came from: their reflexive address.
    pub fn reflexive(&self, user: &str) -> Option<SocketAddr> {
        let state = self.state();
        let id = state.by_user.get(user)?;
        state.bindings.get(id)?.addr
    }

    /// A new relay link between `a` and `b`, for one introduction.
    pub fn link(&self, a: &str, b: &str, now: Instant) -> LinkId {
        let id = LinkId::random();
        let link = Link {
            ends: [a.to_owned(), b.to_owned()],
            bucket: ByteBucket::new(self.caps.link, now),
            used: now,
        };
        let mut state = self.state();
        state.links.retain(|_, link| now.saturating_duration_since(link.used) < LINK_IDLE);
        state.links.insert(id, link);
        id
    }

    /// Forgets `link` (its introduction was refused after all).
    pub fn drop_link(&self, link: &LinkId) {
        self.state().links.remove(link);
    }

    /// The other end of `link` for chat bytes `from` relays over TCP, if `from` is on it and
    /// the caps let `len` bytes through now.
    pub fn relay_chat(
        &self,
        link: &LinkId,
        from: &str,
        len: usize,
        now: Instant,
    ) -> Option<String> {
        let mut state = self.state();
        let State { links, users, stats, .. } = &mut *state;
        let entry = links.get_mut(link)?;
        let to = entry.other(from)?.to_owned();
        let user =
            users.entry(from.to_owned()).or_insert_with(|| ByteBucket::new(self.caps.user, now));
        if !entry.bucket.take(len, now) || !user.take(len, now) {
            stats.over_cap += 1;
            return None;
        }
        entry.used = now;
        stats.relayed_bytes += len as u64;
        Some(to)
    }

    /// Judges one datagram that came from `from`.
    pub fn handle(&self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Verdict {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let mut state = self.state();
        let key = addr_key(from.ip());
        if state.strangers.get(&key).is_some_and(|bucket| !bucket.can_take(now)) {
            state.stats.limited += 1;
            return Verdict::Drop;
        }
        let verdict = match rendezvous::parse(bytes) {
            Ok(Datagram::Bind { id, counter, tag }) => state.bind(id, counter, tag, from),
            Ok(Datagram::Relay { link, payload }) => {
                state.forward(&link, from, payload.len() + rendezvous::RELAY_HEADER, self.caps, now)
            }
            Ok(Datagram::Seen { .. }) | Err(_) => None,
        };
        match verdict {
            Some(verdict) => verdict,
            None => {
                state.stats.refused += 1;
                state.stranger(key, now);
                Verdict::Drop
            }
        }
    }

    /// What the endpoint has done so far.
    pub fn stats(&self) -> RendezvousStats {
        self.state().stats
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// A bind's verdict; `None` if it fails.
    fn bind(&mut self, id: u64, counter: u64, tag: &[u8], from: SocketAddr) -> Option<Verdict> {
        let binding = self.bindings.get_mut(&id)?;
        if counter <= binding.counter
            || !rendezvous::bind_is_genuine(&binding.secret, id, counter, tag)
        {
            return None;
        }
        binding.counter = counter;
        if binding.addr != Some(from) {
            tracing::debug!(user = %binding.user, %from, "reflexive address");
        }
        binding.addr = Some(from);
        self.stats.binds += 1;
        Some(Verdict::Answer(rendezvous::seen(counter, from)))
    }

    /// A relayed datagram's verdict; `None` if it fails (a cap's drop is not a failure).
    fn forward(
        &mut self,
        link: &LinkId,
        from: SocketAddr,
        len: usize,
        caps: RelayCaps,
        now: Instant,
    ) -> Option<Verdict> {
        let address = |bindings: &HashMap<u64, Binding>, by_user: &HashMap<String, u64>, user| {
            by_user.get(user).and_then(|id| bindings.get(id)).and_then(|b| b.addr)
        };
        let entry = self.links.get_mut(link)?;
        let [a, b] = &entry.ends;
        let (a_addr, b_addr) =
            (address(&self.bindings, &self.by_user, a), address(&self.bindings, &self.by_user, b));
        let (sender, to) = if a_addr == Some(from) {
            (a, b_addr?)
        } else if b_addr == Some(from) {
            (b, a_addr?)
        } else {
            return None;
        };
        let user =
            self.users.entry(sender.clone()).or_insert_with(|| ByteBucket::new(caps.user, now));
        if !entry.bucket.take(len, now) || !user.take(len, now) {
            self.stats.over_cap += 1;
            return Some(Verdict::Drop);
        }
        entry.used = now;
        self.stats.relayed += 1;
        self.stats.relayed_bytes += len as u64;
        Some(Verdict::Forward(to))
    }

    /// Counts a failure against the source address `key`.
    fn stranger(&mut self, key: IpAddr, now: Instant) {
        if self.strangers.len() >= MAX_STRANGERS && !self.strangers.contains_key(&key) {
            self.strangers.retain(|_, bucket| !bucket.is_full(now));
            if self.strangers.len() >= MAX_STRANGERS {
                self.strangers.clear();
            }
        }
        self.strangers.entry(key).or_insert_with(|| TokenBucket::new(STRANGER_RATE, now)).take(now);
    }
}

impl Link {
    fn other(&self, user: &str) -> Option<&str> {
        match &self.ends {
            [a, b] if a == user => Some(b),
            [a, b] if b == user => Some(a),
            _ => None,
        }
    }
}

/// A cap of `rate` bytes a second (a [`TokenBucket`] with a byte as the token), or none
/// for a rate of 0.
struct ByteBucket(Option<TokenBucket>);

impl ByteBucket {
    fn new(rate: u64, now: Instant) -> Self {
        if rate == 0 {
            return ByteBucket(None);
        }
        let per_second = u32::try_from(rate).unwrap_or(u32::MAX);
        let burst = ((rate as f64 * BURST_SECONDS) as u32).max(65_536);
        ByteBucket(Some(TokenBucket::new(Rate { burst, per_second }, now)))
    }

    /// Takes `len` bytes at `now`; false (nothing taken) if they do not fit.
    fn take(&mut self, len: usize, now: Instant) -> bool {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.0.as_mut().is_none_or(|bucket| bucket.take_n(len, now))
    }
}

/// Serves the UDP endpoint on `socket` until `stop`.
pub async fn serve(socket: UdpSocket, rendezvous: Arc<Rendezvous>, stop: CancellationToken) {
    let mut buffer = vec![0; 65_536];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (len, from) = match received {
            Ok(pair) => pair,
            // An ICMP error for an earlier send (a client gone): nothing to do.
            Err(e) => {
                tracing::debug!("rendezvous receive: {e}");
                continue;
            }
        };
        let datagram = &buffer[..len];
        let sent = match rendezvous.handle(Instant::now(), from, datagram) {
            Verdict::Answer(bytes) => socket.send_to(&bytes, from).await,
            Verdict::Forward(to) => socket.send_to(datagram, to).await,
            Verdict::Drop => continue,
        };
        if let Err(e) = sent {
            tracing::debug!("rendezvous send: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::rendezvous::{bind, relay_header, RELAY_HEADER};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn relayed(link: &LinkId, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; RELAY_HEADER];
        relay_header(link, &mut bytes);
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A rendezvous where alice and bob have bound from the given addresses.
    fn bound(caps: RelayCaps, alice: SocketAddr, bob: SocketAddr, now: Instant) -> Rendezvous {
        let r = Rendezvous::new(4000, caps);
        for (user, from) in [("alice", alice), ("bob", bob)] {
            let binding = r.register(user).unwrap();
            let verdict = r.handle(now, from, &bind(&binding, 1));
            assert!(matches!(verdict, Verdict::Answer(_)), "{user}'s bind is answered");
        }
        r
    }

    #[test]
    fn a_genuine_bind_learns_the_reflexive_address_and_a_replay_does_not() {
        let now = Instant::now();
        let r = Rendezvous::new(4000, RelayCaps::default());
        let binding = r.register("alice").unwrap();
        let first = bind(&binding, 1);
        let nat = addr("198.51.100.2:40000");
        let Verdict::Answer(answer) = r.handle(now, nat, &first) else { panic!("answered") };
        assert_eq!(rendezvous::parse(&answer), Ok(Datagram::Seen { counter: 1, addr: nat }));
        assert_eq!(r.reflexive("alice"), Some(nat));

        // Replayed from elsewhere, the same bind moves nothing; a forged one neither.
        assert_eq!(r.handle(now, addr("203.0.113.66:9"), &first), Verdict::Drop);
        let forged = bind(&UdpBinding { secret: Token([1; 16]), ..binding }, 2);
        assert_eq!(r.handle(now, addr("203.0.113.66:9"), &forged), Verdict::Drop);
        assert_eq!(r.reflexive("alice"), Some(nat));
        assert_eq!(r.stats().refused, 2);

        // The next genuine one (the NAT gave a new port) moves it.
        let moved = addr("198.51.100.2:40007");
        assert!(matches!(r.handle(now, moved, &bind(&binding, 2)), Verdict::Answer(_)));
        assert_eq!(r.reflexive("alice"), Some(moved));

        // A new login replaces the binding; logging out forgets it.
        let again = r.register("alice").unwrap();
        assert_eq!(r.handle(now, moved, &bind(&binding, 3)), Verdict::Drop);
        assert!(matches!(r.handle(now, moved, &bind(&again, 1)), Verdict::Answer(_)));
        r.unregister("alice");
        assert_eq!(r.reflexive("alice"), None);
    }

    #[test]
    fn a_link_forwards_only_between_its_two_bound_addresses() {
        let now = Instant::now();
        let (alice, bob) = (addr("198.51.100.2:40000"), addr("192.0.2.9:50000"));
        let r = bound(RelayCaps::default(), alice, bob, now);
        let link = r.link("alice", "bob", now);
        assert_eq!(r.handle(now, alice, &relayed(&link, b"sealed")), Verdict::Forward(bob));
        assert_eq!(r.handle(now, bob, &relayed(&link, b"sealed")), Verdict::Forward(alice));
        // Anyone else, another port of alice's NAT included, is refused; so is another link.
        assert_eq!(r.handle(now, addr("198.51.100.2:40001"), &relayed(&link, b"x")), Verdict::Drop);
        assert_eq!(r.handle(now, alice, &relayed(&LinkId([0; 16]), b"x")), Verdict::Drop);
        assert_eq!(r.stats().relayed, 2);
        // Once bob has logged out, the link is gone.
        r.unregister("bob");
        assert_eq!(r.handle(now, alice, &relayed(&link, b"sealed")), Verdict::Drop);
    }

    #[test]
    fn the_link_cap_holds_a_relayed_transfer_to_its_rate() {
        let start = Instant::now();
        let (alice, bob) = (addr("198.51.100.2:40000"), addr("192.0.2.9:50000"));
        let caps = RelayCaps { link: 1_000_000, user: 0 };
        let r = bound(caps, alice, bob, start);
        let link = r.link("alice", "bob", start);
        let datagram = relayed(&link, &[0; 1000]);
        // Offered at 10 MB/s for two seconds, a datagram every 100 µs.
        let mut forwarded = 0;
        for i in 0..20_000u32 {
            let now = start + Duration::from_micros(100) * i;
            if r.handle(now, alice, &datagram) == Verdict::Forward(bob) {
                forwarded += datagram.len();
            }
        }
        // Two seconds at 1 MB/s, plus the burst.
        assert!((2_000_000..2_100_000).contains(&forwarded), "{forwarded} bytes forwarded");
        assert!(r.stats().over_cap > 0);
    }

    #[test]
    fn a_flooding_stranger_is_dropped_unread_and_the_table_stays_bounded() {
        let now = Instant::now();
        let r = Rendezvous::new(4000, RelayCaps::default());
        let binding = r.register("alice").unwrap();
        let stranger = addr("203.0.113.66:9");
        let forged = bind(&UdpBinding { secret: Token([1; 16]), ..binding }, 1);
        for _ in 0..1000 {
            assert_eq!(r.handle(now, stranger, &forged), Verdict::Drop);
        }
        let stats = r.stats();
        assert_eq!(stats.refused, u64::from(STRANGER_RATE.burst));
        assert_eq!(stats.limited, 1000 - u64::from(STRANGER_RATE.burst));
        // alice herself, from another address, is not held up by the stranger.
        assert!(matches!(
            r.handle(now, addr("198.51.100.2:40000"), &bind(&binding, 1)),
            Verdict::Answer(_)
        ));
        // Many strangers: the table never passes its bound.
        for i in 0..(MAX_STRANGERS as u32 + 100) {
            let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            r.handle(now, SocketAddr::new(ip, 9), b"junk");
        }
        assert!(r.state().strangers.len() <= MAX_STRANGERS);
    }

    #[test]
    fn chat_bytes_are_relayed_only_between_the_links_users() {
        let now = Instant::now();
        let r = Rendezvous::new(0, RelayCaps::default());
        let link = r.link("alice", "bob", now);
        assert_eq!(r.relay_chat(&link, "alice", 100, now).as_deref(), Some("bob"));
        assert_eq!(r.relay_chat(&link, "bob", 100, now).as_deref(), Some("alice"));
        assert_eq!(r.relay_chat(&link, "eve", 100, now), None);
        r.unregister("alice");
        assert_eq!(r.relay_chat(&link, "bob", 100, now), None);
    }
}
