//! What `run` sends to: the gateway over QUIC, or NATS JetStream as a baseline.
//!
//! A target connects, then hands `run` one [`Sink`] and one [`Answers`] per
//! stream; `run` owns the schedule, the closed-loop window, the statistics and
//! the summary, so both targets are measured the same way.

pub mod gateway;
pub mod jetstream;

use std::future::Future;

use waping_protocol::{Frame, Text};

use crate::KeyEntry;

/// Writes one stream's messages.
pub trait Sink: Send + 'static {
    /// Adds a `Frame::Send` to the next flush. Its `seq` is the intended send
    /// time (ns since the start), unique on the stream; `device` indexes the
    /// stream's device list.
    fn queue(&mut self, device: usize, send: Frame) -> anyhow::Result<()>;
    /// Writes everything queued since the last flush.
    fn flush(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Reads one stream's answers.
pub trait Answers: Send + 'static {
    /// The next answer; `None` once the stream is closed.
    fn next(&mut self) -> impl Future<Output = anyhow::Result<Option<Answer>>> + Send;
}

/// An answer about one message, identified by its `seq`.
#[derive(Debug)]
pub enum Answer {
    /// Durably accepted (gateway ACCEPTED, JetStream publish ack).
    Accepted {
        /// The SEND's seq (intended send time, ns since the start).
        seq: u64,
    },
    /// Refused; no further answer follows.
    Rejected {
        /// Reason name for the summary.
        reason: String,
    },
    /// Not final: delivery was deferred for a retry (gateway only). The
    /// gateway frees the message's in-flight slot; a final report follows.
    Deferred {
        /// The SEND's seq.
        seq: u64,
    },
    /// Final delivery report (gateway only).
    Report {
        /// The SEND's seq.
        seq: u64,
        /// `None` if delivered, else the failure reason name.
        failed: Option<String>,
    },
    /// Nothing to count.
    Other,
}

/// One stream's two ends and what it sends as.
#[derive(Debug)]
pub struct StreamEnds<S, A> {
    /// Connection index.
    pub conn: usize,
    /// Stream index on that connection.
    pub stream: usize,
    /// Devices of the connection's workspace, used round robin.
    pub devices: Vec<Text>,
    /// Writing end.
    pub sink: S,
    /// Reading end.
    pub answers: A,
}

/// A connected target.
pub trait Target: Send {
    /// Writing end of a stream.
    type Sink: Sink;
    /// Reading end of a stream.
    type Answers: Answers;
    /// Name in the summary.
    const NAME: &'static str;
    /// Whether an accepted message is answered once more, by its delivery
    /// report (the gateway). If not (JetStream), the accept is the last answer:
    /// it resolves the message and frees its closed-loop window slot.
    const REPORTS: bool;
    /// Closes the connections once the run is over.
    fn finish(self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The key file's workspaces, or, if `allow_default` and the file does not
/// exist, the layout `waping-loadtest init` writes by default (4 workspaces ×
/// 8 devices, no keys).
pub fn workspaces(path: &std::path::PathBuf, allow_default: bool) -> anyhow::Result<Vec<KeyEntry>> {
    if allow_default && !path.exists() {
        eprintln!(
            "{} not found: using the `init` default layout (workspaces lt-0..lt-3 × devices dev-0..dev-7)",
            path.display()
        );
        return Ok((0..4)
            .map(|w| KeyEntry {
                id: format!("lt-{w}"),
                key: String::new(),
                devices: (0..8).map(|d| format!("dev-{d}")).collect(),
            })
            .collect());
    }
    let keys = crate::read_keys(path)?;
    if keys.workspaces.is_empty() {
        anyhow::bail!("{}: no workspaces", path.display());
    }
    Ok(keys.workspaces)
}
