//! Errors of the event store, each saying whose fault it is and whether retrying helps.

use std::io;
use std::path::{Path, PathBuf};

use crate::model::ModelError;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The caller passed something invalid (an event breaking the model's rules, too large).
    Caller,
    /// The node's operator: another process holds the file, an incompatible file, bad options.
    Operator,
    /// The gateway itself (closed store, sealing refused, a bug).
    Internal,
    /// The disk or the database file misbehaved (i/o error, corruption, tampering, full).
    Storage,
}

/// Errors of the event store.
///
/// Per-event read results (`Pending::event`, `Stored::event`, ...) use the same type: an
/// event whose workspace key was shredded is [`EventStoreError::KeyGone`] there, without
/// failing the rest of the page.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// An event breaks the model's rules ([`crate::Event::validate`]); nothing of its batch was
    /// written. Caller's fault; retrying unchanged does not help.
    #[error("invalid event (index {index} of the batch): {source}")]
    Invalid {
        /// Position of the event in the batch.
        index: usize,
        /// Which rule.
        #[source]
        source: ModelError,
    },
    /// An event, or its endpoint list, exceeds a bound of [`crate::StoreOptions`]; nothing of
    /// its batch was written. Caller's fault.
    #[error("{what} of {size} exceeds the limit of {max}")]
    TooLarge {
        /// `"event data"` (bytes), `"endpoints"` (count) or `"batch"` (events).
        what: &'static str,
        /// Size offered.
        size: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Another process (or another [`crate::EventStore`] in this one) has the file open.
    /// Retrying helps once that holder has exited; two gateways on one state directory is a
    /// misconfiguration.
    #[error("event store {path} is locked by another process or handle")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not an event store this build can read (another engine or layout version).
    /// Needs the right binary; retrying does not help.
    #[error("event store {path} is incompatible: {reason}")]
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The file, or a row in it, failed a structure check. Restore from backup; retrying does
    /// not help.
    #[error("event store corrupt: {reason}")]
    Corrupt {
        /// What was found.
        reason: String,
    },
    /// The event's workspace key was shredded (workspace deleted): the payload is gone for
    /// good. Per event; retrying does not help. Workers should drop its deliveries.
    #[error("event {seq} of workspace {workspace} is unreadable: the workspace's key is gone")]
    KeyGone {
        /// Workspace of the event.
        workspace: String,
        /// Its sequence number.
        seq: u64,
    },
    /// A sealed payload failed to open for another reason: tampered with, copied from another
    /// row, or a store opened without the sealer that wrote it. Per event; retrying does not
    /// help.
    #[error("event {seq} does not open: {reason}")]
    Unseal {
        /// Its sequence number.
        seq: u64,
        /// The sealer's reason.
        reason: String,
    },
    /// The sealer refused to seal an event (no key for the workspace, key service down);
    /// nothing of that append was written. Retry helps if the key service comes back; not for
    /// a deleted workspace.
    #[error("sealing an event of workspace {workspace} failed: {reason}")]
    Seal {
        /// Workspace of the event.
        workspace: String,
        /// The sealer's reason.
        reason: String,
    },
    /// A file operation failed. A read may succeed when retried; after a failed write the
    /// writer stops ([`EventStoreError::Poisoned`]) and only a reopen recovers.
    #[error("event store i/o error during {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier commit failed, so the writer refuses all further writes: after a failed
    /// fsync the page cache can no longer be trusted. Reopen the store (restart) to recover.
    #[error("event store writer stopped after a storage failure: {0}")]
    Poisoned(String),
    /// The store was closed or its writer thread is gone.
    #[error("event store closed")]
    Closed,
    /// Unusable [`crate::StoreOptions`].
    #[error("invalid event store options: {0}")]
    Config(String),
    /// The engine reported a state this crate never creates (a bug here or in the engine).
    #[error("event store internal error: {0}")]
    Internal(String),
}

