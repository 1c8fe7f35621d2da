//! The typed messages that travel between a client and the server.
//!
//! A client sends [`ClientMessage`]s: first a [`Hello`], then [`Request`]s, each with an id
//! that the server echoes in its [`ServerMessage::Reply`]. The server may push
//! [`ServerMessage::Event`]s at any time. `Hello` and `Welcome` are frozen forever so that
//! peers of different versions can always tell each other that they disagree.
//!
//! The private-chat introduction also travels here: a login announces the client's
//! [`DirectEndpoint`] (ports and public key); [`Request::StartPrivate`] makes the server ask the target with
//! [`Event::PrivateRequest`]; [`Request::AcceptPrivate`] is answered with an [`Introduction`]
//! (the requester's address and key, and a fresh [`Token`]) while the requester gets the
//! target's address and key and the same token in [`Event::PrivateAccepted`]. What the two clients then say to
//! each other is in [`super::peer`]. A file offer ([`Request::SendFile`]) is introduced the
//! same way in one step: the sender gets the receiver's UDP address and a token, and the
//! receiver an [`Event::FileOffer`] with the sender's.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bump it on any incompatible change.
/// Version 2: logins announce their direct ports; private-chat introductions.
/// Version 3: file offers ([`Request::SendFile`], [`Event::FileOffer`]).
/// Version 4: the delivery log: message events carry the log's id, clients acknowledge what
/// they have shown ([`ClientMessage::Ack`]), sends carry a client-chosen id, catch-up ends with
/// [`Event::CaughtUp`].
/// Version 5: [`Welcome`] carries the server's limits, so a client checks a request before
/// sending it; [`Reply::Sent`] and [`Reply::GroupSent`] carry the server's time of the
/// message, so the sender shows the time its recipients see.
/// Version 6: a login announces the client's long-term [`PublicKey`] with its ports
/// ([`DirectEndpoint`]), and every [`Introduction`] carries the peer's key: direct links are
/// encrypted end to end (see [`super::peer`]).
/// Version 7: links through NAT. A login announces the client's local address
/// ([`DirectEndpoint::local`]) and its reply names the session's UDP binding
/// ([`UdpBinding`], see [`super::rendezvous`]); every [`Introduction`] carries the peer's
/// other candidate addresses and the relay link to fall back on; chats can be relayed
/// through the server ([`ClientMessage::RelayChat`], [`Event::RelayedChat`]).
pub const PROTOCOL_VERSION: u32 = 7;

/// A message's id in the server's log: unique and increasing in the order the server
/// accepted messages. Every message a session receives has a larger id than the one before.
pub type MessageId = u64;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = i64;

/// The current wall-clock time as a [`Timestamp`].
pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Timestamp)
        .unwrap_or(0)
}

/// Every frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first frame of every connection.
    Hello(Hello),
    /// A command; the server answers with a [`ServerMessage::Reply`] carrying the same id.
    Request {
        /// Chosen by the client, echoed in the reply.
        id: u32,
        /// What to do.
        body: Request,
    },
    /// "I have shown every message up to and including `up_to`": cumulative, never answered.
    /// The server sends again, at the next login, whatever was not acknowledged.
    Ack {
        /// The highest [`MessageId`] shown.
        up_to: MessageId,
    },
    /// Bytes of a private chat relayed through the server on `link` (no direct path was
    /// found): already sealed end to end, passed to the link's other side as
    /// [`Event::RelayedChat`], never answered. Dropped when the other side is gone.
    RelayChat {
        /// The introduction's link.
        link: LinkId,
        /// The chat's bytes, as they would cross a direct connection.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// Opens a connection and states the protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Free text naming the client software, for logs.
    pub agent: String,
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to a [`Hello`] whose version matches.
    Welcome(Welcome),
    /// The answer to the request with the same id.
    Reply {
        /// The id of the request this answers; 0 for a frame that could not be read.
        id: u32,
        /// What happened.
        result: Result<Reply, ErrorReply>,
    },
    /// Something the server pushes without being asked.
    Event(Event),
}

