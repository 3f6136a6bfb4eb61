//! End to end through the real binary: QUIC, auth, limits, sessions, sim upstream, reports, events.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Gateway, Ws};
use waping_client::{ClientError, Connection};
use waping_protocol::{Body, DeliveryStatus, DeviceState, ErrorCode, EventKind, Frame, Text, subscribe};

const ACME: Ws = Ws {
    id: "acme",
    devices: &["d1", "d2"],
    rate: 100_000,
    burst: 100_000,
};
const OTHER: Ws = Ws {
    id: "other",
    devices: &["x1"],
    rate: 100_000,
    burst: 100_000,
};

fn send(seq: u64, device: &str, body: &str) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("k-{seq}")),
        device_id: device.into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from(body)),
    }
}

async fn next(s: &mut waping_client::FrameStream) -> Frame {
    common::next_frame(s).await
}

#[tokio::test]
async fn pipelined_messages_are_accepted_and_reported() {
    let gw = Gateway::start(&[ACME, OTHER], "");
    let mut conn = gw.connect("acme").await;
    assert_eq!(conn.session.version, waping_protocol::limits::MAX_VERSION);
    let mut s = conn.take_control().unwrap();
    const N: u64 = 500;
    // All in one batch: several frames per stream write.
    for seq in 1..=N {
        s.writer
            .queue(&send(seq, if seq % 2 == 0 { "d1" } else { "d2" }, "hello"))
            .unwrap();
    }
    s.writer.flush().await.unwrap();
    let mut accepted = HashMap::new();
    let mut reported = HashSet::new();
    while reported.len() < N as usize {
        match next(&mut s).await {
            Frame::Accepted { seq, message_id } => {
                assert!(accepted.insert(seq, message_id).is_none(), "one ACCEPTED per seq");
            }
            Frame::Report(r) => {
                assert_eq!(r.status, DeliveryStatus::Sent, "{r:?}");
                assert_eq!(
                    accepted.get(&r.seq),
                    Some(&r.message_id),
                    "report correlates with its ACCEPTED"
                );
                assert!(r.upstream_id.as_str().starts_with("SIM."));
                assert!(reported.insert(r.seq));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), N as usize);
    let ids: HashSet<_> = accepted.values().collect();
    assert_eq!(ids.len(), N as usize, "message ids are unique");
}

#[tokio::test]
async fn several_streams_and_ping() {
    let gw = Gateway::start(&[ACME], "");
    let conn = gw.connect("acme").await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(conn.open_stream().await.unwrap());
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.send(&Frame::Ping { nonce: i as u64 }).await.unwrap();
        assert_eq!(next(s).await, Frame::Pong { nonce: i as u64 });
        // The same seq on different streams is fine: seqs are per stream (idempotency keys
        // are per workspace, so each stream uses its own).
        let Frame::Send {
            seq,
            device_id,
            recipient,
            body,
            ..
        } = send(7, "d1", "x")
        else {
            unreachable!()
        };
        let frame = Frame::Send {
            seq,
            idempotency_key: Text::from(format!("stream-{i}")),
            device_id,
            recipient,
            body,
        };
        s.send(&frame).await.unwrap();
        assert!(matches!(next(s).await, Frame::Accepted { seq: 7, .. }));
        assert!(matches!(next(s).await, Frame::Report(r) if r.seq == 7));
    }
}

