//! Turns at password hashing, shared fairly between the addresses that ask for them.
//!
//! An Argon2 hash is tens of milliseconds of one core, and every login costs one (an unknown
//! name too, so as not to tell it apart). Hashes run on the blocking pool, at most one per
//! core at once ([`Hashing`]); the logins that wait are queued per address ([`FairQueue`],
//! pure): the next turn goes to the waiting address that was served longest ago, so an
//! address that has not hashed lately goes before every address of a spray, however many
//! addresses the spray comes from, and waits at most about one hash. Each address may have
//! [`HashLimits::per_addr`] waiting and all together [`HashLimits::total`]; past that a new
//! login is refused at once (with `RateLimited`), or, when the whole queue is full, takes
//! the place of the newest waiter of the address that has the most waiting.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::limit::addr_key;

/// How many logins may wait for a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// From one address (IPv6: one /64).
    pub per_addr: usize,
    /// From all addresses together.
    pub total: usize,
}

impl Default for HashLimits {
    fn default() -> Self {
        Self { per_addr: 4, total: 256 }
    }
}

/// How long an address's last turn is remembered: longer than any queue takes to drain.
const SERVED_MEMORY: Duration = Duration::from_secs(60);
/// Remembered addresses past which the old ones are forgotten.
const SERVED_CAP: usize = 4096;

/// Why a login was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins are waiting for a password check")]
pub struct Busy;

/// Waiting items per address, handed out to the least recently served address first.
#[derive(Debug)]
pub struct FairQueue<T> {
    limits: HashLimits,
    /// Each address's waiting items, oldest first, numbered in the order they came.
    queues: HashMap<IpAddr, VecDeque<(u64, T)>>,
    served: HashMap<IpAddr, Instant>,
    queued: usize,
    next: u64,
}

impl<T> FairQueue<T> {
    /// An empty queue under `limits`.
    pub fn new(limits: HashLimits) -> Self {
        Self { limits, queues: HashMap::new(), served: HashMap::new(), queued: 0, next: 0 }
    }

    /// Queues `item` for `ip` (an `exempt` address has no limit of its own). When the whole
    /// queue is full, the newest item of the address with the most waiting (if it has more
    /// than `ip` would) makes room and is handed back as `Ok(Some(evicted))`; otherwise a
    /// full queue refuses `item`.
    pub fn push(&mut self, ip: IpAddr, item: T, exempt: bool) -> Result<Option<T>, (Busy, T)> {
        let key = addr_key(ip);
        let mine = self.queues.get(&key).map_or(0, VecDeque::len);
        if mine >= self.limits.per_addr && !exempt {
            return Err((Busy, item));
        }
        let mut evicted = None;
        if self.queued >= self.limits.total {
            let longest =
                self.queues.iter().max_by_key(|(_, q)| q.len()).map(|(k, q)| (*k, q.len()));
            match longest {
                Some((victim, len)) if len > mine + 1 => {
                    evicted = self.take_back(victim);
                }
                _ => return Err((Busy, item)),
            }
        }
        self.queues.entry(key).or_default().push_back((self.next, item));
        self.next += 1;
        self.queued += 1;
        Ok(evicted)
    }

    /// The next item at `now`: the oldest of the address served longest ago (or never;
    /// between addresses never served, the one that has waited longest).
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        let (key, _) = self
            .queues
            .iter()
            .map(|(k, q)| (*k, (self.served.get(k), q.front().map(|(n, _)| *n))))
            .min_by_key(|(_, order)| *order)?;
        let queue = self.queues.get_mut(&key)?;
        let item = queue.pop_front().map(|(_, item)| item);
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        self.queued -= usize::from(item.is_some());
        self.remember(key, now);
        item
    }

    /// Items waiting, from every address.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Notes that `key` had a turn at `now` (a turn given without waiting counts too).
    pub fn remember(&mut self, key: IpAddr, now: Instant) {
        self.served.insert(addr_key(key), now);
        if self.served.len() > SERVED_CAP {
            let queues = &self.queues;
            self.served.retain(|k, at| {
                queues.contains_key(k) || now.saturating_duration_since(*at) < SERVED_MEMORY
            });
            if self.served.len() > SERVED_CAP {
                self.served.retain(|k, _| queues.contains_key(k));
            }
        }
    }

    fn take_back(&mut self, key: IpAddr) -> Option<T> {
        let queue = self.queues.get_mut(&key)?;
        let item = queue.pop_back().map(|(_, item)| item);
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        self.queued -= usize::from(item.is_some());
        item
    }
}

