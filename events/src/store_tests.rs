//! Behaviour of the event store (layout version 2, the event log with cursors): durability
//! across reopen, dedupe (not for `message.status`), chunking into log rows, `scan` filters
//! and `through`, cursors, owed and dead deliveries against a model, idempotent outcomes,
//! replay, sweep rules (age, cursors, references), workspace deletion, sealing, damaged rows,
//! concurrent group commits.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};
use waping_journal::{OpenFailure, RecordSealer, SealFailure};

use crate::*;

const T0: u64 = 1_795_705_445_000;
const DAY: u64 = 86_400_000;

fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("events.redb")
}

fn open(p: &Path) -> EventStore {
    EventStore::open(p, StoreOptions::default()).unwrap()
}

fn open_with(p: &Path, options: StoreOptions) -> EventStore {
    EventStore::open(p, options).unwrap()
}

/// Options with at most `n` events per log row.
fn rows_of(n: usize) -> StoreOptions {
    StoreOptions {
        max_row_events: n,
        ..StoreOptions::default()
    }
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

/// A `message.status` (binary form) whose id is derived from `n`: the same `n` gives the same id.
fn status(ws: &str, dev: &str, at_ms: u64, n: u64) -> Event {
    Event {
        id: EventId::derived(&[b"test status", &n.to_be_bytes()]),
        workspace: ws.into(),
        device: Some(dev.into()),
        at_ms,
        data: EventData::MessageStatus(MessageStatus {
            message_id: format!("{n:032x}"),
            status: DeliveryStatus::Delivered,
            upstream_id: Some(format!("UP{n}")),
            error: None,
        }),
    }
}

/// A `device.state` whose id is derived from `n`.
fn state(ws: &str, dev: &str, at_ms: u64, n: u64) -> Event {
    Event {
        id: EventId::derived(&[b"test state", &n.to_be_bytes()]),
        workspace: ws.into(),
        device: Some(dev.into()),
        at_ms,
        data: EventData::DeviceState(DeviceStateChange {
            state: DeviceState::Connected,
            detail: Some(format!("state {n}")),
            until_ms: None,
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

fn all(_: EventType, _: Option<&str>) -> bool {
    true
}

fn retry(endpoint: u64, seq: u64, attempts: u32, due_ms: u64, error: &str) -> Outcome {
    Outcome::Retry {
        endpoint,
        seq,
        attempts,
        due_ms,
        since_ms: T0,
        device: Some("d1".into()),
        error: error.into(),
    }
}

fn dead(endpoint: u64, seq: u64, at_ms: u64) -> Outcome {
    Outcome::Dead {
        endpoint,
        seq,
        attempts: 12,
        error: format!("HTTP 502 for {seq}"),
        at_ms,
    }
}

/// Rewrites (or writes) the log row `(ws, last)` with `f` in a raw write transaction.
fn tamper(store: &EventStore, ws: &str, last: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let txn = store.raw_db().begin_write().unwrap();
    {
        let mut log = txn.open_table(crate::store::LOG).unwrap();
        let mut row = log
            .get((ws, last))
            .unwrap()
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        f(&mut row);
        log.insert((ws, last), row.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// `(workspace, last_seq, first_seq, count)` of every log row, in key order.
fn rows(store: &EventStore) -> Vec<(String, u64, u64, u32)> {
    let txn = store.raw_db().begin_read().unwrap();
    let log = txn.open_table(crate::store::LOG).unwrap();
    log.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            let (ws, last) = k.value();
            let h = crate::codec::RowHeader::decode(v.value()).unwrap();
            (ws.to_owned(), last, h.first_seq, h.count)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Appends, numbering, dedupe, chunking

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
        assert_eq!(store.append(Vec::new()).await.unwrap(), Vec::new());
    }
    let store = open(&p);
    assert_eq!(store.head(), 5);
    let read = store.read_after("acme", 0, 100).unwrap();
    assert_eq!(seqs(&read, |s| s.seq), [1, 2, 3, 4, 5]);
    for (s, e) in read.iter().zip(&events) {
        assert_eq!(s.event.as_ref().unwrap(), e);
    }
    assert_eq!(store.get(3).unwrap().unwrap().event.unwrap(), events[2]);
    assert!(store.get(0).unwrap().is_none());
    assert!(store.get(6).unwrap().is_none());
    assert_eq!(store.seq_of(&events[4].id).unwrap(), Some(5));
    for ep in [7, 9] {
        let p = store.owed(ep, 0, 100).unwrap();
        assert_eq!(seqs(&p, |p| p.seq), [1, 2, 3, 4, 5]);
        assert_eq!(
            (
                p[0].attempts,
                p[0].due_ms,
                p[0].since_ms,
                p[0].device.as_deref(),
                p[0].last_error.as_str()
            ),
            (0, T0, T0, Some("d1"), ""),
            "owed at once, due at the event's time"
        );
        assert_eq!(p[4].due_ms, T0 + 4);
    }
    let a = store
        .append(vec![new(msg("acme", "d1", T0, 99), &[])])
        .await
        .unwrap();
    assert_eq!(a[0].seq, 6);
    let st = store.stats().unwrap();
    assert_eq!(
        (st.head, st.rows, st.pending, st.dead, st.appended),
        (6, 2, 10, 0, 1),
        "one row per append here"
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
        seqs(&store.owed(2, 0, 10).unwrap(), |p| p.seq),
        [2],
        "no owed delivery for the duplicate"
    );
    assert!(store.owed(3, 0, 10).unwrap().is_empty());
    assert_eq!(
        store.get(1).unwrap().unwrap().event.unwrap(),
        e,
        "the first copy is kept"
    );
    assert_eq!(seqs(&store.read_after("acme", 0, 10).unwrap(), |s| s.seq), [1, 2]);
    assert_eq!(store.head(), 2);
    assert_eq!(store.stats().unwrap().appended, 2);
}

#[tokio::test]
async fn message_status_is_not_deduplicated_while_other_types_are() {
    assert!(!deduplicated(EventType::MessageStatus));
    for t in EventType::ALL {
        assert_eq!(deduplicated(t), t != EventType::MessageStatus, "{t}");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    let st = status("acme", "d1", T0, 7);
    let dev = state("acme", "d1", T0, 7);
    let a = store
        .append(vec![
            new(st.clone(), &[]),
            new(st.clone(), &[]),
            new(dev.clone(), &[]),
            new(dev.clone(), &[]),
        ])
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        [(1, false), (2, false), (3, false), (3, true)]
    );
    let a = store
        .append(vec![new(st.clone(), &[]), new(dev.clone(), &[])])
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        [(4, false), (3, true)],
        "across appends too"
    );
    assert_eq!(store.seq_of(&st.id).unwrap(), None, "statuses have no id index");
    assert_eq!(store.seq_of(&dev.id).unwrap(), Some(3));
    let read = store.read_after("acme", 0, 10).unwrap();
    assert_eq!(seqs(&read, |s| s.seq), [1, 2, 3, 4]);
    for s in [&read[0], &read[1], &read[3]] {
        assert_eq!(s.event.as_ref().unwrap(), &st, "binary status round-trips");
    }
    // What the start-up replay checks instead of an index.
    let ids = store.recent_ids(EventType::MessageStatus, T0, 100).unwrap();
    assert_eq!(ids, HashSet::from([st.id]));
}

#[tokio::test]
async fn invalid_batches_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_event_bytes: 200,
            max_endpoints_per_event: 3,
            max_batch_events: 4,
            ..StoreOptions::default()
        },
    );
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
    let err = store
        .append(vec![new(msg("acme", "d1", T0, 30), &[]), new(big, &[])])
        .await
        .unwrap_err();
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
    assert_eq!(store.read_after("acme", 0, 10).unwrap().len(), 1);
    assert_eq!(store.seq_of(&msg("acme", "d1", T0, 1).id).unwrap(), None);
    assert_eq!(store.seq_of(&msg("acme", "d1", T0, 30).id).unwrap(), None);
}

#[tokio::test]
async fn read_after_pages_one_workspace_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_page: 3,
            ..StoreOptions::default()
        },
    );
    let batch = (0..10)
        .map(|n| {
            new(
                msg(if n % 2 == 0 { "acme" } else { "acme-2" }, "d1", T0 + n, n),
                &[],
            )
        })
        .collect();
    let a = store.append(batch).await.unwrap();
    // Numbers follow batch order within a workspace; each workspace's events are one chunk.
    assert_eq!(seqs(&a, |a| a.seq), [1, 6, 2, 7, 3, 8, 4, 9, 5, 10]);
    let mut cursor = 0;
    let mut got = Vec::new();
    loop {
        let page = store.read_after("acme", cursor, 100).unwrap();
        assert!(page.len() <= 3, "clamped to max_page");
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        for s in &page {
            let e = s.event.as_ref().unwrap();
            assert_eq!(
                (e.workspace.as_str(), e.id),
                ("acme", a.iter().find(|a| a.seq == s.seq).unwrap().id)
            );
        }
        got.extend(page.iter().map(|s| s.seq));
    }
    assert_eq!(
        got,
        [1, 2, 3, 4, 5],
        "acme's events only; acme-2 is a different workspace"
    );
    assert_eq!(
        seqs(&store.read_after("acme-2", 7, 0).unwrap(), |s| s.seq),
        [8],
        "limit 0 reads 1"
    );
    assert!(store.read_after("acme", u64::MAX, 10).unwrap().is_empty());
    assert!(store.read_after("acme", 5, 10).unwrap().is_empty());
    assert!(store.read_after("nobody", 0, 10).unwrap().is_empty());
    assert!(
        store.read_after("acm", 0, 10).unwrap().is_empty(),
        "no prefix match"
    );
}

