//! The node's local durable audit log and its writer thread.
//!
//! Layout of the spool directory (mode 0700):
//! - `seg-<first seq, 20 digits>.jsonl` (mode 0600): record lines in sequence order, each
//!   exactly `Record::to_line()` and a `\n`. A new segment starts once the active one
//!   holds [`SpoolOptions::segment_bytes`]; segments are the unit of deletion.
//! - `inbox/`: events dropped by command-line tools on the node ([`write_inbox`]), which
//!   cannot write the segments while the gateway runs.
//! - `cursors/<sink>`: the last sequence number shipped to each sink, decimal text.
//!
//! One OS thread (`audit-writer`) owns the segments. Producers push into a bounded
//! lock-free queue ([`SpoolBackend`]); the writer drains up to [`MAX_BATCH`] records,
//! chains them, appends them with one `write` and one `fdatasync` (group commit), then
//! publishes the new durable head to the shipping tasks and answers the waiters. Nothing
//! is reported durable before its `fdatasync` returned.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use tokio::sync::{oneshot, watch};

use crate::auditor::{AuditError, Backend, Pending};
use crate::chain::{DigestSigner, Hash};
use crate::config::{AuditConfig, SpoolFullPolicy};
use crate::record::{Action, Actor, Detail, Event, Record};
use crate::sink::Line;

/// Most records in one group commit. Bounds the latency of the first waiter in a batch
/// and the bytes a failed commit has to roll back; at ~400 B a record, one batch is
/// ~400 KiB, far beyond what one `fdatasync` needs to amortise.
pub const MAX_BATCH: usize = 1024;

/// How long the idle writer sleeps before looking at its timers (digest, inbox).
const IDLE_PARK: Duration = Duration::from_millis(200);

/// How often the writer looks into the inbox.
const INBOX_EVERY: Duration = Duration::from_secs(1);

/// Inbox files ingested per pass, so a flood of them cannot starve producers.
const INBOX_BATCH: usize = 1000;

/// Delays between attempts after a failed commit: doubling from the first to the last.
const FAIL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FAIL_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// At most one error log line per this interval from the writer (a failing disk fails
/// every batch; the counter still counts each).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a line's action is marked as a digest; used to find the last digest on open
/// without parsing every line. Quotes inside JSON strings are escaped, so this exact
/// text only occurs as the `action` field.
const DIGEST_MARK: &[u8] = br#""action":"audit.digest""#;

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (created 0700).
    pub dir: PathBuf,
    /// Node name written into every record.
    pub node: String,
    /// Segment size that starts a new segment. The effective size is at most a quarter of
    /// `spool_max_bytes`, so that a full spool always has whole segments to delete. A
    /// segment may exceed it by one record.
    pub segment_bytes: u64,
    /// Unshipped bytes at which the spool is full (see [`SpoolFullPolicy`]).
    pub spool_max_bytes: u64,
    /// Records that may wait in memory for the writer; at least 1.
    pub queue_capacity: usize,
    /// What a full spool does.
    pub on_full: SpoolFullPolicy,
    /// Time between signed digests (written only when records were added).
    pub digest_interval: Duration,
}

impl SpoolOptions {
    /// The options `cfg` asks for, for the spool in `dir` of node `node`.
    pub fn from_config(cfg: &AuditConfig, dir: PathBuf, node: String) -> SpoolOptions {
        SpoolOptions {
            dir,
            node,
            segment_bytes: cfg.segment_bytes,
            spool_max_bytes: cfg.spool_max_bytes,
            queue_capacity: cfg.queue_capacity as usize,
            on_full: cfg.on_spool_full,
            digest_interval: Duration::from_secs(cfg.digest_interval_s),
        }
    }

    fn segment_limit(&self) -> u64 {
        self.segment_bytes.min(self.spool_max_bytes / 4).max(1)
    }
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Sequence number of the last complete record (0 for an empty spool).
    pub head_seq: u64,
    /// Link of that record (`Hash::ZERO` for an empty spool).
    pub head_hash: Hash,
    /// Bytes of a torn last line cut off (0 after a clean stop).
    pub truncated_bytes: u64,
    /// Segments on disk.
    pub segments: usize,
    /// Link of the last `audit.digest` record found (`Hash::ZERO` if none).
    pub last_digest: Hash,
}

/// The spool: cursors, readers, the producers' backend and the writer. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    init: Arc<Mutex<Option<WriterInit>>>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

/// State recovered by `open` and handed to the writer thread.
struct WriterInit {
    active: Option<Active>,
    head_seq: u64,
    head_hash: Hash,
    last_digest: Hash,
}

/// The segment being appended to.
struct Active {
    first: u64,
    file: File,
    /// Bytes durable in the file; anything beyond is cut off before the next write.
    len: u64,
    /// Whether the segment is in the index (it is once its first commit succeeded), so
    /// readers and GC see only segments that hold durable records.
    published: bool,
}

/// What the writer and the readers share. Producers touch only the atomics and the queue.
struct Shared {
    dir: PathBuf,
    node: String,
    segment_limit: u64,
    max_bytes: u64,
    policy: SpoolFullPolicy,
    digest_interval_ms: u64,
    queue: ArrayQueue<Pending>,
    /// Set by the writer before it parks; a producer that sees it unparks the writer.
    sleeping: AtomicBool,
    writer: OnceLock<Thread>,
    /// No more records are taken.
    stopped: AtomicBool,
    /// Producers between their `stopped` check and their queue push; the writer waits for
    /// 0 after setting `stopped`, so no accepted record is left behind at close.
    inflight: AtomicUsize,
    /// A clean close was asked for ([`Writer::close`]).
    closing: AtomicBool,
    close_reply: Mutex<Option<oneshot::Sender<Result<u64, AuditError>>>>,
    /// The writer must exit without writing anything more (the pipeline was dropped).
    abandon: AtomicBool,
    /// The last commit failed and none succeeded since.
    failing: AtomicBool,
    /// Bytes of segments some registered sink has not fully received.
    unshipped: AtomicU64,
    commits: AtomicU64,
    head: watch::Sender<u64>,
    index: Mutex<Index>,
    #[cfg(test)]
    inject_failures: std::sync::atomic::AtomicU32,
}

/// Segments and cursors; locked by the writer once per commit and by the shipping tasks
/// once per shipped batch, never by producers.
#[derive(Debug, Default)]
struct Index {
    /// First seq → bytes, published segments only.
    segments: BTreeMap<u64, u64>,
    /// Durable head.
    head: u64,
    /// Registered sinks' cursors.
    cursors: BTreeMap<String, u64>,
}

