//! Configuration: TOML, every field defaulted, unknown fields refused.
//!
//! Precedence: `WAPING__<SECTION>__<FIELD>` environment variables over the file over the
//! defaults (see `docs/configuration.md`). Loading reports *every* problem at once, each with
//! its key path and where it comes from (`file:line:column` or `env WAPING__…`), so an operator
//! fixes a file in one round: syntax errors all together; otherwise every structural error
//! (unknown key, wrong type, bad enum value, missing required key; see `load.rs`) and then every
//! semantic rule [`Config::validate`] checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod load;
#[cfg(test)]
mod tests;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// QUIC data plane.
    pub server: ServerConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Default limits applied to every workspace unless it overrides them.
    pub limits: LimitsConfig,
    /// Where messages go.
    pub upstream: UpstreamConfig,
    /// The durable journal every acknowledged message is written to.
    pub journal: JournalSection,
    /// Retry policy for failed sends (backoff, per-code rules, dead letters).
    pub retry: crate::retry::RetryConfig,
    /// Device session lifecycle: reconnect backoff, link and connect timeouts, connect gate.
    pub sessions: crate::session::config::SessionsConfig,
    // --- [pacing] (account safety, issue 4) ---
    /// Account-safety pacing of every device (anti-ban); workspaces may override fields.
    pub pacing: crate::pacing::PacingConfig,
    // --- end [pacing] ---
    /// HTTP/JSON control plane and send API.
    pub api: crate::control::config::ApiConfig,
    /// Encryption at rest (master key).
    pub security: crate::control::config::SecurityConfig,
    /// Default per-workspace quotas.
    pub quotas: crate::control::config::Quotas,
    /// Default per-workspace retention windows.
    pub retention: crate::control::config::Retention,
    /// Tamper-evident audit log: spool, digests, aggregation, sinks.
    pub audit: waping_audit::AuditConfig,
    /// Webhook deliveries: SSRF policy, timeouts, retry schedule (endpoints via the API).
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// Tenants and their API keys.
    pub workspaces: Vec<WorkspaceConfig>,
}

/// QUIC listener settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// UDP address for QUIC. Default `0.0.0.0:7400`.
    pub listen: SocketAddr,
    /// Directory for the self-signed certificate and runtime files.
    /// Default: `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else `./state`.
    pub state_dir: Option<PathBuf>,
    /// PEM certificate chain; with `key`, replaces the self-signed certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names for the self-signed certificate (it always covers `localhost`).
    pub tls_names: Vec<String>,
    /// Client certificates on the QUIC listener (mutual TLS): `none` (default; API keys alone
    /// authenticate), `optional` (a presented certificate must chain to `client_ca`) or
    /// `required` (no certificate, no handshake). API keys are checked either way: the
    /// certificate proves the machine, the key the tenant. Reloaded on SIGHUP.
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that sign client certificates; required unless `client_auth = "none"`.
    pub client_ca: Option<PathBuf>,
    /// Connections beyond this are refused at the QUIC handshake. Default 10 000; 1..=1 000 000.
    pub max_connections: u32,
    /// Bidirectional streams a client may open. Default 16; 1..=256. quinn reserves memory per
    /// allowed stream (~0.9 MB per connection at 10 000), so pipelining on few streams is the design.
    pub max_streams: u16,
    /// Unacknowledged SENDs per connection. Default 4096; 1..=1 000 000.
    pub max_in_flight: u32,
    /// Largest frame body accepted. Default 131 072; 73 728..=1 048 576. The floor (72 KiB) is
    /// above the largest frame whose fields are all within their limits (68 632 bytes), so a
    /// long but valid message is refused per message, never by closing the connection.
    pub max_frame_len: u32,
    /// Time allowed for HELLO after the QUIC handshake. Default 5000 ms.
    pub handshake_timeout_ms: u64,
    /// Idle connections are closed after this. Default 30 000 ms; clients PING earlier.
    pub idle_timeout_ms: u32,
    /// On shutdown, how long connections may take to receive outstanding reports. Default 10 000 ms.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            state_dir: None,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            client_auth: ClientAuth::None,
            client_ca: None,
            max_connections: 10_000,
            max_streams: 16,
            max_in_flight: 4096,
            max_frame_len: waping_protocol::limits::DEFAULT_MAX_FRAME_LEN,
            handshake_timeout_ms: 5000,
            idle_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
        }
    }
}

