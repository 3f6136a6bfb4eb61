//! Shared by the integration tests: strategies for every frame within the
//! protocol's limits, the example frames of PROTOCOL.md, a raw byte builder
//! for malformed input, and the hand-made seeds of the fuzz corpus.
#![allow(dead_code)]

use bytes::BytesMut;
use proptest::prelude::*;
use waping_protocol::codec::HEADER_LEN;
use waping_protocol::frame::ty;
use waping_protocol::limits::{MAX_MEDIA_REFERENCE_LEN, MAX_RECEIPT_IDS, MAX_TEXT_LEN};
use waping_protocol::{
    Body, CATALOGUE, DecodeError, DeliveryReport, DeliveryStatus, DeviceAction, DeviceState, ErrorCode,
    Event, EventKind, Frame, LinkCodeKind, LinkMethod, MessageId, ReceiptStatus, Text, encode, subscribe,
};

/// Largest `str8` / `str16` field.
pub const STR8_MAX: usize = u8::MAX as usize;
pub const STR16_MAX: usize = u16::MAX as usize;
/// Largest MIME type of a media body (documented in `Body::Media`).
pub const MAX_MIME_LEN: usize = 255;

/// Encodes one frame, panicking on an encoder error.
pub fn enc(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(f, &mut b).unwrap_or_else(|e| panic!("cannot encode {f:?}: {e}"));
    b.to_vec()
}

/// Encodes frames back to back into one buffer (a batch).
pub fn enc_all(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(enc).collect()
}

// ---------------------------------------------------------------- strategies

/// Pads or cuts `s` to exactly `n` bytes (cutting at a char boundary, padding with `a`).
fn fit(mut s: String, n: usize) -> String {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    while s.len() < n {
        s.push('a');
    }
    s
}

/// UTF-8 text of at most `max` bytes: mostly short arbitrary Unicode
/// (multi-byte characters included), sometimes long, sometimes exactly `max`.
pub fn text(max: usize) -> BoxedStrategy<Text> {
    let short = ".{0,12}".prop_map(move |s: String| {
        let n = s.len().min(max);
        Text::from(fit(s, n))
    });
    let long = (".{1,8}", 0..=max)
        .prop_map(|(unit, n): (String, usize)| Text::from(fit(unit.repeat(n / unit.len() + 1), n)));
    let full = ".{1,4}".prop_map(move |unit: String| Text::from(fit(unit.repeat(max / unit.len() + 1), max)));
    prop_oneof![6 => short, 2 => long, 1 => full].boxed()
}

pub fn str8() -> BoxedStrategy<Text> {
    text(STR8_MAX)
}

pub fn str16() -> BoxedStrategy<Text> {
    text(STR16_MAX)
}

/// Any code: catalogue entries and arbitrary numbers (unknown codes are valid on the wire).
pub fn code() -> BoxedStrategy<ErrorCode> {
    prop_oneof![
        proptest::sample::select(CATALOGUE.iter().map(|c| c.code).collect::<Vec<_>>()),
        any::<u16>().prop_map(ErrorCode),
    ]
    .boxed()
}

/// A code a failed report may carry (anything but 0).
pub fn failure_code() -> BoxedStrategy<ErrorCode> {
    code()
        .prop_map(|c| if c.0 == 0 { ErrorCode::INTERNAL } else { c })
        .boxed()
}

pub fn message_id() -> BoxedStrategy<MessageId> {
    any::<[u8; 16]>().prop_map(MessageId).boxed()
}

pub fn body() -> BoxedStrategy<Body> {
    prop_oneof![
        3 => text(MAX_TEXT_LEN).prop_map(Body::Text),
        1 => (text(MAX_MEDIA_REFERENCE_LEN), text(MAX_MIME_LEN), text(MAX_TEXT_LEN))
            .prop_map(|(reference, mime, caption)| Body::Media { reference, mime, caption }),
    ]
    .boxed()
}

pub fn device_state() -> BoxedStrategy<DeviceState> {
    proptest::sample::select(ALL_DEVICE_STATES.to_vec()).boxed()
}

pub const ALL_DEVICE_STATES: [DeviceState; 7] = [
    DeviceState::Unlinked,
    DeviceState::Linking,
    DeviceState::Connected,
    DeviceState::Disconnected,
    DeviceState::LoggedOut,
    DeviceState::Banned,
    DeviceState::Disabled,
];

