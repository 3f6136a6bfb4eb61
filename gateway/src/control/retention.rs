//! The retention sweeper: enforces each workspace's windows with bounded work per tick.
//!
//! Every tick (default one minute) it purges, per workspace, at most [`PURGE_PER_TICK`]
//! dead letters older than the workspace's `dead_letters_days`, so a backlog of millions
//! drains over several ticks instead of stalling the journal's writer. Finished messages'
//! bodies, inbound events and delivery records live in journal segments; once the oldest
//! data may be older than the shortest `message_bodies_hours` of any workspace, the sweeper
//! asks the journal to compact, which rewrites old segments keeping only live records
//! (unfinished messages, dead letters, idempotency keys without bodies). The decision takes
//! `now` as an argument ([`Sweeper::plan`]) so tests drive it with a simulated clock.

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
    /// Whether to compact the journal now.
    pub compact: bool,
}

/// Sweeper state between ticks.
#[derive(Debug, Default)]
pub struct Sweeper {
    last_compaction_ms: Option<u64>,
}

impl Sweeper {
    /// Decides a tick at `now_ms` for the given workspaces' retention settings.
    ///
    /// Compaction runs at most once per half of the shortest body window (so no body
    /// outlives its window by more than half of it, plus the segment's own age) and at
    /// least a first time after start.
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
        let shortest = workspaces
            .iter()
            .map(|(_, r)| {
                (u64::from(r.message_bodies_hours) * HOUR_MS)
                    .min(u64::from(r.inbound_events_days) * DAY_MS)
                    .min(u64::from(r.delivery_records_days) * DAY_MS)
            })
            .min();
        let compact = match (shortest, self.last_compaction_ms) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(w), Some(last)) => now_ms.saturating_sub(last) >= w / 2,
        };
        if compact {
            self.last_compaction_ms = Some(now_ms);
        }
        Plan {
            dead_letter_cutoffs,
            compact,
        }
    }
}

/// Runs the sweeper until the control plane is dropped.
pub async fn run(control: std::sync::Weak<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeper = Sweeper::default();
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        sweep_once(&control, &mut sweeper, crate::unix_ms()).await;
    }
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
                tracing::info!(target: "waping::audit", action = "retention.sweep", workspace = %ws, dead_letters = n, cutoff_ms = cutoff, "retention purged dead letters");
            }
            Err(e) => {
                tracing::warn!(workspace = %ws, error = %e, "retention sweep of dead letters failed; retrying next tick")
            }
        }
    }
    if plan.compact {
        match journal.compact_now().await {
            Ok(r) => {
                metrics::counter!("waping_retention_compactions_total").increment(1);
                tracing::info!(target: "waping::audit", action = "retention.compact", segments = r.segments_compacted, "retention compaction of the journal");
            }
            Err(e) => tracing::warn!(error = %e, "retention compaction failed; retrying next tick"),
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
        let mut s = Sweeper::default();
        let now = 100 * DAY_MS;
        let p = s.plan(now, &[ws("a", 24, 30), ws("b", 24, 1)]);
        assert_eq!(
            p.dead_letter_cutoffs,
            vec![("a".to_string(), 70 * DAY_MS), ("b".to_string(), 99 * DAY_MS)]
        );
    }

    #[test]
    fn compaction_runs_once_per_half_of_the_shortest_body_window() {
        let mut s = Sweeper::default();
        let list = [ws("a", 24, 30), ws("b", 4, 30)];
        let t0 = 10 * DAY_MS;
        assert!(s.plan(t0, &list).compact, "a first compaction after start");
        assert!(!s.plan(t0 + HOUR_MS, &list).compact);
        assert!(!s.plan(t0 + 2 * HOUR_MS - 1, &list).compact);
        assert!(s.plan(t0 + 2 * HOUR_MS, &list).compact, "half of b's 4 h window");
        assert!(!s.plan(t0 + 3 * HOUR_MS, &list).compact);
        assert!(
            !Sweeper::default().plan(t0, &[]).compact,
            "nothing to keep, nothing to do"
        );
    }
}
