//! The delivery guarantee against the real server on 127.0.0.1:0: the log, acknowledged
//! delivery, paged catch-up, the kick, quotas and idempotent sends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use confab::client::{Client, ClientEvent, Events};
use confab::protocol::{
    ClientCodec, ClientMessage, Delivery, ErrorCode, Event, Hello, Reply, Request, ServerMessage,
    PROTOCOL_VERSION,
};
use confab::server::delivery::PAGE_MESSAGES;
use confab::server::hub::log::Mailbox;
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// A server whose mailboxes take `n` messages.
fn roomy(n: u64) -> Config {
    Config { mailbox: Mailbox { messages: n, bytes: 0 }, ..Config::default() }
}

/// Sends `n` messages `prefix0..` from `from` to `to`, each acknowledged ("sent").
async fn send_many(from: &Client, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        from.msg(to, &format!("{prefix}{i}")).await.unwrap();
    }
}

/// Reads message events until `n` have arrived; returns (id, text) in arrival order. With
/// `ack`, each is acknowledged as it is read.
async fn read_messages(events: &mut Events, n: usize, ack: bool) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next_any_event(events).await {
            Event::Message { id, text, .. } | Event::GroupMessage { id, text, .. } => {
                if ack {
                    events.ack(id);
                }
                got.push((id, text));
            }
            _ => continue,
        }
    }
    got
}

fn texts(got: &[(u64, String)]) -> Vec<String> {
    got.iter().map(|(_, t)| t.clone()).collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn unacknowledged_messages_come_again_at_the_next_login_and_acknowledged_ones_never() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    send_many(&alice, "bob", "m", 5).await;
    // bob reads all five but acknowledges only the first three.
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 5);
    let got = read_messages(&mut events, 5, false).await;
    assert_eq!(texts(&got), numbered("m", 0..5));
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase: {got:?}");
    bob.ack(got[2].0);
    bob.logout().await.unwrap();
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 2);
    let again = read_messages(&mut events, 2, true).await;
    assert_eq!(again, got[3..], "the same messages with the same ids");
    assert_eq!(next_any_event(&mut events).await, Event::CaughtUp);
    bob.logout().await.unwrap();
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 0);
    assert_eq!(next_any_event(&mut events).await, Event::CaughtUp);
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_send_id_gets_the_first_reply_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let server = TestServer::on_disk(&db).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let send = |text: &str, send_id| Request::Msg {
        to: "bob".into(),
        text: text.into(),
        send_id: Some(send_id),
    };
    let first = alice.request(send("once", 42)).await.unwrap();
    assert!(matches!(&first, Reply::Sent { to, delivery: Delivery::Online, .. } if to == "bob"));
    // The reply was "lost"; the client sends the same message again, twice.
    assert_eq!(alice.request(send("once", 42)).await.unwrap(), first);
    assert_eq!(alice.request(send("once", 42)).await.unwrap(), first);
    // The same id from someone else is another message.
    let (carol, _c) = server.login("carol").await;
    carol.request(send("carol's", 42)).await.unwrap();
    let group = Request::GroupMsg { group: "nogroup".into(), text: "x".into(), send_id: Some(7) };
    assert_eq!(code(alice.request(group).await), ErrorCode::UnknownGroup, "refusals are not kept");
    assert_eq!(next_text(&mut bob_events).await.1, "once");
    assert_eq!(next_text(&mut bob_events).await.1, "carol's");
    bob.list().await.unwrap(); // the acknowledgement goes before it
    server.stop().await;

    // Across a restart the log itself refuses the repeat.
    let server = TestServer::reopen(&db).await;
    let (alice, _a) = server.login("alice").await;
    alice.request(send("once", 42)).await.unwrap();
    let (_bob, mut bob_events) = server.login("bob").await;
    assert_quiet(&mut bob_events, &alice, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_the_sender_clearly_and_stores_nothing() {
    let server = TestServer::start(roomy(3)).await;
    let (alice, _a) = server.login("alice").await;
    let (carol, _c) = server.login("carol").await;
    send_many(&alice, "bob", "m", 3).await;
    let err = alice.msg("bob", "one too many").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MailboxFull));
    assert!(err.to_string().contains("bob's mailbox is full"), "{err}");
    // A group message to a full member is refused whole, for every member.
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    let (bob, _unread) = server.connect().await;
    bob.login("bob", &password_of("bob")).await.unwrap();
    bob.join_group("devs").await.unwrap();
    carol.join_group("devs").await.unwrap();
    bob.logout().await.unwrap(); // without reading anything
    assert_eq!(code(alice.group_msg("devs", "to all").await), ErrorCode::MailboxFull);
    // bob reads his mailbox; there is room again, and nothing half-stored shows up.
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 3);
    assert_eq!(texts(&read_messages(&mut events, 3, true).await), numbered("m", 0..3));
    // The acknowledgements reach the server before this request does.
    bob.list().await.unwrap();
    alice.group_msg("devs", "now it fits").await.unwrap();
    assert!(next_non_presence(&mut events).await.message_id().is_some());
    server.stop().await;
}

