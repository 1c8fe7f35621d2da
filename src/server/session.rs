//! One task per client connection.
//!
//! A connection goes through three phases, each its own function so that the state of each
//! is plain from the types: the handshake ([`handshake`]), the wait for a successful login
//! ([`unauthenticated`]) and the logged-in loop ([`authenticated`]). The logged-in loop waits
//! on five things at once: server shutdown, being kicked as too slow, the idle deadline,
//! frames queued for this user by other sessions, and the next request from the client.
//! Replies and queued frames share one output buffer, written with as few syscalls as the
//! queue allows: the requests that arrived together are all answered before one write, and
//! everything queued by other sessions goes out with it.
//!
//! An idle connection holds no buffers: the read buffer is allocated when the socket becomes
//! readable and freed once every frame in it has been handled, and the output buffer is freed
//! once written. The waits of the logged-in loop live across iterations (the idle deadline
//! is only re-armed when it fires), so a request costs no timer or cancellation bookkeeping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::cmd::{self, login::LoggedIn};
use super::hub::DirectAddrs;
use super::Shared;
use crate::protocol::{
    codec, now_ms, ClientMessage, CodecError, EndReason, ErrorCode, ErrorReply, Event,
    MalformedFrame, PresenceChange, Reply, Request, ServerCodec, ServerMessage, Welcome,
    PROTOCOL_VERSION,
};
use crate::store::{Envelope, OfflineMessage, StoreResult, To};

/// How long a new connection has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a goodbye may take to write before the connection is dropped anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
/// Room made in the read buffer for each read.
const READ_CHUNK: usize = 4096;
/// Room made in the output buffer before the first frame of a batch.
const OUT_CHUNK: usize = 512;

/// Serves one connection from accept to close. `full` means the server is at its limit.
pub(super) async fn serve(
    socket: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    full: bool,
) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%addr, "set_nodelay: {e}");
    }
    let mut conn = Conn::new(socket, &shared);
    if !handshake(&mut conn, full).await {
        return;
    }
    let Some(me) = unauthenticated(&mut conn, &shared, &stop, addr).await else {
        return;
    };
    tracing::info!(%addr, user = %me.name, "logged in");
    authenticated(conn, &shared, &stop, me).await;
}

/// What the client sent next, already sorted into what to do about it.
enum Incoming {
    /// A request to handle.
    Request(u32, Request),
    /// A frame to answer with an error; the connection ends after it if `fatal`.
    Bad(ErrorReply, bool),
    /// The client closed the connection or it failed.
    Closed,
}

/// A frame as read: a message, a well-framed payload that did not decode, or a stream error.
type Read = Result<Result<ClientMessage, MalformedFrame>, CodecError>;

/// The socket of one client, with its read and output buffers (empty while idle).
struct Conn {
    reader: OwnedReadHalf,
    input: BytesMut,
    codec: ServerCodec,
    writer: OwnedWriteHalf,
    out: BytesMut,
    write_timeout: Duration,
}

impl Conn {
    fn new(socket: TcpStream, shared: &Shared) -> Self {
        let (reader, writer) = socket.into_split();
        Self {
            reader,
            input: BytesMut::new(),
            codec: ServerCodec::new(shared.config.max_frame),
            writer,
            out: BytesMut::new(),
            write_timeout: shared.config.write_timeout,
        }
    }

