//! The message log as the hub keeps it: ids, the group commit, cursors, quotas and repeats.
//!
//! A send is checked and given its id under the hub's lock ([`Hub::send`]), which also
//! appends it to the batch waiting for the next commit, so ids and the batch are in the same
//! order. One writer task ([`Hub::write_log`]) commits the batch, together with the cursors
//! moved since the last commit, in one store transaction; sends that arrive while a commit
//! runs wait for the next one, so a send never waits longer than the commit in progress plus
//! its own. Only after the commit does the writer route the batch, in id order, under the
//! lock: a recipient is never sent a message that is not in the log, and every session sees
//! increasing ids. Then each sender learns the outcome.
//!
//! Routing to a session depends on its feed (see [`Peer`]): a live session gets the frames of
//! messages after the point where it went live; one that is still catching up from the log
//! gets nothing queued, and the hub notes the highest id routed to it instead, so that the
//! session goes live only once it has read past it ([`Hub::go_live`]).
//!
//! A recipient's backlog (messages not acknowledged yet) is counted here: a send that would
//! take any recipient past the mailbox limits is refused whole. A group message is refused
//! when any member who would get it is full: it is one row for all of them, and storing it
//! for some members only cannot be expressed (see docs/ARCHITECTURE.md).
//!
//! Repeats: each user's last sends (at most [`RECENT_SENDS`], none older than
//! [`REPEAT_WINDOW_MS`]) are remembered with their outcome, and a repeat of a send id gets the
//! same outcome without a second row. Across a restart, the store's unique index on
//! `(sender, send_id)` leaves a repeat out of the log, and it is not routed.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use super::{check_target, encode_event, Feed, Hub, HubError, State};
use crate::protocol::{Event, Timestamp};
use crate::store::{Backlog, LogEntry, StoreResult, To};

/// How long a send id is remembered in memory for repeats.
pub const REPEAT_WINDOW_MS: Timestamp = 10 * 60 * 1000;
/// How many of one user's recent sends are remembered in memory for repeats.
pub const RECENT_SENDS: usize = 256;
/// How long sends are refused once a commit found the store full, before one is tried again.
pub const FULL_RETRY: Duration = Duration::from_secs(5);

/// How many messages, and bytes of text, may wait for one recipient; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    /// Messages not yet acknowledged.
    pub messages: u64,
    /// Bytes of their text.
    pub bytes: u64,
}

impl Mailbox {
    fn full(&self, backlog: Backlog, size: u64) -> bool {
        (self.messages > 0 && backlog.count >= self.messages)
            || (self.bytes > 0 && backlog.bytes + size > self.bytes)
    }
}

/// What the log holds at start-up, read from the store.
#[derive(Debug, Default)]
pub struct LogStart {
    /// The highest id handed out so far.
    pub last_id: u64,
    /// Each user's acknowledged position.
    pub cursors: Vec<(String, u64)>,
    /// What each user has waiting.
    pub backlogs: Vec<(String, Backlog)>,
}

/// What became of a send, as its sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A direct message; `online` if the recipient had a session when it was routed.
    Direct {
        /// The recipient.
        to: String,
        /// Whether it went to a live session (else it waits in the log).
        online: bool,
        /// When the server accepted it: the time its recipients see.
        sent_at: Timestamp,
    },
    /// A group message.
    Group {
        /// The group.
        group: String,
        /// Members online when it was routed.
        delivered: u32,
        /// Members it waits for in the log.
        stored: u32,
        /// Members who block the sender.
        skipped: u32,
        /// When the server accepted it: the time its recipients see.
        sent_at: Timestamp,
    },
}

/// A commit handed to the store: what it gives back, and who waits for it.
struct Commit {
    done: std::pin::Pin<Box<dyn std::future::Future<Output = CommitResult> + Send>>,
    waiting: Vec<Waiting>,
    batch: usize,
    began: std::time::Instant,
}

