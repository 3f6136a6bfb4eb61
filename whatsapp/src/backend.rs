//! whatsapp-rust's storage `Backend` over a [`DeviceKv`].
//!
//! One [`KvBackend`] per device; every key starts with the length-prefixed device id,
//! so one `DeviceKv` serves the whole node and a device can be wiped with one prefix
//! delete per namespace. Values are the crate's opaque bytes where it hands us bytes,
//! and JSON where it hands us structs (rarely written records: device, LID mappings,
//! device lists, tokens, app-state versions).
//!
//! Read-modify-write methods (LID mapping, tokens, message secrets, pre-key flags,
//! take-sent-message) run under a per-device async mutex, so two tasks of the same
//! client cannot interleave them; the KV batch makes each one atomic on disk.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};
use whatsapp_rust::wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry,
    MsgSecretStore, PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry,
    merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

use crate::kv::{DeviceKv, KvBatch, KvError};

const NS_IDENTITY: &str = "wa.identity";
const NS_SESSION: &str = "wa.session";
const NS_PREKEY: &str = "wa.prekey";
const NS_SIGNED_PREKEY: &str = "wa.signed_prekey";
const NS_SENDER_KEY: &str = "wa.sender_key";
const NS_SYNC_KEY: &str = "wa.sync_key";
const NS_META: &str = "wa.meta";
const NS_APP_VERSION: &str = "wa.app_version";
const NS_MUTATION_MAC: &str = "wa.mutation_mac";
const NS_SK_DEVICE: &str = "wa.sk_device";
const NS_LID: &str = "wa.lid";
const NS_PN: &str = "wa.pn";
const NS_BASE_KEY: &str = "wa.base_key";
const NS_DEVICE_LIST: &str = "wa.device_list";
const NS_GROUP_META: &str = "wa.group_meta";
const NS_TC_TOKEN: &str = "wa.tc_token";
const NS_SENT: &str = "wa.sent";
const NS_PENDING_IN: &str = "wa.pending_in";
const NS_MSG_SECRET: &str = "wa.msg_secret";
const NS_DEVICE: &str = "wa.device";

/// Every namespace this backend writes; a store may create one table per name.
pub const NAMESPACES: &[&str] = &[
    NS_IDENTITY,
    NS_SESSION,
    NS_PREKEY,
    NS_SIGNED_PREKEY,
    NS_SENDER_KEY,
    NS_SYNC_KEY,
    NS_META,
    NS_APP_VERSION,
    NS_MUTATION_MAC,
    NS_SK_DEVICE,
    NS_LID,
    NS_PN,
    NS_BASE_KEY,
    NS_DEVICE_LIST,
    NS_GROUP_META,
    NS_TC_TOKEN,
    NS_SENT,
    NS_PENDING_IN,
    NS_MSG_SECRET,
    NS_DEVICE,
];

const META_LATEST_SYNC_KEY: &[u8] = b"latest_sync_key_id";

