//! File transfer over real UDP sockets on loopback: the engine on both sides, files on disk,
//! and the server's introduction.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next_non_presence, TestServer, PATIENCE};
use confab::p2p::identity::Identity;
use confab::p2p::noise::Keys;
use confab::p2p::transfer::crypto;
use confab::p2p::transfer::wire::{self, Framing, Header, Packet, ANSWER_LEN, HEADER_LEN};
use confab::p2p::transfer::{
    IncomingFile, OutgoingFile, ReceiverConfig, SenderConfig, Transfer, TransferConfig,
    TransferError, TransferEvent, Transfers,
};
use confab::protocol::{ErrorCode, Event, Introduction, Token};
use confab::server::Config;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc;

const CHUNK: usize = 1400;

/// One client's transfer engine with its own identity and download directory.
struct Side {
    name: &'static str,
    identity: Identity,
    transfers: Transfers,
    events: mpsc::UnboundedReceiver<TransferEvent>,
    dir: tempfile::TempDir,
}

fn side(name: &'static str, auto_accept: bool) -> Side {
    side_with(name, auto_accept, TransferConfig::default())
}

fn side_with(name: &'static str, auto_accept: bool, config: TransferConfig) -> Side {
    let dir = tempfile::tempdir().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let config = TransferConfig { download_dir: dir.path().to_owned(), auto_accept, ..config };
    let identity = Identity::generate();
    let transfers = Transfers::start(socket, name, identity.clone(), config, move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    Side { name, identity, transfers, events, dir }
}

impl Side {
    fn addr(&self) -> SocketAddr {
        self.transfers.local_addr()
    }

    /// The next event other than progress.
    async fn next(&mut self) -> TransferEvent {
        loop {
            let event = tokio::time::timeout(PATIENCE * 4, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no transfer event in time", self.name))
                .expect("the engine stopped");
            if !matches!(event, TransferEvent::Progress { .. }) {
                return event;
            }
        }
    }

    /// Waits for an event `pick` accepts, skipping others (progress, waiting...).
    async fn until<T>(&mut self, mut pick: impl FnMut(&TransferEvent) -> Option<T>) -> T {
        loop {
            let event = self.next().await;
            if let Some(found) = pick(&event) {
                return found;
            }
            if let TransferEvent::Failed { error, .. } = event {
                panic!("{}: transfer failed: {error}", self.name);
            }
        }
    }
}

/// What the server does: tells `to` about the offer, and starts `from` sending.
fn introduce(from: &Side, to: &Side, path: &Path) -> Transfer {
    introduce_via(from, to, path, from.addr(), to.addr(), Token::random())
}

/// [`introduce`], with the addresses the server hands out: `from` is told `to` is at
/// `to_addr`, and `to` that `from` is at `from_addr`.
fn introduce_via(
    from: &Side,
    to: &Side,
    path: &Path,
    from_addr: SocketAddr,
    to_addr: SocketAddr,
    token: Token,
) -> Transfer {
    let file = OutgoingFile::open(path).unwrap();
    let intro =
        |peer: &Side, addr| Introduction::direct(peer.name, addr, token, peer.identity.public());
    to.transfers.expect(IncomingFile::new(&intro(from, from_addr), &file.name, file.size));
    from.transfers.send(&intro(to, to_addr), file).unwrap()
}

/// The names of the files in `dir`.
fn files_in(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap())
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Sends `data` from `a` to `b` (which auto-accepts) and returns where `b` saved it.
async fn round_trip(a: &mut Side, b: &mut Side, name: &str, data: &[u8]) -> PathBuf {
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), name, data);
    introduce(a, b, &path);
    let saved = b.received().await;
    a.until(|e| matches!(e, TransferEvent::Sent { .. }).then_some(())).await;
    saved
}

