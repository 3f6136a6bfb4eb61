//! The HTTP control plane through the real binary: the role matrix on every route, key
//! lifecycle (revocation reaches open QUIC connections at once), limits and typed errors.

mod common;

use std::time::Duration;

use common::{Gateway, Ws, http_raw};
use serde_json::json;
use waping_gateway::control::roles::Role;
use waping_gateway::http::routes::{Access, ROUTES};
use waping_protocol::{Body, ErrorCode, Frame, Text};

const W: Ws = Ws {
    id: "acme",
    devices: &["d1"],
    rate: 100_000,
    burst: 100_000,
};

/// Request rates high enough that walking every route with every role is never limited.
const UNLIMITED: &str = "key_rate_per_second = 100000\nkey_burst = 100000\nsource_rate_per_second = 100000\nsource_burst = 100000\n";

fn fill(path: &str) -> String {
    path.replace("{workspace}", "nowhere")
        .replace("{id}", "00000000000000ff")
}

#[test]
fn every_route_enforces_the_role_matrix() {
    let gw = Gateway::start_full(&[W], "", false, UNLIMITED);
    for role in Role::ALL {
        let key = gw.admin_key("acme", role.as_str());
        for route in ROUTES {
            // Bodies that are syntactically wrong: an allowed caller gets a 4xx about the body
            // or a 404 about the id, a refused one gets 403 before the body is read.
            let body = matches!(route.method, "POST" | "PUT").then(|| json!({"bogus": true}));
            let r = gw.api(route.method, &fill(route.path), &key, body);
            let allowed = match route.access {
                Access::Key(p) => role.allows(p),
                Access::Admin => false,
                Access::Public => true,
            };
            if allowed {
                assert_ne!(
                    r.status, 403,
                    "{role} {} {}: {}",
                    route.method, route.path, r.body
                );
                assert_ne!(
                    r.status, 401,
                    "{role} {} {}: {}",
                    route.method, route.path, r.body
                );
            } else {
                assert_eq!(
                    r.status, 403,
                    "{role} {} {}: {}",
                    route.method, route.path, r.body
                );
                assert_eq!(r.code(), u64::from(ErrorCode::FORBIDDEN.0));
            }
            assert!(
                r.status < 500,
                "{role} {} {}: {}",
                route.method,
                route.path,
                r.body
            );
        }
    }
    // The admin token is refused on workspace routes and accepted on admin routes.
    for route in ROUTES {
        let body = matches!(route.method, "POST" | "PUT").then(|| json!({"bogus": true}));
        let r = gw.api(route.method, &fill(route.path), &gw.admin_token, body);
        match route.access {
            Access::Admin | Access::Public => {
                assert_ne!(r.status, 403, "{} {}: {}", route.method, route.path, r.body)
            }
            _ => assert_eq!(r.status, 403, "{} {}: {}", route.method, route.path, r.body),
        }
    }
}

