//! The durable event store: one redb file holding every event of the node, the webhook
//! deliveries still owed for them, and the deliveries given up on.
//!
//! # Tables
//!
//! | table          | key                         | value                  | purpose |
//! |----------------|-----------------------------|------------------------|---------|
//! | `meta`         | name (`format`, `next_seq`) | `u64`                  | layout version (1); next sequence number, so numbers are never reused after a sweep |
//! | `events`       | `seq: u64`                  | event row              | the journal: plain header + payload, sealed or plain (see `codec`) |
//! | `by_id`        | event id (16 bytes)         | `seq`                  | dedupe: appending a known id returns its `seq` and writes nothing |
//! | `by_workspace` | `(workspace, seq)`          | `()`                   | [`EventStore::read_after`] (subscriber resume) and [`EventStore::delete_workspace`] |
//! | `deliveries`   | `(endpoint, seq)`           | attempts, due, since, error | a delivery still owed; [`EventStore::pending`] in `seq` order; `since` (event or replay time) is its age for expiry |
//! | `due`          | `(endpoint, due_ms, seq)`   | `()`                   | index of `deliveries` by due time: [`EventStore::next_due`], [`EventStore::due`] |
//! | `dead`         | `(endpoint, seq)`           | attempts, died, error  | deliveries given up on, for listing and replay |
//! | `refs`         | `(seq, endpoint)`           | 0 pending / 1 dead     | which endpoints still hold an event: [`EventStore::sweep`] deletes only unreferenced events |
//!
//! Every write goes through one writer thread that merges whatever callers queued into one
//! redb write transaction committed with `Durability::Immediate` (fsync) before any caller is
//! answered (group commit). An event, its index rows and its delivery rows are written in the
//! same transaction, so a crash never leaves an event without its deliveries or the reverse.
//! Sequence numbers are assigned by the writer in commit order, node-wide, without gaps
//! between successful appends: a reader that has seen `seq` n has seen everything below it.
//!
//! Payloads are sealed on the writer thread (the sequence number they are bound to is only
//! known there); with the vault's ChaCha20-Poly1305 that is about a microsecond per event.
//!
//! Reads run on the caller's thread in their own snapshot; rows that cannot be read (shredded
//! key, tampering) come back as per-row errors, never as a failed page.

use std::collections::BinaryHeap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{mpsc, oneshot, watch};
use waping_journal::{OpenFailure, RecordSealer};

use crate::codec::{self, FORMAT_PLAIN, FORMAT_SEALED};
use crate::error::{EventStoreError, StorageContext};
use crate::model::{Event, EventData, EventId};
use crate::writer::{self, Prepared, Reply, Request, Work};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(crate) const BY_ID: TableDefinition<&[u8; 16], u64> = TableDefinition::new("by_id");
pub(crate) const BY_WORKSPACE: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_workspace");
pub(crate) const DELIVERIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("deliveries");
pub(crate) const DUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("due");
pub(crate) const DEAD: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dead");
pub(crate) const REFS: TableDefinition<(u64, u64), u8> = TableDefinition::new("refs");

/// `refs` value of an endpoint that still owes a delivery of the event.
pub(crate) const REF_PENDING: u8 = 0;
/// `refs` value of an endpoint holding the event as a dead delivery.
pub(crate) const REF_DEAD: u8 = 1;

