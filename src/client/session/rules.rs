//! The rules of a session, with no I/O and no clock: what ends it, when to reconnect and
//! after how long, which commands wait for the server, and which messages are still to be
//! sent. The driver ([`super`]) feeds them what happened and does what they say; the unit
//! tests below feed them events by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::protocol::{
    encode_frame, text_problem, ByeReason, ClientMessage, EndReason, ErrorCode, MessageId, Request,
    DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE_CHARS,
};

/// The first pause before reconnecting.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between two reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The state of the session's link to the server, as a front end shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Logged in.
    Connected,
    /// The connection is gone and the session will try again in `retry_in`.
    Reconnecting {
        /// Attempts that failed since the connection went (0 for the first wait).
        attempt: u32,
        /// The pause before the next attempt.
        retry_in: Duration,
        /// Why the connection went, or why the last attempt failed.
        why: String,
    },
    /// The server ended the session for good (idle timeout, a refused login, or a shutdown
    /// with reconnecting turned off).
    Ended(String),
    /// The connection broke and reconnecting is turned off.
    Lost(String),
}

/// How a session finished, for the front end's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The user logged out (or quit).
    LoggedOut,
    /// The server ended the session (idle timeout; a shutdown without reconnecting).
    EndedByServer,
    /// The connection was lost and not reconnected.
    ConnectionLost,
    /// Logging in again was refused with this code (wrong password, locked out).
    LoginRefused(ErrorCode),
    /// The server's certificate was no longer trusted when connecting again (it changed).
    Untrusted,
}

/// What the driver must do after the rules have seen something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing more.
    Nothing,
    /// End every private chat, telling each peer why.
    CloseChats(ByeReason),
    /// Show the new connection state and try to log in again after its `retry_in`.
    Retry(Connection),
    /// The server is gone for good but private chats or transfers keep the session going:
    /// show this state and carry on without the server.
    Linger(Connection),
    /// The session is over.
    Finish(Finish),
}

/// Reconnect pauses: [`FIRST_BACKOFF`] doubling up to [`MAX_BACKOFF`], each drawn from the
/// upper half of its range so that clients dropped together do not return together.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next pause; `jitter` is a random number in `0.0..1.0`.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let base = FIRST_BACKOFF.saturating_mul(1 << self.attempt.min(16)).min(MAX_BACKOFF);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Attempts made since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from [`FIRST_BACKOFF`] (after a successful login).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The connection rules of one session.
#[derive(Debug)]
pub struct Rules {
    reconnect: bool,
    connection: Connection,
    /// What the server said before closing, if it said anything.
    notice: Option<EndReason>,
    /// The user asked to log out: a close is the end, never a reason to reconnect.
    logging_out: bool,
    backoff: Backoff,
}

impl Rules {
    /// The rules of a session that has just logged in; `reconnect` is false for
    /// `--no-reconnect`.
    pub fn new(reconnect: bool) -> Self {
        Self {
            reconnect,
            connection: Connection::Connected,
            notice: None,
            logging_out: false,
            backoff: Backoff::default(),
        }
    }

    /// The state of the link to the server.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether requests can go to the server now.
    pub fn connected(&self) -> bool {
        self.connection == Connection::Connected
    }

    /// Whether the session will be connected again by itself (it is reconnecting).
    pub fn reconnecting(&self) -> bool {
        matches!(self.connection, Connection::Reconnecting { .. })
    }

    /// Whether a private message sent should be followed by a keep-alive: it is activity
    /// the server does not see, and only a connected server can hear of it.
    pub fn keep_alive(&self) -> bool {
        self.connected()
    }

    /// Whether the user has asked to log out.
    pub fn logging_out(&self) -> bool {
        self.logging_out
    }

