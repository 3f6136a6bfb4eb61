//! HTTP batch sink: POSTs batches of record lines to one endpoint (Vector `http_server`,
//! Loki via Vector, Elasticsearch/OpenSearch `_bulk`, any receiver of NDJSON or JSON arrays).
//!
//! One keep-alive HTTP/1.1 connection (hyper's low-level client over tokio, rustls for
//! `https://`), reopened after any error. Every request carries `X-Audit-Node`,
//! `X-Audit-First-Seq` and `X-Audit-Last-Seq` so a receiver can drop a resent batch by
//! node + seq; the Elasticsearch format gives each document the `_id` `<node>-<seq>` and
//! treats "already exists" (409) as delivered, which makes resends harmless there.
//!
//! Failures are only classified here; the shipping loop retries with backoff.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::config::{HttpFormat, HttpSinkConfig};
use crate::sink::{Line, Sink, SinkError, SinkErrorKind};

/// Longest `Retry-After` honoured: a receiver asking for more is still retried hourly, so a
/// typo on its side cannot park the sink for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Most response-body bytes read for a `_bulk` answer. Elasticsearch answers with roughly
/// 200 bytes per item, so this covers the largest batch (100 000 records) with room to spare.
const MAX_BULK_RESPONSE_BYTES: usize = 64 << 20;

/// Most response-body bytes read (and discarded) for the other formats. A larger body is
/// not read: the connection is dropped instead, the request's status still counts.
const MAX_PLAIN_RESPONSE_BYTES: usize = 64 << 10;

/// Smallest body-size limit a 413 answer can push the sink down to; below it every
/// request holds a single record anyway.
const MIN_BATCH_BYTES: u64 = 1024;

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("waping-gateway-audit/", env!("CARGO_PKG_VERSION"));

/// Where the batches go, split out of the configured URL.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    /// Host name or IP address (IPv6 without brackets) for the TCP connection and SNI.
    host: String,
    port: u16,
    /// `Host` header value (`host[:port]` as configured).
    authority: HeaderValue,
    /// Request target in origin form (`/path?query`).
    path: String,
    /// `scheme://authority` for error messages (never the path or query, which may hold
    /// a receiver's token).
    display: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, SinkError> {
        let bad = |why: &str| SinkError::new(SinkErrorKind::Misconfigured, format!("url: {why}"));
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("not a valid http:// or https:// URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; use bearer_token_file or headers",
            ));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Target {
            https,
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|_| bad("invalid host"))?,
            path,
            display: format!(
                "{}://{}",
                if https { "https" } else { "http" },
                authority.as_str()
            ),
        })
    }
}

/// The open keep-alive connection: the request handle and the task driving its I/O.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping the handle alone leaves the driver waiting for the server to close.
        self.driver.abort();
    }
}

