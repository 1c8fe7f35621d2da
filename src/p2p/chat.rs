//! Private chats: one direct TCP connection per peer, encrypted end to end and authenticated
//! by the keys the server vouched for and its one-time token.
//!
//! [`PrivateChats::start`] takes the bound listener and runs an accept loop. Each incoming
//! connection first needs a handshake slot ([`Handshakes`]: a few per stranger's address, a
//! bounded pool for all strangers, and a lane of its own for the address a token is
//! expected from, so that strangers cannot keep the introduced peer out). It then gets
//! [`ChatConfig::hello_timeout`] to send [`PeerMessage::Hello`]: the username in it finds
//! the token and key the server gave for that user in the [`Tokens`] table, and the Noise
//! handshake in it must open with them ([`noise::respond`]); anything but
//! [`Verdict::Accept`] closes the connection with a warning in the log, without reading a
//! further frame, so a connection without the right key and token can never inject a
//! message. A dialler whose connection is closed unanswered tries again a few times, in
//! case it came before its slot was ready. The dialler, in turn, opens the chat only if the
//! answer proves the listener holds the key the server vouched for. Everything said after
//! that is sealed ([`noise::Cipher`]); a frame that does not open ends the chat.
//!
//! This module never talks to the server: the client session (`client::session`)
//! makes the requests and hands the introductions in. The flow, for alice asking bob:
//!
//! ```text
//! alice: ──StartPrivate──> server ──PrivateRequest──> bob
//! bob:   PrivateChats::expect: reserve a slot for alice, then AcceptPrivate ──> server
//!        server ──Introduced(alice's addr, token)──> bob: Expected::introduced fills the slot
//!        server ──PrivateAccepted(bob's addr, token)──> alice
//! alice: PrivateChats::connect ──TCP──> bob's listener: Hello{"alice", noise(token, keys)}
//! bob:   the handshake opens with the slot's token and alice's key; the token is used up
//!        ──Accepted{"bob", noise}──> alice: the answer proves bob's key
//! both:  PrivateEvent::Opened (with how far the peer's key is trusted), then sealed
//!        Text frames both ways until a sealed Bye or a close
//! ```
//!
//! That is the direct way. Around it ([`dial`], [`Inner::settle`]): the requester dials
//! every address of the target at once and the target dials back, both from their
//! listener's port, so that crossing dials through port-preserving NATs meet as one
//! connection (a TCP simultaneous open, where the target answers the requester's hello);
//! the requester keeps the first way that opens, and its first frame there (a ping) tells
//! the target. With none after [`DIRECT_WAIT`], the requester opens the chat through the
//! server's relay: the same frames over a duplex stream whose far end the client session
//! carries over its server connection ([`PrivateChats::relayed`]).
//!
//! Each open chat is one task that owns the socket; [`PrivateChats::send`] and
//! [`PrivateChats::stop`] talk to it through a channel. What the peer says and how the chat
//! ends arrive as [`PrivateEvent`]s, through one queue of [`EVENT_QUEUE`] events for all
//! chats: a chat task reads its next frame only once it holds a place in that queue, so
//! when the front end stops taking events (a terminal paused with Ctrl-S) the chats stop
//! reading their sockets and TCP holds the senders back; nothing piles up in memory. Each
//! received text is held to the server's limits ([`text_problem`], at most
//! [`ChatConfig::max_text_chars`]; a frame over [`MAX_PEER_FRAME`] ends the chat before it
//! is read) and each received frame draws on the chat's [`TokenBucket`]: a peer that sends
//! faster than [`ChatConfig::message_rate`] is told [`ByeReason::TooFast`] and cut off. Our
//! own sends are held to the same rate, so a Confab client never trips a peer's limit.
//!
//! A chat ended locally ([`PrivateChats::stop`], [`PrivateChats::close_all`]) produces no
//! event: the caller knows already. A goodbye shuts our side down and then reads what the
//! peer still sends, briefly, so that the `Bye` arrives rather than being destroyed by a
//! reset for unread input. Dropping every `PrivateChats` handle stops the listener and
//! closes every chat.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::identity::{Identity, IdentityError, PeerTrust, SafetyCode, VerifiedPeers};
use super::limits::{HandshakeId, HandshakeLimits, Handshakes, Refusal};
use super::noise::{self, Cipher, Keys, NoiseError};
use super::tokens::{Tokens, Verdict};
use super::Route;
use crate::limit::{Rate, TokenBucket};
use crate::protocol::{
    now_ms, text_problem, ByeReason, ChatMessage, CodecError, Introduction, LinkId, PeerCodec,
    PeerMessage, PublicKey, Timestamp, DEFAULT_MAX_MESSAGE_CHARS, MAX_PEER_FRAME, PING_INTERVAL,
    PROTOCOL_VERSION,
};

/// Private-chat events waiting for the front end, for all chats together; while it is
/// full, no chat reads from its socket.
pub const EVENT_QUEUE: usize = 64;
/// How long a goodbye may take before the connection is closed anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
/// The most a goodbye reads and drops of what the peer still sends.
const DRAIN_LIMIT: usize = 1 << 20;
/// Messages queued for one chat's socket before `send` waits.
const LINK_QUEUE: usize = 64;
/// How long the requester tries the peer's addresses before the chat goes through the
/// server's relay.
const DIRECT_WAIT: Duration = Duration::from_millis(2000);
/// Relayed chunks waiting for one chat to read them; past it the relay is dropped as
/// broken (the peer's sends are held to the message rate, so only a stalled front end gets
/// here).
const RELAY_QUEUE: usize = 256;
/// Pings and pongs a peer may send: a few at once, then one a second.
const KEEPALIVE_RATE: Rate = Rate { burst: 4, per_second: 1 };
/// The largest chunk of a chat's bytes relayed in one frame.
const RELAY_CHUNK: usize = 16 * 1024;
/// Pauses before the dialler tries again when the listener closed without an answer.
const DIAL_RETRIES: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(300), Duration::from_millis(900)];

