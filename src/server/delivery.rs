//! One session's delivery bookkeeping: what it has sent, what the client has acknowledged,
//! and when the next catch-up page may be read. Pure: no I/O, no clock.
//!
//! A logged-in session starts by catching up: it reads the log after the user's cursor in
//! pages of at most [`PAGE_MESSAGES`] messages or [`PAGE_BYTES`] of text, and reads the next
//! page only once the client has acknowledged all but the last page sent, so at most two
//! pages are unacknowledged and the server holds at most one in memory, whatever the backlog.
//! A page that comes back empty ends the catch-up (if the hub agrees that nothing newer was
//! routed meanwhile, see `Hub::go_live`); from then on messages arrive through the inbox.
//!
//! Acknowledgements are cumulative. One for an id the session never sent is taken as far as
//! what it did send: a client cannot move its cursor past messages it was not given.

use std::collections::VecDeque;

use crate::store::Backlog;

/// Most messages in one catch-up page.
pub const PAGE_MESSAGES: usize = 256;
/// Most bytes of message text in one catch-up page (a page holds at least one message).
pub const PAGE_BYTES: usize = 1 << 20;
/// Pages sent and not yet acknowledged before the next is read.
const PAGES_IN_FLIGHT: usize = 2;

/// Where one session's delivery stands.
#[derive(Debug)]
pub struct Delivery {
    /// Messages sent and not acknowledged: id and text size, in id order.
    unacked: VecDeque<(u64, u32)>,
    /// The highest id sent (the cursor at login before anything is sent).
    sent: u64,
    /// The highest id acknowledged.
    acked: u64,
    /// The last id of each catch-up page not yet wholly acknowledged.
    pages: VecDeque<u64>,
    catching_up: bool,
}

impl Delivery {
    /// A session that starts catching up after `cursor`.
    pub fn new(cursor: u64) -> Self {
        Self {
            unacked: VecDeque::new(),
            sent: cursor,
            acked: cursor,
            pages: VecDeque::new(),
            catching_up: true,
        }
    }

    /// Records that message `id` (with `size` bytes of text) went out; ids only grow.
    pub fn sent(&mut self, id: u64, size: usize) {
        if id <= self.sent {
            return;
        }
        self.sent = id;
        self.unacked.push_back((id, size.min(u32::MAX as usize) as u32));
    }

    /// Records that a catch-up page ending at `last` went out.
    pub fn page_sent(&mut self, last: u64) {
        self.pages.push_back(last);
    }

    /// The highest id sent: the next catch-up page starts after it.
    pub fn last_sent(&self) -> u64 {
        self.sent
    }

    /// Takes a cumulative acknowledgement; returns the new cursor and what it covers if it
    /// moved.
    pub fn ack(&mut self, up_to: u64) -> Option<(u64, Backlog)> {
        let up_to = up_to.min(self.sent);
        if up_to <= self.acked {
            return None;
        }
        self.acked = up_to;
        let mut acked = Backlog::default();
        while let Some(&(id, size)) = self.unacked.front() {
            if id > up_to {
                break;
            }
            self.unacked.pop_front();
            acked.count += 1;
            acked.bytes += u64::from(size);
        }
        while self.pages.front().is_some_and(|&last| last <= up_to) {
            self.pages.pop_front();
        }
        Some((up_to, acked))
    }

    /// Whether the session should read the next catch-up page now.
    pub fn may_read(&self) -> bool {
        self.catching_up && self.pages.len() < PAGES_IN_FLIGHT
    }

    /// Whether the session is still catching up.
    pub fn catching_up(&self) -> bool {
        self.catching_up
    }

    /// The catch-up is over: messages now come live.
    pub fn live(&mut self) {
        self.catching_up = false;
        self.pages.clear();
    }

    /// How many messages were sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_cumulative_and_stop_at_what_was_sent() {
        let mut d = Delivery::new(10);
        for id in [11, 13, 20] {
            d.sent(id, 5);
        }
        d.sent(12, 5); // not after the last: ignored
        assert_eq!(d.ack(12), Some((12, Backlog { count: 1, bytes: 5 })));
        assert_eq!(d.ack(12), None, "no progress");
        assert_eq!(d.ack(5), None, "backwards");
        assert_eq!(d.ack(u64::MAX), Some((20, Backlog { count: 2, bytes: 10 })), "clamped");
        assert_eq!(d.unacked(), 0);
    }

    #[test]
    fn the_next_page_waits_until_all_but_the_last_page_is_acknowledged() {
        let mut d = Delivery::new(0);
        assert!(d.may_read());
        for id in 1..=3 {
            d.sent(id, 1);
        }
        d.page_sent(3);
        assert!(d.may_read(), "a second page may follow the first at once");
        for id in 4..=6 {
            d.sent(id, 1);
        }
        d.page_sent(6);
        assert!(!d.may_read());
        d.ack(2);
        assert!(!d.may_read(), "the first page is not wholly acknowledged");
        d.ack(3);
        assert!(d.may_read());
        assert_eq!(d.last_sent(), 6);
        d.live();
        assert!(!d.may_read() && !d.catching_up());
    }
}
