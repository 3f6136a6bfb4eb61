//! A simulated WhatsApp: configurable latency, failure rate, per-device
//! throughput ceiling (answered like WhatsApp's `rate-overlimit`) and
//! generated inbound traffic.
//!
//! It models the other side, not our limiter, so it keeps its own tiny rate
//! model instead of reusing [`crate::limiter`]: a bug in one must not hide in the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use waping_protocol::{Body, DeviceState, Text};

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
    devices: DashMap<DeviceRef, DeviceSim>,
    events: EventSink,
    counter: AtomicU64,
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
    pub fn new(cfg: SimConfig, events: EventSink) -> Self {
        let inner = Arc::new(Inner {
            cfg,
            origin: Instant::now(),
            devices: DashMap::new(),
            events,
            counter: AtomicU64::new(0),
        });
        if inner.cfg.inbound_per_second > 0.0 {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move { inbound_generator(weak).await });
        }
        SimUpstream { inner }
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
        (
            latency,
            Ok(UpstreamAck {
                upstream_id: format!("SIM.{}", msg.upstream_id),
            }),
        )
    }
}

impl Upstream for SimUpstream {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn attach(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.devices.entry(device.clone()).or_insert_with(|| DeviceSim {
                tat: AtomicU64::new(0),
            });
            let ev = UpstreamEvent::State {
                device,
                state: DeviceState::Connected,
                detail: "simulated".into(),
            };
            inner
                .events
                .send(ev)
                .await
                .map_err(|_| UpstreamError::Unavailable("gateway stopped".into()))
        })
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

    fn msg(d: &str) -> UpstreamSend {
        UpstreamSend {
            device: dev(d),
            recipient: "4915112345678".into(),
            body: Body::Text("hi".into()),
            upstream_id: "x".into(),
        }
    }

    #[tokio::test]
    async fn attach_then_send() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let sim = SimUpstream::new(SimConfig::default(), tx);
        assert_eq!(sim.send(msg("a")).await, Err(UpstreamError::Disconnected));
        sim.attach(dev("a")).await.unwrap();
        match rx.recv().await.unwrap() {
            UpstreamEvent::State { state, .. } => assert_eq!(state, DeviceState::Connected),
            other => panic!("{other:?}"),
        }
        assert_eq!(sim.send(msg("a")).await.unwrap().upstream_id, "SIM.x");
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
        sim.attach(dev("a")).await.unwrap();
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
        sim.attach(dev("a")).await.unwrap();
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
        sim.attach(dev("a")).await.unwrap();
        let _state = rx.recv().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev, UpstreamEvent::Inbound { .. }), "{ev:?}");
    }
}
