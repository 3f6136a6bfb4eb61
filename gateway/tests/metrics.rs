//! The Prometheus endpoint of the real binary: every stage counts, every series is documented.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use waping_client::Connection;
use waping_gateway::metrics::{CATALOGUE, HISTOGRAMS, JOURNAL_SYNC_SECONDS, journal_sync_buckets};
use waping_protocol::{Body, ErrorCode, Frame, Text};

const LIMITED: Ws = Ws {
    id: "limited",
    devices: &["d1"],
    rate: 1,
    burst: 5,
};

/// Series name with labels (as exposed) → value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    scrape_text(addr)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("numeric value"))
        })
        .collect()
}

/// The exposition text as served.
fn scrape_text(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0 so the body is not chunked and ends with the connection.
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    body.to_string()
}

fn base_name(series: &str) -> &str {
    series.split('{').next().unwrap()
}

/// The catalogue entry a series belongs to: a histogram's `_bucket`, `_sum` and `_count`
/// series belong to the histogram.
fn catalogue_name(series: &str) -> &str {
    let name = base_name(series);
    for h in HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            if name.strip_suffix(suffix) == Some(h) {
                return h;
            }
        }
    }
    name
}

/// Scrapes until `done` holds (the gauges are sampled once a second, counters are updated
/// by other tasks than the one answering the client); the last scrape after 10 s otherwise.
async fn scrape_until(
    addr: SocketAddr,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr);
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k)
        .copied()
        .unwrap_or_else(|| panic!("series {k} missing: {m:#?}"))
}

/// Sends `frames` on one stream of `ws` and reads until each has its answer and every
/// accepted one its report; returns (accepted, rejected).
async fn exchange(gw: &Gateway, ws: &str, frames: &[Frame]) -> (usize, usize) {
    let mut conn = gw.connect(ws).await;
    let mut s = conn.take_control().unwrap();
    for f in frames {
        s.writer.queue(f).unwrap();
    }
    s.writer.flush().await.unwrap();
    let (mut accepted, mut reports, mut rejected) = (0, 0, 0);
    while accepted + rejected < frames.len() || reports < accepted {
        match common::next_frame(&mut s).await {
            Frame::Accepted { .. } => accepted += 1,
            Frame::Rejected { .. } => rejected += 1,
            Frame::Report(_) => reports += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (accepted, rejected)
}

fn send(seq: u64, device: &str) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("k-{seq}")),
        device_id: device.into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from("hello")),
    }
}

#[tokio::test]
async fn every_stage_is_counted_and_every_series_documented() {
    let gw = Gateway::start_with(&[LIMITED], "", true);
    let addr = gw.metrics.expect("metrics listener is on");

    // One refused key: right id, wrong secret.
    let mut key = gw.key("limited").into_bytes();
    let i = "wpk_".len() + 16 + 1;
    key[i] = if key[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(key).unwrap();
    let err = Connection::connect(&gw.client_config(&forged)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED));

    // Burst 5 at 1/s: 5 accepted, then 3 refused by the limiter; 1 for a device that is not there.
    let mut conn = gw.connect("limited").await;
    let mut s = conn.take_control().unwrap();
    for seq in 1..=8 {
        s.writer.queue(&send(seq, "d1")).unwrap();
    }
    s.writer.queue(&send(9, "nope")).unwrap();
    s.writer.flush().await.unwrap();
    let (mut accepted, mut reports, mut rejected) = (0, 0, 0);
    while accepted + rejected < 9 || reports < accepted {
        let f = common::next_frame(&mut s).await;
        match f {
            Frame::Accepted { .. } => accepted += 1,
            Frame::Rejected { .. } => rejected += 1,
            Frame::Report(_) => reports += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, rejected, reports), (5, 4, 5));

    // Counters are updated before the frames are written, but poll anyway: the scrape is a
    // separate task, and the journal and process series are published once a second.
    let m = scrape_until(addr, |m| {
        m.get("waping_messages_delivered_total") == Some(&5.0)
            && m.contains_key("waping_process_resident_memory_bytes")
            && m.contains_key("waping_device_queue_messages")
            && m.get("waping_journal_sync_seconds_count")
                .is_some_and(|&n| n > 0.0)
    })
    .await;
    let get = |k: &str| value(&m, k);
    assert_eq!(get("waping_messages_received_total"), 9.0);
    assert_eq!(get("waping_messages_accepted_total"), 5.0);
    assert_eq!(get("waping_messages_dispatched_total"), 5.0);
    assert_eq!(get("waping_messages_delivered_total"), 5.0);
    assert_eq!(
        get("waping_messages_rejected_total{reason=\"RATE_LIMITED\"}"),
        3.0
    );
    assert_eq!(
        get("waping_messages_rejected_total{reason=\"UNKNOWN_DEVICE\"}"),
        1.0
    );
    assert_eq!(get("waping_auth_failures_total{reason=\"wrong_secret\"}"), 1.0);
    assert_eq!(get("waping_connection_errors_total{code=\"AUTH_FAILED\"}"), 1.0);
    assert_eq!(get("waping_connections_opened_total"), 2.0);
    assert_eq!(get("waping_connections_active"), 1.0);
    assert_eq!(get("waping_sessions_active"), 1.0);
    // The 5 accepted messages were journaled (one fdatasync per group commit, timed).
    let syncs = get("waping_journal_sync_seconds_count");
    assert!(
        syncs >= 1.0 && syncs <= get("waping_journal_syncs_total"),
        "{syncs} timed, {} synced",
        get("waping_journal_syncs_total")
    );
    assert!(get("waping_journal_sync_seconds_sum") > 0.0);
    let rss = get("waping_process_resident_memory_bytes");
    assert!(rss > 1_048_576.0, "resident memory {rss}");
    assert!(get("waping_process_virtual_memory_bytes") >= rss);
    for g in ["waping_device_queue_messages", "waping_upstream_in_flight"] {
        assert!(get(g) >= 0.0, "{g}");
    }

    // Nothing is exposed that the catalogue does not name, and no label carries a tenant id.
    for series in m.keys() {
        let name = catalogue_name(series);
        assert!(
            !name.starts_with("waping_workspace_"),
            "per-workspace series without metrics.per_workspace: {series}"
        );
        assert!(
            CATALOGUE.contains(&name),
            "{name} exposed but not in metrics::CATALOGUE"
        );
        assert!(
            !series.contains("limited") && !series.contains("d1"),
            "tenant ids must never be labels: {series}"
        );
    }
}

