//! One client session, whatever the front end: the server connection, the private chats
//! and the file transfers, the commands the user types, and every rule about them.
//!
//! A front end logs in once ([`connect`], then [`log_in`], as often as the user needs to
//! type the password), binds its [`DirectSockets`], and hands all of it to
//! [`Session::start`]. From then on it only draws: it passes each [`Command`] to
//! [`Session::run`], shows each [`SessionEvent`] that comes out of [`SessionEvents`], and
//! calls [`Session::shown`] once a message is on screen. The session carries out the
//! commands in the order they were given (one worker task, so their answers come back in
//! that order) while events keep flowing.
//!
//! The rules ([`rules`], pure and unit-tested) are written here once:
//!
//! - When the connection drops or the server announces a shutdown, the session reconnects
//!   by itself ([`rules::Backoff`]: 0.5 s doubling to 30 s, with jitter), logs in again with
//!   the credentials it holds in memory and announces the same direct ports. The server
//!   then sends again whatever was not acknowledged; the session drops every message whose
//!   log id it has passed on already, so each is shown once, and counts the new ones for
//!   the line "reconnected; 3 messages arrived meanwhile". Private chats and transfers are
//!   not touched by any of it.
//! - A message typed while disconnected waits in the [`rules::Outbox`] with the send id it
//!   was given when typed, is shown as pending, and goes out after the login; a message
//!   whose reply was lost with the connection waits the same way and is sent again with
//!   the same id, which the server answers without delivering it twice. Other server
//!   commands are refused while disconnected.
//! - An idle timeout ends the session for good and the private chats with it; so does a
//!   refused login, and with reconnecting turned off any loss of the server. A session
//!   whose server is gone for good keeps going while private chats or transfers run.
//! - A logout ends every private chat and transfer (each peer is told), then the server
//!   session; a close that follows it is the end, never a reason to reconnect.
//! - A private message sent is activity the server does not see: a keep-alive follows it
//!   while connected.
//! - Messages are acknowledged only once the front end has shown them.
//! - A command that breaks the server's limits (message length, frame size, as the server
//!   said at the handshake: [`Client::limits`]; the last ones known while reconnecting) is
//!   refused before it is sent, and the session goes on.
//! - At most [`Outbox::LIMIT`](rules::Outbox::LIMIT) messages wait; one whose every send
//!   lost the connection is given up after [`Outbox::MAX_SENDS`](rules::Outbox::MAX_SENDS).
//!
//! The connection is opened in one place, [`connect`]; the reconnect loop uses it too.

pub mod rules;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, timeout, Instant};

use rules::{route, Delivered, Outbox, Route, Rules, Step};
pub use rules::{Connection, Finish, Limits};

use super::command::{self, Command, FileCommand};
use super::trust::TrustError;
use super::{files, format, Client, ClientError, ClientEvent, Connector, Events, LoginInfo};
use crate::p2p::identity::{Identity, PeerTrust, VerifiedPeers};
use crate::p2p::transfer::{IncomingFile, TransferConfig, TransferEvent, Transfers};
use crate::p2p::{
    ChatConfig, DirectSockets, PrivateChats, PrivateError, PrivateEvent, PrivateEvents,
};
use crate::protocol::{ByeReason, DirectEndpoint, Event, Introduction, LinkId, Reply, Request};

/// How long quitting waits for the server to confirm the logout.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reconnect attempt (connect and log in) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Session events waiting for the front end; while it is full the session waits, and the
/// private chats stop reading their sockets (see [`crate::p2p::chat`]).
pub const EVENT_QUEUE: usize = 64;

/// The name and password the session logs in with, again after every reconnect. `Debug`
/// does not print the password.
#[derive(Clone)]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The password, kept in memory for the session's life.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// How a session runs. `Default` gives what the `confab` client uses against `server`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The server's address and how to secure the connection, for reconnecting.
    pub server: Arc<Connector>,
    /// Reconnect when the connection drops or the server restarts (`--no-reconnect` turns
    /// it off).
    pub reconnect: bool,
    /// Private-chat settings.
    pub chat: ChatConfig,
    /// File-transfer settings.
    pub transfer: TransferConfig,
    /// The client's key pair for direct links, announced at every login.
    pub identity: Identity,
    /// The peers' keys the user has verified (`/verify`).
    pub pins: VerifiedPeers,
}

