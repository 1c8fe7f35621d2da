//! A session's inbox: the bounded queue of encoded frames that other sessions route to it.
//!
//! It does what a bounded `tokio::sync::mpsc` channel of `Bytes` did here, for less: an idle
//! inbox is one small allocation (a mutex, an empty `VecDeque` and a waker), where the channel
//! kept a block of slots and cache-padded counters per session, and the receiving session
//! takes everything queued with one lock ([`InboxReceiver::take`]) instead of one atomic
//! handshake per frame. The queue's memory is handed to the receiver with the frames, so an
//! inbox that has been drained holds none.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// Creates an inbox holding at most `capacity` frames.
pub fn inbox(capacity: usize) -> (InboxSender, InboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), capacity, open: true }),
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

/// Why [`InboxSender::try_send`] did not queue a frame.
#[derive(Debug)]
pub enum TrySendError {
    /// The inbox holds its capacity already; the frame is handed back.
    Full(Bytes),
    /// The receiver is gone.
    Closed,
}

struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    frames: VecDeque<Bytes>,
    capacity: usize,
    open: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a single push or take: consistent across a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InboxSender {
    /// Queues `frame` and wakes the receiver, unless the inbox is full or closed.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        {
            let mut state = self.shared.state();
            if !state.open {
                return Err(TrySendError::Closed);
            }
            if state.frames.len() >= state.capacity {
                return Err(TrySendError::Full(frame));
            }
            state.frames.push_back(frame);
        }
        self.shared.waker.wake();
        Ok(())
    }

    /// Whether the receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        !self.shared.state().open
    }
}

impl InboxReceiver {
    /// Waits until at least one frame is queued. Cancel-safe: it takes nothing.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            self.shared.waker.register(cx.waker());
            if self.shared.state().frames.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes every queued frame, oldest first, leaving the inbox empty.
    pub fn take(&self) -> VecDeque<Bytes> {
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

    #[test]
    fn frames_come_out_in_order_up_to_the_capacity() {
        let (tx, rx) = inbox(2);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tx.try_send(Bytes::from_static(b"b")).unwrap();
        assert!(
            matches!(tx.try_send(Bytes::from_static(b"c")), Err(TrySendError::Full(f)) if f == "c")
        );
        assert_eq!(rx.take(), [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(rx.take().is_empty());
        tx.try_send(Bytes::from_static(b"d")).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(Bytes::new()), Err(TrySendError::Closed)));
    }

    #[tokio::test]
    async fn ready_waits_for_a_frame() {
        let (tx, rx) = inbox(4);
        let waiting = tokio::spawn(async move {
            rx.ready().await;
            rx.take()
        });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(got.unwrap().unwrap(), [Bytes::from_static(b"x")]);
    }
}
