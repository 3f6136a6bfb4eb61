//! Tenant isolation through the real binary: a key of workspace A against every HTTP route
//! and every client QUIC frame, aimed at workspace B's objects.
//!
//! For each route, B's object and an object that exists nowhere must get byte-identical
//! answers (apart from the request id), never a success, and nothing B owns may appear in
//! any answer. The route table of the gateway ([`ROUTES`]) and the frame list of the
//! protocol are walked, so a new route or frame without a case fails this test.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Gateway, HttpResponse, Ws};
use serde_json::{Value, json};
use waping_client::{ClientError, Connection};
use waping_gateway::http::routes::ROUTES;
use waping_protocol::{Body, DeviceAction, ErrorCode, EventKind, Frame, LinkMethod, Text, subscribe};

const A: Ws = Ws {
    id: "ws-a",
    devices: &["a1"],
    rate: 100_000,
    burst: 100_000,
};
const B: Ws = Ws {
    id: "ws-b",
    devices: &["b1"],
    rate: 100_000,
    burst: 100_000,
};

/// What B owns, for the cases and the leak scan.
struct BObjects {
    key_id: String,
    api_device: String,
    message_id: String,
    idempotency_key: String,
    dead_id: String,
    job_id: String,
    recipient: String,
    webhook_id: String,
}

fn key_id(key: &str) -> String {
    key.split('_').nth(1).unwrap().to_string()
}

/// The response with its request id blanked, for comparing two answers.
fn normalized(r: &HttpResponse) -> (u16, String) {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("request_id");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let body = match serde_json::from_str::<Value>(&r.body) {
        Ok(mut v) => {
            strip(&mut v);
            v.to_string()
        }
        Err(_) => r.body.clone(),
    };
    (r.status, body)
}