impl SessionConfig {
    /// The defaults for `server`, with a fresh identity and no verified peers (the `confab`
    /// binary keeps both in its data directory).
    pub fn new(server: Connector) -> Self {
        Self {
            server: Arc::new(server),
            reconnect: true,
            chat: ChatConfig::default(),
            transfer: TransferConfig::default(),
            identity: Identity::generate(),
            pins: VerifiedPeers::in_memory(),
        }
    }
}

/// Everything a front end shows, in the order it happened.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Something the server pushed. Call [`Session::shown`] with a message's id once it is
    /// on screen.
    Server(Event),
    /// The answer to a server command the user gave.
    Replied {
        /// The request (a message's carries the send id it went with).
        request: Request,
        /// The reply, or the error to show.
        result: Result<Reply, String>,
    },
    /// A message waits for the server (disconnected); its [`SessionEvent::Replied`] comes
    /// after the next login.
    Pending {
        /// The message, with its send id.
        request: Request,
    },
    /// Something from a private chat.
    Private(PrivateEvent),
    /// A `/private` message went out (or could not).
    PrivateSent {
        /// The peer.
        to: String,
        /// The text.
        text: String,
        /// The error to show, if it failed.
        result: Result<(), String>,
    },
    /// A `/stopprivate` finished.
    PrivateStopped {
        /// The peer.
        user: String,
        /// The error to show, if it failed.
        result: Result<(), String>,
    },
    /// Something happened to a file transfer.
    Transfer(TransferEvent),
    /// A file command finished: the line to show, or the error.
    FileDone(Result<String, String>),
    /// A line to show (help, say).
    Notice(String),
    /// An error to show; the session goes on.
    Error(String),
    /// The link to the server changed state.
    Connection(Connection),
    /// The messages that waited at a login have all been sent. `arrived` counts the ones
    /// not shown before; `reconnected` is false for the first login.
    CaughtUp {
        /// Messages shown for the first time during the catch-up.
        arrived: u32,
        /// Whether this was a login after a reconnect.
        reconnected: bool,
    },
    /// The session is over; nothing follows.
    Finished(Finish),
}

/// A command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The server refused or could not be asked.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The private chats refused.
    #[error(transparent)]
    Private(#[from] PrivateError),
}

impl CommandError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<crate::protocol::ErrorCode> {
        match self {
            CommandError::Server(e) => e.code(),
            CommandError::Private(_) => None,
        }
    }
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The file-transfer engine did not start.
    #[error("cannot start file transfers: {0}")]
    Transfers(#[source] std::io::Error),
}

/// Opens a connection to `server`, secures it and performs the handshake: the one place the
/// client connects, for the first login and for every reconnect.
pub async fn connect(server: &Connector) -> Result<(Client, Events), ClientError> {
    server.connect().await
}

/// Logs in with `credentials`, announcing the direct `endpoint` (ports and key).
pub async fn log_in(
    client: &Client,
    credentials: &Credentials,
    endpoint: DirectEndpoint,
) -> Result<LoginInfo, ClientError> {
    client.login_with(&credentials.username, &credentials.password, Some(endpoint)).await
}

/// Asks `user`, through the server, for a private chat.
pub async fn request_private(
    client: &Client,
    chats: &PrivateChats,
    user: &str,
) -> Result<(), CommandError> {
    if chats.is_open(user) {
        return Err(PrivateError::AlreadyOpen(user.to_owned()).into());
    }
    client.start_private(user).await?;
    Ok(())
}

/// Accepts `from`'s private chat request: reserves the listener's slot for `from` first
/// (so that their connection waits for the token if it comes before the server's answer
/// is read), asks the server, and fills the slot with the token it gives.
pub async fn accept_private(
    client: &Client,
    chats: &PrivateChats,
    from: &str,
) -> Result<Introduction, CommandError> {
    let expected = chats.expect(from)?;
    let intro = client.accept_private(from).await?;
    expected.introduced(&intro)?;
    Ok(intro)
}

