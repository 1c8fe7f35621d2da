//! Runs a blocking [`Store`] on its own thread and lets async code call it.
//!
//! The thread takes jobs from one queue in order. History records do not go through that
//! queue one by one: [`StoreHandle::record`] appends to a shared batch under a short lock, and
//! only the first record of a batch (or the one that fills it) wakes the thread. The batch is
//! written in one transaction just before the next call runs, or 20 ms (`HISTORY_DELAY`)
//! after its first record, or when it is full. So a call always sees the history recorded
//! before it was queued, and the relay pays for one commit and one thread wake-up per batch
//! rather than per message, even at a moderate rate. A crash can lose the last few
//! milliseconds of history, never an offline message: those go through
//! [`StoreHandle::call`] and are acknowledged once committed.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Envelope, Store, StoreError, StoreResult};

/// Most history records written in one transaction.
const HISTORY_BATCH: usize = 4096;
/// Longest a history record waits for others to share its commit.
const HISTORY_DELAY: Duration = Duration::from_millis(20);

type Call = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Job {
    Call(Call),
    /// The history batch got its first record: write it within `HISTORY_DELAY`.
    HistoryStarted,
    /// The history batch is full: write it now.
    HistoryFull,
}

/// History records waiting for their transaction.
#[derive(Default)]
struct Batch(Mutex<Vec<Envelope>>);

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Vec<Envelope>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Vec<Envelope> {
        std::mem::take(&mut *self.lock())
    }
}

/// A cloneable async front to a [`Store`] running on a dedicated thread.
///
/// Jobs run one at a time, in the order they were sent. The thread ends, closing the
/// backend, when the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
    history: Arc<Batch>,
}

impl StoreHandle {
    /// Moves `store` onto a new thread named `confab-store`.
    pub fn spawn(store: impl Store) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let history = Arc::new(Batch::default());
        let batch = history.clone();
        std::thread::Builder::new()
            .name("confab-store".into())
            .spawn(move || {
                let mut store = store;
                let mut due: Option<Instant> = None;
                loop {
                    let job = match due {
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                    };
                    match job {
                        Ok(Job::HistoryStarted) => {
                            due.get_or_insert_with(|| Instant::now() + HISTORY_DELAY);
                        }
                        Ok(Job::HistoryFull) | Err(RecvTimeoutError::Timeout) => {
                            write_history(&mut store, batch.take());
                            due = None;
                        }
                        Ok(Job::Call(call)) => {
                            write_history(&mut store, batch.take());
                            due = None;
                            call(&mut store);
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                write_history(&mut store, batch.take());
                if let Err(e) = store.flush() {
                    tracing::warn!("final store flush failed: {e}");
                }
            })
            .expect("spawning the store thread");
        Self { jobs, history }
    }

    /// Queues `f` to run on the store thread; the returned future yields its result.
    ///
    /// The job is queued when `call` returns, before the future is first polled, so jobs
    /// queued one after the other (even from different tasks) run in that order.
    pub fn call<R, F>(&self, f: F) -> impl Future<Output = StoreResult<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Store) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Call(Box::new(move |store| {
            let _ = tx.send(f(store));
        }));
        let queued = self.jobs.send(job);
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Adds a relayed message to the history without waiting for it to be written.
    ///
    /// It is committed with the batch it lands in, within 20 ms and before any call queued
    /// after it runs. A failed write is logged: history is a convenience, unlike offline
    /// messages, which go through [`StoreHandle::call`] and are acknowledged only once
    /// committed.
    pub fn record(&self, message: Envelope) {
        let len = {
            let mut batch = self.history.lock();
            batch.push(message);
            batch.len()
        };
        let wake = match len {
            1 => Some(Job::HistoryStarted),
            HISTORY_BATCH => Some(Job::HistoryFull),
            _ => None,
        };
        if let Some(job) = wake {
            if self.jobs.send(job).is_err() {
                tracing::warn!("history not recorded: the store has shut down");
            }
        }
    }
}

fn write_history(store: &mut impl Store, batch: Vec<Envelope>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.append_history(&batch) {
        tracing::error!(lost = batch.len(), "cannot write message history: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn calls_run_on_the_store_thread_in_order() {
        let store = StoreHandle::spawn(SqliteStore::open(":memory:").unwrap());
        assert!(store.call(|s| s.create_user("alice", "h", 0)).await.unwrap());
        let name =
            store.call(|_| Ok(std::thread::current().name().map(str::to_owned))).await.unwrap();
        assert_eq!(name.as_deref(), Some("confab-store"));
        assert_eq!(store.call(|s| s.usernames()).await.unwrap(), ["alice"]);
    }

    #[tokio::test]
    async fn recorded_history_is_visible_to_the_next_call() {
        let store = StoreHandle::spawn(SqliteStore::open(":memory:").unwrap());
        let at = |i: i64| Envelope {
            sender: "alice".into(),
            to: crate::store::To::User("bob".into()),
            body: format!("m{i}"),
            sent_at: i,
        };
        for i in 0..(HISTORY_BATCH as i64 + 10) {
            store.record(at(i));
        }
        let got = store.call(|s| s.direct_history("bob", "alice", 3)).await.unwrap();
        let last = HISTORY_BATCH as i64 + 9;
        let want: Vec<String> = (last - 2..=last).map(|i| format!("m{i}")).collect();
        assert_eq!(got.iter().map(|m| m.text.clone()).collect::<Vec<_>>(), want);
    }
}
