//! Byte layouts of the store's values (keys are redb tuples; see the `store` module).
//!
//! Event row: `format (1) | at_ms (8, BE) | id (16) | workspace len (2, BE) | workspace |
//! device len (2, BE; 0 = none) | device | type len (1) | type | payload`.
//! `format` 1: the payload is the `data` JSON in plain text; 2: it is what
//! [`waping_journal::RecordSealer::seal`] made of that JSON, with [`aad`] (the sequence number and
//! every byte before the payload) bound to it.
//!
//! Pending delivery: `attempts (4, BE) | due_ms (8, BE) | since_ms (8, BE) | error (UTF-8,
//! rest)`; dead delivery: `attempts (4, BE) | at_ms (8, BE) | error (UTF-8, rest)`.

use crate::model::{Event, EventId, EventType};

/// Row format byte: plaintext payload (a store without a sealer).
pub(crate) const FORMAT_PLAIN: u8 = 1;
/// Row format byte: payload sealed by the store's `RecordSealer`.
pub(crate) const FORMAT_SEALED: u8 = 2;

/// Longest `last_error` kept with a delivery, in bytes (longer texts are cut at a character
/// boundary): a worker's error text is a hint for operators, not a log.
pub const MAX_ERROR_BYTES: usize = 256;

/// The plain part of an event row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    pub(crate) format: u8,
    pub(crate) at_ms: u64,
    pub(crate) id: EventId,
    pub(crate) workspace: &'a str,
    pub(crate) device: Option<&'a str>,
    pub(crate) kind: EventType,
    /// Bytes of the row before the payload (also the end of the associated data).
    pub(crate) len: usize,
}

/// The plain header of `event` (format byte first), ready for the payload to be appended.
pub(crate) fn encode_header(format: u8, event: &Event) -> Vec<u8> {
    let ws = event.workspace.as_bytes();
    let dev = event.device.as_deref().unwrap_or("").as_bytes();
    let kind = event.kind().as_str().as_bytes();
    let mut out = Vec::with_capacity(1 + 8 + 16 + 2 + ws.len() + 2 + dev.len() + 1 + kind.len());
    out.push(format);
    out.extend_from_slice(&event.at_ms.to_be_bytes());
    out.extend_from_slice(event.id.as_bytes());
    // Ids are bounded by MAX_ID_BYTES (255) by Event::validate, so u16 lengths cannot overflow.
    out.extend_from_slice(&(ws.len() as u16).to_be_bytes());
    out.extend_from_slice(ws);
    out.extend_from_slice(&(dev.len() as u16).to_be_bytes());
    out.extend_from_slice(dev);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    out
}

/// Reads the plain header of an event row.
pub(crate) fn decode_header(row: &[u8]) -> Result<Header<'_>, String> {
    let mut r = Reader { buf: row, pos: 0 };
    let format = r.take(1)?[0];
    if format != FORMAT_PLAIN && format != FORMAT_SEALED {
        return Err(format!("unknown event row format {format}"));
    }
    let at_ms = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let id = EventId::from_bytes(r.take(16)?.try_into().expect("16 bytes"));
    let ws_len = usize::from(u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")));
    let workspace = r.str(ws_len)?;
    let dev_len = usize::from(u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")));
    let device = if dev_len == 0 { None } else { Some(r.str(dev_len)?) };
    let kind_len = usize::from(r.take(1)?[0]);
    let kind = EventType::parse(r.str(kind_len)?).map_err(|e| e.to_string())?;
    Ok(Header {
        format,
        at_ms,
        id,
        workspace,
        device,
        kind,
        len: r.pos,
    })
}

/// Associated data sealed with an event's payload: a domain tag, the sequence number and the
/// row's plain header, so a payload copied to another row (or a header edited) fails to open.
pub(crate) fn aad(seq: u64, header: &[u8]) -> Vec<u8> {
    const TAG: &[u8] = b"waping-events/row\0";
    let mut out = Vec::with_capacity(TAG.len() + 8 + header.len());
    out.extend_from_slice(TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(header);
    out
}

/// A pending delivery value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingSlot {
    pub(crate) attempts: u32,
    /// When the next attempt is due, unix ms.
    pub(crate) due_ms: u64,
    /// When this delivery started (the event's time, or the replay's): its age for expiry.
    pub(crate) since_ms: u64,
    pub(crate) error: String,
}

/// A dead delivery value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadSlot {
    pub(crate) attempts: u32,
    /// When it was given up, unix ms.
    pub(crate) at_ms: u64,
    pub(crate) error: String,
}

