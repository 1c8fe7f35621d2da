//! Login: lockout check, password check (or account creation), one session per user.
//!
//! The order matters: a locked name is refused before its password is looked at; a wrong
//! password for a name that is online still counts as a failure and does not reveal that the
//! name is online; only a right password learns of the duplicate session. With closed
//! registration an unknown name costs the same hashing work and gets the same reply as a
//! wrong password.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::internal;
use crate::protocol::{now_ms, valid_username, ErrorCode, ErrorReply, Invitation, Timestamp};
use crate::server::hashing::Busy;
use crate::server::hub::{DirectAddrs, Joined, Peer};
use crate::server::inbox::{inbox, InboxReceiver};
use crate::server::limits::rate_limited;
use crate::server::lockout::Attempt;
use crate::server::{password, Shared};

/// Longest accepted password, in bytes.
const MAX_PASSWORD_LEN: usize = 1024;
/// When a login refused for a full hashing queue is told to try again.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// A session that has logged in and joined the hub.
pub(in crate::server) struct LoggedIn {
    /// Account name.
    pub name: String,
    /// Whether this login created the account.
    pub created: bool,
    /// Frames other sessions queued for this one, and the signals that end this session.
    pub rx: InboxReceiver,
    /// The hub's id of this session.
    pub session: u64,
    /// The login-history row of this session (`None` if it could not be recorded).
    pub history_row: Option<i64>,
    /// When the session joined the hub: a message sent before it waited for the user.
    pub since: Timestamp,
    /// The user's acknowledged position in the log: catch-up starts after it.
    pub cursor: u64,
    /// How many messages wait after it.
    pub waiting: u64,
    /// Group invitations not answered yet, oldest first.
    pub invitations: Vec<Invitation>,
    /// The session's binding on the UDP endpoint, if the server has one.
    pub udp: Option<crate::protocol::UdpBinding>,
}

pub(in crate::server) async fn run(
    shared: &Shared,
    ip: IpAddr,
    username: String,
    password: String,
    direct: Option<DirectAddrs>,
) -> Result<LoggedIn, ErrorReply> {
    if !valid_username(&username) {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "usernames are 1-32 letters, digits, '_', '-' or '.'",
        ));
    }
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("passwords are 1-{MAX_PASSWORD_LEN} bytes"),
        ));
    }
    if direct.is_some_and(|d| d.tcp.port() == 0 || d.udp.port() == 0) {
        return Err(ErrorReply::new(ErrorCode::InvalidArgument, "direct ports cannot be 0"));
    }
    shared.lockout().begin(&username, Instant::now()).map_err(locked)?;
    let checked = check_password(shared, ip, &username, password).await;
    let attempt = match &checked {
        Ok(_) => Attempt::Succeeded,
        Err(e) if e.code == ErrorCode::InvalidCredentials => Attempt::Failed,
        Err(_) => Attempt::Abandoned,
    };
    if let Some(lock) = shared.lockout().finish(&username, attempt, Instant::now()) {
        tracing::warn!(user = %username, "locked after repeated failed logins");
        return Err(locked(lock));
    }
    let created = checked?;
    join(shared, username, created, direct).await
}

/// Verifies the password; `Ok(true)` when the account was created by this login.
async fn check_password(
    shared: &Shared,
    ip: IpAddr,
    name: &str,
    password: String,
) -> Result<bool, ErrorReply> {
    let key = name.to_owned();
    let stored = shared
        .store
        .call(move |s| s.password_hash(&key))
        .await
        .map_err(|e| internal("reading an account", e))?;
    match stored {
        Some(hash) => {
            let ok = hashing(shared, ip, move || password::verify(&password, &hash)).await?;
            if ok {
                Ok(false)
            } else {
                Err(invalid_credentials())
            }
        }
        None if shared.config.open_registration && shared.hub.is_group(name) => {
            Err(ErrorReply::new(ErrorCode::NameTaken, format!("{name} is the name of a group")))
        }
        None if shared.config.open_registration => {
            let hash = hashing(shared, ip, move || password::hash(&password)).await?;
            let key = name.to_owned();
            let created = shared
                .store
                .call(move |s| s.create_user(&key, &hash, now_ms()))
                .await
                .map_err(|e| internal("creating an account", e))?;
            if !created {
                // Someone registered the name between our read and our write.
                return Err(invalid_credentials());
            }
            shared.hub.add_user(name);
            tracing::info!(user = name, "account created by open registration");
            Ok(true)
        }
        None => {
            hashing(shared, ip, move || password::verify_dummy(&password)).await?;
            Err(invalid_credentials())
        }
    }
}

/// Puts the user online, catching up, and records the session.
async fn join(
    shared: &Shared,
    name: String,
    created: bool,
    direct: Option<DirectAddrs>,
) -> Result<LoggedIn, ErrorReply> {
    let (tx, rx) = inbox(shared.config.session_queue);
    let session = shared.hub.new_session_id();
    let since: Timestamp = now_ms();
    let peer = Peer::new(tx, since, session).with_direct(direct);
    let Joined { invitations, cursor, waiting } = shared.hub.join(&name, peer)?;
    let udp = shared.rendezvous.register(&name);
    let key = name.clone();
    // A full disk must not keep users out: they log in to read (and so free) their mailbox.
    let history_row = match shared.store.call(move |s| s.record_login(&key, since)).await {
        Ok(row) => Some(row),
        Err(e) => {
            tracing::warn!(user = %name, "cannot record a login for /whoelsesince: {e}");
            None
        }
    };
    Ok(LoggedIn {
        name,
        created,
        rx,
        session,
        history_row,
        since,
        cursor,
        waiting: waiting.count,
        invitations,
        udp,
    })
}

/// Runs password hashing `f` for a login from `ip` on the blocking pool when its turn comes
/// (`server::hashing`: one per core at a time, fairly between addresses); refused at once
/// when too many logins from `ip`, or in all, wait already.
async fn hashing<T: Send + 'static>(
    shared: &Shared,
    ip: IpAddr,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ErrorReply> {
    let exempt = shared.addrs().is_exempt(ip);
    match shared.hashing.run(ip, exempt, f).await {
        Ok(Some(done)) => Ok(done),
        Ok(None) => Err(internal("password hashing", "the hashing task failed")),
        Err(Busy) => Err(rate_limited("logins waiting for a password check", BUSY_RETRY)),
    }
}

fn invalid_credentials() -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidCredentials, "invalid username or password")
}

fn locked(remaining: std::time::Duration) -> ErrorReply {
    let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    ErrorReply::new(
        ErrorCode::LockedOut { retry_after_secs: secs },
        format!("too many failed logins; this account is locked for {secs} more seconds"),
    )
}
