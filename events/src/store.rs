//! The durable event store: one redb file holding the node's event log, each webhook
//! endpoint's position in it, and the deliveries owed outside that position.
//!
//! # Tables (layout version 2)
//!
//! | table       | key                          | value                 | purpose |
//! |-------------|------------------------------|-----------------------|---------|
//! | `meta`      | name (`format`, `next_seq`)  | `u64`                 | layout version; next sequence number (never reused after a sweep) |
//! | `log`       | `(workspace, last_seq)`      | log row               | a chunk of one workspace's events with consecutive sequence numbers, sealed as one (see `codec`) |
//! | `batches`   | `last_seq`                   | first seq, times, workspace | node-wide order of the chunks: [`EventStore::get`], the sweep, [`EventStore::recent_ids`] |
//! | `ids`       | event id (16 bytes)          | `seq`                 | dedupe of every type but `message.status` |
//! | `id_seqs`   | `seq`                        | event id              | drops `ids` rows with their chunk |
//! | `cursors`   | endpoint                     | seq, workspace        | everything of the workspace up to `seq` has been handled for the endpoint |
//! | `owed`      | `(endpoint, seq)`            | attempts, due, since, device, error | a delivery owed outside the cursor: retrying, queued behind its device's retry, replayed, or owed whatever the filter |
//! | `owed_due`  | `(endpoint, due_ms, seq)`    | `()`                  | `owed` by due time |
//! | `dead`      | `(endpoint, seq)`            | attempts, died, error | deliveries given up on |
//! | `refs`      | `(seq, endpoint)`            | 0 owed / 1 dead       | keeps the chunk of an owed or dead delivery from being swept |
//!
//! **Why a log with cursors** (docs/design/0018-webhooks.md, "The event log"): the node
//! produces a `message.status` per sent message, ~100 k/s at full rate on two cores. A row,
//! an id index entry, a workspace index entry and three delivery rows per event cost ~10 µs of
//! CPU per event and took a third of the hot path; a chunk of up to
//! [`StoreOptions::max_row_events`] events sealed and inserted once, read by every endpoint
//! from its own cursor, costs a small fraction of that. Per-event rows exist only where
//! something went wrong (retries, dead letters) or for the rare out-of-filter delivery.
//!
//! Every write goes through one writer thread that merges whatever callers queued into one
//! redb write transaction committed with `Durability::Immediate` (fsync) before any caller is
//! answered (group commit). Sequence numbers are assigned by the writer in commit order,
//! node-wide, without gaps between successful appends: a reader that has seen `seq` n of a
//! workspace has seen all of that workspace's events below it.
//!
//! Reads run on the caller's thread in their own snapshot; chunks that cannot be read
//! (shredded key, tampering) come back as per-event errors, never as a failed page.

use std::collections::HashSet;
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

use crate::codec::{self, FORMAT_PLAIN, RowHeader};
use crate::error::{EventStoreError, StorageContext};
use crate::model::{Event, EventId, EventType};
use crate::writer::{self, Entry, Group, OwedTo, Prepared, Reply, Request, SweepPhase, Work};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
pub(crate) const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
pub(crate) const IDS: TableDefinition<&[u8; 16], u64> = TableDefinition::new("ids");
pub(crate) const ID_SEQS: TableDefinition<u64, &[u8; 16]> = TableDefinition::new("id_seqs");
pub(crate) const CURSORS: TableDefinition<u64, &[u8]> = TableDefinition::new("cursors");
pub(crate) const OWED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("owed");
pub(crate) const OWED_DUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("owed_due");
pub(crate) const DEAD: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dead");
pub(crate) const REFS: TableDefinition<(u64, u64), u8> = TableDefinition::new("refs");

/// `refs` value of an endpoint owing a delivery of the event.
pub(crate) const REF_OWED: u8 = 0;
/// `refs` value of an endpoint holding the event as a dead delivery.
pub(crate) const REF_DEAD: u8 = 1;

/// Layout version in `meta`; a file with another one is refused.
pub(crate) const FORMAT_VERSION: u64 = 2;

/// Whether events of this type are deduplicated by id. `message.status` is not: it is the
/// bulk of the log (one per sent message), its duplicates can only come from the gateway's
/// start-up replay, which checks [`EventStore::recent_ids`] instead, and an index entry per
/// status would cost as much as the rest of its storing.
pub fn deduplicated(kind: EventType) -> bool {
    kind != EventType::MessageStatus
}

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
    /// Hard limit on how long a delivery may stay owed: [`EventStore::sweep`] moves owed
    /// deliveries older than this (since their event, or since a replay) to dead ("expired"),
    /// and deletes events this old even when an endpoint's cursor has not passed them (the
    /// endpoint counts them as expired when it gets there), so a stuck endpoint cannot keep
    /// events on disk forever. Default 2 days
    /// (the webhook retry schedule spans about 1.5 days).
    pub max_age_ms: u64,
    /// Store the allocator state with every commit so that opening after a crash needs no
    /// full scan of the file. Costs a second fsync per group commit. Default `false`.
    pub quick_repair: bool,
    /// Most events in one log row. Default 512; 1..=65 536. Bigger rows amortise the seal
    /// and the insert further, but a reader wanting one event opens the whole row.
    pub max_row_events: usize,
    /// A log row is closed once its body reaches this many bytes. Default 256 KiB.
    pub max_row_bytes: usize,
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
            max_row_events: 512,
            max_row_bytes: 256 << 10,
        }
    }
}