impl Index {
    /// Unshipped bytes at segment granularity: a segment counts whole while any registered
    /// sink lacks any of its records. With no sink registered nothing is waiting to be
    /// shipped: the spool then keeps every segment (it is the only copy) but never counts
    /// as full.
    fn unshipped(&self) -> u64 {
        let Some(min) = self.cursors.values().copied().min() else {
            return 0;
        };
        let mut total = 0;
        let mut it = self.segments.iter().peekable();
        while let Some((_, &bytes)) = it.next() {
            let last = it.peek().map(|(f, _)| **f - 1).unwrap_or(self.head);
            if last > min {
                total += bytes;
            }
        }
        total
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("node", &self.node)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // A panic while holding the index cannot leave it half-updated in a way that matters
    // more than stopping the audit log would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn admit(&self) -> Result<(), AuditError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(AuditError::Stopped);
        }
        if self.policy == SpoolFullPolicy::Refuse {
            let bytes = self.unshipped.load(Ordering::Relaxed);
            if bytes >= self.max_bytes {
                return Err(AuditError::SpoolFull {
                    bytes,
                    max: self.max_bytes,
                });
            }
        }
        Ok(())
    }

    fn wake(&self) {
        // Pairs with the fence in `Writer::park`: either the writer sees the pushed record
        // before parking, or this sees `sleeping` and unparks it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst)
            && self.sleeping.swap(false, Ordering::SeqCst)
            && let Some(t) = self.writer.get()
        {
            t.unpark();
        }
    }

    fn unpark(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    fn set_unshipped(&self, ix: &Index) {
        let b = ix.unshipped();
        self.unshipped.store(b, Ordering::Relaxed);
        metrics::gauge!("waping_audit_spool_bytes").set(b as f64);
    }

    fn seg_path(&self, first: u64) -> PathBuf {
        self.dir.join(segment_name(first))
    }

    fn cursor_path(&self, name: &str) -> PathBuf {
        self.dir.join("cursors").join(name)
    }
}

/// `seg-<first seq, 20 digits>.jsonl`.
pub fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.jsonl")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(first) = e.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
struct SeqProbe {
    seq: u64,
}

/// The `seq` of a record line; also checks that the line is one JSON object.
pub(crate) fn line_seq(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<SeqProbe>(line).ok().map(|p| p.seq)
}

/// Where the complete lines of a file end, and the last complete line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Offset just after the last `\n` (0 if there is none).
    pub complete_end: u64,
    /// Offset and bytes (without `\n`) of the last complete line.
    pub last: Option<(u64, Vec<u8>)>,
}

/// Finds the last two newlines before `len` by reading backwards in chunks, so a large
/// file costs only its tail.
pub(crate) fn find_tail(f: &File, len: u64) -> io::Result<Tail> {
    const CHUNK: u64 = 64 << 10;
    let mut newlines: Vec<u64> = Vec::with_capacity(2);
    let mut pos = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while pos > 0 && newlines.len() < 2 {
        let start = pos.saturating_sub(CHUNK);
        let n = (pos - start) as usize;
        f.read_exact_at(&mut buf[..n], start)?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                newlines.push(start + i as u64);
                if newlines.len() == 2 {
                    break;
                }
            }
        }
        pos = start;
    }
    let Some(&nl) = newlines.first() else {
        return Ok(Tail {
            complete_end: 0,
            last: None,
        });
    };
    let start = newlines.get(1).map(|p| p + 1).unwrap_or(0);
    let mut line = vec![0u8; (nl - start) as usize];
    f.read_exact_at(&mut line, start)?;
    Ok(Tail {
        complete_end: nl + 1,
        last: Some((start, line)),
    })
}

/// Cuts a torn end off `f` (length `len`): bytes after the last newline, and a last line
/// that is not a JSON object with a `seq`. Returns the new length, the bytes cut and the
/// last valid line. A second invalid line before it is not a crash artefact: refused.
pub(crate) fn truncate_torn(f: &File, len: u64, what: &Path) -> io::Result<(u64, u64, Option<Vec<u8>>)> {
    let mut tail = find_tail(f, len)?;
    let mut end = tail.complete_end;
    if let Some((start, line)) = &tail.last
        && line_seq(line).is_none()
    {
        end = *start;
        tail = find_tail(f, end)?;
        if let Some((_, l)) = &tail.last
            && line_seq(l).is_none()
        {
            return Err(invalid(format!(
                "{}: the last two lines are not audit records; this is not a torn write, refusing to cut it (inspect the file)",
                what.display()
            )));
        }
    }
    let cut = len - end;
    if cut > 0 {
        f.set_len(end)?;
        f.sync_all()?;
    }
    Ok((end, cut, tail.last.map(|(_, l)| l)))
}

/// Link of the last `audit.digest` line in `path`, if any.
fn last_digest_in(path: &Path) -> io::Result<Option<Hash>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut found = None;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            break;
        }
        line.pop();
        if line.windows(DIGEST_MARK.len()).any(|w| w == DIGEST_MARK)
            && let Ok(rec) = serde_json::from_slice::<Record>(&line)
            && rec.action == Action::AuditDigest
        {
            found = Some(Hash::of_line(&line));
        }
    }
    Ok(found)
}

