//! Round trips: every frame the encoder writes decodes to the same frame,
//! however the bytes are split into reads and however many frames share a
//! buffer, and stays within the limit the decoder enforces.

mod common;

use std::collections::BTreeSet;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use waping_protocol::codec::HEADER_LEN;
use waping_protocol::limits::{
    DEFAULT_MAX_FRAME_LEN, HARD_MAX_FRAME_LEN, MAX_MEDIA_REFERENCE_LEN, MAX_RECEIPT_IDS, MAX_TEXT_LEN,
};
use waping_protocol::{
    Body, DeliveryReport, DeliveryStatus, DeviceAction, DeviceState, EncodeError, ErrorCode, Event,
    EventKind, Frame, LinkCodeKind, LinkMethod, MessageId, ReceiptStatus, Text, decode_body, encode,
};
use waping_protocol::{Decoder, fuzzing};

/// Decodes everything in `buf`, asserting nothing is left over.
fn decode_all(decoder: Decoder, bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = decoder.decode(&mut buf).expect("valid bytes") {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

/// Feeds `bytes` in chunks ending at `cuts` (sorted, deduplicated offsets) and
/// decodes after every chunk, as a stream reader would.
fn decode_chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        while let Some(f) = decoder.decode(&mut buf).expect("valid bytes") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

fn cut_points(len: usize, raw: &[usize]) -> Vec<usize> {
    let set: BTreeSet<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    set.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips(f in frame()) {
        let bytes = enc(&f);
        // Header: body length, type byte, zero flags.
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, bytes.len() - HEADER_LEN);
        prop_assert_eq!(bytes[4], f.frame_type());
        prop_assert_eq!(bytes[5], 0);
        // Within the limits every field documents, the frame fits the default
        // limit, so every decoder (which never enforces less) accepts it.
        prop_assert!(len <= DEFAULT_MAX_FRAME_LEN as usize, "{} bytes", len);
        let back = decode_all(Decoder::default(), &bytes);
        prop_assert_eq!(&back, &vec![f.clone()]);
        // The same through `decode_body`, and the encoding is canonical.
        let body = bytes::Bytes::copy_from_slice(&bytes[HEADER_LEN..]);
        prop_assert_eq!(decode_body(f.frame_type(), body).unwrap(), f.clone());
        prop_assert_eq!(enc(&back[0]), bytes);
    }

    #[test]
    fn one_frame_split_anywhere(f in frame(), raw_cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let bytes = enc(&f);
        let cuts = cut_points(bytes.len(), &raw_cuts);
        prop_assert_eq!(decode_chunked(&bytes, &cuts), vec![f]);
    }

    #[test]
    fn batch_decodes_in_order(frames in proptest::collection::vec(frame(), 1..24)) {
        let bytes = enc_all(&frames);
        prop_assert_eq!(decode_all(Decoder::default(), &bytes), frames);
    }

    #[test]
    fn batch_split_anywhere(
        frames in proptest::collection::vec(frame(), 1..16),
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..32),
    ) {
        let bytes = enc_all(&frames);
        let cuts = cut_points(bytes.len(), &raw_cuts);
        prop_assert_eq!(decode_chunked(&bytes, &cuts), frames);
    }

    #[test]
    fn batch_one_byte_at_a_time(frames in proptest::collection::vec(frame(), 1..4)) {
        let bytes = enc_all(&frames);
        // Only short batches: this is quadratic in nothing, but slow for 64 KiB texts.
        prop_assume!(bytes.len() <= 4096);
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        prop_assert_eq!(decode_chunked(&bytes, &cuts), frames);
    }

    #[test]
    fn every_proper_prefix_is_incomplete(f in frame()) {
        let bytes = enc(&f);
        let decoder = Decoder::default();
        // Every prefix length would be slow for 64 KiB frames; test the header
        // prefixes and a spread of body prefixes.
        let step = (bytes.len() / 64).max(1);
        for n in (0..bytes.len()).filter(|n| *n <= HEADER_LEN + 1 || n % step == 0 || *n == bytes.len() - 1) {
            let mut buf = BytesMut::from(&bytes[..n]);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None), "prefix of {} bytes", n);
            prop_assert_eq!(&buf[..], &bytes[..n], "Ok(None) changed the buffer");
        }
    }

    #[test]
    fn fuzz_check_accepts_valid_batches(frames in proptest::collection::vec(frame(), 1..8)) {
        fuzzing::check_decode(&enc_all(&frames));
    }

    /// Frames outside the documented field limits (but inside the prefix
    /// widths): the encoder either refuses them or writes bytes that a decoder
    /// allowing the hard maximum turns back into the same frame.
    #[test]
    fn encoder_never_writes_what_the_decoder_refuses(f in unchecked_frame()) {
        let mut buf = BytesMut::new();
        match encode(&f, &mut buf) {
            Ok(()) => {
                prop_assert!(buf.len() - HEADER_LEN <= HARD_MAX_FRAME_LEN as usize);
                prop_assert_eq!(decode_all(Decoder::new(HARD_MAX_FRAME_LEN), &buf), vec![f]);
            }
            Err(_) => prop_assert!(buf.is_empty(), "a failed encode left bytes behind"),
        }
    }
}

