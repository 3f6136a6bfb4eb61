//! Byte layouts of the store's values (keys are redb tuples; see the `store` module).
//!
//! **Log row** (one per appended chunk of one workspace's events, key `(workspace, last_seq)`):
//! `format (1) | first_seq (8, BE) | count (4, BE) | min_at_ms (8, BE) | max_at_ms (8, BE) |
//! body`. The body is the events one after the other, each `at_ms (8) | id (16) |
//! type len (1) | type | device len (2; 0 = none) | device | data len (4) | data`, where
//! data is a tag byte and the `data` JSON, or a binary `message.status` (see [`encode_data`]);
//! sequence numbers are `first_seq, first_seq + 1, …` in body order. `format` 1: the body is
//! plain; 2: it is what [`waping_journal::RecordSealer::seal`] made of it, with [`aad`] (the
//! workspace and the 29 header bytes) bound to it. One seal and one B-tree insert per chunk
//! instead of per event is what lets the store keep up with the node's status events
//! (docs/design/0018-webhooks.md, "The event log").
//!
//! **Batch index** value (key `last_seq`): `first_seq (8) | min_at_ms (8) | max_at_ms (8) |
//! workspace`.
//!
//! **Cursor** value: `seq (8) | workspace`.
//!
//! **Owed delivery**: `attempts (4) | due_ms (8) | since_ms (8) | device len (2) | device |
//! error (UTF-8, rest)`; **dead delivery**: `attempts (4) | at_ms (8) | error (UTF-8, rest)`.

use crate::model::{DeliveryStatus, Event, EventData, EventId, EventType, MessageStatus};

/// Row format byte: plaintext body (a store without a sealer).
pub(crate) const FORMAT_PLAIN: u8 = 1;
/// Row format byte: body sealed by the store's `RecordSealer`.
pub(crate) const FORMAT_SEALED: u8 = 2;
/// Length of a log row's plain header.
pub(crate) const ROW_HEADER: usize = 1 + 8 + 4 + 8 + 8;

/// Longest `last_error` kept with a delivery, in bytes (longer texts are cut at a character
/// boundary): a worker's error text is a hint for operators, not a log.
pub const MAX_ERROR_BYTES: usize = 256;

/// The plain header of a log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowHeader {
    pub(crate) format: u8,
    pub(crate) first_seq: u64,
    pub(crate) count: u32,
    pub(crate) min_at_ms: u64,
    pub(crate) max_at_ms: u64,
}

impl RowHeader {
    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }

    pub(crate) fn encode(&self) -> [u8; ROW_HEADER] {
        let mut out = [0u8; ROW_HEADER];
        out[0] = self.format;
        out[1..9].copy_from_slice(&self.first_seq.to_be_bytes());
        out[9..13].copy_from_slice(&self.count.to_be_bytes());
        out[13..21].copy_from_slice(&self.min_at_ms.to_be_bytes());
        out[21..29].copy_from_slice(&self.max_at_ms.to_be_bytes());
        out
    }

    pub(crate) fn decode(row: &[u8]) -> Result<RowHeader, String> {
        if row.len() < ROW_HEADER {
            return Err(format!("log row of {} bytes (header is {ROW_HEADER})", row.len()));
        }
        let format = row[0];
        if format != FORMAT_PLAIN && format != FORMAT_SEALED {
            return Err(format!("unknown log row format {format}"));
        }
        let h = RowHeader {
            format,
            first_seq: be64(&row[1..9]),
            count: u32::from_be_bytes(row[9..13].try_into().expect("4 bytes")),
            min_at_ms: be64(&row[13..21]),
            max_at_ms: be64(&row[21..29]),
        };
        if h.count == 0 || h.first_seq == 0 || h.first_seq.checked_add(u64::from(h.count)).is_none() {
            return Err(format!(
                "log row header: first_seq {} count {}",
                h.first_seq, h.count
            ));
        }
        Ok(h)
    }
}

