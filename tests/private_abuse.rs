//! Private chats under attack: strangers holding the listener's handshake slots, a peer that
//! floods, texts past the limits, lying clocks. Real server, real clients, raw sockets from
//! addresses of 127.0.0.0/8 for the attackers.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use confab::p2p::noise::{self, Cipher, Keys};
use confab::p2p::{ChatConfig, CloseReason, PrivateError, PrivateEvent, Rate, EVENT_QUEUE};
use confab::protocol::{
    now_ms, ByeReason, ChatMessage, Event, Introduction, PeerCodec, PeerMessage,
    DEFAULT_MAX_MESSAGE_CHARS,
};
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// A TCP connection to `port` on 127.0.0.1 from the address `from`, saying nothing.
async fn stranger(from: Ipv4Addr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
}

/// The listener closes `conn` (without a word): it reads end-of-file or a reset.
async fn dropped(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("expected the connection dropped, got {n} bytes"),
        Err(_) => panic!("the connection was not dropped within {PATIENCE:?}"),
    }
}

/// The listener still holds `conn` open, waiting for its hello.
fn held(conn: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(conn.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// alice asks bob through her bare server connection and bob accepts: alice's introduction
/// to bob's listener, which now expects her token from her address.
async fn introduced(alice: &mut Direct, bob: &mut Direct) -> Introduction {
    alice.client.start_private("bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    confab::client::session::accept_private(&bob.client, &bob.chats, "alice").await.unwrap();
    match next_non_presence(&mut alice.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("{other:?}"),
    }
}

/// A raw peer that has passed bob's handshake as alice (her key, a real token): the
/// connection and the link's keys, shared by whoever writes and reads it.
async fn raw_alice(
    alice: &mut Direct,
    bob: &mut Direct,
) -> (Framed<TcpStream, PeerCodec>, Arc<Mutex<Cipher>>) {
    let intro = introduced(alice, bob).await;
    let socket = TcpStream::connect(intro.addr).await.unwrap();
    let mut conn = Framed::new(socket, PeerCodec::default());
    let keys = Keys {
        identity: &alice.identity,
        me: "alice",
        peer: "bob",
        peer_key: &intro.key,
        token: &intro.token,
    };
    let (dialling, hello) = noise::initiate(keys).unwrap();
    conn.send(hello).await.unwrap();
    let cipher = match tokio::time::timeout(PATIENCE, conn.next()).await {
        Ok(Some(Ok(Ok(PeerMessage::Accepted { username, handshake })))) => {
            assert_eq!(username, "bob");
            dialling.finish(&handshake).unwrap()
        }
        other => panic!("expected Accepted, got {other:?}"),
    };
    // The requester's first frame on a connection makes it the chat.
    let mut cipher = cipher;
    conn.send(cipher.seal(&ChatMessage::Ping { echo: 0 }).unwrap()).await.unwrap();
    common::assert_opened(next_private(&mut bob.private).await, "alice");
    (conn, Arc::new(Mutex::new(cipher)))
}

/// A text frame sealed for the link.
fn text(cipher: &Mutex<Cipher>, text: String, sent_at: i64) -> PeerMessage {
    cipher.lock().unwrap().seal(&ChatMessage::Text { text, sent_at }).unwrap()
}

#[tokio::test]
async fn strangers_holding_every_handshake_slot_do_not_stop_a_private_chat() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    // 40 idle connections from 40 addresses: more than the listener gives strangers.
    let mut strangers = Vec::new();
    for i in 0..40 {
        strangers.push(stranger(Ipv4Addr::new(127, 0, 0, 2 + i), bob.port).await);
    }
    // One more is dropped at once: every stranger's slot is taken (connections are taken in
    // order, so all 40 have been seen by now).
    dropped(stranger(Ipv4Addr::new(127, 0, 0, 60), bob.port).await).await;
    let still_held = strangers.iter().filter(|conn| held(conn)).count();
    assert_eq!(still_held, confab::p2p::HandshakeLimits::default().strangers);

    // The introduced peer still gets in, and the chat works.
    open_private(&mut alice, &mut bob).await;
    alice.chats.send("bob", "through the crowd").await.unwrap();
    assert_eq!(
        next_private_message(&mut bob.private).await,
        ("alice".into(), "through the crowd".into())
    );
    // Strangers renewing their connections change nothing for the next chat either.
    for (i, conn) in strangers.iter_mut().enumerate() {
        *conn = stranger(Ipv4Addr::new(127, 0, 0, 2 + i as u8), bob.port).await;
    }
    let mut carol = server.login_direct("carol").await;
    open_private(&mut carol, &mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn one_address_holds_only_a_few_handshake_slots() {
    let server = TestServer::start(Config::default()).await;
    let bob = server.login_direct("bob").await;
    let per_addr = confab::p2p::HandshakeLimits::default().per_addr;
    let from = Ipv4Addr::new(127, 0, 0, 7);
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(stranger(from, bob.port).await);
    }
    let late = conns.split_off(per_addr);
    for conn in late {
        dropped(conn).await;
    }
    assert!(conns.iter().all(held), "the first {per_addr} wait for their hello");
    // Another address is not affected.
    let other = stranger(Ipv4Addr::new(127, 0, 0, 8), bob.port).await;
    let probe = stranger(from, bob.port).await;
    dropped(probe).await;
    assert!(held(&other));
    server.stop().await;
}

#[tokio::test]
async fn strangers_at_the_peers_own_address_cannot_keep_it_out() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let intro = introduced(&mut alice, &mut bob).await;
    // Now bob expects alice from 127.0.0.1. Someone else at that address (a shared NAT)
    // opens 40 silent connections: they take the expected peer's lane and evict each other.
    let mut squatters = Vec::new();
    for _ in 0..40 {
        squatters.push(stranger(Ipv4Addr::LOCALHOST, bob.port).await);
    }
    let reserved = confab::p2p::HandshakeLimits::default().reserved;
    for conn in squatters.drain(..40 - reserved) {
        dropped(conn).await;
    }
    assert!(squatters.iter().all(held));
    // alice's connection evicts the oldest squatter and, having said hello, stays.
    alice.chats.connect(intro);
    common::assert_opened(next_private(&mut alice.private).await, "bob");
    common::assert_opened(next_private(&mut bob.private).await, "alice");
    assert_eq!(squatters.iter().filter(|conn| held(conn)).count(), reserved - 1);
    alice.chats.send("bob", "made it").await.unwrap();
    assert_eq!(next_private_message(&mut bob.private).await, ("alice".into(), "made it".into()));
    server.stop().await;
}

/// Writes up to `frames` texts of 4,000 characters to `sink` as fast as TCP takes them,
/// counting each one written, until a write fails.
fn flood(
    mut sink: impl futures_util::Sink<PeerMessage> + Unpin + Send + 'static,
    cipher: Arc<Mutex<Cipher>>,
    frames: usize,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let task = tokio::spawn(async move {
        let big = "x".repeat(DEFAULT_MAX_MESSAGE_CHARS);
        for _ in 0..frames {
            let frame = text(&cipher, big.clone(), now_ms());
            if sink.send(frame).await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (written, task)
}

/// Waits until `written` has not moved for half a second: the writer is blocked.
async fn stalled(written: &AtomicUsize) -> usize {
    let mut last = usize::MAX;
    tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .expect("the flooder never stalled")
}

#[tokio::test]
async fn a_flooding_peer_is_held_back_while_nobody_reads_and_cut_off_when_it_goes_too_fast() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let slow =
        ChatConfig { message_rate: Rate { burst: 80, per_second: 1 }, ..ChatConfig::default() };
    let mut bob = server.login_direct_with("bob", slow).await;
    let (conn, cipher) = raw_alice(&mut alice, &mut bob).await;
    let (sink, mut stream) = conn.split();
    // What bob says to the flooder, read as it comes.
    let keys = cipher.clone();
    let told = tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            if let Ok(PeerMessage::Sealed(sealed)) = frame {
                if let Ok(ChatMessage::Bye { reason }) = keys.lock().unwrap().open(&sealed) {
                    return Some(reason);
                }
            }
        }
        None
    });
    // 20,000 frames of 4,000 characters: 80 MB, which an unbounded receiver would take in.
    const FRAMES: usize = 20_000;
    let (written, writer) = flood(sink, cipher, FRAMES);

    // bob's front end reads nothing (a terminal paused with Ctrl-S): the queue fills, bob's
    // chat stops reading, and TCP holds the flooder back.
    let stuck_at = stalled(&written).await;
    assert_eq!(bob.private.queued(), EVENT_QUEUE);
    assert!(stuck_at < FRAMES / 10, "the flooder wrote {stuck_at} of {FRAMES} frames");
    assert!(bob.chats.is_open("alice"));

    // The front end reads again: the queued messages come, then the chat is cut off once
    // the peer has gone past its burst.
    let mut messages = 0;
    let reason = loop {
        match next_private(&mut bob.private).await {
            PrivateEvent::Message { peer, .. } if peer == "alice" => messages += 1,
            PrivateEvent::Closed { peer, reason } if peer == "alice" => break reason,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reason, CloseReason::Flooded);
    // The burst, plus one a second for however long this took.
    assert!(messages <= 80 + PATIENCE.as_secs() as usize, "{messages} messages shown");
    assert!(messages >= EVENT_QUEUE, "{messages} messages shown");
    assert!(bob.chats.is_empty());
    // The flooder is told why before the connection goes.
    let bye = tokio::time::timeout(PATIENCE, told).await.expect("no goodbye in time").unwrap();
    assert_eq!(bye, Some(ByeReason::TooFast));
    writer.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_real_client_that_sends_too_fast_is_told_so_on_both_sides() {
    let server = TestServer::start(Config::default()).await;
    // alice's client lets her send far faster than bob's takes.
    let eager = ChatConfig {
        message_rate: Rate { burst: 1000, per_second: 1000 },
        ..ChatConfig::default()
    };
    let strict =
        ChatConfig { message_rate: Rate { burst: 10, per_second: 1 }, ..ChatConfig::default() };
    let mut alice = server.login_direct_with("alice", eager).await;
    let mut bob = server.login_direct_with("bob", strict).await;
    open_private(&mut alice, &mut bob).await;
    for i in 0..50 {
        if alice.chats.send("bob", &format!("spam {i}")).await.is_err() {
            break;
        }
    }
    let mut messages = 0;
    loop {
        match next_private(&mut bob.private).await {
            PrivateEvent::Message { .. } => messages += 1,
            PrivateEvent::Closed { reason, .. } => {
                assert_eq!(reason, CloseReason::Flooded);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((10..=10 + PATIENCE.as_secs() as usize).contains(&messages), "{messages}");
    assert_eq!(
        next_private(&mut alice.private).await,
        PrivateEvent::Closed { peer: "bob".into(), reason: CloseReason::Peer(ByeReason::TooFast) }
    );
    server.stop().await;
}

#[tokio::test]
async fn our_own_sends_are_held_to_the_rate_we_ask_of_peers() {
    let server = TestServer::start(Config::default()).await;
    let config =
        ChatConfig { message_rate: Rate { burst: 5, per_second: 1 }, ..ChatConfig::default() };
    let mut alice = server.login_direct_with("alice", config.clone()).await;
    let mut bob = server.login_direct_with("bob", config).await;
    open_private(&mut alice, &mut bob).await;
    for i in 0..5 {
        alice.chats.send("bob", &format!("{i}")).await.unwrap();
    }
    let err = alice.chats.send("bob", "one too many").await.unwrap_err();
    assert!(matches!(&err, PrivateError::TooFast(peer) if peer == "bob"), "{err}");
    assert!(err.to_string().contains("was not sent"), "{err}");
    for i in 0..5 {
        assert_eq!(next_private_message(&mut bob.private).await, ("alice".into(), format!("{i}")));
    }
    // Nothing was lost: the chat is open on both sides.
    assert!(alice.chats.is_open("bob") && bob.chats.is_open("alice"));
    server.stop().await;
}

#[tokio::test]
async fn received_texts_are_held_to_the_servers_limits() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let (mut conn, cipher) = raw_alice(&mut alice, &mut bob).await;
    let too_long = "y".repeat(DEFAULT_MAX_MESSAGE_CHARS + 1);
    let longest = "z".repeat(DEFAULT_MAX_MESSAGE_CHARS);
    // A line break is text (multi-line messages); a carriage return is not.
    for bad in [too_long, "  ".into(), "fake\rline".into()] {
        conn.send(text(&cipher, bad, now_ms())).await.unwrap();
    }
    conn.send(text(&cipher, longest.clone(), now_ms())).await.unwrap();
    let why = |event| match event {
        PrivateEvent::Refused { peer, why } if peer == "alice" => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        why(next_private(&mut bob.private).await),
        format!("messages are limited to {DEFAULT_MAX_MESSAGE_CHARS} characters")
    );
    assert!(why(next_private(&mut bob.private).await).contains("empty"));
    assert!(why(next_private(&mut bob.private).await).contains("control characters"));
    assert_eq!(next_private_message(&mut bob.private).await, ("alice".into(), longest));

    // A frame header past the limit ends the chat before anything is read into memory.
    conn.get_mut().write_all(&(10u32 << 20).to_be_bytes()).await.unwrap();
    assert_eq!(
        next_private(&mut bob.private).await,
        PrivateEvent::Closed { peer: "alice".into(), reason: CloseReason::Broken }
    );
    assert!(bob.chats.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_private_message_carries_our_time_beside_the_peers_claim() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let (mut conn, cipher) = raw_alice(&mut alice, &mut bob).await;
    let an_hour_ago = now_ms() - 3_600_000;
    let before = now_ms();
    conn.send(text(&cipher, "from the past".into(), an_hour_ago)).await.unwrap();
    match next_private(&mut bob.private).await {
        PrivateEvent::Message { text, sent_at, received_at, .. } => {
            assert_eq!(text, "from the past");
            assert_eq!(sent_at, an_hour_ago, "the claim is kept");
            assert!((before..=now_ms()).contains(&received_at), "stamped on arrival");
            let line = confab::client::format::private(&PrivateEvent::Message {
                peer: "alice".into(),
                text,
                sent_at,
                received_at,
            });
            assert!(line.contains("(private, sent "), "{line}");
            assert!(line.starts_with(&format!("[{}]", confab::client::format::clock(received_at))));
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
