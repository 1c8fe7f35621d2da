//! The end-to-end encryption of a private chat: a Noise handshake, then sealed frames.
//!
//! The pattern is [`PATTERN`], `Noise_KKpsk0`: each side knows the other's static key in
//! advance (the server's introduction carries it), and the pre-shared key is derived from
//! the server's one-time token. So the listener can open the dialler's first message only if
//! it was made by the holder of the key the server vouched for *and* with the token the
//! server gave both; a sniffed token is worthless, and so is a stolen key without the token.
//! The psk goes in at the start (`psk0`, not `psk2`) so that the listener checks both on the
//! very first frame, before it answers or keeps anything, as it checked the bare token
//! before. The answer proves the same of the listener to the dialler. Both names are bound
//! into the handshake (its prologue), so a `Hello` cannot be replayed under another name.
//!
//! After the two handshake messages every [`ChatMessage`] goes sealed with
//! ChaCha20-Poly1305 under the session keys, with a counter nonce per direction: a frame
//! altered, dropped, replayed or reordered on the way does not open, and the chat ends.
//! Both sides' static keys are authenticated by the handshake, so a [`SafetyCode`] of them
//! (`/verify`) tells the users whether the server introduced them to each other or to
//! someone in between.
//!
//! [`SafetyCode`]: super::identity::SafetyCode

use sha2::{Digest, Sha256};
use snow::{HandshakeState, TransportState};

use super::identity::Identity;
use crate::protocol::{ChatMessage, PeerMessage, PublicKey, Token, PROTOCOL_VERSION};

/// The Noise protocol name of a private chat.
pub const PATTERN: &str = "Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s";
/// The longest Noise message (the spec's limit).
const MAX_MESSAGE: usize = 65_535;
/// The AEAD tag added to every sealed message.
const TAG: usize = 16;
/// Room for one of our handshake messages: an ephemeral key and a tag (48 bytes), with
/// room to spare. Their payloads are empty, so a message read never yields more bytes than
/// it has.
const HANDSHAKE_MESSAGE: usize = 128;

/// Why a handshake or a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The other side's handshake message did not open: it was not made with the key the
    /// server vouched for, or not with the token, or it was altered.
    #[error("the handshake failed (wrong key or token): {0}")]
    Handshake(#[source] snow::Error),
    /// A sealed frame did not open: altered, replayed, reordered, or forged.
    #[error("a frame did not decrypt (altered or forged)")]
    Forged,
    /// A sealed frame opened but did not hold a chat message.
    #[error("a sealed frame held no chat message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// A message too long for one sealed frame.
    #[error("a message of {0} bytes is too long for one frame")]
    TooLong(usize),
}

/// One side of a link being opened: who we are, whom the server introduced, and the token.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// Our key pair.
    pub identity: &'a Identity,
    /// Our username.
    pub me: &'a str,
    /// The peer's username.
    pub peer: &'a str,
    /// The peer's key, from the server's introduction.
    pub peer_key: &'a PublicKey,
    /// The one-time token from the introduction.
    pub token: &'a Token,
}

/// The dialler's handshake, waiting for the listener's answer.
pub struct Initiator {
    state: HandshakeState,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator(..)")
    }
}

/// The dialler's first frame and the handshake state that reads the answer.
pub fn initiate(keys: Keys<'_>) -> Result<(Initiator, PeerMessage), NoiseError> {
    let mut state = handshake(&keys, Purpose::Chat, keys.me, keys.peer, true)?;
    let mut buf = vec![0; HANDSHAKE_MESSAGE];
    let len = state.write_message(&[], &mut buf).map_err(NoiseError::Handshake)?;
    buf.truncate(len);
    let hello = PeerMessage::Hello {
        version: PROTOCOL_VERSION,
        username: keys.me.to_owned(),
        handshake: buf,
    };
    Ok((Initiator { state }, hello))
}

