//! `/p2pvideo USER FILE` (`/sendfile`): the server's part of a direct file transfer.
//!
//! The server only introduces, as for a private chat but in one step: it checks the
//! receiver (see [`Hub::offer_file`](crate::server::hub::Hub::offer_file)), makes a fresh
//! random [`Token`] and a relay link, tells the receiver about the offer with the sender's
//! UDP addresses (reflexive, as the UDP endpoint saw it, and local) and the token, and
//! answers the sender with the receiver's. The file itself goes straight from one client
//! to the other, or through the relay when no direct path answers.

use crate::protocol::{valid_file_name, ErrorCode, ErrorReply, Reply, Token};
use crate::server::hub::Meeting;
use crate::server::Shared;

pub(in crate::server) fn run(
    shared: &Shared,
    me: &str,
    to: String,
    name: String,
    size: u64,
) -> Result<Reply, ErrorReply> {
    if !valid_file_name(&name) {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "a file name must be a plain name: no directories, no leading dot, no control characters",
        ));
    }
    let link = shared.rendezvous.link(me, &to, tokio::time::Instant::now());
    let meeting = Meeting { token: Token::random(), relay: Some(link) };
    let reflexive = |user: &str| shared.rendezvous.reflexive(user);
    match shared.hub.offer_file(me, &to, name, size, meeting, reflexive) {
        Ok(introduction) => Ok(Reply::Introduced(Box::new(introduction))),
        Err(refused) => {
            shared.rendezvous.drop_link(&link);
            Err(refused)
        }
    }
}
