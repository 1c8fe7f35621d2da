//! Line mode: each input line is a command, each session event one printed line. After
//! `/query USER` (`#GROUP`, `=USER`) a line without a leading `/` is a message to that
//! conversation, so that a script can set a target; `/query` alone ends it.
//!
//! When stdin is a terminal, input goes through a line editor whose external printer puts
//! incoming lines above the prompt, so a half-typed line is never broken. The transfers'
//! progress bars then go through that printer too, as rows kept just above the prompt: each
//! write moves up over them, prints its lines and draws them again below, so the cursor
//! never moves under another drawer and no stale bar stays behind. Every message is
//! acknowledged once its line is printed and stdout flushed. At the end of input the
//! session logs out once the messages that waited at login have all been printed (the
//! server's "caught up"), so `confab < /dev/null` prints them all.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use confab::client::command::{self, Target, Typed};
use confab::client::format;
use confab::client::session::{Finish, Session, SessionEvent, SessionEvents};
use confab::client::LoginInfo;
use confab::p2p::transfer::TransferEvent;
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthStr;

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
                Some(event) => show(&mut out, &session, event),
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
fn show(out: &mut Output, session: &Session, event: SessionEvent) {
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
        SessionEvent::Transfer(event) => out.transfer(&event),
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

/// The prompt the line editor shows.
const PROMPT: &str = "> ";

/// Where lines go: straight to stdout, or above the line editor's prompt.
struct Output {
    /// With the line editor: every write to the terminal goes through it.
    screen: Option<Arc<Mutex<Screen>>>,
    editor: Option<rustyline::DefaultEditor>,
    bars: Bars,
    saved_terminal: Option<nix::sys::termios::Termios>,
}

impl Output {
    fn new(interactive: bool) -> Self {
        let mut out =
            Output { screen: None, editor: None, bars: Bars::on_stderr(), saved_terminal: None };
        if !interactive {
            return out;
        }
        out.saved_terminal = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        match rustyline::DefaultEditor::new() {
            Ok(mut editor) => {
                if let Ok(printer) = editor.create_external_printer() {
                    let screen =
                        Screen { printer: Box::new(printer), bars: Vec::new(), held: None };
                    out.screen = Some(Arc::new(Mutex::new(screen)));
                    // Drawn through the printer, and only where indicatif would draw them.
                    out.bars =
                        match std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
                            true => Bars::drawn_by_caller(),
                            false => Bars::on_stderr(),
                        };
                }
                out.editor = Some(editor);
            }
            Err(e) => eprintln!("{}", format::error(format!("no line editor: {e}"))),
        }
        out
    }

    fn line(&mut self, line: impl Into<String>) {
        self.print(Some(line.into()), false);
    }

    /// Moves the bars for `event`, and prints its line if it has one.
    fn transfer(&mut self, event: &TransferEvent) {
        let redraw = self.bars.update(event);
        self.print(format::transfer(event), redraw);
    }

    /// Prints `line` (if any); draws the bars again if `line` or `redraw`.
    fn print(&mut self, line: Option<String>, redraw: bool) {
        if line.is_none() && !redraw {
            return;
        }
        if let Some(screen) = &self.screen {
            let bars = match self.bars.is_drawn_by_caller() {
                true => self.bars.lines(columns()),
                false => Vec::new(),
            };
            let mut screen = screen.lock().unwrap_or_else(|e| e.into_inner());
            if screen.print(line.as_deref(), bars).is_ok() {
                return;
            }
        }
        let Some(line) = line else { return };
        self.bars.suspend(|| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        });
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
        let screen = out.screen.clone();
        if let Some(screen) = &screen {
            use rustyline::{EventHandler, KeyCode, KeyEvent, Modifiers};
            let handing = |only_when_empty| {
                let screen = screen.clone();
                EventHandler::Conditional(Box::new(Handing { screen, only_when_empty }))
            };
            for key in [
                KeyEvent(KeyCode::Enter, Modifiers::NONE),
                KeyEvent::ctrl('J'),
                KeyEvent::ctrl('C'),
            ] {
                editor.bind_sequence(key, handing(false));
            }
            editor.bind_sequence(KeyEvent::ctrl('D'), handing(true));
        }
        // Ctrl-C and Ctrl-D end the loop, which logs out.
        std::thread::spawn(move || loop {
            let read = editor.readline(PROMPT);
            if let Some(screen) = &screen {
                screen.lock().unwrap_or_else(|e| e.into_inner()).entered();
            }
            let Ok(line) = read else { break };
            let _ = editor.add_history_entry(line.as_str());
            if tx.blocking_send(line).is_err() {
                break;
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

/// What the line editor's printer has drawn just above the prompt: the bars. Each write
/// through it moves up over them first, and draws them again after its lines.
///
/// When the editor hands back its line (Enter, Ctrl-C, Ctrl-D), it leaves the echo of that
/// line below the bars. From the key on ([`Screen::hold`]) until the echo is accounted for
/// ([`Screen::entered`]), writes are held, so none lands between the two.
struct Screen {
    printer: Box<dyn rustyline::ExternalPrinter + Send>,
    /// The bar lines on the rows just above the prompt, one row each.
    bars: Vec<String>,
    /// The line being handed back, and the writes held meanwhile.
    held: Option<Held>,
}

/// Writes held while the editor hands back a line.
struct Held {
    /// The prompt and the line, as the editor leaves them on the terminal.
    echo: String,
    lines: Vec<String>,
    /// The bars to draw, if they changed.
    bars: Option<Vec<String>>,
}

impl Screen {
    /// Prints `line` above the bars, and puts `bars` in their place.
    fn print(&mut self, line: Option<&str>, bars: Vec<String>) -> rustyline::Result<()> {
        if let Some(held) = &mut self.held {
            held.lines.extend(line.map(str::to_owned));
            held.bars = Some(bars);
            return Ok(());
        }
        if line.is_none() && bars.is_empty() && self.bars.is_empty() {
            return Ok(());
        }
        // The printer starts where the prompt was, just below the old bars.
        let mut out = up_and_clear(self.bars.len());
        for text in line.into_iter().chain(bars.iter().map(String::as_str)) {
            out.push_str(text);
            out.push('\n');
        }
        if !out.ends_with('\n') {
            // Only the old bars cleared: the printer ends each message with a newline, so
            // step up one row first to stay where the bars began.
            out.push_str("\x1b[A\n");
        }
        self.printer.print(out)?;
        self.bars = bars;
        Ok(())
    }

    /// The editor is about to hand back `line`: holds writes until [`Screen::entered`].
    fn hold(&mut self, line: &str) {
        let echo = format!("{PROMPT}{line}");
        self.held = Some(Held { echo, lines: Vec::new(), bars: None });
    }

    /// The editor has handed its line back and left raw mode (so the printer writes at
    /// once): the echo sits below the bars. It is written again above them, then what was
    /// held, then the bars, just above where the next prompt will be.
    fn entered(&mut self) {
        let Some(held) = self.held.take() else { return };
        let bars = held.bars.unwrap_or_else(|| self.bars.clone());
        let mut out = String::new();
        if !self.bars.is_empty() {
            out = up_and_clear(self.bars.len() + echo_rows(&held.echo, columns()));
            out.push_str(&held.echo);
            out.push('\n');
        }
        for text in held.lines.iter().chain(&bars) {
            out.push_str(text);
            out.push('\n');
        }
        if !out.is_empty() {
            let _ = self.printer.print(out);
        }
        self.bars = bars;
    }
}

/// Tells the screen that the editor is about to hand back its line: bound to the keys that
/// end a line (Enter, Ctrl-C; Ctrl-D only on an empty line), which then do what they do.
struct Handing {
    screen: Arc<Mutex<Screen>>,
    only_when_empty: bool,
}

impl rustyline::ConditionalEventHandler for Handing {
    fn handle(
        &self,
        _: &rustyline::Event,
        _: rustyline::RepeatCount,
        _: bool,
        ctx: &rustyline::EventContext,
    ) -> Option<rustyline::Cmd> {
        if !self.only_when_empty || ctx.line().is_empty() {
            self.screen.lock().unwrap_or_else(|e| e.into_inner()).hold(ctx.line());
        }
        None
    }
}

/// Moves the cursor up `rows` rows to the start of the row, and clears from there down.
fn up_and_clear(rows: usize) -> String {
    match rows {
        0 => String::new(),
        n => format!("\x1b[{n}A\r\x1b[J"),
    }
}

/// How many rows the editor's echo of `echo` took, with the newline it ends with (as the
/// editor lays it out: a line of exactly the terminal's width takes a row more).
fn echo_rows(echo: &str, columns: usize) -> usize {
    echo.split('\n').map(|part| part.width() / columns.max(1) + 1).sum()
}

/// The terminal's width, or 80.
fn columns() -> usize {
    crossterm::terminal::size().map_or(80, |(columns, _)| usize::from(columns))
}
