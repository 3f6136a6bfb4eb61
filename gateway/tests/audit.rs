//! The audit log through the real binary: records of control-plane actions reach a file
//! sink, an HTTP receiver and NATS JetStream (the real server on 127.0.0.1:4222) exactly
//! once each (after deduplication by node + seq for HTTP), in order, with the chain and
//! the signed digests intact, while the HTTP receiver is down for a while and the gateway
//! is killed with records in flight. Then `audit verify` on the files, clean and tampered.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Ws};

/// A loopback HTTP/1.1 receiver: keeps every NDJSON line POSTed while `up`, answers 503
/// with `Retry-After: 0` while down.
struct Receiver {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let (u, ls, rf) = (up.clone(), lines.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (u, ls, rf) = (u.clone(), ls.clone(), rf.clone());
                std::thread::spawn(move || serve(conn, &u, &ls, &rf));
            }
        });
        Receiver {
            addr,
            up,
            lines,
            refused,
        }
    }
}

fn serve(conn: TcpStream, up: &AtomicBool, lines: &Mutex<Vec<String>>, refused: &AtomicU64) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
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
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let resp = if up.load(Ordering::SeqCst) {
            let text = String::from_utf8(body).unwrap();
            lines
                .lock()
                .unwrap()
                .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            refused.fetch_add(1, Ordering::SeqCst);
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n"
        };
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn seq_of(line: &str) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (v["node"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap())
}

/// Lines of every `*.jsonl` in `dir`, in name order.
fn file_lines(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn nats_lines(stream: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS with JetStream must run on 127.0.0.1:4222 (.ci/run starts it)");
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream(stream).await.expect("the sink created its stream");
        let last = s.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for n in 1..=last {
            if let Ok(m) = s.get_raw_message(n).await {
                out.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
        }
        let _ = js.delete_stream(stream).await;
        out
    })
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exactly the sequence 1..=n for one node, each once.
fn assert_contiguous(name: &str, seqs: &[u64]) {
    let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs,
        &expect[..],
        "{name}: sequence numbers are not 1..=n exactly once in order"
    );
}