/// Private-chat settings. `Default` gives what the `confab` client uses.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// How long a token from the server stays valid for the peer to connect with.
    pub token_ttl: Duration,
    /// How long a new connection has to complete the `Hello` / `Accepted` exchange.
    pub hello_timeout: Duration,
    /// How long connecting to a peer may take.
    pub connect_timeout: Duration,
    /// A write to a peer that takes longer than this ends the chat.
    pub write_timeout: Duration,
    /// Longest message text, in characters, sent or received.
    pub max_text_chars: usize,
    /// How many connections may wait for their `Hello` at once, by lane.
    pub handshakes: HandshakeLimits,
    /// How fast messages may go each way on one chat: a peer that sends faster is cut off,
    /// and our own sends past it are refused.
    pub message_rate: Rate,
    /// Whether the accepting side dials the requester too (the way when only the requester
    /// can be reached). Off, the requester's connection (or the relay) is the only way.
    pub dial_back: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_text_chars: DEFAULT_MAX_MESSAGE_CHARS,
            handshakes: HandshakeLimits::default(),
            message_rate: Rate { burst: 100, per_second: 20 },
            dial_back: true,
        }
    }
}

/// Something that happened to a private chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateEvent {
    /// A chat with `peer` is open (either side's connection was accepted), encrypted end
    /// to end with the key the server vouched for.
    Opened {
        /// The other side.
        peer: String,
        /// Whether that key is the one the user verified ([`PrivateChats::verify`]). A
        /// [`PeerTrust::Changed`] deserves a loud warning: the server, or someone it lets
        /// in between, may be reading the chat.
        trust: PeerTrust,
        /// How the chat's bytes travel: a direct connection to this address, or relayed
        /// (sealed end to end all the same) through the server.
        route: Route,
    },
    /// `peer` sent a message.
    Message {
        /// The sender.
        peer: String,
        /// Message text, as sent: sanitize it before showing it.
        text: String,
        /// When the peer sent it, by the peer's clock (which may be wrong, or lie).
        sent_at: Timestamp,
        /// When it arrived, by our clock.
        received_at: Timestamp,
    },
    /// `peer` sent a message that breaks the limits (too long, empty, control characters);
    /// it is not shown.
    Refused {
        /// The sender.
        peer: String,
        /// What was wrong with it.
        why: String,
    },
    /// The chat with `peer` ended, not by our doing.
    Closed {
        /// The other side.
        peer: String,
        /// How.
        reason: CloseReason,
    },
    /// Connecting to `peer` after their acceptance failed; no chat was opened.
    Failed {
        /// The peer we tried to reach.
        peer: String,
        /// What went wrong.
        error: String,
    },
}

/// How a private chat ended from the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer said goodbye, for this reason.
    Peer(ByeReason),
    /// The connection closed or failed without a goodbye.
    Lost,
    /// We closed it: the peer sent messages faster than [`ChatConfig::message_rate`].
    Flooded,
    /// We closed it: the peer broke the protocol (a frame over [`MAX_PEER_FRAME`], or one
    /// that has no place in an open chat).
    Broken,
}

/// A private-chat command that failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// No chat with this user is open.
    #[error("no private chat with {0} is open; start one with /startprivate {0}")]
    NotOpen(String),
    /// A chat with this user is open already.
    #[error("a private chat with {0} is already open")]
    AlreadyOpen(String),
    /// The text cannot be sent.
    #[error("{0}")]
    InvalidText(String),
    /// The connection failed while sending.
    #[error("the private chat with {0} was lost")]
    Lost(String),
    /// More messages to this peer than [`ChatConfig::message_rate`] allows; this one was
    /// not sent.
    #[error("too many private messages to {0} at once; this one was not sent, wait a moment")]
    TooFast(String),
    /// The server's introduction named someone else than the peer expected.
    #[error("the server introduced {0:?}, not the user who asked")]
    WrongPeer(String),
    /// The verified peers' file could not be written.
    #[error("cannot keep the verified key: {0}")]
    Pin(#[from] IdentityError),
}

