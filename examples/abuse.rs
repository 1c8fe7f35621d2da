//! The server's defences, measured: a real user's login time under a login spray, the
//! bystanders' message latency under a broadcast flood, and what idle connections one
//! address can hold.
//!
//! ```sh
//! cargo run --release --example abuse -- [SECONDS_PER_PHASE]
//! ```
//!
//! One process: the server runs on a thread of its own with a single-threaded runtime, as
//! `confab-server` does by default, with `Config::default()` (every limit at its documented
//! default; an in-memory store); the load runs on another runtime. Clients choose their
//! source address in 127.0.0.0/8 (all loopback on Linux), so "one address" and "100
//! addresses" are real to the server. Phases, each SECONDS_PER_PHASE long (default 5):
//!
//! 1. a real user's login (connect, hello, login, each from a fresh address; and the login
//!    request alone, after the welcome) with nothing
//!    else going on, then under a spray of 1,000 connections from 127.0.0.2, then 1,000
//!    from 100 addresses (10 each), every one guessing passwords for fresh names as fast as
//!    it is answered and reconnecting when refused;
//! 2. bystanders' direct-message latency (20 users, each sending to the next every 250 ms),
//!    alone and while one user broadcasts as fast as the server answers, reconnecting and
//!    starting again each time it is cut off;
//! 3. how many idle connections (hello, then nothing) one address can open, and how long
//!    the server keeps them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::client::{Client, ClientError, ClientEvent, Events};
use confab::protocol::{ErrorCode, Event, PresenceChange};
use confab::server::{self, password, Config};
use confab::store::{SqliteStore, Store, StoreHandle};
use tokio::net::TcpSocket;

const BYSTANDERS: usize = 20;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let phase: f64 = std::env::args().nth(1).map_or(5.0, |a| a.parse().expect("seconds"));
    let phase = Duration::from_secs_f64(phase);
    let addr = start_server();
    // The attackers share one worker thread; each measured user has a thread and a runtime
    // of its own, so that the attackers' tasks do not delay the measurement's own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        println!("server: Config::default(), in-memory store, one thread; load: {phase:?} per phase");
        println!();
        println!("| login of a real user | p50 ms | p99 ms | max ms | login request alone p50 / p99 ms | n | spray answers |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let quiet = measured(move || logins(addr, phase, 0)).await;
        print_logins("nothing else", &quiet, None);
        let spray = Spray::start(addr, &[lo(0, 2)], 1000);
        let one = measured(move || logins(addr, phase, 1)).await;
        print_logins("1,000 connections from one address", &one, Some(&spray.stop().await));
        let many: Vec<IpAddr> = (1..=100).map(|b| lo(1, b)).collect();
        let spray = Spray::start(addr, &many, 10);
        let hundred = measured(move || logins(addr, phase, 2)).await;
        print_logins("1,000 connections from 100 addresses", &hundred, Some(&spray.stop().await));

        println!();
        println!("| bystanders' messages | p50 ms | p99 ms | max ms | n | bystanders disconnected | flooder |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (flooding_tx, flooding_rx) = tokio::sync::oneshot::channel::<()>();
        let chat = measured(move || async move {
            let users = bystanders(addr).await;
            let quiet = chatter(&users, phase).await;
            let _ = ready_tx.send(());
            let _ = flooding_rx.await;
            (quiet, chatter(&users, phase).await)
        });
        let _ = ready_rx.await;
        let flood = Flood::start(addr);
        let _ = flooding_tx.send(());
        let ((lat, lost), (flood_lat, flood_lost)) = chat.await;
        let flooder = flood.stop().await;
        print_chatter("no flood", &lat, lost, "");
        print_chatter("one user broadcasting flat out", &flood_lat, flood_lost, &flooder);

        println!();
        idle(addr).await;
    });
}

/// Starts `f` now on a thread with a runtime of its own; its result, awaited without
/// blocking.
fn measured<F, T>(f: impl FnOnce() -> F + Send + 'static) -> impl std::future::Future<Output = T>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(f())
    });
    async move {
        tokio::task::spawn_blocking(move || thread.join().expect("the measurement"))
            .await
            .expect("the measurement's thread")
    }
}

/// Starts the server on a thread of its own; returns its address.
fn start_server() -> SocketAddr {
    let mut store = SqliteStore::open(":memory:").expect("a store");
    let hash = password::hash("pw");
    for user in users() {
        store.create_user(&user, &hash, 0).expect("a user");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let store = StoreHandle::spawn(store);
            server::run(listener, store, Config::default(), std::future::pending()).await.unwrap();
        });
    });
    rx.recv().expect("the server's address")
}

fn users() -> Vec<String> {
    let mut users: Vec<String> = (0..BYSTANDERS).map(|i| format!("u{i}")).collect();
    users.extend(["alice".to_owned(), "flooder".to_owned()]);
    users
}