/// The server's half of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Free text naming the server software.
    pub server: String,
    /// The largest frame the server reads, in bytes: a larger one ends the connection.
    pub max_frame: u32,
    /// The longest message text it takes, in characters.
    pub max_message_chars: u32,
}

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Authenticate (or, with open registration, create an account).
    Login {
        /// Account name.
        username: String,
        /// Plain password; the server keeps only an Argon2id hash.
        password: String,
        /// Where this client takes direct connections; `None` for a client that takes none
        /// (it can then neither start nor accept private chats).
        direct: Option<DirectEndpoint>,
    },
    /// Send a direct message, relayed now or stored until `to` logs in.
    Msg {
        /// Recipient.
        to: String,
        /// Message text.
        text: String,
        /// Chosen by the client, unique per sender: a repeat gets the first reply and is not
        /// delivered again. `None` sends without that guarantee.
        send_id: Option<u64>,
    },
    /// Send to every online user except the sender and those who blocked the sender.
    Broadcast {
        /// Message text.
        text: String,
    },
    /// Online users, except yourself and those who blocked you.
    List,
    /// Users whose online time overlaps the last `secs` seconds.
    WhoElseSince {
        /// How far back to look.
        secs: u64,
    },
    /// Stop receiving anything from `user`, and hide yourself from them.
    Block {
        /// Whom to block.
        user: String,
    },
    /// Undo a [`Request::Block`].
    Unblock {
        /// Whom to unblock.
        user: String,
    },
    /// End the session; the server answers and closes the connection.
    Logout,
    /// Create group `name` with yourself as its first member, and invite `invite`.
    CreateGroup {
        /// Group name: letters and digits (see [`valid_group_name`]).
        name: String,
        /// Users to invite; at least one other than yourself.
        invite: Vec<String>,
    },
    /// Accept an invitation to `group`.
    JoinGroup {
        /// The group.
        group: String,
    },
    /// Send to every joined member of `group` but yourself.
    GroupMsg {
        /// The group.
        group: String,
        /// Message text.
        text: String,
        /// As in [`Request::Msg`].
        send_id: Option<u64>,
    },
    /// Leave `group`, or turn down its invitation.
    LeaveGroup {
        /// The group.
        group: String,
    },
    /// Your groups and pending invitations.
    Groups,
    /// The last messages of a conversation you took part in, oldest first.
    History {
        /// A user (your direct messages with them) or a group you have joined.
        with: String,
        /// How many messages; the server's default when `None`.
        limit: Option<u32>,
    },
    /// Ask `user` for a private chat; they get an [`Event::PrivateRequest`].
    StartPrivate {
        /// Whom to ask.
        user: String,
    },
    /// Accept `user`'s private chat request; answered with [`Reply::Introduced`].
    AcceptPrivate {
        /// Who asked.
        user: String,
    },
    /// Decline `user`'s private chat request; they are told.
    DeclinePrivate {
        /// Who asked.
        user: String,
    },
    /// Nothing but "the user is active": resets the idle timeout. Clients send it when the
    /// user does something the server does not see, such as a private message.
    Ping,
    /// Mark yourself away with `message` (`/away MESSAGE`), or back with `None` (`/away`).
    /// Others see it in [`Request::List`]; the first direct message each sender sends you
    /// while away is answered with [`Event::Away`].
    Away {
        /// Why you are away; `None` says you are back.
        message: Option<String>,
    },
    /// Offer `user` a file over UDP (`/p2pvideo`). Answered with [`Reply::Introduced`]
    /// (their UDP address and a one-time token); they get an [`Event::FileOffer`].
    SendFile {
        /// The receiver.
        to: String,
        /// The file's name, without directories.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// Where and as whom a client takes direct connections: its ports, which the server pairs
/// with the IP address it sees the client connect from, and its long-term public key, which
/// the server hands to the peers it introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectEndpoint {
    /// TCP port of the private-chat listener.
    pub tcp: u16,
    /// UDP port for file transfers.
    pub udp: u16,
    /// The client's identity key for direct links.
    pub key: PublicKey,
    /// The address its sockets are bound to, when it is not the one the server sees (a
    /// client behind a NAT): peers on the same network reach it there.
    pub local: Option<IpAddr>,
}

/// The session's handle on the server's UDP endpoint ([`super::rendezvous`]), from its
/// login reply.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpBinding {
    /// The server's UDP port (on the address the client connected to).
    pub port: u16,
    /// The session's public binding id, named in every bind.
    pub id: u64,
    /// The secret that binds are signed with; it never travels in the clear.
    pub secret: Token,
}

impl std::fmt::Debug for UdpBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UdpBinding {{ port: {}, id: {}, .. }}", self.port, self.id)
    }
}

/// Names a relay link: the server forwards datagrams between the two clients of one
/// introduction, and only them, by this id. Not secret (it travels in every relayed
/// datagram); what the link carries is sealed end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkId(pub [u8; 16]);

impl LinkId {
    /// A fresh random link id.
    pub fn random() -> Self {
        LinkId(Token::random().0)
    }
}