impl Initiator {
    /// Reads the listener's answer ([`PeerMessage::Accepted`]'s handshake bytes): the link
    /// is open, encrypted both ways.
    pub fn finish(mut self, answer: &[u8]) -> Result<Cipher, NoiseError> {
        let mut payload = vec![0; answer.len()];
        self.state.read_message(answer, &mut payload).map_err(NoiseError::Handshake)?;
        Cipher::from(self.state)
    }
}

/// The listener's side: opens the dialler's first handshake message with the key and token
/// the server gave for `keys.peer`; on success, the answer to send and the open link.
pub fn respond(keys: Keys<'_>, hello: &[u8]) -> Result<(Cipher, PeerMessage), NoiseError> {
    let mut state = handshake(&keys, Purpose::Chat, keys.peer, keys.me, false)?;
    let mut payload = vec![0; hello.len()];
    state.read_message(hello, &mut payload).map_err(NoiseError::Handshake)?;
    let mut buf = vec![0; HANDSHAKE_MESSAGE];
    let len = state.write_message(&[], &mut buf).map_err(NoiseError::Handshake)?;
    buf.truncate(len);
    let accepted = PeerMessage::Accepted { username: keys.me.to_owned(), handshake: buf };
    Ok((Cipher::from(state)?, accepted))
}

/// What a handshake opens. Each kind has its own Noise protocol, its own label for the
/// psk and the prologue, and binds what identifies it, so that a handshake message of one
/// can never be taken for one of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A private chat over TCP ([`PATTERN`]).
    Chat,
    /// The file transfer with this id ([`TRANSFER_PATTERN`]).
    Transfer(u64),
}

/// The Noise protocol name of a file transfer: AES-256-GCM, because its datagrams are
/// sealed by the hardware AES of the machine (see `p2p::transfer::crypto`).
pub const TRANSFER_PATTERN: &str = "Noise_KKpsk0_25519_AESGCM_BLAKE2s";

impl Purpose {
    fn pattern(self) -> &'static str {
        match self {
            Purpose::Chat => PATTERN,
            Purpose::Transfer(_) => TRANSFER_PATTERN,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Purpose::Chat => "confab private chat",
            Purpose::Transfer(_) => "confab file transfer",
        }
    }
}

/// The handshake state for a link from `initiator` to `responder`, on our side (`dialling`
/// or not), with our key, theirs, the token's psk and both names in the prologue.
pub fn handshake(
    keys: &Keys<'_>,
    purpose: Purpose,
    initiator: &str,
    responder: &str,
    dialling: bool,
) -> Result<HandshakeState, NoiseError> {
    let params = purpose.pattern().parse().expect("the pattern names are valid");
    let psk = zeroize::Zeroizing::new(psk(purpose, keys.token));
    let prologue = prologue(purpose, initiator, responder);
    let builder = snow::Builder::new(params)
        .local_private_key(keys.identity.secret())
        .and_then(|b| b.remote_public_key(&keys.peer_key.0))
        .and_then(|b| b.psk(0, &psk))
        .and_then(|b| b.prologue(&prologue))
        .map_err(NoiseError::Handshake)?;
    let state = if dialling { builder.build_initiator() } else { builder.build_responder() };
    state.map_err(NoiseError::Handshake)
}

/// The handshake's pre-shared key: SHA-256 of the token, under a label of its own.
fn psk(purpose: Purpose, token: &Token) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(format!("{} psk v1", purpose.label()));
    hash.update(token.0);
    hash.finalize().into()
}

/// What both sides must agree on besides the keys: the protocol, what is opened, and who
/// dials whom.
fn prologue(purpose: Purpose, initiator: &str, responder: &str) -> Vec<u8> {
    let mut prologue = format!("{} {PROTOCOL_VERSION}", purpose.label()).into_bytes();
    if let Purpose::Transfer(id) = purpose {
        prologue.extend(id.to_be_bytes());
    }
    for name in [initiator, responder] {
        prologue.extend((name.len() as u32).to_be_bytes());
        prologue.extend(name.as_bytes());
    }
    prologue
}

