//! The receiving side of one transfer, as a state machine that does no I/O and reads no clock.
//!
//! It is made when an `Offer` arrives that the server announced, and answers `Waiting`
//! until its user (or `--auto-accept`) decides: [`Receiver::accept`] or
//! [`Receiver::decline`]. After accepting it takes `Data` chunks, keeps the ones that arrive
//! ahead of a gap in memory (at most [`ReceiverConfig::window`] chunks past the cumulative
//! point, the window it advertised), and hands the file bytes out strictly in order through
//! [`Receiver::poll_write`], hashing them as they go. So the temporary file grows from the
//! front and its length is always what a resumed transfer can keep.
//!
//! Chunks may be of any size up to the offer's ceiling (the sender grows them as it learns
//! the path MTU, answered here through `ProbeAck`); each follows the one before it, chunk 0
//! at the resume point. A chunk cut before the path shrank comes in `Part`s, which are put
//! together here (within the same window) before the chunk counts as arrived.
//!
//! Acknowledgements go out after every [`ReceiverConfig::ack_every`] chunks, at once when a
//! chunk arrives out of order or twice (the sender needs to hear about gaps quickly), and at
//! the latest [`ReceiverConfig::ack_delay`] after a chunk. When every chunk is in and the
//! sender's `Finish` has given its SHA-256, the two digests are compared:
//! [`ReceiverEvent::Verified`] asks the driver to move the file into place and report back
//! through [`Receiver::confirm`], and `Done` tells the sender. The machine lingers a while
//! afterwards to answer a repeated `Finish` whose `Done` was lost. A declined offer lingers
//! the same way, declining a repeated offer: a lost `Decline` would otherwise leave the
//! sender offering until its answer timeout, two minutes.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::wire::{self, Ack, Packet, MAX_ACK_RANGES};
use super::TransferError;

/// How long an acknowledgement may wait for more chunks, by default; the sender's tail loss
/// probe allows for it.
pub const ACK_DELAY: Duration = Duration::from_millis(1);

/// Settings of the receiving side.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Chunks past the cumulative point that may be buffered; advertised to the sender.
    pub window: u32,
    /// The transfer fails when nothing is heard from the sender for this long.
    pub idle_timeout: Duration,
    /// Acknowledge after this many chunks...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// How long a finished transfer still answers a repeated `Finish`.
    pub linger: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            window: 16_384,
            idle_timeout: Duration::from_secs(10),
            ack_every: 8,
            ack_delay: ACK_DELAY,
            linger: Duration::from_secs(10),
        }
    }
}

/// What the receiver has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Every byte is in and the SHA-256 matches: save the file, then call
    /// [`Receiver::confirm`].
    Verified,
    /// The transfer is over without success.
    Failed(TransferError),
}

/// Counters of what arrived and was not used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Chunks that had arrived already.
    pub duplicates: u64,
    /// Chunks beyond the window or the file, or of the wrong length.
    pub rejected: u64,
}

/// The datagram the receiver owes the sender, other than acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Waiting,
    Accept,
    Decline,
    Done(bool),
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Asking,
    Receiving,
    Verifying,
    Finished {
        until: Instant,
    },
    /// Declined: a repeated offer (the `Decline` may have been lost) is declined again
    /// until `until`, as `Finished` repeats its `Done`.
    Declined {
        until: Instant,
    },
    Failed,
    Closed,
}

/// The receiving side of one transfer.
#[derive(Debug)]
pub struct Receiver {
    size: u64,
    /// The largest chunk the sender may send, as offered.
    max_chunk: u64,
    config: ReceiverConfig,
    phase: Phase,
    /// Every chunk below `next` has been handed out in order.
    next: u64,
    /// File bytes handed out in order, the resumed prefix included.
    have: u64,
    resumed: u64,
    ahead: BTreeMap<u64, Bytes>,
    /// Bytes of the chunks in `ahead`.
    ahead_bytes: u64,
    /// Chunks arriving in parts, not whole yet.
    parts: BTreeMap<u64, Partial>,
    /// The lengths of the chunks in `parts`, whole.
    parts_bytes: u64,
    /// The size of a path MTU probe to answer.
    probe_ack: Option<u16>,
    hasher: Sha256,
    pending: BytesMut,
    pending_offset: u64,
    sender_sha: Option<[u8; 32]>,
    reply: Option<Reply>,
    unacked: u32,
    ack_now: bool,
    ack_deadline: Option<Instant>,
    last_heard: Instant,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
}

