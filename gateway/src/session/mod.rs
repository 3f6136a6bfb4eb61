//! Device sessions: one task per linked device, owning its outbound queue,
//! its pacing and its window of sends in flight to the upstream.
//!
//! The manager is a `DashMap` (sharded locks held for a lookup only); the
//! per-message path is `get` + `try_send` into the device's bounded queue.
//! A full queue refuses the message back to the caller (DEVICE_BUSY)
//! instead of buffering without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use waping_protocol::{
    Body, DeliveryReport, DeliveryStatus, DeviceState, ErrorCode, EventKind, LinkCodeKind, MessageId,
    ReceiptStatus, Text,
};

use waping_journal::Record;

use crate::durable::{Durable, RetryItem};
use crate::limiter::{self, MonotonicClock};
use crate::metrics::Metrics;
use crate::pacing::{ContactBook, ContactKey, DailyUsage, DevicePacer, Pace, PaceReason};
use crate::retry::{DeadReason, Decision};
use crate::upstream::{
    BoxFuture, DeviceRef, LinkMethod, SessionEvent, Upstream, UpstreamError, UpstreamEvent, UpstreamSend,
};

use self::gate::ConnectGate;
use self::lifecycle::{Action, At, Command, CommandError, Input, Lifecycle, LifecycleConfig};
use self::store::{SessionRecord, SessionStore};

pub mod config;
pub mod gate;
pub mod lifecycle;
pub mod store;
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
    // Boxed items: tokio allocates a channel's first block of 32 slots when the channel is
    // made, so the slot size is paid by every idle device (176 B × 32 unboxed); see
    // `docs/design/0011` "Memory".
    tx: mpsc::Sender<Box<Outbound>>,
    ctl: mpsc::Sender<Box<Control>>,
    /// Public state (a `DeviceState` byte), kept by the task for connections to read.
    state: AtomicU8,
    /// Code new messages are refused with while the device cannot send for long (0: none).
    refusal: AtomicU16,
}

/// An operator's request about a device (from the data plane or, later, the REST API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCommand {
    /// Link a WhatsApp account by QR or pairing code.
    Link(LinkMethod),
    /// Log out and forget the credentials.
    Unlink,
    /// Stop the session.
    Disable,
    /// Resume a disabled session.
    Enable,
    /// Only report the state.
    Status,
}

/// Why a device command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such device in the caller's workspace (indistinguishable from another workspace's).
    #[error("unknown device")]
    UnknownDevice,
    /// The lifecycle refused it in its current state.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// The session is shutting down.
    #[error("session stopped")]
    Stopped,
}

impl ControlError {
    /// The catalogue code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::UnknownDevice => ErrorCode::UNKNOWN_DEVICE,
            ControlError::Refused(e) => e.code(),
            ControlError::Stopped => ErrorCode::SHUTTING_DOWN,
        }
    }
}

/// What reaches a session task besides messages.
#[derive(Debug)]
enum Control {
    Command(
        DeviceCommand,
        tokio::sync::oneshot::Sender<Result<DeviceState, CommandError>>,
    ),
    Event(SessionEvent),
    /// Someone wrote to the device: a reply to them is not a first contact.
    Inbound(Text),
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
    /// The device's public state.
    pub fn state(&self) -> DeviceState {
        DeviceState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(DeviceState::Disconnected)
    }

    /// The code a new message must be refused with because the device cannot send for a long
    /// time (not linked, logged out, banned, disabled); `None` if it sends or soon will.
    pub fn refusal(&self) -> Option<ErrorCode> {
        match self.refusal.load(Ordering::Acquire) {
            0 => None,
            c => Some(ErrorCode(c)),
        }
    }

    /// Free queue slots right now (a hint: others may take them first).
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Reserves a queue slot, so a message can be journaled first and queued after without
    /// a chance of finding the queue full in between. `None` if full or stopped.
    pub fn reserve(&self) -> Option<Permit> {
        let slot = self.tx.clone().try_reserve_owned().ok()?;
        Some(Permit {
            slot,
            metrics: self.workspace.metrics.clone(),
        })
    }

    /// Queues a message, waiting for room (recovery feeds a backlog through this).
    pub async fn submit_wait(&self, m: Outbound) -> Result<(), SubmitError> {
        self.tx
            .send(Box::new(m))
            .await
            .map_err(|e| SubmitError::Stopped(e.0))
    }

    /// Queues a message without waiting.
    pub fn submit(&self, m: Outbound) -> Result<(), SubmitError> {
        self.tx.try_send(Box::new(m)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) => SubmitError::Busy(m),
            mpsc::error::TrySendError::Closed(m) => SubmitError::Stopped(m),
        })
    }
}