/// A report as the decoder accepts it: SENT with code 0, or FAILED with a non-zero code.
pub fn report() -> BoxedStrategy<DeliveryReport> {
    let outcome = prop_oneof![
        Just((DeliveryStatus::Sent, ErrorCode(0))),
        failure_code().prop_map(|c| (DeliveryStatus::Failed, c)),
        failure_code().prop_map(|c| (DeliveryStatus::Deferred, c)),
    ];
    (message_id(), any::<u64>(), outcome, any::<u64>(), str8(), str16())
        .prop_map(
            |(message_id, seq, (status, code), timestamp_ms, upstream_id, detail)| DeliveryReport {
                message_id,
                seq,
                status,
                code,
                timestamp_ms,
                upstream_id,
                detail,
            },
        )
        .boxed()
}

pub fn event_kind() -> BoxedStrategy<EventKind> {
    prop_oneof![
        (str8(), report()).prop_map(|(device_id, report)| EventKind::Report { device_id, report }),
        (str8(), str8(), str8(), body()).prop_map(|(device_id, from, upstream_id, body)| {
            EventKind::Inbound {
                device_id,
                from,
                upstream_id,
                body,
            }
        }),
        (str8(), device_state(), str16()).prop_map(|(device_id, state, detail)| EventKind::DeviceState {
            device_id,
            state,
            detail
        }),
        any::<u64>().prop_map(|missed| EventKind::Lagged { missed }),
        (str8(), link_code_kind(), str16(), any::<u32>()).prop_map(
            |(device_id, kind, code, valid_for_ms)| {
                EventKind::LinkCode {
                    device_id,
                    kind,
                    code,
                    valid_for_ms,
                }
            }
        ),
        (str8(), str8(), receipt_ids(), receipt_status()).prop_map(
            |(device_id, from, upstream_ids, status)| {
                EventKind::Receipt {
                    device_id,
                    from,
                    upstream_ids,
                    status,
                }
            }
        ),
    ]
    .boxed()
}

pub fn link_code_kind() -> BoxedStrategy<LinkCodeKind> {
    proptest::sample::select(vec![LinkCodeKind::Qr, LinkCodeKind::PairingCode]).boxed()
}

pub fn receipt_status() -> BoxedStrategy<ReceiptStatus> {
    proptest::sample::select(vec![
        ReceiptStatus::Delivered,
        ReceiptStatus::Read,
        ReceiptStatus::Played,
    ])
    .boxed()
}

/// Upstream ids of a receipt: usually a few, sometimes up to the bound.
pub fn receipt_ids() -> BoxedStrategy<Vec<Text>> {
    prop_oneof![
        8 => proptest::collection::vec(str8(), 0..8),
        1 => proptest::collection::vec(text(24), 0..=MAX_RECEIPT_IDS),
    ]
    .boxed()
}

pub fn device_action() -> BoxedStrategy<DeviceAction> {
    prop_oneof![
        Just(DeviceAction::Link(LinkMethod::Qr)),
        str8().prop_map(|phone| DeviceAction::Link(LinkMethod::PairingCode { phone })),
        Just(DeviceAction::Unlink),
        Just(DeviceAction::Disable),
        Just(DeviceAction::Enable),
        Just(DeviceAction::Status),
    ]
    .boxed()
}

/// A result as the decoder accepts it: code 0 with a state, or a failure with or without one.
pub fn control_outcome() -> BoxedStrategy<(ErrorCode, Option<DeviceState>)> {
    prop_oneof![
        device_state().prop_map(|s| (ErrorCode(0), Some(s))),
        (failure_code(), proptest::option::of(device_state())),
    ]
    .boxed()
}

pub fn mask() -> BoxedStrategy<u32> {
    prop_oneof![Just(0), Just(subscribe::ALL), 0..=subscribe::ALL, any::<u32>()].boxed()
}

