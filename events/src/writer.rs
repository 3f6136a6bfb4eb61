//! The single writer thread: merges queued requests into one durable transaction (group
//! commit), assigns sequence numbers in commit order, chunks and seals events.
//!
//! Each request is applied in two phases inside the group's transaction: first everything
//! that can fail because of this request alone (duplicate lookups, sealing), then the writes.
//! A request that fails in the first phase is answered with its error and leaves no trace;
//! the others in the group still commit. An engine error fails the whole group, and after it
//! the writer refuses further work (the page cache can no longer be trusted).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};
use waping_journal::RecordSealer;

use crate::codec::{self, FORMAT_PLAIN, FORMAT_SEALED, RowHeader};
use crate::error::{EventStoreError, StorageContext};
use crate::model::EventId;
use crate::store::{
    Appended, BATCHES, CURSORS, Counters, DEAD, DeadSelector, ID_SEQS, IDS, LOG, META, OWED, OWED_DUE,
    Outcome, REF_DEAD, REF_OWED, REFS, RecordReport, Removed, SweepReport,
};

/// An append request, validated and encoded on the caller's thread.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// One per workspace, in first-seen order.
    pub(crate) groups: Vec<Group>,
    /// Events in the request (answers go back in request order).
    pub(crate) count: usize,
}

/// One workspace's events of a request.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) workspace: String,
    /// The events encoded one after the other (`codec::push_event_encoded`).
    pub(crate) body: Vec<u8>,
    pub(crate) entries: Vec<Entry>,
}

/// One event of a [`Group`]; its bytes end at `end` and start where the previous one ended.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) index: usize,
    pub(crate) id: EventId,
    pub(crate) dedupe: bool,
    pub(crate) at_ms: u64,
    pub(crate) end: usize,
    pub(crate) owed: Option<Box<OwedTo>>,
}

/// Endpoints an event is owed to whatever their filters (rare: boxed).
#[derive(Debug)]
pub(crate) struct OwedTo {
    /// Sorted, without duplicates.
    pub(crate) endpoints: Vec<u64>,
    pub(crate) device: String,
}

/// Which walk of [`crate::EventStore::sweep`] a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SweepPhase {
    /// Owed deliveries past the age limit become dead.
    Expire,
    /// Old dead deliveries are deleted.
    Dead,
    /// Old log rows are deleted.
    Log,
}

/// What a request asks for.
#[derive(Debug)]
pub(crate) enum Work {
    Append(Prepared),
    Record(Vec<Outcome>),
    OpenCursor {
        endpoint: u64,
        workspace: String,
        at_seq: Option<u64>,
    },
    RemoveEndpoint {
        endpoint: u64,
    },
    Replay {
        endpoint: u64,
        which: DeadSelector,
        now_ms: u64,
    },
    DeleteWorkspace {
        workspace: String,
    },
    Retain {
        workspace: String,
        older_than_ms: u64,
    },
    Erase {
        workspace: String,
        target: crate::store::Erase,
        /// Rows with `last_seq` from here on are left to look at.
        from_last: u64,
    },
    Sweep {
        phase: SweepPhase,
        /// Where the walk resumes: `(endpoint, seq)` for the delivery walks, `(seq, 0)` for
        /// the log walk.
        from: (u64, u64),
        older_than_ms: u64,
        expire_before_ms: u64,
        now_ms: u64,
    },
}

/// The answer to a request, sent once its group is durable.
#[derive(Debug)]
pub(crate) enum Reply {
    Appended(Vec<Appended>),
    Recorded(RecordReport),
    Cursor(u64),
    Removed {
        removed: Removed,
        more: bool,
    },
    Replayed {
        count: u64,
        more: bool,
    },
    Erased {
        count: u64,
        next: Option<u64>,
    },
    Swept {
        report: SweepReport,
        next: (u64, u64),
        more: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) work: Work,
    pub(crate) bytes: usize,
    pub(crate) done: oneshot::Sender<Result<Reply, EventStoreError>>,
}

pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) sealer: Option<Arc<dyn RecordSealer>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_group_requests: usize,
    pub(crate) max_group_bytes: usize,
    pub(crate) max_rows: usize,
    pub(crate) max_row_events: usize,
    pub(crate) max_row_bytes: usize,
    pub(crate) quick_repair: bool,
    /// Next sequence number to assign (only advanced by committed groups).
    pub(crate) next_seq: u64,
}

