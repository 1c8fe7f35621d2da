//! Handshake, login, registration, lockout and bad input, against the real server.

mod common;

use std::time::Duration;

use bytes::BufMut;
use common::*;
use confab::client::{Client, ClientError};
use confab::protocol::{
    encode_frame, ClientCodec, ClientMessage, ErrorCode, Hello, Reply, Request, ServerMessage,
    PROTOCOL_VERSION,
};
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[tokio::test]
async fn right_password_logs_in_and_wrong_one_is_refused() {
    let server = TestServer::start(Config::default()).await;
    let (client, _events) = server.connect().await;
    assert_eq!(code(client.login("alice", "nope").await), ErrorCode::InvalidCredentials);
    let info = client.login("alice", "alice-pw").await.unwrap();
    assert_eq!(info.username, "alice");
    assert!(!info.created);
    assert_eq!(code(client.login("alice", "alice-pw").await), ErrorCode::AlreadyAuthenticated);
    server.stop().await;
}

#[tokio::test]
async fn unknown_name_with_closed_registration_looks_like_a_wrong_password() {
    let server = TestServer::start(Config::default()).await;
    let (client, _events) = server.connect().await;
    let unknown = client.login("zed", "whatever").await.unwrap_err();
    let wrong = client.login("alice", "whatever").await.unwrap_err();
    assert_eq!(unknown.to_string(), wrong.to_string());
    assert_eq!(unknown.code(), Some(ErrorCode::InvalidCredentials));
    // And the account was not created.
    assert_eq!(code(client.login("zed", "whatever").await), ErrorCode::InvalidCredentials);
    server.stop().await;
}

#[tokio::test]
async fn open_registration_creates_an_account_once() {
    let config = Config { open_registration: true, ..Config::default() };
    let server = TestServer::start(config).await;
    let (zed, _zed_events) = server.connect().await;
    let info = zed.login("zed", "zed-secret").await.unwrap();
    assert!(info.created);
    let (alice, _alice_events) = server.login("alice").await;
    zed.logout().await.unwrap();
    // zed now exists: others can message zed, and only the chosen password works.
    assert_eq!(alice.msg("zed", "welcome").await.unwrap(), confab::protocol::Delivery::Stored);
    let (again, _again_events) = server.connect().await;
    assert_eq!(code(again.login("zed", "other").await), ErrorCode::InvalidCredentials);
    let info = again.login("zed", "zed-secret").await.unwrap();
    assert!(!info.created);
    assert_eq!(info.offline_messages, 1);
    server.stop().await;
}

