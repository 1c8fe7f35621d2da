//! The network lab (tests/common/lab.rs): each NAT kind maps and filters as it is named,
//! and the binaries work across it. Skipped without root, ip, nft and socat.

mod common;

use std::net::SocketAddrV4;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::binaries::{self, Proc, PATIENCE};
use common::lab::{Host, Lab, Nat};
use tokio::time::{timeout, Instant};

/// Where the public hosts' UDP echoes listen.
const ECHO_PORT: u16 = 9000;
/// The port a client sends from (and a forward points at).
const CLIENT_PORT: u16 = 40000;
/// A port no client ever sent to: the unsolicited datagrams come from it.
const KNOCK_PORT: u16 = 9002;

#[tokio::test]
async fn the_lab_builds_the_nat_kinds_it_names() {
    let Some(mut lab) = Lab::new("kinds") else { return };
    if !has_socat() {
        return;
    }
    let (public, stranger) = (lab.add_public_client(), lab.add_public_client());
    let server = SocketAddrV4::new(lab.server_ip(), ECHO_PORT);
    let other = SocketAddrV4::new(public.ip, ECHO_PORT);
    let _echoes = [echo(&lab, lab.server_ns()), echo(&lab, &public.ns)];

    // (kind, keeps the client's port for both destinations, lets the unsolicited one in)
    let kinds = [
        (Nat::Cone, true, true),
        (Nat::PortRestricted, true, false),
        (Nat::Symmetric, false, false),
        (Nat::Forwarded { tcp: CLIENT_PORT, udp: CLIENT_PORT }, true, true),
    ];
    for (nat, preserving, open) in kinds {
        let home = lab.add_home(nat);
        let client = lab.add_client(home);
        let router = lab.router(home).ip;

        // The mapping as each public host sees it, from the same client port.
        let mut to_other = udp(&lab, &client, other);
        let (seen_by_other, _) = ask(&mut to_other).await;
        to_other.child.kill().await.unwrap(); // frees the port; the mapping stays
        let mut to_server = udp(&lab, &client, server);
        let (seen_by_server, _) = ask(&mut to_server).await;
        assert_eq!(*seen_by_server.ip(), router, "{nat:?}");
        assert_eq!(*seen_by_other.ip(), router, "{nat:?}");
        if preserving {
            assert_eq!(seen_by_server.port(), CLIENT_PORT, "{nat:?} keeps the port");
            assert_eq!(seen_by_other.port(), CLIENT_PORT, "{nat:?} keeps the port");
        } else {
            assert_ne!(seen_by_server.port(), seen_by_other.port(), "{nat:?} maps per destination");
        }

        // Datagrams to the server's mapping from a port of the server the client never sent
        // to, and from a host it never sent to. Whether they came is told by the lines
        // before the answer to a question the client asks after they were sent.
        let knock = SocketAddrV4::new(router, seen_by_server.port());
        send_unsolicited(&lab, lab.server_ns(), "knock", knock).await;
        send_unsolicited(&lab, &stranger.ns, "stranger", knock).await;
        let (_, before) = ask(&mut to_server).await;
        eprintln!("{nat:?}: mapped to {seen_by_other} and {seen_by_server}; then came {before:?}");
        let came = |what: &str| before.iter().any(|line| line == what);
        assert_eq!(came("knock"), open, "{nat:?}: came first: {before:?}");
        assert_eq!(came("stranger"), open, "{nat:?}: came first: {before:?}");

        if let Nat::Forwarded { tcp, .. } = nat {
            let forward = SocketAddrV4::new(router, tcp);
            assert_eq!(tcp_hello(&lab, &client, &public, forward).await, "hello from the client");
        }
    }
}

