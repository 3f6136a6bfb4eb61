//! One webhook delivery: a single HTTP/1.1 POST to pre-checked addresses.
//!
//! [`deliver`] opens a fresh connection per request: nothing outlives the attempt.
//! [`deliver_pooled`] reuses an idle keep-alive connection of the endpoint's [`ConnPool`],
//! but only one opened to an address that the caller's check for this very attempt
//! ([`crate::resolve_and_check`]) approved again, and only for the same scheme and
//! authority; so the SSRF guarantee is the same, and a TLS handshake is not paid per event.
//! Redirects are never followed (a 3xx is just the answer), so a receiver cannot bounce the
//! gateway to an address nobody checked.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::schedule::Verdict;

/// The sending half of one HTTP/1.1 connection.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
use crate::sign::SignedHeaders;
use crate::ssrf::{EndpointUrl, Host};

/// Most response-body bytes kept: the body is only for showing the endpoint owner what
/// their server said; more is not read (the connection is closed instead).
pub const MAX_RESPONSE_BODY: usize = 64 << 10;

/// Longest `Location` value kept from a 3xx answer (for telling the owner where their
/// endpoint moved); longer values are cut.
pub const MAX_LOCATION_LEN: usize = 2048;

/// A suggested per-attempt timeout: Standard Webhooks recommends 15 to 30 s, enough for a
/// receiver to process before answering; the lower end keeps slow endpoints from holding
/// workers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Least time a connect attempt to one address gets when several remain, so one address
/// that swallows SYNs does not use up the whole timeout (Go's dialer does the same).
const MIN_CONNECT_SHARE: Duration = Duration::from_secs(2);

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("waping-gateway/", env!("CARGO_PKG_VERSION"));

/// Why the TLS client could not be set up: the operator's configuration (the CA file) or,
/// for [`TlsSetupError::Rustls`], the build; retrying does not help.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read.
    #[error("reading webhook CA file {path}: {source}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file is not usable PEM.
    #[error("webhook CA file {path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client setup: {0}")]
    Rustls(String),
}

/// The TLS side of deliveries: rustls with the ring provider, the Mozilla roots of
/// `webpki-roots` (not the system store: the same trust everywhere the binary runs), and
/// optionally extra CAs. Cheap to clone; build one and share it.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    extra_ca: Option<PathBuf>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("roots", &"webpki-roots")
            .field("extra_ca", &self.extra_ca)
            .finish()
    }
}

impl TlsClient {
    /// A client trusting the built-in web roots only.
    pub fn new() -> Result<TlsClient, TlsSetupError> {
        TlsClient::build(
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            None,
        )
    }

    /// A client trusting the web roots and every certificate in the PEM file at `path`
    /// (a private CA for internal receivers, or a test CA).
    pub fn with_extra_ca(path: &Path) -> Result<TlsClient, TlsSetupError> {
        let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadCa {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| TlsSetupError::BadCa {
            path: path.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| bad(format!("invalid PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("holds no PEM certificate".into()));
        }
        TlsClient::build(roots, Some(path.to_owned()))
    }

    fn build(roots: rustls::RootCertStore, extra_ca: Option<PathBuf>) -> Result<TlsClient, TlsSetupError> {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            extra_ca,
        })
    }
}

/// What to send: the checked URL, the signed headers of this attempt, the exact body that
/// was signed.
#[derive(Debug, Clone)]
pub struct DeliveryRequest {
    /// Where (the origin is shown in errors; the path never is).
    pub url: EndpointUrl,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    pub headers: SignedHeaders,
    /// The JSON payload, byte for byte as signed.
    pub body: Bytes,
}

/// What the endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryResponse {
    /// The HTTP status (classify it with [`crate::classify_status`]).
    pub status: u16,
    /// `Retry-After`, as a delay from when the answer arrived (past dates give zero).
    pub retry_after: Option<Duration>,
    /// `Location` of a 3xx (cut at [`MAX_LOCATION_LEN`]): not followed, but worth telling
    /// the endpoint owner.
    pub location: Option<String>,
    /// Start of the response body, at most [`MAX_RESPONSE_BODY`] bytes, for diagnostics.
    pub body: Bytes,
    /// Whether [`DeliveryResponse::body`] is not the whole body (too long, cut by the
    /// timeout, or the connection broke while reading it). The status counts either way.
    pub body_truncated: bool,
    /// The address that answered.
    pub peer: SocketAddr,
}

