//! `/block USER` and `/unblock USER`, persisted.
//!
//! A blocker receives no messages, broadcasts or presence from the blocked user, and the
//! blocked user no longer sees the blocker in lists. The hub enforces it; this records it.

use super::internal;
use crate::protocol::{ErrorCode, ErrorReply, Reply};
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
        return Err(ErrorReply::new(ErrorCode::UnknownUser, format!("there is no user {user}")));
    }
    let (blocker, blocked) = (me.to_owned(), user.clone());
    shared
        .store
        .call(move |s| s.add_block(&blocker, &blocked))
        .await
        .map_err(|e| internal("saving a block", e))?;
    shared.hub.set_block(me, &user, true);
    Ok(Reply::Done)
}

pub(in crate::server) async fn unblock(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    if !shared.hub.blocks(me, &user) {
        return Err(ErrorReply::new(ErrorCode::NotBlocked, format!("{user} is not blocked")));
    }
    let (blocker, blocked) = (me.to_owned(), user.clone());
    shared
        .store
        .call(move |s| s.remove_block(&blocker, &blocked))
        .await
        .map_err(|e| internal("removing a block", e))?;
    shared.hub.set_block(me, &user, false);
    Ok(Reply::Done)
}
