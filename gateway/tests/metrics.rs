//! The Prometheus endpoint of the real binary: every stage counts, every series is documented.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use waping_client::Connection;
use waping_gateway::metrics::CATALOGUE;
use waping_protocol::{Body, ErrorCode, Frame, Text};

const LIMITED: Ws = Ws {
    id: "limited",
    devices: &["d1"],
    rate: 1,
    burst: 5,
};

/// Series name with labels (as exposed) → value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0 so the body is not chunked and ends with the connection.
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("numeric value"))
        })
        .collect()
}

fn base_name(series: &str) -> &str {
    series.split('{').next().unwrap()
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

    // Counters are updated before the frames are written, but poll anyway: the scrape is a separate task.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = scrape(addr);
        if m.get("waping_messages_delivered_total") == Some(&5.0) || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("series {k} missing: {m:#?}"))
    };
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

    // Nothing is exposed that the catalogue does not name, and no label carries a tenant id.
    for series in m.keys() {
        let name = base_name(series);
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