/// Appends `part` with a 4-byte big-endian length, so composite keys can be
/// prefix-scanned on whole components and never collide.
fn push_lp(key: &mut Vec<u8>, part: &[u8]) {
    // Components are JIDs, ids and names: far below 4 GiB.
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

fn kv_err(e: KvError) -> StoreError {
    StoreError::Database(Box::new(e))
}

fn ser_err(e: serde_json::Error) -> StoreError {
    StoreError::Serialization(Box::new(e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(ser_err)
}

fn from_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(ser_err)
}

fn split_ts(ns: &str, v: &[u8]) -> Result<(i64, Vec<u8>)> {
    if v.len() < 8 {
        return Err(StoreError::Validation(format!(
            "{ns}: record shorter than its timestamp"
        )));
    }
    let (ts, rest) = v.split_at(8);
    let ts = i64::from_be_bytes(ts.try_into().expect("8 bytes"));
    Ok((ts, rest.to_vec()))
}

fn with_ts(ts: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn u32_suffix(ns: &str, key: &[u8], prefix_len: usize) -> Result<u32> {
    key.get(prefix_len..)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Validation(format!("{ns}: malformed numeric key")))
}

/// Message-secret value: secret, expiry and parent time in fixed width.
const SECRET_ROW_LEN: usize = 32 + 8 + 8;

fn decode_secret_row(v: &[u8]) -> Result<([u8; 32], i64, i64)> {
    if v.len() != SECRET_ROW_LEN {
        return Err(StoreError::Validation(format!(
            "{NS_MSG_SECRET}: row of {} bytes, expected {SECRET_ROW_LEN}",
            v.len()
        )));
    }
    let secret: [u8; 32] = v[..32].try_into().expect("32 bytes");
    let expires = i64::from_be_bytes(v[32..40].try_into().expect("8 bytes"));
    let ts = i64::from_be_bytes(v[40..48].try_into().expect("8 bytes"));
    Ok((secret, expires, ts))
}

fn encode_secret_row(secret: &[u8; 32], expires: i64, ts: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SECRET_ROW_LEN);
    v.extend_from_slice(secret);
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v
}

/// whatsapp-rust's `Backend` for one device, stored in a shared [`DeviceKv`].
pub struct KvBackend {
    kv: Arc<dyn DeviceKv>,
    /// Length-prefixed device id: the first component of every key.
    dev: Vec<u8>,
    /// Serialises read-modify-write methods of this device.
    rmw: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend")
            .field("dev", &String::from_utf8_lossy(&self.dev[4..]))
            .finish()
    }
}

impl KvBackend {
    /// The backend of device `device_id` inside `kv`.
    ///
    /// `device_id` is the gateway's own stable id for the linked device (not a JID:
    /// the JID is only known after pairing).
    pub fn new(kv: Arc<dyn DeviceKv>, device_id: &str) -> Self {
        let mut dev = Vec::with_capacity(4 + device_id.len());
        push_lp(&mut dev, device_id.as_bytes());
        Self {
            kv,
            dev,
            rmw: tokio::sync::Mutex::new(()),
        }
    }

    fn key(&self, part: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.dev.len() + part.len());
        k.extend_from_slice(&self.dev);
        k.extend_from_slice(part);
        k
    }

    fn key_u32(&self, id: u32) -> Vec<u8> {
        self.key(&id.to_be_bytes())
    }

    fn key_lp(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = self.dev.clone();
        for p in parts {
            push_lp(&mut k, p);
        }
        k
    }

    /// Key of a composite whose last component is raw (so it can be prefix-scanned
    /// on the leading components).
    fn key_lp_tail(&self, parts: &[&[u8]], tail: &[u8]) -> Vec<u8> {
        let mut k = self.key_lp(parts);
        k.extend_from_slice(tail);
        k
    }

    async fn get(&self, ns: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.get(ns, key).await.map_err(kv_err)
    }

    async fn scan(&self, ns: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.kv.scan_prefix(ns, prefix).await.map_err(kv_err)
    }

    async fn apply(&self, batch: KvBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.kv.apply(batch).await.map_err(kv_err)
    }

    async fn put1(&self, ns: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.kv.put(ns, key, value).await.map_err(kv_err)
    }

    async fn del1(&self, ns: &'static str, key: Vec<u8>) -> Result<()> {
        self.kv.delete(ns, key).await.map_err(kv_err)
    }

    /// Deletes every record of this device (credentials included), atomically.
    ///
    /// Used after a logout: whatsapp-rust's own `logout` keeps the keys.
    pub async fn wipe(&self) -> Result<()> {
        let mut b = KvBatch::new();
        for ns in NAMESPACES {
            b.delete_prefix(ns, self.dev.clone());
        }
        self.apply(b).await
    }
}

