//! The retry queue: many producers, one scheduler, no lock on the schedule path.
//!
//! Producers ([`RetryHandle`], cloned onto any task or thread) push into a
//! lock-free `SegQueue` inbox and reserve capacity with one CAS on a shared
//! counter. The single consumer ([`RetryQueue`], owned by the scheduler task)
//! moves the inbox into its [`TimingWheel`] on every call and hands out what
//! is due. Nothing here reads a clock: `now` is an argument.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use crossbeam_queue::SegQueue;
use tokio::sync::Notify;

use super::TICK_NANOS;
use super::wheel::TimingWheel;
use crate::limiter::Nanos;

/// `schedule` refused because the queue holds `capacity` items; the item comes back untouched.
#[derive(thiserror::Error)]
#[error("retry queue is full ({capacity} items)")]
pub struct Full<K, T> {
    /// The key passed to `schedule`.
    pub key: K,
    /// The item passed to `schedule`, for the caller to fail or park elsewhere.
    pub item: T,
    /// The bound that was hit.
    pub capacity: usize,
}

impl<K, T> fmt::Debug for Full<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Full")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// An item whose due time has come, as handed out by [`RetryQueue::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<K, T> {
    /// Its key.
    pub key: K,
    /// The item.
    pub item: T,
    /// The due time it was scheduled for (`<= now` of the poll; the difference is the lateness).
    pub due: Nanos,
}

enum Op<K, T> {
    Schedule { key: K, item: T, due: u64 },
    Cancel(K),
}

struct Shared<K, T> {
    inbox: SegQueue<Op<K, T>>,
    /// Live items: reserved by producers, released by the consumer when an item
    /// fires, is cancelled or is replaced.
    len: AtomicUsize,
    capacity: usize,
    /// Nanos until which the consumer plans to sleep; a producer that schedules
    /// anything earlier wakes it. 0 while the consumer is awake (it will see the inbox anyway).
    wake_before: AtomicU64,
    notify: Notify,
}

/// The producer side: schedule and cancel from any task or thread.
///
/// Cheap to clone (one `Arc`). Why no lock: `schedule` is a CAS on the length
/// counter plus a `SegQueue` push, so many device sessions failing at once
/// never serialise on a mutex.
pub struct RetryHandle<K, T> {
    shared: Arc<Shared<K, T>>,
}

