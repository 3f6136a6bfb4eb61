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
//!
//! Kept short: criterion medians of small samples, compared within one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use waping_audit::chain::{DigestSigner, Hash, PublicKey};
use waping_audit::record::{Action, Actor, Detail, Event, Record};
use waping_audit::verify::{Position, build_chain, verify_lines};

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = encode, digest, verify
}
criterion_main!(benches);
