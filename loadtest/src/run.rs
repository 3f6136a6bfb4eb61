//! `waping-loadtest run`: open-loop or closed-loop load with latency histograms.
//!
//! Open loop: each stream has a schedule (message i is due at start + i/rate)
//! and latency is measured from that intended time, so a target that stalls
//! is charged for every message it delayed (no coordinated omission).
//! A message's `seq` *is* its intended send time in nanoseconds since the
//! start, so the reader needs no shared map to compute latencies.
//!
//! The schedule, the closed-loop window, the statistics and the summary are
//! shared by every target; what differs (how a message is written and how the
//! answers come back) sits behind [`crate::target`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::sync::{Semaphore, watch};
use waping_protocol::{Body, Frame, Text};

use crate::stats::{Percentiles, StreamStats, Summary};
use crate::target::{Answer, Answers, Sink, StreamEnds, Target};

/// What `run` drives.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetKind {
    /// A running waping gateway over QUIC.
    #[default]
    Gateway,
    /// NATS JetStream (a file-storage stream), as a durability/throughput baseline.
    Jetstream,
}

/// Options of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// What to drive: the gateway, or NATS JetStream as a baseline.
    #[arg(long, value_enum, default_value_t = TargetKind::Gateway)]
    pub target: TargetKind,
    /// Key file from `waping-loadtest init` (workspaces and devices; with `--target jetstream`
    /// only the ids are used, and the `init` defaults stand in if the file is missing).
    #[arg(long, default_value = "loadtest-out/keys.toml")]
    pub keys: PathBuf,
    /// Gateway state directory: address and certificate fingerprint are read from its runtime.json.
    #[arg(long)]
    pub gateway_state: Option<PathBuf>,
    /// Gateway address (overrides runtime.json).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Certificate pin `sha256:<hex>` (overrides runtime.json).
    #[arg(long)]
    pub pin: Option<String>,
    /// Trust this PEM certificate instead of pinning.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Connections (spread over the key file's workspaces); with JetStream, NATS clients.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,
    /// Streams per connection; with JetStream, independent publishers per client.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Open-loop total arrival rate, messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Closed loop: as fast as possible with this many in flight per stream (ignores --rate).
    /// A message leaves the window with its last answer: the delivery report or a
    /// refusal (gateway), the publish ack or an error (JetStream).
    #[arg(long)]
    pub closed_loop: Option<u32>,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to wait for outstanding answers after sending stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Text body size in bytes.
    #[arg(long, visible_alias = "body-bytes", default_value_t = 200)]
    pub body_size: usize,
    /// Also subscribe to every workspace's events on one extra connection each and count them (gateway only).
    #[arg(long)]
    pub subscribe: bool,
    /// Write the JSON summary here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Start the simulated WhatsApp in this process on this address (for `upstream.kind = "sim-remote"`).
    #[arg(long)]
    pub spawn_sim: Option<SocketAddr>,
    #[command(flatten)]
    pub sim: crate::SimArgs,
    #[command(flatten)]
    pub js: crate::target::jetstream::JetStreamArgs,
}

/// Parses `500ms`, `10s`, `2m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Counters the progress line reads while the run goes on.
#[derive(Default, Debug)]
pub struct Live {
    /// Messages written.
    pub sent: AtomicU64,
    /// Accepted (gateway ACCEPTED, JetStream publish ack).
    pub accepted: AtomicU64,
    /// Refused.
    pub rejected: AtomicU64,
    /// Delivery reports (gateway only).
    pub reports: AtomicU64,
    /// Subscription events (gateway `--subscribe` only).
    pub events: AtomicU64,
}

struct StreamPlan {
    conn: usize,
    stream: usize,
    devices: Vec<Text>,
    /// Open loop: nanoseconds between messages of this stream.
    interval_ns: Option<f64>,
    window: Option<u32>,
}

/// Runs the load test and prints the summary.
pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    if a.closed_loop.is_none() && (!a.rate.is_finite() || a.rate <= 0.0) {
        bail!("--rate must be positive");
    }
    if a.closed_loop == Some(0) {
        bail!("--closed-loop must be at least 1");
    }
    let live = Arc::new(Live::default());
    match a.target {
        TargetKind::Gateway => {
            let (t, ends) = crate::target::gateway::connect(&a, &live).await?;
            drive(&a, t, ends, live).await
        }
        TargetKind::Jetstream => {
            let (t, ends) = crate::target::jetstream::connect(&a).await?;
            drive(&a, t, ends, live).await
        }
    }
}

