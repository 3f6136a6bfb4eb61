//! Per-endpoint circuit breaker.
//!
//! Retries are per message; the breaker is per endpoint. Without it an endpoint that is
//! down gets every queued message's attempt, each costing a connect timeout, and comes
//! back up to a thundering herd. With it: after [`BreakerConfig::failure_threshold`]
//! consecutive failures, or at once when the endpoint says it is overloaded (429/502/503/
//! 504), the breaker opens and nothing is sent for a cool-down; then one probe goes
//! through (half-open); its success closes the breaker, its failure reopens it for twice
//! as long, up to [`BreakerConfig::max_cooldown`]. Times are unix milliseconds passed in
//! by the caller.

use std::time::Duration;

use serde::Serialize;

/// Default consecutive failures that open the breaker: enough that one flaky request or a
/// deploy's blip does not pause an endpoint, few enough that a dead one stops costing
/// timeouts quickly.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;

/// Default first cool-down: 30 s, about one deploy or restart of the receiver.
pub const DEFAULT_BASE_COOLDOWN: Duration = Duration::from_secs(30);

/// Default longest cool-down: 10 minutes, so a recovered endpoint waits at most that long
/// for its first probe.
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(10 * 60);

/// Default cap on how long a slow-down signal (`Retry-After`) may hold the breaker open: an
/// hour, a maintenance window; longer requests are the schedule's business, per message.
pub const DEFAULT_MAX_SLOW_DOWN: Duration = Duration::from_secs(3600);

/// Default time after which a half-open probe that never reported is presumed lost (its
/// task cancelled) and another is let through. Longer than any delivery timeout.
pub const DEFAULT_PROBE_LEASE: Duration = Duration::from_secs(120);

/// Breaker settings. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (at least 1; 0 counts as 1).
    pub failure_threshold: u32,
    /// Length of the first opening; each failed probe doubles it.
    pub base_cooldown: Duration,
    /// Longest opening from doubling.
    pub max_cooldown: Duration,
    /// Longest opening a slow-down signal can ask for.
    pub max_slow_down: Duration,
    /// How long a half-open probe may stay unreported before another is allowed.
    pub probe_lease: Duration,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            base_cooldown: DEFAULT_BASE_COOLDOWN,
            max_cooldown: DEFAULT_MAX_COOLDOWN,
            max_slow_down: DEFAULT_MAX_SLOW_DOWN,
            probe_lease: DEFAULT_PROBE_LEASE,
        }
    }
}

/// Where the breaker stands (for the worker, and for showing in the endpoint's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Deliveries flow; `consecutive_failures` so far.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// Nothing is sent until `until_ms`.
    Open {
        /// Unix ms when a probe will be allowed.
        until_ms: u64,
    },
    /// One probe is out since `probe_since_ms`; nothing else is sent until it reports.
    HalfOpen {
        /// Unix ms when the probe was allowed.
        probe_since_ms: u64,
    },
}