fn lo(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

async fn connect_from(server: SocketAddr, from: IpAddr) -> Result<(Client, Events), ClientError> {
    let socket = TcpSocket::new_v4().map_err(ClientError::Connect)?;
    socket.bind(SocketAddr::new(from, 0)).map_err(ClientError::Connect)?;
    let stream = socket.connect(server).await.map_err(ClientError::Connect)?;
    Client::connect_stream(stream).await
}

/// Logs alice in and out for `phase`, each time from a fresh address of 127.0.(10+round).x;
/// returns each login's time (connect to reply).
async fn logins(server: SocketAddr, phase: Duration, round: u8) -> Logins {
    let end = Instant::now() + phase;
    let mut times = Logins::default();
    let mut host = 1u8;
    while Instant::now() < end {
        let from = lo(10 + round, host);
        host = host.wrapping_add(1).max(1);
        let start = Instant::now();
        let (client, _events) = match connect_from(server, from).await {
            Ok(pair) => pair,
            Err(e) => {
                println!("  (alice could not connect: {e})");
                continue;
            }
        };
        let asked = Instant::now();
        match client.login("alice", "pw").await {
            Ok(_) => {
                times.whole.push(start.elapsed());
                times.request.push(asked.elapsed());
            }
            Err(e) => println!("  (alice's login failed: {e})"),
        }
        let _ = client.logout().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times
}

/// Login times: from the connect, and of the login request alone (after the welcome).
#[derive(Default)]
struct Logins {
    whole: Vec<Duration>,
    request: Vec<Duration>,
}

/// What a spray got back.
struct Spray {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    hashed: AtomicU64,
    limited: AtomicU64,
    refused_conn: AtomicU64,
    other: AtomicU64,
}

impl Spray {
    /// `per_addr` connections from each of `addrs`, each guessing until stopped.
    fn start(server: SocketAddr, addrs: &[IpAddr], per_addr: usize) -> Spray {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        let mut n = 0u64;
        for &from in addrs {
            for _ in 0..per_addr {
                n += 1;
                let (stop, counts) = (stop.clone(), counts.clone());
                tasks.push(tokio::spawn(async move {
                    let mut guess = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((client, _events)) = connect_from(server, from).await else {
                            counts.refused_conn.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            guess += 1;
                            let name = format!("x{n}g{guess}");
                            let counter =
                                match client.login(&name, "guess").await.map_err(|e| e.code()) {
                                    Err(Some(ErrorCode::InvalidCredentials)) => &counts.hashed,
                                    Err(Some(ErrorCode::RateLimited { .. })) => &counts.limited,
                                    _ => {
                                        counts.other.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        Spray { stop, tasks, counts }
    }

    async fn stop(mut self) -> Spray {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..).collect::<Vec<_>>() {
            let _ = task.await;
        }
        Spray { stop: self.stop, tasks: Vec::new(), counts: self.counts }
    }
}

fn percentiles(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99), at(1.0))
}

fn print_logins(what: &str, times: &Logins, spray: Option<&Spray>) {
    let (p50, p99, max) = percentiles(&mut times.whole.clone());
    let (r50, r99, _) = percentiles(&mut times.request.clone());
    let answers = spray.map_or("-".to_owned(), |spray| {
        let c = &spray.counts;
        format!(
            "{} wrong-password (hashed), {} RateLimited, {} connections refused",
            c.hashed.load(Ordering::Relaxed),
            c.limited.load(Ordering::Relaxed),
            c.refused_conn.load(Ordering::Relaxed)
        )
    });
    println!(
        "| {what} | {p50:.1} | {p99:.1} | {max:.1} | {r50:.1} / {r99:.1} | {} | {answers} |",
        times.whole.len()
    );
}

/// The bystanders, logged in (each from an address of its own), with a task per user that
/// collects the latency of each message it receives.
struct Users {
    clients: Vec<Client>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    measuring: Arc<AtomicBool>,
    disconnected: Arc<AtomicU64>,
    sent_at: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

async fn bystanders(server: SocketAddr) -> Users {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let disconnected = Arc::new(AtomicU64::new(0));
    let sent_at = Arc::new(Mutex::new(std::collections::HashMap::<String, Instant>::new()));
    let mut clients = Vec::new();
    for i in 0..BYSTANDERS {
        let (client, mut events) =
            connect_from(server, lo(3, i as u8 + 1)).await.expect("a bystander");
        client.login(&format!("u{i}"), "pw").await.expect("a bystander's login");
        let (latencies, disconnected, sent_at) =
            (latencies.clone(), disconnected.clone(), sent_at.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    ClientEvent::Server(Event::Message { id, text, .. }) => {
                        events.ack(id);
                        if let Some(at) = sent_at.lock().unwrap().remove(&text) {
                            latencies.lock().unwrap().push(at.elapsed());
                        }
                    }
                    ClientEvent::Server(Event::SessionEnded { .. })
                    | ClientEvent::Closed { .. } => {
                        disconnected.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    ClientEvent::Server(_) => {}
                }
            }
        });
        clients.push(client);
    }
    Users { clients, latencies, measuring, disconnected, sent_at }
}

/// Each bystander sends to the next every 250 ms (within the default rate) for `phase`; returns the latencies and how
/// many bystanders were disconnected meanwhile.
async fn chatter(users: &Users, phase: Duration) -> (Vec<Duration>, u64) {
    users.latencies.lock().unwrap().clear();
    users.measuring.store(true, Ordering::Relaxed);
    let before = users.disconnected.load(Ordering::Relaxed);
    let end = Instant::now() + phase;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut k = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        for (i, client) in users.clients.iter().enumerate() {
            k += 1;
            let text = format!("m{k}");
            let to = format!("u{}", (i + 1) % BYSTANDERS);
            users.sent_at.lock().unwrap().insert(text.clone(), Instant::now());
            let client = client.clone();
            tokio::spawn(async move {
                let _ = client.msg(&to, &text).await;
            });
        }
    }
    // Let the last ones arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    users.measuring.store(false, Ordering::Relaxed);
    let lat = std::mem::take(&mut *users.latencies.lock().unwrap());
    (lat, users.disconnected.load(Ordering::Relaxed) - before)
}

fn print_chatter(what: &str, lat: &[Duration], lost: u64, flooder: &str) {
    let mut lat = lat.to_vec();
    let (p50, p99, max) = percentiles(&mut lat);
    let flooder = if flooder.is_empty() { "-" } else { flooder };
    println!("| {what} | {p50:.2} | {p99:.2} | {max:.2} | {} | {lost} | {flooder} |", lat.len());
}

/// One user broadcasting as fast as the server answers (64 requests in flight), logging in
/// again each time it is cut off.
struct Flood {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64, u64, u64)>,
}

impl Flood {
    fn start(server: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut sent, mut limited, mut cut_off, mut refused) = (0, 0, 0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, mut events)) = connect_from(server, lo(0, 50)).await else {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if client.login("flooder", "pw").await.is_err() {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let mut inflight = tokio::task::JoinSet::new();
                    for _ in 0..64 {
                        let client = client.clone();
                        inflight.spawn(async move {
                            let (mut ok, mut no) = (0u64, 0u64);
                            loop {
                                match client.broadcast("flood flood flood").await {
                                    Ok(_) => ok += 1,
                                    Err(e)
                                        if matches!(
                                            e.code(),
                                            Some(ErrorCode::RateLimited { .. })
                                        ) =>
                                    {
                                        no += 1
                                    }
                                    Err(_) => return (ok, no),
                                }
                            }
                        });
                    }
                    while let Some(done) = inflight.join_next().await {
                        let (ok, no) = done.unwrap_or_default();
                        sent += ok;
                        limited += no;
                    }
                    while let Some(event) = events.next().await {
                        if let ClientEvent::Server(Event::SessionEnded { .. }) = event {
                            cut_off += 1;
                        }
                    }
                }
                (sent, limited, cut_off, refused)
            }
        });
        Flood { stop, task }
    }

    async fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, limited, cut_off, refused) = self.task.await.unwrap_or_default();
        format!("{sent} broadcasts sent, {limited} RateLimited, cut off {cut_off} times, {refused} logins refused")
    }
}

