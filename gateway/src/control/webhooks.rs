//! Webhook endpoints of a workspace: records, secrets and their API operations.
//!
//! An endpoint is a URL, the event types it wants (all when empty), whether deliveries keep
//! per-device order, and one or two signing secrets (two while a rotation overlaps). Secrets
//! are sealed with the workspace's data key before they reach `control.redb`: they are
//! credentials, and a copy of the state directory alone must not yield them. The delivery
//! runtime (`crate::webhooks`) is told about every change.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Control, Error, Kind, Permission, Principal};

/// Text form of an endpoint id: `whe_` and 16 hex digits (the event store's endpoint number).
pub fn endpoint_id(num: u64) -> String {
    format!("whe_{num:016x}")
}

/// The event store's endpoint number of `whe_…`, if well formed.
pub fn endpoint_num(id: &str) -> Option<u64> {
    let hex = id.strip_prefix("whe_")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A signing secret as stored: sealed, with its rotation window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSecret {
    /// The `whsec_…` text sealed with the workspace's data key, hex.
    pub sealed: String,
    /// Non-secret fingerprint (8 hex digits), to tell secrets apart in the API.
    pub fingerprint: String,
    /// When it was made, unix ms.
    pub created_at_ms: u64,
    /// When it stops signing (the end of a rotation's overlap), unix ms; `None` = current.
    #[serde(default)]
    pub retire_at_ms: Option<u64>,
}

/// An endpoint as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// `whe_…`.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// Where deliveries go (https unless the operator allows http).
    pub url: String,
    /// Free text for the owner.
    #[serde(default)]
    pub description: String,
    /// Event types delivered (`message.received`, …); empty = every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Keep each device's events in order (the next waits for the previous one to finish).
    #[serde(default)]
    pub ordered: bool,
    /// Deliveries happen only while enabled.
    pub enabled: bool,
    /// Why the gateway disabled it (HTTP 410), if it did.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Current secret first; a retiring one may follow during an overlap.
    pub secrets: Vec<StoredSecret>,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
    /// Who created it (`key:<id>`).
    #[serde(default)]
    pub created_by: String,
}

impl WebhookRecord {
    /// The event store's endpoint number.
    pub fn num(&self) -> u64 {
        endpoint_num(&self.id).unwrap_or(0)
    }

    /// Whether it wants events of type `t` (string form).
    pub fn wants(&self, t: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|x| x == t)
    }
}

/// A secret as the API shows it (never the secret itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SecretInfo {
    /// 8 hex digits derived from the secret.
    pub fingerprint: String,
    /// Unix ms.
    pub created_at_ms: u64,
    /// When it stops signing, unix ms (rotation overlap); absent for the current secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_at_ms: Option<u64>,
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookInfo {
    /// `whe_…`.
    pub id: String,
    /// Delivery URL.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event types delivered; empty = every type.
    pub event_types: Vec<String>,
    /// Per-device order kept.
    pub ordered: bool,
    /// Deliveries happen only while enabled.
    pub enabled: bool,
    /// Why the gateway disabled it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Signing secrets (fingerprints only).
    pub secrets: Vec<SecretInfo>,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
    /// Deliveries waiting (first attempt or retry).
    pub pending_deliveries: u64,
    /// Deliveries that were given up (see `GET /v1/webhooks/{id}/dead`).
    pub dead_deliveries: u64,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Delivery URL: https (http only if the operator allows it); its host must resolve to
    /// public addresses unless the operator allow-lists the network.
    pub url: String,
    /// Free text, at most 200 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Event types to deliver; absent or empty = every type.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Keep each device's events in order. Default false (parallel deliveries).
    #[serde(default)]
    pub ordered: Option<bool>,
}

