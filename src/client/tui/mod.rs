//! The full-screen terminal client (ratatui + crossterm).
//!
//! The shape follows the ratatui templates: everything the UI reacts to is one
//! [`UiEvent`]; [`App::handle`] changes the state and returns [`Action`]s;
//! [`render::render`] draws the state and changes nothing. [`run`] is the only part that
//! does I/O: it reads the terminal, the server events and a one-second tick, feeds them to
//! the app, carries out its actions and redraws.
//!
//! Requests go to one worker task that sends them one at a time, so their answers come back
//! in the order they were typed.

pub mod app;
pub mod complete;
pub mod input;
pub mod render;

use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

pub use app::{Action, App, Connection, UiEvent};

use super::{Client, Events};
use crate::protocol::now_ms;

/// How long quitting waits for the server to confirm the logout.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the interface on `terminal` until the user quits; returns the final state.
pub async fn run(
    terminal: &mut DefaultTerminal,
    client: Client,
    mut events: Events,
    mut app: App,
) -> std::io::Result<App> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let requests = spawn_requests(client.clone(), replies_tx);
    let mut server_open = true;
    loop {
        terminal.draw(|frame| render::render(&app, frame))?;
        let event = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => UiEvent::Key(k),
                Some(Ok(TermEvent::Paste(text))) => UiEvent::Paste(text),
                Some(Ok(TermEvent::Resize(width, height))) => UiEvent::Resize { width, height },
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => break,
            },
            event = events.next(), if server_open => match event {
                Some(event) => UiEvent::Server(event),
                None => {
                    server_open = false;
                    continue;
                }
            },
            Some(reply) = replies.recv() => reply,
            _ = tick.tick() => UiEvent::Tick(now_ms()),
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
        };
        for action in app.handle(event) {
            match action {
                Action::Send(request) => {
                    let _ = requests.send(request);
                }
                Action::Quit => {}
            }
        }
        if app.quitting() {
            break;
        }
    }
    if app.connection == Connection::Connected {
        let _ = tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await;
    }
    Ok(app)
}

/// Sends requests one at a time and reports each answer as a [`UiEvent::Replied`].
fn spawn_requests(
    client: Client,
    replies: mpsc::UnboundedSender<UiEvent>,
) -> mpsc::UnboundedSender<crate::protocol::Request> {
    let (tx, mut rx) = mpsc::unbounded_channel::<crate::protocol::Request>();
    tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            let result = client.request(request.clone()).await.map_err(|e| e.to_string());
            if replies.send(UiEvent::Replied { request, result }).is_err() {
                break;
            }
        }
    });
    tx
}
