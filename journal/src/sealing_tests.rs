//! Behavioural tests of sealing: nothing secret on disk, tampering, crypto-shredding,
//! journals written before sealing was enabled, and the submitter field in every layout.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::record::{FRAME_HEADER, frame_into, kind};
use crate::tests::{T0, accepted, fast_cfg, id, open, segments, sent, unfinished_ids};
use crate::*;

/// Test sealer: XOR with a keystream derived from the workspace's key and the associated
/// data, prefixed by an 8-byte keyed checksum of (key, aad, plaintext). Not cryptography, but
/// any change to the blob or the associated data fails to open, which is what the tests need.
/// Workspaces can be shredded (open answers `KeyGone`) or refused (seal fails).
#[derive(Debug, Default)]
pub(crate) struct TestSealer {
    shredded: Mutex<HashSet<String>>,
    refused: Mutex<HashSet<String>>,
    opens: AtomicU64,
}

impl TestSealer {
    fn shred(&self, ws: &str) {
        self.shredded.lock().unwrap().insert(ws.to_owned());
    }
    fn refuse(&self, ws: &str) {
        self.refused.lock().unwrap().insert(ws.to_owned());
    }
    fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
    fn key(ws: &str) -> u32 {
        crc32c::crc32c(ws.as_bytes())
    }
}

fn keystream(key: u32, aad: &[u8], n: usize) -> impl Iterator<Item = u8> {
    let seed = crc32c::crc32c_append(key, aad);
    (0..n.div_ceil(4) as u32)
        .flat_map(move |i| crc32c::crc32c_append(seed, &i.to_le_bytes()).to_le_bytes())
        .take(n)
}

fn tag(key: u32, aad: &[u8], plain: &[u8]) -> [u8; 8] {
    let a = crc32c::crc32c_append(crc32c::crc32c_append(key, aad), plain);
    let b = crc32c::crc32c_append(crc32c::crc32c_append(!key, plain), aad);
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&a.to_le_bytes());
    t[4..].copy_from_slice(&b.to_le_bytes());
    t
}

