//! Runs a blocking [`Store`] on its own thread and lets async code call it.
//!
//! The thread takes jobs from one queue in order, so a job queued after another (even from a
//! different task) runs after it. The server's message log is written through the same queue:
//! its writer (`server::hub::log`) hands over everything that arrived during the previous
//! commit as one job, so one transaction serves many messages.

use std::future::Future;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Store, StoreError, StoreResult};

type Call = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// A cloneable async front to a [`Store`] running on a dedicated thread.
///
/// Jobs run one at a time, in the order they were sent. The thread ends, closing the
/// backend, when the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Call>,
}

impl StoreHandle {
    /// Moves `store` onto a new thread named `confab-store`.
    pub fn spawn(store: impl Store) -> Self {
        let (jobs, rx) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("confab-store".into())
            .spawn(move || {
                let mut store = store;
                while let Ok(call) = rx.recv() {
                    call(&mut store);
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
        let job: Call = Box::new(move |store| {
            let _ = tx.send(f(store));
        });
        let queued = self.jobs.send(job);
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
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
}
