//! Idempotency keys: a resend of the same (workspace, key) gets the original message id.
//!
//! The index maps a 128-bit hash of `(workspace, idempotency key)` to the
//! gateway message id. It is rebuilt from the journal at start (the journal
//! carries keys forward for the whole window), so deduplication survives
//! restarts.
//!
//! A key is *claimed* before its message is journaled and *committed* once the
//! journal's group commit made it durable. A second SEND with the same key that
//! arrives in between does not get its own id and does not wait in the stream
//! loop: it gets the original's [`Pending`] and answers ACCEPTED only when the
//! original is durable — or is refused, retryably, if that write failed.
//!
//! Memory is bounded by `capacity` as well as by the time window: at the
//! gateway's rates a 24-hour window could name billions of keys, so the oldest
//! are forgotten early when the index is full, and the metric
//! `waping_idempotency_evicted_total{cause="capacity"}` says so.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::SegQueue;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;
use waping_protocol::MessageId;

#[cfg(test)]
mod tests;

/// What became of the write that a pending key waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Not yet decided.
    InFlight,
    /// Journaled: the original id may be acknowledged.
    Durable,
    /// The write failed; the key was released and the sender may retry.
    Failed,
}

/// A claim still being written; await [`Pending::wait`] before acknowledging a duplicate.
#[derive(Debug, Clone)]
pub struct Pending {
    rx: watch::Receiver<Durability>,
}

impl Pending {
    /// Resolves once the original's write is durable (true) or failed (false).
    pub async fn wait(mut self) -> bool {
        match self.rx.wait_for(|d| *d != Durability::InFlight).await {
            Ok(d) => *d == Durability::Durable,
            // The claimer vanished without deciding (its task was dropped): treat as failed.
            Err(_) => false,
        }
    }
}

/// Outcome of [`IdempotencyIndex::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The key is new and now reserved for the given id; call `commit` or `release`.
    New(ClaimToken),
    /// The key was seen: answer with `id` (after `pending` resolves, if any).
    Duplicate {
        /// The original message id.
        id: MessageId,
        /// Set while the original is still being journaled.
        pending: Option<Pending>,
    },
}

/// Proof of a new claim; committing or releasing it wakes duplicates that wait.
#[derive(Debug)]
pub struct ClaimToken {
    hash: u128,
    id: MessageId,
    at_ms: u64,
    tx: watch::Sender<Durability>,
}

impl ClaimToken {
    /// The id reserved for the key.
    pub fn id(&self) -> MessageId {
        self.id
    }
}

#[derive(Debug)]
enum Slot {
    InFlight {
        id: MessageId,
        rx: watch::Receiver<Durability>,
    },
    /// `at_ms` ties the slot to its entry in the expiry queue: a key released and claimed
    /// again has two queue entries, and only the newer may remove it.
    Done { id: MessageId, at_ms: u64 },
}

/// The index. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct IdempotencyIndex {
    map: DashMap<u128, Slot>,
    /// Insertion order for expiry. Pushed lock-free by claimers, popped only by `expire`.
    order: SegQueue<(u64, u128)>,
    /// The entry `expire` looked at last and could not remove yet (SegQueue has no peek).
    /// Touched only by the one housekeeping caller, so the lock is never contended.
    held: std::sync::Mutex<Option<(u64, u128)>>,
    hasher: std::collections::hash_map::RandomState,
    window_ms: u64,
    capacity: usize,
    evicted_capacity: AtomicU64,
    evicted_window: AtomicU64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Keys remembered.
    pub len: usize,
    /// Forgotten early because the index was full.
    pub evicted_capacity: u64,
    /// Forgotten because the window passed.
    pub evicted_window: u64,
}