#[tokio::test]
async fn two_clients_in_two_homes_reach_the_server_binary() {
    let Some(mut lab) = Lab::new("binaries") else { return };
    let homes = [lab.add_home(Nat::PortRestricted), lab.add_home(Nat::PortRestricted)];
    let (alice_host, bob_host) = (lab.add_client(homes[0]), lab.add_client(homes[1]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("server")).unwrap();
    let db = dir.path().join("server").join("confab.db");
    let listen = format!("{}:4000", lab.server_ip());
    let server = lab.command(lab.server_ns(), binaries::SERVER);
    let (_server, addr, fingerprint) = binaries::start_tls_server_by(server, &db, &listen).await;

    let client = |host: &Host, user: &str, password: &str| {
        let data = dir.path().join(user);
        let data = data.to_str().unwrap();
        let cmd = lab.command(&host.ns, binaries::CLIENT);
        let extra = ["--data-dir", data, "--fingerprint", &fingerprint];
        binaries::client_by(cmd, &addr, user, password, &extra)
    };
    let mut bob = client(&bob_host, "bob", "builder");
    bob.expect("logged in as bob").await;
    let mut alice = client(&alice_host, "alice", "wonderland");
    alice.expect("logged in as alice").await;
    bob.expect("* alice logged in").await;
    alice.send("/msg bob hello across two NATs").await;
    alice.expect("sent to bob").await;
    bob.expect("alice: hello across two NATs").await;
}

/// The transfer socket's port of a client behind [`Nat::Forwarded`], and its listener's.
const FORWARDED_UDP: u16 = 41000;
const FORWARDED_TCP: u16 = 41001;

/// Where a link between a client behind `a` and one behind `b` should go: straight, unless
/// a symmetric NAT (a new port for every destination) faces one that only lets in what its
/// client asked for.
fn direct_between(a: &Nat, b: &Nat) -> bool {
    let reachable = |nat: &Nat| matches!(nat, Nat::Cone | Nat::Forwarded { .. });
    let symmetric = |nat: &Nat| matches!(nat, Nat::Symmetric);
    let blocked = |from: &Nat, to: &Nat| symmetric(from) && !reachable(to);
    !blocked(a, b) && !blocked(b, a)
}

/// A client of the lab's server in `host`, logged in.
async fn lab_client(
    lab: &Lab,
    server: &LabServer,
    host: &Host,
    user: &str,
    extra: &[&str],
) -> Proc {
    let data = server.dir.path().join(user);
    let downloads = data.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (data, downloads) = (data.to_str().unwrap(), downloads.to_str().unwrap());
    let mut args = vec!["--data-dir", data, "--fingerprint", &server.fingerprint];
    args.extend(["--download-dir", downloads, "--auto-accept"]);
    args.extend(extra);
    let password = demo_password(user);
    let mut proc = binaries::client_by(
        lab.command(&host.ns, binaries::CLIENT),
        &server.addr,
        user,
        password,
        &args,
    );
    proc.expect(&format!("logged in as {user}")).await;
    proc
}

/// The password of a demo account (testdata/credentials.txt, which the server imports).
fn demo_password(user: &str) -> &'static str {
    match user {
        "alice" => "wonderland",
        "bob" => "builder",
        "carol" => "singer",
        "dave" => "grohl",
        _ => "dropper",
    }
}

/// A home of each kind with its user's client in it, logged in (behind a port forward,
/// with the forwarded ports); the clients and the homes, in order.
async fn homes_for(
    lab: &mut Lab,
    server: &LabServer,
    kinds: &[(&str, Nat)],
) -> (Vec<Proc>, Vec<common::lab::HomeId>) {
    let (udp, tcp) = (FORWARDED_UDP.to_string(), FORWARDED_TCP.to_string());
    let (mut clients, mut homes) = (Vec::new(), Vec::new());
    for (user, nat) in kinds {
        let home = lab.add_home(*nat);
        homes.push(home);
        let host = lab.add_client(home);
        let extra: &[&str] = match nat {
            Nat::Forwarded { .. } => &["--udp-port", &udp, "--p2p-port", &tcp],
            _ => &[],
        };
        clients.push(lab_client(lab, server, &host, user, extra).await);
    }
    (clients, homes)
}

