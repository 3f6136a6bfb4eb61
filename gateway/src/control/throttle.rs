//! Per-key request gates over wall-clock milliseconds passed in by the caller (GCRA):
//! failed authentications per source address, API requests per key and per source.
//!
//! Each admitted event advances the key's theoretical arrival time (TAT) by one emission
//! interval; an event is refused while the TAT runs more than the burst tolerance ahead of
//! `now`. One `u64` per key, pruned when the map grows, so memory stays bounded under a
//! spray of sources.

use std::hash::Hash;
use std::net::IpAddr;

use dashmap::DashMap;

/// Entries kept before stale ones are pruned.
const PRUNE_AT: usize = 10_000;

/// A GCRA gate per key.
#[derive(Debug)]
pub struct Gcra<K: Hash + Eq> {
    interval_ms: u64,
    tolerance_ms: u64,
    tat: DashMap<K, u64>,
}

impl<K: Hash + Eq + Clone> Gcra<K> {
    /// `count` events per `period_ms`, of which `burst` may come at once (both at least 1).
    pub fn new(count: u32, period_ms: u64, burst: u32) -> Gcra<K> {
        let interval_ms = (period_ms / u64::from(count.max(1))).max(1);
        Gcra {
            interval_ms,
            tolerance_ms: interval_ms * u64::from(burst.max(1) - 1),
            tat: DashMap::new(),
        }
    }

    /// `Ok` if an event of `key` would be admitted at `now_ms`, else milliseconds to wait.
    /// Takes nothing.
    pub fn check(&self, key: &K, now_ms: u64) -> Result<(), u32> {
        match self.tat.get(key) {
            Some(t) if *t > now_ms + self.tolerance_ms => {
                Err((*t - now_ms - self.tolerance_ms).min(u64::from(u32::MAX)) as u32)
            }
            _ => Ok(()),
        }
    }

    /// Admits an event of `key` at `now_ms` if it fits, else returns milliseconds to wait.
    pub fn take(&self, key: &K, now_ms: u64) -> Result<(), u32> {
        self.prune(now_ms);
        let mut e = self.tat.entry(key.clone()).or_insert(now_ms);
        let tat = (*e).max(now_ms);
        if tat > now_ms + self.tolerance_ms {
            return Err((tat - now_ms - self.tolerance_ms).min(u64::from(u32::MAX)) as u32);
        }
        *e = tat + self.interval_ms;
        Ok(())
    }

    /// Counts an event of `key` whether or not it fits (failures are always counted).
    pub fn record(&self, key: &K, now_ms: u64) {
        self.prune(now_ms);
        let mut e = self.tat.entry(key.clone()).or_insert(now_ms);
        *e = (*e).max(now_ms) + self.interval_ms;
    }

    fn prune(&self, now_ms: u64) {
        if self.tat.len() >= PRUNE_AT {
            self.tat.retain(|_, t| *t > now_ms);
        }
    }

    /// Keys tracked (tests).
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }
}

/// Failed authentications per source address, HTTP and QUIC together: `per_minute` are
/// allowed, then the source is refused (AUTH_THROTTLED) until it falls back. Successful
/// authentications cost nothing, so a client with a valid key is never slowed by this.
#[derive(Debug)]
pub struct AuthThrottle(Gcra<IpAddr>);

impl AuthThrottle {
    /// Allows `per_minute` failures per source per minute.
    pub fn new(per_minute: u32) -> AuthThrottle {
        AuthThrottle(Gcra::new(per_minute, 60_000, per_minute))
    }

    /// `Ok` if `source` may try to authenticate at `now_ms`, else the milliseconds to wait.
    pub fn check(&self, source: IpAddr, now_ms: u64) -> Result<(), u32> {
        self.0.check(&source, now_ms)
    }

    /// Records a failed authentication.
    pub fn failed(&self, source: IpAddr, now_ms: u64) {
        self.0.record(&source, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_per_minute_then_refuses_until_time_passes() {
        let t = AuthThrottle::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = 1_000_000;
        for i in 0..10 {
            assert!(t.check(a, now).is_ok(), "failure {i} still allowed");
            t.failed(a, now);
        }
        let wait = t.check(a, now).unwrap_err();
        assert!(wait > 0 && wait <= 6_000, "{wait}");
        assert!(t.check(b, now).is_ok(), "other sources are unaffected");
        assert!(
            t.check(a, now + u64::from(wait)).is_ok(),
            "allowed again after the wait"
        );
    }

    #[test]
    fn take_admits_rate_times_time_plus_burst() {
        let g: Gcra<&str> = Gcra::new(10, 1000, 5);
        let mut ok = 0;
        // 2 s at one attempt per millisecond: burst 5 + 10/s * 2 s.
        for now in 0..2000u64 {
            if g.take(&"k", now).is_ok() {
                ok += 1;
            }
        }
        assert!((24..=26).contains(&ok), "{ok}");
        // Whatever the phase, at most one more fits at the same instant, then the answer is
        // a wait of at most one emission interval.
        let wait = (0..3)
            .find_map(|_| g.take(&"k", 2000).err())
            .expect("refused at once");
        assert!((1..=100).contains(&wait), "{wait}");
        assert!(g.take(&"other", 2000).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let g: Gcra<u32> = Gcra::new(1, 60_000, 1);
        for i in 0..(PRUNE_AT as u32 * 3) {
            g.record(&i, u64::from(i) * 120_000);
        }
        assert!(g.len() <= PRUNE_AT + 1, "{}", g.len());
    }
}
