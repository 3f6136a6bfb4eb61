//! One bucket: GCRA over a single atomic theoretical arrival time.
//!
//! GCRA (the generic cell rate algorithm) stores one instant per bucket, the
//! theoretical arrival time (TAT): when the bucket will be full again if
//! nothing else is taken. A request of cost `n` at `now` is admitted when
//! `max(TAT, now) + n·T <= now + window` and then moves TAT forward by
//! `n·T`. That is exactly a token bucket refilled continuously, without a
//! refill task and with one word of state, so a compare-and-swap commits it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use super::clock::Nanos;
use super::quota::{Params, Quota};

/// What kind of refusal a check met; tells the caller whether waiting helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Not enough tokens now; the same check succeeds after `retry_after`
    /// if nobody else takes tokens meanwhile.
    RateExceeded,
    /// The cost is larger than the whole burst: no amount of waiting admits it.
    ExceedsBurst,
}

/// A check that was not admitted. Refusals take nothing from the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Refusal {
    /// Why; decides the error code a client gets.
    pub reason: RefusalReason,
    /// For [`RefusalReason::RateExceeded`], the exact wait after which the same
    /// check succeeds (1 ns less still fails); zero for
    /// [`RefusalReason::ExceedsBurst`], which no wait cures.
    pub retry_after: Duration,
}

impl Refusal {
    fn describe(&self) -> String {
        match self.reason {
            RefusalReason::RateExceeded => format!("rate exceeded, retry after {:?}", self.retry_after),
            RefusalReason::ExceedsBurst => "cost exceeds the burst capacity, it can never be admitted".into(),
        }
    }
}

/// The GCRA decision for cost `n` at `now` against `tat`: the new TAT if admitted.
///
/// Pure so the reference-model tests and the atomic cell share no state.
/// Every step is overflow-free for any inputs: the cost is checked against the
/// window before it is added, differences are taken larger-minus-smaller, and
/// only the new TAT saturates (at `u64::MAX`, 584 years after the origin).
pub(super) fn decide(tat: u64, now: u64, n: u32, p: Params) -> Result<u64, Refusal> {
    let cost = match u64::from(n).checked_mul(p.interval) {
        Some(c) if c <= p.window => c,
        _ => {
            return Err(Refusal {
                reason: RefusalReason::ExceedsBurst,
                retry_after: Duration::ZERO,
            });
        }
    };
    let base = tat.max(now);
    // How long until the bucket is full again, and how much of that may be
    // outstanding for this cost to still fit.
    let debt = base - now;
    let room = p.window - cost;
    if debt <= room {
        Ok(base.saturating_add(cost))
    } else {
        Err(Refusal {
            reason: RefusalReason::RateExceeded,
            // At now + (debt - room) the debt has shrunk to exactly `room`.
            retry_after: Duration::from_nanos(debt - room),
        })
    }
}

/// Re-expresses a TAT under a new quota so the tokens in use stay in use.
///
/// The debt (time until full) is converted from old-interval units to
/// new-interval units, rounded up, and capped at the new window (an empty
/// bucket). Keeping the raw TAT instead would keep the *time* owed, which
/// after a rate cut hands out a fresh burst: wrong for a limit an operator
/// just lowered.
pub(super) fn convert(tat: u64, now: u64, old: Params, new: Params) -> u64 {
    let debt = tat.saturating_sub(now);
    if debt == 0 {
        return tat;
    }
    let scaled = (u128::from(debt) * u128::from(new.interval)).div_ceil(u128::from(old.interval));
    let capped = u64::try_from(scaled.min(u128::from(new.window))).unwrap_or(new.window);
    now.saturating_add(capped)
}

