//! `/groupmsg NAME TEXT`: a message to every joined member of a group but the sender.
//!
//! Only joined members may send. The message is one row of the log for the whole group,
//! committed before the sender's reply; each member who joined before it and does not block
//! the sender gets it, live or at their next login.

use super::check_text;
use crate::protocol::{now_ms, Delivery, ErrorReply, Reply};
use crate::server::hub::log::Sent;
use crate::server::Shared;
use crate::store::To;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
    text: String,
    send_id: Option<u64>,
) -> Result<Reply, ErrorReply> {
    check_text(shared, &text)?;
    let accepted = shared.hub.send(me, To::Group(group), text, send_id, now_ms())?;
    match accepted.outcome().await? {
        Sent::Group { group, delivered, stored, skipped } => {
            Ok(Reply::GroupSent { group, delivered, stored, skipped })
        }
        // A repeat of a send id used for a direct message: the first send's reply.
        Sent::Direct { to, online } => {
            let delivery = if online { Delivery::Online } else { Delivery::Stored };
            Ok(Reply::Sent { to, delivery })
        }
    }
}
