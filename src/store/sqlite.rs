//! The embedded SQLite backend.
//!
//! The schema is versioned with `PRAGMA user_version`; [`SqliteStore::open`] migrates an older
//! file forward and refuses a newer one. The database runs in WAL mode with
//! `synchronous = FULL`, so a committed row survives a killed process and a power cut.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError, StoreResult, StoredMessage};
use crate::protocol::Timestamp;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: accounts, blocks, offline messages, login history.
    "CREATE TABLE users (
         name          TEXT PRIMARY KEY,
         password_hash TEXT NOT NULL,
         created_at    INTEGER NOT NULL
     );
     CREATE TABLE blocks (
         blocker TEXT NOT NULL REFERENCES users(name),
         blocked TEXT NOT NULL REFERENCES users(name),
         PRIMARY KEY (blocker, blocked)
     );
     CREATE TABLE offline_messages (
         id        INTEGER PRIMARY KEY AUTOINCREMENT,
         recipient TEXT NOT NULL,
         sender    TEXT NOT NULL,
         body      TEXT NOT NULL,
         sent_at   INTEGER NOT NULL
     );
     CREATE INDEX offline_by_recipient ON offline_messages (recipient, id);
     CREATE TABLE sessions (
         id        INTEGER PRIMARY KEY AUTOINCREMENT,
         user      TEXT NOT NULL,
         login_at  INTEGER NOT NULL,
         logout_at INTEGER
     );
     CREATE INDEX sessions_by_logout ON sessions (logout_at);",
];

