//! One test per class of malformed input the decoder reports, each asserting
//! the exact [`DecodeError`] and its stable numeric code, plus properties over
//! arbitrary bytes.
//!
//! Behaviour after an error (also in `Decoder::decode` and PROTOCOL.md): the
//! decoder holds no state besides its limit, and an `Err` leaves the buffer's
//! contents exactly as they were, so decoding again returns the same error.
//! A bad frame is never skipped and the frames after it are never decoded;
//! the connection must be closed (every decode error is fatal).

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use waping_protocol::codec::HEADER_LEN;
use waping_protocol::frame::{ty, type_name};
use waping_protocol::limits::MAX_RECEIPT_IDS;
use waping_protocol::limits::{DEFAULT_MAX_FRAME_LEN, HARD_MAX_FRAME_LEN};
use waping_protocol::{
    Body, DecodeError, Decoder, DeliveryReport, DeliveryStatus, DeviceAction, DeviceState, ErrorCode, Event,
    EventKind, Fault, Frame, LinkCodeKind, LinkMethod, MessageId, ReceiptStatus, Text, decode_body, fuzzing,
    validate,
};

/// Decodes `bytes` at once with the default decoder and returns the error,
/// checking the promises every error keeps: the buffer is untouched, the
/// error is sticky, and its code is the expected fatal client-fault code.
fn err(bytes: &[u8], code: u16) -> DecodeError {
    err_with(Decoder::default(), bytes, code)
}

fn err_with(decoder: Decoder, bytes: &[u8], code: u16) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let e = match decoder.decode(&mut buf) {
        Err(e) => e,
        other => panic!("expected an error from {}, got {other:?}", hex::encode(bytes)),
    };
    assert_eq!(&buf[..], bytes, "{e}: the buffer changed");
    assert_eq!(decoder.decode(&mut buf), Err(e.clone()), "{e}: not sticky");
    assert_eq!(e.code(), ErrorCode(code), "{e}");
    let info = e.code().info().expect("catalogued");
    assert!(info.fatal, "{e}: decode errors close the connection");
    assert_eq!(info.fault, Fault::Client);
    assert!(!info.retryable);
    e
}

/// Replaces the body of an encoded frame, fixing the header's length.
fn with_body(frame: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = header(body.len() as u32, frame[4], frame[5]).to_vec();
    out.extend_from_slice(body);
    out
}

// ------------------------------------------------------------- header classes

#[test]
fn frame_too_large_1001() {
    let max = DEFAULT_MAX_FRAME_LEN;
    // Reported from the 6 header bytes alone, before any body arrives.
    for len in [max + 1, HARD_MAX_FRAME_LEN, u32::MAX] {
        let e = err(&header(len, ty::SEND, 0), 1001);
        assert_eq!(e, DecodeError::FrameTooLarge { len, max });
    }
    // A smaller negotiated limit is enforced the same way; the limit itself is allowed.
    let small = Decoder::new(1024);
    let e = err_with(small, &header(1025, ty::PING, 0), 1001);
    assert_eq!(e, DecodeError::FrameTooLarge { len: 1025, max: 1024 });
    let mut buf = BytesMut::from(&header(1024, ty::PING, 0)[..]);
    assert_eq!(small.decode(&mut buf), Ok(None), "1024 is within a 1024 limit");
    // No decoder allows more than the hard maximum.
    let hard = Decoder::new(u32::MAX);
    let e = err_with(hard, &header(HARD_MAX_FRAME_LEN + 1, ty::PING, 0), 1001);
    assert_eq!(
        e,
        DecodeError::FrameTooLarge {
            len: HARD_MAX_FRAME_LEN + 1,
            max: HARD_MAX_FRAME_LEN
        }
    );
}

#[test]
fn subscribe_from_and_log_event_flags_1000() {
    // No cursor is written as 0: a cursor behind a clear flag is refused.
    let b = Raw::new()
        .u8(0)
        .u64(5)
        .str16(b"")
        .str16(b"")
        .frame(ty::SUBSCRIBE_FROM);
    assert_eq!(
        err(&b, 1000),
        DecodeError::InvalidValue {
            frame: "SUBSCRIBE_FROM",
            field: "cursor",
            value: 5
        }
    );
    let b = Raw::new()
        .u8(3)
        .u64(0)
        .str16(b"")
        .str16(b"")
        .frame(ty::SUBSCRIBE_FROM);
    assert_eq!(
        err(&b, 1000),
        DecodeError::InvalidValue {
            frame: "SUBSCRIBE_FROM",
            field: "has_cursor",
            value: 3
        }
    );
    let b = Raw::new().u64(1).u64(0).u8(7).str32(b"x").frame(ty::LOG_EVENT);
    assert_eq!(
        err(&b, 1000),
        DecodeError::InvalidValue {
            frame: "LOG_EVENT",
            field: "readable",
            value: 7
        }
    );
}

