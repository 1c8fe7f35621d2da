//! The sending side of one transfer, as a state machine that does no I/O and reads no clock.
//!
//! The driver feeds it datagrams from the receiver ([`Sender::handle`]), file bytes when it
//! asks for them ([`Sender::wants_data`], [`Sender::push_data`]) and the time; it hands back
//! datagrams to send ([`Sender::poll_transmit`]), the next deadline ([`Sender::poll_timeout`])
//! and what happened ([`Sender::poll_event`]).
//!
//! The life of a transfer: `Offer` every [`SenderConfig::offer_interval`] until the receiver
//! answers (`Waiting` while its user decides, then `Accept` or `Decline`); then `Data`
//! chunks, as many in flight as [`Congestion`] allows, paced, and never more than the
//! receiver's window past its cumulative point; once every chunk is acknowledged, `Finish`
//! with the SHA-256 until the receiver says `Done`.
//!
//! Chunks start at a size every path carries and grow while the transfer runs: padded
//! `Probe`s, outside the congestion window, find the largest datagram the path carries
//! ([`Search`]), and chunks read after an answered probe are cut to it. A lost probe is not
//! congestion. When the path shrinks under the transfer (the search's black hole
//! detection), new chunks are cut to the smaller size, and a chunk cut earlier that no
//! longer fits in one datagram goes as `Part`s, each sent and paced as a datagram of its
//! own but acknowledged, lost and retransmitted as the one chunk it is.
//!
//! Loss: a chunk is lost when one sent [`REORDER_THRESHOLD`] transmissions after it has been
//! acknowledged (the gaps that selective acks reveal are retransmitted at once, without
//! waiting for a timeout), or when the retransmission timeout of [`RttEstimator`] expires
//! with nothing acknowledged, which marks everything in flight lost. At the tail of a
//! transfer no later chunk is left to reveal a gap, so before that timeout comes a tail loss
//! probe (RFC 8985): when nothing has been acknowledged for about two round trips, the
//! oldest chunk in flight is sent again, once, and the acknowledgement it brings shows the
//! rest. It is not taken for congestion.
//!
//! The SHA-256 is computed over the file bytes as they are pushed, in order; on a resumed
//! transfer the driver pushes the prefix the receiver already has too, which is hashed but
//! not sent.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::congestion::{AckSample, Congestion};
use super::pmtu::Search;
use super::rtt::RttEstimator;
use super::wire::{self, Ack, Packet, DATA_OVERHEAD, DEFAULT_CHUNK_SIZE, PART_OVERHEAD};
use super::TransferError;

/// A chunk is lost when a chunk sent this many transmissions later has been acknowledged.
pub const REORDER_THRESHOLD: u64 = 3;
/// The most file bytes asked for in one [`Sender::wants_data`] while hashing a resumed prefix.
const PREFIX_READ: u64 = 1 << 20;
/// The most chunks asked for in one [`Sender::wants_data`].
const READ_CHUNKS: u64 = 64;

/// Settings of the sending side.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The most file bytes per `Data` datagram: the ceiling of the path MTU search.
    pub chunk_size: u32,
    /// How often the offer is sent again until the receiver answers.
    pub offer_interval: Duration,
    /// How long the receiver's user may take to accept.
    pub answer_timeout: Duration,
    /// The transfer fails when nothing is heard from the receiver for this long.
    pub idle_timeout: Duration,
    /// Floor of the retransmission timeout.
    pub min_rto: Duration,
    /// Ceiling of the retransmission timeout.
    pub max_rto: Duration,
    /// Chunks read ahead of the first unsent one.
    pub read_ahead: u64,
    /// Most chunks in flight, whatever the receiver's window.
    pub max_window: u64,
    /// Where the congestion model's `ProbeRtt` phases are counted from
    /// ([`super::congestion::wall_clock_epoch`] in the engine, so that transfers through one
    /// bottleneck probe together); `None`: from the sender's start.
    pub probe_rtt_epoch: Option<Instant>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            offer_interval: Duration::from_millis(500),
            answer_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(10),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(5),
            read_ahead: 512,
            max_window: 32_768,
            probe_rtt_epoch: None,
        }
    }
}

