//! One task per client connection: the phases of a session.
//!
//! A connection goes through three phases, each its own function so that the state of each
//! is plain from the types: the handshake ([`handshake`]), the wait for a successful login
//! ([`unauthenticated`]) and the logged-in loop ([`logged_in`]), followed by the goodbye
//! ([`end`]). The phases other than the loop are boxed, so that a logged-in session, which
//! may sit idle for hours, holds only the loop's small state. The socket and its buffers are
//! [`Conn`]'s (`server::conn`).
//!
//! The logged-in loop waits on four things at once: its inbox (frames queued by other
//! sessions, and the signals for shutdown and for being too slow), its socket, the idle
//! deadline and, while it catches up, the next page read from the log. Each wake-up handles
//! everything that is ready, then writes once: log pages, queued frames and the replies to
//! every request read go out together, written directly when the socket takes them (the usual
//! case) and only otherwise through a timed wait. The idle deadline is only re-armed when it
//! fires, so a request costs no timer bookkeeping.
//!
//! Limits (docs/SECURITY.md): a connection refused at accept (server full, or its address
//! past its share) only gets the refusal; one not logged in by the registration deadline is
//! closed whatever it sends; each login attempt draws on its address's bucket (a refusal
//! closes the connection) and each request of a logged-in user on its kind's
//! ([`super::rate`]); refusals draw on a bucket of their own, and a connection that empties
//! it is flooding and is closed. Every close after an error frame is graceful
//! (`Conn::close`), so that the frame arrives.
//!
//! Delivery (`server::delivery`): the session first streams what lies after the user's
//! cursor, page by page as the client acknowledges, then switches to live under the hub's
//! lock with no gap and no duplicate at the seam, and ends the catch-up with
//! [`Event::CaughtUp`]. Acknowledgements move the user's cursor in the hub. When a session
//! ends, nothing needs keeping: whatever the client had not acknowledged is still in the log
//! after its cursor and comes again at the next login.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::cmd::{self, login::LoggedIn};
use super::conn::{self, sort, Conn, Filled, Incoming, GOODBYE_TIMEOUT};
use super::delivery::{Delivery, PAGE_BYTES, PAGE_MESSAGES};
use super::hub::DirectAddrs;
use super::inbox::Signal;
use super::limits::rate_limited;
use super::rate::{Kind, Limiter, Verdict};
use super::tls::Transport;
use super::Shared;
use crate::limit::TokenBucket;
use crate::protocol::{
    now_ms, ClientMessage, CodecError, EndReason, ErrorCode, ErrorReply, Event, PresenceChange,
    Reply, Request, ServerMessage, Timestamp, Welcome, PROTOCOL_VERSION,
};
use crate::store::{LogRow, StoreResult, To};

/// A catch-up page being read from the log.
type PageRead = Pin<Box<dyn Future<Output = StoreResult<Vec<LogRow>>> + Send>>;
/// Unacknowledged messages per queued frame of the session queue before a live session
/// counts as too slow: a client that reads but does not acknowledge is one too.
const UNACKED_PER_QUEUED: usize = 8;
/// Empty catch-up reads in a row after which a session goes live even though the hub noted
/// a newer message for it (which the log then does not give this user: see `go_live`).
const EMPTY_READS_BEFORE_LIVE: u32 = 3;

/// Sends of one session waiting for their commit at once; past this its next requests wait.
const SENDS_IN_FLIGHT: usize = 64;

/// A request being answered: its id and, once done, its reply.
type Answer = Pin<Box<dyn Future<Output = (u32, Result<Reply, ErrorReply>)> + Send>>;

