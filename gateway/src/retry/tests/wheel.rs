//! The timing wheel on its own, and the queue's firing times across every level.

use crate::retry::wheel::TimingWheel;
use crate::retry::{RetryQueue, TICK_NANOS};

use super::{DAY, HOUR, MS, SEC, n};

fn advance(w: &mut TimingWheel<u64>, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    w.advance(to, &mut out);
    out.sort_unstable();
    out
}

#[test]
fn entries_fire_at_their_tick_on_every_level() {
    // Each boundary of the 64-slot levels, plus the overflow beyond 2^24 ticks.
    let ticks = [
        1,
        2,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        262_143,
        262_144,
        (1 << 24) - 1,
        1 << 24,
        (1 << 24) + 1,
        (1 << 30) + 12_345,
        1 << 40,
    ];
    for start in [0u64, 1, 63, 4000, (1 << 24) - 3, 5 << 24] {
        let mut w = TimingWheel::new(start);
        for (i, t) in ticks.iter().enumerate() {
            w.insert(start + t, i as u64);
        }
        assert_eq!(w.len(), ticks.len());
        for (i, t) in ticks.iter().enumerate() {
            let at = start + t;
            assert_eq!(w.next_expiry(), Some(at), "start {start}, tick {t}");
            assert!(
                advance(&mut w, at - 1).is_empty(),
                "early: start {start}, tick {t}"
            );
            assert_eq!(
                advance(&mut w, at),
                vec![(at, i as u64)],
                "start {start}, tick {t}"
            );
        }
        assert!(w.is_empty());
        assert_eq!(w.next_expiry(), None);
    }
}

#[test]
fn one_big_jump_hands_out_everything_due_and_nothing_else() {
    let mut w = TimingWheel::new(0);
    for t in [5u64, 70, 5000, 300_000, 20_000_000, 1 << 33] {
        w.insert(t, t);
    }
    let got: Vec<u64> = advance(&mut w, 20_000_000).into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, vec![5, 70, 5000, 300_000, 20_000_000]);
    assert_eq!(w.len(), 1);
    assert_eq!(w.next_expiry(), Some(1 << 33));
    assert_eq!(advance(&mut w, 1 << 34), vec![(1 << 33, 1 << 33)]);
}

#[test]
fn past_and_present_ticks_fire_on_the_next_advance() {
    let mut w = TimingWheel::new(1000);
    w.insert(3, 1);
    w.insert(1000, 2);
    assert_eq!(w.next_expiry(), Some(1000));
    assert_eq!(advance(&mut w, 1000), vec![(3, 1), (1000, 2)]);
    // Going backwards is ignored.
    w.insert(1001, 3);
    assert!(advance(&mut w, 10).is_empty());
    assert_eq!(advance(&mut w, 1001), vec![(1001, 3)]);
}

#[test]
fn retain_drops_entries_everywhere() {
    let mut w = TimingWheel::new(0);
    for t in 0..10_000u64 {
        w.insert(t * 997, t);
    }
    w.retain(|v| v % 2 == 0);
    assert_eq!(w.len(), 5000);
    assert_eq!(w.next_expiry(), Some(0));
    let got = advance(&mut w, u64::MAX);
    assert_eq!(got.len(), 5000);
    assert!(got.iter().all(|(t, v)| v % 2 == 0 && *t == v * 997));
}

/// Through the queue: nanosecond due times, from a millisecond to weeks ahead.
#[test]
fn queue_items_fire_not_before_due_and_at_most_one_tick_late() {
    let dues = [
        1,
        MS / 2,
        MS,
        MS + 1,
        37 * MS + 123,
        SEC,
        5 * SEC + 999_999,
        4 * 60 * SEC + 17,
        HOUR,
        3 * HOUR + 7,
        DAY,
        2 * DAY + 1,
        17 * DAY + 5 * MS,
    ];
    for origin in [0, 123 * MS + 456, 5 * DAY + 1] {
        let mut q = RetryQueue::new(100);
        let _ = q.poll(n(origin));
        for (i, d) in dues.iter().enumerate() {
            q.schedule(i, origin + d, n(origin + d)).unwrap();
        }
        // Probe the instants where a wrong cascade would show: half-way, a second,
        // a tick and a nanosecond before each due time, then its own tick.
        let mut fired_at = vec![None; dues.len()];
        let mut poll = |q: &mut RetryQueue<usize, u64>, t: u64| {
            for e in q.poll(n(t)) {
                assert!(e.due.0 <= t, "item {} due {} fired at {t}", e.key, e.due.0);
                assert_eq!((e.item, fired_at[e.key]), (e.due.0, None));
                fired_at[e.key] = Some(t);
            }
        };
        for d in dues {
            let due = origin + d;
            for before in [d / 2, SEC, MS, 1] {
                if before <= d {
                    poll(&mut q, due - before);
                }
            }
            poll(&mut q, due.div_ceil(TICK_NANOS) * TICK_NANOS);
        }
        for (i, d) in dues.iter().enumerate() {
            let due = origin + d;
            let tick = due.div_ceil(TICK_NANOS) * TICK_NANOS;
            assert_eq!(fired_at[i], Some(tick), "item {i} due {due}");
            assert!(tick - due < TICK_NANOS);
        }
        assert!(q.is_empty());
    }
}

/// A scheduler that sleeps exactly until `next_due` never wakes for nothing and never misses.
#[test]
fn next_due_is_exact_for_a_sleeping_scheduler() {
    let mut q = RetryQueue::new(1000);
    let mut want = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..500u64 {
        // xorshift: spread due times over ns..weeks, log-uniformly.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let due = x % (1 << (10 + x % 40));
        q.schedule(i, (), n(due)).unwrap();
        want.push((due, i));
    }
    want.sort_unstable();
    let mut got = Vec::new();
    let mut wakes = 0;
    while let Some(at) = q.next_due() {
        wakes += 1;
        if at.0 > 0 {
            assert!(
                q.poll(n(at.0 - 1)).is_empty(),
                "something was due before next_due {at:?}"
            );
        }
        let batch = q.poll(at);
        assert!(!batch.is_empty(), "woke at {at:?} for nothing");
        for e in batch {
            assert!(e.due <= at && at.0 - e.due.0 < TICK_NANOS);
            got.push((e.due.0, e.key));
        }
    }
    assert_eq!(got, want);
    assert!(wakes <= 500);
}
