//! A simulated WhatsApp: configurable latency, failure rate, per-device
//! throughput ceiling (answered like WhatsApp's `rate-overlimit`) and
//! generated inbound traffic.
//!
//! It models the other side, not our limiter, so it keeps its own tiny rate
//! model instead of reusing [`crate::limiter`]: a bug in one must not hide in the other.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use waping_protocol::{Body, Text};

use super::*;
use crate::config::SimConfig;

/// The in-process simulator.
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
    cfg: SimConfig,
    origin: Instant,
    /// Connected devices.
    devices: DashMap<DeviceRef, DeviceSim>,
    /// Devices with credentials (all of them unless `require_link`).
    linked: dashmap::DashSet<DeviceRef>,
    /// Link in progress per device, by generation: a newer link or a logout cancels the older.
    linking: DashMap<DeviceRef, u64>,
    events: EventSink,
    counter: AtomicU64,
    deliveries: Arc<Deliveries>,
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

struct DeviceSim {
    /// Theoretical arrival time (ns since origin) of the device's send budget.
    tat: AtomicU64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SimUpstream {
    /// A simulator pushing its events into `events`; starts the inbound generator if configured.
    ///
    /// # Panics
    /// If `cfg.ledger` cannot be opened; use [`SimUpstream::with_deliveries`] to handle that.
    pub fn new(cfg: SimConfig, events: EventSink) -> Self {
        let deliveries = Deliveries::new(cfg.dedup_capacity, cfg.ledger.as_deref())
            .unwrap_or_else(|e| panic!("opening simulator ledger {:?}: {e}", cfg.ledger));
        SimUpstream::with_deliveries(cfg, events, Arc::new(deliveries))
    }

    /// A simulator sharing its delivery record with others (one per gateway connection of a sim process).
    pub fn with_deliveries(cfg: SimConfig, events: EventSink, deliveries: Arc<Deliveries>) -> Self {
        let inner = Arc::new(Inner {
            deliveries,
            cfg,
            origin: Instant::now(),
            devices: DashMap::new(),
            linked: dashmap::DashSet::new(),
            linking: DashMap::new(),
            events,
            counter: AtomicU64::new(0),
        });
        if inner.cfg.inbound_per_second > 0.0 {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move { inbound_generator(weak).await });
        }
        SimUpstream { inner }
    }

    /// Delivery counters.
    pub fn stats(&self) -> DeliveryStats {
        self.inner.deliveries.stats()
    }

    /// Number of attached devices.
    pub fn device_count(&self) -> usize {
        self.inner.devices.len()
    }

    fn rng(&self) -> SmallRng {
        // A per-call generator derived from seed and a counter: lock-free, and
        // reproducible for a given order of calls.
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(splitmix(self.inner.cfg.seed ^ splitmix(n)))
    }

