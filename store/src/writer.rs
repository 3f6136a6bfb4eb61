//! The single writer thread: group commit of everything queued into one durable transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, Table};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::key::prefix_end;
use crate::store::{DEVICES, KV};

/// One write as the writer sees it: already validated and sealed.
#[derive(Debug)]
pub(crate) enum Op {
    /// Record the device (prefix) in the registry if it is not there yet.
    Register(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Remove every value and registry entry under the prefix (device or workspace).
    DeletePrefix(Vec<u8>),
}

/// A caller's atomic unit of work and where its outcome goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) ops: Vec<Op>,
    pub(crate) bytes: usize,
    pub(crate) done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) ops: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_group_requests: usize,
    pub(crate) max_group_bytes: usize,
    pub(crate) quick_repair: bool,
}

pub(crate) fn run(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Request>,
    limits: Limits,
    counters: Arc<Counters>,
) {
    let mut poisoned: Option<String> = None;
    let mut group: Vec<Request> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.bytes;
        group.push(first);
        // Everything already queued rides on this commit's fsync; the bounds keep one
        // transaction (and the latency of the first caller in it) from growing without limit.
        while group.len() < limits.max_group_requests && bytes < limits.max_group_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.bytes;
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let result = match &poisoned {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => commit(&db, &group, limits.quick_repair),
        };
        match result {
            Ok(()) => {
                let ops: usize = group.iter().map(|r| r.ops.len()).sum();
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                counters.ops.fetch_add(ops as u64, Ordering::Relaxed);
                for r in group.drain(..) {
                    let _ = r.done.send(Ok(()));
                }
            }
            Err(e) => {
                if poisoned.is_none() {
                    tracing::error!(error = %e, "device store commit failed; refusing further writes");
                    poisoned = Some(e.to_string());
                }
                for r in group.drain(..) {
                    let _ = r.done.send(Err(e.duplicate()));
                }
            }
        }
    }
}

fn commit(db: &Database, group: &[Request], quick_repair: bool) -> Result<(), StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::from_txn("begin write", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Internal(format!("set durability: {e}")))?;
    txn.set_quick_repair(quick_repair);
    {
        let mut kv = txn
            .open_table(KV)
            .map_err(|e| StoreError::from_table("write", e))?;
        let mut devices = txn
            .open_table(DEVICES)
            .map_err(|e| StoreError::from_table("write", e))?;
        for r in group {
            for op in &r.ops {
                apply(&mut kv, &mut devices, op).map_err(|e| StoreError::from_storage("write", e))?;
            }
        }
    }
    txn.commit().map_err(StoreError::from_commit)
}

fn apply(
    kv: &mut Table<&[u8], &[u8]>,
    devices: &mut Table<&[u8], &[u8]>,
    op: &Op,
) -> Result<(), redb::StorageError> {
    use redb::ReadableTable;
    match op {
        Op::Register(prefix) => {
            // A lookup first: re-inserting would dirty (copy) the registry's page every commit.
            if devices.get(prefix.as_slice())?.is_none() {
                devices.insert(prefix.as_slice(), &[][..])?;
            }
        }
        Op::Put(key, value) => {
            kv.insert(key.as_slice(), value.as_slice())?;
        }
        Op::Delete(key) => {
            kv.remove(key.as_slice())?;
        }
        Op::DeletePrefix(prefix) => {
            let start = prefix.as_slice();
            match prefix_end(prefix) {
                Some(end) => {
                    kv.retain_in::<&[u8], _>(start..end.as_slice(), |_, _| false)?;
                    devices.retain_in::<&[u8], _>(start..end.as_slice(), |_, _| false)?;
                }
                None => {
                    kv.retain_in::<&[u8], _>(start.., |_, _| false)?;
                    devices.retain_in::<&[u8], _>(start.., |_, _| false)?;
                }
            }
        }
    }
    Ok(())
}
