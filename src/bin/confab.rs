//! `confab`: the terminal client.
//!
//! On a terminal it opens the full-screen interface (`confab::client::tui`), logging to a
//! file. With `--plain`, or when stdin or stdout is not a terminal, it runs in line mode:
//! each input line is a command; each event or reply is printed as one line at once. When
//! stdin is a terminal, line mode reads through a line editor whose external printer puts
//! incoming lines above the prompt, so a half-typed line is never broken.
//!
//! Before logging in, the client binds its direct sockets (private-chat listener and
//! file-transfer UDP port) on the local address of its server connection and announces their
//! ports. Private chats run beside the server connection and outlive it: when the server goes
//! away with chats open, the client says so and keeps going until the user quits or the last
//! chat ends. File transfers (`/p2pvideo`) run on the UDP socket the same way; in line mode
//! each one gets a progress bar (bytes, rate, ETA) on stderr while it runs.
//!
//! Every message is acknowledged to the server once its line is printed and stdout flushed;
//! at the end of input the client first waits until the messages that waited at login have
//! all been printed (the server's "caught up"), so `confab < /dev/null` prints them all.
//!
//! Exit codes: 0 after logout (or end of input), 1 other errors, 2 bad usage, 3 login refused,
//! 4 account locked, 5 already logged in elsewhere, 6 server unreachable or connection lost,
//! 7 session ended by the server (idle timeout, shutdown), 8 the server's certificate was not
//! trusted (or plaintext refused). A client that private chats kept
//! running after the server went away exits with 6 or 7 all the same.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use confab::client::command::{self, Command, FileCommand};
use confab::client::trust::{KnownServers, TrustError, Trusted};
use confab::client::tui::{self, Links};
use confab::client::{
    files, format, Client, ClientError, ClientEvent, Connector, Events, LoginInfo, Security, Trust,
};
use confab::p2p::transfer::{
    IncomingFile, SenderConfig, TransferConfig, TransferEvent, TransferId, Transfers,
};
use confab::p2p::{
    ChatConfig, DirectSockets, PrivateChats, PrivateError, PrivateEvent, PrivateEvents,
};
use confab::protocol::{ByeReason, EndReason, ErrorCode, Event, Reply, Request};
use confab::tls::Fingerprint;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_LOGIN_REFUSED: u8 = 3;
const EXIT_LOCKED: u8 = 4;
const EXIT_ALREADY_LOGGED_IN: u8 = 5;
const EXIT_CONNECTION: u8 = 6;
const EXIT_ENDED_BY_SERVER: u8 = 7;
const EXIT_UNTRUSTED: u8 = 8;

