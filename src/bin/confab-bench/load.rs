//! The load generator: many client connections driven from one thread, speaking Confab or IRC.
//!
//! Everything runs on a single-threaded runtime (a `LocalSet`), so that the generator takes at
//! most one of the machine's cores and its shared state needs no atomics. Connections are raw
//! sockets, not [`confab::client::Client`]s: each one is a task that reads whatever arrived
//! into one shared scratch buffer, finds the benchmark messages in it by a marker, and writes
//! what it has to send with one `write` per batch.
//!
//! With TLS (the `Confab TLS` column), each connection does the handshake with tokio-rustls,
//! then keeps the rustls connection beside its raw socket: a read takes the ciphertext into a
//! second scratch buffer and decrypts it into the first, a flush encrypts `out` and writes
//! the records. The generator trusts any certificate: it talks to its own server on loopback.
//!
//! Every message text is `@@SENDER:SLOT:NANOS:` padded to [`TEXT_LEN`] characters: the
//! sending client's index, which of its window slots the message holds, and the send time in
//! nanoseconds since the generator's epoch, so that the receiver computes the latency and
//! gives the sender its credit back. A sender keeps at most a window of messages outstanding,
//! a message being outstanding until every one of its copies has arrived, so that no
//! recipient's backlog can grow without bound (closed loop: "as fast as the server takes
//! them"), or,
//! at a fixed offered load, one pacer task sends on a schedule without ever waiting for the
//! server (open loop), so that a stalled server shows up in the latencies instead of slowing
//! the load down.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::either::Either;

use crate::run::BenchError;
use crate::target::{user_name, PASSWORD};
use confab::protocol::{
    codec, ClientMessage, Hello, Reply, Request, ServerMessage, PROTOCOL_VERSION,
};

/// Characters in every benchmark message text.
pub const TEXT_LEN: usize = 48;
/// The group (Confab) or channel (IRC, with a `#`) of the fan-out workload.
pub const GROUP: &str = "bench";
/// What starts the benchmark data in a message text.
const MARK: &[u8] = b"@@";
/// Read size; one read takes everything a connection has waiting, up to this.
const SCRATCH: usize = 256 * 1024;
/// Connections logging in at the same time.
const SETUP_CONCURRENCY: usize = 64;
/// Tries at connecting a client whose connection was reset or refused.
const SETUP_ATTEMPTS: u32 = 5;
/// Most latency samples kept per measurement.
const MAX_SAMPLES: usize = 20_000_000;

/// The protocol a generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Confab's framed MessagePack.
    Confab,
    /// IRC lines.
    Irc,
}

/// What a connection sends when it has credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Direct messages to random other clients.
    Direct,
    /// Messages to the group every client has joined.
    Group,
}

/// What was seen during a measurement window.
#[derive(Debug, Default)]
pub struct Window {
    /// Deliveries received inside the window.
    pub delivered: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Latencies, in nanoseconds, of the messages sent inside the window.
    pub latencies: Vec<u64>,
}

impl Window {
    /// The `q`-quantile (0..=1) of the latencies, in microseconds.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_unstable();
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        Some(self.latencies[rank - 1] as f64 / 1000.0)
    }
}

/// Shared state of one generator: the connections' credits, the counters, the clock.
struct Ctx {
    proto: Proto,
    pattern: Pattern,
    epoch: Instant,
    /// Messages one sender may have outstanding before it waits (0 while not sending).
    window: Cell<u32>,
    /// Deliveries of paced messages not yet received.
    paced: Cell<u64>,
    /// Deliveries each message makes (1, or the group size minus one).
    copies: u32,
    conns: RefCell<Vec<Rc<Conn>>>,
    names: Vec<String>,
    scratch: RefCell<Vec<u8>>,
    /// Window bounds in ns since `epoch`; `u64::MAX` when not set.
    start: Cell<u64>,
    end: Cell<u64>,
    delivered: Cell<u64>,
    latencies: RefCell<Vec<u64>>,
    last_rx: Cell<u64>,
    ready: Cell<usize>,
    closed: Cell<usize>,
    failure: RefCell<Option<String>>,
    progress: Notify,
    group_created: Notify,
    /// The TLS settings, if the server speaks TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where TLS reads put the ciphertext before it is decrypted into `scratch`.
    cipher: RefCell<Vec<u8>>,
}

