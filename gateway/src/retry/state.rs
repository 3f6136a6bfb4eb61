//! Per-item attempt bookkeeping and the dead-letter record.
//!
//! These are the fields the journal persists (`RetryScheduled`, `Dead`), kept
//! here so the message path and webhook redelivery count attempts the same way.

use rand::Rng;
use waping_protocol::error::ErrorCode;

use super::policy::{DeadReason, Decision, RetryPolicy};

/// Attempts of one item so far.
///
/// Default: none yet ([`RetryState::new`] sets the start). Times are wall-clock
/// unix ms because they are journaled and must mean the same after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts made and failed (the first send included).
    pub attempts: u32,
    /// When the first attempt was made; `max_age` counts from here.
    pub first_attempt_at_ms: u64,
    /// When the latest failure was recorded (equals `first_attempt_at_ms` before any).
    pub last_failure_at_ms: u64,
    /// Code of the latest failure, if any.
    pub last_code: Option<ErrorCode>,
}

/// What [`RetryState::on_failure`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Schedule attempt number `attempt` at `due_at_ms` (journal it as `RetryScheduled`).
    Retry {
        /// Number of the attempt to make (2 for the first retry).
        attempt: u32,
        /// Wall-clock due time; convert with [`super::due_from_unix_ms`].
        due_at_ms: u64,
    },
    /// Give up; store this record.
    Dead(DeadLetter),
}

/// A message or delivery that will not be tried again, with why and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was given up.
    pub reason: DeadReason,
    /// The error of the last attempt.
    pub last_code: ErrorCode,
    /// Attempts made, the first send included.
    pub attempts: u32,
    /// When the first attempt was made (unix ms).
    pub first_attempt_at_ms: u64,
    /// When it was declared dead (unix ms): the time of the last failure.
    pub dead_at_ms: u64,
}

impl RetryState {
    /// An item whose first attempt starts at `first_attempt_at_ms`.
    pub fn new(first_attempt_at_ms: u64) -> Self {
        RetryState {
            attempts: 0,
            first_attempt_at_ms,
            last_failure_at_ms: first_attempt_at_ms,
            last_code: None,
        }
    }

    /// Records that the current attempt failed with `code` at `now_ms` and asks `policy` what next.
    pub fn on_failure<R: Rng + ?Sized>(
        &mut self,
        policy: &RetryPolicy,
        code: ErrorCode,
        now_ms: u64,
        rng: &mut R,
    ) -> Outcome {
        self.attempts = self.attempts.saturating_add(1);
        self.last_failure_at_ms = now_ms;
        self.last_code = Some(code);
        match policy.decide(code, self.attempts, self.first_attempt_at_ms, now_ms, rng) {
            Decision::RetryAt(due_at_ms) => Outcome::Retry {
                attempt: self.attempts.saturating_add(1),
                due_at_ms,
            },
            Decision::Dead(reason) => Outcome::Dead(DeadLetter {
                reason,
                last_code: code,
                attempts: self.attempts,
                first_attempt_at_ms: self.first_attempt_at_ms,
                dead_at_ms: now_ms,
            }),
        }
    }
}
