//! Errors of the device store, each saying whose fault it is and whether retrying helps.

use std::io;
use std::path::PathBuf;

use crate::key::Ns;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The caller passed something invalid (id or key too long, value too large).
    Caller,
    /// The node's operator: another process holds the file, an incompatible file, bad options.
    Operator,
    /// The gateway itself (closed store, a sealer without its key, a bug).
    Internal,
    /// The disk or the database file misbehaved (i/o error, corruption, tampering, full).
    Storage,
}

/// Why a sealer refused to seal or open a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value's first byte names a sealing format this sealer does not know.
    #[error("unknown sealing version {0}")]
    UnknownVersion(u8),
    /// The value is shorter than its format requires.
    #[error("sealed value is truncated")]
    Truncated,
    /// Authentication failed: the value was altered, moved to another key or device, or sealed
    /// under a different key.
    #[error("sealed value failed authentication")]
    Unauthentic,
    /// The key needed is not available (e.g. a deleted workspace's data key).
    #[error("sealing key unavailable: {0}")]
    KeyUnavailable(String),
}

/// Errors of the device store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A workspace or device id is empty or longer than [`crate::MAX_ID_BYTES`]. Caller's fault.
    #[error("invalid {what} id: {len} bytes (must be 1..={max})", max = crate::MAX_ID_BYTES)]
    InvalidId {
        /// `"workspace"` or `"device"`.
        what: &'static str,
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// A key, value or batch exceeds its bound; nothing was written. Caller's fault.
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// `"key"`, `"value"` or `"batch"`.
        what: &'static str,
        /// Size offered.
        size: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Another process (or another `Store` in this one) has the database file open. Retrying
    /// helps once that holder has exited; two gateways on one state directory is a
    /// misconfiguration.
    #[error("device store {path} is locked by another process")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a database this version can read (wrong format version). Needs an
    /// upgrade or the right binary; retrying does not help.
    #[error("device store {path} has file format version {version}, which this build cannot open")]
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        version: u8,
    },
    /// The file failed a checksum or structure check. Restore from backup; retrying does not help.
    #[error("device store corrupt: {reason}")]
    Corrupt {
        /// What the engine reported.
        reason: String,
    },
    /// A stored value failed to open under the sealer: tampered with, swapped from another key or
    /// device, or sealed with a key this node does not have. Retrying does not help.
    #[error("value {workspace}/{device} ns {ns} failed to unseal: {source}")]
    Unseal {
        /// Workspace of the value.
        workspace: String,
        /// Device of the value.
        device: String,
        /// Namespace of the value.
        ns: Ns,
        /// The sealer's reason.
        #[source]
        source: SealError,
    },
    /// The sealer refused to seal a value (e.g. its key is unavailable); nothing was written.
    #[error("sealing failed: {0}")]
    Seal(#[source] SealError),
    /// The disk or quota is full. The writer stops (the engine cannot continue after a failed
    /// commit): free space, then reopen the store.
    #[error("device store disk full during {op}: {source}")]
    Full {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file operation failed. After a failed write the writer stops; reopen the store.
    #[error("device store i/o error during {op}: {source}")]
    Io {
        /// What was being done (`open`, `commit`, `read`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier commit failed, so the writer refuses all further writes: after a failed
    /// fsync the page cache can no longer be trusted. Reopen the store (restart) to recover.
    #[error("device store writer stopped after a storage failure: {0}")]
    Poisoned(String),
    /// The store was closed or its writer thread is gone.
    #[error("device store closed")]
    Closed,
    /// Unusable [`crate::StoreOptions`].
    #[error("invalid device store options: {0}")]
    Config(String),
    /// The engine reported a state this crate never creates (a bug here or in the engine).
    #[error("device store internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::InvalidId { .. } | StoreError::TooLarge { .. } => Fault::Caller,
            StoreError::Locked { .. } | StoreError::Incompatible { .. } | StoreError::Config(_) => {
                Fault::Operator
            }
            StoreError::Seal(_) | StoreError::Closed | StoreError::Internal(_) => Fault::Internal,
            StoreError::Corrupt { .. }
            | StoreError::Unseal { .. }
            | StoreError::Full { .. }
            | StoreError::Io { .. }
            | StoreError::Poisoned(_) => Fault::Storage,
        }
    }

    /// Whether the same call may succeed later, unchanged and without reopening the store.
    ///
    /// Only [`StoreError::Locked`] qualifies (the other holder may exit); every storage failure
    /// stops the writer until the store is reopened.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Locked { .. })
    }

    /// A copy for each caller whose write shared a failed group commit (`io::Error` is not
    /// `Clone`, so the OS error is rebuilt from its kind and text).
    pub(crate) fn duplicate(&self) -> StoreError {
        let io_copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            StoreError::InvalidId { what, len } => StoreError::InvalidId { what, len: *len },
            StoreError::TooLarge { what, size, max } => StoreError::TooLarge {
                what,
                size: *size,
                max: *max,
            },
            StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
            StoreError::Incompatible { path, version } => StoreError::Incompatible {
                path: path.clone(),
                version: *version,
            },
            StoreError::Corrupt { reason } => StoreError::Corrupt {
                reason: reason.clone(),
            },
            StoreError::Unseal {
                workspace,
                device,
                ns,
                source,
            } => StoreError::Unseal {
                workspace: workspace.clone(),
                device: device.clone(),
                ns: *ns,
                source: source.clone(),
            },
            StoreError::Seal(e) => StoreError::Seal(e.clone()),
            StoreError::Full { op, source } => StoreError::Full {
                op,
                source: io_copy(source),
            },
            StoreError::Io { op, source } => StoreError::Io {
                op,
                source: io_copy(source),
            },
            StoreError::Poisoned(s) => StoreError::Poisoned(s.clone()),
            StoreError::Closed => StoreError::Closed,
            StoreError::Config(s) => StoreError::Config(s.clone()),
            StoreError::Internal(s) => StoreError::Internal(s.clone()),
        }
    }

    pub(crate) fn from_io(op: &'static str, e: io::Error) -> StoreError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
                StoreError::Full { op, source: e }
            }
            // The engine reports a file that is not (or no longer) a database this way.
            io::ErrorKind::InvalidData => StoreError::Corrupt {
                reason: format!("{op}: {e}"),
            },
            _ => StoreError::Io { op, source: e },
        }
    }

    pub(crate) fn from_storage(op: &'static str, e: redb::StorageError) -> StoreError {
        match e {
            redb::StorageError::Corrupted(reason) => StoreError::Corrupt { reason },
            redb::StorageError::Io(e) => StoreError::from_io(op, e),
            redb::StorageError::PreviousIo => {
                StoreError::Poisoned(format!("{op}: an earlier i/o error stopped the engine"))
            }
            redb::StorageError::DatabaseClosed => StoreError::Closed,
            redb::StorageError::ValueTooLarge(size) => StoreError::TooLarge {
                what: "value",
                size,
                max: u32::MAX as usize,
            },
            other => StoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_open(path: &std::path::Path, e: redb::DatabaseError) -> StoreError {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
                StoreError::Locked {
                    path: path.to_owned(),
                }
            }
            redb::DatabaseError::UpgradeRequired(version) => StoreError::Incompatible {
                path: path.to_owned(),
                version,
            },
            redb::DatabaseError::RepairAborted => StoreError::Corrupt {
                reason: format!("{}: repair after an unclean shutdown failed", path.display()),
            },
            redb::DatabaseError::Storage(e) => StoreError::from_storage("open", e),
            other => StoreError::Internal(format!("open {}: {other}", path.display())),
        }
    }

    pub(crate) fn from_txn(op: &'static str, e: redb::TransactionError) -> StoreError {
        match e {
            redb::TransactionError::Storage(e) => StoreError::from_storage(op, e),
            other => StoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_table(op: &'static str, e: redb::TableError) -> StoreError {
        match e {
            redb::TableError::Storage(e) => StoreError::from_storage(op, e),
            other => StoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_commit(e: redb::CommitError) -> StoreError {
        match e {
            redb::CommitError::Storage(e) => StoreError::from_storage("commit", e),
            other => StoreError::Internal(format!("commit: {other}")),
        }
    }
}
