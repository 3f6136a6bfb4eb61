//! The shipping loop: one task per sink, moving records from the sink's cursor in the
//! spool to the sink, in order, with exponential backoff on failure.
//!
//! Delivery is at least once from the loop's point of view (a batch is resent after any
//! error, and the cursor may lag after a crash); sinks that can say what they already hold
//! ([`Sink::resume`]) or dedupe by node + seq make it exactly once.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::sink::{Line, Sink, SinkError};
use crate::spool::{RateLimit, Spool, SpoolReader};

/// Longest `Retry-After` honoured; a destination asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// At most one "behind and failing" warning per sink per this interval.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// After the last send, how long an idle loop waits before [`Sink::flush`].
const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// Upper bound for the final flush at shutdown (the file sink's fsync).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Retry delays: `initial`, doubling up to `max`, each with ±20 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 200 ms to 30 s, as the HTTP and NATS sinks' defaults.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// The delay before retry number `attempt` (0 = first retry). `jitter` in `[-1, 1]` spreads
/// it by ±20 % so sinks failing together do not retry in lockstep; the result never
/// exceeds `b.max`. A destination's `retry_after` wins (up to [`MAX_RETRY_AFTER`]).
pub fn retry_delay(b: Backoff, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    if let Some(r) = retry_after {
        return r.min(MAX_RETRY_AFTER);
    }
    let base = b.initial.saturating_mul(1u32 << attempt.min(30)).min(b.max);
    base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0)).min(b.max)
}

/// What a shipping task needs besides its sink.
#[derive(Debug)]
pub struct ShipContext {
    /// The spool (cursors).
    pub spool: Spool,
    /// This sink's reader.
    pub reader: SpoolReader,
    /// The durable head.
    pub head: watch::Receiver<u64>,
    /// Cancelled at shutdown, after the writer wrote its last record: ship up to the final
    /// head, flush, return.
    pub drain: CancellationToken,
    /// Cancelled when the shutdown deadline passed (or the pipeline was dropped): flush what
    /// was sent and return now.
    pub abort: CancellationToken,
    /// Retry delays.
    pub backoff: Backoff,
    /// Records per batch at most.
    pub max_batch_records: usize,
    /// Bytes per batch at most (a larger single record is sent alone).
    pub max_batch_bytes: usize,
}