pub(crate) fn encode_pending(attempts: u32, due_ms: u64, since_ms: u64, error: &str) -> Vec<u8> {
    let error = truncate(error, MAX_ERROR_BYTES);
    let mut out = Vec::with_capacity(20 + error.len());
    out.extend_from_slice(&attempts.to_be_bytes());
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(&since_ms.to_be_bytes());
    out.extend_from_slice(error.as_bytes());
    out
}

pub(crate) fn decode_pending(v: &[u8]) -> Result<PendingSlot, String> {
    if v.len() < 20 {
        return Err(format!(
            "delivery value of {} bytes (at least 20 expected)",
            v.len()
        ));
    }
    Ok(PendingSlot {
        attempts: u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
        due_ms: u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
        since_ms: u64::from_be_bytes(v[12..20].try_into().expect("8 bytes")),
        error: utf8(&v[20..])?,
    })
}

pub(crate) fn encode_dead(attempts: u32, at_ms: u64, error: &str) -> Vec<u8> {
    let error = truncate(error, MAX_ERROR_BYTES);
    let mut out = Vec::with_capacity(12 + error.len());
    out.extend_from_slice(&attempts.to_be_bytes());
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(error.as_bytes());
    out
}

pub(crate) fn decode_dead(v: &[u8]) -> Result<DeadSlot, String> {
    if v.len() < 12 {
        return Err(format!(
            "dead delivery value of {} bytes (at least 12 expected)",
            v.len()
        ));
    }
    Ok(DeadSlot {
        attempts: u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
        at_ms: u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
        error: utf8(&v[12..])?,
    })
}

fn utf8(b: &[u8]) -> Result<String, String> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| "delivery error text is not UTF-8".to_string())
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!("event row truncated at byte {}", self.pos));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn str(&mut self, n: usize) -> Result<&'a str, String> {
        let at = self.pos;
        std::str::from_utf8(self.take(n)?).map_err(|_| format!("event row: text at byte {at} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceState, DeviceStateChange, EventData};

    #[test]
    fn header_round_trips_and_ends_where_the_payload_starts() {
        let mut e = Event::new(
            "acme",
            Some("d1".into()),
            1_795_705_445_123,
            EventData::DeviceState(DeviceStateChange {
                state: DeviceState::Connected,
                detail: None,
                until_ms: None,
            }),
        );
        let mut row = encode_header(FORMAT_PLAIN, &e);
        let len = row.len();
        row.extend_from_slice(b"{}");
        let h = decode_header(&row).unwrap();
        assert_eq!(
            (h.format, h.at_ms, h.id, h.workspace, h.device, h.kind, h.len),
            (
                FORMAT_PLAIN,
                e.at_ms,
                e.id,
                "acme",
                Some("d1"),
                EventType::DeviceState,
                len
            )
        );
        e.device = None;
        let row = encode_header(FORMAT_SEALED, &e);
        assert_eq!(decode_header(&row).unwrap().device, None);
        for cut in 0..row.len() {
            assert!(decode_header(&row[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = row.clone();
        bad[0] = 9;
        assert!(decode_header(&bad).unwrap_err().contains("format 9"));
    }

    #[test]
    fn slots_round_trip_and_cut_errors_at_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let v = encode_pending(7, 42, 41, &long);
        let s = decode_pending(&v).unwrap();
        assert_eq!((s.attempts, s.due_ms, s.since_ms), (7, 42, 41));
        assert_eq!(s.error.len(), MAX_ERROR_BYTES);
        assert!(long.starts_with(&s.error));
        assert!(decode_pending(&v[..19]).is_err());
        let d = decode_dead(&encode_dead(3, 9, "HTTP 500")).unwrap();
        assert_eq!((d.attempts, d.at_ms, d.error.as_str()), (3, 9, "HTTP 500"));
        assert!(decode_dead(&[0; 11]).is_err());
        assert!(decode_dead(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
        assert_eq!(truncate("aé", 2), "a");
    }
}