/// The hashing turns of the whole server.
#[derive(Debug)]
pub struct Hashing {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    queue: FairQueue<oneshot::Sender<()>>,
    running: usize,
    max_running: usize,
}

impl Hashing {
    /// `max_running` hashes at once (one per core), waiting logins under `limits`.
    pub fn new(max_running: usize, limits: HashLimits) -> Self {
        Self {
            state: Mutex::new(State {
                queue: FairQueue::new(limits),
                running: 0,
                max_running: max_running.max(1),
            }),
        }
    }

    /// Runs `f` (a hash) on the blocking pool when `ip`'s turn comes, or refuses at once if
    /// too many wait (from `ip`, unless it is `exempt`, or in all). `None` if the blocking
    /// task failed.
    pub async fn run<T: Send + 'static>(
        &self,
        ip: IpAddr,
        exempt: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Option<T>, Busy> {
        let _turn = self.turn(ip, exempt).await?;
        Ok(tokio::task::spawn_blocking(f).await.ok())
    }

    /// Logins waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.state().queue.len()
    }

    async fn turn(&self, ip: IpAddr, exempt: bool) -> Result<Turn<'_>, Busy> {
        let rx = {
            let mut state = self.state();
            if state.running < state.max_running && state.queue.is_empty() {
                state.running += 1;
                state.queue.remember(ip, Instant::now());
                return Ok(Turn(self));
            }
            let (tx, rx) = oneshot::channel();
            // An evicted waiter's sender is dropped here: it wakes with an error.
            state.queue.push(ip, tx, exempt).map_err(|(busy, _)| busy)?;
            rx
        };
        let mut waiting = Waiting { rx: Some(rx), hashing: self };
        let handed = match waiting.rx.as_mut() {
            Some(rx) => rx.await,
            None => return Err(Busy),
        };
        // Received: the turn is ours now, and nothing is left for the guard to give back.
        waiting.rx = None;
        handed.map(|()| Turn(self)).map_err(|_| Busy)
    }

    /// Hands a finished turn to the next waiter, or frees it.
    fn pass_on(&self) {
        let mut state = self.state();
        let now = Instant::now();
        while let Some(next) = state.queue.pop(now) {
            if next.send(()).is_ok() {
                return;
            }
        }
        state.running -= 1;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each update is a few plain writes, consistent across a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A turn at hashing; passed on when dropped.
struct Turn<'a>(&'a Hashing);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.pass_on();
    }
}

