//! The queue against a reference model: a `BinaryHeap` of (fire tick, due, seq) with lazy deletion.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use proptest::prelude::*;

use crate::retry::{RetryQueue, TICK_NANOS};

use super::{DAY, HOUR, MS, SEC, n};

#[derive(Debug, Clone)]
enum Op {
    /// `due = now + ahead`, or `now - ahead` when `past`.
    Schedule {
        key: u8,
        ahead: u64,
        past: bool,
    },
    Cancel {
        key: u8,
    },
    Advance {
        by: u64,
    },
    NextDue,
}

/// Spans that exercise every wheel level and the overflow (2^24 ms ≈ 4.66 h).
fn span() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..3 * MS,
        3 => 0..70 * SEC,
        2 => 0..6 * HOUR,
        1 => 0..40 * DAY,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..40, span(), prop::bool::weighted(0.1))
            .prop_map(|(key, ahead, past)| Op::Schedule { key, ahead, past }),
        1 => (0u8..40).prop_map(|key| Op::Cancel { key }),
        4 => span().prop_map(|by| Op::Advance { by }),
        1 => Just(Op::NextDue),
    ]
}

#[derive(Default)]
struct Model {
    heap: BinaryHeap<Reverse<(u64, u64, u64, u8)>>,
    live: HashMap<u8, u64>,
    next_seq: u64,
    tick: u64,
    /// A cancelled or replaced entry may still wake the real queue early.
    dirty: bool,
}

impl Model {
    fn schedule(&mut self, key: u8, due: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.dirty |= self.live.insert(key, seq).is_some();
        self.heap.push(Reverse((due.div_ceil(TICK_NANOS), due, seq, key)));
        seq
    }

    fn cancel(&mut self, key: u8) {
        self.dirty |= self.live.remove(&key).is_some();
    }

    fn poll(&mut self, now: u64) -> Vec<(u8, u64, u64)> {
        self.tick = self.tick.max(now / TICK_NANOS);
        let mut out = Vec::new();
        while let Some(Reverse((fire, due, seq, key))) = self.heap.peek().copied() {
            if fire > self.tick {
                break;
            }
            self.heap.pop();
            if self.live.get(&key) == Some(&seq) {
                self.live.remove(&key);
                out.push((key, due, seq));
            }
        }
        out
    }

    fn next_due(&self) -> Option<u64> {
        self.heap
            .iter()
            .filter(|Reverse((_, _, seq, key))| self.live.get(key) == Some(seq))
            .map(|Reverse((fire, ..))| (*fire).max(self.tick) * TICK_NANOS)
            .min()
    }
}

proptest! {
    // No regression file: it would land outside this module's folder; a failure prints its minimal input.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn wheel_matches_a_binary_heap(start in span(), ops in prop::collection::vec(op(), 1..300)) {
        let mut q: RetryQueue<u8, u64> = RetryQueue::new(1000);
        let mut m = Model::default();
        let mut now = start;
        prop_assert!(q.poll(n(now)).is_empty());
        m.poll(now);
        for op in ops {
            match op.clone() {
                Op::Schedule { key, ahead, past } => {
                    let due = if past { now.saturating_sub(ahead) } else { now + ahead };
                    let seq = m.schedule(key, due);
                    q.schedule(key, seq, n(due)).unwrap();
                }
                Op::Cancel { key } => {
                    m.cancel(key);
                    q.cancel(key);
                }
                Op::Advance { by } => {
                    now += by;
                    let got: Vec<_> = q.poll(n(now)).into_iter().map(|e| (e.key, e.due.0, e.item)).collect();
                    prop_assert_eq!(got, m.poll(now), "poll at {}", now);
                }
                Op::NextDue => {
                    let (got, want) = (q.next_due().map(|d| d.0), m.next_due());
                    if m.dirty {
                        // Lower bound: garbage can only make it earlier.
                        prop_assert!(want.is_none() || got.is_some_and(|g| g <= want.unwrap_or(0)), "{:?} > {:?}", got, want);
                    } else {
                        prop_assert_eq!(got, want);
                    }
                }
            }
            if matches!(op, Op::Advance { .. } | Op::NextDue) {
                // Replacements and cancels are counted when the scheduler runs.
                prop_assert_eq!(q.len(), m.live.len());
            }
        }
        // Drain everything: same items, same order.
        let got: Vec<_> = q.poll(n(u64::MAX)).into_iter().map(|e| (e.key, e.due.0, e.item)).collect();
        prop_assert_eq!(got, m.poll(u64::MAX));
        prop_assert!(q.is_empty());
    }
}
