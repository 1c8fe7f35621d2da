//! Turning events and replies into lines of text for people. Pure apart from the local time zone.
//!
//! Text from other users passes through [`sanitize`], so nobody can send terminal escape
//! sequences to somebody else's screen, nor make a message look like other text than it
//! contains (a right-to-left override, a zero-width character): those are shown as visible
//! escapes such as `<U+202E>`. That includes what arrives over a private chat, which the
//! server never checked. A private message is stamped with our own clock; the sender's
//! claim is shown beside it only when the two are far apart ([`their_clock`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{Local, TimeZone};

use super::session::Connection;
use super::LoginInfo;
use crate::p2p::identity::PeerTrust;
use crate::p2p::transfer::{Direction, Route, TransferEvent, TransferLink};
use crate::p2p::{ChatLink, CloseReason, PrivateEvent};
use crate::protocol::{
    ByeReason, Delivery, EndReason, Event, HistoryMessage, MemberChange, PresenceChange, Reply,
    Request, RequestEnd, SeenUser, Timestamp,
};

/// One line for a pushed event.
pub fn event(event: &Event) -> String {
    match event {
        Event::Message { from, text, sent_at, offline: false, .. } => {
            format!("[{}] {}: {}", clock(*sent_at), sanitize(from), body(text))
        }
        Event::Message { from, text, sent_at, offline: true, .. } => format!(
            "[{}] {} (while you were away): {}",
            date_time(*sent_at),
            sanitize(from),
            body(text)
        ),
        Event::Broadcast { from, text, sent_at } => {
            format!("[{}] {} (broadcast): {}", clock(*sent_at), sanitize(from), body(text))
        }
        Event::CaughtUp => "* you have every message that waited for you".to_owned(),
        Event::Away { user, message } => {
            format!("* {} is away: {}", sanitize(user), sanitize(message))
        }
        Event::Presence { user, change, at } => {
            let what = match change {
                PresenceChange::LoggedIn => "logged in",
                PresenceChange::LoggedOut => "logged out",
                PresenceChange::TimedOut => "was logged out (idle)",
                PresenceChange::Disconnected => "was disconnected",
            };
            format!("[{}] * {} {what}", clock(*at), sanitize(user))
        }
        Event::SessionEnded { reason } => format!("* {}", end_reason(*reason)),
        Event::Invited(inv) => format!(
            "[{}] * {} invited you to group {} (/joingroup {} to join)",
            clock(inv.at),
            sanitize(&inv.by),
            sanitize(&inv.group),
            sanitize(&inv.group)
        ),
        Event::GroupMessage { group, from, text, sent_at, offline: false, .. } => format!(
            "[{}] [{}] {}: {}",
            clock(*sent_at),
            sanitize(group),
            sanitize(from),
            body(text)
        ),
        Event::GroupMessage { group, from, text, sent_at, offline: true, .. } => format!(
            "[{}] [{}] {} (while you were away): {}",
            date_time(*sent_at),
            sanitize(group),
            sanitize(from),
            body(text)
        ),
        Event::GroupMember { group, user, change, at } => {
            let what = match change {
                MemberChange::Joined => "joined",
                MemberChange::Left => "left",
            };
            format!("[{}] * [{}] {} {what}", clock(*at), sanitize(group), sanitize(user))
        }
        Event::PrivateRequest { from, expires_in_secs } => {
            let from = sanitize(from);
            format!(
                "* {from} asks for a private chat: /accept {from} or /decline {from} \
                 (within {expires_in_secs} s)"
            )
        }
        Event::PrivateAccepted(intro) => format!(
            "* {} accepted your private chat request; connecting directly to {}",
            sanitize(&intro.peer),
            intro.addr
        ),
        Event::PrivateRequestEnded { peer, outgoing, reason } => {
            let peer = sanitize(peer);
            match (outgoing, reason) {
                (true, RequestEnd::Declined) => {
                    format!("* {peer} declined your private chat request")
                }
                (true, RequestEnd::Expired) => {
                    format!("* your private chat request to {peer} expired unanswered")
                }
                (true, RequestEnd::PeerLeft) => {
                    format!("* {peer} logged out; your private chat request was dropped")
                }
                (false, RequestEnd::Declined) => {
                    format!("* you declined {peer}'s private chat request")
                }
                (false, RequestEnd::Expired) => format!("* {peer}'s private chat request expired"),
                (false, RequestEnd::PeerLeft) => {
                    format!("* {peer} logged out; their private chat request was withdrawn")
                }
            }
        }
        Event::FileOffer { from, name, size } => format!(
            "* {} is sending you {} ({}) directly",
            sanitize(&from.peer),
            sanitize(name),
            bytes(*size)
        ),
        // The session carries these to the private chat they belong to; never shown.
        Event::RelayedChat { .. } => String::new(),
    }
}

