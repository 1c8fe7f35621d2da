//! The file commands, carried out the same way by every front end.
//!
//! `/p2pvideo USER FILE` opens the file, asks the server to introduce the two clients
//! ([`Client::send_file`]) and hands the receiver's address and token to the transfer
//! engine. `/acceptfile`, `/declinefile` and `/cancel` act on the engine alone: the server
//! has done its part once it has introduced the two. What happens next arrives as
//! [`TransferEvent`](crate::p2p::transfer::TransferEvent)s.

use std::path::Path;

use super::command::FileCommand;
use super::format::{bytes, sanitize};
use super::{Client, ClientError};
use crate::p2p::identity::{PeerTrust, VerifiedPeers};
use crate::p2p::transfer::{OutgoingFile, TransferError, Transfers};

/// Why a file command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The server refused the offer, or could not be asked.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The file could not be opened, or the engine has stopped.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// `/acceptfile` or `/declinefile` with no offer from that user.
    #[error("{0} has not offered you a file (or the offer has gone)")]
    NoOffer(String),
    /// `/p2pvideo` without a server connection: the server introduces the two sides.
    #[error("not connected to the server: it introduces you to the receiver")]
    NotConnected,
    /// `/cancel` with no transfer with that user.
    #[error("there is no file transfer with {0}")]
    NoTransfer(String),
    /// The server introduced the receiver with a key other than the one the user verified.
    #[error(
        "WARNING: the key the server gave for {0} is not the one you verified, so the file \
         was not sent (someone may be in the middle); {hint}",
        hint = reverify_hint(.0)
    )]
    KeyChanged(String),
    /// An offer came with a key other than the one the user verified for its sender.
    #[error(
        "WARNING: {from}'s offer of {name} came with a key that is not the one you verified, \
         so it was refused (someone may be in the middle); {hint}",
        hint = reverify_hint(from)
    )]
    OfferKeyChanged {
        /// The sender, sanitized.
        from: String,
        /// The file's name, sanitized.
        name: String,
    },
}

/// What to do when a peer's key is not the verified one.
fn reverify_hint(peer: &str) -> String {
    format!(
        "if {peer} has a new key, compare safety codes in a private chat first \
         (/startprivate {peer}, then /verify {peer})"
    )
}

/// Whether a file may go to or come from `peer`, introduced with `key`: not if the user
/// verified another key for them (the same rule private chats warn by).
pub fn key_changed(pins: &VerifiedPeers, peer: &str, key: &crate::protocol::PublicKey) -> bool {
    matches!(pins.trust(peer, key), PeerTrust::Changed { .. })
}

/// Carries out `command`; returns the line that says what was done. Only `/p2pvideo` needs
/// the server (`client`); `pins` are the keys the user verified.
pub async fn run(
    client: Option<&Client>,
    transfers: &Transfers,
    pins: &VerifiedPeers,
    command: FileCommand,
) -> Result<String, FileError> {
    match command {
        FileCommand::Send { to, path } => {
            let client = client.ok_or(FileError::NotConnected)?;
            let file = OutgoingFile::open(Path::new(&path))?;
            let intro = client.send_file(&to, &file.name, file.size).await?;
            if key_changed(pins, &intro.peer, &intro.key) {
                return Err(FileError::KeyChanged(sanitize(&to).into_owned()));
            }
            let transfer = transfers.send(&intro, file)?;
            Ok(format!(
                "* offering {} ({}) to {}; waiting for them to accept",
                sanitize(&transfer.name),
                bytes(transfer.size),
                sanitize(&to)
            ))
        }
        FileCommand::Accept { from } => {
            let offer = transfers.offer_from(&from).ok_or(FileError::NoOffer(from))?;
            transfers.accept(offer.id);
            Ok(format!("* accepting {} from {}", sanitize(&offer.name), sanitize(&offer.peer)))
        }
        FileCommand::Decline { from } => {
            let offer = transfers.offer_from(&from).ok_or(FileError::NoOffer(from))?;
            transfers.decline(offer.id);
            Ok(format!("* declined {} from {}", sanitize(&offer.name), sanitize(&offer.peer)))
        }
        FileCommand::Cancel { user } => {
            let all = transfers.with(&user);
            if all.is_empty() {
                return Err(FileError::NoTransfer(user));
            }
            for transfer in &all {
                transfers.cancel(transfer.id);
            }
            let names: Vec<String> = all.iter().map(|t| sanitize(&t.name).into_owned()).collect();
            Ok(format!("* cancelling {} with {}", names.join(", "), sanitize(&user)))
        }
    }
}