#[async_trait]
impl SignalStore for KvBackend {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.put1(NS_IDENTITY, self.key(address.as_bytes()), key.to_vec())
            .await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let mut b = KvBatch::new();
        for (address, key) in identities {
            b.put(NS_IDENTITY, self.key(address.as_bytes()), key.to_vec());
        }
        self.apply(b).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        match self.get(NS_IDENTITY, &self.key(address.as_bytes())).await? {
            None => Ok(None),
            Some(v) => <[u8; 32]>::try_from(v.as_slice())
                .map(Some)
                .map_err(|_| StoreError::Validation(format!("identity key of {} bytes", v.len()))),
        }
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.del1(NS_IDENTITY, self.key(address.as_bytes())).await
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self
            .get(NS_SESSION, &self.key(address.as_bytes()))
            .await?
            .map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.put1(NS_SESSION, self.key(address.as_bytes()), session.to_vec())
            .await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let mut b = KvBatch::new();
        for (address, session) in sessions {
            b.put(NS_SESSION, self.key(address.as_bytes()), session.to_vec());
        }
        self.apply(b).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.del1(NS_SESSION, self.key(address.as_bytes())).await
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        Ok(self
            .get(NS_SESSION, &self.key(address.as_bytes()))
            .await?
            .is_some())
    }

    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        let prefix = self.key(user.as_bytes());
        let after_user = |k: &[u8]| matches!(k.get(prefix.len()), Some(b'@') | Some(b':'));
        for ns in [NS_SESSION, NS_IDENTITY] {
            if self.scan(ns, &prefix).await?.iter().any(|(k, _)| after_user(k)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let mut v = Vec::with_capacity(1 + record.len());
        v.push(u8::from(uploaded));
        v.extend_from_slice(record);
        self.put1(NS_PREKEY, self.key_u32(id), v).await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let mut b = KvBatch::new();
        for (id, record) in keys {
            let mut v = Vec::with_capacity(1 + record.len());
            v.push(u8::from(uploaded));
            v.extend_from_slice(record);
            b.put(NS_PREKEY, self.key_u32(*id), v);
        }
        self.apply(b).await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        match self.get(NS_PREKEY, &self.key_u32(id)).await? {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(StoreError::Validation("empty pre-key row".into())),
            Some(v) => Ok(Some(Bytes::copy_from_slice(&v[1..]))),
        }
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(r) = self.load_prekey(id).await? {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        // UPDATE semantics: a key consumed meanwhile must stay deleted.
        let _g = self.rmw.lock().await;
        let mut b = KvBatch::new();
        for &id in ids {
            let key = self.key_u32(id);
            if let Some(mut v) = self.get(NS_PREKEY, &key).await?
                && !v.is_empty()
                && v[0] == 0
            {
                v[0] = 1;
                b.put(NS_PREKEY, key, v);
            }
        }
        self.apply(b).await
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.del1(NS_PREKEY, self.key_u32(id)).await
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        // Keys are big-endian ids, so the scan is ascending and the last is the max.
        let rows = self.scan(NS_PREKEY, &self.dev).await?;
        match rows.last() {
            None => Ok(0),
            Some((k, _)) => u32_suffix(NS_PREKEY, k, self.dev.len()),
        }
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.put1(NS_SIGNED_PREKEY, self.key_u32(id), record.to_vec())
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.get(NS_SIGNED_PREKEY, &self.key_u32(id)).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        self.scan(NS_SIGNED_PREKEY, &self.dev)
            .await?
            .into_iter()
            .map(|(k, v)| Ok((u32_suffix(NS_SIGNED_PREKEY, &k, self.dev.len())?, v)))
            .collect()
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.del1(NS_SIGNED_PREKEY, self.key_u32(id)).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put1(NS_SENDER_KEY, self.key(address.as_bytes()), record.to_vec())
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let mut b = KvBatch::new();
        for (address, record) in sender_keys {
            b.put(NS_SENDER_KEY, self.key(address.as_bytes()), record.to_vec());
        }
        self.apply(b).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get(NS_SENDER_KEY, &self.key(address.as_bytes())).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.del1(NS_SENDER_KEY, self.key(address.as_bytes())).await
    }
}

#[async_trait]
impl AppSyncStore for KvBackend {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        match self.get(NS_SYNC_KEY, &self.key(key_id)).await? {
            None => Ok(None),
            Some(v) => from_json(&v).map(Some),
        }
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let mut b = KvBatch::new();
        b.put(NS_SYNC_KEY, self.key(key_id), to_json(&key)?);
        b.put(NS_META, self.key(META_LATEST_SYNC_KEY), key_id.to_vec());
        self.apply(b).await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        match self.get(NS_APP_VERSION, &self.key(name.as_bytes())).await? {
            None => Ok(HashState::default()),
            Some(v) => from_json(&v),
        }
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.put1(NS_APP_VERSION, self.key(name.as_bytes()), to_json(&state)?)
            .await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        _version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        let mut b = KvBatch::new();
        for m in mutations {
            b.put(
                NS_MUTATION_MAC,
                self.key_lp_tail(&[name.as_bytes()], &m.index_mac),
                m.value_mac.clone(),
            );
        }
        self.apply(b).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(NS_MUTATION_MAC, &self.key_lp_tail(&[name.as_bytes()], index_mac))
            .await
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let mut b = KvBatch::new();
        for im in index_macs {
            b.delete(NS_MUTATION_MAC, self.key_lp_tail(&[name.as_bytes()], im));
        }
        self.apply(b).await
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        let mut b = KvBatch::new();
        b.delete_prefix(NS_MUTATION_MAC, self.key_lp(&[name.as_bytes()]));
        self.apply(b).await
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        self.get(NS_META, &self.key(META_LATEST_SYNC_KEY)).await
    }
}

