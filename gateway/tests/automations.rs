//! Automations through the real binary, with the in-process simulated WhatsApp generating
//! inbound messages (`simulated inbound {n}` from random numbers): a rule replies through
//! the simulator (journal, status, the simulator's delivery ledger), bounded regexes and
//! other mistakes get a 422 listing their paths, roles below admin are refused, changes are
//! audited, a tiny token bucket refuses automated replies (counted, not bypassed), and a
//! webhook action delivers `automation.matched` to a loopback receiver.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use serde_json::{Value, json};

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rule(gw: &Gateway, key: &str, id: &str) -> Value {
    let r = gw.api("GET", &format!("/v1/automations/{id}"), key, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn audit_text(gw: &Gateway) -> String {
    std::fs::read_dir(gw.state_dir().join("audit-log"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rule_replies_through_the_simulator_and_changes_are_validated_audited_and_admin_only() {
    const W: Ws = Ws {
        id: "auto",
        devices: &["d1"],
        rate: 1000,
        burst: 1000,
    };
    let ledger = std::env::temp_dir().join(format!("waping-auto-ledger-{}", std::process::id()));
    let _ = std::fs::remove_file(&ledger);
    let gw = Gateway::start_upstream(
        &[W],
        &format!(
            "[upstream.sim]\ninbound_per_second = 5.0\nledger = {:?}\n",
            ledger.display().to_string()
        ),
        false,
    );
    let admin = gw.admin_key("auto", "admin");

    // Mistakes: every problem with its path, in one 422; a huge regex is refused.
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(
            json!({"name": "bad", "match": {"regex": "\\w{100}\\w{100}\\w{100}"},
            "actions": [{"type": "reply", "template": "hi {{password}}"}],
            "limit": {"max": 1000, "window_s": 600}}),
        ),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    for path in ["match.regex:", "actions[0].template:", "limit.max:"] {
        assert!(msg.contains(path), "{path} missing from {msg}");
    }
    assert!(msg.contains("size limit"), "{msg}");
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(json!({"name": "long", "match": {"regex": "a".repeat(600)},
            "actions": [{"type": "tag", "tags": ["x"]}]})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("match.regex: at most 512 bytes"), "{}", r.body);

    // Roles below admin may not manage rules.
    for role in ["operator", "sender", "viewer", "auditor"] {
        let k = gw.admin_key("auto", role);
        let r = gw.api(
            "POST",
            "/v1/automations",
            &k,
            Some(json!({"name": "x", "actions": [{"type": "tag", "tags": ["x"]}]})),
        );
        assert_eq!(r.status, 403, "{role}: {}", r.body);
        assert_eq!(gw.api("GET", "/v1/automations", &k, None).status, 403, "{role}");
    }

    // A rule that replies and tags; it applies at once.
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(
            json!({"name": "echo back", "match": {"keywords": ["inbound"], "regex": "^simulated"},
            "actions": [
                {"type": "reply", "template": "Auto: got '{{text}}' on {{device}}"},
                {"type": "tag", "tags": ["contacted"]}
            ]}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ar_"), "{id}");
    assert_eq!(r.json()["limit"], json!({"max": 3, "window_s": 600}));

    wait_until("an automated reply", Duration::from_secs(30), || {
        rule(&gw, &admin, &id)["counters"]["last_message_id"].is_string()
    });
    let msg_id = rule(&gw, &admin, &id)["counters"]["last_message_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Journaled, then sent by the simulated WhatsApp like any message.
    let st = gw.wait_message(&admin, &msg_id);
    assert_eq!(st["state"], "sent", "{st}");
    assert_eq!(st["device"], "d1");
    wait_until(
        "the reply in the simulator's ledger",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&ledger)
                .unwrap_or_default()
                .contains("Auto: got 'simulated inbound")
        },
    );
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let line = ledger_text.lines().find(|l| l.contains("Auto: got")).unwrap();
    assert!(line.contains("on d1"), "{line}");
    // The reply and the tag are two actions; the tag may finish after the reply is sent.
    wait_until("both actions done", Duration::from_secs(10), || {
        rule(&gw, &admin, &id)["counters"]["done"].as_u64().unwrap_or(0) >= 2
    });
    let counters = rule(&gw, &admin, &id)["counters"].clone();
    assert!(counters["matched"].as_u64().unwrap() >= 1, "{counters}");
    assert!(
        counters["done"].as_u64().unwrap() >= 2,
        "reply and tag: {counters}"
    );
    assert_eq!(counters["refused"], 0, "{counters}");

    // The tag action recorded the sender of some matched message; the sender is in the
    // ledger line as the reply's recipient.
    let recipient = line
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| s.len() >= 10 && s.starts_with("49"))
        .unwrap_or_else(|| panic!("no recipient in {line}"))
        .to_string();
    let r = gw.api(
        "GET",
        &format!("/v1/automations/tags?device=d1&sender=%2B{recipient}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tags"], json!(["contacted"]), "{}", r.body);

    // Changes are hot-applied and audited; a disabled rule stops acting.
    let r = gw.api(
        "PATCH",
        &format!("/v1/automations/{id}"),
        &admin,
        Some(json!({"enabled": false})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["enabled"], false);
    std::thread::sleep(Duration::from_millis(300));
    let done = rule(&gw, &admin, &id)["counters"]["matched"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rule(&gw, &admin, &id)["counters"]["matched"],
        done,
        "a disabled rule still matches"
    );
    let r = gw.api(
        "PATCH",
        &format!("/v1/automations/{id}"),
        &admin,
        Some(json!({"actions": []})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("actions: 1 to 8 actions"), "{}", r.body);
    let r = gw.api("DELETE", &format!("/v1/automations/{id}"), &admin, None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        gw.api("GET", &format!("/v1/automations/{id}"), &admin, None)
            .status,
        404
    );
    wait_until("audit records of the rule", Duration::from_secs(10), || {
        let text = audit_text(&gw);
        ["automation.create", "automation.update", "automation.delete"]
            .iter()
            .all(|a| {
                text.lines()
                    .any(|l| l.contains(&format!("\"{a}\"")) && l.contains(&id))
            })
    });
    let text = audit_text(&gw);
    let update = text
        .lines()
        .find(|l| l.contains("\"automation.update\"") && l.contains(&id))
        .unwrap();
    assert!(update.contains("\"enabled\""), "{update}");
    assert!(update.contains("\"auto\""), "workspace named: {update}");
    let _ = std::fs::remove_file(&ledger);
}

#[test]
fn automated_replies_meet_the_workspace_token_bucket() {
    // One send per second: inbound at 20/s matches far more often than the bucket allows.
    const W: Ws = Ws {
        id: "tiny",
        devices: &["d1"],
        rate: 1,
        burst: 1,
    };
    let gw = Gateway::start_upstream(&[W], "[upstream.sim]\ninbound_per_second = 20.0\n", false);
    let admin = gw.admin_key("tiny", "admin");
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(json!({"name": "reply all", "match": {"keywords": ["inbound"]},
            "actions": [{"type": "reply", "template": "thanks"}]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until("refused automated replies", Duration::from_secs(30), || {
        rule(&gw, &admin, &id)["counters"]["refused"].as_u64().unwrap() >= 10
    });
    let c = rule(&gw, &admin, &id)["counters"].clone();
    let (done, refused, matched) = (
        c["done"].as_u64().unwrap(),
        c["refused"].as_u64().unwrap(),
        c["matched"].as_u64().unwrap(),
    );
    assert!(done >= 1, "{c}");
    // The bucket decides: roughly one per second passed, the rest were refused.
    assert!(done < refused, "{c}");
    assert!(done + refused <= matched, "{c}");
    // Refusals are the workspace's RATE_LIMITED, counted in the node's aggregate too.
    let r = gw.api("GET", "/v1/workspace", &admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A loopback HTTP/1.1 receiver that answers 200 and records each request body.
fn receiver() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.trim().eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    g.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

#[test]
fn a_webhook_action_delivers_automation_matched_to_a_loopback_receiver() {
    const W: Ws = Ws {
        id: "hooked",
        devices: &["d1"],
        rate: 1000,
        burst: 1000,
    };
    let (addr, got) = receiver();
    let gw = Gateway::start_upstream(
        &[W],
        "[upstream.sim]\ninbound_per_second = 5.0\n[webhooks]\nallow_http = true\n\
         allow_networks = [\"127.0.0.0/8\"]\nretry_schedule_s = [1, 1, 1]\n",
        false,
    );
    let admin = gw.admin_key("hooked", "admin");
    // The endpoint's own filter wants none of the inbound traffic: only the rule's events
    // are owed to it.
    let r = gw.api(
        "POST",
        "/v1/webhooks",
        &admin,
        Some(json!({"url": format!("http://{addr}/auto"), "event_types": ["webhook.endpoint_disabled"]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let endpoint = r.json()["webhook"]["id"].as_str().unwrap().to_string();
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(json!({"name": "notify crm", "match": {"regex": "inbound \\d+"},
            "actions": [{"type": "webhook", "endpoint_id": endpoint}]})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until("an automation.matched delivery", Duration::from_secs(30), || {
        !got.lock().unwrap().is_empty()
    });
    let bodies = got.lock().unwrap().clone();
    for b in &bodies {
        let v: Value = serde_json::from_str(b).unwrap();
        assert_eq!(v["type"], "automation.matched", "{v}");
        assert_eq!(v["workspace"], "hooked");
        assert_eq!(v["device"], "d1");
        assert_eq!(v["data"]["rule_id"], id.as_str());
        assert_eq!(v["data"]["rule_name"], "notify crm");
        assert!(
            v["data"]["trigger_event_id"]
                .as_str()
                .unwrap()
                .starts_with("evt_")
        );
        assert!(
            v["data"]["text"]
                .as_str()
                .unwrap()
                .starts_with("simulated inbound ")
        );
        assert!(v["data"]["from"].is_string());
    }
    // An unknown endpoint is refused at save time with its path.
    let r = gw.api(
        "POST",
        "/v1/automations",
        &admin,
        Some(json!({"name": "x", "actions": [{"type": "webhook", "endpoint_id": "whe_00000000000000ff"}]})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("actions[0].endpoint_id"), "{}", r.body);
}
