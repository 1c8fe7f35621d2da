//! Direct messages, offline delivery, broadcast, lists, blocks and whoelsesince.

mod common;

use common::*;
use confab::protocol::{now_ms, Delivery, ErrorCode, Event, PresenceChange};
use confab::server::Config;
use confab::store::Store;

fn names(users: &[confab::protocol::OnlineUser]) -> Vec<&str> {
    users.iter().map(|u| u.name.as_str()).collect()
}

#[tokio::test]
async fn a_message_reaches_an_online_user_with_its_time() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let before = now_ms();
    assert_eq!(alice.msg("bob", "hello bob").await.unwrap(), Delivery::Online);
    match next_event(&mut bob_events).await {
        Event::Message { from, text, sent_at, offline, .. } => {
            assert_eq!((from.as_str(), text.as_str(), offline), ("alice", "hello bob", false));
            assert!(sent_at >= before && sent_at <= now_ms());
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_multi_line_message_keeps_its_line_breaks_and_other_controls_stay_refused() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    for bad in ["a\rb", "a\tb", "a\u{85}b"] {
        assert_eq!(code(alice.msg("bob", bad).await), ErrorCode::InvalidArgument, "{bad:?}");
    }
    alice.msg("bob", "agenda:\n1. windows\n2. paste").await.unwrap();
    assert_eq!(
        next_message(&mut bob_events).await,
        ("alice".into(), "agenda:\n1. windows\n2. paste".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_recipients_and_texts_are_clear_errors() {
    let config = Config { max_message_chars: 10, ..Config::default() };
    let server = TestServer::start(config).await;
    let (alice, _a) = server.login("alice").await;
    assert_eq!(code(alice.msg("alice", "me").await), ErrorCode::SelfTarget);
    assert_eq!(code(alice.msg("nobody", "hi").await), ErrorCode::UnknownUser);
    assert_eq!(code(alice.msg("bob", "   ").await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.msg("bob", "01234567890").await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.msg("bob", "a\x1b[2Jb").await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.broadcast("").await), ErrorCode::InvalidArgument);
    // Nothing of that was stored for bob.
    let (_bob, mut bob_events) = server.connect().await;
    let info = _bob.login("bob", "bob-pw").await.unwrap();
    assert_eq!(info.offline_messages, 0);
    assert_quiet(&mut bob_events, &alice, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn offline_messages_arrive_at_next_login_oldest_first_with_original_times() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (carol, _c) = server.login("carol").await;
    let mut sent = Vec::new();
    for (who, text) in [(&alice, "first"), (&carol, "second"), (&alice, "third")] {
        assert_eq!(who.msg("bob", text).await.unwrap(), Delivery::Stored);
        sent.push(now_ms());
    }
    let (bob, mut bob_events) = server.connect().await;
    let info = bob.login("bob", "bob-pw").await.unwrap();
    assert_eq!(info.offline_messages, 3);
    let mut previous = 0;
    for (i, (from, text)) in
        [("alice", "first"), ("carol", "second"), ("alice", "third")].iter().enumerate()
    {
        match next_event(&mut bob_events).await {
            Event::Message { from: f, text: t, sent_at, offline: true, .. } => {
                assert_eq!((f.as_str(), t.as_str()), (*from, *text));
                assert!(sent_at >= previous && sent_at <= sent[i], "original send time kept");
                previous = sent_at;
            }
            other => panic!("{other:?}"),
        }
    }
    bob.logout().await.unwrap();
    // Delivered once only.
    let (bob, mut bob_events) = server.connect().await;
    assert_eq!(bob.login("bob", "bob-pw").await.unwrap().offline_messages, 0);
    assert_quiet(&mut bob_events, &alice, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn offline_messages_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let server = TestServer::on_disk(&db).await;
    let (alice, _a) = server.login("alice").await;
    assert_eq!(alice.msg("dave", "see you after the restart").await.unwrap(), Delivery::Stored);
    server.stop().await;

    let server = TestServer::reopen(&db).await;
    let (dave, mut dave_events) = server.connect().await;
    assert_eq!(dave.login("dave", "dave-pw").await.unwrap().offline_messages, 1);
    assert_eq!(
        next_message(&mut dave_events).await,
        ("alice".into(), "see you after the restart".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn broadcast_skips_the_sender_and_those_who_block_them() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let (carol, mut carol_events) = server.login("carol").await;
    carol.block("alice").await.unwrap();
    let (delivered, skipped) = alice.broadcast("hello all").await.unwrap();
    assert_eq!((delivered, skipped), (1, 1));
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "hello all".into()));
    // carol got nothing, alice did not get her own broadcast.
    assert_quiet(&mut carol_events, &bob, "carol").await;
    let _ = next_event(&mut alice_events).await; // bob logged in
    let _ = next_event(&mut alice_events).await; // carol logged in
    assert_quiet(&mut alice_events, &bob, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn list_shows_others_online_with_their_login_time() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    assert!(alice.list().await.unwrap().is_empty());
    let before = now_ms();
    let (bob, _b) = server.login("bob").await;
    let (_carol, _c) = server.login("carol").await;
    let list = alice.list().await.unwrap();
    assert_eq!(names(&list), ["bob", "carol"]);
    assert!(list[0].since >= before && list[0].since <= now_ms());
    bob.logout().await.unwrap();
    assert_eq!(names(&alice.list().await.unwrap()), ["carol"]);
    server.stop().await;
}

#[tokio::test]
async fn presence_is_announced_for_login_and_logout() {
    let server = TestServer::start(Config::default()).await;
    let (_alice, mut alice_events) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    let presence = |e: Event| match e {
        Event::Presence { user, change, .. } => (user, change),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        presence(next_event(&mut alice_events).await),
        ("bob".into(), PresenceChange::LoggedIn)
    );
    bob.logout().await.unwrap();
    assert_eq!(
        presence(next_event(&mut alice_events).await),
        ("bob".into(), PresenceChange::LoggedOut)
    );
    server.stop().await;
}

#[tokio::test]
async fn blocking_silences_the_blocked_user_in_every_way() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let (carol, _c) = server.login("carol").await;
    let _ = next_event(&mut alice_events).await; // bob logged in
    let _ = next_event(&mut alice_events).await; // carol logged in
    let _ = next_event(&mut bob_events).await; // carol logged in

    alice.block("bob").await.unwrap();
    // bob cannot message alice, and nothing is stored.
    assert_eq!(code(bob.msg("alice", "hi").await), ErrorCode::BlockedByRecipient);
    // bob's broadcasts skip alice, and bob is told.
    assert_eq!(bob.broadcast("all").await.unwrap(), (1, 1));
    // bob does not see alice in lists.
    assert_eq!(names(&bob.list().await.unwrap()), ["carol"]);
    let seen: Vec<_> = bob.who_else_since(60).await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(seen, ["carol"]);
    // alice still sees bob.
    assert_eq!(names(&alice.list().await.unwrap()), ["bob", "carol"]);
    // No presence crosses the block in either direction: bob does not see alice go and
    // come back, then alice does not see bob go and come back.
    assert_quiet(&mut alice_events, &carol, "alice").await;
    alice.logout().await.unwrap();
    let (alice, mut alice_events) = server.login("alice").await;
    assert_quiet(&mut bob_events, &carol, "bob").await;
    bob.logout().await.unwrap();
    let (bob, _bob_events) = server.login("bob").await;
    assert_quiet(&mut alice_events, &carol, "alice").await;
    // The block persists and can be undone.
    assert_eq!(code(bob.msg("alice", "still?").await), ErrorCode::BlockedByRecipient);
    alice.unblock("bob").await.unwrap();
    assert_eq!(bob.msg("alice", "hello again").await.unwrap(), Delivery::Online);
    assert_eq!(next_message(&mut alice_events).await, ("bob".into(), "hello again".into()));
    assert_eq!(names(&bob.list().await.unwrap()), ["alice", "carol"]);
    server.stop().await;
}

#[tokio::test]
async fn a_block_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let server = TestServer::on_disk(&db).await;
    let (dave, _d) = server.login("dave").await;
    dave.block("carol").await.unwrap();
    server.stop().await;

    let server = TestServer::reopen(&db).await;
    let (carol, _c) = server.login("carol").await;
    assert_eq!(code(carol.msg("dave", "hi").await), ErrorCode::BlockedByRecipient);
    server.stop().await;
}

#[tokio::test]
async fn block_and_unblock_check_their_target() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    assert_eq!(code(alice.block("alice").await), ErrorCode::SelfTarget);
    assert_eq!(code(alice.block("nobody").await), ErrorCode::UnknownUser);
    assert_eq!(code(alice.unblock("bob").await), ErrorCode::NotBlocked);
    alice.block("bob").await.unwrap();
    alice.block("bob").await.unwrap(); // blocking twice is harmless
    alice.unblock("bob").await.unwrap();
    assert_eq!(code(alice.unblock("bob").await), ErrorCode::NotBlocked);
    server.stop().await;
}

#[tokio::test]
async fn whoelsesince_uses_overlapping_online_time() {
    // History as in the issue: carol was online from 300 s ago to 120 s ago,
    // dave from 600 s ago to 300 s ago.
    let mut store = seeded_store(":memory:");
    let now = now_ms();
    let s = 1000;
    let c = store.record_login("carol", now - 300 * s).unwrap();
    store.record_logout(c, now - 120 * s).unwrap();
    let d = store.record_login("dave", now - 600 * s).unwrap();
    store.record_logout(d, now - 300 * s).unwrap();
    let server = TestServer::with_store(store, Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, _b) = server.login("bob").await;
    let seen = |list: Vec<confab::protocol::SeenUser>| {
        list.into_iter().map(|u| (u.name, u.online)).collect::<Vec<_>>()
    };
    assert_eq!(
        seen(alice.who_else_since(200).await.unwrap()),
        [("bob".into(), true), ("carol".into(), false)]
    );
    assert_eq!(
        seen(alice.who_else_since(500).await.unwrap()),
        [("bob".into(), true), ("carol".into(), false), ("dave".into(), false)]
    );
    assert_eq!(seen(alice.who_else_since(60).await.unwrap()), [("bob".into(), true)]);
    // When each of them left, from the server's login history; nothing for who is online.
    let left: Vec<_> =
        alice.who_else_since(500).await.unwrap().into_iter().map(|u| u.left_at).collect();
    assert_eq!(left, [None, Some(now - 120 * s), Some(now - 300 * s)]);
    server.stop().await;
}

#[tokio::test]
async fn requests_that_come_in_one_write_with_the_login_are_all_answered() {
    use confab::protocol::{
        codec, ClientCodec, ClientMessage, Hello, Reply, Request, ServerMessage, PROTOCOL_VERSION,
    };
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start(Config::default()).await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let hello = ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "pipe".into() });
    let login =
        Request::Login { username: "alice".into(), password: password_of("alice"), direct: None };
    let msg = Request::Msg { to: "bob".into(), text: "right behind".into(), send_id: None };
    let mut bytes = Vec::new();
    for frame in [
        hello,
        ClientMessage::Request { id: 1, body: login },
        ClientMessage::Request { id: 2, body: msg },
    ] {
        bytes.extend_from_slice(&codec::encode_frame(&frame).unwrap());
    }
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(&bytes).await.unwrap();
    // Nothing more is sent: the message must not wait for another read to be noticed.
    let mut framed = tokio_util::codec::FramedRead::new(socket, ClientCodec::new(1 << 20));
    let answered = async {
        while let Some(frame) = framed.next().await {
            if let Ok(Ok(ServerMessage::Reply { id: 2, result })) = frame {
                return result;
            }
        }
        panic!("closed before the message was answered");
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), answered).await;
    assert!(matches!(result, Ok(Ok(Reply::Sent { .. }))), "{result:?}");
    assert_eq!(next_text(&mut bob_events).await, ("alice".into(), "right behind".into()));
    server.stop().await;
}

#[tokio::test]
async fn the_sender_is_told_the_time_its_recipients_see() {
    use confab::protocol::{Reply, Request};
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let msg = Request::Msg { to: "bob".into(), text: "when?".into(), send_id: None };
    let Reply::Sent { sent_at, .. } = alice.request(msg).await.unwrap() else { panic!() };
    loop {
        match next_event(&mut bob_events).await {
            Event::Message { sent_at: seen, .. } => break assert_eq!(seen, sent_at),
            Event::Presence { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    alice.create_group("devs", &["bob"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    let group = Request::GroupMsg { group: "devs".into(), text: "and now?".into(), send_id: None };
    let Reply::GroupSent { sent_at, .. } = alice.request(group).await.unwrap() else { panic!() };
    let history = bob.history("devs", Some(1)).await.unwrap();
    assert_eq!(history[0].sent_at, sent_at, "/history shows the same time");
    server.stop().await;
}

#[tokio::test]
async fn an_away_message_shows_in_the_list_and_answers_each_sender_once() {
    use confab::protocol::Request;
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (carol, mut carol_events) = server.login("carol").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let away = |m: Option<&str>| Request::Away { message: m.map(str::to_owned) };
    let bob_away = || Event::Away { user: "bob".into(), message: "at lunch".into() };
    bob.request(away(Some("at lunch"))).await.unwrap();
    let bob_in = |list: Vec<confab::protocol::OnlineUser>| {
        list.into_iter().find(|u| u.name == "bob").and_then(|u| u.away)
    };
    assert_eq!(bob_in(alice.list().await.unwrap()).as_deref(), Some("at lunch"));
    alice.msg("bob", "lunch?").await.unwrap();
    assert_eq!(next_non_presence(&mut alice_events).await, bob_away());
    alice.msg("bob", "again").await.unwrap();
    assert_quiet(&mut alice_events, &carol, "alice").await;
    carol.msg("bob", "me too").await.unwrap();
    assert_eq!(next_non_presence(&mut carol_events).await, bob_away());
    // bob got every message all the same.
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_text(&mut bob_events).await.1);
    }
    assert_eq!(got, ["lunch?", "again", "me too"]);
    bob.request(away(None)).await.unwrap();
    assert_eq!(bob_in(alice.list().await.unwrap()), None);
    alice.msg("bob", "back?").await.unwrap();
    assert_quiet(&mut alice_events, &carol, "alice").await;
    let long = "x".repeat(201);
    assert_eq!(code(bob.request(away(Some(&long))).await), ErrorCode::InvalidArgument);
    server.stop().await;
}
