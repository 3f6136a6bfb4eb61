//! The real WhatsApp Web upstream: the gateway's [`Upstream`] over `waping-whatsapp`.
//!
//! `waping-whatsapp` wraps the whatsapp-rust crates and exposes a neutral API (decision
//! 0008); this module only maps between it and the gateway's types, and gives it the node's
//! device store ([`StoreKv`]) so every credential lives in the one embedded database,
//! sealed like every other value. Nothing here has been exercised against live WhatsApp
//! (no machine of this project reaches it): see the README.

use std::sync::Arc;
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use waping_protocol::{Body, Text};
use waping_whatsapp::{
    DeviceKv, KvBatch, KvError, KvOp, MessageBody, OutboundBody, WaConfig, WaDevice, WaError, WaEvent, WaNode,
};

use super::*;

pub use super::whatsapp_config::WhatsAppConfig;

impl WhatsAppConfig {
    fn wa_config(&self) -> WaConfig {
        WaConfig {
            web_version: (self.web_version[0], self.web_version[1], self.web_version[2]),
            ws_url: self.ws_url.clone(),
            event_capacity: self.event_capacity,
            connects_per_sec: self.connects_per_second,
            connect_burst: self.connects_per_second,
            ..WaConfig::default()
        }
    }
}

/// Namespaces of `waping-whatsapp` in the device store. Never renumber: the number is part of
/// every stored key and of the sealing AAD. 16..=63 are reserved for this upstream.
const NAMESPACES: &[&str] = &[
    "wa.identity",
    "wa.session",
    "wa.prekey",
    "wa.signed_prekey",
    "wa.sender_key",
    "wa.sync_key",
    "wa.meta",
    "wa.app_version",
    "wa.mutation_mac",
    "wa.sk_device",
    "wa.lid",
    "wa.pn",
    "wa.base_key",
    "wa.device_list",
    "wa.group_meta",
    "wa.tc_token",
    "wa.sent",
    "wa.pending_in",
    "wa.msg_secret",
    "wa.device",
];

/// `(key, value)` pairs of a scan.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn ns_of(name: &str) -> Result<waping_store::Ns, KvError> {
    NAMESPACES
        .iter()
        .position(|n| *n == name)
        .map(|i| waping_store::Ns::new(16 + i as u8))
        .ok_or_else(|| KvError::new("namespace", format!("unknown namespace {name}")))
}

/// The WhatsApp upstream's key-value contract over the node's device store.
///
/// `waping-whatsapp` starts every key with the length-prefixed device id
/// (`"{workspace}/{device}"`); this adapter routes each key to that device's data in the
/// store, so per-device deletion, per-workspace deletion and (issue 5) per-workspace
/// encryption keys cover the WhatsApp credentials too.
#[derive(Debug, Clone)]
pub struct StoreKv {
    store: Arc<waping_store::Store>,
}

impl StoreKv {
    /// Over `store`.
    pub fn new(store: Arc<waping_store::Store>) -> Self {
        StoreKv { store }
    }
}

/// The device id a `waping-whatsapp` key starts with, and the rest; `None` if the key is
/// shorter than its length prefix says.
fn split_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(key.get(4..4 + len)?).ok()?;
    Some((id, &key[4 + len..]))
}

