//! The small key-value contract the gateway's store implements for device state.
//!
//! whatsapp-rust wants a storage `Backend` of ~70 async methods per device. Instead of
//! asking the gateway's store to know any of them, this crate maps all of them onto
//! [`DeviceKv`]: a handful of byte-oriented operations over named namespaces. One
//! `DeviceKv` instance serves every device of a node; keys carry the device id as
//! their first component (see [`crate::backend`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

/// A failure of the key-value store behind device state.
///
/// Whose fault: the local store (internal). Retrying helps only if the store's own
/// condition is transient (e.g. a full disk that was freed); whatsapp-rust treats any
/// store error on the receive path as "do not ack", so WhatsApp redelivers.
#[derive(Debug, thiserror::Error)]
#[error("device store {op} failed: {source}")]
pub struct KvError {
    /// Which operation failed (`get`, `scan`, `apply`).
    pub op: &'static str,
    /// The store's own error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl KvError {
    /// Wraps a store error for `op`.
    pub fn new(op: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            op,
            source: source.into(),
        }
    }
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Insert or replace `key` in namespace `ns`.
    Put {
        ns: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key` from `ns` (absent keys are not an error).
    Delete { ns: &'static str, key: Vec<u8> },
    /// Remove every key of `ns` that starts with `prefix`.
    DeletePrefix { ns: &'static str, prefix: Vec<u8> },
}

/// An ordered list of writes applied all-or-nothing by [`DeviceKv::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvBatch {
    ops: Vec<KvOp>,
}

impl KvBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert-or-replace.
    pub fn put(&mut self, ns: &'static str, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.ops.push(KvOp::Put { ns, key, value });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, ns: &'static str, key: Vec<u8>) -> &mut Self {
        self.ops.push(KvOp::Delete { ns, key });
        self
    }

    /// Adds a prefix delete.
    pub fn delete_prefix(&mut self, ns: &'static str, prefix: Vec<u8>) -> &mut Self {
        self.ops.push(KvOp::DeletePrefix { ns, prefix });
        self
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The writes, in order.
    pub fn ops(&self) -> &[KvOp] {
        &self.ops
    }

    /// Consumes the batch into its writes.
    pub fn into_ops(self) -> Vec<KvOp> {
        self.ops
    }
}

/// Byte-oriented, namespaced, ordered key-value store for device state.
///
/// Contract (what [`crate::backend::KvBackend`] relies on):
/// - namespaces are a small fixed set of `&'static str` names (see
///   [`crate::backend::NAMESPACES`]); an implementation may map each to a table;
/// - keys within a namespace are ordered bytewise, so `scan_prefix` returns keys in
///   ascending order;
/// - `apply` is atomic: after a crash either every op of the batch is visible or none.
///   It need not be fsynced per call (the gateway's store may group-commit), but a
///   successful `apply` must be durable before the store acknowledges a later
///   `sync`-type barrier of its own. whatsapp-rust itself flushes Signal state before
///   it acks inbound messages, so "durable when `apply` returns" is the safe choice;
/// - all methods are async and must not block a runtime worker (no blocking pool
///   needed for an in-memory or group-committing store).
///
/// Object safe: the node holds an `Arc<dyn DeviceKv>`.
#[async_trait]
pub trait DeviceKv: Send + Sync + 'static {
    /// Reads one value.
    async fn get(&self, ns: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Every `(key, value)` of `ns` whose key starts with `prefix`, ascending by key.
    async fn scan_prefix(&self, ns: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError>;

    /// Applies `batch` atomically, in order.
    async fn apply(&self, batch: KvBatch) -> Result<(), KvError>;

    /// Inserts or replaces one key (a one-op batch).
    async fn put(&self, ns: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<(), KvError> {
        let mut batch = KvBatch::new();
        batch.put(ns, key, value);
        self.apply(batch).await
    }

    /// Removes one key (a one-op batch).
    async fn delete(&self, ns: &'static str, key: Vec<u8>) -> Result<(), KvError> {
        let mut batch = KvBatch::new();
        batch.delete(ns, key);
        self.apply(batch).await
    }
}

/// Namespace name to its ordered table.
type Tables = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

/// In-memory [`DeviceKv`] for tests and measurements: a `BTreeMap` per namespace
/// behind one mutex (held only for the map operation, never across an await).
#[derive(Debug, Default)]
pub struct MemoryKv {
    tables: Mutex<Tables>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total number of keys over all namespaces.
    pub fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of keys and values (what a disk store would hold, before overhead).
    pub fn payload_bytes(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding this lock cannot leave a half-applied batch (batches are
        // applied to a copy-free map op by op only after validation), so poison is ignored.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DeviceKv for MemoryKv {
    async fn get(&self, ns: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().get(ns).and_then(|t| t.get(key)).cloned())
    }

    async fn scan_prefix(&self, ns: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        let tables = self.lock();
        let Some(table) = tables.get(ns) else {
            return Ok(Vec::new());
        };
        Ok(table
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn apply(&self, batch: KvBatch) -> Result<(), KvError> {
        let mut tables = self.lock();
        for op in batch.into_ops() {
            match op {
                KvOp::Put { ns, key, value } => {
                    tables.entry(ns).or_default().insert(key, value);
                }
                KvOp::Delete { ns, key } => {
                    if let Some(t) = tables.get_mut(ns) {
                        t.remove(&key);
                    }
                }
                KvOp::DeletePrefix { ns, prefix } => {
                    if let Some(t) = tables.get_mut(ns) {
                        t.retain(|k, _| !k.starts_with(&prefix));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scan_is_ordered_and_bounded_by_prefix() {
        let kv = MemoryKv::new();
        let mut b = KvBatch::new();
        b.put("t", b"ab2".to_vec(), b"2".to_vec())
            .put("t", b"ab1".to_vec(), b"1".to_vec())
            .put("t", b"ac".to_vec(), b"x".to_vec())
            .put("u", b"ab0".to_vec(), b"other ns".to_vec());
        kv.apply(b).await.unwrap();
        let got = kv.scan_prefix("t", b"ab").await.unwrap();
        assert_eq!(
            got,
            vec![(b"ab1".to_vec(), b"1".to_vec()), (b"ab2".to_vec(), b"2".to_vec())]
        );
        let mut d = KvBatch::new();
        d.delete_prefix("t", b"ab".to_vec())
            .delete("u", b"missing".to_vec());
        kv.apply(d).await.unwrap();
        assert_eq!(kv.get("t", b"ab1").await.unwrap(), None);
        assert_eq!(kv.get("t", b"ac").await.unwrap(), Some(b"x".to_vec()));
        assert_eq!(kv.len(), 2);
    }
}
