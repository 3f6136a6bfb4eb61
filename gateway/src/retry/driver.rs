//! An optional tokio loop around [`RetryQueue`]: poll, hand out, sleep until the next due item.

use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use super::queue::{Expired, RetryQueue};
use crate::limiter::Nanos;

/// Runs the scheduler until `shutdown` resolves, then returns the queue.
///
/// `clock` gives the monotonic `now` (the same clock producers compute `due`
/// with); `sink` receives every due item in due order and must not block (hand
/// the item to a session queue or a channel). The loop sleeps until
/// [`RetryQueue::next_due`], or until a producer schedules something earlier,
/// so an idle queue costs no wake-ups. Items still pending at shutdown stay in
/// the returned queue; the journal holds their schedule for the next start.
pub async fn run_scheduler<K, T, C, S, F>(
    mut queue: RetryQueue<K, T>,
    clock: C,
    mut sink: S,
    shutdown: F,
) -> RetryQueue<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    C: Fn() -> Nanos,
    S: FnMut(Expired<K, T>),
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut batch = Vec::new();
    loop {
        queue.mark_awake();
        queue.poll_into(clock(), &mut batch);
        for e in batch.drain(..) {
            sink(e);
        }
        let next = queue.plan_sleep();
        let now = clock();
        let wait = next.map(|d| Duration::from_nanos(d.0.saturating_sub(now.0)));
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let woken = queue.notified();
        tokio::select! {
            biased;
            () = &mut shutdown => return queue,
            () = woken => {}
            () = sleep => {}
        }
    }
}
