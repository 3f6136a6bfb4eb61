//! The metric catalogue (documented in `docs/metrics.md`).
//!
//! Handles for hot counters are resolved once, so the per-message cost is one
//! atomic add. Labels come from closed sets (error-code names, fixed reasons),
//! never from device or key ids: cardinality stays bounded no matter how many
//! tenants a node carries. The one exception is opt-in: with `metrics.per_workspace`
//! the send pipeline is also counted per workspace ([`WorkspaceMetrics`]), for at most
//! `metrics.per_workspace_max` label values plus `_other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use waping_journal::{SYNC_LATENCY_BOUNDS_NS, SyncLatency};
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
    /// Messages device sessions have taken from their queue and hold back (pacing, a full send
    /// window, no connection). A plain atomic, summed into `waping_device_queue_messages` by
    /// [`Metrics::publish_session_load`]: the hot path pays one relaxed add, not a gauge update.
    pub device_held: AtomicI64,
    /// Sends handed to the upstream and not answered yet (`waping_upstream_in_flight`).
    pub upstream_in_flight: AtomicI64,
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
            device_held: AtomicI64::new(0),
            upstream_in_flight: AtomicI64::new(0),
        }
    }

    /// A device session's held message and sends in flight went from `from` to `to`
    /// (`(held, in_flight)`). Called only when they change.
    pub fn session_load(&self, from: (i64, i64), to: (i64, i64)) {
        if from.0 != to.0 {
            self.device_held.fetch_add(to.0 - from.0, Ordering::Relaxed);
        }
        if from.1 != to.1 {
            self.upstream_in_flight
                .fetch_add(to.1 - from.1, Ordering::Relaxed);
        }
    }

    /// Publishes the device queue gauges: `queued` messages in the sessions' bounded queues
    /// (sampled by the caller) plus those the sessions hold, and the sends in flight.
    pub fn publish_session_load(&self, queued: u64) {
        let held = self.device_held.load(Ordering::Relaxed).max(0) as u64;
        gauge!("waping_device_queue_messages").set((queued + held) as f64);
        let in_flight = self.upstream_in_flight.load(Ordering::Relaxed).max(0);
        gauge!("waping_upstream_in_flight").set(in_flight as f64);
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

/// Name of the journal's sync latency histogram.
pub const JOURNAL_SYNC_SECONDS: &str = "waping_journal_sync_seconds";

/// Bucket bounds of [`JOURNAL_SYNC_SECONDS`] in seconds: the journal's own bounds (50 µs to
/// 1 s), converted the same way as the values recorded into them.
pub fn journal_sync_buckets() -> [f64; SYNC_LATENCY_BOUNDS_NS.len()] {
    SYNC_LATENCY_BOUNDS_NS.map(ns_to_seconds)
}

fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The Prometheus exporter as the catalogue needs it: histograms with their documented
/// buckets (without this the exporter renders them as summaries).
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(JOURNAL_SYNC_SECONDS.into()),
            &journal_sync_buckets(),
        )
        // Only an empty bucket list is refused, and this one is a non-empty constant.
        .expect("sync latency buckets are not empty")
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_REQUEST_SECONDS.into()),
            &WEBHOOK_REQUEST_BUCKETS,
        )
        .expect("webhook request buckets are not empty")
}

/// Replays the journal syncs counted since `prev` into [`JOURNAL_SYNC_SECONDS`].
///
/// The journal counts syncs per bucket with their summed duration, not each duration (its
/// writer thread must not wait on a recorder). The new syncs of each bucket are recorded at
/// their mean duration, rounded up to the nanosecond, which lies in that bucket: the exported
/// buckets and count are exact, the sum is off by under 1 ns per sync. A snapshot can catch a
/// sync counted but not yet summed (two relaxed atomics); the mean is then clamped into its
/// bucket, and the sum is off by about that one sync.
pub fn record_journal_syncs(prev: &SyncLatency, cur: &SyncLatency) {
    let h = histogram!(JOURNAL_SYNC_SECONDS);
    for (b, &n) in cur.counts.iter().enumerate() {
        let n = n.saturating_sub(prev.counts[b]);
        if n == 0 {
            continue;
        }
        let sum = cur.sum_ns[b].saturating_sub(prev.sum_ns[b]);
        let lo = if b == 0 { 0 } else { SYNC_LATENCY_BOUNDS_NS[b - 1] };
        let hi = SYNC_LATENCY_BOUNDS_NS.get(b).copied().unwrap_or(u64::MAX);
        let mean = sum.div_ceil(n).clamp(lo + 1, hi);
        h.record_many(ns_to_seconds(mean), n as usize);
    }
}