#[tokio::test]
async fn what_a_block_or_leaving_a_group_hides_no_longer_fills_the_mailbox() {
    let server = TestServer::start(roomy(3)).await;
    let (alice, _a) = server.login("alice").await;
    let (carol, _c) = server.login("carol").await;
    alice.create_group("devs", &["bob"]).await.unwrap();
    let (bob, _unread) = server.connect().await;
    bob.login("bob", &password_of("bob")).await.unwrap();
    bob.join_group("devs").await.unwrap();
    // Three group messages bob never acknowledges fill his mailbox...
    for i in 0..3 {
        alice.group_msg("devs", &format!("g{i}")).await.unwrap();
    }
    assert_eq!(code(carol.msg("bob", "full?").await), ErrorCode::MailboxFull);
    // ...until he leaves the group: they will never be his, so they no longer count.
    bob.leave_group("devs").await.unwrap();
    carol.msg("bob", "c0").await.unwrap();
    // The same for a block: what alice sent is hidden from bob once he blocks her.
    send_many(&alice, "bob", "a", 2).await;
    assert_eq!(code(carol.msg("bob", "full again?").await), ErrorCode::MailboxFull);
    bob.block("alice").await.unwrap();
    carol.msg("bob", "c1").await.unwrap();
    // And an unblock makes them count again: bob now has c0, a0, a1, c1 waiting.
    bob.unblock("alice").await.unwrap();
    assert_eq!(code(carol.msg("bob", "over").await), ErrorCode::MailboxFull);
    bob.logout().await.unwrap();
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 4);
    assert_eq!(texts(&read_messages(&mut events, 4, true).await), ["c0", "a0", "a1", "c1"]);
    server.stop().await;
}

