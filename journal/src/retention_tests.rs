//! Behavioural tests of retention: old bodies leave the disk step by step while appends go on,
//! live records and keys in the window survive, periodic calls do not multiply segments, and
//! segment ages survive a restart.

use std::future::Future;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use crate::segment::{Item, SegmentReader, list_segments};
use crate::tests::{T0, accepted, fast_cfg, id, open, segments, unfinished_ids};
use crate::*;

const DAY: u64 = 86_400_000;
const MINUTE: u64 = 60_000;

fn sent_at(i: u64, at_ms: u64) -> Record {
    Record::Sent {
        id: id(i),
        upstream_id: format!("up-{i}"),
        at_ms,
    }
}

fn with_body(i: u64, body: &str, at: u64) -> Record {
    match accepted(i, at) {
        Record::Accepted(mut a) => {
            a.body = Body::Text(body.into());
            Record::Accepted(a)
        }
        _ => unreachable!(),
    }
}

/// Whether any file in `dir` contains `needle`.
fn on_disk(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let data = std::fs::read(e.unwrap().path()).unwrap_or_default();
        data.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

/// Every record on disk in log order, with its segment.
fn log(dir: &Path) -> Vec<(u64, Record)> {
    let mut out = Vec::new();
    for seg in list_segments(dir).unwrap() {
        let mut rd = SegmentReader::open(dir, seg, MAX_RECORD_LEN, 1 << 20).unwrap();
        while let Item::Record { body, .. } = rd.next().unwrap() {
            out.push((seg, Record::decode_body(body).unwrap()));
        }
    }
    out
}

/// Lets the writer run until `done` holds, one request round trip at a time (bounded).
fn settle(j: &Journal, done: impl Fn(&JournalStats) -> bool) -> JournalStats {
    for _ in 0..10_000 {
        let st = j.stats();
        if done(&st) {
            return st;
        }
        j.flush().wait().unwrap();
    }
    panic!("the writer did not get there: {:?}", j.stats());
}

/// A waker that, when the writer thread resolves a completion with it, holds that thread
/// until released: requests sent meanwhile are all queued when it resumes.
struct Gate {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        let Some(entered) = self.entered.lock().unwrap().take() else {
            return;
        };
        let release = self.release.lock().unwrap().take().unwrap();
        entered.send(()).unwrap();
        let _ = release.recv();
    }
}

/// Blocks the writer thread (inside a group commit) and returns the handle that releases it.
fn hold_writer(j: &Journal) -> mpsc::Sender<()> {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
    });
    let waker = Waker::from(gate);
    let mut cx = Context::from_waker(&waker);
    // The waker must be registered before the writer resolves the append: try until it is.
    for _ in 0..100_000 {
        let c = j.append(vec![Record::DeadPurged { id: id(u64::MAX) }]);
        let mut c = std::pin::pin!(c);
        if c.as_mut().poll(&mut cx).is_pending() {
            entered_rx.recv().unwrap();
            return release_tx;
        }
    }
    panic!("every append completed before it could be polled");
}

