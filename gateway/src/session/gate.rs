//! The node-wide connect gate: every device connect passes a token bucket, in priority order.
//!
//! A restart, or WhatsApp dropping every socket of the node at once, would otherwise make
//! every session connect in the same second: a thundering herd that looks like abuse to
//! WhatsApp and starves the node. Sessions ask the gate ([`ConnectGate::acquire`]); a driver
//! task grants the waiting requests at `rate` per second (burst `burst`), the best priority
//! first (devices active most recently come back first), FIFO within a priority.
//!
//! The ordering and rate logic ([`GateCore`]) is sans-IO and takes `now`, so its guarantees
//! (never more than `burst + rate·T` grants in any window `T`, priority order) are tested
//! on a simulated clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::limiter::{Cell, MonotonicClock, Nanos, Quota, RefusalReason};

/// Priority of a connect: lower goes first.
pub type Priority = u64;

/// The priority of a device last active at `last_active_ms` (unix ms; 0 = never): the most
/// recent first, so the numbers that were busiest before a restart are back first.
pub fn priority_of(last_active_ms: u64) -> Priority {
    u64::MAX - last_active_ms
}

/// Waiting requests and the bucket, without I/O.
#[derive(Debug)]
pub struct GateCore<T> {
    cell: Cell,
    waiting: BinaryHeap<Reverse<(Priority, u64, Slot<T>)>>,
    seq: u64,
}

/// A waiter; compared by nothing (order comes from priority and sequence).
#[derive(Debug)]
struct Slot<T>(T);

impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> GateCore<T> {
    /// A gate granting `quota`.
    pub fn new(quota: Quota) -> Self {
        GateCore {
            cell: Cell::new(quota),
            waiting: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Queues a request.
    pub fn push(&mut self, priority: Priority, waiter: T) {
        self.seq += 1;
        self.waiting.push(Reverse((priority, self.seq, Slot(waiter))));
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True if nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Grants as many waiters as the bucket allows at `now`, best first. `live` drops waiters
    /// that gave up (they cost no token). Returns the grants and, if some still wait, when
    /// to call again.
    pub fn poll(&mut self, now: Nanos, mut live: impl FnMut(&T) -> bool) -> (Vec<T>, Option<Nanos>) {
        let mut granted = Vec::new();
        loop {
            // Skip the abandoned before spending a token on them.
            while let Some(Reverse((_, _, Slot(w)))) = self.waiting.peek() {
                if live(w) {
                    break;
                }
                self.waiting.pop();
            }
            if self.waiting.is_empty() {
                return (granted, None);
            }
            match self.cell.check(now, 1) {
                Ok(()) => {
                    if let Some(Reverse((_, _, Slot(w)))) = self.waiting.pop() {
                        granted.push(w);
                    }
                }
                Err(r) => match r.reason {
                    RefusalReason::RateExceeded => return (granted, Some(now.saturating_add(r.retry_after))),
                    // Cost 1 never exceeds a burst ≥ 1 (Quota guarantees it); grant rather than stall.
                    RefusalReason::ExceedsBurst => {
                        if let Some(Reverse((_, _, Slot(w)))) = self.waiting.pop() {
                            granted.push(w);
                        }
                    }
                },
            }
        }
    }
}

/// The gate shared by every session of the node.
#[derive(Debug)]
pub struct ConnectGate {
    core: Mutex<GateCore<oneshot::Sender<()>>>,
    wake: Arc<Notify>,
    clock: MonotonicClock,
}

impl Drop for ConnectGate {
    fn drop(&mut self) {
        // Lets the driver see the gate is gone (a stored permit if it is not waiting yet).
        self.wake.notify_one();
    }
}

impl ConnectGate {
    /// A gate granting `rate` connects per second with bursts of `burst`, and its driver
    /// task (runs until the gate is dropped).
    pub fn start(quota: Quota, clock: MonotonicClock) -> Arc<ConnectGate> {
        let wake = Arc::new(Notify::new());
        let gate = Arc::new(ConnectGate {
            core: Mutex::new(GateCore::new(quota)),
            wake: wake.clone(),
            clock,
        });
        tokio::spawn(drive(Arc::downgrade(&gate), wake));
        gate
    }

    /// Waits for this device's turn to connect.
    pub async fn acquire(&self, priority: Priority) {
        let (tx, rx) = oneshot::channel();
        self.core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(priority, tx);
        self.wake.notify_one();
        // The driver only drops a sender when the gate itself is gone; then connect at once.
        let _ = rx.await;
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.core.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

async fn drive(gate: std::sync::Weak<ConnectGate>, wake: Arc<Notify>) {
    loop {
        // No strong reference is held while waiting, so dropping the gate ends the driver.
        let (clock, next) = {
            let Some(g) = gate.upgrade() else { return };
            let now = g.clock.now();
            let (granted, next) = g
                .core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .poll(now, |w| !w.is_closed());
            for w in granted {
                let _ = w.send(());
            }
            metrics::gauge!("waping_connect_gate_waiting").set(g.waiting() as f64);
            (g.clock, next)
        };
        // A request pushed since the poll left a permit: this returns at once.
        let notified = wake.notified();
        match next {
            Some(at) => {
                let wait = Duration::from_nanos(at.0.saturating_sub(clock.now().0));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Nanos {
        Nanos((s * 1e9) as u64)
    }

    #[test]
    fn grants_in_priority_then_arrival_order() {
        let mut g = GateCore::new(Quota::per_second(1, 1).unwrap());
        g.push(priority_of(100), "old");
        g.push(priority_of(900), "recent-a");
        g.push(priority_of(500), "middle");
        g.push(priority_of(900), "recent-b");
        let mut order = Vec::new();
        let mut t = 0.0;
        while !g.is_empty() {
            let (got, next) = g.poll(secs(t), |_| true);
            order.extend(got);
            t = next.map_or(t, |n| n.0 as f64 / 1e9);
        }
        assert_eq!(order, ["recent-a", "recent-b", "middle", "old"]);
    }

    #[test]
    fn abandoned_waiters_cost_no_token() {
        let mut g = GateCore::new(Quota::per_second(1, 1).unwrap());
        g.push(1, 1);
        g.push(2, 2);
        let (got, next) = g.poll(secs(0.0), |w| *w != 1);
        assert_eq!(got, [2]);
        assert_eq!(next, None);
    }

    proptest! {
        /// In any window of length T the gate grants at most burst + rate·T, and it never
        /// leaves a waiter behind while tokens are available.
        #[test]
        fn never_exceeds_the_cap(
            rate in 1u32..200,
            burst in 1u32..50,
            arrivals in proptest::collection::vec((0u64..5_000, 1usize..200), 1..40),
        ) {
            let mut g = GateCore::new(Quota::per_second(rate, burst).unwrap());
            let mut arrivals = arrivals;
            arrivals.sort();
            let mut grants: Vec<u64> = Vec::new();
            let mut t_ms = 0u64;
            let mut i = 0;
            let total: usize = arrivals.iter().map(|a| a.1).sum();
            while grants.len() < total {
                while i < arrivals.len() && arrivals[i].0 <= t_ms {
                    for _ in 0..arrivals[i].1 { g.push(0, ()); }
                    i += 1;
                }
                let (got, next) = g.poll(Nanos(t_ms * 1_000_000), |_| true);
                grants.extend(std::iter::repeat_n(t_ms, got.len()));
                let next_arrival = arrivals.get(i).map(|a| a.0);
                let next_grant = next.map(|n| n.0.div_ceil(1_000_000));
                t_ms = match (next_arrival, next_grant) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => break,
                };
            }
            prop_assert_eq!(grants.len(), total, "everyone is served");
            for (k, &start) in grants.iter().enumerate() {
                for (n, &end) in grants[k..].iter().enumerate() {
                    let window_s = (end - start) as f64 / 1000.0;
                    let allowed = f64::from(burst) + f64::from(rate) * window_s + 1e-9;
                    prop_assert!((n + 1) as f64 <= allowed,
                        "{} grants in {window_s} s with rate {rate} burst {burst}", n + 1);
                }
            }
        }
    }

    #[tokio::test]
    async fn async_gate_spaces_connects() {
        // The gate reads the real monotonic clock, so this runs in real time (about 100 ms).
        let gate = ConnectGate::start(Quota::per_second(100, 2).unwrap(), MonotonicClock::new());
        let start = std::time::Instant::now();
        let mut handles = Vec::new();
        for i in 0..12u64 {
            let g = gate.clone();
            handles.push(tokio::spawn(async move {
                g.acquire(i).await;
                std::time::Instant::now()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap() - start);
        }
        times.sort();
        // Two at once (the burst), then one every 10 ms: the 12th no earlier than 100 ms.
        assert!(times[11] >= Duration::from_millis(99), "{times:?}");
        assert_eq!(gate.waiting(), 0);
    }
}