/// Reports whose status and code may disagree, which the decoder refuses.
fn unchecked_frame() -> BoxedStrategy<Frame> {
    let report = (
        message_id(),
        any::<u64>(),
        prop_oneof![
            Just(DeliveryStatus::Sent),
            Just(DeliveryStatus::Failed),
            Just(DeliveryStatus::Deferred)
        ],
        prop_oneof![Just(ErrorCode(0)), code()],
    )
        .prop_map(|(message_id, seq, status, code)| DeliveryReport {
            message_id,
            seq,
            status,
            code,
            timestamp_ms: 0,
            upstream_id: Text::default(),
            detail: Text::default(),
        });
    prop_oneof![
        frame(),
        report.clone().prop_map(Frame::Report),
        report.prop_map(|report| Frame::Event(Event {
            seq: 1,
            timestamp_ms: 2,
            kind: EventKind::Report {
                device_id: "d".into(),
                report
            }
        })),
        (
            prop_oneof![Just(ErrorCode(0)), code()],
            proptest::option::of(device_state())
        )
            .prop_map(|(code, state)| Frame::DeviceControlResult {
                req: 1,
                code,
                state,
                detail: Text::default()
            }),
        (MAX_RECEIPT_IDS - 2..MAX_RECEIPT_IDS + 3).prop_map(|n| Frame::Event(Event {
            seq: 1,
            timestamp_ms: 2,
            kind: EventKind::Receipt {
                device_id: "d".into(),
                from: "f".into(),
                upstream_ids: vec![Text::from("i"); n],
                status: ReceiptStatus::Read,
            }
        })),
    ]
    .boxed()
}

#[test]
fn strategy_generates_every_variant() {
    let mut runner = TestRunner::deterministic();
    let strategy = frame();
    let mut seen = BTreeSet::new();
    for _ in 0..20_000 {
        let f = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(kind(&f));
        if seen.len() == ALL_KINDS.len() {
            break;
        }
    }
    let missing: Vec<_> = ALL_KINDS.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

#[test]
fn examples_cover_every_frame_type() {
    let types: BTreeSet<u8> = examples().iter().map(|(_, f)| f.frame_type()).collect();
    let defined: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|t| waping_protocol::frame::type_name(*t) != "UNKNOWN")
        .collect();
    assert_eq!(types, defined);
    for (name, f) in examples() {
        assert_eq!(decode_all(Decoder::default(), &enc(&f)), vec![f], "{name}");
    }
}