/// One event to append, and the endpoints it is owed to whatever their filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// Endpoints that get an owed delivery of this event, due at once, whatever their type
    /// filter and cursor (an automation's "call a webhook"). Usually empty: endpoints find
    /// the events they want by reading the log from their cursor. Duplicates are ignored.
    pub endpoints: Vec<u64>,
}

/// Result of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's sequence number (the existing one for a duplicate).
    pub seq: u64,
    /// The event's id.
    pub id: EventId,
    /// The id was already stored: nothing was written for this event (its owed deliveries
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

/// A page of one workspace's log, read by [`EventStore::scan`].
#[derive(Debug, Default)]
pub struct Page {
    /// The events the filter kept, in `seq` order.
    pub events: Vec<Stored>,
    /// Highest sequence number examined (the `after` passed in when nothing was): a reader
    /// resumes after it, having skipped what the filter refused.
    pub through: u64,
}

/// A delivery owed outside an endpoint's cursor.
#[derive(Debug)]
pub struct Pending {
    /// Sequence number of the event.
    pub seq: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (unix ms).
    pub due_ms: u64,
    /// When it became owed (event time, or replay time): its age for expiry.
    pub since_ms: u64,
    /// The event's device as recorded with the delivery (for per-device order).
    pub device: Option<String>,
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

/// What a delivery worker did, for [`EventStore::record`]. Outcomes for an endpoint without
/// a cursor (never opened, or removed) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An owed delivery succeeded: its row is deleted. (A delivery from the log needs no
    /// row; the worker moves its cursor with [`Outcome::Advance`].)
    Delivered {
        /// Endpoint.
        endpoint: u64,
        /// Event.
        seq: u64,
    },
    /// Owe the event to the endpoint, next attempt at `due_ms` (a failed attempt, or an
    /// event queued behind its device's failed one with `attempts` 0).
    Retry {
        /// Endpoint.
        endpoint: u64,
        /// Event.
        seq: u64,
        /// Attempts made so far.
        attempts: u32,
        /// When to try next (unix ms).
        due_ms: u64,
        /// When the delivery started to be owed: the event's time, for expiry. An existing
        /// row keeps its own.
        since_ms: u64,
        /// The event's device (per-device order among owed deliveries).
        device: Option<String>,
        /// Why it failed; kept cut to [`crate::MAX_ERROR_BYTES`].
        error: String,
    },
    /// Given up: the delivery becomes a dead one (an owed row is deleted).
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
    /// Everything of the endpoint's workspace up to `to_seq` has been handled (delivered,
    /// owed or dead, or not wanted): the cursor moves there (never back).
    Advance {
        /// Endpoint.
        endpoint: u64,
        /// New cursor.
        to_seq: u64,
    },
}

/// What [`EventStore::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordReport {
    /// Outcomes applied.
    pub applied: usize,
    /// Outcomes that changed nothing (an owed row already gone, a cursor already further,
    /// an endpoint without a cursor): recording twice after a crash is harmless.
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
    /// Owed deliveries.
    pub deliveries: u64,
    /// Dead deliveries.
    pub dead: u64,
}

/// What [`EventStore::sweep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Owed deliveries older than [`StoreOptions::max_age_ms`] moved to dead.
    pub expired: u64,
    /// Dead deliveries older than the cutoff deleted.
    pub dead_removed: u64,
    /// Events deleted (in chunks older than the cutoff that nothing pins).
    pub events_deleted: u64,
    /// Rows examined.
    pub scanned: u64,
}

/// Whose events [`EventStore::erase`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erase {
    /// Every event of this device.
    Device(String),
    /// Every `message.received` whose sender has these digits (a phone number, however it
    /// is written: `+49 151…`, `49151…@s.whatsapp.net`).
    Sender(String),
}

impl Erase {
    pub(crate) fn matches(&self, raw: &codec::RawEvent<'_>) -> bool {
        match self {
            Erase::Device(d) => raw.device == Some(d.as_str()),
            Erase::Sender(number) => {
                if raw.kind != EventType::MessageReceived {
                    return false;
                }
                let want = digits(number);
                if want.is_empty() {
                    return false;
                }
                match codec::decode_data(raw.kind, raw.data) {
                    Ok(crate::model::EventData::MessageReceived(m)) => digits(&m.from) == want,
                    _ => false,
                }
            }
        }
    }
}

