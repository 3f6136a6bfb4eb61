//! Behavioural tests of the journal: replay, torn tails, corruption, compaction, bounds,
//! group commit, locking, dead letters, idempotency.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::*;

pub(crate) const T0: u64 = 1_700_000_000_000;

pub(crate) fn id(i: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[8] = 0x70;
    MessageId(b)
}

pub(crate) fn accepted(i: u64, at: u64) -> Record {
    Record::Accepted(AcceptedMessage {
        id: id(i),
        workspace: format!("ws{}", i % 3),
        device: "dev-1".into(),
        idempotency_key: format!("key-{i}"),
        recipient: "4915112345678".into(),
        body: Body::Text(format!("message {i} {}", "x".repeat(150))),
        accepted_at_ms: at,
        submitted_by: format!("key-id-{}", i % 2),
    })
}

pub(crate) fn sent(i: u64) -> Record {
    Record::Sent {
        id: id(i),
        upstream_id: format!("up-{i}"),
        at_ms: T0 + 1,
    }
}

fn cfg(clock: &Clock) -> JournalConfig {
    JournalConfig {
        clock: clock.clone(),
        sync: SyncMode::Data,
        ..Default::default()
    }
}

pub(crate) fn fast_cfg(clock: &Clock) -> JournalConfig {
    JournalConfig {
        clock: clock.clone(),
        sync: SyncMode::None,
        ..Default::default()
    }
}

pub(crate) fn open(dir: &Path, c: JournalConfig) -> (Journal, Recovered) {
    Journal::open(dir, c).expect("open")
}

pub(crate) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Bytes allocated on disk for segments (preallocated segments are sparse).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // The writer may delete a segment while we list: a vanished file counts 0.
    segments(dir)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