    /// The server said it is ending the session. An idle timeout ends the private chats
    /// too (the user is away); a server going away does not.
    pub fn server_notice(&mut self, reason: EndReason) -> Step {
        self.notice = Some(reason);
        match reason {
            EndReason::IdleTimeout => Step::CloseChats(ByeReason::TimedOut),
            EndReason::ServerShutdown
            | EndReason::TooSlow
            | EndReason::Flooding
            | EndReason::LoginTimeout
            | EndReason::StalledFrame => Step::Nothing,
        }
    }

    /// The server connection closed (`error` says how, if not cleanly). `links_busy` is
    /// whether private chats or transfers are running. `jitter` is in `0.0..1.0`.
    pub fn closed(&mut self, error: Option<&str>, links_busy: bool, jitter: f64) -> Step {
        if self.logging_out {
            return Step::Finish(Finish::LoggedOut);
        }
        let notice = self.notice.take();
        let why = match (notice, error) {
            (Some(reason), _) => crate::client::format::end_reason(reason).to_owned(),
            (None, Some(error)) => error.to_owned(),
            (None, None) => "closed by the server".to_owned(),
        };
        // An idle timeout ends a session for good: the course specs want the client gone. So
        // does a cut-off for flooding: coming back by itself would only flood again.
        let for_good =
            matches!(notice, Some(EndReason::IdleTimeout | EndReason::Flooding)) || !self.reconnect;
        if !for_good {
            return self.retry(why, jitter);
        }
        let (state, finish) = match notice {
            Some(_) => (Connection::Ended(why), Finish::EndedByServer),
            None => (Connection::Lost(why), Finish::ConnectionLost),
        };
        self.connection = state.clone();
        if links_busy {
            return Step::Linger(state);
        }
        Step::Finish(finish)
    }

    /// A reconnect attempt found a server certificate it must not trust (`error` says
    /// why): trying again would only show the same certificate, or an attacker's.
    pub fn untrusted(&mut self, error: &str) -> Step {
        self.connection = Connection::Ended(error.to_owned());
        Step::Finish(Finish::Untrusted)
    }

    /// A reconnect attempt failed with `error` (its server code, if the server answered).
    pub fn attempt_failed(&mut self, error: &str, code: Option<ErrorCode>, jitter: f64) -> Step {
        if self.logging_out {
            return Step::Finish(Finish::LoggedOut);
        }
        match code {
            // The account or this client is refused: trying again cannot help.
            Some(
                code @ (ErrorCode::InvalidCredentials
                | ErrorCode::LockedOut { .. }
                | ErrorCode::InvalidArgument
                | ErrorCode::UnknownUser
                | ErrorCode::VersionMismatch),
            ) => {
                self.connection = Connection::Ended(format!("logging in again failed: {error}"));
                Step::Finish(Finish::LoginRefused(code))
            }
            // Unreachable, busy, or the old session lingering on the server a moment (a
            // server that limits how fast a crowd of clients returns says so too): again.
            _ => self.retry(error.to_owned(), jitter),
        }
    }

    /// Logged in again.
    pub fn logged_in(&mut self) {
        self.connection = Connection::Connected;
        self.backoff.reset();
    }

    /// The user asked to log out.
    pub fn logout(&mut self) {
        self.logging_out = true;
    }

    /// Private chats and transfers have all ended: with the server gone for good, so is the
    /// session.
    pub fn links_idle(&self) -> Option<Finish> {
        if self.logging_out {
            return None;
        }
        match self.connection {
            Connection::Ended(_) => Some(Finish::EndedByServer),
            Connection::Lost(_) => Some(Finish::ConnectionLost),
            Connection::Connected | Connection::Reconnecting { .. } => None,
        }
    }

    /// How a logout finishes the session: by the server's word when connected, at once
    /// otherwise (a session the server ended keeps the code that says so).
    pub fn logout_finish(&self) -> Finish {
        match self.connection {
            Connection::Ended(_) => Finish::EndedByServer,
            Connection::Lost(_) => Finish::ConnectionLost,
            Connection::Connected | Connection::Reconnecting { .. } => Finish::LoggedOut,
        }
    }

