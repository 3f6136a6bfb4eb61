//! `waping-loadtest storm`: reconnect discipline at scale against the real gateway.
//!
//! Starts a simulated WhatsApp (in this process, or a separate `waping-loadtest sim` given by
//! `--sim`) and the gateway binary with N devices on it, waits until the simulator sees all N
//! connected, drops all of them at once, and measures what WhatsApp's side would see: how long
//! until everyone is back, and the most connect attempts in any one-second window. The
//! gateway's node-wide connect gate promises at most `connect_rate + connect_burst` in any
//! second; the scenario fails (non-zero exit) if the simulator ever saw more.
//!
//! With `--idle` it also measures the gateway at rest with every device connected (RSS and
//! CPU over the interval), and `--no-drop` stops there: the session-scale numbers of
//! BENCHMARKS.md come from that.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waping_gateway::upstream::remote::SimControl;
use waping_gateway::upstream::sim::{SimHub, SimStats};

use crate::crash::{Gateway, default_gateway_bin};
use crate::init::{self, InitArgs};
use crate::run::parse_duration;

/// Options of `storm`.
#[derive(Args, Debug)]
pub struct StormArgs {
    /// The gateway binary (default: `waping-gateway` next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Work directory (its state/ is wiped first): gateway.toml, keys.toml, state/, gateway.log.
    #[arg(long, default_value = "loadtest-storm")]
    pub out: PathBuf,
    /// Devices in all (spread evenly over the workspaces).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Workspaces.
    #[arg(long, default_value_t = 10)]
    pub workspaces: usize,
    /// The gateway's node-wide cap, connects per second (`sessions.connect_rate_per_second`).
    #[arg(long, default_value_t = 50)]
    pub connect_rate: u32,
    /// Connects allowed at once (`sessions.connect_burst`).
    #[arg(long, default_value_t = 50)]
    pub connect_burst: u32,
    /// Use the simulator process at this address (`waping-loadtest sim --listen ADDR`) instead
    /// of one in this process.
    #[arg(long)]
    pub sim: Option<SocketAddr>,
    /// How every device is dropped: `events` (the simulator sends a disconnect per device) or
    /// `connections` (it closes the gateway's TCP connection; the gateway notices).
    #[arg(long, value_enum, default_value_t = DropMode::Events)]
    pub drop: DropMode,
    /// Wait this long before the drop with everyone connected, measuring the gateway at rest
    /// (RSS, CPU).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Stop after the idle measurement (no drop).
    #[arg(long)]
    pub no_drop: bool,
    /// Give up when a phase (everyone connected, everyone back) takes longer.
    #[arg(long, default_value = "1800s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the JSON summary here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub sim_args: crate::SimArgs,
}

/// How the storm drops the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropMode {
    /// One `Disconnected` session event per device.
    Events,
    /// Close the gateway's connection to the simulator.
    Connections,
}

/// The gateway at rest.
#[derive(Debug, serde::Serialize)]
struct Idle {
    seconds: f64,
    /// CPU time used over the interval / wall time, percent of one core.
    cpu_percent: f64,
    rss_mib: f64,
    rss_kib_per_device: f64,
}

/// The printed summary.
#[derive(Debug, serde::Serialize)]
struct Summary {
    devices: usize,
    workspaces: usize,
    connect_rate_per_second: u32,
    connect_burst: u32,
    /// The most connects the gate may let through in any one-second window.
    cap_per_second: u32,
    sim: &'static str,
    /// Spawn until the gateway wrote its runtime.json (config parsed, sessions started, listening).
    gateway_start_s: f64,
    /// Spawn until the simulator saw every device connected.
    all_connected_s: f64,
    /// The most connect attempts in one second during the start.
    start_peak_per_second: u32,
    /// Gateway RSS once everyone is connected.
    rss_connected_mib: f64,
    rss_kib_per_device: f64,
    idle: Option<Idle>,
    drop: Option<DropMode>,
    dropped: Option<u64>,
    /// From the drop until the simulator saw every device connected again.
    recovery_s: Option<f64>,
    /// Connect attempts the simulator saw after the drop (N if nobody needed a second try).
    attempts_after_drop: Option<u64>,
    /// The most connect attempts in any one-second window after the drop.
    peak_per_second_after_drop: Option<u32>,
    /// Attempts in each second after the drop (second, count).
    per_second_after_drop: Vec<(u32, u32)>,
    /// The most in any one-second window over the whole run.
    peak_per_second: u32,
    cap_exceeded: bool,
    /// `waping_sessions{phase}`, `waping_session_connects_total{outcome}` and
    /// `waping_connect_gate_waiting` from the gateway's /metrics at the end.
    gateway_metrics: BTreeMap<String, f64>,
    elapsed_s: f64,
}

