//! Pacing rules one at a time on a simulated clock, the contact book, and a property test of
//! the whole admission (workspace limiter) + dispatch (device pacers) path.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sha2::{Digest, Sha256};

use super::*;
use crate::limiter::{Cell, Nanos, Quota};

const MS: u64 = 1_000_000;
const SEC: u64 = 1000 * MS;
/// A wall-clock origin at a UTC midnight (2025-01-01), so day boundaries are easy to place.
const WALL0: u64 = 20_089 * DAY_MS;

/// Every rule off except the ones a test turns on.
fn bare() -> PacingConfig {
    PacingConfig {
        min_interval_ms: 0,
        jitter_ms: 0,
        bucket_per_minute: 0,
        bucket_burst: 1,
        first_contact_per_hour: 0,
        first_contact_burst: 1,
        first_contact_per_day: 0,
        daily_cap: 0,
        warmup_start: 1,
        warmup_growth: 1.0,
        throttle_pause_ms: 0,
        throttle_pause_max_ms: 0,
        throttle_reset_ms: 0,
        typing_min_ms: 0,
        typing_max_ms: 0,
        contact_book_capacity: 1000,
    }
}

/// A pacer under `cfg` with a device rate too high to matter (1 ns floor).
fn pacer(cfg: &PacingConfig, linked_at_ms: Option<u64>) -> DevicePacer {
    let policy = Arc::new(PacingPolicy::new(cfg, 1_000_000_000).unwrap());
    let book = ContactBook::new(policy.contact_book_capacity());
    DevicePacer::new(policy, linked_at_ms, book)
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn key(i: u64) -> ContactKey {
    ContactKey::of(&format!("+49151{i:08}"))
}

/// Polls at monotonic `ns` with the wall clock `WALL0 + ns/1e6`.
fn poll_at(p: &mut DevicePacer, ns: u64, to: ContactKey, r: &mut SmallRng) -> Pace {
    p.poll(Nanos(ns), WALL0 + ns / MS, to, r)
}

fn wait_of(pace: Pace) -> (u64, PaceReason) {
    match pace {
        Pace::Wait { until, reason } => (until.0, reason),
        Pace::Go { .. } => panic!("expected Wait, got Go"),
    }
}

fn is_go(pace: Pace) -> bool {
    matches!(pace, Pace::Go { .. })
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let cfg = PacingConfig::default();
    assert!(cfg.problems("pacing").is_empty());
    let p = PacingPolicy::new(&cfg, 1).unwrap();
    assert_eq!(p.min_interval(), Duration::from_secs(2));
    assert_eq!(p.jitter(), Duration::from_secs(3));
    assert_eq!(
        p.bucket(),
        Some(Quota::new(5, Duration::from_secs(60), 10).unwrap())
    );
    assert_eq!(
        p.first_contact_bucket(),
        Some(Quota::new(10, Duration::from_secs(3600), 3).unwrap())
    );
    assert_eq!(p.first_contact_per_day(), Some(50));
}

#[test]
fn device_rate_zero_turns_everything_off() {
    let policy = Arc::new(PacingPolicy::new(&PacingConfig::default(), 0).unwrap());
    assert!(!policy.is_enabled());
    let mut p = DevicePacer::new(policy, Some(WALL0), ContactBook::new(10));
    let mut r = rng();
    for i in 0..1000 {
        assert_eq!(poll_at(&mut p, 0, key(i), &mut r), Pace::Go { typing: None });
    }
    assert_eq!(p.on_throttled(Nanos(0), Some(Duration::from_secs(60))), Nanos(0));
    assert!(is_go(poll_at(&mut p, 1, key(0), &mut r)));
    assert!(p.contacts().is_empty(), "nothing is recorded when off");
}

#[test]
fn device_rate_is_a_floor_under_the_minimum_interval() {
    let mut cfg = bare();
    cfg.min_interval_ms = 100;
    assert_eq!(
        PacingPolicy::new(&cfg, 2).unwrap().min_interval(),
        Duration::from_millis(500)
    );
    assert_eq!(
        PacingPolicy::new(&cfg, 100).unwrap().min_interval(),
        Duration::from_millis(100)
    );
}

#[test]
fn minimum_interval_plus_jitter_spaces_sends() {
    let mut cfg = bare();
    cfg.min_interval_ms = 2000;
    cfg.jitter_ms = 3000;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    let mut now = 0;
    let mut gaps = Vec::new();
    assert!(is_go(poll_at(&mut p, now, key(1), &mut r)));
    for _ in 0..300 {
        // Too early: the wait names the interval and stays the same however often we ask
        // (the jitter is drawn once per gap, not per poll).
        let (until, reason) = wait_of(poll_at(&mut p, now + 1, key(1), &mut r));
        assert_eq!(reason, PaceReason::MinInterval);
        for probe in [now + SEC, until - 1] {
            assert_eq!(wait_of(poll_at(&mut p, probe, key(1), &mut r)), (until, reason));
        }
        assert!(is_go(poll_at(&mut p, until, key(1), &mut r)));
        gaps.push(until - now);
        now = until;
    }
    assert!(gaps.iter().all(|&g| (2 * SEC..=5 * SEC).contains(&g)), "{gaps:?}");
    // Seeded, so deterministic: the draws cover the range rather than sitting at one end.
    assert!(*gaps.iter().min().unwrap() < 2 * SEC + 100 * MS);
    assert!(*gaps.iter().max().unwrap() > 5 * SEC - 100 * MS);
}

#[test]
fn token_bucket_allows_its_burst_then_its_rate() {
    let mut cfg = bare();
    cfg.bucket_per_minute = 5;
    cfg.bucket_burst = 10;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    // One nanosecond apart: the test's device rate (10^9/s) is a 1 ns minimum interval.
    for i in 0..10 {
        assert!(is_go(poll_at(&mut p, i, key(1), &mut r)));
    }
    assert_eq!(
        wait_of(poll_at(&mut p, 10, key(1), &mut r)),
        (12 * SEC, PaceReason::Bucket)
    );
    assert_eq!(
        wait_of(poll_at(&mut p, 12 * SEC - 1, key(1), &mut r)),
        (12 * SEC, PaceReason::Bucket)
    );
    assert!(is_go(poll_at(&mut p, 12 * SEC, key(1), &mut r)));
    assert_eq!(
        wait_of(poll_at(&mut p, 12 * SEC, key(1), &mut r)),
        (24 * SEC, PaceReason::Bucket)
    );
    // A long quiet period refills the burst, not more.
    let later = 3600 * SEC;
    for i in 0..10 {
        assert!(is_go(poll_at(&mut p, later + i, key(1), &mut r)));
    }
    assert_eq!(
        wait_of(poll_at(&mut p, later + 10, key(1), &mut r)).1,
        PaceReason::Bucket
    );
}

#[test]
fn first_contacts_have_their_own_bucket_and_known_contacts_are_not_held_by_it() {
    let mut cfg = bare();
    cfg.first_contact_per_hour = 10;
    cfg.first_contact_burst = 3;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    for i in 0..3 {
        assert!(p.is_first_contact(key(i)));
        assert!(is_go(poll_at(&mut p, i, key(i), &mut r)));
        assert!(!p.is_first_contact(key(i)));
    }
    assert_eq!(
        wait_of(poll_at(&mut p, 3, key(99), &mut r)),
        (360 * SEC, PaceReason::FirstContactRate)
    );
    // Known recipients go on.
    assert!(is_go(poll_at(&mut p, 4, key(0), &mut r)));
    // Someone who wrote to the device first is known: replying is not a first contact.
    p.on_inbound(key(500));
    assert!(is_go(poll_at(&mut p, 5, key(500), &mut r)));
    assert!(is_go(poll_at(&mut p, 360 * SEC, key(99), &mut r)));
    assert_eq!(
        wait_of(poll_at(&mut p, 360 * SEC + 1, key(100), &mut r)).1,
        PaceReason::FirstContactRate
    );
}

#[test]
fn first_contacts_per_day_roll_over_at_utc_midnight() {
    let mut cfg = bare();
    cfg.first_contact_per_day = 2;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    let t = 23 * 3600 * SEC; // 23:00 UTC
    assert!(is_go(poll_at(&mut p, t, key(1), &mut r)));
    assert!(is_go(poll_at(&mut p, t + 1, key(2), &mut r)));
    let midnight = 24 * 3600 * SEC;
    // The wall clock has ms resolution: `until` is midnight as seen from `now` (t + 2 ns).
    assert_eq!(
        wait_of(poll_at(&mut p, t + 2, key(3), &mut r)),
        (midnight + 2, PaceReason::FirstContactDaily)
    );
    assert!(
        is_go(poll_at(&mut p, t + 2, key(1), &mut r)),
        "known contacts are not capped by it"
    );
    assert_eq!(p.usage().first_contacts, 2);
    assert_eq!(p.usage().sent, 3);
    assert!(is_go(poll_at(&mut p, midnight, key(3), &mut r)));
    assert_eq!(
        p.usage(),
        DailyUsage {
            day: WALL0 / DAY_MS + 1,
            sent: 1,
            first_contacts: 1
        }
    );
}

#[test]
fn warm_up_caps_grow_geometrically_to_the_ceiling() {
    let p = PacingPolicy::new(&PacingConfig::default(), 1).unwrap();
    let caps: Vec<u32> = (0..12).map(|d| p.daily_cap_for_age(d).unwrap()).collect();
    // 20 · 1.5^d, floored, capped at 1000.
    assert_eq!(caps, [20, 30, 45, 67, 101, 151, 227, 341, 512, 768, 1000, 1000]);
    assert_eq!(p.daily_cap_for_age(u64::MAX), Some(1000));
    let mut flat = bare();
    flat.daily_cap = 50;
    flat.warmup_start = 7;
    let flat = PacingPolicy::new(&flat, 1).unwrap();
    assert_eq!(
        flat.daily_cap_for_age(1000),
        Some(7),
        "growth 1.0 holds the start cap"
    );
}

#[test]
fn daily_cap_waits_for_midnight_or_an_earlier_warm_up_step() {
    let mut cfg = bare();
    cfg.daily_cap = 100;
    cfg.warmup_start = 2;
    cfg.warmup_growth = 2.0;
    let mut r = rng();
    // Linked at 06:00 on day 0: the cap is 2 until 06:00 on day 1, then 4.
    let linked = WALL0 + 6 * 3600 * 1000;
    let mut p = pacer(&cfg, Some(linked));
    let t = 7 * 3600 * SEC;
    assert!(is_go(poll_at(&mut p, t, key(1), &mut r)));
    assert!(is_go(poll_at(&mut p, t + 1, key(1), &mut r)));
    let midnight = 24 * 3600 * SEC;
    // The wall clock has ms resolution: `until` is midnight as seen from `now` (t + 2 ns).
    assert_eq!(
        wait_of(poll_at(&mut p, t + 2, key(1), &mut r)),
        (midnight + 2, PaceReason::DailyCap)
    );
    // Day 1 at 01:00: still age 0 (cap 2), a fresh day; after 2 sends the next step is the
    // link anniversary at 06:00, before the next midnight.
    let t = midnight + 3600 * SEC;
    assert!(is_go(poll_at(&mut p, t, key(1), &mut r)));
    assert!(is_go(poll_at(&mut p, t + 1, key(1), &mut r)));
    let anniversary = midnight + 6 * 3600 * SEC;
    assert_eq!(
        wait_of(poll_at(&mut p, t + 2, key(1), &mut r)),
        (anniversary + 2, PaceReason::DailyCap)
    );
    assert!(is_go(poll_at(&mut p, anniversary, key(1), &mut r)));
    assert!(is_go(poll_at(&mut p, anniversary + 1, key(1), &mut r)));
    assert_eq!(
        wait_of(poll_at(&mut p, anniversary + 2, key(1), &mut r)),
        (2 * midnight + 2, PaceReason::DailyCap)
    );
}

#[test]
fn a_device_of_unknown_link_time_gets_the_ceiling_and_a_wall_clock_step_back_keeps_the_count() {
    let mut cfg = bare();
    cfg.daily_cap = 3;
    cfg.warmup_start = 1;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    let day = WALL0 + 10 * DAY_MS;
    for i in 0..3 {
        assert!(is_go(p.poll(Nanos(i), day, key(1), &mut r)));
    }
    assert_eq!(
        wait_of(p.poll(Nanos(3), day, key(1), &mut r)).1,
        PaceReason::DailyCap
    );
    // The wall clock jumps back a day: today's count stays, no fresh cap.
    assert_eq!(
        wait_of(p.poll(Nanos(SEC), day - DAY_MS, key(1), &mut r)).1,
        PaceReason::DailyCap
    );
    // Persisted usage survives a restart of the session.
    let mut q = pacer(&cfg, None);
    q.restore_usage(p.usage());
    assert_eq!(
        wait_of(q.poll(Nanos(0), day, key(1), &mut r)).1,
        PaceReason::DailyCap
    );
}

#[test]
fn throttling_pauses_with_exponential_backoff_and_resets_after_quiet_successes() {
    let mut cfg = bare();
    cfg.throttle_pause_ms = 60_000;
    cfg.throttle_pause_max_ms = 300_000;
    cfg.throttle_reset_ms = 600_000;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    let mut now = 0;
    for (level, pause) in [(1, 60), (2, 120), (3, 240), (4, 300), (5, 300)] {
        let until = p.on_throttled(Nanos(now), None);
        assert_eq!(until, Nanos(now + pause * SEC), "level {level}");
        assert_eq!(p.throttle_level(), level);
        assert_eq!(
            wait_of(poll_at(&mut p, now, key(1), &mut r)),
            (until.0, PaceReason::Throttled)
        );
        // More 429s during the pause (answers to sends made before it) do not escalate.
        assert_eq!(p.on_throttled(Nanos(now + SEC), None), until);
        assert_eq!(p.throttle_level(), level);
        // Successes too soon after the pause keep the backoff.
        p.on_success(until);
        assert_eq!(p.throttle_level(), level);
        now = until.0;
        assert!(is_go(poll_at(&mut p, now, key(1), &mut r)));
    }
    // The upstream hint is a floor: longer than the backoff, it wins.
    let until = p.on_throttled(Nanos(now), Some(Duration::from_secs(900)));
    assert_eq!(until, Nanos(now + 900 * SEC));
    // A hint during a pause extends it, without escalating.
    let extended = p.on_throttled(Nanos(now + SEC), Some(Duration::from_secs(1000)));
    assert_eq!(extended, Nanos(now + SEC + 1000 * SEC));
    assert_eq!(p.throttle_level(), 6);
    // Quiet for throttle_reset_ms after the pause: the backoff starts over.
    p.on_success(Nanos(extended.0 + 600 * SEC));
    assert_eq!(p.throttle_level(), 0);
    let now = extended.0 + 601 * SEC;
    assert_eq!(p.on_throttled(Nanos(now), None), Nanos(now + 60 * SEC));
    // A bogus hint is cut to a day.
    let now = now + 61 * SEC;
    assert_eq!(
        p.on_throttled(Nanos(now), Some(Duration::from_secs(10 * 86_400))),
        Nanos(now + 86_400 * SEC)
    );
}

#[test]
fn throttle_backoff_does_not_overflow() {
    let mut cfg = bare();
    cfg.throttle_pause_ms = 86_400_000;
    cfg.throttle_pause_max_ms = 86_400_000;
    let mut p = pacer(&cfg, None);
    let mut now = Nanos(0);
    for _ in 0..100 {
        let until = p.on_throttled(now, None);
        assert_eq!(until.0 - now.0, 86_400 * SEC);
        now = until;
    }
}

#[test]
fn typing_delays_the_send_and_the_interval_counts_from_it() {
    let mut cfg = bare();
    cfg.min_interval_ms = 1000;
    cfg.typing_min_ms = 500;
    cfg.typing_max_ms = 2500;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    let Pace::Go { typing: Some(d) } = poll_at(&mut p, 0, key(1), &mut r) else {
        panic!("expected typing")
    };
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(2500)).contains(&d),
        "{d:?}"
    );
    let send_at = u64::try_from(d.as_nanos()).unwrap();
    assert_eq!(
        wait_of(poll_at(&mut p, 0, key(1), &mut r)),
        (send_at + SEC, PaceReason::MinInterval)
    );
}

