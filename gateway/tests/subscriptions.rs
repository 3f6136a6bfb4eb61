//! Live subscriptions with resume through the real binary: the WebSocket endpoint
//! (`GET /v1/events/stream`) and QUIC SUBSCRIBE with a cursor, filtered by type and device,
//! resuming after a disconnect with exactly the missed events; typed refusals; shutdown.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ws::{self, Got};
use common::{Gateway, Ws};
use serde_json::Value;
use waping_protocol::{Body, Frame, Text};

const W: Ws = Ws {
    id: "subs",
    devices: &["d1", "d2"],
    rate: 100_000,
    burst: 100_000,
};

/// Sends `n` messages on `device` and waits for their reports; returns their message ids.
async fn send(gw: &Gateway, device: &str, tag: &str, n: u64) -> BTreeSet<String> {
    let mut conn = gw.connect("subs").await;
    let mut s = conn.take_control().unwrap();
    for i in 0..n {
        s.writer
            .queue(&Frame::Send {
                seq: i + 1,
                idempotency_key: Text::from(format!("{tag}-{i}")),
                device_id: Text::from(device),
                recipient: "4915112345678".into(),
                body: Body::Text(Text::from("hi")),
            })
            .unwrap();
    }
    s.writer.flush().await.unwrap();
    let mut ids = BTreeSet::new();
    let mut reports = 0;
    while reports < n {
        match common::next_frame(&mut s).await {
            Frame::Accepted { message_id, .. } => {
                ids.insert(message_id.to_string());
            }
            Frame::Report(_) => reports += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    ids
}

/// Event messages (`{"cursor", "event"}`) read until every id of `want` has a `sent` status;
/// other messages (notices) are returned too, in order.
async fn read_until_sent(sub: &mut ws::Sub, want: &BTreeSet<String>) -> Vec<Value> {
    let mut got = Vec::new();
    let mut seen = BTreeSet::new();
    while !want.is_subset(&seen) {
        let v = sub.next_json().await;
        if let Some(id) = v["event"]["data"]["message_id"].as_str()
            && v["event"]["data"]["status"] == "sent"
        {
            seen.insert(id.to_string());
        }
        got.push(v);
    }
    got
}

fn events(msgs: &[Value]) -> Vec<&Value> {
    msgs.iter().filter(|m| m.get("event").is_some()).collect()
}

#[tokio::test]
async fn websocket_filters_by_type_and_device_and_resumes_with_exactly_the_missed_events() {
    let gw = Gateway::start(&[W], "");
    let key = gw.key("subs");
    let q = "types=message.status&devices=d1";
    let mut sub = ws::open(gw.http, &key, q).await;
    let hello = sub.next_json().await;
    let start = hello["subscribed"]["cursor"].as_u64().expect("subscribed cursor");

    // First session: only d1's message.status events, in cursor order.
    let a1 = send(&gw, "d1", "a1", 5).await;
    let _a2 = send(&gw, "d2", "a2", 5).await;
    let first = read_until_sent(&mut sub, &a1).await;
    let first = events(&first).into_iter().cloned().collect::<Vec<_>>();
    for m in &first {
        assert_eq!(m["event"]["type"], "message.status", "{m}");
        assert_eq!(m["event"]["device"], "d1", "{m}");
        assert_eq!(m["event"]["workspace"], "subs", "{m}");
    }
    let last = first.last().unwrap()["cursor"].as_u64().unwrap();
    sub.close().await;

    // While disconnected: more events on both devices.
    let b1 = send(&gw, "d1", "b1", 5).await;
    let _b2 = send(&gw, "d2", "b2", 5).await;

    // Resume after the last cursor: exactly what was missed, in order, nothing twice.
    let mut sub = ws::open(gw.http, &key, &format!("{q}&cursor={last}")).await;
    assert_eq!(sub.next_json().await["subscribed"]["cursor"], last);
    let second = read_until_sent(&mut sub, &b1).await;
    let second = events(&second).into_iter().cloned().collect::<Vec<_>>();
    let mut cursors = vec![last];
    for m in &second {
        assert_eq!(m["event"]["device"], "d1", "{m}");
        let id = m["event"]["data"]["message_id"].as_str().unwrap_or("");
        assert!(!a1.contains(id), "an event of the first session came again: {m}");
        cursors.push(m["cursor"].as_u64().unwrap());
    }
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let end = *cursors.last().unwrap();
    sub.close().await;

    // A replay from the first session's start cursor up to `end` is exactly the two
    // sessions joined: nothing was lost at the reconnect and nothing came twice.
    let mut all = ws::open(gw.http, &key, &format!("{q}&cursor={start}")).await;
    all.next_json().await;
    let mut replay = Vec::new();
    loop {
        let v = all.next_json().await;
        let c = v["cursor"].as_u64().unwrap();
        replay.push(v);
        if c >= end {
            break;
        }
    }
    let joined: Vec<&Value> = first.iter().chain(second.iter()).collect();
    let replay: Vec<&Value> = replay.iter().collect();
    assert_eq!(replay, joined);
    let ids: BTreeSet<&str> = joined
        .iter()
        .map(|m| m["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), joined.len(), "an event id came twice");
}

#[tokio::test]
async fn websocket_refusals_are_typed() {
    let gw = Gateway::start(&[W], "");
    let key = gw.key("subs");

    // A bad query: upgraded, then an error message listing every problem and close 4400.
    let mut sub = ws::open(gw.http, &key, "types=message.nope&devices=a%20b&colour=red").await;
    let (code, _, before) = sub.until_close().await;
    assert_eq!(code, 4400);
    let err = &before[0]["error"];
    assert_eq!(err["name"], "INVALID_FIELD", "{err}");
    assert_eq!(err["problems"].as_array().unwrap().len(), 3, "{err}");

    // A cursor from the future (another node's): refused the same way.
    let mut sub = ws::open(gw.http, &key, "cursor=999999999").await;
    let (code, _, before) = sub.until_close().await;
    assert_eq!(code, 4400);
    assert!(
        before[0]["error"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("ahead"),
        "{before:?}"
    );

    // No credential: refused before any upgrade.
    assert!(ws::try_open(gw.http, None, None, "").await.is_err());
    let r = common::http_raw(
        gw.http,
        "GET",
        "/v1/events/stream",
        None,
        None,
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // A role without events.subscribe: 403.
    let sender = gw.admin_key("subs", "sender");
    let r = gw.api("GET", "/v1/events/stream", &sender, None);
    assert_eq!(r.status, 403, "{}", r.body);

    // A browser passes the key as a subprotocol; the answer names only `waping.v1`.
    let mut sub = ws::try_open(gw.http, None, Some(&format!("waping.v1, waping.key.{key}")), "")
        .await
        .expect("subprotocol key accepted");
    assert!(sub.next_json().await["subscribed"]["cursor"].is_u64());

    // Not an upgrade: a plain 400.
    let r = gw.api("GET", "/v1/events/stream", &key, None);
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn a_drain_closes_websocket_subscribers_with_going_away() {
    let mut gw = Gateway::start(&[W], "");
    let key = gw.key("subs");
    let mut sub = ws::open(gw.http, &key, "").await;
    sub.next_json().await;
    let stop = std::thread::spawn(move || {
        let code = gw.terminate();
        (gw, code)
    });
    let (code, reason, _) = sub.until_close().await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("cursor"), "{reason}");
    let (_gw, exit) = stop.join().unwrap();
    assert_eq!(exit, Some(0));
    // Nothing else arrives.
    assert!(!matches!(
        sub.next_within(Duration::from_millis(100)).await,
        Some(Got::Json(_))
    ));
}

/// The `sent` status events among `entries`, by message id.
fn sent_ids(entries: &[waping_client::LogEntry]) -> BTreeSet<String> {
    entries
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.text).ok())
        .filter(|v| v["data"]["status"] == "sent")
        .filter_map(|v| v["data"]["message_id"].as_str().map(String::from))
        .collect()
}

/// Reads LOG_EVENTs until every id of `want` has a `sent` status.
async fn read_log_until_sent(
    sub: &mut waping_client::LogSubscription,
    want: &BTreeSet<String>,
) -> Vec<waping_client::LogEntry> {
    let mut got = Vec::new();
    while !want.is_subset(&sent_ids(&got)) {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("timely LOG_EVENT")
            .expect("subscription")
            .expect("open subscription");
        got.push(e);
    }
    got
}

#[tokio::test]
async fn quic_subscribe_from_filters_and_resumes_with_exactly_the_missed_events() {
    let gw = Gateway::start(&[W], "");
    let conn = gw.connect("subs").await;
    assert_eq!(conn.session.version, 3);
    let mut sub = conn
        .subscribe_from(None, "message.status", "d1")
        .await
        .expect("subscribed");
    let start = sub.start;
    let a1 = send(&gw, "d1", "qa1", 4).await;
    let _a2 = send(&gw, "d2", "qa2", 4).await;
    let first = read_log_until_sent(&mut sub, &a1).await;
    for e in &first {
        assert!(e.readable);
        let v: Value = serde_json::from_str(&e.text).unwrap();
        assert_eq!(v["type"], "message.status", "{v}");
        assert_eq!(v["device"], "d1", "{v}");
        assert!(e.timestamp_ms > 0);
    }
    let last = first.last().unwrap().cursor;
    sub.close();

    let b1 = send(&gw, "d1", "qb1", 4).await;
    let _b2 = send(&gw, "d2", "qb2", 4).await;
    // A new connection, as after a reconnect.
    let conn2 = gw.connect("subs").await;
    let mut sub = conn2
        .subscribe_from(Some(last), "message.status", "d1")
        .await
        .expect("resumed");
    assert_eq!(sub.start, last);
    let second = read_log_until_sent(&mut sub, &b1).await;
    assert!(
        sent_ids(&second).is_disjoint(&a1),
        "first-session events came again"
    );
    let mut cursors = vec![last];
    cursors.extend(second.iter().map(|e| e.cursor));
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let end = *cursors.last().unwrap();
    sub.close();

    // The same as one replay from the start: nothing lost or doubled at the reconnect.
    let mut all = conn2
        .subscribe_from(Some(start), "message.status", "d1")
        .await
        .unwrap();
    let mut replay = Vec::new();
    while replay
        .last()
        .is_none_or(|e: &waping_client::LogEntry| e.cursor < end)
    {
        replay.push(all.next().await.unwrap().unwrap());
    }
    let joined: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(replay, joined);

    // Typed refusals keep the connection: bad lists, a cursor from the future, a role
    // without events.subscribe.
    match conn2.subscribe_from(None, "message.nope", "bad id").await {
        Err(waping_client::ClientError::Refused { code, message, .. }) => {
            assert_eq!(code, waping_protocol::ErrorCode::INVALID_FIELD);
            assert!(
                message.contains("message.nope") && message.contains("devices"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match conn2.subscribe_from(Some(u64::MAX), "", "").await {
        Err(waping_client::ClientError::Refused { code, message, .. }) => {
            assert_eq!(code, waping_protocol::ErrorCode::INVALID_FIELD);
            assert!(message.contains("ahead"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let sender = gw.admin_key("subs", "sender");
    let conn3 = waping_client::Connection::connect(&gw.client_config(&sender))
        .await
        .unwrap();
    match conn3.subscribe_from(None, "", "").await {
        Err(waping_client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, waping_protocol::ErrorCode::FORBIDDEN)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_drain_ends_quic_subscriptions() {
    let mut gw = Gateway::start(&[W], "");
    let conn = gw.connect("subs").await;
    let mut sub = conn.subscribe_from(None, "", "").await.unwrap();
    let stop = std::thread::spawn(move || {
        let code = gw.terminate();
        (gw, code)
    });
    // The server finishes the subscription stream (or the connection closes): no hang.
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sub.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription ends on drain");
    assert!(!matches!(end, Ok(Some(_))));
    let (_gw, exit) = stop.join().unwrap();
    assert_eq!(exit, Some(0));
}
