//! The end-to-end encryption of a file transfer: a Noise handshake carried by the offer and
//! its answer, then every datagram sealed with AES-256-GCM.
//!
//! The handshake is the one of a private chat ([`noise`]), `Noise_KKpsk0`, with the AES-GCM
//! cipher ([`TRANSFER_PATTERN`]) and the transfer id bound into the prologue beside both
//! names. Its first message *is* the offer: the offer's plaintext (name, size, chunk size)
//! is its encrypted payload, so the receiver opens it only if it was made by the holder of
//! the key the server vouched for, with the token the server gave both; a sniffed token is
//! worth nothing. The sender sends the very same bytes again until it is answered. The
//! receiver's answer (the second message) rides in front of its datagrams until the sender
//! shows it has it. The payload also carries a random withdrawal secret: a sender that
//! cancels before any answer (and so before it has a key) sends that secret, which nobody
//! else has seen, and the receiver drops the offer.
//!
//! Then each direction has its own key (Noise's split), and a datagram is sealed as Noise
//! seals a transport message, except that the nonce is not implicit: it is the packet
//! number in the clear header, counted up from 1 and never used twice in one direction (a
//! resent chunk gets a new one), as WireGuard and QUIC do over a network that loses and
//! reorders. The header is the associated data. [`PacketKeys::open`] refuses what does not
//! open (altered, damaged, forged) and, with a sliding window of packet numbers, what was
//! already opened (replayed).
//!
//! [`noise`]: crate::p2p::noise
//! [`TRANSFER_PATTERN`]: crate::p2p::noise::TRANSFER_PATTERN

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use snow::HandshakeState;
use zeroize::Zeroizing;

use super::wire::{Framing, Header, TransferId, ANSWER_LEN, HEADER_LEN, MAX_OFFER_LEN, TAG_LEN};
use crate::p2p::noise::{self, Keys, NoiseError, Purpose};
use crate::protocol::Token;

/// Bytes of the withdrawal secret.
pub const WITHDRAW_LEN: usize = 16;

/// Packet numbers a receiving direction remembers behind the highest one it has opened: a
/// datagram that arrives later than this many newer ones is dropped (as if lost, and sent
/// again by the machines).
pub const REPLAY_WINDOW: u64 = 8192;

/// Why a datagram was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The seal did not open: altered, damaged, or not made with the link's key.
    Forged,
    /// A packet number that was opened before.
    Replayed,
}

/// The sender's side of the handshake until the receiver answers.
pub struct Offering {
    state: HandshakeState,
    datagram: Vec<u8>,
    withdraw: Token,
}

impl std::fmt::Debug for Offering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Offering(..)")
    }
}

/// The sender's first datagram for transfer `id`: the handshake's first message with the
/// offer's `plain` text as its payload. `keys.me` is the sender.
pub fn offer(keys: Keys<'_>, id: TransferId, plain: &[u8]) -> Result<Offering, NoiseError> {
    let mut state = noise::handshake(&keys, Purpose::Transfer(id), keys.me, keys.peer, true)?;
    let header = Header { framing: Framing::Offer, id, number: 0 };
    let withdraw = Token::random();
    let mut payload = Zeroizing::new(withdraw.0.to_vec());
    payload.extend_from_slice(plain);
    let mut datagram = header.to_bytes().to_vec();
    datagram.resize(HEADER_LEN + 32 + payload.len() + TAG_LEN, 0);
    let len = state
        .write_message(&payload, &mut datagram[HEADER_LEN..])
        .map_err(NoiseError::Handshake)?;
    datagram.truncate(HEADER_LEN + len);
    Ok(Offering { state, datagram, withdraw })
}

impl Offering {
    /// The offer datagram, the same bytes every time it is sent.
    pub fn datagram(&self) -> &[u8] {
        &self.datagram
    }

    /// The datagram that withdraws the offer of transfer `id`.
    pub fn withdrawal(&self, id: TransferId) -> Vec<u8> {
        let mut datagram = Header { framing: Framing::Withdraw, id, number: 0 }.to_bytes().to_vec();
        datagram.extend_from_slice(&self.withdraw.0);
        datagram
    }

    /// Reads the receiver's `answer`: the link's keys. A wrong answer changes nothing.
    pub fn finish(&mut self, answer: &[u8]) -> Result<PacketKeys, NoiseError> {
        let mut payload = [0; ANSWER_LEN];
        if answer.len() != ANSWER_LEN {
            return Err(NoiseError::Forged);
        }
        self.state.read_message(answer, &mut payload).map_err(NoiseError::Handshake)?;
        let (to_receiver, to_sender) = self.state.dangerously_get_raw_split();
        Ok(PacketKeys::new(Zeroizing::new(to_receiver), Zeroizing::new(to_sender)))
    }
}