/// An open link's encryption, both directions.
pub struct Cipher {
    transport: TransportState,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    fn from(state: HandshakeState) -> Result<Self, NoiseError> {
        Ok(Self { transport: state.into_transport_mode().map_err(NoiseError::Handshake)? })
    }

    /// `msg`, sealed into a frame.
    pub fn seal(&mut self, msg: &ChatMessage) -> Result<PeerMessage, NoiseError> {
        let plain = rmp_serde::to_vec(msg).expect("chat messages always encode");
        if plain.len() + TAG > MAX_MESSAGE {
            return Err(NoiseError::TooLong(plain.len()));
        }
        let mut sealed = vec![0; plain.len() + TAG];
        let len =
            self.transport.write_message(&plain, &mut sealed).map_err(|_| NoiseError::Forged)?;
        sealed.truncate(len);
        Ok(PeerMessage::Sealed(sealed))
    }

    /// The message in a [`PeerMessage::Sealed`] frame's bytes.
    pub fn open(&mut self, sealed: &[u8]) -> Result<ChatMessage, NoiseError> {
        if sealed.len() > MAX_MESSAGE {
            return Err(NoiseError::Forged);
        }
        let mut plain = vec![0; sealed.len()];
        let len =
            self.transport.read_message(sealed, &mut plain).map_err(|_| NoiseError::Forged)?;
        Ok(rmp_serde::from_slice(&plain[..len])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Side {
        name: &'static str,
        identity: Identity,
    }

    fn side(name: &'static str) -> Side {
        Side { name, identity: Identity::generate() }
    }

    fn keys<'a>(
        me: &'a Side,
        peer: &'a Side,
        peer_key: &'a PublicKey,
        token: &'a Token,
    ) -> Keys<'a> {
        Keys { identity: &me.identity, me: me.name, peer: peer.name, peer_key, token }
    }

    fn handshake_bytes(msg: &PeerMessage) -> &[u8] {
        match msg {
            PeerMessage::Hello { handshake, .. } | PeerMessage::Accepted { handshake, .. } => {
                handshake
            }
            other => panic!("not a handshake frame: {other:?}"),
        }
    }

    fn sealed_bytes(msg: &PeerMessage) -> &[u8] {
        match msg {
            PeerMessage::Sealed(bytes) => bytes,
            other => panic!("not sealed: {other:?}"),
        }
    }

    fn text(s: &str) -> ChatMessage {
        ChatMessage::Text { text: s.into(), sent_at: 1 }
    }

    /// A link `dialler` opened to `listener` with `token`: the dialler's cipher, then the
    /// listener's.
    fn open_link(dialler: &Side, listener: &Side, token: &Token) -> (Cipher, Cipher) {
        let (d_key, l_key) = (dialler.identity.public(), listener.identity.public());
        let (dialling, hello) = initiate(keys(dialler, listener, &l_key, token)).unwrap();
        let (at_listener, accepted) =
            respond(keys(listener, dialler, &d_key, token), handshake_bytes(&hello)).unwrap();
        (dialling.finish(handshake_bytes(&accepted)).unwrap(), at_listener)
    }

