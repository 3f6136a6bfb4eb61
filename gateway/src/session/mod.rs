//! Device sessions: one task per linked device, owning its outbound queue,
//! its pacing and its window of sends in flight to the upstream.
//!
//! The manager is a `DashMap` (sharded locks held for a lookup only); the
//! per-message path is `get` + `try_send` into the device's bounded queue.
//! A full queue refuses the message back to the caller (DEVICE_BUSY)
//! instead of buffering without bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use waping_protocol::{
    Body, DeliveryReport, DeliveryStatus, DeviceState, ErrorCode, EventKind, MessageId, Text,
};

use waping_journal::Record;

use crate::durable::{Durable, RetryItem};
use crate::limiter::{self, MonotonicClock};
use crate::metrics::Metrics;
use crate::retry::{DeadReason, Decision};
use crate::upstream::{DeviceRef, Upstream, UpstreamError, UpstreamEvent, UpstreamSend};
use crate::workspace::{Registry, Workspace, WorkspaceIdx};

/// What a stream writes back to its client, in the order it is produced: a message's
/// ACCEPTED always precedes its reports because both travel through this one channel.
#[derive(Debug)]
pub enum StreamReply {
    /// The message is durable and queued.
    Accepted {
        /// Client's sequence number.
        seq: u64,
        /// Gateway id.
        id: MessageId,
    },
    /// A resend of an idempotency key: the original's id, nothing new queued (no report follows).
    Duplicate {
        /// Client's sequence number.
        seq: u64,
        /// The original message's id.
        id: MessageId,
    },
    /// The message could not be persisted; it was handed back.
    Rejected {
        /// Client's sequence number.
        seq: u64,
        /// Why.
        code: ErrorCode,
        /// When a retry may succeed.
        retry_after_ms: u32,
        /// Detail.
        reason: String,
    },
    /// An outcome (final or deferred).
    Report(DeliveryReport),
}

/// Where a device session sends the outcome of a message: the stream it came from.
/// Unbounded on purpose: its depth is bounded by the connection's `max_in_flight`.
pub type ReplySink = mpsc::UnboundedSender<StreamReply>;

/// An accepted message on its way to a device.
#[derive(Debug)]
pub struct Outbound {
    /// Gateway id.
    pub id: MessageId,
    /// Client's sequence number on its stream.
    pub seq: u64,
    /// Recipient.
    pub recipient: Text,
    /// Content.
    pub body: Body,
    /// Where the report goes; `None` for messages recovered from the journal (their outcome
    /// reaches subscribers only).
    pub reply: Option<ReplySink>,
    /// Attempts made so far (0 before the first dispatch).
    pub attempts: u32,
    /// Wall-clock time of the first attempt, unix ms (0 before it); bounds the retry age.
    pub first_attempt_ms: u64,
}

/// The session of one device, as seen by connections.
#[derive(Debug)]
pub struct SessionHandle {
    /// Owning workspace.
    pub workspace: Arc<Workspace>,
    /// Device id.
    pub device: Text,
    tx: mpsc::Sender<Outbound>,
}

/// Why a device refused a message; the message is handed back.
#[derive(Debug)]
pub enum SubmitError {
    /// Queue full (pacing is holding messages back).
    Busy(Box<Outbound>),
    /// The session has stopped (gateway shutting down).
    Stopped(Box<Outbound>),
}

impl SessionHandle {
    /// Free queue slots right now (a hint: others may take them first).
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Reserves a queue slot, so a message can be journaled first and queued after without
    /// a chance of finding the queue full in between. `None` if full or stopped.
    pub fn reserve(&self) -> Option<mpsc::OwnedPermit<Outbound>> {
        self.tx.clone().try_reserve_owned().ok()
    }

    /// Queues a message, waiting for room (recovery feeds a backlog through this).
    pub async fn submit_wait(&self, m: Outbound) -> Result<(), SubmitError> {
        self.tx
            .send(m)
            .await
            .map_err(|e| SubmitError::Stopped(Box::new(e.0)))
    }

    /// Queues a message without waiting.
    pub fn submit(&self, m: Outbound) -> Result<(), SubmitError> {
        self.tx.try_send(m).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) => SubmitError::Busy(Box::new(m)),
            mpsc::error::TrySendError::Closed(m) => SubmitError::Stopped(Box::new(m)),
        })
    }
}

