//! End to end with the built binaries: `confab-server` and `confab --plain` clients.

mod common;

use std::time::Duration;

use common::binaries::*;
use nix::sys::signal::Signal;

#[tokio::test]
async fn two_plain_clients_chat_through_the_server_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(&dir.path().join("confab.db")).await;
    let mut bob = logged_in_with(&addr, "bob", "builder", &["--no-reconnect"]).await;
    let mut alice = logged_in(&addr, "alice", "wonderland").await;
    bob.expect("* alice logged in").await;

    alice.send("/msg bob hello from alice").await;
    alice.expect("sent to bob").await;
    bob.expect("alice: hello from alice").await;

    alice.send("/frobnicate").await;
    alice.expect("error: unknown command '/frobnicate'").await;
    alice.send("whoelse").await;
    alice.expect("bob (online since").await;
    alice.send("bye").await;
    alice.expect("logged out; bye").await;
    assert_eq!(alice.exit().await.code(), Some(0));
    bob.expect("* alice logged out").await;

    // SIGTERM: bob is told, the server exits 0, and bob, who does not reconnect, exits with
    // "ended by server".
    server.signal(Signal::SIGTERM);
    bob.expect("the server is shutting down").await;
    assert_eq!(server.exit().await.code(), Some(0));
    assert_eq!(bob.exit().await.code(), Some(7));
}

#[tokio::test]
async fn the_server_binary_also_serves_on_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let (mut server, addr) = start_server_with(&db, &["--threads", "3"]).await;
    let mut bob = logged_in(&addr, "bob", "builder").await;
    let mut alice = logged_in(&addr, "alice", "wonderland").await;
    alice.send("/msg bob over three threads").await;
    alice.expect("sent to bob").await;
    bob.expect("alice: over three threads").await;
    server.signal(Signal::SIGTERM);
    bob.expect("the server is shutting down").await;
    assert_eq!(server.exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_refused_login_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(&dir.path().join("confab.db")).await;
    let mut wrong = client(&addr, "carol", "not-her-password");
    assert_eq!(wrong.exit().await.code(), Some(3));
    let _eve = logged_in(&addr, "eve", "dropper").await; // stays logged in
    let mut twice = client(&addr, "eve", "dropper");
    assert_eq!(twice.exit().await.code(), Some(5), "already logged in");
    assert_eq!(client(&addr, "carol", "guess").exit().await.code(), Some(3));
    // The third failure locks the name, and then even the right password is refused.
    assert_eq!(client(&addr, "carol", "guess").exit().await.code(), Some(4));
    assert_eq!(client(&addr, "carol", "singer").exit().await.code(), Some(4));
    let mut unreachable = client("127.0.0.1:1", "carol", "singer");
    assert_eq!(unreachable.exit().await.code(), Some(6));
}

#[tokio::test]
async fn an_acknowledged_message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let (mut server, addr) = start_server(&db).await;
    let mut alice = logged_in_with(&addr, "alice", "wonderland", &["--no-reconnect"]).await;
    alice.send("/msg dave are you there").await;
    alice.expect("dave is offline").await;
    server.signal(Signal::SIGKILL);
    server.exit().await;
    alice.expect("error: the connection to the server was lost").await;
    assert_eq!(alice.exit().await.code(), Some(6));

    let (_server, addr) = start_server(&db).await;
    let mut dave = client(&addr, "dave", "grohl");
    dave.expect("1 message arrived while you were away").await;
    dave.expect("alice (while you were away): are you there").await;
}

