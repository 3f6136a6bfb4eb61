//! Matching and loop protection: pure (time comes in as `now_ms`), cheap on the inbound
//! path (one `ArcSwap` load; a workspace without rules costs one map lookup).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::rules::{Compiled, sender_key};

/// How long an automated text is remembered: the same text arriving at a device of the
/// workspace within this time is the gateway's own automated message coming back.
pub const ECHO_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Most (rule, device, sender) windows kept; past it, expired ones are dropped and, if
/// still full, new ones are refused (suppressed) rather than memory growing.
pub const MAX_WINDOWS: usize = 100_000;
/// Most remembered automated texts.
pub const MAX_ECHOES: usize = 100_000;

/// One inbound message as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// Workspace id.
    pub workspace: &'a str,
    /// Device it arrived at.
    pub device: &'a str,
    /// Sender as WhatsApp gave it.
    pub sender: &'a str,
    /// Text (or a media caption; empty without).
    pub text: &'a str,
}

/// Why a matching rule did not act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The message is an automated message of this gateway (an auto-reply or forward seen
    /// again at one of the workspace's devices).
    Echo,
    /// The rule acted `limit.max` times for this (device, sender) within its window.
    LoopLimit,
    /// The loop guard is at its memory bound.
    GuardFull,
}

impl Suppressed {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Suppressed::Echo => "echo",
            Suppressed::LoopLimit => "loop_limit",
            Suppressed::GuardFull => "guard_full",
        }
    }
}

/// What the engine decided for one matching rule.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Run the rule's actions.
    Act(Arc<Compiled>),
    /// The rule matched but must not act.
    Suppressed(Arc<Compiled>, Suppressed),
}

/// Counters of one rule since the node started (shown by the API).
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Messages that matched.
    pub matched: AtomicU64,
    /// Matches suppressed by loop protection.
    pub suppressed: AtomicU64,
    /// Actions done.
    pub done: AtomicU64,
    /// Sends refused by admission (rate limit, pacing, quota, device state).
    pub refused: AtomicU64,
    /// Actions that failed otherwise (journal, webhook store, control store).
    pub failed: AtomicU64,
    /// The id of the last message the rule sent.
    last_message: Mutex<Option<String>>,
}

impl RuleStats {
    /// Records the id of a message the rule sent.
    pub fn set_last_message(&self, id: String) {
        *self.last_message.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// The id of the last message the rule sent, if any since the start.
    pub fn last_message(&self) -> Option<String> {
        self.last_message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug, Default)]
struct Guard {
    windows: HashMap<(String, String, String), VecDeque<u64>>,
    echoes: HashMap<u64, u64>,
}

/// The rules of every workspace and the loop guard.
#[derive(Debug, Default)]
pub struct Engine {
    rules: ArcSwap<HashMap<String, Arc<Vec<Arc<Compiled>>>>>,
    guard: Mutex<Guard>,
    stats: dashmap::DashMap<String, Arc<RuleStats>>,
}

fn echo_key(workspace: &str, text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    workspace.hash(&mut h);
    text.trim().hash(&mut h);
    h.finish()
}

impl Engine {
    /// Replaces a workspace's enabled rules (hot-applied: the next message sees them).
    pub fn set_workspace(&self, workspace: &str, rules: Vec<Arc<Compiled>>) {
        self.rules.rcu(|cur| {
            let mut next = HashMap::clone(cur);
            if rules.is_empty() {
                next.remove(workspace);
            } else {
                next.insert(workspace.to_string(), Arc::new(rules.clone()));
            }
            next
        });
    }

    /// Whether the workspace has any enabled rule.
    pub fn has_rules(&self, workspace: &str) -> bool {
        self.rules.load().contains_key(workspace)
    }

    /// A rule's counters.
    pub fn stats(&self, rule_id: &str) -> Arc<RuleStats> {
        self.stats.entry(rule_id.to_string()).or_default().clone()
    }

    /// Forgets a deleted rule's counters.
    pub fn forget(&self, rule_id: &str) {
        self.stats.remove(rule_id);
    }