/// Settings shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Queue depth per device.
    pub queue: usize,
    /// Upstream sends in flight per device.
    pub window: usize,
    /// Upstream send timeout.
    pub send_timeout: Duration,
}

/// All device sessions of the node.
pub struct SessionManager {
    sessions: DashMap<(WorkspaceIdx, Text), Arc<SessionHandle>>,
    upstream: Arc<dyn Upstream>,
    settings: SessionSettings,
    metrics: Arc<Metrics>,
    clock: MonotonicClock,
    durable: Option<Arc<Durable>>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl SessionManager {
    /// A manager over `upstream`.
    pub fn new(upstream: Arc<dyn Upstream>, settings: SessionSettings, metrics: Arc<Metrics>) -> Self {
        SessionManager {
            sessions: DashMap::new(),
            upstream,
            settings,
            metrics,
            clock: MonotonicClock::new(),
            durable: None,
        }
    }

    /// Records every attempt and outcome in the journal and retries through the durable retry
    /// queue. Without it (unit tests of pacing and windows) a failure is final at once.
    pub fn with_durable(mut self, durable: Arc<Durable>) -> Self {
        self.clock = durable.clock;
        self.durable = Some(durable);
        self
    }

    /// Starts the session task of a device and attaches it upstream.
    pub fn start_device(&self, ws: &Arc<Workspace>, device: &str) {
        let device = Text::from(device);
        let (tx, rx) = mpsc::channel(self.settings.queue);
        let handle = Arc::new(SessionHandle {
            workspace: ws.clone(),
            device: device.clone(),
            tx,
        });
        let weak = Arc::downgrade(&handle);
        self.sessions.insert((ws.idx, device.clone()), handle);
        self.metrics.sessions_active.increment(1.0);
        // Burst 1: pacing spaces sends evenly; it never lets a backlog rush out.
        let pacing = match ws.device_rate_per_second {
            0 => None,
            rate => match limiter::Quota::per_second(rate, 1) {
                Ok(q) => Some(Arc::new(limiter::Cell::new(q))),
                // Unreachable: Gateway::start refuses such a workspace before any device starts.
                Err(e) => {
                    tracing::error!(workspace = %ws.id, error = %e, "device pacing quota invalid; pacing off");
                    None
                }
            },
        };
        let task = SessionTask {
            ws: ws.clone(),
            device: DeviceRef {
                workspace: ws.id.clone(),
                device,
            },
            upstream: self.upstream.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            pacing,
            clock: self.clock,
            durable: self.durable.clone(),
            handle: weak,
        };
        tokio::spawn(task.run(rx));
    }

    /// Finds a device's session inside a workspace.
    pub fn get(&self, ws: WorkspaceIdx, device: &Text) -> Option<Arc<SessionHandle>> {
        self.sessions
            .get(&(ws, device.clone()))
            .map(|e| e.value().clone())
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True without sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Stops accepting: dropping the handles closes every queue, so each task
    /// finishes what it holds and exits.
    pub fn close_all(&self) {
        self.sessions.clear();
    }
}

struct SessionTask {
    ws: Arc<Workspace>,
    device: DeviceRef,
    upstream: Arc<dyn Upstream>,
    settings: SessionSettings,
    metrics: Arc<Metrics>,
    pacing: Option<Arc<limiter::Cell>>,
    clock: MonotonicClock,
    durable: Option<Arc<Durable>>,
    /// Weak: the task must not keep its own queue open, or closing the manager would never stop it.
    handle: std::sync::Weak<SessionHandle>,
}

impl SessionTask {
    async fn run(self, mut rx: mpsc::Receiver<Outbound>) {
        if let Err(e) = self.upstream.attach(self.device.clone()).await {
            tracing::warn!(workspace = %self.ws.id, device = %self.device.device, error = %e, "attach failed");
        }
        let mut inflight = FuturesUnordered::new();
        let mut held: Option<Outbound> = None;
        let mut open = true;
        loop {
            // One message may wait here for pacing or for a free window slot; the
            // rest wait in the bounded queue, so a full queue pushes back on clients.
            let mut wait = None;
            if let Some(m) = held.take() {
                if inflight.len() >= self.settings.window {
                    held = Some(m);
                } else {
                    match self.pace_check() {
                        Ok(()) => inflight.push(self.dispatch(m)),
                        Err(d) => {
                            held = Some(m);
                            wait = Some(d);
                        }
                    }
                }
            }
            let paced = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some((m, started, r)) = inflight.next(), if !inflight.is_empty() => self.finish(m, started, r),
                () = paced, if wait.is_some() => {}
                next = rx.recv(), if open && held.is_none() => match next {
                    Some(m) => held = Some(m),
                    None => open = false,
                },
                else => break,
            }
        }
        self.metrics.sessions_active.decrement(1.0);
    }

    fn pace_check(&self) -> Result<(), Duration> {
        match &self.pacing {
            None => Ok(()),
            Some(cell) => match cell.check(self.clock.now(), 1) {
                Ok(()) => Ok(()),
                Err(r) => match r.reason {
                    limiter::RefusalReason::RateExceeded => Err(r.retry_after),
                    // Cost 1 never exceeds burst 1; should it ever, holding the
                    // message would stall the device forever, so send it.
                    limiter::RefusalReason::ExceedsBurst => Ok(()),
                },
            },
        }
    }

    fn dispatch(
        &self,
        mut m: Outbound,
    ) -> impl std::future::Future<
        Output = (
            Outbound,
            Instant,
            Result<crate::upstream::UpstreamAck, UpstreamError>,
        ),
    > + use<> {
        self.metrics.dispatched.increment(1);
        m.attempts += 1;
        let now_ms = crate::unix_ms();
        if m.first_attempt_ms == 0 {
            m.first_attempt_ms = now_ms;
        }
        if let Some(d) = &self.durable {
            d.note(vec![Record::Dispatched {
                id: m.id,
                attempt: m.attempts,
                at_ms: now_ms,
            }]);
        }
        let fut = self.upstream.send(UpstreamSend {
            device: self.device.clone(),
            recipient: m.recipient.clone(),
            body: m.body.clone(),
            upstream_id: m.id.to_string(),
        });
        let timeout = self.settings.send_timeout;
        async move {
            let started = Instant::now();
            let r = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or(Err(UpstreamError::Timeout));
            (m, started, r)
        }
    }

    fn finish(&self, m: Outbound, _started: Instant, r: Result<crate::upstream::UpstreamAck, UpstreamError>) {
        let now_ms = crate::unix_ms();
        let report = match r {
            Ok(ack) => {
                self.metrics.delivered.increment(1);
                if ack.already_sent {
                    self.metrics.already_sent.increment(1);
                }
                if let Some(d) = &self.durable {
                    d.note(vec![Record::Sent {
                        id: m.id,
                        upstream_id: ack.upstream_id.clone(),
                        at_ms: now_ms,
                    }]);
                }
                report(
                    &m,
                    DeliveryStatus::Sent,
                    ErrorCode(0),
                    now_ms,
                    ack.upstream_id,
                    String::new(),
                )
            }
            Err(e) => match self.after_failure(m, &e, now_ms) {
                AfterFailure::Deferred(reply, report) => {
                    // The message is in the retry queue; the client hears it is deferred.
                    self.emit(reply.as_ref(), report);
                    return;
                }
                AfterFailure::Final(m, report) => {
                    self.metrics.failed(e.code());
                    self.emit(m.reply.as_ref(), report);
                    return;
                }
            },
        };
        self.emit(m.reply.as_ref(), report);
    }

    /// Decides between a retry and a final failure.
    fn after_failure(&self, m: Outbound, e: &UpstreamError, now_ms: u64) -> AfterFailure {
        let code = e.code();
        let Some(d) = &self.durable else {
            let r = report(
                &m,
                DeliveryStatus::Failed,
                code,
                now_ms,
                String::new(),
                e.to_string(),
            );
            return AfterFailure::Final(m, r);
        };
        let decision = {
            let mut rng = rand::rng();
            d.policy
                .decide(code, m.attempts, m.first_attempt_ms, now_ms, &mut rng)
        };
        let dead = |m: Outbound, why: &str| {
            let detail = format!("{e}; {why} after {} attempts", m.attempts);
            if why == "permanent" {
                d.note(vec![Record::Failed {
                    id: m.id,
                    code: code.0,
                    at_ms: now_ms,
                }]);
            } else {
                self.metrics.dead.increment(1);
                d.note(vec![Record::Dead {
                    id: m.id,
                    attempts: m.attempts,
                    last_code: code.0,
                    last_detail: detail.clone(),
                    at_ms: now_ms,
                }]);
            }
            let r = report(&m, DeliveryStatus::Failed, code, now_ms, String::new(), detail);
            (m, r)
        };
        match decision {
            Decision::RetryAt(due_ms) => {
                let Some(session) = self.handle.upgrade() else {
                    // Shutting down: the journal keeps the message unfinished; the next start retries it.
                    let r = report(
                        &m,
                        DeliveryStatus::Deferred,
                        code,
                        now_ms,
                        String::new(),
                        e.to_string(),
                    );
                    return AfterFailure::Deferred(m.reply, r);
                };
                let now = d.clock.now();
                let due = crate::retry::due_from_unix_ms(due_ms, now_ms, now);
                let (id, attempts, reply) = (m.id, m.attempts, m.reply.clone());
                let r = report(
                    &m,
                    DeliveryStatus::Deferred,
                    code,
                    now_ms,
                    String::new(),
                    format!("{e}; attempt {} failed, next at unix ms {due_ms}", attempts),
                );
                match d.retry.schedule(id, RetryItem { session, msg: m }, due) {
                    Ok(()) => {
                        self.metrics.retried.increment(1);
                        d.note(vec![Record::RetryScheduled {
                            id,
                            attempt: attempts,
                            due_at_ms: due_ms,
                            last_code: code.0,
                        }]);
                        AfterFailure::Deferred(reply, r)
                    }
                    Err(full) => final_(dead(full.item.msg, "retry queue full")),
                }
            }
            Decision::Dead(DeadReason::Permanent) => final_(dead(m, "permanent")),
            Decision::Dead(reason) => final_(dead(m, reason.as_str())),
        }
    }

    fn emit(&self, reply: Option<&ReplySink>, report: DeliveryReport) {
        self.ws.publish(EventKind::Report {
            device_id: self.device.device.clone(),
            report: report.clone(),
        });
        // The stream may be gone (client disconnected); the outcome is still counted and published.
        if let Some(tx) = reply {
            let _ = tx.send(StreamReply::Report(report));
        }
    }
}

/// What became of a failed attempt.
enum AfterFailure {
    /// Scheduled for a retry: the reply sink and the DEFERRED report.
    Deferred(Option<ReplySink>, DeliveryReport),
    /// Final: the message back with its FAILED report.
    Final(Outbound, DeliveryReport),
}

fn final_((m, r): (Outbound, DeliveryReport)) -> AfterFailure {
    AfterFailure::Final(m, r)
}

fn report(
    m: &Outbound,
    status: DeliveryStatus,
    code: ErrorCode,
    now_ms: u64,
    upstream_id: String,
    detail: String,
) -> DeliveryReport {
    DeliveryReport {
        message_id: m.id,
        seq: m.seq,
        status,
        code,
        timestamp_ms: now_ms,
        upstream_id: Text::from(upstream_id),
        detail: Text::from(detail),
    }
}

/// Routes upstream events (inbound messages, device state) to workspace subscribers until the upstream stops.
pub async fn route_upstream_events(
    mut rx: mpsc::Receiver<UpstreamEvent>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    while let Some(ev) = rx.recv().await {
        let (ws_id, kind, label) = match ev {
            UpstreamEvent::Inbound {
                device,
                from,
                upstream_id,
                body,
            } => (
                device.workspace,
                EventKind::Inbound {
                    device_id: device.device,
                    from,
                    upstream_id,
                    body,
                },
                "inbound",
            ),
            UpstreamEvent::State {
                device,
                state,
                detail,
            } => {
                tracing::info!(workspace = %device.workspace, device = %device.device, state = state.as_str(), %detail, "device state");
                (
                    device.workspace,
                    EventKind::DeviceState {
                        device_id: device.device,
                        state,
                        detail: Text::from(detail),
                    },
                    state_label(state),
                )
            }
        };
        metrics.upstream_event(label);
        match registry.by_id(&ws_id) {
            Some(ws) => ws.publish(kind),
            None => tracing::warn!(workspace = %ws_id, "upstream event for an unknown workspace dropped"),
        }
    }
}

fn state_label(s: DeviceState) -> &'static str {
    match s {
        DeviceState::Connected => "state_connected",
        DeviceState::Disconnected => "state_disconnected",
        DeviceState::Linking => "state_linking",
        DeviceState::Unlinked => "state_unlinked",
        DeviceState::LoggedOut => "state_logged_out",
        DeviceState::Banned => "state_banned",
        DeviceState::Disabled => "state_disabled",
    }
}

#[cfg(test)]
mod tests;