/// The Confab terminal client.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "The password comes from CONFAB_PASSWORD, --password-file, or a prompt."
)]
struct Args {
    /// Server address.
    #[arg(long, env = "CONFAB_SERVER", default_value = "127.0.0.1:4000")]
    server: String,
    /// Username (asked for if missing and stdin is a terminal).
    #[arg(long, short, env = "CONFAB_USER")]
    user: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Line mode: one command per input line, one event per output line. The default when
    /// stdin or stdout is not a terminal; otherwise the full-screen interface opens.
    #[arg(long)]
    plain: bool,
    /// Where the full-screen interface writes its log (default: confab.log in the data dir).
    #[arg(long, env = "CONFAB_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// TCP port to take private chats on (0: any free port).
    #[arg(long, env = "CONFAB_P2P_PORT", default_value_t = 0)]
    p2p_port: u16,
    /// UDP port for file transfers (0: any free port).
    #[arg(long, env = "CONFAB_UDP_PORT", default_value_t = 0)]
    udp_port: u16,
    /// Where received files are saved (as SENDER_FILE).
    #[arg(long, env = "CONFAB_DOWNLOAD_DIR", default_value = ".")]
    download_dir: PathBuf,
    /// Accept every file offer without asking.
    #[arg(long, env = "CONFAB_AUTO_ACCEPT")]
    auto_accept: bool,
    /// File bytes per UDP datagram when sending (the default fits a 1500-byte MTU).
    #[arg(long, env = "CONFAB_CHUNK_SIZE", default_value_t = confab::p2p::transfer::wire::DEFAULT_CHUNK_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(confab::p2p::transfer::wire::MAX_CHUNK_SIZE)))]
    chunk_size: u32,
    /// Talk to the server without TLS (benchmarks, debugging); only to a loopback address.
    #[arg(long, env = "CONFAB_PLAINTEXT", conflicts_with_all = ["ca", "fingerprint"])]
    plaintext: bool,
    /// Trust only server certificates signed by a CA in this PEM file (default: the system's
    /// roots, else trust on first use).
    #[arg(long, env = "CONFAB_CA", conflicts_with = "fingerprint")]
    ca: Option<PathBuf>,
    /// Trust only the server certificate with this fingerprint (SHA256:...).
    #[arg(long, env = "CONFAB_FINGERPRINT")]
    fingerprint: Option<Fingerprint>,
    /// Where the client keeps known_servers (default: the user's data dir).
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let interactive = std::io::stdin().is_terminal();
    let full_screen = !args.plain && interactive && std::io::stdout().is_terminal();
    if let Err(e) = init_tracing(full_screen.then(|| log_path(&args))) {
        eprintln!("{}", format::error(e));
        return ExitCode::from(EXIT_ERROR);
    }
    let (user, password) = match credentials(&args, interactive) {
        Ok(pair) => pair,
        Err(message) => {
            eprintln!("{}", format::error(message));
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let (client, events) = match connector(&args).connect().await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{}", format::error(format!("{e} ({})", args.server)));
            return ExitCode::from(match e {
                ClientError::Trust(TrustError::Handshake { .. }) => EXIT_CONNECTION,
                ClientError::Trust(_) => EXIT_UNTRUSTED,
                e if e.code().is_some() => EXIT_ERROR,
                _ => EXIT_CONNECTION,
            });
        }
    };
    let trust_notice = first_use_notice(&args, &client);
    if let Some(notice) = &trust_notice {
        eprintln!("{notice}");
    }
    let sockets = DirectSockets::bind(client.local_addr().ip(), args.p2p_port, args.udp_port).await;
    let sockets = match sockets {
        Ok(sockets) => sockets,
        Err(e) => {
            eprintln!("{}", format::error(e));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let info = match client.login_with(&user, &password, Some(sockets.ports())).await {
        Ok(info) => info,
        Err(e) => {
            eprintln!("{}", format::error(&e));
            return ExitCode::from(match e.code() {
                Some(ErrorCode::InvalidCredentials | ErrorCode::InvalidArgument) => {
                    EXIT_LOGIN_REFUSED
                }
                Some(ErrorCode::LockedOut { .. }) => EXIT_LOCKED,
                Some(ErrorCode::AlreadyLoggedIn) => EXIT_ALREADY_LOGGED_IN,
                Some(_) => EXIT_ERROR,
                None => EXIT_CONNECTION,
            });
        }
    };
    let DirectSockets { tcp, udp, .. } = sockets;
    let (chats, private) = PrivateChats::start(&info.username, tcp, ChatConfig::default());
    let (transfer_tx, transfer_events) = mpsc::unbounded_channel();
    let config = TransferConfig {
        download_dir: args.download_dir.clone(),
        auto_accept: args.auto_accept,
        sender: SenderConfig { chunk_size: args.chunk_size, ..SenderConfig::default() },
        ..TransferConfig::default()
    };
    let started = udp.into_std().and_then(|udp| {
        Transfers::start(udp, config, move |event| {
            let _ = transfer_tx.send(event);
        })
    });
    let transfers = match started {
        Ok(transfers) => transfers,
        Err(e) => {
            eprintln!("{}", format::error(format!("cannot start file transfers: {e}")));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    if full_screen {
        let links = Links { client, events, chats, private, transfers, transfer_events };
        return full_screen_client(&args.server, info, links, trust_notice).await;
    }
    let mut out = Output::new(interactive);
    out.line(format::login(&info));
    let input = spawn_input(&mut out);
    let mut app = App {
        client,
        chats,
        transfers,
        bars: Bars::default(),
        out,
        ended_by_server: false,
        server_gone: None,
        caught_up: false,
        input_done: false,
    };
    let code = app.run(events, private, transfer_events, input).await;
    app.out.restore_terminal();
    ExitCode::from(code)
}

/// Runs the full-screen interface until the user quits; the terminal is restored on every
/// way out, a panic included (`ratatui::init` installs a hook for that).
async fn full_screen_client(
    server: &str,
    info: LoginInfo,
    links: Links,
    trust_notice: Option<String>,
) -> ExitCode {
    let online = links.client.list().await.unwrap_or_default();
    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let mut app = tui::App::new(server, &info.username, online, size);
    app.notice(format::login(&info));
    app.notice("/help lists the commands; PgUp/PgDn scroll; Tab completes; Ctrl-C quits");
    if let Some(notice) = trust_notice {
        app.notice(notice);
    }
    let mut terminal = ratatui::init();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let result = tui::run(&mut terminal, links, app).await;
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    ratatui::restore();
    match result {
        Ok(app) => ExitCode::from(match app.connection {
            tui::Connection::Connected => 0,
            tui::Connection::Ended(_) => EXIT_ENDED_BY_SERVER,
            tui::Connection::Lost(_) => EXIT_CONNECTION,
        }),
        Err(e) => {
            eprintln!("{}", format::error(format!("terminal: {e}")));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs to stderr in line mode, and to `file` under the full-screen interface, which owns
/// the screen. The level comes from `RUST_LOG` (default `warn`).
fn init_tracing(file: Option<PathBuf>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Some(path) = file else {
        builder.with_writer(std::io::stderr).init();
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
    builder.with_ansi(false).with_writer(std::sync::Mutex::new(log)).init();
    Ok(())
}

/// `--log-file`, or `confab.log` in the user's data directory.
fn log_path(args: &Args) -> PathBuf {
    args.log_file.clone().unwrap_or_else(|| {
        directories::ProjectDirs::from("", "", "confab")
            .map(|d| d.data_local_dir().join("confab.log"))
            .unwrap_or_else(|| PathBuf::from("confab.log"))
    })
}

/// The server connection's settings from the flags: TLS unless --plaintext.
fn connector(args: &Args) -> Connector {
    let trust = match (&args.fingerprint, &args.ca) {
        _ if args.plaintext => return Connector::new(&args.server, Security::Plaintext),
        (Some(fingerprint), _) => Trust::Pinned(*fingerprint),
        (None, Some(ca)) => Trust::Ca(ca.clone()),
        (None, None) => Trust::FirstUse(known_servers(args)),
    };
    Connector::new(&args.server, Security::Tls(trust))
}

/// What to tell the user when the server's certificate was trusted on first use.
fn first_use_notice(args: &Args, client: &Client) -> Option<String> {
    let Some(Trusted::FirstUse(fingerprint)) = client.trusted() else { return None };
    Some(format!(
        "{}: first connection; trusting its certificate {fingerprint}, now remembered in {}",
        args.server,
        known_servers(args).path().display()
    ))
}

/// known_servers in --data-dir, or in the user's data directory.
fn known_servers(args: &Args) -> KnownServers {
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        directories::ProjectDirs::from("", "", "confab")
            .map(|d| d.data_dir().to_owned())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    KnownServers::in_dir(&dir)
}

/// The running client: the server connection, the private chats and the screen.
struct App {
    client: Client,
    chats: PrivateChats,
    transfers: Transfers,
    bars: Bars,
    out: Output,
    /// The server said why it ended the session before closing it.
    ended_by_server: bool,
    /// Set when the server connection is gone but private chats kept the client running:
    /// the exit code for when the user quits.
    server_gone: Option<u8>,
    /// The messages that waited at login have all been shown.
    caught_up: bool,
    /// Input has ended: log out once caught up.
    input_done: bool,
}

impl App {
    /// The main loop: commands in, events out, until logout or nothing is left to do.
    async fn run(
        &mut self,
        mut events: Events,
        mut private: PrivateEvents,
        mut transfer_events: mpsc::UnboundedReceiver<TransferEvent>,
        mut input: mpsc::Receiver<String>,
    ) -> u8 {
        loop {
            let done = tokio::select! {
                line = input.recv(), if !self.input_done => match line {
                    Some(line) => self.run_line(&line).await,
                    // End of input means logout, once what waited at login is shown.
                    None if self.caught_up => self.run_line("/logout").await,
                    None => {
                        self.input_done = true;
                        None
                    }
                },
                // Ctrl-C outside the line editor (piped input): log out properly.
                _ = tokio::signal::ctrl_c() => self.run_line("/logout").await,
                event = events.next(), if self.server_gone.is_none() => self.server_event(event).await,
                Some(event) = private.next() => self.private_event(&event),
                Some(event) = transfer_events.recv() => self.transfer_event(&event),
            };
            if let Some(code) = done {
                return code;
            }
        }
    }

    /// Shows a server event and acts on it; `Some(code)` when the client should exit.
    async fn server_event(&mut self, event: Option<ClientEvent>) -> Option<u8> {
        let Some(ClientEvent::Server(event)) = event else {
            return self.server_closed();
        };
        if event == Event::CaughtUp {
            self.caught_up = true;
            if self.input_done {
                return self.run_line("/logout").await;
            }
            return None;
        }
        self.out.line(format::event(&event));
        // Printed and flushed: the server need not send it again.
        if let Some(id) = event.message_id() {
            self.client.ack(id);
        }
        match event {
            Event::PrivateAccepted(intro) => self.chats.connect(intro),
            Event::FileOffer { from, name, size } => {
                self.transfers.expect(IncomingFile::new(&from, &name, size));
            }
            Event::SessionEnded { reason } => {
                self.ended_by_server = true;
                // Logged out for idleness: that ends the private chats too. Otherwise the
                // server is going away, and the private chats need not.
                if reason == EndReason::IdleTimeout {
                    self.chats.close_all(ByeReason::TimedOut).await;
                }
            }
            _ => {}
        }
        None
    }

    /// The server connection closed: exit, unless private chats keep the client running.
    fn server_closed(&mut self) -> Option<u8> {
        let code = if self.ended_by_server { EXIT_ENDED_BY_SERVER } else { EXIT_CONNECTION };
        if !self.ended_by_server {
            self.out.line(format::error("the connection to the server was lost"));
        }
        if self.direct_links_idle() {
            return Some(code);
        }
        self.out.line(format::server_gone());
        self.server_gone = Some(code);
        None
    }

    /// Shows a private-chat event; `Some(code)` when it was the last chat without a server.
    fn private_event(&mut self, event: &PrivateEvent) -> Option<u8> {
        self.out.line(format::private(event));
        let ended = matches!(event, PrivateEvent::Closed { .. } | PrivateEvent::Failed { .. });
        if ended {
            self.nothing_left()
        } else {
            None
        }
    }

    /// `Some(code)` when the server is gone and no private chat is left to keep us running.
    fn transfer_event(&mut self, event: &TransferEvent) -> Option<u8> {
        self.bars.update(event);
        if let Some(line) = format::transfer(event) {
            self.out.line(line);
        }
        let ended = matches!(
            event,
            TransferEvent::Sent { .. }
                | TransferEvent::Received { .. }
                | TransferEvent::Failed { .. }
        );
        if ended {
            self.nothing_left()
        } else {
            None
        }
    }

    /// No private chat is open and no file transfer runs.
    fn direct_links_idle(&self) -> bool {
        self.chats.is_empty() && self.bars.is_empty()
    }

    fn nothing_left(&mut self) -> Option<u8> {
        let code = self.server_gone.filter(|_| self.direct_links_idle())?;
        self.out.line("* no private chat or transfer is left and the server is gone; bye");
        Some(code)
    }

    /// Runs one input line; `Some(code)` when the client should exit.
    async fn run_line(&mut self, line: &str) -> Option<u8> {
        if line.trim().is_empty() {
            return None;
        }
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(e) => {
                self.out.line(format::error(e));
                return None;
            }
        };
        let request = match command {
            Command::Server(request) => request,
            Command::Help { topic } => {
                match command::help(topic.as_deref()) {
                    Ok(lines) => lines.into_iter().for_each(|l| self.out.line(l)),
                    Err(e) => self.out.line(format::error(e)),
                }
                return None;
            }
            Command::Private { to, text } => {
                let line = match self.chats.send(&to, &text).await {
                    Ok(()) => {
                        self.keep_alive();
                        format::private_sent(&to)
                    }
                    Err(e) => format::error(e),
                };
                self.out.line(line);
                return None;
            }
            Command::StopPrivate { user } => {
                let line = match self.chats.stop(&user).await {
                    Ok(()) => format::private_stopped(&user),
                    Err(e) => format::error(e),
                };
                self.out.line(line);
                return self.nothing_left();
            }
            Command::File(FileCommand::Send { .. }) if self.server_gone.is_some() => {
                self.out
                    .line(format::error("the server is gone: it introduces you to the receiver"));
                return None;
            }
            Command::File(file) => {
                let line = match files::run(&self.client, &self.transfers, file).await {
                    Ok(line) => line,
                    Err(e) => format::error(e),
                };
                self.out.line(line);
                return None;
            }
        };
        if let Some(code) = self.server_gone {
            if request == Request::Logout {
                self.chats.close_all(ByeReason::LoggedOut).await;
                self.cancel_transfers();
                self.out.line("private chats and transfers ended; bye");
                return Some(code);
            }
            self.out.line(format::error(
                "the server is gone; only /private, /stopprivate, file transfers already \
                 running, /cancel and /logout work now",
            ));
            return None;
        }
        if request == Request::Logout {
            // Logging out ends every private chat and transfer, and each peer is told.
            self.chats.close_all(ByeReason::LoggedOut).await;
            self.cancel_transfers();
        }
        let result = self.chats.server_request(&self.client, request.clone()).await;
        self.private_outcome(&request, result)
    }

    /// The server does not see private messages: tell it the user is active, so that chatting
    /// privately does not end in an idle timeout.
    fn cancel_transfers(&self) {
        for transfer in self.transfers.list() {
            self.transfers.cancel(transfer.id);
        }
    }

    fn keep_alive(&self) {
        if self.server_gone.is_none() {
            let client = self.client.clone();
            tokio::spawn(async move { client.keep_alive().await });
        }
    }

    /// Shows the outcome of a server request made through the private chats.
    fn private_outcome(
        &mut self,
        request: &Request,
        result: Result<Reply, PrivateError>,
    ) -> Option<u8> {
        match result {
            Ok(reply) => self.outcome(request, Ok(reply)),
            Err(PrivateError::Server(e)) => self.outcome(request, Err(e)),
            Err(e) => {
                self.out.line(format::error(e));
                None
            }
        }
    }

    /// Shows a server request's outcome; `Some(code)` when the client should exit.
    fn outcome(&mut self, request: &Request, result: Result<Reply, ClientError>) -> Option<u8> {
        match result {
            Ok(reply) => {
                for l in format::reply(request, &reply) {
                    self.out.line(l);
                }
                matches!(reply, Reply::LoggedOut).then_some(0)
            }
            Err(ClientError::Server(e)) => {
                self.out.line(format::error(e));
                None
            }
            // With private chats open, the closed connection is handled as an event.
            Err(e) => {
                self.out.line(format::error(e));
                self.chats.is_empty().then_some(EXIT_CONNECTION)
            }
        }
    }
}

/// Username and password from flags, environment, file or prompts.
fn credentials(args: &Args, interactive: bool) -> Result<(String, String), String> {
    let user = match &args.user {
        Some(user) => user.clone(),
        None if interactive => prompt("username: ")?,
        None => return Err("no username: pass --user".into()),
    };
    let password = if let Ok(p) = std::env::var("CONFAB_PASSWORD") {
        p
    } else if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.lines().next().unwrap_or_default().to_owned()
    } else if interactive {
        rpassword::prompt_password("password: ").map_err(|e| e.to_string())?
    } else {
        return Err("no password: set CONFAB_PASSWORD or pass --password-file".into());
    };
    Ok((user, password))
}

fn prompt(label: &str) -> Result<String, String> {
    print!("{label}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line.trim().to_owned())
}

/// One progress bar per running transfer: bytes, rate and ETA, counted from what the
/// receiver acknowledged. Drawn on stderr, and only when it is a terminal.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: HashMap<TransferId, ProgressBar>,
}

impl Bars {
    fn update(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::Started { transfer, resume_from } => {
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let bar = self.multi.add(ProgressBar::new(transfer.size).with_style(style));
                let (arrow, name) = (transfer.direction.arrow(), format::sanitize(&transfer.name));
                bar.set_prefix(format!("{arrow} {name}"));
                bar.set_position(*resume_from);
                bar.reset_eta();
                self.bars.insert(transfer.id, bar);
            }
            TransferEvent::Progress { id, done, .. } => {
                if let Some(bar) = self.bars.get(id) {
                    bar.set_position(*done);
                }
            }
            TransferEvent::Sent { transfer }
            | TransferEvent::Received { transfer, .. }
            | TransferEvent::Failed { transfer, .. } => {
                if let Some(bar) = self.bars.remove(&transfer.id) {
                    bar.finish_and_clear();
                }
            }
            TransferEvent::Offered { .. } | TransferEvent::Waiting { .. } => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.bars.is_empty()
    }
}

/// Where lines go: straight to stdout, or above the line editor's prompt.
struct Output {
    printer: Option<Box<dyn rustyline::ExternalPrinter + Send>>,
    editor: Option<rustyline::DefaultEditor>,
    saved_terminal: Option<nix::sys::termios::Termios>,
}

impl Output {
    fn new(interactive: bool) -> Self {
        let mut out = Output { printer: None, editor: None, saved_terminal: None };
        if !interactive {
            return out;
        }
        out.saved_terminal = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        match rustyline::DefaultEditor::new() {
            Ok(mut editor) => {
                out.printer = editor.create_external_printer().ok().map(|p| Box::new(p) as _);
                out.editor = Some(editor);
            }
            Err(e) => eprintln!("{}", format::error(format!("no line editor: {e}"))),
        }
        out
    }

    fn line(&mut self, line: impl Into<String>) {
        let line = line.into();
        if let Some(printer) = &mut self.printer {
            if printer.print(format!("{line}\n")).is_ok() {
                return;
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    /// Puts the terminal back as it was, even if the editor thread is mid-line.
    fn restore_terminal(&self) {
        if let Some(saved) = &self.saved_terminal {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Starts reading input lines: through the line editor on a terminal, plain stdin otherwise.
fn spawn_input(out: &mut Output) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    if let Some(mut editor) = out.editor.take() {
        // Ctrl-C and Ctrl-D end the loop, which logs out.
        std::thread::spawn(move || {
            while let Ok(line) = editor.readline("> ") {
                let _ = editor.add_history_entry(line.as_str());
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        return rx;
    }
    // A plain thread, not tokio's stdin: a read blocked on stdin must not hold up exit.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
