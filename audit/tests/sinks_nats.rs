//! The NATS JetStream sink against the real nats-server on 127.0.0.1:4222 (with `-js`).
//! CI starts it; when it is not reachable these tests fail, they do not skip.
//! Every test uses its own stream and subject prefix (random suffix) and deletes the
//! stream afterwards, even when it fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use waping_audit::config::NatsSinkConfig;
use waping_audit::sinks::nats::NatsSink;
use waping_audit::{Line, Sink, SinkErrorKind};

const NATS: &str = "127.0.0.1:4222";

/// A generous bound so a broken sink fails the test instead of hanging it; nothing
/// asserts how fast anything is.
const HANG: Duration = Duration::from_secs(60);

async fn admin() -> jetstream::Context {
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(NATS),
    )
    .await
    .unwrap_or_else(|_| panic!("{}", unreachable_msg("timed out")))
    .unwrap_or_else(|e| panic!("{}", unreachable_msg(&e.to_string())));
    jetstream::new(client)
}

fn unreachable_msg(why: &str) -> String {
    format!(
        "these tests need nats-server with JetStream on {NATS} (start it with `nats-server -js -a 127.0.0.1 -p 4222`; CI does): {why}"
    )
}

/// A stream name and subject prefix of this test alone; deletes the stream on drop.
struct Names {
    stream: String,
    prefix: String,
}

impl Names {
    fn new(tag: &str) -> Names {
        let r: u64 = rand::random();
        Names {
            stream: format!("WAPING_AUDIT_TEST_{}_{r:016x}", tag.to_uppercase()),
            prefix: format!("waping-test.{tag}.{r:016x}"),
        }
    }

    fn cfg(&self) -> NatsSinkConfig {
        NatsSinkConfig {
            url: format!("nats://{NATS}"),
            stream: self.stream.clone(),
            subject_prefix: self.prefix.clone(),
            timeout_ms: 10_000,
            ..Default::default()
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        // Runs during a panic too; the test's runtime may be gone, so use a fresh one.
        let name = self.stream.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(10), async_nats::connect(NATS)).await
                else {
                    return;
                };
                let _ = jetstream::new(client).delete_stream(&name).await;
            });
        })
        .join();
    }
}

fn lines(node: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Line> {
    seqs.map(|seq| Line {
        seq,
        bytes: Bytes::from(format!(
            r#"{{"v":1,"node":"{node}","seq":{seq},"ts":"2026-01-01T00:00:00.000Z","actor":{{"kind":"system"}},"action":"audit.start","outcome":"success","prev":"{}"}}"#,
            "0".repeat(64)
        )),
    })
    .collect()
}

/// Every message of `stream`, in stream order: (subject, Nats-Msg-Id, payload).
async fn messages(stream: &Stream) -> Vec<(String, String, Bytes)> {
    let mut stream = stream.clone();
    let info = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if info.messages == 0 {
        return out;
    }
    for seq in info.first_sequence..=info.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((m.subject.to_string(), id, m.payload));
    }
    out
}

async fn with_bound<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

#[tokio::test]
async fn a_thousand_records_land_once_in_order_with_msg_ids() {
    let names = Names::new("order");
    let js = admin().await;
    let mut cfg = names.cfg();
    cfg.max_batch_records = 64;
    let mut sink = NatsSink::new(&cfg, "node-a").unwrap();
    assert_eq!(sink.name(), "nats");
    let all = lines("node-a", 1..=1000);
    with_bound("sending", async {
        for batch in all.chunks(100) {
            sink.send(batch).await.unwrap();
        }
    })
    .await;

    let stream = js.get_stream(&names.stream).await.unwrap();
    let got = messages(&stream).await;
    assert_eq!(got.len(), 1000);
    let subject = format!("{}.node-a", names.prefix);
    for (i, (subj, id, payload)) in got.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(subj, &subject);
        assert_eq!(id, &format!("node-a:{seq}"));
        assert_eq!(payload, &all[i].bytes);
    }
    // The stream the sink created: file storage, its prefix, a 2-minute dedupe window.
    let info = stream.cached_info();
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    assert_eq!(info.config.subjects, vec![format!("{}.>", names.prefix)]);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    assert_eq!(sink.resume().await.unwrap(), Some(1000));
}

