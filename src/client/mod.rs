//! The client side: a typed async [`Client`], the command-line parser, line formatting and the
//! full-screen interface ([`tui`]).
//!
//! [`Client::connect`] opens the connection, says hello and spawns one I/O task that owns the
//! socket. Requests go to that task over a channel with a oneshot for the reply; the task
//! numbers them, matches replies by id and forwards server events to the [`Events`] stream.
//! Dropping every `Client` handle closes the connection.
//!
//! Delivery: every message event carries its log id. The front end calls [`Client::ack`]
//! once it has shown a message (printed and flushed, or put in its pane); the I/O task sends
//! the server a cumulative acknowledgement within [`ACK_DELAY`] of the first unacknowledged
//! message or once [`ACK_EVERY`] have been shown, and always before any request (so before a
//! logout) and before it closes the connection. Whatever was not acknowledged comes again at
//! the next login. The I/O task drops a message whose id it has already passed on, so a
//! front end never sees one twice on one connection. Sends carry an id ([`Request::Msg`]'s
//! `send_id`) that the client picks unless the caller did, so a resend after a lost reply is
//! never delivered twice.
//!
//! Private chats do not go through this connection once they are open: the server only
//! introduces the two sides ([`Client::start_private`], [`Client::accept_private`]), and
//! [`crate::p2p::PrivateChats`] carries the chat itself.
//!
//! [`session::Session`] sits above all of these for a front end: it owns the connection, the
//! private chats and the transfers, carries out commands, reconnects when the server goes,
//! and turns everything that happens into one stream of [`session::SessionEvent`]s.

pub mod command;
mod connector;
pub mod files;
pub mod format;
pub mod session;
pub mod trust;
pub mod tui;

pub use connector::{Connector, Security, Trust};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Framed;
use tokio_util::either::Either;

use crate::protocol::{
    ClientCodec, ClientMessage, CodecError, Delivery, DirectEndpoint, ErrorCode, ErrorReply, Event,
    GroupInfo, Hello, HistoryMessage, Introduction, Invitation, LinkId, OnlineUser, Reply, Request,
    SeenUser, ServerMessage, PROTOCOL_VERSION,
};

/// Longest an acknowledgement waits to be sent once a message has been shown.
pub const ACK_DELAY: Duration = Duration::from_millis(100);
/// Messages shown after which the acknowledgement goes out at once.
pub const ACK_EVERY: u32 = 64;

/// Largest frame accepted from the server. Larger than the server's limit for clients: a
/// list of every user online can be long, and the server is the party we chose to trust.
pub const MAX_SERVER_FRAME: usize = 16 * 1024 * 1024;
/// Relayed private-chat frames waiting for the connection; more are dropped.
const RELAY_QUEUE: usize = 256;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to the server: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed or was closed.
    #[error("the connection to the server was lost")]
    Disconnected,
    /// The framing failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server refused the request.
    #[error("{0}")]
    Server(#[from] ErrorReply),
    /// The server answered with something this client did not expect.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server's certificate was not trusted, or plaintext was refused.
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

/// What the [`Events`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Something the server pushed.
    Server(Event),
    /// The connection closed; nothing follows. `error` says why if it was not a clean close.
    Closed {
        /// The failure, if any.
        error: Option<String>,
    },
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    /// The account name.
    pub username: String,
    /// Whether the login created the account.
    pub created: bool,
    /// How many stored messages follow as events.
    pub offline_messages: u32,
    /// The session's binding on the server's UDP endpoint (`None`: the server has none).
    pub udp: Option<crate::protocol::UdpBinding>,
}

/// Where a group message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupDelivery {
    /// Online members it was sent to.
    pub delivered: u32,
    /// Offline members it is kept for.
    pub stored: u32,
    /// Members who block you.
    pub skipped: u32,
}

/// A handle to a server connection; cheap to clone.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Pending>,
    /// Relayed private chats' bytes, for the I/O task.
    relays: mpsc::Sender<(LinkId, Vec<u8>)>,
    server: String,
    limits: ServerLimits,
    local: SocketAddr,
    peer: SocketAddr,
    acks: Arc<Acks>,
    trusted: Option<trust::Trusted>,
}

