//! The socket under a connection's [`Conn`](super::conn::Conn): plain TCP or TLS, driven by
//! readiness either way.
//!
//! The TLS handshake is tokio-rustls's acceptor, bounded by [`HANDSHAKE_TIMEOUT`]. After it
//! the TCP stream and rustls's `ServerConnection` are taken apart again, so that `Conn` keeps
//! the read path it has over plain TCP: it waits for the socket to be readable, reads what is
//! there without waiting (a short read clears tokio's readiness, saving the read that would
//! only find the socket empty), and writes once per wake-up. Over TLS a read takes the
//! ciphertext into a buffer on the stack, hands it to rustls, which decrypts it, and appends
//! the plaintext to `Conn`'s read buffer at once, so rustls never holds plaintext that a
//! readiness wait would not see; a write hands the plaintext to rustls and writes the records
//! it makes in one `writev`. A `close_notify` from the client ends the connection after the
//! data before it; a record that does not decrypt ends it with an alert.
//!
//! What a TLS connection keeps while idle beyond a plain one: rustls's state and its 4 KiB
//! buffer for incoming records, which rustls keeps once it has read.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls::ServerConnection;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::protocol::{encode_frame, ErrorCode, ErrorReply, ServerMessage};
use crate::tls::ServerTls;

/// How long a new connection has to finish its TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ciphertext read from the socket at once: what fits in rustls's buffer for incoming records
/// in one go.
const READ_CHUNK: usize = 4096;

/// A client's socket, plain or TLS.
pub(super) enum Transport {
    /// Plain TCP (`server::Config::tls` is `None`).
    Plain(TcpStream),
    /// TLS, after the handshake.
    Tls(Box<TlsSocket>),
}

/// A TCP stream and the rustls connection on it.
pub(super) struct TlsSocket {
    socket: TcpStream,
    tls: ServerConnection,
    /// rustls holds plaintext that came with the end of the handshake: the next read takes it
    /// without waiting for the socket.
    buffered: bool,
    /// The client sent `close_notify`; what it sent before has been read.
    closed: bool,
}

impl Transport {
    /// The transport for a new connection: `socket` as it is, or after a TLS handshake with
    /// `tls` (`None` if that fails or takes too long).
    pub(super) async fn accept(
        socket: TcpStream,
        tls: Option<&ServerTls>,
        addr: SocketAddr,
    ) -> Option<Self> {
        let Some(tls) = tls else { return Some(Transport::Plain(socket)) };
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        if !tokio::time::timeout_at(deadline, speaks_tls(&socket, addr)).await.unwrap_or(false) {
            return None;
        }
        let stream = match tokio::time::timeout_at(deadline, tls.acceptor.accept(socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%addr, "TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!(%addr, "no TLS handshake in time");
                return None;
            }
        };
        let (socket, mut tls) = stream.into_inner();
        // `Conn` bounds what it queues; rustls takes it all, so a write is one `writev`.
        tls.set_buffer_limit(None);
        // The client may have sent its first frame with the end of the handshake.
        let buffered = match tls.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(e) => {
                tracing::debug!(%addr, "TLS failed: {e}");
                return None;
            }
        };
        Some(Transport::Tls(Box::new(TlsSocket { socket, tls, buffered, closed: false })))
    }

    /// Ready when [`Transport::read_into`] has something to give (or an error to report).
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(socket) => socket.poll_read_ready(cx),
            Transport::Tls(tls) if tls.buffered || tls.closed => Poll::Ready(Ok(())),
            Transport::Tls(tls) => tls.socket.poll_read_ready(cx),
        }
    }

    /// Waits until [`Transport::poll_read_ready`] is ready.
    pub(super) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Ready when the socket may take more output.
    pub(super) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Appends what the client sent to `input` without waiting: `Ok(n)` with the bytes added,
    /// `Ok(0)` once the client has closed the connection, `WouldBlock` if there was nothing.
    /// `input` only grows here, by what one read of the socket gave.
    pub(super) fn read_into(&mut self, input: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => read_plain(socket, input),
            Transport::Tls(tls) => tls.read_into(input),
        }
    }

    /// Writes `out` (consuming it) as far as the socket takes it without waiting; true once
    /// all of it has gone out. Most writes fit in the socket's buffer and take one syscall.
    pub(super) fn write_from(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        match self {
            Transport::Plain(socket) => {
                while !out.is_empty() {
                    match socket.try_write(out) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => out.advance(n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
            Transport::Tls(tls) => tls.write_from(out),
        }
    }

    /// Ends the connection: TLS says `close_notify` (if the socket takes it at once), then
    /// the TCP stream is shut down.
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.shutdown().await,
            Transport::Tls(tls) => {
                tls.tls.send_close_notify();
                let _ = tls.write_from(&mut BytesMut::new());
                tls.socket.shutdown().await
            }
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &tls.socket,
        }
    }
}