#[tokio::test]
async fn files_of_awkward_sizes_arrive_byte_identical() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * 1024 * 1024 + 7];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let name = format!("file{i}.bin");
        let saved = round_trip(&mut alice, &mut bob, &name, &data).await;
        assert_eq!(saved, bob.dir.path().join(format!("alice_{name}")));
        assert!(std::fs::read(&saved).unwrap() == data, "{size} bytes arrived intact");
    }
    // No part files are left behind.
    let leftovers: Vec<_> = files_in(bob.dir.path()).filter(|n| n.ends_with(".part")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_received_file_never_replaces_one_already_there() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    std::fs::write(bob.dir.path().join("alice_notes.txt"), b"mine").unwrap();
    let first = round_trip(&mut alice, &mut bob, "notes.txt", b"first").await;
    let second = round_trip(&mut alice, &mut bob, "notes.txt", b"second").await;
    assert_eq!(first, bob.dir.path().join("alice_notes-1.txt"));
    assert_eq!(second, bob.dir.path().join("alice_notes-2.txt"));
    assert_eq!(std::fs::read(bob.dir.path().join("alice_notes.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read(first).unwrap(), b"first");
    assert_eq!(std::fs::read(second).unwrap(), b"second");
}

/// A UDP relay that alice and bob are told is the other: it forwards everything, keeps a
/// copy of every datagram, and plays the on-path attacker who knows the token (sniffed, or
/// from a server that leaks it): it replays, alters and forges datagrams for the transfer.
struct OnPath {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OnPath {
    fn start(alice: SocketAddr, bob: SocketAddr, attack: bool) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0; 65_536];
            // Datagrams relayed towards bob and towards alice: every 20th each way is attacked.
            let mut counts = [0u64; 2];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let datagram = buf[..n].to_vec();
                let (to, count) =
                    if from == alice { (bob, &mut counts[0]) } else { (alice, &mut counts[1]) };
                let _ = socket.send_to(&datagram, to);
                *count += 1;
                if attack && *count % 20 == 0 {
                    // The same datagram again, later; an altered copy; and a forged cancel
                    // for this transfer (its id is in the clear) to both sides, sealed with
                    // nothing, as no key is known; a forged withdrawal of the offer.
                    let _ = socket.send_to(&datagram, to);
                    let mut altered = datagram.clone();
                    let last = altered.len() - 1;
                    altered[last / 2] ^= 0x40;
                    let _ = socket.send_to(&altered, to);
                    if let Ok(header) = Header::parse(&datagram) {
                        for framing in [Framing::Sealed, Framing::Withdraw] {
                            let forged =
                                Header { framing, id: header.id, number: header.number + 1 };
                            let mut cancel = forged.to_bytes().to_vec();
                            cancel.extend_from_slice(&[9; 33]);
                            let _ = socket.send_to(&cancel, bob);
                            let _ = socket.send_to(&cancel, alice);
                        }
                    }
                }
                seen2.lock().unwrap().push(datagram);
            }
        });
        Self { addr, seen, stop, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for OnPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A file that says the same thing over and over, to look for on the wire.
fn marked(len: usize) -> Vec<u8> {
    b"CONFAB-MARKER-7f3a ".iter().copied().cycle().take(len).collect()
}

fn holds(datagrams: &[Vec<u8>], needle: &[u8]) -> bool {
    datagrams.iter().any(|d| d.windows(needle.len()).any(|w| w == needle))
}

#[tokio::test]
async fn nothing_of_the_file_crosses_the_wire_in_the_clear() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    let path_ = OnPath::start(alice.addr(), bob.addr(), false);
    let source = tempfile::tempdir().unwrap();
    let data = marked(300_000);
    let path = write_file(source.path(), "secret-plans.txt", &data);
    let token = Token::random();
    introduce_via(&alice, &bob, &path, path_.addr, path_.addr, token);
    let saved = bob.received().await;
    alice.until(|e| matches!(e, TransferEvent::Sent { .. }).then_some(())).await;
    assert!(std::fs::read(saved).unwrap() == data);
    let seen = path_.seen();
    assert!(seen.len() > 200, "the transfer went through the relay: {}", seen.len());
    assert!(!holds(&seen, b"CONFAB-MARKER"), "the file's content is on the wire");
    assert!(!holds(&seen, b"secret-plans"), "the file's name is on the wire");
    assert!(!holds(&seen, &token.0), "the token is on the wire");
    assert!(!holds(&seen, &(data.len() as u64).to_be_bytes()), "the size is on the wire");
}

#[tokio::test]
async fn forged_replayed_and_altered_datagrams_are_dropped_and_counted() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", false);
    let path_ = OnPath::start(alice.addr(), bob.addr(), true);
    let source = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * 1024 * 1024, 9);
    let path = write_file(source.path(), "clip.mp4", &data);
    let token = Token::random();
    let transfer = introduce_via(&alice, &bob, &path, path_.addr, path_.addr, token);
    let offer = bob.until(|e| match e {
        TransferEvent::Offered { transfer, .. } => Some(transfer.clone()),
        _ => None,
    });
    assert_eq!(offer.await.id, transfer.id);

    // Strangers, from elsewhere: an offer with the right token but another key, a datagram
    // of this transfer (whose id they saw) from the wrong address, an unknown transfer, and
    // garbage. None of them may touch anything.
    let mallory = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mallory_id = Identity::generate();
    let bob_key = bob.identity.public();
    let keys =
        Keys { identity: &mallory_id, me: "alice", peer: "bob", peer_key: &bob_key, token: &token };
    let evil = Packet::Offer { size: 5, chunk_size: 1400, name: "evil.sh" };
    let mut plain = Vec::new();
    wire::encode(&evil, &mut plain);
    let offering = crypto::offer(keys, 77, &plain).unwrap();
    mallory.send_to(offering.datagram(), bob.addr()).unwrap();
    let stray = Header { framing: Framing::Sealed, id: transfer.id, number: 5 };
    let mut stray = stray.to_bytes().to_vec();
    stray.extend_from_slice(&[0; 40]);
    mallory.send_to(&stray, bob.addr()).unwrap();
    let unknown = Header { framing: Framing::Sealed, id: transfer.id ^ 1, number: 5 };
    mallory.send_to(&unknown.to_bytes(), bob.addr()).unwrap();
    mallory.send_to(b"hello?", bob.addr()).unwrap();

    bob.transfers.accept(transfer.id);
    let saved = bob.received().await;
    alice.until(|e| matches!(e, TransferEvent::Sent { .. }).then_some(())).await;
    assert!(std::fs::read(saved).unwrap() == data, "byte-identical despite the attacker");
    let (bob_stats, alice_stats) = (bob.transfers.stats(), alice.transfers.stats());
    // Forged: the offer, the stray and, from the relay, altered copies and forged cancels.
    assert!(bob_stats.forged >= 10, "{bob_stats:?}");
    assert!(bob_stats.replayed > 0, "{bob_stats:?}");
    assert_eq!(bob_stats.unknown, 1, "{bob_stats:?}");
    assert_eq!(bob_stats.malformed, 1, "{bob_stats:?}");
    assert!(alice_stats.forged > 0 && alice_stats.replayed > 0, "{alice_stats:?}");
    assert!(!bob.dir.path().join("alice_evil.sh").exists());
}