/// Publishes the process's resident and virtual memory (`/proc/self/status`; Linux only,
/// nothing elsewhere). A read of a procfs file, once a second: no disk, a few microseconds.
pub fn record_process_memory() {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let m = ProcessMemory::parse(&status);
    if let Some(rss) = m.resident_bytes {
        gauge!("waping_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(vsz) = m.virtual_bytes {
        gauge!("waping_process_virtual_memory_bytes").set(vsz as f64);
    }
}

/// Memory figures of `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProcessMemory {
    /// `VmRSS`: resident set (anonymous, file and shared memory pages in RAM).
    resident_bytes: Option<u64>,
    /// `VmSize`: the address space mapped.
    virtual_bytes: Option<u64>,
}

impl ProcessMemory {
    fn parse(status: &str) -> ProcessMemory {
        let kib = |v: &str| {
            let v = v.trim().strip_suffix("kB")?.trim();
            v.parse::<u64>().ok().map(|k| k * 1024)
        };
        let mut m = ProcessMemory::default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("VmRSS:") {
                m.resident_bytes = kib(v);
            } else if let Some(v) = line.strip_prefix("VmSize:") {
                m.virtual_bytes = kib(v);
            }
        }
        m
    }
}

/// Label value shared by the workspaces beyond `metrics.per_workspace_max`.
pub const OTHER_WORKSPACES: &str = "_other";

/// The send pipeline of one workspace (`metrics.per_workspace`): the node's stage counters
/// again, with a `workspace` label. Resolved once per workspace, so counting costs what the
/// node counters cost; the by-reason series are resolved on first use (most never occur).
#[derive(Debug)]
pub struct WorkspaceMetrics {
    label: String,
    /// `waping_workspace_messages_received_total`.
    pub received: Counter,
    /// `waping_workspace_messages_accepted_total`.
    pub accepted: Counter,
    /// `waping_workspace_messages_delivered_total`.
    pub delivered: Counter,
    /// `waping_workspace_messages_rejected_total{reason}`, by position in the protocol's code
    /// catalogue (one more slot for a code it does not know).
    rejected: Box<[OnceLock<Counter>]>,
    /// `waping_workspace_messages_failed_total{reason}`, indexed the same way.
    failed: Box<[OnceLock<Counter>]>,
}

fn code_slot(code: ErrorCode) -> usize {
    let cat = waping_protocol::CATALOGUE;
    cat.binary_search_by_key(&code.0, |c| c.code.0)
        .unwrap_or(cat.len())
}

fn code_slots() -> Box<[OnceLock<Counter>]> {
    (0..=waping_protocol::CATALOGUE.len())
        .map(|_| OnceLock::new())
        .collect()
}

impl WorkspaceMetrics {
    fn new(label: &str) -> WorkspaceMetrics {
        let l = || label.to_string();
        WorkspaceMetrics {
            label: l(),
            received: counter!("waping_workspace_messages_received_total", "workspace" => l()),
            accepted: counter!("waping_workspace_messages_accepted_total", "workspace" => l()),
            delivered: counter!("waping_workspace_messages_delivered_total", "workspace" => l()),
            rejected: code_slots(),
            failed: code_slots(),
        }
    }