impl ServerConfig {
    /// The state directory after applying the default rule.
    pub fn resolved_state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories; the first is ours.
            Some(v) if !v.is_empty() => PathBuf::from(
                v.to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => PathBuf::from("state"),
        }
    }
}

/// Client-certificate requirement of the QUIC listener (`server.client_auth`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates asked for.
    #[default]
    None,
    /// Asked for; a connection without one is allowed, one with a bad one is not.
    Optional,
    /// Every connection must present a certificate chaining to `server.client_ca`.
    Required,
}

/// Prometheus exporter.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`. Default true.
    pub enabled: bool,
    /// TCP address of `/metrics`. Default `127.0.0.1:9400`; loopback because metrics reveal traffic volumes.
    pub listen: SocketAddr,
    /// Also count the send pipeline per workspace (a `workspace` label). Default false: label
    /// cardinality grows with tenants, so the operator opts in.
    pub per_workspace: bool,
    /// With `per_workspace`, the most workspaces that get their own label value; the rest are
    /// counted under `workspace="_other"`. Default 100; 1..=10 000. Bounds the series count.
    pub per_workspace_max: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            per_workspace: false,
            per_workspace_max: 100,
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, if enabled.
    pub fn address(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.listen)
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line, for journald/log shippers).
    pub format: LogFormat,
    /// `tracing` filter directive; overridden by `RUST_LOG`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Send limits. Defaults are deliberately conservative: WhatsApp bans numbers that send fast.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Workspace token bucket refill, messages per second. Default 20; 1..=10 000 000.
    pub rate_per_second: u32,
    /// Workspace token bucket capacity. Default 100; 1..=10 000 000.
    pub burst: u32,
    /// Per-device pacing: most messages per second handed to WhatsApp for one device.
    /// Default 1 (users report bans well above ~3/s per number); 0 disables pacing (load tests only).
    pub device_rate_per_second: u32,
    /// Messages queued per device while pacing holds them. Default 10 000; 1..=1 000 000.
    /// A full queue rejects SENDs with DEVICE_BUSY instead of growing memory.
    pub device_queue: u32,
    /// Upstream sends in flight per device. Default 16; 1..=4096.
    pub device_window: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_per_second: 20,
            burst: 100,
            device_rate_per_second: 1,
            device_queue: 10_000,
            device_window: 16,
        }
    }
}

/// Durability of group commits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum JournalSync {
    /// `fdatasync` before every acknowledgement (default).
    Data,
    /// No sync: a power loss or kernel crash loses acknowledged messages (a process crash
    /// does not). For benchmarks that want to measure everything but the disk.
    None,
}