pub(crate) fn unfinished_ids(r: &Recovered) -> Vec<MessageId> {
    r.unfinished.iter().map(|p| p.message.id).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for p in segments(from) {
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Minimal executor: proves the completion works with `.await` and no runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct T(std::thread::Thread);
    impl Wake for T {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(T(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn append_reopen_replays_exactly_the_unfinished_set() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    {
        let (j, rec) = open(tmp.path(), cfg(&clock));
        assert!(rec.unfinished.is_empty() && rec.corruptions.is_empty());
        for i in 0..20 {
            j.append(vec![accepted(i, T0 + i)]).wait().unwrap();
        }
        let lsn = block_on(j.append(vec![
            Record::Dispatched {
                id: id(1),
                attempt: 1,
                at_ms: T0 + 50,
            },
            Record::Dispatched {
                id: id(2),
                attempt: 1,
                at_ms: T0 + 50,
            },
            Record::RetryScheduled {
                id: id(2),
                attempt: 1,
                due_at_ms: T0 + 9000,
                last_code: 503,
            },
            sent(3),
            Record::Failed {
                id: id(4),
                code: 400,
                at_ms: T0 + 60,
            },
            Record::Dead {
                id: id(5),
                attempts: 5,
                last_code: 503,
                last_detail: "gone".into(),
                at_ms: T0 + 70,
            },
            sent(6),
        ]))
        .unwrap();
        assert!(j.durable_lsn() >= lsn);
        j.append_background(vec![sent(7), sent(8)]).unwrap();
        j.close().unwrap();
    }
    let (j, rec) = open(tmp.path(), cfg(&clock));
    let expect: Vec<MessageId> = (0..20)
        .filter(|i| ![3, 4, 5, 6, 7, 8].contains(i))
        .map(id)
        .collect();
    assert_eq!(
        unfinished_ids(&rec),
        expect,
        "accept order, finished and dead ones left out"
    );
    let p1 = rec.unfinished.iter().find(|p| p.message.id == id(1)).unwrap();
    assert_eq!(p1.state, PendingState::InFlight { attempt: 1 });
    assert_eq!(p1.attempts, 1);
    let p2 = rec.unfinished.iter().find(|p| p.message.id == id(2)).unwrap();
    assert_eq!(
        p2.state,
        PendingState::RetryWait {
            attempt: 1,
            due_at_ms: T0 + 9000,
            last_code: 503
        }
    );
    assert_eq!(
        rec.unfinished[0].message,
        match accepted(0, T0) {
            Record::Accepted(a) => a,
            _ => unreachable!(),
        }
    );
    assert_eq!(rec.unfinished[0].state, PendingState::Queued);
    assert_eq!(rec.dead.len(), 1);
    assert_eq!(rec.dead[0].message.id, id(5));
    assert_eq!(rec.dead[0].last_detail, "gone");
    // Keys of finished messages come separately; all 20 are inside the window.
    assert_eq!(
        rec.idempotency.iter().map(|e| e.id).collect::<Vec<_>>(),
        [3, 4, 6, 7, 8].map(id)
    );
    let window = cfg(&clock).idempotency_window.as_millis() as u64;
    assert_eq!(rec.idempotency_keys(T0, window).count(), 20);
    assert_eq!(rec.idempotency_keys(T0 + window + 19, window).count(), 0);
    assert_eq!(rec.stats.records, 29);
    assert_eq!(rec.stats.torn_tail_truncated_bytes, 0);
    drop(j);
}

#[test]
fn lock_prevents_a_second_open() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let (j, _) = open(tmp.path(), fast_cfg(&clock));
    match Journal::open(tmp.path(), fast_cfg(&clock)) {
        Err(e @ JournalError::Locked { .. }) => {
            let JournalError::Locked { pid, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*pid, Some(std::process::id()));
            assert!(!e.retryable());
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(j);
    let (_j, _) = open(tmp.path(), fast_cfg(&clock));
}

fn cfg_pre(clock: &Clock, preallocate: bool) -> JournalConfig {
    // Small segments: these tests rewrite whole segment files many times.
    JournalConfig {
        preallocate,
        segment_size: 16 << 10,
        ..fast_cfg(clock)
    }
}

/// Writes 5 records; returns the offset and length of the last record.
fn five_records(dir: &Path, c: JournalConfig) -> (u64, u64) {
    let (j, _) = open(dir, c);
    let mut lsn = Lsn::default();
    for i in 0..5 {
        lsn = j.append(vec![accepted(i, T0)]).wait().unwrap();
    }
    let last_len = accepted(4, T0).encode().len() as u64;
    j.close().unwrap();
    (lsn.offset() - last_len, last_len)
}

/// Bytes after `from` are all zero (or absent).
fn zero_after(path: &Path, from: u64) -> bool {
    fs::read(path)
        .unwrap()
        .get(from as usize..)
        .is_none_or(|t| t.iter().all(|&b| b == 0))
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_truncated() {
    for preallocate in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let c = cfg_pre(&clock, preallocate);
        let orig = tmp.path().join("orig");
        let (start, len) = five_records(&orig, c.clone());
        let original = fs::read(segments(&orig).pop().unwrap()).unwrap();
        let work = tmp.path().join("work");
        for cut in start..start + len {
            copy_dir(&orig, &work);
            let seg = segments(&work).pop().unwrap();
            // The crash persisted the last record only up to `cut`: a shorter file, or (in a
            // preallocated segment) zeros where the rest should be.
            if preallocate {
                let mut data = original.clone();
                data[cut as usize..(start + len) as usize].fill(0);
                fs::write(&seg, &data).unwrap();
            } else {
                let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(cut).unwrap();
            }
            let torn = original[start as usize..cut as usize]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            // Zeroing bytes that were zero already (the high bytes of the timestamp) leaves
            // the record whole.
            let intact = preallocate
                && original[cut as usize..(start + len) as usize]
                    .iter()
                    .all(|&b| b == 0);
            let (j, rec) = open(&work, c.clone());
            let ctx = format!("preallocate {preallocate} cut at {cut}");
            if intact {
                assert_eq!(rec.unfinished.len(), 5, "{ctx}");
                assert_eq!(rec.stats.torn_tail_truncated_bytes, 0, "{ctx}");
                continue;
            }
            assert_eq!(unfinished_ids(&rec), (0..4).map(id).collect::<Vec<_>>(), "{ctx}");
            assert!(rec.corruptions.is_empty(), "{ctx}: {:?}", rec.corruptions);
            assert_eq!(rec.stats.torn_tail_truncated_bytes, torn as u64, "{ctx}");
            assert!(zero_after(&seg, start), "{ctx}: the torn bytes are gone");
            let want_len = if preallocate { c.segment_size } else { start };
            assert_eq!(fs::metadata(&seg).unwrap().len(), want_len, "{ctx}");
            j.append(vec![accepted(9, T0)]).wait().unwrap();
            j.close().unwrap();
            let (_j, rec) = open(&work, c.clone());
            assert_eq!(unfinished_ids(&rec), [0, 1, 2, 3, 9].map(id).to_vec(), "{ctx}");
            assert_eq!(rec.stats.torn_tail_truncated_bytes, 0);
        }
    }
}

#[test]
fn garbage_after_the_tail_is_truncated() {
    for preallocate in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let c = cfg_pre(&clock, preallocate);
        let (start, len) = five_records(tmp.path(), c.clone());
        let end = start + len;
        let seg = segments(tmp.path()).pop().unwrap();
        let cycle: Vec<u8> = (0..=255u8).cycle().skip(1).take(1000).collect();
        // (garbage, bytes it makes torn): zeros are just an unwritten tail.
        for (garbage, torn) in [(vec![0u8; 4096], 0), (vec![0xff; 13], 13), (cycle, 1000)] {
            let mut data = fs::read(&seg).unwrap();
            data[end as usize..].fill(0);
            if !preallocate {
                data.truncate(end as usize);
            }
            let at = end as usize;
            if data.len() < at + garbage.len() {
                data.resize(at + garbage.len(), 0);
            }
            data[at..at + garbage.len()].copy_from_slice(&garbage);
            fs::write(&seg, &data).unwrap();
            let (j, rec) = open(tmp.path(), c.clone());
            let ctx = format!("preallocate {preallocate}, {} bytes of garbage", garbage.len());
            assert_eq!(rec.unfinished.len(), 5, "{ctx}");
            assert!(rec.corruptions.is_empty(), "{ctx}");
            assert_eq!(rec.stats.torn_tail_truncated_bytes, torn, "{ctx}");
            assert!(zero_after(&seg, end), "{ctx}");
            drop(j);
        }
        // A frame that looks complete but whose checksum is wrong, with nothing valid after it.
        let mut data = fs::read(&seg).unwrap();
        data.truncate(end as usize);
        let mut fake = accepted(77, T0).encode();
        let n = fake.len();
        fake[n - 1] ^= 1;
        data.extend_from_slice(&fake);
        fs::write(&seg, &data).unwrap();
        let (j, rec) = open(tmp.path(), c.clone());
        assert_eq!(rec.unfinished.len(), 5);
        assert_eq!(rec.stats.torn_tail_truncated_bytes, n as u64);
        drop(j);
        // A hole (unwritten page of a torn multi-page write) with data after it that was never
        // acknowledged: cut at the hole.
        let mut data = fs::read(&seg).unwrap();
        let mut more = Vec::new();
        for i in 100..120 {
            more.extend_from_slice(&accepted(i, T0).encode());
        }
        data.truncate(end as usize);
        data.extend_from_slice(&more);
        data[end as usize..end as usize + 600].fill(0);
        fs::write(&seg, &data).unwrap();
        let (j, rec) = open(tmp.path(), c.clone());
        drop(j);
        assert_eq!(
            rec.unfinished.len(),
            5,
            "records after the hole are not acknowledged data"
        );
        assert!(rec.corruptions.is_empty());
        let last_nonzero = more.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert_eq!(rec.stats.torn_tail_truncated_bytes, last_nonzero as u64);
        assert!(zero_after(&seg, end));
        if preallocate {
            // Garbage deep inside the sparse tail (only allocated extents are scanned).
            let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"stray", c.segment_size - 100).unwrap();
            drop(f);
            let (_j, rec) = open(tmp.path(), c.clone());
            assert_eq!(rec.unfinished.len(), 5);
            assert_eq!(rec.stats.torn_tail_truncated_bytes, c.segment_size - 95 - end);
            assert!(zero_after(&seg, end));
        }
    }
}

#[test]
fn bit_flip_in_a_middle_record_is_reported_and_the_rest_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut offsets = Vec::new();
    {
        let (j, _) = open(tmp.path(), fast_cfg(&clock));
        for i in 0..10 {
            offsets.push(j.append(vec![accepted(i, T0)]).wait().unwrap());
        }
        j.close().unwrap();
    }
    // Record 4 starts where record 3 ended.
    let bad_at = offsets[3].offset();
    let seg = segments(tmp.path()).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    data[bad_at as usize + 40] ^= 0x10; // inside the payload
    fs::write(&seg, &data).unwrap();
    let (j, rec) = open(tmp.path(), fast_cfg(&clock));
    assert_eq!(rec.corruptions.len(), 1, "{:?}", rec.corruptions);
    let c = &rec.corruptions[0];
    assert_eq!((c.segment, c.offset), (offsets[3].segment(), bad_at));
    assert!(c.reason.contains("checksum"), "{}", c.reason);
    assert_eq!(rec.stats.corruptions, 1);
    assert_eq!(
        rec.stats.torn_tail_truncated_bytes, 0,
        "not a torn tail: later records are valid"
    );
    let want: Vec<MessageId> = (0..10).filter(|&i| i != 4).map(id).collect();
    assert_eq!(unfinished_ids(&rec), want);
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        data.len() as u64,
        "nothing truncated"
    );
    // Appends after it keep working and the corruption stays reported, not worse.
    j.append(vec![accepted(50, T0)]).wait().unwrap();
    drop(j);
    let (_j, rec) = open(tmp.path(), fast_cfg(&clock));
    assert_eq!(rec.corruptions.len(), 1);
    assert_eq!(rec.unfinished.len(), 10);
}

#[test]
fn corruption_in_a_segment_that_is_not_last() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        segment_size: 4096,
        ..fast_cfg(&clock)
    };
    let mut lsns = Vec::new();
    {
        let (j, _) = open(tmp.path(), c.clone());
        for i in 0..60 {
            lsns.push(j.append(vec![accepted(i, T0)]).wait().unwrap());
        }
        j.close().unwrap();
    }
    let segs = segments(tmp.path());
    assert!(segs.len() >= 3);
    let first_seg = lsns[0].segment();
    // Records 1 (flip in payload) and the length field of the last record of the first segment.
    let in_first: Vec<usize> = (0..60).filter(|&i| lsns[i].segment() == first_seg).collect();
    let last_i = *in_first.last().unwrap();
    let mut data = fs::read(&segs[0]).unwrap();
    data[lsns[0].offset() as usize + 30] ^= 0x01; // record 1
    let last_start = lsns[last_i - 1].offset() as usize; // start of record `last_i`
    data[last_start + 2] = 0xff; // implausible length
    fs::write(&segs[0], &data).unwrap();
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(rec.corruptions.len(), 2, "{:?}", rec.corruptions);
    assert_eq!(
        (rec.corruptions[0].segment, rec.corruptions[0].offset),
        (first_seg, lsns[0].offset())
    );
    assert_eq!(
        (rec.corruptions[1].segment, rec.corruptions[1].offset),
        (first_seg, last_start as u64)
    );
    assert!(rec.corruptions[1].reason.contains("rest of the segment skipped"));
    assert_eq!(rec.stats.torn_tail_truncated_bytes, 0);
    let want: Vec<MessageId> = (0..60)
        .filter(|&i| i != 1 && i != last_i as u64)
        .map(id)
        .collect();
    assert_eq!(unfinished_ids(&rec), want);
}

