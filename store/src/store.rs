//! The store, its per-device handles, batches and pages.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::key::{self, DeviceId, Ns};
use crate::seal::{Aad, PlainSealer, Sealer};
use crate::writer::{self, Counters, Limits, Op, Request};

/// All values of all devices, under [`key`]'s layout.
pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Registry of devices with data (device prefix → empty), for [`Store::list_devices`].
pub(crate) const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");

/// Options of [`Store::open`]. `Default` gives the values documented per field.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Seals every value before it is stored. Default [`PlainSealer`] (no encryption).
    pub sealer: Arc<dyn Sealer>,
    /// Page cache of the engine. Default 64 MiB (the engine's own default is 1 GiB, too much
    /// for a node that also holds a million sessions).
    pub cache_bytes: usize,
    /// Write requests queued for the writer before `put`/`apply` wait (async) or block (sync)
    /// for room. Default 4096; must be > 0.
    pub queue_capacity: usize,
    /// Most requests in one group commit. Default 1024; must be > 0.
    pub max_group_requests: usize,
    /// A group commit stops taking more requests once it holds this many bytes. Default 8 MiB.
    pub max_group_bytes: usize,
    /// Largest plaintext value. Default 1 MiB (credentials are a few KiB; larger blobs belong
    /// elsewhere).
    pub max_value_bytes: usize,
    /// Largest [`Batch`] (keys + values). Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Most entries one [`DeviceStore::scan_prefix`] page returns, whatever `limit` asks.
    /// Default 1000.
    pub max_page_entries: usize,
    /// A page stops after the entry that reaches this many bytes. Default 4 MiB.
    pub max_page_bytes: usize,
    /// Store the allocator state with every commit so that opening after a crash needs no full
    /// scan of the file. Costs a second fsync per group commit. Default `false`: see the
    /// measurements in `docs/design/0009-device-store.md`.
    pub quick_repair: bool,
    /// Verify every page checksum when opening, even after a clean shutdown (reads the whole
    /// file, about as long as a crash repair). Default `false`: ordinary reads do not check
    /// checksums, so bit rot shows as wrong values (caught by an authenticating sealer) or, in
    /// the worst case, an engine panic; turn it on where start time matters less.
    pub verify_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sealer: Arc::new(PlainSealer),
            cache_bytes: 64 << 20,
            queue_capacity: 4096,
            max_group_requests: 1024,
            max_group_bytes: 8 << 20,
            max_value_bytes: 1 << 20,
            max_batch_bytes: 16 << 20,
            max_page_entries: 1000,
            max_page_bytes: 4 << 20,
            quick_repair: false,
            verify_on_open: false,
        }
    }
}

/// Counters of the writer since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable transactions committed (one per group).
    pub commits: u64,
    /// Write requests (`put`, `delete`, `apply`, `delete_device`, ...) made durable.
    pub requests: u64,
    /// Operations inside those requests.
    pub ops: u64,
}

