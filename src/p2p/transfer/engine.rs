//! The one driver of every transfer: it owns the UDP socket, the files and the timers.
//!
//! [`Transfers::start`] moves the client's UDP socket onto a thread of its own with a
//! single-threaded tokio runtime, so file reads and writes (page-cache copies of at most a
//! few hundred kilobytes at a time) never hold up the user interface. The handle sends it
//! commands; what happens comes back through the callback given to `start`, called on that
//! thread.
//!
//! Each turn of the loop: receive every datagram waiting (with GRO and `recvmmsg` through
//! quinn-udp), check each one and hand it to its machine; act on expired deadlines; read
//! file bytes the senders want and write what the receivers hand out; report events; then
//! send what the machines have, batched into GSO calls of equal-sized datagrams. What a
//! datagram must pass to reach a machine is the [`Endpoint`]'s business, which the engine
//! drives and which counts what it drops ([`Transfers::stats`]).
//!
//! The server announces an incoming file with [`Transfers::expect`] (the sender's address,
//! key and token, the name and size). The sender's first `Offer` datagram must match all of
//! them. The receiver writes into a hidden `.SENDER_FILE.SIZE.part` file in the download
//! directory, and only after the SHA-256 matches moves it to `SENDER_FILE`, adding `-1`,
//! `-2`... before the extension rather than replace a file. A transfer that fails keeps
//! its part file, so offering the same file again resumes from it; a SHA-256 mismatch
//! deletes it.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Seek};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use sha2::{Digest, Sha256};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::congestion::wall_clock_epoch;
use super::endpoint::{
    Connection, Direction, Endpoint, EndpointConfig, IncomingFile, Machine, Transfer, TransferStats,
};
use super::receiver::{resume_point, ReceiverConfig, ReceiverEvent};
use super::sender::{SenderConfig, SenderEvent, SenderStats};
use super::wire::TransferId;
use super::TransferError;
use crate::p2p::identity::Identity;
use crate::p2p::{normalize, Route};
use crate::protocol::rendezvous::{self, relay_header, Datagram, BIND_INTERVAL, RELAY_HEADER};
use crate::protocol::{valid_file_name, Introduction, UdpBinding};

/// How often a transfer's progress is reported at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Receive buffers handed to one `recvmmsg`.
const RECV_BUFFERS: usize = 16;
/// The largest UDP payload, and so the size of one receive buffer's segment.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams one machine may send per turn of the loop before the next gets its turn.
const SEND_BUDGET: usize = 256;
/// `recvmmsg` calls per turn of the loop at most.
const RECV_CALLS: usize = 32;

/// Settings of the transfer engine. `Default` gives what the `confab` client uses.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Where received files go.
    pub download_dir: PathBuf,
    /// Accept every verified offer without asking.
    pub auto_accept: bool,
    /// The sending side's settings (chunk size among them).
    pub sender: SenderConfig,
    /// The receiving side's settings.
    pub receiver: ReceiverConfig,
    /// How long an offer the server announced may take to arrive.
    pub offer_ttl: Duration,
    /// Socket send and receive buffer size asked of the kernel.
    pub socket_buffer: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            download_dir: PathBuf::from("."),
            auto_accept: false,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            offer_ttl: Duration::from_secs(60),
            socket_buffer: 8 << 20,
        }
    }
}

/// What happened to a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// Receiving: the offer arrived; answer with [`Transfers::accept`] or
    /// [`Transfers::decline`]. `resume_from` bytes are here already from an earlier try.
    /// (With `auto_accept` this is followed by `Started` at once, and `accepting` says so:
    /// no answer is asked for.)
    Offered {
        /// The transfer.
        transfer: Transfer,
        /// Bytes a part file from an earlier attempt holds.
        resume_from: u64,
        /// Accepted by itself (`auto_accept`): nobody need answer.
        accepting: bool,
    },
    /// Sending: the receiver has the offer and is asking its user.
    Waiting {
        /// The transfer.
        transfer: Transfer,
    },
    /// A relayed transfer found a direct path and goes that way now.
    Rerouted {
        /// The transfer.
        transfer: Transfer,
        /// Its way from now on.
        route: Route,
    },
    /// The offer was accepted; data flows, starting after `resume_from` bytes.
    Started {
        /// The transfer.
        transfer: Transfer,
        /// Bytes the receiver had already.
        resume_from: u64,
        /// Which way the datagrams go: straight to the peer or through the server's relay.
        route: Route,
    },
    /// Bytes the receiver has acknowledged (sending) or received in order (receiving).
    Progress {
        /// The transfer.
        id: TransferId,
        /// Which way it goes.
        direction: Direction,
        /// Bytes done.
        done: u64,
        /// File size.
        total: u64,
    },
    /// Sending: the receiver has the whole file, SHA-256 checked.
    Sent {
        /// The transfer.
        transfer: Transfer,
        /// What the sender counted: datagrams, retransmissions, probes, the chunk size the
        /// path carried.
        stats: SenderStats,
    },
    /// Receiving: the file is saved at `path`, SHA-256 checked.
    Received {
        /// The transfer.
        transfer: Transfer,
        /// Where it was saved.
        path: PathBuf,
        /// Which way the datagrams came.
        route: Route,
    },
    /// The transfer ended without the file arriving.
    Failed {
        /// The transfer.
        transfer: Transfer,
        /// Why.
        error: TransferError,
    },
}

