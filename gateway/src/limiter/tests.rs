//! Limiter tests on a simulated clock: every instant is a number chosen by
//! the test, nothing sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use super::gcra::{convert, decide};
use super::quota::Params;
use super::*;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn q(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate, burst).unwrap()
}

fn at(ns: u64) -> Nanos {
    Nanos(ns)
}

fn rate_exceeded(r: Result<(), Refusal>) -> Duration {
    match r {
        Err(Refusal {
            reason: RefusalReason::RateExceeded,
            retry_after,
        }) => retry_after,
        other => panic!("expected RateExceeded, got {other:?}"),
    }
}

#[test]
fn burst_is_admitted_then_refused() {
    let c = Cell::new(q(10, 5));
    let t = at(7 * SEC);
    for i in 0..5 {
        assert_eq!(c.check(t, 1), Ok(()), "token {i}");
    }
    assert_eq!(rate_exceeded(c.check(t, 1)), Duration::from_millis(100));
    assert_eq!(c.available(t), 0);
}

#[test]
fn a_fresh_cell_is_full_at_the_origin() {
    let c = Cell::new(q(1, 3));
    assert_eq!(c.available(Nanos::ZERO), 3);
    assert_eq!(c.check(Nanos::ZERO, 3), Ok(()));
    assert_eq!(rate_exceeded(c.check(Nanos::ZERO, 1)), Duration::from_secs(1));
}

#[test]
fn one_interval_refills_one_token_and_no_more() {
    let c = Cell::new(q(4, 2)); // 250 ms per token
    let t0 = 3 * SEC;
    assert_eq!(c.check(at(t0), 2), Ok(()));
    assert_eq!(c.available(at(t0 + 250 * MS - 1)), 0);
    assert_eq!(c.available(at(t0 + 250 * MS)), 1);
    assert_eq!(
        c.check(at(t0 + 250 * MS), 2).unwrap_err().reason,
        RefusalReason::RateExceeded
    );
    assert_eq!(c.check(at(t0 + 250 * MS), 1), Ok(()));
    assert_eq!(
        c.check(at(t0 + 250 * MS), 1).unwrap_err().reason,
        RefusalReason::RateExceeded
    );
    // A long idle spell fills the bucket to the burst, not beyond.
    assert_eq!(c.available(at(t0 + 3600 * SEC)), 2);
}

/// Refused at `t` with `retry_after = d`: the same check fails at `t + d - 1` and succeeds at `t + d`.
fn assert_retry_exact(quota: Quota, t: u64, drain: u32, n: u32) {
    let c = Cell::new(quota);
    assert_eq!(c.check(at(t), drain), Ok(()));
    let d = rate_exceeded(c.check(at(t), n)).as_nanos() as u64;
    assert!(d > 0);
    // Refusals take nothing, so probing does not move the edge.
    let early = rate_exceeded(c.check(at(t + d - 1), n));
    assert_eq!(early, Duration::from_nanos(1), "{quota:?} n={n}");
    assert_eq!(c.check(at(t + d), n), Ok(()), "{quota:?} n={n}");
}

#[test]
fn retry_after_is_exact_for_one_token() {
    assert_retry_exact(q(10, 5), 5 * SEC, 5, 1);
    assert_retry_exact(q(3, 1), 0, 1, 1); // 333_333_334 ns per token
    assert_retry_exact(Quota::per_period(Duration::from_secs(60), 1).unwrap(), 11, 1, 1);
}

#[test]
fn retry_after_is_exact_for_many_tokens() {
    assert_retry_exact(q(10, 5), 5 * SEC, 5, 3);
    assert_retry_exact(q(10, 5), 5 * SEC, 2, 5);
    assert_retry_exact(q(7, 100), 1, 99, 100);
    // Partly refilled: 150 ms after draining, 1.5 tokens are back.
    let c = Cell::new(q(10, 5));
    assert_eq!(c.check(at(SEC), 5), Ok(()));
    assert_eq!(
        rate_exceeded(c.check(at(SEC + 150 * MS), 3)),
        Duration::from_millis(150)
    );
    assert_eq!(
        c.check(at(SEC + 300 * MS - 1), 3).unwrap_err().retry_after,
        Duration::from_nanos(1)
    );
    assert_eq!(c.check(at(SEC + 300 * MS), 3), Ok(()));
}

