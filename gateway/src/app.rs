//! Wiring: build every subsystem from a [`Config`], start them, stop them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, UpstreamKind};
use crate::durable::{Durable, RetryItem, pbody};
use crate::idempotency::IdempotencyIndex;
use crate::limiter::MonotonicClock;
use crate::limiter::{Limiter, Nanos, Quota};
use crate::metrics::Metrics;
use crate::retry::{RetryPolicy, RetryQueue};
use crate::server::{self, Shared};
use crate::session::{
    Outbound, SessionHandle, SessionManager, SessionSettings, SubmitError, gate::ConnectGate,
    route_upstream_events, store::DeviceStoreSessions,
};
use crate::upstream::{Upstream, remote::RemoteUpstream, sim::SimUpstream};
use crate::workspace::Registry;
use metrics::{counter, gauge};
use waping_journal::{Journal, PendingState, Record, Recovered};
use waping_protocol::{ErrorCode, MessageId, Text};

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
    /// Bound HTTP API address, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The control plane (workspaces, keys, devices, deletions).
    pub control: Arc<crate::control::Control>,
    /// `sha256:…` of the certificate, for clients to pin.
    pub fingerprint: String,
    /// PEM certificate path.
    pub cert_path: PathBuf,
    /// State directory in use.
    pub state_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    sessions: Arc<SessionManager>,
    durable: Arc<Durable>,
    scheduler_stop: tokio::sync::oneshot::Sender<()>,
    scheduler: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    audit: Arc<crate::audit::AuditHub>,
    audit_stop: tokio_util::sync::CancellationToken,
    audit_aggregator: tokio::task::JoinHandle<()>,
    audit_pipeline: waping_audit::Pipeline,
    reload: crate::reload::ReloadState,
    webhooks: Arc<crate::webhooks::Webhooks>,
}