#[tokio::test]
async fn an_interrupted_transfer_resumes_from_the_part_file() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    let data = random_bytes(3 * 1024 * 1024, 5);
    // What an earlier, interrupted attempt left: the first 1 MiB and a bit, in the hidden
    // part file. The transfer goes on right after it.
    let have = 1024 * 1024 + 500;
    let part = bob.dir.path().join(format!(".alice_video.mkv.{}.part", data.len()));
    std::fs::write(&part, &data[..have]).unwrap();
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "video.mkv", &data);
    introduce(&alice, &bob, &path);

    let expected = have as u64;
    let offered = bob
        .until(|e| match e {
            TransferEvent::Offered { resume_from, .. } => Some(*resume_from),
            _ => None,
        })
        .await;
    assert_eq!(offered, expected);
    let resumed = alice
        .until(|e| match e {
            TransferEvent::Started { resume_from, .. } => Some(*resume_from),
            _ => None,
        })
        .await;
    assert_eq!(resumed, expected, "the sender starts after what bob has");
    let saved = bob.received().await;
    assert!(std::fs::read(saved).unwrap() == data);
    assert!(!part.exists(), "the part file became the file");
}

#[tokio::test]
async fn a_part_file_that_does_not_match_fails_the_check_and_is_discarded() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    let data = random_bytes(200_000, 6);
    let mut wrong = data[..100_000].to_vec();
    wrong[10] ^= 0xFF;
    let part = bob.dir.path().join(format!(".alice_a.bin.{}.part", data.len()));
    std::fs::write(&part, &wrong).unwrap();
    let source = tempfile::tempdir().unwrap();
    introduce(&alice, &bob, &write_file(source.path(), "a.bin", &data));
    let failed = |e: &TransferEvent| match e {
        TransferEvent::Failed { error, .. } => Some(error.clone()),
        _ => None,
    };
    let bob_error = loop {
        if let Some(error) = failed(&bob.next().await) {
            break error;
        }
    };
    let alice_error = loop {
        if let Some(error) = failed(&alice.next().await) {
            break error;
        }
    };
    assert_eq!(bob_error, TransferError::HashMismatch);
    assert_eq!(alice_error, TransferError::HashMismatch);
    assert!(!part.exists(), "a part that fails the check is not kept");
    assert!(!bob.dir.path().join("alice_a.bin").exists());
}