/// The tables of one write transaction.
struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    log: Table<'t, (&'static str, u64), &'static [u8]>,
    batches: Table<'t, u64, &'static [u8]>,
    ids: Table<'t, &'static [u8; 16], u64>,
    id_seqs: Table<'t, u64, &'static [u8; 16]>,
    cursors: Table<'t, u64, &'static [u8]>,
    owed: Table<'t, (u64, u64), &'static [u8]>,
    owed_due: Table<'t, (u64, u64, u64), ()>,
    dead: Table<'t, (u64, u64), &'static [u8]>,
    refs: Table<'t, (u64, u64), u8>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, EventStoreError> {
        Ok(Tables {
            meta: txn.open_table(META).ctx("write")?,
            log: txn.open_table(LOG).ctx("write")?,
            batches: txn.open_table(BATCHES).ctx("write")?,
            ids: txn.open_table(IDS).ctx("write")?,
            id_seqs: txn.open_table(ID_SEQS).ctx("write")?,
            cursors: txn.open_table(CURSORS).ctx("write")?,
            owed: txn.open_table(OWED).ctx("write")?,
            owed_due: txn.open_table(OWED_DUE).ctx("write")?,
            dead: txn.open_table(DEAD).ctx("write")?,
            refs: txn.open_table(REFS).ctx("write")?,
        })
    }
}

/// Outer error: the engine failed (the group fails). Inner error: this request alone failed
/// before writing anything.
type Applied = Result<Result<Reply, EventStoreError>, EventStoreError>;

/// A log row built in phase 1 of an append.
struct Row {
    workspace: String,
    header: RowHeader,
    bytes: Vec<u8>,
    error: Option<EventStoreError>,
}

