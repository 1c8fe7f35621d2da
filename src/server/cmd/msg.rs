//! `/msg USER TEXT`: a direct message, committed to the log, then relayed if USER is online.

use super::check_text;
use crate::protocol::{now_ms, Delivery, ErrorReply, Reply};
use crate::server::hub::log::Sent;
use crate::server::Shared;
use crate::store::To;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    to: String,
    text: String,
    send_id: Option<u64>,
) -> Result<Reply, ErrorReply> {
    check_text(shared, &text)?;
    let accepted = shared.hub.send(me, To::User(to.clone()), text, send_id, now_ms())?;
    match accepted.outcome().await? {
        Sent::Direct { online, .. } => {
            let delivery = if online { Delivery::Online } else { Delivery::Stored };
            Ok(Reply::Sent { to, delivery })
        }
        // A repeat of a send id used for a group message: the first send's reply.
        Sent::Group { group, delivered, stored, skipped } => {
            Ok(Reply::GroupSent { group, delivered, stored, skipped })
        }
    }
}
