//! The control plane: workspaces, API keys, devices, retention and deletions.
//!
//! [`Control`] is the single authority the HTTP API (and the QUIC listener, for
//! authentication) goes through. Every object is resolved inside the caller's
//! workspace: an id of another workspace is reported exactly like one that does not
//! exist ([`Error::NotFound`]), never as forbidden, so existence does not leak.
//! Which principal may call what is decided in one table, [`roles`].

pub mod automations;
pub mod config;
pub mod jobs;
pub mod reload;
pub mod retention;
pub mod roles;
pub mod sealing;
pub mod store;
pub mod throttle;
pub mod webhooks;

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;
use waping_protocol::{ErrorCode, Text};

use crate::auth::{self, ApiKeys, LiveKey};
use crate::config::Config;
use crate::durable::Durable;
use crate::limiter::{Limiter, Nanos, Quota};
use crate::session::{DeviceCommand, SessionManager};
use crate::workspace::{Registry, Workspace};
use config::{Quotas, Retention};
use roles::{Permission, Role};
use store::{ControlStore, Kind};

/// Why a control-plane operation did not happen. Each variant says whose fault it is
/// (its [`ErrorCode`]) and maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such object in the caller's workspace (or anywhere: the two are indistinguishable).
    #[error("not found")]
    NotFound,
    /// Missing, wrong or revoked credentials.
    #[error("authentication failed")]
    Unauthenticated,
    /// Authenticated, but the role does not grant the permission.
    #[error("the key's role does not grant `{}`", .0.as_str())]
    Forbidden(Permission),
    /// A field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The object exists already, or its state forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// A workspace quota is used up.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// The node failed (disk, journal); retrying may help.
    #[error("internal error: {0}")]
    Internal(String),
    /// A catalogue error from the data path (send refusals, device states).
    #[error("{message}")]
    Code {
        /// Catalogue code.
        code: ErrorCode,
        /// Human text.
        message: String,
        /// Milliseconds to wait before retrying (0 = not a wait problem).
        retry_after_ms: u32,
    },
}

impl Error {
    /// The catalogue code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound => ErrorCode::NOT_FOUND,
            Error::Unauthenticated => ErrorCode::AUTH_FAILED,
            Error::Forbidden(_) => ErrorCode::FORBIDDEN,
            Error::Invalid(_) => ErrorCode::INVALID_FIELD,
            Error::Conflict(_) => ErrorCode::CONFLICT,
            Error::Quota(_) => ErrorCode::QUOTA_EXCEEDED,
            Error::Internal(_) => ErrorCode::INTERNAL,
            Error::Code { code, .. } => *code,
        }
    }
}

impl From<store::ControlStoreError> for Error {
    fn from(e: store::ControlStoreError) -> Self {
        Error::Internal(e.to_string())
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The node administrator (token from a file or systemd credential).
    Admin,
    /// A workspace API key.
    Key(Arc<LiveKey>),
}

impl Principal {
    /// Audit/actor string: `admin` or `key:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Key(k) => format!("key:{}", k.id),
        }
    }

    /// The workspace-scoped key, checking `p` (the one authorization check of the API).
    pub fn require(&self, p: Permission) -> Result<&Arc<LiveKey>, Error> {
        match self {
            Principal::Key(k) if k.role.allows(p) => Ok(k),
            Principal::Key(_) => Err(Error::Forbidden(p)),
            // The node admin manages workspaces, not their contents.
            Principal::Admin => Err(Error::Forbidden(p)),
        }
    }
}

/// Where an object was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file (changes there; the API refuses to delete it).
    Config,
    /// The API.
    Api,
}

/// A workspace as stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkspaceRecord {
    /// Stable id, 1–64 characters of `a-z 0-9 _ -`.
    pub id: String,
    /// Where it was defined.
    pub source: Source,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// Send rate, messages per second (token bucket refill).
    pub rate_per_second: u32,
    /// Send burst.
    pub burst: u32,
    /// Quotas.
    pub quotas: Quotas,
    /// Retention windows.
    pub retention: Retention,
    /// Whether this workspace's audit records carry full phone numbers (masked by default).
    #[serde(default)]
    pub audit_full_numbers: bool,
}

/// An API key as stored (the hash never leaves the node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// Human name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// `sha256:…` of the whole key.
    pub hash: String,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// Who created it (`admin`, `key:<id>`).
    pub created_by: String,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<u64>,
}

/// A key as the API shows it: no secret, no hash.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// Public id (`wpk_<id>_…`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Where it was defined.
    pub source: Source,
    /// Creation time, unix ms (0 for keys from the configuration).
    pub created_at_ms: u64,
    /// Who created it.
    pub created_by: String,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<u64>,
    /// Last successful use since the node started, unix ms.
    pub last_used_at_ms: Option<u64>,
}

/// A freshly created or rotated key: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedKey {
    /// The full key; store it now, it cannot be shown again.
    pub key: String,
    /// Its record.
    pub info: KeyInfo,
}