impl Writer {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut poisoned: Option<String> = None;
        let mut group: Vec<Request> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.bytes;
            group.push(first);
            // Everything already queued rides on this commit's fsync; the bounds keep one
            // transaction (and the wait of the first caller in it) from growing without limit.
            while group.len() < self.max_group_requests && bytes < self.max_group_bytes {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.bytes;
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            let start_seq = self.next_seq;
            let result = match &poisoned {
                Some(reason) => Err(EventStoreError::Poisoned(reason.clone())),
                None => self.commit(&mut group),
            };
            match result {
                Ok(replies) => {
                    let appended = self.next_seq - start_seq;
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .requests
                        .fetch_add(group.len() as u64, Ordering::Relaxed);
                    self.counters.appended.fetch_add(appended, Ordering::Relaxed);
                    if appended > 0 {
                        self.counters.head.store(self.next_seq - 1, Ordering::Release);
                        self.counters.head_tx.send_replace(self.next_seq - 1);
                    }
                    for (r, reply) in group.drain(..).zip(replies) {
                        let _ = r.done.send(reply);
                    }
                }
                Err(e) => {
                    self.next_seq = start_seq;
                    if poisoned.is_none() && !matches!(e, EventStoreError::Poisoned(_)) {
                        tracing::error!(error = %e, "event store commit failed; refusing further writes");
                        poisoned = Some(e.to_string());
                    }
                    for r in group.drain(..) {
                        let _ = r.done.send(Err(e.duplicate()));
                    }
                }
            }
        }
    }

    fn commit(
        &mut self,
        group: &mut [Request],
    ) -> Result<Vec<Result<Reply, EventStoreError>>, EventStoreError> {
        let mut txn = self.db.begin_write().ctx("begin write")?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| EventStoreError::Internal(format!("set durability: {e}")))?;
        txn.set_quick_repair(self.quick_repair);
        let mut replies = Vec::with_capacity(group.len());
        {
            let mut t = Tables::open(&txn)?;
            let first_seq = self.next_seq;
            for r in group.iter_mut() {
                // Take the work out: its buffers move into the transaction.
                let work = std::mem::replace(&mut r.work, Work::Record(Vec::new()));
                replies.push(self.apply(&mut t, work)?);
            }
            if self.next_seq != first_seq {
                t.meta.insert("next_seq", self.next_seq).ctx("write")?;
            }
        }
        txn.commit().map_err(EventStoreError::from_commit)?;
        Ok(replies)
    }

    fn apply(&mut self, t: &mut Tables<'_>, work: Work) -> Applied {
        match work {
            Work::Append(events) => self.append(t, events),
            Work::Record(outcomes) => record(t, outcomes).map(|r| Ok(Reply::Recorded(r))),
            Work::OpenCursor {
                endpoint,
                workspace,
                at_seq,
            } => {
                if let Some(v) = t.cursors.get(endpoint).ctx("write")? {
                    let (c, _) = codec::decode_cursor(v.value())
                        .map_err(|r| EventStoreError::corrupt(format!("cursor {endpoint}: {r}")))?;
                    return Ok(Ok(Reply::Cursor(c)));
                }
                let c = at_seq.unwrap_or(self.next_seq - 1);
                t.cursors
                    .insert(endpoint, codec::encode_cursor(c, &workspace).as_slice())
                    .ctx("write")?;
                Ok(Ok(Reply::Cursor(c)))
            }
            Work::RemoveEndpoint { endpoint } => remove_endpoint(t, endpoint, self.max_rows).map(Ok),
            Work::Replay {
                endpoint,
                which,
                now_ms,
            } => replay(t, endpoint, which, now_ms, self.max_rows, &|t, seq| {
                self.device_of(t, seq)
            })
            .map(Ok),
            Work::DeleteWorkspace { workspace } => delete_workspace(t, &workspace, self.max_rows).map(Ok),
            Work::Retain {
                workspace,
                older_than_ms,
            } => retain(t, &workspace, older_than_ms, self.max_rows).map(Ok),
            Work::Erase {
                workspace,
                target,
                from_last,
            } => self.erase(t, &workspace, &target, from_last),
            Work::Sweep {
                phase,
                from,
                older_than_ms,
                expire_before_ms,
                now_ms,
            } => {
                let max = self.max_rows;
                match phase {
                    SweepPhase::Expire => sweep_expire(t, from, expire_before_ms, now_ms, max),
                    SweepPhase::Dead => sweep_dead(t, from, older_than_ms, max),
                    SweepPhase::Log => sweep_log(t, from.0, older_than_ms, expire_before_ms, max),
                }
                .map(Ok)
            }
        }
    }

    fn append(&mut self, t: &mut Tables<'_>, req: Prepared) -> Applied {
        // Phase 1: duplicates, chunking and sealing; nothing is written, so a failure leaves
        // no trace.
        let mut out: Vec<Option<Appended>> = vec![None; req.count];
        let mut fresh: HashMap<EventId, usize> = HashMap::new();
        let mut dups: Vec<(usize, usize)> = Vec::new();
        let mut seq = self.next_seq;
        let mut rows: Vec<Row> = Vec::new();
        // (group, entry index, seq) of every event written.
        let mut written: Vec<(usize, usize, u64)> = Vec::new();
        for (gi, g) in req.groups.iter().enumerate() {
            let mut start_of = 0usize;
            let mut row_body: Vec<u8> = Vec::new();
            let mut row_first = seq;
            let (mut min_at, mut max_at) = (u64::MAX, 0u64);
            let mut count = 0usize;
            for (ei, e) in g.entries.iter().enumerate() {
                let range = start_of..e.end;
                start_of = e.end;
                if e.dedupe {
                    if let Some(existing) = self.existing(t, &e.id)? {
                        out[e.index] = Some(Appended {
                            seq: existing,
                            id: e.id,
                            duplicate: true,
                        });
                        continue;
                    }
                    if let Some(first) = fresh.get(&e.id) {
                        dups.push((e.index, *first));
                        continue;
                    }
                    fresh.insert(e.id, e.index);
                }
                if count > 0 && (count >= self.max_row_events || row_body.len() >= self.max_row_bytes) {
                    rows.push(self.seal_row(&g.workspace, row_first, count, min_at, max_at, &row_body)?);
                    if let Some(err) = rows.last_mut().and_then(|r| r.error.take()) {
                        return Ok(Err(err));
                    }
                    row_body.clear();
                    row_first = seq;
                    (min_at, max_at) = (u64::MAX, 0);
                    count = 0;
                }
                row_body.extend_from_slice(&g.body[range]);
                min_at = min_at.min(e.at_ms);
                max_at = max_at.max(e.at_ms);
                written.push((gi, ei, seq));
                seq += 1;
                count += 1;
            }
            if count > 0 {
                rows.push(self.seal_row(&g.workspace, row_first, count, min_at, max_at, &row_body)?);
                if let Some(err) = rows.last_mut().and_then(|r| r.error.take()) {
                    return Ok(Err(err));
                }
            }
        }
        // Phase 2: the rows, their indexes and the owed deliveries, in the group's
        // transaction.
        for row in &rows {
            let last = row.header.last_seq();
            t.log
                .insert((row.workspace.as_str(), last), row.bytes.as_slice())
                .ctx("append")?;
            t.batches
                .insert(
                    last,
                    codec::encode_batch(
                        row.header.first_seq,
                        row.header.min_at_ms,
                        row.header.max_at_ms,
                        &row.workspace,
                    )
                    .as_slice(),
                )
                .ctx("append")?;
        }
        for (gi, ei, s) in written {
            let e = &req.groups[gi].entries[ei];
            if e.dedupe {
                t.ids.insert(e.id.as_bytes(), s).ctx("append")?;
                t.id_seqs.insert(s, e.id.as_bytes()).ctx("append")?;
            }
            if let Some(owed) = &e.owed {
                let slot = codec::encode_owed(0, e.at_ms, e.at_ms, &owed.device, "");
                for ep in &owed.endpoints {
                    t.owed.insert((*ep, s), slot.as_slice()).ctx("append")?;
                    t.owed_due.insert((*ep, e.at_ms, s), ()).ctx("append")?;
                    t.refs.insert((s, *ep), REF_OWED).ctx("append")?;
                }
            }
            out[e.index] = Some(Appended {
                seq: s,
                id: e.id,
                duplicate: false,
            });
        }
        for (index, first) in dups {
            if let Some(f) = out[first] {
                out[index] = Some(Appended {
                    seq: f.seq,
                    id: f.id,
                    duplicate: true,
                });
            }
        }
        self.next_seq = seq;
        let out = out
            .into_iter()
            .map(|a| a.ok_or_else(|| EventStoreError::Internal("append left an event unanswered".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ok(Reply::Appended(out)))
    }

    /// Builds (and seals) one log row; a sealing failure is carried in the row for the
    /// caller to answer the request with.
    fn seal_row(
        &self,
        workspace: &str,
        first_seq: u64,
        count: usize,
        min_at_ms: u64,
        max_at_ms: u64,
        body: &[u8],
    ) -> Result<Row, EventStoreError> {
        let header = RowHeader {
            format: if self.sealer.is_some() {
                FORMAT_SEALED
            } else {
                FORMAT_PLAIN
            },
            first_seq,
            count: count as u32,
            min_at_ms,
            max_at_ms,
        };
        let head = header.encode();
        let mut bytes = Vec::with_capacity(head.len() + body.len() + 64);
        bytes.extend_from_slice(&head);
        let mut error = None;
        match &self.sealer {
            None => bytes.extend_from_slice(body),
            Some(sealer) => match sealer.seal(workspace, &codec::aad(workspace, &head), body) {
                Ok(sealed) => bytes.extend_from_slice(&sealed),
                Err(e) => {
                    error = Some(EventStoreError::Seal {
                        workspace: workspace.to_owned(),
                        reason: e.0,
                    })
                }
            },
        }
        Ok(Row {
            workspace: workspace.to_owned(),
            header,
            bytes,
            error,
        })
    }

    /// One step of [`crate::EventStore::erase`]: looks at up to `max_rows / 64` rows.
    fn erase(
        &self,
        t: &mut Tables<'_>,
        workspace: &str,
        target: &crate::store::Erase,
        from_last: u64,
    ) -> Applied {
        let step = self.max_rows.div_ceil(64).max(1);
        let rows: Vec<(u64, Vec<u8>)> = t
            .log
            .range((workspace, from_last)..=(workspace, u64::MAX))
            .ctx("write")?
            .take(step + 1)
            .map(|r| r.map(|(k, v)| (k.value().1, v.value().to_vec())))
            .collect::<Result<_, _>>()
            .ctx("write")?;
        let next = (rows.len() > step).then(|| rows[step].0);
        let mut count = 0u64;
        for (last, row) in rows.into_iter().take(step) {
            let Ok(h) = RowHeader::decode(&row) else { continue };
            let body = &row[codec::ROW_HEADER..];
            let opened;
            let plain: &[u8] = match (&self.sealer, h.format) {
                (_, FORMAT_PLAIN) => body,
                (Some(sealer), _) => {
                    match sealer.open(workspace, &codec::aad(workspace, &row[..codec::ROW_HEADER]), body) {
                        Ok(p) => {
                            opened = p;
                            &opened
                        }
                        // Unreadable (key gone, damaged): nothing readable to erase.
                        Err(_) => continue,
                    }
                }
                (None, _) => continue,
            };
            let Ok(raw) = codec::split_body(plain, h.count) else {
                continue;
            };
            let hits: Vec<usize> = raw
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.erased() && target.matches(r))
                .map(|(i, _)| i)
                .collect();
            if hits.is_empty() {
                continue;
            }
            let mut new_body = Vec::with_capacity(plain.len());
            for (i, r) in raw.iter().enumerate() {
                if hits.contains(&i) {
                    codec::push_erased(&mut new_body, r);
                } else {
                    codec::push_raw(&mut new_body, r);
                }
            }
            let head = h.encode();
            let mut bytes = head.to_vec();
            match &self.sealer {
                Some(sealer) if h.format == FORMAT_SEALED => {
                    match sealer.seal(workspace, &codec::aad(workspace, &head), &new_body) {
                        Ok(sealed) => bytes.extend_from_slice(&sealed),
                        Err(e) => {
                            return Ok(Err(EventStoreError::Seal {
                                workspace: workspace.to_owned(),
                                reason: e.0,
                            }));
                        }
                    }
                }
                _ => bytes.extend_from_slice(&new_body),
            }
            t.log.insert((workspace, last), bytes.as_slice()).ctx("write")?;
            for i in hits {
                let seq = h.first_seq + i as u64;
                let refs: Vec<(u64, u8)> = t
                    .refs
                    .range((seq, 0)..=(seq, u64::MAX))
                    .ctx("write")?
                    .map(|r| r.map(|(k, v)| (k.value().1, v.value())))
                    .collect::<Result<_, _>>()
                    .ctx("write")?;
                for (endpoint, kind) in refs {
                    if kind == REF_DEAD {
                        t.dead.remove((endpoint, seq)).ctx("write")?;
                        t.refs.remove((seq, endpoint)).ctx("write")?;
                    } else if take_owed(t, endpoint, seq)?.is_none() {
                        t.refs.remove((seq, endpoint)).ctx("write")?;
                    }
                }
                count += 1;
            }
        }
        Ok(Ok(Reply::Erased { count, next }))
    }

    /// The device of event `seq` (empty when it has none or cannot be read).
    fn device_of(&self, t: &Tables<'_>, seq: u64) -> String {
        let found = (|| -> Option<String> {
            let (last, entry) = {
                let item = t.batches.range(seq..).ok()?.next()?.ok()?;
                (item.0.value(), codec::decode_batch(item.1.value()).ok()?)
            };
            if entry.first_seq > seq {
                return None;
            }
            let row = t
                .log
                .get((entry.workspace.as_str(), last))
                .ok()??
                .value()
                .to_vec();
            let h = RowHeader::decode(&row).ok()?;
            let body = &row[codec::ROW_HEADER..];
            let plain = match (&self.sealer, h.format) {
                (_, FORMAT_PLAIN) => body.to_vec(),
                (Some(sealer), _) => sealer
                    .open(
                        &entry.workspace,
                        &codec::aad(&entry.workspace, &row[..codec::ROW_HEADER]),
                        body,
                    )
                    .ok()?,
                (None, _) => return None,
            };
            let raw = codec::split_body(&plain, h.count).ok()?;
            let r = raw.get(usize::try_from(seq.checked_sub(h.first_seq)?).ok()?)?;
            r.device.map(str::to_owned)
        })();
        found.unwrap_or_default()
    }

    /// The stored seq of `id`, if its row still exists (an index entry left behind by a
    /// damaged file does not count).
    fn existing(&self, t: &Tables<'_>, id: &EventId) -> Result<Option<u64>, EventStoreError> {
        let Some(seq) = t.ids.get(id.as_bytes()).ctx("append")?.map(|g| g.value()) else {
            return Ok(None);
        };
        Ok(t.batches.range(seq..).ctx("append")?.next().map(|_| seq))
    }
}

