//! `waping-loadtest crash`: `kill -9` the real gateway under load, many times, and check
//! exactly-once delivery against the simulated WhatsApp's ledger.
//!
//! The simulator runs in this process (the gateway uses `upstream.kind = "sim-remote"`), so
//! it outlives every crash and appends one ledger line per delivery. Each message's text is
//! its idempotency key, so the ledger says which message every delivery was.
//!
//! `--rounds N` rounds each send `--per-round` new keys plus every key not yet acknowledged,
//! pipelined on `--connections` connections (a key always goes to the same connection and
//! workspace), and `kill -9` the gateway after a random delay; the gateway is restarted on
//! the same state directory. A final round without a kill resends what is still
//! unacknowledged until everything is. Then every acknowledged key must be in the ledger
//! exactly once, under the id it was acknowledged with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use waping_client::{Connection, Trust};
use waping_gateway::retry::CodeOverride;
use waping_gateway::upstream::sim::Deliveries;
use waping_protocol::{Body, Frame, Text};

use crate::init::{self, InitArgs};
use crate::run::parse_duration;
use crate::stats::code_name;
use crate::target::gateway::{client_config, runtime_info};

/// Options of `crash`.
#[derive(Args, Debug)]
pub struct CrashArgs {
    /// The gateway binary (default: `waping-gateway` next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Work directory (its state/ and ledger are wiped first): gateway.toml, keys.toml,
    /// state/, ledger.tsv (the simulator's deliveries), gateway.log.
    #[arg(long, default_value = "loadtest-crash")]
    pub out: PathBuf,
    /// Rounds that end in a `kill -9` (a final round without a kill follows).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// New messages per round.
    #[arg(long, default_value_t = 20_000)]
    pub per_round: usize,
    /// Connections the keys are split across (one workspace each).
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,
    /// Random delay between the start of a round's sending and the kill, `MIN..MAX` ms.
    #[arg(long, default_value = "20..500", value_parser = parse_range)]
    pub kill_after_ms: (u64, u64),
    /// Seed of the kill delays and the simulator (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long to wait at the end for the ledger to hold every acknowledged message.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Write the JSON summary here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub sim: crate::SimArgs,
}

/// Parses `MIN..MAX` (inclusive) or a single number.
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("bad number in {s:?}"))
    };
    let (lo, hi) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi {
        return Err(format!("empty range {s:?}"));
    }
    Ok((lo, hi))
}

/// Delivered text (= idempotency key) → upstream ids it was delivered under, one per
/// delivery. A last line without its newline (still being written) is left out.
pub fn parse_ledger(text: &str) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (n, line) in complete.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            bail!("ledger line {}: {line:?}", n + 1);
        }
        m.entry(f[4].to_string()).or_default().push(f[0].to_string());
    }
    Ok(m)
}

/// What the ledger says about the acknowledged messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Acknowledged, never delivered.
    pub lost: u64,
    /// Keys delivered more than once (acknowledged or not).
    pub delivered_twice: u64,
    /// Acknowledged keys delivered under another id than the acknowledged one.
    pub wrong_id: u64,
}

/// Compares the ledger (key → delivered ids) with the acknowledged ids (key → id).
pub fn compare(ledger: &HashMap<String, Vec<String>>, acked: &HashMap<String, String>) -> Verdict {
    let mut v = Verdict {
        delivered_twice: ledger.values().filter(|ids| ids.len() > 1).count() as u64,
        ..Verdict::default()
    };
    for (key, id) in acked {
        match ledger.get(key) {
            None => v.lost += 1,
            Some(ids) if ids.iter().any(|d| d != id) => v.wrong_id += 1,
            Some(_) => {}
        }
    }
    v
}