/// Why connecting to an accepting peer failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("no answer in time")]
    Timeout,
    #[error("the connection was refused")]
    Refused,
    #[error("answered as {0:?}, not as the user we asked")]
    WrongPeer(String),
    #[error("the peer did not prove the key the server vouched for: {0}")]
    Handshake(#[source] NoiseError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// The private chats of one logged-in user; cheap to clone.
#[derive(Clone)]
pub struct PrivateChats {
    inner: Arc<Inner>,
    /// Cancels `inner.stop` when the last handle is dropped.
    _alive: Arc<DropGuard>,
}

/// The events of every private chat, in the order they happened. Dropping it ends every
/// chat (without a goodbye): nobody would hear what the peers say.
pub struct PrivateEvents {
    rx: mpsc::Receiver<PrivateEvent>,
}

impl PrivateEvents {
    /// The next event.
    pub async fn next(&mut self) -> Option<PrivateEvent> {
        self.rx.recv().await
    }

    /// An event that has already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<PrivateEvent> {
        self.rx.try_recv().ok()
    }

    /// Events waiting to be taken; never more than [`EVENT_QUEUE`].
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

/// A reserved token slot for one peer's connection ([`PrivateChats::expect`]); cancelled
/// when dropped unless filled.
pub struct Expected {
    inner: Arc<Inner>,
    peer: String,
    filled: bool,
}

impl Expected {
    /// Fills the slot with the server's introduction of the peer: the token its connection
    /// will carry and the address it comes from.
    pub fn introduced(mut self, intro: &Introduction) -> Result<(), PrivateError> {
        if intro.peer != self.peer {
            return Err(PrivateError::WrongPeer(intro.peer.clone()));
        }
        let until = Instant::now() + self.inner.config.token_ttl;
        let expected = (intro.token, intro.key);
        {
            let mut state = self.inner.state();
            state.tokens.fill(&self.peer, expected, intro.addr.ip(), until);
            if let Some(link) = intro.relay {
                // The requester may come through the relay instead.
                state.relays.insert(link, Relay { peer: self.peer.clone(), inbound: None });
            }
        }
        self.filled = true;
        self.inner.tokens_changed.notify_waiters();
        // Dial the requester too: if only its side can be reached, that is the way.
        if self.inner.config.dial_back {
            tokio::spawn(dial(self.inner.clone(), intro.clone(), Side::Accepting));
        }
        Ok(())
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        if self.filled {
            return;
        }
        self.inner.state().tokens.cancel(&self.peer);
        self.inner.tokens_changed.notify_waiters();
    }
}

impl PrivateChats {
    /// Starts taking private chats for user `me`, whose key pair is `identity`, on
    /// `listener` (whose port and key were announced at login); `pins` are the keys the
    /// user has verified. Must be called inside a tokio runtime.
    ///
    /// Chats that find no direct path are relayed through the server: their (sealed) bytes
    /// leave through `relay_out`, to be sent on the server connection, and what the server
    /// relays back comes in through [`PrivateChats::relayed`].
    pub fn start(
        me: &str,
        identity: Identity,
        pins: VerifiedPeers,
        listener: TcpListener,
        config: ChatConfig,
        relay_out: mpsc::UnboundedSender<(LinkId, Vec<u8>)>,
    ) -> (Self, PrivateEvents) {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let stop = CancellationToken::new();
        let state = State {
            tokens: Tokens::default(),
            links: HashMap::new(),
            handshakes: Handshakes::new(config.handshakes),
            evict: HashMap::new(),
            relays: HashMap::new(),
            requested: Default::default(),
        };
        let inner = Arc::new(Inner {
            me: me.to_owned(),
            identity,
            pins,
            config,
            state: Mutex::new(state),
            tokens_changed: Notify::new(),
            events,
            stop: stop.clone(),
            next_link: AtomicU64::new(1),
            relay_out,
            listening: listener.local_addr().ok(),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        (Self { inner, _alive: Arc::new(stop.drop_guard()) }, PrivateEvents { rx })
    }

    /// Readies the listener for `from`, whose private chat request the user is about to
    /// accept: a slot for `from`'s token is reserved now, so that `from`'s connection waits
    /// for the token if it arrives before the server's answer is read. Fill the slot with
    /// [`Expected::introduced`] once the server has answered the acceptance; dropping it
    /// unfilled cancels it.
    pub fn expect(&self, from: &str) -> Result<Expected, PrivateError> {
        if self.is_open(from) {
            return Err(PrivateError::AlreadyOpen(from.to_owned()));
        }
        let ttl = self.inner.config.token_ttl;
        self.inner.state().tokens.reserve(from, Instant::now() + ttl);
        Ok(Expected { inner: self.inner.clone(), peer: from.to_owned(), filled: false })
    }

    /// Connects to the peer who accepted our request, as the server introduced them. The
    /// outcome arrives as [`PrivateEvent::Opened`] or [`PrivateEvent::Failed`].
    ///
    /// Every address of the peer is tried at once, and the peer dials ours in turn (our
    /// listener lets it in with the same token); of the connections that open we keep the
    /// first. If none has after two seconds, the chat goes through the server's relay.
    pub fn connect(&self, intro: Introduction) {
        {
            let mut state = self.inner.state();
            let until = Instant::now() + self.inner.config.token_ttl;
            state.tokens.reserve(&intro.peer, until);
            state.tokens.fill(&intro.peer, (intro.token, intro.key), intro.addr.ip(), until);
            state.requested.insert(intro.peer.clone(), intro.token);
        }
        self.inner.tokens_changed.notify_waiters();
        tokio::spawn(dial(self.inner.clone(), intro, Side::Requesting));
    }

    /// Bytes the server relayed on `link`: for the chat relayed on it, or the first of a
    /// chat the introduced requester opens through the relay.
    pub fn relayed(&self, link: LinkId, data: Vec<u8>) {
        let mut state = self.inner.state();
        let Some(relay) = state.relays.get_mut(&link) else {
            tracing::debug!("relayed bytes for a link we do not know; dropped");
            return;
        };
        let inbound = match &relay.inbound {
            Some(inbound) => inbound.clone(),
            None => {
                // The requester's hello, through the relay: take it as a connection.
                let peer = relay.peer.clone();
                let (stream, inbound) = relay_stream(&self.inner, link);
                relay.inbound = Some(inbound.clone());
                let slot = match self.inner.admit_relayed(&mut state) {
                    Ok(slot) => slot,
                    Err(why) => {
                        tracing::debug!(peer, "dropped a relayed private chat: {why}");
                        state.relays.remove(&link);
                        return;
                    }
                };
                drop(state);
                let route = Route::Relay(link);
                tokio::spawn(handshake(self.inner.clone(), Either::Right(stream), route, slot));
                inbound
            }
        };
        if inbound.try_send(data).is_err() {
            tracing::warn!("a relayed private chat fell behind; dropping it");
            self.inner.state().relays.remove(&link);
        }
    }

    /// The server connection is gone, and with it every relay: the chats relayed through
    /// it end as lost.
    pub fn relays_lost(&self) {
        self.inner.state().relays.clear();
    }

    /// Sends `text` to `peer` over the direct connection; returns once it is written.
    pub async fn send(&self, peer: &str, text: &str) -> Result<(), PrivateError> {
        if let Some(why) = text_problem(text, self.inner.config.max_text_chars) {
            return Err(PrivateError::InvalidText(why));
        }
        let lost = || PrivateError::Lost(peer.to_owned());
        let tx = {
            let mut state = self.inner.state();
            let link = state.links.get_mut(peer);
            let link = link.ok_or_else(|| PrivateError::NotOpen(peer.to_owned()))?;
            if !link.sent.take(Instant::now()) {
                return Err(PrivateError::TooFast(peer.to_owned()));
            }
            link.tx.clone()
        };
        let (done, written) = oneshot::channel();
        tx.send(Outbound::Text { text: text.to_owned(), done }).await.map_err(|_| lost())?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(lost()),
        }
    }

    /// Ends the chat with `peer`, telling them.
    pub async fn stop(&self, peer: &str) -> Result<(), PrivateError> {
        let link = self.inner.state().end(peer);
        let link = link.ok_or_else(|| PrivateError::NotOpen(peer.to_owned()))?;
        link.bye(ByeReason::Stopped).await;
        Ok(())
    }

    /// Ends every chat, telling each peer `reason`, and forgets every expected token.
    pub async fn close_all(&self, reason: ByeReason) {
        let links: Vec<Link> = {
            let mut state = self.inner.state();
            state.tokens.clear();
            state.requested.clear();
            state.links.drain().map(|(_, link)| link).collect()
        };
        futures_util::future::join_all(links.into_iter().map(|link| link.bye(reason))).await;
    }

    /// The open chats, by peer: how each travels and its round trip.
    pub fn links(&self) -> Vec<ChatLink> {
        let mut links: Vec<ChatLink> = (self.inner.state().links.iter())
            .map(|(peer, link)| ChatLink {
                peer: peer.clone(),
                route: link.route,
                rtt: match link.rtt.load(Ordering::Relaxed) {
                    0 => None,
                    us => Some(Duration::from_micros(us)),
                },
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        links
    }

    /// The users with an open chat, by name.
    pub fn peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self.inner.state().links.keys().cloned().collect();
        peers.sort();
        peers
    }

    /// Whether a chat with `peer` is open.
    pub fn is_open(&self, peer: &str) -> bool {
        self.inner.state().links.contains_key(peer)
    }

    /// Whether no chat is open.
    pub fn is_empty(&self) -> bool {
        self.inner.state().links.is_empty()
    }

    /// The safety code of the open chat with `peer`, for the two users to compare, and how
    /// far the peer's key is trusted now.
    pub fn safety_code(&self, peer: &str) -> Result<(SafetyCode, PeerTrust), PrivateError> {
        let key = self.peer_key(peer)?;
        let code = SafetyCode::new((&self.inner.me, &self.inner.identity.public()), (peer, &key));
        Ok((code, self.inner.pins.trust(peer, &key)))
    }

    /// Marks the key of the open chat with `peer` as verified (the users compared the
    /// safety code): it is pinned, and a later chat with another key is
    /// [`PeerTrust::Changed`]. Returns the code that was verified.
    pub fn verify(&self, peer: &str) -> Result<SafetyCode, PrivateError> {
        let key = self.peer_key(peer)?;
        self.inner.pins.pin(peer, key)?;
        Ok(SafetyCode::new((&self.inner.me, &self.inner.identity.public()), (peer, &key)))
    }

    fn peer_key(&self, peer: &str) -> Result<PublicKey, PrivateError> {
        let state = self.inner.state();
        let link = state.links.get(peer).ok_or_else(|| PrivateError::NotOpen(peer.to_owned()))?;
        Ok(link.key)
    }
}

struct Inner {
    me: String,
    identity: Identity,
    pins: VerifiedPeers,
    config: ChatConfig,
    state: Mutex<State>,
    /// Woken when a token slot is filled or cancelled, for handshakes told to wait.
    tokens_changed: Notify,
    events: mpsc::Sender<PrivateEvent>,
    /// Cancelled when the last `PrivateChats` is dropped.
    stop: CancellationToken,
    next_link: AtomicU64,
    /// Relayed chats' bytes, for the server connection.
    relay_out: mpsc::UnboundedSender<(LinkId, Vec<u8>)>,
    /// The listener's address: dials go out from its port (see [`dial_from`]).
    listening: Option<SocketAddr>,
}

struct State {
    tokens: Tokens,
    links: HashMap<String, Link>,
    handshakes: Handshakes,
    /// How to end each handshake in progress, should it be evicted.
    evict: HashMap<HandshakeId, CancellationToken>,
    /// The relay links of our introductions: who is on the other end, and where what the
    /// server relays on it goes (once a chat uses it).
    relays: HashMap<LinkId, Relay>,
    /// The peers whose chat we asked for and whose introduction came, with its token: we
    /// choose which of the ways that open is the chat (see [`Inner::settle`]). Removed when
    /// that chat ends (or fails), so a late way of it opens nothing.
    requested: HashMap<String, crate::protocol::Token>,
}

impl State {
    /// Forgets the chat with `peer`: its link, and that we asked for it (so that no late
    /// way of it opens again). Its task, which ends next, forgets its relay.
    fn end(&mut self, peer: &str) -> Option<Link> {
        self.requested.remove(peer);
        self.links.remove(peer)
    }
}

/// One relay link of an introduction.
struct Relay {
    peer: String,
    /// The chat's relayed bytes, for its stream; `None` until the chat starts on it.
    inbound: Option<mpsc::Sender<Vec<u8>>>,
}

/// The stream under a chat: a direct TCP connection, or the bytes relayed through the
/// server.
type Stream = Either<TcpStream, DuplexStream>;

/// One frame as read from a chat's stream.
type PeerFrame = Result<Result<PeerMessage, crate::protocol::MalformedFrame>, CodecError>;

/// Which side of an introduction a dial is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// We asked for the chat, and choose which connection carries it.
    Requesting,
    /// We accepted: our dial back is one the requester may choose.
    Accepting,
}

/// An open chat as seen from outside its task.
struct Link {
    /// Tells this chat from a later one with the same peer.
    id: u64,
    tx: mpsc::Sender<Outbound>,
    /// Our own messages to this peer, held to the rate we ask of it.
    sent: TokenBucket,
    /// The key the peer proved in the handshake.
    key: PublicKey,
    /// How its bytes travel.
    route: Route,
    /// The last round trip its pings measured, in microseconds (0: none yet).
    rtt: Arc<AtomicU64>,
}

/// An open chat, for `/peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLink {
    /// The other side.
    pub peer: String,
    /// How its bytes travel.
    pub route: Route,
    /// The last round trip measured, if any yet.
    pub rtt: Option<Duration>,
}

/// A handshake slot, given back when dropped.
struct Slot {
    inner: Arc<Inner>,
    id: HandshakeId,
    /// Cancelled if the slot is evicted, or the listener stops.
    cancel: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        state.handshakes.finish(self.id);
        state.evict.remove(&self.id);
    }
}

