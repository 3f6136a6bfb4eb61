//! `[audit]` configuration: the spool, digests, aggregation and the sinks.
//! Defaults are documented in `config/default.toml`; [`AuditConfig::problems`] reports
//! every semantic mistake with its path so `check-config` shows them all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `[audit]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Node name; each node has its own hash chain and sequence numbers. Default: the host
    /// name. 1–64 bytes of `[A-Za-z0-9._-]` (it becomes part of a NATS subject).
    pub node: Option<String>,
    /// Spool directory (the local durable audit log every sink reads from).
    /// Default `<state_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// Ed25519 digest signing key (`ed25519:<64 hex>`, mode 0600). Default: the systemd
    /// credential `audit-signing-key`, else `<state_dir>/audit-signing.key`, generated on
    /// first start with a warning (a key beside the log it protects proves less).
    pub signing_key_file: Option<PathBuf>,
    /// Seconds between signed digests (only written when records were added). Default 60;
    /// 1..=86 400. Records after the last digest are protected by the chain alone.
    pub digest_interval_s: u64,
    /// Most bytes the spool may hold (records not yet shipped to every sink). Default
    /// 1 GiB (several million records); 1 MiB..=1 TiB.
    pub spool_max_bytes: u64,
    /// Spool segment size: the unit of deletion once every sink has a segment. Default
    /// 16 MiB; 64 KiB..=1 GiB.
    pub segment_bytes: u64,
    /// Records that may wait in memory for the spool writer. Default 65 536; 64..=16 777 216.
    /// A full queue means the disk is stalled; new records are then refused.
    pub queue_capacity: u32,
    /// What happens when the spool reaches `spool_max_bytes` because a sink is behind.
    /// Default `refuse`.
    pub on_spool_full: SpoolFullPolicy,
    /// Seconds over which high-rate events (rate-limit rejections, HTTP authentications)
    /// are aggregated into one record per workspace or key. Default 60; 1..=3600.
    pub aggregate_interval_s: u64,
    /// Where records are shipped; each sink has its own cursor. Default: one `file` sink.
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            node: None,
            dir: None,
            signing_key_file: None,
            digest_interval_s: 60,
            spool_max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            queue_capacity: 65_536,
            on_spool_full: SpoolFullPolicy::Refuse,
            aggregate_interval_s: 60,
            sinks: vec![SinkConfig::File(FileSinkConfig::default())],
        }
    }
}

/// Policy when the spool is full.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Refuse new security-relevant operations (error AUDIT_UNAVAILABLE) until a sink
    /// catches up; nothing is lost. Message traffic on open connections continues.
    Refuse,
    /// Delete the oldest spool segment and write an `audit.gap` record naming the lost
    /// range and the sinks that missed it. Availability over completeness.
    DiscardOldest,
}

/// One sink.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// JSON lines in rotating files.
    File(FileSinkConfig),
    /// JSON lines on standard output (journald under systemd).
    Stdout(StdoutSinkConfig),
    /// Batches POSTed to an HTTP endpoint (Vector, Loki via Vector, Elasticsearch bulk…).
    Http(HttpSinkConfig),
    /// Messages published with acknowledgements to a NATS JetStream stream.
    Nats(NatsSinkConfig),
}

impl SinkConfig {
    /// The sink's name (its cursor's name): the configured one, else the type.
    pub fn name(&self) -> &str {
        let (n, d) = match self {
            SinkConfig::File(c) => (&c.name, "file"),
            SinkConfig::Stdout(c) => (&c.name, "stdout"),
            SinkConfig::Http(c) => (&c.name, "http"),
            SinkConfig::Nats(c) => (&c.name, "nats"),
        };
        n.as_deref().unwrap_or(d)
    }
}

/// When the file sink calls fsync.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every batch, before the sink's cursor moves (default).
    Batch,
    /// At most once a second; a crash may lose the last second from the file, which the
    /// sink then rewrites from the spool at start (it resumes after the file's last line).
    Interval,
    /// Never; the OS writes back.
    Never,
}

