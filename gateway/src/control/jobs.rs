//! Deletion jobs: a whole workspace, one device, or one recipient's data.
//!
//! A request is recorded (durably) as a job, answered at once with its id, and carried out
//! by one background worker; jobs left unfinished by a crash run again at the next start,
//! and every step is idempotent, so a job can be run any number of times. Asking again for
//! a deletion that is still pending returns the same job.
//!
//! A workspace deletion destroys the workspace's data key (crypto-shredding): whatever is
//! left of its data on disk or in backups (journal segments not yet compacted, redb free
//! pages) can no longer be decrypted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::mpsc;
use waping_protocol::Text;

use super::roles::Permission;
use super::store::Kind;
use super::{Control, Error, Principal, Source};
use crate::session::DeviceCommand;

/// Dead letters purged per journal call; bounds the work of one step.
const PURGE_STEP: usize = 1000;

/// What to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeletionKind {
    /// The whole workspace: keys, devices (logged out), WhatsApp credentials, dead letters,
    /// and its data key.
    Workspace,
    /// One device: logged out of WhatsApp, its credentials and session state, its dead letters.
    Device,
    /// One recipient's data: dead letters addressed to it.
    Recipient,
}

/// A deletion request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeletion {
    /// What to delete.
    pub kind: DeletionKind,
    /// Device id (`device`), recipient address (`recipient`); for `workspace`, the caller's
    /// own workspace id, repeated as a confirmation.
    pub target: String,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the worker.
    Pending,
    /// Being carried out.
    Running,
    /// Finished.
    Done,
    /// Failed; `error` says why. Requesting the deletion again retries it.
    Failed,
}

/// What a job removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    /// Dead letters purged.
    pub dead_letters: u64,
    /// Devices removed.
    pub devices: u64,
    /// API keys revoked.
    pub keys: u64,
    /// Whether the workspace data key was destroyed.
    pub data_key_destroyed: bool,
}

/// A deletion job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeletionJob {
    /// Job id.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// What is deleted.
    pub kind: DeletionKind,
    /// The target as shown: a device or workspace id; a recipient masked to its last 3
    /// characters (the job record must not keep the personal data it deletes).
    pub target: String,
    /// Where it stands.
    pub state: JobState,
    /// Who asked.
    pub requested_by: String,
    /// When, unix ms.
    pub created_at_ms: u64,
    /// When it finished, unix ms.
    pub finished_at_ms: Option<u64>,
    /// What it removed.
    pub removed: Removed,
    /// Why it failed.
    pub error: Option<String>,
    /// SHA-256 of the real target (to find a pending duplicate request without keeping it).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    #[schema(ignore)]
    pub target_hash: String,
}

/// In-memory side of the jobs: what is in progress, and the worker's queue.
#[derive(Debug, Default)]
pub struct Jobs {
    active: Mutex<HashSet<(String, String)>>,
    tx: OnceLock<mpsc::UnboundedSender<Work>>,
}

#[derive(Debug)]
struct Work {
    workspace: String,
    id: String,
    /// The clear target (device id or recipient), kept only in memory.
    target: String,
}

fn hash_target(ws: &str, kind: DeletionKind, target: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(ws.as_bytes());
    h.update([0, kind as u8, 0]);
    h.update(target.as_bytes());
    hex::encode(h.finalize())
}

fn mask(kind: DeletionKind, target: &str) -> String {
    match kind {
        DeletionKind::Recipient => {
            let tail: String = target
                .chars()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        }
        _ => target.to_string(),
    }
}

impl Jobs {
    /// Whether a workspace deletion is in progress.
    pub fn deleting(&self, ws: &str) -> bool {
        self.active
            .lock()
            .expect("jobs lock")
            .contains(&(ws.to_string(), String::new()))
    }

    /// Whether a device deletion is in progress.
    pub fn deleting_device(&self, ws: &str, device: &str) -> bool {
        self.active
            .lock()
            .expect("jobs lock")
            .contains(&(ws.to_string(), device.to_string()))
    }

