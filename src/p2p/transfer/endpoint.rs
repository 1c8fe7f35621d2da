//! The transfers of one client as one sans-io endpoint: datagrams in, datagrams out.
//!
//! The [`Endpoint`] holds every transfer's state machine with its peer's address and its
//! keys ([`super::crypto`]), and the offers the server has announced. It does no I/O and
//! reads no clock, in the manner of quinn-proto's `Endpoint`: the [engine](super::engine)
//! drives it with a UDP socket and files, and [the simulator](super::sim) drives two of
//! them against each other over a simulated link, so both run the same checks.
//!
//! A datagram reaches a machine only if its header parses, its transfer is known (or it is
//! an offer the server announced, from the address the server gave, that opens with the
//! sender's key and the token), it comes from that transfer's peer, and its seal opens
//! under a packet number not seen before. Everything else is dropped and counted
//! ([`TransferStats`]); no machine ever sees it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::crypto::{self, Offering, PacketKeys, Refused, PUNCH_LEN};
use super::pmtu::ip_header;
use super::receiver::{Receiver, ReceiverConfig};
use super::sender::{Sender, SenderConfig};
use super::wire::{self, Framing, Header, Packet, TransferId, ANSWER_LEN, HEADER_LEN};
use crate::p2p::identity::Identity;
use crate::p2p::noise::{Keys, NoiseError};
use crate::p2p::{normalize, Route};
use crate::protocol::{valid_file_name, Introduction, LinkId, PublicKey, Token};

/// Which way a transfer goes, seen from this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This client sends the file.
    Send,
    /// This client receives it.
    Receive,
}

impl Direction {
    /// The arrow progress displays put before a transfer's name.
    pub fn arrow(self) -> char {
        match self {
            Direction::Send => '↑',
            Direction::Receive => '↓',
        }
    }
}

/// How long an offer tries the peer's addresses alone before the relay is tried too.
pub const RELAY_AFTER: Duration = Duration::from_millis(1500);
/// Most addresses one offer is sent to (the introduced ones and those learned from punches).
const MAX_CANDIDATES: usize = 8;
/// When the receiver punches toward the sender, counted from the server's announcement; then
/// every [`PUNCH_EVERY`] until the offer comes.
const PUNCHES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];
const PUNCH_EVERY: Duration = Duration::from_secs(1);
/// How often a relayed transfer sends one datagram straight to the peer's addresses as
/// well, in case a direct path has opened since.
pub const DIRECT_RETRY: Duration = Duration::from_secs(1);

/// One transfer, as the user knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Its id (random, chosen by the sender).
    pub id: TransferId,
    /// The other user.
    pub peer: String,
    /// The file's name, without directories.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Which way it goes.
    pub direction: Direction,
}

/// A file the server said is coming: from its `FileOffer` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFile {
    /// The sender.
    pub from: String,
    /// The sender's UDP addresses (reflexive, the session's, local), best first: punched
    /// toward, and the offer is let in from their IP addresses.
    pub addrs: Vec<SocketAddr>,
    /// The relay link the offer may come through instead.
    pub relay: Option<LinkId>,
    /// The transfer's token.
    pub token: Token,
    /// The sender's identity key, as the server vouches for it.
    pub key: PublicKey,
    /// The file's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

impl IncomingFile {
    /// The file of a server's `FileOffer` event: `from` is the sender's introduction.
    pub fn new(from: &Introduction, name: &str, size: u64) -> Self {
        let (addrs, relay, token, key) = (from.addresses(), from.relay, from.token, from.key);
        Self { from: from.peer.clone(), addrs, relay, token, key, name: name.to_owned(), size }
    }
}

/// Datagrams the endpoint threw away, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Did not parse (truncated, foreign, or a body that makes no sense once opened).
    pub malformed: u64,
    /// Named a transfer this client does not have.
    pub unknown: u64,
    /// Came from the wrong address, or did not open: altered, damaged on the way, or made
    /// without the key and the token (an offer the server never announced among them).
    pub forged: u64,
    /// Opened once already: a copy, or a replay.
    pub replayed: u64,
}

