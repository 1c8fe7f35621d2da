//! `/p2pvideo USER FILE` (`/sendfile`): the server's part of a direct file transfer.
//!
//! The server only introduces, as for a private chat but in one step: it checks the
//! receiver (see [`Hub::offer_file`](crate::server::hub::Hub::offer_file)), makes a fresh
//! random [`Token`], tells the receiver about the offer with the sender's UDP address and
//! the token, and answers the sender with the receiver's. The file itself goes straight from
//! one client to the other.

use crate::protocol::{valid_file_name, ErrorCode, ErrorReply, Reply, Token};
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
    let introduction = shared.hub.offer_file(me, &to, name, size, Token::random())?;
    Ok(Reply::Introduced(introduction))
}
