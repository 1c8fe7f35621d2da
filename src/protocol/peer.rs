//! The messages two clients exchange over a direct private-chat connection.
//!
//! The server never sees this link. After it has introduced the two users (see
//! [`Introduction`](super::Introduction)), the requester connects to the target's listener and
//! sends [`PeerMessage::Hello`] with its username and the first message of a Noise handshake
//! keyed by both users' keys and the one-time token. The listener completes it with the key
//! and token the server gave it for that user and answers [`PeerMessage::Accepted`], or
//! closes the connection without reading anything else. From then on both sides send
//! [`ChatMessage`]s, each sealed in a [`PeerMessage::Sealed`], whenever they like, and
//! either ends the link with [`ChatMessage::Bye`] (or by closing it). Frames are the same
//! length-prefixed MessagePack as on the server connection, through [`PeerCodec`].

use serde::{Deserialize, Serialize};

use super::{FrameCodec, Timestamp};

/// The largest frame accepted on a direct link, in bytes: a [`PeerMessage::Text`] of the
/// longest message (4,000 characters of up to 4 bytes) with room to spare. A larger header
/// ends the link before anything is allocated for it.
pub const MAX_PEER_FRAME: usize = 64 * 1024;

/// How often each side of a private chat pings the other ([`ChatMessage::Ping`]).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// The codec of a direct link; both ends speak the same messages.
pub type PeerCodec = FrameCodec<PeerMessage, PeerMessage>;

/// Every frame on a direct private-chat link.
///
/// Only the two handshake frames travel in the clear, and they carry nothing secret: the
/// token never leaves the clients (it is the handshake's pre-shared key). Everything said
/// after them is a [`ChatMessage`] sealed into [`PeerMessage::Sealed`] (see
/// `crate::p2p::noise`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The connecting side's first frame: who it is, and the first handshake message, which
    /// only the holder of the key the server vouched for, knowing the token, can make.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        version: u32,
        /// The sender's username, which the listener looks its key and token up by.
        username: String,
        /// Noise handshake message 1.
        #[serde(with = "serde_bytes")]
        handshake: Vec<u8>,
    },
    /// The listening side's answer to a valid `Hello`; the chat is open.
    Accepted {
        /// The listener's username.
        username: String,
        /// Noise handshake message 2.
        #[serde(with = "serde_bytes")]
        handshake: Vec<u8>,
    },
    /// A [`ChatMessage`], encrypted and authenticated.
    Sealed(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What the two sides of an open chat say to each other, inside [`PeerMessage::Sealed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatMessage {
    /// A private message.
    Text {
        /// Message text.
        text: String,
        /// When the sender sent it, by the sender's clock.
        sent_at: Timestamp,
    },
    /// "Are you there?": each side asks every [`PING_INTERVAL`]; the answer measures the
    /// round trip, and a chat that hears nothing for three intervals is lost (a relayed
    /// chat has no TCP connection of its own to tell it).
    Ping {
        /// Echoed in the answer: the sender's clock, in microseconds of its own choosing.
        echo: u64,
    },
    /// The answer to a [`ChatMessage::Ping`].
    Pong {
        /// The ping's `echo`.
        echo: u64,
    },
    /// The sender ends the chat; the connection closes next.
    Bye {
        /// Why.
        reason: ByeReason,
    },
}

/// Why one side ended a private chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ByeReason {
    /// `/stopprivate`.
    Stopped,
    /// The user logged out or quit.
    LoggedOut,
    /// The server logged the user out for being idle.
    TimedOut,
    /// The receiver closed the chat: the other side sent messages faster than it takes them.
    TooFast,
}