/// `clip.bin` of `mib` MiB in the server's scratch directory (bytes that do not repeat
/// within a chunk); its content and its path.
fn clip_of(server: &LabServer, mib: u32) -> (Vec<u8>, std::path::PathBuf) {
    let data: Vec<u8> =
        (0..mib << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let clip = server.dir.path().join("clip.bin");
    std::fs::write(&clip, &data).unwrap();
    (data, clip)
}

/// The lab's server binary, with its scratch directory.
struct LabServer {
    _proc: Proc,
    addr: String,
    fingerprint: String,
    dir: tempfile::TempDir,
}

async fn lab_server(lab: &Lab) -> LabServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("server")).unwrap();
    let db = dir.path().join("server").join("confab.db");
    let listen = format!("{}:4000", lab.server_ip());
    let server = lab.command(lab.server_ns(), binaries::SERVER);
    let (proc, addr, fingerprint) = binaries::start_tls_server_by(server, &db, &listen).await;
    LabServer { _proc: proc, addr, fingerprint, dir }
}

/// For every ordered pair of NAT kinds, an 8 MiB file arrives whole, directly where the
/// NATs allow it and through the server's relay where they do not; and two clients behind
/// one NAT (which does not hairpin) go directly over their own network.
#[tokio::test]
async fn a_file_crosses_every_pair_of_nats_directly_or_relayed() {
    let Some(mut lab) = Lab::new("files") else { return };
    let server = lab_server(&lab).await;
    let kinds = [
        ("alice", Nat::Cone),
        ("bob", Nat::PortRestricted),
        ("carol", Nat::Symmetric),
        ("dave", Nat::Forwarded { tcp: FORWARDED_TCP, udp: FORWARDED_UDP }),
    ];
    let (mut clients, homes) = homes_for(&mut lab, &server, &kinds).await;
    let (data, clip) = clip_of(&server, 8);

    let mut count = 0;
    for from in 0..kinds.len() {
        for to in (0..kinds.len()).filter(|to| *to != from) {
            let ((sender, from_nat), (receiver, to_nat)) = (&kinds[from], &kinds[to]);
            let way = if direct_between(from_nat, to_nat) {
                "directly"
            } else {
                "through the server's relay"
            };
            let what = format!("{sender} ({from_nat:?}) to {receiver} ({to_nat:?})");
            clients[from].send(&format!("/p2pvideo {receiver} {}", clip.display())).await;
            let line =
                clients[from].expect(&format!("{receiver} accepted clip.bin; sending")).await;
            assert!(line.contains(way), "{what}: {line}");
            let line = clients[to].expect(&format!("received clip.bin from {sender}")).await;
            assert!(
                line.ends_with(&format!("it came {way}")) || line.contains(way),
                "{what}: {line}"
            );
            clients[from].expect(&format!("clip.bin has been uploaded to {receiver}")).await;
            let saved = server
                .dir
                .path()
                .join(receiver)
                .join("downloads")
                .join(format!("{sender}_clip.bin"));
            assert!(std::fs::read(&saved).unwrap() == data, "{what}: the file arrived whole");
            std::fs::remove_file(saved).unwrap();
            count += 1;
        }
    }
    assert_eq!(count, 12);

    // eve lives with carol, behind the symmetric NAT (which does not hairpin): their own
    // network's addresses are the way.
    let eve_host = lab.add_client(homes[2]);
    let mut eve = lab_client(&lab, &server, &eve_host, "eve", &[]).await;
    for (sender, receiver, from, to) in [("carol", "eve", 2, None), ("eve", "carol", 2, Some(2))] {
        let (tx, rx) = match to {
            None => (&mut clients[from], &mut eve),
            Some(to) => (&mut eve, &mut clients[to]),
        };
        tx.send(&format!("/p2pvideo {receiver} {}", clip.display())).await;
        let line = tx.expect(&format!("{receiver} accepted clip.bin; sending")).await;
        assert!(line.contains("directly"), "{sender} to {receiver} behind one NAT: {line}");
        rx.expect(&format!("received clip.bin from {sender}")).await;
        let saved =
            server.dir.path().join(receiver).join("downloads").join(format!("{sender}_clip.bin"));
        assert!(std::fs::read(&saved).unwrap() == data, "{sender} to {receiver}: whole");
    }
}
/// A transfer relayed because no direct path answered moves to a direct one that opens
/// later (here bob's router starts forwarding his port in the middle of it).
#[tokio::test]
async fn a_relayed_transfer_moves_to_a_direct_path_that_opens_later() {
    let Some(mut lab) = Lab::new("moves") else { return };
    let server = lab_server(&lab).await;
    let carol_home = lab.add_home(Nat::Symmetric);
    let carol_host = lab.add_client(carol_home);
    let bob_home = lab.add_home(Nat::PortRestricted);
    let bob_host = lab.add_client(bob_home);
    let mut carol = lab_client(&lab, &server, &carol_host, "carol", &[]).await;
    let udp = FORWARDED_UDP.to_string();
    let mut bob = lab_client(&lab, &server, &bob_host, "bob", &["--udp-port", &udp]).await;
    // Long enough to be under way when the path opens: about 3 s at the relay's cap.
    let (data, clip) = clip_of(&server, 36);

    carol.send(&format!("/p2pvideo bob {}", clip.display())).await;
    let line = carol.expect("bob accepted clip.bin; sending").await;
    assert!(line.contains("through the server's relay"), "{line}");
    let forward = format!(
        "add rule ip lab_nat prerouting iifname \"wan\" udp dport {FORWARDED_UDP} dnat to {}:{FORWARDED_UDP}",
        bob_host.ip
    );
    let router = lab.router(bob_home).ns;
    let status = lab.command(&router, "nft").args(forward.split(' ')).status().await.unwrap();
    assert!(status.success(), "nft: {forward}");

    carol.expect("* clip.bin with bob now goes directly").await;
    bob.expect("* clip.bin with carol now goes directly").await;
    let line = bob.expect("received clip.bin from carol").await;
    assert!(line.ends_with("it came directly"), "{line}");
    let saved = server.dir.path().join("bob").join("downloads").join("carol_clip.bin");
    assert!(std::fs::read(saved).unwrap() == data, "the file arrived whole");
}

