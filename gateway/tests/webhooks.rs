//! Webhooks through the real binary and a real HTTP receiver on loopback (allowed by an
//! explicit `[webhooks] allow_networks` entry): signed deliveries of every event, retries
//! against a flapping receiver, a `kill -9` mid-delivery (at least once, exactly once after
//! deduplication on `webhook-id`), 410 disabling an endpoint, `Retry-After`, the SSRF guard.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use serde_json::{Value, json};
use waping_protocol::{Body, Frame, Text};

const W: Ws = Ws {
    id: "hooks",
    devices: &["d1", "d2"],
    rate: 100_000,
    burst: 100_000,
};

/// Fast retries and a short breaker cool-down so the tests take seconds, not hours.
const WEBHOOKS: &str = "[webhooks]\nallow_http = true\nallow_networks = [\"127.0.0.0/8\"]\n\
    retry_schedule_s = [1, 1, 1, 1, 1, 1]\nbreaker_cooldown_ms = 300\nrequest_timeout_ms = 3000\n";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Got {
    headers: BTreeMap<String, String>,
    body: String,
    at: Instant,
    /// What the receiver answered (set after the responder decided).
    status: u16,
}

type Responder = Box<dyn Fn(usize, &Got) -> (u16, Vec<(String, String)>, Duration) + Send + Sync>;

/// A loopback HTTP/1.1 receiver: records every request and answers as `respond` says
/// (status, extra headers, delay before answering) given the request's index.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start(respond: Responder) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let g = g.clone();
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let n: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; n];
                    r.read_exact(&mut body).unwrap();
                    let mut req = Got {
                        headers,
                        body: String::from_utf8(body).unwrap(),
                        at: Instant::now(),
                        status: 0,
                    };
                    let i = {
                        let mut g = g.lock().unwrap();
                        g.push(req.clone());
                        g.len() - 1
                    };
                    let (status, extra, delay) = respond(i, &req);
                    req.status = status;
                    g.lock().unwrap()[i].status = status;
                    std::thread::sleep(delay);
                    let mut resp =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n");
                    for (k, v) in extra {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    let _ = conn.write_all(resp.as_bytes());
                });
            }
        });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// First successful (2xx) arrival of each `webhook-id`, parsed.
    fn distinct(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for g in self
            .requests()
            .into_iter()
            .filter(|g| (200..300).contains(&g.status))
        {
            let id = g.headers.get("webhook-id").cloned().unwrap_or_default();
            out.entry(id)
                .or_insert_with(|| serde_json::from_str(&g.body).unwrap());
        }
        out
    }
}

