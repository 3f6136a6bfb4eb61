//! How fast a bucket refills and how much it holds.

use std::time::Duration;

/// Why a quota cannot be built. Every variant is a configuration mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// `count` was 0: a bucket that never refills is a ban, not a limit.
    #[error("rate must be at least 1 per period")]
    ZeroRate,
    /// `burst` was 0: nothing could ever pass.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// The period was zero.
    #[error("period must be longer than zero")]
    ZeroPeriod,
    /// More than one token per nanosecond, the clock's resolution.
    #[error("{count} per {period:?} is faster than 1 per nanosecond")]
    TooFast {
        /// Tokens per period.
        count: u32,
        /// The period.
        period: Duration,
    },
    /// Refilling the whole burst would take longer than `u64` nanoseconds (584 years).
    #[error("refilling a burst of {burst} at one per {interval:?} takes longer than 584 years")]
    WindowTooLong {
        /// Time per token.
        interval: Duration,
        /// Capacity.
        burst: u32,
    },
}

/// A bucket's shape: one token every `interval`, at most `burst` tokens held.
///
/// No default: every limit comes from configuration. Bounds: interval
/// 1 ns..=584 years, burst 1..=`u32::MAX`, and `interval × burst` (the time to
/// refill an empty bucket) must fit in `u64` nanoseconds; constructors refuse
/// anything else with a [`QuotaError`] rather than clamp, so a typo in a
/// config file is reported instead of silently becoming another limit.
/// Why an interval and not a rate: GCRA works in time per token, and an
/// interval expresses slow limits (one per minute) exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    interval_ns: u64,
    burst: u32,
}

impl Quota {
    /// `count` tokens every `period`, holding at most `burst`.
    ///
    /// The interval is rounded *up* to whole nanoseconds so the effective rate
    /// never exceeds the one asked for (error below 1% up to 10 M/s).
    pub fn new(count: u32, period: Duration, burst: u32) -> Result<Quota, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroRate);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        if period.as_nanos() < u128::from(count) {
            return Err(QuotaError::TooFast { count, period });
        }
        Quota::from_interval(period.as_nanos().div_ceil(u128::from(count)), burst)
    }

    /// `rate` tokens per second, holding at most `burst`.
    pub fn per_second(rate: u32, burst: u32) -> Result<Quota, QuotaError> {
        Quota::new(rate, Duration::from_secs(1), burst)
    }

    /// One token every `period`, holding at most `burst`: for rates below 1/s,
    /// e.g. `per_period(Duration::from_secs(60), 1)` is one per minute.
    pub fn per_period(period: Duration, burst: u32) -> Result<Quota, QuotaError> {
        Quota::new(1, period, burst)
    }

    fn from_interval(interval: u128, burst: u32) -> Result<Quota, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        let too_long = || QuotaError::WindowTooLong {
            interval: Duration::from_nanos(u64::try_from(interval).unwrap_or(u64::MAX)),
            burst,
        };
        let interval_ns = u64::try_from(interval).map_err(|_| too_long())?;
        interval_ns.checked_mul(u64::from(burst)).ok_or_else(too_long)?;
        Ok(Quota { interval_ns, burst })
    }

    /// Time for one token to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// Most tokens the bucket holds, i.e. the largest cost ever admitted at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time to refill an empty bucket (`interval × burst`).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.params().window)
    }

    pub(super) fn params(&self) -> Params {
        Params {
            interval: self.interval_ns,
            // Cannot overflow: checked when the quota was built.
            window: self.interval_ns * u64::from(self.burst),
        }
    }

    /// Rebuilds a quota from stored parameters (which came from a valid quota).
    pub(super) fn from_params(p: Params) -> Quota {
        Quota {
            interval_ns: p.interval,
            burst: u32::try_from(p.window / p.interval).unwrap_or(u32::MAX),
        }
    }
}

/// A quota in the units GCRA computes with, both in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Params {
    /// Emission interval T: the cost of one token.
    pub interval: u64,
    /// T × burst: how far ahead of `now` the theoretical arrival time may run.
    pub window: u64,
}