#[test]
fn compaction_keeps_unfinished_and_idempotency_in_window_and_drops_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let window = Duration::from_secs(600);
    let c = JournalConfig {
        segment_size: 8192,
        idempotency_window: window,
        ..fast_cfg(&clock)
    };
    {
        let (j, _) = open(tmp.path(), c.clone());
        // 0..40 accepted at T0 (old), 40..80 at T0 + 500 s.
        for i in 0..80 {
            let at = if i < 40 { T0 } else { T0 + 500_000 };
            j.append(vec![accepted(i, at)]).wait().unwrap();
        }
        // Finish all except multiples of 10; 5 is dead, 15 waits for a retry.
        for i in (0..80).filter(|i| i % 10 != 0 && *i != 5 && *i != 15) {
            j.append(vec![sent(i)]).wait().unwrap();
        }
        j.append(vec![
            Record::Dead {
                id: id(5),
                attempts: 3,
                last_code: 1,
                last_detail: "d".into(),
                at_ms: T0 + 2,
            },
            Record::RetryScheduled {
                id: id(15),
                attempt: 2,
                due_at_ms: T0 + 7,
                last_code: 9,
            },
        ])
        .wait()
        .unwrap();
        let before = dir_bytes(tmp.path());
        // Past the window of the first 40, inside the window of the rest.
        clock.set_ms(T0 + 700_000);
        let rep = j.compact_now().wait().unwrap();
        assert!(rep.segments_compacted + rep.segments_deleted >= 2, "{rep:?}");
        assert!(rep.records_carried > 0);
        let after = dir_bytes(tmp.path());
        assert!(after < before / 2, "compaction shrank {before} -> {after}");
        assert_eq!(
            segments(tmp.path()).len(),
            1 + usize::from(segments(tmp.path()).len() > 1)
        );
        j.close().unwrap();
    }
    let (_j, rec) = open(tmp.path(), c);
    let mut want: Vec<u64> = (0..80).filter(|i| i % 10 == 0 || *i == 15).collect();
    want.sort_by_key(|&i| (if i < 40 { T0 } else { T0 + 500_000 }, i));
    assert_eq!(
        unfinished_ids(&rec),
        want.iter().map(|&i| id(i)).collect::<Vec<_>>()
    );
    let p15 = rec.unfinished.iter().find(|p| p.message.id == id(15)).unwrap();
    assert_eq!(
        p15.state,
        PendingState::RetryWait {
            attempt: 2,
            due_at_ms: T0 + 7,
            last_code: 9
        }
    );
    assert_eq!(rec.dead.len(), 1);
    assert_eq!(rec.dead[0].message.id, id(5));
    // Keys: all of 40..80 (in window, finished or not) + unfinished/dead old ones only if in
    // window: the old ones (accepted at T0) are out of the window now.
    let keys: HashSet<MessageId> = rec
        .idempotency_keys(clock.now_ms(), window.as_millis() as u64)
        .map(|e| e.id)
        .collect();
    let want_keys: HashSet<MessageId> = (40..80).map(id).collect();
    assert_eq!(keys, want_keys);
    assert!(
        rec.idempotency
            .iter()
            .all(|e| e.idempotency_key
                == format!("key-{}", u64::from_be_bytes(e.id.0[..8].try_into().unwrap())))
    );
}

