//! Private chats: the server's introduction, the authenticated direct link, and how chats end.
//! Real server, real clients, real loopback sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confab::client::{session, Events};
use confab::p2p::identity::Identity;
use confab::p2p::noise::{self, Keys};
use confab::p2p::{ChatConfig, CloseReason, PrivateError, PrivateEvent};
use confab::protocol::{
    ByeReason, EndReason, ErrorCode, Event, Introduction, PeerCodec, PeerMessage, PresenceChange,
    PublicKey, RequestEnd, Token,
};
use confab::server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Proves that `to` was asked nothing: a marker message from `marker` is the next event
/// that is not a presence change.
async fn never_asked(events: &mut Events, marker: &Direct, to: &str) {
    marker.client.msg(to, "marker").await.unwrap();
    match next_non_presence(events).await {
        Event::Message { text, .. } if text == "marker" => {}
        other => panic!("expected only the marker, got {other:?} first"),
    }
}

/// A raw connection to a private-chat listener, as an attacker would open one.
async fn raw_peer(port: u16) -> Framed<TcpStream, PeerCodec> {
    Framed::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), PeerCodec::default())
}

/// The listener must close the connection without accepting it.
async fn assert_refused(mut conn: Framed<TcpStream, PeerCodec>) {
    match tokio::time::timeout(PATIENCE, conn.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(frame)) => panic!("expected the connection closed, got {frame:?}"),
        Err(_) => panic!("the connection was not closed within {PATIENCE:?}"),
    }
}

/// A real handshake opening from `identity`, claiming to be `username`, for the listener
/// whose key is `to` (bob), made with `token`.
fn hello(identity: &Identity, username: &str, to: &PublicKey, token: &Token) -> PeerMessage {
    let keys = Keys { identity, me: username, peer: "bob", peer_key: to, token };
    noise::initiate(keys).unwrap().1
}

/// A text an attacker without the link's keys can only make up.
fn text(text: &str) -> PeerMessage {
    PeerMessage::Sealed(text.as_bytes().to_vec())
}

#[tokio::test]
async fn the_server_introduces_and_the_chat_runs_directly() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let intro = open_private(&mut alice, &mut bob).await;
    // alice was told where bob's listener is: the address bob connects to the server from.
    assert_eq!(intro.peer, "bob");
    assert_eq!(intro.addr, SocketAddr::from(([127, 0, 0, 1], bob.port)));
    assert_eq!(alice.chats.peers(), ["bob"]);
    assert_eq!(bob.chats.peers(), ["alice"]);

    alice.chats.send("bob", "psst, bob").await.unwrap();
    let before = confab::protocol::now_ms();
    bob.chats.send("alice", "psst yourself").await.unwrap();
    assert_eq!(next_private_message(&mut bob.private).await, ("alice".into(), "psst, bob".into()));
    match next_private(&mut alice.private).await {
        PrivateEvent::Message { peer, text, sent_at, .. } => {
            assert_eq!((peer.as_str(), text.as_str()), ("bob", "psst yourself"));
            assert!(sent_at >= before);
        }
        other => panic!("{other:?}"),
    }
    // Neither server session saw any of it.
    never_asked(&mut bob.events, &alice, "bob").await;
    never_asked(&mut alice.events, &bob, "alice").await;

    // A second request while the chat is open is refused by the client itself.
    assert!(matches!(
        confab::client::session::request_private(&alice.client, &alice.chats, "bob").await,
        Err(confab::client::session::CommandError::Private(PrivateError::AlreadyOpen(peer))) if peer == "bob"
    ));
    server.stop().await;
}

