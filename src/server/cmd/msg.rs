//! `/msg USER TEXT`: a direct message, relayed now or committed for USER's next login.

use super::{check_text, internal};
use crate::protocol::{now_ms, Delivery, ErrorReply, Event, Reply};
use crate::server::hub::{encode_event, Routed};
use crate::server::Shared;
use crate::store::{Envelope, OfflineMessage, To};

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    to: String,
    text: String,
) -> Result<Reply, ErrorReply> {
    check_text(shared, &text)?;
    let sent_at = now_ms();
    let event = Event::Message { from: me.to_owned(), text: text.clone(), sent_at, offline: false };
    let Some(frame) = encode_event(event) else {
        return Err(internal("encoding a message", "see the log"));
    };
    let message = Envelope { sender: me.to_owned(), to: To::User(to.clone()), body: text, sent_at };
    let routed = shared.hub.deliver(me, &to, frame, || {
        let kept = [OfflineMessage { recipient: to.clone(), message: message.clone() }];
        shared.store.call(move |s| s.store_offline(&kept))
    })?;
    shared.store.record(message);
    let delivery = match routed {
        Routed::Online => Delivery::Online,
        Routed::Offline(stored) => {
            stored.await.map_err(|e| internal("storing an offline message", e))?;
            Delivery::Stored
        }
    };
    Ok(Reply::Sent { to, delivery })
}
