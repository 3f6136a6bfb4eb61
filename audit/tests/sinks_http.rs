//! The HTTP sink against a real loopback HTTP/1.1 server (hyper), plain and TLS.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use waping_audit::config::{HttpFormat, HttpSinkConfig};
use waping_audit::sinks::http::{HttpSink, MAX_RETRY_AFTER};
use waping_audit::{Line, Sink, SinkErrorKind};

const NODE: &str = "node-a";

/// Test CA (EC P-256, valid 2000–2100) that signed [`LEAF_PEM`].
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBcDCCARegAwIBAgIBATAKBggqhkjOPQQDAjAfMR0wGwYDVQQDDBR3YXBpbmct
YXVkaXQgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
HzEdMBsGA1UEAwwUd2FwaW5nLWF1ZGl0IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAASsYjDrstmpv3nNgaU6zxZzum+G04POr7tgAjADgeZQf8QQhncw
ArAkLzPaOMqwsSN5sw2j/obykAkXgSFQqLFTo0IwQDAPBgNVHRMBAf8EBTADAQH/
MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUKe6AxMepfFpMv20vxX45S9bt2zow
CgYIKoZIzj0EAwIDRwAwRAIgEYqKUcjggQh/zuZm70fmnsmyX8R62kXML1SdgA19
n2ICICH/fmliYOyasQMvuAOBL+4T6rE3yQNRgf0PlRTDwcsM
-----END CERTIFICATE-----
";

/// Server certificate for `localhost` and 127.0.0.1, valid 2000–2100.
const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBuDCCAV2gAwIBAgIBAjAKBggqhkjOPQQDAjAfMR0wGwYDVQQDDBR3YXBpbmct
YXVkaXQgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
FDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
EEDbuRWmy/8v6c59CMhBmUOlmHRuV6pka7oEx0iERkoWUyHy6KEKaNpHzilGggwm
nowPdRiaXcrz7ia5UcPf6KOBkjCBjzAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB/wQE
AwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzARgglsb2NhbGhvc3SH
BH8AAAEwHQYDVR0OBBYEFCdkZ+wRinQ4gGRZJh68qQSKv2FOMB8GA1UdIwQYMBaA
FCnugMTHqXxaTL9tL8V+OUvW7ds6MAoGCCqGSM49BAMCA0kAMEYCIQCm7ciWjzHP
GW1iLyauHtQSV9w3TH6GCJQZGx1TipG9hAIhAJUTEbkjewR827NWmT9/lIMJ23sX
56Gn63Xmb9fkyLD+
-----END CERTIFICATE-----
";

/// The key of [`LEAF_PEM`] (test only).
const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkCXil0PU55OGrxix
Ai6u1P+LQ4JGapWzxFnDO3hKkq6hRANCAAQQQNu5FabL/y/pzn0IyEGZQ6WYdG5X
qmRrugTHSIRGShZTIfLooQpo2kfOKUaCDCaejA91GJpdyvPuJrlRw9/o
-----END PRIVATE KEY-----
";

