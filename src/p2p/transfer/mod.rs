//! Direct file transfer over UDP: numbered chunks, selective acknowledgements, congestion
//! control and a SHA-256 check of the whole file.
//!
//! The protocol lives in two state machines that do no I/O and read no clock, in the manner
//! of quinn-proto: [`Sender`] and [`Receiver`]. Datagrams, file bytes and `now` go in;
//! datagrams to send, file bytes to write, deadlines and events come out. That keeps every
//! rule testable in memory against a simulated lossy link (the tests at the bottom of this
//! module), deterministically and in virtual time.
//!
//! - [`wire`]: the datagram layout: a clear header, then a handshake message or a sealed
//!   packet.
//! - [`crypto`]: the end-to-end encryption: a Noise handshake in the offer and its answer,
//!   then every datagram sealed with AES-256-GCM under a never-reused packet number.
//! - [`endpoint`]: the sans-io demultiplexer every datagram passes: checks, decryption,
//!   routing to a machine; the engine and the simulator both drive it.
//! - [`sender`], [`receiver`]: the two machines.
//! - [`pmtu`]: path MTU discovery: the chunk size grows to the largest the path carries, and
//!   falls back when the path stops carrying it.
//! - [`rtt`]: RTT estimation and the retransmission timeout (RFC 6298).
//! - [`congestion`]: the path model (BBR-like bandwidth and min-RTT), pacing and window.
//! - [`engine`]: the one real driver, which owns the UDP socket, the files and the timers,
//!   and runs any number of transfers both ways through one endpoint.

pub mod congestion;
pub mod crypto;
pub mod endpoint;
pub mod engine;
pub mod pmtu;
pub mod receiver;
pub mod rtt;
pub mod sender;
pub mod wire;

pub use crate::p2p::Route;
pub use endpoint::{Direction, Endpoint, EndpointConfig, IncomingFile, Transfer, TransferStats};
pub use engine::{OutgoingFile, TransferConfig, TransferEvent, TransferLink, Transfers};
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent};
pub use sender::{Sender, SenderConfig, SenderEvent, SenderStats};
pub use wire::TransferId;

/// Why a transfer ended without the file arriving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The receiver said no.
    #[error("declined")]
    Declined,
    /// This side cancelled it.
    #[error("cancelled")]
    Cancelled,
    /// The other side cancelled it.
    #[error("cancelled by the other side")]
    CancelledByPeer,
    /// Nothing was heard from the other side for too long.
    #[error("the other side stopped answering")]
    PeerSilent,
    /// The receiver's user did not answer the offer in time.
    #[error("the offer was not answered in time")]
    NoAnswer,
    /// The file arrived, but its SHA-256 is not the sender's; it was discarded.
    #[error("the received file's SHA-256 does not match the sender's; it was discarded")]
    HashMismatch,
    /// The file being sent changed size while it was read.
    #[error("the file changed while it was being sent")]
    FileChanged,
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
}

#[cfg(test)]
mod fairness;
#[cfg(test)]
mod sim;
