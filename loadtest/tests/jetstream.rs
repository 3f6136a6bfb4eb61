//! `run --target jetstream` end to end against the NATS server CI starts on
//! 127.0.0.1:4222 (see `.ci/run`). Short runs on a stream of its own, which
//! the harness deletes afterwards.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const NATS: &str = "127.0.0.1:4222";

fn require_nats() {
    let addr: SocketAddr = NATS.parse().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!(
            "this test needs a NATS server with JetStream on {NATS} ({e}); CI starts one \
             (.ci/run), locally run `nats-server -a 127.0.0.1 -p 4222 -js`"
        );
    }
}

fn run(extra: &[&str]) -> serde_json::Value {
    let stream = format!("WAPING_LT_TEST_{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_waping-loadtest"))
        .args([
            "run",
            "--target",
            "jetstream",
            "--nats-url",
            &format!("nats://{NATS}"),
            "--js-stream",
            &stream,
            // Its own subjects: streams on one server cannot overlap.
            "--js-subject-prefix",
            &format!("waping.lttest.{}", std::process::id()),
            "--js-recreate",
            "--js-delete-after",
            "--js-max-bytes",
            "67108864",
            "--keys",
            "/nonexistent/keys.toml",
            "-c",
            "2",
            "--body-bytes",
            "100",
            "--duration",
            "300ms",
            "--drain",
            "10s",
        ])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("running waping-loadtest: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "waping-loadtest failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stderr}"))
}

#[test]
fn jetstream_target_publishes_and_counts_acks() {
    require_nats();
    for extra in [&["--closed-loop", "8"][..], &["--rate", "2000"][..]] {
        let s = run(extra);
        assert_eq!(s["target"], "jetstream", "{s}");
        assert_eq!(s["body_bytes"], 100, "{s}");
        let sent = s["sent"].as_u64().unwrap_or_default();
        assert!(sent > 0, "{s}");
        assert_eq!(s["accepted"].as_u64(), Some(sent), "{s}");
        assert_eq!(s["unanswered"], 0, "{s}");
        assert_eq!(s["rejected"], serde_json::json!({}), "{s}");
        assert_eq!(s["accept_latency"]["count"].as_u64(), Some(sent), "{s}");
        assert!(s["delivery_latency"].is_null(), "{s}");
        assert!(s["missing_reports"].is_null(), "{s}");
    }
}