/// A chunk arriving in parts: its bytes so far, and which of them are in.
#[derive(Debug)]
struct Partial {
    data: BytesMut,
    /// Half-open ranges of `data` that have arrived, ascending and disjoint.
    have: Vec<(usize, usize)>,
}

impl Partial {
    /// Takes the part at `offset`; returns whether the chunk is now whole.
    fn put(&mut self, offset: usize, payload: &[u8]) -> bool {
        let end = offset + payload.len();
        self.data[offset..end].copy_from_slice(payload);
        // Merge [offset, end) with every range it touches.
        let (mut start, mut stop) = (offset, end);
        self.have.retain(|&(s, e)| {
            let apart = e < start || s > stop;
            if !apart {
                start = start.min(s);
                stop = stop.max(e);
            }
            apart
        });
        let at = self.have.partition_point(|&(s, _)| s < start);
        self.have.insert(at, (start, stop));
        self.have == [(0, self.data.len())]
    }
}

/// Where a transfer of a `size`-byte file resumes when `have` bytes of it are on disk
/// already: right after them (chunk 0 starts at the resume point, whatever the chunk size).
pub fn resume_point(have: u64, size: u64) -> u64 {
    have.min(size)
}

impl Receiver {
    /// A receiver for an offer of `size` bytes in chunks of at most `chunk_size`, which has
    /// just arrived; it answers `Waiting` at once.
    pub fn new(size: u64, chunk_size: u32, config: ReceiverConfig, now: Instant) -> Self {
        Self {
            size,
            max_chunk: u64::from(chunk_size.max(1)),
            config,
            phase: Phase::Asking,
            next: 0,
            have: 0,
            resumed: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            parts: BTreeMap::new(),
            parts_bytes: 0,
            probe_ack: None,
            hasher: Sha256::new(),
            pending: BytesMut::new(),
            pending_offset: 0,
            sender_sha: None,
            reply: Some(Reply::Waiting),
            unacked: 0,
            ack_now: false,
            ack_deadline: None,
            last_heard: now,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// The user accepted. `resume_from` bytes (from [`resume_point`]) are on disk already,
    /// and `prefix` is the SHA-256 state after hashing exactly them.
    pub fn accept(&mut self, now: Instant, resume_from: u64, prefix: Sha256) {
        if self.phase != Phase::Asking {
            return;
        }
        let resume_from = resume_point(resume_from, self.size);
        self.have = resume_from;
        self.resumed = resume_from;
        self.pending_offset = resume_from;
        self.hasher = prefix;
        self.phase = Phase::Receiving;
        self.reply = Some(Reply::Accept);
        self.last_heard = now;
    }

    /// The user declined; the sender is told, and told again if it offers again.
    pub fn decline(&mut self, now: Instant) {
        if self.phase == Phase::Asking {
            self.phase = Phase::Declined { until: now + self.config.linger };
            self.reply = Some(Reply::Decline);
        }
    }

    /// Gives up the transfer; the sender is told.
    pub fn cancel(&mut self) {
        if matches!(self.phase, Phase::Asking | Phase::Receiving | Phase::Verifying) {
            self.fail(TransferError::Cancelled, Some(Reply::Cancel));
        }
    }

    /// Fails the transfer for a reason found outside the machine (a file write error); the
    /// sender is told.
    pub fn abort(&mut self, error: TransferError) {
        if matches!(self.phase, Phase::Asking | Phase::Receiving | Phase::Verifying) {
            self.fail(error, Some(Reply::Cancel));
        }
    }

    /// The driver tried to save the verified file: `Ok` once it is in place.
    pub fn confirm(&mut self, now: Instant, saved: Result<(), TransferError>) {
        if self.phase != Phase::Verifying {
            return;
        }
        match saved {
            Ok(()) => {
                self.phase = Phase::Finished { until: now + self.config.linger };
                self.reply = Some(Reply::Done(true));
            }
            Err(error) => self.fail(error, Some(Reply::Done(false))),
        }
    }

    /// Takes one packet from the sender (already checked and opened by the endpoint).
    pub fn handle(&mut self, now: Instant, packet: Packet<'_>) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.last_heard = now;
        match (packet, self.phase) {
            (Packet::Offer { .. }, Phase::Asking) => self.reply = Some(Reply::Waiting),
            (Packet::Offer { .. }, Phase::Receiving) => self.reply = Some(Reply::Accept),
            (Packet::Data { seq, payload }, Phase::Receiving) => self.on_data(now, seq, payload),
            (Packet::Part { seq, len, offset, payload }, Phase::Receiving) => {
                self.on_part(now, seq, usize::from(len), usize::from(offset), payload);
            }
            (Packet::Finish { sha256 }, Phase::Receiving) => {
                self.sender_sha = Some(sha256);
                self.ack_now = true;
                self.maybe_verify();
            }
            (Packet::Finish { .. }, Phase::Finished { .. }) => self.reply = Some(Reply::Done(true)),
            (Packet::Offer { .. }, Phase::Declined { .. }) => self.reply = Some(Reply::Decline),
            (Packet::Cancel, Phase::Declined { .. }) => self.phase = Phase::Closed,
            (Packet::Probe { size }, Phase::Receiving | Phase::Verifying) => {
                self.probe_ack = Some(size);
            }
            (Packet::Cancel, Phase::Asking | Phase::Receiving | Phase::Verifying) => {
                self.fail(TransferError::CancelledByPeer, None);
            }
            _ => {}
        }
    }

    /// File bytes to write next, at their offset, if any. They come strictly in order.
    pub fn poll_write(&mut self) -> Option<(u64, Bytes)> {
        if self.pending.is_empty() {
            return None;
        }
        let offset = self.pending_offset;
        let data = self.pending.split().freeze();
        self.pending_offset += data.len() as u64;
        Some((offset, data))
    }

    /// Writes the next datagram to send now, if any, at the end of `out`; returns whether
    /// it did.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if let Some(reply) = self.reply.take() {
            let packet = match reply {
                Reply::Waiting => Packet::Waiting,
                Reply::Accept => {
                    let window = self.config.window;
                    Packet::Accept { resume_from: self.resumed, window }
                }
                Reply::Decline => Packet::Decline,
                Reply::Done(ok) => Packet::Done { ok },
                Reply::Cancel => Packet::Cancel,
            };
            wire::encode(&packet, out);
            return true;
        }
        if let Some(size) = self.probe_ack.take() {
            wire::encode(&Packet::ProbeAck { size }, out);
            return true;
        }
        let due = self.ack_now || self.ack_deadline.is_some_and(|d| now >= d);
        if !due || !matches!(self.phase, Phase::Receiving | Phase::Verifying) {
            return false;
        }
        self.ack_now = false;
        self.ack_deadline = None;
        self.unacked = 0;
        wire::encode(&Packet::Ack(self.ack()), out);
        true
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // An acknowledgement is owed only while receiving: after the verdict, `Done` says it.
        let acking = self.ack_now && matches!(self.phase, Phase::Receiving | Phase::Verifying);
        if self.reply.is_some() || self.probe_ack.is_some() || acking {
            return Some(self.last_heard);
        }
        match self.phase {
            Phase::Closed | Phase::Failed => None,
            Phase::Finished { until } | Phase::Declined { until } => Some(until),
            _ => {
                let idle = self.last_heard + self.config.idle_timeout;
                Some(self.ack_deadline.map_or(idle, |d| d.min(idle)))
            }
        }
    }

