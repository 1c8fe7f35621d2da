//! Groups: who is invited to and who has joined which group, and routing within a group.
//!
//! The table lives inside the hub's state so that a membership check and the routing that
//! depends on it happen under one lock. Every change takes a `persist` closure that runs
//! under that lock too, like [`Hub::deliver`]'s `offline`: it queues the store write, so
//! writes reach the store in the order the hub applied them.
//!
//! A group exists while it has at least one joined member; when the last one leaves, the
//! group and its pending invitations go.
//!
//! Each group hands out its own timestamps under the lock, never going backwards and never
//! giving a join the time of an earlier message: a member's history starts at their join
//! time, so it contains exactly the messages routed after they joined, even within one
//! millisecond.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::{check_target, encode_event, Hub, State};
use crate::protocol::{
    ErrorCode, ErrorReply, Event, GroupInfo, Invitation, MemberChange, Timestamp,
};
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
    Joined { since: Timestamp },
}

/// Where [`Hub::group_send`] put a message.
pub struct GroupRouted<T> {
    /// The message's timestamp.
    pub sent_at: Timestamp,
    /// Online members it was queued for.
    pub delivered: u32,
    /// Offline members it is kept for.
    pub stored: u32,
    /// Members who block the sender.
    pub skipped: u32,
    /// The `offline` closure's result, if any member was offline.
    pub offline: Option<T>,
}

