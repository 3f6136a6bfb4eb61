//! Per-workspace token bucket (GCRA), lock-free, with time as an argument.
//!
//! PLACEHOLDER written by the lead so the gateway compiles; the limiter owner
//! replaces it with the full module (keyed map, tests, benches).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds since a process-local origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Nanos(pub u64);

/// Production clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl MonotonicClock {
    /// A clock starting now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
    /// Current time.
    pub fn now(&self) -> Nanos {
        Nanos(self.origin.elapsed().as_nanos() as u64)
    }
}

/// Rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    per_second: u32,
    burst: u32,
}

impl Quota {
    /// Clamped to at least 1.
    pub fn per_second(per_second: u32, burst: u32) -> Self {
        Quota {
            per_second: per_second.max(1),
            burst: burst.max(1),
        }
    }
}

/// Why a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refused, retry after {retry_after:?}")]
pub struct Refused {
    /// When to retry.
    pub retry_after: Duration,
}

/// One bucket.
#[derive(Debug)]
pub struct Cell {
    tat: AtomicU64,
    interval: u64,
    tolerance: u64,
}

impl Cell {
    /// A full bucket.
    pub fn new(q: Quota) -> Self {
        let interval = 1_000_000_000 / u64::from(q.per_second);
        Cell {
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval * u64::from(q.burst - 1),
        }
    }
    /// Admits n or none.
    pub fn check(&self, now: Nanos, n: u32) -> Result<(), Refused> {
        let now = now.0;
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let new = base + self.interval * u64::from(n);
            let allowed_at = new.saturating_sub(self.interval + self.tolerance);
            if allowed_at > now {
                return Err(Refused {
                    retry_after: Duration::from_nanos(allowed_at - now),
                });
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(t) => tat = t,
            }
        }
    }
}

/// Keyed cells.
#[derive(Debug)]
pub struct Limiter<K> {
    map: arc_swap::ArcSwap<HashMap<K, Arc<Cell>>>,
}

impl<K: Hash + Eq + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// Empty.
    pub fn new() -> Self {
        Limiter {
            map: arc_swap::ArcSwap::from_pointee(HashMap::new()),
        }
    }
    /// Adds or replaces.
    pub fn upsert(&self, key: K, q: Quota) -> Arc<Cell> {
        let cell = Arc::new(Cell::new(q));
        let mut m = (**self.map.load()).clone();
        m.insert(key, cell.clone());
        self.map.store(Arc::new(m));
        cell
    }
}