    /// Starts the worker and queues jobs a crash left unfinished. The clear target of a
    /// recipient job is not stored, so such a job cannot resume: it is marked failed and
    /// says to request it again.
    pub(crate) fn resume(&self, control: &Arc<Control>) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.tx.set(tx);
        tokio::spawn(worker(Arc::downgrade(control), rx));
        let jobs: Vec<DeletionJob> = control.store().list(Kind::Job, None)?;
        for mut j in jobs {
            if !matches!(j.state, JobState::Pending | JobState::Running) {
                continue;
            }
            if j.kind == DeletionKind::Recipient {
                j.state = JobState::Failed;
                j.error = Some("interrupted by a restart; request the deletion again".into());
                j.finished_at_ms = Some(crate::unix_ms());
                control.store().put(Kind::Job, &[&j.workspace, &j.id], &j)?;
                continue;
            }
            let target = j.target.clone();
            self.enqueue(&j, target);
        }
        Ok(())
    }

    fn enqueue(&self, j: &DeletionJob, target: String) {
        let key = match j.kind {
            DeletionKind::Workspace => (j.workspace.clone(), String::new()),
            DeletionKind::Device => (j.workspace.clone(), target.clone()),
            DeletionKind::Recipient => (j.workspace.clone(), format!("\u{1f}{}", j.target_hash)),
        };
        self.active.lock().expect("jobs lock").insert(key);
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(Work {
                workspace: j.workspace.clone(),
                id: j.id.clone(),
                target,
            });
        }
    }

    fn finish(&self, j: &DeletionJob, target: &str) {
        let key = match j.kind {
            DeletionKind::Workspace => (j.workspace.clone(), String::new()),
            DeletionKind::Device => (j.workspace.clone(), target.to_string()),
            DeletionKind::Recipient => (j.workspace.clone(), format!("\u{1f}{}", j.target_hash)),
        };
        self.active.lock().expect("jobs lock").remove(&key);
    }
}

/// Records a deletion request and queues it; returns the job and whether it is new.
pub(crate) fn request(
    control: &Arc<Control>,
    p: &Principal,
    req: NewDeletion,
) -> Result<(DeletionJob, bool), Error> {
    // The workspace's id, and the live workspace unless a failed deletion already removed
    // it from the registry (the node admin may then ask again).
    let (ws_id, ws): (String, Option<Arc<crate::workspace::Workspace>>) = match (p, req.kind) {
        (Principal::Admin, DeletionKind::Workspace) => {
            let live = control.registry.by_id(&req.target);
            if live.is_none() && !control.workspace_known(&req.target) {
                return Err(Error::NotFound);
            }
            (req.target.clone(), live)
        }
        (Principal::Admin, _) => return Err(Error::NotFound),
        (Principal::Key(_), DeletionKind::Workspace) => {
            let w = p.require(Permission::WorkspaceDelete)?.workspace.clone();
            (w.id.to_string(), Some(w))
        }
        (Principal::Key(_), _) => {
            let w = p.require(Permission::DeletionsWrite)?.workspace.clone();
            (w.id.to_string(), Some(w))
        }
    };
    match req.kind {
        DeletionKind::Workspace => {
            if req.target != ws_id {
                return Err(Error::Invalid(
                    "target: must repeat the workspace id to confirm its deletion".into(),
                ));
            }
            if control.config().workspaces.iter().any(|w| w.id == req.target) {
                return Err(Error::Conflict(
                    "this workspace is defined in the configuration file; remove it there and restart first"
                        .into(),
                ));
            }
        }
        DeletionKind::Device => {
            let live = ws.as_ref().is_some_and(|w| {
                control
                    .sessions
                    .get(w.idx, &Text::from(req.target.as_str()))
                    .is_some()
            });
            if !live && !control.jobs().deleting_device(&ws_id, &req.target) {
                return Err(Error::NotFound);
            }
            if control.device_from_config(&ws_id, &req.target) {
                return Err(Error::Conflict(
                    "this device is defined in the configuration file; remove it there and restart first"
                        .into(),
                ));
            }
        }
        DeletionKind::Recipient => {
            waping_protocol::validate::recipient(&Text::from(req.target.as_str()))
                .map_err(|e| Error::Invalid(format!("target: {}", e.message)))?;
        }
    }
    let target_hash = hash_target(&ws_id, req.kind, &req.target);
    let existing: Vec<DeletionJob> = control.store().list(Kind::Job, Some(&ws_id))?;
    if let Some(j) = existing.into_iter().find(|j| {
        j.kind == req.kind
            && j.target_hash == target_hash
            && matches!(j.state, JobState::Pending | JobState::Running)
    }) {
        return Ok((j, false));
    }
    let job = DeletionJob {
        id: crate::ids::IdGen::default().next().to_string(),
        workspace: ws_id.clone(),
        kind: req.kind,
        target: mask(req.kind, &req.target),
        state: JobState::Pending,
        requested_by: p.actor(),
        created_at_ms: crate::unix_ms(),
        finished_at_ms: None,
        removed: Removed::default(),
        error: None,
        target_hash,
    };
    control.audit.gate()?;
    control.store().put(Kind::Job, &[&job.workspace, &job.id], &job)?;
    control.audit.emit(
        waping_audit::Event::new(
            job.created_at_ms,
            crate::audit::actor(p),
            waping_audit::Action::DeletionRequest,
        )
        .workspace(&job.workspace)
        .target(job.kind.target_kind(), audit_target(control, &job, &req.target))
        .detail(waping_audit::Detail::Changed {
            fields: vec![format!("job:{}", job.id)],
        }),
    );
    if job.kind == DeletionKind::Workspace {
        // Cut access at once, before the worker gets to it: keys stop working now.
        control.registry.remove(&job.workspace);
        control.keys.revoke_workspace(&job.workspace);
    }
    control.jobs().enqueue(&job, req.target);
    Ok((job, true))
}