#[test]
fn the_rule_that_ends_last_is_reported() {
    let mut cfg = bare();
    cfg.min_interval_ms = 1000;
    cfg.bucket_per_minute = 1;
    cfg.bucket_burst = 1;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    assert!(is_go(poll_at(&mut p, 0, key(1), &mut r)));
    assert_eq!(
        wait_of(poll_at(&mut p, 0, key(1), &mut r)),
        (60 * SEC, PaceReason::Bucket)
    );
    p.on_throttled(Nanos(0), Some(Duration::from_secs(30)));
    assert_eq!(
        wait_of(poll_at(&mut p, 0, key(1), &mut r)),
        (60 * SEC, PaceReason::Bucket)
    );
    p.on_throttled(Nanos(0), Some(Duration::from_secs(90)));
    assert_eq!(
        wait_of(poll_at(&mut p, 0, key(1), &mut r)),
        (90 * SEC, PaceReason::Throttled)
    );
}

#[test]
fn reason_labels_are_distinct() {
    let labels: HashSet<_> = PaceReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), PaceReason::ALL.len());
}

#[test]
fn contact_keys_canonicalise_phone_numbers() {
    let k = ContactKey::of("4915112345678");
    for same in [
        "+4915112345678",
        "4915112345678@s.whatsapp.net",
        "4915112345678@c.us",
        "4915112345678:3@S.WhatsApp.net",
        " 4915112345678 ",
    ] {
        assert_eq!(ContactKey::of(same), k, "{same}");
    }
    assert_ne!(ContactKey::of("4915112345679"), k);
    assert_ne!(ContactKey::of("4915112345678@lid"), k);
    assert_eq!(ContactKey::of("120363-42@G.US"), ContactKey::of("120363-42@g.us"));
}

