//! How sessions end: idle timeout, dropped connections, slow readers, server shutdown.

mod common;

use std::time::Duration;

use common::*;
use confab::client::ClientEvent;
use confab::protocol::{
    ClientCodec, ClientMessage, Delivery, EndReason, Event, Hello, PresenceChange, Request,
    ServerMessage, PROTOCOL_VERSION,
};
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Skips events until `user`'s presence changes; returns the change.
async fn presence_of(events: &mut confab::client::Events, user: &str) -> PresenceChange {
    loop {
        if let Event::Presence { user: u, change, .. } = next_event(events).await {
            if u == user {
                return change;
            }
        }
    }
}

#[tokio::test]
async fn an_idle_user_is_logged_out_with_a_notice_even_while_receiving() {
    let idle = Duration::from_millis(500);
    let server = TestServer::start(Config { idle_timeout: idle, ..Config::default() }).await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let (alice, mut alice_events) = server.login("alice").await;
    // alice keeps sending (so she stays active), bob only receives: bob must still time out.
    let mut notice = None;
    for _ in 0..200 {
        alice.msg("bob", "still there?").await.unwrap();
        tokio::time::sleep(idle / 10).await;
        while let Some(event) = bob_events.try_next() {
            if let ClientEvent::Server(Event::SessionEnded { reason }) = event {
                notice = Some(reason);
            } else if let ClientEvent::Server(Event::Message { id, .. }) = event {
                // bob's client acknowledges what it shows: that is not bob being active.
                bob_events.ack(id);
            }
        }
        if notice.is_some() {
            break;
        }
    }
    assert_eq!(notice, Some(EndReason::IdleTimeout));
    closed(&mut bob_events).await;
    assert_eq!(presence_of(&mut alice_events, "bob").await, PresenceChange::TimedOut);
    // alice, who kept sending, is still logged in.
    assert!(alice.list().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_abrupt_disconnect_logs_the_user_out() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, bob_events) = server.login("bob").await;
    assert_eq!(presence_of(&mut alice_events, "bob").await, PresenceChange::LoggedIn);
    drop((bob, bob_events));
    assert_eq!(presence_of(&mut alice_events, "bob").await, PresenceChange::Disconnected);
    assert!(alice.list().await.unwrap().is_empty());
    let seen = alice.who_else_since(60).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].online, "bob shows as offline");
    // bob can log straight back in: the dropped session is gone.
    let (_bob, _e) = server.login("bob").await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_every_client_and_returns() {
    let server = TestServer::start(Config::default()).await;
    let (_alice, mut alice_events) = server.login("alice").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let (unauthenticated, mut waiting_events) = server.connect().await;
    server.stop().await;
    for events in [&mut alice_events, &mut bob_events, &mut waiting_events] {
        loop {
            match next_event(events).await {
                Event::SessionEnded { reason } => {
                    assert_eq!(reason, EndReason::ServerShutdown);
                    break;
                }
                Event::Presence { change, .. } => assert_eq!(change, PresenceChange::LoggedIn),
                other => panic!("{other:?}"),
            }
        }
        closed(events).await;
    }
    drop(unauthenticated);
}

#[tokio::test]
async fn a_reader_too_slow_is_dropped_and_its_messages_kept() {
    let config =
        Config { session_queue: 8, write_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::start(config).await;
    let (alice, mut alice_events) = server.login("alice").await;

    // bob logs in over a raw socket and then never reads.
    let socket = TcpStream::connect(server.addr).await.unwrap();
    let mut bob = Framed::new(socket, ClientCodec::default());
    bob.send(ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "slow".into() }))
        .await
        .unwrap();
    let login =
        Request::Login { username: "bob".into(), password: password_of("bob"), direct: None };
    bob.send(ClientMessage::Request { id: 1, body: login }).await.unwrap();
    assert_eq!(presence_of(&mut alice_events, "bob").await, PresenceChange::LoggedIn);
    // Until bob's (empty) catch-up has ended, alice's messages would wait in the log for a
    // session that never acknowledges, and it would never count as too slow.
    loop {
        let frame = tokio::time::timeout(PATIENCE, bob.next()).await.expect("bob hears");
        if let Some(Ok(Ok(ServerMessage::Event(Event::CaughtUp)))) = frame {
            break;
        }
    }

    // alice writes until the server stops queueing for bob and stores instead.
    let text = "x".repeat(3000);
    let mut sent = 0;
    loop {
        sent += 1;
        assert!(sent < 20_000, "bob was never dropped");
        if alice.msg("bob", &format!("{sent} {text}")).await.unwrap() == Delivery::Stored {
            break;
        }
    }
    assert_eq!(presence_of(&mut alice_events, "bob").await, PresenceChange::Disconnected);
    drop(bob);

    // What the server could not write is waiting for bob, in order, ending with the last.
    let (bob, mut bob_events) = server.connect().await;
    let waiting = bob.login("bob", &password_of("bob")).await.unwrap().offline_messages;
    assert!(waiting >= 1);
    let mut last = 0;
    for _ in 0..waiting {
        let (_, text) = next_message(&mut bob_events).await;
        let n: u32 = text.split(' ').next().unwrap().parse().unwrap();
        assert!(n > last, "in order");
        last = n;
    }
    assert_eq!(last, sent);
    server.stop().await;
}