#[test]
fn records_reach_every_sink_exactly_once_in_order_across_an_outage_and_a_kill() {
    let rx = Receiver::start();
    let suffix = format!(
        "{}{}",
        std::process::id(),
        Instant::now().elapsed().subsec_nanos()
    );
    let stream = format!("IT_AUDIT_{suffix}");
    let subject = format!("it.audit.{suffix}");
    let files = tempfile::tempdir().unwrap();
    let audit = format!(
        "[audit]\nnode = \"it-node\"\ndigest_interval_s = 1\naggregate_interval_s = 1\n\
         [[audit.sinks]]\ntype = \"file\"\npath = {:?}\nmax_file_bytes = 4096\n\
         [[audit.sinks]]\ntype = \"http\"\nurl = \"http://{}/audit\"\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nmax_batch_records = 7\n\
         [[audit.sinks]]\ntype = \"nats\"\nstream = {:?}\nsubject_prefix = {:?}\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nmax_batch_records = 5\n",
        files.path().display().to_string(),
        rx.addr,
        stream,
        subject,
    );
    let mut gw = Gateway::start_full(
        &[Ws {
            id: "cfgws",
            devices: &["d1"],
            rate: 100,
            burst: 100,
        }],
        "[upstream.sim]\n",
        false,
        &format!(
            "auth_failures_per_minute = 10000\nkey_rate_per_second = 1000000\nkey_burst = 1000000\nsource_rate_per_second = 1000000\nsource_burst = 1000000\n{audit}"
        ),
    );
    let act = |gw: &Gateway, round: usize| {
        let owner = gw.create_workspace(&format!("ws-{round}"));
        for i in 0..4 {
            let r = gw.api(
                "POST",
                "/v1/keys",
                &owner,
                Some(serde_json::json!({"name": format!("k{i}"), "role": "sender"})),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            let id = r.json()["info"]["id"].as_str().unwrap().to_owned();
            if i % 2 == 0 {
                assert_eq!(
                    gw.api("DELETE", &format!("/v1/keys/{id}"), &owner, None).status,
                    204
                );
            }
        }
        let r = gw.api(
            "POST",
            "/v1/devices",
            &owner,
            Some(serde_json::json!({"id": "dev1"})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        for _ in 0..3 {
            assert_eq!(gw.api("GET", "/v1/devices", "wpk_not_a_key", None).status, 401);
        }
    };

    // Round 1 with the HTTP receiver down: the file and NATS sinks keep up, HTTP waits.
    act(&gw, 1);
    // A digest within the run, not only the final one (digest_interval_s = 1).
    wait_until("a digest in the file sink", Duration::from_secs(10), || {
        file_lines(files.path())
            .iter()
            .any(|l| l.contains("\"audit.digest\""))
    });
    wait_until("HTTP sink retries", Duration::from_secs(10), || {
        rx.refused.load(Ordering::SeqCst) >= 3
    });
    // Round 2, then kill -9 at once: records in flight in every sink.
    act(&gw, 2);
    gw.kill9();
    gw.respawn();
    rx.up.store(true, Ordering::SeqCst);
    act(&gw, 3);
    assert_eq!(gw.terminate(), Some(0));

    let file = file_lines(files.path());
    let file_seqs: Vec<u64> = file.iter().map(|l| seq_of(l).1).collect();
    assert_contiguous("file sink", &file_seqs);
    let last = *file_seqs.last().unwrap();

    // What the records say happened.
    let actions: Vec<String> = file
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let count = |a: &str| actions.iter().filter(|x| *x == a).count();
    assert_eq!(count("workspace.create"), 3);
    assert_eq!(count("key.revoke"), 6);
    assert!(count("key.create") >= 3 * 5, "owner keys and four per round");
    assert_eq!(count("device.create"), 3);
    assert_eq!(count("auth.failure"), 9);
    assert_eq!(count("audit.start"), 2, "one per start");
    assert_eq!(count("audit.stop"), 1, "the kill left no stop record");
    assert!(
        count("audit.digest") >= 2,
        "one during the run and one at the stop"
    );
    assert!(count("auth.success") >= 1, "aggregated HTTP authentications");
    assert_eq!(
        actions.last().map(String::as_str),
        Some("audit.digest"),
        "a clean stop ends with a digest"
    );
    assert!(
        !file.iter().any(|l| l.contains("wpk_")),
        "no key secret in any record"
    );

    // HTTP: at least once; exactly once after dedupe by node + seq; first arrivals in order.
    let http = rx.lines.lock().unwrap().clone();
    let mut seen = BTreeMap::new();
    let mut firsts = Vec::new();
    for l in &http {
        let (node, seq) = seq_of(l);
        assert_eq!(node, "it-node");
        if let Some(prev) = seen.insert(seq, l.clone()) {
            assert_eq!(&prev, l, "a resent record is byte-identical");
        } else {
            firsts.push(seq);
        }
    }
    assert_contiguous("http sink", &firsts);
    assert_eq!(firsts.len() as u64, last);
    let http_dedup: Vec<String> = seen.into_values().collect();
    assert_eq!(http_dedup, file, "the same bytes reach every sink");

    // NATS: exactly once without help (msg-id dedupe + resume from the stream's last record).
    let nats = nats_lines(&stream);
    let nats_seqs: Vec<u64> = nats.iter().map(|l| seq_of(l).1).collect();
    assert_contiguous("nats sink", &nats_seqs);
    assert_eq!(nats, file);

    // The chain and every digest verify, through the CLI, with the node's public key.
    let cfg = gw.dir.path().join("gateway.toml");
    let bin = env!("CARGO_BIN_EXE_waping-gateway");
    let pk = Command::new(bin)
        .args(["audit", "public-key", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(pk.status.success(), "{}", String::from_utf8_lossy(&pk.stderr));
    let pk = String::from_utf8(pk.stdout).unwrap().trim().to_owned();
    let out = Command::new(bin)
        .args(["audit", "verify", "--public-key", &pk])
        .arg(files.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("seq 1..={last}")), "{text}");
    // The spool itself verifies too.
    let out = Command::new(bin)
        .args(["audit", "verify", "--public-key", &pk])
        .arg(gw.state_dir().join("audit"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Remove one record from the middle of the file sink's output: found, with its position.
    let mut names: Vec<_> = std::fs::read_dir(files.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let victim = &names[names.len() / 2];
    let text = std::fs::read_to_string(victim).unwrap();
    let mut ls: Vec<&str> = text.lines().collect();
    assert!(ls.len() >= 3, "rotation at 4 KiB leaves several lines per file");
    let removed = seq_of(ls.remove(1)).1;
    std::fs::write(victim, ls.join("\n") + "\n").unwrap();
    let out = Command::new(bin)
        .args(["audit", "verify", "--public-key", &pk])
        .arg(files.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("missing") && text.contains(&format!("seq {removed}")),
        "{text}"
    );
    assert!(text.contains(&format!("{}:2", victim.display())), "{text}");
}

#[test]
fn a_full_spool_refuses_security_operations_until_the_sink_catches_up() {
    let rx = Receiver::start();
    let audit = format!(
        "[audit]\nnode = \"it-full\"\nspool_max_bytes = 1048576\nsegment_bytes = 65536\n\
         [[audit.sinks]]\ntype = \"http\"\nurl = \"http://{}/audit\"\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n",
        rx.addr
    );
    let gw = Gateway::start_full(
        &[],
        "[upstream.sim]\n",
        false,
        &format!(
            "auth_failures_per_minute = 10000\nkey_rate_per_second = 1000000\nkey_burst = 1000000\nsource_rate_per_second = 1000000\nsource_burst = 1000000\n{audit}"
        ),
    );
    let owner = gw.create_workspace("acme");
    // Key creations, revocations and failed authentications are recorded one by one (about
    // 1.6 KB per round): the spool fills within a few hundred rounds.
    let mut refused = None;
    for i in 0..20_000 {
        let r = gw.api(
            "POST",
            "/v1/keys",
            &owner,
            Some(serde_json::json!({"name": format!("k{i}"), "role": "sender"})),
        );
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.json()["info"]["id"].as_str().unwrap().to_owned();
        let d = gw.api("DELETE", &format!("/v1/keys/{id}"), &owner, None);
        if d.status == 503 {
            refused = Some(d);
            break;
        }
        assert_eq!(d.status, 204, "{}", d.body);
        for _ in 0..5 {
            assert_eq!(gw.api("GET", "/v1/devices", "wpk_nope", None).status, 401);
        }
    }
    let r = refused.expect("the spool filled while the sink was down");
    assert_eq!(r.json()["error"]["name"], "AUDIT_UNAVAILABLE", "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // Refused operations changed nothing; the count is taken now and compared after.
    let before = gw
        .api("GET", "/v1/keys", &owner, None)
        .json()
        .as_array()
        .unwrap()
        .len();
    // Reads still work; the sink comes back; the spool drains; operations resume.
    rx.up.store(true, Ordering::SeqCst);
    wait_until("operations resume", Duration::from_secs(60), || {
        gw.api(
            "POST",
            "/v1/keys",
            &owner,
            Some(serde_json::json!({"name": "after", "role": "sender"})),
        )
        .status
            == 201
    });
    let after = gw
        .api("GET", "/v1/keys", &owner, None)
        .json()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before + 1);
    // Every record written reached the receiver, none lost while refusing.
    let lines = rx.lines.lock().unwrap().clone();
    let mut seqs: Vec<u64> = lines.iter().map(|l| seq_of(l).1).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(
        *seqs.last().unwrap() as usize,
        seqs.len(),
        "no gap in what reached the sink"
    );
}