/// Installs the Prometheus recorder once per process; later calls (tests
/// starting several gateways) keep the first.
fn install_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = addr else { return Ok(None) };
    // Bind first so port 0 resolves to a real port and errors name the address.
    let probe = std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    let bound = probe.local_addr()?;
    drop(probe);
    match crate::metrics::prometheus_builder()
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
        let cfg = Arc::new(cfg);
        let state_dir = cfg.server.resolved_state_dir();
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating state dir {}", state_dir.display()))?;
        let metrics_addr = install_metrics(cfg.metrics.address())?;
        let metrics = Arc::new(Metrics::new());

        // The audit log first: everything after this may produce records, and a node that
        // cannot keep them must not start.
        let (signer, signing_key_path) = crate::audit::signing_key(&cfg, &state_dir)?;
        let audit_pipeline = waping_audit::Pipeline::start(
            &cfg.audit,
            waping_audit::PipelineOptions {
                state_dir: state_dir.clone(),
                signer,
                version: env!("CARGO_PKG_VERSION").into(),
            },
        )
        .await
        .context("starting the audit log")?;
        let audit = crate::audit::AuditHub::new(audit_pipeline.auditor(), cfg.audit.aggregate_interval_s);
        let audit_stop = tokio_util::sync::CancellationToken::new();
        let audit_aggregator = tokio::spawn(audit.clone().run(audit_stop.clone()));
        tracing::info!(node = audit.auditor().node(), signing_key = %signing_key_path.display(),
            sinks = cfg.audit.sinks.len(), head = audit_pipeline.head(), "audit log open");

        // Encryption at rest: the per-workspace data keys, wrapped by the master key. Opened
        // first: the journal and the device store cannot read their data without it.
        let (master, source) = crate::control::sealing::master_key(&cfg, &state_dir)?;
        let vault = Arc::new(
            waping_vault::Vault::open(&state_dir, master, Some(source))
                .context("opening the keyring (encryption at rest)")?,
        );
        let sealer = crate::control::sealing::VaultSealer(vault.clone());
        // Events owed to webhook endpoints, sealed like the journal.
        let webhooks = crate::webhooks::Webhooks::open(&cfg.webhooks, &state_dir, Arc::new(sealer.clone()))?;
        for w in &cfg.workspaces {
            vault
                .ensure_workspace(&w.id)
                .with_context(|| format!("workspace {}: data key", w.id))?;
        }

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
        let registry = Arc::new(Registry::with_workspace_metrics(
            cfg.metrics.per_workspace.then_some(cfg.metrics.per_workspace_max),
        ));
        // Events go to the webhook runtime and, for inbound messages, to automations.
        let sink = Arc::new(crate::automations::Tee {
            webhooks: webhooks.clone(),
            automations: std::sync::OnceLock::new(),
        });
        registry.set_sink(sink.clone());
        for (w, cell) in cfg.workspaces.iter().zip(cells) {
            let (_, _, device_rate) = cfg.workspace_limits(w);
            let pacing = cfg
                .workspace_pacing(w)
                .map_err(|e| anyhow::anyhow!("workspace {}: {e}", w.id))?;
            registry.add(&w.id, cell, device_rate, Arc::new(pacing));
        }

        let (durable, queue, recovered) = open_durable(&cfg, &state_dir, Arc::new(sealer.clone())).await?;

        // Session records (and the WhatsApp upstream's credentials) for every device.
        let store_path = state_dir.join("devices.redb");
        let device_store = Arc::new(
            waping_store::Store::open(
                &store_path,
                waping_store::StoreOptions {
                    sealer: Arc::new(sealer),
                    ..waping_store::StoreOptions::default()
                },
            )
            .with_context(|| format!("opening the device store {}", store_path.display()))?,
        );
        let (ev_tx, ev_rx) = mpsc::channel(UPSTREAM_EVENT_BUFFER);
        let upstream: Arc<dyn Upstream> = match cfg.upstream.kind {
            UpstreamKind::Sim => Arc::new(SimUpstream::new(cfg.upstream.sim.clone(), ev_tx)),
            UpstreamKind::SimRemote => Arc::new(RemoteUpstream::start(cfg.upstream.remote_addr, ev_tx)),
            #[cfg(feature = "whatsapp")]
            UpstreamKind::Whatsapp => Arc::new(
                crate::upstream::whatsapp::WhatsAppUpstream::start(
                    &cfg.upstream.whatsapp,
                    device_store.clone(),
                    ev_tx,
                    Arc::new(crate::webhooks::DurableInbound {
                        durable: durable.clone(),
                        webhooks: webhooks.clone(),
                    }),
                )
                .await
                .context("starting the WhatsApp upstream")?,
            ),
            #[cfg(not(feature = "whatsapp"))]
            UpstreamKind::Whatsapp => anyhow::bail!(
                "upstream.kind = \"whatsapp\" but this binary was built without the `whatsapp` feature"
            ),
        };
        let gate = ConnectGate::start(
            cfg.sessions
                .gate_quota()
                .context("sessions.connect_rate_per_second / connect_burst")?,
            durable.clock,
        );
        let sessions = Arc::new(
            SessionManager::new(
                upstream.clone(),
                SessionSettings {
                    queue: cfg.limits.device_queue as usize,
                    window: cfg.limits.device_window as usize,
                    send_timeout: Duration::from_millis(cfg.upstream.send_timeout_ms),
                    lifecycle: cfg.sessions.lifecycle(),
                },
                metrics.clone(),
                gate,
                Arc::new(DeviceStoreSessions::new(device_store.clone())),
            )
            .with_durable(durable.clone())
            .with_audit(audit.clone()),
        );
        tokio::spawn(route_upstream_events(
            ev_rx,
            registry.clone(),
            sessions.clone(),
            metrics.clone(),
        ));
        for w in &cfg.workspaces {
            if let Some(ws) = registry.by_id(&w.id) {
                for d in &w.devices {
                    sessions.start_device(&ws, d);
                }
            }
        }

        let admin = crate::control::AdminToken::load(cfg.api.admin_token_file.as_deref())?;
        // Workspaces, keys and devices created through the API join the configuration's here,
        // before the journal's unfinished messages look for their devices.
        let control = crate::control::Control::open(
            cfg.clone(),
            &state_dir,
            registry.clone(),
            limiter,
            sessions.clone(),
            durable.clone(),
            vault,
            device_store.clone(),
            admin,
            audit.clone(),
        )?;

        webhooks.start(&control);
        let _ = sink.automations.set(crate::automations::Automations::start(
            control.clone(),
            metrics.clone(),
            durable.clock,
        ));
        {
            // Status events a crash may have lost between a REPORT and their commit.
            let (w, j) = (webhooks.clone(), durable.journal.clone());
            tokio::spawn(async move {
                let n = w.replay_finished(&j, Duration::from_secs(900)).await;
                if n > 0 {
                    tracing::info!(
                        events = n,
                        "status events of recent finishes checked against the event store"
                    );
                }
            });
        }
        let (scheduler_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let scheduler = tokio::spawn(run_retries(queue, durable.clone(), stop_rx));
        resume(recovered, &registry, &sessions, &durable, &metrics);
        tokio::spawn(housekeeping(durable.clone()));

        let prepared = crate::tls::prepare(&cfg.server, &state_dir)?;
        let endpoint = server::bind(cfg.server.listen, prepared.quic.clone())
            .with_context(|| format!("binding QUIC on udp {}", cfg.server.listen))?;
        let https_tls = Arc::new(arc_swap::ArcSwap::new(prepared.https.clone()));
        let quic_addr = endpoint.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            cfg.server.clone(),
            control.clone(),
            sessions.clone(),
            durable.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        let serve = tokio::spawn(server::serve(endpoint.clone(), shared));
        let (http_addr, http) = if cfg.api.enabled {
            let listener = tokio::net::TcpListener::bind(cfg.api.listen)
                .await
                .with_context(|| format!("binding the HTTP API on tcp {}", cfg.api.listen))?;
            let addr = listener.local_addr()?;
            let tls = match cfg.api.scheme {
                crate::control::config::Scheme::Https => Some(https_tls.clone()),
                crate::control::config::Scheme::Http => None,
            };
            let api = crate::http::Api::new(control.clone(), metrics.clone(), durable.clock);
            let task = tokio::spawn(crate::http::serve(
                listener,
                tls,
                crate::http::router(api),
                shutdown_rx,
                Duration::from_millis(cfg.server.drain_timeout_ms),
            ));
            (Some(addr), Some(task))
        } else {
            (None, None)
        };
        let gw = Gateway {
            quic_addr,
            metrics_addr,
            http_addr,
            control,
            fingerprint: prepared.material.fingerprint_string(),
            cert_path: prepared.material.cert_path.clone(),
            state_dir: state_dir.clone(),
            shutdown,
            serve,
            sessions,
            durable,
            scheduler_stop,
            scheduler,
            http,
            audit,
            audit_stop,
            audit_aggregator,
            audit_pipeline,
            webhooks,
            reload: crate::reload::ReloadState::new(cfg.clone(), endpoint, https_tls, &prepared),
        };
        gw.write_runtime_file()?;
        tracing::info!(
            quic = %quic_addr,
            metrics = ?metrics_addr,
            http = ?http_addr,
            fingerprint = %gw.fingerprint,
            cert = %gw.cert_path.display(),
            created_cert = prepared.material.created,
            workspaces = registry.len(),
            devices = gw.sessions.len(),
            upstream = upstream.name(),
            "gateway ready"
        );
        Ok(gw)
    }

    /// `state_dir/runtime.json`: bound addresses, the certificate in use and the last
    /// reload, for tools and tests. Rewritten (atomically) after every reload.
    pub(crate) fn write_runtime_file(&self) -> anyhow::Result<()> {
        let (fingerprint, cert) = self.reload.certificate();
        let v = serde_json::json!({
            "pid": std::process::id(),
            "quic": self.quic_addr.to_string(),
            "metrics": self.metrics_addr.map(|a| a.to_string()),
            "http": self.http_addr.map(|a| a.to_string()),
            "fingerprint": fingerprint,
            "cert": cert.display().to_string(),
            "reload": self.reload.summary(),
        });
        let v = format!("{v}\n");
        let path = self.state_dir.join("runtime.json");
        let tmp = self.state_dir.join("runtime.json.tmp");
        std::fs::write(&tmp, v)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Re-reads the configuration (`path`, or the embedded defaults) and applies what can
    /// change live; see [`crate::reload`]. Never fails: a refused reload changes nothing and
    /// says why in the outcome, the log and the audit log.
    pub async fn reload(&self, path: Option<&std::path::Path>) -> crate::reload::Outcome {
        let out = crate::reload::run(&self.reload, &self.control, &self.state_dir, path).await;
        if let Err(e) = self.write_runtime_file() {
            tracing::warn!(error = %e, "runtime.json not updated after the reload");
        }
        out
    }

    /// Installs how the binary applies `log.level` on reload.
    pub fn set_log_hook(&self, hook: crate::reload::LogHook) {
        self.reload.set_log_hook(hook);
    }

    /// The systemd watchdog's health probe: the journal writer answers a flush (it is
    /// committing). A wedged disk or writer thread makes it hang, which the watchdog bounds.
    pub fn health_probe(
        &self,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static
    {
        let d = self.durable.clone();
        move || {
            let d = d.clone();
            Box::pin(async move { d.journal.flush().await.is_ok() })
        }
    }

    /// One line for systemd's `STATUS=`: tenants, sessions, retries and the audit log.
    pub fn status_line(&self) -> String {
        let lag = self
            .audit_pipeline
            .sink_lag()
            .into_iter()
            .map(|(_, l)| l)
            .max()
            .unwrap_or(0);
        format!(
            "{} workspaces, {} device sessions, {} messages waiting to retry; audit seq {}, slowest sink {} behind",
            self.control.registry.len(),
            self.sessions.len(),
            self.durable.retry.len(),
            self.audit_pipeline.head(),
            lag
        )
    }

    /// Starts draining: no new connections, GOODBYE to clients, reports flushed.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the listener has drained and closed.
    ///
    /// Then stops the retry scheduler (the journal keeps every schedule), closes the device
    /// sessions and makes every journal record durable. Sends still in flight upstream at
    /// that moment stay unfinished in the journal and are resent, under the same upstream id,
    /// after the next start.
    pub async fn wait(self) {
        let _ = self.serve.await;
        if let Some(h) = self.http {
            let _ = h.await;
        }
        let _ = self.scheduler_stop.send(());
        let _ = self.scheduler.await;
        self.sessions.close_all();
        self.webhooks.shutdown();
        if let Err(e) = self.durable.journal.flush().await {
            tracing::error!(error = %e, "final journal flush failed");
        }
        // Aggregates last (they count until the listeners close), then the log itself:
        // audit.stop, a final digest, and up to a few seconds for the sinks to catch up.
        self.audit_stop.cancel();
        let _ = self.audit_aggregator.await;
        drop(self.audit);
        self.audit_pipeline.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_file(self.state_dir.join("runtime.json"));
    }
}

/// Opens the journal (replaying it), rebuilds the idempotency index and creates the retry queue.
async fn open_durable(
    cfg: &Config,
    state_dir: &std::path::Path,
    sealer: Arc<dyn waping_journal::RecordSealer>,
) -> anyhow::Result<(Arc<Durable>, RetryQueue<MessageId, RetryItem>, Recovered)> {
    let dir = state_dir.join("journal");
    let mut jcfg = cfg.journal.to_journal_config();
    jcfg.sealer = Some(sealer);
    // Delivery records (message status) live in the journal's status index; the node's
    // default window bounds it (a workspace's own shorter window is not applied there yet).
    jcfg.status_retention = Duration::from_secs(u64::from(cfg.retention.delivery_records_days) * 86_400);
    let open_dir = dir.clone();
    // Replay reads every segment: blocking IO, off the async workers.
    let (journal, recovered) = tokio::task::spawn_blocking(move || Journal::open(&open_dir, jcfg))
        .await
        .context("journal replay task")?
        .with_context(|| format!("opening the journal in {}", dir.display()))?;
    let st = &recovered.stats;
    tracing::info!(
        dir = %dir.display(),
        records = st.records,
        bytes = st.bytes,
        segments = st.segments,
        unfinished = recovered.unfinished.len(),
        dead_letters = recovered.dead.len(),
        idempotency_keys = recovered.idempotency.len(),
        torn_tail_bytes = st.torn_tail_truncated_bytes,
        elapsed_ms = st.elapsed.as_millis() as u64,
        "journal replayed"
    );
    for c in &recovered.corruptions {
        tracing::error!(segment = c.segment, path = %c.path.display(), offset = c.offset, reason = %c.reason, "journal corruption");
    }
    if cfg.journal.refuse_on_corruption && !recovered.corruptions.is_empty() {
        anyhow::bail!(
            "the journal in {} has {} corrupted range(s) (first: segment {} offset {}); \
             refusing to start because journal.refuse_on_corruption = true",
            dir.display(),
            recovered.corruptions.len(),
            recovered.corruptions[0].segment,
            recovered.corruptions[0].offset
        );
    }
    let idem = Arc::new(IdempotencyIndex::new(
        cfg.journal.idempotency_window_s * 1000,
        cfg.journal.idempotency_capacity as usize,
    ));
    // Finished messages in the window, and every unfinished or dead one: a resend of any of
    // them must get the original id.
    let window_ms = cfg.journal.idempotency_window_s * 1000;
    let mut keys: Vec<_> = recovered.idempotency_keys(crate::unix_ms(), window_ms).collect();
    // The index keeps at most `idempotency_capacity` keys; restoring more would only build
    // memory the first sweep frees again. The newest win, as they would have at run time.
    keys.sort_unstable_by_key(|k| k.accepted_at_ms);
    let skip = keys
        .len()
        .saturating_sub(cfg.journal.idempotency_capacity as usize);
    for k in &keys[skip..] {
        idem.restore(k.workspace, k.idempotency_key, k.id, k.accepted_at_ms);
    }
    drop(keys);
    let policy = RetryPolicy::from_config(&cfg.retry)
        .map_err(|e| anyhow::anyhow!("retry: {}", e.problems.join("; ")))?;
    let queue = RetryQueue::new(policy.capacity());
    let durable = Arc::new(Durable {
        journal: Arc::new(journal),
        idem,
        retry: queue.handle(),
        policy: Arc::new(policy),
        clock: MonotonicClock::new(),
    });
    Ok((durable, queue, recovered))
}

/// Runs the retry queue: due messages go back to their device session.
async fn run_retries(
    queue: RetryQueue<MessageId, RetryItem>,
    durable: Arc<Durable>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let clock = durable.clock;
    let retry = durable.retry.clone();
    let sink = move |e: crate::retry::Expired<MessageId, RetryItem>| {
        let RetryItem { session, msg } = e.item;
        let id = msg.id;
        match session.submit(msg) {
            Ok(()) => {}
            // The device queue is full: try again shortly rather than dropping or blocking.
            Err(SubmitError::Busy(msg)) => {
                let due = Nanos(clock.now().0 + 100_000_000);
                if let Err(full) = retry.schedule(id, RetryItem { session, msg: *msg }, due) {
                    tracing::warn!(message = %full.key, "retry queue full while requeueing; the journal keeps the message for the next start");
                }
            }
            // Shutting down: the journal keeps it unfinished.
            Err(SubmitError::Stopped(_)) => {}
        }
    };
    let _pending = crate::retry::run_scheduler(queue, move || clock.now(), sink, async {
        let _ = stop.await;
    })
    .await;
}

/// Puts what the journal says is unfinished back to work.
fn resume(
    recovered: Recovered,
    registry: &Registry,
    sessions: &SessionManager,
    durable: &Arc<Durable>,
    metrics: &Metrics,
) {
    let now_ms = crate::unix_ms();
    let now = durable.clock.now();
    let mut feeds: std::collections::HashMap<(u32, String), (Arc<SessionHandle>, Vec<Outbound>)> =
        std::collections::HashMap::new();
    let n = recovered.unfinished.len();
    for p in recovered.unfinished {
        let m = p.message;
        let session = registry
            .by_id(&m.workspace)
            .and_then(|ws| sessions.get(ws.idx, &Text::from(m.device.as_str())));
        let Some(session) = session else {
            // The device was removed from the configuration while the message waited.
            metrics.dead.increment(1);
            durable.note(vec![Record::Dead {
                id: m.id,
                attempts: p.attempts,
                last_code: ErrorCode::UNKNOWN_DEVICE.0,
                last_detail: format!(
                    "device {:?} of workspace {:?} is no longer configured",
                    m.device, m.workspace
                ),
                at_ms: now_ms,
            }]);
            continue;
        };
        let out = Outbound {
            id: m.id,
            seq: 0,
            recipient: Text::from(m.recipient),
            body: pbody(m.body),
            reply: None,
            attempts: p.attempts,
            // The journal keeps the acceptance time, not the first attempt's: the retry age
            // counts from acceptance for recovered messages, which is never later.
            first_attempt_ms: if p.attempts > 0 { m.accepted_at_ms } else { 0 },
        };
        match p.state {
            PendingState::RetryWait { due_at_ms, .. } => {
                let due = crate::retry::due_from_unix_ms(due_at_ms, now_ms, now);
                let id = out.id;
                if let Err(full) = durable.retry.schedule(id, RetryItem { session, msg: out }, due) {
                    metrics.dead.increment(1);
                    durable.note(vec![Record::Dead {
                        id: full.key,
                        attempts: p.attempts,
                        last_code: ErrorCode::OVERLOADED.0,
                        last_detail: "retry queue full at start".into(),
                        at_ms: now_ms,
                    }]);
                }
            }
            PendingState::Queued | PendingState::InFlight { .. } => {
                let key = (session.workspace.idx.0, session.device.as_str().to_owned());
                feeds
                    .entry(key)
                    .or_insert_with(|| (session.clone(), Vec::new()))
                    .1
                    .push(out);
            }
        }
    }
    metrics.recovered.increment(n as u64);
    // One feeder per device, in accept order; it waits for queue room, so a backlog larger
    // than the queue drains at the device's pace while new sends share the queue with it.
    for (_, (session, msgs)) in feeds {
        tokio::spawn(async move {
            for m in msgs {
                if session.submit_wait(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Once a second: expire idempotency keys and publish the durable core's gauges.
async fn housekeeping(durable: Arc<Durable>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = waping_journal::JournalStats::default();
    let mut last_idem = crate::idempotency::IndexStats {
        len: 0,
        evicted_capacity: 0,
        evicted_window: 0,
    };
    loop {
        tick.tick().await;
        durable.idem.expire(crate::unix_ms());
        let st = durable.journal.stats();
        counter!("waping_journal_syncs_total").increment(st.syncs.saturating_sub(last.syncs));
        crate::metrics::record_journal_syncs(&last.sync_latency, &st.sync_latency);
        crate::metrics::record_process_memory();
        counter!("waping_journal_records_total").increment(st.records.saturating_sub(last.records));
        counter!("waping_journal_bytes_total").increment(st.bytes.saturating_sub(last.bytes));
        counter!("waping_journal_overloaded_total").increment(st.overloaded.saturating_sub(last.overloaded));
        counter!("waping_journal_compactions_total")
            .increment(st.compactions.saturating_sub(last.compactions));
        gauge!("waping_journal_queued_bytes").set(st.queued_bytes as f64);
        gauge!("waping_journal_disk_bytes").set(st.disk_bytes as f64);
        gauge!("waping_journal_retention_pending_segments").set(st.retention_pending_segments as f64);
        gauge!("waping_retry_queue_len").set(durable.retry.len() as f64);
        let is = durable.idem.stats();
        gauge!("waping_idempotency_keys").set(is.len as f64);
        counter!("waping_idempotency_evicted_total", "cause" => "window")
            .increment(is.evicted_window.saturating_sub(last_idem.evicted_window));
        counter!("waping_idempotency_evicted_total", "cause" => "capacity")
            .increment(is.evicted_capacity.saturating_sub(last_idem.evicted_capacity));
        last = st;
        last_idem = is;
    }
}
