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
    let seen = shared
        .store
        .call(move |s| s.seen_since(since))
        .await
        .map_err(|e| internal("reading login history", e))?;
    let seen = seen
        .into_iter()
        .filter(|(name, _)| name != me && !shared.hub.blocks(name, me))
        .map(|(name, left_at)| {
            let online = shared.hub.is_online(&name);
            SeenUser { left_at: if online { None } else { left_at }, online, name }
        })
        .collect();
    Ok(Reply::Seen(seen))
}
