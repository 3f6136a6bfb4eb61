//! The control plane's own durable state: workspaces, API keys, devices and deletion jobs
//! created through the API, in one small redb file (`control.redb`).
//!
//! Control-plane writes are rare (people creating keys and devices), so each is its own
//! fsynced transaction; nothing here is on the message hot path. Values are JSON so a
//! record can gain fields without a migration (serde defaults fill them).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// Why the control store failed. Always the node's problem (disk), never the caller's.
#[derive(Debug, thiserror::Error)]
#[error("control store: {op}: {detail}")]
pub struct ControlStoreError {
    op: &'static str,
    detail: String,
}

fn err(op: &'static str) -> impl FnOnce(String) -> ControlStoreError {
    move |detail| ControlStoreError { op, detail }
}

/// Kinds of object, the first part of every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Workspace records.
    Workspace,
    /// API key records.
    Key,
    /// Device records.
    Device,
    /// Deletion jobs.
    Job,
    /// Webhook endpoints (secrets sealed).
    Webhook,
    /// Automation rules.
    Automation,
    /// Tags set by automations, per (workspace, device, sender).
    Tag,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Workspace => "ws/",
            Kind::Key => "key/",
            Kind::Device => "dev/",
            Kind::Job => "job/",
            Kind::Webhook => "whk/",
            Kind::Automation => "aut/",
            Kind::Tag => "tag/",
        }
    }
}

/// Key of one object: `kind/` then the parts joined by `\u{1f}` (ids never contain it).
fn key(kind: Kind, parts: &[&str]) -> String {
    let mut k = String::from(kind.prefix());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push('\u{1f}');
        }
        k.push_str(p);
    }
    k
}

/// The store.
#[derive(Debug)]
pub struct ControlStore {
    db: Database,
}

impl ControlStore {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> Result<ControlStore, ControlStoreError> {
        let db = Database::create(path).map_err(|e| err("open")(e.to_string()))?;
        // Key hashes, names and deletion records: readable by the gateway's user only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err("chmod")(e.to_string()))?;
        }
        let txn = db.begin_write().map_err(|e| err("open")(e.to_string()))?;
        txn.open_table(OBJECTS).map_err(|e| err("open")(e.to_string()))?;
        txn.commit().map_err(|e| err("open")(e.to_string()))?;
        Ok(ControlStore { db })
    }

    /// Writes one object durably.
    pub fn put<T: Serialize>(&self, kind: Kind, parts: &[&str], value: &T) -> Result<(), ControlStoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| err("encode")(e.to_string()))?;
        self.write(|t| {
            t.insert(key(kind, parts).as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Deletes one object durably; true if it existed.
    pub fn delete(&self, kind: Kind, parts: &[&str]) -> Result<bool, ControlStoreError> {
        let mut existed = false;
        self.write(|t| {
            existed = t.remove(key(kind, parts).as_str())?.is_some();
            Ok(())
        })?;
        Ok(existed)
    }

    /// Deletes every object of `kind` whose key starts with `parts` (e.g. all devices of a
    /// workspace); returns how many.
    pub fn delete_prefix(&self, kind: Kind, parts: &[&str]) -> Result<usize, ControlStoreError> {
        let mut prefix = key(kind, parts);
        prefix.push('\u{1f}');
        let mut n = 0;
        self.write(|t| {
            let keys: Vec<String> = t
                .range(prefix.as_str()..)?
                .map_while(|r| match r {
                    Ok((k, _)) if k.value().starts_with(&prefix) => Some(Ok(k.value().to_string())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for k in &keys {
                t.remove(k.as_str())?;
            }
            n = keys.len();
            Ok(())
        })?;
        Ok(n)
    }

    /// Reads one object.
    pub fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        parts: &[&str],
    ) -> Result<Option<T>, ControlStoreError> {
        let txn = self.db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        let t = txn.open_table(OBJECTS).map_err(|e| err("read")(e.to_string()))?;
        match t
            .get(key(kind, parts).as_str())
            .map_err(|e| err("read")(e.to_string()))?
        {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| err("decode")(e.to_string())),
            None => Ok(None),
        }
    }

    /// Every object of a kind (optionally under a first key part), in key order.
    pub fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
        under: Option<&str>,
    ) -> Result<Vec<T>, ControlStoreError> {
        let prefix = match under {
            Some(p) => {
                let mut k = key(kind, &[p]);
                k.push('\u{1f}');
                k
            }
            None => kind.prefix().to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        let t = txn.open_table(OBJECTS).map_err(|e| err("read")(e.to_string()))?;
        let mut out = Vec::new();
        for r in t
            .range(prefix.as_str()..)
            .map_err(|e| err("read")(e.to_string()))?
        {
            let (k, v) = r.map_err(|e| err("read")(e.to_string()))?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(|e| err("decode")(e.to_string()))?);
        }
        Ok(out)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), ControlStoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("write")(e.to_string()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err("write")(e.to_string()))?;
        {
            let mut t = txn.open_table(OBJECTS).map_err(|e| err("write")(e.to_string()))?;
            f(&mut t).map_err(|e| err("write")(e.to_string()))?;
        }
        txn.commit().map_err(|e| err("commit")(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control.redb");
        {
            let s = ControlStore::open(&p).unwrap();
            s.put(Kind::Device, &["a", "d1"], &"one").unwrap();
            s.put(Kind::Device, &["a", "d2"], &"two").unwrap();
            s.put(Kind::Device, &["ab", "d1"], &"other ws").unwrap();
            s.put(Kind::Key, &["k1"], &"key").unwrap();
        }
        let s = ControlStore::open(&p).unwrap();
        let a: Vec<String> = s.list(Kind::Device, Some("a")).unwrap();
        assert_eq!(a, ["one", "two"], "prefix `a` must not match workspace `ab`");
        let all: Vec<String> = s.list(Kind::Device, None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            s.get::<String>(Kind::Key, &["k1"]).unwrap().as_deref(),
            Some("key")
        );
        assert!(s.delete(Kind::Key, &["k1"]).unwrap());
        assert!(!s.delete(Kind::Key, &["k1"]).unwrap());
        assert_eq!(s.delete_prefix(Kind::Device, &["a"]).unwrap(), 2);
        let left: Vec<String> = s.list(Kind::Device, None).unwrap();
        assert_eq!(left, ["other ws"]);
    }
}
