//! The private-chat receiver's memory under a flood: a peer that bob accepted writes
//! 4,000-character texts at him as fast as loopback TCP takes them.
//!
//! ```sh
//! cargo run --release --example p2p_flood -- [paused|reading] [SECONDS] [CAP_MIB]
//! ```
//!
//! One process holds a real server (in memory, on 127.0.0.1:0), alice and bob logged in
//! with direct sockets, and alice's side of the chat as a raw socket (an attacker needs no
//! rate limit of its own): alice asks, bob accepts through `PrivateChats`, the raw socket
//! passes bob's handshake with the real token, then floods. In `paused` mode bob's front end
//! reads no private events (a terminal paused with Ctrl-S); in `reading` mode it formats
//! each one as the line client does and writes it to a sink. The run ends after SECONDS
//! (default 10), when the flooder's connection is closed, or when the process's resident
//! memory passes CAP_MIB (default 2048, to spare the machine). It prints, every second and
//! at the end, the flooder's bytes written, bob's events, and the resident and peak memory
//! of the whole process (`VmRSS`, `VmHWM`).
//!
//! The file for the "before" figures (the commit before the direct-link limits) is this
//! one at that commit; since the chats are end-to-end encrypted (protocol 6), the flooder
//! seals its texts as a real peer does.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab::client::{format, Client, ClientEvent, Events};
use confab::p2p::identity::{Identity, VerifiedPeers};
use confab::p2p::noise::{self, Keys};
use confab::p2p::{ChatConfig, DirectSockets, PrivateChats, PrivateEvent};
use confab::protocol::{now_ms, ChatMessage, Event, PeerCodec, PeerMessage};
use confab::server::{self, password, Config};
use confab::store::{SqliteStore, Store, StoreHandle};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