/// A handle on the transfer engine. Dropping every clone cancels what is still running
/// (telling the peers) and stops the engine's thread.
#[derive(Debug, Clone)]
pub struct Transfers {
    commands: mpsc::UnboundedSender<Command>,
    table: Table,
    stats: Arc<std::sync::Mutex<TransferStats>>,
    local_addr: SocketAddr,
}

impl Transfers {
    /// Starts the engine on `socket` (the UDP socket announced at login) for the user `me`
    /// with its key pair `identity` (whose public half the login announced), reporting
    /// every [`TransferEvent`] to `on_event` from the engine's thread.
    pub fn start(
        socket: std::net::UdpSocket,
        me: &str,
        identity: Identity,
        config: TransferConfig,
        on_event: impl FnMut(TransferEvent) + Send + 'static,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;
        let (commands, rx) = mpsc::unbounded_channel();
        let stats = Arc::default();
        let table = Table::default();
        let mut sender = config.sender.clone();
        // Transfers through one bottleneck, from this client or any other, probe its RTT
        // together only if they count from the same instant: the wall clock's.
        sender.probe_rtt_epoch.get_or_insert_with(wall_clock_epoch);
        let endpoint = Endpoint::new(EndpointConfig {
            me: me.to_owned(),
            identity,
            sender,
            receiver: config.receiver.clone(),
            offer_ttl: config.offer_ttl,
        });
        let shared = Shared { table: table.clone(), stats: Arc::clone(&stats) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Named for the user (the kernel keeps 15 bytes of it), to tell engines apart.
        std::thread::Builder::new().name(format!("transfers {me}")).spawn(move || {
            runtime.block_on(async move {
                let on_event = Box::new(on_event);
                match Engine::new(socket, config, endpoint, shared, on_event) {
                    Ok(engine) => engine.run(rx).await,
                    Err(error) => tracing::error!("file transfers cannot start: {error}"),
                }
            });
        })?;
        Ok(Self { commands, table, stats, local_addr })
    }

    /// The server's UDP endpoint is at `server`, and the session's binding there is
    /// `binding`: the engine binds its socket to the session (so the server learns this
    /// client's reflexive address, and relays to it), again every [`BIND_INTERVAL`] to keep
    /// NATs open, and relayed datagrams come and go through it. Called at every login.
    pub fn rendezvous(&self, server: SocketAddr, binding: UdpBinding) {
        let _ = self.commands.send(Command::Rendezvous { server, binding });
    }

    /// The server announced a file from `incoming.from`: its offer will be let in.
    pub fn expect(&self, incoming: IncomingFile) {
        let _ = self.commands.send(Command::Expect(incoming));
    }

    /// The server announced a file this client refuses: its offer is declined as soon as it
    /// comes (so the sender hears at once), and no event asks the user.
    pub fn refuse(&self, incoming: IncomingFile) {
        let _ = self.commands.send(Command::Refuse(incoming));
    }

    /// Starts sending `file` to the peer of `intro` (the server's answer to
    /// [`Request::SendFile`](crate::protocol::Request::SendFile): its address, key and
    /// token).
    pub fn send(
        &self,
        intro: &Introduction,
        file: OutgoingFile,
    ) -> Result<Transfer, TransferError> {
        let id = rand::random::<TransferId>();
        let OutgoingFile { file, name, size } = file;
        let transfer =
            Transfer { id, peer: intro.peer.clone(), name, size, direction: Direction::Send };
        self.table.insert(&transfer, false);
        let command = Command::Send { transfer: transfer.clone(), intro: intro.clone(), file };
        self.commands.send(command).map_err(|_| stopped())?;
        Ok(transfer)
    }

    /// The oldest offer from `user` that waits for an answer.
    pub fn offer_from(&self, user: &str) -> Option<Transfer> {
        self.table
            .find(|t, accepted| !accepted && t.direction == Direction::Receive && t.peer == user)
    }

    /// Every transfer with `user`, either way, offers included.
    pub fn with(&self, user: &str) -> Vec<Transfer> {
        self.table.all().into_iter().filter(|t| t.peer == user).collect()
    }

    /// Every transfer in progress or waiting for an answer.
    pub fn list(&self) -> Vec<Transfer> {
        self.table.all()
    }

    /// Every transfer under way, with which way it goes and its round trip.
    pub fn links(&self) -> Vec<TransferLink> {
        self.table.links()
    }

    /// Accepts the offer `id` (after [`TransferEvent::Offered`]).
    pub fn accept(&self, id: TransferId) {
        let _ = self.commands.send(Command::Accept(id));
    }

    /// Declines the offer `id`; the sender is told. The offer is gone at once: a later
    /// accept finds nothing to accept.
    pub fn decline(&self, id: TransferId) {
        self.table.remove(id);
        let _ = self.commands.send(Command::Decline(id));
    }

    /// Cancels transfer `id` in either direction; the peer is told.
    pub fn cancel(&self, id: TransferId) {
        let _ = self.commands.send(Command::Cancel(id));
    }

    /// Datagrams dropped so far.
    pub fn stats(&self) -> TransferStats {
        *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The local address of the transfer socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// A file opened for sending, with the name and size the offer will carry.
#[derive(Debug)]
pub struct OutgoingFile {
    file: File,
    /// The file's name, without directories.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

impl OutgoingFile {
    /// Opens `path`, which must be a readable regular file with a usable name.
    pub fn open(path: &Path) -> Result<Self, TransferError> {
        let io_error = |e: io::Error| TransferError::Io(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(io_error)?;
        let meta = file.metadata().map_err(io_error)?;
        if !meta.is_file() {
            return Err(TransferError::Io(format!("{} is not a regular file", path.display())));
        }
        let name =
            path.file_name().and_then(|n| n.to_str()).filter(|n| valid_file_name(n)).ok_or_else(
                || TransferError::Io(format!("{}: unusable file name", path.display())),
            )?;
        Ok(Self { file, name: name.to_owned(), size: meta.len() })
    }
}

/// What the handle can see of the engine's transfers.
#[derive(Debug, Clone, Default)]
struct Table(Arc<std::sync::Mutex<Vec<Entry>>>);

#[derive(Debug, Clone)]
struct Entry {
    transfer: Transfer,
    /// Accepted (and so started).
    accepted: bool,
    /// Which way it goes, once started.
    route: Option<Route>,
    /// The sender's smoothed round trip, once measured.
    rtt: Option<Duration>,
}

/// A transfer under way, for `/peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLink {
    /// The transfer.
    pub transfer: Transfer,
    /// Which way it goes.
    pub route: Route,
    /// The round trip the sender measures (`None` on the receiving side, or not yet).
    pub rtt: Option<Duration>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, transfer: &Transfer, accepted: bool) {
        let entry = Entry { transfer: transfer.clone(), accepted, route: None, rtt: None };
        self.lock().push(entry);
    }

    fn accepted(&self, id: TransferId, route: Route) {
        for entry in self.lock().iter_mut().filter(|e| e.transfer.id == id) {
            entry.accepted = true;
            entry.route = Some(route);
        }
    }

    fn measured(&self, id: TransferId, rtt: Option<Duration>) {
        for entry in self.lock().iter_mut().filter(|e| e.transfer.id == id) {
            entry.rtt = rtt;
        }
    }

    fn remove(&self, id: TransferId) {
        self.lock().retain(|e| e.transfer.id != id);
    }

    fn find(&self, pick: impl Fn(&Transfer, bool) -> bool) -> Option<Transfer> {
        self.lock().iter().find(|e| pick(&e.transfer, e.accepted)).map(|e| e.transfer.clone())
    }

    fn all(&self) -> Vec<Transfer> {
        self.lock().iter().map(|e| e.transfer.clone()).collect()
    }

    fn links(&self) -> Vec<TransferLink> {
        let entries = self.lock();
        let started = entries.iter().filter_map(|e| {
            let route = e.route?;
            Some(TransferLink { transfer: e.transfer.clone(), route, rtt: e.rtt })
        });
        started.collect()
    }
}

fn stopped() -> TransferError {
    TransferError::Io("the transfer engine has stopped".into())
}

/// What the engine shares with the handles.
struct Shared {
    table: Table,
    stats: Arc<std::sync::Mutex<TransferStats>>,
}

#[derive(Debug)]
enum Command {
    Rendezvous { server: SocketAddr, binding: UdpBinding },
    Expect(IncomingFile),
    Refuse(IncomingFile),
    Send { transfer: Transfer, intro: Introduction, file: File },
    Accept(TransferId),
    Decline(TransferId),
    Cancel(TransferId),
}

type OnEvent = Box<dyn FnMut(TransferEvent) + Send>;

/// The file of a transfer.
#[derive(Debug, Default)]
enum Files {
    /// Not known yet (an offer the endpoint has just let in).
    #[default]
    None,
    /// The file being sent.
    Send(File),
    /// The part file being received into, opened once the user accepts.
    Receive { part: PathBuf, file: Option<File> },
}

/// What the engine keeps beside each of the endpoint's transfers.
#[derive(Debug, Default)]
struct Local {
    files: Files,
    /// Accepted: progress is worth reporting.
    started: bool,
    /// The route the user was told of.
    route: Option<Route>,
    reported: Option<(Instant, u64)>,
    over: bool,
}

/// The session's binding on the server's UDP endpoint.
struct Binding {
    /// The endpoint.
    server: SocketAddr,
    binding: UdpBinding,
    /// The last bind's number.
    counter: u64,
    /// When to bind next.
    next: Instant,
    /// Whether the server has answered since the last login.
    answered: bool,
}

/// Until the server answers, binds are repeated this often.
const BIND_RETRY: Duration = Duration::from_millis(250);

struct Engine {
    socket: UdpSocket,
    /// The server's UDP endpoint, once the session has told us.
    rendezvous: Option<Binding>,
    state: UdpSocketState,
    config: TransferConfig,
    endpoint: Endpoint<Local>,
    shared: Shared,
    on_event: OnEvent,
    recv_buffers: Vec<Vec<u8>>,
    out: Vec<u8>,
    batch: Vec<u8>,
    /// Events of this turn, reported once its datagrams are sent.
    outbox: Vec<TransferEvent>,
}

impl Engine {
    fn new(
        socket: std::net::UdpSocket,
        config: TransferConfig,
        endpoint: Endpoint<Local>,
        shared: Shared,
        on_event: OnEvent,
    ) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: the kernel caps these at its limits.
        let _ = state.set_send_buffer_size((&socket).into(), config.socket_buffer);
        let _ = state.set_recv_buffer_size((&socket).into(), config.socket_buffer);
        let socket = UdpSocket::from_std(socket)?;
        let segments = state.gro_segments().max(1);
        let buffer = (MAX_DATAGRAM * segments).min(1 << 20);
        Ok(Self {
            socket,
            rendezvous: None,
            state,
            config,
            endpoint,
            shared,
            on_event,
            recv_buffers: vec![vec![0; buffer]; RECV_BUFFERS],
            out: Vec::with_capacity(MAX_DATAGRAM),
            batch: Vec::with_capacity(MAX_DATAGRAM),
            outbox: Vec::new(),
        })
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                ready = self.socket.readable() => {
                    if let Err(error) = ready {
                        tracing::error!("transfer socket failed: {error}");
                        break;
                    }
                    self.receive();
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.turn().await;
        }
        // Every handle is gone: cancel what runs, tell the peers, and stop.
        for connection in self.endpoint.connections_mut() {
            connection.machine.cancel()
        }
        self.turn().await;
    }

    /// Everything after new input: timeouts, file I/O, events, sending, clean-up.
    async fn turn(&mut self) {
        let now = Instant::now();
        self.endpoint.handle_timeout(now);
        self.bind(now);
        while let Some((punch, addrs)) = self.endpoint.poll_punch(now) {
            for addr in addrs {
                // Best effort, like every first datagram through a NAT.
                let _ = self.socket.try_send_to(&punch, addr);
            }
        }
        let ids = self.endpoint.ids();
        for id in &ids {
            self.service(*id, now);
        }
        self.transmit(&ids, now).await;
        // Reported only now, after sending: a receiver's `Done` is on its way before the
        // application hears "received" (and perhaps exits).
        for event in std::mem::take(&mut self.outbox) {
            (self.on_event)(event);
        }
        for id in ids {
            if self.endpoint.get(id).is_some_and(|c| c.local.over) {
                self.endpoint.remove(id);
                self.shared.table.remove(id);
            }
        }
        *self.shared.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            self.endpoint.stats();
    }

    /// File I/O and events of one transfer.
    fn service(&mut self, id: TransferId, now: Instant) {
        let Some(connection) = self.endpoint.get_mut(id) else {
            return;
        };
        let Connection { transfer, machine, local, route, .. } = connection;
        let mut events = Vec::new();
        match (&mut *machine, &mut local.files) {
            (Machine::Send(sender), Files::Send(file)) => {
                while let Some(range) = sender.wants_data() {
                    let mut data = BytesMut::zeroed((range.end - range.start) as usize);
                    match file.read_exact_at(&mut data, range.start) {
                        Ok(()) => sender.push_data(now, data.freeze()),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            sender.abort(TransferError::FileChanged);
                        }
                        Err(e) => sender.abort(TransferError::Io(format!("reading: {e}"))),
                    }
                }
                while let Some(event) = sender.poll_event() {
                    let t = transfer.clone();
                    events.push(match event {
                        SenderEvent::Waiting => TransferEvent::Waiting { transfer: t },
                        SenderEvent::Accepted { resume_from } => {
                            local.started = true;
                            self.shared.table.accepted(transfer.id, *route);
                            TransferEvent::Started { transfer: t, resume_from, route: *route }
                        }
                        SenderEvent::Finished => {
                            TransferEvent::Sent { transfer: t, stats: sender.stats() }
                        }
                        SenderEvent::Failed(error) => TransferEvent::Failed { transfer: t, error },
                    });
                }
                local.over = sender.is_over();
            }
            (Machine::Receive(receiver), Files::Receive { part, file }) => {
                while let Some((offset, data)) = receiver.poll_write() {
                    let written = match file {
                        Some(file) => file.write_all_at(&data, offset),
                        None => Err(io::Error::other("no part file")),
                    };
                    if let Err(e) = written {
                        receiver
                            .abort(TransferError::Io(format!("writing {}: {e}", part.display())));
                        break;
                    }
                }
                while let Some(event) = receiver.poll_event() {
                    let t = transfer.clone();
                    match event {
                        ReceiverEvent::Verified => {
                            let saved = save(file.take(), part, &self.config.download_dir, &t);
                            receiver.confirm(now, saved.clone().map(|_| ()));
                            // Done; the machine only lingers to repeat its `Done`.
                            self.shared.table.remove(t.id);
                            events.push(match saved {
                                Ok(path) => {
                                    TransferEvent::Received { transfer: t, path, route: *route }
                                }
                                Err(error) => TransferEvent::Failed { transfer: t, error },
                            });
                        }
                        ReceiverEvent::Failed(error) => {
                            // A part file is kept to resume from, unless it holds nothing
                            // (an accept the sender never answered) or the wrong bytes.
                            let empty = std::fs::metadata(&*part).is_ok_and(|m| m.len() == 0);
                            if error == TransferError::HashMismatch || empty {
                                file.take();
                                let _ = std::fs::remove_file(&*part);
                            }
                            events.push(TransferEvent::Failed { transfer: t, error });
                        }
                    }
                }
                local.over = receiver.is_over();
            }
            // A machine without its file: never made so; end it rather than spin.
            (machine, _) => {
                machine.cancel();
                local.over = machine.is_over();
            }
        }
        if local.started && local.route != Some(*route) {
            if local.route.is_some() {
                let t = transfer.clone();
                events.push(TransferEvent::Rerouted { transfer: t, route: *route });
            }
            local.route = Some(*route);
            self.shared.table.accepted(transfer.id, *route);
        }
        if let Some(progress) = progress_event(transfer, machine.progress(), local, now) {
            if let Machine::Send(sender) = &*machine {
                self.shared.table.measured(transfer.id, sender.srtt());
            }
            events.insert(0, progress);
        }
        self.outbox.extend(events);
    }

    /// Sends what every machine has, batching equal-sized datagrams to one peer into GSO
    /// calls. An unanswered offer goes to each of its destinations; a relayed datagram goes
    /// to the server behind the link's header.
    async fn transmit(&mut self, ids: &[TransferId], now: Instant) {
        let max_segments = self.state.max_gso_segments().max(1);
        for id in ids {
            let routes = self.endpoint.destinations(*id, now);
            if routes.len() > 1 {
                while self.endpoint.poll_transmit(*id, now, &mut self.out) {
                    for route in &routes {
                        if let Some(peer) = self.wrap(route) {
                            self.batch.extend_from_slice(&self.out);
                            let len = self.batch.len();
                            self.flush(*id, peer, len, 1).await;
                        }
                    }
                }
                continue;
            }
            // Relayed: now and then one datagram goes straight to the peer too (the copy
            // that comes second is dropped as one, so nothing is lost if the direct way
            // is still closed).
            if let Some(addrs) = self.endpoint.direct_try(*id, now) {
                if self.endpoint.poll_transmit(*id, now, &mut self.out) {
                    for addr in addrs {
                        self.batch.clear();
                        self.batch.extend_from_slice(&self.out);
                        let len = self.batch.len();
                        self.flush(*id, addr, len, 1).await;
                    }
                    if let Some(relay) = routes.first().and_then(|route| self.wrap(route)) {
                        self.batch.extend_from_slice(&self.out);
                        let len = self.batch.len();
                        self.flush(*id, relay, len, 1).await;
                    }
                }
            }
            let Some(peer) = routes.first().and_then(|route| self.wrap(route)) else {
                // Relayed, with no server to relay through: dropped, as on a lossy path.
                while self.endpoint.poll_transmit(*id, now, &mut self.out) {}
                continue;
            };
            let prefix = std::mem::take(&mut self.batch);
            let mut budget = SEND_BUDGET;
            let mut segment = 0;
            let mut count = 0;
            loop {
                let more = budget > 0 && self.endpoint.poll_transmit(*id, now, &mut self.out);
                if !more {
                    self.flush(*id, peer, segment, count).await;
                    break;
                }
                budget -= 1;
                let len = prefix.len() + self.out.len();
                let fits = count > 0
                    && count < max_segments
                    && len <= segment
                    && self.batch.len() + len <= MAX_DATAGRAM;
                if !fits && count > 0 {
                    self.flush(*id, peer, segment, count).await;
                    count = 0;
                }
                if count == 0 {
                    segment = len;
                }
                self.batch.extend_from_slice(&prefix);
                self.batch.extend_from_slice(&self.out);
                count += 1;
                if len < segment {
                    // A shorter datagram can only end a GSO batch.
                    self.flush(*id, peer, segment, count).await;
                    count = 0;
                }
            }
            self.batch.clear();
        }
    }

    /// Where a datagram on `route` is sent, with the relay's header (if any) put in the
    /// (empty) batch first; `None` for the relay when there is no server.
    fn wrap(&mut self, route: &Route) -> Option<SocketAddr> {
        self.batch.clear();
        match route {
            Route::Direct(addr) => Some(*addr),
            Route::Relay(link) => {
                let server = self.rendezvous.as_ref()?.server;
                self.batch.resize(RELAY_HEADER, 0);
                relay_header(link, &mut self.batch);
                Some(server)
            }
        }
    }

    /// Sends the batch of transfer `id`: `count` datagrams of `segment` bytes (the last may
    /// be shorter).
    async fn flush(&mut self, id: TransferId, peer: SocketAddr, segment: usize, count: usize) {
        if count == 0 {
            return;
        }
        let transmit = Transmit {
            destination: peer,
            ecn: None,
            contents: &self.batch,
            segment_size: (count > 1).then_some(segment),
            src_ip: None,
        };
        loop {
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        break;
                    }
                }
                // Larger than the interface's MTU (the socket never fragments): a path MTU
                // probe too far, which the search learns from at once.
                Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => {
                    tracing::debug!("{segment}-byte datagram to {peer} refused as too large");
                    self.endpoint.too_big(id, segment);
                    break;
                }
                // Like a loss on the way: the machines resend what is not acknowledged.
                Err(e) => {
                    tracing::debug!("sending to {peer} failed: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
        self.batch.clear();
    }

    /// Reads every datagram waiting and hands each to its machine.
    fn receive(&mut self) {
        let mut meta = [RecvMeta::default(); RECV_BUFFERS];
        // Bounded, so that a flood cannot starve acknowledgements and timers.
        for _ in 0..RECV_CALLS {
            let mut buffers = std::mem::take(&mut self.recv_buffers);
            let received = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.socket.try_io(Interest::READABLE, || {
                    self.state.recv((&self.socket).into(), &mut slices, &mut meta)
                })
            };
            let count = match received {
                Ok(count) => count,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!("receiving failed: {e}");
                    }
                    self.recv_buffers = buffers;
                    return;
                }
            };
            let now = Instant::now();
            for (buffer, meta) in buffers.iter_mut().zip(&meta).take(count) {
                let stride = meta.stride.max(1);
                let from = normalize(meta.addr);
                let server = self.rendezvous.as_ref().map(|r| r.server);
                for datagram in buffer[..meta.len].chunks_mut(stride) {
                    let opened = if Some(from) == server {
                        Self::from_server(
                            &mut self.endpoint,
                            self.rendezvous.as_mut(),
                            now,
                            datagram,
                        )
                    } else {
                        self.endpoint.handle(now, Route::Direct(from), datagram)
                    };
                    if let Some(id) = opened {
                        self.offered(id);
                    }
                }
            }
            self.recv_buffers = buffers;
        }
    }

    /// A datagram from the server's UDP endpoint: the answer to a bind, or one relayed.
    fn from_server(
        endpoint: &mut Endpoint<Local>,
        binding: Option<&mut Binding>,
        now: Instant,
        datagram: &mut [u8],
    ) -> Option<TransferId> {
        match rendezvous::parse(datagram) {
            Ok(Datagram::Seen { counter, addr }) => {
                if let Some(binding) = binding.filter(|b| b.counter == counter && !b.answered) {
                    tracing::debug!(%addr, "the server sees this client's transfer socket at");
                    binding.answered = true;
                    binding.next = now + BIND_INTERVAL;
                }
                None
            }
            Ok(Datagram::Relay { link, .. }) => {
                let payload = &mut datagram[RELAY_HEADER..];
                endpoint.handle(now, Route::Relay(link), payload)
            }
            _ => None,
        }
    }

    /// Binds the socket to the session at the server, when due.
    fn bind(&mut self, now: Instant) {
        let Some(binding) = self.rendezvous.as_mut().filter(|b| b.next <= now) else {
            return;
        };
        binding.counter += 1;
        binding.next = now + if binding.answered { BIND_INTERVAL } else { BIND_RETRY };
        let bind = rendezvous::bind(&binding.binding, binding.counter);
        let _ = self.socket.try_send_to(&bind, binding.server);
    }

    /// The endpoint let in an offer the server announced: find its part file and ask.
    fn offered(&mut self, id: TransferId) {
        let Some(connection) = self.endpoint.get_mut(id) else {
            return;
        };
        let (transfer, Machine::Receive(_)) = (&connection.transfer, &connection.machine) else {
            return;
        };
        let part = self
            .config
            .download_dir
            .join(format!(".{}_{}.{}.part", transfer.peer, transfer.name, transfer.size));
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let resume_from = resume_point(have, transfer.size);
        connection.local.files = Files::Receive { part, file: None };
        let accepting = self.config.auto_accept;
        let event = TransferEvent::Offered { transfer: transfer.clone(), resume_from, accepting };
        self.shared.table.insert(transfer, false);
        (self.on_event)(event);
        if accepting {
            self.accept(id);
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Rendezvous { server, binding } => {
                // A new login: a new binding (counters start again), bound at once.
                let server = normalize(server);
                self.rendezvous =
                    Some(Binding { server, binding, counter: 0, next: now, answered: false });
            }
            Command::Expect(incoming) => self.endpoint.expect(now, incoming),
            Command::Refuse(incoming) => self.endpoint.expect_refusing(now, incoming),
            Command::Send { transfer, intro, file } => {
                let id = transfer.id;
                let started = self.endpoint.send(now, transfer.clone(), &intro);
                match started {
                    Ok(()) => {
                        if let Some(connection) = self.endpoint.get_mut(id) {
                            connection.local.files = Files::Send(file);
                        }
                    }
                    Err(e) => {
                        self.shared.table.remove(id);
                        let error = TransferError::Io(format!("cannot encrypt the offer: {e}"));
                        self.outbox.push(TransferEvent::Failed { transfer, error });
                    }
                }
            }
            Command::Accept(id) => self.accept(id),
            Command::Decline(id) => {
                if let Some(Machine::Receive(receiver)) =
                    self.endpoint.get_mut(id).map(|c| &mut c.machine)
                {
                    receiver.decline(now);
                    // Over for the user; the machine only lingers to decline a repeat.
                    self.shared.table.remove(id);
                }
            }
            Command::Cancel(id) => {
                if let Some(connection) = self.endpoint.get_mut(id) {
                    connection.machine.cancel()
                }
            }
        }
    }

    /// Opens (or reopens) the part file, hashes what it holds, and accepts.
    fn accept(&mut self, id: TransferId) {
        let now = Instant::now();
        let Some(connection) = self.endpoint.get_mut(id) else {
            return;
        };
        let Connection { transfer, machine, local, route, .. } = connection;
        let (Machine::Receive(receiver), Files::Receive { part, file }) =
            (machine, &mut local.files)
        else {
            return;
        };
        if file.is_some() {
            return;
        }
        match open_part(part, transfer.size) {
            Ok((opened, resume_from, prefix)) => {
                *file = Some(opened);
                receiver.accept(now, resume_from, prefix);
                local.started = true;
                self.shared.table.accepted(id, *route);
                let transfer = transfer.clone();
                (self.on_event)(TransferEvent::Started { transfer, resume_from, route: *route });
            }
            Err(e) => receiver.abort(TransferError::Io(format!("{}: {e}", part.display()))),
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        // Only a transfer that moved since its last report has one due: a finished one that
        // lingers (to repeat its `Done`) would otherwise keep a deadline in the past, and
        // the loop would spin until it goes.
        let progress = self
            .endpoint
            .connections_mut()
            .filter_map(|c| {
                let (at, last) = c.local.reported?;
                (c.machine.progress().0 != last).then_some(at + PROGRESS_INTERVAL)
            })
            .min();
        let bind = self.rendezvous.as_ref().map(|r| r.next);
        self.endpoint.poll_timeout().into_iter().chain(progress).chain(bind).min().unwrap_or(far)
    }
}