/// Layout version in `meta`; a file with another one is refused.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Options of [`EventStore::open`]. `Default` gives the values documented per field.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Seals every event payload with the workspace's data key (the gateway passes its
    /// `VaultSealer`). Default `None`: payloads are stored as plain JSON (tests, or nodes
    /// without encryption at rest). A store opened without a sealer cannot read sealed rows
    /// ([`EventStoreError::Unseal`] per event); one opened with a sealer still reads plain
    /// rows written before.
    pub sealer: Option<Arc<dyn RecordSealer>>,
    /// Page cache of the engine. Default 32 MiB: reads are mostly of recent events, which
    /// the cache holds; the engine's own default (1 GiB) is sized for a database alone on a
    /// machine.
    pub cache_bytes: usize,
    /// Write requests queued for the writer before callers wait for room. Default 4096;
    /// must be > 0.
    pub queue_capacity: usize,
    /// Most requests merged into one group commit. Default 1024; must be > 0. Bounds the
    /// latency of the first caller of a group.
    pub max_group_requests: usize,
    /// A group stops taking requests once it holds this many bytes. Default 8 MiB.
    pub max_group_bytes: usize,
    /// Largest `data` of one event as JSON. Default 1 MiB (a 64 KiB text needs at most six
    /// times that escaped; larger payloads belong in media storage).
    pub max_event_bytes: usize,
    /// Most events in one [`EventStore::append`]. Default 10 000; must be > 0.
    pub max_batch_events: usize,
    /// Most endpoints one event may be owed to. Default 1024 (a workspace with more webhook
    /// endpoints than that is misconfigured).
    pub max_endpoints_per_event: usize,
    /// Most rows one read returns, whatever `limit` asks. Default 1000; must be > 0.
    pub max_page: usize,
    /// Most rows one maintenance step ([`EventStore::sweep`], [`EventStore::delete_workspace`],
    /// [`EventStore::remove_endpoint`], [`EventStore::replay_dead`]) touches in one
    /// transaction; a bigger job takes several, so appends keep flowing in between. Default
    /// 5000; must be > 0.
    pub max_rows_per_step: usize,
    /// Hard limit on how long a delivery may stay pending: [`EventStore::sweep`] moves
    /// deliveries pending for longer (since their event, or since a replay) to dead
    /// ("expired"), so a stuck endpoint cannot keep events on disk forever. Default 2 days
    /// (the webhook retry schedule spans about 1.5 days).
    pub max_age_ms: u64,
    /// Store the allocator state with every commit so that opening after a crash needs no
    /// full scan of the file. Costs a second fsync per group commit. Default `false`.
    pub quick_repair: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sealer: None,
            cache_bytes: 32 << 20,
            queue_capacity: 4096,
            max_group_requests: 1024,
            max_group_bytes: 8 << 20,
            max_event_bytes: 1 << 20,
            max_batch_events: 10_000,
            max_endpoints_per_event: 1024,
            max_page: 1000,
            max_rows_per_step: 5000,
            max_age_ms: 2 * 24 * 3600 * 1000,
            quick_repair: false,
        }
    }
}

/// One event to append and the webhook endpoints that must receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// Endpoints (ids chosen by the gateway) whose filters match it; a delivery row is
    /// written for each, due at the event's time. Duplicates are ignored.
    pub endpoints: Vec<u64>,
}

/// Result of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's sequence number (the existing one for a duplicate).
    pub seq: u64,
    /// The event's id.
    pub id: EventId,
    /// The id was already stored: nothing was written for this event (its deliveries
    /// included).
    pub duplicate: bool,
}

/// An event read back with its sequence number.
#[derive(Debug)]
pub struct Stored {
    /// Sequence number.
    pub seq: u64,
    /// The event, or why this one cannot be read ([`EventStoreError::KeyGone`] after its
    /// workspace was crypto-shredded, [`EventStoreError::Unseal`], [`EventStoreError::Corrupt`]).
    pub event: Result<Event, EventStoreError>,
}

/// A delivery still owed to an endpoint.
#[derive(Debug)]
pub struct Pending {
    /// Sequence number of the event.
    pub seq: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (unix ms).
    pub due_ms: u64,
    /// The last attempt's error (empty before the first).
    pub last_error: String,
    /// The event, or why it cannot be read (see [`Stored::event`]).
    pub event: Result<Event, EventStoreError>,
}

/// A delivery given up on.
#[derive(Debug)]
pub struct DeadEntry {
    /// Sequence number of the event.
    pub seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up (unix ms).
    pub at_ms: u64,
    /// The last attempt's error, or why it expired.
    pub last_error: String,
    /// The event, or why it cannot be read (see [`Stored::event`]).
    pub event: Result<Event, EventStoreError>,
}

/// What happened to one delivery attempt, for [`EventStore::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: the delivery row is deleted.
    Delivered {
        /// Endpoint.
        endpoint: u64,
        /// Event.
        seq: u64,
    },
    /// Failed; try again at `due_ms`.
    Retry {
        /// Endpoint.
        endpoint: u64,
        /// Event.
        seq: u64,
        /// Attempts made so far, this one included.
        attempts: u32,
        /// When to try next (unix ms).
        due_ms: u64,
        /// Why it failed; kept cut to [`crate::MAX_ERROR_BYTES`].
        error: String,
    },
    /// Given up: the delivery moves to the dead rows.
    Dead {
        /// Endpoint.
        endpoint: u64,
        /// Event.
        seq: u64,
        /// Attempts made, this one included.
        attempts: u32,
        /// The last error; kept cut to [`crate::MAX_ERROR_BYTES`].
        error: String,
        /// When (unix ms).
        at_ms: u64,
    },
}

