//! Journal records, their hand-written payload encoding and the checksummed frame.
//!
//! Frame: `len u32 LE | crc32c u32 LE | kind u8 | payload`, where `len` counts
//! `kind + payload` and the CRC covers `kind + payload`. Payload fields:
//! message ids are 16 raw bytes, integers are little-endian fixed width,
//! strings are a LEB128 length followed by UTF-8 bytes, byte blobs likewise. A new layout
//! of a record gets a new kind byte; decoders refuse unknown kinds.
//!
//! `Accepted` is written as kind 11 (kind 1 without `submitted_by` is still read). With a
//! [`RecordSealer`] configured, `Accepted` and `Inbound` are written as kinds 12 and 13:
//! their plain fields first, then one sealed blob holding the secret ones (see
//! [`crate::seal`]); their associated data is the kind byte and every payload byte before
//! the blob.

use crate::seal::{OpenFailure, RecordSealer, SealFailure};

/// Bytes before the kind byte: `len u32 | crc u32`.
pub const FRAME_HEADER: usize = 8;
/// Largest `len` a frame may carry (kind + payload), whatever the segment size.
pub const MAX_RECORD_LEN: usize = 16 << 20;

/// Gateway-assigned message id: the protocol's own type, so ids pass between the wire and
/// the journal without conversion.
pub use waping_protocol::MessageId;

/// What a message carries (mirrors `waping_protocol::Body` with owned strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Plain text.
    Text(String),
    /// Reference to media stored elsewhere.
    Media {
        /// URL or storage key.
        reference: String,
        /// MIME type.
        mime: String,
        /// Caption (may be empty).
        caption: String,
    },
}

/// A message the gateway accepted: everything needed to send it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// Gateway message id.
    pub id: MessageId,
    /// Workspace (tenant) name.
    pub workspace: String,
    /// Device (linked number) to send from.
    pub device: String,
    /// Client idempotency key, unique per workspace within the window.
    pub idempotency_key: String,
    /// Recipient address.
    pub recipient: String,
    /// Content.
    pub body: Body,
    /// Wall-clock acceptance time, unix milliseconds.
    pub accepted_at_ms: u64,
    /// Id of the API key that submitted it; empty when unknown (records written before the
    /// field existed).
    pub submitted_by: String,
}

/// A message received by a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// Stable id (see [`Record::Inbound`]).
    pub id: MessageId,
    /// Workspace (tenant) name.
    pub workspace: String,
    /// Receiving device.
    pub device: String,
    /// Sender address.
    pub from: String,
    /// WhatsApp's id of the message.
    pub upstream_id: String,
    /// Content.
    pub body: Body,
    /// When the gateway received it, unix milliseconds.
    pub received_at_ms: u64,
}

/// One journal record: a message accepted, or a state transition of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The message was accepted (written before the client gets ACCEPTED).
    Accepted(AcceptedMessage),
    /// An attempt to send it upstream started.
    Dispatched {
        /// Message.
        id: MessageId,
        /// Attempt number, 1 for the first.
        attempt: u32,
        /// When, unix ms.
        at_ms: u64,
    },
    /// Upstream took it (terminal).
    Sent {
        /// Message.
        id: MessageId,
        /// Upstream's id for it.
        upstream_id: String,
        /// When, unix ms.
        at_ms: u64,
    },
    /// Permanently failed and reported to the client (terminal).
    Failed {
        /// Message.
        id: MessageId,
        /// Error code reported.
        code: u16,
        /// When, unix ms.
        at_ms: u64,
    },
    /// Attempt failed; the next one is due at `due_at_ms`.
    RetryScheduled {
        /// Message.
        id: MessageId,
        /// The attempt that failed.
        attempt: u32,
        /// When the next attempt is due, unix ms.
        due_at_ms: u64,
        /// Error code of the failed attempt.
        last_code: u16,
    },
    /// Gave up: the message is a dead letter until replayed or purged.
    Dead {
        /// Message.
        id: MessageId,
        /// Attempts made.
        attempts: u32,
        /// Last error code.
        last_code: u16,
        /// Last error detail.
        last_detail: String,
        /// When, unix ms.
        at_ms: u64,
    },
    /// An operator replayed the dead letter: it is unfinished again.
    DeadReplayed {
        /// Message.
        id: MessageId,
        /// When, unix ms.
        at_ms: u64,
    },
    /// An operator purged the dead letter (terminal).
    DeadPurged {
        /// Message.
        id: MessageId,
    },
    /// A message WhatsApp delivered to a device, journaled before WhatsApp is acknowledged
    /// (a crash after the acknowledgement cannot lose it). `id` is derived from the device
    /// and WhatsApp's id, so a redelivery has the same one. Delivery to webhooks (the events
    /// issue) reads these; until then they are kept until compaction reclaims their segment.
    Inbound(InboundMessage),
    /// Written by compaction: keeps a finished message's idempotency key in the window.
    IdempotencyKept {
        /// Workspace.
        workspace: String,
        /// Key.
        idempotency_key: String,
        /// Message the key maps to.
        id: MessageId,
        /// When that message was accepted, unix ms.
        accepted_at_ms: u64,
    },
}