/// `type = "file"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// Sink name (cursor name). Default `file`.
    pub name: Option<String>,
    /// Directory of the files. Default `$LOGS_DIRECTORY/audit` (systemd `LogsDirectory=`),
    /// else `<state_dir>/audit-log`. Files are named `audit-<first seq, 20 digits>.jsonl`.
    pub path: Option<PathBuf>,
    /// Rotate when a file reaches this size. Default 64 MiB; 4 KiB..=64 GiB.
    pub max_file_bytes: u64,
    /// Rotate when a file is this old, seconds; 0 = never. Default 86 400.
    pub rotate_interval_s: u64,
    /// When to fsync. Default `batch`.
    pub fsync: FsyncPolicy,
    /// Rotated files kept; older ones are deleted. 0 keeps all (default): deleting audit
    /// history is the operator's decision.
    pub keep_files: u32,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            name: None,
            path: None,
            max_file_bytes: 64 << 20,
            rotate_interval_s: 86_400,
            fsync: FsyncPolicy::Batch,
            keep_files: 0,
        }
    }
}

impl FileSinkConfig {
    /// The directory after applying the default rule.
    pub fn resolved_path(&self, state_dir: &Path) -> PathBuf {
        if let Some(p) = &self.path {
            return p.clone();
        }
        match std::env::var_os("LOGS_DIRECTORY") {
            Some(v) if !v.is_empty() => {
                let first = v
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                PathBuf::from(first).join("audit")
            }
            _ => state_dir.join("audit-log"),
        }
    }
}

/// `type = "stdout"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutSinkConfig {
    /// Sink name (cursor name). Default `stdout`.
    pub name: Option<String>,
}

/// Body format of the HTTP sink.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// One record per line, `application/x-ndjson` (Vector `http_server`, Loki via Vector).
    Ndjson,
    /// A JSON array of records, `application/json`.
    JsonArray,
    /// Elasticsearch/OpenSearch `_bulk`: a `create` action with `_id` = `<node>-<seq>` before
    /// each record, so a resent batch cannot duplicate a document.
    ElasticsearchBulk,
}

/// `type = "http"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkConfig {
    /// Sink name (cursor name). Default `http`.
    pub name: Option<String>,
    /// `https://…` or `http://…` endpoint the batches are POSTed to. Required.
    pub url: String,
    /// Body format. Default `ndjson`.
    pub format: HttpFormat,
    /// Index for `elasticsearch_bulk` actions; omitted when unset (the URL names it).
    pub index: Option<String>,
    /// File holding a bearer token sent as `Authorization: Bearer …` (kept out of the config).
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers (not for secrets: the config is not secret).
    pub headers: BTreeMap<String, String>,
    /// PEM CA bundle to trust instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout. Default 10 000 ms; 100..=300 000.
    pub timeout_ms: u64,
    /// Records per request at most. Default 500; 1..=100 000.
    pub max_batch_records: u32,
    /// Body bytes per request at most (a single larger record is still sent alone).
    /// Default 1 MiB; 1 KiB..=64 MiB.
    pub max_batch_bytes: u64,
    /// First retry delay; doubles up to `backoff_max_ms`, with jitter. Default 200 ms.
    pub backoff_initial_ms: u64,
    /// Longest retry delay. Default 30 000 ms.
    pub backoff_max_ms: u64,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        HttpSinkConfig {
            name: None,
            url: String::new(),
            format: HttpFormat::Ndjson,
            index: None,
            bearer_token_file: None,
            headers: BTreeMap::new(),
            ca_file: None,
            timeout_ms: 10_000,
            max_batch_records: 500,
            max_batch_bytes: 1 << 20,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
        }
    }
}

