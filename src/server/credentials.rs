//! Importing a credentials file: one `username password` pair per line.
//!
//! Blank lines and lines starting with `#` are skipped; the password is the rest of the line
//! after the first run of whitespace. Passwords are hashed before they reach the store.
//! Importing the same file again changes nothing; a changed password in the file replaces the
//! stored one.

use std::path::Path;

use super::password;
use crate::protocol::{now_ms, valid_username};
use crate::store::{Store, StoreError};

/// Why a credentials file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not `username password`.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Accounts created.
    pub created: usize,
    /// Accounts whose password changed.
    pub updated: usize,
    /// Accounts already as in the file.
    pub unchanged: usize,
}

/// Parses credentials text into `(username, password)` pairs; `path` is only used in errors.
pub fn parse(text: &str, path: &str) -> Result<Vec<(String, String)>, CredentialsError> {
    let mut pairs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason: &str| CredentialsError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        let Some((name, pass)) = line.split_once(char::is_whitespace) else {
            return Err(syntax("expected `username password`"));
        };
        if !valid_username(name) {
            return Err(syntax("usernames are 1-32 letters, digits, '_', '-' or '.'"));
        }
        pairs.push((name.to_owned(), pass.trim().to_owned()));
    }
    Ok(pairs)
}

/// Imports the credentials file at `path` into `store`.
pub fn import(store: &mut dyn Store, path: &Path) -> Result<ImportSummary, CredentialsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| CredentialsError::Read { path: shown.clone(), source })?;
    let mut summary = ImportSummary::default();
    for (name, pass) in parse(&text, &shown)? {
        match store.password_hash(&name)? {
            Some(stored) if password::verify(&pass, &stored) => summary.unchanged += 1,
            Some(_) => {
                store.set_password_hash(&name, &password::hash(&pass))?;
                summary.updated += 1;
            }
            None => {
                store.create_user(&name, &password::hash(&pass), now_ms())?;
                summary.created += 1;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn parses_pairs_comments_and_spaces_in_passwords() {
        let pairs = parse("# demo\n\nalice  open sesame \nbob\tpw\n", "f").unwrap();
        assert_eq!(pairs, [("alice".into(), "open sesame".into()), ("bob".into(), "pw".into())]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse("alice pw\nlonely\n", "creds.txt").unwrap_err();
        assert_eq!(err.to_string(), "creds.txt:2: expected `username password`");
        assert!(parse("bad/name pw\n", "f").is_err());
    }

    #[test]
    fn import_hashes_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds.txt");
        std::fs::write(&file, "alice pw1\nbob pw2\n").unwrap();
        let mut store = SqliteStore::open(":memory:").unwrap();
        let first = import(&mut store, &file).unwrap();
        assert_eq!(first, ImportSummary { created: 2, ..Default::default() });
        let hash = store.password_hash("alice").unwrap().unwrap();
        assert!(hash.starts_with("$argon2id$") && !hash.contains("pw1"));
        let again = import(&mut store, &file).unwrap();
        assert_eq!(again, ImportSummary { unchanged: 2, ..Default::default() });
        assert_eq!(store.password_hash("alice").unwrap().unwrap(), hash);

        std::fs::write(&file, "alice changed\nbob pw2\n").unwrap();
        let changed = import(&mut store, &file).unwrap();
        assert_eq!(changed, ImportSummary { updated: 1, unchanged: 1, created: 0 });
        assert!(password::verify("changed", &store.password_hash("alice").unwrap().unwrap()));
    }
}
