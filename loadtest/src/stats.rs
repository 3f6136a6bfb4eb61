//! Counters and latency histograms, merged across streams at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use waping_protocol::ErrorCode;

/// What one stream observed.
#[derive(Debug)]
pub struct StreamStats {
    /// From intended send time to ACCEPTED, µs.
    pub accept: Histogram<u64>,
    /// From intended send time to REPORT, µs.
    pub delivery: Histogram<u64>,
    /// Refusals by reason name (gateway REJECTED codes, JetStream publish errors).
    pub rejected: BTreeMap<String, u64>,
    /// Failed reports by reason name.
    pub failed: BTreeMap<String, u64>,
    /// ACCEPTED count.
    pub accepted: u64,
    /// REPORT with status sent.
    pub delivered: u64,
    /// REPORT with status deferred (not final).
    pub deferred: u64,
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            accept: hist(),
            delivery: hist(),
            rejected: BTreeMap::new(),
            failed: BTreeMap::new(),
            accepted: 0,
            delivered: 0,
            deferred: 0,
        }
    }
}

impl StreamStats {
    /// Adds another stream's numbers.
    pub fn merge(&mut self, o: &StreamStats) {
        let _ = self.accept.add(&o.accept);
        let _ = self.delivery.add(&o.delivery);
        for (k, v) in &o.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.deferred += o.deferred;
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a µs histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The JSON summary printed at the end.
///
/// Fields a target cannot measure are `null`: the JetStream baseline has no
/// delivery reports.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `gateway` or `jetstream`.
    pub target: &'static str,
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Target rate (open loop), messages per second.
    pub target_rate: Option<f64>,
    /// In-flight window per stream (closed loop).
    pub window: Option<u32>,
    /// Connections.
    pub connections: usize,
    /// Streams per connection.
    pub streams: usize,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// Sending duration, seconds.
    pub duration_s: f64,
    /// SENDs written.
    pub sent: u64,
    /// ACCEPTED.
    pub accepted: u64,
    /// Accepted per second of sending.
    pub accepted_per_s: f64,
    /// Refused, by reason name.
    pub rejected: BTreeMap<String, u64>,
    /// Sent but neither accepted nor refused when the harness stopped waiting.
    pub unanswered: u64,
    /// Reports with status sent.
    pub delivered: Option<u64>,
    /// Reports with status failed, by reason.
    pub failed: Option<BTreeMap<String, u64>>,
    /// Deferred (not final) reports: a retry was scheduled.
    pub deferred: Option<u64>,
    /// Accepted messages without a report when the harness stopped waiting.
    pub missing_reports: Option<u64>,
    /// Events received on subscriptions, if any.
    pub events: u64,
    /// Accept latency from the intended send time.
    pub accept_latency: Percentiles,
    /// Delivery-report latency from the intended send time.
    pub delivery_latency: Option<Percentiles>,
}

/// Names a numeric code for the summary.
pub fn code_name(c: u16) -> String {
    let e = ErrorCode(c);
    format!("{}({c})", e.name())
}
