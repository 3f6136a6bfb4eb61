//! `waping-loadtest run`: open-loop or closed-loop load with latency histograms.
//!
//! Open loop: each stream has a schedule (message i is due at start + i/rate)
//! and latency is measured from that intended time, so a gateway that stalls
//! is charged for every message it delayed (no coordinated omission).
//! The SEND's `seq` *is* the intended send time in nanoseconds since the start,
//! so the reader needs no shared map to compute latencies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::{Semaphore, watch};
use waping_client::{ClientConfig, Connection, FrameReader, FrameWriter, Trust};
use waping_protocol::{Body, DeliveryStatus, Frame, Text, subscribe};

use crate::stats::{Percentiles, StreamStats, Summary, code_name};

/// Options of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Key file from `waping-loadtest init`.
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
    /// Connections (spread over the key file's workspaces).
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,
    /// Streams per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Open-loop total arrival rate, messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Closed loop: as fast as possible with this many in flight per stream (ignores --rate).
    #[arg(long)]
    pub closed_loop: Option<u32>,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to wait for outstanding reports after sending stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Text body size in bytes.
    #[arg(long, default_value_t = 200)]
    pub body_size: usize,
    /// Also subscribe to every workspace's events on one extra connection each and count them.
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

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    reports: AtomicU64,
    events: AtomicU64,
}

struct StreamPlan {
    conn: usize,
    stream: usize,
    devices: Vec<Text>,
    /// Open loop: nanoseconds between messages of this stream.
    interval_ns: Option<f64>,
    window: Option<u32>,
}

fn runtime_info(dir: &std::path::Path) -> anyhow::Result<(SocketAddr, String)> {
    let p = dir.join("runtime.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("{} (is the gateway running?)", p.display()))?,
    )?;
    let addr: SocketAddr = v["quic"].as_str().context("runtime.json: quic")?.parse()?;
    let fp = v["fingerprint"]
        .as_str()
        .context("runtime.json: fingerprint")?
        .to_string();
    // The gateway may listen on 0.0.0.0; connect over loopback then.
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    Ok((addr, fp))
}

