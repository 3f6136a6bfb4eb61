//! Retry schedule and response classification.
//!
//! The default schedule follows Standard Webhooks' example ("immediately, 5 s, 5 min,
//! 30 min, 2 h, 5 h, 10 h, …"), cut at 8 attempts over about a day (the spec's example goes
//! on to 14, 20 and 24 h; a receiver down for more than a day gets its breaker opened and
//! its owner told long before that, and the store keeps the event for a manual replay).
//! Every delay gets random jitter so endpoints that fail together do not get retried in
//! lockstep. Times are unix milliseconds passed in by the caller; randomness comes from a
//! caller-supplied RNG, so a seeded one makes every due time exact in tests.

use std::time::Duration;

use rand::RngCore;
use serde::Serialize;

/// The default delays before attempts 1 to 8 (attempt 1 goes immediately).
pub const DEFAULT_DELAYS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Default jitter: each delay is moved by up to ±20 %, enough to spread a burst of
/// failures, small enough that "5 minutes" still means about 5 minutes.
pub const DEFAULT_JITTER_PERCENT: u8 = 20;

/// Most jitter accepted: beyond ±50 % the schedule's shape is gone.
pub const MAX_JITTER_PERCENT: u8 = 50;

/// Default cap on `Retry-After`: a day. A receiver asking for more (or a typo'd value) is
/// still retried daily rather than parked for weeks.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Default attempts after which a client error (other 4xx, 3xx) ends the message: a
/// misconfigured endpoint gets a couple of chances (the owner may be fixing it right now),
/// not a day of attempts.
pub const DEFAULT_PERMANENT_AFTER: u32 = 3;

/// Most attempts a schedule may have.
pub const MAX_ATTEMPTS: usize = 32;

/// Longest single delay accepted: a week. Longer means the event is stale anyway.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a response (or a network failure) means for the message and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// 410 Gone: the receiver wants no more webhooks; disable the endpoint (the spec's
    /// advice) and stop retrying.
    DisableEndpoint,
    /// 429, 502, 503, 504: the receiver is overloaded or rate-limiting. Retry, honour
    /// `Retry-After`, and open the endpoint's breaker so other messages back off too.
    SlowDown,
    /// 408, 500, other 5xx, 1xx, network errors and timeouts: retry on schedule.
    Retry,
    /// Other 4xx, and 3xx (redirects are not followed: the owner must update the URL to
    /// where it points): retried only until [`Schedule::permanent_after`] attempts.
    Permanent,
}

impl Verdict {
    /// Whether this counts as a failed attempt (everything but [`Verdict::Delivered`]).
    pub fn is_failure(self) -> bool {
        self != Verdict::Delivered
    }
}

/// Classifies an HTTP status.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::DisableEndpoint,
        429 | 502 | 503 | 504 => Verdict::SlowDown,
        408 | 425 => Verdict::Retry,
        300..=499 => Verdict::Permanent,
        _ => Verdict::Retry,
    }
}

/// What to do with a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Delivered; nothing more to do.
    Done,
    /// Try again at this time (unix ms).
    RetryAt(u64),
    /// Stop: attempts are used up, or a client error repeated. The message is dead-lettered.
    GiveUp,
    /// Stop and disable the endpoint (410 Gone).
    DisableEndpoint,
}

/// Why a schedule was refused: the operator's configuration; not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No delays, or more than [`MAX_ATTEMPTS`].
    #[error("a retry schedule needs 1 to {MAX_ATTEMPTS} delays, got {0}")]
    Length(usize),
    /// A delay longer than [`MAX_DELAY`].
    #[error("retry delay {0:?} is longer than the maximum of 7 days")]
    Delay(Duration),
    /// Jitter above [`MAX_JITTER_PERCENT`].
    #[error("retry jitter of {0} % is above the maximum of {MAX_JITTER_PERCENT} %")]
    Jitter(u8),
    /// `permanent_after` of 0.
    #[error("permanent_after must be at least 1 (the first attempt)")]
    PermanentAfter,
}

/// A retry schedule: the delay before each attempt, jitter, the `Retry-After` cap and the
/// client-error cut-off. See the module documentation for the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    delays: Vec<Duration>,
    jitter_percent: u8,
    max_retry_after: Duration,
    permanent_after: u32,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            delays: DEFAULT_DELAYS.to_vec(),
            jitter_percent: DEFAULT_JITTER_PERCENT,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            permanent_after: DEFAULT_PERMANENT_AFTER,
        }
    }
}

