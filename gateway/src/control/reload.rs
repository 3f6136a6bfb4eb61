//! The control plane's part of a configuration reload: workspaces, their limits and keys.
//!
//! Two phases, so a reload is all or nothing. [`Control::plan_reload`] checks the new file
//! against the running node and builds everything fallible (quotas, key records) without
//! touching anything; [`Control::apply_reload`] then only swaps and inserts. A reload does
//! to workspaces what a restart on the new file would do: new workspaces appear, removed
//! ones stay with their data but become API-managed, and keys follow the file. What a
//! restart would do but a running node cannot (pacing of running device sessions, removed
//! devices) is reported as needing a restart instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Control, Kind, Source, WorkspaceRecord};
use crate::auth::LiveKey;
use crate::config::{Config, WorkspaceConfig};
use crate::limiter::Quota;
use waping_protocol::Text;

/// Everything a reload will do to the control plane, built and checked in advance.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// Workspaces to add, with their token-bucket quota.
    add: Vec<(WorkspaceConfig, Quota)>,
    /// Existing workspaces whose rate or burst changes (or that the file now takes over).
    retune: Vec<(WorkspaceConfig, Quota)>,
    /// Workspaces removed from the file: they become API-managed (data kept).
    release: Vec<String>,
    /// Keys to insert or replace (new, re-hashed, re-roled or moved), by workspace id.
    keys: Vec<(String, crate::config::KeyConfig)>,
    /// Configuration keys no longer in the file.
    revoke: Vec<String>,
    /// Devices added to a workspace in the file.
    devices: Vec<(String, String)>,
    /// `audit_full_numbers` changes.
    full_numbers: Vec<(String, bool)>,
    /// Setting names that take effect now.
    pub applied: BTreeSet<String>,
    /// Setting names that wait for a restart.
    pub restart_required: BTreeSet<String>,
}