#[test]
fn unknown_frame_type_1002() {
    let undefined = undefined_types();
    assert_eq!(undefined.len(), 256 - 18);
    for t in undefined {
        // Reported from the header alone, whatever the length says.
        let e = err(&header(8, t, 0), 1002);
        assert_eq!(e, DecodeError::UnknownType(t));
        // `decode_body` (for callers that read headers themselves) agrees.
        assert_eq!(
            decode_body(t, bytes::Bytes::new()),
            Err(DecodeError::UnknownType(t))
        );
    }
}

#[test]
fn unknown_flags_1006() {
    for (_, f) in examples() {
        let good = enc(&f);
        for flags in 1..=u8::MAX {
            let mut bad = good.clone();
            bad[5] = flags;
            let e = err(&bad, 1006);
            assert_eq!(
                e,
                DecodeError::UnknownFlags {
                    frame: f.name(),
                    flags
                }
            );
            // Also from the header alone.
            assert_eq!(err(&bad[..HEADER_LEN], 1006), e);
        }
    }
}

#[test]
fn header_checks_run_in_order_length_type_flags() {
    let max = DEFAULT_MAX_FRAME_LEN;
    assert_eq!(
        err(&header(max + 1, 0xee, 0xff), 1001),
        DecodeError::FrameTooLarge { len: max + 1, max }
    );
    assert_eq!(err(&header(8, 0xee, 0xff), 1002), DecodeError::UnknownType(0xee));
}

// --------------------------------------------------------------- body classes

#[test]
fn empty_body_is_truncated_for_every_type_1000() {
    // Every v1 frame has at least one field, so a zero-length body is never valid.
    let first_field = [
        (ty::HELLO, "min_version"),
        (ty::HELLO_OK, "version"),
        (ty::ERROR, "code"),
        (ty::PING, "nonce"),
        (ty::PONG, "nonce"),
        (ty::GOODBYE, "code"),
        (ty::SEND, "seq"),
        (ty::ACCEPTED, "seq"),
        (ty::REJECTED, "seq"),
        (ty::REPORT, "message_id"),
        (ty::SUBSCRIBE, "mask"),
        (ty::SUBSCRIBED, "mask"),
        (ty::EVENT, "seq"),
        (ty::DEVICE_CONTROL, "req"),
        (ty::DEVICE_CONTROL_RESULT, "req"),
        (ty::SUBSCRIBE_FROM, "has_cursor"),
        (ty::SUBSCRIBED_FROM, "code"),
        (ty::LOG_EVENT, "cursor"),
    ];
    for (t, field) in first_field {
        let e = err(&header(0, t, 0), 1000);
        assert_eq!(
            e,
            DecodeError::Truncated {
                frame: type_name(t),
                field
            }
        );
    }
}

#[test]
fn truncated_integer_1000() {
    let e = err(&Raw::new().u32(0).frame(ty::PING), 1000);
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "PING",
            field: "nonce"
        }
    );
    // Body ends inside the 16-byte message id.
    let e = err(&Raw::new().u64(1).bytes(&[0; 15]).frame(ty::ACCEPTED), 1000);
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "ACCEPTED",
            field: "message_id"
        }
    );
}

#[test]
fn text_longer_than_the_body_is_truncated_1000() {
    // str8 prefix says 20, 4 bytes follow.
    let e = err(
        &Raw::new().u16(1).u16(1).u8(20).bytes(b"wpk_").frame(ty::HELLO),
        1000,
    );
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "HELLO",
            field: "api_key"
        }
    );
    // str16 prefix at its maximum.
    let e = err(&Raw::new().u16(1000).u32(0).u16(u16::MAX).frame(ty::ERROR), 1000);
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "ERROR",
            field: "message"
        }
    );
    // str32 prefix of 4 GiB: refused by length, nothing is allocated.
    let e = err(
        &send_head().u8(1).u32(u32::MAX).bytes(b"hi").frame(ty::SEND),
        1000,
    );
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "SEND",
            field: "text"
        }
    );
    // The length prefix itself cut short.
    let e = err(&send_head().u8(1).u16(0).frame(ty::SEND), 1000);
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "SEND",
            field: "text"
        }
    );
    // Body ends before the body kind.
    let e = err(&send_head().frame(ty::SEND), 1000);
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "SEND",
            field: "body_kind"
        }
    );
}

