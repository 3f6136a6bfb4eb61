//! Frame types of protocol versions 1, 2 and 3.
//!
//! Byte layouts are in `PROTOCOL.md`; the codec in [`crate::codec`] is the
//! executable form of that document. Version 2 is version 1 plus device
//! control (DEVICE_CONTROL / DEVICE_CONTROL_RESULT) and the LINK_CODE and
//! RECEIPT events; version 3 adds resumable subscriptions (SUBSCRIBE_FROM, SUBSCRIBED_FROM,
//! LOG_EVENT); [`Frame::since_version`] says which version introduced a
//! frame.

use bytes::Bytes;
use std::fmt;

use crate::error::ErrorCode;

/// UTF-8 text that shares the receive buffer instead of copying it.
///
/// Invariant: the bytes are valid UTF-8 (checked once at decode or construction).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(Bytes);

impl Text {
    /// Wraps bytes after checking they are UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(Text(b))
    }

    /// Borrowed view.
    pub fn as_str(&self) -> &str {
        // The constructor checked UTF-8; re-checking is cheap for the short
        // fields on the hot path and keeps this crate free of `unsafe`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying bytes (cheap clone).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Gateway-assigned message id: 16 bytes, time-ordered (UUIDv7 layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write of a stack buffer: ids are printed for every REPORT and status event,
        // and sixteen `{:02x}` writes cost several times more.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = HEX[usize::from(b >> 4)];
            buf[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.write_str(core::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Plain text, at most [`crate::limits::MAX_TEXT_LEN`] bytes.
    Text(Text),
    /// A reference to media stored elsewhere; defined so v1 clients and
    /// servers agree on its layout, not yet accepted by the gateway.
    Media {
        /// Where the media lives (URL or storage key), at most 2048 bytes.
        reference: Text,
        /// MIME type, at most 255 bytes.
        mime: Text,
        /// Optional caption, at most [`crate::limits::MAX_TEXT_LEN`] bytes.
        caption: Text,
    },
}

/// Outcome in a delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// WhatsApp accepted the message (server ack).
    Sent = 1,
    /// The gateway gave up; `code` says why. Final.
    Failed = 2,
    /// Not final: an attempt failed with a retryable `code` and the message waits in the
    /// gateway's durable retry queue (`detail` says when the next attempt is due). A SENT or
    /// FAILED report follows. The stream's in-flight allowance is released by this report,
    /// so a slow retry never blocks new sends.
    Deferred = 3,
}

/// The outcome (final, or deferred for a retry) of one accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The id from ACCEPTED.
    pub message_id: MessageId,
    /// The client's sequence number of the SEND (only meaningful on the stream that sent it).
    pub seq: u64,
    /// Sent or failed.
    pub status: DeliveryStatus,
    /// `ErrorCode(0)` when sent; otherwise why it failed.
    pub code: ErrorCode,
    /// Unix time in milliseconds when the outcome was known.
    pub timestamp_ms: u64,
    /// The id the upstream gave the message (empty when failed).
    pub upstream_id: Text,
    /// Human-readable detail (empty when sent).
    pub detail: Text,
}

/// Link state of a device as seen by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Not linked to a WhatsApp account.
    Unlinked = 1,
    /// Waiting for the QR code or pairing code to be used.
    Linking = 2,
    /// Connected and able to send.
    Connected = 3,
    /// Temporarily disconnected; the gateway reconnects with backoff.
    Disconnected = 4,
    /// WhatsApp logged the device out; it must be relinked.
    LoggedOut = 5,
    /// WhatsApp banned or restricted the account.
    Banned = 6,
    /// Disabled by an operator.
    Disabled = 7,
}

impl DeviceState {
    /// Decodes the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Unlinked,
            2 => Self::Linking,
            3 => Self::Connected,
            4 => Self::Disconnected,
            5 => Self::LoggedOut,
            6 => Self::Banned,
            7 => Self::Disabled,
            _ => return None,
        })
    }

    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unlinked => "unlinked",
            Self::Linking => "linking",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::LoggedOut => "logged_out",
            Self::Banned => "banned",
            Self::Disabled => "disabled",
        }
    }
}

