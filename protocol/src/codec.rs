//! Encoder and decoder: bytes in, frames out, no IO.
//!
//! Header (6 bytes): `length: u32 BE` (body bytes, header excluded),
//! `type: u8`, `flags: u8` (must be 0 in v1). Integers are big-endian;
//! text is a length prefix (`u8`, `u16` or `u32`, per field) and UTF-8 bytes.
//! The decoder checks layout only (every length fits, no trailing bytes,
//! valid UTF-8, known enum bytes); semantic limits such as the idempotency
//! key's 128 bytes are checked by [`crate::validate`] so that a bad field
//! rejects one message instead of closing the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ErrorCode;
use crate::frame::*;
use crate::limits;

/// Why bytes could not be decoded. Every variant is the client's fault and fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Declared body length above the limit.
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Declared length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// Type byte not defined.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// Flag bits set that v1 does not define.
    #[error("{frame} frame has unknown flags 0x{flags:02x}")]
    UnknownFlags {
        /// Frame name.
        frame: &'static str,
        /// The flags byte.
        flags: u8,
    },
    /// The body ended inside a field.
    #[error("{frame} frame truncated in field `{field}`")]
    Truncated {
        /// Frame name.
        frame: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// The body continues after the last field.
    #[error("{frame} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// Frame name.
        frame: &'static str,
        /// How many.
        extra: usize,
    },
    /// A text field is not UTF-8.
    #[error("{frame} frame field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Frame name.
        frame: &'static str,
        /// Field.
        field: &'static str,
    },
    /// Body kind byte not defined.
    #[error("unknown body kind 0x{0:02x}")]
    UnknownBodyKind(u8),
    /// An enum-like field holds a value v1 does not define.
    #[error("{frame} frame field `{field}` has invalid value {value}")]
    InvalidValue {
        /// Frame name.
        frame: &'static str,
        /// Field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
}

impl DecodeError {
    /// The catalogue code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            DecodeError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME_TYPE,
            DecodeError::UnknownFlags { .. } => ErrorCode::UNKNOWN_FLAGS,
            DecodeError::InvalidUtf8 { .. } => ErrorCode::INVALID_UTF8,
            DecodeError::UnknownBodyKind(_) => ErrorCode::UNKNOWN_BODY_KIND,
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::InvalidValue { .. } => ErrorCode::MALFORMED_FRAME,
        }
    }
}

/// Why a frame could not be encoded (a caller bug: a field is wider than its
/// length prefix or holds a value the decoder refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A text field does not fit its length prefix.
    #[error("field `{field}` is {len} bytes, its prefix allows {max}")]
    FieldTooLong {
        /// Field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Largest encodable.
        max: usize,
    },
    /// A field holds a value the decoder would refuse (a REPORT whose status
    /// and code disagree, a successful DEVICE_CONTROL_RESULT without a state,
    /// a RECEIPT with too many ids), so the frame must not be sent.
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue {
        /// Field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// The whole body exceeds the protocol's hard maximum.
    #[error("frame body of {len} bytes exceeds the hard maximum of {max}")]
    FrameTooLarge {
        /// Body length.
        len: usize,
        /// [`limits::HARD_MAX_FRAME_LEN`].
        max: u32,
    },
}

/// Header length in bytes.
pub const HEADER_LEN: usize = 6;

/// Stateless-except-for-limits frame decoder.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_frame_len: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(limits::DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder {
    /// A decoder refusing bodies above `max_frame_len` (clamped to the hard maximum).
    pub fn new(max_frame_len: u32) -> Self {
        Decoder {
            max_frame_len: max_frame_len.min(limits::HARD_MAX_FRAME_LEN),
        }
    }

    /// The limit in force.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Takes one frame off the front of `buf`.
    ///
    /// `Ok(Some(frame))`: exactly that frame's bytes were removed from the front
    /// of `buf`. `Ok(None)`: not enough bytes yet; `buf`'s contents are untouched
    /// (its capacity may grow to fit the announced frame).
    ///
    /// The header is checked as soon as its 6 bytes are there, in this order:
    /// length (against [`Decoder::max_frame_len`]), type, flags; so an
    /// oversized or unknown frame is refused before its body arrives and a peer
    /// cannot make us buffer it. The body is checked once it is complete.
    ///
    /// Errors are sticky: after an `Err` the contents of `buf` are exactly as
    /// before the call, so calling again returns the same error and a bad
    /// frame is never skipped. Every error is fatal for the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let t = buf[4];
        let flags = buf[5];
        if len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let name = type_name(t);
        if name == "UNKNOWN" {
            return Err(DecodeError::UnknownType(t));
        }
        if flags != 0 {
            return Err(DecodeError::UnknownFlags { frame: name, flags });
        }
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let whole = buf.split_to(total).freeze();
        match decode_body(t, whole.slice(HEADER_LEN..)) {
            Ok(frame) => Ok(Some(frame)),
            Err(e) => {
                // Put the frame back in front of what followed it, so `buf` is as it
                // was. This copies, but only on this path, which ends the connection.
                let rest = std::mem::take(buf);
                buf.reserve(whole.len() + rest.len());
                buf.extend_from_slice(&whole);
                buf.extend_from_slice(&rest);
                Err(e)
            }
        }
    }
}

