//! The in-memory index the writer keeps (and replay builds): where each unfinished or dead
//! message's `Accepted` record lives, its current state, per-segment live accounting that
//! drives compaction, and the status of recently finished messages.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::record::{AcceptedHead, MessageId, Record};
use crate::status::{MessageStatus, StatusState};

/// Hasher for gateway-assigned message ids (not chosen by clients, so no flooding concern):
/// a multiply-rotate fold with a 64-bit avalanche finaliser, several times cheaper than SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(a));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub(crate) type IdMap<V> = HashMap<MessageId, V, BuildHasherDefault<IdHasher>>;

/// Rough size of an `IdempotencyKept` record that replaces a finished message.
pub(crate) const IDEM_ESTIMATE: u64 = 72;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadInfo {
    pub attempts: u32,
    pub last_code: u16,
    pub last_detail: String,
    pub dead_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaState {
    Queued,
    InFlight {
        attempt: u32,
    },
    Retry {
        attempt: u32,
        due_at_ms: u64,
        last_code: u16,
    },
    Dead(Box<DeadInfo>),
}

impl MetaState {
    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        match self {
            MetaState::Queued => 0,
            MetaState::InFlight { attempt } | MetaState::Retry { attempt, .. } => *attempt,
            MetaState::Dead(d) => d.attempts,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub home_seg: u64,
    pub home_off: u64,
    pub size: u32,
    /// Replay's slot of the full message (unused by the writer).
    pub slot: u32,
    /// Workspace, device and submitter, interned (see [`Origins`]).
    pub origin: u32,
    pub accepted_at_ms: u64,
    /// Time of the newest record about the message that carries one (`RetryScheduled` and
    /// `DeadPurged` carry none).
    pub updated_at_ms: u64,
    pub state: MetaState,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SegInfo {
    /// Bytes in the file (header included).
    pub size: u64,
    /// Unfinished or dead messages whose `Accepted` record is here.
    pub live: u64,
    /// Bytes compaction would have to carry forward (approximate).
    pub live_bytes: u64,
    /// Until when an idempotency key recorded here is still in the window (unix ms).
    pub idem_until_ms: u64,
    /// Wall time (unix ms) of the oldest record appended here, `None` while it holds none.
    /// Retention compares it with its cutoff: the *oldest* record decides whether a segment
    /// still holds something appended before the cutoff (its newest one would let a segment
    /// that spans the cutoff keep old bodies for as long as the segment took to fill).
    /// Set from the journal's clock at append time (records carried forward by compaction
    /// count as appended when carried); after a restart, derived by replay from the records'
    /// own times (`replay::first_append_after_replay` says why).
    pub first_append_ms: Option<u64>,
}

/// What applying a record did (replay uses it to build its output).
#[derive(Debug)]
pub(crate) enum Applied {
    /// Nothing the caller needs to know.
    Other,
    /// The message reached a terminal state and left the index.
    Finished(Meta),
    /// A carried-forward copy replaced this older `Accepted`.
    Replaced(Meta),
}

/// Where a message came from: workspace, device and submitting API key.
#[derive(Debug)]
pub(crate) struct Origin {
    /// Interned workspace (index into [`Origins::workspace`]).
    pub ws: u32,
    pub device: Box<str>,
    pub submitted_by: Box<str>,
}

/// Interns the (workspace, device, submitter) triple of every message so that the index
/// keeps 4 bytes per message instead of three strings, and the writer pays one hash look-up
/// per `Accepted` instead of copying them. Entries are never freed: their number is bounded
/// by the devices and API keys that sent since the journal was opened.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    ids: HashMap<Box<[u8]>, u32>,
    list: Vec<Origin>,
    ws_ids: HashMap<Box<str>, u32>,
    ws_names: Vec<Box<str>>,
    /// Reused look-up key: the three strings, each length-prefixed.
    key: Vec<u8>,
    /// The previous result: consecutive messages often come from the same device and key.
    last: Option<u32>,
}

impl Origins {
    pub(crate) fn intern(&mut self, workspace: &str, device: &str, submitted_by: &str) -> u32 {
        if let Some(o) = self.last {
            let e = &self.list[o as usize];
            if *e.device == *device
                && *e.submitted_by == *submitted_by
                && *self.ws_names[e.ws as usize] == *workspace
            {
                return o;
            }
        }
        let o = self.lookup(workspace, device, submitted_by);
        self.last = Some(o);
        o
    }

    fn lookup(&mut self, workspace: &str, device: &str, submitted_by: &str) -> u32 {
        self.key.clear();
        for s in [workspace, device, submitted_by] {
            self.key.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.key.extend_from_slice(s.as_bytes());
        }
        if let Some(&o) = self.ids.get(self.key.as_slice()) {
            return o;
        }
        let ws = match self.ws_ids.get(workspace) {
            Some(&w) => w,
            None => {
                let w = self.ws_names.len() as u32;
                self.ws_names.push(workspace.into());
                self.ws_ids.insert(workspace.into(), w);
                w
            }
        };
        let o = self.list.len() as u32;
        self.list.push(Origin {
            ws,
            device: device.into(),
            submitted_by: submitted_by.into(),
        });
        self.ids.insert(self.key.as_slice().into(), o);
        o
    }

    pub(crate) fn get(&self, origin: u32) -> &Origin {
        &self.list[origin as usize]
    }

    pub(crate) fn workspace(&self, ws: u32) -> &str {
        &self.ws_names[ws as usize]
    }

    pub(crate) fn find_workspace(&self, name: &str) -> Option<u32> {
        self.ws_ids.get(name).copied()
    }
}

/// How a finished message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FinishedState {
    Sent(String),
    Failed(u16),
    Purged,
}

/// The status kept of a finished message.
#[derive(Debug)]
pub(crate) struct Finished {
    pub id: MessageId,
    pub origin: u32,
    pub attempts: u32,
    pub accepted_at_ms: u64,
    pub finished_at_ms: u64,
    pub state: FinishedState,
}

/// Recently finished messages, bounded by count and age, oldest forgotten first.
///
/// Kept for the writer's sake: a finish appends one entry to a vector (no hashing, no cache
/// miss into a large table, which at a million entries doubled the writer's CPU per message
/// in a measurement), and every `chunk` entries the vector is sorted by id (nearly sorted
/// already: ids are time-ordered) and sealed. A look-up scans the open chunk and binary
/// searches the sealed chunks whose id range covers the id (a few microseconds to ~0.1 ms
/// at a million entries), which suits control-plane query rates. Eviction drops whole
/// chunks: the oldest `capacity / 128` (at most 4096) entries at a time.
///
/// Memory per entry: `size_of::<Finished>()` = 64 bytes on 64-bit targets, plus the heap copy
/// of a sent message's upstream id (a 20-30 byte WhatsApp id is a 32-byte allocation): about
/// 96 bytes, so the default 1 000 000 entries cost ~92 MiB once full.
/// `status_entry_size_is_as_documented` in the tests checks the size.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// Full chunks, oldest first, each sorted by id (stable: equal ids in finish order).
    sealed: VecDeque<Chunk>,
    /// The chunk being filled, in finish order.
    open: Vec<Finished>,
    chunk: usize,
    len: usize,
    capacity: usize,
    retention_ms: u64,
}

