//! The relay server: accept loop, one session task per connection, the hub that routes.
//!
//! [`run`] is what the `confab-server` binary and every integration test call: it takes a
//! bound listener, a store and a shutdown future, serves until the future resolves, then
//! tells every client goodbye, waits briefly for sessions to finish and flushes the store.
//!
//! A message's path: a session task decodes a [`Request`](crate::protocol::Request), the
//! handler in [`cmd`] hands it to the [`hub::Hub`], which checks it, gives it its log id and
//! queues it for the next group commit; the log writer commits it, then encodes the event
//! once and queues the bytes on each live recipient session's inbox, and the sender gets its
//! reply. Each recipient's session task writes its inbox to its socket; a recipient that is
//! offline or still catching up reads it from the log (`delivery`).
//!
//! The accept loop counts each connection against its address ([`limits`]) and against
//! the connection cap, which [`fdlimit`] holds below the descriptor limit; a connection past
//! either is still accepted, told why, and closed.

mod cmd;
mod conn;
pub mod credentials;
pub mod delivery;
pub mod fdlimit;
pub mod hashing;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod lockout;
pub mod password;
pub mod private;
pub mod rate;
pub mod rendezvous;
mod session;
pub mod textlog;
mod tls;

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{now_ms, ErrorCode, ErrorReply, DEFAULT_MAX_FRAME};
use crate::store::{StoreError, StoreHandle};
use hashing::{HashLimits, Hashing};
use hub::log::{LogStart, Mailbox};
use hub::Hub;
use limits::{AddrLimits, AddrTable};
use lockout::Lockout;
use rate::UserRates;
use rendezvous::{RelayCaps, Rendezvous};

/// Server settings. `Default` gives the documented defaults of `confab-server`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether an unknown username may create an account by logging in.
    pub open_registration: bool,
    /// Consecutive failed logins that lock a username (0 disables lockout).
    pub max_failed_logins: u32,
    /// How long a locked username stays locked.
    pub lockout: Duration,
    /// A session with no command for this long is logged out.
    pub idle_timeout: Duration,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame: usize,
    /// Longest message text, in characters.
    pub max_message_chars: usize,
    /// Most simultaneous connections; more are refused with `ServerFull` (also held below
    /// the descriptor limit, see [`fdlimit`]).
    pub max_connections: usize,
    /// What one address may take: connections, new connections a second, logins.
    pub addr_limits: AddrLimits,
    /// How many logins may wait for a password hash, per address and in all.
    pub hash_queue: HashLimits,
    /// Each logged-in user's request rates, per kind.
    pub user_rates: UserRates,
    /// A connection not logged in this long after it was accepted is closed.
    pub login_deadline: Duration,
    /// A frame that stays incomplete this long ends its connection.
    pub frame_timeout: Duration,
    /// Frames queued for one session before it counts as too slow and is disconnected.
    pub session_queue: usize,
    /// A write to a client that takes longer than this ends its session.
    pub write_timeout: Duration,
    /// How long shutdown waits for sessions to say goodbye.
    pub shutdown_grace: Duration,
    /// How long a private chat request waits for an answer before it expires.
    pub private_request_timeout: Duration,
    /// Most messages and bytes of text waiting for one recipient (0: no limit).
    pub mailbox: Mailbox,
    /// Messages older than this are deleted once every recipient has had them (`None`:
    /// kept for ever).
    pub retention: Option<Duration>,
    /// Where to write the log as plain text too (`--text-logs`; see [`textlog`]).
    pub text_logs: Option<std::path::PathBuf>,
    /// The certificate to serve TLS with; `None` serves plaintext (tests, benchmarks).
    pub tls: Option<crate::tls::ServerTls>,
    /// The relay's bandwidth caps.
    pub relay: RelayCaps,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            open_registration: false,
            max_failed_logins: 3,
            lockout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_frame: DEFAULT_MAX_FRAME,
            max_message_chars: 4000,
            max_connections: 20_000,
            addr_limits: AddrLimits::default(),
            hash_queue: HashLimits::default(),
            user_rates: UserRates::default(),
            login_deadline: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(10),
            session_queue: 1024,
            write_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_millis(1500),
            private_request_timeout: Duration::from_secs(60),
            mailbox: Mailbox { messages: 10_000, bytes: 64 << 20 },
            retention: None,
            text_logs: None,
            tls: None,
            relay: RelayCaps::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed while loading the initial state.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The text log directory could not be created.
    #[error("cannot create the text log directory: {0}")]
    TextLogs(#[source] std::io::Error),
}

