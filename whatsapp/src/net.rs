//! Transport and HTTP for whatsapp-rust: asynchronous, shared name resolution, a
//! node-wide connect pacer, TLS with compiled-in roots, WebSocket framing.
//!
//! Why hand-written: the crate's tokio transport dials with `TcpStream::connect(host)`
//! (tokio's `lookup_host` runs getaddrinfo on the blocking pool, once per client and
//! attempt), and its default HTTP client is blocking ureq on the blocking pool. Here
//! one [`Resolver`] per node resolves each host once per TTL (single flight), so 1000
//! clients connecting cost one lookup, and nothing else touches the blocking pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};
use whatsapp_rust::anyhow::{self, Context as _, anyhow};
use whatsapp_rust::async_channel;
use whatsapp_rust::transport::{DisconnectReason, Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::net::{HttpClient, HttpRequest, HttpResponse};

/// Hosts remembered by one resolver; more than WhatsApp uses (chat + a few CDNs).
const MAX_CACHED_HOSTS: usize = 64;

/// Cached addresses of one `(host, port)` and when they were resolved.
type DnsEntries = HashMap<(String, u16), (Instant, Arc<[SocketAddr]>)>;

/// Sans-IO cache of resolved addresses, time passed in.
#[derive(Debug)]
pub(crate) struct DnsCache {
    ttl: Duration,
    entries: DnsEntries,
}

impl DnsCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.max(Duration::from_secs(1)),
            entries: HashMap::new(),
        }
    }

    /// The cached addresses of `host:port` if resolved less than a TTL before `now`.
    pub(crate) fn get(&self, host: &str, port: u16, now: Instant) -> Option<Arc<[SocketAddr]>> {
        let (at, addrs) = self.entries.get(&(host.to_owned(), port))?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| addrs.clone())
    }

    /// Remembers `addrs` for `host:port` as of `now`, evicting the oldest entry when full.
    pub(crate) fn put(&mut self, host: &str, port: u16, addrs: Arc<[SocketAddr]>, now: Instant) {
        if self.entries.len() >= MAX_CACHED_HOSTS
            && !self.entries.contains_key(&(host.to_owned(), port))
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert((host.to_owned(), port), (now, addrs));
    }
}

/// Shared resolver of a node: static addresses for the chat host if configured, else
/// one lookup per host per TTL, concurrent callers waiting on the same lookup.
#[derive(Debug)]
pub(crate) struct Resolver {
    static_host: Option<(String, Arc<[SocketAddr]>)>,
    cache: Mutex<DnsCache>,
    /// Single flight: at most one lookup at a time per node (lookups are rare).
    inflight: tokio::sync::Mutex<()>,
    lookups: std::sync::atomic::AtomicU64,
}

impl Resolver {
    pub(crate) fn new(ttl: Duration, static_host: Option<(String, Vec<SocketAddr>)>) -> Self {
        Self {
            static_host: static_host
                .filter(|(_, a)| !a.is_empty())
                .map(|(h, a)| (h, a.into())),
            cache: Mutex::new(DnsCache::new(ttl)),
            inflight: tokio::sync::Mutex::new(()),
            lookups: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Number of real lookups done (for tests and metrics).
    pub(crate) fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cached(&self, host: &str, port: u16) -> Option<Arc<[SocketAddr]>> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host, port, Instant::now())
    }

    pub(crate) async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Arc<[SocketAddr]>> {
        if let Some((h, addrs)) = &self.static_host
            && h == host
        {
            return Ok(addrs.clone());
        }
        if let Ok(ip) = host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
        {
            return Ok(Arc::from([SocketAddr::new(ip, port)]));
        }
        if let Some(a) = self.cached(host, port) {
            return Ok(a);
        }
        let _flight = self.inflight.lock().await;
        if let Some(a) = self.cached(host, port) {
            return Ok(a);
        }
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One getaddrinfo on the blocking pool per host and TTL for the whole node.
        let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host((host, port)).await?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: no address"),
            ));
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(host, port, addrs.clone(), Instant::now());
        Ok(addrs)
    }
}

/// Node-wide pacing of connection attempts (GCRA), time passed in.
#[derive(Debug)]
pub(crate) struct ConnectPacer {
    interval: Duration,
    burst: u32,
    origin: Instant,
    /// Theoretical arrival time of the next attempt, as an offset from `origin`.
    tat: Duration,
}