/// A path that shrinks under a transfer (jumbo frames, then a 1500-byte link that drops
/// what is larger without a word, as a route change to a tunnel does) is followed: the
/// chunks cut for jumbo frames go in parts, new ones are cut smaller, and the file arrives
/// whole where it used to fail once the receiver heard nothing for 10 s.
#[tokio::test]
async fn a_transfer_follows_a_path_that_shrinks_under_it() {
    let Some(mut lab) = Lab::new("shrinks") else { return };
    let server = lab_server(&lab).await;
    let (alice_host, bob_host) = (lab.add_public_client(), lab.add_public_client());
    for host in [&alice_host, &bob_host] {
        lab.set_mtu(host, 9000);
    }
    let mut alice = lab_client(&lab, &server, &alice_host, "alice", &[]).await;
    let mut bob = lab_client(&lab, &server, &bob_host, "bob", &[]).await;
    let (data, clip) = clip_of(&server, 48);

    alice.send(&format!("/p2pvideo bob {}", clip.display())).await;
    let line = alice.expect("bob accepted clip.bin; sending").await;
    assert!(line.contains("directly"), "{line}");
    // Long enough for the path MTU search to have reached jumbo frames (a few round trips).
    tokio::time::sleep(Duration::from_millis(100)).await;
    lab.set_mtu(&bob_host, 1500);
    let saved = server.dir.path().join("bob").join("downloads").join("alice_clip.bin");
    assert!(!saved.exists(), "the transfer was still under way when the path shrank");

    bob.expect("received clip.bin from alice").await;
    alice.expect("clip.bin has been uploaded to bob").await;
    assert!(std::fs::read(&saved).unwrap() == data, "the file arrived whole");
}