/// What [`EventStore::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordReport {
    /// Outcomes applied.
    pub applied: usize,
    /// Outcomes for rows that are not pending (already recorded, endpoint removed, expired):
    /// ignored, so recording twice after a crash is harmless.
    pub ignored: usize,
}

/// Which dead deliveries [`EventStore::replay_dead`] moves back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadSelector {
    /// The dead delivery of this event.
    One(u64),
    /// Every dead delivery of the endpoint.
    All,
}

/// Rows removed by [`EventStore::remove_endpoint`] or [`EventStore::delete_workspace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removed {
    /// Events.
    pub events: u64,
    /// Pending deliveries.
    pub deliveries: u64,
    /// Dead deliveries.
    pub dead: u64,
}

/// What [`EventStore::sweep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Pending deliveries older than [`StoreOptions::max_age_ms`] moved to dead.
    pub expired: u64,
    /// Dead deliveries older than the cutoff deleted.
    pub dead_removed: u64,
    /// Events deleted (older than the cutoff, nothing left referring to them).
    pub events_deleted: u64,
    /// Rows examined by both walks (referenced events, then old events).
    pub scanned: u64,
}

/// Sizes of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Highest sequence number assigned (0 before the first event).
    pub head: u64,
    /// Events stored.
    pub events: u64,
    /// Deliveries pending, all endpoints.
    pub pending: u64,
    /// Dead deliveries, all endpoints.
    pub dead: u64,
    /// Size of the database file in bytes.
    pub file_bytes: u64,
    /// Durable transactions committed by the writer since open (each one fsync).
    pub commits: u64,
    /// Write requests made durable since open (appends, records, maintenance steps).
    pub requests: u64,
    /// Events appended since open (duplicates not counted).
    pub appended: u64,
}

/// Counters shared between the writer and [`EventStore::stats`].
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) appended: AtomicU64,
    /// Highest durable sequence number.
    pub(crate) head: AtomicU64,
    /// The same, for waiters ([`EventStore::watch_head`]).
    pub(crate) head_tx: watch::Sender<u64>,
}