/// A client's long-term X25519 public key, which its direct links are authenticated with.
/// It is public: `Debug` and `Display` show it in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = &'static str;

    /// Parses the 64 hex digits that `Display` writes.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.as_bytes();
        if text.len() != 64 || !text.is_ascii() {
            return Err("a key is 64 hex digits");
        }
        let mut key = [0; 32];
        for (byte, pair) in key.iter_mut().zip(text.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| "a key is 64 hex digits")?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| "a key is 64 hex digits")?;
        }
        Ok(PublicKey(key))
    }
}

/// A one-time secret for one direct connection: 128 random bits made by the server.
///
/// Comparison with `==` takes the same time wherever the tokens differ, and `Debug` does
/// not print the secret, so tokens can sit in structures that get logged.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// A fresh token from the operating system's random source.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(bytes)
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        // No early exit: the time taken does not depend on where the tokens differ.
        let diff = self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The server introducing one side of a private chat to the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduction {
    /// The other side.
    pub peer: String,
    /// The other side's private-chat address: the IP the server sees it at, and its TCP port.
    pub addr: SocketAddr,
    /// The one-time token that authenticates the requester's connection to the target.
    pub token: Token,
    /// The other side's identity key, as it announced it at login: the direct link's
    /// handshake proves that the peer holds it.
    pub key: PublicKey,
    /// More addresses to try for the other side, best first: its reflexive address (its
    /// NAT's public side, as the server's UDP endpoint saw it) and its local one. `addr`
    /// is tried too.
    pub candidates: Vec<SocketAddr>,
    /// The relay link to fall back on when no address answers (`None`: the server relays
    /// nothing, or one side has not bound its UDP socket).
    pub relay: Option<LinkId>,
}

impl Introduction {
    /// An introduction of `peer` at `addr` alone, with no relay to fall back on.
    pub fn direct(peer: &str, addr: SocketAddr, token: Token, key: PublicKey) -> Self {
        Introduction {
            peer: peer.to_owned(),
            addr,
            token,
            key,
            candidates: Vec::new(),
            relay: None,
        }
    }

    /// Every address to try for the other side: `addr`, then the candidates, once each.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut all = vec![self.addr];
        for candidate in &self.candidates {
            if !all.contains(candidate) {
                all.push(*candidate);
            }
        }
        all
    }
}

/// A successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Login succeeded; the messages waiting follow as [`Event::Message`]s and
    /// [`Event::GroupMessage`]s, oldest first, then [`Event::CaughtUp`].
    LoggedIn {
        /// The account name.
        username: String,
        /// Whether this login created the account (open registration).
        created: bool,
        /// How many messages are waiting (not yet acknowledged); they follow.
        offline_messages: u32,
        /// The session's binding on the server's UDP endpoint (`None`: the server has none).
        /// Boxed: it would double the size of every reply.
        udp: Option<Box<UdpBinding>>,
    },
    /// A direct message was accepted.
    Sent {
        /// Recipient.
        to: String,
        /// How it was delivered.
        delivery: Delivery,
        /// When the server accepted it: the time the recipient sees.
        sent_at: Timestamp,
    },
    /// A broadcast was accepted.
    Broadcasted {
        /// Online users who were sent it.
        delivered: u32,
        /// Online users who did not get it because they block the sender.
        skipped: u32,
    },
    /// Answer to [`Request::List`].
    Users(Vec<OnlineUser>),
    /// Answer to [`Request::WhoElseSince`].
    Seen(Vec<SeenUser>),
    /// The request was carried out and there is nothing more to say.
    Done,
    /// Answer to [`Request::Logout`]; the server closes the connection next.
    LoggedOut,
    /// A group was created.
    GroupCreated {
        /// The group.
        group: String,
        /// The users who were invited.
        invited: Vec<String>,
    },
    /// You joined a group.
    JoinedGroup {
        /// The group.
        group: String,
        /// Its joined members, yourself included, by name.
        members: Vec<String>,
    },
    /// You left a group (or turned down its invitation).
    LeftGroup {
        /// The group.
        group: String,
    },
    /// A group message was accepted.
    GroupSent {
        /// The group.
        group: String,
        /// Online members who were sent it.
        delivered: u32,
        /// Offline members for whom it was committed to disk.
        stored: u32,
        /// Members who did not get it because they block you.
        skipped: u32,
        /// When the server accepted it: the time the members see.
        sent_at: Timestamp,
    },
    /// Answer to [`Request::Groups`].
    Groups {
        /// Groups you have joined, by name.
        groups: Vec<GroupInfo>,
        /// Invitations you have not answered yet, oldest first.
        invitations: Vec<Invitation>,
    },
    /// Answer to [`Request::History`].
    History {
        /// The user or group asked for.
        with: String,
        /// Whether `with` is a group.
        group: bool,
        /// The messages, oldest first.
        messages: Vec<HistoryMessage>,
    },
    /// Answer to [`Request::AcceptPrivate`]: the requester, who will connect with the token.
    Introduced(Box<Introduction>),
}

