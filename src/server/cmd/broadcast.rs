//! `/broadcast TEXT`: to every online user except the sender and those who block the sender.

use super::{check_text, internal};
use crate::protocol::{now_ms, ErrorReply, Event, Reply};
use crate::server::hub::encode_event;
use crate::server::Shared;

pub(in crate::server) fn run(shared: &Shared, me: &str, text: String) -> Result<Reply, ErrorReply> {
    check_text(shared, &text)?;
    let event = Event::Broadcast { from: me.to_owned(), text, sent_at: now_ms() };
    let Some(frame) = encode_event(event) else {
        return Err(internal("encoding a broadcast", "see the log"));
    };
    let (delivered, skipped) = shared.hub.broadcast(me, frame);
    Ok(Reply::Broadcasted { delivered, skipped })
}
