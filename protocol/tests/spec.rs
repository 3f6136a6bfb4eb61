//! Keeps PROTOCOL.md and the code in step.
//!
//! - (a) The error-code table lists exactly the codes of `CATALOGUE`, each with
//!   the same number, name, fault, retryability, fatality and meaning.
//! - (b) Every hex example decodes to the frame it names and re-encodes to the
//!   same bytes; every frame type has one.
//! - The frame-type and limit tables match the constants.
//!
//! Hex examples are fenced blocks with the info string `hex`, each preceded
//! (ignoring blank lines) by a line of the form
//!
//! ```text
//! Example `<id>` (<FRAME NAME>):
//! ```
//!
//! where `<id>` names one of `common::examples()`. In a block, `#` starts a
//! comment; everything else is whitespace-separated two-digit hex bytes.
//!
//! The error table and the examples sit between `<!-- BEGIN GENERATED: … -->`
//! and `<!-- END GENERATED: … -->` markers and are generated from the code.
//! After changing the catalogue, the codec or the examples, regenerate with
//!
//! ```sh
//! WAPING_WRITE_SPEC=1 cargo test -p waping-protocol --test spec
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::BytesMut;
use waping_protocol::frame::type_name;
use waping_protocol::limits;
use waping_protocol::{
    Body, CATALOGUE, Decoder, DeliveryReport, DeliveryStatus, DeviceAction, Event, EventKind, Frame,
    LinkMethod, MessageId, Text,
};

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md")
}

/// The document, after regenerating its generated sections when asked to.
fn spec() -> String {
    static WRITE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("WAPING_WRITE_SPEC").is_some() {
        WRITE.call_once(|| {
            let doc = std::fs::read_to_string(spec_path()).expect("PROTOCOL.md");
            let doc = replace_section(&doc, "error-codes", &error_table());
            let doc = replace_section(&doc, "examples", &examples_section());
            std::fs::write(spec_path(), doc).expect("write PROTOCOL.md");
        });
    }
    std::fs::read_to_string(spec_path()).expect("PROTOCOL.md next to Cargo.toml")
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- BEGIN GENERATED: {name} -->\n"),
        format!("<!-- END GENERATED: {name} -->"),
    )
}

/// The text between a section's markers.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let (begin, end) = markers(name);
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("no {begin:?} in PROTOCOL.md"))
        + begin.len();
    let stop = doc[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("no {end:?} in PROTOCOL.md"))
        + start;
    &doc[start..stop]
}

fn replace_section(doc: &str, name: &str, content: &str) -> String {
    let old = section(doc, name);
    let start = old.as_ptr() as usize - doc.as_ptr() as usize;
    format!("{}{}{}", &doc[..start], content, &doc[start + old.len()..])
}

// ------------------------------------------------------------- (a) error codes

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn error_table() -> String {
    let mut out = String::from(
        "| Code | Name | Fault | Retryable | Fatal | Meaning |\n|-----:|------|-------|-----------|-------|---------|\n",
    );
    for c in CATALOGUE {
        writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {} |",
            c.code.0,
            c.name,
            c.fault.as_str(),
            yes_no(c.retryable),
            yes_no(c.fatal),
            c.summary
        )
        .unwrap();
    }
    out
}

/// Cells of the table rows (lines starting with `|`) of `text`, header and rule rows skipped.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| !cells[0].starts_with('-') && !cells[0].starts_with(':'))
        .collect()
}