/// What a chat task is asked to do.
enum Outbound {
    /// Write a message; `done` learns whether it was written.
    Text { text: String, done: oneshot::Sender<bool> },
    /// Say goodbye and close; `done` is dropped when the task is finished.
    Bye { reason: ByeReason, done: oneshot::Sender<()> },
}

impl Link {
    /// Asks the task to say goodbye and waits, briefly, until it has.
    async fn bye(self, reason: ByeReason) {
        let (done, finished) = oneshot::channel();
        let _ = timeout(2 * GOODBYE_TIMEOUT, async {
            if self.tx.send(Outbound::Bye { reason, done }).await.is_ok() {
                let _ = finished.await;
            }
        })
        .await;
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a single insert or remove, so a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn emit(&self, event: PrivateEvent) {
        // Nobody listening any more is not an error.
        let _ = self.events.send(event).await;
    }

    /// A handshake slot for a connection from `addr`, evicting an idle one if its lane says so.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Result<Slot, Refusal> {
        let mut state = self.state();
        let expected = state.tokens.expects_from(addr.ip(), Instant::now());
        self.slot(&mut state, addr.ip(), expected)
    }

    /// A handshake slot for a relayed connection: the lane of an expected peer (only an
    /// introduced peer's link can reach us through the relay).
    fn admit_relayed(self: &Arc<Self>, state: &mut State) -> Result<Slot, Refusal> {
        self.slot(state, std::net::Ipv4Addr::UNSPECIFIED.into(), true)
    }

