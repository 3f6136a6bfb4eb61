use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::*;
use crate::limiter::{Cell, Quota};
use crate::upstream::UpstreamAck;
use crate::workspace::Registry;

/// The lifecycle half of an upstream whose devices are always linked and connect at once
/// (these tests play WhatsApp's "connected" themselves).
macro_rules! always_linked {
    () => {
        fn provisioned(&self, _d: &DeviceRef) -> bool {
            true
        }
        fn connect(&self, _d: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn disconnect(&self, _d: DeviceRef) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
        fn link(&self, _d: DeviceRef, _m: LinkMethod) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn logout(&self, _d: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
    };
}

/// An upstream whose sends wait for a permit, recording concurrency and call times.
struct Gated {
    gate: Arc<Semaphore>,
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<Instant>>>,
    answer: Result<UpstreamAck, UpstreamError>,
}

impl Gated {
    fn new(permits: usize, answer: Result<UpstreamAck, UpstreamError>) -> Arc<Self> {
        Arc::new(Gated {
            gate: Arc::new(Semaphore::new(permits)),
            now: Arc::default(),
            max: Arc::default(),
            calls: Arc::default(),
            answer,
        })
    }
}

impl Upstream for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }
    always_linked!();
    fn send(&self, _m: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        self.calls.lock().unwrap().push(Instant::now());
        let (gate, now, max, answer) = (
            self.gate.clone(),
            self.now.clone(),
            self.max.clone(),
            self.answer.clone(),
        );
        Box::pin(async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            let permit = gate.acquire().await;
            now.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            answer
        })
    }
}

/// Pacing with only the `1 / device_rate` spacing (every other rule off).
fn spacing_only(device_rate: u32) -> crate::pacing::PacingPolicy {
    let cfg = crate::pacing::PacingConfig {
        min_interval_ms: 0,
        jitter_ms: 0,
        bucket_per_minute: 0,
        first_contact_per_hour: 0,
        first_contact_per_day: 0,
        daily_cap: 0,
        // Only upstream's retry hint pauses after a 429.
        throttle_pause_ms: 0,
        ..Default::default()
    };
    crate::pacing::PacingPolicy::new(&cfg, device_rate).unwrap()
}

fn setup(
    up: Arc<dyn Upstream>,
    queue: usize,
    window: usize,
    device_rate: u32,
) -> (SessionManager, Arc<Workspace>) {
    setup_with(up, queue, window, device_rate, spacing_only(device_rate))
}

/// [`setup`] with the workspace's pacing policy given.
fn setup_with(
    up: Arc<dyn Upstream>,
    queue: usize,
    window: usize,
    device_rate: u32,
    pacing: crate::pacing::PacingPolicy,
) -> (SessionManager, Arc<Workspace>) {
    let reg = Registry::default();
    let ws = reg.add(
        "w",
        Arc::new(Cell::new(Quota::per_second(1000, 1000).unwrap())),
        device_rate,
        Arc::new(pacing),
    );
    let m = SessionManager::new(
        up,
        SessionSettings {
            queue,
            window,
            send_timeout: Duration::from_secs(5),
            lifecycle: LifecycleConfig::default(),
        },
        Arc::new(Metrics::new()),
        ConnectGate::start(Quota::per_second(1000, 1000).unwrap(), MonotonicClock::new()),
        Arc::new(store::MemoryStore::default()),
    );
    m.start_device(&ws, "d");
    // These upstreams have no event sink: play WhatsApp's "connected" for them.
    let ctl = m.get(ws.idx, &"d".into()).unwrap().ctl.clone();
    tokio::spawn(async move { ctl.send(Box::new(Control::Event(SessionEvent::Connected))).await });
    (m, ws)
}

fn outbound(seq: u64, reply: &ReplySink) -> Outbound {
    Outbound {
        id: MessageId([seq as u8; 16]),
        seq,
        recipient: "4915112345678".into(),
        body: Body::Text("hi".into()),
        reply: Some(reply.clone()),
        attempts: 0,
        first_attempt_ms: 0,
    }
}

