//! Retry tests on a simulated clock: no test sleeps on a real clock.

mod driver;
mod model;
mod policy;
mod queue;
mod wheel;

use crate::limiter::Nanos;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;
const DAY: u64 = 24 * HOUR;

fn n(v: u64) -> Nanos {
    Nanos(v)
}
