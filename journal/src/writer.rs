//! The writer thread: owns the active segment, does group commits, keeps the index,
//! compacts old segments and serves dead-letter operations and status queries.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::completion::Completer;
use crate::config::{JournalConfig, SyncMode};
use crate::error::{JournalError, Result};
use crate::journal::{CompactionReport, Lsn, RetentionReport, Shared};
use crate::record::{
    AcceptedMessage, DecodeError, FRAME_HEADER, MessageId, OpenError, Record, accepted_head, decode_opened,
    frame_into, kind,
};
use crate::replay::{DeadLetter, Pending, PendingState};
use crate::seal::OpenFailure;
use crate::segment::{HEADER_LEN, Item, SegmentReader, create_segment, segment_path, sync_dir};
use crate::state::{Index, Meta, MetaState, SegInfo};
use crate::status::{DeadFilter, MessageStatus};

pub(crate) enum Request {
    Append {
        bytes: Vec<u8>,
        records: Vec<Record>,
        done: Option<Completer<Lsn>>,
    },
    Flush(Completer<Lsn>),
    /// A page of dead letters, of one workspace or of all.
    DeadList {
        workspace: Option<String>,
        after: Option<MessageId>,
        limit: usize,
        done: Completer<Vec<DeadLetter>>,
    },
    DeadGet {
        id: MessageId,
        done: Completer<Option<DeadLetter>>,
    },
    DeadReplay {
        id: MessageId,
        done: Completer<Pending>,
    },
    DeadPurge {
        id: MessageId,
        done: Completer<()>,
    },
    DeadPurgeAll(Completer<usize>),
    Status {
        id: MessageId,
        done: Completer<Option<MessageStatus>>,
    },
    FinishedSince {
        since_ms: u64,
        limit: usize,
        done: Completer<Vec<MessageStatus>>,
    },
    DeadPurgeOlder {
        workspace: Option<String>,
        cutoff_ms: u64,
        limit: usize,
        done: Completer<usize>,
    },
    DeadPurgeWhere {
        workspace: String,
        filter: DeadFilter,
        limit: usize,
        done: Completer<usize>,
    },
    Compact(Completer<CompactionReport>),
    Retention {
        cutoff_ms: u64,
        done: Completer<RetentionReport>,
    },
}

/// Runs after the next sync: `Ok` when it succeeded, the failure message otherwise.
type Waiter = Box<dyn FnOnce(std::result::Result<Lsn, &str>) + Send>;

struct Job {
    seg: u64,
    reader: SegmentReader,
    done: bool,
}

