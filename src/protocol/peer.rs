//! The messages two clients exchange over a direct private-chat connection.
//!
//! The server never sees this link. After it has introduced the two users (see
//! [`Introduction`](super::Introduction)), the requester connects to the target's listener and
//! sends [`PeerMessage::Hello`] with the one-time token and its username. The listener checks
//! the pair against the tokens the server gave it and either answers
//! [`PeerMessage::Accepted`] or closes the connection without reading anything else. From
//! then on both sides send [`PeerMessage::Text`] whenever they like, and either ends the link
//! with [`PeerMessage::Bye`] (or by closing it). Frames are the same length-prefixed
//! MessagePack as on the server connection, through [`PeerCodec`].

use serde::{Deserialize, Serialize};

use super::{FrameCodec, Timestamp, Token};

/// The largest frame accepted on a direct link, in bytes: a [`PeerMessage::Text`] of the
/// longest message (4,000 characters of up to 4 bytes) with room to spare. A larger header
/// ends the link before anything is allocated for it.
pub const MAX_PEER_FRAME: usize = 64 * 1024;

/// The codec of a direct link; both ends speak the same messages.
pub type PeerCodec = FrameCodec<PeerMessage, PeerMessage>;

/// Every frame on a direct private-chat link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The connecting side's first frame: who it is and the token the server gave it.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        version: u32,
        /// The one-time token from the introduction.
        token: Token,
        /// The sender's username, which must be the one the token was issued for.
        username: String,
    },
    /// The listening side's answer to a valid `Hello`; the chat is open.
    Accepted {
        /// The listener's username.
        username: String,
    },
    /// A private message.
    Text {
        /// Message text.
        text: String,
        /// When the sender sent it, by the sender's clock.
        sent_at: Timestamp,
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