impl ConnectPacer {
    pub(crate) fn new(per_sec: u32, burst: u32, origin: Instant) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_sec.max(1),
            burst: burst.max(1),
            origin,
            tat: Duration::ZERO,
        }
    }

    /// Books the next attempt and returns how long after `now` it may start.
    /// Bookings are FIFO: every caller gets its own slot, nobody polls.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        let now = now.saturating_duration_since(self.origin);
        let tat = self.tat.max(now);
        let allowed_at = tat.saturating_sub(self.interval * (self.burst - 1));
        self.tat = tat + self.interval;
        allowed_at.saturating_sub(now)
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Shared network pieces of a node.
pub(crate) struct Net {
    pub(crate) resolver: Resolver,
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) pacer: Mutex<ConnectPacer>,
    pub(crate) connect_timeout: Duration,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl Net {
    pub(crate) fn new(cfg: &crate::WaConfig, chat_host: &str) -> Self {
        Self::with_tls(cfg, chat_host, tls_config())
    }

    pub(crate) fn with_tls(cfg: &crate::WaConfig, chat_host: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            resolver: Resolver::new(
                cfg.dns_ttl,
                Some((chat_host.to_owned(), cfg.static_addrs.clone())),
            ),
            tls: tokio_rustls::TlsConnector::from(tls),
            pacer: Mutex::new(ConnectPacer::new(
                cfg.connects_per_sec,
                cfg.connect_burst,
                Instant::now(),
            )),
            connect_timeout: cfg.connect_timeout,
        }
    }

    /// TCP to the first address of `host` that answers, then TLS if `tls`.
    async fn dial(&self, host: &str, port: u16, tls: bool) -> anyhow::Result<MaybeTls> {
        let addrs = self
            .resolver
            .resolve(host, port)
            .await
            .with_context(|| format!("resolving {host}"))?;
        let mut last = None;
        for addr in addrs.iter() {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    if !tls {
                        return Ok(MaybeTls::Plain(tcp));
                    }
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|e| anyhow!("bad TLS name {host}: {e}"))?;
                    let s = self
                        .tls
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS to {host}"))?;
                    return Ok(MaybeTls::Tls(Box::new(s)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(
            "connecting to {host}:{port}: {}",
            last.map_or("no address".into(), |e| e.to_string())
        ))
    }
}

/// A TCP stream with or without TLS.
#[derive(Debug)]
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Capacity of a connection's inbound frame queue: the read pump waits when the
/// client falls behind, which backpressures the socket instead of buffering.
const TRANSPORT_EVENT_CAPACITY: usize = 64;

type WsSink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;

/// One WebSocket connection as whatsapp-rust's byte pipe.
struct WsTransport<S> {
    sink: tokio::sync::Mutex<Option<WsSink<S>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    async fn send(&self, data: Bytes) -> anyhow::Result<()> {
        let mut sink = self.sink.lock().await;
        let sink = sink.as_mut().ok_or_else(|| anyhow!("socket is closed"))?;
        sink.send(Message::binary(data))
            .await
            .map_err(|e| anyhow!("websocket send: {e}"))
    }

    async fn disconnect(&self) {
        let _ = self.shutdown.send(true);
        if let Some(mut sink) = self.sink.lock().await.take() {
            let _ = sink
                .send(Message::close(
                    Some(tokio_websockets::CloseCode::NORMAL_CLOSURE),
                    "",
                ))
                .await;
            let _ = sink.close().await;
        }
    }
}

/// Wraps an upgraded WebSocket into whatsapp-rust's transport and event stream.
pub(crate) fn spawn_ws_transport<S>(
    ws: WebSocketStream<S>,
) -> (Arc<dyn Transport>, async_channel::Receiver<TransportEvent>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, rx) = async_channel::bounded(TRANSPORT_EVENT_CAPACITY);
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    // Queued before the pump starts so it precedes any data.
    let _ = tx.try_send(TransportEvent::Connected);
    tokio::spawn(async move {
        let reason = loop {
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => break DisconnectReason::Unknown,
                next = stream.next() => match next {
                    Some(Ok(msg)) if msg.is_binary() => {
                        let data: Bytes = msg.into_payload().into();
                        tokio::select! {
                            biased;
                            _ = shutdown_rx.changed() => break DisconnectReason::Unknown,
                            r = tx.send(TransportEvent::DataReceived(data)) => if r.is_err() {
                                break DisconnectReason::Unknown;
                            }
                        }
                    }
                    Some(Ok(msg)) if msg.is_close() => {
                        let (code, reason) = msg
                            .as_close()
                            .map(|(c, r)| (Some(u16::from(c)), r.to_owned()))
                            .unwrap_or((None, String::new()));
                        break DisconnectReason::ServerClose { code, reason };
                    }
                    // Text frames are not part of the protocol; pings are answered by the codec.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break DisconnectReason::ReadError(e.to_string()),
                    None => break DisconnectReason::StreamEnded,
                },
            }
        };
        let _ = tx.send(TransportEvent::Disconnected(reason)).await;
    });
    (
        Arc::new(WsTransport {
            sink: tokio::sync::Mutex::new(Some(sink)),
            shutdown,
        }),
        rx,
    )
}

/// whatsapp-rust transport factory of a node: paced, resolved once, TLS + WebSocket.
pub(crate) struct WsTransportFactory {
    pub(crate) net: Arc<Net>,
    pub(crate) url: http::Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl WsTransportFactory {
    pub(crate) fn new(net: Arc<Net>, url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad chat URL {url}"))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            other => return Err(anyhow!("chat URL scheme must be ws or wss, not {other:?}")),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("chat URL {url} has no host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            net,
            url: uri,
            host,
            port,
            tls,
        })
    }
}