/// Runs the load test and prints the summary.
pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    if let Some(listen) = a.spawn_sim {
        let addr = crate::spawn_sim(listen, &a.sim).await?;
        eprintln!("simulated WhatsApp listening on tcp {addr}");
    }
    let keys = crate::read_keys(&a.keys)?;
    if keys.workspaces.is_empty() {
        bail!("{}: no workspaces", a.keys.display());
    }
    let (mut addr, mut pin) = (a.addr, a.pin.clone());
    if let Some(dir) = &a.gateway_state {
        let (ra, rp) = runtime_info(dir)?;
        addr = addr.or(Some(ra));
        pin = pin.or(Some(rp));
    }
    let addr = addr.context("give --addr or --gateway-state")?;
    let trust = match (&a.ca_cert, &pin) {
        (Some(ca), _) => Trust::CaFile(ca.clone()),
        (None, Some(p)) => Trust::parse_pin(p)?,
        (None, None) => {
            bail!("give --pin, --ca-cert or --gateway-state so the gateway's certificate can be verified")
        }
    };
    let client_cfg = |key: &str, i: usize| ClientConfig {
        addr,
        server_name: "localhost".into(),
        trust: trust.clone(),
        api_key: key.to_string(),
        client_name: format!("waping-loadtest/{i}"),
        connect_timeout: Duration::from_secs(10),
    };
    if a.connections == 0 || a.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    let total_streams = a.connections * a.streams;
    let interval_ns = match a.closed_loop {
        Some(_) => None,
        None => {
            if !a.rate.is_finite() || a.rate <= 0.0 {
                bail!("--rate must be positive");
            }
            Some(1e9 * total_streams as f64 / a.rate)
        }
    };

    let live = Arc::new(Live::default());
    let mut event_tasks = Vec::new();
    if a.subscribe {
        for (i, w) in keys.workspaces.iter().enumerate() {
            let mut conn = Connection::connect(&client_cfg(&w.key, 10_000 + i)).await?;
            let mut control = conn.take_control().context("control stream")?;
            control.send(&Frame::Subscribe { mask: subscribe::ALL }).await?;
            match control.next().await? {
                Some(Frame::Subscribed { .. }) => {}
                other => bail!("expected SUBSCRIBED, got {other:?}"),
            }
            let mut events = conn.accept_event_stream().await?;
            let live = live.clone();
            event_tasks.push(tokio::spawn(async move {
                while let Ok(Some(Frame::Event(_))) = events.next().await {
                    live.events.fetch_add(1, Ordering::Relaxed);
                }
                drop(control);
                drop(conn);
            }));
        }
    }

    let mut conns = Vec::new();
    let mut plans = Vec::new();
    for c in 0..a.connections {
        let w = &keys.workspaces[c % keys.workspaces.len()];
        let mut conn = Connection::connect(&client_cfg(&w.key, c))
            .await
            .with_context(|| format!("connection {c}"))?;
        let devices: Vec<Text> = w.devices.iter().map(|d| Text::from(d.as_str())).collect();
        if devices.is_empty() {
            bail!("workspace {} has no devices", w.id);
        }
        let mut streams = Vec::new();
        for s in 0..a.streams {
            let st = if s == 0 {
                conn.take_control().context("control stream")?
            } else {
                conn.open_stream().await?
            };
            streams.push(st);
            plans.push(StreamPlan {
                conn: c,
                stream: s,
                devices: devices.clone(),
                interval_ns,
                window: a.closed_loop,
            });
        }
        conns.push((conn, streams));
    }

    let body = Text::from("x".repeat(a.body_size));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + a.duration;
    let mut tasks = Vec::new();
    let mut plan_iter = plans.into_iter();
    let mut keep = Vec::new();
    for (conn, streams) in conns {
        for st in streams {
            let Some(plan) = plan_iter.next() else { break };
            let (writer, reader) = st.split();
            let (done_tx, done_rx) = watch::channel(None);
            let sem = plan.window.map(|w| Arc::new(Semaphore::new(w as usize)));
            let w = tokio::spawn(write_loop(
                writer,
                plan,
                body.clone(),
                start,
                end,
                live.clone(),
                sem.clone(),
                done_tx,
            ));
            let r = tokio::spawn(read_loop(
                reader,
                start,
                live.clone(),
                sem,
                done_rx,
                end + a.drain,
            ));
            tasks.push((w, r));
        }
        keep.push(conn);
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
                bar.set_message(format!(
                    "sent {} accepted {} ({:.0}/s) rejected {} reports {}",
                    live.sent.load(Ordering::Relaxed),
                    acc,
                    rate,
                    live.rejected.load(Ordering::Relaxed),
                    live.reports.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let mut total = StreamStats::default();
    let mut sent = 0;
    let mut send_end = start;
    for (w, r) in tasks {
        let (n, last) = w.await.context("writer task")??;
        sent += n;
        send_end = send_end.max(last);
        let st = r.await.context("reader task")??;
        total.merge(&st);
    }
    progress.abort();
    bar.finish_and_clear();
    for c in keep {
        c.close().await;
    }
    for t in event_tasks {
        t.abort();
    }

    let secs = send_end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let resolved_failed: u64 = total.failed.values().sum();
    let summary = Summary {
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
        rejected: total.rejected.iter().map(|(k, v)| (code_name(*k), *v)).collect(),
        delivered: total.delivered,
        failed: total.failed.iter().map(|(k, v)| (code_name(*k), *v)).collect(),
        missing_reports: total.accepted.saturating_sub(total.delivered + resolved_failed),
        events: live.events.load(Ordering::Relaxed),
        accept_latency: Percentiles::of(&total.accept),
        delivery_latency: Percentiles::of(&total.delivery),
    };
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(p) = &a.json {
        std::fs::write(p, &json)?;
    }
    eprintln!(
        "accepted {} of {} sent ({:.0}/s), delivered {}, failed {}, missing reports {}; accept p50 {:.2} ms p99 {:.2} ms; delivery p99 {:.2} ms",
        summary.accepted,
        summary.sent,
        summary.accepted_per_s,
        summary.delivered,
        resolved_failed,
        summary.missing_reports,
        summary.accept_latency.p50_ms,
        summary.accept_latency.p99_ms,
        summary.delivery_latency.p99_ms
    );
    if summary.missing_reports > 0 {
        bail!(
            "{} accepted messages got no delivery report",
            summary.missing_reports
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut w: FrameWriter,
    plan: StreamPlan,
    body: Text,
    start: Instant,
    end: Instant,
    live: Arc<Live>,
    sem: Option<Arc<Semaphore>>,
    done: watch::Sender<Option<u64>>,
) -> anyhow::Result<(u64, Instant)> {
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
                w.queue(&Frame::Send {
                    seq,
                    idempotency_key: Text::from(format!("{}-{}-{}", plan.conn, plan.stream, i + k)),
                    device_id: plan.devices[idx % plan.devices.len()].clone(),
                    recipient: recipients[idx % recipients.len()].clone(),
                    body: Body::Text(body.clone()),
                })?;
            }
            w.flush().await?;
            i += n;
            live.sent.fetch_add(n, Ordering::Relaxed);
        }
        anyhow::Ok(())
    }
    .await;
    let _ = done.send(Some(i));
    result.map(|()| (i, Instant::now().min(end)))
}

async fn read_loop(
    mut r: FrameReader,
    start: Instant,
    live: Arc<Live>,
    sem: Option<Arc<Semaphore>>,
    mut done: watch::Receiver<Option<u64>>,
    deadline: Instant,
) -> anyhow::Result<StreamStats> {
    let mut st = StreamStats::default();
    let mut resolved = 0u64;
    let us_since = |seq: u64| {
        let intended = start + Duration::from_nanos(seq);
        Instant::now()
            .saturating_duration_since(intended)
            .as_micros()
            .max(1) as u64
    };
    loop {
        let finished = matches!(*done.borrow(), Some(total) if resolved >= total);
        if finished {
            break;
        }
        let frame = tokio::select! {
            f = r.next() => f?,
            _ = done.changed() => continue,
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        let Some(frame) = frame else { break };
        match frame {
            Frame::Accepted { seq, .. } => {
                st.accepted += 1;
                live.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = st.accept.record(us_since(seq));
            }
            Frame::Rejected { code, .. } => {
                *st.rejected.entry(code.0).or_default() += 1;
                live.rejected.fetch_add(1, Ordering::Relaxed);
                resolved += 1;
                if let Some(s) = &sem {
                    s.add_permits(1);
                }
            }
            Frame::Report(rep) => {
                live.reports.fetch_add(1, Ordering::Relaxed);
                let _ = st.delivery.record(us_since(rep.seq));
                match rep.status {
                    DeliveryStatus::Sent => st.delivered += 1,
                    DeliveryStatus::Failed => *st.failed.entry(rep.code.0).or_default() += 1,
                }
                resolved += 1;
                if let Some(s) = &sem {
                    s.add_permits(1);
                }
            }
            Frame::Goodbye { code, message } => {
                eprintln!("gateway said GOODBYE {code}: {message}");
            }
            Frame::Error { code, message, .. } => bail!("gateway error {code}: {message}"),
            _ => {}
        }
    }
    Ok(st)
}