    /// Remembers an automated text sent from `workspace`, so it is not answered if it comes
    /// back to one of the workspace's devices.
    pub fn note_sent(&self, workspace: &str, text: &str, now_ms: u64) {
        let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if g.echoes.len() >= MAX_ECHOES {
            g.echoes.retain(|_, until| *until > now_ms);
        }
        if g.echoes.len() < MAX_ECHOES {
            g.echoes
                .insert(echo_key(workspace, text), now_ms + ECHO_WINDOW_MS);
        }
    }

    /// The decisions for every enabled rule of the message's workspace that matches, in rule
    /// order; a rule allowed to act has its action counted in its window.
    pub fn evaluate(&self, m: Inbound<'_>, now_ms: u64) -> Vec<Decision> {
        let all = self.rules.load();
        let Some(rules) = all.get(m.workspace) else {
            return Vec::new();
        };
        let key = sender_key(m.sender);
        let lower = m.text.to_lowercase();
        let matched: Vec<&Arc<Compiled>> = rules
            .iter()
            .filter(|r| r.matches(m.device, &key, m.text, &lower))
            .collect();
        if matched.is_empty() {
            return Vec::new();
        }
        let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        let echo = g
            .echoes
            .get(&echo_key(m.workspace, m.text))
            .is_some_and(|until| *until > now_ms);
        let mut out = Vec::with_capacity(matched.len());
        for r in matched {
            self.stats(&r.id).matched.fetch_add(1, Ordering::Relaxed);
            let d = if echo {
                Decision::Suppressed(r.clone(), Suppressed::Echo)
            } else {
                match g.admit(&r.id, m.device, &key, r.limit.max, r.limit.window_s, now_ms) {
                    Ok(()) => Decision::Act(r.clone()),
                    Err(why) => Decision::Suppressed(r.clone(), why),
                }
            };
            if let Decision::Suppressed(..) = d {
                self.stats(&r.id).suppressed.fetch_add(1, Ordering::Relaxed);
            }
            out.push(d);
        }
        out
    }
}

impl Guard {
    fn admit(
        &mut self,
        rule: &str,
        device: &str,
        sender: &str,
        max: u32,
        window_s: u32,
        now_ms: u64,
    ) -> Result<(), Suppressed> {
        let window_ms = u64::from(window_s) * 1000;
        let k = (rule.to_string(), device.to_string(), sender.to_string());
        if !self.windows.contains_key(&k) && self.windows.len() >= MAX_WINDOWS {
            // Windows are at most a day long: drop those with nothing left in the last day.
            self.windows
                .retain(|_, q| q.back().is_some_and(|t| t + 86_400_000 > now_ms));
            if self.windows.len() >= MAX_WINDOWS {
                return Err(Suppressed::GuardFull);
            }
        }
        let q = self.windows.entry(k).or_default();
        while q.front().is_some_and(|t| t + window_ms <= now_ms) {
            q.pop_front();
        }
        if q.len() >= max as usize {
            return Err(Suppressed::LoopLimit);
        }
        q.push_back(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automations::rules::RuleSpec;

    fn rule(id: &str, v: serde_json::Value) -> Arc<Compiled> {
        let s: RuleSpec = serde_json::from_value(v).unwrap();
        Arc::new(Compiled::new(id, &s).unwrap())
    }

    fn msg<'a>(ws: &'a str, sender: &'a str, text: &'a str) -> Inbound<'a> {
        Inbound {
            workspace: ws,
            device: "d1",
            sender,
            text,
        }
    }

    fn acts(d: &[Decision]) -> Vec<String> {
        d.iter()
            .map(|d| match d {
                Decision::Act(r) => format!("{}:act", r.id),
                Decision::Suppressed(r, why) => format!("{}:{}", r.id, why.label()),
            })
            .collect()
    }