/// Who this endpoint is, and the settings of its machines.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This client's username.
    pub me: String,
    /// This client's key pair.
    pub identity: Identity,
    /// The sending side's settings.
    pub sender: SenderConfig,
    /// The receiving side's settings.
    pub receiver: ReceiverConfig,
    /// How long an offer the server announced may take to arrive.
    pub offer_ttl: Duration,
}

/// The state machine of one transfer.
#[derive(Debug)]
pub enum Machine {
    /// This client sends.
    Send(Box<Sender>),
    /// This client receives.
    Receive(Box<Receiver>),
}

impl Machine {
    fn handle(&mut self, now: Instant, packet: Packet<'_>) {
        match self {
            Machine::Send(sender) => sender.handle(now, packet),
            Machine::Receive(receiver) => receiver.handle(now, packet),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::Send(sender) => sender.handle_timeout(now),
            Machine::Receive(receiver) => receiver.handle_timeout(now),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::Send(sender) => sender.poll_timeout(),
            Machine::Receive(receiver) => receiver.poll_timeout(),
        }
    }

    fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        match self {
            Machine::Send(sender) => sender.poll_transmit(now, out),
            Machine::Receive(receiver) => receiver.poll_transmit(now, out),
        }
    }

    /// Gives up the transfer; the peer is told.
    pub fn cancel(&mut self) {
        match self {
            Machine::Send(sender) => sender.cancel(),
            Machine::Receive(receiver) => receiver.cancel(),
        }
    }

    /// Bytes done and the file's size.
    pub fn progress(&self) -> (u64, u64) {
        match self {
            Machine::Send(sender) => sender.progress(),
            Machine::Receive(receiver) => receiver.progress(),
        }
    }

    /// Whether the machine has nothing left to do.
    pub fn is_over(&self) -> bool {
        match self {
            Machine::Send(sender) => sender.is_over(),
            Machine::Receive(receiver) => receiver.is_over(),
        }
    }
}

/// Where a transfer's handshake stands.
enum Link {
    /// Sending, and the receiver has not answered yet: only the offer (or its withdrawal)
    /// can be sent.
    Offering(Box<Offering>),
    /// Sending, with the keys of the receiver's `answer` (a repeat of it is recognised).
    Sending { keys: PacketKeys, answer: [u8; ANSWER_LEN] },
    /// Receiving. `offer` is the offer datagram (a repeat of it is recognised) and
    /// `offer_plain` its plaintext; `answer` goes in front of every datagram until the
    /// sender has sealed something (`confirmed`).
    Receiving {
        keys: PacketKeys,
        offer: Vec<u8>,
        offer_plain: Vec<u8>,
        answer: [u8; ANSWER_LEN],
        withdraw: Token,
        confirmed: bool,
    },
}

/// One transfer: what the user knows of it, the peer's address, the machine, the keys, and
/// whatever the driver keeps beside them (`local`).
pub struct Connection<T> {
    /// The transfer.
    pub transfer: Transfer,
    /// The route to the peer; datagrams from any other are dropped. While an offer is
    /// unanswered this is only its first address: [`Endpoint::destinations`] names all.
    pub route: Route,
    /// Its state machine.
    pub machine: Machine,
    /// The driver's own state of this transfer.
    pub local: T,
    link: Link,
    /// An unanswered offer's other ways to the peer.
    trying: Option<Box<Trying>>,
    /// A relayed transfer's direct addresses of the peer, tried now and then: a datagram
    /// that opens from one of them moves the transfer there.
    direct: Option<Box<DirectTry>>,
}

/// When a relayed transfer next tries the peer's addresses.
struct DirectTry {
    addrs: Vec<SocketAddr>,
    next: Instant,
}

/// Where an unanswered offer is sent: every address, and the relay after [`RELAY_AFTER`].
struct Trying {
    addrs: Vec<SocketAddr>,
    relay: Option<LinkId>,
    since: Instant,
    /// What the receiver's punches carry.
    punch_tag: [u8; 16],
}

struct Expected {
    incoming: IncomingFile,
    until: Instant,
    /// Answer the offer with a decline as soon as it opens, without asking (the user's
    /// client refuses it: the sender's key is not the one the user verified).
    refuse: bool,
    /// What to punch with, how many rounds went, and when the next is due.
    punch: [u8; PUNCH_LEN],
    punches: usize,
    next_punch: Instant,
    announced: Instant,
}