/// Every frame of version 1, every field within its documented limit.
pub fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), str8(), str8()).prop_map(
            |(min_version, max_version, api_key, client_name)| {
                Frame::Hello {
                    min_version,
                    max_version,
                    api_key,
                    client_name,
                }
            }
        ),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            str8()
        )
            .prop_map(
                |(
                    version,
                    max_frame_len,
                    max_in_flight,
                    max_streams,
                    idle_timeout_ms,
                    connection_id,
                    server,
                )| {
                    Frame::HelloOk {
                        version,
                        max_frame_len,
                        max_in_flight,
                        max_streams,
                        idle_timeout_ms,
                        connection_id,
                        server,
                    }
                }
            ),
        (code(), any::<u32>(), str16()).prop_map(|(code, retry_after_ms, message)| Frame::Error {
            code,
            retry_after_ms,
            message
        }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (code(), str16()).prop_map(|(code, message)| Frame::Goodbye { code, message }),
        (any::<u64>(), str8(), str8(), str8(), body()).prop_map(
            |(seq, idempotency_key, device_id, recipient, body)| Frame::Send {
                seq,
                idempotency_key,
                device_id,
                recipient,
                body
            }
        ),
        (any::<u64>(), message_id()).prop_map(|(seq, message_id)| Frame::Accepted { seq, message_id }),
        (any::<u64>(), code(), any::<u32>(), str16()).prop_map(|(seq, code, retry_after_ms, reason)| {
            Frame::Rejected {
                seq,
                code,
                retry_after_ms,
                reason,
            }
        }),
        report().prop_map(Frame::Report),
        mask().prop_map(|mask| Frame::Subscribe { mask }),
        mask().prop_map(|mask| Frame::Subscribed { mask }),
        (any::<u64>(), any::<u64>(), event_kind()).prop_map(|(seq, timestamp_ms, kind)| Frame::Event(
            Event {
                seq,
                timestamp_ms,
                kind
            }
        )),
        (any::<u64>(), str8(), device_action()).prop_map(|(req, device_id, action)| Frame::DeviceControl {
            req,
            device_id,
            action
        }),
        (any::<u64>(), control_outcome(), str16()).prop_map(|(req, (code, state), detail)| {
            Frame::DeviceControlResult {
                req,
                code,
                state,
                detail,
            }
        }),
        // Short lists (as a gateway accepts): two full str16s would pass the default frame limit.
        (proptest::option::of(any::<u64>()), str8(), str8()).prop_map(|(cursor, types, devices)| {
            Frame::SubscribeFrom {
                cursor,
                types,
                devices,
            }
        }),
        (
            prop_oneof![Just(ErrorCode(0)), code()],
            any::<u64>(),
            any::<u64>(),
            str16()
        )
            .prop_map(|(code, cursor, oldest, detail)| {
                Frame::SubscribedFrom {
                    code,
                    cursor,
                    oldest,
                    detail,
                }
            }),
        (any::<u64>(), any::<u64>(), any::<bool>(), str16()).prop_map(
            |(cursor, timestamp_ms, readable, text)| Frame::LogEvent {
                cursor,
                timestamp_ms,
                readable,
                text,
            }
        ),
    ]
    .boxed()
}