/// `type = "nats"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// Sink name (cursor name). Default `nats`.
    pub name: Option<String>,
    /// Server URL. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream. Default `WAPING_AUDIT`.
    pub stream: String,
    /// Subject prefix; records go to `<prefix>.<node>`. Default `waping.audit`.
    pub subject_prefix: String,
    /// Create the stream (file storage, subjects `<prefix>.>`) if it does not exist. Default true.
    pub create_stream: bool,
    /// NATS credentials file (`.creds`: user JWT and nkey seed), if the server requires one.
    pub credentials_file: Option<PathBuf>,
    /// File holding a NATS auth token, if the server requires one (kept out of the config).
    pub token_file: Option<PathBuf>,
    /// Publishes in flight per batch before waiting for their acks. Default 256; 1..=10 000.
    pub max_batch_records: u32,
    /// Ack timeout. Default 10 000 ms; 100..=300 000.
    pub timeout_ms: u64,
    /// First retry delay; doubles up to `backoff_max_ms`, with jitter. Default 200 ms.
    pub backoff_initial_ms: u64,
    /// Longest retry delay. Default 30 000 ms.
    pub backoff_max_ms: u64,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        NatsSinkConfig {
            name: None,
            url: "nats://127.0.0.1:4222".into(),
            stream: "WAPING_AUDIT".into(),
            subject_prefix: "waping.audit".into(),
            create_stream: true,
            credentials_file: None,
            token_file: None,
            max_batch_records: 256,
            timeout_ms: 10_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
        }
    }
}

/// Whether `s` is a valid node name.
pub fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The host name made into a node name (invalid bytes become `-`), or `node`.
pub fn default_node_name() -> String {
    let raw = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let cleaned: String = raw
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if valid_node_name(&cleaned) {
        cleaned
    } else {
        "node".into()
    }
}