/// State shared by every session.
pub(crate) struct Shared {
    pub config: Config,
    pub store: StoreHandle,
    pub hub: Hub,
    lockout: Mutex<Lockout>,
    /// Connections and buckets per address.
    addrs: Mutex<AddrTable>,
    /// Turns at password hashing, one per core, shared fairly between addresses.
    pub hashing: Hashing,
    /// The UDP endpoint's bindings and relay links.
    pub rendezvous: Arc<Rendezvous>,
}

impl Shared {
    pub fn lockout(&self) -> MutexGuard<'_, Lockout> {
        self.lockout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn addrs(&self) -> MutexGuard<'_, AddrTable> {
        self.addrs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection counted against its address; given back when dropped.
struct AddrSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        self.shared.addrs().release(self.ip);
    }
}

/// The sockets a server serves on: TCP for sessions and, beside it, UDP for address
/// discovery and the relay ([`rendezvous`]).
#[derive(Debug)]
pub struct Listeners {
    /// Client connections.
    pub tcp: TcpListener,
    /// The rendezvous endpoint; `None` serves without one (no NAT traversal, no relay of
    /// transfers; chats are still relayed over TCP).
    pub udp: Option<UdpSocket>,
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Self {
        Listeners { tcp, udp: None }
    }
}

impl Listeners {
    /// A TCP listener on `addr` and a UDP socket on the same address and port.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(addr).await?;
        let udp = UdpSocket::bind(tcp.local_addr()?).await?;
        Ok(Listeners { tcp, udp: Some(udp) })
    }
}

