//! Device store measurements for `docs/design/0009-device-store.md`. No assertions: figures.
//!
//! ```sh
//! cargo run --release -p waping-store --example store_bench            # everything (~3 min)
//! cargo run --release -p waping-store --example store_bench -- puts    # put throughput only
//! cargo run --release -p waping-store --example store_bench -- size    # size, gets, reopen
//! ```
//!
//! Files go to `$TMPDIR` (a real disk here; tmpfs would hide the fsync cost).
//!
//! - `puts`: N concurrent writers (1, 16, 256 tokio tasks; 500-byte values over 100 devices)
//!   for 2 s, 5 runs each with the
//!   variants interleaved, median; the store with and without `quick_repair`, and a peer in the
//!   same run: the same redb file with one durable transaction per write from N OS threads
//!   (what an engine without group commit gives).
//! - `size`: 1000 devices × 200 keys of 100–2000 bytes (a credential set), file bytes per
//!   device; the peer layout of one redb file per device for 50 devices; get latency
//!   (random keys, one thread, p50/p99); reopen + `list_devices` after a clean shutdown and
//!   after an unclean one (child process exits without closing), with and without
//!   `quick_repair`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use waping_store::{Batch, Ns, Store, StoreOptions};

const NS: Ns = Ns::new(1);
const RUN: Duration = Duration::from_secs(2);
const RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("unclean-child") {
        unclean_child(Path::new(&args[1]), args[2] == "quick");
        return;
    }
    let which = args.first().cloned().unwrap_or_default();
    let base = std::env::temp_dir().join(format!("waping-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    if which.is_empty() || which == "puts" {
        puts(&base);
    }
    if which.is_empty() || which == "size" {
        size(&base);
    }
    std::fs::remove_dir_all(&base).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("devices.redb")
}

/// One timed run of the store: returns (puts/s, p50 µs, p99 µs, puts per commit).
fn store_run(path: &Path, writers: usize, quick_repair: bool) -> (f64, u64, u64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(
            path,
            StoreOptions {
                quick_repair,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let dev = store.device("ws", &format!("dev{}", w % 100)).unwrap();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let value = vec![w as u8; 500];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("session:{w}:{}", i % 1000);
                    let t = Instant::now();
                    dev.put(NS, key.as_bytes(), &value).await.unwrap();
                    hist.record(t.elapsed().as_micros() as u64).unwrap();
                    i += 1;
                }
                hist
            }));
        }
        let before = store.stats();
        let t = Instant::now();
        tokio::time::sleep(RUN).await;
        stop.store(true, Ordering::Relaxed);
        let mut hist = Histogram::<u64>::new(3).unwrap();
        for task in tasks {
            hist.add(task.await.unwrap()).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        let after = store.stats();
        let requests = after.requests - before.requests;
        let commits = after.commits - before.commits;
        (
            requests as f64 / secs,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            requests as f64 / commits.max(1) as f64,
        )
    })
}