    fn retry(&mut self, why: String, jitter: f64) -> Step {
        let attempt = self.backoff.attempts();
        let retry_in = self.backoff.next(jitter);
        self.connection = Connection::Reconnecting { attempt, retry_in, why };
        Step::Retry(self.connection.clone())
    }
}

/// Where a server command goes while the connection is in a given state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Send it now.
    Send,
    /// Queue it: it is a message, and it goes out with its send id after the next login.
    Queue,
    /// Refuse it with this explanation.
    Refuse(String),
}

/// Where `request` goes, given the connection.
pub fn route(request: &Request, connection: &Connection) -> Route {
    let queueable = matches!(request, Request::Msg { .. } | Request::GroupMsg { .. });
    match connection {
        Connection::Connected => Route::Send,
        Connection::Reconnecting { .. } if queueable => Route::Queue,
        Connection::Reconnecting { .. } => Route::Refuse(
            "not connected to the server (reconnecting); messages wait for it, this command \
             does not: try again once reconnected"
                .into(),
        ),
        Connection::Ended(_) | Connection::Lost(_) => Route::Refuse(
            "the server is gone; only /private, /stopprivate, file transfers already running, \
             /cancel and /logout work now"
                .into(),
        ),
    }
}

/// The server's limits, checked before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest frame the server reads, in bytes.
    pub max_frame: usize,
    /// Longest message text, in characters.
    pub max_message_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame: DEFAULT_MAX_FRAME, max_message_chars: DEFAULT_MAX_MESSAGE_CHARS }
    }
}

/// Why `request` cannot be sent within `limits` (a server would refuse it, or close the
/// connection for a frame too large), if it cannot.
pub fn limit_problem(request: &Request, limits: &Limits) -> Option<String> {
    if let Request::Msg { text, .. }
    | Request::GroupMsg { text, .. }
    | Request::Broadcast { text } = request
    {
        if let Some(why) = text_problem(text, limits.max_message_chars) {
            return Some(format!("not sent: {why}"));
        }
    }
    // The largest id and send id, so that the real frame is no larger.
    let mut body = request.clone();
    if let Request::Msg { send_id, .. } | Request::GroupMsg { send_id, .. } = &mut body {
        *send_id = Some(u64::MAX);
    }
    // The server limits the payload, after the frame's 4-byte length.
    let frame = encode_frame(&ClientMessage::Request { id: u32::MAX, body });
    let len = frame.map_or(usize::MAX, |f| f.len().saturating_sub(4));
    (len > limits.max_frame).then(|| {
        format!(
            "not sent: the command is {len} bytes, over the server's limit of {}",
            limits.max_frame
        )
    })
}

/// Which messages the front end has been given, across every connection of the session:
/// a message whose id it has passed already (sent again because its acknowledgement did
/// not reach the server) is dropped, and a login's catch-up counts the new ones.
#[derive(Debug, Default)]
pub struct Delivered {
    forwarded: MessageId,
    /// From a login until its `CaughtUp`: new messages so far, and whether it was a
    /// reconnect.
    catch_up: Option<(u32, bool)>,
}

impl Delivered {
    /// The state right after the first login.
    pub fn logged_in_first() -> Self {
        Self { forwarded: 0, catch_up: Some((0, false)) }
    }

    /// Logged in (again, if `reconnected`): a catch-up begins.
    pub fn logged_in(&mut self, reconnected: bool) {
        self.catch_up = Some((0, reconnected));
    }

    /// The connection closed: no catch-up is under way.
    pub fn disconnected(&mut self) {
        self.catch_up = None;
    }

    /// A message with log id `id` arrived: whether to show it.
    pub fn message(&mut self, id: MessageId) -> bool {
        if id <= self.forwarded {
            return false;
        }
        self.forwarded = id;
        if let Some((arrived, _)) = &mut self.catch_up {
            *arrived += 1;
        }
        true
    }

