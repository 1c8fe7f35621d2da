//! Shared helpers: a real server on 127.0.0.1:0 with a few accounts, and logged-in clients.
#![allow(dead_code)]

pub mod binaries;
pub mod lab;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use confab::client::session::{self, CommandError};
use confab::client::{Client, ClientError, ClientEvent, Events};
use confab::p2p::identity::{Identity, PeerTrust, VerifiedPeers};
use confab::p2p::{ChatConfig, DirectSockets, PrivateChats, PrivateEvent, PrivateEvents};
use confab::protocol::{ErrorCode, Event, Introduction};
use confab::server::rate::UserRates;
use confab::server::{self, password, Config};
use confab::store::{SqliteStore, Store, StoreHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The accounts every test server has; each password is the name followed by "-pw".
pub const USERS: &[&str] = &["alice", "bob", "carol", "dave"];

pub fn password_of(user: &str) -> String {
    format!("{user}-pw")
}

/// A store with the [`USERS`] accounts.
pub fn seeded_store(path: impl AsRef<Path>) -> SqliteStore {
    let mut store = SqliteStore::open(path).unwrap();
    for user in USERS {
        store.create_user(user, &password::hash(&password_of(user)), 0).unwrap();
    }
    store
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// A server with an in-memory store holding [`USERS`].
    pub async fn start(config: Config) -> Self {
        Self::with_store(seeded_store(":memory:"), config).await
    }

    /// A server on the given store, for tests of something other than the abuse limits:
    /// its per-address limits exempt 127.0.0.1, where every test's clients come from, and
    /// the per-user request rates are off (tests send in bulk as load). tests/abuse.rs uses
    /// [`TestServer::strict`].
    pub async fn with_store(store: impl Store, mut config: Config) -> Self {
        config.addr_limits.exempt.push("127.0.0.1/32".parse().unwrap());
        config.user_rates = UserRates::off();
        Self::strict(store, config).await
    }

    /// A server on the given store with `config` exactly as given.
    /// It listens on UDP too, on the same port, as `confab-server` does.
    pub async fn strict(store: impl Store, config: Config) -> Self {
        let listener = server::Listeners::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.tcp.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server::run(listener, StoreHandle::spawn(store), config, shutdown).await.unwrap();
        });
        Self { addr, stop: Some(stop), task }
    }

    /// A server with default settings on a new database file at `db`, holding [`USERS`].
    pub async fn on_disk(db: &Path) -> Self {
        Self::with_store(seeded_store(db), Config::default()).await
    }

    /// A server with default settings on the database file an earlier server left at `db`.
    pub async fn reopen(db: &Path) -> Self {
        Self::with_store(SqliteStore::open(db).unwrap(), Config::default()).await
    }

    /// Shuts the server down gracefully and waits until `run` has returned.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task).await.expect("server stops").unwrap();
    }

    /// A connected client that has not logged in.
    pub async fn connect(&self) -> (Client, Events) {
        Client::connect(self.addr).await.unwrap()
    }

    /// A logged-in client for one of [`USERS`].
    pub async fn login(&self, user: &str) -> (Client, Events) {
        let (client, events) = self.connect().await;
        client.login(user, &password_of(user)).await.unwrap();
        (client, events)
    }
}

/// The next server event other than [`Event::CaughtUp`] (which ends every login's catch-up),
/// failing the test if none comes in time. A message is acknowledged as shown.
pub async fn next_event(events: &mut Events) -> Event {
    loop {
        match next_any_event(events).await {
            Event::CaughtUp => continue,
            event => {
                if let Some(id) = event.message_id() {
                    events.ack(id);
                }
                return event;
            }
        }
    }
}

/// The next server event, [`Event::CaughtUp`] included, acknowledging nothing.
pub async fn next_any_event(events: &mut Events) -> Event {
    match tokio::time::timeout(PATIENCE, events.next()).await {
        Ok(Some(ClientEvent::Server(event))) => event,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no event within {PATIENCE:?}"),
    }
}

/// Waits until the connection closes, failing the test if it does not.
pub async fn closed(events: &mut Events) {
    loop {
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(ClientEvent::Closed { .. }) | None) => return,
            Ok(Some(ClientEvent::Server(_))) => continue,
            Err(_) => panic!("the connection did not close within {PATIENCE:?}"),
        }
    }
}