    /// The next frame; `None` once the client has closed the connection. Cancel-safe: bytes
    /// are only read when they can be kept, and the buffer is allocated only when readable.
    async fn read(&mut self) -> Option<Read> {
        loop {
            match self.codec.decode(&mut self.input) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.input.is_empty() && self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
            if let Err(e) = self.reader.readable().await {
                return Some(Err(e.into()));
            }
            self.input.reserve(READ_CHUNK);
            match self.reader.try_read_buf(&mut self.input) {
                Ok(0) if self.input.is_empty() => return None,
                Ok(0) => {
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut short");
                    return Some(Err(e.into()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Whether a whole frame is waiting in the read buffer, so that answering it needs no
    /// read and the output can wait for its reply.
    fn frame_buffered(&self) -> bool {
        let Some(header) = self.input.get(..codec::HEADER_LEN) else {
            return false;
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        self.input.len() >= codec::HEADER_LEN + len
    }

    /// The next frame from the client. Cancel-safe: nothing is written here.
    async fn next(&mut self) -> Incoming {
        match self.read().await {
            None => Incoming::Closed,
            Some(Ok(Ok(ClientMessage::Request { id, body }))) => Incoming::Request(id, body),
            Some(Ok(Ok(ClientMessage::Hello(_)))) => Incoming::Bad(
                ErrorReply::new(ErrorCode::HandshakeRequired, "hello was already said"),
                false,
            ),
            Some(Ok(Err(malformed))) => Incoming::Bad(
                ErrorReply::new(ErrorCode::MalformedFrame, malformed.to_string()),
                false,
            ),
            Some(Err(e @ CodecError::TooLarge { .. })) => {
                Incoming::Bad(ErrorReply::new(ErrorCode::FrameTooLarge, e.to_string()), true)
            }
            Some(Err(e)) => {
                tracing::debug!("connection failed: {e}");
                Incoming::Closed
            }
        }
    }

    fn queue(&mut self, msg: &ServerMessage) {
        self.out.reserve(OUT_CHUNK);
        if let Err(e) = codec::encode_into(msg, &mut self.out) {
            tracing::error!("cannot encode a reply: {e}");
        }
    }

    fn reply(&mut self, id: u32, result: Result<Reply, ErrorReply>) {
        self.queue(&ServerMessage::Reply { id, result });
    }

    /// Writes everything queued, within the configured write timeout.
    async fn flush(&mut self) -> bool {
        self.flush_within(self.write_timeout).await
    }

    async fn flush_within(&mut self, limit: Duration) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let ok = matches!(timeout(limit, self.writer.write_all(&self.out)).await, Ok(Ok(())));
        // Freed rather than kept: an idle session holds no output buffer.
        self.out = BytesMut::new();
        ok
    }

    /// Writes a last message (and anything queued before it), briefly: the connection ends next.
    async fn goodbye(&mut self, msg: ServerMessage) {
        self.queue(&msg);
        self.flush_within(GOODBYE_TIMEOUT).await;
    }

    /// Queues `msg`, writes everything, and reports whether it all went out.
    async fn send(&mut self, msg: &ServerMessage) -> bool {
        self.queue(msg);
        self.flush().await
    }
}

/// Waits for a [`Hello`](crate::protocol::Hello) of our version and answers it. A server
/// that is `full` reads the hello before refusing, so the refusal is not lost to a reset.
async fn handshake(conn: &mut Conn, full: bool) -> bool {
    let incoming = timeout(HANDSHAKE_TIMEOUT, conn.read()).await;
    let refusal = match incoming {
        Ok(Some(Ok(Ok(ClientMessage::Hello(_))))) if full => {
            ErrorReply::new(ErrorCode::ServerFull, "the server is full; try again later")
        }
        Ok(Some(Ok(Ok(ClientMessage::Hello(hello))))) if hello.version == PROTOCOL_VERSION => {
            let welcome = Welcome { version: PROTOCOL_VERSION, server: server_agent() };
            return conn.send(&ServerMessage::Welcome(welcome)).await;
        }
        Ok(Some(Ok(Ok(ClientMessage::Hello(hello))))) => ErrorReply::new(
            ErrorCode::VersionMismatch,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client {}; \
                 use a matching Confab client",
                hello.version
            ),
        ),
        Ok(Some(Ok(_))) => {
            ErrorReply::new(ErrorCode::HandshakeRequired, "the first frame must be a hello")
        }
        Ok(Some(Err(CodecError::TooLarge { .. }))) => {
            ErrorReply::new(ErrorCode::FrameTooLarge, "the first frame is too large")
        }
        Ok(None | Some(Err(_))) => return false,
        Err(_elapsed) => ErrorReply::new(ErrorCode::HandshakeRequired, "no hello in time"),
    };
    conn.goodbye(ServerMessage::Reply { id: 0, result: Err(refusal) }).await;
    false
}

fn server_agent() -> String {
    format!("confab-server {}", env!("CARGO_PKG_VERSION"))
}

/// Answers requests until a login succeeds; `None` if the connection ends first. `addr` is
/// where the client connects from, which its announced direct ports are paired with.
async fn unauthenticated(
    conn: &mut Conn,
    shared: &Shared,
    stop: &CancellationToken,
    addr: SocketAddr,
) -> Option<LoggedIn> {
    let mut deadline = Instant::now() + shared.config.idle_timeout;
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => {
                conn.goodbye(end_event(EndReason::ServerShutdown)).await;
                return None;
            }
            _ = sleep_until(deadline) => {
                conn.goodbye(end_event(EndReason::IdleTimeout)).await;
                return None;
            }
            incoming = conn.next() => incoming,
        };
        deadline = Instant::now() + shared.config.idle_timeout;
        match incoming {
            Incoming::Closed => return None,
            Incoming::Bad(err, fatal) => {
                conn.reply(0, Err(err));
                if !conn.flush().await || fatal {
                    return None;
                }
            }
            Incoming::Request(id, Request::Login { username, password, direct }) => {
                let ip = addr.ip().to_canonical();
                let direct = direct.map(|ports| DirectAddrs {
                    tcp: SocketAddr::new(ip, ports.tcp),
                    udp: SocketAddr::new(ip, ports.udp),
                });
                match cmd::login::run(shared, username, password, direct).await {
                    Ok(mut me) => {
                        let ok = deliver_login(conn, shared, id, &mut me).await;
                        if ok {
                            return Some(me);
                        }
                        me.leave(shared, Some(PresenceChange::Disconnected), true).await;
                        return None;
                    }
                    Err(err) => {
                        conn.reply(id, Err(err));
                        if !conn.flush().await {
                            return None;
                        }
                    }
                }
            }
            Incoming::Request(id, Request::Logout) => {
                conn.goodbye(ServerMessage::Reply { id, result: Ok(Reply::LoggedOut) }).await;
                return None;
            }
            Incoming::Request(id, _) => {
                let err = ErrorReply::new(ErrorCode::NotLoggedIn, "log in first");
                conn.reply(id, Err(err));
                if !conn.flush().await {
                    return None;
                }
            }
        }
    }
}

/// Sends the login reply, the messages stored while the user was away and the pending group
/// invitations, then forgets the messages.
async fn deliver_login(conn: &mut Conn, shared: &Shared, id: u32, me: &mut LoggedIn) -> bool {
    let offline = std::mem::take(&mut me.offline);
    let reply = Reply::LoggedIn {
        username: me.name.clone(),
        created: me.created,
        offline_messages: offline.len() as u32,
    };
    conn.reply(id, Ok(reply));
    let last = offline.last().map(|m| m.id);
    for m in offline {
        conn.queue(&ServerMessage::Event(offline_event(m.message)));
    }
    for invitation in std::mem::take(&mut me.invitations) {
        conn.queue(&ServerMessage::Event(Event::Invited(invitation)));
    }
    if !conn.flush().await {
        return false;
    }
    if let Some(up_to) = last {
        let name = me.name.clone();
        if let Err(e) = shared.store.call(move |s| s.delete_offline(&name, up_to)).await {
            // They stay stored and come again at the next login: duplicated, never lost.
            tracing::error!(user = %me.name, "cannot forget delivered offline messages: {e}");
        }
    }
    true
}

/// How a logged-in session ended.
enum Ending {
    LoggedOut,
    Idle,
    Shutdown,
    TooSlow,
    Dropped,
}

/// The logged-in loop.
async fn authenticated(
    mut conn: Conn,
    shared: &Shared,
    stop: &CancellationToken,
    mut me: LoggedIn,
) {
    let idle = shared.config.idle_timeout;
    let mut active = Instant::now();
    // These waits live across iterations: making them afresh for every request would
    // register and drop a timer and two cancellation waiters each time.
    let shutdown = stop.clone().cancelled_owned();
    let kicked = me.kick.clone().cancelled_owned();
    let idle_timer = sleep_until(active + idle);
    tokio::pin!(shutdown, kicked, idle_timer);
    let ending = loop {
        // Unbiased: a flood of incoming frames must not starve the client's own requests,
        // nor the other way round.
        let incoming = tokio::select! {
            _ = &mut shutdown => break Ending::Shutdown,
            _ = &mut kicked => break Ending::TooSlow,
            _ = &mut idle_timer => {
                // The timer was armed for an earlier deadline; requests since have moved it.
                let deadline = active + idle;
                if Instant::now() >= deadline {
                    break Ending::Idle;
                }
                idle_timer.as_mut().reset(deadline);
                continue;
            }
            _ = me.rx.ready() => {
                let frames = me.rx.take();
                conn.out.reserve(frames.iter().map(Bytes::len).sum());
                for frame in frames {
                    conn.out.extend_from_slice(&frame);
                }
                if !conn.frame_buffered() && !conn.flush().await {
                    break Ending::Dropped;
                }
                continue;
            }
            incoming = conn.next() => incoming,
        };
        active = Instant::now();
        let (id, request) = match incoming {
            Incoming::Closed => break Ending::Dropped,
            Incoming::Bad(err, fatal) => {
                conn.reply(0, Err(err));
                if !conn.flush().await || fatal {
                    break Ending::Dropped;
                }
                continue;
            }
            Incoming::Request(id, request) => (id, request),
        };
        if let Request::Logout = request {
            // Logout is not a command of its own: it ends this loop.
            conn.reply(id, Ok(Reply::LoggedOut));
            break Ending::LoggedOut;
        }
        let result = cmd::dispatch(shared, &me.name, request).await;
        conn.reply(id, result);
        // Requests that came together are answered together, in one write.
        if !conn.frame_buffered() && !conn.flush().await {
            break Ending::Dropped;
        }
    };

    let presence = match ending {
        Ending::LoggedOut => Some(PresenceChange::LoggedOut),
        Ending::Idle => Some(PresenceChange::TimedOut),
        Ending::TooSlow | Ending::Dropped => Some(PresenceChange::Disconnected),
        Ending::Shutdown => None,
    };
    let goodbye = match ending {
        Ending::Idle => Some(EndReason::IdleTimeout),
        Ending::Shutdown => Some(EndReason::ServerShutdown),
        Ending::TooSlow => Some(EndReason::TooSlow),
        Ending::LoggedOut | Ending::Dropped => None,
    };
    // A session that can still write sends what was queued for it; one that cannot keeps it.
    let writable = !matches!(ending, Ending::Dropped | Ending::TooSlow);
    let left = me.leave(shared, presence, !writable).await;
    for frame in &left {
        conn.out.extend_from_slice(frame);
    }
    if let Some(reason) = goodbye {
        conn.queue(&end_event(reason));
    }
    if !conn.flush_within(GOODBYE_TIMEOUT).await {
        // Too late to keep them ahead of anything stored since, but better late than lost.
        if let Some(stored) = keep_for_later(shared, &me.name, &left) {
            log_kept(&me.name, stored.await);
        }
    }
    let _ = conn.writer.shutdown().await;
    tracing::info!(user = %me.name, reason = ending.describe(), "session ended");
}

impl Ending {
    fn describe(&self) -> &'static str {
        match self {
            Ending::LoggedOut => "logout",
            Ending::Idle => "idle timeout",
            Ending::Shutdown => "server shutdown",
            Ending::TooSlow => "too slow",
            Ending::Dropped => "connection dropped",
        }
    }
}

/// The event that delivers a stored message at login.
fn offline_event(m: Envelope) -> Event {
    let Envelope { sender: from, to, body: text, sent_at } = m;
    match to {
        To::User(_) => Event::Message { from, text, sent_at, offline: true },
        To::Group(group) => Event::GroupMessage { group, from, text, sent_at, offline: true },
    }
}

/// Stores the direct and group messages among `frames` for `user`'s next login, so that a
/// message the server acknowledged is not lost with a connection. The store job is queued
/// before this returns; `None` if there was nothing to keep.
fn keep_for_later(
    shared: &Shared,
    user: &str,
    frames: &[Bytes],
) -> Option<impl std::future::Future<Output = StoreResult<usize>>> {
    let keep = |sender, to, body, sent_at| OfflineMessage {
        recipient: user.to_owned(),
        message: Envelope { sender, to, body, sent_at },
    };
    let messages: Vec<_> = frames
        .iter()
        .filter_map(|f| codec::decode_payload::<ServerMessage>(&f[codec::HEADER_LEN..]).ok())
        .filter_map(|m| match m {
            ServerMessage::Event(Event::Message { from, text, sent_at, .. }) => {
                Some(keep(from, To::User(user.to_owned()), text, sent_at))
            }
            ServerMessage::Event(Event::GroupMessage { group, from, text, sent_at, .. }) => {
                Some(keep(from, To::Group(group), text, sent_at))
            }
            _ => None,
        })
        .collect();
    if messages.is_empty() {
        return None;
    }
    Some(shared.store.call(move |s| {
        s.store_offline(&messages)?;
        Ok(messages.len())
    }))
}

fn log_kept(user: &str, stored: StoreResult<usize>) {
    match stored {
        Ok(count) => tracing::info!(user, count, "kept undelivered messages for the next login"),
        Err(e) => tracing::error!(user, "lost undelivered messages: {e}"),
    }
}

fn end_event(reason: EndReason) -> ServerMessage {
    ServerMessage::Event(Event::SessionEnded { reason })
}

impl LoggedIn {
    /// Takes the user offline in the hub (announcing `presence`), records the logout and
    /// returns the frames still queued for this session. With `keep`, the direct messages
    /// among them are stored for the next login instead; their store job is queued while the
    /// hub is locked, so it runs before that of any message routed after this session left.
    async fn leave(
        &mut self,
        shared: &Shared,
        presence: Option<PresenceChange>,
        keep: bool,
    ) -> Vec<Bytes> {
        let at = now_ms();
        let (name, rx) = (&self.name, &self.rx);
        let left = shared.hub.leave(name, self.session, presence, at, |peer| {
            let mut frames: Vec<Bytes> = rx.take().into();
            frames.extend(peer.overflow);
            let kept = if keep { keep_for_later(shared, name, &frames) } else { None };
            (frames, kept)
        });
        let (frames, kept) = left.unwrap_or_default();
        if let Some(stored) = kept {
            log_kept(name, stored.await);
        }
        let row = self.history_row;
        if let Err(e) = shared.store.call(move |s| s.record_logout(row, at)).await {
            tracing::error!(user = %self.name, "cannot record logout: {e}");
        }
        if keep {
            Vec::new()
        } else {
            frames
        }
    }
}
