//! The QUIC data plane: accept connections, authenticate, then serve every
//! stream of the connection in its own task.
//!
//! One connection's failure (bad frame, bad key, slow reader) ends that
//! connection only: each runs in its own tasks and shares nothing mutable
//! with others but atomics and the per-device queues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use waping_protocol::conn::{ServerAction, ServerConn};
use waping_protocol::{Decoder, ErrorCode, Frame, Text};

use crate::config::ServerConfig;
use crate::ids::IdGen;
use crate::limiter::MonotonicClock;
use crate::metrics::Metrics;
use crate::session::SessionManager;
use crate::workspace::Workspace;

mod stream;

/// What every connection needs.
#[derive(Debug)]
pub struct Shared {
    /// Listener settings.
    pub cfg: ServerConfig,
    /// Authentication (API keys, failure throttle) and workspaces.
    pub control: Arc<crate::control::Control>,
    /// Device sessions.
    pub sessions: Arc<SessionManager>,
    /// Journal, idempotency keys and retry queue.
    pub durable: Arc<crate::durable::Durable>,
    /// Message ids.
    pub ids: IdGen,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock for limiters.
    pub clock: MonotonicClock,
    /// Flips to true when the gateway starts draining.
    pub shutdown: watch::Receiver<bool>,
    next_conn_id: AtomicU64,
    active: AtomicU32,
}

impl Shared {
    /// Bundles the pieces.
    pub fn new(
        cfg: ServerConfig,
        control: Arc<crate::control::Control>,
        sessions: Arc<SessionManager>,
        durable: Arc<crate::durable::Durable>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            cfg,
            control,
            sessions,
            durable,
            ids: IdGen::default(),
            metrics,
            clock: MonotonicClock::new(),
            shutdown,
            next_conn_id: AtomicU64::new(1),
            active: AtomicU32::new(0),
        }
    }
}

/// State of one authenticated connection, shared by its stream tasks.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub ws: Arc<Workspace>,
    /// The key the connection authenticated with; checked before every request.
    pub key: Arc<crate::auth::LiveKey>,
    pub conn: quinn::Connection,
    pub id: u64,
    /// SENDs accepted and not yet reported, across all streams.
    pub in_flight: AtomicU32,
    /// Set once GOODBYE is received or the gateway drains.
    pub draining: AtomicBool,
    /// Current subscription mask (0 = none).
    pub subscription: AtomicU32,
    /// Whether the connection's event stream was opened (at most one per connection).
    pub events_open: std::sync::atomic::AtomicBool,
}

/// Accepts connections until shutdown, then waits for them to drain.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let tracker = TaskTracker::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = wait_shutdown(&mut shutdown) => None,
        };
        let Some(incoming) = incoming else { break };
        if shared.active.load(Ordering::Relaxed) >= shared.cfg.max_connections {
            shared.metrics.connection_error(ErrorCode::OVERLOADED);
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.active.fetch_add(1, Ordering::Relaxed);
            let peer = incoming.remote_address();
            if let Err(e) = handle_connection(shared.clone(), incoming).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            shared.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracker.close();
    let drain = Duration::from_millis(shared.cfg.drain_timeout_ms);
    if tokio::time::timeout(drain + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in time; closing them");
    }
    endpoint.close(u32::from(ErrorCode::SHUTTING_DOWN.0).into(), b"shutting down");
}

/// `sha256:<hex>` of the client certificate the connection presented (mutual TLS), if any.
fn client_cert_sha256(conn: &quinn::Connection) -> Option<String> {
    use sha2::Digest as _;
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let leaf = certs.first()?;
    Some(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(leaf.as_ref()))
    ))
}

