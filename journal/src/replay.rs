//! Opening a journal: scanning every segment, verifying checksums, truncating a torn tail,
//! reporting corruption, and rebuilding the unfinished set, dead letters and idempotency keys.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::JournalConfig;
use crate::error::{JournalError, Result};
use crate::record::{AcceptedMessage, Decoded, MessageId, OpenError, Record, decode, decode_opened};
use crate::seal::OpenFailure;
use crate::segment::{HEADER_LEN, Item, SegmentReader, list_segments, segment_path};
use crate::state::{Applied, IdMap, Index, MetaState};

/// Where an unfinished message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Never dispatched (or replayed from the dead letters).
    Queued,
    /// An attempt was dispatched and its outcome is unknown: it may or may not have reached
    /// upstream (at-least-once: dispatch it again).
    InFlight {
        /// The attempt number.
        attempt: u32,
    },
    /// Waiting for a retry.
    RetryWait {
        /// The attempt that failed.
        attempt: u32,
        /// When the next attempt is due, unix ms.
        due_at_ms: u64,
        /// Error code of the failed attempt.
        last_code: u16,
    },
}

/// An unfinished message: what must still be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The accepted message.
    pub message: AcceptedMessage,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: PendingState,
}

/// A message that exhausted its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The accepted message.
    pub message: AcceptedMessage,
    /// Attempts made.
    pub attempts: u32,
    /// Last error code.
    pub last_code: u16,
    /// Last error detail.
    pub last_detail: String,
    /// When it died, unix ms.
    pub dead_at_ms: u64,
}

/// An idempotency key still inside the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemEntry {
    /// Workspace.
    pub workspace: String,
    /// Client key.
    pub idempotency_key: String,
    /// Message it maps to.
    pub id: MessageId,
    /// When that message was accepted, unix ms (the key expires `idempotency_window` later).
    pub accepted_at_ms: u64,
}

/// Corruption found while opening: the records in the damaged range are lost, the rest were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Segment number.
    pub segment: u64,
    /// Segment file.
    pub path: PathBuf,
    /// Byte offset of the bad record.
    pub offset: u64,
    /// What was wrong, and what was skipped.
    pub reason: String,
}

/// Numbers from opening the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records read.
    pub records: u64,
    /// Bytes read (segment files).
    pub bytes: u64,
    /// Segments read.
    pub segments: u64,
    /// Bytes cut from the end of the last segment (a write torn by a crash).
    pub torn_tail_truncated_bytes: u64,
    /// Number of [`Corruption`]s.
    pub corruptions: u64,
    /// Unfinished messages and dead letters dropped because their workspace's key is gone
    /// (crypto-shredded): deleted, not corrupt. Only messages replay has to return are opened,
    /// so finished ones and inbound records of such a workspace are not counted.
    pub shredded_records: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// What a restart must know.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Unfinished messages in accept order.
    pub unfinished: Vec<Pending>,
    /// Dead letters, by id.
    pub dead: Vec<DeadLetter>,
    /// Idempotency keys within the window of *finished* messages (sent, failed, purged).
    /// Unfinished messages and dead letters carry their keys in their messages; use
    /// [`Recovered::idempotency_keys`] to walk all three.
    pub idempotency: Vec<IdemEntry>,
    /// Corruption found (empty on a healthy journal). A torn tail is not corruption.
    pub corruptions: Vec<Corruption>,
    /// Numbers.
    pub stats: ReplayStats,
}

/// One idempotency key in the window, as yielded by [`Recovered::idempotency_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdemKey<'a> {
    /// Workspace.
    pub workspace: &'a str,
    /// Client key.
    pub idempotency_key: &'a str,
    /// Message the key maps to.
    pub id: MessageId,
    /// When that message was accepted, unix ms.
    pub accepted_at_ms: u64,
}

