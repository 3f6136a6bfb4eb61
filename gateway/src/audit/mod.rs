//! The gateway's side of the audit log: who emits what, with which context, and how
//! high-rate events are aggregated. The log itself (spool, chain, digests, sinks) is
//! the `waping-audit` crate; the record schema is `docs/audit.md`.
//!
//! - Control-plane changes call [`AuditHub::gate`] before they change anything, so under
//!   the `refuse` policy an operation whose record could not be kept is not done at all.
//! - Every single record is durable (fsync'd in the spool) before what it describes is
//!   answered or continued: blocking control-plane closures and authentication collect
//!   their receipts ([`collect`]) and the caller waits ([`settle`]); async paths use
//!   [`AuditHub::emit_durable`]. So `kill -9` cannot lose a record of anything a client
//!   or operator was told happened.
//! - Events that arrive faster than anyone could read them one by one (HTTP
//!   authentications, rate-limit rejections, throttled authentication attempts) are
//!   counted in memory and written once per `aggregate_interval_s` per key of
//!   (action, workspace, actor, scope, source). The count is kept until a record takes it.
//! - Context (request id, client address) comes from the HTTP layer through a task-local,
//!   and into blocking control-plane closures through a thread-local.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use waping_audit::{Action, Actor, AuditError, Auditor, Detail, Event, Outcome, Receipt};
use waping_protocol::ErrorCode;

use crate::control::{Error, Principal};

pub mod cli;
#[cfg(test)]
mod tests;

/// Request context attached to records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ctx {
    /// HTTP request id.
    pub request_id: Option<String>,
    /// Client address.
    pub source: Option<IpAddr>,
}

tokio::task_local! {
    static TASK_CTX: Ctx;
}

thread_local! {
    static BLOCKING: RefCell<Option<(Ctx, Vec<Receipt>)>> = const { RefCell::new(None) };
}

/// Runs `fut` with `ctx` as the audit context of the records it emits.
pub async fn scope<F: std::future::Future>(ctx: Ctx, fut: F) -> F::Output {
    TASK_CTX.scope(ctx, fut).await
}

/// The current context: the task's, else the blocking closure's, else empty.
pub fn current() -> Ctx {
    TASK_CTX
        .try_with(Ctx::clone)
        .ok()
        .or_else(|| BLOCKING.with(|b| b.borrow().as_ref().map(|(c, _)| c.clone())))
        .unwrap_or_default()
}

/// Runs blocking `f` with `ctx`, collecting the receipts of the records it submits so the
/// caller can wait for them to be durable before answering.
pub fn collect<T>(ctx: Ctx, f: impl FnOnce() -> T) -> (T, Vec<Receipt>) {
    // Nesting-safe: an inner collection hands its receipts back and restores the outer one.
    let outer = BLOCKING.with(|b| b.borrow_mut().replace((ctx, Vec::new())));
    let out = f();
    let receipts = BLOCKING
        .with(|b| std::mem::replace(&mut *b.borrow_mut(), outer))
        .map(|(_, r)| r)
        .unwrap_or_default();
    (out, receipts)
}

/// Waits for receipts; a failure is logged (the change is made; its record is what failed).
pub async fn settle(receipts: Vec<Receipt>) {
    for r in receipts {
        if let Err(e) = r.wait().await {
            tracing::error!(error = %e, "an audit record of a completed operation was not made durable");
        }
    }
}