#[test]
fn old_segment_is_compacted_in_steps_between_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let step = 8 << 10;
    let batch = 4 << 10;
    let c = JournalConfig {
        segment_size: 256 << 10,
        compaction_step_bytes: step,
        max_batch_bytes: batch,
        idempotency_window: Duration::from_millis(30 * DAY),
        // Only retention may start a job here.
        compaction_trigger_segments: 1000,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c.clone());
    // ~180 KiB of finished messages in the active segment, all appended at T0.
    for i in 0..600 {
        j.append_background(vec![accepted(i, T0), sent_at(i, T0 + 1)])
            .unwrap();
    }
    j.flush().wait().unwrap();
    assert_eq!(segments(tmp.path()).len(), 1);
    clock.set_ms(T0 + 2 * DAY);

    // Queue the retention request and a long run of appends while the writer is held, so
    // that every one of them is waiting when it resumes.
    let release = hold_writer(&j);
    let rep = j.enforce_retention(T0 + DAY);
    let appends: Vec<_> = (10_000..10_600)
        .map(|i| j.append(vec![accepted(i, T0 + 2 * DAY)]))
        .collect();
    release.send(()).unwrap();
    let rep = rep.wait().unwrap();
    assert_eq!(
        rep,
        RetentionReport {
            rolled_active: true,
            segments_pending: 1
        }
    );
    for a in appends {
        a.wait().unwrap();
    }
    let st = settle(&j, |s| s.retention_pending_segments == 0);
    assert_eq!(st.compactions, 1, "{st:?}");
    assert!(
        !segments(tmp.path())
            .iter()
            .any(|p| p.ends_with(format!("{:020}.wal", 1)))
    );

    // The new segment, in log order: batches of appends and the keys each compaction step
    // carried forward alternate, so appends were served while the job was under way, and no
    // step read more than its budget: `compaction_step_bytes`, or twice what the batch before
    // it appended, plus the one record that crosses the limit.
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for (_, r) in log(tmp.path()) {
        let carried = match r {
            Record::IdempotencyKept { .. } => true,
            Record::Accepted(_) => false,
            _ => continue,
        };
        match runs.last_mut() {
            Some((k, n)) if *k == carried => *n += 1,
            _ => runs.push((carried, 1)),
        }
    }
    let carried_runs: Vec<usize> = runs.iter().filter(|r| r.0).map(|r| r.1).collect();
    assert_eq!(carried_runs.iter().sum::<usize>(), 600);
    assert!(carried_runs.len() >= 10, "one step per batch: {runs:?}");
    let old_message = (accepted(0, T0).encode().len() + sent_at(0, T0).encode().len()) as f64;
    let new_append = accepted(10_000, T0).encode().len();
    let budget = step.max(2 * (batch + new_append)) + accepted(0, T0).encode().len();
    let most = *carried_runs.iter().max().unwrap();
    assert!(
        most as f64 * old_message <= budget as f64 + old_message,
        "a step carried {most} keys: more than {budget} bytes of the old segment; {runs:?}"
    );
    // Nothing of the old bodies is left; the keys are (30-day window).
    for i in [0, 5, 299, 599] {
        assert!(!on_disk(tmp.path(), &format!("message {i} ")), "body of {i}");
    }
    drop(j);
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(unfinished_ids(&rec), (10_000..10_600).map(id).collect::<Vec<_>>());
    assert_eq!(rec.idempotency.len(), 600);
}

#[test]
fn active_segment_with_an_old_body_is_rolled_and_only_live_records_and_keys_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let window = Duration::from_millis(7 * DAY);
    let c = JournalConfig {
        idempotency_window: window,
        ..fast_cfg(&clock)
    };
    {
        let (j, _) = open(tmp.path(), c.clone());
        j.append(vec![
            with_body(1, "finished-body-to-forget", T0),
            with_body(2, "unfinished-body-to-keep", T0),
            with_body(3, "dead-body-to-keep", T0),
            Record::Inbound(InboundMessage {
                id: id(4),
                workspace: "ws1".into(),
                device: "dev-1".into(),
                from: "4915100000000".into(),
                upstream_id: "wa-4".into(),
                body: Body::Text("inbound-body-to-forget".into()),
                received_at_ms: T0,
            }),
            sent_at(1, T0 + 5),
            Record::Dead {
                id: id(3),
                attempts: 4,
                last_code: 503,
                last_detail: "upstream down".into(),
                at_ms: T0 + 6,
            },
        ])
        .wait()
        .unwrap();
        assert!(on_disk(tmp.path(), "finished-body-to-forget"));
        clock.set_ms(T0 + 2 * DAY);
        let rep = j.enforce_retention(T0 + DAY).wait().unwrap();
        assert_eq!(
            rep,
            RetentionReport {
                rolled_active: true,
                segments_pending: 1
            }
        );
        let st = settle(&j, |s| s.retention_pending_segments == 0);
        assert_eq!((st.compactions, st.segments_created), (1, 1), "{st:?}");
        j.close().unwrap();
    }
    assert!(!on_disk(tmp.path(), "finished-body-to-forget"));
    assert!(!on_disk(tmp.path(), "inbound-body-to-forget"));
    assert!(on_disk(tmp.path(), "unfinished-body-to-keep"));
    assert_eq!(segments(tmp.path()).len(), 1);
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(unfinished_ids(&rec), vec![id(2)]);
    assert_eq!(
        rec.unfinished[0].message.body,
        Body::Text("unfinished-body-to-keep".into())
    );
    assert_eq!(rec.dead.len(), 1);
    assert_eq!(rec.dead[0].message.body, Body::Text("dead-body-to-keep".into()));
    assert_eq!(rec.dead[0].last_detail, "upstream down");
    // The finished message's key still dedupes (inside its 7-day window), without its body.
    let keys: Vec<(&str, MessageId)> = rec
        .idempotency_keys(clock.now_ms(), window.as_millis() as u64)
        .map(|k| (k.idempotency_key, k.id))
        .collect();
    assert!(keys.contains(&("key-1", id(1))), "{keys:?}");
}