/// A device as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Workspace.
    pub workspace: String,
    /// Device id.
    pub id: String,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// Who created it.
    pub created_by: String,
}

/// Workspace creation request (node admin).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// Id, 1–64 characters of `a-z 0-9 _ -`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// Send rate (default `[limits] rate_per_second`), 1..=10 000 000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub rate_per_second: Option<u32>,
    /// Send burst (default `[limits] burst`), 1..=10 000 000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub burst: Option<u32>,
    /// Quotas (default `[quotas]`).
    pub quotas: Option<Quotas>,
    /// Retention (default `[retention]`).
    pub retention: Option<Retention>,
    /// Audit records carry full phone numbers instead of masked ones (default false).
    pub audit_full_numbers: Option<bool>,
}

/// Changes to a workspace's limits and quotas (node admin); absent fields keep their value.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceUpdate {
    /// Send rate, 1..=10 000 000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub rate_per_second: Option<u32>,
    /// Send burst, 1..=10 000 000.
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub burst: Option<u32>,
    /// Quotas, replaced as a whole.
    pub quotas: Option<Quotas>,
}

/// A key's new role.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    /// The role; a key may only give roles whose permissions are a subset of its own, to keys
    /// whose current role is too.
    pub role: Role,
}

/// Key creation request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Human name, 1–100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// Role; a key may only create keys whose permissions are a subset of its own.
    pub role: Role,
    /// Optional lifetime in seconds, 60..=315 360 000 (10 years).
    #[schema(minimum = 60, maximum = 315_360_000)]
    pub expires_in_s: Option<u64>,
}

/// SHA-256 of the node-admin token, compared in constant time.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// From the token text (at least 32 characters: it guards every workspace).
    pub fn new(token: &str) -> Result<AdminToken, String> {
        let t = token.trim();
        if t.len() < 32 {
            return Err("the admin token must be at least 32 characters".into());
        }
        Ok(AdminToken(sha2::Sha256::digest(t.as_bytes()).into()))
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        d.ct_eq(&self.0).into()
    }

    /// Reads it from `path`, or from `$CREDENTIALS_DIRECTORY/admin-token`; `None` when neither
    /// is configured or present.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Option<AdminToken>> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(d) if std::path::Path::new(&d).join("admin-token").exists() => {
                    std::path::Path::new(&d).join("admin-token")
                }
                _ => return Ok(None),
            },
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("reading the admin token {}: {e}", path.display()))?;
        AdminToken::new(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Checks an id of a workspace: 1–64 characters of `a-z 0-9 _ -`.
pub fn valid_workspace_id(id: &str) -> Result<(), Error> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(Error::Invalid(
            "id: must be 1-64 characters of a-z 0-9 _ -".into(),
        ));
    }
    Ok(())
}

/// Everything the control plane works on.
#[derive(Debug)]
pub struct Control {
    /// Workspaces.
    pub registry: Arc<Registry>,
    /// API keys.
    pub keys: Arc<ApiKeys>,
    /// Device sessions.
    pub sessions: Arc<SessionManager>,
    /// Journal, idempotency index and retry queue.
    pub durable: Arc<Durable>,
    /// Data keys.
    pub vault: Arc<waping_vault::Vault>,
    /// Device store (session records, WhatsApp credentials).
    pub device_store: Arc<waping_store::Store>,
    /// The configuration in force (defaults for new objects); SIGHUP swaps it.
    cfg: arc_swap::ArcSwap<Config>,
    /// Node-admin token, if configured.
    pub admin: Option<AdminToken>,
    /// Failed-authentication throttle, per source address.
    pub throttle: throttle::AuthThrottle,
    /// The audit log.
    pub audit: Arc<crate::audit::AuditHub>,
    store: ControlStore,
    limiter: Limiter<Arc<str>>,
    meta: DashMap<String, WorkspaceRecord>,
    config_keys: DashMap<String, ()>,
    jobs: jobs::Jobs,
    webhook_rt: std::sync::OnceLock<Arc<dyn webhooks::WebhookRuntime>>,
    /// Automation rules of every workspace, compiled, and their loop guard.
    pub automations: Arc<crate::automations::engine::Engine>,
}

