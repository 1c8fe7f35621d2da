//! Which server certificates the client trusts: CA-signed ones, the ones it has seen before
//! (trust on first use, as SSH does) and a pinned one.
//!
//! A Confab server usually has a self-signed certificate it made itself. The first time the
//! client connects to it, it trusts the certificate, tells the user its [`Fingerprint`] and
//! writes it to [`KnownServers`] (`known_servers` in the client's data directory, one
//! `SERVER SHA256:...` line per server address). From then on, a server at that address
//! must present the same certificate: another one is refused with [`TrustError::Changed`],
//! which shows both fingerprints and how to accept the new one. A certificate that a CA on
//! the system's roots signed for the server's name is trusted as it is, and not remembered
//! (it may be renewed at any time). `--ca FILE` trusts only certificates signed by that CA;
//! `--fingerprint` only the one certificate.
//!
//! `Verifier` is the rustls certificate verifier that applies these rules during the
//! handshake; it notes what it decided ([`Trusted`], or why it refused) for the connector,
//! which writes `known_servers` only once the handshake has succeeded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::tls::{Fingerprint, TlsError};

/// File name of the remembered server fingerprints, in the client's data directory.
pub const KNOWN_SERVERS_FILE: &str = "known_servers";

/// Why a server was not trusted, or trust could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The server presented another certificate than the one remembered for it.
    #[error(
        "the certificate of {server} has changed: it was {known}, it is now {presented}. \
         Someone may be intercepting the connection, or the server got a new certificate. \
         If you trust the new one (ask the server's admin for its fingerprint), delete the \
         line for {server} in {}; the next connection remembers the new one",
        file.display()
    )]
    Changed {
        /// The server address.
        server: String,
        /// The fingerprint remembered for it.
        known: Fingerprint,
        /// The fingerprint of the certificate it presented.
        presented: Fingerprint,
        /// The known servers file.
        file: PathBuf,
    },
    /// The server's certificate is not the one given with `--fingerprint`.
    #[error("the certificate of {server} is {presented}, not the {expected} asked for")]
    NotPinned {
        /// The server address.
        server: String,
        /// The fingerprint asked for.
        expected: Fingerprint,
        /// The fingerprint of the certificate it presented.
        presented: Fingerprint,
    },
    /// With `--ca`, the certificate was not signed by that CA for the server's name.
    #[error("the certificate of {server} is not signed by the given CA: {reason}")]
    NotSigned {
        /// The server address.
        server: String,
        /// What rustls found wrong.
        reason: String,
    },
    /// The known servers file could not be read or written.
    #[error("known servers file {}: {source}", path.display())]
    KnownServers {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file could not be used.
    #[error(transparent)]
    Ca(#[from] TlsError),
    /// Plaintext to a server that is not on this machine.
    #[error(
        "refusing to talk plaintext to {0}, which is not a loopback address: passwords and \
         messages would cross the network in the clear (leave out --plaintext)"
    )]
    Plaintext(String),
    /// The TLS handshake failed for another reason.
    #[error(
        "TLS with {server} failed: {source} (a server started with --plaintext does not speak \
         TLS)"
    )]
    Handshake {
        /// The server address.
        server: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Why the client trusted the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trusted {
    /// Signed for the server's name by a CA the client trusts.
    Ca,
    /// The certificate remembered for this server.
    Known(Fingerprint),
    /// Seen for the first time, and now remembered.
    FirstUse(Fingerprint),
    /// The certificate asked for with `--fingerprint`.
    Pinned(Fingerprint),
}

/// The file of server fingerprints trusted on first use.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// [`KNOWN_SERVERS_FILE`] in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(dir.join(KNOWN_SERVERS_FILE))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint remembered for `server`, if any. Lines that do not parse (and `#`
    /// comments) are skipped.
    pub fn get(&self, server: &str) -> Result<Option<Fingerprint>, TrustError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.error(source)),
        };
        Ok(text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(name), Some(fp)) if name == server => fp.parse().ok(),
                _ => None,
            }
        }))
    }

    /// Remembers `fingerprint` for `server`, creating the file (and its directory) if need be.
    pub fn add(&self, server: &str, fingerprint: Fingerprint) -> Result<(), TrustError> {
        let append = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)?;
            // A file edited by hand may lack its last line end.
            let len = file.metadata()?.len();
            let mut last = [b'\n'];
            if len > 0 {
                use std::io::{Read, Seek};
                file.seek(std::io::SeekFrom::Start(len - 1))?;
                file.read_exact(&mut last)?;
            }
            let start = if last[0] == b'\n' { "" } else { "\n" };
            writeln!(file, "{start}{server} {fingerprint}")
        };
        append().map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> TrustError {
        TrustError::KnownServers { path: self.path.clone(), source }
    }
}

/// How one handshake decides; made per connection.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    /// CA-signed (if `roots` has any), else the certificate remembered in `known`, else the
    /// first one seen.
    FirstUse { roots: Option<Arc<WebPkiServerVerifier>>, known: Option<Fingerprint> },
    /// Only certificates signed for the name by these roots.
    Ca(Arc<WebPkiServerVerifier>),
    /// Only this certificate.
    Pinned(Fingerprint),
}

