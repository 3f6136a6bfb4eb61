//! A simulated WhatsApp: latency (fixed, uniform jitter, log-normal, slow answers), failures,
//! a per-device throughput ceiling and random 429s, generated inbound traffic, delivery
//! receipts, duplicate answers, and session faults (drops, logouts, bans, a mass disconnect).
//!
//! Everything random is seeded and drawn per device: a device's generator derives from the
//! seed, the device id and how often the device has connected, so what happens to one device
//! does not depend on how the traffic of the others interleaves.
//!
//! It models the other side, not our limiter, so it keeps its own tiny rate
//! model instead of reusing [`crate::limiter`]: a bug in one must not hide in the other.
//!
//! [`SimHub`] is one simulated WhatsApp: a simulator process serves every gateway connection
//! from one hub, so the delivery record, the connect ledger (connect attempts per second as
//! WhatsApp sees them) and a mass disconnect span all of them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::sync::Notify;
use tokio::time::Instant;
use waping_protocol::{Body, Text};

use super::*;
use crate::config::SimConfig;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One simulated WhatsApp, shared by every gateway connection it serves.
pub struct SimHub {
    cfg: SimConfig,
    /// Time origin of the connect ledger (tokio's clock: tests on a paused runtime control it).
    origin: Instant,
    deliveries: Arc<Deliveries>,
    connects: ConnectLedger,
    /// The simulators of the live gateway connections (for counts and a mass disconnect).
    members: Mutex<Vec<Weak<Inner>>>,
}

impl std::fmt::Debug for SimHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHub")
            .field("connected", &self.connected())
            .finish()
    }
}

/// What a simulator saw, for the load harness (also sent over the remote wire as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimStats {
    /// Devices connected now.
    pub connected: u64,
    /// Gateway connections served now.
    pub connections: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Resends answered "already sent".
    pub repeats: u64,
    /// Connect attempts as WhatsApp saw them.
    pub connects: ConnectStats,
}

/// Connect attempts observed on the WhatsApp side: what a node-wide connect cap must bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectStats {
    /// Connect attempts since the simulator started.
    pub attempts: u64,
    /// The most attempts seen in any window of one second (sliding), since the start.
    pub peak_per_second: u32,
    /// Attempts since the last [`SimHub::mark`].
    pub attempts_since_mark: u64,
    /// The most attempts in any one-second window ending after the last mark.
    pub peak_per_second_since_mark: u32,
    /// Seconds since the mark (whole, from the mark) with their attempt counts; only seconds
    /// with attempts, at most [`MAX_SECONDS_REPORTED`] of them.
    pub per_second_since_mark: Vec<(u32, u32)>,
}

/// Bound on [`ConnectStats::per_second_since_mark`], so the stats fit one wire string.
pub const MAX_SECONDS_REPORTED: usize = 2000;

/// Counts connect attempts: the total, a sliding one-second window (its deque holds at most
/// the peak number of attempts in one second), and per-second counts since a mark.
#[derive(Debug, Default)]
struct ConnectLedger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    window: VecDeque<u64>,
    attempts: u64,
    peak: u32,
    mark_ns: u64,
    since_mark: u64,
    peak_since_mark: u32,
    per_second: BTreeMap<u32, u32>,
}

const SECOND_NS: u64 = 1_000_000_000;

impl ConnectLedger {
    fn record(&self, now_ns: u64) {
        let mut s = lock(&self.state);
        s.attempts += 1;
        s.since_mark += 1;
        // The window is (now - 1 s, now]: an attempt exactly one second old has left it.
        while let Some(&first) = s.window.front() {
            if first + SECOND_NS <= now_ns {
                s.window.pop_front();
            } else {
                break;
            }
        }
        s.window.push_back(now_ns);
        let n = s.window.len() as u32;
        s.peak = s.peak.max(n);
        s.peak_since_mark = s.peak_since_mark.max(n);
        let sec = (now_ns.saturating_sub(s.mark_ns) / SECOND_NS) as u32;
        if s.per_second.len() < MAX_SECONDS_REPORTED || s.per_second.contains_key(&sec) {
            *s.per_second.entry(sec).or_default() += 1;
        }
    }

    fn mark(&self, now_ns: u64) {
        let mut s = lock(&self.state);
        s.mark_ns = now_ns;
        s.since_mark = 0;
        s.peak_since_mark = 0;
        s.per_second.clear();
    }

