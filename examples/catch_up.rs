//! Catch-up benchmark: how fast a user who was away reads a large backlog, and what it costs
//! the server's memory.
//!
//! ```sh
//! cargo build --release --bin confab-server
//! cargo run --release --example catch_up -- [MESSAGES] [BYTES]
//! ```
//!
//! Seeds a fresh database in a scratch directory (through the store's interface) with
//! MESSAGES (default 100,000) direct messages of BYTES (default 100) characters from alice to
//! bob, starts the release `confab-server` on it (next to this example's binary, or
//! `CONFAB_SERVER`), then logs bob in with the library's client, which acknowledges each
//! message as it reads it, as a front end does once a message is shown. Prints the messages
//! per second from the login until the server's "caught up", the server's CPU seconds over
//! that time (its share of a core says whether the server or this reader was the
//! bottleneck), and its resident memory before the login and at its peak (`VmHWM`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use confab::client::{Client, ClientEvent};
use confab::protocol::Event;
use confab::server::password;
use confab::store::{LogEntry, SqliteStore, Store, To};

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).map_or(default, |a| a.parse().expect("a whole number"))
}

/// A field of /proc/PID/status, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds of process `pid` (clock ticks of 1/100 s, as Linux has).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CONFAB_SERVER") {
        return path.into();
    }
    let me = std::env::current_exe().expect("this program's path");
    // target/release/examples/catch_up -> target/release/confab-server
    me.parent().and_then(|d| d.parent()).expect("a target directory").join("confab-server")
}

#[tokio::main]
async fn main() {
    let (total, size) = (arg(1, 100_000), arg(2, 100));
    let dir = tempfile::tempdir().expect("a scratch directory");
    let db = dir.path().join("confab.db");
    let mut store = SqliteStore::open(&db).expect("a database");
    let hash = password::hash("secret");
    let accounts = [("alice".to_string(), hash.clone()), ("bob".to_string(), hash)];
    store.create_users(&accounts, 0).expect("accounts");
    let body = "x".repeat(size);
    for start in (0..total).step_by(4096) {
        let batch: Vec<LogEntry> = (start..(start + 4096).min(total))
            .map(|i| LogEntry {
                id: i as u64 + 1,
                sender: "alice".into(),
                to: To::User("bob".into()),
                body: body.clone(),
                sent_at: 1_700_000_000_000,
                send_id: None,
            })
            .collect();
        store.append_log(&batch, &[]).expect("seeding the log");
    }
    drop(store);

    let program = server_binary();
    let mut server = Command::new(&program)
        .args(["--plaintext", "--listen", "127.0.0.1:0", "--mailbox-messages", "0", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let pid = server.id();
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let addr = lines
        .find_map(|l| l.ok()?.strip_prefix("confab-server listening on ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} did not start", program.display()));
    std::thread::spawn(move || for _ in lines {});
    let addr: std::net::SocketAddr = addr;

    let rss_before = status_kb(pid, "VmRSS:");
    let (cpu_before, began) = (cpu_secs(pid), Instant::now());
    let (client, mut events) = Client::connect(addr).await.expect("connecting");
    let waiting = client.login("bob", "secret").await.expect("logging in").offline_messages;
    let mut read = 0u64;
    while let Some(event) = events.next().await {
        match event {
            ClientEvent::Server(Event::Message { id, .. }) => {
                events.ack(id);
                read += 1;
            }
            ClientEvent::Server(Event::CaughtUp) => break,
            ClientEvent::Closed { .. } => panic!("the server closed the connection"),
            _ => {}
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_before;
    let peak = status_kb(pid, "VmHWM:");
    client.logout().await.expect("logging out");
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(read, total as u64, "every message arrived");
    println!("backlog: {waiting} messages of {size} characters");
    println!(
        "catch-up: {:.2} s, {:.0} messages/s; server CPU {cpu:.2} s ({:.0} % of a core)",
        secs,
        read as f64 / secs,
        100.0 * cpu / secs
    );
    println!(
        "server RSS: {:.1} MB before the login, {:.1} MB at its peak",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