#[test]
fn disk_stays_bounded_under_steady_load() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let seg = 64 << 10;
    let c = JournalConfig {
        segment_size: seg,
        idempotency_window: Duration::from_secs(20),
        compaction_trigger_segments: 2,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c);
    let mut max_bytes = 0;
    let mut in_flight = std::collections::VecDeque::new();
    let total = 100_000u64;
    for i in 0..total {
        // 1 ms per message: the window covers the last 20 000 messages.
        clock.set_ms(T0 + i);
        j.append_background(vec![accepted(i, T0 + i)]).unwrap();
        in_flight.push_back(i);
        if in_flight.len() > 100 {
            let k = in_flight.pop_front().unwrap();
            j.append_background(vec![
                Record::Dispatched {
                    id: id(k),
                    attempt: 1,
                    at_ms: T0 + i,
                },
                sent(k),
            ])
            .unwrap();
        }
        if i % 5000 == 0 {
            j.flush().wait().unwrap();
            max_bytes = max_bytes.max(dir_bytes(tmp.path()));
        }
    }
    j.flush().wait().unwrap();
    let st = j.stats();
    // Live data: ~100 unfinished messages and 20 000 idempotency keys (~50 B each, counted as
    // 72 until they expire); compaction starts once half of the log is garbage and lags by a
    // few segments.
    let bound = 3 * 20_000 * 80 + 12 * seg;
    eprintln!(
        "steady load: max {max_bytes} B on disk (bound {bound}), {} B written",
        st.bytes
    );
    assert!(max_bytes < bound, "max {max_bytes} bound {bound} stats {st:?}");
    assert!(
        st.bytes > 5 * bound,
        "the test wrote far more than the bound: {}",
        st.bytes
    );
    assert!(st.segments_deleted > 10, "{st:?}");
    drop(j);
}

#[test]
fn overloaded_when_bounds_are_exceeded() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        max_disk_bytes: 64 << 10,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c.clone());
    let mut n = 0u64;
    let err = loop {
        match j.append(vec![accepted(n, T0)]).wait() {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000);
    };
    assert!(
        matches!(
            err,
            JournalError::Overloaded {
                reason: OverloadReason::DiskFull,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.retryable());
    assert_eq!(err.fault(), Fault::Internal);
    assert_eq!(err.retry_after(), Some(c.disk_full_retry_after));
    assert!(n > 100);
    // Transitions are still taken: work can finish.
    j.append(vec![sent(0)]).wait().unwrap();
    assert_eq!(j.stats().overloaded, 1);
    drop(j);
    // Nothing refused was persisted.
    let (j, rec) = open(tmp.path(), c);
    assert_eq!(rec.unfinished.len() as u64, n - 1);
    drop(j);

    // Queue bound: nothing may wait for the writer.
    let tmp2 = tempfile::tempdir().unwrap();
    let c = JournalConfig {
        max_queued_bytes: 10,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp2.path(), c);
    let err = j.append(vec![accepted(1, T0)]).wait().unwrap_err();
    assert!(matches!(
        err,
        JournalError::Overloaded {
            reason: OverloadReason::QueueFull,
            ..
        }
    ));
    // Too large for a segment: the caller's fault.
    let big = Record::Accepted(AcceptedMessage {
        id: id(2),
        workspace: "w".into(),
        device: "d".into(),
        idempotency_key: "k".into(),
        recipient: "r".into(),
        body: Body::Text("x".repeat(70 << 20)),
        accepted_at_ms: T0,
        submitted_by: String::new(),
    });
    let err = j.append(vec![big]).wait().unwrap_err();
    assert!(matches!(err, JournalError::TooLarge { .. }));
    assert_eq!(err.fault(), Fault::Caller);
}

#[test]
fn group_commit_batches_concurrent_appenders() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let (j, _) = open(tmp.path(), cfg(&clock));
    let j = Arc::new(j);
    let threads = 16u64;
    let per = 50u64;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for k in 0..per {
                    let lsn = j.append(vec![accepted(t * 1000 + k, T0)]).wait().unwrap();
                    // Resolved only once synced up to (at least) its own end.
                    assert!(j.durable_lsn() >= lsn);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let st = j.stats();
    assert_eq!(st.records, threads * per);
    assert!(st.syncs < threads * per, "group commit must share syncs: {st:?}");
    Arc::try_unwrap(j).unwrap().close().unwrap();
    let (_j, rec) = open(tmp.path(), cfg(&clock));
    assert_eq!(rec.unfinished.len() as u64, threads * per);
}

#[test]
fn every_sync_is_timed_in_the_latency_histogram() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let (j, _) = open(tmp.path(), cfg(&clock));
    assert_eq!(j.stats().sync_latency, SyncLatency::default());
    for i in 0..20 {
        j.append(vec![accepted(i, T0)]).wait().unwrap();
    }
    j.flush().wait().unwrap();
    let st = j.stats();
    assert!(st.syncs >= 1, "{st:?}");
    assert_eq!(st.sync_latency.count(), st.syncs, "{st:?}");
    // A real fdatasync takes time; each bucket's sum lies within the bucket's bounds.
    assert!(st.sync_latency.total_ns() > 0, "{st:?}");
    for (b, (&n, &sum)) in st
        .sync_latency
        .counts
        .iter()
        .zip(&st.sync_latency.sum_ns)
        .enumerate()
    {
        let hi = SYNC_LATENCY_BOUNDS_NS.get(b).copied().unwrap_or(u64::MAX);
        let lo = if b == 0 { 0 } else { SYNC_LATENCY_BOUNDS_NS[b - 1] };
        assert!(sum <= n.saturating_mul(hi), "bucket {b}: {n} syncs, {sum} ns");
        assert!(n == 0 || sum > n * lo, "bucket {b}: {n} syncs, {sum} ns");
    }
}