/// A key naming the variant (and sub-variant) of a frame. The match has no
/// wildcard, so a new variant does not compile until it is listed here and in
/// [`ALL_KINDS`].
pub fn kind(f: &Frame) -> &'static str {
    let body = |b: &Body| match b {
        Body::Text(_) => "text",
        Body::Media { .. } => "media",
    };
    let status = |r: &DeliveryReport| match r.status {
        DeliveryStatus::Sent => "sent",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Deferred => "deferred",
    };
    match f {
        Frame::Hello { .. } => "HELLO",
        Frame::HelloOk { .. } => "HELLO_OK",
        Frame::Error { .. } => "ERROR",
        Frame::Ping { .. } => "PING",
        Frame::Pong { .. } => "PONG",
        Frame::Goodbye { .. } => "GOODBYE",
        Frame::Send { body: b, .. } => match body(b) {
            "text" => "SEND/text",
            _ => "SEND/media",
        },
        Frame::Accepted { .. } => "ACCEPTED",
        Frame::Rejected { .. } => "REJECTED",
        Frame::Report(r) => match status(r) {
            "sent" => "REPORT/sent",
            _ => "REPORT/failed",
        },
        Frame::Subscribe { .. } => "SUBSCRIBE",
        Frame::Subscribed { .. } => "SUBSCRIBED",
        Frame::Event(e) => match &e.kind {
            EventKind::Report { report, .. } => match status(report) {
                "sent" => "EVENT/report/sent",
                _ => "EVENT/report/failed",
            },
            EventKind::Inbound { body: b, .. } => match body(b) {
                "text" => "EVENT/inbound/text",
                _ => "EVENT/inbound/media",
            },
            EventKind::DeviceState { state, .. } => match state {
                DeviceState::Unlinked => "EVENT/device_state/unlinked",
                DeviceState::Linking => "EVENT/device_state/linking",
                DeviceState::Connected => "EVENT/device_state/connected",
                DeviceState::Disconnected => "EVENT/device_state/disconnected",
                DeviceState::LoggedOut => "EVENT/device_state/logged_out",
                DeviceState::Banned => "EVENT/device_state/banned",
                DeviceState::Disabled => "EVENT/device_state/disabled",
            },
            EventKind::Lagged { .. } => "EVENT/lagged",
            EventKind::LinkCode { kind, .. } => match kind {
                LinkCodeKind::Qr => "EVENT/link_code/qr",
                LinkCodeKind::PairingCode => "EVENT/link_code/pairing_code",
            },
            EventKind::Receipt { status, .. } => match status {
                ReceiptStatus::Delivered => "EVENT/receipt/delivered",
                ReceiptStatus::Read => "EVENT/receipt/read",
                ReceiptStatus::Played => "EVENT/receipt/played",
            },
        },
        Frame::DeviceControl { action, .. } => match action {
            DeviceAction::Link(LinkMethod::Qr) => "DEVICE_CONTROL/link_qr",
            DeviceAction::Link(LinkMethod::PairingCode { .. }) => "DEVICE_CONTROL/link_pairing_code",
            DeviceAction::Unlink => "DEVICE_CONTROL/unlink",
            DeviceAction::Disable => "DEVICE_CONTROL/disable",
            DeviceAction::Enable => "DEVICE_CONTROL/enable",
            DeviceAction::Status => "DEVICE_CONTROL/status",
        },
        Frame::DeviceControlResult { code, state, .. } => match (code.0, state) {
            (0, _) => "DEVICE_CONTROL_RESULT/ok",
            (_, Some(_)) => "DEVICE_CONTROL_RESULT/refused_with_state",
            (_, None) => "DEVICE_CONTROL_RESULT/refused",
        },
        Frame::SubscribeFrom { cursor, .. } => match cursor {
            Some(_) => "SUBSCRIBE_FROM/cursor",
            None => "SUBSCRIBE_FROM/now",
        },
        Frame::SubscribedFrom { code, .. } => match code.0 {
            0 => "SUBSCRIBED_FROM/ok",
            _ => "SUBSCRIBED_FROM/refused",
        },
        Frame::LogEvent { readable, .. } => match readable {
            true => "LOG_EVENT/readable",
            false => "LOG_EVENT/unreadable",
        },
    }
}

/// Every key [`kind`] can return.
pub const ALL_KINDS: &[&str] = &[
    "HELLO",
    "HELLO_OK",
    "ERROR",
    "PING",
    "PONG",
    "GOODBYE",
    "SEND/text",
    "SEND/media",
    "ACCEPTED",
    "REJECTED",
    "REPORT/sent",
    "REPORT/failed",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "EVENT/report/sent",
    "EVENT/report/failed",
    "EVENT/inbound/text",
    "EVENT/inbound/media",
    "EVENT/device_state/unlinked",
    "EVENT/device_state/linking",
    "EVENT/device_state/connected",
    "EVENT/device_state/disconnected",
    "EVENT/device_state/logged_out",
    "EVENT/device_state/banned",
    "EVENT/device_state/disabled",
    "EVENT/lagged",
    "EVENT/link_code/qr",
    "EVENT/link_code/pairing_code",
    "EVENT/receipt/delivered",
    "EVENT/receipt/read",
    "EVENT/receipt/played",
    "DEVICE_CONTROL/link_qr",
    "DEVICE_CONTROL/link_pairing_code",
    "DEVICE_CONTROL/unlink",
    "DEVICE_CONTROL/disable",
    "DEVICE_CONTROL/enable",
    "DEVICE_CONTROL/status",
    "DEVICE_CONTROL_RESULT/ok",
    "DEVICE_CONTROL_RESULT/refused_with_state",
    "DEVICE_CONTROL_RESULT/refused",
    "SUBSCRIBE_FROM/cursor",
    "SUBSCRIBE_FROM/now",
    "SUBSCRIBED_FROM/ok",
    "SUBSCRIBED_FROM/refused",
    "LOG_EVENT/readable",
    "LOG_EVENT/unreadable",
];