/// What the sender has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The offer arrived; the receiver's user is being asked.
    Waiting,
    /// The receiver accepted, already holding the first `resume_from` bytes.
    Accepted {
        /// Bytes the receiver had from an earlier attempt.
        resume_from: u64,
    },
    /// The receiver has the whole file, checked and saved.
    Finished,
    /// The transfer is over without success.
    Failed(TransferError),
}

/// Counters for the curious (and the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// `Data` datagrams sent, first copies and retransmissions.
    pub data_sent: u64,
    /// Of those, retransmissions.
    pub retransmitted: u64,
    /// Retransmission timeouts that expired.
    pub timeouts: u64,
    /// Path MTU probes sent.
    pub probes: u64,
    /// Tail loss probes sent.
    pub tail_probes: u64,
    /// The chunk size in use (the largest the path was found to carry).
    pub chunk_size: u32,
    /// Times the path stopped carrying the size in use, so that it fell back.
    pub black_holes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offering { since: Instant, next: Instant },
    Sending,
    Finishing { next: Instant },
    Finished,
    Failed,
}

/// One transmission of a chunk: what the rate and RTT samples need.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    order: u64,
    retransmitted: bool,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
}

#[derive(Debug, Clone, Copy)]
enum SlotState {
    Unsent,
    InFlight(Sent),
    Lost,
    Acked,
}

#[derive(Debug)]
struct Slot {
    data: Bytes,
    state: SlotState,
}

/// A chunk larger than the path carries now, part way through being sent as `Part`s: the
/// transmission numbered `order` of chunk `seq`, its bytes from `offset` still to go.
#[derive(Debug, Clone, Copy)]
struct Split {
    seq: u64,
    order: u64,
    offset: usize,
}

/// The sending side of one transfer.
#[derive(Debug)]
pub struct Sender {
    name: String,
    size: u64,
    /// The size of new chunks: what the path MTU search allows.
    chunk: u64,
    /// The largest chunk this sender may send, as offered.
    max_chunk: u64,
    search: Search,
    config: SenderConfig,
    phase: Phase,
    offers_sent: u32,
    told_waiting: bool,
    hasher: Sha256,
    digest: Option<[u8; 32]>,
    /// File bytes pushed so far (hashed; beyond the prefix also queued).
    read: u64,
    /// The bytes the receiver has already; chunk 0 starts here.
    resume: u64,
    /// Every chunk below `base` is acknowledged; `slots[0]` is chunk `base`.
    base: u64,
    slots: VecDeque<Slot>,
    /// The next chunk never sent.
    next_new: u64,
    /// The chunk being sent in parts, if one is.
    split: Option<Split>,
    lost: VecDeque<u64>,
    /// Transmissions in the order sent, `(order, seq)`, for loss detection.
    sent_log: VecDeque<(u64, u64)>,
    order: u64,
    largest_acked_order: u64,
    in_flight: u64,
    window: u64,
    rtt: RttEstimator,
    cc: Congestion,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    acked_bytes: u64,
    rto_deadline: Option<Instant>,
    /// When to send a tail loss probe, unless something is acknowledged first.
    pto_deadline: Option<Instant>,
    /// A tail loss probe went out and nothing has been acknowledged since: no second one.
    probed_tail: bool,
    last_heard: Instant,
    goodbye: bool,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
}

impl Sender {
    /// A sender about to offer `name` (`size` bytes) to a peer under IP headers of
    /// `ip_header` bytes ([`super::pmtu::ip_header`]).
    pub fn new(
        name: &str,
        size: u64,
        config: SenderConfig,
        ip_header: usize,
        now: Instant,
    ) -> Self {
        let max_chunk = u64::from(config.chunk_size.clamp(1, wire::MAX_CHUNK_SIZE));
        let search = Search::new(ip_header, max_chunk as usize + DATA_OVERHEAD);
        let datagram = search.current();
        let chunk = (datagram - DATA_OVERHEAD) as u64;
        Self {
            name: name.to_owned(),
            size,
            chunk,
            max_chunk,
            search,
            phase: Phase::Offering { since: now, next: now },
            offers_sent: 0,
            told_waiting: false,
            hasher: Sha256::new(),
            digest: None,
            read: 0,
            resume: 0,
            base: 0,
            slots: VecDeque::new(),
            next_new: 0,
            split: None,
            lost: VecDeque::new(),
            sent_log: VecDeque::new(),
            order: 0,
            largest_acked_order: 0,
            in_flight: 0,
            window: 1,
            rtt: RttEstimator::new(config.min_rto, config.max_rto),
            cc: Congestion::new(datagram, now, config.probe_rtt_epoch.unwrap_or(now)),
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            acked_bytes: 0,
            rto_deadline: None,
            pto_deadline: None,
            probed_tail: false,
            last_heard: now,
            goodbye: false,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            config,
        }
    }

