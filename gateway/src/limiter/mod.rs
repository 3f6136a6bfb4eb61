//! Send-rate limits: per-workspace token buckets (GCRA), lock-free, with time as an argument.
//!
//! - [`Quota`]: rate and burst, validated ([`QuotaError`]) instead of clamped.
//! - [`Cell`]: one bucket; `check(now, n)` admits all `n` tokens or returns a
//!   [`Refusal`] whose [`RefusalReason`] says whether waiting `retry_after` helps.
//!   `set_quota` changes the limit in place on a reload, keeping the tokens in use.
//! - [`Limiter`]: cells by key (workspace id), with lock-free lookups;
//!   callers on the per-message path keep the [`Cell`] from [`Limiter::handle`].
//! - [`Nanos`], [`MonotonicClock`]: the limiter never reads a clock; callers pass `now`.
//!
//! `docs/design/0002-rate-limiter.md` records the choices and their measurements.

mod clock;
mod gcra;
mod keyed;
mod quota;

#[cfg(test)]
mod tests;

pub use clock::{MonotonicClock, Nanos};
pub use gcra::{Cell, Refusal, RefusalReason};
pub use keyed::{CheckKeyError, DEFAULT_SHARDS, Limiter, MAX_SHARDS};
pub use quota::{Quota, QuotaError};