/// The `/peers` lines: each open private chat and transfer, which way it goes and its
/// round trip.
pub fn peers(chats: &[ChatLink], transfers: &[TransferLink]) -> Vec<String> {
    if chats.is_empty() && transfers.is_empty() {
        return vec!["no private chat or file transfer is open".to_owned()];
    }
    let rtt = |rtt: Option<std::time::Duration>| match rtt {
        Some(rtt) => format!("round trip {:.1} ms", rtt.as_secs_f64() * 1000.0),
        None => "round trip not measured yet".to_owned(),
    };
    let chats = chats
        .iter()
        .map(|c| format!("private chat with {}: {}, {}", sanitize(&c.peer), c.route, rtt(c.rtt)));
    let transfers = transfers.iter().map(|t| {
        let (arrow, name) = (t.transfer.direction.arrow(), sanitize(&t.transfer.name));
        let peer = sanitize(&t.transfer.peer);
        let rtt = match (t.transfer.direction, t.rtt) {
            (Direction::Receive, _) => "round trip measured by the sender".to_owned(),
            (Direction::Send, measured) => rtt(measured),
        };
        format!("transfer {arrow} {name} with {peer}: {}, {rtt}", t.route)
    });
    chats.chain(transfers).collect()
}

/// How a link's bytes travel, in words: "directly" or "through the server's relay".
pub fn way(route: &Route) -> &'static str {
    match route {
        Route::Direct(_) => "directly",
        Route::Relay(_) => "through the server's relay (no direct path)",
    }
}

/// One line for something that happened to a file transfer; `None` for progress, which
/// front ends draw as a bar or gauge instead.
pub fn transfer(event: &TransferEvent) -> Option<String> {
    Some(match event {
        TransferEvent::Offered { transfer: t, resume_from, accepting } => {
            let (peer, name) = (sanitize(&t.peer), sanitize(&t.name));
            let resume = match resume_from {
                0 => String::new(),
                n => format!("; you have {} of it already", bytes(*n)),
            };
            match accepting {
                true => format!(
                    "* {peer} offers {name} ({}{resume}); accepting it (--auto-accept)",
                    bytes(t.size)
                ),
                false => format!(
                    "* {peer} offers {name} ({}{resume}): /acceptfile {peer} or /declinefile {peer}",
                    bytes(t.size)
                ),
            }
        }
        TransferEvent::Rerouted { transfer: t, route } => {
            format!("* {} with {} now goes {}", sanitize(&t.name), sanitize(&t.peer), way(route))
        }
        TransferEvent::Waiting { transfer: t } => {
            format!(
                "* {} has your offer of {}; waiting for an answer",
                sanitize(&t.peer),
                sanitize(&t.name)
            )
        }
        TransferEvent::Started { transfer: t, resume_from, route } => {
            let resume = match resume_from {
                0 => String::new(),
                n => format!(", resuming after {}", bytes(*n)),
            };
            let (peer, name) = (sanitize(&t.peer), sanitize(&t.name));
            let way = way(route);
            match t.direction {
                Direction::Send => format!("* {peer} accepted {name}; sending {way}{resume}"),
                // "accepting" (typed, or --auto-accept) said it already, and may come after
                // this event: a second line would only be out of order.
                Direction::Receive if *resume_from == 0 => return None,
                Direction::Receive => format!("* receiving {name} from {peer} {way}{resume}"),
            }
        }
        TransferEvent::Progress { .. } => return None,
        TransferEvent::Sent { transfer: t, .. } => {
            format!("{} has been uploaded to {}", sanitize(&t.name), sanitize(&t.peer))
        }
        TransferEvent::Received { transfer: t, path, route } => format!(
            "received {} from {} ({} bytes, sha256 ok), saved as {}; it came {}",
            sanitize(&t.name),
            sanitize(&t.peer),
            t.size,
            sanitize(&path.display().to_string()),
            way(route)
        ),
        TransferEvent::Failed { transfer: t, error } => {
            let (peer, name) = (sanitize(&t.peer), sanitize(&t.name));
            match t.direction {
                Direction::Send => format!("* sending {name} to {peer} failed: {error}"),
                Direction::Receive => format!("* receiving {name} from {peer} failed: {error}"),
            }
        }
    })
}