/// Decodes a body whose header was already read (type known, flags zero).
pub fn decode_body(t: u8, body: Bytes) -> Result<Frame, DecodeError> {
    let mut r = Reader {
        buf: body,
        frame: type_name(t),
    };
    let frame = match t {
        ty::HELLO => Frame::Hello {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            api_key: r.str8("api_key")?,
            client_name: r.str8("client_name")?,
        },
        ty::HELLO_OK => Frame::HelloOk {
            version: r.u16("version")?,
            max_frame_len: r.u32("max_frame_len")?,
            max_in_flight: r.u32("max_in_flight")?,
            max_streams: r.u16("max_streams")?,
            idle_timeout_ms: r.u32("idle_timeout_ms")?,
            connection_id: r.u64("connection_id")?,
            server: r.str8("server")?,
        },
        ty::ERROR => Frame::Error {
            code: ErrorCode(r.u16("code")?),
            retry_after_ms: r.u32("retry_after_ms")?,
            message: r.str16("message")?,
        },
        ty::PING => Frame::Ping {
            nonce: r.u64("nonce")?,
        },
        ty::PONG => Frame::Pong {
            nonce: r.u64("nonce")?,
        },
        ty::GOODBYE => Frame::Goodbye {
            code: ErrorCode(r.u16("code")?),
            message: r.str16("message")?,
        },
        ty::SEND => Frame::Send {
            seq: r.u64("seq")?,
            idempotency_key: r.str8("idempotency_key")?,
            device_id: r.str8("device_id")?,
            recipient: r.str8("recipient")?,
            body: r.body()?,
        },
        ty::ACCEPTED => Frame::Accepted {
            seq: r.u64("seq")?,
            message_id: r.id("message_id")?,
        },
        ty::REJECTED => Frame::Rejected {
            seq: r.u64("seq")?,
            code: ErrorCode(r.u16("code")?),
            retry_after_ms: r.u32("retry_after_ms")?,
            reason: r.str16("reason")?,
        },
        ty::REPORT => Frame::Report(r.report()?),
        ty::SUBSCRIBE => Frame::Subscribe { mask: r.u32("mask")? },
        ty::SUBSCRIBED => Frame::Subscribed { mask: r.u32("mask")? },
        ty::EVENT => Frame::Event(r.event()?),
        ty::DEVICE_CONTROL => Frame::DeviceControl {
            req: r.u64("req")?,
            device_id: r.str8("device_id")?,
            action: r.action()?,
        },
        ty::DEVICE_CONTROL_RESULT => {
            let req = r.u64("req")?;
            let code = ErrorCode(r.u16("code")?);
            let b = r.u8("state")?;
            let state = match b {
                0 => None,
                b => Some(r.device_state(b)?),
            };
            // Success always says the state the device is in; a bare "ok" would leave
            // clients guessing.
            if code.0 == 0 && state.is_none() {
                return Err(r.invalid("state", 0));
            }
            Frame::DeviceControlResult {
                req,
                code,
                state,
                detail: r.str16("detail")?,
            }
        }
        ty::SUBSCRIBE_FROM => {
            let has = r.u8("has_cursor")?;
            let cursor = r.u64("cursor")?;
            // One encoding per request: no cursor is written as 0 with the flag clear.
            let cursor = match (has, cursor) {
                (0, 0) => None,
                (0, c) => return Err(r.invalid("cursor", c)),
                (1, c) => Some(c),
                (h, _) => return Err(r.invalid("has_cursor", h.into())),
            };
            Frame::SubscribeFrom {
                cursor,
                types: r.str16("types")?,
                devices: r.str16("devices")?,
            }
        }
        ty::SUBSCRIBED_FROM => Frame::SubscribedFrom {
            code: ErrorCode(r.u16("code")?),
            cursor: r.u64("cursor")?,
            oldest: r.u64("oldest")?,
            detail: r.str16("detail")?,
        },
        ty::LOG_EVENT => {
            let cursor = r.u64("cursor")?;
            let timestamp_ms = r.u64("timestamp_ms")?;
            let readable = match r.u8("readable")? {
                0 => false,
                1 => true,
                v => return Err(r.invalid("readable", v.into())),
            };
            Frame::LogEvent {
                cursor,
                timestamp_ms,
                readable,
                text: r.str32("text")?,
            }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::TrailingBytes {
            frame: r.frame,
            extra: r.buf.remaining(),
        });
    }
    Ok(frame)
}

struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated {
                frame: self.frame,
                field,
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }
    fn id(&mut self, field: &'static str) -> Result<MessageId, DecodeError> {
        self.need(16, field)?;
        let mut id = [0u8; 16];
        self.buf.copy_to_slice(&mut id);
        Ok(MessageId(id))
    }
    fn text(&mut self, len: usize, field: &'static str) -> Result<Text, DecodeError> {
        self.need(len, field)?;
        let b = self.buf.split_to(len);
        Text::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 {
            frame: self.frame,
            field,
        })
    }
    fn str8(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        let n = self.u8(field)? as usize;
        self.text(n, field)
    }
    fn str16(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        let n = self.u16(field)? as usize;
        self.text(n, field)
    }
    fn str32(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        let n = self.u32(field)? as usize;
        self.text(n, field)
    }
    fn invalid(&self, field: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidValue {
            frame: self.frame,
            field,
            value,
        }
    }
    fn device_state(&self, b: u8) -> Result<DeviceState, DecodeError> {
        DeviceState::from_u8(b).ok_or(self.invalid("state", b.into()))
    }
    fn action(&mut self) -> Result<DeviceAction, DecodeError> {
        Ok(match self.u8("action")? {
            ACTION_LINK => DeviceAction::Link(match self.u8("link_method")? {
                LINK_QR => LinkMethod::Qr,
                LINK_PAIRING_CODE => LinkMethod::PairingCode {
                    phone: self.str8("phone")?,
                },
                v => return Err(self.invalid("link_method", v.into())),
            }),
            ACTION_UNLINK => DeviceAction::Unlink,
            ACTION_DISABLE => DeviceAction::Disable,
            ACTION_ENABLE => DeviceAction::Enable,
            ACTION_STATUS => DeviceAction::Status,
            v => return Err(self.invalid("action", v.into())),
        })
    }
    fn body(&mut self) -> Result<Body, DecodeError> {
        match self.u8("body_kind")? {
            BODY_TEXT => Ok(Body::Text(self.str32("text")?)),
            BODY_MEDIA => Ok(Body::Media {
                reference: self.str16("media_reference")?,
                mime: self.str8("media_mime")?,
                caption: self.str32("caption")?,
            }),
            k => Err(DecodeError::UnknownBodyKind(k)),
        }
    }
    fn report(&mut self) -> Result<DeliveryReport, DecodeError> {
        let message_id = self.id("message_id")?;
        let seq = self.u64("seq")?;
        let status = match self.u8("status")? {
            1 => DeliveryStatus::Sent,
            2 => DeliveryStatus::Failed,
            3 => DeliveryStatus::Deferred,
            v => {
                return Err(DecodeError::InvalidValue {
                    frame: self.frame,
                    field: "status",
                    value: v.into(),
                });
            }
        };
        let code = ErrorCode(self.u16("code")?);
        // A report is either a success with code 0 or a failure with a real code;
        // anything else would let two clients read the same bytes differently.
        if (status == DeliveryStatus::Sent) != (code.0 == 0) {
            return Err(DecodeError::InvalidValue {
                frame: self.frame,
                field: "code",
                value: code.0.into(),
            });
        }
        Ok(DeliveryReport {
            message_id,
            seq,
            status,
            code,
            timestamp_ms: self.u64("timestamp_ms")?,
            upstream_id: self.str8("upstream_id")?,
            detail: self.str16("detail")?,
        })
    }
    fn event(&mut self) -> Result<Event, DecodeError> {
        let seq = self.u64("seq")?;
        let timestamp_ms = self.u64("timestamp_ms")?;
        let kind = match self.u8("event_kind")? {
            EVENT_REPORT => EventKind::Report {
                device_id: self.str8("device_id")?,
                report: self.report()?,
            },
            EVENT_INBOUND => EventKind::Inbound {
                device_id: self.str8("device_id")?,
                from: self.str8("from")?,
                upstream_id: self.str8("upstream_id")?,
                body: self.body()?,
            },
            EVENT_DEVICE_STATE => {
                let device_id = self.str8("device_id")?;
                let b = self.u8("state")?;
                let state = self.device_state(b)?;
                EventKind::DeviceState {
                    device_id,
                    state,
                    detail: self.str16("detail")?,
                }
            }
            EVENT_LAGGED => EventKind::Lagged {
                missed: self.u64("missed")?,
            },
            EVENT_LINK_CODE => {
                let device_id = self.str8("device_id")?;
                let b = self.u8("code_kind")?;
                let kind = LinkCodeKind::from_u8(b).ok_or(self.invalid("code_kind", b.into()))?;
                EventKind::LinkCode {
                    device_id,
                    kind,
                    code: self.str16("code")?,
                    valid_for_ms: self.u32("valid_for_ms")?,
                }
            }
            EVENT_RECEIPT => {
                let device_id = self.str8("device_id")?;
                let from = self.str8("from")?;
                let b = self.u8("receipt_status")?;
                let status = ReceiptStatus::from_u8(b).ok_or(self.invalid("receipt_status", b.into()))?;
                let n = self.u16("upstream_id_count")?;
                if usize::from(n) > limits::MAX_RECEIPT_IDS {
                    return Err(self.invalid("upstream_id_count", n.into()));
                }
                let mut upstream_ids = Vec::with_capacity(n.into());
                for _ in 0..n {
                    upstream_ids.push(self.str8("upstream_id")?);
                }
                EventKind::Receipt {
                    device_id,
                    from,
                    upstream_ids,
                    status,
                }
            }
            v => {
                return Err(DecodeError::InvalidValue {
                    frame: self.frame,
                    field: "event_kind",
                    value: v.into(),
                });
            }
        };
        Ok(Event {
            seq,
            timestamp_ms,
            kind,
        })
    }
}