fn has_cursor(t: &Tables<'_>, endpoint: u64) -> Result<bool, EventStoreError> {
    Ok(t.cursors.get(endpoint).ctx("write")?.is_some())
}

/// Deletes an owed row with its due entry and reference; whether there was one.
fn take_owed(
    t: &mut Tables<'_>,
    endpoint: u64,
    seq: u64,
) -> Result<Option<codec::OwedSlot>, EventStoreError> {
    let Some(v) = t.owed.remove((endpoint, seq)).ctx("write")? else {
        return Ok(None);
    };
    let slot = codec::decode_owed(v.value()).ok();
    drop(v);
    match &slot {
        Some(s) => {
            t.owed_due.remove((endpoint, s.due_ms, seq)).ctx("write")?;
        }
        None => {
            t.owed_due
                .retain_in((endpoint, 0, 0)..=(endpoint, u64::MAX, u64::MAX), |k, ()| {
                    k.2 != seq
                })
                .ctx("write")?;
        }
    }
    t.refs.remove((seq, endpoint)).ctx("write")?;
    Ok(Some(slot.unwrap_or(codec::OwedSlot {
        attempts: 0,
        due_ms: 0,
        since_ms: 0,
        device: String::new(),
        error: String::new(),
    })))
}

fn record(t: &mut Tables<'_>, outcomes: Vec<Outcome>) -> Result<RecordReport, EventStoreError> {
    let mut report = RecordReport::default();
    let mut known: HashMap<u64, bool> = HashMap::new();
    for o in outcomes {
        let endpoint = match &o {
            Outcome::Delivered { endpoint, .. }
            | Outcome::Retry { endpoint, .. }
            | Outcome::Dead { endpoint, .. }
            | Outcome::Advance { endpoint, .. } => *endpoint,
        };
        let exists = match known.get(&endpoint) {
            Some(e) => *e,
            None => {
                let e = has_cursor(t, endpoint)?;
                known.insert(endpoint, e);
                e
            }
        };
        if !exists {
            report.ignored += 1;
            continue;
        }
        let applied = match o {
            Outcome::Delivered { endpoint, seq } => take_owed(t, endpoint, seq)?.is_some(),
            // A late retry of a delivery that has died (a replay moves it back first): owed
            // and dead at once would share one `refs` entry.
            Outcome::Retry { endpoint, seq, .. } if t.dead.get((endpoint, seq)).ctx("write")?.is_some() => {
                false
            }
            Outcome::Retry {
                endpoint,
                seq,
                attempts,
                due_ms,
                since_ms,
                device,
                error,
            } => {
                let since = take_owed(t, endpoint, seq)?.map_or(since_ms, |old| old.since_ms);
                let slot =
                    codec::encode_owed(attempts, due_ms, since, device.as_deref().unwrap_or(""), &error);
                t.owed.insert((endpoint, seq), slot.as_slice()).ctx("write")?;
                t.owed_due.insert((endpoint, due_ms, seq), ()).ctx("write")?;
                t.refs.insert((seq, endpoint), REF_OWED).ctx("write")?;
                true
            }
            Outcome::Dead {
                endpoint,
                seq,
                attempts,
                error,
                at_ms,
            } => {
                take_owed(t, endpoint, seq)?;
                t.dead
                    .insert(
                        (endpoint, seq),
                        codec::encode_dead(attempts, at_ms, &error).as_slice(),
                    )
                    .ctx("write")?;
                t.refs.insert((seq, endpoint), REF_DEAD).ctx("write")?;
                true
            }
            Outcome::Advance { endpoint, to_seq } => {
                let v = t.cursors.get(endpoint).ctx("write")?.map(|v| v.value().to_vec());
                match v.map(|v| codec::decode_cursor(&v)) {
                    Some(Ok((cur, ws))) if to_seq > cur => {
                        t.cursors
                            .insert(endpoint, codec::encode_cursor(to_seq, &ws).as_slice())
                            .ctx("write")?;
                        true
                    }
                    Some(Err(r)) => return Err(EventStoreError::corrupt(format!("cursor {endpoint}: {r}"))),
                    _ => false,
                }
            }
        };
        if applied {
            report.applied += 1;
        } else {
            report.ignored += 1;
        }
    }
    Ok(report)
}

