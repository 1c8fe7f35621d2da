//! Who a client is on direct links, and whom its user has verified.
//!
//! Each client has one long-term X25519 key pair ([`Identity`]), made on first run and kept in
//! [`IDENTITY_FILE`] in its data directory (readable by its owner only). Login announces the
//! public half; the server hands it to each peer it introduces, and the Noise handshake of a
//! direct link ([`super::noise`]) proves that the other side holds the matching secret.
//!
//! That proves the peer holds the key *the server vouched for*. To rule out a server that
//! vouches for the wrong key, two users compare a [`SafetyCode`] (`/verify bob`), read aloud
//! or in person; it is derived from both names and both keys, so it is the same on both
//! screens only if each side sees the other's real key. Once verified, the peer's key is
//! pinned in [`VERIFIED_FILE`] ([`VerifiedPeers`]), and a later link with any other key is
//! reported as [`PeerTrust::Changed`], loudly.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::protocol::PublicKey;

/// The file in the data directory that holds the client's secret key, as 64 hex digits.
pub const IDENTITY_FILE: &str = "identity.key";
/// The file in the data directory that pins verified peers' keys: `NAME HEXKEY` per line.
pub const VERIFIED_FILE: &str = "verified_peers";

/// A client's long-term key pair. `Debug` shows only the public half.
#[derive(Clone)]
pub struct Identity {
    secret: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The identity or verified-peers file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The identity file holds something else than a key.
    #[error("{path} does not hold a key (64 hex digits); move it away to make a new identity")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

impl Identity {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut secret = Zeroizing::new([0; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        Self::from_secret(secret)
    }

    /// The key pair of `secret` (any 32 bytes; X25519 clamps them).
    pub fn from_secret(secret: Zeroizing<[u8; 32]>) -> Self {
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        Self { secret, public: PublicKey(public) }
    }

    /// The identity kept in [`IDENTITY_FILE`] in `dir`, made (and the directory with it) if
    /// there is none yet. The boolean says whether it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return Self::parse(&text)
                    .map(|id| (id, false))
                    .ok_or_else(|| IdentityError::Malformed { path: path.clone() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let identity = Self::generate();
        // Written whole beside, then linked into place: another client starting at the same
        // moment sees either no file or a whole one, and a link never replaces a file.
        let partial = dir.join(format!("{IDENTITY_FILE}.{}.new", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let write = || -> std::io::Result<()> {
            let mut file = options.open(&partial)?;
            let hex = Zeroizing::new(PublicKey(*identity.secret).to_string());
            writeln!(file, "{}", hex.as_str())?;
            file.sync_all()
        };
        let linked = write().and_then(|()| std::fs::hard_link(&partial, &path));
        let _ = std::fs::remove_file(&partial);
        match linked {
            Ok(()) => Ok((identity, true)),
            // Another client made it meanwhile: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load_or_create(dir).map(|(id, _)| (id, false))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let PublicKey(secret) = text.trim().parse().ok()?;
        Some(Self::from_secret(Zeroizing::new(secret)))
    }

    /// The public half, announced at login.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half, for the handshakes.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

/// The code two users compare to verify each other's keys: 32 digits in 8 groups of 4,
/// the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyCode(String);

impl SafetyCode {
    /// The code for the link between `a` and `b` (name and key each), whichever is "me".
    ///
    /// SHA-256 over both names and keys, in name order. 32 decimal digits keep 106 bits: a
    /// server that wanted two users to see the same code while each holds a key it made
    /// would have to find a collision of that size.
    pub fn new(a: (&str, &PublicKey), b: (&str, &PublicKey)) -> Self {
        let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
        let mut hash = Sha256::new();
        hash.update(b"confab safety code v1");
        for (name, key) in [first, second] {
            hash.update((name.len() as u32).to_be_bytes());
            hash.update(name.as_bytes());
            hash.update(key.0);
        }
        let digest = hash.finalize();
        let groups: Vec<String> = digest
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) % 10_000)
            .map(|n| format!("{n:04}"))
            .collect();
        SafetyCode(groups.join(" "))
    }
}

impl std::fmt::Display for SafetyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How far a peer's key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTrust {
    /// The key the user verified for this peer.
    Verified,
    /// No key was verified for this peer: the server vouches for it.
    Unverified,
    /// The user verified another key for this peer: the server, or the peer's new client,
    /// presents a key that was never compared.
    Changed {
        /// The key that was verified.
        verified: PublicKey,
    },
}

/// The peers' keys the user has verified, kept in [`VERIFIED_FILE`] (or only in memory);
/// cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct VerifiedPeers {
    inner: Arc<Mutex<Pins>>,
}

#[derive(Debug, Default)]
struct Pins {
    path: Option<PathBuf>,
    keys: HashMap<String, PublicKey>,
}

impl VerifiedPeers {
    /// Pins kept in memory only (tests, and clients without a data directory).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The pins in [`VERIFIED_FILE`] in `dir`, read now; lines that do not parse are skipped.
    pub fn in_dir(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(VERIFIED_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let keys = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (name, key) = (words.next()?, words.next()?.parse().ok()?);
                Some((name.to_owned(), key))
            })
            .collect();
        Ok(Self { inner: Arc::new(Mutex::new(Pins { path: Some(path), keys })) })
    }

    /// How far `key` is trusted as `peer`'s.
    pub fn trust(&self, peer: &str, key: &PublicKey) -> PeerTrust {
        match self.pins().keys.get(peer) {
            None => PeerTrust::Unverified,
            Some(pinned) if pinned == key => PeerTrust::Verified,
            Some(pinned) => PeerTrust::Changed { verified: *pinned },
        }
    }

    /// Pins `key` as `peer`'s, replacing any earlier pin, and saves the file.
    pub fn pin(&self, peer: &str, key: PublicKey) -> Result<(), IdentityError> {
        let mut pins = self.pins();
        pins.keys.insert(peer.to_owned(), key);
        let Some(path) = pins.path.clone() else { return Ok(()) };
        let mut lines: Vec<String> = pins.keys.iter().map(|(n, k)| format!("{n} {k}\n")).collect();
        lines.sort();
        // Written beside and renamed over, so a crash never leaves half a file.
        let partial = path.with_extension("new");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&partial, lines.concat())?;
            std::fs::rename(&partial, &path)
        };
        write().map_err(|source| IdentityError::Io { path, source })
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        // Every update is one insert, so a panic elsewhere leaves the map whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("confab");
        let (made, created) = Identity::load_or_create(&home).unwrap();
        assert!(created);
        let (read, created) = Identity::load_or_create(&home).unwrap();
        assert!(!created);
        assert_eq!(made.public(), read.public());
        assert_eq!(made.secret(), read.secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read the secret key");
        }
        assert!(!format!("{made:?}").contains(&PublicKey(*made.secret()).to_string()));
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "not a key\n").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn the_public_key_is_x25519_of_the_secret() {
        // RFC 7748, section 6.1: Alice's private and public keys.
        let secret = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let public = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let identity = Identity::parse(secret).unwrap();
        assert_eq!(identity.public().to_string(), public);
    }

