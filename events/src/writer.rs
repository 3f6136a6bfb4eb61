//! The single writer thread: merges queued requests into one durable transaction (group
//! commit), assigns sequence numbers in commit order and seals payloads.
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

use crate::codec::{self, PendingSlot};
use crate::error::{EventStoreError, StorageContext};
use crate::model::EventId;
use crate::store::{
    Appended, BY_ID, BY_WORKSPACE, Counters, DEAD, DELIVERIES, DUE, DeadSelector, EVENTS, META, Outcome,
    REF_DEAD, REF_PENDING, REFS, RecordReport, Removed, SweepReport,
};

/// An event validated and encoded on the caller's thread, waiting for its sequence number.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) id: EventId,
    pub(crate) workspace: String,
    pub(crate) at_ms: u64,
    /// Plain row header (format byte first).
    pub(crate) header: Vec<u8>,
    /// `data` JSON, sealed by the writer when the store has a sealer.
    pub(crate) payload: Vec<u8>,
    /// Sorted, without duplicates.
    pub(crate) endpoints: Vec<u64>,
}

/// What a request asks for.
#[derive(Debug)]
pub(crate) enum Work {
    Append(Vec<Prepared>),
    Record(Vec<Outcome>),
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
    Sweep {
        /// The walk over referenced events (expiry, dead rows) or over old events (deletion).
        refs: bool,
        from_seq: u64,
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
    Removed {
        removed: Removed,
        more: bool,
    },
    Replayed {
        count: u64,
        more: bool,
    },
    Swept {
        report: SweepReport,
        next_seq: u64,
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
    pub(crate) quick_repair: bool,
    /// Next sequence number to assign (only advanced by committed groups).
    pub(crate) next_seq: u64,
}

/// The tables of one write transaction.
struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    events: Table<'t, u64, &'static [u8]>,
    by_id: Table<'t, &'static [u8; 16], u64>,
    by_ws: Table<'t, (&'static str, u64), ()>,
    deliveries: Table<'t, (u64, u64), &'static [u8]>,
    due: Table<'t, (u64, u64, u64), ()>,
    dead: Table<'t, (u64, u64), &'static [u8]>,
    refs: Table<'t, (u64, u64), u8>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, EventStoreError> {
        Ok(Tables {
            meta: txn.open_table(META).ctx("write")?,
            events: txn.open_table(EVENTS).ctx("write")?,
            by_id: txn.open_table(BY_ID).ctx("write")?,
            by_ws: txn.open_table(BY_WORKSPACE).ctx("write")?,
            deliveries: txn.open_table(DELIVERIES).ctx("write")?,
            due: txn.open_table(DUE).ctx("write")?,
            dead: txn.open_table(DEAD).ctx("write")?,
            refs: txn.open_table(REFS).ctx("write")?,
        })
    }
}