/// `/verify USER [confirm]`: the lines that show the safety code of the chat with `user`,
/// or, with `confirm`, pin `user`'s key and say so.
pub fn verify(
    chats: &PrivateChats,
    user: &str,
    confirm: bool,
) -> Result<Vec<String>, PrivateError> {
    let name = format::sanitize(user);
    if confirm {
        let code = chats.verify(user)?;
        return Ok(vec![format!(
            "* {name}'s key is verified (safety code {code}); a private chat with any other key \
             will be flagged"
        )]);
    }
    let (code, trust) = chats.safety_code(user)?;
    let mut lines = vec![format!("* safety code of your private chat with {name}: {code}")];
    lines.push(match trust {
        PeerTrust::Verified => format!("  {name}'s key is the one you verified"),
        PeerTrust::Unverified => format!(
            "  compare it with the code {name} sees (aloud, or in person); if they match, type \
             /verify {name} confirm"
        ),
        PeerTrust::Changed { .. } => format!(
            "  WARNING: this is not the key you verified for {name}; confirm it only after \
             comparing the code again (/verify {name} confirm)"
        ),
    });
    Ok(lines)
}

/// The front end's handle on a running session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    inputs: mpsc::UnboundedSender<Input>,
    shown: Arc<Shown>,
}

/// The session's events for the front end. (Dropping every [`Session`] handle logs out.)
pub struct SessionEvents {
    rx: mpsc::Receiver<SessionEvent>,
}

impl SessionEvents {
    /// The next event; `None` once the session has finished.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        self.rx.recv().await
    }
}

/// What the front end has shown: the highest message id.
#[derive(Default)]
struct Shown {
    id: AtomicU64,
    wake: Notify,
}

/// What the front end asks of the session.
enum Input {
    Run(Command),
    LogoutWhenCaughtUp,
}

impl Session {
    /// Runs the session of the user logged in on `client` (`info` is the login's answer),
    /// with the direct `sockets` whose ports that login announced with the key of
    /// `config.identity`. Must be called inside a tokio runtime.
    pub fn start(
        config: SessionConfig,
        credentials: Credentials,
        (client, events): (Client, Events),
        sockets: DirectSockets,
        info: &LoginInfo,
    ) -> Result<(Session, SessionEvents), StartError> {
        let endpoint = sockets.endpoint(&config.identity);
        let DirectSockets { tcp, udp, .. } = sockets;
        let (transfer_tx, transfer_events) = mpsc::unbounded_channel();
        let transfers = udp
            .into_std()
            .and_then(|udp| {
                let identity = config.identity.clone();
                Transfers::start(
                    udp,
                    &info.username,
                    identity,
                    config.transfer.clone(),
                    move |event| {
                        let _ = transfer_tx.send(event);
                    },
                )
            })
            .map_err(StartError::Transfers)?;
        if let Some(binding) = info.udp {
            transfers.rendezvous(client.udp_endpoint(&binding), binding);
        }
        let (relay_tx, relayed) = mpsc::unbounded_channel();
        let (chats, private) = PrivateChats::start(
            &info.username,
            config.identity.clone(),
            config.pins.clone(),
            tcp,
            config.chat.clone(),
            relay_tx,
        );
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let (out, rx) = mpsc::channel(EVENT_QUEUE);
        let (done_tx, done) = mpsc::unbounded_channel();
        let jobs = spawn_worker(chats.clone(), transfers.clone(), config.pins.clone(), done_tx);
        let shown = Arc::new(Shown::default());
        let driver = Driver {
            rules: Rules::new(config.reconnect),
            limits: client.limits(),
            config,
            credentials,
            endpoint,
            client: Some(client),
            events: Some(events),
            chats,
            transfers,
            outbox: Outbox::default(),
            delivered: Delivered::logged_in_first(),
            logout_when_caught_up: false,
            logout_after_shown: None,
            retry_at: None,
            attempt: None,
            out,
            jobs,
            shown: shown.clone(),
            busy_transfers: 0,
            finish_after_logout: None,
            logins: 1,
        };
        tokio::spawn(driver.run(inputs_rx, (private, relayed), transfer_events, done));
        Ok((Session { inputs, shown }, SessionEvents { rx }))
    }

    /// Carries out `command`; what comes of it arrives as events.
    pub fn run(&self, command: Command) {
        let _ = self.inputs.send(Input::Run(command));
    }