/// The actor of a principal.
pub fn actor(p: &Principal) -> Actor {
    match p {
        Principal::Admin => Actor::Admin,
        Principal::Key(k) => Actor::Key { id: k.id.clone() },
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AggKey {
    action: Action,
    workspace: Option<Arc<str>>,
    actor: Actor,
    scope: &'static str,
    source: Option<IpAddr>,
}

/// Distinct aggregation keys held at most; beyond it new keys fold their source away,
/// so an attacker spraying addresses cannot grow memory.
const MAX_AGG_KEYS: usize = 10_000;

/// The emitters' handle to the audit log.
#[derive(Debug)]
pub struct AuditHub {
    auditor: Auditor,
    interval_s: u64,
    agg: DashMap<AggKey, AtomicU64>,
    /// Workspaces whose records may carry full phone numbers.
    full_numbers: DashMap<String, ()>,
}

impl AuditHub {
    /// A hub over `auditor`, aggregating over `interval_s`.
    pub fn new(auditor: Auditor, interval_s: u64) -> Arc<AuditHub> {
        Arc::new(AuditHub {
            auditor,
            interval_s: interval_s.max(1),
            agg: DashMap::new(),
            full_numbers: DashMap::new(),
        })
    }

    /// The underlying auditor.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// Refuses (AUDIT_UNAVAILABLE) when a new record would not be taken: call before a
    /// security-relevant change.
    pub fn gate(&self) -> Result<(), Error> {
        self.auditor.check().map_err(unavailable)
    }

    /// Emits `ev` with the current context. Inside [`collect`] the receipt is kept for the
    /// caller to wait on. A refused record is counted into the aggregates (action, actor,
    /// workspace and source survive; target and detail do not) and logged.
    pub fn emit(&self, mut ev: Event) {
        let ctx = current();
        if ev.request_id.is_none() {
            ev.request_id = ctx.request_id;
        }
        if ev.source.is_none() {
            ev.source = ctx.source;
        }
        let fallback = (ev.action, ev.workspace.clone(), ev.actor.clone(), ev.source);
        match self.auditor.submit(ev) {
            Ok(r) => BLOCKING.with(|b| {
                if let Some((_, rs)) = b.borrow_mut().as_mut() {
                    rs.push(r);
                }
            }),
            Err(e) => {
                let (action, ws, actor, source) = fallback;
                self.note(action, ws.as_deref(), actor, "unrecorded", source);
                tracing::warn!(action = action.as_str(), error = %e, "audit record refused; counted into the next aggregate record");
            }
        }
    }

    /// Emits `ev` and waits until it is durable, for async callers that go on only once
    /// their record is safe (session events, jobs, sweeps, device commands). A refused record
    /// is counted into the aggregates as [`AuditHub::emit`] does.
    pub async fn emit_durable(&self, ev: Event) {
        let ((), receipts) = collect(current(), || self.emit(ev));
        settle(receipts).await;
    }

    /// Counts one occurrence of an aggregated event.
    pub fn note(
        &self,
        action: Action,
        workspace: Option<&str>,
        actor: Actor,
        scope: &'static str,
        source: Option<IpAddr>,
    ) {
        let mut key = AggKey {
            action,
            workspace: workspace.map(Arc::from),
            actor,
            scope,
            source,
        };
        if let Some(c) = self.agg.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.agg.len() >= MAX_AGG_KEYS {
            key.source = None;
        }
        self.agg
            .entry(key)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A send refused by a limit: counted per workspace and limit, written per interval.
    pub fn note_rejection(&self, workspace: &str, code: ErrorCode) {
        let scope = match code {
            ErrorCode::RATE_LIMITED => "workspace_rate",
            ErrorCode::DEVICE_BUSY => "device_queue",
            ErrorCode::WORKSPACE_QUEUE_FULL => "workspace_queue",
            ErrorCode::API_RATE_LIMITED => "api_rate",
            ErrorCode::OVERLOADED => "node_overloaded",
            ErrorCode::TOO_MANY_IN_FLIGHT => "connection_in_flight",
            _ => return,
        };
        self.note(
            Action::RateLimitReject,
            Some(workspace),
            Actor::System,
            scope,
            None,
        );
    }

    /// Writes one record per aggregation key with a non-zero count; a count whose record is
    /// refused stays for the next round. Returns the records written.
    pub fn flush(&self, now_ms: u64) -> usize {
        let mut written = 0;
        let mut empty = Vec::new();
        for e in self.agg.iter() {
            let n = e.value().swap(0, Ordering::AcqRel);
            if n == 0 {
                empty.push(e.key().clone());
                continue;
            }
            let k = e.key();
            let outcome = match k.action {
                Action::AuthSuccess => Outcome::Success,
                _ => Outcome::Denied,
            };
            let mut ev = Event::new(now_ms, k.actor.clone(), k.action).detail(Detail::Count {
                count: n,
                interval_s: self.interval_s,
                scope: k.scope.to_owned(),
            });
            ev.outcome = outcome;
            ev.workspace = k.workspace.as_deref().map(str::to_owned);
            ev.source = k.source;
            match self.auditor.submit(ev) {
                Ok(_) => written += 1,
                Err(_) => {
                    e.value().fetch_add(n, Ordering::AcqRel);
                }
            }
        }
        for k in empty {
            self.agg.remove_if(&k, |_, v| v.load(Ordering::Acquire) == 0);
        }
        written
    }

    /// Flushes the aggregates every interval until `stop`, then once more.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.flush(crate::unix_ms());
                }
                _ = stop.cancelled() => {
                    self.flush(crate::unix_ms());
                    return;
                }
            }
        }
    }

    /// Marks workspace `ws` as logging full phone numbers (or not).
    pub fn set_full_numbers(&self, ws: &str, on: bool) {
        if on {
            self.full_numbers.insert(ws.to_owned(), ());
        } else {
            self.full_numbers.remove(ws);
        }
    }

    /// A phone number or address as workspace `ws` wants it in its records.
    pub fn number(&self, ws: &str, raw: &str) -> String {
        if self.full_numbers.contains_key(ws) {
            raw.to_owned()
        } else {
            waping_audit::record::mask_phone(raw)
        }
    }
}

