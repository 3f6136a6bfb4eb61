//! Assembles the spool, its writer thread and one shipping task per sink from
//! [`AuditConfig`], and stops them in order: `audit.stop` and a final digest first, then
//! the sinks catch up until a deadline.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auditor::{AuditError, Auditor, Pending};
use crate::chain::DigestSigner;
use crate::config::{AuditConfig, SinkConfig};
use crate::record::{Action, Actor, Detail, Event};
use crate::ship::{self, Backoff, ShipContext};
use crate::sink::{Sink, SinkError};
use crate::sinks::file::FileSink;
use crate::sinks::http::HttpSink;
use crate::sinks::nats::NatsSink;
use crate::sinks::stdout::StdoutSink;
use crate::spool::{Spool, SpoolBackend, SpoolOptions, Writer, now_ms};

/// After the shutdown deadline, how long shipping tasks get to flush and return before
/// they are aborted.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// What the gateway hands the pipeline besides the config.
#[derive(Debug)]
pub struct PipelineOptions {
    /// The gateway's state directory (default home of the spool and the file sink).
    pub state_dir: PathBuf,
    /// The digest signing key.
    pub signer: DigestSigner,
    /// The gateway version, written into `audit.start`.
    pub version: String,
}

/// Why the pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The spool could not be opened or its writer started.
    #[error("audit spool {dir}: {source}")]
    Spool {
        /// The spool directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A sink could not be built from its config.
    #[error("audit sink {name:?}: {source}")]
    Sink {
        /// The sink's name.
        name: String,
        /// Why.
        source: SinkError,
    },
    /// The `audit.start` record could not be written.
    #[error("audit log could not write its start record: {0}")]
    Start(AuditError),
}

/// A sink with its shipping settings.
pub struct SinkSpec {
    /// The sink; its name names its cursor.
    pub sink: Box<dyn Sink>,
    /// Retry delays.
    pub backoff: Backoff,
    /// Records per batch at most.
    pub max_batch_records: usize,
    /// Bytes per batch at most.
    pub max_batch_bytes: usize,
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("sink", &self.sink.name())
            .field("backoff", &self.backoff)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish()
    }
}

/// Builds the sink `cfg` describes, for node `node`.
pub fn build_sink(cfg: &SinkConfig, state_dir: &Path, node: &str) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::File(c) => Box::new(FileSink::open(c, c.resolved_path(state_dir), node)?),
        SinkConfig::Stdout(c) => Box::new(StdoutSink::new(c)),
        SinkConfig::Http(c) => Box::new(HttpSink::new(c, node)?),
        SinkConfig::Nats(c) => Box::new(NatsSink::new(c, node)?),
    })
}

/// The sink `cfg` describes with the batch limits and backoff that suit it.
pub fn build_spec(cfg: &SinkConfig, state_dir: &Path, node: &str) -> Result<SinkSpec, SinkError> {
    let sink = build_sink(cfg, state_dir, node)?;
    let (backoff, max_batch_records, max_batch_bytes) = match cfg {
        // Local sinks: large batches amortise the fsync; failures are a full disk.
        SinkConfig::File(_) => (Backoff::default(), 4096, 4 << 20),
        SinkConfig::Stdout(_) => (Backoff::default(), 1024, 1 << 20),
        SinkConfig::Http(c) => (
            Backoff {
                initial: Duration::from_millis(c.backoff_initial_ms),
                max: Duration::from_millis(c.backoff_max_ms),
            },
            c.max_batch_records as usize,
            c.max_batch_bytes as usize,
        ),
        SinkConfig::Nats(c) => (
            Backoff {
                initial: Duration::from_millis(c.backoff_initial_ms),
                max: Duration::from_millis(c.backoff_max_ms),
            },
            c.max_batch_records as usize,
            8 << 20,
        ),
    };
    Ok(SinkSpec {
        sink,
        backoff,
        max_batch_records,
        max_batch_bytes,
    })
}

/// The running audit pipeline.
#[derive(Debug)]
pub struct Pipeline {
    node: String,
    spool: Spool,
    backend: Arc<SpoolBackend>,
    writer: Option<Writer>,
    sinks: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
    drain: CancellationToken,
    abort: CancellationToken,
}

impl Pipeline {
    /// Opens the spool (`cfg.dir`, default `<state_dir>/audit`), writes `audit.start`, starts
    /// the writer thread and one shipping task per configured sink on the current runtime.
    pub async fn start(cfg: &AuditConfig, opts: PipelineOptions) -> Result<Pipeline, PipelineError> {
        Pipeline::start_with_sinks(cfg, opts, Vec::new()).await
    }