    /// The catch-up ended: how many new messages it brought, and whether it followed a
    /// reconnect; `None` if none was under way.
    pub fn caught_up(&mut self) -> Option<(u32, bool)> {
        self.catch_up.take()
    }

    /// Whether a login's catch-up is under way.
    pub fn catching_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// The highest id given to the front end.
    pub fn forwarded(&self) -> MessageId {
        self.forwarded
    }
}

/// Messages not yet accepted by the server, in the order they were typed. Each carries the
/// send id it was first sent with, so sending it again never delivers it twice.
#[derive(Debug, Default)]
pub struct Outbox {
    next: u64,
    entries: BTreeMap<u64, Outgoing>,
}

#[derive(Debug)]
struct Outgoing {
    request: Request,
    in_flight: bool,
    /// Times it was sent.
    sends: u32,
}

impl Outbox {
    /// Most messages that may wait for the server; more are refused.
    pub const LIMIT: usize = 1000;
    /// Most times one message is sent before it is given up: a message that the server
    /// answers by closing the connection (it is over a limit of that server) must not be
    /// sent again forever.
    pub const MAX_SENDS: u32 = 5;

    /// Adds `request`, which must carry its send id; returns its place, or `None` when the
    /// outbox is full. `in_flight` says whether it is being sent now.
    pub fn add(&mut self, request: Request, in_flight: bool) -> Option<u64> {
        if self.entries.len() >= Self::LIMIT {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        self.entries.insert(seq, Outgoing { request, in_flight, sends: u32::from(in_flight) });
        Some(seq)
    }

    /// The message at `seq` was answered (accepted or refused): it is done.
    pub fn answered(&mut self, seq: u64) {
        self.entries.remove(&seq);
    }

    /// The message at `seq` was not answered (the connection went): it waits again, unless
    /// it has been sent [`MAX_SENDS`](Self::MAX_SENDS) times; false if it was given up.
    pub fn unanswered(&mut self, seq: u64) -> bool {
        let Some(entry) = self.entries.get_mut(&seq) else { return false };
        if entry.sends >= Self::MAX_SENDS {
            self.entries.remove(&seq);
            return false;
        }
        entry.in_flight = false;
        true
    }

    /// The waiting messages, oldest first, now marked as being sent.
    pub fn take_waiting(&mut self) -> Vec<(u64, Request)> {
        let waiting = self.entries.iter_mut().filter(|(_, entry)| !entry.in_flight);
        waiting
            .map(|(seq, entry)| {
                entry.in_flight = true;
                entry.sends += 1;
                (*seq, entry.request.clone())
            })
            .collect()
    }

    /// How many messages are not yet accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every message was accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str, send_id: u64) -> Request {
        Request::Msg { to: "bob".into(), text: text.into(), send_id: Some(send_id) }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_with_jitter() {
        let mut backoff = Backoff::default();
        let top: Vec<Duration> = (0..9).map(|_| backoff.next(1.0)).collect();
        let secs: Vec<f64> = top.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next(0.0), Duration::from_millis(250), "jitter takes up to half");
        backoff.reset();
        assert_eq!(backoff.next(0.5), Duration::from_millis(375));
    }