#[test]
fn catalogue_and_docs_agree() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    for name in HISTOGRAMS {
        assert!(
            CATALOGUE.contains(name),
            "histogram {name} is not in the catalogue"
        );
    }
    for name in CATALOGUE {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "{name} is in metrics::CATALOGUE but has no row in docs/metrics.md"
        );
    }
    for row in doc.lines().filter(|l| l.starts_with("| `waping_")) {
        let name = row.trim_start_matches("| `").split('`').next().unwrap();
        assert!(
            CATALOGUE.contains(&name),
            "docs/metrics.md documents {name}, which does not exist"
        );
    }
}

/// A slow upstream keeps messages in flight and queued: the two gauges account for every
/// accepted message.
#[tokio::test]
async fn device_queue_and_in_flight_gauges_hold_the_backlog() {
    const BULK: Ws = Ws {
        id: "bulk",
        devices: &["d1"],
        rate: 1000,
        burst: 1000,
    };
    // Sends never answer while the test runs; 16 (the window) go upstream, the rest wait.
    let gw = Gateway::start_upstream(
        &[BULK],
        "[upstream]\nsend_timeout_ms = 600000\n[upstream.sim]\nlatency_ms = 600000\n",
        true,
    );
    let addr = gw.metrics.expect("metrics listener is on");
    let mut conn = gw.connect("bulk").await;
    let mut s = conn.take_control().unwrap();
    for seq in 1..=40 {
        s.writer.queue(&send(seq, "d1")).unwrap();
    }
    s.writer.flush().await.unwrap();
    let mut accepted = 0;
    while accepted < 40 {
        match common::next_frame(&mut s).await {
            Frame::Accepted { .. } => accepted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let m = scrape_until(addr, |m| {
        m.get("waping_upstream_in_flight") == Some(&16.0)
            && m.get("waping_device_queue_messages") == Some(&24.0)
    })
    .await;
    assert_eq!(value(&m, "waping_messages_accepted_total"), 40.0);
    assert_eq!(value(&m, "waping_messages_dispatched_total"), 16.0);
    assert_eq!(value(&m, "waping_upstream_in_flight"), 16.0);
    // 23 in the device's queue and the one its session holds for a free window slot.
    assert_eq!(value(&m, "waping_device_queue_messages"), 24.0);
}

/// Needs `Gateway::start` to build its registry with `Registry::with_workspace_metrics`.
#[tokio::test]
async fn per_workspace_series_add_up_to_the_node_totals() {
    const ALPHA: Ws = Ws {
        id: "alpha",
        devices: &["d1"],
        rate: 1,
        burst: 3,
    };
    const BETA: Ws = Ws {
        id: "beta",
        devices: &["d1"],
        rate: 1,
        burst: 2,
    };
    // One workspace gets its own label value; the second shares `_other`.
    let gw = Gateway::start_metrics(
        &[ALPHA, BETA],
        "[upstream.sim]\n",
        "per_workspace = true\nper_workspace_max = 1",
    );
    let addr = gw.metrics.expect("metrics listener is on");
    let mut alpha: Vec<Frame> = (1..=5).map(|i| send(i, "d1")).collect();
    alpha.push(send(6, "nope"));
    assert_eq!(exchange(&gw, "alpha", &alpha).await, (3, 3));
    let beta: Vec<Frame> = (1..=4).map(|i| send(i, "d1")).collect();
    assert_eq!(exchange(&gw, "beta", &beta).await, (2, 2));

    let m = scrape_until(addr, |m| m.get("waping_messages_delivered_total") == Some(&5.0)).await;
    let ws = |stage: &str, labels: &str| {
        value(
            &m,
            &format!("waping_workspace_messages_{stage}_total{{{labels}}}"),
        )
    };
    assert_eq!(ws("received", "workspace=\"alpha\""), 6.0);
    assert_eq!(ws("received", "workspace=\"_other\""), 4.0);
    assert_eq!(ws("accepted", "workspace=\"alpha\""), 3.0);
    assert_eq!(ws("accepted", "workspace=\"_other\""), 2.0);
    assert_eq!(ws("delivered", "workspace=\"alpha\""), 3.0);
    assert_eq!(ws("delivered", "workspace=\"_other\""), 2.0);
    assert_eq!(ws("rejected", "workspace=\"alpha\",reason=\"RATE_LIMITED\""), 2.0);
    assert_eq!(
        ws("rejected", "workspace=\"alpha\",reason=\"UNKNOWN_DEVICE\""),
        1.0
    );
    assert_eq!(
        ws("rejected", "workspace=\"_other\",reason=\"RATE_LIMITED\""),
        2.0
    );

    // Every node series of these stages equals the sum of its per-workspace series.
    let strip_ws = |series: &str| -> String {
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let rest: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty() && !l.starts_with("workspace="))
            .collect();
        let node = name.replace("waping_workspace_messages_", "waping_messages_");
        if rest.is_empty() {
            node
        } else {
            format!("{node}{{{}}}", rest.join(","))
        }
    };
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for (series, v) in &m {
        if series.starts_with("waping_workspace_messages_") {
            let label = series
                .split("workspace=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert!(["alpha", "_other"].contains(&label), "{series}");
            *sums.entry(strip_ws(series)).or_default() += v;
        }
    }
    for stage in ["received", "accepted", "rejected", "delivered", "failed"] {
        let prefix = format!("waping_messages_{stage}_total");
        for (series, v) in m.iter().filter(|(k, _)| base_name(k) == prefix) {
            assert_eq!(
                sums.get(series),
                Some(v),
                "{series}: node {v}, workspaces {:?}",
                sums.get(series)
            );
        }
    }
    // received, accepted, delivered and the two rejection reasons.
    assert_eq!(sums.len(), 5, "{sums:#?}");
}

/// Needs the exporter built by `metrics::prometheus_builder` (else histograms are summaries).
#[tokio::test]
async fn journal_sync_latency_is_a_histogram_with_the_documented_buckets() {
    const W: Ws = Ws {
        id: "w",
        devices: &["d1"],
        rate: 100,
        burst: 100,
    };
    let gw = Gateway::start_with(&[W], "", true);
    let addr = gw.metrics.expect("metrics listener is on");
    let frames: Vec<Frame> = (1..=3).map(|i| send(i, "d1")).collect();
    assert_eq!(exchange(&gw, "w", &frames).await, (3, 0));
    scrape_until(addr, |m| {
        m.get("waping_journal_sync_seconds_count")
            .is_some_and(|&n| n > 0.0)
    })
    .await;
    let text = scrape_text(addr);
    assert!(
        text.contains(&format!("# TYPE {JOURNAL_SYNC_SECONDS} histogram")),
        "{text}"
    );
    let prefix = format!("{JOURNAL_SYNC_SECONDS}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (le, v) = rest.split_once("\"} ").unwrap();
            (le.to_string(), v.parse().unwrap())
        })
        .collect();
    let les: Vec<f64> = buckets
        .iter()
        .map(|(le, _)| {
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            }
        })
        .collect();
    let mut want = journal_sync_buckets().to_vec();
    want.push(f64::INFINITY);
    assert_eq!(les, want);
    // Cumulative, ending at the count.
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{JOURNAL_SYNC_SECONDS}_count ")))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(buckets.last().unwrap().1, count);
    assert!(count >= 1.0);
}
