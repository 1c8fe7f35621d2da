//! `/groupmsg NAME TEXT`: a message to every joined member of a group but the sender.
//!
//! Only joined members may send. A member who blocks the sender does not get it; an offline
//! member gets it at the next login, in order, and the sender's acknowledgement waits until
//! it is committed for them.

use super::{check_text, internal};
use crate::protocol::{now_ms, ErrorReply, Event, Reply};
use crate::server::hub::encode_event;
use crate::server::Shared;
use crate::store::{Envelope, OfflineMessage, To};

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
    text: String,
) -> Result<Reply, ErrorReply> {
    check_text(shared, &text)?;
    let encode = |sent_at| {
        let event = Event::GroupMessage {
            group: group.clone(),
            from: me.to_owned(),
            text: text.clone(),
            sent_at,
            offline: false,
        };
        encode_event(event)
    };
    let envelope = |sent_at| Envelope {
        sender: me.to_owned(),
        to: To::Group(group.clone()),
        body: text.clone(),
        sent_at,
    };
    let routed = shared.hub.group_send(me, &group, now_ms(), encode, |away, sent_at| {
        let kept: Vec<OfflineMessage> = away
            .into_iter()
            .map(|recipient| OfflineMessage { recipient, message: envelope(sent_at) })
            .collect();
        shared.store.call(move |s| s.store_offline(&kept))
    })?;
    shared.store.record(envelope(routed.sent_at));
    if let Some(stored) = routed.offline {
        stored.await.map_err(|e| internal("storing a group message", e))?;
    }
    Ok(Reply::GroupSent {
        group,
        delivered: routed.delivered,
        stored: routed.stored,
        skipped: routed.skipped,
    })
}