#[test]
fn error_table_matches_the_catalogue() {
    let doc = spec();
    let rows = table_rows(section(&doc, "error-codes"));
    let mut documented = BTreeMap::new();
    for cells in rows.iter().skip(1) {
        assert_eq!(cells.len(), 6, "row {cells:?}");
        let code: u16 = cells[0].parse().unwrap_or_else(|_| panic!("code {:?}", cells[0]));
        assert!(
            documented.insert(code, cells.clone()).is_none(),
            "{code} listed twice"
        );
    }
    assert_eq!(
        rows[0],
        ["Code", "Name", "Fault", "Retryable", "Fatal", "Meaning"]
    );
    for c in CATALOGUE {
        let cells = documented
            .remove(&c.code.0)
            .unwrap_or_else(|| panic!("{} ({}) missing from PROTOCOL.md", c.name, c.code.0));
        assert_eq!(cells[1], format!("`{}`", c.name), "name of {}", c.code.0);
        assert_eq!(cells[2], c.fault.as_str(), "fault of {}", c.name);
        assert_eq!(cells[3], yes_no(c.retryable), "retryable of {}", c.name);
        assert_eq!(cells[4], yes_no(c.fatal), "fatal of {}", c.name);
        assert_eq!(cells[5], c.summary, "meaning of {}", c.name);
    }
    assert!(
        documented.is_empty(),
        "codes not in the catalogue: {:?}",
        documented.keys()
    );
    // Every code name mentioned anywhere in the prose is a real one.
    let names: BTreeSet<&str> = CATALOGUE.iter().map(|c| c.name).collect();
    for word in doc.split(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())) {
        let looks_like_code = word.len() > 3 && word.contains('_') && !word.starts_with('_');
        if looks_like_code && !names.contains(word) && !NON_CODE_NAMES.contains(&word) {
            panic!("PROTOCOL.md mentions {word}, which is neither a code nor a known constant");
        }
    }
}

/// Upper-snake words in PROTOCOL.md that are not error codes.
const NON_CODE_NAMES: &[&str] = &[
    "HELLO_OK",
    "DEVICE_STATE",
    "HARD_MAX_FRAME_LEN",
    "DEFAULT_MAX_FRAME_LEN",
    "MAX_TEXT_LEN",
    "MAX_IDEMPOTENCY_KEY_LEN",
    "MAX_DEVICE_ID_LEN",
    "MAX_RECIPIENT_LEN",
    "MAX_MEDIA_REFERENCE_LEN",
    "MIN_VERSION",
    "MAX_VERSION",
    "LOGGED_OUT",
    "CONNECTION_CLOSE",
    "STOP_SENDING",
    "RESET_STREAM",
    "MAX_STREAMS",
    "DEVICE_CONTROL",
    "DEVICE_CONTROL_RESULT",
    "LINK_CODE",
    "LINK_CODES",
    "PAIRING_CODE",
    "MAX_RECEIPT_IDS",
    "MIN_PHONE_DIGITS",
    "MAX_PHONE_DIGITS",
    "SUBSCRIBE_FROM",
    "SUBSCRIBED_FROM",
    "LOG_EVENT",
];

// ------------------------------------------------------------- (b) examples

/// One row of an annotated example: bytes and what they mean.
struct Rows(Vec<(Vec<u8>, String)>);

impl Rows {
    fn put(&mut self, bytes: &[u8], what: String) {
        self.0.push((bytes.to_vec(), what));
    }
    fn u8(&mut self, field: &str, v: u8, meaning: &str) {
        let what = if meaning.is_empty() {
            format!("{field} = {v}")
        } else {
            format!("{field} = {v} ({meaning})")
        };
        self.put(&[v], what);
    }
    fn u16(&mut self, field: &str, v: u16, meaning: &str) {
        let what = if meaning.is_empty() {
            format!("{field} = {v}")
        } else {
            format!("{field} = {v} ({meaning})")
        };
        self.put(&v.to_be_bytes(), what);
    }
    fn u32(&mut self, field: &str, v: u32) {
        self.put(&v.to_be_bytes(), format!("{field} = {v}"));
    }
    fn u64(&mut self, field: &str, v: u64) {
        self.put(&v.to_be_bytes(), format!("{field} = {v}"));
    }
    fn id(&mut self, field: &str, v: &MessageId) {
        self.put(&v.0, format!("{field} = {v}"));
    }
    fn text(&mut self, width: usize, field: &str, t: &Text) {
        let len = (t.len() as u64).to_be_bytes();
        self.put(&len[8 - width..], format!("{field} length = {}", t.len()));
        if !t.is_empty() {
            self.put(t.bytes(), format!("{field} = {:?}", t.as_str()));
        }
    }
    fn body(&mut self, b: &Body) {
        match b {
            Body::Text(t) => {
                self.u8("body_kind", 1, "TEXT");
                self.text(4, "text", t);
            }
            Body::Media {
                reference,
                mime,
                caption,
            } => {
                self.u8("body_kind", 2, "MEDIA");
                self.text(2, "media_reference", reference);
                self.text(1, "media_mime", mime);
                self.text(4, "caption", caption);
            }
        }
    }
    fn report(&mut self, r: &DeliveryReport) {
        self.id("message_id", &r.message_id);
        self.u64("seq", r.seq);
        let status = match r.status {
            DeliveryStatus::Sent => "SENT",
            DeliveryStatus::Failed => "FAILED",
            DeliveryStatus::Deferred => "DEFERRED",
        };
        self.u8("status", r.status as u8, status);
        let name = if r.code.0 == 0 { "none" } else { r.code.name() };
        self.u16("code", r.code.0, name);
        self.u64("timestamp_ms", r.timestamp_ms);
        self.text(1, "upstream_id", &r.upstream_id);
        self.text(2, "detail", &r.detail);
    }
}