/// Subscription mask bits (SUBSCRIBE / SUBSCRIBED).
pub mod subscribe {
    /// Delivery reports of every message of the workspace.
    pub const REPORTS: u32 = 1 << 0;
    /// Inbound messages to the workspace's devices.
    pub const INBOUND: u32 = 1 << 1;
    /// Device state changes.
    pub const DEVICE_STATE: u32 = 1 << 2;
    /// QR and pairing codes of devices being linked (version 2). They let whoever holds
    /// them link a phone to the device, so treat them as secrets.
    pub const LINK_CODES: u32 = 1 << 3;
    /// Delivery, read and played receipts from recipients' phones (version 2).
    pub const RECEIPTS: u32 = 1 << 4;
    /// Every bit defined in version 1.
    pub const ALL_V1: u32 = REPORTS | INBOUND | DEVICE_STATE;
    /// Every bit defined in the highest version this crate speaks.
    pub const ALL: u32 = ALL_V1 | LINK_CODES | RECEIPTS;

    /// The bits a connection of `version` may be granted: a server answers SUBSCRIBE with
    /// `mask & allowed(version)`, so a version 1 client never sees an event kind it cannot
    /// decode, whatever reserved bits it sets.
    pub const fn allowed(version: u16) -> u32 {
        if version >= 2 { ALL } else { ALL_V1 }
    }
}

/// Which kind of code a LINK_CODE event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkCodeKind {
    /// A QR payload to render; the phone scans it. Replaced by the next one when it expires.
    Qr = 1,
    /// An 8-character pairing code (shown as `ABCD-EFGH`) to type into the phone.
    PairingCode = 2,
}

impl LinkCodeKind {
    /// Decodes the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Qr),
            2 => Some(Self::PairingCode),
            _ => None,
        }
    }

    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qr => "qr",
            Self::PairingCode => "pairing_code",
        }
    }
}

/// What a recipient's phone reported in a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    /// The message reached the recipient's phone.
    Delivered = 1,
    /// The recipient opened it.
    Read = 2,
    /// The recipient played it (voice, video).
    Played = 3,
}

impl ReceiptStatus {
    /// Decodes the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Delivered),
            2 => Some(Self::Read),
            3 => Some(Self::Played),
            _ => None,
        }
    }

    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
        }
    }
}

/// How DEVICE_CONTROL links a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMethod {
    /// QR codes, delivered as LINK_CODE events of kind QR while they rotate.
    Qr,
    /// A pairing code for this phone number, delivered as a LINK_CODE event of kind
    /// PAIRING_CODE.
    PairingCode {
        /// The account's phone number: E.164 digits without `+`, 7–15 digits
        /// ([`crate::validate::phone`]).
        phone: Text,
    },
}

/// What DEVICE_CONTROL asks the gateway to do with a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    /// Start linking the device to a WhatsApp account.
    Link(LinkMethod),
    /// Log the device out at WhatsApp and forget its credentials.
    Unlink,
    /// Stop the device's session and refuse sends until enabled (credentials are kept).
    Disable,
    /// Undo [`DeviceAction::Disable`].
    Enable,
    /// Change nothing; answer with the current state.
    Status,
}

impl DeviceAction {
    /// Lower-case name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Link(LinkMethod::Qr) => "link_qr",
            Self::Link(LinkMethod::PairingCode { .. }) => "link_pairing_code",
            Self::Unlink => "unlink",
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Status => "status",
        }
    }
}

/// What a workspace event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A delivery report for a message of the workspace (from any connection).
    Report {
        /// Device that sent it.
        device_id: Text,
        /// The report.
        report: DeliveryReport,
    },
    /// A message received by one of the workspace's devices.
    Inbound {
        /// Receiving device.
        device_id: Text,
        /// Sender address.
        from: Text,
        /// Upstream message id.
        upstream_id: Text,
        /// Content.
        body: Body,
    },
    /// A device changed state.
    DeviceState {
        /// The device.
        device_id: Text,
        /// Its new state.
        state: DeviceState,
        /// Why (may be empty).
        detail: Text,
    },
    /// The subscriber fell behind and `missed` events were not delivered to it.
    /// Live subscriptions are best-effort; durable delivery is the webhook's job.
    Lagged {
        /// How many events were skipped.
        missed: u64,
    },
    /// A QR or pairing code for a device being linked (version 2, mask bit LINK_CODES).
    LinkCode {
        /// The device being linked.
        device_id: Text,
        /// QR payload or pairing code.
        kind: LinkCodeKind,
        /// The code: the text to encode in the QR, or the pairing code.
        code: Text,
        /// How long WhatsApp accepts it, from `timestamp_ms`; 0 = unknown.
        valid_for_ms: u32,
    },
    /// A recipient's phone reported on messages a device sent (version 2, mask bit RECEIPTS).
    Receipt {
        /// The device that sent the messages.
        device_id: Text,
        /// The recipient whose phone reported.
        from: Text,
        /// Upstream ids of the messages (as in REPORT's `upstream_id`), at most
        /// [`crate::limits::MAX_RECEIPT_IDS`].
        upstream_ids: Vec<Text>,
        /// What happened to them.
        status: ReceiptStatus,
    },
}

