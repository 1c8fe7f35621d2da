//! The full-screen client's state and everything that changes it. No I/O, no clock.
//!
//! [`App::handle`] takes one [`UiEvent`] (a key, a session event, a tick) and returns the
//! [`Action`]s the driver must carry out (run a command, quit).
//! [`render`](super::render::render) only reads the state. The rules of the session (what a
//! logout ends, reconnecting, keep-alives) are not here but in [`crate::client::session`]:
//! the app shows what the session reports.
//!
//! Conversations live in [`Window`]s, as in irssi: window 1 is the server's (presence,
//! notices, broadcasts, and bare command words as the course specs have them); each direct
//! partner, group and private chat gets its own window, opened by `/query` or by the first
//! message, with its own scrollback. Text typed without a `/` goes to the current window's
//! conversation. A window that is not in view collects [`Activity`], shown in the status
//! bar. Command output and errors go to the window in view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::complete::{complete, complete_name, DirEntry};
use super::input::{Edit, LineEditor};
use crate::client::command::{self, Command, FileCommand, Target, Typed};
use crate::client::format;
pub use crate::client::session::Connection;
use crate::client::session::{Finish, SessionEvent};
use crate::p2p::identity::PeerTrust;
use crate::p2p::transfer::{Transfer, TransferEvent, TransferId};
use crate::p2p::PrivateEvent;
use crate::protocol::{Delivery, Event, OnlineUser, PresenceChange, Reply, Request, Timestamp};

/// The most entries kept in the scrollback.
pub const SCROLLBACK: usize = 10_000;

/// Everything the UI reacts to.
#[derive(Debug, Clone)]
pub enum UiEvent {
    /// A key press.
    Key(KeyEvent),
    /// Text pasted into the terminal.
    Paste(String),
    /// The terminal has a new size.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Something from the session.
    Session(SessionEvent),
    /// A second went by.
    Tick(Timestamp),
}

/// What the driver must do for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hand this command to the session; what comes of it arrives as session events.
    Run(Command),
    /// Log out and leave (the session says when it has finished).
    Quit,
}

/// One entry of the scrollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it was sent, for messages.
    pub at: Option<Timestamp>,
    /// What it is.
    pub kind: Kind,
    /// The message or notice text, as sent (the renderer neutralises control characters).
    pub text: String,
}

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A direct message to you; `offline` if it was stored while you were away.
    Message {
        /// Sender.
        from: String,
        /// Stored while you were away.
        offline: bool,
    },
    /// A direct message you sent.
    Sent {
        /// Recipient.
        to: String,
    },
    /// A message you typed that waits for the server (disconnected).
    Pending {
        /// The send id it will go with.
        send_id: u64,
        /// The recipient, or `[GROUP]`.
        to: String,
    },
    /// A broadcast (yours included).
    Broadcast {
        /// Sender.
        from: String,
    },
    /// A private message over a direct connection, stamped with our clock.
    Private {
        /// The other side.
        peer: String,
        /// True for a message you sent.
        outgoing: bool,
        /// For a received one, when the peer says it was sent (shown if far off).
        sent_at: Option<Timestamp>,
    },
    /// A group message (yours included).
    Group {
        /// The group.
        group: String,
        /// Sender.
        from: String,
        /// Stored while you were away.
        offline: bool,
    },
    /// Presence, invitations, command output.
    Notice,
    /// Something went wrong.
    Error,
}

/// How much happened in a window since it was last in view; ordered, the most last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Activity {
    /// Nothing new.
    #[default]
    None,
    /// Notices only.
    Text,
    /// Messages.
    Message,
    /// A message that mentions your name.
    Mention,
}

/// One conversation's window (or the server's) with its own scrollback.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The conversation; `None` for the server window.
    pub target: Option<Target>,
    /// The scrollback, oldest first.
    pub entries: VecDeque<Entry>,
    /// Rows scrolled back from the newest; 0 follows new messages.
    pub scroll: usize,
    /// Messages that arrived while scrolled back.
    pub unread: usize,
    /// What arrived while the window was not in view.
    pub activity: Activity,
}

impl Window {
    /// The window's name in the status bar: `server`, `bob`, `#devs`, `=bob`.
    pub fn label(&self) -> String {
        self.target.as_ref().map_or_else(|| "server".to_owned(), Target::label)
    }
}

/// A file transfer under way, as the status bar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Which transfer.
    pub transfer: Transfer,
    /// Bytes done (a resumed transfer starts at what it had).
    pub done: u64,
    /// Where it started: bytes already there, and when.
    pub from: (u64, Timestamp),
}

impl Progress {
    /// Bytes a second since it started, once there is a measure.
    pub fn rate(&self, now: Timestamp) -> Option<u64> {
        let ms = u64::try_from(now.saturating_sub(self.from.1)).ok().filter(|&ms| ms > 0)?;
        Some(self.done.saturating_sub(self.from.0).saturating_mul(1000) / ms)
    }
}

/// The full-screen client's state.
pub struct App {
    /// Server address, for the status bar.
    pub server: String,
    /// Your username.
    pub me: String,
    /// The server connection, as the session reports it.
    pub connection: Connection,
    /// How the session finished, once it has.
    pub finished: Option<Finish>,
    /// The windows; the first is the server's and is never closed.
    pub windows: Vec<Window>,
    /// The index of the window in view.
    pub current: usize,
    /// Who is online, with their online-since time.
    pub online: BTreeMap<String, Timestamp>,
    /// Groups you are in or invited to, for completion.
    pub groups: BTreeSet<String>,
    /// Open private chats, by peer.
    pub private: BTreeSet<String>,
    /// Users asking you for a private chat, oldest first.
    pub asking: Vec<String>,
    /// File offers waiting for your answer, oldest first.
    pub offers: Vec<Transfer>,
    /// File transfers under way, with the bytes done, by id.
    pub transfers: BTreeMap<TransferId, Progress>,
    /// The input line.
    pub input: LineEditor,
    /// Completion candidates to show above the input line.
    pub hint: Option<String>,
    /// Terminal size.
    pub size: (u16, u16),
    /// The latest tick's time.
    pub now: Timestamp,
    users: BTreeSet<String>,
    /// When users seen leaving in this session left, for `/whoelsesince`.
    left_at: BTreeMap<String, Timestamp>,
    /// Chat-log lines not yet written: the conversation's label and the line.
    logs: Vec<(String, String)>,
    /// Requests the app made itself (to keep the status bar and completion current),
    /// oldest first: their replies are learned from, not shown.
    quiet: VecDeque<Request>,
    quitting: bool,
    list_dir: fn(&str) -> Vec<DirEntry>,
}

impl App {
    /// The state after logging in as `me` on `server`, with the users online at that moment.
    pub fn new(server: &str, me: &str, online: Vec<OnlineUser>, size: (u16, u16)) -> Self {
        let mut app = Self {
            server: server.to_owned(),
            me: me.to_owned(),
            connection: Connection::Connected,
            finished: None,
            windows: vec![Window::default()],
            current: 0,
            online: BTreeMap::new(),
            groups: BTreeSet::new(),
            private: BTreeSet::new(),
            asking: Vec::new(),
            offers: Vec::new(),
            transfers: BTreeMap::new(),
            input: LineEditor::default(),
            hint: None,
            size,
            now: 0,
            users: BTreeSet::new(),
            left_at: BTreeMap::new(),
            quiet: VecDeque::new(),
            logs: Vec::new(),
            quitting: false,
            list_dir: read_dir,
        };
        app.set_online(online);
        app
    }

