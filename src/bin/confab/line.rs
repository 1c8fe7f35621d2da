//! Line mode: each input line is a command, each session event one printed line. After
//! `/query USER` (`#GROUP`, `=USER`) a line without a leading `/` is a message to that
//! conversation, so that a script can set a target; `/query` alone ends it.
//!
//! When stdin is a terminal, input goes through a line editor whose external printer puts
//! incoming lines above the prompt, so a half-typed line is never broken. Every message is
//! acknowledged once its line is printed and stdout flushed. At the end of input the
//! session logs out once the messages that waited at login have all been printed (the
//! server's "caught up"), so `confab < /dev/null` prints them all.

use std::io::{BufRead, Write};

use confab::client::command::{self, Target, Typed};
use confab::client::format;
use confab::client::session::{Finish, Session, SessionEvent, SessionEvents};
use confab::client::LoginInfo;
use tokio::sync::mpsc;

use super::bars::Bars;

/// Runs line mode until the session finishes; returns how it finished.
pub async fn run(
    info: &LoginInfo,
    session: Session,
    mut events: SessionEvents,
    interactive: bool,
) -> Finish {
    let mut out = Output::new(interactive);
    out.line(format::login(info));
    let mut input = spawn_input(&mut out);
    let mut bars = Bars::default();
    let mut input_done = false;
    // Where bare text goes after `/query`; none: bare words are commands.
    let mut target: Option<Target> = None;
    let finish = loop {
        tokio::select! {
            line = input.recv(), if !input_done => match line {
                Some(line) => typed(&mut out, &session, &mut target, &line),
                // End of input means logout, once what waited at login is shown.
                None => {
                    input_done = true;
                    session.logout_when_caught_up();
                }
            },
            // Ctrl-C outside the line editor (piped input): log out properly.
            _ = tokio::signal::ctrl_c() => session.logout(),
            event = events.next() => match event {
                Some(SessionEvent::Finished(finish)) => break finish,
                Some(event) => show(&mut out, &mut bars, &session, event),
                None => break Finish::ConnectionLost,
            },
        }
    };
    out.restore_terminal();
    finish
}

/// Carries out one typed line, talking to `target`.
fn typed(out: &mut Output, session: &Session, target: &mut Option<Target>, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    match command::parse_in(line, target.as_ref()) {
        Ok(Typed::Command(command)) => session.run(command),
        Ok(Typed::Query(to)) => {
            out.line(match &to {
                Some(to) => format!("* talking to {}; /query alone ends it", to.label()),
                None => "* talking to no one; bare words are commands".to_owned(),
            });
            *target = to;
        }
        Ok(Typed::Close) => {
            *target = None;
            out.line("* talking to no one; bare words are commands");
        }
        Ok(Typed::Search(_)) => {
            out.line(format::error("/search is the full-screen client's; here, try grep"));
        }
        Err(e) => out.line(format::error(e)),
    }
}

/// Prints one session event.
fn show(out: &mut Output, bars: &mut Bars, session: &Session, event: SessionEvent) {
    match event {
        SessionEvent::Server(event) => {
            out.line(format::event(&event));
            // Printed and flushed: the server need not send it again.
            if let Some(id) = event.message_id() {
                session.shown(id);
            }
        }
        SessionEvent::Replied { request, result: Ok(reply) } => {
            format::reply(&request, &reply).into_iter().for_each(|l| out.line(l));
        }
        SessionEvent::Replied { result: Err(e), .. }
        | SessionEvent::PrivateSent { result: Err(e), .. }
        | SessionEvent::PrivateStopped { result: Err(e), .. }
        | SessionEvent::FileDone(Err(e))
        | SessionEvent::Error(e) => out.line(format::error(e)),
        SessionEvent::Pending { request } => out.line(format::pending(&request)),
        SessionEvent::Private(event) => out.line(format::private(&event)),
        SessionEvent::PrivateSent { to, result: Ok(()), .. } => out.line(format::private_sent(&to)),
        SessionEvent::PrivateStopped { user, result: Ok(()) } => {
            out.line(format::private_stopped(&user));
        }
        SessionEvent::Transfer(event) => {
            bars.update(&event);
            if let Some(line) = format::transfer(&event) {
                out.line(line);
            }
        }
        SessionEvent::FileDone(Ok(line)) | SessionEvent::Notice(line) => out.line(line),
        SessionEvent::Connection(state) => {
            if let Some(line) = format::connection(&state) {
                out.line(line);
            }
        }
        SessionEvent::CaughtUp { arrived, reconnected: true } => {
            out.line(format::caught_up(arrived))
        }
        SessionEvent::CaughtUp { reconnected: false, .. } | SessionEvent::Finished(_) => {}
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
