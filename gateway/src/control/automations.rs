//! Automation rules of a workspace (records, API operations, audit) and the tags their
//! `tag` action keeps per (device, sender). Every change is audited and hot-applied: the
//! workspace's compiled rules are swapped in the engine at once.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Control, Error, Kind, Permission, Principal};
use crate::automations::rules::{self, Compiled, RuleSpec, RuleUpdate};

/// Most rules per workspace.
pub const MAX_RULES: usize = 100;

/// A rule as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleRecord {
    /// `ar_` and 16 hex digits.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// The rule.
    pub spec: RuleSpec,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
    /// Who created it (`key:<id>`).
    #[serde(default)]
    pub created_by: String,
}

/// Counters of a rule since the node started.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleCounters {
    /// Inbound messages that matched.
    pub matched: u64,
    /// Matches loop protection suppressed.
    pub suppressed: u64,
    /// Actions done.
    pub done: u64,
    /// Automated sends refused by admission (rate limit, quota, pacing, device state).
    pub refused: u64,
    /// Actions that failed otherwise.
    pub failed: u64,
    /// The id of the last message the rule sent (follow it with `GET /v1/messages/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleInfo {
    /// `ar_…`.
    pub id: String,
    /// The rule.
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
    /// Since the node started.
    pub counters: RuleCounters,
}

/// Tags of one (device, sender) as stored and shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TagSet {
    /// Device.
    pub device: String,
    /// Sender (digits of the number).
    pub sender: String,
    /// Tags, sorted.
    pub tags: BTreeSet<String>,
    /// Unix ms.
    pub updated_at_ms: u64,
}

