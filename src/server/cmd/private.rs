//! `/startprivate USER`, `/accept USER`, `/decline USER`: the server's part of a private chat.
//!
//! The server only introduces. `/startprivate` checks the target (see
//! [`Hub::ask_private`](crate::server::hub::Hub::ask_private)) and asks them; the request
//! expires after [`Config::private_request_timeout`](crate::server::Config). `/accept`
//! makes a fresh random [`Token`] and a relay link and gives them, with the other side's
//! addresses, to both sides; the two then connect directly, and the server never sees the
//! chat. When no direct connection works, the chat's sealed bytes are relayed over the two
//! sessions ([`relay`]).

use crate::protocol::{ErrorReply, LinkId, Reply, Token};
use crate::server::hub::Meeting;
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
    let link = shared.rendezvous.link(me, &user, tokio::time::Instant::now());
    let meeting = Meeting { token: Token::random(), relay: Some(link) };
    match shared.hub.accept_private(&user, me, meeting) {
        Ok(introduction) => Ok(Reply::Introduced(Box::new(introduction))),
        Err(refused) => {
            shared.rendezvous.drop_link(&link);
            Err(refused)
        }
    }
}

pub(in crate::server) fn decline(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    shared.hub.decline_private(&user, me)?;
    Ok(Reply::Done)
}

/// Relays bytes of a private chat on `link` to its other side, if `me` is on it and the
/// relay's caps let them through. False if they were dropped instead (the chat's own seal
/// then ends it): the session counts that as a refused request, so a client that sends
/// frames for links it is not on, or far past the cap, is cut off as flooding.
pub(in crate::server) fn relay(shared: &Shared, me: &str, link: LinkId, data: Vec<u8>) -> bool {
    if data.len() > MAX_RELAYED_CHAT {
        return false;
    }
    let now = tokio::time::Instant::now();
    let Some(to) = shared.rendezvous.relay_chat(&link, me, data.len(), now) else {
        return false;
    };
    shared.hub.relay_chat(&to, link, data);
    true
}

/// The most bytes one relayed chat frame may carry: a whole peer frame and its length.
const MAX_RELAYED_CHAT: usize = crate::protocol::MAX_PEER_FRAME + 4;