impl Control {
    /// Checks `new` against the running node and plans the change; refuses (with every
    /// reason) what cannot be applied consistently.
    /// Restart-only parts (device pacing, removed devices) are compared with `boot`, the
    /// configuration the node started on, so they stay reported until a restart.
    pub fn plan_reload(&self, new: &Config, boot: &Config) -> Result<ReloadPlan, Vec<String>> {
        let old = self.config();
        let boot_ws: HashMap<&str, &WorkspaceConfig> =
            boot.workspaces.iter().map(|w| (w.id.as_str(), w)).collect();
        let mut plan = ReloadPlan::default();
        let mut problems = Vec::new();
        let old_ws: HashMap<&str, &WorkspaceConfig> =
            old.workspaces.iter().map(|w| (w.id.as_str(), w)).collect();
        let new_ws: HashMap<&str, &WorkspaceConfig> =
            new.workspaces.iter().map(|w| (w.id.as_str(), w)).collect();
        // Key ids are global: a configured key must not take the id of an API-made key.
        let config_key_ids: BTreeSet<&str> = old
            .workspaces
            .iter()
            .flat_map(|w| w.keys.iter().map(|k| k.id.as_str()))
            .collect();
        for w in &new.workspaces {
            let (rate, burst, device_rate) = new.workspace_limits(w);
            let quota = match Quota::per_second(rate, burst) {
                Ok(q) => q,
                Err(e) => {
                    problems.push(format!("workspaces[{}]: rate_per_second/burst: {e}", w.id));
                    continue;
                }
            };
            match old_ws.get(w.id.as_str()) {
                None => {
                    if self.jobs.deleting(&w.id) {
                        problems.push(format!(
                            "workspaces[{}]: the workspace is being deleted; add it back once the deletion job has finished",
                            w.id
                        ));
                        continue;
                    }
                    if let Err(e) = new.workspace_pacing(w) {
                        problems.push(format!("workspaces[{}].pacing: {e}", w.id));
                        continue;
                    }
                    plan.applied.insert(format!("workspaces[{}]", w.id));
                    // An API workspace of the same id is taken over by the file, as a
                    // restart would; its limits follow the file from now on.
                    if self.meta.contains_key(&w.id) {
                        plan.retune.push(((*w).clone(), quota));
                    } else {
                        plan.add.push(((*w).clone(), quota));
                    }
                    for d in &w.devices {
                        plan.devices.push((w.id.clone(), d.clone()));
                    }
                }
                Some(o) => {
                    let (orate, oburst, _) = old.workspace_limits(o);
                    if (orate, oburst) != (rate, burst) {
                        plan.applied
                            .insert(format!("workspaces[{}].rate_per_second/burst", w.id));
                        plan.retune.push(((*w).clone(), quota));
                    }
                    for d in &w.devices {
                        if !o.devices.contains(d) {
                            plan.applied.insert(format!("workspaces[{}].devices", w.id));
                            plan.devices.push((w.id.clone(), d.clone()));
                        }
                    }
                    if o.audit_full_numbers != w.audit_full_numbers {
                        plan.applied
                            .insert(format!("workspaces[{}].audit_full_numbers", w.id));
                        plan.full_numbers.push((w.id.clone(), w.audit_full_numbers));
                    }
                }
            }
            if let Some(b) = boot_ws.get(w.id.as_str()) {
                let (_, _, boot_device_rate) = boot.workspace_limits(b);
                if boot_device_rate != device_rate || boot.pacing != new.pacing || b.pacing != w.pacing {
                    // Each running device session built its pacer from the boot policy.
                    plan.restart_required
                        .insert(format!("workspaces[{}].device_rate_per_second/pacing", w.id));
                }
                if b.devices.iter().any(|d| !w.devices.contains(d)) {
                    // Stopping a session with queued messages is a deletion's job (it logs
                    // out and purges); a reload must not lose them.
                    plan.restart_required
                        .insert(format!("workspaces[{}].devices (removed)", w.id));
                }
            }
            let old_keys: HashMap<&str, &crate::config::KeyConfig> = old_ws
                .get(w.id.as_str())
                .map(|o| o.keys.iter().map(|k| (k.id.as_str(), k)).collect())
                .unwrap_or_default();
            for k in &w.keys {
                if old_keys.get(k.id.as_str()) == Some(&k) {
                    continue;
                }
                if !config_key_ids.contains(k.id.as_str()) && self.keys.get(&k.id).is_some() {
                    problems.push(format!(
                        "workspaces[{}].keys: key id {:?} belongs to a key created through the API",
                        w.id, k.id
                    ));
                    continue;
                }
                if let Err(e) = crate::auth::parse_hash(&k.hash) {
                    problems.push(format!("workspaces[{}].keys[{}].hash: {e}", w.id, k.id));
                    continue;
                }
                plan.applied.insert(format!("workspaces[{}].keys", w.id));
                plan.keys.push((w.id.clone(), k.clone()));
            }
        }
        let new_key_ids: BTreeSet<&str> = new
            .workspaces
            .iter()
            .flat_map(|w| w.keys.iter().map(|k| k.id.as_str()))
            .collect();
        for o in &old.workspaces {
            if !new_ws.contains_key(o.id.as_str()) {
                plan.applied.insert(format!("workspaces[{}] (removed)", o.id));
                plan.release.push(o.id.clone());
            }
            for k in &o.keys {
                if !new_key_ids.contains(k.id.as_str()) {
                    plan.applied.insert(format!("workspaces[{}].keys", o.id));
                    plan.revoke.push(k.id.clone());
                }
            }
        }
        // Node defaults that only matter for workspaces made from now on, or are read live.
        for (name, changed) in [
            (
                "limits.rate_per_second",
                old.limits.rate_per_second != new.limits.rate_per_second,
            ),
            ("limits.burst", old.limits.burst != new.limits.burst),
            ("quotas", old.quotas != new.quotas),
            ("retention", old.retention != new.retention),
        ] {
            if changed {
                plan.applied.insert(name.into());
            }
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(problems)
        }
    }