/// An independent, field-by-field encoding of `f` with a comment per field.
/// The test checks its bytes equal the codec's, so the comments cannot drift.
fn annotate(f: &Frame) -> Vec<(Vec<u8>, String)> {
    let mut r = Rows(Vec::new());
    match f {
        Frame::Hello {
            min_version,
            max_version,
            api_key,
            client_name,
        } => {
            r.u16("min_version", *min_version, "");
            r.u16("max_version", *max_version, "");
            r.text(1, "api_key", api_key);
            r.text(1, "client_name", client_name);
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
            r.u16("version", *version, "");
            r.u32("max_frame_len", *max_frame_len);
            r.u32("max_in_flight", *max_in_flight);
            r.u16("max_streams", *max_streams, "");
            r.u32("idle_timeout_ms", *idle_timeout_ms);
            r.u64("connection_id", *connection_id);
            r.text(1, "server", server);
        }
        Frame::Error {
            code,
            retry_after_ms,
            message,
        } => {
            r.u16("code", code.0, code.name());
            r.u32("retry_after_ms", *retry_after_ms);
            r.text(2, "message", message);
        }
        Frame::Ping { nonce } | Frame::Pong { nonce } => r.u64("nonce", *nonce),
        Frame::Goodbye { code, message } => {
            r.u16("code", code.0, code.name());
            r.text(2, "message", message);
        }
        Frame::Send {
            seq,
            idempotency_key,
            device_id,
            recipient,
            body,
        } => {
            r.u64("seq", *seq);
            r.text(1, "idempotency_key", idempotency_key);
            r.text(1, "device_id", device_id);
            r.text(1, "recipient", recipient);
            r.body(body);
        }
        Frame::Accepted { seq, message_id } => {
            r.u64("seq", *seq);
            r.id("message_id", message_id);
        }
        Frame::Rejected {
            seq,
            code,
            retry_after_ms,
            reason,
        } => {
            r.u64("seq", *seq);
            r.u16("code", code.0, code.name());
            r.u32("retry_after_ms", *retry_after_ms);
            r.text(2, "reason", reason);
        }
        Frame::Report(rep) => r.report(rep),
        Frame::Subscribe { mask } | Frame::Subscribed { mask } => {
            r.put(
                &mask.to_be_bytes(),
                format!("mask = 0x{mask:08x} ({})", mask_names(*mask)),
            );
        }
        Frame::Event(Event {
            seq,
            timestamp_ms,
            kind,
        }) => {
            r.u64("seq", *seq);
            r.u64("timestamp_ms", *timestamp_ms);
            match kind {
                EventKind::Report { device_id, report } => {
                    r.u8("event_kind", 1, "REPORT");
                    r.text(1, "device_id", device_id);
                    r.report(report);
                }
                EventKind::Inbound {
                    device_id,
                    from,
                    upstream_id,
                    body,
                } => {
                    r.u8("event_kind", 2, "INBOUND");
                    r.text(1, "device_id", device_id);
                    r.text(1, "from", from);
                    r.text(1, "upstream_id", upstream_id);
                    r.body(body);
                }
                EventKind::DeviceState {
                    device_id,
                    state,
                    detail,
                } => {
                    r.u8("event_kind", 3, "DEVICE_STATE");
                    r.text(1, "device_id", device_id);
                    r.u8("state", *state as u8, state.as_str());
                    r.text(2, "detail", detail);
                }
                EventKind::Lagged { missed } => {
                    r.u8("event_kind", 4, "LAGGED");
                    r.u64("missed", *missed);
                }
                EventKind::LinkCode {
                    device_id,
                    kind,
                    code,
                    valid_for_ms,
                } => {
                    r.u8("event_kind", 5, "LINK_CODE");
                    r.text(1, "device_id", device_id);
                    r.u8("code_kind", *kind as u8, kind.as_str());
                    r.text(2, "code", code);
                    r.u32("valid_for_ms", *valid_for_ms);
                }
                EventKind::Receipt {
                    device_id,
                    from,
                    upstream_ids,
                    status,
                } => {
                    r.u8("event_kind", 6, "RECEIPT");
                    r.text(1, "device_id", device_id);
                    r.text(1, "from", from);
                    r.u8("receipt_status", *status as u8, status.as_str());
                    r.u16("upstream_id_count", upstream_ids.len() as u16, "");
                    for id in upstream_ids {
                        r.text(1, "upstream_id", id);
                    }
                }
            }
        }
        Frame::DeviceControl {
            req,
            device_id,
            action,
        } => {
            r.u64("req", *req);
            r.text(1, "device_id", device_id);
            match action {
                DeviceAction::Link(method) => {
                    r.u8("action", 1, "LINK");
                    match method {
                        LinkMethod::Qr => r.u8("link_method", 1, "QR"),
                        LinkMethod::PairingCode { phone } => {
                            r.u8("link_method", 2, "PAIRING_CODE");
                            r.text(1, "phone", phone);
                        }
                    }
                }
                DeviceAction::Unlink => r.u8("action", 2, "UNLINK"),
                DeviceAction::Disable => r.u8("action", 3, "DISABLE"),
                DeviceAction::Enable => r.u8("action", 4, "ENABLE"),
                DeviceAction::Status => r.u8("action", 5, "STATUS"),
            }
        }
        Frame::DeviceControlResult {
            req,
            code,
            state,
            detail,
        } => {
            r.u64("req", *req);
            let name = if code.0 == 0 { "ok" } else { code.name() };
            r.u16("code", code.0, name);
            match state {
                Some(st) => r.u8("state", *st as u8, st.as_str()),
                None => r.u8("state", 0, "none"),
            }
            r.text(2, "detail", detail);
        }
        Frame::SubscribeFrom {
            cursor,
            types,
            devices,
        } => {
            match cursor {
                Some(_) => r.u8("has_cursor", 1, "yes"),
                None => r.u8("has_cursor", 0, "no: from now"),
            }
            r.u64("cursor", cursor.unwrap_or(0));
            r.text(2, "types", types);
            r.text(2, "devices", devices);
        }
        Frame::SubscribedFrom {
            code,
            cursor,
            oldest,
            detail,
        } => {
            let name = if code.0 == 0 { "ok" } else { code.name() };
            r.u16("code", code.0, name);
            r.u64("cursor", *cursor);
            r.u64("oldest", *oldest);
            r.text(2, "detail", detail);
        }
        Frame::LogEvent {
            cursor,
            timestamp_ms,
            readable,
            text,
        } => {
            r.u64("cursor", *cursor);
            r.u64("timestamp_ms", *timestamp_ms);
            r.u8(
                "readable",
                u8::from(*readable),
                if *readable { "yes" } else { "no" },
            );
            r.text(4, "text", text);
        }
    }
    let body_len: usize = r.0.iter().map(|(b, _)| b.len()).sum();
    let mut rows = vec![
        (
            (body_len as u32).to_be_bytes().to_vec(),
            format!("length = {body_len} (body bytes after this 6-byte header)"),
        ),
        (
            vec![f.frame_type()],
            format!("type = 0x{:02x} ({})", f.frame_type(), f.name()),
        ),
        (vec![0], "flags = 0".to_string()),
    ];
    rows.extend(r.0);
    rows
}