#[test]
fn trailing_bytes_1000() {
    let e = err(&Raw::new().u64(1).u8(0).frame(ty::PONG), 1000);
    assert_eq!(
        e,
        DecodeError::TrailingBytes {
            frame: "PONG",
            extra: 1
        }
    );
    // Trailing bytes inside the declared length, not a following frame: the
    // length is authoritative and the frame must fill it exactly.
    for (_, f) in examples() {
        let good = enc(&f);
        let mut body = good[HEADER_LEN..].to_vec();
        body.extend_from_slice(&[0; 3]);
        let e = err(&with_body(&good, &body), 1000);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                frame: f.name(),
                extra: 3
            }
        );
    }
}

/// Distinct two-letter markers as every text field of every frame shape, so a
/// field's bytes can be found in the encoding and corrupted.
fn marked_frames() -> Vec<(Frame, Vec<(&'static str, &'static str)>)> {
    let t = |s: &'static str| Text::from(s);
    let report = |upstream_id, detail| DeliveryReport {
        message_id: MessageId::default(),
        seq: 0,
        status: DeliveryStatus::Sent,
        code: ErrorCode(0),
        timestamp_ms: 0,
        upstream_id: t(upstream_id),
        detail: t(detail),
    };
    let media = |r, m, c| Body::Media {
        reference: t(r),
        mime: t(m),
        caption: t(c),
    };
    let event = |kind| {
        Frame::Event(Event {
            seq: 0,
            timestamp_ms: 0,
            kind,
        })
    };
    vec![
        (
            Frame::Hello {
                min_version: 1,
                max_version: 1,
                api_key: t("Qa"),
                client_name: t("Qb"),
            },
            vec![("Qa", "api_key"), ("Qb", "client_name")],
        ),
        (
            Frame::HelloOk {
                version: 1,
                max_frame_len: 0,
                max_in_flight: 0,
                max_streams: 0,
                idle_timeout_ms: 0,
                connection_id: 0,
                server: t("Qc"),
            },
            vec![("Qc", "server")],
        ),
        (
            Frame::Error {
                code: ErrorCode(0),
                retry_after_ms: 0,
                message: t("Qd"),
            },
            vec![("Qd", "message")],
        ),
        (
            Frame::Goodbye {
                code: ErrorCode(0),
                message: t("Qe"),
            },
            vec![("Qe", "message")],
        ),
        (
            Frame::Send {
                seq: 0,
                idempotency_key: t("Qf"),
                device_id: t("Qg"),
                recipient: t("Qh"),
                body: Body::Text(t("Qi")),
            },
            vec![
                ("Qf", "idempotency_key"),
                ("Qg", "device_id"),
                ("Qh", "recipient"),
                ("Qi", "text"),
            ],
        ),
        (
            Frame::Send {
                seq: 0,
                idempotency_key: t(""),
                device_id: t(""),
                recipient: t(""),
                body: media("Qj", "Qk", "Ql"),
            },
            vec![("Qj", "media_reference"), ("Qk", "media_mime"), ("Ql", "caption")],
        ),
        (
            Frame::Rejected {
                seq: 0,
                code: ErrorCode(0),
                retry_after_ms: 0,
                reason: t("Qm"),
            },
            vec![("Qm", "reason")],
        ),
        (
            Frame::Report(report("Qn", "Qo")),
            vec![("Qn", "upstream_id"), ("Qo", "detail")],
        ),
        (
            event(EventKind::Report {
                device_id: t("Qp"),
                report: report("Qq", "Qr"),
            }),
            vec![("Qp", "device_id"), ("Qq", "upstream_id"), ("Qr", "detail")],
        ),
        (
            event(EventKind::Inbound {
                device_id: t("Qs"),
                from: t("Qt"),
                upstream_id: t("Qu"),
                body: Body::Text(t("Qv")),
            }),
            vec![
                ("Qs", "device_id"),
                ("Qt", "from"),
                ("Qu", "upstream_id"),
                ("Qv", "text"),
            ],
        ),
        (
            event(EventKind::Inbound {
                device_id: t(""),
                from: t(""),
                upstream_id: t(""),
                body: media("Qw", "Qx", "Qy"),
            }),
            vec![("Qw", "media_reference"), ("Qx", "media_mime"), ("Qy", "caption")],
        ),
        (
            event(EventKind::DeviceState {
                device_id: t("Qz"),
                state: DeviceState::Connected,
                detail: t("QA"),
            }),
            vec![("Qz", "device_id"), ("QA", "detail")],
        ),
        (
            Frame::DeviceControl {
                req: 0,
                device_id: t("QB"),
                action: DeviceAction::Link(LinkMethod::PairingCode { phone: t("QC") }),
            },
            vec![("QB", "device_id"), ("QC", "phone")],
        ),
        (
            Frame::DeviceControlResult {
                req: 0,
                code: ErrorCode(0),
                state: Some(DeviceState::Connected),
                detail: t("QD"),
            },
            vec![("QD", "detail")],
        ),
        (
            event(EventKind::LinkCode {
                device_id: t("QE"),
                kind: LinkCodeKind::Qr,
                code: t("QF"),
                valid_for_ms: 0,
            }),
            vec![("QE", "device_id"), ("QF", "code")],
        ),
        (
            event(EventKind::Receipt {
                device_id: t("QG"),
                from: t("QH"),
                upstream_ids: vec![t("QI"), t("QJ")],
                status: ReceiptStatus::Delivered,
            }),
            vec![
                ("QG", "device_id"),
                ("QH", "from"),
                ("QI", "upstream_id"),
                ("QJ", "upstream_id"),
            ],
        ),
    ]
}