#[tokio::test]
async fn small_rows_split_appends_and_reads_cross_row_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let store = open_with(&p, rows_of(3));
    let batch = (0..10).map(|n| new(msg("acme", "d1", T0 + n, n), &[])).collect();
    store.append(batch).await.unwrap();
    let other = (0..4)
        .map(|n| new(state("other", "d9", T0 + n, n), &[]))
        .collect();
    store.append(other).await.unwrap();
    store
        .append(vec![new(msg("acme", "d1", T0 + 10, 10), &[1])])
        .await
        .unwrap();
    assert_eq!(
        rows(&store),
        [
            ("acme".to_string(), 3, 1, 3),
            ("acme".to_string(), 6, 4, 3),
            ("acme".to_string(), 9, 7, 3),
            ("acme".to_string(), 10, 10, 1),
            ("acme".to_string(), 15, 15, 1),
            ("other".to_string(), 13, 11, 3),
            ("other".to_string(), 14, 14, 1),
        ]
    );
    assert_eq!(store.stats().unwrap().rows, 7);
    let acme: Vec<u64> = (1..=10).chain([15]).collect();
    // Every seq, first and last of rows included.
    for seq in 1..=15 {
        let s = store.get(seq).unwrap().unwrap();
        let e = s.event.unwrap();
        assert_eq!(s.seq, seq);
        if seq <= 10 {
            assert_eq!(e, msg("acme", "d1", T0 + seq - 1, seq - 1));
        } else if seq == 15 {
            assert_eq!(e, msg("acme", "d1", T0 + 10, 10));
        } else {
            assert_eq!(e, state("other", "d9", T0 + seq - 11, seq - 11));
        }
    }
    assert!(store.get(16).unwrap().is_none());
    // Any starting point, any page size.
    for after in 0..=16 {
        for limit in 1..=5 {
            let want: Vec<u64> = acme.iter().copied().filter(|s| *s > after).take(limit).collect();
            let got = store.read_after("acme", after, limit).unwrap();
            assert_eq!(seqs(&got, |s| s.seq), want, "after {after}, limit {limit}");
            assert!(got.iter().all(|s| s.event.is_ok()));
        }
    }
    // Byte-bounded rows: a row closes once its body reaches max_row_bytes.
    drop(store);
    let store = open_with(
        &p,
        StoreOptions {
            max_row_bytes: 1,
            ..StoreOptions::default()
        },
    );
    let a = store
        .append((20..23).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
        .await
        .unwrap();
    assert_eq!(seqs(&a, |a| a.seq), [16, 17, 18]);
    let r = rows(&store);
    assert!(
        r.contains(&("acme".into(), 16, 16, 1)) && r.contains(&("acme".into(), 18, 18, 1)),
        "{r:?}"
    );
    assert_eq!(
        seqs(&store.read_after("acme", 14, 10).unwrap(), |s| s.seq),
        [15, 16, 17, 18]
    );
    for (name, opts) in [
        ("max_row_events", rows_of(0)),
        ("max_row_events", rows_of(65_537)),
        (
            "max_row_bytes",
            StoreOptions {
                max_row_bytes: 0,
                ..StoreOptions::default()
            },
        ),
    ] {
        drop(store.clone());
        let err = EventStore::open(dir.path().join("other.redb"), opts).unwrap_err();
        assert!(
            matches!(&err, EventStoreError::Config(r) if r.contains(name)),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// scan, cursors, backlog, recent ids

#[tokio::test]
async fn scan_filters_before_parsing_and_through_moves_past_refused_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(4));
    // 40 events: seq 1..=40; every fifth a message from d2, the rest statuses of d1.
    let batch = (0..40u64)
        .map(|n| {
            let e = if n % 5 == 4 {
                msg("acme", "d2", T0 + n, n)
            } else {
                status("acme", "d1", T0 + n, n)
            };
            new(e, &[])
        })
        .collect();
    store.append(batch).await.unwrap();
    let wanted = |t: EventType, d: Option<&str>| t == EventType::MessageReceived && d == Some("d2");
    let page = store.scan("acme", 0, 100, &wanted).unwrap();
    assert_eq!(seqs(&page.events, |s| s.seq), [5, 10, 15, 20, 25, 30, 35, 40]);
    assert_eq!(page.through, 40);
    assert!(
        page.events
            .iter()
            .all(|s| s.event.as_ref().unwrap().device.as_deref() == Some("d2"))
    );

    // A full page ends at its last event, even inside a row.
    let page = store.scan("acme", 0, 3, &wanted).unwrap();
    assert_eq!(seqs(&page.events, |s| s.seq), [5, 10, 15]);
    assert_eq!(page.through, 15);
    let page = store.scan("acme", 15, 3, &wanted).unwrap();
    assert_eq!(seqs(&page.events, |s| s.seq), [20, 25, 30]);

    // A filter that refuses everything: at most 16 × limit examined per call, whole rows,
    // and `through` moves on each time until the head.
    let none = |_: EventType, _: Option<&str>| false;
    let mut through = 0;
    let mut steps = Vec::new();
    loop {
        let page = store.scan("acme", through, 1, &none).unwrap();
        assert!(page.events.is_empty());
        if page.through == through {
            break;
        }
        assert!(page.through > through);
        through = page.through;
        steps.push(through);
    }
    assert_eq!(steps, [16, 32, 40]);
    // The same from the middle of a row.
    let page = store.scan("acme", 2, 1, &none).unwrap();
    assert_eq!(page.through, 20, "rows 3-4, 5-8, ..., 17-20 make 18 examined");
    assert_eq!(
        store.scan("acme", 40, 10, &all).unwrap().through,
        40,
        "nothing after: stays"
    );
    assert_eq!(store.scan("acme", u64::MAX, 10, &all).unwrap().through, u64::MAX);
    let page = store.scan("nobody", 7, 10, &all).unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.through, 7);
}

