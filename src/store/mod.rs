//! Durable state: accounts, blocks, groups, the message log, delivery cursors and login
//! history. No networking, and no wire types: the server maps these to the protocol's.
//!
//! [`Store`] is the small synchronous interface a backend implements; [`SqliteStore`] is the
//! embedded default. The server never calls a backend from an async worker thread: it goes
//! through a [`StoreHandle`], which owns the backend on a dedicated thread and runs one job at
//! a time, so each call is a short message round trip for the async side and the backend
//! needs no locking of its own. Every write has committed by the time its call returns.
//!
//! The message log ([`Store::append_log`]) is the history, the offline mailbox and the
//! catch-up source at once: every relayed direct and group message is one row with an id the
//! server assigned (a group message is stored once), and each user's cursor says up to which
//! id they have acknowledged delivery. What lies after a user's cursor, addressed to them or
//! to a group they joined before it was sent, is what they have not had yet
//! ([`Store::log_after`]).

mod handle;
pub mod lock;
mod sqlite;

pub use handle::StoreHandle;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// Milliseconds since the Unix epoch, UTC (the store's own name for the server's timestamps).
pub type Millis = i64;

/// A failure of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer Confab.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The database directory could not be created.
    #[error("cannot create the database directory: {0}")]
    Io(#[from] std::io::Error),
    /// The store thread has stopped.
    #[error("the store has shut down")]
    Closed,
}

impl StoreError {
    /// Whether the database or its disk is full (`SQLITE_FULL`, which a size limit set with
    /// [`SqliteStore::limit_size`] also gives): reads still work, new rows do not fit.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Where a message was addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// A direct message to this user.
    User(String),
    /// A message to the joined members of this group.
    Group(String),
}

/// One message of the log, as the server appends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The id the server assigned: unique, larger than every id appended before.
    pub id: u64,
    /// Sender.
    pub sender: String,
    /// The user or group it was addressed to.
    pub to: To,
    /// Message text.
    pub body: String,
    /// When the server accepted it.
    pub sent_at: Millis,
    /// The sender's id for this send, unique per sender when given.
    pub send_id: Option<u64>,
}

/// One message of the log as one recipient gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Its id in the log.
    pub id: u64,
    /// Sender.
    pub sender: String,
    /// Where it was addressed: the recipient, or the group it was sent to.
    pub to: To,
    /// Message text.
    pub body: String,
    /// When the server accepted it.
    pub sent_at: Millis,
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Sender.
    pub sender: String,
    /// Message text.
    pub body: String,
    /// When the server accepted it.
    pub sent_at: Millis,
}

/// What one user has not acknowledged yet: how many messages, and their text in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages.
    pub count: u64,
    /// Bytes of message text.
    pub bytes: u64,
}

/// One user's place in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The group.
    pub group: String,
    /// The user.
    pub user: String,
    /// Who invited them; `None` for the group's creator.
    pub invited_by: Option<String>,
    /// When they were invited (for the creator: when the group was created).
    pub invited_at: Millis,
    /// When they joined; `None` while the invitation is pending.
    pub joined_at: Option<Millis>,
    /// The last log id assigned before they joined: they get the group's messages after it.
    pub joined_id: Option<u64>,
}