/// What the server takes, as it said at the handshake: requests past these are refused
/// before they are sent. `Default` gives the protocol's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest frame the server reads, in bytes.
    pub max_frame: usize,
    /// Longest message text, in characters.
    pub max_message_chars: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_message_chars: crate::protocol::DEFAULT_MAX_MESSAGE_CHARS,
        }
    }
}

/// The connection to the server: plain TCP or TLS.
type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// What the front end has shown, for the I/O task to acknowledge.
#[derive(Default)]
struct Acks {
    /// The highest message id shown.
    shown: AtomicU64,
    /// Messages shown since the last acknowledgement went out.
    unsent: AtomicU32,
    /// Wakes the I/O task: the first unsent message, or [`ACK_EVERY`] of them.
    wake: Notify,
}

/// The server's pushed events, in the order they arrived.
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
    acks: Arc<Acks>,
}

impl Events {
    /// The next event; `None` after [`ClientEvent::Closed`] has been returned.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// An event that has already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }

    /// [`Client::ack`], for a front end that holds the events rather than the client.
    pub fn ack(&self, id: u64) {
        self.acks.shown(id);
    }
}

impl Acks {
    fn shown(&self, id: u64) {
        if self.shown.fetch_max(id, Ordering::AcqRel) >= id {
            return;
        }
        let unsent = self.unsent.fetch_add(1, Ordering::AcqRel) + 1;
        if unsent == 1 || unsent >= ACK_EVERY {
            self.wake.notify_one();
        }
    }
}

type Pending = (Request, oneshot::Sender<Result<Reply, ErrorReply>>);