/// The journal (`[journal]`): where acknowledged messages live until they are finished.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// `data` (fdatasync per group commit, default) or `none` (benchmarks only).
    pub sync: JournalSync,
    /// Segment file size. Default 64 MiB; 1..=4095. Larger segments mean fewer files and
    /// coarser compaction.
    pub segment_size_mib: u32,
    /// Bytes waiting for the writer beyond which SENDs are refused with OVERLOADED. Default 64 MiB;
    /// 1..=4096. Bounds memory when the disk is slower than the clients.
    pub max_queued_mib: u32,
    /// Journal size on disk beyond which SENDs are refused with OVERLOADED. Default 4096 MiB;
    /// 16..=1 048 576. Nothing is accepted that cannot be persisted.
    pub max_disk_mib: u64,
    /// How long an idempotency key deduplicates after its message was accepted, across
    /// restarts. Default 3600 s; 1..=604 800 (7 days).
    pub idempotency_window_s: u64,
    /// Most idempotency keys remembered; the oldest are forgotten early beyond it (counted in
    /// `waping_idempotency_evicted_total`). Default 2 000 000 (~150 MB); 1 000..=100 000 000.
    pub idempotency_capacity: u32,
    /// Refuse to start when replay finds corruption in the middle of the journal (default
    /// false: start, report every damaged range with its position, and go on with the rest).
    pub refuse_on_corruption: bool,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            sync: JournalSync::Data,
            segment_size_mib: 64,
            max_queued_mib: 64,
            max_disk_mib: 4096,
            idempotency_window_s: 3600,
            idempotency_capacity: 2_000_000,
            refuse_on_corruption: false,
        }
    }
}

impl JournalSection {
    /// The journal crate's configuration.
    pub fn to_journal_config(&self) -> waping_journal::JournalConfig {
        waping_journal::JournalConfig {
            segment_size: u64::from(self.segment_size_mib) << 20,
            sync: match self.sync {
                JournalSync::Data => waping_journal::SyncMode::Data,
                JournalSync::None => waping_journal::SyncMode::None,
            },
            max_queued_bytes: u64::from(self.max_queued_mib) << 20,
            max_disk_bytes: self.max_disk_mib << 20,
            idempotency_window: std::time::Duration::from_secs(self.idempotency_window_s),
            ..Default::default()
        }
    }
}

/// Which upstream the device sessions talk to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `sim` (in-process simulator, default until the WhatsApp upstream lands) or `sim-remote`.
    pub kind: UpstreamKind,
    /// Simulator behaviour (for `sim`).
    pub sim: SimConfig,
    /// Address of a simulator process (`waping-loadtest sim`), for `sim-remote`. Default `127.0.0.1:7401`.
    pub remote_addr: SocketAddr,
    /// How long to wait for one upstream send before failing it with UPSTREAM_TIMEOUT. Default 30 000 ms.
    pub send_timeout_ms: u64,
    /// WhatsApp Web settings (for `whatsapp`).
    pub whatsapp: crate::upstream::whatsapp_config::WhatsAppConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            kind: UpstreamKind::Sim,
            sim: SimConfig::default(),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 7401)),
            send_timeout_ms: 30_000,
            whatsapp: Default::default(),
        }
    }
}

/// Upstream implementation.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// Simulated WhatsApp inside the gateway.
    Sim,
    /// Simulated WhatsApp in another process, over TCP.
    SimRemote,
    /// WhatsApp Web multi-device (devices are linked with `waping-gateway device link`).
    Whatsapp,
}