/// The target of a job as its audit records name it: a recipient masked unless the
/// workspace opted in to full numbers.
fn audit_target(control: &Control, job: &DeletionJob, raw: &str) -> String {
    match job.kind {
        DeletionKind::Recipient => control.audit.number(&job.workspace, raw),
        _ => raw.to_owned(),
    }
}

impl DeletionKind {
    /// The audit target kind.
    pub fn target_kind(self) -> &'static str {
        match self {
            DeletionKind::Workspace => "workspace",
            DeletionKind::Device => "device",
            DeletionKind::Recipient => "recipient",
        }
    }
}

async fn worker(control: std::sync::Weak<Control>, mut rx: mpsc::UnboundedReceiver<Work>) {
    while let Some(w) = rx.recv().await {
        let Some(control) = control.upgrade() else { return };
        let Ok(Some(mut job)) = control
            .store()
            .get::<DeletionJob>(Kind::Job, &[&w.workspace, &w.id])
        else {
            continue;
        };
        job.state = JobState::Running;
        let _ = control.store().put(Kind::Job, &[&job.workspace, &job.id], &job);
        let result = run(&control, &mut job, &w.target).await;
        job.finished_at_ms = Some(crate::unix_ms());
        match result {
            Ok(()) => {
                job.state = JobState::Done;
                job.error = None;
            }
            Err(e) => {
                job.state = JobState::Failed;
                job.error = Some(e.to_string());
            }
        }
        if let Err(e) = control.store().put(Kind::Job, &[&job.workspace, &job.id], &job) {
            tracing::error!(job = %job.id, error = %e, "could not record the deletion job's outcome");
        }
        control.jobs().finish(&job, &w.target);
        let mut ev = waping_audit::Event::new(
            job.finished_at_ms.unwrap_or_default(),
            waping_audit::Actor::System,
            if job.kind == DeletionKind::Workspace && job.state == JobState::Done {
                waping_audit::Action::WorkspaceDelete
            } else {
                waping_audit::Action::DeletionFinish
            },
        )
        .workspace(&job.workspace)
        .target(job.kind.target_kind(), audit_target(&control, &job, &w.target))
        .detail(waping_audit::Detail::Removed {
            dead_letters: job.removed.dead_letters,
            devices: job.removed.devices,
            cutoff_ms: None,
        });
        if let Some(e) = &job.error {
            ev = ev.outcome(waping_audit::Outcome::Failure, e.clone());
        }
        control.audit.emit_durable(ev).await;
    }
}

/// The device's events, or the recipient's inbound messages, leave the event log (webhook
/// deliveries and live subscribers' history) with the rest of their data.
async fn erase_events(control: &Arc<Control>, ws: &str, target: waping_events::Erase) -> anyhow::Result<()> {
    if let Some(rt) = control.webhook_runtime() {
        let n = rt
            .erase(ws, target)
            .await
            .map_err(|e| anyhow::anyhow!("erasing events: {e}"))?;
        if n > 0 {
            metrics::counter!("waping_retention_purged_total", "what" => "event").increment(n);
        }
    }
    Ok(())
}