    fn stats(&self) -> ConnectStats {
        let s = lock(&self.state);
        ConnectStats {
            attempts: s.attempts,
            peak_per_second: s.peak,
            attempts_since_mark: s.since_mark,
            peak_per_second_since_mark: s.peak_since_mark,
            per_second_since_mark: s.per_second.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

impl SimHub {
    /// A simulated WhatsApp; opens `cfg.ledger` if set.
    pub fn new(cfg: SimConfig) -> std::io::Result<Arc<SimHub>> {
        let deliveries = Deliveries::new(cfg.dedup_capacity, cfg.ledger.as_deref())?;
        Ok(SimHub::with_deliveries(cfg, Arc::new(deliveries)))
    }

    /// A simulated WhatsApp with a delivery record the caller keeps (tests read its counters).
    pub fn with_deliveries(cfg: SimConfig, deliveries: Arc<Deliveries>) -> Arc<SimHub> {
        Arc::new(SimHub {
            cfg,
            origin: Instant::now(),
            deliveries,
            connects: ConnectLedger::default(),
            members: Mutex::new(Vec::new()),
        })
    }

    /// The behaviour it simulates.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The shared delivery record.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// A simulator for one gateway connection, pushing its events into `events`; starts the
    /// inbound generator and the timer task (receipts, faults) if configured.
    pub fn upstream(self: &Arc<Self>, events: EventSink) -> SimUpstream {
        let inner = Arc::new(Inner {
            hub: self.clone(),
            origin: Instant::now(),
            devices: DashMap::new(),
            linked: DashSet::new(),
            linking: DashMap::new(),
            epochs: DashMap::new(),
            revoked: DashSet::new(),
            banned: DashMap::new(),
            events,
            counter: AtomicU64::new(0),
            timers: Timers::default(),
        });
        {
            let mut m = lock(&self.members);
            m.retain(|w| w.strong_count() > 0);
            m.push(Arc::downgrade(&inner));
        }
        if self.cfg.inbound_per_second > 0.0 {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move { inbound_generator(weak).await });
        }
        if uses_timers(&self.cfg) {
            tokio::spawn(timer_driver(Arc::downgrade(&inner), inner.timers.wake.clone()));
        }
        SimUpstream { inner }
    }

    fn live(&self) -> Vec<Arc<Inner>> {
        lock(&self.members).iter().filter_map(Weak::upgrade).collect()
    }

    /// Devices connected now, over every gateway connection.
    pub fn connected(&self) -> usize {
        self.live().iter().map(|i| i.devices.len()).sum()
    }

    /// Drops every connected device of every gateway connection at once (each gets
    /// [`SessionEvent::Disconnected`]), as when WhatsApp's edge loses all sockets of a node.
    /// Returns how many were dropped.
    pub async fn mass_disconnect(&self, reason: &str) -> usize {
        let members = self.live();
        // Every device is detached before the first event goes out: nobody sends in between.
        let dropped: Vec<(Arc<Inner>, Vec<DeviceRef>)> = members
            .into_iter()
            .map(|i| {
                let d = i.detach_all();
                (i, d)
            })
            .collect();
        let mut n = 0;
        for (inner, devices) in dropped {
            n += devices.len();
            inner.announce_drops(devices, reason).await;
        }
        n
    }

    /// Starts a new measurement of the connect ledger (its `*_since_mark` fields).
    pub fn mark(&self) {
        self.connects.mark(self.now_ns());
    }

    /// The connect ledger.
    pub fn connect_stats(&self) -> ConnectStats {
        self.connects.stats()
    }

    /// Everything the harness reads.
    pub fn stats(&self) -> SimStats {
        let live = self.live();
        let d = self.deliveries.stats();
        SimStats {
            connected: live.iter().map(|i| i.devices.len() as u64).sum(),
            connections: live.len() as u64,
            delivered: d.delivered,
            repeats: d.repeats,
            connects: self.connects.stats(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

fn uses_timers(cfg: &SimConfig) -> bool {
    cfg.receipt_delivered_ms > 0
        || cfg.disconnect_mean_s > 0.0
        || cfg.logout_mean_s > 0.0
        || cfg.ban_mean_s > 0.0
}

/// The in-process simulator (one gateway connection's view of a [`SimHub`]).
#[derive(Clone)]
pub struct SimUpstream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUpstream")
            .field("devices", &self.inner.devices.len())
            .finish()
    }
}

struct Inner {
    hub: Arc<SimHub>,
    /// Time origin of the device-rate model and the timers.
    origin: Instant,
    /// Connected devices.
    devices: DashMap<DeviceRef, DeviceSim>,
    /// Devices with credentials (all of them unless `require_link`).
    linked: DashSet<DeviceRef>,
    /// Link in progress per device, by generation: a newer link or a logout cancels the older.
    linking: DashMap<DeviceRef, u64>,
    /// How often each device has connected: part of its generator's seed.
    epochs: DashMap<DeviceRef, u64>,
    /// Devices the simulated WhatsApp logged out: connects fail until a new link.
    revoked: DashSet<DeviceRef>,
    /// Banned devices and the end of a temporary ban (ns since `origin`).
    banned: DashMap<DeviceRef, Option<u64>>,
    events: EventSink,
    counter: AtomicU64,
    timers: Timers,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the timer task see that the simulator is gone.
        self.timers.wake.notify_one();
    }
}

/// What the simulated WhatsApp does to a connected device on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection drops ([`SessionEvent::Disconnected`]).
    Drop,
    /// The link ends ([`SessionEvent::LoggedOut`]); connects fail until a new link.
    Logout,
    /// The account is banned ([`SessionEvent::Banned`]), for `ban_duration_s` or for good.
    Ban,
}

enum Job {
    Fault {
        device: DeviceRef,
        epoch: u64,
        kind: Fault,
    },
    Receipt {
        device: DeviceRef,
        from: Text,
        id: Text,
        kind: ReceiptKind,
    },
}

/// Deferred work, by due time (ns since the simulator's origin) and insertion order.
#[derive(Default)]
struct Timers {
    jobs: Mutex<BTreeMap<(u64, u64), Job>>,
    seq: AtomicU64,
    wake: Arc<Notify>,
}

impl Timers {
    fn schedule(&self, due_ns: u64, job: Job) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut jobs = lock(&self.jobs);
        let earliest = jobs.keys().next().is_none_or(|k| (due_ns, seq) < *k);
        jobs.insert((due_ns, seq), job);
        drop(jobs);
        if earliest {
            self.wake.notify_one();
        }
    }
}

async fn timer_driver(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let (due, next, origin) = {
            let Some(inner) = weak.upgrade() else { return };
            let now = inner.now_ns();
            let mut jobs = lock(&inner.timers.jobs);
            let mut due = Vec::new();
            while let Some(entry) = jobs.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            let next = jobs.keys().next().map(|k| k.0);
            (due, next, inner.origin)
        };
        if !due.is_empty() {
            let Some(inner) = weak.upgrade() else { return };
            for job in due {
                if !inner.run(job).await {
                    return;
                }
            }
            continue;
        }
        // A job scheduled since the check left a permit: this returns at once.
        let notified = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(origin + Duration::from_nanos(at)) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// One connected device.
struct DeviceSim {
    /// Theoretical arrival time (ns since origin) of the device's send budget.
    tat: AtomicU64,
    /// Which connection of the device this is.
    epoch: u64,
    /// Seed of this connection's draws.
    seed: u64,
    /// Draws so far.
    draws: AtomicU64,
}

impl DeviceSim {
    /// The next generator of this device: a function of seed, device, connection and draw
    /// number only, so other devices' traffic never changes it.
    fn rng(&self) -> SmallRng {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(splitmix(self.seed ^ splitmix(n)))
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of workspace and device: stable across processes and Rust versions.
fn device_hash(d: &DeviceRef) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d.workspace.bytes().chain([0xff]).chain(d.device.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A standard normal draw (Box–Muller).
fn std_normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One send's latency: base (fixed or log-normal around it), uniform jitter, maybe slow.
fn send_latency(cfg: &SimConfig, rng: &mut SmallRng) -> Duration {
    let mut ms = cfg.latency_ms as f64;
    if cfg.latency_lognormal_sigma > 0.0 && ms > 0.0 {
        ms *= (cfg.latency_lognormal_sigma * std_normal(rng)).exp();
    }
    if cfg.latency_jitter_ms > 0 {
        ms += rng.random_range(0..=cfg.latency_jitter_ms) as f64;
    }
    if cfg.slow_ack_rate > 0.0 && rng.random_bool(cfg.slow_ack_rate) {
        ms += cfg.slow_ack_ms as f64;
    }
    // Bounded like the config's latency_ms (a log-normal tail is unbounded).
    Duration::from_secs_f64((ms / 1000.0).min(600.0))
}

/// When the next fault of a fresh connection happens and which: the drop, logout and ban
/// processes are independent Poisson processes, so the first event comes after an exponential
/// time of the summed rate and is each kind in proportion to its rate.
fn next_fault(cfg: &SimConfig, rng: &mut SmallRng) -> Option<(Duration, Fault)> {
    let inv = |mean: f64| if mean > 0.0 { 1.0 / mean } else { 0.0 };
    let rates = [
        (Fault::Drop, inv(cfg.disconnect_mean_s)),
        (Fault::Logout, inv(cfg.logout_mean_s)),
        (Fault::Ban, inv(cfg.ban_mean_s)),
    ];
    let total: f64 = rates.iter().map(|r| r.1).sum();
    if total <= 0.0 {
        return None;
    }
    let after = -(1.0 - rng.random::<f64>()).ln() / total;
    let mut pick = rng.random::<f64>() * total;
    let mut kind = Fault::Drop;
    for (k, r) in rates {
        if r > 0.0 {
            kind = k;
            if pick < r {
                break;
            }
            pick -= r;
        }
    }
    Some((Duration::from_secs_f64(after.min(1e9)), kind))
}

/// The fate of one send, decided when it arrives.
#[derive(Debug)]
pub(crate) struct Decision {
    /// How long until the answer.
    pub latency: Duration,
    /// The answer.
    pub outcome: Result<UpstreamAck, UpstreamError>,
    /// Answer twice (the remote simulator writes the answer frame again).
    pub duplicate: bool,
}

impl SimUpstream {
    /// A simulator of its own (its own [`SimHub`]) pushing its events into `events`.
    ///
    /// # Panics
    /// If `cfg.ledger` cannot be opened; use [`SimUpstream::with_deliveries`] to handle that.
    pub fn new(cfg: SimConfig, events: EventSink) -> Self {
        let deliveries = Deliveries::new(cfg.dedup_capacity, cfg.ledger.as_deref())
            .unwrap_or_else(|e| panic!("opening simulator ledger {:?}: {e}", cfg.ledger));
        SimUpstream::with_deliveries(cfg, events, Arc::new(deliveries))
    }

    /// A simulator of its own sharing its delivery record with others.
    pub fn with_deliveries(cfg: SimConfig, events: EventSink, deliveries: Arc<Deliveries>) -> Self {
        SimHub::with_deliveries(cfg, deliveries).upstream(events)
    }

    /// Its hub (connect ledger, mass disconnect over every simulator of the hub).
    pub fn hub(&self) -> &Arc<SimHub> {
        &self.inner.hub
    }

    /// Delivery counters.
    pub fn stats(&self) -> DeliveryStats {
        self.inner.hub.deliveries.stats()
    }

    /// Number of attached devices.
    pub fn device_count(&self) -> usize {
        self.inner.devices.len()
    }

    /// Drops every device of this simulator at once; returns how many.
    pub async fn mass_disconnect(&self, reason: &str) -> usize {
        let devices = self.inner.detach_all();
        let n = devices.len();
        self.inner.announce_drops(devices, reason).await;
        n
    }

    /// Connect attempts as WhatsApp saw them (over the whole hub).
    pub fn connect_stats(&self) -> ConnectStats {
        self.inner.hub.connect_stats()
    }

    /// Decides the fate of one send without waiting (the latency is returned to sleep on).
    pub(crate) fn decide(&self, msg: &UpstreamSend) -> Decision {
        let inner = &self.inner;
        let cfg = &inner.hub.cfg;
        let Some(dev) = inner.devices.get(&msg.device) else {
            return Decision {
                latency: Duration::from_millis(cfg.latency_ms),
                outcome: Err(UpstreamError::Disconnected),
                duplicate: false,
            };
        };
        let mut rng = dev.rng();
        let latency = send_latency(cfg, &mut rng);
        let fail = |e| Decision {
            latency,
            outcome: Err(e),
            duplicate: false,
        };
        // A resend of something delivered is answered before any failure is simulated:
        // WhatsApp would not fail a message it already has.
        if inner.hub.deliveries.repeat(msg) {
            let ack = UpstreamAck {
                upstream_id: format!("SIM.{}", msg.upstream_id),
                already_sent: true,
            };
            return Decision {
                latency,
                outcome: Ok(ack),
                duplicate: false,
            };
        }
        if cfg.device_rate_per_second > 0 {
            let now = inner.now_ns();
            let interval = 1_000_000_000 / u64::from(cfg.device_rate_per_second);
            // WhatsApp tolerates a short burst; model one second's worth.
            let tolerance = interval.saturating_mul(u64::from(cfg.device_rate_per_second).saturating_sub(1));
            let mut tat = dev.tat.load(Ordering::Acquire);
            loop {
                let base = tat.max(now);
                if base - now > tolerance {
                    let wait = Duration::from_nanos(base - now - tolerance);
                    return fail(UpstreamError::Throttled { retry_after: wait });
                }
                match dev
                    .tat
                    .compare_exchange_weak(tat, base + interval, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break,
                    Err(t) => tat = t,
                }
            }
        }
        if cfg.throttle_rate > 0.0 && rng.random_bool(cfg.throttle_rate) {
            return fail(UpstreamError::Throttled {
                retry_after: Duration::from_millis(cfg.throttle_retry_ms),
            });
        }
        if cfg.failure_rate > 0.0 && rng.random_bool(cfg.failure_rate) {
            return fail(UpstreamError::Rejected("simulated failure".into()));
        }
        if cfg.transient_failure_rate > 0.0 && rng.random_bool(cfg.transient_failure_rate) {
            return fail(UpstreamError::Unavailable("simulated transient failure".into()));
        }
        let already_sent = inner.hub.deliveries.deliver(msg);
        let upstream_id = format!("SIM.{}", msg.upstream_id);
        let duplicate =
            !already_sent && cfg.duplicate_ack_rate > 0.0 && rng.random_bool(cfg.duplicate_ack_rate);
        if !already_sent && cfg.receipt_delivered_ms > 0 {
            let read = cfg.receipt_read_rate > 0.0 && rng.random_bool(cfg.receipt_read_rate);
            let delivered_at =
                inner.now_ns() + latency.as_nanos() as u64 + cfg.receipt_delivered_ms * 1_000_000;
            let mut receipts = vec![(delivered_at, ReceiptKind::Delivered)];
            if read {
                receipts.push((delivered_at + cfg.receipt_read_ms * 1_000_000, ReceiptKind::Read));
            }
            let copies: u64 = if duplicate { 2 } else { 1 };
            for (at, kind) in receipts {
                for copy in 0..copies {
                    inner.timers.schedule(
                        at + copy * 1_000_000,
                        Job::Receipt {
                            device: msg.device.clone(),
                            from: msg.recipient.clone(),
                            id: Text::from(upstream_id.as_str()),
                            kind,
                        },
                    );
                }
            }
        }
        if !already_sent && cfg.lost_answer_rate > 0.0 && rng.random_bool(cfg.lost_answer_rate) {
            // Delivered, but the gateway never hears so: it must resend and be told "already sent".
            return fail(UpstreamError::Timeout);
        }
        Decision {
            latency,
            outcome: Ok(UpstreamAck {
                upstream_id,
                already_sent,
            }),
            duplicate,
        }
    }
}

impl Upstream for SimUpstream {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn provisioned(&self, device: &DeviceRef) -> bool {
        let i = &self.inner;
        !i.revoked.contains(device) && (!i.hub.cfg.require_link || i.linked.contains(device))
    }

    fn connect(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Every attempt counts, refused or not: it is what WhatsApp's edge sees.
            inner.hub.connects.record(inner.hub.now_ns());
            if inner.revoked.contains(&device) {
                return Err(UpstreamError::LoggedOut);
            }
            let ban = inner.banned.get(&device).map(|b| *b);
            match ban {
                Some(None) => return Err(UpstreamError::Banned),
                Some(Some(until)) if inner.now_ns() < until => return Err(UpstreamError::Banned),
                Some(Some(_)) => {
                    inner.banned.remove(&device);
                }
                None => {}
            }
            if inner.hub.cfg.require_link && !inner.linked.contains(&device) {
                return Err(UpstreamError::NotLinked);
            }
            inner.linked.insert(device.clone());
            inner.attach(&device);
            inner.session(device, SessionEvent::Connected).await
        })
    }

    fn disconnect(&self, device: DeviceRef) -> BoxFuture<'static, ()> {
        self.inner.devices.remove(&device);
        Box::pin(async {})
    }

    fn link(&self, device: DeviceRef, method: LinkMethod) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let generation = inner.counter.fetch_add(1, Ordering::Relaxed);
            inner.linking.insert(device.clone(), generation);
            inner.linked.remove(&device);
            inner.revoked.remove(&device);
            inner.devices.remove(&device);
            let weak = Arc::downgrade(&inner);
            tokio::spawn(link_flow(weak, device, method, generation));
            Ok(())
        })
    }

    fn logout(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        self.inner.linking.remove(&device);
        self.inner.linked.remove(&device);
        self.inner.devices.remove(&device);
        Box::pin(async { Ok(()) })
    }

    fn send(&self, msg: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        let d = self.decide(&msg);
        Box::pin(async move {
            if !d.latency.is_zero() {
                tokio::time::sleep(d.latency).await;
            }
            d.outcome
        })
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    async fn session(&self, device: DeviceRef, event: SessionEvent) -> Result<(), UpstreamError> {
        self.events
            .send(UpstreamEvent::Session { device, event })
            .await
            .map_err(|_| UpstreamError::Unavailable("gateway stopped".into()))
    }

    /// Connects a device: a new connection (epoch) with its own draws, and its first fault
    /// scheduled if faults are configured.
    fn attach(&self, device: &DeviceRef) {
        let epoch = {
            let mut e = self.epochs.entry(device.clone()).or_insert(0);
            *e += 1;
            *e
        };
        let dev = DeviceSim {
            tat: AtomicU64::new(0),
            epoch,
            seed: splitmix(self.hub.cfg.seed ^ splitmix(device_hash(device) ^ splitmix(epoch))),
            draws: AtomicU64::new(0),
        };
        let fault = next_fault(&self.hub.cfg, &mut dev.rng());
        self.devices.insert(device.clone(), dev);
        if let Some((after, kind)) = fault {
            self.timers.schedule(
                self.now_ns().saturating_add(after.as_nanos() as u64),
                Job::Fault {
                    device: device.clone(),
                    epoch,
                    kind,
                },
            );
        }
    }

    /// Detaches every connected device; returns them.
    fn detach_all(&self) -> Vec<DeviceRef> {
        let keys: Vec<DeviceRef> = self.devices.iter().map(|e| e.key().clone()).collect();
        keys.into_iter()
            .filter(|k| self.devices.remove(k).is_some())
            .collect()
    }

    async fn announce_drops(&self, devices: Vec<DeviceRef>, reason: &str) {
        for device in devices {
            let event = SessionEvent::Disconnected {
                reason: reason.to_string(),
            };
            if self.session(device, event).await.is_err() {
                return;
            }
        }
    }

    /// Runs a due job; false once the gateway has stopped listening.
    async fn run(&self, job: Job) -> bool {
        match job {
            Job::Receipt {
                device,
                from,
                id,
                kind,
            } => {
                let ev = UpstreamEvent::Receipt {
                    device,
                    from,
                    upstream_ids: vec![id],
                    kind,
                };
                self.events.send(ev).await.is_ok()
            }
            Job::Fault { device, epoch, kind } => {
                // Only the connection the fault was drawn for: a reconnect drew a new one.
                if self.devices.remove_if(&device, |_, d| d.epoch == epoch).is_none() {
                    return true;
                }
                let event = match kind {
                    Fault::Drop => SessionEvent::Disconnected {
                        reason: "simulated connection drop".into(),
                    },
                    Fault::Logout => {
                        self.linked.remove(&device);
                        self.revoked.insert(device.clone());
                        SessionEvent::LoggedOut {
                            reason: "simulated: the device was removed on the phone".into(),
                        }
                    }
                    Fault::Ban => {
                        let secs = self.hub.cfg.ban_duration_s;
                        let until =
                            (secs > 0).then(|| self.now_ns().saturating_add(secs.saturating_mul(SECOND_NS)));
                        self.banned.insert(device.clone(), until);
                        SessionEvent::Banned {
                            until_ms: (secs > 0).then(|| crate::unix_ms() + secs * 1000),
                            reason: "simulated ban".into(),
                        }
                    }
                };
                self.session(device, event).await.is_ok()
            }
        }
    }
}