#[tokio::test]
async fn cursors_open_at_the_head_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    {
        let store = open(&p);
        assert_eq!(store.open_cursor(1, "acme", None).await.unwrap(), 0);
        store
            .append((0..3).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
            .await
            .unwrap();
        assert_eq!(
            store.open_cursor(2, "acme", None).await.unwrap(),
            3,
            "a new endpoint starts at the head"
        );
        assert_eq!(
            store.open_cursor(1, "acme", None).await.unwrap(),
            0,
            "an existing cursor stays"
        );
        assert_eq!(store.open_cursor(1, "acme", Some(2)).await.unwrap(), 0);
        assert_eq!(store.open_cursor(3, "acme", Some(1)).await.unwrap(), 1);
        let r = store
            .record(vec![
                Outcome::Advance {
                    endpoint: 1,
                    to_seq: 2,
                },
                Outcome::Advance {
                    endpoint: 1,
                    to_seq: 1,
                },
                Outcome::Advance {
                    endpoint: 1,
                    to_seq: 2,
                },
                Outcome::Advance {
                    endpoint: 2,
                    to_seq: 3,
                },
            ])
            .await
            .unwrap();
        assert_eq!((r.applied, r.ignored), (1, 3), "back or in place changes nothing");
        assert_eq!(store.cursor(1).unwrap(), Some((2, "acme".to_string())));
        assert_eq!(store.cursor(2).unwrap(), Some((3, "acme".to_string())));
        assert_eq!(store.cursor(4).unwrap(), None);
    }
    // Durable.
    let store = open(&p);
    assert_eq!(store.cursor(1).unwrap(), Some((2, "acme".to_string())));
    assert_eq!(store.cursor(3).unwrap(), Some((1, "acme".to_string())));

    // An endpoint without a cursor: every outcome is ignored and leaves nothing.
    let r = store
        .record(vec![
            retry(99, 1, 1, T0, "HTTP 503"),
            dead(99, 2, T0),
            Outcome::Advance {
                endpoint: 99,
                to_seq: 3,
            },
            Outcome::Delivered { endpoint: 99, seq: 3 },
        ])
        .await
        .unwrap();
    assert_eq!((r.applied, r.ignored), (0, 4));
    assert!(store.owed(99, 0, 10).unwrap().is_empty());
    assert!(store.list_dead(99, 0, 10).unwrap().is_empty());
    assert_eq!(store.next_owed_due(99).unwrap(), None);
    assert_eq!(store.cursor(99).unwrap(), None);
    assert_eq!(store.backlog(99).unwrap(), Backlog::default());
    assert_eq!(store.record(Vec::new()).await.unwrap(), RecordReport::default());
}

#[tokio::test]
async fn backlog_counts_the_workspace_after_the_cursor_and_the_endpoint_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(2));
    store.open_cursor(1, "acme", None).await.unwrap();
    store.open_cursor(2, "other", None).await.unwrap();
    // acme: 1..=5 (rows 1-2, 3-4, 5); other: 6..=8; acme: 9..=10.
    store
        .append((0..5).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
        .await
        .unwrap();
    store
        .append((0..3).map(|n| new(state("other", "d1", T0, n), &[1])).collect())
        .await
        .unwrap();
    store
        .append((5..7).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
        .await
        .unwrap();
    let b = store.backlog(1).unwrap();
    assert_eq!(
        b,
        Backlog {
            cursor: Some(0),
            unread: 7,
            owed: 3,
            dead: 0
        },
        "other's events are owed to 1 but not in its log"
    );
    store
        .record(vec![
            Outcome::Advance {
                endpoint: 1,
                to_seq: 3,
            },
            dead(1, 6, T0),
            Outcome::Delivered { endpoint: 1, seq: 7 },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.backlog(1).unwrap(),
        Backlog {
            cursor: Some(3),
            unread: 4,
            owed: 1,
            dead: 1
        },
        "a cursor inside a row counts the rest of that row"
    );
    store
        .record(vec![Outcome::Advance {
            endpoint: 1,
            to_seq: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.backlog(1).unwrap().unread, 0);
    assert_eq!(
        store.backlog(2).unwrap(),
        Backlog {
            cursor: Some(0),
            unread: 3,
            owed: 0,
            dead: 0
        }
    );
}

#[tokio::test]
async fn recent_ids_walk_back_from_the_newest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(2));
    // Rows (by time): [s0 s1] [s2 m3] [s4] ... appended one batch per minute.
    let mut ids = Vec::new();
    for minute in 0..5u64 {
        let at = T0 + minute * 60_000;
        let a = store
            .append(vec![
                new(status("acme", "d1", at, minute * 10), &[]),
                new(msg("acme", "d1", at, minute), &[]),
                new(status("b", "d1", at + 1, minute * 10 + 1), &[]),
            ])
            .await
            .unwrap();
        ids.push((a[0].id, a[2].id));
    }
    let all_status: HashSet<EventId> = ids.iter().flat_map(|(a, b)| [*a, *b]).collect();
    assert_eq!(
        store.recent_ids(EventType::MessageStatus, T0, 100).unwrap(),
        all_status
    );
    let since = store
        .recent_ids(EventType::MessageStatus, T0 + 3 * 60_000, 100)
        .unwrap();
    assert_eq!(since, ids[3..].iter().flat_map(|(a, b)| [*a, *b]).collect());
    // The newest append made two rows: acme's and b's.
    let newest = store.recent_ids(EventType::MessageStatus, T0, 2).unwrap();
    assert_eq!(newest, HashSet::from([ids[4].0, ids[4].1]));
    let received = store.recent_ids(EventType::MessageReceived, T0, 100).unwrap();
    assert_eq!(received, (0..5).map(|m| msg("acme", "d1", 0, m).id).collect());
    assert!(
        store
            .recent_ids(EventType::DeviceState, T0, 100)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .recent_ids(EventType::MessageStatus, T0 + DAY, 100)
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Owed and dead deliveries

/// xorshift: deterministic pseudo-random numbers for the model tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `owed`, `owed_due`, `next_owed_due`, `list_dead`, cursors and `backlog` against a model
/// over a pseudo-random history of retries, deliveries, deaths and cursor moves.
#[tokio::test]
async fn owed_and_dead_deliveries_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(7));
    const EP: u64 = 4;
    store.open_cursor(EP, "acme", None).await.unwrap();
    store.open_cursor(5, "acme", None).await.unwrap();
    let batch = (0..300)
        .map(|n| new(msg("acme", "d1", T0, n), &[EP, 5]))
        .collect();
    store.append(batch).await.unwrap();
    // seq -> due_ms of owed rows of EP; dead seqs of EP; EP's cursor.
    let mut owed: BTreeMap<u64, u64> = (1..=300).map(|s| (s, T0)).collect();
    let mut gone: BTreeSet<u64> = BTreeSet::new();
    let mut cursor = 0u64;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..40u64 {
        let mut outcomes = Vec::new();
        let mut applied = 0;
        for _ in 0..20 {
            let seq = rng.next() % 300 + 1;
            match rng.next() % 10 {
                0 | 1 => {
                    outcomes.push(Outcome::Delivered { endpoint: EP, seq });
                    applied += usize::from(owed.remove(&seq).is_some());
                }
                2 => {
                    outcomes.push(dead(EP, seq, T0 + round));
                    owed.remove(&seq);
                    gone.insert(seq);
                    applied += 1;
                }
                3 => {
                    let to = rng.next() % 320;
                    outcomes.push(Outcome::Advance {
                        endpoint: EP,
                        to_seq: to,
                    });
                    if to > cursor {
                        cursor = to;
                        applied += 1;
                    }
                }
                _ if gone.contains(&seq) => {}
                _ => {
                    // Early rows get far-off retries so the due walk must skip them.
                    let due = T0
                        + if seq < 150 {
                            1_000_000 + rng.next() % 1000
                        } else {
                            rng.next() % 2000
                        };
                    outcomes.push(retry(
                        EP,
                        seq,
                        round as u32 + 1,
                        due,
                        &format!("HTTP 503 round {round}"),
                    ));
                    owed.insert(seq, due);
                    applied += 1;
                }
            }
        }
        let r = store.record(outcomes.clone()).await.unwrap();
        assert_eq!(
            (r.applied, r.ignored),
            (applied, outcomes.len() - applied),
            "round {round}"
        );
        for (now, limit) in [
            (T0, 5),
            (T0 + 1000, 7),
            (T0 + 2000, 500),
            (T0 + 1_000_500, 50),
            (u64::MAX, 1000),
        ] {
            // The `limit` earliest due (ties by seq), returned in seq order.
            let mut due: Vec<(u64, u64)> = owed
                .iter()
                .filter(|&(_, &d)| d <= now)
                .map(|(&s, &d)| (d, s))
                .collect();
            due.sort_unstable();
            let mut want: Vec<u64> = due.into_iter().take(limit).map(|(_, s)| s).collect();
            want.sort_unstable();
            let got = store.owed_due(EP, now, limit).unwrap();
            assert_eq!(
                seqs(&got, |p| p.seq),
                want,
                "round {round}, now {now}, limit {limit}"
            );
            for p in &got {
                assert_eq!(p.due_ms, owed[&p.seq]);
                assert_eq!(
                    p.event.as_ref().unwrap().id,
                    EventId::for_inbound("acme", "d1", &format!("UP{}", p.seq - 1))
                );
            }
        }
        let all_owed = store.owed(EP, 0, 1000).unwrap();
        assert_eq!(
            seqs(&all_owed, |p| p.seq),
            owed.keys().copied().collect::<Vec<_>>()
        );
        let after = store.owed(EP, 150, 10).unwrap();
        assert_eq!(
            seqs(&after, |p| p.seq),
            owed.range(150..).map(|(&s, _)| s).take(10).collect::<Vec<_>>()
        );
        assert_eq!(store.next_owed_due(EP).unwrap(), owed.values().min().copied());
        let d = store.list_dead(EP, 0, 1000).unwrap();
        assert_eq!(seqs(&d, |d| d.seq), gone.iter().copied().collect::<Vec<_>>());
        assert!(d.iter().all(|d| d.event.is_ok() && d.attempts == 12));
        let b = store.backlog(EP).unwrap();
        assert_eq!(
            b,
            Backlog {
                cursor: Some(cursor),
                unread: 300 - cursor.min(300),
                owed: owed.len() as u64,
                dead: gone.len() as u64
            }
        );
    }
    // The other endpoint was never touched.
    assert_eq!(store.owed(5, 0, 1000).unwrap().len(), 300);
    assert_eq!(store.next_owed_due(5).unwrap(), Some(T0));
    assert_eq!(store.next_owed_due(6).unwrap(), None);
    assert_eq!(store.cursor(5).unwrap(), Some((0, "acme".into())));
}

#[tokio::test]
async fn outcomes_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&path(&dir));
    store.open_cursor(1, "acme", None).await.unwrap();
    store
        .append((0..4).map(|n| new(msg("acme", "d1", T0, n), &[1])).collect())
        .await
        .unwrap();
    let delivered = Outcome::Delivered { endpoint: 1, seq: 1 };
    let died = Outcome::Dead {
        endpoint: 1,
        seq: 2,
        attempts: 9,
        error: "HTTP 500".into(),
        at_ms: T0 + 10,
    };
    let advance = Outcome::Advance {
        endpoint: 1,
        to_seq: 4,
    };
    let r = store
        .record(vec![delivered.clone(), died.clone(), advance.clone()])
        .await
        .unwrap();
    assert_eq!((r.applied, r.ignored), (3, 0));
    // A worker that did not see the answer records again: the same state.
    store
        .record(vec![delivered.clone(), died.clone(), advance.clone()])
        .await
        .unwrap();
    assert_eq!(seqs(&store.owed(1, 0, 10).unwrap(), |p| p.seq), [3, 4]);
    let d = store.list_dead(1, 0, 10).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].seq, d[0].attempts, d[0].at_ms, d[0].last_error.as_str()),
        (2, 9, T0 + 10, "HTTP 500")
    );
    assert_eq!(store.cursor(1).unwrap().unwrap().0, 4);
    let r = store.record(vec![delivered, advance]).await.unwrap();
    assert_eq!(
        (r.applied, r.ignored),
        (0, 2),
        "a gone owed row, a cursor already there"
    );

    // A late retry of a delivery that has died changes nothing: it stays dead, not owed too.
    store.record(vec![retry(1, 2, 3, T0 + 99, "late")]).await.unwrap();
    assert_eq!(seqs(&store.owed(1, 0, 10).unwrap(), |p| p.seq), [3, 4]);
    assert_eq!(seqs(&store.list_dead(1, 0, 10).unwrap(), |d| d.seq), [2]);

    // Retrying keeps the row, its first `since` and its place; the error is cut to MAX_ERROR_BYTES.
    let again = Outcome::Retry {
        endpoint: 1,
        seq: 3,
        attempts: 1,
        due_ms: T0 + 5,
        since_ms: T0 + 1_000,
        device: Some("d1".into()),
        error: "é".repeat(1000),
    };
    store.record(vec![again.clone(), again]).await.unwrap();
    let p = store.owed(1, 0, 10).unwrap();
    assert_eq!(
        (p[0].seq, p[0].attempts, p[0].due_ms, p[0].since_ms),
        (3, 1, T0 + 5, T0),
        "owed since the event"
    );
    assert!(p[0].last_error.len() <= MAX_ERROR_BYTES && p[0].last_error.len() >= MAX_ERROR_BYTES - 1);
    assert!(store.owed_due(1, T0 + 4, 10).unwrap().iter().all(|p| p.seq != 3));
    assert_eq!(
        store.next_owed_due(1).unwrap(),
        Some(T0),
        "seq 4 is still due at its time"
    );
    store
        .record(vec![Outcome::Delivered { endpoint: 1, seq: 4 }])
        .await
        .unwrap();
    assert_eq!(store.next_owed_due(1).unwrap(), Some(T0 + 5));
    // A first retry of an event read from the log makes a row with the given `since`.
    store
        .append(vec![new(msg("acme", "d2", T0 + 7, 9), &[])])
        .await
        .unwrap();
    store
        .record(vec![Outcome::Retry {
            endpoint: 1,
            seq: 5,
            attempts: 1,
            due_ms: T0 + 60_000,
            since_ms: T0 + 7,
            device: Some("d2".into()),
            error: "timeout".into(),
        }])
        .await
        .unwrap();
    let p = store.owed(1, 5, 10).unwrap();
    assert_eq!(
        (
            p[0].seq,
            p[0].since_ms,
            p[0].device.as_deref(),
            p[0].last_error.as_str()
        ),
        (5, T0 + 7, Some("d2"), "timeout")
    );
}