    /// Acts on whatever deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Finished { until } | Phase::Declined { until } if now >= until => {
                self.phase = Phase::Closed
            }
            Phase::Asking | Phase::Receiving | Phase::Verifying
                if now >= self.last_heard + self.config.idle_timeout =>
            {
                self.fail(TransferError::PeerSilent, None);
            }
            _ => {}
        }
    }

    /// The next thing to report, if any.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Bytes received in order (a resumed prefix included), and the file size.
    pub fn progress(&self) -> (u64, u64) {
        (self.have, self.size)
    }

    /// True once nothing more will be sent or received.
    pub fn is_over(&self) -> bool {
        self.reply.is_none() && matches!(self.phase, Phase::Failed | Phase::Closed)
    }

    /// True once the file has been verified and saved.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished { .. } | Phase::Closed) && self.have == self.size
    }

    /// Counters of chunks that were not used.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Whether chunk `seq`, `len` bytes long, may be taken, adding `claimed` bytes to what
    /// is held past the in-order point; if not, it is counted as rejected or as a duplicate.
    fn admits(&mut self, seq: u64, len: u64, claimed: u64) -> bool {
        if len == 0 || len > self.max_chunk {
            self.stats.rejected += 1;
            return false;
        }
        if seq < self.next || self.ahead.contains_key(&seq) {
            // A duplicate means an acknowledgement went missing: say again what we have.
            self.stats.duplicates += 1;
            self.ack_now = true;
            return false;
        }
        // Chunks are disjoint pieces of what is left, so together they never pass the end.
        let held = self.have + self.ahead_bytes + self.parts_bytes;
        if held + claimed > self.size || seq >= self.next + u64::from(self.config.window) {
            self.stats.rejected += 1;
            return false;
        }
        true
    }

    fn on_data(&mut self, now: Instant, seq: u64, payload: &[u8]) {
        let len = payload.len() as u64;
        // The whole chunk, where some of its parts came before (the path grew again): what
        // they claimed is its own.
        let partial = self.parts.get(&seq).map_or(0, |p| p.data.len() as u64);
        if !self.admits(seq, len, len.saturating_sub(partial)) {
            return;
        }
        if self.parts.remove(&seq).is_some() {
            self.parts_bytes -= partial;
        }
        if seq == self.next {
            self.take_in_order(payload);
            while let Some(data) = self.ahead.remove(&self.next) {
                self.ahead_bytes -= data.len() as u64;
                self.take_in_order(&data);
            }
        } else {
            self.ahead_bytes += len;
            self.ahead.insert(seq, Bytes::copy_from_slice(payload));
            self.ack_now = true;
        }
        self.unacked += 1;
        if self.unacked >= self.config.ack_every || self.have == self.size {
            self.ack_now = true;
        }
        self.ack_deadline.get_or_insert(now + self.config.ack_delay);
        self.maybe_verify();
    }

    /// A part of chunk `seq`, `len` bytes long in all (the wire has checked that the part
    /// lies inside it). The chunk is taken as a `Data` once every byte of it is in.
    fn on_part(&mut self, now: Instant, seq: u64, len: usize, offset: usize, payload: &[u8]) {
        // The first part of a chunk claims the whole chunk's length.
        let claimed = if self.parts.contains_key(&seq) { 0 } else { len as u64 };
        if !self.admits(seq, len as u64, claimed) {
            return;
        }
        self.parts_bytes += claimed;
        let partial = self
            .parts
            .entry(seq)
            .or_insert_with(|| Partial { data: BytesMut::zeroed(len), have: Vec::new() });
        // The same chunk always has the same length; a part that says otherwise is broken.
        if partial.data.len() != len {
            self.stats.rejected += 1;
            return;
        }
        if partial.put(offset, payload) {
            let whole = self.parts.remove(&seq).map(|p| p.data.freeze()).unwrap_or_default();
            self.parts_bytes -= whole.len() as u64;
            self.on_data(now, seq, &whole);
        }
    }

    fn take_in_order(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.pending.extend_from_slice(data);
        self.have += data.len() as u64;
        self.next += 1;
    }

    fn maybe_verify(&mut self) {
        let Some(theirs) = self.sender_sha else {
            return;
        };
        if self.phase != Phase::Receiving || self.have != self.size {
            return;
        }
        let ours: [u8; 32] = self.hasher.clone().finalize().into();
        if ours == theirs {
            self.phase = Phase::Verifying;
            self.events.push_back(ReceiverEvent::Verified);
        } else {
            self.fail(TransferError::HashMismatch, Some(Reply::Done(false)));
        }
    }

    fn fail(&mut self, error: TransferError, reply: Option<Reply>) {
        self.phase = Phase::Failed;
        self.ack_now = false;
        self.ack_deadline = None;
        self.reply = reply;
        self.events.push_back(ReceiverEvent::Failed(error));
    }

    fn ack(&self) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &seq in self.ahead.keys() {
            if let Some(last) = ranges.last_mut().filter(|last| last.1 == seq) {
                last.1 = seq + 1;
            } else if ranges.len() == MAX_ACK_RANGES {
                break;
            } else {
                ranges.push((seq, seq + 1));
            }
        }
        Ack { cumulative: self.next, ranges }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiving(size: u64, now: Instant) -> Receiver {
        let mut receiver = Receiver::new(size, 1000, ReceiverConfig::default(), now);
        receiver.accept(now, 0, Sha256::new());
        receiver
    }

    fn part(seq: u64, len: u16, offset: u16, payload: &[u8]) -> Packet<'_> {
        Packet::Part { seq, len, offset, payload }
    }

    fn written(receiver: &mut Receiver) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((offset, data)) = receiver.poll_write() {
            assert_eq!(offset, out.len() as u64);
            out.extend_from_slice(&data);
        }
        out
    }

    #[test]
    fn parts_in_any_order_make_a_chunk_and_only_a_whole_chunk_counts() {
        let now = Instant::now();
        let file: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let mut receiver = receiving(1500, now);
        // Chunk 1 (500 bytes, whole) comes before chunk 0, which comes in three parts, the
        // last twice and overlapping.
        receiver.handle(now, Packet::Data { seq: 1, payload: &file[1000..] });
        receiver.handle(now, part(0, 1000, 600, &file[600..1000]));
        receiver.handle(now, part(0, 1000, 0, &file[..400]));
        assert!(written(&mut receiver).is_empty(), "chunk 0 is not whole yet");
        assert_eq!(receiver.ack().cumulative, 0);
        receiver.handle(now, part(0, 1000, 300, &file[300..700]));
        assert_eq!(written(&mut receiver), file);
        assert_eq!(receiver.ack(), Ack { cumulative: 2, ranges: Vec::new() });
        // A late part of a chunk that is in is a duplicate, not a new chunk.
        receiver.handle(now, part(0, 1000, 0, &file[..400]));
        assert_eq!(receiver.stats(), ReceiverStats { duplicates: 1, rejected: 0 });
    }

    #[test]
    fn parts_that_do_not_fit_are_refused() {
        let now = Instant::now();
        let mut receiver = receiving(1500, now);
        // Longer than the offer's chunk ceiling.
        receiver.handle(now, part(0, 1001, 0, &[1; 10]));
        // Two lengths for one chunk.
        receiver.handle(now, part(0, 1000, 0, &[1; 10]));
        receiver.handle(now, part(0, 900, 10, &[1; 10]));
        // Past the end of the file, with chunk 0's 1000 bytes claimed.
        receiver.handle(now, part(1, 600, 0, &[1; 10]));
        assert_eq!(receiver.stats(), ReceiverStats { duplicates: 0, rejected: 3 });
        // The whole chunk, where parts of it came first, is taken (the path grew again).
        receiver.handle(now, Packet::Data { seq: 0, payload: &[2; 1000] });
        receiver.handle(now, Packet::Data { seq: 1, payload: &[3; 500] });
        assert_eq!(written(&mut receiver).len(), 1500);
    }
}
