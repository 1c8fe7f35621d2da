//! Private chats: one direct TCP connection per peer, authenticated with a server-issued
//! one-time token.
//!
//! [`PrivateChats::start`] takes the bound listener and runs an accept loop. Each incoming
//! connection gets [`ChatConfig::hello_timeout`] to send [`PeerMessage::Hello`]; the
//! username and token in it are judged by the [`Tokens`] table, and anything but
//! [`Verdict::Accept`] closes the connection with a warning in the log, without reading a
//! further frame, so a connection without the right token can never inject a message. At
//! most [`MAX_HANDSHAKES`] connections may be in that phase at once.
//!
//! The flow, for alice asking bob:
//!
//! ```text
//! alice: PrivateChats::request ──StartPrivate──> server ──PrivateRequest──> bob
//! bob:   PrivateChats::accept: reserve a slot for alice, then AcceptPrivate ──> server
//!        server ──Introduced(alice's addr, token)──> bob: fill the slot with the token
//!        server ──PrivateAccepted(bob's addr, token)──> alice
//! alice: PrivateChats::connect ──TCP──> bob's listener: Hello{token, "alice"}
//! bob:   token matches the slot, used up ──Accepted{"bob"}──> alice
//! both:  PrivateEvent::Opened, then Text frames both ways until a Bye or a close
//! ```
//!
//! Each open chat is one task that owns the socket; [`PrivateChats::send`] and
//! [`PrivateChats::stop`] talk to it through a channel. What the peer says and how the chat
//! ends arrive as [`PrivateEvent`]s. A chat ended locally ([`PrivateChats::stop`],
//! [`PrivateChats::close_all`]) produces no event: the caller knows already. Dropping every
//! `PrivateChats` handle stops the listener and closes every chat.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::tokens::{Tokens, Verdict};
use crate::client::{Client, ClientError};
use crate::protocol::{
    now_ms, text_problem, ByeReason, CodecError, Introduction, PeerCodec, PeerMessage, Reply,
    Request, Timestamp, MAX_PEER_FRAME, PROTOCOL_VERSION,
};

/// Incoming connections that may be waiting for their `Hello` at once; more are dropped.
pub const MAX_HANDSHAKES: usize = 32;
/// How long a goodbye may take before the connection is closed anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
/// Messages queued for one chat's socket before `send` waits.
const LINK_QUEUE: usize = 64;

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
    /// Longest message text, in characters.
    pub max_text_chars: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_text_chars: 4000,
        }
    }
}