#[test]
fn sync_latency_buckets_are_inclusive_upper_bounds() {
    assert_eq!(SyncLatency::bucket_of(0), 0);
    assert_eq!(SyncLatency::bucket_of(50_000), 0);
    assert_eq!(SyncLatency::bucket_of(50_001), 1);
    assert_eq!(
        SyncLatency::bucket_of(1_000_000_000),
        SYNC_LATENCY_BOUNDS_NS.len() - 1
    );
    assert_eq!(SyncLatency::bucket_of(1_000_000_001), SYNC_LATENCY_BUCKETS - 1);
    assert_eq!(SyncLatency::bucket_of(u64::MAX), SYNC_LATENCY_BUCKETS - 1);
    assert!(SYNC_LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn dead_letters_list_inspect_replay_purge_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    {
        let (j, _) = open(tmp.path(), fast_cfg(&clock));
        for i in 0..6 {
            j.append(vec![accepted(i, T0 + i)]).wait().unwrap();
        }
        for i in [1, 2, 3, 4] {
            j.append(vec![Record::Dead {
                id: id(i),
                attempts: 7,
                last_code: 500 + i as u16,
                last_detail: format!("upstream said no {i}"),
                at_ms: T0 + 100,
            }])
            .wait()
            .unwrap();
        }
        let all = j.dead_letters(None, 100).wait().unwrap();
        assert_eq!(
            all.iter().map(|d| d.message.id).collect::<Vec<_>>(),
            [1, 2, 3, 4].map(id)
        );
        let page = j.dead_letters(Some(id(2)), 1).wait().unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].message.id, id(3));
        j.close().unwrap();
    }
    {
        let (j, rec) = open(tmp.path(), fast_cfg(&clock));
        assert_eq!(rec.dead.len(), 4);
        assert_eq!(rec.unfinished.len(), 2);
        let d = j.dead_letter(id(2)).wait().unwrap().unwrap();
        assert_eq!((d.attempts, d.last_code, d.dead_at_ms), (7, 502, T0 + 100));
        assert_eq!(d.last_detail, "upstream said no 2");
        assert_eq!(d.message.idempotency_key, "key-2");
        assert!(j.dead_letter(id(0)).wait().unwrap().is_none());
        let p = j.replay_dead(id(2)).wait().unwrap();
        assert_eq!(p.message.id, id(2));
        assert_eq!(p.state, PendingState::Queued);
        assert!(matches!(
            j.replay_dead(id(2)).wait(),
            Err(JournalError::NotFound(_))
        ));
        j.purge_dead(id(3)).wait().unwrap();
        let e = j.purge_dead(id(3)).wait().unwrap_err();
        assert_eq!(e.fault(), Fault::Caller);
        j.close().unwrap();
    }
    {
        let (j, rec) = open(tmp.path(), fast_cfg(&clock));
        assert_eq!(
            rec.dead.iter().map(|d| d.message.id).collect::<Vec<_>>(),
            [1, 4].map(id)
        );
        assert_eq!(unfinished_ids(&rec), [0, 2, 5].map(id));
        // Survives compaction too.
        j.compact_now().wait().unwrap();
        assert_eq!(j.dead_letters(None, 10).wait().unwrap().len(), 2);
        assert_eq!(j.purge_all_dead().wait().unwrap(), 2);
        j.close().unwrap();
    }
    let (_j, rec) = open(tmp.path(), fast_cfg(&clock));
    assert!(rec.dead.is_empty());
    assert_eq!(unfinished_ids(&rec), [0, 2, 5].map(id));
}

#[test]
fn idempotency_window_survives_reopen_and_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        idempotency_window: Duration::from_secs(60),
        ..fast_cfg(&clock)
    };
    {
        let (j, _) = open(tmp.path(), c.clone());
        j.append(vec![accepted(1, T0), accepted(2, T0 + 30_000)])
            .wait()
            .unwrap();
        j.append(vec![sent(1), sent(2)]).wait().unwrap();
        j.close().unwrap();
    }
    clock.set_ms(T0 + 59_999);
    {
        let (j, rec) = open(tmp.path(), c.clone());
        assert!(rec.unfinished.is_empty());
        let ids: Vec<MessageId> = rec.idempotency.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![id(1), id(2)]);
        assert_eq!(rec.idempotency[0].workspace, "ws1");
        assert_eq!(rec.idempotency[0].idempotency_key, "key-1");
        // Compaction carries the keys forward as IdempotencyKept records.
        let rep = j.compact_now().wait().unwrap();
        assert_eq!(rep.records_carried, 2);
        j.close().unwrap();
    }
    clock.set_ms(T0 + 60_000);
    {
        let (j, rec) = open(tmp.path(), c.clone());
        assert_eq!(
            rec.idempotency.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![id(2)]
        );
        j.compact_now().wait().unwrap();
        j.close().unwrap();
    }
    clock.set_ms(T0 + 90_000);
    let (j, rec) = open(tmp.path(), c);
    assert!(rec.idempotency.is_empty());
    let rep = j.compact_now().wait().unwrap();
    assert_eq!(rep.records_carried, 0);
    assert!(
        j.stats().disk_bytes <= 2 * SEGMENT_HEADER_LEN as u64,
        "{:?}",
        j.stats()
    );
}

