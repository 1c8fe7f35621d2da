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
//! A frame can also be queued without waking the receiver ([`InboxSender::push_later`]):
//! presence notices go that way, and the hub wakes every receiver that has any a moment later
//! ([`InboxSender::wake`]), so that a burst of logins costs each session one write for all
//! the notices of the burst instead of one write per login. A frame queued the usual way in
//! the meantime wakes the receiver and takes the earlier ones along, in order.
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
            unwoken: false,
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
    /// Frames were queued by [`InboxSender::push_later`] since the receiver was last woken.
    unwoken: bool,
    too_slow: bool,
    shutdown: bool,
}

impl State {
    /// Queues `frame` unless the inbox is closed or full (which marks it too slow).
    fn push(&mut self, frame: Frame) -> Result<(), TrySendError> {
        if !self.open {
            return Err(TrySendError::Closed);
        }
        if self.frames.len() >= self.capacity {
            self.too_slow = true;
            return Err(TrySendError::Full(frame));
        }
        self.frames.push_back(frame);
        Ok(())
    }

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
            let result = state.push(frame);
            if matches!(result, Err(TrySendError::Closed)) {
                return result;
            }
            state.unwoken = false;
            result
        };
        self.shared.waker.wake();
        result
    }

    /// Queues `frame` as [`InboxSender::try_send`] does but leaves the receiver asleep; true
    /// when the caller must see that [`InboxSender::wake`] is called soon (the first frame
    /// queued so since the last wake). A full inbox wakes the receiver at once, to end it.
    pub fn push_later(&self, frame: Frame) -> bool {
        let mut state = self.shared.state();
        match state.push(frame) {
            Ok(()) => !std::mem::replace(&mut state.unwoken, true),
            Err(TrySendError::Closed) => false,
            Err(TrySendError::Full(_)) => {
                drop(state);
                self.shared.waker.wake();
                false
            }
        }
    }

    /// Wakes the receiver for the frames [`InboxSender::push_later`] queued.
    pub fn wake(&self) {
        self.shared.state().unwoken = false;
        self.shared.waker.wake();
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

    /// A waker that counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for Counter {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn frames_pushed_for_later_wait_for_a_wake_or_the_next_frame() {
        let (tx, rx) = inbox(3);
        let counter = Arc::new(Counter(0.into()));
        let waker = futures_util::task::waker(counter.clone());
        let wakes = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        // As a session does: wait again after each take.
        let wait = || rx.poll_ready(&mut Context::from_waker(&waker));
        assert!(wait().is_pending());
        assert!(tx.push_later(f(b"p1")), "the first asks for a wake");
        assert!(!tx.push_later(f(b"p2")), "the second rides on it");
        assert_eq!(wakes(), 0);
        tx.wake();
        assert_eq!(wakes(), 1);
        assert_eq!(rx.take(), [f(b"p1"), f(b"p2")]);
        assert!(wait().is_pending());
        // An ordinary frame wakes at once and takes the earlier lazy one along, in order.
        assert!(tx.push_later(f(b"p3")));
        tx.try_send(f(b"m")).unwrap();
        assert_eq!(wakes(), 2);
        assert_eq!(rx.take(), [f(b"p3"), f(b"m")]);
        assert!(wait().is_pending());
        assert!(tx.push_later(f(b"p4")), "a wake is due again after a frame was sent");
        // A full inbox wakes its receiver at once, to end the session.
        tx.push_later(f(b"p5"));
        tx.push_later(f(b"p6"));
        assert!(!tx.push_later(f(b"p7")));
        assert_eq!(wakes(), 3);
        assert_eq!(rx.signal(), Some(Signal::TooSlow));
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
