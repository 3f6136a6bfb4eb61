//! Webhook delivery: events owed to endpoints are made durable in the event store, then one
//! worker per endpoint delivers them (signed, retried, dead-lettered).
//!
//! - **Producing.** Every workspace event (`Workspace::publish`) is offered to
//!   [`Webhooks`]; if an enabled endpoint of the workspace wants its type, the event is
//!   queued for the event store with the endpoints it is owed to, in the same transaction
//!   (`waping_events::EventStore::append`). Inbound messages take the awaited path
//!   ([`Webhooks::publish_durable`]) so WhatsApp is acknowledged only once the event is on
//!   disk. An event no endpoint wants costs one map lookup.
//! - **Delivering.** A worker per endpoint reads its due rows in event order, resolves the
//!   URL through the SSRF guard (once per batch, connecting only to the checked addresses),
//!   asks the endpoint's circuit breaker, signs (Standard Webhooks), posts, classifies the
//!   answer and records the outcome: delivered, retry at the schedule's next time (honouring
//!   `Retry-After`), dead, or endpoint disabled (410). At most `max_concurrency` requests are
//!   in flight per endpoint, so a slow endpoint delays nobody else. With `ordered`, a device's
//!   next event waits until its previous one is finished.
//! - **Crash.** Rows are deleted only after a 2xx; a `kill -9` between the answer and the
//!   record resends the event with the same `webhook-id`, which receivers deduplicate on.

pub mod config;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use metrics::{counter, gauge};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use waping_events::{self as m, DeadSelector, Event, EventData, EventStore, EventType, NewEvent, Outcome};
use waping_protocol::EventKind;
use waping_webhooks::{Breaker, Plan, Policy, Schedule, Secret, Signer, TlsClient};

use crate::control::Control;
use crate::control::webhooks::{DeadDelivery, WebhookRecord, WebhookRuntime, endpoint_id};
use crate::workspace::Workspace;
pub use config::WebhooksConfig;

/// Events queued for the event store before producers are told to slow down (inbound) or
/// the event is counted as dropped (the send pipeline never waits on webhooks).
const QUEUE: usize = 65_536;
/// Most events per append.
const BATCH: usize = 4096;
/// How long a batch without waiters may wait to fill up (see `Webhooks::writer`). 10 ms:
/// at full load the commits' fsyncs took ~36 % of the store's writer thread (profile in
/// BENCHMARKS.md), and a status event reaching a webhook 10 ms later is not noticed.
const LINGER: Duration = Duration::from_millis(10);
/// Owed rows a worker looks at per read.
const WINDOW: usize = 256;
/// Log events a worker reads ahead of its requests.
const READ_AHEAD: usize = 256;

/// One endpoint at run time.
#[derive(Debug)]
struct Endpoint {
    num: u64,
    rec: ArcSwap<WebhookRecord>,
    secrets: ArcSwap<Vec<Secret>>,
    types: ArcSwap<HashSet<String>>,
    wake: Notify,
    stop: CancellationToken,
    breaker: Mutex<Breaker>,
    /// Idle keep-alive connections to the endpoint's checked addresses.
    pool: Arc<waping_webhooks::ConnPool>,
}

struct Queued {
    event: Event,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The webhook runtime: the event store, the endpoint index and the delivery workers.
pub struct Webhooks {
    store: EventStore,
    cfg: WebhooksConfig,
    policy: Policy,
    schedule: Schedule,
    tls: TlsClient,
    endpoints: DashMap<u64, Arc<Endpoint>>,
    /// Enabled endpoints per workspace: what `publish` consults on every event.
    index: ArcSwap<HashMap<String, Vec<Arc<Endpoint>>>>,
    queue: mpsc::Sender<Queued>,
    queue_rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    control: OnceLock<Weak<Control>>,
    stop: CancellationToken,
    me: Weak<Webhooks>,
    dropped: std::sync::atomic::AtomicU64,
    dropped_logged_s: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Opens `state_dir/events.redb` and prepares the runtime; nothing runs until
    /// [`Webhooks::start`].
    pub fn open(
        cfg: &WebhooksConfig,
        state_dir: &std::path::Path,
        sealer: Arc<dyn waping_journal::RecordSealer>,
    ) -> anyhow::Result<Arc<Webhooks>> {
        use anyhow::Context as _;
        let path = state_dir.join("events.redb");
        let store = EventStore::open(
            &path,
            waping_events::StoreOptions {
                sealer: Some(sealer),
                ..Default::default()
            },
        )
        .with_context(|| format!("opening the event store {}", path.display()))?;
        let tls = match &cfg.extra_ca_file {
            Some(p) => TlsClient::with_extra_ca(p)
                .with_context(|| format!("webhooks.extra_ca_file {}", p.display()))?,
            None => TlsClient::new().context("webhook TLS client")?,
        };
        let schedule = cfg
            .schedule()
            .map_err(|e| anyhow::anyhow!("webhooks.retry_schedule_s: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Arc::new_cyclic(|me| Webhooks {
            me: me.clone(),
            dropped: std::sync::atomic::AtomicU64::new(0),
            dropped_logged_s: std::sync::atomic::AtomicU64::new(0),
            store,
            policy: cfg.policy(),
            cfg: cfg.clone(),
            schedule,
            tls,
            endpoints: DashMap::new(),
            index: ArcSwap::from_pointee(HashMap::new()),
            queue: tx,
            queue_rx: Mutex::new(Some(rx)),
            control: OnceLock::new(),
            stop: CancellationToken::new(),
        }))
    }

    /// Loads every endpoint from the control plane and starts the writer, the workers and
    /// the retention sweep.
    pub fn start(self: &Arc<Self>, control: &Arc<Control>) {
        let _ = self.control.set(Arc::downgrade(control));
        control.set_webhook_runtime(self.clone());
        for (rec, secrets) in control.webhook_records() {
            self.upsert(&rec, secrets);
        }
        if let Some(rx) = self.queue_rx.lock().expect("queue lock").take() {
            tokio::spawn(self.clone().writer(rx));
        }
        tokio::spawn(self.clone().sweeper());
    }

