//! The metric catalogue (documented in `docs/metrics.md`).
//!
//! Handles for hot counters are resolved once, so the per-message cost is one
//! atomic add. Labels come from closed sets (error-code names, fixed reasons),
//! never from workspace, device or key ids: cardinality stays bounded no matter
//! how many tenants a node carries.

use metrics::{Counter, Gauge, counter, gauge};
use waping_protocol::ErrorCode;

/// Resolved metric handles.
#[derive(Debug)]
pub struct Metrics {
    /// QUIC connections that completed the TLS handshake.
    pub connections_opened: Counter,
    /// Connections currently open.
    pub connections_active: Gauge,
    /// SEND frames received (before any check).
    pub received: Counter,
    /// SENDs acknowledged with ACCEPTED.
    pub accepted: Counter,
    /// Messages handed to the upstream.
    pub dispatched: Counter,
    /// Messages the upstream confirmed.
    pub delivered: Counter,
    /// Confirmations that said "already sent" (a resend after a crash or lost answer).
    pub already_sent: Counter,
    /// Failed attempts put in the retry queue.
    pub retried: Counter,
    /// Messages that became dead letters.
    pub dead: Counter,
    /// SENDs answered with the id of an earlier message with the same idempotency key.
    pub deduplicated: Counter,
    /// Messages recovered unfinished from the journal at start.
    pub recovered: Counter,
    /// Device sessions running.
    pub sessions_active: Gauge,
    /// Live event subscriptions open.
    pub subscriptions_active: Gauge,
}

impl Metrics {
    /// Resolves handles against the installed recorder (no-ops without one).
    pub fn new() -> Self {
        Metrics {
            connections_opened: counter!("waping_connections_opened_total"),
            connections_active: gauge!("waping_connections_active"),
            received: counter!("waping_messages_received_total"),
            accepted: counter!("waping_messages_accepted_total"),
            dispatched: counter!("waping_messages_dispatched_total"),
            delivered: counter!("waping_messages_delivered_total"),
            already_sent: counter!("waping_messages_already_sent_total"),
            retried: counter!("waping_messages_retried_total"),
            dead: counter!("waping_messages_dead_total"),
            deduplicated: counter!("waping_messages_deduplicated_total"),
            recovered: counter!("waping_messages_recovered_total"),
            sessions_active: gauge!("waping_sessions_active"),
            subscriptions_active: gauge!("waping_subscriptions_active"),
        }
    }

    /// A SEND was refused.
    pub fn rejected(&self, code: ErrorCode) {
        counter!("waping_messages_rejected_total", "reason" => code.name()).increment(1);
    }

    /// An accepted message failed upstream.
    pub fn failed(&self, code: ErrorCode) {
        counter!("waping_messages_failed_total", "reason" => code.name()).increment(1);
    }

    /// A connection was closed for a protocol error or refused at handshake.
    pub fn connection_error(&self, code: ErrorCode) {
        counter!("waping_connection_errors_total", "code" => code.name()).increment(1);
    }

    /// A key was refused.
    pub fn auth_failure(&self, reason: &'static str) {
        counter!("waping_auth_failures_total", "reason" => reason).increment(1);
    }

    /// A device session's lifecycle phase changed (`from` None: the session started; `to`
    /// empty: it stopped). Keeps `waping_sessions{phase}` and counts transitions.
    pub fn session_phase(&self, from: Option<&'static str>, to: &'static str) {
        if let Some(f) = from {
            gauge!("waping_sessions", "phase" => f).decrement(1.0);
        }
        if !to.is_empty() {
            gauge!("waping_sessions", "phase" => to).increment(1.0);
            counter!("waping_session_transitions_total", "to" => to).increment(1);
        }
    }

    /// Account-safety pacing held a message back (`reason` ∈ the six `PaceReason` names).
    pub fn paced(&self, reason: &'static str) {
        counter!("waping_pacing_waits_total", "reason" => reason).increment(1);
    }

    /// A message held back for long was parked in the retry queue until the pacer allows it.
    pub fn pacing_deferred(&self, reason: &'static str) {
        counter!("waping_pacing_deferred_total", "reason" => reason).increment(1);
    }

    /// A connect passed the gate and was tried (`attempted`) or refused at once (`failed`).
    pub fn connect_attempt(&self, outcome: &'static str) {
        counter!("waping_session_connects_total", "outcome" => outcome).increment(1);
    }

    /// The upstream reported an event.
    pub fn upstream_event(&self, kind: &'static str) {
        counter!("waping_upstream_events_total", "kind" => kind).increment(1);
    }

    /// A live subscriber missed events.
    pub fn subscriber_lagged(&self, missed: u64) {
        counter!("waping_subscriber_events_missed_total").increment(missed);
    }

    /// Events written to live subscribers.
    pub fn events_sent(&self, n: u64) {
        counter!("waping_subscriber_events_sent_total").increment(n);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Every metric name, for the documentation test.
pub const CATALOGUE: &[&str] = &[
    "waping_connections_opened_total",
    "waping_connections_active",
    "waping_connection_errors_total",
    "waping_auth_failures_total",
    "waping_messages_received_total",
    "waping_messages_accepted_total",
    "waping_messages_rejected_total",
    "waping_messages_dispatched_total",
    "waping_messages_delivered_total",
    "waping_messages_failed_total",
    "waping_messages_already_sent_total",
    "waping_messages_retried_total",
    "waping_messages_dead_total",
    "waping_messages_deduplicated_total",
    "waping_messages_recovered_total",
    "waping_journal_syncs_total",
    "waping_journal_records_total",
    "waping_journal_bytes_total",
    "waping_journal_overloaded_total",
    "waping_journal_errors_total",
    "waping_journal_queued_bytes",
    "waping_journal_disk_bytes",
    "waping_journal_compactions_total",
    "waping_retry_queue_len",
    "waping_idempotency_keys",
    "waping_idempotency_evicted_total",
    "waping_sessions_active",
    "waping_sessions",
    "waping_session_transitions_total",
    "waping_session_connects_total",
    "waping_connect_gate_waiting",
    "waping_pacing_waits_total",
    "waping_pacing_deferred_total",
    "waping_audit_records_total",
    "waping_audit_refused_total",
    "waping_audit_spool_bytes",
    "waping_audit_spool_write_errors_total",
    "waping_audit_inbox_rejected_total",
    "waping_audit_discarded_records_total",
    "waping_audit_sink_records_total",
    "waping_audit_sink_errors_total",
    "waping_audit_sink_lag_records",
    "waping_subscriptions_active",
    "waping_subscriber_events_sent_total",
    "waping_subscriber_events_missed_total",
    "waping_upstream_events_total",
    "waping_http_requests_total",
    "waping_retention_purged_total",
    "waping_retention_compactions_total",
    "waping_journal_retention_pending_segments",
];
