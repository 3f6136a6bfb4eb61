//! The HTTP/JSON API under `/v1`: control plane (workspaces, keys, devices, dead letters,
//! retention, deletions) and send.
//!
//! Layers, outermost first: request id (echoed in `x-request-id` and in every error
//! body), per-source rate limit, authentication (bearer API key or node-admin token),
//! the access table ([`routes::ROUTES`]: the one place that says which principal and
//! permission each route needs; a route missing from it answers 500, so nothing is ever
//! reachable by accident), per-key rate limit, body size limit, then the handler.
//! Errors are JSON with the catalogue code shared with the QUIC protocol.

pub mod automations;
pub mod events_ws;
pub mod openapi;
pub mod routes;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use waping_protocol::ErrorCode;

use crate::control::throttle::Gcra;
use crate::control::{Control, Error, Principal};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Shared state of the API.
#[derive(Debug)]
pub struct Api {
    /// Control plane.
    pub control: Arc<Control>,
    /// Message ids (the same generator kind as the QUIC listener's).
    pub ids: crate::ids::IdGen,
    /// Counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Limiter clock.
    pub clock: crate::limiter::MonotonicClock,
    /// Settings.
    pub cfg: crate::control::config::ApiConfig,
    per_key: Gcra<String>,
    per_source: Gcra<std::net::IpAddr>,
}

impl Api {
    /// API state over `control`.
    pub fn new(
        control: Arc<Control>,
        metrics: Arc<crate::metrics::Metrics>,
        clock: crate::limiter::MonotonicClock,
    ) -> Arc<Api> {
        let cfg = control.config().api.clone();
        Arc::new(Api {
            per_key: Gcra::new(cfg.key_rate_per_second, 1000, cfg.key_burst),
            per_source: Gcra::new(cfg.source_rate_per_second, 1000, cfg.source_burst),
            control,
            ids: crate::ids::IdGen::default(),
            metrics,
            clock,
            cfg,
        })
    }
}

/// Body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: catalogue code and name (shared with the QUIC protocol), human message,
/// when to retry, and the request id to quote.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable numeric code (protocol/PROTOCOL.md section 10).
    pub code: u16,
    /// Stable name of the code.
    pub name: String,
    /// Human-readable explanation.
    pub message: String,
    /// Milliseconds before retrying can succeed; 0 when waiting does not help.
    pub retry_after_ms: u32,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
}

/// An error as an HTTP response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after_ms: u32,
    /// Methods the path supports, for 405 answers.
    allow: Option<String>,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: 0,
            allow: None,
        }
    }

    fn retry_after(mut self, ms: u32) -> ApiError {
        self.retry_after_ms = ms;
        self
    }

    /// The catalogue code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The detail as it appears inside a response (batch items reuse it).
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.0,
            name: self.code.name().to_string(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            request_id: REQUEST_ID.try_with(|r| r.clone()).unwrap_or_default(),
        }
    }
}

/// HTTP status for a catalogue code from the data path.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code.0 {
        2000 => StatusCode::UNAUTHORIZED,
        2001 => StatusCode::FORBIDDEN,
        2002 | 3000..=3002 | 3004 | 3005 => StatusCode::TOO_MANY_REQUESTS,
        3003 | 9001 | 9002 => StatusCode::SERVICE_UNAVAILABLE,
        1010 => StatusCode::PAYLOAD_TOO_LARGE,
        4000 | 4004 => StatusCode::NOT_FOUND,
        4005 | 4006 => StatusCode::CONFLICT,
        1000..=1999 | 4001..=4003 => StatusCode::UNPROCESSABLE_ENTITY,
        // The device cannot send in its state: the request conflicts with it.
        5005..=5008 => StatusCode::CONFLICT,
        5000..=5999 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        let after = match &e {
            Error::Code { retry_after_ms, .. } => *retry_after_ms,
            _ => 0,
        };
        if let Error::Internal(m) = &e {
            tracing::error!(error = %m, "control plane failure");
        }
        let message = match &e {
            // Internals stay in the log.
            Error::Internal(_) => "internal error; see the gateway log".to_string(),
            other => other.to_string(),
        };
        ApiError::new(status_of(code), code, message).retry_after(after)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let after = self.retry_after_ms;
        let allow = self.allow.clone();
        let mut r = (self.status, axum::Json(ErrorBody { error: self.detail() })).into_response();
        if let Some(v) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        if after > 0 {
            let secs = after.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// JSON body extractor whose rejections are typed API errors (400/413/415 with a code).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection as J;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(J::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::INVALID_FIELD,
                "content-type must be application/json",
            )),
            Err(J::BytesRejection(b)) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PAYLOAD_TOO_LARGE,
                "request body is larger than api.max_body_bytes",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::INVALID_FIELD,
                e.body_text(),
            )),
        }
    }
}

/// Path extractor with typed rejections.
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::INVALID_FIELD, e.body_text()))
    }
}

/// Query extractor with typed rejections.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|p| QueryParams(p.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::INVALID_FIELD, e.body_text()))
    }
}

/// The authenticated caller, put in the request by the access layer.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::AUTH_FAILED,
                "missing credentials",
            )
        })
    }
}

/// The peer address of the TCP connection.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_string())
}

