//! Limiter checks per second with 10 000 workspaces, ours against governor's
//! keyed limiter, in one run so both see the same machine state.
//!
//! Every variant checks the same pre-generated sequence of random keys.
//! Time is simulated and frozen: ours reads `now` from a shared atomic and
//! passes it in; governor reads its `FakeRelativeClock` (also one shared
//! atomic). That keeps clock cost equal and out of the comparison; the
//! gateway reads its clock once per message either way.
//!
//! - `admit`: a quota so generous nothing is refused (1 ns interval, burst
//!   `u32::MAX`): the compare-and-swap path.
//! - `refuse`: 1/s burst 1, every bucket drained during setup: the refusal
//!   path (no write).
//!
//! Variants: `ours_check_key` (keyed lookup, 1 shard, the default),
//! `ours_check_key_16_shards` (the shard choice hashes the key a second time),
//! `ours_cached_handle` (the gateway's path: the caller holds the cell),
//! `plain_hashmap_no_arcswap` (a bare `HashMap`, not updatable: isolates the
//! arc-swap load) and `governor_keyed` (`DefaultKeyedStateStore`, a `DashMap`).
//!
//! `threads=2` runs two threads that each do half the iterations and reports
//! the wall time, so the figure is aggregate throughput (ideal: half of 1 thread).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use waping_gateway::limiter::{Cell, Limiter, Nanos, Quota};

const KEYS: u64 = 10_000;
/// Length of the key sequence (a power of two so the index is a mask).
const SEQ: usize = 1 << 16;

type Governor = governor::RateLimiter<
    u64,
    DefaultKeyedStateStore<u64>,
    FakeRelativeClock,
    NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
>;

/// Random keys from a fixed seed (splitmix64), generated once outside the timing.
fn key_sequence() -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..SEQ)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % KEYS
        })
        .collect()
}

/// Runs `per_thread(iters_for_this_thread, thread_index)` on `threads`
/// threads released together; returns the wall time from release to the last finish.
fn timed<F>(iters: u64, threads: usize, per_thread: &F) -> Duration
where
    F: Fn(u64, usize) + Sync,
{
    if threads == 1 {
        let start = Instant::now();
        per_thread(iters, 0);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    let share = iters / threads as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let n = if t == 0 {
                    iters - share * (threads as u64 - 1)
                } else {
                    share
                };
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    per_thread(n, t);
                    (start, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let first = spans.iter().map(|s| s.0).min().unwrap();
        let last = spans.iter().map(|s| s.1).max().unwrap();
        last - first
    })
}

struct Setup {
    quota: Quota,
    governor_quota: governor::Quota,
    /// Whether checks are expected to pass (asserted once per setup).
    admit: bool,
}

