use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use waping_protocol::error::ErrorCode;

use crate::retry::{
    Backoff, CodeOverride, DeadReason, Decision, Outcome, RetryConfig, RetryPolicy, RetryState,
    due_from_unix_ms, unix_ms_from_nanos,
};

use super::n;

const T0: u64 = 1_700_000_000_000;

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

fn delay(d: Decision, now_ms: u64) -> u64 {
    match d {
        Decision::RetryAt(due) => due - now_ms,
        Decision::Dead(r) => panic!("expected a retry, got Dead({r})"),
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = RetryConfig::default();
    assert_eq!(c.base_delay_ms, 1000);
    assert_eq!(c.max_delay_ms, 300_000);
    assert_eq!(c.min_delay_ms, 0);
    assert_eq!(c.multiplier, 2.0);
    assert_eq!(c.max_attempts, 10);
    assert_eq!(c.max_age_ms, 86_400_000);
    assert_eq!(c.capacity, 1_000_000);
    assert!(c.codes.is_empty());

    let p = RetryPolicy::default();
    assert_eq!(p.max_age_ms(), 86_400_000);
    assert_eq!(p.capacity(), 1_000_000);
    let d = *p.backoff(ErrorCode::UPSTREAM_UNAVAILABLE).unwrap();
    assert_eq!(
        (d.base_ms, d.cap_ms, d.min_ms, d.max_attempts),
        (1000, 300_000, 0, 10)
    );
    let t = *p.backoff(ErrorCode::UPSTREAM_THROTTLED).unwrap();
    assert_eq!(
        (t.base_ms, t.cap_ms, t.min_ms, t.max_attempts),
        (30_000, 1_800_000, 10_000, 10)
    );
    let dc = *p.backoff(ErrorCode::DEVICE_DISCONNECTED).unwrap();
    assert_eq!(
        (dc.base_ms, dc.cap_ms, dc.min_ms, dc.max_attempts),
        (10_000, 900_000, 0, 100)
    );
    assert!(p.backoff(ErrorCode::UPSTREAM_REJECTED).is_none());
    assert!(p.backoff(ErrorCode::DEVICE_LOGGED_OUT).is_none());
}

#[test]
fn config_parses_from_toml_and_overrides_merge_with_builtins() {
    let c: RetryConfig = toml::from_str(
        r#"
        base_delay_ms = 500
        max_attempts = 5
        [codes.UPSTREAM_THROTTLED]
        max_delay_ms = 600000
        [codes.UPSTREAM_TIMEOUT]
        permanent = true
        "#,
    )
    .unwrap();
    assert_eq!(c.max_delay_ms, 300_000, "unset fields keep defaults");
    let p = RetryPolicy::from_config(&c).unwrap();
    let t = *p.backoff(ErrorCode::UPSTREAM_THROTTLED).unwrap();
    // Built-in base and floor stay; the configured cap replaces the built-in one.
    assert_eq!(
        (t.base_ms, t.cap_ms, t.min_ms, t.max_attempts),
        (30_000, 600_000, 10_000, 5)
    );
    assert!(p.backoff(ErrorCode::UPSTREAM_TIMEOUT).is_none());
    assert_eq!(p.backoff(ErrorCode::INTERNAL).unwrap().base_ms, 500);
    assert_eq!(
        p.decide(ErrorCode::UPSTREAM_TIMEOUT, 1, T0, T0, &mut rng(1)),
        Decision::Dead(DeadReason::Permanent)
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert!(toml::from_str::<RetryConfig>("base_delay = 5").is_err());
    assert!(toml::from_str::<RetryConfig>("[codes.UPSTREAM_TIMEOUT]\nbase = 5").is_err());
}

#[test]
fn validation_reports_every_problem_with_its_path() {
    let mut c = RetryConfig {
        base_delay_ms: 0,
        multiplier: 0.5,
        max_attempts: 0,
        max_age_ms: 10,
        capacity: 0,
        ..RetryConfig::default()
    };
    c.codes.insert("NOT_A_CODE".into(), CodeOverride::default());
    c.codes.insert(
        "UPSTREAM_REJECTED".into(),
        CodeOverride {
            base_delay_ms: Some(5),
            ..CodeOverride::default()
        },
    );
    c.codes.insert(
        "UPSTREAM_UNAVAILABLE".into(),
        CodeOverride {
            min_delay_ms: Some(10_000_000),
            ..CodeOverride::default()
        },
    );
    let e = RetryPolicy::from_config(&c).unwrap_err();
    let all = e.problems.join("\n");
    for needle in [
        "retry.base_delay_ms: 0",
        "retry.multiplier: 0.5",
        "retry.max_attempts: 0",
        "retry.max_age_ms: 10",
        "retry.capacity: 0",
        "retry.codes.NOT_A_CODE",
        "retry.codes.UPSTREAM_REJECTED: UPSTREAM_REJECTED is permanent",
        "retry.codes.UPSTREAM_UNAVAILABLE.min_delay_ms",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(all.matches("multiplier").count(), 1, "reported once:\n{all}");
}

#[test]
fn permanent_codes_are_dead_at_once() {
    let p = RetryPolicy::default();
    for code in [
        ErrorCode::UPSTREAM_REJECTED,
        ErrorCode::DEVICE_LOGGED_OUT,
        ErrorCode::INVALID_RECIPIENT,
        ErrorCode::UNKNOWN_DEVICE,
        ErrorCode(5999), // unknown upstream code: not retryable by its group
    ] {
        assert_eq!(
            p.decide(code, 1, T0, T0, &mut rng(0)),
            Decision::Dead(DeadReason::Permanent),
            "{code}"
        );
    }
}

#[test]
fn transient_codes_retry_within_the_first_window() {
    let p = RetryPolicy::default();
    for code in [
        ErrorCode::UPSTREAM_UNAVAILABLE,
        ErrorCode::UPSTREAM_TIMEOUT,
        ErrorCode::INTERNAL,
        ErrorCode::DEVICE_BUSY,
        ErrorCode(3999), // unknown limit code: retryable by its group
    ] {
        for seed in 0..50 {
            let d = delay(p.decide(code, 1, T0, T0, &mut rng(seed)), T0);
            assert!(d <= 1000, "{code}: {d}");
        }
    }
}

#[test]
fn throttled_waits_longer_and_never_retries_at_once() {
    let p = RetryPolicy::default();
    let mut r = rng(7);
    let mut sum = 0;
    for _ in 0..1000 {
        let d = delay(p.decide(ErrorCode::UPSTREAM_THROTTLED, 1, T0, T0, &mut r), T0);
        assert!((10_000..=30_000).contains(&d), "{d}");
        sum += d;
    }
    // Uniform on [10 s, 30 s]: mean 20 s.
    assert!((18_000..22_000).contains(&(sum / 1000)), "mean {}", sum / 1000);
    // The cap is 30 min, not the default 5 min.
    let late = (0..200)
        .map(|s| {
            delay(
                p.decide(ErrorCode::UPSTREAM_THROTTLED, 9, T0, T0, &mut rng(s)),
                T0,
            )
        })
        .max()
        .unwrap();
    assert!(late > 300_000 && late <= 1_800_000, "{late}");
}

#[test]
fn full_jitter_spreads_over_the_whole_window() {
    let p = RetryPolicy::default();
    let mut r = rng(3);
    // Attempt 4: window 1 s * 2^3 = 8 s.
    let ds: Vec<u64> = (0..4000)
        .map(|_| delay(p.decide(ErrorCode::UPSTREAM_UNAVAILABLE, 4, T0, T0, &mut r), T0))
        .collect();
    assert!(ds.iter().all(|&d| d <= 8000));
    let mean = ds.iter().sum::<u64>() / ds.len() as u64;
    assert!((3600..4400).contains(&mean), "mean {mean}");
    assert!(*ds.iter().min().unwrap() < 100);
    assert!(*ds.iter().max().unwrap() > 7900);
}

#[test]
fn attempts_run_out_per_code() {
    let p = RetryPolicy::default();
    let code = ErrorCode::UPSTREAM_UNAVAILABLE;
    assert!(matches!(
        p.decide(code, 9, T0, T0, &mut rng(0)),
        Decision::RetryAt(_)
    ));
    assert_eq!(
        p.decide(code, 10, T0, T0, &mut rng(0)),
        Decision::Dead(DeadReason::Exhausted)
    );
    // A disconnected phone may take many tries; the age bounds it instead.
    let dc = ErrorCode::DEVICE_DISCONNECTED;
    assert!(matches!(
        p.decide(dc, 99, T0, T0, &mut rng(0)),
        Decision::RetryAt(_)
    ));
    assert_eq!(
        p.decide(dc, 100, T0, T0, &mut rng(0)),
        Decision::Dead(DeadReason::Exhausted)
    );
}

#[test]
fn never_retries_beyond_max_age() {
    let p = RetryPolicy::default();
    let code = ErrorCode::UPSTREAM_UNAVAILABLE;
    let deadline = T0 + 86_400_000;
    assert_eq!(
        p.decide(code, 1, T0, deadline, &mut rng(0)),
        Decision::Dead(DeadReason::TooOld)
    );
    assert_eq!(
        p.decide(code, 1, T0, deadline + 5, &mut rng(0)),
        Decision::Dead(DeadReason::TooOld)
    );
    // 2 s left, window 256 s: the draw is confined to what is left.
    for seed in 0..100 {
        match p.decide(code, 9, T0, deadline - 2000, &mut rng(seed)) {
            Decision::RetryAt(due) => assert!(due <= deadline),
            d => panic!("{d:?}"),
        }
    }
    // The throttle floor (10 s) does not fit in 5 s: dead rather than late.
    assert_eq!(
        p.decide(ErrorCode::UPSTREAM_THROTTLED, 1, T0, deadline - 5000, &mut rng(0)),
        Decision::Dead(DeadReason::TooOld)
    );
    // A wall clock stepped back before the first attempt is age 0, not an error.
    assert!(matches!(
        p.decide(code, 1, T0, T0 - 60_000, &mut rng(0)),
        Decision::RetryAt(due) if due >= T0 - 60_000
    ));
}

#[test]
fn same_seed_same_schedule() {
    let p = RetryPolicy::default();
    let run = |seed| {
        let mut r = rng(seed);
        (1..10)
            .map(|a| {
                p.decide(
                    ErrorCode::UPSTREAM_TIMEOUT,
                    a,
                    T0,
                    T0 + 1000 * u64::from(a),
                    &mut r,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn retry_state_counts_attempts_and_builds_the_dead_letter() {
    let p = RetryPolicy::default();
    let mut r = rng(9);
    let mut s = RetryState::new(T0);
    let mut now = T0;
    for expect_next in 2..=10 {
        match s.on_failure(&p, ErrorCode::UPSTREAM_TIMEOUT, now, &mut r) {
            Outcome::Retry { attempt, due_at_ms } => {
                assert_eq!(attempt, expect_next);
                assert!(due_at_ms >= now);
                now = due_at_ms;
            }
            o => panic!("{o:?}"),
        }
    }
    match s.on_failure(&p, ErrorCode::UPSTREAM_UNAVAILABLE, now, &mut r) {
        Outcome::Dead(d) => {
            assert_eq!(d.reason, DeadReason::Exhausted);
            assert_eq!(d.last_code, ErrorCode::UPSTREAM_UNAVAILABLE);
            assert_eq!(d.attempts, 10);
            assert_eq!(d.first_attempt_at_ms, T0);
            assert_eq!(d.dead_at_ms, now);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(s.last_code, Some(ErrorCode::UPSTREAM_UNAVAILABLE));

    let mut s = RetryState::new(T0);
    match s.on_failure(&p, ErrorCode::DEVICE_LOGGED_OUT, T0 + 5, &mut r) {
        Outcome::Dead(d) => assert_eq!(
            (d.reason, d.attempts, d.dead_at_ms),
            (DeadReason::Permanent, 1, T0 + 5)
        ),
        o => panic!("{o:?}"),
    }
}

#[test]
fn unix_ms_conversions_resume_the_schedule() {
    let now = n(5_000_000_000); // 5 s after the process origin
    // Due in 1.5 s of wall time: 1.5 s after `now` on the monotonic clock.
    assert_eq!(due_from_unix_ms(T0 + 1500, T0, now), n(6_500_000_000));
    // Already past (the gateway was down): due now, not skipped, not restarted.
    assert_eq!(due_from_unix_ms(T0 - 60_000, T0, now), now);
    assert_eq!(due_from_unix_ms(u64::MAX, 0, now), n(u64::MAX));
    assert_eq!(unix_ms_from_nanos(n(6_500_000_000), now, T0), T0 + 1500);
    // Rounds up so the round trip never fires early.
    assert_eq!(unix_ms_from_nanos(n(5_000_000_001), now, T0), T0 + 1);
    assert_eq!(unix_ms_from_nanos(n(1_000_000_000), now, T0), T0 - 4000);
}

fn retryable_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::UPSTREAM_UNAVAILABLE,
        ErrorCode::UPSTREAM_TIMEOUT,
        ErrorCode::UPSTREAM_THROTTLED,
        ErrorCode::DEVICE_DISCONNECTED,
        ErrorCode::INTERNAL,
        ErrorCode::DEVICE_BUSY,
    ])
}

proptest! {
    // No regression file: it would land outside this module's folder; a failure prints its minimal input.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn delay_stays_within_its_bounds(
        code in retryable_code(),
        attempt in 1u32..120,
        age in 0u64..90_000_000,
        seed in any::<u64>(),
    ) {
        let p = RetryPolicy::default();
        let b = *p.backoff(code).unwrap();
        let now = T0 + age;
        let deadline = T0 + p.max_age_ms();
        match p.decide(code, attempt, T0, now, &mut rng(seed)) {
            Decision::RetryAt(due) => {
                prop_assert!(attempt < b.max_attempts);
                prop_assert!(due >= now + b.min_ms, "floor");
                prop_assert!(due - now <= b.window_ms(attempt), "window");
                prop_assert!(due - now <= b.cap_ms, "cap");
                prop_assert!(due <= deadline, "max age");
            }
            Decision::Dead(DeadReason::Exhausted) => prop_assert!(attempt >= b.max_attempts),
            Decision::Dead(DeadReason::TooOld) => prop_assert!(now + b.min_ms >= deadline),
            Decision::Dead(DeadReason::Permanent) => prop_assert!(false, "{code} is retryable"),
        }
    }

    #[test]
    fn window_grows_monotonically_up_to_the_cap(
        base in 1u64..100_000,
        extra in 0u64..10_000_000,
        min_frac in 0u64..=100,
        multiplier in 1.0f64..10.0,
    ) {
        let cap = base + extra;
        let b = Backoff { base_ms: base, cap_ms: cap, min_ms: cap * min_frac / 100, multiplier, max_attempts: 10 };
        let mut prev = 0;
        for a in 1..200 {
            let w = b.window_ms(a);
            prop_assert!(w >= prev, "attempt {a}: {w} < {prev}");
            prop_assert!(w <= cap);
            prop_assert!(w >= b.min_ms);
            prev = w;
        }
        prop_assert_eq!(b.window_ms(1), base.max(b.min_ms));
        prop_assert_eq!(b.window_ms(u32::MAX), cap);
    }
}