/// The node's device store: one embedded database file for all devices.
///
/// Cheap to clone. Reads run on the caller's thread; writes go to one writer thread that
/// commits everything queued in one durable transaction (group commit). The file is closed
/// when the last `Store` and [`DeviceStore`] are dropped (after the writer drained its queue).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    opts: StoreOptions,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining makes the
        // file lock's release happen before the last handle's drop returns.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store {
    /// Opens (creating if absent, with mode 0600 and missing parent directories) the database
    /// file at `path`, e.g. `state/devices.redb`, and starts its writer thread.
    ///
    /// The file is locked for this process: a second open fails with
    /// [`StoreError::Locked`]. After a crash the open repairs the file first (a full scan
    /// unless [`StoreOptions::quick_repair`] was on).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        if options.queue_capacity == 0 || options.max_group_requests == 0 {
            return Err(StoreError::Config(
                "queue_capacity and max_group_requests must be > 0".into(),
            ));
        }
        if options.max_page_entries == 0 {
            return Err(StoreError::Config("max_page_entries must be > 0".into()));
        }
        create_private(&path)?;
        let mut builder = redb::Builder::new();
        builder
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(options.verify_on_open);
        let db = builder
            .create(&path)
            .map_err(|e| StoreError::from_open(&path, e))?;
        let txn = db.begin_write().map_err(|e| StoreError::from_txn("open", e))?;
        txn.open_table(KV)
            .map_err(|e| StoreError::from_table("open", e))?;
        txn.open_table(DEVICES)
            .map_err(|e| StoreError::from_table("open", e))?;
        txn.commit().map_err(StoreError::from_commit)?;

        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let limits = Limits {
            max_group_requests: options.max_group_requests,
            max_group_bytes: options.max_group_bytes,
            quick_repair: options.quick_repair,
        };
        let writer = {
            let db = db.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("waping-store-writer".into())
                .spawn(move || writer::run(db, rx, limits, counters))
                .map_err(|e| StoreError::from_io("spawn writer", e))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                writer: Some(writer),
                counters,
                opts: options,
                path,
            }),
        })
    }

    /// Handle on one device's data. Ids are 1..=[`crate::MAX_ID_BYTES`] bytes; any bytes are
    /// fine (they are length-prefixed on disk, never parsed).
    pub fn device(&self, workspace: &str, device: &str) -> Result<DeviceStore, StoreError> {
        let prefix = key::device_prefix(workspace, device)?;
        Ok(DeviceStore {
            inner: self.inner.clone(),
            workspace: workspace.into(),
            device: device.into(),
            prefix: prefix.into(),
        })
    }

    /// Every device with data (written to and not deleted since), sorted by workspace then
    /// device, for restore on restart. Reads the whole registry: ~(ids + 2) bytes per device.
    pub fn list_devices(&self) -> Result<Vec<DeviceId>, StoreError> {
        let txn = self.inner.begin_read()?;
        let table = txn
            .open_table(DEVICES)
            .map_err(|e| StoreError::from_table("read", e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| StoreError::from_storage("read", e))? {
            let (k, _) = item.map_err(|e| StoreError::from_storage("read", e))?;
            let id = key::decode_device(k.value()).ok_or_else(|| StoreError::Corrupt {
                reason: "undecodable device registry key".into(),
            })?;
            out.push(id);
        }
        // Disk order is by id length first (length prefixes); callers expect name order.
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes every device of `workspace` and all their data; resolves once durable.
    pub async fn delete_workspace(&self, workspace: &str) -> Result<(), StoreError> {
        let prefix = key::workspace_prefix(workspace)?;
        self.inner.submit(vec![Op::DeletePrefix(prefix)], 0).await
    }

    /// Blocking [`Store::delete_workspace`]. Must not be called from an async context.
    pub fn delete_workspace_blocking(&self, workspace: &str) -> Result<(), StoreError> {
        let prefix = key::workspace_prefix(workspace)?;
        self.inner.submit_blocking(vec![Op::DeletePrefix(prefix)], 0)
    }

    /// Writer counters since open.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::from_io("create directory", e))?;
    }
    // Credentials live here: create it private before the engine opens it (with the umask).
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::from_io("create", e)),
    }
}

impl Inner {
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| StoreError::from_txn("begin read", e))
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
        }
    }

    fn request(&self, ops: Vec<Op>, bytes: usize) -> (Request, oneshot::Receiver<Result<(), StoreError>>) {
        let (done, rx) = oneshot::channel();
        (Request { ops, bytes, done }, rx)
    }

    async fn submit(&self, ops: Vec<Op>, bytes: usize) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let (req, rx) = self.request(ops, bytes);
        tx.send(req).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn submit_blocking(&self, ops: Vec<Op>, bytes: usize) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let (req, rx) = self.request(ops, bytes);
        tx.blocking_send(req).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` in `ns` to `value`.
    Put {
        /// Namespace.
        ns: Ns,
        /// Key inside the namespace.
        key: Vec<u8>,
        /// Plaintext value (sealed when applied).
        value: Vec<u8>,
    },
    /// Remove `key` from `ns` (no error if absent).
    Delete {
        /// Namespace.
        ns: Ns,
        /// Key inside the namespace.
        key: Vec<u8>,
    },
}

/// Operations applied to one device atomically and in order by [`DeviceStore::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Adds a put.
    pub fn put(&mut self, ns: Ns, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put {
            ns,
            key: key.into(),
            value: value.into(),
        });
        self
    }
    /// Adds a delete.
    pub fn delete(&mut self, ns: Ns, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete { ns, key: key.into() });
        self
    }
    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A page of [`DeviceStore::scan_prefix`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// `(key, value)` pairs in key order (keys without the device and namespace).
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// When more entries match: pass as `start_after` to get the next page.
    pub next: Option<Vec<u8>>,
}

