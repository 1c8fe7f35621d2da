//! TLS between client and server: what crosses the network, which certificates the client
//! trusts (first use, a changed one, a pinned one, a CA's), plaintext only on loopback, the
//! server's read path over TLS, and the binaries end to end.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use common::*;
use confab::client::trust::{KnownServers, TrustError, Trusted};
use confab::client::{Client, ClientError, Connector, Events, Security, Trust};
use confab::protocol::{
    ClientCodec, ClientMessage, ErrorCode, Event, Hello, ServerMessage, PROTOCOL_VERSION,
};
use confab::server::Config;
use confab::tls::{Fingerprint, ServerIdentity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

/// A server serving TLS with `identity`.
async fn tls_server(identity: ServerIdentity) -> (TestServer, Fingerprint) {
    let tls = identity.into_server_tls().unwrap();
    let fingerprint = tls.fingerprint();
    (TestServer::start(Config { tls: Some(tls), ..Config::default() }).await, fingerprint)
}

fn first_use(dir: &Path) -> Security {
    Security::Tls(Trust::FirstUse(KnownServers::in_dir(dir)))
}

async fn login_through(connector: &Connector, user: &str) -> (Client, Events) {
    let (client, events) = connector.connect().await.unwrap();
    client.login(user, &password_of(user)).await.unwrap();
    (client, events)
}

fn trust_error(result: Result<(Client, Events), ClientError>) -> TrustError {
    match result {
        Err(ClientError::Trust(e)) => e,
        Err(other) => panic!("expected a trust error, got {other}"),
        Ok(_) => panic!("expected a trust error, got a connection"),
    }
}

/// A TCP proxy on loopback that records what passes each way; its upstream can be changed,
/// as a machine on the path could.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(upstream)),
            to_server: Arc::default(),
            to_client: Arc::default(),
        };
        let (upstream, to_server, to_client) =
            (proxy.upstream.clone(), proxy.to_server.clone(), proxy.to_client.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = *upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                tokio::spawn(pipe(client_rx, server_tx, to_server.clone(), |_, _| {}));
                tokio::spawn(pipe(server_rx, client_tx, to_client.clone(), |_, _| {}));
            }
        });
        proxy
    }

    fn point_at(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Everything recorded so far, client to server and server to client.
    fn captured(&self) -> (Vec<u8>, Vec<u8>) {
        (self.to_server.lock().unwrap().clone(), self.to_client.lock().unwrap().clone())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const SECRET_TEXT: &str = "the launch code is 4f1c-9e2a";

/// alice and bob log in through a recording proxy, alice sends bob [`SECRET_TEXT`] and bob
/// reads it; returns what the proxy saw each way.
async fn capture_login_and_message(security: Security, server: &TestServer) -> (Vec<u8>, Vec<u8>) {
    let proxy = Proxy::start(server.addr).await;
    let connector = Connector::new(proxy.addr.to_string(), security);
    let (_bob, mut bob_events) = login_through(&connector, "bob").await;
    let (alice, _alice_events) = login_through(&connector, "alice").await;
    alice.msg("bob", SECRET_TEXT).await.unwrap();
    loop {
        match next_event(&mut bob_events).await {
            Event::Message { text, .. } => break assert_eq!(text, SECRET_TEXT),
            Event::Presence { .. } => continue,
            other => panic!("expected the message, got {other:?}"),
        }
    }
    proxy.captured()
}

#[tokio::test]
async fn over_tls_neither_the_password_nor_a_message_crosses_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let (up, down) = capture_login_and_message(first_use(dir.path()), &server).await;
    assert!(
        up.len() > 500 && down.len() > 500,
        "the proxy saw the traffic: {} and {} bytes",
        up.len(),
        down.len()
    );
    for secret in [password_of("alice").as_str(), password_of("bob").as_str(), SECRET_TEXT] {
        assert!(!contains(&up, secret), "{secret:?} went to the server in the clear");
        assert!(!contains(&down, secret), "{secret:?} came from the server in the clear");
    }
    // Not even the names: the whole session is inside TLS.
    assert!(!contains(&up, "alice") && !contains(&down, "alice"));
    server.stop().await;
}

#[tokio::test]
async fn in_plaintext_the_same_capture_shows_the_password_and_the_message() {
    let server = TestServer::start(Config::default()).await;
    let (up, down) = capture_login_and_message(Security::Plaintext, &server).await;
    assert!(contains(&up, &password_of("alice")), "the capture shows a login's password");
    assert!(contains(&up, SECRET_TEXT) && contains(&down, SECRET_TEXT));
    server.stop().await;
}

#[tokio::test]
async fn a_changed_certificate_is_refused_with_both_fingerprints_until_its_line_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (first, fp1) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let (other, fp2) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let proxy = Proxy::start(first.addr).await;
    let server = proxy.addr.to_string();
    let known = KnownServers::in_dir(dir.path());
    let connector = Connector::new(&server, first_use(dir.path()));

    let (client, _events) = connector.connect().await.unwrap();
    assert_eq!(client.trusted(), Some(&Trusted::FirstUse(fp1)));
    assert_eq!(known.get(&server).unwrap(), Some(fp1), "remembered on first use");
    client.login("alice", &password_of("alice")).await.unwrap();
    drop(client);
    let (client, _events) = connector.connect().await.unwrap();
    assert_eq!(client.trusted(), Some(&Trusted::Known(fp1)));
    drop(client);

    // Someone on the path answers with another certificate.
    proxy.point_at(other.addr);
    let sent_before = proxy.captured().0.len();
    let error = trust_error(connector.connect().await);
    let TrustError::Changed { known: was, presented, file, .. } = &error else {
        panic!("expected a changed certificate, got {error}");
    };
    assert_eq!((*was, *presented), (fp1, fp2));
    assert_eq!(file, known.path());
    let shown = error.to_string();
    for part in [&server, &fp1.to_string(), &fp2.to_string(), &known.path().display().to_string()] {
        assert!(shown.contains(part.as_str()), "{part} is not in: {shown}");
    }
    assert!(shown.contains("delete the line"), "{shown}");
    assert_eq!(known.get(&server).unwrap(), Some(fp1), "the file is left as it was");
    // Only the TLS hello went out: no request, so no password.
    assert!(proxy.captured().0.len() - sent_before < 1000);

    // What the error says to do accepts the new certificate.
    std::fs::write(known.path(), "").unwrap();
    let (client, _events) = connector.connect().await.unwrap();
    assert_eq!(client.trusted(), Some(&Trusted::FirstUse(fp2)));
    first.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_pinned_fingerprint_is_the_only_certificate_trusted() {
    let (server, fp) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let pinned = Connector::new(server.addr.to_string(), Security::Tls(Trust::Pinned(fp)));
    let (client, mut events) = login_through(&pinned, "alice").await;
    assert_eq!(client.trusted(), Some(&Trusted::Pinned(fp)));
    client.msg("bob", "pinned").await.unwrap();
    client.logout().await.unwrap();
    closed(&mut events).await;

    let wrong = ServerIdentity::self_signed().unwrap().fingerprint();
    let connector = Connector::new(server.addr.to_string(), Security::Tls(Trust::Pinned(wrong)));
    let error = trust_error(connector.connect().await);
    assert!(
        matches!(error, TrustError::NotPinned { expected, presented, .. }
            if expected == wrong && presented == fp),
        "{error}"
    );
    let shown = error.to_string();
    assert!(shown.contains(&wrong.to_string()) && shown.contains(&fp.to_string()), "{shown}");
    server.stop().await;
}

/// A CA, and a certificate it signed for 127.0.0.1 and localhost: the CA's PEM, and the
/// server's certificate chain and key, written to `dir`.
fn ca_signed(dir: &Path, name: &str) -> (std::path::PathBuf, ServerIdentity) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let ca_file = dir.join(format!("{name}-ca.pem"));
    let (cert_file, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_file, ServerIdentity::from_pem_files(&cert_file, &key_file).unwrap())
}