impl Spool {
    /// Opens (or creates) the spool in `opts.dir` and recovers the chain head: the last
    /// complete line of the last segment. A torn last line (no `\n`, or not a JSON record)
    /// is cut off and counted in [`Recovery::truncated_bytes`].
    pub fn open(opts: SpoolOptions) -> io::Result<(Spool, Recovery)> {
        let dir = opts.dir.clone();
        make_dir(&dir)?;
        make_dir(&dir.join("inbox"))?;
        make_dir(&dir.join("cursors"))?;
        let mut segs = list_segments(&dir)?;
        let mut truncated = 0u64;
        let mut head: Option<(u64, Vec<u8>)> = None;
        let mut newest = true;
        while let Some((first, path)) = segs.last().cloned() {
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = f.metadata()?.len();
            let line = if newest {
                let (_, cut, line) = truncate_torn(&f, len, &path)?;
                if cut > 0 {
                    tracing::warn!(file = %path.display(), bytes = cut, "audit spool: cut a torn last line left by a crash");
                    truncated += cut;
                }
                line
            } else {
                let t = find_tail(&f, len)?;
                if t.complete_end != len {
                    return Err(invalid(format!(
                        "{}: segment before the last one ends in a partial line; the spool was altered (inspect it; `audit verify` names the damage)",
                        path.display()
                    )));
                }
                t.last.map(|(_, l)| l)
            };
            newest = false;
            match line {
                Some(l) => {
                    let seq = line_seq(&l).ok_or_else(|| {
                        invalid(format!("{}: last line is not an audit record", path.display()))
                    })?;
                    if seq < first {
                        return Err(invalid(format!(
                            "{}: last record has seq {seq}, below the segment's first {first}",
                            path.display()
                        )));
                    }
                    head = Some((seq, l));
                    break;
                }
                None => {
                    // Created by a rotation whose first commit never completed.
                    fs::remove_file(&path)?;
                    sync_dir(&dir)?;
                    segs.pop();
                }
            }
        }
        let (head_seq, head_hash) = match &head {
            Some((seq, line)) => {
                if let Ok(rec) = serde_json::from_slice::<Record>(line)
                    && rec.node != opts.node
                {
                    tracing::warn!(
                        spool_node = %rec.node,
                        node = %opts.node,
                        "audit spool was written under another node name; its chain continues under the new name"
                    );
                }
                (*seq, Hash::of_line(line))
            }
            None => (0, Hash::ZERO),
        };
        let mut last_digest = Hash::ZERO;
        for (_, path) in segs.iter().rev() {
            if let Some(h) = last_digest_in(path)? {
                last_digest = h;
                break;
            }
        }
        let mut index = Index {
            head: head_seq,
            ..Index::default()
        };
        for (first, path) in &segs {
            index.segments.insert(*first, fs::metadata(path)?.len());
        }
        let active = match segs.last() {
            Some((first, path)) => {
                let file = OpenOptions::new().append(true).open(path)?;
                let len = file.metadata()?.len();
                Some(Active {
                    first: *first,
                    file,
                    len,
                    published: true,
                })
            }
            None => None,
        };
        let (head_tx, _) = watch::channel(head_seq);
        let shared = Arc::new(Shared {
            segment_limit: opts.segment_limit(),
            dir,
            node: opts.node.clone(),
            max_bytes: opts.spool_max_bytes,
            policy: opts.on_full,
            digest_interval_ms: opts.digest_interval.as_millis() as u64,
            queue: ArrayQueue::new(opts.queue_capacity.max(1)),
            sleeping: AtomicBool::new(false),
            writer: OnceLock::new(),
            stopped: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close_reply: Mutex::new(None),
            abandon: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            unshipped: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            head: head_tx,
            index: Mutex::new(index),
            #[cfg(test)]
            inject_failures: std::sync::atomic::AtomicU32::new(0),
        });
        let recovery = Recovery {
            head_seq,
            head_hash,
            truncated_bytes: truncated,
            segments: segs.len(),
            last_digest,
        };
        let init = WriterInit {
            active,
            head_seq,
            head_hash,
            last_digest,
        };
        Ok((
            Spool {
                shared,
                init: Arc::new(Mutex::new(Some(init))),
            },
            recovery,
        ))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The node name records are written under.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// The durable head: the highest sequence number fsync'd.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    /// A receiver of the durable head, for shipping tasks to wait on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Bytes of segments not yet shipped to every registered sink.
    pub fn unshipped_bytes(&self) -> u64 {
        self.shared.unshipped.load(Ordering::Relaxed)
    }

    /// Group commits done by the writer since open (each is one `fdatasync`).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// What producers push into (wrap it in an [`crate::Auditor`]).
    pub fn backend(&self) -> Arc<SpoolBackend> {
        Arc::new(SpoolBackend {
            shared: self.shared.clone(),
        })
    }

    /// A reader for one sink.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            shared: self.shared.clone(),
            pos: None,
        }
    }

    /// Registers sink `name` (segments are kept until it has them) and returns its cursor
    /// from `cursors/<name>` (0 if absent). A cursor beyond the head (the spool was reset)
    /// is taken back to the head so the sink gets the new chain. Register every sink before
    /// the first [`Spool::set_cursor`]: deletion looks only at registered cursors.
    pub fn register_sink(&self, name: &str) -> io::Result<u64> {
        let path = self.shared.cursor_path(name);
        let mut c = match fs::read_to_string(&path) {
            Ok(s) => match s.trim().parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    tracing::warn!(file = %path.display(), "audit sink cursor unreadable; the sink gets the spool from its start (it skips what it holds)");
                    0
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut ix = lock(&self.shared.index);
        if c > ix.head {
            tracing::warn!(
                sink = name,
                cursor = c,
                head = ix.head,
                "audit sink cursor is beyond the spool head (the spool was reset?); shipping the spool's records from its start"
            );
            c = 0;
        }
        ix.cursors.insert(name.to_owned(), c);
        self.shared.set_unshipped(&ix);
        Ok(c)
    }

    /// The last sequence number shipped to `name` (0 if unknown).
    pub fn cursor(&self, name: &str) -> u64 {
        lock(&self.shared.index).cursors.get(name).copied().unwrap_or(0)
    }

    /// Every registered sink's cursor.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        lock(&self.shared.index)
            .cursors
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Records that `name` has everything up to `seq` (cursors only move forward), persists
    /// it without fsync (a cursor that lags after a crash only causes re-sends, which sinks
    /// skip or dedupe) and deletes segments every registered sink has, except the active one.
    pub fn set_cursor(&self, name: &str, seq: u64) -> io::Result<()> {
        let sh = &self.shared;
        let mut doomed = Vec::new();
        {
            let mut ix = lock(&sh.index);
            let c = ix.cursors.entry(name.to_owned()).or_insert(0);
            if seq <= *c {
                return Ok(());
            }
            *c = seq;
            let min = ix.cursors.values().copied().min().unwrap_or(0);
            let firsts: Vec<u64> = ix.segments.keys().copied().collect();
            for w in firsts.windows(2) {
                if w[1] - 1 <= min {
                    ix.segments.remove(&w[0]);
                    doomed.push(w[0]);
                } else {
                    break;
                }
            }
            sh.set_unshipped(&ix);
        }
        write_cursor(&sh.cursor_path(name), seq)?;
        for first in doomed {
            match fs::remove_file(sh.seg_path(first)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts the writer thread. `first` is committed before anything else (the pipeline's
    /// `audit.start`), bypassing the full-spool check: it must be written for the sinks to
    /// start draining. Fails if called twice.
    pub fn start_writer(&self, signer: DigestSigner, first: Vec<Pending>) -> io::Result<Writer> {
        let init = self
            .init
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("audit spool writer already started"))?;
        let shared = self.shared.clone();
        let (gone_tx, gone_rx) = mpsc::channel::<()>();
        let mut w = WriterLoop {
            sh: shared.clone(),
            signer,
            seg: init.active,
            head_seq: init.head_seq,
            head_hash: init.head_hash,
            last_digest: init.last_digest,
            since_digest: 0,
            last_digest_ms: now_ms(),
            broken: false,
            retained: VecDeque::new(),
            err_log: RateLimit::new(ERROR_LOG_EVERY),
            fail_streak: 0,
        };
        let handle = thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let _gone = gone_tx;
                w.run(first);
            })?;
        let _ = shared.writer.set(handle.thread().clone());
        shared.unpark();
        Ok(Writer {
            shared,
            thread: Some(handle),
            gone: gone_rx,
        })
    }

    #[cfg(test)]
    fn inject_failures(&self, n: u32) {
        self.shared.inject_failures.store(n, Ordering::SeqCst);
    }
}

fn write_cursor(path: &Path, seq: u64) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{seq}")?;
    }
    fs::rename(&tmp, path)
}

/// The producers' side of the spool: a bounded lock-free queue to the writer.
#[derive(Debug)]
pub struct SpoolBackend {
    shared: Arc<Shared>,
}

impl Backend for SpoolBackend {
    fn push(&self, p: Pending) -> Result<(), AuditError> {
        let s = &self.shared;
        s.inflight.fetch_add(1, Ordering::SeqCst);
        let r = s
            .admit()
            .and_then(|()| s.queue.push(p).map_err(|_| AuditError::QueueFull));
        s.inflight.fetch_sub(1, Ordering::SeqCst);
        if r.is_ok() {
            s.wake();
        }
        r
    }

    /// As `push`, and also `Io` while the writer's last commit failed (records pushed now
    /// would most likely fail too).
    fn check(&self) -> Result<(), AuditError> {
        let s = &self.shared;
        s.admit()?;
        if s.queue.is_full() {
            return Err(AuditError::QueueFull);
        }
        if s.failing.load(Ordering::Relaxed) {
            return Err(AuditError::Io(
                "the audit spool's last write failed; see the gateway log".into(),
            ));
        }
        Ok(())
    }
}