    /// Uses `list` instead of the file system for path completion (tests).
    pub fn with_dir_listing(mut self, list: fn(&str) -> Vec<DirEntry>) -> Self {
        self.list_dir = list;
        self
    }

    /// What the driver must do once the session has started: learn the groups (for
    /// completion) without a word on screen.
    pub fn start(&mut self) -> Vec<Action> {
        self.ask_quietly(vec![Request::Groups])
    }

    fn ask_quietly(&mut self, requests: Vec<Request>) -> Vec<Action> {
        self.quiet.extend(requests.iter().cloned());
        requests.into_iter().map(|r| Action::Run(Command::Server(r))).collect()
    }

    /// The chat-log lines since the last call, for the driver to write: each message with
    /// the label of its conversation (`bob`, `#devs`, `=bob`; `server` for broadcasts).
    pub fn take_logs(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.logs)
    }

    /// Whether the app has asked to quit.
    pub fn quitting(&self) -> bool {
        self.quitting
    }

    /// Whether the session has finished: time to leave.
    pub fn done(&self) -> bool {
        self.finished.is_some()
    }

    /// Adds a notice line to the server window.
    pub fn notice(&mut self, text: impl Into<String>) {
        self.push(0, Entry { at: None, kind: Kind::Notice, text: text.into() });
    }

    /// The window in view.
    pub fn window(&self) -> &Window {
        &self.windows[self.current]
    }

    /// The index of `target`'s window, if it is open.
    pub fn window_of(&self, target: &Target) -> Option<usize> {
        self.windows.iter().position(|w| w.target.as_ref() == Some(target))
    }

    /// Applies one event and returns what the driver must do.
    pub fn handle(&mut self, event: UiEvent) -> Vec<Action> {
        match event {
            UiEvent::Key(key) => return self.key(key),
            UiEvent::Paste(text) => self.input.paste(&text),
            UiEvent::Resize { width, height } => self.size = (width, height),
            UiEvent::Session(event) => return self.session_event(event),
            UiEvent::Tick(now) => self.now = now,
        }
        Vec::new()
    }

    fn session_event(&mut self, event: SessionEvent) -> Vec<Action> {
        match event {
            SessionEvent::Server(event) => self.server_event(event),
            SessionEvent::Replied { request, result } => return self.replied(request, result),
            SessionEvent::Pending { request } => self.pending(&request),
            SessionEvent::Private(event) => self.private_event(event),
            SessionEvent::PrivateSent { to, text, result } => match result {
                Ok(()) => {
                    let kind = Kind::Private { peer: to.clone(), outgoing: true, sent_at: None };
                    self.own(Some(Target::Private(to)), self.now, kind, text);
                }
                Err(e) => self.error(e),
            },
            SessionEvent::PrivateStopped { user, result } => match result {
                Ok(()) => {
                    self.private.remove(&user);
                    self.notice_about(
                        &Target::Private(user.clone()),
                        format::private_stopped(&user),
                    );
                }
                Err(e) => self.error(e),
            },
            SessionEvent::Transfer(event) => self.transfer_event(event),
            SessionEvent::FileDone(Ok(line)) | SessionEvent::Notice(line) => self.output(line),
            SessionEvent::FileDone(Err(e)) | SessionEvent::Error(e) => self.error(e),
            SessionEvent::Connection(state) => return self.connection_changed(state),
            SessionEvent::CaughtUp { arrived, reconnected: true } => {
                self.notice(format::caught_up(arrived));
            }
            // The login notice said how many were waiting; they are in their windows now.
            SessionEvent::CaughtUp { reconnected: false, .. } => {}
            SessionEvent::Finished(finish) => self.finished = Some(finish),
        }
        Vec::new()
    }

    fn connection_changed(&mut self, state: Connection) -> Vec<Action> {
        let mut actions = Vec::new();
        if state != Connection::Connected {
            // The server forgets requests with the session, and who is online is unknown.
            self.asking.clear();
            self.online.clear();
            // Their replies will not come.
            self.quiet.clear();
        } else if self.connection != Connection::Connected {
            // Logged in again: who is online now, and the groups, as at the first login.
            actions = self.ask_quietly(vec![Request::List, Request::Groups]);
        }
        match &state {
            Connection::Connected => {}
            Connection::Reconnecting { .. } => {
                self.notice(format::connection(&state).unwrap_or_default());
            }
            Connection::Ended(why) | Connection::Lost(why) => {
                let line = format!("{}; Ctrl-C leaves", why);
                if self.current != 0 {
                    self.push(0, Entry { at: None, kind: Kind::Error, text: line.clone() });
                }
                self.error(line);
            }
        }
        self.connection = state;
        actions
    }

    fn pending(&mut self, request: &Request) {
        let (send_id, to, target, text) = match request {
            Request::Msg { to, text, send_id: Some(id) } => {
                (*id, to.clone(), Target::User(to.clone()), text)
            }
            Request::GroupMsg { group, text, send_id: Some(id) } => {
                (*id, format!("[{group}]"), Target::Group(group.clone()), text)
            }
            _ => return,
        };
        if self.is_pending(send_id) {
            return;
        }
        self.own(Some(target), self.now, Kind::Pending { send_id, to }, text.clone());
    }

    fn is_pending(&self, id: u64) -> bool {
        self.windows.iter().flat_map(|w| &w.entries).any(|e| is_pending(e, id))
    }

    /// Usernames known to this session (online now, or seen in messages), sorted.
    pub fn known_users(&self) -> Vec<String> {
        self.users.iter().filter(|u| **u != self.me).cloned().collect()
    }

    /// Rows of the message pane: the screen less the input line, the status bar, and the
    /// hint and private-chat prompt lines when they are shown.
    pub fn pane_height(&self) -> usize {
        let extra = usize::from(self.hint.is_some()) + usize::from(self.asking_line().is_some());
        usize::from(self.size.1).saturating_sub(2 + extra).max(1)
    }

    /// The prompt line for pending private-chat requests and file offers, if any.
    pub fn asking_line(&self) -> Option<String> {
        let chats = self.asking.iter().map(|from| {
            let from = format::sanitize(from);
            format!("{from} asks for a private chat: /accept {from} or /decline {from}")
        });
        let files = self.offers.iter().map(|t| {
            let (from, name) = (format::sanitize(&t.peer), format::sanitize(&t.name));
            let size = format::bytes(t.size);
            format!("{from} offers {name} ({size}): /acceptfile {from} or /declinefile {from}")
        });
        let asks: Vec<String> = chats.chain(files).collect();
        (!asks.is_empty()).then(|| asks.join(" | "))
    }

    fn transfer_event(&mut self, event: TransferEvent) {
        match &event {
            // Accepted by itself: nothing to ask.
            TransferEvent::Offered { accepting: true, .. } => {}
            TransferEvent::Offered { transfer, .. } => self.offers.push(transfer.clone()),
            TransferEvent::Started { transfer, resume_from, .. } => {
                self.offers.retain(|t| t.id != transfer.id);
                let progress = Progress {
                    transfer: transfer.clone(),
                    done: *resume_from,
                    from: (*resume_from, self.now),
                };
                self.transfers.insert(transfer.id, progress);
            }
            TransferEvent::Progress { id, done, .. } => {
                if let Some(progress) = self.transfers.get_mut(id) {
                    progress.done = *done;
                }
            }
            TransferEvent::Sent { transfer, .. }
            | TransferEvent::Received { transfer, .. }
            | TransferEvent::Failed { transfer, .. } => {
                self.offers.retain(|t| t.id != transfer.id);
                let ended = self.transfers.remove(&transfer.id);
                if let (Some(line), false) =
                    (format::transfer(&event), matches!(event, TransferEvent::Failed { .. }))
                {
                    // The summary: how long it took, and how fast.
                    let summary = ended.map(|p| {
                        let ms = u64::try_from(self.now.saturating_sub(p.from.1)).unwrap_or(0);
                        let bytes = transfer.size.saturating_sub(p.from.0);
                        format::took(bytes, ms)
                    });
                    self.notice(match summary {
                        Some(summary) => format!("{line}; {summary}"),
                        None => line,
                    });
                    return;
                }
            }
            TransferEvent::Waiting { .. } | TransferEvent::Rerouted { .. } => {}
        }
        match (&event, format::transfer(&event)) {
            (TransferEvent::Failed { .. }, Some(line)) => {
                self.push(0, Entry { at: None, kind: Kind::Error, text: line })
            }
            (_, Some(line)) => self.notice(line),
            (_, None) => {}
        }
    }

    /// The status-bar gauge of each transfer: arrow, name, percentage, bytes, rate and time
    /// left (once there is a rate).
    pub fn transfer_gauges(&self) -> Vec<String> {
        self.transfers
            .values()
            .map(|p| {
                let t = &p.transfer;
                let percent = (p.done * 100).checked_div(t.size).unwrap_or(100);
                let mut gauge = format!(
                    "{}{} {percent}% {}/{}",
                    t.direction.arrow(),
                    format::sanitize(&t.name),
                    format::bytes(p.done),
                    format::bytes(t.size)
                );
                if let Some(rate) = p.rate(self.now).filter(|&r| r > 0) {
                    let left = t.size.saturating_sub(p.done).div_ceil(rate);
                    gauge.push_str(&format!(" {}/s {left} s left", format::bytes(rate)));
                }
                gauge
            })
            .collect()
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if key.code != KeyCode::Tab {
            self.hint = None;
        }
        match key.code {
            KeyCode::Char('c') if ctrl => return self.quit(),
            KeyCode::Char('d') if ctrl && self.input.is_empty() => return self.quit(),
            KeyCode::Char('n') if ctrl => self.switch_to((self.current + 1) % self.windows.len()),
            KeyCode::Char('p') if ctrl => {
                let n = self.windows.len();
                self.switch_to((self.current + n - 1) % n)
            }
            KeyCode::Char(digit @ '0'..='9') if alt => {
                // Alt-1 is the first window, Alt-0 the tenth, as in irssi.
                let n = digit.to_digit(10).unwrap_or(0) as usize;
                self.switch_to(if n == 0 { 9 } else { n - 1 });
            }
            KeyCode::Char('a') if alt => self.switch_to_active(),
            // Search this window for what is typed (the line stays, to refine it).
            KeyCode::Char('r') if ctrl && !self.input.is_empty() => {
                let text = self.input.text();
                self.search(text.trim());
            }
            KeyCode::PageUp => self.scroll_by(self.pane_height().saturating_sub(1).max(1) as isize),
            KeyCode::PageDown => {
                self.scroll_by(-(self.pane_height().saturating_sub(1).max(1) as isize))
            }
            KeyCode::Up if key.modifiers.contains(KeyModifiers::SHIFT) => self.scroll_by(1),
            KeyCode::Down if key.modifiers.contains(KeyModifiers::SHIFT) => self.scroll_by(-1),
            KeyCode::End if ctrl => self.scroll_by(isize::MIN),
            KeyCode::Tab => self.complete(),
            KeyCode::Esc => {}
            _ => {
                if let Edit::Submitted(line) = self.input.key(key) {
                    return self.submit(&line);
                }
            }
        }
        Vec::new()
    }

    /// Shows window `index` (if there is one) and clears its activity.
    fn switch_to(&mut self, index: usize) {
        if let Some(window) = self.windows.get_mut(index) {
            window.activity = Activity::None;
            self.current = index;
        }
    }

    /// Shows the window with the most activity (the lowest number among equals), as
    /// irssi's Alt-A does.
    fn switch_to_active(&mut self) {
        let best = self
            .windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w.activity > Activity::Text)
            .max_by_key(|(i, w)| (w.activity, std::cmp::Reverse(*i)));
        if let Some((index, _)) = best {
            self.switch_to(index);
        }
    }

    /// Opens `target`'s window if it is not open; returns its index.
    fn open(&mut self, target: Target) -> usize {
        if let Some(index) = self.window_of(&target) {
            return index;
        }
        if let Target::User(user) | Target::Private(user) = &target {
            self.users.insert(user.clone());
        }
        self.windows.push(Window { target: Some(target), ..Window::default() });
        self.windows.len() - 1
    }

    fn quit(&mut self) -> Vec<Action> {
        self.quitting = true;
        vec![Action::Quit]
    }

    fn submit(&mut self, line: &str) -> Vec<Action> {
        if line.trim().is_empty() {
            return Vec::new();
        }
        self.scroll_by(isize::MIN);
        match command::parse_in(line, self.window().target.as_ref()) {
            Err(e) => self.error(e.to_string()),
            Ok(Typed::Query(None)) => self.switch_to(0),
            Ok(Typed::Query(Some(target))) => {
                let target = match target {
                    // A known group's name needs no '#'.
                    Target::User(name) if self.groups.contains(&name) => Target::Group(name),
                    target => target,
                };
                let index = self.open(target);
                self.switch_to(index);
            }
            Ok(Typed::Search(text)) => self.search(&text),
            Ok(Typed::Close) if self.current == 0 => {
                self.error("the server window stays open; /logout leaves")
            }
            Ok(Typed::Close) => {
                self.windows.remove(self.current);
                self.current = self.current.min(self.windows.len() - 1);
                self.switch_to(self.current);
            }
            Ok(Typed::Command(Command::Help { topic })) => match command::help(topic.as_deref()) {
                Ok(lines) => lines.into_iter().for_each(|l| self.output(l)),
                Err(e) => self.error(e.to_string()),
            },
            Ok(Typed::Command(Command::Server(Request::Logout))) => return self.quit(),
            Ok(Typed::Command(Command::File(file))) => {
                match &file {
                    // The answer is given: the offer's line goes at once.
                    FileCommand::Decline { from } => self.offers.retain(|t| t.peer != *from),
                    // What is shown with USER ends, whatever the engine still had.
                    FileCommand::Cancel { user } => {
                        self.offers.retain(|t| t.peer != *user);
                        self.transfers.retain(|_, p| p.transfer.peer != *user);
                    }
                    FileCommand::Send { .. } | FileCommand::Accept { .. } => {}
                }
                return vec![Action::Run(Command::File(file))];
            }
            Ok(Typed::Command(command)) => return vec![Action::Run(command)],
        }
        Vec::new()
    }

    /// `/search TEXT`: the messages of the window in view with TEXT in them (any case),
    /// newest last, as irssi's `/lastlog` shows them.
    fn search(&mut self, text: &str) {
        let needle = text.to_lowercase();
        let found: Vec<String> = self
            .window()
            .entries
            .iter()
            // Messages only: not notices, nor the output of an earlier search.
            .filter(|e| e.at.is_some() && e.text.to_lowercase().contains(&needle))
            .map(|e| super::render::plain(e, &self.me))
            .collect();
        let what = format::sanitize(text).into_owned();
        self.output(match found.len() {
            0 => format!("search: no line here has '{what}'"),
            1 => format!("search: 1 line has '{what}':"),
            n => format!("search: {n} lines have '{what}':"),
        });
        for line in found {
            self.output(format!("  {line}"));
        }
    }

    fn complete(&mut self) {
        let mut groups: Vec<String> = self.groups.iter().cloned().collect();
        groups.sort();
        let before = self.input.before_cursor();
        let talking = self.window().target.is_some() && !before.starts_with('/');
        let done = match talking {
            // A message: names, not commands.
            true => complete_name(&before, &self.known_users()),
            false => complete(&before, &self.known_users(), &groups, self.list_dir),
        };
        let Some(done) = done else { return };
        self.input.replace_before_cursor(&done.before_cursor);
        self.hint = (!done.candidates.is_empty()).then(|| done.candidates.join("  "));
    }

    fn server_event(&mut self, event: Event) {
        match event {
            Event::Message { from, text, sent_at, offline, .. } => {
                let target = Target::User(from.clone());
                self.chat(Some(target), sent_at, Kind::Message { from, offline }, text);
            }
            Event::Broadcast { from, text, sent_at } => {
                self.users.insert(from.clone());
                self.chat(None, sent_at, Kind::Broadcast { from }, text);
            }
            // The login notice said how many were waiting; they are in their windows now.
            Event::CaughtUp => {}
            Event::Away { ref user, .. } => {
                let line = format::event(&event);
                self.notice_in(&Target::User(user.clone()), line);
            }
            Event::GroupMessage { group, from, text, sent_at, offline, .. } => {
                self.users.insert(from.clone());
                self.groups.insert(group.clone());
                let target = Target::Group(group.clone());
                self.chat(Some(target), sent_at, Kind::Group { group, from, offline }, text);
            }
            Event::Presence { ref user, change, at } => {
                self.users.insert(user.clone());
                if change == PresenceChange::LoggedIn {
                    self.online.insert(user.clone(), at);
                    self.left_at.remove(user);
                } else {
                    self.online.remove(user);
                    self.left_at.insert(user.clone(), at);
                }
                self.notice_about(&Target::User(user.clone()), format::event(&event));
            }
            Event::Invited(ref invitation) => {
                self.groups.insert(invitation.group.clone());
                self.notice(format::event(&event));
            }
            // The session says what comes of it (reconnecting, or the end).
            Event::SessionEnded { .. } => self.notice(format::event(&event)),
            Event::GroupMember { .. } => self.notice(format::event(&event)),
            Event::PrivateRequest { ref from, .. } => {
                self.users.insert(from.clone());
                if !self.asking.contains(from) {
                    self.asking.push(from.clone());
                }
                self.notice(format::event(&event));
            }
            Event::PrivateAccepted(_) => self.notice(format::event(&event)),
            Event::PrivateRequestEnded { ref peer, outgoing, .. } => {
                if !outgoing {
                    self.asking.retain(|p| p != peer);
                }
                self.notice(format::event(&event));
            }
            Event::FileOffer { ref from, .. } => {
                self.users.insert(from.peer.clone());
                self.notice(format::event(&event));
            }
            // The session carries these to their private chat.
            Event::RelayedChat { .. } => {}
        }
    }

    fn private_event(&mut self, event: PrivateEvent) {
        match &event {
            PrivateEvent::Opened { peer, trust, .. } => {
                self.private.insert(peer.clone());
                self.open(Target::Private(peer.clone()));
                let target = Target::Private(peer.clone());
                match trust {
                    PeerTrust::Changed { .. } => self.error_about(&target, format::private(&event)),
                    _ => self.notice_about(&target, format::private(&event)),
                }
            }
            PrivateEvent::Message { peer, text, sent_at, received_at } => {
                let kind =
                    Kind::Private { peer: peer.clone(), outgoing: false, sent_at: Some(*sent_at) };
                self.chat(Some(Target::Private(peer.clone())), *received_at, kind, text.clone());
            }
            PrivateEvent::Refused { .. } => self.notice(format::private(&event)),
            PrivateEvent::Closed { peer, .. } => {
                self.private.remove(peer);
                self.notice_about(&Target::Private(peer.clone()), format::private(&event));
            }
            PrivateEvent::Failed { peer, error } => {
                self.private.remove(peer);
                let line = format!("private chat with {peer}: {error}");
                self.error_about(&Target::Private(peer.clone()), line);
            }
        }
    }

    /// An error about `target`, shown in its window (if open) and in the server window.
    fn error_about(&mut self, target: &Target, line: String) {
        if let Some(index) = self.window_of(target) {
            self.push(index, Entry { at: None, kind: Kind::Error, text: line.clone() });
        }
        self.push(0, Entry { at: None, kind: Kind::Error, text: line });
    }

    fn replied(&mut self, request: Request, result: Result<Reply, String>) -> Vec<Action> {
        if self.quiet.front() == Some(&request) {
            self.quiet.pop_front();
            if let Ok(reply) = &result {
                self.learn(reply);
            }
            return Vec::new();
        }
        if let Request::AcceptPrivate { user } | Request::DeclinePrivate { user } = &request {
            // Answered, or the request is gone: either way there is nothing left to answer.
            self.asking.retain(|p| p != user);
        }
        if let Request::Msg { send_id: Some(id), .. }
        | Request::GroupMsg { send_id: Some(id), .. } = &request
        {
            // Answered now: it no longer waits.
            for window in &mut self.windows {
                window.entries.retain(|e| !is_pending(e, *id));
            }
        }
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                self.error(e);
                return Vec::new();
            }
        };
        let now = self.now;
        match (&request, &reply) {
            (Request::Msg { to, text, .. }, Reply::Sent { delivery, sent_at, .. }) => {
                // The server's time, as the recipient and `/history` show it.
                let (target, kind) = (Target::User(to.clone()), Kind::Sent { to: to.clone() });
                self.own(Some(target.clone()), *sent_at, kind, text.clone());
                if *delivery == Delivery::Stored {
                    self.notice_in(&target, format::reply(&request, &reply).join(" "));
                }
            }
            (Request::Broadcast { text }, Reply::Broadcasted { skipped, .. }) => {
                self.own(None, now, Kind::Broadcast { from: self.me.clone() }, text.clone());
                if *skipped > 0 {
                    self.output(format::reply(&request, &reply).join(" "));
                }
            }
            (
                Request::GroupMsg { group, text, .. },
                Reply::GroupSent { stored, skipped, sent_at, .. },
            ) => {
                let target = Target::Group(group.clone());
                let kind =
                    Kind::Group { group: group.clone(), from: self.me.clone(), offline: false };
                self.own(Some(target.clone()), *sent_at, kind, text.clone());
                if *stored > 0 || *skipped > 0 {
                    self.notice_in(&target, format::reply(&request, &reply).join(" "));
                }
            }
            (_, Reply::LoggedOut) => return self.quit(),
            (_, Reply::Seen(list)) if !list.is_empty() => {
                self.learn(&reply);
                for user in list {
                    let since = match user.online {
                        true => self.online.get(&user.name),
                        false => self.left_at.get(&user.name),
                    };
                    self.output(format::seen(user, since.copied()));
                }
            }
            (Request::Block { user }, Reply::Done) => {
                // A blocker hears no more of USER's presence: USER leaves the list now.
                self.online.remove(user);
                self.output(format::reply(&request, &reply).join(" "));
            }
            (Request::Unblock { .. }, Reply::Done) => {
                self.output(format::reply(&request, &reply).join(" "));
                return self.ask_quietly(vec![Request::List]);
            }
            _ => {
                self.learn(&reply);
                for line in format::reply(&request, &reply) {
                    self.output(line);
                }
            }
        }
        Vec::new()
    }

    /// Keeps the online list, known users and groups current from a reply.
    fn learn(&mut self, reply: &Reply) {
        match reply {
            Reply::Users(list) => self.set_online(list.clone()),
            Reply::Seen(list) => self.users.extend(list.iter().map(|u| u.name.clone())),
            Reply::GroupCreated { group, invited } => {
                self.groups.insert(group.clone());
                self.users.extend(invited.iter().cloned());
            }
            Reply::JoinedGroup { group, members } => {
                self.groups.insert(group.clone());
                self.users.extend(members.iter().cloned());
            }
            Reply::LeftGroup { group } => {
                self.groups.remove(group);
            }
            Reply::Groups { groups, invitations } => {
                self.groups = groups.iter().map(|g| g.name.clone()).collect();
                self.groups.extend(invitations.iter().map(|i| i.group.clone()));
                for g in groups {
                    self.users.extend(g.members.iter().chain(&g.invited).cloned());
                }
            }
            _ => {}
        }
    }

    fn set_online(&mut self, list: Vec<OnlineUser>) {
        self.online = list.into_iter().map(|u| (u.name, u.since)).collect();
        self.users.extend(self.online.keys().cloned());
    }

    /// A message from someone else, in its conversation's window (`None`: the server
    /// window), which is opened if it is not.
    fn chat(&mut self, target: Option<Target>, at: Timestamp, kind: Kind, text: String) {
        let index = target.map_or(0, |t| self.open(t));
        let mention = mentions(&text, &self.me);
        let window = &mut self.windows[index];
        if window.scroll > 0 {
            window.unread += 1;
        }
        if index != self.current {
            let level = if mention { Activity::Mention } else { Activity::Message };
            window.activity = window.activity.max(level);
        }
        let entry = Entry { at: Some(at), kind, text };
        self.log(index, &entry);
        self.push(index, entry);
    }

    fn log(&mut self, index: usize, entry: &Entry) {
        let line = super::render::log_line(entry, &self.me);
        self.logs.push((self.windows[index].label(), line));
    }

    /// Something you sent: in its conversation's window, and in the server window too when
    /// that is in view (so that a `/msg` typed there shows there).
    fn own(&mut self, target: Option<Target>, at: Timestamp, kind: Kind, text: String) {
        let index = target.map_or(0, |t| self.open(t));
        let entry = Entry { at: Some(at), kind, text };
        if index != self.current && self.current == 0 {
            self.push(self.current, entry.clone());
        }
        if !matches!(entry.kind, Kind::Pending { .. }) {
            self.log(index, &entry);
        }
        self.push(index, entry);
    }

    /// A notice in the server window, and in `target`'s window too when it is open.
    fn notice_about(&mut self, target: &Target, text: String) {
        if let Some(index) = self.window_of(target) {
            self.push(index, Entry { at: None, kind: Kind::Notice, text: text.clone() });
        }
        self.notice(text);
    }

    /// A notice in `target`'s window (open, as something was just sent there).
    fn notice_in(&mut self, target: &Target, text: String) {
        let index = self.window_of(target).unwrap_or(self.current);
        self.push(index, Entry { at: None, kind: Kind::Notice, text });
    }

    /// Command output, in the window in view.
    fn output(&mut self, text: impl Into<String>) {
        self.push(self.current, Entry { at: None, kind: Kind::Notice, text: text.into() });
    }

    /// An error, in the window in view.
    fn error(&mut self, text: impl Into<String>) {
        self.push(self.current, Entry { at: None, kind: Kind::Error, text: text.into() });
    }

    fn push(&mut self, index: usize, entry: Entry) {
        let width = self.width();
        let current = self.current;
        let window = &mut self.windows[index];
        if window.scroll > 0 {
            // Keep the rows in view where they are.
            window.scroll += super::render::entry_rows(&entry, width);
        }
        if index != current && window.activity == Activity::None {
            window.activity = Activity::Text;
        }
        window.entries.push_back(entry);
        if window.entries.len() > SCROLLBACK {
            window.entries.pop_front();
        }
    }

    fn width(&self) -> usize {
        usize::from(self.size.0).max(1)
    }

    /// Scrolls the window in view back by `rows` (forward when negative), within its
    /// scrollback.
    fn scroll_by(&mut self, rows: isize) {
        let width = self.width();
        let height = self.pane_height();
        let window = &mut self.windows[self.current];
        let total: usize = window.entries.iter().map(|e| super::render::entry_rows(e, width)).sum();
        let max = total.saturating_sub(height);
        window.scroll = window.scroll.saturating_add_signed(rows).min(max);
        if window.scroll == 0 {
            window.unread = 0;
        }
    }
}