/// How long `bytes` took in `ms` milliseconds, for the end of a transfer:
/// `in 4.2 s, 2.4 MiB/s`.
pub fn took(bytes: u64, ms: u64) -> String {
    let rate = bytes.saturating_mul(1000).checked_div(ms).unwrap_or(bytes);
    format!("in {:.1} s, {}/s", ms as f64 / 1000.0, self::bytes(rate))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`, `4.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One line for something that happened to a private chat.
pub fn private(event: &PrivateEvent) -> String {
    match event {
        PrivateEvent::Opened { peer, trust, route } => {
            let peer = sanitize(peer);
            let way = way(route);
            match trust {
                PeerTrust::Unverified => format!(
                    "* private chat with {peer} is open, encrypted end to end, {way}: /private \
                     {peer} TEXT to write, /stopprivate {peer} to end it, /verify {peer} to \
                     compare safety codes"
                ),
                PeerTrust::Verified => format!(
                    "* private chat with {peer} is open, encrypted end to end with the key you \
                     verified, {way}: /private {peer} TEXT to write, /stopprivate {peer} to end it"
                ),
                PeerTrust::Changed { .. } => format!(
                    "* WARNING: {peer}'s key is NOT the one you verified. The server, or someone \
                     it let in between, may be reading this private chat ({way}). Say nothing \
                     secret; compare safety codes again with /verify {peer}"
                ),
            }
        }
        PrivateEvent::Message { peer, text, sent_at, received_at } => {
            let (at, peer, text) = (clock(*received_at), sanitize(peer), body(text));
            match their_clock(*sent_at, *received_at) {
                None => format!("[{at}] {peer} (private): {text}"),
                Some(note) => format!("[{at}] {peer} (private, {note}): {text}"),
            }
        }
        PrivateEvent::Refused { peer, why } => {
            format!("* refused a private message from {}: {why}", sanitize(peer))
        }
        PrivateEvent::Closed { peer, reason } => {
            let peer = sanitize(peer);
            match reason {
                CloseReason::Peer(ByeReason::Stopped) => format!("* {peer} ended the private chat"),
                CloseReason::Peer(ByeReason::LoggedOut) => {
                    format!("* {peer} logged out; the private chat has ended")
                }
                CloseReason::Peer(ByeReason::TimedOut) => {
                    format!("* {peer} was logged out (idle); the private chat has ended")
                }
                CloseReason::Peer(ByeReason::TooFast) => {
                    format!("* {peer} closed the private chat: you sent messages too fast")
                }
                CloseReason::Lost => {
                    format!("* the private chat with {peer} was lost (the connection closed)")
                }
                CloseReason::Flooded => {
                    format!("* {peer} sent messages too fast; the private chat was closed")
                }
                CloseReason::Broken => {
                    format!(
                        "* {peer}'s client broke the private-chat protocol; the chat was closed"
                    )
                }
            }
        }
        PrivateEvent::Failed { peer, error: e } => {
            error(format!("could not open the private chat with {}: {e}", sanitize(peer)))
        }
    }
}

/// The line after a private message was sent.
pub fn private_sent(peer: &str) -> String {
    format!("sent privately to {peer}")
}

/// The line after `/stopprivate`.
pub fn private_stopped(peer: &str) -> String {
    format!("private chat with {peer} ended")
}

/// Why the server ended a session, in words.
pub fn end_reason(reason: EndReason) -> &'static str {
    match reason {
        EndReason::IdleTimeout => "you were logged out after being idle too long",
        EndReason::ServerShutdown => "the server is shutting down",
        EndReason::TooSlow => "disconnected: messages were not read fast enough",
        EndReason::Flooding => "disconnected: too many requests after being asked to slow down",
        EndReason::LoginTimeout => "disconnected: not logged in in time",
        EndReason::StalledFrame => "disconnected: a request stalled half-sent",
    }
}

/// The line for a new state of the server connection; `None` for one that needs no line
/// (logged in again: [`caught_up`] says so once the catch-up is done).
pub fn connection(state: &Connection) -> Option<String> {
    match state {
        Connection::Connected => None,
        Connection::Reconnecting { attempt: 0, retry_in, why } => Some(format!(
            "* connection lost ({}); reconnecting in {}",
            sanitize(why),
            seconds(*retry_in)
        )),
        Connection::Reconnecting { retry_in, why, .. } => Some(format!(
            "* still not connected ({}); trying again in {}",
            sanitize(why),
            seconds(*retry_in)
        )),
        Connection::Ended(why) => Some(error(format!("the session ended: {}", sanitize(why)))),
        Connection::Lost(why) => {
            Some(error(format!("the connection to the server was lost: {}", sanitize(why))))
        }
    }
}

/// The line after a reconnect's catch-up.
pub fn caught_up(arrived: u32) -> String {
    match arrived {
        0 => "* reconnected".to_owned(),
        1 => "* reconnected; 1 message arrived meanwhile".to_owned(),
        n => format!("* reconnected; {n} messages arrived meanwhile"),
    }
}

/// The line for a message that waits for the server.
pub fn pending(request: &Request) -> String {
    match request {
        Request::Msg { to, text, .. } => {
            format!("(pending) -> {}: {}", sanitize(to), sanitize(text))
        }
        Request::GroupMsg { group, text, .. } => {
            format!("(pending) [{}] -> {}", sanitize(group), sanitize(text))
        }
        other => format!("(pending) {other:?}"),
    }
}

/// A pause in whole seconds, at least one ("in 1 s").
fn seconds(pause: std::time::Duration) -> String {
    format!("{} s", pause.as_secs_f64().round().max(1.0))
}

/// The line said once when the server connection is gone but private chats remain.
pub fn server_gone() -> String {
    "* the server is gone; your private chats still work (/private, /stopprivate; \
     /logout quits)"
        .to_owned()
}

