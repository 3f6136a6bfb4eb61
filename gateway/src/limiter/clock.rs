//! Time as the limiter sees it: a `u64` of nanoseconds the caller passes in.
//!
//! The limiter never reads a clock itself, so tests drive it with any
//! sequence of instants and production code reads [`MonotonicClock`] once
//! per message.

use std::time::{Duration, Instant};

/// Nanoseconds since a clock's origin.
///
/// Default 0 (the origin). Bounds: the whole `u64` range (about 584 years);
/// arithmetic on it saturates, so an instant past the end stays at `u64::MAX`.
/// Why a bare integer: it fits the single atomic word a bucket keeps, and
/// instants from different clocks must never be mixed, which a number makes
/// easy to see in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The origin.
    pub const ZERO: Nanos = Nanos(0);
    /// The last representable instant.
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// Whole nanoseconds of `d`; saturates at [`Nanos::MAX`] (584 years).
    pub fn from_duration(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The span since the origin.
    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self + d`, saturating at [`Nanos::MAX`].
    pub fn saturating_add(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_add(Nanos::from_duration(d).0))
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_sub(Nanos::from_duration(d).0))
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Nanos {
        Nanos::from_duration(d)
    }
}

/// Production clock: nanoseconds elapsed since the clock was created.
///
/// Default: a clock whose origin is the moment of the call. Copies share the
/// origin, so every cell checked with one clock (and its copies) sees one
/// timeline; cells must not be checked with two different clocks.
/// Why `Instant`: it is monotonic (never goes back on wall-clock changes), which
/// GCRA needs, and an offset from a private origin keeps the value small.
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
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }

    /// Time since the origin; never decreases, saturates after 584 years.
    pub fn now(&self) -> Nanos {
        Nanos::from_duration(self.origin.elapsed())
    }
}