#[async_trait]
impl ProtocolStore for KvBackend {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let prefix = self.key_lp(&[group_jid.as_bytes()]);
        self.scan(NS_SK_DEVICE, &prefix)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let dev = String::from_utf8(k[prefix.len()..].to_vec())
                    .map_err(|e| StoreError::Serialization(Box::new(e)))?;
                Ok((dev, v.first() == Some(&1)))
            })
            .collect()
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let mut b = KvBatch::new();
        for (device_jid, has_key) in entries {
            b.put(
                NS_SK_DEVICE,
                self.key_lp_tail(&[group_jid.as_bytes()], device_jid.as_bytes()),
                vec![u8::from(*has_key)],
            );
        }
        self.apply(b).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        let mut b = KvBatch::new();
        b.delete_prefix(NS_SK_DEVICE, self.key_lp(&[group_jid.as_bytes()]));
        self.apply(b).await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        // Rows are keyed group-first; walk this device's rows once and pick the
        // matching device component of each.
        let rows = self.scan(NS_SK_DEVICE, &self.dev).await?;
        let mut b = KvBatch::new();
        for (k, _) in rows {
            let rest = &k[self.dev.len()..];
            let Some(len) = rest
                .get(..4)
                .map(|l| u32::from_be_bytes(l.try_into().expect("4")))
            else {
                continue;
            };
            let Some(device) = rest.get(4 + len as usize..) else {
                continue;
            };
            if device_jids.iter().any(|d| d.as_bytes() == device) {
                b.delete(NS_SK_DEVICE, k);
            }
        }
        self.apply(b).await
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        let mut b = KvBatch::new();
        b.delete_prefix(NS_SK_DEVICE, self.dev.clone());
        self.apply(b).await
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        match self.get(NS_LID, &self.key(lid.as_bytes())).await? {
            None => Ok(None),
            Some(v) => from_json(&v).map(Some),
        }
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        match self.get(NS_PN, &self.key(phone.as_bytes())).await? {
            None => Ok(None),
            Some(lid) => {
                let lid = String::from_utf8(lid).map_err(|e| StoreError::Serialization(Box::new(e)))?;
                self.get_lid_mapping(&lid).await
            }
        }
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put_lid_mappings(std::slice::from_ref(entry)).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        let _g = self.rmw.lock().await;
        // Later entries of the same batch see earlier ones, as with one-by-one puts.
        let mut staged: HashMap<&str, &LidPnMappingEntry> = HashMap::new();
        let mut b = KvBatch::new();
        for entry in entries {
            let old_phone = match staged.get(entry.lid.as_str()) {
                Some(e) => Some(e.phone_number.clone()),
                None => self.get_lid_mapping(&entry.lid).await?.map(|e| e.phone_number),
            };
            if let Some(old) = old_phone.filter(|p| *p != entry.phone_number) {
                b.delete(NS_PN, self.key(old.as_bytes()));
            }
            b.put(
                NS_PN,
                self.key(entry.phone_number.as_bytes()),
                entry.lid.as_bytes().to_vec(),
            );
            b.put(NS_LID, self.key(entry.lid.as_bytes()), to_json(entry)?);
            staged.insert(entry.lid.as_str(), entry);
        }
        self.apply(b).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.scan(NS_LID, &self.dev)
            .await?
            .iter()
            .map(|(_, v)| from_json(v))
            .collect()
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.put1(
            NS_BASE_KEY,
            self.key_lp(&[address.as_bytes(), message_id.as_bytes()]),
            base_key.to_vec(),
        )
        .await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        Ok(self
            .get(
                NS_BASE_KEY,
                &self.key_lp(&[address.as_bytes(), message_id.as_bytes()]),
            )
            .await?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.del1(
            NS_BASE_KEY,
            self.key_lp(&[address.as_bytes(), message_id.as_bytes()]),
        )
        .await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.update_device_lists(vec![record]).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let mut b = KvBatch::new();
        for r in &records {
            b.put(NS_DEVICE_LIST, self.key(r.user.as_bytes()), to_json(r)?);
        }
        self.apply(b).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        match self.get(NS_DEVICE_LIST, &self.key(user.as_bytes())).await? {
            None => Ok(None),
            Some(v) => from_json(&v).map(Some),
        }
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.del1(NS_DEVICE_LIST, self.key(user.as_bytes())).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.get(NS_GROUP_META, &self.key(group_jid.as_bytes())).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.put1(NS_GROUP_META, self.key(group_jid.as_bytes()), blob.to_vec())
            .await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.del1(NS_GROUP_META, self.key(group_jid.as_bytes())).await
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        match self.get(NS_TC_TOKEN, &self.key(jid.as_bytes())).await? {
            None => Ok(None),
            Some(v) => from_json(&v).map(Some),
        }
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        self.put1(NS_TC_TOKEN, self.key(jid.as_bytes()), to_json(entry)?)
            .await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.del1(NS_TC_TOKEN, self.key(jid.as_bytes())).await
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        self.scan(NS_TC_TOKEN, &self.dev)
            .await?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k[self.dev.len()..].to_vec())
                    .map_err(|e| StoreError::Serialization(Box::new(e)))
            })
            .collect()
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let _g = self.rmw.lock().await;
        let mut b = KvBatch::new();
        for (k, v) in self.scan(NS_TC_TOKEN, &self.dev).await? {
            let e: TcTokenEntry = from_json(&v)?;
            let token_live = !e.token.is_empty() && e.token_timestamp >= token_cutoff;
            let sender_live = e.sender_timestamp.is_some_and(|ts| ts >= sender_cutoff);
            if !(token_live || sender_live) {
                b.delete(NS_TC_TOKEN, k);
            }
        }
        let n = b.len() as u32;
        self.apply(b).await?;
        Ok(n)
    }

    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        let _g = self.rmw.lock().await;
        let entry = match self.get_tc_token(jid).await? {
            Some(e) => TcTokenEntry {
                sender_timestamp: Some(
                    e.sender_timestamp
                        .map_or(sender_timestamp, |s| s.max(sender_timestamp)),
                ),
                ..e
            },
            None => TcTokenEntry {
                token: Vec::new(),
                token_timestamp: sender_timestamp,
                sender_timestamp: Some(sender_timestamp),
            },
        };
        self.put_tc_token(jid, &entry).await
    }

    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        let _g = self.rmw.lock().await;
        let existing = self.get_tc_token(jid).await?;
        if let Some(e) = &existing
            && !e.token.is_empty()
            && token_timestamp < e.token_timestamp
        {
            return Ok(());
        }
        let sender_timestamp = existing.and_then(|e| e.sender_timestamp);
        self.put_tc_token(
            jid,
            &TcTokenEntry {
                token: token.to_vec(),
                token_timestamp,
                sender_timestamp,
            },
        )
        .await
    }

    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        let now = whatsapp_rust::wacore::time::now_secs();
        self.put1(
            NS_SENT,
            self.key_lp(&[chat_jid.as_bytes(), message_id.as_bytes()]),
            with_ts(now, payload),
        )
        .await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let _g = self.rmw.lock().await;
        let key = self.key_lp(&[chat_jid.as_bytes(), message_id.as_bytes()]);
        match self.get(NS_SENT, &key).await? {
            None => Ok(None),
            Some(v) => {
                self.del1(NS_SENT, key).await?;
                Ok(Some(split_ts(NS_SENT, &v)?.1))
            }
        }
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_older(NS_SENT, cutoff_timestamp).await
    }

    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        let rows = [PendingInboundRow {
            chat,
            sender,
            id,
            message,
        }];
        self.store_pending_inbound_batch(&rows).await
    }

    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key_lp(&[chat.as_bytes(), sender.as_bytes(), id.as_bytes()]);
        match self.get(NS_PENDING_IN, &key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(split_ts(NS_PENDING_IN, &v)?.1)),
        }
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete_pending_inbound_batch(&[PendingInboundKey { chat, sender, id }])
            .await
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_older(NS_PENDING_IN, cutoff_timestamp).await
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        let now = whatsapp_rust::wacore::time::now_secs();
        let mut b = KvBatch::new();
        for r in rows {
            b.put(
                NS_PENDING_IN,
                self.key_lp(&[r.chat.as_bytes(), r.sender.as_bytes(), r.id.as_bytes()]),
                with_ts(now, r.message),
            );
        }
        self.apply(b).await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        let mut b = KvBatch::new();
        for k in keys {
            b.delete(
                NS_PENDING_IN,
                self.key_lp(&[k.chat.as_bytes(), k.sender.as_bytes(), k.id.as_bytes()]),
            );
        }
        self.apply(b).await
    }
}