/// For every ordered pair of NAT kinds, a private chat opens and carries text both ways:
/// directly where the NATs allow it (the asker connects, the accepting side connects back,
/// and between two port-preserving NATs the two dials meet in a TCP simultaneous open),
/// otherwise through the server's relay (still sealed end to end); and two clients behind
/// one NAT directly over their own network.
#[tokio::test]
async fn a_private_chat_crosses_every_pair_of_nats_directly_or_relayed() {
    let Some(mut lab) = Lab::new("chats") else { return };
    let server = lab_server(&lab).await;
    let kinds = [
        ("alice", Nat::Cone),
        ("bob", Nat::PortRestricted),
        ("carol", Nat::Symmetric),
        ("dave", Nat::Forwarded { tcp: FORWARDED_TCP, udp: FORWARDED_UDP }),
        ("eve", Nat::PortRestricted),
    ];
    let (mut clients, homes) = homes_for(&mut lab, &server, &kinds).await;

    // (asker, target, the way): every ordered pair of homes.
    let mut pairs = Vec::new();
    for asker in 0..kinds.len() {
        for target in (0..kinds.len()).filter(|t| *t != asker) {
            let direct = direct_between(&kinds[asker].1, &kinds[target].1);
            pairs.push((
                asker,
                target,
                if direct { "directly" } else { "through the server's relay" },
            ));
        }
    }
    let name = |i: usize| kinds[i].0;
    for (asker, target, way) in pairs {
        let (a, t) = (name(asker), name(target));
        // Shown with the test's output only if it fails.
        println!("{a} asks {t}, expecting a chat {way}");
        clients[asker].send(&format!("/startprivate {t}")).await;
        clients[target].expect(&format!("* {a} asks for a private chat")).await;
        clients[target].send(&format!("/accept {a}")).await;
        for (me, other) in [(asker, t), (target, a)] {
            let line = clients[me].expect(&format!("* private chat with {other} is open")).await;
            assert!(line.contains(way), "{a} asking {t}: {line}");
        }
        clients[asker].send(&format!("/private {t} hello {t}, from {a}")).await;
        clients[target].expect(&format!("] {a} (private): hello {t}, from {a}")).await;
        clients[target].send("/peers").await;
        let line = clients[target].expect(&format!("private chat with {a}: ")).await;
        let listed =
            if way == "directly" { ": direct to " } else { ": relayed through the server" };
        assert!(line.contains(listed), "{a} asking {t}, /peers: {line}");
        clients[target].send(&format!("/private {a} and back to {a}")).await;
        clients[asker].expect(&format!("] {t} (private): and back to {a}")).await;
        clients[asker].send(&format!("/stopprivate {t}")).await;
        clients[target].expect(&format!("* {a} ended the private chat")).await;
    }

    // eve moves in with bob (whose NAT does not hairpin): their own network is the way.
    let mut eve = clients.pop().unwrap();
    eve.send("/logout").await;
    eve.exit().await;
    let eve_host = lab.add_client(homes[1]);
    let mut eve = lab_client(&lab, &server, &eve_host, "eve", &[]).await;
    let bob = &mut clients[1];
    bob.send("/startprivate eve").await;
    eve.expect("* bob asks for a private chat").await;
    eve.send("/accept bob").await;
    let line = bob.expect("* private chat with eve is open").await;
    assert!(line.contains("directly"), "bob and eve at home: {line}");
    eve.expect("* private chat with bob is open").await;
    bob.send("/private eve dinner?").await;
    eve.expect("] bob (private): dinner?").await;
}