#[derive(Debug)]
struct Chunk {
    entries: Box<[Finished]>,
    /// Latest finish time in the chunk: the whole chunk expires after it.
    newest_ms: u64,
}

impl Recent {
    pub(crate) fn new(capacity: usize, retention_ms: u64) -> Self {
        Recent {
            chunk: (capacity / 128).clamp(1, 4096),
            capacity,
            retention_ms,
            ..Default::default()
        }
    }

    fn insert(&mut self, f: Finished) {
        if self.capacity == 0 {
            return;
        }
        if self.open.capacity() == 0 {
            self.open.reserve_exact(self.chunk);
        }
        self.open.push(f);
        self.len += 1;
        if self.open.len() >= self.chunk {
            let mut entries = std::mem::take(&mut self.open);
            entries.sort_by_key(|f| f.id);
            let newest_ms = entries.iter().map(|f| f.finished_at_ms).max().unwrap_or(0);
            self.sealed.push_back(Chunk {
                entries: entries.into_boxed_slice(),
                newest_ms,
            });
        }
        // `chunk <= capacity`, so the open chunk alone never exceeds it.
        while self.len > self.capacity
            && let Some(c) = self.sealed.pop_front()
        {
            self.len -= c.entries.len();
        }
    }

    fn expired(&self, at_ms: u64, now_ms: u64) -> bool {
        at_ms.saturating_add(self.retention_ms) <= now_ms
    }