/// Where in the exchange a timeout struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    Tls,
    /// Sending the request and waiting for the response headers.
    Response,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::Tls => "during the TLS handshake",
            Stage::Response => "waiting for the response",
        })
    }
}

/// Why a delivery got no HTTP answer. Network-side failures are the endpoint's (down,
/// unreachable, a broken certificate, too slow) and are retried; the two caller-side
/// variants are bugs and are not.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No address to connect to (the caller must pass what `resolve_and_check` returned).
    #[error("no address to deliver to (caller bug: pass the addresses resolve_and_check returned)")]
    NoAddress,
    /// The request could not be built (a header value); our bug.
    #[error("building the webhook request: {0} (gateway bug; not retried)")]
    InvalidRequest(String),
    /// Every address refused or dropped the connection attempt.
    #[error("could not connect to {origin}: {}; the endpoint is down or unreachable; retried", join_failures(.failures))]
    Connect {
        /// The endpoint's origin.
        origin: String,
        /// Each address tried and what happened.
        failures: Vec<(SocketAddr, String)>,
    },
    /// The TLS handshake failed (certificate not trusted, expired, wrong name, no common
    /// protocol).
    #[error(
        "TLS handshake with {origin} ({peer}) failed: {source}; the endpoint's certificate or TLS setup must be fixed; retried"
    )]
    Tls {
        /// The endpoint's origin.
        origin: String,
        /// The address connected to.
        peer: SocketAddr,
        /// rustls' reason, wrapped in an I/O error.
        source: std::io::Error,
    },
    /// The HTTP exchange broke (connection reset, malformed response).
    #[error("HTTP exchange with {origin} ({peer}) failed: {source}; retried")]
    Http {
        /// The endpoint's origin.
        origin: String,
        /// The address connected to.
        peer: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The whole attempt did not get response headers within the timeout.
    #[error("{origin} did not answer within {} ms (timed out {stage}); retried", .after.as_millis())]
    Timeout {
        /// The endpoint's origin.
        origin: String,
        /// Where it was stuck.
        stage: Stage,
        /// The timeout applied.
        after: Duration,
    },
}

fn join_failures(failures: &[(SocketAddr, String)]) -> String {
    failures
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl DeliveryError {
    /// Whether another attempt later may succeed: all endpoint-side failures.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, DeliveryError::NoAddress | DeliveryError::InvalidRequest(_))
    }

    /// The schedule's view: endpoint-side failures are [`Verdict::Retry`], our own bugs
    /// [`Verdict::Permanent`].
    pub fn verdict(&self) -> Verdict {
        if self.is_retryable() {
            Verdict::Retry
        } else {
            Verdict::Permanent
        }
    }
}

/// The connection task, aborted when the delivery ends (an abandoned exchange must not
/// keep a socket open).
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// POSTs `req` to the first of `addrs` that accepts a connection (in order; the next on
/// connect failure), over TLS with SNI and certificate check for the URL's host when the
/// URL is https. `timeout` bounds everything up to the response headers; the body (at most
/// [`MAX_RESPONSE_BODY`] bytes) is read until the same deadline and kept as far as it got.
///
/// `addrs` must be what [`crate::resolve_and_check`] returned for `req.url`: nothing here
/// resolves or checks addresses.
pub async fn deliver(
    req: &DeliveryRequest,
    addrs: &[SocketAddr],
    tls: &TlsClient,
    timeout: Duration,
) -> Result<DeliveryResponse, DeliveryError> {
    if addrs.is_empty() {
        return Err(DeliveryError::NoAddress);
    }
    let deadline = Instant::now() + timeout;
    let (resp, peer, driver, _sender) = fresh_exchange(req, false, addrs, tls, deadline, timeout).await?;
    let answer = finish(resp, peer, deadline, None).await;
    drop(driver);
    Ok(answer)
}

