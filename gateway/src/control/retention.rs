//! The retention sweeper: enforces each workspace's windows with bounded work per tick.
//!
//! Every tick (default one minute) it purges, per workspace, at most [`PURGE_PER_TICK`]
//! dead letters older than the workspace's `dead_letters_days`, so a backlog of millions
//! drains over several ticks instead of stalling the journal's writer. Finished messages'
//! bodies and inbound events live in journal segments: each tick hands the journal the
//! cutoff of the shortest window of any workspace ([`waping_journal::Journal::enforce_retention`]),
//! and the journal rewrites segments older than it step by step between group commits,
//! keeping only live records (unfinished messages, dead letters, idempotency keys without
//! bodies). The decision takes `now` as an argument ([`Sweeper::plan`]) so tests drive it
//! with a simulated clock.

use std::sync::Arc;
use std::time::Duration;

use super::Control;
use super::config::Retention;

/// Dead letters purged per workspace per tick.
pub const PURGE_PER_TICK: usize = 1000;

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// What one tick should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `(workspace, cutoff_ms)`: purge dead letters that died before the cutoff.
    pub dead_letter_cutoffs: Vec<(String, u64)>,
    /// Journal records appended before this (unix ms) must be compacted away unless live.
    pub body_cutoff_ms: Option<u64>,
    /// `(workspace, cutoff_ms)`: delete the workspace's events (the event log of webhooks
    /// and live subscribers) from before the cutoff: the shorter of its inbound-event and
    /// delivery-record windows, since a log row mixes inbound messages, statuses and device
    /// events.
    pub event_cutoffs: Vec<(String, u64)>,
}

/// Plans retention ticks.
#[derive(Debug, Default)]
pub struct Sweeper;

impl Sweeper {
    /// Decides a tick at `now_ms` for the given workspaces' retention settings. The journal
    /// is shared by every workspace, so its cutoff follows the shortest window of any of them
    /// (bodies, inbound events, delivery records).
    pub fn plan(&mut self, now_ms: u64, workspaces: &[(String, Retention)]) -> Plan {
        let dead_letter_cutoffs = workspaces
            .iter()
            .map(|(ws, r)| {
                (
                    ws.clone(),
                    now_ms.saturating_sub(u64::from(r.dead_letters_days) * DAY_MS),
                )
            })
            .collect();
        let window = |r: &Retention| {
            (u64::from(r.message_bodies_hours) * HOUR_MS)
                .min(u64::from(r.inbound_events_days) * DAY_MS)
                .min(u64::from(r.delivery_records_days) * DAY_MS)
        };
        let body_cutoff_ms = workspaces
            .iter()
            .map(|(_, r)| window(r))
            .min()
            .map(|w| now_ms.saturating_sub(w));
        // The log holds inbound messages (inbound events) and statuses (delivery records),
        // never an outbound message's body: `message_bodies_hours` does not apply.
        let event_cutoffs = workspaces
            .iter()
            .map(|(ws, r)| {
                let w = (u64::from(r.inbound_events_days) * DAY_MS)
                    .min(u64::from(r.delivery_records_days) * DAY_MS);
                (ws.clone(), now_ms.saturating_sub(w))
            })
            .collect();
        Plan {
            dead_letter_cutoffs,
            body_cutoff_ms,
            event_cutoffs,
        }
    }
}

/// Runs the sweeper until the control plane is dropped.
pub async fn run(control: std::sync::Weak<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeper = Sweeper;
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        sweep_once(&control, &mut sweeper, crate::unix_ms()).await;
    }
}

/// The record of a sweep: dead letters removed and the cutoff applied.
fn sweep_record(now_ms: u64, dead_letters: u64, cutoff_ms: u64) -> waping_audit::Event {
    waping_audit::Event::new(
        now_ms,
        waping_audit::Actor::System,
        waping_audit::Action::RetentionSweep,
    )
    .detail(waping_audit::Detail::Removed {
        dead_letters,
        devices: 0,
        cutoff_ms: Some(cutoff_ms),
    })
}