const BODY_TEXT: u8 = 0x01;
const BODY_MEDIA: u8 = 0x02;
const EVENT_REPORT: u8 = 0x01;
const EVENT_INBOUND: u8 = 0x02;
const EVENT_DEVICE_STATE: u8 = 0x03;
const EVENT_LAGGED: u8 = 0x04;
const EVENT_LINK_CODE: u8 = 0x05;
const EVENT_RECEIPT: u8 = 0x06;
const ACTION_LINK: u8 = 0x01;
const ACTION_UNLINK: u8 = 0x02;
const ACTION_DISABLE: u8 = 0x03;
const ACTION_ENABLE: u8 = 0x04;
const ACTION_STATUS: u8 = 0x05;
const LINK_QR: u8 = 0x01;
const LINK_PAIRING_CODE: u8 = 0x02;

/// Appends the encoding of `frame` to `dst`.
///
/// On error `dst` is restored to its previous length.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let start = dst.len();
    let r = encode_inner(frame, dst, start);
    if r.is_err() {
        dst.truncate(start);
    }
    r
}

fn encode_inner(frame: &Frame, dst: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    dst.reserve(HEADER_LEN + 64);
    dst.put_u32(0); // patched below once the body length is known
    dst.put_u8(frame.frame_type());
    dst.put_u8(0);
    match frame {
        Frame::Hello {
            min_version,
            max_version,
            api_key,
            client_name,
        } => {
            dst.put_u16(*min_version);
            dst.put_u16(*max_version);
            put_str8(dst, api_key, "api_key")?;
            put_str8(dst, client_name, "client_name")?;
        }
        Frame::HelloOk {
            version,
            max_frame_len,
            max_in_flight,
            max_streams,
            idle_timeout_ms,
            connection_id,
            server,
        } => {
            dst.put_u16(*version);
            dst.put_u32(*max_frame_len);
            dst.put_u32(*max_in_flight);
            dst.put_u16(*max_streams);
            dst.put_u32(*idle_timeout_ms);
            dst.put_u64(*connection_id);
            put_str8(dst, server, "server")?;
        }
        Frame::Error {
            code,
            retry_after_ms,
            message,
        } => {
            dst.put_u16(code.0);
            dst.put_u32(*retry_after_ms);
            put_str16(dst, message, "message")?;
        }
        Frame::Ping { nonce } | Frame::Pong { nonce } => dst.put_u64(*nonce),
        Frame::Goodbye { code, message } => {
            dst.put_u16(code.0);
            put_str16(dst, message, "message")?;
        }
        Frame::Send {
            seq,
            idempotency_key,
            device_id,
            recipient,
            body,
        } => {
            dst.put_u64(*seq);
            put_str8(dst, idempotency_key, "idempotency_key")?;
            put_str8(dst, device_id, "device_id")?;
            put_str8(dst, recipient, "recipient")?;
            put_body(dst, body)?;
        }
        Frame::Accepted { seq, message_id } => {
            dst.put_u64(*seq);
            dst.put_slice(&message_id.0);
        }
        Frame::Rejected {
            seq,
            code,
            retry_after_ms,
            reason,
        } => {
            dst.put_u64(*seq);
            dst.put_u16(code.0);
            dst.put_u32(*retry_after_ms);
            put_str16(dst, reason, "reason")?;
        }
        Frame::Report(r) => put_report(dst, r)?,
        Frame::Subscribe { mask } | Frame::Subscribed { mask } => dst.put_u32(*mask),
        Frame::Event(e) => {
            dst.put_u64(e.seq);
            dst.put_u64(e.timestamp_ms);
            match &e.kind {
                EventKind::Report { device_id, report } => {
                    dst.put_u8(EVENT_REPORT);
                    put_str8(dst, device_id, "device_id")?;
                    put_report(dst, report)?;
                }
                EventKind::Inbound {
                    device_id,
                    from,
                    upstream_id,
                    body,
                } => {
                    dst.put_u8(EVENT_INBOUND);
                    put_str8(dst, device_id, "device_id")?;
                    put_str8(dst, from, "from")?;
                    put_str8(dst, upstream_id, "upstream_id")?;
                    put_body(dst, body)?;
                }
                EventKind::DeviceState {
                    device_id,
                    state,
                    detail,
                } => {
                    dst.put_u8(EVENT_DEVICE_STATE);
                    put_str8(dst, device_id, "device_id")?;
                    dst.put_u8(*state as u8);
                    put_str16(dst, detail, "detail")?;
                }
                EventKind::Lagged { missed } => {
                    dst.put_u8(EVENT_LAGGED);
                    dst.put_u64(*missed);
                }
                EventKind::LinkCode {
                    device_id,
                    kind,
                    code,
                    valid_for_ms,
                } => {
                    dst.put_u8(EVENT_LINK_CODE);
                    put_str8(dst, device_id, "device_id")?;
                    dst.put_u8(*kind as u8);
                    put_str16(dst, code, "code")?;
                    dst.put_u32(*valid_for_ms);
                }
                EventKind::Receipt {
                    device_id,
                    from,
                    upstream_ids,
                    status,
                } => {
                    // The decoder refuses longer lists; never emit bytes it would refuse.
                    if upstream_ids.len() > limits::MAX_RECEIPT_IDS {
                        return Err(EncodeError::InvalidValue {
                            field: "upstream_id_count",
                            value: upstream_ids.len() as u64,
                        });
                    }
                    dst.put_u8(EVENT_RECEIPT);
                    put_str8(dst, device_id, "device_id")?;
                    put_str8(dst, from, "from")?;
                    dst.put_u8(*status as u8);
                    dst.put_u16(upstream_ids.len() as u16);
                    for id in upstream_ids {
                        put_str8(dst, id, "upstream_id")?;
                    }
                }
            }
        }
        Frame::DeviceControl {
            req,
            device_id,
            action,
        } => {
            dst.put_u64(*req);
            put_str8(dst, device_id, "device_id")?;
            match action {
                DeviceAction::Link(method) => {
                    dst.put_u8(ACTION_LINK);
                    match method {
                        LinkMethod::Qr => dst.put_u8(LINK_QR),
                        LinkMethod::PairingCode { phone } => {
                            dst.put_u8(LINK_PAIRING_CODE);
                            put_str8(dst, phone, "phone")?;
                        }
                    }
                }
                DeviceAction::Unlink => dst.put_u8(ACTION_UNLINK),
                DeviceAction::Disable => dst.put_u8(ACTION_DISABLE),
                DeviceAction::Enable => dst.put_u8(ACTION_ENABLE),
                DeviceAction::Status => dst.put_u8(ACTION_STATUS),
            }
        }
        Frame::DeviceControlResult {
            req,
            code,
            state,
            detail,
        } => {
            if code.0 == 0 && state.is_none() {
                return Err(EncodeError::InvalidValue {
                    field: "state",
                    value: 0,
                });
            }
            dst.put_u64(*req);
            dst.put_u16(code.0);
            dst.put_u8(state.map_or(0, |s| s as u8));
            put_str16(dst, detail, "detail")?;
        }
        Frame::SubscribeFrom {
            cursor,
            types,
            devices,
        } => {
            dst.put_u8(u8::from(cursor.is_some()));
            dst.put_u64(cursor.unwrap_or(0));
            put_str16(dst, types, "types")?;
            put_str16(dst, devices, "devices")?;
        }
        Frame::SubscribedFrom {
            code,
            cursor,
            oldest,
            detail,
        } => {
            dst.put_u16(code.0);
            dst.put_u64(*cursor);
            dst.put_u64(*oldest);
            put_str16(dst, detail, "detail")?;
        }
        Frame::LogEvent {
            cursor,
            timestamp_ms,
            readable,
            text,
        } => {
            dst.put_u64(*cursor);
            dst.put_u64(*timestamp_ms);
            dst.put_u8(u8::from(*readable));
            put_str32(dst, text, "text")?;
        }
    }
    let body_len = dst.len() - start - HEADER_LEN;
    if body_len > limits::HARD_MAX_FRAME_LEN as usize {
        return Err(EncodeError::FrameTooLarge {
            len: body_len,
            max: limits::HARD_MAX_FRAME_LEN,
        });
    }
    dst[start..start + 4].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

fn put_report(dst: &mut BytesMut, r: &DeliveryReport) -> Result<(), EncodeError> {
    // The decoder refuses these (see `Reader::report`); never emit bytes it would refuse.
    if (r.status == DeliveryStatus::Sent) != (r.code.0 == 0) {
        return Err(EncodeError::InvalidValue {
            field: "code",
            value: r.code.0.into(),
        });
    }
    dst.put_slice(&r.message_id.0);
    dst.put_u64(r.seq);
    dst.put_u8(r.status as u8);
    dst.put_u16(r.code.0);
    dst.put_u64(r.timestamp_ms);
    put_str8(dst, &r.upstream_id, "upstream_id")?;
    put_str16(dst, &r.detail, "detail")
}

fn put_body(dst: &mut BytesMut, body: &Body) -> Result<(), EncodeError> {
    match body {
        Body::Text(t) => {
            dst.put_u8(BODY_TEXT);
            put_str32(dst, t, "text")
        }
        Body::Media {
            reference,
            mime,
            caption,
        } => {
            dst.put_u8(BODY_MEDIA);
            put_str16(dst, reference, "media_reference")?;
            put_str8(dst, mime, "media_mime")?;
            put_str32(dst, caption, "caption")
        }
    }
}

fn too_long(field: &'static str, len: usize, max: usize) -> EncodeError {
    EncodeError::FieldTooLong { field, len, max }
}

fn put_str8(dst: &mut BytesMut, t: &Text, field: &'static str) -> Result<(), EncodeError> {
    let n = u8::try_from(t.len()).map_err(|_| too_long(field, t.len(), u8::MAX as usize))?;
    dst.put_u8(n);
    dst.put_slice(t.bytes());
    Ok(())
}

fn put_str16(dst: &mut BytesMut, t: &Text, field: &'static str) -> Result<(), EncodeError> {
    let n = u16::try_from(t.len()).map_err(|_| too_long(field, t.len(), u16::MAX as usize))?;
    dst.put_u16(n);
    dst.put_slice(t.bytes());
    Ok(())
}

fn put_str32(dst: &mut BytesMut, t: &Text, field: &'static str) -> Result<(), EncodeError> {
    let max = limits::HARD_MAX_FRAME_LEN as usize;
    let n = u32::try_from(t.len())
        .ok()
        .filter(|n| *n as usize <= max)
        .ok_or(too_long(field, t.len(), max))?;
    dst.put_u32(n);
    dst.put_slice(t.bytes());
    Ok(())
}
