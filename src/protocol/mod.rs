//! The wire protocol shared by the server, the client and the direct peer links.
//!
//! Bytes become frames in [`codec`], frames become typed messages in [`message`] (client and
//! server) and [`peer`] (two clients on a direct link). A server connection opens with
//! [`Hello`] / [`Welcome`]; after that every [`Request`] carries an id that its
//! [`ServerMessage::Reply`] echoes, and [`Event`]s arrive whenever the server has something to
//! say.

pub mod codec;
pub mod message;
pub mod peer;
pub mod rendezvous;

pub use codec::{encode_frame, CodecError, FrameCodec, MalformedFrame, DEFAULT_MAX_FRAME};
pub use message::*;
pub use peer::{ByeReason, ChatMessage, PeerCodec, PeerMessage, MAX_PEER_FRAME, PING_INTERVAL};

/// The codec a server uses on a client connection.
pub type ServerCodec = FrameCodec<ClientMessage, ServerMessage>;
/// The codec a client uses on its server connection.
pub type ClientCodec = FrameCodec<ServerMessage, ClientMessage>;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    fn introduction() -> Introduction {
        Introduction {
            peer: "bob".into(),
            addr: "192.0.2.7:4100".parse().unwrap(),
            token: Token([7; 16]),
            key: PublicKey([9; 32]),
            candidates: vec!["10.0.0.7:4100".parse().unwrap()],
            relay: Some(LinkId([4; 16])),
        }
    }

    fn requests() -> Vec<Request> {
        let all = vec![
            Request::Login { username: "alice".into(), password: "pw".into(), direct: None },
            Request::Login {
                username: "alice".into(),
                password: "pw".into(),
                direct: Some(DirectEndpoint {
                    tcp: 4100,
                    udp: 4101,
                    key: PublicKey([3; 32]),
                    local: Some("10.0.0.7".parse().unwrap()),
                }),
            },
            Request::Msg { to: "bob".into(), text: "hi ünïcode ✓".into(), send_id: Some(7) },
            Request::Broadcast { text: "all".into() },
            Request::List,
            Request::WhoElseSince { secs: 200 },
            Request::Block { user: "eve".into() },
            Request::Unblock { user: "eve".into() },
            Request::Logout,
            Request::CreateGroup {
                name: "devs".into(),
                invite: vec!["bob".into(), "carol".into()],
            },
            Request::JoinGroup { group: "devs".into() },
            Request::GroupMsg { group: "devs".into(), text: "standup?".into(), send_id: None },
            Request::LeaveGroup { group: "devs".into() },
            Request::Groups,
            Request::History { with: "bob".into(), limit: Some(5) },
            Request::History { with: "devs".into(), limit: None },
            Request::StartPrivate { user: "bob".into() },
            Request::AcceptPrivate { user: "bob".into() },
            Request::DeclinePrivate { user: "bob".into() },
            Request::Ping,
            Request::Away { message: Some("lunch".into()) },
            Request::Away { message: None },
            Request::SendFile { to: "bob".into(), name: "clip.mp4".into(), size: 5 << 32 },
        ];
        // Adding a variant without a sample here fails to compile.
        for r in &all {
            match r {
                Request::Login { .. }
                | Request::Msg { .. }
                | Request::Broadcast { .. }
                | Request::List
                | Request::WhoElseSince { .. }
                | Request::Block { .. }
                | Request::Unblock { .. }
                | Request::Logout
                | Request::CreateGroup { .. }
                | Request::JoinGroup { .. }
                | Request::GroupMsg { .. }
                | Request::LeaveGroup { .. }
                | Request::Groups
                | Request::History { .. }
                | Request::StartPrivate { .. }
                | Request::AcceptPrivate { .. }
                | Request::DeclinePrivate { .. }
                | Request::Ping
                | Request::Away { .. }
                | Request::SendFile { .. } => {}
            }
        }
        all
    }

    fn replies() -> Vec<Reply> {
        let all = vec![
            Reply::LoggedIn {
                username: "alice".into(),
                created: true,
                offline_messages: 3,
                udp: None,
            },
            Reply::LoggedIn {
                username: "alice".into(),
                created: false,
                offline_messages: 0,
                udp: Some(Box::new(UdpBinding { port: 4000, id: 9, secret: Token([2; 16]) })),
            },
            Reply::Sent { to: "bob".into(), delivery: Delivery::Online, sent_at: 1 },
            Reply::Sent { to: "bob".into(), delivery: Delivery::Stored, sent_at: 2 },
            Reply::Broadcasted { delivered: 4, skipped: 1 },
            Reply::Users(vec![OnlineUser {
                name: "bob".into(),
                since: 1_700_000_000_000,
                away: None,
            }]),
            Reply::Seen(vec![SeenUser { name: "carol".into(), online: false, left_at: Some(9) }]),
            Reply::Done,
            Reply::LoggedOut,
            Reply::GroupCreated { group: "devs".into(), invited: vec!["bob".into()] },
            Reply::JoinedGroup { group: "devs".into(), members: vec!["alice".into()] },
            Reply::LeftGroup { group: "devs".into() },
            Reply::GroupSent {
                group: "devs".into(),
                delivered: 3,
                stored: 2,
                skipped: 1,
                sent_at: 3,
            },
            Reply::Groups {
                groups: vec![GroupInfo {
                    name: "devs".into(),
                    members: vec!["alice".into()],
                    invited: vec!["bob".into()],
                }],
                invitations: vec![Invitation { group: "ops".into(), by: "carol".into(), at: 3 }],
            },
            Reply::History {
                with: "bob".into(),
                group: false,
                messages: vec![HistoryMessage {
                    from: "bob".into(),
                    text: "hi".into(),
                    sent_at: 8,
                }],
            },
            Reply::Introduced(Box::new(introduction())),
        ];
        for r in &all {
            match r {
                Reply::LoggedIn { .. }
                | Reply::Sent { .. }
                | Reply::Broadcasted { .. }
                | Reply::Users(_)
                | Reply::Seen(_)
                | Reply::Done
                | Reply::LoggedOut
                | Reply::GroupCreated { .. }
                | Reply::JoinedGroup { .. }
                | Reply::LeftGroup { .. }
                | Reply::GroupSent { .. }
                | Reply::Groups { .. }
                | Reply::History { .. }
                | Reply::Introduced(_) => {}
            }
        }
        all
    }

    fn events() -> Vec<Event> {
        let mut all = vec![
            Event::Message { id: 3, from: "a".into(), text: "t".into(), sent_at: 5, offline: true },
            Event::CaughtUp,
            Event::Broadcast { from: "a".into(), text: "t".into(), sent_at: -1 },
        ];
        for change in [
            PresenceChange::LoggedIn,
            PresenceChange::LoggedOut,
            PresenceChange::TimedOut,
            PresenceChange::Disconnected,
        ] {
            all.push(Event::Presence { user: "bob".into(), change, at: 9 });
        }
        for reason in [
            EndReason::IdleTimeout,
            EndReason::ServerShutdown,
            EndReason::TooSlow,
            EndReason::Flooding,
            EndReason::LoginTimeout,
            EndReason::StalledFrame,
        ] {
            all.push(Event::SessionEnded { reason });
        }
        all.push(Event::Invited(Invitation { group: "devs".into(), by: "alice".into(), at: 1 }));
        all.push(Event::GroupMessage {
            id: u64::MAX,
            group: "devs".into(),
            from: "alice".into(),
            text: "t".into(),
            sent_at: 2,
            offline: false,
        });
        for change in [MemberChange::Joined, MemberChange::Left] {
            all.push(Event::GroupMember {
                group: "devs".into(),
                user: "bob".into(),
                change,
                at: 4,
            });
        }
        all.push(Event::PrivateRequest { from: "alice".into(), expires_in_secs: 60 });
        all.push(Event::PrivateAccepted(introduction()));
        for reason in [RequestEnd::Declined, RequestEnd::Expired, RequestEnd::PeerLeft] {
            for outgoing in [true, false] {
                all.push(Event::PrivateRequestEnded { peer: "bob".into(), outgoing, reason });
            }
        }
        all.push(Event::FileOffer {
            from: Box::new(introduction()),
            name: "clip.mp4".into(),
            size: 1,
        });
        all.push(Event::Away { user: "bob".into(), message: "lunch".into() });
        all.push(Event::RelayedChat { link: LinkId([4; 16]), data: vec![0, 0, 0, 1, 7] });
        for e in &all {
            match e {
                Event::Message { .. }
                | Event::Broadcast { .. }
                | Event::Presence { .. }
                | Event::SessionEnded { .. }
                | Event::Invited(_)
                | Event::GroupMessage { .. }
                | Event::GroupMember { .. }
                | Event::PrivateRequest { .. }
                | Event::PrivateAccepted(_)
                | Event::PrivateRequestEnded { .. }
                | Event::CaughtUp
                | Event::Away { .. }
                | Event::FileOffer { .. }
                | Event::RelayedChat { .. } => {}
            }
        }
        all
    }

    fn error_codes() -> Vec<ErrorCode> {
        use ErrorCode::*;
        let all = vec![
            VersionMismatch,
            MalformedFrame,
            FrameTooLarge,
            HandshakeRequired,
            NotLoggedIn,
            AlreadyAuthenticated,
            InvalidCredentials,
            LockedOut { retry_after_secs: 7 },
            AlreadyLoggedIn,
            UnknownUser,
            SelfTarget,
            BlockedByRecipient,
            NotBlocked,
            InvalidArgument,
            ServerFull,
            Internal,
            UnknownGroup,
            NameTaken,
            NotInvited,
            AlreadyJoined,
            NotGroupMember,
            NotJoined,
            Offline,
            NotReachable,
            AlreadyAsked,
            NoSuchRequest,
            MailboxFull,
            TooManyConnections,
            RateLimited { retry_after_ms: 250 },
            StoreFull,
        ];
        for c in &all {
            match c {
                VersionMismatch
                | MalformedFrame
                | FrameTooLarge
                | HandshakeRequired
                | NotLoggedIn
                | AlreadyAuthenticated
                | InvalidCredentials
                | LockedOut { .. }
                | AlreadyLoggedIn
                | UnknownUser
                | SelfTarget
                | BlockedByRecipient
                | NotBlocked
                | InvalidArgument
                | ServerFull
                | Internal
                | UnknownGroup
                | NameTaken
                | NotInvited
                | AlreadyJoined
                | NotGroupMember
                | NotJoined
                | Offline
                | NotReachable
                | AlreadyAsked
                | NoSuchRequest
                | MailboxFull
                | TooManyConnections
                | RateLimited { .. }
                | StoreFull => {}
            }
        }
        all
    }

    fn round_trip<T, C>(codec: &mut C, msg: T) -> T
    where
        C: Encoder<T, Error = CodecError>
            + Decoder<Item = Result<T, MalformedFrame>, Error = CodecError>,
    {
        let mut buf = BytesMut::new();
        codec.encode(msg, &mut buf).unwrap();
        let out = codec.decode(&mut buf).unwrap().expect("a whole frame").unwrap();
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn every_client_message_round_trips() {
        let mut codec = FrameCodec::<ClientMessage, ClientMessage>::default();
        let hello = ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "x".into() });
        assert_eq!(round_trip(&mut codec, hello.clone()), hello);
        let ack = ClientMessage::Ack { up_to: u64::MAX - 1 };
        assert_eq!(round_trip(&mut codec, ack.clone()), ack);
        for (id, body) in requests().into_iter().enumerate() {
            let msg = ClientMessage::Request { id: id as u32, body };
            assert_eq!(round_trip(&mut codec, msg.clone()), msg);
        }
    }

    #[test]
    fn every_server_message_round_trips() {
        let mut codec = FrameCodec::<ServerMessage, ServerMessage>::default();
        let mut all = vec![ServerMessage::Welcome(Welcome {
            version: 1,
            server: "s".into(),
            max_frame: 1,
            max_message_chars: 1,
        })];
        all.extend(replies().into_iter().map(|r| ServerMessage::Reply { id: 3, result: Ok(r) }));
        all.extend(error_codes().into_iter().map(|code| ServerMessage::Reply {
            id: u32::MAX,
            result: Err(ErrorReply::new(code, "why")),
        }));
        all.extend(events().into_iter().map(ServerMessage::Event));
        for msg in all {
            assert_eq!(round_trip(&mut codec, msg.clone()), msg);
        }
    }

    fn peer_messages() -> Vec<PeerMessage> {
        let all = vec![
            PeerMessage::Hello {
                version: PROTOCOL_VERSION,
                username: "a".into(),
                handshake: vec![1; 96],
            },
            PeerMessage::Accepted { username: "b".into(), handshake: vec![2; 48] },
            PeerMessage::Sealed(vec![0, 255, 3]),
        ];
        for m in &all {
            match m {
                PeerMessage::Hello { .. }
                | PeerMessage::Accepted { .. }
                | PeerMessage::Sealed(_) => {}
            }
        }
        all
    }

    fn chat_messages() -> Vec<ChatMessage> {
        let mut all =
            vec![ChatMessage::Text { text: "psst ✓".into(), sent_at: 1_700_000_000_000 }];
        for reason in
            [ByeReason::Stopped, ByeReason::LoggedOut, ByeReason::TimedOut, ByeReason::TooFast]
        {
            all.push(ChatMessage::Bye { reason });
        }
        for echo in [0, u64::MAX] {
            all.push(ChatMessage::Ping { echo });
            all.push(ChatMessage::Pong { echo });
        }
        for m in &all {
            match m {
                ChatMessage::Text { .. }
                | ChatMessage::Ping { .. }
                | ChatMessage::Pong { .. }
                | ChatMessage::Bye { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_peer_message_round_trips() {
        let mut codec = PeerCodec::new(MAX_PEER_FRAME);
        for msg in peer_messages() {
            assert_eq!(round_trip(&mut codec, msg.clone()), msg);
        }
        for msg in chat_messages() {
            let bytes = rmp_serde::to_vec(&msg).unwrap();
            assert_eq!(rmp_serde::from_slice::<ChatMessage>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn handshake_and_sealed_bytes_go_as_binary_not_as_arrays_of_numbers() {
        let sealed = PeerMessage::Sealed(vec![200; 1000]);
        assert!(
            rmp_serde::to_vec(&sealed).unwrap().len() < 1100,
            "bytes over 127 take two as numbers"
        );
        let key = PublicKey([255; 32]);
        assert!(rmp_serde::to_vec(&key).unwrap().len() < 40);
        assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
        assert!("zz".repeat(32).parse::<PublicKey>().is_err());
    }

    #[test]
    fn tokens_compare_by_value_and_never_print() {
        let a = Token::random();
        assert_eq!(a, Token(a.0));
        let mut other = a.0;
        other[15] ^= 1;
        assert_ne!(a, Token(other));
        assert_ne!(Token::random(), Token::random());
        assert_eq!(format!("{a:?}"), "Token(..)");
        assert!(format!("{:?}", introduction()).contains("token: Token(..)"));
    }

    #[test]
    fn text_rules_are_one_function() {
        assert!(text_problem("hi", 5).is_none());
        assert!(text_problem("  ", 5).unwrap().contains("empty"));
        assert!(text_problem("a\x1bb", 5).unwrap().contains("control"));
        assert!(text_problem("a\nb", 5).is_none(), "a line break is text");
        for c in ['\r', '\t', '\0', '\u{7f}', '\u{85}'] {
            assert!(text_problem(&format!("a{c}b"), 5).unwrap().contains("control"), "{c:?}");
        }
        assert!(text_problem("ünïcö", 5).is_none(), "characters, not bytes");
        assert!(text_problem("123456", 5).unwrap().contains('5'));
    }

    #[test]
    fn a_server_message_is_not_mistaken_for_a_client_message() {
        let frame = encode_frame(&ServerMessage::Event(Event::SessionEnded {
            reason: EndReason::IdleTimeout,
        }))
        .unwrap();
        let mut buf = BytesMut::from(&frame[..]);
        assert!(ServerCodec::default().decode(&mut buf).unwrap().unwrap().is_err());
    }
}