/// A group you belong to, as listed by [`Request::Groups`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Joined members, yourself included, by name.
    pub members: Vec<String>,
    /// Users invited who have not joined yet, by name.
    pub invited: Vec<String>,
}

/// An invitation to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The group.
    pub group: String,
    /// Who invited you.
    pub by: String,
    /// When.
    pub at: Timestamp,
}

/// One message of a [`Reply::History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// Sender.
    pub from: String,
    /// Message text.
    pub text: String,
    /// When the server accepted it.
    pub sent_at: Timestamp,
}

/// How a direct message reached its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Handed to the recipient's live session.
    Online,
    /// Committed to disk; delivered when the recipient next logs in.
    Stored,
}

/// One entry of the online list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineUser {
    /// Account name.
    pub name: String,
    /// When this session began.
    pub since: Timestamp,
    /// Their away message, if they are away.
    pub away: Option<String>,
}

/// One entry of a whoelsesince answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenUser {
    /// Account name.
    pub name: String,
    /// Whether the user is online now.
    pub online: bool,
    /// When they last logged out, if they are offline.
    pub left_at: Option<Timestamp>,
}

/// Something the server pushes to a logged-in client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A direct message.
    Message {
        /// Its id in the log; acknowledge it once shown.
        id: MessageId,
        /// Sender.
        from: String,
        /// Message text.
        text: String,
        /// When the server accepted it.
        sent_at: Timestamp,
        /// True when it was waiting for you at login.
        offline: bool,
    },
    /// A broadcast.
    Broadcast {
        /// Sender.
        from: String,
        /// Message text.
        text: String,
        /// When the server accepted it.
        sent_at: Timestamp,
    },
    /// A user logged in or out.
    Presence {
        /// Who.
        user: String,
        /// What happened.
        change: PresenceChange,
        /// When.
        at: Timestamp,
    },
    /// The server is ending this session; the connection closes next.
    SessionEnded {
        /// Why.
        reason: EndReason,
    },
    /// You were invited to a group; also repeated at login for every pending invitation.
    Invited(Invitation),
    /// A message to a group you have joined.
    GroupMessage {
        /// Its id in the log; acknowledge it once shown.
        id: MessageId,
        /// The group.
        group: String,
        /// Sender.
        from: String,
        /// Message text.
        text: String,
        /// When the server accepted it.
        sent_at: Timestamp,
        /// True when it was stored while you were away.
        offline: bool,
    },
    /// Someone joined or left a group you are in.
    GroupMember {
        /// The group.
        group: String,
        /// Who.
        user: String,
        /// What happened.
        change: MemberChange,
        /// When.
        at: Timestamp,
    },
    /// `from` asks you for a private chat: answer with [`Request::AcceptPrivate`] or
    /// [`Request::DeclinePrivate`].
    PrivateRequest {
        /// Who asks.
        from: String,
        /// Seconds until the request expires (rounded up).
        expires_in_secs: u64,
    },
    /// Your private chat request was accepted: connect to the target with the token.
    PrivateAccepted(Introduction),
    /// A private chat request ended without a chat.
    PrivateRequestEnded {
        /// The other side of the request.
        peer: String,
        /// True if you asked `peer`; false if `peer` asked you.
        outgoing: bool,
        /// Why it ended.
        reason: RequestEnd,
    },
    /// Every message that waited at login has been sent; what follows is live.
    CaughtUp,
    /// `user`, whom you just messaged, is away: their away message (said once per away).
    Away {
        /// Who is away.
        user: String,
        /// What they said.
        message: String,
    },
    /// `from.peer` is about to send you a file straight over UDP: let in the offer that
    /// comes from `from.addr` with `from.token`.
    FileOffer {
        /// The sender, its UDP addresses and the transfer's token.
        from: Box<Introduction>,
        /// The file's name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of a private chat relayed by the other side of `link` ([`ClientMessage::RelayChat`]).
    RelayedChat {
        /// The introduction's link.
        link: LinkId,
        /// The chat's bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// A change of group membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Accepted an invitation.
    Joined,
    /// Left the group.
    Left,
}

/// Why a private chat request ended without a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestEnd {
    /// The target declined.
    Declined,
    /// Nobody answered in time.
    Expired,
    /// The other side logged out (or was disconnected).
    PeerLeft,
}