#[test]
fn contact_book_is_bounded_and_forgets_the_least_recently_used() {
    let mut b = ContactBook::new(3);
    assert!(b.touch(ContactKey(1)));
    assert!(b.touch(ContactKey(2)));
    assert!(b.touch(ContactKey(3)));
    assert!(!b.touch(ContactKey(1)), "already known");
    assert!(b.touch(ContactKey(4)));
    assert_eq!(b.len(), 3);
    assert!(!b.contains(ContactKey(2)), "2 was the least recently used");
    assert!(b.contains(ContactKey(1)) && b.contains(ContactKey(3)) && b.contains(ContactKey(4)));
    assert_eq!(
        b.keys_by_recency().collect::<Vec<_>>(),
        [ContactKey(3), ContactKey(1), ContactKey(4)]
    );
    // Touching the same keys over and over keeps the recency log bounded.
    for i in 0..10_000u64 {
        b.touch(ContactKey(i % 5));
        assert!(b.len() <= 3);
        assert!(b.log_len() <= 2 * 3 + 16, "log grew to {}", b.log_len());
    }
    assert_eq!(ContactBook::new(0).capacity(), 1);
}

#[test]
fn contact_book_round_trips_through_bytes_with_its_recency() {
    let mut b = ContactBook::new(100);
    for i in [5u64, 9, 1, 7, 5, 3] {
        b.touch(ContactKey(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    }
    let bytes = b.to_bytes();
    assert_eq!(bytes.len(), 12 + 5 * 8 + 8);
    let back = ContactBook::from_bytes(&bytes, 100).unwrap();
    assert_eq!(
        back.keys_by_recency().collect::<Vec<_>>(),
        b.keys_by_recency().collect::<Vec<_>>()
    );
    // A lower capacity keeps the most recently used.
    let small = ContactBook::from_bytes(&bytes, 2).unwrap();
    assert_eq!(
        small.keys_by_recency().collect::<Vec<_>>(),
        b.keys_by_recency().skip(3).collect::<Vec<_>>()
    );
    let empty = ContactBook::from_bytes(&ContactBook::new(4).to_bytes(), 4).unwrap();
    assert!(empty.is_empty());
}

/// Bytes with a valid checksum around any header and body, to reach the checks after it.
fn sealed(version: u8, count: u32, keys: &[u64]) -> Vec<u8> {
    let mut v = b"WPCB".to_vec();
    v.push(version);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&count.to_le_bytes());
    for k in keys {
        v.extend_from_slice(&k.to_le_bytes());
    }
    let d = Sha256::digest(&v);
    v.extend_from_slice(&d[..8]);
    v
}

#[test]
fn corrupt_contact_book_bytes_are_typed_errors() {
    let mut b = ContactBook::new(10);
    b.touch(ContactKey(1));
    b.touch(ContactKey(2));
    let good = b.to_bytes();
    assert_eq!(
        sealed(1, 2, &[1, 2]),
        good,
        "the test's encoder matches the format"
    );
    let err = |bytes: &[u8]| ContactBook::from_bytes(bytes, 10).unwrap_err();
    assert_eq!(err(&good[..10]), ContactBookError::Truncated { len: 10 });
    assert_eq!(err(&[]), ContactBookError::Truncated { len: 0 });
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(err(&bad), ContactBookError::BadMagic);
    assert_eq!(
        err(&sealed(2, 2, &[1, 2])),
        ContactBookError::UnsupportedVersion(2)
    );
    assert_eq!(
        err(&sealed(1, 3, &[1, 2])),
        ContactBookError::LengthMismatch {
            declared: 3,
            actual: 16
        }
    );
    assert_eq!(
        err(&good[..good.len() - 3]),
        ContactBookError::LengthMismatch {
            declared: 2,
            actual: 13
        }
    );
    assert_eq!(err(&sealed(1, 2, &[1, 1])), ContactBookError::Duplicate);
    // Every single flipped bit after the header is caught by the checksum.
    for i in 12..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            assert_eq!(err(&bad), ContactBookError::Checksum, "byte {i} bit {bit}");
        }
    }
}