    /// As [`Pipeline::start`], with `extra` sinks besides the configured ones (tests,
    /// embedders with their own destination).
    pub async fn start_with_sinks(
        cfg: &AuditConfig,
        opts: PipelineOptions,
        extra: Vec<SinkSpec>,
    ) -> Result<Pipeline, PipelineError> {
        let node = cfg.node_name();
        let dir = cfg.dir.clone().unwrap_or_else(|| opts.state_dir.join("audit"));
        let spool_err = |source| PipelineError::Spool {
            dir: dir.clone(),
            source,
        };
        let sopts = SpoolOptions::from_config(cfg, dir.clone(), node.clone());
        let (spool, recovery) = tokio::task::spawn_blocking(move || Spool::open(sopts))
            .await
            .map_err(|e| spool_err(io::Error::other(e)))?
            .map_err(spool_err)?;
        let mut specs = Vec::with_capacity(cfg.sinks.len() + extra.len());
        for s in &cfg.sinks {
            let spec = build_spec(s, &opts.state_dir, &node).map_err(|source| PipelineError::Sink {
                name: s.name().to_owned(),
                source,
            })?;
            specs.push(spec);
        }
        specs.extend(extra);
        let mut sinks = Vec::with_capacity(specs.len());
        for s in &specs {
            let name = s.sink.name().to_owned();
            spool.register_sink(&name).map_err(spool_err)?;
            sinks.push(name);
        }
        let start = Event::new(now_ms(), Actor::System, Action::AuditStart).detail(Detail::Start {
            version: opts.version.clone(),
            resumed_at_seq: recovery.head_seq,
            truncated_bytes: recovery.truncated_bytes,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = spool
            .start_writer(
                opts.signer,
                vec![Pending {
                    event: start,
                    done: Some(tx),
                }],
            )
            .map_err(spool_err)?;
        let seq = rx
            .await
            .unwrap_or(Err(AuditError::Stopped))
            .map_err(PipelineError::Start)?;
        tracing::info!(
            node = %node,
            dir = %dir.display(),
            resumed_at_seq = recovery.head_seq,
            truncated_bytes = recovery.truncated_bytes,
            start_seq = seq,
            sinks = ?sinks,
            "audit log started"
        );
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        let tasks = specs
            .into_iter()
            .map(|s| {
                let ctx = ShipContext {
                    spool: spool.clone(),
                    reader: spool.reader(),
                    head: spool.subscribe(),
                    drain: drain.clone(),
                    abort: abort.clone(),
                    backoff: s.backoff,
                    max_batch_records: s.max_batch_records.max(1),
                    max_batch_bytes: s.max_batch_bytes.max(1),
                };
                tokio::spawn(ship::run(s.sink, ctx))
            })
            .collect();
        Ok(Pipeline {
            node,
            backend: spool.backend(),
            spool,
            writer: Some(writer),
            sinks,
            tasks,
            drain,
            abort,
        })
    }

    /// A producers' handle.
    pub fn auditor(&self) -> Auditor {
        Auditor::new(self.backend.clone(), &self.node)
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The spool (cursors, readers).
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The durable head: the highest sequence number fsync'd in the spool.
    pub fn head(&self) -> u64 {
        self.spool.head()
    }

    /// Per sink, records it has not received yet (head - cursor).
    pub fn sink_lag(&self) -> Vec<(String, u64)> {
        let head = self.head();
        self.sinks
            .iter()
            .map(|n| (n.clone(), head.saturating_sub(self.spool.cursor(n))))
            .collect()
    }

    /// Writes `audit.stop` and a final digest, lets the sinks catch up until `deadline`
    /// (from the call), then stops the shipping tasks and the writer thread.
    pub async fn shutdown(mut self, deadline: Duration) {
        let t0 = Instant::now();
        let left = |t0: Instant| deadline.saturating_sub(t0.elapsed());
        if let Some(w) = &self.writer {
            match tokio::time::timeout(left(t0), w.close()).await {
                Ok(Ok(Ok(head))) => tracing::info!(head, "audit log stopped"),
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "audit log: writing audit.stop failed"),
                Ok(Err(_)) => tracing::error!("audit log: the writer thread is gone"),
                Err(_) => tracing::error!("audit log: audit.stop not written before the shutdown deadline"),
            }
        }
        self.drain.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let mut all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(left(t0), &mut all).await.is_err() {
            self.abort.cancel();
            if tokio::time::timeout(ABORT_GRACE, &mut all).await.is_err() {
                for a in aborts {
                    a.abort();
                }
            }
        }
        for (sink, lag) in self.sink_lag() {
            if lag > 0 {
                tracing::warn!(
                    sink = %sink,
                    lag,
                    "audit sink did not catch up before shutdown; it gets the rest from the spool at the next start"
                );
            }
        }
        if let Some(w) = self.writer.take() {
            // Joins the writer thread, which has exited after close (or is told to now).
            let _ = tokio::task::spawn_blocking(move || drop(w)).await;
        }
    }
}

impl Drop for Pipeline {
    /// Without [`Pipeline::shutdown`]: stops the shipping tasks and the writer at once,
    /// without `audit.stop` (the next start records how the chain resumed).
    fn drop(&mut self) {
        self.abort.cancel();
        self.writer.take();
    }
}