/// Idle keep-alive connections of one endpoint, for [`deliver_pooled`].
///
/// Default bounds: 64 idle connections, each reused for at most 30 s after its last answer
/// (receivers commonly close idle connections after 5–60 s; an old one is more likely to be
/// closed under us than useful).
pub struct ConnPool {
    idle: std::sync::Mutex<Vec<Idle>>,
    max_idle: usize,
    max_idle_age: Duration,
}

struct Idle {
    origin: String,
    peer: SocketAddr,
    sender: Sender,
    /// Runs the connection; dropping it (with the idle entry) closes the connection.
    _driver: Driver,
    since: Instant,
}

impl fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle.lock().map(|v| v.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl Default for ConnPool {
    fn default() -> Self {
        ConnPool::new(64, Duration::from_secs(30))
    }
}

impl ConnPool {
    /// A pool keeping at most `max_idle` connections, each for at most `max_idle_age`.
    pub fn new(max_idle: usize, max_idle_age: Duration) -> ConnPool {
        ConnPool {
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle,
            max_idle_age,
        }
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Drops every idle connection (the endpoint's URL or addresses changed).
    pub fn clear(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
    }

    fn take(&self, origin: &str, addrs: &[SocketAddr]) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.max_idle_age);
        let i = idle
            .iter()
            .rposition(|c| c.origin == origin && addrs.contains(&c.peer) && c.sender.is_ready())?;
        Some(idle.swap_remove(i))
    }

    fn put(&self, c: Idle) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(c);
        }
    }
}

/// Like [`deliver`], over an idle connection of `pool` when one to an address in `addrs`
/// is there, else over a fresh one that goes back to the pool after a complete answer the
/// server did not mark `Connection: close`. A reused connection the server had closed
/// (the request may or may not have reached it) is retried once on a fresh connection:
/// webhooks are delivered at least once and receivers deduplicate on `webhook-id`.
pub async fn deliver_pooled(
    req: &DeliveryRequest,
    addrs: &[SocketAddr],
    tls: &TlsClient,
    timeout: Duration,
    pool: &ConnPool,
) -> Result<DeliveryResponse, DeliveryError> {
    if addrs.is_empty() {
        return Err(DeliveryError::NoAddress);
    }
    let origin = req.url.to_string();
    let key = pool_key(&req.url);
    let deadline = Instant::now() + timeout;
    if let Some(mut c) = pool.take(&key, addrs) {
        let request = build_request_with(req, true)?;
        let sent = tokio::time::timeout_at(deadline, c.sender.send_request(request)).await;
        match sent {
            Ok(Ok(resp)) => {
                let peer = c.peer;
                return Ok(finish(resp, peer, deadline, Some((pool, key, c))).await);
            }
            // Closed under us: try a fresh connection below.
            Ok(Err(e)) if e.is_closed() || e.is_canceled() || e.is_incomplete_message() => {}
            Ok(Err(source)) => {
                return Err(DeliveryError::Http {
                    origin,
                    peer: c.peer,
                    source,
                });
            }
            Err(_) => {
                return Err(DeliveryError::Timeout {
                    origin,
                    stage: Stage::Response,
                    after: timeout,
                });
            }
        }
    }
    let (resp, peer, driver, sender) = fresh_exchange(req, true, addrs, tls, deadline, timeout).await?;
    let c = Idle {
        origin: key.clone(),
        peer,
        sender,
        _driver: driver,
        since: Instant::now(),
    };
    Ok(finish(resp, peer, deadline, Some((pool, key, c))).await)
}