#[tokio::test]
async fn dead_deliveries_list_replay_and_go_with_their_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_rows_per_step: 2,
            max_row_events: 4,
            ..StoreOptions::default()
        },
    );
    store.open_cursor(1, "acme", None).await.unwrap();
    store.open_cursor(2, "acme", None).await.unwrap();
    store
        .append((0..6).map(|n| new(msg("acme", "d1", T0, n), &[1, 2])).collect())
        .await
        .unwrap();
    store
        .record(
            (1..=5)
                .map(|s| dead(1, s, T0 + 100))
                .chain([dead(2, 6, T0 + 100)])
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.list_dead(1, 0, 100).unwrap(), |d| d.seq),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&store.list_dead(1, 3, 2).unwrap(), |d| d.seq),
        [3, 4],
        "paged"
    );
    let first = &store.list_dead(1, 0, 1).unwrap()[0];
    assert_eq!(first.event.as_ref().unwrap(), &msg("acme", "d1", T0, 0));
    assert_eq!(
        (first.attempts, first.at_ms, first.last_error.as_str()),
        (12, T0 + 100, "HTTP 502 for 1")
    );
    assert_eq!(
        store.list_dead(1, 5, 10).unwrap()[0].event.as_ref().unwrap(),
        &msg("acme", "d1", T0, 4)
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
    assert_eq!(
        store.replay_dead(42, DeadSelector::All, T0 + 200).await.unwrap(),
        0
    );
    let p = store.owed(1, 0, 100).unwrap();
    assert_eq!(seqs(&p, |p| p.seq), [3, 6]);
    assert_eq!(
        (p[0].attempts, p[0].due_ms, p[0].since_ms),
        (0, T0 + 200, T0 + 200)
    );
    assert_eq!(
        store.replay_dead(1, DeadSelector::All, T0 + 300).await.unwrap(),
        4
    );
    assert!(store.list_dead(1, 0, 100).unwrap().is_empty());
    assert_eq!(
        seqs(&store.owed_due(1, T0 + 300, 100).unwrap(), |p| p.seq),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(
        store
            .owed_due(1, T0 + 199, 100)
            .unwrap()
            .iter()
            .all(|p| p.seq == 6)
    );
    assert_eq!(
        store.next_owed_due(1).unwrap(),
        Some(T0),
        "seq 6 was never dead here"
    );

    // Removing the endpoint drops its cursor, owed and dead rows only (several steps); its
    // later outcomes are ignored.
    store.record(vec![dead(1, 1, T0), dead(1, 2, T0)]).await.unwrap();
    let removed = store.remove_endpoint(1).await.unwrap();
    assert_eq!(
        removed,
        Removed {
            events: 0,
            deliveries: 4,
            dead: 2
        }
    );
    assert!(store.owed(1, 0, 100).unwrap().is_empty());
    assert!(store.list_dead(1, 0, 100).unwrap().is_empty());
    assert_eq!(store.next_owed_due(1).unwrap(), None);
    assert_eq!(store.cursor(1).unwrap(), None);
    let r = store
        .record(vec![retry(1, 1, 1, T0, "x"), dead(1, 3, T0)])
        .await
        .unwrap();
    assert_eq!(r.ignored, 2);
    assert!(store.owed(1, 0, 100).unwrap().is_empty());
    assert_eq!(store.owed(2, 0, 100).unwrap().len(), 5);
    assert_eq!(store.list_dead(2, 0, 100).unwrap().len(), 1);
    assert_eq!(
        store.read_after("acme", 0, 100).unwrap().len(),
        6,
        "the events stay"
    );
    assert_eq!(store.remove_endpoint(1).await.unwrap(), Removed::default());
}

// ---------------------------------------------------------------------------------------------
// Sweep, workspace deletion

#[tokio::test]
async fn sweep_deletes_what_nothing_needs_and_expires_what_waits_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_age_ms: 2 * DAY,
            max_rows_per_step: 2,
            max_row_events: 1,
            ..StoreOptions::default()
        },
    );
    // Day 0: seq 1-4 (1, 2 without deliveries; 3 delivered later; 4 owed). Day 1: seq 5-6, owed.
    let mut batch: Vec<NewEvent> = (0..4u64)
        .map(|n| new(msg("acme", "d1", T0 + n, n), if n < 2 { &[] } else { &[1] }))
        .collect();
    batch.extend((4..6).map(|n| new(msg("acme", "d1", T0 + DAY + n, n), &[1])));
    store.append(batch).await.unwrap();
    // The endpoint has passed everything in the log; only its owed rows hold events.
    assert_eq!(store.open_cursor(1, "acme", None).await.unwrap(), 6);
    store
        .record(vec![Outcome::Delivered { endpoint: 1, seq: 3 }])
        .await
        .unwrap();

    // Retention of half a day at T0 + 1.5 days: seq 1-3 go; 4 waits for its delivery, 5-6 are young.
    let r = store.sweep(T0 + DAY, T0 + DAY + DAY / 2).await.unwrap();
    assert_eq!((r.expired, r.dead_removed, r.events_deleted), (0, 0, 3));
    assert!(r.scanned >= 6, "{r:?}");
    assert_eq!(
        seqs(&store.read_after("acme", 0, 10).unwrap(), |s| s.seq),
        [4, 5, 6]
    );
    assert_eq!(store.seq_of(&msg("acme", "d1", 0, 0).id).unwrap(), None);
    assert!(store.get(1).unwrap().is_none());

    // At T0 + 2.5 days seq 4 is past the maximum age: its delivery expires to dead, and the
    // young dead row keeps the event.
    let now = T0 + 2 * DAY + DAY / 2;
    let r = store.sweep(T0 + DAY, now).await.unwrap();
    assert_eq!((r.expired, r.dead_removed, r.events_deleted), (1, 0, 0));
    let d = store.list_dead(1, 0, 10).unwrap();
    assert_eq!((d[0].seq, d[0].at_ms, d[0].attempts), (4, now, 0));
    assert!(d[0].last_error.starts_with("expired"), "{}", d[0].last_error);
    assert!(d[0].event.is_ok());
    assert_eq!(store.next_owed_due(1).unwrap(), Some(T0 + DAY + 4));

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
    assert_eq!((st.rows, st.pending, st.dead), (3, 2, 0));
}