impl RecordSealer for TestSealer {
    fn seal(&self, ws: &str, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealFailure> {
        if self.refused.lock().unwrap().contains(ws) || self.shredded.lock().unwrap().contains(ws) {
            return Err(SealFailure(format!("no key for {ws}")));
        }
        let key = Self::key(ws);
        let mut out = tag(key, aad, plain).to_vec();
        out.extend(
            plain
                .iter()
                .zip(keystream(key, aad, plain.len()))
                .map(|(p, k)| p ^ k),
        );
        Ok(out)
    }

    fn open(&self, ws: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        if self.shredded.lock().unwrap().contains(ws) {
            return Err(OpenFailure::KeyGone);
        }
        let key = Self::key(ws);
        let (t, c) = sealed
            .split_at_checked(8)
            .ok_or_else(|| OpenFailure::Invalid("shorter than the tag".into()))?;
        let plain: Vec<u8> = c
            .iter()
            .zip(keystream(key, aad, c.len()))
            .map(|(p, k)| p ^ k)
            .collect();
        if tag(key, aad, &plain) != t {
            return Err(OpenFailure::Invalid("checksum mismatch".into()));
        }
        Ok(plain)
    }
}

fn sealed_cfg(clock: &Clock, sealer: &Arc<TestSealer>) -> JournalConfig {
    JournalConfig {
        sealer: Some(sealer.clone()),
        // Files hold only their records: the tests search them byte by byte.
        preallocate: false,
        ..fast_cfg(clock)
    }
}

/// Message `i` of workspace `ws` with a recipient and a body unique to it.
fn msg(i: u64, ws: &str) -> AcceptedMessage {
    AcceptedMessage {
        id: id(i),
        workspace: ws.into(),
        device: format!("dev-{}", i % 2),
        idempotency_key: format!("key-{i}"),
        recipient: format!("+49-secret-recipient-{i:04}"),
        body: if i.is_multiple_of(2) {
            Body::Text(format!("secret body number {i:04}"))
        } else {
            Body::Media {
                reference: format!("s3://secret/ref-{i:04}"),
                mime: "image/png".into(),
                caption: format!("secret caption {i:04}"),
            }
        },
        accepted_at_ms: T0 + i,
        submitted_by: format!("api-key-{}", i % 3),
    }
}

fn inbound(i: u64, ws: &str) -> InboundMessage {
    InboundMessage {
        id: id(1000 + i),
        workspace: ws.into(),
        device: "dev-0".into(),
        from: format!("+49-secret-sender-{i:04}"),
        upstream_id: format!("3EB0SECRETUPSTREAM{i:04}"),
        body: Body::Text(format!("secret inbound text {i:04}")),
        received_at_ms: T0 + i,
    }
}

/// The secret strings of message `i` (and of inbound `i`).
fn secrets(i: u64) -> Vec<String> {
    vec![
        format!("secret-recipient-{i:04}"),
        format!("secret body number {i:04}"),
        format!("secret/ref-{i:04}"),
        format!("secret caption {i:04}"),
        format!("secret-sender-{i:04}"),
        format!("SECRETUPSTREAM{i:04}"),
        format!("secret inbound text {i:04}"),
    ]
}

/// Every segment file's bytes, concatenated.
fn disk(dir: &Path) -> Vec<u8> {
    segments(dir).iter().flat_map(|p| fs::read(p).unwrap()).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The sealed frame body of `rec` as the journal writes it (the test sealer is deterministic).
fn sealed_body(rec: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    rec.encode_sealed_into(&TestSealer::default(), &mut out, &mut Vec::new())
        .unwrap();
    out.split_off(FRAME_HEADER)
}

#[test]
fn sealed_records_round_trip_and_no_secret_reaches_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    {
        let (j, _) = open(tmp.path(), sealed_cfg(&clock, &sealer));
        for i in 0..10 {
            j.append(vec![
                Record::Accepted(msg(i, "acme")),
                Record::Inbound(inbound(i, "acme")),
            ])
            .wait()
            .unwrap();
        }
        j.append(vec![
            sent(1),
            Record::Dead {
                id: id(2),
                attempts: 3,
                last_code: 503,
                last_detail: "upstream down".into(),
                at_ms: T0 + 50,
            },
        ])
        .wait()
        .unwrap();
        // Opened in memory for the dead-letter API.
        let d = j.dead_letter(id(2)).wait().unwrap().unwrap();
        assert_eq!(d.message, msg(2, "acme"));
        j.close().unwrap();
    }
    // Control: without a sealer the same search finds them.
    let plain_dir = tmp.path().join("plain");
    {
        let c = JournalConfig {
            preallocate: false,
            ..fast_cfg(&clock)
        };
        let (j, _) = open(&plain_dir, c);
        j.append(vec![
            Record::Accepted(msg(0, "acme")),
            Record::Inbound(inbound(0, "acme")),
        ])
        .wait()
        .unwrap();
        j.close().unwrap();
    }
    let plain = disk(&plain_dir);
    assert!(
        secrets(0)
            .iter()
            .filter(|s| contains(&plain, s.as_bytes()))
            .count()
            >= 5
    );
    let bytes = disk(tmp.path());
    for i in 0..10 {
        for s in secrets(i) {
            assert!(!contains(&bytes, s.as_bytes()), "{s:?} is on disk in clear");
        }
    }
    // What replay and routing need stays readable.
    for plain in ["acme", "dev-1", "key-7", "api-key-2"] {
        assert!(contains(&bytes, plain.as_bytes()), "{plain} should be plain");
    }
    let opens_before = sealer.opens();
    let (_j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    assert!(rec.corruptions.is_empty(), "{:?}", rec.corruptions);
    let want: Vec<AcceptedMessage> = (0..10)
        .filter(|&i| i != 1 && i != 2)
        .map(|i| msg(i, "acme"))
        .collect();
    assert_eq!(
        rec.unfinished
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(rec.dead.len(), 1);
    assert_eq!(rec.dead[0].message, msg(2, "acme"));
    assert_eq!(
        rec.idempotency.len(),
        1,
        "the sent message's key, read from plain fields"
    );
    assert_eq!(rec.idempotency[0].idempotency_key, "key-1");
    assert_eq!(rec.stats.shredded_records, 0);
    assert_eq!(
        sealer.opens() - opens_before,
        9,
        "replay opens only the messages it returns: not the sent one, not inbound records"
    );
}

#[test]
fn a_tampered_sealed_record_is_reported_as_corrupt_and_the_rest_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    let mut ends = Vec::new();
    {
        let (j, _) = open(tmp.path(), sealed_cfg(&clock, &sealer));
        for i in 0..6 {
            ends.push(j.append(vec![Record::Accepted(msg(i, "acme"))]).wait().unwrap());
        }
        j.close().unwrap();
    }
    let seg = segments(tmp.path()).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    // Record 2: one bit of the sealed blob (its last byte). Record 4: one byte of a plain
    // field (the idempotency key), which the associated data covers. Both get a valid CRC,
    // as a deliberate edit would.
    let at = |i: usize| ends[i - 1].offset() as usize;
    let end2 = ends[2].offset() as usize;
    data[end2 - 1] ^= 0x01;
    let key4 = at(4) + data[at(4)..].windows(5).position(|w| w == b"key-4").unwrap();
    data[key4 + 4] = b'9';
    for i in [2, 4] {
        let (start, end) = (at(i), ends[i].offset() as usize);
        let crc = crc32c::crc32c(&data[start + FRAME_HEADER..end]);
        data[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    fs::write(&seg, &data).unwrap();
    let (j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    let bad: Vec<(u64, &str)> = rec
        .corruptions
        .iter()
        .map(|c| (c.offset, c.reason.as_str()))
        .collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0].0, at(2) as u64);
    assert_eq!(bad[1].0, at(4) as u64);
    assert!(bad.iter().all(|(_, r)| r.contains("does not open")), "{bad:?}");
    assert_eq!(rec.stats.corruptions, 2);
    assert_eq!(rec.stats.shredded_records, 0, "tampering is not shredding");
    assert_eq!(unfinished_ids(&rec), [0, 1, 3, 5].map(id));
    // The journal keeps working.
    j.append(vec![Record::Accepted(msg(9, "acme"))]).wait().unwrap();
    drop(j);
    let (_j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    assert_eq!(unfinished_ids(&rec), [0, 1, 3, 5, 9].map(id));
}

#[test]
fn a_shredded_workspace_is_skipped_and_compaction_removes_its_ciphertext() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    let c = JournalConfig {
        segment_size: 8192,
        ..sealed_cfg(&clock, &sealer)
    };
    let ws = |i: u64| if i.is_multiple_of(2) { "gone" } else { "kept" };
    {
        let (j, _) = open(tmp.path(), c.clone());
        for i in 0..40 {
            j.append(vec![Record::Accepted(msg(i, ws(i)))]).wait().unwrap();
        }
        j.append(vec![Record::Inbound(inbound(0, "gone"))])
            .wait()
            .unwrap();
        // 0..10 finished; 10 and 11 dead; the rest unfinished.
        j.append((0..10).map(sent).collect()).wait().unwrap();
        for i in [10, 11] {
            j.append(vec![Record::Dead {
                id: id(i),
                attempts: 2,
                last_code: 1,
                last_detail: "d".into(),
                at_ms: T0 + 100,
            }])
            .wait()
            .unwrap();
        }
        j.close().unwrap();
    }
    let gone_blobs: Vec<Vec<u8>> = (0..40)
        .filter(|&i| ws(i) == "gone")
        .map(|i| sealed_body(&Record::Accepted(msg(i, "gone"))))
        .chain([sealed_body(&Record::Inbound(inbound(0, "gone")))])
        .collect();
    let before = disk(tmp.path());
    assert!(gone_blobs.iter().all(|b| contains(&before, b)));

    sealer.shred("gone");
    let (j, rec) = open(tmp.path(), c.clone());
    assert!(
        rec.corruptions.is_empty(),
        "shredding is not corruption: {:?}",
        rec.corruptions
    );
    // Live messages of "gone": 12, 14, ..., 38 unfinished and 10 dead.
    assert_eq!(rec.stats.shredded_records, 15);
    let kept_unfinished: Vec<MessageId> = (12..40).filter(|i| i % 2 == 1).map(id).collect();
    assert_eq!(unfinished_ids(&rec), kept_unfinished);
    assert_eq!(
        rec.dead.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![id(11)]
    );
    assert!(rec.unfinished.iter().all(|p| p.message.workspace == "kept"));
    // Like purged messages, their keys stay in the window (read from plain fields).
    assert!(
        rec.idempotency
            .iter()
            .any(|e| e.id == id(12) && e.workspace == "gone")
    );
    // Later transitions for them are ignored as for unknown ids.
    j.append(vec![sent(12), sent(13)]).wait().unwrap();
    assert_eq!(j.message_status(id(14)).wait().unwrap(), None);
    assert!(j.dead_letter(id(10)).wait().unwrap().is_none());

    let rep = j.compact_now().wait().unwrap();
    assert!(rep.segments_compacted + rep.segments_deleted > 0, "{rep:?}");
    let after = disk(tmp.path());
    for (n, b) in gone_blobs.iter().enumerate() {
        assert!(
            !contains(&after, b),
            "ciphertext {n} of the shredded workspace survived compaction"
        );
    }
    // The other workspace's sealed records were carried byte for byte.
    for i in (15..40).filter(|i| i % 2 == 1) {
        assert!(
            contains(&after, &sealed_body(&Record::Accepted(msg(i, "kept")))),
            "{i}"
        );
    }
    drop(j);
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(unfinished_ids(&rec), kept_unfinished[1..].to_vec());
    assert_eq!(rec.dead.len(), 1);
    assert_eq!(
        rec.stats.shredded_records, 0,
        "nothing of the shredded workspace is left"
    );
}

#[test]
fn dead_letters_of_a_workspace_shredded_while_open_are_dropped_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    let (j, _) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    for i in 0..4 {
        let w = if i < 2 { "gone" } else { "kept" };
        j.append(vec![
            Record::Accepted(msg(i, w)),
            Record::Dead {
                id: id(i),
                attempts: 1,
                last_code: 9,
                last_detail: String::new(),
                at_ms: T0 + 10,
            },
        ])
        .wait()
        .unwrap();
    }
    sealer.shred("gone");
    let page = j.dead_letters(None, 2).wait().unwrap();
    assert_eq!(
        page.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        [2, 3].map(id),
        "the page is refilled past the dropped letters"
    );
    assert_eq!(j.stats().shredded_records, 2);
    assert_eq!(j.message_status(id(0)).wait().unwrap(), None);
    assert_eq!(j.dead_letters(None, 10).wait().unwrap().len(), 2);
}

#[test]
fn a_seal_failure_fails_the_whole_append_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    sealer.refuse("refused");
    let (j, _) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    let e = j
        .append(vec![
            Record::Accepted(msg(1, "ok")),
            Record::Accepted(msg(2, "refused")),
        ])
        .wait()
        .unwrap_err();
    match &e {
        JournalError::Seal { workspace, reason } => {
            assert_eq!(workspace, "refused");
            assert!(reason.contains("no key for refused"), "{reason}");
        }
        other => panic!("expected Seal, got {other:?}"),
    }
    assert_eq!(e.fault(), Fault::Internal);
    let e = j
        .append_background(vec![Record::Inbound(inbound(1, "refused"))])
        .unwrap_err();
    assert!(matches!(e, JournalError::Seal { .. }));
    j.append(vec![Record::Accepted(msg(3, "ok"))]).wait().unwrap();
    assert_eq!(j.stats().appends, 1);
    drop(j);
    let (_j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    assert_eq!(unfinished_ids(&rec), vec![id(3)]);
    assert_eq!(rec.stats.records, 1);
}

/// The body of an `Accepted` record in the layout of kind 1 (before `submitted_by`
/// existed), as an older version wrote it.
fn v1_body(a: &AcceptedMessage) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 128);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = vec![kind::ACCEPTED];
    body.extend_from_slice(&a.id.0);
    for s in [&a.workspace, &a.device, &a.idempotency_key, &a.recipient] {
        put_str(&mut body, s);
    }
    let Body::Text(t) = &a.body else {
        panic!("text only")
    };
    body.push(0);
    put_str(&mut body, t);
    body.extend_from_slice(&a.accepted_at_ms.to_le_bytes());
    body
}

