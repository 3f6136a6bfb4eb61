//! The in-memory index the writer keeps (and replay builds): where each unfinished or dead
//! message's `Accepted` record lives, its current state, and per-segment live accounting
//! that drives compaction.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::record::{MessageId, Record};

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

#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub home_seg: u64,
    pub home_off: u64,
    pub size: u32,
    /// Replay's slot of the full message (unused by the writer).
    pub slot: u32,
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

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub msgs: IdMap<Meta>,
    pub segs: BTreeMap<u64, SegInfo>,
    pub dead: BTreeSet<MessageId>,
    pub window_ms: u64,
}

impl Index {
    pub(crate) fn new(window_ms: u64) -> Self {
        Index {
            window_ms,
            ..Default::default()
        }
    }

    /// Applies one record located at `seg`/`off` with frame length `size`.
    pub(crate) fn apply(&mut self, rec: &Record, seg: u64, off: u64, size: u64, slot: u32) -> Applied {
        match rec {
            Record::Accepted(a) => {
                let meta = Meta {
                    home_seg: seg,
                    home_off: off,
                    size: size as u32,
                    slot,
                    state: MetaState::Queued,
                };
                let applied = match self.msgs.entry(a.id) {
                    Entry::Vacant(v) => {
                        v.insert(meta);
                        Applied::Other
                    }
                    Entry::Occupied(mut o) => {
                        // A copy carried forward by compaction: the newest copy is the home.
                        let old = std::mem::replace(o.get_mut(), meta);
                        self.unaccount(&old);
                        self.dead.remove(&a.id);
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
            Record::IdempotencyKept { accepted_at_ms, .. } => {
                let s = self.segs.entry(seg).or_default();
                s.live_bytes += size;
                s.idem_until_ms = s.idem_until_ms.max(accepted_at_ms.saturating_add(self.window_ms));
                Applied::Other
            }
            Record::Dispatched { id, attempt, .. } => {
                if let Some(m) = self.msgs.get_mut(id)
                    && !matches!(m.state, MetaState::Dead(_))
                {
                    m.state = MetaState::InFlight { attempt: *attempt };
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
                    self.dead.insert(*id);
                }
                Applied::Other
            }
            Record::DeadReplayed { id, .. } => {
                if let Some(m) = self.msgs.get_mut(id)
                    && matches!(m.state, MetaState::Dead(_))
                {
                    m.state = MetaState::Queued;
                    self.dead.remove(id);
                }
                Applied::Other
            }
            // Not a message of the send path: nothing to track. Its bytes are not counted as
            // live, so compaction may reclaim its segment (delivery of inbound messages from
            // the journal arrives with the events issue, which will keep them until then).
            Record::Inbound(_) => Applied::Other,
            Record::Sent { id, .. } | Record::Failed { id, .. } | Record::DeadPurged { id } => {
                match self.msgs.remove(id) {
                    Some(old) => {
                        self.unaccount(&old);
                        self.dead.remove(id);
                        // Its key still occupies the window until compaction drops it.
                        if let Some(s) = self.segs.get_mut(&old.home_seg) {
                            s.live_bytes += IDEM_ESTIMATE;
                        }
                        Applied::Finished(old)
                    }
                    None => Applied::Other,
                }
            }
        }
    }

    fn unaccount(&mut self, m: &Meta) {
        if let Some(s) = self.segs.get_mut(&m.home_seg) {
            s.live = s.live.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(u64::from(m.size));
        }
    }
}
