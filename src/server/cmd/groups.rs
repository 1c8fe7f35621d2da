//! `/groups`: the groups you have joined, with their members, and your pending invitations.

use crate::protocol::Reply;
use crate::server::Shared;

pub(in crate::server) fn run(shared: &Shared, me: &str) -> Reply {
    let (groups, invitations) = shared.hub.groups_of(me);
    Reply::Groups { groups, invitations }
}
