//! Encryption at rest of the secret fields of records: the hook the journal calls and its
//! failures.
//!
//! With a sealer configured, `Accepted` and `Inbound` records are written in sealed layouts
//! (see [`crate::Record`]'s kind bytes): the fields replay, routing and compaction need
//! (ids, workspace, device, idempotency key, submitter, timestamps) stay readable, and the
//! recipient or sender, the body and WhatsApp's id go into one blob produced by
//! [`RecordSealer::seal`]. The associated data bound to the blob is the kind byte followed by
//! every plain field of the record as stored (message id, workspace and device first), so a
//! blob cannot be moved to another record and the plain fields cannot be edited unnoticed.

/// Seals and opens the secret part of records, per workspace (the implementation chooses the
/// workspace's key; crypto-shredding a workspace makes [`RecordSealer::open`] answer
/// [`OpenFailure::KeyGone`]).
///
/// Called on the appending threads for every `Accepted` and `Inbound` record, and on the
/// journal's writer thread only for control-plane reads (dead letters, deletion requests):
/// replay opens only the messages it returns, and compaction carries sealed bytes verbatim.
pub trait RecordSealer: Send + Sync + std::fmt::Debug + 'static {
    /// Seals `plaintext` for `workspace`, binding `aad`.
    fn seal(&self, workspace: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealFailure>;
    /// Opens what `seal` produced.
    fn open(&self, workspace: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailure>;
}

/// Why a sealed blob could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    /// The workspace was crypto-shredded: the journal treats the record as deleted.
    #[error("the workspace's key is gone (crypto-shredded)")]
    KeyGone,
    /// Tampered or corrupt: the journal treats the record as a corrupt one.
    #[error("sealed data does not open (tampered or corrupt): {0}")]
    Invalid(String),
}

/// Why sealing failed (the key service is unavailable, the workspace has no key any more, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealing failed: {0}")]
pub struct SealFailure(pub String);