/// One endpoint's breaker. In memory; after a restart every endpoint starts closed, which
/// costs at most `failure_threshold` attempts to find out again.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    /// Length of the next opening.
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cooldown: cfg.base_cooldown,
            cfg,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The length of the next opening (the base cool-down, doubled by each failed probe).
    pub fn next_cooldown(&self) -> Duration {
        self.cooldown
    }

    /// When an open breaker will let a probe through; `None` unless open. A worker can
    /// sleep until then instead of polling [`Breaker::allow`].
    pub fn open_until(&self) -> Option<u64> {
        match self.state {
            BreakerState::Open { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    /// Whether an attempt may be sent at `now_ms`. Closed: yes. Open: no until the
    /// cool-down ends; then yes once, as the half-open probe. Half-open: no while the probe
    /// is out (unless its lease ran out: a lost probe must not wedge the endpoint). Every
    /// `true` must be followed by [`Breaker::on_success`] or [`Breaker::on_failure`].
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen {
                    probe_since_ms: now_ms,
                };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probe_since_ms }
                if now_ms >= probe_since_ms.saturating_add(millis(self.cfg.probe_lease)) =>
            {
                self.state = BreakerState::HalfOpen {
                    probe_since_ms: now_ms,
                };
                true
            }
            BreakerState::HalfOpen { .. } => false,
        }
    }

    /// A delivery succeeded (2xx): close and forget past cool-downs.
    pub fn on_success(&mut self, _now_ms: u64) {
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
        self.cooldown = self.cfg.base_cooldown;
    }

    /// A delivery failed at `now_ms`. `slow_down` is `Some` when the endpoint asked to slow
    /// down ([`crate::Verdict::SlowDown`]); it holds its `Retry-After` (zero if none), which
    /// can lengthen the opening up to [`BreakerConfig::max_slow_down`].
    ///
    /// Closed: counts the failure and opens at the threshold, or at once on a slow-down.
    /// Half-open: the probe failed; reopens, for longer. Open: a late answer to a request
    /// sent before it opened; only a slow-down extends the opening.
    pub fn on_failure(&mut self, now_ms: u64, slow_down: Option<Duration>) {
        match self.state {
            BreakerState::Closed { consecutive_failures } => {
                let n = consecutive_failures.saturating_add(1);
                if slow_down.is_some() || n >= self.cfg.failure_threshold.max(1) {
                    self.open(now_ms, slow_down);
                } else {
                    self.state = BreakerState::Closed {
                        consecutive_failures: n,
                    };
                }
            }
            BreakerState::HalfOpen { .. } => self.open(now_ms, slow_down),
            BreakerState::Open { until_ms } => {
                if let Some(d) = slow_down {
                    let asked = now_ms.saturating_add(millis(d.min(self.cfg.max_slow_down)));
                    self.state = BreakerState::Open {
                        until_ms: until_ms.max(asked),
                    };
                }
            }
        }
    }

    fn open(&mut self, now_ms: u64, slow_down: Option<Duration>) {
        let asked = slow_down.unwrap_or_default().min(self.cfg.max_slow_down);
        let length = self.cooldown.max(asked);
        self.state = BreakerState::Open {
            until_ms: now_ms.saturating_add(millis(length)),
        };
        self.cooldown = self.cooldown.saturating_mul(2).min(self.cfg.max_cooldown);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const S: u64 = 1000;

    fn closed(n: u32) -> BreakerState {
        BreakerState::Closed {
            consecutive_failures: n,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = Breaker::new(BreakerConfig::default());
        let mut now = T0;
        for n in 1..=4 {
            assert!(b.allow(now));
            b.on_failure(now, None);
            assert_eq!(b.state(), closed(n));
            now += S;
        }
        // A success in between resets the count.
        b.on_success(now);
        assert_eq!(b.state(), closed(0));
        for _ in 0..4 {
            b.on_failure(now, None);
        }
        assert_eq!(b.state(), closed(4));
        b.on_failure(now, None);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until_ms: now + 30 * S
            }
        );
        assert_eq!(b.open_until(), Some(now + 30 * S));
        assert!(!b.allow(now));
        assert!(!b.allow(now + 30 * S - 1));
    }

    #[test]
    fn half_open_lets_one_probe_and_success_closes() {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.on_failure(T0, None);
        }
        let t = T0 + 30 * S;
        assert!(b.allow(t), "the cool-down is over: a probe");
        assert_eq!(b.state(), BreakerState::HalfOpen { probe_since_ms: t });
        assert!(!b.allow(t), "only one probe");
        assert!(!b.allow(t + 60 * S));
        b.on_success(t + 61 * S);
        assert_eq!(b.state(), closed(0));
        assert!(b.allow(t + 61 * S));
        assert_eq!(b.next_cooldown(), DEFAULT_BASE_COOLDOWN);
    }

    #[test]
    fn failed_probes_double_the_cool_down_up_to_the_cap() {
        let mut b = Breaker::new(BreakerConfig::default());
        let mut now = T0;
        for _ in 0..5 {
            b.on_failure(now, None);
        }
        let mut lengths = vec![b.open_until().unwrap() - now];
        for _ in 0..7 {
            now = b.open_until().unwrap();
            assert!(b.allow(now));
            b.on_failure(now, None);
            lengths.push(b.open_until().unwrap() - now);
        }
        assert_eq!(
            lengths,
            [
                30 * S,
                60 * S,
                120 * S,
                240 * S,
                480 * S,
                600 * S,
                600 * S,
                600 * S
            ]
        );
        // A successful probe resets the growth.
        now = b.open_until().unwrap();
        assert!(b.allow(now));
        b.on_success(now);
        for _ in 0..5 {
            b.on_failure(now, None);
        }
        assert_eq!(b.open_until(), Some(now + 30 * S));
    }

    #[test]
    fn slow_down_opens_at_once_for_at_least_retry_after() {
        let mut b = Breaker::new(BreakerConfig::default());
        b.on_failure(T0, Some(Duration::ZERO));
        assert_eq!(b.open_until(), Some(T0 + 30 * S), "no Retry-After: the cool-down");

        let mut b = Breaker::new(BreakerConfig::default());
        b.on_failure(T0, Some(Duration::from_secs(300)));
        assert_eq!(b.open_until(), Some(T0 + 300 * S));

        let mut b = Breaker::new(BreakerConfig::default());
        b.on_failure(T0, Some(Duration::from_secs(86_400)));
        assert_eq!(b.open_until(), Some(T0 + 3600 * S), "capped at max_slow_down");

        // A short Retry-After does not shorten the cool-down.
        let mut b = Breaker::new(BreakerConfig::default());
        b.on_failure(T0, Some(Duration::from_secs(1)));
        assert_eq!(b.open_until(), Some(T0 + 30 * S));
    }

    #[test]
    fn late_answers_while_open() {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.on_failure(T0, None);
        }
        // Plain failures of requests sent before the opening change nothing.
        b.on_failure(T0 + 10 * S, None);
        assert_eq!(b.open_until(), Some(T0 + 30 * S));
        // A slow-down extends it, never shortens.
        b.on_failure(T0 + 10 * S, Some(Duration::from_secs(120)));
        assert_eq!(b.open_until(), Some(T0 + 130 * S));
        b.on_failure(T0 + 11 * S, Some(Duration::from_secs(1)));
        assert_eq!(b.open_until(), Some(T0 + 130 * S));
        // A late success is evidence the endpoint works.
        b.on_success(T0 + 12 * S);
        assert_eq!(b.state(), closed(0));
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(cfg);
        b.on_failure(T0, None);
        let t = T0 + 30 * S;
        assert!(b.allow(t));
        // The probe's task was cancelled and never reported.
        assert!(!b.allow(t + 119 * S));
        assert!(b.allow(t + 120 * S), "lease over: another probe");
        assert!(!b.allow(t + 121 * S));
        b.on_failure(t + 125 * S, None);
        assert_eq!(b.open_until(), Some(t + 125 * S + 60 * S));
    }

    #[test]
    fn threshold_zero_counts_as_one() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            ..BreakerConfig::default()
        });
        b.on_failure(T0, None);
        assert!(b.open_until().is_some());
    }

    #[test]
    fn state_serialises_for_status_pages() {
        let s = serde_json::to_string(&BreakerState::Open { until_ms: 5 }).unwrap();
        assert_eq!(s, r#"{"state":"open","until_ms":5}"#);
    }
}