/// Writes segment 1 by hand with kind-1 `Accepted` records.
fn write_v1_segment(dir: &Path, msgs: &[AcceptedMessage]) {
    fs::create_dir_all(dir).unwrap();
    let mut data = crate::segment::header(1).to_vec();
    for a in msgs {
        frame_into(&mut data, &v1_body(a));
    }
    fs::write(crate::segment::segment_path(dir, 1), data).unwrap();
}

#[test]
fn journals_written_before_sealing_keep_working_and_sealed_ones_need_the_sealer() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let sealer = Arc::new(TestSealer::default());
    let v1 = |i| AcceptedMessage {
        submitted_by: String::new(),
        ..msg(i, "acme")
    };
    write_v1_segment(tmp.path(), &[v1(0), v1(2)]);
    {
        // Plaintext journal of this version: kind 11, with the submitter.
        let (j, rec) = open(tmp.path(), fast_cfg(&clock));
        assert_eq!(rec.unfinished.len(), 2);
        assert_eq!(rec.unfinished[0].message, v1(0), "old layout: empty submitter");
        j.append(vec![Record::Accepted(msg(3, "acme"))]).wait().unwrap();
        j.close().unwrap();
    }
    {
        // Sealing enabled later: older records stay readable, new ones are sealed.
        let (j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
        assert_eq!(unfinished_ids(&rec), [0, 2, 3].map(id));
        assert_eq!(rec.unfinished[2].message, msg(3, "acme"));
        j.append(vec![Record::Accepted(msg(4, "acme")), sent(0)])
            .wait()
            .unwrap();
        j.close().unwrap();
    }
    let segs = segments(tmp.path());
    let sealed_seg = segs.last().unwrap().clone();
    let e = Journal::open(tmp.path(), fast_cfg(&clock)).unwrap_err();
    assert_eq!(e.fault(), Fault::Caller);
    assert!(e.to_string().contains("no sealer is configured"), "{e}");
    match e {
        JournalError::SealerRequired {
            segment,
            path,
            offset,
        } => {
            assert_eq!(path, sealed_seg);
            assert_eq!(segment, 1);
            assert!(offset > SEGMENT_HEADER_LEN as u64);
        }
        other => panic!("expected SealerRequired, got {other:?}"),
    }
    // Nothing was lost by the refused open.
    let (j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    assert_eq!(
        rec.unfinished
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>(),
        vec![v1(2), msg(3, "acme"), msg(4, "acme")]
    );
    // Compaction carries all three layouts byte for byte (old ones are not re-sealed).
    j.compact_now().wait().unwrap();
    drop(j);
    assert!(
        !segments(tmp.path()).contains(&sealed_seg),
        "segment 1 was compacted away"
    );
    assert!(contains(&disk(tmp.path()), &v1_body(&v1(2))));
    let (_j, rec) = open(tmp.path(), sealed_cfg(&clock, &sealer));
    assert_eq!(
        rec.unfinished
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>(),
        vec![v1(2), msg(3, "acme"), msg(4, "acme")]
    );
}

#[test]
fn submitted_by_survives_restart_in_both_layouts() {
    for sealed in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let sealer = Arc::new(TestSealer::default());
        let c = if sealed {
            sealed_cfg(&clock, &sealer)
        } else {
            fast_cfg(&clock)
        };
        {
            let (j, _) = open(tmp.path(), c.clone());
            j.append(vec![accepted(1, T0), accepted(2, T0)]).wait().unwrap();
            j.append(vec![Record::Dead {
                id: id(2),
                attempts: 1,
                last_code: 3,
                last_detail: String::new(),
                at_ms: T0,
            }])
            .wait()
            .unwrap();
            j.close().unwrap();
        }
        let (j, rec) = open(tmp.path(), c);
        let ctx = format!("sealed {sealed}");
        assert_eq!(rec.unfinished[0].message.submitted_by, "key-id-1", "{ctx}");
        assert_eq!(rec.dead[0].message.submitted_by, "key-id-0", "{ctx}");
        let live = j.dead_letter(id(2)).wait().unwrap().unwrap();
        assert_eq!(live.message.submitted_by, "key-id-0", "{ctx}");
        let st = j.message_status(id(1)).wait().unwrap().unwrap();
        assert_eq!(st.submitted_by, "key-id-1", "{ctx}");
    }
}
