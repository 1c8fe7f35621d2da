//! `/history USER-or-GROUP [N]`: the last N messages of one of your own conversations.
//!
//! With a user: the direct messages between you and them. With a group: its messages since
//! you joined it, without those from senders you block. Group names never equal usernames
//! (creation and registration both refuse that), so a name is never ambiguous.

use super::internal;
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use crate::server::Shared;

/// Messages returned when no count is given.
pub(in crate::server) const DEFAULT_LIMIT: u32 = 20;
/// The most messages one request may ask for.
pub(in crate::server) const MAX_LIMIT: u32 = 500;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    with: String,
    limit: Option<u32>,
) -> Result<Reply, ErrorReply> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("the number of messages must be 1-{MAX_LIMIT}"),
        ));
    }
    let (me, key) = (me.to_owned(), with.clone());
    let group = !shared.hub.is_user(&with);
    let read = if !group {
        if with == me {
            return Err(ErrorReply::new(
                ErrorCode::SelfTarget,
                "history is per conversation: name the user or group you talked with",
            ));
        }
        shared.store.call(move |s| s.direct_history(&me, &key, limit)).await
    } else {
        let since = shared.hub.joined_since(&with, &me).map_err(|e| match e.code {
            ErrorCode::UnknownGroup => ErrorReply::new(
                ErrorCode::UnknownUser,
                format!("there is no user or group named {with}"),
            ),
            _ => e,
        })?;
        shared.store.call(move |s| s.group_history(&key, &me, since, limit)).await
    };
    let messages = read.map_err(|e| internal("reading history", e))?;
    Ok(Reply::History { with, group, messages })
}