    /// A handshake slot for a connection from `ip`, in the expected peer's lane if
    /// `expected`, evicting an idle one if its lane says so.
    fn slot(
        self: &Arc<Self>,
        state: &mut State,
        ip: std::net::IpAddr,
        expected: bool,
    ) -> Result<Slot, Refusal> {
        let admitted = state.handshakes.admit(ip, expected)?;
        if let Some(cancel) = admitted.evict.and_then(|old| state.evict.remove(&old)) {
            tracing::debug!(%ip, "evicted a silent connection from the expected peer's lane");
            cancel.cancel();
        }
        let cancel = self.stop.child_token();
        state.evict.insert(admitted.id, cancel.clone());
        Ok(Slot { inner: self.clone(), id: admitted.id, cancel })
    }

    /// An authenticated connection (or relay) with `peer`, who proved `key`: the chat, or
    /// a spare, by one rule that both sides apply the same way. Both sides dial, so two
    /// connections may open; the requester chooses. On its side the first that opens is
    /// the chat, and the first frame it sends there (its first ping, at once) says so; the
    /// others are closed. On the accepting side a connection becomes the chat when that
    /// first frame arrives on it, and one that closes first was a spare.
    fn settle(self: &Arc<Self>, peer: String, key: PublicKey, mut link: Secured, route: Route) {
        if self.state().requested.contains_key(&peer) {
            self.open_link(peer, key, link, route, true);
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let chosen = tokio::select! {
                _ = inner.stop.cancelled() => None,
                first = timeout(DIRECT_WAIT + inner.config.hello_timeout, link.framed.next()) => {
                    first.ok().flatten()
                }
            };
            match chosen {
                Some(first) => {
                    link.first = Some(first);
                    inner.open_link(peer, key, link, route, false);
                }
                None => tracing::debug!(peer, %route, "a spare private-chat connection closed"),
            }
        });
    }

    /// The keys of a link with the peer of `intro`: ours, the one the server vouched for,
    /// the token.
    fn keys<'a>(&'a self, intro: &'a Introduction) -> Keys<'a> {
        Keys {
            identity: &self.identity,
            me: &self.me,
            peer: &intro.peer,
            peer_key: &intro.key,
            token: &intro.token,
        }
    }

    /// Whether the chat we asked for with `intro` has not opened yet (nor opened and ended).
    fn still_wanted(&self, intro: &Introduction) -> bool {
        let state = self.state();
        state.requested.get(&intro.peer) == Some(&intro.token)
            && !state.links.contains_key(&intro.peer)
    }

    /// Registers an authenticated connection with `peer`, who proved `key`, over `route`,
    /// and starts its task, which reports it open. `exclusive`: unless a chat with `peer`
    /// is open already (then this connection is closed).
    fn open_link(
        self: &Arc<Self>,
        peer: String,
        key: PublicKey,
        link: Secured,
        route: Route,
        exclusive: bool,
    ) {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let sent = TokenBucket::new(self.config.message_rate, Instant::now());
        let rtt = Arc::new(AtomicU64::new(0));
        let link_state = Link { id, tx, sent, key, route, rtt: rtt.clone() };
        {
            let mut state = self.state();
            if exclusive && state.links.contains_key(&peer) {
                tracing::debug!(peer, %route, "a second way to an open private chat; closed");
                return;
            }
            // A chat that this one replaces ends quietly when its handle is dropped here.
            if state.links.insert(peer.clone(), link_state).is_some() {
                tracing::info!(peer, "a new private chat replaces the previous one");
            }
        }
        let trust = self.pins.trust(&peer, &key);
        match trust {
            PeerTrust::Changed { verified } => {
                tracing::warn!(peer, %key, %verified, "private chat open with an unverified key")
            }
            _ => tracing::info!(peer, ?trust, "private chat open"),
        }
        tokio::spawn(run_link(self.clone(), peer, (trust, route, rtt), id, link, rx));
    }

    /// Forgets chat `id` with `peer`; false if it was ended locally or replaced already.
    fn forget(&self, peer: &str, id: u64) -> bool {
        let mut state = self.state();
        if state.links.get(peer).is_none_or(|link| link.id != id) {
            return false;
        }
        state.end(peer);
        true
    }
}

/// Accepts connections until the last handle is dropped.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("private-chat accept failed: {e}");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Debug, not warn: a stranger opening connections must not fill the log either.
        let slot = match inner.admit(addr) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%addr, "dropped a private-chat connection: {why}");
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%addr, "set_nodelay: {e}");
        }
        let route = Route::direct(addr);
        tokio::spawn(handshake(inner.clone(), Either::Left(socket), route, slot));
    }
}