/// A sink POSTing batches to an HTTP endpoint. See the module documentation.
pub struct HttpSink {
    name: String,
    node: String,
    target: Target,
    format: HttpFormat,
    /// `"_index":<json string>,` or empty, for `_bulk` action lines.
    index_field: String,
    /// The node name escaped for a JSON string (valid names need none; this is for the
    /// sink's own safety, not the config's).
    node_json: String,
    /// Headers every request carries (configured ones, then ours, which win).
    headers: HeaderMap,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    /// Records per request, lowered by 413 answers.
    limit_records: usize,
    /// Body bytes per request, lowered by 413 answers.
    limit_bytes: u64,
    conn: Option<Conn>,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers are left out: one of them is the bearer token.
        f.debug_struct("HttpSink")
            .field("name", &self.name)
            .field("node", &self.node)
            .field("target", &self.target.display)
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .field("limit_records", &self.limit_records)
            .field("limit_bytes", &self.limit_bytes)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl HttpSink {
    /// A sink for `cfg` shipping the records of `node`. Reads the bearer token and CA
    /// files now (errors: [`SinkErrorKind::Local`] if unreadable,
    /// [`SinkErrorKind::Misconfigured`] if unusable); connects on the first `send`.
    pub fn new(cfg: &HttpSinkConfig, node: &str) -> Result<HttpSink, SinkError> {
        let target = Target::parse(&cfg.url)?;
        let misconfigured = |m: String| SinkError::new(SinkErrorKind::Misconfigured, m);

        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| misconfigured(format!("headers: {k:?} is not a valid header name")))?;
            // The value is not quoted: someone may have put a secret there after all.
            let value = HeaderValue::from_str(v).map_err(|_| {
                misconfigured(format!("headers: the value of {k:?} is not a valid header value"))
            })?;
            headers.insert(name, value);
        }
        if let Some(path) = &cfg.bearer_token_file {
            let raw = std::fs::read_to_string(path).map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Local,
                    format!("reading bearer_token_file {}: {e}", path.display()),
                )
            })?;
            let token = raw.trim();
            if token.is_empty() {
                return Err(misconfigured(format!(
                    "bearer_token_file {} is empty",
                    path.display()
                )));
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                misconfigured(format!(
                    "bearer_token_file {} holds bytes not allowed in a header",
                    path.display()
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(match cfg.format {
                HttpFormat::JsonArray => "application/json",
                HttpFormat::Ndjson | HttpFormat::ElasticsearchBulk => "application/x-ndjson",
            }),
        );
        headers.insert(
            HeaderName::from_static("x-audit-node"),
            HeaderValue::from_str(node)
                .map_err(|_| misconfigured(format!("node name {node:?} is not a valid header value")))?,
        );
        headers.insert(header::HOST, target.authority.clone());

        let tls = if target.https {
            let config = tls_config(cfg)?;
            let server_name = ServerName::try_from(target.host.clone()).map_err(|_| {
                misconfigured(format!("url: {:?} is not a valid TLS server name", target.host))
            })?;
            Some((TlsConnector::from(Arc::new(config)), server_name))
        } else {
            if cfg.ca_file.is_some() {
                return Err(misconfigured(
                    "ca_file is set but the url is http://; use https:// or remove ca_file".into(),
                ));
            }
            None
        };

        let index_field = match &cfg.index {
            Some(i) => format!("\"_index\":\"{}\",", json_string_body(i)),
            None => String::new(),
        };

        Ok(HttpSink {
            name: cfg.name.clone().unwrap_or_else(|| "http".into()),
            node: node.to_owned(),
            target,
            format: cfg.format,
            index_field,
            node_json: json_string_body(node),
            headers,
            tls,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            limit_records: usize::try_from(cfg.max_batch_records.max(1)).unwrap_or(usize::MAX),
            limit_bytes: cfg.max_batch_bytes.max(1),
            conn: None,
        })
    }

    /// The current per-request limits (records, body bytes): the configured ones, or lower
    /// after the endpoint answered 413. They stay lowered for the life of the sink (a
    /// receiver's body limit rarely grows back; a restart restores the configured ones).
    pub fn batch_limits(&self) -> (usize, u64) {
        (self.limit_records, self.limit_bytes)
    }

    /// The `_bulk` action line for `seq`, without its newline.
    fn es_action(&self, seq: u64) -> String {
        format!(
            "{{\"create\":{{{}\"_id\":\"{}-{}\"}}}}",
            self.index_field, self.node_json, seq
        )
    }

    /// Bytes `line` adds to a request body, and what the body costs without lines.
    fn body_cost(&self, line: &Line) -> u64 {
        let n = line.bytes.len() as u64;
        match self.format {
            HttpFormat::Ndjson => n + 1,
            // The comma or the closing bracket.
            HttpFormat::JsonArray => n + 1,
            HttpFormat::ElasticsearchBulk => self.es_action(line.seq).len() as u64 + 1 + n + 1,
        }
    }

    fn body_base(&self) -> u64 {
        match self.format {
            HttpFormat::JsonArray => 1,
            _ => 0,
        }
    }

    /// Splits `batch` into consecutive request-sized ranges, in order. A line larger than
    /// the byte limit on its own forms a request alone.
    fn split(&self, batch: &[Line]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut bytes = self.body_base();
        for (i, line) in batch.iter().enumerate() {
            let cost = self.body_cost(line);
            if i > start && (i - start >= self.limit_records || bytes + cost > self.limit_bytes) {
                out.push(start..i);
                start = i;
                bytes = self.body_base();
            }
            bytes += cost;
        }
        if start < batch.len() {
            out.push(start..batch.len());
        }
        out
    }

    /// The request body for `lines` in the configured format.
    fn body(&self, lines: &[Line]) -> Bytes {
        let size = self.body_base() + lines.iter().map(|l| self.body_cost(l)).sum::<u64>();
        let mut b = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        match self.format {
            HttpFormat::Ndjson => {
                for l in lines {
                    b.put_slice(&l.bytes);
                    b.put_u8(b'\n');
                }
            }
            HttpFormat::JsonArray => {
                b.put_u8(b'[');
                for (i, l) in lines.iter().enumerate() {
                    if i > 0 {
                        b.put_u8(b',');
                    }
                    b.put_slice(&l.bytes);
                }
                b.put_u8(b']');
            }
            HttpFormat::ElasticsearchBulk => {
                for l in lines {
                    b.put_slice(self.es_action(l.seq).as_bytes());
                    b.put_u8(b'\n');
                    b.put_slice(&l.bytes);
                    b.put_u8(b'\n');
                }
            }
        }
        b.freeze()
    }

    fn request(&self, body: &Bytes, first: u64, last: u64) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        // Origin form; the path was a valid URI part, so this cannot fail.
        *req.uri_mut() = self.target.path.parse().unwrap_or_else(|_| Uri::from_static("/"));
        let h = req.headers_mut();
        h.clone_from(&self.headers);
        h.insert("x-audit-first-seq", HeaderValue::from(first));
        h.insert("x-audit-last-seq", HeaderValue::from(last));
        req
    }

    /// Opens a new connection (TCP, then TLS for `https://`, then the HTTP/1.1 handshake).
    async fn connect(&self) -> Result<Conn, SinkError> {
        let unavailable = |what: &str, e: &dyn fmt::Display| {
            SinkError::new(
                SinkErrorKind::Unavailable,
                format!("{what} {}: {e}", self.target.display),
            )
        };
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| unavailable("connecting to", &e))?;
        // Requests are written whole; Nagle would only add a round trip of delay.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, server_name)) => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| unavailable("TLS handshake with", &e))?;
                handshake(tls).await
            }
        }
        .map_err(|e| unavailable("HTTP handshake with", &e))
    }

    /// Sends one request over the kept connection (opening one if needed) and reads the
    /// whole answer. A kept connection the server closed while idle is replaced once.
    async fn round_trip(
        &mut self,
        body: &Bytes,
        first: u64,
        last: u64,
    ) -> Result<(StatusCode, HeaderMap, Result<Bytes, ()>), SinkError> {
        loop {
            let (mut conn, fresh) = match self.conn.take() {
                Some(c) if !c.sender.is_closed() => (c, false),
                _ => (self.connect().await?, true),
            };
            if let Err(e) = conn.sender.ready().await {
                if fresh {
                    return Err(hyper_error(&self.target, &e));
                }
                continue;
            }
            let resp = match conn.sender.send_request(self.request(body, first, last)).await {
                Ok(r) => r,
                // The server closed the idle connection as we reused it; the request may or
                // may not have arrived, which the receiver's dedupe by node + seq covers.
                Err(e) if !fresh && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    continue;
                }
                Err(e) => return Err(hyper_error(&self.target, &e)),
            };
            let status = resp.status();
            let limit = if self.format == HttpFormat::ElasticsearchBulk && status.is_success() {
                MAX_BULK_RESPONSE_BYTES
            } else {
                MAX_PLAIN_RESPONSE_BYTES
            };
            let (parts, body) = resp.into_parts();
            let read = Limited::new(body, limit).collect().await;
            let body = match read {
                Ok(c) => {
                    self.conn = Some(conn);
                    Ok(c.to_bytes())
                }
                // Unread or half-read: the connection cannot carry another request.
                Err(_) => Err(()),
            };
            return Ok((status, parts.headers, body));
        }
    }

    /// Delivers one request-sized slice of the batch.
    async fn post(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Ok(());
        };
        let body = self.body(lines);
        let timed = tokio::time::timeout(self.timeout, self.round_trip(&body, first.seq, last.seq)).await;
        let (status, headers, resp_body) = match timed {
            Ok(r) => r?,
            Err(_) => {
                self.conn = None;
                return Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!(
                        "{} did not answer within {} ms",
                        self.target.display,
                        self.timeout.as_millis()
                    ),
                ));
            }
        };
        if status.is_success() {
            if self.format != HttpFormat::ElasticsearchBulk {
                return Ok(());
            }
            let Ok(resp_body) = resp_body else {
                return Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!(
                        "{}: the _bulk response could not be read (larger than {} bytes, or the connection broke)",
                        self.target.display, MAX_BULK_RESPONSE_BYTES
                    ),
                ));
            };
            return check_bulk(&resp_body, lines.len())
                .map_err(|(kind, m)| SinkError::new(kind, format!("{}: {m}", self.target.display)));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let was = (self.limit_records, self.limit_bytes);
            // A lone record cannot be split; lowering the limits for it would only make
            // every later request smaller.
            if lines.len() > 1 {
                self.limit_records = (lines.len() / 2).max(1);
                self.limit_bytes = (body.len() as u64 / 2).max(MIN_BATCH_BYTES);
            }
            let message = if lines.len() == 1 {
                format!(
                    "{} answered 413 Payload Too Large to a single record of {} bytes; raise the receiver's body limit",
                    self.target.display,
                    body.len()
                )
            } else {
                format!(
                    "{} answered 413 Payload Too Large to {} records in {} bytes; requests now carry at most {} records and {} bytes (were {} and {}); raise the receiver's body limit or lower max_batch_records/max_batch_bytes",
                    self.target.display,
                    lines.len(),
                    body.len(),
                    self.limit_records,
                    self.limit_bytes,
                    was.0,
                    was.1
                )
            };
            return Err(SinkError::new(SinkErrorKind::Misconfigured, message));
        }
        let mut err = SinkError::new(
            status_kind(status),
            format!("{} answered {status}", self.target.display),
        );
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            err.retry_after = headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
        }
        Err(err)
    }
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// An HTTP endpoint cannot be asked what it holds; receivers dedupe by node + seq.
    async fn resume(&mut self) -> Result<Option<u64>, SinkError> {
        Ok(None)
    }

    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError> {
        for range in self.split(batch) {
            self.post(&batch[range]).await?;
        }
        Ok(())
    }
}

