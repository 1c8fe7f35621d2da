//! Parsing what the user types into a [`Command`]. Pure; shared by every front end.
//!
//! The first word names the command, with or without a leading `/`, in any case; every alias
//! of the classic messenger works. [`COMMANDS`] is the one table that parsing, `/help` and
//! completion read.

use crate::protocol::Request;

/// One command: its name, aliases and help.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// The main name, as shown in help.
    pub name: &'static str,
    /// Other names that work the same.
    pub aliases: &'static [&'static str],
    /// Arguments, as shown in help.
    pub args: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
}

/// Every command the client knows, in help order.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "/msg",
        aliases: &["/msgto", "message"],
        args: "USER TEXT",
        summary: "send USER a message (kept for them if they are offline)",
    },
    CommandSpec {
        name: "/broadcast",
        aliases: &["broadcast"],
        args: "TEXT",
        summary: "send a message to everyone online",
    },
    CommandSpec {
        name: "/list",
        aliases: &["/activeuser", "/whoelse", "whoelse"],
        args: "",
        summary: "who is online now, and since when",
    },
    CommandSpec {
        name: "/whoelsesince",
        aliases: &["whoelsesince"],
        args: "SECS",
        summary: "who was online at any time in the last SECS seconds",
    },
    CommandSpec {
        name: "/block",
        aliases: &["block"],
        args: "USER",
        summary: "stop receiving anything from USER and hide from them",
    },
    CommandSpec { name: "/unblock", aliases: &["unblock"], args: "USER", summary: "undo /block" },
    CommandSpec {
        name: "/away",
        aliases: &[],
        args: "[MESSAGE]",
        summary: "say you are away (shown in /list, told once to who messages you); alone: back",
    },
    CommandSpec {
        name: "/creategroup",
        aliases: &[],
        args: "NAME USER...",
        summary: "create group NAME (letters and digits) and invite the USERs",
    },
    CommandSpec {
        name: "/joingroup",
        aliases: &[],
        args: "NAME",
        summary: "accept an invitation to group NAME",
    },
    CommandSpec {
        name: "/groupmsg",
        aliases: &[],
        args: "NAME TEXT",
        summary: "send a message to the members of group NAME",
    },
    CommandSpec {
        name: "/leavegroup",
        aliases: &[],
        args: "NAME",
        summary: "leave group NAME, or turn down its invitation",
    },
    CommandSpec {
        name: "/groups",
        aliases: &[],
        args: "",
        summary: "your groups, their members and your invitations",
    },
    CommandSpec {
        name: "/history",
        aliases: &[],
        args: "USER-or-GROUP [N]",
        summary: "the last N (default 20) messages with USER or in GROUP",
    },
    CommandSpec {
        name: "/startprivate",
        aliases: &["startprivate"],
        args: "USER",
        summary: "ask USER for a private chat over a direct connection the server never sees",
    },
    CommandSpec {
        name: "/accept",
        aliases: &[],
        args: "USER",
        summary: "accept USER's private chat request",
    },
    CommandSpec {
        name: "/decline",
        aliases: &[],
        args: "USER",
        summary: "decline USER's private chat request",
    },
    CommandSpec {
        name: "/private",
        aliases: &["private"],
        args: "USER TEXT",
        summary: "send USER a message over your private chat (works while the server is down)",
    },
    CommandSpec {
        name: "/stopprivate",
        aliases: &["stopprivate"],
        args: "USER",
        summary: "end your private chat with USER; they are told",
    },
    CommandSpec {
        name: "/verify",
        aliases: &[],
        args: "USER [confirm]",
        summary: "the safety code of your private chat with USER, to compare with theirs; \
                  `confirm` once they match, and a changed key will be flagged",
    },
    CommandSpec {
        name: "/p2pvideo",
        aliases: &["/sendfile", "p2pvideo", "sendfile"],
        args: "USER FILE",
        summary: "send USER a file straight over UDP (they accept; checked with SHA-256)",
    },
    CommandSpec {
        name: "/acceptfile",
        aliases: &[],
        args: "USER",
        summary: "accept the file USER offers (resumes a part you already have)",
    },
    CommandSpec {
        name: "/declinefile",
        aliases: &[],
        args: "USER",
        summary: "decline the file USER offers",
    },
    CommandSpec {
        name: "/cancel",
        aliases: &[],
        args: "USER",
        summary: "stop every file transfer with USER, either way; they are told",
    },
    CommandSpec {
        name: "/query",
        aliases: &[],
        args: "[USER-or-GROUP]",
        summary: "talk to USER (#GROUP, =USER for a private chat); alone: back to commands",
    },
    CommandSpec {
        name: "/search",
        aliases: &["/lastlog"],
        args: "TEXT",
        summary: "the lines of this window's scrollback with TEXT in them (full screen)",
    },
    CommandSpec {
        name: "/close",
        aliases: &[],
        args: "",
        summary: "close the current conversation's window",
    },
    CommandSpec {
        name: "/peers",
        aliases: &[],
        args: "",
        summary: "your open private chats and file transfers: direct or relayed, round trip",
    },
    CommandSpec {
        name: "/help",
        aliases: &["help", "/?"],
        args: "[COMMAND]",
        summary: "list the commands, or explain one",
    },
    CommandSpec {
        name: "/logout",
        aliases: &["/quit", "/exit", "exit", "quit", "logout", "logoff", "bye"],
        args: "",
        summary: "log out and leave",
    },
];

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A command the server carries out.
    Server(Request),
    /// `/help [COMMAND]`, answered by the client itself.
    Help {
        /// The command asked about.
        topic: Option<String>,
    },
    /// `/private USER TEXT`: sent over the direct connection, not to the server.
    Private {
        /// The peer.
        to: String,
        /// Message text.
        text: String,
    },
    /// `/stopprivate USER`: ends the direct connection, not a server request.
    StopPrivate {
        /// The peer.
        user: String,
    },
    /// `/verify USER [confirm]`: shows the safety code of the private chat with `user`;
    /// with `confirm`, pins the peer's key as verified.
    Verify {
        /// The peer.
        user: String,
        /// The user compared the codes and they match.
        confirm: bool,
    },
    /// A file-transfer command (see [`crate::client::files`]).
    File(FileCommand),
    /// `/peers`: the open direct links, answered by the client itself.
    Peers,
}

