//! Groups: who is invited to and who has joined which group, and routing within a group.
//!
//! The table lives inside the hub's state so that a membership check and the routing that
//! depends on it happen under one lock. Every change queues its store write under that lock
//! too (the hub holds the store handle), so writes reach the store in the order the hub
//! applied them; the caller awaits the returned [`Stored`].
//!
//! A group exists while it has at least one joined member; when the last one leaves, the
//! group and its pending invitations go.
//!
//! Each group hands out its own timestamps under the lock, never going backwards and never
//! giving a join the time of an earlier message. A member gets the group's messages logged
//! after their join (each membership keeps the last log id before it), while `/history`
//! shows them the group's whole history, as a team channel does.

use std::collections::{BTreeMap, HashMap};

use super::{check_target, encode_event, persist, Blocks, Hub, HubError, State, Stored};
use crate::protocol::{Event, GroupInfo, Invitation, MemberChange, Timestamp};
use crate::store::MemberRecord;

/// Every group, by name.
#[derive(Default)]
pub(super) struct Groups(HashMap<String, Group>);

#[derive(Default)]
struct Group {
    members: BTreeMap<String, Member>,
    /// The latest timestamp given to a message or a join in this group.
    clock: Timestamp,
}

/// One user's place in a group.
enum Member {
    Invited { by: String, at: Timestamp },
    Joined { since: Timestamp, joined_id: u64 },
}

impl Groups {
    /// The table as the store recorded it.
    pub(super) fn from_records(records: impl IntoIterator<Item = MemberRecord>) -> Self {
        let mut groups = Groups::default();
        for r in records {
            let member = match (r.joined_at, r.invited_by) {
                (Some(since), _) => Member::Joined { since, joined_id: r.joined_id.unwrap_or(0) },
                (None, Some(by)) => Member::Invited { by, at: r.invited_at },
                (None, None) => continue, // not written by this server
            };
            let group = groups.0.entry(r.group).or_default();
            group.clock = group.clock.max(r.joined_at.unwrap_or(r.invited_at));
            group.members.insert(r.user, member);
        }
        groups
    }

    /// Whether a group named `name` exists.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// `user`'s pending invitations, oldest first.
    pub(super) fn invitations(&self, user: &str) -> Vec<Invitation> {
        let mut list: Vec<Invitation> = self
            .0
            .iter()
            .filter_map(|(name, group)| match group.members.get(user)? {
                Member::Invited { by, at } => {
                    Some(Invitation { group: name.clone(), by: by.clone(), at: *at })
                }
                Member::Joined { .. } => None,
            })
            .collect();
        list.sort_by(|a, b| (a.at, &a.group).cmp(&(b.at, &b.group)));
        list
    }

    /// `user`'s place in `group`, or the error for a group that does not exist or that
    /// `user` is not in.
    fn member(&self, group: &str, user: &str) -> Result<&Member, HubError> {
        let found = self.0.get(group).ok_or_else(|| HubError::UnknownGroup(group.to_owned()))?;
        found.members.get(user).ok_or_else(|| HubError::NotGroupMember(group.to_owned()))
    }

    /// When `user` joined `group`; an error unless they have.
    fn joined_since(&self, group: &str, user: &str) -> Result<Timestamp, HubError> {
        match self.member(group, user)? {
            Member::Joined { since, .. } => Ok(*since),
            Member::Invited { .. } => Err(HubError::NotJoined(group.to_owned())),
        }
    }

    /// For a message from `from` to `group` at `now`: its timestamp and the members who get
    /// it (joined, not `from`, not blocking `from`). An error unless `from` has joined.
    pub(super) fn send_to(
        &mut self,
        blocks: &Blocks,
        group: &str,
        from: &str,
        now: Timestamp,
    ) -> Result<(Timestamp, Vec<String>), HubError> {
        self.joined_since(group, from)?;
        let found = self.0.get_mut(group).ok_or_else(|| HubError::UnknownGroup(group.into()))?;
        let sent_at = found.tick(now, false);
        let to = found.joined().filter(|m| *m != from && !blocks.has(m, from)).cloned().collect();
        Ok((sent_at, to))
    }

    /// The joined members of `group` with the last log id before each joined.
    pub(super) fn joined_with_ids<'a>(
        &'a self,
        group: &str,
    ) -> impl Iterator<Item = (&'a String, u64)> + 'a {
        self.0.get(group).into_iter().flat_map(|g| {
            g.members.iter().filter_map(|(name, m)| match m {
                Member::Joined { joined_id, .. } => Some((name, *joined_id)),
                Member::Invited { .. } => None,
            })
        })
    }

    /// The groups `user` has joined, with the last log id before each join.
    pub(super) fn memberships(&self, user: &str) -> Vec<(String, u64)> {
        self.0
            .iter()
            .filter_map(|(name, g)| match g.members.get(user)? {
                Member::Joined { joined_id, .. } => Some((name.clone(), *joined_id)),
                Member::Invited { .. } => None,
            })
            .collect()
    }
}