/// One round's record.
#[derive(Debug, serde::Serialize)]
struct Round {
    round: usize,
    new: usize,
    resent: usize,
    acknowledged: usize,
    kill_after_ms: Option<u64>,
    refused: BTreeMap<String, u64>,
    /// Sending and the kill.
    elapsed_s: f64,
    /// Restarting the gateway afterwards (journal replay), until its runtime.json appeared.
    restart_s: Option<f64>,
}

/// The printed summary.
#[derive(Debug, serde::Serialize)]
struct Summary {
    seed: u64,
    rounds: usize,
    kills: usize,
    messages: u64,
    acknowledged: u64,
    unacknowledged: u64,
    delivered_distinct: u64,
    resends_answered_already_sent: u64,
    lost: u64,
    delivered_twice: u64,
    wrong_id: u64,
    id_changes: u64,
    ledger_lines: u64,
    /// Time spent restarting the gateway, all rounds.
    restart_s: f64,
    /// Waiting at the end for the ledger to hold every acknowledged message.
    settle_s: f64,
    elapsed_s: f64,
    per_round: Vec<Round>,
}

/// The gateway process; killed when dropped.
pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) trust: Trust,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `bin run --config cfg` (stderr appended to `log`) and waits for the runtime.json
    /// it writes into `state` (a stale one, from a killed gateway, is removed first).
    pub(crate) async fn start(bin: &Path, cfg: &Path, state: &Path, log: &Path) -> anyhow::Result<Gateway> {
        let _ = std::fs::remove_file(state.join("runtime.json"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut gw = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust: Trust::parse_pin(&format!("sha256:{}", "0".repeat(64)))?,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok((addr, pin)) = runtime_info(state) {
                gw.addr = addr;
                gw.trust = Trust::parse_pin(&pin)?;
                return Ok(gw);
            }
            if let Some(st) = gw.child.try_wait()? {
                bail!("gateway exited during start: {st} (see its log)");
            }
            if Instant::now() > deadline {
                bail!("gateway wrote no runtime.json within 600 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 20 s.
    pub(crate) async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9();
    }
}

/// What one connection got back.
#[derive(Default)]
struct Outcome {
    /// (index into the keys sent, acknowledged id).
    acks: Vec<(usize, String)>,
    retryable: BTreeMap<String, u64>,
    permanent: BTreeMap<String, u64>,
}

fn key_name(n: u64) -> String {
    format!("crash-{n}")
}

/// Sends `keys` pipelined on one connection and collects the answers until all are answered,
/// the connection dies, no answer comes for 30 s, or `stop` turns true.
async fn send_keys(
    cfg: waping_client::ClientConfig,
    devices: Arc<Vec<Text>>,
    keys: Vec<u64>,
    mut stop: watch::Receiver<bool>,
) -> (Vec<u64>, Outcome) {
    let mut out = Outcome::default();
    let work = async {
        let mut conn = Connection::connect(&cfg).await.ok()?;
        let (mut w, mut r) = conn.take_control()?.split();
        let writer = async {
            for (i, &k) in keys.iter().enumerate() {
                let key = Text::from(key_name(k));
                let f = Frame::Send {
                    seq: i as u64 + 1,
                    idempotency_key: key.clone(),
                    device_id: devices[k as usize % devices.len()].clone(),
                    recipient: Text::from("4915112345678"),
                    body: Body::Text(key),
                };
                w.queue(&f).ok()?;
                if i % 256 == 255 {
                    w.flush().await.ok()?;
                }
            }
            w.flush().await.ok()
        };
        let reader = async {
            let mut answered = 0;
            while answered < keys.len() {
                let f = match tokio::time::timeout(Duration::from_secs(30), r.next()).await {
                    Ok(Ok(Some(f))) => f,
                    _ => break,
                };
                match f {
                    Frame::Accepted { seq, message_id } => {
                        answered += 1;
                        out.acks.push((seq as usize - 1, message_id.to_string()));
                    }
                    Frame::Rejected { code, .. } => {
                        answered += 1;
                        let m = if code.retryable() {
                            &mut out.retryable
                        } else {
                            &mut out.permanent
                        };
                        *m.entry(code_name(code.0)).or_default() += 1;
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::join!(writer, reader);
        drop((w, r));
        Some(conn)
    };
    let conn = tokio::select! {
        conn = work => conn,
        _ = stop.wait_for(|s| *s) => None,
    };
    if let Some(c) = conn {
        c.close().await;
    }
    (keys, out)
}

/// Defaults to `waping-gateway` in the directory of the running executable.
pub(crate) fn default_gateway_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .join("waping-gateway"))
}

/// Runs the scenario and prints the summary; fails if anything was lost, delivered twice,
/// delivered under another id, or acknowledged under two ids.
pub async fn crash(a: CrashArgs) -> anyhow::Result<()> {
    if a.rounds == 0 || a.per_round == 0 || a.connections == 0 {
        bail!("--rounds, --per-round and --connections must be at least 1");
    }
    if a.sim.failure_rate > 0.0 {
        bail!("--sim-failure-rate makes messages fail for good, which this scenario would count as lost");
    }
    let bin = match &a.gateway_bin {
        Some(b) => b.clone(),
        None => default_gateway_bin()?,
    };
    if !bin.is_file() {
        bail!("gateway binary {} not found (give --gateway-bin)", bin.display());
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    eprintln!("crash scenario seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // Fresh work directory.
    std::fs::create_dir_all(&a.out)?;
    let out = std::path::absolute(&a.out)?;
    let state = out.join("state");
    let ledger_path = out.join("ledger.tsv");
    let log = out.join("gateway.log");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    for f in [&ledger_path, &log] {
        if f.exists() {
            std::fs::remove_file(f)?;
        }
    }

    // The simulated WhatsApp, in this process so it outlives the crashes.
    let total = (a.rounds * a.per_round) as u64;
    let mut sim = a.sim.to_config();
    sim.seed = seed;
    sim.dedup_capacity = u32::try_from((4 * total).max(1_000_000)).unwrap_or(u32::MAX);
    let deliveries = Arc::new(Deliveries::new(sim.dedup_capacity, Some(&ledger_path))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = listener.local_addr()?;
    {
        let deliveries = deliveries.clone();
        tokio::spawn(async move {
            if let Err(e) = waping_gateway::upstream::remote::serve_with(listener, sim, deliveries).await {
                eprintln!("simulator stopped: {e}");
            }
        });
    }

    // Gateway config and keys, as `init` writes them, with fast retries.
    let (mut cfg, keys) = init::build(&InitArgs {
        out: out.clone(),
        workspaces: a.connections,
        devices: 8,
        rate: 10_000_000,
        burst: 10_000_000,
        device_rate: 0,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
        remote_sim: Some(sim_addr),
    })?;
    cfg.metrics.enabled = false;
    cfg.server.drain_timeout_ms = 2000;
    cfg.limits.device_queue = 100_000;
    cfg.upstream.send_timeout_ms = 2000;
    cfg.retry.base_delay_ms = 5;
    cfg.retry.max_delay_ms = 50;
    // Every restart re-dispatches unfinished messages; never let that exhaust one.
    cfg.retry.max_attempts = 10_000;
    cfg.retry.codes.insert(
        "UPSTREAM_TIMEOUT".into(),
        CodeOverride {
            base_delay_ms: Some(5),
            max_delay_ms: Some(50),
            ..CodeOverride::default()
        },
    );
    cfg.validate("crash scenario")?;
    let (cfg_path, _) = init::write(&out, &cfg, &keys)?;
    let ws: Vec<(String, Arc<Vec<Text>>)> = keys
        .workspaces
        .iter()
        .map(|w| {
            let d = w.devices.iter().map(|d| Text::from(d.as_str())).collect();
            (w.key.clone(), Arc::new(d))
        })
        .collect();

    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut id_changes = 0u64;
    let mut unacked: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut rounds = Vec::new();
    let mut gw = Gateway::start(&bin, &cfg_path, &state, &log).await?;
    for round in 0..=a.rounds {
        let t0 = Instant::now();
        let last = round == a.rounds;
        let mut pending = std::mem::take(&mut unacked);
        let resent = pending.len();
        let new = if last { 0 } else { a.per_round };
        pending.extend((0..new as u64).map(|i| next + i));
        next += new as u64;
        let kill_after = (!last).then(|| rng.random_range(a.kill_after_ms.0..=a.kill_after_ms.1));
        let before = acked.len();
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        // The final round resends until everything is acknowledged (refusals that a
        // retry cures, e.g. OVERLOADED, are retried).
        let mut pass = 0;
        loop {
            pass += 1;
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut per_conn: Vec<Vec<u64>> = vec![Vec::new(); a.connections];
            for &k in &pending {
                per_conn[k as usize % a.connections].push(k);
            }
            let tasks: Vec<_> = per_conn
                .into_iter()
                .enumerate()
                .filter(|(_, ks)| !ks.is_empty())
                .map(|(c, ks)| {
                    let ccfg = client_config(gw.addr, &gw.trust, &ws[c].0, c);
                    tokio::spawn(send_keys(ccfg, ws[c].1.clone(), ks, stop_rx.clone()))
                })
                .collect();
            if let Some(ms) = kill_after {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                gw.kill9();
                // Answers already on their way are read; then the connections are dropped.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = stop_tx.send(true);
            }
            let mut still = Vec::new();
            for t in tasks {
                let (ks, o) = t.await.context("sender task")?;
                let mut got = vec![false; ks.len()];
                for (i, id) in o.acks {
                    got[i] = true;
                    let prev = acked.entry(ks[i]).or_insert_with(|| id.clone());
                    if *prev != id {
                        id_changes += 1;
                        eprintln!("{} acknowledged as {prev} and as {id}", key_name(ks[i]));
                    }
                }
                for (code, n) in o
                    .retryable
                    .into_iter()
                    .chain(o.permanent.iter().map(|(c, n)| (c.clone(), *n)))
                {
                    *refused.entry(code).or_default() += n;
                }
                if !o.permanent.is_empty() {
                    bail!("round {round}: refusals no retry cures: {:?}", o.permanent);
                }
                still.extend(ks.into_iter().zip(got).filter(|(_, g)| !g).map(|(k, _)| k));
            }
            pending = still;
            if !last || pending.is_empty() || pass >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unacked = pending;
        let elapsed_s = t0.elapsed().as_secs_f64();
        let restart_s = if last {
            None
        } else {
            let t1 = Instant::now();
            gw = Gateway::start(&bin, &cfg_path, &state, &log).await?;
            Some(t1.elapsed().as_secs_f64())
        };
        let r = Round {
            round: round + 1,
            new,
            resent,
            acknowledged: acked.len() - before,
            kill_after_ms: kill_after,
            refused,
            elapsed_s,
            restart_s,
        };
        eprintln!(
            "round {}: {} new, {} resent, {} acknowledged{}, {} left; {} acknowledged in all ({:.1} s{})",
            r.round,
            r.new,
            r.resent,
            r.acknowledged,
            kill_after.map_or(String::new(), |ms| format!(", killed after {ms} ms")),
            unacked.len(),
            acked.len(),
            r.elapsed_s,
            restart_s.map_or(String::new(), |s| format!(", restart {s:.1} s")),
        );
        rounds.push(r);
    }

    // Wait for every acknowledged message to reach the ledger.
    let acked: HashMap<String, String> = acked.into_iter().map(|(k, id)| (key_name(k), id)).collect();
    let settle_start = Instant::now();
    let deadline = settle_start + a.settle;
    let ledger = loop {
        let done = deliveries.stats().delivered >= acked.len() as u64;
        if done || Instant::now() > deadline {
            let l = parse_ledger(&std::fs::read_to_string(&ledger_path).unwrap_or_default())?;
            if acked.keys().all(|k| l.contains_key(k)) || Instant::now() > deadline {
                break l;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settle_s = settle_start.elapsed().as_secs_f64();
    gw.stop().await;
    let v = compare(&ledger, &acked);
    let st = deliveries.stats();
    let summary = Summary {
        seed,
        rounds: a.rounds,
        kills: a.rounds,
        messages: next,
        acknowledged: acked.len() as u64,
        unacknowledged: unacked.len() as u64,
        delivered_distinct: st.delivered,
        resends_answered_already_sent: st.repeats,
        lost: v.lost,
        delivered_twice: v.delivered_twice,
        wrong_id: v.wrong_id,
        id_changes,
        ledger_lines: ledger.values().map(|ids| ids.len() as u64).sum(),
        restart_s: rounds.iter().filter_map(|r| r.restart_s).sum(),
        settle_s,
        elapsed_s: started.elapsed().as_secs_f64(),
        per_round: rounds,
    };
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(p) = &a.json {
        std::fs::write(p, &json)?;
    }
    eprintln!(
        "crash: {} kills, {} messages, {} acknowledged, {} delivered; lost {}, delivered twice {}, \
         wrong id {}, id changes {}, unacknowledged {} ({:.0} s)",
        summary.kills,
        summary.messages,
        summary.acknowledged,
        summary.delivered_distinct,
        summary.lost,
        summary.delivered_twice,
        summary.wrong_id,
        summary.id_changes,
        summary.unacknowledged,
        summary.elapsed_s
    );
    if summary.lost + summary.delivered_twice + summary.wrong_id + summary.id_changes + summary.unacknowledged
        > 0
    {
        bail!(
            "exactly-once violated (see the counts above; gateway log: {})",
            log.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{Verdict, compare, parse_ledger, parse_range};

    #[test]
    fn kill_delays_parse_as_inclusive_ranges() {
        assert_eq!(parse_range("20..500"), Ok((20, 500)));
        assert_eq!(parse_range("20..=500"), Ok((20, 500)));
        assert_eq!(parse_range(" 7 "), Ok((7, 7)));
        assert!(parse_range("500..20").is_err());
        assert!(parse_range("a..b").is_err());
        assert!(parse_range("").is_err());
    }

    #[test]
    fn ledger_comparison_counts_lost_twice_and_wrong_ids() {
        let text = "id1\tw\td\tr\tk1\nid2\tw\td\tr\tk2\nid2\tw\td\tr\tk2\nidX\tw\td\tr\tk3\n\
                    id9\tw\td\tr\tunacked\nid5\tw\td\tr\tk5\nid4\tw\td";
        let l = parse_ledger(text).unwrap_or_else(|e| panic!("{e}"));
        // The unfinished last line is not read.
        assert_eq!(l.len(), 5);
        assert_eq!(l["k2"], vec!["id2".to_string(), "id2".to_string()]);
        let acked: HashMap<String, String> = [
            ("k1", "id1"),
            ("k2", "id2"),
            ("k3", "id3"),
            ("k4", "id4"),
            ("k5", "id5"),
        ]
        .into_iter()
        .map(|(k, i)| (k.to_string(), i.to_string()))
        .collect();
        assert_eq!(
            compare(&l, &acked),
            Verdict {
                lost: 1,
                delivered_twice: 1,
                wrong_id: 1
            }
        );
        let clean: HashMap<String, String> = [("k1", "id1"), ("k5", "id5")]
            .into_iter()
            .map(|(k, i)| (k.to_string(), i.to_string()))
            .collect();
        let only: HashMap<String, Vec<String>> =
            l.into_iter().filter(|(k, _)| clean.contains_key(k)).collect();
        assert_eq!(compare(&only, &clean), Verdict::default());
        assert!(parse_ledger("a\tb\n").is_err());
    }
}