#[test]
fn automatic_compaction_deletes_finished_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        segment_size: 16 << 10,
        idempotency_window: Duration::ZERO,
        compaction_trigger_segments: 1,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c.clone());
    for i in 0..2000 {
        j.append(vec![accepted(i, T0)]).wait().unwrap();
        if i != 7 {
            j.append_background(vec![sent(i)]).unwrap();
        }
    }
    j.flush().wait().unwrap();
    // Let the writer's maintenance run (it also runs after every commit).
    for _ in 0..20 {
        j.flush().wait().unwrap();
    }
    let st = j.stats();
    assert!(st.segments_deleted > 10, "{st:?}");
    assert!(
        st.compactions >= 1,
        "message 7 kept the first segment live: {st:?}"
    );
    assert!(segments(tmp.path()).len() <= 4, "{:?}", segments(tmp.path()));
    drop(j);
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(unfinished_ids(&rec), vec![id(7)]);
}

#[test]
fn crash_between_carry_and_delete_replays_consistently() {
    // Simulates compaction that carried records forward but crashed before deleting the old
    // segment: both copies exist. The newest state must win and nothing finished comes back.
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        segment_size: 4096,
        ..fast_cfg(&clock)
    };
    let saved = tmp.path().join("saved");
    let work = tmp.path().join("work");
    {
        let (j, _) = open(&work, c.clone());
        for i in 0..30 {
            j.append(vec![accepted(i, T0)]).wait().unwrap();
        }
        for i in 1..30 {
            j.append(vec![sent(i)]).wait().unwrap();
        }
        j.append(vec![Record::RetryScheduled {
            id: id(0),
            attempt: 3,
            due_at_ms: T0 + 5,
            last_code: 2,
        }])
        .wait()
        .unwrap();
        j.close().unwrap();
    }
    copy_dir(&work, &saved);
    {
        let (j, _) = open(&work, c.clone());
        j.compact_now().wait().unwrap();
        j.close().unwrap();
    }
    // Put the old segments back next to the compacted ones.
    for p in segments(&saved) {
        let dst = work.join(p.file_name().unwrap());
        if !dst.exists() {
            fs::copy(&p, &dst).unwrap();
        }
    }
    let (j, rec) = open(&work, c.clone());
    assert_eq!(unfinished_ids(&rec), vec![id(0)]);
    assert_eq!(
        rec.unfinished[0].state,
        PendingState::RetryWait {
            attempt: 3,
            due_at_ms: T0 + 5,
            last_code: 2
        }
    );
    j.append(vec![sent(0)]).wait().unwrap();
    j.compact_now().wait().unwrap();
    drop(j);
    let (_j, rec) = open(&work, c);
    assert!(rec.unfinished.is_empty());
}

#[test]
fn config_is_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let c = JournalConfig {
        segment_size: 10,
        ..Default::default()
    };
    let e = Journal::open(tmp.path(), c).unwrap_err();
    assert!(matches!(e, JournalError::Config(_)));
}

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + Unpin>() {}
    send_sync::<Journal>();
    send::<Completion<Lsn>>();
    send::<Completion<Vec<DeadLetter>>>();
    send_sync::<JournalError>();
}

/// Message `i` of `workspace`, sent from `device` to `recipient`, accepted at `at`.
fn message_in(i: u64, workspace: &str, device: &str, recipient: &str, at: u64) -> Record {
    let Record::Accepted(a) = accepted(i, at) else {
        unreachable!()
    };
    Record::Accepted(AcceptedMessage {
        workspace: workspace.into(),
        device: device.into(),
        recipient: recipient.into(),
        ..a
    })
}

fn dead(i: u64, last_code: u16, at_ms: u64) -> Record {
    Record::Dead {
        id: id(i),
        attempts: 5,
        last_code,
        last_detail: format!("detail {i}"),
        at_ms,
    }
}

fn statuses(j: &Journal, ids: impl IntoIterator<Item = u64>) -> Vec<Option<MessageStatus>> {
    ids.into_iter()
        .map(|i| j.message_status(id(i)).wait().unwrap())
        .collect()
}

