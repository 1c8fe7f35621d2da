//! `/joingroup NAME`: accept an invitation; the members are told.

use super::internal;
use crate::protocol::{now_ms, ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
) -> Result<Reply, ErrorReply> {
    let (members, stored) = shared.hub.join_group(me, &group, now_ms(), |at, joined_id| {
        let (group, me) = (group.clone(), me.to_owned());
        shared.store.call(move |s| s.join_group(&group, &me, at, joined_id))
    })?;
    match stored.await {
        Ok(true) => Ok(Reply::JoinedGroup { group, members }),
        Ok(false) => Err(internal("joining a group", format!("no invitation to {group} stored"))),
        Err(e) => Err(internal("joining a group", e)),
    }
}