/// The file-transfer commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCommand {
    /// `/p2pvideo USER FILE`.
    Send {
        /// The receiver.
        to: String,
        /// The file's path, as typed.
        path: String,
    },
    /// `/acceptfile USER`.
    Accept {
        /// The sender.
        from: String,
    },
    /// `/declinefile USER`.
    Decline {
        /// The sender.
        from: String,
    },
    /// `/cancel USER`.
    Cancel {
        /// The other side.
        user: String,
    },
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("type a command; /help lists them")]
    Empty,
    /// The first word is no command.
    #[error("unknown command '{0}'; /help lists the commands")]
    Unknown(String),
    /// Wrong arguments for a known command.
    #[error("usage: {0}")]
    Usage(String),
}

/// A conversation: where text typed without a leading `/` goes (a window in the full-screen
/// client; in line mode, what `/query` chose).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Direct messages with a user, relayed by the server.
    User(String),
    /// A group's messages.
    Group(String),
    /// A private chat over the direct connection.
    Private(String),
}

impl Target {
    /// Reads a conversation's name: `#NAME` is a group, `=NAME` a private chat, else a user.
    pub fn named(name: &str) -> Target {
        if let Some(group) = name.strip_prefix('#') {
            Target::Group(group.to_owned())
        } else if let Some(peer) = name.strip_prefix('=') {
            Target::Private(peer.to_owned())
        } else {
            Target::User(name.to_owned())
        }
    }

    /// The command that sends `text` to this conversation.
    pub fn say(&self, text: &str) -> Command {
        let text = text.to_owned();
        match self {
            Target::User(to) => {
                Command::Server(Request::Msg { to: to.clone(), text, send_id: None })
            }
            Target::Group(group) => {
                Command::Server(Request::GroupMsg { group: group.clone(), text, send_id: None })
            }
            Target::Private(to) => Command::Private { to: to.clone(), text },
        }
    }

    /// The name as [`Target::named`] reads it: `bob`, `#devs`, `=bob`.
    pub fn label(&self) -> String {
        match self {
            Target::User(user) => user.clone(),
            Target::Group(group) => format!("#{group}"),
            Target::Private(peer) => format!("={peer}"),
        }
    }
}

/// What a typed line asks for, once the conversation it was typed in is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// A command for the session (or `/help`), a message to the conversation included.
    Command(Command),
    /// `/query [NAME]`, or `/msg USER` without text: talk to this conversation from now on
    /// (`None`: to none, bare words are commands again).
    Query(Option<Target>),
    /// `/close`: close the current conversation.
    Close,
    /// `/search TEXT`: the lines of the current window with TEXT in them.
    Search(String),
}