fn mask_names(mask: u32) -> String {
    let names: Vec<&str> = [
        (1, "REPORTS"),
        (2, "INBOUND"),
        (4, "DEVICE_STATE"),
        (8, "LINK_CODES"),
        (16, "RECEIPTS"),
    ]
    .iter()
    .filter(|(bit, _)| mask & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" | ")
    }
}

/// One example as Markdown: the naming line and the annotated hex block.
fn example_block(id: &str, f: &Frame) -> String {
    let rows = annotate(f);
    let mut lines: Vec<(String, String)> = Vec::new();
    for (bytes, what) in rows {
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let comment = if i == 0 { what.clone() } else { String::new() };
            lines.push((hex.join(" "), comment));
        }
    }
    let width = lines.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
    let mut out = format!("Example `{id}` ({}):\n\n```hex\n", f.name());
    for (hex, comment) in lines {
        if comment.is_empty() {
            writeln!(out, "{hex}").unwrap();
        } else {
            writeln!(out, "{hex:width$}  # {comment}").unwrap();
        }
    }
    out.push_str("```\n");
    out
}

fn examples_section() -> String {
    let mut out = String::new();
    for (i, (id, f)) in common::examples().iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&example_block(id, f));
    }
    out
}

/// Every example block of the document: (id, frame name, bytes).
fn parse_examples(doc: &str) -> Vec<(String, String, Vec<u8>)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```hex" {
            i += 1;
            continue;
        }
        let label = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("hex block at line {} has no label", i + 1));
        let (id, name) = parse_label(label).unwrap_or_else(|| {
            panic!(
                "line {}: expected \"Example `<id>` (<FRAME>):\" before a hex block, got {label:?}",
                i
            )
        });
        let mut bytes = Vec::new();
        i += 1;
        while lines.get(i).map(|l| l.trim()) != Some("```") {
            let line = lines
                .get(i)
                .unwrap_or_else(|| panic!("unclosed hex block of {id}"));
            let data = line.split('#').next().unwrap_or_default();
            for tok in data.split_whitespace() {
                assert_eq!(tok.len(), 2, "{id}: token {tok:?} on line {}", i + 1);
                bytes.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("{id}: {tok:?}")));
            }
            i += 1;
        }
        out.push((id, name, bytes));
        i += 1;
    }
    out
}