/// Opens the part file, keeps what it holds (up to the file's size), and hashes it.
fn open_part(part: &Path, size: u64) -> io::Result<(File, u64, Sha256)> {
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(part)?;
    let have = file.metadata()?.len();
    let resume_from = resume_point(have, size);
    file.set_len(resume_from)?;
    let mut hasher = Sha256::new();
    file.rewind()?;
    let mut buffer = vec![0; 1 << 20];
    let mut left = resume_from;
    while left > 0 {
        let n = file.read(&mut buffer[..left.min(1 << 20) as usize])?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        hasher.update(&buffer[..n]);
        left -= n as u64;
    }
    Ok((file, resume_from, hasher))
}

/// Moves a verified part file to `SENDER_NAME` in `dir`, never replacing a file.
fn save(
    file: Option<File>,
    part: &Path,
    dir: &Path,
    transfer: &Transfer,
) -> Result<PathBuf, TransferError> {
    let io_error = |e: io::Error| TransferError::Io(format!("saving {}: {e}", transfer.name));
    if let Some(file) = file {
        file.sync_all().map_err(io_error)?;
    }
    let name = format!("{}_{}", transfer.peer, transfer.name);
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name.clone(), String::new()),
    };
    for n in 0u32.. {
        let candidate = if n == 0 { dir.join(&name) } else { dir.join(format!("{stem}-{n}{ext}")) };
        // A hard link fails rather than replace an existing file, unlike rename.
        match std::fs::hard_link(part, &candidate) {
            Ok(()) => {
                std::fs::remove_file(part).map_err(io_error)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
    unreachable!("u32 names ran out")
}

/// A progress event for a transfer if it moved and the last one is old enough.
fn progress_event(
    transfer: &Transfer,
    (done, total): (u64, u64),
    local: &mut Local,
    now: Instant,
) -> Option<TransferEvent> {
    if !local.started {
        return None;
    }
    let due = match local.reported {
        None => true,
        Some((at, last)) => done != last && (done == total || now >= at + PROGRESS_INTERVAL),
    };
    if !due {
        return None;
    }
    local.reported = Some((now, done));
    let direction = transfer.direction;
    Some(TransferEvent::Progress { id: transfer.id, direction, done, total })
}
