//! `confab`: the terminal client.
//!
//! On a terminal it opens the full-screen interface (`confab::client::tui`), logging to a
//! file. With `--plain`, or when stdin or stdout is not a terminal, it runs in line mode
//! ([`line`]): each input line is a command; each event or reply is printed as one line at
//! once, and each file transfer gets a progress bar on stderr ([`bars`]).
//!
//! This file only gets the user logged in: it connects first (an unreachable server is
//! said so before any password is asked for, with a hint to start one; `--wait` keeps
//! trying), reads the password, binds the direct sockets on the local address of the
//! server connection and logs in, asking again on a terminal after a wrong password (the
//! server's lockout counts every try). Then both front ends run on
//! `confab::client::session::Session`, which holds every rule of the session: reconnecting
//! when the server goes (unless `--no-reconnect`), what a logout ends, keep-alives, and
//! acknowledging what has been shown.
//!
//! Exit codes: 0 after logout (or end of input), 1 other errors, 2 bad usage, 3 login refused,
//! 4 account locked, 5 already logged in elsewhere, 6 server unreachable or connection lost,
//! 7 session ended by the server (idle timeout; a shutdown with `--no-reconnect`), 8 the
//! server's certificate was not trusted (or plaintext refused). A client
//! that private chats kept running after the server went away for good exits with 6 or 7
//! all the same.

mod bars;
mod line;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use confab::client::session::{self, Credentials, Finish, Session, SessionConfig, SessionEvents};
use confab::client::trust::{KnownServers, TrustError, Trusted};
use confab::client::{
    format, tui, Client, ClientError, Connector, Events, LoginInfo, Security, Trust,
};
use confab::p2p::identity::{Identity, IdentityError, VerifiedPeers};
use confab::p2p::transfer::{SenderConfig, TransferConfig};
use confab::p2p::DirectSockets;
use confab::protocol::{ErrorCode, OnlineUser};
use confab::tls::Fingerprint;

const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_LOGIN_REFUSED: u8 = 3;
const EXIT_LOCKED: u8 = 4;
const EXIT_ALREADY_LOGGED_IN: u8 = 5;
const EXIT_CONNECTION: u8 = 6;
const EXIT_ENDED_BY_SERVER: u8 = 7;
const EXIT_UNTRUSTED: u8 = 8;

