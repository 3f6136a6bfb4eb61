//! Behaviour of the event store: durability across reopen, dedupe, deliveries in the event's
//! transaction, due/pending order, idempotent outcomes, dead rows and replay, sweep and
//! maximum age, workspace deletion, sealing, concurrent group commits.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::ReadableTable;
use sha2::{Digest, Sha256};
use waping_journal::{OpenFailure, RecordSealer, SealFailure};

use crate::*;

const T0: u64 = 1_795_705_445_000;

fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("events.redb")
}

fn open(p: &Path) -> EventStore {
    EventStore::open(p, StoreOptions::default()).unwrap()
}

/// An inbound message of `ws`/`dev` whose text names `n` (so the tests can search the file).
fn msg(ws: &str, dev: &str, at_ms: u64, n: u64) -> Event {
    Event {
        id: EventId::for_inbound(ws, dev, &format!("UP{n}")),
        workspace: ws.into(),
        device: Some(dev.into()),
        at_ms,
        data: EventData::MessageReceived(MessageReceived {
            from: "+4915112345678".into(),
            upstream_id: format!("UP{n}"),
            content: Content::Text(format!("secret-body-{n:05}")),
        }),
    }
}

fn new(event: Event, endpoints: &[u64]) -> NewEvent {
    NewEvent {
        event,
        endpoints: endpoints.to_vec(),
    }
}

fn seqs<T>(rows: &[T], f: impl Fn(&T) -> u64) -> Vec<u64> {
    rows.iter().map(f).collect()
}

#[tokio::test]
async fn appends_survive_a_reopen_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let events: Vec<Event> = (0..5).map(|n| msg("acme", "d1", T0 + n, n)).collect();
    {
        let store = open(&p);
        assert_eq!(store.head(), 0);
        let batch = events.iter().map(|e| new(e.clone(), &[7, 9])).collect();
        let a = store.append(batch).await.unwrap();
        assert_eq!(seqs(&a, |a| a.seq), [1, 2, 3, 4, 5]);
        assert!(a.iter().all(|a| !a.duplicate));
        assert_eq!(store.head(), 5);
    }
    let store = open(&p);
    assert_eq!(store.head(), 5);
    let read = store.read_after("acme", 0, 100).unwrap();
    assert_eq!(seqs(&read, |s| s.seq), [1, 2, 3, 4, 5]);
    for (s, e) in read.iter().zip(&events) {
        assert_eq!(s.event.as_ref().unwrap(), e);
    }
    assert_eq!(store.get(3).unwrap().unwrap().event.unwrap(), events[2]);
    assert_eq!(store.seq_of(&events[4].id).unwrap(), Some(5));
    for ep in [7, 9] {
        let p = store.pending(ep, 0, 100).unwrap();
        assert_eq!(seqs(&p, |p| p.seq), [1, 2, 3, 4, 5]);
        assert_eq!(
            (p[0].attempts, p[0].due_ms, p[0].last_error.as_str()),
            (0, T0, "")
        );
    }
    let a = store
        .append(vec![new(msg("acme", "d1", T0, 99), &[])])
        .await
        .unwrap();
    assert_eq!(a[0].seq, 6);
    let st = store.stats().unwrap();
    assert_eq!(
        (st.head, st.events, st.pending, st.dead, st.appended),
        (6, 6, 10, 0, 1)
    );
    assert!(st.file_bytes > 0);
}

#[tokio::test]
async fn a_known_id_is_a_duplicate_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    let e = msg("acme", "d1", T0, 1);
    let first = store.append(vec![new(e.clone(), &[1])]).await.unwrap();
    assert_eq!(first[0].seq, 1);

    // WhatsApp redelivers the message; the gateway derives the same id.
    let mut again = msg("acme", "d1", T0 + 500, 1);
    assert_eq!(again.id, e.id);
    again.at_ms += 1;
    let other = msg("acme", "d1", T0, 2);
    let a = store
        .append(vec![new(again, &[2]), new(other.clone(), &[2]), new(other, &[3])])
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        [(1, true), (2, false), (2, true)],
        "the known id, a new one, and a repeat inside the batch"
    );
    assert_eq!(
        seqs(&store.pending(2, 0, 10).unwrap(), |p| p.seq),
        [2],
        "no delivery for the duplicate"
    );
    assert!(store.pending(3, 0, 10).unwrap().is_empty());
    assert_eq!(
        store.get(1).unwrap().unwrap().event.unwrap(),
        e,
        "the first copy is kept"
    );
    assert_eq!(store.stats().unwrap().events, 2);
    assert_eq!(store.head(), 2);
}