impl Groups {
    /// The table as the store recorded it.
    pub(super) fn from_records(records: impl IntoIterator<Item = MemberRecord>) -> Self {
        let mut groups = Groups::default();
        for r in records {
            let member = match (r.joined_at, r.invited_by) {
                (Some(since), _) => Member::Joined { since },
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
    fn member(&self, group: &str, user: &str) -> Result<&Member, ErrorReply> {
        let found = self.0.get(group).ok_or_else(|| unknown_group(group))?;
        found.members.get(user).ok_or_else(|| {
            ErrorReply::new(ErrorCode::NotGroupMember, format!("you are not in group {group}"))
        })
    }

    /// When `user` joined `group`; an error unless they have.
    fn joined_since(&self, group: &str, user: &str) -> Result<Timestamp, ErrorReply> {
        match self.member(group, user)? {
            Member::Joined { since } => Ok(*since),
            Member::Invited { .. } => Err(ErrorReply::new(
                ErrorCode::NotJoined,
                format!("you are invited to {group} but have not joined it: /joingroup {group}"),
            )),
        }
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
    /// duplicates), telling those online; `persist` runs under the lock.
    ///
    /// Refused when the name belongs to a group or a user, or when an invitee does not exist
    /// or blocks `creator`; nothing changes then.
    pub fn create_group<T>(
        &self,
        creator: &str,
        name: &str,
        invite: &[String],
        at: Timestamp,
        persist: impl FnOnce() -> T,
    ) -> Result<T, ErrorReply> {
        let mut state = self.state();
        if state.groups.contains(name) || state.users.contains(name) {
            return Err(ErrorReply::new(
                ErrorCode::NameTaken,
                format!("the name {name} is taken; choose another group name"),
            ));
        }
        for user in invite {
            check_target(&state, creator, user)?;
        }
        let mut group = Group { clock: at, ..Group::default() };
        group.members.insert(creator.to_owned(), Member::Joined { since: at });
        let invitation = Invitation { group: name.to_owned(), by: creator.to_owned(), at };
        let frame = encode_event(Event::Invited(invitation));
        for user in invite {
            group.members.insert(user.clone(), Member::Invited { by: creator.to_owned(), at });
            if let (Some(peer), Some(frame)) = (state.online.get_mut(user), &frame) {
                peer.push(frame.clone());
            }
        }
        state.groups.0.insert(name.to_owned(), group);
        Ok(persist())
    }

    /// Makes the invited `user` a member of `group` and tells the other members; returns the
    /// joined members (sorted, `user` included) and the result of `persist`, which gets the
    /// join time (`now` or just after the group's last message).
    pub fn join_group<T>(
        &self,
        user: &str,
        group: &str,
        now: Timestamp,
        persist: impl FnOnce(Timestamp) -> T,
    ) -> Result<(Vec<String>, T), ErrorReply> {
        let mut state = self.state();
        let Some(found) = state.groups.0.get_mut(group) else {
            return Err(unknown_group(group));
        };
        match found.members.get(user) {
            None => {
                return Err(ErrorReply::new(
                    ErrorCode::NotInvited,
                    format!("you have not been invited to {group}"),
                ))
            }
            Some(Member::Joined { .. }) => {
                return Err(ErrorReply::new(
                    ErrorCode::AlreadyJoined,
                    format!("you are already a member of {group}"),
                ))
            }
            Some(Member::Invited { .. }) => {}
        }
        let at = found.tick(now, true);
        found.members.insert(user.to_owned(), Member::Joined { since: at });
        let members = found.joined().cloned().collect();
        state.announce_member(group, user, MemberChange::Joined, at);
        Ok((members, persist(at)))
    }

    /// Takes `user` out of `group`, whether joined or only invited, telling the members if
    /// `user` had joined. `persist` learns whether the group dissolves (no joined member
    /// left) and runs under the lock.
    pub fn leave_group<T>(
        &self,
        user: &str,
        group: &str,
        at: Timestamp,
        persist: impl FnOnce(bool) -> T,
    ) -> Result<T, ErrorReply> {
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
        Ok(persist(dissolve))
    }

    /// Routes a group message from `from` to the joined members of `group`.
    ///
    /// The message gets its timestamp here (`now`, unless the group's clock is ahead) and
    /// `frame` encodes it with that time. Members who block `from` are skipped. Offline
    /// members are passed to `offline` with the timestamp; it runs under the routing lock
    /// (as in [`Hub::deliver`]) and only if there are any.
    pub fn group_send<T>(
        &self,
        from: &str,
        group: &str,
        now: Timestamp,
        frame: impl FnOnce(Timestamp) -> Option<Bytes>,
        offline: impl FnOnce(Vec<String>, Timestamp) -> T,
    ) -> Result<GroupRouted<T>, ErrorReply> {
        let mut state = self.state();
        let state = &mut *state;
        state.groups.joined_since(group, from)?;
        let Some(found) = state.groups.0.get_mut(group) else { return Err(unknown_group(group)) };
        let sent_at = found.tick(now, false);
        let Some(frame) = frame(sent_at) else {
            return Err(ErrorReply::new(ErrorCode::Internal, "the message could not be encoded"));
        };
        let mut routed =
            GroupRouted { sent_at, delivered: 0, stored: 0, skipped: 0, offline: None };
        let mut away = Vec::new();
        for name in found.joined() {
            if name == from {
                continue;
            }
            if state.blocks.has(name, from) {
                routed.skipped += 1;
            } else if state.online.get_mut(name).is_some_and(|peer| peer.push(frame.clone())) {
                routed.delivered += 1;
            } else {
                away.push(name.clone());
            }
        }
        if !away.is_empty() {
            routed.stored = away.len() as u32;
            routed.offline = Some(offline(away, sent_at));
        }
        Ok(routed)
    }

    /// When `user` joined `group`: the start of the group history they may read.
    pub fn joined_since(&self, group: &str, user: &str) -> Result<Timestamp, ErrorReply> {
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

/// The error for a name that is no group.
fn unknown_group(name: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::UnknownGroup, format!("there is no group {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(["alice", "bob", "carol"].map(String::from), [], [])
    }

    fn send(hub: &Hub, from: &str, now: Timestamp) -> Result<GroupRouted<Vec<String>>, ErrorReply> {
        hub.group_send(from, "devs", now, |_| Some(Bytes::new()), |away, _| away)
    }

    #[test]
    fn a_join_is_timed_after_every_earlier_message_and_messages_never_go_back() {
        let hub = hub();
        hub.create_group("alice", "devs", &["bob".into(), "carol".into()], 100, || ()).unwrap();
        assert_eq!(send(&hub, "alice", 100).unwrap().sent_at, 100);
        let (_, joined) = hub.join_group("bob", "devs", 100, |at| at).unwrap();
        assert_eq!(joined, 101, "after the message of the same millisecond");
        assert_eq!(send(&hub, "alice", 99).unwrap().sent_at, 101, "the wall clock went back");
        assert_eq!(send(&hub, "alice", 250).unwrap().sent_at, 250);
    }

    fn code<T>(r: Result<T, ErrorReply>) -> ErrorCode {
        r.err().expect("an error").code
    }

    #[test]
    fn membership_rules_and_their_errors() {
        let hub = hub();
        let invite = ["bob".to_string()];
        hub.create_group("alice", "devs", &invite, 1, || ()).unwrap();
        assert_eq!(
            code(hub.create_group("carol", "devs", &invite, 2, || ())),
            ErrorCode::NameTaken
        );
        assert_eq!(code(hub.create_group("carol", "bob", &invite, 2, || ())), ErrorCode::NameTaken);
        assert_eq!(code(hub.join_group("bob", "ops", 2, drop)), ErrorCode::UnknownGroup);
        assert_eq!(code(hub.join_group("carol", "devs", 2, drop)), ErrorCode::NotInvited);
        assert_eq!(code(hub.join_group("alice", "devs", 2, drop)), ErrorCode::AlreadyJoined);
        assert_eq!(code(send(&hub, "bob", 2)), ErrorCode::NotJoined);
        assert_eq!(code(send(&hub, "carol", 2)), ErrorCode::NotGroupMember);
        let (members, ()) = hub.join_group("bob", "devs", 3, drop).unwrap();
        assert_eq!(members, ["alice", "bob"]);
        assert_eq!(hub.joined_since("devs", "bob").unwrap(), 3);
        let routed = send(&hub, "bob", 3).unwrap();
        assert_eq!((routed.delivered, routed.stored, routed.skipped), (0, 1, 0));
        assert_eq!(routed.offline.unwrap(), ["alice"]);
    }

    #[test]
    fn the_last_member_leaving_dissolves_the_group_and_its_invitations() {
        let hub = hub();
        hub.create_group("alice", "devs", &["bob".into(), "carol".into()], 1, || ()).unwrap();
        assert_eq!(hub.groups_of("carol").1.len(), 1);
        assert!(!hub.leave_group("bob", "devs", 2, |dissolve| dissolve).unwrap(), "declined");
        assert_eq!(code(hub.leave_group("bob", "devs", 2, |_| ())), ErrorCode::NotGroupMember);
        assert!(hub.leave_group("alice", "devs", 3, |dissolve| dissolve).unwrap());
        assert!(!hub.is_group("devs"));
        assert!(hub.groups_of("carol").1.is_empty());
    }

    #[test]
    fn an_invitee_who_blocks_the_creator_is_refused_and_nothing_is_created() {
        let hub =
            Hub::new(["alice", "bob"].map(String::from), [("bob".into(), "alice".into())], []);
        let err = hub.create_group("alice", "devs", &["bob".into()], 1, || ()).unwrap_err();
        assert_eq!(err.code, ErrorCode::BlockedByRecipient);
        assert!(!hub.is_group("devs"));
    }
}