/// One client connection.
struct Conn {
    index: usize,
    stream: TcpStream,
    /// Bytes to write.
    out: RefCell<BytesMut>,
    /// An incomplete frame or line left over from the last read.
    partial: RefCell<Vec<u8>>,
    /// Copies not yet received of the message in each window slot.
    slots: RefCell<Vec<u32>>,
    /// Slots holding a message.
    busy: Cell<u32>,
    wake: Notify,
    next_id: Cell<u32>,
    rng: RefCell<StdRng>,
    /// The connection's TLS state, if the server speaks TLS.
    tls: Option<RefCell<rustls::ClientConnection>>,
}

/// A set of connected, logged-in clients against one server.
pub struct Generator {
    ctx: Rc<Ctx>,
}

impl Generator {
    /// Connects and logs in `n` clients (`u0`..), all of which join the group when `pattern`
    /// is [`Pattern::Group`], over TLS if `tls`. Must run inside a `LocalSet`.
    pub async fn connect(
        proto: Proto,
        addr: SocketAddr,
        n: usize,
        pattern: Pattern,
        limit: Duration,
        tls: bool,
    ) -> Result<Self, BenchError> {
        let ctx = Rc::new(Ctx {
            proto,
            pattern,
            epoch: Instant::now(),
            window: Cell::new(0),
            paced: Cell::new(0),
            copies: match pattern {
                Pattern::Direct => 1,
                Pattern::Group => n.saturating_sub(1).max(1) as u32,
            },
            conns: RefCell::new(Vec::with_capacity(n)),
            names: (0..n).map(user_name).collect(),
            scratch: RefCell::new(vec![0; SCRATCH]),
            start: Cell::new(u64::MAX),
            end: Cell::new(u64::MAX),
            delivered: Cell::new(0),
            latencies: RefCell::new(Vec::new()),
            last_rx: Cell::new(0),
            ready: Cell::new(0),
            closed: Cell::new(0),
            failure: RefCell::new(None),
            progress: Notify::new(),
            group_created: Notify::new(),
            tls: tls.then(tls_config),
            cipher: RefCell::new(if tls { vec![0; SCRATCH] } else { Vec::new() }),
        });
        let permits = Rc::new(Semaphore::new(SETUP_CONCURRENCY));
        for i in 0..n {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            tokio::task::spawn_local(async move {
                let set_up = {
                    let Ok(_permit) = permits.acquire().await else { return };
                    let mut attempt = 1;
                    loop {
                        match setup(&ctx, addr, i).await {
                            // ngIRCd listens with a backlog of 10: a burst of connects can be
                            // reset before it accepts them. Try such a client again.
                            Err(BenchError::Io { .. }) if attempt < SETUP_ATTEMPTS => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            done => break done,
                        }
                    }
                };
                match set_up {
                    Ok(conn) => {
                        ctx.conns.borrow_mut().push(conn.clone());
                        ctx.ready.set(ctx.ready.get() + 1);
                        ctx.progress.notify_one();
                        run_conn(&ctx, &conn).await;
                    }
                    Err(e) => {
                        ctx.failure.borrow_mut().get_or_insert(format!("client {i}: {e}"));
                        ctx.progress.notify_one();
                    }
                }
            });
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(e) = ctx.failure.borrow().clone() {
                return Err(BenchError::Setup(e));
            }
            if ctx.ready.get() == n {
                break;
            }
            if tokio::time::timeout_at(deadline, ctx.progress.notified()).await.is_err() {
                return Err(BenchError::Setup(format!(
                    "only {} of {n} clients logged in within {limit:?}",
                    ctx.ready.get()
                )));
            }
        }
        // Sorted by index, so that a message's sender field finds its connection.
        ctx.conns.borrow_mut().sort_by_key(|c| c.index);
        Ok(Self { ctx })
    }