/// Simulated WhatsApp behaviour.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Fixed latency of each send. Default 0.
    pub latency_ms: u64,
    /// Extra uniformly random latency, 0..=jitter. Default 0.
    pub latency_jitter_ms: u64,
    /// Probability a send fails permanently (UPSTREAM_REJECTED). Default 0; 0.0..=1.0.
    pub failure_rate: f64,
    /// Probability a send fails transiently (UPSTREAM_UNAVAILABLE, retryable). Default 0; 0.0..=1.0.
    pub transient_failure_rate: f64,
    /// Probability the message is delivered but the answer is lost (UPSTREAM_TIMEOUT), so
    /// the gateway resends it and must get "already sent". Default 0; 0.0..=1.0.
    pub lost_answer_rate: f64,
    /// How many recently delivered upstream ids the simulator remembers to answer a resend
    /// with "already sent" instead of delivering twice, like WhatsApp's message-id dedup.
    /// Default 1 000 000; 0 turns deduplication off (every send is a new delivery).
    pub dedup_capacity: u32,
    /// Append one line per delivered message (`upstream_id`, workspace, device, recipient,
    /// text) to this file, for crash tests that compare deliveries with acknowledgements.
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<std::path::PathBuf>,
    /// Sends per second per device the simulated WhatsApp tolerates before answering
    /// "rate-overlimit" (UPSTREAM_THROTTLED). Default 0 = unlimited.
    pub device_rate_per_second: u32,
    /// Inbound messages generated per second per device. Default 0.
    pub inbound_per_second: f64,
    /// RNG seed, so runs can be reproduced. Default 1.
    pub seed: u64,
    /// Devices start unlinked and must be linked (QR or pairing code) before they connect.
    /// Default false: every configured device is provisioned, as the load harness needs.
    pub require_link: bool,
    /// A link is confirmed ("the phone scanned the QR") this long after it starts. Default
    /// 2000 ms; 0 = never, so the link times out.
    pub link_pair_after_ms: u64,
    /// A new QR payload replaces the previous one this often while linking. Default 20 000 ms
    /// (WhatsApp rotates its refs about every 20 s).
    pub qr_rotate_ms: u64,
    // --- [upstream.sim] fault injection (issue 4; owner: sim) ---
    /// Spread of a log-normal send latency: with a value above 0, `latency_ms` is the median
    /// and each send's base latency is `latency_ms · e^(sigma·N(0,1))` (a long right tail, as
    /// real networks have). Default 0 (fixed); 0.0..=4.0.
    pub latency_lognormal_sigma: f64,
    /// Probability that a send's answer is slow: `slow_ack_ms` is added to its latency.
    /// Default 0; 0.0..=1.0.
    pub slow_ack_rate: f64,
    /// Extra latency of a slow answer. Default 5000 ms; 0..=600 000.
    pub slow_ack_ms: u64,
    /// Probability that a send is refused with WhatsApp's 429 `rate-overlimit`
    /// (UPSTREAM_THROTTLED) whatever the device's rate. Default 0; 0.0..=1.0.
    pub throttle_rate: f64,
    /// The retry hint of those refusals. Default 30 000 ms; 0..=86 400 000.
    pub throttle_retry_ms: u64,
    /// Mean time between simulated drops of one connected device (exponentially distributed;
    /// the gateway reconnects). Default 0 = never; 0.0..=1e9 s.
    pub disconnect_mean_s: f64,
    /// Mean time until WhatsApp logs a connected device out (the user removed it on the
    /// phone; only a new link brings it back). Default 0 = never; 0.0..=1e9 s.
    pub logout_mean_s: f64,
    /// Mean time until WhatsApp bans a connected device. Default 0 = never; 0.0..=1e9 s.
    pub ban_mean_s: f64,
    /// Length of those bans; connects during a ban are refused (DEVICE_BANNED). Default 3600 s;
    /// 0 = permanent.
    pub ban_duration_s: u64,
    /// Probability that a delivered send is acknowledged twice (the remote simulator writes its
    /// answer frame twice; the gateway must ignore the second) and its receipts arrive twice.
    /// Default 0; 0.0..=1.0.
    pub duplicate_ack_rate: f64,
    /// A DELIVERED receipt follows each delivered send this long after its answer.
    /// Default 0 = no receipts; 0..=86 400 000 ms.
    pub receipt_delivered_ms: u64,
    /// Probability that a delivered message is also READ (requires receipts). Default 0;
    /// 0.0..=1.0.
    pub receipt_read_rate: f64,
    /// The READ receipt comes this long after the DELIVERED one. Default 5000 ms;
    /// 0..=86 400 000.
    pub receipt_read_ms: u64,
    // --- end [upstream.sim] fault injection ---
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 0,
            latency_jitter_ms: 0,
            failure_rate: 0.0,
            transient_failure_rate: 0.0,
            lost_answer_rate: 0.0,
            dedup_capacity: 1_000_000,
            ledger: None,
            device_rate_per_second: 0,
            inbound_per_second: 0.0,
            seed: 1,
            require_link: false,
            link_pair_after_ms: 2000,
            qr_rotate_ms: 20_000,
            // --- [upstream.sim] fault injection (owner: sim) ---
            latency_lognormal_sigma: 0.0,
            slow_ack_rate: 0.0,
            slow_ack_ms: 5000,
            throttle_rate: 0.0,
            throttle_retry_ms: 30_000,
            disconnect_mean_s: 0.0,
            logout_mean_s: 0.0,
            ban_mean_s: 0.0,
            ban_duration_s: 3600,
            duplicate_ack_rate: 0.0,
            receipt_delivered_ms: 0,
            receipt_read_rate: 0.0,
            receipt_read_ms: 5000,
            // --- end ---
        }
    }
}

