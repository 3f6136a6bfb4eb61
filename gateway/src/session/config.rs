//! `[sessions]`: device session lifecycle timing and the node-wide connect gate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::LifecycleConfig;

/// Device session lifecycle and reconnect discipline.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// First reconnect delay, and the unit of the Fibonacci backoff. Default 1000 ms;
    /// 100..=60 000.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay. Default 900 000 ms (15 min, WhatsApp Web's own cap);
    /// `reconnect_initial_ms`..=86 400 000.
    pub reconnect_max_ms: u64,
    /// Each reconnect delay is scaled by a random factor in `1 ± jitter`, so devices dropped
    /// together do not come back together. Default 0.1; 0.0..=0.5.
    pub reconnect_jitter: f64,
    /// A connection up this long resets the backoff. Default 60 000 ms; 1000..=86 400 000.
    pub stable_after_ms: u64,
    /// A link (QR or pairing code) not confirmed within this ends with "link timed out".
    /// Default 180 000 ms (WhatsApp stops issuing QR refs after about 6 rotations);
    /// 10 000..=3 600 000.
    pub link_timeout_ms: u64,
    /// A connect not confirmed within this counts as failed and backs off. Default 30 000 ms;
    /// 1000..=600 000.
    pub connect_timeout_ms: u64,
    /// Node-wide connects per second, whatever the number of devices: a restart or a mass
    /// disconnect never makes a thundering herd. Default 50; 1..=100 000. At 50/s a node with
    /// 10 000 devices is back in 200 s; raise it with the node's size.
    pub connect_rate_per_second: u32,
    /// Connects allowed at once before the rate applies. Default 50; 1..=100 000.
    pub connect_burst: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            reconnect_initial_ms: 1000,
            reconnect_max_ms: 900_000,
            reconnect_jitter: 0.1,
            stable_after_ms: 60_000,
            link_timeout_ms: 180_000,
            connect_timeout_ms: 30_000,
            connect_rate_per_second: 50,
            connect_burst: 50,
        }
    }
}

impl SessionsConfig {
    /// Appends every violation, each with its path.
    pub fn validate(&self, p: &mut Vec<String>) {
        let mut range = |path: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                p.push(format!("sessions.{path}: {v} is outside {lo}..={hi}"));
            }
        };
        range("reconnect_initial_ms", self.reconnect_initial_ms, 100, 60_000);
        range(
            "reconnect_max_ms",
            self.reconnect_max_ms,
            self.reconnect_initial_ms,
            86_400_000,
        );
        range("stable_after_ms", self.stable_after_ms, 1000, 86_400_000);
        range("link_timeout_ms", self.link_timeout_ms, 10_000, 3_600_000);
        range("connect_timeout_ms", self.connect_timeout_ms, 1000, 600_000);
        range(
            "connect_rate_per_second",
            self.connect_rate_per_second.into(),
            1,
            100_000,
        );
        range("connect_burst", self.connect_burst.into(), 1, 100_000);
        if !(0.0..=0.5).contains(&self.reconnect_jitter) {
            p.push(format!(
                "sessions.reconnect_jitter: {} is outside 0.0..=0.5",
                self.reconnect_jitter
            ));
        }
    }

    /// The lifecycle's timing.
    pub fn lifecycle(&self) -> LifecycleConfig {
        LifecycleConfig {
            reconnect_initial: Duration::from_millis(self.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            reconnect_jitter: self.reconnect_jitter,
            stable_after: Duration::from_millis(self.stable_after_ms),
            link_timeout: Duration::from_millis(self.link_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        }
    }

    /// The connect gate's quota: the configured rate less 1 %, and the configured burst.
    ///
    /// The gate keeps `burst + rate·T` exactly on its own clock, but what WhatsApp (or the
    /// simulator) observes is shifted by scheduling and network jitter: a storm test at
    /// 500/s + 100 saw 601 in one second. One percent of headroom absorbs that jitter so the
    /// configured number holds as a cap on what the other side sees.
    pub fn gate_quota(&self) -> Result<crate::limiter::Quota, crate::limiter::QuotaError> {
        let per_100s = u32::try_from(u64::from(self.connect_rate_per_second) * 99).unwrap_or(u32::MAX);
        crate::limiter::Quota::new(per_100s, Duration::from_secs(100), self.connect_burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_keeps_one_percent_of_headroom() {
        let c = SessionsConfig {
            connect_rate_per_second: 500,
            connect_burst: 100,
            ..Default::default()
        };
        let q = c.gate_quota().unwrap();
        assert_eq!(q.burst(), 100);
        // 1 / (0.99 · 500) s, rounded up (the limiter never rounds in the caller's favour).
        assert_eq!(q.interval().as_nanos(), 2_020_203);
        let one = SessionsConfig {
            connect_rate_per_second: 1,
            connect_burst: 1,
            ..Default::default()
        };
        assert!(one.gate_quota().unwrap().interval() > Duration::from_secs(1));
    }
}