fn parse_label(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("Example `")?;
    let (id, rest) = rest.split_once("` (")?;
    let name = rest.strip_suffix("):")?;
    Some((id.to_string(), name.to_string()))
}

#[test]
fn hex_examples_decode_to_what_they_claim() {
    let doc = spec();
    let parsed = parse_examples(&doc);
    let known: BTreeMap<&str, Frame> = common::examples().into_iter().collect();
    let mut types = BTreeSet::new();
    for (id, name, bytes) in &parsed {
        let want = known
            .get(id.as_str())
            .unwrap_or_else(|| panic!("example {id} is not in common::examples()"));
        let mut buf = BytesMut::from(&bytes[..]);
        let got = Decoder::new(limits::HARD_MAX_FRAME_LEN)
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("example {id}: {e}"))
            .unwrap_or_else(|| panic!("example {id} is incomplete"));
        assert!(
            buf.is_empty(),
            "example {id} has {} bytes after the frame",
            buf.len()
        );
        assert_eq!(got.name(), name, "example {id} claims {name}");
        assert_eq!(&got, want, "example {id}");
        assert_eq!(
            common::enc(&got),
            *bytes,
            "example {id} does not re-encode byte for byte"
        );
        types.insert(got.frame_type());
    }
    let defined: BTreeSet<u8> = (0..=u8::MAX).filter(|t| type_name(*t) != "UNKNOWN").collect();
    assert_eq!(types, defined, "every frame type needs a hex example");
    let ids: BTreeSet<&str> = parsed.iter().map(|(id, _, _)| id.as_str()).collect();
    let missing: Vec<_> = known.keys().filter(|k| !ids.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "examples missing from PROTOCOL.md: {missing:?}"
    );
}