#[test]
fn invalid_utf8_in_every_text_field_1005() {
    let mut fields = 0;
    for (frame, marks) in marked_frames() {
        let good = enc(&frame);
        for (mark, field) in marks {
            let at = good
                .windows(2)
                .position(|w| w == mark.as_bytes())
                .expect("marker present");
            assert_eq!(
                good.windows(2).filter(|w| *w == mark.as_bytes()).count(),
                1,
                "marker {mark} is ambiguous"
            );
            let mut bad = good.clone();
            // 0xC3 starts a two-byte sequence; 0x28 cannot continue it.
            bad[at..at + 2].copy_from_slice(&[0xc3, 0x28]);
            let e = err(&bad, 1005);
            assert_eq!(
                e,
                DecodeError::InvalidUtf8 {
                    frame: frame.name(),
                    field
                },
                "{mark}"
            );
            fields += 1;
        }
    }
    assert_eq!(fields, 36, "every text field of every frame shape");
}

#[test]
fn every_kind_of_invalid_utf8_1005() {
    let cases: [&[u8]; 8] = [
        b"\x80",             // lone continuation byte
        b"\xc0\xaf",         // overlong encoding of '/'
        b"\xe0\x80\xaf",     // overlong three-byte form
        b"\xed\xa0\x80",     // UTF-16 surrogate U+D800
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"ok\xe2\x82",       // sequence cut by the field's end
        b"\xff",             // never valid
        b"a\x00\xfe",        // NUL is valid UTF-8, 0xFE is not
    ];
    for bytes in cases {
        let frame = Raw::new().u16(1).u16(1).str8(bytes).str8(b"").frame(ty::HELLO);
        let e = err(&frame, 1005);
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                frame: "HELLO",
                field: "api_key"
            },
            "{bytes:?}"
        );
    }
    // The valid edge cases decode: NUL, the largest scalar value, a BOM.
    for ok in ["a\0b", "\u{10FFFF}", "\u{FEFF}x", "Olá 👋"] {
        let frame = Raw::new()
            .u16(1)
            .u16(1)
            .str8(ok.as_bytes())
            .str8(b"")
            .frame(ty::HELLO);
        let mut buf = BytesMut::from(&frame[..]);
        let Ok(Some(Frame::Hello { api_key, .. })) = Decoder::default().decode(&mut buf) else {
            panic!("{ok:?} is valid UTF-8");
        };
        assert_eq!(api_key, ok);
    }
}

#[test]
fn unknown_body_kind_4003() {
    for kind in [0u8, 3, 0x7f, 0xff] {
        let e = err(&send_head().u8(kind).u32(2).bytes(b"hi").frame(ty::SEND), 4003);
        assert_eq!(e, DecodeError::UnknownBodyKind(kind));
        let inbound = event_head(2)
            .str8(b"d")
            .str8(b"f")
            .str8(b"u")
            .u8(kind)
            .frame(ty::EVENT);
        assert_eq!(err(&inbound, 4003), DecodeError::UnknownBodyKind(kind));
    }
}