#[tokio::test]
async fn wrong_key_is_refused_with_auth_failed() {
    let gw = Gateway::start(&[ACME], "");
    let forged = waping_gateway::auth::generate_key().key;
    let err = Connection::connect(&gw.client_config(&forged)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED), "{err}");
    let err = Connection::connect(&gw.client_config("not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED), "{err}");
    // The gateway is still fine for good clients.
    let mut ok = gw.connect("acme").await;
    let mut s = ok.take_control().unwrap();
    s.send(&Frame::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(next(&mut s).await, Frame::Pong { nonce: 1 });
}

#[tokio::test]
async fn wrong_pin_fails_tls() {
    let gw = Gateway::start(&[ACME], "");
    let mut cfg = gw.client_config(&gw.key("acme"));
    cfg.trust = waping_client::Trust::Pin([0u8; 32]);
    let err = Connection::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Connection(_) | ClientError::Connect(_)),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_frame_gets_its_code_and_only_that_client_is_closed() {
    let gw = Gateway::start(&[ACME], "");
    let mut good = gw.connect("acme").await;
    let mut good_s = good.take_control().unwrap();
    let bad = gw.connect("acme").await;
    let mut s = bad.open_stream().await.unwrap();
    // Unknown frame type 0x7f with an empty body.
    s.writer.write_raw(&[0, 0, 0, 0, 0x7f, 0]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
    {
        Ok(Some(Frame::Error { code, .. })) => assert_eq!(code, ErrorCode::UNKNOWN_FRAME_TYPE),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::UNKNOWN_FRAME_TYPE), "{e}"),
        other => panic!("{other:?}"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), bad.quic().closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code.into_inner() == 1002),
        "{closed:?}"
    );
    // The other connection keeps working.
    good_s.send(&send(1, "d1", "still here")).await.unwrap();
    assert!(matches!(next(&mut good_s).await, Frame::Accepted { seq: 1, .. }));
}

#[tokio::test]
async fn oversized_and_truncated_frames() {
    let gw = Gateway::start(&[ACME], "");
    let conn = gw.connect("acme").await;
    let mut s = conn.open_stream().await.unwrap();
    // Declares a 16 MiB body: refused from the header alone.
    s.writer.write_raw(&[0x01, 0, 0, 0, 0x10, 0]).await.unwrap();
    let code = match s.next().await {
        Ok(Some(Frame::Error { code, .. })) => code,
        Err(e) => e.code().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE);

    let conn = gw.connect("acme").await;
    let mut s = conn.open_stream().await.unwrap();
    // A SEND whose body ends inside the idempotency key.
    s.writer
        .write_raw(&[0, 0, 0, 10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9, b'k'])
        .await
        .unwrap();
    let code = match s.next().await {
        Ok(Some(Frame::Error { code, .. })) => code,
        Err(e) => e.code().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, ErrorCode::MALFORMED_FRAME);
}

#[tokio::test]
async fn handshake_errors() {
    let gw = Gateway::start(&[ACME], "");
    // Unsupported version range.
    let (_ep, conn, mut s) = waping_client::connect_raw(&gw.client_config("")).await.unwrap();
    s.send(&Frame::Hello {
        min_version: waping_protocol::limits::MAX_VERSION + 1,
        max_version: 9,
        api_key: gw.key("acme").as_str().into(),
        client_name: "".into(),
    })
    .await
    .unwrap();
    let code = match s.next().await {
        Ok(Some(Frame::Error { code, .. })) => code,
        Err(e) => e.code().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
    drop(conn);
    // SEND before HELLO.
    let (_ep, _conn, mut s) = waping_client::connect_raw(&gw.client_config("")).await.unwrap();
    s.send(&send(1, "d1", "x")).await.unwrap();
    let code = match s.next().await {
        Ok(Some(Frame::Error { code, .. })) => code,
        Err(e) => e.code().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code, ErrorCode::UNEXPECTED_FRAME);
    // Silence: the handshake times out (2 s in this config).
    let (_ep, conn, _s) = waping_client::connect_raw(&gw.client_config("")).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code.into_inner() == u64::from(ErrorCode::HANDSHAKE_TIMEOUT.0)),
        "{closed:?}"
    );
}

