//! `/creategroup NAME USER...`: a new group with you as its first member; USERs are invited.
//!
//! Invitees are told at once if online, and at their next login otherwise (the hub hands
//! pending invitations to every new session).

use crate::protocol::{now_ms, valid_group_name, ErrorCode, ErrorReply, Reply};
use crate::server::Shared;

pub(in crate::server) async fn run(
    shared: &Shared,
    me: &str,
    name: String,
    invite: Vec<String>,
) -> Result<Reply, ErrorReply> {
    if !valid_group_name(&name) {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "group names are 1-32 letters and digits",
        ));
    }
    // You are a member anyway; naming someone twice invites them once.
    let mut invited: Vec<String> = Vec::with_capacity(invite.len());
    for user in invite {
        if user != me && !invited.contains(&user) {
            invited.push(user);
        }
    }
    if invited.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "invite at least one other user: /creategroup NAME USER...",
        ));
    }
    shared.hub.create_group(me, &name, &invited, now_ms())?.await?;
    Ok(Reply::GroupCreated { group: name, invited })
}
