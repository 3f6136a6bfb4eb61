//! The durable core through the real binary: `kill -9`, restarts, retries, lost answers.
//!
//! The simulated WhatsApp runs in this test process (the `sim-remote` upstream), so it
//! outlives every gateway crash and keeps a ledger of what it delivered: the tests compare
//! that ledger with what the gateway acknowledged.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use rand::{Rng, SeedableRng};
use waping_client::Connection;
use waping_gateway::config::SimConfig;
use waping_gateway::upstream::remote::serve_with;
use waping_gateway::upstream::sim::Deliveries;
use waping_protocol::{Body, DeliveryStatus, ErrorCode, Frame, MessageId, Text};

const WS: Ws = Ws {
    id: "acme",
    devices: &["d1", "d2", "d3", "d4"],
    rate: 1_000_000,
    burst: 1_000_000,
};

/// A simulated WhatsApp in this process; returns its address, delivery record and ledger path.
async fn sim(cfg: SimConfig, dir: &Path) -> (std::net::SocketAddr, Arc<Deliveries>, PathBuf) {
    let ledger = dir.join("ledger.tsv");
    let deliveries = Arc::new(Deliveries::new(cfg.dedup_capacity, Some(&ledger)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(listener, cfg, deliveries.clone()));
    (addr, deliveries, ledger)
}

fn upstream_toml(addr: std::net::SocketAddr, retry: &str) -> String {
    format!(
        "[upstream]\nkind = \"sim-remote\"\nremote_addr = \"{addr}\"\nsend_timeout_ms = 2000\n\
         [retry]\nbase_delay_ms = 5\nmax_delay_ms = 50\n{retry}\n\
         [retry.codes.UPSTREAM_TIMEOUT]\nbase_delay_ms = 5\nmax_delay_ms = 50\n"
    )
}

/// Delivered text → upstream ids it was delivered under (one per delivery).
fn ledger(path: &Path) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "ledger line {line:?}");
        m.entry(f[4].to_string()).or_default().push(f[0].to_string());
    }
    m
}

fn send(seq: u64, key: &str) -> Frame {
    let device = WS.devices[(seq % WS.devices.len() as u64) as usize];
    Frame::Send {
        seq,
        idempotency_key: Text::from(key.to_string()),
        device_id: device.into(),
        recipient: "4915112345678".into(),
        // The text is the key, so the ledger says which message each delivery was.
        body: Body::Text(Text::from(key.to_string())),
    }
}

/// Sends `keys` pipelined on one stream and collects ACCEPTED ids until all are answered or
/// the connection dies. Refusals that a retry can cure are left for the next round.
async fn send_keys(gw: &Gateway, keys: &[String], acked: &mut HashMap<String, MessageId>) -> usize {
    send_keys_until(gw, keys, acked, None).await
}

/// Like [`send_keys`]; stops waiting for answers as soon as `killed` is notified (the
/// gateway was killed: no answer can come, and QUIC would only notice at its idle timeout).
async fn send_keys_until(
    gw: &Gateway,
    keys: &[String],
    acked: &mut HashMap<String, MessageId>,
    killed: Option<&tokio::sync::Notify>,
) -> usize {
    let Ok(mut conn) = Connection::connect(&gw.client_config(&gw.key("acme"))).await else {
        return 0;
    };
    let Some(mut s) = conn.take_control() else {
        return 0;
    };
    for (i, k) in keys.iter().enumerate() {
        if s.writer.queue(&send(i as u64 + 1, k)).is_err() {
            return 0;
        }
    }
    if s.writer.flush().await.is_err() {
        return 0;
    }
    let mut answered = 0;
    let mut got = 0;
    while answered < keys.len() {
        let next = tokio::time::timeout(Duration::from_secs(20), s.next());
        let f = match killed {
            Some(k) => tokio::select! {
                r = next => r,
                _ = k.notified() => break,
            },
            None => next.await,
        };
        let f = match f {
            Ok(Ok(Some(f))) => f,
            _ => break,
        };
        match f {
            Frame::Accepted { seq, message_id } => {
                answered += 1;
                got += 1;
                let key = &keys[seq as usize - 1];
                if let Some(prev) = acked.insert(key.clone(), message_id) {
                    assert_eq!(prev, message_id, "{key} was acknowledged under two ids");
                }
            }
            Frame::Rejected { code, .. } => {
                answered += 1;
                assert!(code.retryable(), "unexpected refusal {code}");
            }
            _ => {}
        }
    }
    got
}