/// Parses a line typed while talking to `target`: text without a leading `/` goes to it
/// (`//` sends a text that starts with `/`); with no target, bare words are commands, as
/// the course specs have them.
///
/// ```
/// use confab::client::command::{parse_in, Command, Target, Typed};
/// use confab::protocol::Request;
///
/// let bob = Target::User("bob".into());
/// let hello = Request::Msg { to: "bob".into(), text: "bye for now".into(), send_id: None };
/// assert_eq!(parse_in("bye for now", Some(&bob)), Ok(Typed::Command(Command::Server(hello))));
/// assert_eq!(parse_in("bye", None), Ok(Typed::Command(Command::Server(Request::Logout))));
/// assert_eq!(parse_in("/msg bob", None), Ok(Typed::Query(Some(bob))));
/// ```
pub fn parse_in(line: &str, target: Option<&Target>) -> Result<Typed, ParseError> {
    if let Some(target) = target {
        if let Some(text) = line.strip_prefix("//") {
            return Ok(Typed::Command(target.say(&format!("/{text}"))));
        }
        if !line.starts_with('/') {
            if line.trim().is_empty() {
                return Err(ParseError::Empty);
            }
            return Ok(Typed::Command(target.say(line)));
        }
    }
    let (word, rest) = split_word(line.trim());
    let (first, tail) = split_word(rest);
    match lookup(word).map(|spec| spec.name) {
        Some("/query") if tail.is_empty() => {
            Ok(Typed::Query((!first.is_empty()).then(|| Target::named(first))))
        }
        Some("/close") if rest.is_empty() => Ok(Typed::Close),
        Some("/search") if !rest.is_empty() => Ok(Typed::Search(rest.to_owned())),
        Some(name @ ("/query" | "/close" | "/search")) => {
            Err(ParseError::Usage(usage(lookup(name).expect("in the table"))))
        }
        Some("/msg") if !first.is_empty() && tail.is_empty() => {
            Ok(Typed::Query(Some(Target::User(first.to_owned()))))
        }
        _ => parse(line).map(Typed::Command),
    }
}

/// Finds the command named `word` (with or without `/`, any case).
pub fn lookup(word: &str) -> Option<&'static CommandSpec> {
    let key = word.trim_start_matches('/').to_ascii_lowercase();
    COMMANDS.iter().find(|spec| {
        std::iter::once(spec.name)
            .chain(spec.aliases.iter().copied())
            .any(|name| name.trim_start_matches('/') == key)
    })
}

