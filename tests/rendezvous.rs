//! The server's UDP endpoint over real sockets: a session's bind is answered with its
//! address, the relay forwards only between the two clients of an introduction, and
//! strangers get nothing.

mod common;

use std::net::SocketAddr;

use common::{next_non_presence, password_of, TestServer, PATIENCE};
use confab::client::Client;
use confab::p2p::identity::Identity;
use confab::protocol::rendezvous::{self, Datagram, RELAY_HEADER};
use confab::protocol::{DirectEndpoint, Event, LinkId, Token, UdpBinding};
use confab::server::Config;
use tokio::net::UdpSocket;

/// A logged-in session announcing direct ports, with a UDP socket bound to it at the
/// server, as a client's transfer engine binds its socket.
struct Bound {
    client: Client,
    events: confab::client::Events,
    socket: UdpSocket,
    binding: UdpBinding,
    endpoint: SocketAddr,
}

async fn bound(server: &TestServer, user: &str) -> Bound {
    let (client, events) = server.connect().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let key = Identity::generate().public();
    let udp = socket.local_addr().unwrap().port();
    let direct = DirectEndpoint { tcp: 1, udp, key, local: None };
    let info = client.login_with(user, &password_of(user), Some(direct)).await.unwrap();
    let binding = info.udp.expect("the server has a UDP endpoint");
    let endpoint = client.udp_endpoint(&binding);
    socket.send_to(&rendezvous::bind(&binding, 1), endpoint).await.unwrap();
    let (answer, from) = receive(&socket).await;
    assert_eq!(from, endpoint);
    let seen = Datagram::Seen { counter: 1, addr: socket.local_addr().unwrap() };
    assert_eq!(rendezvous::parse(&answer), Ok(seen), "the server saw where the bind came from");
    Bound { client, events, socket, binding, endpoint }
}

async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 2048];
    let (n, from) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

fn relayed(link: &LinkId, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0; RELAY_HEADER];
    rendezvous::relay_header(link, &mut bytes);
    bytes.extend_from_slice(payload);
    bytes
}

/// Nothing is waiting on `socket` (what was sent before a marker that arrived has arrived).
fn nothing_waiting(socket: &UdpSocket) -> bool {
    let mut buf = [0; 64];
    matches!(socket.try_recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn only_a_sessions_own_bind_is_answered() {
    let server = TestServer::start(Config::default()).await;
    let alice = bound(&server, "alice").await;
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A replay of alice's bind, a forged one, a made-up session, and junk.
    let forged = UdpBinding { secret: Token([7; 16]), ..alice.binding };
    let unknown = UdpBinding { id: alice.binding.id ^ 1, ..alice.binding };
    for datagram in [
        rendezvous::bind(&alice.binding, 1),
        rendezvous::bind(&forged, 2),
        rendezvous::bind(&unknown, 1),
        b"CR\x01\x01 far too short".to_vec(),
        vec![0; 1200],
    ] {
        stranger.send_to(&datagram, alice.endpoint).await.unwrap();
    }
    // Then the stranger's socket makes a genuine bind (of bob's session, whose secret it is
    // given here): that answer comes, and nothing came before it.
    let bob = bound(&server, "bob").await;
    bob.socket.send_to(&rendezvous::bind(&bob.binding, 2), bob.endpoint).await.unwrap();
    receive(&bob.socket).await;
    stranger.send_to(&rendezvous::bind(&bob.binding, 3), bob.endpoint).await.unwrap();
    let (answer, _) = receive(&stranger).await;
    let seen = Datagram::Seen { counter: 3, addr: stranger.local_addr().unwrap() };
    assert_eq!(rendezvous::parse(&answer), Ok(seen));
    assert!(nothing_waiting(&stranger), "only the genuine bind was answered");
    server.stop().await;
}

#[tokio::test]
async fn the_relay_carries_an_introductions_datagrams_and_nothing_else() {
    let server = TestServer::start(Config::default()).await;
    let alice = bound(&server, "alice").await;
    let mut bob = bound(&server, "bob").await;
    let intro = alice.client.send_file("bob", "clip.mp4", 5).await.unwrap();
    let link = intro.relay.expect("a relay link comes with the introduction");
    match next_non_presence(&mut bob.events).await {
        Event::FileOffer { from, .. } => assert_eq!(from.relay, Some(link), "the same link"),
        other => panic!("{other:?}"),
    }
    // alice's datagram reaches bob through the server unchanged, and back.
    alice.socket.send_to(&relayed(&link, b"sealed one"), alice.endpoint).await.unwrap();
    let (got, from) = receive(&bob.socket).await;
    assert_eq!((got, from), (relayed(&link, b"sealed one"), bob.endpoint));
    bob.socket.send_to(&relayed(&link, b"sealed two"), bob.endpoint).await.unwrap();
    assert_eq!(receive(&alice.socket).await.0, relayed(&link, b"sealed two"));

    // Not from a stranger (even one that knows the link), not on another link.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&relayed(&link, b"injected"), alice.endpoint).await.unwrap();
    alice.socket.send_to(&relayed(&LinkId([9; 16]), b"astray"), alice.endpoint).await.unwrap();
    alice.socket.send_to(&relayed(&link, b"marker"), alice.endpoint).await.unwrap();
    assert_eq!(receive(&bob.socket).await.0, relayed(&link, b"marker"));
    assert!(nothing_waiting(&bob.socket) && nothing_waiting(&stranger));

    // Once bob has logged out, the link is gone.
    bob.client.logout().await.unwrap();
    alice.socket.send_to(&relayed(&link, b"to nobody"), alice.endpoint).await.unwrap();
    alice.socket.send_to(&rendezvous::bind(&alice.binding, 2), alice.endpoint).await.unwrap();
    let (answer, _) = receive(&alice.socket).await;
    assert!(matches!(rendezvous::parse(&answer), Ok(Datagram::Seen { counter: 2, .. })));
    assert!(nothing_waiting(&bob.socket), "nothing relayed after the logout");
    server.stop().await;
}
