//! Runs a blocking [`Store`] on its own thread and lets async code call it.
//!
//! The thread takes jobs from one queue in order. History records are not run one by one:
//! consecutive records are gathered into a batch that is written in one transaction just
//! before the next call runs or when the queue runs dry, so a call always sees the history
//! recorded before it was queued, and a busy relay pays for one commit per batch.

use std::future::Future;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Envelope, Store, StoreError, StoreResult};

/// Most history records written in one transaction.
const HISTORY_BATCH: usize = 4096;

type Call = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Job {
    Call(Call),
    History(Envelope),
}

/// A cloneable async front to a [`Store`] running on a dedicated thread.
///
/// Jobs run one at a time, in the order they were sent. The thread ends, closing the
/// backend, when the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Moves `store` onto a new thread named `confab-store`.
    pub fn spawn(store: impl Store) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("confab-store".into())
            .spawn(move || {
                let mut store = store;
                let mut history = Vec::new();
                while let Ok(first) = rx.recv() {
                    // Everything already queued, without waiting; then commit the history.
                    for job in std::iter::once(first).chain(rx.try_iter()) {
                        match job {
                            Job::History(message) => {
                                history.push(message);
                                if history.len() >= HISTORY_BATCH {
                                    write_history(&mut store, &mut history);
                                }
                            }
                            Job::Call(call) => {
                                write_history(&mut store, &mut history);
                                call(&mut store);
                            }
                        }
                    }
                    write_history(&mut store, &mut history);
                }
                if let Err(e) = store.flush() {
                    tracing::warn!("final store flush failed: {e}");
                }
            })
            .expect("spawning the store thread");
        Self { jobs }
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
    /// It is committed with the batch it lands in, before any call queued after it runs. A
    /// failed write is logged: history is a convenience, unlike offline messages, which go
    /// through [`StoreHandle::call`] and are acknowledged only once committed.
    pub fn record(&self, message: Envelope) {
        if self.jobs.send(Job::History(message)).is_err() {
            tracing::warn!("history not recorded: the store has shut down");
        }
    }
}

fn write_history(store: &mut impl Store, batch: &mut Vec<Envelope>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.append_history(batch) {
        tracing::error!(lost = batch.len(), "cannot write message history: {e}");
    }
    batch.clear();
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
