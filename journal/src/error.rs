//! Errors of the journal, each saying whose fault it is and whether retrying helps.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::record::MessageId;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The caller asked for something impossible (too large, unknown id).
    Caller,
    /// The gateway itself is at a limit or shutting down; nothing is wrong with the request.
    Internal,
    /// The disk or the files under the journal directory misbehaved.
    Storage,
}

/// Why the journal refused new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverloadReason {
    /// More than `max_queued_bytes` are waiting for the writer.
    QueueFull,
    /// The journal would grow past `max_disk_bytes`.
    DiskFull,
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal is at a configured bound; nothing was written. Retry after the hint.
    #[error("journal overloaded ({reason:?}); retry after {retry_after:?}")]
    Overloaded {
        /// Which bound was hit.
        reason: OverloadReason,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// A file operation failed.
    #[error("journal i/o error: {op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `write`, `fdatasync`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A record or segment failed verification.
    #[error("journal corrupt: segment {segment} offset {offset}: {reason}")]
    Corrupt {
        /// Segment number.
        segment: u64,
        /// Byte offset of the bad record inside the segment file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another process holds the journal directory.
    #[error("journal directory {path} is locked by another process (pid {pid:?})")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The pid written in the lock file by its holder, when readable.
        pid: Option<u32>,
    },
    /// An earlier write or sync failed, so the writer stopped accepting work: after a failed
    /// fdatasync the page cache can no longer be trusted. Restart the process to recover.
    #[error("journal writer stopped after a storage failure: {0}")]
    Poisoned(String),
    /// The journal was closed (or its writer thread is gone).
    #[error("journal closed")]
    Closed,
    /// A batch is larger than one segment can hold.
    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: u64,
        /// Largest allowed.
        max: u64,
    },
    /// No dead letter with this id.
    #[error("no dead letter with id {0}")]
    NotFound(MessageId),
    /// The configuration is unusable.
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// The sealer could not seal a record of the batch (key service failing, workspace key
    /// gone); nothing of the batch was written. Whether a retry helps depends on the sealer.
    #[error("cannot seal a record of workspace {workspace:?}; nothing written: {reason}")]
    Seal {
        /// Workspace of the record.
        workspace: String,
        /// The sealer's explanation.
        reason: String,
    },
    /// The journal holds sealed records but was opened without a sealer: replaying would
    /// lose their messages. Configure the sealer that wrote them.
    #[error(
        "journal segment {segment} ({path}) holds a sealed record at offset {offset}, but no sealer is \
         configured"
    )]
    SealerRequired {
        /// Segment number.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// Byte offset of the first sealed record met.
        offset: u64,
    },
}

impl JournalError {
    /// Whether the same request may succeed later without being changed.
    pub fn retryable(&self) -> bool {
        matches!(self, JournalError::Overloaded { .. })
    }

    /// Retry hint for [`JournalError::Overloaded`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JournalError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            JournalError::Overloaded { .. }
            | JournalError::Closed
            | JournalError::Locked { .. }
            | JournalError::Seal { .. } => Fault::Internal,
            JournalError::Io { .. } | JournalError::Corrupt { .. } | JournalError::Poisoned(_) => {
                Fault::Storage
            }
            JournalError::TooLarge { .. }
            | JournalError::NotFound(_)
            | JournalError::Config(_)
            | JournalError::SealerRequired { .. } => Fault::Caller,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