/// The shared part of every run: schedule, window, statistics, summary.
async fn drive<T: Target>(
    a: &RunArgs,
    target: T,
    ends: Vec<StreamEnds<T::Sink, T::Answers>>,
    live: Arc<Live>,
) -> anyhow::Result<()> {
    let total_streams = ends.len();
    let interval_ns = match a.closed_loop {
        Some(_) => None,
        None => Some(1e9 * total_streams as f64 / a.rate),
    };
    // Idempotency keys are unique per run, so a target that deduplicates
    // (the gateway's journal, JetStream's Nats-Msg-Id window) never drops a
    // message of this run as a repeat of an earlier one.
    let run_id: u32 = rand::random();
    let body = Text::from("x".repeat(a.body_size));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + a.duration;
    let mut tasks = Vec::new();
    for e in ends {
        let plan = StreamPlan {
            conn: e.conn,
            stream: e.stream,
            devices: e.devices,
            interval_ns,
            window: a.closed_loop,
        };
        let (done_tx, done_rx) = watch::channel(None);
        let sem = plan.window.map(|w| Arc::new(Semaphore::new(w as usize)));
        let w = tokio::spawn(write_loop(
            e.sink,
            plan,
            run_id,
            body.clone(),
            start,
            end,
            live.clone(),
            sem.clone(),
            done_tx,
        ));
        let r = tokio::spawn(read_loop(
            e.answers,
            T::REPORTS,
            start,
            live.clone(),
            sem,
            done_rx,
            end + a.drain,
        ));
        tasks.push((w, r));
    }

    let bar = indicatif::ProgressBar::new(a.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = {
        let live = live.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = Instant::now();
                let acc = live.accepted.load(Ordering::Relaxed);
                let rate = (acc - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, acc);
                bar.set_position(now.saturating_duration_since(start).as_millis() as u64);
                let reports = if T::REPORTS {
                    format!(" reports {}", live.reports.load(Ordering::Relaxed))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "sent {} accepted {} ({:.0}/s) rejected {}{reports}",
                    live.sent.load(Ordering::Relaxed),
                    acc,
                    rate,
                    live.rejected.load(Ordering::Relaxed),
                ));
            }
        })
    };

    let mut total = StreamStats::default();
    let mut sent = 0;
    let mut send_end = start;
    // Writing ends are kept open until every answer is in: a gateway stream
    // whose client side is finished may be closed before the final reports
    // of deferred messages come.
    let mut sinks = Vec::new();
    for (w, r) in tasks {
        let (n, last, sink) = w.await.context("writer task")??;
        sinks.push(sink);
        sent += n;
        send_end = send_end.max(last);
        let st = r.await.context("reader task")??;
        total.merge(&st);
    }
    progress.abort();
    bar.finish_and_clear();
    drop(sinks);
    target.finish().await?;

    let secs = send_end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let resolved_failed: u64 = total.failed.values().sum();
    let rejected: u64 = total.rejected.values().sum();
    let reports = T::REPORTS;
    let summary = Summary {
        target: T::NAME,
        mode: if a.closed_loop.is_some() {
            "closed-loop".into()
        } else {
            "open-loop".into()
        },
        target_rate: a.closed_loop.is_none().then_some(a.rate),
        window: a.closed_loop,
        connections: a.connections,
        streams: a.streams,
        body_bytes: a.body_size,
        duration_s: secs,
        sent,
        accepted: total.accepted,
        accepted_per_s: total.accepted as f64 / secs,
        rejected: total.rejected.clone(),
        unanswered: sent.saturating_sub(total.accepted + rejected),
        delivered: reports.then_some(total.delivered),
        failed: reports.then(|| total.failed.clone()),
        deferred: reports.then_some(total.deferred),
        missing_reports: reports.then(|| total.accepted.saturating_sub(total.delivered + resolved_failed)),
        events: live.events.load(Ordering::Relaxed),
        accept_latency: Percentiles::of(&total.accept),
        delivery_latency: reports.then(|| Percentiles::of(&total.delivery)),
    };
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(p) = &a.json {
        std::fs::write(p, &json)?;
    }
    let mut line = format!(
        "{}: accepted {} of {} sent ({:.0}/s), rejected {}, unanswered {}; accept p50 {:.2} ms p99 {:.2} ms",
        T::NAME,
        summary.accepted,
        summary.sent,
        summary.accepted_per_s,
        rejected,
        summary.unanswered,
        summary.accept_latency.p50_ms,
        summary.accept_latency.p99_ms,
    );
    if let (Some(missing), Some(d)) = (summary.missing_reports, &summary.delivery_latency) {
        line += &format!(
            "; delivered {}, failed {}, missing reports {missing}; delivery p99 {:.2} ms",
            total.delivered, resolved_failed, d.p99_ms
        );
    }
    eprintln!("{line}");
    if let Some(missing) = summary.missing_reports
        && missing > 0
    {
        bail!("{missing} accepted messages got no delivery report");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_loop<S: Sink>(
    mut sink: S,
    plan: StreamPlan,
    run_id: u32,
    body: Text,
    start: Instant,
    end: Instant,
    live: Arc<Live>,
    sem: Option<Arc<Semaphore>>,
    done: watch::Sender<Option<u64>>,
) -> anyhow::Result<(u64, Instant, S)> {
    const BATCH: usize = 256;
    let recipients: Vec<Text> = (0..64)
        .map(|i| Text::from(format!("49151{:08}", 10_000_000 + i)))
        .collect();
    let mut i: u64 = 0;
    let mut last_seq: u64 = 0;
    tokio::time::sleep_until(start.into()).await;
    let result = async {
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Intended send time (ns since start) of message i + k.
            let (n, open_iv, base) = match (plan.interval_ns, &sem) {
                (Some(iv), _) => {
                    let elapsed = now.duration_since(start).as_nanos() as f64;
                    let due = (elapsed / iv).floor() as u64 + 1;
                    if i >= due {
                        let next = start + Duration::from_nanos((i as f64 * iv) as u64);
                        tokio::time::sleep_until(next.min(end).into()).await;
                        continue;
                    }
                    (((due - i) as usize).min(BATCH) as u64, Some(iv), 0)
                }
                (None, Some(sem)) => {
                    let p = tokio::select! {
                        p = sem.acquire() => p?,
                        _ = tokio::time::sleep_until(end.into()) => break,
                    };
                    p.forget();
                    let mut n = 1;
                    while n < BATCH && sem.try_acquire().map(|p| p.forget()).is_ok() {
                        n += 1;
                    }
                    (n as u64, None, now.duration_since(start).as_nanos() as u64)
                }
                (None, None) => bail!("no schedule"),
            };
            for k in 0..n {
                let intended = match open_iv {
                    Some(iv) => ((i + k) as f64 * iv) as u64,
                    None => base,
                };
                // seq is the intended time, nudged by a nanosecond where needed to stay unique.
                let seq = intended.max(last_seq + 1);
                last_seq = seq;
                let idx = (i + k) as usize;
                let device = idx % plan.devices.len();
                sink.queue(
                    device,
                    Frame::Send {
                        seq,
                        idempotency_key: Text::from(format!(
                            "{run_id:08x}-{}-{}-{}",
                            plan.conn,
                            plan.stream,
                            i + k
                        )),
                        device_id: plan.devices[device].clone(),
                        recipient: recipients[idx % recipients.len()].clone(),
                        body: Body::Text(body.clone()),
                    },
                )?;
            }
            sink.flush().await?;
            i += n;
            live.sent.fetch_add(n, Ordering::Relaxed);
        }
        anyhow::Ok(())
    }
    .await;
    let _ = done.send(Some(i));
    result.map(|()| (i, Instant::now().min(end), sink))
}