#[tokio::test]
async fn resending_an_overlapping_batch_adds_no_duplicates() {
    let names = Names::new("dedupe");
    let js = admin().await;
    let mut sink = NatsSink::new(&names.cfg(), "node-a").unwrap();
    with_bound("sending", async {
        sink.send(&lines("node-a", 1..=50)).await.unwrap();
        // A retry of a batch that partly arrived, then the rest.
        sink.send(&lines("node-a", 30..=80)).await.unwrap();
        sink.send(&lines("node-a", 1..=80)).await.unwrap();
    })
    .await;
    let stream = js.get_stream(&names.stream).await.unwrap();
    let ids: Vec<String> = messages(&stream).await.into_iter().map(|m| m.1).collect();
    let expected: Vec<String> = (1..=80).map(|s| format!("node-a:{s}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn resume_reads_the_last_seq_of_this_node() {
    let names = Names::new("resume");
    let js = admin().await;
    let cfg = names.cfg();
    let mut a = NatsSink::new(&cfg, "node-a").unwrap();
    let mut b = NatsSink::new(&cfg, "node-b").unwrap();
    with_bound("resume and send", async {
        assert_eq!(a.resume().await.unwrap(), None);
        a.send(&lines("node-a", 1..=5)).await.unwrap();
        b.send(&lines("node-b", 1..=9)).await.unwrap();
        assert_eq!(a.resume().await.unwrap(), Some(5));
        assert_eq!(b.resume().await.unwrap(), Some(9));
        // A new sink (a restarted node) finds the same answer over its own connection.
        let mut again = NatsSink::new(&cfg, "node-a").unwrap();
        assert_eq!(again.resume().await.unwrap(), Some(5));
        // A foreign message on the node's subject is not trusted: "cannot tell".
        js.publish(
            format!("{}.node-a", names.prefix),
            Bytes::from_static(b"not json"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        assert_eq!(again.resume().await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_does_not_take_the_subject_is_misconfigured() {
    let names = Names::new("subjects");
    let js = admin().await;
    js.create_stream(jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}-elsewhere.>", names.prefix)],
        ..Default::default()
    })
    .await
    .unwrap();
    with_bound("misconfigured", async {
        let mut sink = NatsSink::new(&names.cfg(), "node-a").unwrap();
        let e = sink.send(&lines("node-a", 1..=1)).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{e}");
        assert!(e.message.contains(&names.stream), "{}", e.message);
        assert_eq!(
            sink.resume().await.unwrap_err().kind,
            SinkErrorKind::Misconfigured
        );

        // A missing stream that the sink may not create.
        let other = Names::new("missing");
        let mut cfg = other.cfg();
        cfg.create_stream = false;
        let mut sink = NatsSink::new(&cfg, "node-a").unwrap();
        let e = sink.send(&lines("node-a", 1..=1)).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{e}");
    })
    .await;
    assert_eq!(
        js.get_stream(&names.stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages,
        0
    );
}

#[tokio::test]
async fn an_absent_or_silent_server_is_unavailable() {
    let names = Names::new("absent");
    // Nothing listens on a port just released.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    let mut cfg = names.cfg();
    cfg.url = format!("nats://{closed}");
    cfg.timeout_ms = 500;
    let mut sink = NatsSink::new(&cfg, "node-a").unwrap();
    with_bound("closed port", async {
        let e = sink.send(&lines("node-a", 1..=1)).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
        let e = sink.resume().await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
    })
    .await;

    // A port that accepts and never speaks NATS.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    cfg.url = format!("nats://{silent}");
    let mut sink = NatsSink::new(&cfg, "node-a").unwrap();
    with_bound("silent port", async {
        let e = sink.send(&lines("node-a", 1..=1)).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
    })
    .await;
    hold.abort();
}

/// A TCP proxy to the NATS server that can be cut (open connections closed, new ones
/// dropped) and restored, on a port that stays the same.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (u, c) = (up.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(NATS).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            conns,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test]
async fn an_outage_fails_sends_as_unavailable_and_delivery_resumes_after_it() {
    let names = Names::new("outage");
    let js = admin().await;
    let proxy = Proxy::start().await;
    let mut cfg = names.cfg();
    cfg.url = format!("nats://127.0.0.1:{}", proxy.port);
    cfg.timeout_ms = 1_000;
    let mut sink = NatsSink::new(&cfg, "node-a").unwrap();
    with_bound("outage", async {
        sink.send(&lines("node-a", 1..=10)).await.unwrap();
        proxy.cut();
        let e = sink.send(&lines("node-a", 11..=20)).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
        proxy.restore();
        // The client reconnects by itself, on its own backoff; the shipping loop would
        // retry the same batch until then, and so does this.
        loop {
            match sink.send(&lines("node-a", 11..=20)).await {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await;
    // Publishes buffered during the outage may have gone out after it, and some written
    // to the dead socket were lost, so stream order may differ from seq order after the
    // outage; but every record is there exactly once.
    let stream = js.get_stream(&names.stream).await.unwrap();
    let mut seqs: Vec<u64> = messages(&stream)
        .await
        .into_iter()
        .map(|m| m.1.strip_prefix("node-a:").unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs[..10], (1..=10).collect::<Vec<_>>());
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

/// Publishes `seqs` of `node` as the sink would, but directly.
async fn publish_raw(js: &jetstream::Context, prefix: &str, node: &str, seqs: &[u64]) {
    for &seq in seqs {
        let line = &lines(node, seq..=seq)[0];
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("{node}:{seq}").as_str());
        js.publish_with_headers(format!("{prefix}.{node}"), h, line.bytes.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn resume_does_not_answer_over_a_hole() {
    let names = Names::new("hole");
    let js = admin().await;
    let cfg = names.cfg();
    let mut a = NatsSink::new(&cfg, "node-a").unwrap();
    let mut b = NatsSink::new(&cfg, "node-b").unwrap();
    with_bound("resume", async {
        // The sink creates the stream.
        assert_eq!(a.resume().await.unwrap(), None);
        // 6 and 7 missing: answering 10 would skip them.
        publish_raw(&js, &names.prefix, "node-a", &[1, 2, 3, 4, 5, 8, 9, 10]).await;
        assert_eq!(a.resume().await.unwrap(), None);
        // Filled in late: all there, but the last message is not the highest record.
        publish_raw(&js, &names.prefix, "node-a", &[6, 7]).await;
        assert_eq!(a.resume().await.unwrap(), None);
        // The next record makes the run unbroken again.
        a.send(&lines("node-a", 11..=11)).await.unwrap();
        assert_eq!(a.resume().await.unwrap(), Some(11));
        // A run whose start was trimmed by retention is still unbroken.
        publish_raw(&js, &names.prefix, "node-b", &[3, 4, 5, 6]).await;
        assert_eq!(b.resume().await.unwrap(), Some(6));
    })
    .await;
}

#[tokio::test]
async fn token_and_credentials_files_authenticate_or_say_why_not() {
    // A second, private nats-server that demands a token (the machine's one on 4222 has no
    // auth): the right token ships, a wrong one is refused as a configuration problem.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = tempfile::tempdir().unwrap();
    let server = std::process::Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--auth",
            "s3cret-token",
            "-js",
            "-sd",
        ])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server on PATH (installed with the NATS the tests need)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = {
        let k = Kill(server);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        k
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let cfg = |token_file: &std::path::Path| NatsSinkConfig {
        url: format!("nats://127.0.0.1:{port}"),
        stream: "AUTH_TEST".into(),
        subject_prefix: "auth.test".into(),
        token_file: Some(token_file.to_path_buf()),
        timeout_ms: 5_000,
        ..Default::default()
    };
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let mut ok = NatsSink::new(&cfg(&token), "node-a").unwrap();
    ok.send(&lines("node-a", 1..=3)).await.unwrap();
    assert_eq!(ok.resume().await.unwrap(), Some(3));
    std::fs::write(&token, "wrong").unwrap();
    let mut bad = NatsSink::new(&cfg(&token), "node-a").unwrap();
    let e = bad.send(&lines("node-a", 4..=4)).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{e}");
    assert!(
        !e.message.contains("wrong"),
        "the token is never in a message: {e}"
    );
    std::fs::write(&token, "  \n").unwrap();
    assert_eq!(
        NatsSink::new(&cfg(&token), "n").unwrap_err().kind,
        SinkErrorKind::Misconfigured
    );
    // A credentials file that is missing is a local error; one that is not a .creds file is
    // reported when connecting, as a configuration problem.
    let creds = dir.path().join("audit.creds");
    let mut c = cfg(&token);
    c.token_file = None;
    c.credentials_file = Some(creds.clone());
    assert_eq!(NatsSink::new(&c, "n").unwrap_err().kind, SinkErrorKind::Local);
    std::fs::write(&creds, "not a creds file").unwrap();
    let mut s = NatsSink::new(&c, "n").unwrap();
    let e = s.send(&lines("n", 1..=1)).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{e}");
    assert!(e.message.contains("credentials_file"), "{e}");
}
