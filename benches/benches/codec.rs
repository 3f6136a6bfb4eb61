//! Frame encode and decode per message: the per-SEND cost of the wire format.
//!
//! Frames are the ones a busy connection carries: a SEND with a 200-byte
//! text, the ACCEPTED answering it, the REPORT on the sending stream and the
//! EVENT carrying the same delivery report to subscribers; plus 64 SENDs
//! decoded from one buffer, as a pipelining client fills a read.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use waping_protocol::{
    Body, Decoder, DeliveryReport, DeliveryStatus, ErrorCode, Event, EventKind, Frame, MessageId, Text,
    encode,
};

/// Inputs prepared per timed batch. Small batches keep the copies in cache,
/// as a read buffer is when the server decodes it right after the socket read;
/// criterion's `SmallInput` (thousands of inputs per batch) measured 1.3-3x slower.
const WARM_SINGLES: BatchSize = BatchSize::NumIterations(64);
/// The same for 64-frame buffers (about 19 KB each).
const WARM_BUFFERS: BatchSize = BatchSize::NumIterations(4);

fn send(seq: u64) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("order-2024-11-26-{seq:016x}")),
        device_id: "sales-line-1".into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from("x".repeat(200))),
    }
}

fn report() -> DeliveryReport {
    DeliveryReport {
        message_id: MessageId([0x5a; 16]),
        seq: 123_456,
        status: DeliveryStatus::Sent,
        code: ErrorCode(0),
        timestamp_ms: 1_732_600_000_000,
        upstream_id: "3EB0C767D26A1D2B4E5F".into(),
        detail: Text::default(),
    }
}

fn frames() -> Vec<(&'static str, Frame)> {
    vec![
        ("send_200b", send(123_456)),
        (
            "accepted",
            Frame::Accepted {
                seq: 123_456,
                message_id: MessageId([0x5a; 16]),
            },
        ),
        ("report", Frame::Report(report())),
        (
            "event_report",
            Frame::Event(Event {
                seq: 99,
                timestamp_ms: 1_732_600_000_000,
                kind: EventKind::Report {
                    device_id: "sales-line-1".into(),
                    report: report(),
                },
            }),
        ),
    ]
}

fn encoded(f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    encode(f, &mut b).expect("bench frames are valid");
    b
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        let mut buf = BytesMut::with_capacity(1024);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&frame), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        let bytes = encoded(&frame);
        let decoder = Decoder::default();
        // Sanity: the bench measures a successful round trip.
        assert_eq!(decoder.decode(&mut bytes.clone()).unwrap().as_ref(), Some(&frame));
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter_batched(
                || bytes.clone(),
                |mut b| decoder.decode(&mut b).unwrap(),
                WARM_SINGLES,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("codec_batch");
    g.throughput(Throughput::Elements(64));
    let sends: Vec<Frame> = (0..64).map(send).collect();
    let mut one = BytesMut::new();
    for f in &sends {
        encode(f, &mut one).unwrap();
    }
    let decoder = Decoder::default();
    g.bench_function("decode/64_sends_one_buffer", |b| {
        b.iter_batched(
            || one.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    black_box(&f);
                    n += 1;
                }
                assert_eq!(n, 64);
                n
            },
            WARM_BUFFERS,
        )
    });
    let mut buf = BytesMut::with_capacity(one.len());
    g.bench_function("encode/64_sends_one_buffer", |b| {
        b.iter(|| {
            buf.clear();
            for f in &sends {
                encode(black_box(f), &mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
