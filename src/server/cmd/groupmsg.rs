//! `/groupmsg NAME TEXT`: a message to every joined member of a group but the sender.
//!
//! Only joined members may send. The message is one row of the log for the whole group,
//! committed before the sender's reply; each member who joined before it and does not block
//! the sender gets it, live or at their next login.

use super::check_text;
use crate::protocol::{now_ms, ErrorReply};
use crate::server::hub::log::Accepted;
use crate::server::Shared;
use crate::store::To;

/// Checks the text and hands the message to the hub for the next commit; the reply comes
/// with the commit ([`super::sent`]).
pub(in crate::server) fn start(
    shared: &Shared,
    me: &str,
    group: String,
    text: String,
    send_id: Option<u64>,
) -> Result<Accepted, ErrorReply> {
    check_text(shared, &text)?;
    Ok(shared.hub.send(me, To::Group(group), text, send_id, now_ms())?)
}
