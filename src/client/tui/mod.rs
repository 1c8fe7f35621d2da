//! The full-screen terminal client (ratatui + crossterm).
//!
//! The shape follows the ratatui templates: everything the UI reacts to is one
//! [`UiEvent`]; [`App::handle`] changes the state and returns [`Action`]s;
//! [`render::render`] draws the state and changes nothing. [`run`] is the only part that
//! does I/O: it reads the terminal, the server events and a one-second tick, feeds them to
//! the app, carries out its actions and redraws.
//!
//! File transfers run on the transfer engine's own thread; their events come in through a
//! channel, and the status bar shows a gauge for each.
//!
//! Requests (and private messages) go to one worker task that carries them out one at a
//! time, so their answers come back in the order they were typed. Private chats run beside
//! the server connection: when the server goes away the interface stays, and `/private`
//! keeps working.

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

use super::{files, format, Client, ClientEvent, Events};
use crate::p2p::transfer::{TransferEvent, Transfers};
use crate::p2p::{PrivateChats, PrivateEvents};
use crate::protocol::{now_ms, ByeReason};

/// How long quitting waits for the server to confirm the logout.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// The connections the interface drives.
pub struct Links {
    /// The server connection.
    pub client: Client,
    /// Its events.
    pub events: Events,
    /// The private chats.
    pub chats: PrivateChats,
    /// Their events.
    pub private: PrivateEvents,
    /// The file-transfer engine.
    pub transfers: Transfers,
    /// Its events (the engine's callback sends them here).
    pub transfer_events: mpsc::UnboundedReceiver<TransferEvent>,
}

/// Runs the interface on `terminal` until the user quits; returns the final state.
pub async fn run(
    terminal: &mut DefaultTerminal,
    links: Links,
    mut app: App,
) -> std::io::Result<App> {
    let Links { client, mut events, chats, mut private, transfers, mut transfer_events } = links;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let jobs = spawn_worker(client.clone(), chats.clone(), transfers.clone(), replies_tx);
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
            Some(event) = private.next() => UiEvent::Private(event),
            Some(event) = transfer_events.recv() => UiEvent::Transfer(event),
            _ = tick.tick() => UiEvent::Tick(now_ms()),
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
        };
        let shown = match &event {
            UiEvent::Server(ClientEvent::Server(event)) => event.message_id(),
            _ => None,
        };
        let actions = app.handle(event);
        // In the pane now: the server need not send it again.
        if let Some(id) = shown {
            client.ack(id);
        }
        for action in actions {
            match action {
                Action::Connect(intro) => chats.connect(intro),
                Action::Expect(incoming) => transfers.expect(incoming),
                Action::CloseChats(reason) => chats.close_all(reason).await,
                Action::Quit => {}
                job => {
                    let _ = jobs.send(job);
                }
            }
        }
        if app.quitting() {
            break;
        }
    }
    chats.close_all(ByeReason::LoggedOut).await;
    if app.connection == Connection::Connected {
        let _ = tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await;
    }
    Ok(app)
}

/// Carries out requests and private messages one at a time and reports each outcome as a
/// [`UiEvent`].
fn spawn_worker(
    client: Client,
    chats: PrivateChats,
    transfers: Transfers,
    replies: mpsc::UnboundedSender<UiEvent>,
) -> mpsc::UnboundedSender<Action> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Action>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let event = match job {
                Action::Send(request) => {
                    let result = chats.server_request(&client, request.clone()).await;
                    UiEvent::Replied { request, result: result.map_err(|e| e.to_string()) }
                }
                Action::Private { to, text } => {
                    let result = chats.send(&to, &text).await.map_err(|e| e.to_string());
                    if result.is_ok() {
                        // The server does not see private messages, but they are activity:
                        // without this, chatting privately would end in an idle timeout.
                        let _ = client.keep_alive().await;
                    }
                    UiEvent::PrivateSent { to, text, result }
                }
                Action::StopPrivate { user } => {
                    let result = chats.stop(&user).await.map_err(|e| e.to_string());
                    UiEvent::PrivateStopped { user, result }
                }
                Action::File(command) => {
                    let result = files::run(&client, &transfers, command).await;
                    UiEvent::FileDone(result.map_err(format::error))
                }
                Action::Connect(_) | Action::CloseChats(_) | Action::Expect(_) | Action::Quit => {
                    continue
                }
            };
            if replies.send(event).is_err() {
                break;
            }
        }
    });
    tx
}