#[tokio::test]
async fn a_private_chat_between_plain_clients_goes_direct_and_outlives_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(&dir.path().join("confab.db")).await;
    let mut bob = logged_in_with(&addr, "bob", "builder", &["--no-reconnect"]).await;
    let mut alice = logged_in_with(&addr, "alice", "wonderland", &["--no-reconnect"]).await;
    bob.expect("* alice logged in").await;

    alice.send("/help all").await;
    alice.expect("/startprivate USER").await;
    alice.send("/private bob too early").await;
    alice.expect("error: no private chat with bob is open; start one with /startprivate bob").await;

    alice.send("startprivate bob").await;
    alice.expect("asked bob for a private chat; waiting for their answer").await;
    bob.expect("* alice asks for a private chat: /accept alice or /decline alice").await;
    bob.send("/accept alice").await;
    bob.expect("accepted alice's private chat request").await;
    alice.expect("* bob accepted your private chat request").await;
    alice.expect("* private chat with bob is open").await;
    bob.expect("* private chat with alice is open").await;

    alice.send("private bob hello over the direct line").await;
    alice.expect("sent privately to bob").await;
    bob.expect("] alice (private): hello over the direct line").await;

    // The server goes; the private chat stays, and both clients say so.
    server.signal(Signal::SIGTERM);
    assert_eq!(server.exit().await.code(), Some(0));
    for who in [&mut alice, &mut bob] {
        who.expect("the server is shutting down").await;
        who.expect("the server is gone; your private chats still work").await;
    }
    bob.send("/private alice still here").await;
    alice.expect("] bob (private): still here").await;
    bob.send("/list").await;
    bob.expect("error: the server is gone; only /private, /stopprivate, file transfers").await;

    // alice quits: bob is told, and with no chat and no server left he exits too.
    alice.send("/logout").await;
    alice.expect("private chats and transfers ended; bye").await;
    assert_eq!(alice.exit().await.code(), Some(7));
    bob.expect("* alice logged out; the private chat has ended").await;
    bob.expect("no private chat or transfer is left and the server is gone").await;
    assert_eq!(bob.exit().await.code(), Some(7));
}

#[tokio::test]
async fn plain_clients_decline_and_stop_private_chats() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(&dir.path().join("confab.db")).await;
    let mut carol = logged_in(&addr, "carol", "singer").await;
    let mut dave = logged_in(&addr, "dave", "grohl").await;

    dave.send("/startprivate carol").await;
    carol.expect("* dave asks for a private chat").await;
    carol.send("/decline dave").await;
    carol.expect("declined dave's private chat request").await;
    dave.expect("* carol declined your private chat request").await;
    carol.send("/accept dave").await;
    carol.expect("error: there is no private chat request from dave").await;

    dave.send("/startprivate carol").await;
    carol.expect("* dave asks for a private chat").await;
    carol.send("/accept dave").await;
    dave.expect("* private chat with carol is open").await;
    carol.expect("* private chat with dave is open").await;
    carol.send("/stopprivate dave").await;
    carol.expect("private chat with dave ended").await;
    dave.expect("* carol ended the private chat").await;
    dave.send("/private carol are you there").await;
    dave.expect("error: no private chat with carol is open").await;

    // With the server up, the private chats do not keep anyone from logging out normally.
    dave.send("/logout").await;
    dave.expect("logged out; bye").await;
    assert_eq!(dave.exit().await.code(), Some(0));
}

/// `asker` (in this process) asks the `confab` binary of alice for a private chat, which
/// she accepts; returns once both sides have it open.
async fn accepted_by_binary(asker: &mut common::Direct, alice: &mut Proc) {
    confab::client::session::request_private(&asker.client, &asker.chats, "alice").await.unwrap();
    alice.expect(&format!("* {} asks for a private chat", asker.name)).await;
    alice.send(&format!("/accept {}", asker.name)).await;
    let intro = match common::next_non_presence(&mut asker.events).await {
        confab::protocol::Event::PrivateAccepted(intro) => intro,
        other => panic!("expected the introduction, got {other:?}"),
    };
    asker.chats.connect(intro);
    common::assert_opened(common::next_private(&mut asker.private).await, "alice");
    alice.expect(&format!("* private chat with {} is open", asker.name)).await;
}