/// Something that happened to a private chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateEvent {
    /// A chat with `peer` is open (either side's connection was accepted).
    Opened {
        /// The other side.
        peer: String,
    },
    /// `peer` sent a message.
    Message {
        /// The sender.
        peer: String,
        /// Message text, as sent: sanitize it before showing it.
        text: String,
        /// When the peer sent it, by the peer's clock.
        sent_at: Timestamp,
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
    /// The server refused or could not be asked.
    #[error(transparent)]
    Server(#[from] ClientError),
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

/// The events of every private chat, in the order they happened.
pub struct PrivateEvents {
    rx: mpsc::UnboundedReceiver<PrivateEvent>,
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
}

impl PrivateChats {
    /// Starts taking private chats for user `me` on `listener` (whose port was announced at
    /// login). Must be called inside a tokio runtime.
    pub fn start(me: &str, listener: TcpListener, config: ChatConfig) -> (Self, PrivateEvents) {
        let (events, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            me: me.to_owned(),
            config,
            state: Mutex::default(),
            tokens_changed: Notify::new(),
            events,
            stop: stop.clone(),
            next_link: AtomicU64::new(1),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        (Self { inner, _alive: Arc::new(stop.drop_guard()) }, PrivateEvents { rx })
    }

    /// Asks `user`, through the server, for a private chat.
    pub async fn request(&self, server: &Client, user: &str) -> Result<(), PrivateError> {
        if self.is_open(user) {
            return Err(PrivateError::AlreadyOpen(user.to_owned()));
        }
        server.start_private(user).await?;
        Ok(())
    }

    /// Accepts `from`'s request through the server and readies the listener for them;
    /// returns the server's introduction of `from`.
    ///
    /// The slot for `from` is reserved before the server is asked, so that `from`'s
    /// connection waits for the token if it arrives before the server's answer is read.
    pub async fn accept(&self, server: &Client, from: &str) -> Result<Introduction, PrivateError> {
        if self.is_open(from) {
            return Err(PrivateError::AlreadyOpen(from.to_owned()));
        }
        let ttl = self.inner.config.token_ttl;
        self.inner.state().tokens.reserve(from, Instant::now() + ttl);
        let answer = server.accept_private(from).await;
        let mut state = self.inner.state();
        let result = match answer {
            Ok(intro) if intro.peer == from => {
                state.tokens.fill(from, intro.token, Instant::now() + ttl);
                Ok(intro)
            }
            Ok(intro) => {
                state.tokens.cancel(from);
                Err(ClientError::Protocol(format!("introduced to {:?}", intro.peer)).into())
            }
            Err(e) => {
                state.tokens.cancel(from);
                Err(e.into())
            }
        };
        drop(state);
        self.inner.tokens_changed.notify_waiters();
        result
    }

    /// Sends `request` to the server. Asking for and accepting a private chat go through
    /// [`request`](Self::request) and [`accept`](Self::accept), which keep the tokens; every
    /// other request goes straight to the server.
    pub async fn server_request(
        &self,
        server: &Client,
        request: Request,
    ) -> Result<Reply, PrivateError> {
        match request {
            Request::StartPrivate { user } => {
                self.request(server, &user).await.map(|()| Reply::Done)
            }
            Request::AcceptPrivate { user } => {
                self.accept(server, &user).await.map(Reply::Introduced)
            }
            other => Ok(server.request(other).await?),
        }
    }

    /// Connects to the peer who accepted our request, as the server introduced them. The
    /// outcome arrives as [`PrivateEvent::Opened`] or [`PrivateEvent::Failed`].
    pub fn connect(&self, intro: Introduction) {
        tokio::spawn(dial(self.inner.clone(), intro));
    }

    /// Sends `text` to `peer` over the direct connection; returns once it is written.
    pub async fn send(&self, peer: &str, text: &str) -> Result<(), PrivateError> {
        if let Some(why) = text_problem(text, self.inner.config.max_text_chars) {
            return Err(PrivateError::InvalidText(why));
        }
        let lost = || PrivateError::Lost(peer.to_owned());
        let tx = self.inner.state().links.get(peer).map(|link| link.tx.clone());
        let tx = tx.ok_or_else(|| PrivateError::NotOpen(peer.to_owned()))?;
        let (done, written) = oneshot::channel();
        tx.send(Outbound::Text { text: text.to_owned(), done }).await.map_err(|_| lost())?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(lost()),
        }
    }

    /// Ends the chat with `peer`, telling them.
    pub async fn stop(&self, peer: &str) -> Result<(), PrivateError> {
        let link = self.inner.state().links.remove(peer);
        let link = link.ok_or_else(|| PrivateError::NotOpen(peer.to_owned()))?;
        link.bye(ByeReason::Stopped).await;
        Ok(())
    }

    /// Ends every chat, telling each peer `reason`, and forgets every expected token.
    pub async fn close_all(&self, reason: ByeReason) {
        let links: Vec<Link> = {
            let mut state = self.inner.state();
            state.tokens.clear();
            state.links.drain().map(|(_, link)| link).collect()
        };
        futures_util::future::join_all(links.into_iter().map(|link| link.bye(reason))).await;
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
}

struct Inner {
    me: String,
    config: ChatConfig,
    state: Mutex<State>,
    /// Woken when a token slot is filled or cancelled, for handshakes told to wait.
    tokens_changed: Notify,
    events: mpsc::UnboundedSender<PrivateEvent>,
    /// Cancelled when the last `PrivateChats` is dropped.
    stop: CancellationToken,
    next_link: AtomicU64,
    handshakes: Arc<Semaphore>,
}

#[derive(Default)]
struct State {
    tokens: Tokens,
    links: HashMap<String, Link>,
}

/// An open chat as seen from outside its task.
struct Link {
    /// Tells this chat from a later one with the same peer.
    id: u64,
    tx: mpsc::Sender<Outbound>,
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

    fn emit(&self, event: PrivateEvent) {
        // Nobody listening any more is not an error.
        let _ = self.events.send(event);
    }

    /// Registers an authenticated connection with `peer` and starts its task.
    fn open_link(self: &Arc<Self>, peer: String, framed: Framed<TcpStream, PeerCodec>) {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        // A chat that this one replaces ends quietly when its handle is dropped here.
        if self.state().links.insert(peer.clone(), Link { id, tx }).is_some() {
            tracing::info!(peer, "a new private chat replaces the previous one");
        }
        tracing::info!(peer, "private chat open");
        self.emit(PrivateEvent::Opened { peer: peer.clone() });
        tokio::spawn(run_link(self.clone(), peer, id, framed, rx));
    }

    /// Forgets chat `id` with `peer` and reports `reason`, unless it was ended locally.
    fn closed(&self, peer: &str, id: u64, reason: CloseReason) {
        let mut state = self.state();
        if state.links.get(peer).is_none_or(|link| link.id != id) {
            return;
        }
        state.links.remove(peer);
        drop(state);
        tracing::info!(peer, ?reason, "private chat ended");
        self.emit(PrivateEvent::Closed { peer: peer.to_owned(), reason });
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
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "too many private-chat handshakes at once; dropped a connection");
            continue;
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%addr, "set_nodelay: {e}");
        }
        tokio::spawn(handshake(inner.clone(), socket, addr, permit));
    }
}

