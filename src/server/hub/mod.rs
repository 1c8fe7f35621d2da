//! The routing table: who is online, who exists, who blocks whom.
//!
//! Sessions share one [`Hub`]. Each online user has a bounded queue of encoded frames that
//! its session task drains onto the socket; routing is a lookup and a `try_send` under a
//! short lock, and a fan-out encodes its frame once and shares the bytes. A session whose
//! queue is full is not waited for: it is kicked (its inbox signals it as too slow) and what
//! does not fit is dropped, which loses nothing: every message is in the log, and whatever
//! the session had not acknowledged comes again at its next login.
//!
//! Direct and group messages go through the log ([`log`]): the hub gives each its id, the
//! log writer commits them in batches and routes them after the commit. The hub holds the
//! store handle for that; its errors are [`HubError`]s, which the commands map to replies.
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
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::server::textlog::{OnlineEntry, TextLogs};
use crate::store::{Backlog, StoreHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbox::{InboxSender, TrySendError};
use super::private::PendingRequests;

mod groups;
pub mod log;

use crate::protocol::{
    encode_frame, ErrorCode, ErrorReply, Event, Introduction, Invitation, LinkId, OnlineUser,
    PresenceChange, PublicKey, RequestEnd, ServerMessage, Timestamp, Token,
};
use crate::store::MemberRecord;
use log::{LogStart, LogState, Mailbox};

/// How long a presence notice may wait for the ones after it before its session is woken.
pub const PRESENCE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Why the hub refused something. The commands map these to wire replies (`cmd`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The target is the sender.
    #[error("you cannot do that to yourself")]
    SelfTarget,
    /// No such account.
    #[error("there is no user {0}")]
    UnknownUser(String),
    /// The target blocks the sender.
    #[error("{0} has blocked you")]
    Blocked(String),
    /// This recipient has as much waiting as the mailbox limits allow.
    #[error("{0}'s mailbox is full; try again once they have read their messages")]
    MailboxFull(String),
    /// No such group.
    #[error("there is no group {0}")]
    UnknownGroup(String),
    /// The sender is neither a member of this group nor invited.
    #[error("you are not in group {0}")]
    NotGroupMember(String),
    /// The sender is invited to this group but has not joined it.
    #[error("you are invited to {0} but have not joined it: /joingroup {0}")]
    NotJoined(String),
    /// The log could not be committed; nothing was stored.
    #[error("the message log could not be written: {0}")]
    Store(String),
    /// The store is full (disk or `--max-db-mib`): nothing new can be stored for now.
    #[error("the server's storage is full: new messages cannot be stored now (reading works)")]
    StoreFull,
    /// The server is shutting down and the log writer has stopped.
    #[error("the server is shutting down")]
    LogClosed,
    /// A group or a user already has this name.
    #[error("the name {0} is taken; choose another group name")]
    NameTaken(String),
    /// Joining a group without an invitation.
    #[error("you have not been invited to {0}")]
    NotInvited(String),
    /// Joining a group already joined.
    #[error("you are already a member of {0}")]
    AlreadyJoined(String),
    /// Unblocking someone not blocked.
    #[error("{0} is not blocked")]
    NotBlocked(String),
}

/// A store write the hub queued under its lock (so writes reach the store in the order the
/// hub applied them); resolves once committed.
pub type Stored = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HubError>> + Send>>;

/// Queues `write` on `store`; the returned future fails if it did not change what it should.
fn persist(
    store: &StoreHandle,
    what: &'static str,
    write: impl FnOnce(&mut dyn crate::store::Store) -> crate::store::StoreResult<bool> + Send + 'static,
) -> Stored {
    let done = store.call(write);
    Box::pin(async move {
        match done.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(HubError::Store(format!("{what}: the store disagreed"))),
            Err(e) => Err(HubError::Store(format!("{what}: {e}"))),
        }
    })
}

/// What [`Hub::join`] hands a session that has just logged in.
pub struct Joined {
    /// Pending group invitations, oldest first.
    pub invitations: Vec<Invitation>,
    /// The user's acknowledged position in the log: catch-up starts after it.
    pub cursor: u64,
    /// What waits after it.
    pub waiting: Backlog,
}