#[tokio::test]
async fn chatting_privately_counts_as_activity_for_the_idle_timeout() {
    let config = confab::server::Config {
        idle_timeout: Duration::from_secs(2),
        ..confab::server::Config::default()
    };
    let server = common::TestServer::start(config).await;
    let mut alice =
        logged_in(&server.addr.to_string(), "alice", &common::password_of("alice")).await;
    let mut bob = server.login_direct("bob").await;
    accepted_by_binary(&mut bob, &mut alice).await;

    // Private messages only, for twice the idle period.
    for i in 0..8 {
        alice.send(&format!("/private bob note {i}")).await;
        alice.expect("sent privately to bob").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Still logged in: the server answers (bob, who did nothing, has timed out meanwhile).
    alice.send("/whoelsesince 60").await;
    let bob_seen = alice.expect("bob (").await;
    assert!(bob_seen.starts_with("bob (offline since "), "{bob_seen}");
    alice.send("/logout").await;
    alice.expect("logged out; bye").await;
    assert_eq!(alice.exit().await.code(), Some(0), "alice was never logged out for idleness");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_timeout_ends_the_private_chats_of_the_plain_client_and_tells_the_peer() {
    use confab::p2p::{CloseReason, PrivateEvent};
    use confab::protocol::ByeReason;

    // Long enough for alice to answer before she times out, even on a busy machine.
    let config = confab::server::Config {
        idle_timeout: Duration::from_secs(3),
        ..confab::server::Config::default()
    };
    let server = common::TestServer::start(config).await;
    let mut alice =
        logged_in(&server.addr.to_string(), "alice", &common::password_of("alice")).await;
    // bob runs in this process: his own session may time out too, but only the binary ends
    // its chats on that, so what bob hears is alice's client saying goodbye.
    let mut bob = server.login_direct("bob").await;
    accepted_by_binary(&mut bob, &mut alice).await;
    bob.chats.send("alice", "still there?").await.unwrap();
    alice.expect("bob (private): still there?").await;

    // alice types nothing more: the server logs her out, and her client ends the chat.
    alice.expect("you were logged out after being idle too long").await;
    assert_eq!(
        common::next_private(&mut bob.private).await,
        PrivateEvent::Closed {
            peer: "alice".into(),
            reason: CloseReason::Peer(ByeReason::TimedOut)
        }
    );
    assert_eq!(alice.exit().await.code(), Some(7));
    server.stop().await;
}

#[tokio::test]
async fn the_plain_client_shows_invisible_characters_as_escapes() {
    let server = common::TestServer::start(confab::server::Config::default()).await;
    let mut alice =
        logged_in(&server.addr.to_string(), "alice", &common::password_of("alice")).await;
    let mut bob = server.login_direct("bob").await;
    // Relayed by the server, and over the direct link, which the server never checked.
    bob.client.msg("alice", "pay\u{200B}pal \u{202E}gpj.exe").await.unwrap();
    alice.expect("bob: pay<U+200B>pal <U+202E>gpj.exe").await;
    accepted_by_binary(&mut bob, &mut alice).await;
    bob.chats.send("alice", "\u{2066}hidden\u{2069}").await.unwrap();
    alice.expect("bob (private): <U+2066>hidden<U+2069>").await;
    alice.send("/logout").await;
    alice.expect("logged out; bye").await;
    server.stop().await;
}

#[tokio::test]
async fn a_file_goes_straight_from_one_plain_client_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(&dir.path().join("confab.db")).await;
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let download_dir = downloads.to_str().unwrap();
    let mut bob = logged_in_with(&addr, "bob", "builder", &["--download-dir", download_dir]).await;
    let carol_args = ["--download-dir", download_dir, "--auto-accept"];
    let mut carol = logged_in_with(&addr, "carol", "singer", &carol_args).await;
    let mut alice = logged_in(&addr, "alice", "wonderland").await;
    let clip = dir.path().join("clip.mp4");
    let data: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&clip, &data).unwrap();

    // Bob is asked, and accepts.
    alice.send(&format!("/p2pvideo bob {}", clip.display())).await;
    alice.expect("offering clip.mp4 (2.9 MiB) to bob").await;
    bob.expect("alice is sending you clip.mp4").await;
    bob.expect("alice offers clip.mp4 (2.9 MiB): /acceptfile alice or /declinefile alice").await;
    bob.send("/acceptfile alice").await;
    alice.expect("clip.mp4 has been uploaded to bob").await;
    bob.expect("received clip.mp4 from alice (3000000 bytes, sha256 ok)").await;
    assert!(std::fs::read(downloads.join("alice_clip.mp4")).unwrap() == data);

    // Carol accepts by herself; the name is taken, so hers gets a suffix.
    alice.send(&format!("/sendfile carol {}", clip.display())).await;
    carol.expect("alice offers clip.mp4 (2.9 MiB); accepting it (--auto-accept)").await;
    alice.expect("clip.mp4 has been uploaded to carol").await;
    carol.expect("received clip.mp4 from alice (3000000 bytes, sha256 ok)").await;
    assert!(std::fs::read(downloads.join("alice_clip-1.mp4")).unwrap() == data);

    // Wrong arguments and missing things are clear errors.
    alice.send("/p2pvideo bob").await;
    alice.expect("error: usage: /p2pvideo USER FILE").await;
    alice.send("/p2pvideo bob /no/such/file").await;
    alice.expect("error: /no/such/file:").await;
    bob.send("/acceptfile alice").await;
    bob.expect("error: alice has not offered you a file").await;
    alice.send(&format!("/p2pvideo bob {}", clip.display())).await;
    bob.expect("alice offers clip.mp4").await;
    bob.send("/declinefile alice").await;
    bob.expect("declined clip.mp4 from alice").await;
    alice.expect("sending clip.mp4 to bob failed: declined").await;

    for p in [&mut alice, &mut bob, &mut carol] {
        p.send("/logout").await;
        assert_eq!(p.exit().await.code(), Some(0));
    }
    server.signal(Signal::SIGTERM);
    server.exit().await;
}