/// Opens idle connections from one address until refused, then waits until the server
/// closes them.
async fn idle(server: SocketAddr) {
    let from = lo(0, 60);
    let mut held = Vec::new();
    let refusal = loop {
        match connect_from(server, from).await {
            Ok(pair) => held.push(pair),
            Err(e) => break e,
        }
        if held.len() >= 1000 {
            break ClientError::Protocol("no refusal after 1000".into());
        }
    };
    let start = Instant::now();
    println!("idle connections from one address: {} held, the next refused: {refusal}", held.len());
    let mut closed = Vec::new();
    for (_client, mut events) in held {
        let reason = loop {
            match events.next().await {
                Some(ClientEvent::Server(Event::SessionEnded { reason })) => break Some(reason),
                Some(ClientEvent::Server(Event::Presence {
                    change: PresenceChange::Disconnected,
                    ..
                })) => continue,
                Some(ClientEvent::Server(_)) => continue,
                Some(ClientEvent::Closed { .. }) | None => break None,
            }
        };
        closed.push((start.elapsed(), reason));
    }
    let last = closed.iter().map(|(t, _)| *t).max().unwrap_or_default();
    println!(
        "all closed by the server {:.1} s after the last was opened, each told {:?}",
        last.as_secs_f64(),
        closed.first().and_then(|(_, r)| *r)
    );
}