/// The largest frame of every kind, every field at its documented maximum,
/// fits the default advertised limit: a client that respects the field
/// limits never needs more than the default.
#[test]
fn largest_frames_fit_the_default_limit() {
    let s8 = || Text::from("x".repeat(STR8_MAX));
    let s16 = || Text::from("x".repeat(STR16_MAX));
    let text = || Text::from("x".repeat(MAX_TEXT_LEN));
    let media = || Body::Media {
        reference: Text::from("x".repeat(MAX_MEDIA_REFERENCE_LEN)),
        mime: Text::from("x".repeat(MAX_MIME_LEN)),
        caption: text(),
    };
    let report = || DeliveryReport {
        message_id: MessageId([0xff; 16]),
        seq: u64::MAX,
        status: DeliveryStatus::Failed,
        code: ErrorCode(u16::MAX),
        timestamp_ms: u64::MAX,
        upstream_id: s8(),
        detail: s16(),
    };
    let event = |kind| {
        Frame::Event(Event {
            seq: u64::MAX,
            timestamp_ms: u64::MAX,
            kind,
        })
    };
    let frames = vec![
        Frame::Hello {
            min_version: 1,
            max_version: 1,
            api_key: s8(),
            client_name: s8(),
        },
        Frame::Error {
            code: ErrorCode(1),
            retry_after_ms: 1,
            message: s16(),
        },
        Frame::Goodbye {
            code: ErrorCode(1),
            message: s16(),
        },
        Frame::Send {
            seq: 1,
            idempotency_key: s8(),
            device_id: s8(),
            recipient: s8(),
            body: Body::Text(text()),
        },
        Frame::Send {
            seq: 1,
            idempotency_key: s8(),
            device_id: s8(),
            recipient: s8(),
            body: media(),
        },
        Frame::Rejected {
            seq: 1,
            code: ErrorCode(1),
            retry_after_ms: 1,
            reason: s16(),
        },
        Frame::Report(report()),
        event(EventKind::Report {
            device_id: s8(),
            report: report(),
        }),
        event(EventKind::Inbound {
            device_id: s8(),
            from: s8(),
            upstream_id: s8(),
            body: media(),
        }),
        event(EventKind::DeviceState {
            device_id: s8(),
            state: DeviceState::Banned,
            detail: s16(),
        }),
        event(EventKind::LinkCode {
            device_id: s8(),
            kind: LinkCodeKind::Qr,
            code: s16(),
            valid_for_ms: u32::MAX,
        }),
        event(EventKind::Receipt {
            device_id: s8(),
            from: s8(),
            upstream_ids: vec![s8(); MAX_RECEIPT_IDS],
            status: ReceiptStatus::Played,
        }),
        Frame::DeviceControl {
            req: u64::MAX,
            device_id: s8(),
            action: DeviceAction::Link(LinkMethod::PairingCode { phone: s8() }),
        },
        Frame::DeviceControlResult {
            req: u64::MAX,
            code: ErrorCode(u16::MAX),
            state: Some(DeviceState::Disabled),
            detail: s16(),
        },
    ];
    let mut largest = 0;
    for f in frames {
        let bytes = enc(&f);
        let body = bytes.len() - HEADER_LEN;
        assert!(
            body <= DEFAULT_MAX_FRAME_LEN as usize,
            "{}: {body} bytes",
            f.name()
        );
        largest = largest.max(body);
        assert_eq!(decode_all(Decoder::default(), &bytes), vec![f]);
    }
    // The inbound media event is the largest: 68 632 bytes, about half the default
    // (PROTOCOL.md quotes this number).
    assert_eq!(largest, 68_632);
}

