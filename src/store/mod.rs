//! Durable state: accounts, blocks, groups, offline messages, message history and login
//! history. No networking.
//!
//! [`Store`] is the small synchronous interface a backend implements; [`SqliteStore`] is the
//! embedded default. The server never calls a backend from an async worker thread: it goes
//! through a [`StoreHandle`], which owns the backend on a dedicated thread and runs one job at
//! a time, so each call is a short message round trip for the async side and the backend
//! needs no locking of its own. Every write has committed by the time its call returns.
//!
//! Message history is the exception, because every relayed message adds to it: the relay
//! hands history records to [`StoreHandle::record`] without waiting, and the store thread
//! writes whatever has queued up in one transaction (see [`Store::append_history`]), so the
//! cost of a commit is shared by every message that arrived while the previous one ran.

mod handle;
mod sqlite;

pub use handle::StoreHandle;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

use crate::protocol::{HistoryMessage, Timestamp};

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

/// A relayed message: who sent what to whom, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub sender: String,
    /// The user or group it was addressed to.
    pub to: To,
    /// Message text.
    pub body: String,
    /// When the server accepted it.
    pub sent_at: Timestamp,
}

/// A message to keep for a recipient who is offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Who gets it at their next login (for a group message, one member).
    pub recipient: String,
    /// The message.
    pub message: Envelope,
}

/// A message kept for a recipient who was offline, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Store-assigned id, increasing in the order messages were stored.
    pub id: i64,
    /// The message.
    pub message: Envelope,
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
    pub invited_at: Timestamp,
    /// When they joined; `None` while the invitation is pending.
    pub joined_at: Option<Timestamp>,
}

/// The operations the server needs from a durable backend.
///
/// Methods are blocking; callers on an async runtime go through [`StoreHandle`].
pub trait Store: Send + 'static {
    /// The stored password hash of `name`, if the account exists.
    fn password_hash(&mut self, name: &str) -> StoreResult<Option<String>>;
    /// Creates an account; false if the name is taken (the existing account is unchanged).
    fn create_user(&mut self, name: &str, password_hash: &str, at: Timestamp) -> StoreResult<bool>;
    /// Creates the accounts `(name, password_hash)` that do not exist yet, in one transaction;
    /// returns how many were created. For seeding many accounts at once (one commit, not one
    /// per account).
    fn create_users(&mut self, accounts: &[(String, String)], at: Timestamp) -> StoreResult<usize>;
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

    /// Stores messages for offline recipients, in order, in one transaction; committed on
    /// return.
    fn store_offline(&mut self, messages: &[OfflineMessage]) -> StoreResult<()>;
    /// Messages waiting for `recipient`, oldest first.
    fn offline_messages(&mut self, recipient: &str) -> StoreResult<Vec<StoredMessage>>;
    /// Forgets delivered messages of `recipient` with ids up to and including `up_to`.
    fn delete_offline(&mut self, recipient: &str, up_to: i64) -> StoreResult<()>;

    /// Records the start of a session and returns its id.
    fn record_login(&mut self, user: &str, at: Timestamp) -> StoreResult<i64>;
    /// Records the end of a session.
    fn record_logout(&mut self, session: i64, at: Timestamp) -> StoreResult<()>;
    /// Ends sessions left open by a server that stopped without saying so; returns how many.
    fn close_open_sessions(&mut self, at: Timestamp) -> StoreResult<usize>;
    /// Users with a session that was online at some moment in `[since, now]`, sorted by name.
    fn seen_since(&mut self, since: Timestamp) -> StoreResult<Vec<String>>;

    /// Every group membership and pending invitation.
    fn group_members(&mut self) -> StoreResult<Vec<MemberRecord>>;
    /// Creates group `name` with `creator` joined and `invited` invited; false if the name is
    /// taken (nothing is changed then).
    fn create_group(
        &mut self,
        name: &str,
        creator: &str,
        invited: &[String],
        at: Timestamp,
    ) -> StoreResult<bool>;
    /// Turns `user`'s invitation to `group` into membership; false if there was none.
    fn join_group(&mut self, group: &str, user: &str, at: Timestamp) -> StoreResult<bool>;
    /// Removes `user` (member or invited) from `group`; with `dissolve`, deletes the group and
    /// its remaining invitations. False if `user` was not in it.
    fn leave_group(&mut self, group: &str, user: &str, dissolve: bool) -> StoreResult<bool>;

    /// Appends relayed messages to the history, in order, in one transaction.
    fn append_history(&mut self, messages: &[Envelope]) -> StoreResult<()>;
    /// The last `limit` direct messages between `a` and `b`, oldest first.
    fn direct_history(&mut self, a: &str, b: &str, limit: u32) -> StoreResult<Vec<HistoryMessage>>;
    /// The last `limit` messages of `group` sent at or after `since`, leaving out senders
    /// whom `viewer` blocks; oldest first.
    fn group_history(
        &mut self,
        group: &str,
        viewer: &str,
        since: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<HistoryMessage>>;

    /// Makes sure everything written so far is in the main database file.
    fn flush(&mut self) -> StoreResult<()>;
}