/// Every transfer of one client.
pub struct Endpoint<T> {
    config: EndpointConfig,
    connections: HashMap<TransferId, Connection<T>>,
    expected: Vec<Expected>,
    stats: TransferStats,
}

impl<T: Default> Endpoint<T> {
    /// An endpoint with no transfers yet.
    pub fn new(config: EndpointConfig) -> Self {
        Self {
            config,
            connections: HashMap::new(),
            expected: Vec::new(),
            stats: Default::default(),
        }
    }

    /// The server announced `incoming`: its offer will be let in until the offer TTL.
    pub fn expect(&mut self, now: Instant, incoming: IncomingFile) {
        self.expect_answering(now, incoming, false);
    }

    /// The server announced `incoming`, which this client refuses: its offer is let in only
    /// to be declined at once (so that the sender hears it at once), and no machine asks.
    pub fn expect_refusing(&mut self, now: Instant, incoming: IncomingFile) {
        self.expect_answering(now, incoming, true);
    }

    fn expect_answering(&mut self, now: Instant, incoming: IncomingFile, refuse: bool) {
        let tag = crypto::punch_tag(&incoming.token, &incoming.from, &self.config.me);
        let until = now + self.config.offer_ttl;
        let punch = crypto::punch(&tag);
        let (punches, next_punch, announced) = (0, now, now);
        let expected = Expected { incoming, until, refuse, punch, punches, next_punch, announced };
        self.expected.push(expected);
    }

    /// The round of punches due at `now`, if any: the datagram and the addresses to send it
    /// to. The receiver of an announced offer opens its NAT toward each of the sender's
    /// addresses, and shows the sender where it is. Call until `None`.
    pub fn poll_punch(&mut self, now: Instant) -> Option<([u8; PUNCH_LEN], Vec<SocketAddr>)> {
        let expected = self.expected.iter_mut().find(|e| e.next_punch <= now && e.until > now)?;
        expected.punches += 1;
        expected.next_punch = match PUNCHES.get(expected.punches) {
            Some(at) => expected.announced + *at,
            None => now + PUNCH_EVERY,
        };
        Some((expected.punch, expected.incoming.addrs.clone()))
    }

    /// Starts offering `transfer` (a [`Direction::Send`] one) to the peer the server
    /// introduced in `intro` (its addresses, relay, key and the token).
    pub fn send(
        &mut self,
        now: Instant,
        transfer: Transfer,
        intro: &Introduction,
    ) -> Result<(), NoiseError> {
        let (token, peer_key) = (&intro.token, &intro.key);
        let addrs: Vec<SocketAddr> =
            intro.addresses().into_iter().map(normalize).take(MAX_CANDIDATES).collect();
        let addr = addrs[0];
        let config = self.config.sender.clone();
        let sender = Sender::new(&transfer.name, transfer.size, config, ip_header(addr), now);
        let mut plain = Vec::new();
        wire::encode(&sender.offer(), &mut plain);
        let keys = Keys {
            identity: &self.config.identity,
            me: &self.config.me,
            peer: &transfer.peer,
            peer_key,
            token,
        };
        let offering = crypto::offer(keys, transfer.id, &plain)?;
        let punch_tag = crypto::punch_tag(token, &self.config.me, &transfer.peer);
        let trying = Trying { addrs, relay: intro.relay, since: now, punch_tag };
        let connection = Connection {
            route: Route::Direct(addr),
            machine: Machine::Send(Box::new(sender)),
            local: T::default(),
            link: Link::Offering(Box::new(offering)),
            trying: Some(Box::new(trying)),
            direct: None,
            transfer,
        };
        self.connections.insert(connection.transfer.id, connection);
        Ok(())
    }