#[test]
fn keys_cannot_mint_more_power_than_they_have() {
    let gw = Gateway::start(&[W], "");
    let admin = gw.admin_key("acme", "admin");
    for (role, ok) in [
        ("owner", false),
        ("auditor", false),
        ("admin", true),
        ("operator", true),
        ("viewer", true),
    ] {
        let r = gw.api(
            "POST",
            "/v1/keys",
            &admin,
            Some(json!({"name": "k", "role": role})),
        );
        assert_eq!(r.status == 201, ok, "admin creating {role}: {}", r.body);
    }
    let owner = gw.admin_key("acme", "owner");
    let owner_id = owner.split('_').nth(1).unwrap();
    let r = gw.api("DELETE", &format!("/v1/keys/{owner_id}"), &admin, None);
    assert_eq!(r.status, 403, "an admin cannot revoke an owner: {}", r.body);
    // Keys from the configuration file are managed there.
    let cfg_id = gw.key("acme").split('_').nth(1).unwrap().to_string();
    let r = gw.api("DELETE", &format!("/v1/keys/{cfg_id}"), &owner, None);
    assert_eq!(r.status, 409, "{}", r.body);
    // Secrets are shown once and never listed.
    let r = gw.api("GET", "/v1/keys", &owner, None);
    assert!(
        !r.body.contains("sha256:") && !r.body.contains(owner.as_str()),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn revoking_a_key_closes_its_quic_connection_and_rotation_swaps_it() {
    let gw = Gateway::start(&[W], "");
    let owner = gw.admin_key("acme", "owner");
    let r = gw.api(
        "POST",
        "/v1/keys",
        &owner,
        Some(json!({"name": "worker", "role": "sender"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let sender = r.json()["key"].as_str().unwrap().to_string();
    let sender_id = r.json()["info"]["id"].as_str().unwrap().to_string();

    let conn = waping_client::Connection::connect(&gw.client_config(&sender))
        .await
        .unwrap();
    let mut s = conn.open_stream().await.unwrap();
    let send = |seq| Frame::Send {
        seq,
        idempotency_key: Text::from(format!("rev-{seq}")),
        device_id: Text::from("d1"),
        recipient: Text::from("4915112345678"),
        body: Body::Text(Text::from("x")),
    };
    s.send(&send(1)).await.unwrap();
    assert!(matches!(
        common::next_frame(&mut s).await,
        Frame::Accepted { seq: 1, .. }
    ));

    let r = gw.api("DELETE", &format!("/v1/keys/{sender_id}"), &owner, None);
    assert_eq!(r.status, 204, "{}", r.body);
    // The open connection is closed by the server with AUTH_FAILED, without another request.
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.quic().closed())
        .await
        .expect("closed at once");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), u64::from(ErrorCode::AUTH_FAILED.0));
        }
        other => panic!("{other:?}"),
    }
    let r = gw.api("GET", "/v1/workspace", &sender, None);
    assert_eq!(r.status, 401);
    assert!(
        waping_client::Connection::connect(&gw.client_config(&sender))
            .await
            .is_err()
    );

    // Rotation: the new secret works at once, the old one stops at once.
    let r = gw.api(
        "POST",
        "/v1/keys",
        &owner,
        Some(json!({"name": "svc", "role": "viewer"})),
    );
    let old = r.json()["key"].as_str().unwrap().to_string();
    let old_id = r.json()["info"]["id"].as_str().unwrap().to_string();
    let r = gw.api("POST", &format!("/v1/keys/{old_id}/rotate"), &owner, None);
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(r.json()["info"]["role"], "viewer");
    assert_eq!(gw.api("GET", "/v1/workspace", &old, None).status, 401);
    assert_eq!(gw.api("GET", "/v1/workspace", &new, None).status, 200);
}

#[test]
fn failed_authentications_are_throttled_per_source() {
    let gw = Gateway::start_full(&[W], "", false, "auth_failures_per_minute = 3\n");
    let good = gw.key("acme");
    let bad = "wpk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for _ in 0..3 {
        let r = gw.api("GET", "/v1/workspace", bad, None);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = gw.api("GET", "/v1/workspace", bad, None);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.code(), u64::from(ErrorCode::AUTH_THROTTLED.0));
    assert!(r.header("retry-after").is_some());
    // While throttled, the source gets no verdict on any credential.
    let r = gw.api("GET", "/v1/workspace", &good, None);
    assert_eq!(r.status, 429, "{}", r.body);
}

