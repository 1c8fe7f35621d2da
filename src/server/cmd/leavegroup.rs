//! `/leavegroup NAME`: leave a group, or turn down its invitation.
//!
//! The members are told when a member leaves. The last member to leave dissolves the group,
//! and its pending invitations go with it.

use super::internal;
use crate::protocol::{now_ms, ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
) -> Result<Reply, ErrorReply> {
    let stored = shared.hub.leave_group(me, &group, now_ms(), |dissolve| {
        let (group, me) = (group.clone(), me.to_owned());
        shared.store.call(move |s| s.leave_group(&group, &me, dissolve))
    })?;
    match stored.await {
        Ok(true) => Ok(Reply::LeftGroup { group }),
        Ok(false) => Err(internal("leaving a group", format!("no membership of {group} stored"))),
        Err(e) => Err(internal("leaving a group", e)),
    }
}
