//! Groups and history against the real server: every rule and every error of the groups
//! issue, offline delivery across a restart and history after a restart.

mod common;

use common::*;
use confab::protocol::{ErrorCode, Event, GroupInfo, Invitation, MemberChange};
use confab::server::Config;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The next event, which must be a group message; returns `(group, from, text, offline)`.
async fn next_group_message(events: &mut confab::client::Events) -> (String, String, String, bool) {
    match next_non_presence(events).await {
        Event::GroupMessage { group, from, text, offline, .. } => (group, from, text, offline),
        other => panic!("expected a group message, got {other:?}"),
    }
}

#[tokio::test]
async fn creating_a_group_invites_online_users_now_and_offline_users_at_login() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, mut bob_events) = server.login("bob").await;
    let invited = alice.create_group("devs", &["bob", "carol", "bob", "alice"]).await.unwrap();
    assert_eq!(invited, names(&["bob", "carol"]), "duplicates and the creator are dropped");
    match next_non_presence(&mut bob_events).await {
        Event::Invited(Invitation { group, by, .. }) => {
            assert_eq!((group, by), ("devs".into(), "alice".into()))
        }
        other => panic!("expected an invitation, got {other:?}"),
    }

    let (carol, mut carol_events) = server.login("carol").await;
    match next_non_presence(&mut carol_events).await {
        Event::Invited(inv) => assert_eq!((inv.group.as_str(), inv.by.as_str()), ("devs", "alice")),
        other => panic!("expected the pending invitation at login, got {other:?}"),
    }
    let (groups, invitations) = carol.groups().await.unwrap();
    assert!(groups.is_empty());
    assert_eq!(invitations.len(), 1);
    assert_eq!(invitations[0].group, "devs");

    let (groups, invitations) = alice.groups().await.unwrap();
    assert_eq!(
        groups,
        [GroupInfo {
            name: "devs".into(),
            members: names(&["alice"]),
            invited: names(&["bob", "carol"])
        }]
    );
    assert!(invitations.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn creategroup_refusals_create_nothing() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    for bad in ["dev-ops", "dev ops", "", "x".repeat(33).as_str(), "grüppe"] {
        assert_eq!(
            code(alice.create_group(bad, &["bob"]).await),
            ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }
    assert_eq!(code(alice.create_group("solo", &[]).await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.create_group("solo", &["alice"]).await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.create_group("devs", &["bob", "nobody"]).await), ErrorCode::UnknownUser);
    assert_eq!(
        code(alice.create_group("carol", &["bob"]).await),
        ErrorCode::NameTaken,
        "a user's name"
    );
    bob.block("alice").await.unwrap();
    assert_eq!(code(alice.create_group("devs", &["bob"]).await), ErrorCode::BlockedByRecipient);
    assert_eq!(alice.groups().await.unwrap(), (vec![], vec![]), "nothing was created");
    assert_eq!(code(bob.join_group("devs").await), ErrorCode::UnknownGroup);

    alice.create_group("devs", &["carol"]).await.unwrap();
    assert_eq!(code(bob.create_group("devs", &["carol"]).await), ErrorCode::NameTaken);
    server.stop().await;
}

#[tokio::test]
async fn joining_needs_an_invitation_and_tells_the_members() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    let (carol, _c) = server.login("carol").await;
    alice.create_group("devs", &["bob"]).await.unwrap();

    assert_eq!(code(bob.join_group("ops").await), ErrorCode::UnknownGroup);
    assert_eq!(code(carol.join_group("devs").await), ErrorCode::NotInvited);
    assert_eq!(code(alice.join_group("devs").await), ErrorCode::AlreadyJoined);
    assert_eq!(bob.join_group("devs").await.unwrap(), names(&["alice", "bob"]));
    assert_eq!(code(bob.join_group("devs").await), ErrorCode::AlreadyJoined);
    match next_non_presence(&mut alice_events).await {
        Event::GroupMember { group, user, change: MemberChange::Joined, .. } => {
            assert_eq!((group.as_str(), user.as_str()), ("devs", "bob"))
        }
        other => panic!("expected bob's join, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn only_joined_members_send_and_every_other_joined_member_receives() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let (carol, mut carol_events) = server.login("carol").await;
    let (dave, _d) = server.login("dave").await;
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    bob.join_group("devs").await.unwrap();

    assert_eq!(code(alice.group_msg("ops", "hi").await), ErrorCode::UnknownGroup);
    assert_eq!(code(dave.group_msg("devs", "hi").await), ErrorCode::NotGroupMember);
    assert_eq!(code(carol.group_msg("devs", "hi").await), ErrorCode::NotJoined);
    assert_eq!(code(alice.group_msg("devs", "   ").await), ErrorCode::InvalidArgument);

    let sent = bob.group_msg("devs", "standup at 10").await.unwrap();
    assert_eq!((sent.delivered, sent.stored, sent.skipped), (1, 0, 0));
    let Event::GroupMember { .. } = next_non_presence(&mut alice_events).await else { panic!() };
    assert_eq!(
        next_group_message(&mut alice_events).await,
        ("devs".into(), "bob".into(), "standup at 10".into(), false)
    );
    // Neither the sender nor the invited-but-not-joined carol got it.
    let Event::Invited(_) = next_non_presence(&mut carol_events).await else {
        panic!("invitation")
    };
    assert_quiet(&mut carol_events, &dave, "carol").await;
    match next_non_presence(&mut bob_events).await {
        Event::Invited(_) => {}
        other => panic!("bob should only have his invitation, got {other:?}"),
    }
    assert_quiet(&mut bob_events, &dave, "bob").await;
    server.stop().await;
}

#[tokio::test]
async fn a_member_does_not_receive_group_messages_from_someone_they_block() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, mut bob_events) = server.login("bob").await;
    let (carol, mut carol_events) = server.login("carol").await;
    let (dave, _d) = server.login("dave").await;
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    carol.join_group("devs").await.unwrap();
    let _ = next_non_presence(&mut bob_events).await; // invitation
    let _ = next_non_presence(&mut bob_events).await; // carol joined
    let _ = next_non_presence(&mut carol_events).await; // invitation
    carol.block("alice").await.unwrap();

    let sent = alice.group_msg("devs", "hello team").await.unwrap();
    assert_eq!((sent.delivered, sent.stored, sent.skipped), (1, 0, 1));
    assert_eq!(next_group_message(&mut bob_events).await.2, "hello team");
    assert_quiet(&mut carol_events, &dave, "carol").await;
    server.stop().await;
}

