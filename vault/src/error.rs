//! Typed errors of the vault: whose fault each one is and whether retrying can help.

use std::io;
use std::path::PathBuf;

/// Whose fault an error is, so callers can pick a status code and a log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The node's operator must act: key file missing, malformed or too open, wrong or
    /// rotated master key, unwritable directory.
    Operator,
    /// Stored or supplied ciphertext is unusable: tampered, truncated, sealed under a key that
    /// no longer exists, or the workspace's key was shredded.
    Data,
    /// A bug in the caller or this crate, or an unexpected failure of the OS.
    Internal,
}

/// Errors of the vault. Messages name files, modes and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key file could not be opened or read.
    #[error("cannot read the master key file {}: {source}", path.display())]
    KeyFileUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The master key file can be written by its group or accessed by anyone.
    #[error(
        "refusing the master key file {}: its mode is {mode:04o}, so its group can write it or \
         other users can access it; fix it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },

    /// The master key file does not hold a key in any accepted encoding.
    #[error(
        "the master key file {} does not hold a master key: expected 64 hex characters, base64 \
         (standard or url-safe, padded or not) of exactly 32 bytes, or exactly 32 raw bytes; \
         found {found}",
        path.display()
    )]
    KeyFileFormat {
        /// The file.
        path: PathBuf,
        /// What was found, described without its content (length and kind only).
        found: String,
    },

    /// [`crate::MasterKey::write_new_file`] refuses to replace an existing file.
    #[error("refusing to overwrite the existing file {}", path.display())]
    KeyFileExists {
        /// The file.
        path: PathBuf,
    },

    /// A [`crate::KeySource::Credential`] was used outside a systemd unit with credentials.
    #[error(
        "master key credential `{name}`: $CREDENTIALS_DIRECTORY is not set (set \
         LoadCredential={name}:<path> in the systemd unit, or use a key file)"
    )]
    CredentialsDirectoryUnset {
        /// The credential's name.
        name: String,
    },

    /// A credential name that is not a plain file name.
    #[error("invalid credential name {name:?}: must be a non-empty file name without `/`")]
    InvalidCredentialName {
        /// The rejected name.
        name: String,
    },

    /// The keyring was written for another master key.
    #[error(
        "the keyring {} belongs to master key {keyring_id}, but the loaded master key is \
         {key_id}; if `rotate-master-key` ran, install the new key (id {keyring_id})",
        path.display()
    )]
    MasterKeyMismatch {
        /// The keyring file.
        path: PathBuf,
        /// Master key id recorded in the keyring.
        keyring_id: String,
        /// Id of the key that was supplied.
        key_id: String,
    },

    /// The keyring was re-wrapped under a new master key while this vault ran, and the new key
    /// is not (yet) installed where the vault loads its key from.
    #[error(
        "the master key was rotated to {keyring_id} while the gateway ran (this process has \
         {current_id}); install the new key at {location}{}",
        installed_id.as_ref().map(|id| format!(" (it currently holds key {id})")).unwrap_or_default()
    )]
    MasterKeyRotated {
        /// Master key id now recorded in the keyring.
        keyring_id: String,
        /// Id of the key this vault holds.
        current_id: String,
        /// Where the key is loaded from ([`crate::KeySource::describe`]), or a note that the
        /// vault was opened without a source.
        location: String,
        /// Id of the key found at the source, if one could be loaded.
        installed_id: Option<String>,
    },

    /// [`crate::rotate_master_key`] was given the same key twice.
    #[error("the old and new master keys are the same key ({id}); generate a new one")]
    SameMasterKey {
        /// The key's id.
        id: String,
    },

    /// No keyring where one must exist (rotation, or it vanished while the vault ran).
    #[error("no keyring at {}", path.display())]
    KeyringMissing {
        /// The expected keyring file.
        path: PathBuf,
    },

    /// The keyring was written by a newer format version.
    #[error("the keyring {} has format version {version}; this build reads version 1", path.display())]
    KeyringVersion {
        /// The keyring file.
        path: PathBuf,
        /// The version found.
        version: u64,
    },

    /// The keyring cannot be parsed or one of its keys fails to unwrap under the right master
    /// key.
    #[error("the keyring {} is corrupt: {detail}", path.display())]
    KeyringCorrupt {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong (never key material).
        detail: String,
    },

    /// A file-system operation on the vault directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The workspace has no data key: it was never created, or it was shredded. Callers treat
    /// sealed data of such a workspace as deleted, not corrupt.
    #[error("workspace `{workspace}` has no data key (never created, or shredded)")]
    KeyShredded {
        /// The workspace.
        workspace: String,
    },

    /// The value was sealed under a data key of this workspace that no longer exists (the
    /// workspace was shredded and created again since), or its key id was corrupted; the two
    /// cannot be told apart without the old key, which is gone.
    #[error(
        "value of workspace `{workspace}` was sealed under data key {sealed_key_id}, but the \
         workspace's key is {current_key_id}"
    )]
    KeyIdMismatch {
        /// The workspace.
        workspace: String,
        /// Key id in the sealed value.
        sealed_key_id: u32,
        /// The workspace's current key id.
        current_key_id: u32,
    },

    /// The sealed value is malformed, was modified, belongs to another workspace, or is
    /// opened with the wrong associated data.
    #[error("sealed value of workspace `{workspace}` rejected: {reason}")]
    Tampered {
        /// The workspace it was opened for.
        workspace: String,
        /// Which check failed.
        reason: &'static str,
    },

    /// A workspace name the vault cannot store (the gateway validates names earlier).
    #[error("invalid workspace name: {reason}")]
    InvalidWorkspace {
        /// Which rule was broken.
        reason: &'static str,
    },

    /// Every `u32` key id has been used.
    #[error("the keyring has used every data key id")]
    KeyIdsExhausted,

    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),

    /// The AEAD refused to encrypt (input over its 256 GiB limit).
    #[error("encryption failed (value too large)")]
    Encrypt,
}

impl VaultError {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            Self::KeyFileUnreadable { .. }
            | Self::KeyFilePermissions { .. }
            | Self::KeyFileFormat { .. }
            | Self::KeyFileExists { .. }
            | Self::CredentialsDirectoryUnset { .. }
            | Self::InvalidCredentialName { .. }
            | Self::MasterKeyMismatch { .. }
            | Self::MasterKeyRotated { .. }
            | Self::SameMasterKey { .. }
            | Self::KeyringMissing { .. }
            | Self::KeyringVersion { .. }
            | Self::KeyIdsExhausted => Fault::Operator,
            Self::Io { source, .. } if operator_io(source.kind()) => Fault::Operator,
            Self::KeyringCorrupt { .. }
            | Self::KeyShredded { .. }
            | Self::KeyIdMismatch { .. }
            | Self::Tampered { .. } => Fault::Data,
            Self::Io { .. } | Self::InvalidWorkspace { .. } | Self::Random(_) | Self::Encrypt => {
                Fault::Internal
            }
        }
    }

    /// Whether the same call can succeed later without a code change. Keyring updates are
    /// atomic, so retrying one that failed is safe.
    pub fn retryable(&self) -> bool {
        match self {
            // The operator may be installing the new key right now (rotation is rotate, then
            // install, or the other way round).
            Self::MasterKeyRotated { .. } => true,
            Self::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::NotADirectory
            ),
            Self::Random(_) => true,
            _ => false,
        }
    }
}

/// I/O failures an operator fixes (permissions, full or read-only disk).
fn operator_io(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
    )
}