fn ok() -> Responder {
    Box::new(|_, _| (200, Vec::new(), Duration::ZERO))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` messages on d1 (idempotency keys `{tag}-{i}`) and waits for their reports.
async fn send(gw: &Gateway, tag: &str, n: u64) -> BTreeSet<String> {
    let mut conn = gw.connect("hooks").await;
    let mut s = conn.take_control().unwrap();
    for i in 0..n {
        s.writer
            .queue(&Frame::Send {
                seq: i + 1,
                idempotency_key: Text::from(format!("{tag}-{i}")),
                device_id: "d1".into(),
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

fn create(gw: &Gateway, key: &str, body: Value) -> (String, String) {
    let r = gw.api("POST", "/v1/webhooks", key, Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    (
        v["webhook"]["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

fn verify(secret: &str, g: &Got) {
    let secret = waping_webhooks::Secret::parse(secret).unwrap();
    let mut h = hyper::HeaderMap::new();
    for k in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        h.insert(k, g.headers[k].parse().unwrap());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    waping_webhooks::verify(&secret, &h, g.body.as_bytes(), now, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("signature of {} does not verify: {e}", g.headers["webhook-id"]));
}

#[tokio::test]
async fn every_status_event_arrives_signed_through_flapping_and_a_kill() {
    // The receiver refuses the first 4 requests with 503 (the breaker opens, retries back
    // off), then slowly accepts: a kill -9 will find deliveries in flight.
    let rx = Receiver::start(Box::new(|i, _| {
        if i < 4 {
            (503, Vec::new(), Duration::ZERO)
        } else {
            (204, Vec::new(), Duration::from_millis(20))
        }
    }));
    let mut gw = Gateway::start_upstream(&[W], &format!("[upstream.sim]\n{WEBHOOKS}"), false);
    let admin = gw.admin_key("hooks", "admin");
    let (id, secret) = create(
        &gw,
        &admin,
        json!({"url": rx.url("/hook"), "event_types": ["message.status"]}),
    );
    assert!(secret.starts_with("whsec_"));

    let first = send(&gw, "a", 30).await;
    wait_until("30 sent statuses", Duration::from_secs(60), || {
        rx.distinct().len() >= 30
    });
    // Now a kill -9 the moment the last REPORT arrived: some status events are still on
    // their way to the event store, others queued or in flight to the receiver. The restart
    // replays recent finishes from the journal, so none is lost.
    let second = send(&gw, "b", 30).await;
    gw.kill9();
    gw.respawn();
    let all: BTreeSet<String> = first.union(&second).cloned().collect();
    wait_until(
        "60 distinct events after the restart",
        Duration::from_secs(90),
        || rx.distinct().len() >= 60,
    );
    let distinct = rx.distinct();
    {
        let mut by_msg: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (wid, v) in &distinct {
            by_msg
                .entry(v["data"]["message_id"].as_str().unwrap_or("").to_string())
                .or_default()
                .push((
                    wid.clone(),
                    v["data"]["status"].as_str().unwrap_or("").to_string(),
                ));
        }
        let twice: Vec<_> = by_msg.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(twice.is_empty(), "one message, several event ids: {twice:?}");
    }
    let delivered: BTreeSet<String> = distinct
        .values()
        .map(|v| {
            assert_eq!(v["type"], "message.status", "{v}");
            assert_eq!(v["version"], 1);
            assert_eq!(v["workspace"], "hooks");
            assert_eq!(v["device"], "d1");
            assert_eq!(v["data"]["status"], "sent", "{v}");
            v["data"]["message_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        delivered, all,
        "every message's status reached the receiver exactly once after dedupe"
    );
    for (wid, v) in &distinct {
        assert_eq!(v["id"].as_str(), Some(wid.as_str()), "webhook-id is the event id");
    }
    let reqs = rx.requests();
    assert_eq!(reqs.iter().filter(|g| g.status == 503).count(), 4);
    assert!(reqs.len() >= 64, "the 503s were retried: {} requests", reqs.len());
    for g in &reqs {
        verify(&secret, g);
        assert_eq!(
            g.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    // Nothing left owed.
    let admin = gw.admin_key("hooks", "admin");
    wait_until("no pending deliveries", Duration::from_secs(30), || {
        gw.api("GET", &format!("/v1/webhooks/{id}"), &admin, None).json()["pending_deliveries"] == 0
    });
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_tells_the_others_and_retry_after_is_honoured() {
    let gone = Receiver::start(Box::new(|_, _| (410, Vec::new(), Duration::ZERO)));
    let watcher = Receiver::start(ok());
    let slow = Receiver::start(Box::new(|i, _| {
        if i == 0 {
            (429, vec![("retry-after".into(), "2".into())], Duration::ZERO)
        } else {
            (200, Vec::new(), Duration::ZERO)
        }
    }));
    let gw = Gateway::start_upstream(&[W], &format!("[upstream.sim]\n{WEBHOOKS}"), false);
    let owner = gw.admin_key("hooks", "owner");
    let (gone_id, _) = create(
        &gw,
        &owner,
        json!({"url": gone.url("/"), "event_types": ["message.status"]}),
    );
    let (_, watcher_secret) = create(
        &gw,
        &owner,
        json!({"url": watcher.url("/"), "event_types": ["webhook.endpoint_disabled"]}),
    );
    let (_, _) = create(
        &gw,
        &owner,
        json!({"url": slow.url("/"), "event_types": ["message.status"]}),
    );
    send(&gw, "g", 1).await;

    wait_until("the disabled notice", Duration::from_secs(30), || {
        !watcher.requests().is_empty()
    });
    let notice = &watcher.requests()[0];
    verify(&watcher_secret, notice);
    let v: Value = serde_json::from_str(&notice.body).unwrap();
    assert_eq!(v["type"], "webhook.endpoint_disabled");
    assert_eq!(v["data"]["endpoint_id"], gone_id.as_str());
    assert_eq!(v["data"]["http_status"], 410);
    let r = gw.api("GET", &format!("/v1/webhooks/{gone_id}"), &owner, None);
    assert_eq!(r.json()["enabled"], false, "{}", r.body);
    assert!(
        r.json()["disabled_reason"].as_str().unwrap().contains("410"),
        "{}",
        r.body
    );
    assert_eq!(gone.requests().len(), 1, "no more deliveries after 410");
    // Re-enabled by its owner: the delivery left pending goes out again.
    let r = gw.api(
        "PATCH",
        &format!("/v1/webhooks/{gone_id}"),
        &owner,
        Some(json!({"enabled": true})),
    );
    assert_eq!(r.json()["enabled"], true, "{}", r.body);
    wait_until(
        "the retried delivery after re-enabling",
        Duration::from_secs(30),
        || gone.requests().len() >= 2,
    );

    // 429 with Retry-After: 2 s; the retry waits at least that (schedule says 1 s).
    wait_until("the retry after 429", Duration::from_secs(30), || {
        slow.requests().len() >= 2
    });
    let r = slow.requests();
    let gap = r[1].at.duration_since(r[0].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After ignored: retried after {gap:?}"
    );
    assert_eq!(r[0].headers["webhook-id"], r[1].headers["webhook-id"]);
}

#[tokio::test]
async fn inbound_messages_and_device_events_reach_an_all_types_endpoint_in_device_order() {
    let rx = Receiver::start(ok());
    let gw = Gateway::start_upstream(
        &[W],
        &format!("[upstream.sim]\ninbound_per_second = 50.0\n{WEBHOOKS}"),
        false,
    );
    let admin = gw.admin_key("hooks", "admin");
    let (_, secret) = create(&gw, &admin, json!({"url": rx.url("/all"), "ordered": true}));
    wait_until("inbound messages", Duration::from_secs(30), || {
        rx.distinct()
            .values()
            .filter(|v| v["type"] == "message.received")
            .count()
            >= 20
    });
    for g in rx.requests() {
        verify(&secret, &g);
    }
    let received: Vec<Value> = rx
        .distinct()
        .into_values()
        .filter(|v| v["type"] == "message.received")
        .collect();
    for v in &received {
        assert!(v["data"]["from"].is_string(), "{v}");
        assert!(v["data"]["upstream_id"].is_string(), "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("evt_"));
    }
    // Ordered per device: each device's events arrive in timestamp order.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for g in rx.requests() {
        let v: Value = serde_json::from_str(&g.body).unwrap();
        let (Some(dev), Some(ts)) = (v["device"].as_str(), v["timestamp"].as_str()) else {
            continue;
        };
        let prev = last.insert(dev.to_string(), ts.to_string());
        if let Some(p) = prev {
            assert!(p.as_str() <= ts, "device {dev}: {ts} after {p}");
        }
    }
}

#[test]
fn the_ssrf_guard_refuses_internal_urls_and_plain_http() {
    let gw = Gateway::start(&[W], "");
    let admin = gw.admin_key("hooks", "admin");
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://10.0.0.8/x",
        "https://user:pw@hooks.example.com/x",
        "ftp://hooks.example.com/x",
    ] {
        let r = gw.api("POST", "/v1/webhooks", &admin, Some(json!({"url": url})));
        assert_eq!(r.status, 422, "{url}: {}", r.body);
    }
    let r = gw.api(
        "POST",
        "/v1/webhooks",
        &admin,
        Some(json!({"url": "https://hooks.example.com/x", "event_types": ["message.nope"]})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    // A sender may not manage webhooks.
    let sender = gw.admin_key("hooks", "sender");
    let r = gw.api("GET", "/v1/webhooks", &sender, None);
    assert_eq!(r.status, 403);
    // Secrets: shown at creation and rotation only; rotation keeps the old one for the overlap.
    let (id, s1) = create(&gw, &admin, json!({"url": "https://hooks.example.com/x"}));
    let r = gw.api("GET", &format!("/v1/webhooks/{id}"), &admin, None);
    assert!(!r.body.contains(&s1), "the secret is listed: {}", r.body);
    let r = gw.api(
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        &admin,
        Some(json!({"overlap_s": 3600})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let s2 = r.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(s1, s2);
    assert_eq!(
        r.json()["webhook"]["secrets"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.body
    );
    let r = gw.api("DELETE", &format!("/v1/webhooks/{id}"), &admin, None);
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn dead_letters_arrive_and_a_rotation_signs_with_both_secrets() {
    let rx = Receiver::start(ok());
    let gw = Gateway::start_upstream(
        &[W],
        &format!("[upstream.sim]\ntransient_failure_rate = 1.0\n[retry]\nmax_attempts = 1\n{WEBHOOKS}"),
        false,
    );
    let admin = gw.admin_key("hooks", "admin");
    let (id, old) = create(
        &gw,
        &admin,
        json!({"url": rx.url("/dead"), "event_types": ["message.dead_lettered"]}),
    );
    let r = gw.api(
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        &admin,
        Some(json!({"overlap_s": 600})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.json()["secret"].as_str().unwrap().to_string();
    let ids = send(&gw, "dl", 5).await;
    wait_until("5 dead-letter events", Duration::from_secs(30), || {
        rx.distinct().len() >= 5
    });
    let got: BTreeSet<String> = rx
        .distinct()
        .values()
        .map(|v| {
            assert_eq!(v["type"], "message.dead_lettered", "{v}");
            assert_eq!(v["data"]["attempts"], 1, "{v}");
            assert!(v["data"]["error"]["name"].is_string(), "{v}");
            v["data"]["message_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(got, ids);
    // During the overlap every request carries both signatures; either secret verifies it.
    for g in rx.requests() {
        assert_eq!(
            g.headers["webhook-signature"].split(' ').count(),
            2,
            "{:?}",
            g.headers
        );
        verify(&old, &g);
        verify(&new, &g);
    }
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried_without_delaying_another_endpoint() {
    // Answers after 5 s: past the 3 s request timeout, every attempt fails.
    let slow = Receiver::start(Box::new(|_, _| (200, Vec::new(), Duration::from_secs(5))));
    let fast = Receiver::start(ok());
    let gw = Gateway::start_upstream(&[W], &format!("[upstream.sim]\n{WEBHOOKS}"), false);
    let owner = gw.admin_key("hooks", "owner");
    let (slow_id, _) = create(
        &gw,
        &owner,
        json!({"url": slow.url("/"), "event_types": ["message.status"]}),
    );
    let (_, fast_secret) = create(
        &gw,
        &owner,
        json!({"url": fast.url("/"), "event_types": ["message.status"]}),
    );
    let ids = send(&gw, "s", 20).await;

    // The fast endpoint gets every status, signed, while the slow one's first attempts are
    // still waiting for answers that come too late.
    wait_until(
        "every status at the fast endpoint",
        Duration::from_secs(20),
        || fast.distinct().len() >= ids.len(),
    );
    for g in fast.requests() {
        verify(&fast_secret, &g);
    }
    let got: BTreeSet<String> = fast
        .distinct()
        .values()
        .map(|v| v["data"]["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids, "each message's status, once");
    let r = gw.api("GET", &format!("/v1/webhooks/{slow_id}"), &owner, None);
    assert!(
        r.json()["pending_deliveries"].as_u64().unwrap() > 0,
        "the slow endpoint still owes its events: {}",
        r.body
    );

    // Its requests time out and are retried with the same webhook-id; at most
    // max_concurrency (8) of them were open at once.
    wait_until("a retry at the slow endpoint", Duration::from_secs(30), || {
        let r = slow.requests();
        let mut seen = BTreeSet::new();
        r.iter().any(|g| !seen.insert(g.headers["webhook-id"].clone()))
    });
    let first_wave = slow
        .requests()
        .iter()
        .filter(|g| g.at.duration_since(slow.requests()[0].at) < Duration::from_millis(2500))
        .count();
    assert!(
        (1..=8).contains(&first_wave),
        "{first_wave} requests opened at once (max_concurrency 8)"
    );
}
