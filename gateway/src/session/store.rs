//! What a device session keeps across restarts, and where.
//!
//! The record is small and written only on lifecycle changes (linked, logged out, banned,
//! disabled) and at most once a minute for activity, never per message. It goes to the
//! node's device store (`waping-store`: one embedded database, sealed at rest once the
//! tenancy issue lands); [`MemoryStore`] serves tests and nodes without a state directory.

use std::sync::Arc;

use dashmap::DashMap;

use super::lifecycle::Persisted;
use crate::upstream::{BoxFuture, DeviceRef};

/// One device's persisted session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// Where the lifecycle resumes.
    pub lifecycle: Persisted,
    /// The linked WhatsApp account, if any.
    #[serde(default)]
    pub account: Option<String>,
    /// When the current link was made, unix ms (0 = unknown); the warm-up schedule counts
    /// days from it.
    #[serde(default)]
    pub linked_at_ms: u64,
    /// Last time the device sent or connected, unix ms; orders reconnects after a restart.
    #[serde(default)]
    pub last_active_ms: u64,
}

impl SessionRecord {
    /// The record of a device seen for the first time.
    pub fn new(provisioned: bool) -> Self {
        SessionRecord {
            lifecycle: if provisioned {
                Persisted::Linked
            } else {
                Persisted::Unlinked
            },
            account: None,
            linked_at_ms: 0,
            last_active_ms: 0,
        }
    }

    /// Encoded for the store (JSON: small, rare, and readable in a support case).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes what [`SessionRecord::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<Self, SessionStoreError> {
        serde_json::from_slice(b).map_err(|e| SessionStoreError::Corrupt(e.to_string()))
    }
}

/// Why the session store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionStoreError {
    /// The stored bytes do not decode (internal: a bug or a damaged file); the session
    /// starts from its first-seen state and says so in the log.
    #[error("session record corrupt: {0}")]
    Corrupt(String),
    /// The store could not read or write (disk full, I/O error); retrying may help.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// Where session records live.
pub trait SessionStore: Send + Sync + 'static {
    /// The record of a device, if one was saved.
    fn load(&self, device: &DeviceRef) -> BoxFuture<'static, Result<Option<SessionRecord>, SessionStoreError>>;
    /// Saves durably (resolves after the data is on disk).
    fn save(&self, device: &DeviceRef, rec: &SessionRecord) -> BoxFuture<'static, Result<(), SessionStoreError>>;
}

/// Records in memory (tests; nodes run with the device store).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: Arc<DashMap<DeviceRef, Vec<u8>>>,
}

impl SessionStore for MemoryStore {
    fn load(&self, device: &DeviceRef) -> BoxFuture<'static, Result<Option<SessionRecord>, SessionStoreError>> {
        let r = self.map.get(device).map(|b| SessionRecord::decode(&b)).transpose();
        Box::pin(async move { r })
    }

    fn save(&self, device: &DeviceRef, rec: &SessionRecord) -> BoxFuture<'static, Result<(), SessionStoreError>> {
        self.map.insert(device.clone(), rec.encode());
        Box::pin(async { Ok(()) })
    }
}