/// Serves clients on `listeners` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    listeners: impl Into<Listeners>,
    store: StoreHandle,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let closed = store.call(|s| s.close_open_sessions(now_ms())).await?;
    if closed > 0 {
        tracing::info!(closed, "ended sessions left open by an earlier server run");
    }
    let users = store.call(|s| s.usernames()).await?;
    let blocks = store.call(|s| s.blocks()).await?;
    let members = store.call(|s| s.group_members()).await?;
    if let Some(keep) = config.retention {
        prune(&store, keep).await;
    }
    let start = store
        .call(|s| {
            Ok(LogStart {
                last_id: s.last_log_id()?,
                cursors: s.cursors()?,
                backlogs: s.backlogs()?,
            })
        })
        .await?;
    let Listeners { tcp: listener, udp } = listeners.into();
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(users = users.len(), %addr, last_id = start.last_id, "serving");
    let mut hub = Hub::new(users, blocks, members, start, config.mailbox, store.clone());
    if let Some(dir) = &config.text_logs {
        hub = hub.with_text_logs(textlog::TextLogs::open(dir).map_err(ServerError::TextLogs)?);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_connections = fdlimit::connection_cap(config.max_connections);
    if max_connections < config.max_connections {
        tracing::warn!(
            max_connections,
            "the descriptor limit holds the connections below --max-connections"
        );
    }
    let udp_port = udp.as_ref().and_then(|u| u.local_addr().ok()).map_or(0, |a| a.port());
    let rendezvous = Arc::new(Rendezvous::new(udp_port, config.relay));
    let shared = Arc::new(Shared {
        rendezvous: rendezvous.clone(),
        lockout: Mutex::new(Lockout::new(config.max_failed_logins, config.lockout)),
        addrs: Mutex::new(AddrTable::new(config.addr_limits.clone())),
        hashing: Hashing::new(cores, config.hash_queue),
        hub,
        store: store.clone(),
        config,
    });
    let writer = tokio::spawn({
        let shared = shared.clone();
        async move { shared.hub.write_log().await }
    });
    let pruning = config_retention(&shared).map(|keep| {
        let (store, stop) = (store.clone(), CancellationToken::new());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(PRUNE_EVERY) => prune(&store, keep).await,
                    }
                }
            }
        });
        (task, stop)
    });

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Not on the tracker, which counts connections.
    let expiry = tokio::spawn({
        let (shared, stop) = (shared.clone(), stop.clone());
        async move { shared.hub.expire_private_requests(stop).await }
    });
    let presence = tokio::spawn({
        let (shared, stop) = (shared.clone(), stop.clone());
        async move { shared.hub.pace_presence(stop).await }
    });
    let udp = udp.map(|socket| tokio::spawn(rendezvous::serve(socket, rendezvous, stop.clone())));
    let mut accept_failures = AcceptFailures::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning, and say so
                // once in a while rather than at every try.
                let _ = accept_failures.note(&e, Instant::now());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = tracker.len();
        if open >= max_connections + fdlimit::RESERVE as usize / 2 {
            // Even the refusals would eat the descriptors kept for the store: drop it.
            continue;
        }
        let (slot, refusal) = if open >= max_connections {
            let full =
                ErrorReply::new(ErrorCode::ServerFull, "the server is full; try again later");
            (None, Some(full))
        } else {
            match shared.addrs().admit(addr.ip(), Instant::now()) {
                Ok(()) => (Some(AddrSlot { shared: shared.clone(), ip: addr.ip() }), None),
                Err(refusal) => (None, Some(refusal.reply("new connections from your address"))),
            }
        };
        let session = session::serve(socket, addr, shared.clone(), stop.clone(), refusal);
        tracker.spawn(async move {
            session.await;
            drop(slot);
        });
    }

    tracing::info!(sessions = tracker.len(), "shutting down");
    drop(listener);
    // In this order: a session that logs in after the hub tells everyone sees `stop`.
    stop.cancel();
    shared.hub.shut_down_all();
    tracker.close();
    if tokio::time::timeout(shared.config.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(left = tracker.len(), "some sessions did not finish in time");
    }
    if let Some(Err(e)) = match udp {
        Some(task) => Some(task.await),
        None => None,
    } {
        tracing::error!("the UDP endpoint failed: {e}");
    }
    if let Err(e) = presence.await {
        tracing::error!("the presence task failed: {e}");
    }
    if let Err(e) = expiry.await {
        tracing::error!("the private request expiry task failed: {e}");
    }
    if let Some((task, stop)) = pruning {
        stop.cancel();
        let _ = task.await;
    }
    // Every session has ended: the last sends and acknowledgements are committed now.
    shared.hub.close_log();
    if let Err(e) = writer.await {
        tracing::error!("the log writer failed: {e}");
    }
    store.call(|s| s.flush()).await?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// `accept` failures, reported at most once per [`AcceptFailures::EVERY`] with a count.
#[derive(Default)]
struct AcceptFailures {
    since: Option<Instant>,
    count: u64,
}

impl AcceptFailures {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts a failure at `now`; true if it was logged.
    fn note(&mut self, e: &std::io::Error, now: Instant) -> bool {
        self.count += 1;
        if self.since.is_some_and(|since| now < since + Self::EVERY) {
            return false;
        }
        tracing::warn!(failures = self.count, "accept failed: {e}");
        self.since = Some(now);
        self.count = 0;
        true
    }
}

/// How often the log is pruned when a retention is set.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn config_retention(shared: &Shared) -> Option<Duration> {
    shared.config.retention
}

/// Deletes what is older than `keep` and every recipient has had.
async fn prune(store: &StoreHandle, keep: Duration) {
    let before = now_ms().saturating_sub(keep.as_millis().min(i64::MAX as u128) as i64);
    match store.call(move |s| s.prune_log(before)).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "old messages deleted from the log"),
        Err(e) => tracing::error!("cannot prune the message log: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_once_per_period() {
        let mut failures = AcceptFailures::default();
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let start = Instant::now();
        // 20 a second for a minute, as a full descriptor table gives with the 50 ms back-off.
        let logged =
            (0..1200).filter(|i| failures.note(&e, start + Duration::from_millis(50 * i))).count();
        assert_eq!(logged, 6);
    }
}