/// Kind bytes. Never reuse a number; a changed layout gets a new one.
pub(crate) mod kind {
    /// `Accepted` without `submitted_by` (read only).
    pub const ACCEPTED: u8 = 1;
    pub const DISPATCHED: u8 = 2;
    pub const SENT: u8 = 3;
    pub const FAILED: u8 = 4;
    pub const RETRY_SCHEDULED: u8 = 5;
    pub const DEAD: u8 = 6;
    pub const DEAD_REPLAYED: u8 = 7;
    pub const DEAD_PURGED: u8 = 8;
    pub const IDEMPOTENCY_KEPT: u8 = 9;
    pub const INBOUND: u8 = 10;
    /// `Accepted`, plaintext, with `submitted_by`.
    pub const ACCEPTED_V2: u8 = 11;
    /// `Accepted` with recipient and body sealed.
    pub const ACCEPTED_SEALED: u8 = 12;
    /// `Inbound` with sender, upstream id and body sealed.
    pub const INBOUND_SEALED: u8 = 13;

    /// Whether `k` is a layout that needs a sealer to read.
    pub fn is_sealed(k: u8) -> bool {
        k == ACCEPTED_SEALED || k == INBOUND_SEALED
    }
}

const BODY_TEXT: u8 = 0;
const BODY_MEDIA: u8 = 1;

fn put_body(out: &mut Vec<u8>, body: &Body) {
    match body {
        Body::Text(t) => {
            out.push(BODY_TEXT);
            put_str(out, t);
        }
        Body::Media {
            reference,
            mime,
            caption,
        } => {
            out.push(BODY_MEDIA);
            put_str(out, reference);
            put_str(out, mime);
            put_str(out, caption);
        }
    }
}