#[tokio::main]
async fn main() {
    // RUST_LOG=info shows what the client and the server log about it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "paused".into());
    let reading = match mode.as_str() {
        "paused" => false,
        "reading" => true,
        other => panic!("mode is paused or reading, not {other:?}"),
    };
    let seconds: f64 = args.next().map_or(10.0, |a| a.parse().expect("seconds"));
    let cap_mib: u64 = args.next().map_or(2048, |a| a.parse().expect("a cap in MiB"));

    let mut store = SqliteStore::open(":memory:").expect("a store");
    for user in ["alice", "bob"] {
        store.create_user(user, &password::hash(&format!("{user}-pw")), 0).expect("a user");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        server::run(listener, StoreHandle::spawn(store), Config::default(), forever).await
    });

    let (alice_id, bob_id) = (Identity::generate(), Identity::generate());
    let (alice, mut alice_events, _alice_sockets) = login(addr, "alice", &alice_id).await;
    let (bob, mut bob_events, bob_sockets) = login(addr, "bob", &bob_id).await;
    let pins = VerifiedPeers::in_memory();
    // Nothing is relayed here: the chat is direct, on loopback.
    let no_relay = tokio::sync::mpsc::unbounded_channel().0;
    let (chats, mut private) =
        PrivateChats::start("bob", bob_id, pins, bob_sockets.tcp, ChatConfig::default(), no_relay);
    alice.start_private("bob").await.expect("asked");
    wait_for(&mut bob_events, |e| matches!(e, Event::PrivateRequest { .. })).await;
    confab::client::session::accept_private(&bob, &chats, "alice").await.expect("accepted");
    let intro = match wait_for(&mut alice_events, |e| matches!(e, Event::PrivateAccepted(_))).await
    {
        Event::PrivateAccepted(intro) => intro,
        _ => unreachable!(),
    };
    let mut conn =
        Framed::new(TcpStream::connect(intro.addr).await.expect("bob"), PeerCodec::default());
    let keys = Keys {
        identity: &alice_id,
        me: "alice",
        peer: "bob",
        peer_key: &intro.key,
        token: &intro.token,
    };
    let (dialling, hello) = noise::initiate(keys).expect("a handshake");
    conn.send(hello).await.expect("hello");
    let mut cipher = match conn.next().await {
        Some(Ok(Ok(PeerMessage::Accepted { handshake, .. }))) => {
            dialling.finish(&handshake).expect("bob's key")
        }
        other => panic!("not accepted: {other:?}"),
    };
    assert!(matches!(private.next().await, Some(PrivateEvent::Opened { .. })));

    let baseline = status_kib("VmRSS:");
    let written = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (mut sink, _stream) = conn.split();
    let flooder = {
        let (written, closed) = (written.clone(), closed.clone());
        tokio::spawn(async move {
            let text = "x".repeat(4000);
            loop {
                let text = ChatMessage::Text { text: text.clone(), sent_at: now_ms() };
                let frame = cipher.seal(&text).expect("sealed");
                if let Err(e) = sink.send(frame).await {
                    tracing::info!("the flooder's connection failed: {e}");
                    closed.store(true, Ordering::Relaxed);
                    return;
                }
                written.fetch_add(4000, Ordering::Relaxed);
            }
        })
    };
    let shown = Arc::new(AtomicU64::new(0));
    // Paused, bob's front end keeps its events unread (dropping them would end the chats).
    let mut unread = None;
    let front_end = if reading {
        let shown = shown.clone();
        Some(tokio::spawn(async move {
            let mut out = std::io::sink();
            while let Some(event) = private.next().await {
                let _ = writeln!(out, "{}", format::private(&event));
                shown.fetch_add(1, Ordering::Relaxed);
            }
        }))
    } else {
        unread = Some(private);
        None
    };

    println!("mode {mode}, up to {seconds} s, memory cap {cap_mib} MiB");
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>10}",
        "t (s)", "flood (MiB)", "events", "RSS (MiB)", "peak (MiB)"
    );
    let start = Instant::now();
    let mut next_print = 1.0;
    let end = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = start.elapsed().as_secs_f64();
        let rss = status_kib("VmRSS:");
        if t >= next_print {
            row(t, &written, &shown, rss);
            next_print += 1.0;
        }
        if closed.load(Ordering::Relaxed) {
            break format!("the receiver closed the flooder's connection after {t:.2} s");
        }
        if rss / 1024 > cap_mib {
            break format!("the memory cap was reached after {t:.2} s");
        }
        if t >= seconds {
            break format!("still open after {t:.2} s");
        }
    };
    row(start.elapsed().as_secs_f64(), &written, &shown, status_kib("VmRSS:"));
    println!("{end}");
    println!(
        "baseline RSS {:.1} MiB, peak RSS {:.1} MiB, flood written {:.1} MiB",
        baseline as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0,
        written.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    flooder.abort();
    drop(unread);
    if let Some(task) = front_end {
        task.abort();
    }
    // Exit without tearing down: the point was the memory, not the goodbyes.
    std::process::exit(0);
}

async fn login(
    addr: std::net::SocketAddr,
    user: &str,
    identity: &Identity,
) -> (Client, Events, DirectSockets) {
    let (client, events) = Client::connect(addr).await.expect("a connection");
    let sockets = DirectSockets::bind(client.local_addr().ip(), 0, 0).await.expect("sockets");
    let endpoint = Some(sockets.endpoint(identity));
    client.login_with(user, &format!("{user}-pw"), endpoint).await.expect("login");
    (client, events, sockets)
}

async fn wait_for(events: &mut Events, want: impl Fn(&Event) -> bool) -> Event {
    loop {
        match events.next().await {
            Some(ClientEvent::Server(event)) if want(&event) => return event,
            Some(_) => continue,
            None => panic!("the server connection closed"),
        }
    }
}

fn row(t: f64, written: &AtomicU64, shown: &AtomicU64, rss_kib: u64) {
    println!(
        "{t:>6.1} {:>12.1} {:>10} {:>10.1} {:>10.1}",
        written.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        shown.load(Ordering::Relaxed),
        rss_kib as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}