/// The next delivery report a session sent to its stream.
async fn report(rx: &mut mpsc::UnboundedReceiver<StreamReply>) -> DeliveryReport {
    match rx.recv().await.expect("a reply") {
        StreamReply::Report(r) => r,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[tokio::test]
async fn every_message_gets_a_report() {
    let up = Gated::new(
        1000,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let (m, ws) = setup(up, 100, 4, 0);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    assert!(m.get(ws.idx, &"other".into()).is_none());
    let (tx, mut rx) = mpsc::unbounded_channel();
    for seq in 0..50 {
        h.submit(outbound(seq, &tx)).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = report(&mut rx).await;
        assert_eq!(r.status, DeliveryStatus::Sent);
        assert_eq!(r.code, ErrorCode(0));
        assert_eq!(r.message_id, MessageId([r.seq as u8; 16]));
        assert!(seen.insert(r.seq));
    }
}

#[tokio::test]
async fn window_bounds_sends_in_flight_and_full_queue_hands_message_back() {
    let up = Gated::new(
        0,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let (m, ws) = setup(up.clone(), 2, 3, 0);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // 3 in flight + 1 held by the task + 2 in the queue; the next is refused.
    let mut refused = None;
    for seq in 0..20 {
        match h.submit(outbound(seq, &tx)) {
            Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(SubmitError::Busy(back)) => {
                refused = Some(back);
                break;
            }
            Err(SubmitError::Stopped(_)) => panic!("stopped"),
        }
    }
    let back = refused.expect("a full queue refuses");
    assert_eq!(back.seq, 6, "3 in flight, 1 held, 2 queued: the 7th comes back");
    assert_eq!(up.max.load(Ordering::SeqCst), 3);
    up.gate.add_permits(100);
    for _ in 0..6 {
        assert_eq!(report(&mut rx).await.status, DeliveryStatus::Sent);
    }
    assert_eq!(up.max.load(Ordering::SeqCst), 3, "never more than the window");
}

#[tokio::test]
async fn upstream_errors_become_failed_reports() {
    let up = Gated::new(
        100,
        Err(UpstreamError::Throttled {
            retry_after: Duration::from_secs(1),
        }),
    );
    let (m, ws) = setup(up, 10, 1, 0);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    h.submit(outbound(1, &tx)).unwrap();
    let r = report(&mut rx).await;
    assert_eq!(r.status, DeliveryStatus::Failed);
    assert_eq!(r.code, ErrorCode::UPSTREAM_THROTTLED);
    assert!(r.detail.as_str().contains("throttled"));
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_times_out() {
    let up = Gated::new(
        0,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let (m, ws) = setup(up, 10, 1, 0);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    h.submit(outbound(1, &tx)).unwrap();
    let r = report(&mut rx).await;
    assert_eq!(r.code, ErrorCode::UPSTREAM_TIMEOUT);
}

#[tokio::test]
async fn pacing_spaces_sends_to_the_upstream() {
    let up = Gated::new(
        1000,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    // 20 per second: at least 50 ms between consecutive sends.
    let (m, ws) = setup(up.clone(), 100, 16, 20);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for seq in 0..5 {
        h.submit(outbound(seq, &tx)).unwrap();
    }
    for _ in 0..5 {
        report(&mut rx).await;
    }
    let calls = up.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 5);
    for w in calls.windows(2) {
        let gap = w[1] - w[0];
        // A lower bound only: pacing can be late on a busy machine, never early.
        assert!(gap >= Duration::from_millis(49), "sends {gap:?} apart");
    }
}

#[tokio::test]
async fn closing_the_manager_stops_sessions() {
    let up = Gated::new(
        10,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let (m, ws) = setup(up, 10, 1, 0);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    m.close_all();
    assert!(m.get(ws.idx, &"d".into()).is_none());
    // The handle we still hold keeps the queue open; it is the last sender.
    let (tx, mut rx) = mpsc::unbounded_channel();
    h.submit(outbound(1, &tx)).unwrap();
    assert_eq!(report(&mut rx).await.status, DeliveryStatus::Sent);
}

#[tokio::test]
async fn control_commands_reach_the_lifecycle() {
    let up = Gated::new(
        1000,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let (m, ws) = setup(up, 100, 4, 0);
    let st = tokio::time::timeout(
        Duration::from_secs(5),
        m.control(ws.idx, &"d".into(), DeviceCommand::Status),
    )
    .await
    .expect("answered");
    assert!(
        matches!(st, Ok(DeviceState::Connected | DeviceState::Disconnected)),
        "{st:?}"
    );
    assert_eq!(
        m.control(ws.idx, &"d".into(), DeviceCommand::Disable).await,
        Ok(DeviceState::Disabled)
    );
    assert_eq!(
        m.get(ws.idx, &"d".into()).unwrap().refusal(),
        Some(ErrorCode::DEVICE_DISABLED)
    );
    assert_eq!(
        m.control(ws.idx, &"d".into(), DeviceCommand::Link(LinkMethod::Qr))
            .await,
        Err(ControlError::Refused(CommandError::Disabled))
    );
    assert_eq!(
        m.control(ws.idx, &"nope".into(), DeviceCommand::Status).await,
        Err(ControlError::UnknownDevice)
    );
}

/// An upstream that answers rate-overlimit to its first send, then accepts.
struct ThrottleOnce {
    calls: Mutex<Vec<Instant>>,
    hint: Duration,
}

impl Upstream for ThrottleOnce {
    fn name(&self) -> &'static str {
        "throttle-once"
    }
    always_linked!();
    fn send(&self, _m: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        let mut calls = self.calls.lock().unwrap();
        calls.push(Instant::now());
        let r = if calls.len() == 1 {
            Err(UpstreamError::Throttled {
                retry_after: self.hint,
            })
        } else {
            Ok(UpstreamAck {
                upstream_id: "u".into(),
                already_sent: false,
            })
        };
        Box::pin(async move { r })
    }
}

#[tokio::test]
async fn an_upstream_429_pauses_the_whole_device() {
    let up = Arc::new(ThrottleOnce {
        calls: Mutex::new(Vec::new()),
        hint: Duration::from_millis(300),
    });
    // Spacing 1 ms only: without the pause the second send would follow at once.
    let (m, ws) = setup(up.clone(), 100, 16, 1000);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    h.submit(outbound(1, &tx)).unwrap();
    let first = report(&mut rx).await;
    assert_eq!(first.code, ErrorCode::UPSTREAM_THROTTLED);
    h.submit(outbound(2, &tx)).unwrap();
    let second = report(&mut rx).await;
    assert_eq!(second.status, DeliveryStatus::Sent);
    let calls = up.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    // A lower bound only: the pause may end late on a busy machine, never early.
    assert!(
        calls[1] - calls[0] >= Duration::from_millis(299),
        "{:?}",
        calls[1] - calls[0]
    );
}

#[tokio::test]
async fn first_contact_limits_hold_strangers_but_not_known_contacts() {
    let up = Gated::new(
        1000,
        Ok(UpstreamAck {
            upstream_id: "u".into(),
            already_sent: false,
        }),
    );
    let cfg = crate::pacing::PacingConfig {
        min_interval_ms: 0,
        jitter_ms: 0,
        bucket_per_minute: 0,
        first_contact_per_hour: 0,
        first_contact_per_day: 1,
        daily_cap: 0,
        ..Default::default()
    };
    let policy = crate::pacing::PacingPolicy::new(&cfg, 1000).unwrap();
    let (m, ws) = setup_with(up.clone(), 10, 4, 1000, policy);
    let h = m.get(ws.idx, &"d".into()).unwrap();
    // Someone wrote to the device first: replying is not a first contact.
    h.ctl
        .send(Box::new(Control::Inbound("4917000000001".into())))
        .await
        .unwrap();
    h.ctl
        .send(Box::new(Control::Event(SessionEvent::Connected)))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let to = |seq: u64, r: &str| Outbound {
        recipient: r.into(),
        ..outbound(seq, &tx)
    };
    h.submit(to(1, "4917000000009")).unwrap(); // a stranger: the day's one first contact
    h.submit(to(2, "4917000000001")).unwrap(); // known: goes
    assert_eq!(report(&mut rx).await.seq, 1);
    assert_eq!(report(&mut rx).await.seq, 2);
    h.submit(to(3, "4917000000008")).unwrap(); // a second stranger today: held
    h.submit(to(4, "4917000000009")).unwrap(); // now known
    let held = tokio::time::timeout(Duration::from_millis(300), report(&mut rx)).await;
    assert!(held.is_err(), "the second stranger waits for tomorrow: {held:?}");
    assert_eq!(up.calls.lock().unwrap().len(), 2);
}