#[tokio::test]
async fn both_sides_get_the_same_token_and_each_others_address() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    alice.client.start_private("bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    // bob answers through the bare client, so his listener never learns the token.
    let for_bob = bob.client.accept_private("alice").await.unwrap();
    let for_alice = match next_non_presence(&mut alice.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("{other:?}"),
    };
    assert_eq!(for_bob.token, for_alice.token);
    assert_eq!((for_bob.peer.as_str(), for_alice.peer.as_str()), ("alice", "bob"));
    assert_eq!(for_bob.addr, SocketAddr::from(([127, 0, 0, 1], alice.port)));
    assert_eq!(for_alice.addr, SocketAddr::from(([127, 0, 0, 1], bob.port)));
    // A token the listener was not given is refused, even one the server issued.
    alice.chats.connect(for_alice);
    assert!(
        matches!(next_private(&mut alice.private).await, PrivateEvent::Failed { peer, .. } if peer == "bob")
    );
    assert!(bob.chats.is_empty());
    // A fresh introduction gets a fresh token.
    let again = open_private(&mut alice, &mut bob).await;
    assert_ne!(again.token, for_bob.token);
    server.stop().await;
}

#[tokio::test]
async fn refusals_are_clear_and_the_target_is_never_asked() {
    let server = TestServer::start(Config::default()).await;
    let alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let mut carol = server.login_direct("carol").await;
    carol.client.block("alice").await.unwrap();
    let ask = |user: &'static str| alice.client.start_private(user);

    assert_eq!(code(ask("nobody").await), ErrorCode::UnknownUser);
    assert_eq!(code(ask("alice").await), ErrorCode::SelfTarget);
    assert_eq!(code(ask("dave").await), ErrorCode::Offline);
    let blocked = ask("carol").await.unwrap_err();
    assert_eq!(blocked.code(), Some(ErrorCode::BlockedByRecipient));
    assert_eq!(blocked.to_string(), "carol has blocked you", "as /msg says it");
    never_asked(&mut carol.events, &bob, "carol").await;

    // A client that takes no direct connections can neither be asked nor ask.
    let (dave, mut dave_events) = server.login("dave").await;
    assert_eq!(code(ask("dave").await), ErrorCode::NotReachable);
    assert_eq!(code(dave.start_private("bob").await), ErrorCode::NotReachable);
    never_asked(&mut dave_events, &bob, "dave").await;

    // Asking twice asks once.
    ask("bob").await.unwrap();
    assert_eq!(code(ask("bob").await), ErrorCode::AlreadyAsked);
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    never_asked(&mut bob.events, &carol, "bob").await;

    // Being blocked is said whether the blocker is online or not: it never reveals presence.
    carol.client.logout().await.unwrap();
    assert_eq!(code(ask("carol").await), ErrorCode::BlockedByRecipient);
    // Nobody asked can accept or decline.
    assert_eq!(code(bob.client.accept_private("carol").await), ErrorCode::NoSuchRequest);
    assert_eq!(code(bob.client.decline_private("dave").await), ErrorCode::NoSuchRequest);
    server.stop().await;
}

