//! The journal handle used by the gateway: appends, barriers, dead-letter operations, stats.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::completion::{Completion, pair};
use crate::config::JournalConfig;
use crate::error::{JournalError, OverloadReason, Result};
use crate::lock::{self, DirLock};
use crate::record::{MessageId, Record};
use crate::replay::{DeadLetter, Pending, Recovered, recover};
use crate::segment::{HEADER_LEN, create_segment, segment_path};
use crate::state::SegInfo;
use crate::status::{DeadFilter, MessageStatus};
use crate::writer::{Request, Writer};

/// Log sequence number: a position in the log (segment number, byte offset in its file).
/// Ordered: a larger LSN was written later.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position `offset` in segment `segment`.
    pub fn new(segment: u64, offset: u64) -> Lsn {
        Lsn((segment << 32) | (offset & 0xffff_ffff))
    }
    /// Segment number.
    pub fn segment(self) -> u64 {
        self.0 >> 32
    }
    /// Byte offset in the segment file.
    pub fn offset(self) -> u64 {
        self.0 & 0xffff_ffff
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({}:{})", self.segment(), self.offset())
    }
}

/// Upper bounds, in nanoseconds and inclusive, of the buckets of [`SyncLatency`]: 50 µs
/// (a fast NVMe fdatasync) to 1 s (a disk that is failing or saturated). A sync slower than
/// the last bound is counted in the overflow bucket, the last of [`SyncLatency::counts`].
pub const SYNC_LATENCY_BOUNDS_NS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Buckets of [`SyncLatency`]: one per bound, and the overflow above the last.
pub const SYNC_LATENCY_BUCKETS: usize = SYNC_LATENCY_BOUNDS_NS.len() + 1;

/// How long the writer's syncs took (one per group commit; `fdatasync`, `fsync`, or nothing
/// with [`crate::SyncMode::None`]), as a histogram cumulative since open.
///
/// Buckets are disjoint (not cumulative like Prometheus's `le`): `counts[i]` counts syncs that
/// took more than `SYNC_LATENCY_BOUNDS_NS[i - 1]` and at most `SYNC_LATENCY_BOUNDS_NS[i]`.
/// Each bucket also keeps the sum of its durations, so an exporter can replay a delta with
/// values that fall in the right bucket and add up to the right total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncLatency {
    /// Syncs per bucket.
    pub counts: [u64; SYNC_LATENCY_BUCKETS],
    /// Nanoseconds spent in the syncs of each bucket.
    pub sum_ns: [u64; SYNC_LATENCY_BUCKETS],
}

impl SyncLatency {
    /// Syncs measured ([`JournalStats::syncs`] is this count).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Nanoseconds spent syncing in total.
    pub fn total_ns(&self) -> u64 {
        self.sum_ns.iter().sum()
    }

    /// The bucket a duration of `ns` nanoseconds falls in.
    pub fn bucket_of(ns: u64) -> usize {
        SYNC_LATENCY_BOUNDS_NS.partition_point(|&b| b < ns)
    }
}