#[test]
fn cutoff_older_than_every_record_does_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        segment_size: 8 << 10,
        compaction_trigger_segments: 1000,
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c);
    for i in 0..100 {
        j.append(vec![accepted(i, T0), sent_at(i, T0 + 1)])
            .wait()
            .unwrap();
    }
    let files = segments(tmp.path());
    assert!(files.len() > 2, "{files:?}");
    let before = j.stats();
    for k in 0..50 {
        clock.set_ms(T0 + k * MINUTE);
        let rep = j.enforce_retention(T0).wait().unwrap();
        assert_eq!(rep, RetentionReport::default());
        j.flush().wait().unwrap();
    }
    let after = j.stats();
    assert_eq!(after.segments_created, before.segments_created);
    assert_eq!(after.segments_deleted, before.segments_deleted);
    assert_eq!(after.carried_records, before.carried_records);
    assert_eq!(after.retention_pending_segments, 0);
    assert_eq!(segments(tmp.path()), files);
}

#[test]
fn calls_every_minute_roll_at_most_once_per_window() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        idempotency_window: Duration::from_secs(3600),
        ..fast_cfg(&clock)
    };
    let (j, _) = open(tmp.path(), c);
    // One finished message a minute for three days and a bit; retention every minute.
    let mut rolls = Vec::new();
    for m in 0..(3 * DAY + 6 * 3_600_000) / MINUTE {
        let now = T0 + m * MINUTE;
        clock.set_ms(now);
        j.append(vec![accepted(m, now), sent_at(m, now)]).wait().unwrap();
        if j.enforce_retention(now - DAY).wait().unwrap().rolled_active {
            rolls.push(now);
        }
    }
    assert!((2..=3).contains(&rolls.len()), "{rolls:?}");
    assert!(rolls[0] > T0 + DAY);
    assert!(rolls.windows(2).all(|w| w[1] - w[0] >= DAY), "{rolls:?}");
    let st = settle(&j, |s| s.retention_pending_segments == 0);
    assert_eq!(st.segments_created, rolls.len() as u64, "{st:?}");
    assert_eq!(segments(tmp.path()).len(), 1);
}

#[test]
fn segment_ages_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let c = JournalConfig {
        segment_size: 16 << 10,
        compaction_trigger_segments: 1000,
        // Keys in the window keep every segment needed, so only retention removes any.
        idempotency_window: Duration::from_millis(7 * DAY),
        ..fast_cfg(&clock)
    };
    let new_at = T0 + DAY + DAY / 2;
    {
        let (j, _) = open(tmp.path(), c.clone());
        j.append(vec![with_body(0, "old-unfinished", T0)]).wait().unwrap();
        for i in 1..150 {
            j.append(vec![
                with_body(i, &format!("old-body-{i:04} {}", "o".repeat(200)), T0),
                sent_at(i, T0 + 1),
            ])
            .wait()
            .unwrap();
        }
        clock.set_ms(new_at);
        for i in 1000..1150 {
            j.append(vec![
                with_body(i, &format!("new-body-{i:04} {}", "n".repeat(200)), new_at),
                sent_at(i, new_at),
            ])
            .wait()
            .unwrap();
        }
        j.close().unwrap();
    }
    // What the files say: which segments hold a record of the old day.
    let cutoff = T0 + DAY;
    let mut old_segs: Vec<u64> = log(tmp.path())
        .into_iter()
        .filter(|(_, r)| match r {
            Record::Accepted(a) => a.accepted_at_ms < cutoff,
            Record::Sent { at_ms, .. } => *at_ms < cutoff,
            _ => false,
        })
        .map(|(s, _)| s)
        .collect();
    old_segs.dedup();
    let all = list_segments(tmp.path()).unwrap();
    assert!(
        old_segs.len() >= 3 && all.len() > old_segs.len() + 1,
        "{old_segs:?} of {all:?}"
    );
    assert!(
        !old_segs.contains(all.last().unwrap()),
        "the active segment holds new records only"
    );

    clock.set_ms(T0 + 2 * DAY);
    let (j, rec) = open(tmp.path(), c.clone());
    assert_eq!(unfinished_ids(&rec), vec![id(0)]);
    let rep = j.enforce_retention(cutoff).wait().unwrap();
    assert_eq!(
        rep,
        RetentionReport {
            rolled_active: false,
            segments_pending: old_segs.len()
        }
    );
    settle(&j, |s| s.retention_pending_segments == 0);
    for n in &all {
        let exists = segments(tmp.path())
            .iter()
            .any(|p| p.ends_with(format!("{n:020}.wal")));
        assert_eq!(exists, !old_segs.contains(n), "segment {n}");
    }
    assert!(!on_disk(tmp.path(), "old-body-"));
    assert!(on_disk(tmp.path(), "new-body-"));
    drop(j);
    let (_j, rec) = open(tmp.path(), c);
    assert_eq!(unfinished_ids(&rec), vec![id(0)]);
    assert_eq!(
        rec.unfinished[0].message.body,
        Body::Text("old-unfinished".into())
    );
}
