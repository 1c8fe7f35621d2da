//! The delivery guarantee with the built binaries: `kill -9` of `confab-server` under load,
//! and `confab --plain < /dev/null` printing everything that waited.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{password_of, seeded_store, TestServer, PATIENCE};
use confab::client::{Client, ClientEvent, Events};
use confab::protocol::Event;
use confab::store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `confab-server` on `db` and a free port; returns the process and its address.
async fn start_server(db: &Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab-server"));
    cmd.args(["--plaintext", "--listen", "127.0.0.1:0", "--mailbox-messages", "0"]);
    // The load is the point here, not the abuse limits.
    cmd.args(["--exempt", "127.0.0.0/8", "--no-user-rates", "--db"]).arg(db);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("the server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the server says where it listens")
        .unwrap()
        .unwrap();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (child, addr)
}

async fn login(addr: &str, user: &str) -> (Client, Events) {
    let (client, events) = Client::connect(addr).await.unwrap();
    client.login(user, &password_of(user)).await.unwrap();
    (client, events)
}

/// What one recipient has been shown, as a client that remembers the last id it showed
/// across connections would show it: a message whose id it has passed is dropped.
#[derive(Default)]
struct Screen {
    last: u64,
    shown: Vec<String>,
}

impl Screen {
    /// Shows everything that arrives on `events` until the connection closes or `until`.
    async fn watch(&mut self, events: &mut Events, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, events.next()).await {
                Ok(Some(ClientEvent::Server(event))) => event,
                Ok(_) | Err(_) => return,
            };
            let (Event::Message { id, text, .. } | Event::GroupMessage { id, text, .. }) = event
            else {
                continue;
            };
            if id <= self.last {
                continue;
            }
            self.last = id;
            self.shown.push(text);
            events.ack(id);
        }
    }
}

/// Sends numbered messages with `send` until the connection fails or `stop`; returns the
/// texts the server acknowledged.
async fn load<F, Fut>(prefix: String, stop: Instant, mut send: F) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut acked = Vec::new();
    for i in 0.. {
        if Instant::now() >= stop {
            break;
        }
        let text = format!("{prefix}-{i}");
        if !send(text.clone()).await {
            break;
        }
        acked.push(text);
    }
    acked
}

#[tokio::test]
async fn every_acknowledged_message_arrives_once_in_order_across_five_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    {
        let mut store = seeded_store(&db);
        store.create_group("devs", "alice", &["bob".into(), "carol".into()], 0).unwrap();
        store.join_group("devs", "bob", 0, 0).unwrap();
        store.join_group("devs", "carol", 0, 0).unwrap();
    }
    // Per sender and conversation, what the server acknowledged, in order.
    let mut ledger: HashMap<&str, Vec<String>> = HashMap::new();
    let mut bob = Screen::default();
    for round in 0..5 {
        let (mut server, addr) = start_server(&db).await;
        let (alice, _a) = login(&addr, "alice").await;
        let (dave, _d) = login(&addr, "dave").await;
        let (_bob_client, mut bob_events) = login(&addr, "bob").await;
        let stop = Instant::now() + Duration::from_millis(400);
        let to_bob = load(format!("r{round}-bob"), stop, |text| {
            let alice = alice.clone();
            async move { alice.msg("bob", &text).await.is_ok() }
        });
        // carol stays offline throughout: everything for her waits in the log.
        let to_carol = load(format!("r{round}-carol"), stop, |text| {
            let dave = dave.clone();
            async move { dave.msg("carol", &text).await.is_ok() }
        });
        let to_devs = load(format!("r{round}-devs"), stop, |text| {
            let alice = alice.clone();
            async move { alice.group_msg("devs", &text).await.is_ok() }
        });
        let killer = async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            server.start_kill().unwrap(); // SIGKILL, in the middle of the load
            server.wait().await.unwrap();
        };
        let watching = bob.watch(&mut bob_events, stop + PATIENCE);
        let (to_bob, to_carol, to_devs, (), ()) =
            tokio::join!(to_bob, to_carol, to_devs, killer, watching);
        assert!(!to_bob.is_empty() && !to_devs.is_empty(), "round {round} sent nothing");
        ledger.entry("bob").or_default().extend(to_bob);
        ledger.entry("carol").or_default().extend(to_carol);
        ledger.entry("devs").or_default().extend(to_devs);
    }

    // A last, clean run: bob and carol read what waits for them.
    let (mut server, addr) = start_server(&db).await;
    let (_bob_client, mut bob_events) = login(&addr, "bob").await;
    bob.watch(&mut bob_events, Instant::now() + Duration::from_secs(2)).await;
    let mut carol = Screen::default();
    let (_carol_client, mut carol_events) = login(&addr, "carol").await;
    carol.watch(&mut carol_events, Instant::now() + Duration::from_secs(2)).await;
    server.start_kill().unwrap();

    let total: usize = ledger.values().map(Vec::len).sum();
    assert!(total > 100, "only {total} messages were acknowledged");
    for (screen, who, conversations) in
        [(&bob, "bob", ["bob", "devs"]), (&carol, "carol", ["carol", "devs"])]
    {
        let mut unique = screen.shown.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), screen.shown.len(), "{who} was shown a message twice");
        for conversation in conversations {
            // What was acknowledged arrived, in order (unacknowledged sends may have, too).
            let prefix = format!("-{conversation}-");
            let got: Vec<&String> = screen.shown.iter().filter(|t| t.contains(&prefix)).collect();
            let mut at = 0;
            for want in &ledger[conversation] {
                let Some(found) = got[at..].iter().position(|t| *t == want) else {
                    panic!("{who} never got the acknowledged {want:?} (or not in order)");
                };
                at += found + 1;
            }
        }
    }
}

#[tokio::test]
async fn line_mode_with_stdin_at_end_of_file_prints_everything_that_waited_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::on_disk(&dir.path().join("confab.db")).await;
    let (alice, _a) = server.login("alice").await;
    for run in 0..20 {
        for i in 0..50 {
            alice.msg("bob", &format!("run{run}-m{i}")).await.unwrap();
        }
        let output = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["--plain", "--plaintext", "--user", "bob", "--server", &server.addr.to_string()])
            .env("CONFAB_PASSWORD", password_of("bob"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(PATIENCE, output).await.expect("exits").unwrap();
        assert!(output.status.success(), "run {run}: {:?}", output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let printed: Vec<&str> =
            stdout.lines().filter(|l| l.contains("(while you were away): ")).collect();
        assert_eq!(printed.len(), 50, "run {run} printed:\n{stdout}");
        for (i, line) in printed.iter().enumerate() {
            assert!(line.ends_with(&format!(": run{run}-m{i}")), "run {run}: {line}");
        }
    }
    server.stop().await;
}