/// What a handshake's verifier decided.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Trusted(Trusted),
    Changed { known: Fingerprint, presented: Fingerprint },
    NotPinned { expected: Fingerprint, presented: Fingerprint },
    NotSigned(String),
}

/// The rustls verifier that applies a [`Rule`] and notes its [`Verdict`].
#[derive(Debug)]
pub(crate) struct Verifier {
    rule: Rule,
    algorithms: WebPkiSupportedAlgorithms,
    verdict: Mutex<Option<Verdict>>,
}

impl Verifier {
    pub(crate) fn new(rule: Rule) -> Arc<Self> {
        let algorithms = crate::tls::provider().signature_verification_algorithms;
        Arc::new(Self { rule, algorithms, verdict: Mutex::new(None) })
    }

    /// What the handshake decided, once it has got that far.
    pub(crate) fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Verdict {
        let presented = Fingerprint::of(end_entity);
        let signed = |roots: &WebPkiServerVerifier| {
            roots.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        };
        match &self.rule {
            Rule::Pinned(expected) if *expected == presented => {
                Verdict::Trusted(Trusted::Pinned(presented))
            }
            Rule::Pinned(expected) => Verdict::NotPinned { expected: *expected, presented },
            Rule::Ca(roots) => match signed(roots) {
                Ok(_) => Verdict::Trusted(Trusted::Ca),
                Err(e) => Verdict::NotSigned(e.to_string()),
            },
            Rule::FirstUse { roots: Some(roots), .. } if signed(roots).is_ok() => {
                Verdict::Trusted(Trusted::Ca)
            }
            Rule::FirstUse { known: Some(known), .. } if *known == presented => {
                Verdict::Trusted(Trusted::Known(presented))
            }
            Rule::FirstUse { known: Some(known), .. } => {
                Verdict::Changed { known: *known, presented }
            }
            Rule::FirstUse { known: None, .. } => Verdict::Trusted(Trusted::FirstUse(presented)),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.decide(end_entity, intermediates, server_name, ocsp_response, now);
        let trusted = matches!(verdict, Verdict::Trusted(_));
        *self.verdict.lock().unwrap_or_else(PoisonError::into_inner) = Some(verdict);
        if trusted {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    // The certificate's key signs the handshake: a server that only copied the certificate
    // cannot pass for the one remembered.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(byte: u8) -> Fingerprint {
        format!("SHA256:{}", format!("{byte:02x}").repeat(32)).parse().unwrap()
    }

    #[test]
    fn known_servers_are_remembered_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownServers::in_dir(&dir.path().join("new-dir"));
        assert_eq!(known.get("example.org:4000").unwrap(), None);
        known.add("example.org:4000", fp(1)).unwrap();
        known.add("127.0.0.1:4000", fp(2)).unwrap();
        assert_eq!(known.get("example.org:4000").unwrap(), Some(fp(1)));
        assert_eq!(known.get("127.0.0.1:4000").unwrap(), Some(fp(2)));
        assert_eq!(known.get("127.0.0.1:4001").unwrap(), None);
        let text = std::fs::read_to_string(known.path()).unwrap();
        assert_eq!(text, format!("example.org:4000 {}\n127.0.0.1:4000 {}\n", fp(1), fp(2)));
    }

    #[test]
    fn comments_and_broken_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownServers::in_dir(dir.path());
        let text = format!("# mine\nhost:1\nhost:1 SHA256:nothex\nhost:1 {}", fp(7));
        std::fs::write(known.path(), text).unwrap();
        assert_eq!(known.get("host:1").unwrap(), Some(fp(7)));
        assert_eq!(known.get("#").unwrap(), None);
        // Added on a line of its own, though the file did not end with one.
        known.add("host:2", fp(8)).unwrap();
        assert_eq!(known.get("host:1").unwrap(), Some(fp(7)));
        assert_eq!(known.get("host:2").unwrap(), Some(fp(8)));
    }

    #[test]
    fn a_changed_certificate_is_refused_and_a_pinned_one_must_match() {
        let cert = CertificateDer::from(vec![1, 2, 3]);
        let seen = Fingerprint::of(&cert);
        let name = ServerName::try_from("localhost").unwrap();
        let decide = |rule| {
            Verifier::new(rule).decide(
                &cert,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            )
        };
        let first = decide(Rule::FirstUse { roots: None, known: None });
        assert!(matches!(first, Verdict::Trusted(Trusted::FirstUse(f)) if f == seen));
        let again = decide(Rule::FirstUse { roots: None, known: Some(seen) });
        assert!(matches!(again, Verdict::Trusted(Trusted::Known(f)) if f == seen));
        let changed = decide(Rule::FirstUse { roots: None, known: Some(fp(9)) });
        assert!(matches!(changed, Verdict::Changed { known, presented }
            if known == fp(9) && presented == seen));
        assert!(matches!(decide(Rule::Pinned(seen)), Verdict::Trusted(Trusted::Pinned(_))));
        assert!(matches!(decide(Rule::Pinned(fp(9))), Verdict::NotPinned { .. }));
    }
}