impl EventKind {
    /// The SUBSCRIBE mask bit that selects this event; `None` for LAGGED, which is sent
    /// whatever the mask.
    pub fn mask_bit(&self) -> Option<u32> {
        match self {
            EventKind::Report { .. } => Some(subscribe::REPORTS),
            EventKind::Inbound { .. } => Some(subscribe::INBOUND),
            EventKind::DeviceState { .. } => Some(subscribe::DEVICE_STATE),
            EventKind::LinkCode { .. } => Some(subscribe::LINK_CODES),
            EventKind::Receipt { .. } => Some(subscribe::RECEIPTS),
            EventKind::Lagged { .. } => None,
        }
    }
}

/// One event pushed on the server's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Per-subscription sequence number, starting at 1, no gaps except where
    /// a `Lagged` event accounts for them.
    pub seq: u64,
    /// Unix time in milliseconds when the gateway observed it.
    pub timestamp_ms: u64,
    /// The payload.
    pub kind: EventKind,
}

/// Every frame of protocol versions 1 and 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server, first frame on the first stream: versions and credentials.
    Hello {
        /// Lowest version the client speaks.
        min_version: u16,
        /// Highest version the client speaks.
        max_version: u16,
        /// The API key (`wpk_…`). Never logged.
        api_key: Text,
        /// Free-form client name for logs and metrics (≤ 255 bytes).
        client_name: Text,
    },
    /// Server → client: the handshake succeeded.
    HelloOk {
        /// The version both sides now speak.
        version: u16,
        /// Largest frame body the server accepts.
        max_frame_len: u32,
        /// Most SENDs the client may have unacknowledged on the connection.
        max_in_flight: u32,
        /// Most bidirectional streams the client may open.
        max_streams: u16,
        /// The server closes connections idle for longer than this; send PING earlier.
        idle_timeout_ms: u32,
        /// Server-assigned connection id, for support and logs.
        connection_id: u64,
        /// Server software and version.
        server: Text,
    },
    /// Either direction: a connection-level error; fatal codes are followed by a close.
    Error {
        /// Why.
        code: ErrorCode,
        /// When retrying can help, how long to wait (0 = unspecified).
        retry_after_ms: u32,
        /// Human-readable detail.
        message: Text,
    },
    /// Either direction: liveness probe.
    Ping {
        /// Echoed in PONG.
        nonce: u64,
    },
    /// Answer to PING.
    Pong {
        /// The PING's nonce.
        nonce: u64,
    },
    /// Either direction: the sender is closing gracefully.
    Goodbye {
        /// Why (e.g. SHUTTING_DOWN).
        code: ErrorCode,
        /// Detail.
        message: Text,
    },
    /// Client → server: send one message.
    Send {
        /// Client-chosen correlation number, unique among the in-flight SENDs of
        /// the stream it is sent on (the ACCEPTED/REJECTED and REPORT answering it
        /// come back on that stream). Different streams may use the same numbers.
        seq: u64,
        /// Deduplication key, unique per workspace (1–128 bytes).
        idempotency_key: Text,
        /// Device (linked WhatsApp number) to send from (1–64 bytes).
        device_id: Text,
        /// Recipient address, e.g. E.164 digits or a JID (1–128 bytes).
        recipient: Text,
        /// Content.
        body: Body,
    },
    /// Server → client: the SEND was accepted.
    Accepted {
        /// The SEND's seq.
        seq: u64,
        /// Gateway message id.
        message_id: MessageId,
    },
    /// Server → client: the SEND was refused; the message was not taken.
    Rejected {
        /// The SEND's seq.
        seq: u64,
        /// Why.
        code: ErrorCode,
        /// When the same SEND may succeed (0 = not retryable or unspecified).
        retry_after_ms: u32,
        /// Detail.
        reason: Text,
    },
    /// Server → client, on the stream the SEND came on: its final outcome.
    Report(DeliveryReport),
    /// Client → server: start pushing workspace events.
    Subscribe {
        /// Bits from [`subscribe`].
        mask: u32,
    },
    /// Server → client: subscription active; events follow on a server-opened unidirectional stream.
    Subscribed {
        /// The bits granted.
        mask: u32,
    },
    /// Server → client, on the event stream.
    Event(Event),
    /// Client → server (version 2): link, unlink, disable, enable a device or ask its state.
    DeviceControl {
        /// Client-chosen number echoed in the answer.
        req: u64,
        /// The device (1–64 bytes of `A-Z a-z 0-9 . _ -`).
        device_id: Text,
        /// What to do.
        action: DeviceAction,
    },
    /// Server → client (version 2), on the DEVICE_CONTROL's stream: its outcome.
    DeviceControlResult {
        /// The DEVICE_CONTROL's `req`.
        req: u64,
        /// `ErrorCode(0)` when done; otherwise why not (the device is unchanged).
        code: ErrorCode,
        /// The device's state after the action; always `Some` when `code` is 0, `None`
        /// when the gateway has no state to tell (e.g. UNKNOWN_DEVICE).
        state: Option<DeviceState>,
        /// Human-readable detail.
        detail: Text,
    },
    /// Client → server (version 3): a resumable subscription read from the node's event log,
    /// filtered by type and device. Answered by SUBSCRIBED_FROM; the events follow on the
    /// same stream as LOG_EVENT frames.
    SubscribeFrom {
        /// Resume after this cursor (a LOG_EVENT's `cursor`); `None` = from now.
        cursor: Option<u64>,
        /// Comma-separated event types of docs/events.md (`message.received,…`); empty = all.
        types: Text,
        /// Comma-separated device ids; empty = all devices.
        devices: Text,
    },
    /// Server → client (version 3), on the SUBSCRIBE_FROM's stream: the subscription's start,
    /// or why it was refused.
    SubscribedFrom {
        /// `ErrorCode(0)` when subscribed; otherwise why not (no LOG_EVENT follows).
        code: ErrorCode,
        /// The cursor reading starts after (resume from it to miss nothing).
        cursor: u64,
        /// Non-zero: the workspace's oldest retained event, newer than `cursor + 1`; events
        /// after the cursor may have been removed by retention (a possible gap).
        oldest: u64,
        /// Human-readable detail (every problem of a refused request).
        detail: Text,
    },
    /// Server → client (version 3), on a SUBSCRIBE_FROM's stream: one event of the log.
    LogEvent {
        /// The event's position in the node's event log: resume after it.
        cursor: u64,
        /// Unix time in milliseconds of the event (0 when unreadable).
        timestamp_ms: u64,
        /// False when the stored event cannot be read (its key was shredded, or it is
        /// damaged): `text` says why, and the cursor moves past it.
        readable: bool,
        /// The event as JSON (docs/events.md), or why it is unreadable.
        text: Text,
    },
}

