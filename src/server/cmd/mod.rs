//! One file per command. Each handler checks its arguments and permissions first, then acts,
//! and returns the reply for the session to send.

pub(super) mod away;
pub(super) mod block;
pub(super) mod broadcast;
pub(super) mod creategroup;
pub(super) mod groupmsg;
pub(super) mod groups;
pub(super) mod history;
pub(super) mod joingroup;
pub(super) mod leavegroup;
pub(super) mod list;
pub(super) mod login;
pub(super) mod msg;
pub(super) mod private;
pub(super) mod sendfile;
pub(super) mod whoelsesince;

use std::future::Future;

use super::hub::log::{Accepted, Sent};
use super::hub::HubError;
use super::Shared;
use crate::protocol::{text_problem, Delivery, ErrorCode, ErrorReply, Reply, Request};

/// Starts a send (`Msg`, `GroupMsg`): checked and queued for the next commit now, answered
/// by the returned future once committed, so that a session can read its next request
/// meanwhile and one client's sends can share a commit. Any other request is handed back.
pub(super) fn start_send(
    shared: &Shared,
    me: &str,
    request: Request,
) -> Result<impl Future<Output = Result<Reply, ErrorReply>> + Send + 'static, Request> {
    let accepted = match request {
        Request::Msg { to, text, send_id } => msg::start(shared, me, to, text, send_id),
        Request::GroupMsg { group, text, send_id } => {
            groupmsg::start(shared, me, group, text, send_id)
        }
        other => return Err(other),
    };
    Ok(async move { sent(accepted?).await })
}

/// The reply to a send once its commit is done. A repeat of a send id gets the first send's
/// reply, whichever kind of send the repeat was.
async fn sent(accepted: Accepted) -> Result<Reply, ErrorReply> {
    Ok(match accepted.outcome().await? {
        Sent::Direct { to, online, sent_at } => {
            let delivery = if online { Delivery::Online } else { Delivery::Stored };
            Reply::Sent { to, delivery, sent_at }
        }
        Sent::Group { group, delivered, stored, skipped, sent_at } => {
            Reply::GroupSent { group, delivered, stored, skipped, sent_at }
        }
    })
}

/// Runs a request of the logged-in user `me`. Login and logout belong to the session itself.
pub(super) async fn dispatch(
    shared: &Shared,
    me: &str,
    request: Request,
) -> Result<Reply, ErrorReply> {
    match request {
        Request::Msg { to, text, send_id } => {
            sent(msg::start(shared, me, to, text, send_id)?).await
        }
        Request::Broadcast { text } => broadcast::run(shared, me, text),
        Request::List => Ok(list::run(shared, me)),
        Request::WhoElseSince { secs } => whoelsesince::run(shared, me, secs).await,
        Request::Block { user } => block::block(shared, me, user).await,
        Request::Unblock { user } => block::unblock(shared, me, user).await,
        Request::CreateGroup { name, invite } => creategroup::run(shared, me, name, invite).await,
        Request::JoinGroup { group } => joingroup::run(shared, me, group).await,
        Request::GroupMsg { group, text, send_id } => {
            sent(groupmsg::start(shared, me, group, text, send_id)?).await
        }
        Request::LeaveGroup { group } => leavegroup::run(shared, me, group).await,
        Request::Groups => Ok(groups::run(shared, me)),
        Request::History { with, limit } => history::run(shared, me, with, limit).await,
        Request::Login { .. } => {
            Err(ErrorReply::new(ErrorCode::AlreadyAuthenticated, "you are already logged in"))
        }
        // The session ends itself on logout and never passes it here.
        Request::Logout => Err(internal("dispatch", "logout reached the command table")),
        Request::StartPrivate { user } => private::start(shared, me, user),
        Request::AcceptPrivate { user } => private::accept(shared, me, user),
        Request::DeclinePrivate { user } => private::decline(shared, me, user),
        // The session has reset its idle deadline already: every request does.
        Request::Ping => Ok(Reply::Done),
        Request::Away { message } => away::run(shared, me, message),
        Request::SendFile { to, name, size } => sendfile::run(shared, me, to, name, size),
    }
}

/// Checks a message text: not blank, no control characters, not too long.
fn check_text(shared: &Shared, text: &str) -> Result<(), ErrorReply> {
    match text_problem(text, shared.config.max_message_chars) {
        Some(why) => Err(ErrorReply::new(ErrorCode::InvalidArgument, why)),
        None => Ok(()),
    }
}

/// The reply for a failure inside the server; the details go to the log, not the client.
fn internal(context: &str, e: impl std::fmt::Display) -> ErrorReply {
    tracing::error!("{context}: {e}");
    ErrorReply::new(
        ErrorCode::Internal,
        format!("internal server error ({context}); nothing was done"),
    )
}

/// The one place where the hub's refusals become wire replies.
impl From<HubError> for ErrorReply {
    fn from(e: HubError) -> Self {
        let code = match &e {
            HubError::SelfTarget => ErrorCode::SelfTarget,
            HubError::UnknownUser(_) => ErrorCode::UnknownUser,
            HubError::Blocked(_) => ErrorCode::BlockedByRecipient,
            HubError::MailboxFull(_) => ErrorCode::MailboxFull,
            HubError::UnknownGroup(_) => ErrorCode::UnknownGroup,
            HubError::NotGroupMember(_) => ErrorCode::NotGroupMember,
            HubError::NotJoined(_) => ErrorCode::NotJoined,
            HubError::NameTaken(_) => ErrorCode::NameTaken,
            HubError::NotInvited(_) => ErrorCode::NotInvited,
            HubError::AlreadyJoined(_) => ErrorCode::AlreadyJoined,
            HubError::NotBlocked(_) => ErrorCode::NotBlocked,
            HubError::StoreFull => ErrorCode::StoreFull,
            HubError::Store(_) | HubError::LogClosed => {
                return internal("the message log", e);
            }
        };
        ErrorReply::new(code, e.to_string())
    }
}