/// A connection opened for this request, up to the response headers under `deadline` as
/// one unit; the body is read after, separately, so a deadline striking mid-body cuts the
/// body instead of discarding an answer that already arrived.
async fn fresh_exchange(
    req: &DeliveryRequest,
    keep_alive: bool,
    addrs: &[SocketAddr],
    tls: &TlsClient,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Response<Incoming>, SocketAddr, Driver, Sender), DeliveryError> {
    let request = build_request_with(req, keep_alive)?;
    let server_name = server_name_of(req)?;
    let origin = req.url.to_string();
    let mut stage = Stage::Connect;
    let exchanged = tokio::time::timeout_at(
        deadline,
        exchange(request, addrs, tls, server_name, &origin, deadline, &mut stage),
    )
    .await;
    match exchanged {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Timeout {
            origin,
            stage,
            after: timeout,
        }),
    }
}

/// Scheme and authority: what a pooled connection may be reused for.
fn pool_key(url: &EndpointUrl) -> String {
    format!(
        "{}://{}",
        if url.is_https() { "https" } else { "http" },
        url.authority()
    )
}

fn server_name_of(req: &DeliveryRequest) -> Result<Option<ServerName<'static>>, DeliveryError> {
    if !req.url.is_https() {
        return Ok(None);
    }
    Ok(Some(match req.url.host() {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(n) => ServerName::try_from(n.clone())
            .map_err(|_| DeliveryError::InvalidRequest(format!("{n:?} is not a valid TLS server name")))?,
    }))
}

/// Reads the answer; with a pool, the connection goes back when it can carry another request.
async fn finish(
    resp: Response<Incoming>,
    peer: SocketAddr,
    deadline: Instant,
    pooled: Option<(&ConnPool, String, Idle)>,
) -> DeliveryResponse {
    let answered_at = SystemTime::now();
    let status = resp.status().as_u16();
    let headers = resp.headers();
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, answered_at));
    let location = headers.get(header::LOCATION).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(MAX_LOCATION_LEN)
            .collect()
    });
    let closing = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
    let (body, body_truncated) = read_capped(resp.into_body(), deadline).await;
    if let Some((pool, _key, mut c)) = pooled
        && !closing
        && !body_truncated
    {
        c.since = Instant::now();
        pool.put(c);
    }
    DeliveryResponse {
        status,
        retry_after,
        location,
        body,
        body_truncated,
        peer,
    }
}

fn build_request_with(
    req: &DeliveryRequest,
    keep_alive: bool,
) -> Result<Request<Full<Bytes>>, DeliveryError> {
    let bad = |what: &str| DeliveryError::InvalidRequest(what.to_owned());
    let mut r = Request::new(Full::new(req.body.clone()));
    *r.method_mut() = Method::POST;
    *r.uri_mut() = req
        .url
        .path_and_query()
        .parse()
        .map_err(|_| bad("the URL path is not a valid request target"))?;
    let h = r.headers_mut();
    h.insert(
        header::HOST,
        HeaderValue::from_str(req.url.authority())
            .map_err(|_| bad("the URL host is not a valid Host header"))?,
    );
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    // Without a pool, one request per connection (see the module docs): say so, so the
    // server does not hold the socket for a keep-alive that never comes.
    if !keep_alive {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for (k, v) in req.headers.pairs() {
        h.insert(k, v);
    }
    Ok(r)
}

async fn exchange(
    request: Request<Full<Bytes>>,
    addrs: &[SocketAddr],
    tls: &TlsClient,
    server_name: Option<ServerName<'static>>,
    origin: &str,
    deadline: Instant,
    stage: &mut Stage,
) -> Result<(Response<Incoming>, SocketAddr, Driver, Sender), DeliveryError> {
    *stage = Stage::Connect;
    let (tcp, peer) = connect(addrs, origin, deadline).await?;
    match server_name {
        Some(name) => {
            *stage = Stage::Tls;
            let stream = tls
                .connector
                .connect(name, tcp)
                .await
                .map_err(|source| DeliveryError::Tls {
                    origin: origin.to_owned(),
                    peer,
                    source,
                })?;
            *stage = Stage::Response;
            http_round_trip(stream, request, origin, peer).await
        }
        None => {
            *stage = Stage::Response;
            http_round_trip(tcp, request, origin, peer).await
        }
    }
}

/// Connects to the first address that accepts, giving each a share of the remaining time.
async fn connect(
    addrs: &[SocketAddr],
    origin: &str,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), DeliveryError> {
    let mut failures = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let share = (remaining / left).max(MIN_CONNECT_SHARE.min(remaining));
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                // Small request, one write: no reason to wait for Nagle.
                let _ = tcp.set_nodelay(true);
                return Ok((tcp, addr));
            }
            Ok(Err(e)) => {
                tracing::debug!(%origin, %addr, error = %e, "webhook connect failed");
                failures.push((addr, e.to_string()));
            }
            Err(_) => {
                tracing::debug!(%origin, %addr, "webhook connect timed out");
                failures.push((addr, format!("no answer within {} ms", share.as_millis())));
            }
        }
    }
    Err(DeliveryError::Connect {
        origin: origin.to_owned(),
        failures,
    })
}

