//! A hierarchical timing wheel: O(1) insert, amortised O(1) expiry, one owner.
//!
//! Four levels of 64 slots over a tick (the queue uses 1 ms): level 0 holds the
//! next 64 ticks one per slot, level 1 the next 4096 in 64-tick slots, level 2
//! ~4.4 min in 4096-tick slots and level 3 ~4.7 h in 262 144-tick slots.
//! Entries further out than that wait in an overflow heap and enter the wheel
//! when their 2^24-tick epoch begins. An entry sits at the level named by the
//! highest 6-bit group in which its tick differs from the wheel's current tick;
//! when time reaches the start of its slot it cascades to a lower level, so each
//! entry moves at most four times before it expires.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;

/// Bits of a tick consumed by one level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
pub const SLOTS: usize = 1 << SLOT_BITS;
/// Levels; beyond `SLOTS^LEVELS` ticks (2^24 ms ≈ 4.66 h at 1 ms) entries overflow.
pub const LEVELS: usize = 4;
const SLOT_MASK: u64 = (SLOTS as u64) - 1;
/// Ticks covered by the whole wheel.
const WHEEL_SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;

struct Slot<E> {
    entries: Vec<(u64, E)>,
    /// Smallest tick in `entries` (meaningless when empty): lets `next_expiry` be exact
    /// without scanning, since a slot only ever empties all at once.
    min_tick: u64,
}

struct Level<E> {
    /// Bit `s` set iff slot `s` has entries.
    occupied: u64,
    slots: [Slot<E>; SLOTS],
}

/// An entry beyond the wheel's span, ordered earliest-first in a max-heap.
struct Far<E> {
    tick: u64,
    entry: E,
}

impl<E> PartialEq for Far<E> {
    fn eq(&self, other: &Self) -> bool {
        self.tick == other.tick
    }
}
impl<E> Eq for Far<E> {}
impl<E> PartialOrd for Far<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Far<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops its maximum, we want the earliest tick.
        other.tick.cmp(&self.tick)
    }
}

/// Timer entries of type `E` keyed by an absolute `u64` tick; single-threaded.
///
/// Default: none (use [`TimingWheel::new`]). Bounds: ticks are the whole `u64`
/// range; memory is one `Vec` per occupied slot plus the entries. Why not a
/// `BinaryHeap`: insert and expiry stay O(1) however many entries wait
/// (docs/design/0005-retry-queue.md).
pub struct TimingWheel<E> {
    /// The current tick: everything at or before it has been handed out.
    elapsed: u64,
    levels: Box<[Level<E>; LEVELS]>,
    /// Entries inserted at or before `elapsed`; handed out by the next `advance`.
    ready: Vec<(u64, E)>,
    overflow: BinaryHeap<Far<E>>,
    len: usize,
}

impl<E> fmt::Debug for TimingWheel<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("overflow", &self.overflow.len())
            .finish()
    }
}

impl<E> TimingWheel<E> {
    /// An empty wheel whose current tick is `now_tick`.
    pub fn new(now_tick: u64) -> Self {
        TimingWheel {
            elapsed: now_tick,
            levels: Box::new(std::array::from_fn(|_| Level {
                occupied: 0,
                slots: std::array::from_fn(|_| Slot {
                    entries: Vec::new(),
                    min_tick: 0,
                }),
            })),
            ready: Vec::new(),
            overflow: BinaryHeap::new(),
            len: 0,
        }
    }

    /// The current tick.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry` to expire at `tick`; a tick at or before the current one expires on the next `advance`.
    pub fn insert(&mut self, tick: u64, entry: E) {
        self.len += 1;
        self.place(tick, entry);
    }

    fn place(&mut self, tick: u64, entry: E) {
        if tick <= self.elapsed {
            self.ready.push((tick, entry));
            return;
        }
        let level = level_for(self.elapsed, tick);
        if level >= LEVELS {
            self.overflow.push(Far { tick, entry });
            return;
        }
        let s = slot_for(tick, level);
        let lvl = &mut self.levels[level];
        let slot = &mut lvl.slots[s];
        if slot.entries.is_empty() || tick < slot.min_tick {
            slot.min_tick = tick;
        }
        slot.entries.push((tick, entry));
        lvl.occupied |= 1 << s;
    }

