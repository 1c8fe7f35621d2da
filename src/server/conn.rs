//! The socket of one client connection: its buffers, reading and sorting frames, queuing
//! replies and writing them out.
//!
//! [`Conn`] is the plumbing under the session phases of [`super::session`], as mini-redis's
//! `connection.rs` is under its commands. Reads go through [`Conn::fill`] and [`Conn::decode`]
//! (or [`Conn::read`], which waits), writes are queued into one output buffer and written by
//! [`Conn::flush`] at once when the socket takes them, else through a wait bounded by the write
//! timeout. An idle connection holds no buffers: the read buffer is allocated when the socket
//! becomes readable and freed once every frame in it has been handled, and the output buffer is
//! freed once written. The socket is a [`Transport`], plain TCP or TLS (`server::tls`), read
//! and written the same way.

use std::future::poll_fn;
use std::io::ErrorKind;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::Decoder;

use super::inbox::InboxReceiver;
use super::tls::Transport;
use super::Shared;
use crate::protocol::{
    codec, ClientMessage, CodecError, ErrorCode, ErrorReply, LinkId, MalformedFrame, Reply,
    Request, ServerCodec, ServerMessage,
};

/// How long a goodbye may take to write before the connection is dropped anyway.
pub(super) const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a closing connection reads (and drops) what the client still sends, so that the
/// reset of unread input does not destroy the last frame written; and how much at most.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 64 * 1024;
/// Room made in the output buffer before the first frame of a batch.
const OUT_CHUNK: usize = 512;

/// What the client sent next, already sorted into what to do about it.
pub(super) enum Incoming {
    /// A request to handle.
    Request(u32, Request),
    /// The client has shown every message up to this id.
    Ack(u64),
    /// Bytes of a private chat to relay on a link.
    Relay(LinkId, Vec<u8>),
    /// A frame to answer with an error; the connection ends after it if `fatal`.
    Bad(ErrorReply, bool),
    /// A frame stayed incomplete for longer than the frame timeout.
    Stalled,
    /// The client closed the connection or it failed.
    Closed,
}

/// A frame as read: a message, a well-framed payload that did not decode, or a stream error.
pub(super) type Read = Result<Result<ClientMessage, MalformedFrame>, CodecError>;

/// The socket of one client, with its read and output buffers (empty while idle).
pub(super) struct Conn {
    pub(super) socket: Transport,
    input: BytesMut,
    codec: ServerCodec,
    pub(super) out: BytesMut,
    pub(super) write_timeout: Duration,
    frame_timeout: Duration,
    /// Since when the read buffer has held part of a frame and no whole one.
    partial_since: Option<Instant>,
}

/// What one read from the socket gave.
pub(super) enum Filled {
    /// Bytes were added to the read buffer, or there were none to read after all.
    Data,
    /// The client closed the connection; `None` if cleanly, between frames.
    Closed(Option<CodecError>),
}

impl Conn {
    pub(super) fn new(socket: Transport, shared: &Shared) -> Self {
        Self {
            socket,
            input: BytesMut::new(),
            codec: ServerCodec::new(shared.config.max_frame),
            out: BytesMut::new(),
            write_timeout: shared.config.write_timeout,
            frame_timeout: shared.config.frame_timeout,
            partial_since: None,
        }
    }

    /// The next whole frame in the read buffer, if there is one.
    pub(super) fn decode(&mut self) -> Option<Read> {
        let read = self.codec.decode(&mut self.input).transpose();
        if read.is_some() {
            self.partial_since = None;
        }
        if self.input.is_empty() {
            self.partial_since = None;
            if self.input.capacity() > 0 {
                // Freed as soon as it is empty, not at the next read: an idle session holds
                // no read buffer, including right after a read that the next one may be
                // hours away.
                self.input = BytesMut::new();
            }
        } else if read.is_none() && self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        read
    }

    /// Whether a whole frame already waits in the read buffer: one that came in the same
    /// read as the last one handled (a request right behind the login, say). The socket's
    /// readiness was spent on that read, so a loop that only decodes when the socket is
    /// ready must look here first.
    pub(super) fn frame_waiting(&self) -> bool {
        self.codec.ready(&self.input)
    }

    /// When the part of a frame in the read buffer must be whole, if there is one.
    pub(super) fn stalled_by(&self) -> Option<Instant> {
        self.partial_since.map(|since| since + self.frame_timeout)
    }

    /// Reads what the socket has, without waiting. The buffer is only allocated here, when
    /// the socket is readable.
    pub(super) fn fill(&mut self) -> Filled {
        match self.socket.read_into(&mut self.input) {
            Ok(0) if self.input.is_empty() => Filled::Closed(None),
            Ok(0) => {
                let e = std::io::Error::new(ErrorKind::UnexpectedEof, "cut short");
                Filled::Closed(Some(e.into()))
            }
            Ok(_) => Filled::Data,
            Err(e) if e.kind() == ErrorKind::WouldBlock => Filled::Data,
            Err(e) => Filled::Closed(Some(e.into())),
        }
    }

    /// The next frame; `None` once the client has closed the connection. Cancel-safe: bytes
    /// are only read when they can be kept.
    pub(super) async fn read(&mut self) -> Option<Read> {
        loop {
            if let Some(read) = self.decode() {
                return Some(read);
            }
            let ready = match self.stalled_by() {
                None => self.socket.readable().await,
                Some(by) => match timeout_at(by, self.socket.readable()).await {
                    Ok(ready) => ready,
                    Err(_) => return Some(Err(stall())),
                },
            };
            if let Err(e) = ready {
                return Some(Err(e.into()));
            }
            if let Filled::Closed(error) = self.fill() {
                return error.map(Err);
            }
        }
    }

