//! `quinn_transfer`: the QUIC baseline of the file-transfer benchmark, one bulk transfer
//! over QUIC through the quinn crate, memory to memory.
//!
//! `scripts/bench-transfer.sh` runs `recv` and `send` beside Confab's
//! `confab-transfer-bench` and socat, in the same network namespaces (or both on loopback),
//! pinned to the same cores, and reports the receiver's rate and each side's CPU %:
//!
//! ```text
//! quinn_transfer recv --bind 10.77.0.2:47320
//! quinn_transfer send --to 10.77.0.2:47320 --bytes 1073741824
//! ```
//!
//! The receiver makes a self-signed certificate, accepts one connection and one
//! unidirectional stream, reads it to the end into one reused buffer and discards it. The
//! sender writes its bytes from one in-memory MiB, generated once. Each side prints one
//! line, `bytes=<N> secs=<S> mbit=<R>`: the receiver's time runs from the stream's accept
//! (its first bytes are in) until its end; the sender's from opening the stream until the
//! receiver has acknowledged all of it (or closed the connection after reading it).
//!
//! Unlike Confab's benchmark, which is file to file and checks SHA-256 of what it saved,
//! this reads no file, writes none and hashes nothing: QUIC's own encryption (TLS 1.3,
//! AES-GCM through rustls and ring) is all the work besides the transport, so its figure
//! is an upper bound for a QUIC file transfer.
//!
//! The transport is quinn's defaults (Cubic congestion control, path MTU discovery on)
//! with receive and send windows large enough for bulk transfer. The sockets ask for the
//! same 8 MiB kernel buffers as Confab's transfer sockets (the kernel caps them at its
//! limits), so that the two do not differ there.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, EndpointConfig, TokioRuntime, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The stream's and the connection's receive window, and the send window.
const WINDOW: u32 = 64 << 20;
/// Socket buffers asked for, as Confab's `TransferConfig::socket_buffer`.
const SOCKET_BUFFER: usize = 8 << 20;
/// The sender's in-memory block, and the receiver's read buffer.
const BLOCK: usize = 1 << 20;
/// The receiver's application close code for "read it all".
const DONE: u32 = 0;
/// How long the receiver lingers after closing, so that the sender sees the close.
const LINGER: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(about = "A memory-to-memory QUIC bulk transfer through quinn, for benchmarks")]
struct Args {
    #[command(subcommand)]
    side: Side,
    /// Give up after this many seconds.
    #[arg(long, global = true, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Subcommand, Debug)]
enum Side {
    /// Accept one connection and one stream, and read it to the end.
    Recv {
        /// Local UDP address.
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Connect to the receiver at TO and send it BYTES bytes.
    Send {
        /// The receiver's UDP address.
        #[arg(long)]
        to: SocketAddr,
        /// How many bytes to send.
        #[arg(long)]
        bytes: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout_secs);
    let result = match tokio::time::timeout(limit, run(args.side)).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("timed out after {} s", limit.as_secs())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quinn_transfer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(side: Side) -> anyhow::Result<()> {
    match side {
        Side::Recv { bind } => recv(bind).await,
        Side::Send { to, bytes } => send(to, bytes).await,
    }
}

fn transport() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(WINDOW))
        .receive_window(VarInt::from_u32(WINDOW))
        .send_window(WINDOW.into());
    Arc::new(transport)
}

fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> anyhow::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).context("the UDP socket")?;
    // Best effort, as Confab's: the kernel caps these at its limits.
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    Endpoint::new(EndpointConfig::default(), server, socket, Arc::new(TokioRuntime))
        .context("the QUIC endpoint")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn report(bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!("bytes={bytes} secs={secs:.3} mbit={:.1}", bytes as f64 * 8.0 / secs / 1e6);
}

async fn recv(bind: SocketAddr) -> anyhow::Result<()> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .context("making the certificate")?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the certificate's key: {e}"))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    server.transport_config(transport());
    let endpoint = endpoint(bind, Some(server))?;

    let incoming = endpoint.accept().await.context("the endpoint closed")?;
    let conn = incoming.await.context("the handshake")?;
    let mut stream = conn.accept_uni().await.context("accepting the stream")?;
    let start = Instant::now();
    let mut buf = vec![0u8; BLOCK];
    let mut bytes = 0u64;
    while let Some(n) = stream.read(&mut buf).await.context("reading the stream")? {
        bytes += n as u64;
    }
    report(bytes, start);
    conn.close(VarInt::from_u32(DONE), b"done");
    // The close is sent once; linger so that it leaves, and is resent if lost.
    let _ = tokio::time::timeout(LINGER, endpoint.wait_idle()).await;
    Ok(())
}

async fn send(to: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let verifier = Arc::new(AnyCertificate(provider().signature_verification_algorithms));
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(transport());
    let unspecified: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = endpoint(unspecified, None)?;
    let conn = endpoint
        .connect_with(client, to, "localhost")?
        .await
        .with_context(|| format!("connecting to {to}"))?;

    // Patterned rather than random: QUIC encrypts it either way, and nothing compresses it.
    let block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut stream = conn.open_uni().await.context("opening the stream")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        stream.write_all(&block[..n]).await.context("writing the stream")?;
        left -= n as u64;
    }
    stream.finish().context("finishing the stream")?;
    // Done when the receiver acknowledges all of the stream, or closes the connection after
    // reading it (its close can overtake the last acknowledgement).
    let done = |e: &ConnectionError| matches!(e, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(DONE));
    tokio::select! {
        stopped = stream.stopped() => match stopped {
            Ok(None) => {}
            Ok(Some(code)) => bail!("the receiver stopped the stream with code {code}"),
            Err(quinn::StoppedError::ConnectionLost(e)) if done(&e) => {}
            Err(e) => bail!("waiting for the receiver: {e}"),
        },
        e = conn.closed() => if !done(&e) {
            bail!("the connection closed: {e}");
        },
    }
    report(bytes, start);
    // The receiver closes once it has read everything: wait for that, so that a sender
    // exiting does not cut it short.
    let e = conn.closed().await;
    if !done(&e) {
        bail!("the connection closed: {e}");
    }
    endpoint.wait_idle().await;
    Ok(())
}

/// Accepts any server certificate: the sender only ever talks to the receiver the
/// benchmark started itself, whose certificate is made fresh each run. The handshake's
/// signatures are still checked. (`confab-bench`'s load generator has the same one; a
/// verifier that trusts anything stays out of the library, where a client could pick it up.)
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