    /// Drops the oldest chunks once everything in them is past the retention (expired
    /// entries still held are hidden by [`Recent::get`]).
    pub(crate) fn expire(&mut self, now_ms: u64) {
        while let Some(c) = self.sealed.front()
            && self.expired(c.newest_ms, now_ms)
        {
            self.len -= c.entries.len();
            self.sealed.pop_front();
        }
    }

    /// Entries that finished at or after `since_ms` (and are within the retention), newest
    /// chunks first, at most `limit`. Chunks older than `since_ms` are skipped whole.
    pub(crate) fn since(&self, since_ms: u64, now_ms: u64, limit: usize) -> Vec<&Finished> {
        let keep = |f: &&Finished| f.finished_at_ms >= since_ms && !self.expired(f.finished_at_ms, now_ms);
        let mut out: Vec<&Finished> = self.open.iter().filter(keep).collect();
        for c in self.sealed.iter().rev() {
            if out.len() >= limit || c.newest_ms < since_ms {
                break;
            }
            out.extend(c.entries.iter().filter(keep));
        }
        out.truncate(limit);
        out
    }

    /// The newest entry for `id` within the retention.
    pub(crate) fn get(&self, id: &MessageId, now_ms: u64) -> Option<&Finished> {
        let found = self.open.iter().rev().find(|f| f.id == *id).or_else(|| {
            self.sealed.iter().rev().find_map(|c| {
                let (first, last) = (c.entries.first()?, c.entries.last()?);
                if *id < first.id || *id > last.id {
                    return None;
                }
                let end = c.entries.partition_point(|f| f.id <= *id);
                c.entries[..end].last().filter(|f| f.id == *id)
            })
        })?;
        (!self.expired(found.finished_at_ms, now_ms)).then_some(found)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub msgs: IdMap<Meta>,
    pub segs: BTreeMap<u64, SegInfo>,
    pub dead: BTreeSet<MessageId>,
    /// The dead letters again, by interned workspace then id: lists one workspace's without
    /// walking everyone's (20 bytes more per dead letter).
    pub dead_ws: BTreeSet<(u32, MessageId)>,
    pub origins: Origins,
    pub recent: Recent,
    pub window_ms: u64,
}

impl Index {
    pub(crate) fn new(window_ms: u64, status_capacity: usize, status_retention_ms: u64) -> Self {
        Index {
            window_ms,
            recent: Recent::new(status_capacity, status_retention_ms),
            ..Default::default()
        }
    }