/// The receiver's side: what an opened offer gives.
#[derive(Debug)]
pub struct Answer {
    /// The link's keys.
    pub keys: PacketKeys,
    /// The offer's plaintext.
    pub offer: Vec<u8>,
    /// The handshake answer to put in front of datagrams until the sender has it.
    pub answer: [u8; ANSWER_LEN],
    /// The secret of a withdrawal of this offer.
    pub withdraw: Token,
}

/// Opens the offer `datagram` of transfer `id` with the key and token the server gave for
/// the sender `keys.peer`, and makes the answer.
pub fn answer(keys: Keys<'_>, id: TransferId, datagram: &[u8]) -> Result<Answer, NoiseError> {
    let message = datagram.get(HEADER_LEN..).unwrap_or_default();
    if message.len() > 32 + WITHDRAW_LEN + MAX_OFFER_LEN + TAG_LEN {
        return Err(NoiseError::TooLong(message.len()));
    }
    let mut state = noise::handshake(&keys, Purpose::Transfer(id), keys.peer, keys.me, false)?;
    let mut payload = Zeroizing::new(vec![0; message.len()]);
    let len = state.read_message(message, &mut payload).map_err(NoiseError::Handshake)?;
    if len < WITHDRAW_LEN {
        return Err(NoiseError::Forged);
    }
    let withdraw = Token(payload[..WITHDRAW_LEN].try_into().expect("16 bytes"));
    let offer = payload[WITHDRAW_LEN..len].to_vec();
    let mut answer = [0; ANSWER_LEN];
    let written = state.write_message(&[], &mut answer).map_err(NoiseError::Handshake)?;
    debug_assert_eq!(written, ANSWER_LEN);
    let (to_receiver, to_sender) = state.dangerously_get_raw_split();
    // The receiver seals with the receiver-to-sender key and opens with the other.
    let keys = PacketKeys::new(Zeroizing::new(to_sender), Zeroizing::new(to_receiver));
    Ok(Answer { keys, offer, answer, withdraw })
}

/// A link's two directions: the key that seals what this side sends, with its next packet
/// number, and the key that opens what it receives, with the packet numbers seen.
pub struct PacketKeys {
    seal: LessSafeKey,
    open: LessSafeKey,
    next: u64,
    seen: ReplayWindow,
}

impl std::fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKeys").field("next", &self.next).finish_non_exhaustive()
    }
}

impl PacketKeys {
    fn new(seal: Zeroizing<[u8; 32]>, open: Zeroizing<[u8; 32]>) -> Self {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32 bytes is the key size"))
        };
        Self { seal: key(&seal), open: key(&open), next: 1, seen: ReplayWindow::default() }
    }

    /// Seals the datagram being built in `datagram`: the plaintext from `start` on is
    /// encrypted in place and its tag appended, and the header (written at the front with
    /// the next packet number) and everything before `start` are associated data.
    pub fn seal(&mut self, id: TransferId, framing: Framing, datagram: &mut Vec<u8>, start: usize) {
        let number = self.next;
        self.next += 1;
        let header = Header { framing, id, number };
        datagram[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let (aad, plain) = datagram.split_at_mut(start);
        let tag = self
            .seal
            .seal_in_place_separate_tag(nonce(number), Aad::from(&*aad), plain)
            .expect("a datagram is far below the AEAD's length limit");
        datagram.extend_from_slice(tag.as_ref());
    }

    /// Opens the sealed datagram `datagram` whose header is `header`: the plaintext, or
    /// why not. Everything before `start` is associated data. A packet number is let
    /// through once.
    pub fn open<'a>(
        &mut self,
        header: &Header,
        datagram: &'a mut [u8],
        start: usize,
    ) -> Result<&'a [u8], Refused> {
        if datagram.len() < start + TAG_LEN || header.number == 0 {
            return Err(Refused::Forged);
        }
        if self.seen.contains(header.number) {
            return Err(Refused::Replayed);
        }
        let (aad, sealed) = datagram.split_at_mut(start);
        let plain = self
            .open
            .open_in_place(nonce(header.number), Aad::from(&*aad), sealed)
            .map_err(|_| Refused::Forged)?;
        // Only a datagram that opened moves the window: forgeries cannot push it along.
        self.seen.insert(header.number);
        Ok(plain)
    }
}

/// Noise's nonce for AES-GCM: four zero bytes, then the counter, big-endian.
/// Bytes of a punch datagram: the header and the tag.
pub const PUNCH_LEN: usize = HEADER_LEN + 16;

/// The tag of the punches `receiver` sends to `sender` for the offer of `token`: half an
/// HMAC-SHA256 under the token, which only the two of them (and the server) know.
pub fn punch_tag(token: &Token, sender: &str, receiver: &str) -> [u8; 16] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &token.0);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in [b"confab punch".as_slice(), sender.as_bytes(), b"\0", receiver.as_bytes()] {
        context.update(part);
    }
    let mut tag = [0; 16];
    tag.copy_from_slice(&context.sign().as_ref()[..16]);
    tag
}