/// Appends one event to a body being built. `data` is the event's data as
/// [`encode_data`] wrote it.
#[cfg(test)]
pub(crate) fn push_event(body: &mut Vec<u8>, event: &Event, data: &[u8]) {
    push_head(
        body,
        event.at_ms,
        &event.id,
        event.kind(),
        event.device.as_deref(),
    );
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
}

/// Tag of an event's data in a body: the `data` JSON follows.
const DATA_JSON: u8 = 0;
/// Tag of an event's data in a body: a `message.status` without `error` whose message id is
/// 32 lowercase hex digits, in binary: `message id (16) | status (1) | upstream id (rest,
/// UTF-8; absent when empty)`. These are most of the log; the binary form is about a third
/// of the JSON's size and needs no serialiser on the append path.
const DATA_STATUS: u8 = 1;

/// The plain fields of an event entry: `at_ms | id | type len | type | device len | device`.
fn push_head(body: &mut Vec<u8>, at_ms: u64, id: &EventId, kind: EventType, device: Option<&str>) {
    let kind = kind.as_str().as_bytes();
    let dev = device.unwrap_or("").as_bytes();
    body.extend_from_slice(&at_ms.to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    body.push(kind.len() as u8);
    body.extend_from_slice(kind);
    body.extend_from_slice(&(dev.len() as u16).to_be_bytes());
    body.extend_from_slice(dev);
}

/// Appends one whole event (plain fields and tagged data) to a body, without an allocation
/// of its own; returns the length of its data. What [`push_event`] with [`encode_data`]
/// writes, for the append path.
pub(crate) fn push_event_encoded(body: &mut Vec<u8>, event: &Event) -> usize {
    push_head(
        body,
        event.at_ms,
        &event.id,
        event.kind(),
        event.device.as_deref(),
    );
    let len_at = body.len();
    body.extend_from_slice(&[0; 4]);
    let start = body.len();
    if let Some((raw, status, up)) = binary_status(&event.data) {
        body.push(DATA_STATUS);
        body.extend_from_slice(&raw);
        body.push(status);
        body.extend_from_slice(up.as_bytes());
    } else {
        body.push(DATA_JSON);
        // Strings, integers and enums only: serialisation cannot fail.
        serde_json::to_writer(&mut *body, &event.data).expect("event data serialises");
    }
    let len = body.len() - start;
    body[len_at..start].copy_from_slice(&(len as u32).to_be_bytes());
    len
}

/// The binary form's parts, when `data` has one.
fn binary_status(data: &EventData) -> Option<([u8; 16], u8, &str)> {
    let EventData::MessageStatus(st) = data else {
        return None;
    };
    if st.error.is_some() || st.upstream_id.as_deref() == Some("") {
        return None;
    }
    let raw = hex32(&st.message_id)?;
    let status = match st.status {
        DeliveryStatus::Sent => 0,
        DeliveryStatus::Delivered => 1,
        DeliveryStatus::Read => 2,
        DeliveryStatus::Failed => return None,
    };
    Some((raw, status, st.upstream_id.as_deref().unwrap_or("")))
}

/// Tag of an erased event (its device's or its sender's data was deleted): nothing follows,
/// and readers skip it. The entry keeps its place so the row's sequence numbers stay.
pub(crate) const DATA_ERASED: u8 = 2;

/// Appends an erased copy of `raw` (same time, id and type; no device, no data).
pub(crate) fn push_erased(body: &mut Vec<u8>, raw: &RawEvent<'_>) {
    push_head(body, raw.at_ms, &raw.id, raw.kind, None);
    body.extend_from_slice(&1u32.to_be_bytes());
    body.push(DATA_ERASED);
}

/// Appends `raw` unchanged.
pub(crate) fn push_raw(body: &mut Vec<u8>, raw: &RawEvent<'_>) {
    push_head(body, raw.at_ms, &raw.id, raw.kind, raw.device);
    body.extend_from_slice(&(raw.data.len() as u32).to_be_bytes());
    body.extend_from_slice(raw.data);
}

impl RawEvent<'_> {
    /// Whether this entry was erased.
    pub(crate) fn erased(&self) -> bool {
        self.data.first() == Some(&DATA_ERASED)
    }
}

