//! `/history USER-or-GROUP [N]`: the last N messages of one of your own conversations.
//!
//! With a user: the direct messages between you and them. With a group you have joined: its
//! messages, from before you joined too (the group's history is the team's), without those
//! from senders you block. Leaving a group ends access to its history. Group names never equal usernames
//! (creation and registration both refuse that), so a name is never ambiguous.

use super::internal;
use crate::protocol::{ErrorCode, ErrorReply, HistoryMessage, Reply};
use crate::server::hub::HubError;
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
        shared.hub.joined_since(&with, &me).map_err(|e| match e {
            HubError::UnknownGroup(_) => ErrorReply::new(
                ErrorCode::UnknownUser,
                format!("there is no user or group named {with}"),
            ),
            e => e.into(),
        })?;
        shared.store.call(move |s| s.group_history(&key, &me, limit)).await
    };
    let rows = read.map_err(|e| internal("reading history", e))?;
    let messages = rows
        .into_iter()
        .map(|m| HistoryMessage { from: m.sender, text: m.body, sent_at: m.sent_at })
        .collect();
    Ok(Reply::History { with, group, messages })
}
