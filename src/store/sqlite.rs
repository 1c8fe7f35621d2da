//! The embedded SQLite backend.
//!
//! The schema is versioned with `PRAGMA user_version`; [`SqliteStore::open`] migrates an older
//! file forward and refuses a newer one. The database runs in WAL mode. By default commits
//! skip the fsync (`synchronous = NORMAL`): a committed row survives a killed server, and a
//! power cut or kernel crash can take back the commits of the last moments (those not yet
//! checkpointed or synced by the OS). [`SqliteStore::open_with`]`(path, true)` syncs every
//! commit (`synchronous = FULL`), for those who want a commit to survive a power cut too.
//! The WAL is checkpointed into the database file by a thread of its own
//! ([`Checkpointer`]), so that no commit of the log waits for a checkpoint.
//!
//! The `history` table is the message log: one row per relayed message, keyed by the id the
//! server assigned, with its recipient (direct) or group. Three indexes make the log's reads
//! bounded seeks: `log_by_recipient (recipient, id)` and `log_by_group (group_name, id)` for
//! "what comes after id X for user U", and `history_by_partition` for `/history`. The
//! `cursors` table keeps, per user, the id up to which they have acknowledged delivery.

use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Backlog, HistoryRow, LogEntry, LogRow, MemberRecord, Millis, Store, StoreError, StoreResult, To,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

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
    // 1 -> 2: groups, group messages kept for offline members, message history.
    "ALTER TABLE offline_messages ADD COLUMN group_name TEXT;
     CREATE TABLE groups (
         name       TEXT PRIMARY KEY,
         creator    TEXT NOT NULL REFERENCES users(name),
         created_at INTEGER NOT NULL
     );
     CREATE TABLE group_members (
         group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         user       TEXT NOT NULL REFERENCES users(name),
         invited_by TEXT,
         invited_at INTEGER NOT NULL,
         joined_at  INTEGER,
         PRIMARY KEY (group_name, user)
     );
     -- conversation: '@a b' (the two users, sorted) for direct messages, '#name' for a group.
     CREATE TABLE history (
         id           INTEGER PRIMARY KEY,
         conversation TEXT NOT NULL,
         sender       TEXT NOT NULL,
         body         TEXT NOT NULL,
         sent_at      INTEGER NOT NULL
     );
     CREATE INDEX history_by_conversation ON history (conversation, id);",
    // 2 -> 3: the history index partitioned by id range (see `HISTORY_PARTITION_BITS`).
    "DROP INDEX history_by_conversation;
     CREATE INDEX history_by_partition ON history (id >> 12, conversation, id);",
    // 3 -> 4: the history becomes the message log. Each row names its recipient (direct) or
    // group; every user gets a cursor at the end of the old history (all of it was
    // delivered); the offline copies move into the log after it (a group message kept for
    // an offline member becomes a row addressed to that member, with its group, and
    // conversation '' so that /history does not show it twice), and every existing member
    // receives the group's messages from here on.
    "ALTER TABLE history ADD COLUMN recipient TEXT;
     ALTER TABLE history ADD COLUMN group_name TEXT;
     ALTER TABLE history ADD COLUMN send_id INTEGER;
     ALTER TABLE history ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
     UPDATE history SET
         size = length(CAST(body AS BLOB)),
         group_name = CASE WHEN substr(conversation, 1, 1) = '#' THEN substr(conversation, 2) END,
         recipient = CASE WHEN substr(conversation, 1, 1) = '@' THEN
             CASE WHEN substr(conversation, 2, instr(conversation, ' ') - 2) = sender
                  THEN substr(conversation, instr(conversation, ' ') + 1)
                  ELSE substr(conversation, 2, instr(conversation, ' ') - 2) END END;
     CREATE TABLE cursors (
         user  TEXT PRIMARY KEY,
         up_to INTEGER NOT NULL
     );
     INSERT INTO cursors (user, up_to)
         SELECT name, (SELECT coalesce(max(id), 0) FROM history) FROM users;
     INSERT INTO history (conversation, sender, body, sent_at, recipient, group_name, size)
         SELECT '', sender, body, sent_at, recipient, group_name, length(CAST(body AS BLOB))
         FROM offline_messages ORDER BY id;
     DROP TABLE offline_messages;
     ALTER TABLE group_members ADD COLUMN joined_id INTEGER;
     UPDATE group_members SET joined_id = (SELECT coalesce(max(id), 0) FROM history)
         WHERE joined_at IS NOT NULL;
     CREATE INDEX log_by_recipient ON history (recipient, id) WHERE recipient IS NOT NULL;
     CREATE INDEX log_by_group ON history (group_name, id) WHERE recipient IS NULL;
     CREATE UNIQUE INDEX log_send_ids ON history (sender, send_id) WHERE send_id IS NOT NULL;",
];

/// A [`Store`] in one SQLite database file (or in memory).
pub struct SqliteStore {
    conn: Connection,
    /// `None` in memory, where there is no WAL.
    checkpointer: Option<Checkpointer>,
}

/// Pages in the WAL past which the writer checkpoints itself: only if the
/// [`Checkpointer`] has fallen far behind.
const BACKSTOP_CHECKPOINT_PAGES: u32 = 10_000;
/// How long the checkpointer waits after a commit before it copies, so that the commits
/// of that moment share one checkpoint (a page changed by each is copied once).
const CHECKPOINT_DELAY: Duration = Duration::from_millis(50);