#[test]
fn cost_above_burst_is_refused_for_good_and_takes_nothing() {
    let c = Cell::new(q(10, 5));
    for t in [0, SEC, u64::MAX] {
        let r = c.check(at(t), 6).unwrap_err();
        assert_eq!(r.reason, RefusalReason::ExceedsBurst);
        assert_eq!(r.retry_after, Duration::ZERO);
        assert_eq!(
            c.check(at(t), u32::MAX).unwrap_err().reason,
            RefusalReason::ExceedsBurst
        );
    }
    assert_eq!(c.available(at(0)), 5);
    assert_eq!(c.check(at(0), 5), Ok(()));
    assert!(c.check(at(0), 6).unwrap_err().to_string().contains("never"));
}

#[test]
fn zero_cost_is_always_admitted_and_free() {
    let c = Cell::new(q(1, 1));
    assert_eq!(c.check(at(0), 1), Ok(()));
    assert_eq!(c.check(at(0), 0), Ok(()));
    assert_eq!(rate_exceeded(c.check(at(0), 1)), Duration::from_secs(1));
}

#[test]
fn refusals_do_not_consume() {
    let c = Cell::new(q(1, 2));
    assert_eq!(c.check(at(0), 2), Ok(()));
    for _ in 0..1000 {
        assert!(c.check(at(SEC / 2), 1).is_err());
    }
    assert_eq!(c.check(at(SEC), 1), Ok(()));
}

#[test]
fn quotas_are_validated_not_clamped() {
    assert_eq!(Quota::per_second(0, 1), Err(QuotaError::ZeroRate));
    assert_eq!(Quota::per_second(1, 0), Err(QuotaError::ZeroBurst));
    assert_eq!(Quota::per_period(Duration::ZERO, 1), Err(QuotaError::ZeroPeriod));
    assert!(matches!(
        Quota::per_second(1_000_000_001, 1),
        Err(QuotaError::TooFast { .. })
    ));
    assert!(matches!(
        Quota::per_period(Duration::from_secs(3600), 10_000_000),
        Err(QuotaError::WindowTooLong { .. })
    ));
    assert!(matches!(
        Quota::per_period(Duration::from_secs(u64::MAX), 1),
        Err(QuotaError::WindowTooLong { .. })
    ));
    // The gateway's configured range is accepted end to end.
    for (rate, burst) in [(1, 1), (10_000_000, 10_000_000), (1, 10_000_000), (10_000_000, 1)] {
        assert!(Quota::per_second(rate, burst).is_ok(), "{rate}/{burst}");
    }
    assert_eq!(
        Quota::per_second(1_000_000_000, 1).unwrap().interval(),
        Duration::from_nanos(1)
    );
}

#[test]
fn rounding_never_exceeds_the_configured_rate() {
    let three = q(3, 1);
    assert_eq!(three.interval(), Duration::from_nanos(333_333_334));
    let c = Cell::new(q(3, 3));
    let mut admitted = 0;
    let mut t = 0;
    while t <= 10 * SEC {
        while c.check(at(t), 1).is_ok() {
            admitted += 1;
        }
        t += MS;
    }
    // Burst 3 at t=0, then at most 3 per second for 10 s.
    assert!(admitted <= 3 + 30, "{admitted}");
    assert!(admitted >= 3 + 29, "{admitted}");
}

#[test]
fn sub_second_quotas_work() {
    let per_minute = Quota::new(30, Duration::from_secs(60), 2).unwrap();
    assert_eq!(per_minute.interval(), Duration::from_secs(2));
    assert_eq!(per_minute.window(), Duration::from_secs(4));
    let hourly = Quota::per_period(Duration::from_secs(3600), 1).unwrap();
    let c = Cell::new(hourly);
    assert_eq!(c.check(at(0), 1), Ok(()));
    assert_eq!(rate_exceeded(c.check(at(60 * SEC), 1)), Duration::from_secs(3540));
    assert_eq!(c.check(at(3600 * SEC), 1), Ok(()));
}