/// A reserved slot in a device's queue (from [`SessionHandle::reserve`]).
#[derive(Debug)]
pub struct Permit {
    slot: mpsc::OwnedPermit<Box<Outbound>>,
    /// The workspace's per-workspace counters, if on.
    metrics: Option<Arc<crate::metrics::WorkspaceMetrics>>,
}

impl Permit {
    /// Queues the message into the reserved slot.
    ///
    /// Both admission paths (QUIC and HTTP) call this exactly when the journal has confirmed
    /// the message, right after counting it accepted, so it also counts the workspace's
    /// `accepted` series (with per-workspace metrics on).
    pub fn send(self, m: Outbound) {
        if let Some(w) = &self.metrics {
            w.accepted.increment(1);
        }
        self.slot.send(Box::new(m));
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
    /// Lifecycle timing (reconnect backoff, link and connect timeouts).
    pub lifecycle: LifecycleConfig,
}

/// All device sessions of the node.
pub struct SessionManager {
    sessions: DashMap<(WorkspaceIdx, Text), Arc<SessionHandle>>,
    upstream: Arc<dyn Upstream>,
    settings: SessionSettings,
    metrics: Arc<Metrics>,
    clock: MonotonicClock,
    durable: Option<Arc<Durable>>,
    gate: Arc<ConnectGate>,
    store: Arc<dyn SessionStore>,
    audit: Option<Arc<crate::audit::AuditHub>>,
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
    ///
    /// `gate` paces every connect of the node; `store` keeps each device's lifecycle across
    /// restarts.
    pub fn new(
        upstream: Arc<dyn Upstream>,
        settings: SessionSettings,
        metrics: Arc<Metrics>,
        gate: Arc<ConnectGate>,
        store: Arc<dyn SessionStore>,
    ) -> Self {
        SessionManager {
            sessions: DashMap::new(),
            upstream,
            settings,
            metrics,
            clock: MonotonicClock::new(),
            durable: None,
            gate,
            store,
            audit: None,
        }
    }