// --- Property test: admission by the workspace limiter, dispatch by the device pacers ---

/// One send as the session would make it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Instant of the poll that said go.
    polled: u64,
    /// Instant the send starts (poll + typing).
    at: u64,
    /// Wall clock of the poll, ms.
    wall_ms: u64,
    /// New contact as far as anyone could know (the model remembers every contact forever;
    /// the pacer's bounded book may have forgotten some, which only makes it stricter).
    first: bool,
}

#[derive(Debug, Clone)]
enum Op {
    /// Time passes, in ms.
    Advance(u64),
    /// A client offers a message of workspace `ws` for device `dev` to recipient `to`.
    Offer { ws: usize, dev: usize, to: u64 },
    /// Upstream answers 429 for a device, with an optional hint (ms).
    Throttle {
        ws: usize,
        dev: usize,
        hint_ms: Option<u64>,
    },
    /// Upstream answers a success for a device.
    Success { ws: usize, dev: usize },
    /// A message from `from` reaches a device.
    Inbound { ws: usize, dev: usize, from: u64 },
    /// The session tries to dispatch: each device polls its queued messages, in an order
    /// rotated by `skew` (so known and new recipients interleave every way).
    Dispatch { skew: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![0u64..=100, 0u64..=5_000, 0u64..=600_000, 0u64..=2 * DAY_MS].prop_map(Op::Advance),
        6 => (0usize..3, 0usize..3, 0u64..12).prop_map(|(ws, dev, to)| Op::Offer { ws, dev, to }),
        1 => (0usize..3, 0usize..3, prop::option::of(0u64..=200_000))
            .prop_map(|(ws, dev, hint_ms)| Op::Throttle { ws, dev, hint_ms }),
        1 => (0usize..3, 0usize..3).prop_map(|(ws, dev)| Op::Success { ws, dev }),
        1 => (0usize..3, 0usize..3, 0u64..12).prop_map(|(ws, dev, from)| Op::Inbound { ws, dev, from }),
        5 => (0usize..16).prop_map(|skew| Op::Dispatch { skew }),
    ]
}