/// Outer error: the engine failed (the group fails). Inner error: this request alone failed
/// before writing anything.
type Applied = Result<Result<Reply, EventStoreError>, EventStoreError>;

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
            Work::RemoveEndpoint { endpoint } => remove_endpoint(t, endpoint, self.max_rows).map(Ok),
            Work::Replay {
                endpoint,
                which,
                now_ms,
            } => replay(t, endpoint, which, now_ms, self.max_rows).map(Ok),
            Work::DeleteWorkspace { workspace } => delete_workspace(t, &workspace, self.max_rows).map(Ok),
            Work::Sweep {
                refs,
                from_seq,
                older_than_ms,
                expire_before_ms,
                now_ms,
            } => {
                let step = SweepStep {
                    from_seq,
                    older_than_ms,
                    expire_before_ms,
                    now_ms,
                    max_rows: self.max_rows,
                };
                if refs {
                    sweep_refs(t, step)
                } else {
                    sweep_events(t, step)
                }
                .map(Ok)
            }
        }
    }

    fn append(&mut self, t: &mut Tables<'_>, events: Vec<Prepared>) -> Applied {
        // Phase 1: duplicates and sealing; nothing is written, so a failure leaves no trace.
        let mut out = Vec::with_capacity(events.len());
        let mut rows = Vec::with_capacity(events.len());
        let mut fresh: HashMap<EventId, u64> = HashMap::new();
        let mut seq = self.next_seq;
        for p in events {
            if let Some(existing) = self.existing(t, &p.id)?.or_else(|| fresh.get(&p.id).copied()) {
                out.push(Appended {
                    seq: existing,
                    id: p.id,
                    duplicate: true,
                });
                continue;
            }
            let mut row = p.header;
            match &self.sealer {
                None => row.extend_from_slice(&p.payload),
                Some(sealer) => match sealer.seal(&p.workspace, &codec::aad(seq, &row), &p.payload) {
                    Ok(sealed) => row.extend_from_slice(&sealed),
                    Err(e) => {
                        return Ok(Err(EventStoreError::Seal {
                            workspace: p.workspace,
                            reason: e.0,
                        }));
                    }
                },
            }
            fresh.insert(p.id, seq);
            out.push(Appended {
                seq,
                id: p.id,
                duplicate: false,
            });
            rows.push((seq, row, p.id, p.workspace, p.at_ms, p.endpoints));
            seq += 1;
        }
        // Phase 2: the event, its indexes and its deliveries, in the group's transaction.
        for (seq, row, id, workspace, at_ms, endpoints) in rows {
            t.events.insert(seq, row.as_slice()).ctx("append")?;
            t.by_id.insert(id.as_bytes(), seq).ctx("append")?;
            t.by_ws.insert((workspace.as_str(), seq), ()).ctx("append")?;
            let fresh_slot = codec::encode_pending(0, at_ms, at_ms, "");
            for ep in endpoints {
                t.deliveries
                    .insert((ep, seq), fresh_slot.as_slice())
                    .ctx("append")?;
                t.due.insert((ep, at_ms, seq), ()).ctx("append")?;
                t.refs.insert((seq, ep), REF_PENDING).ctx("append")?;
            }
        }
        self.next_seq = seq;
        Ok(Ok(Reply::Appended(out)))
    }

    /// The stored seq of `id`, if its event still exists (an index row left behind by a
    /// damaged event row does not count).
    fn existing(&self, t: &Tables<'_>, id: &EventId) -> Result<Option<u64>, EventStoreError> {
        let Some(seq) = t.by_id.get(id.as_bytes()).ctx("append")?.map(|g| g.value()) else {
            return Ok(None);
        };
        Ok(t.events.get(seq).ctx("append")?.map(|_| seq))
    }
}

/// Removes the due-index row of delivery (`endpoint`, `seq`); `old_due` is its due time if
/// its value could be decoded, else the endpoint's index is searched (never on a sound file).
fn unindex(t: &mut Tables<'_>, endpoint: u64, seq: u64, old_due: Option<u64>) -> Result<(), EventStoreError> {
    match old_due {
        Some(due) => {
            t.due.remove((endpoint, due, seq)).ctx("write")?;
        }
        None => {
            t.due
                .retain_in((endpoint, 0, 0)..=(endpoint, u64::MAX, u64::MAX), |k, ()| {
                    k.2 != seq
                })
                .ctx("write")?;
        }
    }
    Ok(())
}

/// Takes delivery (`endpoint`, `seq`) out of `deliveries` and the due index: `None` if there
/// was none, `Some(None)` if its value was undecodable.
fn take_delivery(
    t: &mut Tables<'_>,
    endpoint: u64,
    seq: u64,
) -> Result<Option<Option<PendingSlot>>, EventStoreError> {
    let old = t
        .deliveries
        .remove((endpoint, seq))
        .ctx("write")?
        .map(|g| codec::decode_pending(g.value()).ok());
    if let Some(slot) = &old {
        unindex(t, endpoint, seq, slot.as_ref().map(|s| s.due_ms))?;
    }
    Ok(old)
}