/// Sends the request and waits for the response headers; the returned driver keeps the
/// connection alive while the body is read.
async fn http_round_trip<T>(
    io: T,
    request: Request<Full<Bytes>>,
    origin: &str,
    peer: SocketAddr,
) -> Result<(Response<Incoming>, SocketAddr, Driver, Sender), DeliveryError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |source| DeliveryError::Http {
        origin: origin.to_owned(),
        peer,
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_err)?;
    let driver = Driver(tokio::spawn(async move {
        // Its errors surface through `send_request` or the body.
        let _ = connection.await;
    }));
    let resp = sender.send_request(request).await.map_err(http_err)?;
    Ok((resp, peer, driver, sender))
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of `body` until `deadline`; returns them and
/// whether anything was left unread.
async fn read_capped(mut body: Incoming, deadline: Instant) -> (Bytes, bool) {
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => return (buf.freeze(), false),
            // Timed out or broke: what arrived is still worth showing.
            Ok(Some(Err(_))) | Err(_) => return (buf.freeze(), true),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = MAX_RESPONSE_BODY - buf.len();
        if data.len() > room {
            buf.extend_from_slice(&data[..room]);
            return (buf.freeze(), true);
        }
        buf.extend_from_slice(&data);
        if buf.len() == MAX_RESPONSE_BODY {
            // Full: the body is truncated unless it ends exactly here, which costs one more
            // (bounded by the deadline) look to tell.
            let more = tokio::time::timeout_at(deadline, body.frame()).await;
            let ended = matches!(more, Ok(None));
            return (buf.freeze(), !ended);
        }
    }
}

/// The delay a `Retry-After` value asks for, seen at `now`: delta-seconds, or an HTTP-date
/// in any of the three forms recipients must accept (RFC 9110 §5.6.7: IMF-fixdate, RFC 850,
/// asctime). Dates in the past and `0` give zero; values beyond `u64` seconds saturate.
/// `None` for anything else. No cap here: the schedule caps (see
/// [`crate::Schedule::max_retry_after`]).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let now_secs = i64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    let at = parse_http_date(value, now_secs)?;
    Some(Duration::from_secs(u64::try_from(at - now_secs).unwrap_or(0)))
}