#[tokio::test]
async fn a_ca_signed_certificate_passes_with_its_ca_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = ca_signed(dir.path(), "good");
    let (stranger_ca, _) = ca_signed(dir.path(), "stranger");
    let (server, _) = tls_server(identity).await;
    let port = server.addr.port();

    for addr in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let connector = Connector::new(&addr, Security::Tls(Trust::Ca(ca.clone())));
        let (alice, _a) = login_through(&connector, "alice").await;
        assert_eq!(alice.trusted(), Some(&Trusted::Ca), "{addr}");
        let (_bob, mut bob_events) = login_through(&connector, "bob").await;
        alice.msg("bob", "signed and sealed").await.unwrap();
        assert_eq!(next_message(&mut bob_events).await.1, "signed and sealed");
    }

    let connector = Connector::new(server.addr.to_string(), Security::Tls(Trust::Ca(stranger_ca)));
    let error = trust_error(connector.connect().await);
    assert!(matches!(error, TrustError::NotSigned { .. }), "{error}");

    // A self-signed server does not pass a CA check either.
    let (self_signed, _) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let connector = Connector::new(self_signed.addr.to_string(), Security::Tls(Trust::Ca(ca)));
    assert!(matches!(trust_error(connector.connect().await), TrustError::NotSigned { .. }));
    server.stop().await;
    self_signed.stop().await;
}