/// Whether the client opens with a TLS handshake record. A Confab client on `--plaintext`
/// opens with a frame instead: it is told, in a frame it can read, and the connection ends.
async fn speaks_tls(socket: &TcpStream, addr: SocketAddr) -> bool {
    /// The first byte of a TLS handshake record.
    const HANDSHAKE: u8 = 0x16;
    let mut first = [0u8; 1];
    match socket.peek(&mut first).await {
        Ok(1) if first[0] == HANDSHAKE => return true,
        Ok(1) => {}
        _ => return false,
    }
    tracing::debug!(%addr, "a client without TLS");
    let refusal = ErrorReply::new(
        ErrorCode::HandshakeRequired,
        "this server speaks TLS: connect without --plaintext",
    );
    // Its hello is read first (it is there: peek saw it), so that closing with it unread
    // does not reset the connection before the client has read the refusal.
    let mut hello = [0u8; 1024];
    for _ in 0..16 {
        if !matches!(socket.try_read(&mut hello), Ok(n) if n > 0) {
            break;
        }
    }
    if let Ok(frame) = encode_frame(&ServerMessage::Reply { id: 0, result: Err(refusal) }) {
        let _ = socket.try_write(&frame);
    }
    false
}

/// A plain read into `input`'s free room.
fn read_plain(socket: &TcpStream, input: &mut BytesMut) -> io::Result<usize> {
    input.reserve(READ_CHUNK);
    let room = input.capacity() - input.len();
    // A read that returns less than it had room for has emptied the socket's receive queue.
    // Reporting that to tokio as `WouldBlock` clears the readiness now, which saves the read
    // that would otherwise only find the queue empty (one syscall per wake-up when messages
    // come one at a time). Data that arrives later is a new edge: tokio only clears
    // readiness that no event has renewed since it was read.
    let mut got = 0;
    let read = socket.try_io(Interest::READABLE, || {
        got = socket.try_read_buf(input)?;
        if got > 0 && got < room {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    settle(read, got)
}

/// What a read gave: the bytes, or the error, where the short read's `WouldBlock` is not one.
fn settle(read: io::Result<()>, got: usize) -> io::Result<usize> {
    match read {
        Err(e) if e.kind() == ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
        Ok(()) => Ok(got),
    }
}

impl TlsSocket {
    fn read_into(&mut self, input: &mut BytesMut) -> io::Result<usize> {
        if self.closed {
            return Ok(0);
        }
        let before = input.len();
        if std::mem::take(&mut self.buffered) {
            self.decrypt(&[], input)?;
            if input.len() > before || self.closed {
                return Ok(input.len() - before);
            }
        }
        let mut ciphertext = [0u8; READ_CHUNK];
        let mut got = 0;
        // The same short-read rule as plain TCP, for the ciphertext.
        let read = self.socket.try_io(Interest::READABLE, || {
            got = self.socket.try_read(&mut ciphertext)?;
            if got > 0 && got < READ_CHUNK {
                Err(ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if settle(read, got)? == 0 {
            return Ok(0); // the end of the stream, without close_notify
        }
        self.decrypt(&ciphertext[..got], input)?;
        match input.len() - before {
            // Only handshake or alert records, or part of a record.
            0 if !self.closed => Err(ErrorKind::WouldBlock.into()),
            added => Ok(added),
        }
    }

    /// Hands `ciphertext` to rustls and appends the plaintext it gives to `input`.
    fn decrypt(&mut self, mut ciphertext: &[u8], input: &mut BytesMut) -> io::Result<()> {
        loop {
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // rustls has queued an alert that says why; it goes if the socket takes it.
                    let _ = self.write_from(&mut BytesMut::new());
                    return Err(io::Error::new(ErrorKind::InvalidData, e));
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = input.len();
                input.resize(start + n, 0);
                self.tls.reader().read_exact(&mut input[start..])?;
            }
            if state.peer_has_closed() {
                // Nothing after close_notify counts; the next read reports the end.
                self.closed = true;
                return Ok(());
            }
            if ciphertext.is_empty() {
                return Ok(());
            }
            // Takes what fits in rustls's buffer: at least a whole record, once the records
            // before have been processed.
            if self.tls.read_tls(&mut ciphertext)? == 0 {
                return Ok(());
            }
        }
    }

    fn write_from(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        if !out.is_empty() {
            self.tls.writer().write_all(out)?;
            out.clear();
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Nonblocking(&self.socket)) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// `io::Write` on a tokio socket that never waits: `WouldBlock` when it is full.
struct Nonblocking<'a>(&'a TcpStream);

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