/// Shared routing state.
pub struct Hub {
    state: Mutex<State>,
    store: StoreHandle,
    /// `--text-logs`: written on the store thread, after what they describe.
    text_logs: Option<std::sync::Arc<Mutex<TextLogs>>>,
    /// Woken when the log has something to commit.
    log_wake: Notify,
    next_session: AtomicU64,
    /// Woken when a private-chat request is added, so that the expiry task re-reads the
    /// next deadline.
    requests_changed: Notify,
    /// Told when presence notices wait for [`Hub::pace_presence`] where none did.
    presence_queued: Notify,
}

/// Where and as whom an online user takes direct connections: the IP address their session
/// comes from, with the ports and the public key they announced at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAddrs {
    /// The private-chat listener.
    pub tcp: SocketAddr,
    /// The file-transfer socket.
    pub udp: SocketAddr,
    /// The key the client's direct links are authenticated with; the server vouches for it
    /// in every introduction.
    pub key: PublicKey,
    /// The address the client's sockets are bound to, when it differs from the one its
    /// session comes from (it is behind a NAT).
    pub local: Option<IpAddr>,
}

/// What one introduction gives both sides besides their addresses: the token and the
/// relay link.
#[derive(Debug, Clone, Copy)]
pub struct Meeting {
    /// The one-time secret of the link.
    pub token: Token,
    /// The relay to fall back on.
    pub relay: Option<LinkId>,
}

impl DirectAddrs {
    /// `user`'s private-chat listener introduced to the other side: where the server sees
    /// it, then on the local network.
    fn chat(&self, user: &str, meeting: Meeting) -> Introduction {
        let local = self.local.map(|ip| SocketAddr::new(ip, self.tcp.port()));
        Introduction {
            peer: user.to_owned(),
            addr: self.tcp,
            token: meeting.token,
            key: self.key,
            candidates: local.into_iter().collect(),
            relay: meeting.relay,
        }
    }

    /// `user`'s transfer socket introduced to the other side: its reflexive address (what
    /// the UDP endpoint saw: the NAT's real mapping), the session's address with the port it
    /// bound, and the local one.
    fn transfer(
        &self,
        user: &str,
        meeting: Meeting,
        reflexive: Option<SocketAddr>,
    ) -> Introduction {
        let addr = reflexive.unwrap_or(self.udp);
        let local = self.local.map(|ip| SocketAddr::new(ip, self.udp.port()));
        let mut candidates: Vec<SocketAddr> = Vec::new();
        for candidate in [Some(self.udp), local].into_iter().flatten() {
            if candidate != addr && !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
        Introduction {
            peer: user.to_owned(),
            addr,
            token: meeting.token,
            key: self.key,
            candidates,
            relay: meeting.relay,
        }
    }
}

/// A live session as the hub sees it.
pub struct Peer {
    /// Encoded frames for this session's socket.
    pub tx: InboxSender,
    /// When the session logged in.
    pub since: Timestamp,
    /// Unique id of this session (see [`Hub::new_session_id`]).
    pub session: u64,
    /// Where the client takes direct connections, if it announced it at login.
    pub direct: Option<DirectAddrs>,
    /// How messages reach this session.
    feed: Feed,
    /// The user's away message and who has been told it since it was set (`/away`).
    away: Option<Box<Away>>,
}

/// An away message, and the senders who have had it as an answer.
struct Away {
    message: String,
    told: HashSet<String>,
}

/// Most senders an away message is remembered as told to; past it, it is said again.
const AWAY_TOLD: usize = 1024;

impl Away {
    /// The answer for a direct message from `sender`: the message the first time only.
    fn answer(&mut self, sender: &str) -> Option<String> {
        if self.told.len() >= AWAY_TOLD {
            self.told.clear();
        }
        self.told.insert(sender.to_owned()).then(|| self.message.clone())
    }
}

/// How messages reach a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// The session reads the log itself; routing only notes the highest id routed to it.
    CatchingUp {
        /// The highest id routed to the session so far.
        routed: u64,
    },
    /// Messages after `from` are queued for the session.
    Live {
        /// The highest id the session had read from the log when it went live.
        from: u64,
    },
}

impl Peer {
    /// A peer, catching up, that takes no direct connections.
    pub fn new(tx: InboxSender, since: Timestamp, session: u64) -> Self {
        Self { tx, since, session, direct: None, feed: Feed::CatchingUp { routed: 0 }, away: None }
    }