// ---------------------------------------------------------------- examples

fn id(hex16: &str) -> MessageId {
    let v = hex::decode(hex16).expect("hex");
    MessageId(v.try_into().expect("16 bytes"))
}

/// The examples of PROTOCOL.md, by id: at least one per frame type and
/// sub-variant, small enough to read in hex.
pub fn examples() -> Vec<(&'static str, Frame)> {
    let mid = id("0190f2c4a1b27c3d8e4f5a6b7c8d9e0f");
    let sent = DeliveryReport {
        message_id: mid,
        seq: 1,
        status: DeliveryStatus::Sent,
        code: ErrorCode(0),
        timestamp_ms: 1_720_000_000_123,
        upstream_id: "3EB0C767D2".into(),
        detail: "".into(),
    };
    let failed = DeliveryReport {
        message_id: id("0190f2c4a1b27c3d8e4f5a6b7c8d9e10"),
        seq: 2,
        status: DeliveryStatus::Failed,
        code: ErrorCode::DEVICE_LOGGED_OUT,
        timestamp_ms: 1_720_000_000_456,
        upstream_id: "".into(),
        detail: "logged out".into(),
    };
    vec![
        (
            "hello",
            Frame::Hello {
                min_version: 1,
                max_version: 2,
                api_key: "wpk_k1_s3cr3t".into(),
                client_name: "demo/1.0".into(),
            },
        ),
        (
            "hello-ok",
            Frame::HelloOk {
                version: 2,
                max_frame_len: 131_072,
                max_in_flight: 4096,
                max_streams: 16,
                idle_timeout_ms: 30_000,
                connection_id: 7,
                server: "waping-gateway/0.1.0".into(),
            },
        ),
        (
            "error",
            Frame::Error {
                code: ErrorCode::AUTH_FAILED,
                retry_after_ms: 0,
                message: "invalid API key".into(),
            },
        ),
        ("ping", Frame::Ping { nonce: 42 }),
        ("pong", Frame::Pong { nonce: 42 }),
        (
            "goodbye",
            Frame::Goodbye {
                code: ErrorCode::SHUTTING_DOWN,
                message: "draining".into(),
            },
        ),
        (
            "send-text",
            Frame::Send {
                seq: 1,
                idempotency_key: "order-17".into(),
                device_id: "dev-1".into(),
                recipient: "4915112345678".into(),
                // Non-ASCII on purpose: lengths count bytes, not characters.
                body: Body::Text("Olá 👋".into()),
            },
        ),
        (
            "send-media",
            Frame::Send {
                seq: 2,
                idempotency_key: "order-18".into(),
                device_id: "dev-1".into(),
                recipient: "4915112345678".into(),
                body: Body::Media {
                    reference: "s3://b/cat.png".into(),
                    mime: "image/png".into(),
                    caption: "cat".into(),
                },
            },
        ),
        (
            "accepted",
            Frame::Accepted {
                seq: 1,
                message_id: mid,
            },
        ),
        (
            "rejected",
            Frame::Rejected {
                seq: 3,
                code: ErrorCode::RATE_LIMITED,
                retry_after_ms: 250,
                reason: "rate exceeded".into(),
            },
        ),
        ("report-sent", Frame::Report(sent.clone())),
        ("report-failed", Frame::Report(failed)),
        ("subscribe", Frame::Subscribe { mask: subscribe::ALL }),
        (
            "subscribed",
            Frame::Subscribed {
                mask: subscribe::REPORTS | subscribe::DEVICE_STATE,
            },
        ),
        (
            "event-report",
            Frame::Event(Event {
                seq: 1,
                timestamp_ms: 1_720_000_000_124,
                kind: EventKind::Report {
                    device_id: "dev-1".into(),
                    report: sent,
                },
            }),
        ),
        (
            "event-inbound",
            Frame::Event(Event {
                seq: 2,
                timestamp_ms: 1_720_000_001_000,
                kind: EventKind::Inbound {
                    device_id: "dev-1".into(),
                    from: "4917612345678".into(),
                    upstream_id: "3EB0AA".into(),
                    body: Body::Text("hi".into()),
                },
            }),
        ),
        (
            "event-device-state",
            Frame::Event(Event {
                seq: 3,
                timestamp_ms: 1_720_000_002_000,
                kind: EventKind::DeviceState {
                    device_id: "dev-1".into(),
                    state: DeviceState::Disconnected,
                    detail: "socket closed".into(),
                },
            }),
        ),
        (
            "event-lagged",
            Frame::Event(Event {
                seq: 4,
                timestamp_ms: 1_720_000_003_000,
                kind: EventKind::Lagged { missed: 17 },
            }),
        ),
        (
            "device-control-link-qr",
            Frame::DeviceControl {
                req: 1,
                device_id: "dev-1".into(),
                action: DeviceAction::Link(LinkMethod::Qr),
            },
        ),
        (
            "device-control-link-pairing-code",
            Frame::DeviceControl {
                req: 2,
                device_id: "dev-1".into(),
                action: DeviceAction::Link(LinkMethod::PairingCode {
                    phone: "4915112345678".into(),
                }),
            },
        ),
        (
            "device-control-disable",
            Frame::DeviceControl {
                req: 3,
                device_id: "dev-1".into(),
                action: DeviceAction::Disable,
            },
        ),
        (
            "device-control-result-ok",
            Frame::DeviceControlResult {
                req: 1,
                code: ErrorCode(0),
                state: Some(DeviceState::Linking),
                detail: "".into(),
            },
        ),
        (
            "device-control-result-refused",
            Frame::DeviceControlResult {
                req: 4,
                code: ErrorCode::UNKNOWN_DEVICE,
                state: None,
                detail: "no such device".into(),
            },
        ),
        (
            "event-link-code-qr",
            Frame::Event(Event {
                seq: 5,
                timestamp_ms: 1_720_000_004_000,
                kind: EventKind::LinkCode {
                    device_id: "dev-1".into(),
                    kind: LinkCodeKind::Qr,
                    code: "2@Xq3k,aB9=,Zm4=,Qw8=".into(),
                    valid_for_ms: 20_000,
                },
            }),
        ),
        (
            "event-link-code-pairing",
            Frame::Event(Event {
                seq: 6,
                timestamp_ms: 1_720_000_005_000,
                kind: EventKind::LinkCode {
                    device_id: "dev-1".into(),
                    kind: LinkCodeKind::PairingCode,
                    code: "ABCD-EFGH".into(),
                    valid_for_ms: 180_000,
                },
            }),
        ),
        (
            "event-receipt",
            Frame::Event(Event {
                seq: 7,
                timestamp_ms: 1_720_000_006_000,
                kind: EventKind::Receipt {
                    device_id: "dev-1".into(),
                    from: "4917612345678".into(),
                    upstream_ids: vec!["3EB0C767D2".into(), "3EB0C767D3".into()],
                    status: ReceiptStatus::Read,
                },
            }),
        ),
        (
            "subscribe-from-cursor",
            Frame::SubscribeFrom {
                cursor: Some(1234),
                types: "message.received".into(),
                devices: "d1".into(),
            },
        ),
        (
            "subscribe-from-now",
            Frame::SubscribeFrom {
                cursor: None,
                types: "".into(),
                devices: "".into(),
            },
        ),
        (
            "subscribed-from-ok",
            Frame::SubscribedFrom {
                code: ErrorCode(0),
                cursor: 1234,
                oldest: 0,
                detail: "".into(),
            },
        ),
        (
            "subscribed-from-refused",
            Frame::SubscribedFrom {
                code: ErrorCode::INVALID_FIELD,
                cursor: 0,
                oldest: 0,
                detail: "types: x".into(),
            },
        ),
        (
            "log-event",
            Frame::LogEvent {
                cursor: 1235,
                timestamp_ms: 1_720_000_007_000,
                readable: true,
                text: r#"{"id":"evt_1"}"#.into(),
            },
        ),
        (
            "log-event-unreadable",
            Frame::LogEvent {
                cursor: 1236,
                timestamp_ms: 0,
                readable: false,
                text: "key gone".into(),
            },
        ),
    ]
}

