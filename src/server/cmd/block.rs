//! `/block USER` and `/unblock USER`, persisted.
//!
//! A blocker receives no messages, broadcasts or presence from the blocked user, and the
//! blocked user no longer sees the blocker in lists. The hub enforces it; this records it.

use super::internal;
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use crate::server::hub::unknown_user;
use crate::server::Shared;

pub(in crate::server) async fn block(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    if user == me {
        return Err(ErrorReply::new(ErrorCode::SelfTarget, "you cannot block yourself"));
    }
    if !shared.hub.is_user(&user) {
        return Err(unknown_user(&user));
    }
    record(shared, me, user, true).await
}

pub(in crate::server) async fn unblock(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    if !shared.hub.blocks(me, &user) {
        return Err(ErrorReply::new(ErrorCode::NotBlocked, format!("{user} is not blocked")));
    }
    record(shared, me, user, false).await
}

/// Commits the block (`on`) or its removal, then updates the hub's cache.
async fn record(shared: &Shared, me: &str, user: String, on: bool) -> Result<Reply, ErrorReply> {
    let (blocker, blocked) = (me.to_owned(), user.clone());
    shared
        .store
        .call(
            move |s| {
                if on {
                    s.add_block(&blocker, &blocked)
                } else {
                    s.remove_block(&blocker, &blocked)
                }
            },
        )
        .await
        .map_err(|e| internal("saving a block", e))?;
    shared.hub.set_block(me, &user, on);
    Ok(Reply::Done)
}