impl EventStoreError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        use EventStoreError as E;
        match self {
            E::Invalid { .. } | E::TooLarge { .. } => Fault::Caller,
            E::Locked { .. } | E::Incompatible { .. } | E::Config(_) => Fault::Operator,
            E::Seal { .. } | E::KeyGone { .. } | E::Closed | E::Internal(_) => Fault::Internal,
            E::Corrupt { .. } | E::Unseal { .. } | E::Io { .. } | E::Poisoned(_) => Fault::Storage,
        }
    }

    /// Whether the same call may succeed later without reopening the store: the other holder
    /// of the file may exit, a key service may come back, a read i/o error may be transient.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            EventStoreError::Locked { .. } | EventStoreError::Seal { .. } | EventStoreError::Io { .. }
        )
    }

    /// A copy for each caller whose request shared a failed group commit (`io::Error` and
    /// `ModelError` are not `Clone`; both are rebuilt from their text).
    pub(crate) fn duplicate(&self) -> EventStoreError {
        use EventStoreError as E;
        match self {
            E::Invalid { index, source } => E::Invalid {
                index: *index,
                source: ModelError::Invalid {
                    reason: source.to_string(),
                },
            },
            E::TooLarge { what, size, max } => E::TooLarge {
                what,
                size: *size,
                max: *max,
            },
            E::Locked { path } => E::Locked { path: path.clone() },
            E::Incompatible { path, reason } => E::Incompatible {
                path: path.clone(),
                reason: reason.clone(),
            },
            E::Corrupt { reason } => E::Corrupt {
                reason: reason.clone(),
            },
            E::KeyGone { workspace, seq } => E::KeyGone {
                workspace: workspace.clone(),
                seq: *seq,
            },
            E::Unseal { seq, reason } => E::Unseal {
                seq: *seq,
                reason: reason.clone(),
            },
            E::Seal { workspace, reason } => E::Seal {
                workspace: workspace.clone(),
                reason: reason.clone(),
            },
            E::Io { op, source } => E::Io {
                op,
                source: io::Error::new(source.kind(), source.to_string()),
            },
            E::Poisoned(s) => E::Poisoned(s.clone()),
            E::Closed => E::Closed,
            E::Config(s) => E::Config(s.clone()),
            E::Internal(s) => E::Internal(s.clone()),
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> EventStoreError {
        EventStoreError::Corrupt {
            reason: reason.into(),
        }
    }

    pub(crate) fn from_io(op: &'static str, e: io::Error) -> EventStoreError {
        match e.kind() {
            // The engine reports a file that is not (or no longer) a database this way.
            io::ErrorKind::InvalidData => EventStoreError::Corrupt {
                reason: format!("{op}: {e}"),
            },
            _ => EventStoreError::Io { op, source: e },
        }
    }

    pub(crate) fn from_storage(op: &'static str, e: redb::StorageError) -> EventStoreError {
        match e {
            redb::StorageError::Corrupted(reason) => EventStoreError::Corrupt { reason },
            redb::StorageError::Io(e) => EventStoreError::from_io(op, e),
            redb::StorageError::PreviousIo => {
                EventStoreError::Poisoned(format!("{op}: an earlier i/o error stopped the engine"))
            }
            redb::StorageError::DatabaseClosed => EventStoreError::Closed,
            other => EventStoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_open(path: &Path, e: redb::DatabaseError) -> EventStoreError {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
                EventStoreError::Locked {
                    path: path.to_owned(),
                }
            }
            redb::DatabaseError::UpgradeRequired(version) => EventStoreError::Incompatible {
                path: path.to_owned(),
                reason: format!("database engine file format {version}"),
            },
            redb::DatabaseError::RepairAborted => EventStoreError::Corrupt {
                reason: format!("{}: repair after an unclean shutdown failed", path.display()),
            },
            redb::DatabaseError::Storage(e) => EventStoreError::from_storage("open", e),
            other => EventStoreError::Internal(format!("open {}: {other}", path.display())),
        }
    }

    pub(crate) fn from_txn(op: &'static str, e: redb::TransactionError) -> EventStoreError {
        match e {
            redb::TransactionError::Storage(e) => EventStoreError::from_storage(op, e),
            other => EventStoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_table(op: &'static str, e: redb::TableError) -> EventStoreError {
        match e {
            redb::TableError::Storage(e) => EventStoreError::from_storage(op, e),
            redb::TableError::TableTypeMismatch { table, .. } | redb::TableError::TableIsMultimap(table) => {
                EventStoreError::Incompatible {
                    path: PathBuf::new(),
                    reason: format!("table {table} has another layout"),
                }
            }
            other => EventStoreError::Internal(format!("{op}: {other}")),
        }
    }

    pub(crate) fn from_commit(e: redb::CommitError) -> EventStoreError {
        match e {
            redb::CommitError::Storage(e) => EventStoreError::from_storage("commit", e),
            other => EventStoreError::Internal(format!("commit: {other}")),
        }
    }
}

/// `?` on engine errors inside one operation: the operation name is `op`.
pub(crate) trait StorageContext<T> {
    fn ctx(self, op: &'static str) -> Result<T, EventStoreError>;
}

impl<T> StorageContext<T> for Result<T, redb::StorageError> {
    fn ctx(self, op: &'static str) -> Result<T, EventStoreError> {
        self.map_err(|e| EventStoreError::from_storage(op, e))
    }
}

impl<T> StorageContext<T> for Result<T, redb::TableError> {
    fn ctx(self, op: &'static str) -> Result<T, EventStoreError> {
        self.map_err(|e| EventStoreError::from_table(op, e))
    }
}

impl<T> StorageContext<T> for Result<T, redb::TransactionError> {
    fn ctx(self, op: &'static str) -> Result<T, EventStoreError> {
        self.map_err(|e| EventStoreError::from_txn(op, e))
    }
}