impl Record {
    /// The message this record is about.
    pub fn id(&self) -> MessageId {
        match self {
            Record::Accepted(a) => a.id,
            Record::Dispatched { id, .. }
            | Record::Sent { id, .. }
            | Record::Failed { id, .. }
            | Record::RetryScheduled { id, .. }
            | Record::Dead { id, .. }
            | Record::DeadReplayed { id, .. }
            | Record::DeadPurged { id }
            | Record::IdempotencyKept { id, .. } => *id,
            Record::Inbound(m) => m.id,
        }
    }

    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Accepted(_) => kind::ACCEPTED_V2,
            Record::Dispatched { .. } => kind::DISPATCHED,
            Record::Sent { .. } => kind::SENT,
            Record::Failed { .. } => kind::FAILED,
            Record::RetryScheduled { .. } => kind::RETRY_SCHEDULED,
            Record::Dead { .. } => kind::DEAD,
            Record::DeadReplayed { .. } => kind::DEAD_REPLAYED,
            Record::DeadPurged { .. } => kind::DEAD_PURGED,
            Record::IdempotencyKept { .. } => kind::IDEMPOTENCY_KEPT,
            Record::Inbound(_) => kind::INBOUND,
        }
    }

    /// Appends the framed record (header, kind, payload) to `out`; returns the frame length.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER]);
        out.push(self.kind());
        self.encode_payload(out);
        finish_frame(out, start)
    }

    /// Like [`Record::encode_into`], but `Accepted` and `Inbound` get their sealed layouts
    /// (kinds 12 and 13) with the secret fields sealed by `sealer`; `scratch` holds the
    /// plaintext meanwhile (reused across calls). On failure `out` is left as it was.
    pub(crate) fn encode_sealed_into(
        &self,
        sealer: &dyn RecordSealer,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<usize, SealFailure> {
        let start = out.len();
        scratch.clear();
        let workspace = match self {
            Record::Accepted(a) => {
                out.extend_from_slice(&[0u8; FRAME_HEADER]);
                out.push(kind::ACCEPTED_SEALED);
                out.extend_from_slice(&a.id.0);
                put_str(out, &a.workspace);
                put_str(out, &a.device);
                put_str(out, &a.idempotency_key);
                put_str(out, &a.submitted_by);
                out.extend_from_slice(&a.accepted_at_ms.to_le_bytes());
                put_str(scratch, &a.recipient);
                put_body(scratch, &a.body);
                &a.workspace
            }
            Record::Inbound(m) => {
                out.extend_from_slice(&[0u8; FRAME_HEADER]);
                out.push(kind::INBOUND_SEALED);
                out.extend_from_slice(&m.id.0);
                put_str(out, &m.workspace);
                put_str(out, &m.device);
                out.extend_from_slice(&m.received_at_ms.to_le_bytes());
                put_str(scratch, &m.from);
                put_str(scratch, &m.upstream_id);
                put_body(scratch, &m.body);
                &m.workspace
            }
            _ => return Ok(self.encode_into(out)),
        };
        match sealer.seal(workspace, &out[start + FRAME_HEADER..], scratch) {
            Ok(blob) => {
                put_bytes(out, &blob);
                Ok(finish_frame(out, start))
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// The framed record as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode_into(&mut v);
        v
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Accepted(a) => {
                out.extend_from_slice(&a.id.0);
                put_str(out, &a.workspace);
                put_str(out, &a.device);
                put_str(out, &a.idempotency_key);
                put_str(out, &a.recipient);
                put_body(out, &a.body);
                out.extend_from_slice(&a.accepted_at_ms.to_le_bytes());
                put_str(out, &a.submitted_by);
            }
            Record::Inbound(m) => {
                out.extend_from_slice(&m.id.0);
                put_str(out, &m.workspace);
                put_str(out, &m.device);
                put_str(out, &m.from);
                put_str(out, &m.upstream_id);
                put_body(out, &m.body);
                out.extend_from_slice(&m.received_at_ms.to_le_bytes());
            }
            Record::Dispatched { id, attempt, at_ms } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&attempt.to_le_bytes());
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
            Record::Sent {
                id,
                upstream_id,
                at_ms,
            } => {
                out.extend_from_slice(&id.0);
                put_str(out, upstream_id);
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
            Record::Failed { id, code, at_ms } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
            Record::RetryScheduled {
                id,
                attempt,
                due_at_ms,
                last_code,
            } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&attempt.to_le_bytes());
                out.extend_from_slice(&due_at_ms.to_le_bytes());
                out.extend_from_slice(&last_code.to_le_bytes());
            }
            Record::Dead {
                id,
                attempts,
                last_code,
                last_detail,
                at_ms,
            } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&attempts.to_le_bytes());
                out.extend_from_slice(&last_code.to_le_bytes());
                put_str(out, last_detail);
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
            Record::DeadReplayed { id, at_ms } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&at_ms.to_le_bytes());
            }
            Record::DeadPurged { id } => out.extend_from_slice(&id.0),
            Record::IdempotencyKept {
                workspace,
                idempotency_key,
                id,
                accepted_at_ms,
            } => {
                out.extend_from_slice(&id.0);
                put_str(out, workspace);
                put_str(out, idempotency_key);
                out.extend_from_slice(&accepted_at_ms.to_le_bytes());
            }
        }
    }

    /// Decodes `kind + payload` (the part of a frame the CRC covers). Sealed layouts are
    /// refused with [`DecodeError::Sealed`]: they need the journal's sealer to open.
    pub fn decode_body(body: &[u8]) -> Result<Record, DecodeError> {
        let (&k, payload) = body.split_first().ok_or(DecodeError::Truncated)?;
        let mut r = Reader { buf: payload };
        let rec = match k {
            kind::ACCEPTED | kind::ACCEPTED_V2 => {
                let id = r.id()?;
                let workspace = r.string()?;
                let device = r.string()?;
                let idempotency_key = r.string()?;
                let recipient = r.string()?;
                let body = r.body()?;
                let accepted_at_ms = r.u64()?;
                let submitted_by = if k == kind::ACCEPTED_V2 {
                    r.string()?
                } else {
                    String::new()
                };
                Record::Accepted(AcceptedMessage {
                    id,
                    workspace,
                    device,
                    idempotency_key,
                    recipient,
                    body,
                    accepted_at_ms,
                    submitted_by,
                })
            }
            kind::DISPATCHED => Record::Dispatched {
                id: r.id()?,
                attempt: r.u32()?,
                at_ms: r.u64()?,
            },
            kind::SENT => Record::Sent {
                id: r.id()?,
                upstream_id: r.string()?,
                at_ms: r.u64()?,
            },
            kind::FAILED => Record::Failed {
                id: r.id()?,
                code: r.u16()?,
                at_ms: r.u64()?,
            },
            kind::RETRY_SCHEDULED => Record::RetryScheduled {
                id: r.id()?,
                attempt: r.u32()?,
                due_at_ms: r.u64()?,
                last_code: r.u16()?,
            },
            kind::DEAD => Record::Dead {
                id: r.id()?,
                attempts: r.u32()?,
                last_code: r.u16()?,
                last_detail: r.string()?,
                at_ms: r.u64()?,
            },
            kind::DEAD_REPLAYED => Record::DeadReplayed {
                id: r.id()?,
                at_ms: r.u64()?,
            },
            kind::DEAD_PURGED => Record::DeadPurged { id: r.id()? },
            kind::INBOUND => Record::Inbound(InboundMessage {
                id: r.id()?,
                workspace: r.string()?,
                device: r.string()?,
                from: r.string()?,
                upstream_id: r.string()?,
                body: r.body()?,
                received_at_ms: r.u64()?,
            }),
            kind::IDEMPOTENCY_KEPT => {
                let id = r.id()?;
                Record::IdempotencyKept {
                    workspace: r.string()?,
                    idempotency_key: r.string()?,
                    id,
                    accepted_at_ms: r.u64()?,
                }
            }
            k if kind::is_sealed(k) => return Err(DecodeError::Sealed(k)),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.end()?;
        Ok(rec)
    }
}