#[test]
fn limits_answer_413_and_429_with_retry_after() {
    let gw = Gateway::start_full(
        &[W],
        "",
        false,
        "max_body_bytes = 2048\nmax_batch = 2\nkey_rate_per_second = 1\nkey_burst = 5\n",
    );
    let key = gw.key("acme");
    let big = "x".repeat(4096);
    let r = gw.api(
        "POST",
        "/v1/messages",
        &key,
        Some(json!({"device": "d1", "to": "1", "idempotency_key": "k", "text": big})),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.code(), u64::from(ErrorCode::PAYLOAD_TOO_LARGE.0));
    let m = json!({"device": "d1", "to": "4915112345678", "idempotency_key": "b", "text": "t"});
    let r = gw.api(
        "POST",
        "/v1/messages/batch",
        &key,
        Some(json!({"messages": [m, m, m]})),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    let mut limited = None;
    for _ in 0..20 {
        let r = gw.api("GET", "/v1/workspace", &key, None);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the per-key rate limit answers 429");
    assert_eq!(r.code(), u64::from(ErrorCode::API_RATE_LIMITED.0));
    assert!(r.header("retry-after").unwrap().parse::<u32>().unwrap() >= 1);
}

#[test]
fn errors_are_typed_and_carry_the_request_id() {
    let gw = Gateway::start(&[W], "");
    let key = gw.key("acme");
    let r = http_raw(
        gw.http,
        "GET",
        "/v1/devices/none",
        Some(&key),
        None,
        &[("x-request-id", "req-123")],
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let e = &r.json()["error"];
    assert_eq!(e["code"], 4004);
    assert_eq!(e["name"], "NOT_FOUND");
    assert_eq!(e["request_id"], "req-123");
    // Bad JSON, wrong content type, unknown fields, missing credentials, unknown routes.
    let r = http_raw(
        gw.http,
        "POST",
        "/v1/messages",
        Some(&key),
        Some("{not json"),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.code(), 1008);
    let r = gw.api("POST", "/v1/devices", &key, Some(json!({"id": "x", "extra": 1})));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http_raw(gw.http, "GET", "/v1/workspace", None, None, &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    let r = http_raw(gw.http, "GET", "/v2/anything", Some(&key), None, &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), 4004);
}

#[tokio::test]
async fn http_send_is_durable_idempotent_and_visible_by_status() {
    let gw = Gateway::start(&[W], "");
    let sender = gw.admin_key("acme", "sender");
    let other_sender = gw.admin_key("acme", "sender");
    let m = json!({"device": "d1", "to": "4915112345678", "idempotency_key": "order-1", "text": "hello"});
    let r1 = gw.api("POST", "/v1/messages", &sender, Some(m.clone()));
    assert_eq!(r1.status, 202, "{}", r1.body);
    let r2 = gw.api("POST", "/v1/messages", &sender, Some(m));
    assert_eq!(r2.json()["id"], r1.json()["id"]);
    assert_eq!(r2.json()["duplicate"], true);
    let id = r1.json()["id"].as_str().unwrap().to_string();
    let v = gw.wait_message(&sender, &id);
    assert_eq!(v["state"], "sent", "{v}");
    assert!(v["upstream_id"].as_str().unwrap().starts_with("SIM."));
    let r = gw.api("GET", "/v1/messages?idempotency_key=order-1", &sender, None);
    assert_eq!(r.json()["id"], id.as_str());
    // A sender sees only its own messages.
    let r = gw.api("GET", &format!("/v1/messages/{id}"), &other_sender, None);
    assert_eq!(r.status, 404, "{}", r.body);
    let viewer = gw.admin_key("acme", "viewer");
    assert_eq!(
        gw.api("GET", &format!("/v1/messages/{id}"), &viewer, None).status,
        200
    );
}

#[test]
fn workspace_quotas_are_enforced() {
    // Slow upstream: 16 sends in flight per device, the rest wait in its queue.
    let gw = Gateway::start_full(&[W], "[upstream.sim]\nlatency_ms = 60000\n", false, UNLIMITED);
    let r = gw.api(
        "POST",
        "/v1/admin/workspaces",
        &gw.admin_token,
        Some(json!({"id": "small", "quotas": {"max_devices": 1, "max_keys": 2, "max_webhooks": 0, "max_queued_messages": 5}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = gw.admin_key("small", "owner");
    assert_eq!(
        gw.api("POST", "/v1/devices", &owner, Some(json!({"id": "d1"})))
            .status,
        201
    );
    let r = gw.api("POST", "/v1/devices", &owner, Some(json!({"id": "d2"})));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), u64::from(ErrorCode::QUOTA_EXCEEDED.0));
    assert_eq!(
        gw.api(
            "POST",
            "/v1/keys",
            &owner,
            Some(json!({"name": "k", "role": "sender"}))
        )
        .status,
        201
    );
    let r = gw.api(
        "POST",
        "/v1/keys",
        &owner,
        Some(json!({"name": "k", "role": "sender"})),
    );
    assert_eq!(r.status, 409, "two keys already: {}", r.body);

    // 16 in flight + 5 queued, then the quota refuses (it is counted once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let refused = loop {
        let r = gw.api(
            "POST",
            "/v1/messages",
            &owner,
            Some(json!({"device": "d1", "to": "4915112345678", "idempotency_key": format!("q-{i}"), "text": "x"})),
        );
        i += 1;
        if r.status != 202 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refused after {i} messages"
        );
        if i > 21 {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.code(), u64::from(ErrorCode::WORKSPACE_QUEUE_FULL.0));
    assert!(refused.header("retry-after").is_some());
    assert!(
        i > 21,
        "refused only once 16 were in flight and 5 queued: after {i}"
    );
    // Another workspace is not affected.
    let r = gw.api(
        "POST",
        "/v1/messages",
        &gw.key("acme"),
        Some(json!({"device": "d1", "to": "4915112345678", "idempotency_key": "other", "text": "x"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn roles_and_limits_change_at_once_within_their_bounds() {
    let gw = Gateway::start_full(&[W], "", false, UNLIMITED);
    let owner = gw.create_workspace("beta");
    let r = gw.api(
        "POST",
        "/v1/keys",
        &owner,
        Some(json!({"name": "k", "role": "admin"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let k = r.json()["key"].as_str().unwrap().to_string();
    let k_id = r.json()["info"]["id"].as_str().unwrap().to_string();
    let mint = |key: &str| {
        gw.api(
            "POST",
            "/v1/keys",
            key,
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .status
    };
    assert_eq!(mint(&k), 201, "an admin key may create keys");
    // An admin key cannot raise a key above its own power.
    let r = gw.api(
        "PATCH",
        &format!("/v1/keys/{k_id}"),
        &k,
        Some(json!({"role": "owner"})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // The owner demotes it: the same secret now has the viewer's permissions.
    let r = gw.api(
        "PATCH",
        &format!("/v1/keys/{k_id}"),
        &owner,
        Some(json!({"role": "viewer"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["role"], "viewer");
    assert_eq!(mint(&k), 403, "the demoted key lost keys.write at once");
    assert_eq!(
        gw.api("GET", "/v1/workspace", &k, None).status,
        200,
        "and keeps what viewers have"
    );
    let r = gw.api(
        "PATCH",
        &format!("/v1/keys/{k_id}"),
        &owner,
        Some(json!({"role": "root"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Limits of an API-created workspace change; the configuration's workspace refuses.
    let r = gw.api(
        "PATCH",
        "/v1/admin/workspaces/beta",
        &gw.admin_token,
        Some(json!({"rate_per_second": 7, "burst": 9})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = gw
        .api("GET", "/v1/admin/workspaces/beta", &gw.admin_token, None)
        .json();
    assert_eq!(
        (v["rate_per_second"].as_u64(), v["burst"].as_u64()),
        (Some(7), Some(9))
    );
    let r = gw.api(
        "PATCH",
        "/v1/admin/workspaces/beta",
        &gw.admin_token,
        Some(json!({"burst": 0})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = gw.api(
        "PATCH",
        "/v1/admin/workspaces/acme",
        &gw.admin_token,
        Some(json!({"burst": 5})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = gw.api(
        "PATCH",
        "/v1/admin/workspaces/beta",
        &owner,
        Some(json!({"burst": 5})),
    );
    assert_eq!(r.status, 403, "workspace keys cannot change limits: {}", r.body);

    // Both changes are in the audit log (the default file sink), with what changed.
    let dir = gw.state_dir().join("audit-log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text: String = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let role = text.lines().find(|l| l.contains("\"key.role_change\""));
        let limits = text.lines().find(|l| l.contains("\"limits.change\""));
        if let (Some(role), Some(limits)) = (role, limits) {
            assert!(
                role.contains("\"previous_role\":\"admin\"") && role.contains("\"role\":\"viewer\""),
                "{role}"
            );
            assert!(
                limits.contains("\"fields\":[\"rate_per_second\",\"burst\"]"),
                "{limits}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records missing from the file sink"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn health_and_readiness_answer_without_credentials() {
    let gw = Gateway::start_full(&[W], "", false, UNLIMITED);
    let r = http_raw(gw.http, "GET", "/healthz", None, None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ok");
    let r = http_raw(gw.http, "GET", "/readyz", None, None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["ready"], true, "{v}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["journal", "state_dir", "audit", "retry_queue"]);
    assert!(!r.body.contains("acme"), "readiness names no tenant: {}", r.body);
    // A state directory that cannot be written makes the node not ready, and says why. (A
    // directory where the probe file goes fails the write even for root, unlike a chmod.)
    let probe = gw.state_dir().join(".readyz-probe");
    std::fs::create_dir(&probe).unwrap();
    let r = http_raw(gw.http, "GET", "/readyz", None, None, &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["ready"], false);
    assert!(r.body.contains("state directory not writable"), "{}", r.body);
    std::fs::remove_dir(&probe).unwrap();
    let r = http_raw(gw.http, "GET", "/readyz", None, None, &[]);
    assert_eq!(r.status, 200, "ready again: {}", r.body);
}