/// The digits of a phone number or of a JID's user part.
fn digits(s: &str) -> String {
    s.split('@')
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Its cursor (`None`: never opened or removed).
    pub cursor: Option<u64>,
    /// Events of its workspace after the cursor, of every type (the filter is the
    /// gateway's): an upper bound of what it has yet to receive from the log.
    pub unread: u64,
    /// Deliveries owed outside the cursor.
    pub owed: u64,
    /// Dead deliveries.
    pub dead: u64,
}

/// Sizes of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Highest sequence number assigned (0 before the first event).
    pub head: u64,
    /// Log rows (chunks of events).
    pub rows: u64,
    /// Owed deliveries, all endpoints.
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

/// The events of one log row, decoded.
type RowEvents = Vec<(u64, Result<Event, EventStoreError>)>;

impl EventStore {
    /// Opens (creating if absent, mode 0600, with missing parent directories) the event store
    /// at `path`, e.g. `state/events.redb`, and starts its writer thread.
    ///
    /// The file is locked: a second open, in this process or another, fails with
    /// [`EventStoreError::Locked`]. After a crash the engine repairs the file first (a full
    /// scan unless [`StoreOptions::quick_repair`] was on). A file of another layout version
    /// is refused ([`EventStoreError::Incompatible`]).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<EventStore, EventStoreError> {
        let path = path.as_ref().to_owned();
        for (name, v) in [
            ("queue_capacity", options.queue_capacity),
            ("max_group_requests", options.max_group_requests),
            ("max_batch_events", options.max_batch_events),
            ("max_page", options.max_page),
            ("max_rows_per_step", options.max_rows_per_step),
            ("max_row_events", options.max_row_events),
            ("max_row_bytes", options.max_row_bytes),
        ] {
            if v == 0 {
                return Err(EventStoreError::Config(format!("{name} must be > 0")));
            }
        }
        if options.max_row_events > 65_536 {
            return Err(EventStoreError::Config("max_row_events must be <= 65536".into()));
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
                max_row_events: options.max_row_events,
                max_row_bytes: options.max_row_bytes,
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
    /// Each event gets the next sequence number, in batch order within its workspace;
    /// concurrent callers' batches share one commit (group commit). An event whose id is
    /// already stored (every type but `message.status`, see [`deduplicated`]) is not written
    /// again: its [`Appended`] carries the existing `seq` and `duplicate: true` (the dedupe
    /// window is the retention). The owed deliveries of [`NewEvent::endpoints`] are written
    /// in the same transaction as their event.
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

    /// Validates and encodes a batch on the caller's thread, grouped by workspace: the
    /// writer thread then only copies, seals and inserts (no per-event allocation crosses to
    /// it, and the events are freed where they were made).
    fn prepare(&self, batch: Vec<NewEvent>) -> Result<(Prepared, usize), EventStoreError> {
        let opts = &self.inner.opts;
        if batch.len() > opts.max_batch_events {
            return Err(EventStoreError::TooLarge {
                what: "batch",
                size: batch.len(),
                max: opts.max_batch_events,
            });
        }
        let count = batch.len();
        let mut groups: Vec<Group> = Vec::new();
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
            // Batches hold a handful of workspaces: a linear search beats a map.
            let g = match groups.iter().position(|g| g.workspace == event.workspace) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        workspace: event.workspace.clone(),
                        body: Vec::with_capacity(64 * 1024),
                        entries: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[g];
            let start = group.body.len();
            let data_len = codec::push_event_encoded(&mut group.body, &event);
            if data_len > opts.max_event_bytes {
                return Err(EventStoreError::TooLarge {
                    what: "event data",
                    size: data_len,
                    max: opts.max_event_bytes,
                });
            }
            bytes += group.body.len() - start + 48 * endpoints.len();
            group.entries.push(Entry {
                index,
                id: event.id,
                dedupe: deduplicated(event.kind()),
                at_ms: event.at_ms,
                end: group.body.len(),
                owed: (!endpoints.is_empty()).then(|| {
                    Box::new(OwedTo {
                        endpoints,
                        device: event.device.clone().unwrap_or_default(),
                    })
                }),
            });
        }
        Ok((Prepared { groups, count }, bytes))
    }

    /// Records delivery outcomes in one durable commit; resolves once durable. Idempotent
    /// (see [`RecordReport::ignored`]), so a worker may record again after a crash.
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