/// A frame body decoded without opening anything.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// A plaintext layout.
    Plain(Record),
    /// A sealed `Accepted` (kind 12).
    SealedAccepted(SealedAccepted<'a>),
    /// A sealed `Inbound` (kind 13).
    SealedInbound(SealedInbound<'a>),
}

/// Decodes a frame body of any layout; sealed ones are checked for structure only.
pub(crate) fn decode(body: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    match body.first() {
        Some(&kind::ACCEPTED_SEALED) => SealedAccepted::parse(body).map(Decoded::SealedAccepted),
        Some(&kind::INBOUND_SEALED) => SealedInbound::parse(body).map(Decoded::SealedInbound),
        _ => Record::decode_body(body).map(Decoded::Plain),
    }
}

/// Why a record could not be read back with the sealer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// Malformed frame body or sealed plaintext.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The sealer refused.
    #[error(transparent)]
    Open(#[from] OpenFailure),
}

/// Decodes a frame body of any layout, opening sealed ones with `sealer`.
pub(crate) fn decode_opened(body: &[u8], sealer: Option<&dyn RecordSealer>) -> Result<Record, OpenError> {
    match (decode(body)?, sealer) {
        (Decoded::Plain(r), _) => Ok(r),
        (Decoded::SealedAccepted(s), Some(sealer)) => Ok(Record::Accepted(s.open(sealer)?)),
        (Decoded::SealedInbound(s), Some(sealer)) => Ok(Record::Inbound(s.open(sealer)?)),
        (_, None) => Err(OpenError::Decode(DecodeError::Sealed(body[0]))),
    }
}

/// The fields of an `Accepted` record of any layout that are never sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AcceptedHead<'a> {
    pub id: MessageId,
    pub workspace: &'a str,
    pub device: &'a str,
    pub idempotency_key: &'a str,
    pub submitted_by: &'a str,
    pub accepted_at_ms: u64,
}

impl AcceptedMessage {
    pub(crate) fn head(&self) -> AcceptedHead<'_> {
        AcceptedHead {
            id: self.id,
            workspace: &self.workspace,
            device: &self.device,
            idempotency_key: &self.idempotency_key,
            submitted_by: &self.submitted_by,
            accepted_at_ms: self.accepted_at_ms,
        }
    }
}