/// Encodes an event's `data` for a body (tag byte first).
#[cfg(test)]
pub(crate) fn encode_data(data: &EventData) -> Vec<u8> {
    if let Some((raw, status, up)) = binary_status(data) {
        let mut out = Vec::with_capacity(18 + up.len());
        out.push(DATA_STATUS);
        out.extend_from_slice(&raw);
        out.push(status);
        out.extend_from_slice(up.as_bytes());
        return out;
    }
    let mut out = vec![DATA_JSON];
    out.extend_from_slice(&data.to_json_bytes());
    out
}

/// Reads what [`push_event_encoded`] wrote as data.
pub(crate) fn decode_data(kind: EventType, bytes: &[u8]) -> Result<EventData, String> {
    match bytes.split_first() {
        Some((&DATA_JSON, json)) => EventData::from_json_slice(kind, json).map_err(|e| e.to_string()),
        Some((&DATA_STATUS, b)) if kind == EventType::MessageStatus && b.len() >= 17 => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut id = String::with_capacity(32);
            for x in &b[..16] {
                id.push(char::from(HEX[usize::from(x >> 4)]));
                id.push(char::from(HEX[usize::from(x & 15)]));
            }
            let status = match b[16] {
                0 => DeliveryStatus::Sent,
                1 => DeliveryStatus::Delivered,
                2 => DeliveryStatus::Read,
                other => return Err(format!("binary status {other}")),
            };
            let up = std::str::from_utf8(&b[17..]).map_err(|_| "upstream id is not UTF-8".to_string())?;
            Ok(EventData::MessageStatus(MessageStatus {
                message_id: id,
                status,
                upstream_id: (!up.is_empty()).then(|| up.to_owned()),
                error: None,
            }))
        }
        Some((tag, _)) => Err(format!("event data tag {tag} (for {kind})")),
        None => Err("empty event data".into()),
    }
}

/// The 16 bytes of 32 lowercase hex digits.
fn hex32(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// One event of a body, not yet parsed further than its plain fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    pub(crate) at_ms: u64,
    pub(crate) id: EventId,
    pub(crate) kind: EventType,
    pub(crate) device: Option<&'a str>,
    pub(crate) data: &'a [u8],
}

impl RawEvent<'_> {
    /// The full event (parses the `data`).
    pub(crate) fn to_event(self, workspace: &str) -> Result<Event, String> {
        let data = decode_data(self.kind, self.data)?;
        Ok(Event {
            id: self.id,
            workspace: workspace.to_owned(),
            device: self.device.map(str::to_owned),
            at_ms: self.at_ms,
            data,
        })
    }
}

/// Splits a plain body into its events; exactly `count` of them or an error.
pub(crate) fn split_body(body: &[u8], count: u32) -> Result<Vec<RawEvent<'_>>, String> {
    let mut r = Reader { buf: body, pos: 0 };
    let mut out = Vec::with_capacity(count as usize);
    while r.pos < body.len() {
        let at_ms = be64(r.take(8)?);
        let id = EventId::from_bytes(r.take(16)?.try_into().expect("16 bytes"));
        let kind_len = usize::from(r.take(1)?[0]);
        let kind = EventType::parse(r.str(kind_len)?).map_err(|e| e.to_string())?;
        let dev_len = usize::from(u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")));
        let device = if dev_len == 0 { None } else { Some(r.str(dev_len)?) };
        let data_len = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
        let data = r.take(data_len)?;
        out.push(RawEvent {
            at_ms,
            id,
            kind,
            device,
            data,
        });
    }
    if out.len() != count as usize {
        return Err(format!("log row holds {} events, header says {count}", out.len()));
    }
    Ok(out)
}

/// Additional data bound to a sealed body: the workspace (a row moved to another workspace's
/// key does not open) and the row header (nor does one given other sequence numbers).
pub(crate) fn aad(workspace: &str, header: &[u8]) -> Vec<u8> {
    const TAG: &[u8] = b"waping-events/log\0";
    let mut out = Vec::with_capacity(TAG.len() + 2 + workspace.len() + header.len());
    out.extend_from_slice(TAG);
    out.extend_from_slice(&(workspace.len() as u16).to_be_bytes());
    out.extend_from_slice(workspace.as_bytes());
    out.extend_from_slice(header);
    out
}