    #[test]
    fn both_sides_open_the_link_and_read_each_other() {
        let (alice, bob) = (side("alice"), side("bob"));
        let (mut at_alice, mut at_bob) = open_link(&alice, &bob, &Token::random());
        for i in 0..3 {
            let sealed = at_alice.seal(&text(&format!("hi {i}"))).unwrap();
            assert_eq!(at_bob.open(sealed_bytes(&sealed)).unwrap(), text(&format!("hi {i}")));
            let sealed = at_bob.seal(&text("yo")).unwrap();
            assert_eq!(at_alice.open(sealed_bytes(&sealed)).unwrap(), text("yo"));
        }
        let plain = rmp_serde::to_vec(&text("secret words")).unwrap();
        let sealed = at_alice.seal(&text("secret words")).unwrap();
        let bytes = sealed_bytes(&sealed);
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain.as_slice()),
            "the text is not in the clear"
        );
    }

    #[test]
    fn a_wrong_token_or_key_or_name_fails_the_listeners_check() {
        let (alice, bob, mallory, token) =
            (side("alice"), side("bob"), side("alice"), Token::random());
        let (a_key, b_key) = (alice.identity.public(), bob.identity.public());
        // The right key, a wrong token (a guess).
        let (_, hello) = initiate(keys(&alice, &bob, &b_key, &Token::random())).unwrap();
        let err = respond(keys(&bob, &alice, &a_key, &token), handshake_bytes(&hello)).unwrap_err();
        assert!(matches!(err, NoiseError::Handshake(_)), "{err}");
        // The right token (sniffed), another key claiming to be alice.
        let (_, hello) = initiate(keys(&mallory, &bob, &b_key, &token)).unwrap();
        assert!(respond(keys(&bob, &alice, &a_key, &token), handshake_bytes(&hello)).is_err());
        // Alice's hello, presented under another name (the listener expects carol).
        let carol = side("carol");
        let (_, hello) = initiate(keys(&alice, &bob, &b_key, &token)).unwrap();
        assert!(respond(keys(&bob, &carol, &a_key, &token), handshake_bytes(&hello)).is_err());
    }

    #[test]
    fn the_dialler_refuses_a_listener_without_the_vouched_key() {
        let (alice, bob, mallory, token) =
            (side("alice"), side("bob"), side("bob"), Token::random());
        let (a_key, b_key) = (alice.identity.public(), bob.identity.public());
        let (dialling, hello) = initiate(keys(&alice, &bob, &b_key, &token)).unwrap();
        // Mallory answers at bob's address with her own key; she cannot open alice's hello
        // (it is for bob's key), so she makes an answer of her own.
        assert!(respond(keys(&mallory, &alice, &a_key, &token), handshake_bytes(&hello)).is_err());
        let (_, fake_hello) =
            initiate(keys(&alice, &mallory, &mallory.identity.public(), &token)).unwrap();
        let (_, fake_answer) =
            respond(keys(&mallory, &alice, &a_key, &token), handshake_bytes(&fake_hello)).unwrap();
        assert!(dialling.finish(handshake_bytes(&fake_answer)).is_err());
    }

    #[test]
    fn an_altered_replayed_or_reordered_frame_does_not_open() {
        let (alice, bob, token) = (side("alice"), side("bob"), Token::random());
        let (mut at_alice, mut at_bob) = open_link(&alice, &bob, &token);
        let mut altered = sealed_bytes(&at_alice.seal(&text("pay 10")).unwrap()).to_vec();
        altered[3] ^= 1;
        assert!(matches!(at_bob.open(&altered), Err(NoiseError::Forged)));

        let (mut a2, mut b2) = open_link(&alice, &bob, &token);
        let first = sealed_bytes(&a2.seal(&text("one")).unwrap()).to_vec();
        let second = sealed_bytes(&a2.seal(&text("two")).unwrap()).to_vec();
        assert!(b2.open(&second).is_err(), "out of order");

        let (mut a3, mut b3) = open_link(&alice, &bob, &token);
        let one = sealed_bytes(&a3.seal(&text("one")).unwrap()).to_vec();
        assert_eq!(b3.open(&one).unwrap(), text("one"));
        assert!(b3.open(&one).is_err(), "a replay");
        // A frame of another link does not open either.
        assert!(b3.open(&first).is_err());
    }

    #[test]
    fn a_message_too_long_for_a_frame_is_refused_before_sealing() {
        let (mut cipher, _) = open_link(&side("alice"), &side("bob"), &Token::random());
        let err = cipher.seal(&text(&"x".repeat(70_000))).unwrap_err();
        assert!(matches!(err, NoiseError::TooLong(_)), "{err}");
    }
}