    /// The `workspace` label value: the workspace's id, or [`OTHER_WORKSPACES`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A SEND of this workspace was refused with `code`.
    pub fn rejected(&self, code: ErrorCode) {
        self.rejected[code_slot(code)]
            .get_or_init(|| {
                counter!("waping_workspace_messages_rejected_total",
                    "workspace" => self.label.clone(), "reason" => code.name())
            })
            .increment(1);
    }

    /// An accepted message of this workspace failed with `code`.
    pub fn failed(&self, code: ErrorCode) {
        self.failed[code_slot(code)]
            .get_or_init(|| {
                counter!("waping_workspace_messages_failed_total",
                    "workspace" => self.label.clone(), "reason" => code.name())
            })
            .increment(1);
    }
}

/// Hands out [`WorkspaceMetrics`]: the first `max` workspace ids, in the order they are
/// registered, get their own label value; every later one shares [`OTHER_WORKSPACES`]. An id
/// keeps its handles for the life of the process (deleted and created again, it counts on
/// where it was), so the number of label values never exceeds `max + 1`.
#[derive(Debug)]
pub struct WorkspaceLabels {
    max: usize,
    given: Mutex<HashMap<String, Arc<WorkspaceMetrics>>>,
    other: OnceLock<Arc<WorkspaceMetrics>>,
}

impl WorkspaceLabels {
    /// At most `max` workspaces with a label value of their own.
    pub fn new(max: u32) -> WorkspaceLabels {
        WorkspaceLabels {
            max: max as usize,
            given: Mutex::new(HashMap::new()),
            other: OnceLock::new(),
        }
    }

    /// The handles of workspace `id` (rare: when a workspace is registered).
    pub fn of(&self, id: &str) -> Arc<WorkspaceMetrics> {
        let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = given.get(id) {
            return m.clone();
        }
        if given.len() < self.max {
            let m = Arc::new(WorkspaceMetrics::new(id));
            given.insert(id.to_string(), m.clone());
            return m;
        }
        self.other
            .get_or_init(|| Arc::new(WorkspaceMetrics::new(OTHER_WORKSPACES)))
            .clone()
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
    JOURNAL_SYNC_SECONDS,
    "waping_device_queue_messages",
    "waping_upstream_in_flight",
    "waping_process_resident_memory_bytes",
    "waping_process_virtual_memory_bytes",
    "waping_workspace_messages_received_total",
    "waping_workspace_messages_accepted_total",
    "waping_workspace_messages_rejected_total",
    "waping_workspace_messages_delivered_total",
    "waping_workspace_messages_failed_total",
    "waping_config_reloads_total",
    "waping_config_reload_timestamp_seconds",
    "waping_config_restart_pending",
    "waping_tls_reloads_total",
    "waping_events_appended_total",
    "waping_events_dropped_total",
    "waping_events_append_errors_total",
    "waping_events_log_rows",
    "waping_events_store_bytes",
    "waping_webhook_deliveries_total",
    "waping_webhook_pending",
    "waping_webhook_dead",
    WEBHOOK_REQUEST_SECONDS,
    // Live subscriptions read from the event log (WebSocket, QUIC with a cursor).
    "waping_log_subscribers",
    "waping_log_subscriber_events_total",
    "waping_log_subscriber_gaps_total",
    // Automations (issue 8).
    "waping_automation_matches_total",
    "waping_automation_suppressed_total",
    "waping_automation_actions_total",
];

/// Catalogue entries of type histogram: exposed as `<name>_bucket`, `<name>_sum` and
/// `<name>_count` (or, by an exporter without their buckets, as a summary).
pub const HISTOGRAMS: &[&str] = &[JOURNAL_SYNC_SECONDS, WEBHOOK_REQUEST_SECONDS];

/// Duration of one webhook delivery attempt, connect to response headers (histogram).
pub const WEBHOOK_REQUEST_SECONDS: &str = "waping_webhook_request_seconds";

/// Bucket bounds of [`WEBHOOK_REQUEST_SECONDS`]: 5 ms (a receiver on the same network) to the
/// longest allowed timeout (120 s).
pub const WEBHOOK_REQUEST_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 120.0,
];