fn setup() -> (Gateway, String, String, BObjects) {
    // Half of the sends fail transiently and get no retry: dead letters and sent messages both.
    let gw = Gateway::start_full(
        &[A, B],
        "[upstream.sim]\ntransient_failure_rate = 0.5\nseed = 7\n[retry]\nmax_attempts = 1\n",
        false,
        "key_rate_per_second = 100000\nkey_burst = 100000\nsource_rate_per_second = 100000\nsource_burst = 100000\n",
    );
    let a = gw.admin_key("ws-a", "owner");
    let b = gw.admin_key("ws-b", "owner");
    let r = gw.api("POST", "/v1/devices", &b, Some(json!({"id": "b2"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let recipient = "4915199900011".to_string();
    let mut sent = None;
    let mut dead = None;
    for i in 0..200 {
        let key = format!("b-msg-{i}");
        let r = gw.api(
            "POST",
            "/v1/messages",
            &b,
            Some(json!({"device": "b1", "to": recipient, "idempotency_key": key, "text": "secret of B"})),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        // Wait for the outcome through the status API.
        let state = gw.wait_message(&b, &id)["state"].as_str().unwrap().to_string();
        match state.as_str() {
            "sent" if sent.is_none() => sent = Some((id, key)),
            "dead" if dead.is_none() => dead = Some(id),
            _ => {}
        }
        if sent.is_some() && dead.is_some() {
            break;
        }
    }
    let (message_id, idempotency_key) = sent.expect("a sent message in B");
    let dead_id = dead.expect("a dead letter in B");
    let r = gw.api(
        "POST",
        "/v1/deletions",
        &b,
        Some(json!({"kind": "recipient", "target": "4915100000000"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["id"].as_str().unwrap().to_string();
    // A webhook endpoint of B (a type that never fires here, so nothing is delivered).
    let r = gw.api(
        "POST",
        "/v1/webhooks",
        &b,
        Some(json!({"url": "https://hooks.example.com/b", "event_types": ["webhook.endpoint_disabled"]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook_id = r.json()["webhook"]["id"].as_str().unwrap().to_string();
    let objs = BObjects {
        webhook_id,
        key_id: key_id(&b),
        api_device: "b2".into(),
        message_id,
        idempotency_key,
        dead_id,
        job_id,
        recipient,
    };
    (gw, a, b, objs)
}

/// Fills a route template: `{workspace}` with `ws`, `{id}` with `id`.
fn fill(path: &str, ws: &str, id: &str) -> String {
    path.replace("{workspace}", ws).replace("{id}", id)
}

#[tokio::test]
async fn a_key_of_one_workspace_reaches_nothing_of_another() {
    let (gw, a, b, o) = setup();
    let b_secrets: Vec<String> = vec![
        "ws-b".into(),
        o.key_id.clone(),
        o.message_id.clone(),
        o.dead_id.clone(),
        o.job_id.clone(),
        o.recipient.clone(),
        o.idempotency_key.clone(),
        "secret of B".into(),
    ];
    let no_leak = |what: &str, r: &HttpResponse| {
        for s in &b_secrets {
            assert!(
                !r.body.contains(s.as_str()),
                "{what}: answer leaks {s:?}: {}",
                r.body
            );
        }
    };
    // Same answer for B's object and for one that exists nowhere; never a success.
    let same = |what: &str, method: &str, b_path: &str, none_path: &str, body: Option<Value>| {
        let rb = gw.api(method, b_path, &a, body.clone());
        let rn = gw.api(method, none_path, &a, body);
        assert!(
            !(200..300).contains(&rb.status),
            "{what}: success on B's object: {}",
            rb.body
        );
        assert_eq!(
            normalized(&rb),
            normalized(&rn),
            "{what}: B's object is distinguishable from a missing one"
        );
        no_leak(what, &rb);
    };
    let none_msg = "0190f0f0f0f07000800000000000dead";
    let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut cover = |m: &str, p: &str| {
        covered.insert((m.to_string(), p.to_string()));
    };

    // Health routes are public and name no tenant.
    for p in ["/healthz", "/readyz"] {
        let r = gw.api("GET", p, &a, None);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        no_leak(p, &r);
        cover("GET", p);
    }

    // Reads that B's data must not show up in.
    for (m, p) in [
        ("GET", "/v1/workspace"),
        ("GET", "/v1/retention"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/dead-letters"),
        ("GET", "/v1/deletions"),
    ] {
        let r = gw.api(m, p, &a, None);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        no_leak(p, &r);
        assert!(!r.body.contains("\"b2\""), "{p}: lists B's device: {}", r.body);
        cover(m, p);
    }

    // Admin routes: a workspace key is refused the same way whatever the target.
    for route in ROUTES.iter().filter(|r| r.path.starts_with("/v1/admin")) {
        let body = match route.method {
            "POST" if route.path.ends_with("/keys") => Some(json!({"name": "x", "role": "owner"})),
            "POST" => Some(json!({"id": "ws-b"})),
            "PATCH" => Some(json!({"rate_per_second": 1})),
            _ => None,
        };
        same(
            route.path,
            route.method,
            &fill(route.path, "ws-b", &o.job_id),
            &fill(route.path, "ws-zz", "0000"),
            body,
        );
        let r = gw.api(route.method, &fill(route.path, "ws-b", &o.job_id), &a, None);
        assert_eq!(r.status, 403, "{}", r.body);
        cover(route.method, route.path);
    }

    // Keys.
    for (m, p) in [
        ("GET", "/v1/keys/{id}"),
        ("DELETE", "/v1/keys/{id}"),
        ("POST", "/v1/keys/{id}/rotate"),
    ] {
        same(
            p,
            m,
            &fill(p, "", &o.key_id),
            &fill(p, "", "00000000000000ff"),
            None,
        );
        cover(m, p);
    }
    // A role change aimed at B's key: the same answer as for a key that exists nowhere.
    let p = "/v1/keys/{id}";
    same(
        p,
        "PATCH",
        &fill(p, "", &o.key_id),
        &fill(p, "", "00000000000000ff"),
        Some(json!({"role": "viewer"})),
    );
    cover("PATCH", p);
    let r = gw.api("GET", "/v1/workspace", &b, None);
    assert_eq!(
        r.status, 200,
        "B's key survived A's revoke, role change and rotate attempts: {}",
        r.body
    );
    let r = gw.api(
        "POST",
        "/v1/keys",
        &a,
        Some(json!({"name": "new", "role": "viewer"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    no_leak("POST /v1/keys", &r);
    let new_key = r.json()["key"].as_str().unwrap().to_string();
    let r = gw.api("GET", &format!("/v1/keys/{}", o.key_id), &new_key, None);
    assert_eq!(r.status, 404);
    cover("POST", "/v1/keys");

    // Devices.
    for (m, p, body) in [
        ("GET", "/v1/devices/{id}", None),
        ("DELETE", "/v1/devices/{id}", None),
        ("POST", "/v1/devices/{id}/link", Some(json!({"method": "qr"}))),
        ("POST", "/v1/devices/{id}/unlink", None),
        ("POST", "/v1/devices/{id}/disable", None),
        ("POST", "/v1/devices/{id}/enable", None),
    ] {
        for dev in ["b1", o.api_device.as_str()] {
            same(p, m, &fill(p, "", dev), &fill(p, "", "zz-none"), body.clone());
        }
        cover(m, p);
    }
    for dev in ["b1", "b2"] {
        let r = gw.api("GET", &format!("/v1/devices/{dev}"), &b, None);
        assert_eq!(r.status, 200, "B's device {dev} survived: {}", r.body);
        assert_ne!(r.json()["state"], "disabled", "A's disable reached B's {dev}");
    }

    // Messages.
    same(
        "GET /v1/messages/{id}",
        "GET",
        &format!("/v1/messages/{}", o.message_id),
        &format!("/v1/messages/{none_msg}"),
        None,
    );
    cover("GET", "/v1/messages/{id}");
    same(
        "GET /v1/messages?idempotency_key",
        "GET",
        &format!("/v1/messages?idempotency_key={}", o.idempotency_key),
        "/v1/messages?idempotency_key=never-used",
        None,
    );
    cover("GET", "/v1/messages");
    let msg = |dev: &str, key: &str| json!({"device": dev, "to": "4915112345678", "idempotency_key": key, "text": "hi"});
    same(
        "POST /v1/messages",
        "POST",
        "/v1/messages",
        "/v1/messages",
        Some(msg("b1", "x-1")),
    );
    let rb = gw.api("POST", "/v1/messages", &a, Some(msg("b1", "x-2")));
    let rn = gw.api("POST", "/v1/messages", &a, Some(msg("zz-none", "x-2")));
    assert_eq!(normalized(&rb), normalized(&rn), "B's device vs a missing one");
    assert_eq!(rb.code(), u64::from(ErrorCode::UNKNOWN_DEVICE.0));
    // B's idempotency key on A's device is A's own key: a new message, never B's id.
    let r = gw.api("POST", "/v1/messages", &a, Some(msg("a1", &o.idempotency_key)));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["duplicate"], false);
    assert_ne!(r.json()["id"].as_str().unwrap(), o.message_id);
    cover("POST", "/v1/messages");
    let rb = gw.api(
        "POST",
        "/v1/messages/batch",
        &a,
        Some(json!({"messages": [msg("b1", "y-1")]})),
    );
    let rn = gw.api(
        "POST",
        "/v1/messages/batch",
        &a,
        Some(json!({"messages": [msg("zz-none", "y-1")]})),
    );
    assert_eq!(rb.status, 207);
    assert_eq!(normalized(&rb), normalized(&rn));
    no_leak("batch", &rb);
    cover("POST", "/v1/messages/batch");

    // Dead letters.
    for (m, p) in [
        ("GET", "/v1/dead-letters/{id}"),
        ("DELETE", "/v1/dead-letters/{id}"),
        ("POST", "/v1/dead-letters/{id}/replay"),
    ] {
        same(p, m, &fill(p, "", &o.dead_id), &fill(p, "", none_msg), None);
        cover(m, p);
    }
    let r = gw.api("GET", &format!("/v1/dead-letters/{}", o.dead_id), &b, None);
    assert_eq!(
        r.status, 200,
        "B's dead letter survived A's purge and replay: {}",
        r.body
    );

    // Deletions and retention.
    same(
        "GET /v1/deletions/{id}",
        "GET",
        &format!("/v1/deletions/{}", o.job_id),
        "/v1/deletions/0000",
        None,
    );
    cover("GET", "/v1/deletions/{id}");
    same(
        "POST /v1/deletions device",
        "POST",
        "/v1/deletions",
        "/v1/deletions",
        Some(json!({"kind": "device", "target": "b2"})),
    );
    let rb = gw.api(
        "POST",
        "/v1/deletions",
        &a,
        Some(json!({"kind": "device", "target": "b2"})),
    );
    let rn = gw.api(
        "POST",
        "/v1/deletions",
        &a,
        Some(json!({"kind": "device", "target": "zz-none"})),
    );
    assert_eq!(normalized(&rb), normalized(&rn));
    let rb = gw.api(
        "POST",
        "/v1/deletions",
        &a,
        Some(json!({"kind": "workspace", "target": "ws-b"})),
    );
    let rn = gw.api(
        "POST",
        "/v1/deletions",
        &a,
        Some(json!({"kind": "workspace", "target": "ws-zz"})),
    );
    assert!(!(200..300).contains(&rb.status));
    assert_eq!(normalized(&rb), normalized(&rn));
    cover("POST", "/v1/deletions");
    let r = gw.api("PUT", "/v1/retention", &a, Some(json!({
        "message_bodies_hours": 1, "delivery_records_days": 1, "inbound_events_days": 1, "dead_letters_days": 1
    })));
    assert_eq!(r.status, 200, "{}", r.body);
    let rb = gw.api("GET", "/v1/retention", &b, None);
    assert_eq!(
        rb.json()["dead_letters_days"],
        30,
        "A's retention change reached B"
    );
    cover("PUT", "/v1/retention");

    // Webhooks: B's endpoint answers A exactly like an endpoint that exists nowhere.
    for (m, p, body) in [
        ("GET", "/v1/webhooks/{id}", None),
        ("PATCH", "/v1/webhooks/{id}", Some(json!({"enabled": false}))),
        ("POST", "/v1/webhooks/{id}/rotate-secret", Some(json!({}))),
        ("GET", "/v1/webhooks/{id}/dead", None),
        ("POST", "/v1/webhooks/{id}/dead/replay", Some(json!({}))),
        ("DELETE", "/v1/webhooks/{id}", None),
    ] {
        same(
            p,
            m,
            &fill(p, "", &o.webhook_id),
            &fill(p, "", "whe_00000000000000ff"),
            body,
        );
        cover(m, p);
    }
    let r = gw.api("GET", "/v1/webhooks", &a, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json().as_array().map(Vec::len),
        Some(0),
        "A lists B's endpoint: {}",
        r.body
    );
    cover("GET", "/v1/webhooks");
    let r = gw.api(
        "POST",
        "/v1/webhooks",
        &a,
        Some(json!({"url": "https://hooks.example.com/a"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    no_leak("POST /v1/webhooks", &r);
    cover("POST", "/v1/webhooks");
    let r = gw.api("GET", &format!("/v1/webhooks/{}", o.webhook_id), &b, None);
    assert_eq!(r.status, 200, "B's endpoint survived A's attempts: {}", r.body);
    assert_eq!(r.json()["enabled"], true);

    // Automations: B's rule answers A exactly like a rule that exists nowhere, A's list and
    // tags do not show B's, and A cannot point a webhook action at B's endpoint.
    let r = gw.api(
        "POST",
        "/v1/automations",
        &b,
        Some(json!({"name": "b rule", "match": {"keywords": ["b-secret"]},
            "actions": [{"type": "tag", "tags": ["b"]}]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let b_rule = r.json()["id"].as_str().unwrap().to_string();
    for (m, p, body) in [
        ("GET", "/v1/automations/{id}", None),
        ("PATCH", "/v1/automations/{id}", Some(json!({"enabled": false}))),
        ("DELETE", "/v1/automations/{id}", None),
    ] {
        same(
            p,
            m,
            &fill(p, "", &b_rule),
            &fill(p, "", "ar_00000000000000ff"),
            body,
        );
        cover(m, p);
    }
    let r = gw.api("GET", "/v1/automations", &a, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json().as_array().map(Vec::len),
        Some(0),
        "A lists B's rule: {}",
        r.body
    );
    cover("GET", "/v1/automations");
    let r = gw.api(
        "GET",
        "/v1/automations/tags?device=b1&sender=4915100000000",
        &a,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tags"].as_array().map(Vec::len), Some(0), "{}", r.body);
    cover("GET", "/v1/automations/tags");
    let r = gw.api(
        "POST",
        "/v1/automations",
        &a,
        Some(json!({"name": "a", "actions": [{"type": "webhook", "endpoint_id": o.webhook_id}]})),
    );
    assert_eq!(r.status, 422, "A's rule may not name B's endpoint: {}", r.body);
    no_leak("POST /v1/automations", &r);
    cover("POST", "/v1/automations");
    let r = gw.api("GET", &format!("/v1/automations/{b_rule}"), &b, None);
    assert_eq!(r.status, 200, "B's rule survived A's attempts: {}", r.body);
    assert_eq!(r.json()["enabled"], true);

    // Creating a device named like B's is A's own device, not a conflict that would reveal B's.
    let r = gw.api("POST", "/v1/devices", &a, Some(json!({"id": "b2"})));
    assert_eq!(r.status, 201, "a name taken in B is free in A: {}", r.body);
    cover("POST", "/v1/devices");
    let r = gw.api("GET", "/v1/devices/b2", &b, None);
    assert_eq!(r.status, 200, "{}", r.body);

    // The event stream: A replaying its whole log (cursor 0), filtered to its own device
    // and B's device names, sees only A's events up to one of its own made just now.
    let mut sub = common::ws::open(gw.http, &a, "cursor=0&devices=a1,b1,b2").await;
    let r = gw.api(
        "POST",
        "/v1/messages",
        &a,
        Some(json!({"device": "a1", "to": "4915112345678", "idempotency_key": "a-ws-1", "text": "hi"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let a_msg = r.json()["id"].as_str().unwrap().to_string();
    loop {
        let v = sub.next_json().await;
        let text = v.to_string();
        for s in &b_secrets {
            assert!(!text.contains(s.as_str()), "event stream leaks {s:?}: {text}");
        }
        if let Some(ev) = v.get("event") {
            assert_eq!(ev["workspace"], "ws-a", "{text}");
            // (A has its own device named "b2", created above.)
            assert!(
                ["a1", "b1", "b2"].contains(&ev["device"].as_str().unwrap()),
                "{text}"
            );
            if ev["data"]["message_id"] == a_msg.as_str() {
                break;
            }
        }
    }
    sub.close().await;
    cover("GET", "/v1/events/stream");

    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = table.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes without an isolation case: {missing:?}"
    );
    drop(b);
}

/// Every frame a client may send, and what the case below checks for it.
const FRAME_CASES: &[(u8, &str)] = &[
    (
        waping_protocol::frame::ty::HELLO,
        "binds the connection to the key's workspace: every later case runs on it",
    ),
    (
        waping_protocol::frame::ty::SEND,
        "B's device answers like a missing one; B's idempotency key is A's own",
    ),
    (
        waping_protocol::frame::ty::DEVICE_CONTROL,
        "every action on B's device answers like a missing one; B's device unchanged",
    ),
    (
        waping_protocol::frame::ty::SUBSCRIBE,
        "B's events never reach A's subscription",
    ),
    (
        waping_protocol::frame::ty::SUBSCRIBE_FROM,
        "A's replay of the whole log, filtered to B's device too, holds only A's events",
    ),
    (waping_protocol::frame::ty::PING, "echoes the nonce only"),
    (waping_protocol::frame::ty::PONG, "carries a nonce only"),
    (waping_protocol::frame::ty::ERROR, "carries a code and text only"),
    (
        waping_protocol::frame::ty::GOODBYE,
        "carries a code and text only",
    ),
];

#[test]
fn every_client_frame_has_an_isolation_case() {
    use waping_protocol::frame::Direction;
    // One example of each frame type; the match is exhaustive, so a new frame type fails to
    // compile here until it is listed.
    let examples: Vec<Frame> = vec![
        Frame::Hello {
            min_version: 1,
            max_version: 2,
            api_key: Text::default(),
            client_name: Text::default(),
        },
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
        Frame::Error {
            code: ErrorCode::INTERNAL,
            retry_after_ms: 0,
            message: Text::default(),
        },
        Frame::Goodbye {
            code: ErrorCode::INTERNAL,
            message: Text::default(),
        },
        Frame::Send {
            seq: 1,
            idempotency_key: Text::default(),
            device_id: Text::default(),
            recipient: Text::default(),
            body: Body::Text(Text::default()),
        },
        Frame::Subscribe { mask: 0 },
        Frame::DeviceControl {
            req: 1,
            device_id: Text::default(),
            action: DeviceAction::Status,
        },
        Frame::SubscribeFrom {
            cursor: Some(0),
            types: Text::default(),
            devices: Text::default(),
        },
    ];
    for f in &examples {
        // Exhaustive: a new frame type fails to compile here until it is classified.
        let client_may_send = match f {
            Frame::Hello { .. }
            | Frame::Error { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Goodbye { .. }
            | Frame::Send { .. }
            | Frame::Subscribe { .. }
            | Frame::SubscribeFrom { .. }
            | Frame::DeviceControl { .. } => true,
            Frame::HelloOk { .. }
            | Frame::Accepted { .. }
            | Frame::Rejected { .. }
            | Frame::Report(_)
            | Frame::Subscribed { .. }
            | Frame::Event(_)
            | Frame::DeviceControlResult { .. }
            | Frame::SubscribedFrom { .. }
            | Frame::LogEvent { .. } => false,
        };
        assert_eq!(
            client_may_send,
            f.direction() != Direction::ServerToClient,
            "{}",
            f.name()
        );
        if f.direction() != Direction::ServerToClient {
            assert!(
                FRAME_CASES.iter().any(|(t, _)| *t == f.frame_type()),
                "client frame {} has no isolation case",
                f.name()
            );
        }
    }
    assert_eq!(FRAME_CASES.len(), examples.len());
}

#[tokio::test]
async fn quic_frames_of_one_workspace_reach_nothing_of_another() {
    let gw = Gateway::start(&[A, B], "");
    let conn_a = Connection::connect(&gw.client_config(&gw.key("ws-a")))
        .await
        .unwrap();
    let conn_b = Connection::connect(&gw.client_config(&gw.key("ws-b")))
        .await
        .unwrap();
    let mut events_a = conn_a.subscribe(subscribe::ALL).await.unwrap();
    let mut events_b = conn_b.subscribe(subscribe::ALL).await.unwrap();

    // SEND: B's device vs a missing one.
    let mut s = conn_a.open_stream().await.unwrap();
    let send = |seq, dev: &str, key: &str| Frame::Send {
        seq,
        idempotency_key: Text::from(key),
        device_id: Text::from(dev),
        recipient: Text::from("4915112345678"),
        body: Body::Text(Text::from("hello")),
    };
    s.send(&send(1, "b1", "k1")).await.unwrap();
    s.send(&send(2, "zz-none", "k1")).await.unwrap();
    let r1 = common::next_frame(&mut s).await;
    let r2 = common::next_frame(&mut s).await;
    match (&r1, &r2) {
        (
            Frame::Rejected {
                code: c1, reason: m1, ..
            },
            Frame::Rejected {
                code: c2, reason: m2, ..
            },
        ) => {
            assert_eq!((c1, m1), (c2, m2));
            assert_eq!(*c1, ErrorCode::UNKNOWN_DEVICE);
        }
        other => panic!("{other:?}"),
    }
    // B's idempotency key used by A is A's own: B sends first, A gets a different id.
    let mut sb = conn_b.open_stream().await.unwrap();
    sb.send(&send(1, "b1", "shared-key")).await.unwrap();
    let b_id = match common::next_frame(&mut sb).await {
        Frame::Accepted { message_id, .. } => message_id,
        other => panic!("{other:?}"),
    };
    s.send(&send(3, "a1", "shared-key")).await.unwrap();
    let a_id = loop {
        match common::next_frame(&mut s).await {
            Frame::Accepted { seq: 3, message_id } => break message_id,
            Frame::Report(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(a_id, b_id);

    // DEVICE_CONTROL: every action, B's device vs a missing one.
    for action in [
        DeviceAction::Status,
        DeviceAction::Disable,
        DeviceAction::Enable,
        DeviceAction::Unlink,
        DeviceAction::Link(LinkMethod::Qr),
    ] {
        let on_b = tokio::time::timeout(
            Duration::from_secs(10),
            conn_a.device_control("b1", action.clone()),
        )
        .await
        .unwrap();
        let on_none = tokio::time::timeout(
            Duration::from_secs(10),
            conn_a.device_control("zz-none", action.clone()),
        )
        .await
        .unwrap();
        match (on_b, on_none) {
            (
                Err(ClientError::Refused {
                    code: c1,
                    message: d1,
                    ..
                }),
                Err(ClientError::Refused {
                    code: c2,
                    message: d2,
                    ..
                }),
            ) => {
                assert_eq!((c1, d1), (c2, d2), "{action:?}");
                assert_eq!(c1, ErrorCode::UNKNOWN_DEVICE);
            }
            other => panic!("{action:?}: {other:?}"),
        }
    }
    let st = conn_b.device_control("b1", DeviceAction::Status).await.unwrap();
    assert_eq!(
        st,
        waping_protocol::DeviceState::Connected,
        "B's device untouched by A"
    );

    // SUBSCRIBE: a B event, then an A event; A must see its own and nothing before it from B.
    conn_b.device_control("b1", DeviceAction::Disable).await.unwrap();
    let seen_by_b = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events_b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let EventKind::DeviceState { device_id, .. } = &e.kind {
            break device_id.clone();
        }
    };
    assert_eq!(seen_by_b.as_str(), "b1");
    conn_a.device_control("a1", DeviceAction::Disable).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events_a.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match &e.kind {
            EventKind::DeviceState { device_id, .. } => {
                assert_eq!(device_id.as_str(), "a1", "A received B's event: {e:?}");
                break;
            }
            EventKind::Report { device_id, report } => {
                assert_eq!(device_id.as_str(), "a1", "A received B's report");
                assert_ne!(report.message_id, b_id, "A received B's report");
            }
            other => {
                let text = format!("{other:?}");
                assert!(!text.contains("b1"), "A received a B event: {text}");
            }
        }
    }
    // SUBSCRIBE_FROM: A replays the whole log (cursor 0), filtered to its device and B's;
    // B's events (stored before A's disable) never appear, A's own does.
    let mut log_a = conn_a.subscribe_from(Some(0), "", "a1,b1").await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), log_a.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&e.text).unwrap();
        assert_eq!(v["workspace"], "ws-a", "A received a B event: {v}");
        assert!(!e.text.contains("\"b1\""), "A received a B event: {v}");
        if v["type"] == "device.state" && v["data"]["state"] == "disabled" {
            break;
        }
    }
    log_a.close();
    // PING on A's connection: the nonce comes back, nothing else.
    s.send(&Frame::Ping { nonce: 42 }).await.unwrap();
    loop {
        match common::next_frame(&mut s).await {
            Frame::Pong { nonce } => {
                assert_eq!(nonce, 42);
                break;
            }
            Frame::Report(r) => assert_ne!(r.message_id, b_id),
            other => panic!("{other:?}"),
        }
    }
}