/// A punch datagram with `tag`.
pub fn punch(tag: &[u8; 16]) -> [u8; PUNCH_LEN] {
    let mut out = [0; PUNCH_LEN];
    out[..HEADER_LEN]
        .copy_from_slice(&Header { framing: Framing::Punch, id: 0, number: 0 }.to_bytes());
    out[HEADER_LEN..].copy_from_slice(tag);
    out
}

fn nonce(number: u64) -> Nonce {
    let mut bytes = [0; 12];
    bytes[4..].copy_from_slice(&number.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The packet numbers opened so far, as the highest one and a bitmap of the
/// [`REPLAY_WINDOW`] below it (RFC 6479's scheme, without its blocks).
#[derive(Debug, Default)]
struct ReplayWindow {
    highest: u64,
    bits: Vec<u64>,
}

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

impl ReplayWindow {
    /// Whether `number` was opened before, or is too old to tell.
    fn contains(&self, number: u64) -> bool {
        if number > self.highest {
            return false;
        }
        if self.highest - number >= REPLAY_WINDOW {
            return true;
        }
        let (word, bit) = Self::slot(number);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn insert(&mut self, number: u64) {
        if self.bits.is_empty() {
            self.bits = vec![0; WORDS];
        }
        if number > self.highest {
            // Clear the bits of the numbers the window moves past (at most all of them).
            let advance = (number - self.highest).min(REPLAY_WINDOW);
            for n in (self.highest + 1..).take(advance as usize) {
                let (word, bit) = Self::slot(n);
                self.bits[word] &= !(1 << bit);
            }
            self.highest = number;
        }
        let (word, bit) = Self::slot(number);
        self.bits[word] |= 1 << bit;
    }

    fn slot(number: u64) -> (usize, u32) {
        ((number / 64 % WORDS as u64) as usize, (number % 64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::identity::Identity;
    use crate::protocol::PublicKey;

    struct Pair {
        alice: Identity,
        bob: Identity,
        token: Token,
    }

    impl Pair {
        fn new() -> Self {
            Pair { alice: Identity::generate(), bob: Identity::generate(), token: Token::random() }
        }

        fn alice_keys<'a>(&'a self, bob_key: &'a PublicKey) -> Keys<'a> {
            Keys {
                identity: &self.alice,
                me: "alice",
                peer: "bob",
                peer_key: bob_key,
                token: &self.token,
            }
        }

        fn bob_keys<'a>(&'a self, alice_key: &'a PublicKey) -> Keys<'a> {
            Keys {
                identity: &self.bob,
                me: "bob",
                peer: "alice",
                peer_key: alice_key,
                token: &self.token,
            }
        }
    }

    /// Alice offers transfer 7 to bob: her keys, then his.
    fn open_link(pair: &Pair) -> (PacketKeys, PacketKeys) {
        let (a, b) = (pair.alice.public(), pair.bob.public());
        let mut offering = offer(pair.alice_keys(&b), 7, b"offer text").unwrap();
        let answered = answer(pair.bob_keys(&a), 7, offering.datagram()).unwrap();
        assert_eq!(answered.offer, b"offer text");
        (offering.finish(&answered.answer).unwrap(), answered.keys)
    }

    fn sealed(keys: &mut PacketKeys, plain: &[u8]) -> Vec<u8> {
        let mut datagram = vec![0; HEADER_LEN];
        datagram.extend_from_slice(plain);
        keys.seal(7, Framing::Sealed, &mut datagram, HEADER_LEN);
        datagram
    }

    fn opened(keys: &mut PacketKeys, datagram: &[u8]) -> Result<Vec<u8>, Refused> {
        let mut bytes = datagram.to_vec();
        let header = Header::parse(&bytes).unwrap();
        keys.open(&header, &mut bytes, HEADER_LEN).map(<[u8]>::to_vec)
    }

    #[test]
    fn both_directions_seal_and_open_and_hide_the_plaintext() {
        let pair = Pair::new();
        let (mut alice, mut bob) = open_link(&pair);
        for i in 0..3u8 {
            let datagram = sealed(&mut alice, &[b'x', i, b'y', b'z']);
            assert!(!datagram.windows(3).any(|w| w == [i, b'y', b'z']), "in the clear");
            assert_eq!(opened(&mut bob, &datagram).unwrap(), [b'x', i, b'y', b'z']);
            let datagram = sealed(&mut bob, b"ack");
            assert_eq!(opened(&mut alice, &datagram).unwrap(), b"ack");
        }
        // A direction's datagram does not open as the other direction's.
        let mine = sealed(&mut alice, b"data");
        assert_eq!(opened(&mut alice, &mine), Err(Refused::Forged));
    }

    #[test]
    fn the_offer_opens_only_with_the_token_and_the_vouched_key() {
        let pair = Pair::new();
        let (a, b) = (pair.alice.public(), pair.bob.public());
        let offering = offer(pair.alice_keys(&b), 7, b"offer").unwrap();
        // The clear offer says nothing of what is offered.
        assert!(!offering.datagram().windows(5).any(|w| w == b"offer"));
        let other = Pair { token: Token::random(), ..Pair::new() };
        let wrong_token = Keys { token: &other.token, ..pair.bob_keys(&a) };
        assert!(answer(wrong_token, 7, offering.datagram()).is_err());
        let mallory = Identity::generate().public();
        assert!(answer(pair.bob_keys(&mallory), 7, offering.datagram()).is_err());
        assert!(answer(pair.bob_keys(&a), 8, offering.datagram()).is_err(), "another id");
        let mut altered = offering.datagram().to_vec();
        *altered.last_mut().unwrap() ^= 1;
        assert!(answer(pair.bob_keys(&a), 7, &altered).is_err());
        assert!(answer(pair.bob_keys(&a), 7, offering.datagram()).is_ok());
    }

    #[test]
    fn only_the_offer_tells_the_withdrawal_secret() {
        let pair = Pair::new();
        let (a, b) = (pair.alice.public(), pair.bob.public());
        let offering = offer(pair.alice_keys(&b), 7, b"offer").unwrap();
        let withdrawal = offering.withdrawal(7);
        let secret = &withdrawal[HEADER_LEN..];
        assert!(!offering.datagram().windows(WITHDRAW_LEN).any(|w| w == secret));
        let answered = answer(pair.bob_keys(&a), 7, offering.datagram()).unwrap();
        assert_eq!(answered.withdraw.0, secret);
        assert_eq!(Header::parse(&withdrawal).unwrap().framing, Framing::Withdraw);
    }

    #[test]
    fn a_wrong_answer_leaves_the_offer_waiting_for_the_right_one() {
        let pair = Pair::new();
        let (a, b) = (pair.alice.public(), pair.bob.public());
        let mut offering = offer(pair.alice_keys(&b), 7, b"offer").unwrap();
        let answered = answer(pair.bob_keys(&a), 7, offering.datagram()).unwrap();
        let mut forged = answered.answer;
        forged[40] ^= 1;
        assert!(offering.finish(&forged).is_err());
        assert!(offering.finish(&answered.answer[..40]).is_err());
        let mut alice = offering.finish(&answered.answer).unwrap();
        let mut bob = answered.keys;
        assert_eq!(opened(&mut bob, &sealed(&mut alice, b"hi")).unwrap(), b"hi");
    }

    #[test]
    fn every_flipped_bit_and_every_replay_is_refused() {
        let pair = Pair::new();
        let (mut alice, mut bob) = open_link(&pair);
        let datagram = sealed(&mut alice, b"chunk of the file");
        for i in 0..datagram.len() {
            let mut bad = datagram.clone();
            bad[i] ^= 0x10;
            // A flipped header byte may no longer parse; either way it does not open.
            if let Ok(header) = Header::parse(&bad) {
                assert!(bob.open(&header, &mut bad, HEADER_LEN).is_err(), "byte {i}");
            }
        }
        assert!(opened(&mut bob, &datagram[..datagram.len() - 1]).is_err(), "truncated");
        assert_eq!(opened(&mut bob, &datagram).unwrap(), b"chunk of the file");
        assert_eq!(opened(&mut bob, &datagram), Err(Refused::Replayed));
    }

    #[test]
    fn reordering_inside_the_window_is_let_through_once() {
        let pair = Pair::new();
        let (mut alice, mut bob) = open_link(&pair);
        let datagrams: Vec<_> = (0..300u32).map(|i| sealed(&mut alice, &i.to_be_bytes())).collect();
        // Every third one first, then the rest backwards, then all again.
        let order: Vec<usize> =
            (0..300).step_by(3).chain((0..300).rev().filter(|i| i % 3 != 0)).collect();
        for &i in &order {
            assert_eq!(opened(&mut bob, &datagrams[i]).unwrap(), (i as u32).to_be_bytes());
        }
        for datagram in &datagrams {
            assert_eq!(opened(&mut bob, datagram), Err(Refused::Replayed));
        }
        // Far behind the newest: refused, as one cannot tell whether it was seen.
        let old = sealed(&mut alice, b"old");
        for _ in 0..REPLAY_WINDOW {
            sealed(&mut alice, b"");
        }
        let newest = sealed(&mut alice, b"new");
        assert_eq!(opened(&mut bob, &newest).unwrap(), b"new");
        assert_eq!(opened(&mut bob, &old), Err(Refused::Replayed));
    }
}