/// Parses one line.
///
/// ```
/// use confab::client::command::{parse, Command};
/// use confab::protocol::Request;
///
/// assert_eq!(
///     parse("message bob see you at 5"),
///     Ok(Command::Server(Request::Msg { to: "bob".into(), text: "see you at 5".into(), send_id: None }))
/// );
/// assert_eq!(parse("WHOELSE"), Ok(Command::Server(Request::List)));
/// assert!(parse("/msg bob").is_err());
/// ```
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let line = line.trim();
    let (word, rest) = split_word(line);
    if word.is_empty() {
        return Err(ParseError::Empty);
    }
    let spec = lookup(word).ok_or_else(|| ParseError::Unknown(word.to_owned()))?;
    let usage = || ParseError::Usage(usage(spec));
    let (first, tail) = split_word(rest);
    let request = match spec.name {
        "/msg" if !first.is_empty() && !tail.is_empty() => {
            Request::Msg { to: first.to_owned(), text: tail.to_owned(), send_id: None }
        }
        "/broadcast" if !rest.is_empty() => Request::Broadcast { text: rest.to_owned() },
        "/list" if rest.is_empty() => Request::List,
        "/away" => Request::Away { message: (!rest.is_empty()).then(|| rest.to_owned()) },
        "/whoelsesince" if tail.is_empty() => {
            Request::WhoElseSince { secs: first.parse().map_err(|_| usage())? }
        }
        "/block" if !first.is_empty() && tail.is_empty() => {
            Request::Block { user: first.to_owned() }
        }
        "/unblock" if !first.is_empty() && tail.is_empty() => {
            Request::Unblock { user: first.to_owned() }
        }
        "/creategroup" if !first.is_empty() && !tail.is_empty() => Request::CreateGroup {
            name: first.to_owned(),
            invite: tail.split([' ', ',']).filter(|w| !w.is_empty()).map(str::to_owned).collect(),
        },
        "/joingroup" if !first.is_empty() && tail.is_empty() => {
            Request::JoinGroup { group: first.to_owned() }
        }
        "/groupmsg" if !first.is_empty() && !tail.is_empty() => {
            Request::GroupMsg { group: first.to_owned(), text: tail.to_owned(), send_id: None }
        }
        "/leavegroup" if !first.is_empty() && tail.is_empty() => {
            Request::LeaveGroup { group: first.to_owned() }
        }
        "/groups" if rest.is_empty() => Request::Groups,
        "/history" if !first.is_empty() => {
            let limit = match tail {
                "" => None,
                n => Some(n.parse().ok().filter(|&n| n > 0).ok_or_else(usage)?),
            };
            Request::History { with: first.to_owned(), limit }
        }
        "/help" if tail.is_empty() => {
            return Ok(Command::Help { topic: (!first.is_empty()).then(|| first.to_owned()) });
        }
        "/logout" if rest.is_empty() => Request::Logout,
        "/startprivate" if !first.is_empty() && tail.is_empty() => {
            Request::StartPrivate { user: first.to_owned() }
        }
        "/accept" if !first.is_empty() && tail.is_empty() => {
            Request::AcceptPrivate { user: first.to_owned() }
        }
        "/decline" if !first.is_empty() && tail.is_empty() => {
            Request::DeclinePrivate { user: first.to_owned() }
        }
        "/private" if !first.is_empty() && !tail.is_empty() => {
            return Ok(Command::Private { to: first.to_owned(), text: tail.to_owned() });
        }
        "/stopprivate" if !first.is_empty() && tail.is_empty() => {
            return Ok(Command::StopPrivate { user: first.to_owned() });
        }
        "/peers" if rest.is_empty() => return Ok(Command::Peers),
        "/verify" if !first.is_empty() && (tail.is_empty() || tail == "confirm") => {
            return Ok(Command::Verify { user: first.to_owned(), confirm: !tail.is_empty() });
        }
        "/p2pvideo" if !first.is_empty() && !tail.is_empty() => {
            return Ok(Command::File(FileCommand::Send {
                to: first.to_owned(),
                path: tail.to_owned(),
            }));
        }
        "/acceptfile" if !first.is_empty() && tail.is_empty() => {
            return Ok(Command::File(FileCommand::Accept { from: first.to_owned() }));
        }
        "/declinefile" if !first.is_empty() && tail.is_empty() => {
            return Ok(Command::File(FileCommand::Decline { from: first.to_owned() }));
        }
        "/cancel" if !first.is_empty() && tail.is_empty() => {
            return Ok(Command::File(FileCommand::Cancel { user: first.to_owned() }));
        }
        _ => return Err(usage()),
    };
    let command = Command::Server(request);
    Ok(command)
}

/// `/name ARGS`, as shown in errors and help.
pub fn usage(spec: &CommandSpec) -> String {
    if spec.args.is_empty() {
        spec.name.to_owned()
    } else {
        format!("{} {}", spec.name, spec.args)
    }
}

/// The commands by topic, for the short `/help`; every command is in one topic.
pub const HELP_TOPICS: &[(&str, &[&str])] = &[
    ("talk", &["/query", "/close", "/msg", "/broadcast", "/history", "/search"]),
    ("people", &["/list", "/whoelsesince", "/block", "/unblock", "/away"]),
    ("groups", &["/creategroup", "/joingroup", "/groupmsg", "/leavegroup", "/groups"]),
    ("private", &["/startprivate", "/accept", "/decline", "/private", "/stopprivate", "/verify"]),
    ("files", &["/p2pvideo", "/acceptfile", "/declinefile", "/cancel"]),
    ("session", &["/peers", "/help", "/logout"]),
];