// ---------------------------------------------------------------- raw bytes

/// Builds bodies byte by byte, for input the encoder would never produce.
#[derive(Debug, Default, Clone)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn new() -> Self {
        Raw::default()
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn str8(self, b: &[u8]) -> Self {
        let n = u8::try_from(b.len()).expect("str8");
        self.u8(n).bytes(b)
    }
    pub fn str16(self, b: &[u8]) -> Self {
        let n = u16::try_from(b.len()).expect("str16");
        self.u16(n).bytes(b)
    }
    pub fn str32(self, b: &[u8]) -> Self {
        let n = u32::try_from(b.len()).expect("str32");
        self.u32(n).bytes(b)
    }
    /// Header (with the body's true length) plus body.
    pub fn frame(&self, ty: u8) -> Vec<u8> {
        self.frame_flags(ty, 0)
    }
    pub fn frame_flags(&self, ty: u8, flags: u8) -> Vec<u8> {
        header(self.0.len() as u32, ty, flags)
            .into_iter()
            .chain(self.0.iter().copied())
            .collect()
    }
}

pub fn header(len: u32, ty: u8, flags: u8) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], ty, flags]
}

/// A REPORT body with the given status and code bytes and otherwise valid fields.
pub fn report_body(status: u8, code: u16) -> Raw {
    Raw::new()
        .bytes(&[0x11; 16])
        .u64(9)
        .u8(status)
        .u16(code)
        .u64(1_720_000_000_000)
        .str8(b"")
        .str16(b"")
}