#[tokio::test]
async fn decline_and_cancel_are_told_to_the_other_side() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", false);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "big.bin", &random_bytes(16 * 1024 * 1024, 7));

    let transfer = introduce(&alice, &bob, &path);
    bob.until(|e| matches!(e, TransferEvent::Offered { .. }).then_some(())).await;
    bob.transfers.decline(transfer.id);
    // Gone at once: a stale /acceptfile finds no offer, /cancel no transfer.
    assert_eq!(bob.transfers.offer_from("alice"), None);
    assert!(bob.transfers.with("alice").is_empty());
    assert_eq!(alice.until_failure().await, TransferError::Declined);

    let transfer = introduce(&alice, &bob, &path);
    bob.until(|e| matches!(e, TransferEvent::Offered { .. }).then_some(())).await;
    bob.transfers.accept(transfer.id);
    alice.until(|e| matches!(e, TransferEvent::Started { .. }).then_some(())).await;
    alice.transfers.cancel(transfer.id);
    assert_eq!(alice.until_failure().await, TransferError::Cancelled);
    assert_eq!(bob.until_failure().await, TransferError::CancelledByPeer);
    assert!(!bob.dir.path().join("alice_big.bin").exists());
}

#[tokio::test]
async fn a_receiver_that_vanishes_mid_transfer_is_a_clear_error() {
    let quick = TransferConfig {
        sender: SenderConfig { idle_timeout: Duration::from_millis(800), ..Default::default() },
        ..TransferConfig::default()
    };
    let mut alice = side_with("alice", false, quick);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "big.bin", &random_bytes(8 * 1024 * 1024, 8));
    // Bob is a bare socket with bob's key: it accepts, takes a few chunks, and then is gone
    // without a word.
    let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
    bob.set_read_timeout(Some(PATIENCE)).unwrap();
    let bob_id = Identity::generate();
    let token = Token::random();
    let file = OutgoingFile::open(&path).unwrap();
    let intro = Introduction::direct("bob", bob.local_addr().unwrap(), token, bob_id.public());
    alice.transfers.send(&intro, file).unwrap();
    let mut buf = vec![0; 65_536];
    let (n, from) = bob.recv_from(&mut buf).unwrap();
    let header = Header::parse(&buf[..n]).unwrap();
    assert_eq!(header.framing, Framing::Offer);
    let alice_key = alice.identity.public();
    let keys =
        Keys { identity: &bob_id, me: "bob", peer: "alice", peer_key: &alice_key, token: &token };
    let mut answered = crypto::answer(keys, header.id, &buf[..n]).unwrap();
    assert!(matches!(wire::parse(&answered.offer).unwrap(), Packet::Offer { name: "big.bin", .. }));
    let mut out = vec![0; HEADER_LEN];
    out.extend_from_slice(&answered.answer);
    wire::encode(&Packet::Accept { resume_from: 0, window: 1024 }, &mut out);
    answered.keys.seal(header.id, Framing::Answered, &mut out, HEADER_LEN + ANSWER_LEN);
    bob.send_to(&out, from).unwrap();
    let (n, _) = bob.recv_from(&mut buf).unwrap();
    let header = Header::parse(&buf[..n]).unwrap();
    let plain = answered.keys.open(&header, &mut buf[..n], HEADER_LEN).unwrap();
    // The sender's first sealed packet: data, or a path MTU probe ahead of it.
    assert!(matches!(wire::parse(plain).unwrap(), Packet::Data { .. } | Packet::Probe { .. }));
    drop(bob);
    assert_eq!(alice.until_failure().await, TransferError::PeerSilent);
}

