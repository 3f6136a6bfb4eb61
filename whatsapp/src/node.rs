//! A node of linked devices: shared pieces, per-device clients, operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use whatsapp_rust::anyhow;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::prelude::{MessageBuilderExt, wa};
use whatsapp_rust::store::persistence_manager::PersistenceManager;
use whatsapp_rust::types::events::{Event, EventHandler, InboundMessage, Subscription};
use whatsapp_rust::{Client, ClientBuilder, InboundDurabilityHook, Jid, SendOptions, TokioRuntime};

use crate::backend::KvBackend;
use crate::config::WaConfig;
use crate::error::WaError;
use crate::event::{InboundCommit, WaEvent, WaMessage, interest, map_event};
use crate::kv::DeviceKv;
use crate::net::{HyperHttpClient, Net, WsTransportFactory};

/// What to send. Only text today; media variants will join without changing `send`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboundBody {
    /// A text message.
    Text(String),
}

/// WhatsApp accepted a message (its server ack arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The WhatsApp message id used on the wire.
    pub wa_id: String,
    /// The recipient as WhatsApp addressed it.
    pub to: String,
}

/// Derives the WhatsApp message id for a gateway message from its stable id.
///
/// Same shape as WhatsApp Web's own ids (`3EB0` + 18 upper-case hex digits), and
/// deterministic: a resend after a timeout carries the same id, which recipients'
/// clients treat as the same message (WhatsApp deduplicates by id per chat), so an
/// ambiguous first attempt does not become a visible duplicate.
pub fn wa_message_id(stable_id: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(stable_id);
    let mut id = String::with_capacity(22);
    id.push_str("3EB0");
    for b in &digest[..9] {
        id.push_str(&format!("{b:02X}"));
    }
    id
}

/// Parses a recipient: a phone number in international form (digits, optional `+`)
/// or a full JID (`...@s.whatsapp.net`, `...@g.us`, `...@lid`).
pub fn parse_recipient(to: &str) -> Result<Jid, WaError> {
    let to = to.trim();
    if to.contains('@') {
        let jid: Jid = to
            .parse()
            .map_err(|e| WaError::InvalidRequest(format!("recipient {to:?}: {e}")))?;
        if jid.user.is_empty() {
            return Err(WaError::InvalidRequest(format!("recipient {to:?} has no user")));
        }
        return Ok(jid);
    }
    let digits = to.strip_prefix('+').unwrap_or(to);
    if !(5..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WaError::InvalidRequest(format!(
            "recipient {to:?} is neither a JID nor an international phone number"
        )));
    }
    format!("{digits}@s.whatsapp.net")
        .parse()
        .map_err(|e| WaError::InvalidRequest(format!("recipient {to:?}: {e}")))
}

/// Shared pieces of all devices of one process: configuration, the device store,
/// the resolver and connect pacer, transport factory, HTTP client and runtime.
pub struct WaNode {
    cfg: Arc<WaConfig>,
    kv: Arc<dyn DeviceKv>,
    net: Arc<Net>,
    transport: Arc<WsTransportFactory>,
    http: Arc<HyperHttpClient>,
}

impl std::fmt::Debug for WaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaNode")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl WaNode {
    /// A node over `kv`. Fails on an unusable `ws_url`.
    pub fn new(cfg: WaConfig, kv: Arc<dyn DeviceKv>) -> Result<Self, WaError> {
        let host = cfg
            .ws_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .ok_or_else(|| WaError::InvalidRequest(format!("bad ws_url {:?}", cfg.ws_url)))?;
        let net = Arc::new(Net::new(&cfg, &host));
        Self::with_net(cfg, kv, net)
    }

    pub(crate) fn with_net(cfg: WaConfig, kv: Arc<dyn DeviceKv>, net: Arc<Net>) -> Result<Self, WaError> {
        let transport = WsTransportFactory::new(net.clone(), &cfg.ws_url)
            .map_err(|e| WaError::InvalidRequest(e.to_string()))?;
        let http = HyperHttpClient {
            net: net.clone(),
            timeout: cfg.http_timeout,
            max_body: cfg.http_max_body,
        };
        Ok(Self {
            cfg: Arc::new(cfg),
            kv,
            net,
            transport: Arc::new(transport),
            http: Arc::new(http),
        })
    }

    /// Devices with state in the store, linked or not (restore order is the caller's).
    pub async fn stored_devices(&self) -> Result<Vec<crate::backend::StoredDevice>, WaError> {
        crate::backend::stored_devices(self.kv.as_ref())
            .await
            .map_err(|e| WaError::Storage(e.to_string()))
    }

    /// Name lookups done so far by the node's resolver (one per host per TTL).
    pub fn dns_lookups(&self) -> u64 {
        self.net.resolver.lookups()
    }

    /// Opens (or creates) device `device_id` and its bounded event channel.
    ///
    /// Creating does not connect; [`WaDevice::connect`] does. A new device gets fresh
    /// keys in the store and links through [`WaEvent::Qr`] or a pairing code.
    pub async fn device(&self, device_id: &str) -> Result<(WaDevice, mpsc::Receiver<WaEvent>), WaError> {
        let backend = Arc::new(KvBackend::new(self.kv.clone(), device_id));
        let pm = Arc::new(
            PersistenceManager::new(backend.clone())
                .await
                .map_err(|e| WaError::Storage(e.to_string()))?,
        );
        let (tx, rx) = mpsc::channel(self.cfg.event_capacity.max(1));
        let sink = Arc::new(EventSink::new(tx.clone()));
        let hook = CommitHook {
            tx,
            timeout: self.cfg.inbound_commit_timeout,
        };
        let build = ClientBuilder::new()
            .with_runtime(TokioRuntime)
            .with_persistence_manager(pm.clone())
            .with_transport_factory_arc(self.transport.clone())
            .with_http_client_arc(self.http.clone())
            .with_version_override(self.cfg.web_version)
            .with_inbound_durability_hook(hook)
            .with_skip_history_sync(self.cfg.skip_history_sync)
            // Without a saver, device state (the credentials after pairing) would stay
            // in memory only; it also flushes on shutdown.
            .with_background_saver_interval(self.cfg.device_save_interval.max(Duration::from_secs(1)))
            .build()
            .await
            .map_err(|e| WaError::Internal(e.to_string()))?;
        let client = build.into_client();
        let subscription = client.subscribe(interest(), sink.clone());
        let device = WaDevice {
            id: device_id.to_owned(),
            client,
            pm,
            backend,
            sink,
            _subscription: subscription,
            runner: Mutex::new(None),
            cfg: self.cfg.clone(),
        };
        Ok((device, rx))
    }
}