/// Batch index value.
pub(crate) fn encode_batch(first_seq: u64, min_at_ms: u64, max_at_ms: u64, workspace: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + workspace.len());
    out.extend_from_slice(&first_seq.to_be_bytes());
    out.extend_from_slice(&min_at_ms.to_be_bytes());
    out.extend_from_slice(&max_at_ms.to_be_bytes());
    out.extend_from_slice(workspace.as_bytes());
    out
}

/// A batch index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchEntry {
    pub(crate) first_seq: u64,
    pub(crate) min_at_ms: u64,
    pub(crate) max_at_ms: u64,
    pub(crate) workspace: String,
}

pub(crate) fn decode_batch(v: &[u8]) -> Result<BatchEntry, String> {
    if v.len() < 24 {
        return Err(format!("batch index value of {} bytes", v.len()));
    }
    Ok(BatchEntry {
        first_seq: be64(&v[..8]),
        min_at_ms: be64(&v[8..16]),
        max_at_ms: be64(&v[16..24]),
        workspace: utf8(&v[24..])?,
    })
}

pub(crate) fn encode_cursor(seq: u64, workspace: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + workspace.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(workspace.as_bytes());
    out
}

pub(crate) fn decode_cursor(v: &[u8]) -> Result<(u64, String), String> {
    if v.len() < 8 {
        return Err(format!("cursor value of {} bytes", v.len()));
    }
    Ok((be64(&v[..8]), utf8(&v[8..])?))
}

/// A delivery owed outside the endpoint's cursor (retrying, queued behind a retrying event of
/// its device, replayed, or owed whatever the endpoint's filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwedSlot {
    pub(crate) attempts: u32,
    pub(crate) due_ms: u64,
    pub(crate) since_ms: u64,
    pub(crate) device: String,
    pub(crate) error: String,
}

pub(crate) fn encode_owed(attempts: u32, due_ms: u64, since_ms: u64, device: &str, error: &str) -> Vec<u8> {
    let error = truncate(error, MAX_ERROR_BYTES);
    let device = truncate(device, 1024);
    let mut out = Vec::with_capacity(22 + device.len() + error.len());
    out.extend_from_slice(&attempts.to_be_bytes());
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(&since_ms.to_be_bytes());
    out.extend_from_slice(&(device.len() as u16).to_be_bytes());
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(error.as_bytes());
    out
}