#[test]
fn annotations_agree_with_the_codec() {
    for (id, f) in common::examples() {
        let annotated: Vec<u8> = annotate(&f).into_iter().flat_map(|(b, _)| b).collect();
        assert_eq!(annotated, common::enc(&f), "{id}");
    }
}

#[test]
fn generated_sections_are_current() {
    let doc = spec();
    assert!(
        section(&doc, "error-codes") == error_table(),
        "the error table is stale; run WAPING_WRITE_SPEC=1 cargo test -p waping-protocol --test spec"
    );
    assert!(
        section(&doc, "examples") == examples_section(),
        "the examples are stale; run WAPING_WRITE_SPEC=1 cargo test -p waping-protocol --test spec"
    );
}

// ------------------------------------------------------------- other tables

#[test]
fn frame_type_table_matches_the_codec() {
    let doc = spec();
    let mut seen = BTreeSet::new();
    for cells in table_rows(&doc) {
        let Some(hex) = cells[0].strip_prefix("`0x").and_then(|s| s.strip_suffix('`')) else {
            continue;
        };
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        let t = u8::from_str_radix(hex, 16).expect("hex type");
        assert_eq!(type_name(t), name, "type 0x{hex}");
        seen.insert(t);
    }
    let defined: BTreeSet<u8> = (0..=u8::MAX).filter(|t| type_name(*t) != "UNKNOWN").collect();
    assert_eq!(seen, defined, "the frame type table lists every type");
}

#[test]
fn limits_table_matches_the_constants() {
    let doc = spec();
    let want: BTreeMap<&str, u64> = [
        ("HARD_MAX_FRAME_LEN", u64::from(limits::HARD_MAX_FRAME_LEN)),
        ("DEFAULT_MAX_FRAME_LEN", u64::from(limits::DEFAULT_MAX_FRAME_LEN)),
        ("MAX_TEXT_LEN", limits::MAX_TEXT_LEN as u64),
        ("MAX_IDEMPOTENCY_KEY_LEN", limits::MAX_IDEMPOTENCY_KEY_LEN as u64),
        ("MAX_DEVICE_ID_LEN", limits::MAX_DEVICE_ID_LEN as u64),
        ("MAX_RECIPIENT_LEN", limits::MAX_RECIPIENT_LEN as u64),
        ("MAX_MEDIA_REFERENCE_LEN", limits::MAX_MEDIA_REFERENCE_LEN as u64),
        ("MIN_VERSION", u64::from(limits::MIN_VERSION)),
        ("MAX_VERSION", u64::from(limits::MAX_VERSION)),
        ("MAX_RECEIPT_IDS", limits::MAX_RECEIPT_IDS as u64),
        ("MIN_PHONE_DIGITS", limits::MIN_PHONE_DIGITS as u64),
        ("MAX_PHONE_DIGITS", limits::MAX_PHONE_DIGITS as u64),
    ]
    .into_iter()
    .collect();
    let mut found = BTreeMap::new();
    for cells in table_rows(&doc) {
        let Some(name) = cells[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if let Some((key, expected)) = want.get_key_value(name) {
            let digits: String = cells[1].chars().filter(|c| c.is_ascii_digit()).collect();
            let value: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {:?}", cells[1]));
            assert_eq!(value, *expected, "{name}");
            found.insert(*key, value);
        }
    }
    let missing: Vec<_> = want.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(missing.is_empty(), "limits missing from PROTOCOL.md: {missing:?}");
    let alpn = format!("`{}`", std::str::from_utf8(limits::ALPN).unwrap());
    assert!(doc.contains(&alpn), "PROTOCOL.md names the ALPN {alpn}");
}