    /// Parses and carries out one typed line; a blank line does nothing, a line that does
    /// not parse is returned as the error to show.
    pub fn run_line(&self, line: &str) -> Result<(), command::ParseError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        self.run(command::parse(line)?);
        Ok(())
    }

    /// Logs out, ending every private chat and transfer.
    pub fn logout(&self) {
        self.run(Command::Server(Request::Logout));
    }

    /// Logs out once the messages that waited at login have all been shown (line mode's
    /// end of input).
    pub fn logout_when_caught_up(&self) {
        let _ = self.inputs.send(Input::LogoutWhenCaughtUp);
    }

    /// Tells the session that the message with log id `id` is on screen: it is
    /// acknowledged to the server, soon and cumulatively.
    pub fn shown(&self, id: u64) {
        if self.shown.id.fetch_max(id, Ordering::AcqRel) < id {
            self.shown.wake.notify_one();
        }
    }
}

/// A job for the worker, carried out in order.
enum Job {
    /// A server request on the connection of login number `login`.
    Server {
        client: Client,
        login: u64,
        request: Request,
        seq: Option<u64>,
    },
    Private {
        client: Option<Client>,
        to: String,
        text: String,
    },
    Stop {
        user: String,
    },
    File {
        client: Option<Client>,
        command: FileCommand,
    },
    Logout {
        client: Option<Client>,
    },
}

/// A job's outcome, back to the session.
enum Done {
    Server {
        login: u64,
        request: Request,
        seq: Option<u64>,
        result: Result<Reply, CommandError>,
    },
    Private {
        to: String,
        text: String,
        result: Result<(), String>,
    },
    Stopped {
        user: String,
        result: Result<(), String>,
    },
    File(Result<String, String>),
    /// The logout is done; `confirmed` if the server answered it.
    LoggedOut {
        confirmed: bool,
    },
}

type Attempt = oneshot::Receiver<Result<(Client, Events, LoginInfo), ClientError>>;