/// Handle on one device's data; cheap to clone (reference counts only).
#[derive(Clone)]
pub struct DeviceStore {
    inner: Arc<Inner>,
    workspace: Arc<str>,
    device: Arc<str>,
    prefix: Arc<[u8]>,
}

impl fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceStore")
            .field("workspace", &self.workspace)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DeviceStore {
    /// Workspace id.
    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    /// Device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn aad<'a>(&'a self, ns: Ns, key: &'a [u8], full: &'a [u8]) -> Aad<'a> {
        Aad {
            workspace: &self.workspace,
            device: &self.device,
            ns,
            key,
            bytes: full,
        }
    }

    fn open_value(&self, ns: Ns, key: &[u8], full: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.inner
            .opts
            .sealer
            .open(&self.aad(ns, key, full), sealed)
            .map_err(|source| StoreError::Unseal {
                workspace: self.workspace.to_string(),
                device: self.device.to_string(),
                ns,
                source,
            })
    }

    /// The value of `key` in `ns`, read and unsealed on the caller's thread (a B-tree lookup,
    /// usually from the page cache).
    pub fn get(&self, ns: Ns, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        key::check_key(key)?;
        let full = key::full_key(&self.prefix, ns, key);
        let txn = self.inner.begin_read()?;
        let table = txn
            .open_table(KV)
            .map_err(|e| StoreError::from_table("read", e))?;
        let Some(sealed) = table
            .get(full.as_slice())
            .map_err(|e| StoreError::from_storage("read", e))?
        else {
            return Ok(None);
        };
        self.open_value(ns, key, &full, sealed.value()).map(Some)
    }

    /// Entries of `ns` whose key starts with `prefix`, in key order, after `start_after` (a
    /// previous page's [`Page::next`]) if given.
    ///
    /// Returns at most `limit` entries, clamped to 1..=[`StoreOptions::max_page_entries`], and
    /// stops early after [`StoreOptions::max_page_bytes`]. A page is one read snapshot; pages
    /// of one scan may see writes made in between.
    pub fn scan_prefix(
        &self,
        ns: Ns,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        key::check_key(prefix)?;
        let opts = &self.inner.opts;
        let limit = limit.clamp(1, opts.max_page_entries);
        let full_prefix = key::full_key(&self.prefix, ns, prefix);
        let start = match start_after {
            Some(after) if after >= prefix => {
                key::check_key(after)?;
                Bound::Excluded(key::full_key(&self.prefix, ns, after))
            }
            _ => Bound::Included(full_prefix.clone()),
        };
        let end = match key::prefix_end(&full_prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let txn = self.inner.begin_read()?;
        let table = txn
            .open_table(KV)
            .map_err(|e| StoreError::from_table("read", e))?;
        let range = table
            .range::<&[u8]>((start.as_ref().map(Vec::as_slice), end.as_ref().map(Vec::as_slice)))
            .map_err(|e| StoreError::from_storage("read", e))?;
        let skip = self.prefix.len() + 1;
        let mut page = Page::default();
        let mut bytes = 0usize;
        for item in range {
            let (k, v) = item.map_err(|e| StoreError::from_storage("read", e))?;
            let full = k.value();
            if page.entries.len() >= limit || bytes >= opts.max_page_bytes {
                page.next = page.entries.last().map(|(k, _)| k.clone());
                break;
            }
            let user_key = &full[skip..];
            let value = self.open_value(ns, user_key, full, v.value())?;
            bytes += user_key.len() + value.len();
            page.entries.push((user_key.to_vec(), value));
        }
        Ok(page)
    }

    fn put_ops(&self, ns: Ns, key: &[u8], value: &[u8], ops: &mut Vec<Op>) -> Result<usize, StoreError> {
        key::check_key(key)?;
        let max = self.inner.opts.max_value_bytes;
        if value.len() > max {
            return Err(StoreError::TooLarge {
                what: "value",
                size: value.len(),
                max,
            });
        }
        let full = key::full_key(&self.prefix, ns, key);
        let sealed = self
            .inner
            .opts
            .sealer
            .seal(&self.aad(ns, key, &full), value)
            .map_err(StoreError::Seal)?;
        let bytes = full.len() + sealed.len();
        ops.push(Op::Put(full, sealed));
        Ok(bytes)
    }

    fn prepare_put(&self, ns: Ns, key: &[u8], value: &[u8]) -> Result<(Vec<Op>, usize), StoreError> {
        let mut ops = vec![Op::Register(self.prefix.to_vec())];
        let bytes = self.put_ops(ns, key, value, &mut ops)?;
        Ok((ops, bytes))
    }

    fn prepare_delete(&self, ns: Ns, key: &[u8]) -> Result<(Vec<Op>, usize), StoreError> {
        key::check_key(key)?;
        let full = key::full_key(&self.prefix, ns, key);
        let bytes = full.len();
        Ok((vec![Op::Delete(full)], bytes))
    }

    fn prepare_batch(&self, batch: &Batch) -> Result<(Vec<Op>, usize), StoreError> {
        let max = self.inner.opts.max_batch_bytes;
        let size: usize = batch
            .ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value, .. } => key.len() + value.len(),
                BatchOp::Delete { key, .. } => key.len(),
            })
            .sum();
        if size > max {
            return Err(StoreError::TooLarge {
                what: "batch",
                size,
                max,
            });
        }
        let mut ops = Vec::with_capacity(batch.ops.len() + 1);
        if batch.ops.iter().any(|op| matches!(op, BatchOp::Put { .. })) {
            ops.push(Op::Register(self.prefix.to_vec()));
        }
        let mut bytes = 0;
        for op in &batch.ops {
            match op {
                BatchOp::Put { ns, key, value } => bytes += self.put_ops(*ns, key, value, &mut ops)?,
                BatchOp::Delete { ns, key } => {
                    key::check_key(key)?;
                    let full = key::full_key(&self.prefix, *ns, key);
                    bytes += full.len();
                    ops.push(Op::Delete(full));
                }
            }
        }
        Ok((ops, bytes))
    }

    /// Sets `key` in `ns` to `value`; resolves once durable (fsync'd in a group commit).
    ///
    /// Waits (without blocking a thread) while the writer's queue is full. If the future is
    /// dropped after it was queued, the write may still happen.
    pub async fn put(&self, ns: Ns, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (ops, bytes) = self.prepare_put(ns, key, value)?;
        self.inner.submit(ops, bytes).await
    }

    /// Removes `key` from `ns` (no error if absent); resolves once durable.
    pub async fn delete(&self, ns: Ns, key: &[u8]) -> Result<(), StoreError> {
        let (ops, bytes) = self.prepare_delete(ns, key)?;
        self.inner.submit(ops, bytes).await
    }

    /// Applies `batch` atomically (all or none) and in order; resolves once durable.
    pub async fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ops, bytes) = self.prepare_batch(batch)?;
        self.inner.submit(ops, bytes).await
    }

    /// Removes every value of this device in every namespace, and the device from
    /// [`Store::list_devices`]; resolves once durable. Used by unlink and deletion.
    pub async fn delete_device(&self) -> Result<(), StoreError> {
        self.inner
            .submit(vec![Op::DeletePrefix(self.prefix.to_vec())], 0)
            .await
    }

    /// Blocking [`DeviceStore::put`] for CLIs and tests. Must not be called from an async
    /// context (it parks the thread until the commit; tokio panics on it there).
    pub fn put_blocking(&self, ns: Ns, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (ops, bytes) = self.prepare_put(ns, key, value)?;
        self.inner.submit_blocking(ops, bytes)
    }

    /// Blocking [`DeviceStore::delete`]. Must not be called from an async context.
    pub fn delete_blocking(&self, ns: Ns, key: &[u8]) -> Result<(), StoreError> {
        let (ops, bytes) = self.prepare_delete(ns, key)?;
        self.inner.submit_blocking(ops, bytes)
    }

    /// Blocking [`DeviceStore::apply`]. Must not be called from an async context.
    pub fn apply_blocking(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ops, bytes) = self.prepare_batch(batch)?;
        self.inner.submit_blocking(ops, bytes)
    }

    /// Blocking [`DeviceStore::delete_device`]. Must not be called from an async context.
    pub fn delete_device_blocking(&self) -> Result<(), StoreError> {
        self.inner
            .submit_blocking(vec![Op::DeletePrefix(self.prefix.to_vec())], 0)
    }

    #[cfg(test)]
    pub(crate) fn raw_db(&self) -> &Database {
        &self.inner.db
    }

    #[cfg(test)]
    pub(crate) fn full_key(&self, ns: Ns, key: &[u8]) -> Vec<u8> {
        key::full_key(&self.prefix, ns, key)
    }
}