impl<K, T> Clone for RetryHandle<K, T> {
    fn clone(&self) -> Self {
        RetryHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, T> fmt::Debug for RetryHandle<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandle")
            .field("len", &self.len())
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

impl<K, T> RetryHandle<K, T> {
    /// Queues `item` under `key` to be handed out at or after `due`.
    ///
    /// A key has at most one pending item: scheduling a key that is already
    /// pending replaces the older item (dropped when the scheduler next runs), so a
    /// journal replay and a late failure of the same message cannot send it twice.
    /// A `due` in the past fires on the next poll.
    pub fn schedule(&self, key: K, item: T, due: Nanos) -> Result<(), Full<K, T>> {
        self.shared.schedule(key, item, due)
    }

    /// Removes the pending item of `key`, if any, when the scheduler next runs.
    ///
    /// Applies to items scheduled before this call (a later `schedule` of the
    /// same key stands). The item is dropped, not returned: the journal, not the
    /// queue, is the record of what exists, so a caller purging a device takes
    /// its messages from there. Never refused; a cancel is a few words in the inbox.
    pub fn cancel(&self, key: K) {
        self.shared.inbox.push(Op::Cancel(key));
    }

    /// Items pending, including those still in the inbox; a replaced or
    /// cancelled item still counts until the scheduler next runs.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on [`len`](Self::len).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl<K, T> Shared<K, T> {
    fn schedule(&self, key: K, item: T, due: Nanos) -> Result<(), Full<K, T>> {
        let mut cur = self.len.load(Ordering::Relaxed);
        loop {
            if cur >= self.capacity {
                return Err(Full {
                    key,
                    item,
                    capacity: self.capacity,
                });
            }
            match self
                .len
                .compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.inbox.push(Op::Schedule {
            key,
            item,
            due: due.0,
        });
        // Pairs with the fence in `plan_sleep`: either the consumer's drain sees
        // our push, or we see its planned wake time (store-load ordering needs SeqCst).
        fence(Ordering::SeqCst);
        if due.0 < self.wake_before.load(Ordering::SeqCst) {
            // No waiter: stores a permit without locking. With a waiter, tokio takes
            // its waiter-list lock once: only when an earlier item arrives while the scheduler sleeps.
            self.notify.notify_one();
        }
        Ok(())
    }
}

struct Entry<K, T> {
    key: K,
    item: T,
    due: u64,
    /// Inbox order, assigned by the consumer: FIFO among equal due times, and
    /// tells a current entry from a replaced or cancelled one.
    seq: u64,
}

/// The consumer side: owns the timing wheel; exactly one per queue (the scheduler task).
///
/// Default: none (use [`RetryQueue::new`]). Bounds: `capacity` live items
/// (1..); the tick is 1 ms, so an item fires in the first `poll` with
/// `now >= due` rounded up to the next whole millisecond: never early, at most
/// one tick late. Why one consumer: the wheel then needs no synchronisation at all.
pub struct RetryQueue<K, T> {
    shared: Arc<Shared<K, T>>,
    wheel: TimingWheel<Entry<K, T>>,
    /// The seq of each key's current entry; others in the wheel are garbage.
    live: HashMap<K, u64>,
    next_seq: u64,
    /// Replaced or cancelled entries still in the wheel.
    garbage: usize,
    scratch: Vec<(u64, Entry<K, T>)>,
}

impl<K, T> fmt::Debug for RetryQueue<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryQueue")
            .field("len", &self.shared.len.load(Ordering::Relaxed))
            .field("capacity", &self.shared.capacity)
            .field("wheel", &self.wheel)
            .field("garbage", &self.garbage)
            .finish()
    }
}

/// Garbage below this is never compacted: a sweep costs a walk over every entry.
const COMPACT_MIN_GARBAGE: usize = 1024;

impl<K: Hash + Eq + Clone, T> RetryQueue<K, T> {
    /// An empty queue holding at most `capacity` items (at least 1), on a clock whose origin is `Nanos(0)`.
    pub fn new(capacity: usize) -> Self {
        RetryQueue {
            shared: Arc::new(Shared {
                inbox: SegQueue::new(),
                len: AtomicUsize::new(0),
                capacity: capacity.max(1),
                wake_before: AtomicU64::new(0),
                notify: Notify::new(),
            }),
            wheel: TimingWheel::new(0),
            live: HashMap::new(),
            next_seq: 0,
            garbage: 0,
            scratch: Vec::new(),
        }
    }