    #[test]
    fn loop_limit_suppresses_the_n_plus_first_within_the_window_with_a_simulated_clock() {
        let e = Engine::default();
        e.set_workspace(
            "w",
            vec![rule(
                "r1",
                serde_json::json!({"name": "r", "match": {"keywords": ["hi"]},
                    "actions": [{"type": "reply", "template": "hello"}],
                    "limit": {"max": 2, "window_s": 60}}),
            )],
        );
        let t0 = 1_000_000;
        assert_eq!(acts(&e.evaluate(msg("w", "+491", "hi"), t0)), ["r1:act"]);
        assert_eq!(acts(&e.evaluate(msg("w", "+491", "hi"), t0 + 1000)), ["r1:act"]);
        assert_eq!(
            acts(&e.evaluate(msg("w", "+491", "hi"), t0 + 2000)),
            ["r1:loop_limit"]
        );
        // Another sender has its own window; the same sender written differently does not.
        assert_eq!(acts(&e.evaluate(msg("w", "+492", "hi"), t0 + 2000)), ["r1:act"]);
        assert_eq!(
            acts(&e.evaluate(msg("w", "49 1", "hi"), t0 + 3000)),
            ["r1:loop_limit"]
        );
        // The first action leaves the window after 60 s: one more is allowed, then not.
        assert_eq!(acts(&e.evaluate(msg("w", "+491", "hi"), t0 + 60_000)), ["r1:act"]);
        assert_eq!(
            acts(&e.evaluate(msg("w", "+491", "hi"), t0 + 60_500)),
            ["r1:loop_limit"]
        );
        let st = e.stats("r1");
        assert_eq!(st.matched.load(Ordering::Relaxed), 7);
        assert_eq!(st.suppressed.load(Ordering::Relaxed), 3);
        // No match, no decision; other workspaces see nothing.
        assert!(e.evaluate(msg("w", "+491", "bye"), t0).is_empty());
        assert!(e.evaluate(msg("other", "+491", "hi"), t0).is_empty());
    }

    #[test]
    fn an_automated_text_coming_back_is_never_answered_until_the_echo_window_ends() {
        let e = Engine::default();
        e.set_workspace(
            "w",
            vec![rule(
                "r1",
                serde_json::json!({"name": "r", "match": {"regex": "(?i)thanks"},
                    "actions": [{"type": "reply", "template": "Thanks for writing!"}],
                    "limit": {"max": 100, "window_s": 60}}),
            )],
        );
        let t0 = 5_000;
        e.note_sent("w", "Thanks for writing!", t0);
        assert_eq!(
            acts(&e.evaluate(msg("w", "+1", "Thanks for writing!"), t0 + 10)),
            ["r1:echo"]
        );
        // Another workspace's automated text is not this workspace's echo.
        e.set_workspace(
            "v",
            vec![rule(
                "r2",
                serde_json::json!({"name": "r", "actions": [{"type": "tag", "tags": ["x"]}]}),
            )],
        );
        assert_eq!(
            acts(&e.evaluate(msg("v", "+1", "Thanks for writing!"), t0 + 10)),
            ["r2:act"]
        );
        assert_eq!(
            acts(&e.evaluate(msg("w", "+1", "Thanks for writing!"), t0 + ECHO_WINDOW_MS)),
            ["r1:act"]
        );
        // Rules removed: hot-applied.
        e.set_workspace("w", Vec::new());
        assert!(!e.has_rules("w"));
        assert!(e.evaluate(msg("w", "+1", "thanks"), t0).is_empty());
    }

    #[test]
    fn the_guard_is_bounded() {
        let mut g = Guard::default();
        for i in 0..MAX_WINDOWS {
            g.admit("r", "d", &i.to_string(), 1, 10, 0).unwrap();
        }
        assert_eq!(g.admit("r", "d", "new", 1, 10, 1000), Err(Suppressed::GuardFull));
        // A day later the old windows are dropped and new ones fit again.
        assert_eq!(g.admit("r", "d", "new", 1, 10, 86_400_001), Ok(()));
        assert_eq!(g.windows.len(), 1);
    }
}
