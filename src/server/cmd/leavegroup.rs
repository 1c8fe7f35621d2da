//! `/leavegroup NAME`: leave a group, or turn down its invitation.
//!
//! The members are told when a member leaves. The last member to leave dissolves the group,
//! and its pending invitations go with it.

use crate::protocol::{now_ms, ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
) -> Result<Reply, ErrorReply> {
    shared.hub.leave_group(me, &group, now_ms())?.await?;
    shared.hub.recount(me).await;
    Ok(Reply::LeftGroup { group })
}
