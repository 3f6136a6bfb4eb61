//! NATS JetStream sink: every record is published to `<subject_prefix>.<node>` with a
//! publish acknowledgement, so `send` returns only once the stream holds it.
//!
//! Exactly once, twice over:
//! - Each message carries `Nats-Msg-Id: <node>:<seq>`. JetStream drops a message whose id
//!   it saw within the stream's `duplicate_window` (2 minutes on a stream this sink
//!   creates; the server's default is also 2 minutes) and acks it as a duplicate, which
//!   counts as delivered. That covers a batch resent after a partial failure.
//! - [`Sink::resume`] reads the last message on the node's subject and returns its `seq`
//!   when the subject holds an unbroken run of records up to it, so after a restart or a
//!   long outage (beyond the window) the shipping loop continues after what the stream
//!   already has rather than from its own cursor.
//!
//! The connection is opened lazily by the first `resume` or `send` and then kept;
//! async-nats reconnects it by itself. While it is down, `send` fails at once as
//! `Unavailable` rather than queueing publishes in the client.

use std::fmt;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{
    Context, ContextBuilder, CreateStreamErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, StorageType, Stream};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Subject};
use futures_util::StreamExt;

use crate::config::NatsSinkConfig;
use crate::sink::{Line, Sink, SinkError, SinkErrorKind};

/// `duplicate_window` of a stream created by the sink. JetStream remembers every message
/// id seen within it, so a batch retried within two minutes of its first attempt cannot
/// add a copy. A retry later than that (an ack timeout near its 5-minute maximum plus a
/// long backoff) can; `resume` at start covers restarts, not such in-process retries.
/// Two minutes is also the server's default, and keeps its id table small.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The open connection and the stream it publishes to.
#[derive(Debug, Clone)]
struct Conn {
    client: Client,
    js: Context,
    stream: Stream,
}