/// The batch and cursors a commit took back from the store, and whether each was stored.
type CommitResult = StoreResult<(Vec<LogEntry>, Vec<(String, u64)>, StoreResult<Vec<bool>>)>;

/// A sender waiting for its message's outcome.
type Waiting = watch::Sender<Option<Result<Sent, HubError>>>;

/// A send that the hub accepted: its outcome is known once it has been committed and routed.
pub struct Accepted(watch::Receiver<Option<Result<Sent, HubError>>>);

impl Accepted {
    /// Waits until the message is committed and routed (or its commit failed).
    pub async fn outcome(mut self) -> Result<Sent, HubError> {
        match self.0.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(HubError::LogClosed)),
            Err(_) => Err(HubError::LogClosed),
        }
    }
}

/// The log's part of the hub's state.
pub(super) struct LogState {
    last_id: u64,
    batch: Vec<LogEntry>,
    waiting: Vec<watch::Sender<Option<Result<Sent, HubError>>>>,
    cursors: HashMap<String, u64>,
    moved: HashMap<String, u64>,
    backlogs: HashMap<String, Backlog>,
    recent: HashMap<String, VecDeque<Recent>>,
    mailbox: Mailbox,
    closing: bool,
    /// Until when sends are refused because the last commit found the store full.
    full_until: Option<Instant>,
}

struct Recent {
    send_id: u64,
    at: Timestamp,
    outcome: watch::Receiver<Option<Result<Sent, HubError>>>,
}

impl LogState {
    pub(super) fn new(start: LogStart, mailbox: Mailbox) -> Self {
        Self {
            last_id: start.last_id,
            batch: Vec::new(),
            waiting: Vec::new(),
            cursors: start.cursors.into_iter().collect(),
            moved: HashMap::new(),
            backlogs: start.backlogs.into_iter().collect(),
            recent: HashMap::new(),
            mailbox,
            closing: false,
            full_until: None,
        }
    }

    /// The last id handed out.
    pub(super) fn last_id(&self) -> u64 {
        self.last_id
    }

    fn repeat(&self, from: &str, send_id: u64) -> Option<Accepted> {
        let recent = self.recent.get(from)?;
        let found = recent.iter().find(|r| r.send_id == send_id)?;
        Some(Accepted(found.outcome.clone()))
    }

    fn remember(&mut self, from: &str, send_id: u64, at: Timestamp, outcome: &Accepted) {
        let recent = self.recent.entry(from.to_owned()).or_default();
        while recent.front().is_some_and(|r| r.at + REPEAT_WINDOW_MS < at)
            || recent.len() >= RECENT_SENDS
        {
            recent.pop_front();
        }
        recent.push_back(Recent { send_id, at, outcome: outcome.0.clone() });
    }
}

impl Hub {
    /// Accepts a message from `from` to a user or group, to be committed with the next
    /// batch; refused (with nothing stored) if the target checks fail or a recipient's
    /// mailbox is full. A repeat of a recent `send_id` of `from` gets the first send's outcome.
    pub fn send(
        &self,
        from: &str,
        to: To,
        text: String,
        send_id: Option<u64>,
        now: Timestamp,
    ) -> Result<Accepted, HubError> {
        let mut guard = self.state();
        let state = &mut *guard;
        if let Some(repeat) = send_id.and_then(|id| state.log.repeat(from, id)) {
            return Ok(repeat);
        }
        if state.log.full_until.is_some_and(|until| Instant::now() < until) {
            return Err(HubError::StoreFull);
        }
        let (sent_at, recipients) = match &to {
            To::User(user) => {
                check_target(state, from, user)?;
                (now, vec![user.clone()])
            }
            To::Group(group) => state.groups.send_to(&state.blocks, group, from, now)?,
        };
        let size = text.len() as u64;
        let log = &mut state.log;
        if let Some(full) = recipients
            .iter()
            .find(|r| log.mailbox.full(log.backlogs.get(*r).copied().unwrap_or_default(), size))
        {
            return Err(HubError::MailboxFull(full.clone()));
        }
        for r in recipients {
            let backlog = log.backlogs.entry(r).or_default();
            backlog.count += 1;
            backlog.bytes += size;
        }
        log.last_id += 1;
        let entry =
            LogEntry { id: log.last_id, sender: from.to_owned(), to, body: text, sent_at, send_id };
        let (done, outcome) = watch::channel(None);
        let accepted = Accepted(outcome);
        if let Some(send_id) = send_id {
            log.remember(from, send_id, now, &accepted);
        }
        log.batch.push(entry);
        log.waiting.push(done);
        drop(guard);
        self.log_wake.notify_one();
        Ok(accepted)
    }

