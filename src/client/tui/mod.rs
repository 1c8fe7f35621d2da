//! The full-screen terminal client (ratatui + crossterm).
//!
//! The shape follows the ratatui templates: everything the UI reacts to is one
//! [`UiEvent`]; [`App::handle`] changes the state and returns [`Action`]s;
//! [`render::render`] draws the state and changes nothing. [`run`] is the only part that
//! does I/O: it reads the terminal, the server events and a one-second tick, feeds them to
//! the app, carries out its actions and redraws.
//!
//! Everything but drawing is the [`Session`]'s: the driver hands it the commands the app
//! asks for, feeds its events to the app, and tells it when a message is in the pane (so
//! that it is acknowledged). File transfers show as a gauge each in the status bar; the
//! connection's state (connected, reconnecting, ended) is there too.

pub mod app;
pub mod complete;
pub mod input;
pub mod render;

use std::path::Path;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{signal, SignalKind};

pub use app::{Action, App, Connection, UiEvent};

use super::session::{Session, SessionEvent, SessionEvents, LOGOUT_TIMEOUT};
use crate::protocol::now_ms;

/// How long quitting waits for the session to finish its logout.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the interface on `terminal` until the session finishes (or the user quits and the
/// logout takes too long); returns the final state.
pub async fn run(
    terminal: &mut DefaultTerminal,
    session: Session,
    mut events: SessionEvents,
    mut app: App,
    logs: Option<&Path>,
) -> std::io::Result<App> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut quit_by: Option<tokio::time::Instant> = None;
    let start = app.start();
    carry_out(&session, start, &mut quit_by);
    // Rows that held emoji sequences in the last frame (see `render::stream`).
    let mut sequences = std::collections::BTreeSet::new();
    loop {
        let frame = terminal.draw(|frame| render::render(&app, frame))?;
        let now = render::sequence_rows(frame.buffer);
        let rows: Vec<_> = now
            .union(&sequences)
            .filter_map(|&y| render::stream(frame.buffer, y).map(|row| (y, row)))
            .collect();
        sequences = now;
        if !rows.is_empty() {
            print_rows(terminal, rows)?;
        }
        let deadline = quit_by.unwrap_or_else(tokio::time::Instant::now);
        let event = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => UiEvent::Key(k),
                Some(Ok(TermEvent::Paste(text))) => UiEvent::Paste(text),
                Some(Ok(TermEvent::Resize(width, height))) => UiEvent::Resize { width, height },
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => break,
            },
            event = events.next() => match event {
                Some(event) => {
                    // Your own messages are stamped when the server took them, not at the
                    // last tick.
                    app.handle(UiEvent::Tick(now_ms()));
                    UiEvent::Session(event)
                }
                None => break,
            },
            _ = tick.tick() => UiEvent::Tick(now_ms()),
            _ = terminate.recv() => UiEvent::Key(ctrl_c()),
            _ = hangup.recv() => UiEvent::Key(ctrl_c()),
            _ = tokio::time::sleep_until(deadline), if quit_by.is_some() => break,
        };
        let shown = match &event {
            UiEvent::Session(SessionEvent::Server(event)) => event.message_id(),
            _ => None,
        };
        let actions = app.handle(event);
        // In the pane now: the server need not send it again.
        if let Some(id) = shown {
            session.shown(id);
        }
        carry_out(&session, actions, &mut quit_by);
        for (conversation, line) in app.take_logs() {
            if let Some(dir) = logs {
                if let Err(e) = append_log(dir, &conversation, &line) {
                    tracing::warn!("chat log for {conversation} in {}: {e}", dir.display());
                }
            }
        }
        if app.done() {
            break;
        }
    }
    Ok(app)
}

/// Reads the input history an earlier run saved at `path`, oldest first (none if there is
/// no file or it cannot be read).
pub fn load_history(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines().map(unescape_line).collect()
}

/// Saves the input history to `path`, one entry a line (a multi-line entry's breaks as
/// `\n`), readable by the user only: it holds what they typed.
pub fn save_history(path: &Path, lines: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    for line in lines {
        writeln!(file, "{}", line.replace('\\', "\\\\").replace('\n', "\\n"))?;
    }
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

fn unescape_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// Appends `line` to the chat log of `conversation` in `dir` (`bob.log`, `#devs.log`,
/// `=bob.log`), readable by the user only.
pub fn append_log(dir: &Path, conversation: &str, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(log_file_name(conversation)))?;
    writeln!(file, "{line}")
}

/// A conversation's log file name: its label with anything but letters, digits, `#`, `=`,
/// `_`, `-` and `.` replaced, never hidden, never a path.
fn log_file_name(conversation: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "#=_-.".contains(c);
    let name: String = conversation.chars().map(|c| if safe(c) { c } else { '_' }).collect();
    match name.starts_with('.') || name.is_empty() {
        true => format!("_{name}.log"),
        false => format!("{name}.log"),
    }
}

/// Prints rows as streams of text over what ratatui drew, each clearing to the end of its
/// row, and puts the cursor back (saved and restored: no query of the terminal, whose
/// answer the key reader would take).
fn print_rows(
    terminal: &mut DefaultTerminal,
    rows: Vec<(u16, Vec<(String, ratatui::style::Style)>)>,
) -> std::io::Result<()> {
    use crossterm::cursor::{MoveTo, RestorePosition, SavePosition};
    use crossterm::style::{Print, PrintStyledContent, StyledContent};
    use crossterm::terminal::{Clear, ClearType};
    use ratatui::backend::IntoCrossterm;
    use std::io::Write;
    let out = terminal.backend_mut();
    crossterm::queue!(out, SavePosition)?;
    for (y, row) in rows {
        crossterm::queue!(out, MoveTo(0, y))?;
        for (symbol, style) in row {
            let content = StyledContent::new(style.into_crossterm(), symbol);
            crossterm::queue!(out, PrintStyledContent(content))?;
        }
        crossterm::queue!(out, Print(""), Clear(ClearType::UntilNewLine))?;
    }
    crossterm::queue!(out, RestorePosition)?;
    out.flush()
}

/// Carries out the app's actions; a quit starts the logout and its deadline.
fn carry_out(session: &Session, actions: Vec<Action>, quit_by: &mut Option<tokio::time::Instant>) {
    for action in actions {
        match action {
            Action::Run(command) => session.run(command),
            Action::Quit => {
                session.logout();
                quit_by.get_or_insert_with(|| {
                    tokio::time::Instant::now() + QUIT_TIMEOUT.max(LOGOUT_TIMEOUT)
                });
            }
        }
    }
}

fn ctrl_c() -> crossterm::event::KeyEvent {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_logs_are_appended_per_conversation_under_safe_names() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        append_log(&logs, "#devs", "one").unwrap();
        append_log(&logs, "#devs", "two\n    lines").unwrap();
        append_log(&logs, "../evil", "x").unwrap();
        let text = std::fs::read_to_string(logs.join("#devs.log")).unwrap();
        assert_eq!(text, "one\ntwo\n    lines\n");
        assert!(logs.join("_.._evil.log").exists(), "not a path, not hidden");
    }

    #[test]
    fn the_input_history_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("input-history");
        assert!(load_history(&path).is_empty(), "no file yet");
        let lines = vec!["/list".to_owned(), "two\nlines \\n".to_owned(), "/msg bob hi".into()];
        save_history(&path, &lines).unwrap();
        assert_eq!(load_history(&path), lines);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