/// A change of presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceChange {
    /// Logged in.
    LoggedIn,
    /// Logged out on purpose.
    LoggedOut,
    /// Logged out by the idle timeout.
    TimedOut,
    /// The connection dropped.
    Disconnected,
}

/// Why the server ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// No command for the idle period.
    IdleTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// The client did not read its messages fast enough.
    TooSlow,
    /// The user kept sending past the rate limits after being told to slow down.
    Flooding,
    /// The connection did not log in within the registration deadline.
    LoginTimeout,
    /// A frame stayed incomplete for longer than the server waits for one.
    StalledFrame,
}

/// A failed request: a stable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure; clients branch on this.
    pub code: ErrorCode,
    /// What to show the user.
    pub message: String,
}

impl ErrorReply {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    VersionMismatch,
    /// A frame could not be decoded.
    MalformedFrame,
    /// A frame was larger than the server accepts; the connection is closed.
    FrameTooLarge,
    /// The first frame was not a [`Hello`], or a second `Hello` came.
    HandshakeRequired,
    /// The command needs a logged-in session.
    NotLoggedIn,
    /// Login on a session that is already logged in.
    AlreadyAuthenticated,
    /// Wrong username or password (deliberately not saying which).
    InvalidCredentials,
    /// Too many failed logins; try again later.
    LockedOut {
        /// Seconds until the lock lifts (rounded up).
        retry_after_secs: u64,
    },
    /// This user already has a live session elsewhere.
    AlreadyLoggedIn,
    /// No such user.
    UnknownUser,
    /// The target is yourself.
    SelfTarget,
    /// The recipient has blocked you.
    BlockedByRecipient,
    /// Unblock of a user who was not blocked.
    NotBlocked,
    /// An argument is empty, malformed or too long.
    InvalidArgument,
    /// The server has reached its connection limit.
    ServerFull,
    /// Something went wrong inside the server; nothing was done.
    Internal,
    /// No such group.
    UnknownGroup,
    /// A group (or a user) with that name exists already.
    NameTaken,
    /// Joining a group you were not invited to.
    NotInvited,
    /// Joining a group you have joined already.
    AlreadyJoined,
    /// The group exists but you are not in it (nor invited).
    NotGroupMember,
    /// You are invited to the group but have not joined it yet.
    NotJoined,
    /// The user exists but is not online.
    Offline,
    /// A private chat needs both clients to take direct connections, and one does not.
    NotReachable,
    /// You already asked this user for a private chat; wait for the answer.
    AlreadyAsked,
    /// There is no private chat request from this user (any more).
    NoSuchRequest,
    /// The recipient has too many messages waiting; nothing was stored.
    MailboxFull,
    /// Your address holds as many connections as one address may.
    TooManyConnections,
    /// Too many requests (or connections, or logins) too fast; nothing was done.
    RateLimited {
        /// Milliseconds until one more would be taken (rounded up).
        retry_after_ms: u64,
    },
    /// The server's storage is full: new messages are refused, reading still works.
    StoreFull,
}

impl Event {
    /// The log id of a message event; `None` for every other event.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            Event::Message { id, .. } | Event::GroupMessage { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The longest message text the server takes by default, in characters; a direct link
/// holds received private messages to the same limit.
pub const DEFAULT_MAX_MESSAGE_CHARS: usize = 4000;

/// Why `text` cannot be sent as a message (blank, control characters other than `\n`, more
/// than `max_chars` characters), or `None` if it can.
pub fn text_problem(text: &str, max_chars: usize) -> Option<String> {
    if text.trim().is_empty() {
        return Some("the message is empty".into());
    }
    // A line break is text (a multi-line message); no other control character is.
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Some("messages cannot contain control characters".into());
    }
    if text.chars().count() > max_chars {
        return Some(format!("messages are limited to {max_chars} characters"));
    }
    None
}

/// The longest file name a file offer may carry, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;

/// Whether `name` is a plain file name that is safe to create in a download directory: not
/// empty, at most [`MAX_FILE_NAME_LEN`] bytes, no directory separators, no leading dot (so
/// neither `..` nor a hidden file), no control characters.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// The longest allowed username, in bytes.
pub const MAX_USERNAME_LEN: usize = 32;

/// Whether `name` is a valid username: 1-32 ASCII letters, digits, `_`, `-` or `.`.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The longest allowed group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 32;

/// Whether `name` is a valid group name: 1-32 ASCII letters and digits.
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
}