    /// Applies one record located at `seg`/`off` with frame length `size`. Takes the
    /// upstream id out of a `Sent` record (the status of the finished message keeps it)
    /// instead of copying it.
    pub(crate) fn apply(&mut self, rec: &mut Record, seg: u64, off: u64, size: u64, slot: u32) -> Applied {
        match rec {
            Record::Accepted(a) => self.accept(&a.head(), seg, off, size, slot),
            Record::IdempotencyKept { accepted_at_ms, .. } => {
                let s = self.segs.entry(seg).or_default();
                s.live_bytes += size;
                s.idem_until_ms = s.idem_until_ms.max(accepted_at_ms.saturating_add(self.window_ms));
                Applied::Other
            }
            Record::Dispatched { id, attempt, at_ms } => {
                if let Some(m) = self.msgs.get_mut(id)
                    && !matches!(m.state, MetaState::Dead(_))
                {
                    m.state = MetaState::InFlight { attempt: *attempt };
                    m.updated_at_ms = m.updated_at_ms.max(*at_ms);
                }
                Applied::Other
            }
            Record::RetryScheduled {
                id,
                attempt,
                due_at_ms,
                last_code,
            } => {
                if let Some(m) = self.msgs.get_mut(id)
                    && !matches!(m.state, MetaState::Dead(_))
                {
                    m.state = MetaState::Retry {
                        attempt: *attempt,
                        due_at_ms: *due_at_ms,
                        last_code: *last_code,
                    };
                }
                Applied::Other
            }
            Record::Dead {
                id,
                attempts,
                last_code,
                last_detail,
                at_ms,
            } => {
                if let Some(m) = self.msgs.get_mut(id) {
                    m.state = MetaState::Dead(Box::new(DeadInfo {
                        attempts: *attempts,
                        last_code: *last_code,
                        last_detail: last_detail.clone(),
                        dead_at_ms: *at_ms,
                    }));
                    m.updated_at_ms = m.updated_at_ms.max(*at_ms);
                    self.dead.insert(*id);
                    self.dead_ws.insert((self.origins.get(m.origin).ws, *id));
                }
                Applied::Other
            }
            Record::DeadReplayed { id, at_ms } => {
                if let Some(m) = self.msgs.get_mut(id)
                    && matches!(m.state, MetaState::Dead(_))
                {
                    m.state = MetaState::Queued;
                    m.updated_at_ms = m.updated_at_ms.max(*at_ms);
                    self.dead.remove(id);
                    self.dead_ws.remove(&(self.origins.get(m.origin).ws, *id));
                }
                Applied::Other
            }
            // Not a message of the send path: nothing to track. Its bytes are not counted as
            // live, so compaction may reclaim its segment (delivery of inbound messages from
            // the journal arrives with the events issue, which will keep them until then).
            Record::Inbound(_) => Applied::Other,
            Record::Sent {
                id,
                upstream_id,
                at_ms,
            } => {
                let id = *id;
                let done = self.finish(id, true);
                if let Applied::Finished(m) = &done {
                    self.record_finished(id, m, *at_ms, FinishedState::Sent(std::mem::take(upstream_id)));
                }
                done
            }
            Record::Failed { id, code, at_ms } => {
                let id = *id;
                let done = self.finish(id, true);
                if let Applied::Finished(m) = &done {
                    self.record_finished(id, m, *at_ms, FinishedState::Failed(*code));
                }
                done
            }
            Record::DeadPurged { id } => {
                let id = *id;
                let done = self.finish(id, true);
                if let Applied::Finished(m) = &done {
                    // No time in the record: the status says when it died.
                    self.record_finished(id, m, m.updated_at_ms, FinishedState::Purged);
                }
                done
            }
        }
    }

    /// Applies an `Accepted` record of any layout (by its plain fields).
    pub(crate) fn accept(
        &mut self,
        a: &AcceptedHead<'_>,
        seg: u64,
        off: u64,
        size: u64,
        slot: u32,
    ) -> Applied {
        let origin = self.origins.intern(a.workspace, a.device, a.submitted_by);
        let meta = Meta {
            home_seg: seg,
            home_off: off,
            size: size as u32,
            slot,
            origin,
            accepted_at_ms: a.accepted_at_ms,
            updated_at_ms: a.accepted_at_ms,
            state: MetaState::Queued,
        };
        let applied = match self.msgs.entry(a.id) {
            Entry::Vacant(v) => {
                v.insert(meta);
                Applied::Other
            }
            Entry::Occupied(mut o) => {
                // A copy carried forward by compaction: the newest copy is the home. Its state
                // follows in the records carried with it; the time of the last change stays.
                let updated = o.get().updated_at_ms.max(meta.updated_at_ms);
                let old = std::mem::replace(o.get_mut(), meta);
                o.get_mut().updated_at_ms = updated;
                self.unaccount(&old);
                self.dead.remove(&a.id);
                self.dead_ws.remove(&(self.origins.get(old.origin).ws, a.id));
                Applied::Replaced(old)
            }
        };
        let s = self.segs.entry(seg).or_default();
        s.live += 1;
        s.live_bytes += size;
        s.idem_until_ms = s
            .idem_until_ms
            .max(a.accepted_at_ms.saturating_add(self.window_ms));
        applied
    }