/// What the simulated WhatsApp has delivered: upstream-id deduplication and an optional ledger.
///
/// Shared by every connection of a simulator process, so a gateway that
/// reconnects after a crash and resends is answered "already sent", the way
/// WhatsApp treats a repeated message id.
#[derive(Debug)]
pub struct Deliveries {
    capacity: usize,
    /// Two generations of 128-bit id hashes: when `current` is full it becomes
    /// `previous`, so memory is bounded and the most recent `capacity` ids are
    /// always remembered.
    seen: std::sync::Mutex<(HashSet<u128>, HashSet<u128>)>,
    ledger: Option<std::sync::Mutex<std::fs::File>>,
    delivered: AtomicU64,
    repeats: AtomicU64,
}

/// Counters of a [`Deliveries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Resends answered "already sent".
    pub repeats: u64,
}

impl Deliveries {
    /// Remembers `capacity` ids (0: no deduplication) and appends to `ledger` if given.
    pub fn new(capacity: u32, ledger: Option<&std::path::Path>) -> std::io::Result<Self> {
        let ledger = match ledger {
            Some(p) => Some(std::sync::Mutex::new(
                std::fs::OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(Deliveries {
            capacity: capacity as usize,
            seen: Default::default(),
            ledger,
            delivered: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> DeliveryStats {
        DeliveryStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            repeats: self.repeats.load(Ordering::Relaxed),
        }
    }

    /// True if `msg` was delivered before (counted as a repeat), without recording anything new.
    fn repeat(&self, msg: &UpstreamSend) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let h = id_hash(&msg.upstream_id);
        let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let known = g.0.contains(&h) || g.1.contains(&h);
        drop(g);
        if known {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        }
        known
    }

    /// True if `msg` was delivered before; otherwise records it as delivered now.
    fn deliver(&self, msg: &UpstreamSend) -> bool {
        if self.capacity > 0 {
            let h = id_hash(&msg.upstream_id);
            let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if g.0.contains(&h) || g.1.contains(&h) {
                drop(g);
                self.repeats.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if g.0.len() >= self.capacity.div_ceil(2) {
                let full = std::mem::take(&mut g.0);
                g.1 = full;
            }
            g.0.insert(h);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &self.ledger {
            use std::io::Write;
            let text = match &msg.body {
                Body::Text(t) => t.as_str().to_string(),
                Body::Media { reference, .. } => format!("media:{}", reference.as_str()),
            };
            let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\n",
                msg.upstream_id,
                clean(&msg.device.workspace),
                clean(msg.device.device.as_str()),
                clean(msg.recipient.as_str()),
                clean(&text)
            );
            // One write per line on an O_APPEND file: lines from concurrent sends never interleave.
            let mut f = l.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "simulator ledger write failed");
            }
        }
        false
    }
}

fn id_hash(id: &str) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    // Two differently keyed SipHashes: 128 bits, so distinct ids never collide in practice.
    let mut a =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    a.write_u8(1);
    a.write(id.as_bytes());
    let mut b =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    b.write_u8(2);
    b.write(id.as_bytes());
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Plays the phone during a link: QR payloads (rotating) or a pairing code, then, after
/// `link_pair_after_ms`, the confirmation and the connection.
async fn link_flow(inner: std::sync::Weak<Inner>, device: DeviceRef, method: LinkMethod, generation: u64) {
    let current = |i: &Inner| i.linking.get(&device).is_some_and(|g| *g == generation);
    let (pair_after, rotate) = match inner.upgrade() {
        Some(i) => (i.hub.cfg.link_pair_after_ms, i.hub.cfg.qr_rotate_ms.max(1)),
        None => return,
    };
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if !current(&i) {
            return;
        }
        let elapsed = started.elapsed().as_millis() as u64;
        if pair_after > 0 && elapsed >= pair_after {
            i.linking.remove(&device);
            i.linked.insert(device.clone());
            i.attach(&device);
            let account = format!("49170{:08}@s.whatsapp.net", splitmix(generation) % 100_000_000);
            let _ = i.session(device.clone(), SessionEvent::Paired { account }).await;
            let _ = i.session(device, SessionEvent::Connected).await;
            return;
        }
        // QR payloads rotate; a pairing code is shown once and stays valid.
        let ev = match &method {
            LinkMethod::Qr => Some(SessionEvent::Qr {
                code: format!(
                    "2@sim{generation}x{n},{},{}",
                    device.workspace,
                    device.device.as_str()
                ),
                valid_for: Duration::from_millis(rotate),
            }),
            LinkMethod::PairingCode { .. } if n == 0 => Some(SessionEvent::PairingCode {
                code: pairing_code(generation),
            }),
            LinkMethod::PairingCode { .. } => None,
        };
        if let Some(ev) = ev
            && i.session(device.clone(), ev).await.is_err()
        {
            return;
        }
        n += 1;
        drop(i);
        let next = if pair_after > 0 {
            rotate.min(pair_after - elapsed)
        } else {
            rotate
        };
        tokio::time::sleep(Duration::from_millis(next)).await;
    }
}

/// Eight characters from WhatsApp's pairing-code alphabet (no 0/O, 1/I), shown as `XXXX-XXXX`.
fn pairing_code(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTVWXYZ23456789";
    let mut x = splitmix(seed);
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        x /= ALPHABET.len() as u64;
    }
    s
}

async fn inbound_generator(inner: std::sync::Weak<Inner>) {
    const TICK: Duration = Duration::from_millis(20);
    let mut credit = 0.0f64;
    let mut seq = 0u64;
    let mut rng = SmallRng::seed_from_u64(inner.upgrade().map_or(1, |i| i.hub.cfg.seed.wrapping_add(7)));
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let devices: Vec<DeviceRef> = inner.devices.iter().map(|e| e.key().clone()).collect();
        if devices.is_empty() {
            continue;
        }
        credit += inner.hub.cfg.inbound_per_second * TICK.as_secs_f64() * devices.len() as f64;
        while credit >= 1.0 {
            credit -= 1.0;
            seq += 1;
            let device = devices[rng.random_range(0..devices.len())].clone();
            let from = format!("49{:010}", rng.random_range(0..10_000_000_000u64));
            let ev = UpstreamEvent::Inbound {
                device,
                from: Text::from(from),
                upstream_id: Text::from(format!("SIMIN.{seq}")),
                body: Body::Text(Text::from(format!("simulated inbound {seq}"))),
            };
            // Back-pressure: wait for the gateway rather than drop.
            if inner.events.send(ev).await.is_err() {
                return;
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn dev(d: &str) -> DeviceRef {
        DeviceRef {
            workspace: "w".into(),
            device: d.into(),
        }
    }

    /// A message with a fresh upstream id.
    fn msg(d: &str) -> UpstreamSend {
        static N: AtomicU64 = AtomicU64::new(0);
        msg_id(d, &format!("x{}", N.fetch_add(1, Ordering::Relaxed)))
    }

    fn msg_id(d: &str, id: &str) -> UpstreamSend {
        UpstreamSend {
            device: dev(d),
            recipient: "4915112345678".into(),
            body: Body::Text(format!("hi {id}").into()),
            upstream_id: id.into(),
        }
    }

    #[tokio::test]
    async fn connect_then_send() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let sim = SimUpstream::new(SimConfig::default(), tx);
        assert_eq!(sim.send(msg("a")).await, Err(UpstreamError::Disconnected));
        sim.connect(dev("a")).await.unwrap();
        match rx.recv().await.unwrap() {
            UpstreamEvent::Session { event, .. } => assert_eq!(event, SessionEvent::Connected),
            other => panic!("{other:?}"),
        }
        assert_eq!(sim.send(msg_id("a", "x")).await.unwrap().upstream_id, "SIM.x");
    }

    #[tokio::test(start_paused = true)]
    async fn qr_link_rotates_then_pairs_and_connects() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let cfg = SimConfig {
            require_link: true,
            link_pair_after_ms: 50_000,
            qr_rotate_ms: 20_000,
            ..Default::default()
        };
        let sim = SimUpstream::new(cfg, tx);
        assert!(!sim.provisioned(&dev("a")));
        assert_eq!(sim.connect(dev("a")).await, Err(UpstreamError::NotLinked));
        sim.link(dev("a"), LinkMethod::Qr).await.unwrap();
        let mut codes = Vec::new();
        loop {
            match rx.recv().await.unwrap() {
                UpstreamEvent::Session {
                    event: SessionEvent::Qr { code, .. },
                    ..
                } => codes.push(code),
                UpstreamEvent::Session {
                    event: SessionEvent::Paired { account },
                    ..
                } => {
                    assert!(account.ends_with("@s.whatsapp.net"));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // At 0, 20 and 40 s; paired at 50 s.
        assert_eq!(codes.len(), 3, "{codes:?}");
        assert_eq!(codes.iter().collect::<HashSet<_>>().len(), 3, "refs rotate");
        assert!(matches!(
            rx.recv().await.unwrap(),
            UpstreamEvent::Session {
                event: SessionEvent::Connected,
                ..
            }
        ));
        assert!(sim.provisioned(&dev("a")));
        sim.send(msg_id("a", "after-link")).await.unwrap();
        // Logout forgets the credentials.
        sim.logout(dev("a")).await.unwrap();
        assert_eq!(sim.connect(dev("a")).await, Err(UpstreamError::NotLinked));
    }

    #[tokio::test(start_paused = true)]
    async fn pairing_code_link_and_a_link_that_never_pairs() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                require_link: true,
                link_pair_after_ms: 0,
                ..Default::default()
            },
            tx,
        );
        sim.link(
            dev("p"),
            LinkMethod::PairingCode {
                phone: "4915112345678".into(),
            },
        )
        .await
        .unwrap();
        match rx.recv().await.unwrap() {
            UpstreamEvent::Session {
                event: SessionEvent::PairingCode { code },
                ..
            } => {
                assert_eq!(code.len(), 9);
                assert_eq!(&code[4..5], "-");
            }
            other => panic!("{other:?}"),
        }
        // Never paired: nothing but silence for a long time, then the gateway gives up (logout).
        let quiet = tokio::time::timeout(Duration::from_secs(600), rx.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        sim.logout(dev("p")).await.unwrap();
        assert!(!sim.provisioned(&dev("p")));
    }

    #[tokio::test]
    async fn resends_are_answered_already_sent_and_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.tsv");
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let cfg = SimConfig {
            ledger: Some(ledger.clone()),
            ..Default::default()
        };
        let shared = Arc::new(Deliveries::new(cfg.dedup_capacity, cfg.ledger.as_deref()).unwrap());
        // Two simulators (two gateway connections, e.g. before and after a crash) share deliveries.
        let a = SimUpstream::with_deliveries(cfg.clone(), tx.clone(), shared.clone());
        let b = SimUpstream::with_deliveries(cfg, tx, shared);
        a.connect(dev("a")).await.unwrap();
        b.connect(dev("a")).await.unwrap();
        let first = a.send(msg_id("a", "m1")).await.unwrap();
        assert!(!first.already_sent);
        let again = b.send(msg_id("a", "m1")).await.unwrap();
        assert!(again.already_sent);
        assert_eq!(again.upstream_id, first.upstream_id, "same upstream id on resend");
        assert!(!b.send(msg_id("a", "m2")).await.unwrap().already_sent);
        assert_eq!(
            a.stats(),
            DeliveryStats {
                delivered: 2,
                repeats: 1
            }
        );
        let text = std::fs::read_to_string(&ledger).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines,
            ["m1\tw\ta\t4915112345678\thi m1", "m2\tw\ta\t4915112345678\thi m2"]
        );
    }