/// `s` as a JSON string without its quotes.
fn json_string_body(s: &str) -> String {
    let quoted = serde_json::Value::from(s).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Performs the HTTP/1.1 handshake on `io` and spawns the connection's driver.
async fn handshake<T>(io: T) -> Result<Conn, hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        // Its errors surface on the next request through `sender`.
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

fn hyper_error(target: &Target, e: &hyper::Error) -> SinkError {
    let kind = if e.is_parse() || e.is_parse_status() {
        SinkErrorKind::Rejected
    } else {
        SinkErrorKind::Unavailable
    };
    SinkError::new(kind, format!("{}: {e}", target.display))
}

/// How a non-2xx status is classified (413 is handled by the caller).
fn status_kind(status: StatusCode) -> SinkErrorKind {
    match status.as_u16() {
        401 | 403 | 404 | 405 | 413 => SinkErrorKind::Misconfigured,
        // Redirects are not followed: the URL should name the endpoint itself.
        300..=399 => SinkErrorKind::Misconfigured,
        _ => SinkErrorKind::Rejected,
    }
}

/// The rustls client configuration: the ring provider, the CA bundle of `cfg.ca_file` or
/// the built-in web roots, HTTP/1.1 by ALPN.
fn tls_config(cfg: &HttpSinkConfig) -> Result<rustls::ClientConfig, SinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Local,
                    format!("reading ca_file {}: {e}", path.display()),
                )
            })?;
            let bad = |why: String| {
                SinkError::new(
                    SinkErrorKind::Misconfigured,
                    format!("ca_file {}: {why}", path.display()),
                )
            };
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| bad(format!("invalid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("unusable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| SinkError::new(SinkErrorKind::Local, format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Checks an Elasticsearch `_bulk` answer for `expected` `create` actions: items that
/// failed with anything but 409 (the document exists: a resend) fail the batch. A 429 item
/// makes the whole failure `Rejected` (the cluster is pushing back); otherwise any 4xx item
/// means `Misconfigured` (a mapping or index the operator must fix), and 5xx `Rejected`.
fn check_bulk(body: &[u8], expected: usize) -> Result<(), (SinkErrorKind, String)> {
    #[derive(serde::Deserialize)]
    struct Bulk {
        errors: bool,
        #[serde(default)]
        items: Vec<std::collections::BTreeMap<String, Item>>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        status: u16,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let bulk: Bulk = serde_json::from_slice(body).map_err(|e| {
        (
            SinkErrorKind::Rejected,
            format!("answered 2xx with a body that is not a _bulk response ({e})"),
        )
    })?;
    if !bulk.errors {
        return Ok(());
    }
    if bulk.items.len() != expected {
        return Err((
            SinkErrorKind::Rejected,
            format!(
                "_bulk response has {} items for {expected} documents",
                bulk.items.len()
            ),
        ));
    }
    let mut failed = 0usize;
    let mut first: Option<(u16, String)> = None;
    let mut throttled = false;
    let mut server_side = false;
    for item in bulk.items.iter().flat_map(|m| m.values()) {
        if (200..300).contains(&item.status) || item.status == 409 {
            continue;
        }
        failed += 1;
        throttled |= item.status == 429;
        server_side |= item.status >= 500;
        if first.is_none() {
            // Only the error type: the reason may quote the document.
            let ty = item
                .error
                .as_ref()
                .and_then(|e| e.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("unknown")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                .take(64)
                .collect();
            first = Some((item.status, ty));
        }
    }
    let Some((status, ty)) = first else {
        return Ok(());
    };
    let kind = if throttled || server_side {
        SinkErrorKind::Rejected
    } else {
        SinkErrorKind::Misconfigured
    };
    Err((
        kind,
        format!("_bulk refused {failed} of {expected} documents (first: {status} {ty})"),
    ))
}

/// The delay a `Retry-After` value asks for, at `now`: delta-seconds or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), capped at [`MAX_RETRY_AFTER`]. `None` for a value
/// that cannot be parsed, is zero or lies in the past: the loop's own backoff applies then,
/// so a receiver cannot make it spin.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64: far beyond the cap.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_imf_fixdate(value)?;
        let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        Duration::from_secs(u64::try_from(at).ok()?.checked_sub(now)?)
    };
    (!delay.is_zero()).then(|| delay.min(MAX_RETRY_AFTER))
}

/// Unix seconds of an IMF-fixdate (RFC 9110 §5.6.7), the only date form senders may
/// generate; the obsolete forms are not accepted.
fn parse_imf_fixdate(s: &str) -> Option<i64> {
    let mut it = s.split_ascii_whitespace();
    let (_dow, day, month, year, hms, gmt) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    if it.next().is_some() || gmt != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|&x| x == month)?;
    let month = time::Month::try_from(u8::try_from(m + 1).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let mut t = hms.split(':');
    let (h, mi, se) = (t.next()?, t.next()?, t.next()?);
    if t.next().is_some() || h.len() != 2 || mi.len() != 2 || se.len() != 2 {
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

    #[test]
    fn retry_after_seconds_dates_and_caps() {
        // 1994-11-06T08:49:37Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), None);
        assert_eq!(parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now), None);
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        let t = Target::parse("https://logs.example:8443/ingest?token=x").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("logs.example", 8443));
        assert_eq!(t.path, "/ingest?token=x");
        assert_eq!(t.display, "https://logs.example:8443");
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        assert_eq!(t.authority, "[::1]");
        let t = Target::parse("http://h").unwrap();
        assert_eq!(t.path, "/");
        for bad in ["ftp://h/", "h/x", "http://u:p@h/", ""] {
            let e = Target::parse(bad).unwrap_err();
            assert_eq!(e.kind, SinkErrorKind::Misconfigured, "{bad:?}");
            assert!(!e.message.contains("u:p"), "{}", e.message);
        }
    }

    #[test]
    fn bulk_answers_are_judged_per_item() {
        assert_eq!(check_bulk(br#"{"took":1,"errors":false,"items":[]}"#, 2), Ok(()));
        let ok_with_dup = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"secret"}}}]}"#;
        assert_eq!(check_bulk(ok_with_dup, 2), Ok(()));
        let mapping = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"the record text"}}}]}"#;
        let (kind, m) = check_bulk(mapping, 2).unwrap_err();
        assert_eq!(kind, SinkErrorKind::Misconfigured);
        assert!(
            m.contains("mapper_parsing_exception") && !m.contains("record text"),
            "{m}"
        );
        let busy = br#"{"errors":true,"items":[{"create":{"status":429}},{"create":{"status":400}}]}"#;
        assert_eq!(check_bulk(busy, 2).unwrap_err().0, SinkErrorKind::Rejected);
        let short = br#"{"errors":true,"items":[{"create":{"status":500}}]}"#;
        assert_eq!(check_bulk(short, 2).unwrap_err().0, SinkErrorKind::Rejected);
        assert_eq!(check_bulk(b"<html>", 1).unwrap_err().0, SinkErrorKind::Rejected);
    }
}