#[tokio::test]
async fn plaintext_is_refused_to_an_address_that_is_not_loopback() {
    let server = TestServer::start(Config::default()).await;
    let loopback = Connector::new(server.addr.to_string(), Security::Plaintext);
    let (client, _events) = login_through(&loopback, "alice").await;
    assert_eq!(client.trusted(), None);

    // This machine's own address on its network: reachable, but not loopback.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").expect("a network interface to test with");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback());
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut sent = Vec::new();
        socket.read_to_end(&mut sent).await.unwrap();
        sent
    });
    let error = trust_error(Connector::new(&addr, Security::Plaintext).connect().await);
    assert!(matches!(&error, TrustError::Plaintext(a) if *a == addr), "{error}");
    assert!(error.to_string().contains("loopback"), "{error}");
    let sent = tokio::time::timeout(PATIENCE, accepted).await.unwrap().unwrap();
    assert!(sent.is_empty(), "not a byte was sent before refusing: {sent:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_plaintext_client_at_a_tls_server_is_told_so() {
    let (server, _) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let error = match Client::connect(server.addr).await {
        Err(e) => e,
        Ok(_) => panic!("a plaintext client got in"),
    };
    assert_eq!(error.code(), Some(ErrorCode::HandshakeRequired), "{error}");
    assert!(error.to_string().contains("this server speaks TLS"), "{error}");
    // And the server goes on serving TLS.
    let dir = tempfile::tempdir().unwrap();
    let connector = Connector::new(server.addr.to_string(), first_use(dir.path()));
    login_through(&connector, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_at_a_plaintext_server_says_so_and_remembers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config::default()).await;
    let connector = Connector::new(server.addr.to_string(), first_use(dir.path()));
    let error = trust_error(connector.connect().await);
    assert!(matches!(error, TrustError::Handshake { .. }), "{error}");
    assert!(error.to_string().contains("--plaintext"), "{error}");
    assert!(!dir.path().join("known_servers").exists());
    server.stop().await;
}

/// A blocking rustls client driven by hand, to put TLS records on the wire exactly where a
/// test wants them.
struct RawTls {
    tls: rustls::ClientConnection,
    tcp: std::net::TcpStream,
    input: BytesMut,
}

impl RawTls {
    /// Connects to `addr`, trusting `ca`; `early` is written before the handshake ends, so
    /// rustls sends it in the same write as the client's Finished.
    fn connect(ca: &Path, addr: SocketAddr, early: &[ClientMessage]) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca).unwrap();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().unwrap();
        let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        tls.writer().write_all(&frames(early)).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        let mut raw = RawTls { tls, tcp, input: BytesMut::new() };
        raw.write_out();
        raw
    }

    /// Sends `messages`, then, if `close`, close_notify in the same write and the end of
    /// the TCP stream.
    fn send(&mut self, messages: &[ClientMessage], close: bool) {
        self.tls.writer().write_all(&frames(messages)).unwrap();
        if close {
            self.tls.send_close_notify();
        }
        self.write_out();
        if close {
            self.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        }
    }

    /// The next message from the server; `None` once it has said close_notify (a close
    /// without it fails the test).
    fn next(&mut self) -> Option<ServerMessage> {
        let mut codec = ClientCodec::new(1 << 20);
        loop {
            if let Some(frame) = codec.decode(&mut self.input).unwrap() {
                return Some(frame.unwrap());
            }
            let mut buf = [0u8; 4096];
            let mut stream = rustls::Stream::new(&mut self.tls, &mut self.tcp);
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) => return None,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the server did not end with close_notify: {e}"),
            }
        }
    }

    fn write_out(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp).unwrap();
        }
    }
}

fn frames(messages: &[ClientMessage]) -> BytesMut {
    let mut out = BytesMut::new();
    for message in messages {
        ClientCodec::new(1 << 20).encode(message.clone(), &mut out).unwrap();
    }
    out
}

fn hello() -> ClientMessage {
    ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "raw test".into() })
}