fn lp(id: &str) -> Vec<u8> {
    let mut v = (id.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(id.as_bytes());
    v
}

/// The gateway device id `waping-whatsapp` uses for `d`.
pub fn wa_device_id(d: &DeviceRef) -> String {
    format!("{}/{}", d.workspace, d.device.as_str())
}

impl StoreKv {
    fn device(&self, wa_id: &str) -> Result<waping_store::DeviceStore, KvError> {
        // Workspace ids never contain '/': the first one separates workspace and device.
        let (ws, dev) = wa_id
            .split_once('/')
            .ok_or_else(|| KvError::new("key", format!("device id {wa_id:?} has no workspace")))?;
        self.store.device(ws, dev).map_err(|e| KvError::new("device", e))
    }

    fn routed(&self, key: &[u8]) -> Result<(waping_store::DeviceStore, Vec<u8>), KvError> {
        let (id, rest) = split_key(key).ok_or_else(|| KvError::new("key", "key without a device prefix"))?;
        Ok((self.device(id)?, rest.to_vec()))
    }

    /// Every entry of one device's namespace under `prefix`, all pages.
    fn scan_device(
        d: &waping_store::DeviceStore,
        ns: waping_store::Ns,
        prefix: &[u8],
    ) -> Result<Rows, KvError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = d
                .scan_prefix(ns, prefix, after.as_deref(), 1000)
                .map_err(|e| KvError::new("scan", e))?;
            out.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

#[async_trait::async_trait]
impl DeviceKv for StoreKv {
    async fn get(&self, ns: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let ns = ns_of(ns)?;
        let (d, k) = self.routed(key)?;
        d.get(ns, &k).map_err(|e| KvError::new("get", e))
    }

    async fn scan_prefix(&self, ns: &'static str, prefix: &[u8]) -> Result<Rows, KvError> {
        let ns = ns_of(ns)?;
        if let Some((id, rest)) = split_key(prefix) {
            let d = self.device(id)?;
            let head = lp(id);
            return Ok(Self::scan_device(&d, ns, rest)?
                .into_iter()
                .map(|(k, v)| ([head.as_slice(), &k].concat(), v))
                .collect());
        }
        // A prefix shorter than a device id (listing every device): walk the devices. Keys
        // come out in ascending order because device ids are length-prefixed alike.
        let mut out = Vec::new();
        let devices = self.store.list_devices().map_err(|e| KvError::new("list", e))?;
        for dev in devices {
            let id = format!("{}/{}", dev.workspace, dev.device);
            let head = lp(&id);
            if !head.starts_with(prefix) && !prefix.starts_with(&head) {
                continue;
            }
            let d = self.device(&id)?;
            out.extend(
                Self::scan_device(&d, ns, b"")?
                    .into_iter()
                    .map(|(k, v)| ([head.as_slice(), &k].concat(), v))
                    .filter(|(k, _)| k.starts_with(prefix)),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn apply(&self, batch: KvBatch) -> Result<(), KvError> {
        // One store batch per device; waping-whatsapp batches always touch one device.
        let mut per_device: Vec<(String, waping_store::Batch)> = Vec::new();
        for op in batch.into_ops() {
            let (ns, key) = match &op {
                KvOp::Put { ns, key, .. }
                | KvOp::Delete { ns, key }
                | KvOp::DeletePrefix { ns, prefix: key } => (ns_of(ns)?, key.clone()),
            };
            let (id, rest) =
                split_key(&key).ok_or_else(|| KvError::new("key", "key without a device prefix"))?;
            let id = id.to_string();
            let rest = rest.to_vec();
            let slot = match per_device.iter().position(|(d, _)| *d == id) {
                Some(i) => i,
                None => {
                    per_device.push((id.clone(), waping_store::Batch::new()));
                    per_device.len() - 1
                }
            };
            match op {
                KvOp::Put { value, .. } => {
                    per_device[slot].1.put(ns, rest, value);
                }
                KvOp::Delete { .. } => {
                    per_device[slot].1.delete(ns, rest);
                }
                KvOp::DeletePrefix { .. } => {
                    let d = self.device(&id)?;
                    let batch = &mut per_device[slot].1;
                    // "In order": keys put earlier in this batch are not in the store yet, so
                    // the scan cannot see them; they fall under the prefix delete too.
                    let staged: Vec<Vec<u8>> = batch
                        .ops()
                        .iter()
                        .filter_map(|op| match op {
                            waping_store::BatchOp::Put { ns: n, key, .. } => (*n == ns).then_some(key),
                            _ => None,
                        })
                        .filter(|k| k.starts_with(&rest))
                        .cloned()
                        .collect();
                    for k in Self::scan_device(&d, ns, &rest)?
                        .into_iter()
                        .map(|(k, _)| k)
                        .chain(staged)
                    {
                        batch.delete(ns, k);
                    }
                }
            }
        }
        for (id, b) in per_device {
            if b.is_empty() {
                continue;
            }
            self.device(&id)?
                .apply(&b)
                .await
                .map_err(|e| KvError::new("apply", e))?;
        }
        Ok(())
    }
}

/// The WhatsApp Web upstream.
#[derive(Clone)]
pub struct WhatsAppUpstream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WhatsAppUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppUpstream")
            .field("devices", &self.inner.devices.len())
            .finish()
    }
}

struct Inner {
    node: WaNode,
    devices: DashMap<DeviceRef, Arc<WaDevice>>,
    /// Devices with credentials (kept in sync from the store at start, then by events).
    provisioned: DashSet<DeviceRef>,
    /// Pairing-code links waiting for the connection's first QR ref.
    pending_phone: DashMap<DeviceRef, String>,
    events: EventSink,
    /// Inbound messages are journaled here before WhatsApp is acknowledged.
    inbound: Arc<dyn InboundJournal>,
}

impl WhatsAppUpstream {
    /// The upstream over the node's device store; reads which devices are linked.
    pub async fn start(
        cfg: &WhatsAppConfig,
        store: Arc<waping_store::Store>,
        events: EventSink,
        inbound: Arc<dyn InboundJournal>,
    ) -> Result<Self, UpstreamError> {
        let node = WaNode::new(cfg.wa_config(), Arc::new(StoreKv::new(store)))
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        let provisioned = DashSet::new();
        for d in node.stored_devices().await.map_err(map_err)? {
            if d.jid.is_some()
                && let Some((ws, dev)) = d.id.split_once('/')
            {
                provisioned.insert(DeviceRef {
                    workspace: ws.into(),
                    device: dev.into(),
                });
            }
        }
        Ok(WhatsAppUpstream {
            inner: Arc::new(Inner {
                node,
                devices: DashMap::new(),
                provisioned,
                pending_phone: DashMap::new(),
                events,
                inbound,
            }),
        })
    }

    /// The device's client, opened (and its event pump started) on first use.
    async fn device(&self, d: &DeviceRef) -> Result<Arc<WaDevice>, UpstreamError> {
        if let Some(dev) = self.inner.devices.get(d) {
            return Ok(dev.clone());
        }
        let (dev, rx) = self.inner.node.device(&wa_device_id(d)).await.map_err(map_err)?;
        let dev = Arc::new(dev);
        // The session task is the only caller for its device, so there is no race to open.
        self.inner.devices.insert(d.clone(), dev.clone());
        tokio::spawn(pump(
            Arc::downgrade(&self.inner),
            d.clone(),
            Arc::downgrade(&dev),
            rx,
        ));
        Ok(dev)
    }
}

/// Maps a `waping-whatsapp` error to the gateway's.
pub fn map_err(e: WaError) -> UpstreamError {
    match e {
        WaError::RateOverlimit { retry_after } => UpstreamError::Throttled {
            // No hint: the pacer's own 429 backoff (pacing.throttle_pause_ms) applies on top.
            retry_after: retry_after.unwrap_or(Duration::from_secs(60)),
        },
        WaError::TemporaryBan { .. } => UpstreamError::Banned,
        WaError::LoggedOut { .. } => UpstreamError::LoggedOut,
        WaError::NotConnected | WaError::StreamReplaced => UpstreamError::Disconnected,
        WaError::NotPaired => UpstreamError::NotLinked,
        WaError::Timeout { .. } => UpstreamError::Timeout,
        WaError::InvalidRequest(s) => UpstreamError::Rejected(s),
        WaError::Rejected { code, text } if code < 500 => UpstreamError::Rejected(format!("{code}: {text}")),
        other => UpstreamError::Unavailable(other.to_string()),
    }
}

/// Forwards one device's events to the gateway until the device is dropped.
async fn pump(
    inner: std::sync::Weak<Inner>,
    device: DeviceRef,
    dev: std::sync::Weak<WaDevice>,
    mut rx: tokio::sync::mpsc::Receiver<WaEvent>,
) {
    while let Some(ev) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let session = |event| UpstreamEvent::Session {
            device: device.clone(),
            event,
        };
        let out: Vec<UpstreamEvent> = match ev {
            WaEvent::Qr { code, valid_for } => {
                if let Some((_, phone)) = inner.pending_phone.remove(&device) {
                    // A pairing code can be asked for once the connection shows its first ref.
                    if let Some(dev) = dev.upgrade() {
                        let events = inner.events.clone();
                        let d = device.clone();
                        tokio::spawn(async move {
                            let event = match dev.request_pairing_code(&phone).await {
                                Ok(code) => SessionEvent::PairingCode { code },
                                Err(e) => SessionEvent::LoggedOut {
                                    reason: format!("pairing code refused: {e}"),
                                },
                            };
                            let _ = events.send(UpstreamEvent::Session { device: d, event }).await;
                        });
                    }
                    Vec::new()
                } else {
                    vec![session(SessionEvent::Qr { code, valid_for })]
                }
            }
            WaEvent::PairingCode { code, .. } => vec![session(SessionEvent::PairingCode { code })],
            WaEvent::PairingFailed { reason, .. } => vec![session(SessionEvent::LoggedOut {
                reason: format!("pairing failed: {reason}"),
            })],
            WaEvent::Paired { jid, .. } => {
                inner.provisioned.insert(device.clone());
                vec![session(SessionEvent::Paired { account: jid })]
            }
            WaEvent::Connected => vec![session(SessionEvent::Connected)],
            WaEvent::Disconnected { reason, .. } => vec![session(SessionEvent::Disconnected { reason })],
            WaEvent::ConnectFailure { code, message } => vec![session(SessionEvent::Disconnected {
                reason: format!("connect refused ({code}): {}", message.unwrap_or_default()),
            })],
            WaEvent::ClientOutdated => {
                tracing::error!(workspace = %device.workspace, device = %device.device,
                    "WhatsApp says the client is outdated: raise upstream.whatsapp.web_version");
                vec![session(SessionEvent::Disconnected {
                    reason: "client outdated: raise upstream.whatsapp.web_version".into(),
                })]
            }
            WaEvent::LoggedOut { code, .. } => {
                inner.provisioned.remove(&device);
                vec![session(SessionEvent::LoggedOut {
                    reason: format!("WhatsApp code {code}"),
                })]
            }
            WaEvent::TemporaryBan {
                code,
                reason,
                expires,
            } => {
                let until_ms = crate::unix_ms().saturating_add(expires.as_millis() as u64);
                vec![session(SessionEvent::Banned {
                    until_ms: Some(until_ms),
                    reason: format!("{code}: {reason}"),
                })]
            }
            WaEvent::StreamReplaced => vec![session(SessionEvent::StreamReplaced)],
            WaEvent::Messages { batch, commit } => {
                let mut out = Vec::with_capacity(batch.len());
                for m in batch {
                    if m.from_me {
                        continue;
                    }
                    match m.body {
                        MessageBody::Text(t) => out.push(UpstreamEvent::Inbound {
                            device: device.clone(),
                            from: Text::from(m.from),
                            upstream_id: Text::from(m.id),
                            body: Body::Text(Text::from(t)),
                        }),
                        _ => tracing::debug!(workspace = %device.workspace, device = %device.device,
                            "inbound message of a kind not carried yet (media arrives with the media issue)"),
                    }
                }
                // WhatsApp is acknowledged only once every message of the batch is journaled
                // (fsync'd): a crash after the acknowledgement cannot lose one. If journaling
                // fails nothing is forwarded and the batch stays unacknowledged, so WhatsApp
                // redelivers it (the journal id is derived from the WhatsApp id: same message).
                let mut journaled = Ok(());
                for ev in &out {
                    if let UpstreamEvent::Inbound {
                        device,
                        from,
                        upstream_id,
                        body,
                    } = ev
                        && let Err(e) = inner
                            .inbound
                            .journal_inbound(device, from, upstream_id, body)
                            .await
                    {
                        journaled = Err(e);
                        break;
                    }
                }
                match journaled {
                    Ok(()) => {
                        let mut ok = true;
                        for ev in out {
                            ok &= inner.events.send(ev).await.is_ok();
                        }
                        if ok {
                            commit.commit();
                        } else {
                            commit.reject("gateway stopping");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(workspace = %device.workspace, device = %device.device, error = %e,
                            "inbound batch not journaled; left unacknowledged for WhatsApp to redeliver");
                        commit.reject(e);
                    }
                }
                Vec::new()
            }
            WaEvent::Receipt { from, ids, kind, .. } => {
                let kind = match kind {
                    waping_whatsapp::ReceiptKind::Delivered => Some(ReceiptKind::Delivered),
                    waping_whatsapp::ReceiptKind::Read => Some(ReceiptKind::Read),
                    waping_whatsapp::ReceiptKind::Played => Some(ReceiptKind::Played),
                    _ => None,
                };
                match kind {
                    Some(kind) => vec![UpstreamEvent::Receipt {
                        device: device.clone(),
                        from: Text::from(from),
                        upstream_ids: ids.into_iter().map(Text::from).collect(),
                        kind,
                    }],
                    None => Vec::new(),
                }
            }
            WaEvent::Lagged { missed } => {
                tracing::warn!(workspace = %device.workspace, device = %device.device, missed,
                    "WhatsApp events dropped: the gateway fell behind (informational events only)");
                Vec::new()
            }
            other => {
                tracing::debug!(workspace = %device.workspace, device = %device.device, event = ?other, "WhatsApp event");
                Vec::new()
            }
        };
        for ev in out {
            if inner.events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

impl Upstream for WhatsAppUpstream {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn provisioned(&self, device: &DeviceRef) -> bool {
        self.inner.provisioned.contains(device)
    }

    fn connect(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            if !this.inner.provisioned.contains(&device) {
                return Err(UpstreamError::NotLinked);
            }
            // Idempotent: the library's run loop keeps one connection and reconnects by itself;
            // the lifecycle's backoff and the connect gate pace the calls made from here.
            this.device(&device).await?.connect();
            Ok(())
        })
    }

    fn disconnect(&self, device: DeviceRef) -> BoxFuture<'static, ()> {
        let dev = self.inner.devices.get(&device).map(|d| d.clone());
        Box::pin(async move {
            if let Some(d) = dev {
                d.disconnect().await;
            }
        })
    }

    fn link(&self, device: DeviceRef, method: LinkMethod) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            if let LinkMethod::PairingCode { phone } = method {
                this.inner.pending_phone.insert(device.clone(), phone);
            }
            // An unpaired client shows QR refs on connect.
            this.device(&device).await?.connect();
            Ok(())
        })
    }

    fn logout(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            this.inner.pending_phone.remove(&device);
            this.inner.provisioned.remove(&device);
            let dev = this.device(&device).await?;
            let r = dev.logout().await.map_err(map_err);
            // A fresh client (new keys) for the next link.
            this.inner.devices.remove(&device);
            r
        })
    }

    fn typing(&self, device: DeviceRef, to: Text) -> BoxFuture<'static, ()> {
        let dev = self.inner.devices.get(&device).map(|d| d.clone());
        Box::pin(async move {
            if let Some(d) = dev
                && let Err(e) = d.typing(to.as_str(), true).await
            {
                tracing::debug!(error = %e, "typing presence not shown");
            }
        })
    }

    fn send(&self, msg: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            let Body::Text(text) = &msg.body else {
                return Err(UpstreamError::Rejected("media is not supported yet".into()));
            };
            let dev = match this.inner.devices.get(&msg.device) {
                Some(d) => d.clone(),
                None => return Err(UpstreamError::Disconnected),
            };
            let wa_id = waping_whatsapp::wa_message_id(msg.upstream_id.as_bytes());
            let r = dev
                .send(
                    msg.recipient.as_str(),
                    &wa_id,
                    &OutboundBody::Text(text.to_string()),
                )
                .await
                .map_err(map_err)?;
            // WhatsApp gives no "already had it" signal; the stable id makes a resend the
            // same message for the recipient's client.
            Ok(UpstreamAck {
                upstream_id: r.wa_id,
                already_sent: false,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> (tempfile::TempDir, StoreKv) {
        let dir = tempfile::tempdir().unwrap();
        let store = waping_store::Store::open(dir.path().join("d.redb"), Default::default()).unwrap();
        (dir, StoreKv::new(Arc::new(store)))
    }

    fn key(id: &str, rest: &[u8]) -> Vec<u8> {
        [lp(id).as_slice(), rest].concat()
    }

    #[tokio::test]
    async fn store_kv_routes_keys_to_their_device() {
        let (_d, kv) = kv();
        let mut b = KvBatch::new();
        b.put("wa.session", key("acme/d1", b"alice"), b"s1".to_vec());
        b.put("wa.session", key("acme/d1", b"bob"), b"s2".to_vec());
        b.put("wa.device", key("acme/d1", b""), b"dev1".to_vec());
        kv.apply(b).await.unwrap();
        let mut b = KvBatch::new();
        b.put("wa.device", key("acme/d2", b""), b"dev2".to_vec());
        b.put("wa.session", key("acme/d2", b"alice"), b"other".to_vec());
        kv.apply(b).await.unwrap();

        assert_eq!(
            kv.get("wa.session", &key("acme/d1", b"alice")).await.unwrap(),
            Some(b"s1".to_vec())
        );
        assert_eq!(
            kv.get("wa.session", &key("acme/d2", b"alice")).await.unwrap(),
            Some(b"other".to_vec())
        );
        // A device's scan sees only its keys, returned with the device prefix.
        let rows = kv.scan_prefix("wa.session", &key("acme/d1", b"")).await.unwrap();
        assert_eq!(
            rows,
            vec![
                (key("acme/d1", b"alice"), b"s1".to_vec()),
                (key("acme/d1", b"bob"), b"s2".to_vec())
            ]
        );
        // Listing every device (empty prefix), as stored_devices does.
        let all = kv.scan_prefix("wa.device", b"").await.unwrap();
        assert_eq!(
            all,
            vec![
                (key("acme/d1", b""), b"dev1".to_vec()),
                (key("acme/d2", b""), b"dev2".to_vec())
            ]
        );
        // Delete by prefix stays inside the device.
        let mut b = KvBatch::new();
        b.delete_prefix("wa.session", key("acme/d1", b""));
        kv.apply(b).await.unwrap();
        assert!(
            kv.scan_prefix("wa.session", &key("acme/d1", b""))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            kv.scan_prefix("wa.session", &key("acme/d2", b""))
                .await
                .unwrap()
                .len(),
            1
        );
        // The store's own view: the credentials belong to the device, so deleting the
        // device (unlink, workspace deletion) removes them.
        let d1 = kv.store.device("acme", "d1").unwrap();
        d1.delete_device().await.unwrap();
        assert_eq!(kv.get("wa.device", &key("acme/d1", b"")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_keys_and_namespaces_are_typed_errors() {
        let (_d, kv) = kv();
        assert!(kv.get("wa.nope", &key("acme/d1", b"")).await.is_err());
        assert!(
            kv.get("wa.session", &[0, 0, 0, 9, b'x']).await.is_err(),
            "truncated prefix"
        );
        assert!(kv.get("wa.session", &key("no-slash", b"k")).await.is_err());
    }

    #[test]
    fn config_defaults_are_the_crates() {
        let d = WaConfig::default();
        let c = WhatsAppConfig::default().wa_config();
        assert_eq!(
            (c.web_version, c.ws_url, c.event_capacity, c.connects_per_sec),
            (d.web_version, d.ws_url, d.event_capacity, d.connects_per_sec)
        );
    }

    #[test]
    fn namespaces_fit_the_reserved_range() {
        assert!(NAMESPACES.len() <= 48);
        for n in NAMESPACES {
            let ns = ns_of(n).unwrap().get();
            assert!((16..=63).contains(&ns));
        }
    }

    #[test]
    fn errors_map_to_the_catalogue() {
        assert_eq!(
            map_err(WaError::RateOverlimit {
                retry_after: Some(Duration::from_secs(7))
            }),
            UpstreamError::Throttled {
                retry_after: Duration::from_secs(7)
            }
        );
        assert_eq!(
            map_err(WaError::TemporaryBan {
                code: 101,
                expires: Duration::from_secs(3600)
            }),
            UpstreamError::Banned
        );
        assert_eq!(
            map_err(WaError::LoggedOut { code: 401 }),
            UpstreamError::LoggedOut
        );
        assert_eq!(map_err(WaError::NotPaired), UpstreamError::NotLinked);
        assert_eq!(map_err(WaError::NotConnected), UpstreamError::Disconnected);
        assert_eq!(map_err(WaError::Timeout { op: "ack" }), UpstreamError::Timeout);
        assert!(matches!(
            map_err(WaError::Rejected {
                code: 400,
                text: "bad".into()
            }),
            UpstreamError::Rejected(_)
        ));
        assert!(matches!(
            map_err(WaError::Rejected {
                code: 503,
                text: "busy".into()
            }),
            UpstreamError::Unavailable(_)
        ));
        assert!(map_err(WaError::Closed).retryable());
    }

    /// Records what it journals; fails when told to.
    #[derive(Default)]
    struct Recording {
        fail: bool,
        seen: std::sync::Mutex<Vec<String>>,
    }
    impl InboundJournal for Recording {
        fn journal_inbound(
            &self,
            _: &DeviceRef,
            _: &Text,
            id: &Text,
            _: &Body,
        ) -> BoxFuture<'static, Result<(), String>> {
            self.seen.lock().unwrap().push(id.to_string());
            let fail = self.fail;
            Box::pin(async move { if fail { Err("disk full".into()) } else { Ok(()) } })
        }
    }

    fn message(id: &str) -> waping_whatsapp::WaMessage {
        waping_whatsapp::WaMessage {
            chat: "4917000000001@s.whatsapp.net".into(),
            from: "4917000000001@s.whatsapp.net".into(),
            id: id.into(),
            timestamp: 1,
            push_name: String::new(),
            from_me: false,
            is_group: false,
            offline: false,
            body: MessageBody::Text(format!("hello {id}")),
        }
    }

    /// Runs one inbound batch through the pump with `journal`; returns WhatsApp's answer
    /// and the events the gateway received.
    async fn pump_batch(journal: Arc<Recording>) -> (Result<(), String>, Vec<UpstreamEvent>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(waping_store::Store::open(dir.path().join("d.redb"), Default::default()).unwrap());
        let (tx, mut events) = tokio::sync::mpsc::channel(8);
        let up = WhatsAppUpstream::start(&WhatsAppConfig::default(), store, tx, journal)
            .await
            .unwrap();
        let d = DeviceRef {
            workspace: "acme".into(),
            device: "d1".into(),
        };
        let (wa_tx, wa_rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(pump(Arc::downgrade(&up.inner), d, std::sync::Weak::new(), wa_rx));
        let (commit, answer) = waping_whatsapp::InboundCommit::for_tests();
        wa_tx
            .send(WaEvent::Messages {
                batch: vec![message("A1"), message("A2")],
                commit,
            })
            .await
            .unwrap();
        let answer = answer.await.unwrap();
        drop(wa_tx);
        let mut got = Vec::new();
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            got.push(ev);
        }
        drop(up);
        (answer, got)
    }

    #[tokio::test]
    async fn inbound_is_acknowledged_only_after_it_is_journaled() {
        let j = Arc::new(Recording::default());
        let (answer, events) = pump_batch(j.clone()).await;
        assert_eq!(answer, Ok(()));
        assert_eq!(*j.seen.lock().unwrap(), ["A1", "A2"]);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], UpstreamEvent::Inbound { upstream_id, .. } if upstream_id.as_str() == "A1")
        );
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_journaled_stays_unacknowledged_and_unforwarded() {
        let j = Arc::new(Recording {
            fail: true,
            ..Default::default()
        });
        let (answer, events) = pump_batch(j).await;
        assert_eq!(answer, Err("disk full".to_string()));
        assert!(events.is_empty(), "{events:?}");
    }

    struct NoJournal;
    impl InboundJournal for NoJournal {
        fn journal_inbound(
            &self,
            _: &DeviceRef,
            _: &Text,
            _: &Text,
            _: &Body,
        ) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Err("no journal in this test".into()) })
        }
    }

    #[tokio::test]
    async fn an_unlinked_device_refuses_connect_and_send() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(waping_store::Store::open(dir.path().join("d.redb"), Default::default()).unwrap());
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let up = WhatsAppUpstream::start(&WhatsAppConfig::default(), store, tx, Arc::new(NoJournal))
            .await
            .unwrap();
        let d = DeviceRef {
            workspace: "acme".into(),
            device: "d1".into(),
        };
        assert!(!up.provisioned(&d));
        assert_eq!(up.connect(d.clone()).await, Err(UpstreamError::NotLinked));
        let r = up
            .send(UpstreamSend {
                device: d,
                recipient: "4915112345678".into(),
                body: Body::Text("hi".into()),
                upstream_id: "x".into(),
            })
            .await;
        assert_eq!(r, Err(UpstreamError::Disconnected));
    }
}
