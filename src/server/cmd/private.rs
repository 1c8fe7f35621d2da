//! `/startprivate USER`, `/accept USER`, `/decline USER`: the server's part of a private chat.
//!
//! The server only introduces. `/startprivate` checks the target (see
//! [`Hub::ask_private`](crate::server::hub::Hub::ask_private)) and asks them; the request
//! expires after [`Config::private_request_timeout`](crate::server::Config). `/accept`
//! makes a fresh random [`Token`] and gives it, with the other side's address, to both sides;
//! the requester then connects to the target directly and the server never sees the chat.

use crate::protocol::{ErrorReply, Reply, Token};
use crate::server::Shared;

pub(in crate::server) fn start(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    let expires = tokio::time::Instant::now() + shared.config.private_request_timeout;
    shared.hub.ask_private(me, &user, expires)?;
    Ok(Reply::Done)
}

pub(in crate::server) fn accept(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    let introduction = shared.hub.accept_private(&user, me, Token::random())?;
    Ok(Reply::Introduced(introduction))
}

pub(in crate::server) fn decline(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    shared.hub.decline_private(&user, me)?;
    Ok(Reply::Done)
}