#[tokio::test]
async fn several_transfers_run_at_once_in_both_directions() {
    let mut alice = side("alice", true);
    let mut bob = side("bob", true);
    let source = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), random_bytes(1_500_000 + i * 1000, 20 + i as u64)))
        .collect();
    for (name, data) in &files {
        let path = write_file(source.path(), name, data);
        introduce(&alice, &bob, &path);
        introduce(&bob, &alice, &path);
    }
    let mut got_bob = Vec::new();
    let mut got_alice = Vec::new();
    while got_bob.len() < files.len() {
        if let TransferEvent::Received { path, .. } = bob.next().await {
            got_bob.push(path);
        }
    }
    while got_alice.len() < files.len() {
        if let TransferEvent::Received { path, .. } = alice.next().await {
            got_alice.push(path);
        }
    }
    for (name, data) in &files {
        assert!(std::fs::read(bob.dir.path().join(format!("alice_{name}"))).unwrap() == *data);
        assert!(std::fs::read(alice.dir.path().join(format!("bob_{name}"))).unwrap() == *data);
    }
}

impl Side {
    /// Waits for a file to arrive; returns where it was saved.
    async fn received(&mut self) -> PathBuf {
        self.until(|e| match e {
            TransferEvent::Received { path, .. } => Some(path.clone()),
            _ => None,
        })
        .await
    }

