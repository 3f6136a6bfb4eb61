//! The tokio driver on tokio's paused clock: it sleeps exactly until the next due item.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::limiter::Nanos;
use crate::retry::{RetryQueue, run_scheduler};

use super::{DAY, HOUR, MS, SEC, n};

#[tokio::test(start_paused = true)]
async fn scheduler_sleeps_until_due_and_wakes_for_earlier_items() {
    let origin = Instant::now();
    let clock = move || Nanos(origin.elapsed().as_nanos() as u64);
    let q: RetryQueue<u32, &str> = RetryQueue::new(100);
    let h = q.handle();
    let (tx, mut fired) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_scheduler(
        q,
        clock,
        move |e| tx.send((e.key, e.item, e.due.0, clock().0)).unwrap(),
        async {
            let _ = stopped.await;
        },
    ));
    let on_time = |(key, _, due, at): (u32, &str, u64, u64), want: u32| {
        assert_eq!(key, want);
        assert!(at >= due, "item {key} fired {} ns early", due - at);
        // One wheel tick, plus tokio's timer rounding up to its own millisecond.
        assert!(at - due <= 2 * MS, "item {key} fired {} ns late", at - due);
    };

    h.schedule(1, "an hour", n(HOUR)).unwrap();
    h.schedule(2, "ten ms", n(10 * MS)).unwrap();
    on_time(fired.recv().await.unwrap(), 2);

    // The scheduler now sleeps until the hour; an earlier item must wake it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let soon = clock().0 + 2 * SEC + 3;
    h.schedule(3, "soon", n(soon)).unwrap();
    let e = fired.recv().await.unwrap();
    on_time(e, 3);
    assert!(e.3 < 10 * SEC, "waited for the hour instead");

    on_time(fired.recv().await.unwrap(), 1);

    h.schedule(4, "tomorrow", n(clock().0 + DAY)).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.send(()).unwrap();
    let q = task.await.unwrap();
    assert_eq!(q.len(), 1, "pending items stay in the returned queue");
    assert!(fired.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn items_scheduled_in_a_burst_come_out_in_due_order() {
    let origin = Instant::now();
    let clock = move || Nanos(origin.elapsed().as_nanos() as u64);
    let q: RetryQueue<u64, ()> = RetryQueue::new(10_000);
    let h = q.handle();
    let (tx, mut fired) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_scheduler(
        q,
        clock,
        move |e| tx.send(e.due.0).unwrap(),
        async {
            let _ = stopped.await;
        },
    ));
    for i in 0..1000u64 {
        // Spread over ~3 s, scheduled out of order.
        h.schedule(i, (), n((i * 7919) % 1000 * 3 * MS + 1)).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 1000 {
        got.push(fired.recv().await.unwrap());
    }
    assert!(got.windows(2).all(|w| w[0] <= w[1]));
    stop.send(()).unwrap();
    assert!(task.await.unwrap().is_empty());
}

#[test]
fn the_driver_is_send_for_items_that_are_not_sync() {
    fn assert_send<F: Send>(_: &F) {}
    let q: RetryQueue<u64, std::cell::Cell<u32>> = RetryQueue::new(1);
    let fut = run_scheduler(q, || Nanos(0), |_| {}, std::future::pending());
    assert_send(&fut);
}