/// Authenticates an incoming connection and opens the chat, or closes it and logs why.
async fn handshake(
    inner: Arc<Inner>,
    socket: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let deadline = Instant::now() + inner.config.hello_timeout;
    let mut framed = Framed::new(socket, PeerCodec::new(MAX_PEER_FRAME));
    let first = tokio::select! {
        _ = inner.stop.cancelled() => return,
        first = timeout_at(deadline, framed.next()) => first,
    };
    let (token, username) = match first {
        Ok(Some(Ok(Ok(PeerMessage::Hello { version, token, username }))))
            if version == PROTOCOL_VERSION =>
        {
            (token, username)
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
    loop {
        // Enabled before the table is read, so a fill that happens in between wakes us.
        let changed = inner.tokens_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let verdict = inner.state().tokens.check(&username, &token, Instant::now());
        match verdict {
            Verdict::Accept => break,
            Verdict::Reject(why) => return reject(addr, Some(&username), why),
            Verdict::Wait => {
                if timeout_at(deadline, changed).await.is_err() {
                    return reject(addr, Some(&username), "the token did not arrive in time");
                }
            }
        }
    }
    let accepted = PeerMessage::Accepted { username: inner.me.clone() };
    if !write(&mut framed, accepted, inner.config.hello_timeout).await {
        tracing::info!(%addr, peer = username, "private chat lost during the handshake");
        return;
    }
    drop(permit);
    inner.open_link(username, framed);
}

/// Logs a refused connection; dropping it (by returning) closes it.
fn reject(addr: SocketAddr, claimed: Option<&str>, why: impl std::fmt::Display) {
    tracing::warn!(%addr, ?claimed, "refused a private-chat connection: {why}");
}

/// Connects to an accepting peer and opens the chat, or reports why not.
async fn dial(inner: Arc<Inner>, intro: Introduction) {
    let peer = intro.peer.clone();
    match try_dial(&inner, intro).await {
        Ok(framed) => inner.open_link(peer, framed),
        Err(e) => {
            tracing::warn!(peer, "cannot open the private chat: {e}");
            inner.emit(PrivateEvent::Failed { peer, error: e.to_string() });
        }
    }
}

async fn try_dial(
    inner: &Inner,
    intro: Introduction,
) -> Result<Framed<TcpStream, PeerCodec>, DialError> {
    let config = &inner.config;
    let addr = intro.addr;
    let socket = timeout(config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(|source| DialError::Connect { addr, source })?;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%addr, "set_nodelay: {e}");
    }
    let mut framed = Framed::new(socket, PeerCodec::new(MAX_PEER_FRAME));
    let hello = PeerMessage::Hello {
        version: PROTOCOL_VERSION,
        token: intro.token,
        username: inner.me.clone(),
    };
    timeout(config.hello_timeout, framed.send(hello)).await.map_err(|_| DialError::Timeout)??;
    match timeout(config.hello_timeout, framed.next()).await {
        Err(_) => Err(DialError::Timeout),
        Ok(Some(Ok(Ok(PeerMessage::Accepted { username })))) if username == intro.peer => {
            Ok(framed)
        }
        Ok(Some(Ok(Ok(PeerMessage::Accepted { username })))) => Err(DialError::WrongPeer(username)),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None | Some(Ok(_))) => Err(DialError::Refused),
    }
}