/// The next event, which must be a direct message; returns `(from, text)`.
pub async fn next_message(events: &mut Events) -> (String, String) {
    match next_event(events).await {
        Event::Message { from, text, .. } => (from, text),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Skips presence events until a message or broadcast arrives; returns `(from, text)`.
pub async fn next_text(events: &mut Events) -> (String, String) {
    loop {
        match next_event(events).await {
            Event::Message { from, text, .. } | Event::Broadcast { from, text, .. } => {
                return (from, text)
            }
            Event::Presence { .. } => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The next event that is not a presence change.
pub async fn next_non_presence(events: &mut Events) -> Event {
    loop {
        match next_event(events).await {
            Event::Presence { .. } => continue,
            other => return other,
        }
    }
}

/// Proves that `events` (the session of `to`) received nothing since it was last read:
/// `marker` sends `to` a message, which must be the very next event.
pub async fn assert_quiet(events: &mut Events, marker: &Client, to: &str) {
    marker.msg(to, "marker").await.unwrap();
    match next_event(events).await {
        Event::Message { text, .. } if text == "marker" => {}
        other => panic!("expected only the marker, got {other:?} first"),
    }
}

/// The server's error code for a request that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    result.expect_err("the request should fail").code().expect("a server error")
}

/// A logged-in user whose client takes private chats, set up as the `confab` binary does it.
pub struct Direct {
    pub name: String,
    pub client: Client,
    pub events: Events,
    pub chats: PrivateChats,
    pub private: PrivateEvents,
    /// The client's key pair, announced at login.
    pub identity: Identity,
    /// The peers' keys this client has verified.
    pub pins: VerifiedPeers,
    /// The private-chat listener's port, as announced at login.
    pub port: u16,
    /// The file-transfer socket, bound and announced at login.
    pub udp: tokio::net::UdpSocket,
}

impl TestServer {
    /// [`TestServer::login`], announcing direct sockets and starting private chats.
    pub async fn login_direct(&self, user: &str) -> Direct {
        self.login_direct_with(user, ChatConfig::default()).await
    }

    /// [`TestServer::login_direct`] with private-chat settings.
    pub async fn login_direct_with(&self, user: &str, config: ChatConfig) -> Direct {
        let (client, events) = self.connect().await;
        let sockets = DirectSockets::bind(client.local_addr().ip(), 0, 0).await.unwrap();
        let (identity, pins) = (Identity::generate(), VerifiedPeers::in_memory());
        let endpoint = sockets.endpoint(&identity);
        client.login_with(user, &password_of(user), Some(endpoint)).await.unwrap();
        let DirectSockets { tcp, udp, .. } = sockets;
        // These chats are direct, on loopback: nothing is relayed.
        let no_relay = tokio::sync::mpsc::unbounded_channel().0;
        let (chats, private) =
            PrivateChats::start(user, identity.clone(), pins.clone(), tcp, config, no_relay);
        let (name, port) = (user.to_owned(), endpoint.tcp);
        Direct { name, client, events, chats, private, identity, pins, port, udp }
    }
}

/// The next private-chat event, failing the test if none comes in time.
pub async fn next_private(events: &mut PrivateEvents) -> PrivateEvent {
    match tokio::time::timeout(PATIENCE, events.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the private events ended"),
        Err(_) => panic!("no private event within {PATIENCE:?}"),
    }
}

/// The next private-chat event, which must be a message; returns `(peer, text)`.
pub async fn next_private_message(events: &mut PrivateEvents) -> (String, String) {
    match next_private(events).await {
        PrivateEvent::Message { peer, text, .. } => (peer, text),
        other => panic!("expected a private message, got {other:?}"),
    }
}

/// A chat with `peer` opened, with a key nobody verified.
/// Asserts that `event` says a chat with `peer` opened, unverified, over a direct
/// connection (every test here is on one host).
pub fn assert_opened(event: PrivateEvent, peer: &str) {
    let direct = matches!(&event, PrivateEvent::Opened {
        peer: p, trust: PeerTrust::Unverified, route: confab::p2p::Route::Direct(_)
    } if p == peer);
    assert!(direct, "expected a direct chat with {peer} to open, got {event:?}");
}

/// The full introduction: `a` asks, `b` is asked and accepts, `a` connects, both see the
/// chat open. Returns the introduction `a` was given (`b`'s address and the token).
pub async fn open_private(a: &mut Direct, b: &mut Direct) -> Introduction {
    session::request_private(&a.client, &a.chats, &b.name).await.unwrap();
    match next_non_presence(&mut b.events).await {
        Event::PrivateRequest { from, .. } => assert_eq!(from, a.name),
        other => panic!("expected a private chat request, got {other:?}"),
    }
    session::accept_private(&b.client, &b.chats, &a.name).await.unwrap();
    let intro = match next_non_presence(&mut a.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("expected an acceptance, got {other:?}"),
    };
    a.chats.connect(intro.clone());
    assert_opened(next_private(&mut a.private).await, &b.name);
    assert_opened(next_private(&mut b.private).await, &a.name);
    intro
}

/// Proves that `events` (of `to`'s private chats) received nothing since last read: `marker`
/// sends `to` a private message, which must be the very next event.
pub async fn assert_private_quiet(events: &mut PrivateEvents, marker: &Direct, to: &str) {
    marker.chats.send(to, "marker").await.unwrap();
    match next_private(events).await {
        PrivateEvent::Message { peer, text, .. } if peer == marker.name && text == "marker" => {}
        other => panic!("expected only the marker, got {other:?} first"),
    }
}

/// The server's error code for a private-chat command that must fail on the server.
pub fn private_code<T: std::fmt::Debug>(result: Result<T, CommandError>) -> ErrorCode {
    match result.expect_err("the command should fail") {
        CommandError::Server(e) => e.code().expect("a server error"),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Bytes a test relay has carried in one direction.
pub type Wire = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Copies `from` to `to` until either end closes, keeping every byte in `record`; `alter`
/// may change each read (given the bytes carried before it) after it is recorded and
/// before it is passed on. Shuts `to` down at the end.
pub async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Wire,
    mut alter: impl FnMut(usize, &mut [u8]),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut buf, mut carried) = (vec![0u8; 64 * 1024], 0);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        alter(carried, &mut buf[..n]);
        carried += n;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