impl Group {
    /// A timestamp for a message (`after_last` false) or a join (true): `now`, unless the
    /// clock is ahead; a join comes strictly after the last message.
    fn tick(&mut self, now: Timestamp, after_last: bool) -> Timestamp {
        self.clock = now.max(self.clock + Timestamp::from(after_last));
        self.clock
    }

    fn joined(&self) -> impl Iterator<Item = &String> {
        self.members.iter().filter(|(_, m)| matches!(m, Member::Joined { .. })).map(|(n, _)| n)
    }

    fn invited(&self) -> impl Iterator<Item = &String> {
        self.members.iter().filter(|(_, m)| matches!(m, Member::Invited { .. })).map(|(n, _)| n)
    }
}

impl State {
    /// Tells the online joined members of `group` other than `user`, and with no block
    /// between them and `user`, that `user` joined or left.
    fn announce_member(&mut self, group: &str, user: &str, change: MemberChange, at: Timestamp) {
        let Some(members) = self.groups.0.get(group) else { return };
        let event =
            Event::GroupMember { group: group.to_owned(), user: user.to_owned(), change, at };
        let Some(frame) = encode_event(event) else { return };
        for name in members.joined() {
            if name == user || self.blocks.between(name, user) {
                continue;
            }
            if let Some(peer) = self.online.get_mut(name) {
                peer.push_ephemeral(frame.clone());
            }
        }
    }
}

impl Hub {
    /// Whether a group named `name` exists.
    pub fn is_group(&self, name: &str) -> bool {
        self.state().groups.contains(name)
    }

    /// Creates group `name` with `creator` joined and invites `invite` (other users, no
    /// duplicates), telling those online, and queues the store write.
    ///
    /// Refused when the name belongs to a group or a user, or when an invitee does not exist
    /// or blocks `creator`; nothing changes then.
    pub fn create_group(
        &self,
        creator: &str,
        name: &str,
        invite: &[String],
        at: Timestamp,
    ) -> Result<Stored, HubError> {
        let mut state = self.state();
        if state.groups.contains(name) || state.users.contains(name) {
            return Err(HubError::NameTaken(name.to_owned()));
        }
        for user in invite {
            check_target(&state, creator, user)?;
        }
        let mut group = Group { clock: at, ..Group::default() };
        let joined_id = state.log.last_id();
        group.members.insert(creator.to_owned(), Member::Joined { since: at, joined_id });
        let invitation = Invitation { group: name.to_owned(), by: creator.to_owned(), at };
        let frame = encode_event(Event::Invited(invitation));
        for user in invite {
            group.members.insert(user.clone(), Member::Invited { by: creator.to_owned(), at });
            if let (Some(peer), Some(frame)) = (state.online.get_mut(user), &frame) {
                peer.push(frame.clone());
            }
        }
        state.groups.0.insert(name.to_owned(), group);
        let (name, creator, invite) = (name.to_owned(), creator.to_owned(), invite.to_vec());
        Ok(persist(&self.store, "creating a group", move |s| {
            s.create_group(&name, &creator, &invite, at)
        }))
    }

    /// Makes the invited `user` a member of `group`, tells the other members and queues the
    /// store write; returns the joined members (sorted, `user` included). The join is timed
    /// `now` or just after the group's last message, and the member gets the group's
    /// messages logged after it.
    pub fn join_group(
        &self,
        user: &str,
        group: &str,
        now: Timestamp,
    ) -> Result<(Vec<String>, Stored), HubError> {
        let mut state = self.state();
        let state = &mut *state;
        let Some(found) = state.groups.0.get_mut(group) else {
            return Err(HubError::UnknownGroup(group.to_owned()));
        };
        match found.members.get(user) {
            None => return Err(HubError::NotInvited(group.to_owned())),
            Some(Member::Joined { .. }) => return Err(HubError::AlreadyJoined(group.to_owned())),
            Some(Member::Invited { .. }) => {}
        }
        let at = found.tick(now, true);
        let joined_id = state.log.last_id();
        found.members.insert(user.to_owned(), Member::Joined { since: at, joined_id });
        let members = found.joined().cloned().collect();
        state.announce_member(group, user, MemberChange::Joined, at);
        let (group, user) = (group.to_owned(), user.to_owned());
        let stored = persist(&self.store, "joining a group", move |s| {
            s.join_group(&group, &user, at, joined_id)
        });
        Ok((members, stored))
    }

    /// Takes `user` out of `group`, whether joined or only invited, telling the members if
    /// `user` had joined, and queues the store write; the group dissolves when no joined
    /// member is left.
    pub fn leave_group(&self, user: &str, group: &str, at: Timestamp) -> Result<Stored, HubError> {
        let mut state = self.state();
        let was_joined = matches!(state.groups.member(group, user)?, Member::Joined { .. });
        if was_joined {
            state.announce_member(group, user, MemberChange::Left, at);
        }
        let dissolve = match state.groups.0.get_mut(group) {
            Some(found) => {
                found.members.remove(user);
                found.joined().next().is_none()
            }
            None => false,
        };
        if dissolve {
            state.groups.0.remove(group);
        }
        let (group, user) = (group.to_owned(), user.to_owned());
        Ok(persist(&self.store, "leaving a group", move |s| s.leave_group(&group, &user, dissolve)))
    }