/// Opens a private chat from `asker` to `target` between two plain clients.
async fn chat_between(asker: &mut Proc, target: &mut Proc, asker_name: &str, target_name: &str) {
    asker.send(&format!("/startprivate {target_name}")).await;
    target.expect(&format!("* {asker_name} asks for a private chat")).await;
    target.send(&format!("/accept {asker_name}")).await;
}

#[tokio::test]
async fn a_verified_key_that_changes_is_caught_by_chats_and_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(&dir.path().join("confab.db")).await;
    let (alice_dir, bob_dir) = (dir.path().join("alice"), dir.path().join("bob"));
    let bob_args =
        ["--data-dir", bob_dir.to_str().unwrap(), "--download-dir", bob_dir.to_str().unwrap()];
    let alice_args = ["--data-dir", alice_dir.to_str().unwrap()];
    let mut bob = logged_in_with(&addr, "bob", "builder", &bob_args).await;
    let mut alice = logged_in_with(&addr, "alice", "wonderland", &alice_args).await;

    // Both see the same safety code; alice confirms it, which pins bob's key on disk.
    chat_between(&mut alice, &mut bob, "alice", "bob").await;
    alice.expect("* private chat with bob is open, encrypted end to end").await;
    bob.expect("* private chat with alice is open, encrypted end to end").await;
    alice.send("/verify bob").await;
    let theirs = alice.expect("safety code of your private chat with bob: ").await;
    bob.send("/verify alice").await;
    let ours = bob.expect("safety code of your private chat with alice: ").await;
    let code = |line: &str| line.rsplit(": ").next().unwrap().trim().to_owned();
    assert_eq!(code(&theirs), code(&ours), "both ends derive the same code");
    alice.send("/verify bob confirm").await;
    alice.expect("bob's key is verified").await;
    assert!(std::fs::read_to_string(alice_dir.join("verified_peers")).unwrap().starts_with("bob "));

    // bob comes back with another key (as an impostor the server vouched for would).
    bob.send("/logout").await;
    assert_eq!(bob.exit().await.code(), Some(0));
    alice.expect("* bob logged out").await;
    std::fs::remove_file(bob_dir.join("identity.key")).unwrap();
    let mut bob = logged_in_with(&addr, "bob", "builder", &bob_args).await;
    alice.expect("* bob logged in").await;

    // A file is neither sent to nor taken from the new key.
    let clip = dir.path().join("clip.mp4");
    std::fs::write(&clip, b"secret plans").unwrap();
    alice.send(&format!("/p2pvideo bob {}", clip.display())).await;
    alice.expect("the key the server gave for bob is not the one you verified").await;
    bob.send(&format!("/p2pvideo alice {}", clip.display())).await;
    bob.expect("offering clip.mp4").await;
    alice.expect("bob's offer of clip.mp4 came with a key that is not the one you verified").await;
    // The refusal is an answer: bob hears it at once instead of waiting for one.
    bob.expect("sending clip.mp4 to alice failed: declined").await;
    assert!(!bob_dir.join("alice_clip.mp4").exists());

    // A private chat opens (it is how the two can compare codes again), with a loud warning.
    chat_between(&mut alice, &mut bob, "alice", "bob").await;
    alice.expect("* WARNING: bob's key is NOT the one you verified").await;

    for p in [&mut alice, &mut bob] {
        p.send("/logout").await;
        p.exit().await;
    }
    server.signal(Signal::SIGTERM);
    server.exit().await;
}
