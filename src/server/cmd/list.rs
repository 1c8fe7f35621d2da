//! `/list`: who is online, except yourself and those who block you.

use crate::protocol::Reply;
use crate::server::Shared;

pub(in crate::server) fn run(shared: &Shared, me: &str) -> Reply {
    Reply::Users(shared.hub.online_for(me))
}