/// The line shown after logging in.
pub fn login(info: &LoginInfo) -> String {
    let mut line = if info.created {
        format!("account {} created; welcome", info.username)
    } else {
        format!("logged in as {}", info.username)
    };
    match info.offline_messages {
        0 => {}
        1 => line.push_str("; 1 message arrived while you were away"),
        n => line.push_str(&format!("; {n} messages arrived while you were away")),
    }
    line
}

/// Lines for the successful reply to `request`.
pub fn reply(request: &Request, reply: &Reply) -> Vec<String> {
    let line = match (request, reply) {
        (_, Reply::Sent { to, delivery: Delivery::Online, .. }) => format!("sent to {to}"),
        (_, Reply::Sent { to, delivery: Delivery::Stored, .. }) => {
            format!("{to} is offline; they will get it when they log in")
        }
        (_, Reply::Broadcasted { delivered, skipped: 0 }) => {
            format!("broadcast sent to {}", users(*delivered))
        }
        (_, Reply::Broadcasted { delivered, skipped }) => format!(
            "broadcast sent to {}; {} could not receive it",
            users(*delivered),
            users(*skipped)
        ),
        (_, Reply::Users(list)) if list.is_empty() => "nobody else is online".to_owned(),
        (_, Reply::Users(list)) => {
            return list
                .iter()
                .map(|u| match &u.away {
                    None => format!("{} (online since {})", u.name, date_time(u.since)),
                    Some(why) => format!(
                        "{} (online since {}; away: {})",
                        u.name,
                        date_time(u.since),
                        sanitize(why)
                    ),
                })
                .collect();
        }
        (Request::WhoElseSince { secs }, Reply::Seen(list)) if list.is_empty() => {
            format!("nobody else was online in the last {secs} seconds")
        }
        (_, Reply::Seen(list)) => return list.iter().map(|u| seen(u, None)).collect(),
        (Request::Away { message: Some(why) }, Reply::Done) => {
            format!("you are marked away: {}", sanitize(why))
        }
        (Request::Away { message: None }, Reply::Done) => "you are back".to_owned(),
        (Request::Block { user }, Reply::Done) => format!("{user} is blocked"),
        (Request::Unblock { user }, Reply::Done) => format!("{user} is unblocked"),
        (Request::StartPrivate { user }, Reply::Done) => {
            format!("asked {user} for a private chat; waiting for their answer")
        }
        (Request::DeclinePrivate { user }, Reply::Done) => {
            format!("declined {user}'s private chat request")
        }
        (_, Reply::Introduced(intro)) => {
            format!("accepted {}'s private chat request; waiting for them to connect", intro.peer)
        }
        (_, Reply::Done) => "done".to_owned(),
        (_, Reply::LoggedOut) => "logged out; bye".to_owned(),
        (_, Reply::LoggedIn { username, .. }) => format!("logged in as {username}"),
        (_, Reply::GroupCreated { group, invited }) => {
            format!("group {group} created; invited {}", invited.join(", "))
        }
        (_, Reply::JoinedGroup { group, members }) => {
            format!("joined {group}; members: {}", members.join(", "))
        }
        (_, Reply::LeftGroup { group }) => format!("left {group}"),
        (_, Reply::GroupSent { group, delivered, stored, skipped, .. }) => {
            let mut line = format!("sent to {group}: {delivered} online");
            if *stored > 0 {
                line.push_str(&format!(", {stored} will get it at their next login"));
            }
            if *skipped > 0 {
                line.push_str(&format!(", {} could not receive it", users(*skipped)));
            }
            line
        }
        (_, Reply::Groups { groups, invitations }) => {
            if groups.is_empty() && invitations.is_empty() {
                return vec!["you are in no groups and have no invitations".to_owned()];
            }
            let mut lines: Vec<String> = groups
                .iter()
                .map(|g| {
                    let mut line = format!("{}: {}", g.name, g.members.join(", "));
                    if !g.invited.is_empty() {
                        line.push_str(&format!(" (invited: {})", g.invited.join(", ")));
                    }
                    line
                })
                .collect();
            lines.extend(invitations.iter().map(|i| {
                format!(
                    "invitation to {} from {} ({}); /joingroup {} to join",
                    i.group,
                    i.by,
                    date_time(i.at),
                    i.group
                )
            }));
            return lines;
        }
        (_, Reply::History { with, messages, .. }) if messages.is_empty() => {
            format!("no messages with {with} yet")
        }
        (_, Reply::History { with, group, messages }) => {
            let what = if *group { "group" } else { "conversation with" };
            let mut lines = vec![format!("last {} of {what} {with}:", messages_count(messages))];
            lines.extend(messages.iter().map(|m| {
                format!("[{}] {}: {}", date_time(m.sent_at), sanitize(&m.from), body(&m.text))
            }));
            return lines;
        }
    };
    vec![line]
}