#[tokio::test]
async fn group_messages_reach_offline_members_from_their_own_cursor() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    alice.group_msg("devs", "before carol joined").await.unwrap();
    // bob sees it live (and acknowledges it); carol had not joined.
    loop {
        if let Event::GroupMessage { text, .. } = next_non_presence(&mut bob_events).await {
            assert_eq!(text, "before carol joined");
            break;
        }
    }
    let (carol, _c) = server.login("carol").await;
    carol.join_group("devs").await.unwrap();
    carol.logout().await.unwrap();
    bob.logout().await.unwrap();
    let sent = alice.group_msg("devs", "while both were away").await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (0, 2));
    for user in ["bob", "carol"] {
        let (client, mut events) = server.connect().await;
        assert_eq!(client.login(user, &password_of(user)).await.unwrap().offline_messages, 1);
        match next_event(&mut events).await {
            Event::GroupMessage { group, text, offline: true, .. } => {
                assert_eq!((group.as_str(), text.as_str()), ("devs", "while both were away"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(next_any_event(&mut events).await, Event::CaughtUp);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_dropped_in_the_middle_of_a_catch_up_gets_the_rest_and_nothing_twice() {
    let total = 3 * PAGE_MESSAGES + 17;
    let server = TestServer::start(roomy(10_000)).await;
    let (alice, _a) = server.login("alice").await;
    send_many(&alice, "bob", "m", total).await;
    let (bob, mut events) = server.connect().await;
    assert_eq!(
        bob.login("bob", &password_of("bob")).await.unwrap().offline_messages as usize,
        total
    );
    let first = read_messages(&mut events, 300, true).await;
    // Gone without a logout, mid-page (the handles' drop closes the socket).
    drop((bob, events));
    let (_bob, mut events, waiting) = login_once_gone(&server, "bob").await;
    assert_eq!(waiting, total - 300);
    let rest = read_messages(&mut events, waiting, true).await;
    assert_eq!(next_any_event(&mut events).await, Event::CaughtUp);
    let all: Vec<String> = texts(&first).into_iter().chain(texts(&rest)).collect();
    assert_eq!(all, numbered("m", 0..total));
    server.stop().await;
}

/// A raw protocol connection, for a client that reads (and acknowledges) at its own pace.
struct Raw {
    socket: TcpStream,
    buf: BytesMut,
    codec: ClientCodec,
}

impl Raw {
    async fn login(server: &TestServer, user: &str) -> (Raw, u32) {
        let mut framed = Framed::new(
            TcpStream::connect(server.addr).await.unwrap(),
            ClientCodec::new(confab::client::MAX_SERVER_FRAME),
        );
        let hello = Hello { version: PROTOCOL_VERSION, agent: "raw".into() };
        framed.send(ClientMessage::Hello(hello)).await.unwrap();
        assert!(matches!(framed.next().await, Some(Ok(Ok(ServerMessage::Welcome(_))))));
        let login =
            Request::Login { username: user.into(), password: password_of(user), direct: None };
        framed.send(ClientMessage::Request { id: 1, body: login }).await.unwrap();
        let waiting = match framed.next().await {
            Some(Ok(Ok(ServerMessage::Reply {
                result: Ok(Reply::LoggedIn { offline_messages, .. }),
                ..
            }))) => offline_messages,
            other => panic!("{other:?}"),
        };
        let parts = framed.into_parts();
        (Raw { socket: parts.io, buf: parts.read_buf, codec: parts.codec }, waiting)
    }

    /// Decodes what has been read so far; returns the message ids and whether catch-up ended.
    fn take(&mut self) -> (Vec<u64>, bool) {
        let (mut ids, mut caught_up) = (Vec::new(), false);
        while let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
            match frame.unwrap() {
                ServerMessage::Event(Event::CaughtUp) => caught_up = true,
                ServerMessage::Event(event) => ids.extend(event.message_id()),
                _ => {}
            }
        }
        (ids, caught_up)
    }

    /// Reads up to `n` bytes, waiting at most `wait`; false if nothing came.
    async fn read_some(&mut self, n: usize, wait: Duration) -> bool {
        let mut chunk = vec![0; n];
        match tokio::time::timeout(wait, self.socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => false,
            Ok(Ok(got)) => {
                self.buf.extend_from_slice(&chunk[..got]);
                true
            }
            Ok(Err(e)) => panic!("{e}"),
        }
    }

    async fn ack(&mut self, up_to: u64) {
        let mut out = BytesMut::new();
        self.codec.encode(ClientMessage::Ack { up_to }, &mut out).unwrap();
        self.socket.write_all(&out).await.unwrap();
    }
}

#[tokio::test]
async fn a_reader_at_one_megabyte_a_second_catches_up_on_20000_messages_with_two_pages_in_flight() {
    let total = 20_000;
    let server = TestServer::start(roomy(100_000)).await;
    let (alice, _a) = server.login("alice").await;
    // Sent by several tasks at once, so that the group commit shares the work.
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let alice = alice.clone();
            tokio::spawn(
                async move { send_many(&alice, "bob", &format!("t{t}-"), total / 8).await },
            )
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let (mut bob, waiting) = Raw::login(&server, "bob").await;
    assert_eq!(waiting as usize, total);

    // The bound: unacknowledged, the server sends at most two pages, however long it waits.
    let mut ids = Vec::new();
    while bob.read_some(64 * 1024, Duration::from_millis(300)).await {
        ids.extend(bob.take().0);
    }
    assert_eq!(ids.len(), 2 * PAGE_MESSAGES, "two pages and no more without an ack");

    // Then reading at about 1 MB/s (16 KiB every 16 ms), acknowledging what was read.
    let mut caught_up = false;
    while !caught_up {
        bob.ack(*ids.last().unwrap()).await;
        let came = bob.read_some(16 * 1024, PATIENCE).await;
        assert!(came, "the catch-up stalled at {} messages", ids.len());
        let (more, done) = bob.take();
        ids.extend(more);
        caught_up = done;
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    assert_eq!(ids.len(), total, "every message once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
    server.stop().await;
}

#[tokio::test]
async fn a_reader_too_slow_for_live_traffic_is_kicked_and_gets_everything_at_its_next_login() {
    let n = 2_000;
    let config = Config { session_queue: 16, ..Config::default() };
    let server = TestServer::start(config).await;
    let (alice, _a) = server.login("alice").await;
    // bob logs in and then reads nothing at all.
    let (mut bob, _) = Raw::login(&server, "bob").await;
    send_many(&alice, "bob", "m", n).await;
    // The server has given up on bob: his connection ends (after what the socket held).
    let kicked = async {
        let mut chunk = vec![0; 1 << 16];
        loop {
            match bob.socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, kicked).await.expect("bob is disconnected");
    // Everything he was sent (and did not acknowledge) comes at the next login, once.
    let (bob, mut events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages as usize, n);
    let got = read_messages(&mut events, n, true).await;
    assert_eq!(texts(&got), numbered("m", 0..n));
    assert_eq!(next_any_event(&mut events).await, Event::CaughtUp);
    server.stop().await;
}

#[tokio::test]
async fn messages_sent_during_a_catch_up_follow_it_with_no_gap_and_no_duplicate() {
    let backlog = 2 * PAGE_MESSAGES + 5;
    let server = TestServer::start(roomy(100_000)).await;
    let (alice, _a) = server.login("alice").await;
    send_many(&alice, "bob", "old", backlog).await;
    let (bob, mut events) = server.connect().await;
    bob.login("bob", &password_of("bob")).await.unwrap();
    // alice keeps sending while bob catches up and goes live.
    let sending = tokio::spawn({
        let alice = alice.clone();
        async move { send_many(&alice, "bob", "new", 500).await }
    });
    let got = read_messages(&mut events, backlog + 500, true).await;
    sending.await.unwrap();
    let seen: HashSet<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(seen.len(), got.len(), "no duplicate");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase across the seam");
    let want: Vec<String> =
        numbered("old", 0..backlog).into_iter().chain(numbered("new", 0..500)).collect();
    assert_eq!(texts(&got), want);
    // And nothing more arrives.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            Ok(Some(ClientEvent::Server(Event::CaughtUp | Event::Presence { .. }))) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    server.stop().await;
}

/// Logs `user` in as soon as the server has noticed that their last connection is gone;
/// returns the client, its events and how many messages wait.
async fn login_once_gone(server: &TestServer, user: &str) -> (Client, Events, usize) {
    for _ in 0..100 {
        let (client, events) = server.connect().await;
        match client.login(user, &password_of(user)).await {
            Ok(info) => return (client, events, info.offline_messages as usize),
            Err(e) if e.code() == Some(ErrorCode::AlreadyLoggedIn) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{user}'s old session never ended");
}

#[tokio::test]
async fn text_logs_show_the_messages_and_who_is_online_in_the_course_formats() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let config = Config { text_logs: Some(logs.clone()), ..Config::default() };
    let server = TestServer::start(config).await;
    let (alice, _a) = server.login("alice").await;
    let bob = server.login_direct("bob").await;
    alice.msg("bob", "hello; bob").await.unwrap();
    alice.create_group("devs", &["bob"]).await.unwrap();
    bob.client.join_group("devs").await.unwrap();
    alice.group_msg("devs", "standup").await.unwrap();
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap();
    let line = |text: &str| -> Vec<String> { text.lines().map(str::to_owned).collect() };
    let direct = line(&read("messagelog.txt"));
    assert_eq!(direct.len(), 1);
    let fields: Vec<&str> = direct[0].splitn(4, "; ").collect();
    assert_eq!((fields[0], fields[2], fields[3]), ("1", "alice", "hello; bob"));
    let when = fields[1];
    assert!(
        chrono::NaiveDateTime::parse_from_str(when, "%d %b %Y %H:%M:%S").is_ok(),
        "{when:?} is not like 01 Jun 2023 15:00:01"
    );
    assert!(
        read("devs_messagelog.txt").starts_with("1; ")
            && read("devs_messagelog.txt").ends_with("; alice; standup\n")
    );
    let users = line(&read("userlog.txt"));
    assert_eq!(users.len(), 2);
    assert!(users[0].starts_with("1; ") && users[0].ends_with("; alice; -; -"), "{users:?}");
    let udp = bob.udp.local_addr().unwrap();
    assert!(
        users[1].starts_with("2; ")
            && users[1].ends_with(&format!("; bob; {}; {}", udp.ip(), udp.port())),
        "{users:?}"
    );
    // alice leaves: bob is renumbered.
    alice.logout().await.unwrap();
    let renumbered = async {
        loop {
            let users = line(&read("userlog.txt"));
            if users.len() == 1 {
                return users;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let users = tokio::time::timeout(PATIENCE, renumbered).await.unwrap();
    assert!(users[0].starts_with("1; ") && users[0].contains("; bob; "), "{users:?}");
    server.stop().await;
}
