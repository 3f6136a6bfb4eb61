//! Tamper-evident audit records for waping-gateway.
//!
//! - [`record`]: the versioned schema (`docs/audit.md`) and what producers emit.
//! - [`chain`]: SHA-256 links between records and Ed25519-signed digests over the head.
//! - [`verify`]: walks record lines and digests, reports the first altered, missing,
//!   reordered or inserted record with its position (`waping-gateway audit verify`).
//! - [`spool`]: the node's local durable audit log. Producers push into a bounded
//!   lock-free queue; one writer thread assigns sequence numbers, chains, appends and
//!   fsyncs. Every sink reads from it with its own cursor, so a slow or absent sink
//!   never blocks producers and loses nothing while the spool has room.
//! - [`ship`]: one task per sink moving records from its cursor, with backoff.
//! - [`sinks`]: file, stdout, HTTP batch and NATS JetStream.
//! - [`pipeline`]: assembles the above from [`config::AuditConfig`].
//!
//! Design and measurements: `docs/design/0015-audit.md`.

#![forbid(unsafe_code)]

pub mod auditor;
pub mod chain;
pub mod config;
pub mod pipeline;
pub mod record;
pub mod ship;
pub mod sink;
pub mod sinks;
pub mod spool;
pub mod verify;

pub use auditor::{AuditError, Auditor, MemoryLog, Receipt};
pub use chain::{DigestSigner, Hash, PublicKey};
pub use config::AuditConfig;
pub use pipeline::{Pipeline, PipelineOptions};
pub use record::{Action, Actor, Detail, Event, Outcome, Record, Target};
pub use sink::{Line, Sink, SinkError, SinkErrorKind};
