//! `[webhooks]`: the SSRF policy, timeouts, retry schedule and concurrency of deliveries.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Webhook delivery settings (`[webhooks]`). Endpoints themselves are managed through the API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow `http://` endpoint URLs. Default false: deliveries carry message contents and
    /// signatures, so they go over TLS unless the operator decides otherwise.
    pub allow_http: bool,
    /// Networks (CIDR) endpoints may resolve to although they are loopback, private,
    /// link-local, … (the SSRF guard refuses those by default, and the metadata address).
    /// Default empty. Example: `["10.20.0.0/16"]` for an internal receiver.
    pub allow_networks: Vec<String>,
    /// One delivery attempt, connect to response headers. Default 15 000 ms; 1000..=120 000.
    /// A receiver should answer fast and work asynchronously.
    pub request_timeout_ms: u64,
    /// Delays before each attempt after the first, seconds. Default the Standard Webhooks
    /// schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts over ~28 h);
    /// 1..=20 entries, each ≤ 86 400. Each delay gets ±20 % jitter.
    pub retry_schedule_s: Vec<u64>,
    /// Attempts after which a 4xx answer (other than 408, 410, 425, 429) ends the delivery.
    /// Default 3; 1..=20. A misconfigured endpoint gets a few chances, not a day of retries.
    pub permanent_after: u32,
    /// Deliveries in flight per endpoint. Default 8; 1..=256. One slow endpoint holds at most
    /// this many connections and never delays another endpoint.
    pub max_concurrency: u32,
    /// Extra CA certificates (PEM) trusted for https endpoints, beside the public roots.
    /// Default none.
    pub extra_ca_file: Option<PathBuf>,
    /// How long events are kept once every endpoint of their workspace has passed them, for
    /// live subscribers to resume. Default 72 h; 1..=8760. A workspace's own retention
    /// windows delete its events sooner (docs/events.md, "Storage and retention").
    pub event_retention_hours: u32,
    /// Consecutive failed attempts that open an endpoint's circuit breaker (a 429/502/503/504
    /// opens it at once). Default 5; 1..=100.
    pub breaker_failures: u32,
    /// First cool-down of an open breaker, doubling while failures go on (to 10 min).
    /// Default 30 000 ms; 100..=3 600 000. While open, the endpoint gets one probe at a time.
    pub breaker_cooldown_ms: u64,
    /// Store every event of every workspace, not only those an endpoint wants. Default true:
    /// live subscribers (WebSocket, QUIC) resume from a cursor after a disconnect they did
    /// not plan, which needs the events they missed on disk. False stores only what
    /// endpoints (and automations) are owed, and subscribers then resume only over those.
    pub log_all_events: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_http: false,
            allow_networks: Vec::new(),
            request_timeout_ms: 15_000,
            retry_schedule_s: vec![5, 300, 1800, 7200, 18_000, 36_000, 36_000],
            permanent_after: 3,
            max_concurrency: 8,
            extra_ca_file: None,
            event_retention_hours: 72,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            log_all_events: true,
        }
    }
}

impl WebhooksConfig {
    /// Every problem, each with its path under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        for (i, n) in self.allow_networks.iter().enumerate() {
            if let Err(e) = n.parse::<waping_webhooks::Cidr>() {
                p.push(format!("{at}.allow_networks[{i}]: {e}"));
            }
        }
        if !(1000..=120_000).contains(&self.request_timeout_ms) {
            p.push(format!(
                "{at}.request_timeout_ms: {} is outside 1000..=120000",
                self.request_timeout_ms
            ));
        }
        if self.retry_schedule_s.is_empty() || self.retry_schedule_s.len() > 20 {
            p.push(format!("{at}.retry_schedule_s: 1 to 20 delays"));
        }
        if let Some(v) = self.retry_schedule_s.iter().find(|v| **v > 86_400) {
            p.push(format!("{at}.retry_schedule_s: {v} is above 86400"));
        }
        if !(1..=20).contains(&self.permanent_after) {
            p.push(format!(
                "{at}.permanent_after: {} is outside 1..=20",
                self.permanent_after
            ));
        }
        if !(1..=256).contains(&self.max_concurrency) {
            p.push(format!(
                "{at}.max_concurrency: {} is outside 1..=256",
                self.max_concurrency
            ));
        }
        if !(1..=8760).contains(&self.event_retention_hours) {
            p.push(format!(
                "{at}.event_retention_hours: {} is outside 1..=8760",
                self.event_retention_hours
            ));
        }
        if !(1..=100).contains(&self.breaker_failures) {
            p.push(format!(
                "{at}.breaker_failures: {} is outside 1..=100",
                self.breaker_failures
            ));
        }
        if !(100..=3_600_000).contains(&self.breaker_cooldown_ms) {
            p.push(format!(
                "{at}.breaker_cooldown_ms: {} is outside 100..=3600000",
                self.breaker_cooldown_ms
            ));
        }
        p
    }

    /// The circuit breaker settings of every endpoint.
    pub fn breaker(&self) -> waping_webhooks::BreakerConfig {
        waping_webhooks::BreakerConfig {
            failure_threshold: self.breaker_failures,
            base_cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            ..Default::default()
        }
    }

    /// The SSRF policy.
    pub fn policy(&self) -> waping_webhooks::Policy {
        waping_webhooks::Policy {
            allow_http: self.allow_http,
            allow: self
                .allow_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }

    /// The retry schedule: the first attempt at once, then the configured delays.
    pub fn schedule(&self) -> Result<waping_webhooks::Schedule, waping_webhooks::ScheduleError> {
        let mut delays = vec![Duration::ZERO];
        delays.extend(self.retry_schedule_s.iter().map(|s| Duration::from_secs(*s)));
        waping_webhooks::Schedule::new(delays)?.with_permanent_after(self.permanent_after)
    }
}