/// A login waiting for its turn. Dropped while waiting (its session ended), it gives back a
/// turn that was handed to it in the meantime.
struct Waiting<'a> {
    /// `None` once the wait is over.
    rx: Option<oneshot::Receiver<()>>,
    hashing: &'a Hashing,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(rx) = &mut self.rx else {
            return;
        };
        rx.close();
        if rx.try_recv().is_ok() {
            self.hashing.pass_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
    }

    #[test]
    fn the_address_served_longest_ago_goes_first() {
        let mut q = FairQueue::new(HashLimits { per_addr: 4, total: 100 });
        let t0 = Instant::now();
        // A spray from 10 addresses, 4 each, all served lately (1 longest ago).
        for a in 1..=10 {
            q.remember(ip(a), t0 + Duration::from_micros(a.into()));
            for i in 0..4 {
                q.push(ip(a), (a, i), false).unwrap();
            }
        }
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(q.pop(t1), Some((1, 0)));
        // A login from an address that has not hashed lately is next, whatever waits.
        q.push(ip(99), (99, 0), false).unwrap();
        assert_eq!(q.pop(t1 + Duration::from_millis(1)), Some((99, 0)));
        // The spray's addresses then take turns, one each round.
        let mut firsts = Vec::new();
        for k in 0..9 {
            firsts.push(q.pop(t1 + Duration::from_millis(2 + k)).unwrap().0);
        }
        firsts.sort();
        assert_eq!(firsts, (2..=10).collect::<Vec<_>>());
    }

    #[test]
    fn queues_are_bounded_per_address_and_in_all() {
        let mut q = FairQueue::new(HashLimits { per_addr: 3, total: 5 });
        for i in 0..3 {
            q.push(ip(1), i, false).unwrap();
        }
        assert!(q.push(ip(1), 3, false).is_err(), "per address");
        q.push(ip(2), 10, false).unwrap();
        q.push(ip(3), 20, false).unwrap();
        assert_eq!(q.len(), 5);
        // Full: a newcomer takes the place of the newest waiter of the longest queue.
        assert_eq!(q.push(ip(4), 30, false), Ok(Some(2)));
        assert_eq!(q.len(), 5);
        // Now every queue has 1 or 2: a second from ip(4) would not be fairer, so refused.
        assert!(q.push(ip(4), 31, false).is_err());
        // An exempt address is held to the total only.
        let mut q = FairQueue::new(HashLimits { per_addr: 1, total: 3 });
        assert!((0..3).all(|i| q.push(ip(5), i, true).is_ok()));
        assert!(q.push(ip(5), 3, true).is_err());
    }

    #[test]
    fn the_memory_of_turns_is_bounded() {
        let mut q: FairQueue<()> = FairQueue::new(HashLimits::default());
        let t0 = Instant::now();
        for a in 0..(SERVED_CAP as u32 * 3) {
            q.remember(ip(a), t0 + Duration::from_secs(u64::from(a)));
        }
        assert!(q.served.len() <= SERVED_CAP + 1);
    }

    /// A hash from `ip(1)` that has its turn and holds it until the sender is used; returns
    /// once it is running, with its task (which gives 1).
    async fn holding_the_turn(
        hashing: &Arc<Hashing>,
    ) -> (tokio::task::JoinHandle<Result<Option<i32>, Busy>>, std::sync::mpsc::Sender<()>) {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let hashing = hashing.clone();
            async move {
                hashing
                    .run(ip(1), false, move || {
                        started_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                        1
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
        (first, go_tx)
    }

    #[tokio::test]
    async fn turns_are_limited_and_passed_on() {
        let hashing = Arc::new(Hashing::new(1, HashLimits { per_addr: 1, total: 10 }));
        let (first, go_tx) = holding_the_turn(&hashing).await;
        let second = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(ip(2), false, || 2).await }
        });
        while hashing.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ip(2) has its one place in the queue: one more from it is refused at once.
        assert_eq!(hashing.run(ip(2), false, || 3).await, Err(Busy));
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(Some(1)));
        assert_eq!(second.await.unwrap(), Ok(Some(2)));
        assert_eq!(hashing.run(ip(3), false, || 4).await, Ok(Some(4)), "the turn was freed");
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_does_not_keep_its_turn() {
        let hashing = Arc::new(Hashing::new(1, HashLimits::default()));
        let (first, go_tx) = holding_the_turn(&hashing).await;
        let gone = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(ip(2), false, || ()).await }
        });
        while hashing.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        go_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(hashing.run(ip(3), false, || 5).await, Ok(Some(5)), "the turn is free");
        assert_eq!(hashing.state().running, 0);
    }
}