/// An EVENT body prefix: seq, timestamp, kind byte.
pub fn event_head(kind: u8) -> Raw {
    Raw::new().u64(1).u64(1_720_000_000_000).u8(kind)
}

/// A SEND body up to (not including) the body kind byte.
pub fn send_head() -> Raw {
    Raw::new().u64(1).str8(b"k").str8(b"dev-1").str8(b"4915112345678")
}

/// Every undefined frame type byte.
pub fn undefined_types() -> Vec<u8> {
    (0..=u8::MAX)
        .filter(|t| waping_protocol::frame::type_name(*t) == "UNKNOWN")
        .collect()
}

/// Hand-made seeds of the fuzz corpus: each is a file name, its bytes and
/// how decoding them (at once, with the default decoder) ends: `None` when
/// every byte decodes, `Some(None)` when it stops waiting for more bytes,
/// `Some(Some(e))` when it stops with `e`.
pub type Seed = (String, Vec<u8>, Option<Option<DecodeError>>);

pub fn seeds() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    for (name, f) in examples() {
        out.push((format!("seed-valid-{name}"), enc(&f), None));
    }
    let all: Vec<Frame> = examples().into_iter().map(|(_, f)| f).collect();
    out.push(("seed-batch-all".into(), enc_all(&all), None));
    let mut incomplete = enc(&all[6]);
    incomplete.truncate(incomplete.len() - 3);
    out.push(("seed-incomplete-body".into(), incomplete, Some(None)));
    out.push(("seed-incomplete-header".into(), vec![0, 0, 0], Some(None)));

    let max = waping_protocol::limits::DEFAULT_MAX_FRAME_LEN;
    let bad = |name: &str, bytes: Vec<u8>, e: DecodeError| (format!("seed-bad-{name}"), bytes, Some(Some(e)));
    out.push(bad(
        "too-large",
        header(max + 1, ty::SEND, 0).to_vec(),
        DecodeError::FrameTooLarge { len: max + 1, max },
    ));
    out.push(bad(
        "unknown-type",
        Raw::new().u64(0).frame(0x7f),
        DecodeError::UnknownType(0x7f),
    ));
    out.push(bad(
        "unknown-flags",
        Raw::new().u64(0).frame_flags(ty::PING, 0x80),
        DecodeError::UnknownFlags {
            frame: "PING",
            flags: 0x80,
        },
    ));
    out.push(bad(
        "subscribe-from-has-cursor",
        Raw::new()
            .u8(2)
            .u64(0)
            .str16(b"")
            .str16(b"")
            .frame(ty::SUBSCRIBE_FROM),
        DecodeError::InvalidValue {
            frame: "SUBSCRIBE_FROM",
            field: "has_cursor",
            value: 2,
        },
    ));
    out.push(bad(
        "log-event-readable",
        Raw::new().u64(1).u64(0).u8(2).str32(b"").frame(ty::LOG_EVENT),
        DecodeError::InvalidValue {
            frame: "LOG_EVENT",
            field: "readable",
            value: 2,
        },
    ));
    out.push(bad(
        "truncated-int",
        Raw::new().u32(0).frame(ty::PING),
        DecodeError::Truncated {
            frame: "PING",
            field: "nonce",
        },
    ));
    out.push(bad(
        "truncated-text",
        Raw::new().u16(1).u16(1).u8(20).bytes(b"wpk_").frame(ty::HELLO),
        DecodeError::Truncated {
            frame: "HELLO",
            field: "api_key",
        },
    ));
    out.push(bad(
        "trailing",
        Raw::new().u64(1).u8(0).frame(ty::PONG),
        DecodeError::TrailingBytes {
            frame: "PONG",
            extra: 1,
        },
    ));
    out.push(bad(
        "invalid-utf8",
        Raw::new()
            .u16(1)
            .u16(1)
            .str8(b"wpk_\xff")
            .str8(b"")
            .frame(ty::HELLO),
        DecodeError::InvalidUtf8 {
            frame: "HELLO",
            field: "api_key",
        },
    ));
    out.push(bad(
        "unknown-body-kind",
        send_head().u8(3).u32(0).frame(ty::SEND),
        DecodeError::UnknownBodyKind(3),
    ));
    out.push(bad(
        "report-status",
        report_body(4, 0).frame(ty::REPORT),
        DecodeError::InvalidValue {
            frame: "REPORT",
            field: "status",
            value: 4,
        },
    ));
    out.push(bad(
        "report-code",
        report_body(1, 5000).frame(ty::REPORT),
        DecodeError::InvalidValue {
            frame: "REPORT",
            field: "code",
            value: 5000,
        },
    ));
    out.push(bad(
        "event-kind",
        event_head(9).frame(ty::EVENT),
        DecodeError::InvalidValue {
            frame: "EVENT",
            field: "event_kind",
            value: 9,
        },
    ));
    out.push(bad(
        "device-state",
        event_head(3).str8(b"dev-1").u8(0).str16(b"").frame(ty::EVENT),
        DecodeError::InvalidValue {
            frame: "EVENT",
            field: "state",
            value: 0,
        },
    ));
    out.push(bad(
        "device-control-action",
        Raw::new().u64(1).str8(b"dev-1").u8(9).frame(ty::DEVICE_CONTROL),
        DecodeError::InvalidValue {
            frame: "DEVICE_CONTROL",
            field: "action",
            value: 9,
        },
    ));
    out.push(bad(
        "link-method",
        Raw::new()
            .u64(1)
            .str8(b"dev-1")
            .u8(1)
            .u8(3)
            .frame(ty::DEVICE_CONTROL),
        DecodeError::InvalidValue {
            frame: "DEVICE_CONTROL",
            field: "link_method",
            value: 3,
        },
    ));
    out.push(bad(
        "result-ok-without-state",
        Raw::new()
            .u64(1)
            .u16(0)
            .u8(0)
            .str16(b"")
            .frame(ty::DEVICE_CONTROL_RESULT),
        DecodeError::InvalidValue {
            frame: "DEVICE_CONTROL_RESULT",
            field: "state",
            value: 0,
        },
    ));
    out.push(bad(
        "link-code-kind",
        event_head(5)
            .str8(b"dev-1")
            .u8(3)
            .str16(b"x")
            .u32(0)
            .frame(ty::EVENT),
        DecodeError::InvalidValue {
            frame: "EVENT",
            field: "code_kind",
            value: 3,
        },
    ));
    out.push(bad(
        "receipt-count",
        event_head(6)
            .str8(b"dev-1")
            .str8(b"4917612345678")
            .u8(1)
            .u16(MAX_RECEIPT_IDS as u16 + 1)
            .frame(ty::EVENT),
        DecodeError::InvalidValue {
            frame: "EVENT",
            field: "upstream_id_count",
            value: MAX_RECEIPT_IDS as u64 + 1,
        },
    ));
    // A good frame, then a bad one: the good one decodes, then the error.
    let mut then_bad = enc(&Frame::Ping { nonce: 1 });
    then_bad.extend_from_slice(&Raw::new().u64(1).frame_flags(ty::PONG, 1));
    out.push(bad(
        "after-valid",
        then_bad,
        DecodeError::UnknownFlags {
            frame: "PONG",
            flags: 1,
        },
    ));
    out
}