fn valid_rule_id(id: &str) -> bool {
    id.strip_prefix("ar_")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Control {
    /// Compiles and installs every stored rule (at start).
    pub fn load_automations(&self) {
        for ws in self.registry.iter() {
            self.apply_rules(&ws.id);
        }
    }

    /// Recompiles a workspace's enabled rules into the engine (hot apply).
    fn apply_rules(&self, workspace: &str) {
        let recs: Vec<RuleRecord> = match self.store.list(Kind::Automation, Some(workspace)) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(workspace, error = %e, "listing automation rules");
                return;
            }
        };
        let mut recs: Vec<RuleRecord> = recs.into_iter().filter(|r| r.spec.enabled).collect();
        recs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        let compiled = recs
            .iter()
            .filter_map(|r| match Compiled::new(&r.id, &r.spec) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::error!(rule = %r.id, error = %e, "automation rule does not compile; skipped");
                    None
                }
            })
            .collect();
        self.automations.set_workspace(workspace, compiled);
    }

    fn rule_info(&self, r: &RuleRecord) -> RuleInfo {
        let st = self.automations.stats(&r.id);
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        RuleInfo {
            id: r.id.clone(),
            spec: r.spec.clone(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            counters: RuleCounters {
                matched: l(&st.matched),
                suppressed: l(&st.suppressed),
                done: l(&st.done),
                refused: l(&st.refused),
                failed: l(&st.failed),
                last_message_id: st.last_message(),
            },
        }
    }

    /// Every problem of `spec` in the caller's workspace, as one 422 listing `path: message`.
    fn check_rule(&self, workspace: &str, spec: &RuleSpec) -> Result<(), Error> {
        let endpoint_ok = |id: &str| -> Result<(), String> {
            let found = super::webhooks::endpoint_num(id).is_some()
                && self
                    .store
                    .get::<super::webhooks::WebhookRecord>(Kind::Webhook, &[workspace, id])
                    .ok()
                    .flatten()
                    .is_some();
            if found {
                Ok(())
            } else {
                Err("no such webhook endpoint in this workspace".into())
            }
        };
        let problems = rules::validate(spec, &endpoint_ok);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems.join("; ")))
        }
    }

    fn rule_of(&self, p: &Principal, id: &str) -> Result<RuleRecord, Error> {
        let me = p.require(Permission::AutomationsManage)?;
        if !valid_rule_id(id) {
            return Err(Error::NotFound);
        }
        self.store
            .get(Kind::Automation, &[&me.workspace.id, id])?
            .ok_or(Error::NotFound)
    }

    fn audit_rule(&self, p: &Principal, action: waping_audit::Action, r: &RuleRecord, fields: Vec<String>) {
        self.audit.emit(
            waping_audit::Event::new(crate::unix_ms(), crate::audit::actor(p), action)
                .workspace(&r.workspace)
                .target("automation", &r.id)
                .detail(waping_audit::Detail::Changed { fields }),
        );
    }

    /// Creates a rule in the caller's workspace (validated; applied at once).
    pub fn create_rule(&self, p: &Principal, spec: RuleSpec) -> Result<RuleInfo, Error> {
        let me = p.require(Permission::AutomationsManage)?;
        let ws = me.workspace.id.to_string();
        self.check_rule(&ws, &spec)?;
        let existing: Vec<RuleRecord> = self.store.list(Kind::Automation, Some(&ws))?;
        if existing.len() >= MAX_RULES {
            return Err(Error::Quota(format!(
                "the workspace has its maximum of {MAX_RULES} automation rules"
            )));
        }
        self.audit.gate()?;
        let id = loop {
            let id = format!("ar_{:016x}", rand::random::<u64>());
            if !existing.iter().any(|r| r.id == id) {
                break id;
            }
        };
        let now = crate::unix_ms();
        let rec = RuleRecord {
            id,
            workspace: ws.clone(),
            spec,
            created_at_ms: now,
            updated_at_ms: now,
            created_by: p.actor(),
        };
        self.store.put(Kind::Automation, &[&ws, &rec.id], &rec)?;
        self.apply_rules(&ws);
        self.audit_rule(
            p,
            waping_audit::Action::AutomationCreate,
            &rec,
            vec!["name".into(), "match".into(), "actions".into(), "limit".into()],
        );
        Ok(self.rule_info(&rec))
    }

    /// The caller's workspace's rules, oldest first (the order they run in).
    pub fn list_rules(&self, p: &Principal) -> Result<Vec<RuleInfo>, Error> {
        let me = p.require(Permission::AutomationsManage)?;
        let mut v: Vec<RuleRecord> = self.store.list(Kind::Automation, Some(&me.workspace.id))?;
        v.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(v.iter().map(|r| self.rule_info(r)).collect())
    }

    /// One rule.
    pub fn get_rule(&self, p: &Principal, id: &str) -> Result<RuleInfo, Error> {
        Ok(self.rule_info(&self.rule_of(p, id)?))
    }

    /// Changes a rule (the result is validated as a whole).
    pub fn update_rule(&self, p: &Principal, id: &str, req: RuleUpdate) -> Result<RuleInfo, Error> {
        let mut rec = self.rule_of(p, id)?;
        let fields = req.apply(&mut rec.spec);
        self.check_rule(&rec.workspace, &rec.spec)?;
        if fields.is_empty() {
            return Ok(self.rule_info(&rec));
        }
        self.audit.gate()?;
        rec.updated_at_ms = crate::unix_ms();
        self.store
            .put(Kind::Automation, &[&rec.workspace, &rec.id], &rec)?;
        self.apply_rules(&rec.workspace);
        self.audit_rule(p, waping_audit::Action::AutomationUpdate, &rec, fields);
        Ok(self.rule_info(&rec))
    }

    /// Deletes a rule (no longer applied from the next message on).
    pub fn delete_rule(&self, p: &Principal, id: &str) -> Result<(), Error> {
        let rec = self.rule_of(p, id)?;
        self.audit.gate()?;
        self.store.delete(Kind::Automation, &[&rec.workspace, &rec.id])?;
        self.apply_rules(&rec.workspace);
        self.automations.forget(&rec.id);
        self.audit_rule(p, waping_audit::Action::AutomationDelete, &rec, Vec::new());
        Ok(())
    }

    /// Tags of (device, sender) in the caller's workspace (empty when none).
    pub fn get_tags(&self, p: &Principal, device: &str, sender: &str) -> Result<TagSet, Error> {
        let me = p.require(Permission::AutomationsManage)?;
        let sender = rules::sender_key(sender);
        Ok(self
            .store
            .get(Kind::Tag, &[&me.workspace.id, device, &sender])?
            .unwrap_or(TagSet {
                device: device.to_string(),
                sender,
                ..Default::default()
            }))
    }

    /// Adds tags to (device, sender) of `workspace` (the `tag` action). At most
    /// [`rules::MAX_TAGS`] are kept per pair; the newest beyond that are dropped.
    pub fn add_tags(
        &self,
        workspace: &str,
        device: &str,
        sender: &str,
        tags: &[String],
    ) -> Result<(), Error> {
        let sender = rules::sender_key(sender);
        let mut set: TagSet = self
            .store
            .get(Kind::Tag, &[workspace, device, &sender])?
            .unwrap_or(TagSet {
                device: device.to_string(),
                sender: sender.clone(),
                ..Default::default()
            });
        let before = set.tags.len();
        for t in tags {
            if set.tags.len() >= rules::MAX_TAGS {
                break;
            }
            set.tags.insert(t.clone());
        }
        if set.tags.len() == before {
            return Ok(());
        }
        set.updated_at_ms = crate::unix_ms();
        self.store.put(Kind::Tag, &[workspace, device, &sender], &set)?;
        Ok(())
    }

    /// Whether `id` is an enabled webhook endpoint of `workspace` (for the webhook action).
    pub fn automation_endpoint(&self, workspace: &str, id: &str) -> Option<u64> {
        let num = super::webhooks::endpoint_num(id)?;
        let rec: super::webhooks::WebhookRecord = self.store.get(Kind::Webhook, &[workspace, id]).ok()??;
        rec.enabled.then_some(num)
    }

    /// A workspace is being deleted: its rules and tags go.
    pub fn delete_workspace_automations(&self, workspace: &str) -> Result<(), Error> {
        self.automations.set_workspace(workspace, Vec::new());
        self.store.delete_prefix(Kind::Automation, &[workspace])?;
        self.store.delete_prefix(Kind::Tag, &[workspace])?;
        Ok(())
    }
}