    /// Stops the workers (deliveries in flight are not recorded and are resent after start).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Endpoints of `ws` that want `t` and existed at `at_ms` (an endpoint gets no events
    /// from before its creation, also when a restart replays them).
    fn matching(&self, ws: &str, t: EventType, at_ms: u64) -> Vec<u64> {
        let idx = self.index.load();
        match idx.get(ws) {
            None => Vec::new(),
            Some(eps) => eps
                .iter()
                .filter(|e| {
                    let types = e.types.load();
                    (types.is_empty() || types.contains(t.as_str()))
                        && e.rec.load().created_at_ms <= at_ms.saturating_add(1000)
                })
                .map(|e| e.num)
                .collect(),
        }
    }

    /// Replays into the event store the `message.status` of messages that finished in the
    /// last `window`, from the journal: a crash between a REPORT and the commit of its status
    /// event would otherwise lose the event. Status events have ids derived from the message
    /// and the status, so the ones already stored are skipped.
    pub async fn replay_finished(&self, journal: &waping_journal::Journal, window: Duration) -> usize {
        let since = crate::unix_ms().saturating_sub(window.as_millis() as u64);
        let finished = match journal.finished_since(since, 200_000).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing finished messages for status events");
                return 0;
            }
        };
        // Status events have no id index (one per sent message: too costly); the ones
        // stored in the window are looked up in the newest log rows instead.
        let stored = match self.store.recent_ids(EventType::MessageStatus, since, 20_000) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "reading the newest status events");
                HashSet::new()
            }
        };
        let mut waits = Vec::new();
        for st in finished {
            let (status, upstream_id, error) = match st.state {
                waping_journal::StatusState::Sent { upstream_id } => (
                    m::DeliveryStatus::Sent,
                    (!upstream_id.is_empty()).then_some(upstream_id),
                    None,
                ),
                waping_journal::StatusState::Failed { code } => {
                    let c = waping_protocol::ErrorCode(code);
                    (
                        m::DeliveryStatus::Failed,
                        None,
                        Some(m::ErrorInfo {
                            code,
                            name: c.name().to_string(),
                            detail: None,
                        }),
                    )
                }
                _ => continue,
            };
            if !self.cfg.log_all_events
                && self
                    .matching(&st.workspace, EventType::MessageStatus, st.updated_at_ms)
                    .is_empty()
            {
                continue;
            }
            let message_id = MessageIdHex(st.id.0).to_string();
            if stored.contains(&status_event_id(&message_id, status)) {
                continue;
            }
            let mut e = Event::new(
                st.workspace.clone(),
                Some(st.device.clone()),
                st.updated_at_ms,
                EventData::MessageStatus(m::MessageStatus {
                    message_id: message_id.clone(),
                    status,
                    upstream_id,
                    error,
                }),
            );
            e.id = status_event_id(&message_id, status);
            let (tx, rx) = oneshot::channel();
            if self
                .queue
                .send(Queued {
                    event: e,
                    done: Some(tx),
                })
                .await
                .is_err()
            {
                break;
            }
            waits.push(rx);
        }
        let n = waits.len();
        for w in waits {
            let _ = w.await;
        }
        n
    }

    /// Queues an event for the endpoints that want it, without waiting (the send pipeline
    /// calls this). A full queue drops the event, counted and logged: the event store is
    /// then far behind the node, and the pipeline must not stall on webhooks.
    pub fn offer(&self, event: Event) {
        if !self.cfg.log_all_events
            && self
                .matching(&event.workspace, event.kind(), event.at_ms)
                .is_empty()
        {
            return;
        }
        if self.queue.try_send(Queued { event, done: None }).is_err() {
            counter!("waping_events_dropped_total").increment(1);
            // One line per second at most: at full load drops come by the tens of thousands
            // per second, and a line each cost 3-7 % of the node's CPU (BENCHMARKS.md).
            let n = self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let now_s = crate::unix_ms() / 1000;
            let last = self.dropped_logged_s.load(std::sync::atomic::Ordering::Relaxed);
            if now_s > last
                && self
                    .dropped_logged_s
                    .compare_exchange(
                        last,
                        now_s,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::error!(
                    dropped_total = n,
                    "event queue full: events not stored for webhooks (the event store is behind; see waping_events_dropped_total)"
                );
            }
        }
    }

    /// Queues an event and waits until it is durable (inbound messages: WhatsApp is
    /// acknowledged after this). Returns at once when no endpoint wants it.
    pub async fn publish_durable(&self, event: Event) -> Result<(), String> {
        if !self.cfg.log_all_events
            && self
                .matching(&event.workspace, event.kind(), event.at_ms)
                .is_empty()
        {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Queued {
                event,
                done: Some(tx),
            })
            .await
            .map_err(|_| "event writer stopped".to_string())?;
        rx.await.map_err(|_| "event writer stopped".to_string())?
    }

    /// Drains the queue into the store in batches. Workers follow the log's head; nothing
    /// to wake here.
    async fn writer(self: Arc<Self>, mut rx: mpsc::Receiver<Queued>) {
        let mut buf = Vec::with_capacity(BATCH);
        let appended: Vec<metrics::Counter> = EventType::ALL
            .iter()
            .map(|t| counter!("waping_events_appended_total", "type" => t.as_str()))
            .collect();
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut buf, BATCH) => n,
                _ = self.stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            // Nobody waits on these (statuses, device events): give the batch up to LINGER to
            // fill, so a busy node commits (and fsyncs) the log a few dozen times a second,
            // not hundreds. An inbound message (WhatsApp waits for its ack) ends the wait.
            if buf.iter().all(|q| q.done.is_none()) {
                let deadline = tokio::time::Instant::now() + LINGER;
                while buf.len() < BATCH {
                    let before = buf.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, BATCH - before)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) if buf[before..].iter().any(|q| q.done.is_some()) => break,
                        Ok(_) => {}
                    }
                }
            }
            let mut batch = Vec::with_capacity(buf.len());
            let mut waiters = Vec::new();
            let mut per_type = [0u64; EventType::ALL.len()];
            for q in buf.drain(..) {
                if let Some(i) = EventType::ALL.iter().position(|t| *t == q.event.kind()) {
                    per_type[i] += 1;
                }
                batch.push(NewEvent {
                    event: q.event,
                    endpoints: Vec::new(),
                });
                if let Some(d) = q.done {
                    waiters.push(d);
                }
            }
            let result = self
                .store
                .append(batch)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            match &result {
                Ok(()) => {
                    for (c, n) in appended.iter().zip(per_type) {
                        if n > 0 {
                            c.increment(n);
                        }
                    }
                }
                Err(e) => {
                    counter!("waping_events_append_errors_total").increment(1);
                    tracing::error!(error = %e, "appending events failed");
                }
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    /// Once a minute: expire deliveries older than the store's limit, drop delivered events
    /// past retention, and publish gauges.
    async fn sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            let now = crate::unix_ms();
            let cutoff = now.saturating_sub(u64::from(self.cfg.event_retention_hours) * 3_600_000);
            match self.store.sweep(cutoff, now).await {
                Ok(r) => {
                    counter!("waping_webhook_deliveries_total", "result" => "expired").increment(r.expired);
                }
                Err(e) => tracing::warn!(error = %e, "event store sweep failed"),
            }
            if let Ok(st) = self.store.stats() {
                gauge!("waping_webhook_pending").set(st.pending as f64);
                gauge!("waping_webhook_dead").set(st.dead as f64);
                gauge!("waping_events_log_rows").set(st.rows as f64);
                gauge!("waping_events_store_bytes").set(st.file_bytes as f64);
            }
        }
    }

    fn rebuild_index(&self) {
        let mut idx: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
        for e in self.endpoints.iter() {
            let rec = e.rec.load();
            if rec.enabled {
                idx.entry(rec.workspace.clone())
                    .or_default()
                    .push(e.value().clone());
            }
        }
        self.index.store(Arc::new(idx));
    }

    /// One endpoint's worker: a sliding window of at most `max_concurrency` requests over the
    /// endpoint's owed deliveries (first) and the workspace's log after its cursor. The
    /// cursor moves, in the same durable commit as the outcomes, to just before the oldest
    /// log event still in flight; a failed log event becomes an owed delivery in that same
    /// commit, so nothing is skipped by a crash, and what was in flight is resent after one.
    async fn worker(self: Arc<Self>, ep: Arc<Endpoint>) {
        let mut w = match Window::open(&self, &ep).await {
            Some(w) => w,
            None => return,
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
        let mut head = self.store.watch_head();
        let mut inflight: tokio::task::JoinSet<Attempt> = tokio::task::JoinSet::new();
        let mut last_flush = std::time::Instant::now();
        loop {
            if ep.stop.is_cancelled() || self.stop.is_cancelled() {
                // Nothing in flight is recorded: it is resent after start.
                inflight.abort_all();
                return;
            }
            let now = crate::unix_ms();
            let rec = ep.rec.load_full();
            w.next_owed = self.store.next_owed_due(ep.num).unwrap_or(None);
            if rec.enabled {
                self.fill(&ep, &rec, &mut w, &mut inflight, now, &mut rng).await;
            }
            // Record when there is something to record and either enough of it, a quiet
            // moment, or 20 ms since the last commit: one fsync per burst, not per answer.
            let flush_due = !w.outcomes.is_empty() || w.advance_to() > w.cursor;
            if flush_due
                && (w.outcomes.len() >= 64
                    || inflight.is_empty()
                    || last_flush.elapsed() >= Duration::from_millis(20))
            {
                self.flush(&ep, &mut w).await;
                last_flush = std::time::Instant::now();
                continue;
            }
            let mut wait = Duration::from_secs(60);
            if rec.enabled {
                if let Some(due) = w.next_owed {
                    wait = wait.min(Duration::from_millis(due.saturating_sub(now)));
                }
                if let Some(until) = ep.breaker.lock().expect("breaker").open_until() {
                    wait = wait.max(Duration::from_millis(until.saturating_sub(now)));
                }
            }
            if flush_due {
                wait = wait.min(Duration::from_millis(20));
            }
            let read_log = rec.enabled && w.room(&self.cfg, inflight.len()) && !w.log_blocked;
            tokio::select! {
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(a) = joined {
                        self.settle(&ep, &rec, &mut w, a, &mut rng);
                    }
                }
                _ = head.changed(), if read_log => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(2))) => {}
                _ = ep.wake.notified() => {}
                _ = ep.stop.cancelled() => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    /// Starts requests while there is room: due owed deliveries first, then the log.
    async fn fill(
        &self,
        ep: &Arc<Endpoint>,
        rec: &Arc<WebhookRecord>,
        w: &mut Window,
        inflight: &mut tokio::task::JoinSet<Attempt>,
        now: u64,
        rng: &mut rand::rngs::StdRng,
    ) {
        if !w.room(&self.cfg, inflight.len()) {
            return;
        }
        let target = match self.target(rec, w, now).await {
            Ok(t) => t,
            Err(error) => {
                // URL refused or the name does not resolve to an allowed address: every due
                // delivery fails this attempt (the schedule decides when to try again).
                if let Ok(rows) = self.store.owed_due(ep.num, now, 64) {
                    for p in rows.into_iter().filter(|p| !w.owed_inflight.contains(&p.seq)) {
                        let o = self.failed(ep, &p, now, error.clone(), rng);
                        w.outcomes.push(o);
                    }
                }
                return;
            }
        };
        let ordered = rec.ordered;
        // Owed deliveries (retries, replays, out-of-filter, queued behind their device).
        if w.owed_possible(now) {
            let rows = if ordered {
                self.store.owed(ep.num, 0, WINDOW)
            } else {
                self.store.owed_due(ep.num, now, WINDOW)
            };
            match rows {
                Ok(rows) => {
                    w.note_owed(&rows, ordered);
                    let mut first_of_device: HashSet<Option<String>> = HashSet::new();
                    for p in rows {
                        if !w.room(&self.cfg, inflight.len()) {
                            break;
                        }
                        let device = p.device.clone();
                        let first = first_of_device.insert(device.clone());
                        if w.owed_inflight.contains(&p.seq) || p.due_ms > now {
                            continue;
                        }
                        if ordered && (!first || w.busy.contains_key(&device)) {
                            continue;
                        }
                        // An earlier event of the device that failed since the last commit
                        // is not in the store's owed rows yet: it goes first.
                        if ordered
                            && w.outcomes.iter().any(|o| {
                                matches!(o, Outcome::Retry { seq, device: d, .. } if *d == device && *seq < p.seq)
                            })
                        {
                            continue;
                        }
                        if !ep.breaker.lock().expect("breaker").allow(now) {
                            return;
                        }
                        match p.event {
                            Ok(event) => {
                                w.owed_inflight.insert(p.seq);
                                w.start(
                                    ep,
                                    &target,
                                    &self.tls,
                                    self.timeout(),
                                    inflight,
                                    Source::Owed { attempts: p.attempts },
                                    p.seq,
                                    event,
                                );
                            }
                            Err(e) => w.outcomes.push(Outcome::Dead {
                                endpoint: ep.num,
                                seq: p.seq,
                                attempts: p.attempts,
                                error: format!("event unreadable: {e}"),
                                at_ms: now,
                            }),
                        }
                    }
                }
                Err(e) => tracing::error!(endpoint = %rec.id, error = %e, "reading owed deliveries"),
            }
        }
        // The log after what was read so far, through a read-ahead buffer: a log row holds
        // up to 512 events sealed together, so reading it again for every freed slot would
        // open the whole row per delivery.
        if w.log_blocked || !w.room(&self.cfg, inflight.len()) {
            return;
        }
        if w.ahead.is_empty() {
            w.read_pos = w.read_pos.max(w.scan_pos);
            if w.read_pos >= self.store.head() {
                return;
            }
            let types = ep.types.load_full();
            let want = |t: EventType, _d: Option<&str>| types.is_empty() || types.contains(t.as_str());
            match self.store.scan(&rec.workspace, w.read_pos, READ_AHEAD, &want) {
                Ok(page) => {
                    w.scan_pos = page.through;
                    w.ahead.extend(page.events);
                }
                Err(e) => {
                    tracing::error!(endpoint = %rec.id, error = %e, "reading the event log");
                    return;
                }
            }
        }
        let expire_before = now.saturating_sub(self.max_age_ms());
        while w.room(&self.cfg, inflight.len()) {
            let Some(s) = w.ahead.pop_front() else { break };
            let event = match s.event {
                Ok(e) => e,
                Err(e) => {
                    w.read_pos = s.seq;
                    w.outcomes.push(Outcome::Dead {
                        endpoint: ep.num,
                        seq: s.seq,
                        attempts: 0,
                        error: format!("event unreadable: {e}"),
                        at_ms: now,
                    });
                    continue;
                }
            };
            if event.at_ms < expire_before {
                w.read_pos = s.seq;
                w.outcomes.push(Outcome::Dead {
                    endpoint: ep.num,
                    seq: s.seq,
                    attempts: 0,
                    error: "expired: older than the age limit before it could be sent".into(),
                    at_ms: now,
                });
                continue;
            }
            if ordered && (w.blocked.contains(&event.device) || w.busy.contains_key(&event.device)) {
                // Behind its device's retry or in-flight request: owed, in order.
                w.read_pos = s.seq;
                w.blocked.insert(event.device.clone());
                w.outcomes.push(Outcome::Retry {
                    endpoint: ep.num,
                    seq: s.seq,
                    attempts: 0,
                    due_ms: now,
                    since_ms: event.at_ms,
                    device: event.device.clone(),
                    error: String::new(),
                });
                continue;
            }
            if !ep.breaker.lock().expect("breaker").allow(now) {
                // Not sent: it waits at the front until the breaker lets requests through.
                w.ahead.push_front(waping_events::Stored {
                    seq: s.seq,
                    event: Ok(event),
                });
                break;
            }
            w.read_pos = s.seq;
            w.window.insert(s.seq);
            w.start(
                ep,
                &target,
                &self.tls,
                self.timeout(),
                inflight,
                Source::Log,
                s.seq,
                event,
            );
        }
        if w.ahead.is_empty() {
            // Events the filter refused after the last one kept are passed too.
            w.read_pos = w.read_pos.max(w.scan_pos);
        }
    }

    /// The endpoint's URL and checked addresses: resolved through the SSRF guard at most
    /// every 30 s (and whenever the URL changes or a connection failed), and connected to
    /// only at those addresses.
    async fn target(&self, rec: &WebhookRecord, w: &mut Window, now: u64) -> Result<Arc<Target>, String> {
        if let Some(t) = &w.target
            && t.url_text == rec.url
            && now < t.resolved_ms.saturating_add(30_000)
        {
            return Ok(t.clone());
        }
        let url =
            waping_webhooks::EndpointUrl::parse(&rec.url, &self.policy).map_err(|e| format!("url: {e}"))?;
        let addrs = match tokio::time::timeout(
            Duration::from_secs(10),
            waping_webhooks::resolve_and_check(&url, &self.policy),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(format!("address: {e}")),
            Err(_) => return Err("address: resolution timed out".into()),
        };
        let t = Arc::new(Target {
            url_text: rec.url.clone(),
            url,
            addrs,
            resolved_ms: now,
        });
        w.target = Some(t.clone());
        Ok(t)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    fn max_age_ms(&self) -> u64 {
        waping_events::StoreOptions::default().max_age_ms
    }

    /// Turns an answer into an outcome (and breaker news), queued for the next commit.
    fn settle(
        &self,
        ep: &Arc<Endpoint>,
        rec: &Arc<WebhookRecord>,
        w: &mut Window,
        a: Attempt,
        rng: &mut rand::rngs::StdRng,
    ) {
        metrics::histogram!(crate::metrics::WEBHOOK_REQUEST_SECONDS).record(a.took.as_secs_f64());
        let now = crate::unix_ms();
        let attempts_before = match a.source {
            Source::Log => 0,
            Source::Owed { attempts } => attempts,
        };
        let attempt = attempts_before + 1;
        let (verdict, retry_after, error) = match &a.result {
            Ok(resp) => (
                waping_webhooks::classify_status(resp.status),
                resp.retry_after,
                format!("HTTP {}", resp.status),
            ),
            Err(e) => (e.verdict(), None, e.to_string()),
        };
        if a.result.is_err() {
            // A connection failure may mean the name moved: resolve again next time.
            w.target = None;
        }
        let plan = self.schedule.plan(verdict, attempt, now, retry_after, rng);
        {
            let mut b = ep.breaker.lock().expect("breaker");
            match verdict {
                waping_webhooks::Verdict::Delivered => b.on_success(now),
                waping_webhooks::Verdict::SlowDown => {
                    b.on_failure(now, Some(retry_after.unwrap_or_default()))
                }
                waping_webhooks::Verdict::DisableEndpoint | waping_webhooks::Verdict::Permanent => {}
                waping_webhooks::Verdict::Retry => b.on_failure(now, None),
            }
        }
        match a.source {
            Source::Log => {
                w.window_done(a.seq);
            }
            Source::Owed { .. } => {
                w.owed_inflight.remove(&a.seq);
            }
        }
        w.release(&a.device);
        let retry = |due_ms: u64, error: String| Outcome::Retry {
            endpoint: ep.num,
            seq: a.seq,
            attempts: attempt,
            due_ms,
            since_ms: a.at_ms,
            device: a.device.clone(),
            error,
        };
        let outcome = match plan {
            Plan::Done => {
                w.counters.delivered.increment(1);
                match a.source {
                    Source::Log => None,
                    Source::Owed { .. } => Some(Outcome::Delivered {
                        endpoint: ep.num,
                        seq: a.seq,
                    }),
                }
            }
            Plan::RetryAt(due) => {
                w.counters.retry.increment(1);
                if rec.ordered {
                    w.blocked.insert(a.device.clone());
                }
                Some(retry(due, error))
            }
            Plan::GiveUp => {
                w.counters.dead.increment(1);
                Some(Outcome::Dead {
                    endpoint: ep.num,
                    seq: a.seq,
                    attempts: attempt,
                    error,
                    at_ms: now,
                })
            }
            Plan::DisableEndpoint => {
                w.counters.disabled.increment(1);
                self.disable(rec, "gone: the receiver answered 410");
                if rec.ordered {
                    w.blocked.insert(a.device.clone());
                }
                // Owed, due at once: re-enabling the endpoint resumes from here.
                Some(retry(now, error))
            }
        };
        if let Some(o) = outcome {
            w.outcomes.push(o);
        }
    }

    /// Commits the queued outcomes and the cursor's move in one durable write.
    async fn flush(&self, ep: &Endpoint, w: &mut Window) {
        let to = w.advance_to();
        let mut batch = std::mem::take(&mut w.outcomes);
        if to > w.cursor {
            batch.push(Outcome::Advance {
                endpoint: ep.num,
                to_seq: to,
            });
        }
        match self.store.record(batch.clone()).await {
            Ok(_) => {
                w.cursor = w.cursor.max(to);
                if ep.rec.load().ordered {
                    // Owed rows finished: their devices may be free again.
                    w.refresh_blocked(&self.store, ep.num);
                }
            }
            Err(e) => {
                tracing::error!(endpoint = %endpoint_id(ep.num), error = %e, "recording delivery outcomes");
                batch.retain(|o| !matches!(o, Outcome::Advance { .. }));
                w.outcomes = batch;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// An attempt that failed before a request was made (URL or address refused).
    fn failed(
        &self,
        ep: &Endpoint,
        p: &waping_events::Pending,
        now: u64,
        error: String,
        rng: &mut rand::rngs::StdRng,
    ) -> Outcome {
        let attempt = p.attempts + 1;
        match self
            .schedule
            .plan(waping_webhooks::Verdict::Retry, attempt, now, None, rng)
        {
            Plan::RetryAt(due) => Outcome::Retry {
                endpoint: ep.num,
                seq: p.seq,
                attempts: attempt,
                due_ms: due,
                since_ms: p.since_ms,
                device: p.device.clone(),
                error,
            },
            _ => Outcome::Dead {
                endpoint: ep.num,
                seq: p.seq,
                attempts: attempt,
                error,
                at_ms: now,
            },
        }
    }

    /// 410 Gone: the endpoint is disabled (recorded, audited) and the workspace told.
    fn disable(&self, rec: &WebhookRecord, reason: &str) {
        let Some(control) = self.control.get().and_then(Weak::upgrade) else {
            return;
        };
        if control
            .disable_webhook_by_gateway(&rec.workspace, &rec.id, reason)
            .is_none()
        {
            return;
        }
        tracing::warn!(endpoint = %rec.id, workspace = %rec.workspace, "webhook endpoint disabled: {reason}");
        let ev = Event::new(
            rec.workspace.clone(),
            None,
            crate::unix_ms(),
            EventData::WebhookEndpointDisabled(m::EndpointDisabled {
                endpoint_id: rec.id.clone(),
                reason: m::DisableReason::Gone,
                http_status: Some(410),
                detail: None,
            }),
        );
        self.offer(ev);
    }
}

impl WebhookRuntime for Webhooks {
    fn upsert(&self, rec: &WebhookRecord, secrets: Vec<Secret>) {
        let num = rec.num();
        let types: HashSet<String> = rec.event_types.iter().cloned().collect();
        match self.endpoints.get(&num).map(|e| e.value().clone()) {
            Some(ep) => {
                ep.rec.store(Arc::new(rec.clone()));
                ep.secrets.store(Arc::new(secrets));
                ep.types.store(Arc::new(types));
                ep.wake.notify_one();
            }
            None => {
                let ep = Arc::new(Endpoint {
                    num,
                    rec: ArcSwap::from_pointee(rec.clone()),
                    secrets: ArcSwap::from_pointee(secrets),
                    types: ArcSwap::from_pointee(types),
                    wake: Notify::new(),
                    stop: self.stop.child_token(),
                    breaker: Mutex::new(Breaker::new(self.cfg.breaker())),
                    pool: Arc::new(waping_webhooks::ConnPool::new(
                        self.cfg.max_concurrency as usize,
                        Duration::from_secs(30),
                    )),
                });
                self.endpoints.insert(num, ep.clone());
                if let Some(me) = self.self_arc() {
                    tokio::spawn(me.worker(ep));
                }
            }
        }
        self.rebuild_index();
    }

    fn remove(&self, rec: &WebhookRecord) {
        if let Some((_, ep)) = self.endpoints.remove(&rec.num()) {
            ep.stop.cancel();
        }
        self.rebuild_index();
        let store = self.store.clone();
        let num = rec.num();
        tokio::spawn(async move {
            if let Err(e) = store.remove_endpoint(num).await {
                tracing::error!(endpoint = %endpoint_id(num), error = %e, "removing a deleted endpoint's deliveries");
            }
        });
    }

    fn counts(&self, num: u64) -> (u64, u64) {
        match self.store.backlog(num) {
            Ok(b) => (b.unread + b.owed, b.dead),
            Err(e) => {
                tracing::warn!(endpoint = %endpoint_id(num), error = %e, "counting deliveries");
                (0, 0)
            }
        }
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn dead(&self, num: u64, limit: usize) -> Vec<DeadDelivery> {
        self.store
            .list_dead(num, 0, limit)
            .unwrap_or_default()
            .into_iter()
            .map(|d| DeadDelivery {
                event_id: d
                    .event
                    .as_ref()
                    .map_or_else(|_| String::new(), |e| e.id.to_string()),
                event_type: d
                    .event
                    .as_ref()
                    .map_or_else(|_| String::new(), |e| e.kind().as_str().to_string()),
                seq: d.seq,
                attempts: d.attempts,
                last_error: d.last_error,
                at_ms: d.at_ms,
            })
            .collect()
    }

    fn replay(&self, num: u64, seq: Option<u64>) -> Result<u64, String> {
        let which = seq.map_or(DeadSelector::All, DeadSelector::One);
        let store = self.store.clone();
        // Called from the control plane's blocking threads (`on_control`).
        let n = tokio::runtime::Handle::current()
            .block_on(store.replay_dead(num, which, crate::unix_ms()))
            .map_err(|e| e.to_string())?;
        if let Some(ep) = self.endpoints.get(&num) {
            ep.wake.notify_one();
        }
        Ok(n)
    }

    fn delete_workspace(
        &self,
        workspace: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>> {
        self.delete_events(workspace)
    }

    fn deliver_to(
        &self,
        num: u64,
        event: Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>> {
        let ep = self.endpoints.get(&num).map(|e| e.clone());
        let store = self.store.clone();
        Box::pin(async move {
            let Some(ep) = ep else {
                return Err(format!("endpoint {} does not exist", endpoint_id(num)));
            };
            let rec = ep.rec.load();
            if rec.workspace != event.workspace {
                return Err(format!("endpoint {} does not exist", endpoint_id(num)));
            }
            if !rec.enabled {
                return Err(format!("endpoint {} is disabled", endpoint_id(num)));
            }
            let appended = store
                .append(vec![NewEvent {
                    event,
                    endpoints: vec![num],
                }])
                .await
                .map_err(|e| e.to_string())?;
            ep.wake.notify_one();
            appended
                .first()
                .map(|a| a.seq)
                .ok_or_else(|| "nothing appended".to_string())
        })
    }

    fn retain(
        &self,
        workspace: &str,
        older_than_ms: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>> {
        let store = self.store.clone();
        let ws = workspace.to_string();
        Box::pin(async move {
            store
                .retain(&ws, older_than_ms)
                .await
                .map(|r| r.events)
                .map_err(|e| e.to_string())
        })
    }

    fn erase(
        &self,
        workspace: &str,
        target: waping_events::Erase,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>> {
        let store = self.store.clone();
        let ws = workspace.to_string();
        Box::pin(async move { store.erase(&ws, target).await.map_err(|e| e.to_string()) })
    }

    fn event_store(&self) -> EventStore {
        self.store.clone()
    }
}

impl Webhooks {
    fn delete_events(
        &self,
        workspace: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'static>> {
        let store = self.store.clone();
        let ws = workspace.to_string();
        Box::pin(async move {
            store
                .delete_workspace(&ws)
                .await
                .map(|r| r.events)
                .map_err(|e| e.to_string())
        })
    }

    fn self_arc(&self) -> Option<Arc<Webhooks>> {
        self.me.upgrade()
    }
}

/// Where an attempt's event came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The log, after the cursor (first attempt).
    Log,
    /// An owed delivery, with the attempts made before this one.
    Owed { attempts: u32 },
}

/// One finished request.
struct Attempt {
    source: Source,
    seq: u64,
    device: Option<String>,
    at_ms: u64,
    result: Result<waping_webhooks::DeliveryResponse, waping_webhooks::DeliveryError>,
    took: Duration,
}

/// An endpoint's URL with the addresses the SSRF guard accepted for it.
struct Target {
    url_text: String,
    url: waping_webhooks::EndpointUrl,
    addrs: Vec<std::net::SocketAddr>,
    resolved_ms: u64,
}

/// Delivery counters of a worker, registered once.
struct WorkerCounters {
    delivered: metrics::Counter,
    retry: metrics::Counter,
    dead: metrics::Counter,
    disabled: metrics::Counter,
}

/// A worker's state between commits.
struct Window {
    /// Durable cursor (as last committed).
    cursor: u64,
    /// Highest log sequence number read (sent, skipped, or turned into an owed/dead row).
    read_pos: u64,
    /// Events read from the log but not yet sent (at most [`READ_AHEAD`]), all after
    /// `read_pos`.
    ahead: std::collections::VecDeque<waping_events::Stored>,
    /// Highest sequence number the reads examined (`ahead` holds what they kept).
    scan_pos: u64,
    /// Log events in flight.
    window: std::collections::BTreeSet<u64>,
    /// Owed deliveries in flight.
    owed_inflight: HashSet<u64>,
    /// Requests in flight per device.
    busy: HashMap<Option<String>, usize>,
    /// With `ordered`: devices with owed deliveries (their next events queue behind).
    blocked: HashSet<Option<String>>,
    /// With `ordered`: more owed rows than one read shows, so any device may be blocked:
    /// the log waits until they drain.
    log_blocked: bool,
    /// When the earliest owed delivery is due.
    next_owed: Option<u64>,
    outcomes: Vec<Outcome>,
    target: Option<Arc<Target>>,
    signer: Option<(Arc<Vec<Secret>>, Arc<Signer>)>,
    counters: WorkerCounters,
}

impl Window {
    /// The endpoint's cursor (opened at the log's head for a new endpoint) and owed state.
    async fn open(hooks: &Webhooks, ep: &Endpoint) -> Option<Window> {
        let ws = ep.rec.load().workspace.clone();
        let cursor = loop {
            match hooks.store.open_cursor(ep.num, &ws, None).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(endpoint = %endpoint_id(ep.num), error = %e, "opening the endpoint's cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = ep.stop.cancelled() => return None,
                        _ = hooks.stop.cancelled() => return None,
                    }
                }
            }
        };
        let result = |r| counter!("waping_webhook_deliveries_total", "result" => r);
        let mut w = Window {
            cursor,
            read_pos: cursor,
            ahead: Default::default(),
            scan_pos: cursor,
            window: Default::default(),
            owed_inflight: HashSet::new(),
            busy: HashMap::new(),
            blocked: HashSet::new(),
            log_blocked: false,
            next_owed: None,
            outcomes: Vec::new(),
            target: None,
            signer: None,
            counters: WorkerCounters {
                delivered: result("delivered"),
                retry: result("retry"),
                dead: result("dead"),
                disabled: result("disabled"),
            },
        };
        if ep.rec.load().ordered {
            w.refresh_blocked(&hooks.store, ep.num);
        }
        Some(w)
    }

    fn room(&self, cfg: &WebhooksConfig, inflight: usize) -> bool {
        inflight < cfg.max_concurrency as usize
    }

    fn owed_possible(&self, now: u64) -> bool {
        self.next_owed.is_some_and(|d| d <= now)
    }

    /// With `ordered`, what a read of the owed rows says about blocked devices.
    fn note_owed(&mut self, rows: &[waping_events::Pending], ordered: bool) {
        if ordered {
            self.blocked = rows.iter().map(|p| p.device.clone()).collect();
            // Owed rows queued since the last commit are not in the store yet; their devices
            // stay blocked, or a later event of theirs would overtake them.
            for o in &self.outcomes {
                if let Outcome::Retry { device, .. } = o {
                    self.blocked.insert(device.clone());
                }
            }
            self.log_blocked = rows.len() >= WINDOW;
        }
    }

    fn refresh_blocked(&mut self, store: &EventStore, num: u64) {
        match store.owed(num, 0, WINDOW) {
            Ok(rows) => self.note_owed(&rows, true),
            Err(e) => {
                tracing::error!(endpoint = %endpoint_id(num), error = %e, "reading owed deliveries");
                self.log_blocked = true;
            }
        }
    }

    /// Where the cursor may move: everything read, up to the oldest log event in flight.
    fn advance_to(&self) -> u64 {
        match self.window.first() {
            Some(first) => first - 1,
            None => self.read_pos,
        }
        .max(self.cursor)
    }

    fn window_done(&mut self, seq: u64) {
        self.window.remove(&seq);
    }

    fn release(&mut self, device: &Option<String>) {
        if let Some(n) = self.busy.get_mut(device) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(device);
            }
        }
    }

    fn signer(&mut self, ep: &Endpoint) -> Option<Arc<Signer>> {
        let secrets = ep.secrets.load_full();
        if let Some((s, signer)) = &self.signer
            && Arc::ptr_eq(s, &secrets)
        {
            return Some(signer.clone());
        }
        match Signer::new(secrets.iter().cloned().collect()) {
            Ok(s) => {
                let s = Arc::new(s);
                self.signer = Some((secrets, s.clone()));
                Some(s)
            }
            Err(e) => {
                tracing::error!(endpoint = %endpoint_id(ep.num), error = %e, "no usable signing secret");
                None
            }
        }
    }

    /// Signs and sends one event; a signing failure is a dead delivery at once.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        ep: &Endpoint,
        target: &Arc<Target>,
        tls: &TlsClient,
        timeout: Duration,
        inflight: &mut tokio::task::JoinSet<Attempt>,
        source: Source,
        seq: u64,
        event: Event,
    ) {
        let now = crate::unix_ms();
        let attempts = match source {
            Source::Log => 0,
            Source::Owed { attempts } => attempts,
        };
        let body = event.to_json();
        let headers = self
            .signer(ep)
            .ok_or_else(|| "no usable signing secret".to_string())
            .and_then(|s| {
                s.sign(&event.id.to_string(), now / 1000, body.as_bytes())
                    .map_err(|e| format!("signing: {e}"))
            });
        let headers = match headers {
            Ok(h) => h,
            Err(error) => {
                if let Source::Log = source {
                    self.window_done(seq);
                } else {
                    self.owed_inflight.remove(&seq);
                }
                self.outcomes.push(Outcome::Dead {
                    endpoint: ep.num,
                    seq,
                    attempts,
                    error,
                    at_ms: now,
                });
                return;
            }
        };
        *self.busy.entry(event.device.clone()).or_default() += 1;
        let req = waping_webhooks::DeliveryRequest {
            url: target.url.clone(),
            headers,
            body: body.into_bytes().into(),
        };
        let target = target.clone();
        let tls = tls.clone();
        let device = event.device;
        let at_ms = event.at_ms;
        let pool = ep.pool.clone();
        inflight.spawn(async move {
            let started = std::time::Instant::now();
            let result = waping_webhooks::deliver_pooled(&req, &target.addrs, &tls, timeout, &pool).await;
            Attempt {
                source,
                seq,
                device,
                at_ms,
                result,
                took: started.elapsed(),
            }
        });
    }
}

/// Converts a workspace event (the live-subscriber form) into the durable event model.
pub fn to_event(ws: &Workspace, at_ms: u64, kind: &EventKind) -> Vec<Event> {
    let ws_id = ws.id.to_string();
    let dev = |d: &waping_protocol::Text| Some(d.as_str().to_string());
    let data_for = |device: Option<String>, data: EventData| Event::new(ws_id.clone(), device, at_ms, data);
    // Events whose id is derived skip `Event::new`'s UUIDv7 (a clock read and OS randomness
    // per status event, on the send pipeline).
    let with_id = |id: waping_events::EventId, device: Option<String>, data: EventData| Event {
        id,
        workspace: ws_id.clone(),
        device,
        at_ms,
        data,
    };
    match kind {
        EventKind::Inbound {
            device_id,
            from,
            upstream_id,
            body,
        } => {
            // A WhatsApp redelivery is the same event.
            let id = waping_events::EventId::for_inbound(&ws_id, device_id.as_str(), upstream_id.as_str());
            vec![with_id(
                id,
                dev(device_id),
                EventData::MessageReceived(m::MessageReceived {
                    from: from.as_str().to_string(),
                    upstream_id: upstream_id.as_str().to_string(),
                    content: content(body),
                }),
            )]
        }
        EventKind::Report { device_id, report } => {
            let failed = report.status == waping_protocol::DeliveryStatus::Failed;
            let status = if failed {
                m::DeliveryStatus::Failed
            } else {
                m::DeliveryStatus::Sent
            };
            let message_id = report.message_id.to_string();
            // The same id as the start-up replay from the journal (`replay_finished`).
            let id = status_event_id(&message_id, status);
            vec![with_id(
                id,
                dev(device_id),
                EventData::MessageStatus(m::MessageStatus {
                    message_id: message_id.clone(),
                    status,
                    upstream_id: (!report.upstream_id.as_str().is_empty())
                        .then(|| report.upstream_id.as_str().to_string()),
                    error: failed.then(|| m::ErrorInfo {
                        code: report.code.0,
                        name: report.code.name().to_string(),
                        detail: (!report.detail.as_str().is_empty())
                            .then(|| report.detail.as_str().to_string()),
                    }),
                }),
            )]
        }
        EventKind::Receipt {
            device_id,
            upstream_ids,
            status,
            ..
        } => {
            let st = match status {
                waping_protocol::ReceiptStatus::Delivered => m::DeliveryStatus::Delivered,
                _ => m::DeliveryStatus::Read,
            };
            upstream_ids
                .iter()
                .map(|u| {
                    // A receipt WhatsApp repeats is the same event.
                    let id = waping_events::EventId::derived(&[
                        b"receipt",
                        ws_id.as_bytes(),
                        device_id.as_str().as_bytes(),
                        u.as_str().as_bytes(),
                        format!("{st:?}").as_bytes(),
                    ]);
                    with_id(
                        id,
                        dev(device_id),
                        EventData::MessageStatus(m::MessageStatus {
                            // Receipts name WhatsApp's id; the gateway's own id is not known here.
                            message_id: String::new(),
                            status: st,
                            upstream_id: Some(u.as_str().to_string()),
                            error: None,
                        }),
                    )
                })
                .collect()
        }
        EventKind::DeviceState {
            device_id,
            state,
            detail,
        } => {
            use waping_protocol::DeviceState as P;
            let s = match state {
                P::Unlinked => m::DeviceState::Unlinked,
                P::Linking => m::DeviceState::Linking,
                P::Connected => m::DeviceState::Connected,
                P::Disconnected => m::DeviceState::Disconnected,
                P::LoggedOut => m::DeviceState::LoggedOut,
                P::Banned => m::DeviceState::Banned,
                P::Disabled => m::DeviceState::Disabled,
            };
            vec![data_for(
                dev(device_id),
                EventData::DeviceState(m::DeviceStateChange {
                    state: s,
                    detail: (!detail.as_str().is_empty()).then(|| detail.as_str().to_string()),
                    until_ms: None,
                }),
            )]
        }
        EventKind::LinkCode {
            device_id,
            kind,
            code,
            valid_for_ms,
        } => vec![data_for(
            dev(device_id),
            EventData::DeviceLinkCode(m::LinkCode {
                method: match kind {
                    waping_protocol::LinkCodeKind::Qr => m::LinkMethod::Qr,
                    waping_protocol::LinkCodeKind::PairingCode => m::LinkMethod::PairingCode,
                },
                code: code.as_str().to_string(),
                expires_at_ms: at_ms + u64::from(*valid_for_ms),
            }),
        )],
        EventKind::Lagged { .. } => Vec::new(),
    }
}

/// The id of a message's `message.status` event for `status`: the same whether it comes from
/// the live REPORT or from the start-up replay, so the store keeps one.
fn status_event_id(message_id: &str, status: m::DeliveryStatus) -> waping_events::EventId {
    let status_name: &[u8] = match status {
        m::DeliveryStatus::Sent => b"Sent",
        m::DeliveryStatus::Delivered => b"Delivered",
        m::DeliveryStatus::Read => b"Read",
        m::DeliveryStatus::Failed => b"Failed",
    };
    let hashed = waping_events::EventId::derived(&[b"message.status", message_id.as_bytes(), status_name]);
    // Keep the message id's time prefix (its first 6 bytes are its creation time, as in a
    // UUIDv7): ids then arrive in nearly ascending order, which the store's id index inserts
    // at about twice the rate of random ones (BENCHMARKS.md, "Webhooks (issue 8)").
    let mut bytes = *hashed.as_bytes();
    if let Ok(raw) = hex::decode(message_id)
        && raw.len() == 16
    {
        bytes[..6].copy_from_slice(&raw[..6]);
    }
    waping_events::EventId::from_bytes(bytes)
}

/// Lowercase hex of a message id, as the API and REPORTs print it.
struct MessageIdHex([u8; 16]);

impl std::fmt::Display for MessageIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&waping_protocol::MessageId(self.0), f)
    }
}