    /// Where `name` resumes: the acknowledged position and what waits after it.
    pub(super) fn cursor_of(state: &State, name: &str) -> (u64, Backlog) {
        let cursor = state.log.cursors.get(name).copied().unwrap_or(0);
        (cursor, state.log.backlogs.get(name).copied().unwrap_or_default())
    }

    /// Session `session` of `name` has had everything up to `up_to` acknowledged, `acked`
    /// of it since the last call: the cursor moves (persisted with the next commit).
    pub fn acked(&self, name: &str, up_to: u64, acked: Backlog) {
        let mut state = self.state();
        let log = &mut state.log;
        let cursor = log.cursors.entry(name.to_owned()).or_default();
        if up_to <= *cursor {
            return;
        }
        *cursor = up_to;
        log.moved.insert(name.to_owned(), up_to);
        if let Some(backlog) = log.backlogs.get_mut(name) {
            backlog.count = backlog.count.saturating_sub(acked.count);
            backlog.bytes = backlog.bytes.saturating_sub(acked.bytes);
        }
        drop(state);
        self.log_wake.notify_one();
    }

    /// Counts again what `name` has waiting, from the log itself. The running count only
    /// grows with sends and shrinks with acknowledgements, so a block, an unblock or leaving
    /// a group (which change what the catch-up will hand out) would leave it wrong until the
    /// next start: this runs after each. Messages accepted but not committed yet when the
    /// count runs are missed, so it can err low by a batch, never high. A count overtaken by
    /// an acknowledgement is thrown away: the acknowledgement has already moved the old one.
    pub async fn recount(&self, name: &str) {
        let cursor = Self::cursor_of(&self.state(), name).0;
        let user = name.to_owned();
        let counted = match self.store.call(move |s| s.backlog_of(&user, cursor)).await {
            Ok(counted) => counted,
            Err(e) => return tracing::warn!(user = name, "cannot count the waiting messages: {e}"),
        };
        let mut state = self.state();
        if Self::cursor_of(&state, name).0 == cursor {
            state.log.backlogs.insert(name.to_owned(), counted);
        }
    }

    /// Switches session `session` of `name` from catching up to live, if it has been sent
    /// everything routed to it so far (`sent` is the highest id it has been sent). Messages
    /// after `sent` are then queued for it; false if it must read the log again first.
    pub fn go_live(&self, name: &str, session: u64, sent: u64) -> bool {
        let mut state = self.state();
        let Some(peer) = state.online.get_mut(name).filter(|p| p.session == session) else {
            return false;
        };
        match peer.feed {
            Feed::CatchingUp { routed } if routed <= sent => {
                peer.feed = Feed::Live { from: sent };
                true
            }
            Feed::CatchingUp { .. } => false,
            Feed::Live { .. } => true,
        }
    }

    /// [`Hub::go_live`] whatever was routed: for a session whose reads of the log keep
    /// coming back empty although a newer message was routed to it, which can only be one
    /// the log does not give it (a block set between the send and its routing).
    pub fn force_live(&self, name: &str, session: u64, sent: u64) -> bool {
        let mut state = self.state();
        let Some(peer) = state.online.get_mut(name).filter(|p| p.session == session) else {
            return false;
        };
        if let Feed::CatchingUp { routed } = peer.feed {
            tracing::warn!(user = name, routed, sent, "going live past a message not in the log");
            peer.feed = Feed::Live { from: sent.max(routed) };
        }
        true
    }

