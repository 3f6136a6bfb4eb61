//! Wiring: build every subsystem from a [`Config`], start them, stop them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::auth::KeyStore;
use crate::config::{Config, UpstreamKind};
use crate::limiter::{Limiter, Nanos, Quota};
use crate::metrics::Metrics;
use crate::server::{self, Shared};
use crate::session::{SessionManager, SessionSettings, route_upstream_events};
use crate::upstream::{Upstream, remote::RemoteUpstream, sim::SimUpstream};
use crate::workspace::Registry;

/// Upstream events buffered between the upstream and the router. When full, the
/// upstream waits (back-pressure) rather than dropping inbound messages.
const UPSTREAM_EVENT_BUFFER: usize = 4096;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Bound QUIC address.
    pub quic_addr: SocketAddr,
    /// Bound metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// `sha256:…` of the certificate, for clients to pin.
    pub fingerprint: String,
    /// PEM certificate path.
    pub cert_path: PathBuf,
    /// State directory in use.
    pub state_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    sessions: Arc<SessionManager>,
}

/// Installs the Prometheus recorder once per process; later calls (tests
/// starting several gateways) keep the first.
fn install_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = addr else { return Ok(None) };
    // Bind first so port 0 resolves to a real port and errors name the address.
    let probe = std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    let bound = probe.local_addr()?;
    drop(probe);
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(bound)
        .install()
    {
        Ok(()) => Ok(Some(bound)),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder already installed; keeping the first");
            Ok(None)
        }
    }
}

impl Gateway {
    /// Builds and starts everything; returns once the listener is bound.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        let state_dir = cfg.server.resolved_state_dir();
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating state dir {}", state_dir.display()))?;
        let metrics_addr = install_metrics(cfg.metrics.address())?;
        let metrics = Arc::new(Metrics::new());

        let limiter: Limiter<Arc<str>> = Limiter::new();
        let mut quotas = Vec::with_capacity(cfg.workspaces.len());
        for w in &cfg.workspaces {
            let (rate, burst, device_rate) = cfg.workspace_limits(w);
            let quota = Quota::per_second(rate, burst)
                .with_context(|| format!("workspace {}: rate_per_second/burst", w.id))?;
            if device_rate > 0 {
                Quota::per_second(device_rate, 1)
                    .with_context(|| format!("workspace {}: device_rate_per_second", w.id))?;
            }
            quotas.push((Arc::<str>::from(w.id.as_str()), quota));
        }
        // One batch so the map is copied once; fresh buckets start full whatever `now` is.
        let cells = limiter.upsert_many(quotas, Nanos::ZERO);
        let mut registry = Registry::default();
        let mut keys = KeyStore::default();
        for (w, cell) in cfg.workspaces.iter().zip(cells) {
            let (_, _, device_rate) = cfg.workspace_limits(w);
            let ws = registry.add(&w.id, cell, device_rate);
            for k in &w.keys {
                keys.insert(&k.id, &k.hash, ws.idx)
                    .map_err(|e| anyhow::anyhow!("workspace {}: key {}: {e}", w.id, k.id))?;
            }
        }
        let registry = Arc::new(registry);

        let (ev_tx, ev_rx) = mpsc::channel(UPSTREAM_EVENT_BUFFER);
        let upstream: Arc<dyn Upstream> = match cfg.upstream.kind {
            UpstreamKind::Sim => Arc::new(SimUpstream::new(cfg.upstream.sim.clone(), ev_tx)),
            UpstreamKind::SimRemote => Arc::new(RemoteUpstream::start(cfg.upstream.remote_addr, ev_tx)),
        };
        tokio::spawn(route_upstream_events(ev_rx, registry.clone(), metrics.clone()));
        let sessions = Arc::new(SessionManager::new(
            upstream.clone(),
            SessionSettings {
                queue: cfg.limits.device_queue as usize,
                window: cfg.limits.device_window as usize,
                send_timeout: Duration::from_millis(cfg.upstream.send_timeout_ms),
            },
            metrics.clone(),
        ));
        for w in &cfg.workspaces {
            if let Some(ws) = registry.by_id(&w.id) {
                for d in &w.devices {
                    sessions.start_device(ws, d);
                }
            }
        }

        let tls = crate::tls::load_or_create(&cfg.server, &state_dir)?;
        let server_cfg = crate::tls::quic_server_config(&tls, &cfg.server)?;
        let endpoint = server::bind(cfg.server.listen, server_cfg)
            .with_context(|| format!("binding QUIC on udp {}", cfg.server.listen))?;
        let quic_addr = endpoint.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            cfg.server.clone(),
            Arc::new(arc_swap::ArcSwap::from_pointee(keys)),
            registry.clone(),
            sessions.clone(),
            metrics,
            shutdown_rx,
        ));
        let serve = tokio::spawn(server::serve(endpoint, shared));
        let gw = Gateway {
            quic_addr,
            metrics_addr,
            fingerprint: tls.fingerprint_string(),
            cert_path: tls.cert_path.clone(),
            state_dir: state_dir.clone(),
            shutdown,
            serve,
            sessions,
        };
        gw.write_runtime_file()?;
        tracing::info!(
            quic = %quic_addr,
            metrics = ?metrics_addr,
            fingerprint = %gw.fingerprint,
            cert = %gw.cert_path.display(),
            created_cert = tls.created,
            workspaces = registry.len(),
            devices = gw.sessions.len(),
            upstream = upstream.name(),
            "gateway ready"
        );
        Ok(gw)
    }

    /// `state_dir/runtime.json`: bound addresses and fingerprint, for tools and tests.
    fn write_runtime_file(&self) -> anyhow::Result<()> {
        let v = format!(
            "{{\"pid\":{},\"quic\":\"{}\",\"metrics\":{},\"fingerprint\":\"{}\",\"cert\":{:?}}}\n",
            std::process::id(),
            self.quic_addr,
            self.metrics_addr
                .map_or("null".to_string(), |a| format!("\"{a}\"")),
            self.fingerprint,
            self.cert_path.display().to_string(),
        );
        let path = self.state_dir.join("runtime.json");
        let tmp = self.state_dir.join("runtime.json.tmp");
        std::fs::write(&tmp, v)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Starts draining: no new connections, GOODBYE to clients, reports flushed.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the listener has drained and closed.
    pub async fn wait(self) {
        let _ = self.serve.await;
        self.sessions.close_all();
        let _ = std::fs::remove_file(self.state_dir.join("runtime.json"));
    }
}