// --- [upstream.sim] fault injection validation (owner: sim) ---
impl SimConfig {
    /// Appends every out-of-range fault-injection setting, each with its path.
    pub fn validate_faults(&self, p: &mut Vec<String>) {
        for (name, v) in [
            ("slow_ack_rate", self.slow_ack_rate),
            ("throttle_rate", self.throttle_rate),
            ("duplicate_ack_rate", self.duplicate_ack_rate),
            ("receipt_read_rate", self.receipt_read_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("upstream.sim.{name}: {v} is outside 0.0..=1.0"));
            }
        }
        for (name, v) in [
            ("disconnect_mean_s", self.disconnect_mean_s),
            ("logout_mean_s", self.logout_mean_s),
            ("ban_mean_s", self.ban_mean_s),
        ] {
            if !(0.0..=1e9).contains(&v) {
                p.push(format!("upstream.sim.{name}: {v} is outside 0.0..=1e9"));
            }
        }
        if !(0.0..=4.0).contains(&self.latency_lognormal_sigma) {
            p.push(format!(
                "upstream.sim.latency_lognormal_sigma: {} is outside 0.0..=4.0",
                self.latency_lognormal_sigma
            ));
        }
        for (name, v, hi) in [
            ("slow_ack_ms", self.slow_ack_ms, 600_000),
            ("throttle_retry_ms", self.throttle_retry_ms, 86_400_000),
            ("receipt_delivered_ms", self.receipt_delivered_ms, 86_400_000),
            ("receipt_read_ms", self.receipt_read_ms, 86_400_000),
        ] {
            if v > hi {
                p.push(format!("upstream.sim.{name}: {v} is outside 0..={hi}"));
            }
        }
    }
}
// --- end ---

/// One tenant.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// Stable id, 1–64 bytes of `[a-z0-9_-]`.
    pub id: String,
    /// Overrides `limits.rate_per_second`.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Overrides `limits.burst`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Overrides `limits.device_rate_per_second`.
    #[serde(default)]
    pub device_rate_per_second: Option<u32>,
    // --- [workspaces.pacing] (account safety, issue 4) ---
    /// Overrides fields of `[pacing]` for this workspace's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<crate::pacing::PacingOverride>,
    // --- end [workspaces.pacing] ---
    /// Devices (linked numbers) of this workspace. Device ids are scoped to the workspace.
    #[serde(default)]
    pub devices: Vec<String>,
    /// API keys, by hash only.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Audit records of this workspace carry full phone numbers instead of masked ones.
    /// Default false.
    #[serde(default)]
    pub audit_full_numbers: bool,
}

/// One API key, stored as a hash (`waping-gateway keygen` prints both halves).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's public id (the part after `wpk_`), 16 hex characters.
    pub id: String,
    /// `sha256:` + 64 hex characters of SHA-256 over the whole key string.
    pub hash: String,
    /// What the key may do (see the README's role matrix). Default `owner`, which is what
    /// every configured key could do before roles existed.
    #[serde(default = "default_key_role")]
    pub role: crate::control::roles::Role,
}

fn default_key_role() -> crate::control::roles::Role {
    crate::control::roles::Role::Owner
}