#[test]
fn message_status_follows_every_state_and_is_rebuilt_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let (j, _) = open(tmp.path(), fast_cfg(&clock));
    for i in 0..7 {
        j.append(vec![accepted(i, T0 + i)]).wait().unwrap();
    }
    let dispatched = |i| Record::Dispatched {
        id: id(i),
        attempt: 1,
        at_ms: T0 + 100,
    };
    j.append(vec![
        dispatched(1),
        dispatched(2),
        Record::RetryScheduled {
            id: id(2),
            attempt: 1,
            due_at_ms: T0 + 5000,
            last_code: 503,
        },
        dispatched(3),
        Record::Sent {
            id: id(3),
            upstream_id: "up-3".into(),
            at_ms: T0 + 200,
        },
        Record::Failed {
            id: id(4),
            code: 400,
            at_ms: T0 + 300,
        },
        dead(5, 504, T0 + 400),
        dead(6, 505, T0 + 400),
    ])
    .wait()
    .unwrap();
    j.purge_dead(id(6)).wait().unwrap();
    let live = statuses(&j, 0..8);
    let st = |i: usize| live[i].clone().unwrap();
    assert_eq!(
        st(0),
        MessageStatus {
            id: id(0),
            workspace: "ws0".into(),
            device: "dev-1".into(),
            submitted_by: "key-id-0".into(),
            accepted_at_ms: T0,
            state: StatusState::Queued,
            attempts: 0,
            updated_at_ms: T0,
        }
    );
    let summary: Vec<(StatusState, u32, u64)> = (1..7)
        .map(|i| (st(i).state, st(i).attempts, st(i).updated_at_ms))
        .collect();
    assert_eq!(
        summary,
        vec![
            (StatusState::InFlight, 1, T0 + 100),
            (
                StatusState::RetryWait {
                    due_at_ms: T0 + 5000,
                    last_code: 503
                },
                1,
                T0 + 100
            ),
            (
                StatusState::Sent {
                    upstream_id: "up-3".into()
                },
                1,
                T0 + 200
            ),
            (StatusState::Failed { code: 400 }, 0, T0 + 300),
            (StatusState::Dead { last_code: 504 }, 5, T0 + 400),
            (StatusState::Purged, 5, T0 + 400),
        ]
    );
    assert_eq!(
        (st(4).workspace.as_str(), st(4).submitted_by.as_str()),
        ("ws1", "key-id-0")
    );
    assert_eq!(live[7], None, "never accepted");
    j.close().unwrap();
    let (j, _) = open(tmp.path(), fast_cfg(&clock));
    assert_eq!(statuses(&j, 0..8), live, "rebuilt from the segments");
    // A replayed dead letter is queued again with its attempts reset.
    j.replay_dead(id(5)).wait().unwrap();
    let s5 = j.message_status(id(5)).wait().unwrap().unwrap();
    assert_eq!((s5.state, s5.attempts), (StatusState::Queued, 0));
}

#[test]
fn finished_since_lists_recent_finishes_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let cfg = || JournalConfig {
        status_capacity: 1000,
        status_retention: Duration::from_secs(3600),
        ..fast_cfg(&clock)
    };
    {
        let (j, _) = open(tmp.path(), cfg());
        for i in 0..6 {
            let finish = if i % 2 == 0 {
                Record::Sent {
                    id: id(i),
                    upstream_id: format!("up-{i}"),
                    at_ms: T0 + i * 1000,
                }
            } else {
                Record::Failed {
                    id: id(i),
                    code: 5000 + i as u16,
                    at_ms: T0 + i * 1000,
                }
            };
            j.append(vec![accepted(i, T0), finish]).wait().unwrap();
        }
        // Still in flight: never listed.
        j.append(vec![accepted(9, T0)]).wait().unwrap();
        j.close().unwrap();
    }
    // After a restart the same finishes are listed, rebuilt from the segments.
    let (j, _) = open(tmp.path(), cfg());
    let mut got: Vec<(MessageId, StatusState)> = j
        .finished_since(T0 + 2000, 100)
        .wait()
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.state))
        .collect();
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(
        got,
        [
            (
                id(2),
                StatusState::Sent {
                    upstream_id: "up-2".into()
                }
            ),
            (id(3), StatusState::Failed { code: 5003 }),
            (
                id(4),
                StatusState::Sent {
                    upstream_id: "up-4".into()
                }
            ),
            (id(5), StatusState::Failed { code: 5005 }),
        ]
    );
    assert_eq!(
        j.finished_since(T0, 2).wait().unwrap().len(),
        2,
        "the limit holds"
    );
    assert!(j.finished_since(T0 + 6000, 100).wait().unwrap().is_empty());
}

#[test]
fn finished_statuses_are_bounded_by_capacity_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = |capacity| JournalConfig {
        status_capacity: capacity,
        status_retention: Duration::from_secs(10),
        ..fast_cfg(&clock)
    };
    {
        let (j, _) = open(tmp.path(), c(3));
        for i in 0..5 {
            j.append(vec![
                accepted(i, T0),
                Record::Sent {
                    id: id(i),
                    upstream_id: format!("up-{i}"),
                    at_ms: T0 + i * 1000,
                },
            ])
            .wait()
            .unwrap();
        }
        j.append(vec![accepted(9, T0)]).wait().unwrap();
        let known = |j: &Journal| {
            statuses(j, [0, 1, 2, 3, 4, 9])
                .iter()
                .map(Option::is_some)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            known(&j),
            [false, false, true, true, true, true],
            "the oldest 2 evicted"
        );
        // Message 2 finished at T0 + 2000: gone once 10 s have passed since.
        clock.set_ms(T0 + 12_000);
        assert_eq!(known(&j), [false, false, false, true, true, true]);
        j.flush().wait().unwrap(); // maintenance drops it for good
        clock.set_ms(T0 + 12_999);
        assert_eq!(known(&j), [false, false, false, true, true, true]);
        j.close().unwrap();
    }
    {
        // Replay keeps what is in the segments, within both bounds at open.
        let (j, _) = open(tmp.path(), c(3));
        let s = statuses(&j, [2, 3, 4]);
        assert_eq!(s[0], None);
        assert_eq!(
            s[1].as_ref().map(|s| s.state.clone()),
            Some(StatusState::Sent {
                upstream_id: "up-3".into()
            })
        );
        assert!(s[2].is_some());
        j.close().unwrap();
    }
    let (j, _) = open(tmp.path(), c(1));
    assert_eq!(
        statuses(&j, [3, 4])
            .iter()
            .map(Option::is_some)
            .collect::<Vec<_>>(),
        [false, true]
    );
    drop(j);
    // Capacity 0 keeps no finished status; live messages are always answered.
    let (j, _) = open(tmp.path(), c(0));
    assert_eq!(statuses(&j, [4]), [None]);
    assert_eq!(
        j.message_status(id(9)).wait().unwrap().map(|s| s.state),
        Some(StatusState::Queued)
    );
}