#[cfg(test)]
mod tests {
    use super::*;
    use waping_journal::SYNC_LATENCY_BUCKETS;

    /// Renders what `f` records through the exporter as the gateway builds it.
    fn rendered(f: impl FnOnce()) -> String {
        let recorder = prometheus_builder().build_recorder();
        metrics::with_local_recorder(&recorder, f);
        recorder.handle().render()
    }

    /// `name{labels} value` lines of `text` → value.
    fn series(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    }

    fn le(bound_s: f64) -> String {
        format!("{JOURNAL_SYNC_SECONDS}_bucket{{le=\"{bound_s}\"}}")
    }

    #[test]
    fn journal_sync_deltas_become_exact_histogram_buckets() {
        let bounds = journal_sync_buckets();
        let mut prev = SyncLatency::default();
        // Already exported: 4 syncs at 40 µs.
        prev.counts[0] = 4;
        prev.sum_ns[0] = 160_000;
        let mut cur = prev;
        // New: 3 more at or under 50 µs (one exactly on the bound), 2 between 1 and 2.5 ms,
        // 1 of 3 s (overflow).
        cur.counts[0] += 3;
        cur.sum_ns[0] += 20_000 + 30_000 + 50_000;
        cur.counts[5] += 2;
        cur.sum_ns[5] += 1_000_001 + 2_500_000;
        cur.counts[SYNC_LATENCY_BUCKETS - 1] += 1;
        cur.sum_ns[SYNC_LATENCY_BUCKETS - 1] += 3_000_000_000;
        let text = rendered(|| record_journal_syncs(&prev, &cur));
        assert!(
            text.contains(&format!("# TYPE {JOURNAL_SYNC_SECONDS} histogram")),
            "{text}"
        );
        let s = series(&text);
        let at = |k: String| *s.get(&k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
        assert_eq!(at(le(bounds[0])), 3.0);
        assert_eq!(at(le(bounds[4])), 3.0);
        assert_eq!(at(le(bounds[5])), 5.0);
        assert_eq!(at(le(bounds[13])), 5.0);
        assert_eq!(at(format!("{JOURNAL_SYNC_SECONDS}_bucket{{le=\"+Inf\"}}")), 6.0);
        assert_eq!(at(format!("{JOURNAL_SYNC_SECONDS}_count")), 6.0);
        let sum = at(format!("{JOURNAL_SYNC_SECONDS}_sum"));
        let want = (100_000 + 3_500_001 + 3_000_000_000u64) as f64 / 1e9;
        assert!((sum - want).abs() < 1e-8, "sum {sum}, want {want}");
    }

    #[test]
    fn a_sync_counted_before_it_is_summed_stays_in_its_bucket() {
        let bounds = journal_sync_buckets();
        let mut cur = SyncLatency::default();
        // Caught between the two adds: counted in the 50..100 µs bucket, not summed yet.
        cur.counts[1] = 1;
        let s = series(&rendered(|| record_journal_syncs(&SyncLatency::default(), &cur)));
        assert_eq!(s[&le(bounds[0])], 0.0);
        assert_eq!(s[&le(bounds[1])], 1.0);
        // And the other way round: summed twice as much as the count says.
        let mut cur = SyncLatency::default();
        cur.counts[1] = 1;
        cur.sum_ns[1] = 2 * 90_000;
        let s = series(&rendered(|| record_journal_syncs(&SyncLatency::default(), &cur)));
        assert_eq!(s[&le(bounds[1])], 1.0);
        assert_eq!(s[&le(bounds[2])], 1.0);
        assert_eq!(s[&le(bounds[0])], 0.0);
    }

    #[test]
    fn no_new_syncs_record_nothing() {
        let mut cur = SyncLatency::default();
        cur.counts[3] = 7;
        cur.sum_ns[3] = 7 * 400_000;
        let s = series(&rendered(|| record_journal_syncs(&cur, &cur)));
        assert_eq!(s[&format!("{JOURNAL_SYNC_SECONDS}_count")], 0.0);
    }

    #[test]
    fn memory_figures_are_read_from_proc_status() {
        let status = "Name:\twaping-gateway\nVmPeak:\t  999999 kB\nVmSize:\t  123456 kB\nVmHWM:\t 5000 kB\nVmRSS:\t    4096 kB\nThreads:\t9\n";
        assert_eq!(
            ProcessMemory::parse(status),
            ProcessMemory {
                resident_bytes: Some(4096 * 1024),
                virtual_bytes: Some(123_456 * 1024),
            }
        );
        assert_eq!(ProcessMemory::parse("Name:\tx\n"), ProcessMemory::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_memory_is_published() {
        let s = series(&rendered(record_process_memory));
        let rss = s["waping_process_resident_memory_bytes"];
        assert!(rss > 1_048_576.0, "{rss}");
        assert!(s["waping_process_virtual_memory_bytes"] >= rss);
    }

    #[test]
    fn workspaces_beyond_the_limit_share_other() {
        let labels = WorkspaceLabels::new(2);
        let a = labels.of("a");
        let b = labels.of("b");
        let c = labels.of("c");
        let d = labels.of("d");
        assert_eq!((a.label(), b.label(), c.label()), ("a", "b", OTHER_WORKSPACES));
        assert!(Arc::ptr_eq(&c, &d));
        // An id keeps its handles (a workspace deleted and created again counts on).
        assert!(Arc::ptr_eq(&labels.of("a"), &a));
        assert!(Arc::ptr_eq(&labels.of("c"), &c));
    }

    #[test]
    fn workspace_counters_carry_the_workspace_and_reason() {
        let text = rendered(|| {
            let labels = WorkspaceLabels::new(1);
            let a = labels.of("acme");
            let other = labels.of("globex");
            a.received.increment(3);
            a.accepted.increment(1);
            a.delivered.increment(1);
            a.rejected(ErrorCode::RATE_LIMITED);
            a.rejected(ErrorCode::RATE_LIMITED);
            a.rejected(ErrorCode(65_000));
            a.failed(ErrorCode::UPSTREAM_REJECTED);
            other.received.increment(1);
            other.rejected(ErrorCode::UNKNOWN_DEVICE);
        });
        let s = series(&text);
        let want = [
            ("received", r#"workspace="acme""#, 3.0),
            ("accepted", r#"workspace="acme""#, 1.0),
            ("delivered", r#"workspace="acme""#, 1.0),
            ("rejected", r#"workspace="acme",reason="RATE_LIMITED""#, 2.0),
            ("rejected", r#"workspace="acme",reason="UNKNOWN""#, 1.0),
            ("failed", r#"workspace="acme",reason="UPSTREAM_REJECTED""#, 1.0),
            ("received", r#"workspace="_other""#, 1.0),
            ("rejected", r#"workspace="_other",reason="UNKNOWN_DEVICE""#, 1.0),
        ];
        for (stage, labels, v) in want {
            let k = format!("waping_workspace_messages_{stage}_total{{{labels}}}");
            assert_eq!(s.get(&k), Some(&v), "{k}:\n{text}");
        }
        assert!(!text.contains("globex"), "{text}");
    }

    #[test]
    fn session_load_is_published_with_the_sampled_queue() {
        let text = rendered(|| {
            let m = Metrics::new();
            m.session_load((0, 0), (1, 3));
            m.session_load((1, 3), (0, 4));
            m.session_load((0, 0), (1, 0));
            m.publish_session_load(10);
        });
        let s = series(&text);
        assert_eq!(s["waping_device_queue_messages"], 11.0);
        assert_eq!(s["waping_upstream_in_flight"], 4.0);
    }

    #[test]
    fn histograms_are_catalogued() {
        for h in HISTOGRAMS {
            assert!(CATALOGUE.contains(h));
        }
        let mut seen = std::collections::HashSet::new();
        for name in CATALOGUE {
            assert!(seen.insert(name), "{name} twice in the catalogue");
        }
    }
}