#[tokio::test]
async fn offline_members_get_group_messages_in_order_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let server = TestServer::on_disk(&db).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    alice.create_group("devs", &["bob"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    bob.logout().await.unwrap();

    assert_eq!(alice.group_msg("devs", "one").await.unwrap().stored, 1);
    alice.msg("bob", "two (direct)").await.unwrap();
    assert_eq!(alice.group_msg("devs", "three").await.unwrap().stored, 1);
    server.stop().await;

    let server = TestServer::reopen(&db).await;
    let (bob, mut bob_events) = server.connect().await;
    assert_eq!(bob.login("bob", &password_of("bob")).await.unwrap().offline_messages, 3);
    assert_eq!(
        next_group_message(&mut bob_events).await,
        ("devs".into(), "alice".into(), "one".into(), true)
    );
    match next_non_presence(&mut bob_events).await {
        Event::Message { text, offline: true, .. } => assert_eq!(text, "two (direct)"),
        other => panic!("expected the direct message, got {other:?}"),
    }
    assert_eq!(
        next_group_message(&mut bob_events).await,
        ("devs".into(), "alice".into(), "three".into(), true)
    );
    // Membership survived the restart too.
    assert_eq!(bob.groups().await.unwrap().0[0].members, names(&["alice", "bob"]));
    server.stop().await;
}

#[tokio::test]
async fn leaving_tells_the_members_and_the_last_one_out_dissolves_the_group() {
    let server = TestServer::start(Config::default()).await;
    let (alice, mut alice_events) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    let (carol, _c) = server.login("carol").await;
    let (dave, _d) = server.login("dave").await;
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    let _ = next_non_presence(&mut alice_events).await; // bob joined

    assert_eq!(code(dave.leave_group("devs").await), ErrorCode::NotGroupMember);
    assert_eq!(code(dave.leave_group("ops").await), ErrorCode::UnknownGroup);
    carol.leave_group("devs").await.unwrap(); // turns the invitation down
    assert_eq!(carol.groups().await.unwrap(), (vec![], vec![]));
    bob.leave_group("devs").await.unwrap();
    match next_non_presence(&mut alice_events).await {
        Event::GroupMember { user, change: MemberChange::Left, .. } => assert_eq!(user, "bob"),
        other => panic!("expected bob's leaving, got {other:?}"),
    }
    assert_eq!(code(bob.group_msg("devs", "still here?").await), ErrorCode::NotGroupMember);
    assert_eq!(alice.group_msg("devs", "alone").await.unwrap().delivered, 0);
    assert_eq!(alice.groups().await.unwrap().0[0].members, names(&["alice"]));

    alice.leave_group("devs").await.unwrap();
    assert_eq!(code(alice.group_msg("devs", "hello?").await), ErrorCode::UnknownGroup);
    bob.create_group("devs", &["alice"]).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn history_shows_your_own_conversations_oldest_first() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    let (carol, _c) = server.login("carol").await;
    for i in 0..12 {
        alice.msg("bob", &format!("a{i}")).await.unwrap();
        bob.msg("alice", &format!("b{i}")).await.unwrap();
    }
    carol.msg("alice", "from carol").await.unwrap();
    alice.msg("dave", "to offline dave").await.unwrap();

    let history = bob.history("alice", None).await.unwrap();
    assert_eq!(history.len(), 20, "default is 20");
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts[0], "a2");
    assert_eq!(texts[19], "b11");
    assert!(history.windows(2).all(|w| w[0].sent_at <= w[1].sent_at));
    assert_eq!(history[19].from, "bob");

    let last = alice.history("bob", Some(3)).await.unwrap();
    assert_eq!(last.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["b10", "a11", "b11"]);
    let carols = carol.history("alice", None).await.unwrap();
    assert_eq!(carols.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["from carol"]);
    assert_eq!(alice.history("dave", None).await.unwrap()[0].text, "to offline dave");

    assert_eq!(code(alice.history("alice", None).await), ErrorCode::SelfTarget);
    assert_eq!(code(alice.history("nobody", None).await), ErrorCode::UnknownUser);
    assert_eq!(code(alice.history("bob", Some(0)).await), ErrorCode::InvalidArgument);
    assert_eq!(code(alice.history("bob", Some(100_000)).await), ErrorCode::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn group_history_is_for_joined_members_and_includes_what_came_before_they_joined() {
    let server = TestServer::start(Config::default()).await;
    let (alice, _a) = server.login("alice").await;
    let (bob, _b) = server.login("bob").await;
    let (carol, _c) = server.login("carol").await;
    let (dave, _d) = server.login("dave").await;
    alice.create_group("devs", &["bob", "carol"]).await.unwrap();
    bob.join_group("devs").await.unwrap();
    alice.group_msg("devs", "before carol").await.unwrap();
    assert_eq!(code(carol.history("devs", None).await), ErrorCode::NotJoined);
    assert_eq!(code(dave.history("devs", None).await), ErrorCode::NotGroupMember);
    carol.join_group("devs").await.unwrap();
    bob.group_msg("devs", "after carol").await.unwrap();

    let texts = |h: Vec<confab::protocol::HistoryMessage>| -> Vec<String> {
        h.into_iter().map(|m| format!("{}: {}", m.from, m.text)).collect()
    };
    assert_eq!(
        texts(alice.history("devs", None).await.unwrap()),
        ["alice: before carol", "bob: after carol"]
    );
    // The group's history is the team's: carol sees what came before she joined too.
    assert_eq!(
        texts(carol.history("devs", None).await.unwrap()),
        ["alice: before carol", "bob: after carol"]
    );
    // Leaving ends access.
    carol.leave_group("devs").await.unwrap();
    assert_eq!(code(carol.history("devs", None).await), ErrorCode::NotGroupMember);
    assert_eq!(
        code(dave.history("ops", None).await),
        ErrorCode::UnknownUser,
        "neither user nor group"
    );
    server.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let server = TestServer::on_disk(&db).await;
    let (alice, _a) = server.login("alice").await;
    let (_bob, _b) = server.login("bob").await;
    alice.msg("bob", "remember me").await.unwrap();
    alice.create_group("devs", &["bob"]).await.unwrap();
    alice.group_msg("devs", "group memory").await.unwrap();
    server.stop().await;

    let server = TestServer::reopen(&db).await;
    let (bob, _b) = server.login("bob").await;
    assert_eq!(bob.history("alice", None).await.unwrap()[0].text, "remember me");
    let (alice, _a) = server.login("alice").await;
    assert_eq!(alice.history("devs", Some(1)).await.unwrap()[0].text, "group memory");
    server.stop().await;
}
