//! The delivery client against real loopback HTTP/1.1 servers (hyper), plain and TLS,
//! with the SSRF guard in front as the gateway uses it.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use waping_webhooks::{
    AddrClass, ConnPool, DEFAULT_TOLERANCE, DeliveryError, DeliveryRequest, EndpointUrl, MAX_RESPONSE_BODY,
    Policy, Secret, Signer, SsrfError, Stage, TlsClient, Verdict, classify_status, deliver, deliver_pooled,
    resolve_and_check, verify,
};

/// The signing time of every request here; verification uses the same clock.
const TS: u64 = 1_700_000_000;
const BODY: &str = r#"{"type":"message.received","data":{"from":"+15550100","text":"héllo"}}"#;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Bytes,
    /// The TLS server name the client sent (SNI), for TLS connections.
    sni: Option<String>,
}

/// A loopback server answering by path:
/// `/slow` never answers; `/busy` 503 + `Retry-After: 120`; `/limited` 429 with an
/// HTTP-date; `/moved` 301 to `/ok`; `/huge` 1 MiB; `/exact` exactly the body cap;
/// `/gone` 410; anything else 204.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(path: &str, port: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    let set = |r: &mut Response<Full<Bytes>>, status: u16| *r.status_mut() = status.try_into().unwrap();
    match path {
        "/busy" => {
            set(&mut r, 503);
            r.headers_mut().insert("retry-after", "120".parse().unwrap());
            *r.body_mut() = Full::new(Bytes::from_static(b"maintenance"));
        }
        "/limited" => {
            set(&mut r, 429);
            // Long past: parses, and means "no extra wait".
            r.headers_mut()
                .insert("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        }
        "/moved" => {
            set(&mut r, 301);
            r.headers_mut()
                .insert("location", format!("http://127.0.0.1:{port}/ok").parse().unwrap());
        }
        "/huge" => {
            set(&mut r, 200);
            *r.body_mut() = Full::new(Bytes::from(vec![b'x'; 1 << 20]));
        }
        "/exact" => {
            set(&mut r, 200);
            *r.body_mut() = Full::new(Bytes::from(vec![b'y'; MAX_RESPONSE_BODY]));
        }
        "/gone" => set(&mut r, 410),
        _ => set(&mut r, 204),
    }
    r
}

impl Server {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    let serve = |sni: Option<String>| {
                        service_fn(move |req: Request<Incoming>| {
                            let (s, sni) = (s.clone(), sni.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let path = parts.uri.path().to_owned();
                                s.lock().unwrap().push(Seen {
                                    method: parts.method.to_string(),
                                    target: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                    sni,
                                });
                                if path == "/slow" {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, Infallible>(respond(&path, addr.port()))
                            }
                        })
                    };
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), serve(None)).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let sni = stream.get_ref().1.server_name().map(str::to_owned);
                                let _ = http.serve_connection(TokioIo::new(stream), serve(sni)).await;
                            }
                        }
                    }
                });
            }
        });
        Server { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.target.starts_with(path)).count()
    }
}

/// A test CA and a server certificate it signed for `localhost` only (so an IP-literal
/// URL must fail the name check).
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "waping-webhooks test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    Pki {
        _dir: dir,
        ca_file,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

/// Loopback allowed (tests only), http allowed.
fn test_policy() -> Policy {
    Policy {
        allow_http: true,
        allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
    }
}

fn secret() -> Secret {
    Secret::from_bytes(&[0x5a; 32]).unwrap()
}

