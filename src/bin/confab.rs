//! `confab`: the terminal client, in line mode.
//!
//! Each input line is a command; each event or reply is printed as one line at once. When
//! stdin is a terminal, input goes through a line editor whose external printer puts incoming
//! lines above the prompt, so a half-typed line is never broken.
//!
//! Exit codes: 0 after logout (or end of input), 1 other errors, 2 bad usage, 3 login refused,
//! 4 account locked, 5 already logged in elsewhere, 6 server unreachable or connection lost,
//! 7 session ended by the server (idle timeout, shutdown).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use confab::client::command::{self, Command};
use confab::client::{format, Client, ClientError, ClientEvent, Events};
use confab::protocol::{ErrorCode, Event, Reply};
use tokio::sync::mpsc;

const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_LOGIN_REFUSED: u8 = 3;
const EXIT_LOCKED: u8 = 4;
const EXIT_ALREADY_LOGGED_IN: u8 = 5;
const EXIT_CONNECTION: u8 = 6;
const EXIT_ENDED_BY_SERVER: u8 = 7;

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
    /// Line mode: one command per input line, one event per output line (the only mode yet).
    #[arg(long)]
    plain: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let interactive = std::io::stdin().is_terminal();
    let (user, password) = match credentials(&args, interactive) {
        Ok(pair) => pair,
        Err(message) => {
            eprintln!("{}", format::error(message));
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let (client, events) = match Client::connect(&args.server).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{}", format::error(format!("{e} ({})", args.server)));
            return ExitCode::from(match e.code() {
                Some(_) => EXIT_ERROR,
                None => EXIT_CONNECTION,
            });
        }
    };
    let mut out = Output::new(interactive);
    match client.login(&user, &password).await {
        Ok(info) => out.line(format::login(&info)),
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
    }
    let input = spawn_input(&mut out);
    let code = chat(&client, events, input, &mut out).await;
    out.restore_terminal();
    ExitCode::from(code)
}

/// The main loop: commands in, events out, until logout or the connection ends.
async fn chat(
    client: &Client,
    mut events: Events,
    mut input: mpsc::Receiver<String>,
    out: &mut Output,
) -> u8 {
    let mut ended_by_server = false;
    loop {
        tokio::select! {
            line = input.recv() => {
                // End of input means logout.
                let line = line.unwrap_or_else(|| "/logout".to_owned());
                if let Some(code) = run_line(client, &line, out).await {
                    return code;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                // Ctrl-C outside the line editor (piped input): log out properly.
                if let Some(code) = run_line(client, "/logout", out).await {
                    return code;
                }
            }
            event = events.next() => match event {
                Some(ClientEvent::Server(event)) => {
                    ended_by_server |= matches!(event, Event::SessionEnded { .. });
                    out.line(format::event(&event));
                }
                Some(ClientEvent::Closed { .. }) | None => {
                    if ended_by_server {
                        return EXIT_ENDED_BY_SERVER;
                    }
                    out.line(format::error("the connection to the server was lost"));
                    return EXIT_CONNECTION;
                }
            },
        }
    }
}

/// Runs one input line; `Some(code)` when the client should exit.
async fn run_line(client: &Client, line: &str, out: &mut Output) -> Option<u8> {
    if line.trim().is_empty() {
        return None;
    }
    let command = match command::parse(line) {
        Ok(command) => command,
        Err(e) => {
            out.line(format::error(e));
            return None;
        }
    };
    let request = match command {
        Command::Server(request) => request,
        Command::Help { topic } => {
            match command::help(topic.as_deref()) {
                Ok(lines) => lines.into_iter().for_each(|l| out.line(l)),
                Err(e) => out.line(format::error(e)),
            }
            return None;
        }
    };
    match client.request(request.clone()).await {
        Ok(reply) => {
            for l in format::reply(&request, &reply) {
                out.line(l);
            }
            matches!(reply, Reply::LoggedOut).then_some(0)
        }
        Err(ClientError::Server(e)) => {
            out.line(format::error(e));
            None
        }
        Err(e) => {
            out.line(format::error(e));
            Some(EXIT_CONNECTION)
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
