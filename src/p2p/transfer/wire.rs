//! The datagrams of a file transfer, and their byte layout.
//!
//! Every datagram starts with the same 20-byte header, in the clear:
//!
//! ```text
//! "CF" | version (1) | framing (1) | transfer id (8) | packet number (8) | ...
//! ```
//!
//! What follows depends on the framing ([`Framing`]):
//!
//! - `Offer`: the first Noise handshake message ([`super::crypto`]), whose encrypted
//!   payload is the offer's [plaintext](encode). Its packet number is 0.
//! - `Sealed`: a packet's plaintext sealed with AES-256-GCM under the direction's key, the
//!   packet number as the nonce and the header as associated data, then the 16-byte tag.
//! - `Answered`: the receiver's Noise answer (48 bytes), then a sealed packet as above (the
//!   answer is associated data too). The receiver attaches its answer until the sender has
//!   shown, by sealing something, that it has it.
//! - `Withdraw`: the sender cancels an offer that was never answered, before it has a key
//!   to seal with: 16 secret bytes that only the offer's encrypted payload told the
//!   receiver. Its packet number is 0.
//! - `Punch`: the receiver, told of an offer, opens its NAT toward the sender's addresses
//!   and shows where it can be reached: a 16-byte tag that only the two holders of the
//!   token can make ([`super::crypto::punch_tag`]). Its transfer id and packet number are
//!   0 (the receiver does not know the id yet); the sender learns the address it came from.
//!
//! All integers are big-endian. The [endpoint](super::endpoint) drops any datagram whose
//! header does not parse, whose transfer id or source address is not one it knows, whose
//! seal does not open (altered, forged: no key, no token) or whose packet number it has
//! seen (replayed), before a state machine sees it. A damaged datagram fails the seal as
//! well, so there is no separate checksum. The plaintext is a kind byte and a body:
//!
//! | kind | sent by | body |
//! | --- | --- | --- |
//! | `Offer` | sender | size (8), chunk size (4), name length (2), name (UTF-8) |
//! | `Waiting` | receiver | (none): the offer arrived and the user is being asked |
//! | `Accept` | receiver | resume offset in bytes (8), receive window in chunks (4) |
//! | `Decline` | receiver | (none) |
//! | `Data` | sender | sequence number (8), chunk bytes |
//! | `Part` | sender | sequence number (8), chunk length (2), offset in the chunk (2), bytes |
//! | `Ack` | receiver | cumulative point (8), range count (2), ranges (start 8, end 8)... |
//! | `Finish` | sender | SHA-256 of the whole file (32) |
//! | `Done` | receiver | 1 if the SHA-256 matched and the file is in place, else 0 |
//! | `Cancel` | either | (none) |
//! | `Probe` | sender | datagram size (2), zeros up to that size: a path MTU probe |
//! | `ProbeAck` | receiver | the size of the probe that arrived (2) |
//!
//! Chunk 0 starts at the accepted resume offset and each chunk follows the one before it;
//! chunks are as large as the path carries ([`super::pmtu`]), so their sizes may grow
//! during a transfer. A chunk cut before the path shrank (a route change, a tunnel) no
//! longer fits in one datagram: it goes as `Part`s, pieces of one chunk that the receiver
//! puts together before the chunk counts as arrived. An `Ack` says every chunk below the cumulative point has arrived, and
//! so has every chunk in each half-open range `[start, end)` above it. Only the header is visible on the path:
//! not the name, the size, the kind of a packet or a byte of the file.

use crate::protocol::MAX_FILE_NAME_LEN as MAX_NAME_LEN;

/// Identifies one transfer between two clients; chosen at random by the sender.
pub type TransferId = u64;

