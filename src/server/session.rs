//! One task per client connection: the phases of a session.
//!
//! A connection goes through three phases, each its own function so that the state of each
//! is plain from the types: the handshake ([`handshake`]), the wait for a successful login
//! ([`unauthenticated`]) and the logged-in loop ([`logged_in`]), followed by the goodbye
//! ([`end`]). The phases other than the loop are boxed, so that a logged-in session, which
//! may sit idle for hours, holds only the loop's small state. The socket and its buffers are
//! [`Conn`]'s (`server::conn`).
//!
//! The logged-in loop waits on three things at once: its inbox (frames queued by other
//! sessions, and the signals for shutdown and for being too slow), its socket and the idle
//! deadline. Each wake-up handles everything that is ready, then writes once: queued frames
//! and the replies to every request read go out together, written directly when the socket
//! takes them (the usual case) and only otherwise through a timed wait. The idle deadline is
//! only re-armed when it fires, so a request costs no timer bookkeeping.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::cmd::{self, login::LoggedIn};
use super::conn::{sort, Conn, Filled, Incoming, GOODBYE_TIMEOUT};
use super::hub::DirectAddrs;
use super::inbox::Signal;
use super::Shared;
use crate::protocol::{
    codec, now_ms, ClientMessage, CodecError, EndReason, ErrorCode, ErrorReply, Event,
    PresenceChange, Reply, Request, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use crate::store::{Envelope, OfflineMessage, StoreResult, To};

/// How long a new connection has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    if !Box::pin(handshake(&mut conn, full)).await {
        return;
    }
    let Some(me) = Box::pin(unauthenticated(&mut conn, &shared, &stop, addr)).await else {
        return;
    };
    tracing::info!(%addr, user = %me.name, "logged in");
    // The hub tells the sessions logged in when the server stops; one that logged in just
    // after that sees the token instead.
    let ending = if stop.is_cancelled() {
        Ending::Shutdown
    } else {
        logged_in(&mut conn, &shared, &me).await
    };
    Box::pin(end(conn, &shared, me, ending)).await;
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

/// The logged-in loop; returns why it ended, with anything still to write in `conn.out`.
async fn logged_in(conn: &mut Conn, shared: &Shared, me: &LoggedIn) -> Ending {
    let idle = shared.config.idle_timeout;
    let mut active = Instant::now();
    // Armed once and only moved when it fires: resetting it per request would cost a timer
    // update each time.
    let idle_timer = sleep_until(active + idle);
    tokio::pin!(idle_timer);
    loop {
        // Everything that is ready is handled in this pass, so neither a flood of incoming
        // frames nor the client's own requests can starve the other.
        let (inbox, socket, timer) = poll_fn(|cx| {
            let inbox = me.rx.poll_ready(cx);
            let socket = conn.socket.poll_read_ready(cx);
            let timer = idle_timer.as_mut().poll(cx).is_ready();
            if inbox.is_ready() || socket.is_ready() || timer {
                Poll::Ready((inbox, socket, timer))
            } else {
                Poll::Pending
            }
        })
        .await;
        if timer {
            // The timer was armed for an earlier deadline; requests since have moved it.
            let deadline = active + idle;
            if Instant::now() >= deadline {
                return Ending::Idle;
            }
            idle_timer.as_mut().reset(deadline);
        }
        if let Poll::Ready(Some(signal)) = inbox {
            return signal.into();
        }
        // The socket before the inbox: a client that has gone leaves its queued frames in
        // the inbox, where leaving keeps them for its next login.
        match socket {
            Poll::Ready(Ok(())) => {
                if let Filled::Closed(_) = conn.fill() {
                    return Ending::Dropped;
                }
                // Requests that came together are answered together, in one write.
                while let Some(read) = conn.decode() {
                    active = Instant::now();
                    match sort(Some(read)) {
                        Incoming::Request(id, Request::Logout) => {
                            // Logout is not a command of its own: it ends this loop.
                            conn.reply(id, Ok(Reply::LoggedOut));
                            return Ending::LoggedOut;
                        }
                        Incoming::Request(id, request) => {
                            // Boxed: the handlers' futures are only alive during a request.
                            let result = Box::pin(cmd::dispatch(shared, &me.name, request)).await;
                            conn.reply(id, result);
                        }
                        Incoming::Bad(err, fatal) => {
                            conn.reply(0, Err(err));
                            if fatal {
                                return Ending::Dropped;
                            }
                        }
                        Incoming::Closed => return Ending::Dropped,
                    }
                }
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!("connection failed: {e}");
                return Ending::Dropped;
            }
            Poll::Pending => {}
        }
        if inbox.is_ready() {
            let frames = me.rx.take();
            conn.out.reserve(frames.iter().map(Bytes::len).sum());
            for frame in frames {
                conn.out.extend_from_slice(&frame);
            }
        }
        if !conn.flush_within(conn.write_timeout, Some(&me.rx)).await {
            return me.rx.signal().map_or(Ending::Dropped, Ending::from);
        }
    }
}

/// Ends a logged-in session: takes the user offline, then writes what is still queued (or
/// keeps it for the next login if the client cannot take it) and the goodbye.
async fn end(mut conn: Conn, shared: &Shared, mut me: LoggedIn, ending: Ending) {
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
    if !conn.flush_within(GOODBYE_TIMEOUT, None).await {
        // Too late to keep them ahead of anything stored since, but better late than lost.
        if let Some(stored) = keep_for_later(shared, &me.name, &left) {
            log_kept(&me.name, stored.await);
        }
    }
    let _ = conn.socket.shutdown().await;
    tracing::info!(user = %me.name, reason = ending.describe(), "session ended");
}

impl From<Signal> for Ending {
    fn from(signal: Signal) -> Self {
        match signal {
            Signal::Shutdown => Ending::Shutdown,
            Signal::TooSlow => Ending::TooSlow,
        }
    }
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