#[test]
fn report_status_out_of_range_1000() {
    for status in [0u8, 4, 0xff] {
        let e = err(&report_body(status, 0).frame(ty::REPORT), 1000);
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "REPORT",
                field: "status",
                value: status.into()
            }
        );
        // The same report inside an EVENT names the EVENT frame.
        let ev = event_head(1)
            .str8(b"dev-1")
            .bytes(&report_body(status, 0).0)
            .frame(ty::EVENT);
        assert_eq!(
            err(&ev, 1000),
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "status",
                value: status.into()
            }
        );
    }
}

#[test]
fn report_status_and_code_disagree_1000() {
    // SENT (1) must carry code 0; FAILED (2) must carry a non-zero code.
    for (status, code) in [(1u8, 5000u16), (1, 1), (2, 0)] {
        let e = err(&report_body(status, code).frame(ty::REPORT), 1000);
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "REPORT",
                field: "code",
                value: code.into()
            }
        );
    }
}

#[test]
fn event_kind_out_of_range_1000() {
    for kind in [0u8, 7, 0xff] {
        let e = err(&event_head(kind).u64(0).frame(ty::EVENT), 1000);
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "event_kind",
                value: kind.into()
            }
        );
    }
}

#[test]
fn device_state_out_of_range_1000() {
    for state in [0u8, 8, 0xff] {
        let bytes = event_head(3).str8(b"dev-1").u8(state).str16(b"").frame(ty::EVENT);
        let e = err(&bytes, 1000);
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "state",
                value: state.into()
            }
        );
    }
    for state in ALL_DEVICE_STATES {
        assert_eq!(DeviceState::from_u8(state as u8), Some(state));
    }
}

#[test]
fn device_control_action_and_method_out_of_range_1000() {
    for action in [0u8, 6, 0xff] {
        let e = err(
            &Raw::new()
                .u64(1)
                .str8(b"dev-1")
                .u8(action)
                .frame(ty::DEVICE_CONTROL),
            1000,
        );
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "DEVICE_CONTROL",
                field: "action",
                value: action.into()
            }
        );
    }
    for method in [0u8, 3, 0xff] {
        let e = err(
            &Raw::new()
                .u64(1)
                .str8(b"dev-1")
                .u8(1)
                .u8(method)
                .frame(ty::DEVICE_CONTROL),
            1000,
        );
        assert_eq!(
            e,
            DecodeError::InvalidValue {
                frame: "DEVICE_CONTROL",
                field: "link_method",
                value: method.into()
            }
        );
    }
    // Actions without arguments end right after the action byte.
    let e = err(
        &Raw::new()
            .u64(1)
            .str8(b"dev-1")
            .u8(2)
            .u8(0)
            .frame(ty::DEVICE_CONTROL),
        1000,
    );
    assert_eq!(
        e,
        DecodeError::TrailingBytes {
            frame: "DEVICE_CONTROL",
            extra: 1
        }
    );
    // A pairing-code link without its phone.
    let e = err(
        &Raw::new()
            .u64(1)
            .str8(b"dev-1")
            .u8(1)
            .u8(2)
            .frame(ty::DEVICE_CONTROL),
        1000,
    );
    assert_eq!(
        e,
        DecodeError::Truncated {
            frame: "DEVICE_CONTROL",
            field: "phone"
        }
    );
}

#[test]
fn device_control_result_state_1000() {
    // Success must say the state; 0 ("none") is only allowed with a failure code.
    let result = |code: u16, state: u8| {
        Raw::new()
            .u64(1)
            .u16(code)
            .u8(state)
            .str16(b"")
            .frame(ty::DEVICE_CONTROL_RESULT)
    };
    assert_eq!(
        err(&result(0, 0), 1000),
        DecodeError::InvalidValue {
            frame: "DEVICE_CONTROL_RESULT",
            field: "state",
            value: 0
        }
    );
    for state in [8u8, 0xff] {
        for code in [0u16, 4000] {
            assert_eq!(
                err(&result(code, state), 1000),
                DecodeError::InvalidValue {
                    frame: "DEVICE_CONTROL_RESULT",
                    field: "state",
                    value: state.into()
                }
            );
        }
    }
    let mut buf = BytesMut::from(&result(4000, 0)[..]);
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Ok(Some(Frame::DeviceControlResult {
            req: 1,
            code: ErrorCode::UNKNOWN_DEVICE,
            state: None,
            detail: Text::default()
        }))
    );
}