impl Client {
    /// Connects in plaintext, performs the version handshake and starts the I/O task: for
    /// tests against a plaintext server. [`Connector`] connects over TLS.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<(Client, Events), ClientError> {
        let socket = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        Self::connect_stream(socket).await
    }

    /// [`Client::connect`] over a socket already connected to the server (one bound to a
    /// chosen source address, say).
    pub async fn connect_stream(socket: TcpStream) -> Result<(Client, Events), ClientError> {
        socket.set_nodelay(true).map_err(ClientError::Connect)?;
        let local = socket.local_addr().map_err(ClientError::Connect)?;
        let peer = socket.peer_addr().map_err(ClientError::Connect)?;
        Self::handshake(Either::Left(socket), (local, peer), None).await
    }

    /// Says hello on a connected (and secured) stream and starts the I/O task.
    async fn handshake(
        stream: Stream,
        (local, peer): (SocketAddr, SocketAddr),
        trusted: Option<trust::Trusted>,
    ) -> Result<(Client, Events), ClientError> {
        let mut framed = Framed::new(stream, ClientCodec::new(MAX_SERVER_FRAME));
        let agent = format!("confab {}", env!("CARGO_PKG_VERSION"));
        framed.send(ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent })).await?;
        let welcome = match framed.next().await {
            Some(Ok(Ok(ServerMessage::Welcome(w)))) => w,
            Some(Ok(Ok(ServerMessage::Reply { result: Err(e), .. }))) => return Err(e.into()),
            Some(Ok(Ok(other))) => return Err(ClientError::Protocol(format!("{other:?}"))),
            Some(Ok(Err(e))) => return Err(ClientError::Protocol(e.to_string())),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Disconnected),
        };
        let (requests, requests_rx) = mpsc::channel(64);
        let (relays, relays_rx) = mpsc::channel(RELAY_QUEUE);
        let (events_tx, rx) = mpsc::unbounded_channel();
        let acks = Arc::new(Acks::default());
        tokio::spawn(io_task(framed, (requests_rx, relays_rx), events_tx, acks.clone()));
        let limits = ServerLimits {
            max_frame: welcome.max_frame as usize,
            max_message_chars: welcome.max_message_chars as usize,
        };
        let server = welcome.server;
        let client =
            Client { requests, relays, server, limits, local, peer, acks: acks.clone(), trusted };
        Ok((client, Events { rx, acks }))
    }

    /// Why the server's certificate was trusted; `None` over plaintext.
    pub fn trusted(&self) -> Option<&trust::Trusted> {
        self.trusted.as_ref()
    }

    /// Tells the server, soon and cumulatively, that the message with log id `id` (and every
    /// one before it) has been shown to the user. Call it once the message is on screen.
    pub fn ack(&self, id: u64) {
        self.acks.shown(id);
    }

    /// The server's self-description from the handshake.
    pub fn server_agent(&self) -> &str {
        &self.server
    }

    /// The limits the server said at the handshake.
    pub fn limits(&self) -> ServerLimits {
        self.limits
    }

    /// This end of the server connection: the local address the server sees us come from
    /// (absent NAT), and so the one to bind direct sockets on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's end of the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Where the server's UDP endpoint is for a session bound with `binding`: the address
    /// connected to, on the binding's port.
    pub fn udp_endpoint(&self, binding: &crate::protocol::UdpBinding) -> SocketAddr {
        SocketAddr::new(self.peer.ip(), binding.port)
    }

    /// Sends bytes of a private chat relayed through the server on `link`, never waiting:
    /// with the connection's queue full they are dropped, and the chat's seal notices.
    pub fn relay_chat(&self, link: LinkId, data: Vec<u8>) {
        if self.relays.try_send((link, data)).is_err() {
            tracing::debug!("relayed chat bytes dropped: the server connection is busy or gone");
        }
    }

    /// Sends any request and waits for its reply. A message without a send id gets a fresh
    /// random one.
    pub async fn request(&self, mut request: Request) -> Result<Reply, ClientError> {
        if let Request::Msg { send_id: id @ None, .. }
        | Request::GroupMsg { send_id: id @ None, .. } = &mut request
        {
            *id = Some(rand::random());
        }
        let (tx, rx) = oneshot::channel();
        self.requests.send((request, tx)).await.map_err(|_| ClientError::Disconnected)?;
        Ok(rx.await.map_err(|_| ClientError::Disconnected)??)
    }

    /// Logs in (or, with open registration, creates the account), taking no direct
    /// connections: such a session can neither start nor accept private chats.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginInfo, ClientError> {
        self.login_with(username, password, None).await
    }

    /// Logs in, announcing the ports where this client takes direct connections.
    pub async fn login_with(
        &self,
        username: &str,
        password: &str,
        direct: Option<DirectEndpoint>,
    ) -> Result<LoginInfo, ClientError> {
        let req = Request::Login { username: username.into(), password: password.into(), direct };
        match self.request(req).await? {
            Reply::LoggedIn { username, created, offline_messages, udp } => {
                Ok(LoginInfo { username, created, offline_messages, udp: udp.map(|u| *u) })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Sends a direct message.
    pub async fn msg(&self, to: &str, text: &str) -> Result<Delivery, ClientError> {
        let request = Request::Msg { to: to.into(), text: text.into(), send_id: None };
        match self.request(request).await? {
            Reply::Sent { delivery, .. } => Ok(delivery),
            other => Err(unexpected(other)),
        }
    }

    /// Broadcasts; returns `(delivered, skipped)`.
    pub async fn broadcast(&self, text: &str) -> Result<(u32, u32), ClientError> {
        match self.request(Request::Broadcast { text: text.into() }).await? {
            Reply::Broadcasted { delivered, skipped } => Ok((delivered, skipped)),
            other => Err(unexpected(other)),
        }
    }

    /// Who is online (as this user may see it).
    pub async fn list(&self) -> Result<Vec<OnlineUser>, ClientError> {
        match self.request(Request::List).await? {
            Reply::Users(users) => Ok(users),
            other => Err(unexpected(other)),
        }
    }

    /// Who was online at some point in the last `secs` seconds.
    pub async fn who_else_since(&self, secs: u64) -> Result<Vec<SeenUser>, ClientError> {
        match self.request(Request::WhoElseSince { secs }).await? {
            Reply::Seen(users) => Ok(users),
            other => Err(unexpected(other)),
        }
    }

    /// Blocks `user`.
    pub async fn block(&self, user: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Block { user: user.into() }).await
    }

    /// Unblocks `user`.
    pub async fn unblock(&self, user: &str) -> Result<(), ClientError> {
        self.expect_done(Request::Unblock { user: user.into() }).await
    }

    /// Creates group `name` and invites `invite`; returns who was invited.
    pub async fn create_group(
        &self,
        name: &str,
        invite: &[&str],
    ) -> Result<Vec<String>, ClientError> {
        let invite = invite.iter().map(|u| u.to_string()).collect();
        match self.request(Request::CreateGroup { name: name.into(), invite }).await? {
            Reply::GroupCreated { invited, .. } => Ok(invited),
            other => Err(unexpected(other)),
        }
    }

    /// Accepts the invitation to `group`; returns its joined members.
    pub async fn join_group(&self, group: &str) -> Result<Vec<String>, ClientError> {
        match self.request(Request::JoinGroup { group: group.into() }).await? {
            Reply::JoinedGroup { members, .. } => Ok(members),
            other => Err(unexpected(other)),
        }
    }

    /// Sends to the members of `group`.
    pub async fn group_msg(&self, group: &str, text: &str) -> Result<GroupDelivery, ClientError> {
        let request = Request::GroupMsg { group: group.into(), text: text.into(), send_id: None };
        match self.request(request).await? {
            Reply::GroupSent { delivered, stored, skipped, .. } => {
                Ok(GroupDelivery { delivered, stored, skipped })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Leaves `group` (or turns down its invitation).
    pub async fn leave_group(&self, group: &str) -> Result<(), ClientError> {
        match self.request(Request::LeaveGroup { group: group.into() }).await? {
            Reply::LeftGroup { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Your groups and pending invitations.
    pub async fn groups(&self) -> Result<(Vec<GroupInfo>, Vec<Invitation>), ClientError> {
        match self.request(Request::Groups).await? {
            Reply::Groups { groups, invitations } => Ok((groups, invitations)),
            other => Err(unexpected(other)),
        }
    }

    /// The last messages with a user or in a group, oldest first.
    pub async fn history(
        &self,
        with: &str,
        limit: Option<u32>,
    ) -> Result<Vec<HistoryMessage>, ClientError> {
        match self.request(Request::History { with: with.into(), limit }).await? {
            Reply::History { messages, .. } => Ok(messages),
            other => Err(unexpected(other)),
        }
    }

    /// Asks `user` for a private chat (see [`session::request_private`]).
    pub async fn start_private(&self, user: &str) -> Result<(), ClientError> {
        self.expect_done(Request::StartPrivate { user: user.into() }).await
    }

    /// Accepts `user`'s private chat request; returns `user`'s address and the token their
    /// connection will carry (see [`session::accept_private`]).
    pub async fn accept_private(&self, user: &str) -> Result<Introduction, ClientError> {
        match self.request(Request::AcceptPrivate { user: user.into() }).await? {
            Reply::Introduced(intro) => Ok(*intro),
            other => Err(unexpected(other)),
        }
    }

    /// Declines `user`'s private chat request.
    pub async fn decline_private(&self, user: &str) -> Result<(), ClientError> {
        self.expect_done(Request::DeclinePrivate { user: user.into() }).await
    }

    /// Offers `to` the file `name` (`size` bytes); returns `to`'s UDP address and the
    /// transfer's token (see [`crate::p2p::transfer::Transfers::send`]).
    pub async fn send_file(
        &self,
        to: &str,
        name: &str,
        size: u64,
    ) -> Result<Introduction, ClientError> {
        let request = Request::SendFile { to: to.into(), name: name.into(), size };
        match self.request(request).await? {
            Reply::Introduced(intro) => Ok(*intro),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the server the user is active, so that the idle timeout starts again; for what
    /// the server does not see, such as private messages.
    pub async fn keep_alive(&self) -> Result<(), ClientError> {
        self.expect_done(Request::Ping).await
    }

    /// Logs out; the server then closes the connection.
    pub async fn logout(&self) -> Result<(), ClientError> {
        match self.request(Request::Logout).await? {
            Reply::LoggedOut => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn expect_done(&self, request: Request) -> Result<(), ClientError> {
        match self.request(request).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol(format!("{reply:?}"))
}

/// Owns the socket: writes requests and acknowledgements, routes replies by id and forwards
/// events (each message once).
async fn io_task(
    mut framed: Framed<Stream, ClientCodec>,
    (mut requests, mut relays): (mpsc::Receiver<Pending>, mpsc::Receiver<(LinkId, Vec<u8>)>),
    events: mpsc::UnboundedSender<ClientEvent>,
    acks: Arc<Acks>,
) {
    let mut pending: HashMap<u32, oneshot::Sender<Result<Reply, ErrorReply>>> = HashMap::new();
    let mut next_id: u32 = 1;
    // The highest id acknowledged to the server, and the highest passed on to the front end.
    let (mut acked, mut forwarded) = (0u64, 0u64);
    let mut ack_due: Option<Instant> = None;
    let error = loop {
        tokio::select! {
            request = requests.recv() => {
                // Acknowledged first, so that a logout (or anything) follows what was shown.
                if let Err(e) = send_ack(&mut framed, &acks, &mut acked).await {
                    break Some(e.to_string());
                }
                ack_due = None;
                // Every handle dropped: close the connection.
                let Some((body, reply)) = request else { return };
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                pending.insert(id, reply);
                if let Err(e) = framed.send(ClientMessage::Request { id, body }).await {
                    break Some(e.to_string());
                }
            }
            Some((link, data)) = relays.recv() => {
                if let Err(e) = framed.send(ClientMessage::RelayChat { link, data }).await {
                    break Some(e.to_string());
                }
            }
            frame = framed.next() => match frame {
                None => break None,
                Some(Err(e)) => break Some(e.to_string()),
                Some(Ok(Err(e))) => tracing::warn!("ignoring a frame from the server: {e}"),
                Some(Ok(Ok(ServerMessage::Reply { id, result }))) => match pending.remove(&id) {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        // An error about a frame the server could not read has id 0.
                        if let Err(e) = result {
                            tracing::warn!("server error: {e}");
                        }
                    }
                },
                Some(Ok(Ok(ServerMessage::Event(event)))) => {
                    if let Some(id) = event.message_id() {
                        if id <= forwarded {
                            continue; // passed on already
                        }
                        forwarded = id;
                    }
                    let _ = events.send(ClientEvent::Server(event));
                }
                Some(Ok(Ok(ServerMessage::Welcome(_)))) => {
                    tracing::warn!("ignoring a second welcome from the server");
                }
            },
            _ = acks.wake.notified() => {
                if acks.unsent.load(Ordering::Acquire) < ACK_EVERY {
                    ack_due.get_or_insert_with(|| Instant::now() + ACK_DELAY);
                    continue;
                }
                ack_due = None;
                if let Err(e) = send_ack(&mut framed, &acks, &mut acked).await {
                    break Some(e.to_string());
                }
            }
            _ = sleep_until(ack_due.unwrap_or_else(Instant::now)), if ack_due.is_some() => {
                ack_due = None;
                if let Err(e) = send_ack(&mut framed, &acks, &mut acked).await {
                    break Some(e.to_string());
                }
            }
        }
    };
    // Pending requests fail with `Disconnected` as their senders drop.
    drop(pending);
    let _ = events.send(ClientEvent::Closed { error });
}

/// Sends the acknowledgement of what has been shown, if it has moved since `acked`.
async fn send_ack(
    framed: &mut Framed<Stream, ClientCodec>,
    acks: &Acks,
    acked: &mut u64,
) -> Result<(), CodecError> {
    acks.unsent.store(0, Ordering::Release);
    let up_to = acks.shown.load(Ordering::Acquire);
    if up_to <= *acked {
        return Ok(());
    }
    *acked = up_to;
    framed.send(ClientMessage::Ack { up_to }).await
}
