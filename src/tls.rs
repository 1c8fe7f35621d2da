//! TLS between client and server: certificate fingerprints, the server's certificate (read
//! from PEM files or made on first start) and the rustls settings both sides share.
//!
//! Both sides speak TLS 1.3 only, through rustls with the *ring* provider. The server's
//! certificate is usually self-signed: [`ServerIdentity::load_or_create`] makes one with rcgen
//! the first time a server starts and keeps it in the server's data directory, so its
//! [`Fingerprint`] (the SHA-256 of the certificate) stays the same from one start to the
//! next. The client trusts such a certificate on first use and remembers the fingerprint
//! (`client::trust`); a certificate signed by a CA is checked against the system's roots
//! instead. The server's side of the connection is driven by `server::tls`, the client's by
//! tokio-rustls (`client::connector`).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// File name of the certificate a server makes for itself, in its data directory.
pub const CERT_FILE: &str = "confab-server.crt";
/// File name of the private key of that certificate (readable by its owner only).
pub const KEY_FILE: &str = "confab-server.key";

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM certificate, or one that does not parse.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// A file holds no PEM private key, or one that does not parse.
    #[error("no private key in {}", .0.display())]
    NoKey(PathBuf),
    /// The self-signed certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate, the key or the roots.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The SHA-256 of a certificate (its DER bytes), shown as `SHA256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint did not parse.
#[derive(Debug, thiserror::Error)]
#[error("a fingerprint is SHA256: followed by 64 hex digits (colons allowed), not {0:?}")]
pub struct BadFingerprint(String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Parses `SHA256:` and 64 hex digits, in either case, with or without colons between
    /// the bytes (as `openssl x509 -fingerprint -sha256` prints them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint(s.to_owned());
        let hex = s.get(..7).filter(|p| p.eq_ignore_ascii_case("sha256:")).ok_or_else(bad)?;
        let digits: Vec<u8> = s[hex.len()..].bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// A server's certificate chain and private key.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerIdentity({})", self.fingerprint())
    }
}

impl ServerIdentity {
    /// Reads a certificate chain (leaf first) and its private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::NoCertificate(cert.to_owned()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert.to_owned()));
        }
        let key_pem = read(key)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(key.to_owned()))?;
        Ok(Self { chain, key: key_der })
    }

    /// A new self-signed certificate (for `localhost`; clients go by its fingerprint).
    pub fn self_signed() -> Result<Self, TlsError> {
        Ok(Self::generate()?.0)
    }

    /// The certificate kept in `dir` ([`CERT_FILE`], [`KEY_FILE`]), made and saved there
    /// first if there is none; `true` with it if it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), TlsError> {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() || key.exists() {
            return Ok((Self::from_pem_files(&cert, &key)?, false));
        }
        let (identity, cert_pem, key_pem) = Self::generate()?;
        std::fs::create_dir_all(dir)
            .map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        // The key first, created readable by its owner only; the certificate last, so that a
        // crash in between leaves a key without a certificate, which the next start reports.
        write_new(&key, key_pem.as_bytes(), 0o600)?;
        write_new(&cert, cert_pem.as_bytes(), 0o644)?;
        Ok((identity, true))
    }

    /// The fingerprint of the leaf certificate, which clients remember.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// The settings a server serves TLS with.
    pub fn into_server_tls(self) -> Result<ServerTls, TlsError> {
        let fingerprint = self.fingerprint();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain, self.key)?;
        // No session resumption: a client connects once and stays, and a reconnect costs one
        // full handshake. Saves two tickets per handshake and the server's session cache.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), fingerprint })
    }

    fn generate() -> Result<(Self, String, String), TlsError> {
        // The name is not what a client checks a self-signed certificate by (it checks the
        // fingerprint), so one will do.
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let key = PrivateKeyDer::try_from(signing_key.serialize_der())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_owned())))?;
        let identity = Self { chain: vec![cert.der().clone()], key };
        Ok((identity, cert.pem(), signing_key.serialize_pem()))
    }
}

/// What a server needs to serve TLS: `server::Config::tls` (`None` serves plaintext).
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    fingerprint: Fingerprint,
}

impl ServerTls {
    /// The fingerprint of the certificate served.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerTls({})", self.fingerprint)
    }
}

/// The crypto provider both sides use.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Writes a file that must not exist yet, with `mode` from the start.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|source| TlsError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_what_it_shows_with_or_without_colons() {
        let fp = Fingerprint((0..32).collect::<Vec<u8>>().try_into().unwrap());
        let shown = fp.to_string();
        assert_eq!(
            shown,
            format!(
                "SHA256:{}",
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
            )
        );
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        let openssl = "sha256:".to_owned()
            + &fp.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fp);
        for bad in ["", "SHA256:", "SHA256:00", "MD5:00", &shown[..shown.len() - 1], "SHA256:zz"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
        assert!(format!("{shown}0").parse::<Fingerprint>().is_err());
    }

    #[test]
    fn a_server_keeps_the_certificate_it_made_on_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = ServerIdentity::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (again, created) = ServerIdentity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
        assert_ne!(ServerIdentity::self_signed().unwrap().fingerprint(), first.fingerprint());
        first.into_server_tls().unwrap();
    }

    #[test]
    fn a_key_without_its_certificate_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let err = ServerIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
    }
}