impl Schedule {
    /// A schedule with these delays (entry *i* is the wait before attempt *i* + 1, so the
    /// first is usually zero) and the default jitter, cap and cut-off. 1 to
    /// [`MAX_ATTEMPTS`] delays of at most [`MAX_DELAY`] each.
    pub fn new(delays: Vec<Duration>) -> Result<Schedule, ScheduleError> {
        if delays.is_empty() || delays.len() > MAX_ATTEMPTS {
            return Err(ScheduleError::Length(delays.len()));
        }
        if let Some(d) = delays.iter().find(|d| **d > MAX_DELAY) {
            return Err(ScheduleError::Delay(*d));
        }
        Ok(Schedule {
            delays,
            ..Schedule::default()
        })
    }

    /// Sets the jitter (0 to [`MAX_JITTER_PERCENT`] %; default [`DEFAULT_JITTER_PERCENT`]).
    pub fn with_jitter_percent(mut self, percent: u8) -> Result<Schedule, ScheduleError> {
        if percent > MAX_JITTER_PERCENT {
            return Err(ScheduleError::Jitter(percent));
        }
        self.jitter_percent = percent;
        Ok(self)
    }

    /// Sets the `Retry-After` cap (default [`DEFAULT_MAX_RETRY_AFTER`]).
    pub fn with_max_retry_after(mut self, cap: Duration) -> Schedule {
        self.max_retry_after = cap;
        self
    }

    /// Sets after how many attempts a [`Verdict::Permanent`] answer ends the message (at
    /// least 1; default [`DEFAULT_PERMANENT_AFTER`]).
    pub fn with_permanent_after(mut self, attempts: u32) -> Result<Schedule, ScheduleError> {
        if attempts == 0 {
            return Err(ScheduleError::PermanentAfter);
        }
        self.permanent_after = attempts;
        Ok(self)
    }

    /// The delays, one per attempt.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many attempts a message gets at most.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The jitter in percent.
    pub fn jitter_percent(&self) -> u8 {
        self.jitter_percent
    }

    /// The `Retry-After` cap.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// Attempts after which a client error ends the message.
    pub fn permanent_after(&self) -> u32 {
        self.permanent_after
    }

    /// When attempt 1 of a message created at `now_ms` is due (the first delay, jittered;
    /// with the default schedule, `now_ms` itself).
    pub fn first_attempt(&self, now_ms: u64, rng: &mut impl RngCore) -> u64 {
        now_ms.saturating_add(self.jittered_ms(self.delays[0], rng))
    }

    /// When the attempt after attempt `attempt_no` (1-based, the one that just failed at
    /// `now_ms`) is due, or `None` when the schedule is used up.
    ///
    /// The wait is the next delay with jitter; a `Retry-After` (capped at
    /// [`Schedule::max_retry_after`]) can only lengthen it, never bring the attempt earlier
    /// than the schedule would.
    pub fn next_attempt(
        &self,
        attempt_no: u32,
        now_ms: u64,
        retry_after: Option<Duration>,
        rng: &mut impl RngCore,
    ) -> Option<u64> {
        let delay = *self.delays.get(usize::try_from(attempt_no).ok()?)?;
        let mut wait = self.jittered_ms(delay, rng);
        if let Some(ra) = retry_after {
            wait = wait.max(millis(ra.min(self.max_retry_after)));
        }
        Some(now_ms.saturating_add(wait))
    }

    /// The whole decision after attempt `attempt_no` (1-based) ended at `now_ms` with
    /// `verdict`: done, disable the endpoint, give up, or retry at a time.
    ///
    /// [`Verdict::Permanent`] gives up once `attempt_no` reaches
    /// [`Schedule::permanent_after`]; the count is of all attempts of the message, so a
    /// client error after several server errors ends it at once (the owner has had the
    /// chances by then).
    pub fn plan(
        &self,
        verdict: Verdict,
        attempt_no: u32,
        now_ms: u64,
        retry_after: Option<Duration>,
        rng: &mut impl RngCore,
    ) -> Plan {
        match verdict {
            Verdict::Delivered => Plan::Done,
            Verdict::DisableEndpoint => Plan::DisableEndpoint,
            Verdict::Permanent if attempt_no >= self.permanent_after => Plan::GiveUp,
            Verdict::Permanent | Verdict::Retry | Verdict::SlowDown => {
                match self.next_attempt(attempt_no, now_ms, retry_after, rng) {
                    Some(due) => Plan::RetryAt(due),
                    None => Plan::GiveUp,
                }
            }
        }
    }

