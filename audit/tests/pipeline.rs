//! The assembled pipeline: spool, writer thread, shipping loops, file sink and test sinks
//! that fail or are down. Every record must arrive exactly once per sink, in order, with an
//! intact chain, across sink failures and across a crash of the whole pipeline.
//!
//! Nothing here asserts how fast anything is; waits poll a condition with a generous bound
//! so a broken pipeline fails the test instead of hanging it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waping_audit::config::{FileSinkConfig, SinkConfig};
use waping_audit::pipeline::SinkSpec;
use waping_audit::ship::Backoff;
use waping_audit::{
    Action, Actor, AuditConfig, Detail, DigestSigner, Event, Hash, Line, Pipeline, PipelineOptions,
    PublicKey, Record, Sink, SinkError, SinkErrorKind,
};

const HANG: Duration = Duration::from_secs(60);
const SEED: [u8; 32] = [42; 32];

/// A sink that keeps what it gets in memory; can fail its next N sends, or be down.
#[derive(Clone, Default)]
struct Probe {
    got: Arc<Mutex<Vec<Line>>>,
    fail_next: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
    errors: Arc<AtomicU32>,
}

struct TestSink {
    name: String,
    p: Probe,
}

#[async_trait::async_trait]
impl Sink for TestSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn resume(&mut self) -> Result<Option<u64>, SinkError> {
        if self.p.down.load(Ordering::SeqCst) {
            self.p.errors.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::new(SinkErrorKind::Unavailable, "down"));
        }
        Ok(None)
    }

    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError> {
        if self.p.down.load(Ordering::SeqCst) {
            self.p.errors.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::new(SinkErrorKind::Unavailable, "down"));
        }
        if self
            .p
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.p.errors.fetch_add(1, Ordering::SeqCst);
            let mut e = SinkError::new(SinkErrorKind::Rejected, "503");
            e.retry_after = Some(Duration::from_millis(2));
            return Err(e);
        }
        self.p.got.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

fn spec(name: &str, p: &Probe) -> SinkSpec {
    SinkSpec {
        sink: Box::new(TestSink {
            name: name.into(),
            p: p.clone(),
        }),
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
        // Small batches, so failures hit the middle of the stream.
        max_batch_records: 7,
        max_batch_bytes: 1 << 20,
    }
}

fn config(root: &Path) -> AuditConfig {
    AuditConfig {
        node: Some("edge-1".into()),
        dir: Some(root.join("spool")),
        segment_bytes: 64 << 10,
        // No timed digests: the record counts below stay exact.
        digest_interval_s: 3600,
        sinks: vec![SinkConfig::File(FileSinkConfig {
            path: Some(root.join("log")),
            max_file_bytes: 16 << 10,
            ..FileSinkConfig::default()
        })],
        ..AuditConfig::default()
    }
}

fn options(root: &Path) -> PipelineOptions {
    PipelineOptions {
        state_dir: root.to_path_buf(),
        signer: DigestSigner::from_seed(&SEED),
        version: "test".into(),
    }
}