/// The `/help` text: the commands by topic (a few lines, to fit a small screen), `all` of
/// them with their arguments, or one in detail.
pub fn help(topic: Option<&str>) -> Result<Vec<String>, ParseError> {
    let Some(topic) = topic else {
        let mut lines =
            vec!["commands (/help COMMAND explains one, /help all lists all):".to_owned()];
        lines.extend(
            HELP_TOPICS.iter().map(|(topic, names)| format!("  {topic:8} {}", names.join(" "))),
        );
        return Ok(lines);
    };
    if topic == "all" {
        let width = COMMANDS.iter().map(|s| usage(s).len()).max().unwrap_or(0);
        let mut lines = vec!["commands:".to_owned()];
        lines.extend(COMMANDS.iter().map(|s| format!("  {:width$}  {}", usage(s), s.summary)));
        lines.push("/help COMMAND shows a command's aliases".to_owned());
        return Ok(lines);
    }
    let spec = lookup(topic).ok_or_else(|| ParseError::Unknown(topic.to_owned()))?;
    let aliases = if spec.aliases.is_empty() { "none".to_owned() } else { spec.aliases.join(", ") };
    Ok(vec![format!("{}: {}", usage(spec), spec.summary), format!("aliases: {aliases}")])
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str, text: &str) -> Command {
        Command::Server(Request::Msg { to: to.into(), text: text.into(), send_id: None })
    }

    fn server(request: Request) -> Result<Command, ParseError> {
        Ok(Command::Server(request))
    }

    #[test]
    fn every_alias_of_every_command_is_recognised() {
        for spec in COMMANDS {
            for name in std::iter::once(&spec.name).chain(spec.aliases) {
                assert_eq!(lookup(name), Some(spec), "{name}");
                assert_eq!(lookup(&name.to_uppercase()), Some(spec), "{name} in capitals");
            }
        }
    }

    #[test]
    fn file_commands() {
        let send = |to: &str, path: &str| {
            Ok(Command::File(FileCommand::Send { to: to.into(), path: path.into() }))
        };
        assert_eq!(parse("/p2pvideo bob clip.mp4"), send("bob", "clip.mp4"));
        assert_eq!(parse("/sendfile bob my clip.mp4"), send("bob", "my clip.mp4"));
        assert!(parse("/p2pvideo bob").is_err());
        let accept = Command::File(FileCommand::Accept { from: "alice".into() });
        assert_eq!(parse("/acceptfile alice"), Ok(accept));
        let decline = Command::File(FileCommand::Decline { from: "alice".into() });
        assert_eq!(parse("/declinefile alice"), Ok(decline));
        let cancel = Command::File(FileCommand::Cancel { user: "alice".into() });
        assert_eq!(parse("/cancel alice"), Ok(cancel));
        assert!(parse("/cancel").is_err());
    }

    #[test]
    fn message_aliases_parse_alike() {
        for line in [
            "/msg bob hi there",
            "/msgto bob hi there",
            "message bob  hi there",
            "msg bob hi there",
        ] {
            assert_eq!(parse(line), Ok(msg("bob", "hi there")), "{line}");
        }
    }

    #[test]
    fn text_keeps_inner_spacing() {
        assert_eq!(parse("/msg bob a  b"), Ok(msg("bob", "a  b")));
        assert_eq!(
            parse("broadcast  hello   all "),
            server(Request::Broadcast { text: "hello   all".into() })
        );
    }

    #[test]
    fn list_and_logout_aliases() {
        for line in ["/list", "/activeuser", "/whoelse", "whoelse"] {
            assert_eq!(parse(line), server(Request::List), "{line}");
        }
        for line in ["/logout", "/quit", "/exit", "exit", "quit", "logout", "logoff", "bye"] {
            assert_eq!(parse(line), server(Request::Logout), "{line}");
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(parse("/whoelsesince 200"), server(Request::WhoElseSince { secs: 200 }));
        assert_eq!(parse("whoelsesince 200"), server(Request::WhoElseSince { secs: 200 }));
        assert_eq!(parse("/block eve"), server(Request::Block { user: "eve".into() }));
        assert_eq!(parse("unblock eve"), server(Request::Unblock { user: "eve".into() }));
        let away = |m: Option<&str>| server(Request::Away { message: m.map(str::to_owned) });
        assert_eq!(parse("/away at lunch"), away(Some("at lunch")));
        assert_eq!(parse("/away"), away(None));
        for bad in [
            "/msg bob",
            "/msg",
            "/broadcast",
            "/whoelsesince",
            "/whoelsesince -1",
            "/whoelsesince soon",
            "/block",
            "/block a b",
            "/list now",
            "/logout now",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Usage(_))), "{bad}");
        }
        assert_eq!(parse("/msg bob").unwrap_err().to_string(), "usage: /msg USER TEXT");
    }

    #[test]
    fn group_commands_parse() {
        assert_eq!(
            parse("/creategroup devs bob carol"),
            server(Request::CreateGroup {
                name: "devs".into(),
                invite: vec!["bob".into(), "carol".into()]
            })
        );
        assert_eq!(
            parse("creategroup devs bob, carol"),
            server(Request::CreateGroup {
                name: "devs".into(),
                invite: vec!["bob".into(), "carol".into()]
            })
        );
        assert_eq!(parse("/joingroup devs"), server(Request::JoinGroup { group: "devs".into() }));
        assert_eq!(
            parse("/groupmsg devs standup  at 10"),
            server(Request::GroupMsg {
                group: "devs".into(),
                text: "standup  at 10".into(),
                send_id: None
            })
        );
        assert_eq!(parse("/leavegroup devs"), server(Request::LeaveGroup { group: "devs".into() }));
        assert_eq!(parse("/groups"), server(Request::Groups));
        assert_eq!(
            parse("/history bob"),
            server(Request::History { with: "bob".into(), limit: None })
        );
        assert_eq!(
            parse("/history devs 5"),
            server(Request::History { with: "devs".into(), limit: Some(5) })
        );
        for bad in [
            "/creategroup devs",
            "/creategroup",
            "/joingroup",
            "/joingroup a b",
            "/groupmsg devs",
            "/leavegroup",
            "/groups x",
            "/history",
            "/history bob 0",
            "/history bob -3",
            "/history bob many",
            "/history bob 5 6",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn private_chat_commands_and_their_aliases() {
        for line in ["/startprivate bob", "startprivate bob", "STARTPRIVATE bob"] {
            assert_eq!(parse(line), server(Request::StartPrivate { user: "bob".into() }), "{line}");
        }
        assert_eq!(parse("/accept alice"), server(Request::AcceptPrivate { user: "alice".into() }));
        assert_eq!(
            parse("decline alice"),
            server(Request::DeclinePrivate { user: "alice".into() })
        );
        for line in ["/private bob psst  there", "private bob psst  there"] {
            let expected = Command::Private { to: "bob".into(), text: "psst  there".into() };
            assert_eq!(parse(line), Ok(expected), "{line}");
        }
        assert_eq!(
            parse("/verify bob"),
            Ok(Command::Verify { user: "bob".into(), confirm: false })
        );
        assert_eq!(
            parse("/verify bob confirm"),
            Ok(Command::Verify { user: "bob".into(), confirm: true })
        );
        for line in ["/stopprivate bob", "stopprivate bob"] {
            assert_eq!(parse(line), Ok(Command::StopPrivate { user: "bob".into() }), "{line}");
        }
        for bad in [
            "/startprivate",
            "/startprivate a b",
            "/accept",
            "/decline a b",
            "/private bob",
            "/stopprivate",
            "/verify",
            "/verify bob yes",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Usage(_))), "{bad}");
        }
        assert_eq!(help(Some("accept")).unwrap()[1], "aliases: none");
    }

    #[test]
    fn unknown_and_empty_lines_are_errors() {
        assert_eq!(parse("   "), Err(ParseError::Empty));
        assert_eq!(parse("/dance now"), Err(ParseError::Unknown("/dance".into())));
        assert_eq!(parse("hello bob"), Err(ParseError::Unknown("hello".into())));
    }

    #[test]
    fn the_short_help_names_every_command_once_and_fits_a_small_screen() {
        let short = help(None).unwrap();
        assert!(short.len() <= 10, "{short:#?}");
        assert!(short.iter().all(|l| l.chars().count() <= 78), "{short:#?}");
        for spec in COMMANDS {
            let topics = HELP_TOPICS.iter().filter(|(_, names)| names.contains(&spec.name));
            assert_eq!(topics.count(), 1, "{}", spec.name);
        }
        let named: usize = HELP_TOPICS.iter().map(|(_, names)| names.len()).sum();
        assert_eq!(named, COMMANDS.len());
    }

    #[test]
    fn help_lists_every_command_and_explains_one() {
        let all = help(Some("all")).unwrap().join("\n");
        for spec in COMMANDS {
            assert!(all.contains(&usage(spec)), "{}", spec.name);
        }
        let one = help(Some("whoelse")).unwrap().join("\n");
        assert!(one.starts_with("/list: "), "{one}");
        assert!(one.contains("/activeuser"));
        assert!(help(Some("nope")).is_err());
        assert_eq!(parse("/help msg"), Ok(Command::Help { topic: Some("msg".into()) }));
    }
}