/// The session task: owns the state, reacts to everything.
struct Driver {
    config: SessionConfig,
    /// The server's limits, from the latest handshake.
    limits: Limits,
    credentials: Credentials,
    /// What every login announces: the direct ports and the key.
    endpoint: DirectEndpoint,
    rules: Rules,
    client: Option<Client>,
    events: Option<Events>,
    chats: PrivateChats,
    transfers: Transfers,
    outbox: Outbox,
    delivered: Delivered,
    logout_when_caught_up: bool,
    /// Log out once the front end has shown the message with this id.
    logout_after_shown: Option<u64>,
    retry_at: Option<Instant>,
    attempt: Option<Attempt>,
    out: mpsc::Sender<SessionEvent>,
    jobs: mpsc::UnboundedSender<Job>,
    shown: Arc<Shown>,
    /// Transfers started and not yet ended.
    busy_transfers: usize,
    /// How a logout ends a session whose server is gone for good.
    finish_after_logout: Option<Finish>,
    /// Logins so far, the first included: tells a request's connection from the current one.
    logins: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        (mut private, mut relayed): (PrivateEvents, mpsc::UnboundedReceiver<(LinkId, Vec<u8>)>),
        mut transfer_events: mpsc::UnboundedReceiver<TransferEvent>,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) {
        let finish = loop {
            let step = tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Run(command)) => self.command(command).await,
                    Some(Input::LogoutWhenCaughtUp) => {
                        self.logout_when_caught_up = true;
                        if !self.delivered.catching_up() || !self.rules.connected() {
                            self.logout_once_shown().await
                        } else {
                            None
                        }
                    }
                    // Every handle is gone: nobody is left to show anything.
                    None => self.command(Command::Server(Request::Logout)).await,
                },
                event = next_server_event(&mut self.events) => self.server_event(event).await,
                Some(event) = private.next() => self.private_event(event).await,
                // A relayed chat's bytes go out on the connection of the moment; with none,
                // they are lost like the relay itself (`relays_lost`).
                Some((link, data)) = relayed.recv() => {
                    if let Some(client) = &self.client {
                        client.relay_chat(link, data);
                    }
                    None
                }
                Some(event) = transfer_events.recv() => self.transfer_event(event).await,
                Some(outcome) = done.recv() => self.outcome(outcome).await,
                _ = sleep_until(self.retry_at.unwrap_or_else(Instant::now)),
                    if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.attempt = Some(self.start_attempt());
                    None
                }
                attempt = wait_attempt(&mut self.attempt) => self.attempted(attempt).await,
                _ = self.shown.wake.notified() => {
                    if let Some(client) = &self.client {
                        client.ack(self.shown.id.load(Ordering::Acquire));
                    }
                    match self.logout_after_shown {
                        Some(_) => self.logout_once_shown().await,
                        None => None,
                    }
                }
            };
            if let Some(finish) = step {
                break finish;
            }
        };
        // The last acknowledgement goes with the client's close.
        if let Some(client) = &self.client {
            client.ack(self.shown.id.load(Ordering::Acquire));
        }
        self.emit(SessionEvent::Finished(finish)).await;
    }

    async fn emit(&self, event: SessionEvent) {
        // A front end that has gone away is not an error.
        let _ = self.out.send(event).await;
    }

    fn links_busy(&self) -> bool {
        !self.chats.is_empty() || self.busy_transfers > 0
    }

    /// Carries out a command from the front end; `Some` when the session is over.
    async fn command(&mut self, command: Command) -> Option<Finish> {
        if self.rules.logging_out() {
            return None; // typed after the logout: nothing is left to do it with
        }
        let request = match command {
            Command::Server(request) => request,
            Command::Help { topic } => {
                match command::help(topic.as_deref()) {
                    Ok(lines) => {
                        for line in lines {
                            self.emit(SessionEvent::Notice(line)).await;
                        }
                    }
                    Err(e) => self.emit(SessionEvent::Error(e.to_string())).await,
                }
                return None;
            }
            Command::Private { to, text } => {
                let client = self.client.clone().filter(|_| self.rules.keep_alive());
                let _ = self.jobs.send(Job::Private { client, to, text });
                return None;
            }
            Command::StopPrivate { user } => {
                let _ = self.jobs.send(Job::Stop { user });
                return None;
            }
            Command::Peers => {
                let lines = format::peers(&self.chats.links(), &self.transfers.links());
                for line in lines {
                    self.emit(SessionEvent::Notice(line)).await;
                }
                return None;
            }
            Command::Verify { user, confirm } => {
                match verify(&self.chats, &user, confirm) {
                    Ok(lines) => {
                        for line in lines {
                            self.emit(SessionEvent::Notice(line)).await;
                        }
                    }
                    Err(e) => self.emit(SessionEvent::Error(e.to_string())).await,
                }
                return None;
            }
            Command::File(FileCommand::Send { .. }) if !self.rules.connected() => {
                let why = "not connected to the server: it introduces you to the receiver";
                self.emit(SessionEvent::Error(why.to_string())).await;
                return None;
            }
            Command::File(command) => {
                let client = self.client.clone().filter(|_| self.rules.connected());
                let _ = self.jobs.send(Job::File { client, command });
                return None;
            }
        };
        if request == Request::Logout {
            return self.logout().await;
        }
        if let Some(why) = rules::limit_problem(&request, &self.limits) {
            self.emit(SessionEvent::Error(why.to_string())).await;
            return None;
        }
        let request = with_send_id(request);
        match route(&request, self.rules.connection()) {
            Route::Refuse(why) => self.emit(SessionEvent::Error(why.to_string())).await,
            Route::Queue => match self.outbox.add(request.clone(), false) {
                Some(_) => self.emit(SessionEvent::Pending { request }).await,
                None => {
                    let why = "too many messages wait for the server already; not queued";
                    self.emit(SessionEvent::Error(why.to_string())).await;
                }
            },
            Route::Send => {
                let queueable = matches!(request, Request::Msg { .. } | Request::GroupMsg { .. });
                let seq = if queueable { self.outbox.add(request.clone(), true) } else { None };
                if queueable && seq.is_none() {
                    let why = "too many messages wait for the server already; not sent";
                    self.emit(SessionEvent::Error(why.to_string())).await;
                    return None;
                }
                match self.client.clone() {
                    Some(client) => {
                        let login = self.logins;
                        let _ = self.jobs.send(Job::Server { client, login, request, seq });
                    }
                    // Not reached: connected means a client. It waits for the next login.
                    None => seq.into_iter().for_each(|seq| {
                        self.outbox.unanswered(seq);
                    }),
                }
            }
        }
        None
    }

    /// Logs out once the front end has shown every message passed to it (so that their
    /// acknowledgement goes before the logout); waits for that otherwise.
    async fn logout_once_shown(&mut self) -> Option<Finish> {
        let forwarded = self.delivered.forwarded();
        if self.shown.id.load(Ordering::Acquire) < forwarded {
            self.logout_after_shown = Some(forwarded);
            return None;
        }
        self.logout_after_shown = None;
        self.command(Command::Server(Request::Logout)).await
    }

    /// `/logout`: through the worker when connected, so that it follows every command
    /// typed before it; at once otherwise.
    async fn logout(&mut self) -> Option<Finish> {
        if self.rules.logging_out() {
            return None;
        }
        let connected = self.rules.connected();
        let finish = self.rules.logout_finish();
        self.rules.logout();
        self.retry_at = None;
        self.attempt = None;
        let unsent = self.outbox.len();
        if !connected && unsent > 0 {
            let line = format!("{unsent} message(s) waiting for the server were not sent");
            self.emit(SessionEvent::Error(line)).await;
        }
        let client = self.client.clone().filter(|_| connected);
        if let Some(client) = &client {
            // What has been shown is acknowledged before the logout goes.
            client.ack(self.shown.id.load(Ordering::Acquire));
        }
        let _ = self.jobs.send(Job::Logout { client });
        // The worker answers `LoggedOut` once the chats are closed and the server has
        // answered; a session without the server keeps its exit code.
        if finish != Finish::LoggedOut {
            self.finish_after_logout = Some(finish);
        }
        None
    }
}