async fn run(control: &Arc<Control>, job: &mut DeletionJob, target: &str) -> anyhow::Result<()> {
    let ws = job.workspace.clone();
    match job.kind {
        DeletionKind::Device => {
            remove_device(control, &ws, target).await?;
            job.removed.devices = 1;
            job.removed.dead_letters = purge(
                control,
                &ws,
                Some(waping_journal::DeadFilter::Device(target.to_string())),
            )
            .await?;
            erase_events(control, &ws, waping_events::Erase::Device(target.to_string())).await?;
        }
        DeletionKind::Recipient => {
            job.removed.dead_letters = purge(
                control,
                &ws,
                Some(waping_journal::DeadFilter::Recipient(target.to_string())),
            )
            .await?;
            erase_events(control, &ws, waping_events::Erase::Sender(target.to_string())).await?;
        }
        DeletionKind::Workspace => {
            control.registry.remove(&ws);
            job.removed.keys = control.keys.revoke_workspace(&ws) as u64;
            control.store().delete_prefix(Kind::Key, &[&ws])?;
            let devices: Vec<super::DeviceRecord> = control.store().list(Kind::Device, Some(&ws))?;
            let mut n = 0;
            for d in &devices {
                remove_device(control, &ws, &d.id).await?;
                n += 1;
            }
            job.removed.devices = n;
            let store = control.device_store.clone();
            let w = ws.clone();
            tokio::task::spawn_blocking(move || store.delete_workspace_blocking(&w)).await??;
            job.removed.dead_letters = purge(control, &ws, None).await?;
            // Webhook endpoints and the events stored for them (message contents).
            control.delete_workspace_webhooks(&ws).await?;
            // Automation rules and the tags they set.
            control
                .delete_workspace_automations(&ws)
                .map_err(|e| anyhow::anyhow!("automations: {e}"))?;
            job.removed.data_key_destroyed = control.vault.shred(&ws)?;
            control.store().delete_prefix(Kind::Device, &[&ws])?;
            control.store().delete(Kind::Workspace, &[&ws])?;
            control.forget_workspace(&ws);
        }
    }
    // Every journal segment written so far is rewritten, step by step between group commits,
    // without what was purged (and without records whose data key is gone), so the deleted
    // data leaves the disk within minutes rather than at some later compaction, and appends
    // of other workspaces never wait for it.
    control
        .durable
        .journal
        .enforce_retention(crate::unix_ms())
        .await
        .map_err(|e| anyhow::anyhow!("journal compaction: {e}"))?;
    Ok(())
}

async fn remove_device(control: &Arc<Control>, ws: &str, device: &str) -> anyhow::Result<()> {
    let text = Text::from(device);
    let idx = control
        .registry
        .by_id(ws)
        .map(|w| w.idx)
        .or_else(|| control.sessions.workspace_of(ws));
    if let Some(idx) = idx {
        // Log the number out of WhatsApp so the phone does not keep a ghost linked device.
        let _ = control.sessions.control(idx, &text, DeviceCommand::Unlink).await;
        control.sessions.remove(idx, &text);
    }
    let store = control.device_store.clone();
    let (w, d) = (ws.to_string(), device.to_string());
    tokio::task::spawn_blocking(move || store.device(&w, &d)?.delete_device_blocking()).await??;
    control.store().delete(Kind::Device, &[ws, device])?;
    control
        .audit
        .emit_durable(
            waping_audit::Event::new(
                crate::unix_ms(),
                waping_audit::Actor::System,
                waping_audit::Action::DeviceDelete,
            )
            .workspace(ws)
            .target("device", device),
        )
        .await;
    Ok(())
}

async fn purge(
    control: &Arc<Control>,
    ws: &str,
    filter: Option<waping_journal::DeadFilter>,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match &filter {
            Some(f) => {
                control
                    .durable
                    .journal
                    .purge_dead_where(ws, f.clone(), PURGE_STEP)
                    .await
            }
            None => {
                control
                    .durable
                    .journal
                    .purge_dead_older_than(Some(ws), u64::MAX, PURGE_STEP)
                    .await
            }
        }
        .map_err(|e| anyhow::anyhow!("purging dead letters: {e}"))?;
        total += n as u64;
        if n < PURGE_STEP {
            return Ok(total);
        }
    }
}

impl Source {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}