#[tokio::test]
async fn invalid_batches_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let store = EventStore::open(
        &p,
        StoreOptions {
            max_event_bytes: 200,
            max_endpoints_per_event: 3,
            max_batch_events: 4,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let mut no_device = msg("acme", "d1", T0, 2);
    no_device.device = None;
    let err = store
        .append(vec![new(msg("acme", "d1", T0, 1), &[1]), new(no_device, &[1])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EventStoreError::Invalid { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Caller);

    let mut big = msg("acme", "d1", T0, 3);
    big.data = EventData::MessageReceived(MessageReceived {
        from: "+1".into(),
        upstream_id: "u".into(),
        content: Content::Text("x".repeat(300)),
    });
    let err = store.append(vec![new(big, &[])]).await.unwrap_err();
    assert!(
        matches!(
            err,
            EventStoreError::TooLarge {
                what: "event data",
                max: 200,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(vec![new(msg("acme", "d1", T0, 4), &[1, 2, 3, 4])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EventStoreError::TooLarge {
                what: "endpoints",
                size: 4,
                ..
            }
        ),
        "{err:?}"
    );
    // Repeated endpoints count once.
    store
        .append(vec![new(msg("acme", "d1", T0, 5), &[1, 1, 2, 2, 3])])
        .await
        .unwrap();
    let five = (0..5).map(|n| new(msg("acme", "d1", T0, 10 + n), &[])).collect();
    assert!(matches!(
        store.append(five).await,
        Err(EventStoreError::TooLarge { what: "batch", .. })
    ));
    assert_eq!(store.head(), 1, "only the valid append took a number");
    assert_eq!(store.stats().unwrap().pending, 3);
    assert!(store.read_after("acme", 0, 10).unwrap().len() == 1);
}

#[tokio::test]
async fn read_after_pages_one_workspace_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(
        path(&dir),
        StoreOptions {
            max_page: 3,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let batch = (0..10)
        .map(|n| {
            new(
                msg(if n % 2 == 0 { "acme" } else { "acme-2" }, "d1", T0 + n, n),
                &[],
            )
        })
        .collect();
    store.append(batch).await.unwrap();
    let mut cursor = 0;
    let mut got = Vec::new();
    loop {
        let page = store.read_after("acme", cursor, 100).unwrap();
        assert!(page.len() <= 3, "clamped to max_page");
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        got.extend(page.iter().map(|s| s.seq));
    }
    assert_eq!(
        got,
        [1, 3, 5, 7, 9],
        "acme's events only; acme-2 is a different workspace"
    );
    assert_eq!(
        seqs(&store.read_after("acme-2", 4, 0).unwrap(), |s| s.seq),
        [6],
        "limit 0 reads 1"
    );
    assert!(store.read_after("acme", u64::MAX, 10).unwrap().is_empty());
    assert!(store.read_after("nobody", 0, 10).unwrap().is_empty());
}

/// `due` against a brute-force model over a pseudo-random history of retries and
/// deliveries, with both walks (by seq, by due time) winning at times.
#[tokio::test]
async fn due_pending_and_next_due_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    const EP: u64 = 4;
    let batch = (0..300)
        .map(|n| new(msg("acme", "d1", T0, n), &[EP, 5]))
        .collect();
    store.append(batch).await.unwrap();
    // seq -> due_ms of pending rows of EP.
    let mut model: BTreeMap<u64, u64> = (1..=300).map(|s| (s, T0)).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40u64 {
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            let seq = next() % 300 + 1;
            if next() % 5 == 0 {
                outcomes.push(Outcome::Delivered { endpoint: EP, seq });
                model.remove(&seq);
            } else if model.contains_key(&seq) {
                // Early rows get far-off retries so the seq walk must skip many not-due rows.
                let due = T0
                    + if seq < 150 {
                        1_000_000 + next() % 1000
                    } else {
                        next() % 2000
                    };
                outcomes.push(Outcome::Retry {
                    endpoint: EP,
                    seq,
                    attempts: round as u32 + 1,
                    due_ms: due,
                    error: format!("HTTP 503 round {round}"),
                });
                model.insert(seq, due);
            }
        }
        store.record(outcomes).await.unwrap();
        for (now, limit) in [
            (T0, 5),
            (T0 + 1000, 7),
            (T0 + 2000, 500),
            (T0 + 1_000_500, 50),
            (u64::MAX, 1000),
        ] {
            let want: Vec<u64> = model
                .iter()
                .filter(|&(_, &due)| due <= now)
                .map(|(&s, _)| s)
                .take(limit)
                .collect();
            let got = store.due(EP, now, limit).unwrap();
            assert_eq!(
                seqs(&got, |p| p.seq),
                want,
                "round {round}, now {now}, limit {limit}"
            );
            for p in &got {
                assert_eq!(p.due_ms, model[&p.seq]);
                assert_eq!(
                    p.event.as_ref().unwrap().id,
                    EventId::for_inbound("acme", "d1", &format!("UP{}", p.seq - 1))
                );
            }
        }
        let pending = store.pending(EP, 0, 1000).unwrap();
        assert_eq!(
            seqs(&pending, |p| p.seq),
            model.keys().copied().collect::<Vec<_>>()
        );
        let after = store.pending(EP, 150, 10).unwrap();
        assert_eq!(
            seqs(&after, |p| p.seq),
            model.range(151..).map(|(&s, _)| s).take(10).collect::<Vec<_>>()
        );
        assert_eq!(store.next_due(EP).unwrap(), model.values().min().copied());
    }
    // The other endpoint was never touched.
    assert_eq!(store.pending(5, 0, 1000).unwrap().len(), 300);
    assert_eq!(store.next_due(5).unwrap(), Some(T0));
    assert_eq!(store.next_due(6).unwrap(), None);
}

#[tokio::test]
async fn outcomes_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    store
        .append((0..3).map(|n| new(msg("acme", "d1", T0, n), &[1])).collect())
        .await
        .unwrap();
    let delivered = Outcome::Delivered { endpoint: 1, seq: 1 };
    let dead = Outcome::Dead {
        endpoint: 1,
        seq: 2,
        attempts: 9,
        error: "HTTP 500".into(),
        at_ms: T0 + 10,
    };
    let r = store.record(vec![delivered.clone(), dead.clone()]).await.unwrap();
    assert_eq!((r.applied, r.ignored), (2, 0));
    // A worker that crashed before it saw the answer records again; a stale retry arrives late;
    // unknown endpoints and sequence numbers are ignored too.
    let stale_retry = Outcome::Retry {
        endpoint: 1,
        seq: 2,
        attempts: 3,
        due_ms: T0 + 99,
        error: "late".into(),
    };
    let unknown = Outcome::Delivered { endpoint: 77, seq: 3 };
    let r = store
        .record(vec![delivered, dead, stale_retry, unknown])
        .await
        .unwrap();
    assert_eq!((r.applied, r.ignored), (0, 4));
    assert_eq!(seqs(&store.pending(1, 0, 10).unwrap(), |p| p.seq), [3]);
    let d = store.list_dead(1, 0, 10).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].seq, d[0].attempts, d[0].at_ms, d[0].last_error.as_str()),
        (2, 9, T0 + 10, "HTTP 500")
    );
    // Retrying keeps the row and its place; the error is cut to MAX_ERROR_BYTES.
    let retry = Outcome::Retry {
        endpoint: 1,
        seq: 3,
        attempts: 1,
        due_ms: T0 + 5,
        error: "e".repeat(1000),
    };
    store.record(vec![retry.clone(), retry]).await.unwrap();
    let p = store.pending(1, 0, 10).unwrap();
    assert_eq!(
        (p[0].attempts, p[0].due_ms, p[0].last_error.len()),
        (1, T0 + 5, MAX_ERROR_BYTES)
    );
    assert!(store.due(1, T0 + 4, 10).unwrap().is_empty());
    assert_eq!(store.next_due(1).unwrap(), Some(T0 + 5));
}

#[tokio::test]
async fn dead_deliveries_list_replay_and_go_with_their_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(
        path(&dir),
        StoreOptions {
            max_rows_per_step: 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store
        .append((0..6).map(|n| new(msg("acme", "d1", T0, n), &[1, 2])).collect())
        .await
        .unwrap();
    let kill = |endpoint, seq| Outcome::Dead {
        endpoint,
        seq,
        attempts: 12,
        error: format!("HTTP 502 for {seq}"),
        at_ms: T0 + 100,
    };
    store
        .record((1..=5).map(|s| kill(1, s)).chain([kill(2, 6)]).collect())
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.list_dead(1, 0, 100).unwrap(), |d| d.seq),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&store.list_dead(1, 2, 2).unwrap(), |d| d.seq),
        [3, 4],
        "paged"
    );
    assert_eq!(
        store.list_dead(1, 0, 1).unwrap()[0]
            .event
            .as_ref()
            .unwrap()
            .workspace,
        "acme"
    );

    // One, then all (more than one step's worth), then nothing left.
    assert_eq!(
        store
            .replay_dead(1, DeadSelector::One(3), T0 + 200)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .replay_dead(1, DeadSelector::One(3), T0 + 200)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .replay_dead(1, DeadSelector::One(6), T0 + 200)
            .await
            .unwrap(),
        0
    );
    let p = store.pending(1, 0, 100).unwrap();
    assert_eq!(seqs(&p, |p| p.seq), [3, 6]);
    assert_eq!((p[0].attempts, p[0].due_ms), (0, T0 + 200));
    assert_eq!(
        store.replay_dead(1, DeadSelector::All, T0 + 300).await.unwrap(),
        4
    );
    assert!(store.list_dead(1, 0, 100).unwrap().is_empty());
    assert_eq!(
        seqs(&store.due(1, T0 + 300, 100).unwrap(), |p| p.seq),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(store.next_due(1).unwrap(), Some(T0), "seq 6 was never dead here");

    // Deleting the endpoint drops its pending and dead rows only (several steps).
    store.record(vec![kill(1, 1), kill(1, 2)]).await.unwrap();
    let removed = store.remove_endpoint(1).await.unwrap();
    assert_eq!(
        removed,
        Removed {
            events: 0,
            deliveries: 4,
            dead: 2
        }
    );
    assert!(store.pending(1, 0, 100).unwrap().is_empty());
    assert_eq!(store.next_due(1).unwrap(), None);
    assert_eq!(store.pending(2, 0, 100).unwrap().len(), 5);
    assert_eq!(store.list_dead(2, 0, 100).unwrap().len(), 1);
    assert_eq!(store.stats().unwrap().events, 6);
}