#[test]
fn link_code_kind_and_receipt_status_out_of_range_1000() {
    for kind in [0u8, 3, 0xff] {
        let bytes = event_head(5)
            .str8(b"d")
            .u8(kind)
            .str16(b"c")
            .u32(1)
            .frame(ty::EVENT);
        assert_eq!(
            err(&bytes, 1000),
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "code_kind",
                value: kind.into()
            }
        );
    }
    for status in [0u8, 4, 0xff] {
        let bytes = event_head(6)
            .str8(b"d")
            .str8(b"f")
            .u8(status)
            .u16(0)
            .frame(ty::EVENT);
        assert_eq!(
            err(&bytes, 1000),
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "receipt_status",
                value: status.into()
            }
        );
    }
}

#[test]
fn receipt_id_count_above_the_bound_1000() {
    let receipt = |n: u16| event_head(6).str8(b"d").str8(b"f").u8(1).u16(n);
    // Refused from the count alone, before any id is read: a peer cannot make us allocate.
    for n in [MAX_RECEIPT_IDS as u16 + 1, u16::MAX] {
        assert_eq!(
            err(&receipt(n).frame(ty::EVENT), 1000),
            DecodeError::InvalidValue {
                frame: "EVENT",
                field: "upstream_id_count",
                value: n.into()
            }
        );
    }
    // The bound itself is allowed; a count larger than the ids present is truncated.
    let mut full = receipt(MAX_RECEIPT_IDS as u16);
    for _ in 0..MAX_RECEIPT_IDS {
        full = full.str8(b"id");
    }
    let mut buf = BytesMut::from(&full.frame(ty::EVENT)[..]);
    assert!(matches!(
        Decoder::default().decode(&mut buf),
        Ok(Some(Frame::Event(_)))
    ));
    assert_eq!(
        err(&receipt(2).str8(b"id").frame(ty::EVENT), 1000),
        DecodeError::Truncated {
            frame: "EVENT",
            field: "upstream_id"
        }
    );
}

/// The decoder checks layout, not meaning: an empty text field is well-formed
/// and reaches `validate`, which rejects that one message (INVALID_FIELD is
/// not fatal) instead of closing the connection.
#[test]
fn empty_fields_are_layout_valid_and_rejected_per_message() {
    let bytes = send_head_with(b"", b"dev-1", b"4915112345678")
        .u8(1)
        .str32(b"hi")
        .frame(ty::SEND);
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Frame::Send {
        idempotency_key,
        device_id,
        recipient,
        body,
        ..
    })) = Decoder::default().decode(&mut buf)
    else {
        panic!("empty key is well-formed");
    };
    let e = validate::send(&idempotency_key, &device_id, &recipient, &body).unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID_FIELD);
    assert_eq!(e.code.0, 1008);
    assert!(!e.code.fatal());
    let empty_text = Body::Text(Text::default());
    let e = validate::send(&"k".into(), &"dev-1".into(), &recipient, &empty_text).unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID_FIELD);
}

fn send_head_with(key: &[u8], device: &[u8], to: &[u8]) -> Raw {
    Raw::new().u64(1).str8(key).str8(device).str8(to)
}

/// A stream that ends inside a frame is not a decoder error (more bytes may
/// come); the reader that sees the end of the stream reports MALFORMED_FRAME.
#[test]
fn incomplete_frame_is_pending_not_an_error() {
    let good = enc(&examples()[0].1);
    for n in [0, 1, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
        let mut buf = BytesMut::from(&good[..n]);
        assert_eq!(Decoder::default().decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], &good[..n]);
    }
}

#[test]
fn error_is_sticky_and_never_skips_the_bad_frame() {
    // A valid PING, a PONG with trailing bytes, another valid PING.
    let mut bytes = enc(&Frame::Ping { nonce: 1 });
    let bad = Raw::new().u64(2).u8(9).frame(ty::PONG);
    bytes.extend_from_slice(&bad);
    bytes.extend_from_slice(&enc(&Frame::Ping { nonce: 3 }));
    let decoder = Decoder::default();
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Frame::Ping { nonce: 1 })));
    let rest = buf.clone();
    for _ in 0..3 {
        assert_eq!(
            decoder.decode(&mut buf),
            Err(DecodeError::TrailingBytes {
                frame: "PONG",
                extra: 1
            })
        );
        assert_eq!(buf, rest, "the bad frame and what follows stay in the buffer");
    }
}

