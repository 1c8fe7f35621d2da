//! `/away [MESSAGE]`: mark yourself away (with why), or back.
//!
//! Others see the message in `/list`, and the first direct message each of them sends you
//! while away is answered with it ([`Event::Away`](crate::protocol::Event::Away)). It lasts
//! until `/away` with no message or the end of the session.

use super::check_text;
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use crate::server::Shared;

/// Longest away message, in characters.
const MAX_AWAY_CHARS: usize = 200;

pub(in crate::server) fn run(
    shared: &Shared,
    me: &str,
    message: Option<String>,
) -> Result<Reply, ErrorReply> {
    if let Some(message) = &message {
        check_text(shared, message)?;
        if message.contains('\n') || message.chars().count() > MAX_AWAY_CHARS {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("an away message is one line of at most {MAX_AWAY_CHARS} characters"),
            ));
        }
    }
    shared.hub.set_away(me, message);
    Ok(Reply::Done)
}
