//! `[api]`, `[security]`, `[quotas]` and `[retention]`: the control plane's settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The HTTP/JSON control plane (and send API).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the HTTP API. Default true.
    pub enabled: bool,
    /// TCP address. Default `127.0.0.1:7402` (7401 is the load harness simulator's): loopback until the operator decides to expose it.
    pub listen: SocketAddr,
    /// `https` (default; the QUIC listener's certificate) or `http`. Plain HTTP is refused
    /// unless `listen` is a loopback address: keys must never cross a network in clear.
    pub scheme: Scheme,
    /// Node-admin token file (workspace management). Default: none, then
    /// `$CREDENTIALS_DIRECTORY/admin-token` if it exists; without either, admin routes answer 401.
    /// Never put the token itself in this file.
    pub admin_token_file: Option<PathBuf>,
    /// Largest request body, bytes. Default 1 MiB; 1 KiB..=64 MiB. Larger bodies get 413.
    pub max_body_bytes: u32,
    /// Most messages in one batch send. Default 100; 1..=10 000.
    pub max_batch: u32,
    /// Most items in one page of a list. Default 100, requests may ask for up to `max_page`;
    /// 1..=10 000.
    pub max_page: u32,
    /// Requests per second per API key (token bucket). Default 50; 1..=1 000 000.
    pub key_rate_per_second: u32,
    /// Burst per API key. Default 100.
    pub key_burst: u32,
    /// Requests per second per source address, authenticated or not. Default 100.
    pub source_rate_per_second: u32,
    /// Burst per source address. Default 200.
    pub source_burst: u32,
    /// Failed authentications allowed per source address per minute (HTTP and QUIC
    /// together) before the source is refused with AUTH_THROTTLED. Default 10; 1..=10 000.
    pub auth_failures_per_minute: u32,
}

/// HTTP API transport.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// TLS (rustls).
    Https,
    /// Clear text, loopback only.
    Http,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            scheme: Scheme::Https,
            admin_token_file: None,
            max_body_bytes: 1 << 20,
            max_batch: 100,
            max_page: 100,
            key_rate_per_second: 50,
            key_burst: 100,
            source_rate_per_second: 100,
            source_burst: 200,
            auth_failures_per_minute: 10,
        }
    }
}

/// Encryption at rest.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Master key file (32 bytes as 64 hex characters, base64 or raw; mode 0600 or
    /// stricter, else the gateway refuses to start). Default: none, then
    /// `$CREDENTIALS_DIRECTORY/master-key` (systemd `LoadCredential=`) if it exists, else a
    /// key generated once in `state_dir/master.key` with a warning: that keeps data
    /// encrypted but beside its key, so production nodes set this or use the credential.
    pub master_key_file: Option<PathBuf>,
}

/// Per-workspace quotas (defaults for workspaces the API creates; each may override).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Devices per workspace. Default 100; 0..=100 000.
    #[schema(maximum = 100_000)]
    pub max_devices: u32,
    /// Live API keys per workspace. Default 50; 1..=10 000.
    #[schema(minimum = 1, maximum = 10_000)]
    pub max_keys: u32,
    /// Webhook endpoints per workspace (enforced by the webhook API). Default 10; 0..=1000.
    #[schema(maximum = 1000)]
    pub max_webhooks: u32,
    /// Messages queued in the workspace's device queues before new sends get
    /// WORKSPACE_QUEUE_FULL. Default 100 000; 1..=100 000 000. Counted once a second (the
    /// check is one atomic load per send), so a burst may pass it by up to a second of
    /// traffic; messages waiting in the retry queue are not counted.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub max_queued_messages: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_devices: 100,
            max_keys: 50,
            max_webhooks: 10,
            max_queued_messages: 100_000,
        }
    }
}