#[tokio::test]
async fn sweep_deletes_what_nothing_needs_and_expires_what_waits_too_long() {
    let dir = tempfile::tempdir().unwrap();
    const DAY: u64 = 86_400_000;
    let store = EventStore::open(
        path(&dir),
        StoreOptions {
            max_age_ms: 2 * DAY,
            max_rows_per_step: 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Day 0: seq 1-4 (1, 2 without deliveries; 3 delivered later; 4 pending). Day 1: seq 5-6.
    let mut batch: Vec<NewEvent> = (0..4u64)
        .map(|n| new(msg("acme", "d1", T0 + n, n), if n < 2 { &[] } else { &[1] }))
        .collect();
    batch.extend((4..6).map(|n| new(msg("acme", "d1", T0 + DAY + n, n), &[1])));
    store.append(batch).await.unwrap();
    store
        .record(vec![Outcome::Delivered { endpoint: 1, seq: 3 }])
        .await
        .unwrap();

    // Retention of half a day at T0 + 1.5 days: seq 1-3 go; 4 waits for its delivery; both
    // walks stop at seq 5 (newer than the cutoff): seq 4 by references, seq 1-4 by age.
    let r = store.sweep(T0 + DAY, T0 + DAY + DAY / 2).await.unwrap();
    assert_eq!(
        (r.expired, r.dead_removed, r.events_deleted, r.scanned),
        (0, 0, 3, 5)
    );
    assert_eq!(
        seqs(&store.read_after("acme", 0, 10).unwrap(), |s| s.seq),
        [4, 5, 6]
    );
    assert_eq!(store.seq_of(&msg("acme", "d1", 0, 0).id).unwrap(), None);

    // At T0 + 2.5 days seq 4 is past the maximum age: its delivery expires to dead, and the
    // young dead row keeps the event.
    let now = T0 + 2 * DAY + DAY / 2;
    let r = store.sweep(T0 + DAY, now).await.unwrap();
    assert_eq!((r.expired, r.dead_removed, r.events_deleted), (1, 0, 0));
    let dead = store.list_dead(1, 0, 10).unwrap();
    assert_eq!((dead[0].seq, dead[0].at_ms), (4, now));
    assert!(
        dead[0].last_error.starts_with("expired"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(store.next_due(1).unwrap(), Some(T0 + DAY + 4));

    // Once the dead row is older than the cutoff too, it and its event go; the id is new again.
    let r = store.sweep(now + 1, now + 1).await.unwrap();
    assert_eq!((r.expired, r.dead_removed, r.events_deleted), (0, 1, 1));
    assert_eq!(
        seqs(&store.read_after("acme", 0, 10).unwrap(), |s| s.seq),
        [5, 6],
        "still owed"
    );
    let a = store
        .append(vec![new(msg("acme", "d1", now, 3), &[])])
        .await
        .unwrap();
    assert_eq!((a[0].seq, a[0].duplicate), (7, false), "numbers are never reused");
    let st = store.stats().unwrap();
    assert_eq!((st.events, st.pending, st.dead), (3, 2, 0));
}

#[tokio::test]
async fn sweeping_everything_keeps_numbering_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    {
        let store = open(&p);
        store
            .append((0..3).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
            .await
            .unwrap();
        let r = store.sweep(T0 + 1, T0 + 1).await.unwrap();
        assert_eq!(r.events_deleted, 3);
    }
    let store = open(&p);
    assert_eq!(store.head(), 3);
    let a = store
        .append(vec![new(msg("acme", "d1", T0, 9), &[])])
        .await
        .unwrap();
    assert_eq!(a[0].seq, 4);
}

#[tokio::test]
async fn delete_workspace_removes_its_events_and_deliveries_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(
        path(&dir),
        StoreOptions {
            max_rows_per_step: 4,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let batch = (0..20u64)
        .map(|n| {
            new(
                msg(if n % 2 == 0 { "gone" } else { "stays" }, "d1", T0, n),
                &[1, 2],
            )
        })
        .collect();
    store.append(batch).await.unwrap();
    store
        .record(vec![
            Outcome::Dead {
                endpoint: 2,
                seq: 1,
                attempts: 1,
                error: "x".into(),
                at_ms: T0,
            },
            Outcome::Dead {
                endpoint: 2,
                seq: 2,
                attempts: 1,
                error: "x".into(),
                at_ms: T0,
            },
        ])
        .await
        .unwrap();
    let removed = store.delete_workspace("gone").await.unwrap();
    assert_eq!(
        removed,
        Removed {
            events: 10,
            deliveries: 19,
            dead: 1
        }
    );
    assert!(store.read_after("gone", 0, 100).unwrap().is_empty());
    assert_eq!(store.read_after("stays", 0, 100).unwrap().len(), 10);
    let left: HashSet<u64> = store.pending(1, 0, 100).unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(left, (1..=20).filter(|s| s % 2 == 0).collect());
    assert_eq!(seqs(&store.list_dead(2, 0, 100).unwrap(), |d| d.seq), [2]);
    assert_eq!(store.seq_of(&msg("gone", "d1", 0, 0).id).unwrap(), None);
    assert_eq!(store.delete_workspace("gone").await.unwrap(), Removed::default());
    let st = store.stats().unwrap();
    assert_eq!((st.events, st.pending, st.dead), (10, 19, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_increasing_numbers_and_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    const TASKS: u64 = 64;
    const EACH: u64 = 20;
    let all = {
        let store = open(&p);
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    // Batches of 1..=3 events.
                    let n = 1 + (t + i) % 3;
                    let batch = (0..n)
                        .map(|k| new(msg("acme", &format!("d{t}"), T0 + i, t * 1000 + i * 10 + k), &[t]))
                        .collect();
                    let a = store.append(batch).await.unwrap();
                    mine.extend(a.iter().map(|a| (a.seq, a.id)));
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let mine = task.await.unwrap();
            assert!(
                mine.windows(2).all(|w| w[0].0 < w[1].0),
                "one caller's appends are ordered"
            );
            all.extend(mine);
        }
        let st = store.stats().unwrap();
        assert!(st.commits <= st.requests);
        all
    };
    let total: u64 = (0..TASKS)
        .map(|t| (0..EACH).map(|i| 1 + (t + i) % 3).sum::<u64>())
        .sum();
    let mut numbers: Vec<u64> = all.iter().map(|a| a.0).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=total).collect::<Vec<_>>(), "dense, unique, from 1");

    let store = open(&p);
    assert_eq!(store.head(), total);
    for (seq, id) in all {
        assert_eq!(store.get(seq).unwrap().unwrap().event.unwrap().id, id);
    }
    let pending: usize = (0..TASKS).map(|t| store.pending(t, 0, 1000).unwrap().len()).sum();
    assert_eq!(pending as u64, total);
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let first = open(&p);
    let err = EventStore::open(&p, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, EventStoreError::Locked { .. }), "{err:?}");
    assert!(err.retryable());
    assert_eq!(err.fault(), Fault::Operator);
    drop(first);
    open(&p);
    let err = EventStore::open(
        &p,
        StoreOptions {
            max_page: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, EventStoreError::Config(_)), "{err:?}");
}

#[test]
fn a_file_of_another_layout_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    {
        let store = open(&p);
        let txn = store.raw_db().begin_write().unwrap();
        txn.open_table(crate::store::META)
            .unwrap()
            .insert("format", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = EventStore::open(&p, StoreOptions::default()).unwrap_err();
    match err {
        EventStoreError::Incompatible { path, reason } => {
            assert_eq!(path, p);
            assert!(reason.contains("99"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Sealing

/// Test sealer: XOR with a SHA-256 keystream of (workspace key, aad), tagged with a SHA-256
/// of (key, aad, plaintext). Not cryptography, but any change to the blob or the associated
/// data fails to open. Workspaces can be shredded (`KeyGone`) or refused (seal fails).
#[derive(Debug, Default)]
struct TestSealer {
    shredded: Mutex<HashSet<String>>,
    refused: Mutex<HashSet<String>>,
}

fn block(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn xor(ws: &str, aad: &[u8], data: &[u8]) -> Vec<u8> {
    data.chunks(32)
        .enumerate()
        .flat_map(|(i, c)| {
            let k = block(&[b"stream", ws.as_bytes(), aad, &(i as u64).to_be_bytes()]);
            c.iter().zip(k).map(|(d, k)| d ^ k).collect::<Vec<_>>()
        })
        .collect()
}

impl RecordSealer for TestSealer {
    fn seal(&self, ws: &str, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealFailure> {
        if self.refused.lock().unwrap().contains(ws) || self.shredded.lock().unwrap().contains(ws) {
            return Err(SealFailure(format!("no key for {ws}")));
        }
        let mut out = block(&[b"tag", ws.as_bytes(), aad, plain])[..16].to_vec();
        out.extend(xor(ws, aad, plain));
        Ok(out)
    }

    fn open(&self, ws: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        if self.shredded.lock().unwrap().contains(ws) {
            return Err(OpenFailure::KeyGone);
        }
        let (tag, body) = sealed
            .split_at_checked(16)
            .ok_or_else(|| OpenFailure::Invalid("shorter than the tag".into()))?;
        let plain = xor(ws, aad, body);
        if block(&[b"tag", ws.as_bytes(), aad, &plain])[..16] != *tag {
            return Err(OpenFailure::Invalid("tag mismatch".into()));
        }
        Ok(plain)
    }
}

fn sealed(p: &Path, sealer: &Arc<TestSealer>) -> EventStore {
    let options = StoreOptions {
        sealer: Some(sealer.clone()),
        ..StoreOptions::default()
    };
    EventStore::open(p, options).unwrap()
}

fn file_contains(p: &Path, needle: &str) -> bool {
    let raw = std::fs::read(p).unwrap();
    raw.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn sealed_payloads_are_not_on_disk_and_open_only_in_their_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let sealer = Arc::new(TestSealer::default());
    {
        let store = sealed(&p, &sealer);
        let batch = (0..3).map(|n| new(msg("acme", "d1", T0, n), &[1])).collect();
        store.append(batch).await.unwrap();
        assert_eq!(
            store.get(2).unwrap().unwrap().event.unwrap(),
            msg("acme", "d1", T0, 1)
        );
    }
    assert!(!file_contains(&p, "secret-body-00001"), "the body is sealed");
    assert!(
        file_contains(&p, "acme"),
        "the header stays plain (routing, retention)"
    );

    // A sealed payload copied into another row (here: seq 1's whole row into seq 2) fails to
    // open there, while seq 1 still opens.
    {
        let store = sealed(&p, &sealer);
        let txn = store.raw_db().begin_write().unwrap();
        {
            let mut events = txn.open_table(crate::store::EVENTS).unwrap();
            let row = events.get(1).unwrap().unwrap().value().to_vec();
            events.insert(2, row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = sealed(&p, &sealer);
    assert!(store.get(1).unwrap().unwrap().event.is_ok());
    let err = store.get(2).unwrap().unwrap().event.unwrap_err();
    assert!(matches!(err, EventStoreError::Unseal { seq: 2, .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Storage);
    // The page around it is still served.
    let p1 = store.pending(1, 0, 10).unwrap();
    assert_eq!(
        p1.iter().map(|p| p.event.is_ok()).collect::<Vec<_>>(),
        [true, false, true]
    );
    drop(store);

    // Without the sealer, sealed rows are unreadable per event (never shown as plain).
    let plain = open(&p);
    let err = plain.get(1).unwrap().unwrap().event.unwrap_err();
    assert!(matches!(err, EventStoreError::Unseal { seq: 1, .. }), "{err:?}");
}

#[tokio::test]
async fn a_shredded_workspace_reads_as_key_gone_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let sealer = Arc::new(TestSealer::default());
    let store = sealed(&p, &sealer);
    store
        .append(vec![
            new(msg("acme", "d1", T0, 1), &[1]),
            new(msg("doomed", "d1", T0, 2), &[1]),
            new(msg("acme", "d1", T0, 3), &[1]),
        ])
        .await
        .unwrap();
    sealer.shredded.lock().unwrap().insert("doomed".into());
    let due = store.due(1, T0, 10).unwrap();
    assert_eq!(seqs(&due, |p| p.seq), [1, 2, 3]);
    assert!(due[0].event.is_ok() && due[2].event.is_ok());
    match &due[1].event {
        Err(EventStoreError::KeyGone { workspace, seq }) => {
            assert_eq!((workspace.as_str(), *seq), ("doomed", 2))
        }
        other => panic!("{other:?}"),
    }
    // The worker drops it; the deletion job removes the rest.
    store
        .record(vec![Outcome::Delivered { endpoint: 1, seq: 2 }])
        .await
        .unwrap();
    assert_eq!(store.delete_workspace("doomed").await.unwrap().events, 1);
}

#[tokio::test]
async fn a_refused_seal_fails_that_append_alone_and_takes_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Arc::new(TestSealer::default());
    sealer.refused.lock().unwrap().insert("nokey".into());
    let store = sealed(&path(&dir), &sealer);
    let (bad, good) = tokio::join!(
        store.append(vec![
            new(msg("acme", "d1", T0, 1), &[1]),
            new(msg("nokey", "d1", T0, 2), &[1])
        ]),
        store.append(vec![new(msg("acme", "d1", T0, 3), &[1])]),
    );
    let err = bad.unwrap_err();
    assert!(
        matches!(&err, EventStoreError::Seal { workspace, .. } if workspace == "nokey"),
        "{err:?}"
    );
    assert!(err.retryable());
    assert_eq!(good.unwrap()[0].seq, 1, "the failed batch left no gap");
    assert_eq!(store.head(), 1);
    assert_eq!(store.stats().unwrap().pending, 1);
    assert_eq!(
        store.seq_of(&msg("acme", "d1", 0, 1).id).unwrap(),
        None,
        "all or nothing"
    );
}

#[tokio::test]
async fn rows_written_before_sealing_was_enabled_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    open(&p)
        .append(vec![new(msg("acme", "d1", T0, 1), &[])])
        .await
        .unwrap();
    let sealer = Arc::new(TestSealer::default());
    let store = sealed(&p, &sealer);
    store
        .append(vec![new(msg("acme", "d1", T0, 2), &[])])
        .await
        .unwrap();
    let read = store.read_after("acme", 0, 10).unwrap();
    assert_eq!(read.len(), 2);
    assert!(read.iter().all(|s| s.event.is_ok()));
}

#[tokio::test]
async fn head_watchers_wake_when_appends_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    let mut head = store.watch_head();
    assert_eq!(*head.borrow_and_update(), 0);
    let writer = store.clone();
    let append = tokio::spawn(async move {
        writer
            .append((0..3).map(|n| new(msg("acme", "d1", T0, n), &[1])).collect())
            .await
            .unwrap()
    });
    head.changed().await.unwrap();
    let seen = *head.borrow_and_update();
    assert_eq!(seen, 3, "one batch, one durable step");
    assert_eq!(
        store.read_after("acme", 0, 10).unwrap().len(),
        3,
        "readable once announced"
    );
    append.await.unwrap();
    // Outcomes do not move the head.
    store
        .record(vec![Outcome::Delivered { endpoint: 1, seq: 1 }])
        .await
        .unwrap();
    assert!(!head.has_changed().unwrap());
}

#[tokio::test]
async fn sweep_walks_only_what_it_may_change_and_spares_replays() {
    const DAY: u64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(
        path(&dir),
        StoreOptions {
            max_age_ms: 2 * DAY,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // One event owed to endpoint 1, then a hundred that nothing refers to.
    let mut batch = vec![new(msg("acme", "d1", T0, 0), &[1])];
    batch.extend((1..=100).map(|n| new(msg("acme", "d1", T0 + n, n), &[])));
    store.append(batch).await.unwrap();

    // Retention longer than the maximum age (subscribers may resume from far back): nothing
    // is old enough to delete, the delivery is old enough to expire. Only the referenced
    // event is walked, not the hundred unreferenced ones.
    let now = T0 + 3 * DAY;
    let r = store.sweep(T0 - 1, now).await.unwrap();
    assert_eq!((r.expired, r.events_deleted, r.scanned), (1, 0, 1));
    assert_eq!(store.list_dead(1, 0, 10).unwrap()[0].seq, 1);

    // A replay starts the delivery's age afresh: the next sweep leaves it pending.
    assert_eq!(store.replay_dead(1, DeadSelector::One(1), now).await.unwrap(), 1);
    let r = store.sweep(T0 - 1, now + 60_000).await.unwrap();
    assert_eq!(r.expired, 0);
    assert_eq!(seqs(&store.pending(1, 0, 10).unwrap(), |p| p.seq), [1]);
    // A retry keeps that age; past the maximum age it expires again.
    store
        .record(vec![Outcome::Retry {
            endpoint: 1,
            seq: 1,
            attempts: 1,
            due_ms: now + DAY,
            error: "HTTP 503".into(),
        }])
        .await
        .unwrap();
    let r = store.sweep(T0 - 1, now + 2 * DAY + 1).await.unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(
        store.list_dead(1, 0, 10).unwrap()[0].last_error,
        "expired: HTTP 503"
    );
    assert_eq!(store.stats().unwrap().events, 101);
}
