//! Reconnecting, end to end with the built binaries: `confab --plain` clients ride out a
//! restart of `confab-server` (SIGKILL or SIGTERM) on the same database, every message is
//! shown exactly once, and a private chat opened before goes on throughout; a message typed
//! while disconnected arrives once even when the reply to its first send was lost; nothing
//! reconnects after an idle timeout or with `--no-reconnect`.

mod common;

use std::sync::{Arc, Mutex};

use common::binaries::*;
use common::{next_text, TestServer};
use confab::client::{format, Client};
use confab::protocol::Delivery;
use confab::server::Config;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[tokio::test]
async fn a_plain_client_rides_out_a_sigkill_of_the_server() {
    rides_out_a_restart(Signal::SIGKILL).await;
}

#[tokio::test]
async fn a_plain_client_rides_out_a_sigterm_of_the_server() {
    rides_out_a_restart(Signal::SIGTERM).await;
}

async fn rides_out_a_restart(signal: Signal) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let (mut server, addr) = start_server(&db).await;
    let mut bob = logged_in(&addr, "bob", "builder").await;
    let mut alice = logged_in(&addr, "alice", "wonderland").await;
    bob.expect("* alice logged in").await;
    alice.send("/startprivate bob").await;
    bob.expect("alice asks for a private chat").await;
    bob.send("/accept alice").await;
    alice.expect("* private chat with bob is open").await;
    bob.expect("* private chat with alice is open").await;
    let carol = log_in_carol(&addr).await;
    carol.msg("bob", "before").await.unwrap();
    bob.expect("carol: before").await;

    server.signal(signal);
    server.exit().await;
    if signal == Signal::SIGTERM {
        bob.expect("the server is shutting down").await;
    }
    bob.expect("connection lost").await;
    alice.send("/private bob while the server is down").await;
    bob.expect("alice (private): while the server is down").await;
    // Three failed tries: bob's next one is seconds away, so what is sent now waits for him.
    for _ in 0..3 {
        bob.expect("still not connected").await;
    }

    // The same database and address, within 5 s of the kill.
    let (_server, _) = start_server_at(&db, &addr, &[]).await;
    let carol = log_in_carol(&addr).await;
    let mut stored = 0;
    for i in 0..3 {
        if carol.msg("bob", &format!("meanwhile {i}")).await.unwrap() == Delivery::Stored {
            stored += 1;
        }
    }
    bob.expect(&format::caught_up(stored)).await;
    alice.expect("* reconnected").await;
    for i in 0..2 {
        carol.msg("bob", &format!("after {i}")).await.unwrap();
        bob.expect(&format!(": after {i}")).await;
    }
    bob.send("/private alice still here").await;
    alice.expect("bob (private): still here").await;
    alice.send("/msg bob over the new server").await;
    alice.expect("sent to bob").await;
    bob.expect("alice: over the new server").await;

    bob.send("/logout").await;
    bob.expect("logged out; bye").await;
    assert_eq!(bob.exit().await.code(), Some(0));
    let lines = bob.all_output().await;
    let texts = ["before", "meanwhile 0", "meanwhile 1", "meanwhile 2", "after 0", "after 1"];
    for text in texts {
        let shown = lines.iter().filter(|l| l.ends_with(&format!(": {text}"))).count();
        assert_eq!(shown, 1, "{text:?} shown {shown} times:\n{}", lines.join("\n"));
    }
    assert!(lines.iter().any(|l| l.contains("reconnecting in")), "{}", lines.join("\n"));
    alice.expect("* bob logged out; the private chat has ended").await;
}

/// carol, logged in with the typed client.
async fn log_in_carol(addr: &str) -> Client {
    let (client, _events) = Client::connect(addr).await.unwrap();
    client.login("carol", "singer").await.unwrap();
    client
}

/// A TCP proxy in front of the server: it can refuse connections, and it can lose the
/// server's answers to a frame that contains `marker` and then cut that connection when
/// told to.
struct Proxy {
    addr: String,
    state: Arc<Mutex<ProxyState>>,
    /// Bumped whenever connections are to be looked at and maybe closed.
    cut: watch::Sender<u64>,
}

#[derive(Default)]
struct ProxyState {
    refuse: bool,
    /// Lose what the server says after a client frame with these bytes; then cut.
    marker: Option<Vec<u8>>,
    /// Connections to close at once (the refusal closes them all).
    generation: u64,
}