/// A `/whoelsesince` line: the user, online or offline, and since when when the client
/// knows (`since`: online since, or offline since, as it saw them come and go).
pub fn seen(user: &SeenUser, since: Option<Timestamp>) -> String {
    let state = if user.online { "online" } else { "offline" };
    // The server's time of leaving over the one this client saw.
    let since = if user.online { since } else { user.left_at.or(since) };
    match since {
        Some(at) => format!("{} ({state} since {})", user.name, date_time(at)),
        None => format!("{} ({state})", user.name),
    }
}

fn messages_count(messages: &[HistoryMessage]) -> String {
    match messages.len() {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    }
}

/// An error line: one `error: ` prefix, however the message came (already an error line,
/// or a `* ` notice that turned out to be a failure).
pub fn error(message: impl std::fmt::Display) -> String {
    let message = message.to_string();
    let message = message.strip_prefix("* ").unwrap_or(&message);
    match message.strip_prefix("error: ") {
        Some(_) => message.to_owned(),
        None => format!("error: {message}"),
    }
}

/// A message's text for a line of output: [`sanitize`]d, and a multi-line message's
/// continuation lines indented by four spaces (so a reader of the output tells them from
/// the next event).
pub fn body(text: &str) -> Cow<'_, str> {
    if !text.contains('\n') {
        return sanitize(text);
    }
    text.split('\n').map(sanitize).collect::<Vec<_>>().join("\n    ").into()
}