/// Waits until every acknowledged message is in the ledger, then checks exactly-once.
async fn assert_delivered_exactly_once(ledger_path: &Path, acked: &HashMap<String, MessageId>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let l = loop {
        let l = ledger(ledger_path);
        if acked.keys().all(|k| l.contains_key(k)) || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<_> = acked.keys().filter(|k| !l.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages were never delivered: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<_> = l.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    for (k, id) in acked {
        assert_eq!(
            l[k][0],
            id.to_string(),
            "{k} was delivered under another id than acknowledged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_loses_nothing_and_delivers_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, deliveries, ledger_path) = sim(
        SimConfig {
            latency_ms: 1,
            latency_jitter_ms: 20,
            lost_answer_rate: 0.02,
            ..Default::default()
        },
        dir.path(),
    )
    .await;
    let mut gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, ""), false);
    let seed: u64 = rand::rng().random();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut acked: HashMap<String, MessageId> = HashMap::new();
    let mut unacked: Vec<String> = Vec::new();
    let mut next = 0u64;
    const ROUNDS: usize = 6;
    for round in 0..=ROUNDS {
        let mut keys = std::mem::take(&mut unacked);
        if round < ROUNDS {
            keys.extend((0..1500).map(|_| {
                next += 1;
                format!("m-{next}")
            }));
        }
        let killed = std::sync::Arc::new(tokio::sync::Notify::new());
        let killer = (round < ROUNDS).then(|| {
            let pid = gw.child.id();
            let after = Duration::from_millis(rng.random_range(5..250));
            let killed = killed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                killed.notify_one();
            })
        });
        send_keys_until(&gw, &keys, &mut acked, Some(&killed)).await;
        if let Some(k) = killer {
            k.await.unwrap();
            gw.kill9();
            gw.respawn();
        }
        unacked = keys.into_iter().filter(|k| !acked.contains_key(k)).collect();
        eprintln!(
            "round {round}: {} acknowledged so far, {} to resend",
            acked.len(),
            unacked.len()
        );
    }
    // The last round may hand some back with a retryable refusal (more than max_in_flight
    // at once after several crashes left many to resend): a client sends those again.
    for _ in 0..10 {
        if unacked.is_empty() {
            break;
        }
        send_keys_until(&gw, &unacked, &mut acked, None).await;
        unacked.retain(|k| !acked.contains_key(k));
    }
    assert!(
        unacked.is_empty(),
        "without crashes every message is acknowledged ({} left)",
        unacked.len()
    );
    assert_eq!(
        acked.len() as u64,
        next,
        "every message was acknowledged in the end"
    );
    assert_delivered_exactly_once(&ledger_path, &acked).await;
    let st = deliveries.stats();
    eprintln!(
        "delivered {} distinct, {} resends answered already-sent",
        st.delivered, st.repeats
    );
    assert_eq!(st.delivered, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_in_flight_at_a_crash_are_sent_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The simulator takes each message at once and answers 3 s later: at the kill every
    // message is delivered, but no answer reached the gateway.
    let (addr, deliveries, ledger_path) = sim(
        SimConfig {
            latency_ms: 3000,
            ..Default::default()
        },
        dir.path(),
    )
    .await;
    let mut gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, ""), false);
    let keys: Vec<String> = (0..200).map(|i| format!("slow-{i}")).collect();
    let mut acked = HashMap::new();
    assert_eq!(send_keys(&gw, &keys, &mut acked).await, 200);
    gw.kill9();
    gw.respawn();
    assert_delivered_exactly_once(&ledger_path, &acked).await;
    // After the restart every message is resent under its id and answered "already sent".
    let deadline = Instant::now() + Duration::from_secs(30);
    while deliveries.stats().repeats < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = deliveries.stats();
    assert_eq!(st.delivered, 200);
    // At least one resend each; more where a 3 s answer outlived the 2 s send timeout.
    assert!(st.repeats >= 200, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_restart_gets_the_original_id_and_no_second_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, deliveries, ledger_path) = sim(SimConfig::default(), dir.path()).await;
    let mut gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, ""), false);
    let keys = vec!["once".to_string()];
    let mut first = HashMap::new();
    send_keys(&gw, &keys, &mut first).await;
    assert_delivered_exactly_once(&ledger_path, &first).await;
    assert_eq!(gw.terminate(), Some(0));
    gw.respawn();
    let mut again = HashMap::new();
    send_keys(&gw, &keys, &mut again).await;
    assert_eq!(again["once"], first["once"], "same id after a restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries.stats().delivered, 1);
    assert_eq!(ledger(&ledger_path)["once"].len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_and_lost_answers_are_retried_to_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, deliveries, ledger_path) = sim(
        SimConfig {
            transient_failure_rate: 0.3,
            lost_answer_rate: 0.2,
            ..Default::default()
        },
        dir.path(),
    )
    .await;
    let gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, "max_attempts = 50"), false);
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    const N: u64 = 300;
    let keys: Vec<String> = (1..=N).map(|i| format!("r-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        s.writer.queue(&send(i as u64 + 1, k)).unwrap();
    }
    s.writer.flush().await.unwrap();
    let (mut acked, mut sent, mut deferred) = (HashMap::new(), HashSet::new(), 0);
    while sent.len() < N as usize {
        let f = common::next_frame(&mut s).await;
        match f {
            Frame::Accepted { seq, message_id } => {
                acked.insert(keys[seq as usize - 1].clone(), message_id);
            }
            Frame::Report(r) => match r.status {
                DeliveryStatus::Sent => assert!(sent.insert(r.seq), "one final report per message"),
                DeliveryStatus::Deferred => {
                    assert!(r.code.retryable(), "{r:?}");
                    deferred += 1;
                }
                DeliveryStatus::Failed => panic!("{r:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert!(deferred > 0, "some attempts failed and were deferred");
    assert_delivered_exactly_once(&ledger_path, &acked).await;
    assert_eq!(deliveries.stats().delivered, N);
    assert!(
        deliveries.stats().repeats > 0,
        "lost answers were resent and answered already-sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_messages_become_dead_letters_listed_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _d, _ledger) = sim(
        SimConfig {
            transient_failure_rate: 1.0,
            ..Default::default()
        },
        dir.path(),
    )
    .await;
    let mut gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, "max_attempts = 3"), false);
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    s.send(&send(1, "doomed")).await.unwrap();
    let mut id = None;
    let mut deferred = 0;
    let fin = loop {
        let f = common::next_frame(&mut s).await;
        match f {
            Frame::Accepted { message_id, .. } => id = Some(message_id),
            Frame::Report(r) if r.status == DeliveryStatus::Deferred => deferred += 1,
            Frame::Report(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(deferred, 2, "attempts 1 and 2 deferred, the 3rd is final");
    assert_eq!(fin.status, DeliveryStatus::Failed);
    assert_eq!(fin.code, ErrorCode::UPSTREAM_UNAVAILABLE);
    assert!(fin.detail.as_str().contains("exhausted"), "{}", fin.detail);
    drop(s);
    drop(conn);
    assert_eq!(gw.terminate(), Some(0));

    // The operator's view, with the gateway stopped.
    let cfg = gw.dir.path().join("gateway.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["dead-letters", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = id.unwrap().to_string();
    assert!(
        text.contains(&id) && text.contains("UPSTREAM_UNAVAILABLE"),
        "{text}"
    );

    // Replay puts it back to work on the next start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["dead-letters", "replay", "--config"])
        .arg(&cfg)
        .arg(&id)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["dead-letters", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&id),
        "replayed letters leave the list"
    );
    gw.respawn();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_retry_queue_refuses_new_sends_with_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _d, _ledger) = sim(
        SimConfig {
            transient_failure_rate: 1.0,
            ..Default::default()
        },
        dir.path(),
    )
    .await;
    // Room for one waiting message, retried only after a minute.
    let retry = "capacity = 1\n[retry.codes.UPSTREAM_UNAVAILABLE]\nbase_delay_ms = 60000\nmin_delay_ms = 60000\nmax_delay_ms = 60000";
    let gw = Gateway::start_upstream(&[WS], &upstream_toml(addr, retry), false);
    let mut conn = gw.connect("acme").await;
    let mut s = conn.take_control().unwrap();
    s.send(&send(1, "first")).await.unwrap();
    loop {
        let f = common::next_frame(&mut s).await;
        if let Frame::Report(r) = f {
            assert_eq!(r.status, DeliveryStatus::Deferred);
            break;
        }
    }
    s.send(&send(2, "second")).await.unwrap();
    let f = common::next_frame(&mut s).await;
    match f {
        Frame::Rejected {
            seq,
            code,
            retry_after_ms,
            ..
        } => {
            assert_eq!((seq, code), (2, ErrorCode::OVERLOADED));
            assert!(retry_after_ms > 0);
        }
        other => panic!("{other:?}"),
    }
}