/// Whether socat is here (saying so when it is not).
fn has_socat() -> bool {
    let found = std::process::Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipping: needs socat");
    }
    found
}

/// A UDP echo on [`ECHO_PORT`] in `ns` that answers each datagram ("TAG") with the
/// address it came from ("TAG IP PORT"): what a STUN server tells.
fn echo(lab: &Lab, ns: &str) -> Proc {
    let mut cmd = lab.command(ns, "socat");
    cmd.arg(format!("UDP-RECVFROM:{ECHO_PORT},fork"));
    cmd.arg("SYSTEM:read tag; echo $tag $SOCAT_PEERADDR $SOCAT_PEERPORT");
    Proc::spawn(cmd)
}

/// A UDP socket on [`CLIENT_PORT`] in `host`: each line sent to it goes to `to` as a
/// datagram, and each datagram from anyone comes out as a line.
fn udp(lab: &Lab, host: &Host, to: SocketAddrV4) -> Proc {
    let mut cmd = lab.command(&host.ns, "socat");
    cmd.arg("-").arg(format!("UDP-DATAGRAM:{to},bind=:{CLIENT_PORT}"));
    Proc::spawn(cmd)
}

/// The client's public address, as the echo at the other end of `socket` tells it, and
/// every other line `socket` gave before that answer.
async fn ask(socket: &mut Proc) -> (SocketAddrV4, Vec<String>) {
    static ASKED: AtomicU32 = AtomicU32::new(0);
    let tag = format!("ask{}", ASKED.fetch_add(1, Ordering::Relaxed));
    let mut others = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    // Asks again every 100 ms: the echo may not be listening yet. next_line is
    // cancel-safe: a line cut short by the timeout is read whole by the next call.
    while Instant::now() < deadline {
        socket.send(&tag).await;
        while let Ok(line) = timeout(Duration::from_millis(100), socket.stdout.next_line()).await {
            let line = line.unwrap().expect("socat's output ended");
            let Some(addr) = line.strip_prefix(&tag).and_then(|rest| rest.strip_prefix(' ')) else {
                others.push(line);
                continue;
            };
            let (ip, port) = addr.split_once(' ').expect("the echo tells IP and port");
            return (SocketAddrV4::new(ip.parse().unwrap(), port.parse().unwrap()), others);
        }
    }
    panic!("no answer from the echo within {PATIENCE:?}");
}

/// Sends the datagram `text` to `to` from [`KNOCK_PORT`] in namespace `ns`.
async fn send_unsolicited(lab: &Lab, ns: &str, text: &str, to: SocketAddrV4) {
    let mut cmd = lab.command(ns, "socat");
    cmd.args(["-u", &format!("SYSTEM:echo {text}")])
        .arg(format!("UDP-DATAGRAM:{to},bind=:{KNOCK_PORT}"));
    let status = timeout(PATIENCE, cmd.kill_on_drop(true).status()).await.expect("socat ends");
    assert!(status.unwrap().success());
}

/// What `from` reads over TCP from `to`, which a listener in `client` answers (connecting
/// again until the listener is up).
async fn tcp_hello(lab: &Lab, client: &Host, from: &Host, to: SocketAddrV4) -> String {
    let mut listener = lab.command(&client.ns, "socat");
    listener
        .arg(format!("TCP-LISTEN:{},reuseaddr", to.port()))
        .arg("SYSTEM:echo hello from the client");
    let _listener = Proc::spawn(listener);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let mut cmd = lab.command(&from.ns, "socat");
        cmd.args(["-u", "-T", "1"]).arg(format!("TCP:{to}")).arg("-").kill_on_drop(true);
        let out = timeout(PATIENCE, cmd.output()).await.expect("socat ends").unwrap();
        if out.status.success() && !out.stdout.is_empty() {
            return String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // refused: not listening yet
    }
    panic!("no TCP answer from {to} within {PATIENCE:?}");
}
