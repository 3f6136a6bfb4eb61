//! Buckets by key (one per workspace), read without locks.
//!
//! Each shard is an immutable `HashMap` behind an `ArcSwap`: a lookup is an
//! atomic pointer load plus a hash probe, and never writes shared memory, so
//! readers on different cores do not bounce a cache line between them (a
//! read-write lock would, even for readers). Writers copy the shard, change
//! the copy and swap it in; keys change on configuration loads only, and
//! quota changes do not copy at all because they update the cell in place.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::clock::Nanos;
use super::gcra::{Cell, Refusal};
use super::quota::Quota;

/// Shards of [`Limiter::new`]. One: a single shard skips hashing the key
/// twice (once to pick the shard, once in the map), which measured faster on
/// lookups; copy-on-write cost is kept down by [`Limiter::upsert_many`].
pub const DEFAULT_SHARDS: usize = 1;

/// Most shards a limiter accepts; more only fragments memory.
pub const MAX_SHARDS: usize = 1024;

/// Why a keyed check did not admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckKeyError {
    /// No bucket exists for the key; keys are added by configuration, never by traffic.
    #[error("no limit is configured for this key")]
    UnknownKey,
    /// The key's bucket refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Token buckets by key, each with its own quota.
///
/// Default: empty, [`DEFAULT_SHARDS`] shards, `RandomState` hashing (keys
/// may come from clients, so a keyed hash resists collision floods). Bounds:
/// 1..=[`MAX_SHARDS`] shards, any number of keys. Why not a `DashMap`: its
/// readers take a shard lock (an atomic write to a shared line); here readers
/// only load.
pub struct Limiter<K, S = RandomState> {
    hasher: S,
    mask: usize,
    shards: Box<[Shard<K, S>]>,
}

struct Shard<K, S> {
    cells: ArcSwap<HashMap<K, Arc<Cell>, S>>,
    /// Serialises copy-on-write writers so two inserts cannot lose each other.
    writer: Mutex<()>,
}

impl<K, S> Shard<K, S> {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded unit holds no data, so a panic elsewhere leaves nothing inconsistent.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, S> fmt::Debug for Limiter<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field(
                "keys",
                &self.shards.iter().map(|s| s.cells.load().len()).sum::<usize>(),
            )
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// An empty limiter with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// An empty limiter with `shards` shards, rounded up to a power of two within 1..=[`MAX_SHARDS`].
    pub fn with_shards(shards: usize) -> Self {
        Self::with_shards_and_hasher(shards, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher + Clone> Limiter<K, S> {
    /// An empty limiter hashing with `hasher`; `shards` as in [`Limiter::with_shards`].
    pub fn with_shards_and_hasher(shards: usize, hasher: S) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        let shards = (0..n)
            .map(|_| Shard {
                cells: ArcSwap::from_pointee(HashMap::with_hasher(hasher.clone())),
                writer: Mutex::new(()),
            })
            .collect();
        Limiter {
            hasher,
            mask: n - 1,
            shards,
        }
    }

    #[inline]
    fn shard_index<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        if self.mask == 0 {
            return 0;
        }
        // High half of the hash: the map inside uses the low bits for its
        // buckets and the top 7 for its tags, so the shard choice must not
        // correlate with either.
        (self.hasher.hash_one(key) >> 32) as usize & self.mask
    }

    #[inline]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, S> {
        &self.shards[self.shard_index(key)]
    }

    /// The key's bucket, for callers that check it many times (a connection
    /// caches its workspace's cell and skips the lookup per message).
    pub fn handle<Q>(&self, key: &Q) -> Option<Arc<Cell>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).cells.load().get(key).cloned()
    }

    /// Takes `n` tokens from the key's bucket at `now`, all or none.
    pub fn check_key<Q>(&self, key: &Q, now: Nanos, n: u32) -> Result<(), CheckKeyError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.shard(key).cells.load().get(key) {
            Some(cell) => Ok(cell.check(now, n)?),
            None => Err(CheckKeyError::UnknownKey),
        }
    }

    /// Sets the key's quota: a new key gets a full bucket; an existing key
    /// keeps its bucket (and its level, see [`Cell::set_quota`]), so handles
    /// already given out see the change. `now` matters only for existing keys.
    pub fn upsert(&self, key: K, quota: Quota, now: Nanos) -> Arc<Cell> {
        let shard = self.shard(&key);
        let _w = shard.lock();
        let cur = shard.cells.load_full();
        if let Some(cell) = cur.get(&key) {
            update(cell, quota, now);
            return cell.clone();
        }
        let cell = Arc::new(Cell::new(quota));
        let mut next = HashMap::clone(&cur);
        next.insert(key, cell.clone());
        shard.cells.store(Arc::new(next));
        cell
    }

    /// [`Limiter::upsert`] for many keys, copying each shard at most once;
    /// returns the cells in input order. Use it for configuration loads: one
    /// upsert per key would copy the map once per key.
    pub fn upsert_many<I>(&self, items: I, now: Nanos) -> Vec<Arc<Cell>>
    where
        I: IntoIterator<Item = (K, Quota)>,
    {
        let mut by_shard: Vec<Vec<(usize, K, Quota)>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        let mut count = 0;
        for (i, (k, q)) in items.into_iter().enumerate() {
            by_shard[self.shard_index(&k)].push((i, k, q));
            count = i + 1;
        }
        let mut out: Vec<Option<Arc<Cell>>> = vec![None; count];
        for (shard, batch) in self.shards.iter().zip(by_shard) {
            if batch.is_empty() {
                continue;
            }
            let _w = shard.lock();
            let cur = shard.cells.load_full();
            let mut next: Option<HashMap<K, Arc<Cell>, S>> = None;
            for (i, k, q) in batch {
                let found = next.as_ref().unwrap_or(&cur).get(&k).cloned();
                let cell = match found {
                    Some(cell) => {
                        update(&cell, q, now);
                        cell
                    }
                    None => {
                        let cell = Arc::new(Cell::new(q));
                        next.get_or_insert_with(|| HashMap::clone(&cur))
                            .insert(k, cell.clone());
                        cell
                    }
                };
                out[i] = Some(cell);
            }
            if let Some(m) = next {
                shard.cells.store(Arc::new(m));
            }
        }
        // Every index was filled exactly once above.
        out.into_iter().flatten().collect()
    }

    /// Drops the key's bucket; handles already given out keep working on their own.
    pub fn remove<Q>(&self, key: &Q) -> Option<Arc<Cell>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key);
        let _w = shard.lock();
        let cur = shard.cells.load_full();
        let cell = cur.get(key)?.clone();
        let mut next = HashMap::clone(&cur);
        next.remove(key);
        shard.cells.store(Arc::new(next));
        Some(cell)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.cells.load().len()).sum()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.cells.load().is_empty())
    }

    /// Number of shards (a power of two).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

/// Applies a quota to an existing cell; an unchanged quota touches nothing.
fn update(cell: &Cell, quota: Quota, now: Nanos) {
    if cell.quota() != quota {
        cell.set_quota(quota, now);
    }
}