#[tokio::test]
async fn per_message_rejections_keep_the_connection() {
    let gw = Gateway::start(&[ACME, OTHER], "");
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    let cases: Vec<(Frame, ErrorCode)> = vec![
        // Another workspace's device looks exactly like a missing one.
        (send(1, "x1", "hi"), ErrorCode::UNKNOWN_DEVICE),
        (send(2, "nope", "hi"), ErrorCode::UNKNOWN_DEVICE),
        (
            Frame::Send {
                seq: 3,
                idempotency_key: "k".into(),
                device_id: "d1".into(),
                recipient: "hello".into(),
                body: Body::Text("x".into()),
            },
            ErrorCode::INVALID_RECIPIENT,
        ),
        (
            Frame::Send {
                seq: 4,
                idempotency_key: "k".into(),
                device_id: "d1".into(),
                recipient: "4915112345678".into(),
                body: Body::Media {
                    reference: "s3://b/k".into(),
                    mime: "image/png".into(),
                    caption: "".into(),
                },
            },
            ErrorCode::UNSUPPORTED_BODY,
        ),
        (send(5, "d1", ""), ErrorCode::INVALID_FIELD),
    ];
    for (f, want) in cases {
        s.send(&f).await.unwrap();
        match next(&mut s).await {
            Frame::Rejected { code, .. } => assert_eq!(code, want, "{f:?}"),
            other => panic!("{f:?} → {other:?}"),
        }
    }
    s.send(&send(6, "d1", "ok")).await.unwrap();
    assert!(matches!(next(&mut s).await, Frame::Accepted { seq: 6, .. }));
}

#[tokio::test]
async fn workspace_rate_limit_rejects_with_retry_after() {
    let limited = Ws {
        id: "small",
        devices: &["d1"],
        rate: 1,
        burst: 3,
    };
    let gw = Gateway::start(&[limited, OTHER], "");
    let mut conn = gw.connect("small").await;
    let mut s = conn.take_control().unwrap();
    for seq in 1..=5 {
        s.writer.queue(&send(seq, "d1", "x")).unwrap();
    }
    s.writer.flush().await.unwrap();
    let (mut acc, mut rej) = (0, 0);
    while acc + rej < 5 {
        match next(&mut s).await {
            Frame::Accepted { .. } => acc += 1,
            Frame::Rejected {
                code, retry_after_ms, ..
            } => {
                assert_eq!(code, ErrorCode::RATE_LIMITED);
                assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}");
                rej += 1;
            }
            Frame::Report(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((acc, rej), (3, 2));
    // Another workspace is not affected by this one's exhaustion.
    let mut o = gw.connect("other").await;
    let mut os = o.take_control().unwrap();
    os.send(&send(1, "x1", "x")).await.unwrap();
    assert!(matches!(next(&mut os).await, Frame::Accepted { .. }));
}

#[tokio::test]
async fn subscribers_receive_reports_and_inbound_events() {
    let gw = Gateway::start(&[ACME, OTHER], "inbound_per_second = 20.0");
    let mut sub = gw.connect("acme").await;
    let mut ctl = sub.take_control().unwrap();
    ctl.send(&Frame::Subscribe { mask: subscribe::ALL })
        .await
        .unwrap();
    assert_eq!(next(&mut ctl).await, Frame::Subscribed { mask: subscribe::ALL });
    let mut events = tokio::time::timeout(Duration::from_secs(10), sub.accept_event_stream())
        .await
        .unwrap()
        .unwrap();

    let mut sender = gw.connect("acme").await;
    let mut s = sender.take_control().unwrap();
    s.send(&send(42, "d1", "watched")).await.unwrap();
    let Frame::Accepted { message_id, .. } = next(&mut s).await else {
        panic!()
    };

    let (mut saw_report, mut saw_inbound, mut last_seq) = (false, false, 0);
    while !(saw_report && saw_inbound) {
        let f = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Frame::Event(e) = f else { panic!("{f:?}") };
        assert_eq!(e.seq, last_seq + 1, "event seqs have no gaps");
        last_seq = e.seq;
        match e.kind {
            EventKind::Report { device_id, report } if report.message_id == message_id => {
                assert_eq!(device_id, "d1");
                saw_report = true;
            }
            EventKind::Inbound { device_id, .. } => {
                assert!(
                    ["d1", "d2"].contains(&device_id.as_str()),
                    "only acme's devices: {device_id}"
                );
                saw_inbound = true;
            }
            EventKind::DeviceState { state, .. } => assert_eq!(state, DeviceState::Connected),
            _ => {}
        }
    }
}

#[tokio::test]
async fn resubscribing_keeps_one_event_stream() {
    let gw = Gateway::start(&[ACME], "");
    let mut sub = gw.connect("acme").await;
    let mut ctl = sub.take_control().unwrap();
    for mask in [subscribe::REPORTS, 0, subscribe::REPORTS] {
        ctl.send(&Frame::Subscribe { mask }).await.unwrap();
        assert_eq!(next(&mut ctl).await, Frame::Subscribed { mask });
    }
    ctl.send(&send(7, "d1", "once")).await.unwrap();
    let mut reports = 0;
    while reports < 1 {
        if let Frame::Report(_) = next(&mut ctl).await {
            reports += 1;
        }
    }
    // A QUIC stream becomes visible to the peer with its first bytes: accept it once the
    // report has been published.
    let mut events = tokio::time::timeout(Duration::from_secs(10), sub.accept_event_stream())
        .await
        .unwrap()
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&f, Frame::Event(e) if matches!(e.kind, EventKind::Report { .. })),
        "{f:?}"
    );
    // A second event stream would be offered now, carrying the same report again.
    let second = tokio::time::timeout(Duration::from_millis(500), sub.accept_event_stream()).await;
    assert!(second.is_err(), "a second event stream was opened");
}