    /// The same peer, taking direct connections at `direct`.
    pub fn with_direct(self, direct: Option<DirectAddrs>) -> Self {
        Self { direct, ..self }
    }

    /// Queues an event that is not a message; a full queue kicks the peer (the inbox
    /// signals it as too slow) and drops the frame. False if the session task is gone (it can
    /// only have died, as a live session leaves the hub before dropping its receiver).
    fn push(&mut self, frame: Bytes) -> bool {
        !matches!(self.tx.try_send((0, frame)), Err(TrySendError::Closed))
    }

    /// Queues an event that only matters to a session that goes on (presence, group members
    /// coming and going); one that cannot take it is on its way out anyway.
    fn push_ephemeral(&mut self, frame: Bytes) {
        let _ = self.tx.try_send((0, frame));
    }

    /// Hands message `id` to the session as its feed says: queued if live and new to it,
    /// noted if it is catching up. A session too slow to take it is kicked; the message
    /// stays in the log for its next login.
    fn offer(&mut self, id: u64, frame: &Bytes) {
        match &mut self.feed {
            Feed::CatchingUp { routed } => *routed = (*routed).max(id),
            Feed::Live { from } if id > *from => {
                let _ = self.tx.try_send((id, frame.clone()));
            }
            Feed::Live { .. } => {}
        }
    }
}