#[async_trait]
impl TransportFactory for WsTransportFactory {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>)> {
        let wait = self
            .net
            .pacer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let connect = async {
            let stream = self.net.dial(&self.host, self.port, self.tls).await?;
            let origin = http::HeaderValue::from_static(whatsapp_rust::wacore::net::WHATSAPP_WEB_ORIGIN);
            let (ws, _) = ClientBuilder::from_uri(self.url.clone())
                .add_header(http::header::ORIGIN, origin)
                .map_err(|e| anyhow!("origin header: {e}"))?
                .connect_on(stream)
                .await
                .map_err(|e| anyhow!("websocket upgrade: {e}"))?;
            anyhow::Ok(spawn_ws_transport(ws))
        };
        tokio::time::timeout(self.net.connect_timeout, connect)
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", self.host))?
    }
}

/// whatsapp-rust HTTP client over hyper (HTTP/1.1, one connection per request: only
/// media and pre-key-less paths use HTTP, rarely), with the node's resolver.
pub(crate) struct HyperHttpClient {
    pub(crate) net: Arc<Net>,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
}

#[async_trait]
impl HttpClient for HyperHttpClient {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| anyhow!("HTTP request timed out"))?
    }
}

impl HyperHttpClient {
    async fn exchange(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        use http_body_util::BodyExt as _;
        let uri: http::Uri = request
            .url
            .parse()
            .with_context(|| format!("bad URL {}", request.url))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(anyhow!("unsupported URL scheme {other:?}")),
        };
        let host = uri.host().ok_or_else(|| anyhow!("URL without host"))?.to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let stream = self.net.dial(&host, port, tls).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let method = http::Method::from_bytes(request.method.as_bytes()).context("HTTP method")?;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host.as_str());
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = http_body_util::Full::new(request.body.unwrap_or_default());
        let req = builder.body(body).context("HTTP request")?;
        let resp = sender.send_request(req).await.context("HTTP exchange")?;
        let status = resp.status().as_u16();
        let limited = http_body_util::Limited::new(resp.into_body(), self.max_body);
        let body = limited
            .collect()
            .await
            .map_err(|e| anyhow!("HTTP body: {e}"))?
            .to_bytes();
        Ok(HttpResponse {
            status_code: status,
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_allows_burst_then_spaces_attempts() {
        let t0 = Instant::now();
        let mut p = ConnectPacer::new(10, 3, t0);
        let waits: Vec<_> = (0..6).map(|_| p.reserve(t0)).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 0, 100, 200, 300]);
        // After a quiet period the burst is available again.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.reserve(later), Duration::ZERO);
    }

    #[test]
    fn pacer_never_exceeds_rate_over_any_window() {
        let t0 = Instant::now();
        let mut p = ConnectPacer::new(20, 5, t0);
        // 1000 simultaneous requests: the k-th starts at max(0, k - burst + 1) / rate.
        let starts: Vec<Duration> = (0..1000).map(|_| p.reserve(t0)).collect();
        for w in starts.windows(2) {
            assert!(w[1] >= w[0]);
        }
        // Any one-second window holds at most rate + burst starts.
        for (i, s) in starts.iter().enumerate() {
            let within = starts[i..]
                .iter()
                .take_while(|x| **x < *s + Duration::from_secs(1))
                .count();
            assert!(within <= 25, "{within} starts within 1 s of {s:?}");
        }
        assert_eq!(starts[999], Duration::from_millis(50) * 995);
    }

    #[test]
    fn dns_cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(Duration::from_secs(60));
        let a: Arc<[SocketAddr]> = Arc::from(["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
        c.put("web.whatsapp.com", 443, a.clone(), t0);
        assert!(
            c.get("web.whatsapp.com", 443, t0 + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            c.get("web.whatsapp.com", 443, t0 + Duration::from_secs(60))
                .is_none()
        );
        assert!(c.get("web.whatsapp.com", 80, t0).is_none());
        for i in 0..200 {
            c.put(&format!("h{i}"), 443, a.clone(), t0 + Duration::from_millis(i));
        }
        assert_eq!(c.entries.len(), MAX_CACHED_HOSTS);
        // The newest survive.
        assert!(c.get("h199", 443, t0 + Duration::from_secs(1)).is_some());
    }

    #[tokio::test]
    async fn resolver_uses_static_addrs_and_literal_ips_without_lookup() {
        let r = Resolver::new(
            Duration::from_secs(60),
            Some(("chat.example".into(), vec!["10.0.0.1:443".parse().unwrap()])),
        );
        assert_eq!(
            &*r.resolve("chat.example", 443).await.unwrap(),
            &["10.0.0.1:443".parse().unwrap()]
        );
        assert_eq!(
            &*r.resolve("127.0.0.1", 8080).await.unwrap(),
            &["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(r.lookups(), 0);
    }

    #[tokio::test]
    async fn resolver_single_flight_caches_lookups() {
        let r = Arc::new(Resolver::new(Duration::from_secs(60), None));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.resolve("localhost", 443).await })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.unwrap().unwrap().is_empty());
        }
        assert_eq!(
            r.lookups(),
            1,
            "50 concurrent resolutions of one host cost one lookup"
        );
    }
}