/// How long a new connection has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection from accept to close. A `refusal` (the server is full, or the
/// address has had its share) is all the connection gets.
pub(super) async fn serve(
    socket: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    refusal: Option<ErrorReply>,
) {
    let login_by = Instant::now() + shared.config.login_deadline;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%addr, "set_nodelay: {e}");
    }
    // Boxed: the handshake's state is no part of an idle session's future. A refused
    // connection is refused after it, so that the client can read why.
    let accept = Transport::accept(socket, shared.config.tls.as_ref(), addr);
    let Some(socket) = Box::pin(accept).await else {
        return;
    };
    let mut conn = Conn::new(socket, &shared);
    if let Some(refusal) = refusal {
        tracing::debug!(%addr, "refused: {refusal}");
        // Boxed, as the phases are: its drain buffer is no part of an idle session's future.
        Box::pin(conn.goodbye(ServerMessage::Reply { id: 0, result: Err(refusal) })).await;
        return;
    }
    if !Box::pin(handshake(&mut conn, &shared.config, login_by)).await {
        return;
    }
    let unauthenticated = unauthenticated(&mut conn, &shared, &stop, addr, login_by);
    let Some(me) = Box::pin(unauthenticated).await else {
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

/// Waits for a [`Hello`](crate::protocol::Hello) of our version and answers it.
async fn handshake(conn: &mut Conn, config: &super::Config, login_by: Instant) -> bool {
    let by = login_by.min(Instant::now() + HANDSHAKE_TIMEOUT);
    let incoming = timeout_at(by, conn.read()).await;
    let refusal = match incoming {
        Ok(Some(Ok(Ok(ClientMessage::Hello(hello))))) if hello.version == PROTOCOL_VERSION => {
            let welcome = Welcome {
                version: PROTOCOL_VERSION,
                server: server_agent(),
                max_frame: u32::try_from(config.max_frame).unwrap_or(u32::MAX),
                max_message_chars: u32::try_from(config.max_message_chars).unwrap_or(u32::MAX),
            };
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
        Ok(Some(Err(e))) if conn::stalled(&e) => {
            ErrorReply::new(ErrorCode::HandshakeRequired, "the hello stalled half-sent")
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

/// Answers requests until a login succeeds; `None` if the connection ends first, or is
/// not logged in by `login_by` (whatever it sends). `addr` is where the client connects
/// from: login attempts are counted by it, and its announced direct ports are paired with it.
async fn unauthenticated(
    conn: &mut Conn,
    shared: &Shared,
    stop: &CancellationToken,
    addr: SocketAddr,
    login_by: Instant,
) -> Option<LoggedIn> {
    // Refused requests, counted from the first.
    let mut refusals: Option<TokenBucket> = None;
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => {
                conn.goodbye(end_event(EndReason::ServerShutdown)).await;
                return None;
            }
            _ = sleep_until(login_by) => {
                conn.goodbye(end_event(EndReason::LoginTimeout)).await;
                return None;
            }
            incoming = conn.next() => incoming,
        };
        match incoming {
            Incoming::Closed => return None,
            Incoming::Stalled => {
                conn.goodbye(end_event(EndReason::StalledFrame)).await;
                return None;
            }
            Incoming::Bad(err, true) => {
                conn.goodbye(ServerMessage::Reply { id: 0, result: Err(err) }).await;
                return None;
            }
            Incoming::Bad(err, false) => {
                conn.reply(0, Err(err));
                if !refused(conn, &mut refusals, shared).await {
                    return None;
                }
            }
            Incoming::Request(id, Request::Login { username, password, direct }) => {
                let ip = addr.ip().to_canonical();
                let allowed = shared.addrs().login(ip, Instant::now());
                if let Err(refusal) = allowed {
                    // Closed, not only answered: answering a client that keeps asking would
                    // cost as much as the logins it is refused. Reconnecting is rate-limited.
                    let refusal = refusal.reply("logins from your address");
                    conn.goodbye(ServerMessage::Reply { id, result: Err(refusal) }).await;
                    return None;
                }
                let direct = direct.map(|endpoint| DirectAddrs {
                    tcp: SocketAddr::new(ip, endpoint.tcp),
                    udp: SocketAddr::new(ip, endpoint.udp),
                    key: endpoint.key,
                    local: endpoint.local.map(|ip| ip.to_canonical()).filter(|local| *local != ip),
                });
                match cmd::login::run(shared, ip, username, password, direct).await {
                    Ok(mut me) => {
                        if deliver_login(conn, id, &mut me).await {
                            return Some(me);
                        }
                        me.leave(shared, Some(PresenceChange::Disconnected)).await;
                        return None;
                    }
                    Err(err) if matches!(err.code, ErrorCode::RateLimited { .. }) => {
                        conn.goodbye(ServerMessage::Reply { id, result: Err(err) }).await;
                        return None;
                    }
                    Err(err) => {
                        conn.reply(id, Err(err));
                        if !refused(conn, &mut refusals, shared).await {
                            return None;
                        }
                    }
                }
            }
            Incoming::Request(id, Request::Logout) => {
                conn.goodbye(ServerMessage::Reply { id, result: Ok(Reply::LoggedOut) }).await;
                return None;
            }
            // Nothing was sent yet, so there is nothing to acknowledge.
            Incoming::Ack(_) => {}
            Incoming::Request(_, _) | Incoming::Relay(..) => {
                let id = if let Incoming::Request(id, _) = incoming { id } else { 0 };
                let err = ErrorReply::new(ErrorCode::NotLoggedIn, "log in first");
                conn.reply(id, Err(err));
                if !refused(conn, &mut refusals, shared).await {
                    return None;
                }
            }
        }
    }
}

/// Sends the refusal just queued, and counts it against the connection; false once the
/// connection is to end (it failed, or it keeps asking for what it is refused: then it is
/// told it is flooding and closed).
async fn refused(conn: &mut Conn, refusals: &mut Option<TokenBucket>, shared: &Shared) -> bool {
    if let Some(limit) = shared.config.user_rates.refusals {
        let now = Instant::now();
        if !refusals.get_or_insert_with(|| limit.bucket(now)).take(now) {
            conn.goodbye(end_event(EndReason::Flooding)).await;
            return false;
        }
    }
    conn.flush().await
}

/// Sends the login reply (with how many messages wait) and the pending group invitations;
/// the waiting messages follow from the logged-in loop.
async fn deliver_login(conn: &mut Conn, id: u32, me: &mut LoggedIn) -> bool {
    let reply = Reply::LoggedIn {
        username: me.name.clone(),
        created: me.created,
        offline_messages: me.waiting.min(u64::from(u32::MAX)) as u32,
        udp: me.udp.map(Box::new),
    };
    conn.reply(id, Ok(reply));
    for invitation in std::mem::take(&mut me.invitations) {
        conn.queue(&ServerMessage::Event(Event::Invited(invitation)));
    }
    conn.flush().await
}

/// How a logged-in session ended.
enum Ending {
    LoggedOut,
    Idle,
    Shutdown,
    TooSlow,
    Flooding,
    Stalled,
    /// A frame that ends the connection (too large), answered in `conn.out`.
    BadFrame,
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
    let mut delivery = Delivery::new(me.cursor);
    let mut page: Option<PageRead> = None;
    let mut empty_reads = 0;
    let max_unacked = shared.config.session_queue.saturating_mul(UNACKED_PER_QUEUED).max(1);
    // The request buckets, made at the first request: an idle session holds none.
    let mut limiter: Option<Box<Limiter>> = None;
    // Sends waiting for their commit, answered in the order they came: the session reads on
    // meanwhile, so that a client's sends in a row share one commit rather than one each.
    let mut sending: FuturesOrdered<Answer> = FuturesOrdered::new();
    loop {
        if page.is_none() && delivery.may_read() {
            page = Some(read_page(shared, &me.name, delivery.last_sent()));
        }
        // Everything that is ready is handled in this pass, so neither a flood of incoming
        // frames nor the client's own requests can starve the other.
        let waiting = conn.frame_waiting() && sending.len() < SENDS_IN_FLIGHT;
        let (inbox, socket, timer, read, sent) = poll_fn(|cx| {
            let inbox = me.rx.poll_ready(cx);
            let socket = match waiting {
                true => Poll::Ready(Ok(())),
                false => conn.socket.poll_read_ready(cx),
            };
            let timer = idle_timer.as_mut().poll(cx).is_ready();
            let read = page.as_mut().map_or(Poll::Pending, |p| p.as_mut().poll(cx));
            let sent = match sending.is_empty() {
                true => Poll::Pending,
                false => sending.poll_next_unpin(cx),
            };
            if inbox.is_ready() || socket.is_ready() || timer || read.is_ready() || sent.is_ready()
            {
                Poll::Ready((inbox, socket, timer, read, sent))
            } else {
                Poll::Pending
            }
        })
        .await;
        if timer {
            // The timer was armed for an earlier deadline; requests since have moved it.
            let (now, deadline) = (Instant::now(), active + idle);
            if now >= deadline {
                return Ending::Idle;
            }
            if conn.stalled_by().is_some_and(|by| now >= by) {
                return Ending::Stalled;
            }
            idle_timer.as_mut().reset(conn.stalled_by().map_or(deadline, |by| by.min(deadline)));
        }
        if let Poll::Ready(Some(signal)) = inbox {
            return signal.into();
        }
        if let Poll::Ready(read) = read {
            page = None;
            let rows = match read {
                Ok(rows) => rows,
                Err(e) => {
                    // The client logs in again and resumes from its cursor.
                    tracing::error!(user = %me.name, "cannot read the message log: {e}");
                    return Ending::Dropped;
                }
            };
            if let Some(last) = rows.last().map(|m| m.id) {
                empty_reads = 0;
                for row in rows {
                    delivery.sent(row.id, row.body.len());
                    conn.queue(&ServerMessage::Event(waiting_event(row, me.since)));
                }
                delivery.page_sent(last);
            } else {
                empty_reads += 1;
                let sent = delivery.last_sent();
                if shared.hub.go_live(&me.name, me.session, sent)
                    || empty_reads >= EMPTY_READS_BEFORE_LIVE
                        && shared.hub.force_live(&me.name, me.session, sent)
                {
                    delivery.live();
                    conn.queue(&ServerMessage::Event(Event::CaughtUp));
                }
            }
        }
        if let Poll::Ready(Some((id, result))) = sent {
            conn.reply(id, result);
            while let Some(Some((id, result))) = sending.next().now_or_never() {
                conn.reply(id, result);
            }
        }
        // The socket before the inbox, so that an acknowledgement read now counts before
        // what is written next.
        match socket {
            Poll::Ready(Ok(())) => {
                if let Filled::Closed(_) = conn.fill() {
                    return Ending::Dropped;
                }
                // Requests that came together are answered together, in one write.
                while sending.len() < SENDS_IN_FLIGHT {
                    let Some(read) = conn.decode() else { break };
                    let incoming = sort(Some(read));
                    // Acknowledgements are the client's, not the user's: receiving messages
                    // does not keep an absent user logged in.
                    if !matches!(incoming, Incoming::Ack(_)) {
                        active = Instant::now();
                    }
                    match incoming {
                        Incoming::Request(id, Request::Logout) => {
                            // Logout is not a command of its own: it ends this loop, after
                            // the sends before it.
                            while let Some((id, result)) = sending.next().await {
                                conn.reply(id, result);
                            }
                            conn.reply(id, Ok(Reply::LoggedOut));
                            return Ending::LoggedOut;
                        }
                        Incoming::Request(id, request) => {
                            let rates = &shared.config.user_rates;
                            let verdict = Kind::of(&request).map_or(Verdict::Allow, |kind| {
                                let limiter = limiter.get_or_insert_with(Box::default);
                                match limiter.check(rates, kind, active) {
                                    Verdict::Refuse(wait) => {
                                        conn.reply(id, Err(rate_limited(kind.noun(), wait)));
                                        Verdict::Refuse(wait)
                                    }
                                    verdict => verdict,
                                }
                            });
                            match verdict {
                                Verdict::Allow => {
                                    match cmd::start_send(shared, &me.name, request) {
                                        Ok(reply) => sending
                                            .push_back(Box::pin(async move { (id, reply.await) })),
                                        Err(request) => {
                                            // Answered in the order asked: the sends first.
                                            while let Some((id, result)) = sending.next().await {
                                                conn.reply(id, result);
                                            }
                                            // Boxed: the handlers' futures are only alive
                                            // during a request.
                                            let dispatch = cmd::dispatch(shared, &me.name, request);
                                            conn.reply(id, Box::pin(dispatch).await);
                                        }
                                    }
                                }
                                Verdict::Refuse(_) => {}
                                Verdict::Flooding => return Ending::Flooding,
                            }
                        }
                        Incoming::Ack(up_to) => {
                            if let Some((cursor, acked)) = delivery.ack(up_to) {
                                shared.hub.acked(&me.name, cursor, acked);
                            }
                        }
                        Incoming::Relay(link, data) => {
                            if !cmd::private::relay(shared, &me.name, link, data) {
                                let limiter = limiter.get_or_insert_with(Box::default);
                                if !limiter.refused(&shared.config.user_rates, active) {
                                    return Ending::Flooding;
                                }
                            }
                        }
                        Incoming::Bad(err, fatal) => {
                            conn.reply(0, Err(err));
                            if fatal {
                                return Ending::BadFrame;
                            }
                            let limiter = limiter.get_or_insert_with(Box::default);
                            if !limiter.refused(&shared.config.user_rates, active) {
                                return Ending::Flooding;
                            }
                        }
                        Incoming::Closed => return Ending::Dropped,
                        Incoming::Stalled => return Ending::Stalled,
                    }
                }
                // A frame left half-read must come whole in time: the timer watches it.
                if let Some(by) = conn.stalled_by() {
                    if by < idle_timer.deadline() {
                        idle_timer.as_mut().reset(by);
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
            conn.out.reserve(frames.iter().map(|(_, f)| f.len()).sum());
            for (id, frame) in frames {
                if id != 0 {
                    delivery.sent(id, frame.len());
                }
                conn.out.extend_from_slice(&frame);
            }
            if delivery.unacked() > max_unacked {
                return Ending::TooSlow;
            }
        }
        if !conn.flush_within(conn.write_timeout, Some(&me.rx)).await {
            return me.rx.signal().map_or(Ending::Dropped, Ending::from);
        }
    }
}

/// Ends a logged-in session: takes the user offline, then writes the replies still queued and
/// the goodbye. Frames still in the inbox are dropped: whatever the client has not
/// acknowledged is in the log and comes again at its next login.
async fn end(mut conn: Conn, shared: &Shared, mut me: LoggedIn, ending: Ending) {
    let presence = match ending {
        Ending::LoggedOut => Some(PresenceChange::LoggedOut),
        Ending::Idle => Some(PresenceChange::TimedOut),
        Ending::TooSlow
        | Ending::Flooding
        | Ending::Stalled
        | Ending::BadFrame
        | Ending::Dropped => Some(PresenceChange::Disconnected),
        Ending::Shutdown => None,
    };
    let goodbye = match ending {
        Ending::Idle => Some(EndReason::IdleTimeout),
        Ending::Shutdown => Some(EndReason::ServerShutdown),
        Ending::TooSlow => Some(EndReason::TooSlow),
        Ending::Flooding => Some(EndReason::Flooding),
        Ending::Stalled => Some(EndReason::StalledFrame),
        Ending::LoggedOut | Ending::BadFrame | Ending::Dropped => None,
    };
    me.leave(shared, presence).await;
    if let Some(reason) = goodbye {
        conn.queue(&end_event(reason));
    }
    if matches!(ending, Ending::Dropped) {
        let _ = conn.socket.shutdown().await;
    } else {
        conn.flush_within(GOODBYE_TIMEOUT, None).await;
        conn.close().await;
    }
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
            Ending::Flooding => "flooding",
            Ending::Stalled => "stalled frame",
            Ending::BadFrame => "frame too large",
            Ending::Dropped => "connection dropped",
        }
    }
}

/// Starts reading `user`'s next catch-up page, after id `after`.
fn read_page(shared: &Shared, user: &str, after: u64) -> PageRead {
    let groups = shared.hub.memberships(user);
    let user = user.to_owned();
    Box::pin(
        shared.store.call(move |s| s.log_after(&user, after, &groups, PAGE_MESSAGES, PAGE_BYTES)),
    )
}

/// The event that delivers a message from the log at catch-up. It waited for the user if
/// it was sent before this session joined the hub (`since`); one sent during the catch-up
/// itself, which the catch-up hands on too, was not.
fn waiting_event(m: LogRow, since: Timestamp) -> Event {
    let LogRow { id, sender: from, to, body: text, sent_at } = m;
    let offline = sent_at < since;
    match to {
        To::User(_) => Event::Message { id, from, text, sent_at, offline },
        To::Group(group) => Event::GroupMessage { id, group, from, text, sent_at, offline },
    }
}

fn end_event(reason: EndReason) -> ServerMessage {
    ServerMessage::Event(Event::SessionEnded { reason })
}

impl LoggedIn {
    /// Takes the user offline in the hub (announcing `presence`) and records the logout.
    async fn leave(&mut self, shared: &Shared, presence: Option<PresenceChange>) {
        let at = now_ms();
        shared.hub.leave(&self.name, self.session, presence, at);
        shared.rendezvous.unregister(&self.name);
        let Some(row) = self.history_row else {
            return;
        };
        if let Err(e) = shared.store.call(move |s| s.record_logout(row, at)).await {
            tracing::error!(user = %self.name, "cannot record logout: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_sent_during_the_catch_up_did_not_wait_for_the_user() {
        let row = |sent_at| LogRow {
            id: 7,
            sender: "alice".into(),
            to: To::User("bob".into()),
            body: "hi".into(),
            sent_at,
        };
        let offline = |event| match event {
            Event::Message { offline, .. } => offline,
            other => panic!("{other:?}"),
        };
        // bob's session joined at 1000: what was sent before waited; what came after, as
        // the catch-up was still reading the log, was sent to him online.
        assert!(offline(waiting_event(row(999), 1000)));
        assert!(!offline(waiting_event(row(1000), 1000)));
        assert!(!offline(waiting_event(row(1500), 1000)));
    }
}