pub(crate) fn decode_owed(v: &[u8]) -> Result<OwedSlot, String> {
    if v.len() < 22 {
        return Err(format!(
            "owed delivery value of {} bytes (at least 22 expected)",
            v.len()
        ));
    }
    let dev_len = usize::from(u16::from_be_bytes(v[20..22].try_into().expect("2 bytes")));
    if v.len() < 22 + dev_len {
        return Err("owed delivery value: device cut short".into());
    }
    Ok(OwedSlot {
        attempts: u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
        due_ms: be64(&v[4..12]),
        since_ms: be64(&v[12..20]),
        device: utf8(&v[22..22 + dev_len])?,
        error: utf8(&v[22 + dev_len..])?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadSlot {
    pub(crate) attempts: u32,
    pub(crate) at_ms: u64,
    pub(crate) error: String,
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
        at_ms: be64(&v[4..12]),
        error: utf8(&v[12..])?,
    })
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn utf8(b: &[u8]) -> Result<String, String> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| "stored text is not UTF-8".to_string())
}

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
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| format!("log row cut short at byte {}", self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn str(&mut self, n: usize) -> Result<&'a str, String> {
        std::str::from_utf8(self.take(n)?).map_err(|_| "log row text is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceState, DeviceStateChange};

    fn ev(dev: Option<&str>, at: u64) -> Event {
        Event::new(
            "acme",
            dev.map(str::to_owned),
            at,
            EventData::DeviceState(DeviceStateChange {
                state: DeviceState::Connected,
                detail: None,
                until_ms: None,
            }),
        )
    }

    #[test]
    fn body_round_trips_and_rejects_damage() {
        let events = [ev(Some("d1"), 5), ev(None, 7)];
        let mut body = Vec::new();
        for e in &events {
            push_event(&mut body, e, &encode_data(&e.data));
        }
        let mut direct = Vec::new();
        for e in &events {
            push_event_encoded(&mut direct, e);
        }
        assert_eq!(direct, body, "both encoders write the same bytes");
        let raw = split_body(&body, 2).unwrap();
        assert_eq!(raw[0].to_event("acme").unwrap(), events[0]);
        assert_eq!(raw[1].to_event("acme").unwrap(), events[1]);
        assert!(split_body(&body, 3).is_err(), "count mismatch");
        for cut in [1, 10, body.len() - 1] {
            assert!(split_body(&body[..cut], 2).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn statuses_take_the_binary_form_when_they_can_and_round_trip_either_way() {
        let st = |id: &str, status, up: Option<&str>, error| {
            EventData::MessageStatus(MessageStatus {
                message_id: id.into(),
                status,
                upstream_id: up.map(str::to_owned),
                error,
            })
        };
        let hex = "0123456789abcdef0123456789abcdef";
        let err = Some(crate::model::ErrorInfo {
            code: 3,
            name: "x".into(),
            detail: None,
        });
        for (data, binary) in [
            (st(hex, DeliveryStatus::Sent, Some("sim-1"), None), true),
            (st(hex, DeliveryStatus::Read, None, None), true),
            (
                st(
                    "0123456789ABCDEF0123456789ABCDEF",
                    DeliveryStatus::Sent,
                    None,
                    None,
                ),
                false,
            ),
            (st("short", DeliveryStatus::Delivered, None, None), false),
            (st(hex, DeliveryStatus::Failed, None, err), false),
            (st(hex, DeliveryStatus::Sent, Some(""), None), false),
        ] {
            let enc = encode_data(&data);
            assert_eq!(enc[0] == DATA_STATUS, binary, "{data:?}");
            assert_eq!(decode_data(EventType::MessageStatus, &enc).unwrap(), data);
        }
        let enc = encode_data(&st(hex, DeliveryStatus::Sent, None, None));
        assert!(enc.len() < 20);
        assert!(
            decode_data(EventType::DeviceState, &enc).is_err(),
            "binary form of another type"
        );
        let mut bad = enc.clone();
        bad[17] = 9;
        assert!(decode_data(EventType::MessageStatus, &bad).is_err());
        assert!(decode_data(EventType::MessageStatus, &[]).is_err());
        assert!(decode_data(EventType::MessageStatus, &[7, 1]).is_err());
    }

    #[test]
    fn header_and_values_round_trip() {
        let h = RowHeader {
            format: FORMAT_SEALED,
            first_seq: 9,
            count: 3,
            min_at_ms: 1,
            max_at_ms: 2,
        };
        assert_eq!(RowHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.last_seq(), 11);
        let mut bad = h.encode();
        bad[0] = 9;
        assert!(RowHeader::decode(&bad).is_err());
        let mut zero = h.encode();
        zero[9..13].copy_from_slice(&0u32.to_be_bytes());
        assert!(RowHeader::decode(&zero).is_err());
        let o = decode_owed(&encode_owed(2, 3, 4, "dev", &"é".repeat(300))).unwrap();
        assert_eq!(
            (o.attempts, o.due_ms, o.since_ms, o.device.as_str()),
            (2, 3, 4, "dev")
        );
        assert!(o.error.len() <= MAX_ERROR_BYTES);
        assert!(decode_owed(&[0; 10]).is_err());
        let b = decode_batch(&encode_batch(1, 2, 3, "ws")).unwrap();
        assert_eq!(
            (b.first_seq, b.min_at_ms, b.max_at_ms, b.workspace.as_str()),
            (1, 2, 3, "ws")
        );
        assert_eq!(
            decode_cursor(&encode_cursor(4, "w")).unwrap(),
            (4, "w".to_string())
        );
    }
}
