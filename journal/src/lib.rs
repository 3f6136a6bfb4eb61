//! Durable journal of the waping gateway.
//!
//! Every accepted message is appended to a segmented, checksummed, append-only log and
//! fdatasync'd before the client is acknowledged. A dedicated writer thread batches the
//! appends of all connections that arrive while the previous sync is in flight (group
//! commit). Opening the journal replays it: a torn tail is truncated, corruption in the
//! middle is reported with its position and skipped, and the unfinished messages, dead
//! letters and idempotency keys in the window come back in [`Recovered`]. Finished work is
//! compacted away so the directory stays bounded under steady load, and
//! [`Journal::enforce_retention`] removes finished bodies older than a cutoff step by step,
//! between group commits. With a [`RecordSealer`]
//! configured, recipients, senders and bodies are sealed before they reach the disk.
//!
//! Design and measurements: `docs/design/0004-journal.md`.
//!
//! ```no_run
//! use waping_journal::{Journal, JournalConfig, Record};
//! # fn f(records: Vec<Record>) -> Result<(), waping_journal::JournalError> {
//! let (journal, recovered) = Journal::open("state/journal", JournalConfig::default())?;
//! for pending in recovered.unfinished { /* re-queue */ let _ = pending; }
//! let lsn = journal.append(records).wait()?; // or `.await` in async code
//! # let _ = lsn; Ok(()) }
//! ```

mod completion;
mod config;
mod error;
mod journal;
mod lock;
mod record;
mod replay;
mod seal;
mod segment;
mod state;
mod status;
mod writer;

#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod sealing_tests;
#[cfg(test)]
mod tests;

pub use completion::Completion;
pub use config::{Clock, JournalConfig, SyncMode};
pub use error::{Fault, JournalError, OverloadReason, Result};
pub use journal::{
    CompactionReport, Journal, JournalStats, Lsn, RetentionReport, SYNC_LATENCY_BOUNDS_NS,
    SYNC_LATENCY_BUCKETS, SyncLatency,
};
pub use record::{
    AcceptedMessage, Body, DecodeError, FRAME_HEADER, InboundMessage, MAX_RECORD_LEN, MessageId, Record,
};
pub use replay::{Corruption, DeadLetter, IdemEntry, IdemKey, Pending, PendingState, Recovered, ReplayStats};
pub use seal::{OpenFailure, RecordSealer, SealFailure};
pub use segment::HEADER_LEN as SEGMENT_HEADER_LEN;
pub use status::{DeadFilter, MessageStatus, StatusState};