/// Bytes of the clear header: magic, version, framing, transfer id, packet number.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8;
/// Bytes of the AEAD tag after a sealed packet.
pub const TAG_LEN: usize = 16;
/// Bytes of the receiver's Noise answer in an `Answered` datagram: an ephemeral key and the
/// tag of an empty payload.
pub const ANSWER_LEN: usize = 32 + TAG_LEN;
/// Bytes of a `Data` datagram that are not file data: header, kind, sequence number, tag.
pub const DATA_OVERHEAD: usize = HEADER_LEN + 1 + 8 + TAG_LEN;
/// Bytes of a `Part` datagram that are not file data: a `Data`'s, then the chunk's length
/// and the part's offset in it.
pub const PART_OVERHEAD: usize = DATA_OVERHEAD + 2 + 2;
/// The default ceiling of the chunk size: a `Data` datagram fills a jumbo frame (MTU 9000)
/// under IPv4 headers. A transfer starts smaller and grows its chunks up to the largest
/// the path carries ([`super::pmtu`]), so this only bounds the search.
pub const DEFAULT_CHUNK_SIZE: u32 = 9000 - 20 - 8 - DATA_OVERHEAD as u32;
/// The largest chunk size allowed: a datagram must fit in 64 KiB.
pub const MAX_CHUNK_SIZE: u32 = 65_000;
/// The most selective-ack ranges one `Ack` carries.
pub const MAX_ACK_RANGES: usize = 64;
/// The longest plaintext of an `Offer`: kind, size, chunk size, name length, name.
pub const MAX_OFFER_LEN: usize = 1 + 8 + 4 + 2 + MAX_NAME_LEN;

const MAGIC: [u8; 2] = *b"CF";
const VERSION: u8 = 2;

/// How the rest of a datagram after its header is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The first handshake message, carrying the offer.
    Offer,
    /// A sealed packet.
    Sealed,
    /// The receiver's handshake answer, then a sealed packet.
    Answered,
    /// The sender withdraws an unanswered offer.
    Withdraw,
    /// The receiver opens its NAT toward the sender and shows its address.
    Punch,
}

/// The clear header every datagram starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// How the rest is framed.
    pub framing: Framing,
    /// The transfer.
    pub id: TransferId,
    /// The packet number: the nonce of the seal, never used twice in one direction.
    pub number: u64,
}

impl Header {
    /// Parses the header at the front of `bytes`; the rest follows it.
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(if bytes.starts_with(&MAGIC) {
                WireError::Truncated
            } else {
                WireError::Foreign
            });
        }
        if bytes[..2] != MAGIC || bytes[2] != VERSION {
            return Err(WireError::Foreign);
        }
        let framing = match bytes[3] {
            1 => Framing::Offer,
            2 => Framing::Sealed,
            3 => Framing::Answered,
            4 => Framing::Withdraw,
            5 => Framing::Punch,
            _ => return Err(WireError::Foreign),
        };
        let mut r = Reader(&bytes[4..HEADER_LEN]);
        Ok(Header { framing, id: r.u64()?, number: r.u64()? })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = match self.framing {
            Framing::Offer => 1,
            Framing::Sealed => 2,
            Framing::Answered => 3,
            Framing::Withdraw => 4,
            Framing::Punch => 5,
        };
        out[4..12].copy_from_slice(&self.id.to_be_bytes());
        out[12..].copy_from_slice(&self.number.to_be_bytes());
        out
    }
}

/// One datagram's meaning, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The sender offers a file.
    Offer {
        /// File size in bytes.
        size: u64,
        /// The largest chunk the sender may send.
        chunk_size: u32,
        /// The file's name, without any directory.
        name: &'a str,
    },
    /// The receiver has the offer and is asking its user.
    Waiting,
    /// The receiver accepts, already holding the first `resume_from` bytes.
    Accept {
        /// Bytes the receiver already has; chunk 0 starts there.
        resume_from: u64,
        /// How many chunks past the cumulative point the receiver will buffer.
        window: u32,
    },
    /// The receiver declines.
    Decline,
    /// One chunk of the file.
    Data {
        /// Chunk number: the chunk follows chunk `seq - 1` (chunk 0 the resume offset).
        seq: u64,
        /// The chunk's bytes.
        payload: &'a [u8],
    },
    /// A piece of a chunk too large for the path as it is now.
    Part {
        /// The chunk's number, as for `Data`.
        seq: u64,
        /// The whole chunk's length.
        len: u16,
        /// Where in the chunk `payload` starts.
        offset: u16,
        /// Those bytes.
        payload: &'a [u8],
    },
    /// What the receiver has.
    Ack(Ack),
    /// Every chunk is acknowledged; this is the file's SHA-256.
    Finish {
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
    },
    /// The receiver's verdict after `Finish`.
    Done {
        /// The SHA-256 matched and the file is saved.
        ok: bool,
    },
    /// Either side gives up the transfer.
    Cancel,
    /// A path MTU probe: the whole datagram is `size` bytes, padded with zeros.
    Probe {
        /// The datagram's size, from header to tag.
        size: u16,
    },
    /// The probe of `size` bytes arrived.
    ProbeAck {
        /// The size of the probe.
        size: u16,
    },
}