    #[test]
    fn a_dropped_connection_or_a_shutdown_reconnects() {
        let mut rules = Rules::new(true);
        let step = rules.closed(Some("reset by peer"), false, 1.0);
        let retry = Connection::Reconnecting {
            attempt: 0,
            retry_in: FIRST_BACKOFF,
            why: "reset by peer".into(),
        };
        assert_eq!(step, Step::Retry(retry));
        assert!(rules.reconnecting());
        let step = rules.attempt_failed("connection refused", None, 1.0);
        assert!(matches!(step, Step::Retry(Connection::Reconnecting { attempt: 1, .. })));
        rules.logged_in();
        assert!(rules.connected());

        assert_eq!(rules.server_notice(EndReason::ServerShutdown), Step::Nothing);
        match rules.closed(None, false, 1.0) {
            Step::Retry(Connection::Reconnecting { attempt: 0, retry_in, why }) => {
                assert_eq!(retry_in, FIRST_BACKOFF, "a login started the backoff again");
                assert!(why.contains("shutting down"), "{why}");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn an_idle_timeout_ends_the_chats_and_the_session_for_good() {
        let mut rules = Rules::new(true);
        assert_eq!(
            rules.server_notice(EndReason::IdleTimeout),
            Step::CloseChats(ByeReason::TimedOut)
        );
        assert_eq!(rules.closed(None, false, 0.5), Step::Finish(Finish::EndedByServer));
        assert!(matches!(rules.connection(), Connection::Ended(_)));
    }

    #[test]
    fn a_certificate_not_trusted_at_a_reconnect_ends_the_session() {
        let mut rules = Rules::new(true);
        assert!(matches!(rules.closed(Some("eof"), false, 0.5), Step::Retry(_)));
        assert_eq!(rules.untrusted("it changed"), Step::Finish(Finish::Untrusted));
        assert_eq!(rules.connection(), &Connection::Ended("it changed".into()));
    }

    #[test]
    fn a_cut_off_for_flooding_is_not_undone_by_a_reconnect_but_a_login_timeout_is_retried() {
        let mut rules = Rules::new(true);
        assert_eq!(rules.server_notice(EndReason::Flooding), Step::Nothing, "chats go on");
        assert_eq!(rules.closed(None, false, 0.5), Step::Finish(Finish::EndedByServer));
        let mut rules = Rules::new(true);
        rules.server_notice(EndReason::LoginTimeout);
        assert!(matches!(rules.closed(None, false, 0.5), Step::Retry(_)));
        assert!(rules.reconnecting());
    }

    #[test]
    fn without_reconnect_the_server_going_ends_the_session_unless_links_run() {
        let mut rules = Rules::new(false);
        assert_eq!(rules.closed(Some("eof"), false, 0.5), Step::Finish(Finish::ConnectionLost));

        let mut rules = Rules::new(false);
        rules.server_notice(EndReason::ServerShutdown);
        let step = rules.closed(None, true, 0.5);
        assert!(matches!(step, Step::Linger(Connection::Ended(_))), "{step:?}");
        assert_eq!(rules.links_idle(), Some(Finish::EndedByServer));
        assert_eq!(rules.logout_finish(), Finish::EndedByServer);
    }

    #[test]
    fn a_refused_login_ends_it_but_a_lingering_old_session_is_waited_out() {
        let mut rules = Rules::new(true);
        rules.closed(None, false, 0.5);
        let step = rules.attempt_failed("already logged in", Some(ErrorCode::AlreadyLoggedIn), 0.5);
        assert!(matches!(step, Step::Retry(_)));
        let step = rules.attempt_failed("server full", Some(ErrorCode::ServerFull), 0.5);
        assert!(matches!(step, Step::Retry(_)));
        let step = rules.attempt_failed("wrong password", Some(ErrorCode::InvalidCredentials), 0.5);
        assert_eq!(step, Step::Finish(Finish::LoginRefused(ErrorCode::InvalidCredentials)));
        let locked = ErrorCode::LockedOut { retry_after_secs: 10 };
        let mut rules = Rules::new(true);
        rules.closed(None, false, 0.5);
        assert_eq!(
            rules.attempt_failed("locked", Some(locked), 0.5),
            Step::Finish(Finish::LoginRefused(locked))
        );
    }

    #[test]
    fn logging_out_is_never_a_reason_to_reconnect() {
        let mut rules = Rules::new(true);
        rules.logout();
        assert_eq!(rules.closed(Some("eof"), true, 0.5), Step::Finish(Finish::LoggedOut));
        assert_eq!(rules.links_idle(), None);
        let mut rules = Rules::new(true);
        rules.closed(None, false, 0.5);
        assert_eq!(rules.logout_finish(), Finish::LoggedOut, "quitting while reconnecting");
    }

    #[test]
    fn messages_wait_while_reconnecting_and_other_commands_are_refused() {
        let reconnecting =
            Connection::Reconnecting { attempt: 0, retry_in: FIRST_BACKOFF, why: "x".into() };
        assert_eq!(route(&msg("hi", 1), &Connection::Connected), Route::Send);
        assert_eq!(route(&msg("hi", 1), &reconnecting), Route::Queue);
        assert!(matches!(route(&Request::List, &reconnecting), Route::Refuse(_)));
        assert!(matches!(route(&msg("hi", 1), &Connection::Lost("x".into())), Route::Refuse(_)));
    }

    #[test]
    fn a_message_shown_before_the_reconnect_is_not_shown_again_and_new_ones_are_counted() {
        let mut delivered = Delivered::logged_in_first();
        assert!(delivered.message(3));
        assert!(delivered.message(5));
        assert_eq!(delivered.caught_up(), Some((2, false)));
        assert!(delivered.message(6));
        delivered.disconnected();
        delivered.logged_in(true);
        // The server sends again what was not acknowledged in time: 5 and 6, then new ones.
        assert!(!delivered.message(5));
        assert!(!delivered.message(6));
        assert!(delivered.message(9));
        assert!(delivered.catching_up());
        assert_eq!(delivered.caught_up(), Some((1, true)));
        assert!(!delivered.catching_up());
        assert_eq!(delivered.caught_up(), None);
        assert_eq!(delivered.forwarded(), 9);
    }

    #[test]
    fn a_keep_alive_follows_a_private_message_only_while_connected() {
        let mut rules = Rules::new(true);
        assert!(rules.keep_alive());
        rules.closed(None, true, 0.5);
        assert!(!rules.keep_alive(), "no keep-alive while the server is gone");
        rules.logged_in();
        assert!(rules.keep_alive());
    }

    #[test]
    fn a_paste_over_the_limits_is_refused_before_it_is_sent() {
        let limits = Limits::default();
        let pasted = "x".repeat(70_000);
        let msg = Request::Msg { to: "bob".into(), text: pasted, send_id: None };
        let why = limit_problem(&msg, &limits).unwrap();
        assert!(why.contains("limited to 4000 characters"), "{why}");
        let hi = Request::Msg { to: "bob".into(), text: "hi".into(), send_id: None };
        assert_eq!(limit_problem(&hi, &limits), None);
        // A frame over the limit that is not a message text: a group with a huge invite list.
        let invite = (0..10_000).map(|i| format!("user{i}")).collect();
        let group = Request::CreateGroup { name: "big".into(), invite };
        let why = limit_problem(&group, &limits).unwrap();
        assert!(why.contains("over the server's limit of 65536"), "{why}");
        let small = Limits { max_frame: 64, max_message_chars: 4000 };
        assert!(limit_problem(&Request::List, &small).is_none());
    }

    #[test]
    fn the_outbox_sends_again_what_was_not_answered_in_order() {
        let mut outbox = Outbox::default();
        let first = outbox.add(msg("one", 1), true).unwrap();
        let second = outbox.add(msg("two", 2), false).unwrap();
        assert_eq!(outbox.take_waiting(), [(second, msg("two", 2))]);
        assert!(outbox.take_waiting().is_empty(), "in flight now");
        assert!(outbox.unanswered(first));
        assert!(outbox.unanswered(second));
        assert_eq!(outbox.take_waiting(), [(first, msg("one", 1)), (second, msg("two", 2))]);
        outbox.answered(first);
        assert_eq!(outbox.len(), 1);
        // One the server never answers is given up after the last of its sends.
        for _ in 2..Outbox::MAX_SENDS {
            assert!(outbox.unanswered(second));
            assert_eq!(outbox.take_waiting().len(), 1);
        }
        assert!(!outbox.unanswered(second), "sent {} times", Outbox::MAX_SENDS);
        assert!(outbox.is_empty());
    }
}