/// Authenticates an incoming connection and opens the chat, or closes it and logs why.
async fn handshake(inner: Arc<Inner>, socket: Stream, route: Route, slot: Slot) {
    let deadline = Instant::now() + inner.config.hello_timeout;
    let mut framed = Framed::new(socket, PeerCodec::new(MAX_PEER_FRAME));
    let addr = &route;
    let first = tokio::select! {
        _ = slot.cancel.cancelled() => return,
        first = timeout_at(deadline, framed.next()) => first,
    };
    inner.state().handshakes.heard(slot.id);
    let (username, hello) = match first {
        Ok(Some(Ok(Ok(PeerMessage::Hello { version, username, handshake }))))
            if version == PROTOCOL_VERSION =>
        {
            (username, handshake)
        }
        Ok(Some(Ok(Ok(PeerMessage::Hello { version, .. })))) => {
            return reject(addr, None, format!("protocol version {version}"));
        }
        Ok(Some(Ok(Ok(_)))) => return reject(addr, None, "the first frame was not a hello"),
        Ok(Some(Ok(Err(e)))) => return reject(addr, None, e),
        Ok(Some(Err(e))) => return reject(addr, None, e),
        Ok(None) => return reject(addr, None, "closed before saying hello"),
        Err(_) => return reject(addr, None, "no hello in time"),
    };
    // Opens the hello with the token and key expected from `username`. (Two Diffie-Hellman
    // operations under the table's lock: only a hello naming an expected peer gets here.)
    let open = |token: &_, key: &PublicKey| {
        let keys = Keys {
            identity: &inner.identity,
            me: &inner.me,
            peer: &username,
            peer_key: key,
            token,
        };
        match noise::respond(keys, &hello) {
            Ok((cipher, accepted)) => Some((cipher, accepted, *key)),
            Err(e) => {
                tracing::debug!(%addr, peer = username, "handshake: {e}");
                None
            }
        }
    };
    let (cipher, accepted, key) = loop {
        // Enabled before the table is read, so a fill that happens in between wakes us.
        let changed = inner.tokens_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let verdict = inner.state().tokens.check(&username, Instant::now(), open);
        match verdict {
            Verdict::Accept(opened) => break opened,
            Verdict::Reject(why) => return reject(addr, Some(&username), why),
            Verdict::Wait => {
                let waited = tokio::select! {
                    _ = slot.cancel.cancelled() => return,
                    waited = timeout_at(deadline, changed) => waited,
                };
                if waited.is_err() {
                    return reject(addr, Some(&username), "the token did not arrive in time");
                }
            }
        }
    };
    if !write(&mut framed, accepted, inner.config.hello_timeout).await {
        tracing::info!(%addr, peer = username, "private chat lost during the handshake");
        return;
    }
    drop(slot);
    inner.settle(username, key, Secured { framed, cipher, first: None }, route);
}

/// Logs a refused connection; dropping it (by returning) closes it.
fn reject(route: &Route, claimed: Option<&str>, why: impl std::fmt::Display) {
    tracing::warn!(?route, ?claimed, "refused a private-chat connection: {why}");
}

/// Connects to the introduced peer, for the chat or as a way the requester may choose
/// ([`Inner::settle`]).
///
/// Every address of the peer is tried at once and the first connection that answers is
/// used. A listener that closes the connection unanswered may have been busy, or not have
/// read the server's answer yet (and so not know to keep a slot for us): that is tried
/// again a few times, the token being used up only by a handshake that succeeds. With no
/// direct connection after [`DIRECT_WAIT`] (and none from the peer), the requester opens
/// the chat through the relay, or says it failed; a dial back that fails is given up
/// quietly.
async fn dial(inner: Arc<Inner>, intro: Introduction, side: Side) {
    let peer = intro.peer.clone();
    let started = Instant::now();
    let mut pauses = DIAL_RETRIES.iter();
    let outcome = loop {
        let direct = timeout_at(started + DIRECT_WAIT, try_addresses(&inner, &intro)).await;
        match direct.unwrap_or(Err(DialError::Timeout)) {
            Err(e) if e.retry() && Instant::now() < started + DIRECT_WAIT => match pauses.next() {
                Some(pause) => {
                    tracing::debug!(peer, "private chat not answered ({e}); trying again");
                    sleep(*pause).await;
                }
                None => break Err(e),
            },
            outcome => break outcome,
        }
    };
    let error = match outcome {
        Ok((link, route)) => return inner.settle(peer, intro.key, link, route),
        Err(e) if side == Side::Accepting => {
            return tracing::debug!(peer, "dialling back failed ({e}); the requester's way it is");
        }
        // The peer's dial back opened the chat meanwhile (and it may have ended already).
        Err(_) if !inner.still_wanted(&intro) => return,
        Err(e) => e,
    };
    let outcome = match intro.relay {
        Some(link) if !matches!(error, DialError::WrongPeer(_) | DialError::Handshake(_)) => {
            tracing::info!(peer, "no direct connection ({error}); relaying the private chat");
            let (stream, inbound) = relay_stream(&inner, link);
            let relay = Relay { peer: peer.clone(), inbound: Some(inbound) };
            inner.state().relays.insert(link, relay);
            let relayed = handshake_as_dialler(&inner, &intro, Either::Right(stream)).await;
            if relayed.is_err() {
                inner.state().relays.remove(&link);
            }
            relayed.map(|secured| (secured, Route::Relay(link)))
        }
        _ => Err(error),
    };
    match outcome {
        Ok((link, route)) => inner.settle(peer, intro.key, link, route),
        Err(_) if !inner.still_wanted(&intro) => {}
        Err(e) => {
            inner.state().requested.remove(&peer);
            tracing::warn!(peer, "cannot open the private chat: {e}");
            inner.emit(PrivateEvent::Failed { peer, error: e.to_string() }).await;
        }
    }
}

impl DialError {
    /// Whether another attempt may succeed.
    fn retry(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Refused | Self::Codec(CodecError::Io(_)))
    }
}