/// The operations the server needs from a durable backend.
///
/// Methods are blocking; callers on an async runtime go through [`StoreHandle`].
pub trait Store: Send + 'static {
    /// The stored password hash of `name`, if the account exists.
    fn password_hash(&mut self, name: &str) -> StoreResult<Option<String>>;
    /// Creates an account; false if the name is taken (the existing account is unchanged).
    fn create_user(&mut self, name: &str, password_hash: &str, at: Millis) -> StoreResult<bool>;
    /// Creates the accounts `(name, password_hash)` that do not exist yet, in one transaction;
    /// returns how many were created. For seeding many accounts at once (one commit, not one
    /// per account).
    fn create_users(&mut self, accounts: &[(String, String)], at: Millis) -> StoreResult<usize>;
    /// Replaces the password hash of an existing account; false if there is no such account.
    fn set_password_hash(&mut self, name: &str, password_hash: &str) -> StoreResult<bool>;
    /// Every account name.
    fn usernames(&mut self) -> StoreResult<Vec<String>>;

    /// Every block as `(blocker, blocked)`.
    fn blocks(&mut self) -> StoreResult<Vec<(String, String)>>;
    /// Records that `blocker` blocks `blocked`; false if it already did.
    fn add_block(&mut self, blocker: &str, blocked: &str) -> StoreResult<bool>;
    /// Removes a block; false if there was none.
    fn remove_block(&mut self, blocker: &str, blocked: &str) -> StoreResult<bool>;

    /// Records the start of a session and returns its id.
    fn record_login(&mut self, user: &str, at: Millis) -> StoreResult<i64>;
    /// Records the end of a session.
    fn record_logout(&mut self, session: i64, at: Millis) -> StoreResult<()>;
    /// Ends sessions left open by a server that stopped without saying so; returns how many.
    fn close_open_sessions(&mut self, at: Millis) -> StoreResult<usize>;
    /// Users with a session that was online at some moment in `[since, now]`, sorted by name.
    /// Each with when they last logged out, `None` if a session of theirs is open.
    fn seen_since(&mut self, since: Millis) -> StoreResult<Vec<(String, Option<Millis>)>>;

    /// Every group membership and pending invitation.
    fn group_members(&mut self) -> StoreResult<Vec<MemberRecord>>;
    /// Creates group `name` with `creator` joined and `invited` invited; false if the name is
    /// taken (nothing is changed then).
    fn create_group(
        &mut self,
        name: &str,
        creator: &str,
        invited: &[String],
        at: Millis,
    ) -> StoreResult<bool>;
    /// Turns `user`'s invitation to `group` into membership at `at`, after log id
    /// `joined_id`; false if there was no invitation.
    fn join_group(
        &mut self,
        group: &str,
        user: &str,
        at: Millis,
        joined_id: u64,
    ) -> StoreResult<bool>;
    /// Removes `user` (member or invited) from `group`; with `dissolve`, deletes the group and
    /// its remaining invitations. False if `user` was not in it.
    fn leave_group(&mut self, group: &str, user: &str, dissolve: bool) -> StoreResult<bool>;

    /// Appends `entries` to the log (in id order) and moves the given users' cursors, in one
    /// transaction. Returns, per entry, whether it was stored: false for a repeat of a
    /// `(sender, send_id)` already in the log.
    fn append_log(
        &mut self,
        entries: &[LogEntry],
        cursors: &[(String, u64)],
    ) -> StoreResult<Vec<bool>>;
    /// `user`'s messages after id `after`, oldest first: direct ones to them, and those of
    /// each `(group, joined_id)` after `joined_id` (from others, not from senders `user`
    /// blocks). At most `limit` of them and, past the first, `max_bytes` of text.
    fn log_after(
        &mut self,
        user: &str,
        after: u64,
        groups: &[(String, u64)],
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<LogRow>>;
    /// Every stored cursor: `(user, acknowledged up to)`.
    fn cursors(&mut self) -> StoreResult<Vec<(String, u64)>>;
    /// What each user has waiting after their stored cursor.
    fn backlogs(&mut self) -> StoreResult<Vec<(String, Backlog)>>;
    /// What `user` has waiting after `after`, as [`Store::backlogs`] counts it.
    fn backlog_of(&mut self, user: &str, after: u64) -> StoreResult<Backlog>;
    /// The highest log id ever handed out (so the next is larger), 0 for an empty log.
    fn last_log_id(&mut self) -> StoreResult<u64>;
    /// Deletes messages sent before `before` that every recipient has acknowledged; returns
    /// how many went.
    fn prune_log(&mut self, before: Millis) -> StoreResult<usize>;
    /// The last `limit` direct messages between `a` and `b`, oldest first.
    fn direct_history(&mut self, a: &str, b: &str, limit: u32) -> StoreResult<Vec<HistoryRow>>;
    /// The last `limit` messages of `group`, leaving out senders whom `viewer` blocks; oldest
    /// first.
    fn group_history(
        &mut self,
        group: &str,
        viewer: &str,
        limit: u32,
    ) -> StoreResult<Vec<HistoryRow>>;

    /// Makes sure everything written so far is in the main database file.
    fn flush(&mut self) -> StoreResult<()>;
}