fn ev(i: usize) -> Event {
    Event::new(
        1_000 + i as u64,
        Actor::Key { id: "key_1".into() },
        Action::KeyCreate,
    )
    .workspace("acme")
    .target("key", format!("key_{i}"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every line of the `*.jsonl` files in `dir`, in name order (= sequence order).
fn file_lines(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(&f).unwrap();
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "{f:?} ends in a partial line"
        );
        out.extend(
            data.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    out
}

/// Checks seq 1..=n without gaps or repeats and every `prev` link; returns the records.
fn assert_chain(lines: &[Vec<u8>]) -> Vec<Record> {
    let mut prev = Hash::ZERO;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let r: Record = serde_json::from_slice(l).unwrap();
        assert_eq!(r.seq, i as u64 + 1, "contiguous, in order, once");
        assert_eq!(r.prev, prev.to_hex(), "link of seq {}", r.seq);
        assert_eq!(r.node, "edge-1");
        prev = Hash::of_line(l);
        out.push(r);
    }
    out
}

fn key_targets(recs: &[Record]) -> Vec<String> {
    recs.iter()
        .filter(|r| r.action == Action::KeyCreate)
        .map(|r| r.target.as_ref().unwrap().id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_every_sink_once_in_order_despite_failures() {
    let root = tempfile::tempdir().unwrap();
    let flaky = Probe::default();
    flaky.fail_next.store(5, Ordering::SeqCst);
    let down = Probe::default();
    down.down.store(true, Ordering::SeqCst);
    let pipeline = tokio::time::timeout(
        HANG,
        Pipeline::start_with_sinks(
            &config(root.path()),
            options(root.path()),
            vec![spec("flaky", &flaky), spec("down", &down)],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pipeline.head(), 1, "audit.start is durable once start returns");
    let auditor = pipeline.auditor();
    assert_eq!(auditor.node(), "edge-1");

    // Four producers at once, waiting for durability or not.
    let mut producers = Vec::new();
    for t in 0..4 {
        let a = auditor.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..150 {
                let e = ev(t * 1000 + i);
                if i % 2 == 0 {
                    a.record(e).await.unwrap();
                } else {
                    a.emit(e).unwrap();
                }
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let written = 1 + 600;
    wait_for("all records durable", || pipeline.head() >= written).await;
    wait_for("file and flaky sinks caught up", || {
        pipeline
            .sink_lag()
            .iter()
            .all(|(n, lag)| n == "down" || *lag == 0)
    })
    .await;
    let lag: Vec<(String, u64)> = pipeline.sink_lag();
    assert!(
        lag.iter().any(|(n, l)| n == "down" && *l == pipeline.head()),
        "a sink that is down lags by everything: {lag:?}"
    );
    wait_for("the down sink was tried", || {
        down.errors.load(Ordering::SeqCst) >= 2
    })
    .await;
    down.down.store(false, Ordering::SeqCst);
    wait_for("the down sink caught up", || {
        pipeline.sink_lag().iter().all(|(_, lag)| *lag == 0)
    })
    .await;
    assert!(flaky.errors.load(Ordering::SeqCst) >= 5);

    tokio::time::timeout(HANG, pipeline.shutdown(Duration::from_secs(30)))
        .await
        .unwrap();

    let file = file_lines(&root.path().join("log"));
    assert!(
        std::fs::read_dir(root.path().join("log")).unwrap().count() > 1,
        "the file sink rotated"
    );
    let recs = assert_chain(&file);
    assert_eq!(
        recs.len(),
        written as usize + 2,
        "start, 600 records, stop, digest"
    );
    assert_eq!(recs[0].action, Action::AuditStart);
    assert_eq!(recs[recs.len() - 2].action, Action::AuditStop);
    assert_eq!(recs[recs.len() - 1].action, Action::AuditDigest);
    let targets = key_targets(&recs);
    assert_eq!(targets.len(), 600);
    assert_eq!(targets.iter().collect::<BTreeSet<_>>().len(), 600, "each once");
    for p in [&flaky, &down] {
        let got: Vec<Vec<u8>> = p.got.lock().unwrap().iter().map(|l| l.bytes.to_vec()).collect();
        assert_eq!(got, file, "every sink holds the same lines");
    }
    let pk = PublicKey::from_bytes(DigestSigner::from_seed(&SEED).public_key());
    let report = waping_audit::verify::verify_dir(&root.path().join("log"), &[pk]).unwrap();
    assert_eq!(
        report.nodes[0].unsigned_tail, 0,
        "the final digest covers everything"
    );
    let cursor = std::fs::read_to_string(root.path().join("spool/cursors/flaky")).unwrap();
    assert_eq!(cursor.trim(), recs.len().to_string());
}

#[test]
fn a_crash_loses_nothing_durable_and_duplicates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };

    // Run 1: 100 durable records, then the process "dies": no shutdown, runtime dropped.
    let run1 = rt();
    run1.block_on(async {
        let p = Pipeline::start(&config(root.path()), options(root.path()))
            .await
            .unwrap();
        let a = p.auditor();
        for i in 0..100 {
            a.record(ev(i)).await.unwrap();
        }
        wait_for("file sink caught up", || {
            p.sink_lag().iter().all(|(_, l)| *l == 0)
        })
        .await;
        drop(p);
    });
    drop(run1);

    // What a crash leaves besides: a cursor that lags (not fsync'd), and torn last lines
    // in both the spool and the file sink.
    std::fs::write(root.path().join("spool/cursors/file"), "40\n").unwrap();
    let torn = br#"{"v":1,"node":"edge-1","seq":102,"ts":"2026-"#;
    for dir in ["spool", "log"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(files.last().unwrap())
            .unwrap();
        f.write_all(torn).unwrap();
    }

    // Run 2: recovers, continues the chain, ships the rest once.
    let run2 = rt();
    run2.block_on(async {
        let p = Pipeline::start(&config(root.path()), options(root.path()))
            .await
            .unwrap();
        assert_eq!(p.head(), 102, "101 records before the crash, then audit.start");
        let a = p.auditor();
        for i in 100..120 {
            a.record(ev(i)).await.unwrap();
        }
        tokio::time::timeout(HANG, p.shutdown(Duration::from_secs(30)))
            .await
            .unwrap();
    });
    drop(run2);

    let file = file_lines(&root.path().join("log"));
    let recs = assert_chain(&file);
    assert_eq!(recs.len(), 101 + 1 + 20 + 2);
    let targets = key_targets(&recs);
    let want: Vec<String> = (0..120).map(|i| format!("key_{i}")).collect();
    assert_eq!(targets, want, "nothing lost, nothing twice, in order");
    match &recs[101].detail {
        Some(Detail::Start {
            resumed_at_seq,
            truncated_bytes,
            version,
        }) => {
            assert_eq!(*resumed_at_seq, 101);
            assert_eq!(
                *truncated_bytes,
                torn.len() as u64,
                "the spool's torn line is reported"
            );
            assert_eq!(version, "test");
        }
        other => panic!("expected audit.start, got {other:?}"),
    }
    let pk = PublicKey::from_bytes(DigestSigner::from_seed(&SEED).public_key());
    waping_audit::verify::verify_dir(&root.path().join("log"), std::slice::from_ref(&pk)).unwrap();
    // The spool verifies on its own too (what is left of it after GC).
    let spool = file_lines(&root.path().join("spool"));
    assert!(!spool.is_empty());
    waping_audit::verify::verify_dir(&root.path().join("spool"), &[pk]).unwrap();
}

#[test]
fn the_inbox_reaches_the_sinks() {
    let root = tempfile::tempdir().unwrap();
    let ev = Event::new(7, Actor::Cli, Action::MasterKeyRotate).target("node", "edge-1");
    // A tool run while the gateway is down: the spool directory need not exist yet.
    waping_audit::spool::write_inbox(&root.path().join("spool"), &ev).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let p = Pipeline::start(&config(root.path()), options(root.path()))
            .await
            .unwrap();
        wait_for("inbox ingested", || p.head() >= 2).await;
        p.shutdown(Duration::from_secs(30)).await;
    });
    let recs = assert_chain(&file_lines(&root.path().join("log")));
    assert_eq!(recs[0].action, Action::AuditStart, "audit.start comes first");
    assert_eq!(recs[1].action, Action::MasterKeyRotate);
    assert_eq!(recs[1].actor, Actor::Cli);
    assert_eq!(
        std::fs::read_dir(root.path().join("spool/inbox"))
            .unwrap()
            .count(),
        0
    );
}