#[tokio::test]
async fn invalid_usernames_are_refused_clearly() {
    let config = Config { open_registration: true, ..Config::default() };
    let server = TestServer::start(config).await;
    let (client, _events) = server.connect().await;
    for bad in ["", "has space", "sla/sh", &"x".repeat(33)] {
        assert_eq!(code(client.login(bad, "pw").await), ErrorCode::InvalidArgument, "{bad:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_name_everywhere_until_it_expires() {
    let lockout = Duration::from_millis(700);
    let config = Config { max_failed_logins: 3, lockout, ..Config::default() };
    let server = TestServer::start(config).await;
    // Three failures from three different connections.
    for i in 0..3 {
        let (client, _events) = server.connect().await;
        let err = code(client.login("bob", "wrong").await);
        if i < 2 {
            assert_eq!(err, ErrorCode::InvalidCredentials);
        } else {
            assert!(matches!(err, ErrorCode::LockedOut { .. }), "{err:?}");
        }
    }
    // Even the right password is refused now, from a fresh connection.
    let (client, _events) = server.connect().await;
    let err = code(client.login("bob", "bob-pw").await);
    assert!(matches!(err, ErrorCode::LockedOut { retry_after_secs: 1 }), "{err:?}");
    // Other names are not affected.
    server.login("alice").await;
    // After the lock expires the right password works.
    tokio::time::sleep(lockout).await;
    client.login("bob", "bob-pw").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unknown_names_lock_too_with_closed_registration() {
    let config = Config { max_failed_logins: 2, ..Config::default() };
    let server = TestServer::start(config).await;
    let (client, _events) = server.connect().await;
    assert_eq!(code(client.login("ghost", "a").await), ErrorCode::InvalidCredentials);
    assert!(matches!(code(client.login("ghost", "b").await), ErrorCode::LockedOut { .. }));
    server.stop().await;
}

#[tokio::test]
async fn a_second_login_of_an_online_user_is_refused_with_its_own_code() {
    let server = TestServer::start(Config::default()).await;
    let (_first, _events) = server.login("carol").await;
    let (second, _second_events) = server.connect().await;
    // A wrong password does not reveal that carol is online.
    assert_eq!(code(second.login("carol", "wrong").await), ErrorCode::InvalidCredentials);
    assert_eq!(code(second.login("carol", "carol-pw").await), ErrorCode::AlreadyLoggedIn);
    server.stop().await;
}

#[tokio::test]
async fn commands_before_login_are_refused() {
    let server = TestServer::start(Config::default()).await;
    let (client, _events) = server.connect().await;
    assert_eq!(code(client.list().await), ErrorCode::NotLoggedIn);
    assert_eq!(code(client.msg("bob", "hi").await), ErrorCode::NotLoggedIn);
    client.login("alice", "alice-pw").await.unwrap();
    client.list().await.unwrap();
    server.stop().await;
}

async fn raw(server: &TestServer) -> Framed<TcpStream, ClientCodec> {
    let socket = TcpStream::connect(server.addr).await.unwrap();
    Framed::new(socket, ClientCodec::default())
}

async fn hello(framed: &mut Framed<TcpStream, ClientCodec>, version: u32) -> ServerMessage {
    let hello = Hello { version, agent: "test".into() };
    framed.send(ClientMessage::Hello(hello)).await.unwrap();
    next_frame(framed).await.expect("an answer to hello")
}

async fn next_frame(framed: &mut Framed<TcpStream, ClientCodec>) -> Option<ServerMessage> {
    match tokio::time::timeout(PATIENCE, framed.next()).await.expect("in time") {
        Some(Ok(Ok(msg))) => Some(msg),
        Some(Ok(Err(e))) => panic!("undecodable frame: {e}"),
        Some(Err(_)) | None => None,
    }
}

fn error_code(msg: ServerMessage) -> ErrorCode {
    match msg {
        ServerMessage::Reply { result: Err(e), .. } => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn another_protocol_version_gets_a_clear_error_and_is_closed() {
    let server = TestServer::start(Config::default()).await;
    let mut framed = raw(&server).await;
    let answer = hello(&mut framed, PROTOCOL_VERSION + 1).await;
    let ServerMessage::Reply { result: Err(e), .. } = answer else { panic!("{answer:?}") };
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    assert!(e.message.contains(&format!("version {PROTOCOL_VERSION}")), "{}", e.message);
    assert!(next_frame(&mut framed).await.is_none(), "closed after the refusal");

    // The typed client reports it as a server error.
    let mut framed = raw(&server).await;
    framed.send(ClientMessage::Request { id: 1, body: Request::List }).await.unwrap();
    assert_eq!(error_code(next_frame(&mut framed).await.unwrap()), ErrorCode::HandshakeRequired);
    server.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_gets_an_error_and_closes_only_that_connection() {
    let config = Config { max_frame: 1024, ..Config::default() };
    let server = TestServer::start(config).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let mut framed = raw(&server).await;
    assert!(matches!(hello(&mut framed, PROTOCOL_VERSION).await, ServerMessage::Welcome(_)));
    // A header announcing 100 MB; the payload never comes.
    framed.get_mut().write_all(&(100_000_000u32).to_be_bytes()).await.unwrap();
    assert_eq!(error_code(next_frame(&mut framed).await.unwrap()), ErrorCode::FrameTooLarge);
    assert!(next_frame(&mut framed).await.is_none(), "closed after the error");

    // A real message larger than the frame limit, from a logged-in client.
    let (bob, mut bob_events) = server.login("bob").await;
    assert!(matches!(
        next_event(&mut alice_events).await,
        confab::protocol::Event::Presence { .. }
    ));
    let huge = "x".repeat(4000);
    assert!(matches!(bob.msg("alice", &huge).await, Err(ClientError::Disconnected)));
    common::closed(&mut bob_events).await;
    // alice is unaffected and learns that bob dropped.
    assert!(matches!(
        next_event(&mut alice_events).await,
        confab::protocol::Event::Presence {
            change: confab::protocol::PresenceChange::Disconnected,
            ..
        }
    ));
    alice.list().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_connection_goes_on() {
    let server = TestServer::start(Config::default()).await;
    let mut framed = raw(&server).await;
    assert!(matches!(hello(&mut framed, PROTOCOL_VERSION).await, ServerMessage::Welcome(_)));
    let mut garbage = bytes::BytesMut::new();
    garbage.put_u32(5);
    garbage.put_slice(&[0xc1, 1, 2, 3, 4]);
    framed.get_mut().write_all(&garbage).await.unwrap();
    assert_eq!(error_code(next_frame(&mut framed).await.unwrap()), ErrorCode::MalformedFrame);
    // A valid MessagePack value that is not a message.
    framed.get_mut().write_all(&encode_frame(&(1, "two", 3.0)).unwrap()).await.unwrap();
    assert_eq!(error_code(next_frame(&mut framed).await.unwrap()), ErrorCode::MalformedFrame);
    // A second hello.
    framed.send(ClientMessage::Hello(Hello { version: 1, agent: "x".into() })).await.unwrap();
    assert_eq!(error_code(next_frame(&mut framed).await.unwrap()), ErrorCode::HandshakeRequired);
    // The connection still works.
    let login =
        Request::Login { username: "alice".into(), password: "alice-pw".into(), direct: None };
    framed.send(ClientMessage::Request { id: 9, body: login }).await.unwrap();
    match next_frame(&mut framed).await.unwrap() {
        ServerMessage::Reply { id: 9, result: Ok(Reply::LoggedIn { .. }) } => {}
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_clearly() {
    let config = Config { max_connections: 1, ..Config::default() };
    let server = TestServer::start(config).await;
    let (_alice, _events) = server.login("alice").await;
    let err = Client::connect(server.addr).await.err().expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::ServerFull));
    server.stop().await;
}

#[tokio::test]
async fn random_garbage_never_hurts_the_server_or_other_sessions() {
    use rand::{Rng, SeedableRng};
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..64 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        let mut bytes = vec![0u8; rng.gen_range(1..2048)];
        rng.fill(&mut bytes[..]);
        if round % 2 == 0 {
            // Half the rounds get past the handshake first.
            let hello =
                ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "f".into() });
            socket.write_all(&encode_frame(&hello).unwrap()).await.unwrap();
        }
        // The server may close on us mid-write; that is its right.
        let _ = socket.write_all(&bytes).await;
    }
    assert_eq!(alice.msg("bob", "still fine").await.unwrap(), confab::protocol::Delivery::Online);
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "still fine".into()));
    server.stop().await;
}