/// Receives the library's events (a synchronous callback) and forwards them to the
/// device's bounded channel without ever blocking the library.
pub(crate) struct EventSink {
    tx: mpsc::Sender<WaEvent>,
    lagged: AtomicU64,
    /// Sends waiting for their server ack, by WhatsApp message id.
    waiters: Mutex<HashMap<String, oneshot::Sender<Option<WaError>>>>,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<WaEvent>) -> Self {
        Self {
            tx,
            lagged: AtomicU64::new(0),
            waiters: Mutex::default(),
        }
    }

    fn push(&self, ev: WaEvent) {
        let missed = self.lagged.load(Ordering::Relaxed);
        if missed > 0 {
            match self.tx.try_send(WaEvent::Lagged { missed }) {
                Ok(()) => {
                    self.lagged.fetch_sub(missed, Ordering::Relaxed);
                }
                Err(_) => {
                    self.lagged.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
            self.lagged.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Option<WaError>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventHandler for EventSink {
    fn handle_event(&self, event: Arc<Event>) {
        let mapped = map_event(&event);
        if let Some((id, err)) = mapped.ack
            && let Some(w) = self.waiters().remove(&id)
        {
            let _ = w.send(err);
        }
        if let Some(ev) = mapped.event {
            self.push(ev);
        }
    }
}

/// The inbound durability hook: hands each batch to the consumer and returns (letting
/// the library ack WhatsApp) only once the consumer committed it.
pub(crate) struct CommitHook {
    pub(crate) tx: mpsc::Sender<WaEvent>,
    pub(crate) timeout: Duration,
}

impl CommitHook {
    pub(crate) async fn deliver(&self, batch: Vec<WaMessage>) -> anyhow::Result<()> {
        let (commit, answer) = InboundCommit::gated();
        let wait = async {
            // Awaiting channel space is the backpressure: a slow consumer slows the
            // receive path instead of growing a queue.
            self.tx
                .send(WaEvent::Messages { batch, commit })
                .await
                .map_err(|_| anyhow::anyhow!("event consumer gone"))?;
            match answer.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(anyhow::anyhow!("consumer rejected the batch: {reason}")),
                Err(_) => Err(anyhow::anyhow!("consumer dropped the batch uncommitted")),
            }
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| anyhow::anyhow!("inbound commit timed out"))?
    }
}

#[whatsapp_rust::async_trait]
impl InboundDurabilityHook for CommitHook {
    async fn on_messages(&self, _client: Arc<Client>, batch: &[InboundMessage]) -> anyhow::Result<()> {
        self.deliver(batch.iter().map(WaMessage::from_inbound).collect())
            .await
    }
}

/// One linked (or linking) WhatsApp device.
pub struct WaDevice {
    id: String,
    client: Arc<Client>,
    pm: Arc<PersistenceManager>,
    backend: Arc<KvBackend>,
    sink: Arc<EventSink>,
    _subscription: Subscription,
    runner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    cfg: Arc<WaConfig>,
}

impl std::fmt::Debug for WaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl WaDevice {
    /// The gateway's id of this device.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The phone-number JID once linked.
    pub fn jid(&self) -> Option<String> {
        self.pm.get_device_snapshot().pn.as_ref().map(ToString::to_string)
    }

    /// Whether the device is linked to a phone (credentials in the store).
    pub fn is_paired(&self) -> bool {
        self.pm.get_device_snapshot().pn.is_some()
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Starts the connection loop (idempotent). The library reconnects by itself with
    /// WhatsApp Web's Fibonacci backoff (1 s .. 900 s, 10 % jitter); every attempt
    /// goes through the node's connect pacer. An unpaired device emits [`WaEvent::Qr`].
    pub fn connect(&self) {
        let mut runner = self.runner.lock().unwrap_or_else(|p| p.into_inner());
        if runner.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let client = self.client.clone();
        *runner = Some(tokio::spawn(async move { client.run().await }));
    }

    /// Stops the connection loop and closes the connection; credentials stay.
    pub async fn disconnect(&self) {
        self.client.disconnect().await;
        let runner = self.runner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = runner {
            let _ = h.await;
        }
    }

    /// Unlinks from WhatsApp (best effort when offline), stops, and deletes this
    /// device's credentials and state from the store.
    pub async fn logout(&self) -> Result<(), WaError> {
        self.client.logout().await;
        self.disconnect().await;
        self.backend
            .wipe()
            .await
            .map_err(|e| WaError::Storage(e.to_string()))
    }

    /// Asks WhatsApp for a pairing code for `phone` (international digits). The device
    /// must be connected and unpaired (i.e. after its first [`WaEvent::Qr`]); the code
    /// also arrives as [`WaEvent::PairingCode`].
    pub async fn request_pairing_code(&self, phone: &str) -> Result<String, WaError> {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        if !(5..=20).contains(&digits.len()) {
            return Err(WaError::InvalidRequest(format!("phone number {phone:?}")));
        }
        let options = PairCodeOptions {
            phone_number: digits,
            show_push_notification: true,
            ..Default::default()
        };
        self.client
            .pair_with_code(options)
            .await
            .map_err(|e| WaError::from_chain(&e))
    }

    /// Sends `body` to `to` under WhatsApp id `wa_id` (see [`wa_message_id`]) and waits
    /// for WhatsApp's server ack (`send_ack_timeout`). A 429 nack is
    /// [`WaError::RateOverlimit`]; a timeout is ambiguous (resend with the same id).
    pub async fn send(&self, to: &str, wa_id: &str, body: &OutboundBody) -> Result<SendReceipt, WaError> {
        let jid = parse_recipient(to)?;
        if wa_id.is_empty() || wa_id.len() > 64 || !wa_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(WaError::InvalidRequest(format!("message id {wa_id:?}")));
        }
        let message = match body {
            OutboundBody::Text(t) => wa::Message::text(t.clone()),
        };
        let (tx, rx) = oneshot::channel();
        self.sink.waiters().insert(wa_id.to_owned(), tx);
        let sent = self
            .client
            .send_message_with_options(jid, message, SendOptions::default().with_message_id(wa_id))
            .await;
        let sent = match sent {
            Ok(r) => r,
            Err(e) => {
                self.sink.waiters().remove(wa_id);
                return Err(WaError::from(e));
            }
        };
        let outcome = tokio::time::timeout(self.cfg.send_ack_timeout, rx).await;
        self.sink.waiters().remove(wa_id);
        match outcome {
            Ok(Ok(None)) => Ok(SendReceipt {
                wa_id: sent.message_id,
                to: sent.to.to_string(),
            }),
            Ok(Ok(Some(err))) => Err(err),
            Ok(Err(_)) => Err(WaError::Closed),
            Err(_) => Err(WaError::Timeout { op: "server ack" }),
        }
    }

    /// Shows (`true`) or clears the "typing…" state in the chat with `to`.
    pub async fn typing(&self, to: &str, on: bool) -> Result<(), WaError> {
        let jid = parse_recipient(to)?;
        let chat = self.client.chatstate();
        let r = if on {
            chat.send_composing(&jid).await
        } else {
            chat.send_paused(&jid).await
        };
        r.map_err(|e| WaError::from_chain(&e))
    }

    /// Informational events dropped so far because the consumer was slow.
    pub fn lagged(&self) -> u64 {
        self.sink.lagged.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_shaped_like_wa_web() {
        let a = wa_message_id(b"gateway-msg-1");
        assert_eq!(a, wa_message_id(b"gateway-msg-1"));
        assert_ne!(a, wa_message_id(b"gateway-msg-2"));
        assert_eq!(a.len(), 22);
        assert!(a.starts_with("3EB0"));
        assert!(
            a[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
    }

    #[test]
    fn recipients_parse_or_fail_cleanly() {
        assert_eq!(
            parse_recipient("+15551234567").unwrap().to_string(),
            "15551234567@s.whatsapp.net"
        );
        assert_eq!(
            parse_recipient("120363021033254949@g.us").unwrap().to_string(),
            "120363021033254949@g.us"
        );
        for bad in [
            "",
            "+",
            "12",
            "phone",
            "1555 123",
            "@s.whatsapp.net",
            "1@",
            "\u{0}@x",
            "123456789012345678901",
        ] {
            assert!(
                matches!(parse_recipient(bad), Err(WaError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }
}