fn pacing_config() -> impl Strategy<Value = PacingConfig> {
    (
        (0u64..=5_000, 0u64..=5_000, 0u32..=30, 1u32..=6),
        (0u32..=40, 1u32..=4, 0u32..=8),
        (0u32..=30, 1u32..=30, 1.0f64..=3.0),
        (0u64..=120_000, 1u64..=8, 0u64..=600_000),
        (0u64..=2_000, 0u64..=2_000, 1u32..=6),
    )
        .prop_map(|(a, b, c, d, e)| {
            let (min_interval_ms, jitter_ms, bucket_per_minute, bucket_burst) = a;
            let (first_contact_per_hour, first_contact_burst, first_contact_per_day) = b;
            let (daily_cap, warmup_start, warmup_growth) = c;
            let (throttle_pause_ms, max_factor, throttle_reset_ms) = d;
            let (t1, t2, contact_book_capacity) = e;
            PacingConfig {
                min_interval_ms,
                jitter_ms,
                bucket_per_minute,
                bucket_burst,
                first_contact_per_hour,
                first_contact_burst,
                first_contact_per_day,
                daily_cap,
                warmup_start: warmup_start.min(daily_cap.max(1)),
                warmup_growth,
                throttle_pause_ms,
                throttle_pause_max_ms: throttle_pause_ms * max_factor,
                throttle_reset_ms,
                typing_min_ms: t1.min(t2),
                typing_max_ms: t1.max(t2),
                // Tiny books, so forgetting contacts is exercised.
                contact_book_capacity,
            }
        })
}