    /// The next frame from the client. Cancel-safe: nothing is written here.
    pub(super) async fn next(&mut self) -> Incoming {
        sort(self.read().await)
    }

    pub(super) fn queue(&mut self, msg: &ServerMessage) {
        self.out.reserve(OUT_CHUNK);
        if let Err(e) = codec::encode_into(msg, &mut self.out) {
            tracing::error!("cannot encode a reply: {e}");
        }
    }

    pub(super) fn reply(&mut self, id: u32, result: Result<Reply, ErrorReply>) {
        self.queue(&ServerMessage::Reply { id, result });
    }

    /// Writes everything queued, within the configured write timeout.
    pub(super) async fn flush(&mut self) -> bool {
        self.flush_within(self.write_timeout, None).await
    }

    /// Writes everything queued within `limit` and reports whether it all went out; the
    /// output buffer is freed either way. With `inbox`, it also gives up as soon as the inbox
    /// signals that the session must end: a client too slow to read is dropped at once rather
    /// than after the write timeout, and shutdown does not wait for it either.
    pub(super) async fn flush_within(
        &mut self,
        limit: Duration,
        inbox: Option<&InboxReceiver>,
    ) -> bool {
        let written = match self.write_now() {
            Ok(false) => Box::pin(timeout(limit, self.write_rest(inbox))).await.unwrap_or(false),
            done => done.unwrap_or(false),
        };
        // Freed rather than kept: an idle session holds no output buffer.
        self.out = BytesMut::new();
        written
    }

    /// Waits until the socket has taken all the output; false on an error or a signal.
    async fn write_rest(&mut self, inbox: Option<&InboxReceiver>) -> bool {
        loop {
            let signalled = poll_fn(|cx| {
                if inbox.is_some_and(|inbox| inbox.poll_signal(cx).is_ready()) {
                    return Poll::Ready(true);
                }
                // An error shows in the write that follows.
                self.socket.poll_write_ready(cx).map(|_| false)
            })
            .await;
            if signalled {
                return false;
            }
            match self.write_now() {
                Ok(false) => {}
                done => return done.unwrap_or(false),
            }
        }
    }

    /// Writes what the socket takes without waiting; true once nothing is left. Most writes
    /// fit in the socket's buffer, so this is usually the whole flush.
    fn write_now(&mut self) -> std::io::Result<bool> {
        self.socket.write_from(&mut self.out)
    }

    /// Writes a last message (and anything queued before it), briefly, and closes.
    pub(super) async fn goodbye(&mut self, msg: ServerMessage) {
        self.queue(&msg);
        if self.flush_within(GOODBYE_TIMEOUT, None).await {
            self.close().await;
        }
    }

    /// Closes so that what was written arrives: shuts the write side down, then reads and
    /// drops what the client still sends (bounded in time and bytes) until it closes too.
    /// Closing with unread input would reset the connection, and a reset can destroy the
    /// last frame before the client reads it.
    pub(super) async fn close(&mut self) {
        self.input = BytesMut::new();
        if self.socket.shutdown().await.is_err() {
            return;
        }
        let socket = &mut self.socket;
        let _ = timeout(DRAIN_TIMEOUT, async {
            let (mut left, mut scratch) = (DRAIN_BYTES, BytesMut::new());
            while left > 0 {
                if socket.readable().await.is_err() {
                    return;
                }
                match socket.read_into(&mut scratch) {
                    Ok(0) => return,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                scratch.clear();
            }
        })
        .await;
    }

    /// Queues `msg`, writes everything, and reports whether it all went out.
    pub(super) async fn send(&mut self, msg: &ServerMessage) -> bool {
        self.queue(msg);
        self.flush().await
    }
}

/// Sorts what a read gave into what to do about it.
pub(super) fn sort(read: Option<Read>) -> Incoming {
    match read {
        None => Incoming::Closed,
        Some(Ok(Ok(ClientMessage::Request { id, body }))) => Incoming::Request(id, body),
        Some(Ok(Ok(ClientMessage::Ack { up_to }))) => Incoming::Ack(up_to),
        Some(Ok(Ok(ClientMessage::RelayChat { link, data }))) => Incoming::Relay(link, data),
        Some(Ok(Ok(ClientMessage::Hello(_)))) => Incoming::Bad(
            ErrorReply::new(ErrorCode::HandshakeRequired, "hello was already said"),
            false,
        ),
        Some(Ok(Err(malformed))) => {
            Incoming::Bad(ErrorReply::new(ErrorCode::MalformedFrame, malformed.to_string()), false)
        }
        Some(Err(e @ CodecError::TooLarge { .. })) => {
            Incoming::Bad(ErrorReply::new(ErrorCode::FrameTooLarge, e.to_string()), true)
        }
        Some(Err(e)) if stalled(&e) => Incoming::Stalled,
        Some(Err(e)) => {
            tracing::debug!("connection failed: {e}");
            Incoming::Closed
        }
    }
}

/// The error [`Conn::read`] gives for a frame that did not come whole in time.
fn stall() -> CodecError {
    std::io::Error::new(ErrorKind::TimedOut, "a frame stalled half-sent").into()
}

/// Whether `e` is a [`stall`].
pub(super) fn stalled(e: &CodecError) -> bool {
    matches!(e, CodecError::Io(io) if io.kind() == ErrorKind::TimedOut)
}