impl Control {
    /// Opens `state_dir/control.redb`, registers the configuration's workspaces and keys,
    /// then every workspace, key and device created through the API, and resumes unfinished
    /// deletion jobs.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        cfg: Arc<Config>,
        state_dir: &std::path::Path,
        registry: Arc<Registry>,
        limiter: Limiter<Arc<str>>,
        sessions: Arc<SessionManager>,
        durable: Arc<Durable>,
        vault: Arc<waping_vault::Vault>,
        device_store: Arc<waping_store::Store>,
        admin: Option<AdminToken>,
        audit: Arc<crate::audit::AuditHub>,
    ) -> anyhow::Result<Arc<Control>> {
        let store = ControlStore::open(&state_dir.join("control.redb"))?;
        let now = crate::unix_ms();
        let keys = Arc::new(ApiKeys::default());
        let meta = DashMap::new();
        let config_keys = DashMap::new();
        // Workspaces of the configuration (already in the registry).
        for w in &cfg.workspaces {
            let ws = registry
                .by_id(&w.id)
                .ok_or_else(|| anyhow::anyhow!("workspace {} missing from the registry", w.id))?;
            let (rate, burst, _) = cfg.workspace_limits(w);
            let prev: Option<WorkspaceRecord> = store.get(Kind::Workspace, &[&w.id])?;
            let rec = WorkspaceRecord {
                id: w.id.clone(),
                source: Source::Config,
                created_at_ms: prev.as_ref().map_or(now, |p| p.created_at_ms),
                rate_per_second: rate,
                burst,
                quotas: prev.as_ref().map_or(cfg.quotas, |p| p.quotas),
                retention: prev.as_ref().map_or(cfg.retention, |p| p.retention),
                audit_full_numbers: w.audit_full_numbers,
            };
            audit.set_full_numbers(&w.id, w.audit_full_numbers);
            store.put(Kind::Workspace, &[&w.id], &rec)?;
            vault.ensure_workspace(&w.id)?;
            ws.max_queued.store(
                u64::from(rec.quotas.max_queued_messages),
                std::sync::atomic::Ordering::Relaxed,
            );
            meta.insert(w.id.clone(), rec);
            for k in &w.keys {
                keys.insert(
                    LiveKey::new(&k.id, &k.hash, ws.clone(), k.role, None)
                        .map_err(|e| anyhow::anyhow!("workspace {}: key {}: {e}", w.id, k.id))?,
                );
                config_keys.insert(k.id.clone(), ());
            }
        }
        let control = Arc::new(Control {
            registry,
            keys,
            sessions,
            durable,
            vault,
            device_store,
            throttle: throttle::AuthThrottle::new(cfg.api.auth_failures_per_minute),
            audit,
            cfg: arc_swap::ArcSwap::new(cfg),
            admin,
            store,
            limiter,
            meta,
            config_keys,
            jobs: jobs::Jobs::default(),
            webhook_rt: std::sync::OnceLock::new(),
            automations: Default::default(),
        });
        // Workspaces created through the API (and configuration workspaces since removed
        // from the file: their data stays, now managed through the API).
        let stored: Vec<WorkspaceRecord> = control.store.list(Kind::Workspace, None)?;
        for mut rec in stored {
            if control.meta.contains_key(&rec.id) {
                continue;
            }
            if rec.source == Source::Config {
                rec.source = Source::Api;
                control.store.put(Kind::Workspace, &[&rec.id], &rec)?;
            }
            control.register_workspace(&rec)?;
        }
        for ws in control.registry.iter() {
            for k in control.store.list::<KeyRecord>(Kind::Key, Some(&ws.id))? {
                control.keys.insert(
                    LiveKey::new(&k.id, &k.hash, ws.clone(), k.role, k.expires_at_ms)
                        .map_err(|e| anyhow::anyhow!("stored key {}: {e}", k.id))?,
                );
            }
            for d in control.store.list::<DeviceRecord>(Kind::Device, Some(&ws.id))? {
                if control.sessions.get(ws.idx, &Text::from(d.id.as_str())).is_none() {
                    control.sessions.start_device(&ws, &d.id);
                }
            }
        }
        control.load_automations();
        control.jobs.resume(&control)?;
        tokio::spawn(retention::run(
            Arc::downgrade(&control),
            std::time::Duration::from_secs(60),
        ));
        tokio::spawn(refresh_queued(Arc::downgrade(&control)));
        Ok(control)
    }

    /// The configuration in force: the file as last loaded (at start or by a SIGHUP reload).
    pub fn config(&self) -> Arc<Config> {
        self.cfg.load_full()
    }

    fn register_workspace(&self, rec: &WorkspaceRecord) -> Result<Arc<Workspace>, Error> {
        self.register_workspace_as(rec, None)
    }

    /// Registers a workspace; a configuration entry, when given, supplies its device pacing
    /// overrides (an API workspace uses the node's).
    fn register_workspace_as(
        &self,
        rec: &WorkspaceRecord,
        from_file: Option<&crate::config::WorkspaceConfig>,
    ) -> Result<Arc<Workspace>, Error> {
        self.audit.set_full_numbers(&rec.id, rec.audit_full_numbers);
        let quota = Quota::per_second(rec.rate_per_second, rec.burst)
            .map_err(|e| Error::Invalid(format!("rate_per_second/burst: {e}")))?;
        let cell = self
            .limiter
            .upsert_many(vec![(Arc::<str>::from(rec.id.as_str()), quota)], Nanos::ZERO)
            .pop()
            .ok_or_else(|| Error::Internal("limiter returned no cell".into()))?;
        let wcfg = crate::config::WorkspaceConfig {
            id: rec.id.clone(),
            rate_per_second: Some(rec.rate_per_second),
            burst: Some(rec.burst),
            device_rate_per_second: None,
            pacing: None,
            devices: Vec::new(),
            keys: Vec::new(),
            audit_full_numbers: rec.audit_full_numbers,
        };
        let wcfg = from_file.cloned().unwrap_or(wcfg);
        let (_, _, device_rate) = self.config().workspace_limits(&wcfg);
        let pacing = self
            .config()
            .workspace_pacing(&wcfg)
            .map_err(|e| Error::Internal(format!("pacing: {e}")))?;
        self.vault
            .ensure_workspace(&rec.id)
            .map_err(|e| Error::Internal(format!("data key: {e}")))?;
        let ws = self.registry.add(&rec.id, cell, device_rate, Arc::new(pacing));
        ws.max_queued.store(
            u64::from(rec.quotas.max_queued_messages),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.meta.insert(rec.id.clone(), rec.clone());
        Ok(ws)
    }

    // ----- authentication -------------------------------------------------------------

    /// Authenticates a bearer credential from `source`: an API key (`wpk_…`) or the node-admin
    /// token. Failures are counted per source and throttled; each is logged for audit.
    pub fn authenticate(
        &self,
        presented: &str,
        source: std::net::IpAddr,
        now_ms: u64,
    ) -> Result<Principal, Error> {
        if let Err(after) = self.throttle.check(source, now_ms) {
            metrics::counter!("waping_auth_failures_total", "reason" => "throttled").increment(1);
            // A flood: one aggregate record per source and interval, not one per attempt.
            self.audit.note(
                waping_audit::Action::AuthFailure,
                None,
                waping_audit::Actor::Anonymous,
                "throttled",
                Some(source),
            );
            return Err(Error::Code {
                code: ErrorCode::AUTH_THROTTLED,
                message: "too many failed authentications from this address".into(),
                retry_after_ms: after,
            });
        }
        let result = if presented.starts_with(auth::KEY_PREFIX) {
            self.keys
                .verify(presented, now_ms)
                .map(Principal::Key)
                .map_err(|e| e.as_str())
        } else {
            match &self.admin {
                Some(t) if t.matches(presented) => Ok(Principal::Admin),
                Some(_) => Err("wrong_admin_token"),
                None => Err("admin_token_not_configured"),
            }
        };
        match result {
            Ok(p) => Ok(p),
            Err(reason) => {
                self.throttle.failed(source, now_ms);
                metrics::counter!("waping_auth_failures_total", "reason" => reason).increment(1);
                self.audit.emit(
                    waping_audit::Event::new(
                        now_ms,
                        waping_audit::Actor::Anonymous,
                        waping_audit::Action::AuthFailure,
                    )
                    .outcome(waping_audit::Outcome::Denied, reason)
                    .source(source),
                );
                Err(Error::Unauthenticated)
            }
        }
    }

    // ----- workspaces (node admin) ---------------------------------------------------

    fn require_admin(p: &Principal) -> Result<(), Error> {
        match p {
            Principal::Admin => Ok(()),
            // A workspace key asking for node-admin routes: the same as a wrong token would
            // get, so workspace keys learn nothing about admin routes.
            Principal::Key(_) => Err(Error::Forbidden(Permission::WorkspaceDelete)),
        }
    }

    /// Creates a workspace (node admin).
    pub fn create_workspace(&self, p: &Principal, req: NewWorkspace) -> Result<WorkspaceRecord, Error> {
        Self::require_admin(p)?;
        valid_workspace_id(&req.id)?;
        if self.meta.contains_key(&req.id) || self.jobs.deleting(&req.id) {
            return Err(Error::Conflict(format!("workspace {:?} already exists", req.id)));
        }
        let rate = req
            .rate_per_second
            .unwrap_or(self.config().limits.rate_per_second);
        let burst = req.burst.unwrap_or(self.config().limits.burst);
        for (name, v) in [("rate_per_second", rate), ("burst", burst)] {
            if !(1..=10_000_000).contains(&v) {
                return Err(Error::Invalid(format!(
                    "{name}: {v} is out of range 1..=10000000"
                )));
            }
        }
        let quotas = req.quotas.unwrap_or(self.config().quotas);
        let retention = req.retention.unwrap_or(self.config().retention);
        let mut problems = quotas.problems("quotas");
        problems.extend(retention.problems("retention"));
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        self.audit.gate()?;
        let rec = WorkspaceRecord {
            id: req.id.clone(),
            source: Source::Api,
            created_at_ms: crate::unix_ms(),
            rate_per_second: rate,
            burst,
            quotas,
            retention,
            audit_full_numbers: req.audit_full_numbers.unwrap_or(false),
        };
        self.store.put(Kind::Workspace, &[&rec.id], &rec)?;
        self.register_workspace(&rec)?;
        self.audit.emit(
            waping_audit::Event::new(
                rec.created_at_ms,
                crate::audit::actor(p),
                waping_audit::Action::WorkspaceCreate,
            )
            .workspace(&rec.id)
            .target("workspace", &rec.id)
            .detail(waping_audit::Detail::Changed {
                fields: [
                    "rate_per_second",
                    "burst",
                    "quotas",
                    "retention",
                    "audit_full_numbers",
                ]
                .map(String::from)
                .to_vec(),
            }),
        );
        Ok(rec)
    }

    /// Every workspace (node admin).
    pub fn list_workspaces(&self, p: &Principal) -> Result<Vec<WorkspaceRecord>, Error> {
        Self::require_admin(p)?;
        let mut v: Vec<WorkspaceRecord> = self.meta.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// Changes a workspace's limits or quotas (node admin). Live traffic sees the new rate at
    /// once: the workspace's token bucket is updated in place.
    pub fn update_workspace(
        &self,
        p: &Principal,
        id: &str,
        req: WorkspaceUpdate,
    ) -> Result<WorkspaceRecord, Error> {
        Self::require_admin(p)?;
        let ws = self.registry.by_id(id).ok_or(Error::NotFound)?;
        let mut rec = self
            .meta
            .get(id)
            .map(|e| e.value().clone())
            .ok_or(Error::NotFound)?;
        if rec.source == Source::Config {
            return Err(Error::Conflict(
                "this workspace is defined in the configuration file; change its limits there".into(),
            ));
        }
        let rate = req.rate_per_second.unwrap_or(rec.rate_per_second);
        let burst = req.burst.unwrap_or(rec.burst);
        for (name, v) in [("rate_per_second", rate), ("burst", burst)] {
            if !(1..=10_000_000).contains(&v) {
                return Err(Error::Invalid(format!(
                    "{name}: {v} is out of range 1..=10000000"
                )));
            }
        }
        let quotas = req.quotas.unwrap_or(rec.quotas);
        let problems = quotas.problems("quotas");
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        let quota = Quota::per_second(rate, burst)
            .map_err(|e| Error::Invalid(format!("rate_per_second/burst: {e}")))?;
        let mut fields = Vec::new();
        if rate != rec.rate_per_second {
            fields.push("rate_per_second".to_owned());
        }
        if burst != rec.burst {
            fields.push("burst".to_owned());
        }
        if quotas != rec.quotas {
            fields.push("quotas".to_owned());
        }
        if fields.is_empty() {
            return Ok(rec);
        }
        self.audit.gate()?;
        rec.rate_per_second = rate;
        rec.burst = burst;
        rec.quotas = quotas;
        self.store.put(Kind::Workspace, &[id], &rec)?;
        self.limiter
            .upsert_many(vec![(Arc::<str>::from(id), quota)], self.durable.clock.now());
        ws.max_queued.store(
            u64::from(quotas.max_queued_messages),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.meta.insert(id.to_owned(), rec.clone());
        self.audit.emit(
            waping_audit::Event::new(
                crate::unix_ms(),
                crate::audit::actor(p),
                waping_audit::Action::LimitsChange,
            )
            .workspace(id)
            .target("workspace", id)
            .detail(waping_audit::Detail::Changed { fields }),
        );
        Ok(rec)
    }

    /// One workspace: the admin may name any; a key sees only its own (`id` = `None`).
    pub fn workspace(&self, p: &Principal, id: Option<&str>) -> Result<WorkspaceRecord, Error> {
        let id = match (p, id) {
            (Principal::Admin, Some(id)) => id.to_string(),
            (Principal::Key(_), None) => p.require(Permission::WorkspaceRead)?.workspace.id.to_string(),
            _ => return Err(Error::NotFound),
        };
        self.meta
            .get(&id)
            .map(|e| e.value().clone())
            .ok_or(Error::NotFound)
    }

    /// Changes the caller's workspace retention windows.
    pub fn set_retention(&self, p: &Principal, r: Retention) -> Result<WorkspaceRecord, Error> {
        let k = p.require(Permission::SettingsWrite)?;
        let problems = r.problems("retention");
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("; ")));
        }
        let mut rec = self
            .meta
            .get(&*k.workspace.id)
            .map(|e| e.value().clone())
            .ok_or(Error::NotFound)?;
        self.audit.gate()?;
        let fields = rec.retention.changed_fields(&r);
        rec.retention = r;
        self.store.put(Kind::Workspace, &[&rec.id], &rec)?;
        self.meta.insert(rec.id.clone(), rec.clone());
        self.audit.emit(
            waping_audit::Event::new(
                crate::unix_ms(),
                crate::audit::actor(p),
                waping_audit::Action::RetentionChange,
            )
            .workspace(&rec.id)
            .target("workspace", &rec.id)
            .detail(waping_audit::Detail::Changed { fields }),
        );
        Ok(rec)
    }

    /// A workspace's retention windows (the node's defaults if it has no record).
    pub fn retention_of(&self, ws: &str) -> Retention {
        self.meta.get(ws).map_or(self.config().retention, |m| m.retention)
    }

    /// Retention of every live workspace (for the sweeper).
    pub fn retention_all(&self) -> Vec<(String, Retention)> {
        self.meta
            .iter()
            .map(|e| (e.key().clone(), e.value().retention))
            .collect()
    }

    // ----- keys ------------------------------------------------------------------------

    fn key_info(&self, k: &LiveKey, rec: Option<&KeyRecord>) -> KeyInfo {
        KeyInfo {
            id: k.id.clone(),
            name: rec.map_or_else(|| "from configuration".into(), |r| r.name.clone()),
            role: k.role,
            source: if rec.is_some() {
                Source::Api
            } else {
                Source::Config
            },
            created_at_ms: rec.map_or(0, |r| r.created_at_ms),
            created_by: rec.map_or_else(|| "config".into(), |r| r.created_by.clone()),
            expires_at_ms: k.expires_at_ms,
            last_used_at_ms: Some(k.last_used_ms()).filter(|t| *t > 0),
        }
    }

    /// Keys of the caller's workspace.
    pub fn list_keys(&self, p: &Principal) -> Result<Vec<KeyInfo>, Error> {
        let me = p.require(Permission::KeysRead)?;
        let ws = &me.workspace;
        let stored: Vec<KeyRecord> = self.store.list(Kind::Key, Some(&ws.id))?;
        let mut out: Vec<KeyInfo> = Vec::new();
        for k in self.live_keys_of(&ws.id) {
            let rec = stored.iter().find(|r| r.id == k.id);
            out.push(self.key_info(&k, rec));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn live_keys_of(&self, ws: &str) -> Vec<Arc<LiveKey>> {
        self.key_ids_of(ws)
            .into_iter()
            .filter_map(|id| self.keys.get(&id))
            .collect()
    }

    fn key_ids_of(&self, ws: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store
            .list::<KeyRecord>(Kind::Key, Some(ws))
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.extend(
            self.config_keys
                .iter()
                .filter(|e| self.keys.get(e.key()).is_some_and(|k| &*k.workspace.id == ws))
                .map(|e| e.key().clone()),
        );
        ids
    }

    /// One key of the caller's workspace.
    pub fn get_key(&self, p: &Principal, id: &str) -> Result<KeyInfo, Error> {
        let me = p.require(Permission::KeysRead)?;
        let k = self.key_in(&me.workspace, id)?;
        let rec: Option<KeyRecord> = self.store.get(Kind::Key, &[&me.workspace.id, id])?;
        Ok(self.key_info(&k, rec.as_ref()))
    }

    fn key_in(&self, ws: &Workspace, id: &str) -> Result<Arc<LiveKey>, Error> {
        match self.keys.get(id) {
            Some(k) if Arc::ptr_eq(&k.workspace, &self.registry.by_id(&ws.id).ok_or(Error::NotFound)?) => {
                Ok(k)
            }
            _ => Err(Error::NotFound),
        }
    }

    /// Creates a key in the caller's workspace, or (node admin) in workspace `ws`.
    pub fn create_key(&self, p: &Principal, ws: Option<&str>, req: NewKey) -> Result<IssuedKey, Error> {
        let workspace = match (p, ws) {
            (Principal::Admin, Some(id)) => self.registry.by_id(id).ok_or(Error::NotFound)?,
            (Principal::Key(_), None) => {
                let me = p.require(Permission::KeysWrite)?;
                if !me.role.may_manage(req.role) {
                    return Err(Error::Forbidden(Permission::KeysWrite));
                }
                me.workspace.clone()
            }
            _ => return Err(Error::NotFound),
        };
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::Invalid("name: must be 1-100 characters".into()));
        }
        let now = crate::unix_ms();
        let expires_at_ms = match req.expires_in_s {
            None => None,
            Some(s) if (60..=315_360_000).contains(&s) => Some(now + s * 1000),
            Some(s) => {
                return Err(Error::Invalid(format!(
                    "expires_in_s: {s} is out of range 60..=315360000"
                )));
            }
        };
        let quota = self
            .meta
            .get(&*workspace.id)
            .map_or(self.config().quotas, |m| m.quotas);
        if self.key_ids_of(&workspace.id).len() as u32 >= quota.max_keys {
            return Err(Error::Quota(format!(
                "the workspace has its maximum of {} keys",
                quota.max_keys
            )));
        }
        self.audit.gate()?;
        let g = auth::generate_key();
        let rec = KeyRecord {
            id: g.id.clone(),
            workspace: workspace.id.to_string(),
            name: name.to_string(),
            role: req.role,
            hash: g.hash.clone(),
            created_at_ms: now,
            created_by: p.actor(),
            expires_at_ms,
        };
        self.store.put(Kind::Key, &[&rec.workspace, &rec.id], &rec)?;
        let live = self.keys.insert(
            LiveKey::new(&g.id, &g.hash, workspace.clone(), req.role, expires_at_ms)
                .map_err(Error::Internal)?,
        );
        self.audit.emit(
            waping_audit::Event::new(now, crate::audit::actor(p), waping_audit::Action::KeyCreate)
                .workspace(&*workspace.id)
                .target("key", &g.id)
                .detail(waping_audit::Detail::Key {
                    role: req.role.to_string(),
                    previous_role: None,
                    new_key: None,
                    expires_at_ms,
                }),
        );
        Ok(IssuedKey {
            key: g.key,
            info: self.key_info(&live, Some(&rec)),
        })
    }

    fn managed_key(&self, p: &Principal, id: &str) -> Result<(Arc<LiveKey>, KeyRecord), Error> {
        let me = p.require(Permission::KeysWrite)?;
        let k = self.key_in(&me.workspace, id)?;
        let rec: KeyRecord = match self.store.get(Kind::Key, &[&me.workspace.id, id])? {
            Some(r) => r,
            None => {
                return Err(Error::Conflict(
                    "this key is defined in the configuration file; change it there".into(),
                ));
            }
        };
        if !me.role.may_manage(k.role) {
            return Err(Error::Forbidden(Permission::KeysWrite));
        }
        Ok((k, rec))
    }

    /// Changes the role of a key of the caller's workspace. The key keeps its id and secret;
    /// what was authenticated under the old role (open QUIC connections) ends at once.
    pub fn set_key_role(&self, p: &Principal, id: &str, role: Role) -> Result<KeyInfo, Error> {
        let (k, mut rec) = self.managed_key(p, id)?;
        let me = p.require(Permission::KeysWrite)?;
        if !me.role.may_manage(role) {
            return Err(Error::Forbidden(Permission::KeysWrite));
        }
        if rec.role == role {
            return Ok(self.key_info(&k, Some(&rec)));
        }
        self.audit.gate()?;
        let previous = rec.role;
        rec.role = role;
        self.store.put(Kind::Key, &[&rec.workspace, &rec.id], &rec)?;
        let live = self.keys.insert(
            LiveKey::new(&rec.id, &rec.hash, k.workspace.clone(), role, rec.expires_at_ms)
                .map_err(Error::Internal)?,
        );
        // The old object is what open connections hold: revoking it closes them, and they
        // authenticate again under the new role.
        k.revoke();
        self.audit.emit(
            waping_audit::Event::new(
                crate::unix_ms(),
                crate::audit::actor(p),
                waping_audit::Action::KeyRoleChange,
            )
            .workspace(&rec.workspace)
            .target("key", &rec.id)
            .detail(waping_audit::Detail::Key {
                role: role.to_string(),
                previous_role: Some(previous.to_string()),
                new_key: None,
                expires_at_ms: rec.expires_at_ms,
            }),
        );
        Ok(self.key_info(&live, Some(&rec)))
    }

    /// Revokes a key of the caller's workspace: it stops working at once on HTTP and QUIC
    /// (open connections that authenticated with it are closed).
    pub fn revoke_key(&self, p: &Principal, id: &str) -> Result<(), Error> {
        let (k, rec) = self.managed_key(p, id)?;
        self.audit.gate()?;
        self.store.delete(Kind::Key, &[&rec.workspace, &rec.id])?;
        self.keys.revoke(&k.id);
        self.audit.emit(
            waping_audit::Event::new(
                crate::unix_ms(),
                crate::audit::actor(p),
                waping_audit::Action::KeyRevoke,
            )
            .workspace(&rec.workspace)
            .target("key", &rec.id),
        );
        Ok(())
    }

    /// Rotates a key: a new secret under a new id with the same name, role and expiry; the
    /// old one is revoked at once.
    pub fn rotate_key(&self, p: &Principal, id: &str) -> Result<IssuedKey, Error> {
        let (k, rec) = self.managed_key(p, id)?;
        let remaining = rec
            .expires_at_ms
            .map(|e| e.saturating_sub(crate::unix_ms()).div_ceil(1000).max(60));
        let issued = self.create_key(
            p,
            None,
            NewKey {
                name: rec.name.clone(),
                role: rec.role,
                expires_in_s: remaining,
            },
        )?;
        self.store.delete(Kind::Key, &[&rec.workspace, &rec.id])?;
        self.keys.revoke(&k.id);
        self.audit.emit(
            waping_audit::Event::new(
                crate::unix_ms(),
                crate::audit::actor(p),
                waping_audit::Action::KeyRotate,
            )
            .workspace(&rec.workspace)
            .target("key", &rec.id)
            .detail(waping_audit::Detail::Key {
                role: rec.role.to_string(),
                previous_role: None,
                new_key: Some(issued.info.id.clone()),
                expires_at_ms: issued.info.expires_at_ms,
            }),
        );
        Ok(issued)
    }

    // ----- devices ---------------------------------------------------------------------

    /// Device ids of the caller's workspace.
    pub fn device_ids(&self, ws: &Workspace) -> Vec<String> {
        let mut v: Vec<String> = self
            .sessions
            .devices_of(ws.idx)
            .into_iter()
            .map(|t| t.as_str().to_string())
            .collect();
        v.sort();
        v
    }

    /// Adds a device to the caller's workspace and starts its session (unlinked until linked).
    pub fn create_device(&self, p: &Principal, id: &str) -> Result<DeviceRecord, Error> {
        let me = p.require(Permission::DevicesWrite)?;
        let ws = &me.workspace;
        waping_protocol::validate::device_id(&Text::from(id))
            .map_err(|e| Error::Invalid(format!("id: {}", e.message)))?;
        if self.sessions.get(ws.idx, &Text::from(id)).is_some() || self.jobs.deleting_device(&ws.id, id) {
            return Err(Error::Conflict(format!("device {id:?} already exists")));
        }
        let quota = self.meta.get(&*ws.id).map_or(self.config().quotas, |m| m.quotas);
        if self.sessions.devices_of(ws.idx).len() as u32 >= quota.max_devices {
            return Err(Error::Quota(format!(
                "the workspace has its maximum of {} devices",
                quota.max_devices
            )));
        }
        self.audit.gate()?;
        let rec = DeviceRecord {
            workspace: ws.id.to_string(),
            id: id.to_string(),
            created_at_ms: crate::unix_ms(),
            created_by: p.actor(),
        };
        self.store.put(Kind::Device, &[&rec.workspace, &rec.id], &rec)?;
        self.sessions.start_device(ws, id);
        self.audit.emit(
            waping_audit::Event::new(
                rec.created_at_ms,
                crate::audit::actor(p),
                waping_audit::Action::DeviceCreate,
            )
            .workspace(&*ws.id)
            .target("device", id),
        );
        Ok(rec)
    }

    /// Runs a device command in the caller's workspace.
    pub async fn device_command(
        &self,
        p: &Principal,
        id: &str,
        cmd: DeviceCommand,
    ) -> Result<waping_protocol::DeviceState, Error> {
        let need = if matches!(cmd, DeviceCommand::Status) {
            Permission::DevicesRead
        } else {
            Permission::DevicesWrite
        };
        let me = p.require(need)?;
        if need == Permission::DevicesWrite {
            self.audit.gate()?;
        }
        let action = crate::audit::device_action(&cmd);
        let result = self
            .sessions
            .control(me.workspace.idx, &Text::from(id), cmd)
            .await;
        // An unknown device is answered as NOT_FOUND and not recorded: it names nothing.
        if let Some(action) = action
            && !matches!(result, Err(crate::session::ControlError::UnknownDevice))
        {
            self.audit
                .emit_durable(crate::audit::device_event(
                    action,
                    crate::audit::actor(p),
                    &me.workspace.id,
                    id,
                    &result,
                ))
                .await;
        }
        result.map_err(|e| match e {
            crate::session::ControlError::UnknownDevice => Error::NotFound,
            other => Error::Code {
                code: other.code(),
                message: other.to_string(),
                retry_after_ms: 0,
            },
        })
    }

    /// Whether a device was defined in the configuration file.
    pub fn device_from_config(&self, ws: &str, device: &str) -> bool {
        self.config()
            .workspaces
            .iter()
            .any(|w| w.id == ws && w.devices.iter().any(|d| d == device))
    }

    // ----- deletions -------------------------------------------------------------------

    /// Requests a deletion; see [`jobs`].
    pub fn request_deletion(
        self: &Arc<Self>,
        p: &Principal,
        req: jobs::NewDeletion,
    ) -> Result<(jobs::DeletionJob, bool), Error> {
        jobs::request(self, p, req)
    }

    /// Deletion jobs of the caller's workspace.
    pub fn list_deletions(&self, p: &Principal) -> Result<Vec<jobs::DeletionJob>, Error> {
        let me = p.require(Permission::DeletionsWrite)?;
        Ok(self.store.list(Kind::Job, Some(&me.workspace.id))?)
    }

    /// One deletion job of the caller's workspace.
    pub fn deletion(&self, p: &Principal, id: &str) -> Result<jobs::DeletionJob, Error> {
        let me = p.require(Permission::DeletionsWrite)?;
        self.store
            .get(Kind::Job, &[&me.workspace.id, id])?
            .ok_or(Error::NotFound)
    }

    /// Workspace deletion jobs, for the node admin.
    pub fn admin_deletion(&self, p: &Principal, ws: &str, id: &str) -> Result<jobs::DeletionJob, Error> {
        Self::require_admin(p)?;
        self.store.get(Kind::Job, &[ws, id])?.ok_or(Error::NotFound)
    }

    /// Whether a workspace has a record (live, or half-deleted by a failed job).
    pub(crate) fn workspace_known(&self, id: &str) -> bool {
        self.meta.contains_key(id)
    }

    pub(crate) fn store(&self) -> &ControlStore {
        &self.store
    }

    pub(crate) fn forget_workspace(&self, id: &str) {
        self.meta.remove(id);
        self.config_keys.retain(|k, _| self.keys.get(k).is_some());
    }

    pub(crate) fn jobs(&self) -> &jobs::Jobs {
        &self.jobs
    }
}

/// Once a second: each workspace's queued messages, for the quota check in admission.
async fn refresh_queued(control: std::sync::Weak<Control>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = control.upgrade() else { return };
        let depths = c.sessions.queue_depths();
        for ws in c.registry.iter() {
            let d = depths.get(&ws.idx).copied().unwrap_or(0);
            ws.queued.store(d, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