#[tokio::test]
async fn a_cursor_pins_what_it_has_not_passed_until_the_age_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_age_ms: 2 * DAY,
            max_row_events: 2,
            ..StoreOptions::default()
        },
    );
    store.open_cursor(1, "acme", None).await.unwrap();
    store.open_cursor(2, "acme", None).await.unwrap();
    // acme 1..=6 in rows 1-2, 3-4, 5-6; other 7..=8; nobody reads other.
    store
        .append((0..6).map(|n| new(msg("acme", "d1", T0 + n, n), &[])).collect())
        .await
        .unwrap();
    store
        .append((0..2).map(|n| new(msg("other", "d1", T0 + n, n), &[])).collect())
        .await
        .unwrap();
    let cutoff = T0 + DAY;
    let r = store.sweep(cutoff, cutoff).await.unwrap();
    assert_eq!(r.events_deleted, 2, "only other's events");
    assert!(store.read_after("other", 0, 10).unwrap().is_empty());

    // One endpoint passed row 1-2 and half of 3-4; the slowest cursor of the workspace counts.
    store
        .record(vec![Outcome::Advance {
            endpoint: 1,
            to_seq: 3,
        }])
        .await
        .unwrap();
    assert_eq!(store.sweep(cutoff, cutoff).await.unwrap().events_deleted, 0);
    store
        .record(vec![Outcome::Advance {
            endpoint: 2,
            to_seq: 5,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.sweep(cutoff, cutoff).await.unwrap().events_deleted,
        2,
        "row 1-2"
    );
    assert_eq!(
        seqs(&store.read_after("acme", 0, 10).unwrap(), |s| s.seq),
        [3, 4, 5, 6]
    );
    // A removed endpoint pins nothing.
    store.remove_endpoint(1).await.unwrap();
    assert_eq!(
        store.sweep(cutoff, cutoff).await.unwrap().events_deleted,
        2,
        "row 3-4"
    );
    // Past the age limit a cursor pins nothing either (the endpoint counts them as expired).
    assert_eq!(
        store.sweep(cutoff, T0 + 2 * DAY).await.unwrap().events_deleted,
        0,
        "not yet"
    );
    assert_eq!(
        store
            .sweep(cutoff, T0 + 2 * DAY + 6)
            .await
            .unwrap()
            .events_deleted,
        2
    );
    assert!(store.read_after("acme", 0, 10).unwrap().is_empty());
    assert_eq!(
        store.cursor(2).unwrap(),
        Some((5, "acme".into())),
        "the cursor itself stays"
    );
    assert_eq!(store.stats().unwrap().rows, 0);
}

#[tokio::test]
async fn sweep_spares_replays_and_keeps_the_age_of_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_age_ms: 2 * DAY,
            ..StoreOptions::default()
        },
    );
    store.open_cursor(1, "acme", None).await.unwrap();
    // One event owed to endpoint 1, then a hundred that nothing refers to.
    let mut batch = vec![new(msg("acme", "d1", T0, 0), &[1])];
    batch.extend((1..=100).map(|n| new(msg("acme", "d1", T0 + n, n), &[])));
    store.append(batch).await.unwrap();
    store
        .record(vec![Outcome::Advance {
            endpoint: 1,
            to_seq: 101,
        }])
        .await
        .unwrap();

    // Retention longer than the maximum age: nothing is old enough to delete, the delivery is
    // old enough to expire.
    let now = T0 + 3 * DAY;
    let r = store.sweep(T0 - 1, now).await.unwrap();
    assert_eq!((r.expired, r.events_deleted), (1, 0));
    assert_eq!(store.list_dead(1, 0, 10).unwrap()[0].seq, 1);

    // A replay starts the delivery's age afresh: the next sweep leaves it owed.
    assert_eq!(store.replay_dead(1, DeadSelector::One(1), now).await.unwrap(), 1);
    let r = store.sweep(T0 - 1, now + 60_000).await.unwrap();
    assert_eq!(r.expired, 0);
    assert_eq!(seqs(&store.owed(1, 0, 10).unwrap(), |p| p.seq), [1]);
    // A retry keeps that age; past the maximum age it expires again, with its last error.
    store
        .record(vec![retry(1, 1, 1, now + DAY, "HTTP 503")])
        .await
        .unwrap();
    assert_eq!(store.owed(1, 0, 10).unwrap()[0].since_ms, now);
    let r = store.sweep(T0 - 1, now + 2 * DAY + 1).await.unwrap();
    assert_eq!(r.expired, 1);
    let d = &store.list_dead(1, 0, 10).unwrap()[0];
    assert!(d.last_error.starts_with("expired"), "{}", d.last_error);
    assert!(d.last_error.ends_with("last error: HTTP 503"), "{}", d.last_error);
    assert_eq!(d.attempts, 1);
    assert_eq!(store.read_after("acme", 0, 1000).unwrap().len(), 101);
}

