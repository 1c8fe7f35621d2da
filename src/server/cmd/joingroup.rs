//! `/joingroup NAME`: accept an invitation; the members are told.

use crate::protocol::{now_ms, ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    group: String,
) -> Result<Reply, ErrorReply> {
    let (members, stored) = shared.hub.join_group(me, &group, now_ms())?;
    stored.await?;
    Ok(Reply::JoinedGroup { group, members })
}