    /// Decides the fate of one send without waiting (the latency is returned to sleep on).
    fn decide(&self, msg: &UpstreamSend) -> (Duration, Result<UpstreamAck, UpstreamError>) {
        let cfg = &self.inner.cfg;
        let mut rng = self.rng();
        let jitter = if cfg.latency_jitter_ms > 0 {
            rng.random_range(0..=cfg.latency_jitter_ms)
        } else {
            0
        };
        let latency = Duration::from_millis(cfg.latency_ms + jitter);
        let Some(dev) = self.inner.devices.get(&msg.device) else {
            return (latency, Err(UpstreamError::Disconnected));
        };
        // A resend of something delivered is answered before any failure is simulated:
        // WhatsApp would not fail a message it already has.
        if self.inner.deliveries.repeat(msg) {
            let ack = UpstreamAck {
                upstream_id: format!("SIM.{}", msg.upstream_id),
                already_sent: true,
            };
            return (latency, Ok(ack));
        }
        if cfg.device_rate_per_second > 0 {
            let now = self.inner.origin.elapsed().as_nanos() as u64;
            let interval = 1_000_000_000 / u64::from(cfg.device_rate_per_second);
            // WhatsApp tolerates a short burst; model one second's worth.
            let tolerance = interval.saturating_mul(u64::from(cfg.device_rate_per_second).saturating_sub(1));
            let mut tat = dev.tat.load(Ordering::Acquire);
            loop {
                let base = tat.max(now);
                if base - now > tolerance {
                    let wait = Duration::from_nanos(base - now - tolerance);
                    return (latency, Err(UpstreamError::Throttled { retry_after: wait }));
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
        if cfg.failure_rate > 0.0 && rng.random_bool(cfg.failure_rate) {
            return (latency, Err(UpstreamError::Rejected("simulated failure".into())));
        }
        if cfg.transient_failure_rate > 0.0 && rng.random_bool(cfg.transient_failure_rate) {
            return (
                latency,
                Err(UpstreamError::Unavailable("simulated transient failure".into())),
            );
        }
        let already_sent = self.inner.deliveries.deliver(msg);
        if !already_sent && cfg.lost_answer_rate > 0.0 && rng.random_bool(cfg.lost_answer_rate) {
            // Delivered, but the gateway never hears so: it must resend and be told "already sent".
            return (latency, Err(UpstreamError::Timeout));
        }
        (
            latency,
            Ok(UpstreamAck {
                upstream_id: format!("SIM.{}", msg.upstream_id),
                already_sent,
            }),
        )
    }
}

impl Upstream for SimUpstream {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn provisioned(&self, device: &DeviceRef) -> bool {
        !self.inner.cfg.require_link || self.inner.linked.contains(device)
    }

    fn connect(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if !(!inner.cfg.require_link || inner.linked.contains(&device)) {
                return Err(UpstreamError::NotLinked);
            }
            inner.linked.insert(device.clone());
            inner.devices.entry(device.clone()).or_insert_with(|| DeviceSim {
                tat: AtomicU64::new(0),
            });
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
        let (latency, outcome) = self.decide(&msg);
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            outcome
        })
    }
}

impl Inner {
    async fn session(&self, device: DeviceRef, event: SessionEvent) -> Result<(), UpstreamError> {
        self.events
            .send(UpstreamEvent::Session { device, event })
            .await
            .map_err(|_| UpstreamError::Unavailable("gateway stopped".into()))
    }
}

/// Plays the phone during a link: QR payloads (rotating) or a pairing code, then, after
/// `link_pair_after_ms`, the confirmation and the connection.
async fn link_flow(inner: std::sync::Weak<Inner>, device: DeviceRef, method: LinkMethod, generation: u64) {
    let current = |i: &Inner| i.linking.get(&device).is_some_and(|g| *g == generation);
    let (pair_after, rotate) = match inner.upgrade() {
        Some(i) => (i.cfg.link_pair_after_ms, i.cfg.qr_rotate_ms.max(1)),
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
            i.devices.entry(device.clone()).or_insert_with(|| DeviceSim {
                tat: AtomicU64::new(0),
            });
            let account = format!("49170{:08}@s.whatsapp.net", splitmix(generation) % 100_000_000);
            let _ = i.session(device.clone(), SessionEvent::Paired { account }).await;
            let _ = i.session(device, SessionEvent::Connected).await;
            return;
        }
        // QR payloads rotate; a pairing code is shown once and stays valid.
        let ev = match &method {
            LinkMethod::Qr => Some(SessionEvent::Qr {
                code: format!("2@sim{generation}x{n},{},{}", device.workspace, device.device.as_str()),
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
    let mut rng = SmallRng::seed_from_u64(inner.upgrade().map_or(1, |i| i.cfg.seed.wrapping_add(7)));
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let devices: Vec<DeviceRef> = inner.devices.iter().map(|e| e.key().clone()).collect();
        if devices.is_empty() {
            continue;
        }
        credit += inner.cfg.inbound_per_second * TICK.as_secs_f64() * devices.len() as f64;
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
}
