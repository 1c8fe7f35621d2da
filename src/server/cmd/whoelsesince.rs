//! `/whoelsesince SECS`: everyone whose online time overlaps the last SECS seconds.
//!
//! Includes people who are offline now, excludes yourself and those who block you (as `/list`).

use super::internal;
use crate::protocol::{now_ms, ErrorReply, Reply, SeenUser, Timestamp};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    secs: u64,
) -> Result<Reply, ErrorReply> {
    let window = Timestamp::try_from(secs.saturating_mul(1000)).unwrap_or(Timestamp::MAX);
    let since = now_ms().saturating_sub(window);
    let names = shared
        .store
        .call(move |s| s.seen_since(since))
        .await
        .map_err(|e| internal("reading login history", e))?;
    let seen = names
        .into_iter()
        .filter(|name| name != me && !shared.hub.blocks(name, me))
        .map(|name| SeenUser { online: shared.hub.is_online(&name), name })
        .collect();
    Ok(Reply::Seen(seen))
}