    /// Takes one datagram that arrived from `from`. Returns the id of a transfer it opened:
    /// an announced offer, whose receiver now waits for its user's answer.
    pub fn handle(&mut self, now: Instant, from: Route, datagram: &mut [u8]) -> Option<TransferId> {
        let Ok(header) = Header::parse(datagram) else {
            self.stats.malformed += 1;
            return None;
        };
        let from = match from {
            Route::Direct(addr) => Route::direct(addr),
            relay => relay,
        };
        if header.framing == Framing::Punch {
            self.punched(from, datagram);
            return None;
        }
        let Some(connection) = self.connections.get_mut(&header.id) else {
            if header.framing == Framing::Offer {
                return self.offer(now, from, &header, datagram);
            }
            self.stats.unknown += 1;
            return None;
        };
        // A relayed transfer's datagram that came straight from the peer: it moves the
        // transfer there, once it opens (as QUIC migrates a connection to a new path).
        let migrating = connection.direct.is_some()
            && matches!((connection.route, from), (Route::Relay(_), Route::Direct(_)));
        if connection.route != from && !migrating {
            match &connection.link {
                // Unanswered, the offer went every way: the answer may come from any (it
                // must open, as always).
                Link::Offering(_) => {}
                // The same offer by another way than the one that came first.
                Link::Receiving { offer, .. }
                    if header.framing == Framing::Offer && offer[..] == datagram[..] =>
                {
                    return None;
                }
                _ => {
                    self.stats.forged += 1;
                    return None;
                }
            }
        }
        let opened = match open(&mut connection.link, &header, datagram) {
            Ok(opened) => opened,
            Err(Refused::Forged) => {
                self.stats.forged += 1;
                return None;
            }
            Err(Refused::Replayed) => {
                self.stats.replayed += 1;
                return None;
            }
        };
        if let Some(trying) = connection.trying.take() {
            // The first datagram that opened since the offer: its way is the transfer's.
            connection.route = from;
            if from.is_relayed() {
                let addrs = trying.addrs;
                connection.direct = Some(Box::new(DirectTry { addrs, next: now + DIRECT_RETRY }));
            }
        } else if migrating {
            tracing::debug!(transfer = header.id, ?from, "a relayed transfer goes direct");
            connection.route = from;
            connection.direct = None;
        }
        let packet = match (opened, &connection.link) {
            (Opened::Sealed(plain), _) => wire::parse(plain),
            (Opened::OfferAgain, Link::Receiving { offer_plain, .. }) => wire::parse(offer_plain),
            (Opened::OfferAgain, _) => return None,
            (Opened::Withdrawn, _) => Ok(Packet::Cancel),
        };
        match packet {
            Ok(packet) => connection.machine.handle(now, packet),
            Err(_) => self.stats.malformed += 1,
        }
        None
    }

    /// A first offer for an unknown transfer: let it in only if the server announced
    /// exactly it and it opens with that sender's key and the token.
    fn offer(
        &mut self,
        now: Instant,
        from: Route,
        header: &Header,
        datagram: &[u8],
    ) -> Option<TransferId> {
        let config = &self.config;
        let found = self.expected.iter().enumerate().find_map(|(index, e)| {
            let i = &e.incoming;
            // From the sender's relay link, or from one of its IP addresses: a NAT that
            // maps each destination to a new port keeps the address.
            let known = match from {
                Route::Relay(link) => i.relay == Some(link),
                Route::Direct(addr) => i.addrs.iter().any(|a| a.ip() == addr.ip()),
            };
            if !known || e.until <= now {
                return None;
            }
            let keys = Keys {
                identity: &config.identity,
                me: &config.me,
                peer: &i.from,
                peer_key: &i.key,
                token: &i.token,
            };
            crypto::answer(keys, header.id, datagram).ok().map(|answer| (index, answer))
        });
        let Some((index, answered)) = found else {
            self.stats.forged += 1;
            return None;
        };
        let Ok(Packet::Offer { size, chunk_size, name }) = wire::parse(&answered.offer) else {
            self.stats.malformed += 1;
            return None;
        };
        let incoming = &self.expected[index].incoming;
        if incoming.name != name || incoming.size != size || !valid_file_name(name) {
            // The sender offers something else than it told the server.
            self.stats.forged += 1;
            return None;
        }
        let Expected { incoming, refuse, .. } = self.expected.swap_remove(index);
        let mut receiver = Receiver::new(size, chunk_size, self.config.receiver.clone(), now);
        if refuse {
            receiver.decline(now);
        }
        let transfer = Transfer {
            id: header.id,
            peer: incoming.from,
            name: incoming.name,
            size,
            direction: Direction::Receive,
        };
        let link = Link::Receiving {
            keys: answered.keys,
            offer: datagram.to_vec(),
            offer_plain: answered.offer,
            answer: answered.answer,
            withdraw: answered.withdraw,
            confirmed: false,
        };
        // Not at once: the first answers must go the way the offer came.
        let direct = match from {
            Route::Relay(_) => {
                Some(Box::new(DirectTry { addrs: incoming.addrs, next: now + DIRECT_RETRY }))
            }
            Route::Direct(_) => None,
        };
        let connection = Connection {
            transfer,
            route: from,
            machine: Machine::Receive(Box::new(receiver)),
            local: T::default(),
            link,
            trying: None,
            direct,
        };
        self.connections.insert(header.id, connection);
        // A refused offer is only answered: nobody is asked.
        (!refuse).then_some(header.id)
    }