impl IdempotencyIndex {
    /// Remembers keys for `window_ms`, at most about `capacity` of them.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        IdempotencyIndex {
            map: DashMap::new(),
            order: SegQueue::new(),
            held: std::sync::Mutex::new(None),
            hasher: Default::default(),
            window_ms,
            capacity: capacity.max(1),
            evicted_capacity: AtomicU64::new(0),
            evicted_window: AtomicU64::new(0),
        }
    }

    /// Window length in ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn hash(&self, workspace: &str, key: &str) -> u128 {
        // Keyed per process (RandomState) so one tenant cannot aim collisions at another;
        // two independent 64-bit hashes make accidental collisions negligible.
        let mut a = self.hasher.build_hasher();
        let mut b = self.hasher.build_hasher();
        for (h, salt) in [(&mut a, 0x5a_u8), (&mut b, 0xa5)] {
            h.write_u8(salt);
            h.write_usize(workspace.len());
            h.write(workspace.as_bytes());
            h.write(key.as_bytes());
        }
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    /// Reserves `key` for `id` unless it is known. `now_ms` is wall-clock unix ms.
    pub fn claim(&self, workspace: &str, key: &str, id: MessageId, now_ms: u64) -> Claim {
        let hash = self.hash(workspace, key);
        match self.map.entry(hash) {
            Entry::Occupied(e) => match e.get() {
                Slot::Done { id, .. } => Claim::Duplicate {
                    id: *id,
                    pending: None,
                },
                Slot::InFlight { id, rx } => Claim::Duplicate {
                    id: *id,
                    pending: Some(Pending { rx: rx.clone() }),
                },
            },
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(Durability::InFlight);
                v.insert(Slot::InFlight { id, rx });
                self.order.push((now_ms, hash));
                Claim::New(ClaimToken {
                    hash,
                    id,
                    at_ms: now_ms,
                    tx,
                })
            }
        }
    }

    /// The claimed message is durable: duplicates may now be acknowledged.
    pub fn commit(&self, token: ClaimToken) {
        if let Some(mut slot) = self.map.get_mut(&token.hash)
            && matches!(&*slot, Slot::InFlight { id, .. } if *id == token.id)
        {
            *slot = Slot::Done {
                id: token.id,
                at_ms: token.at_ms,
            };
        }
        let _ = token.tx.send(Durability::Durable);
    }

    /// The claimed message was not persisted: forget the key so a resend can succeed.
    pub fn release(&self, token: ClaimToken) {
        self.map.remove_if(
            &token.hash,
            |_, s| matches!(s, Slot::InFlight { id, .. } if *id == token.id),
        );
        let _ = token.tx.send(Durability::Failed);
    }

    /// The message a key maps to, if the key is still remembered (durable or being written).
    pub fn lookup(&self, workspace: &str, key: &str) -> Option<MessageId> {
        self.map.get(&self.hash(workspace, key)).map(|s| match &*s {
            Slot::Done { id, .. } | Slot::InFlight { id, .. } => *id,
        })
    }

    /// Re-inserts a durable key found by journal replay. Returns false if it was already there.
    pub fn restore(&self, workspace: &str, key: &str, id: MessageId, accepted_at_ms: u64) -> bool {
        let hash = self.hash(workspace, key);
        match self.map.entry(hash) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Slot::Done {
                    id,
                    at_ms: accepted_at_ms,
                });
                self.order.push((accepted_at_ms, hash));
                true
            }
        }
    }

    /// Forgets keys older than the window, and the oldest beyond capacity. Returns how many went.
    ///
    /// Called by one housekeeping task; producers never block on it. Claims are
    /// queued in arrival order and replayed keys in accept order, so the queue is
    /// in time order up to clock steps; an entry behind a younger one lives at most
    /// until that one expires.
    pub fn expire(&self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = 0;
        // `DashMap::len` visits every shard: read it once, not once per entry (profiling showed
        // the per-entry call dominating a sweep that evicts by capacity).
        let mut len = self.map.len();
        while let Some((at, hash)) = held.take().or_else(|| self.order.pop()) {
            let over = len > self.capacity;
            if at >= cutoff && !over {
                *held = Some((at, hash));
                break;
            }
            // An in-flight claim is never evicted (its duplicates wait on it): stop here and
            // look again next sweep.
            if matches!(self.map.get(&hash).as_deref(), Some(Slot::InFlight { .. })) {
                *held = Some((at, hash));
                break;
            }
            if self
                .map
                .remove_if(
                    &hash,
                    |_, s| matches!(s, Slot::Done { at_ms, .. } if *at_ms == at),
                )
                .is_some()
            {
                removed += 1;
                len = len.saturating_sub(1);
                if at >= cutoff {
                    self.evicted_capacity.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.evicted_window.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        removed
    }

    /// Counters.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            len: self.map.len(),
            evicted_capacity: self.evicted_capacity.load(Ordering::Relaxed),
            evicted_window: self.evicted_window.load(Ordering::Relaxed),
        }
    }
}