impl Recovered {
    /// Every idempotency key to load into the dedup map: finished messages in the window,
    /// then unfinished messages and dead letters accepted within `window_ms` before `now_ms`.
    pub fn idempotency_keys(&self, now_ms: u64, window_ms: u64) -> impl Iterator<Item = IdemKey<'_>> {
        fn of(m: &AcceptedMessage) -> IdemKey<'_> {
            IdemKey {
                workspace: &m.workspace,
                idempotency_key: &m.idempotency_key,
                id: m.id,
                accepted_at_ms: m.accepted_at_ms,
            }
        }
        let finished = self.idempotency.iter().map(|e| IdemKey {
            workspace: &e.workspace,
            idempotency_key: &e.idempotency_key,
            id: e.id,
            accepted_at_ms: e.accepted_at_ms,
        });
        finished
            .chain(self.unfinished.iter().map(|p| of(&p.message)))
            .chain(self.dead.iter().map(|d| of(&d.message)))
            .filter(move |k| k.accepted_at_ms.saturating_add(window_ms) > now_ms)
    }
}

/// A message in the index during replay. Sealed ones are opened at the end, and only if
/// still unfinished or dead: most messages finish, and their content is never needed.
enum Stored {
    Plain(AcceptedMessage),
    Sealed { id: MessageId, body: Box<[u8]> },
}

fn idem_entry(stored: Stored) -> Option<IdemEntry> {
    match stored {
        Stored::Plain(a) => Some(IdemEntry {
            workspace: a.workspace,
            idempotency_key: a.idempotency_key,
            id: a.id,
            accepted_at_ms: a.accepted_at_ms,
        }),
        Stored::Sealed { body, .. } => {
            crate::record::accepted_head(&body)
                .ok()
                .flatten()
                .map(|h| IdemEntry {
                    workspace: h.workspace.to_owned(),
                    idempotency_key: h.idempotency_key.to_owned(),
                    id: h.id,
                    accepted_at_ms: h.accepted_at_ms,
                })
        }
    }
}

/// The time an event recorded in `d` happened (unix ms), when the record carries one that is
/// at most its append time: the gateway takes it just before appending. `RetryScheduled`
/// carries a future due time, `DeadPurged` none, and `IdempotencyKept` the original
/// acceptance, which compaction copies forward long after.
fn event_time(d: &Decoded<'_>) -> Option<u64> {
    match d {
        Decoded::Plain(r) => match r {
            Record::Accepted(a) => Some(a.accepted_at_ms),
            Record::Inbound(m) => Some(m.received_at_ms),
            Record::Dispatched { at_ms, .. }
            | Record::Sent { at_ms, .. }
            | Record::Failed { at_ms, .. }
            | Record::Dead { at_ms, .. }
            | Record::DeadReplayed { at_ms, .. } => Some(*at_ms),
            Record::RetryScheduled { .. } | Record::DeadPurged { .. } | Record::IdempotencyKept { .. } => {
                None
            }
        },
        Decoded::SealedAccepted(s) => Some(s.head.accepted_at_ms),
        Decoded::SealedInbound(s) => Some(s.received_at_ms),
    }
}