/// Request id, then rate limits, authentication and the access table.
async fn gatekeeper(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    mut req: Request,
    next: Next,
) -> Response {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(valid_request_id)
        .unwrap_or_else(|| api.ids.next().to_string());
    let rid_header = HeaderValue::from_str(&rid).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    // Labels from the access table only: bounded cardinality whatever the client sends.
    let (route, method) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| routes::access(req.method(), m.as_str()))
        .map_or(("unmatched", "other"), |r| (r.path, r.method));
    let audit_ctx = crate::audit::Ctx {
        request_id: Some(rid.clone()),
        source: req.extensions().get::<Peer>().map(|p| p.0.ip()),
    };
    let mut resp = REQUEST_ID
        .scope(
            rid,
            crate::audit::scope(audit_ctx.clone(), async move {
                // A refused credential's record is durable before the refusal is answered.
                let (admitted, receipts) = crate::audit::collect(audit_ctx, || admit(&api, &mut req));
                crate::audit::settle(receipts).await;
                match admitted {
                    Ok(()) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }),
        )
        .await;
    resp.headers_mut().insert("x-request-id", rid_header);
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    };
    metrics::counter!("waping_http_requests_total", "route" => route, "method" => method, "status" => class)
        .increment(1);
    resp
}

fn admit(api: &Api, req: &mut Request) -> Result<(), ApiError> {
    let now = crate::unix_ms();
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or_else(|| std::net::IpAddr::from([127, 0, 0, 1]), |p| p.0.ip());
    if let Err(ms) = api.per_source.take(&peer, now) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::API_RATE_LIMITED,
            "too many requests from this address",
        )
        .retry_after(ms));
    }
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(path) = path else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NOT_FOUND,
            "no such route",
        ));
    };
    let Some(route) = routes::access(req.method(), &path) else {
        let methods: Vec<&str> = routes::ROUTES
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.method)
            .collect();
        if !methods.is_empty() {
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::INVALID_FIELD,
                format!("method not allowed here; allowed: {}", methods.join(", ")),
            );
            e.allow = Some(methods.join(", "));
            return Err(e);
        }
        // Fail closed: a route someone forgot to list in the access table is unreachable.
        tracing::error!(method = %req.method(), %path, "route missing from the access table");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::INTERNAL,
            "route missing from the access table",
        ));
    };
    if route.access == routes::Access::Public {
        return Ok(());
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Browsers cannot set headers on a WebSocket: the event stream also takes the key as a
    // `waping.key.<key>` subprotocol (never echoed back; docs/events.md).
    let token = token.or_else(|| {
        (path == events_ws::ROUTE)
            .then(|| events_ws::key_from_protocols(req.headers()))
            .flatten()
    });
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::AUTH_FAILED,
            "missing `Authorization: Bearer <key>`",
        ));
    };
    let principal = api.control.authenticate(token, peer, now)?;
    match (&route.access, &principal) {
        (routes::Access::Admin, Principal::Admin) => {}
        (routes::Access::Key(p), Principal::Key(k)) => {
            if !k.role.allows(*p) {
                api.control.audit.note(
                    waping_audit::Action::AuthFailure,
                    Some(&k.workspace.id),
                    crate::audit::actor(&principal),
                    "forbidden",
                    Some(peer),
                );
                return Err(Error::Forbidden(*p).into());
            }
            if let Err(ms) = api.per_key.take(&k.id, now) {
                api.control
                    .audit
                    .note_rejection(&k.workspace.id, ErrorCode::API_RATE_LIMITED);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::API_RATE_LIMITED,
                    "too many requests with this API key",
                )
                .retry_after(ms));
            }
        }
        // A workspace key on an admin route, or the admin token on a workspace route.
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::FORBIDDEN,
                "this credential cannot use this route",
            ));
        }
    }
    // One aggregate record per key, source and interval: per request would bury the log.
    api.control.audit.note(
        waping_audit::Action::AuthSuccess,
        match &principal {
            Principal::Key(k) => Some(&k.workspace.id),
            Principal::Admin => None,
        },
        crate::audit::actor(&principal),
        "http",
        Some(peer),
    );
    req.extensions_mut().insert(Caller(principal));
    Ok(())
}

/// The router with every layer.
pub fn router(api: Arc<Api>) -> Router {
    let limit = api.cfg.max_body_bytes as usize;
    routes::router()
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(api.clone(), gatekeeper))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// Serves `router` on `listener` (TLS when `tls` is set) until `shutdown` flips, then lets
/// requests in progress finish (bounded by `drain`). Each connection takes the TLS
/// configuration current when it arrives, so a reload's certificate is served to new
/// connections while open ones keep theirs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    use hyper_util::rt::TokioIo;
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::wait_shutdown(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let mut shutdown = shutdown.clone();
        let upgrade_tracker = tracker.clone();
        tracker.spawn(async move {
            let upgrades = events_ws::Upgrades {
                shutdown: shutdown.clone(),
                tracker: upgrade_tracker.clone(),
            };
            let svc = tower::ServiceExt::map_request(router, move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(Peer(peer));
                r.extensions_mut().insert(upgrades.clone());
                r
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder = hyper::server::conn::http1::Builder::new();
            macro_rules! drive {
                ($io:expr) => {{
                    let conn = builder
                        .serve_connection(TokioIo::new($io), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => { let _ = r; }
                        _ = crate::server::wait_shutdown(&mut shutdown) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                }};
            }
            match acceptor {
                Some(a) => match tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await {
                    Ok(Ok(tls)) => drive!(tls),
                    _ => tracing::debug!(%peer, "TLS handshake failed or timed out"),
                },
                None => drive!(tcp),
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(drain, tracker.wait()).await;
}
