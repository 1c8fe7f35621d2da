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
) -> std::io::Result<App> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut quit_by: Option<tokio::time::Instant> = None;
    loop {
        terminal.draw(|frame| render::render(&app, frame))?;
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
                Some(event) => UiEvent::Session(event),
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
        if app.done() {
            break;
        }
    }
    Ok(app)
}

fn ctrl_c() -> crossterm::event::KeyEvent {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}