    /// A punch from `from`: if it carries the tag of an unanswered offer, the sender learns
    /// an address of the receiver (its NAT's mapping toward us, perhaps a new one).
    fn punched(&mut self, from: Route, datagram: &[u8]) {
        let tag = datagram.get(HEADER_LEN..).and_then(|tag| <[u8; 16]>::try_from(tag).ok());
        let (Route::Direct(addr), Some(tag)) = (from, tag) else {
            self.stats.malformed += 1;
            return;
        };
        // A punch that matches no unanswered offer is dropped uncounted: most are late ones
        // (the offer was answered already), which a forged one cannot be told from.
        let trying = self.connections.values_mut().filter_map(|c| c.trying.as_deref_mut());
        for trying in trying.filter(|trying| Token(trying.punch_tag) == Token(tag)) {
            if !trying.addrs.contains(&addr) && trying.addrs.len() < MAX_CANDIDATES {
                trying.addrs.push(addr);
            }
        }
    }

    /// Where transfer `id`'s datagrams go now: its route, or, for an unanswered offer,
    /// every address of the peer and, after [`RELAY_AFTER`] (or at once if it has no
    /// address), the relay.
    pub fn destinations(&self, id: TransferId, now: Instant) -> Vec<Route> {
        let Some(connection) = self.connections.get(&id) else {
            return Vec::new();
        };
        let Some(trying) = &connection.trying else {
            return vec![connection.route];
        };
        let mut routes: Vec<Route> = trying.addrs.iter().map(|a| Route::Direct(*a)).collect();
        if let Some(link) = trying.relay {
            if routes.is_empty() || now >= trying.since + RELAY_AFTER {
                routes.push(Route::Relay(link));
            }
        }
        routes
    }

    /// The peer's direct addresses, when relayed transfer `id` is due to send one datagram
    /// straight to them as well as through the relay (every [`DIRECT_RETRY`]).
    pub fn direct_try(&mut self, id: TransferId, now: Instant) -> Option<Vec<SocketAddr>> {
        let direct = self.connections.get_mut(&id)?.direct.as_deref_mut()?;
        if direct.next > now || direct.addrs.is_empty() {
            return None;
        }
        direct.next = now + DIRECT_RETRY;
        Some(direct.addrs.clone())
    }

    /// Writes the next datagram transfer `id` has to send now into `out` (cleared first);
    /// returns whether there was one.
    pub fn poll_transmit(&mut self, id: TransferId, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(connection) = self.connections.get_mut(&id) else {
            return false;
        };
        let start = match &connection.link {
            Link::Receiving { confirmed: false, .. } => HEADER_LEN + ANSWER_LEN,
            _ => HEADER_LEN,
        };
        out.resize(start, 0);
        if !connection.machine.poll_transmit(now, out) {
            out.clear();
            return false;
        }
        match &mut connection.link {
            Link::Offering(offering) => {
                // Before the answer there is no key: the offer goes as the handshake made
                // it, and a cancel as its withdrawal.
                let datagram = match wire::parse(&out[start..]) {
                    Ok(Packet::Offer { .. }) => offering.datagram().to_vec(),
                    Ok(Packet::Cancel) => offering.withdrawal(id),
                    _ => Vec::new(),
                };
                *out = datagram;
            }
            Link::Sending { keys, .. } => keys.seal(id, Framing::Sealed, out, HEADER_LEN),
            Link::Receiving { keys, answer, confirmed, .. } => {
                if *confirmed {
                    keys.seal(id, Framing::Sealed, out, HEADER_LEN);
                } else {
                    out[HEADER_LEN..start].copy_from_slice(answer);
                    keys.seal(id, Framing::Answered, out, start);
                }
            }
        }
        !out.is_empty()
    }