#[test]
fn dead_letters_in_lists_one_workspace_only() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let ws = |i: u64| if i.is_multiple_of(2) { "alpha" } else { "beta" };
    {
        let (j, _) = open(tmp.path(), fast_cfg(&clock));
        for i in 0..10 {
            j.append(vec![message_in(i, ws(i), "d", "r", T0), dead(i, 1, T0)])
                .wait()
                .unwrap();
        }
        j.append(vec![message_in(20, "alpha", "d", "r", T0)])
            .wait()
            .unwrap();
        let ids = |v: Vec<DeadLetter>| v.iter().map(|d| d.message.id).collect::<Vec<_>>();
        assert_eq!(
            ids(j.dead_letters_in("alpha", None, 100).wait().unwrap()),
            [0, 2, 4, 6, 8].map(id)
        );
        assert_eq!(
            ids(j.dead_letters_in("beta", None, 100).wait().unwrap()),
            [1, 3, 5, 7, 9].map(id)
        );
        assert_eq!(
            ids(j.dead_letters_in("alpha", Some(id(2)), 2).wait().unwrap()),
            [4, 6].map(id)
        );
        assert_eq!(
            ids(j.dead_letters_in("beta", Some(id(2)), 1).wait().unwrap()),
            [3].map(id)
        );
        assert!(
            j.dead_letters_in("alpha", Some(id(8)), 5)
                .wait()
                .unwrap()
                .is_empty()
        );
        assert!(j.dead_letters_in("alpha", None, 0).wait().unwrap().is_empty());
        assert!(j.dead_letters_in("gamma", None, 5).wait().unwrap().is_empty());
        let d = &j.dead_letters_in("beta", None, 1).wait().unwrap()[0];
        assert_eq!(
            (d.message.workspace.as_str(), d.last_detail.as_str()),
            ("beta", "detail 1")
        );
        j.close().unwrap();
    }
    let (j, _) = open(tmp.path(), fast_cfg(&clock));
    j.replay_dead(id(4)).wait().unwrap();
    j.purge_dead(id(6)).wait().unwrap();
    let alpha: Vec<MessageId> = j
        .dead_letters_in("alpha", None, 100)
        .wait()
        .unwrap()
        .iter()
        .map(|d| d.message.id)
        .collect();
    assert_eq!(
        alpha,
        [0, 2, 8].map(id),
        "rebuilt on open; replay and purge leave the list"
    );
    assert_eq!(j.dead_letters_in("beta", None, 100).wait().unwrap().len(), 5);
    // Carried forward by compaction, still listed per workspace.
    j.compact_now().wait().unwrap();
    assert_eq!(
        j.dead_letters_in("beta", Some(id(5)), 100).wait().unwrap().len(),
        2
    );
}

#[test]
fn dead_letters_are_purged_by_age_device_and_recipient() {
    for sealed in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let c = JournalConfig {
            sealer: sealed
                .then(|| Arc::new(crate::sealing_tests::TestSealer::default()) as Arc<dyn RecordSealer>),
            ..fast_cfg(&clock)
        };
        let ctx = format!("sealed {sealed}");
        {
            let (j, _) = open(tmp.path(), c.clone());
            for i in 0..12 {
                let ws = if i % 2 == 0 { "alpha" } else { "beta" };
                let dev = format!("dev-{}", i % 3);
                let to = format!("r{}", i % 4);
                j.append(vec![message_in(i, ws, &dev, &to, T0), dead(i, 1, T0 + i * 100)])
                    .wait()
                    .unwrap();
            }
            j.append(vec![message_in(50, "alpha", "dev-2", "r0", T0)])
                .wait()
                .unwrap();
            let older =
                |ws: Option<&str>, cutoff, limit| j.purge_dead_older_than(ws, cutoff, limit).wait().unwrap();
            // alpha, died before T0 + 500: 0, 2, 4.
            assert_eq!(older(Some("alpha"), T0 + 500, 100), 3, "{ctx}");
            // Everyone's, died before T0 + 800, left: 1, 3, 5, 6, 7; one at a time.
            assert_eq!(older(None, T0 + 800, 1), 1, "{ctx}");
            assert_eq!(older(None, T0 + 800, 100), 4, "{ctx}");
            assert_eq!(older(Some("gamma"), u64::MAX, 100), 0, "{ctx}");
            let wh = |ws: &str, f, limit| j.purge_dead_where(ws, f, limit).wait().unwrap();
            // Left: alpha 8 (dev-2, r0), 10 (dev-1, r2); beta 9 (dev-0, r1), 11 (dev-2, r3).
            // Message 50 (alpha, dev-2) is not dead: untouched.
            assert_eq!(wh("alpha", DeadFilter::Device("dev-2".into()), 100), 1, "{ctx}");
            assert_eq!(wh("beta", DeadFilter::Recipient("r1".into()), 100), 1, "{ctx}");
            assert_eq!(wh("beta", DeadFilter::Recipient("r2".into()), 100), 0, "{ctx}");
            assert_eq!(wh("alpha", DeadFilter::Recipient("r2".into()), 0), 0, "{ctx}");
            assert_eq!(wh("gamma", DeadFilter::Device("dev-2".into()), 100), 0, "{ctx}");
            j.close().unwrap();
        }
        let (j, rec) = open(tmp.path(), c);
        assert_eq!(
            rec.dead.iter().map(|d| d.message.id).collect::<Vec<_>>(),
            [10, 11].map(id),
            "{ctx}"
        );
        assert_eq!(unfinished_ids(&rec), [id(50)], "{ctx}");
        let purged = j.message_status(id(9)).wait().unwrap().unwrap();
        assert_eq!(purged.state, StatusState::Purged, "{ctx}");
    }
}

#[test]
fn status_entry_size_is_as_documented() {
    // The memory figure in the docs of `Recent` and `JournalConfig::status_capacity`.
    assert_eq!(std::mem::size_of::<crate::state::Finished>(), 64);
}