/// How a chat task ended.
enum End {
    /// The peer said goodbye.
    Peer(ByeReason),
    /// The connection failed or closed, or the peer broke the protocol.
    Lost,
    /// We said goodbye.
    Local,
    /// Every handle is gone, or this chat was replaced: close without a word.
    Quiet,
}

/// One open chat: writes what it is asked to, reports what the peer says.
async fn run_link(
    inner: Arc<Inner>,
    peer: String,
    id: u64,
    mut framed: Framed<TcpStream, PeerCodec>,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let write_timeout = inner.config.write_timeout;
    let end = loop {
        tokio::select! {
            _ = inner.stop.cancelled() => break End::Quiet,
            command = rx.recv() => match command {
                None => break End::Quiet,
                Some(Outbound::Text { text, done }) => {
                    let ok = write(&mut framed, PeerMessage::Text { text, sent_at: now_ms() }, write_timeout).await;
                    let _ = done.send(ok);
                    if !ok {
                        break End::Lost;
                    }
                }
                Some(Outbound::Bye { reason, done }) => {
                    write(&mut framed, PeerMessage::Bye { reason }, GOODBYE_TIMEOUT).await;
                    let _ = timeout(GOODBYE_TIMEOUT, framed.get_mut().shutdown()).await;
                    drop(done);
                    break End::Local;
                }
            },
            frame = framed.next() => match frame {
                Some(Ok(Ok(PeerMessage::Text { text, sent_at }))) => {
                    inner.emit(PrivateEvent::Message { peer: peer.clone(), text, sent_at });
                }
                Some(Ok(Ok(PeerMessage::Bye { reason }))) => break End::Peer(reason),
                Some(Ok(Ok(other))) => {
                    tracing::warn!(peer, "unexpected {other:?} in an open private chat; closing it");
                    break End::Lost;
                }
                Some(Ok(Err(e))) => tracing::warn!(peer, "ignoring a frame from the peer: {e}"),
                Some(Err(e)) => {
                    tracing::debug!(peer, "private chat connection failed: {e}");
                    break End::Lost;
                }
                None => break End::Lost,
            },
        }
    };
    match end {
        End::Peer(reason) => inner.closed(&peer, id, CloseReason::Peer(reason)),
        End::Lost => inner.closed(&peer, id, CloseReason::Lost),
        End::Local | End::Quiet => {}
    }
}

/// Writes one frame within `limit`; false if it could not be written.
async fn write(
    framed: &mut Framed<TcpStream, PeerCodec>,
    msg: PeerMessage,
    limit: Duration,
) -> bool {
    matches!(timeout(limit, framed.send(msg)).await, Ok(Ok(())))
}