    /// `delay` in ms moved uniformly within ±jitter.
    fn jittered_ms(&self, delay: Duration, rng: &mut impl RngCore) -> u64 {
        let ms = millis(delay);
        let span = ms * u64::from(self.jitter_percent) / 100;
        if span == 0 {
            return ms;
        }
        // Modulo bias is below 2^-30 for any span a week allows: irrelevant for jitter.
        ms - span + rng.next_u64() % (2 * span + 1)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    /// An RNG that always returns the same number: jitter becomes exact arithmetic.
    struct Fixed(u64);

    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    const T0: u64 = 1_700_000_000_000;
    const S: u64 = 1000;

    #[test]
    fn default_schedule_without_jitter_is_the_documented_one() {
        let s = Schedule::default().with_jitter_percent(0).unwrap();
        let r = &mut Fixed(12345);
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.first_attempt(T0, r), T0);
        let waits: Vec<u64> = (1..=7)
            .map(|n| s.next_attempt(n, T0, None, r).unwrap() - T0)
            .collect();
        assert_eq!(
            waits,
            [
                5 * S,
                300 * S,
                1800 * S,
                7200 * S,
                18_000 * S,
                36_000 * S,
                36_000 * S
            ]
        );
        assert_eq!(s.next_attempt(8, T0, None, r), None);
        assert_eq!(s.next_attempt(u32::MAX, T0, None, r), None);
    }

    #[test]
    fn jitter_spans_exactly_plus_minus_twenty_percent() {
        let s = Schedule::default();
        // After attempt 2 the delay is 300 s: ±60 s, i.e. 240 000 to 360 000 ms.
        assert_eq!(s.next_attempt(2, T0, None, &mut Fixed(0)), Some(T0 + 240_000));
        assert_eq!(
            s.next_attempt(2, T0, None, &mut Fixed(120_000)),
            Some(T0 + 360_000)
        );
        // The modulus is 2 * span + 1 = 120 001: one more wraps to the bottom.
        assert_eq!(
            s.next_attempt(2, T0, None, &mut Fixed(120_001)),
            Some(T0 + 240_000)
        );
        assert_eq!(
            s.next_attempt(2, T0, None, &mut Fixed(60_000)),
            Some(T0 + 300_000)
        );
        // "Immediately" stays immediate.
        assert_eq!(s.first_attempt(T0, &mut Fixed(u64::MAX)), T0);
    }