fn setups() -> [(&'static str, Setup); 2] {
    [
        (
            "admit",
            Setup {
                quota: Quota::per_period(Duration::from_nanos(1), u32::MAX).unwrap(),
                governor_quota: governor::Quota::per_second(NonZeroU32::MAX),
                admit: true,
            },
        ),
        (
            "refuse",
            Setup {
                quota: Quota::per_second(1, 1).unwrap(),
                governor_quota: governor::Quota::per_second(NonZeroU32::MIN),
                admit: false,
            },
        ),
    ]
}

fn limiter(c: &mut Criterion) {
    let seq = key_sequence();
    let mask = SEQ - 1;
    // Threads start at different points of the sequence so they do not hit one key in lockstep.
    let offset = |t: usize| t * (SEQ / 2 + 12_345);

    for (mode, setup) in setups() {
        let mut g = c.benchmark_group(format!("limiter_10k/{mode}"));
        g.throughput(Throughput::Elements(1));

        // Ours: frozen simulated clock read from a shared atomic, like governor's fake clock.
        let clock = AtomicU64::new(1_000_000_000);
        let now = || Nanos(clock.load(Ordering::Relaxed));
        let ours = |shards: usize| {
            let l: Limiter<u64> = Limiter::with_shards(shards);
            l.upsert_many((0..KEYS).map(|k| (k, setup.quota)), Nanos::ZERO);
            for k in 0..KEYS {
                // Drains the bucket in `refuse`, a no-op dent in `admit`.
                assert!(l.check_key(&k, now(), 1).is_ok());
                assert_eq!(l.check_key(&k, now(), 1).is_ok(), setup.admit);
            }
            l
        };
        let one_shard = ours(1);
        let sixteen = ours(16);
        // The gateway's per-message path: the connection holds its workspace's cell.
        let handles: Vec<Arc<Cell>> = (0..KEYS).map(|k| one_shard.handle(&k).unwrap()).collect();
        let plain: std::collections::HashMap<u64, Arc<Cell>> =
            (0..KEYS).map(|k| (k, one_shard.handle(&k).unwrap())).collect();

        let gclock = FakeRelativeClock::default();
        gclock.advance(Duration::from_secs(1));
        let gov: Governor = governor::RateLimiter::new(
            setup.governor_quota,
            DefaultKeyedStateStore::default(),
            gclock.clone(),
        );
        for k in 0..KEYS {
            assert!(gov.check_key(&k).is_ok());
            assert_eq!(gov.check_key(&k).is_ok(), setup.admit);
        }

        for threads in [1usize, 2] {
            let id = |name: &str| BenchmarkId::new(name, format!("threads={threads}"));
            g.bench_function(id("ours_check_key"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, threads, &|n, t| {
                        let o = offset(t);
                        for i in 0..n as usize {
                            let k = seq[(i + o) & mask];
                            black_box(one_shard.check_key(&k, now(), 1).is_ok());
                        }
                    })
                })
            });
            g.bench_function(id("ours_check_key_16_shards"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, threads, &|n, t| {
                        let o = offset(t);
                        for i in 0..n as usize {
                            let k = seq[(i + o) & mask];
                            black_box(sixteen.check_key(&k, now(), 1).is_ok());
                        }
                    })
                })
            });
            g.bench_function(id("ours_cached_handle"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, threads, &|n, t| {
                        let o = offset(t);
                        for i in 0..n as usize {
                            let k = seq[(i + o) & mask];
                            black_box(handles[k as usize].check(now(), 1).is_ok());
                        }
                    })
                })
            });
            g.bench_function(id("plain_hashmap_no_arcswap"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, threads, &|n, t| {
                        let o = offset(t);
                        for i in 0..n as usize {
                            let k = seq[(i + o) & mask];
                            black_box(plain.get(&k).unwrap().check(now(), 1).is_ok());
                        }
                    })
                })
            });
            g.bench_function(id("governor_keyed"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, threads, &|n, t| {
                        let o = offset(t);
                        for i in 0..n as usize {
                            let k = seq[(i + o) & mask];
                            black_box(gov.check_key(&k).is_ok());
                        }
                    })
                })
            });
        }
        g.finish();

        // Nothing slipped from one path to the other during the run.
        assert_eq!(one_shard.check_key(&0, now(), 1).is_ok(), setup.admit);
        assert_eq!(gov.check_key(&0).is_ok(), setup.admit);
    }
}

/// Building the map: what a configuration load of 10 000 workspaces costs.
fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter_10k/build");
    g.sample_size(10);
    let quota = Quota::per_second(20, 100).unwrap();
    g.bench_function("upsert_many/shards=1", |b| {
        b.iter(|| {
            let l: Limiter<u64> = Limiter::with_shards(1);
            l.upsert_many((0..KEYS).map(|k| (k, quota)), Nanos::ZERO);
            l
        })
    });
    for shards in [1usize, 16] {
        g.bench_function(format!("upsert_one_by_one/shards={shards}"), |b| {
            b.iter(|| {
                let l: Limiter<u64> = Limiter::with_shards(shards);
                for k in 0..KEYS {
                    l.upsert(k, quota, Nanos::ZERO);
                }
                l
            })
        });
    }
    g.finish();
}

criterion_group!(benches, limiter, build);
criterion_main!(benches);