/// A file's modification time, unix ms.
fn mtime_ms(path: &Path) -> Option<u64> {
    let t = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// `SegInfo::first_append_ms` of a segment read at open: the oldest event time its records
/// carry ([`event_time`]), capped by the file's modification time; `None` when it holds no
/// record.
///
/// Mostly the records' times, not the file's mtime: mtime is the time of the *newest* write
/// (a segment that spans a retention cutoff would look younger than its oldest body), and
/// copying or restoring the directory resets it. A fresh record's time is taken just before
/// it is appended, so the estimate errs towards "older": retention may compact a segment
/// early, never keep a body late. The price: records carried forward by compaction keep
/// their original times, so a segment holding carried live messages looks as old as they
/// are and the first retention pass after a restart rewrites it once more. mtime caps times
/// from a clock that ran ahead and dates a segment whose records carry no time; with
/// neither, the segment counts as older than any cutoff.
fn first_append_after_replay(records: u64, oldest_event: Option<u64>, mtime: Option<u64>) -> Option<u64> {
    if records == 0 {
        return None;
    }
    Some(match (oldest_event, mtime) {
        (Some(e), Some(m)) => e.min(m),
        (e, m) => e.or(m).unwrap_or(0),
    })
}

/// Result of [`recover`]: the index for the writer, the output, and where to append.
pub(crate) struct RecoverOut {
    pub index: Index,
    pub recovered: Recovered,
    pub last_segment: Option<(u64, u64)>,
}

/// Cuts the last segment at `offset` (restoring its preallocated size) and records it.
fn truncate_tail(
    path: &Path,
    seg: u64,
    offset: u64,
    cut: u64,
    reason: &str,
    cfg: &JournalConfig,
    out: &mut Recovered,
) -> Result<()> {
    tracing::warn!(segment = seg, offset, bytes = cut, %reason, "journal: truncating torn tail of the last segment");
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("open segment", path, e))?;
    f.set_len(offset)
        .map_err(|e| JournalError::io("truncate segment", path, e))?;
    if let Some(size) = cfg.prealloc_size()
        && size > offset
    {
        f.set_len(size)
            .map_err(|e| JournalError::io("preallocate segment", path, e))?;
    }
    if cfg.durable() {
        f.sync_all()
            .map_err(|e| JournalError::io("fsync segment", path, e))?;
    }
    out.stats.torn_tail_truncated_bytes += cut;
    Ok(())
}