/// One tick: what [`Sweeper::plan`] decided, carried out and logged for audit.
pub async fn sweep_once(control: &Arc<Control>, sweeper: &mut Sweeper, now_ms: u64) {
    let plan = sweeper.plan(now_ms, &control.retention_all());
    let journal = &control.durable.journal;
    for (ws, cutoff) in &plan.dead_letter_cutoffs {
        match journal
            .purge_dead_older_than(Some(ws), *cutoff, PURGE_PER_TICK)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("waping_retention_purged_total", "what" => "dead_letter")
                    .increment(n as u64);
                control
                    .audit
                    .emit_durable(sweep_record(now_ms, n as u64, *cutoff).workspace(ws))
                    .await;
            }
            Err(e) => {
                tracing::warn!(workspace = %ws, error = %e, "retention sweep of dead letters failed; retrying next tick")
            }
        }
    }
    if let Some(rt) = control.webhook_runtime() {
        for (ws, cutoff) in &plan.event_cutoffs {
            match rt.retain(ws, *cutoff).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("waping_retention_purged_total", "what" => "event").increment(n);
                }
                Err(e) => {
                    tracing::warn!(workspace = %ws, error = %e, "retention sweep of events failed; retrying next tick")
                }
            }
        }
    }
    if let Some(cutoff) = plan.body_cutoff_ms {
        match journal.enforce_retention(cutoff).await {
            Ok(r) => {
                if r.rolled_active {
                    metrics::counter!("waping_retention_compactions_total").increment(1);
                    let node = control.audit.auditor().node().to_owned();
                    control
                        .audit
                        .emit_durable(sweep_record(now_ms, 0, cutoff).target("node", node))
                        .await;
                }
                if r.rolled_active || r.segments_pending > 0 {
                    tracing::info!(
                        cutoff_ms = cutoff,
                        rolled_active = r.rolled_active,
                        segments_pending = r.segments_pending,
                        "retention: journal segments older than the shortest window are being compacted"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention of the journal failed; retrying next tick"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str, bodies_h: u32, dead_d: u32) -> (String, Retention) {
        (
            id.into(),
            Retention {
                message_bodies_hours: bodies_h,
                dead_letters_days: dead_d,
                ..Retention::default()
            },
        )
    }

    #[test]
    fn cutoffs_follow_each_workspace_window() {
        let mut s = Sweeper;
        let now = 100 * DAY_MS;
        let p = s.plan(now, &[ws("a", 24, 30), ws("b", 24, 1)]);
        assert_eq!(
            p.dead_letter_cutoffs,
            vec![("a".to_string(), 70 * DAY_MS), ("b".to_string(), 99 * DAY_MS)]
        );
    }

    #[test]
    fn event_cutoffs_follow_each_workspace_shortest_window() {
        let mut s = Sweeper;
        let now = 10 * DAY_MS;
        let short_records = (
            "c".to_string(),
            Retention {
                message_bodies_hours: 72,
                delivery_records_days: 2,
                ..Retention::default()
            },
        );
        let short_inbound = (
            "d".to_string(),
            Retention {
                inbound_events_days: 1,
                ..Retention::default()
            },
        );
        let p = s.plan(
            now,
            &[ws("a", 24, 30), ws("b", 4, 30), short_records, short_inbound],
        );
        assert_eq!(
            p.event_cutoffs,
            vec![
                ("a".to_string(), now - 7 * DAY_MS),
                ("b".to_string(), now - 7 * DAY_MS),
                ("c".to_string(), now - 2 * DAY_MS),
                ("d".to_string(), now - DAY_MS),
            ],
            "each workspace its own; outbound bodies (b: 4 h) are not in the event log"
        );
    }

    #[test]
    fn the_journal_cutoff_follows_the_shortest_window_of_any_workspace() {
        let mut s = Sweeper;
        let now = 10 * DAY_MS;
        let p = s.plan(now, &[ws("a", 24, 30), ws("b", 4, 30)]);
        assert_eq!(p.body_cutoff_ms, Some(now - 4 * HOUR_MS));
        let short_inbound = (
            "c".to_string(),
            Retention {
                message_bodies_hours: 72,
                inbound_events_days: 1,
                ..Retention::default()
            },
        );
        assert_eq!(s.plan(now, &[short_inbound]).body_cutoff_ms, Some(now - DAY_MS));
        assert_eq!(
            s.plan(now, &[]).body_cutoff_ms,
            None,
            "nothing to keep, nothing to do"
        );
    }
}