/// Counters, cumulative since open (except the gauges `queued_bytes`, `disk_bytes`,
/// `retention_pending_segments`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Syncs (fdatasync calls) issued; one per group commit.
    pub syncs: u64,
    /// How long those syncs took.
    pub sync_latency: SyncLatency,
    /// Records written (including those carried forward by compaction).
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// `append`/`append_background` calls taken.
    pub appends: u64,
    /// Appends refused with `Overloaded`.
    pub overloaded: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Segments compacted (live records carried forward, then deleted).
    pub compactions: u64,
    /// Records carried forward by compaction.
    pub carried_records: u64,
    /// Bad records met by compaction at run time (logged).
    pub compaction_corruptions: u64,
    /// Dead letters dropped at run time because their workspace's key turned out to be gone
    /// (crypto-shredded) when they were read; replay counts its own in
    /// [`crate::ReplayStats::shredded_records`].
    pub shredded_records: u64,
    /// Bytes waiting for the writer (gauge).
    pub queued_bytes: u64,
    /// Bytes of segment files (gauge).
    pub disk_bytes: u64,
    /// Sealed segments that the latest [`Journal::enforce_retention`] found holding a record
    /// older than its cutoff and that background compaction has not removed yet (gauge).
    /// Falls to 0 as the steps proceed; a value that stays up means compaction is stuck on
    /// the oldest segment (unreadable records, logged) and old bodies remain on disk.
    pub retention_pending_segments: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub queued_bytes: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub durable_lsn: AtomicU64,
    pub poisoned: AtomicBool,
    pub poison_msg: Mutex<String>,
    /// [`SyncLatency`] as it is counted: written by the writer thread only, read by `stats`.
    /// The number of syncs is their sum, so a snapshot's `syncs` and histogram always agree.
    pub sync_counts: [AtomicU64; SYNC_LATENCY_BUCKETS],
    pub sync_sum_ns: [AtomicU64; SYNC_LATENCY_BUCKETS],
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub appends: AtomicU64,
    pub overloaded: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub compactions: AtomicU64,
    pub carried_records: AtomicU64,
    pub compaction_corruptions: AtomicU64,
    pub shredded_records: AtomicU64,
    pub retention_pending_segments: AtomicU64,
}

impl Shared {
    /// Counts one sync that took `took`: two relaxed adds, once per group commit.
    pub(crate) fn record_sync(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let b = SyncLatency::bucket_of(ns);
        self.sync_counts[b].fetch_add(1, Ordering::Relaxed);
        self.sync_sum_ns[b].fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn poison(&self, msg: String) {
        *self.poison_msg.lock().unwrap_or_else(|e| e.into_inner()) = msg;
        self.poisoned.store(true, Ordering::Release);
    }
    fn poisoned(&self) -> Option<JournalError> {
        if self.poisoned.load(Ordering::Acquire) {
            Some(JournalError::Poisoned(
                self.poison_msg.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ))
        } else {
            None
        }
    }
}

/// What a forced compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten and deleted.
    pub segments_compacted: u64,
    /// Segments deleted without rewriting (nothing live in them).
    pub segments_deleted: u64,
    /// Records carried forward.
    pub records_carried: u64,
    /// Segment bytes before.
    pub bytes_before: u64,
    /// Segment bytes after.
    pub bytes_after: u64,
}

/// What [`Journal::enforce_retention`] did and left to the background.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The active segment held a record older than the cutoff and was sealed, so that it can
    /// be compacted like the others.
    pub rolled_active: bool,
    /// Sealed segments holding a record older than the cutoff, still to be compacted (or
    /// deleted) by the background steps; includes those of earlier calls not done yet.
    pub segments_pending: usize,
}