    /// Acts on every deadline that has passed at `now`; forgets offers that never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expected.retain(|e| e.until > now);
        for connection in self.connections.values_mut() {
            connection.machine.handle_timeout(now);
        }
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let machines = self.connections.values().filter_map(|c| c.machine.poll_timeout());
        let expected = self.expected.iter().map(|e| e.until.min(e.next_punch));
        machines.chain(expected).min()
    }

    /// The transfer `id`.
    pub fn get(&self, id: TransferId) -> Option<&Connection<T>> {
        self.connections.get(&id)
    }

    /// The transfer `id`, to drive.
    pub fn get_mut(&mut self, id: TransferId) -> Option<&mut Connection<T>> {
        self.connections.get_mut(&id)
    }

    /// The ids of every transfer.
    pub fn ids(&self) -> Vec<TransferId> {
        self.connections.keys().copied().collect()
    }

    /// Every transfer, to drive.
    pub fn connections_mut(&mut self) -> impl Iterator<Item = &mut Connection<T>> {
        self.connections.values_mut()
    }

    /// The local interface refused a datagram of `size` bytes for transfer `id` as too large
    /// (`EMSGSIZE`); its sender's path MTU search takes it into account.
    pub fn too_big(&mut self, id: TransferId, size: usize) {
        if let Some(Machine::Send(sender)) = self.connections.get_mut(&id).map(|c| &mut c.machine) {
            sender.too_big(size);
        }
    }

    /// Forgets transfer `id`.
    pub fn remove(&mut self, id: TransferId) -> Option<Connection<T>> {
        self.connections.remove(&id)
    }

    /// Datagrams dropped so far.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }
}

/// What a datagram of a known transfer carried, once let through.
enum Opened<'a> {
    /// A sealed packet's plaintext.
    Sealed(&'a [u8]),
    /// The offer again, unchanged: the sender has not heard the answer yet.
    OfferAgain,
    /// The sender withdrew its unanswered offer.
    Withdrawn,
}

/// Opens a datagram of a known transfer according to where its handshake stands.
fn open<'a>(
    link: &mut Link,
    header: &Header,
    datagram: &'a mut [u8],
) -> Result<Opened<'a>, Refused> {
    let answered = HEADER_LEN + ANSWER_LEN;
    match (&mut *link, header.framing) {
        (Link::Offering(offering), Framing::Answered) => {
            let answer: [u8; ANSWER_LEN] = datagram
                .get(HEADER_LEN..answered)
                .and_then(|a| a.try_into().ok())
                .ok_or(Refused::Forged)?;
            let keys = offering.finish(&answer).map_err(|_| Refused::Forged)?;
            // The answer is the receiver's: its keys stay even if the packet does not open.
            *link = Link::Sending { keys, answer };
            let Link::Sending { keys, .. } = link else { unreachable!("just set") };
            keys.open(header, datagram, answered).map(Opened::Sealed)
        }
        (Link::Sending { keys, answer }, Framing::Answered) => {
            if datagram.get(HEADER_LEN..answered) != Some(&answer[..]) {
                return Err(Refused::Forged);
            }
            keys.open(header, datagram, answered).map(Opened::Sealed)
        }
        (Link::Sending { keys, .. }, Framing::Sealed) => {
            keys.open(header, datagram, HEADER_LEN).map(Opened::Sealed)
        }
        (Link::Receiving { keys, confirmed, .. }, Framing::Sealed) => {
            let plain = keys.open(header, datagram, HEADER_LEN)?;
            *confirmed = true;
            Ok(Opened::Sealed(plain))
        }
        (Link::Receiving { offer, .. }, Framing::Offer) if offer[..] == datagram[..] => {
            Ok(Opened::OfferAgain)
        }
        (Link::Receiving { withdraw, .. }, Framing::Withdraw) => {
            let secret = datagram.get(HEADER_LEN..).and_then(|s| s.try_into().ok()).map(Token);
            if secret != Some(*withdraw) {
                return Err(Refused::Forged);
            }
            Ok(Opened::Withdrawn)
        }
        _ => Err(Refused::Forged),
    }
}