/// An acknowledgement: everything below `cumulative`, and everything in `ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Every chunk below this has arrived.
    pub cumulative: u64,
    /// Half-open ranges `[start, end)` above `cumulative` that have arrived, ascending.
    pub ranges: Vec<(u64, u64)>,
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its kind needs.
    #[error("datagram too short")]
    Truncated,
    /// Not a Confab transfer datagram, or another version of the protocol.
    #[error("not a Confab transfer datagram")]
    Foreign,
    /// A kind byte this version does not know.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// The body does not make sense (bad name, ranges out of order, bad chunk size...).
    #[error("malformed datagram body")]
    Malformed,
}

const OFFER: u8 = 1;
const WAITING: u8 = 2;
const ACCEPT: u8 = 3;
const DECLINE: u8 = 4;
const DATA: u8 = 5;
const ACK: u8 = 6;
const FINISH: u8 = 7;
const DONE: u8 = 8;
const CANCEL: u8 = 9;
const PROBE: u8 = 10;
const PROBE_ACK: u8 = 11;
const PART: u8 = 12;

/// The smallest probe: header, kind, size and tag.
const MIN_PROBE: usize = HEADER_LEN + 3 + TAG_LEN;

/// Parses one packet's plaintext (after the seal is opened). Nothing is trusted: every
/// length is checked before it is used.
pub fn parse(plain: &[u8]) -> Result<Packet<'_>, WireError> {
    let Some((&kind, body)) = plain.split_first() else {
        return Err(WireError::Truncated);
    };
    let mut r = Reader(body);
    let packet = match kind {
        OFFER => {
            let size = r.u64()?;
            let chunk_size = r.u32()?;
            let len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| WireError::Malformed)?;
            if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE || len > MAX_NAME_LEN {
                return Err(WireError::Malformed);
            }
            Packet::Offer { size, chunk_size, name }
        }
        WAITING => Packet::Waiting,
        ACCEPT => Packet::Accept { resume_from: r.u64()?, window: r.u32()? },
        DECLINE => Packet::Decline,
        DATA => {
            let seq = r.u64()?;
            return Ok(Packet::Data { seq, payload: r.0 });
        }
        PART => {
            let (seq, len, offset) = (r.u64()?, r.u16()?, r.u16()?);
            let payload = r.0;
            // A non-empty piece lying inside a chunk no larger than any chunk may be.
            let end = usize::from(offset) + payload.len();
            if payload.is_empty() || end > usize::from(len) || u32::from(len) > MAX_CHUNK_SIZE {
                return Err(WireError::Malformed);
            }
            return Ok(Packet::Part { seq, len, offset, payload });
        }
        ACK => {
            let cumulative = r.u64()?;
            let count = usize::from(r.u16()?);
            if count > MAX_ACK_RANGES {
                return Err(WireError::Malformed);
            }
            let mut ranges = Vec::with_capacity(count);
            let mut floor = cumulative;
            for _ in 0..count {
                let (start, end) = (r.u64()?, r.u64()?);
                // Ascending, non-empty, disjoint and above the cumulative point.
                if start <= floor || end <= start {
                    return Err(WireError::Malformed);
                }
                ranges.push((start, end));
                floor = end;
            }
            Packet::Ack(Ack { cumulative, ranges })
        }
        FINISH => Packet::Finish { sha256: r.array()? },
        DONE => Packet::Done { ok: r.u8()? == 1 },
        CANCEL => Packet::Cancel,
        PROBE => {
            let size = r.u16()?;
            // The padding is the probe: it must bring the datagram to the size it claims.
            if plain.len() + HEADER_LEN + TAG_LEN != usize::from(size) {
                return Err(WireError::Malformed);
            }
            return Ok(Packet::Probe { size });
        }
        PROBE_ACK => Packet::ProbeAck { size: r.u16()? },
        other => return Err(WireError::UnknownKind(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(packet)
}

/// Appends `packet`'s plaintext (kind and body) to `out`, to be sealed.
pub fn encode(packet: &Packet<'_>, out: &mut Vec<u8>) {
    let kind = match packet {
        Packet::Offer { .. } => OFFER,
        Packet::Waiting => WAITING,
        Packet::Accept { .. } => ACCEPT,
        Packet::Decline => DECLINE,
        Packet::Data { .. } => DATA,
        Packet::Part { .. } => PART,
        Packet::Ack(_) => ACK,
        Packet::Finish { .. } => FINISH,
        Packet::Done { .. } => DONE,
        Packet::Cancel => CANCEL,
        Packet::Probe { .. } => PROBE,
        Packet::ProbeAck { .. } => PROBE_ACK,
    };
    let start = out.len();
    out.push(kind);
    match packet {
        Packet::Offer { size, chunk_size, name } => {
            let name = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&chunk_size.to_be_bytes());
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
        }
        Packet::Accept { resume_from, window } => {
            out.extend_from_slice(&resume_from.to_be_bytes());
            out.extend_from_slice(&window.to_be_bytes());
        }
        Packet::Data { seq, payload } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(payload);
        }
        Packet::Part { seq, len, offset, payload } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(payload);
        }
        Packet::Ack(ack) => {
            let ranges = &ack.ranges[..ack.ranges.len().min(MAX_ACK_RANGES)];
            out.extend_from_slice(&ack.cumulative.to_be_bytes());
            out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
            for (start, end) in ranges {
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&end.to_be_bytes());
            }
        }
        Packet::Finish { sha256 } => out.extend_from_slice(sha256),
        Packet::Done { ok } => out.push(u8::from(*ok)),
        Packet::Probe { size } => {
            out.extend_from_slice(&size.to_be_bytes());
            let plain = usize::from(*size).max(MIN_PROBE) - HEADER_LEN - TAG_LEN;
            out.resize(start + plain, 0);
        }
        Packet::ProbeAck { size } => out.extend_from_slice(&size.to_be_bytes()),
        Packet::Waiting | Packet::Decline | Packet::Cancel => {}
    }
}