/// Collects one stream's answers until every message it sent is resolved
/// (its last answer came: see [`Target::REPORTS`]) or the deadline passes.
async fn read_loop<A: Answers>(
    mut answers: A,
    reports: bool,
    start: Instant,
    live: Arc<Live>,
    sem: Option<Arc<Semaphore>>,
    mut done: watch::Receiver<Option<u64>>,
    deadline: Instant,
) -> anyhow::Result<StreamStats> {
    let mut st = StreamStats::default();
    let mut resolved = 0u64;
    // Messages whose slot a deferred report already freed, awaiting their final report.
    let mut deferred = std::collections::HashSet::new();
    let us_since = |seq: u64| {
        let intended = start + Duration::from_nanos(seq);
        Instant::now()
            .saturating_duration_since(intended)
            .as_micros()
            .max(1) as u64
    };
    let free_slot = || {
        if let Some(s) = &sem {
            s.add_permits(1);
        }
    };
    let resolve = |resolved: &mut u64| {
        *resolved += 1;
        free_slot();
    };
    loop {
        let finished = matches!(*done.borrow(), Some(total) if resolved >= total);
        if finished {
            break;
        }
        let answer = tokio::select! {
            a = answers.next() => a?,
            _ = done.changed() => continue,
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        let Some(answer) = answer else { break };
        match answer {
            Answer::Accepted { seq } => {
                st.accepted += 1;
                live.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = st.accept.record(us_since(seq));
                if !reports {
                    resolve(&mut resolved);
                }
            }
            Answer::Rejected { reason } => {
                *st.rejected.entry(reason).or_default() += 1;
                live.rejected.fetch_add(1, Ordering::Relaxed);
                resolve(&mut resolved);
            }
            Answer::Deferred { seq } => {
                st.deferred += 1;
                if deferred.insert(seq) {
                    free_slot();
                }
            }
            Answer::Report { seq, failed } => {
                live.reports.fetch_add(1, Ordering::Relaxed);
                let _ = st.delivery.record(us_since(seq));
                match failed {
                    None => st.delivered += 1,
                    Some(reason) => *st.failed.entry(reason).or_default() += 1,
                }
                if deferred.remove(&seq) {
                    resolved += 1;
                } else {
                    resolve(&mut resolved);
                }
            }
            Answer::Other => {}
        }
    }
    Ok(st)
}
