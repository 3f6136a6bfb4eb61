//! The producers' handle: [`Auditor`]. Cheap to clone; every subsystem that does
//! something security-relevant holds one.

use std::sync::{Arc, Mutex};

use crate::record::Event;

/// Why a record was not taken. A refused record means the operation it describes must
/// not happen either (policy `refuse`): callers map this to AUDIT_UNAVAILABLE.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// The spool holds `spool_max_bytes` of records some sink has not received.
    #[error(
        "audit spool is full ({bytes} of {max} bytes unshipped): a sink is behind; security-relevant operations are refused until it catches up"
    )]
    SpoolFull {
        /// Bytes held.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// The in-memory queue to the spool writer is full (the disk is stalled).
    #[error("audit queue is full: the spool writer is stalled")]
    QueueFull,
    /// The audit pipeline has stopped (shutdown) or its writer died.
    #[error("audit log is stopped")]
    Stopped,
    /// Writing the spool failed; the writer keeps retrying.
    #[error("audit spool write failed: {0}")]
    Io(String),
}

impl AuditError {
    /// Whether the same operation may succeed later unchanged (all of them: each is a
    /// transient state of the node, none is the caller's fault).
    pub fn retryable(&self) -> bool {
        true
    }
}

/// A record waiting for the spool writer, with an optional reply once it is durable.
#[derive(Debug)]
pub struct Pending {
    /// The event.
    pub event: Event,
    /// Completed with the record's sequence number after fsync (or the error).
    pub done: Option<tokio::sync::oneshot::Sender<Result<u64, AuditError>>>,
}

/// Resolves when a submitted record is durable in the spool.
#[derive(Debug)]
pub struct Receipt(tokio::sync::oneshot::Receiver<Result<u64, AuditError>>);

impl Receipt {
    /// The record's sequence number once it is fsync'd, or why it is not.
    pub async fn wait(self) -> Result<u64, AuditError> {
        self.0.await.unwrap_or(Err(AuditError::Stopped))
    }
}

/// Where an [`Auditor`] puts records: the spool writer, or memory in tests.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Queues one record; must not block. Errors when it cannot be taken.
    fn push(&self, p: Pending) -> Result<(), AuditError>;
    /// Whether a record would be taken now (same errors as `push`).
    fn check(&self) -> Result<(), AuditError>;
}

/// The producers' handle.
#[derive(Debug, Clone)]
pub struct Auditor {
    backend: Arc<dyn Backend>,
    node: Arc<str>,
}

impl Auditor {
    /// An auditor over `backend` for node `node`.
    pub fn new(backend: Arc<dyn Backend>, node: &str) -> Auditor {
        Auditor {
            backend,
            node: node.into(),
        }
    }

    /// The node name records are written under.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues `ev` without waiting; it is durable within one writer batch (milliseconds).
    /// For events where the caller cannot wait (authentication failures, session events).
    pub fn emit(&self, ev: Event) -> Result<(), AuditError> {
        let r = self.backend.push(Pending {
            event: ev,
            done: None,
        });
        if let Err(e) = &r {
            metrics::counter!("waping_audit_refused_total", "reason" => refusal_label(e)).increment(1);
        }
        r
    }

    /// Queues `ev`; the [`Receipt`] resolves once it is fsync'd in the spool.
    pub fn submit(&self, ev: Event) -> Result<Receipt, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = self.backend.push(Pending {
            event: ev,
            done: Some(tx),
        }) {
            metrics::counter!("waping_audit_refused_total", "reason" => refusal_label(&e)).increment(1);
            return Err(e);
        }
        Ok(Receipt(rx))
    }

    /// Queues `ev` and waits until it is fsync'd in the spool; returns its sequence number.
    /// For operations whose success must not be reported before their record is safe.
    pub async fn record(&self, ev: Event) -> Result<u64, AuditError> {
        self.submit(ev)?.wait().await
    }

    /// Whether a record would be taken now: called before a security-relevant operation so
    /// that, under policy `refuse`, the operation is refused rather than done unrecorded.
    pub fn check(&self) -> Result<(), AuditError> {
        self.backend.check()
    }

    /// An auditor that keeps events in memory, for tests of the subsystems that emit them.
    pub fn memory(node: &str) -> (Auditor, MemoryLog) {
        let log = MemoryLog::default();
        (Auditor::new(Arc::new(log.clone()), node), log)
    }
}

fn refusal_label(e: &AuditError) -> &'static str {
    match e {
        AuditError::SpoolFull { .. } => "spool_full",
        AuditError::QueueFull => "queue_full",
        AuditError::Stopped => "stopped",
        AuditError::Io(_) => "io",
    }
}

/// The in-memory backend of [`Auditor::memory`]. It can be told to refuse, to test
/// callers' handling of a full spool.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    events: Vec<Event>,
    refuse: Option<AuditError>,
}

impl MemoryLog {
    /// Everything recorded so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().expect("memory log").events.clone()
    }

    /// From now on refuse every record with `e` (or accept again with `None`).
    pub fn refuse(&self, e: Option<AuditError>) {
        self.inner.lock().expect("memory log").refuse = e;
    }
}

impl Backend for MemoryLog {
    fn push(&self, p: Pending) -> Result<(), AuditError> {
        let mut g = self.inner.lock().expect("memory log");
        if let Some(e) = &g.refuse {
            return Err(e.clone());
        }
        g.events.push(p.event);
        let seq = g.events.len() as u64;
        if let Some(done) = p.done {
            let _ = done.send(Ok(seq));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), AuditError> {
        match &self.inner.lock().expect("memory log").refuse {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, Actor};

    #[tokio::test]
    async fn memory_log_records_and_refuses() {
        let (a, log) = Auditor::memory("n");
        a.emit(Event::new(1, Actor::System, Action::AuditStart)).unwrap();
        assert_eq!(
            a.record(Event::new(2, Actor::Admin, Action::WorkspaceCreate))
                .await,
            Ok(2)
        );
        log.refuse(Some(AuditError::QueueFull));
        assert_eq!(a.check(), Err(AuditError::QueueFull));
        assert_eq!(
            a.record(Event::new(3, Actor::Admin, Action::WorkspaceCreate))
                .await,
            Err(AuditError::QueueFull)
        );
        assert_eq!(log.events().len(), 2);
    }
}