/// Ships records to `sink` until shutdown. See the module docs.
pub async fn run(mut sink: Box<dyn Sink>, mut ctx: ShipContext) {
    let name = sink.name().to_owned();
    let mut warn = RateLimit::new(WARN_EVERY);
    let Some(mut pos) = start_position(sink.as_mut(), &mut ctx, &name, &mut warn).await else {
        finish(sink.as_mut(), &name).await;
        return;
    };
    let mut reader = Some(ctx.reader);
    let mut dirty = false;
    let mut last_send = Instant::now();
    'outer: loop {
        if ctx.abort.is_cancelled() {
            break;
        }
        let head = *ctx.head.borrow_and_update();
        if pos >= head {
            if ctx.drain.is_cancelled() {
                break;
            }
            if dirty {
                let left = FLUSH_AFTER.saturating_sub(last_send.elapsed());
                tokio::select! {
                    _ = ctx.head.changed() => {}
                    _ = ctx.drain.cancelled() => {}
                    _ = ctx.abort.cancelled() => break,
                    _ = tokio::time::sleep(left) => {
                        flush(sink.as_mut(), &name, &mut warn).await;
                        dirty = false;
                    }
                }
            } else {
                tokio::select! {
                    _ = ctx.head.changed() => {}
                    _ = ctx.drain.cancelled() => {}
                    _ = ctx.abort.cancelled() => break,
                }
            }
            continue;
        }
        let mut r = reader.take().expect("reader");
        let (max_r, max_b) = (ctx.max_batch_records, ctx.max_batch_bytes);
        let joined = tokio::task::spawn_blocking(move || {
            let res = r.read(pos, max_r, max_b, head);
            (r, res)
        })
        .await;
        let batch = match joined {
            Ok((r, res)) => {
                reader = Some(r);
                res
            }
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "audit shipping: reading the spool panicked; this sink stops");
                break;
            }
        };
        let batch = match batch {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                // The head moved but nothing is readable: only possible if segments vanished
                // under the reader; the next pass locates afresh.
                if let Some(n) = warn.allow(Instant::now()) {
                    tracing::warn!(sink = %name, after = pos, head, suppressed = n, "audit shipping: nothing readable below the head");
                }
                if !pause(&ctx.abort, ctx.backoff.initial).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                if let Some(n) = warn.allow(Instant::now()) {
                    tracing::error!(sink = %name, after = pos, error = %e, suppressed = n, "audit shipping: reading the spool failed; retrying");
                }
                metrics::counter!("waping_audit_sink_errors_total", "sink" => name.clone(), "reason" => "local")
                    .increment(1);
                if !pause(&ctx.abort, ctx.backoff.max).await {
                    break;
                }
                continue;
            }
        };
        if batch[0].seq != pos + 1 {
            tracing::error!(
                sink = %name,
                from_seq = pos + 1,
                to_seq = batch[0].seq - 1,
                "audit shipping: records are no longer in the spool (discarded when it was full; an audit.gap record names them)"
            );
        }
        let mut attempt = 0u32;
        loop {
            let res = tokio::select! {
                r = sink.send(&batch) => r,
                _ = ctx.abort.cancelled() => break 'outer,
            };
            match res {
                Ok(()) => {
                    pos = shipped(&ctx.spool, &name, &batch, &mut warn);
                    dirty = true;
                    last_send = Instant::now();
                    let head = *ctx.head.borrow();
                    metrics::gauge!("waping_audit_sink_lag_records", "sink" => name.clone())
                        .set(head.saturating_sub(pos) as f64);
                    break;
                }
                Err(e) => {
                    let head = *ctx.head.borrow();
                    let lag = head.saturating_sub(pos);
                    failed(&name, &e, lag, &mut warn);
                    let d = retry_delay(ctx.backoff, attempt, jitter(), e.retry_after);
                    attempt = attempt.saturating_add(1);
                    if !pause(&ctx.abort, d).await {
                        break 'outer;
                    }
                }
            }
        }
    }
    finish(sink.as_mut(), &name).await;
}

/// After `max(cursor, what the sink holds)`, asking the sink with backoff. `None` if aborted.
async fn start_position(
    sink: &mut dyn Sink,
    ctx: &mut ShipContext,
    name: &str,
    warn: &mut RateLimit,
) -> Option<u64> {
    let cursor = ctx.spool.cursor(name);
    let mut attempt = 0u32;
    let resume = loop {
        let res = tokio::select! {
            r = sink.resume() => r,
            _ = ctx.abort.cancelled() => return None,
        };
        match res {
            Ok(r) => break r,
            Err(e) => {
                failed(name, &e, ctx.spool.head().saturating_sub(cursor), warn);
                let d = retry_delay(ctx.backoff, attempt, jitter(), e.retry_after);
                attempt = attempt.saturating_add(1);
                if !pause(&ctx.abort, d).await {
                    return None;
                }
            }
        }
    };
    let head = ctx.spool.head();
    if let Some(r) = resume
        && r > head
    {
        tracing::warn!(
            sink = name,
            holds = r,
            head,
            "audit sink already holds records beyond the spool's head (was the spool reset?); resuming after what it holds"
        );
    }
    let pos = cursor.max(resume.unwrap_or(0));
    if pos > cursor
        && let Err(e) = ctx.spool.set_cursor(name, pos)
    {
        tracing::warn!(sink = name, error = %e, "audit shipping: writing the cursor failed");
    }
    metrics::gauge!("waping_audit_sink_lag_records", "sink" => name.to_owned())
        .set(head.saturating_sub(pos) as f64);
    Some(pos)
}

