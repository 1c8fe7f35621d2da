//! A session's inbox: the bounded queue of encoded frames that other sessions route to it.
//!
//! Each frame comes with the log id of the message it carries (0 for events that are not
//! messages), so that the session knows what it has sent without decoding anything.
//!
//! It does what a bounded `tokio::sync::mpsc` channel of `Bytes` did here, for less: an idle
//! inbox is one small allocation (a mutex, an empty `VecDeque` and a waker), where the channel
//! kept a block of slots and cache-padded counters per session, and the receiving session
//! takes everything queued with one lock ([`InboxReceiver::take`]) instead of one atomic
//! handshake per frame. The queue's memory is handed to the receiver with the frames, so an
//! inbox that has been drained holds none.
//!
//! The inbox also carries the [`Signal`]s that end a session from outside: an inbox that
//! overflows marks its session too slow, and the server marks every inbox at shutdown. So a
//! logged-in session waits on its inbox, its socket and its idle timer only, and keeps no
//! cancellation waiters of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// An encoded frame and the log id of the message in it (0 for any other event).
pub type Frame = (u64, Bytes);

/// Creates an inbox holding at most `capacity` frames.
pub fn inbox(capacity: usize) -> (InboxSender, InboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            capacity,
            open: true,
            too_slow: false,
            shutdown: false,
        }),
        waker: AtomicWaker::new(),
    });
    (InboxSender { shared: shared.clone() }, InboxReceiver { shared })
}

/// The routing side of an inbox.
#[derive(Clone)]
pub struct InboxSender {
    shared: Arc<Shared>,
}

/// The session side of an inbox. Dropping it closes the inbox.
pub struct InboxReceiver {
    shared: Arc<Shared>,
}

/// Why a session must end, as its inbox tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The server is shutting down.
    Shutdown,
    /// The inbox overflowed: the session reads too slowly for what is sent to it.
    TooSlow,
}

/// Why [`InboxSender::try_send`] did not queue a frame.
#[derive(Debug)]
pub enum TrySendError {
    /// The inbox holds its capacity already; the frame is handed back.
    Full(Frame),
    /// The receiver is gone.
    Closed,
}

struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    frames: VecDeque<Frame>,
    capacity: usize,
    open: bool,
    too_slow: bool,
    shutdown: bool,
}

impl State {
    fn signal(&self) -> Option<Signal> {
        if self.shutdown {
            Some(Signal::Shutdown)
        } else if self.too_slow {
            Some(Signal::TooSlow)
        } else {
            None
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a single push or take: consistent across a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InboxSender {
    /// Queues `frame` and wakes the receiver, unless the inbox is full or closed. A full
    /// inbox also signals [`Signal::TooSlow`].
    pub fn try_send(&self, frame: Frame) -> Result<(), TrySendError> {
        let result = {
            let mut state = self.shared.state();
            if !state.open {
                return Err(TrySendError::Closed);
            }
            if state.frames.len() >= state.capacity {
                state.too_slow = true;
                Err(TrySendError::Full(frame))
            } else {
                state.frames.push_back(frame);
                Ok(())
            }
        };
        self.shared.waker.wake();
        result
    }

    /// Tells the receiver that the server is shutting down.
    pub fn shut_down(&self) {
        self.shared.state().shutdown = true;
        self.shared.waker.wake();
    }

    /// Whether the receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        !self.shared.state().open
    }
}

impl InboxReceiver {
    /// Ready once a frame or a signal is waiting, with the signal if there is one; takes
    /// nothing. When pending, the task of `cx` is woken by the next frame or signal.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Option<Signal>> {
        self.shared.waker.register(cx.waker());
        let state = self.shared.state();
        match state.signal() {
            None if state.frames.is_empty() => Poll::Pending,
            signal => Poll::Ready(signal),
        }
    }

    /// Ready once a signal is waiting (frames do not count). When pending, the task of `cx`
    /// is woken by the next frame or signal.
    pub fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<Signal> {
        self.shared.waker.register(cx.waker());
        self.signal().map_or(Poll::Pending, Poll::Ready)
    }

    /// The signal waiting, if any; shutdown comes first. Signals stay set once sent.
    pub fn signal(&self) -> Option<Signal> {
        self.shared.state().signal()
    }

    /// Takes every queued frame, oldest first, leaving the inbox empty.
    pub fn take(&self) -> VecDeque<Frame> {
        std::mem::take(&mut self.shared.state().frames)
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        self.shared.state().open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn f(bytes: &'static [u8]) -> Frame {
        (bytes.len() as u64, Bytes::from_static(bytes))
    }

    #[test]
    fn frames_come_out_in_order_up_to_the_capacity() {
        let (tx, rx) = inbox(2);
        tx.try_send(f(b"a")).unwrap();
        tx.try_send(f(b"b")).unwrap();
        assert_eq!(rx.signal(), None);
        assert!(matches!(tx.try_send(f(b"c")), Err(TrySendError::Full((_, c))) if c == "c"));
        assert_eq!(rx.signal(), Some(Signal::TooSlow));
        assert_eq!(rx.take(), [f(b"a"), f(b"b")]);
        assert!(rx.take().is_empty());
        tx.try_send(f(b"d")).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(f(b"")), Err(TrySendError::Closed)));
    }

    #[tokio::test]
    async fn ready_waits_for_a_frame() {
        let (tx, rx) = inbox(4);
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| rx.poll_ready(cx)).await;
            rx.take()
        });
        tokio::task::yield_now().await;
        tx.try_send(f(b"x")).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(got.unwrap().unwrap(), [f(b"x")]);
    }

    #[tokio::test]
    async fn shutdown_wakes_an_empty_inbox_and_outranks_too_slow() {
        let (tx, rx) = inbox(1);
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| rx.poll_ready(cx)).await;
            rx
        });
        tokio::task::yield_now().await;
        tx.shut_down();
        let rx = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        let rx = rx.unwrap().unwrap();
        assert!(rx.take().is_empty());
        tx.try_send(f(b"x")).unwrap();
        assert!(tx.try_send(f(b"y")).is_err());
        assert_eq!(rx.signal(), Some(Signal::Shutdown));
    }
}