/// Largest count of events in any window `[t_i, t_j]` allowed by a bucket:
/// `n ≤ burst + floor((t_j − t_i) / interval)`, checked for every pair (every window that
/// starts and ends on an event is the tightest of its length).
fn check_bucket(times: &[u64], q: Quota, what: &str) -> Result<(), TestCaseError> {
    let interval = u64::try_from(q.interval().as_nanos()).unwrap();
    for i in 0..times.len() {
        for j in i..times.len() {
            let n = (j - i + 1) as u64;
            let allowed = u64::from(q.burst()) + (times[j] - times[i]) / interval;
            prop_assert!(
                n <= allowed,
                "{}: {} events in [{}, {}] exceed burst {} + rate",
                what,
                n,
                times[i],
                times[j],
                q.burst()
            );
        }
    }
    Ok(())
}

struct Device {
    pacer: DevicePacer,
    queue: VecDeque<u64>,
    /// Everyone the device ever exchanged a message with (unbounded, unlike the pacer's book).
    known: HashSet<u64>,
    sent: Vec<Sent>,
    /// (instant, guaranteed pause, sends made before it) of each 429.
    throttles: Vec<(u64, u64, usize)>,
    linked_at_ms: Option<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_device_outpaces_its_policy_and_no_workspace_its_bucket(
        workspaces in prop::collection::vec(
            (1u32..=20, 1u32..=6, 1u32..=10, pacing_config(), prop::collection::vec(prop::option::of(0u64..=15 * DAY_MS), 1..=3)),
            1..=3,
        ),
        ops in prop::collection::vec(op(), 1..250),
        wall_start in 0u64..DAY_MS,
        seed: u64,
    ) {
        let mut r = SmallRng::seed_from_u64(seed);
        let wall0 = WALL0 + wall_start;
        let mut cells = Vec::new();
        let mut admitted: Vec<Vec<u64>> = Vec::new();
        let mut devices: Vec<Vec<Device>> = Vec::new();
        let mut policies = Vec::new();
        for (rate, burst, device_rate, cfg, links) in &workspaces {
            let q = Quota::per_second(*rate, *burst).unwrap();
            cells.push((Cell::new(q), q));
            admitted.push(Vec::new());
            let policy = Arc::new(PacingPolicy::new(cfg, *device_rate).unwrap());
            policies.push((policy.clone(), cfg.clone()));
            devices.push(
                links
                    .iter()
                    .map(|age| {
                        let linked_at_ms = age.map(|a| wall0.saturating_sub(a));
                        Device {
                            pacer: DevicePacer::new(
                                policy.clone(),
                                linked_at_ms,
                                ContactBook::new(policy.contact_book_capacity()),
                            ),
                            queue: VecDeque::new(),
                            known: HashSet::new(),
                            sent: Vec::new(),
                            throttles: Vec::new(),
                            linked_at_ms,
                        }
                    })
                    .collect(),
            );
        }
        let mut now = 0u64;
        for op in ops {
            let wall = wall0 + now / MS;
            match op {
                Op::Advance(ms) => now += ms * MS,
                Op::Offer { ws, dev, to } => {
                    let ws = ws % cells.len();
                    let dev = dev % devices[ws].len();
                    // Admission: the workspace bucket, as at acceptance in server/stream.rs.
                    if cells[ws].0.check(Nanos(now), 1).is_ok() {
                        admitted[ws].push(now);
                        devices[ws][dev].queue.push_back(to);
                    }
                }
                Op::Throttle { ws, dev, hint_ms } => {
                    let ws = ws % cells.len();
                    let dev = dev % devices[ws].len();
                    let d = &mut devices[ws][dev];
                    let before = d.pacer.paused_until().0;
                    let until = d.pacer.on_throttled(Nanos(now), hint_ms.map(Duration::from_millis));
                    let hint = hint_ms.unwrap_or(0) * MS;
                    let cfg = &policies[ws].1;
                    // A new episode pauses at least throttle_pause_ms; any 429 at least its hint.
                    let floor = if now >= before { hint.max(cfg.throttle_pause_ms * MS) } else { hint };
                    if policies[ws].0.is_enabled() {
                        prop_assert!(until.0 >= now + floor);
                        d.throttles.push((now, floor, d.sent.len()));
                    }
                }
                Op::Success { ws, dev } => {
                    let ws = ws % cells.len();
                    let dev = dev % devices[ws].len();
                    let d = &mut devices[ws][dev];
                    d.pacer.on_success(Nanos(now));
                }
                Op::Inbound { ws, dev, from } => {
                    let ws = ws % cells.len();
                    let dev = dev % devices[ws].len();
                    let d = &mut devices[ws][dev];
                    d.pacer.on_inbound(key(from));
                    d.known.insert(from);
                }
                Op::Dispatch { skew } => {
                    for ws_devices in devices.iter_mut() {
                        for d in ws_devices.iter_mut() {
                            let n = d.queue.len();
                            if n == 0 {
                                continue;
                            }
                            d.queue.rotate_left(skew % n);
                            let mut keep = VecDeque::new();
                            while let Some(to) = d.queue.pop_front() {
                                match d.pacer.poll(Nanos(now), wall, key(to), &mut r) {
                                    Pace::Go { typing } => {
                                        let at = now + typing.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap());
                                        let first = d.known.insert(to);
                                        d.sent.push(Sent { polled: now, at, wall_ms: wall, first });
                                    }
                                    Pace::Wait { until, .. } => {
                                        prop_assert!(until.0 > now, "a wait must end in the future");
                                        keep.push_back(to);
                                    }
                                }
                            }
                            d.queue = keep;
                        }
                    }
                }
            }
        }