    /// The groups `name` has joined, each with the last log id before the join.
    pub fn memberships(&self, name: &str) -> Vec<(String, u64)> {
        self.state().groups.memberships(name)
    }

    /// Commits and routes the log until [`Hub::close_log`], then commits what is left.
    ///
    /// The next batch goes to the store as soon as one commit is done, before that one is
    /// routed: the store thread commits while the event loop routes and answers, instead of
    /// each waiting for the other.
    pub async fn write_log(&self) {
        let mut next = self.start_commit();
        loop {
            let Some(commit) = next.take() else {
                // Closed, and what was taken after the close is committed: done. (What a
                // failed last commit gave back is not tried again: the store is failing.)
                if self.state().log.closing {
                    return;
                }
                self.log_wake.notified().await;
                next = self.start_commit();
                continue;
            };
            let Commit { done, waiting, batch, began } = commit;
            let committed = done.await;
            next = self.start_commit();
            tracing::trace!(batch, took = ?began.elapsed(), "committed");
            self.finish_commit(committed, waiting);
        }
    }

    /// Takes the batch and the moved cursors and queues their commit; `None` if there is
    /// nothing to commit.
    fn start_commit(&self) -> Option<Commit> {
        let (entries, waiting, cursors) = {
            let mut state = self.state();
            let log = &mut state.log;
            if log.batch.is_empty() && log.moved.is_empty() {
                return None;
            }
            let cursors: Vec<(String, u64)> = log.moved.drain().collect();
            (std::mem::take(&mut log.batch), std::mem::take(&mut log.waiting), cursors)
        };
        let text_logs = self.text_logs.clone();
        let batch = entries.len();
        let done = self.store.call(move |s| {
            let stored = s.append_log(&entries, &cursors);
            if let (Some(logs), Ok(stored)) = (text_logs, &stored) {
                let committed = entries.iter().zip(stored).filter(|(_, &s)| s);
                let mut logs = logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                logs.messages(committed.map(|(e, _)| e));
            }
            Ok((entries, cursors, stored))
        });
        Some(Commit { done: Box::pin(done), waiting, batch, began: std::time::Instant::now() })
    }

    /// Routes a committed batch in id order and answers its senders; or, if the commit
    /// failed, gives back what the batch counted and tells the senders why.
    fn finish_commit(&self, committed: CommitResult, waiting: Vec<Waiting>) {
        let (entries, stored) = match committed {
            Ok((entries, _, Ok(stored))) => (entries, stored),
            Ok((entries, cursors, Err(e))) => {
                tracing::error!(lost = waiting.len(), "cannot commit the message log: {e}");
                let error =
                    if e.is_full() { HubError::StoreFull } else { HubError::Store(e.to_string()) };
                {
                    let mut state = self.state();
                    // Nothing of the batch waits for anyone: it was not stored.
                    for entry in &entries {
                        state.unaccount(entry);
                    }
                    let log = &mut state.log;
                    if e.is_full() {
                        // Sends are refused at once for a while, then tried again.
                        log.full_until = Some(Instant::now() + FULL_RETRY);
                    }
                    // The cursors go with the next commit (acknowledgements need no room).
                    for (user, cursor) in cursors {
                        let moved = log.moved.entry(user).or_insert(cursor);
                        *moved = (*moved).max(cursor);
                    }
                }
                for done in waiting {
                    let _ = done.send(Some(Err(error.clone())));
                }
                return;
            }
            Err(e) => {
                tracing::error!(lost = waiting.len(), "cannot commit the message log: {e}");
                for done in waiting {
                    let _ = done.send(Some(Err(HubError::Store(e.to_string()))));
                }
                return;
            }
        };
        // Encoded before taking the lock, which only routes.
        let frames: Vec<Option<Bytes>> = entries
            .iter()
            .zip(&stored)
            .map(|(entry, &stored)| if stored { encode_event(live_event(entry)) } else { None })
            .collect();
        let outcomes: Vec<Sent> = {
            let mut state = self.state();
            entries
                .iter()
                .zip(&frames)
                .map(|(entry, frame)| state.route(entry, frame.as_ref()))
                .collect()
        };
        for (done, outcome) in waiting.into_iter().zip(outcomes) {
            let _ = done.send(Some(Ok(outcome)));
        }
    }

