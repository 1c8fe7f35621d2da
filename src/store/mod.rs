//! Durable state: accounts, blocks, offline messages and login history. No networking.
//!
//! [`Store`] is the small synchronous interface a backend implements; [`SqliteStore`] is the
//! embedded default. The server never calls a backend from an async worker thread: it goes
//! through a [`StoreHandle`], which owns the backend on a dedicated thread and runs one job at
//! a time, so each call is a short message round trip for the async side and the backend
//! needs no locking of its own. Every write has committed by the time its call returns.

mod handle;
mod sqlite;

pub use handle::StoreHandle;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

use crate::protocol::Timestamp;

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

/// A direct message kept for a recipient who was offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Store-assigned id, increasing in the order messages were stored.
    pub id: i64,
    /// Sender.
    pub sender: String,
    /// Recipient.
    pub recipient: String,
    /// Message text.
    pub body: String,
    /// When the server accepted it.
    pub sent_at: Timestamp,
}

/// The operations the server needs from a durable backend.
///
/// Methods are blocking; callers on an async runtime go through [`StoreHandle`].
pub trait Store: Send + 'static {
    /// The stored password hash of `name`, if the account exists.
    fn password_hash(&mut self, name: &str) -> StoreResult<Option<String>>;
    /// Creates an account; false if the name is taken (the existing account is unchanged).
    fn create_user(&mut self, name: &str, password_hash: &str, at: Timestamp) -> StoreResult<bool>;
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

    /// Stores a message for an offline recipient and returns its id; committed on return.
    fn store_offline(
        &mut self,
        sender: &str,
        recipient: &str,
        body: &str,
        sent_at: Timestamp,
    ) -> StoreResult<i64>;
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

    /// Makes sure everything written so far is in the main database file.
    fn flush(&mut self) -> StoreResult<()>;
}
