//! The lifecycle on a simulated clock: every transition of the diagram, timers, backoff.

use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use waping_protocol::{DeviceState, ErrorCode};

use super::*;

const T0_WALL: u64 = 1_800_000_000_000;

fn at(secs: f64) -> At {
    At {
        now: Nanos((secs * 1e9) as u64),
        wall_ms: T0_WALL + (secs * 1000.0) as u64,
    }
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn no_jitter() -> LifecycleConfig {
    LifecycleConfig {
        reconnect_jitter: 0.0,
        ..Default::default()
    }
}

fn published(actions: &[Action]) -> Vec<DeviceState> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

fn linked_and_connected(t: f64) -> Lifecycle {
    let (mut m, a) = Lifecycle::restore(no_jitter(), &Persisted::Linked, at(t));
    assert_eq!(a[0], Action::Connect);
    m.handle(at(t), Input::ConnectAttempted, &mut rng());
    m.handle(at(t), Input::Upstream(SessionEvent::Connected), &mut rng());
    assert!(m.can_send());
    m
}

fn dropped(m: &mut Lifecycle, t: f64) -> Vec<Action> {
    m.handle(
        at(t),
        Input::Upstream(SessionEvent::Disconnected {
            reason: "socket closed".into(),
        }),
        &mut rng(),
    )
}

#[test]
fn qr_link_then_connect() {
    let (mut m, a) = Lifecycle::restore(no_jitter(), &Persisted::Unlinked, at(0.0));
    assert_eq!(published(&a), [DeviceState::Unlinked]);
    assert_eq!(m.refusal(), Some(ErrorCode::DEVICE_NOT_LINKED));
    let a = m.command(at(1.0), Command::Link(LinkMethod::Qr)).unwrap();
    assert_eq!(a[0], Action::Link(LinkMethod::Qr));
    assert_eq!(published(&a), [DeviceState::Linking]);
    let qr = SessionEvent::Qr {
        code: "2@abc".into(),
        valid_for: Duration::from_secs(20),
    };
    let a = m.handle(at(2.0), Input::Upstream(qr.clone()), &mut rng());
    assert_eq!(a, [Action::PublishCode(qr)]);
    let a = m.handle(
        at(10.0),
        Input::Upstream(SessionEvent::Paired {
            account: "4915112345678@s.whatsapp.net".into(),
        }),
        &mut rng(),
    );
    assert!(a.contains(&Action::Audit(AuditKind::Linked)));
    assert!(a.contains(&Action::Persist));
    // The published detail masks the number.
    let detail = a
        .iter()
        .find_map(|x| match x {
            Action::Publish { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(detail, "linked to *********5678@s.whatsapp.net");
    assert!(m.linked());
    assert_eq!(m.persisted(), Persisted::Linked);
    let a = m.handle(at(11.0), Input::Upstream(SessionEvent::Connected), &mut rng());
    assert_eq!(published(&a), [DeviceState::Connected]);
    assert!(m.can_send());
    assert_eq!(m.refusal(), None);
}

#[test]
fn link_times_out_cleanly_with_a_reason() {
    let (mut m, _) = Lifecycle::restore(no_jitter(), &Persisted::Unlinked, at(0.0));
    m.command(
        at(0.0),
        Command::Link(LinkMethod::PairingCode {
            phone: "4915112345678".into(),
        }),
    )
    .unwrap();
    assert_eq!(
        m.next_wake(),
        Some(Nanos::from_duration(Duration::from_secs(180)))
    );
    assert!(m.handle(at(179.9), Input::Tick, &mut rng()).is_empty());
    let a = m.handle(at(180.0), Input::Tick, &mut rng());
    assert_eq!(a[0], Action::Logout);
    match &a[1] {
        Action::Publish { state, detail } => {
            assert_eq!(*state, DeviceState::Unlinked);
            assert!(detail.contains("link timed out after 180 s"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.phase(), Phase::Unlinked);
    // A late QR of the abandoned link is not shown.
    let late = SessionEvent::Qr {
        code: "2@late".into(),
        valid_for: Duration::from_secs(20),
    };
    assert!(m.handle(at(181.0), Input::Upstream(late), &mut rng()).is_empty());
}

#[test]
fn fibonacci_backoff_caps_and_resets_after_stable_period() {
    let mut m = linked_and_connected(0.0);
    let mut t = 1.0;
    let mut delays = Vec::new();
    for _ in 0..20 {
        let a = dropped(&mut m, t);
        assert_eq!(published(&a), [DeviceState::Disconnected]);
        let Phase::Disconnected { retry_at } = m.phase() else {
            panic!()
        };
        let delay = retry_at.0 - at(t).now.0;
        delays.push(delay / 1_000_000_000);
        // Nothing happens before the deadline, then a connect.
        assert!(
            m.handle(
                At {
                    now: Nanos(retry_at.0 - 1),
                    ..at(t)
                },
                Input::Tick,
                &mut rng()
            )
            .is_empty()
        );
        let a = m.handle(
            At {
                now: retry_at,
                ..at(t)
            },
            Input::Tick,
            &mut rng(),
        );
        assert_eq!(a, [Action::Connect], "backoff re-arms are not published");
        t = retry_at.0 as f64 / 1e9;
        m.handle(at(t), Input::ConnectAttempted, &mut rng());
        m.handle(at(t), Input::Upstream(SessionEvent::Connected), &mut rng());
        t += 1.0; // drops after one second: never stable
    }
    assert_eq!(&delays[..8], &[1, 1, 2, 3, 5, 8, 13, 21]);
    assert!(delays.iter().all(|&d| d <= 900));
    assert_eq!(*delays.last().unwrap(), 900, "capped");
    // Up for a minute: the next drop starts from the beginning.
    let a = dropped(&mut m, t + 60.0);
    assert_eq!(m.failures(), 1);
    assert!(matches!(&a[0], Action::Publish { detail, .. } if detail.contains("reconnecting in 1000 ms")));
}

#[test]
fn jitter_stays_within_bounds_and_spreads() {
    let m = Lifecycle::restore(LifecycleConfig::default(), &Persisted::Linked, at(0.0)).0;
    let mut r = rng();
    let samples: Vec<u128> = (0..1000).map(|_| m.delay(10, &mut r).as_millis()).collect();
    // fib(10) = 55 s ± 10 %.
    assert!(
        samples.iter().all(|&d| (49_500..=60_500).contains(&d)),
        "{samples:?}"
    );
    let distinct: std::collections::HashSet<_> = samples.iter().collect();
    assert!(distinct.len() > 500, "jitter spreads reconnects");
}

#[test]
fn connect_attempt_times_out() {
    let (mut m, _) = Lifecycle::restore(no_jitter(), &Persisted::Linked, at(0.0));
    // Waiting for the gate has no deadline: a restart of 10k devices waits its turn.
    assert_eq!(m.next_wake(), None);
    m.handle(at(500.0), Input::ConnectAttempted, &mut rng());
    assert_eq!(m.next_wake(), Some(at(530.0).now));
    let a = m.handle(at(530.0), Input::Tick, &mut rng());
    assert_eq!(a[0], Action::Disconnect);
    assert!(matches!(m.phase(), Phase::Disconnected { .. }));
    assert_eq!(m.failures(), 1);
}

#[test]
fn connect_failures_map_by_kind() {
    let (mut m, _) = Lifecycle::restore(no_jitter(), &Persisted::Linked, at(0.0));
    m.handle(
        at(0.0),
        Input::ConnectFailed(UpstreamError::Unavailable("dns".into())),
        &mut rng(),
    );
    assert!(matches!(m.phase(), Phase::Disconnected { .. }));
    let (mut m, _) = Lifecycle::restore(no_jitter(), &Persisted::Linked, at(0.0));
    let a = m.handle(
        at(0.0),
        Input::ConnectFailed(UpstreamError::LoggedOut),
        &mut rng(),
    );
    assert_eq!(m.phase(), Phase::LoggedOut);
    assert!(a.contains(&Action::FailQueued(ErrorCode::DEVICE_LOGGED_OUT)));
    let (mut m, _) = Lifecycle::restore(no_jitter(), &Persisted::Linked, at(0.0));
    m.handle(at(0.0), Input::ConnectFailed(UpstreamError::Banned), &mut rng());
    // Not known to be permanent: checked again after the longest backoff.
    assert!(matches!(m.phase(), Phase::Banned { until: Some(_), .. }));
    assert_eq!(m.next_wake(), Some(at(900.0).now));
}

#[test]
fn logout_is_terminal_until_relinked() {
    let mut m = linked_and_connected(0.0);
    let a = m.handle(
        at(5.0),
        Input::Upstream(SessionEvent::LoggedOut {
            reason: "removed on phone".into(),
        }),
        &mut rng(),
    );
    assert!(a.contains(&Action::Audit(AuditKind::LoggedOut)));
    assert!(a.contains(&Action::FailQueued(ErrorCode::DEVICE_LOGGED_OUT)));
    assert_eq!(published(&a), [DeviceState::LoggedOut]);
    assert_eq!(m.persisted(), Persisted::LoggedOut);
    assert_eq!(m.next_wake(), None, "no reconnect");
    // Late events of the old connection change nothing.
    assert!(
        m.handle(at(6.0), Input::Upstream(SessionEvent::Connected), &mut rng())
            .is_empty()
    );
    assert!(dropped(&mut m, 7.0).is_empty());
    // Relinking works.
    m.command(at(8.0), Command::Link(LinkMethod::Qr)).unwrap();
    assert!(matches!(m.phase(), Phase::Linking { .. }));
}

#[test]
fn temporary_ban_lifts_and_survives_restart() {
    let mut m = linked_and_connected(0.0);
    let until_ms = at(3600.0).wall_ms;
    let a = m.handle(
        at(10.0),
        Input::Upstream(SessionEvent::Banned {
            until_ms: Some(until_ms),
            reason: "temporary ban 101".into(),
        }),
        &mut rng(),
    );
    assert!(a.contains(&Action::Audit(AuditKind::Banned)));
    assert!(a.contains(&Action::FailQueued(ErrorCode::DEVICE_BANNED)));
    assert_eq!(
        m.persisted(),
        Persisted::Banned {
            until_ms: Some(until_ms)
        }
    );
    // Restarted half way through the ban, on a new monotonic clock.
    let restart = At {
        now: Nanos(5),
        wall_ms: at(1800.0).wall_ms,
    };
    let (mut r, a) = Lifecycle::restore(no_jitter(), &m.persisted(), restart);
    assert_eq!(published(&a), [DeviceState::Banned]);
    let wake = r.next_wake().unwrap();
    assert_eq!(wake.0, 5 + 1800 * 1_000_000_000);
    let a = r.handle(
        At {
            now: wake,
            wall_ms: until_ms,
        },
        Input::Tick,
        &mut rng(),
    );
    assert_eq!(a[0], Action::Connect);
    assert_eq!(published(&a), [DeviceState::Disconnected]);
    // A ban that ended while the node was down reconnects at once.
    let (_, a) = Lifecycle::restore(
        no_jitter(),
        &Persisted::Banned {
            until_ms: Some(until_ms),
        },
        At {
            now: Nanos(0),
            wall_ms: until_ms + 1,
        },
    );
    assert!(a.contains(&Action::Connect), "{a:?}");
}

#[test]
fn stream_replaced_waits_the_longest_backoff() {
    let mut m = linked_and_connected(0.0);
    m.handle(
        at(100.0),
        Input::Upstream(SessionEvent::StreamReplaced),
        &mut rng(),
    );
    assert_eq!(m.next_wake(), Some(at(1000.0).now));
}

#[test]
fn disable_and_enable() {
    let mut m = linked_and_connected(0.0);
    let a = m.command(at(1.0), Command::Disable).unwrap();
    assert_eq!(a[0], Action::Disconnect);
    assert!(a.contains(&Action::FailQueued(ErrorCode::DEVICE_DISABLED)));
    assert_eq!(m.persisted(), Persisted::Disabled { linked: true });
    assert_eq!(m.refusal(), Some(ErrorCode::DEVICE_DISABLED));
    assert_eq!(
        m.command(at(2.0), Command::Link(LinkMethod::Qr)),
        Err(CommandError::Disabled)
    );
    // Events of the closed connection do not revive it.
    assert!(
        m.handle(at(2.0), Input::Upstream(SessionEvent::Connected), &mut rng())
            .is_empty()
    );
    let a = m.command(at(3.0), Command::Enable).unwrap();
    assert!(a.contains(&Action::Connect));
    assert_eq!(m.persisted(), Persisted::Linked);
    // Enabling an unlinked device leaves it unlinked.
    let (mut u, _) = Lifecycle::restore(no_jitter(), &Persisted::Disabled { linked: false }, at(0.0));
    u.command(at(1.0), Command::Enable).unwrap();
    assert_eq!(u.phase(), Phase::Unlinked);
}

#[test]
fn unlink_from_connected_logs_out_and_fails_the_queue() {
    let mut m = linked_and_connected(0.0);
    assert!(matches!(
        m.command(at(1.0), Command::Link(LinkMethod::Qr)),
        Err(CommandError::AlreadyLinked("connected"))
    ));
    let a = m.command(at(1.0), Command::Unlink).unwrap();
    assert_eq!(a[0], Action::Logout);
    assert!(a.contains(&Action::FailQueued(ErrorCode::DEVICE_NOT_LINKED)));
    assert!(a.contains(&Action::Audit(AuditKind::Unlinked)));
    assert_eq!(m.persisted(), Persisted::Unlinked);
    // Unlinking an unlinked device is a no-op (idempotent).
    assert!(m.command(at(2.0), Command::Unlink).unwrap().is_empty());
}

#[test]
fn mask_keeps_only_the_last_four() {
    assert_eq!(mask("4915112345678"), "*********5678");
    assert_eq!(mask("123"), "123");
    assert_eq!(mask("49151@lid"), "*9151@lid");
}

#[derive(Debug, Clone)]
enum Op {
    Cmd(u8),
    Ev(u8),
    Attempted,
    Fail(u8),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..5).prop_map(Op::Cmd),
        (0u8..8).prop_map(Op::Ev),
        Just(Op::Attempted),
        (0u8..3).prop_map(Op::Fail),
        (0u32..2_000_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever happens: the public state only changes through a Publish action, timers are
    /// never in the past after a tick, a device that cannot send refuses with a code, and
    /// persistence round-trips to the same public state class.
    #[test]
    fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..200)) {
        let mut t_ms = 0u64;
        let mut r = rng();
        let (mut m, a) = Lifecycle::restore(LifecycleConfig::default(), &Persisted::Unlinked, at(0.0));
        let mut shown = *published(&a).last().unwrap();
        for o in ops {
            let now = At { now: Nanos(t_ms * 1_000_000), wall_ms: T0_WALL + t_ms };
            let actions = match o {
                Op::Cmd(c) => {
                    let cmd = match c {
                        0 => Command::Link(LinkMethod::Qr),
                        1 => Command::Unlink,
                        2 => Command::Disable,
                        3 => Command::Enable,
                        _ => Command::Link(LinkMethod::PairingCode { phone: "491511".into() }),
                    };
                    m.command(now, cmd).unwrap_or_default()
                }
                Op::Ev(e) => {
                    let ev = match e {
                        0 => SessionEvent::Qr { code: "q".into(), valid_for: Duration::from_secs(20) },
                        1 => SessionEvent::Paired { account: "49151".into() },
                        2 => SessionEvent::Connected,
                        3 => SessionEvent::Disconnected { reason: "x".into() },
                        4 => SessionEvent::LoggedOut { reason: "x".into() },
                        5 => SessionEvent::Banned { until_ms: Some(T0_WALL + t_ms + 5000), reason: "x".into() },
                        6 => SessionEvent::StreamReplaced,
                        _ => SessionEvent::PairingCode { code: "ABCD-EFGH".into() },
                    };
                    m.handle(now, Input::Upstream(ev), &mut r)
                }
                Op::Attempted => m.handle(now, Input::ConnectAttempted, &mut r),
                Op::Fail(k) => {
                    let e = match k {
                        0 => UpstreamError::Unavailable("x".into()),
                        1 => UpstreamError::LoggedOut,
                        _ => UpstreamError::Banned,
                    };
                    m.handle(now, Input::ConnectFailed(e), &mut r)
                }
                Op::Advance(ms) => {
                    t_ms += u64::from(ms);
                    let now = At { now: Nanos(t_ms * 1_000_000), wall_ms: T0_WALL + t_ms };
                    let a = m.handle(now, Input::Tick, &mut r);
                    if let Some(w) = m.next_wake() {
                        prop_assert!(w > now.now, "timer in the past: {:?} at {:?}", m.phase(), now);
                    }
                    a
                }
            };
            if let Some(s) = published(&actions).last() {
                shown = *s;
            }
            prop_assert_eq!(shown, m.phase().public(), "unpublished change to {:?}", m.phase());
            prop_assert_eq!(m.can_send(), matches!(m.phase(), Phase::Connected { .. }));
            prop_assert_eq!(m.refusal().is_none(), matches!(m.phase(),
                Phase::Connecting { .. } | Phase::Connected { .. } | Phase::Disconnected { .. }));
            let (r2, _) = Lifecycle::restore(LifecycleConfig::default(), &m.persisted(), now);
            if !matches!(m.phase(), Phase::Banned { .. }) {
                prop_assert_eq!(r2.persisted(), m.persisted());
            }
        }
    }
}
