//! Automations: per-workspace rules run on inbound messages (issue 8).
//!
//! - [`rules`]: the model, its validation and the compiled form.
//! - [`engine`]: matching and loop protection, pure (time passed in).
//! - [`Automations`]: the runtime. Every workspace event reaches it through the node's event
//!   sink ([`Tee`], beside the webhook runtime); for `message.received` of a workspace with
//!   rules it evaluates them on the caller's thread (one `ArcSwap` load, then the rules) and
//!   queues the actions of those allowed to act for one worker task, so the inbound path
//!   never waits on an action. Replies and forwards go through [`crate::admit`] like any
//!   send (token bucket, quotas, device queue, journal before acceptance, device pacing in
//!   the session), attributed to the rule; a refused one is counted and logged, never
//!   retried.
//!
//! Design and reasons: `docs/design/0019-automations.md`.

pub mod engine;
pub mod rules;

use std::sync::{Arc, OnceLock};

use metrics::counter;
use tokio::sync::mpsc;
use waping_protocol::{Body, EventKind, Text};

use crate::admit::{self, NotAdmitted};
use crate::control::Control;
use crate::workspace::{EventSink, Workspace};
use engine::{Decision, Inbound};
use rules::{Action, Compiled, Piece};

/// Matches waiting for the worker; past it, matches are dropped (counted as
/// `suppressed{reason="queue_full"}`): inbound traffic never waits on automations.
const QUEUE: usize = 4096;

/// One match to act on.
struct Job {
    ws: Arc<Workspace>,
    rule: Arc<Compiled>,
    device: String,
    sender: String,
    text: String,
    trigger: waping_events::EventId,
    at_ms: u64,
}

/// The automation runtime.
pub struct Automations {
    control: Arc<Control>,
    metrics: Arc<crate::metrics::Metrics>,
    ids: crate::ids::IdGen,
    clock: crate::limiter::MonotonicClock,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Automations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Automations").finish_non_exhaustive()
    }
}