    #[tokio::test]
    async fn dedup_memory_is_bounded_but_keeps_the_most_recent() {
        let d = Deliveries::new(100, None).unwrap();
        for i in 0..1000 {
            assert!(!d.deliver(&msg_id("a", &format!("id{i}"))));
        }
        let g = d.seen.lock().unwrap();
        assert!(g.0.len() + g.1.len() <= 100);
        drop(g);
        // The last capacity/2 ids are always remembered.
        for i in 950..1000 {
            assert!(d.repeat(&msg_id("a", &format!("id{i}"))), "id{i} forgotten");
        }
        assert!(!d.repeat(&msg_id("a", "id0")), "old ids age out");
    }

    #[tokio::test]
    async fn lost_answers_and_transient_failures_are_retryable() {
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                lost_answer_rate: 1.0,
                ..Default::default()
            },
            tx.clone(),
        );
        sim.connect(dev("a")).await.unwrap();
        let e = sim.send(msg_id("a", "z")).await.unwrap_err();
        assert_eq!(e, UpstreamError::Timeout);
        assert!(e.retryable());
        // The resend finds it delivered.
        assert!(sim.send(msg_id("a", "z")).await.unwrap().already_sent);
        assert_eq!(sim.stats().delivered, 1);

        let sim = SimUpstream::new(
            SimConfig {
                transient_failure_rate: 1.0,
                ..Default::default()
            },
            tx,
        );
        sim.connect(dev("a")).await.unwrap();
        let e = sim.send(msg_id("a", "z")).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Unavailable(_)) && e.retryable());
        assert_eq!(sim.stats().delivered, 0);
    }

    #[tokio::test]
    async fn failure_rate_is_honoured() {
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                failure_rate: 0.25,
                ..Default::default()
            },
            tx,
        );
        sim.connect(dev("a")).await.unwrap();
        let mut failed = 0;
        for _ in 0..4000 {
            if sim.send(msg("a")).await.is_err() {
                failed += 1;
            }
        }
        assert!(
            (800..1200).contains(&failed),
            "{failed} of 4000 failed at rate 0.25"
        );
    }

    #[tokio::test]
    async fn device_ceiling_throttles() {
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                device_rate_per_second: 5,
                ..Default::default()
            },
            tx,
        );
        sim.connect(dev("a")).await.unwrap();
        let results: Vec<_> = futures_lite(sim.clone(), 10).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            ok, 5,
            "a burst of one second's worth passes, the rest is throttled"
        );
        assert!(matches!(results[9], Err(UpstreamError::Throttled { .. })));
    }

    async fn futures_lite(sim: SimUpstream, n: usize) -> Vec<Result<UpstreamAck, UpstreamError>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(sim.send(msg("a")).await);
        }
        v
    }

    #[tokio::test]
    async fn inbound_generated() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                inbound_per_second: 200.0,
                ..Default::default()
            },
            tx,
        );
        sim.connect(dev("a")).await.unwrap();
        let _state = rx.recv().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev, UpstreamEvent::Inbound { .. }), "{ev:?}");
    }

    fn devn(i: usize) -> DeviceRef {
        DeviceRef {
            workspace: "w".into(),
            device: format!("d{i}").into(),
        }
    }

    fn send_to(d: &DeviceRef, id: &str) -> UpstreamSend {
        UpstreamSend {
            device: d.clone(),
            recipient: "4915112345678".into(),
            body: Body::Text("x".into()),
            upstream_id: id.into(),
        }
    }

    /// Connects devices and swallows their Connected events.
    async fn connect_all(sim: &SimUpstream, rx: &mut mpsc::Receiver<UpstreamEvent>, devices: &[DeviceRef]) {
        for d in devices {
            sim.connect(d.clone()).await.unwrap();
            assert!(matches!(
                rx.recv().await.unwrap(),
                UpstreamEvent::Session {
                    event: SessionEvent::Connected,
                    ..
                }
            ));
        }
    }

    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn lognormal_latency_has_its_median_and_a_tail() {
        let (tx, mut rx) = mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                latency_ms: 100,
                latency_lognormal_sigma: 0.5,
                dedup_capacity: 0,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        let mut ms: Vec<f64> = (0..4000)
            .map(|i| sim.decide(&msg_id("a", &format!("l{i}"))).latency.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let (p50, p99) = (ms[2000], ms[3960]);
        // Median e^0 · 100 = 100 ms; p99 is 100 · e^(0.5 · 2.326) ≈ 320 ms.
        assert!((90.0..110.0).contains(&p50), "p50 {p50}");
        assert!((260.0..400.0).contains(&p99), "p99 {p99}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_acks_and_random_429s_come_at_their_rates() {
        let (tx, mut rx) = mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                latency_ms: 10,
                slow_ack_rate: 0.2,
                slow_ack_ms: 3000,
                throttle_rate: 0.1,
                throttle_retry_ms: 45_000,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        let (mut slow, mut throttled) = (0, 0);
        for i in 0..5000 {
            let d = sim.decide(&msg_id("a", &format!("s{i}")));
            if d.latency >= Duration::from_millis(3000) {
                slow += 1;
            }
            match d.outcome {
                Err(UpstreamError::Throttled { retry_after }) => {
                    assert_eq!(retry_after, Duration::from_secs(45));
                    throttled += 1;
                }
                Ok(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!((850..1150).contains(&slow), "{slow} slow of 5000 at 0.2");
        assert!(
            (400..600).contains(&throttled),
            "{throttled} throttled of 5000 at 0.1"
        );
        // The answer really takes that long.
        let started = tokio::time::Instant::now();
        let _ = sim.send(msg_id("a", "timed")).await;
        assert!(started.elapsed() >= Duration::from_millis(10));
    }

    /// The outcomes of one device's sends, given the sends of another device interleaved
    /// before each of them.
    async fn outcomes(seed: u64, noise: usize) -> Vec<(Duration, String)> {
        let (tx, mut rx) = mpsc::channel(8);
        let sim = SimUpstream::new(
            SimConfig {
                seed,
                latency_ms: 50,
                latency_jitter_ms: 50,
                latency_lognormal_sigma: 1.0,
                throttle_rate: 0.3,
                failure_rate: 0.2,
                dedup_capacity: 0,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a"), dev("b")]).await;
        (0..200)
            .map(|i| {
                for j in 0..noise * (i % 3) {
                    let _ = sim.decide(&msg_id("b", &format!("n{i}-{j}")));
                }
                let d = sim.decide(&msg_id("a", &format!("m{i}")));
                (d.latency, format!("{:?}", d.outcome))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_draws_are_reproducible_whatever_the_others_do() {
        let quiet = outcomes(7, 0).await;
        assert_eq!(quiet, outcomes(7, 0).await, "same seed, same run");
        assert_eq!(
            quiet,
            outcomes(7, 5).await,
            "another device's traffic changes nothing"
        );
        assert_ne!(quiet, outcomes(8, 0).await, "another seed, another run");
    }

    /// Which devices dropped within `horizon`, and when (ms), for a seed.
    async fn drops(seed: u64, horizon: Duration) -> Vec<(String, u64)> {
        let (tx, mut rx) = mpsc::channel(256);
        let sim = SimUpstream::new(
            SimConfig {
                seed,
                disconnect_mean_s: 10.0,
                ..Default::default()
            },
            tx,
        );
        let devices: Vec<_> = (0..100).map(devn).collect();
        connect_all(&sim, &mut rx, &devices).await;
        let start = tokio::time::Instant::now();
        let mut got = Vec::new();
        let end = start + horizon;
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, rx.recv()).await {
            match ev {
                UpstreamEvent::Session {
                    device,
                    event: SessionEvent::Disconnected { .. },
                } => got.push((device.device.to_string(), start.elapsed().as_millis() as u64)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sim.device_count(), 100 - got.len());
        got
    }

    #[tokio::test(start_paused = true)]
    async fn devices_drop_at_the_configured_mean_reproducibly() {
        let a = drops(3, Duration::from_secs(10)).await;
        // P(drop within one mean) = 1 - 1/e ≈ 63 of 100.
        assert!((45..80).contains(&a.len()), "{} dropped", a.len());
        assert_eq!(a, drops(3, Duration::from_secs(10)).await);
        assert_ne!(a, drops(4, Duration::from_secs(10)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnected_device_is_not_dropped_by_its_old_connections_fault() {
        let (tx, mut rx) = mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                disconnect_mean_s: 5.0,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        let mut drops = 0;
        // Reconnect at once after every drop, for a simulated hour: one drop at a time.
        let end = tokio::time::Instant::now() + Duration::from_secs(3600);
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, rx.recv()).await {
            match ev {
                UpstreamEvent::Session {
                    event: SessionEvent::Disconnected { .. },
                    ..
                } => {
                    drops += 1;
                    assert_eq!(sim.device_count(), 0);
                    sim.connect(dev("a")).await.unwrap();
                }
                UpstreamEvent::Session {
                    event: SessionEvent::Connected,
                    ..
                } => assert_eq!(sim.device_count(), 1),
                other => panic!("{other:?}"),
            }
        }
        // Mean 5 s over 3600 s: about 720.
        assert!((600..850).contains(&drops), "{drops}");
        assert_eq!(sim.connect_stats().attempts, drops + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn mass_disconnect_drops_everyone_at_once_and_they_can_come_back() {
        let (tx, mut rx) = mpsc::channel(1024);
        let sim = SimUpstream::new(SimConfig::default(), tx);
        let devices: Vec<_> = (0..500).map(devn).collect();
        connect_all(&sim, &mut rx, &devices).await;
        assert_eq!(sim.hub().connected(), 500);
        assert_eq!(sim.mass_disconnect("edge restart").await, 500);
        assert_eq!(sim.device_count(), 0);
        let mut seen = HashSet::new();
        for _ in 0..500 {
            match rx.recv().await.unwrap() {
                UpstreamEvent::Session {
                    device,
                    event: SessionEvent::Disconnected { reason },
                } => {
                    assert_eq!(reason, "edge restart");
                    seen.insert(device);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 500);
        assert_eq!(
            sim.send(send_to(&devices[0], "after-drop")).await,
            Err(UpstreamError::Disconnected)
        );
        connect_all(&sim, &mut rx, &devices).await;
        assert_eq!(sim.hub().connected(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn hub_mass_disconnect_spans_every_gateway_connection() {
        let hub = SimHub::new(SimConfig::default()).unwrap();
        let (tx1, mut rx1) = mpsc::channel(64);
        let (tx2, mut rx2) = mpsc::channel(64);
        let a = hub.upstream(tx1);
        let b = hub.upstream(tx2);
        connect_all(&a, &mut rx1, &[devn(1), devn(2)]).await;
        connect_all(&b, &mut rx2, &[devn(3)]).await;
        assert_eq!(hub.stats().connected, 3);
        assert_eq!(hub.stats().connections, 2);
        assert_eq!(hub.mass_disconnect("x").await, 3);
        assert_eq!(hub.connected(), 0);
        drop(b);
        assert_eq!(hub.stats().connections, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn logouts_end_the_link_until_a_new_one() {
        let (tx, mut rx) = mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                logout_mean_s: 1.0,
                link_pair_after_ms: 1000,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        match rx.recv().await.unwrap() {
            UpstreamEvent::Session {
                event: SessionEvent::LoggedOut { .. },
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        assert!(!sim.provisioned(&dev("a")));
        assert_eq!(sim.connect(dev("a")).await, Err(UpstreamError::LoggedOut));
        sim.link(dev("a"), LinkMethod::Qr).await.unwrap();
        loop {
            if let UpstreamEvent::Session {
                event: SessionEvent::Connected,
                ..
            } = rx.recv().await.unwrap()
            {
                break;
            }
        }
        assert!(sim.provisioned(&dev("a")));
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_bans_refuse_connects_until_they_end() {
        let (tx, mut rx) = mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                ban_mean_s: 1.0,
                ban_duration_s: 600,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        let before = crate::unix_ms();
        match rx.recv().await.unwrap() {
            UpstreamEvent::Session {
                event: SessionEvent::Banned { until_ms, .. },
                ..
            } => {
                let until = until_ms.expect("temporary");
                assert!(
                    until >= before + 600_000 && until <= crate::unix_ms() + 600_000,
                    "{until}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sim.connect(dev("a")).await, Err(UpstreamError::Banned));
        tokio::time::sleep(Duration::from_secs(601)).await;
        sim.connect(dev("a")).await.unwrap();
        assert_eq!(sim.connect_stats().attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_bans_stay() {
        let (tx, mut rx) = mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                ban_mean_s: 1.0,
                ban_duration_s: 0,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        assert!(matches!(
            rx.recv().await.unwrap(),
            UpstreamEvent::Session {
                event: SessionEvent::Banned { until_ms: None, .. },
                ..
            }
        ));
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert_eq!(sim.connect(dev("a")).await, Err(UpstreamError::Banned));
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_follow_delivered_sends_and_duplicates_come_twice() {
        let (tx, mut rx) = mpsc::channel(64);
        let sim = SimUpstream::new(
            SimConfig {
                latency_ms: 100,
                receipt_delivered_ms: 1000,
                receipt_read_rate: 1.0,
                receipt_read_ms: 5000,
                duplicate_ack_rate: 1.0,
                ..Default::default()
            },
            tx,
        );
        connect_all(&sim, &mut rx, &[dev("a")]).await;
        let start = tokio::time::Instant::now();
        let ack = sim.send(msg_id("a", "r1")).await.unwrap();
        assert_eq!(ack.upstream_id, "SIM.r1");
        let mut got = Vec::new();
        for _ in 0..4 {
            match rx.recv().await.unwrap() {
                UpstreamEvent::Receipt {
                    upstream_ids,
                    kind,
                    from,
                    ..
                } => {
                    assert_eq!(upstream_ids, vec![Text::from("SIM.r1")]);
                    assert_eq!(from.as_str(), "4915112345678");
                    got.push((kind, start.elapsed().as_millis() / 100));
                }
                other => panic!("{other:?}"),
            }
        }
        // Delivered 1 s after the answer (at 1.1 s), read 5 s later; each twice.
        assert_eq!(
            got,
            [
                (ReceiptKind::Delivered, 11),
                (ReceiptKind::Delivered, 11),
                (ReceiptKind::Read, 61),
                (ReceiptKind::Read, 61)
            ]
        );
        // A resend is "already sent": no second set of receipts.
        assert!(sim.send(msg_id("a", "r1")).await.unwrap().already_sent);
        let quiet = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_ledger_counts_the_busiest_second() {
        let (tx, mut rx) = mpsc::channel(1024);
        let sim = SimUpstream::new(SimConfig::default(), tx);
        // 30 at once, then one every 100 ms for 5 s.
        let devices: Vec<_> = (0..80).map(devn).collect();
        connect_all(&sim, &mut rx, &devices[..30]).await;
        for d in &devices[30..] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            connect_all(&sim, &mut rx, std::slice::from_ref(d)).await;
        }
        let s = sim.connect_stats();
        assert_eq!(s.attempts, 80);
        // The window (t - 1 s, t] at t = 0.9 s holds the 30 and nine more.
        assert_eq!(s.peak_per_second, 39);
        sim.hub().mark();
        tokio::time::sleep(Duration::from_secs(2)).await;
        sim.mass_disconnect("m").await;
        for _ in 0..80 {
            rx.recv().await.unwrap();
        }
        for d in &devices[..20] {
            tokio::time::sleep(Duration::from_millis(250)).await;
            connect_all(&sim, &mut rx, std::slice::from_ref(d)).await;
        }
        let s = sim.connect_stats();
        assert_eq!((s.attempts, s.attempts_since_mark), (100, 20));
        assert_eq!(s.peak_per_second, 39, "the all-time peak stays");
        // Every 250 ms: at most 4 in any window (t - 1 s, t].
        assert_eq!(s.peak_per_second_since_mark, 4);
        let total: u32 = s.per_second_since_mark.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 20);
        assert!(
            s.per_second_since_mark
                .iter()
                .all(|(sec, n)| (2..=7).contains(sec) && *n <= 4)
        );
    }
}
