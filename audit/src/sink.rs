//! What every sink implements, and the record lines they are handed.

use std::time::Duration;

use bytes::Bytes;

/// One record as stored in the spool: its sequence number and its exact line bytes
/// (no trailing newline). Sinks ship the bytes unchanged so the chain verifies anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Sequence number in the node's chain.
    pub seq: u64,
    /// The JSON line.
    pub bytes: Bytes,
}

/// Whose fault a sink failure is, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The destination cannot be reached or timed out (network, DNS, TLS, connection closed).
    Unavailable,
    /// The destination answered with an error (HTTP 5xx, 429, JetStream error ack).
    Rejected,
    /// The destination refuses this configuration (HTTP 401/403/404, wrong stream subjects):
    /// retried like the others, because losing records is worse, but logged as needing an operator.
    Misconfigured,
    /// A local error (file system full, permission denied).
    Local,
}

impl SinkErrorKind {
    /// Stable label for `waping_audit_sink_errors_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkErrorKind::Unavailable => "unavailable",
            SinkErrorKind::Rejected => "rejected",
            SinkErrorKind::Misconfigured => "misconfigured",
            SinkErrorKind::Local => "local",
        }
    }
}

/// A failed delivery. Every failure is retried (from the sink's cursor) after a backoff;
/// nothing is skipped.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct SinkError {
    /// Classification.
    pub kind: SinkErrorKind,
    /// Human-readable cause (no record contents, no secrets).
    pub message: String,
    /// A delay the destination asked for (HTTP `Retry-After`), honoured over the backoff.
    pub retry_after: Option<Duration>,
}

impl SinkError {
    /// An error of `kind` with `message`.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A destination for audit records. The shipping loop calls `resume` once (and again
/// after errors if it wants), then `send` with consecutive batches in sequence order.
#[async_trait::async_trait]
pub trait Sink: Send + 'static {
    /// The configured sink name (cursor name, metric label).
    fn name(&self) -> &str;

    /// The highest sequence number of this node the destination already holds, if the sink
    /// can find out (the file sink reads its last line; the NATS sink reads the last message
    /// on its subject). The loop resumes after `max(cursor, resume)`, which makes delivery
    /// exactly once for sinks that can answer. `Ok(None)` = cannot tell.
    async fn resume(&mut self) -> Result<Option<u64>, SinkError>;

    /// Delivers `batch` (non-empty, consecutive sequence numbers, ascending). `Ok` only once the
    /// destination holds every line durably (fsync, HTTP 2xx, JetStream ack). On `Err` the whole
    /// batch is sent again later; a sink that may have stored a prefix must tolerate that
    /// (destinations dedupe by node + seq; the file sink skips lines it already has).
    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError>;

    /// Makes everything sent so far durable, if `send` does not already (file sink with
    /// `fsync = "interval"`). Called on shutdown and periodically. Default: nothing to do.
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