/// A [`Store`] in one SQLite database file (or in memory).
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` gives a private in-memory one.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        let conn = if path.as_os_str() == ":memory:" {
            Connection::open_in_memory()?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Connection::open(path)?
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> StoreResult<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn migrate(&mut self) -> StoreResult<()> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", from as i64 + 1)?;
            tx.commit()?;
            tracing::info!(version = from + 1, "database schema migrated");
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn password_hash(&mut self, name: &str) -> StoreResult<Option<String>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT password_hash FROM users WHERE name = ?1")?;
        Ok(stmt.query_row([name], |row| row.get(0)).optional()?)
    }

    fn create_user(&mut self, name: &str, password_hash: &str, at: Timestamp) -> StoreResult<bool> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
        )?;
        Ok(stmt.execute(params![name, password_hash, at])? == 1)
    }

    fn set_password_hash(&mut self, name: &str, password_hash: &str) -> StoreResult<bool> {
        let mut stmt =
            self.conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE name = ?1")?;
        Ok(stmt.execute(params![name, password_hash])? == 1)
    }

    fn usernames(&mut self) -> StoreResult<Vec<String>> {
        let mut stmt = self.conn.prepare_cached("SELECT name FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn blocks(&mut self) -> StoreResult<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached("SELECT blocker, blocked FROM blocks")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_block(&mut self, blocker: &str, blocked: &str) -> StoreResult<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO blocks (blocker, blocked) VALUES (?1, ?2)")?;
        Ok(stmt.execute([blocker, blocked])? == 1)
    }

    fn remove_block(&mut self, blocker: &str, blocked: &str) -> StoreResult<bool> {
        let mut stmt =
            self.conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?;
        Ok(stmt.execute([blocker, blocked])? == 1)
    }

    fn store_offline(
        &mut self,
        sender: &str,
        recipient: &str,
        body: &str,
        sent_at: Timestamp,
    ) -> StoreResult<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO offline_messages (recipient, sender, body, sent_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        stmt.execute(params![recipient, sender, body, sent_at])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn offline_messages(&mut self, recipient: &str) -> StoreResult<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, sender, recipient, body, sent_at FROM offline_messages
             WHERE recipient = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([recipient], |row| {
            Ok(StoredMessage {
                id: row.get(0)?,
                sender: row.get(1)?,
                recipient: row.get(2)?,
                body: row.get(3)?,
                sent_at: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_offline(&mut self, recipient: &str, up_to: i64) -> StoreResult<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM offline_messages WHERE recipient = ?1 AND id <= ?2")?;
        stmt.execute(params![recipient, up_to])?;
        Ok(())
    }

    fn record_login(&mut self, user: &str, at: Timestamp) -> StoreResult<i64> {
        let mut stmt =
            self.conn.prepare_cached("INSERT INTO sessions (user, login_at) VALUES (?1, ?2)")?;
        stmt.execute(params![user, at])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn record_logout(&mut self, session: i64, at: Timestamp) -> StoreResult<()> {
        let mut stmt =
            self.conn.prepare_cached("UPDATE sessions SET logout_at = ?2 WHERE id = ?1")?;
        stmt.execute(params![session, at])?;
        Ok(())
    }

    fn close_open_sessions(&mut self, at: Timestamp) -> StoreResult<usize> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE sessions SET logout_at = max(login_at, ?1) WHERE logout_at IS NULL",
        )?;
        Ok(stmt.execute([at])?)
    }

    fn seen_since(&mut self, since: Timestamp) -> StoreResult<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT user FROM sessions
             WHERE logout_at IS NULL OR logout_at >= ?1 ORDER BY user",
        )?;
        let rows = stmt.query_map([since], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn flush(&mut self) -> StoreResult<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SqliteStore {
        let mut s = SqliteStore::open(":memory:").unwrap();
        for name in ["alice", "bob", "carol"] {
            assert!(s.create_user(name, "hash", 0).unwrap());
        }
        s
    }

    #[test]
    fn accounts_are_unique_and_keep_their_hash() {
        let mut s = store();
        assert!(!s.create_user("alice", "other", 1).unwrap());
        assert_eq!(s.password_hash("alice").unwrap().as_deref(), Some("hash"));
        assert!(s.set_password_hash("alice", "new").unwrap());
        assert_eq!(s.password_hash("alice").unwrap().as_deref(), Some("new"));
        assert!(!s.set_password_hash("nobody", "x").unwrap());
        assert_eq!(s.password_hash("nobody").unwrap(), None);
        assert_eq!(s.usernames().unwrap(), ["alice", "bob", "carol"]);
    }

    #[test]
    fn blocks_are_idempotent() {
        let mut s = store();
        assert!(s.add_block("alice", "bob").unwrap());
        assert!(!s.add_block("alice", "bob").unwrap());
        assert_eq!(s.blocks().unwrap(), [("alice".to_string(), "bob".to_string())]);
        assert!(s.remove_block("alice", "bob").unwrap());
        assert!(!s.remove_block("alice", "bob").unwrap());
        assert!(s.blocks().unwrap().is_empty());
    }

    #[test]
    fn a_block_needs_existing_users() {
        assert!(store().add_block("alice", "nobody").is_err());
    }

    #[test]
    fn offline_messages_come_back_in_order_and_are_deleted_per_recipient() {
        let mut s = store();
        let first = s.store_offline("alice", "bob", "one", 30).unwrap();
        s.store_offline("carol", "bob", "two", 10).unwrap();
        s.store_offline("alice", "carol", "other", 20).unwrap();
        let got = s.offline_messages("bob").unwrap();
        assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(got[0].sent_at, 30);
        s.delete_offline("bob", first).unwrap();
        assert_eq!(s.offline_messages("bob").unwrap().len(), 1);
        assert_eq!(s.offline_messages("carol").unwrap().len(), 1);
    }

    #[test]
    fn seen_since_uses_overlap_with_the_window() {
        let mut s = store();
        let now = 1_000_000;
        let sec = 1000;
        // alice: in 300 s ago, out 120 s ago. bob: in 600 s ago, out 300 s ago. carol: online.
        let a = s.record_login("alice", now - 300 * sec).unwrap();
        s.record_logout(a, now - 120 * sec).unwrap();
        let b = s.record_login("bob", now - 600 * sec).unwrap();
        s.record_logout(b, now - 300 * sec).unwrap();
        s.record_login("carol", now - 5000 * sec).unwrap();
        assert_eq!(s.seen_since(now - 200 * sec).unwrap(), ["alice", "carol"]);
        assert_eq!(s.seen_since(now - 500 * sec).unwrap(), ["alice", "bob", "carol"]);
        assert_eq!(s.seen_since(now - 100 * sec).unwrap(), ["carol"]);
    }

    #[test]
    fn open_sessions_are_closed_after_a_crash() {
        let mut s = store();
        s.record_login("alice", 100).unwrap();
        assert_eq!(s.close_open_sessions(500).unwrap(), 1);
        assert_eq!(s.seen_since(501).unwrap(), Vec::<String>::new());
        assert_eq!(s.seen_since(500).unwrap(), ["alice"]);
    }

    #[test]
    fn schema_is_versioned_and_a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/confab.db");
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(s);
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.create_user("alice", "h", 0).unwrap();
        s.create_user("bob", "h", 0).unwrap();
        s.store_offline("alice", "bob", "kept", 1).unwrap();
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.offline_messages("bob").unwrap()[0].body, "kept");
    }
}