/// Runs the scenario; fails if the simulator saw more connects in a second than the cap allows.
pub async fn storm(a: StormArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.workspaces == 0 {
        bail!("--devices and --workspaces must be at least 1");
    }
    let bin = match &a.gateway_bin {
        Some(b) => b.clone(),
        None => default_gateway_bin()?,
    };
    if !bin.is_file() {
        bail!("gateway binary {} not found (give --gateway-bin)", bin.display());
    }
    let started = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let out = std::path::absolute(&a.out)?;
    let state = out.join("state");
    let log = out.join("gateway.log");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    if log.exists() {
        std::fs::remove_file(&log)?;
    }

    let (sim_addr, sim_kind) = match a.sim {
        Some(addr) => (addr, "process"),
        None => {
            let hub = SimHub::new(a.sim_args.to_config())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move {
                if let Err(e) = waping_gateway::upstream::remote::serve_hub(listener, hub).await {
                    eprintln!("simulator stopped: {e}");
                }
            });
            (addr, "in-process")
        }
    };
    let mut ctl = SimControl::connect(sim_addr)
        .await
        .with_context(|| format!("simulator at {sim_addr}"))?;
    let before = ctl.stats().await?;
    if before.connected > 0 {
        bail!(
            "the simulator at {sim_addr} already has {} devices connected (another gateway?)",
            before.connected
        );
    }

    let per_ws = a.devices.div_ceil(a.workspaces);
    let (mut cfg, mut keys) = init::build(&InitArgs {
        out: out.clone(),
        workspaces: a.workspaces,
        devices: per_ws,
        rate: 10_000_000,
        burst: 10_000_000,
        device_rate: 0,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
        remote_sim: Some(sim_addr),
    })?;
    // Exactly N devices: the last workspaces give up the rounding.
    let mut extra = per_ws * a.workspaces - a.devices;
    for (w, k) in cfg.workspaces.iter_mut().zip(keys.workspaces.iter_mut()).rev() {
        let cut = extra.min(w.devices.len().saturating_sub(1));
        w.devices.truncate(w.devices.len() - cut);
        k.devices.truncate(k.devices.len() - cut);
        extra -= cut;
    }
    let n: usize = cfg.workspaces.iter().map(|w| w.devices.len()).sum();
    cfg.metrics.enabled = true;
    cfg.server.drain_timeout_ms = 2000;
    cfg.sessions.connect_rate_per_second = a.connect_rate;
    cfg.sessions.connect_burst = a.connect_burst;
    cfg.validate("storm scenario")?;
    let (cfg_path, _) = init::write(&out, &cfg, &keys)?;
    let cap = a.connect_rate.saturating_add(a.connect_burst);
    eprintln!(
        "storm: {n} devices in {} workspaces, cap {} connects/s + burst {}, simulator {sim_kind} at {sim_addr}",
        cfg.workspaces.len(),
        a.connect_rate,
        a.connect_burst
    );

    let t_spawn = Instant::now();
    let gw = Gateway::start(&bin, &cfg_path, &state, &log).await?;
    let gateway_start_s = t_spawn.elapsed().as_secs_f64();
    let pid = gw.child.id();
    let metrics_addr = metrics_addr(&state)?;
    eprintln!("gateway pid {pid} up in {gateway_start_s:.2} s; waiting for {n} devices to connect");

    let s = wait_connected(&mut ctl, n as u64, a.timeout, "start").await?;
    let all_connected_s = t_spawn.elapsed().as_secs_f64();
    let start_peak = s.connects.peak_per_second;
    let rss = rss_kib(pid)?;
    eprintln!(
        "all {n} connected after {all_connected_s:.2} s (peak {start_peak}/s); gateway RSS {:.1} MiB",
        rss as f64 / 1024.0
    );

    let idle = if a.idle.is_zero() {
        None
    } else {
        let ticks0 = cpu_ticks(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(a.idle).await;
        let ticks1 = cpu_ticks(pid)?;
        let secs = t0.elapsed().as_secs_f64();
        let rss = rss_kib(pid)?;
        let idle = Idle {
            seconds: secs,
            cpu_percent: (ticks1 - ticks0) as f64 / clock_ticks_per_second() / secs * 100.0,
            rss_mib: rss as f64 / 1024.0,
            rss_kib_per_device: rss as f64 / n as f64,
        };
        eprintln!(
            "idle {:.0} s: CPU {:.2} % of a core, RSS {:.1} MiB ({:.2} KiB per device)",
            idle.seconds, idle.cpu_percent, idle.rss_mib, idle.rss_kib_per_device
        );
        Some(idle)
    };

    let mut summary = Summary {
        devices: n,
        workspaces: cfg.workspaces.len(),
        connect_rate_per_second: a.connect_rate,
        connect_burst: a.connect_burst,
        cap_per_second: cap,
        sim: sim_kind,
        gateway_start_s,
        all_connected_s,
        start_peak_per_second: start_peak,
        rss_connected_mib: rss as f64 / 1024.0,
        rss_kib_per_device: rss as f64 / n as f64,
        idle,
        drop: None,
        dropped: None,
        recovery_s: None,
        attempts_after_drop: None,
        peak_per_second_after_drop: None,
        per_second_after_drop: Vec::new(),
        peak_per_second: start_peak,
        cap_exceeded: false,
        gateway_metrics: BTreeMap::new(),
        elapsed_s: 0.0,
    };

    if !a.no_drop {
        ctl.mark().await?;
        let t_drop = Instant::now();
        let dropped = match a.drop {
            DropMode::Events => ctl.mass_disconnect("storm: every device dropped at once").await?,
            DropMode::Connections => {
                ctl.close_connections().await?;
                // The simulator forgets a connection's devices once its task has ended.
                let t0 = Instant::now();
                while ctl.stats().await?.connected == n as u64 {
                    if t0.elapsed() > Duration::from_secs(30) {
                        bail!("closing the gateway's simulator connections dropped nobody");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n as u64
            }
        };
        eprintln!(
            "dropped {dropped} devices ({:?}); waiting for all to come back",
            a.drop
        );
        let s = wait_connected(&mut ctl, n as u64, a.timeout, "recovery").await?;
        let recovery = t_drop.elapsed().as_secs_f64();
        eprintln!(
            "all {n} back after {recovery:.2} s; {} connect attempts, peak {}/s (cap {cap})",
            s.connects.attempts_since_mark, s.connects.peak_per_second_since_mark
        );
        summary.drop = Some(a.drop);
        summary.dropped = Some(dropped);
        summary.recovery_s = Some(recovery);
        summary.attempts_after_drop = Some(s.connects.attempts_since_mark);
        summary.peak_per_second_after_drop = Some(s.connects.peak_per_second_since_mark);
        summary.per_second_after_drop = s.connects.per_second_since_mark.clone();
        summary.peak_per_second = s.connects.peak_per_second;
    }
    summary.cap_exceeded = summary.peak_per_second > cap;
    summary.gateway_metrics = match scrape(metrics_addr).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("reading the gateway's metrics failed: {e:#}");
            BTreeMap::new()
        }
    };
    gw.stop().await;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, &text)?;
    }
    if summary.cap_exceeded {
        bail!(
            "the simulator saw {} connects in one second; the cap is {} + {} = {cap}",
            summary.peak_per_second,
            a.connect_rate,
            a.connect_burst
        );
    }
    Ok(())
}