    #[test]
    fn seeded_rngs_give_repeatable_times_within_bounds() {
        let s = Schedule::default();
        let run = |seed: u64| -> Vec<u64> {
            let mut r = SmallRng::seed_from_u64(seed);
            (1..8)
                .map(|n| s.next_attempt(n, T0, None, &mut r).unwrap())
                .collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        for seed in 0..200 {
            for (i, due) in run(seed).into_iter().enumerate() {
                let base = millis(DEFAULT_DELAYS[i + 1]);
                let wait = due - T0;
                assert!(
                    wait >= base * 4 / 5 && wait <= base * 6 / 5,
                    "seed {seed} attempt {i}: {wait}"
                );
            }
        }
    }

    #[test]
    fn retry_after_only_lengthens_and_is_capped() {
        let s = Schedule::default().with_jitter_percent(0).unwrap();
        let r = &mut Fixed(0);
        // Shorter than the schedule's 5 min: ignored.
        assert_eq!(
            s.next_attempt(2, T0, Some(Duration::from_secs(10)), r),
            Some(T0 + 300 * S)
        );
        // Longer: honoured.
        assert_eq!(
            s.next_attempt(2, T0, Some(Duration::from_secs(3600)), r),
            Some(T0 + 3600 * S)
        );
        // Absurd: capped at a day.
        assert_eq!(
            s.next_attempt(2, T0, Some(Duration::from_secs(u64::MAX)), r),
            Some(T0 + 86_400 * S)
        );
        let s = s.with_max_retry_after(Duration::from_secs(600));
        assert_eq!(
            s.next_attempt(2, T0, Some(Duration::from_secs(3600)), r),
            Some(T0 + 600 * S)
        );
        // It cannot extend a used-up schedule.
        assert_eq!(s.next_attempt(8, T0, Some(Duration::from_secs(60)), r), None);
    }

    #[test]
    fn statuses_are_classified() {
        use Verdict::*;
        for (status, want) in [
            (200, Delivered),
            (201, Delivered),
            (204, Delivered),
            (299, Delivered),
            (410, DisableEndpoint),
            (429, SlowDown),
            (502, SlowDown),
            (503, SlowDown),
            (504, SlowDown),
            (408, Retry),
            (425, Retry),
            (500, Retry),
            (501, Retry),
            (505, Retry),
            (599, Retry),
            (101, Retry),
            (300, Permanent),
            (301, Permanent),
            (302, Permanent),
            (307, Permanent),
            (308, Permanent),
            (400, Permanent),
            (401, Permanent),
            (403, Permanent),
            (404, Permanent),
            (405, Permanent),
            (413, Permanent),
            (422, Permanent),
            (499, Permanent),
        ] {
            assert_eq!(classify(status), want, "{status}");
        }
        assert!(!Delivered.is_failure() && SlowDown.is_failure() && Permanent.is_failure());
    }

    #[test]
    fn plans_follow_the_verdict() {
        let s = Schedule::default().with_jitter_percent(0).unwrap();
        let r = &mut Fixed(0);
        assert_eq!(s.plan(Verdict::Delivered, 1, T0, None, r), Plan::Done);
        assert_eq!(
            s.plan(Verdict::DisableEndpoint, 1, T0, None, r),
            Plan::DisableEndpoint
        );
        assert_eq!(s.plan(Verdict::Retry, 1, T0, None, r), Plan::RetryAt(T0 + 5 * S));
        assert_eq!(
            s.plan(Verdict::Retry, 7, T0, None, r),
            Plan::RetryAt(T0 + 36_000 * S)
        );
        assert_eq!(s.plan(Verdict::Retry, 8, T0, None, r), Plan::GiveUp);
        assert_eq!(
            s.plan(Verdict::SlowDown, 1, T0, Some(Duration::from_secs(120)), r),
            Plan::RetryAt(T0 + 120 * S)
        );
        assert_eq!(s.plan(Verdict::SlowDown, 8, T0, None, r), Plan::GiveUp);
    }

    #[test]
    fn client_errors_get_a_few_chances_only() {
        let s = Schedule::default().with_jitter_percent(0).unwrap();
        let r = &mut Fixed(0);
        assert_eq!(
            s.plan(Verdict::Permanent, 1, T0, None, r),
            Plan::RetryAt(T0 + 5 * S)
        );
        assert_eq!(
            s.plan(Verdict::Permanent, 2, T0, None, r),
            Plan::RetryAt(T0 + 300 * S)
        );
        assert_eq!(s.plan(Verdict::Permanent, 3, T0, None, r), Plan::GiveUp);
        let once = s.clone().with_permanent_after(1).unwrap();
        assert_eq!(once.plan(Verdict::Permanent, 1, T0, None, r), Plan::GiveUp);
        // More chances than attempts: the schedule ends it.
        let many = s.with_permanent_after(100).unwrap();
        assert_eq!(many.plan(Verdict::Permanent, 8, T0, None, r), Plan::GiveUp);
    }

    #[test]
    fn custom_schedules_are_bounded() {
        let s = Schedule::new(vec![Duration::from_secs(1), Duration::from_secs(2)]).unwrap();
        let r = &mut Fixed(0);
        assert_eq!(s.attempts(), 2);
        // The first delay applies to the first attempt (jittered: 1 s ± 200 ms).
        assert_eq!(s.first_attempt(T0, r), T0 + 800);
        assert_eq!(s.next_attempt(1, T0, None, r), Some(T0 + 1600));
        assert_eq!(s.next_attempt(2, T0, None, r), None);
        assert_eq!(Schedule::new(vec![]), Err(ScheduleError::Length(0)));
        assert_eq!(
            Schedule::new(vec![Duration::ZERO; MAX_ATTEMPTS + 1]),
            Err(ScheduleError::Length(MAX_ATTEMPTS + 1))
        );
        assert!(Schedule::new(vec![Duration::ZERO; MAX_ATTEMPTS]).is_ok());
        let week_and_a_bit = MAX_DELAY + Duration::from_secs(1);
        assert_eq!(
            Schedule::new(vec![Duration::ZERO, week_and_a_bit]),
            Err(ScheduleError::Delay(week_and_a_bit))
        );
        assert_eq!(
            Schedule::default().with_jitter_percent(51),
            Err(ScheduleError::Jitter(51))
        );
        assert_eq!(
            Schedule::default().with_permanent_after(0),
            Err(ScheduleError::PermanentAfter)
        );
        // Far-future clocks saturate instead of wrapping.
        assert_eq!(
            Schedule::default().next_attempt(7, u64::MAX - 1, None, r),
            Some(u64::MAX)
        );
    }
}