/// Peer: one durable redb transaction per put, from `writers` OS threads.
fn peer_run(path: &Path, writers: usize) -> (f64, u64, u64, f64) {
    const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");
    let db = Arc::new(
        redb::Builder::new()
            .set_cache_size(64 << 20)
            .create(path)
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, stop, count) = (db.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let value = vec![w as u8; 500];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("ws/dev{}/session:{w}:{}", w % 100, i % 1000);
                    let s = Instant::now();
                    let txn = db.begin_write().unwrap();
                    txn.open_table(T)
                        .unwrap()
                        .insert(key.as_bytes(), value.as_slice())
                        .unwrap();
                    txn.commit().unwrap();
                    hist.record(s.elapsed().as_micros() as u64).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                hist
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for th in threads {
        hist.add(th.join().unwrap()).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    (
        count.load(Ordering::Relaxed) as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        1.0,
    )
}

fn puts(base: &Path) {
    println!("## put throughput (500-byte values, 100 devices, {RUN:?} per run, median of {RUNS})");
    println!("| writers | variant | puts/s | p50 µs | p99 µs | puts per commit | runs (puts/s) |");
    println!("|---|---|---|---|---|---|---|");
    const VARIANTS: [&str; 3] = ["store", "store quick_repair", "peer: redb txn per put"];
    for writers in [1usize, 16, 256] {
        // results[variant] = (rate, p50, p99, per commit) per run; variants interleaved within
        // each run so that disk noise from other processes hits them alike.
        let mut results = vec![Vec::new(); VARIANTS.len()];
        for run in 0..RUNS {
            for (v, variant) in VARIANTS.iter().enumerate() {
                let path = fresh(base, &format!("puts-{writers}-{v}-{run}"));
                results[v].push(match *variant {
                    "store" => store_run(&path, writers, false),
                    "store quick_repair" => store_run(&path, writers, true),
                    _ => peer_run(&path, writers),
                });
                std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
            }
        }
        for (v, variant) in VARIANTS.iter().enumerate() {
            let r = &results[v];
            let rates: Vec<f64> = r.iter().map(|x| x.0).collect();
            let runs: Vec<String> = rates.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "| {writers} | {variant} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
                median(rates),
                median(r.iter().map(|x| x.1 as f64).collect()),
                median(r.iter().map(|x| x.2 as f64).collect()),
                median(r.iter().map(|x| x.3).collect()),
                runs.join(", ")
            );
        }
    }
}

/// A credential set: 200 keys of 100–2000 bytes, deterministic per device.
fn credential_batch(dev: usize) -> (Batch, usize) {
    let mut batch = Batch::new();
    let mut bytes = 0;
    for k in 0..200usize {
        let mix = (dev * 7919 + k * 104_729) as u64;
        let len = 100 + (mix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % 1901;
        let value: Vec<u8> = (0..len).map(|j| (mix as usize ^ (j * 131)) as u8).collect();
        let key = format!("prekey:{k:05}");
        bytes += key.len() + len;
        batch.put(NS, key, value);
    }
    (batch, bytes)
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

const DEVICES: usize = 1000;

fn size(base: &Path) {
    println!("\n## size, gets, reopen ({DEVICES} devices × 200 keys of 100–2000 bytes)");
    let path = fresh(base, "size");
    let mut raw = 0usize;
    let t = Instant::now();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for d in 0..DEVICES {
            let (batch, bytes) = credential_batch(d);
            raw += bytes;
            store
                .device("ws", &format!("dev{d:05}"))
                .unwrap()
                .apply_blocking(&batch)
                .unwrap();
        }
    }
    let fill = t.elapsed();
    let total = file_bytes(&path);
    println!(
        "fill (one batch per device): {:.2} s; raw keys+values {:.1} MB; file {:.1} MB; {:.0} KiB per device ({:.2}× raw)",
        fill.as_secs_f64(),
        raw as f64 / 1e6,
        total as f64 / 1e6,
        total as f64 / DEVICES as f64 / 1024.0,
        total as f64 / raw as f64
    );

    // Peer layout: a file per device.
    let mut peer_total = 0;
    for d in 0..50 {
        let p = fresh(base, &format!("per-device-{d}"));
        let store = Store::open(&p, StoreOptions::default()).unwrap();
        store
            .device("ws", &format!("dev{d:05}"))
            .unwrap()
            .apply_blocking(&credential_batch(d).0)
            .unwrap();
        drop(store);
        peer_total += file_bytes(&p);
    }
    println!(
        "peer, one redb file per device (50 devices): {:.0} KiB per device",
        peer_total as f64 / 50.0 / 1024.0
    );

    // Gets: random device, random key.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let handles: Vec<_> = (0..DEVICES)
        .map(|d| store.device("ws", &format!("dev{d:05}")).unwrap())
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (label, n) in [("warm-up", 50_000usize), ("measured", 200_000)] {
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            let d = next() as usize % DEVICES;
            let key = format!("prekey:{:05}", next() % 200);
            let s = Instant::now();
            let v = handles[d].get(NS, key.as_bytes()).unwrap();
            hist.record(s.elapsed().as_nanos() as u64).unwrap();
            assert!(v.is_some());
        }
        if label == "measured" {
            println!(
                "get, one thread, random keys ({n}): {:.0} gets/s; p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
                n as f64 / t.elapsed().as_secs_f64(),
                hist.value_at_quantile(0.5) as f64 / 1e3,
                hist.value_at_quantile(0.99) as f64 / 1e3,
                hist.max() as f64 / 1e3
            );
        }
    }
    // Whole-device scans (what a session restore does), 200 random devices.
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..200 {
        let dev = &handles[next() as usize % DEVICES];
        let t = Instant::now();
        let mut found = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = dev.scan_prefix(NS, b"prekey:", after.as_deref(), 1000).unwrap();
            found += page.entries.len();
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(found, 200);
        hist.record(t.elapsed().as_micros() as u64).unwrap();
    }
    println!(
        "scan one device's 200 keys (200 random devices): p50 {} µs, p99 {} µs",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99)
    );
    drop((handles, store));

    for quick in [false, true] {
        let label = if quick { "quick_repair" } else { "default" };
        let t = Instant::now();
        let store = Store::open(
            &path,
            StoreOptions {
                quick_repair: quick,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let n = store.list_devices().unwrap().len();
        let clean = t.elapsed();
        drop(store);
        // Leave the file as a crash would: a child commits with this setting and exits
        // without closing the database.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "unclean-child",
                path.to_str().unwrap(),
                if quick { "quick" } else { "plain" },
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let t = Instant::now();
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let m = store.list_devices().unwrap().len();
        let unclean = t.elapsed();
        drop(store);
        println!(
            "open + list_devices ({label}): clean {:.0} ms ({n} devices), after unclean exit {:.0} ms ({m} devices)",
            clean.as_secs_f64() * 1e3,
            unclean.as_secs_f64() * 1e3
        );
    }
}

fn unclean_child(path: &Path, quick: bool) {
    let store = Store::open(
        path,
        StoreOptions {
            quick_repair: quick,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store
        .device("ws", "dev00000")
        .unwrap()
        .put_blocking(NS, b"touched", b"1")
        .unwrap();
    // No drop: the file stays marked as open, as after kill -9.
    std::process::exit(0);
}
