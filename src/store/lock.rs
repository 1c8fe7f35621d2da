//! One server per database: an exclusive `flock` on `<db>.lock`, held while the server runs.
//!
//! Two servers on one database would each think they own the log and the sessions: the
//! same user could log in on both, and a message answered "sent" on one would never reach
//! a session on the other. The lock is taken on a file beside the database rather than the
//! database itself, so that SQLite's own locking is untouched; the kernel drops it when the
//! process ends, however it ends, so a crash leaves nothing to clean up.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why the database could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: a server is running on this database.
    #[error("another confab-server is using this database (it holds {0})")]
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The lock on one database; released when dropped.
#[derive(Debug)]
pub struct DbLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DbLock {
    /// Locks the database at `db`, or fails at once if another process has it.
    pub fn acquire(db: &Path) -> Result<DbLock, LockError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Io { path: path.clone(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(DbLock { _file: file, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held(path)),
            Err((_, e)) => Err(LockError::Io { path, source: e.into() }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("confab.db");
        let first = DbLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("confab.db.lock"));
        let err = DbLock::acquire(&db).unwrap_err();
        assert!(matches!(&err, LockError::Held(p) if p == first.path()), "{err}");
        assert!(err.to_string().contains("confab.db.lock"), "{err}");
        let other = DbLock::acquire(&dir.path().join("other.db"));
        assert!(other.is_ok(), "another database has its own lock");
        drop(first);
        assert!(DbLock::acquire(&db).is_ok());
    }
}