#[tokio::test]
async fn sweeping_everything_keeps_numbering_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    {
        let store = open_with(&p, rows_of(2));
        store
            .append((0..3).map(|n| new(msg("acme", "d1", T0, n), &[])).collect())
            .await
            .unwrap();
        let r = store.sweep(T0 + 1, T0 + 1).await.unwrap();
        assert_eq!(r.events_deleted, 3);
        assert_eq!(store.stats().unwrap().rows, 0);
    }
    let store = open(&p);
    assert_eq!(store.head(), 3);
    let a = store
        .append(vec![new(msg("acme", "d1", T0, 0), &[])])
        .await
        .unwrap();
    assert_eq!(
        (a[0].seq, a[0].duplicate),
        (4, false),
        "the swept id is new again"
    );
}

#[tokio::test]
async fn delete_workspace_removes_its_events_and_deliveries_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &path(&dir),
        StoreOptions {
            max_rows_per_step: 4,
            max_row_events: 3,
            ..StoreOptions::default()
        },
    );
    store.open_cursor(1, "gone", None).await.unwrap();
    store.open_cursor(2, "stays", None).await.unwrap();
    let batch = (0..20u64)
        .map(|n| {
            new(
                msg(if n % 2 == 0 { "gone" } else { "stays" }, "d1", T0, n),
                &[1, 2],
            )
        })
        .collect();
    let a = store.append(batch).await.unwrap();
    assert_eq!((a[0].seq, a[1].seq), (1, 11));
    store.record(vec![dead(2, 1, T0), dead(2, 11, T0)]).await.unwrap();
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
    assert!((1..=10).all(|s| store.get(s).unwrap().is_none()));
    assert_eq!(store.read_after("stays", 0, 100).unwrap().len(), 10);
    assert_eq!(
        seqs(&store.owed(1, 0, 100).unwrap(), |p| p.seq),
        (11..=20).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&store.list_dead(2, 0, 100).unwrap(), |d| d.seq), [11]);
    assert_eq!(store.seq_of(&msg("gone", "d1", 0, 0).id).unwrap(), None);
    assert_eq!(store.seq_of(&msg("stays", "d1", 0, 1).id).unwrap(), Some(11));
    assert_eq!(store.delete_workspace("gone").await.unwrap(), Removed::default());
    let st = store.stats().unwrap();
    assert_eq!((st.rows, st.pending, st.dead, st.head), (4, 19, 1, 20));
    // The id may come back; numbering goes on.
    let a = store
        .append(vec![new(msg("gone", "d1", T0, 0), &[])])
        .await
        .unwrap();
    assert_eq!((a[0].seq, a[0].duplicate), (21, false));
}

