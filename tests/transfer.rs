//! File transfer over real UDP sockets on loopback: the engine on both sides, files on disk,
//! and the server's introduction.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{next_non_presence, TestServer, PATIENCE};
use confab::p2p::transfer::wire::{self, Header, Packet};
use confab::p2p::transfer::{
    IncomingFile, OutgoingFile, SenderConfig, Transfer, TransferConfig, TransferError,
    TransferEvent, Transfers,
};
use confab::protocol::{ErrorCode, Event, Token};
use confab::server::Config;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc;

const CHUNK: usize = 1400;

/// One client's transfer engine with its own download directory.
struct Side {
    name: &'static str,
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
    let transfers = Transfers::start(socket, config, move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    Side { name, transfers, events, dir }
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
    let file = OutgoingFile::open(path).unwrap();
    let token = Token::random();
    to.transfers.expect(IncomingFile {
        from: from.name.into(),
        addr: from.addr(),
        token,
        name: file.name.clone(),
        size: file.size,
    });
    from.transfers.send(to.name, to.addr(), token, file).unwrap()
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
    let leftovers: Vec<_> = std::fs::read_dir(bob.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".part"))
        .collect();
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

#[tokio::test]
async fn forged_and_stray_datagrams_are_dropped_and_counted() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", false);
    let source = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * 1024 * 1024, 9);
    let path = write_file(source.path(), "clip.mp4", &data);
    let transfer = introduce(&alice, &bob, &path);
    let offer = bob.until(|e| match e {
        TransferEvent::Offered { transfer, .. } => Some(transfer.clone()),
        _ => None,
    });
    let offer = offer.await;
    assert_eq!(offer.id, transfer.id);

    // Before bob answers: datagrams for this transfer from another socket (right id, even
    // the right token, which an eavesdropper could have seen), an unknown transfer, and
    // garbage. None of them may touch the file.
    let mallory = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut out = Vec::new();
    let evil = vec![0xEE; CHUNK];
    for token in [Token([0; 16]), Token::random()] {
        let header = Header { id: transfer.id, token };
        wire::encode(header, &Packet::Data { seq: 0, payload: &evil }, &mut out);
        mallory.send_to(&out, bob.addr()).unwrap();
        out.clear();
        wire::encode(header, &Packet::Cancel, &mut out);
        mallory.send_to(&out, alice.addr()).unwrap();
        out.clear();
    }
    let stranger = Header { id: transfer.id ^ 1, token: Token::random() };
    wire::encode(stranger, &Packet::Finish { sha256: [0; 32] }, &mut out);
    mallory.send_to(&out, bob.addr()).unwrap();
    mallory.send_to(b"hello?", bob.addr()).unwrap();
    // A forged offer the server never announced.
    out.clear();
    let offer = Packet::Offer { size: 5, chunk_size: 1400, name: "evil.sh" };
    wire::encode(Header { id: 77, token: Token::random() }, &offer, &mut out);
    mallory.send_to(&out, bob.addr()).unwrap();

    bob.transfers.accept(transfer.id);
    let saved = bob.received().await;
    alice.until(|e| matches!(e, TransferEvent::Sent { .. }).then_some(())).await;
    assert!(std::fs::read(saved).unwrap() == data);
    let bob_stats = bob.transfers.stats();
    assert_eq!(bob_stats.forged, 3, "two forged chunks and a forged offer: {bob_stats:?}");
    assert_eq!(bob_stats.unknown, 1, "{bob_stats:?}");
    assert_eq!(bob_stats.malformed, 1, "{bob_stats:?}");
    assert_eq!(alice.transfers.stats().forged, 2);
    assert!(!bob.dir.path().join("alice_evil.sh").exists());
}

#[tokio::test]
async fn an_interrupted_transfer_resumes_from_the_part_file() {
    let mut alice = side("alice", false);
    let mut bob = side("bob", true);
    let data = random_bytes(3 * 1024 * 1024, 5);
    // What an earlier, interrupted attempt left: the first 1 MiB and a bit, in the hidden
    // part file. The transfer keeps the whole chunks of it.
    let have = 1024 * 1024 + 500;
    let part = bob.dir.path().join(format!(".alice_video.mkv.{}.part", data.len()));
    std::fs::write(&part, &data[..have]).unwrap();
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "video.mkv", &data);
    introduce(&alice, &bob, &path);

    let expected = (have / CHUNK * CHUNK) as u64;
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
    // Bob is a bare socket: it accepts, takes a few chunks, and then is gone without a word.
    let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
    bob.set_read_timeout(Some(PATIENCE)).unwrap();
    let token = Token::random();
    let file = OutgoingFile::open(&path).unwrap();
    alice.transfers.send("bob", bob.local_addr().unwrap(), token, file).unwrap();
    let mut buf = vec![0; 65_536];
    let (n, from) = bob.recv_from(&mut buf).unwrap();
    let (header, packet) = wire::parse(&buf[..n]).unwrap();
    assert!(matches!(packet, Packet::Offer { name: "big.bin", .. }), "{packet:?}");
    assert_eq!(header.token, token);
    let mut out = Vec::new();
    wire::encode(header, &Packet::Accept { resume_from: 0, window: 1024 }, &mut out);
    bob.send_to(&out, from).unwrap();
    let (n, _) = bob.recv_from(&mut buf).unwrap();
    assert!(matches!(wire::parse(&buf[..n]).unwrap().1, Packet::Data { .. }));
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
