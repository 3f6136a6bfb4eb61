//! Retry queue: failures that can succeed later are tried again on a backoff schedule.
//!
//! - [`RetryPolicy`] (from [`RetryConfig`], `[retry]` in the config): exponential
//!   backoff with full jitter, per error code; permanent codes are dead at once,
//!   `UPSTREAM_THROTTLED` waits longer, a maximum attempt count and a maximum age.
//! - [`RetryState`]: attempts and timestamps of one item; turns a failure into
//!   [`Outcome::Retry`] or a [`DeadLetter`] record.
//! - [`RetryQueue`] / [`RetryHandle`]: generic over key and item (messages now,
//!   webhook deliveries later). Producers schedule lock-free into a `SegQueue`
//!   inbox; one scheduler owns a hierarchical [`TimingWheel`] and polls it with `now`.
//! - [`run_scheduler`]: an optional tokio loop that sleeps exactly until the next due item.
//!
//! Time: the queue runs on monotonic [`Nanos`]; the durable schedule (journal
//! records `RetryScheduled { due_at_ms }`) is wall-clock unix ms, bridged by
//! [`due_from_unix_ms`] and [`unix_ms_from_nanos`]. Nothing here reads a clock.
//! `docs/design/0005-retry-queue.md` records the choices.

mod driver;
mod policy;
mod queue;
mod state;
pub mod wheel;

#[cfg(test)]
mod tests;

pub use driver::run_scheduler;
pub use policy::{Backoff, CodeOverride, DeadReason, Decision, RetryConfig, RetryConfigError, RetryPolicy};
pub use queue::{Expired, Full, RetryHandle, RetryQueue};
pub use state::{DeadLetter, Outcome, RetryState};
pub use wheel::TimingWheel;

use crate::limiter::Nanos;

/// Length of one timing-wheel tick in nanoseconds (1 ms).
///
/// Why 1 ms: retry delays are seconds to hours, so finer ticks only add
/// cascades; the durable schedule is in ms too.
pub const TICK_NANOS: u64 = 1_000_000;

const NANOS_PER_MS: u64 = 1_000_000;

/// The monotonic instant at which a journaled wall-clock due time falls.
///
/// For resuming after a restart: `due_at_ms` is the journaled due time,
/// `now_unix_ms` and `now` the wall clock and the monotonic clock read at the
/// same moment. A due time already past maps to `now` (fires on the next
/// poll), so a restart resumes the schedule instead of restarting it; saturates at `u64::MAX`.
pub fn due_from_unix_ms(due_at_ms: u64, now_unix_ms: u64, now: Nanos) -> Nanos {
    let wait_ms = due_at_ms.saturating_sub(now_unix_ms);
    Nanos(now.0.saturating_add(wait_ms.saturating_mul(NANOS_PER_MS)))
}

/// The wall-clock unix ms of monotonic instant `t`, given both clocks read together (`now`, `now_unix_ms`).
///
/// Future instants round up to the next whole ms, so converting back with
/// [`due_from_unix_ms`] never makes an item fire early.
pub fn unix_ms_from_nanos(t: Nanos, now: Nanos, now_unix_ms: u64) -> u64 {
    if t.0 >= now.0 {
        now_unix_ms.saturating_add((t.0 - now.0).div_ceil(NANOS_PER_MS))
    } else {
        now_unix_ms.saturating_sub((now.0 - t.0) / NANOS_PER_MS)
    }
}