fn is_pending(entry: &Entry, id: u64) -> bool {
    matches!(entry.kind, Kind::Pending { send_id, .. } if send_id == id)
}

/// Whether `text` names `me` as a word, in any case.
pub fn mentions(text: &str, me: &str) -> bool {
    let me = me.to_lowercase();
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .any(|word| word == me)
}

/// Lists a directory for path completion; unreadable directories list as empty.
fn read_dir(dir: &str) -> Vec<DirEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name, e.file_type().is_ok_and(|t| t.is_dir())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let online = vec![OnlineUser { name: "bob".into(), since: 5, away: None }];
        App::new("127.0.0.1:4000", "alice", online, (80, 24)).with_dir_listing(|_| vec![])
    }

    fn key(code: KeyCode) -> UiEvent {
        UiEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn alt(c: char) -> UiEvent {
        UiEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT))
    }

    fn ctrl(c: char) -> UiEvent {
        UiEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn type_line(app: &mut App, text: &str) -> Vec<Action> {
        for c in text.chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Enter))
    }

    fn message(from: &str, text: &str) -> UiEvent {
        UiEvent::Session(SessionEvent::Server(Event::Message {
            id: 1,
            from: from.into(),
            text: text.into(),
            sent_at: 1,
            offline: false,
        }))
    }

    #[test]
    fn a_command_becomes_a_request_and_its_reply_an_entry() {
        let mut app = app();
        let actions = type_line(&mut app, "/msg bob hi there");
        let request = Request::Msg { to: "bob".into(), text: "hi there".into(), send_id: None };
        assert_eq!(actions, [Action::Run(Command::Server(request.clone()))]);
        assert!(app.input.is_empty());
        let sent_at = 1_700_000_123_456;
        let reply = Reply::Sent { to: "bob".into(), delivery: Delivery::Online, sent_at };
        app.handle(UiEvent::Session(SessionEvent::Replied { request, result: Ok(reply) }));
        let last = app.window().entries.back().unwrap();
        assert_eq!(last.kind, Kind::Sent { to: "bob".into() });
        assert_eq!(last.text, "hi there");
        assert_eq!(last.at, Some(sent_at), "the server's time, as bob and /history see it");
    }

    #[test]
    fn bad_input_is_an_error_entry_and_sends_nothing() {
        let mut app = app();
        assert!(type_line(&mut app, "/msg").is_empty());
        assert_eq!(app.window().entries.back().unwrap().kind, Kind::Error);
        assert!(type_line(&mut app, "/dance").is_empty());
        assert!(app.window().entries.back().unwrap().text.contains("unknown command"));
        assert!(type_line(&mut app, "/help groupmsg").is_empty());
        assert!(app.window().entries.iter().any(|e| e.text.starts_with("/groupmsg NAME TEXT")));
    }

    #[test]
    fn an_incoming_message_leaves_the_input_line_alone() {
        let mut app = app();
        for c in "/msg bob half-typ".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Left));
        app.handle(message("bob", "hello"));
        assert_eq!(app.input.text(), "/msg bob half-typ");
        assert_eq!(app.input.cursor(), 16);
    }

    #[test]
    fn presence_keeps_the_online_list() {
        let mut app = app();
        let presence = |user: &str, change| {
            UiEvent::Session(SessionEvent::Server(Event::Presence {
                user: user.into(),
                change,
                at: 9,
            }))
        };
        app.handle(presence("carol", PresenceChange::LoggedIn));
        app.handle(presence("bob", PresenceChange::TimedOut));
        assert_eq!(app.online.keys().collect::<Vec<_>>(), ["carol"]);
        assert_eq!(app.known_users(), ["bob", "carol"]);
    }

    #[test]
    fn scrolling_back_counts_unread_and_holds_the_view() {
        let mut app = app();
        app.size = (40, 5); // three rows of messages
        for i in 0..10 {
            app.handle(message("bob", &format!("m{i}")));
        }
        app.handle(alt('2'));
        app.handle(key(KeyCode::PageUp));
        assert_eq!(app.window().scroll, 2);
        app.handle(message("bob", "new"));
        assert_eq!((app.window().scroll, app.window().unread), (3, 1));
        app.handle(key(KeyCode::PageUp));
        app.handle(key(KeyCode::PageUp));
        app.handle(key(KeyCode::PageUp));
        app.handle(key(KeyCode::PageUp));
        assert_eq!(app.window().scroll, 11 - 3, "stops at the oldest entry");
        for _ in 0..6 {
            app.handle(key(KeyCode::PageDown));
        }
        assert_eq!((app.window().scroll, app.window().unread), (0, 0));
    }

    #[test]
    fn tab_completes_users_and_lists_candidates() {
        let mut app = app();
        app.handle(message("bobby", "hi"));
        for c in "/msg b".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.input.text(), "/msg bob");
        assert_eq!(app.hint.as_deref(), Some("bob  bobby"));
        app.handle(key(KeyCode::Char('b')));
        assert_eq!(app.hint, None);
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.input.text(), "/msg bobby ");
    }

    #[test]
    fn the_status_follows_the_session_and_ctrl_c_or_logout_quits() {
        let mut app = app();
        app.handle(UiEvent::Session(SessionEvent::Server(Event::PrivateRequest {
            from: "bob".into(),
            expires_in_secs: 60,
        })));
        assert_eq!(app.asking, ["bob"]);
        let reconnecting = Connection::Reconnecting {
            attempt: 0,
            retry_in: std::time::Duration::from_secs(4),
            why: "reset".into(),
        };
        app.handle(UiEvent::Session(SessionEvent::Connection(reconnecting.clone())));
        assert_eq!(app.connection, reconnecting);
        assert!(app.asking.is_empty(), "the server forgot the request with the session");
        assert!(app.window().entries.back().unwrap().text.contains("reconnecting in 4 s"));
        app.handle(UiEvent::Session(SessionEvent::Connection(Connection::Connected)));
        app.handle(UiEvent::Session(SessionEvent::CaughtUp { arrived: 3, reconnected: true }));
        assert_eq!(
            app.window().entries.back().unwrap().text,
            "* reconnected; 3 messages arrived meanwhile"
        );

        // The session, not the app, decides what a command can do while disconnected.
        let ended = Connection::Ended("you were logged out after being idle too long".into());
        app.handle(UiEvent::Session(SessionEvent::Connection(ended)));
        assert_eq!(type_line(&mut app, "/list"), [Action::Run(Command::Server(Request::List))]);
        assert_eq!(type_line(&mut app, "/logout"), [Action::Quit]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.handle(UiEvent::Key(ctrl_c)), [Action::Quit]);
        assert!(app.quitting() && !app.done());
        app.handle(UiEvent::Session(SessionEvent::Finished(Finish::LoggedOut)));
        assert!(app.done());
    }

    #[test]
    fn a_pending_message_shows_until_the_server_takes_it() {
        let mut app = app();
        let request = Request::Msg { to: "bob".into(), text: "later".into(), send_id: Some(7) };
        app.handle(UiEvent::Session(SessionEvent::Pending { request: request.clone() }));
        app.handle(UiEvent::Session(SessionEvent::Pending { request: request.clone() }));
        let pending: Vec<&Entry> = app
            .window()
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Pending { .. }))
            .collect();
        assert_eq!(pending.len(), 1, "pending once, however often it is sent again");
        let reply = Reply::Sent { to: "bob".into(), delivery: Delivery::Online, sent_at: 0 };
        app.handle(UiEvent::Session(SessionEvent::Replied { request, result: Ok(reply) }));
        assert!(!app.window().entries.iter().any(|e| matches!(e.kind, Kind::Pending { .. })));
        assert_eq!(app.window().entries.back().unwrap().kind, Kind::Sent { to: "bob".into() });
    }

    #[test]
    fn group_replies_teach_group_names() {
        let mut app = app();
        let request = Request::CreateGroup { name: "devs".into(), invite: vec!["carol".into()] };
        let reply = Reply::GroupCreated { group: "devs".into(), invited: vec!["carol".into()] };
        app.handle(UiEvent::Session(SessionEvent::Replied { request, result: Ok(reply) }));
        assert!(app.groups.contains("devs"));
        assert!(app.known_users().contains(&"carol".to_string()));
    }

    fn group_message(group: &str, from: &str, text: &str) -> UiEvent {
        UiEvent::Session(SessionEvent::Server(Event::GroupMessage {
            id: 2,
            group: group.into(),
            from: from.into(),
            text: text.into(),
            sent_at: 1,
            offline: false,
        }))
    }

    fn msg(to: &str, text: &str) -> Vec<Action> {
        let request = Request::Msg { to: to.into(), text: text.into(), send_id: None };
        vec![Action::Run(Command::Server(request))]
    }

    fn labels(app: &App) -> Vec<String> {
        app.windows.iter().map(Window::label).collect()
    }

    #[test]
    fn bare_text_goes_to_the_window_in_view_and_bare_words_are_commands_in_the_server_window() {
        let mut app = app();
        assert_eq!(type_line(&mut app, "whoelse"), [Action::Run(Command::Server(Request::List))]);
        assert!(type_line(&mut app, "hello there").is_empty(), "no conversation here");
        assert!(app.window().entries.back().unwrap().text.contains("unknown command 'hello'"));

        assert!(type_line(&mut app, "/query bob").is_empty());
        assert_eq!((labels(&app), app.current), (vec!["server".into(), "bob".into()], 1));
        assert_eq!(type_line(&mut app, "hello there"), msg("bob", "hello there"));
        assert_eq!(type_line(&mut app, "bye"), msg("bob", "bye"), "a word, not a logout");
        assert_eq!(type_line(&mut app, "//etc/hosts is it"), msg("bob", "/etc/hosts is it"));
        assert_eq!(type_line(&mut app, "/list"), [Action::Run(Command::Server(Request::List))]);

        // A known group needs no '#'; a private chat is '='.
        app.groups.insert("devs".into());
        type_line(&mut app, "/query devs");
        let group =
            Request::GroupMsg { group: "devs".into(), text: "standup".into(), send_id: None };
        assert_eq!(type_line(&mut app, "standup"), [Action::Run(Command::Server(group))]);
        type_line(&mut app, "/query =carol");
        let private = Command::Private { to: "carol".into(), text: "psst".into() };
        assert_eq!(type_line(&mut app, "psst"), [Action::Run(private)]);
        // /msg USER without text opens USER's window (the one already open: no second).
        type_line(&mut app, "/msg bob");
        assert_eq!(labels(&app), ["server", "bob", "#devs", "=carol"]);
        assert_eq!(app.current, 1);
        // /query alone goes back to the server window, where words are commands again.
        type_line(&mut app, "/query");
        assert_eq!(app.current, 0);
        assert_eq!(type_line(&mut app, "bye"), [Action::Quit]);
    }

    #[test]
    fn messages_open_their_window_and_the_keys_switch() {
        let mut app = app();
        app.handle(message("bob", "hi alice"));
        app.handle(group_message("devs", "carol", "build is green"));
        let direct = Request::Msg { to: "dave".into(), text: "lunch?".into(), send_id: None };
        let reply = Reply::Sent { to: "dave".into(), delivery: Delivery::Online, sent_at: 0 };
        app.handle(UiEvent::Session(SessionEvent::Replied { request: direct, result: Ok(reply) }));
        assert_eq!(labels(&app), ["server", "bob", "#devs", "dave"]);
        assert_eq!(app.current, 0, "a new message does not take the view");
        assert_eq!(app.windows[1].entries.back().unwrap().text, "hi alice");
        assert_eq!(app.windows[2].entries.back().unwrap().text, "build is green");
        assert_eq!(app.windows[3].entries.back().unwrap().kind, Kind::Sent { to: "dave".into() });
        assert_eq!(
            app.windows[0].entries.back().unwrap().kind,
            Kind::Sent { to: "dave".into() },
            "what you send is shown where you typed it too"
        );

        app.handle(alt('3'));
        assert_eq!(app.current, 2);
        app.handle(ctrl('n'));
        assert_eq!(app.current, 3);
        app.handle(ctrl('n'));
        assert_eq!(app.current, 0, "round to the first");
        app.handle(ctrl('p'));
        assert_eq!(app.current, 3);
        app.handle(alt('9'));
        assert_eq!(app.current, 3, "no ninth window: stay");

        type_line(&mut app, "/close");
        assert_eq!(labels(&app), ["server", "bob", "#devs"]);
        assert_eq!(app.current, 2);
        app.handle(alt('1'));
        assert!(type_line(&mut app, "/close").is_empty());
        assert_eq!(app.window().entries.back().unwrap().kind, Kind::Error, "the server's stays");
        assert_eq!(labels(&app).len(), 3);
    }

    #[test]
    fn activity_is_kept_for_windows_out_of_view_and_mentions_rank_highest() {
        let mut app = app();
        app.handle(group_message("devs", "carol", "build is green"));
        app.handle(group_message("ops", "carol", "Alice, can you look?"));
        app.handle(message("bob", "hi"));
        let presence =
            Event::Presence { user: "carol".into(), change: PresenceChange::LoggedOut, at: 3 };
        app.handle(alt('4'));
        app.handle(UiEvent::Session(SessionEvent::Server(presence)));
        let activity: Vec<Activity> = app.windows.iter().map(|w| w.activity).collect();
        assert_eq!(
            activity,
            [Activity::Text, Activity::Message, Activity::Mention, Activity::None],
            "the window in view collects none; a presence notice is only text"
        );
        app.handle(alt('1'));
        app.handle(alt('a'));
        assert_eq!(app.current, 2, "Alt-A goes to the mention first");
        app.handle(alt('a'));
        assert_eq!(app.current, 1, "then to the lowest window with messages");
        app.handle(alt('a'));
        assert_eq!(app.current, 1, "nothing left");
        assert!(app.windows.iter().all(|w| w.activity < Activity::Message));
        assert!(mentions("ping @alice!", "alice") && mentions("ALICE: hi", "alice"));
        assert!(!mentions("malice aforethought", "alice"));
    }

    #[test]
    fn a_private_chat_gets_its_window_and_its_end_is_said_there() {
        let mut app = app();
        app.handle(UiEvent::Session(SessionEvent::Private(PrivateEvent::Opened {
            peer: "bob".into(),
            trust: PeerTrust::Unverified,
            route: crate::p2p::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        assert_eq!(labels(&app), ["server", "=bob"]);
        app.handle(alt('2'));
        assert_eq!(
            type_line(&mut app, "hi"),
            [Action::Run(Command::Private { to: "bob".into(), text: "hi".into() })]
        );
        app.handle(UiEvent::Session(SessionEvent::Private(PrivateEvent::Closed {
            peer: "bob".into(),
            reason: crate::p2p::CloseReason::Lost,
        })));
        assert!(app.window().entries.back().unwrap().text.contains("bob"));
        assert!(app.private.is_empty());
    }

    #[test]
    fn a_changed_key_is_an_error_in_the_chat_window_and_a_verified_one_a_notice() {
        let mut app = app();
        let verified = crate::protocol::PublicKey([1; 32]);
        app.handle(UiEvent::Session(SessionEvent::Private(PrivateEvent::Opened {
            peer: "bob".into(),
            trust: PeerTrust::Changed { verified },
            route: crate::p2p::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        app.handle(alt('2'));
        let last = app.window().entries.back().unwrap();
        assert_eq!(last.kind, Kind::Error);
        assert!(last.text.contains("NOT the one you verified"), "{}", last.text);
        app.handle(UiEvent::Session(SessionEvent::Private(PrivateEvent::Opened {
            peer: "carol".into(),
            trust: PeerTrust::Verified,
            route: crate::p2p::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        app.handle(alt('3'));
        let last = app.window().entries.back().unwrap();
        assert_eq!(last.kind, Kind::Notice);
        assert!(last.text.contains("the key you verified"), "{}", last.text);
    }

    #[test]
    fn a_pasted_block_is_one_message_and_never_commands() {
        let mut app = app();
        app.handle(UiEvent::Paste("hello\nbye\n/logout\n".into()));
        assert!(app.handle(key(KeyCode::Enter)).is_empty(), "not a logout, not three lines");
        assert!(app.window().entries.back().unwrap().text.contains("unknown command 'hello'"));
        type_line(&mut app, "/query bob");
        app.handle(UiEvent::Paste("first\r\nbye\r\n/logout".into()));
        assert_eq!(app.handle(key(KeyCode::Enter)), msg("bob", "first\nbye\n/logout"));
    }

    #[test]
    fn groups_are_learned_at_login_and_the_status_bar_follows_blocks_and_the_server() {
        let mut app = app();
        let groups = Request::Groups;
        assert_eq!(app.start(), [Action::Run(Command::Server(groups.clone()))]);
        let reply = Reply::Groups {
            groups: vec![],
            invitations: vec![crate::protocol::Invitation {
                group: "devs".into(),
                by: "carol".into(),
                at: 1,
            }],
        };
        let shown = app.window().entries.len();
        app.handle(UiEvent::Session(SessionEvent::Replied { request: groups, result: Ok(reply) }));
        assert_eq!(app.window().entries.len(), shown, "learned, not shown");
        for c in "/joingroup d".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.input.text(), "/joingroup devs ", "completed without /groups");

        let block = Request::Block { user: "bob".into() };
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: block,
            result: Ok(Reply::Done),
        }));
        assert!(app.online.is_empty(), "a blocked user's logout will not be heard");
        assert!(app.window().entries.back().unwrap().text.contains("bob is blocked"));
        let unblock = Request::Unblock { user: "bob".into() };
        let actions = app.handle(UiEvent::Session(SessionEvent::Replied {
            request: unblock,
            result: Ok(Reply::Done),
        }));
        assert_eq!(actions, [Action::Run(Command::Server(Request::List))], "asks who is on");
        let list = Reply::Users(vec![OnlineUser { name: "bob".into(), since: 5, away: None }]);
        let shown = app.window().entries.len();
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: Request::List,
            result: Ok(list),
        }));
        assert_eq!(app.online.keys().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(app.window().entries.len(), shown, "learned, not shown");

        let lost = Connection::Reconnecting {
            attempt: 0,
            retry_in: std::time::Duration::from_secs(1),
            why: "reset".into(),
        };
        app.handle(UiEvent::Session(SessionEvent::Connection(lost)));
        assert!(app.online.is_empty(), "the old names go with the server");
        let actions = app.handle(UiEvent::Session(SessionEvent::Connection(Connection::Connected)));
        let ask = |r| Action::Run(Command::Server(r));
        assert_eq!(actions, [ask(Request::List), ask(Request::Groups)]);
        // A /list typed by the user is shown as ever.
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: Request::List,
            result: Ok(Reply::Users(vec![])),
        }));
        let shown = app.window().entries.len();
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: Request::List,
            result: Ok(Reply::Users(vec![])),
        }));
        assert_eq!(app.window().entries.len(), shown + 1);
    }

    #[test]
    fn whoelsesince_shows_the_times_the_client_knows() {
        let mut app = app();
        let presence =
            Event::Presence { user: "carol".into(), change: PresenceChange::LoggedOut, at: 7_000 };
        app.handle(UiEvent::Session(SessionEvent::Server(presence)));
        let seen = |name: &str, online, left_at| crate::protocol::SeenUser {
            name: name.into(),
            online,
            left_at,
        };
        let reply = Reply::Seen(vec![
            seen("bob", true, None),
            seen("carol", false, None),
            seen("dave", false, None),
            seen("eve", false, Some(9_000)),
        ]);
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: Request::WhoElseSince { secs: 60 },
            result: Ok(reply),
        }));
        let lines: Vec<&str> =
            app.window().entries.iter().rev().take(4).map(|e| e.text.as_str()).collect();
        assert_eq!(lines[3], format!("bob (online since {})", format::date_time(5)));
        assert_eq!(lines[2], format!("carol (offline since {})", format::date_time(7_000)));
        assert_eq!(lines[1], "dave (offline)", "neither side knows when");
        assert_eq!(lines[0], format!("eve (offline since {})", format::date_time(9_000)));
    }

    #[test]
    fn a_declined_offer_and_a_cancelled_transfer_leave_the_screen_at_once() {
        use crate::p2p::transfer::{Direction, Transfer};
        let mut app = app();
        let offer = |id, peer: &str| Transfer {
            id,
            peer: peer.into(),
            name: "clip.mp4".into(),
            size: 10,
            direction: Direction::Receive,
        };
        let event = |e| UiEvent::Session(SessionEvent::Transfer(e));
        let offered =
            |transfer, accepting| TransferEvent::Offered { transfer, resume_from: 0, accepting };
        app.handle(event(offered(offer(1, "bob"), false)));
        app.handle(event(offered(offer(2, "carol"), false)));
        app.handle(event(offered(offer(3, "dave"), true)));
        assert_eq!(app.offers.len(), 2, "an offer accepted by itself asks nothing");
        let decline = Command::File(FileCommand::Decline { from: "bob".into() });
        assert_eq!(type_line(&mut app, "/declinefile bob"), [Action::Run(decline)]);
        assert_eq!(app.offers.iter().map(|t| t.id).collect::<Vec<_>>(), [2]);
        assert!(!app.asking_line().unwrap().contains("bob"));

        app.handle(event(TransferEvent::Started {
            transfer: offer(2, "carol"),
            resume_from: 0,
            route: crate::p2p::transfer::Route::Direct("192.0.2.1:1".parse().unwrap()),
        }));
        assert_eq!(app.transfer_gauges().len(), 1);
        type_line(&mut app, "/cancel carol");
        assert!(app.transfer_gauges().is_empty(), "the gauge goes with the cancel");
        assert!(app.asking_line().is_none());
    }

    #[test]
    fn search_lists_the_lines_of_the_window_in_view() {
        let mut app = app();
        app.handle(message("bob", "lunch at 12?"));
        app.handle(message("bob", "or later"));
        app.handle(message("bob", "LUNCH is on me"));
        app.handle(message("carol", "lunch? (not this window)"));
        app.handle(alt('2'));
        assert!(type_line(&mut app, "/search lunch").is_empty());
        let tail: Vec<&str> =
            app.window().entries.iter().rev().take(3).map(|e| e.text.as_str()).rev().collect();
        assert_eq!(tail[0], "search: 2 lines have 'lunch':");
        assert!(tail[1].ends_with("bob: lunch at 12?"), "{tail:?}");
        assert!(tail[2].ends_with("bob: LUNCH is on me"), "{tail:?}");
        type_line(&mut app, "/search lunch");
        assert_eq!(app.window().entries.len(), 3 + 3 + 3, "an earlier search is not found");
        for c in "12".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(ctrl('r'));
        assert_eq!(app.input.text(), "12", "Ctrl-R keeps the line");
        assert!(app.window().entries.back().unwrap().text.ends_with("bob: lunch at 12?"));
        app.handle(ctrl('u'));
        type_line(&mut app, "/search dinner");
        assert_eq!(app.window().entries.back().unwrap().text, "search: no line here has 'dinner'");
    }

    #[test]
    fn each_message_is_logged_once_under_its_conversation() {
        let mut app = app();
        app.handle(message("bob", "hi\nthere"));
        let reply = Reply::Sent { to: "bob".into(), delivery: Delivery::Online, sent_at: 0 };
        let request = Request::Msg { to: "bob".into(), text: "hello".into(), send_id: Some(3) };
        app.handle(UiEvent::Session(SessionEvent::Pending { request: request.clone() }));
        app.handle(UiEvent::Session(SessionEvent::Replied { request, result: Ok(reply) }));
        app.handle(group_message("devs", "carol", "standup"));
        app.handle(UiEvent::Session(SessionEvent::Server(Event::Presence {
            user: "bob".into(),
            change: PresenceChange::LoggedOut,
            at: 2,
        })));
        let logs = app.take_logs();
        let at = format::date_time(1);
        assert_eq!(
            logs,
            [
                ("bob".to_owned(), format!("{at} bob: hi\n    there")),
                ("bob".to_owned(), format!("{} alice -> bob: hello", format::date_time(0))),
                ("#devs".to_owned(), format!("{at} [devs] carol: standup")),
            ],
            "messages only, the pending one once it was sent"
        );
        assert!(app.take_logs().is_empty());
    }

    #[test]
    fn tab_in_a_conversation_completes_names_not_commands() {
        let mut app = app();
        type_line(&mut app, "/query bob");
        for c in "bo".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.input.text(), "bob: ");
        app.handle(ctrl('u'));
        for c in "/jo".chars() {
            app.handle(key(KeyCode::Char(c)));
        }
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.input.text(), "/joingroup ", "a command is still a command");
    }
}
