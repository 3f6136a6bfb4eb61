//! The audit log: what a record costs to encode and chain, what a digest costs, how fast
//! `audit verify` walks a chain, and how many records a second the spool writer makes
//! durable and each sink ships.
//!
//! - `encode`: `Record::from_event` + `to_line` for a `key.create` record with a typical
//!   detail (the writer thread's per-record work besides the disk), against `serde_json`
//!   of the same `Record` (the peer: the JSON itself, without the timestamp formatting and
//!   clones) and with `Hash::of_line` added (the chain link).
//! - `digest`: one Ed25519 signature over a chain head (once per `digest_interval_s`).
//! - `verify`: `verify_lines` over 10 000 records with a digest every 1 000.
//! - `ship`: 20 000 records emitted into a real [`Pipeline`] with one sink, timed from the
//!   first emit until the sink has confirmed the last record: spool writer (fsync per group
//!   commit) plus the sink. Sinks: `file` (fsync per batch), `http` (NDJSON to a loopback
//!   receiver that answers 200 at once), `nats` (JetStream on 127.0.0.1:4222, file storage,
//!   acks awaited), and `none` (the spool alone, the peer the sinks are compared with).
//!
//! Kept short: criterion medians of small samples, compared within one run.

use std::hint::black_box;
use std::time::Duration;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use waping_audit::chain::{DigestSigner, Hash, PublicKey};
use waping_audit::config::{AuditConfig, FileSinkConfig, HttpSinkConfig, NatsSinkConfig, SinkConfig};
use waping_audit::record::{Action, Actor, Detail, Event, Record};
use waping_audit::verify::{Position, build_chain, verify_lines};
use waping_audit::{Pipeline, PipelineOptions};

fn event(i: u64) -> Event {
    Event::new(
        1_795_694_400_123 + i,
        Actor::Key {
            id: "key_01jdz8w3x4y5z6a7b8c9d0e1f2".into(),
        },
        Action::KeyCreate,
    )
    .workspace("acme-production")
    .target("key", format!("key_01jdz8w3x4y5z6a7b8c9d0{i:05}"))
    .request_id("01jdz8w3x4y5z6a7b8c9d0e1f2")
    .source([192, 0, 2, 7].into())
    .detail(Detail::Key {
        role: "sender".into(),
        previous_role: None,
        new_key: None,
        expires_at_ms: Some(1_798_761_600_000),
    })
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_encode");
    g.throughput(Throughput::Elements(1));
    let ev = event(1);
    let prev = Hash::of_line(b"previous");
    let rec = Record::from_event(&ev, "edge-1", 42, &prev);
    g.bench_function("serde_json_only", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&rec)).unwrap()))
    });
    g.bench_function("record_line", |b| {
        b.iter(|| black_box(Record::from_event(black_box(&ev), "edge-1", 42, &prev).to_line()))
    });
    g.bench_function("record_line_and_link", |b| {
        b.iter(|| {
            let line = Record::from_event(black_box(&ev), "edge-1", 42, &prev).to_line();
            black_box(Hash::of_line(&line))
        })
    });
    g.finish();
}

fn digest(c: &mut Criterion) {
    let (s, _) = DigestSigner::generate();
    let head = Hash::of_line(b"head");
    c.bench_function("audit_digest_sign", |b| {
        b.iter(|| black_box(s.digest("edge-1", black_box(1000), &head, &Hash::ZERO)))
    });
}

fn verify(c: &mut Criterion) {
    let (s, _) = DigestSigner::generate();
    let pk = PublicKey::from_bytes(s.public_key());
    let events: Vec<Event> = (0..10_000).map(event).collect();
    let lines = build_chain("edge-1", &events, Some(&s), 1000);
    let n = lines.len() as u64;
    let mut g = c.benchmark_group("audit_verify");
    g.throughput(Throughput::Elements(n));
    g.bench_function("10k_records", |b| {
        b.iter(|| {
            let input = lines.iter().enumerate().map(|(i, l)| {
                (
                    Position {
                        file: "a".into(),
                        line: i as u64 + 1,
                    },
                    l.clone(),
                )
            });
            black_box(verify_lines(input, std::slice::from_ref(&pk)).unwrap())
        })
    });
    g.finish();
}

/// A loopback HTTP/1.1 receiver that reads each request and answers 200.
fn receiver() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err()
                        || w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

const SHIP_RECORDS: u64 = 20_000;
static NODE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ship(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = receiver();
    let mut g = c.benchmark_group("audit_ship");
    g.throughput(Throughput::Elements(SHIP_RECORDS));
    g.sample_size(10);
    let sinks: Vec<(&str, Option<SinkConfig>)> = vec![
        ("none", None),
        ("file", Some(SinkConfig::File(FileSinkConfig::default()))),
        (
            "http",
            Some(SinkConfig::Http(HttpSinkConfig {
                url: format!("http://{http}/audit"),
                ..Default::default()
            })),
        ),
        (
            "nats",
            Some(SinkConfig::Nats(NatsSinkConfig {
                stream: format!("BENCH_AUDIT_{}", std::process::id()),
                subject_prefix: format!("bench.audit.{}", std::process::id()),
                ..Default::default()
            })),
        ),
    ];
    for (name, sink) in sinks {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    // A fresh node name per iteration: each spool starts at seq 1, and a sink that
                    // resumes after what it already holds (NATS: the last record on the node's
                    // subject) would otherwise skip everything after the first iteration.
                    let node = format!(
                        "bench-{}",
                        NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    );
                    let cfg = AuditConfig {
                        node: Some(node),
                        sinks: sink.iter().cloned().collect(),
                        ..Default::default()
                    };
                    total += rt.block_on(async {
                        let (signer, _) = DigestSigner::generate();
                        let p = Pipeline::start(
                            &cfg,
                            PipelineOptions {
                                state_dir: dir.path().to_path_buf(),
                                signer,
                                version: "bench".into(),
                            },
                        )
                        .await
                        .unwrap();
                        let a = p.auditor();
                        let start = p.head();
                        let t0 = Instant::now();
                        for i in 0..SHIP_RECORDS {
                            while a.emit(event(i)).is_err() {
                                tokio::task::yield_now().await;
                            }
                        }
                        let target = start + SHIP_RECORDS;
                        while p.head() < target || p.sink_lag().iter().any(|(_, l)| *l > 0) {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        let took = t0.elapsed();
                        p.shutdown(Duration::from_secs(5)).await;
                        took
                    });
                }
                total
            })
        });
    }
    g.finish();
    rt.block_on(async {
        if let Ok(c) = async_nats::connect("nats://127.0.0.1:4222").await {
            let _ = async_nats::jetstream::new(c)
                .delete_stream(format!("BENCH_AUDIT_{}", std::process::id()))
                .await;
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = encode, digest, verify, ship
}
criterion_main!(benches);