impl Driver {
    /// Shows a server event and acts on it.
    async fn server_event(&mut self, event: Option<ClientEvent>) -> Option<Finish> {
        let event = match event {
            // A relayed chat's bytes are the chat's business, not the front end's.
            Some(ClientEvent::Server(Event::RelayedChat { link, data })) => {
                self.chats.relayed(link, data);
                return None;
            }
            Some(ClientEvent::Server(event)) => event,
            Some(ClientEvent::Closed { error }) => return self.closed(error).await,
            None => return self.closed(None).await,
        };
        if let Some(id) = event.message_id() {
            // Shown already, on this connection or an earlier one: its acknowledgement
            // had not reached the server. (It goes with the next one.)
            if !self.delivered.message(id) {
                return None;
            }
        }
        let step = match &event {
            Event::CaughtUp => {
                if let Some((arrived, reconnected)) = self.delivered.caught_up() {
                    self.emit(SessionEvent::CaughtUp { arrived, reconnected }).await;
                }
                if self.logout_when_caught_up {
                    return self.logout_once_shown().await;
                }
                return None;
            }
            Event::PrivateAccepted(intro) => {
                self.chats.connect(intro.clone());
                Step::Nothing
            }
            Event::FileOffer { from, name, size } => {
                if files::key_changed(&self.config.pins, &from.peer, &from.key) {
                    let refused = files::FileError::OfferKeyChanged {
                        from: format::sanitize(&from.peer).into_owned(),
                        name: format::sanitize(name).into_owned(),
                    };
                    self.emit(SessionEvent::Error(refused.to_string())).await;
                    // Answered with a decline, so the sender hears at once.
                    self.transfers.refuse(IncomingFile::new(from, name, *size));
                    return None;
                }
                self.transfers.expect(IncomingFile::new(from, name, *size));
                Step::Nothing
            }
            Event::SessionEnded { reason } => self.rules.server_notice(*reason),
            _ => Step::Nothing,
        };
        self.emit(SessionEvent::Server(event)).await;
        self.step(step).await
    }

    /// The server connection closed.
    async fn closed(&mut self, error: Option<String>) -> Option<Finish> {
        self.client = None;
        self.events = None;
        self.chats.relays_lost();
        self.delivered.disconnected();
        if self.rules.logging_out() {
            // The worker finishes the logout and says so.
            return None;
        }
        let step = self.rules.closed(error.as_deref(), self.links_busy(), rand::random());
        self.step(step).await
    }

    async fn step(&mut self, step: Step) -> Option<Finish> {
        match step {
            Step::Nothing => None,
            Step::CloseChats(reason) => {
                self.chats.close_all(reason).await;
                None
            }
            Step::Retry(state) => {
                if let Connection::Reconnecting { retry_in, .. } = &state {
                    self.retry_at = Some(Instant::now() + *retry_in);
                }
                self.emit(SessionEvent::Connection(state)).await;
                None
            }
            Step::Linger(state) => {
                self.emit(SessionEvent::Connection(state)).await;
                self.emit(SessionEvent::Notice(format::server_gone())).await;
                None
            }
            Step::Finish(finish) => {
                if finish != Finish::LoggedOut {
                    self.emit(SessionEvent::Connection(self.rules.connection().clone())).await;
                }
                Some(finish)
            }
        }
    }