    /// What this sender offers.
    pub fn offer(&self) -> Packet<'_> {
        Packet::Offer { size: self.size, chunk_size: self.max_chunk as u32, name: &self.name }
    }

    /// Takes one packet from the receiver (already checked and opened by the endpoint).
    pub fn handle(&mut self, now: Instant, packet: Packet<'_>) {
        if self.is_over() {
            return;
        }
        self.last_heard = now;
        match (packet, self.phase) {
            (Packet::Waiting, Phase::Offering { since, .. }) if !self.told_waiting => {
                // The receiver answers the offer at once, before its user decides: the first
                // RTT sample, which also times the first path MTU probes.
                if self.offers_sent == 1 {
                    self.rtt.on_sample(now.saturating_duration_since(since));
                }
                self.told_waiting = true;
                self.events.push_back(SenderEvent::Waiting);
            }
            (Packet::Accept { resume_from, window }, Phase::Offering { since, .. }) => {
                if self.offers_sent == 1 && !self.told_waiting {
                    self.rtt.on_sample(now.saturating_duration_since(since));
                }
                self.accept(resume_from, window);
            }
            (Packet::Decline, Phase::Offering { .. }) => self.fail(TransferError::Declined, false),
            (Packet::Ack(ack), Phase::Sending | Phase::Finishing { .. }) => self.on_ack(now, &ack),
            (Packet::ProbeAck { size }, Phase::Sending | Phase::Finishing { .. })
                if self.search.on_ack(usize::from(size)) =>
            {
                self.follow_path();
            }
            (Packet::Done { ok }, Phase::Sending | Phase::Finishing { .. }) => {
                if ok {
                    self.phase = Phase::Finished;
                    self.events.push_back(SenderEvent::Finished);
                } else {
                    self.fail(TransferError::HashMismatch, false);
                }
            }
            (Packet::Cancel, _) => self.fail(TransferError::CancelledByPeer, false),
            // Duplicates and datagrams that do not fit the phase change nothing.
            _ => {}
        }
    }

    /// The byte range of the file to read and [`push`](Self::push_data) next, if any.
    pub fn wants_data(&self) -> Option<Range<u64>> {
        if self.phase != Phase::Sending || self.read >= self.size {
            return None;
        }
        if self.read < self.resume {
            return Some(self.read..self.resume.min(self.read + PREFIX_READ));
        }
        let queued = self.base + self.slots.len() as u64;
        let limit = (self.next_new + self.config.read_ahead)
            .min(self.base + self.config.max_window)
            .min(queued + READ_CHUNKS);
        (queued < limit)
            .then(|| self.read..(self.read + (limit - queued) * self.chunk).min(self.size))
    }

    /// Takes the file bytes of the range [`wants_data`](Self::wants_data) gave. Fewer bytes
    /// than asked (the file shrank) fail the transfer.
    pub fn push_data(&mut self, now: Instant, data: Bytes) {
        let Some(range) = self.wants_data() else {
            return;
        };
        if data.len() as u64 != range.end - range.start {
            self.fail(TransferError::FileChanged, true);
            return;
        }
        self.hasher.update(&data);
        self.read = range.end;
        if range.start >= self.resume {
            let mut rest = data;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(self.chunk as usize));
                self.slots.push_back(Slot { data: piece, state: SlotState::Unsent });
            }
        }
        if self.read == self.size {
            self.digest = Some(self.hasher.clone().finalize().into());
            self.maybe_finish(now);
        }
    }

    /// Writes the next datagram to send now, if any, at the end of `out`; returns whether
    /// it did.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.goodbye {
            self.goodbye = false;
            wire::encode(&Packet::Cancel, out);
            return true;
        }
        match self.phase {
            Phase::Offering { since, next } if now >= next => {
                wire::encode(&self.offer(), out);
                self.offers_sent += 1;
                let since = if self.offers_sent == 1 { now } else { since };
                self.phase = Phase::Offering { since, next: now + self.config.offer_interval };
                true
            }
            Phase::Sending => {
                if let Some(size) = self.search.poll_probe(now, self.rtt.rto()) {
                    wire::encode(&Packet::Probe { size: size as u16 }, out);
                    return true;
                }
                self.transmit_data(now, out)
            }
            Phase::Finishing { next } if now >= next => {
                let sha256 = self.digest.unwrap_or_default();
                wire::encode(&Packet::Finish { sha256 }, out);
                self.phase = Phase::Finishing { next: now + self.rtt.rto() };
                true
            }
            _ => false,
        }
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.goodbye {
            return Some(self.last_heard);
        }
        let idle = self.last_heard + self.config.idle_timeout;
        let deadline = match self.phase {
            Phase::Finished | Phase::Failed => return None,
            Phase::Offering { since, next } => next.min(since + self.config.answer_timeout),
            Phase::Finishing { next } => next,
            Phase::Sending => {
                let pacing = self
                    .has_data_to_send()
                    .then(|| self.cc.next_send_time(self.datagram_len(), self.rtt.srtt()));
                [pacing, self.rto_deadline, self.pto_deadline, self.search.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(idle)
            }
        };
        Some(deadline.min(idle))
    }

    /// Acts on whatever deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_over() {
            return;
        }
        if now >= self.last_heard + self.config.idle_timeout {
            self.fail(TransferError::PeerSilent, false);
            return;
        }
        if let Phase::Offering { since, .. } = self.phase {
            if now >= since + self.config.answer_timeout {
                self.fail(TransferError::NoAnswer, true);
            }
            return;
        }
        if self.rto_deadline.is_some_and(|d| now >= d) {
            self.on_rto();
        } else if self.pto_deadline.is_some_and(|d| now >= d) {
            self.probe_tail();
        }
        self.search.handle_timeout(now);
    }

    /// The local interface refused to send a datagram of `size` bytes as too large
    /// (`EMSGSIZE`): no probe that large is sent again, and if data chunks were that large,
    /// new ones are cut smaller.
    pub fn too_big(&mut self, size: usize) {
        if self.search.too_big(size) {
            self.follow_path();
        }
    }

    /// The next thing to report, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Gives up the transfer; the receiver is told.
    pub fn cancel(&mut self) {
        self.fail(TransferError::Cancelled, true);
    }

    /// Fails the transfer for a reason found outside the machine (a file read error); the
    /// receiver is told.
    pub fn abort(&mut self, error: TransferError) {
        self.fail(error, true);
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Bytes the receiver has acknowledged (a resumed prefix included), and the file size.
    pub fn progress(&self) -> (u64, u64) {
        (self.acked_bytes.min(self.size), self.size)
    }

    /// True once the transfer has finished or failed and nothing is left to send.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Failed) && !self.goodbye
    }

    /// Counters of what was sent.
    pub fn stats(&self) -> SenderStats {
        SenderStats {
            chunk_size: self.chunk as u32,
            probes: self.search.probes_sent(),
            black_holes: self.search.black_holes(),
            ..self.stats
        }
    }

    /// Cuts new chunks to the datagram size the path MTU search allows now.
    fn follow_path(&mut self) {
        let datagram = self.search.current();
        self.chunk = datagram.saturating_sub(DATA_OVERHEAD).max(1) as u64;
        self.cc.set_datagram(datagram);
    }

    fn accept(&mut self, resume_from: u64, window: u32) {
        self.resume = resume_from.min(self.size);
        self.acked_bytes = self.resume;
        self.window = u64::from(window).clamp(1, self.config.max_window);
        self.phase = Phase::Sending;
        self.events.push_back(SenderEvent::Accepted { resume_from: self.acked_bytes });
        if self.size == 0 {
            self.digest = Some(self.hasher.clone().finalize().into());
        }
        self.maybe_finish(self.last_heard);
    }

    /// Moves to `Finishing` once every chunk is acknowledged and the digest is known.
    fn maybe_finish(&mut self, now: Instant) {
        let all_acked = self.read == self.size && self.slots.is_empty();
        if self.phase == Phase::Sending && all_acked && self.digest.is_some() {
            self.phase = Phase::Finishing { next: now };
        }
    }

    fn fail(&mut self, error: TransferError, tell_peer: bool) {
        if self.is_over() {
            return;
        }
        self.phase = Phase::Failed;
        self.goodbye = tell_peer;
        self.events.push_back(SenderEvent::Failed(error));
    }

    fn datagram_len(&self) -> usize {
        self.chunk as usize + DATA_OVERHEAD
    }

    /// Whether a chunk is waiting that only pacing or the window holds back.
    fn has_data_to_send(&self) -> bool {
        if self.live_split().is_some() {
            return true;
        }
        let new = self.next_new < self.base + self.slots.len() as u64
            && self.next_new < self.base + self.window;
        (!self.lost.is_empty() || new) && self.window_open()
    }

    /// Whether the congestion window has room for one more datagram.
    fn window_open(&self) -> bool {
        let len = self.datagram_len() as u64;
        self.in_flight + len <= self.cc.window().max(len)
    }

    fn transmit_data(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if let Some(split) = self.live_split() {
            return self.transmit_part(now, split, out);
        }
        self.split = None;
        if !self.window_open() {
            return false;
        }
        if !self.cc.can_send(now, self.datagram_len(), self.rtt.srtt()) {
            return false;
        }
        let Some((seq, retransmitted)) = self.next_to_send() else {
            return false;
        };
        let sent = Sent {
            at: now,
            order: self.order,
            retransmitted,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
        };
        self.sent_log.push_back((self.order, seq));
        self.order += 1;
        let slot = &mut self.slots[(seq - self.base) as usize];
        slot.state = SlotState::InFlight(sent);
        let bytes = slot.data.len();
        self.in_flight += bytes as u64;
        self.stats.retransmitted += u64::from(retransmitted);
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
        if !self.probed_tail {
            self.pto_deadline = self.rtt.pto().map(|pto| now + pto);
        }
        if bytes as u64 > self.chunk {
            // Cut before the path shrank: the whole chunk counts as in flight now, and its
            // parts follow one by one, paced.
            let split = Split { seq, order: sent.order, offset: 0 };
            self.split = Some(split);
            return self.transmit_part(now, split, out);
        }
        wire::encode(&Packet::Data { seq, payload: &slot.data }, out);
        self.cc.on_sent(bytes + DATA_OVERHEAD);
        self.stats.data_sent += 1;
        true
    }

    /// The chunk being sent in parts, unless what it was sent for is over: it was
    /// acknowledged, or declared lost (its next transmission starts from its first part).
    fn live_split(&self) -> Option<Split> {
        let split = self.split?;
        let slot = self.slots.get(split.seq.checked_sub(self.base)? as usize)?;
        match slot.state {
            SlotState::InFlight(sent) if sent.order == split.order => Some(split),
            _ => None,
        }
    }

    /// Sends the next part of the chunk of `split`, if pacing allows.
    fn transmit_part(&mut self, now: Instant, split: Split, out: &mut Vec<u8>) -> bool {
        let piece = self.search.current().saturating_sub(PART_OVERHEAD).max(1);
        let data = &self.slots[(split.seq - self.base) as usize].data;
        let end = (split.offset + piece).min(data.len());
        let datagram = end - split.offset + PART_OVERHEAD;
        if !self.cc.can_send(now, datagram, self.rtt.srtt()) {
            return false;
        }
        wire::encode(
            &Packet::Part {
                seq: split.seq,
                len: data.len() as u16,
                offset: split.offset as u16,
                payload: &data[split.offset..end],
            },
            out,
        );
        self.split = (end < data.len()).then_some(Split { offset: end, ..split });
        self.cc.on_sent(datagram);
        self.stats.data_sent += 1;
        true
    }

    /// The chunk to send next: the oldest lost one, else the next new one the receiver's
    /// window allows.
    fn next_to_send(&mut self) -> Option<(u64, bool)> {
        while let Some(seq) = self.lost.pop_front() {
            let still_lost = seq >= self.base
                && matches!(self.slots[(seq - self.base) as usize].state, SlotState::Lost);
            if still_lost {
                return Some((seq, true));
            }
        }
        let queued = self.base + self.slots.len() as u64;
        if self.next_new < queued && self.next_new < self.base + self.window {
            self.next_new += 1;
            return Some((self.next_new - 1, false));
        }
        None
    }

    fn on_ack(&mut self, now: Instant, ack: &Ack) {
        let end = self.base + self.slots.len() as u64;
        if ack.cumulative > end || ack.ranges.last().is_some_and(|r| r.1 > end) {
            return;
        }
        let mut newest: Option<Sent> = None;
        let ranges = std::iter::once((self.base, ack.cumulative)).chain(ack.ranges.iter().copied());
        for (start, stop) in ranges {
            for seq in start.max(self.base)..stop.min(end) {
                let index = (seq - self.base) as usize;
                let len = self.slots[index].data.len() as u64;
                match self.slots[index].state {
                    SlotState::InFlight(sent) => {
                        self.in_flight -= len;
                        if newest.is_none_or(|n| sent.order > n.order) {
                            newest = Some(sent);
                        }
                    }
                    SlotState::Lost => {}
                    // Acknowledging a chunk never sent is a broken peer; ignore it.
                    SlotState::Unsent | SlotState::Acked => continue,
                }
                self.slots[index].state = SlotState::Acked;
                self.delivered += len;
                self.acked_bytes += len;
            }
        }
        while self.slots.front().is_some_and(|s| matches!(s.state, SlotState::Acked)) {
            self.slots.pop_front();
            self.base += 1;
        }
        let Some(sent) = newest else {
            return;
        };
        self.search.on_data_acked();
        self.probed_tail = false;
        let rtt = (!sent.retransmitted).then(|| now.saturating_duration_since(sent.at));
        if let Some(rtt) = rtt {
            self.rtt.on_sample(rtt);
        }
        let send_elapsed = sent.at.saturating_duration_since(sent.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(sent.delivered_time);
        let interval = send_elapsed.max(ack_elapsed).as_secs_f64();
        let rate = (interval > 0.0).then(|| (self.delivered - sent.delivered) as f64 / interval);
        self.delivered_time = now;
        self.first_sent_time = sent.at;
        let sample =
            AckSample { delivered: self.delivered, delivered_at_send: sent.delivered, rate };
        self.cc.on_ack(now, sample, rtt);
        self.largest_acked_order = self.largest_acked_order.max(sent.order);
        self.detect_losses();
        self.rto_deadline = (self.in_flight > 0).then(|| now + self.rtt.rto());
        self.pto_deadline =
            self.rtt.pto().filter(|_| self.in_flight > 0 && !self.probed_tail).map(|p| now + p);
        self.maybe_finish(now);
    }

    /// Marks lost every chunk still in flight that was sent [`REORDER_THRESHOLD`] or more
    /// transmissions before the newest acknowledged one.
    fn detect_losses(&mut self) {
        while let Some(&(order, seq)) = self.sent_log.front() {
            if order + REORDER_THRESHOLD > self.largest_acked_order {
                break;
            }
            self.sent_log.pop_front();
            if seq < self.base {
                continue;
            }
            let index = (seq - self.base) as usize;
            if let SlotState::InFlight(sent) = self.slots[index].state {
                if sent.order == order {
                    self.slots[index].state = SlotState::Lost;
                    self.in_flight -= self.slots[index].data.len() as u64;
                    self.lost.push_back(seq);
                }
            }
        }
    }

    /// Nothing has been acknowledged for a probe timeout: the oldest chunk in flight is
    /// sent again (first, being the oldest lost), once until something is acknowledged.
    fn probe_tail(&mut self) {
        self.pto_deadline = None;
        self.probed_tail = true;
        let oldest = self.slots.iter().position(|s| matches!(s.state, SlotState::InFlight(_)));
        let Some(index) = oldest else {
            return;
        };
        let slot = &mut self.slots[index];
        slot.state = SlotState::Lost;
        self.in_flight -= slot.data.len() as u64;
        self.lost.push_front(self.base + index as u64);
        self.stats.tail_probes += 1;
    }

    /// The retransmission timeout expired: everything in flight is lost.
    fn on_rto(&mut self) {
        self.stats.timeouts += 1;
        self.pto_deadline = None;
        self.probed_tail = false;
        if self.search.on_data_timeout() {
            self.follow_path();
        }
        self.rtt.on_timeout();
        self.cc.on_rto();
        self.rto_deadline = None;
        self.sent_log.clear();
        self.lost.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match slot.state {
                SlotState::InFlight(_) | SlotState::Lost => {
                    slot.state = SlotState::Lost;
                    self.lost.push_back(self.base + i as u64);
                }
                SlotState::Unsent | SlotState::Acked => {}
            }
        }
        self.in_flight = 0;
    }
}