impl AuditConfig {
    /// The node name after applying the default rule.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(default_node_name)
    }

    /// Every semantic problem, each prefixed with its path under `prefix` (e.g. `audit`).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        let mut range = |path: String, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                p.push(format!("{path}: {v} is outside {lo}..={hi}"));
            }
        };
        range(
            format!("{prefix}.digest_interval_s"),
            self.digest_interval_s,
            1,
            86_400,
        );
        range(
            format!("{prefix}.spool_max_bytes"),
            self.spool_max_bytes,
            1 << 20,
            1 << 40,
        );
        range(
            format!("{prefix}.segment_bytes"),
            self.segment_bytes,
            64 << 10,
            1 << 30,
        );
        range(
            format!("{prefix}.queue_capacity"),
            self.queue_capacity.into(),
            64,
            1 << 24,
        );
        range(
            format!("{prefix}.aggregate_interval_s"),
            self.aggregate_interval_s,
            1,
            3600,
        );
        for (i, s) in self.sinks.iter().enumerate() {
            let at = format!("{prefix}.sinks[{i}]");
            match s {
                SinkConfig::File(c) => {
                    range(
                        format!("{at}.max_file_bytes"),
                        c.max_file_bytes,
                        4 << 10,
                        64 << 30,
                    );
                    range(
                        format!("{at}.rotate_interval_s"),
                        c.rotate_interval_s,
                        0,
                        365 * 86_400,
                    );
                }
                SinkConfig::Stdout(_) => {}
                SinkConfig::Http(c) => {
                    range(format!("{at}.timeout_ms"), c.timeout_ms, 100, 300_000);
                    range(
                        format!("{at}.max_batch_records"),
                        c.max_batch_records.into(),
                        1,
                        100_000,
                    );
                    range(
                        format!("{at}.max_batch_bytes"),
                        c.max_batch_bytes,
                        1 << 10,
                        64 << 20,
                    );
                    range(
                        format!("{at}.backoff_initial_ms"),
                        c.backoff_initial_ms,
                        1,
                        600_000,
                    );
                    range(format!("{at}.backoff_max_ms"), c.backoff_max_ms, 1, 3_600_000);
                }
                SinkConfig::Nats(c) => {
                    range(format!("{at}.timeout_ms"), c.timeout_ms, 100, 300_000);
                    range(
                        format!("{at}.max_batch_records"),
                        c.max_batch_records.into(),
                        1,
                        10_000,
                    );
                    range(
                        format!("{at}.backoff_initial_ms"),
                        c.backoff_initial_ms,
                        1,
                        600_000,
                    );
                    range(format!("{at}.backoff_max_ms"), c.backoff_max_ms, 1, 3_600_000);
                }
            }
        }
        if let Some(n) = &self.node
            && !valid_node_name(n)
        {
            p.push(format!(
                "{prefix}.node: {n:?} must be 1-64 bytes of [A-Za-z0-9._-]"
            ));
        }
        if self.sinks.is_empty() {
            // The spool is a buffer trimmed as sinks confirm; with none it would only grow.
            p.push(format!(
                "{prefix}.sinks: at least one sink is required (the default is one `file` sink)"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let at = format!("{prefix}.sinks[{i}]");
            let name = s.name();
            if !valid_node_name(name) {
                p.push(format!(
                    "{at}.name: {name:?} must be 1-64 bytes of [A-Za-z0-9._-]"
                ));
            }
            if !seen.insert(name.to_owned()) {
                p.push(format!("{at}.name: {name:?} is used by an earlier sink; give each sink its own name (it names its cursor)"));
            }
            match s {
                SinkConfig::Http(c) => {
                    if !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
                        p.push(format!(
                            "{at}.url: {:?} must be an http:// or https:// URL",
                            c.url
                        ));
                    }
                    if c.backoff_max_ms < c.backoff_initial_ms {
                        p.push(format!(
                            "{at}.backoff_max_ms: must be at least backoff_initial_ms"
                        ));
                    }
                    for h in c.headers.keys() {
                        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                            p.push(format!("{at}.headers: {h:?} is not a valid header name"));
                        }
                    }
                }
                SinkConfig::Nats(c) => {
                    if !c.url.starts_with("nats://") && !c.url.starts_with("tls://") {
                        p.push(format!("{at}.url: {:?} must be a nats:// or tls:// URL", c.url));
                    }
                    if c.stream.is_empty()
                        || !c
                            .stream
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                    {
                        p.push(format!(
                            "{at}.stream: {:?} must be 1+ bytes of [A-Za-z0-9_-]",
                            c.stream
                        ));
                    }
                    if c.subject_prefix.is_empty()
                        || c.subject_prefix
                            .split('.')
                            .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
                    {
                        p.push(format!(
                            "{at}.subject_prefix: {:?} must be dot-separated tokens without wildcards",
                            c.subject_prefix
                        ));
                    }
                    if c.backoff_max_ms < c.backoff_initial_ms {
                        p.push(format!(
                            "{at}.backoff_max_ms: must be at least backoff_initial_ms"
                        ));
                    }
                    if c.credentials_file.is_some() && c.token_file.is_some() {
                        p.push(format!(
                            "{at}.token_file: give credentials_file or token_file, not both"
                        ));
                    }
                }
                _ => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(AuditConfig::default().problems("audit"), Vec::<String>::new());
        assert!(valid_node_name(&default_node_name()));
    }

    #[test]
    fn sinks_parse_by_type_and_refuse_unknown_fields() {
        let c: AuditConfig = toml_like(
            r#"{"sinks":[{"type":"file","path":"/x"},{"type":"nats","stream":"S"},{"type":"http","url":"https://h/x","format":"elasticsearch_bulk"},{"type":"stdout"}]}"#,
        )
        .unwrap();
        assert_eq!(c.sinks.len(), 4);
        assert_eq!(c.sinks[1].name(), "nats");
        assert!(toml_like::<AuditConfig>(r#"{"sinks":[{"type":"file","paht":"/x"}]}"#).is_err());
        assert!(toml_like::<AuditConfig>(r#"{"sinks":[{"type":"kafka"}]}"#).is_err());
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let c = AuditConfig {
            node: Some("bad node".into()),
            digest_interval_s: 0,
            sinks: vec![
                SinkConfig::Http(HttpSinkConfig {
                    url: "ftp://x".into(),
                    ..Default::default()
                }),
                SinkConfig::Http(HttpSinkConfig {
                    url: "https://x".into(),
                    ..Default::default()
                }),
                SinkConfig::Nats(NatsSinkConfig {
                    subject_prefix: "a.>".into(),
                    ..Default::default()
                }),
            ],
            ..Default::default()
        };
        let p = c.problems("audit");
        assert!(
            p.iter().any(|m| m.starts_with("audit.digest_interval_s:")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.starts_with("audit.node:")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("audit.sinks[0].url:")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("audit.sinks[1].name:")), "{p:?}");
        assert!(
            p.iter().any(|m| m.starts_with("audit.sinks[2].subject_prefix:")),
            "{p:?}"
        );
        assert_eq!(p.len(), 5, "{p:?}");
        let none = AuditConfig {
            sinks: Vec::new(),
            ..Default::default()
        };
        assert_eq!(none.problems("audit").len(), 1);
    }
}