fn shipped(spool: &Spool, name: &str, batch: &[Line], warn: &mut RateLimit) -> u64 {
    let last = batch.last().expect("non-empty batch").seq;
    if let Err(e) = spool.set_cursor(name, last) {
        // The sink has the records; a lagging cursor only means re-sends after a restart.
        if let Some(n) = warn.allow(Instant::now()) {
            tracing::warn!(sink = name, error = %e, suppressed = n, "audit shipping: writing the cursor failed");
        }
    }
    metrics::counter!("waping_audit_sink_records_total", "sink" => name.to_owned())
        .increment(batch.len() as u64);
    last
}

fn failed(name: &str, e: &SinkError, lag: u64, warn: &mut RateLimit) {
    metrics::counter!(
        "waping_audit_sink_errors_total",
        "sink" => name.to_owned(),
        "reason" => e.kind.as_str()
    )
    .increment(1);
    metrics::gauge!("waping_audit_sink_lag_records", "sink" => name.to_owned()).set(lag as f64);
    if let Some(suppressed) = warn.allow(Instant::now()) {
        tracing::warn!(
            sink = name,
            lag,
            reason = e.kind.as_str(),
            error = %e.message,
            failures_since_last_warning = suppressed,
            "audit sink is failing and behind; retrying with backoff (records wait in the spool)"
        );
    }
}

async fn flush(sink: &mut dyn Sink, name: &str, warn: &mut RateLimit) {
    if let Err(e) = sink.flush().await {
        metrics::counter!(
            "waping_audit_sink_errors_total",
            "sink" => name.to_owned(),
            "reason" => e.kind.as_str()
        )
        .increment(1);
        if let Some(n) = warn.allow(Instant::now()) {
            tracing::warn!(sink = name, error = %e, suppressed = n, "audit sink flush failed");
        }
    }
}

async fn finish(sink: &mut dyn Sink, name: &str) {
    match tokio::time::timeout(FLUSH_TIMEOUT, sink.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(sink = name, error = %e, "audit sink: final flush failed"),
        Err(_) => tracing::warn!(sink = name, "audit sink: final flush timed out"),
    }
}

/// Waits `d`; `false` if aborted meanwhile. Drain does not cut a backoff short: shutdown
/// keeps retrying until its deadline.
async fn pause(abort: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = abort.cancelled() => false,
    }
}

fn jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_a_cap() {
        let b = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        };
        assert_eq!(retry_delay(b, 0, 0.0, None), Duration::from_millis(200));
        assert_eq!(retry_delay(b, 1, 0.0, None), Duration::from_millis(400));
        assert_eq!(retry_delay(b, 5, 0.0, None), Duration::from_millis(6400));
        assert_eq!(retry_delay(b, 0, 1.0, None), Duration::from_millis(240));
        assert_eq!(retry_delay(b, 0, -1.0, None), Duration::from_millis(160));
        assert_eq!(
            retry_delay(b, 0, 7.0, None),
            Duration::from_millis(240),
            "jitter is clamped"
        );
        for attempt in [8, 20, 31, 1000, u32::MAX] {
            for j in [-1.0, -0.3, 0.0, 0.5, 1.0] {
                let d = retry_delay(b, attempt, j, None);
                assert!(d <= b.max && d >= b.max.mul_f64(0.8), "{attempt} {j} {d:?}");
            }
        }
        // Over many random draws the spread stays within ±20 %.
        for _ in 0..1000 {
            let d = retry_delay(b, 2, jitter(), None);
            assert!(
                d >= Duration::from_millis(640) && d <= Duration::from_millis(960),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_up_to_a_bound() {
        let b = Backoff::default();
        assert_eq!(
            retry_delay(b, 9, 0.0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(b, 0, 0.0, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}