fn content(b: &waping_protocol::Body) -> m::Content {
    match b {
        waping_protocol::Body::Text(t) => m::Content::Text(t.as_str().to_string()),
        waping_protocol::Body::Media {
            reference,
            mime,
            caption,
        } => m::Content::Media(m::Media {
            reference: reference.as_str().to_string(),
            mime: mime.as_str().to_string(),
            caption: (!caption.as_str().is_empty()).then(|| caption.as_str().to_string()),
        }),
    }
}

impl crate::workspace::EventSink for Webhooks {
    fn offer(&self, ws: &Workspace, at_ms: u64, kind: &EventKind) {
        // Cheap exit before any conversion when only events endpoints want are stored and
        // this workspace has none.
        if !self.cfg.log_all_events && self.index.load().get(&*ws.id).is_none() {
            return;
        }
        for e in to_event(ws, at_ms, kind) {
            Webhooks::offer(self, e);
        }
    }

    fn offer_event(&self, event: Event) {
        Webhooks::offer(self, event);
    }
}

/// The inbound hook of the WhatsApp upstream: the message is journaled and, when an endpoint
/// wants `message.received`, stored as an event, both durable before WhatsApp is
/// acknowledged. A crash after the acknowledgement can then lose neither (WhatsApp would not
/// send the message again).
#[derive(Debug)]
pub struct DurableInbound {
    /// The journal.
    pub durable: Arc<crate::durable::Durable>,
    /// The webhook runtime.
    pub webhooks: Arc<Webhooks>,
}

impl crate::upstream::InboundJournal for DurableInbound {
    fn journal_inbound(
        &self,
        device: &crate::upstream::DeviceRef,
        from: &waping_protocol::Text,
        upstream_id: &waping_protocol::Text,
        body: &waping_protocol::Body,
    ) -> crate::upstream::BoxFuture<'static, Result<(), String>> {
        let journaled = self.durable.journal_inbound(device, from, upstream_id, body);
        let mut event = Event::new(
            device.workspace.to_string(),
            Some(device.device.as_str().to_string()),
            crate::unix_ms(),
            EventData::MessageReceived(m::MessageReceived {
                from: from.as_str().to_string(),
                upstream_id: upstream_id.as_str().to_string(),
                content: content(body),
            }),
        );
        // The same id as the live path's (`to_event`): whichever stores it first wins.
        event.id = waping_events::EventId::for_inbound(
            &device.workspace,
            device.device.as_str(),
            upstream_id.as_str(),
        );
        let webhooks = self.webhooks.clone();
        Box::pin(async move {
            journaled.await?;
            webhooks.publish_durable(event).await
        })
    }
}