    async fn until_failure(&mut self) -> TransferError {
        loop {
            match self.next().await {
                TransferEvent::Failed { error, .. } => return error,
                TransferEvent::Sent { .. } | TransferEvent::Received { .. } => {
                    panic!("{}: the transfer succeeded", self.name)
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn the_server_introduces_sender_and_receiver() {
    let server = TestServer::start(Config::default()).await;
    let alice = server.login_direct("alice").await;
    let mut bob = server.login_direct("bob").await;

    let intro = alice.client.send_file("bob", "clip.mp4", 1234).await.unwrap();
    assert_eq!(intro.peer, "bob");
    assert_eq!(intro.addr.port(), bob.udp.local_addr().unwrap().port());
    match next_non_presence(&mut bob.events).await {
        Event::FileOffer { from, name, size } => {
            assert_eq!(from.peer, "alice");
            assert_eq!(from.addr.port(), alice.udp.local_addr().unwrap().port());
            assert_eq!(from.token, intro.token, "both sides hold the same token");
            assert_eq!((name.as_str(), size), ("clip.mp4", 1234));
        }
        other => panic!("expected a file offer, got {other:?}"),
    }
    let again = alice.client.send_file("bob", "clip.mp4", 1234).await.unwrap();
    assert!(again.token != intro.token, "a fresh token for every offer");
    match next_non_presence(&mut bob.events).await {
        Event::FileOffer { from, .. } => assert_eq!(from.token, again.token),
        other => panic!("expected a file offer, got {other:?}"),
    }

    let refused = |name: &str, to: &str| {
        let client = alice.client.clone();
        let (name, to) = (name.to_owned(), to.to_owned());
        async move { common::code(client.send_file(&to, &name, 1).await) }
    };
    assert_eq!(refused("a.txt", "alice").await, ErrorCode::SelfTarget);
    assert_eq!(refused("a.txt", "nobody").await, ErrorCode::UnknownUser);
    assert_eq!(refused("a.txt", "carol").await, ErrorCode::Offline);
    assert_eq!(refused("../etc/passwd", "bob").await, ErrorCode::InvalidArgument);
    assert_eq!(refused(".bashrc", "bob").await, ErrorCode::InvalidArgument);
    bob.client.block("alice").await.unwrap();
    assert_eq!(refused("a.txt", "bob").await, ErrorCode::BlockedByRecipient);
    // A client without direct sockets can neither send nor receive.
    let (dave, _dave_events) = server.connect().await;
    dave.login_with("dave", &common::password_of("dave"), None).await.unwrap();
    assert_eq!(common::code(dave.send_file("alice", "a.txt", 1).await), ErrorCode::NotReachable);
    assert_eq!(refused("a.txt", "dave").await, ErrorCode::NotReachable);
    // bob, blocked or not, was never told about the refused offers.
    bob.client.unblock("alice").await.unwrap();
    assert!(matches!(common::next_event(&mut bob.events).await, Event::Presence { .. }));
    common::assert_quiet(&mut bob.events, &alice.client, "bob").await;
}

#[tokio::test]
async fn accepting_an_offer_whose_sender_has_gone_fails_soon_and_leaves_no_part_file() {
    let quick = TransferConfig {
        receiver: ReceiverConfig { idle_timeout: Duration::from_secs(1), ..Default::default() },
        ..TransferConfig::default()
    };
    let mut bob = side_with("bob", false, quick);
    // The sender's client offers once and then crashes: no cancel, no withdrawal, silence.
    let alice = UdpSocket::bind("127.0.0.1:0").unwrap();
    let alice_id = Identity::generate();
    let token = Token::random();
    let alice_addr = alice.local_addr().unwrap();
    let alice_intro = Introduction::direct("alice", alice_addr, token, alice_id.public());
    bob.transfers.expect(IncomingFile::new(&alice_intro, "clip.mp4", 500_000));
    let bob_key = bob.identity.public();
    let keys =
        Keys { identity: &alice_id, me: "alice", peer: "bob", peer_key: &bob_key, token: &token };
    let mut plain = Vec::new();
    wire::encode(&Packet::Offer { size: 500_000, chunk_size: 1400, name: "clip.mp4" }, &mut plain);
    alice.send_to(crypto::offer(keys, 5, &plain).unwrap().datagram(), bob.addr()).unwrap();
    let offer = bob.until(|e| match e {
        TransferEvent::Offered { transfer, .. } => Some(transfer.id),
        _ => None,
    });
    let id = offer.await;
    drop(alice);
    bob.transfers.accept(id);
    assert_eq!(bob.until_failure().await, TransferError::PeerSilent);
    let leftovers: Vec<_> = files_in(bob.dir.path()).collect();
    assert!(leftovers.is_empty(), "an accept that got nothing leaves nothing: {leftovers:?}");
}

/// CPU time, in clock ticks, of each thread of this process whose name starts with
/// `prefix`, by thread id.
fn cpu_ticks(prefix: &str) -> std::collections::HashMap<String, u64> {
    let mut ticks = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // After the parenthesised name: utime and stime are the 12th and 13th fields.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> =
            rest.split(' ').skip(12).take(2).filter_map(|f| f.parse().ok()).collect();
        ticks.insert(task.file_name().to_string_lossy().into_owned(), fields.iter().sum());
    }
    ticks
}

#[tokio::test]
async fn finished_transfers_leave_the_engines_asleep() {
    // Names of their own: the engine threads are named for their user.
    let (mut alice, mut bob) = (side("quiet-a", false), side("quiet-b", true));
    let data = random_bytes(2 << 20, 31);
    round_trip(&mut alice, &mut bob, "clip.mp4", &data).await;
    // The finished machines linger (to repeat their last word) with nothing to report: the
    // engines must sleep until their next deadline rather than spin (they once spun for
    // the whole 10 s of lingering, a core each). A second of it, on the threads' own clocks.
    let before = cpu_ticks("transfers quiet");
    assert_eq!(before.len(), 2, "both engines found");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cpu_ticks("transfers quiet");
    let spent: u64 = before.iter().map(|(tid, t)| after.get(tid).map_or(0, |a| a - t)).sum();
    let per_second = 100; // USER_HZ, as the kernel counts /proc times
    assert!(spent < per_second / 5, "the engines used {spent} ticks of CPU in a second");
}