/// A sink publishing records to a NATS JetStream stream. See the module documentation.
pub struct NatsSink {
    name: String,
    node: String,
    cfg: NatsSinkConfig,
    subject: Subject,
    timeout: Duration,
    /// Auth token read from `token_file` (never printed).
    token: Option<String>,
    conn: Option<Conn>,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("url", &self.cfg.url)
            .field("stream", &self.cfg.stream)
            .field("subject", &self.subject)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl NatsSink {
    /// A sink for `cfg` shipping the records of `node` to `<subject_prefix>.<node>`.
    /// Does not connect: the first `resume` or `send` does. Errors
    /// ([`SinkErrorKind::Misconfigured`]) on a node name or prefix that cannot form a
    /// subject, and on a `credentials_file` or `token_file` that cannot be read.
    pub fn new(cfg: &NatsSinkConfig, node: &str) -> Result<NatsSink, SinkError> {
        let valid_token = |t: &str| {
            !t.is_empty()
                && !t
                    .bytes()
                    .any(|b| matches!(b, b'*' | b'>') || b.is_ascii_whitespace())
        };
        // A node name with dots (a host name) spans several tokens; `<prefix>.>` takes them.
        if !node.split('.').all(valid_token) {
            return Err(SinkError::new(
                SinkErrorKind::Misconfigured,
                format!("node name {node:?} cannot be part of a NATS subject"),
            ));
        }
        if !cfg.subject_prefix.split('.').all(valid_token) {
            return Err(SinkError::new(
                SinkErrorKind::Misconfigured,
                format!(
                    "subject_prefix {:?} must be dot-separated tokens without wildcards",
                    cfg.subject_prefix
                ),
            ));
        }
        if let Some(path) = &cfg.credentials_file {
            // Parsed at connect (async-nats reads it then); a missing file is a local error now.
            std::fs::metadata(path).map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Local,
                    format!("credentials_file {}: {e}", path.display()),
                )
            })?;
        }
        let token = match &cfg.token_file {
            None => None,
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    SinkError::new(
                        SinkErrorKind::Local,
                        format!("token_file {}: {e}", path.display()),
                    )
                })?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    return Err(SinkError::new(
                        SinkErrorKind::Misconfigured,
                        format!("token_file {} is empty", path.display()),
                    ));
                }
                Some(t)
            }
        };
        Ok(NatsSink {
            name: cfg.name.clone().unwrap_or_else(|| "nats".into()),
            node: node.to_owned(),
            subject: Subject::from(format!("{}.{node}", cfg.subject_prefix)),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            cfg: cfg.clone(),
            token,
            conn: None,
        })
    }

    /// The subject this sink publishes to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The kept connection, opening it (and checking or creating the stream) if needed.
    async fn conn(&mut self) -> Result<Conn, SinkError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = self.connect().await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let url = &self.cfg.url;
        let base = match &self.cfg.credentials_file {
            None => ConnectOptions::new(),
            Some(path) => ConnectOptions::with_credentials_file(path).await.map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Misconfigured,
                    format!("credentials_file {}: {e}", path.display()),
                )
            })?,
        };
        let base = match &self.token {
            Some(t) => base.token(t.clone()),
            None => base,
        };
        let opts = base
            .name(format!("waping-audit {}/{}", self.node, self.name))
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout));
        let client = match tokio::time::timeout(self.timeout, opts.connect(url.as_str())).await {
            Err(_) => {
                return Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!(
                        "connecting to {url}: no answer within {} ms",
                        self.timeout.as_millis()
                    ),
                ));
            }
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    ConnectErrorKind::ServerParse
                    | ConnectErrorKind::Authentication
                    | ConnectErrorKind::AuthorizationViolation => SinkErrorKind::Misconfigured,
                    _ => SinkErrorKind::Unavailable,
                };
                return Err(SinkError::new(kind, format!("connecting to {url}: {e}")));
            }
            Ok(Ok(c)) => c,
        };
        let inflight = usize::try_from(self.cfg.max_batch_records.max(1)).unwrap_or(10_000);
        let js = ContextBuilder::new()
            .timeout(self.timeout)
            // Acks of a batch abandoned on error are still awaited in the background and
            // hold their in-flight permits until then; bound that by our timeout too.
            .ack_timeout(self.timeout)
            // Room for one abandoned batch plus the next one.
            .max_ack_inflight(inflight * 2)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let stream = self.stream(&js).await?;
        Ok(Conn { client, js, stream })
    }

    /// Finds (or creates) the configured stream and checks it takes this sink's subject.
    async fn stream(&self, js: &Context) -> Result<Stream, SinkError> {
        let name = &self.cfg.stream;
        let stream = if self.cfg.create_stream {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", self.cfg.subject_prefix)],
                storage: StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            };
            js.get_or_create_stream(config).await.map_err(|e| {
                let kind = match e.kind() {
                    CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::Response => {
                        SinkErrorKind::Unavailable
                    }
                    CreateStreamErrorKind::JetStream(_) => SinkErrorKind::Rejected,
                    _ => SinkErrorKind::Misconfigured,
                };
                SinkError::new(kind, format!("creating or finding stream {name}: {e}"))
            })?
        } else {
            js.get_stream(name).await.map_err(|e| {
                let kind = match e.kind() {
                    GetStreamErrorKind::Request => SinkErrorKind::Unavailable,
                    GetStreamErrorKind::JetStream(j) if j.error_code() != ErrorCode::STREAM_NOT_FOUND => {
                        SinkErrorKind::Rejected
                    }
                    _ => SinkErrorKind::Misconfigured,
                };
                SinkError::new(kind, format!("finding stream {name} (create_stream is off): {e}"))
            })?
        };
        let info = stream.cached_info();
        if !info
            .config
            .subjects
            .iter()
            .any(|pattern| subject_matches(pattern, &self.subject))
        {
            return Err(SinkError::new(
                SinkErrorKind::Misconfigured,
                format!(
                    "stream {name} takes subjects {:?}, not {}; add \"{}.>\" to it, or choose another stream or subject_prefix",
                    info.config.subjects, self.subject, self.cfg.subject_prefix
                ),
            ));
        }
        if info.config.storage != StorageType::File {
            tracing::warn!(
                sink = %self.name,
                stream = %name,
                "audit stream uses memory storage: records acknowledged by it are lost when the NATS server restarts"
            );
        }
        Ok(stream)
    }

    /// Publishes `chunk` (all in flight at once), then waits for every ack.
    async fn publish(&self, conn: &Conn, chunk: &[Line]) -> Result<(), SinkError> {
        let mut acks = Vec::with_capacity(chunk.len());
        for line in chunk {
            let msg = PublishMessage::build()
                .payload(line.bytes.clone())
                .message_id(format!("{}:{}", self.node, line.seq));
            let ack = conn
                .js
                .send_publish(self.subject.clone(), msg)
                .await
                .map_err(|e| self.publish_error(line.seq, &e))?;
            acks.push(ack);
        }
        for (line, ack) in chunk.iter().zip(acks) {
            // A duplicate ack means the stream already has it: delivered.
            let ack = ack.await.map_err(|e| self.publish_error(line.seq, &e))?;
            if ack.stream != self.cfg.stream {
                return Err(SinkError::new(
                    SinkErrorKind::Misconfigured,
                    format!(
                        "{} is stored by stream {}, not the configured {}",
                        self.subject, ack.stream, self.cfg.stream
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The record `seq` of the first or last message on the subject: `Ok(None)` if the
    /// subject is empty, `Err(None)` if that message is not a record of this node.
    async fn edge(&self, conn: &Conn, first: bool) -> Result<Option<u64>, Option<SinkError>> {
        let which = if first { "first" } else { "last" };
        let got = if first {
            conn.stream
                .raw_message_builder()
                .sequence(1)
                .next_by_subject(self.subject.to_string())
                .send()
                .await
        } else {
            conn.stream.get_last_raw_message_by_subject(&self.subject).await
        };
        let msg = match got {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => {
                let kind = match e.kind() {
                    LastRawMessageErrorKind::JetStream(_) => SinkErrorKind::Rejected,
                    LastRawMessageErrorKind::InvalidSubject => SinkErrorKind::Misconfigured,
                    _ => SinkErrorKind::Unavailable,
                };
                return Err(Some(SinkError::new(
                    kind,
                    format!("reading the {which} message of {}: {e}", self.subject),
                )));
            }
        };
        #[derive(serde::Deserialize)]
        struct Head {
            seq: u64,
            node: Option<String>,
        }
        match serde_json::from_slice::<Head>(&msg.payload) {
            Ok(h) if h.node.as_deref().is_none_or(|n| n == self.node) => Ok(Some(h.seq)),
            _ => {
                tracing::warn!(
                    sink = %self.name,
                    subject = %self.subject,
                    stream_sequence = msg.sequence,
                    "the {which} message on the audit subject is not a record of this node; something else publishes there"
                );
                Err(None)
            }
        }
    }

    /// See [`Sink::resume`] for this sink.
    async fn contiguous_head(&self, conn: &Conn) -> Result<Option<u64>, SinkError> {
        // A foreign message there means "cannot tell", not an error: the loop retries
        // errors of `resume` before shipping anything, and a stray publish must not stop
        // delivery.
        let (last, first) = match (self.edge(conn, false).await, self.edge(conn, true).await) {
            (Ok(Some(l)), Ok(Some(f))) => (l, f),
            (Err(Some(e)), _) | (_, Err(Some(e))) => return Err(e),
            _ => return Ok(None),
        };
        let mut counts = conn
            .stream
            .info_with_subjects(&*self.subject)
            .await
            .map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("counting the messages on {}: {e}", self.subject),
                )
            })?;
        let mut held = 0u64;
        while let Some(entry) = counts.next().await {
            let (subject, n) = entry.map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("counting the messages on {}: {e}", self.subject),
                )
            })?;
            if subject == *self.subject {
                held += n as u64;
            }
        }
        if last >= first && held == last - first + 1 {
            return Ok(Some(last));
        }
        tracing::warn!(
            sink = %self.name,
            subject = %self.subject,
            first,
            last,
            held,
            "the audit stream's records of this node are not one unbroken run; resuming from the local cursor (records it already has may be sent again)"
        );
        Ok(None)
    }

    fn publish_error(&self, seq: u64, e: &PublishError) -> SinkError {
        let kind = match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => SinkErrorKind::Unavailable,
            PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded => {
                SinkErrorKind::Misconfigured
            }
            _ => SinkErrorKind::Rejected,
        };
        SinkError::new(
            kind,
            format!(
                "publishing seq {seq} to {} (stream {}): {e}",
                self.subject, self.cfg.stream
            ),
        )
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// The `seq` of the last message on this node's subject, if the subject holds an
    /// unbroken run of records up to it; `None` if it holds none, a run with a hole, or
    /// messages that are not this node's records.
    ///
    /// A hole can appear when a connection drops mid-batch: publishes already written to
    /// the dead socket are lost while those still buffered in the client go out after the
    /// reconnect, so the stream holds e.g. 15..=20 but not 11..=14 until the retry fills
    /// them in (after 20, in stream order). Answering 20 then would skip 11..=14 for good
    /// once the dedupe window has passed; "cannot tell" makes the loop resume from its
    /// own cursor, which is never past an unacknowledged record (a duplicate at worst).
    async fn resume(&mut self) -> Result<Option<u64>, SinkError> {
        let conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, self.contiguous_head(&conn)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::new(
                SinkErrorKind::Unavailable,
                format!(
                    "reading the records on {}: no answer within {} ms",
                    self.subject,
                    self.timeout.as_millis()
                ),
            )),
        }
    }

    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError> {
        let conn = self.conn().await?;
        let per = usize::try_from(self.cfg.max_batch_records.max(1)).unwrap_or(10_000);
        for chunk in batch.chunks(per) {
            // Publishing while disconnected would only queue in the client until the
            // timeout; fail now and let the loop's backoff wait for the reconnect.
            if conn.client.connection_state() == State::Disconnected {
                return Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("disconnected from {} (reconnecting)", self.cfg.url),
                ));
            }
            match tokio::time::timeout(self.timeout, self.publish(&conn, chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if e.kind == SinkErrorKind::Misconfigured {
                        // The stream may have been deleted or changed: check it again
                        // (and recreate it if configured) before the next attempt.
                        self.conn = None;
                    }
                    return Err(e);
                }
                Err(_) => {
                    return Err(SinkError::new(
                        SinkErrorKind::Unavailable,
                        format!(
                            "publishing to {}: not acknowledged within {} ms",
                            self.subject,
                            self.timeout.as_millis()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether NATS subject `pattern` (`*` = one token, `>` = one or more trailing tokens)
/// matches the literal `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("waping.audit.>", "waping.audit.n1"));
        assert!(subject_matches("waping.*.n1", "waping.audit.n1"));
        assert!(subject_matches("waping.audit.n1", "waping.audit.n1"));
        assert!(subject_matches(">", "waping.audit.n1"));
        assert!(!subject_matches("waping.audit.>", "waping.audit"));
        assert!(!subject_matches("waping.audit.*", "waping.audit.n1.x"));
        assert!(!subject_matches("waping.audit", "waping.audit.n1"));
        assert!(!subject_matches("other.>", "waping.audit.n1"));
    }

    #[test]
    fn names_that_cannot_form_a_subject_are_refused() {
        let cfg = NatsSinkConfig::default();
        assert_eq!(NatsSink::new(&cfg, "n1").unwrap().subject(), "waping.audit.n1");
        assert_eq!(
            NatsSink::new(&cfg, "gw1.example.org").unwrap().subject(),
            "waping.audit.gw1.example.org"
        );
        for node in ["", "a..b", ".a", "a*", ">", "a b"] {
            assert_eq!(
                NatsSink::new(&cfg, node).unwrap_err().kind,
                SinkErrorKind::Misconfigured,
                "{node:?}"
            );
        }
        let cfg = NatsSinkConfig {
            subject_prefix: "a..b".into(),
            ..Default::default()
        };
        assert!(NatsSink::new(&cfg, "n1").is_err());
    }
}