struct State {
    online: HashMap<String, Peer>,
    users: HashSet<String>,
    blocks: Blocks,
    groups: groups::Groups,
    requests: PendingRequests,
    log: LogState,
    /// Inboxes holding presence notices they have not been woken for (see [`PRESENCE_DELAY`]).
    presence_due: Vec<InboxSender>,
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
    /// Queues the notice of `user`'s `change` for everyone else online who is not blocked
    /// either way, without waking them: [`Hub::pace_presence`] does, a moment later. True if
    /// that task must be told (nothing was due before).
    fn announce(&mut self, user: &str, change: PresenceChange, at: Timestamp) -> bool {
        let Some(frame) = encode_event(Event::Presence { user: user.to_owned(), change, at })
        else {
            return false;
        };
        let was_idle = self.presence_due.is_empty();
        for (name, peer) in self.online.iter() {
            if name != user
                && !self.blocks.between(user, name)
                && peer.tx.push_later((0, frame.clone()))
            {
                self.presence_due.push(peer.tx.clone());
            }
        }
        was_idle && !self.presence_due.is_empty()
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
    /// A hub knowing these accounts, `(blocker, blocked)` pairs, group memberships and log
    /// positions, with nobody online, writing the log through `store`.
    pub fn new(
        users: impl IntoIterator<Item = String>,
        blocks: impl IntoIterator<Item = (String, String)>,
        members: impl IntoIterator<Item = MemberRecord>,
        start: LogStart,
        mailbox: Mailbox,
        store: StoreHandle,
    ) -> Self {
        let mut state = State {
            online: HashMap::new(),
            users: users.into_iter().collect(),
            blocks: Blocks::default(),
            groups: groups::Groups::from_records(members),
            requests: PendingRequests::default(),
            log: LogState::new(start, mailbox),
            presence_due: Vec::new(),
        };
        for (blocker, blocked) in blocks {
            state.blocks.0.entry(blocker).or_default().insert(blocked);
        }
        Self {
            state: Mutex::new(state),
            store,
            text_logs: None,
            log_wake: Notify::new(),
            next_session: AtomicU64::new(1),
            requests_changed: Notify::new(),
            presence_queued: Notify::new(),
        }
    }

    /// The same hub, also writing the log and who is online as text (`--text-logs`).
    pub fn with_text_logs(self, logs: TextLogs) -> Self {
        Self { text_logs: Some(std::sync::Arc::new(Mutex::new(logs))), ..self }
    }

    /// Queues a rewrite of the text user log, if there is one; called under the lock, so
    /// the rewrites reach the store thread in the order of the changes.
    fn log_users(&self, state: &State) {
        let Some(logs) = &self.text_logs else { return };
        let online: Vec<OnlineEntry> = state
            .online
            .iter()
            .map(|(user, p)| OnlineEntry {
                user: user.clone(),
                since: p.since,
                udp: p.direct.map(|d| d.udp),
            })
            .collect();
        let logs = logs.clone();
        drop(self.store.call(move |_| {
            logs.lock().unwrap_or_else(PoisonError::into_inner).users(online);
            Ok(())
        }));
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

    /// Makes `blocker` block (or, with `on == false`, no longer block) `blocked`, and queues
    /// the store write. Blocking also drops, silently, a private chat request `blocked` made
    /// to `blocker`: its end would otherwise tell `blocked` when `blocker` logs out. Blocking
    /// again is no error.
    pub fn set_block(&self, blocker: &str, blocked: &str, on: bool) -> Result<Stored, HubError> {
        let mut state = self.state();
        if blocker == blocked {
            return Err(HubError::SelfTarget);
        }
        if !state.users.contains(blocked) {
            return Err(HubError::UnknownUser(blocked.to_owned()));
        }
        let (a, b) = (blocker.to_owned(), blocked.to_owned());
        if on {
            state.blocks.0.entry(a.clone()).or_default().insert(b.clone());
            state.requests.take(blocked, blocker, Instant::now());
            // Already blocked is fine: `add_block` then changes nothing.
            return Ok(persist(&self.store, "saving a block", move |s| {
                s.add_block(&a, &b).map(|_| true)
            }));
        }
        if !state.blocks.0.get_mut(blocker).is_some_and(|set| set.remove(blocked)) {
            return Err(HubError::NotBlocked(b));
        }
        Ok(persist(&self.store, "removing a block", move |s| s.remove_block(&a, &b)))
    }

    /// Marks online `name` away with `message`, or back with `None`. Being away lasts until
    /// the user says they are back or logs out.
    pub fn set_away(&self, name: &str, message: Option<String>) {
        if let Some(peer) = self.state().online.get_mut(name) {
            peer.away = message.map(|message| Box::new(Away { message, told: HashSet::new() }));
        }
    }

    /// Whether `blocker` blocks `blocked`.
    pub fn blocks(&self, blocker: &str, blocked: &str) -> bool {
        self.state().blocks.has(blocker, blocked)
    }

    /// Puts `name` online, catching up, and tells the others; refused if `name` is online
    /// already. Returns where its catch-up starts and the pending group invitations: any
    /// made later are pushed to the session.
    pub fn join(&self, name: &str, peer: Peer) -> Result<Joined, ErrorReply> {
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
        if state.announce(name, PresenceChange::LoggedIn, since) {
            self.presence_queued.notify_one();
        }
        self.log_users(&state);
        let (cursor, waiting) = Hub::cursor_of(&state, name);
        Ok(Joined { invitations: state.groups.invitations(name), cursor, waiting })
    }

    /// Takes session `session` of `name` offline, announcing `change` if given; false if it
    /// was not online. What was queued for it is dropped: the log keeps every message.
    pub fn leave(
        &self,
        name: &str,
        session: u64,
        change: Option<PresenceChange>,
        at: Timestamp,
    ) -> bool {
        let mut state = self.state();
        if state.online.get(name).is_none_or(|p| p.session != session) {
            return false;
        }
        state.online.remove(name);
        self.log_users(&state);
        if let Some(change) = change {
            if state.announce(name, change, at) {
                self.presence_queued.notify_one();
            }
        }
        // `name` is offline already, so only the other side of each request hears of it.
        for (from, to) in state.requests.forget(name) {
            state.end_request(&from, &to, RequestEnd::PeerLeft);
        }
        true
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
        meeting: Meeting,
    ) -> Result<Introduction, ErrorReply> {
        let mut state = self.state();
        if !state.requests.take(requester, target, Instant::now()) {
            return Err(no_such_request(requester));
        }
        // Logging out drops a user's requests under this lock, so both are online here.
        let (theirs, mine) = (state.direct_of(requester, false)?, state.direct_of(target, true)?);
        state.push_event(requester, Event::PrivateAccepted(mine.chat(target, meeting)));
        Ok(theirs.chat(requester, meeting))
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

    /// Wakes the sessions that presence notices were queued for, [`PRESENCE_DELAY`] after the
    /// first of them, until `stop`. In a burst of logins each session thus writes the notices
    /// of many logins at once: one write per session per delay, where one per login made
    /// 5,000 logins cost 12.5 million writes.
    pub async fn pace_presence(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.presence_queued.notified() => {}
            }
            tokio::time::sleep(PRESENCE_DELAY).await;
            let due = std::mem::take(&mut self.state().presence_due);
            for tx in due {
                tx.wake();
            }
        }
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
        meeting: Meeting,
        reflexive: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Result<Introduction, ErrorReply> {
        let mut state = self.state();
        check_target(&state, from, to)?;
        let theirs = state.direct_of(to, false)?;
        let mine = state.direct_of(from, true)?;
        let sender = Box::new(mine.transfer(from, meeting, reflexive(from)));
        if !state.push_event(to, Event::FileOffer { from: sender, name, size }) {
            return Err(ErrorReply::new(ErrorCode::Offline, format!("{to} is not online")));
        }
        Ok(theirs.transfer(to, meeting, reflexive(to)))
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

    /// Passes bytes of a private chat relayed on `link` to `to`, if online; dropped if their
    /// queue is full (a chat is not worth kicking a session for: its seal notices the gap).
    pub fn relay_chat(&self, to: &str, link: LinkId, data: Vec<u8>) {
        let mut state = self.state();
        if let Some(peer) = state.online.get_mut(to) {
            if let Some(frame) = encode_event(Event::RelayedChat { link, data }) {
                peer.push_ephemeral(frame);
            }
        }
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
            .map(|(name, peer)| OnlineUser {
                name: name.clone(),
                since: peer.since,
                away: peer.away.as_ref().map(|a| a.message.clone()),
            })
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

/// Checks that `from` may address `to`: `to` exists, is someone else, and does not block `from`.
fn check_target(state: &State, from: &str, to: &str) -> Result<(), HubError> {
    if from == to {
        return Err(HubError::SelfTarget);
    }
    if !state.users.contains(to) {
        return Err(HubError::UnknownUser(to.to_owned()));
    }
    if state.blocks.has(to, from) {
        return Err(HubError::Blocked(to.to_owned()));
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
pub(crate) mod tests {
    use super::*;
    use crate::server::inbox::{inbox, InboxReceiver, Signal};
    use crate::store::{SqliteStore, To};

    /// A hub over an in-memory store knowing alice, bob and carol, with mailboxes of `room`.
    pub(crate) fn hub_with(room: u64) -> std::sync::Arc<Hub> {
        let mut db = SqliteStore::open(":memory:").unwrap();
        let users = ["alice", "bob", "carol"].map(String::from);
        for user in &users {
            crate::store::Store::create_user(&mut db, user, "hash", 0).unwrap();
        }
        let store = StoreHandle::spawn(db);
        let mailbox = Mailbox { messages: room, bytes: 0 };
        let hub = std::sync::Arc::new(Hub::new(users, [], [], LogStart::default(), mailbox, store));
        let writer = hub.clone();
        tokio::spawn(async move { writer.write_log().await });
        hub
    }

    pub(crate) fn join(hub: &Hub, name: &str, queue: usize) -> (InboxReceiver, u64) {
        let (tx, rx) = inbox(queue);
        let session = hub.new_session_id();
        hub.join(name, Peer::new(tx, 0, session)).unwrap();
        (rx, session)
    }

    async fn send(hub: &Hub, from: &str, to: &str, text: &str) -> Result<log::Sent, HubError> {
        hub.send(from, To::User(to.into()), text.into(), None, 0)?.outcome().await
    }

    fn ids(rx: &InboxReceiver) -> Vec<u64> {
        rx.take().into_iter().map(|(id, _)| id).filter(|id| *id != 0).collect()
    }

    #[tokio::test]
    async fn a_catching_up_session_is_sent_nothing_until_it_has_read_past_what_was_routed() {
        let hub = hub_with(0);
        let (rx, session) = join(&hub, "bob", 16);
        let sent = send(&hub, "alice", "bob", "during catch-up").await.unwrap();
        assert!(matches!(sent, log::Sent::Direct { to, online: true, .. } if to == "bob"));
        assert!(ids(&rx).is_empty(), "not queued while catching up");
        assert!(!hub.go_live("bob", session, 0), "message 1 was routed and not read yet");
        assert!(hub.go_live("bob", session, 1), "read from the log: live after it");
        send(&hub, "alice", "bob", "live").await.unwrap();
        assert_eq!(ids(&rx), [2]);
        assert!(!hub.go_live("bob", session + 1, 2), "another session's switch is refused");
    }

    #[tokio::test]
    async fn a_full_queue_kicks_and_drops_while_the_log_keeps_everything() {
        let hub = hub_with(0);
        let (rx, session) = join(&hub, "bob", 2);
        assert!(hub.go_live("bob", session, 0));
        for i in 0..5 {
            send(&hub, "alice", "bob", &format!("m{i}")).await.unwrap();
        }
        assert_eq!(rx.signal(), Some(Signal::TooSlow));
        assert_eq!(ids(&rx), [1, 2]);
        assert!(hub.leave("bob", session, None, 0));
        let (cursor, waiting) = Hub::cursor_of(&hub.state(), "bob");
        assert_eq!((cursor, waiting.count), (0, 5), "nothing acknowledged: all five wait");
        let page = hub.store.call(|s| s.log_after("bob", 0, &[], 10, 1 << 20)).await.unwrap();
        assert_eq!(page.len(), 5);
    }

    #[tokio::test]
    async fn acknowledgements_move_the_cursor_and_free_the_mailbox() {
        let hub = hub_with(2);
        send(&hub, "alice", "bob", "one").await.unwrap();
        send(&hub, "carol", "bob", "two").await.unwrap();
        assert_eq!(
            send(&hub, "alice", "bob", "three").await,
            Err(HubError::MailboxFull("bob".into()))
        );
        hub.acked("bob", 1, Backlog { count: 1, bytes: 3 });
        send(&hub, "alice", "bob", "three").await.unwrap();
        let (tx, _rx) = inbox(4);
        let joined = hub.join("bob", Peer::new(tx, 0, 99)).unwrap();
        assert_eq!((joined.cursor, joined.waiting.count), (1, 2));
    }

    #[tokio::test]
    async fn a_repeated_send_id_shares_the_first_outcome_and_makes_no_second_row() {
        let hub = hub_with(0);
        let (rx, session) = join(&hub, "bob", 16);
        assert!(hub.go_live("bob", session, 0));
        let first = hub.send("alice", To::User("bob".into()), "x".into(), Some(9), 0).unwrap();
        let again = hub.send("alice", To::User("bob".into()), "x".into(), Some(9), 1).unwrap();
        assert_eq!(first.outcome().await, again.outcome().await);
        assert_eq!(ids(&rx), [1]);
        let other = hub.send("alice", To::User("bob".into()), "y".into(), Some(10), 2).unwrap();
        other.outcome().await.unwrap();
        assert_eq!(ids(&rx), [2]);
    }

    #[tokio::test]
    async fn one_session_per_user_unless_the_old_one_died() {
        let hub = hub_with(0);
        let (rx, _) = join(&hub, "bob", 4);
        let (tx, _rx2) = inbox(4);
        let err = hub.join("bob", Peer::new(tx.clone(), 0, 99)).err().unwrap();
        assert_eq!(err.code, ErrorCode::AlreadyLoggedIn);
        drop(rx); // the session task is gone without leaving
        hub.join("bob", Peer::new(tx, 0, 99)).unwrap();
    }

    #[tokio::test]
    async fn shutdown_reaches_every_online_session() {
        let hub = hub_with(0);
        let (alice, _) = join(&hub, "alice", 4);
        let (bob, _) = join(&hub, "bob", 4);
        assert_eq!(bob.signal(), None);
        hub.shut_down_all();
        assert_eq!(alice.signal(), Some(Signal::Shutdown));
        assert_eq!(bob.signal(), Some(Signal::Shutdown));
    }

    #[tokio::test]
    async fn leave_of_an_old_session_does_not_remove_a_new_one() {
        let hub = hub_with(0);
        let (_rx, session) = join(&hub, "bob", 4);
        assert!(!hub.leave("bob", session + 1000, None, 0));
        assert!(hub.is_online("bob"));
    }

    #[tokio::test]
    async fn the_log_writer_commits_what_is_left_when_closed() {
        let hub = hub_with(0);
        let accepted = hub.send("alice", To::User("bob".into()), "last".into(), None, 0).unwrap();
        hub.close_log();
        accepted.outcome().await.unwrap();
        let page = hub.store.call(|s| s.log_after("bob", 0, &[], 10, 1 << 20)).await.unwrap();
        assert_eq!(page[0].body, "last");
    }
}
