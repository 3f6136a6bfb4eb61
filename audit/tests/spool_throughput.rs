//! Spool writer measurements, not run by default (`cargo test -p waping-audit --release
//! --test spool_throughput -- --ignored --nocapture`). They print numbers and assert only
//! correctness. Set `AUDIT_BENCH_DIR` to measure on a particular file system (fsync cost
//! differs by orders of magnitude between tmpfs, SSDs and network disks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use waping_audit::auditor::{Backend, Pending};
use waping_audit::config::SpoolFullPolicy;
use waping_audit::spool::{Spool, SpoolOptions};
use waping_audit::{Action, Actor, DigestSigner, Event};

fn dir() -> tempfile::TempDir {
    match std::env::var_os("AUDIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn open(d: &std::path::Path) -> Spool {
    Spool::open(SpoolOptions {
        dir: d.to_path_buf(),
        node: "bench".into(),
        segment_bytes: 16 << 20,
        spool_max_bytes: 1 << 30,
        queue_capacity: 65_536,
        on_full: SpoolFullPolicy::Refuse,
        digest_interval: Duration::from_secs(60),
    })
    .unwrap()
    .0
}

fn ev(i: u64) -> Event {
    Event::new(
        1_795_694_400_000 + i,
        Actor::Key {
            id: "key_01HZX3".into(),
        },
        Action::AuthFailure,
    )
    .workspace("acme")
    .target("key", format!("key_{i}"))
    .request_id(format!("req_{i:016x}"))
    .source("203.0.113.7".parse().unwrap())
}

fn record(b: &dyn Backend, e: Event) -> u64 {
    let (tx, rx) = oneshot::channel();
    b.push(Pending {
        event: e,
        done: Some(tx),
    })
    .unwrap();
    rx.blocking_recv().unwrap().unwrap()
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn group_commit_throughput_and_latency() {
    let d = dir();
    let spool = open(d.path());
    let w = spool
        .start_writer(DigestSigner::from_seed(&[1; 32]), Vec::new())
        .unwrap();
    let b: Arc<dyn Backend> = spool.backend();

    // Sequential durable records: one fdatasync each.
    let n = 500u64;
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        record(b.as_ref(), ev(i));
        lat.push(t.elapsed());
    }
    lat.sort();
    let c0 = spool.commits();
    println!(
        "sequential record(): {n} records, p50 {:?}, p99 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );

    // Four producers emitting as fast as the queue takes them (retrying on QueueFull).
    let per = 100_000u64;
    let t = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .map(|p| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut push_ns = 0u128;
                let mut full = 0u64;
                for i in 0..per {
                    let e = ev(p * per + i);
                    loop {
                        let t = Instant::now();
                        let r = b.push(Pending {
                            event: e.clone(),
                            done: None,
                        });
                        push_ns += t.elapsed().as_nanos();
                        match r {
                            Ok(()) => break,
                            Err(_) => {
                                full += 1;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
                (push_ns, full)
            })
        })
        .collect();
    let mut push_ns = 0u128;
    let mut full = 0;
    for h in handles {
        let (ns, f) = h.join().unwrap();
        push_ns += ns;
        full += f;
    }
    let last = record(b.as_ref(), ev(u64::MAX / 2));
    let el = t.elapsed();
    let total = 4 * per + 1;
    let commits = spool.commits() - c0;
    println!(
        "4 producers: {total} records durable in {el:?} = {:.0} records/s; {commits} fdatasyncs ({:.0} records per commit); push {:.0} ns mean incl. {full} QueueFull retries",
        total as f64 / el.as_secs_f64(),
        total as f64 / commits as f64,
        push_ns as f64 / (total + full) as f64
    );
    assert_eq!(last, n + total);
    let h = w.close().blocking_recv().unwrap().unwrap();
    assert_eq!(h, last + 2);
}