    /// When `user` joined `group`; an error unless they are a member now.
    pub fn joined_since(&self, group: &str, user: &str) -> Result<Timestamp, HubError> {
        self.state().groups.joined_since(group, user)
    }

    /// The groups `user` has joined, by name, and their pending invitations, oldest first.
    pub fn groups_of(&self, user: &str) -> (Vec<GroupInfo>, Vec<Invitation>) {
        let state = self.state();
        let mut groups: Vec<GroupInfo> = state
            .groups
            .0
            .iter()
            .filter(|(_, g)| matches!(g.members.get(user), Some(Member::Joined { .. })))
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                members: g.joined().cloned().collect(),
                invited: g.invited().cloned().collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        (groups, state.groups.invitations(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hub::log::Sent;
    use crate::server::hub::tests::{hub_with, join};
    use crate::store::To;

    async fn send(hub: &Hub, from: &str, now: Timestamp) -> Result<Sent, HubError> {
        hub.send(from, To::Group("devs".into()), "hi".into(), None, now)?.outcome().await
    }

    #[tokio::test]
    async fn a_join_is_timed_after_every_earlier_message_and_messages_never_go_back() {
        let hub = hub_with(0);
        hub.create_group("alice", "devs", &["bob".into(), "carol".into()], 100)
            .unwrap()
            .await
            .unwrap();
        let at = |hub: &Hub| hub.state().groups.0["devs"].clock;
        send(&hub, "alice", 100).await.unwrap();
        assert_eq!(at(&hub), 100);
        hub.join_group("bob", "devs", 100).unwrap().1.await.unwrap();
        assert_eq!(hub.joined_since("devs", "bob").unwrap(), 101, "after the same millisecond");
        send(&hub, "alice", 99).await.unwrap();
        assert_eq!(at(&hub), 101, "the wall clock went back");
    }

    #[tokio::test]
    async fn membership_rules_and_their_errors() {
        let hub = hub_with(0);
        let invite = ["bob".to_string()];
        hub.create_group("alice", "devs", &invite, 1).unwrap().await.unwrap();
        let code = |r: Result<Stored, HubError>| r.err().expect("an error");
        assert_eq!(
            code(hub.create_group("carol", "devs", &invite, 2)),
            HubError::NameTaken("devs".into())
        );
        assert_eq!(
            code(hub.create_group("carol", "bob", &invite, 2)),
            HubError::NameTaken("bob".into())
        );
        let join =
            |user: &str, group: &str| hub.join_group(user, group, 2).err().expect("an error");
        assert_eq!(join("bob", "ops"), HubError::UnknownGroup("ops".into()));
        assert_eq!(join("carol", "devs"), HubError::NotInvited("devs".into()));
        assert_eq!(join("alice", "devs"), HubError::AlreadyJoined("devs".into()));
        assert_eq!(send(&hub, "bob", 2).await, Err(HubError::NotJoined("devs".into())));
        assert_eq!(send(&hub, "carol", 2).await, Err(HubError::NotGroupMember("devs".into())));
        let (members, stored) = hub.join_group("bob", "devs", 3).unwrap();
        stored.await.unwrap();
        assert_eq!(members, ["alice", "bob"]);
        let sent = send(&hub, "bob", 3).await.unwrap();
        assert!(matches!(
            sent,
            Sent::Group { group, delivered: 0, stored: 1, skipped: 0, .. } if group == "devs"
        ));
    }

    #[tokio::test]
    async fn a_member_gets_only_what_was_sent_after_joining() {
        let hub = hub_with(0);
        hub.create_group("alice", "devs", &["bob".into()], 1).unwrap().await.unwrap();
        let (rx, session) = join(&hub, "bob", 16);
        assert!(hub.go_live("bob", session, 0));
        send(&hub, "alice", 2).await.unwrap(); // id 1, before bob joined
        hub.join_group("bob", "devs", 3).unwrap().1.await.unwrap();
        assert_eq!(hub.memberships("bob"), [("devs".to_string(), 1)]);
        send(&hub, "alice", 4).await.unwrap(); // id 2
        let ids: Vec<u64> = rx.take().into_iter().map(|(id, _)| id).filter(|id| *id > 0).collect();
        assert_eq!(ids, [2]);
    }

    #[tokio::test]
    async fn the_last_member_leaving_dissolves_the_group_and_its_invitations() {
        let hub = hub_with(0);
        hub.create_group("alice", "devs", &["bob".into(), "carol".into()], 1)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(hub.groups_of("carol").1.len(), 1);
        hub.leave_group("bob", "devs", 2).unwrap().await.unwrap();
        assert_eq!(
            hub.leave_group("bob", "devs", 2).err(),
            Some(HubError::NotGroupMember("devs".into()))
        );
        hub.leave_group("alice", "devs", 3).unwrap().await.unwrap();
        assert!(!hub.is_group("devs"));
        assert!(hub.groups_of("carol").1.is_empty());
    }
}