/// What the server answers to one request.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// A loopback HTTP/1.1 server answering from a queue of replies (then 200), recording
/// every request and counting connections.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        Server::start_with(None).await
    }

    async fn start_tls() -> Server {
        let certs: Vec<_> = rustls_pemfile::certs(&mut LEAF_PEM.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut LEAF_KEY_PEM.as_bytes())
            .unwrap()
            .unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        Server::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, r, c) = (seen.clone(), replies.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, r, tls) = (s.clone(), r.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (s, r) = (s.clone(), r.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            s.lock().unwrap().push(Seen {
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let reply = r.lock().unwrap().pop_front().unwrap_or(Reply::status(200));
                            let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                            *resp.status_mut() = reply.status.try_into().unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Server {
            addr,
            seen,
            replies,
            connections,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn reply(&self, r: Reply) {
        self.replies.lock().unwrap().push_back(r);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Record lines `seqs` of node [`NODE`], each padded with `pad` bytes.
fn lines(seqs: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<Line> {
    seqs.map(|seq| Line {
        seq,
        bytes: Bytes::from(format!(
            r#"{{"v":1,"node":"{NODE}","seq":{seq},"action":"key.create","pad":"{}"}}"#,
            "x".repeat(pad)
        )),
    })
    .collect()
}

fn cfg(url: String) -> HttpSinkConfig {
    HttpSinkConfig {
        url,
        timeout_ms: 5_000,
        ..Default::default()
    }
}

/// The `seq` of every record in NDJSON bodies, in arrival order.
fn seqs_of_ndjson(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .flat_map(|s| {
            s.body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn ndjson_body_token_and_dedupe_headers() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  s3cret-token\n").unwrap();
    let mut c = cfg(server.url("/ingest?source=audit"));
    c.name = Some("siem".into());
    c.bearer_token_file = Some(token_file);
    c.headers = BTreeMap::from([("X-Tenant".to_string(), "ops".to_string())]);
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    assert_eq!(sink.name(), "siem");
    assert_eq!(sink.resume().await.unwrap(), None);
    assert!(!format!("{sink:?}").contains("s3cret"));

    let batch = lines(7..=9, 3);
    sink.send(&batch).await.unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/ingest?source=audit");
    let mut expected = Vec::new();
    for l in &batch {
        expected.extend_from_slice(&l.bytes);
        expected.push(b'\n');
    }
    assert_eq!(s.body, expected);
    assert_eq!(s.header("content-type"), "application/x-ndjson");
    assert_eq!(s.header("authorization"), "Bearer s3cret-token");
    assert_eq!(s.header("x-tenant"), "ops");
    assert_eq!(s.header("x-audit-node"), NODE);
    assert_eq!(s.header("x-audit-first-seq"), "7");
    assert_eq!(s.header("x-audit-last-seq"), "9");
    assert_eq!(s.header("host"), server.addr.to_string());
    assert_eq!(
        s.header("user-agent"),
        format!("waping-gateway-audit/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn json_array_body_is_the_lines_as_an_array() {
    let server = Server::start().await;
    let mut c = cfg(server.url("/"));
    c.format = HttpFormat::JsonArray;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let batch = lines(1..=3, 0);
    sink.send(&batch).await.unwrap();
    let seen = server.seen();
    let joined: Vec<&[u8]> = batch.iter().map(|l| &l.bytes[..]).collect();
    let expected = [&b"["[..], &joined.join(&b","[..]), b"]"].concat();
    assert_eq!(seen[0].body, expected);
    assert_eq!(seen[0].header("content-type"), "application/json");
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[2]["seq"], 3);
}

#[tokio::test]
async fn elasticsearch_bulk_body_has_create_actions_with_node_seq_ids() {
    let server = Server::start().await;
    let mut c = cfg(server.url("/_bulk"));
    c.format = HttpFormat::ElasticsearchBulk;
    c.index = Some("audit-\"x\"".into());
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    server.reply(Reply::status(200).body(r#"{"took":3,"errors":false,"items":[]}"#));
    let batch = lines(41..=42, 0);
    sink.send(&batch).await.unwrap();
    let seen = server.seen();
    let expected = format!(
        "{{\"create\":{{\"_index\":\"audit-\\\"x\\\"\",\"_id\":\"{NODE}-41\"}}}}\n{}\n{{\"create\":{{\"_index\":\"audit-\\\"x\\\"\",\"_id\":\"{NODE}-42\"}}}}\n{}\n",
        std::str::from_utf8(&batch[0].bytes).unwrap(),
        std::str::from_utf8(&batch[1].bytes).unwrap()
    );
    assert_eq!(std::str::from_utf8(&seen[0].body).unwrap(), expected);
    assert_eq!(seen[0].header("content-type"), "application/x-ndjson");
    // Every other line is valid JSON (ES parses it line by line).
    for l in seen[0].body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(l).unwrap();
    }

    // Without an index the action carries the id alone.
    let mut c = cfg(server.url("/audit/_bulk"));
    c.format = HttpFormat::ElasticsearchBulk;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    server.reply(Reply::status(200).body(r#"{"errors":false,"items":[]}"#));
    sink.send(&lines(5..=5, 0)).await.unwrap();
    let body = server.seen()[1].body.clone();
    assert!(
        body.starts_with(format!("{{\"create\":{{\"_id\":\"{NODE}-5\"}}}}\n").as_bytes()),
        "{body:?}"
    );
}

#[tokio::test]
async fn elasticsearch_bulk_conflicts_are_delivered_other_item_errors_fail() {
    let server = Server::start().await;
    let mut c = cfg(server.url("/_bulk"));
    c.format = HttpFormat::ElasticsearchBulk;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let batch = lines(1..=2, 0);

    server.reply(Reply::status(200).body(
        r#"{"took":1,"errors":true,"items":[{"create":{"_id":"node-a-1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[node-a-1]: version conflict"}}},{"create":{"_id":"node-a-2","status":201}}]}"#,
    ));
    sink.send(&batch).await.unwrap();

    server.reply(Reply::status(200).body(
        r#"{"took":1,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":500,"error":{"type":"illegal_state_exception","reason":"pad xxx"}}}]}"#,
    ));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Rejected);
    assert!(
        e.message.contains("1 of 2") && e.message.contains("illegal_state_exception"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("pad"), "{}", e.message);

    // A 2xx answer that is not a bulk response cannot confirm anything.
    server.reply(Reply::status(200).body("<html>ok</html>"));
    assert_eq!(sink.send(&batch).await.unwrap_err().kind, SinkErrorKind::Rejected);
}

#[tokio::test]
async fn busy_answers_carry_retry_after() {
    let server = Server::start().await;
    let mut sink = HttpSink::new(&cfg(server.url("/")), NODE).unwrap();
    let batch = lines(1..=1, 0);

    server.reply(Reply::status(503).header("retry-after", "17"));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Rejected);
    assert_eq!(e.retry_after, Some(Duration::from_secs(17)));

    // An HTTP-date far ahead is capped at an hour.
    server.reply(Reply::status(429).header("retry-after", "Fri, 01 Jan 2100 00:00:00 GMT"));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Rejected);
    assert_eq!(e.retry_after, Some(MAX_RETRY_AFTER));

    server.reply(Reply::status(502));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!((e.kind, e.retry_after), (SinkErrorKind::Rejected, None));

    // Retry-After only counts on the busy statuses.
    server.reply(Reply::status(500).header("retry-after", "17"));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!((e.kind, e.retry_after), (SinkErrorKind::Rejected, None));

    server.reply(Reply::status(400));
    assert_eq!(sink.send(&batch).await.unwrap_err().kind, SinkErrorKind::Rejected);

    // And the same connection still delivers afterwards.
    sink.send(&batch).await.unwrap();
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refusals_of_the_configuration_are_misconfigured_without_secrets() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-XYZ").unwrap();
    let mut c = cfg(server.url("/path?key=query-secret"));
    c.bearer_token_file = Some(token_file);
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let batch = lines(1..=1, 0);
    for status in [401, 403, 404, 405] {
        server.reply(Reply::status(status).body("record echoed: pad"));
        let e = sink.send(&batch).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{status}");
        assert!(e.message.contains(&status.to_string()), "{}", e.message);
        for secret in ["tok-XYZ", "query-secret", "key.create", "pad"] {
            assert!(!e.message.contains(secret), "{secret} in {}", e.message);
        }
    }
}

#[tokio::test]
async fn payload_too_large_halves_the_request_size() {
    let server = Server::start().await;
    let mut c = cfg(server.url("/"));
    c.max_batch_records = 8;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let batch = lines(1..=8, 10);

    server.reply(Reply::status(413));
    let e = sink.send(&batch).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Misconfigured);
    assert_eq!(sink.batch_limits().0, 4);

    // The retry of the same batch goes as two requests of four, in order.
    sink.send(&batch).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].header("x-audit-first-seq"), "1");
    assert_eq!(seen[1].header("x-audit-last-seq"), "4");
    assert_eq!(seen[2].header("x-audit-first-seq"), "5");
    assert_eq!(seen[2].header("x-audit-last-seq"), "8");
    assert_eq!(seqs_of_ndjson(&seen[1..]), (1..=8).collect::<Vec<_>>());

    // A single record refused as too large cannot be split further; the limits stay.
    server.reply(Reply::status(413));
    let e = sink.send(&batch[..1]).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Misconfigured);
    assert!(e.message.contains("single record"), "{}", e.message);
    assert_eq!(sink.batch_limits().0, 4);
}

#[tokio::test]
async fn batches_split_by_records_and_bytes_in_order() {
    let server = Server::start().await;
    let mut c = cfg(server.url("/"));
    c.max_batch_records = 3;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    sink.send(&lines(1..=10, 0)).await.unwrap();
    let seen = server.seen();
    let ranges: Vec<(String, String)> = seen
        .iter()
        .map(|s| {
            (
                s.header("x-audit-first-seq").into(),
                s.header("x-audit-last-seq").into(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [(1, 3), (4, 6), (7, 9), (10, 10)]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(ranges, expect);
    assert_eq!(seqs_of_ndjson(&seen), (1..=10).collect::<Vec<_>>());

    // By bytes: lines of ~400 bytes under a 1 KiB limit go two per request, and a line
    // larger than the limit goes alone.
    let server = Server::start().await;
    let mut c = cfg(server.url("/"));
    c.max_batch_bytes = 1024;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let mut batch = lines(1..=5, 330);
    batch.extend(lines(6..=6, 3000));
    batch.extend(lines(7..=8, 330));
    sink.send(&batch).await.unwrap();
    let seen = server.seen();
    let counts: Vec<usize> = seen
        .iter()
        .map(|s| seqs_of_ndjson(std::slice::from_ref(s)).len())
        .collect();
    assert_eq!(counts, vec![2, 2, 1, 1, 2]);
    for s in &seen {
        assert!(s.body.len() <= 1024 || seqs_of_ndjson(std::slice::from_ref(s)).len() == 1);
    }
    assert_eq!(seqs_of_ndjson(&seen), (1..=8).collect::<Vec<_>>());
    // All of it over one kept-alive connection.
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_closed_by_the_server_is_replaced() {
    let server = Server::start().await;
    let mut sink = HttpSink::new(&cfg(server.url("/")), NODE).unwrap();
    server.reply(Reply::status(200).header("connection", "close"));
    sink.send(&lines(1..=1, 0)).await.unwrap();
    sink.send(&lines(2..=2, 0)).await.unwrap();
    assert_eq!(seqs_of_ndjson(&server.seen()), vec![1, 2]);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_or_silent_server_is_unavailable() {
    // Nothing listens on a port just released.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut sink = HttpSink::new(&cfg(format!("http://{addr}/")), NODE).unwrap();
    let e = sink.send(&lines(1..=1, 0)).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");

    // A server that accepts and never answers: the request times out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = cfg(format!("http://{addr}/"));
    c.timeout_ms = 200;
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    let e = sink.send(&lines(1..=1, 0)).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("did not answer"), "{}", e.message);
    hold.abort();
}

#[tokio::test]
async fn https_with_a_configured_ca() {
    let server = Server::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, CA_PEM).unwrap();
    let port = server.addr.port();

    let mut c = cfg(format!("https://localhost:{port}/in"));
    c.ca_file = Some(ca.clone());
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    sink.send(&lines(1..=2, 0)).await.unwrap();
    let mut c = cfg(format!("https://127.0.0.1:{port}/in"));
    c.ca_file = Some(ca);
    let mut sink = HttpSink::new(&c, NODE).unwrap();
    sink.send(&lines(3..=3, 0)).await.unwrap();
    assert_eq!(seqs_of_ndjson(&server.seen()), vec![1, 2, 3]);

    // With the built-in web roots the test CA is unknown: a TLS failure is Unavailable.
    let mut sink = HttpSink::new(&cfg(format!("https://localhost:{port}/in")), NODE).unwrap();
    let e = sink.send(&lines(4..=4, 0)).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("TLS"), "{}", e.message);
}

#[tokio::test]
async fn construction_checks_files_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg("http://127.0.0.1:9/".into());
    c.bearer_token_file = Some(dir.path().join("missing"));
    assert_eq!(HttpSink::new(&c, NODE).unwrap_err().kind, SinkErrorKind::Local);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    c.bearer_token_file = Some(empty);
    assert_eq!(
        HttpSink::new(&c, NODE).unwrap_err().kind,
        SinkErrorKind::Misconfigured
    );

    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut c = cfg("https://127.0.0.1:9/".into());
    c.ca_file = Some(not_pem);
    assert_eq!(
        HttpSink::new(&c, NODE).unwrap_err().kind,
        SinkErrorKind::Misconfigured
    );

    for url in ["ftp://h/", "", "http://user:pw@h/"] {
        let e = HttpSink::new(&cfg(url.into()), NODE).unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{url}");
        assert!(!e.message.contains("pw"), "{}", e.message);
    }
}