    /// The earliest tick at which [`advance`](Self::advance) will hand out an entry
    /// (the current tick if some are already due), or `None` when empty.
    pub fn next_expiry(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(self.elapsed);
        }
        // Entries on a lower level are all earlier than any on a higher one
        // (they share the higher level's current slot), and within a level
        // slots run in time order, so the first occupied slot of the lowest
        // occupied level holds the earliest entry.
        for lvl in self.levels.iter() {
            if lvl.occupied != 0 {
                return Some(lvl.slots[lvl.occupied.trailing_zeros() as usize].min_tick);
            }
        }
        self.overflow.peek().map(|f| f.tick)
    }

    /// Moves the current tick to `to` and appends every entry with tick `<= to` to `out`
    /// (unordered: the caller sorts if it needs to). A `to` before the current tick does nothing.
    pub fn advance(&mut self, to: u64, out: &mut Vec<(u64, E)>) {
        if to < self.elapsed {
            return;
        }
        let before = out.len();
        out.append(&mut self.ready);
        while let Some((deadline, level)) = self.next_event() {
            if deadline > to {
                break;
            }
            self.elapsed = deadline;
            match level {
                Some(l) => {
                    let lvl = &mut self.levels[l];
                    let s = lvl.occupied.trailing_zeros() as usize;
                    lvl.occupied &= !(1 << s);
                    let entries = std::mem::take(&mut lvl.slots[s].entries);
                    for (tick, e) in entries {
                        if tick <= self.elapsed {
                            out.push((tick, e));
                        } else {
                            // Shares every higher 6-bit group with `elapsed` now: lands lower.
                            self.place(tick, e);
                        }
                    }
                }
                None => {
                    // A new 2^24-tick epoch began: bring in everything inside it.
                    while self
                        .overflow
                        .peek()
                        .is_some_and(|f| level_for(self.elapsed, f.tick) < LEVELS)
                    {
                        let Some(f) = self.overflow.pop() else { break };
                        self.place(f.tick, f.entry);
                    }
                }
            }
        }
        self.elapsed = to;
        // Overflow entries exactly at an epoch start land in `ready`.
        out.append(&mut self.ready);
        self.len -= out.len() - before;
    }

    /// When the next slot must be processed, and which level (`None` = overflow epoch).
    fn next_event(&self) -> Option<(u64, Option<usize>)> {
        for (l, lvl) in self.levels.iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let s = u64::from(lvl.occupied.trailing_zeros());
            let shift = SLOT_BITS * l as u32;
            let pos = (self.elapsed >> shift) & SLOT_MASK;
            debug_assert!(s > pos, "slot {s} at level {l} is not after position {pos}");
            let block = (1u64 << (shift + SLOT_BITS)) - 1;
            return Some(((self.elapsed & !block) | (s << shift), Some(l)));
        }
        let far = self.overflow.peek()?;
        let epoch = (1u64 << WHEEL_SPAN_BITS) - 1;
        Some((far.tick & !epoch, None))
    }

    /// Keeps only the entries for which `keep` returns true (O(entries)); for dropping
    /// cancelled entries in bulk.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        let mut kept = 0;
        for lvl in self.levels.iter_mut() {
            for (s, slot) in lvl.slots.iter_mut().enumerate() {
                if slot.entries.is_empty() {
                    continue;
                }
                slot.entries.retain(|(_, e)| keep(e));
                if slot.entries.is_empty() {
                    lvl.occupied &= !(1 << s);
                    slot.entries = Vec::new();
                } else {
                    slot.min_tick = slot.entries.iter().map(|(t, _)| *t).min().unwrap_or(0);
                    kept += slot.entries.len();
                }
            }
        }
        self.ready.retain(|(_, e)| keep(e));
        kept += self.ready.len();
        let mut far = std::mem::take(&mut self.overflow).into_vec();
        far.retain(|f| keep(&f.entry));
        kept += far.len();
        self.overflow = BinaryHeap::from(far);
        self.len = kept;
    }
}

/// The level at which `tick` (> `elapsed`) waits: the highest 6-bit group in which they differ.
fn level_for(elapsed: u64, tick: u64) -> usize {
    // `| SLOT_MASK` makes ticks in the current 64-tick block land on level 0.
    let masked = (elapsed ^ tick) | SLOT_MASK;
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

fn slot_for(tick: u64, level: usize) -> usize {
    ((tick >> (SLOT_BITS * level as u32)) & SLOT_MASK) as usize
}
