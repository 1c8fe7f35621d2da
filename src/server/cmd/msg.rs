//! `/msg USER TEXT`: a direct message, committed to the log, then relayed if USER is online.

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
    to: String,
    text: String,
    send_id: Option<u64>,
) -> Result<Accepted, ErrorReply> {
    check_text(shared, &text)?;
    Ok(shared.hub.send(me, To::User(to), text, send_id, now_ms())?)
}