    /// Applies a plan from [`Control::plan_reload`] and makes `new` the configuration in
    /// force. Nothing here is expected to fail; what does (a store write) is logged and
    /// returned, and the rest still applies so the node never stays half-old in memory.
    pub fn apply_reload(&self, plan: ReloadPlan, new: Arc<Config>) -> Vec<String> {
        let mut errors = Vec::new();
        let now = crate::unix_ms();
        let clock_now = self.durable.clock.now();
        // The new configuration first: workspaces registered below read their defaults from it.
        self.cfg.store(new.clone());
        for (w, _) in &plan.add {
            let (rate, burst, _) = new.workspace_limits(w);
            let rec = WorkspaceRecord {
                id: w.id.clone(),
                source: Source::Config,
                created_at_ms: now,
                rate_per_second: rate,
                burst,
                quotas: new.quotas,
                retention: new.retention,
                audit_full_numbers: w.audit_full_numbers,
            };
            if let Err(e) = self.store.put(Kind::Workspace, &[&w.id], &rec) {
                errors.push(format!("workspace {}: storing: {e}", w.id));
            }
            if let Err(e) = self.register_workspace_as(&rec, Some(w)) {
                errors.push(format!("workspace {}: {e}", w.id));
            }
        }
        for (w, quota) in &plan.retune {
            let (rate, burst, _) = new.workspace_limits(w);
            // In place: connections holding the workspace see the new bucket at once.
            self.limiter
                .upsert_many(vec![(Arc::<str>::from(w.id.as_str()), *quota)], clock_now);
            if let Some(mut rec) = self.meta.get(&w.id).map(|e| e.value().clone()) {
                rec.rate_per_second = rate;
                rec.burst = burst;
                rec.source = Source::Config;
                rec.audit_full_numbers = w.audit_full_numbers;
                if let Err(e) = self.store.put(Kind::Workspace, &[&w.id], &rec) {
                    errors.push(format!("workspace {}: storing: {e}", w.id));
                }
                self.meta.insert(w.id.clone(), rec);
            }
        }
        for id in &plan.release {
            if let Some(mut rec) = self.meta.get(id).map(|e| e.value().clone()) {
                rec.source = Source::Api;
                if let Err(e) = self.store.put(Kind::Workspace, &[id], &rec) {
                    errors.push(format!("workspace {id}: storing: {e}"));
                }
                self.meta.insert(id.clone(), rec);
            }
        }
        for id in &plan.revoke {
            self.keys.revoke(id);
            self.config_keys.remove(id);
        }
        for (ws_id, k) in &plan.keys {
            let Some(ws) = self.registry.by_id(ws_id) else {
                errors.push(format!(
                    "workspace {ws_id}: not registered; key {} not added",
                    k.id
                ));
                continue;
            };
            match LiveKey::new(&k.id, &k.hash, ws, k.role, None) {
                // Replacing revokes the old record: connections authenticated under the old
                // hash or role close, as with a role change through the API.
                Ok(live) => {
                    self.keys.insert(live);
                    self.config_keys.insert(k.id.clone(), ());
                }
                Err(e) => errors.push(format!("key {}: {e}", k.id)),
            }
        }
        for (ws_id, on) in &plan.full_numbers {
            self.audit.set_full_numbers(ws_id, *on);
            if let Some(mut m) = self.meta.get_mut(ws_id) {
                m.audit_full_numbers = *on;
            }
        }
        for (ws_id, device) in &plan.devices {
            if let Some(ws) = self.registry.by_id(ws_id)
                && self.sessions.get(ws.idx, &Text::from(device.as_str())).is_none()
            {
                self.sessions.start_device(&ws, device);
            }
        }
        errors
    }
}
