//! `/block USER` and `/unblock USER`, persisted.
//!
//! A blocker receives no messages, broadcasts or presence from the blocked user, and the
//! blocked user no longer sees the blocker in lists. The hub enforces and records it, and
//! counts the blocker's waiting messages again (what waits depends on whom they block).

use crate::protocol::{ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn block(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    shared.hub.set_block(me, &user, true)?.await?;
    shared.hub.recount(me).await;
    Ok(Reply::Done)
}

pub(in crate::server) async fn unblock(
    shared: &Shared,
    me: &str,
    user: String,
) -> Result<Reply, ErrorReply> {
    shared.hub.set_block(me, &user, false)?.await?;
    shared.hub.recount(me).await;
    Ok(Reply::Done)
}