fn request(url: &str) -> DeliveryRequest {
    let url = EndpointUrl::parse(url, &test_policy()).unwrap();
    let headers = Signer::single(secret())
        .sign("msg_01HZXTESTID", TS, BODY.as_bytes())
        .unwrap();
    DeliveryRequest {
        url,
        headers,
        body: Bytes::from_static(BODY.as_bytes()),
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn plain_http_delivery_carries_signed_headers() {
    let server = Server::start(None).await;
    let req = request(&format!(
        "http://127.0.0.1:{}/hook/wa?tenant=7",
        server.addr.port()
    ));
    let addrs = resolve_and_check(&req.url, &test_policy()).await.unwrap();
    assert_eq!(addrs, vec![server.addr]);
    let tls = TlsClient::new().unwrap();
    let resp = deliver(&req, &addrs, &tls, TIMEOUT).await.unwrap();
    assert_eq!(resp.status, 204);
    assert_eq!(classify_status(resp.status), Verdict::Delivered);
    assert_eq!(resp.peer, server.addr);
    assert!(resp.body.is_empty() && !resp.body_truncated);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.target, "/hook/wa?tenant=7");
    assert_eq!(s.body, BODY.as_bytes());
    let h = |name: &str| s.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(
        h("user-agent"),
        format!("waping-gateway/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(h("host"), format!("127.0.0.1:{}", server.addr.port()));
    assert_eq!(h("content-length"), BODY.len().to_string());
    assert_eq!(h("webhook-id"), "msg_01HZXTESTID");
    assert_eq!(h("webhook-timestamp"), TS.to_string());
    assert!(h("webhook-signature").starts_with("v1,"));
    // What arrived verifies with the endpoint's secret, and only with it.
    assert_eq!(
        verify(&secret(), &s.headers, &s.body, TS, DEFAULT_TOLERANCE),
        Ok(())
    );
    let other = Secret::from_bytes(&[0x5b; 32]).unwrap();
    assert!(verify(&other, &s.headers, &s.body, TS, DEFAULT_TOLERANCE).is_err());
}

#[tokio::test]
async fn https_delivery_uses_sni_and_the_extra_ca() {
    let pki = pki();
    let server = Server::start(Some(pki.acceptor.clone())).await;
    // `localhost` resolves to 127.0.0.1 and maybe ::1; the server listens on 127.0.0.1
    // only, so ::1 (if first) is refused and the client moves on.
    let req = request(&format!("https://localhost:{}/tls", server.addr.port()));
    let addrs = resolve_and_check(&req.url, &test_policy()).await.unwrap();
    assert!(addrs.contains(&server.addr), "{addrs:?}");
    let tls = TlsClient::with_extra_ca(&pki.ca_file).unwrap();
    let resp = deliver(&req, &addrs, &tls, TIMEOUT).await.unwrap();
    assert_eq!((resp.status, resp.peer), (204, server.addr));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    assert_eq!(
        seen[0].headers["host"],
        format!("localhost:{}", server.addr.port()).as_str()
    );
    assert_eq!(
        verify(&secret(), &seen[0].headers, &seen[0].body, TS, DEFAULT_TOLERANCE),
        Ok(())
    );
}

#[tokio::test]
async fn https_fails_without_the_ca_or_with_the_wrong_name() {
    let pki = pki();
    let server = Server::start(Some(pki.acceptor.clone())).await;
    let port = server.addr.port();

    // The web roots alone do not know the test CA.
    let req = request(&format!("https://localhost:{port}/tls"));
    let e = deliver(&req, &[server.addr], &TlsClient::new().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Tls { .. }), "{e:?}");
    assert!(e.is_retryable() && e.verdict() == Verdict::Retry);

    // The certificate names localhost, not 127.0.0.1.
    let tls = TlsClient::with_extra_ca(&pki.ca_file).unwrap();
    let req = request(&format!("https://127.0.0.1:{port}/tls"));
    let e = deliver(&req, &[server.addr], &tls, TIMEOUT).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(server.seen().is_empty(), "no request got through");
}

#[tokio::test]
async fn redirects_are_answers_not_followed() {
    let server = Server::start(None).await;
    let req = request(&format!("http://127.0.0.1:{}/moved", server.addr.port()));
    let resp = deliver(&req, &[server.addr], &TlsClient::new().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(resp.status, 301);
    assert_eq!(classify_status(resp.status), Verdict::Permanent);
    assert_eq!(
        resp.location.as_deref(),
        Some(format!("http://127.0.0.1:{}/ok", server.addr.port()).as_str())
    );
    assert_eq!(server.hits("/moved"), 1);
    assert_eq!(server.hits("/ok"), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_silent_server_hits_the_timeout() {
    let server = Server::start(None).await;
    let req = request(&format!("http://127.0.0.1:{}/slow", server.addr.port()));
    let e = deliver(
        &req,
        &[server.addr],
        &TlsClient::new().unwrap(),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    match &e {
        DeliveryError::Timeout { stage, after, .. } => {
            assert_eq!(*stage, Stage::Response);
            assert_eq!(*after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.verdict(), Verdict::Retry);
    assert_eq!(server.hits("/slow"), 1, "the request itself was sent");
}

#[tokio::test]
async fn a_server_that_never_speaks_tls_hits_the_timeout_in_the_handshake() {
    // Accepts TCP and then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let req = request(&format!("https://localhost:{}/", addr.port()));
    let e = deliver(
        &req,
        &[addr],
        &TlsClient::new().unwrap(),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            DeliveryError::Timeout {
                stage: Stage::Tls,
                ..
            }
        ),
        "{e:?}"
    );
    hold.abort();
}

#[tokio::test]
async fn retry_after_is_parsed_from_seconds_and_dates() {
    let server = Server::start(None).await;
    let tls = TlsClient::new().unwrap();
    let port = server.addr.port();
    let resp = deliver(
        &request(&format!("http://127.0.0.1:{port}/busy")),
        &[server.addr],
        &tls,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(classify_status(503), Verdict::SlowDown);
    assert_eq!(resp.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(resp.body, "maintenance");
    let resp = deliver(
        &request(&format!("http://127.0.0.1:{port}/limited")),
        &[server.addr],
        &tls,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.retry_after, Some(Duration::ZERO));
    let resp = deliver(
        &request(&format!("http://127.0.0.1:{port}/gone")),
        &[server.addr],
        &tls,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!((resp.status, resp.retry_after), (410, None));
    assert_eq!(classify_status(resp.status), Verdict::DisableEndpoint);
}

#[tokio::test]
async fn response_bodies_are_cut_at_the_cap() {
    let server = Server::start(None).await;
    let tls = TlsClient::new().unwrap();
    let port = server.addr.port();
    let resp = deliver(
        &request(&format!("http://127.0.0.1:{port}/huge")),
        &[server.addr],
        &tls,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), MAX_RESPONSE_BODY);
    assert!(resp.body_truncated);
    let resp = deliver(
        &request(&format!("http://127.0.0.1:{port}/exact")),
        &[server.addr],
        &tls,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(resp.body.len(), MAX_RESPONSE_BODY);
    assert!(!resp.body_truncated, "a body of exactly the cap is whole");
}

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn connect_moves_to_the_next_address_and_reports_all_failures() {
    let server = Server::start(None).await;
    let dead = closed_port().await;
    let tls = TlsClient::new().unwrap();
    let req = request(&format!("http://127.0.0.1:{}/ok", server.addr.port()));
    let resp = deliver(&req, &[dead, server.addr], &tls, TIMEOUT).await.unwrap();
    assert_eq!((resp.status, resp.peer), (204, server.addr));

    let dead2 = closed_port().await;
    let e = deliver(&req, &[dead, dead2], &tls, TIMEOUT).await.unwrap_err();
    match &e {
        DeliveryError::Connect { failures, .. } => {
            let tried: Vec<SocketAddr> = failures.iter().map(|f| f.0).collect();
            assert_eq!(tried, vec![dead, dead2]);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_retryable());
    let e = deliver(&req, &[], &tls, TIMEOUT).await.unwrap_err();
    assert!(matches!(e, DeliveryError::NoAddress) && !e.is_retryable());
}

#[tokio::test]
async fn localhost_is_refused_without_the_allow_list() {
    let server = Server::start(None).await;
    let policy = Policy {
        allow_http: true,
        allow: Vec::new(),
    };
    for url in [
        format!("http://localhost:{}/ok", server.addr.port()),
        format!("http://127.0.0.1:{}/ok", server.addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/ok", server.addr.port()),
    ] {
        let url = EndpointUrl::parse(&url, &policy).unwrap();
        match resolve_and_check(&url, &policy).await {
            Err(
                e @ SsrfError::Forbidden {
                    class: AddrClass::Loopback,
                    ..
                },
            ) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("allow-list"), "{e}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_body_cut_by_the_deadline_keeps_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Headers and the start of a 100-byte body, then silence.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = Vec::new();
        while !got.windows(BODY.len()).any(|w| w == BODY.as_bytes()) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before sending the body");
            got.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 100\r\n\r\nqueued as ")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    let req = request(&format!("http://127.0.0.1:{}/", addr.port()));
    let resp = deliver(
        &req,
        &[addr],
        &TlsClient::new().unwrap(),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 202);
    assert_eq!(classify_status(resp.status), Verdict::Delivered);
    assert_eq!(resp.body, "queued as ");
    assert!(resp.body_truncated);
    server.abort();
}

/// Accepted TCP connections of a plain server that answers 204, keeps connections alive,
/// and closes each after `requests_per_conn` requests (0: never).
async fn counting_server(
    requests_per_conn: usize,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, JoinHandle<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let svc = service_fn(move |req: Request<Incoming>| {
                    let served = served.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = 204u16.try_into().unwrap();
                        if requests_per_conn > 0 && n >= requests_per_conn {
                            r.headers_mut().insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, conns, task)
}

#[tokio::test]
async fn a_pool_reuses_one_connection_and_only_to_checked_addresses() {
    use std::sync::atomic::Ordering;
    let (addr, conns, task) = counting_server(0).await;
    let req = request(&format!("http://127.0.0.1:{}/hook", addr.port()));
    let addrs = resolve_and_check(&req.url, &test_policy()).await.unwrap();
    let tls = TlsClient::new().unwrap();
    let pool = ConnPool::default();
    for _ in 0..5 {
        let r = deliver_pooled(&req, &addrs, &tls, TIMEOUT, &pool).await.unwrap();
        assert_eq!(r.status, 204);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "five requests, one connection");
    assert_eq!(pool.idle(), 1);
    // The same endpoint, but this attempt's check approved another address only: the idle
    // connection is not used for it.
    let other: SocketAddr = "127.0.0.2:9".parse().unwrap();
    assert!(
        deliver_pooled(&req, &[other], &tls, Duration::from_secs(2), &pool)
            .await
            .is_err()
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    // Without a pool: a connection per request.
    for _ in 0..3 {
        deliver(&req, &addrs, &tls, TIMEOUT).await.unwrap();
    }
    assert_eq!(conns.load(Ordering::SeqCst), 4);
    task.abort();
}

#[tokio::test]
async fn a_connection_the_server_closes_is_not_reused_and_nothing_fails() {
    use std::sync::atomic::Ordering;
    // The server says `Connection: close` on every second request of a connection.
    let (addr, conns, task) = counting_server(2).await;
    let req = request(&format!("http://127.0.0.1:{}/hook", addr.port()));
    let addrs = resolve_and_check(&req.url, &test_policy()).await.unwrap();
    let tls = TlsClient::new().unwrap();
    let pool = ConnPool::default();
    for i in 0..6 {
        let r = deliver_pooled(&req, &addrs, &tls, TIMEOUT, &pool).await;
        assert_eq!(r.unwrap().status, 204, "request {i}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "two requests per connection");
    task.abort();
}