/// Makes others' text safe and honest to show: control characters (escape sequences,
/// newlines) become U+FFFD, and the invisible characters that change how the text around
/// them looks (bidi controls, zero-width characters; see [`is_invisible`]) become visible
/// escapes such as `<U+202E>`. The joiners inside an emoji sequence (a ZWJ family, a
/// subdivision flag) are left alone: they are drawn as one picture.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let chars: Vec<char> = text.chars().collect();
    let mut in_tag_flag = false;
    for (i, &c) in chars.iter().enumerate() {
        let (before, after) = (i.checked_sub(1).map(|j| chars[j]), chars.get(i + 1).copied());
        // The joiners of an emoji sequence are part of the picture, not hidden text: a ZWJ
        // between two pictographs (a family), the tags of a subdivision flag (🏴 + tags).
        in_tag_flag = match c {
            '\u{E0020}'..='\u{E007F}' => in_tag_flag || before == Some('\u{1F3F4}'),
            _ => false,
        };
        let joins = match c {
            '\u{200D}' => {
                before.is_some_and(|b| is_pictograph(b) || b == '\u{FE0F}')
                    && after.is_some_and(is_pictograph)
            }
            _ => in_tag_flag,
        };
        if c.is_control() {
            out.push('\u{fffd}');
        } else if is_invisible(c) && !joins {
            let _ = write!(out, "<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Whether `c` is an emoji picture (or a skin-tone modifier) that a ZWJ may join.
fn is_pictograph(c: char) -> bool {
    matches!(c, '\u{2300}'..='\u{23FF}' | '\u{2600}'..='\u{27BF}' | '\u{2B00}'..='\u{2BFF}')
        || matches!(c, '\u{1F000}'..='\u{1FAFF}')
}

/// Whether `c` is shown as an escape: it is not drawn itself but reorders, joins, hides or
/// breaks the text around it. Bidi controls (U+061C, U+200E/F, U+202A..U+202E,
/// U+2066..U+2069), zero-width and invisible characters (U+00AD, U+180E, U+200B..U+200D,
/// U+2060..U+2064, U+206A..U+206F, U+FEFF, U+FFF9..U+FFFB, the tags U+E0000..U+E007F) and
/// the line and paragraph separators U+2028/9.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// How far apart, in milliseconds, the sender's and our clock may put a private message
/// before the sender's time is shown too.
pub const CLOCK_SKEW_MS: Timestamp = 2 * 60 * 1000;

/// The sender's claimed time of a private message received at `received_at`, as a note
/// ("sent 14:02 by their clock"), if it is more than [`CLOCK_SKEW_MS`] away.
pub fn their_clock(sent_at: Timestamp, received_at: Timestamp) -> Option<String> {
    if sent_at.abs_diff(received_at) <= CLOCK_SKEW_MS as u64 {
        return None;
    }
    let (sent, received) = (local(sent_at), local(received_at));
    let at = if sent.date_naive() == received.date_naive() {
        sent.format("%H:%M").to_string()
    } else {
        sent.format("%Y-%m-%d %H:%M").to_string()
    };
    Some(format!("sent {at} by their clock"))
}

fn users(n: u32) -> String {
    if n == 1 {
        "1 user".to_owned()
    } else {
        format!("{n} users")
    }
}

fn local(ts: Timestamp) -> chrono::DateTime<Local> {
    Local
        .timestamp_millis_opt(ts)
        .single()
        .unwrap_or_else(|| Local.timestamp_millis_opt(0).unwrap())
}

/// `HH:MM:SS` in local time.
pub fn clock(ts: Timestamp) -> String {
    local(ts).format("%H:%M:%S").to_string()
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn date_time(ts: Timestamp) -> String {
    local(ts).format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_says_which_way_each_link_goes_and_its_round_trip() {
        use crate::p2p::transfer::Transfer;
        use std::time::Duration;
        assert_eq!(peers(&[], &[]), ["no private chat or file transfer is open"]);
        let chat = |peer: &str, route, rtt| ChatLink { peer: peer.into(), route, rtt };
        let direct = Route::Direct("203.0.113.9:41001".parse().unwrap());
        let relayed = Route::Relay(crate::protocol::LinkId([1; 16]));
        let clip = |direction| Transfer {
            id: 1,
            peer: "carol".into(),
            name: "clip.mp4".into(),
            size: 10,
            direction,
        };
        let lines = peers(
            &[chat("bob", direct, Some(Duration::from_micros(1500))), chat("dave", relayed, None)],
            &[
                TransferLink { transfer: clip(Direction::Send), route: relayed, rtt: None },
                TransferLink { transfer: clip(Direction::Receive), route: direct, rtt: None },
            ],
        );
        assert_eq!(
            lines,
            [
                "private chat with bob: direct to 203.0.113.9:41001, round trip 1.5 ms",
                "private chat with dave: relayed through the server, round trip not measured yet",
                "transfer ↑ clip.mp4 with carol: relayed through the server, round trip not \
                 measured yet",
                "transfer ↓ clip.mp4 with carol: direct to 203.0.113.9:41001, round trip \
                 measured by the sender",
            ]
        );
    }
    use crate::protocol::{OnlineUser, SeenUser};

    #[test]
    fn messages_show_time_sender_and_text() {
        let line = event(&Event::Message {
            id: 1,
            from: "alice".into(),
            text: "hi bob".into(),
            sent_at: 0,
            offline: false,
        });
        assert!(line.ends_with("] alice: hi bob"), "{line}");
        assert!(line.starts_with('[') && line.len() == "[00:00:00] alice: hi bob".len());
        let away = event(&Event::Message {
            id: 1,
            from: "alice".into(),
            text: "hi".into(),
            sent_at: 0,
            offline: true,
        });
        assert!(away.contains("alice (while you were away): hi"), "{away}");
        assert!(away.contains("19"), "offline messages carry their date: {away}");
    }

    #[test]
    fn escape_sequences_from_others_are_neutralised() {
        let line = event(&Event::Broadcast {
            from: "eve".into(),
            text: "\x1b[2Jgotcha\nfake line".into(),
            sent_at: 0,
        });
        assert!(!line.chars().any(|c| c.is_control() && c != '\n'), "{line:?}");
        // A line break is a multi-line message's, indented: it cannot pass for an event.
        assert!(line.contains("\u{fffd}[2Jgotcha\n    fake line"), "{line:?}");
    }

    #[test]
    fn a_multi_line_message_is_indented_under_its_first_line() {
        let line = event(&Event::Message {
            id: 1,
            from: "bob".into(),
            text: "agenda:\n1. windows\x1b[2J".into(),
            sent_at: 0,
            offline: false,
        });
        assert!(line.ends_with("bob: agenda:\n    1. windows\u{fffd}[2J"), "{line:?}");
    }

    #[test]
    fn an_error_line_has_one_prefix() {
        assert_eq!(error("no such user"), "error: no such user");
        assert_eq!(error(error("no such user")), "error: no such user");
        assert_eq!(error("* sending a failed: lost"), "error: sending a failed: lost");
    }

    #[test]
    fn presence_and_session_end_read_plainly() {
        let p = |change| event(&Event::Presence { user: "bob".into(), change, at: 0 });
        assert!(p(PresenceChange::LoggedIn).ends_with("* bob logged in"));
        assert!(p(PresenceChange::TimedOut).ends_with("* bob was logged out (idle)"));
        assert!(event(&Event::SessionEnded { reason: EndReason::ServerShutdown })
            .contains("shutting down"));
    }

    #[test]
    fn replies_name_what_happened() {
        let cmd = Request::List;
        assert_eq!(reply(&cmd, &Reply::Users(vec![])), ["nobody else is online"]);
        let users = Reply::Users(vec![
            OnlineUser { name: "bob".into(), since: 0, away: None },
            OnlineUser { name: "carol".into(), since: 0, away: None },
        ]);
        let lines = reply(&cmd, &users);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("bob (online since "));
        let b = Reply::Broadcasted { delivered: 2, skipped: 1 };
        assert_eq!(reply(&cmd, &b), ["broadcast sent to 2 users; 1 user could not receive it"]);
        let seen =
            Reply::Seen(vec![SeenUser { name: "dave".into(), online: false, left_at: None }]);
        assert_eq!(reply(&Request::WhoElseSince { secs: 5 }, &seen), ["dave (offline)"]);
        assert_eq!(reply(&Request::Block { user: "eve".into() }, &Reply::Done), ["eve is blocked"]);
        let stored = Reply::Sent { to: "bob".into(), delivery: Delivery::Stored, sent_at: 0 };
        assert_eq!(reply(&cmd, &stored), ["bob is offline; they will get it when they log in"]);
    }

    #[test]
    fn group_events_and_replies_are_marked_with_the_group() {
        let g = event(&Event::GroupMessage {
            id: 1,
            group: "devs".into(),
            from: "bob".into(),
            text: "standup\x1b[0m".into(),
            sent_at: 0,
            offline: false,
        });
        assert!(g.ends_with("] [devs] bob: standup\u{fffd}[0m"), "{g}");
        let inv = event(&Event::Invited(crate::protocol::Invitation {
            group: "devs".into(),
            by: "alice".into(),
            at: 0,
        }));
        assert!(inv.ends_with("* alice invited you to group devs (/joingroup devs to join)"));
        let cmd = Request::Groups;
        let sent = Reply::GroupSent {
            group: "devs".into(),
            delivered: 2,
            stored: 1,
            skipped: 1,
            sent_at: 0,
        };
        assert_eq!(
            reply(&cmd, &sent),
            ["sent to devs: 2 online, 1 will get it at their next login, 1 user could not receive it"]
        );
        let none = Reply::Groups { groups: vec![], invitations: vec![] };
        assert_eq!(reply(&cmd, &none), ["you are in no groups and have no invitations"]);
        let history = Reply::History {
            with: "bob".into(),
            group: false,
            messages: vec![HistoryMessage { from: "bob".into(), text: "hi".into(), sent_at: 0 }],
        };
        let lines = reply(&cmd, &history);
        assert_eq!(lines[0], "last 1 message of conversation with bob:");
        assert!(lines[1].ends_with("] bob: hi"), "{}", lines[1]);
    }

    #[test]
    fn private_messages_are_marked_and_neutralised() {
        let line = private(&PrivateEvent::Message {
            peer: "bob".into(),
            text: "psst\x1b[2J".into(),
            sent_at: 0,
            received_at: 0,
        });
        assert!(line.ends_with("] bob (private): psst\u{fffd}[2J"), "{line}");
        let closed = |reason| private(&PrivateEvent::Closed { peer: "bob".into(), reason });
        assert_eq!(closed(CloseReason::Peer(ByeReason::Stopped)), "* bob ended the private chat");
        assert!(closed(CloseReason::Peer(ByeReason::LoggedOut)).contains("bob logged out"));
        assert!(closed(CloseReason::Lost).contains("lost"));
        assert_eq!(
            closed(CloseReason::Flooded),
            "* bob sent messages too fast; the private chat was closed"
        );
        assert_eq!(
            closed(CloseReason::Peer(ByeReason::TooFast)),
            "* bob closed the private chat: you sent messages too fast"
        );
        assert!(closed(CloseReason::Broken).contains("broke the private-chat protocol"));
        let refused = private(&PrivateEvent::Refused {
            peer: "bob".into(),
            why: "messages are limited to 4000 characters".into(),
        });
        assert_eq!(
            refused,
            "* refused a private message from bob: messages are limited to 4000 characters"
        );
        let failed = private(&PrivateEvent::Failed { peer: "bob".into(), error: "refused".into() });
        assert!(failed.starts_with("error: ") && failed.ends_with("bob: refused"), "{failed}");
    }

    #[test]
    fn bidi_controls_and_zero_width_characters_show_as_escapes() {
        // "evil.exe" that displays as "evilexe.txt"-like trickery, and a hidden word.
        assert_eq!(sanitize("evil\u{202E}txt.exe"), "evil<U+202E>txt.exe");
        assert_eq!(sanitize("pay\u{200B}pal"), "pay<U+200B>pal");
        assert_eq!(sanitize("\u{FEFF}x\u{E0041}"), "<U+FEFF>x<U+E0041>");
        let every = [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{2028}', '\u{2029}',
        ];
        for c in every {
            let shown = sanitize(&c.to_string()).into_owned();
            assert_eq!(shown, format!("<U+{:04X}>", u32::from(c)));
        }
        // Ordinary text of any script, and text that merely looks like an escape, are kept.
        for plain in ["ünïcödé", "مرحبا", "日本語", "emoji 😀", "<U+202E>", "a\u{202F}b"]
        {
            assert!(matches!(sanitize(plain), Cow::Borrowed(_)), "{plain}");
        }
        // The joiners of emoji sequences are drawn as one picture; elsewhere they are shown.
        for emoji in [
            "👨\u{200D}👩\u{200D}👧",
            "🏳\u{FE0F}\u{200D}🌈",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ] {
            assert_eq!(sanitize(emoji), emoji, "{emoji}");
        }
        assert_eq!(sanitize("a\u{200D}👩"), "a<U+200D>👩");
        assert_eq!(sanitize("👨\u{200D}"), "👨<U+200D>");
        assert_eq!(sanitize("x\u{E0067}"), "x<U+E0067>");
        // Controls still become U+FFFD beside the escapes, in every kind of line.
        assert_eq!(sanitize("a\x1b\u{202E}b"), "a\u{fffd}<U+202E>b");
        let line = event(&Event::Message {
            id: 1,
            from: "eve".into(),
            text: "\u{2067}gnp.exe".into(),
            sent_at: 0,
            offline: false,
        });
        assert!(line.ends_with("eve: <U+2067>gnp.exe"), "{line}");
    }

    #[test]
    fn a_private_message_shows_our_time_and_theirs_only_when_far_off() {
        let received_at = 1_800_000_000_000; // some afternoon in 2027
        let message = |sent_at| {
            private(&PrivateEvent::Message {
                peer: "bob".into(),
                text: "hi".into(),
                sent_at,
                received_at,
            })
        };
        let ours = format!("[{}] bob (private): hi", clock(received_at));
        assert_eq!(message(received_at), ours);
        assert_eq!(message(received_at - CLOCK_SKEW_MS), ours, "two minutes off is close");
        assert_eq!(message(received_at + CLOCK_SKEW_MS), ours);
        let early = received_at - CLOCK_SKEW_MS - 60_000;
        let hm = local(early).format("%H:%M");
        assert_eq!(
            message(early),
            format!("[{}] bob (private, sent {hm} by their clock): hi", clock(received_at))
        );
        // A claim on another day says which day.
        let long_ago = received_at - 3 * 86_400_000;
        let day = local(long_ago).format("%Y-%m-%d %H:%M");
        assert!(message(long_ago).contains(&format!("(private, sent {day} by their clock)")));
        // Nonsense claims do not break the line.
        assert!(message(i64::MIN).contains("by their clock): hi"));
        assert!(message(i64::MAX).starts_with(&format!("[{}] bob", clock(received_at))));
    }

    #[test]
    fn private_requests_read_from_each_side() {
        let request = event(&Event::PrivateRequest { from: "alice".into(), expires_in_secs: 60 });
        assert!(request.contains("/accept alice or /decline alice (within 60 s)"), "{request}");
        let ended = |outgoing, reason| {
            event(&Event::PrivateRequestEnded { peer: "bob".into(), outgoing, reason })
        };
        assert_eq!(ended(true, RequestEnd::Declined), "* bob declined your private chat request");
        assert!(ended(true, RequestEnd::Expired).contains("your private chat request to bob"));
        assert!(ended(false, RequestEnd::Expired).contains("bob's private chat request expired"));
        assert!(ended(false, RequestEnd::PeerLeft).contains("withdrawn"));
        let asked = reply(&Request::StartPrivate { user: "bob".into() }, &Reply::Done);
        assert_eq!(asked, ["asked bob for a private chat; waiting for their answer"]);
    }

    #[test]
    fn login_line_counts_waiting_messages() {
        let info =
            LoginInfo { username: "bob".into(), created: false, offline_messages: 2, udp: None };
        assert_eq!(login(&info), "logged in as bob; 2 messages arrived while you were away");
    }

    #[test]
    fn sizes_and_transfer_lines() {
        use crate::p2p::transfer::{Transfer, TransferError};
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3_000_000), "2.9 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        let t = |direction| Transfer {
            id: 1,
            peer: "bob\x1b[2J".into(),
            name: "clip.mp4".into(),
            size: 12,
            direction,
        };
        let sent = transfer(&TransferEvent::Sent {
            transfer: t(Direction::Send),
            stats: Default::default(),
        })
        .unwrap();
        assert_eq!(sent, "clip.mp4 has been uploaded to bob\u{fffd}[2J");
        let failed = TransferEvent::Failed {
            transfer: t(Direction::Receive),
            error: TransferError::HashMismatch,
        };
        assert!(transfer(&failed).unwrap().starts_with("* receiving clip.mp4 from bob"));
        let progress =
            TransferEvent::Progress { id: 1, direction: Direction::Send, done: 1, total: 2 };
        assert_eq!(transfer(&progress), None, "progress is drawn, not printed");
        let started = |resume_from| TransferEvent::Started {
            transfer: t(Direction::Receive),
            resume_from,
            route: Route::Direct("192.0.2.1:1".parse().unwrap()),
        };
        assert_eq!(transfer(&started(0)), None, "\"accepting\" said it");
        assert!(transfer(&started(5)).unwrap().ends_with("resuming after 5 B"));
        let offered = |accepting| TransferEvent::Offered {
            transfer: t(Direction::Receive),
            resume_from: 0,
            accepting,
        };
        assert!(transfer(&offered(false)).unwrap().contains("/acceptfile bob"));
        let auto = transfer(&offered(true)).unwrap();
        assert!(auto.ends_with("accepting it (--auto-accept)") && !auto.contains("/acceptfile"));
    }
}