/// Connects to every address of the peer at once; the first connection made carries the
/// handshake. The error is the last address's when none connects.
async fn try_addresses(inner: &Inner, intro: &Introduction) -> Result<(Secured, Route), DialError> {
    let config = &inner.config;
    let mut connecting: futures_util::stream::FuturesUnordered<_> = intro
        .addresses()
        .into_iter()
        .map(|addr| async move {
            let connected = timeout(config.connect_timeout, dial_from(inner.listening, addr)).await;
            match connected {
                Err(_) => Err(DialError::Timeout),
                Ok(Err(source)) => Err(DialError::Connect { addr, source }),
                Ok(Ok(socket)) => Ok((socket, addr)),
            }
        })
        .collect();
    let mut error = DialError::Timeout;
    while let Some(connected) = connecting.next().await {
        match connected {
            Ok((socket, addr)) => {
                drop(connecting);
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!(%addr, "set_nodelay: {e}");
                }
                let secured = handshake_as_dialler(inner, intro, Either::Left(socket)).await?;
                return Ok((secured, Route::direct(addr)));
            }
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Connects to `addr` from the listener's port (`from`) if the kernel lets it, else from
/// any port. From the listener's port a port-preserving NAT maps the connection to the
/// address the server told the peer, and when the peer dials ours at the same moment the
/// two SYNs cross and make one connection (a TCP simultaneous open), which is how two
/// clients behind such NATs reach each other with neither reachable.
async fn dial_from(from: Option<SocketAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let shared = from.filter(|from| from.is_ipv4() == addr.is_ipv4()).and_then(|from| {
        let socket = if from.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let socket = socket.ok()?;
        socket.set_reuseaddr(true).ok()?;
        socket.set_reuseport(true).ok()?;
        socket.bind(from).ok()?;
        Some(socket)
    });
    match shared {
        Some(socket) => match socket.connect(addr).await {
            // The same pair of ports is still in use (a connection between them lingers
            // in TIME_WAIT): any port will do.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                TcpStream::connect(addr).await
            }
            connected => connected,
        },
        None => TcpStream::connect(addr).await,
    }
}

/// The dialling side's handshake on a connected `stream`: our hello, the peer's answer.
async fn handshake_as_dialler(
    inner: &Inner,
    intro: &Introduction,
    stream: Stream,
) -> Result<Secured, DialError> {
    let config = &inner.config;
    let mut framed = Framed::new(stream, PeerCodec::new(MAX_PEER_FRAME));
    let (dialling, hello) = noise::initiate(inner.keys(intro)).map_err(DialError::Handshake)?;
    timeout(config.hello_timeout, framed.send(hello)).await.map_err(|_| DialError::Timeout)??;
    let mut answer = timeout(config.hello_timeout, framed.next()).await;
    if let Ok(Some(Ok(Ok(PeerMessage::Hello { username, handshake, .. })))) = &answer {
        // Both dialled, and the SYNs met: one connection, two hellos. The requester's
        // handshake is the one both complete: the accepting side answers it, and the
        // requester reads on to that answer.
        if username != &intro.peer {
            return Err(DialError::WrongPeer(username.clone()));
        }
        if !inner.state().requested.contains_key(&intro.peer) {
            let keys = inner.keys(intro);
            let (cipher, accepted) =
                noise::respond(keys, handshake).map_err(DialError::Handshake)?;
            timeout(config.hello_timeout, framed.send(accepted))
                .await
                .map_err(|_| DialError::Timeout)??;
            return Ok(Secured { framed, cipher, first: None });
        }
        answer = timeout(config.hello_timeout, framed.next()).await;
    }
    match answer {
        Err(_) => Err(DialError::Timeout),
        Ok(Some(Ok(Ok(PeerMessage::Accepted { username, handshake }))))
            if username == intro.peer =>
        {
            let cipher = dialling.finish(&handshake).map_err(DialError::Handshake)?;
            Ok(Secured { framed, cipher, first: None })
        }
        Ok(Some(Ok(Ok(PeerMessage::Accepted { username, .. })))) => {
            Err(DialError::WrongPeer(username))
        }
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None | Some(Ok(_))) => Err(DialError::Refused),
    }
}

/// A stream whose bytes go through the server's relay on `link`, and the sender that the
/// relayed bytes coming back are fed into. A task pumps the two until either side is
/// dropped (the chat ends, or [`PrivateChats::relays_lost`]).
fn relay_stream(inner: &Arc<Inner>, link: LinkId) -> (DuplexStream, mpsc::Sender<Vec<u8>>) {
    let (ours, mut theirs) = tokio::io::duplex(4 * RELAY_CHUNK);
    let (inbound, mut rx) = mpsc::channel::<Vec<u8>>(RELAY_QUEUE);
    let (out, stop) = (inner.relay_out.clone(), inner.stop.clone());
    tokio::spawn(async move {
        let mut buf = vec![0; RELAY_CHUNK];
        let mut inbound_open = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                read = theirs.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.send((link, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                },
                data = rx.recv(), if inbound_open => match data {
                    Some(data) => {
                        if theirs.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    // Nothing more will come (the chat ended here, or the relay is lost):
                    // the chat reads its end, and what it still writes (a goodbye) goes out.
                    None => {
                        inbound_open = false;
                        let _ = theirs.shutdown().await;
                    }
                },
            }
        }
    });
    (ours, inbound)
}

/// How a chat task ended.
enum End {
    /// The peer said goodbye.
    Peer(ByeReason),
    /// The connection failed or closed.
    Lost,
    /// The peer sent faster than the rate; we said so and closed.
    Flooded,
    /// The peer broke the protocol; we closed.
    Broken,
    /// We said goodbye.
    Local,
    /// Every handle is gone, or this chat was replaced: close without a word.
    Quiet,
}