/// One token bucket, shared by reference between all threads that check it.
///
/// Default: none; built full from a [`Quota`]. Bounds: any `u64` instant and
/// any `u32` cost; cost 0 is always admitted and changes nothing. Why this
/// layout: the decision state is one `AtomicU64` (TAT) committed by a single
/// compare-and-swap, so the hot path never blocks; the quota sits beside it
/// under a sequence counter so a reload can change it in place, keeping the
/// bucket's level, without a pointer chase or reference count per check.
pub struct Cell {
    /// Theoretical arrival time, nanoseconds on the caller's clock.
    tat: AtomicU64,
    /// Seqlock over (`interval`, `window`, and the TAT conversion of a
    /// reload): odd while [`Cell::set_quota`] runs.
    version: AtomicU64,
    interval: AtomicU64,
    window: AtomicU64,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, tat) = self.snapshot();
        f.debug_struct("Cell")
            .field("quota", &Quota::from_params(p))
            .field("tat", &Nanos(tat))
            .finish()
    }
}

impl Cell {
    /// A full bucket: `burst` tokens are available at any instant from the origin on.
    pub fn new(quota: Quota) -> Cell {
        let p = quota.params();
        Cell {
            tat: AtomicU64::new(0),
            version: AtomicU64::new(0),
            interval: AtomicU64::new(p.interval),
            window: AtomicU64::new(p.window),
        }
    }

    /// Takes `n` tokens at `now`, all or none.
    ///
    /// `now` must come from the same clock for every check of this cell; it
    /// may run slightly behind other threads' instants (a late reader is just
    /// judged against a fuller debt). Lock-free: a failed compare-and-swap
    /// means another thread committed, and the check is recomputed.
    pub fn check(&self, now: Nanos, n: u32) -> Result<(), Refusal> {
        if n == 0 {
            return Ok(());
        }
        loop {
            let (p, tat) = self.snapshot();
            let next = decide(tat, now.0, n, p)?;
            // Relaxed suffices: the cell guards no other memory, and all
            // operations on one atomic are totally ordered anyway.
            if self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Tokens that a check at `now` could take (a snapshot; others may take them first).
    pub fn available(&self, now: Nanos) -> u32 {
        let (p, tat) = self.snapshot();
        let room = p.window.saturating_sub(tat.saturating_sub(now.0));
        u32::try_from(room / p.interval).unwrap_or(u32::MAX)
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        Quota::from_params(self.snapshot().0)
    }

    /// Replaces the quota in place, keeping the tokens already taken.
    ///
    /// `now` is the instant of the reload on the cell's clock; debt at that
    /// instant is converted to the new rate and capped at the new burst (see
    /// the design record). Checks never wait for a lock: during the few
    /// instructions of the update they retry. A check that read the state
    /// just before the update and commits just after it is decided, and
    /// charged, under the old quota.
    pub fn set_quota(&self, quota: Quota, now: Nanos) {
        let new = quota.params();
        let mut v = self.version.load(Ordering::Relaxed);
        // Writers exclude each other by moving the version from even to odd;
        // they are reloads, rare and short, so spinning is fine here.
        loop {
            if v & 1 == 1 {
                std::hint::spin_loop();
                v = self.version.load(Ordering::Relaxed);
                continue;
            }
            match self
                .version
                .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => v = seen,
            }
        }
        fence(Ordering::Release);
        let old = Params {
            interval: self.interval.load(Ordering::Relaxed),
            window: self.window.load(Ordering::Relaxed),
        };
        // A check that snapshotted before the version moved fails its CAS here
        // (the TAT changes) and recomputes under the new quota.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(convert(tat, now.0, old, new))
            });
        self.interval.store(new.interval, Ordering::Relaxed);
        self.window.store(new.window, Ordering::Relaxed);
        self.version.store(v + 2, Ordering::Release);
    }

    /// A consistent (quota, TAT) pair: a seqlock read.
    #[inline]
    fn snapshot(&self) -> (Params, u64) {
        let mut spins = 0u32;
        loop {
            let v1 = self.version.load(Ordering::Acquire);
            if v1 & 1 == 0 {
                let p = Params {
                    interval: self.interval.load(Ordering::Relaxed),
                    window: self.window.load(Ordering::Relaxed),
                };
                let tat = self.tat.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.version.load(Ordering::Relaxed) == v1 {
                    return (p, tat);
                }
            }
            // Only a reload in progress gets here; if its thread was preempted
            // mid-update, give it the core instead of burning the time slice.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}
