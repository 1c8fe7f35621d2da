//! Where the server is and how the connection to it is secured: [`Connector`].
//!
//! TLS is the default ([`Security::Tls`]): tokio-rustls on the TCP stream, with the
//! certificate judged by [`trust`](super::trust)'s rules. [`Security::Plaintext`] exists for
//! benchmarks and debugging and is refused unless the server's address is a loopback one,
//! checked on the connected socket, before a byte is sent. One `Connector` can connect any
//! number of times (a reconnect is another [`Connector::connect`]); the system's roots are
//! read once, at the first connection that needs them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::trust::{KnownServers, Rule, TrustError, Trusted, Verdict, Verifier};
use super::{Client, ClientError, Events};
use crate::tls::{Fingerprint, TlsError};

/// How to secure the connection to the server.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS, trusting the certificates that [`Trust`] says.
    Tls(Trust),
    /// No encryption: only to a server on a loopback address.
    Plaintext,
}

/// Which server certificates to trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// One signed by a CA on the system's roots; else the one remembered for this server in
    /// the file, or, if there is none, the first one seen (which is then remembered).
    FirstUse(KnownServers),
    /// Only one signed for the server's name by a CA in this PEM file.
    Ca(PathBuf),
    /// Only the certificate with this fingerprint.
    Pinned(Fingerprint),
}

/// The settings of a server connection: the address and its [`Security`].
#[derive(Debug)]
pub struct Connector {
    addr: String,
    security: Security,
    /// The system's roots, read at the first connection that needs them.
    system_roots: OnceLock<Option<Arc<WebPkiServerVerifier>>>,
}

impl Connector {
    /// A connector to `addr` (`host:port`).
    pub fn new(addr: impl Into<String>, security: Security) -> Self {
        Self { addr: addr.into(), security, system_roots: OnceLock::new() }
    }

    /// The server's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How the connection is secured.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Connects, secures the connection, says hello and starts the I/O task. Over TLS,
    /// [`Client::trusted`] tells why the server was trusted.
    pub async fn connect(&self) -> Result<(Client, Events), ClientError> {
        let socket = TcpStream::connect(&self.addr).await.map_err(ClientError::Connect)?;
        socket.set_nodelay(true).map_err(ClientError::Connect)?;
        let local = socket.local_addr().map_err(ClientError::Connect)?;
        let peer = socket.peer_addr().map_err(ClientError::Connect)?;
        let trust = match &self.security {
            Security::Tls(trust) => trust,
            Security::Plaintext => {
                if !peer.ip().to_canonical().is_loopback() {
                    return Err(TrustError::Plaintext(self.addr.clone()).into());
                }
                return Client::handshake(Either::Left(socket), (local, peer), None).await;
            }
        };
        let rule = match trust {
            Trust::FirstUse(known) => Rule::FirstUse {
                roots: self.system_roots.get_or_init(system_roots).clone(),
                known: known.get(&self.addr)?,
            },
            Trust::Ca(file) => Rule::Ca(ca_roots(file)?),
            Trust::Pinned(fingerprint) => Rule::Pinned(*fingerprint),
        };
        let verifier = Verifier::new(rule);
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TrustError::Ca(e.into()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let name = self.server_name(&socket);
        let handshake = TlsConnector::from(Arc::new(config)).connect(name, socket).await;
        let verdict = verifier.verdict();
        let stream = handshake.map_err(|source| self.refusal(verdict.clone(), source))?;
        let trusted = match verdict {
            Some(Verdict::Trusted(trusted)) => trusted,
            // The verifier runs in every successful handshake.
            _ => return Err(ClientError::Protocol("no certificate was checked".into())),
        };
        if let (Trusted::FirstUse(fingerprint), Trust::FirstUse(known)) = (&trusted, trust) {
            known.add(&self.addr, *fingerprint)?;
        }
        Client::handshake(Either::Right(stream), (local, peer), Some(trusted)).await
    }

    /// The name the certificate is checked for: the host part of the address, or the
    /// address connected to.
    fn server_name(&self, socket: &TcpStream) -> ServerName<'static> {
        let host = self.addr.rsplit_once(':').map_or(self.addr.as_str(), |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(name) = ServerName::try_from(host.to_owned()) {
            return name;
        }
        let ip = socket.peer_addr().map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
        ServerName::IpAddress(ip.into())
    }

    /// The error for a failed handshake: why the certificate was refused, if it was.
    fn refusal(&self, verdict: Option<Verdict>, source: std::io::Error) -> ClientError {
        let server = self.addr.clone();
        let file = || match &self.security {
            Security::Tls(Trust::FirstUse(known)) => known.path().to_owned(),
            _ => PathBuf::new(),
        };
        let error = match verdict {
            Some(Verdict::Changed { known, presented }) => {
                TrustError::Changed { server, known, presented, file: file() }
            }
            Some(Verdict::NotPinned { expected, presented }) => {
                TrustError::NotPinned { server, expected, presented }
            }
            Some(Verdict::NotSigned(reason)) => TrustError::NotSigned { server, reason },
            Some(Verdict::Trusted(_)) | None => TrustError::Handshake { server, source },
        };
        error.into()
    }
}

/// A verifier for the system's roots, or `None` if the system has none.
fn system_roots() -> Option<Arc<WebPkiServerVerifier>> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!("reading the system's root certificates: {error}");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    verifier_for(roots)
}

/// A verifier for the CA certificates in a PEM file.
fn ca_roots(file: &std::path::Path) -> Result<Arc<WebPkiServerVerifier>, TrustError> {
    let pem =
        std::fs::read(file).map_err(|source| TlsError::Read { path: file.to_owned(), source })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| TlsError::NoCertificate(file.to_owned()))?;
        roots.add(cert).map_err(TlsError::Rustls)?;
    }
    verifier_for(roots).ok_or_else(|| TlsError::NoCertificate(file.to_owned()).into())
}

fn verifier_for(roots: RootCertStore) -> Option<Arc<WebPkiServerVerifier>> {
    if roots.is_empty() {
        return None;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .build()
        .inspect_err(|e| tracing::warn!("cannot use the root certificates: {e}"))
        .ok()
}