/// One open chat: writes what it is asked to, reports what the peer says.
///
/// It reads the socket only while it holds a place in the event queue, so a front end that
/// does not take events holds the peer back through TCP instead of filling memory.
async fn run_link(
    inner: Arc<Inner>,
    peer: String,
    (trust, route, rtt): (PeerTrust, Route, Arc<AtomicU64>),
    id: u64,
    mut link: Secured,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let config = &inner.config;
    let mut received = TokenBucket::new(config.message_rate, Instant::now());
    let mut keepalive = TokenBucket::new(KEEPALIVE_RATE, Instant::now());
    let opened_at = Instant::now();
    // The first ping goes at once, so the round trip is known from the start.
    let mut pings = tokio::time::interval(PING_INTERVAL);
    // When the peer was last heard from, or we last could not listen.
    let mut heard = opened_at;
    // The first place in the queue goes to saying the chat is open.
    let mut opened = Some(PrivateEvent::Opened { peer: peer.clone(), trust, route });
    let mut place = None;
    let end = loop {
        tokio::select! {
            _ = inner.stop.cancelled() => break End::Quiet,
            reserved = inner.events.reserve(), if place.is_none() => match reserved {
                Err(_) => break End::Quiet,
                Ok(permit) => match opened.take() {
                    Some(event) => permit.send(event),
                    None => place = Some(permit),
                },
            },
            command = rx.recv() => match command {
                None => break End::Quiet,
                Some(Outbound::Text { text, done }) => {
                    let text = ChatMessage::Text { text, sent_at: now_ms() };
                    let ok = link.write(&text, config.write_timeout).await;
                    let _ = done.send(ok);
                    if !ok {
                        break End::Lost;
                    }
                }
                Some(Outbound::Bye { reason, done }) => {
                    link.goodbye(reason).await;
                    drop(done);
                    link.drain().await;
                    break End::Local;
                }
            },
            _ = pings.tick() => {
                if place.is_none() {
                    // Not reading (the front end is not taking events): silence is ours.
                    heard = Instant::now();
                } else if heard.elapsed() > 3 * PING_INTERVAL {
                    tracing::info!(peer, "nothing heard from the peer; the private chat is lost");
                    break End::Lost;
                }
                let echo = opened_at.elapsed().as_micros() as u64;
                if !link.write(&ChatMessage::Ping { echo }, config.write_timeout).await {
                    break End::Lost;
                }
            },
            frame = next_frame(&mut link), if place.is_some() => {
                // A sealed frame is charged once opened (pings to a bucket of their own, so
                // that they never eat into the messages the user may send); anything else
                // now.
                let sealed_frame = matches!(frame, Some(Ok(Ok(PeerMessage::Sealed(_)))));
                if !sealed_frame && !received.take(Instant::now()) {
                    tracing::warn!(peer, "the peer sends too fast; closing the private chat");
                    break End::Flooded;
                }
                let sealed = match frame {
                    Some(Ok(Ok(PeerMessage::Sealed(sealed)))) => sealed,
                    Some(Ok(Ok(other))) => {
                        tracing::warn!(peer, "unexpected {other:?} in an open chat; closing it");
                        break End::Broken;
                    }
                    Some(Ok(Err(e))) => {
                        tracing::warn!(peer, "ignoring a frame from the peer: {e}");
                        continue;
                    }
                    Some(Err(e @ CodecError::TooLarge { .. })) => {
                        tracing::warn!(peer, "closing the private chat: {e}");
                        break End::Broken;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(peer, "private chat connection failed: {e}");
                        break End::Lost;
                    }
                    None => break End::Lost,
                };
                heard = Instant::now();
                let opened = link.cipher.open(&sealed);
                let keepalive_frame =
                    matches!(opened, Ok(ChatMessage::Ping { .. } | ChatMessage::Pong { .. }));
                let bucket = if keepalive_frame { &mut keepalive } else { &mut received };
                if !bucket.take(heard) {
                    tracing::warn!(peer, "the peer sends too fast; closing the private chat");
                    break End::Flooded;
                }
                let (text, sent_at) = match opened {
                    Ok(ChatMessage::Text { text, sent_at }) => (text, sent_at),
                    Ok(ChatMessage::Ping { echo }) => {
                        if !link.write(&ChatMessage::Pong { echo }, config.write_timeout).await {
                            break End::Lost;
                        }
                        continue;
                    }
                    Ok(ChatMessage::Pong { echo }) => {
                        let sent = Duration::from_micros(echo);
                        let took = opened_at.elapsed().saturating_sub(sent).as_micros() as u64;
                        rtt.store(took.max(1), Ordering::Relaxed);
                        continue;
                    }
                    Ok(ChatMessage::Bye { reason }) => break End::Peer(reason),
                    // Sealed by the peer but not a message of ours: a newer or broken client.
                    Err(e @ NoiseError::Malformed(_)) => {
                        tracing::warn!(peer, "ignoring a frame from the peer: {e}");
                        continue;
                    }
                    // Not from the peer (the nonces no longer agree either): the link is spoilt.
                    Err(e) => {
                        tracing::warn!(peer, "closing the private chat: {e}");
                        break End::Broken;
                    }
                };
                let Some(permit) = place.take() else { continue };
                let peer = peer.clone();
                permit.send(match text_problem(&text, config.max_text_chars) {
                    Some(why) => PrivateEvent::Refused { peer, why },
                    None => PrivateEvent::Message { peer, text, sent_at, received_at: now_ms() },
                });
            },
        }
    };
    // Whatever is still queued for the socket learns that it was not written.
    drop(rx);
    // The relay it ran on goes only now, after the goodbye went out through it (dropping
    // it sooner would end the stream under the goodbye).
    if let Route::Relay(relay) = route {
        inner.state().relays.remove(&relay);
    }
    let reason = match end {
        End::Peer(reason) => CloseReason::Peer(reason),
        End::Lost => CloseReason::Lost,
        End::Flooded => CloseReason::Flooded,
        End::Broken => CloseReason::Broken,
        End::Local | End::Quiet => return,
    };
    if inner.forget(&peer, id) {
        tracing::info!(peer, ?reason, "private chat ended");
        let closed = PrivateEvent::Closed { peer, reason };
        match place {
            Some(permit) => permit.send(closed),
            None => inner.emit(closed).await,
        }
    }
    if reason == CloseReason::Flooded {
        link.goodbye(ByeReason::TooFast).await;
        link.drain().await;
    }
}

/// The chat's next frame: the one read already, if any, then the stream's.
async fn next_frame(link: &mut Secured) -> Option<PeerFrame> {
    match link.first.take() {
        Some(first) => Some(first),
        None => link.framed.next().await,
    }
}

/// Writes one frame within `limit`; false if it could not be written.
async fn write(framed: &mut Framed<Stream, PeerCodec>, msg: PeerMessage, limit: Duration) -> bool {
    matches!(timeout(limit, framed.send(msg)).await, Ok(Ok(())))
}

/// An authenticated connection: the frames, and the keys that seal and open them.
struct Secured {
    framed: Framed<Stream, PeerCodec>,
    cipher: Cipher,
    /// A frame read already (the one that chose this connection), to be handled first.
    first: Option<PeerFrame>,
}

impl Secured {
    /// Seals and writes `msg` within `limit`; false if it could not be written.
    async fn write(&mut self, msg: &ChatMessage, limit: Duration) -> bool {
        match self.cipher.seal(msg) {
            Ok(sealed) => write(&mut self.framed, sealed, limit).await,
            Err(e) => {
                tracing::warn!("cannot send on the private chat: {e}");
                false
            }
        }
    }

    /// Says goodbye for `reason` and shuts our side of the connection down.
    async fn goodbye(&mut self, reason: ByeReason) {
        self.write(&ChatMessage::Bye { reason }, GOODBYE_TIMEOUT).await;
        let _ = timeout(GOODBYE_TIMEOUT, self.framed.get_mut().shutdown()).await;
    }

    /// Reads and drops what the peer still sends, until it closes, [`GOODBYE_TIMEOUT`] or
    /// [`DRAIN_LIMIT`] bytes: a socket closed with unread input is reset, and the reset can
    /// destroy our goodbye before the peer has read it. (A flooder that keeps writing is
    /// simply closed on: its goodbye was in the socket before that.)
    async fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        let socket = self.framed.get_mut();
        let _ = timeout(GOODBYE_TIMEOUT, async {
            let mut left = DRAIN_LIMIT;
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                left = left.saturating_sub(n);
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    }
}