/// The longest pause between two tries under `--wait`.
const WAIT_MAX: Duration = Duration::from_secs(10);

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
    /// Keep no chat logs (the full-screen interface writes one per conversation, as plain
    /// text, in logs/USER@SERVER in the data dir).
    #[arg(long, env = "CONFAB_NO_LOGS")]
    no_logs: bool,
    /// Do not reconnect when the connection drops or the server restarts: end the session.
    #[arg(long, env = "CONFAB_NO_RECONNECT")]
    no_reconnect: bool,
    /// Keep trying until the server can be reached, instead of giving up at once.
    #[arg(long)]
    wait: bool,
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
    /// Where the client keeps its key for direct links (identity.key), the peers it verified,
    /// known_servers, the full-screen interface's input history and chat logs, and its log
    /// file (default: the user's data dir).
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
    let username = match username(&args, interactive) {
        Ok(name) => name,
        Err(message) => {
            eprintln!("{}", format::error(message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let connector = connector(&args);
    let connection = match reach(&args, &connector).await {
        Ok(pair) => pair,
        Err(code) => return ExitCode::from(code),
    };
    let trust_notice = first_use_notice(&args, &connection.0);
    if let Some(notice) = &trust_notice {
        eprintln!("{notice}");
    }
    let mut password = match Password::new(&args, interactive) {
        Ok(password) => password,
        Err(message) => {
            eprintln!("{}", format::error(message));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (identity, pins) = match identity(&args) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{}", format::error(e));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let ip = connection.0.local_addr().ip();
    let sockets = match DirectSockets::bind(ip, args.p2p_port, args.udp_port).await {
        Ok(sockets) => sockets,
        Err(e) => {
            eprintln!("{}", format::error(e));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let (credentials, info) = loop {
        let credentials = match password.get() {
            Ok(password) => Credentials { username: username.clone(), password },
            Err(message) => {
                eprintln!("{}", format::error(message));
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match session::log_in(&connection.0, &credentials, sockets.endpoint(&identity)).await {
            Ok(info) => break (credentials, info),
            // A typo: on a terminal, ask again (the server counts every try for its lockout).
            Err(e) if e.code() == Some(ErrorCode::InvalidCredentials) && password.prompted() => {
                eprintln!("{}", format::error(&e));
            }
            Err(e) => {
                eprintln!("{}", format::error(&e));
                return ExitCode::from(login_exit_code(&e));
            }
        }
    };
    // The full-screen interface opens with the online list in its status bar.
    let online = match full_screen {
        true => connection.0.list().await.unwrap_or_default(),
        false => Vec::new(),
    };
    let config = session_config(&args, connector, identity, pins);
    let started = Session::start(config, credentials, connection, sockets, &info);
    let (session, events) = match started {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{}", format::error(e));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    if full_screen {
        let notices = trust_notice.into_iter().collect();
        let history = data_dir(&args).join("input-history");
        let chats = format!("{}@{}", info.username, args.server.replace('/', "_"));
        let logs = (!args.no_logs).then(|| data_dir(&args).join("logs").join(chats));
        let files = Files { history: &history, logs: logs.as_deref() };
        return full_screen_client(&args.server, &info, online, notices, files, session, events)
            .await;
    }
    let finish = line::run(&info, session, events, interactive).await;
    ExitCode::from(exit_code(&finish))
}

/// Connects to the server: at once, or under `--wait` as soon as it can be reached. Says
/// plainly when it cannot be, with a hint to start it. `Err` holds the exit code.
async fn reach(args: &Args, connector: &Connector) -> Result<(Client, Events), u8> {
    let mut pause = Duration::from_millis(500);
    let mut told = false;
    loop {
        let error = match session::connect(connector).await {
            Ok(pair) => return Ok(pair),
            Err(e @ ClientError::Connect(_)) => e,
            Err(e) => {
                eprintln!("{}", format::error(format!("{e} ({})", args.server)));
                return Err(match e {
                    ClientError::Trust(TrustError::Handshake { .. }) => EXIT_CONNECTION,
                    ClientError::Trust(_) => EXIT_UNTRUSTED,
                    e if e.code().is_some() => EXIT_ERROR,
                    _ => EXIT_CONNECTION,
                });
            }
        };
        if !told {
            eprintln!(
                "{}",
                format::error(format!(
                    "{error} ({}); is confab-server running there? Start one with \
                     `confab-server`, or pass --server ADDRESS",
                    args.server
                ))
            );
        }
        if !args.wait {
            return Err(EXIT_CONNECTION);
        }
        if !told {
            eprintln!("* waiting for the server (--wait); Ctrl-C gives up");
            told = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Err(EXIT_CONNECTION),
        }
        pause = (pause * 2).min(WAIT_MAX);
    }
}

/// The session's settings from the flags.
/// The client's key pair for direct links and the peers' keys it has verified, from the
/// data directory (the key pair is made there on first run).
fn identity(args: &Args) -> Result<(Identity, VerifiedPeers), IdentityError> {
    let dir = data_dir(args);
    let (identity, created) = Identity::load_or_create(&dir)?;
    if created {
        tracing::info!(key = %identity.public(), "made a new identity for direct links");
    }
    Ok((identity, VerifiedPeers::in_dir(&dir)?))
}

fn session_config(
    args: &Args,
    connector: Connector,
    identity: Identity,
    pins: VerifiedPeers,
) -> SessionConfig {
    let mut config = SessionConfig::new(connector);
    config.identity = identity;
    config.pins = pins;
    config.reconnect = !args.no_reconnect;
    config.transfer = TransferConfig {
        download_dir: args.download_dir.clone(),
        auto_accept: args.auto_accept,
        sender: SenderConfig { chunk_size: args.chunk_size, ..SenderConfig::default() },
        ..TransferConfig::default()
    };
    config
}

/// The full-screen interface's files: the input history, the chat logs' directory.
struct Files<'a> {
    history: &'a Path,
    logs: Option<&'a Path>,
}

/// Runs the full-screen interface until the session finishes; the terminal is restored on
/// every way out, a panic included (`ratatui::init` installs a hook for that).
async fn full_screen_client(
    server: &str,
    info: &LoginInfo,
    online: Vec<OnlineUser>,
    notices: Vec<String>,
    files: Files<'_>,
    session: Session,
    events: SessionEvents,
) -> ExitCode {
    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let mut app = tui::App::new(server, &info.username, online, size);
    app.input.set_history(tui::load_history(files.history));
    app.notice(format::login(info));
    app.notice("/help lists the commands; /query USER opens a window; Alt-1..9 switch");
    app.notice("PgUp/PgDn scroll; Tab completes; Ctrl-C quits");
    for notice in notices {
        app.notice(notice);
    }
    let mut terminal = ratatui::init();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let result = tui::run(&mut terminal, session, events, app, files.logs).await;
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    ratatui::restore();
    match result {
        Ok(app) => {
            if let Err(e) = tui::save_history(files.history, app.input.history()) {
                eprintln!("{}", format::error(format!("input history not saved: {e}")));
            }
            // Quit without the session's word (the logout took too long): logged out all
            // the same. A session the server ended says why on the restored terminal.
            let finish = app.finished.unwrap_or(Finish::LoggedOut);
            if finish != Finish::LoggedOut {
                if let Some(line) = format::connection(&app.connection) {
                    eprintln!("{line}");
                }
            }
            ExitCode::from(exit_code(&finish))
        }
        Err(e) => {
            eprintln!("{}", format::error(format!("terminal: {e}")));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The exit code for how the session finished.
fn exit_code(finish: &Finish) -> u8 {
    match finish {
        Finish::LoggedOut => 0,
        Finish::EndedByServer => EXIT_ENDED_BY_SERVER,
        Finish::ConnectionLost => EXIT_CONNECTION,
        Finish::LoginRefused(code) => code_exit(Some(*code)),
        Finish::Untrusted => EXIT_UNTRUSTED,
    }
}

/// The exit code for a failed login.
fn login_exit_code(error: &ClientError) -> u8 {
    code_exit(error.code())
}

fn code_exit(code: Option<ErrorCode>) -> u8 {
    match code {
        Some(ErrorCode::InvalidCredentials | ErrorCode::InvalidArgument) => EXIT_LOGIN_REFUSED,
        Some(ErrorCode::LockedOut { .. }) => EXIT_LOCKED,
        Some(ErrorCode::AlreadyLoggedIn) => EXIT_ALREADY_LOGGED_IN,
        Some(_) => EXIT_ERROR,
        None => EXIT_CONNECTION,
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
    args.log_file.clone().unwrap_or_else(|| data_dir(args).join("confab.log"))
}

/// --data-dir, or the user's data directory.
fn data_dir(args: &Args) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(|| {
        directories::ProjectDirs::from("", "", "confab")
            .map(|d| d.data_dir().to_owned())
            .unwrap_or_else(|| PathBuf::from("."))
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
    KnownServers::in_dir(&data_dir(args))
}

/// The username from the flag, the environment, or a prompt.
fn username(args: &Args, interactive: bool) -> Result<String, String> {
    match &args.user {
        Some(user) => Ok(user.clone()),
        None if interactive => prompt("username: "),
        None => Err("no username: pass --user".into()),
    }
}

/// Where the password comes from: given (environment, file) or asked for on the terminal,
/// again after each wrong one.
enum Password {
    Given(Option<String>),
    Prompt,
}

impl Password {
    fn new(args: &Args, interactive: bool) -> Result<Self, String> {
        if let Ok(p) = std::env::var("CONFAB_PASSWORD") {
            return Ok(Password::Given(Some(p)));
        }
        if let Some(path) = &args.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            return Ok(Password::Given(Some(text.lines().next().unwrap_or_default().to_owned())));
        }
        if interactive {
            return Ok(Password::Prompt);
        }
        Err("no password: set CONFAB_PASSWORD or pass --password-file".into())
    }

    /// The password to try (a given one only once).
    fn get(&mut self) -> Result<String, String> {
        match self {
            Password::Given(given) => given.take().ok_or_else(|| "the password was refused".into()),
            Password::Prompt => rpassword::prompt_password("password: ").map_err(|e| e.to_string()),
        }
    }

    /// Whether a wrong password can be typed again.
    fn prompted(&self) -> bool {
        matches!(self, Password::Prompt)
    }
}

fn prompt(label: &str) -> Result<String, String> {
    print!("{label}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line.trim().to_owned())
}