#[test]
fn extreme_instants_and_quotas_never_overflow() {
    let quotas = [
        Quota::per_period(Duration::from_nanos(1), 1).unwrap(),
        Quota::per_period(Duration::from_nanos(1), u32::MAX).unwrap(),
        Quota::per_period(Duration::from_nanos(u64::MAX), 1).unwrap(),
        Quota::per_period(Duration::from_nanos(u64::MAX / u64::from(u32::MAX)), u32::MAX).unwrap(),
        q(10_000_000, 10_000_000),
    ];
    let instants = [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX];
    for quota in quotas {
        let c = Cell::new(quota);
        for &t in &instants {
            for n in [0, 1, 2, quota.burst(), quota.burst().saturating_add(1), u32::MAX] {
                match c.check(at(t), n) {
                    Ok(()) => assert!(n <= quota.burst()),
                    Err(r) => {
                        assert_eq!(r.reason == RefusalReason::ExceedsBurst, n > quota.burst());
                        assert!(r.retry_after <= quota.window());
                    }
                }
                let _ = c.available(at(t));
            }
            c.set_quota(quota, at(t));
        }
    }
}

#[test]
fn quota_update_keeps_the_tokens_in_use() {
    // Rate change: an empty bucket stays empty and refills at the new rate.
    let c = Cell::new(q(1, 10));
    assert_eq!(c.check(at(SEC), 10), Ok(()));
    c.set_quota(q(2, 10), at(SEC));
    assert_eq!(c.quota(), q(2, 10));
    assert_eq!(c.available(at(SEC)), 0);
    assert_eq!(rate_exceeded(c.check(at(SEC), 1)), Duration::from_millis(500));
    assert_eq!(c.check(at(SEC + 500 * MS), 1), Ok(()));

    // A rate cut does not hand out a fresh burst.
    let c = Cell::new(q(10, 100));
    assert_eq!(c.check(at(SEC), 100), Ok(()));
    c.set_quota(q(1, 100), at(SEC));
    assert_eq!(c.available(at(SEC)), 0);
    assert_eq!(rate_exceeded(c.check(at(SEC), 1)), Duration::from_secs(1));

    // A larger burst adds capacity on top of what is in use.
    let c = Cell::new(q(1, 10));
    assert_eq!(c.check(at(SEC), 4), Ok(()));
    c.set_quota(q(1, 20), at(SEC));
    assert_eq!(c.available(at(SEC)), 16);

    // A smaller burst caps the debt at an empty bucket: one interval to the next token.
    let c = Cell::new(q(1, 10));
    assert_eq!(c.check(at(SEC), 4), Ok(()));
    c.set_quota(q(1, 3), at(SEC));
    assert_eq!(c.available(at(SEC)), 0);
    assert_eq!(rate_exceeded(c.check(at(SEC), 1)), Duration::from_secs(1));

    // Unused bucket: still full under the new quota.
    let c = Cell::new(q(1, 10));
    c.set_quota(q(5, 3), at(SEC));
    assert_eq!(c.available(at(SEC)), 3);
}

#[test]
fn conversion_is_exact_for_whole_tokens_and_rounds_partial_ones_up() {
    let old = Params {
        interval: 1000,
        window: 10_000,
    };
    let new = Params {
        interval: 300,
        window: 3000,
    };
    assert_eq!(convert(5000 + 4000, 5000, old, new), 5000 + 1200);
    assert_eq!(convert(5000 + 1, 5000, old, new), 5000 + 1);
    assert_eq!(convert(5000 + 999, 5000, old, new), 5000 + 300);
    assert_eq!(convert(100, 5000, old, new), 100);
    assert_eq!(convert(u64::MAX, 0, old, new), 3000);
    assert_eq!(convert(u64::MAX, u64::MAX - 1, new, old), u64::MAX);
}

#[test]
fn keyed_limiter_basics() {
    for shards in [1, 16] {
        let l: Limiter<Arc<str>> = Limiter::with_shards(shards);
        assert!(l.is_empty());
        let a = l.upsert("a".into(), q(1, 1), Nanos::ZERO);
        l.upsert("b".into(), q(1, 2), Nanos::ZERO);
        assert_eq!(l.len(), 2);
        assert!(Arc::ptr_eq(&a, &l.handle("a").unwrap()));
        assert_eq!(l.check_key("a", at(0), 1), Ok(()));
        assert!(matches!(
            l.check_key("a", at(0), 1),
            Err(CheckKeyError::Refused(_))
        ));
        // The cached handle and the keyed path share one bucket.
        assert!(a.check(at(0), 1).is_err());
        assert_eq!(l.check_key("zzz", at(0), 1), Err(CheckKeyError::UnknownKey));
        assert!(l.handle("zzz").is_none());

        // Upsert of an existing key changes its quota in place and keeps the level.
        let again = l.upsert("a".into(), q(1, 3), at(0));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(a.quota(), q(1, 3));
        assert_eq!(a.available(at(0)), 2);

        assert!(Arc::ptr_eq(&l.remove("a").unwrap(), &a));
        assert!(l.remove("a").is_none());
        assert_eq!(l.len(), 1);
        assert_eq!(l.check_key("a", at(0), 1), Err(CheckKeyError::UnknownKey));
        assert!(format!("{l:?}").contains("keys: 1"));
    }
}