/// The node's event store. Cheap to clone; the file is closed when the last clone is dropped
/// (after the writer has committed what was queued).
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    opts: StoreOptions,
    path: PathBuf,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore")
            .field("path", &self.inner.path)
            .field("sealed", &self.inner.opts.sealer.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued and exit; joining makes the
        // file lock's release happen before the last handle's drop returns.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl EventStore {
    /// Opens (creating if absent, mode 0600, with missing parent directories) the event store
    /// at `path`, e.g. `state/events.redb`, and starts its writer thread.
    ///
    /// The file is locked: a second open, in this process or another, fails with
    /// [`EventStoreError::Locked`]. After a crash the engine repairs the file first (a full
    /// scan unless [`StoreOptions::quick_repair`] was on).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<EventStore, EventStoreError> {
        let path = path.as_ref().to_owned();
        for (name, v) in [
            ("queue_capacity", options.queue_capacity),
            ("max_group_requests", options.max_group_requests),
            ("max_batch_events", options.max_batch_events),
            ("max_page", options.max_page),
            ("max_rows_per_step", options.max_rows_per_step),
        ] {
            if v == 0 {
                return Err(EventStoreError::Config(format!("{name} must be > 0")));
            }
        }
        create_private(&path)?;
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_bytes);
        let db = builder
            .create(&path)
            .map_err(|e| EventStoreError::from_open(&path, e))?;
        let next_seq = init(&db).map_err(|e| match e {
            EventStoreError::Incompatible { reason, .. } => EventStoreError::Incompatible {
                path: path.clone(),
                reason,
            },
            other => other,
        })?;

        let db = Arc::new(db);
        let counters = Arc::new(Counters {
            commits: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            head: AtomicU64::new(next_seq - 1),
            head_tx: watch::Sender::new(next_seq - 1),
        });
        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let writer = {
            let w = writer::Writer {
                db: db.clone(),
                sealer: options.sealer.clone(),
                counters: counters.clone(),
                max_group_requests: options.max_group_requests,
                max_group_bytes: options.max_group_bytes,
                max_rows: options.max_rows_per_step,
                quick_repair: options.quick_repair,
                next_seq,
            };
            std::thread::Builder::new()
                .name("waping-events-writer".into())
                .spawn(move || w.run(rx))
                .map_err(|e| EventStoreError::from_io("spawn writer", e))?
        };
        Ok(EventStore {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                writer: Some(writer),
                counters,
                opts: options,
                path,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends `batch` atomically (all or nothing) and resolves once it is durable (fsync'd).
    ///
    /// Each event gets the next sequence number, in batch order; concurrent callers' batches
    /// share one commit (group commit). An event whose id is already stored is not written
    /// again: its [`Appended`] carries the existing `seq` and `duplicate: true` (the dedupe
    /// window is the retention: an id swept away is new again). The delivery rows of
    /// [`NewEvent::endpoints`] are written in the same transaction as their event.
    ///
    /// Fails without writing anything on an invalid or oversized event
    /// ([`EventStoreError::Invalid`], [`EventStoreError::TooLarge`]) or when sealing fails
    /// ([`EventStoreError::Seal`]). If the future is dropped after the batch was queued, the
    /// append may still happen.
    pub async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, EventStoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (prepared, bytes) = self.prepare(batch)?;
        match self.inner.submit(Work::Append(prepared), bytes).await? {
            Reply::Appended(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    fn prepare(&self, batch: Vec<NewEvent>) -> Result<(Vec<Prepared>, usize), EventStoreError> {
        let opts = &self.inner.opts;
        if batch.len() > opts.max_batch_events {
            return Err(EventStoreError::TooLarge {
                what: "batch",
                size: batch.len(),
                max: opts.max_batch_events,
            });
        }
        let format = if opts.sealer.is_some() {
            FORMAT_SEALED
        } else {
            FORMAT_PLAIN
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut bytes = 0;
        for (index, NewEvent { event, mut endpoints }) in batch.into_iter().enumerate() {
            event
                .validate()
                .map_err(|source| EventStoreError::Invalid { index, source })?;
            endpoints.sort_unstable();
            endpoints.dedup();
            if endpoints.len() > opts.max_endpoints_per_event {
                return Err(EventStoreError::TooLarge {
                    what: "endpoints",
                    size: endpoints.len(),
                    max: opts.max_endpoints_per_event,
                });
            }
            let payload = event.data.to_json_bytes();
            if payload.len() > opts.max_event_bytes {
                return Err(EventStoreError::TooLarge {
                    what: "event data",
                    size: payload.len(),
                    max: opts.max_event_bytes,
                });
            }
            let header = codec::encode_header(format, &event);
            bytes += header.len() + payload.len() + 40 * endpoints.len();
            out.push(Prepared {
                id: event.id,
                workspace: event.workspace,
                at_ms: event.at_ms,
                header,
                payload,
                endpoints,
            });
        }
        Ok((out, bytes))
    }

    /// Records delivery outcomes; resolves once durable. Outcomes for rows that are not
    /// pending are ignored (idempotent), so a worker may record again after a crash.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<RecordReport, EventStoreError> {
        if outcomes.is_empty() {
            return Ok(RecordReport::default());
        }
        let bytes = outcomes.len() * 64;
        match self.inner.submit(Work::Record(outcomes), bytes).await? {
            Reply::Recorded(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops every pending and dead delivery of `endpoint` (the endpoint was deleted); the
    /// events stay for other endpoints and subscribers until swept. Resolves once durable;
    /// takes one transaction per [`StoreOptions::max_rows_per_step`] rows.
    pub async fn remove_endpoint(&self, endpoint: u64) -> Result<Removed, EventStoreError> {
        let mut total = Removed::default();
        loop {
            match self.inner.submit(Work::RemoveEndpoint { endpoint }, 16).await? {
                Reply::Removed { removed, more } => {
                    total.deliveries += removed.deliveries;
                    total.dead += removed.dead;
                    if !more {
                        return Ok(total);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Moves dead deliveries of `endpoint` back to pending: attempts 0, due at `now_ms`.
    /// Returns how many moved (0 if `which` names no dead delivery). Resolves once durable.
    pub async fn replay_dead(
        &self,
        endpoint: u64,
        which: DeadSelector,
        now_ms: u64,
    ) -> Result<u64, EventStoreError> {
        let mut total = 0;
        loop {
            let work = Work::Replay {
                endpoint,
                which,
                now_ms,
            };
            match self.inner.submit(work, 16).await? {
                Reply::Replayed { count, more } => {
                    total += count;
                    if !more {
                        return Ok(total);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Removes every event of `workspace` with its index rows and all its deliveries, pending
    /// and dead (workspace deletion). Resolves once durable; takes one transaction per
    /// [`StoreOptions::max_rows_per_step`] events. Events appended for the workspace while
    /// this runs may survive it: stop producing first.
    pub async fn delete_workspace(&self, workspace: &str) -> Result<Removed, EventStoreError> {
        let mut total = Removed::default();
        loop {
            let work = Work::DeleteWorkspace {
                workspace: workspace.to_owned(),
            };
            match self.inner.submit(work, 16).await? {
                Reply::Removed { removed, more } => {
                    total.events += removed.events;
                    total.deliveries += removed.deliveries;
                    total.dead += removed.dead;
                    if !more {
                        return Ok(total);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Bounds the disk; returns what it did. Three rules, `now_ms` and `older_than_ms` given
    /// by the caller (the retention cutoff, e.g. `now_ms - retention`):
    ///
    /// - a pending delivery that started (event time, or replay time) before
    ///   `now_ms - max_age_ms` expires: it moves to dead with error `expired: …`, time `now_ms`;
    /// - a dead delivery that died before `older_than_ms` is deleted;
    /// - an event older than `older_than_ms` (by its `timestamp`) that no pending or dead
    ///   delivery refers to any more is deleted, with its index rows.
    ///
    /// Two walks in `seq` order, each stopping at the first event newer than its cutoff (an
    /// event's timestamp is when the gateway made it, so timestamps follow `seq` up to the
    /// spread of one group commit): one over the events still referred to by deliveries
    /// (expiry and dead rows), one over the old events (deletion). What a sweep keeps is
    /// walked again by the next one, so its cost is proportional to the deleted events plus
    /// the deliveries outstanding on old events. One transaction per
    /// [`StoreOptions::max_rows_per_step`] rows; appends keep flowing in between.
    pub async fn sweep(&self, older_than_ms: u64, now_ms: u64) -> Result<SweepReport, EventStoreError> {
        let expire_before_ms = now_ms.saturating_sub(self.inner.opts.max_age_ms);
        let mut total = SweepReport::default();
        for refs in [true, false] {
            let mut from_seq = 0;
            loop {
                let work = Work::Sweep {
                    refs,
                    from_seq,
                    older_than_ms,
                    expire_before_ms,
                    now_ms,
                };
                match self.inner.submit(work, 16).await? {
                    Reply::Swept {
                        report,
                        next_seq,
                        more,
                    } => {
                        total.expired += report.expired;
                        total.dead_removed += report.dead_removed;
                        total.events_deleted += report.events_deleted;
                        total.scanned += report.scanned;
                        if !more {
                            break;
                        }
                        from_seq = next_seq;
                    }
                    other => return Err(unexpected(&other)),
                }
            }
        }
        Ok(total)
    }

    /// Highest sequence number made durable (0 before the first event). Every event up to it
    /// is readable (unless swept or deleted).
    pub fn head(&self) -> u64 {
        self.inner.counters.head.load(Ordering::Acquire)
    }

    /// A receiver of [`EventStore::head`] that changes whenever appended events become durable:
    /// what live subscribers and delivery workers wait on instead of polling (then they read
    /// with [`EventStore::read_after`] or [`EventStore::due`]). Outcomes, replays and sweeps do
    /// not change it.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.counters.head_tx.subscribe()
    }

    /// The event with sequence number `seq`, if stored.
    pub fn get(&self, seq: u64) -> Result<Option<Stored>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let events = txn.open_table(EVENTS).ctx("read")?;
        let row = events.get(seq).ctx("read")?;
        Ok(row.map(|row| Stored {
            seq,
            event: self.decode(seq, row.value()),
        }))
    }

    /// The sequence number of the event with this id, if stored.
    pub fn seq_of(&self, id: &EventId) -> Result<Option<u64>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let by_id = txn.open_table(BY_ID).ctx("read")?;
        Ok(by_id.get(id.as_bytes()).ctx("read")?.map(|g| g.value()))
    }

    /// Events of `workspace` with `seq > after_seq`, in `seq` order, at most `limit` (clamped
    /// to 1..=[`StoreOptions::max_page`]): how a subscriber resumes from its cursor. An empty
    /// page means it is caught up; a cursor older than the retention resumes at the oldest
    /// event still stored.
    pub fn read_after(
        &self,
        workspace: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, EventStoreError> {
        let limit = self.clamp(limit);
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let txn = self.inner.begin_read()?;
        let index = txn.open_table(BY_WORKSPACE).ctx("read")?;
        let events = txn.open_table(EVENTS).ctx("read")?;
        let mut out = Vec::new();
        for item in index
            .range((workspace, start)..=(workspace, u64::MAX))
            .ctx("read")?
        {
            let (k, _) = item.ctx("read")?;
            let seq = k.value().1;
            out.push(Stored {
                seq,
                event: self.load(&events, seq)?,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Deliveries of `endpoint` that are due (`due_ms <= now_ms`), in `seq` order, at most
    /// `limit` (clamped to 1..=[`StoreOptions::max_page`]).
    ///
    /// Cost: walks the endpoint's deliveries in `seq` order and its due index side by side
    /// and stops when either walk has the answer, so it is proportional to the smaller of
    /// "rows up to the `limit`-th due one" and "rows due".
    pub fn due(&self, endpoint: u64, now_ms: u64, limit: usize) -> Result<Vec<Pending>, EventStoreError> {
        let limit = self.clamp(limit);
        let txn = self.inner.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES).ctx("read")?;
        let due = txn.open_table(DUE).ctx("read")?;
        let events = txn.open_table(EVENTS).ctx("read")?;
        let mut by_seq = deliveries
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .ctx("read")?;
        let mut by_due = due
            .range((endpoint, 0, 0)..=(endpoint, now_ms, u64::MAX))
            .ctx("read")?;
        let mut found = Vec::new();
        // The `limit` smallest seqs among the due rows seen (a max-heap evicts the largest).
        let mut smallest = BinaryHeap::new();
        let chosen = loop {
            match by_seq.next() {
                None => break found,
                Some(item) => {
                    let (k, v) = item.ctx("read")?;
                    // An undecodable row is listed, so that the caller sees its error.
                    if codec::decode_pending(v.value()).map_or(true, |s| s.due_ms <= now_ms) {
                        found.push(k.value().1);
                        if found.len() >= limit {
                            break found;
                        }
                    }
                }
            }
            match by_due.next() {
                None => {
                    let mut v = smallest.into_vec();
                    v.sort_unstable();
                    break v;
                }
                Some(item) => {
                    let (k, _) = item.ctx("read")?;
                    smallest.push(k.value().2);
                    if smallest.len() > limit {
                        smallest.pop();
                    }
                }
            }
        };
        chosen
            .into_iter()
            .map(|seq| self.pending_row(&deliveries, &events, endpoint, seq))
            .filter_map(Result::transpose)
            .collect()
    }

    /// Deliveries of `endpoint` with `seq > after_seq`, due or not, in `seq` order, at most
    /// `limit` (clamped to 1..=[`StoreOptions::max_page`]). Ordered delivery needs to see a
    /// predecessor that is waiting for its retry.
    pub fn pending(
        &self,
        endpoint: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, EventStoreError> {
        let limit = self.clamp(limit);
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let txn = self.inner.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES).ctx("read")?;
        let events = txn.open_table(EVENTS).ctx("read")?;
        let mut seqs = Vec::new();
        for item in deliveries
            .range((endpoint, start)..=(endpoint, u64::MAX))
            .ctx("read")?
        {
            let (k, _) = item.ctx("read")?;
            seqs.push(k.value().1);
            if seqs.len() >= limit {
                break;
            }
        }
        seqs.into_iter()
            .map(|seq| self.pending_row(&deliveries, &events, endpoint, seq))
            .filter_map(Result::transpose)
            .collect()
    }

    /// When the earliest pending delivery of `endpoint` is due (unix ms), or `None` when
    /// nothing is pending: how long a worker may sleep.
    pub fn next_due(&self, endpoint: u64) -> Result<Option<u64>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let due = txn.open_table(DUE).ctx("read")?;
        let mut range = due
            .range((endpoint, 0, 0)..=(endpoint, u64::MAX, u64::MAX))
            .ctx("read")?;
        match range.next() {
            None => Ok(None),
            Some(item) => Ok(Some(item.ctx("read")?.0.value().1)),
        }
    }

    /// Dead deliveries of `endpoint` with `seq > after_seq`, in `seq` order, at most `limit`
    /// (clamped to 1..=[`StoreOptions::max_page`]).
    pub fn list_dead(
        &self,
        endpoint: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadEntry>, EventStoreError> {
        let limit = self.clamp(limit);
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let txn = self.inner.begin_read()?;
        let dead = txn.open_table(DEAD).ctx("read")?;
        let events = txn.open_table(EVENTS).ctx("read")?;
        let mut out = Vec::new();
        for item in dead.range((endpoint, start)..=(endpoint, u64::MAX)).ctx("read")? {
            let (k, v) = item.ctx("read")?;
            let seq = k.value().1;
            let entry = match codec::decode_dead(v.value()) {
                Ok(s) => DeadEntry {
                    seq,
                    attempts: s.attempts,
                    at_ms: s.at_ms,
                    last_error: s.error,
                    event: self.load(&events, seq)?,
                },
                Err(reason) => DeadEntry {
                    seq,
                    attempts: 0,
                    at_ms: 0,
                    last_error: String::new(),
                    event: Err(EventStoreError::corrupt(format!(
                        "dead delivery {endpoint}/{seq}: {reason}"
                    ))),
                },
            };
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Sizes and writer counters.
    pub fn stats(&self) -> Result<StoreStats, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let len = |def| -> Result<u64, EventStoreError> {
            let t: ReadOnlyTable<(u64, u64), &[u8]> = txn.open_table(def).ctx("stats")?;
            t.len().ctx("stats")
        };
        let events = txn.open_table(EVENTS).ctx("stats")?.len().ctx("stats")?;
        let pending = len(DELIVERIES)?;
        let dead = len(DEAD)?;
        let file_bytes = std::fs::metadata(&self.inner.path)
            .map_err(|e| EventStoreError::from_io("stats", e))?
            .len();
        let c = &self.inner.counters;
        Ok(StoreStats {
            head: c.head.load(Ordering::Acquire),
            events,
            pending,
            dead,
            file_bytes,
            commits: c.commits.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            appended: c.appended.load(Ordering::Relaxed),
        })
    }

    fn clamp(&self, limit: usize) -> usize {
        limit.clamp(1, self.inner.opts.max_page)
    }

    fn pending_row(
        &self,
        deliveries: &ReadOnlyTable<(u64, u64), &[u8]>,
        events: &ReadOnlyTable<u64, &[u8]>,
        endpoint: u64,
        seq: u64,
    ) -> Result<Option<Pending>, EventStoreError> {
        let Some(v) = deliveries.get((endpoint, seq)).ctx("read")? else {
            return Ok(None);
        };
        Ok(Some(match codec::decode_pending(v.value()) {
            Ok(s) => Pending {
                seq,
                attempts: s.attempts,
                due_ms: s.due_ms,
                last_error: s.error,
                event: self.load(events, seq)?,
            },
            Err(reason) => Pending {
                seq,
                attempts: 0,
                due_ms: 0,
                last_error: String::new(),
                event: Err(EventStoreError::corrupt(format!(
                    "delivery {endpoint}/{seq}: {reason}"
                ))),
            },
        }))
    }

    /// The event at `seq` (outer error: the engine failed; inner: this event is unreadable).
    fn load(
        &self,
        events: &ReadOnlyTable<u64, &[u8]>,
        seq: u64,
    ) -> Result<Result<Event, EventStoreError>, EventStoreError> {
        Ok(match events.get(seq).ctx("read")? {
            Some(row) => self.decode(seq, row.value()),
            None => Err(EventStoreError::corrupt(format!(
                "event {seq} is referenced but missing"
            ))),
        })
    }

    fn decode(&self, seq: u64, row: &[u8]) -> Result<Event, EventStoreError> {
        decode_event(seq, row, self.inner.opts.sealer.as_deref())
    }

    #[cfg(test)]
    pub(crate) fn raw_db(&self) -> &Database {
        &self.inner.db
    }
}

/// Reads an event row back into an [`Event`], opening a sealed payload.
pub(crate) fn decode_event(
    seq: u64,
    row: &[u8],
    sealer: Option<&dyn RecordSealer>,
) -> Result<Event, EventStoreError> {
    let h = codec::decode_header(row).map_err(|r| EventStoreError::corrupt(format!("event {seq}: {r}")))?;
    let payload = &row[h.len..];
    let opened;
    let plain = match h.format {
        FORMAT_PLAIN => payload,
        _ => {
            let Some(sealer) = sealer else {
                return Err(EventStoreError::Unseal {
                    seq,
                    reason: "the payload is sealed but the store was opened without a sealer".into(),
                });
            };
            opened = sealer
                .open(h.workspace, &codec::aad(seq, &row[..h.len]), payload)
                .map_err(|e| match e {
                    OpenFailure::KeyGone => EventStoreError::KeyGone {
                        workspace: h.workspace.to_owned(),
                        seq,
                    },
                    OpenFailure::Invalid(reason) => EventStoreError::Unseal { seq, reason },
                })?;
            &opened[..]
        }
    };
    let data = EventData::from_json_slice(h.kind, plain)
        .map_err(|e| EventStoreError::corrupt(format!("event {seq}: {e}")))?;
    Ok(Event {
        id: h.id,
        workspace: h.workspace.to_owned(),
        device: h.device.map(str::to_owned),
        at_ms: h.at_ms,
        data,
    })
}

fn unexpected(reply: &Reply) -> EventStoreError {
    EventStoreError::Internal(format!("writer answered with the wrong reply: {reply:?}"))
}

/// Creates the tables, checks the layout version and returns the next sequence number.
fn init(db: &Database) -> Result<u64, EventStoreError> {
    let txn = db.begin_write().ctx("open")?;
    let next_seq = {
        let mut meta = txn.open_table(META).ctx("open")?;
        let format = meta.get("format").ctx("open")?.map(|g| g.value());
        match format {
            None => {
                meta.insert("format", FORMAT_VERSION).ctx("open")?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(EventStoreError::Incompatible {
                    path: PathBuf::new(),
                    reason: format!("layout version {other}, this build reads {FORMAT_VERSION}"),
                });
            }
        }
        let stored = meta.get("next_seq").ctx("open")?.map_or(1, |g| g.value());
        let events = txn.open_table(EVENTS).ctx("open")?;
        let after_last = events.last().ctx("open")?.map_or(1, |(k, _)| k.value() + 1);
        stored.max(after_last).max(1)
    };
    txn.open_table(BY_ID).ctx("open")?;
    txn.open_table(BY_WORKSPACE).ctx("open")?;
    txn.open_table(DELIVERIES).ctx("open")?;
    txn.open_table(DUE).ctx("open")?;
    txn.open_table(DEAD).ctx("open")?;
    txn.open_table(REFS).ctx("open")?;
    txn.commit().map_err(EventStoreError::from_commit)?;
    Ok(next_seq)
}

fn create_private(path: &Path) -> Result<(), EventStoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| EventStoreError::from_io("create directory", e))?;
    }
    // Inbound messages live here (in plain text without a sealer): create the file private
    // before the engine opens it with the umask.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(EventStoreError::from_io("create", e)),
    }
}

impl Inner {
    fn begin_read(&self) -> Result<redb::ReadTransaction, EventStoreError> {
        self.db.begin_read().ctx("begin read")
    }

    async fn submit(&self, work: Work, bytes: usize) -> Result<Reply, EventStoreError> {
        let tx = self.tx.as_ref().ok_or(EventStoreError::Closed)?;
        let (done, rx) = oneshot::channel();
        tx.send(Request { work, bytes, done })
            .await
            .map_err(|_| EventStoreError::Closed)?;
        rx.await.map_err(|_| EventStoreError::Closed)?
    }
}