/// Cuts fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(packet: Packet<'_>) {
        let mut out = Vec::new();
        encode(&packet, &mut out);
        assert_eq!(parse(&out), Ok(packet));
    }

    #[test]
    fn every_kind_round_trips() {
        let payload = [1u8, 2, 3];
        let samples = [
            Packet::Offer { size: 5 << 32, chunk_size: 1400, name: "clip.mp4" },
            Packet::Waiting,
            Packet::Accept { resume_from: 2800, window: 4096 },
            Packet::Decline,
            Packet::Data { seq: 9, payload: &payload },
            Packet::Data { seq: 0, payload: &[] },
            Packet::Part { seq: 9, len: 1000, offset: 997, payload: &payload },
            Packet::Ack(Ack { cumulative: 4, ranges: vec![(6, 8), (10, 11)] }),
            Packet::Ack(Ack::default()),
            Packet::Finish { sha256: [9; 32] },
            Packet::Done { ok: true },
            Packet::Done { ok: false },
            Packet::Cancel,
            Packet::Probe { size: 1500 },
            Packet::Probe { size: MIN_PROBE as u16 },
            Packet::ProbeAck { size: 9000 },
        ];
        for packet in samples {
            // A new kind without a sample here fails to compile.
            match packet {
                Packet::Offer { .. }
                | Packet::Waiting
                | Packet::Accept { .. }
                | Packet::Decline
                | Packet::Data { .. }
                | Packet::Part { .. }
                | Packet::Ack(_)
                | Packet::Finish { .. }
                | Packet::Done { .. }
                | Packet::Cancel
                | Packet::Probe { .. }
                | Packet::ProbeAck { .. } => round_trip(packet),
            }
        }
    }

    #[test]
    fn headers_round_trip_and_strangers_are_foreign() {
        for framing in
            [Framing::Offer, Framing::Sealed, Framing::Answered, Framing::Withdraw, Framing::Punch]
        {
            let header = Header { framing, id: 0x0102_0304_0506_0708, number: 77 };
            assert_eq!(Header::parse(&header.to_bytes()), Ok(header));
        }
        let bytes = Header { framing: Framing::Sealed, id: 1, number: 2 }.to_bytes();
        for len in 0..HEADER_LEN {
            assert!(Header::parse(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut other_version = bytes;
        other_version[2] = 1;
        assert_eq!(Header::parse(&other_version), Err(WireError::Foreign));
        assert_eq!(Header::parse(b"GET / HTTP/1.1\r\n\r\n..."), Err(WireError::Foreign));
    }

    #[test]
    fn a_data_datagram_of_the_default_ceiling_fills_a_jumbo_frame() {
        let mut out = Vec::new();
        let chunk = vec![0; DEFAULT_CHUNK_SIZE as usize];
        encode(&Packet::Data { seq: 1, payload: &chunk }, &mut out);
        let datagram = HEADER_LEN + out.len() + TAG_LEN;
        assert_eq!(datagram, DEFAULT_CHUNK_SIZE as usize + DATA_OVERHEAD);
        assert_eq!(datagram, 9000 - 20 - 8);
    }

    #[test]
    fn a_probe_is_exactly_the_size_it_claims() {
        let mut out = Vec::new();
        encode(&Packet::Probe { size: 1452 }, &mut out);
        assert_eq!(HEADER_LEN + out.len() + TAG_LEN, 1452);
        // A probe cut short, or padded further, does not say the path carries its size.
        assert_eq!(parse(&out[..out.len() - 1]), Err(WireError::Malformed));
        out.push(0);
        assert_eq!(parse(&out), Err(WireError::Malformed));
    }

    #[test]
    fn a_part_must_be_a_piece_inside_its_chunk() {
        let payload = [7u8; 10];
        let bad = [
            Packet::Part { seq: 1, len: 1000, offset: 991, payload: &payload },
            Packet::Part { seq: 1, len: 1000, offset: 0, payload: &[] },
            Packet::Part { seq: 1, len: u16::MAX, offset: 0, payload: &payload },
        ];
        for packet in bad {
            let mut out = Vec::new();
            encode(&packet, &mut out);
            assert_eq!(parse(&out), Err(WireError::Malformed), "{packet:?}");
        }
        let mut out = Vec::new();
        let part = vec![0; 100];
        encode(&Packet::Part { seq: 1, len: 1000, offset: 900, payload: &part }, &mut out);
        assert_eq!(HEADER_LEN + out.len() + TAG_LEN, part.len() + PART_OVERHEAD);
    }

    #[test]
    fn truncated_bodies_are_refused() {
        let mut out = Vec::new();
        encode(&Packet::Ack(Ack { cumulative: 3, ranges: vec![(5, 9)] }), &mut out);
        for len in 0..out.len() {
            assert!(parse(&out[..len]).is_err(), "truncated to {len} went unnoticed");
        }
    }

    #[test]
    fn ack_ranges_must_ascend_above_the_cumulative_point() {
        let bad = [vec![(4, 6)], vec![(6, 6)], vec![(6, 8), (7, 9)], vec![(8, 9), (5, 6)]];
        for ranges in bad {
            let mut out = Vec::new();
            encode(&Packet::Ack(Ack { cumulative: 4, ranges }), &mut out);
            assert_eq!(parse(&out), Err(WireError::Malformed));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Header::parse(&bytes);
            let _ = parse(&bytes);
        }

        #[test]
        fn random_bodies_of_every_kind_never_panic(
            kind in 0u8..14,
            body in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&body);
            let _ = parse(&bytes);
        }
    }
}