#[test]
fn upsert_many_returns_cells_in_order_and_updates_existing() {
    let l: Limiter<u32> = Limiter::with_shards(8);
    let first = l.upsert(3, q(1, 1), Nanos::ZERO);
    assert_eq!(first.check(at(0), 1), Ok(()));
    let cells = l.upsert_many((0..100).map(|k| (k, q(1, 5))), at(0));
    assert_eq!(cells.len(), 100);
    for (k, c) in cells.iter().enumerate() {
        assert!(Arc::ptr_eq(c, &l.handle(&(k as u32)).unwrap()));
    }
    assert!(Arc::ptr_eq(&cells[3], &first));
    assert_eq!(first.available(at(0)), 4);
    assert_eq!(l.len(), 100);
    assert!(l.upsert_many(std::iter::empty(), at(0)).is_empty());
}

#[test]
fn ten_thousand_keys_are_independent() {
    for shards in [1, 64] {
        let l: Limiter<u64> = Limiter::with_shards(shards);
        l.upsert_many((0..10_000u64).map(|k| (k, q(1, (k % 7) as u32 + 1))), Nanos::ZERO);
        assert_eq!(l.len(), 10_000);
        let t = at(42 * SEC);
        // Drain every even key; odd keys must stay untouched.
        for k in (0..10_000u64).step_by(2) {
            let burst = (k % 7) as u32 + 1;
            assert_eq!(l.check_key(&k, t, burst), Ok(()));
            assert!(matches!(l.check_key(&k, t, 1), Err(CheckKeyError::Refused(_))));
        }
        for k in (1..10_000u64).step_by(2) {
            assert_eq!(l.handle(&k).unwrap().available(t), (k % 7) as u32 + 1, "key {k}");
        }
        for k in (0..10_000u64).step_by(2) {
            assert_eq!(l.check_key(&k, at(43 * SEC), 1), Ok(()));
        }
    }
}

#[test]
fn threads_hammering_one_cell_get_exactly_the_burst() {
    let burst = 10_000;
    let c = Cell::new(q(1, burst));
    let t = at(5 * SEC);
    let admitted = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..burst {
                    if c.check(t, 1).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), burst);
    assert_eq!(c.available(t), 0);
}