/// `PATCH /v1/webhooks/{id}`: fields to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdate {
    /// New URL.
    #[serde(default)]
    pub url: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New event types (empty = every type).
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Per-device order.
    #[serde(default)]
    pub ordered: Option<bool>,
    /// Enable (also after the gateway disabled it on HTTP 410) or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing beside the new one, seconds. Default 86 400
    /// (a day, time to roll the receiver over); 0..=604 800.
    #[serde(default)]
    pub overlap_s: Option<u64>,
}

/// A created endpoint or a rotated secret: the secret is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedWebhook {
    /// `whsec_…`: verify deliveries with it (Standard Webhooks).
    pub secret: String,
    /// The endpoint.
    pub webhook: WebhookInfo,
}

/// The delivery runtime as the control plane sees it.
pub trait WebhookRuntime: Send + Sync + std::fmt::Debug {
    /// An endpoint was created or changed (secrets already opened, current first).
    fn upsert(&self, rec: &WebhookRecord, secrets: Vec<waping_webhooks::Secret>);
    /// An endpoint was deleted: stop its worker and drop its deliveries.
    fn remove(&self, rec: &WebhookRecord);
    /// Pending and dead delivery counts of an endpoint.
    fn counts(&self, num: u64) -> (u64, u64);
    /// The URL policy (SSRF guard) endpoints must satisfy.
    fn policy(&self) -> &waping_webhooks::Policy;
    /// Dead deliveries of an endpoint, newest first (for the API).
    fn dead(&self, num: u64, limit: usize) -> Vec<DeadDelivery>;
    /// Puts dead deliveries (one, or all) back to work; returns how many.
    fn replay(&self, num: u64, seq: Option<u64>) -> Result<u64, String>;
    /// Removes every stored event of a workspace (it is being deleted); returns how many.
    fn delete_workspace(
        &self,
        workspace: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>>;
    /// Owes `event` to the endpoint `num` whatever its type filter (an automation's
    /// "call a webhook" action), durably: resolves once the event and its delivery are on
    /// disk, with the event's sequence number. Errors: unknown or disabled endpoint, or one
    /// of another workspace, or the store failed.
    fn deliver_to(
        &self,
        num: u64,
        event: waping_events::Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>>;
    /// Deletes `workspace`'s events from before `older_than_ms` (its retention window) with
    /// their deliveries; returns how many events.
    fn retain(
        &self,
        workspace: &str,
        older_than_ms: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>>;
    /// Erases a device's events, or a sender's messages, from the event log (a deletion
    /// request); returns how many.
    fn erase(
        &self,
        workspace: &str,
        target: waping_events::Erase,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>>;
    /// The node's event log: what live subscribers read with `read_after` from their cursor
    /// and wait on with `watch_head`.
    fn event_store(&self) -> waping_events::EventStore;
}

/// A delivery the gateway gave up.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadDelivery {
    /// Event id (`evt_…`, the `webhook-id` header).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// The event's position in the node's event log (replay one by this).
    pub seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// When it was given up, unix ms.
    pub at_ms: u64,
}

const MAX_OVERLAP_S: u64 = 604_800;

fn seal_aad(workspace: &str, id: &str) -> Vec<u8> {
    let mut a = b"waping-webhook-secret\x00".to_vec();
    a.extend_from_slice(workspace.as_bytes());
    a.push(0);
    a.extend_from_slice(id.as_bytes());
    a
}

impl Control {
    /// Installs the delivery runtime (once, at start).
    pub fn set_webhook_runtime(&self, rt: Arc<dyn WebhookRuntime>) {
        let _ = self.webhook_rt.set(rt);
    }

    /// The webhook runtime, once started (live subscriptions and automations use it).
    pub fn webhook_runtime(&self) -> Option<&Arc<dyn WebhookRuntime>> {
        self.webhook_rt.get()
    }

    fn webhook_rt(&self) -> Result<&Arc<dyn WebhookRuntime>, Error> {
        self.webhook_rt
            .get()
            .ok_or_else(|| Error::Internal("webhook runtime not started".into()))
    }

    /// Every stored endpoint of every workspace with its opened secrets, for the runtime's
    /// start. An endpoint whose secrets cannot be opened (its workspace's key is gone) is
    /// skipped with a log line.
    pub fn webhook_records(&self) -> Vec<(WebhookRecord, Vec<waping_webhooks::Secret>)> {
        let mut out = Vec::new();
        for ws in self.registry.iter() {
            let recs: Vec<WebhookRecord> = match self.store.list(Kind::Webhook, Some(&ws.id)) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(workspace = %ws.id, error = %e, "listing webhook endpoints");
                    continue;
                }
            };
            for r in recs {
                match self.open_secrets(&r, crate::unix_ms()) {
                    Ok(s) => out.push((r, s)),
                    Err(e) => {
                        tracing::error!(endpoint = %r.id, error = %e, "webhook secrets unreadable; endpoint not started")
                    }
                }
            }
        }
        out
    }

    /// Opens an endpoint's secrets that still sign at `now_ms`, current first.
    pub fn open_secrets(
        &self,
        rec: &WebhookRecord,
        now_ms: u64,
    ) -> Result<Vec<waping_webhooks::Secret>, Error> {
        let mut out = Vec::new();
        for s in &rec.secrets {
            if s.retire_at_ms.is_some_and(|t| t <= now_ms) {
                continue;
            }
            let sealed = hex::decode(&s.sealed).map_err(|e| Error::Internal(format!("secret: {e}")))?;
            let plain = self
                .vault
                .open_sealed(&rec.workspace, &seal_aad(&rec.workspace, &rec.id), &sealed)
                .map_err(|e| Error::Internal(format!("secret: {e}")))?;
            let text = String::from_utf8(plain).map_err(|e| Error::Internal(format!("secret: {e}")))?;
            out.push(
                waping_webhooks::Secret::parse(&text).map_err(|e| Error::Internal(format!("secret: {e}")))?,
            );
        }
        Ok(out)
    }

    fn seal_secret(
        &self,
        workspace: &str,
        id: &str,
        secret: &waping_webhooks::Secret,
        now: u64,
    ) -> Result<StoredSecret, Error> {
        let sealed = self
            .vault
            .seal(
                workspace,
                &seal_aad(workspace, id),
                secret.expose_whsec().as_bytes(),
            )
            .map_err(|e| Error::Internal(format!("sealing the secret: {e}")))?;
        Ok(StoredSecret {
            sealed: hex::encode(sealed),
            fingerprint: secret.fingerprint(),
            created_at_ms: now,
            retire_at_ms: None,
        })
    }

    fn webhook_info(&self, r: &WebhookRecord) -> WebhookInfo {
        let (pending, dead) = self.webhook_rt().map(|rt| rt.counts(r.num())).unwrap_or((0, 0));
        let now = crate::unix_ms();
        WebhookInfo {
            id: r.id.clone(),
            url: r.url.clone(),
            description: r.description.clone(),
            event_types: r.event_types.clone(),
            ordered: r.ordered,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason.clone(),
            secrets: r
                .secrets
                .iter()
                .filter(|s| s.retire_at_ms.is_none_or(|t| t > now))
                .map(|s| SecretInfo {
                    fingerprint: s.fingerprint.clone(),
                    created_at_ms: s.created_at_ms,
                    retire_at_ms: s.retire_at_ms,
                })
                .collect(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            pending_deliveries: pending,
            dead_deliveries: dead,
        }
    }

    fn check_url(&self, url: &str) -> Result<(), Error> {
        let rt = self.webhook_rt()?;
        let u = waping_webhooks::EndpointUrl::parse(url, rt.policy())
            .map_err(|e| Error::Invalid(format!("url: {e}")))?;
        // An address written in the URL is checked now; names are checked when resolved, at
        // every delivery (their addresses may change).
        if let waping_webhooks::Host::Ip(ip) = u.host()
            && let Err(class) = rt.policy().check_addr(*ip)
        {
            return Err(Error::Invalid(format!(
                "url: {ip} is a {} address; webhooks go to public addresses unless the operator allows the network",
                class.describe()
            )));
        }
        if url.len() > 2048 {
            return Err(Error::Invalid("url: at most 2048 characters".into()));
        }
        Ok(())
    }

    fn check_types(types: &[String]) -> Result<(), Error> {
        if types.len() > waping_events::EventType::ALL.len() {
            return Err(Error::Invalid("event_types: too many entries".into()));
        }
        for t in types {
            waping_events::EventType::parse(t)
                .map_err(|_| Error::Invalid(format!("event_types: unknown event type {t:?}")))?;
        }
        Ok(())
    }

    fn webhook_of(&self, p: &Principal, id: &str) -> Result<WebhookRecord, Error> {
        let me = p.require(Permission::WebhooksManage)?;
        endpoint_num(id).ok_or(Error::NotFound)?;
        self.store
            .get(Kind::Webhook, &[&me.workspace.id, id])?
            .ok_or(Error::NotFound)
    }

    fn audit_webhook(
        &self,
        p: Option<&Principal>,
        action: waping_audit::Action,
        r: &WebhookRecord,
        fields: Vec<String>,
    ) {
        let actor = p.map_or(waping_audit::Actor::System, crate::audit::actor);
        self.audit.emit(
            waping_audit::Event::new(crate::unix_ms(), actor, action)
                .workspace(&r.workspace)
                .target("webhook", &r.id)
                .detail(waping_audit::Detail::Changed { fields }),
        );
    }

    /// Creates an endpoint of the caller's workspace; the secret is returned this once.
    pub fn create_webhook(&self, p: &Principal, req: NewWebhook) -> Result<IssuedWebhook, Error> {
        let me = p.require(Permission::WebhooksManage)?;
        let ws = me.workspace.clone();
        self.check_url(&req.url)?;
        let types = req.event_types.unwrap_or_default();
        Self::check_types(&types)?;
        let description = req.description.unwrap_or_default();
        if description.chars().count() > 200 {
            return Err(Error::Invalid("description: at most 200 characters".into()));
        }
        let quota = self.meta.get(&*ws.id).map_or(self.config().quotas, |m| m.quotas);
        let existing: Vec<WebhookRecord> = self.store.list(Kind::Webhook, Some(&ws.id))?;
        if existing.len() as u32 >= quota.max_webhooks {
            return Err(Error::Quota(format!(
                "the workspace has its maximum of {} webhook endpoints",
                quota.max_webhooks
            )));
        }
        self.audit.gate()?;
        let secret =
            waping_webhooks::Secret::generate().map_err(|e| Error::Internal(format!("secret: {e}")))?;
        let num = loop {
            let n: u64 = rand::random();
            if n != 0 && !existing.iter().any(|r| r.num() == n) {
                break n;
            }
        };
        let id = endpoint_id(num);
        let now = crate::unix_ms();
        let rec = WebhookRecord {
            secrets: vec![self.seal_secret(&ws.id, &id, &secret, now)?],
            id,
            workspace: ws.id.to_string(),
            url: req.url,
            description,
            event_types: types,
            ordered: req.ordered.unwrap_or(false),
            enabled: true,
            disabled_reason: None,
            created_at_ms: now,
            updated_at_ms: now,
            created_by: p.actor(),
        };
        self.store.put(Kind::Webhook, &[&rec.workspace, &rec.id], &rec)?;
        self.webhook_rt()?.upsert(&rec, vec![secret.clone()]);
        self.audit_webhook(
            Some(p),
            waping_audit::Action::WebhookCreate,
            &rec,
            vec![
                "url".into(),
                "event_types".into(),
                "ordered".into(),
                "secret".into(),
            ],
        );
        Ok(IssuedWebhook {
            secret: secret.expose_whsec(),
            webhook: self.webhook_info(&rec),
        })
    }

    /// The caller's workspace's endpoints.
    pub fn list_webhooks(&self, p: &Principal) -> Result<Vec<WebhookInfo>, Error> {
        let me = p.require(Permission::WebhooksManage)?;
        let mut v: Vec<WebhookRecord> = self.store.list(Kind::Webhook, Some(&me.workspace.id))?;
        v.sort_by_key(|r| r.created_at_ms);
        Ok(v.iter().map(|r| self.webhook_info(r)).collect())
    }

    /// One endpoint of the caller's workspace.
    pub fn get_webhook(&self, p: &Principal, id: &str) -> Result<WebhookInfo, Error> {
        Ok(self.webhook_info(&self.webhook_of(p, id)?))
    }

    /// Changes an endpoint.
    pub fn update_webhook(&self, p: &Principal, id: &str, req: WebhookUpdate) -> Result<WebhookInfo, Error> {
        let mut rec = self.webhook_of(p, id)?;
        let mut fields = Vec::new();
        if let Some(url) = req.url {
            self.check_url(&url)?;
            if url != rec.url {
                rec.url = url;
                fields.push("url".to_string());
            }
        }
        if let Some(d) = req.description {
            if d.chars().count() > 200 {
                return Err(Error::Invalid("description: at most 200 characters".into()));
            }
            if d != rec.description {
                rec.description = d;
                fields.push("description".into());
            }
        }
        if let Some(t) = req.event_types {
            Self::check_types(&t)?;
            if t != rec.event_types {
                rec.event_types = t;
                fields.push("event_types".into());
            }
        }
        if let Some(o) = req.ordered
            && o != rec.ordered
        {
            rec.ordered = o;
            fields.push("ordered".into());
        }
        if let Some(e) = req.enabled
            && (e != rec.enabled || (e && rec.disabled_reason.is_some()))
        {
            rec.enabled = e;
            rec.disabled_reason = None;
            fields.push("enabled".into());
        }
        if fields.is_empty() {
            return Ok(self.webhook_info(&rec));
        }
        self.audit.gate()?;
        rec.updated_at_ms = crate::unix_ms();
        self.store.put(Kind::Webhook, &[&rec.workspace, &rec.id], &rec)?;
        let secrets = self.open_secrets(&rec, crate::unix_ms())?;
        self.webhook_rt()?.upsert(&rec, secrets);
        self.audit_webhook(Some(p), waping_audit::Action::WebhookUpdate, &rec, fields);
        Ok(self.webhook_info(&rec))
    }

    /// Deletes an endpoint and every delivery still waiting for it.
    pub fn delete_webhook(&self, p: &Principal, id: &str) -> Result<(), Error> {
        let rec = self.webhook_of(p, id)?;
        self.audit.gate()?;
        self.store.delete(Kind::Webhook, &[&rec.workspace, &rec.id])?;
        self.webhook_rt()?.remove(&rec);
        self.audit_webhook(Some(p), waping_audit::Action::WebhookDelete, &rec, Vec::new());
        Ok(())
    }

    /// A new signing secret; the old one keeps signing beside it for `overlap_s`.
    pub fn rotate_webhook_secret(
        &self,
        p: &Principal,
        id: &str,
        req: RotateSecret,
    ) -> Result<IssuedWebhook, Error> {
        let mut rec = self.webhook_of(p, id)?;
        let overlap = req.overlap_s.unwrap_or(86_400);
        if overlap > MAX_OVERLAP_S {
            return Err(Error::Invalid(format!(
                "overlap_s: {overlap} is out of range 0..={MAX_OVERLAP_S}"
            )));
        }
        self.audit.gate()?;
        let now = crate::unix_ms();
        let secret =
            waping_webhooks::Secret::generate().map_err(|e| Error::Internal(format!("secret: {e}")))?;
        let new = self.seal_secret(&rec.workspace, &rec.id, &secret, now)?;
        // Only the current secret overlaps; older retiring ones end now. At most two sign.
        let mut old: Vec<StoredSecret> = rec
            .secrets
            .iter()
            .filter(|s| s.retire_at_ms.is_none())
            .cloned()
            .collect();
        for s in &mut old {
            s.retire_at_ms = Some(now + overlap * 1000);
        }
        if overlap == 0 {
            old.clear();
        }
        rec.secrets = std::iter::once(new).chain(old).collect();
        rec.updated_at_ms = now;
        self.store.put(Kind::Webhook, &[&rec.workspace, &rec.id], &rec)?;
        let secrets = self.open_secrets(&rec, now)?;
        self.webhook_rt()?.upsert(&rec, secrets);
        self.audit_webhook(
            Some(p),
            waping_audit::Action::WebhookUpdate,
            &rec,
            vec!["secret".into()],
        );
        Ok(IssuedWebhook {
            secret: secret.expose_whsec(),
            webhook: self.webhook_info(&rec),
        })
    }

    /// Dead deliveries of an endpoint.
    pub fn webhook_dead(&self, p: &Principal, id: &str) -> Result<Vec<DeadDelivery>, Error> {
        let rec = self.webhook_of(p, id)?;
        Ok(self.webhook_rt()?.dead(rec.num(), 1000))
    }

    /// Puts an endpoint's dead deliveries back to work (one by `seq`, or all).
    pub fn webhook_replay(&self, p: &Principal, id: &str, seq: Option<u64>) -> Result<u64, Error> {
        let rec = self.webhook_of(p, id)?;
        self.audit.gate()?;
        let n = self
            .webhook_rt()?
            .replay(rec.num(), seq)
            .map_err(Error::Internal)?;
        self.audit_webhook(
            Some(p),
            waping_audit::Action::WebhookUpdate,
            &rec,
            vec![format!("replayed:{n}")],
        );
        Ok(n)
    }

    /// A workspace is being deleted: its endpoints and every event stored for it go.
    pub async fn delete_workspace_webhooks(&self, workspace: &str) -> anyhow::Result<u64> {
        let recs: Vec<WebhookRecord> = self.store.list(Kind::Webhook, Some(workspace))?;
        let rt = self.webhook_rt().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
        for r in &recs {
            rt.remove(r);
        }
        self.store.delete_prefix(Kind::Webhook, &[workspace])?;
        let events = rt
            .delete_workspace(workspace)
            .await
            .map_err(|e| anyhow::anyhow!("events: {e}"))?;
        Ok(events)
    }

    /// The gateway disables an endpoint (its receiver answered 410 Gone): recorded, and the
    /// owner told by a `webhook.endpoint_disabled` event to the workspace's other endpoints.
    pub fn disable_webhook_by_gateway(
        &self,
        workspace: &str,
        id: &str,
        reason: &str,
    ) -> Option<WebhookRecord> {
        let mut rec: WebhookRecord = self.store.get(Kind::Webhook, &[workspace, id]).ok()??;
        if !rec.enabled {
            return None;
        }
        rec.enabled = false;
        rec.disabled_reason = Some(reason.to_string());
        rec.updated_at_ms = crate::unix_ms();
        if let Err(e) = self.store.put(Kind::Webhook, &[workspace, id], &rec) {
            tracing::error!(endpoint = %id, error = %e, "storing a disabled webhook endpoint");
        }
        if let (Ok(rt), Ok(secrets)) = (self.webhook_rt(), self.open_secrets(&rec, crate::unix_ms())) {
            rt.upsert(&rec, secrets);
        }
        self.audit_webhook(
            None,
            waping_audit::Action::WebhookDisable,
            &rec,
            vec![reason.to_string()],
        );
        Some(rec)
    }
}