impl Proxy {
    async fn start(server: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (cut, _) = watch::channel(0);
        let (st, c) = (state.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if st.lock().unwrap().refuse {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, server, st.clone(), c.subscribe()));
            }
        });
        Proxy { addr, state, cut }
    }

    /// Closes every connection and refuses new ones, until [`Proxy::open`].
    fn refuse(&self) {
        let mut state = self.state.lock().unwrap();
        state.refuse = true;
        state.generation += 1;
        self.cut.send_modify(|n| *n += 1);
    }

    /// Lets connections in again; the server's answers to a frame with `marker` are lost.
    fn open(&self, marker: Option<&str>) {
        let mut state = self.state.lock().unwrap();
        state.refuse = false;
        state.marker = marker.map(|m| m.as_bytes().to_vec());
    }

    /// Cuts the connection whose answers are being lost.
    fn cut_losing(&self) {
        self.state.lock().unwrap().marker = None;
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn pipe(
    mut client: TcpStream,
    server: std::net::SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    mut cut: watch::Receiver<u64>,
) {
    let Ok(mut upstream) = TcpStream::connect(server).await else { return };
    let generation = state.lock().unwrap().generation;
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = upstream.split();
    let mut losing = false;
    let (mut up, mut down) = ([0u8; 8192], [0u8; 8192]);
    loop {
        tokio::select! {
            n = from_client.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                let marker = state.lock().unwrap().marker.clone();
                if marker.is_some_and(|m| up[..n].windows(m.len()).any(|w| w == m)) {
                    losing = true;
                }
                if to_server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            n = from_server.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if !losing && to_client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            _ = cut.changed() => {
                let state = state.lock().unwrap();
                if losing || state.generation != generation {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_message_typed_while_disconnected_arrives_once_even_when_its_first_reply_was_lost() {
    let server = TestServer::start(Config::default()).await;
    let (dave, _dave_events) = server.login("dave").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let proxy = Proxy::start(server.addr).await;
    let mut alice = logged_in_with(&proxy.addr, "alice", "alice-pw", &[]).await;

    proxy.refuse();
    alice.expect("connection lost").await;
    alice.send("/msg bob typed while away").await;
    alice.expect("(pending) -> bob: typed while away").await;

    // The next login goes through, and the first send of the message too, but its reply
    // is lost with the connection.
    proxy.open(Some("typed while away"));
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "typed while away".into()));
    proxy.cut_losing();
    alice.expect("connection lost").await;

    // Sent again after the next login, with the same send id: answered, not delivered again.
    alice.expect("sent to bob").await;
    // Presence comes and goes with alice's logins; the next text must be dave's marker.
    dave.msg("bob", "marker").await.unwrap();
    assert_eq!(next_text(&mut bob_events).await, ("dave".into(), "marker".into()));
    alice.send("/logout").await;
    alice.expect("logged out; bye").await;
    assert_eq!(alice.exit().await.code(), Some(0));
    let lines = alice.all_output().await;
    assert_eq!(lines.iter().filter(|l| l.as_str() == "sent to bob").count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn no_reconnect_after_an_idle_timeout_or_with_no_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let (mut server, addr) = start_server_with(&db, &["--idle-timeout-secs", "1"]).await;
    let mut idle = logged_in(&addr, "bob", "builder").await;
    idle.expect("you were logged out after being idle too long").await;
    assert_eq!(idle.exit().await.code(), Some(7));

    let mut once = logged_in_with(&addr, "alice", "wonderland", &["--no-reconnect"]).await;
    server.signal(Signal::SIGKILL);
    server.exit().await;
    once.expect("error: the connection to the server was lost").await;
    assert_eq!(once.exit().await.code(), Some(6));
    for proc in [&mut idle, &mut once] {
        let lines = proc.all_output().await;
        assert!(!lines.iter().any(|l| l.contains("reconnect")), "{}", lines.join("\n"));
    }
}

#[tokio::test]
async fn a_paste_over_the_limit_is_refused_locally_and_the_session_goes_on() {
    let server = TestServer::start(Config::default()).await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let mut alice = logged_in(&server.addr.to_string(), "alice", "alice-pw").await;
    alice.send(&format!("/msg bob {}", "x".repeat(70_000))).await;
    alice.expect("error: not sent: messages are limited to 4000 characters").await;
    alice.send("/msg bob still here").await;
    alice.expect("sent to bob").await;
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "still here".into()));
    alice.send("/logout").await;
    assert_eq!(alice.exit().await.code(), Some(0));
    server.stop().await;
}

#[tokio::test]
async fn the_limits_checked_before_sending_are_the_ones_the_server_said() {
    let config = Config { max_message_chars: 20, ..Config::default() };
    let server = TestServer::start(config).await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let mut alice = logged_in(&server.addr.to_string(), "alice", "alice-pw").await;
    alice.send(&format!("/msg bob {}", "y".repeat(21))).await;
    alice.expect("error: not sent: messages are limited to 20 characters").await;
    alice.send(&format!("/msg bob {}", "z".repeat(20))).await;
    alice.expect("sent to bob").await;
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "z".repeat(20)));
    alice.send("/logout").await;
    assert_eq!(alice.exit().await.code(), Some(0));
    server.stop().await;
}