#[test]
fn threads_with_mixed_costs_take_exactly_the_burst() {
    let burst = 10_000;
    let c = Cell::new(q(1, burst));
    let t = at(5 * SEC);
    let taken = AtomicU32::new(0);
    std::thread::scope(|s| {
        for cost in [1, 2, 3, 7] {
            let (c, taken) = (&c, &taken);
            s.spawn(move || {
                for _ in 0..burst {
                    if c.check(t, cost).is_ok() {
                        taken.fetch_add(cost, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // The cost-1 thread either took every token or met an empty bucket, which
    // stays empty at a frozen instant: nothing is left over either way.
    assert_eq!(taken.load(Ordering::Relaxed), burst);
}

#[test]
fn keyed_checks_survive_concurrent_inserts() {
    let l: Limiter<u64> = Limiter::with_shards(4);
    l.upsert_many((0..100u64).map(|k| (k, q(1, 50))), Nanos::ZERO);
    let t = at(SEC);
    let admitted: Vec<AtomicU32> = (0..100).map(|_| AtomicU32::new(0)).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 100..2100u64 {
                l.upsert(k, q(1, 1), Nanos::ZERO);
            }
        });
        for th in 0..4u64 {
            let (l, admitted) = (&l, &admitted);
            s.spawn(move || {
                for i in 0..100 * 30 {
                    let k = (i + th * 7) % 100;
                    if l.check_key(&k, t, 1).is_ok() {
                        admitted[k as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // 4 threads × 30 attempts per key > 50: every key admitted exactly its burst.
    for (k, a) in admitted.iter().enumerate() {
        assert_eq!(a.load(Ordering::Relaxed), 50, "key {k}");
    }
    assert_eq!(l.len(), 2100);
}

#[test]
fn reloads_racing_checks_stay_within_a_token_per_race() {
    let a = q(1, 1000);
    let b = q(2, 1000);
    let c = Cell::new(a);
    let t = at(10 * SEC);
    let admitted = AtomicU32::new(0);
    let reloads = 200;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..reloads {
                c.set_quota(if i % 2 == 0 { b } else { a }, t);
                std::thread::yield_now();
            }
        });
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..1000 {
                    if c.check(t, 1).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // Token counts convert exactly between the two rates, so only a check whose
    // snapshot straddles a reload can be charged in the other unit.
    let n = admitted.load(Ordering::Relaxed);
    assert!(n.abs_diff(1000) <= 3 * reloads, "{n}");
    assert_eq!(c.quota(), a);
    assert!(c.available(t) <= 1000);
}

#[test]
fn monotonic_clock_never_goes_back() {
    let clock = MonotonicClock::new();
    let copy = clock;
    let mut last = clock.now();
    for _ in 0..100_000 {
        let n = copy.now();
        assert!(n >= last);
        last = n;
    }
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut last = clock.now();
                for _ in 0..50_000 {
                    let n = clock.now();
                    assert!(n >= last);
                    last = n;
                }
            });
        }
    });
    assert!(clock.now() >= last);
    assert_eq!(Nanos::from_duration(Duration::MAX), Nanos::MAX);
    assert_eq!(Nanos::MAX.saturating_add(Duration::from_secs(1)), Nanos::MAX);
    assert_eq!(Nanos(5).saturating_sub(Duration::from_secs(1)), Nanos::ZERO);
    assert_eq!(Nanos(1500).as_duration(), Duration::from_nanos(1500));
}

/// A token bucket written the textbook way, independent of GCRA: a credit of
/// time (capacity × interval) refilled lazily on each check.
#[derive(Debug)]
struct Model {
    interval: u128,
    window: u128,
    credit: u128,
    last: u64,
}

impl Model {
    fn new(quota: Quota) -> Self {
        let interval = quota.interval().as_nanos();
        let window = interval * u128::from(quota.burst());
        Model {
            interval,
            window,
            credit: window,
            last: 0,
        }
    }

    fn check(&mut self, now: u64, n: u32) -> Result<(), (RefusalReason, u128)> {
        if n == 0 {
            return Ok(());
        }
        let cost = self.interval * u128::from(n);
        if cost > self.window {
            return Err((RefusalReason::ExceedsBurst, 0));
        }
        self.credit = (self.credit + u128::from(now - self.last)).min(self.window);
        self.last = now;
        if self.credit >= cost {
            self.credit -= cost;
            Ok(())
        } else {
            Err((RefusalReason::RateExceeded, cost - self.credit))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn atomic_cell_matches_the_reference_model(
        interval in prop_oneof![1u64..=10, 1u64..=1_000_000, 1_000_000u64..=60 * SEC],
        burst in 1u32..=40,
        start in 0u64..=1 << 62,
        ops in prop::collection::vec((0u64..=3, 0u32..=45), 1..300),
    ) {
        let quota = Quota::per_period(Duration::from_nanos(interval), burst).unwrap();
        let cell = Cell::new(quota);
        let mut model = Model::new(quota);
        let mut now = start;
        for (step, (advance_quarters, n)) in ops.into_iter().enumerate() {
            // Advance by 0, ¼, ½ or ¾ interval (+ a jitter of step ns) so refills land between tokens.
            now += advance_quarters * interval / 4 + step as u64 % 3;
            let got = cell.check(Nanos(now), n).map_err(|r| (r.reason, r.retry_after.as_nanos()));
            let want = model.check(now, n);
            prop_assert_eq!(got, want, "step {} at {} cost {}", step, now, n);
        }
    }

    #[test]
    fn decide_is_total(tat: u64, now: u64, n: u32, interval in 1u64..=u64::MAX, burst in 1u32..=u32::MAX) {
        let window = interval.saturating_mul(u64::from(burst));
        let p = Params { interval, window: window - window % interval };
        match decide(tat, now, n, p) {
            Ok(next) => prop_assert!(next >= now.max(tat)),
            Err(r) => prop_assert!(r.retry_after.as_nanos() <= u128::from(u64::MAX)),
        }
    }
}