/// Checkpoints the WAL from a thread of its own, so that no commit waits for one.
///
/// With SQLite's automatic checkpoint, the commit that takes the WAL past 1,000 pages
/// copies them all into the database file before it returns, and every message in it
/// waits for that: the relay's slowest replies. Here the writer's connection checkpoints
/// only as a backstop ([`BACKSTOP_CHECKPOINT_PAGES`]). A commit of the log wakes this
/// thread, which waits [`CHECKPOINT_DELAY`] and then runs a passive checkpoint on its own
/// connection: it copies what is committed without blocking the writer, and the writer
/// starts the WAL over once all of it has been copied. Under a load that never pauses,
/// commits keep adding frames while it copies, so the WAL only starts over at the backstop:
/// the file grows to about [`BACKSTOP_CHECKPOINT_PAGES`] pages (40 MB; 45 to 48 MB measured
/// under the relay benchmark's direct workload) and is reused from the start, and that
/// backstop checkpoint has little left to copy.
struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("confab-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    std::thread::sleep(CHECKPOINT_DELAY);
                    // The wake-ups of the delay are served by this checkpoint.
                    while woken.try_recv().is_ok() {}
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("checkpoint failed: {e}");
                    }
                }
            })
            .map_err(StoreError::Io)?;
        Ok(Self { wake: Some(wake), thread: Some(thread) })
    }

    /// Something was committed: checkpoint soon.
    fn poke(&self) {
        if let Some(wake) = &self.wake {
            // Full: a wake-up is pending already.
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, committing without fsync; `:memory:`
    /// gives a private in-memory one.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open_with(path, false)
    }

    /// [`SqliteStore::open`], syncing every commit to disk if `fsync_always`.
    pub fn open_with(path: impl AsRef<Path>, fsync_always: bool) -> StoreResult<Self> {
        let path = path.as_ref();
        let in_memory = path.as_os_str() == ":memory:";
        let conn = if in_memory {
            Connection::open_in_memory()?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Connection::open(path)?
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = if fsync_always { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut store = Self { conn, checkpointer: None };
        store.migrate()?;
        if !in_memory {
            store.conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
            store.checkpointer = Some(Checkpointer::spawn(path)?);
        }
        Ok(store)
    }

    /// Caps the database at about `bytes` (SQLite's `max_page_count`, at least what it holds
    /// now): past it writes fail as on a full disk ([`StoreError::is_full`]), reads go on.
    pub fn limit_size(&mut self, bytes: u64) -> StoreResult<()> {
        let page: i64 = self.conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
        let pages = (bytes / page.max(1) as u64).max(1);
        // SQLite answers with the limit it set, which is never below the current size.
        let _: i64 =
            self.conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| row.get(0))?;
        Ok(())
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

impl SqliteStore {
    /// The last `limit` messages of `conversation`, oldest first, leaving out senders whom
    /// `viewer` blocks. It reads the index partitions newest first and stops as soon as it
    /// has `limit` messages.
    fn recent_history(
        &mut self,
        conversation: &str,
        viewer: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<HistoryRow>> {
        let newest: Option<i64> =
            self.conn.query_row("SELECT max(id) FROM history", [], |row| row.get(0))?;
        let mut found = Vec::new();
        let Some(newest) = newest else {
            return Ok(found);
        };
        let mut stmt = self.conn.prepare_cached(PARTITION_HISTORY)?;
        let viewer = viewer.unwrap_or("");
        let limit = limit as usize;
        'walk: for partition in (0..=newest >> HISTORY_PARTITION_BITS).rev() {
            let mut rows = stmt.query(params![partition, conversation, viewer])?;
            while found.len() < limit {
                let Some(row) = rows.next()? else {
                    continue 'walk; // an older partition may have more
                };
                found.push(history_row(row)?);
            }
            break; // enough
        }
        found.reverse();
        Ok(found)
    }
}

impl Store for SqliteStore {
    fn password_hash(&mut self, name: &str) -> StoreResult<Option<String>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT password_hash FROM users WHERE name = ?1")?;
        Ok(stmt.query_row([name], |row| row.get(0)).optional()?)
    }

    fn create_user(&mut self, name: &str, password_hash: &str, at: Millis) -> StoreResult<bool> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
        )?;
        Ok(stmt.execute(params![name, password_hash, at])? == 1)
    }

    fn create_users(&mut self, accounts: &[(String, String)], at: Millis) -> StoreResult<usize> {
        let tx = self.conn.transaction()?;
        let mut created = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
            )?;
            for (name, hash) in accounts {
                created += stmt.execute(params![name, hash, at])?;
            }
        }
        tx.commit()?;
        Ok(created)
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

    fn record_login(&mut self, user: &str, at: Millis) -> StoreResult<i64> {
        let mut stmt =
            self.conn.prepare_cached("INSERT INTO sessions (user, login_at) VALUES (?1, ?2)")?;
        stmt.execute(params![user, at])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn record_logout(&mut self, session: i64, at: Millis) -> StoreResult<()> {
        let mut stmt =
            self.conn.prepare_cached("UPDATE sessions SET logout_at = ?2 WHERE id = ?1")?;
        stmt.execute(params![session, at])?;
        Ok(())
    }

    fn close_open_sessions(&mut self, at: Millis) -> StoreResult<usize> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE sessions SET logout_at = max(login_at, ?1) WHERE logout_at IS NULL",
        )?;
        Ok(stmt.execute([at])?)
    }

    fn seen_since(&mut self, since: Millis) -> StoreResult<Vec<(String, Option<Millis>)>> {
        // A user with an open session has no time of leaving.
        let mut stmt = self.conn.prepare_cached(
            "SELECT user, CASE WHEN count(*) > count(logout_at) THEN NULL ELSE max(logout_at) END
             FROM sessions WHERE logout_at IS NULL OR logout_at >= ?1
             GROUP BY user ORDER BY user",
        )?;
        let rows = stmt.query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn group_members(&mut self) -> StoreResult<Vec<MemberRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT group_name, user, invited_by, invited_at, joined_at, joined_id
             FROM group_members ORDER BY group_name, user",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(MemberRecord {
                group: row.get(0)?,
                user: row.get(1)?,
                invited_by: row.get(2)?,
                invited_at: row.get(3)?,
                joined_at: row.get(4)?,
                joined_id: row.get::<_, Option<i64>>(5)?.map(|id| id as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_group(
        &mut self,
        name: &str,
        creator: &str,
        invited: &[String],
        at: Millis,
    ) -> StoreResult<bool> {
        let tx = self.conn.transaction()?;
        let created = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO groups (name, creator, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, creator, at])?
            == 1;
        if !created {
            return Ok(false);
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO group_members (group_name, user, invited_by, invited_at, joined_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            stmt.execute(params![name, creator, None::<String>, at, Some(at)])?;
            for user in invited {
                stmt.execute(params![name, user, Some(creator), at, None::<Millis>])?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    fn join_group(
        &mut self,
        group: &str,
        user: &str,
        at: Millis,
        joined_id: u64,
    ) -> StoreResult<bool> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE group_members SET joined_at = ?3, joined_id = ?4
             WHERE group_name = ?1 AND user = ?2 AND joined_at IS NULL",
        )?;
        Ok(stmt.execute(params![group, user, at, joined_id as i64])? == 1)
    }

    fn leave_group(&mut self, group: &str, user: &str, dissolve: bool) -> StoreResult<bool> {
        let tx = self.conn.transaction()?;
        let left = tx
            .prepare_cached("DELETE FROM group_members WHERE group_name = ?1 AND user = ?2")?
            .execute([group, user])?
            == 1;
        if left && dissolve {
            // The members' rows go with it (ON DELETE CASCADE).
            tx.prepare_cached("DELETE FROM groups WHERE name = ?1")?.execute([group])?;
        }
        tx.commit()?;
        Ok(left)
    }

    fn append_log(
        &mut self,
        entries: &[LogEntry],
        cursors: &[(String, u64)],
    ) -> StoreResult<Vec<bool>> {
        let tx = self.conn.transaction()?;
        let mut stored = Vec::with_capacity(entries.len());
        {
            // A repeated (sender, send_id) is left out by the unique index, not an error: the
            // first copy was stored, and one batch must not fail for another's repeat.
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO history
                     (id, conversation, sender, body, sent_at, recipient, group_name, send_id, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for m in entries {
                let (key, recipient, group) = match &m.to {
                    To::User(to) => (direct_key(&m.sender, to), Some(to), None),
                    To::Group(name) => (group_key(name), None, Some(name)),
                };
                let send_id = m.send_id.map(|id| id as i64);
                let size = m.body.len() as i64;
                let row = params![
                    m.id as i64,
                    key,
                    m.sender,
                    m.body,
                    m.sent_at,
                    recipient,
                    group,
                    send_id,
                    size
                ];
                stored.push(insert.execute(row)? == 1);
            }
            let mut cursor = tx.prepare_cached(
                "INSERT INTO cursors (user, up_to) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET up_to = max(up_to, excluded.up_to)",
            )?;
            for (user, up_to) in cursors {
                cursor.execute(params![user, *up_to as i64])?;
            }
        }
        tx.commit()?;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.poke();
        }
        Ok(stored)
    }

    fn log_after(
        &mut self,
        user: &str,
        after: u64,
        groups: &[(String, u64)],
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<LogRow>> {
        let mut found = Vec::new();
        let mut direct = self.conn.prepare_cached(LOG_DIRECT)?;
        let rows = direct.query_map(params![user, after as i64, limit as i64], log_row)?;
        for row in rows {
            found.push(row?);
        }
        let mut group = self.conn.prepare_cached(LOG_GROUP)?;
        for (name, joined_id) in groups {
            let from = after.max(*joined_id) as i64;
            let rows = group.query_map(params![name, from, user, limit as i64], log_row)?;
            for row in rows {
                found.push(row?);
            }
        }
        // Each query gave its first `limit` after `after`, so the first `limit` of all of
        // them are among these.
        found.sort_by_key(|m| m.id);
        found.truncate(limit);
        let mut bytes = 0;
        let fits = found
            .iter()
            .position(|m| {
                bytes += m.body.len();
                bytes > max_bytes
            })
            .map_or(found.len(), |over| over.max(1));
        found.truncate(fits);
        Ok(found)
    }

    fn cursors(&mut self) -> StoreResult<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached("SELECT user, up_to FROM cursors")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn backlogs(&mut self) -> StoreResult<Vec<(String, Backlog)>> {
        let mut all: std::collections::BTreeMap<String, Backlog> = Default::default();
        for sql in [BACKLOG_DIRECT, BACKLOG_GROUP] {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            })?;
            for row in rows {
                let (user, count, bytes) = row?;
                let b = all.entry(user).or_default();
                b.count += count as u64;
                b.bytes += bytes as u64;
            }
        }
        Ok(all.into_iter().collect())
    }

    fn backlog_of(&mut self, user: &str, after: u64) -> StoreResult<Backlog> {
        let mut backlog = Backlog::default();
        for sql in [USER_BACKLOG_DIRECT, USER_BACKLOG_GROUP] {
            let (count, bytes): (i64, i64) = self
                .conn
                .prepare_cached(sql)?
                .query_row(params![user, after as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
            backlog.count += count as u64;
            backlog.bytes += bytes as u64;
        }
        Ok(backlog)
    }

    fn last_log_id(&mut self) -> StoreResult<u64> {
        let last: i64 = self.conn.query_row(
            "SELECT max(coalesce((SELECT max(id) FROM history), 0),
                        coalesce((SELECT max(up_to) FROM cursors), 0),
                        coalesce((SELECT max(joined_id) FROM group_members), 0))",
            [],
            |row| row.get(0),
        )?;
        Ok(last as u64)
    }

    fn prune_log(&mut self, before: Millis) -> StoreResult<usize> {
        Ok(self.conn.prepare_cached(PRUNE_LOG)?.execute([before])?)
    }

    fn direct_history(&mut self, a: &str, b: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
        self.recent_history(&direct_key(a, b), None, limit)
    }

    fn group_history(
        &mut self,
        group: &str,
        viewer: &str,
        limit: u32,
    ) -> StoreResult<Vec<HistoryRow>> {
        self.recent_history(&group_key(group), Some(viewer), limit)
    }

    fn flush(&mut self) -> StoreResult<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// History ids come in partitions of `1 << HISTORY_PARTITION_BITS` consecutive ids, and the
/// conversation index is ordered by partition first (`id >> 12`, conversation, id). New
/// messages therefore land in the few index pages of the newest partition instead of pages
/// spread over the whole index, so a commit writes the same number of pages however long the
/// history grows (the old index made every insert slower as the history grew: 3 µs per
/// message at 200,000 messages, 15 µs at 1,000,000). A query walks the partitions newest
/// first, one index seek each, until it has what it needs.
///
/// The size is a trade between the two. Smaller partitions make a commit touch fewer pages:
/// with batches of 200 messages (10,000 msg/s in 20 ms batches), an insert costs 1.8 µs with
/// partitions of 4096 ids and 4.9 µs with 65,536. Larger ones make a query seek fewer: a
/// `/history` of a conversation with no messages seeks every partition, 1.2 ms at 1,000,000
/// messages with 4096 ids. The SQL of the index (migration 3) and of [`PARTITION_HISTORY`]
/// spells the 12 out.
const HISTORY_PARTITION_BITS: u32 = 12;

/// One partition's messages of a conversation, newest first, leaving out senders whom the
/// viewer blocks. The expression `id >> 12` must match the index's for SQLite to use it.
const PARTITION_HISTORY: &str = "SELECT sender, body, sent_at FROM history
     WHERE id >> 12 = ?1 AND conversation = ?2
       AND sender NOT IN (SELECT blocked FROM blocks WHERE blocker = ?3)
     ORDER BY id DESC";

/// The history key of the direct conversation between `a` and `b`, the same both ways.
fn direct_key(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("@{first} {second}")
}

/// The history key of a group's conversation.
fn group_key(group: &str) -> String {
    format!("#{group}")
}

fn history_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow { sender: row.get(0)?, body: row.get(1)?, sent_at: row.get(2)? })
}

/// A user's direct messages after an id (and group messages kept for them by the v3
/// migration, which name the group), leaving out senders they block.
const LOG_DIRECT: &str = "SELECT id, sender, recipient, group_name, body, sent_at FROM history
     WHERE recipient = ?1 AND id > ?2
       AND sender NOT IN (SELECT blocked FROM blocks WHERE blocker = ?1)
     ORDER BY id LIMIT ?3";

/// A group's messages after an id, for member ?3: not their own, not from senders they block.
const LOG_GROUP: &str = "SELECT id, sender, recipient, group_name, body, sent_at FROM history
     WHERE recipient IS NULL AND group_name = ?1 AND id > ?2 AND sender != ?3
       AND sender NOT IN (SELECT blocked FROM blocks WHERE blocker = ?3)
     ORDER BY id LIMIT ?4";

/// Per recipient: direct messages after their cursor, as [`LOG_DIRECT`] counts them.
const BACKLOG_DIRECT: &str = "SELECT h.recipient, count(*), sum(h.size) FROM history h
     LEFT JOIN cursors c ON c.user = h.recipient
     WHERE h.recipient IS NOT NULL AND h.id > coalesce(c.up_to, 0)
       AND h.sender NOT IN (SELECT blocked FROM blocks WHERE blocker = h.recipient)
     GROUP BY h.recipient";

/// Per member: group messages after both their join and their cursor, as [`LOG_GROUP`].
const BACKLOG_GROUP: &str = "SELECT m.user, count(*), sum(h.size) FROM group_members m
     LEFT JOIN cursors c ON c.user = m.user
     JOIN history h ON h.recipient IS NULL AND h.group_name = m.group_name
       AND h.id > max(coalesce(m.joined_id, 0), coalesce(c.up_to, 0))
       AND h.sender != m.user
       AND h.sender NOT IN (SELECT blocked FROM blocks WHERE blocker = m.user)
     WHERE m.joined_at IS NOT NULL
     GROUP BY m.user";

/// [`BACKLOG_DIRECT`] for user ?1 after id ?2.
const USER_BACKLOG_DIRECT: &str = "SELECT count(*), coalesce(sum(size), 0) FROM history
     WHERE recipient = ?1 AND id > ?2
       AND sender NOT IN (SELECT blocked FROM blocks WHERE blocker = ?1)";

/// [`BACKLOG_GROUP`] for user ?1 after id ?2.
const USER_BACKLOG_GROUP: &str = "SELECT count(*), coalesce(sum(h.size), 0) FROM group_members m
     JOIN history h ON h.recipient IS NULL AND h.group_name = m.group_name
       AND h.id > max(coalesce(m.joined_id, 0), ?2)
       AND h.sender != m.user
       AND h.sender NOT IN (SELECT blocked FROM blocks WHERE blocker = m.user)
     WHERE m.user = ?1 AND m.joined_at IS NOT NULL";

/// Messages sent before ?1 that no recipient still waits for: a direct one at or below its
/// recipient's cursor, a group one at or below the cursor of every member who joined before
/// it. The newest row always stays, so the highest id ever handed out is never forgotten.
const PRUNE_LOG: &str = "DELETE FROM history WHERE sent_at < ?1
     AND id < (SELECT max(id) FROM history)
     AND CASE WHEN recipient IS NOT NULL
         THEN id <= coalesce((SELECT up_to FROM cursors WHERE user = history.recipient), 0)
         ELSE NOT EXISTS (SELECT 1 FROM group_members m
             LEFT JOIN cursors c ON c.user = m.user
             WHERE m.group_name = history.group_name AND m.joined_at IS NOT NULL
               AND coalesce(m.joined_id, 0) < history.id
               AND coalesce(c.up_to, 0) < history.id)
     END";

fn log_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    let recipient: Option<String> = row.get(2)?;
    let group: Option<String> = row.get(3)?;
    let to = match (group, recipient) {
        (Some(group), _) => To::Group(group),
        (None, Some(user)) => To::User(user),
        (None, None) => To::User(String::new()),
    };
    Ok(LogRow {
        id: row.get::<_, i64>(0)? as u64,
        sender: row.get(1)?,
        to,
        body: row.get(4)?,
        sent_at: row.get(5)?,
    })
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

    fn entry(id: u64, sender: &str, to: To, body: &str) -> LogEntry {
        LogEntry {
            id,
            sender: sender.into(),
            to,
            body: body.into(),
            sent_at: id as i64,
            send_id: None,
        }
    }

    fn dm(id: u64, from: &str, to: &str, body: &str) -> LogEntry {
        entry(id, from, To::User(to.into()), body)
    }

    fn gm(id: u64, from: &str, body: &str) -> LogEntry {
        entry(id, from, To::Group("devs".into()), body)
    }

    fn texts(list: &[HistoryRow]) -> Vec<&str> {
        list.iter().map(|m| m.body.as_str()).collect()
    }

    fn bodies(list: &[LogRow]) -> Vec<&str> {
        list.iter().map(|m| m.body.as_str()).collect()
    }

    #[test]
    fn groups_record_creation_joining_and_leaving() {
        let mut s = store();
        assert!(s.create_group("devs", "alice", &["bob".into(), "carol".into()], 5).unwrap());
        assert!(!s.create_group("devs", "bob", &["alice".into()], 6).unwrap());
        assert!(s.join_group("devs", "bob", 7, 40).unwrap());
        assert!(!s.join_group("devs", "bob", 8, 41).unwrap(), "already joined");
        assert!(!s.join_group("devs", "nobody", 8, 41).unwrap());
        let members = s.group_members().unwrap();
        let row = |user: &str| members.iter().find(|m| m.user == user).unwrap().clone();
        assert_eq!(row("alice").invited_by, None);
        assert_eq!(row("alice").joined_at, Some(5));
        assert_eq!(row("bob").invited_by.as_deref(), Some("alice"));
        assert_eq!((row("bob").joined_at, row("bob").joined_id), (Some(7), Some(40)));
        assert_eq!(row("carol").joined_at, None);
        assert!(s.leave_group("devs", "bob", false).unwrap());
        assert!(!s.leave_group("devs", "bob", false).unwrap());
        assert!(s.leave_group("devs", "alice", true).unwrap());
        assert!(s.group_members().unwrap().is_empty(), "dissolving drops the invitations");
        assert!(s.create_group("devs", "bob", &["alice".into()], 9).unwrap(), "name is free");
    }

    #[test]
    fn history_is_per_conversation_newest_last_and_limited() {
        let mut s = store();
        s.append_log(
            &[
                dm(1, "alice", "bob", "a1"),
                dm(2, "bob", "alice", "b1"),
                dm(3, "alice", "carol", "not ours"),
                gm(4, "carol", "g1"),
                dm(5, "alice", "bob", "a2"),
                gm(6, "bob", "g2"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(texts(&s.direct_history("bob", "alice", 20).unwrap()), ["a1", "b1", "a2"]);
        assert_eq!(texts(&s.direct_history("alice", "bob", 2).unwrap()), ["b1", "a2"]);
        assert_eq!(texts(&s.group_history("devs", "alice", 20).unwrap()), ["g1", "g2"]);
        s.add_block("alice", "carol").unwrap();
        assert_eq!(texts(&s.group_history("devs", "alice", 20).unwrap()), ["g2"]);
        assert_eq!(texts(&s.group_history("devs", "bob", 1).unwrap()), ["g2"]);
    }

    #[test]
    fn history_spans_index_partitions() {
        let mut s = store();
        // Rows in partitions 0, 1 and 3 (none in 2), so a query has to walk across them.
        let ids = [5_u64, 5_000, 5_001, 13_000, 13_001];
        let rows: Vec<LogEntry> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let body = format!("m{id}");
                if i == 2 {
                    gm(id, "alice", &body)
                } else {
                    dm(id, "alice", "bob", &body)
                }
            })
            .collect();
        s.append_log(&rows, &[]).unwrap();
        let all = ["m5", "m5000", "m13000", "m13001"];
        assert_eq!(texts(&s.direct_history("bob", "alice", 20).unwrap()), all);
        assert_eq!(texts(&s.direct_history("bob", "alice", 0).unwrap()), [""; 0]);
        assert_eq!(texts(&s.direct_history("bob", "alice", 3).unwrap()), &all[1..]);
        assert_eq!(texts(&s.group_history("devs", "bob", 20).unwrap()), ["m5001"]);
        s.append_log(&[dm(13_002, "bob", "alice", "new")], &[]).unwrap();
        assert_eq!(texts(&s.direct_history("alice", "bob", 1).unwrap()), ["new"]);
    }

    #[test]
    fn the_log_after_a_cursor_merges_direct_and_group_messages_in_id_order() {
        let mut s = store();
        s.append_log(
            &[
                dm(1, "alice", "bob", "d1"),
                gm(2, "alice", "g-before-join"),
                gm(3, "alice", "g1"),
                dm(4, "alice", "carol", "not bob's"),
                gm(5, "bob", "bob's own"),
                dm(6, "carol", "bob", "d2"),
                gm(7, "carol", "g2"),
            ],
            &[],
        )
        .unwrap();
        let groups = [("devs".to_string(), 2)];
        let all = s.log_after("bob", 0, &groups, 100, 1 << 20).unwrap();
        assert_eq!(bodies(&all), ["d1", "g1", "d2", "g2"]);
        assert_eq!(all[1].to, To::Group("devs".into()));
        assert_eq!(all[2].to, To::User("bob".into()));
        assert_eq!(bodies(&s.log_after("bob", 3, &groups, 100, 1 << 20).unwrap()), ["d2", "g2"]);
        assert_eq!(bodies(&s.log_after("bob", 0, &groups, 2, 1 << 20).unwrap()), ["d1", "g1"]);
        // A page holds at least one message, then stops before the byte limit.
        assert_eq!(bodies(&s.log_after("bob", 0, &groups, 100, 1).unwrap()), ["d1"]);
        assert_eq!(bodies(&s.log_after("bob", 0, &groups, 100, 4).unwrap()), ["d1", "g1"]);
        assert_eq!(bodies(&s.log_after("bob", 0, &[], 100, 1 << 20).unwrap()), ["d1", "d2"]);
        s.add_block("bob", "carol").unwrap();
        assert_eq!(bodies(&s.log_after("bob", 0, &groups, 100, 1 << 20).unwrap()), ["d1", "g1"]);
    }

    #[test]
    fn log_reads_seek_their_indexes() {
        let s = store();
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            let mut stmt = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map(params, |row| row.get(3)).unwrap().collect::<Result<_, _>>().unwrap()
        };
        let direct = plan(LOG_DIRECT, &[&"bob", &0, &256]);
        assert!(direct.iter().any(|p| p.contains("USING INDEX log_by_recipient")), "{direct:?}");
        let group = plan(LOG_GROUP, &[&"devs", &0, &"bob", &256]);
        assert!(group.iter().any(|p| p.contains("USING INDEX log_by_group")), "{group:?}");
        let history = plan(PARTITION_HISTORY, &[&1, &"@alice bob", &"carol"]);
        assert!(
            history.iter().any(|p| p.contains("USING INDEX history_by_partition")),
            "{history:?}"
        );
    }

    #[test]
    fn cursors_only_move_forward_and_backlogs_count_what_lies_after_them() {
        let mut s = store();
        s.create_group("devs", "alice", &["bob".into()], 0).unwrap();
        s.join_group("devs", "bob", 0, 1).unwrap();
        let log = [dm(1, "alice", "bob", "d1"), gm(2, "alice", "g1"), dm(3, "carol", "bob", "d2")];
        s.append_log(&log, &[("bob".into(), 1)]).unwrap();
        s.append_log(&[], &[("bob".into(), 0), ("carol".into(), 3)]).unwrap();
        let mut cursors = s.cursors().unwrap();
        cursors.sort();
        assert_eq!(cursors, [("bob".to_string(), 1), ("carol".to_string(), 3)]);
        assert_eq!(s.backlogs().unwrap(), [("bob".to_string(), Backlog { count: 2, bytes: 4 })]);
        assert_eq!(s.last_log_id().unwrap(), 3);
    }

    #[test]
    fn a_repeated_send_id_is_left_out_of_the_log() {
        let mut s = store();
        let mut first = dm(1, "alice", "bob", "once");
        first.send_id = Some(u64::MAX);
        let mut again = dm(2, "alice", "bob", "once");
        again.send_id = Some(u64::MAX);
        let mut other = dm(3, "carol", "bob", "same id, other sender");
        other.send_id = Some(u64::MAX);
        assert_eq!(s.append_log(&[first], &[]).unwrap(), [true]);
        assert_eq!(s.append_log(&[again, other], &[]).unwrap(), [false, true]);
        let got = s.log_after("bob", 0, &[], 10, 1 << 20).unwrap();
        assert_eq!(bodies(&got), ["once", "same id, other sender"]);
    }

    #[test]
    fn pruning_keeps_what_a_recipient_has_not_acknowledged() {
        let mut s = store();
        s.create_group("devs", "alice", &["bob".into()], 0).unwrap();
        s.join_group("devs", "bob", 0, 0).unwrap();
        let log = [
            dm(1, "alice", "bob", "acked"),
            gm(2, "carol", "seen by both"),
            dm(3, "alice", "bob", "not acked"),
            gm(4, "carol", "bob has not"),
            dm(5, "alice", "carol", "newest"),
        ];
        s.append_log(&log, &[("bob".into(), 2), ("alice".into(), 5), ("carol".into(), 5)]).unwrap();
        assert_eq!(s.prune_log(1).unwrap(), 0, "only messages sent before the cut-off go");
        assert_eq!(s.prune_log(100).unwrap(), 2, "1 and 2");
        let left: Vec<String> = s
            .conn
            .prepare("SELECT body FROM history ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["not acked", "bob has not", "newest"]);
        assert_eq!(s.last_log_id().unwrap(), 5);
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
        let names = |seen: Vec<(String, Option<Millis>)>| -> Vec<String> {
            seen.into_iter().map(|(name, _)| name).collect()
        };
        assert_eq!(names(s.seen_since(now - 200 * sec).unwrap()), ["alice", "carol"]);
        assert_eq!(names(s.seen_since(now - 500 * sec).unwrap()), ["alice", "bob", "carol"]);
        assert_eq!(names(s.seen_since(now - 100 * sec).unwrap()), ["carol"]);
        let seen = s.seen_since(now - 500 * sec).unwrap();
        let left: Vec<Option<Millis>> = seen.into_iter().map(|(_, left)| left).collect();
        assert_eq!(left, [Some(now - 120 * sec), Some(now - 300 * sec), None], "carol is on");
    }

    #[test]
    fn open_sessions_are_closed_after_a_crash() {
        let mut s = store();
        s.record_login("alice", 100).unwrap();
        assert_eq!(s.close_open_sessions(500).unwrap(), 1);
        assert!(s.seen_since(501).unwrap().is_empty());
        assert_eq!(s.seen_since(500).unwrap(), [("alice".to_string(), Some(500))]);
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
    fn the_checkpointer_keeps_the_wal_short_without_the_commits_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let mut s = SqliteStore::open(&path).unwrap();
        for name in ["alice", "bob"] {
            s.create_user(name, "hash", 0).unwrap();
        }
        // 2,000 commits of one message each, a few pages each: 30 MB or more of WAL if
        // nothing but the writer's backstop checkpointed. The pauses let the checkpointer
        // copy what was committed, after which the writer starts the WAL over.
        let body = "x".repeat(200);
        for round in 0..20u64 {
            for i in 0..100 {
                s.append_log(&[dm(round * 100 + i + 1, "alice", "bob", &body)], &[]).unwrap();
            }
            std::thread::sleep(CHECKPOINT_DELAY * 2);
        }
        let wal = std::fs::metadata(dir.path().join("confab.db-wal")).unwrap().len();
        assert!(wal < 10 << 20, "the WAL grew to {wal} bytes");
        assert_eq!(s.log_after("bob", 0, &[], 10_000, usize::MAX).unwrap().len(), 2000);
    }

    #[test]
    fn fsync_always_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sync = |fsync| {
            let s = SqliteStore::open_with(dir.path().join("s.db"), fsync).unwrap();
            s.conn.pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0)).unwrap()
        };
        assert_eq!(sync(false), 1, "NORMAL");
        assert_eq!(sync(true), 2, "FULL");
    }

    /// A database as schema version 3 left it: accounts, a block, a group with a pending
    /// invitation, direct and group history, and offline messages (direct and group).
    fn version_3_database(path: &Path) {
        let conn = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO users VALUES ('alice', 'h', 0), ('bob', 'h', 0), ('carol', 'h', 0),
                                      ('dave', 'h', 0);
             INSERT INTO blocks VALUES ('carol', 'dave');
             INSERT INTO groups VALUES ('devs', 'alice', 1);
             INSERT INTO group_members VALUES ('devs', 'alice', NULL, 1, 1),
                                              ('devs', 'bob', 'alice', 1, 2),
                                              ('devs', 'carol', 'alice', 1, 2),
                                              ('devs', 'dave', 'alice', 1, NULL);
             -- bob was online for the first two, offline for the rest.
             INSERT INTO history (conversation, sender, body, sent_at) VALUES
                 ('@alice bob', 'alice', 'delivered', 10),
                 ('#devs', 'carol', 'group delivered', 11),
                 ('@alice bob', 'alice', 'kept 1', 12),
                 ('#devs', 'alice', 'group kept', 13),
                 ('@bob carol', 'carol', 'kept 2', 14);
             INSERT INTO offline_messages (recipient, sender, group_name, body, sent_at) VALUES
                 ('bob', 'alice', NULL, 'kept 1', 12),
                 ('bob', 'alice', 'devs', 'group kept', 13),
                 ('bob', 'carol', NULL, 'kept 2', 14);",
        )
        .unwrap();
    }

    #[test]
    fn a_version_3_database_is_migrated_and_each_offline_message_is_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        version_3_database(&path);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.usernames().unwrap(), ["alice", "bob", "carol", "dave"]);
        assert_eq!(s.password_hash("bob").unwrap().as_deref(), Some("h"));
        assert_eq!(s.blocks().unwrap(), [("carol".to_string(), "dave".to_string())]);
        let members = s.group_members().unwrap();
        assert_eq!(members.len(), 4);
        assert!(members.iter().any(|m| m.user == "dave" && m.joined_at.is_none()));
        // The history is all there once, as before.
        let direct = s.direct_history("bob", "alice", 20).unwrap();
        assert_eq!(texts(&direct), ["delivered", "kept 1"]);
        assert_eq!(
            texts(&s.group_history("devs", "bob", 20).unwrap()),
            ["group delivered", "group kept"]
        );
        assert_eq!(texts(&s.direct_history("bob", "carol", 20).unwrap()), ["kept 2"]);
        // bob has exactly his three offline messages waiting, in order, the group one as such.
        let groups: Vec<(String, u64)> = members
            .iter()
            .filter(|m| m.user == "bob")
            .map(|m| (m.group.clone(), m.joined_id.unwrap()))
            .collect();
        let bob = cursor(&mut s, "bob");
        let waiting = s.log_after("bob", bob, &groups, 100, 1 << 20).unwrap();
        assert_eq!(bodies(&waiting), ["kept 1", "group kept", "kept 2"]);
        assert_eq!(waiting[1].to, To::Group("devs".into()));
        assert_eq!(s.backlogs().unwrap(), [("bob".to_string(), Backlog { count: 3, bytes: 22 })]);
        // Nobody else has anything waiting: alice and carol saw everything live.
        for user in ["alice", "carol"] {
            let groups = [("devs".to_string(), groups[0].1)];
            let at = cursor(&mut s, user);
            assert!(s.log_after(user, at, &groups, 100, 1 << 20).unwrap().is_empty());
        }
        // Once acknowledged, nothing comes again; new ids go after every old one.
        let last = waiting.last().unwrap().id;
        s.append_log(&[], &[("bob".into(), last)]).unwrap();
        let bob = cursor(&mut s, "bob");
        assert!(s.log_after("bob", bob, &groups, 100, 1 << 20).unwrap().is_empty());
        assert_eq!(s.last_log_id().unwrap(), last);
        assert!(s.create_group("ops", "alice", &["bob".into()], 4).unwrap());
    }

    fn cursor(s: &mut SqliteStore, user: &str) -> u64 {
        s.cursors().unwrap().into_iter().find(|(u, _)| u == user).map_or(0, |(_, c)| c)
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.create_user("alice", "h", 0).unwrap();
        s.create_user("bob", "h", 0).unwrap();
        s.append_log(&[dm(1, "alice", "bob", "kept")], &[]).unwrap();
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.log_after("bob", 0, &[], 10, 1 << 20).unwrap()[0].body, "kept");
    }

    #[test]
    fn a_size_limit_fails_writes_as_full_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path().join("confab.db")).unwrap();
        s.create_user("alice", "h", 0).unwrap();
        s.create_user("bob", "h", 0).unwrap();
        s.limit_size(256 << 10).unwrap();
        let text = "x".repeat(4000);
        let full = (1..10_000)
            .find_map(|id| s.append_log(&[dm(id, "alice", "bob", &text)], &[]).err())
            .expect("the log fills up");
        assert!(full.is_full(), "{full}");
        assert!(!s.log_after("bob", 0, &[], 10, 1 << 20).unwrap().is_empty(), "reads work");
        assert!(s.password_hash("alice").unwrap().is_some());
    }
}