/// The running writer thread. Dropping it without [`Writer::close`] stops the thread
/// without writing `audit.stop` (as a crash would, minus the torn line).
#[derive(Debug)]
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    gone: mpsc::Receiver<()>,
}

impl Writer {
    /// Stops taking records, commits what is queued and in the inbox, then `audit.stop` and
    /// a digest over it; answers with the final head. The thread exits afterwards.
    pub fn close(&self) -> oneshot::Receiver<Result<u64, AuditError>> {
        let (tx, rx) = oneshot::channel();
        *self.shared.close_reply.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.unpark();
        rx
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.abandon.store(true, Ordering::SeqCst);
        self.shared.unpark();
        // Bounded: a writer stuck in fsync on a hung disk must not hang the caller too.
        match self.gone.recv_timeout(Duration::from_secs(5)) {
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(()) => {
                let _ = t.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!("audit writer did not stop within 5 s (disk stalled?); leaving it");
            }
        }
    }
}

/// Whether a digest is due: at least one record since the last one, and `interval_ms`
/// passed since it by the wall clock. A clock stepped back counts as due, so a backward
/// step cannot postpone digests by its size.
pub fn digest_due(last_ms: u64, now_ms: u64, interval_ms: u64, records_since_last: u64) -> bool {
    records_since_last > 0 && (now_ms < last_ms || now_ms - last_ms >= interval_ms)
}