/// How long data is kept (defaults for every workspace; each may override through the API).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Hours a finished message's body may stay in the journal before compaction must
    /// have removed it. Default 24; 1..=8760.
    #[schema(minimum = 1, maximum = 8760)]
    pub message_bodies_hours: u32,
    /// Days a delivery record (message status) stays queryable. Default 7; 1..=365.
    #[schema(minimum = 1, maximum = 365)]
    pub delivery_records_days: u32,
    /// Days an inbound event is kept. Default 7; 1..=365.
    #[schema(minimum = 1, maximum = 365)]
    pub inbound_events_days: u32,
    /// Days a dead letter is kept before the sweeper purges it. Default 30; 1..=365.
    #[schema(minimum = 1, maximum = 365)]
    pub dead_letters_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            message_bodies_hours: 24,
            delivery_records_days: 7,
            inbound_events_days: 7,
            dead_letters_days: 30,
        }
    }
}

impl Retention {
    /// Names of the fields that differ in `new` (for the audit record of a change).
    pub fn changed_fields(&self, new: &Retention) -> Vec<String> {
        let mut v = Vec::new();
        for (name, a, b) in [
            (
                "message_bodies_hours",
                self.message_bodies_hours,
                new.message_bodies_hours,
            ),
            (
                "delivery_records_days",
                self.delivery_records_days,
                new.delivery_records_days,
            ),
            (
                "inbound_events_days",
                self.inbound_events_days,
                new.inbound_events_days,
            ),
            ("dead_letters_days", self.dead_letters_days, new.dead_letters_days),
        ] {
            if a != b {
                v.push(name.to_owned());
            }
        }
        v
    }

    /// Range problems, each with its path under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |name: &str, v: u32, lo: u32, hi: u32| {
            if !(lo..=hi).contains(&v) {
                p.push(format!("{at}.{name}: {v} is out of range {lo}..={hi}"));
            }
        };
        check("message_bodies_hours", self.message_bodies_hours, 1, 8760);
        check("delivery_records_days", self.delivery_records_days, 1, 365);
        check("inbound_events_days", self.inbound_events_days, 1, 365);
        check("dead_letters_days", self.dead_letters_days, 1, 365);
        p
    }
}

impl Quotas {
    /// Range problems, each with its path under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_devices > 100_000 {
            p.push(format!(
                "{at}.max_devices: {} is out of range 0..=100000",
                self.max_devices
            ));
        }
        if !(1..=10_000).contains(&self.max_keys) {
            p.push(format!(
                "{at}.max_keys: {} is out of range 1..=10000",
                self.max_keys
            ));
        }
        if !(1..=100_000_000).contains(&self.max_queued_messages) {
            p.push(format!(
                "{at}.max_queued_messages: {} is out of range 1..=100000000",
                self.max_queued_messages
            ));
        }
        if self.max_webhooks > 1000 {
            p.push(format!(
                "{at}.max_webhooks: {} is out of range 0..=1000",
                self.max_webhooks
            ));
        }
        p
    }
}

impl ApiConfig {
    /// Range and safety problems, each with its path.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |name: &str, v: u32, lo: u32, hi: u32| {
            if !(lo..=hi).contains(&v) {
                p.push(format!("api.{name}: {v} is out of range {lo}..={hi}"));
            }
        };
        check("max_body_bytes", self.max_body_bytes, 1024, 64 << 20);
        check("max_batch", self.max_batch, 1, 10_000);
        check("max_page", self.max_page, 1, 10_000);
        check("key_rate_per_second", self.key_rate_per_second, 1, 1_000_000);
        check("key_burst", self.key_burst, 1, 1_000_000);
        check(
            "source_rate_per_second",
            self.source_rate_per_second,
            1,
            1_000_000,
        );
        check("source_burst", self.source_burst, 1, 1_000_000);
        check(
            "auth_failures_per_minute",
            self.auth_failures_per_minute,
            1,
            10_000,
        );
        if self.scheme == Scheme::Http && !self.listen.ip().is_loopback() {
            p.push(format!(
                "api.scheme: \"http\" is only allowed on a loopback address, not {} (API keys would cross the network in clear)",
                self.listen
            ));
        }
        p
    }
}
