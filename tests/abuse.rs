//! Issue 18, the server side: each attack, bounded (a few hundred connections or attempts),
//! against the real server, asserting the defence. The attackers and the real users come
//! from different addresses of 127.0.0.0/8 (all loopback on Linux), chosen by binding the
//! client's side of the socket; the servers are [`TestServer::strict`], limits as configured.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{closed, code, next_any_event, password_of, seeded_store, TestServer, PATIENCE};
use confab::client::{Client, ClientError, ClientEvent, Events, MAX_SERVER_FRAME};
use confab::protocol::{
    encode_frame, ClientCodec, ClientMessage, EndReason, ErrorCode, Event, Hello, PresenceChange,
    Request, ServerMessage, PROTOCOL_VERSION,
};
use confab::server::limits::{AddrLimits, Limit};
use confab::server::rate::UserRates;
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// The loopback address 127.0.A.B.
fn lo(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// A TCP connection to `server` from `from`.
async fn socket_from(server: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// A client connected to `server` from `from` (not logged in), or the server's refusal.
async fn connect_from(server: &TestServer, from: IpAddr) -> Result<(Client, Events), ClientError> {
    Client::connect_stream(socket_from(server.addr, from).await).await
}

/// [`connect_from`] and a login as `user`.
async fn login_from(server: &TestServer, from: IpAddr, user: &str) -> (Client, Events) {
    let (client, events) = connect_from(server, from).await.expect("connected");
    client.login(user, &password_of(user)).await.expect("logged in");
    (client, events)
}

/// A raw framed connection that has said hello and been welcomed.
async fn raw_from(server: SocketAddr, from: IpAddr) -> Framed<TcpStream, ClientCodec> {
    let mut framed =
        Framed::new(socket_from(server, from).await, ClientCodec::new(MAX_SERVER_FRAME));
    let hello = Hello { version: PROTOCOL_VERSION, agent: "abuse test".into() };
    framed.send(ClientMessage::Hello(hello)).await.unwrap();
    match framed.next().await {
        Some(Ok(Ok(ServerMessage::Welcome(_)))) => framed,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The next frame on a raw connection; `None` once the server has closed it cleanly.
async fn next_raw(framed: &mut Framed<TcpStream, ClientCodec>) -> Option<ServerMessage> {
    match tokio::time::timeout(PATIENCE, framed.next()).await.expect("the server answers") {
        Some(Ok(Ok(msg))) => Some(msg),
        None => None,
        other => panic!("expected a frame or a clean close, got {other:?}"),
    }
}

/// Defaults with no refill of the per-address buckets during a test, so counts are exact.
fn frozen_addr_limits() -> AddrLimits {
    AddrLimits {
        conn_rate: Some(Limit::new(0.001, 16)),
        login_rate: Some(Limit::new(0.001, 10)),
        ..AddrLimits::default()
    }
}

#[tokio::test]
async fn a_login_spray_from_one_address_is_refused_while_another_address_logs_in() {
    let config = Config { addr_limits: frozen_addr_limits(), ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    // 16 connections from one address (its limit), 10 wrong guesses each for fresh names.
    let mut sprayers = Vec::new();
    for _ in 0..16 {
        sprayers.push(connect_from(&server, lo(0, 2)).await.unwrap());
    }
    let spray = sprayers.iter().enumerate().flat_map(|(c, (client, _))| {
        (0..10).map(move |i| {
            let client = client.clone();
            async move { client.login(&format!("nobody{c}x{i}"), "guess").await.map(|_| ()) }
        })
    });
    // Each answer: a wrong password, a refusal, or none at all (the connection was closed
    // after a refusal).
    let answer = |result: Result<(), ClientError>| match result {
        Err(ClientError::Disconnected) => None,
        other => Some(code(other)),
    };
    let spray = futures_util::future::join_all(spray);
    let real = async {
        let (client, _events) = connect_from(&server, lo(0, 3)).await.unwrap();
        client.login("alice", &password_of("alice")).await
    };
    let (results, real) = tokio::join!(spray, real);
    assert_eq!(real.expect("alice logs in during the spray").username, "alice");
    let codes: Vec<Option<ErrorCode>> = results.into_iter().map(answer).collect();
    let count = |f: fn(&Option<ErrorCode>) -> bool| codes.iter().filter(|c| f(c)).count();
    let hashed = count(|c| *c == Some(ErrorCode::InvalidCredentials));
    let limited = count(|c| matches!(c, Some(ErrorCode::RateLimited { .. })));
    let cut_off = count(Option::is_none);
    assert_eq!(hashed + limited + cut_off, 160, "only these answers: {codes:?}");
    // The address's login bucket holds 10: at most that many guesses were checked at all;
    // a connection refused a login is closed, so each was refused at most once.
    assert!((1..=10).contains(&hashed), "{hashed} guesses were hashed");
    assert!((1..=16).contains(&limited), "{limited} refusals");
    // Its connections were closed, so the address may connect again (its bucket of new
    // connections, 16 not refilling here, is spent: it is told so).
    for (_, events) in &mut sprayers {
        closed(events).await;
    }
    let refused = connect_from(&server, lo(0, 2)).await.map(|_| ());
    assert!(matches!(code(refused), ErrorCode::RateLimited { .. } | ErrorCode::TooManyConnections));
    server.stop().await;
}

#[tokio::test]
async fn a_spray_from_a_hundred_addresses_does_not_keep_a_real_user_out() {
    let server = TestServer::strict(seeded_store(":memory:"), Config::default()).await;
    let mut sprayers = Vec::new();
    for b in 1..=100 {
        sprayers.push(connect_from(&server, lo(1, b)).await.unwrap());
    }
    // Fresh names, so that no lockout stops the guessing: each costs a full hash. The first
    // wave: every address has had a turn at hashing.
    let guess = |round: usize| {
        futures_util::future::join_all(sprayers.iter().enumerate().map(move |(a, (client, _))| {
            let client = client.clone();
            async move { code(client.login(&format!("ghost{a}x{round}"), "guess").await) }
        }))
    };
    let first = guess(0).await;
    assert!(first.iter().all(|c| *c == ErrorCode::InvalidCredentials), "{first:?}");
    // The second wave, and a real user from another address in the middle of it.
    let hashed = AtomicUsize::new(0);
    let spray = futures_util::future::join_all(sprayers.iter().enumerate().map(|(a, (c, _))| {
        let (client, hashed) = (c.clone(), &hashed);
        async move {
            let code = code(client.login(&format!("ghost{a}x1"), "guess").await);
            if code == ErrorCode::InvalidCredentials {
                hashed.fetch_add(1, Ordering::SeqCst);
            }
            code
        }
    }));
    let real = async {
        let (client, _events) = connect_from(&server, lo(0, 3)).await.unwrap();
        let before = hashed.load(Ordering::SeqCst);
        let login = client.login("bob", &password_of("bob")).await;
        (login, before, hashed.load(Ordering::SeqCst))
    };
    let (codes, (real, before, after)) = tokio::join!(spray, real);
    assert_eq!(real.expect("bob logs in during the spray").username, "bob");
    assert!(before < 50, "the spray was still on when bob asked ({before} of 100 checked)");
    // Bob's address had not hashed lately, so his turn came next, not after the guesses
    // queued before him (a first-come queue would have had him wait for all of them, 50 or
    // more). The slack is for guesses hashed before his turn whose answers were still on
    // their way when he asked.
    assert!(after - before <= 25, "{} guesses were checked during bob's login", after - before);
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, ErrorCode::InvalidCredentials | ErrorCode::RateLimited { .. })),
        "{codes:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped_and_then_rate_limited_unless_exempt() {
    let limits =
        AddrLimits { exempt: vec!["127.0.0.9/32".parse().unwrap()], ..frozen_addr_limits() };
    let server = TestServer::strict(
        seeded_store(":memory:"),
        Config { addr_limits: limits, ..Config::default() },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(connect_from(&server, lo(0, 2)).await.expect("within the limit"));
    }
    assert_eq!(
        code(connect_from(&server, lo(0, 2)).await.map(|_| ())),
        ErrorCode::TooManyConnections
    );
    assert!(connect_from(&server, lo(0, 3)).await.is_ok(), "another address is not affected");
    // One closes; once the server has seen it go, the address may connect again, but its
    // bucket of new connections (16, not refilling in this test) is spent.
    let (client, mut events) = held.pop().unwrap();
    drop(client);
    closed(&mut events).await;
    let again = loop {
        match connect_from(&server, lo(0, 2)).await {
            Err(e) if e.code() == Some(ErrorCode::TooManyConnections) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(code(again.map(|_| ())), ErrorCode::RateLimited { retry_after_ms } if retry_after_ms > 0)
    );
    // An exempt network has no per-address limit.
    let mut exempt = Vec::new();
    for _ in 0..40 {
        exempt.push(connect_from(&server, lo(0, 9)).await.expect("exempt"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_broadcast_flooder_is_limited_then_cut_off_while_bystanders_stay_and_receive() {
    // Small queues: without the rate limit, the flood would fill them and the bystanders
    // (who do not read while it lasts) would be disconnected as too slow.
    let config = Config { session_queue: 16, ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    let (bob, mut bob_events) = login_from(&server, lo(0, 3), "bob").await;
    let (carol, mut carol_events) = login_from(&server, lo(0, 4), "carol").await;
    let (alice, mut alice_events) = login_from(&server, lo(0, 2), "alice").await;
    let flood = (0..200).map(|i| {
        let alice = alice.clone();
        async move { alice.broadcast(&format!("flood {i}")).await }
    });
    let results = futures_util::future::join_all(flood).await;
    let sent = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(e) if matches!(e.code(), Some(ErrorCode::RateLimited { .. }))))
        .count();
    let burst = UserRates::default().broadcast.unwrap().burst as usize;
    assert!(sent >= 1 && sent <= burst + 2, "{sent} broadcasts went out");
    assert!(limited >= 1, "the flooder was told to slow down");
    assert!(sent + limited < 200, "the flooder was cut off before the end");
    let mut ended = None;
    loop {
        match tokio::time::timeout(PATIENCE, alice_events.next()).await.expect("alice hears") {
            Some(ClientEvent::Server(Event::SessionEnded { reason })) => ended = Some(reason),
            Some(ClientEvent::Server(_)) => {}
            Some(ClientEvent::Closed { .. }) | None => break,
        }
    }
    assert_eq!(ended, Some(EndReason::Flooding));
    // Each bystander got every broadcast that was sent, saw alice disconnected, and is
    // still connected: they can talk to each other.
    for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
        let mut got = 0;
        loop {
            match next_any_event(events).await {
                Event::Broadcast { from, .. } if from == "alice" => got += 1,
                Event::Presence { user, change: PresenceChange::Disconnected, .. }
                    if user == "alice" =>
                {
                    break
                }
                _ => {}
            }
        }
        assert_eq!(got, sent, "{who} got every broadcast sent");
    }
    bob.msg("carol", "still here?").await.unwrap();
    loop {
        if let Event::Message { text, .. } = next_any_event(&mut carol_events).await {
            assert_eq!(text, "still here?");
            break;
        }
    }
    carol.msg("bob", "yes").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_connection_not_logged_in_by_the_deadline_is_closed_whatever_it_sends() {
    let config = Config { login_deadline: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    let (client, mut events) = connect_from(&server, lo(0, 2)).await.unwrap();
    // Requests keep coming, each refused: they do not keep the connection.
    let pinging = async {
        loop {
            match client.list().await {
                Err(e) if e.code() == Some(ErrorCode::NotLoggedIn) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return,
            }
        }
    };
    let ended = async {
        let reason = loop {
            match next_any_event(&mut events).await {
                Event::SessionEnded { reason } => break reason,
                _ => continue,
            }
        };
        closed(&mut events).await;
        reason
    };
    let ((), reason) = tokio::join!(pinging, ended);
    assert_eq!(reason, EndReason::LoginTimeout);
    // A login in time is not affected.
    let (alice, _a) = login_from(&server, lo(0, 3), "alice").await;
    alice.list().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_keeps_asking_before_login_is_cut_off_as_flooding() {
    let server = TestServer::strict(seeded_store(":memory:"), Config::default()).await;
    let (client, mut events) = connect_from(&server, lo(0, 2)).await.unwrap();
    let asks = (0..100).map(|_| client.list());
    let answers = futures_util::future::join_all(asks).await;
    let refused = answers.iter().filter(|a| a.as_ref().is_err_and(|e| e.code().is_some())).count();
    let refusals = UserRates::default().refusals.unwrap().burst as usize;
    assert!(refused <= refusals + 2, "{refused} refusals were answered");
    let reason = loop {
        if let Event::SessionEnded { reason } = next_any_event(&mut events).await {
            break reason;
        }
    };
    assert_eq!(reason, EndReason::Flooding);
    closed(&mut events).await;
    server.stop().await;
}

/// Writes the start of a frame and stops, on a connection logged in or not.
async fn stall(framed: &mut Framed<TcpStream, ClientCodec>) {
    let socket = framed.get_mut();
    socket.write_all(&100u32.to_be_bytes()).await.unwrap();
    socket.write_all(&[0x92; 10]).await.unwrap();
}

#[tokio::test]
async fn a_frame_stalled_half_sent_ends_the_connection() {
    let config = Config { frame_timeout: Duration::from_millis(200), ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    for logged_in in [false, true] {
        let mut framed = raw_from(server.addr, lo(0, 2)).await;
        if logged_in {
            let login = Request::Login {
                username: "alice".into(),
                password: password_of("alice"),
                direct: None,
            };
            framed.send(ClientMessage::Request { id: 1, body: login }).await.unwrap();
            assert!(matches!(
                next_raw(&mut framed).await,
                Some(ServerMessage::Reply { id: 1, result: Ok(_) })
            ));
        }
        stall(&mut framed).await;
        let reason = loop {
            match next_raw(&mut framed).await {
                Some(ServerMessage::Event(Event::SessionEnded { reason })) => break reason,
                Some(_) => continue,
                None => panic!("closed without a word (logged in: {logged_in})"),
            }
        };
        assert_eq!(reason, EndReason::StalledFrame, "logged in: {logged_in}");
        assert!(next_raw(&mut framed).await.is_none(), "then closed");
    }
    server.stop().await;
}

#[tokio::test]
async fn server_full_arrives_when_connections_run_out_never_silence() {
    let config = Config { max_connections: 3, ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    let (_alice, _a) = login_from(&server, lo(0, 2), "alice").await;
    let (_bob, _b) = login_from(&server, lo(0, 3), "bob").await;
    let _idle = connect_from(&server, lo(0, 4)).await.unwrap();
    for b in 10..40 {
        assert_eq!(code(connect_from(&server, lo(2, b)).await.map(|_| ())), ErrorCode::ServerFull);
    }
    server.stop().await;
}

#[tokio::test]
async fn the_refusal_before_a_close_is_delivered_even_with_unread_input() {
    let config = Config { max_connections: 0, ..Config::default() };
    let server = TestServer::strict(seeded_store(":memory:"), config).await;
    let hello =
        encode_frame(&ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "t".into() }))
            .unwrap();
    let ping = encode_frame(&ClientMessage::Request { id: 1, body: Request::Ping }).unwrap();
    for _ in 0..100 {
        let mut socket = socket_from(server.addr, lo(0, 2)).await;
        // More than the server reads before refusing: closing with it unread would reset
        // the connection.
        let mut burst = hello.to_vec();
        while burst.len() < 32 * 1024 {
            burst.extend_from_slice(&ping);
        }
        socket.write_all(&burst).await.unwrap();
        let mut framed = Framed::new(socket, ClientCodec::new(MAX_SERVER_FRAME));
        match next_raw(&mut framed).await {
            Some(ServerMessage::Reply { id: 0, result: Err(e) }) => {
                assert_eq!(e.code, ErrorCode::ServerFull)
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_full_store_refuses_new_messages_while_logins_and_reading_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(dir.path().join("confab.db"));
    let size = std::fs::metadata(dir.path().join("confab.db")).unwrap().len();
    store.limit_size(size + (128 << 10)).unwrap();
    let server = TestServer::with_store(store, Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let text = "x".repeat(4000);
    let mut stored = 0;
    let full = loop {
        match alice.msg("bob", &text).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 500, "the store never filled");
    };
    assert_eq!(full.code(), Some(ErrorCode::StoreFull), "{full}");
    assert!(stored > 0);
    assert_eq!(code(alice.msg("bob", "short").await), ErrorCode::StoreFull, "refused at once now");
    // Bob logs in (his login cannot be recorded) and reads what was stored for him.
    let (bob, mut bob_events) = server.login("bob").await;
    let mut got = 0;
    while got < stored {
        if let Event::Message { .. } = next_any_event(&mut bob_events).await {
            got += 1;
        }
    }
    assert_eq!(bob.history("alice", Some(5)).await.unwrap().len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    // Each start waits for its "listening on" line.
    let (mut first, _) = common::binaries::start_server(&db).await;
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab-server"))
        .args(["--plaintext", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .output();
    let second = tokio::time::timeout(PATIENCE, second).await.expect("refuses at once").unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("confab.db.lock") && stderr.contains("another confab-server"),
        "{stderr}"
    );
    first.child.kill().await.unwrap();
    // Once the first is gone, the database is free.
    let (mut third, _) = common::binaries::start_server(&db).await;
    third.child.kill().await.unwrap();
}

#[tokio::test]
async fn a_server_out_of_descriptors_still_answers_server_full() {
    // A hard limit of 200 descriptors: the server raises its soft limit to it, keeps 64
    // back, and so takes at most 136 connections.
    let mut server = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -n 200 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_confab-server"))
        .args(["--plaintext", "--listen", "127.0.0.1:0", "--db", ":memory:"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let mut held = Vec::new();
    let mut full = 0;
    for b in 1..=10 {
        for _ in 0..16 {
            let socket = socket_from(addr, lo(5, b)).await;
            let answer = tokio::time::timeout(PATIENCE, Client::connect_stream(socket));
            match answer.await.expect("an answer, not silence") {
                Ok(pair) => held.push(pair),
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::ServerFull), "{e}");
                    full += 1;
                }
            }
        }
    }
    assert!(held.len() <= 136, "{} connections taken", held.len());
    assert_eq!(held.len() + full, 160, "every connection was answered");
    assert!(full >= 24);
    server.kill().await.unwrap();
}

#[tokio::test]
async fn a_logged_in_connection_closed_for_an_oversize_frame_is_told_why() {
    let server = TestServer::strict(seeded_store(":memory:"), Config::default()).await;
    let mut framed = raw_from(server.addr, lo(0, 2)).await;
    let login =
        Request::Login { username: "alice".into(), password: password_of("alice"), direct: None };
    framed.send(ClientMessage::Request { id: 1, body: login }).await.unwrap();
    // A header announcing 100 MB, and more input the server will not read.
    let socket = framed.get_mut();
    socket.write_all(&100_000_000u32.to_be_bytes()).await.unwrap();
    socket.write_all(&[0u8; 16 * 1024]).await.unwrap();
    let error = loop {
        match next_raw(&mut framed).await {
            Some(ServerMessage::Reply { id: 0, result: Err(e) }) => break e,
            Some(_) => continue,
            None => panic!("closed without the error"),
        }
    };
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(next_raw(&mut framed).await.is_none(), "then closed");
    server.stop().await;
}

#[tokio::test]
async fn malformed_frames_past_the_refusals_bucket_are_a_flood() {
    let server = TestServer::strict(seeded_store(":memory:"), Config::default()).await;
    let mut framed = raw_from(server.addr, lo(0, 2)).await;
    let login =
        Request::Login { username: "alice".into(), password: password_of("alice"), direct: None };
    framed.send(ClientMessage::Request { id: 1, body: login }).await.unwrap();
    // Whole frames whose payload is not a message: each is answered, and each is a refusal.
    let mut junk = Vec::new();
    for _ in 0..100 {
        junk.extend_from_slice(&3u32.to_be_bytes());
        junk.extend_from_slice(&[0xc1, 0xc1, 0xc1]);
    }
    framed.get_mut().write_all(&junk).await.unwrap();
    let mut malformed = 0;
    let reason = loop {
        match next_raw(&mut framed).await {
            Some(ServerMessage::Reply { id: 0, result: Err(e) }) => {
                assert_eq!(e.code, ErrorCode::MalformedFrame);
                malformed += 1;
            }
            Some(ServerMessage::Event(Event::SessionEnded { reason })) => break reason,
            Some(_) => continue,
            None => panic!("closed without a word after {malformed} answers"),
        }
    };
    assert_eq!(reason, EndReason::Flooding);
    assert!(malformed < 100, "cut off before the end ({malformed} answered)");
    server.stop().await;
}

#[tokio::test]
async fn relaying_chat_bytes_on_links_that_are_not_yours_is_cut_off_as_flooding() {
    let server = TestServer::strict(seeded_store(":memory:"), Config::default()).await;
    let (alice, mut alice_events) = login_from(&server, lo(0, 2), "alice").await;
    let (_bob, mut bob_events) = login_from(&server, lo(0, 3), "bob").await;
    // Frames for links alice is not on: each is dropped and counts as a refused request.
    for i in 0..200u8 {
        alice.relay_chat(confab::protocol::LinkId([i; 16]), vec![0; 64]);
    }
    let reason = loop {
        if let Event::SessionEnded { reason } = next_any_event(&mut alice_events).await {
            break reason;
        }
    };
    assert_eq!(reason, EndReason::Flooding);
    // None of it reached anyone.
    while let Some(event) = bob_events.try_next() {
        let relayed = matches!(event, ClientEvent::Server(Event::RelayedChat { .. }));
        assert!(!relayed, "nothing is relayed on a link alice is not on");
    }
    server.stop().await;
}
