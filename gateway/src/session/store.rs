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
    /// The pacer's counters of the current UTC day (`day`, `sent`, `first_contacts`), so a
    /// restart never hands out a fresh daily cap.
    #[serde(default)]
    pub usage: Option<(u64, u32, u32)>,
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
            usage: None,
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
    /// A named blob of the device (the session record, the pacer's contact book), if saved.
    fn load_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, SessionStoreError>>;

    /// Saves a named blob durably (resolves after the data is on disk).
    fn save_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), SessionStoreError>>;

    /// The record of a device, if one was saved.
    fn load(
        &self,
        device: &DeviceRef,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, SessionStoreError>> {
        let fut = self.load_blob(device, RECORD_BLOB);
        Box::pin(async move { fut.await?.map(|b| SessionRecord::decode(&b)).transpose() })
    }

    /// Saves the record durably.
    fn save(
        &self,
        device: &DeviceRef,
        rec: &SessionRecord,
    ) -> BoxFuture<'static, Result<(), SessionStoreError>> {
        self.save_blob(device, RECORD_BLOB, rec.encode())
    }
}

/// Blob name of the session record.
const RECORD_BLOB: &str = "record";

/// Records in memory (tests; nodes run with the device store).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    blobs: Arc<DashMap<(DeviceRef, &'static str), Vec<u8>>>,
}

impl SessionStore for MemoryStore {
    fn load_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, SessionStoreError>> {
        let v = self.blobs.get(&(device.clone(), name)).map(|b| b.clone());
        Box::pin(async move { Ok(v) })
    }

    fn save_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), SessionStoreError>> {
        self.blobs.insert((device.clone(), name), bytes);
        Box::pin(async { Ok(()) })
    }
}

/// The namespace of the session record inside a device's data in the device store. Never
/// renumber: the number is part of every stored key and of the sealing AAD. Namespaces
/// 16..=63 belong to the WhatsApp upstream's credentials (`waping-whatsapp`).
pub const SESSION_NS: waping_store::Ns = waping_store::Ns::new(1);

/// Session records in the node's device store (`waping-store`): one embedded database for
/// every device, group-committed, sealed at rest through the store's sealer.
#[derive(Debug, Clone)]
pub struct DeviceStoreSessions {
    store: Arc<waping_store::Store>,
}

impl DeviceStoreSessions {
    /// Records kept in `store`.
    pub fn new(store: Arc<waping_store::Store>) -> Self {
        DeviceStoreSessions { store }
    }
}

fn store_err(e: waping_store::StoreError) -> SessionStoreError {
    if e.retryable() {
        SessionStoreError::Unavailable(e.to_string())
    } else {
        SessionStoreError::Corrupt(e.to_string())
    }
}

impl SessionStore for DeviceStoreSessions {
    fn load_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, SessionStoreError>> {
        let r = self
            .store
            .device(&device.workspace, device.device.as_str())
            .and_then(|d| d.get(SESSION_NS, name.as_bytes()))
            .map_err(store_err);
        Box::pin(async move { r })
    }

    fn save_blob(
        &self,
        device: &DeviceRef,
        name: &'static str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), SessionStoreError>> {
        let d = self.store.device(&device.workspace, device.device.as_str());
        Box::pin(async move {
            d.map_err(store_err)?
                .put(SESSION_NS, name.as_bytes(), &bytes)
                .await
                .map_err(store_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(w: &str, d: &str) -> DeviceRef {
        DeviceRef {
            workspace: w.into(),
            device: d.into(),
        }
    }

    #[tokio::test]
    async fn records_survive_reopening_the_device_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.redb");
        let rec = SessionRecord {
            lifecycle: Persisted::Banned {
                until_ms: Some(1_800_000_000_000),
            },
            account: Some("4915112345678@s.whatsapp.net".into()),
            linked_at_ms: 17,
            last_active_ms: 42,
            usage: Some((20_000, 7, 2)),
        };
        {
            let s = DeviceStoreSessions::new(Arc::new(
                waping_store::Store::open(&path, Default::default()).unwrap(),
            ));
            assert_eq!(s.load(&dev("w", "d")).await.unwrap(), None);
            s.save(&dev("w", "d"), &rec).await.unwrap();
            s.save(&dev("w", "e"), &SessionRecord::new(false)).await.unwrap();
        }
        let s = DeviceStoreSessions::new(Arc::new(
            waping_store::Store::open(&path, Default::default()).unwrap(),
        ));
        assert_eq!(s.load(&dev("w", "d")).await.unwrap(), Some(rec));
        assert_eq!(
            s.load(&dev("w", "e")).await.unwrap().unwrap().lifecycle,
            Persisted::Unlinked
        );
        // Another workspace's device of the same name is a different device.
        assert_eq!(s.load(&dev("x", "d")).await.unwrap(), None);
        s.save_blob(&dev("w", "d"), "contacts", vec![1, 2, 3])
            .await
            .unwrap();
        assert_eq!(
            s.load_blob(&dev("w", "d"), "contacts").await.unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(s.load_blob(&dev("w", "e"), "contacts").await.unwrap(), None);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(
            SessionRecord::decode(b"{\"lifecycle\":{\"state\":\"nonsense\"}}"),
            Err(SessionStoreError::Corrupt(_))
        ));
        assert!(matches!(
            SessionRecord::decode(&[0xff, 0]),
            Err(SessionStoreError::Corrupt(_))
        ));
    }
}