#[tokio::test]
async fn a_declined_request_tells_the_requester_and_is_gone() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    confab::client::session::request_private(&alice.client, &alice.chats, "bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    bob.client.decline_private("alice").await.unwrap();
    assert_eq!(
        next_non_presence(&mut alice.events).await,
        Event::PrivateRequestEnded {
            peer: "bob".into(),
            outgoing: true,
            reason: RequestEnd::Declined
        }
    );
    assert_eq!(
        private_code(
            confab::client::session::accept_private(&bob.client, &bob.chats, "alice").await
        ),
        ErrorCode::NoSuchRequest
    );
    // alice may ask again.
    open_private(&mut alice, &mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn an_unanswered_request_expires_for_both_sides() {
    let config =
        Config { private_request_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::start(config).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    confab::client::session::request_private(&alice.client, &alice.chats, "bob").await.unwrap();
    assert_eq!(
        next_non_presence(&mut bob.events).await,
        Event::PrivateRequest { from: "alice".into(), expires_in_secs: 1 }
    );
    assert_eq!(
        next_non_presence(&mut alice.events).await,
        Event::PrivateRequestEnded {
            peer: "bob".into(),
            outgoing: true,
            reason: RequestEnd::Expired
        }
    );
    assert_eq!(
        next_non_presence(&mut bob.events).await,
        Event::PrivateRequestEnded {
            peer: "alice".into(),
            outgoing: false,
            reason: RequestEnd::Expired
        }
    );
    assert_eq!(
        private_code(
            confab::client::session::accept_private(&bob.client, &bob.chats, "alice").await
        ),
        ErrorCode::NoSuchRequest
    );
    server.stop().await;
}

#[tokio::test]
async fn a_pending_request_goes_when_either_side_logs_out() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let carol = server.login_direct("carol").await;
    // The requester leaves: the target is told, and the request cannot be accepted.
    carol.client.start_private("bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    carol.client.logout().await.unwrap();
    assert_eq!(
        next_non_presence(&mut bob.events).await,
        Event::PrivateRequestEnded {
            peer: "carol".into(),
            outgoing: false,
            reason: RequestEnd::PeerLeft
        }
    );
    assert_eq!(code(bob.client.accept_private("carol").await), ErrorCode::NoSuchRequest);
    // The target leaves: the requester is told.
    alice.client.start_private("bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    drop(bob);
    assert_eq!(
        next_non_presence(&mut alice.events).await,
        Event::PrivateRequestEnded {
            peer: "bob".into(),
            outgoing: true,
            reason: RequestEnd::PeerLeft
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn blocking_the_requester_drops_the_request_without_a_word() {
    let server = TestServer::start(Config::default()).await;
    let alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let mut carol = server.login_direct("carol").await;
    match next_event(&mut bob.events).await {
        Event::Presence { user, change: PresenceChange::LoggedIn, .. } if user == "carol" => {}
        other => panic!("{other:?}"),
    }
    bob.client.start_private("carol").await.unwrap();
    assert!(matches!(next_non_presence(&mut carol.events).await, Event::PrivateRequest { .. }));
    // From here on bob must hear nothing about carol at all: not her logout, not the request.
    carol.client.block("bob").await.unwrap();
    assert_eq!(code(carol.client.accept_private("bob").await), ErrorCode::NoSuchRequest);
    carol.client.logout().await.unwrap();
    assert_quiet(&mut bob.events, &alice.client, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn a_forged_token_is_refused_and_injects_nothing() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let hasty = ChatConfig { hello_timeout: Duration::from_millis(300), ..ChatConfig::default() };
    let mut bob = server.login_direct_with("bob", hasty).await;
    confab::client::session::request_private(&alice.client, &alice.chats, "bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    confab::client::session::accept_private(&bob.client, &bob.chats, "alice").await.unwrap();
    let intro = match next_non_presence(&mut alice.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("{other:?}"),
    };

    // bob now expects alice, with her key and intro.token. Before alice connects, others
    // try their luck, each following the hello with a message that must never show up.
    let bob_key = intro.key;
    let stranger = Identity::generate();
    let old = match hello(&alice.identity, "alice", &bob_key, &intro.token) {
        PeerMessage::Hello { username, handshake, .. } => {
            PeerMessage::Hello { version: 1, username, handshake }
        }
        other => panic!("{other:?}"),
    };
    let attempts = [
        // alice's own key (stolen), a guessed token.
        vec![hello(&alice.identity, "alice", &bob_key, &Token::random()), text("forged token")],
        // The token (sniffed), another key.
        vec![hello(&stranger, "alice", &bob_key, &intro.token), text("the right token")],
        // alice's key and token, under another name.
        vec![hello(&alice.identity, "carol", &bob_key, &intro.token), text("the wrong user")],
        vec![text("no hello at all")],
        vec![old, text("an old version")],
    ];
    for frames in attempts {
        let mut conn = raw_peer(bob.port).await;
        for frame in frames {
            // The listener may already have hung up; that is its right.
            let _ = conn.send(frame).await;
        }
        assert_refused(conn).await;
    }
    // Garbage, and silence past the hello timeout.
    let mut garbage = raw_peer(bob.port).await;
    let _ = garbage.get_mut().write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await;
    assert_refused(garbage).await;
    assert_refused(raw_peer(bob.port).await).await;

    // None of that used up alice's token: she gets in, and her words are the first bob sees.
    alice.chats.connect(intro);
    common::assert_opened(next_private(&mut alice.private).await, "bob");
    common::assert_opened(next_private(&mut bob.private).await, "alice");
    alice.chats.send("bob", "the real alice").await.unwrap();
    assert_eq!(
        next_private_message(&mut bob.private).await,
        ("alice".into(), "the real alice".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_token_is_refused_and_injects_nothing() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let intro = open_private(&mut alice, &mut bob).await;
    let mut replay = raw_peer(bob.port).await;
    replay.send(hello(&alice.identity, "alice", &intro.key, &intro.token)).await.unwrap();
    let _ = replay.send(text("replayed")).await;
    assert_refused(replay).await;
    // The real chat is untouched and nothing else reached bob.
    assert_eq!(bob.chats.peers(), ["alice"]);
    assert_private_quiet(&mut bob.private, &alice, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let ttl = Duration::from_millis(200);
    // bob does not dial back, or his connection (with the token alice's listener takes when
    // she connects) would open the chat anyway.
    let config = ChatConfig { token_ttl: ttl, ..no_dial_back() };
    let mut bob = server.login_direct_with("bob", config).await;
    confab::client::session::request_private(&alice.client, &alice.chats, "bob").await.unwrap();
    assert!(matches!(next_non_presence(&mut bob.events).await, Event::PrivateRequest { .. }));
    confab::client::session::accept_private(&bob.client, &bob.chats, "alice").await.unwrap();
    let intro = match next_non_presence(&mut alice.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("{other:?}"),
    };
    // Nothing to await here but time itself.
    tokio::time::sleep(2 * ttl).await;
    alice.chats.connect(intro);
    assert!(matches!(next_private(&mut alice.private).await, PrivateEvent::Failed { .. }));
    assert!(bob.chats.is_empty());
    assert!(bob.private.try_next().is_none());
    server.stop().await;
}

#[tokio::test]
async fn stopprivate_from_either_side_tells_the_other() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;

    open_private(&mut alice, &mut bob).await;
    alice.chats.stop("bob").await.unwrap();
    assert_eq!(
        next_private(&mut bob.private).await,
        PrivateEvent::Closed {
            peer: "alice".into(),
            reason: CloseReason::Peer(ByeReason::Stopped)
        }
    );
    assert!(alice.chats.is_empty() && bob.chats.is_empty());
    let err = alice.chats.send("bob", "hello?").await.unwrap_err();
    assert!(matches!(err, PrivateError::NotOpen(_)));
    assert!(err.to_string().contains("/startprivate bob"), "{err}");
    assert!(matches!(bob.chats.stop("alice").await, Err(PrivateError::NotOpen(_))));

    open_private(&mut alice, &mut bob).await;
    bob.chats.stop("alice").await.unwrap();
    assert_eq!(
        next_private(&mut alice.private).await,
        PrivateEvent::Closed { peer: "bob".into(), reason: CloseReason::Peer(ByeReason::Stopped) }
    );
    assert!(matches!(bob.chats.send("alice", "x").await, Err(PrivateError::NotOpen(_))));
    // Ending it locally is no event: the one who stopped it knows.
    assert!(bob.private.try_next().is_none());
    server.stop().await;
}

#[tokio::test]
async fn logging_out_or_vanishing_ends_every_chat_and_the_peers_are_told() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let mut carol = server.login_direct("carol").await;
    open_private(&mut alice, &mut bob).await;
    open_private(&mut alice, &mut carol).await;
    open_private(&mut bob, &mut carol).await;

    // alice logs out as the client does it: every chat says goodbye first.
    alice.chats.close_all(ByeReason::LoggedOut).await;
    alice.client.logout().await.unwrap();
    let logged_out = CloseReason::Peer(ByeReason::LoggedOut);
    for peer in [&mut bob, &mut carol] {
        assert_eq!(
            next_private(&mut peer.private).await,
            PrivateEvent::Closed { peer: "alice".into(), reason: logged_out }
        );
    }
    assert_eq!(bob.chats.peers(), ["carol"]);

    // carol's client vanishes without a word: bob learns the chat is lost.
    drop(carol);
    assert_eq!(
        next_private(&mut bob.private).await,
        PrivateEvent::Closed { peer: "carol".into(), reason: CloseReason::Lost }
    );
    assert!(bob.chats.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn several_private_chats_at_once_each_with_its_own_peer() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    let mut carol = server.login_direct("carol").await;
    let mut dave = server.login_direct("dave").await;
    open_private(&mut alice, &mut bob).await;
    open_private(&mut carol, &mut alice).await;
    open_private(&mut alice, &mut dave).await;
    assert_eq!(alice.chats.peers(), ["bob", "carol", "dave"]);

    for round in 0..3 {
        for peer in ["bob", "carol", "dave"] {
            alice.chats.send(peer, &format!("{round} for {peer}")).await.unwrap();
        }
    }
    for peer in [&mut bob, &mut carol, &mut dave] {
        for round in 0..3 {
            let expected = format!("{round} for {}", peer.name);
            assert_eq!(next_private_message(&mut peer.private).await, ("alice".into(), expected));
        }
    }
    // Answers come back tagged with who sent them, whatever the order.
    let (b, c, d) = (bob.chats.clone(), carol.chats.clone(), dave.chats.clone());
    let (rb, rc, rd) = tokio::join!(
        b.send("alice", "from bob"),
        c.send("alice", "from carol"),
        d.send("alice", "from dave")
    );
    rb.unwrap();
    rc.unwrap();
    rd.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_private_message(&mut alice.private).await);
    }
    got.sort();
    let want: Vec<_> = ["bob", "carol", "dave"].map(|p| (p.to_owned(), format!("from {p}"))).into();
    assert_eq!(got, want);

    // Ending one leaves the others.
    carol.chats.stop("alice").await.unwrap();
    assert!(
        matches!(next_private(&mut alice.private).await, PrivateEvent::Closed { peer, .. } if peer == "carol")
    );
    assert_eq!(alice.chats.peers(), ["bob", "dave"]);
    assert_private_quiet(&mut alice.private, &dave, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_private_chat_outlives_the_server() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    open_private(&mut alice, &mut bob).await;

    server.stop().await;
    for events in [&mut alice.events, &mut bob.events] {
        assert_eq!(
            next_non_presence(events).await,
            Event::SessionEnded { reason: EndReason::ServerShutdown }
        );
        closed(events).await;
    }
    assert!(alice.client.list().await.is_err(), "the server is gone");

    alice.chats.send("bob", "is the server down?").await.unwrap();
    assert_eq!(
        next_private_message(&mut bob.private).await,
        ("alice".into(), "is the server down?".into())
    );
    bob.chats.send("alice", "yes, and we do not care").await.unwrap();
    assert_eq!(
        next_private_message(&mut alice.private).await,
        ("bob".into(), "yes, and we do not care".into())
    );
    bob.chats.stop("alice").await.unwrap();
    assert!(matches!(next_private(&mut alice.private).await, PrivateEvent::Closed { .. }));
}

/// A TCP relay between a private chat's two ends that keeps every byte it carries, and
/// from `flip_after` bytes of the dialler's stream on, flips one bit of the next byte.
struct ChatRelay {
    addr: SocketAddr,
    seen: Wire,
}

impl ChatRelay {
    async fn start(target: SocketAddr, flip_after: Option<usize>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Wire::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((dialler, _)) = listener.accept().await {
                tokio::spawn(carry(dialler, target, flip_after, record.clone()));
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

async fn carry(dialler: TcpStream, target: SocketAddr, flip_after: Option<usize>, wire: Wire) {
    let listener_side = TcpStream::connect(target).await.unwrap();
    let (from_a, to_a) = dialler.into_split();
    let (from_b, to_b) = listener_side.into_split();
    tokio::spawn(pipe(from_b, to_a, wire.clone(), |_, _| {}));
    let mut flipped = false;
    pipe(from_a, to_b, wire, |carried, read| {
        if let Some(after) = flip_after.filter(|&a| !flipped && carried + read.len() > a) {
            read[after.saturating_sub(carried).min(read.len() - 1)] ^= 0x10;
            flipped = true;
        }
    })
    .await;
}

/// `a` asks `b` for a chat and connects through a relay towards `b`'s listener.
/// (`b` must not dial back, so that the relay is the only way: see `no_dial_back`.)
async fn open_through_relay(
    a: &mut Direct,
    b: &mut Direct,
    flip_after: Option<usize>,
) -> ChatRelay {
    session::request_private(&a.client, &a.chats, &b.name).await.unwrap();
    assert!(matches!(next_non_presence(&mut b.events).await, Event::PrivateRequest { .. }));
    session::accept_private(&b.client, &b.chats, &a.name).await.unwrap();
    let intro = match next_non_presence(&mut a.events).await {
        Event::PrivateAccepted(intro) => intro,
        other => panic!("expected an acceptance, got {other:?}"),
    };
    let relay = ChatRelay::start(intro.addr, flip_after).await;
    a.chats.connect(Introduction { addr: relay.addr, ..intro });
    relay
}

#[tokio::test]
async fn nothing_said_in_a_private_chat_crosses_the_wire_in_the_clear() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct_with("bob", no_dial_back()).await;
    let relay = open_through_relay(&mut alice, &mut bob, None).await;
    common::assert_opened(next_private(&mut alice.private).await, "bob");
    common::assert_opened(next_private(&mut bob.private).await, "alice");
    let marker = "MARKER-the-plans-are-under-the-mat";
    alice.chats.send("bob", marker).await.unwrap();
    assert_eq!(next_private_message(&mut bob.private).await, ("alice".into(), marker.into()));
    bob.chats.send("alice", "REPLY-understood").await.unwrap();
    assert_eq!(next_private_message(&mut alice.private).await.1, "REPLY-understood");
    let wire = relay.seen();
    assert!(wire.len() > marker.len(), "the relay carried the chat");
    for secret in [marker.as_bytes(), b"REPLY-understood".as_slice()] {
        assert!(!wire.windows(secret.len()).any(|w| w == secret), "{secret:?} in the clear");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_chat_frame_altered_on_the_way_ends_the_chat() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct_with("bob", no_dial_back()).await;
    // The handshake passes untouched; a bit of the first message after it is flipped.
    let relay = open_through_relay(&mut alice, &mut bob, Some(400)).await;
    common::assert_opened(next_private(&mut alice.private).await, "bob");
    common::assert_opened(next_private(&mut bob.private).await, "alice");
    let handshake = relay.seen().len();
    assert!(handshake < 400, "the handshake took {handshake} bytes; flip later");
    alice.chats.send("bob", &"x".repeat(600)).await.unwrap();
    match next_private(&mut bob.private).await {
        PrivateEvent::Closed { peer, reason } => {
            assert_eq!(peer, "alice");
            assert_eq!(reason, CloseReason::Broken, "a frame that does not open is a broken peer");
        }
        other => panic!("the altered message was taken: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn an_open_chat_says_its_way_and_measures_its_round_trip() {
    let server = TestServer::start(Config::default()).await;
    let mut alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;
    open_private(&mut alice, &mut bob).await;
    // The first ping goes as the chat opens; its answer gives the round trip.
    let measured = async {
        loop {
            let links = alice.chats.links();
            if let [link] = &links[..] {
                if link.rtt.is_some() {
                    return link.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let link = tokio::time::timeout(PATIENCE, measured).await.expect("a round trip in time");
    assert_eq!(link.peer, "bob");
    // Direct: alice's connection to bob's listener, or bob's dial back to hers.
    assert!(matches!(link.route, confab::p2p::Route::Direct(addr) if addr.ip().is_loopback()));
    server.stop().await;
}

/// Chat settings for a side that only listens: the requester's connection is the only way.
fn no_dial_back() -> ChatConfig {
    ChatConfig { dial_back: false, ..ChatConfig::default() }
}
