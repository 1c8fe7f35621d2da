//! The routing table: who is online, who exists, who blocks whom.
//!
//! Sessions share one [`Hub`]. Each online user has a bounded queue of encoded frames that
//! its session task drains onto the socket; routing a message is a lookup and a `try_send`
//! under a short lock, and a fan-out encodes its frame once and shares the bytes. A session
//! whose queue is full is not waited for: it is kicked (its inbox signals it as too slow) and
//! further frames wait in its `overflow` until it leaves, so one slow reader never stalls
//! anyone. A leaving session collects its queue and overflow under the same lock that routes
//! (see [`Hub::leave`]), so whatever it keeps for the next login is ordered before any
//! message that is stored for the user after it left.
//!
//! Accounts, blocks and groups are cached here from the store at start-up and written
//! through by the commands that change them; the store stays the durable copy. Group
//! membership and routing within groups are in [`groups`].
//!
//! Private-chat introductions live here too: each online user's direct-connection addresses,
//! and the requests waiting for an answer ([`PendingRequests`]). Asking, answering, expiring
//! and logging out all happen under the routing lock, so a request never outlives either
//! side's session and the target is only asked once every check has passed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbox::{InboxSender, TrySendError};
use super::private::PendingRequests;

mod groups;

use crate::protocol::{
    encode_frame, ErrorCode, ErrorReply, Event, Introduction, Invitation, OnlineUser,
    PresenceChange, RequestEnd, ServerMessage, Timestamp, Token,
};
use crate::store::MemberRecord;
pub use groups::GroupRouted;

/// Shared routing state.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    next_session: AtomicU64,
    /// Woken when a private-chat request is added, so that the expiry task re-reads the
    /// next deadline.
    requests_changed: Notify,
}

/// Where an online user takes direct connections: the IP address their session comes from,
/// with the ports they announced at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAddrs {
    /// The private-chat listener.
    pub tcp: SocketAddr,
    /// The file-transfer socket.
    pub udp: SocketAddr,
}

/// A live session as the hub sees it.
pub struct Peer {
    /// Encoded frames for this session's socket.
    pub tx: InboxSender,
    /// When the session logged in.
    pub since: Timestamp,
    /// Unique id of this session (see [`Hub::new_session_id`]).
    pub session: u64,
    /// Frames that arrived after the queue filled up, oldest first.
    pub overflow: Vec<Bytes>,
    /// Where the client takes direct connections, if it announced it at login.
    pub direct: Option<DirectAddrs>,
}

impl Peer {
    /// A peer with an empty overflow that takes no direct connections.
    pub fn new(tx: InboxSender, since: Timestamp, session: u64) -> Self {
        Self { tx, since, session, overflow: Vec::new(), direct: None }
    }

    /// The same peer, taking direct connections at `direct`.
    pub fn with_direct(self, direct: Option<DirectAddrs>) -> Self {
        Self { direct, ..self }
    }

