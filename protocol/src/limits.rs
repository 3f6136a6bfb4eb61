//! Protocol-wide sizes. Servers may advertise smaller frame limits in HELLO_OK.

/// Versions this implementation speaks.
pub const MIN_VERSION: u16 = 1;
/// Highest version this implementation speaks: 2 adds device control and the LINK_CODE and
/// RECEIPT events to 1; 3 adds resumable subscriptions (SUBSCRIBE_FROM, LOG_EVENT).
pub const MAX_VERSION: u16 = 3;
/// QUIC ALPN identifier of the protocol family; the version inside it is negotiated in HELLO.
pub const ALPN: &[u8] = b"waping/1";

/// Largest frame body any peer may send: 1 MiB. Bounds the memory one frame can pin.
pub const HARD_MAX_FRAME_LEN: u32 = 1 << 20;
/// Default advertised body limit: 128 KiB, room for a 64 KiB text or media caption plus fields.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 128 * 1024;
/// Largest text body or caption: 65 536 bytes, WhatsApp's own text limit.
pub const MAX_TEXT_LEN: usize = 65_536;
/// Largest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Largest device id.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Largest recipient address (JIDs can be long; E.164 needs at most 15 digits).
pub const MAX_RECIPIENT_LEN: usize = 128;
/// Largest media reference.
pub const MAX_MEDIA_REFERENCE_LEN: usize = 2048;
/// Most upstream ids in one RECEIPT event: 256. WhatsApp batches receipts per chat; this
/// bounds the frame (256 ids of at most 255 bytes stay below the default frame limit).
pub const MAX_RECEIPT_IDS: usize = 256;
/// Shortest phone number in DEVICE_CONTROL LINK with a pairing code: 7 digits (the shortest
/// national numbers with a country code).
pub const MIN_PHONE_DIGITS: usize = 7;
/// Longest phone number: 15 digits, the E.164 maximum.
pub const MAX_PHONE_DIGITS: usize = 15;