    /// Lets every client send, keeping at most `window` messages outstanding each.
    pub fn start_sending(&self, window: u32) {
        for conn in self.ctx.conns.borrow().iter() {
            conn.slots.borrow_mut().resize(window as usize, 0);
        }
        self.ctx.window.set(window);
        for conn in self.ctx.conns.borrow().iter() {
            conn.wake.notify_one();
        }
    }

    /// Stops the clients from sending anything new.
    pub fn stop_sending(&self) {
        self.ctx.window.set(0);
    }

    /// Sends messages from random clients to random others at `rate` per second until
    /// `stop` passes. The pacer never waits for the server, so a slow server cannot slow the
    /// offered load down; each message is stamped when it is written, as the runtime's timer
    /// (1 ms) would otherwise add up to a millisecond of the pacer's own lateness.
    pub async fn pace(&self, rate: f64, stop: Instant) {
        let ctx = &self.ctx;
        let conns = ctx.conns.borrow().clone();
        let mut rng = StdRng::seed_from_u64(7);
        let begin = Instant::now();
        let mut sent: u64 = 0;
        while Instant::now() < stop {
            let due = (begin.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let from = rng.gen_range(0..conns.len());
                let conn = &conns[from];
                let to = other(&mut rng, from, conns.len());
                compose(ctx, conn, to, NO_SLOT, ctx.now());
                ctx.paced.set(ctx.paced.get() + u64::from(ctx.copies));
                if conn.flush().is_err() || !conn.out.borrow().is_empty() {
                    conn.wake.notify_one();
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts the measurement window now.
    pub fn begin_window(&self) {
        let ctx = &self.ctx;
        ctx.delivered.set(0);
        ctx.latencies.borrow_mut().clear();
        ctx.end.set(u64::MAX);
        ctx.start.set(ctx.now());
    }

    /// Ends the measurement window now. Latencies of messages sent inside it keep arriving
    /// until [`Generator::finish`].
    pub fn end_window(&self) {
        self.ctx.end.set(self.ctx.now());
    }

    /// Waits (at most `limit`) until nothing is outstanding, then returns the window.
    pub async fn finish(&self, limit: Duration) -> Window {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.outstanding() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ctx = &self.ctx;
        let end = ctx.end.get().min(ctx.now());
        Window {
            delivered: ctx.delivered.get(),
            elapsed: Duration::from_nanos(end.saturating_sub(ctx.start.get())),
            latencies: std::mem::take(&mut *ctx.latencies.borrow_mut()),
        }
    }

    /// Messages (windowed) and deliveries (paced) not yet received.
    pub fn outstanding(&self) -> u64 {
        let windowed: u64 = self.ctx.conns.borrow().iter().map(|c| u64::from(c.busy.get())).sum();
        windowed + self.ctx.paced.get()
    }

    /// Waits until no client has received anything for `quiet` (at most `limit`).
    pub async fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let quiet_ns = quiet.as_nanos() as u64;
        while Instant::now() < deadline
            && self.ctx.now().saturating_sub(self.ctx.last_rx.get()) < quiet_ns
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connections the server closed.
    pub fn closed(&self) -> usize {
        self.ctx.closed.get()
    }
}

impl Ctx {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A copy of the message in `slot` of `sender`, stamped `sent`, arrived at `now`.
    fn delivered(&self, Mark { sender, slot, sent }: Mark, now: u64) {
        if slot == NO_SLOT {
            self.paced.set(self.paced.get().saturating_sub(1));
        } else if let Some(conn) = self.conns.borrow().get(sender) {
            let mut slots = conn.slots.borrow_mut();
            if let Some(left) = slots.get_mut(slot) {
                if *left == 1 {
                    // The message is complete: its slot is free again.
                    conn.busy.set(conn.busy.get().saturating_sub(1));
                    conn.wake.notify_one();
                }
                *left = left.saturating_sub(1);
            }
        }
        let (start, end) = (self.start.get(), self.end.get());
        if now >= start && now < end {
            self.delivered.set(self.delivered.get() + 1);
        }
        if sent >= start && sent < end {
            let mut latencies = self.latencies.borrow_mut();
            if latencies.len() < MAX_SAMPLES {
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
}

impl Conn {
    /// Whether something waits to be written.
    fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
            || self.tls.as_ref().is_some_and(|tls| tls.borrow().wants_write())
    }

    /// Writes as much of `out` as the socket takes now.
    fn flush(&self) -> std::io::Result<()> {
        let mut out = self.out.borrow_mut();
        if let Some(tls) = &self.tls {
            let mut tls = tls.borrow_mut();
            if !out.is_empty() {
                std::io::Write::write_all(&mut tls.writer(), &out)?;
                out.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(&mut Nonblocking(&self.stream)) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        while !out.is_empty() {
            match self.stream.try_write(&out) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() && out.capacity() > 64 * 1024 {
            *out = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what has arrived and handles every complete frame or line. False when the
    /// connection is closed or failed.
    fn read(&self, ctx: &Ctx) -> bool {
        let mut scratch = ctx.scratch.borrow_mut();
        let mut partial = self.partial.borrow_mut();
        let kept = partial.len();
        if scratch.len() < kept * 2 {
            scratch.resize(kept * 2, 0);
        }
        scratch[..kept].copy_from_slice(&partial);
        let n = match &self.tls {
            None => self.stream.try_read(&mut scratch[kept..]),
            Some(tls) => {
                let mut cipher = ctx.cipher.borrow_mut();
                decrypt(&self.stream, &mut tls.borrow_mut(), &mut cipher, &mut scratch, kept)
            }
        };
        let n = match n {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        let now = ctx.now();
        ctx.last_rx.set(now);
        let data = &scratch[..kept + n];
        let used = match ctx.proto {
            Proto::Confab => {
                let mut got = false;
                let used = scan_frames(data, |payload| {
                    if let Some(mark) = find_mark(payload) {
                        ctx.delivered(mark, now);
                        got = true;
                    }
                });
                // Everything read is shown: acknowledged with the highest id there is, which
                // the server takes as "all I was sent" (protocol version 4).
                if got {
                    let ack = ClientMessage::Ack { up_to: u64::MAX };
                    if let Err(e) = codec::encode_into(&ack, &mut self.out.borrow_mut()) {
                        tracing::error!("encoding an acknowledgement: {e}");
                    }
                }
                used
            }
            Proto::Irc => scan_lines(data, |line| {
                if let Some(token) = line.strip_prefix(b"PING ") {
                    let mut out = self.out.borrow_mut();
                    out.extend_from_slice(b"PONG ");
                    out.extend_from_slice(token);
                    out.extend_from_slice(b"\r\n");
                } else if let Some(mark) = find_mark(line) {
                    ctx.delivered(mark, now);
                }
            }),
        };
        partial.clear();
        partial.extend_from_slice(&data[used..]);
        if partial.is_empty() && partial.capacity() > 4096 {
            *partial = Vec::new();
        }
        true
    }

    /// Queues messages until the window is full.
    fn refill(&self, ctx: &Ctx) {
        if self.busy.get() >= ctx.window.get() {
            return;
        }
        let n = ctx.names.len();
        let now = ctx.now();
        let mut slots = self.slots.borrow_mut();
        for slot in 0..slots.len() {
            if slots[slot] > 0 {
                continue;
            }
            slots[slot] = ctx.copies;
            self.busy.set(self.busy.get() + 1);
            let to = other(&mut self.rng.borrow_mut(), self.index, n);
            compose(ctx, self, to, slot, now);
        }
    }
}

/// A connection's task after login: send while there is credit, read everything that comes.
async fn run_conn(ctx: &Ctx, conn: &Conn) {
    // What TLS decrypted during the login but was not read yet.
    if conn.tls.is_some() && !conn.read(ctx) {
        ctx.closed.set(ctx.closed.get() + 1);
        return;
    }
    loop {
        conn.refill(ctx);
        if conn.flush().is_err() {
            break;
        }
        let pending = conn.has_output();
        tokio::select! {
            ready = conn.stream.readable() => {
                if ready.is_err() || !conn.read(ctx) {
                    break;
                }
            }
            ready = conn.stream.writable(), if pending => {
                if ready.is_err() {
                    break;
                }
            }
            _ = conn.wake.notified() => {}
        }
    }
    ctx.closed.set(ctx.closed.get() + 1);
}

/// A random client index other than `me`.
fn other(rng: &mut StdRng, me: usize, n: usize) -> usize {
    if n < 2 {
        return me;
    }
    let j = rng.gen_range(0..n - 1);
    if j >= me {
        j + 1
    } else {
        j
    }
}

/// Appends one message from `conn` (to client `to`, or to the group) in window slot `slot`,
/// stamped `stamp`.
fn compose(ctx: &Ctx, conn: &Conn, to: usize, slot: usize, stamp: u64) {
    let mut text = String::with_capacity(TEXT_LEN);
    let _ = write!(text, "@@{}:{slot}:{stamp}:", conn.index);
    while text.len() < TEXT_LEN {
        text.push('x');
    }
    let mut out = conn.out.borrow_mut();
    match ctx.proto {
        Proto::Confab => {
            let id = conn.next_id.get().wrapping_add(1);
            conn.next_id.set(id);
            let body = match ctx.pattern {
                Pattern::Direct => Request::Msg { to: ctx.names[to].clone(), text, send_id: None },
                Pattern::Group => Request::GroupMsg { group: GROUP.into(), text, send_id: None },
            };
            if let Err(e) = codec::encode_into(&ClientMessage::Request { id, body }, &mut out) {
                tracing::error!("encoding a request: {e}");
            }
        }
        Proto::Irc => {
            let _ = match ctx.pattern {
                Pattern::Direct => write!(out, "PRIVMSG {} :{text}\r\n", ctx.names[to]),
                Pattern::Group => write!(out, "PRIVMSG #{GROUP} :{text}\r\n"),
            };
        }
    }
}

/// Calls `f` with the payload of every complete length-prefixed frame; returns the bytes used.
fn scan_frames(data: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut pos = 0;
    while let Some(header) = data.get(pos..pos + codec::HEADER_LEN) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(payload) = data.get(pos + codec::HEADER_LEN..pos + codec::HEADER_LEN + len) else {
            break;
        };
        f(payload);
        pos += codec::HEADER_LEN + len;
    }
    pos
}

/// Calls `f` with every complete line (without its line end); returns the bytes used.
fn scan_lines(data: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut pos = 0;
    while let Some(end) = data[pos..].iter().position(|&b| b == b'\n') {
        let line = &data[pos..pos + end];
        f(line.strip_suffix(b"\r").unwrap_or(line));
        pos += end + 1;
    }
    pos
}

/// What a benchmark message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    sender: usize,
    slot: usize,
    sent: u64,
}

/// The slot of a paced message, which holds no window slot.
const NO_SLOT: usize = 999_999;

/// The benchmark data in a message, if `bytes` holds one.
fn find_mark(bytes: &[u8]) -> Option<Mark> {
    let at = bytes.windows(MARK.len()).position(|w| w == MARK)?;
    let mut fields = bytes[at + MARK.len()..].splitn(4, |&b| b == b':');
    let sender = usize::try_from(parse_digits(fields.next()?)?).ok()?;
    let slot = usize::try_from(parse_digits(fields.next()?)?).ok()?;
    let sent = parse_digits(fields.next()?)?;
    fields.next()?;
    Some(Mark { sender, slot, sent })
}

fn parse_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes
        .iter()
        .try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

/// Connects client `i` and logs it in (and into the group, for the fan-out).
async fn setup(ctx: &Ctx, addr: SocketAddr, i: usize) -> Result<Rc<Conn>, BenchError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| BenchError::io("connecting", e))?;
    stream.set_nodelay(true).map_err(|e| BenchError::io("set_nodelay", e))?;
    let stream = match &ctx.tls {
        None => Either::Left(stream),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await;
            Either::Right(tls.map_err(|e| BenchError::io("TLS handshake", e))?)
        }
    };
    let mut io = SetupIo { stream, buf: BytesMut::with_capacity(4096) };
    let name = &ctx.names[i];
    match ctx.proto {
        Proto::Confab => {
            let hello = Hello { version: PROTOCOL_VERSION, agent: "confab-bench".into() };
            io.send(&ClientMessage::Hello(hello)).await?;
            match io.frame().await? {
                ServerMessage::Welcome(_) => {}
                other => return Err(BenchError::Setup(format!("no welcome: {other:?}"))),
            }
            let login =
                Request::Login { username: name.clone(), password: PASSWORD.into(), direct: None };
            io.request(login).await?;
            if ctx.pattern == Pattern::Group {
                if i == 0 {
                    let invite = ctx.names[1..].to_vec();
                    io.request(Request::CreateGroup { name: GROUP.into(), invite }).await?;
                    ctx.group_created.notify_waiters();
                    // A notify_waiters before anyone waits is lost: keep a permit too.
                    ctx.group_created.notify_one();
                } else {
                    ctx.group_created.notified().await;
                    ctx.group_created.notify_one();
                    io.request(Request::JoinGroup { group: GROUP.into() }).await?;
                }
            }
        }
        Proto::Irc => {
            io.write(format!("NICK {name}\r\nUSER {name} 0 * :bench\r\n").as_bytes()).await?;
            io.line_containing(" 001 ").await?;
            if ctx.pattern == Pattern::Group {
                io.write(format!("JOIN #{GROUP}\r\n").as_bytes()).await?;
                io.line_containing(" 366 ").await?;
            }
        }
    }
    let (stream, tls) = match io.stream {
        Either::Left(stream) => (stream, None),
        Either::Right(tls) => {
            let (stream, mut tls) = tls.into_inner();
            tls.set_buffer_limit(None);
            (stream, Some(RefCell::new(tls)))
        }
    };
    Ok(Rc::new(Conn {
        index: i,
        stream,
        tls,
        out: RefCell::new(BytesMut::new()),
        partial: RefCell::new(io.buf.to_vec()),
        slots: RefCell::new(Vec::new()),
        busy: Cell::new(0),
        wake: Notify::new(),
        next_id: Cell::new(100),
        rng: RefCell::new(StdRng::seed_from_u64(i as u64)),
    }))
}

/// A connection during login, read with ordinary buffered reads.
struct SetupIo {
    stream: Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>,
    buf: BytesMut,
}

/// Reads what the socket has into `cipher` and decrypts it into `plain` after its first
/// `kept` bytes (growing it if need be); returns the plaintext bytes added.
fn decrypt(
    stream: &TcpStream,
    tls: &mut rustls::ClientConnection,
    cipher: &mut [u8],
    plain: &mut Vec<u8>,
    kept: usize,
) -> std::io::Result<usize> {
    let got = match stream.try_read(cipher) {
        Ok(0) => return Ok(0),
        Ok(n) => n,
        // Still take what rustls holds (plaintext that came with the login's last read).
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let mut rest = &cipher[..got];
    let mut added = 0;
    let closed = loop {
        let state = tls.process_new_packets().map_err(std::io::Error::other)?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let at = kept + added;
            if plain.len() < at + n {
                plain.resize(at + n, 0);
            }
            std::io::Read::read_exact(&mut tls.reader(), &mut plain[at..at + n])?;
            added += n;
        }
        if state.peer_has_closed() {
            break true;
        }
        if rest.is_empty() || tls.read_tls(&mut rest)? == 0 {
            break false;
        }
    };
    match added {
        0 if closed => Ok(0),
        // Only part of a record, or records without data.
        0 => Err(std::io::ErrorKind::WouldBlock.into()),
        n => Ok(n),
    }
}

/// `io::Write` on a tokio socket that never waits.
struct Nonblocking<'a>(&'a TcpStream);

impl std::io::Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// TLS 1.3 that trusts whatever certificate the server has: the generator only ever talks
/// to the server it started itself, on loopback. Signatures are still checked.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl SetupIo {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        self.stream.write_all(bytes).await.map_err(|e| BenchError::io("writing", e))
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<(), BenchError> {
        let frame = codec::encode_frame(msg).map_err(|e| BenchError::Setup(e.to_string()))?;
        self.write(&frame).await
    }

    async fn fill(&mut self) -> Result<(), BenchError> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(BenchError::io("reading", std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(e) => Err(BenchError::io("reading", e)),
        }
    }

    /// The next server message.
    async fn frame(&mut self) -> Result<ServerMessage, BenchError> {
        loop {
            if self.buf.len() >= codec::HEADER_LEN {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= codec::HEADER_LEN + len {
                    self.buf.advance(codec::HEADER_LEN);
                    let payload = self.buf.split_to(len);
                    return codec::decode_payload(&payload)
                        .map_err(|e| BenchError::Setup(e.to_string()));
                }
            }
            self.fill().await?;
        }
    }

    /// Sends `body` and waits for its reply, skipping events.
    async fn request(&mut self, body: Request) -> Result<Reply, BenchError> {
        self.send(&ClientMessage::Request { id: 1, body }).await?;
        loop {
            match self.frame().await? {
                ServerMessage::Reply { result: Ok(reply), .. } => return Ok(reply),
                ServerMessage::Reply { result: Err(e), .. } => {
                    return Err(BenchError::Setup(format!("refused: {e}")))
                }
                _ => continue,
            }
        }
    }

    /// Reads lines until one contains `needle` (failing on an IRC `ERROR`).
    async fn line_containing(&mut self, needle: &str) -> Result<(), BenchError> {
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                let line = String::from_utf8_lossy(&line);
                if line.contains(needle) {
                    return Ok(());
                }
                if line.starts_with("ERROR") || line.contains(" 433 ") {
                    return Err(BenchError::Setup(format!("refused: {}", line.trim())));
                }
            }
            self.fill().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_found_in_frames_and_lines() {
        let mut buf = BytesMut::new();
        let event = confab::protocol::Event::Message {
            id: 1,
            from: "u1".into(),
            text: "@@17:2:123456789:xxxx".into(),
            sent_at: 5,
            offline: false,
        };
        codec::encode_into(&ServerMessage::Event(event), &mut buf).unwrap();
        let whole = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 9, 1]); // the start of another frame
        let mut seen = Vec::new();
        assert_eq!(scan_frames(&buf, |p| seen.push(find_mark(p))), whole);
        assert_eq!(seen, [Some(Mark { sender: 17, slot: 2, sent: 123_456_789 })]);

        let lines = b":u1!~u1@127.0.0.1 PRIVMSG u2 :@@3:0:99:xx\r\nPING :x\r\n:part";
        let mut seen = Vec::new();
        let used = scan_lines(lines, |l| seen.push(find_mark(l)));
        assert_eq!(&lines[used..], b":part");
        assert_eq!(seen, [Some(Mark { sender: 3, slot: 0, sent: 99 }), None]);
        assert_eq!(find_mark(b"@@12:1:5"), None, "cut short");
        assert_eq!(find_mark(b"@@1x:2:3:"), None, "not digits");
    }

    #[test]
    fn quantiles_take_the_sample_at_the_rank() {
        let mut w =
            Window { latencies: (1..=1000).map(|i| i * 1000).collect(), ..Window::default() };
        assert_eq!(w.quantile_us(0.5), Some(500.0));
        assert_eq!(w.quantile_us(0.99), Some(990.0));
        assert_eq!(w.quantile_us(0.999), Some(999.0));
        assert_eq!(Window::default().quantile_us(0.5), None);
    }
}