async fn handle_connection(shared: Arc<Shared>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let peer = conn.remote_address();
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections_opened.increment(1);
    shared.metrics.connections_active.increment(1.0);
    let _active = scopeguard(&shared.metrics);
    let handshake = Duration::from_millis(shared.cfg.handshake_timeout_ms);

    let first = tokio::time::timeout(handshake, async {
        let (send, recv) = conn.accept_bi().await?;
        let mut io = stream::FrameIo::new(send, recv, Decoder::new(shared.cfg.max_frame_len));
        let f = io.read_frame().await;
        anyhow::Ok((io, f))
    })
    .await;
    let (mut io, first) = match first {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            shared.metrics.connection_error(ErrorCode::HANDSHAKE_TIMEOUT);
            close(&conn, ErrorCode::HANDSHAKE_TIMEOUT, "no HELLO in time");
            return Ok(());
        }
    };
    let mut state = ServerConn::AwaitHello;
    let frame = match first {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(stream::ReadError::Decode(e)) => {
            shared.metrics.connection_error(e.code());
            io.fail(&conn, e.code(), &e.to_string()).await;
            return Ok(());
        }
        Err(stream::ReadError::Io(e)) => return Err(e.into()),
    };
    let version = match state.on_frame(&frame) {
        Ok(ServerAction::Authenticate { version }) => version,
        Ok(_) => return Ok(()),
        Err(v) => {
            shared.metrics.connection_error(v.code);
            io.fail(&conn, v.code, &v.message).await;
            return Ok(());
        }
    };
    let Frame::Hello {
        api_key, client_name, ..
    } = frame
    else {
        return Ok(());
    };
    let (authenticated, receipts) = crate::audit::collect(
        crate::audit::Ctx {
            request_id: None,
            source: Some(peer.ip()),
        },
        || {
            shared
                .control
                .authenticate(api_key.as_str(), peer.ip(), crate::unix_ms())
        },
    );
    // A refused credential's record is durable before the refusal is sent.
    crate::audit::settle(receipts).await;
    let key = match authenticated {
        Ok(crate::control::Principal::Key(k)) => Ok(k),
        // The admin token is for the HTTP control plane only; it sends nothing.
        Ok(crate::control::Principal::Admin) => Err((ErrorCode::AUTH_FAILED, 0)),
        Err(crate::control::Error::Code {
            code, retry_after_ms, ..
        }) => Err((code, retry_after_ms)),
        Err(_) => Err((ErrorCode::AUTH_FAILED, 0)),
    };
    let key = match key {
        Ok(k) => k,
        Err((code, after)) => {
            state.auth_failed();
            shared.metrics.connection_error(code);
            let msg = if code == ErrorCode::AUTH_THROTTLED {
                format!("too many failed authentications from this address; retry after {after} ms")
            } else {
                "invalid API key".to_string()
            };
            io.fail(&conn, code, &msg).await;
            return Ok(());
        }
    };
    let ws = key.workspace.clone();
    // A new connection is a security-relevant event: refused when its record cannot be kept.
    if let Err(crate::control::Error::Code { code, message, .. }) = shared.control.audit.gate() {
        state.auth_failed();
        shared.metrics.connection_error(code);
        io.fail(&conn, code, &message).await;
        return Ok(());
    }
    shared
        .control
        .audit
        .emit_durable(
            waping_audit::Event::new(
                crate::unix_ms(),
                waping_audit::Actor::Key { id: key.id.clone() },
                waping_audit::Action::AuthSuccess,
            )
            .workspace(&*ws.id)
            .target("connection", conn_id.to_string())
            .source(peer.ip())
            .detail_opt(client_cert_sha256(&conn).map(|sha256| waping_audit::Detail::ClientCert { sha256 })),
        )
        .await;
    state.auth_ok();
    tracing::debug!(%peer, conn_id, workspace = %ws.id, client = %client_name, "authenticated");
    io.queue(&Frame::HelloOk {
        version,
        max_frame_len: shared.cfg.max_frame_len,
        max_in_flight: shared.cfg.max_in_flight,
        max_streams: shared.cfg.max_streams,
        idle_timeout_ms: shared.cfg.idle_timeout_ms,
        connection_id: conn_id,
        server: Text::from(concat!("waping-gateway/", env!("CARGO_PKG_VERSION"))),
    });
    io.flush().await?;

    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        ws,
        key: key.clone(),
        conn: conn.clone(),
        id: conn_id,
        in_flight: AtomicU32::new(0),
        draining: AtomicBool::new(false),
        subscription: AtomicU32::new(0),
        events_open: std::sync::atomic::AtomicBool::new(false),
    });
    let streams = TaskTracker::new();
    streams.spawn(stream::run(ctx.clone(), io, state, true));
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    let io = stream::FrameIo::new(send, recv, Decoder::new(shared.cfg.max_frame_len));
                    streams.spawn(stream::run(ctx.clone(), io, ServerConn::Open { version }, false));
                }
                Err(_) => break,
            },
            _ = wait_shutdown(&mut shutdown) => {
                ctx.draining.store(true, Ordering::Release);
                break;
            }
            // Revocation (or workspace deletion) takes effect now, not at the next request.
            _ = key.revoked() => {
                tracing::info!(conn = conn_id, key = %key.id, "API key revoked; closing its connection");
                close(&conn, ErrorCode::AUTH_FAILED, "API key revoked");
                return Ok(());
            }
        }
    }
    streams.close();
    // Streams finish once their reports are out; bound the wait.
    let drain = Duration::from_millis(shared.cfg.drain_timeout_ms);
    let _ = tokio::time::timeout(drain, streams.wait()).await;
    close(&conn, ErrorCode::SHUTTING_DOWN, "closing");
    Ok(())
}

/// Closes a connection with a catalogue code as the QUIC application error code.
pub(crate) fn close(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    conn.close(u32::from(code.0).into(), reason.as_bytes());
}

struct ActiveGuard<'a>(&'a Metrics);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_active.decrement(1.0);
    }
}
fn scopeguard(m: &Metrics) -> ActiveGuard<'_> {
    ActiveGuard(m)
}

/// Binds the UDP socket.
pub fn bind(addr: SocketAddr, server_config: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::server(server_config, addr)?)
}

/// Resolves once the gateway starts draining (or the sender is gone).
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Convenience for buffers.
pub(crate) fn new_buf() -> BytesMut {
    BytesMut::with_capacity(16 * 1024)
}