#[tokio::test]
async fn a_first_frame_that_comes_with_the_end_of_the_handshake_is_answered() {
    // The server's handshake reads the hello with the client's Finished, and the session
    // must answer it without waiting for more from the socket, which sends nothing more.
    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = ca_signed(dir.path(), "raw");
    let (server, _) = tls_server(identity).await;
    let addr = server.addr;
    let welcome =
        tokio::task::spawn_blocking(move || RawTls::connect(&ca, addr, &[hello()]).next());
    let welcome = tokio::time::timeout(PATIENCE * 2, welcome).await.unwrap().unwrap();
    assert!(matches!(welcome, Some(ServerMessage::Welcome(_))), "{welcome:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_record_that_does_not_decrypt_ends_that_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = ca_signed(dir.path(), "forged");
    let (server, _) = tls_server(identity).await;
    let connector = Connector::new(server.addr.to_string(), Security::Tls(Trust::Ca(ca.clone())));
    let (alice, _alice_events) = login_through(&connector, "alice").await;
    let addr = server.addr;
    let ended = tokio::task::spawn_blocking(move || {
        let mut raw = RawTls::connect(&ca, addr, &[hello()]);
        assert!(matches!(raw.next(), Some(ServerMessage::Welcome(_))));
        // An application data record of the right shape whose tag cannot match.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        forged.extend((0..0x40).map(|i| i as u8));
        raw.tcp.write_all(&forged).unwrap();
        let mut rest = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut raw.tcp, &mut rest) {
            // Closed with our input unread: a reset, but never a connection left open.
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        rest
    });
    let rest = tokio::time::timeout(PATIENCE * 2, ended).await.unwrap().unwrap();
    // What came back is at most rustls's alert, a record of its own.
    assert!(rest.len() < 64 && rest.first().is_none_or(|&b| b == 0x15 || b == 0x17), "{rest:?}");
    // Everyone else goes on.
    let (_bob, mut bob_events) = login_through(&connector, "bob").await;
    alice.msg("bob", "still here").await.unwrap();
    assert_eq!(next_message(&mut bob_events).await.1, "still here");
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_comes_with_close_notify_is_answered_and_the_server_closes_in_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = ca_signed(dir.path(), "close");
    let (server, _) = tls_server(identity).await;
    let bob = Connector::new(server.addr.to_string(), Security::Tls(Trust::Ca(ca.clone())));
    let (_bob, mut bob_events) = login_through(&bob, "bob").await;
    let addr = server.addr;
    let replies = tokio::task::spawn_blocking(move || {
        let mut raw = RawTls::connect(&ca, addr, &[hello()]);
        assert!(matches!(raw.next(), Some(ServerMessage::Welcome(_))));
        let login = confab::protocol::Request::Login {
            username: "alice".into(),
            password: password_of("alice"),
            direct: None,
        };
        raw.send(&[ClientMessage::Request { id: 1, body: login }], false);
        let mut replies = Vec::new();
        let logged_in = loop {
            match raw.next() {
                Some(ServerMessage::Reply { id: 1, result }) => break result,
                Some(_) => continue,
                None => panic!("closed before the login reply"),
            }
        };
        replies.push(logged_in);
        // The logout and close_notify in one write, then the end of the stream.
        let logout = ClientMessage::Request { id: 2, body: confab::protocol::Request::Logout };
        raw.send(&[logout], true);
        while let Some(message) = raw.next() {
            if let ServerMessage::Reply { id: 2, result } = message {
                replies.push(result);
            }
        }
        replies
    });
    let replies = tokio::time::timeout(PATIENCE * 2, replies).await.unwrap().unwrap();
    assert!(matches!(replies[0], Ok(confab::protocol::Reply::LoggedIn { .. })), "{replies:?}");
    assert_eq!(replies[1..], [Ok(confab::protocol::Reply::LoggedOut)], "{replies:?}");
    // The logout counted as one: bob sees alice log out, not drop.
    loop {
        if let Event::Presence { user, change, .. } = next_event(&mut bob_events).await {
            if change != confab::protocol::PresenceChange::LoggedIn {
                assert_eq!(user, "alice");
                assert_eq!(change, confab::protocol::PresenceChange::LoggedOut);
                break;
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn catch_up_pages_and_bursts_of_requests_arrive_whole_and_in_order_over_tls() {
    // Catch-up pages are far larger than a TLS record, and a burst puts many requests in one
    // record and one request across records: the read path and the writes over TLS.
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = tls_server(ServerIdentity::self_signed().unwrap()).await;
    let connector = Connector::new(server.addr.to_string(), first_use(dir.path()));
    let (alice, _a) = login_through(&connector, "alice").await;
    let text = |i: usize| format!("{i:04} {}", "x".repeat(3000));
    let sends = (0..300).map(|i| {
        let (alice, text) = (alice.clone(), text(i));
        async move { alice.msg("bob", &text).await }
    });
    // All at once: they go out back to back, many to a record.
    let sent: Vec<_> = futures_util::future::join_all(sends).await;
    assert!(sent.iter().all(Result::is_ok));
    let (_bob, mut bob_events) = login_through(&connector, "bob").await;
    let mut got = Vec::new();
    while got.len() < 300 {
        match next_event(&mut bob_events).await {
            Event::Message { text, .. } => got.push(text),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got.sort(); // sent concurrently: the log's order is the order they reached the server
    assert_eq!(got, (0..300).map(text).collect::<Vec<_>>());
    server.stop().await;
}

/// Starts `confab-server` with `args` on a free port; returns it, its address and the
/// certificate fingerprint it printed (the line before the address).
async fn server_binary(args: &[&str]) -> (tokio::process::Child, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab-server"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let fingerprint = line.strip_prefix("confab-server certificate ").unwrap_or(&line).to_owned();
    let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (child, addr, fingerprint)
}

/// Runs `confab --plain` as bob (who logs in, is shown what waits, and logs out at the end
/// of its input); returns its exit code, stdout and stderr.
async fn client_binary(addr: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["--plain", "--user", "bob", "--server", addr])
        .args(extra)
        .env("CONFAB_PASSWORD", "builder")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.expect("the client exits").unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

const CREDENTIALS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/credentials.txt");

#[tokio::test]
async fn the_binaries_talk_tls_by_default_and_the_client_trusts_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server").join("confab.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let db = db.to_str().unwrap().to_owned();
    let (mut server, addr, fingerprint) =
        server_binary(&["--credentials", CREDENTIALS, "--db", &db]).await;
    let fp: Fingerprint = fingerprint.parse().expect("the server prints its fingerprint");
    assert!(dir.path().join("server").join(confab::tls::CERT_FILE).exists());

    let data = dir.path().join("client");
    let data_dir = data.to_str().unwrap();
    let (code, stdout, stderr) = client_binary(&addr, &["--data-dir", data_dir]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("logged in as bob"), "{stdout}");
    assert!(stderr.contains(&format!("trusting its certificate {fp}")), "{stderr}");
    let known = std::fs::read_to_string(data.join("known_servers")).unwrap();
    assert_eq!(known, format!("{addr} {fp}\n"));

    // Known now: no notice, and pinning the printed fingerprint works too.
    let (code, _, stderr) = client_binary(&addr, &["--data-dir", data_dir]).await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("trusting"), "{stderr}");
    let (code, stdout, _) = client_binary(&addr, &["--fingerprint", &fingerprint]).await;
    assert_eq!(code, Some(0), "{stdout}");

    // The server keeps its certificate across restarts.
    server.kill().await.unwrap();
    let (mut server, addr, again) =
        server_binary(&["--credentials", CREDENTIALS, "--db", &db]).await;
    assert_eq!(again, fingerprint);

    // A changed certificate: exit 8, both fingerprints shown.
    let other = ServerIdentity::self_signed().unwrap().fingerprint();
    std::fs::write(data.join("known_servers"), format!("{addr} {other}\n")).unwrap();
    let (code, stdout, stderr) = client_binary(&addr, &["--data-dir", data_dir]).await;
    assert_eq!(code, Some(8), "{stdout}\n{stderr}");
    assert!(stderr.contains(&other.to_string()) && stderr.contains(&fingerprint), "{stderr}");
    assert!(!stdout.contains("logged in"), "{stdout}");

    // A plaintext client at a TLS server is told so.
    let (code, _, stderr) = client_binary(&addr, &["--plaintext"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("this server speaks TLS: connect without --plaintext"), "{stderr}");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn the_server_binary_refuses_plaintext_off_loopback_and_uses_given_pem_files() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab-server"))
        .args(["--plaintext", "--listen", "0.0.0.0:0", "--db", ":memory:"])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = ca_signed(dir.path(), "given");
    let (cert, key) = (dir.path().join("given.crt"), dir.path().join("given.key"));
    let (mut server, addr, printed) = server_binary(&[
        "--credentials",
        CREDENTIALS,
        "--db",
        ":memory:",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(printed, identity.fingerprint().to_string());
    let (code, stdout, stderr) = client_binary(&addr, &["--ca", ca.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    server.kill().await.unwrap();
}