/// Where a problem is: a position in the file, or the environment variable that set the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line and column (in characters) of the entry's key, of an array element, or of
    /// the table header for a missing key.
    Line {
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// The value came from this override (`WAPING__…`).
    Env {
        /// Variable name as given.
        var: String,
    },
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path of the entry (`workspaces[0].keys[1].hash`); empty for a TOML syntax error.
    /// Array indices count entries as written in the file.
    pub path: String,
    /// Where the entry is; `None` for a value that is not in the file (a default).
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// One line, compiler style: `gateway.toml:12:1: limits.burst: 0 is outside 1..=10000000`,
    /// `env WAPING__LIMITS__BURST: limits.burst: …`, or `gateway.toml: path: …` without a line.
    pub fn render(&self, file: &str) -> String {
        let at = match &self.location {
            Some(Location::Line { line, column }) => format!("{file}:{line}:{column}"),
            Some(Location::Env { var }) => format!("env {var}"),
            None => file.to_string(),
        };
        if self.path.is_empty() {
            format!("{at}: {}", self.message)
        } else {
            format!("{at}: {}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Everything wrong with the file and the overrides, one problem per line.
    #[error("{}", .problems.iter().map(|p| p.render(file)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File (`<defaults>` without one).
        file: String,
        /// Every problem: syntax errors alone if there are any, else structural then semantic
        /// ones, in file order, then those set by environment variables, then unlocated ones.
        problems: Vec<Problem>,
    },
}

/// A loaded configuration and the environment overrides that went into it.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The configuration.
    pub config: Config,
    /// Names of the applied `WAPING__…` variables, sorted.
    pub env_overrides: Vec<String>,
}

/// The process environment's `WAPING__…` variables (non-UTF-8 values lossily converted; a
/// non-UTF-8 name cannot be a valid override and is skipped).
fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        load::is_override(&k).then(|| (k, v.to_string_lossy().into_owned()))
    })
}