impl KvBackend {
    /// Deletes this device's rows of `ns` whose leading timestamp is before `cutoff`.
    async fn delete_older(&self, ns: &'static str, cutoff: i64) -> Result<u32> {
        let _g = self.rmw.lock().await;
        let mut b = KvBatch::new();
        for (k, v) in self.scan(ns, &self.dev).await? {
            if split_ts(ns, &v)?.0 < cutoff {
                b.delete(ns, k);
            }
        }
        let n = b.len() as u32;
        self.apply(b).await?;
        Ok(n)
    }
}

#[async_trait]
impl MsgSecretStore for KvBackend {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let _g = self.rmw.lock().await;
        let stored = entries.len();
        // Rows merged within this batch, so a key repeated in one call merges like
        // two calls would.
        let mut merged: HashMap<Vec<u8>, ([u8; 32], i64, i64)> = HashMap::new();
        for e in entries {
            let key = self.key_lp(&[e.chat.as_bytes(), e.sender.as_bytes(), e.msg_id.as_bytes()]);
            let existing = match merged.get(&key) {
                Some(row) => Some(*row),
                None => match self.get(NS_MSG_SECRET, &key).await? {
                    Some(v) => Some(decode_secret_row(&v)?),
                    None => None,
                },
            };
            let row = match existing {
                Some((_, exp, ts)) => (
                    e.secret,
                    merge_msg_secret_expiry(exp, e.expires_at),
                    merge_msg_secret_message_ts(ts, e.message_ts),
                ),
                None => (e.secret, e.expires_at, e.message_ts),
            };
            merged.insert(key, row);
        }
        let mut b = KvBatch::new();
        for (k, (s, exp, ts)) in merged {
            b.put(NS_MSG_SECRET, k, encode_secret_row(&s, exp, ts));
        }
        self.apply(b).await?;
        Ok(stored)
    }

    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(s, _)| s))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let key = self.key_lp(&[chat.as_bytes(), sender.as_bytes(), msg_id.as_bytes()]);
        match self.get(NS_MSG_SECRET, &key).await? {
            None => Ok(None),
            Some(v) => {
                let (s, _, ts) = decode_secret_row(&v)?;
                Ok(Some((s.to_vec(), ts)))
            }
        }
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let _g = self.rmw.lock().await;
        let mut b = KvBatch::new();
        for (k, v) in self.scan(NS_MSG_SECRET, &self.dev).await? {
            let (_, exp, _) = decode_secret_row(&v)?;
            if exp != 0 && exp <= cutoff_timestamp {
                b.delete(NS_MSG_SECRET, k);
            }
        }
        let n = b.len() as u32;
        self.apply(b).await?;
        Ok(n)
    }
}