/// The plain fields of an `Accepted` frame body (kinds 1, 11, 12) without copying or opening
/// anything; `None` for other kinds. Compaction uses it to carry records verbatim.
pub(crate) fn accepted_head(body: &[u8]) -> Result<Option<AcceptedHead<'_>>, DecodeError> {
    let (&k, payload) = body.split_first().ok_or(DecodeError::Truncated)?;
    let mut r = Reader { buf: payload };
    match k {
        kind::ACCEPTED | kind::ACCEPTED_V2 => {
            let id = r.id()?;
            let workspace = r.str_ref()?;
            let device = r.str_ref()?;
            let idempotency_key = r.str_ref()?;
            r.skip_str()?; // recipient
            r.skip_body()?;
            let accepted_at_ms = r.u64()?;
            let submitted_by = if k == kind::ACCEPTED_V2 { r.str_ref()? } else { "" };
            Ok(Some(AcceptedHead {
                id,
                workspace,
                device,
                idempotency_key,
                submitted_by,
                accepted_at_ms,
            }))
        }
        kind::ACCEPTED_SEALED => SealedAccepted::parse(body).map(|s| Some(s.head)),
        _ => Ok(None),
    }
}

/// A sealed `Accepted` frame body, parsed but not opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedAccepted<'a> {
    pub head: AcceptedHead<'a>,
    aad: &'a [u8],
    blob: &'a [u8],
}

impl<'a> SealedAccepted<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: &body[1..] };
        let head = AcceptedHead {
            id: r.id()?,
            workspace: r.str_ref()?,
            device: r.str_ref()?,
            idempotency_key: r.str_ref()?,
            submitted_by: r.str_ref()?,
            accepted_at_ms: r.u64()?,
        };
        let aad = &body[..body.len() - r.buf.len()];
        let blob = r.bytes()?;
        r.end()?;
        Ok(SealedAccepted { head, aad, blob })
    }

    /// Opens the blob: the whole message.
    pub(crate) fn open(&self, sealer: &dyn RecordSealer) -> Result<AcceptedMessage, OpenError> {
        let plain = sealer.open(self.head.workspace, self.aad, self.blob)?;
        let mut r = Reader { buf: &plain };
        let recipient = r.string()?;
        let body = r.body()?;
        r.end()?;
        let h = &self.head;
        Ok(AcceptedMessage {
            id: h.id,
            workspace: h.workspace.to_owned(),
            device: h.device.to_owned(),
            idempotency_key: h.idempotency_key.to_owned(),
            recipient,
            body,
            accepted_at_ms: h.accepted_at_ms,
            submitted_by: h.submitted_by.to_owned(),
        })
    }
}

/// A sealed `Inbound` frame body, parsed but not opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedInbound<'a> {
    pub id: MessageId,
    pub workspace: &'a str,
    pub device: &'a str,
    pub received_at_ms: u64,
    aad: &'a [u8],
    blob: &'a [u8],
}

impl<'a> SealedInbound<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: &body[1..] };
        let id = r.id()?;
        let workspace = r.str_ref()?;
        let device = r.str_ref()?;
        let received_at_ms = r.u64()?;
        let aad = &body[..body.len() - r.buf.len()];
        let blob = r.bytes()?;
        r.end()?;
        Ok(SealedInbound {
            id,
            workspace,
            device,
            received_at_ms,
            aad,
            blob,
        })
    }

    /// Opens the blob: the whole message.
    pub(crate) fn open(&self, sealer: &dyn RecordSealer) -> Result<InboundMessage, OpenError> {
        let plain = sealer.open(self.workspace, self.aad, self.blob)?;
        let mut r = Reader { buf: &plain };
        let from = r.string()?;
        let upstream_id = r.string()?;
        let body = r.body()?;
        r.end()?;
        Ok(InboundMessage {
            id: self.id,
            workspace: self.workspace.to_owned(),
            device: self.device.to_owned(),
            from,
            upstream_id,
            body,
            received_at_ms: self.received_at_ms,
        })
    }
}

/// Frames `body` (kind + payload) into `out` as written by [`Record::encode_into`]; used to
/// carry a record forward byte for byte.
pub(crate) fn frame_into(out: &mut Vec<u8>, body: &[u8]) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(body);
    finish_frame(out, start)
}

/// Fills in the header of the frame that starts at `start` and runs to the end of `out`.
fn finish_frame(out: &mut [u8], start: usize) -> usize {
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Why a frame's body did not decode (its CRC was fine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field ran past the end.
    #[error("truncated payload")]
    Truncated,
    /// A string was not UTF-8.
    #[error("string is not UTF-8")]
    Utf8,
    /// Unknown kind byte (written by a newer version?).
    #[error("unknown record kind {0} (written by a newer version?)")]
    UnknownKind(u8),
    /// Unknown body variant.
    #[error("unknown body tag {0}")]
    BadBodyTag(u8),
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    /// A length prefix is malformed.
    #[error("bad length prefix")]
    BadLength,
    /// A sealed layout (kind 12 or 13): it needs the journal's sealer to be read.
    #[error("record kind {0} is sealed and needs the sealer to be read")]
    Sealed(u8),
}