    #[test]
    fn the_safety_code_is_the_same_on_both_sides_and_differs_for_another_key() {
        let (alice, bob, mallory) =
            (Identity::generate(), Identity::generate(), Identity::generate());
        let seen_by_alice = SafetyCode::new(("alice", &alice.public()), ("bob", &bob.public()));
        let seen_by_bob = SafetyCode::new(("bob", &bob.public()), ("alice", &alice.public()));
        assert_eq!(seen_by_alice, seen_by_bob);
        let text = seen_by_alice.to_string();
        assert_eq!(text.len(), 8 * 4 + 7, "{text}");
        assert!(text.split(' ').all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_digit())));
        let forged = SafetyCode::new(("alice", &alice.public()), ("bob", &mallory.public()));
        assert_ne!(seen_by_alice, forged);
        let renamed = SafetyCode::new(("alice", &alice.public()), ("bobby", &bob.public()));
        assert_ne!(seen_by_alice, renamed);
    }

    #[test]
    fn pins_are_kept_in_the_file_and_a_different_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (bob, other) = (Identity::generate().public(), Identity::generate().public());
        let pins = VerifiedPeers::in_dir(dir.path()).unwrap();
        assert_eq!(pins.trust("bob", &bob), PeerTrust::Unverified);
        pins.pin("bob", bob).unwrap();
        let again = VerifiedPeers::in_dir(dir.path()).unwrap();
        assert_eq!(again.trust("bob", &bob), PeerTrust::Verified);
        assert_eq!(again.trust("bob", &other), PeerTrust::Changed { verified: bob });
        assert_eq!(again.trust("carol", &bob), PeerTrust::Unverified);
        again.pin("bob", other).unwrap();
        let third = VerifiedPeers::in_dir(dir.path()).unwrap();
        assert_eq!(third.trust("bob", &other), PeerTrust::Verified);
        let file = std::fs::read_to_string(dir.path().join(VERIFIED_FILE)).unwrap();
        assert_eq!(file.lines().count(), 1, "{file}");
    }
}