/// Allows one event per interval; counts what it suppressed.
#[derive(Debug)]
pub(crate) struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last allowed)` if allowed at `now`.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(l) if now.duration_since(l) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

type Done = oneshot::Sender<Result<u64, AuditError>>;

/// What one commit writes.
// Items live in one batch's Vec, nearly all of them events: boxing the event would cost an
// allocation per record to save bytes on the rare digest.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event {
        event: Event,
        done: Option<Done>,
        /// The inbox file to delete once the record is durable.
        inbox: Option<PathBuf>,
        /// Whether to keep the event for the next commit if this one fails (records that
        /// nobody waits for and that exist nowhere else).
        retain: bool,
    },
    /// A digest over the chain just before it, signed when the line is built.
    Digest { at_ms: u64 },
}

impl Item {
    fn event(event: Event, retain: bool) -> Item {
        Item::Event {
            event,
            done: None,
            inbox: None,
            retain,
        }
    }
}

struct WriterLoop {
    sh: Arc<Shared>,
    signer: DigestSigner,
    seg: Option<Active>,
    head_seq: u64,
    head_hash: Hash,
    last_digest: Hash,
    since_digest: u64,
    last_digest_ms: u64,
    /// The active file may hold bytes beyond `Active::len` from a failed commit.
    broken: bool,
    retained: VecDeque<Event>,
    err_log: RateLimit,
    fail_streak: u32,
}

impl WriterLoop {
    fn run(&mut self, first: Vec<Pending>) {
        let items = first
            .into_iter()
            .map(|p| Item::Event {
                event: p.event,
                done: p.done,
                inbox: None,
                retain: true,
            })
            .collect();
        let _ = self.commit(items);
        let mut next_inbox = Instant::now();
        loop {
            if self.sh.abandon.load(Ordering::SeqCst) {
                self.sh.stopped.store(true, Ordering::SeqCst);
                return;
            }
            if self.sh.closing.load(Ordering::SeqCst) {
                let r = self.close();
                let reply = self
                    .sh
                    .close_reply
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(tx) = reply {
                    let _ = tx.send(r);
                }
                return;
            }
            let ok = self.drain_once();
            if Instant::now() >= next_inbox {
                self.ingest_inbox();
                next_inbox = Instant::now() + INBOX_EVERY;
            }
            let now = now_ms();
            if digest_due(
                self.last_digest_ms,
                now,
                self.sh.digest_interval_ms,
                self.since_digest,
            ) && self.commit(vec![Item::Digest { at_ms: now }]).is_ok()
            {
                self.last_digest_ms = now;
            }
            if self.sh.policy == SpoolFullPolicy::DiscardOldest {
                self.discard_oldest();
            }
            if self.sh.failing.load(Ordering::Relaxed) {
                self.fail_streak = self.fail_streak.saturating_add(1);
                let d = FAIL_BACKOFF_MIN
                    .saturating_mul(1u32 << self.fail_streak.min(10))
                    .min(FAIL_BACKOFF_MAX);
                self.pause(d);
            } else {
                self.fail_streak = 0;
                if !ok || (self.sh.queue.is_empty() && self.retained.is_empty()) {
                    self.park(IDLE_PARK);
                }
            }
        }
    }

    /// Sleeps up to `d`, waking early for pushes, close and abandon.
    fn park(&self, d: Duration) {
        self.sh.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sh.queue.is_empty() && !self.stop_requested() {
            thread::park_timeout(d);
        }
        self.sh.sleeping.store(false, Ordering::SeqCst);
    }

    /// Waits `d` regardless of pushes (backoff after a failed commit).
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= until || self.stop_requested() {
                return;
            }
            thread::park_timeout(until - now);
        }
    }

    fn stop_requested(&self) -> bool {
        self.sh.closing.load(Ordering::SeqCst) || self.sh.abandon.load(Ordering::SeqCst)
    }

    /// One group commit of retained records and queued ones. Stops taking from the queue
    /// once the batch fills the active segment, so the next batch starts a new one.
    /// Returns whether the commit succeeded (or there was nothing to do).
    fn drain_once(&mut self) -> bool {
        let mut items = Vec::new();
        while items.len() < MAX_BATCH {
            let Some(ev) = self.retained.pop_front() else {
                break;
            };
            items.push(Item::event(ev, true));
        }
        let room = match &self.seg {
            Some(a) if a.len < self.sh.segment_limit => self.sh.segment_limit - a.len,
            _ => self.sh.segment_limit,
        };
        let mut approx = 0u64;
        while items.len() < MAX_BATCH && approx < room {
            let Some(p) = self.sh.queue.pop() else { break };
            // The line is ~1.3x the event's size; an estimate is enough to split batches.
            approx += 200 + p.event.reason.as_ref().map_or(0, |r| r.len() as u64);
            let retain = p.done.is_none();
            items.push(Item::Event {
                event: p.event,
                done: p.done,
                inbox: None,
                retain,
            });
        }
        self.commit(items).is_ok()
    }

    fn ingest_inbox(&mut self) {
        let dir = self.sh.dir.join("inbox");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.log_error("reading the audit inbox", &e);
                return;
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        if names.is_empty() {
            return;
        }
        names.sort();
        names.truncate(INBOX_BATCH);
        let mut items = Vec::new();
        for n in names {
            let path = dir.join(&n);
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    self.log_error("reading an audit inbox file", &e);
                    continue;
                }
            };
            match serde_json::from_slice::<Event>(&data) {
                Ok(event) => items.push(Item::Event {
                    event,
                    done: None,
                    inbox: Some(path),
                    retain: false,
                }),
                Err(e) => {
                    let mut bad = path.clone().into_os_string();
                    bad.push(".bad");
                    let renamed = fs::rename(&path, &bad);
                    tracing::error!(
                        file = %path.display(),
                        error = %e,
                        renamed = renamed.is_ok(),
                        "malformed audit inbox file: not recorded, kept as *.bad for inspection"
                    );
                    metrics::counter!("waping_audit_inbox_rejected_total").increment(1);
                }
            }
        }
        let _ = self.commit(items);
    }

    /// Under `discard_oldest`: while the spool is full, deletes the oldest segment, moves
    /// the cursors of the sinks that lacked part of it past it, and records the loss.
    fn discard_oldest(&mut self) {
        loop {
            if self.sh.unshipped.load(Ordering::Relaxed) < self.sh.max_bytes {
                return;
            }
            let (first, last, from, sinks) = {
                let mut ix = lock(&self.sh.index);
                let mut it = ix.segments.keys().copied();
                let (Some(first), Some(next)) = (it.next(), it.next()) else {
                    return;
                };
                let last = next - 1;
                let behind: Vec<(String, u64)> = ix
                    .cursors
                    .iter()
                    .filter(|(_, c)| **c < last)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                let Some(min) = behind.iter().map(|(_, c)| *c).min() else {
                    return;
                };
                ix.segments.remove(&first);
                for (name, _) in &behind {
                    ix.cursors.insert(name.clone(), last);
                }
                self.sh.set_unshipped(&ix);
                let names: Vec<String> = behind.into_iter().map(|(n, _)| n).collect();
                (first, last, (min + 1).max(first), names)
            };
            if let Err(e) = fs::remove_file(self.sh.seg_path(first))
                && e.kind() != io::ErrorKind::NotFound
            {
                self.log_error("deleting a discarded audit segment", &e);
            }
            for name in &sinks {
                if let Err(e) = write_cursor(&self.sh.cursor_path(name), last) {
                    self.log_error("writing an audit cursor", &e);
                }
            }
            metrics::counter!("waping_audit_discarded_records_total").increment(last + 1 - from);
            tracing::error!(
                from_seq = from,
                to_seq = last,
                sinks = ?sinks,
                "audit spool full: discarded the oldest records (on_spool_full = discard_oldest); an audit.gap record names them"
            );
            let gap = Event::new(now_ms(), Actor::System, Action::AuditGap).detail(Detail::Gap {
                from_seq: from,
                to_seq: last,
                sinks,
            });
            let _ = self.commit(vec![Item::event(gap, true)]);
        }
    }

    fn close(&mut self) -> Result<u64, AuditError> {
        self.sh.stopped.store(true, Ordering::SeqCst);
        while self.sh.inflight.load(Ordering::SeqCst) != 0 {
            thread::yield_now();
        }
        while !self.sh.queue.is_empty() || !self.retained.is_empty() {
            if !self.drain_once() {
                break;
            }
        }
        self.ingest_inbox();
        let mut last_err = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                thread::sleep(FAIL_BACKOFF_MIN * attempt);
            }
            let mut items: Vec<Item> = self.retained.drain(..).map(|e| Item::event(e, true)).collect();
            let at = now_ms();
            items.push(Item::event(
                Event::new(at, Actor::System, Action::AuditStop),
                false,
            ));
            items.push(Item::Digest { at_ms: at });
            match self.commit(items) {
                Ok(()) => return Ok(self.head_seq),
                Err(e) => last_err = Some(e),
            }
        }
        // Pending waiters already got their answers; what nobody waited for is lost here.
        if !self.retained.is_empty() {
            tracing::error!(
                records = self.retained.len(),
                "audit spool: records could not be written before shutdown"
            );
        }
        Err(AuditError::Io(last_err.unwrap_or_default()))
    }

    fn log_error(&mut self, what: &str, e: &dyn fmt::Display) {
        if let Some(suppressed) = self.err_log.allow(Instant::now()) {
            tracing::error!(error = %e, suppressed, "audit spool: {what} failed");
        }
    }

    /// Cuts bytes of a failed commit off the active segment.
    fn repair(&mut self) -> io::Result<()> {
        if let Some(a) = &mut self.seg {
            let path = self.sh.seg_path(a.first);
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)?;
            file.set_len(a.len)?;
            file.sync_all()?;
            a.file = file;
        }
        self.broken = false;
        Ok(())
    }

    /// Writes `items` with one write and one fdatasync. On success answers the waiters with
    /// their seq and publishes the head; on failure answers them with `Io`, keeps the
    /// retainable events for the next commit and leaves the head where it was.
    fn commit(&mut self, items: Vec<Item>) -> Result<(), String> {
        if items.is_empty() {
            return Ok(());
        }
        let rotate = match &self.seg {
            None => true,
            Some(a) => a.published && a.len >= self.sh.segment_limit,
        };
        let mut buf = Vec::with_capacity(items.len() * 400);
        let mut seq = self.head_seq;
        let mut hash = self.head_hash;
        let mut last_digest = self.last_digest;
        let mut since = self.since_digest;
        let mut actions = Vec::with_capacity(items.len());
        for item in &items {
            let line = match item {
                Item::Event { event, .. } => {
                    Record::from_event(event, &self.sh.node, seq + 1, &hash).to_line()
                }
                Item::Digest { at_ms } => {
                    let d = self.signer.digest(&self.sh.node, seq, &hash, &last_digest);
                    let ev = Event::new(*at_ms, Actor::System, Action::AuditDigest).detail(Detail::Digest(d));
                    Record::from_event(&ev, &self.sh.node, seq + 1, &hash).to_line()
                }
            };
            seq += 1;
            hash = Hash::of_line(&line);
            match item {
                Item::Digest { .. } => {
                    last_digest = hash;
                    since = 0;
                    actions.push(Action::AuditDigest);
                }
                Item::Event { event, .. } => {
                    since += 1;
                    actions.push(event.action);
                }
            }
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let res = self.write_batch(rotate, &buf);
        match res {
            Ok(()) => {
                self.head_seq = seq;
                self.head_hash = hash;
                self.last_digest = last_digest;
                self.since_digest = since;
                let a = self.seg.as_mut().expect("active segment after a write");
                a.len += buf.len() as u64;
                a.published = true;
                {
                    let mut ix = lock(&self.sh.index);
                    ix.segments.insert(a.first, a.len);
                    ix.head = seq;
                    self.sh.set_unshipped(&ix);
                }
                self.sh.failing.store(false, Ordering::Relaxed);
                self.sh.commits.fetch_add(1, Ordering::Relaxed);
                self.sh.head.send_replace(seq);
                let mut inbox_done = false;
                let mut s = seq - items.len() as u64;
                for item in items {
                    s += 1;
                    if let Item::Event { done, inbox, .. } = item {
                        if let Some(tx) = done {
                            let _ = tx.send(Ok(s));
                        }
                        if let Some(p) = inbox {
                            if let Err(e) = fs::remove_file(&p) {
                                self.log_error("deleting an ingested audit inbox file", &e);
                            }
                            inbox_done = true;
                        }
                    }
                }
                if inbox_done {
                    // A deletion lost to a crash would ingest the file a second time.
                    if let Err(e) = sync_dir(&self.sh.dir.join("inbox")) {
                        self.log_error("syncing the audit inbox", &e);
                    }
                }
                for a in actions {
                    metrics::counter!("waping_audit_records_total", "action" => a.as_str()).increment(1);
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                self.broken = true;
                self.sh.failing.store(true, Ordering::Relaxed);
                metrics::counter!("waping_audit_spool_write_errors_total").increment(1);
                self.log_error("writing the spool", &e);
                let mut keep = Vec::new();
                for item in items {
                    if let Item::Event {
                        event, done, retain, ..
                    } = item
                    {
                        if let Some(tx) = done {
                            let _ = tx.send(Err(AuditError::Io(msg.clone())));
                        } else if retain {
                            keep.push(event);
                        }
                    }
                }
                for ev in keep.into_iter().rev() {
                    self.retained.push_front(ev);
                }
                Err(msg)
            }
        }
    }

    fn write_batch(&mut self, rotate: bool, buf: &[u8]) -> io::Result<()> {
        if self.broken {
            self.repair()?;
        }
        if rotate {
            let first = self.head_seq + 1;
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(self.sh.seg_path(first))?;
            // A leftover of a failed first commit in this segment holds nothing durable.
            file.set_len(0)?;
            self.seg = Some(Active {
                first,
                file,
                len: 0,
                published: false,
            });
        }
        let a = self.seg.as_mut().expect("active segment");
        #[cfg(test)]
        if self
            .sh
            .inject_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // A partial write, as a full disk leaves it.
            a.file.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::other("injected write failure"));
        }
        a.file.write_all(buf)?;
        a.file.sync_data()?;
        if !a.published {
            sync_dir(&self.sh.dir)?;
        }
        Ok(())
    }
}

/// Drops `ev` into the running gateway's inbox in spool directory `dir`, for a command-line
/// tool on the node: written to a temporary name, fsync'd and renamed, so the writer sees
/// whole files only. Names start with the time, so the writer ingests them in creation order.
pub fn write_inbox(dir: &Path, ev: &Event) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let inbox = dir.join("inbox");
    make_dir(&inbox)?;
    let name = format!(
        "{:016}-{:010}-{:08}-{:08x}.json",
        now_ms(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let tmp = inbox.join(format!(".{name}.tmp"));
    let data = serde_json::to_vec(ev).map_err(io::Error::other)?;
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, inbox.join(&name))?;
    sync_dir(&inbox)
}

/// Reads consecutive durable lines for one sink. Keeps its file and offset between calls
/// so a sink that keeps up reads sequentially; finds the segment by its first sequence
/// number when the position is unknown.
#[derive(Debug)]
pub struct SpoolReader {
    shared: Arc<Shared>,
    pos: Option<ReadPos>,
}

#[derive(Debug)]
struct ReadPos {
    seg_first: u64,
    file: BufReader<File>,
    offset: u64,
    /// The seq the next line is expected to have.
    next_seq: u64,
}

impl SpoolReader {
    /// Up to `max_records` lines (and about `max_bytes`; at least one line) with seq above
    /// `after_seq` and at most `durable_head`, in order, without their `\n`. If the lines
    /// after `after_seq` were discarded (policy `discard_oldest`), the batch starts at the
    /// next line still held: the caller sees the jump, and the `audit.gap` record says why.
    pub fn read(
        &mut self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
        durable_head: u64,
    ) -> io::Result<Vec<Line>> {
        let mut out: Vec<Line> = Vec::new();
        let mut want = after_seq + 1;
        if want > durable_head || max_records == 0 {
            return Ok(out);
        }
        if self.pos.as_ref().is_some_and(|p| p.next_seq != want) {
            self.pos = None;
        }
        let mut bytes = 0usize;
        let mut buf = Vec::new();
        let mut relocations = 0;
        while out.len() < max_records && want <= durable_head {
            if self.pos.is_none() {
                match self.locate(want, None)? {
                    Some(p) => self.pos = Some(p),
                    None => break,
                }
            }
            let pos = self.pos.as_mut().expect("position");
            buf.clear();
            let n = pos.file.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                // End of this segment (or of what is written so far): go to the next one.
                pos.file.seek(SeekFrom::Start(pos.offset))?;
                let cur = pos.seg_first;
                match self.locate(want, Some(cur))? {
                    Some(p) => {
                        self.pos = Some(p);
                        relocations += 1;
                        if relocations > 64 {
                            break;
                        }
                        continue;
                    }
                    None => break,
                }
            }
            let line = &buf[..n - 1];
            let seq = line_seq(line).ok_or_else(|| {
                invalid(format!(
                    "audit spool segment {} at byte {}: not a record line",
                    segment_name(pos.seg_first),
                    pos.offset
                ))
            })?;
            if seq < want {
                pos.offset += n as u64;
                continue;
            }
            if seq > durable_head || (!out.is_empty() && bytes + line.len() > max_bytes) {
                pos.file.seek(SeekFrom::Start(pos.offset))?;
                break;
            }
            pos.offset += n as u64;
            bytes += line.len();
            want = seq + 1;
            pos.next_seq = want;
            out.push(Line {
                seq,
                bytes: Bytes::copy_from_slice(line),
            });
        }
        Ok(out)
    }

    /// Opens the segment holding `want`: the one with the largest first seq ≤ `want`, or
    /// the oldest after it if `want` was discarded. With `after` set, only segments that
    /// start after `after` qualify (moving on from a finished segment).
    fn locate(&self, want: u64, after: Option<u64>) -> io::Result<Option<ReadPos>> {
        for _ in 0..8 {
            let first = {
                let ix = lock(&self.shared.index);
                match after {
                    Some(cur) => ix.segments.range(cur + 1..).next().map(|(f, _)| *f),
                    None => ix
                        .segments
                        .range(..=want)
                        .next_back()
                        .or_else(|| ix.segments.range(want..).next())
                        .map(|(f, _)| *f),
                }
            };
            let Some(first) = first else { return Ok(None) };
            match File::open(self.shared.seg_path(first)) {
                Ok(f) => {
                    return Ok(Some(ReadPos {
                        seg_first: first,
                        file: BufReader::with_capacity(64 << 10, f),
                        offset: 0,
                        next_seq: want,
                    }));
                }
                // Deleted (shipped everywhere, or discarded) since the index was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auditor::Auditor;
    use crate::chain::PublicKey;
    use crate::record::DigestDetail;

    fn opts(dir: &Path) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            node: "n1".into(),
            segment_bytes: 64 << 10,
            spool_max_bytes: 1 << 30,
            queue_capacity: 4096,
            on_full: SpoolFullPolicy::Refuse,
            digest_interval: Duration::from_secs(3600),
        }
    }

    fn signer() -> DigestSigner {
        DigestSigner::from_seed(&[7; 32])
    }

    fn ev(i: u64) -> Event {
        Event::new(1_000 + i, Actor::Admin, Action::WorkspaceCreate).target("workspace", format!("ws{i}"))
    }

    fn pending(e: Event) -> (Pending, oneshot::Receiver<Result<u64, AuditError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Pending {
                event: e,
                done: Some(tx),
            },
            rx,
        )
    }

    /// Pushes and waits for durability.
    fn record(b: &SpoolBackend, e: Event) -> Result<u64, AuditError> {
        let (p, rx) = pending(e);
        b.push(p)?;
        rx.blocking_recv().unwrap_or(Err(AuditError::Stopped))
    }

    /// Every line of the spool's segments, in order.
    fn spool_lines(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (_, p) in list_segments(dir).unwrap() {
            let data = fs::read(p).unwrap();
            assert!(data.is_empty() || data.ends_with(b"\n"));
            out.extend(
                data.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec),
            );
        }
        out
    }

    fn records(dir: &Path) -> Vec<Record> {
        spool_lines(dir)
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn assert_chain(lines: &[Vec<u8>], first_prev: Hash) {
        let mut prev = first_prev;
        let mut seq = None;
        for l in lines {
            let r: Record = serde_json::from_slice(l).unwrap();
            assert_eq!(r.prev, prev.to_hex(), "link of seq {}", r.seq);
            if let Some(s) = seq {
                assert_eq!(r.seq, s + 1);
            }
            seq = Some(r.seq);
            prev = Hash::of_line(l);
        }
    }

    fn close(w: Writer) -> u64 {
        let h = w.close().blocking_recv().unwrap().unwrap();
        drop(w);
        h
    }

    #[test]
    fn digest_due_follows_a_simulated_clock() {
        let interval = 60_000;
        let mut now = 1_000_000u64;
        let mut last = now;
        let mut since = 0;
        let mut written = Vec::new();
        for step in 0..300u64 {
            now += 1_000;
            if step % 7 == 0 {
                since += 1;
            }
            if digest_due(last, now, interval, since) {
                written.push(now);
                last = now;
                since = 0;
            }
        }
        assert!(!written.is_empty());
        for w in written.windows(2) {
            assert!(w[1] - w[0] >= interval);
        }
        assert!(
            !digest_due(0, 10_000_000, interval, 0),
            "nothing added: no digest"
        );
        assert!(!digest_due(1_000, 60_999, interval, 5));
        assert!(digest_due(1_000, 61_000, interval, 5));
        assert!(digest_due(50_000, 1_000, interval, 1), "clock stepped back");
    }

    #[test]
    fn records_are_chained_and_the_head_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (sp, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!((rec.head_seq, rec.head_hash, rec.segments), (0, Hash::ZERO, 0));
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        let b = sp.backend();
        for i in 1..=10 {
            assert_eq!(record(&b, ev(i)), Ok(i));
        }
        assert_eq!(sp.head(), 10);
        let final_head = close(w);
        assert_eq!(final_head, 12, "audit.stop and a digest follow");
        assert_eq!(record(&b, ev(99)), Err(AuditError::Stopped));
        let lines = spool_lines(d.path());
        assert_eq!(lines.len(), 12);
        assert_chain(&lines, Hash::ZERO);
        let mode = fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let seg = &list_segments(d.path()).unwrap()[0].1;
        assert_eq!(fs::metadata(seg).unwrap().permissions().mode() & 0o777, 0o600);

        let (sp2, rec2) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec2.head_seq, 12);
        assert_eq!(rec2.head_hash, Hash::of_line(&lines[11]));
        assert_eq!(rec2.last_digest, Hash::of_line(&lines[11]));
        assert_eq!(rec2.truncated_bytes, 0);
        let w2 = sp2.start_writer(signer(), Vec::new()).unwrap();
        assert_eq!(record(&sp2.backend(), ev(13)), Ok(13));
        close(w2);
        let lines = spool_lines(d.path());
        assert_eq!(lines.len(), 15);
        assert_chain(&lines, Hash::ZERO);
        let pk = PublicKey::from_bytes(signer().public_key());
        let report = crate::verify::verify_dir(d.path(), &[pk]).unwrap();
        assert_eq!(report.nodes[0].last_seq, 15);
        assert_eq!(report.nodes[0].unsigned_tail, 0);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_chain_continues() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(opts(d.path())).unwrap();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        for i in 1..=5 {
            record(&sp.backend(), ev(i)).unwrap();
        }
        drop(w); // no audit.stop: as a crash
        let seg = list_segments(d.path()).unwrap()[0].1.clone();
        let before = fs::read(&seg).unwrap();
        let torn = br#"{"v":1,"node":"n1","seq":6,"ts":"2026"#;
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(torn).unwrap();
        drop(f);

        let (sp, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.head_seq, 5);
        assert_eq!(rec.truncated_bytes, torn.len() as u64);
        assert_eq!(fs::read(&seg).unwrap(), before);
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        assert_eq!(record(&sp.backend(), ev(6)), Ok(6));
        drop(w);
        assert_chain(&spool_lines(d.path()), Hash::ZERO);

        // A newline-terminated last line that is not a record (garbage from a crash) goes too.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"\0\0\0\0\n").unwrap();
        drop(f);
        let (_sp, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!((rec.head_seq, rec.truncated_bytes), (6, 5));

        // Two bad lines are not a torn write: refused rather than cut.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"junk\njunk\n").unwrap();
        drop(f);
        let err = Spool::open(opts(d.path())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn one_fsync_covers_a_whole_batch() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(SpoolOptions {
            segment_bytes: 1 << 20,
            ..opts(d.path())
        })
        .unwrap();
        let b = sp.backend();
        // Queued before the writer starts, so the writer finds them all at once.
        let rxs: Vec<_> = (1..=500)
            .map(|i| {
                let (p, rx) = pending(ev(i));
                b.push(p).unwrap();
                rx
            })
            .collect();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        let seqs: Vec<u64> = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap())
            .collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
        assert_eq!(sp.commits(), 1, "500 records, one group commit");
        close(w);
    }

    #[test]
    fn a_full_queue_refuses() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(SpoolOptions {
            queue_capacity: 4,
            ..opts(d.path())
        })
        .unwrap();
        let a = Auditor::new(sp.backend(), "n1");
        for i in 0..4 {
            a.emit(ev(i)).unwrap();
        }
        assert_eq!(a.check(), Err(AuditError::QueueFull));
        assert_eq!(a.emit(ev(5)), Err(AuditError::QueueFull));
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        assert_eq!(close(w), 6);
        assert_eq!(records(d.path()).len(), 6);
    }

    #[test]
    fn a_full_spool_refuses_until_a_sink_catches_up() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(SpoolOptions {
            segment_bytes: 1 << 10,
            spool_max_bytes: 8 << 10,
            ..opts(d.path())
        })
        .unwrap();
        assert_eq!(sp.register_sink("slow").unwrap(), 0);
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        let b = sp.backend();
        let mut n = 0;
        let full = loop {
            n += 1;
            assert!(n < 1000, "never full");
            match record(&b, ev(n)) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(
            matches!(full, AuditError::SpoolFull { max: 8192, bytes } if bytes >= 8192),
            "{full:?}"
        );
        assert_eq!(b.check(), Err(full));
        let segments_before = list_segments(d.path()).unwrap().len();
        assert!(segments_before >= 4, "{segments_before}");
        sp.set_cursor("slow", sp.head()).unwrap();
        assert_eq!(sp.unshipped_bytes(), 0);
        assert_eq!(
            list_segments(d.path()).unwrap().len(),
            1,
            "only the active segment stays"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("cursors/slow")).unwrap().trim(),
            sp.head().to_string()
        );
        assert!(record(&b, ev(n)).is_ok());
        close(w);
        // The kept segments still chain on from what was deleted.
        let (_, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.head_seq, sp.head());
    }

    #[test]
    fn discard_oldest_writes_a_gap_record() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(SpoolOptions {
            segment_bytes: 1 << 10,
            spool_max_bytes: 8 << 10,
            on_full: SpoolFullPolicy::DiscardOldest,
            ..opts(d.path())
        })
        .unwrap();
        sp.register_sink("slow").unwrap();
        sp.register_sink("fast").unwrap();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        let b = sp.backend();
        // "fast" keeps up: it sees every record ever written, gap records included.
        let mut fast = sp.reader();
        let mut seen: Vec<Line> = Vec::new();
        for i in 1..=100 {
            record(&b, ev(i)).expect("discard_oldest never refuses");
            let after = seen.last().map_or(0, |l| l.seq);
            seen.extend(fast.read(after, 1000, 1 << 20, sp.head()).unwrap());
            sp.set_cursor("fast", seen.last().unwrap().seq).unwrap();
        }
        close(w);
        let after = seen.last().map_or(0, |l| l.seq);
        seen.extend(fast.read(after, 1000, 1 << 20, sp.head()).unwrap());
        for (i, l) in seen.iter().enumerate() {
            assert_eq!(l.seq, i as u64 + 1, "the fast sink misses nothing");
        }
        let all: Vec<Vec<u8>> = seen.iter().map(|l| l.bytes.to_vec()).collect();
        assert_chain(&all, Hash::ZERO);
        let gaps: Vec<_> = seen
            .iter()
            .filter_map(
                |l| match serde_json::from_slice::<Record>(&l.bytes).unwrap().detail {
                    Some(Detail::Gap {
                        from_seq,
                        to_seq,
                        sinks,
                    }) => Some((from_seq, to_seq, sinks)),
                    _ => None,
                },
            )
            .collect();
        assert!(gaps.len() >= 2, "{gaps:?}");
        assert_eq!(gaps[0].0, 1, "the first gap starts at the first record");
        for g in &gaps {
            assert_eq!(g.2, vec!["slow".to_string()]);
        }
        for g in gaps.windows(2) {
            assert_eq!(g[1].0, g[0].1 + 1, "gaps are consecutive");
        }
        let last_gap = gaps.last().unwrap();
        assert_eq!(sp.cursor("slow"), last_gap.1);
        let recs = records(d.path());
        assert_eq!(
            recs[0].seq,
            last_gap.1 + 1,
            "the spool starts right after the last gap"
        );
        // The reader of the slow sink jumps over what was discarded.
        let mut r = sp.reader();
        let got = r.read(0, 10, 1 << 20, sp.head()).unwrap();
        assert_eq!(got[0].seq, last_gap.1 + 1);
    }

    #[test]
    fn inbox_files_are_ingested_and_bad_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(opts(d.path())).unwrap();
        let rot = Event::new(5, Actor::Cli, Action::MasterKeyRotate).target("node", "n1");
        write_inbox(d.path(), &rot).unwrap();
        write_inbox(d.path(), &ev(2)).unwrap();
        fs::write(d.path().join("inbox/0000000000000001-bad.json"), b"{not json").unwrap();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        close(w);
        let recs = records(d.path());
        assert_eq!(recs[0].action, Action::MasterKeyRotate, "in creation order");
        assert_eq!(recs[0].actor, Actor::Cli);
        assert_eq!(recs[1].action, Action::WorkspaceCreate);
        let left: Vec<String> = fs::read_dir(d.path().join("inbox"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["0000000000000001-bad.json.bad".to_string()]);
    }

    #[test]
    fn digests_verify_and_link_to_the_previous_one() {
        let d = tempfile::tempdir().unwrap();
        let pk = PublicKey::from_bytes(signer().public_key());
        let mut digests: Vec<(Record, Vec<u8>)> = Vec::new();
        for round in 0..2 {
            let (sp, _) = Spool::open(opts(d.path())).unwrap();
            let w = sp.start_writer(signer(), Vec::new()).unwrap();
            record(&sp.backend(), ev(round)).unwrap();
            close(w);
            let lines = spool_lines(d.path());
            let last = lines.last().unwrap().clone();
            let rec: Record = serde_json::from_slice(&last).unwrap();
            assert_eq!(rec.action, Action::AuditDigest);
            digests.push((rec, last));
        }
        let detail = |r: &Record| -> DigestDetail {
            match &r.detail {
                Some(Detail::Digest(d)) => d.clone(),
                other => panic!("{other:?}"),
            }
        };
        let (d1, d2) = (detail(&digests[0].0), detail(&digests[1].0));
        assert!(pk.verifies("n1", &d1) && pk.verifies("n1", &d2));
        assert_eq!(
            d1.head_hash, digests[0].0.prev,
            "head_hash is the digest's own prev"
        );
        assert_eq!(d1.head_seq, digests[0].0.seq - 1);
        assert_eq!(d1.prev_digest, Hash::ZERO.to_hex());
        assert_eq!(
            d2.prev_digest,
            Hash::of_line(&digests[0].1).to_hex(),
            "recovered on reopen"
        );
    }

    #[test]
    fn a_failed_write_is_never_reported_durable_and_the_chain_stays_intact() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(opts(d.path())).unwrap();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        let b = sp.backend();
        assert_eq!(record(&b, ev(1)), Ok(1));
        sp.inject_failures(1);
        assert!(matches!(record(&b, ev(2)), Err(AuditError::Io(_))));
        assert_eq!(sp.head(), 1);
        // Nobody waited for this one: it is kept and written by the next commit.
        b.push(Pending {
            event: ev(3),
            done: None,
        })
        .unwrap();
        let mut next = record(&b, ev(4));
        while matches!(next, Err(AuditError::Io(_))) {
            next = record(&b, ev(4));
        }
        assert_eq!(next, Ok(3));
        close(w);
        let lines = spool_lines(d.path());
        assert_chain(&lines, Hash::ZERO);
        let targets: Vec<String> = records(d.path())
            .into_iter()
            .filter_map(|r| r.target.map(|t| t.id))
            .collect();
        assert_eq!(
            targets,
            vec!["ws1", "ws3", "ws4"],
            "the refused record is not in the log"
        );
    }

    #[test]
    fn the_reader_follows_segments_and_stops_at_the_durable_head() {
        let d = tempfile::tempdir().unwrap();
        let (sp, _) = Spool::open(SpoolOptions {
            segment_bytes: 1 << 10,
            ..opts(d.path())
        })
        .unwrap();
        let w = sp.start_writer(signer(), Vec::new()).unwrap();
        for i in 1..=40 {
            record(&sp.backend(), ev(i)).unwrap();
        }
        assert!(list_segments(d.path()).unwrap().len() > 3);
        let all = spool_lines(d.path());
        let mut r = sp.reader();
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let b = r.read(after, 7, 1 << 20, 30).unwrap();
            if b.is_empty() {
                break;
            }
            after = b.last().unwrap().seq;
            got.extend(b);
        }
        assert_eq!(got.len(), 30);
        for (i, l) in got.iter().enumerate() {
            assert_eq!(l.seq, i as u64 + 1);
            assert_eq!(&l.bytes[..], &all[i][..]);
        }
        // Random access, and the byte bound (one line at least).
        let b = r.read(12, 100, 1, 40).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].seq, 13);
        let b = r.read(35, 100, 1 << 20, 40).unwrap();
        assert_eq!(
            b.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![36, 37, 38, 39, 40]
        );
        close(w);
    }
}