    /// Starts one reconnect attempt: connect, log in.
    fn start_attempt(&self) -> Attempt {
        let (tx, rx) = oneshot::channel();
        let server = self.config.server.clone();
        let credentials = self.credentials.clone();
        let endpoint = self.endpoint;
        tokio::spawn(async move {
            let attempt = async {
                let (client, events) = connect(&server).await?;
                let info = log_in(&client, &credentials, endpoint).await?;
                Ok((client, events, info))
            };
            let result = timeout(ATTEMPT_TIMEOUT, attempt).await.unwrap_or_else(|_| {
                let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
                Err(ClientError::Connect(timed_out))
            });
            let _ = tx.send(result);
        });
        rx
    }

    async fn attempted(
        &mut self,
        result: Result<(Client, Events, LoginInfo), ClientError>,
    ) -> Option<Finish> {
        let (client, events, info) = match result {
            Ok(logged_in) => logged_in,
            Err(ClientError::Trust(e)) if !matches!(e, TrustError::Handshake { .. }) => {
                let step = self.rules.untrusted(&e.to_string());
                return self.step(step).await;
            }
            Err(e) => {
                let step = self.rules.attempt_failed(&e.to_string(), e.code(), rand::random());
                return self.step(step).await;
            }
        };
        tracing::info!(user = info.username, waiting = info.offline_messages, "logged in again");
        self.rules.logged_in();
        self.logins += 1;
        self.limits = client.limits();
        if let Some(binding) = info.udp {
            self.transfers.rendezvous(client.udp_endpoint(&binding), binding);
        }
        client.ack(self.shown.id.load(Ordering::Acquire));
        self.client = Some(client);
        self.events = Some(events);
        self.delivered.logged_in(true);
        self.emit(SessionEvent::Connection(Connection::Connected)).await;
        self.send_outbox();
        None
    }

    /// Sends every message that waits for the server, oldest first.
    fn send_outbox(&mut self) {
        let Some(client) = self.client.clone().filter(|_| self.rules.connected()) else {
            return;
        };
        let login = self.logins;
        for (seq, request) in self.outbox.take_waiting() {
            let job = Job::Server { client: client.clone(), login, request, seq: Some(seq) };
            let _ = self.jobs.send(job);
        }
    }

    async fn private_event(&mut self, event: PrivateEvent) -> Option<Finish> {
        let ended = matches!(event, PrivateEvent::Closed { .. } | PrivateEvent::Failed { .. });
        self.emit(SessionEvent::Private(event)).await;
        if ended {
            return self.maybe_idle().await;
        }
        None
    }

    async fn transfer_event(&mut self, event: TransferEvent) -> Option<Finish> {
        let ended = matches!(
            event,
            TransferEvent::Sent { .. }
                | TransferEvent::Received { .. }
                | TransferEvent::Failed { .. }
        );
        match &event {
            TransferEvent::Started { .. } => self.busy_transfers += 1,
            _ if ended => self.busy_transfers = self.busy_transfers.saturating_sub(1),
            _ => {}
        }
        self.emit(SessionEvent::Transfer(event)).await;
        if ended {
            return self.maybe_idle().await;
        }
        None
    }

    /// With the server gone for good, the last private chat or transfer ending ends the
    /// session.
    async fn maybe_idle(&mut self) -> Option<Finish> {
        if self.links_busy() {
            return None;
        }
        let finish = self.rules.links_idle()?;
        let line = "* no private chat or transfer is left and the server is gone; bye";
        self.emit(SessionEvent::Notice(line.into())).await;
        Some(finish)
    }