fn remove_endpoint(t: &mut Tables<'_>, endpoint: u64, max: usize) -> Result<Reply, EventStoreError> {
    let mut removed = Removed::default();
    let owed: Vec<u64> = t
        .owed
        .range((endpoint, 0)..=(endpoint, u64::MAX))
        .ctx("write")?
        .take(max)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .ctx("write")?;
    for seq in &owed {
        take_owed(t, endpoint, *seq)?;
        removed.deliveries += 1;
    }
    let room = max - owed.len();
    let dead: Vec<u64> = t
        .dead
        .range((endpoint, 0)..=(endpoint, u64::MAX))
        .ctx("write")?
        .take(room)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .ctx("write")?;
    for seq in &dead {
        t.dead.remove((endpoint, *seq)).ctx("write")?;
        t.refs.remove((*seq, endpoint)).ctx("write")?;
        removed.dead += 1;
    }
    let more = owed.len() + dead.len() >= max;
    if !more {
        t.cursors.remove(endpoint).ctx("write")?;
    }
    Ok(Reply::Removed { removed, more })
}

fn replay(
    t: &mut Tables<'_>,
    endpoint: u64,
    which: DeadSelector,
    now_ms: u64,
    max: usize,
    device_of: &dyn Fn(&Tables<'_>, u64) -> String,
) -> Result<Reply, EventStoreError> {
    if !has_cursor(t, endpoint)? {
        return Ok(Reply::Replayed {
            count: 0,
            more: false,
        });
    }
    let seqs: Vec<u64> = match which {
        DeadSelector::One(seq) => t
            .dead
            .get((endpoint, seq))
            .ctx("write")?
            .map(|_| vec![seq])
            .unwrap_or_default(),
        DeadSelector::All => t
            .dead
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .ctx("write")?
            .take(max)
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .ctx("write")?,
    };
    for seq in &seqs {
        t.dead.remove((endpoint, *seq)).ctx("write")?;
        // The device keeps a replayed delivery in its device's order (`ordered` endpoints).
        let slot = codec::encode_owed(0, now_ms, now_ms, &device_of(t, *seq), "");
        t.owed.insert((endpoint, *seq), slot.as_slice()).ctx("write")?;
        t.owed_due.insert((endpoint, now_ms, *seq), ()).ctx("write")?;
        t.refs.insert((*seq, endpoint), REF_OWED).ctx("write")?;
    }
    let more = matches!(which, DeadSelector::All) && seqs.len() >= max;
    Ok(Reply::Replayed {
        count: seqs.len() as u64,
        more,
    })
}

/// Deletes a log row with its batch entry, id entries and the deliveries referring to its
/// events; returns (events, owed, dead) removed.
fn delete_row(
    t: &mut Tables<'_>,
    workspace: &str,
    last: u64,
    first: u64,
) -> Result<(u64, u64, u64), EventStoreError> {
    // The batch index (written with the row) wins over a row header that may be damaged.
    let first = t
        .batches
        .get(last)
        .ctx("write")?
        .and_then(|v| codec::decode_batch(v.value()).ok())
        .filter(|b| b.workspace == workspace)
        .map_or(first, |b| b.first_seq)
        .min(last);
    t.log.remove((workspace, last)).ctx("write")?;
    t.batches.remove(last).ctx("write")?;
    let ids: Vec<(u64, [u8; 16])> = t
        .id_seqs
        .range(first..=last)
        .ctx("write")?
        .map(|r| r.map(|(k, v)| (k.value(), *v.value())))
        .collect::<Result<_, _>>()
        .ctx("write")?;
    for (seq, id) in ids {
        t.id_seqs.remove(seq).ctx("write")?;
        if t.ids.get(&id).ctx("write")?.map(|g| g.value()) == Some(seq) {
            t.ids.remove(&id).ctx("write")?;
        }
    }
    let refs: Vec<((u64, u64), u8)> = t
        .refs
        .range((first, 0)..=(last, u64::MAX))
        .ctx("write")?
        .map(|r| r.map(|(k, v)| (k.value(), v.value())))
        .collect::<Result<_, _>>()
        .ctx("write")?;
    let (mut owed, mut dead) = (0, 0);
    for ((seq, endpoint), kind) in refs {
        if kind == REF_DEAD {
            t.dead.remove((endpoint, seq)).ctx("write")?;
            t.refs.remove((seq, endpoint)).ctx("write")?;
            dead += 1;
        } else if take_owed(t, endpoint, seq)?.is_some() {
            owed += 1;
        } else {
            t.refs.remove((seq, endpoint)).ctx("write")?;
        }
    }
    Ok((last + 1 - first, owed, dead))
}

fn delete_workspace(t: &mut Tables<'_>, workspace: &str, max: usize) -> Result<Reply, EventStoreError> {
    let rows: Vec<(u64, u64)> = t
        .log
        .range((workspace, 0)..=(workspace, u64::MAX))
        .ctx("write")?
        .take(max.div_ceil(64).max(1))
        .map(|r| {
            r.map(|(k, v)| {
                let last = k.value().1;
                (last, RowHeader::decode(v.value()).map_or(last, |h| h.first_seq))
            })
        })
        .collect::<Result<_, _>>()
        .ctx("write")?;
    let mut removed = Removed::default();
    for (last, first) in &rows {
        let (e, o, d) = delete_row(t, workspace, *last, *first)?;
        removed.events += e;
        removed.deliveries += o;
        removed.dead += d;
    }
    let more = rows.len() >= max.div_ceil(64).max(1);
    Ok(Reply::Removed { removed, more })
}

/// Deletes the workspace's oldest rows whose newest event is before `older_than_ms`, with
/// the deliveries referring to them, whatever the cursors: the workspace's retention is a
/// promise to its owner and wins over undelivered webhooks.
fn retain(
    t: &mut Tables<'_>,
    workspace: &str,
    older_than_ms: u64,
    max: usize,
) -> Result<Reply, EventStoreError> {
    let step = max.div_ceil(64).max(1);
    let mut rows: Vec<(u64, u64)> = Vec::new();
    let mut young = false;
    for item in t.log.range((workspace, 0)..=(workspace, u64::MAX)).ctx("write")? {
        let (k, v) = item.ctx("write")?;
        let last = k.value().1;
        match RowHeader::decode(v.value()) {
            Ok(h) if h.max_at_ms >= older_than_ms => {
                young = true;
                break;
            }
            Ok(h) => rows.push((last, h.first_seq)),
            // A row whose header does not read is unreadable anyway.
            Err(_) => rows.push((last, last)),
        }
        if rows.len() >= step {
            break;
        }
    }
    let mut removed = Removed::default();
    for (last, first) in &rows {
        let (e, o, d) = delete_row(t, workspace, *last, *first)?;
        removed.events += e;
        removed.deliveries += o;
        removed.dead += d;
    }
    let more = !young && rows.len() >= step;
    Ok(Reply::Removed { removed, more })
}

fn sweep_expire(
    t: &mut Tables<'_>,
    from: (u64, u64),
    expire_before_ms: u64,
    now_ms: u64,
    max: usize,
) -> Result<Reply, EventStoreError> {
    let mut report = SweepReport::default();
    let mut expired = Vec::new();
    let mut next = None;
    for item in t.owed.range(from..).ctx("write")? {
        let (k, v) = item.ctx("write")?;
        let key = k.value();
        if report.scanned as usize >= max {
            next = Some(key);
            break;
        }
        report.scanned += 1;
        if let Ok(s) = codec::decode_owed(v.value())
            && s.since_ms < expire_before_ms
        {
            expired.push((key, s.attempts, s.error));
        }
    }
    for ((endpoint, seq), attempts, error) in expired {
        take_owed(t, endpoint, seq)?;
        let why = if error.is_empty() {
            "expired: owed for longer than the age limit".to_string()
        } else {
            format!("expired: owed for longer than the age limit; last error: {error}")
        };
        t.dead
            .insert(
                (endpoint, seq),
                codec::encode_dead(attempts, now_ms, &why).as_slice(),
            )
            .ctx("write")?;
        t.refs.insert((seq, endpoint), REF_DEAD).ctx("write")?;
        report.expired += 1;
    }
    Ok(Reply::Swept {
        report,
        next: next.unwrap_or((0, 0)),
        more: next.is_some(),
    })
}

fn sweep_dead(
    t: &mut Tables<'_>,
    from: (u64, u64),
    older_than_ms: u64,
    max: usize,
) -> Result<Reply, EventStoreError> {
    let mut report = SweepReport::default();
    let mut old = Vec::new();
    let mut next = None;
    for item in t.dead.range(from..).ctx("write")? {
        let (k, v) = item.ctx("write")?;
        let key = k.value();
        if report.scanned as usize >= max {
            next = Some(key);
            break;
        }
        report.scanned += 1;
        // A value that does not decode is dropped too: it can never be listed or replayed.
        if codec::decode_dead(v.value()).map_or(true, |d| d.at_ms < older_than_ms) {
            old.push(key);
        }
    }
    for (endpoint, seq) in old {
        t.dead.remove((endpoint, seq)).ctx("write")?;
        t.refs.remove((seq, endpoint)).ctx("write")?;
        report.dead_removed += 1;
    }
    Ok(Reply::Swept {
        report,
        next: next.unwrap_or((0, 0)),
        more: next.is_some(),
    })
}

fn sweep_log(
    t: &mut Tables<'_>,
    from_seq: u64,
    older_than_ms: u64,
    expire_before_ms: u64,
    max: usize,
) -> Result<Reply, EventStoreError> {
    // The slowest cursor of each workspace: a row it has not passed stays until the age limit.
    let mut slowest: HashMap<String, u64> = HashMap::new();
    for item in t.cursors.iter().ctx("write")? {
        let (_, v) = item.ctx("write")?;
        if let Ok((c, ws)) = codec::decode_cursor(v.value()) {
            let e = slowest.entry(ws).or_insert(c);
            *e = (*e).min(c);
        }
    }
    let mut report = SweepReport::default();
    let mut doomed: Vec<(String, u64, u64)> = Vec::new();
    let mut next = None;
    let mut young_seen = 0usize;
    for item in t.batches.range(from_seq..).ctx("write")? {
        let (k, v) = item.ctx("write")?;
        let last = k.value();
        if report.scanned as usize >= max {
            next = Some(last);
            break;
        }
        report.scanned += 1;
        let Ok(entry) = codec::decode_batch(v.value()) else {
            continue;
        };
        if entry.max_at_ms >= older_than_ms {
            // Rows are in commit order and event times close to it: a run of young rows
            // means the rest are young too.
            young_seen += 1;
            if young_seen >= 64 {
                break;
            }
            continue;
        }
        let pinned_by_cursor =
            slowest.get(&entry.workspace).is_some_and(|c| *c < last) && entry.max_at_ms >= expire_before_ms;
        if pinned_by_cursor {
            continue;
        }
        let referenced = t
            .refs
            .range((entry.first_seq, 0)..=(last, u64::MAX))
            .ctx("write")?
            .next()
            .is_some();
        if referenced {
            continue;
        }
        doomed.push((entry.workspace, last, entry.first_seq));
    }
    for (ws, last, first) in doomed {
        let (e, _, _) = delete_row(t, &ws, last, first)?;
        report.events_deleted += e;
    }
    Ok(Reply::Swept {
        report,
        next: (next.unwrap_or(0), 0),
        more: next.is_some(),
    })
}
