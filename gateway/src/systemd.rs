//! systemd integration: `READY=1` once the journal is replayed and the listeners are
//! bound, `STATUS=` lines with counts, `RELOADING=1` then `READY=1` around a SIGHUP reload,
//! `STOPPING=1` on drain, and `WATCHDOG=1` pings that
//! stop when the node is not healthy.
//!
//! The `sd-notify` crate speaks the protocol (a datagram to `$NOTIFY_SOCKET`); without
//! that variable every call is a no-op, so the gateway behaves the same outside systemd.
//! The watchdog loop is generic over its health probe and its ping, so tests drive it with
//! a simulated clock and a wedged probe instead of a real journal.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Sends `states` to the service manager, if there is one. Failures are logged once at
/// debug level: a notification socket that went away must not stop the gateway.
fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Startup is finished: the journal is replayed and every listener is bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A human-readable status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A reload (SIGHUP) started. `MONOTONIC_USEC` lets `Type=notify-reload` units match it
/// to their signal; plain `Type=notify` units show the state while it lasts.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(t) => send(&[
            NotifyState::Reloading,
            t,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The gateway is draining and will exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// How often to ping and how long a health probe may take, for a watchdog `period`:
/// ping at half the period (systemd's advice) and give the probe a quarter, so a probe
/// that hangs misses at most one ping before the next one is due.
pub fn watchdog_timing(period: Duration) -> (Duration, Duration) {
    let every = (period / 2).max(Duration::from_millis(10));
    let probe = (period / 4).max(Duration::from_millis(5));
    (every, probe)
}

/// Pings (`ping()`) every half `period` while `probe()` answers `true` within a quarter
/// period; a probe that hangs or answers `false` skips the ping, so systemd restarts a
/// wedged node after `WatchdogSec`. Returns when `stop` is cancelled.
pub async fn watchdog<P, F>(period: Duration, mut probe: P, mut ping: impl FnMut(), stop: CancellationToken)
where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let (every, limit) = watchdog_timing(period);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unhealthy_logged = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let healthy = tokio::select! {
            r = tokio::time::timeout(limit, probe()) => matches!(r, Ok(true)),
            _ = stop.cancelled() => return,
        };
        if healthy {
            ping();
            unhealthy_logged = false;
        } else if !unhealthy_logged {
            tracing::error!(
                probe_timeout_ms = limit.as_millis() as u64,
                "health probe failed or hung (journal not committing): not pinging the systemd watchdog"
            );
            unhealthy_logged = true;
        }
    }
}

/// The real ping.
pub fn ping() {
    send(&[NotifyState::Watchdog]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    async fn run_for(period: Duration, wedged: Arc<AtomicBool>, span: Duration) -> u32 {
        let pings = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let p = pings.clone();
        let task = tokio::spawn(watchdog(
            period,
            move || {
                let wedged = wedged.clone();
                async move {
                    if wedged.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    true
                }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
            stop.clone(),
        ));
        tokio::time::sleep(span).await;
        stop.cancel();
        task.await.unwrap();
        pings.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_node_pings_at_half_the_period() {
        let n = run_for(
            Duration::from_secs(30),
            Arc::new(AtomicBool::new(false)),
            Duration::from_secs(150),
        )
        .await;
        // Ticks at 0, 15, 30, …, 150 s (the last may race the stop).
        assert!((10..=11).contains(&n), "{n} pings");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_journal_stops_the_pings() {
        let n = run_for(
            Duration::from_secs(30),
            Arc::new(AtomicBool::new(true)),
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(n, 0, "a hung probe must never be answered with a ping");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_resume_when_the_journal_does() {
        let wedged = Arc::new(AtomicBool::new(true));
        let pings = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let (w, p) = (wedged.clone(), pings.clone());
        let task = tokio::spawn(watchdog(
            Duration::from_secs(20),
            move || {
                let w = w.clone();
                async move { !w.load(Ordering::SeqCst) }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 0);
        wedged.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(pings.load(Ordering::SeqCst) >= 5);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn timing_is_half_and_quarter_with_floors() {
        assert_eq!(
            watchdog_timing(Duration::from_secs(30)),
            (Duration::from_secs(15), Duration::from_millis(7500))
        );
        assert_eq!(
            watchdog_timing(Duration::from_millis(1)),
            (Duration::from_millis(10), Duration::from_millis(5))
        );
    }
}