/// Result of checking one frame at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A frame whose CRC matches: `body` is `kind + payload`, `total` the frame length.
    Ok { body: &'a [u8], total: usize },
    /// Fewer bytes than the header, or than the length field announces.
    Short { len: Option<usize> },
    /// The length field is zero or larger than allowed.
    BadLen { len: usize },
    /// The checksum does not match.
    BadCrc { len: usize },
}

/// Checks the frame at the start of `buf` (`max_len` bounds the length field).
pub(crate) fn check_frame(buf: &[u8], max_len: usize) -> Frame<'_> {
    if buf.len() < FRAME_HEADER {
        return Frame::Short { len: None };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 || len > max_len {
        return Frame::BadLen { len };
    }
    if buf.len() - FRAME_HEADER < len {
        return Frame::Short { len: Some(len) };
    }
    let body = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if crc32c::crc32c(body) != crc {
        return Frame::BadCrc { len };
    }
    Frame::Ok {
        body,
        total: FRAME_HEADER + len,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let mut n = b.len() as u64;
    loop {
        let x = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(x);
            break;
        }
        out.push(x | 0x80);
    }
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn id(&mut self) -> Result<MessageId, DecodeError> {
        let b = self.take(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(MessageId(a))
    }
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadLength)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::BadLength)?;
        self.take(n)
    }
    fn str_ref(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::Utf8)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        self.str_ref().map(str::to_owned)
    }
    /// Skips a string without checking it (its frame's checksum was verified).
    fn skip_str(&mut self) -> Result<(), DecodeError> {
        self.bytes().map(|_| ())
    }
    fn skip_body(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            BODY_TEXT => self.skip_str(),
            BODY_MEDIA => {
                self.skip_str()?;
                self.skip_str()?;
                self.skip_str()
            }
            t => Err(DecodeError::BadBodyTag(t)),
        }
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }

    fn body(&mut self) -> Result<Body, DecodeError> {
        Ok(match self.u8()? {
            BODY_TEXT => Body::Text(self.string()?),
            BODY_MEDIA => Body::Media {
                reference: self.string()?,
                mime: self.string()?,
                caption: self.string()?,
            },
            t => return Err(DecodeError::BadBodyTag(t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing_tests::TestSealer;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = MessageId> {
        any::<[u8; 16]>().prop_map(MessageId)
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            ".{0,300}".prop_map(Body::Text),
            (".{0,40}", "[a-z/]{0,20}", ".{0,40}").prop_map(|(reference, mime, caption)| Body::Media {
                reference,
                mime,
                caption
            }),
        ]
    }

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                arb_id(),
                ".{0,20}",
                ".{0,20}",
                ".{0,40}",
                ".{0,20}",
                arb_body(),
                any::<u64>(),
                ".{0,20}"
            )
                .prop_map(
                    |(
                        id,
                        workspace,
                        device,
                        idempotency_key,
                        recipient,
                        body,
                        accepted_at_ms,
                        submitted_by,
                    )| {
                        Record::Accepted(AcceptedMessage {
                            id,
                            workspace,
                            device,
                            idempotency_key,
                            recipient,
                            body,
                            accepted_at_ms,
                            submitted_by,
                        })
                    }
                ),
            (arb_id(), any::<u32>(), any::<u64>()).prop_map(|(id, attempt, at_ms)| Record::Dispatched {
                id,
                attempt,
                at_ms
            }),
            (arb_id(), ".{0,30}", any::<u64>()).prop_map(|(id, upstream_id, at_ms)| Record::Sent {
                id,
                upstream_id,
                at_ms
            }),
            (arb_id(), any::<u16>(), any::<u64>()).prop_map(|(id, code, at_ms)| Record::Failed {
                id,
                code,
                at_ms
            }),
            (arb_id(), any::<u32>(), any::<u64>(), any::<u16>()).prop_map(
                |(id, attempt, due_at_ms, last_code)| Record::RetryScheduled {
                    id,
                    attempt,
                    due_at_ms,
                    last_code
                }
            ),
            (arb_id(), any::<u32>(), any::<u16>(), ".{0,200}", any::<u64>()).prop_map(
                |(id, attempts, last_code, last_detail, at_ms)| Record::Dead {
                    id,
                    attempts,
                    last_code,
                    last_detail,
                    at_ms
                }
            ),
            (arb_id(), any::<u64>()).prop_map(|(id, at_ms)| Record::DeadReplayed { id, at_ms }),
            arb_id().prop_map(|id| Record::DeadPurged { id }),
            (
                arb_id(),
                ".{0,20}",
                ".{0,20}",
                ".{0,20}",
                ".{0,40}",
                ".{0,200}",
                any::<u64>()
            )
                .prop_map(
                    |(id, workspace, device, from, upstream_id, text, received_at_ms)| Record::Inbound(
                        InboundMessage {
                            id,
                            workspace,
                            device,
                            from,
                            upstream_id,
                            body: Body::Text(text),
                            received_at_ms,
                        }
                    )
                ),
            (".{0,20}", ".{0,40}", arb_id(), any::<u64>()).prop_map(
                |(workspace, idempotency_key, id, accepted_at_ms)| Record::IdempotencyKept {
                    workspace,
                    idempotency_key,
                    id,
                    accepted_at_ms
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_kind_round_trips(rec in arb_record()) {
            let bytes = rec.encode();
            match check_frame(&bytes, MAX_RECORD_LEN) {
                Frame::Ok { body, total } => {
                    prop_assert_eq!(total, bytes.len());
                    prop_assert_eq!(Record::decode_body(body).unwrap(), rec);
                }
                other => prop_assert!(false, "frame not ok: {:?}", other),
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(rec in arb_record(), bit in any::<prop::sample::Index>()) {
            let mut bytes = rec.encode();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            let whole = matches!(check_frame(&bytes, MAX_RECORD_LEN), Frame::Ok { total, .. } if total == bytes.len());
            prop_assert!(!whole, "flipped bit {} went unnoticed", i);
        }

        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode_body(&body);
        }
    }

    #[test]
    fn every_kind_is_covered() {
        // Keeps the proptest strategy honest: one example per kind byte written in plaintext.
        let id = MessageId([7; 16]);
        let recs = [
            Record::Accepted(AcceptedMessage {
                id,
                workspace: "w".into(),
                device: "d".into(),
                idempotency_key: "k".into(),
                recipient: "r".into(),
                body: Body::Text("hi".into()),
                accepted_at_ms: 1,
                submitted_by: "key-1".into(),
            }),
            Record::Dispatched {
                id,
                attempt: 1,
                at_ms: 2,
            },
            Record::Sent {
                id,
                upstream_id: "u".into(),
                at_ms: 3,
            },
            Record::Failed {
                id,
                code: 4,
                at_ms: 4,
            },
            Record::RetryScheduled {
                id,
                attempt: 1,
                due_at_ms: 5,
                last_code: 6,
            },
            Record::Dead {
                id,
                attempts: 3,
                last_code: 7,
                last_detail: "x".into(),
                at_ms: 8,
            },
            Record::DeadReplayed { id, at_ms: 9 },
            Record::DeadPurged { id },
            Record::IdempotencyKept {
                workspace: "w".into(),
                idempotency_key: "k".into(),
                id,
                accepted_at_ms: 10,
            },
            Record::Inbound(InboundMessage {
                id,
                workspace: "w".into(),
                device: "d".into(),
                from: "49151".into(),
                upstream_id: "3EB0".into(),
                body: Body::Media {
                    reference: "r".into(),
                    mime: "image/png".into(),
                    caption: "c".into(),
                },
                received_at_ms: 11,
            }),
        ];
        let kinds = [11, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        for (r, k) in recs.iter().zip(kinds) {
            assert_eq!(r.kind(), k);
            assert_eq!(r.id(), id);
            let b = r.encode();
            let Frame::Ok { body, .. } = check_frame(&b, MAX_RECORD_LEN) else {
                panic!()
            };
            assert_eq!(&Record::decode_body(body).unwrap(), r);
        }
        assert_eq!(Record::decode_body(&[42]), Err(DecodeError::UnknownKind(42)));
    }

    /// Kind 1 as written before `submitted_by` existed (built by hand: the encoder no longer
    /// writes it).
    fn accepted_v1(a: &AcceptedMessage) -> Vec<u8> {
        let mut body = vec![kind::ACCEPTED];
        body.extend_from_slice(&a.id.0);
        for s in [&a.workspace, &a.device, &a.idempotency_key, &a.recipient] {
            put_str(&mut body, s);
        }
        put_body(&mut body, &a.body);
        body.extend_from_slice(&a.accepted_at_ms.to_le_bytes());
        body
    }

    #[test]
    fn old_accepted_layout_decodes_with_an_empty_submitter() {
        let a = AcceptedMessage {
            id: MessageId([3; 16]),
            workspace: "w".into(),
            device: "d".into(),
            idempotency_key: "k".into(),
            recipient: "49151".into(),
            body: Body::Media {
                reference: "s3://b/o".into(),
                mime: "image/png".into(),
                caption: "c".into(),
            },
            accepted_at_ms: 5,
            submitted_by: "ignored".into(),
        };
        let body = accepted_v1(&a);
        let want = AcceptedMessage {
            submitted_by: String::new(),
            ..a.clone()
        };
        assert_eq!(Record::decode_body(&body), Ok(Record::Accepted(want.clone())));
        let head = accepted_head(&body).unwrap().unwrap();
        assert_eq!(head, want.head());
        // The new layout carries the submitter; its head parses the same way.
        let v2 = Record::Accepted(a.clone()).encode();
        assert_eq!(accepted_head(&v2[FRAME_HEADER..]).unwrap().unwrap(), a.head());
    }

    fn arb_sealable() -> impl Strategy<Value = Record> {
        arb_record().prop_filter("Accepted or Inbound", |r| {
            matches!(r, Record::Accepted(_) | Record::Inbound(_))
        })
    }

    proptest! {
        #[test]
        fn sealed_layouts_round_trip(rec in arb_sealable()) {
            let (mut out, mut plain) = (Vec::new(), Vec::new());
            let n = rec.encode_sealed_into(&TestSealer::default(), &mut out, &mut plain).unwrap();
            prop_assert_eq!(n, out.len());
            let Frame::Ok { body, .. } = check_frame(&out, MAX_RECORD_LEN) else {
                panic!("bad frame")
            };
            prop_assert!(kind::is_sealed(body[0]));
            prop_assert_eq!(Record::decode_body(body), Err(DecodeError::Sealed(body[0])));
            prop_assert_eq!(decode_opened(body, Some(&TestSealer::default())), Ok(rec.clone()));
            if let Record::Accepted(a) = &rec {
                prop_assert_eq!(accepted_head(body).unwrap(), Some(a.head()));
            }
        }

        #[test]
        fn sealed_blob_or_plain_field_edits_do_not_open(rec in arb_sealable(), at in any::<prop::sample::Index>()) {
            let (mut out, mut plain) = (Vec::new(), Vec::new());
            rec.encode_sealed_into(&TestSealer::default(), &mut out, &mut plain).unwrap();
            // Flip one bit after the kind byte and re-frame, as an attacker fixing the CRC would.
            let mut body = out[FRAME_HEADER..].to_vec();
            let i = 1 + at.index(body.len() - 1);
            body[i] ^= 0x40;
            prop_assert!(decode_opened(&body, Some(&TestSealer::default())).is_err());
        }
    }

    #[test]
    fn a_failing_sealer_leaves_the_buffer_as_it_was() {
        #[derive(Debug)]
        struct Refuses;
        impl RecordSealer for Refuses {
            fn seal(&self, _: &str, _: &[u8], _: &[u8]) -> Result<Vec<u8>, SealFailure> {
                Err(SealFailure("no key".into()))
            }
            fn open(&self, _: &str, _: &[u8], _: &[u8]) -> Result<Vec<u8>, OpenFailure> {
                Err(OpenFailure::KeyGone)
            }
        }
        let rec = Record::Inbound(InboundMessage {
            id: MessageId([1; 16]),
            workspace: "w".into(),
            device: "d".into(),
            from: "49151".into(),
            upstream_id: "3EB0".into(),
            body: Body::Text("hi".into()),
            received_at_ms: 1,
        });
        let mut out = b"before".to_vec();
        let e = rec
            .encode_sealed_into(&Refuses, &mut out, &mut Vec::new())
            .unwrap_err();
        assert_eq!(e, SealFailure("no key".into()));
        assert_eq!(out, b"before");
        // Transitions are never sealed.
        let sent = Record::Sent {
            id: MessageId([1; 16]),
            upstream_id: "u".into(),
            at_ms: 2,
        };
        let n = sent
            .encode_sealed_into(&Refuses, &mut out, &mut Vec::new())
            .unwrap();
        assert_eq!(&out[6..], &sent.encode()[..]);
        assert_eq!(n, out.len() - 6);
    }
}