/// Unix seconds of an HTTP-date; `now` resolves RFC 850's two-digit years.
fn parse_http_date(s: &str, now: i64) -> Option<i64> {
    let t: Vec<&str> = s.split_ascii_whitespace().collect();
    let (day, month, year, hms) = match t.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [dow, d, m, y, hms, "GMT"] if dow.ends_with(',') && d.len() == 2 && y.len() == 4 => {
            (*d, *m, y.parse::<i32>().ok()?, *hms)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [dow, dmy, hms, "GMT"] if dow.ends_with(',') => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?);
            if p.next().is_some() || d.len() != 2 || y.len() != 2 {
                return None;
            }
            let yy: i32 = y.parse().ok()?;
            let this_year = time::OffsetDateTime::from_unix_timestamp(now).ok()?.year();
            // RFC 9110: a year more than 50 years ahead is the most recent past one.
            let mut year = this_year - this_year.rem_euclid(100) + yy;
            if year > this_year + 50 {
                year -= 100;
            }
            (d, m, year, *hms)
        }
        // Sun Nov  6 08:49:37 1994
        [_dow, m, d, hms, y] if (1..=2).contains(&d.len()) && y.len() == 4 => {
            (*d, *m, y.parse::<i32>().ok()?, *hms)
        }
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|&x| x == month)?;
    let month = time::Month::try_from(u8::try_from(m + 1).ok()?).ok()?;
    if !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let date = time::Date::from_calendar_date(year, month, day.parse().ok()?).ok()?;
    let mut p = hms.split(':');
    let (h, mi, se) = (p.next()?, p.next()?, p.next()?);
    if p.next().is_some()
        || [h, mi, se]
            .iter()
            .any(|x| x.len() != 2 || !x.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let time = time::Time::from_hms(h.parse().ok()?, mi.parse().ok()?, se.parse().ok()?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1994-11-06T08:49:37Z, the RFC's example instant.
    fn rfc_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = rfc_now();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("999999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-5", "1.5", "+5", "5s", "soon"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_all_three_date_forms() {
        let now = rfc_now();
        let in_30s = Some(Duration::from_secs(30));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), in_30s);
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:50:07 GMT", now), in_30s);
        assert_eq!(parse_retry_after("Sun Nov  6 08:50:07 1994", now), in_30s);
        assert_eq!(parse_retry_after("Sun Nov 06 08:50:07 1994", now), in_30s);
        // Now and the past: no wait beyond the schedule's own.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(86_400))
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun, 06 Nov 1994 08:49:60 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc850_two_digit_years_pick_the_nearest_sensible_century() {
        // At 2030-01-01: "79" is 2079 (49 years ahead), "81" is 1981 (2081 would be 51).
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        let at = |s: &str| parse_http_date(s, 1_893_456_000);
        assert_eq!(at("Sunday, 01-Jan-79 00:00:00 GMT"), Some(midnight(2079, 1, 1)));
        assert_eq!(at("Thursday, 01-Jan-81 00:00:00 GMT"), Some(midnight(1981, 1, 1)));
        assert_eq!(
            parse_retry_after("Thursday, 01-Jan-81 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    /// Unix seconds of midnight UTC on a date.
    fn midnight(y: i32, m: u8, d: u8) -> i64 {
        time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d)
            .unwrap()
            .midnight()
            .assume_utc()
            .unix_timestamp()
    }

    #[test]
    fn delivery_errors_say_whether_to_retry() {
        let origin = "https://h".to_string();
        let peer: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let retryable = [
            DeliveryError::Connect {
                origin: origin.clone(),
                failures: vec![(peer, "connection refused".into())],
            },
            DeliveryError::Tls {
                origin: origin.clone(),
                peer,
                source: std::io::Error::other("invalid peer certificate"),
            },
            DeliveryError::Timeout {
                origin: origin.clone(),
                stage: Stage::Response,
                after: Duration::from_secs(15),
            },
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e}");
            assert_eq!(e.verdict(), Verdict::Retry);
            assert!(e.to_string().contains("retried"), "{e}");
        }
        for e in [
            DeliveryError::NoAddress,
            DeliveryError::InvalidRequest("x".into()),
        ] {
            assert!(!e.is_retryable());
            assert_eq!(e.verdict(), Verdict::Permanent);
        }
        let msg = retryable[0].to_string();
        assert!(msg.contains("192.0.2.1:443: connection refused"), "{msg}");
    }

    #[test]
    fn tls_client_refuses_unusable_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            TlsClient::with_extra_ca(&missing),
            Err(TlsSetupError::ReadCa { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TlsClient::with_extra_ca(&empty).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        assert!(TlsClient::new().is_ok());
    }
}