impl Automations {
    /// Starts the worker.
    pub fn start(
        control: Arc<Control>,
        metrics: Arc<crate::metrics::Metrics>,
        clock: crate::limiter::MonotonicClock,
    ) -> Arc<Automations> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let a = Arc::new(Automations {
            control,
            metrics,
            ids: crate::ids::IdGen::default(),
            clock,
            tx,
        });
        tokio::spawn(a.clone().worker(rx));
        a
    }

    /// An inbound message of `ws`: evaluates the workspace's rules and queues what may act.
    pub fn on_inbound(
        &self,
        ws: &Arc<Workspace>,
        at_ms: u64,
        device: &str,
        from: &str,
        upstream_id: &str,
        body: &Body,
    ) {
        let engine = &self.control.automations;
        if !engine.has_rules(&ws.id) {
            return;
        }
        let text = match body {
            Body::Text(t) => t.as_str(),
            Body::Media { caption, .. } => caption.as_str(),
        };
        let decisions = engine.evaluate(
            Inbound {
                workspace: &ws.id,
                device,
                sender: from,
                text,
            },
            at_ms,
        );
        if decisions.is_empty() {
            return;
        }
        let trigger = waping_events::EventId::for_inbound(&ws.id, device, upstream_id);
        for d in decisions {
            match d {
                Decision::Suppressed(rule, why) => {
                    counter!("waping_automation_suppressed_total", "reason" => why.label()).increment(1);
                    tracing::info!(workspace = %ws.id, rule = %rule.id, device, reason = why.label(),
                        "automation suppressed by loop protection");
                }
                Decision::Act(rule) => {
                    for (a, _) in &rule.actions {
                        counter!("waping_automation_matches_total", "action" => a.label()).increment(1);
                    }
                    let job = Job {
                        ws: ws.clone(),
                        rule: rule.clone(),
                        device: device.to_string(),
                        sender: from.to_string(),
                        text: text.to_string(),
                        trigger,
                        at_ms,
                    };
                    if self.tx.try_send(job).is_err() {
                        counter!("waping_automation_suppressed_total", "reason" => "queue_full").increment(1);
                        engine
                            .stats(&rule.id)
                            .failed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(workspace = %ws.id, rule = %rule.id, "automation queue full; match dropped");
                    }
                }
            }
        }
    }

    async fn worker(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            if job.ws.is_deleted() {
                continue;
            }
            for (i, (action, pieces)) in job.rule.actions.iter().enumerate() {
                let result = self.run(&job, i, action, pieces).await;
                let st = self.control.automations.stats(&job.rule.id);
                let label = match &result {
                    Ok(()) => {
                        st.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        "done"
                    }
                    Err(Failure::Refused(code, reason)) => {
                        st.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(workspace = %job.ws.id, rule = %job.rule.id, action = action.label(),
                            code = code.name(), reason, "automated send refused (not retried)");
                        "refused"
                    }
                    Err(Failure::Failed(e)) => {
                        st.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(workspace = %job.ws.id, rule = %job.rule.id, action = action.label(),
                            error = %e, "automation action failed");
                        "failed"
                    }
                };
                counter!("waping_automation_actions_total", "action" => action.label(), "result" => label)
                    .increment(1);
            }
        }
    }

    async fn run(&self, job: &Job, i: usize, action: &Action, pieces: &[Piece]) -> Result<(), Failure> {
        let values = [
            job.sender.as_str(),
            job.text.as_str(),
            job.device.as_str(),
            &*job.ws.id,
            job.rule.name.as_str(),
        ];
        match action {
            Action::Reply { .. } => {
                let text = rules::render(pieces, values);
                self.send(job, i, &job.device, &job.sender, text).await
            }
            Action::Forward { device, to, .. } => {
                let text = rules::render(pieces, values);
                let from = device.as_deref().unwrap_or(&job.device);
                self.send(job, i, from, to, text).await
            }
            Action::Webhook { endpoint_id } => {
                let num = self
                    .control
                    .automation_endpoint(&job.ws.id, endpoint_id)
                    .ok_or_else(|| Failure::Failed(format!("endpoint {endpoint_id} is gone or disabled")))?;
                let rt = self
                    .control
                    .webhook_runtime()
                    .ok_or_else(|| Failure::Failed("webhook runtime not started".into()))?
                    .clone();
                let trigger = job.trigger.to_string();
                let mut e = waping_events::Event::new(
                    job.ws.id.to_string(),
                    Some(job.device.clone()),
                    job.at_ms,
                    waping_events::EventData::AutomationMatched(waping_events::AutomationMatched {
                        rule_id: job.rule.id.clone(),
                        rule_name: job.rule.name.clone(),
                        trigger_event_id: trigger.clone(),
                        from: job.sender.clone(),
                        text: (!job.text.is_empty()).then(|| job.text.clone()),
                    }),
                );
                // The same match is the same event: a replayed inbound message is not doubled.
                e.id = waping_events::EventId::derived(&[
                    b"automation.matched",
                    trigger.as_bytes(),
                    job.rule.id.as_bytes(),
                ]);
                rt.deliver_to(num, e).await.map(|_| ()).map_err(Failure::Failed)
            }
            Action::Tag { tags } => {
                let (c, ws, d, s, t) = (
                    self.control.clone(),
                    job.ws.id.to_string(),
                    job.device.clone(),
                    job.sender.clone(),
                    tags.clone(),
                );
                tokio::task::spawn_blocking(move || c.add_tags(&ws, &d, &s, &t))
                    .await
                    .map_err(|e| Failure::Failed(e.to_string()))?
                    .map_err(|e| Failure::Failed(e.to_string()))
            }
        }
    }

    /// One automated send through the same admission as any send. Its idempotency key is
    /// derived from (rule, trigger event, action), so a replayed inbound message is answered
    /// once.
    async fn send(&self, job: &Job, i: usize, device: &str, to: &str, text: String) -> Result<(), Failure> {
        let c = &self.control;
        let node = admit::Node {
            sessions: &c.sessions,
            durable: &c.durable,
            ids: &self.ids,
            clock: self.clock,
            metrics: &self.metrics,
            audit: &c.audit,
        };
        let req = admit::Request {
            idempotency_key: Text::from(format!("auto:{}:{}:{i}", job.rule.id, job.trigger)),
            device: Text::from(device),
            recipient: Text::from(to),
            body: Body::Text(Text::from(text.as_str())),
            seq: 0,
            reply: None,
            submitted_by: format!("automation:{}", job.rule.id),
        };
        let a = match admit::admit(node, &job.ws, req) {
            Ok(a) => a,
            Err(NotAdmitted::Refused(r)) => {
                self.metrics.rejected(r.code);
                return Err(Failure::Refused(r.code, r.reason));
            }
            // Already sent for this match (a replay of the same inbound message).
            Err(NotAdmitted::Duplicate { .. }) => return Ok(()),
        };
        match c.durable.journal.append(vec![a.record]).await {
            Ok(_) => {
                c.durable.idem.commit(a.token);
                self.metrics.accepted.increment(1);
                let id = a.out.id;
                a.permit.send(a.out);
                c.automations.note_sent(&job.ws.id, &text, crate::unix_ms());
                c.automations.stats(&job.rule.id).set_last_message(id.to_string());
                Ok(())
            }
            Err(e) => {
                c.durable.idem.release(a.token);
                Err(Failure::Failed(format!("not persisted: {e}")))
            }
        }
    }
}

enum Failure {
    Refused(waping_protocol::ErrorCode, String),
    Failed(String),
}

/// The node's event sink: the webhook runtime, and automations for inbound messages.
#[derive(Debug)]
pub struct Tee {
    /// Webhooks (stores events, delivers them).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Set once the control plane is open.
    pub automations: OnceLock<Arc<Automations>>,
}

impl EventSink for Tee {
    fn offer(&self, ws: &Workspace, at_ms: u64, kind: &EventKind) {
        EventSink::offer(&*self.webhooks, ws, at_ms, kind);
        if let EventKind::Inbound {
            device_id,
            from,
            upstream_id,
            body,
        } = kind
            && let Some(a) = self.automations.get()
            && a.control.automations.has_rules(&ws.id)
            && let Some(ws) = a.control.registry.get(ws.idx)
        {
            a.on_inbound(
                &ws,
                at_ms,
                device_id.as_str(),
                from.as_str(),
                upstream_id.as_str(),
                body,
            );
        }
    }

    fn offer_event(&self, event: waping_events::Event) {
        EventSink::offer_event(&*self.webhooks, event);
    }
}