    /// A producer handle; clone it freely.
    pub fn handle(&self) -> RetryHandle<K, T> {
        RetryHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Same as [`RetryHandle::schedule`].
    pub fn schedule(&self, key: K, item: T, due: Nanos) -> Result<(), Full<K, T>> {
        self.shared.schedule(key, item, due)
    }

    /// Same as [`RetryHandle::cancel`].
    pub fn cancel(&self, key: K) {
        self.shared.inbox.push(Op::Cancel(key));
    }

    /// Items pending, including those still in the inbox; a replaced or
    /// cancelled item still counts until the scheduler next runs.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on [`len`](Self::len).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Every item due at `now`, in due order (FIFO among equal due times).
    pub fn poll(&mut self, now: Nanos) -> Vec<Expired<K, T>> {
        let mut out = Vec::new();
        self.poll_into(now, &mut out);
        out
    }

    /// [`poll`](Self::poll) appending to `out`, so a scheduler loop reuses one buffer.
    ///
    /// `now` should not go backwards; if it does, nothing fires until it catches up.
    pub fn poll_into(&mut self, now: Nanos, out: &mut Vec<Expired<K, T>>) {
        self.drain_inbox();
        // Floor: an item fires once the whole tick containing `now` has begun
        // past its rounded-up due tick, which is what keeps it from firing early.
        self.wheel.advance(now.0 / TICK_NANOS, &mut self.scratch);
        if self.scratch.is_empty() {
            return;
        }
        self.scratch.sort_unstable_by_key(|(_, e)| (e.due, e.seq));
        let mut fired = 0;
        for (_, e) in self.scratch.drain(..) {
            if self.live.get(&e.key) == Some(&e.seq) {
                self.live.remove(&e.key);
                fired += 1;
                out.push(Expired {
                    key: e.key,
                    item: e.item,
                    due: Nanos(e.due),
                });
            } else {
                self.garbage -= 1;
            }
        }
        self.shared.len.fetch_sub(fired, Ordering::Relaxed);
    }

    /// When the next item falls due (a tick boundary), or `None` if nothing is pending.
    ///
    /// Exact for live items; a replaced or cancelled item not yet swept may make
    /// it earlier (the poll then returns nothing). May be `<=` the last `now`: poll again.
    pub fn next_due(&mut self) -> Option<Nanos> {
        self.drain_inbox();
        self.wheel
            .next_expiry()
            .map(|t| Nanos(t.saturating_mul(TICK_NANOS)))
    }

    /// For a driver about to sleep: [`next_due`](Self::next_due), and producers
    /// that schedule anything earlier from now on will wake [`notified`](Self::notified).
    ///
    /// Call [`mark_awake`](Self::mark_awake) after waking, before polling.
    pub fn plan_sleep(&mut self) -> Option<Nanos> {
        // First claim "asleep until forever" so a producer racing with the drain
        // below notifies; then narrow it to the real wake time.
        self.shared.wake_before.store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let next = self.next_due();
        self.shared
            .wake_before
            .store(next.map_or(u64::MAX, |n| n.0), Ordering::SeqCst);
        next
    }

    /// Stops producers from notifying: the scheduler is awake and will drain the inbox anyway.
    pub fn mark_awake(&self) {
        self.shared.wake_before.store(0, Ordering::SeqCst);
    }

    /// Resolves when a producer scheduled something due before the time [`plan_sleep`](Self::plan_sleep) returned.
    ///
    /// May resolve spuriously (a permit left from earlier); the loop just polls again.
    /// The future owns a reference to the shared state, not to `self`, so a
    /// driver holding it across an `.await` stays `Send` for items that are not `Sync`.
    pub fn notified(&self) -> impl Future<Output = ()> + Send + 'static + use<K, T>
    where
        K: Send + 'static,
        T: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        async move { shared.notify.notified().await }
    }

    fn drain_inbox(&mut self) {
        let mut released = 0;
        while let Some(op) = self.shared.inbox.pop() {
            match op {
                Op::Schedule { key, item, due } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    if self.live.insert(key.clone(), seq).is_some() {
                        // The older entry of this key stays in the wheel as garbage.
                        self.garbage += 1;
                        released += 1;
                    }
                    self.wheel
                        .insert(due.div_ceil(TICK_NANOS), Entry { key, item, due, seq });
                }
                Op::Cancel(key) => {
                    if self.live.remove(&key).is_some() {
                        self.garbage += 1;
                        released += 1;
                    }
                }
            }
        }
        if released > 0 {
            self.shared.len.fetch_sub(released, Ordering::Relaxed);
            self.maybe_compact();
        }
    }

    /// Entries physically in the wheel, garbage included (tests check sweeping).
    #[cfg(test)]
    pub(super) fn wheel_len(&self) -> usize {
        self.wheel.len()
    }

    fn maybe_compact(&mut self) {
        // Amortised O(1): a sweep costs O(entries) and runs only once garbage
        // outnumbers live entries, so cancelled far-future items cannot pile up for days.
        if self.garbage < COMPACT_MIN_GARBAGE || self.garbage <= self.live.len() {
            return;
        }
        let live = &self.live;
        self.wheel.retain(|e| live.get(&e.key) == Some(&e.seq));
        self.garbage = 0;
    }
}