    /// Makes [`Hub::write_log`] commit what is queued and return.
    pub fn close_log(&self) {
        self.state().log.closing = true;
        self.log_wake.notify_one();
    }
}

impl State {
    /// Takes back what `entry` added to its recipients' backlogs: it was not stored.
    fn unaccount(&mut self, entry: &LogEntry) {
        let size = entry.body.len() as u64;
        let recipients = match &entry.to {
            To::User(to) => vec![to.clone()],
            To::Group(group) => self
                .groups
                .joined_with_ids(group)
                .filter(|(m, _)| **m != entry.sender && !self.blocks.has(m, &entry.sender))
                .map(|(m, _)| m.clone())
                .collect(),
        };
        for r in recipients {
            if let Some(backlog) = self.log.backlogs.get_mut(&r) {
                backlog.count = backlog.count.saturating_sub(1);
                backlog.bytes = backlog.bytes.saturating_sub(size);
            }
        }
    }

    /// Routes a committed message to the sessions of its recipients; `frame` is `None` for a
    /// repeat that the store left out (it is not routed again, and no longer waits for
    /// anyone).
    fn route(&mut self, entry: &LogEntry, frame: Option<&Bytes>) -> Sent {
        if frame.is_none() {
            self.unaccount(entry);
        }
        match &entry.to {
            To::User(to) => {
                // Blocked since it was sent: the log does not give it to `to` either.
                let blocked = self.blocks.has(to, &entry.sender);
                let peer = self.online.get_mut(to);
                let online = peer.is_some();
                let mut away = None;
                if let (Some(peer), Some(frame), false) = (peer, frame, blocked) {
                    peer.offer(entry.id, frame);
                    away = peer.away.as_deref_mut().and_then(|a| a.answer(&entry.sender));
                }
                if let Some(message) = away {
                    self.push_event(&entry.sender, Event::Away { user: to.clone(), message });
                }
                Sent::Direct { to: to.clone(), online, sent_at: entry.sent_at }
            }
            To::Group(group) => {
                let (mut delivered, mut stored, mut skipped) = (0, 0, 0);
                for (member, joined_id) in self.groups.joined_with_ids(group) {
                    if *member == entry.sender || joined_id >= entry.id {
                        continue;
                    }
                    if self.blocks.has(member, &entry.sender) {
                        skipped += 1;
                        continue;
                    }
                    match self.online.get_mut(member) {
                        Some(peer) => {
                            delivered += 1;
                            if let Some(frame) = frame {
                                peer.offer(entry.id, frame);
                            }
                        }
                        None => stored += 1,
                    }
                }
                Sent::Group {
                    group: group.clone(),
                    delivered,
                    stored,
                    skipped,
                    sent_at: entry.sent_at,
                }
            }
        }
    }
}

/// The event that carries a log entry to a live session.
fn live_event(entry: &LogEntry) -> Event {
    let (id, from, text, sent_at) =
        (entry.id, entry.sender.clone(), entry.body.clone(), entry.sent_at);
    match &entry.to {
        To::User(_) => Event::Message { id, from, text, sent_at, offline: false },
        To::Group(group) => {
            Event::GroupMessage { id, group: group.clone(), from, text, sent_at, offline: false }
        }
    }
}