        for (ws, ws_devices) in devices.iter().enumerate() {
            // No workspace admits more than its bucket over any window.
            check_bucket(&admitted[ws], cells[ws].1, "workspace")?;
            let policy = &policies[ws].0;
            for d in ws_devices {
                if !policy.is_enabled() {
                    continue;
                }
                let at: Vec<u64> = d.sent.iter().map(|s| s.at).collect();
                // Minimum interval between consecutive sends.
                let min = u64::try_from(policy.min_interval().as_nanos()).unwrap();
                for w in at.windows(2) {
                    prop_assert!(w[1] >= w[0] + min, "sends at {} and {} are closer than {}", w[0], w[1], min);
                }
                // The device bucket over every window.
                if let Some(q) = policy.bucket() {
                    check_bucket(&at, q, "device bucket")?;
                }
                // New contacts: their bucket over every window, and their daily cap.
                let first_at: Vec<u64> = d.sent.iter().filter(|s| s.first).map(|s| s.at).collect();
                if let Some(q) = policy.first_contact_bucket() {
                    check_bucket(&first_at, q, "first-contact bucket")?;
                }
                let mut per_day: HashMap<u64, (u32, u32)> = HashMap::new();
                for s in &d.sent {
                    let e = per_day.entry(s.wall_ms / DAY_MS).or_default();
                    e.0 += 1;
                    if s.first {
                        e.1 += 1;
                    }
                    // Warm-up / daily cap at the age the device had when it sent.
                    let age = d.linked_at_ms.map_or(u64::MAX, |l| s.wall_ms.saturating_sub(l) / DAY_MS);
                    if let Some(cap) = policy.daily_cap_for_age(age) {
                        prop_assert!(e.0 <= cap, "send #{} of the day at age {} exceeds cap {}", e.0, age, cap);
                    }
                    if let Some(cap) = policy.first_contact_per_day() {
                        prop_assert!(e.1 <= cap, "new contact #{} of the day exceeds {}", e.1, cap);
                    }
                }
                // No send was decided during a throttle pause.
                for &(t, pause, before) in &d.throttles {
                    for s in &d.sent[before..] {
                        prop_assert!(
                            s.polled >= t + pause,
                            "send polled at {} inside the pause [{}, {})",
                            s.polled,
                            t,
                            t + pause
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_reload_keeps_history_and_unchanged_buckets() {
    let mut cfg = bare();
    cfg.bucket_per_minute = 1;
    cfg.bucket_burst = 1;
    cfg.daily_cap = 5;
    cfg.warmup_start = 5;
    let mut p = pacer(&cfg, None);
    let mut r = rng();
    assert!(is_go(poll_at(&mut p, 0, key(1), &mut r)));
    // Same bucket, another cap: the empty bucket stays empty, the day's count stays.
    cfg.daily_cap = 1;
    cfg.warmup_start = 1;
    p.set_policy(Arc::new(PacingPolicy::new(&cfg, 1_000_000_000).unwrap()));
    assert_eq!(
        wait_of(poll_at(&mut p, SEC, key(1), &mut r)).1,
        PaceReason::DailyCap
    );
    assert_eq!(p.usage().sent, 1);
    assert!(!p.is_first_contact(key(1)));
    cfg.daily_cap = 0;
    p.set_policy(Arc::new(PacingPolicy::new(&cfg, 1_000_000_000).unwrap()));
    assert_eq!(
        wait_of(poll_at(&mut p, SEC, key(1), &mut r)),
        (60 * SEC, PaceReason::Bucket)
    );
}