pub(crate) struct Writer {
    dir: PathBuf,
    cfg: JournalConfig,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    index: Index,
    active: File,
    active_seg: u64,
    /// Bytes in the active file.
    written: u64,
    /// Bytes for the active file not yet written (they start at `written`).
    buf: Vec<u8>,
    /// Written but not yet synced.
    dirty: bool,
    force_sync: bool,
    waiters: Vec<Waiter>,
    job: Option<Job>,
    /// A segment compaction could not empty (unreadable records); not retried.
    stuck: Option<u64>,
    readers: HashMap<u64, File>,
    max_len: usize,
    poisoned: Option<String>,
    /// Bytes pushed since start (paces compaction).
    pushed: u64,
    /// `first_append_ms` of the active segment, cached here so that an append checks a field
    /// instead of looking the segment up.
    active_first_ms: Option<u64>,
    /// Retention marked every segment up to this one for compaction (they are compacted
    /// oldest first; none newer than it is ever marked after the fact).
    retention_upto: Option<u64>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: PathBuf,
        cfg: JournalConfig,
        rx: Receiver<Request>,
        shared: Arc<Shared>,
        index: Index,
        active: File,
        active_seg: u64,
        written: u64,
    ) -> Writer {
        let max_len = cfg.max_batch_len() as usize;
        let active_first_ms = index.segs.get(&active_seg).and_then(|s| s.first_append_ms);
        Writer {
            dir,
            cfg,
            rx,
            shared,
            index,
            active,
            active_seg,
            written,
            buf: Vec::with_capacity(1 << 20),
            dirty: false,
            force_sync: false,
            waiters: Vec::new(),
            job: None,
            stuck: None,
            readers: HashMap::new(),
            max_len,
            poisoned: None,
            pushed: 0,
            active_first_ms,
            retention_upto: None,
        }
    }

    pub(crate) fn run(mut self) {
        let now = self.cfg.clock.now_ms();
        self.maintain(now);
        loop {
            let busy = self.job.is_some();
            let first = if busy {
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv_timeout(self.cfg.maintenance_interval) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut disconnected = false;
            let before = self.pushed;
            if let Some(r) = first {
                self.handle(r);
                while self.buf.len() < self.cfg.max_batch_bytes {
                    match self.rx.try_recv() {
                        Ok(r) => self.handle(r),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
            }
            // Compaction keeps pace with ingest: it reads at least twice what was appended.
            let ingested = (self.pushed - before) as usize;
            let mut budget = self.cfg.compaction_step_bytes.max(2 * ingested);
            while budget > 0 && self.job.is_some() && self.poisoned.is_none() {
                let now = self.cfg.clock.now_ms();
                match self.compaction_step(now, budget) {
                    Ok(used) => budget = budget.saturating_sub(used.max(1) as usize),
                    Err(e) => self.fail(&e),
                }
                if self.job.as_ref().is_some_and(|j| j.done) {
                    // Make the carried records durable, delete the segment, maybe start the next.
                    self.commit();
                    self.maintain(now);
                } else {
                    break;
                }
            }
            self.commit();
            let now = self.cfg.clock.now_ms();
            self.maintain(now);
            if disconnected {
                break;
            }
        }
        // Drain what is left and make it durable.
        while let Ok(r) = self.rx.try_recv() {
            self.handle(r);
        }
        self.force_sync = true;
        self.commit();
    }

    fn handle(&mut self, r: Request) {
        if let Some(msg) = &self.poisoned {
            let e = JournalError::Poisoned(msg.clone());
            match r {
                Request::Append { bytes, done, .. } => {
                    self.shared
                        .queued_bytes
                        .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                    if let Some(d) = done {
                        d.complete(Err(e));
                    }
                }
                Request::Flush(d) => d.complete(Err(e)),
                Request::DeadList { done, .. } => done.complete(Err(e)),
                Request::DeadGet { done, .. } => done.complete(Err(e)),
                Request::DeadReplay { done, .. } => done.complete(Err(e)),
                Request::DeadPurge { done, .. } => done.complete(Err(e)),
                Request::DeadPurgeAll(done) => done.complete(Err(e)),
                Request::Status { done, .. } => done.complete(Err(e)),
                Request::FinishedSince { done, .. } => done.complete(Err(e)),
                Request::DeadPurgeOlder { done, .. } => done.complete(Err(e)),
                Request::DeadPurgeWhere { done, .. } => done.complete(Err(e)),
                Request::Compact(done) => done.complete(Err(e)),
                Request::Retention { done, .. } => done.complete(Err(e)),
            }
            return;
        }
        match r {
            Request::Append {
                bytes,
                mut records,
                done,
            } => {
                self.shared
                    .queued_bytes
                    .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                match self.push(&bytes, &mut records) {
                    Ok(lsn) => {
                        if let Some(d) = done {
                            self.waiters
                                .push(Box::new(move |r| d.complete(sync_result(r).map(|_| lsn))));
                        }
                    }
                    Err(e) => {
                        self.fail(&e);
                        if let Some(d) = done {
                            d.complete(Err(e));
                        }
                    }
                }
            }
            Request::Flush(d) => {
                self.force_sync = true;
                self.waiters.push(Box::new(move |r| d.complete(sync_result(r))));
            }
            Request::DeadList {
                workspace,
                after,
                limit,
                done,
            } => {
                let r = match workspace.as_deref().map(|w| self.index.origins.find_workspace(w)) {
                    None => self.dead_page(None, after, limit),
                    Some(Some(ws)) => self.dead_page(Some(ws), after, limit),
                    // A workspace the journal has never seen has no dead letters.
                    Some(None) => Ok(Vec::new()),
                };
                self.after_sync(done, r);
            }
            Request::Status { id, done } => {
                let st = self.index.status(id, self.cfg.clock.now_ms());
                self.after_sync(done, Ok(st));
            }
            Request::FinishedSince {
                since_ms,
                limit,
                done,
            } => {
                let v = self
                    .index
                    .finished_since(since_ms, self.cfg.clock.now_ms(), limit);
                self.after_sync(done, Ok(v));
            }
            Request::DeadPurgeOlder {
                workspace,
                cutoff_ms,
                limit,
                done,
            } => {
                let ws = match &workspace {
                    Some(name) => match self.index.origins.find_workspace(name) {
                        Some(ws) => Some(ws),
                        None => return done.complete(Ok(0)),
                    },
                    None => None,
                };
                let older = |m: Option<&Meta>| {
                    m.is_some_and(|m| matches!(&m.state, MetaState::Dead(d) if d.dead_at_ms < cutoff_ms))
                };
                let ids: Vec<MessageId> = match ws {
                    None => self
                        .index
                        .dead
                        .iter()
                        .filter(|id| older(self.index.msgs.get(id)))
                        .take(limit)
                        .copied()
                        .collect(),
                    Some(ws) => dead_of(&self.index, ws, None)
                        .filter(|id| older(self.index.msgs.get(id)))
                        .take(limit)
                        .collect(),
                };
                let r = self.purge(ids);
                self.after_sync(done, r);
            }
            Request::DeadPurgeWhere {
                workspace,
                filter,
                limit,
                done,
            } => {
                let r = self.purge_where(&workspace, &filter, limit);
                self.after_sync(done, r);
            }
            Request::DeadGet { id, done } => match self.dead_letter(id) {
                Ok(d) => self
                    .waiters
                    .push(Box::new(move |r| done.complete(sync_result(r).map(|_| d)))),
                Err(e) => done.complete(Err(e)),
            },
            Request::DeadReplay { id, done } => {
                let msg = match self.dead_letter(id) {
                    Ok(Some(d)) => d.message,
                    Ok(None) => return done.complete(Err(JournalError::NotFound(id))),
                    Err(e) => return done.complete(Err(e)),
                };
                let mut rec = Record::DeadReplayed {
                    id,
                    at_ms: self.cfg.clock.now_ms(),
                };
                match self.push(&rec.encode(), std::slice::from_mut(&mut rec)) {
                    Ok(_) => {
                        let p = Pending {
                            message: msg,
                            attempts: 0,
                            state: PendingState::Queued,
                        };
                        self.waiters
                            .push(Box::new(move |r| done.complete(sync_result(r).map(|_| p))));
                    }
                    Err(e) => {
                        self.fail(&e);
                        done.complete(Err(e));
                    }
                }
            }
            Request::DeadPurge { id, done } => {
                if !self.index.dead.contains(&id) {
                    return done.complete(Err(JournalError::NotFound(id)));
                }
                let mut rec = Record::DeadPurged { id };
                match self.push(&rec.encode(), std::slice::from_mut(&mut rec)) {
                    Ok(_) => self
                        .waiters
                        .push(Box::new(move |r| done.complete(sync_result(r).map(|_| ())))),
                    Err(e) => {
                        self.fail(&e);
                        done.complete(Err(e));
                    }
                }
            }
            Request::DeadPurgeAll(done) => {
                let ids: Vec<MessageId> = self.index.dead.iter().copied().collect();
                let r = self.purge(ids);
                self.after_sync(done, r);
            }
            Request::Compact(done) => {
                let r = self.compact_all();
                match r {
                    Ok(rep) => done.complete(Ok(rep)),
                    Err(e) => {
                        self.fail(&e);
                        done.complete(Err(e));
                    }
                }
            }
            Request::Retention { cutoff_ms, done } => match self.enforce_retention(cutoff_ms) {
                Ok(rep) => done.complete(Ok(rep)),
                Err(e) => {
                    self.fail(&e);
                    done.complete(Err(e));
                }
            },
        }
    }

    /// Rolls the active segment if it holds a record appended before `cutoff_ms`, then marks
    /// every sealed segment up to the newest one holding such a record; `maintain` compacts
    /// them step by step.
    fn enforce_retention(&mut self, cutoff_ms: u64) -> Result<RetentionReport> {
        let old = |first: Option<u64>| first.is_some_and(|t| t < cutoff_ms);
        // Only a segment that holds an old record is rolled: right after a roll the active
        // segment holds nothing (or records carried at the roll's time), so a periodic call
        // rolls again only once a whole window of its traffic has aged past the cutoff.
        let rolled_active = old(self.active_first_ms);
        if rolled_active {
            self.roll()?;
        }
        // Times normally grow with segment numbers, but a clock set back would break that:
        // take the newest old segment, so every segment before it is compacted as well.
        let newest_old = self
            .index
            .segs
            .range(..self.active_seg)
            .rev()
            .find(|(_, s)| old(s.first_append_ms))
            .map(|(&n, _)| n);
        if let Some(n) = newest_old {
            self.retention_upto = Some(self.retention_upto.map_or(n, |u| u.max(n)));
        }
        let segments_pending = self.publish_retention();
        if let Some(stuck) = self.stuck
            && self.retention_upto.is_some_and(|u| stuck <= u)
        {
            tracing::warn!(
                segment = stuck,
                "journal: retention cannot proceed past a segment compaction could not empty \
                 (unreadable records); older bodies stay on disk"
            );
        }
        Ok(RetentionReport {
            rolled_active,
            segments_pending,
        })
    }

    /// Publishes how many segments retention still has to compact (and forgets the mark once
    /// none is left); returns that number.
    fn publish_retention(&mut self) -> usize {
        let pending = match self.retention_upto {
            Some(upto) => self.index.segs.range(..=upto).count(),
            None => 0,
        };
        if pending == 0 {
            self.retention_upto = None;
        }
        self.shared
            .retention_pending_segments
            .store(pending as u64, Ordering::Relaxed);
        pending
    }

    /// Queues encoded frames for the active segment (rolling first if they do not fit) and
    /// applies their records (one per frame) to the index. Returns the LSN after them.
    fn push(&mut self, bytes: &[u8], records: &mut [Record]) -> Result<Lsn> {
        self.push_frames(bytes, |index, i, seg, off, size| {
            index.apply(&mut records[i], seg, off, size, u32::MAX);
        })
    }

    /// Queues encoded frames for the active segment (rolling first if they do not fit);
    /// `apply(index, i, segment, offset, size)` indexes the `i`-th frame where it landed.
    fn push_frames(
        &mut self,
        bytes: &[u8],
        mut apply: impl FnMut(&mut Index, usize, u64, u64, u64),
    ) -> Result<Lsn> {
        if self.written + self.buf.len() as u64 + bytes.len() as u64 > self.cfg.segment_size
            && self.written + self.buf.len() as u64 > HEADER_LEN as u64
        {
            self.roll()?;
        }
        if self.active_first_ms.is_none() && !bytes.is_empty() {
            let now = self.cfg.clock.now_ms();
            self.active_first_ms = Some(now);
            if let Some(s) = self.index.segs.get_mut(&self.active_seg) {
                s.first_append_ms = Some(now);
            }
        }
        let base = self.written + self.buf.len() as u64;
        self.buf.extend_from_slice(bytes);
        self.pushed += bytes.len() as u64;
        let (mut off, mut n) = (0usize, 0usize);
        while off + FRAME_HEADER <= bytes.len() {
            let len =
                u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]) as usize;
            let total = FRAME_HEADER + len;
            apply(
                &mut self.index,
                n,
                self.active_seg,
                base + off as u64,
                total as u64,
            );
            off += total;
            n += 1;
        }
        self.shared.records.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Lsn::new(self.active_seg, base + bytes.len() as u64))
    }

    /// Resolves `done` with `r` after the next sync (what it reports must be durable), or now
    /// with the error.
    fn after_sync<T: Send + 'static>(&mut self, done: Completer<T>, r: Result<T>) {
        match r {
            Ok(v) => self
                .waiters
                .push(Box::new(move |s| done.complete(sync_result(s).map(|_| v)))),
            Err(e) => done.complete(Err(e)),
        }
    }

    /// Dead letters in id order after `after` (of one interned workspace, or all), at most
    /// `limit`. Letters found crypto-shredded are dropped on the way and the page refilled.
    fn dead_page(
        &mut self,
        ws: Option<u32>,
        mut after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        while out.len() < limit {
            let want = limit - out.len();
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let ids: Vec<MessageId> = match ws {
                None => self
                    .index
                    .dead
                    .range((lower, Bound::Unbounded))
                    .take(want)
                    .copied()
                    .collect(),
                Some(ws) => dead_of(&self.index, ws, after).take(want).collect(),
            };
            if ids.is_empty() {
                break;
            }
            for id in ids {
                after = Some(id);
                if let Some(d) = self.dead_letter(id)? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Writes `DeadPurged` for each of `ids` (dead letters); returns how many.
    fn purge(&mut self, ids: Vec<MessageId>) -> Result<usize> {
        let n = ids.len();
        for id in ids {
            let mut rec = Record::DeadPurged { id };
            if let Err(e) = self.push(&rec.encode(), std::slice::from_mut(&mut rec)) {
                self.fail(&e);
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Purges up to `limit` dead letters of `workspace` that match `filter`. A device filter
    /// is answered from memory; a recipient filter reads and opens every dead letter of the
    /// workspace (on this thread: deletion requests are rare).
    fn purge_where(&mut self, workspace: &str, filter: &DeadFilter, limit: usize) -> Result<usize> {
        let Some(ws) = self.index.origins.find_workspace(workspace) else {
            return Ok(0);
        };
        let candidates: Vec<MessageId> = dead_of(&self.index, ws, None).collect();
        let mut hits = Vec::new();
        for id in candidates {
            if hits.len() >= limit {
                break;
            }
            let Some(meta) = self.index.msgs.get(&id).cloned() else {
                continue;
            };
            let hit = match filter {
                DeadFilter::Device(d) => *self.index.origins.get(meta.origin).device == **d,
                DeadFilter::Recipient(r) => self.read_accepted(id, &meta)?.is_some_and(|a| a.recipient == *r),
            };
            if hit {
                hits.push(id);
            }
        }
        self.purge(hits)
    }

    /// Writes the buffer to the active file (no sync).
    fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.active.write_all_at(&self.buf, self.written) {
            return Err(JournalError::io(
                "write",
                segment_path(&self.dir, self.active_seg),
                e,
            ));
        }
        let n = self.buf.len() as u64;
        self.written += n;
        self.buf.clear();
        self.dirty = true;
        if let Some(s) = self.index.segs.get_mut(&self.active_seg) {
            s.size = self.written;
        }
        self.shared.disk_bytes.fetch_add(n, Ordering::Relaxed);
        self.shared.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if !self.dirty && !self.force_sync {
            return Ok(());
        }
        // One clock pair per group commit, against a sync of 50 µs and more: free.
        let started = std::time::Instant::now();
        let r = match self.cfg.sync {
            SyncMode::None => Ok(()),
            SyncMode::Full => self.active.sync_all(),
            SyncMode::Data => self.active.sync_data(),
        };
        let took = started.elapsed();
        r.map_err(|e| JournalError::io("fdatasync", segment_path(&self.dir, self.active_seg), e))?;
        self.shared.record_sync(took);
        self.dirty = false;
        self.force_sync = false;
        self.shared
            .durable_lsn
            .store(Lsn::new(self.active_seg, self.written).0, Ordering::Release);
        Ok(())
    }

    /// Seals the active segment (durably, trimmed to its data) and starts the next one.
    fn roll(&mut self) -> Result<()> {
        self.write_out()?;
        self.force_sync |= self.dirty;
        self.sync()?;
        let path = segment_path(&self.dir, self.active_seg);
        let len = self
            .active
            .metadata()
            .map_err(|e| JournalError::io("stat segment", &path, e))?
            .len();
        if len != self.written {
            self.active
                .set_len(self.written)
                .map_err(|e| JournalError::io("trim segment", &path, e))?;
            if self.cfg.durable() {
                self.active
                    .sync_all()
                    .map_err(|e| JournalError::io("fsync segment", &path, e))?;
            }
        }
        let n = self.active_seg + 1;
        let f = create_segment(&self.dir, n, self.cfg.durable(), self.cfg.prealloc_size())?;
        self.active = f;
        self.active_seg = n;
        self.written = HEADER_LEN as u64;
        self.active_first_ms = None;
        self.index.segs.insert(
            n,
            SegInfo {
                size: HEADER_LEN as u64,
                ..Default::default()
            },
        );
        self.shared
            .disk_bytes
            .fetch_add(HEADER_LEN as u64, Ordering::Relaxed);
        self.shared.segments_created.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One group commit: write, sync, then resolve every waiter.
    fn commit(&mut self) {
        if self.poisoned.is_some() {
            let msg = self.poisoned.clone().unwrap_or_default();
            for w in self.waiters.drain(..) {
                w(Err(&msg));
            }
            return;
        }
        let r = self.write_out().and_then(|_| self.sync());
        if let Err(e) = r {
            self.fail(&e);
            let msg = self.poisoned.clone().unwrap_or_default();
            for w in self.waiters.drain(..) {
                w(Err(&msg));
            }
            return;
        }
        let lsn = Lsn(self.shared.durable_lsn.load(Ordering::Relaxed));
        for w in self.waiters.drain(..) {
            w(Ok(lsn));
        }
    }

    /// Stops accepting work after a storage failure.
    fn fail(&mut self, e: &JournalError) {
        if self.poisoned.is_none() {
            let msg = e.to_string();
            tracing::error!(error = %msg, "journal: storage failure, refusing further writes");
            self.shared.poison(msg.clone());
            self.poisoned = Some(msg);
        }
        // No more compaction either (and no busy loop waiting for it).
        self.job = None;
    }

    fn dead_letter(&mut self, id: MessageId) -> Result<Option<DeadLetter>> {
        if !self.index.dead.contains(&id) {
            return Ok(None);
        }
        let Some(meta) = self.index.msgs.get(&id).cloned() else {
            return Ok(None);
        };
        let MetaState::Dead(d) = &meta.state else {
            return Ok(None);
        };
        let Some(message) = self.read_accepted(id, &meta)? else {
            return Ok(None);
        };
        Ok(Some(DeadLetter {
            message,
            attempts: d.attempts,
            last_code: d.last_code,
            last_detail: d.last_detail.clone(),
            dead_at_ms: d.dead_at_ms,
        }))
    }

    /// Reads (and opens) the `Accepted` record of a live message. `None` when its workspace
    /// was crypto-shredded since it was indexed: the message is then dropped as deleted.
    fn read_accepted(&mut self, id: MessageId, meta: &Meta) -> Result<Option<AcceptedMessage>> {
        if meta.home_seg == self.active_seg {
            self.write_out()?;
        }
        let path = segment_path(&self.dir, meta.home_seg);
        let file = match self.readers.get(&meta.home_seg) {
            Some(f) => f,
            None => {
                let f = File::open(&path).map_err(|e| JournalError::io("open segment", &path, e))?;
                self.readers.entry(meta.home_seg).or_insert(f)
            }
        };
        let body =
            SegmentReader::read_frame_at(file, &path, meta.home_off, self.max_len).map_err(|e| match e {
                JournalError::Corrupt { offset, reason, .. } => JournalError::Corrupt {
                    segment: meta.home_seg,
                    offset,
                    reason,
                },
                e => e,
            })?;
        match decode_opened(&body, self.cfg.sealer.as_deref()) {
            Ok(Record::Accepted(a)) => Ok(Some(a)),
            Ok(other) => Err(JournalError::Corrupt {
                segment: meta.home_seg,
                offset: meta.home_off,
                reason: format!("expected an Accepted record, found kind {}", other.kind()),
            }),
            Err(OpenError::Open(OpenFailure::KeyGone)) => {
                self.index.finish(id, true);
                self.shared.shredded_records.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(JournalError::Corrupt {
                segment: meta.home_seg,
                offset: meta.home_off,
                reason: e.to_string(),
            }),
        }
    }

    // ---- compaction ----

    /// Deletes expired segments from the front, finishes a compaction job, starts the next.
    fn maintain(&mut self, now: u64) {
        self.index.recent.expire(now);
        if self.poisoned.is_some() {
            return;
        }
        if let Err(e) = self.maintain_inner(now, false) {
            self.fail(&e);
        }
    }

    fn maintain_inner(&mut self, now: u64, forced: bool) -> Result<u64> {
        let mut deleted = 0;
        // A finished job: everything it carried is synced by now (maintain runs after commit).
        if self.job.as_ref().is_some_and(|j| j.done) && !self.dirty && self.buf.is_empty() {
            let Some(job) = self.job.take() else { return Ok(0) };
            let live = self.index.segs.get(&job.seg).map_or(0, |s| s.live);
            if live == 0 {
                self.delete_segment(job.seg)?;
                self.shared.compactions.fetch_add(1, Ordering::Relaxed);
                deleted += 1;
            } else {
                tracing::error!(
                    segment = job.seg,
                    live,
                    "journal: compaction could not carry every live message forward (unreadable records); \
                     segment kept"
                );
                self.stuck = Some(job.seg);
            }
        }
        // Only the oldest segment is ever deleted: a terminal record in a later segment must
        // not disappear while an older `Accepted` it finishes is still on disk.
        let mut removed_any = false;
        while self.job.is_none() {
            let Some((&seg, info)) = self.index.segs.first_key_value() else {
                break;
            };
            if seg == self.active_seg || info.live > 0 || info.idem_until_ms > now {
                break;
            }
            self.remove_segment_file(seg)?;
            removed_any = true;
            deleted += 1;
        }
        if removed_any {
            self.sync_dir()?;
        }
        if self.job.is_none()
            && !forced
            && let Some(upto) = self.retention_upto
            && let Some(&seg) = self.index.segs.keys().next()
            && seg <= upto
            && seg != self.active_seg
            && Some(seg) != self.stuck
        {
            // Retention: the oldest segment holds a record older than a cutoff. It went in the
            // loop above if nothing in it is needed any more; otherwise it is rewritten
            // whatever its live ratio (live records and keys carried, bodies dropped).
            self.start_job(seg)?;
        }
        if self.job.is_none() && !forced {
            let sealed = self.index.segs.len().saturating_sub(1);
            if sealed > self.cfg.compaction_trigger_segments
                && let Some((&seg, info)) = self.index.segs.first_key_value()
                && seg != self.active_seg
                && Some(seg) != self.stuck
            {
                // Rewrite the oldest segment when it is mostly garbage, or when the whole log
                // is: then live data in front of the garbage is moved out of the way once per
                // pass over the log (write amplification <= 1 / (1 - ratio)).
                let r = self.cfg.compaction_max_live_ratio;
                let payload = |s: &SegInfo| s.size.saturating_sub(HEADER_LEN as u64).max(1) as f64;
                let oldest_ok = info.live_bytes as f64 <= r * payload(info);
                let (live, all) = self.index.segs.values().fold((0f64, 0f64), |(l, a), s| {
                    (l + s.live_bytes as f64, a + payload(s))
                });
                if oldest_ok || live <= r * all {
                    self.start_job(seg)?;
                }
            }
        }
        Ok(deleted)
    }

    fn start_job(&mut self, seg: u64) -> Result<()> {
        let reader = SegmentReader::open(&self.dir, seg, self.max_len, self.cfg.compaction_step_bytes)?;
        self.job = Some(Job {
            seg,
            reader,
            done: false,
        });
        Ok(())
    }

    fn remove_segment_file(&mut self, seg: u64) -> Result<()> {
        let path = segment_path(&self.dir, seg);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::io("remove segment", &path, e)),
        }
        self.readers.remove(&seg);
        if let Some(info) = self.index.segs.remove(&seg) {
            self.shared.disk_bytes.fetch_sub(info.size, Ordering::Relaxed);
        }
        self.shared.segments_deleted.fetch_add(1, Ordering::Relaxed);
        if self.retention_upto.is_some() {
            self.publish_retention();
        }
        Ok(())
    }

    fn delete_segment(&mut self, seg: u64) -> Result<()> {
        self.remove_segment_file(seg)?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        if self.cfg.sync == SyncMode::None {
            Ok(())
        } else {
            sync_dir(&self.dir)
        }
    }

    /// Processes up to `budget` bytes of the job's segment, carrying live records forward.
    /// Returns the bytes of the old segment consumed.
    fn compaction_step(&mut self, now: u64, budget: usize) -> Result<u64> {
        let Some(mut job) = self.job.take() else {
            return Ok(0);
        };
        let start = job.reader.offset();
        let r = self.compaction_step_inner(&mut job, now, budget);
        let used = job.reader.offset().saturating_sub(start);
        self.job = Some(job);
        r.map(|_| used)
    }

    fn compaction_step_inner(&mut self, job: &mut Job, now: u64, budget: usize) -> Result<()> {
        let start = job.reader.offset();
        let window = self.index.window_ms;
        let mut bytes = Vec::new();
        while !job.done && job.reader.offset() - start < budget as u64 {
            bytes.clear();
            let mut carried = 0u64;
            match job.reader.next()? {
                Item::End | Item::Zero { .. } => job.done = true,
                Item::Bad {
                    offset,
                    reason,
                    skip_len,
                } => {
                    tracing::error!(segment = job.seg, offset, %reason, "journal: corrupt record met by compaction");
                    self.shared.compaction_corruptions.fetch_add(1, Ordering::Relaxed);
                    match skip_len {
                        Some(s) => job.reader.seek(offset + s),
                        None => job.done = true,
                    }
                }
                Item::Record { offset, body, .. } => match accepted_head(body) {
                    Ok(Some(head)) => match self.index.msgs.get(&head.id) {
                        Some(m) if m.home_seg == job.seg && m.home_off == offset => {
                            // Carried byte for byte: a sealed record is neither opened nor
                            // re-sealed, a plaintext one not decoded and re-encoded.
                            let mut state: Vec<Record> = state_record(head.id, m).into_iter().collect();
                            frame_into(&mut bytes, body);
                            for r in &state {
                                r.encode_into(&mut bytes);
                            }
                            self.push_frames(&bytes, |index, i, seg, off, size| {
                                if i == 0 {
                                    index.accept(&head, seg, off, size, u32::MAX);
                                } else {
                                    index.apply(&mut state[i - 1], seg, off, size, u32::MAX);
                                }
                            })?;
                            carried = 1 + state.len() as u64;
                        }
                        Some(_) => {}
                        // Finished, or dropped (crypto-shredded): only the key, which is never
                        // sealed, is kept while in the window.
                        None if head.accepted_at_ms.saturating_add(window) > now => {
                            let mut r = Record::IdempotencyKept {
                                workspace: head.workspace.to_owned(),
                                idempotency_key: head.idempotency_key.to_owned(),
                                id: head.id,
                                accepted_at_ms: head.accepted_at_ms,
                            };
                            r.encode_into(&mut bytes);
                            self.push(&bytes, std::slice::from_mut(&mut r))?;
                            carried = 1;
                        }
                        None => {}
                    },
                    Ok(None) => match body[0] {
                        kind::IDEMPOTENCY_KEPT => match Record::decode_body(body) {
                            Ok(
                                mut r @ Record::IdempotencyKept {
                                    accepted_at_ms, id, ..
                                },
                            ) if accepted_at_ms.saturating_add(window) > now
                                && !self.index.msgs.contains_key(&id) =>
                            {
                                r.encode_into(&mut bytes);
                                self.push(&bytes, std::slice::from_mut(&mut r))?;
                                carried = 1;
                            }
                            Ok(_) => {}
                            Err(e) => self.compaction_corruption(job.seg, offset, &e),
                        },
                        // Transitions and inbound records: nothing to carry.
                        kind::DISPATCHED
                        | kind::SENT
                        | kind::FAILED
                        | kind::RETRY_SCHEDULED
                        | kind::DEAD
                        | kind::DEAD_REPLAYED
                        | kind::DEAD_PURGED
                        | kind::INBOUND
                        | kind::INBOUND_SEALED => {}
                        k => self.compaction_corruption(job.seg, offset, &DecodeError::UnknownKind(k)),
                    },
                    Err(e) => self.compaction_corruption(job.seg, offset, &e),
                },
            }
            if carried > 0 {
                self.shared.carried_records.fetch_add(carried, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn compaction_corruption(&self, seg: u64, offset: u64, e: &DecodeError) {
        tracing::error!(segment = seg, offset, error = %e, "journal: undecodable record met by compaction");
        self.shared.compaction_corruptions.fetch_add(1, Ordering::Relaxed);
    }

    /// Forced compaction of every sealed segment (after sealing the active one).
    fn compact_all(&mut self) -> Result<CompactionReport> {
        let now = self.cfg.clock.now_ms();
        let mut rep = CompactionReport {
            bytes_before: self.shared.disk_bytes.load(Ordering::Relaxed) + self.buf.len() as u64,
            ..Default::default()
        };
        let carried0 = self.shared.carried_records.load(Ordering::Relaxed);
        if self.written + self.buf.len() as u64 > HEADER_LEN as u64 {
            self.roll()?;
        }
        let targets: Vec<u64> = self
            .index
            .segs
            .keys()
            .copied()
            .filter(|&s| s < self.active_seg)
            .collect();
        for seg in targets {
            if Some(seg) == self.stuck {
                break; // only the oldest segment may go; it cannot
            }
            if !self.index.segs.contains_key(&seg) {
                continue;
            }
            let info = &self.index.segs[&seg];
            let deletable = info.live == 0 && info.idem_until_ms <= now;
            if self.job.as_ref().is_none_or(|j| j.seg != seg) {
                if let Some(j) = self.job.take() {
                    // A different job cannot be older than `seg` (segments go oldest first).
                    self.job = Some(j);
                    continue;
                }
                if deletable {
                    self.delete_segment(seg)?;
                    rep.segments_deleted += 1;
                    continue;
                }
                self.start_job(seg)?;
            }
            while self.job.as_ref().is_some_and(|j| !j.done) {
                self.compaction_step(now, usize::MAX)?;
            }
            self.write_out()?;
            self.sync()?;
            let before = self.shared.compactions.load(Ordering::Relaxed);
            self.maintain_inner(now, true)?;
            if self.shared.compactions.load(Ordering::Relaxed) > before {
                rep.segments_compacted += 1;
            }
        }
        rep.records_carried = self.shared.carried_records.load(Ordering::Relaxed) - carried0;
        self.write_out()?;
        self.sync()?;
        rep.bytes_after = self.shared.disk_bytes.load(Ordering::Relaxed);
        Ok(rep)
    }
}

/// The record that restores a live message's state after its `Accepted` is carried forward.
fn state_record(id: MessageId, m: &Meta) -> Option<Record> {
    match &m.state {
        MetaState::Queued => None,
        MetaState::InFlight { attempt } => Some(Record::Dispatched {
            id,
            attempt: *attempt,
            at_ms: m.updated_at_ms,
        }),
        MetaState::Retry {
            attempt,
            due_at_ms,
            last_code,
        } => Some(Record::RetryScheduled {
            id,
            attempt: *attempt,
            due_at_ms: *due_at_ms,
            last_code: *last_code,
        }),
        MetaState::Dead(d) => Some(Record::Dead {
            id,
            attempts: d.attempts,
            last_code: d.last_code,
            last_detail: d.last_detail.clone(),
            at_ms: d.dead_at_ms,
        }),
    }
}

/// The dead letters of interned workspace `ws` after `after`, in id order.
fn dead_of(index: &Index, ws: u32, after: Option<MessageId>) -> impl Iterator<Item = MessageId> + '_ {
    let lower = match after {
        Some(a) => Bound::Excluded((ws, a)),
        None => Bound::Included((ws, MessageId([0; 16]))),
    };
    index
        .dead_ws
        .range((lower, Bound::Included((ws, MessageId([0xff; 16])))))
        .map(|&(_, id)| id)
}

fn sync_result(r: std::result::Result<Lsn, &str>) -> Result<Lsn> {
    r.map_err(|m| JournalError::Poisoned(m.to_string()))
}