/// An open journal. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// Dropping it (or [`Journal::close`]) writes and syncs everything queued, then stops the
/// writer thread and releases the directory lock.
pub struct Journal {
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    cfg: JournalConfig,
    dir: PathBuf,
    max_batch: u64,
    _lock: DirLock,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, takes the directory lock, replays
    /// the log and starts the writer thread.
    ///
    /// A torn tail is truncated; corruption elsewhere is reported in
    /// [`Recovered::corruptions`] and skipped: the caller decides whether to go on.
    pub fn open(dir: impl AsRef<Path>, cfg: JournalConfig) -> Result<(Journal, Recovered)> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| JournalError::io("create directory", &dir, e))?;
        let lock = lock::acquire(&dir)?;
        let now = cfg.clock.now_ms();
        let out = recover(&dir, &cfg, now)?;
        let mut index = out.index;
        let (seg, written, file) = match out.last_segment {
            Some((seg, end)) => {
                let path = segment_path(&dir, seg);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| JournalError::io("open segment", &path, e))?;
                if let Some(size) = cfg.prealloc_size() {
                    let len = f
                        .metadata()
                        .map_err(|e| JournalError::io("stat segment", &path, e))?
                        .len();
                    if len < size && end < size {
                        f.set_len(size)
                            .map_err(|e| JournalError::io("preallocate segment", &path, e))?;
                        if cfg.durable() {
                            f.sync_all()
                                .map_err(|e| JournalError::io("fsync segment", &path, e))?;
                        }
                    }
                }
                (seg, end, f)
            }
            None => {
                let n = index.segs.keys().next_back().map_or(1, |m| m + 1);
                let f = create_segment(&dir, n, cfg.durable(), cfg.prealloc_size())?;
                index.segs.insert(
                    n,
                    SegInfo {
                        size: HEADER_LEN as u64,
                        ..Default::default()
                    },
                );
                (n, HEADER_LEN as u64, f)
            }
        };
        let shared = Arc::new(Shared::default());
        shared
            .disk_bytes
            .store(index.segs.values().map(|s| s.size).sum(), Ordering::Relaxed);
        shared
            .durable_lsn
            .store(Lsn::new(seg, written).0, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer::new(
            dir.clone(),
            cfg.clone(),
            rx,
            shared.clone(),
            index,
            file,
            seg,
            written,
        );
        let thread = std::thread::Builder::new()
            .name("waping-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::io("spawn writer thread", &dir, e))?;
        let max_batch = cfg.max_batch_len();
        Ok((
            Journal {
                tx: Some(tx),
                shared,
                thread: Some(thread),
                cfg,
                dir,
                max_batch,
                _lock: lock,
            },
            out.recovered,
        ))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.cfg
    }

    /// Appends `records` durably: the completion resolves once they are written and synced
    /// (or with the error). Batches that contain an `Accepted` record are refused with
    /// [`JournalError::Overloaded`] when the journal is at its bounds; transitions of
    /// existing messages are always taken so that work can finish and space be freed.
    ///
    /// Records are encoded (and checksummed, and sealed when a sealer is configured) on the
    /// calling thread. A record the sealer refuses fails the whole batch with
    /// [`JournalError::Seal`]; nothing of it is written.
    pub fn append(&self, records: Vec<Record>) -> Completion<Lsn> {
        let (done, completion) = pair();
        match self.submit(records, Some(done)) {
            Ok(()) => completion,
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Appends `records` without a waiter: they are made durable by the same group commits
    /// (use for transitions such as `Dispatched` and `Sent`; a crash before the next sync may
    /// lose them, which at-least-once redelivery covers). Fails only when the journal is
    /// closed, poisoned, overloaded (batches with `Accepted` only) or the batch is too large.
    pub fn append_background(&self, records: Vec<Record>) -> Result<()> {
        self.submit(records, None)
    }

    fn submit(&self, records: Vec<Record>, done: Option<crate::completion::Completer<Lsn>>) -> Result<()> {
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        let mut bytes = Vec::with_capacity(records.len() * 96);
        let mut admits_new = false;
        match self.cfg.sealer.as_deref() {
            None => {
                for r in &records {
                    admits_new |= matches!(r, Record::Accepted(_));
                    r.encode_into(&mut bytes);
                }
            }
            // Sealing runs here, on the appending threads, not on the writer: the writer is the
            // one thread every append of the process goes through (a third of a core at 160k
            // messages/s before sealing), while appenders are many and run in parallel, so
            // sealing here scales with them and keeps the group commit's critical path as it
            // was. The writer only opens records for control-plane reads.
            Some(sealer) => {
                let mut plain = Vec::new();
                for r in &records {
                    admits_new |= matches!(r, Record::Accepted(_));
                    r.encode_sealed_into(sealer, &mut bytes, &mut plain)
                        .map_err(|e| JournalError::Seal {
                            workspace: match r {
                                Record::Accepted(a) => a.workspace.clone(),
                                Record::Inbound(m) => m.workspace.clone(),
                                _ => String::new(),
                            },
                            reason: e.0,
                        })?;
                }
            }
        }
        let size = bytes.len() as u64;
        if size > self.max_batch {
            return Err(JournalError::TooLarge {
                size,
                max: self.max_batch,
            });
        }
        let queued = self.shared.queued_bytes.load(Ordering::Relaxed);
        if admits_new {
            let overloaded = |reason, retry_after| {
                self.shared.overloaded.fetch_add(1, Ordering::Relaxed);
                Err(JournalError::Overloaded { reason, retry_after })
            };
            if queued + size > self.cfg.max_queued_bytes {
                return overloaded(OverloadReason::QueueFull, self.cfg.queue_full_retry_after);
            }
            if self.shared.disk_bytes.load(Ordering::Relaxed) + queued + size > self.cfg.max_disk_bytes {
                return overloaded(OverloadReason::DiskFull, self.cfg.disk_full_retry_after);
            }
        }
        self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        self.shared.appends.fetch_add(1, Ordering::Relaxed);
        self.send(Request::Append { bytes, records, done })
            .inspect_err(|_| {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            })
    }

    fn send(&self, r: Request) -> Result<()> {
        match &self.tx {
            Some(tx) => tx.send(r).map_err(|_| JournalError::Closed),
            None => Err(JournalError::Closed),
        }
    }

    fn request<T>(&self, make: impl FnOnce(crate::completion::Completer<T>) -> Request) -> Completion<T> {
        if let Some(e) = self.shared.poisoned() {
            return Completion::ready(Err(e));
        }
        let (done, completion) = pair();
        match self.send(make(done)) {
            Ok(()) => completion,
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Durability barrier: resolves once everything appended before it is written and
    /// synced (written only, with [`crate::SyncMode::None`]). Use at shutdown.
    pub fn flush(&self) -> Completion<Lsn> {
        self.request(Request::Flush)
    }

    /// Highest position known to be synced.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable_lsn.load(Ordering::Acquire))
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        let s = &self.shared;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sync_latency = SyncLatency {
            counts: std::array::from_fn(|i| g(&s.sync_counts[i])),
            sum_ns: std::array::from_fn(|i| g(&s.sync_sum_ns[i])),
        };
        JournalStats {
            syncs: sync_latency.count(),
            sync_latency,
            records: g(&s.records),
            bytes: g(&s.bytes),
            appends: g(&s.appends),
            overloaded: g(&s.overloaded),
            segments_created: g(&s.segments_created),
            segments_deleted: g(&s.segments_deleted),
            compactions: g(&s.compactions),
            carried_records: g(&s.carried_records),
            compaction_corruptions: g(&s.compaction_corruptions),
            shredded_records: g(&s.shredded_records),
            queued_bytes: g(&s.queued_bytes),
            disk_bytes: g(&s.disk_bytes),
            retention_pending_segments: g(&s.retention_pending_segments),
        }
    }

    /// Dead letters in id order (ids are time-ordered), starting after `after`, at most `limit`.
    pub fn dead_letters(&self, after: Option<MessageId>, limit: usize) -> Completion<Vec<DeadLetter>> {
        self.request(|done| Request::DeadList {
            workspace: None,
            after,
            limit,
            done,
        })
    }

    /// One dead letter, `None` if `id` is not a dead letter.
    pub fn dead_letter(&self, id: MessageId) -> Completion<Option<DeadLetter>> {
        self.request(|done| Request::DeadGet { id, done })
    }

    /// Replays a dead letter: records `DeadReplayed` durably and returns the message, now
    /// unfinished again with its attempts reset, for the caller to queue.
    /// [`JournalError::NotFound`] if `id` is not a dead letter.
    pub fn replay_dead(&self, id: MessageId) -> Completion<Pending> {
        self.request(|done| Request::DeadReplay { id, done })
    }

    /// Purges a dead letter (durably). [`JournalError::NotFound`] if `id` is not a dead letter.
    pub fn purge_dead(&self, id: MessageId) -> Completion<()> {
        self.request(|done| Request::DeadPurge { id, done })
    }

    /// Purges every dead letter; returns how many.
    pub fn purge_all_dead(&self) -> Completion<usize> {
        self.request(Request::DeadPurgeAll)
    }

    /// Dead letters of `workspace` in id order, starting after `after`, at most `limit`.
    /// Served from a per-workspace index: the cost does not depend on other workspaces'
    /// dead letters.
    pub fn dead_letters_in(
        &self,
        workspace: &str,
        after: Option<MessageId>,
        limit: usize,
    ) -> Completion<Vec<DeadLetter>> {
        let workspace = Some(workspace.to_owned());
        self.request(|done| Request::DeadList {
            workspace,
            after,
            limit,
            done,
        })
    }

    /// Where message `id` stands: unfinished, dead, or finished within the last
    /// `status_capacity` finishes and `status_retention`; `None` when the journal does not
    /// know it (never accepted, forgotten, or dropped because its workspace was shredded).
    /// Answered from memory; the status is rebuilt on open from what the segments still hold.
    pub fn message_status(&self, id: MessageId) -> Completion<Option<MessageStatus>> {
        self.request(|done| Request::Status { id, done })
    }

    /// Messages that finished (sent, or failed and reported) at or after `since_ms`, at most
    /// `limit`, newest first by chunk: what a consumer that may have missed finishes during
    /// a crash (the webhook runtime's status events) replays at start. Answered from the
    /// recently-finished status in memory, so bounded by `status_capacity` and
    /// `status_retention` like [`Journal::message_status`].
    pub fn finished_since(&self, since_ms: u64, limit: usize) -> Completion<Vec<MessageStatus>> {
        self.request(|done| Request::FinishedSince {
            since_ms,
            limit,
            done,
        })
    }

    /// Purges up to `limit` dead letters that died before `cutoff_ms` (unix ms), of
    /// `workspace` or of all workspaces; returns how many (retention sweeps: call again
    /// while it returns `limit`). Writes `DeadPurged` records like [`Journal::purge_dead`].
    pub fn purge_dead_older_than(
        &self,
        workspace: Option<&str>,
        cutoff_ms: u64,
        limit: usize,
    ) -> Completion<usize> {
        let workspace = workspace.map(str::to_owned);
        self.request(|done| Request::DeadPurgeOlder {
            workspace,
            cutoff_ms,
            limit,
            done,
        })
    }

    /// Purges up to `limit` dead letters of `workspace` that match `filter`; returns how many
    /// (deletion requests). [`DeadFilter::Recipient`] reads and opens every dead letter of
    /// the workspace on the writer thread, delaying appends meanwhile (about a page-cache
    /// read and an open each).
    pub fn purge_dead_where(&self, workspace: &str, filter: DeadFilter, limit: usize) -> Completion<usize> {
        let workspace = workspace.to_owned();
        self.request(|done| Request::DeadPurgeWhere {
            workspace,
            filter,
            limit,
            done,
        })
    }

    /// Compacts now: seals the active segment, carries every live record of the sealed
    /// segments forward and deletes them (ignores the compaction thresholds). All of it runs
    /// in one go on the writer thread, so appends wait until it is done (seconds on a
    /// multi-GiB journal); for periodic retention use [`Journal::enforce_retention`].
    pub fn compact_now(&self) -> Completion<CompactionReport> {
        self.request(Request::Compact)
    }

    /// Ensures no record appended before `cutoff_ms` (unix ms, the journal's clock) stays on
    /// disk except live ones (unfinished messages, dead letters) and idempotency keys (carried
    /// forward without bodies): rolls the active segment if it holds a record older than the
    /// cutoff, and marks every older segment for the normal step-wise background compaction
    /// regardless of the usual thresholds.
    ///
    /// Returns at once (after the roll, if any: one sync and a new segment file); the work
    /// proceeds `compaction_step_bytes` at a time between group commits, oldest segment first,
    /// and [`JournalStats::retention_pending_segments`] shows how much is left. Meant to be
    /// called periodically with `now - window`: the active segment is rolled only once it
    /// holds a record older than the cutoff, so calls every minute with a 24 h window roll
    /// it at most once per 24 h, however little traffic there is. A segment holding only
    /// live records is rewritten too (once per window): the journal does not track which
    /// records of a segment are still needed, only how many messages are live there.
    /// Unlike [`Journal::compact_now`], appends are never stalled for more than one step.
    pub fn enforce_retention(&self, cutoff_ms: u64) -> Completion<RetentionReport> {
        self.request(|done| Request::Retention { cutoff_ms, done })
    }

    /// Syncs what is queued, stops the writer and releases the lock.
    pub fn close(mut self) -> Result<()> {
        let r = self.flush().wait();
        self.shutdown();
        r.map(|_| ())
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