pub(crate) fn recover(dir: &Path, cfg: &JournalConfig, now_ms: u64) -> Result<RecoverOut> {
    let started = Instant::now();
    let window = cfg.window_ms();
    let max_len = cfg.max_batch_len() as usize;
    let sealer = cfg.sealer.as_deref();
    let mut index = Index::new(window, cfg.status_capacity, cfg.status_retention_ms());
    let mut out = Recovered::default();
    // Full content of the messages in the index, by slot (log order); finished ones are taken.
    let mut bodies: Vec<Option<Stored>> = Vec::new();
    let mut finished_idem: IdMap<IdemEntry> = IdMap::default();
    let in_window = |at: u64| at.saturating_add(window) > now_ms;

    let segs = list_segments(dir)?;
    // Reserve for the likely number of messages (address space only until touched).
    let total: u64 = segs
        .iter()
        .filter_map(|&n| std::fs::metadata(segment_path(dir, n)).ok())
        .map(|m| m.len())
        .sum();
    let guess = ((total / 300) as usize).min(2_000_000);
    bodies.reserve(guess);
    index.msgs.reserve(guess);
    let mut last_segment = None;
    for (i, &seg) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let path = segment_path(dir, seg);
        let mut rd = match SegmentReader::open(dir, seg, max_len, 1 << 20) {
            Ok(r) => r,
            Err(JournalError::Corrupt { reason, .. }) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.corruptions.push(Corruption {
                    segment: seg,
                    path: path.clone(),
                    offset: 0,
                    reason: format!("bad segment header ({reason}); whole segment skipped"),
                });
                index.segs.entry(seg).or_default().size = size;
                continue;
            }
            Err(e) => return Err(e),
        };
        out.stats.segments += 1;
        index.segs.entry(seg).or_default().size = rd.file_len;
        let mut end = rd.file_len;
        // Records read from this segment, and the oldest time they carry (for retention).
        let (mut seg_records, mut oldest_event) = (0u64, None::<u64>);
        let mut handle =
            |body: &[u8], offset: u64, total: u64, index: &mut Index, out: &mut Recovered| -> Result<()> {
                out.stats.records += 1;
                seg_records += 1;
                let mut decoded = match decode(body) {
                    Ok(d) => d,
                    Err(e) => {
                        out.corruptions.push(Corruption {
                            segment: seg,
                            path: path.clone(),
                            offset,
                            reason: format!("record with a valid checksum does not decode: {e}; skipped"),
                        });
                        return Ok(());
                    }
                };
                if let Some(t) = event_time(&decoded) {
                    oldest_event = Some(oldest_event.map_or(t, |o| o.min(t)));
                }
                if sealer.is_none() && !matches!(decoded, Decoded::Plain(_)) {
                    return Err(JournalError::SealerRequired {
                        segment: seg,
                        path: path.clone(),
                        offset,
                    });
                }
                let slot = bodies.len() as u32;
                let applied = match &mut decoded {
                    Decoded::Plain(rec) => index.apply(rec, seg, offset, total, slot),
                    Decoded::SealedAccepted(s) => index.accept(&s.head, seg, offset, total, slot),
                    // Not needed by replay (nothing reads inbound records yet): not opened.
                    Decoded::SealedInbound(_) => Applied::Other,
                };
                match applied {
                    Applied::Replaced(old) => {
                        bodies[old.slot as usize] = None;
                    }
                    Applied::Finished(old) => {
                        if let Some(e) = bodies[old.slot as usize].take().and_then(idem_entry)
                            && in_window(e.accepted_at_ms)
                        {
                            finished_idem.insert(e.id, e);
                        }
                    }
                    Applied::Other => {}
                }
                match decoded {
                    Decoded::Plain(Record::Accepted(a)) => bodies.push(Some(Stored::Plain(a))),
                    Decoded::SealedAccepted(s) => bodies.push(Some(Stored::Sealed {
                        id: s.head.id,
                        body: body.into(),
                    })),
                    Decoded::Plain(Record::IdempotencyKept {
                        workspace,
                        idempotency_key,
                        id,
                        accepted_at_ms,
                    }) if in_window(accepted_at_ms) => {
                        finished_idem.insert(
                            id,
                            IdemEntry {
                                workspace,
                                idempotency_key,
                                id,
                                accepted_at_ms,
                            },
                        );
                    }
                    _ => {}
                }
                Ok(())
            };
        loop {
            match rd.next()? {
                Item::End => break,
                Item::Zero { offset } => {
                    // The preallocated, never written tail -- or a hole a torn write left with
                    // data after it that was never acknowledged.
                    let garbage = rd.last_nonzero_after(offset)?;
                    match garbage {
                        None => end = offset,
                        Some(last) if is_last => {
                            truncate_tail(
                                &path,
                                seg,
                                offset,
                                last - offset,
                                "zeroed frame header",
                                cfg,
                                &mut out,
                            )?;
                            end = offset;
                        }
                        Some(_) => {
                            tracing::error!(
                                segment = seg,
                                offset,
                                "journal: zeroed record in a sealed segment"
                            );
                            out.corruptions.push(Corruption {
                                segment: seg,
                                path: path.clone(),
                                offset,
                                reason: "zeroed frame header; rest of the segment skipped".into(),
                            });
                        }
                    }
                    break;
                }
                Item::Record { offset, body, total } => handle(body, offset, total, &mut index, &mut out)?,
                Item::Bad {
                    offset,
                    reason,
                    skip_len,
                } => {
                    if let Some(skip) = skip_len {
                        // Is there a good record right after the bad one?
                        rd.seek(offset + skip);
                        if let Item::Record {
                            offset: o2,
                            body,
                            total,
                        } = rd.next()?
                        {
                            out.corruptions.push(Corruption {
                                segment: seg,
                                path: path.clone(),
                                offset,
                                reason: format!("{reason}; {skip} bytes skipped"),
                            });
                            handle(body, o2, total, &mut index, &mut out)?;
                            continue;
                        }
                    }
                    if is_last {
                        // Torn tail: nothing valid follows in the segment being written at the
                        // crash. Nothing after `offset` was ever acknowledged.
                        let cut = rd.last_nonzero_after(offset)?.map_or(0, |l| l - offset);
                        truncate_tail(&path, seg, offset, cut, &reason, cfg, &mut out)?;
                        end = offset;
                    } else {
                        tracing::error!(segment = seg, offset, %reason, "journal: corrupt record");
                        out.corruptions.push(Corruption {
                            segment: seg,
                            path: path.clone(),
                            offset,
                            reason: format!("{reason}; rest of the segment skipped"),
                        });
                    }
                    break;
                }
            }
        }
        let info = index.segs.entry(seg).or_default();
        info.size = end;
        info.first_append_ms = first_append_after_replay(seg_records, oldest_event, mtime_ms(&path));
        out.stats.bytes += end;
        if is_last {
            last_segment = Some((seg, end.max(HEADER_LEN as u64)));
        }
    }

    // Build the output from what is still in the index, walking the messages in log order
    // (accept order, except copies carried forward by compaction: sorted below).
    let live = index.msgs.len();
    let mut unfinished = Vec::with_capacity(live);
    let mut dead = Vec::with_capacity(index.dead.len());
    let mut idem: Vec<IdemEntry> = finished_idem.into_values().collect();
    for stored in bodies.into_iter().flatten() {
        let id = match &stored {
            Stored::Plain(a) => a.id,
            Stored::Sealed { id, .. } => *id,
        };
        let Some(meta) = index.msgs.get(&id) else {
            continue;
        };
        let (home_seg, home_off) = (meta.home_seg, meta.home_off);
        let msg = match stored {
            Stored::Plain(a) => a,
            Stored::Sealed { body, .. } => match decode_opened(&body, sealer) {
                Ok(Record::Accepted(a)) => a,
                Err(OpenError::Open(OpenFailure::KeyGone)) => {
                    // Deleted, not lost: like a purge, its key stays in the window.
                    out.stats.shredded_records += 1;
                    index.finish(id, true);
                    if let Some(e) = idem_entry(Stored::Sealed { id, body })
                        && in_window(e.accepted_at_ms)
                    {
                        idem.push(e);
                    }
                    continue;
                }
                other => {
                    let reason = match other {
                        Err(e) => e.to_string(),
                        Ok(r) => format!("kind {} where a sealed Accepted was read", r.kind()),
                    };
                    tracing::error!(segment = home_seg, offset = home_off, %reason, "journal: sealed record does not open");
                    out.corruptions.push(Corruption {
                        segment: home_seg,
                        path: segment_path(dir, home_seg),
                        offset: home_off,
                        reason: format!("sealed record does not open: {reason}; skipped"),
                    });
                    index.finish(id, false);
                    continue;
                }
            },
        };
        let Some(meta) = index.msgs.get(&id) else {
            continue;
        };
        match &meta.state {
            MetaState::Dead(d) => dead.push(DeadLetter {
                message: msg,
                attempts: d.attempts,
                last_code: d.last_code,
                last_detail: d.last_detail.clone(),
                dead_at_ms: d.dead_at_ms,
            }),
            s => {
                let (attempts, state) = match *s {
                    MetaState::InFlight { attempt } => (attempt, PendingState::InFlight { attempt }),
                    MetaState::Retry {
                        attempt,
                        due_at_ms,
                        last_code,
                    } => (
                        attempt,
                        PendingState::RetryWait {
                            attempt,
                            due_at_ms,
                            last_code,
                        },
                    ),
                    _ => (0, PendingState::Queued),
                };
                unfinished.push(Pending {
                    message: msg,
                    attempts,
                    state,
                });
            }
        }
    }
    if !unfinished.is_sorted_by_key(|p: &Pending| p.message.accepted_at_ms) {
        // Stable: equal times keep log order. Nearly sorted input makes this cheap.
        unfinished.sort_by_key(|p| p.message.accepted_at_ms);
    }
    out.unfinished = unfinished;
    dead.sort_unstable_by_key(|d| d.message.id);
    out.dead = dead;
    idem.sort_unstable_by_key(|e| (e.accepted_at_ms, e.id));
    out.idempotency = idem;
    index.recent.expire(now_ms);
    out.stats.corruptions = out.corruptions.len() as u64;
    out.stats.elapsed = started.elapsed();
    Ok(RecoverOut {
        index,
        recovered: out,
        last_segment,
    })
}
