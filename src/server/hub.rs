//! The routing table: who is online, who exists, who blocks whom.
//!
//! Sessions share one [`Hub`]. Each online user has a bounded queue of encoded frames that
//! its session task drains onto the socket; routing a message is a lookup and a `try_send`
//! under a short lock, and a fan-out encodes its frame once and shares the bytes. A session
//! whose queue is full is not waited for: it is kicked (its `kick` token is cancelled) and
//! what could not be queued takes the offline path, so one slow reader never stalls anyone.
//!
//! Accounts and blocks are cached here from the store at start-up and written through by
//! the commands that change them; the store stays the durable copy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    encode_frame, ErrorCode, ErrorReply, Event, OnlineUser, PresenceChange, ServerMessage,
    Timestamp,
};

/// Shared routing state.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    next_session: AtomicU64,
}

/// A live session as the hub sees it.
pub struct Peer {
    /// Encoded frames for this session's socket.
    pub tx: mpsc::Sender<Bytes>,
    /// When the session logged in.
    pub since: Timestamp,
    /// Unique id of this session (see [`Hub::new_session_id`]).
    pub session: u64,
    /// Cancelled to make the session end because it reads too slowly.
    pub kick: CancellationToken,
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
    /// blocker -> the users they block.
    blocks: HashMap<String, HashSet<String>>,
}

impl State {
    fn blocks(&self, blocker: &str, blocked: &str) -> bool {
        self.blocks.get(blocker).is_some_and(|set| set.contains(blocked))
    }

    /// Either of the two blocks the other.
    fn estranged(&self, a: &str, b: &str) -> bool {
        self.blocks(a, b) || self.blocks(b, a)
    }

    /// Announces `user`'s presence change to everyone online who has no block with them.
    fn announce(&self, user: &str, change: PresenceChange, at: Timestamp) {
        let Some(frame) = encode_event(Event::Presence { user: user.to_owned(), change, at })
        else {
            return;
        };
        for (name, peer) in &self.online {
            if name != user && !self.estranged(user, name) {
                push(peer, frame.clone());
            }
        }
    }
}

impl Hub {
    /// A hub knowing these accounts and `(blocker, blocked)` pairs, with nobody online.
    pub fn new(
        users: impl IntoIterator<Item = String>,
        blocks: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut state = State { users: users.into_iter().collect(), ..State::default() };
        for (blocker, blocked) in blocks {
            state.blocks.entry(blocker).or_default().insert(blocked);
        }
        Self { state: Mutex::new(state), next_session: AtomicU64::new(1) }
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
    pub fn set_block(&self, blocker: &str, blocked: &str, on: bool) {
        let mut state = self.state();
        if on {
            state.blocks.entry(blocker.to_owned()).or_default().insert(blocked.to_owned());
        } else if let Some(set) = state.blocks.get_mut(blocker) {
            set.remove(blocked);
        }
    }

    /// Whether `blocker` blocks `blocked`.
    pub fn blocks(&self, blocker: &str, blocked: &str) -> bool {
        self.state().blocks(blocker, blocked)
    }

    /// Checks that `from` may address `to`: `to` exists, is someone else, and does not block `from`.
    pub fn check_target(&self, from: &str, to: &str) -> Result<(), ErrorReply> {
        check_target(&self.state(), from, to)
    }

    /// Puts `name` online and tells the others; refused if `name` is online already.
    pub fn join(&self, name: &str, peer: Peer) -> Result<(), ErrorReply> {
        let mut state = self.state();
        if state.online.contains_key(name) {
            return Err(ErrorReply::new(
                ErrorCode::AlreadyLoggedIn,
                format!("{name} is already logged in from another session"),
            ));
        }
        let since = peer.since;
        state.online.insert(name.to_owned(), peer);
        state.announce(name, PresenceChange::LoggedIn, since);
        Ok(())
    }

    /// Takes session `session` of `name` offline, announcing `change` if given.
    pub fn leave(&self, name: &str, session: u64, change: Option<PresenceChange>, at: Timestamp) {
        let mut state = self.state();
        if state.online.get(name).is_none_or(|p| p.session != session) {
            return;
        }
        state.online.remove(name);
        if let Some(change) = change {
            state.announce(name, change, at);
        }
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
        let state = self.state();
        check_target(&state, from, to)?;
        match state.online.get(to) {
            Some(peer) if push(peer, frame) => Ok(Routed::Online),
            _ => Ok(Routed::Offline(offline())),
        }
    }

    /// Sends a broadcast frame to everyone online but `from` and those blocking `from`.
    /// Returns `(delivered, skipped)`.
    pub fn broadcast(&self, from: &str, frame: Bytes) -> (u32, u32) {
        let state = self.state();
        let (mut delivered, mut skipped) = (0, 0);
        for (name, peer) in &state.online {
            if name == from {
                continue;
            }
            if state.blocks(name, from) || !push(peer, frame.clone()) {
                skipped += 1;
            } else {
                delivered += 1;
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
            .filter(|(name, _)| *name != viewer && !state.blocks(name, viewer))
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

fn check_target(state: &State, from: &str, to: &str) -> Result<(), ErrorReply> {
    if from == to {
        return Err(ErrorReply::new(ErrorCode::SelfTarget, "you cannot do that to yourself"));
    }
    if !state.users.contains(to) {
        return Err(ErrorReply::new(ErrorCode::UnknownUser, format!("there is no user {to}")));
    }
    if state.blocks(to, from) {
        return Err(ErrorReply::new(ErrorCode::BlockedByRecipient, format!("{to} has blocked you")));
    }
    Ok(())
}

/// Encodes an event frame; an event that cannot be encoded is logged and dropped.
pub fn encode_event(event: Event) -> Option<Bytes> {
    encode_frame(&ServerMessage::Event(event))
        .inspect_err(|e| tracing::error!("cannot encode an event: {e}"))
        .ok()
}

/// Queues `frame` for `peer`; a full queue kicks the peer. False if nothing was queued.
fn push(peer: &Peer, frame: Bytes) -> bool {
    match peer.tx.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            peer.kick.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