// ---------------------------------------------------------------------------------------------
// Group commit, opening

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_increasing_numbers_and_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    const TASKS: u64 = 64;
    const EACH: u64 = 20;
    let all = {
        let store = open_with(&p, rows_of(2));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    // Batches of 1..=3 events, in one of four workspaces.
                    let n = 1 + (t + i) % 3;
                    let ws = format!("ws{}", t % 4);
                    let batch = (0..n)
                        .map(|k| new(msg(&ws, &format!("d{t}"), T0 + i, t * 1000 + i * 10 + k), &[t]))
                        .collect();
                    let a = store.append(batch).await.unwrap();
                    mine.extend(a.iter().map(|a| (a.seq, a.id, ws.clone())));
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
    for (seq, id, ws) in &all {
        let e = store.get(*seq).unwrap().unwrap().event.unwrap();
        assert_eq!((&e.id, &e.workspace), (id, ws));
    }
    for w in 0..4 {
        let ws = format!("ws{w}");
        let want: Vec<u64> = {
            let mut v: Vec<u64> = all.iter().filter(|a| a.2 == ws).map(|a| a.0).collect();
            v.sort_unstable();
            v
        };
        let got = store.read_after(&ws, 0, 1000).unwrap();
        assert_eq!(seqs(&got, |s| s.seq), want);
    }
    let owed: usize = (0..TASKS).map(|t| store.owed(t, 0, 1000).unwrap().len()).sum();
    assert_eq!(owed as u64, total);
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
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_file_of_another_layout_version_is_refused() {
    assert_eq!(crate::store::FORMAT_VERSION, 2);
    for version in [1, 99] {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir);
        {
            let store = open(&p);
            let txn = store.raw_db().begin_write().unwrap();
            txn.open_table(crate::store::META)
                .unwrap()
                .insert("format", version)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = EventStore::open(&p, StoreOptions::default()).unwrap_err();
        assert_eq!(err.fault(), Fault::Operator);
        match err {
            EventStoreError::Incompatible { path, reason } => {
                assert_eq!(path, p);
                assert!(reason.contains(&format!("layout version {version}")), "{reason}");
                assert!(reason.contains("reads 2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
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

fn sealed_with(p: &Path, sealer: &Arc<TestSealer>, options: StoreOptions) -> EventStore {
    let options = StoreOptions {
        sealer: Some(sealer.clone()),
        ..options
    };
    EventStore::open(p, options).unwrap()
}

fn sealed(p: &Path, sealer: &Arc<TestSealer>) -> EventStore {
    sealed_with(p, sealer, StoreOptions::default())
}

fn file_contains(p: &Path, needle: &str) -> bool {
    let raw = std::fs::read(p).unwrap();
    raw.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn oks(events: &[Stored]) -> Vec<(u64, bool)> {
    events.iter().map(|s| (s.seq, s.event.is_ok())).collect()
}

#[tokio::test]
async fn sealed_payloads_are_not_on_disk_and_open_only_in_their_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let sealer = Arc::new(TestSealer::default());
    {
        let store = sealed_with(&p, &sealer, rows_of(2));
        store.open_cursor(1, "acme", None).await.unwrap();
        let batch = (0..5).map(|n| new(msg("acme", "d1", T0 + n, n), &[1])).collect();
        store.append(batch).await.unwrap();
        store
            .append(vec![new(msg("evil", "d1", T0, 9), &[])])
            .await
            .unwrap();
        assert_eq!(
            store.get(2).unwrap().unwrap().event.unwrap(),
            msg("acme", "d1", T0 + 1, 1)
        );
        assert_eq!(
            oks(&store.read_after("acme", 0, 10).unwrap()),
            (1..=5).map(|s| (s, true)).collect::<Vec<_>>()
        );
    }
    for n in 0..5 {
        assert!(
            !file_contains(&p, &format!("secret-body-{n:05}")),
            "the bodies are sealed"
        );
    }
    assert!(!file_contains(&p, "UP1"), "ids, devices and upstream ids too");
    assert!(
        file_contains(&p, "acme"),
        "the workspace stays plain (routing, retention)"
    );

    {
        let store = sealed(&p, &sealer);
        // Rows (acme, 2) = 1-2, (acme, 4) = 3-4, (acme, 5) = 5, (evil, 6) = 6. A changed header
        // (bound as associated data) fails the row's events; a row copied under another
        // workspace fails to open there; one copied under another sequence number is refused.
        tamper(&store, "acme", 2, |row| row[20] ^= 1);
        let row5 = {
            let txn = store.raw_db().begin_read().unwrap();
            let log = txn.open_table(crate::store::LOG).unwrap();
            log.get(("acme", 5)).unwrap().unwrap().value().to_vec()
        };
        tamper(&store, "evil", 5, |row| *row = row5.clone());
        tamper(&store, "acme", 6, |row| *row = row5.clone());
    }
    let store = sealed(&p, &sealer);
    for seq in [1, 2] {
        let err = store.get(seq).unwrap().unwrap().event.unwrap_err();
        assert!(
            matches!(err, EventStoreError::Unseal { seq: s, .. } if s == seq),
            "{err:?}"
        );
        assert_eq!(err.fault(), Fault::Storage);
    }
    assert!(store.get(3).unwrap().unwrap().event.is_ok());
    // The page around them is still served.
    assert_eq!(
        oks(&store.read_after("acme", 0, 10).unwrap()),
        [
            (1, false),
            (2, false),
            (3, true),
            (4, true),
            (5, true),
            (6, false)
        ]
    );
    let owed = store.owed(1, 0, 10).unwrap();
    assert_eq!(
        owed.iter().map(|p| (p.seq, p.event.is_ok())).collect::<Vec<_>>(),
        [(1, false), (2, false), (3, true), (4, true), (5, true)]
    );
    let evil = store.read_after("evil", 0, 10).unwrap();
    assert_eq!(oks(&evil), [(5, false), (6, true)]);
    assert!(
        matches!(evil[0].event, Err(EventStoreError::Unseal { seq: 5, .. })),
        "{:?}",
        evil[0].event
    );
    assert_eq!(
        store.get(5).unwrap().unwrap().event.unwrap(),
        msg("acme", "d1", T0 + 4, 4)
    );
    let copied = store.read_after("acme", 5, 10).unwrap();
    assert_eq!(oks(&copied), [(6, false)]);
    assert!(
        matches!(copied[0].event, Err(EventStoreError::Corrupt { .. })),
        "{:?}",
        copied[0].event
    );
    drop(store);

    // Without the sealer, sealed rows are unreadable per event (never shown as plain).
    let plain = open(&p);
    let err = plain.get(3).unwrap().unwrap().event.unwrap_err();
    assert!(matches!(err, EventStoreError::Unseal { seq: 3, .. }), "{err:?}");
    assert!(
        plain
            .read_after("acme", 0, 10)
            .unwrap()
            .iter()
            .all(|s| s.event.is_err())
    );
}

#[tokio::test]
async fn a_shredded_workspace_reads_as_key_gone_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let sealer = Arc::new(TestSealer::default());
    let store = sealed_with(&p, &sealer, rows_of(2));
    store.open_cursor(1, "acme", None).await.unwrap();
    // acme 1-2 (one row), doomed 3-5 (rows 3-4, 5).
    store
        .append(vec![
            new(msg("acme", "d1", T0, 1), &[1]),
            new(msg("doomed", "d1", T0, 2), &[1]),
            new(msg("acme", "d1", T0, 3), &[1]),
            new(msg("doomed", "d1", T0, 4), &[1]),
            new(msg("doomed", "d1", T0, 5), &[]),
        ])
        .await
        .unwrap();
    sealer.shredded.lock().unwrap().insert("doomed".into());
    let due = store.owed_due(1, T0, 10).unwrap();
    assert_eq!(seqs(&due, |p| p.seq), [1, 2, 3, 4]);
    assert!(due[0].event.is_ok() && due[1].event.is_ok());
    for (p, seq) in due[2..].iter().zip([3, 4]) {
        match &p.event {
            Err(EventStoreError::KeyGone { workspace, seq: s }) => {
                assert_eq!((workspace.as_str(), *s), ("doomed", seq))
            }
            other => panic!("{other:?}"),
        }
    }
    let read = store.read_after("doomed", 0, 10).unwrap();
    assert_eq!(seqs(&read, |s| s.seq), [3, 4, 5]);
    for s in &read {
        assert!(
            matches!(&s.event, Err(EventStoreError::KeyGone { seq, .. }) if *seq == s.seq),
            "{:?}",
            s.event
        );
    }
    assert!(matches!(
        store.get(5).unwrap().unwrap().event,
        Err(EventStoreError::KeyGone { seq: 5, .. })
    ));
    // No new events for it; the worker drops its deliveries; the deletion job removes the rest.
    let err = store
        .append(vec![new(msg("doomed", "d1", T0, 6), &[])])
        .await
        .unwrap_err();
    assert!(matches!(err, EventStoreError::Seal { .. }), "{err:?}");
    store.record(vec![dead(1, 3, T0)]).await.unwrap();
    assert!(matches!(
        store.list_dead(1, 0, 10).unwrap()[0].event,
        Err(EventStoreError::KeyGone { seq: 3, .. })
    ));
    assert_eq!(
        store.delete_workspace("doomed").await.unwrap(),
        Removed {
            events: 3,
            deliveries: 1,
            dead: 1
        }
    );
    assert_eq!(seqs(&store.owed(1, 0, 10).unwrap(), |p| p.seq), [1, 2]);
}

#[tokio::test]
async fn a_refused_seal_fails_that_append_alone_and_takes_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Arc::new(TestSealer::default());
    sealer.refused.lock().unwrap().insert("nokey".into());
    let store = sealed_with(&path(&dir), &sealer, rows_of(1));
    let (bad, good) = tokio::join!(
        store.append(vec![
            new(msg("acme", "d1", T0, 1), &[1]),
            new(msg("acme", "d1", T0, 2), &[1]),
            new(msg("nokey", "d1", T0, 3), &[1])
        ]),
        store.append(vec![new(msg("acme", "d1", T0, 4), &[1])]),
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
    assert_eq!(store.stats().unwrap().rows, 1);
    assert_eq!(
        store.seq_of(&msg("acme", "d1", 0, 1).id).unwrap(),
        None,
        "all or nothing"
    );
    // The same events go in once the key is there, as new events.
    sealer.refused.lock().unwrap().clear();
    let a = store
        .append(vec![
            new(msg("acme", "d1", T0, 1), &[]),
            new(msg("nokey", "d1", T0, 3), &[]),
        ])
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        [(2, false), (3, false)]
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
    assert_eq!(oks(&read), [(1, true), (2, true)]);
    assert!(file_contains(&p, "secret-body-00001"));
    assert!(!file_contains(&p, "secret-body-00002"));
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
    // Cursors, outcomes, duplicates and sweeps do not move the head.
    store.open_cursor(1, "acme", None).await.unwrap();
    store
        .record(vec![
            Outcome::Delivered { endpoint: 1, seq: 1 },
            Outcome::Advance {
                endpoint: 1,
                to_seq: 3,
            },
        ])
        .await
        .unwrap();
    store
        .append(vec![new(msg("acme", "d1", T0, 0), &[])])
        .await
        .unwrap();
    store.sweep(T0, T0).await.unwrap();
    assert!(!head.has_changed().unwrap());
    store
        .append(vec![new(msg("acme", "d1", T0, 7), &[])])
        .await
        .unwrap();
    assert!(head.has_changed().unwrap());
    assert_eq!(*head.borrow_and_update(), 4);
}

// ---------------------------------------------------------------------------------------------
// Damaged rows

#[tokio::test]
async fn damaged_rows_read_as_per_event_errors_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(3));
    store.open_cursor(1, "acme", None).await.unwrap();
    // acme 1..=12 in rows 1-3, 4-6, 7-9, 10-12, all owed to endpoint 1; seq 5 dead.
    store
        .append((0..12).map(|n| new(msg("acme", "d1", T0 + n, n), &[1])).collect())
        .await
        .unwrap();
    store.record(vec![dead(1, 5, T0)]).await.unwrap();
    // Body cut short; header claiming other numbers; a row shorter than a header; an
    // unknown format byte.
    tamper(&store, "acme", 3, |row| row.truncate(row.len() - 3));
    tamper(&store, "acme", 6, |row| {
        row[1..9].copy_from_slice(&(u64::MAX - 100).to_be_bytes())
    });
    tamper(&store, "acme", 9, |row| *row = vec![7; 5]);
    tamper(&store, "acme", 12, |row| row[0] = 9);

    let page = store.scan("acme", 0, 100, &all).unwrap();
    assert_eq!(
        oks(&page.events),
        [
            (1, false),
            (2, false),
            (3, false),
            (6, false),
            (9, false),
            (12, false)
        ]
    );
    assert_eq!(page.through, 12);
    for s in &page.events {
        let err = s.event.as_ref().unwrap_err();
        assert!(matches!(err, EventStoreError::Corrupt { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::Storage);
    }
    for seq in 1..=12 {
        let got = store.get(seq).unwrap();
        assert!(got.is_none_or(|s| s.seq == seq && s.event.is_err()), "seq {seq}");
    }
    assert!(store.get(1).unwrap().unwrap().event.is_err());
    let owed = store.owed(1, 0, 100).unwrap();
    assert_eq!(seqs(&owed, |p| p.seq), [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]);
    assert!(owed.iter().all(|p| p.event.is_err()), "{owed:?}");
    assert_eq!(store.owed_due(1, T0 + 100, 100).unwrap().len(), 11);
    let d = store.list_dead(1, 0, 10).unwrap();
    assert_eq!(d.len(), 1);
    assert!(d[0].event.is_err());
    // Only rows that open give ids (the one with a wrong header still does).
    let appended: HashSet<EventId> = (0..12).map(|n| msg("acme", "d1", 0, n).id).collect();
    assert!(
        store
            .recent_ids(EventType::MessageReceived, T0, 100)
            .unwrap()
            .is_subset(&appended)
    );
    let b = store.backlog(1).unwrap();
    assert_eq!((b.cursor, b.owed, b.dead), (Some(0), 11, 1));
    assert!(b.unread >= 4, "{b:?}");
    assert_eq!(store.stats().unwrap().rows, 4);

    // The writer copes too: the worker gives the deliveries up, the sweep and the deletion
    // remove the damaged rows.
    store
        .record(
            (1..=12)
                .filter(|s| *s != 5)
                .map(|s| dead(1, s, T0))
                .chain([Outcome::Advance {
                    endpoint: 1,
                    to_seq: 12,
                }])
                .collect(),
        )
        .await
        .unwrap();
    store
        .append(vec![new(msg("acme", "d1", T0 + DAY, 99), &[])])
        .await
        .unwrap();
    let r = store.sweep(T0 + 6, T0 + 6).await.unwrap();
    assert_eq!(
        (r.dead_removed, r.events_deleted),
        (12, 6),
        "rows 1-3 and 4-6 are older"
    );
    // Rows whose header does not read: the batch index says which numbers go with them.
    let removed = store.delete_workspace("acme").await.unwrap();
    assert_eq!(removed.events, 7, "rows 7-9, 10-12 and the new one");
    assert!(store.read_after("acme", 0, 100).unwrap().is_empty());
    assert_eq!(store.stats().unwrap().rows, 0);
}

#[tokio::test]
async fn deleting_a_workspace_with_damaged_row_headers_neither_panics_nor_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&path(&dir), rows_of(3));
    store.open_cursor(1, "acme", None).await.unwrap();
    store
        .append((0..6).map(|n| new(msg("acme", "d1", T0 + n, n), &[1])).collect())
        .await
        .unwrap();
    store
        .append(vec![new(msg("other", "d1", T0, 0), &[1])])
        .await
        .unwrap();
    tamper(&store, "acme", 3, |row| {
        row[1..9].copy_from_slice(&(u64::MAX - 100).to_be_bytes())
    });
    tamper(&store, "acme", 6, |row| {
        row[1..9].copy_from_slice(&1u64.to_be_bytes())
    });
    let removed = store.delete_workspace("acme").await.unwrap();
    assert_eq!(removed.events, 6);
    assert!(store.read_after("acme", 0, 100).unwrap().is_empty());
    assert_eq!(
        seqs(&store.owed(1, 0, 100).unwrap(), |p| p.seq),
        [7],
        "other's delivery stays"
    );
    assert_eq!(seqs(&store.read_after("other", 0, 100).unwrap(), |s| s.seq), [7]);
    let a = store
        .append(vec![new(msg("acme", "d1", T0, 0), &[])])
        .await
        .unwrap();
    assert_eq!((a[0].seq, a[0].duplicate), (8, false));
}

// ---------------------------------------------------------------------------------------------
// Model

/// A pseudo-random history of appends (three workspaces, three types, repeated ids, varying
/// row sizes, reopens) against a model of the log: what each append answers, the head, every
/// event by `get`, each workspace by `read_after` and by a filtered `scan`.
#[tokio::test]
async fn appends_match_a_model_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut store = open_with(&p, rows_of(3));
    // seq -> event; deduplicated id -> seq.
    let mut log: BTreeMap<u64, Event> = BTreeMap::new();
    let mut ids: BTreeMap<EventId, u64> = BTreeMap::new();
    let mut head = 0u64;
    const WS: [&str; 3] = ["a", "b", "c"];
    for step in 0..120u64 {
        if step % 25 == 24 {
            drop(store);
            store = open_with(&p, rows_of(1 + (rng.next() % 5) as usize));
            assert_eq!(store.head(), head);
        }
        let n = 1 + rng.next() % 6;
        let batch: Vec<Event> = (0..n)
            .map(|_| {
                let ws = WS[(rng.next() % 3) as usize];
                let dev = if rng.next() & 1 == 0 { "d1" } else { "d2" };
                let k = rng.next() % 40;
                let at = T0 + step * 1000 + rng.next() % 1000;
                match rng.next() % 3 {
                    0 => msg(ws, dev, at, k),
                    1 => status(ws, dev, at, k),
                    _ => state(ws, dev, at, k),
                }
            })
            .collect();
        // The model: each workspace's events in batch order, workspaces in first-seen order;
        // a known id, or one earlier in the batch, is a duplicate (not for statuses).
        let mut want: Vec<Option<Appended>> = vec![None; batch.len()];
        let mut order: Vec<&str> = Vec::new();
        for e in &batch {
            if !order.contains(&e.workspace.as_str()) {
                order.push(&e.workspace);
            }
        }
        for ws in order {
            for (i, e) in batch.iter().enumerate().filter(|(_, e)| e.workspace == ws) {
                if deduplicated(e.kind())
                    && let Some(&seq) = ids.get(&e.id)
                {
                    want[i] = Some(Appended {
                        seq,
                        id: e.id,
                        duplicate: true,
                    });
                    continue;
                }
                head += 1;
                if deduplicated(e.kind()) {
                    ids.insert(e.id, head);
                }
                log.insert(head, e.clone());
                want[i] = Some(Appended {
                    seq: head,
                    id: e.id,
                    duplicate: false,
                });
            }
        }
        let got = store
            .append(batch.iter().map(|e| new(e.clone(), &[])).collect())
            .await
            .unwrap();
        let want: Vec<Appended> = want.into_iter().map(Option::unwrap).collect();
        assert_eq!(got, want, "step {step}");
        assert_eq!(store.head(), head);
        if step % 10 == 9 {
            for (seq, e) in &log {
                assert_eq!(
                    store.get(*seq).unwrap().unwrap().event.as_ref().unwrap(),
                    e,
                    "seq {seq}"
                );
            }
            for ws in WS {
                let mine: Vec<(u64, &Event)> = log
                    .iter()
                    .filter(|(_, e)| e.workspace == ws)
                    .map(|(s, e)| (*s, e))
                    .collect();
                let mut got = Vec::new();
                let mut after = 0;
                loop {
                    let page = store.read_after(ws, after, 7).unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    got.extend(page.into_iter().map(|s| (s.seq, s.event.unwrap())));
                }
                assert_eq!(got.iter().map(|(s, e)| (*s, e)).collect::<Vec<_>>(), mine, "{ws}");
                let states = |t: EventType, d: Option<&str>| t == EventType::DeviceState && d == Some("d2");
                let page = store.scan(ws, 0, 1000, &states).unwrap();
                let want: Vec<u64> = mine
                    .iter()
                    .filter(|(_, e)| e.kind() == EventType::DeviceState && e.device.as_deref() == Some("d2"))
                    .map(|(s, _)| *s)
                    .collect();
                assert_eq!(seqs(&page.events, |s| s.seq), want, "{ws}");
            }
            for (id, seq) in &ids {
                assert_eq!(store.seq_of(id).unwrap(), Some(*seq));
            }
        }
    }
    assert_eq!(store.stats().unwrap().head, head);
}

#[tokio::test]
async fn a_replayed_delivery_keeps_its_device_also_in_a_sealed_store() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(&dir);
    let sealer = Arc::new(TestSealer::default());
    let store = sealed_with(&p, &sealer, rows_of(2));
    store.open_cursor(7, "acme", Some(0)).await.unwrap();
    let a = store
        .append(vec![
            new(msg("acme", "d1", T0, 1), &[]),
            new(msg("acme", "d2", T0 + 1, 2), &[]),
            new(msg("acme", "d3", T0 + 2, 3), &[]),
        ])
        .await
        .unwrap();
    for x in &a {
        store.record(vec![dead(7, x.seq, T0 + 10)]).await.unwrap();
    }
    assert_eq!(store.replay_dead(7, DeadSelector::All, T0 + 20).await.unwrap(), 3);
    let owed = store.owed(7, 0, 10).unwrap();
    assert_eq!(
        owed.iter().map(|p| p.device.as_deref()).collect::<Vec<_>>(),
        [Some("d1"), Some("d2"), Some("d3")],
        "each replayed delivery is back in its own device's order"
    );
    assert!(owed.iter().all(|p| p.attempts == 0 && p.due_ms == T0 + 20));
}