    /// Queues `frame`; a full queue kicks the peer (the inbox signals it as too slow) and
    /// keeps the frame in its overflow.
    /// False if the session task is gone (it can only have died, as a live session leaves
    /// the hub before dropping its receiver).
    fn push(&mut self, frame: Bytes) -> bool {
        if !self.overflow.is_empty() {
            self.overflow.push(frame);
            return true;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(frame)) => {
                self.overflow.push(frame);
                true
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Queues `frame` if the session can still take it; otherwise drops it. For events that
    /// only matter to a session that goes on (presence, group members coming and going): a
    /// kicked session ends without reading them, and its overflow keeps only what is stored
    /// for the next login. This bounds what a mass disconnect costs, where every leave is
    /// announced to everyone still online: without it, the overflows of the sessions kicked
    /// meanwhile grew by one presence event per leave (over 900 MB for 10,000 clients).
    fn push_ephemeral(&mut self, frame: Bytes) {
        if self.overflow.is_empty() {
            // A full inbox signals its session as too slow; the frame is not needed after that.
            let _ = self.tx.try_send(frame);
        }
    }
}

/// Where [`Hub::deliver`] put a message.
pub enum Routed<T> {
    /// Queued for the recipient's live session.
    Online,
    /// The recipient is offline; the closure's result.
    Offline(T),
}

#[derive(Default)]
struct State {
    online: HashMap<String, Peer>,
    users: HashSet<String>,
    blocks: Blocks,
    groups: groups::Groups,
    requests: PendingRequests,
}

/// Who blocks whom: blocker -> the users they block.
#[derive(Default)]
struct Blocks(HashMap<String, HashSet<String>>);

impl Blocks {
    /// Whether `blocker` blocks `blocked`.
    fn has(&self, blocker: &str, blocked: &str) -> bool {
        self.0.get(blocker).is_some_and(|set| set.contains(blocked))
    }

    /// Whether either of the two blocks the other.
    fn between(&self, a: &str, b: &str) -> bool {
        self.has(a, b) || self.has(b, a)
    }
}

impl State {
    /// Announces `user`'s presence change to everyone online who has no block with them.
    fn announce(&mut self, user: &str, change: PresenceChange, at: Timestamp) {
        let Some(frame) = encode_event(Event::Presence { user: user.to_owned(), change, at })
        else {
            return;
        };
        for (name, peer) in self.online.iter_mut() {
            if name != user && !self.blocks.between(user, name) {
                peer.push_ephemeral(frame.clone());
            }
        }
    }

    /// Queues `event` for `to` if `to` is online; false if not (nothing is stored).
    fn push_event(&mut self, to: &str, event: Event) -> bool {
        let Some(peer) = self.online.get_mut(to) else {
            return false;
        };
        encode_event(event).is_some_and(|frame| peer.push(frame))
    }

    /// Tells both sides of the request `(from, to)` that it ended for `reason` (those of them
    /// still online).
    fn end_request(&mut self, from: &str, to: &str, reason: RequestEnd) {
        let outgoing = Event::PrivateRequestEnded { peer: to.to_owned(), outgoing: true, reason };
        self.push_event(from, outgoing);
        let incoming =
            Event::PrivateRequestEnded { peer: from.to_owned(), outgoing: false, reason };
        self.push_event(to, incoming);
    }

    /// The direct addresses of online `user`, or why a private chat with them cannot start.
    fn direct_of(&self, user: &str, you: bool) -> Result<DirectAddrs, ErrorReply> {
        let Some(peer) = self.online.get(user) else {
            return Err(ErrorReply::new(ErrorCode::Offline, format!("{user} is not online")));
        };
        peer.direct.ok_or_else(|| {
            let message = if you {
                "your client takes no direct connections (private chats, files)".into()
            } else {
                format!("{user}'s client takes no direct connections")
            };
            ErrorReply::new(ErrorCode::NotReachable, message)
        })
    }
}

impl Hub {
    /// A hub knowing these accounts, `(blocker, blocked)` pairs and group memberships, with
    /// nobody online.
    pub fn new(
        users: impl IntoIterator<Item = String>,
        blocks: impl IntoIterator<Item = (String, String)>,
        members: impl IntoIterator<Item = MemberRecord>,
    ) -> Self {
        let mut state = State {
            users: users.into_iter().collect(),
            groups: groups::Groups::from_records(members),
            ..State::default()
        };
        for (blocker, blocked) in blocks {
            state.blocks.0.entry(blocker).or_default().insert(blocked);
        }
        Self {
            state: Mutex::new(state),
            next_session: AtomicU64::new(1),
            requests_changed: Notify::new(),
        }
    }

    /// A fresh id for a session.
    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether an account named `name` exists.
    pub fn is_user(&self, name: &str) -> bool {
        self.state().users.contains(name)
    }

    /// Records a newly created account.
    pub fn add_user(&self, name: &str) {
        self.state().users.insert(name.to_owned());
    }

    /// Records that `blocker` now blocks (or, with `on == false`, no longer blocks) `blocked`.
    /// Blocking also drops, silently, a private chat request `blocked` made to `blocker`: its
    /// end would otherwise tell `blocked` when `blocker` logs out.
    pub fn set_block(&self, blocker: &str, blocked: &str, on: bool) {
        let mut state = self.state();
        if on {
            state.blocks.0.entry(blocker.to_owned()).or_default().insert(blocked.to_owned());
            state.requests.take(blocked, blocker, Instant::now());
        } else if let Some(set) = state.blocks.0.get_mut(blocker) {
            set.remove(blocked);
        }
    }

    /// Whether `blocker` blocks `blocked`.
    pub fn blocks(&self, blocker: &str, blocked: &str) -> bool {
        self.state().blocks.has(blocker, blocked)
    }

    /// Puts `name` online and tells the others; refused if `name` is online already. Returns
    /// `name`'s pending group invitations: any made later are pushed to the session.
    pub fn join(&self, name: &str, peer: Peer) -> Result<Vec<Invitation>, ErrorReply> {
        let mut state = self.state();
        if state.online.get(name).is_some_and(|peer| peer.tx.is_closed()) {
            tracing::error!(user = name, "replacing a session whose task died");
            state.online.remove(name);
        }
        if state.online.contains_key(name) {
            return Err(ErrorReply::new(
                ErrorCode::AlreadyLoggedIn,
                format!("{name} is already logged in from another session"),
            ));
        }
        let since = peer.since;
        state.online.insert(name.to_owned(), peer);
        state.announce(name, PresenceChange::LoggedIn, since);
        Ok(state.groups.invitations(name))
    }

    /// Takes session `session` of `name` offline, announcing `change` if given, and hands
    /// its [`Peer`] to `then`, which runs before any other routing can happen.
    pub fn leave<T>(
        &self,
        name: &str,
        session: u64,
        change: Option<PresenceChange>,
        at: Timestamp,
        then: impl FnOnce(Peer) -> T,
    ) -> Option<T> {
        let mut state = self.state();
        if state.online.get(name).is_none_or(|p| p.session != session) {
            return None;
        }
        let peer = state.online.remove(name)?;
        if let Some(change) = change {
            state.announce(name, change, at);
        }
        // `name` is offline already, so only the other side of each request hears of it.
        for (from, to) in state.requests.forget(name) {
            state.end_request(&from, &to, RequestEnd::PeerLeft);
        }
        Some(then(peer))
    }

    /// Tells every logged-in session that the server is shutting down. A session that logs
    /// in after this sees the server's stop token cancelled instead.
    pub fn shut_down_all(&self) {
        for peer in self.state().online.values() {
            peer.tx.shut_down();
        }
    }

    /// Asks `to`, on behalf of `from`, for a private chat that expires at `expires`.
    ///
    /// Refused, and `to` is never asked, when `to` is `from`, unknown, blocks `from` (said
    /// before anything that would reveal whether `to` is online, as `/msg` does), is offline,
    /// or when either client takes no direct connections or the same request already waits.
    pub fn ask_private(&self, from: &str, to: &str, expires: Instant) -> Result<(), ErrorReply> {
        let now = Instant::now();
        let mut state = self.state();
        check_target(&state, from, to)?;
        state.direct_of(to, false)?;
        state.direct_of(from, true)?;
        if !state.requests.ask(from, to, expires, now) {
            return Err(ErrorReply::new(
                ErrorCode::AlreadyAsked,
                format!("you already asked {to} for a private chat; wait for their answer"),
            ));
        }
        let secs = expires.saturating_duration_since(now).as_secs_f64().ceil() as u64;
        let asked = Event::PrivateRequest { from: from.to_owned(), expires_in_secs: secs };
        if !state.push_event(to, asked) {
            // Only a session whose task died can refuse a frame; it is as good as offline.
            state.requests.take(from, to, now);
            return Err(ErrorReply::new(ErrorCode::Offline, format!("{to} is not online")));
        }
        drop(state);
        self.requests_changed.notify_one();
        Ok(())
    }

    /// `target` accepts `requester`'s request: the requester is sent the target's address and
    /// `token`, and the target gets back the requester's.
    pub fn accept_private(
        &self,
        requester: &str,
        target: &str,
        token: Token,
    ) -> Result<Introduction, ErrorReply> {
        let mut state = self.state();
        if !state.requests.take(requester, target, Instant::now()) {
            return Err(no_such_request(requester));
        }
        // Logging out drops a user's requests under this lock, so both are online here.
        let (theirs, mine) = (state.direct_of(requester, false)?, state.direct_of(target, true)?);
        let for_requester = Introduction { peer: target.to_owned(), addr: mine.tcp, token };
        state.push_event(requester, Event::PrivateAccepted(for_requester));
        Ok(Introduction { peer: requester.to_owned(), addr: theirs.tcp, token })
    }

    /// `target` declines `requester`'s request; the requester is told.
    pub fn decline_private(&self, requester: &str, target: &str) -> Result<(), ErrorReply> {
        let mut state = self.state();
        if !state.requests.take(requester, target, Instant::now()) {
            return Err(no_such_request(requester));
        }
        let event = Event::PrivateRequestEnded {
            peer: target.to_owned(),
            outgoing: true,
            reason: RequestEnd::Declined,
        };
        state.push_event(requester, event);
        Ok(())
    }

    /// Expires private-chat requests at their deadlines, telling both sides, until `stop`.
    pub async fn expire_private_requests(&self, stop: CancellationToken) {
        loop {
            // `notify_one` leaves a permit when nobody waits, so a request added after the
            // deadline is read still wakes this loop.
            let changed = self.requests_changed.notified();
            let next = self.state().requests.next_deadline();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => continue,
                _ = tokio::time::sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {}
            }
            let mut state = self.state();
            for (from, to) in state.requests.expire(Instant::now()) {
                state.end_request(&from, &to, RequestEnd::Expired);
            }
        }
    }

    /// Introduces `from` and `to` for a file transfer: `to` is told about the offer of
    /// `name` (`size` bytes) with `from`'s UDP address and `token`, and `from` gets `to`'s.
    ///
    /// Refused, and `to` is never told, for the same reasons as a private chat request:
    /// `to` is `from`, unknown, blocks `from`, is offline, or either client takes no direct
    /// connections.
    pub fn offer_file(
        &self,
        from: &str,
        to: &str,
        name: String,
        size: u64,
        token: Token,
    ) -> Result<Introduction, ErrorReply> {
        let mut state = self.state();
        check_target(&state, from, to)?;
        let theirs = state.direct_of(to, false)?;
        let mine = state.direct_of(from, true)?;
        let sender = Introduction { peer: from.to_owned(), addr: mine.udp, token };
        if !state.push_event(to, Event::FileOffer { from: sender, name, size }) {
            return Err(ErrorReply::new(ErrorCode::Offline, format!("{to} is not online")));
        }
        Ok(Introduction { peer: to.to_owned(), addr: theirs.udp, token })
    }

    /// Routes a direct message frame from `from` to `to`.
    ///
    /// After the target checks, the frame goes to `to`'s live session if there is one;
    /// otherwise `offline` runs while the routing lock is still held, so that whatever it
    /// starts (storing the message) is ordered before `to` can come online and collect it.
    pub fn deliver<T>(
        &self,
        from: &str,
        to: &str,
        frame: Bytes,
        offline: impl FnOnce() -> T,
    ) -> Result<Routed<T>, ErrorReply> {
        let mut state = self.state();
        check_target(&state, from, to)?;
        let queued = state.online.get_mut(to).is_some_and(|peer| peer.push(frame));
        Ok(if queued { Routed::Online } else { Routed::Offline(offline()) })
    }

    /// Sends a broadcast frame to everyone online but `from` and those blocking `from`.
    /// Returns `(delivered, skipped)`.
    pub fn broadcast(&self, from: &str, frame: Bytes) -> (u32, u32) {
        let mut state = self.state();
        let state = &mut *state;
        let (mut delivered, mut skipped) = (0, 0);
        for (name, peer) in state.online.iter_mut() {
            if name == from {
                continue;
            }
            if !state.blocks.has(name, from) && peer.push(frame.clone()) {
                delivered += 1;
            } else {
                skipped += 1;
            }
        }
        (delivered, skipped)
    }

    /// Whether `name` is online now.
    pub fn is_online(&self, name: &str) -> bool {
        self.state().online.contains_key(name)
    }

    /// Who `viewer` may see online: everyone but `viewer` and those who block `viewer`, by name.
    pub fn online_for(&self, viewer: &str) -> Vec<OnlineUser> {
        let state = self.state();
        let mut list: Vec<OnlineUser> = state
            .online
            .iter()
            .filter(|(name, _)| *name != viewer && !state.blocks.has(name, viewer))
            .map(|(name, peer)| OnlineUser { name: name.clone(), since: peer.since })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in another session: every update is a
        // single insert or remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error for a name that is no account.
pub fn unknown_user(name: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::UnknownUser, format!("there is no user {name}"))
}

/// Checks that `from` may address `to`: `to` exists, is someone else, and does not block `from`.
fn check_target(state: &State, from: &str, to: &str) -> Result<(), ErrorReply> {
    if from == to {
        return Err(ErrorReply::new(ErrorCode::SelfTarget, "you cannot do that to yourself"));
    }
    if !state.users.contains(to) {
        return Err(unknown_user(to));
    }
    if state.blocks.has(to, from) {
        return Err(ErrorReply::new(
            ErrorCode::BlockedByRecipient,
            format!("{to} has blocked you"),
        ));
    }
    Ok(())
}

fn no_such_request(from: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::NoSuchRequest,
        format!("there is no private chat request from {from} (it may have expired)"),
    )
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// Encodes an event frame; an event that cannot be encoded is logged and dropped.
pub fn encode_event(event: Event) -> Option<Bytes> {
    encode_frame(&ServerMessage::Event(event))
        .inspect_err(|e| tracing::error!("cannot encode an event: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::inbox::{inbox, InboxReceiver, Signal};

    fn hub() -> Hub {
        Hub::new(["alice", "bob"].map(String::from), [], [])
    }

    fn join(hub: &Hub, name: &str, queue: usize) -> (InboxReceiver, u64) {
        let (tx, rx) = inbox(queue);
        let session = hub.new_session_id();
        hub.join(name, Peer::new(tx, 0, session)).unwrap();
        (rx, session)
    }

    #[test]
    fn a_full_queue_kicks_and_overflow_keeps_order_until_leave() {
        let hub = hub();
        let (rx, session) = join(&hub, "bob", 2);
        for i in 0..5u8 {
            let routed = hub.deliver("alice", "bob", Bytes::from(vec![i]), || ()).unwrap();
            assert!(matches!(routed, Routed::Online));
        }
        assert_eq!(rx.signal(), Some(Signal::TooSlow));
        let left = hub
            .leave("bob", session, None, 0, |peer| {
                let mut all = Vec::new();
                all.extend(rx.take().iter().map(|f| f[0]));
                all.extend(peer.overflow.iter().map(|f| f[0]));
                all
            })
            .unwrap();
        assert_eq!(left, [0, 1, 2, 3, 4]);
        let routed = hub.deliver("alice", "bob", Bytes::new(), || "stored").unwrap();
        assert!(matches!(routed, Routed::Offline("stored")));
    }

    #[test]
    fn a_kicked_session_keeps_messages_but_not_presence() {
        let hub = hub();
        let (rx, session) = join(&hub, "bob", 1);
        // The first message fills bob's queue, the second kicks him and waits in his overflow.
        for i in 0..2u8 {
            hub.deliver("alice", "bob", Bytes::from(vec![i]), || ()).unwrap();
        }
        assert_eq!(rx.signal(), Some(Signal::TooSlow));
        // alice comes and goes: bob, who is on his way out, is not told.
        let (_alice, alice_session) = join(&hub, "alice", 4);
        hub.leave("alice", alice_session, Some(PresenceChange::LoggedOut), 0, drop).unwrap();
        let overflow = hub.leave("bob", session, None, 0, |peer| peer.overflow).unwrap();
        assert_eq!(overflow, [Bytes::from(vec![1])]);
        assert_eq!(rx.take(), [Bytes::from(vec![0])]);
    }

    #[test]
    fn one_session_per_user_unless_the_old_one_died() {
        let hub = hub();
        let (rx, _) = join(&hub, "bob", 4);
        let (tx, _rx2) = inbox(4);
        let err = hub.join("bob", Peer::new(tx.clone(), 0, 99)).unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyLoggedIn);
        drop(rx); // the session task is gone without leaving
        let routed = hub.deliver("alice", "bob", Bytes::new(), || ()).unwrap();
        assert!(matches!(routed, Routed::Offline(())), "a dead session gets nothing");
        hub.join("bob", Peer::new(tx, 0, 99)).unwrap();
    }

    #[test]
    fn shutdown_reaches_every_online_session() {
        let hub = hub();
        let (alice, _) = join(&hub, "alice", 4);
        let (bob, _) = join(&hub, "bob", 4);
        assert_eq!(bob.signal(), None);
        hub.shut_down_all();
        assert_eq!(alice.signal(), Some(Signal::Shutdown));
        assert_eq!(bob.signal(), Some(Signal::Shutdown));
    }

    #[test]
    fn leave_of_an_old_session_does_not_remove_a_new_one() {
        let hub = hub();
        let (_rx, session) = join(&hub, "bob", 4);
        assert!(hub.leave("bob", session + 1000, None, 0, |_| ()).is_none());
        assert!(hub.is_online("bob"));
    }
}