    async fn outcome(&mut self, outcome: Done) -> Option<Finish> {
        match outcome {
            Done::Server { login, request, seq, result } => {
                let lost = matches!(result, Err(CommandError::Server(ClientError::Disconnected)));
                if let Some(seq) = seq {
                    let again = lost && self.config.reconnect && !self.rules.logging_out();
                    if again && !self.outbox.unanswered(seq) {
                        let why = format!(
                            "not sent: the connection was lost each of the {} times it was sent",
                            Outbox::MAX_SENDS
                        );
                        self.emit(SessionEvent::Replied { request, result: Err(why) }).await;
                        return None;
                    }
                    if again {
                        // Sent again after the next login, with the same send id (at once
                        // if that login has happened already).
                        self.emit(SessionEvent::Pending { request }).await;
                        if login != self.logins {
                            self.send_outbox();
                        }
                        return None;
                    }
                    self.outbox.answered(seq);
                }
                let result = result.map_err(|e| e.to_string());
                self.emit(SessionEvent::Replied { request, result }).await;
                None
            }
            Done::Private { to, text, result } => {
                self.emit(SessionEvent::PrivateSent { to, text, result }).await;
                None
            }
            Done::Stopped { user, result } => {
                let ok = result.is_ok();
                self.emit(SessionEvent::PrivateStopped { user, result }).await;
                if ok {
                    return self.maybe_idle().await;
                }
                None
            }
            Done::File(result) => {
                self.emit(SessionEvent::FileDone(result)).await;
                None
            }
            Done::LoggedOut { confirmed } => {
                let line = if confirmed {
                    format::reply(&Request::Logout, &Reply::LoggedOut).join(" ")
                } else {
                    "private chats and transfers ended; bye".to_owned()
                };
                self.emit(SessionEvent::Notice(line)).await;
                Some(self.finish_after_logout.clone().unwrap_or(Finish::LoggedOut))
            }
        }
    }
}

/// The next event of the server connection, if there is one; pending forever otherwise.
async fn next_server_event(events: &mut Option<Events>) -> Option<ClientEvent> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// The outcome of the reconnect attempt under way; pending forever if none is.
async fn wait_attempt(
    attempt: &mut Option<Attempt>,
) -> Result<(Client, Events, LoginInfo), ClientError> {
    let Some(rx) = attempt else { return std::future::pending().await };
    let result = rx.await.unwrap_or(Err(ClientError::Disconnected));
    *attempt = None;
    result
}

/// `request` with a send id, if it is a message without one: the id it keeps for every
/// resend.
fn with_send_id(mut request: Request) -> Request {
    if let Request::Msg { send_id: id @ None, .. } | Request::GroupMsg { send_id: id @ None, .. } =
        &mut request
    {
        *id = Some(rand::random());
    }
    request
}

/// Carries out jobs one at a time, in order, and reports each outcome.
fn spawn_worker(
    chats: PrivateChats,
    transfers: Transfers,
    pins: VerifiedPeers,
    done: mpsc::UnboundedSender<Done>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let outcome = match job {
                Job::Server { client, login, request, seq } => {
                    let result = server_request(&client, &chats, request.clone()).await;
                    Done::Server { login, request, seq, result }
                }
                Job::Private { client, to, text } => {
                    let result = chats.send(&to, &text).await.map_err(|e| e.to_string());
                    if let (Ok(()), Some(client)) = (&result, client) {
                        // The server does not see private messages, but they are activity:
                        // without this, chatting privately would end in an idle timeout.
                        tokio::spawn(async move { client.keep_alive().await });
                    }
                    Done::Private { to, text, result }
                }
                Job::Stop { user } => {
                    let result = chats.stop(&user).await.map_err(|e| e.to_string());
                    Done::Stopped { user, result }
                }
                Job::File { client, command } => {
                    let result = files::run(client.as_ref(), &transfers, &pins, command).await;
                    Done::File(result.map_err(|e| e.to_string()))
                }
                Job::Logout { client } => {
                    // Logging out ends every private chat and transfer; each peer is told.
                    chats.close_all(ByeReason::LoggedOut).await;
                    for transfer in transfers.list() {
                        transfers.cancel(transfer.id);
                    }
                    let confirmed = match client {
                        Some(client) => {
                            matches!(timeout(LOGOUT_TIMEOUT, client.logout()).await, Ok(Ok(())))
                        }
                        None => false,
                    };
                    Done::LoggedOut { confirmed }
                }
            };
            if done.send(outcome).is_err() {
                break;
            }
        }
    });
    tx
}

/// A server request; asking for and accepting a private chat also keep the chats' tokens.
async fn server_request(
    client: &Client,
    chats: &PrivateChats,
    request: Request,
) -> Result<Reply, CommandError> {
    match request {
        Request::StartPrivate { user } => {
            request_private(client, chats, &user).await.map(|()| Reply::Done)
        }
        Request::AcceptPrivate { user } => accept_private(client, chats, &user)
            .await
            .map(|intro| Reply::Introduced(Box::new(intro))),
        other => Ok(client.request(other).await?),
    }
}