#[tokio::test]
async fn failures_are_reported_with_their_reason() {
    let gw = Gateway::start(&[ACME], "failure_rate = 1.0");
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    s.send(&send(1, "d1", "doomed")).await.unwrap();
    assert!(matches!(next(&mut s).await, Frame::Accepted { .. }));
    match next(&mut s).await {
        Frame::Report(r) => {
            assert_eq!(r.status, DeliveryStatus::Failed);
            assert_eq!(r.code, ErrorCode::UPSTREAM_REJECTED);
            assert!(!r.detail.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sigterm_drains_reports_then_exits_cleanly() {
    // 300 ms upstream latency: reports are outstanding when SIGTERM arrives.
    let mut gw = Gateway::start(&[ACME], "latency_ms = 300");
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    for seq in 1..=20 {
        s.writer.queue(&send(seq, "d1", "x")).unwrap();
    }
    s.writer.flush().await.unwrap();
    let mut accepted = 0;
    while accepted < 20 {
        if let Frame::Accepted { .. } = next(&mut s).await {
            accepted += 1;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status();
    let (mut reports, mut goodbye) = (0, false);
    loop {
        let f = match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Ok(Some(f))) => f,
            other => {
                eprintln!("stream ended: {other:?}");
                break;
            }
        };
        match f {
            Frame::Report(r) => {
                assert_eq!(r.status, DeliveryStatus::Sent);
                reports += 1;
            }
            Frame::Goodbye { code, .. } => {
                assert_eq!(code, ErrorCode::SHUTTING_DOWN);
                goodbye = true;
            }
            other => panic!("{other:?}"),
        }
        if reports == 20 && goodbye {
            break;
        }
    }
    assert!(
        goodbye,
        "clients are told the gateway is draining (reports {reports})"
    );
    assert_eq!(reports, 20, "every accepted message is reported before exit");
    assert_eq!(gw.terminate(), Some(0));
}

#[test]
fn check_config_reports_all_problems() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[server]\nmax_streams = 0\n[limits]\nburst = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.max_streams") && err.contains("limits.burst"),
        "{err}"
    );
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(ok.status.success(), "embedded defaults are valid");
}