fn record(t: &mut Tables<'_>, outcomes: Vec<Outcome>) -> Result<RecordReport, EventStoreError> {
    let mut report = RecordReport::default();
    for o in outcomes {
        let applied = match o {
            Outcome::Delivered { endpoint, seq } => {
                let found = take_delivery(t, endpoint, seq)?.is_some();
                if found {
                    t.refs.remove((seq, endpoint)).ctx("record")?;
                }
                found
            }
            Outcome::Retry {
                endpoint,
                seq,
                attempts,
                due_ms,
                error,
            } => {
                let old = t
                    .deliveries
                    .get((endpoint, seq))
                    .ctx("record")?
                    .map(|g| codec::decode_pending(g.value()).ok());
                match old {
                    None => false,
                    Some(old) => {
                        let old_due = old.as_ref().map(|s| s.due_ms);
                        // An undecodable row restarts its age (it is being worked on).
                        let since = old.map_or(due_ms, |s| s.since_ms);
                        let value = codec::encode_pending(attempts, due_ms, since, &error);
                        t.deliveries
                            .insert((endpoint, seq), value.as_slice())
                            .ctx("record")?;
                        if old_due != Some(due_ms) {
                            unindex(t, endpoint, seq, old_due)?;
                            t.due.insert((endpoint, due_ms, seq), ()).ctx("record")?;
                        }
                        true
                    }
                }
            }
            Outcome::Dead {
                endpoint,
                seq,
                attempts,
                error,
                at_ms,
            } => {
                let found = take_delivery(t, endpoint, seq)?.is_some();
                if found {
                    let value = codec::encode_dead(attempts, at_ms, &error);
                    t.dead.insert((endpoint, seq), value.as_slice()).ctx("record")?;
                    t.refs.insert((seq, endpoint), REF_DEAD).ctx("record")?;
                }
                found
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
    let mut seqs = Vec::new();
    for item in t
        .deliveries
        .range((endpoint, 0)..=(endpoint, u64::MAX))
        .ctx("remove endpoint")?
    {
        seqs.push(item.ctx("remove endpoint")?.0.value().1);
        if seqs.len() >= max {
            break;
        }
    }
    for &seq in &seqs {
        take_delivery(t, endpoint, seq)?;
        t.refs.remove((seq, endpoint)).ctx("remove endpoint")?;
        removed.deliveries += 1;
    }
    let mut dead = Vec::new();
    if seqs.len() < max {
        for item in t
            .dead
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .ctx("remove endpoint")?
        {
            dead.push(item.ctx("remove endpoint")?.0.value().1);
            if seqs.len() + dead.len() >= max {
                break;
            }
        }
    }
    for &seq in &dead {
        t.dead.remove((endpoint, seq)).ctx("remove endpoint")?;
        t.refs.remove((seq, endpoint)).ctx("remove endpoint")?;
        removed.dead += 1;
    }
    Ok(Reply::Removed {
        removed,
        more: seqs.len() + dead.len() >= max,
    })
}

fn replay(
    t: &mut Tables<'_>,
    endpoint: u64,
    which: DeadSelector,
    now_ms: u64,
    max: usize,
) -> Result<Reply, EventStoreError> {
    let seqs = match which {
        DeadSelector::One(seq) => {
            if t.dead.get((endpoint, seq)).ctx("replay")?.is_some() {
                vec![seq]
            } else {
                Vec::new()
            }
        }
        DeadSelector::All => {
            let mut seqs = Vec::new();
            for item in t.dead.range((endpoint, 0)..=(endpoint, u64::MAX)).ctx("replay")? {
                seqs.push(item.ctx("replay")?.0.value().1);
                if seqs.len() >= max {
                    break;
                }
            }
            seqs
        }
    };
    // A replayed delivery starts its age afresh, or the next sweep would expire it again.
    let fresh_slot = codec::encode_pending(0, now_ms, now_ms, "");
    for &seq in &seqs {
        t.dead.remove((endpoint, seq)).ctx("replay")?;
        t.deliveries
            .insert((endpoint, seq), fresh_slot.as_slice())
            .ctx("replay")?;
        t.due.insert((endpoint, now_ms, seq), ()).ctx("replay")?;
        t.refs.insert((seq, endpoint), REF_PENDING).ctx("replay")?;
    }
    Ok(Reply::Replayed {
        count: seqs.len() as u64,
        more: matches!(which, DeadSelector::All) && seqs.len() >= max,
    })
}

/// Endpoints referring to event `seq`, with their `refs` kind.
fn refs_of(t: &Tables<'_>, seq: u64) -> Result<Vec<(u64, u8)>, EventStoreError> {
    let mut out = Vec::new();
    for item in t.refs.range((seq, 0)..=(seq, u64::MAX)).ctx("read refs")? {
        let (k, v) = item.ctx("read refs")?;
        out.push((k.value().1, v.value()));
    }
    Ok(out)
}

/// Deletes event `seq` and its `by_id` / `by_workspace` rows (the caller has dealt with its
/// deliveries).
fn delete_event(t: &mut Tables<'_>, seq: u64) -> Result<bool, EventStoreError> {
    let Some(row) = t
        .events
        .remove(seq)
        .ctx("delete event")?
        .map(|g| g.value().to_vec())
    else {
        return Ok(false);
    };
    match codec::decode_header(&row) {
        Ok(h) => {
            // Only if it still points here: the id may have been appended again after a sweep.
            if t.by_id
                .get(h.id.as_bytes())
                .ctx("delete event")?
                .map(|g| g.value())
                == Some(seq)
            {
                t.by_id.remove(h.id.as_bytes()).ctx("delete event")?;
            }
            t.by_ws.remove((h.workspace, seq)).ctx("delete event")?;
        }
        Err(reason) => {
            // Its index rows cannot be found from the row; a by_id row left behind is ignored
            // by appends (they check the event exists) and a by_workspace row reads as corrupt.
            tracing::warn!(seq, %reason, "deleted an undecodable event row");
        }
    }
    Ok(true)
}

fn delete_workspace(t: &mut Tables<'_>, workspace: &str, max: usize) -> Result<Reply, EventStoreError> {
    let mut seqs = Vec::new();
    for item in t
        .by_ws
        .range((workspace, 0)..=(workspace, u64::MAX))
        .ctx("delete workspace")?
    {
        seqs.push(item.ctx("delete workspace")?.0.value().1);
        if seqs.len() >= max {
            break;
        }
    }
    let mut removed = Removed::default();
    for &seq in &seqs {
        for (endpoint, kind) in refs_of(t, seq)? {
            if kind == REF_DEAD {
                t.dead.remove((endpoint, seq)).ctx("delete workspace")?;
                removed.dead += 1;
            } else {
                take_delivery(t, endpoint, seq)?;
                removed.deliveries += 1;
            }
            t.refs.remove((seq, endpoint)).ctx("delete workspace")?;
        }
        if delete_event(t, seq)? {
            removed.events += 1;
        }
        // Also when the row itself was missing or undecodable.
        t.by_ws.remove((workspace, seq)).ctx("delete workspace")?;
    }
    Ok(Reply::Removed {
        removed,
        more: seqs.len() >= max,
    })
}

struct SweepStep {
    from_seq: u64,
    older_than_ms: u64,
    expire_before_ms: u64,
    now_ms: u64,
    max_rows: usize,
}

/// The time of event `seq` (`None`: missing, `Some(None)`: undecodable).
fn event_time(t: &Tables<'_>, seq: u64) -> Result<Option<Option<u64>>, EventStoreError> {
    Ok(t.events
        .get(seq)
        .ctx("sweep")?
        .map(|g| codec::decode_header(g.value()).ok().map(|h| h.at_ms)))
}

/// One step of the walk over `refs`: expires old pending deliveries, deletes old dead ones,
/// and deletes old events left without references. Stops at the first referenced event newer
/// than both cutoffs (nothing after it can qualify: a delivery starts no earlier than its
/// event, a dead one dies no earlier).
fn sweep_refs(t: &mut Tables<'_>, s: SweepStep) -> Result<Reply, EventStoreError> {
    let stop_at = s.older_than_ms.max(s.expire_before_ms);
    // Whole events only, so that a step always moves past what it looked at.
    let mut refs: Vec<(u64, u64, u8)> = Vec::new();
    let mut full = false;
    for item in t.refs.range((s.from_seq, 0)..).ctx("sweep")? {
        let (k, v) = item.ctx("sweep")?;
        let (seq, endpoint) = k.value();
        if refs.len() >= s.max_rows && refs.last().is_some_and(|r| r.0 != seq) {
            full = true;
            break;
        }
        refs.push((seq, endpoint, v.value()));
    }
    let mut report = SweepReport::default();
    let mut next_seq = s.from_seq;
    let mut done = !full;
    for group in refs.chunk_by(|a, b| a.0 == b.0) {
        let seq = group[0].0;
        let at_ms = match event_time(t, seq)? {
            Some(Some(at)) => at,
            Some(None) => {
                // Undecodable: kept for an operator, not judged.
                next_seq = seq + 1;
                continue;
            }
            None => {
                // References to an event that is gone: drop them.
                for &(_, endpoint, kind) in group {
                    drop_ref(t, endpoint, seq, kind)?;
                }
                next_seq = seq + 1;
                continue;
            }
        };
        if at_ms >= stop_at {
            done = true;
            break;
        }
        report.scanned += 1;
        next_seq = seq + 1;
        let mut left = 0;
        for &(_, endpoint, kind) in group {
            if kind == REF_PENDING {
                let slot = t
                    .deliveries
                    .get((endpoint, seq))
                    .ctx("sweep")?
                    .map(|g| codec::decode_pending(g.value()).ok());
                let expire = match &slot {
                    Some(Some(p)) => p.since_ms < s.expire_before_ms,
                    // Undecodable: judged by its event's age.
                    Some(None) => at_ms < s.expire_before_ms,
                    None => {
                        t.refs.remove((seq, endpoint)).ctx("sweep")?;
                        continue;
                    }
                };
                if !expire {
                    left += 1;
                    continue;
                }
                take_delivery(t, endpoint, seq)?;
                let (attempts, last) = slot
                    .flatten()
                    .map_or((0, String::new()), |p| (p.attempts, p.error));
                let error = if last.is_empty() {
                    "expired: not delivered within the maximum age".to_owned()
                } else {
                    format!("expired: {last}")
                };
                let value = codec::encode_dead(attempts, s.now_ms, &error);
                t.dead.insert((endpoint, seq), value.as_slice()).ctx("sweep")?;
                t.refs.insert((seq, endpoint), REF_DEAD).ctx("sweep")?;
                report.expired += 1;
                // The new dead row is young: it keeps the event until a later sweep.
                left += 1;
            } else {
                let died = t
                    .dead
                    .get((endpoint, seq))
                    .ctx("sweep")?
                    .map(|g| codec::decode_dead(g.value()).map_or(0, |d| d.at_ms));
                match died {
                    Some(died) if died >= s.older_than_ms => left += 1,
                    _ => {
                        t.dead.remove((endpoint, seq)).ctx("sweep")?;
                        t.refs.remove((seq, endpoint)).ctx("sweep")?;
                        report.dead_removed += u64::from(died.is_some());
                    }
                }
            }
        }
        if left == 0 && at_ms < s.older_than_ms && delete_event(t, seq)? {
            report.events_deleted += 1;
        }
    }
    Ok(Reply::Swept {
        report,
        next_seq,
        more: !done,
    })
}

/// Removes a reference and the row it stands for.
fn drop_ref(t: &mut Tables<'_>, endpoint: u64, seq: u64, kind: u8) -> Result<(), EventStoreError> {
    if kind == REF_DEAD {
        t.dead.remove((endpoint, seq)).ctx("sweep")?;
    } else {
        take_delivery(t, endpoint, seq)?;
    }
    t.refs.remove((seq, endpoint)).ctx("sweep")?;
    Ok(())
}

/// One step of the walk over old events: deletes those nothing refers to. Stops at the
/// first event newer than `older_than_ms`.
fn sweep_events(t: &mut Tables<'_>, s: SweepStep) -> Result<Reply, EventStoreError> {
    let mut batch = Vec::new();
    for item in t.events.range(s.from_seq..).ctx("sweep")? {
        let (k, v) = item.ctx("sweep")?;
        // An undecodable row has no time: it is kept for an operator.
        let at_ms = codec::decode_header(v.value()).ok().map(|h| h.at_ms);
        batch.push((k.value(), at_ms));
        if batch.len() >= s.max_rows {
            break;
        }
    }
    let mut report = SweepReport::default();
    let mut next_seq = s.from_seq;
    let mut done = batch.len() < s.max_rows;
    for &(seq, at_ms) in &batch {
        if at_ms.is_some_and(|at| at >= s.older_than_ms) {
            done = true;
            break;
        }
        report.scanned += 1;
        next_seq = seq + 1;
        if at_ms.is_some()
            && t.refs
                .range((seq, 0)..=(seq, u64::MAX))
                .ctx("sweep")?
                .next()
                .is_none()
        {
            delete_event(t, seq)?;
            report.events_deleted += 1;
        }
    }
    Ok(Reply::Swept {
        report,
        next_seq,
        more: !done,
    })
}
