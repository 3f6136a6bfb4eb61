//! Journal configuration and the clock it reads wall time from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{JournalError, Result};
use crate::seal::RecordSealer;

/// How the writer makes a group commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` after every group commit (default): an acknowledged append survives a crash
    /// or power loss.
    #[default]
    Data,
    /// `fsync` (also flushes metadata such as mtime); slower, no stronger for this log.
    Full,
    /// No sync at all. **Loses acknowledged data on power loss or kernel crash.** For benchmarks
    /// only; a process crash alone loses nothing because writes are in the page cache.
    None,
}

/// Wall clock in unix milliseconds. Time is an input: tests use [`Clock::manual`].
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// A value set by hand (shared by clones).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Now, unix ms.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Clock::Manual(v) => v.load(Ordering::Relaxed),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set_ms(&self, ms: u64) {
        if let Clock::Manual(v) = self {
            v.store(ms, Ordering::Relaxed);
        }
    }

    /// Advances a manual clock.
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(v) = self {
            v.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Journal configuration.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Size at which a segment is sealed and a new one started. Default 64 MiB.
    pub segment_size: u64,
    /// Durability of group commits. Default [`SyncMode::Data`].
    pub sync: SyncMode,
    /// Create each segment at its full size (a sparse file) so appends do not change the file
    /// size and fdatasync needs no metadata commit: ~1/3 lower sync latency on ext4 (see the
    /// design record). Sealed segments are trimmed to their data. Default true.
    pub preallocate: bool,
    /// Bytes waiting for the writer beyond which `append` answers `Overloaded(QueueFull)`.
    /// Default 64 MiB.
    pub max_queued_bytes: u64,
    /// Bytes on disk (segments plus queued) beyond which `append` of new messages answers
    /// `Overloaded(DiskFull)`. Transitions of existing messages are always taken. Default 4 GiB.
    pub max_disk_bytes: u64,
    /// How long an idempotency key keeps deduplicating after its message was accepted,
    /// across restarts. Default 1 hour.
    pub idempotency_window: Duration,
    /// Compaction starts once more than this many sealed segments exist. Default 4.
    pub compaction_trigger_segments: usize,
    /// The oldest sealed segment is rewritten only while at most this fraction of it is
    /// still live (avoids copying a backlog around). Default 0.5.
    pub compaction_max_live_ratio: f64,
    /// Bytes of an old segment compaction processes between two group commits. Default 1 MiB.
    pub compaction_step_bytes: usize,
    /// Upper bound of one group commit's write; more waits for the next. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Idle writer wakes up this often to delete or compact expired segments. Default 1 s.
    pub maintenance_interval: Duration,
    /// Retry hint for `Overloaded(QueueFull)`. Default 20 ms.
    pub queue_full_retry_after: Duration,
    /// Retry hint for `Overloaded(DiskFull)`. Default 1 s.
    pub disk_full_retry_after: Duration,
    /// Wall clock (idempotency window, compaction, status retention). Default system clock.
    pub clock: Clock,
    /// Seals the recipient or sender, body and upstream id of `Accepted` and `Inbound`
    /// records before they are written, so they never reach the disk in clear. Default
    /// `None`: plaintext. Records written without a sealer stay readable with one; a journal
    /// holding sealed records refuses to open without one ([`JournalError::SealerRequired`]).
    pub sealer: Option<Arc<dyn RecordSealer>>,
    /// Finished messages (sent, failed, purged) whose status
    /// [`crate::Journal::message_status`] still answers; the oldest is forgotten first. 0
    /// keeps none. Default 1 000 000. Each costs about 96 bytes (a 64-byte entry and a sent
    /// message's upstream id), so the default holds up to ~92 MiB once full; at 1 000
    /// finished messages/s it covers the last ~17 minutes. Forgotten in chunks of
    /// `status_capacity / 128` (at most 4096) entries.
    pub status_capacity: usize,
    /// How long after finishing a message's status stays queryable (also bounded by
    /// `status_capacity`). Default 7 days.
    pub status_retention: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_size: 64 << 20,
            sync: SyncMode::Data,
            preallocate: true,
            max_queued_bytes: 64 << 20,
            max_disk_bytes: 4 << 30,
            idempotency_window: Duration::from_secs(3600),
            compaction_trigger_segments: 4,
            compaction_max_live_ratio: 0.5,
            compaction_step_bytes: 1 << 20,
            max_batch_bytes: 8 << 20,
            maintenance_interval: Duration::from_secs(1),
            queue_full_retry_after: Duration::from_millis(20),
            disk_full_retry_after: Duration::from_secs(1),
            clock: Clock::System,
            sealer: None,
            status_capacity: 1_000_000,
            status_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl JournalConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(JournalError::Config(m.to_string()));
        if self.segment_size < 4096 || self.segment_size > u32::MAX as u64 {
            return bad("segment_size must be between 4 KiB and 4 GiB");
        }
        if !(0.0..=1.0).contains(&self.compaction_max_live_ratio) {
            return bad("compaction_max_live_ratio must be within 0..=1");
        }
        if self.compaction_step_bytes == 0 || self.max_batch_bytes == 0 {
            return bad("compaction_step_bytes and max_batch_bytes must be > 0");
        }
        Ok(())
    }

    /// Largest frame (and largest single append batch) this configuration allows.
    pub fn max_batch_len(&self) -> u64 {
        (self.segment_size - crate::segment::HEADER_LEN as u64).min(crate::record::MAX_RECORD_LEN as u64)
    }

    pub(crate) fn prealloc_size(&self) -> Option<u64> {
        self.preallocate.then_some(self.segment_size)
    }

    pub(crate) fn durable(&self) -> bool {
        self.sync != SyncMode::None
    }

    pub(crate) fn window_ms(&self) -> u64 {
        self.idempotency_window.as_millis() as u64
    }

    pub(crate) fn status_retention_ms(&self) -> u64 {
        self.status_retention.as_millis().try_into().unwrap_or(u64::MAX)
    }
}