/// Every `DecodeError` variant, its code and a test above that produces it.
/// The match has no wildcard: a new variant fails to compile until it is
/// classified here (and tested, and listed in PROTOCOL.md).
#[test]
fn every_variant_is_covered() {
    fn class(e: &DecodeError) -> (&'static str, u16) {
        match e {
            DecodeError::FrameTooLarge { .. } => ("frame_too_large_1001", 1001),
            DecodeError::UnknownType(_) => ("unknown_frame_type_1002", 1002),
            DecodeError::UnknownFlags { .. } => ("unknown_flags_1006", 1006),
            DecodeError::Truncated { .. } => ("truncated_*", 1000),
            DecodeError::TrailingBytes { .. } => ("trailing_bytes_1000", 1000),
            DecodeError::InvalidUtf8 { .. } => ("invalid_utf8_*", 1005),
            DecodeError::UnknownBodyKind(_) => ("unknown_body_kind_4003", 4003),
            DecodeError::InvalidValue { .. } => ("*_out_of_range_1000", 1000),
        }
    }
    // One seed per class in the fuzz corpus, with the code the class maps to.
    let mut classes = std::collections::BTreeSet::new();
    for (name, _, end) in seeds() {
        if let Some(Some(e)) = end {
            let (class_name, code) = class(&e);
            assert_eq!(e.code().0, code, "{name}");
            classes.insert(class_name);
        }
    }
    assert_eq!(classes.len(), 8, "a seed for every variant: {classes:?}");
}

// ----------------------------------------------------------------- properties

fn defined_type() -> impl Strategy<Value = u8> {
    proptest::sample::select(
        (0..=u8::MAX)
            .filter(|t| type_name(*t) != "UNKNOWN")
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic; every promise of `fuzzing::check_decode`
    /// holds (sticky errors, untouched buffers, chunking does not matter,
    /// decoded frames round-trip).
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::check_decode(&bytes);
    }

    /// Arbitrary bodies behind a valid header reach every body check.
    #[test]
    fn arbitrary_bodies(t in defined_type(), body in proptest::collection::vec(any::<u8>(), 0..96)) {
        let mut bytes = header(body.len() as u32, t, 0).to_vec();
        bytes.extend_from_slice(&body);
        fuzzing::check_decode(&bytes);
        // Directly through `decode_body` too: either a frame of that type or an error.
        if let Ok(f) = decode_body(t, bytes::Bytes::from(body)) {
            prop_assert_eq!(f.frame_type(), t);
        }
    }

    /// Valid frames with one byte changed.
    #[test]
    fn mutated_frames(f in small_frame(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = enc(&f);
        let at = at % bytes.len();
        bytes[at] = byte;
        fuzzing::check_decode(&bytes);
    }

    /// A body cut anywhere, with the header's length fixed up, is always
    /// `Truncated`: every field before the cut is valid, so nothing else can fail.
    #[test]
    fn shortened_body_is_truncated(f in small_frame(), cut in any::<usize>()) {
        let good = enc(&f);
        let body_len = good.len() - HEADER_LEN;
        prop_assume!(body_len > 0);
        let keep = cut % body_len;
        let bad = with_body(&good, &good[HEADER_LEN..HEADER_LEN + keep]);
        let e = err(&bad, 1000);
        prop_assert!(matches!(e, DecodeError::Truncated { frame, .. } if frame == f.name()), "{e}");
    }

    /// Extra bytes at the end of any body are `TrailingBytes` with their count.
    #[test]
    fn lengthened_body_has_trailing_bytes(f in small_frame(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
        let good = enc(&f);
        let mut body = good[HEADER_LEN..].to_vec();
        body.extend_from_slice(&extra);
        let e = err(&with_body(&good, &body), 1000);
        prop_assert_eq!(e, DecodeError::TrailingBytes { frame: f.name(), extra: extra.len() });
    }
}

/// Frames of at most 4 KiB, so per-byte properties stay fast.
fn small_frame() -> impl Strategy<Value = Frame> {
    frame().prop_filter("small", |f| enc(f).len() <= 4096)
}
