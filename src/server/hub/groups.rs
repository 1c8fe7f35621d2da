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
//! giving a join the time of an earlier message. A member gets the group's messages logged
//! after their join (each membership keeps the last log id before it), while `/history`
//! shows them the group's whole history, as a team channel does.

use std::collections::{BTreeMap, HashMap};

use super::{check_target, encode_event, Blocks, Hub, HubError, State};
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
        Ok(persist())
    }

    /// Makes the invited `user` a member of `group` and tells the other members; returns the
    /// joined members (sorted, `user` included) and the result of `persist`, which gets the
    /// join time (`now` or just after the group's last message) and the last log id before
    /// the join (the member gets the group's messages after it).
    pub fn join_group<T>(
        &self,
        user: &str,
        group: &str,
        now: Timestamp,
        persist: impl FnOnce(Timestamp, u64) -> T,
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
        let joined_id = state.log.last_id();
        let Some(found) = state.groups.0.get_mut(group) else {
            return Err(unknown_group(group));
        };
        found.members.insert(user.to_owned(), Member::Joined { since: at, joined_id });
        let members = found.joined().cloned().collect();
        state.announce_member(group, user, MemberChange::Joined, at);
        Ok((members, persist(at, joined_id)))
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

/// The error for a name that is no group.
fn unknown_group(name: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::UnknownGroup, format!("there is no group {name}"))
}