    /// Records device links, logouts and bans in the audit log.
    pub fn with_audit(mut self, audit: Arc<crate::audit::AuditHub>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Applies an operator command to a device of workspace `ws` and returns its state after.
    pub async fn control(
        &self,
        ws: WorkspaceIdx,
        device: &Text,
        cmd: DeviceCommand,
    ) -> Result<DeviceState, ControlError> {
        let handle = self.get(ws, device).ok_or(ControlError::UnknownDevice)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle
            .ctl
            .send(Box::new(Control::Command(cmd, tx)))
            .await
            .map_err(|_| ControlError::Stopped)?;
        Ok(rx.await.map_err(|_| ControlError::Stopped)??)
    }

    /// Hands an upstream session event to its device's task (waits if the task is behind:
    /// the upstream holds its events rather than the node dropping them).
    async fn deliver(&self, ws: WorkspaceIdx, device: &Text, ev: SessionEvent) -> bool {
        let Some(h) = self.get(ws, device) else {
            return false;
        };
        match h.ctl.try_send(Box::new(Control::Event(ev))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // This device's task is behind (e.g. waiting on a slow upstream logout). Waiting
            // here would stall event routing for every device of the node, so this one event
            // waits on its own task. Its order relative to this device's later events is then
            // not guaranteed; 64 queued control events for one device is already abnormal.
            Err(mpsc::error::TrySendError::Full(c)) => {
                tracing::warn!(workspace = %h.workspace.id, device = %device, "device control queue full; event delivered out of line");
                tokio::spawn(async move {
                    let _ = h.ctl.send(c).await;
                });
                true
            }
        }
    }

    /// Records every attempt and outcome in the journal and retries through the durable retry
    /// queue. Without it (unit tests of pacing and windows) a failure is final at once.
    pub fn with_durable(mut self, durable: Arc<Durable>) -> Self {
        self.clock = durable.clock;
        self.durable = Some(durable);
        self
    }

    /// Starts the session task of a device: it restores the device's lifecycle from the store
    /// and connects through the gate if the device is linked.
    pub fn start_device(&self, ws: &Arc<Workspace>, device: &str) {
        let device = Text::from(device);
        let (tx, rx) = mpsc::channel(self.settings.queue);
        // Control traffic is rare (operator commands, state changes, QR rotation every ~20 s).
        let (ctl, ctl_rx) = mpsc::channel(64);
        let handle = Arc::new(SessionHandle {
            workspace: ws.clone(),
            device: device.clone(),
            tx,
            ctl,
            state: AtomicU8::new(DeviceState::Disconnected as u8),
            refusal: AtomicU16::new(0),
        });
        let weak = Arc::downgrade(&handle);
        self.sessions.insert((ws.idx, device.clone()), handle);
        self.metrics.sessions_active.increment(1.0);
        let task = SessionTask {
            ws: ws.clone(),
            device: DeviceRef {
                workspace: ws.id.clone(),
                device,
            },
            upstream: self.upstream.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock,
            durable: self.durable.clone(),
            handle: weak,
            gate: self.gate.clone(),
            store: self.store.clone(),
            audit: self.audit.clone(),
            reported: std::sync::Mutex::new(""),
        };
        tokio::spawn(task.run(rx, ctl_rx));
    }

    /// Finds a device's session inside a workspace.
    pub fn get(&self, ws: WorkspaceIdx, device: &Text) -> Option<Arc<SessionHandle>> {
        self.sessions
            .get(&(ws, device.clone()))
            .map(|e| e.value().clone())
    }

    /// Stops a device's session (its device is being deleted): the handle leaves the map,
    /// so new sends find no device, and the task ends once it has no more work.
    pub fn remove(&self, ws: WorkspaceIdx, device: &Text) -> Option<Arc<SessionHandle>> {
        let h = self.sessions.remove(&(ws, device.clone())).map(|(_, h)| h);
        if h.is_some() {
            self.metrics.sessions_active.decrement(1.0);
        }
        h
    }

    /// The index a workspace's sessions run under, found through its sessions (the
    /// workspace may already be gone from the registry while it is being deleted).
    pub fn workspace_of(&self, id: &str) -> Option<WorkspaceIdx> {
        self.sessions
            .iter()
            .find(|e| &*e.value().workspace.id == id)
            .map(|e| e.key().0)
    }

    /// Messages waiting in each workspace's device queues (for the queued-messages quota).
    ///
    /// The control plane walks the sessions through this once a second, so it also publishes
    /// the node's `waping_device_queue_messages` and `waping_upstream_in_flight` gauges: a
    /// sample, where counting every enqueue would cost the hot path two shared atomics.
    pub fn queue_depths(&self) -> std::collections::HashMap<WorkspaceIdx, u64> {
        let mut m = std::collections::HashMap::new();
        let mut total = 0;
        for e in self.sessions.iter() {
            let h = e.value();
            let depth = (h.tx.max_capacity() - h.tx.capacity()) as u64;
            *m.entry(e.key().0).or_insert(0) += depth;
            total += depth;
        }
        self.metrics.publish_session_load(total);
        m
    }

    /// Device ids of a workspace's sessions.
    pub fn devices_of(&self, ws: WorkspaceIdx) -> Vec<Text> {
        self.sessions
            .iter()
            .filter(|e| e.key().0 == ws)
            .map(|e| e.key().1.clone())
            .collect()
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
    clock: MonotonicClock,
    durable: Option<Arc<Durable>>,
    /// Weak: the task must not keep its own queue open, or closing the manager would never stop it.
    handle: std::sync::Weak<SessionHandle>,
    gate: Arc<ConnectGate>,
    store: Arc<dyn SessionStore>,
    audit: Option<Arc<crate::audit::AuditHub>>,
    /// The phase last counted in `waping_sessions{phase}`.
    reported: std::sync::Mutex<&'static str>,
}

/// How often a device's pacing state is saved while it sends.
const PACING_SAVE_EVERY: Duration = Duration::from_secs(60);
/// Blob name of the pacer's contact book in the session store.
const CONTACTS_BLOB: &str = "contacts";

/// A connect under way: waiting for the gate, then for the upstream's answer.
type Connecting = BoxFuture<'static, Result<(), UpstreamError>>;

impl SessionTask {
    fn at(&self) -> At {
        At {
            now: self.clock.now(),
            wall_ms: crate::unix_ms(),
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Box<Outbound>>, mut ctl: mpsc::Receiver<Box<Control>>) {
        let mut record = match self.store.load(&self.device).await {
            Ok(Some(r)) => r,
            Ok(None) => SessionRecord::new(self.upstream.provisioned(&self.device)),
            Err(e) => {
                tracing::error!(workspace = %self.ws.id, device = %self.device.device, error = %e,
                    "session record unreadable; starting as a device seen for the first time");
                SessionRecord::new(self.upstream.provisioned(&self.device))
            }
        };
        let (mut life, actions) =
            Lifecycle::restore(self.settings.lifecycle.clone(), &record.lifecycle, self.at());
        let mut pacer = self.pacer(&record).await;
        // When the pacer's state (contacts, daily counters) must next be saved, if it changed.
        let mut save_pacing_at: Option<limiter::Nanos> = None;
        // A send the pacer granted after a "typing" pause: go at this instant, no second poll.
        let mut granted_at: Option<limiter::Nanos> = None;
        self.metrics.session_phase(None, life.phase().as_str());
        *self.reported.lock().unwrap_or_else(|p| p.into_inner()) = life.phase().as_str();
        let mut connecting: Option<Connecting> = None;
        // Boxed as it came through the queue: 8 bytes of the idle future instead of 176.
        let mut held: Option<Box<Outbound>> = None;
        let mut inflight = FuturesUnordered::new();
        // (held, in flight) as last added to the node's gauges.
        let mut load = (0i64, 0i64);
        self.apply(
            &mut life,
            &mut record,
            actions,
            &mut connecting,
            &mut held,
            &mut rx,
        )
        .await;
        let mut open = true;
        loop {
            // One message may wait here for pacing, for a free window slot or for the device to
            // (re)connect; the rest wait in the bounded queue, so a full queue pushes back on clients.
            let mut wait = None;
            if let Some(m) = held.take() {
                if let Some(code) = life.refusal() {
                    granted_at = None;
                    self.fail_now(*m, code, &format!("device is {}", life.phase().as_str()));
                } else if !life.can_send() || inflight.len() >= self.settings.window {
                    held = Some(m);
                } else {
                    let now = self.clock.now();
                    let decision = match granted_at {
                        Some(at) if at > now => Pace::Wait {
                            until: at,
                            reason: PaceReason::MinInterval,
                        },
                        Some(_) => Pace::Go { typing: None },
                        // Pacing off (load tests): no recipient hash, wall clock or RNG per message.
                        None if !pacer.policy().is_enabled() => Pace::Go { typing: None },
                        None => pacer.poll(
                            now,
                            crate::unix_ms(),
                            ContactKey::of(m.recipient.as_str()),
                            &mut rand::rng(),
                        ),
                    };
                    match decision {
                        Pace::Go { typing: Some(d) } if !d.is_zero() => {
                            // Recorded by the pacer as sent at now + d: show "typing…" and
                            // hold the message that long.
                            tokio::spawn(self.upstream.typing(self.device.clone(), m.recipient.clone()));
                            granted_at = Some(now.saturating_add(d));
                            held = Some(m);
                            wait = Some(d);
                        }
                        Pace::Go { .. } => {
                            granted_at = None;
                            // Also keeps `last_active_ms`, which orders reconnects after a restart.
                            if save_pacing_at.is_none() {
                                save_pacing_at = Some(now.saturating_add(PACING_SAVE_EVERY));
                            }
                            inflight.push(self.dispatch(*m));
                        }
                        Pace::Wait { until, reason } => {
                            self.metrics.paced(reason.as_str());
                            let long = reason.is_long()
                                || matches!(
                                    reason,
                                    PaceReason::FirstContactRate | PaceReason::FirstContactDaily
                                );
                            // A long wait must not hold the queue head: replies to known
                            // contacts would be stuck behind one message to a stranger.
                            match if long && granted_at.is_none() {
                                self.defer(*m, until, reason).map(Box::new)
                            } else {
                                Some(m)
                            } {
                                None => {}
                                Some(m) => {
                                    held = Some(m);
                                    wait = Some(Duration::from_nanos(until.0.saturating_sub(now.0)));
                                }
                            }
                        }
                    }
                }
            }
            if let Some(at) = save_pacing_at {
                let d = Duration::from_nanos(at.0.saturating_sub(self.clock.now().0));
                wait = Some(wait.map_or(d, |w: Duration| w.min(d)));
            }
            let wake = life.next_wake();
            let timer = async {
                let now = self.clock.now();
                let until_wake = wake.map(|w| Duration::from_nanos(w.0.saturating_sub(now.0)));
                match (wait, until_wake) {
                    (Some(a), Some(b)) => tokio::time::sleep(a.min(b)).await,
                    (Some(d), None) | (None, Some(d)) => tokio::time::sleep(d).await,
                    (None, None) => std::future::pending().await,
                }
            };
            let connect = async {
                match connecting.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            // What this device holds while it waits; only changes cost an atomic add.
            let now_load = (i64::from(held.is_some()), inflight.len() as i64);
            if now_load != load {
                self.metrics.session_load(load, now_load);
                load = now_load;
            }
            let step = tokio::select! {
                biased;
                Some((m, started, r)) = inflight.next(), if !inflight.is_empty() => {
                    match &r {
                        Ok(_) => pacer.on_success(self.clock.now()),
                        Err(UpstreamError::Throttled { retry_after }) => {
                            // WhatsApp said "too fast" for this number: the whole device pauses.
                            pacer.on_throttled(self.clock.now(), Some(*retry_after));
                        }
                        Err(_) => {}
                    }
                    self.finish(m, started, r);
                    None
                }
                c = ctl.recv() => match c.map(|c| *c) {
                    Some(Control::Event(ev)) => Some(life.handle(self.at(), Input::Upstream(ev), &mut rand::rng())),
                    Some(Control::Inbound(from)) => {
                        pacer.on_inbound(ContactKey::of(from.as_str()));
                        None
                    }
                    Some(Control::Command(cmd, reply)) => {
                        let r = match cmd {
                            DeviceCommand::Status => Ok(Vec::new()),
                            DeviceCommand::Link(m) => life.command(self.at(), Command::Link(m)),
                            DeviceCommand::Unlink => life.command(self.at(), Command::Unlink),
                            DeviceCommand::Disable => life.command(self.at(), Command::Disable),
                            DeviceCommand::Enable => life.command(self.at(), Command::Enable),
                        };
                        match r {
                            Ok(actions) => {
                                // Boxed (here and below): cold, and awaited inside the select, so
                                // unboxed its state would widen every idle session's future.
                                Box::pin(self.apply(&mut life, &mut record, actions, &mut connecting, &mut held, &mut rx)).await;
                                let _ = reply.send(Ok(life.phase().public()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                        None
                    }
                    // The manager dropped the handle: shutting down.
                    None => {
                        open = false;
                        None
                    }
                },
                r = connect => {
                    connecting = None;
                    let input = match r {
                        Ok(()) => {
                            self.metrics.connect_attempt("attempted");
                            Input::ConnectAttempted
                        }
                        Err(e) => {
                            self.metrics.connect_attempt("failed");
                            tracing::debug!(workspace = %self.ws.id, device = %self.device.device, error = %e, "connect failed");
                            Input::ConnectFailed(e)
                        }
                    };
                    Some(life.handle(self.at(), input, &mut rand::rng()))
                }
                () = timer, if wait.is_some() || wake.is_some() => {
                    if save_pacing_at.is_some_and(|at| at <= self.clock.now()) {
                        save_pacing_at = None;
                        Box::pin(self.save_pacing(&pacer, &mut record)).await;
                    }
                    Some(life.handle(self.at(), Input::Tick, &mut rand::rng()))
                }
                next = rx.recv(), if open && held.is_none() => match next {
                    Some(m) => {
                        held = Some(m);
                        None
                    }
                    None => {
                        open = false;
                        None
                    }
                },
                else => break,
            };
            if let Some(actions) = step {
                Box::pin(self.apply(
                    &mut life,
                    &mut record,
                    actions,
                    &mut connecting,
                    &mut held,
                    &mut rx,
                ))
                .await;
            }
            if !open && inflight.is_empty() && held.is_none() {
                break;
            }
        }
        self.metrics.session_load(load, (0, 0));
        if save_pacing_at.is_some() {
            self.save_pacing(&pacer, &mut record).await;
        }
        let last = *self.reported.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.session_phase(Some(last), "");
        self.metrics.sessions_active.decrement(1.0);
    }

    /// Carries out what the lifecycle decided, in order.
    async fn apply(
        &self,
        life: &mut Lifecycle,
        record: &mut SessionRecord,
        actions: Vec<Action>,
        connecting: &mut Option<Connecting>,
        held: &mut Option<Box<Outbound>>,
        rx: &mut mpsc::Receiver<Box<Outbound>>,
    ) {
        const CALL_TIMEOUT: Duration = Duration::from_secs(10);
        for a in actions {
            match a {
                Action::Connect => {
                    let gate = self.gate.clone();
                    let upstream = self.upstream.clone();
                    let device = self.device.clone();
                    let priority = gate::priority_of(record.last_active_ms);
                    let timeout = self.settings.lifecycle.connect_timeout;
                    *connecting = Some(Box::pin(async move {
                        gate.acquire(priority).await;
                        tokio::time::timeout(timeout, upstream.connect(device))
                            .await
                            .unwrap_or(Err(UpstreamError::Timeout))
                    }));
                }
                Action::Disconnect => {
                    *connecting = None;
                    let _ = tokio::time::timeout(CALL_TIMEOUT, self.upstream.disconnect(self.device.clone()))
                        .await;
                }
                Action::Logout => {
                    *connecting = None;
                    let r = tokio::time::timeout(CALL_TIMEOUT, self.upstream.logout(self.device.clone()))
                        .await
                        .unwrap_or(Err(UpstreamError::Timeout));
                    if let Err(e) = r {
                        // The credentials are forgotten on our side whatever WhatsApp answered.
                        tracing::warn!(workspace = %self.ws.id, device = %self.device.device, error = %e, "upstream logout failed");
                    }
                    record.account = None;
                    record.linked_at_ms = 0;
                }
                Action::Link(method) => {
                    let r =
                        tokio::time::timeout(CALL_TIMEOUT, self.upstream.link(self.device.clone(), method))
                            .await
                            .unwrap_or(Err(UpstreamError::Timeout));
                    if let Err(e) = r {
                        let more = life.handle(self.at(), Input::LinkFailed(e.to_string()), &mut rand::rng());
                        Box::pin(self.apply(life, record, more, connecting, held, rx)).await;
                        return;
                    }
                }
                Action::PublishCode(ev) => self.publish_code(ev),
                Action::Publish { state, detail } => {
                    if let Some(h) = self.handle.upgrade() {
                        h.state.store(state as u8, Ordering::Release);
                        h.refusal
                            .store(life.refusal().map_or(0, |c| c.0), Ordering::Release);
                    }
                    // Routine reconnects are debug (a 10k-device storm would be 20k lines);
                    // what needs a human is info.
                    if matches!(
                        state,
                        DeviceState::LoggedOut
                            | DeviceState::Banned
                            | DeviceState::Disabled
                            | DeviceState::Linking
                    ) {
                        tracing::info!(workspace = %self.ws.id, device = %self.device.device, state = state.as_str(), %detail, "device state");
                    } else {
                        tracing::debug!(workspace = %self.ws.id, device = %self.device.device, state = state.as_str(), %detail, "device state");
                    }
                    self.ws.publish(EventKind::DeviceState {
                        device_id: self.device.device.clone(),
                        state,
                        detail: Text::from(detail),
                    });
                }
                Action::Persist => {
                    if life.linked() && record.linked_at_ms == 0 {
                        record.linked_at_ms = crate::unix_ms();
                    }
                    record.lifecycle = life.persisted();
                    if let Err(e) = self.store.save(&self.device, record).await {
                        tracing::error!(workspace = %self.ws.id, device = %self.device.device, error = %e,
                            "session record not saved; the device resumes from its previous record after a restart");
                    }
                }
                Action::Audit(kind) => {
                    // Operator commands (unlink, disable, enable) are recorded where they are
                    // given, with their actor; the session records what WhatsApp did.
                    let action = match kind {
                        lifecycle::AuditKind::Linked => Some(waping_audit::Action::DeviceLink),
                        lifecycle::AuditKind::LoggedOut => Some(waping_audit::Action::DeviceLogout),
                        lifecycle::AuditKind::Banned => Some(waping_audit::Action::DeviceBan),
                        _ => None,
                    };
                    if let (Some(action), Some(audit)) = (action, &self.audit) {
                        audit
                            .emit_durable(
                                waping_audit::Event::new(
                                    crate::unix_ms(),
                                    waping_audit::Actor::System,
                                    action,
                                )
                                .workspace(&*self.ws.id)
                                .target("device", self.device.device.as_str()),
                            )
                            .await;
                    }
                }
                Action::FailQueued(code) => {
                    let why = format!("device is {}", life.phase().as_str());
                    if let Some(m) = held.take() {
                        self.fail_now(*m, code, &why);
                    }
                    while let Ok(m) = rx.try_recv() {
                        self.fail_now(*m, code, &why);
                    }
                }
            }
        }
        let now = life.phase().as_str();
        let mut last = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if *last != now {
            self.metrics.session_phase(Some(*last), now);
            *last = now;
        }
    }

    /// Shows a link code to the workspace's subscribers (LINK_CODE events; the CLI renders
    /// them as QR codes).
    fn publish_code(&self, ev: SessionEvent) {
        let (kind, code, valid_for) = match ev {
            SessionEvent::Qr { code, valid_for } => (LinkCodeKind::Qr, code, valid_for),
            SessionEvent::PairingCode { code } => (LinkCodeKind::PairingCode, code, Duration::ZERO),
            _ => return,
        };
        tracing::debug!(workspace = %self.ws.id, device = %self.device.device, kind = kind.as_str(), "link code");
        self.ws.publish(EventKind::LinkCode {
            device_id: self.device.device.clone(),
            kind,
            code: Text::from(code),
            valid_for_ms: valid_for.as_millis().min(u128::from(u32::MAX)) as u32,
        });
    }

    /// Fails a message at once with `code` (the device cannot send for a long time).
    fn fail_now(&self, m: Outbound, code: ErrorCode, why: &str) {
        let now_ms = crate::unix_ms();
        match self.after_failure(m, code, why.to_string(), now_ms) {
            AfterFailure::Deferred(reply, report) => self.emit(reply.as_ref(), report),
            AfterFailure::Final(m, report) => {
                self.metrics.failed(code);
                self.ws.count_failed(code);
                self.emit(m.reply.as_ref(), report);
            }
        }
    }

    /// The device's pacer, resumed from its saved contacts and daily counters.
    async fn pacer(&self, record: &SessionRecord) -> DevicePacer {
        let policy = self.ws.pacing.clone();
        let cap = policy.contact_book_capacity();
        let book = if policy.is_enabled() {
            match self.store.load_blob(&self.device, CONTACTS_BLOB).await {
                Ok(Some(b)) => ContactBook::from_bytes(&b, cap).unwrap_or_else(|e| {
                    // An empty book only makes the first-contact rules stricter: safe.
                    tracing::warn!(workspace = %self.ws.id, device = %self.device.device, error = %e,
                        "contact book unreadable; starting empty");
                    ContactBook::new(cap)
                }),
                Ok(None) => ContactBook::new(cap),
                Err(e) => {
                    tracing::warn!(workspace = %self.ws.id, device = %self.device.device, error = %e,
                        "contact book not loaded; starting empty");
                    ContactBook::new(cap)
                }
            }
        } else {
            ContactBook::new(cap)
        };
        let linked_at = (record.linked_at_ms > 0).then_some(record.linked_at_ms);
        let mut pacer = DevicePacer::new(policy, linked_at, book);
        if let Some((day, sent, first_contacts)) = record.usage {
            pacer.restore_usage(DailyUsage {
                day,
                sent,
                first_contacts,
            });
        }
        pacer
    }

    /// Saves the pacer's contacts and daily counters (at most once per `PACING_SAVE_EVERY`,
    /// and when the session stops): a crash loses at most that much of them, which only
    /// errs on the strict side for contacts and on the lenient side for one minute of counts.
    async fn save_pacing(&self, pacer: &DevicePacer, record: &mut SessionRecord) {
        let u = pacer.usage();
        record.usage = Some((u.day, u.sent, u.first_contacts));
        record.last_active_ms = crate::unix_ms();
        let r1 = if pacer.policy().is_enabled() {
            self.store
                .save_blob(&self.device, CONTACTS_BLOB, pacer.contacts().to_bytes())
                .await
        } else {
            Ok(())
        };
        let r2 = self.store.save(&self.device, record).await;
        if let Err(e) = r1.and(r2) {
            tracing::warn!(workspace = %self.ws.id, device = %self.device.device, error = %e, "pacing state not saved");
        }
    }

    /// Parks a message the pacer holds back for long in the durable retry queue until `until`,
    /// so the device's queue keeps moving. `None` when parked; the message back when it
    /// cannot be (no durable core, queue full, shutting down): the caller holds it instead.
    fn defer(&self, m: Outbound, until: limiter::Nanos, reason: PaceReason) -> Option<Outbound> {
        let Some(d) = &self.durable else { return Some(m) };
        let Some(session) = self.handle.upgrade() else {
            return Some(m);
        };
        let now = d.clock.now();
        let now_ms = crate::unix_ms();
        let due_ms = now_ms.saturating_add(until.0.saturating_sub(now.0) / 1_000_000);
        let (id, attempts, reply) = (m.id, m.attempts, m.reply.clone());
        let r = report(
            &m,
            DeliveryStatus::Deferred,
            ErrorCode::RATE_LIMITED,
            now_ms,
            String::new(),
            format!(
                "held by account-safety pacing ({}); next try at unix ms {due_ms}",
                reason.as_str()
            ),
        );
        match d.retry.schedule(id, RetryItem { session, msg: m }, until) {
            Ok(()) => {
                self.metrics.pacing_deferred(reason.as_str());
                d.note(vec![Record::RetryScheduled {
                    id,
                    attempt: attempts,
                    due_at_ms: due_ms,
                    last_code: ErrorCode::RATE_LIMITED.0,
                }]);
                self.emit(reply.as_ref(), r);
                None
            }
            Err(full) => Some(full.item.msg),
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
                self.ws.count_delivered();
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
            Err(e) => match self.after_failure(m, e.code(), e.to_string(), now_ms) {
                AfterFailure::Deferred(reply, report) => {
                    // The message is in the retry queue; the client hears it is deferred.
                    self.emit(reply.as_ref(), report);
                    return;
                }
                AfterFailure::Final(m, report) => {
                    self.metrics.failed(report.code);
                    self.ws.count_failed(report.code);
                    self.emit(m.reply.as_ref(), report);
                    return;
                }
            },
        };
        self.emit(m.reply.as_ref(), report);
    }

    /// Decides between a retry and a final failure.
    fn after_failure(&self, m: Outbound, code: ErrorCode, e: String, now_ms: u64) -> AfterFailure {
        let Some(d) = &self.durable else {
            let r = report(&m, DeliveryStatus::Failed, code, now_ms, String::new(), e);
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
                self.ws.dead_lettered(
                    self.device.device.as_str(),
                    &m.id,
                    m.attempts,
                    code,
                    &detail,
                    now_ms,
                );
            }
            let r = report(&m, DeliveryStatus::Failed, code, now_ms, String::new(), detail);
            (m, r)
        };
        match decision {
            Decision::RetryAt(due_ms) => {
                let Some(session) = self.handle.upgrade() else {
                    // Shutting down: the journal keeps the message unfinished; the next start retries it.
                    let r = report(&m, DeliveryStatus::Deferred, code, now_ms, String::new(), e);
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

/// Routes upstream events until the upstream stops: session events to their device's task
/// (its lifecycle decides what they mean), inbound messages and receipts to the workspace.
pub async fn route_upstream_events(
    mut rx: mpsc::Receiver<UpstreamEvent>,
    registry: Arc<Registry>,
    sessions: Arc<SessionManager>,
    metrics: Arc<Metrics>,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            UpstreamEvent::Inbound {
                device,
                from,
                upstream_id,
                body,
            } => {
                metrics.upstream_event("inbound");
                if let Some(ws) = registry.by_id(&device.workspace)
                    && let Some(h) = sessions.get(ws.idx, &device.device)
                {
                    // Best effort: a full control queue only makes first-contact rules stricter.
                    let _ = h.ctl.try_send(Box::new(Control::Inbound(from.clone())));
                }
                let kind = EventKind::Inbound {
                    device_id: device.device,
                    from,
                    upstream_id,
                    body,
                };
                match registry.by_id(&device.workspace) {
                    Some(ws) => ws.publish(kind),
                    None => {
                        tracing::warn!(workspace = %device.workspace, "inbound message for an unknown workspace dropped")
                    }
                }
            }
            UpstreamEvent::Receipt {
                device,
                from,
                upstream_ids,
                kind,
            } => {
                use crate::upstream::ReceiptKind;
                let (label, status) = match kind {
                    ReceiptKind::Delivered => ("receipt_delivered", ReceiptStatus::Delivered),
                    ReceiptKind::Read => ("receipt_read", ReceiptStatus::Read),
                    ReceiptKind::Played => ("receipt_played", ReceiptStatus::Played),
                };
                metrics.upstream_event(label);
                let Some(ws) = registry.by_id(&device.workspace) else {
                    tracing::warn!(workspace = %device.workspace, "receipt for an unknown workspace dropped");
                    continue;
                };
                // WhatsApp batches receipts; the protocol bounds ids per event, so split.
                for ids in upstream_ids.chunks(waping_protocol::limits::MAX_RECEIPT_IDS) {
                    ws.publish(EventKind::Receipt {
                        device_id: device.device.clone(),
                        from: from.clone(),
                        upstream_ids: ids.to_vec(),
                        status,
                    });
                }
            }
            UpstreamEvent::Session { device, event } => {
                metrics.upstream_event(session_label(&event));
                let delivered = match registry.by_id(&device.workspace) {
                    Some(ws) => sessions.deliver(ws.idx, &device.device, event).await,
                    None => false,
                };
                if !delivered {
                    tracing::warn!(workspace = %device.workspace, device = %device.device,
                        "session event for a device without a session dropped");
                }
            }
        }
    }
}

fn session_label(e: &SessionEvent) -> &'static str {
    match e {
        SessionEvent::Qr { .. } => "qr",
        SessionEvent::PairingCode { .. } => "pairing_code",
        SessionEvent::Paired { .. } => "paired",
        SessionEvent::Connected => "connected",
        SessionEvent::Disconnected { .. } => "disconnected",
        SessionEvent::LoggedOut { .. } => "logged_out",
        SessionEvent::Banned { .. } => "banned",
        SessionEvent::StreamReplaced => "stream_replaced",
    }
}

#[cfg(test)]
mod tests;