    /// Gives `endpoint` (of `workspace`) a cursor if it has none, at `at_seq` or, when
    /// `None`, at the current head: a new endpoint gets the events appended from now on.
    /// Returns the cursor (the existing one when there was one).
    pub async fn open_cursor(
        &self,
        endpoint: u64,
        workspace: &str,
        at_seq: Option<u64>,
    ) -> Result<u64, EventStoreError> {
        match self
            .inner
            .submit(
                Work::OpenCursor {
                    endpoint,
                    workspace: workspace.to_owned(),
                    at_seq,
                },
                64,
            )
            .await?
        {
            Reply::Cursor(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes everything the store holds for `endpoint` (cursor, owed and dead deliveries),
    /// in steps of [`StoreOptions::max_rows_per_step`]. Its events stay (other endpoints and
    /// subscribers may want them) until the sweep.
    pub async fn remove_endpoint(&self, endpoint: u64) -> Result<Removed, EventStoreError> {
        self.removed_in_steps(|| Work::RemoveEndpoint { endpoint }).await
    }

    /// Moves dead deliveries of `endpoint` back to owed, due at `now_ms` with their attempts
    /// reset (the operator fixed the receiver). Returns how many moved. A dead delivery
    /// whose event was swept meanwhile cannot be replayed: the sweep never deletes a chunk
    /// a dead delivery refers to, so that only happens with a damaged file.
    pub async fn replay_dead(
        &self,
        endpoint: u64,
        which: DeadSelector,
        now_ms: u64,
    ) -> Result<u64, EventStoreError> {
        let mut total = 0;
        loop {
            match self
                .inner
                .submit(
                    Work::Replay {
                        endpoint,
                        which,
                        now_ms,
                    },
                    64,
                )
                .await?
            {
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

    /// Deletes every event of `workspace` with the deliveries owed or dead for them, in
    /// steps. The gateway calls it when a workspace is deleted (its key is shredded too, so
    /// what a crash leaves behind is unreadable anyway).
    pub async fn delete_workspace(&self, workspace: &str) -> Result<Removed, EventStoreError> {
        self.removed_in_steps(|| Work::DeleteWorkspace {
            workspace: workspace.to_owned(),
        })
        .await
    }

    /// Deletes the events of `workspace` older than `older_than_ms` (whole log rows whose
    /// newest event is older), with the deliveries owed or dead for them, whatever the
    /// endpoints' cursors: a workspace's retention settings are a promise to its owner.
    /// In steps; returns what was removed.
    pub async fn retain(&self, workspace: &str, older_than_ms: u64) -> Result<Removed, EventStoreError> {
        self.removed_in_steps(|| Work::Retain {
            workspace: workspace.to_owned(),
            older_than_ms,
        })
        .await
    }

    /// Erases `workspace`'s events of a device or from a sender (a deletion request): each
    /// is replaced in its row by a placeholder keeping only its time, id and type, which
    /// readers skip, and the deliveries owed or dead for it are deleted. Rows are rewritten
    /// (and sealed again) in steps; returns how many events were erased.
    pub async fn erase(&self, workspace: &str, target: Erase) -> Result<u64, EventStoreError> {
        let mut total = 0;
        let mut from = 0u64;
        loop {
            match self
                .inner
                .submit(
                    Work::Erase {
                        workspace: workspace.to_owned(),
                        target: target.clone(),
                        from_last: from,
                    },
                    64,
                )
                .await?
            {
                Reply::Erased { count, next } => {
                    total += count;
                    match next {
                        Some(n) => from = n,
                        None => return Ok(total),
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Maintenance, in steps of [`StoreOptions::max_rows_per_step`]:
    /// 1. owed deliveries older than [`StoreOptions::max_age_ms`] (since their event or
    ///    replay) become dead ("expired");
    /// 2. dead deliveries that died before `older_than_ms` are deleted;
    /// 3. log rows whose newest event is older than `older_than_ms` are deleted, unless an
    ///    owed or dead delivery refers to one of their events, or an endpoint of their
    ///    workspace has not passed them yet and they are younger than `max_age_ms`.
    pub async fn sweep(&self, older_than_ms: u64, now_ms: u64) -> Result<SweepReport, EventStoreError> {
        let expire_before_ms = now_ms.saturating_sub(self.inner.opts.max_age_ms);
        let mut total = SweepReport::default();
        for phase in [SweepPhase::Expire, SweepPhase::Dead, SweepPhase::Log] {
            let mut from = (0u64, 0u64);
            loop {
                match self
                    .inner
                    .submit(
                        Work::Sweep {
                            phase,
                            from,
                            older_than_ms,
                            expire_before_ms,
                            now_ms,
                        },
                        64,
                    )
                    .await?
                {
                    Reply::Swept { report, next, more } => {
                        total.expired += report.expired;
                        total.dead_removed += report.dead_removed;
                        total.events_deleted += report.events_deleted;
                        total.scanned += report.scanned;
                        if !more {
                            break;
                        }
                        from = next;
                    }
                    other => return Err(unexpected(&other)),
                }
            }
        }
        Ok(total)
    }

    /// Submits `work()` until the writer says nothing is left, adding up what each step
    /// removed (remove_endpoint, delete_workspace, retain).
    async fn removed_in_steps(&self, work: impl Fn() -> Work) -> Result<Removed, EventStoreError> {
        let mut total = Removed::default();
        loop {
            match self.inner.submit(work(), 64).await? {
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

    /// Highest sequence number made durable (0 before the first event).
    pub fn head(&self) -> u64 {
        self.inner.counters.head.load(Ordering::Acquire)
    }

    /// A receiver of [`EventStore::head`] that changes whenever appended events become durable:
    /// what live subscribers and delivery workers wait on instead of polling (then they read
    /// with [`EventStore::read_after`] or [`EventStore::scan`]). Outcomes, replays and sweeps
    /// do not change it.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.counters.head_tx.subscribe()
    }

    /// The event with sequence number `seq`, if stored.
    pub fn get(&self, seq: u64) -> Result<Option<Stored>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let batches = txn.open_table(BATCHES).ctx("read")?;
        let log = txn.open_table(LOG).ctx("read")?;
        self.get_in(&batches, &log, seq)
    }

    fn get_in(
        &self,
        batches: &ReadOnlyTable<u64, &[u8]>,
        log: &ReadOnlyTable<(&str, u64), &[u8]>,
        seq: u64,
    ) -> Result<Option<Stored>, EventStoreError> {
        let Some(item) = batches.range(seq..).ctx("read")?.next() else {
            return Ok(None);
        };
        let (k, v) = item.ctx("read")?;
        let last = k.value();
        let entry = codec::decode_batch(v.value())
            .map_err(|r| EventStoreError::corrupt(format!("batch index {last}: {r}")))?;
        if entry.first_seq > seq {
            return Ok(None);
        }
        let Some(row) = log.get((entry.workspace.as_str(), last)).ctx("read")? else {
            return Err(EventStoreError::corrupt(format!(
                "log row ({}, {last}) is indexed but missing",
                entry.workspace
            )));
        };
        let events = self.decode_row(&entry.workspace, last, row.value(), &|_, _| true);
        Ok(events
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(seq, event)| Stored { seq, event }))
    }

    /// The sequence number of the event with this id, if stored (not for `message.status`,
    /// see [`deduplicated`]).
    pub fn seq_of(&self, id: &EventId) -> Result<Option<u64>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let ids = txn.open_table(IDS).ctx("read")?;
        Ok(ids.get(id.as_bytes()).ctx("read")?.map(|g| g.value()))
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
        Ok(self.scan(workspace, after_seq, limit, &|_, _| true)?.events)
    }

    /// Like [`EventStore::read_after`], keeping only the events `filter` (type, device)
    /// accepts, decided before their JSON is parsed. Examines at most 16 × `limit` events;
    /// [`Page::through`] says how far it got, so a reader whose filter refuses most events
    /// still moves forward.
    pub fn scan(
        &self,
        workspace: &str,
        after_seq: u64,
        limit: usize,
        filter: &dyn Fn(EventType, Option<&str>) -> bool,
    ) -> Result<Page, EventStoreError> {
        let limit = self.clamp(limit);
        let max_examined = limit.saturating_mul(16) as u64;
        let mut page = Page {
            events: Vec::new(),
            through: after_seq,
        };
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(page);
        };
        let txn = self.inner.begin_read()?;
        let log = txn.open_table(LOG).ctx("read")?;
        let mut examined = 0u64;
        for item in log
            .range((workspace, start)..=(workspace, u64::MAX))
            .ctx("read")?
        {
            let (k, v) = item.ctx("read")?;
            let last = k.value().1;
            let row = self.decode_row(workspace, last, v.value(), filter);
            let first_unseen = page.through + 1;
            let header_first = RowHeader::decode(v.value()).map_or(last, |h| h.first_seq);
            for (seq, event) in row {
                if seq < first_unseen {
                    continue;
                }
                page.events.push(Stored { seq, event });
                if page.events.len() >= limit {
                    page.through = seq;
                    return Ok(page);
                }
            }
            examined += last + 1 - header_first.max(first_unseen).min(last);
            page.through = last;
            if examined >= max_examined {
                break;
            }
        }
        Ok(page)
    }

    /// Where `endpoint`'s cursor is, and its workspace (`None`: no cursor).
    pub fn cursor(&self, endpoint: u64) -> Result<Option<(u64, String)>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let cursors = txn.open_table(CURSORS).ctx("read")?;
        match cursors.get(endpoint).ctx("read")? {
            None => Ok(None),
            Some(v) => codec::decode_cursor(v.value())
                .map(Some)
                .map_err(|r| EventStoreError::corrupt(format!("cursor {endpoint}: {r}"))),
        }
    }

    /// Owed deliveries of `endpoint` with `seq >= from_seq`, in `seq` order, at most `limit`
    /// (clamped to 1..=[`StoreOptions::max_page`]), due or not.
    pub fn owed(&self, endpoint: u64, from_seq: u64, limit: usize) -> Result<Vec<Pending>, EventStoreError> {
        let limit = self.clamp(limit);
        let txn = self.inner.begin_read()?;
        let owed = txn.open_table(OWED).ctx("read")?;
        let batches = txn.open_table(BATCHES).ctx("read")?;
        let log = txn.open_table(LOG).ctx("read")?;
        let mut out = Vec::new();
        let mut cache = RowCache::default();
        for item in owed
            .range((endpoint, from_seq)..=(endpoint, u64::MAX))
            .ctx("read")?
        {
            let (k, v) = item.ctx("read")?;
            let seq = k.value().1;
            out.push(self.pending_from(&batches, &log, &mut cache, endpoint, seq, v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Owed deliveries of `endpoint` due at `now_ms`, in `seq` order, at most `limit`
    /// (clamped to 1..=[`StoreOptions::max_page`]).
    pub fn owed_due(
        &self,
        endpoint: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, EventStoreError> {
        let limit = self.clamp(limit);
        let txn = self.inner.begin_read()?;
        let due = txn.open_table(OWED_DUE).ctx("read")?;
        let mut seqs: Vec<u64> = Vec::new();
        for item in due
            .range((endpoint, 0, 0)..=(endpoint, now_ms, u64::MAX))
            .ctx("read")?
        {
            seqs.push(item.ctx("read")?.0.value().2);
            if seqs.len() >= limit {
                break;
            }
        }
        seqs.sort_unstable();
        let owed = txn.open_table(OWED).ctx("read")?;
        let batches = txn.open_table(BATCHES).ctx("read")?;
        let log = txn.open_table(LOG).ctx("read")?;
        let mut cache = RowCache::default();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(v) = owed.get((endpoint, seq)).ctx("read")? {
                out.push(self.pending_from(&batches, &log, &mut cache, endpoint, seq, v.value())?);
            }
        }
        Ok(out)
    }

    /// When `endpoint`'s earliest owed delivery is due, if it owes any.
    pub fn next_owed_due(&self, endpoint: u64) -> Result<Option<u64>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let due = txn.open_table(OWED_DUE).ctx("read")?;
        let first = due
            .range((endpoint, 0, 0)..=(endpoint, u64::MAX, u64::MAX))
            .ctx("read")?
            .next();
        match first {
            None => Ok(None),
            Some(item) => Ok(Some(item.ctx("read")?.0.value().1)),
        }
    }

    /// Dead deliveries of `endpoint` with `seq >= from_seq`, in `seq` order, at most `limit`
    /// (clamped to 1..=[`StoreOptions::max_page`]).
    pub fn list_dead(
        &self,
        endpoint: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadEntry>, EventStoreError> {
        let limit = self.clamp(limit);
        let txn = self.inner.begin_read()?;
        let dead = txn.open_table(DEAD).ctx("read")?;
        let batches = txn.open_table(BATCHES).ctx("read")?;
        let log = txn.open_table(LOG).ctx("read")?;
        let mut cache = RowCache::default();
        let mut out = Vec::new();
        for item in dead
            .range((endpoint, from_seq)..=(endpoint, u64::MAX))
            .ctx("read")?
        {
            let (k, v) = item.ctx("read")?;
            let seq = k.value().1;
            let event = cache.event(self, &batches, &log, seq)?;
            out.push(match codec::decode_dead(v.value()) {
                Ok(d) => DeadEntry {
                    seq,
                    attempts: d.attempts,
                    at_ms: d.at_ms,
                    last_error: d.error,
                    event,
                },
                Err(reason) => DeadEntry {
                    seq,
                    attempts: 0,
                    at_ms: 0,
                    last_error: String::new(),
                    event: Err(EventStoreError::corrupt(format!(
                        "dead {endpoint}/{seq}: {reason}"
                    ))),
                },
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Where `endpoint` stands: cursor, events after it, owed and dead counts. Costs a walk
    /// over the workspace's log rows after the cursor (headers only) and over the
    /// endpoint's owed and dead rows.
    pub fn backlog(&self, endpoint: u64) -> Result<Backlog, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let cursors = txn.open_table(CURSORS).ctx("read")?;
        let mut b = Backlog::default();
        if let Some(v) = cursors.get(endpoint).ctx("read")? {
            let (cursor, ws) = codec::decode_cursor(v.value())
                .map_err(|r| EventStoreError::corrupt(format!("cursor {endpoint}: {r}")))?;
            b.cursor = Some(cursor);
            let log = txn.open_table(LOG).ctx("read")?;
            for item in log
                .range((ws.as_str(), cursor.saturating_add(1))..=(ws.as_str(), u64::MAX))
                .ctx("read")?
            {
                let (k, v) = item.ctx("read")?;
                let last = k.value().1;
                let first = RowHeader::decode(v.value())
                    .map_or(last, |h| h.first_seq)
                    .min(last);
                b.unread += last + 1 - first.max(cursor + 1);
            }
        }
        let owed = txn.open_table(OWED).ctx("read")?;
        b.owed = owed
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .ctx("read")?
            .count() as u64;
        let dead = txn.open_table(DEAD).ctx("read")?;
        b.dead = dead
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .ctx("read")?
            .count() as u64;
        Ok(b)
    }

    /// Ids of the events of type `kind` in the log rows whose newest event is at or after
    /// `since_ms`, walking back from the newest row: how the gateway's start-up replay of
    /// `message.status` (which has no id index) skips what is already stored. Stops after
    /// `max_rows` rows.
    pub fn recent_ids(
        &self,
        kind: EventType,
        since_ms: u64,
        max_rows: usize,
    ) -> Result<HashSet<EventId>, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let batches = txn.open_table(BATCHES).ctx("read")?;
        let log = txn.open_table(LOG).ctx("read")?;
        let mut out = HashSet::new();
        for (n, item) in batches.iter().ctx("read")?.rev().enumerate() {
            if n >= max_rows {
                break;
            }
            let (k, v) = item.ctx("read")?;
            let last = k.value();
            let Ok(entry) = codec::decode_batch(v.value()) else {
                continue;
            };
            if entry.max_at_ms < since_ms {
                // Rows are in commit order, and event times within a few seconds of it.
                if entry.max_at_ms.saturating_add(60_000) < since_ms {
                    break;
                }
                continue;
            }
            let Some(row) = log.get((entry.workspace.as_str(), last)).ctx("read")? else {
                continue;
            };
            self.for_each_raw(&entry.workspace, last, row.value(), &mut |_, raw| {
                if raw.kind == kind && raw.at_ms >= since_ms && !raw.erased() {
                    out.insert(raw.id);
                }
            });
        }
        Ok(out)
    }

    /// Sizes and writer counters.
    pub fn stats(&self) -> Result<StoreStats, EventStoreError> {
        let txn = self.inner.begin_read()?;
        let rows = txn.open_table(BATCHES).ctx("stats")?.len().ctx("stats")?;
        let pending = txn.open_table(OWED).ctx("stats")?.len().ctx("stats")?;
        let dead = txn.open_table(DEAD).ctx("stats")?.len().ctx("stats")?;
        let file_bytes = std::fs::metadata(&self.inner.path)
            .map_err(|e| EventStoreError::from_io("stats", e))?
            .len();
        let c = &self.inner.counters;
        Ok(StoreStats {
            head: c.head.load(Ordering::Acquire),
            rows,
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

    fn pending_from(
        &self,
        batches: &ReadOnlyTable<u64, &[u8]>,
        log: &ReadOnlyTable<(&str, u64), &[u8]>,
        cache: &mut RowCache,
        endpoint: u64,
        seq: u64,
        value: &[u8],
    ) -> Result<Pending, EventStoreError> {
        let event = cache.event(self, batches, log, seq)?;
        Ok(match codec::decode_owed(value) {
            Ok(s) => Pending {
                seq,
                attempts: s.attempts,
                due_ms: s.due_ms,
                since_ms: s.since_ms,
                device: (!s.device.is_empty()).then_some(s.device),
                last_error: s.error,
                event,
            },
            Err(reason) => Pending {
                seq,
                attempts: 0,
                due_ms: 0,
                since_ms: 0,
                device: None,
                last_error: String::new(),
                event: Err(EventStoreError::corrupt(format!(
                    "owed {endpoint}/{seq}: {reason}"
                ))),
            },
        })
    }

    /// Opens a log row and hands each event's plain fields to `f`. A row that cannot be
    /// opened yields nothing (callers that must report it use [`EventStore::decode_row`]).
    fn for_each_raw(
        &self,
        workspace: &str,
        last: u64,
        row: &[u8],
        f: &mut dyn FnMut(u64, codec::RawEvent<'_>),
    ) {
        let Ok(h) = RowHeader::decode(row) else { return };
        let Ok(body) = self.open_body(workspace, &h, row) else {
            return;
        };
        let _ = last;
        if let Ok(raw) = codec::split_body(&body, h.count) {
            for (i, r) in raw.into_iter().enumerate() {
                f(h.first_seq + i as u64, r);
            }
        }
    }

    fn open_body(&self, workspace: &str, h: &RowHeader, row: &[u8]) -> Result<Vec<u8>, EventStoreError> {
        let body = &row[codec::ROW_HEADER..];
        if h.format == FORMAT_PLAIN {
            return Ok(body.to_vec());
        }
        let Some(sealer) = self.inner.opts.sealer.as_deref() else {
            return Err(EventStoreError::Unseal {
                seq: h.first_seq,
                reason: "the events are sealed but the store was opened without a sealer".into(),
            });
        };
        sealer
            .open(workspace, &codec::aad(workspace, &row[..codec::ROW_HEADER]), body)
            .map_err(|e| match e {
                OpenFailure::KeyGone => EventStoreError::KeyGone {
                    workspace: workspace.to_owned(),
                    seq: h.first_seq,
                },
                OpenFailure::Invalid(reason) => EventStoreError::Unseal {
                    seq: h.first_seq,
                    reason,
                },
            })
    }

    /// Decodes a log row into its events that `filter` keeps; a row that cannot be opened
    /// gives an error for each of its sequence numbers.
    fn decode_row(
        &self,
        workspace: &str,
        last: u64,
        row: &[u8],
        filter: &dyn Fn(EventType, Option<&str>) -> bool,
    ) -> RowEvents {
        let h = match RowHeader::decode(row) {
            Ok(h) if h.last_seq() == last => h,
            Ok(h) => {
                return vec![(
                    last,
                    Err(EventStoreError::corrupt(format!(
                        "log row ({workspace}, {last}) says its last event is {}",
                        h.last_seq()
                    ))),
                )];
            }
            Err(r) => {
                return vec![(
                    last,
                    Err(EventStoreError::corrupt(format!(
                        "log row ({workspace}, {last}): {r}"
                    ))),
                )];
            }
        };
        let every =
            |e: &dyn Fn(u64) -> EventStoreError| (h.first_seq..=last).map(|s| (s, Err(e(s)))).collect();
        let body = match self.open_body(workspace, &h, row) {
            Ok(b) => b,
            Err(e) => {
                return every(&|s| match &e {
                    EventStoreError::KeyGone { workspace, .. } => EventStoreError::KeyGone {
                        workspace: workspace.clone(),
                        seq: s,
                    },
                    EventStoreError::Unseal { reason, .. } => EventStoreError::Unseal {
                        seq: s,
                        reason: reason.clone(),
                    },
                    other => EventStoreError::corrupt(format!("event {s}: {other}")),
                });
            }
        };
        let raw = match codec::split_body(&body, h.count) {
            Ok(r) => r,
            Err(r) => return every(&|s| EventStoreError::corrupt(format!("event {s}: {r}"))),
        };
        raw.into_iter()
            .enumerate()
            .filter(|(_, r)| !r.erased() && filter(r.kind, r.device))
            .map(|(i, r)| {
                let seq = h.first_seq + i as u64;
                (
                    seq,
                    r.to_event(workspace)
                        .map_err(|reason| EventStoreError::corrupt(format!("event {seq}: {reason}"))),
                )
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn raw_db(&self) -> &Database {
        &self.inner.db
    }
}

/// The last log row opened by a walk over owed or dead deliveries (consecutive deliveries
/// are usually in the same row).
#[derive(Default)]
struct RowCache {
    last: Option<u64>,
    events: Vec<(u64, Event)>,
    error: Option<(u64, u64, EventStoreError)>,
}

impl RowCache {
    fn event(
        &mut self,
        store: &EventStore,
        batches: &ReadOnlyTable<u64, &[u8]>,
        log: &ReadOnlyTable<(&str, u64), &[u8]>,
        seq: u64,
    ) -> Result<Result<Event, EventStoreError>, EventStoreError> {
        if let Some(ev) = self.find(seq) {
            return Ok(ev);
        }
        let Some(item) = batches.range(seq..).ctx("read")?.next() else {
            return Ok(Err(missing(seq)));
        };
        let (k, v) = item.ctx("read")?;
        let last = k.value();
        let Ok(entry) = codec::decode_batch(v.value()) else {
            return Ok(Err(EventStoreError::corrupt(format!("batch index {last}"))));
        };
        if entry.first_seq > seq {
            return Ok(Err(missing(seq)));
        }
        let Some(row) = log.get((entry.workspace.as_str(), last)).ctx("read")? else {
            return Ok(Err(missing(seq)));
        };
        self.last = Some(last);
        self.events.clear();
        self.error = None;
        for (s, e) in store.decode_row(&entry.workspace, last, row.value(), &|_, _| true) {
            match e {
                Ok(e) => self.events.push((s, e)),
                Err(e) if self.error.is_none() => self.error = Some((entry.first_seq, last, e)),
                Err(_) => {}
            }
        }
        Ok(self.find(seq).unwrap_or_else(|| Err(missing(seq))))
    }

    fn find(&self, seq: u64) -> Option<Result<Event, EventStoreError>> {
        if let Ok(i) = self.events.binary_search_by_key(&seq, |(s, _)| *s) {
            return Some(Ok(self.events[i].1.clone()));
        }
        match &self.error {
            Some((first, last, e)) if (*first..=*last).contains(&seq) => Some(Err(match e {
                // Keep the kind (a shredded key is KeyGone, not corruption) with this seq.
                EventStoreError::KeyGone { workspace, .. } => EventStoreError::KeyGone {
                    workspace: workspace.clone(),
                    seq,
                },
                EventStoreError::Unseal { reason, .. } => EventStoreError::Unseal {
                    seq,
                    reason: reason.clone(),
                },
                other => EventStoreError::corrupt(format!("event {seq}: {other}")),
            })),
            _ => None,
        }
    }
}

fn missing(seq: u64) -> EventStoreError {
    EventStoreError::corrupt(format!("event {seq} is referenced but missing"))
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
                    reason: format!(
                        "layout version {other}, this build reads {FORMAT_VERSION} (move the file away: it holds only events and their deliveries)"
                    ),
                });
            }
        }
        let stored = meta.get("next_seq").ctx("open")?.map_or(1, |g| g.value());
        let batches = txn.open_table(BATCHES).ctx("open")?;
        let after_last = batches.last().ctx("open")?.map_or(1, |(k, _)| k.value() + 1);
        stored.max(after_last).max(1)
    };
    txn.open_table(LOG).ctx("open")?;
    txn.open_table(IDS).ctx("open")?;
    txn.open_table(ID_SEQS).ctx("open")?;
    txn.open_table(CURSORS).ctx("open")?;
    txn.open_table(OWED).ctx("open")?;
    txn.open_table(OWED_DUE).ctx("open")?;
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