#[test]
fn decoder_limit_is_inclusive_and_clamped() {
    let f = Frame::Ping { nonce: 7 };
    let bytes = enc(&f);
    assert_eq!(decode_all(Decoder::new(8), &bytes), vec![f.clone()]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Decoder::new(7).decode(&mut buf),
        Err(waping_protocol::DecodeError::FrameTooLarge { len: 8, max: 7 })
    );
    assert_eq!(Decoder::new(u32::MAX).max_frame_len(), HARD_MAX_FRAME_LEN);
    assert_eq!(Decoder::default().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
}

#[test]
fn encoder_refuses_fields_wider_than_their_prefix() {
    let mut buf = BytesMut::from(&b"keep"[..]);
    let f = Frame::Hello {
        min_version: 1,
        max_version: 1,
        api_key: Text::from("k".repeat(256)),
        client_name: Text::default(),
    };
    assert_eq!(
        encode(&f, &mut buf),
        Err(EncodeError::FieldTooLong {
            field: "api_key",
            len: 256,
            max: 255
        })
    );
    assert_eq!(&buf[..], b"keep", "a failed encode must not leave bytes behind");

    let f = Frame::Error {
        code: ErrorCode::INTERNAL,
        retry_after_ms: 0,
        message: Text::from("m".repeat(65_536)),
    };
    assert!(matches!(
        encode(&f, &mut buf),
        Err(EncodeError::FieldTooLong { field: "message", .. })
    ));

    let huge = Text::from("x".repeat(HARD_MAX_FRAME_LEN as usize));
    let f = Frame::Send {
        seq: 1,
        idempotency_key: "k".into(),
        device_id: "d".into(),
        recipient: "r".into(),
        body: Body::Text(huge),
    };
    assert!(matches!(
        encode(&f, &mut buf),
        Err(EncodeError::FrameTooLarge { .. })
    ));
    assert_eq!(&buf[..], b"keep");
}

/// The encoder refuses what the decoder would: a successful result without a state, a
/// receipt with more ids than the bound.
#[test]
fn encoder_refuses_stateless_success_and_oversized_receipts() {
    let mut buf = BytesMut::new();
    let f = Frame::DeviceControlResult {
        req: 1,
        code: ErrorCode(0),
        state: None,
        detail: Text::default(),
    };
    assert_eq!(
        encode(&f, &mut buf),
        Err(EncodeError::InvalidValue {
            field: "state",
            value: 0
        })
    );
    assert!(buf.is_empty());
    let f = Frame::Event(Event {
        seq: 1,
        timestamp_ms: 1,
        kind: EventKind::Receipt {
            device_id: "d".into(),
            from: "f".into(),
            upstream_ids: vec![Text::from("x"); MAX_RECEIPT_IDS + 1],
            status: ReceiptStatus::Delivered,
        },
    });
    assert_eq!(
        encode(&f, &mut buf),
        Err(EncodeError::InvalidValue {
            field: "upstream_id_count",
            value: MAX_RECEIPT_IDS as u64 + 1
        })
    );
    assert!(buf.is_empty());
}

/// Found while writing these tests: the encoder used to write REPORTs whose
/// status and code disagree, which every decoder refuses as MALFORMED_FRAME.
#[test]
fn encoder_refuses_inconsistent_reports() {
    let r = |status, code| DeliveryReport {
        message_id: MessageId::default(),
        seq: 1,
        status,
        code: ErrorCode(code),
        timestamp_ms: 0,
        upstream_id: Text::default(),
        detail: Text::default(),
    };
    for (status, code) in [(DeliveryStatus::Sent, 5000), (DeliveryStatus::Failed, 0)] {
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Frame::Report(r(status, code)), &mut buf),
            Err(EncodeError::InvalidValue {
                field: "code",
                value: code.into()
            })
        );
        assert!(buf.is_empty());
        let ev = Frame::Event(Event {
            seq: 1,
            timestamp_ms: 1,
            kind: EventKind::Report {
                device_id: "d".into(),
                report: r(status, code),
            },
        });
        assert!(matches!(
            encode(&ev, &mut buf),
            Err(EncodeError::InvalidValue { .. })
        ));
        assert!(buf.is_empty());
    }
}