impl Config {
    /// Loads and validates a file, `None` meaning the embedded defaults, with the process's
    /// `WAPING__…` environment overrides applied to either.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_report(path).map(|r| r.config)
    }

    /// Like [`Config::load`], also naming the environment overrides applied.
    pub fn load_report(path: Option<&Path>) -> Result<LoadReport, ConfigError> {
        let (text, file) = match path {
            // The defaults are the empty file (a test keeps the two equal), so overrides and
            // problems work the same with and without one.
            None => (String::new(), "<defaults>".to_string()),
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.into(),
                    source,
                })?,
                p.display().to_string(),
            ),
        };
        Config::parse_report(&text, &file, process_env())
    }

    /// Parses and validates TOML text with the process's environment overrides applied; `file`
    /// names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, file, process_env())
    }

    /// [`Config::parse`] with the environment given (only `WAPING__…` names are used).
    pub(crate) fn parse_with_env(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::parse_report(text, file, env).map(|r| r.config)
    }

    fn parse_report(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<LoadReport, ConfigError> {
        load::load(text, env)
            .map(|(config, env_overrides)| LoadReport {
                config,
                env_overrides,
            })
            .map_err(|problems| ConfigError::Invalid {
                file: file.into(),
                problems,
            })
    }

    /// Checks every semantic rule and returns all violations together (unlocated: this sees the
    /// values, not the file they came from; [`Config::load`] locates them).
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let problems: Vec<Problem> = self
            .semantic_problems()
            .into_iter()
            .map(|line| match line.split_once(": ") {
                Some((path, message)) => Problem {
                    path: path.into(),
                    location: None,
                    message: message.into(),
                },
                None => Problem {
                    path: String::new(),
                    location: None,
                    message: line,
                },
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: file.into(),
                problems,
            })
        }
    }

    /// Every semantic rule broken, each as `"path: message"`.
    fn semantic_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        fn check(p: &mut Vec<String>, path: &str, v: u64, lo: u64, hi: u64) {
            if v < lo || v > hi {
                p.push(format!("{path}: {v} is outside {lo}..={hi}"));
            }
        }
        macro_rules! range {
            ($($a:expr),*) => { check(&mut p, $($a),*) };
        }
        let s = &self.server;
        range!("server.max_connections", s.max_connections.into(), 1, 1_000_000);
        range!("server.max_streams", s.max_streams.into(), 1, 256);
        range!("server.max_in_flight", s.max_in_flight.into(), 1, 1_000_000);
        range!(
            "server.max_frame_len",
            s.max_frame_len.into(),
            72 * 1024,
            waping_protocol::limits::HARD_MAX_FRAME_LEN.into()
        );
        range!(
            "server.handshake_timeout_ms",
            s.handshake_timeout_ms,
            100,
            600_000
        );
        range!(
            "server.idle_timeout_ms",
            s.idle_timeout_ms.into(),
            1000,
            3_600_000
        );
        range!("server.drain_timeout_ms", s.drain_timeout_ms, 0, 600_000);
        let l = &self.limits;
        range!("limits.rate_per_second", l.rate_per_second.into(), 1, 10_000_000);
        range!("limits.burst", l.burst.into(), 1, 10_000_000);
        range!(
            "limits.device_rate_per_second",
            l.device_rate_per_second.into(),
            0,
            10_000_000
        );
        range!("limits.device_queue", l.device_queue.into(), 1, 1_000_000);
        range!("limits.device_window", l.device_window.into(), 1, 4096);
        range!(
            "upstream.send_timeout_ms",
            self.upstream.send_timeout_ms,
            1,
            3_600_000
        );
        let sim = &self.upstream.sim;
        range!("upstream.sim.latency_ms", sim.latency_ms, 0, 600_000);
        range!(
            "upstream.sim.latency_jitter_ms",
            sim.latency_jitter_ms,
            0,
            600_000
        );
        for (name, v) in [
            ("failure_rate", sim.failure_rate),
            ("transient_failure_rate", sim.transient_failure_rate),
            ("lost_answer_rate", sim.lost_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("upstream.sim.{name}: {v} is outside 0.0..=1.0"));
            }
        }
        if !(0.0..=100_000.0).contains(&sim.inbound_per_second) {
            p.push(format!(
                "upstream.sim.inbound_per_second: {} is outside 0.0..=100000",
                sim.inbound_per_second
            ));
        }
        // --- [upstream.sim] fault injection (owner: sim) ---
        sim.validate_faults(&mut p);
        // --- end ---
        if s.client_auth != ClientAuth::None && s.client_ca.is_none() {
            p.push("server.client_ca: required when server.client_auth is not \"none\"".into());
        }
        range!(
            "metrics.per_workspace_max",
            self.metrics.per_workspace_max.into(),
            1,
            10_000
        );
        match (&s.tls_cert, &s.tls_key) {
            (Some(_), None) => p.push("server.tls_key: required when server.tls_cert is set".into()),
            (None, Some(_)) => p.push("server.tls_cert: required when server.tls_key is set".into()),
            _ => {}
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(format!("log.level: {e}"));
        }
        let mut ws_ids = std::collections::HashSet::new();
        let mut key_ids = std::collections::HashSet::new();
        for (i, w) in self.workspaces.iter().enumerate() {
            let at = format!("workspaces[{i}]");
            if w.id.is_empty()
                || w.id.len() > 64
                || !w
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                p.push(format!(
                    "{at}.id: {:?} must be 1-64 characters of a-z 0-9 _ -",
                    w.id
                ));
            }
            if !ws_ids.insert(w.id.as_str()) {
                p.push(format!("{at}.id: duplicate workspace id {:?}", w.id));
            }
            if let Some(r) = w.rate_per_second {
                range!(&format!("{at}.rate_per_second"), r.into(), 1, 10_000_000);
            }
            if let Some(b) = w.burst {
                range!(&format!("{at}.burst"), b.into(), 1, 10_000_000);
            }
            if let Some(r) = w.device_rate_per_second {
                range!(&format!("{at}.device_rate_per_second"), r.into(), 0, 10_000_000);
            }
            let mut devs = std::collections::HashSet::new();
            for (j, d) in w.devices.iter().enumerate() {
                if let Err(e) = waping_protocol::validate::device_id(&d.as_str().into()) {
                    p.push(format!("{at}.devices[{j}]: {}", e.message));
                }
                if !devs.insert(d.as_str()) {
                    p.push(format!("{at}.devices[{j}]: duplicate device id {d:?}"));
                }
            }
            for (j, k) in w.keys.iter().enumerate() {
                let kat = format!("{at}.keys[{j}]");
                if let Err(e) = crate::auth::parse_key_id(&k.id) {
                    p.push(format!("{kat}.id: {e}"));
                }
                if let Err(e) = crate::auth::parse_hash(&k.hash) {
                    p.push(format!("{kat}.hash: {e}"));
                }
                if !key_ids.insert(k.id.as_str()) {
                    p.push(format!(
                        "{kat}.id: key id {:?} is used twice (ids are global)",
                        k.id
                    ));
                }
            }
        }
        let j = &self.journal;
        range!("journal.segment_size_mib", j.segment_size_mib.into(), 1, 4095);
        range!("journal.max_queued_mib", j.max_queued_mib.into(), 1, 4096);
        range!("journal.max_disk_mib", j.max_disk_mib, 16, 1 << 20);
        range!("journal.idempotency_window_s", j.idempotency_window_s, 1, 604_800);
        range!(
            "journal.idempotency_capacity",
            j.idempotency_capacity.into(),
            1_000,
            100_000_000
        );
        self.sessions.validate(&mut p);
        self.upstream.whatsapp.validate(&mut p);
        p.extend(self.api.problems());
        p.extend(self.quotas.problems("quotas"));
        p.extend(self.retention.problems("retention"));
        p.extend(self.audit.problems("audit"));
        p.extend(self.webhooks.problems("webhooks"));
        if let Err(e) = crate::retry::RetryPolicy::from_config(&self.retry) {
            p.extend(e.problems);
        }
        // --- [pacing] (account safety, issue 4) ---
        let node_pacing = self.pacing.problems("pacing");
        for (i, w) in self.workspaces.iter().enumerate() {
            if let Some(o) = &w.pacing {
                // A workspace inherits the node's mistakes; report only its own.
                let at = format!("workspaces[{i}].pacing");
                p.extend(
                    self.pacing
                        .with_override(o)
                        .problems(&at)
                        .into_iter()
                        .filter(|m| !node_pacing.iter().any(|n| n["pacing".len()..] == m[at.len()..])),
                );
            }
        }
        p.extend(node_pacing);
        // --- end [pacing] ---
        p
    }

    // --- [pacing] (account safety, issue 4) ---
    /// The effective pacing policy of a workspace's devices: `[pacing]` with the workspace's
    /// overrides, and pacing off when its `device_rate_per_second` is 0. Share it (`Arc`)
    /// between the pacers of the workspace's devices.
    pub fn workspace_pacing(
        &self,
        w: &WorkspaceConfig,
    ) -> Result<crate::pacing::PacingPolicy, crate::pacing::PacingConfigError> {
        let cfg = match &w.pacing {
            Some(o) => self.pacing.with_override(o),
            None => self.pacing.clone(),
        };
        crate::pacing::PacingPolicy::new(&cfg, self.workspace_limits(w).2)
    }
    // --- end [pacing] ---

    /// The effective limits of a workspace.
    pub fn workspace_limits(&self, w: &WorkspaceConfig) -> (u32, u32, u32) {
        (
            w.rate_per_second.unwrap_or(self.limits.rate_per_second),
            w.burst.unwrap_or(self.limits.burst),
            w.device_rate_per_second
                .unwrap_or(self.limits.device_rate_per_second),
        )
    }
}