/// Frame type bytes.
pub mod ty {
    #![allow(missing_docs)]
    pub const HELLO: u8 = 0x01;
    pub const HELLO_OK: u8 = 0x02;
    pub const ERROR: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const PONG: u8 = 0x05;
    pub const GOODBYE: u8 = 0x06;
    pub const SEND: u8 = 0x10;
    pub const ACCEPTED: u8 = 0x11;
    pub const REJECTED: u8 = 0x12;
    pub const REPORT: u8 = 0x13;
    pub const SUBSCRIBE: u8 = 0x20;
    pub const SUBSCRIBED: u8 = 0x21;
    pub const EVENT: u8 = 0x22;
    pub const DEVICE_CONTROL: u8 = 0x30;
    pub const DEVICE_CONTROL_RESULT: u8 = 0x31;
    pub const SUBSCRIBE_FROM: u8 = 0x23;
    pub const SUBSCRIBED_FROM: u8 = 0x24;
    pub const LOG_EVENT: u8 = 0x25;
}

/// Which side may send a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Only the client sends it.
    ClientToServer,
    /// Only the server sends it.
    ServerToClient,
    /// Either side.
    Both,
}

impl Frame {
    /// The type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Hello { .. } => ty::HELLO,
            Frame::HelloOk { .. } => ty::HELLO_OK,
            Frame::Error { .. } => ty::ERROR,
            Frame::Ping { .. } => ty::PING,
            Frame::Pong { .. } => ty::PONG,
            Frame::Goodbye { .. } => ty::GOODBYE,
            Frame::Send { .. } => ty::SEND,
            Frame::Accepted { .. } => ty::ACCEPTED,
            Frame::Rejected { .. } => ty::REJECTED,
            Frame::Report(_) => ty::REPORT,
            Frame::Subscribe { .. } => ty::SUBSCRIBE,
            Frame::Subscribed { .. } => ty::SUBSCRIBED,
            Frame::Event(_) => ty::EVENT,
            Frame::DeviceControl { .. } => ty::DEVICE_CONTROL,
            Frame::DeviceControlResult { .. } => ty::DEVICE_CONTROL_RESULT,
            Frame::SubscribeFrom { .. } => ty::SUBSCRIBE_FROM,
            Frame::SubscribedFrom { .. } => ty::SUBSCRIBED_FROM,
            Frame::LogEvent { .. } => ty::LOG_EVENT,
        }
    }

    /// The protocol version that introduced this frame (or its event kind). A peer that
    /// negotiated an older version must not send it, and treats receiving it as a
    /// protocol violation ([`crate::conn`]).
    pub fn since_version(&self) -> u16 {
        match self {
            Frame::DeviceControl { .. } | Frame::DeviceControlResult { .. } => 2,
            Frame::SubscribeFrom { .. } | Frame::SubscribedFrom { .. } | Frame::LogEvent { .. } => 3,
            Frame::Event(Event {
                kind: EventKind::LinkCode { .. } | EventKind::Receipt { .. },
                ..
            }) => 2,
            _ => 1,
        }
    }

    /// Upper-case name for logs.
    pub fn name(&self) -> &'static str {
        type_name(self.frame_type())
    }

    /// Who may send it.
    pub fn direction(&self) -> Direction {
        match self {
            Frame::Hello { .. }
            | Frame::Send { .. }
            | Frame::Subscribe { .. }
            | Frame::SubscribeFrom { .. }
            | Frame::DeviceControl { .. } => Direction::ClientToServer,
            Frame::HelloOk { .. }
            | Frame::Accepted { .. }
            | Frame::Rejected { .. }
            | Frame::Report(_)
            | Frame::Subscribed { .. }
            | Frame::Event(_)
            | Frame::DeviceControlResult { .. }
            | Frame::SubscribedFrom { .. }
            | Frame::LogEvent { .. } => Direction::ServerToClient,
            Frame::Error { .. } | Frame::Ping { .. } | Frame::Pong { .. } | Frame::Goodbye { .. } => {
                Direction::Both
            }
        }
    }
}

/// Name of a frame type byte, or `"UNKNOWN"`.
pub fn type_name(t: u8) -> &'static str {
    match t {
        ty::HELLO => "HELLO",
        ty::HELLO_OK => "HELLO_OK",
        ty::ERROR => "ERROR",
        ty::PING => "PING",
        ty::PONG => "PONG",
        ty::GOODBYE => "GOODBYE",
        ty::SEND => "SEND",
        ty::ACCEPTED => "ACCEPTED",
        ty::REJECTED => "REJECTED",
        ty::REPORT => "REPORT",
        ty::SUBSCRIBE => "SUBSCRIBE",
        ty::SUBSCRIBED => "SUBSCRIBED",
        ty::EVENT => "EVENT",
        ty::DEVICE_CONTROL => "DEVICE_CONTROL",
        ty::DEVICE_CONTROL_RESULT => "DEVICE_CONTROL_RESULT",
        ty::SUBSCRIBE_FROM => "SUBSCRIBE_FROM",
        ty::SUBSCRIBED_FROM => "SUBSCRIBED_FROM",
        ty::LOG_EVENT => "LOG_EVENT",
        _ => "UNKNOWN",
    }
}