    /// Removes a message from the index: finished (`keep_key`: its idempotency key stays on
    /// disk until compaction drops it) or unreadable.
    pub(crate) fn finish(&mut self, id: MessageId, keep_key: bool) -> Applied {
        match self.msgs.remove(&id) {
            Some(old) => {
                self.unaccount(&old);
                if self.dead.remove(&id) {
                    self.dead_ws.remove(&(self.origins.get(old.origin).ws, id));
                }
                if keep_key && let Some(s) = self.segs.get_mut(&old.home_seg) {
                    s.live_bytes += IDEM_ESTIMATE;
                }
                Applied::Finished(old)
            }
            None => Applied::Other,
        }
    }

    fn record_finished(&mut self, id: MessageId, m: &Meta, at_ms: u64, state: FinishedState) {
        self.recent.insert(Finished {
            id,
            origin: m.origin,
            attempts: m.state.attempts(),
            accepted_at_ms: m.accepted_at_ms,
            finished_at_ms: at_ms.max(m.updated_at_ms),
            state,
        });
    }

    /// Messages that finished (sent or failed, not purged) at or after `since_ms`, at most
    /// `limit`, from the recently-finished status kept in memory.
    pub(crate) fn finished_since(&self, since_ms: u64, now_ms: u64, limit: usize) -> Vec<MessageStatus> {
        self.recent
            .since(since_ms, now_ms, limit)
            .into_iter()
            .filter_map(|f| {
                let state = match &f.state {
                    FinishedState::Sent(u) => StatusState::Sent {
                        upstream_id: u.clone(),
                    },
                    FinishedState::Failed(code) => StatusState::Failed { code: *code },
                    FinishedState::Purged => return None,
                };
                let o = self.origins.get(f.origin);
                Some(MessageStatus {
                    id: f.id,
                    workspace: self.origins.workspace(o.ws).to_owned(),
                    device: o.device.to_string(),
                    submitted_by: o.submitted_by.to_string(),
                    accepted_at_ms: f.accepted_at_ms,
                    state,
                    attempts: f.attempts,
                    updated_at_ms: f.finished_at_ms,
                })
            })
            .collect()
    }

    /// The status of `id`: live in the index, or recently finished.
    pub(crate) fn status(&self, id: MessageId, now_ms: u64) -> Option<MessageStatus> {
        let (origin, accepted_at_ms, state, attempts, updated_at_ms) = match self.msgs.get(&id) {
            Some(m) => {
                let state = match &m.state {
                    MetaState::Queued => StatusState::Queued,
                    MetaState::InFlight { .. } => StatusState::InFlight,
                    MetaState::Retry {
                        due_at_ms, last_code, ..
                    } => StatusState::RetryWait {
                        due_at_ms: *due_at_ms,
                        last_code: *last_code,
                    },
                    MetaState::Dead(d) => StatusState::Dead {
                        last_code: d.last_code,
                    },
                };
                (
                    m.origin,
                    m.accepted_at_ms,
                    state,
                    m.state.attempts(),
                    m.updated_at_ms,
                )
            }
            None => {
                let f = self.recent.get(&id, now_ms)?;
                let state = match &f.state {
                    FinishedState::Sent(u) => StatusState::Sent {
                        upstream_id: u.clone(),
                    },
                    FinishedState::Failed(code) => StatusState::Failed { code: *code },
                    FinishedState::Purged => StatusState::Purged,
                };
                (f.origin, f.accepted_at_ms, state, f.attempts, f.finished_at_ms)
            }
        };
        let o = self.origins.get(origin);
        Some(MessageStatus {
            id,
            workspace: self.origins.workspace(o.ws).to_owned(),
            device: o.device.to_string(),
            submitted_by: o.submitted_by.to_string(),
            accepted_at_ms,
            state,
            attempts,
            updated_at_ms,
        })
    }

    fn unaccount(&mut self, m: &Meta) {
        if let Some(s) = self.segs.get_mut(&m.home_seg) {
            s.live = s.live.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(u64::from(m.size));
        }
    }
}