/// Polls the simulator until it sees `n` devices connected; prints progress every 5 s.
async fn wait_connected(
    ctl: &mut SimControl,
    n: u64,
    timeout: Duration,
    phase: &str,
) -> anyhow::Result<SimStats> {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let s = ctl.stats().await?;
        if s.connected >= n {
            return Ok(s);
        }
        if t0.elapsed() > timeout {
            bail!(
                "{phase}: only {} of {n} devices connected after {:?}",
                s.connected,
                timeout
            );
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "  {phase} {:>6.1} s: {}/{n} connected, {} attempts since mark, peak {}/s",
                t0.elapsed().as_secs_f64(),
                s.connected,
                s.connects.attempts_since_mark,
                s.connects.peak_per_second
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metrics_addr(state: &std::path::Path) -> anyhow::Result<SocketAddr> {
    let p = state.join("runtime.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
    let a = v["metrics"]
        .as_str()
        .context("runtime.json has no metrics address")?;
    Ok(a.parse()?)
}

/// The session series of the gateway's Prometheus exposition.
async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body)).await??;
    Ok(session_series(&body))
}

/// Picks `waping_sessions*`, `waping_session_connects_total` and `waping_connect_gate_waiting`
/// samples out of a Prometheus text exposition.
pub fn session_series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("waping_sessions")
                || l.starts_with("waping_session_connects_total")
                || l.starts_with("waping_connect_gate_waiting")
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// User + system CPU time of a process, clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_session_series() {
        let text = "# TYPE waping_sessions gauge\n\
                    waping_sessions{phase=\"connected\"} 10000\n\
                    waping_sessions{phase=\"connecting\"} 0\n\
                    waping_sessions_active 10000\n\
                    waping_session_connects_total{outcome=\"attempted\"} 20000\n\
                    waping_connect_gate_waiting 0\n\
                    waping_received_total 5\n";
        let m = session_series(text);
        assert_eq!(m.len(), 5);
        assert_eq!(m["waping_sessions{phase=\"connected\"}"], 10000.0);
        assert_eq!(m["waping_session_connects_total{outcome=\"attempted\"}"], 20000.0);
        assert!(!m.contains_key("waping_received_total"));
    }

    #[test]
    fn reads_its_own_rss_and_cpu() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let _ = cpu_ticks(pid).unwrap();
    }
}