/// AUDIT_UNAVAILABLE for a refused record.
pub fn unavailable(e: AuditError) -> Error {
    Error::Code {
        code: ErrorCode::AUDIT_UNAVAILABLE,
        message: e.to_string(),
        retry_after_ms: 5000,
    }
}

/// The node's digest signing key: the configured file, else the systemd credential
/// `audit-signing-key`, else `<state_dir>/audit-signing.key` (generated with a warning).
pub fn signing_key(
    cfg: &crate::config::Config,
    state_dir: &std::path::Path,
) -> anyhow::Result<(waping_audit::DigestSigner, std::path::PathBuf)> {
    use waping_audit::DigestSigner;
    let path = if let Some(p) = &cfg.audit.signing_key_file {
        p.clone()
    } else if let Some(p) = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| std::path::Path::new(&d).join("audit-signing-key"))
        .filter(|p| p.exists())
    {
        p
    } else {
        let p = state_dir.join("audit-signing.key");
        if !p.exists() {
            let (_, seed) = DigestSigner::generate();
            write_new_secret(&p, DigestSigner::encode_seed(&seed).as_bytes())?;
            tracing::warn!(path = %p.display(), "generated an audit signing key beside the log it protects; \
                for production set audit.signing_key_file or LoadCredential=audit-signing-key:… and keep \
                the public key (`waping-gateway audit public-key`) off the node");
        }
        p
    };
    let signer = DigestSigner::load(&path)?;
    Ok((signer, path))
}

/// Creates `path` with mode 0600 (refusing an existing file) and fsyncs it.
pub fn write_new_secret(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// The audit action of an operator's device command, if it changes something that the
/// session does not record itself (linking completes in the session, which records it).
pub fn device_action(cmd: &crate::session::DeviceCommand) -> Option<Action> {
    use crate::session::DeviceCommand as C;
    match cmd {
        C::Unlink => Some(Action::DeviceUnlink),
        C::Disable => Some(Action::DeviceDisable),
        C::Enable => Some(Action::DeviceEnable),
        C::Link(_) | C::Status => None,
    }
}

/// The record of an operator's device command and its result.
pub fn device_event<T>(
    action: Action,
    actor: Actor,
    workspace: &str,
    device: &str,
    result: &Result<T, crate::session::ControlError>,
) -> Event {
    let ev = Event::new(crate::unix_ms(), actor, action)
        .workspace(workspace)
        .target("device", device);
    match result {
        Ok(_) => ev,
        Err(e) => ev.outcome(Outcome::Failure, e.to_string()),
    }
}