#[async_trait]
impl DeviceStore for KvBackend {
    async fn save(&self, device: &Device) -> Result<()> {
        self.put1(NS_DEVICE, self.dev.clone(), to_json(device)?).await
    }

    async fn load(&self) -> Result<Option<Device>> {
        match self.get(NS_DEVICE, &self.dev).await? {
            None => Ok(None),
            Some(v) => from_json(&v).map(Some),
        }
    }

    async fn exists(&self) -> Result<bool> {
        Ok(self.get(NS_DEVICE, &self.dev).await?.is_some())
    }

    async fn create(&self) -> Result<i32> {
        // One device per backend: materialise a fresh identity only if none exists,
        // so `exists()` holds afterwards (the crate's PersistenceManager relies on it).
        let _g = self.rmw.lock().await;
        if !self.exists().await? {
            self.save(&Device::new()).await?;
        }
        Ok(1)
    }

    async fn resource_report(&self) -> whatsapp_rust::wacore::stats::StorageResourceReport {
        // The state lives in the gateway's store, not in this process's heap.
        whatsapp_rust::wacore::stats::StorageResourceReport {
            memory_bytes: Some(0),
            ..Default::default()
        }
    }
}

/// A device found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDevice {
    /// The gateway's device id (as given to [`KvBackend::new`]).
    pub id: String,
    /// The linked account's phone-number JID; `None` while not linked.
    pub jid: Option<String>,
}

/// Every device with state in `kv` (for restoring sessions at start, and for a
/// synchronous "has credentials" check kept by the caller).
pub async fn stored_devices(kv: &dyn DeviceKv) -> Result<Vec<StoredDevice>> {
    let rows = kv.scan_prefix(NS_DEVICE, b"").await.map_err(kv_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let id = k
            .get(4..)
            .filter(|id| k.len() >= 4 && id.len() == u32::from_be_bytes([k[0], k[1], k[2], k[3]]) as usize)
            .and_then(|id| String::from_utf8(id.to_vec()).ok())
            .ok_or_else(|| StoreError::Validation(format!("{NS_DEVICE}: malformed device key")))?;
        let device: Device = from_json(&v)?;
        out.push(StoredDevice {
            id,
            jid: device.pn.as_ref().map(ToString::to_string),
        });
    }
    Ok(out)
}
