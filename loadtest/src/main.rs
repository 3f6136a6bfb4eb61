//! `waping-loadtest`: simulated clients and a simulated WhatsApp side for the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod crash;
mod init;
mod run;
mod stats;
mod storm;
mod target;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "waping-loadtest", version, about = "Load harness for waping-gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a gateway config with fresh keys for M workspaces × K devices, and the harness's key file.
    Init(init::InitArgs),
    /// Drive load against a running gateway (or, with `--target jetstream`, a NATS JetStream
    /// baseline) and report throughput and latency.
    Run(Box<run::RunArgs>),
    /// Crash test at scale: start the gateway, load it, `kill -9` it at random moments, restart,
    /// resend, and check against the simulator's ledger that no acknowledged message was lost or
    /// delivered twice.
    Crash(Box<crash::CrashArgs>),
    /// Reconnect storm: start the gateway with many simulated devices, drop them all at once,
    /// and check that the simulated WhatsApp never saw more connects per second than the
    /// gateway's cap (non-zero exit if it did); `--idle` also measures the gateway at rest.
    Storm(Box<storm::StormArgs>),
    /// Run the simulated WhatsApp side as its own process (gateway `upstream.kind = "sim-remote"`).
    Sim {
        /// TCP address to listen on.
        #[arg(long, default_value = "127.0.0.1:7401")]
        listen: SocketAddr,
        #[command(flatten)]
        sim: SimArgs,
    },
}

/// Simulated WhatsApp behaviour (see `[upstream.sim]` in the gateway config).
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Fixed latency per send, ms.
    #[arg(long = "sim-latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra random latency 0..=jitter, ms.
    #[arg(long = "sim-jitter-ms", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability a send fails.
    #[arg(long = "sim-failure-rate", default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Sends per second per device tolerated before "rate-overlimit" (0 = unlimited).
    #[arg(long = "sim-device-rate", default_value_t = 0)]
    pub device_rate: u32,
    /// Inbound messages per device per second.
    #[arg(long = "sim-inbound-rate", default_value_t = 0.0)]
    pub inbound_rate: f64,
    /// Probability a send fails with a retryable error.
    #[arg(long = "sim-transient-failure-rate", default_value_t = 0.0)]
    pub transient_failure_rate: f64,
    /// Probability a send is delivered but its answer is lost (the gateway times out and resends).
    #[arg(long = "sim-lost-answer-rate", default_value_t = 0.0)]
    pub lost_answer_rate: f64,
    /// Seed of every random draw of the simulator (per device), so runs reproduce.
    #[arg(long = "sim-seed", default_value_t = 1)]
    pub sim_seed: u64,
    /// Log-normal latency: `--sim-latency-ms` becomes the median, this the sigma (0 = fixed).
    #[arg(long = "sim-lognormal-sigma", default_value_t = 0.0)]
    pub lognormal_sigma: f64,
    /// Probability that an answer is slow.
    #[arg(long = "sim-slow-ack-rate", default_value_t = 0.0)]
    pub slow_ack_rate: f64,
    /// Extra latency of a slow answer, ms.
    #[arg(long = "sim-slow-ack-ms", default_value_t = 5000)]
    pub slow_ack_ms: u64,
    /// Probability of a random 429 rate-overlimit.
    #[arg(long = "sim-throttle-rate", default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Retry hint of those 429s, ms.
    #[arg(long = "sim-throttle-retry-ms", default_value_t = 30_000)]
    pub throttle_retry_ms: u64,
    /// Mean time between drops of one connected device, s (0 = never).
    #[arg(long = "sim-disconnect-mean-s", default_value_t = 0.0)]
    pub disconnect_mean_s: f64,
    /// Mean time until a connected device is logged out, s (0 = never).
    #[arg(long = "sim-logout-mean-s", default_value_t = 0.0)]
    pub logout_mean_s: f64,
    /// Mean time until a connected device is banned, s (0 = never).
    #[arg(long = "sim-ban-mean-s", default_value_t = 0.0)]
    pub ban_mean_s: f64,
    /// Length of a ban, s (0 = permanent).
    #[arg(long = "sim-ban-duration-s", default_value_t = 3600)]
    pub ban_duration_s: u64,
    /// Probability that a delivered send is answered twice and its receipts arrive twice.
    #[arg(long = "sim-duplicate-ack-rate", default_value_t = 0.0)]
    pub duplicate_ack_rate: f64,
    /// DELIVERED receipt this long after a delivered send's answer, ms (0 = no receipts).
    #[arg(long = "sim-receipt-delivered-ms", default_value_t = 0)]
    pub receipt_delivered_ms: u64,
    /// Probability of a READ receipt after the DELIVERED one.
    #[arg(long = "sim-receipt-read-rate", default_value_t = 0.0)]
    pub receipt_read_rate: f64,
    /// Delay of the READ receipt after the DELIVERED one, ms.
    #[arg(long = "sim-receipt-read-ms", default_value_t = 5000)]
    pub receipt_read_ms: u64,
}

impl SimArgs {
    /// As the gateway's config type.
    pub fn to_config(&self) -> waping_gateway::config::SimConfig {
        waping_gateway::config::SimConfig {
            latency_ms: self.latency_ms,
            latency_jitter_ms: self.jitter_ms,
            failure_rate: self.failure_rate,
            device_rate_per_second: self.device_rate,
            inbound_per_second: self.inbound_rate,
            transient_failure_rate: self.transient_failure_rate,
            lost_answer_rate: self.lost_answer_rate,
            seed: self.sim_seed,
            latency_lognormal_sigma: self.lognormal_sigma,
            slow_ack_rate: self.slow_ack_rate,
            slow_ack_ms: self.slow_ack_ms,
            throttle_rate: self.throttle_rate,
            throttle_retry_ms: self.throttle_retry_ms,
            disconnect_mean_s: self.disconnect_mean_s,
            logout_mean_s: self.logout_mean_s,
            ban_mean_s: self.ban_mean_s,
            ban_duration_s: self.ban_duration_s,
            duplicate_ack_rate: self.duplicate_ack_rate,
            receipt_delivered_ms: self.receipt_delivered_ms,
            receipt_read_rate: self.receipt_read_rate,
            receipt_read_ms: self.receipt_read_ms,
            // Dedup capacity, the ledger and linking keep their defaults here.
            ..Default::default()
        }
    }
}

/// Starts the simulator server on `listen` in this process.
pub async fn spawn_sim(listen: SocketAddr, sim: &SimArgs) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let cfg = sim.to_config();
    tokio::spawn(async move {
        if let Err(e) = waping_gateway::upstream::remote::serve(listener, cfg).await {
            eprintln!("simulator stopped: {e}");
        }
    });
    Ok(addr)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Init(a) => init::init(&a),
            Cmd::Run(a) => run::run(*a).await,
            Cmd::Crash(a) => crash::crash(*a).await,
            Cmd::Storm(a) => storm::storm(*a).await,
            Cmd::Sim { listen, sim } => {
                let addr = spawn_sim(listen, &sim).await?;
                eprintln!("simulated WhatsApp listening on tcp {addr}; Ctrl-C to stop");
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Key file shared by `init` and `run`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct KeyFile {
    /// One entry per workspace.
    pub workspaces: Vec<KeyEntry>,
}

/// A workspace's key and devices, as the harness sees them.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct KeyEntry {
    /// Workspace id.
    pub id: String,
    /// Full API key (the harness is the client; the gateway keeps only the hash).
    pub key: String,
    /// Device ids.
    pub devices: Vec<String>,
}

/// Reads a key file.
pub fn read_keys(path: &PathBuf) -> anyhow::Result<KeyFile> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(toml::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use clap::Parser;
    use waping_protocol::{Body, Frame, Text};

    use super::{Cli, Cmd};
    use crate::run::{RunArgs, TargetKind};
    use crate::target::jetstream::publish_for;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["waping-loadtest", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map(|c| c.cmd) {
            Ok(Cmd::Run(a)) => *a,
            other => panic!("expected run arguments, got {other:?}"),
        }
    }

    #[test]
    fn run_defaults_to_the_gateway_target() {
        let a = run_args(&[]);
        assert_eq!(a.target, TargetKind::Gateway);
        assert_eq!(a.body_size, 200);
        assert_eq!(a.connections, 4);
        assert_eq!(a.closed_loop, None);
        assert_eq!(a.js.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(a.js.js_stream, "WAPING_LT");
        assert_eq!(a.js.subjects(), "waping.lt.>");
        assert!(!a.js.js_recreate);
        assert!(!a.js.js_delete_after);
        assert_eq!(a.js.js_max_bytes, 1 << 30);
        assert_eq!(a.js.js_dedup_window, Duration::from_secs(120));
    }

    #[test]
    fn run_parses_the_jetstream_flags() {
        let a = run_args(&[
            "--target",
            "jetstream",
            "--nats-url",
            "nats://127.0.0.1:4223",
            "--js-stream",
            "BENCH",
            "--js-subject-prefix",
            "bench.x",
            "--js-recreate",
            "--js-delete-after",
            "--js-max-bytes",
            "2048",
            "--js-dedup-window",
            "30s",
            "--closed-loop",
            "64",
            "-c",
            "2",
            "--body-bytes",
            "512",
            "--duration",
            "500ms",
        ]);
        assert_eq!(a.target, TargetKind::Jetstream);
        assert_eq!(a.js.nats_url, "nats://127.0.0.1:4223");
        assert_eq!(a.js.js_stream, "BENCH");
        assert!(a.js.js_recreate);
        assert!(a.js.js_delete_after);
        assert_eq!(a.js.js_max_bytes, 2048);
        assert_eq!(a.js.js_dedup_window, Duration::from_secs(30));
        assert_eq!(a.closed_loop, Some(64));
        assert_eq!(a.connections, 2);
        assert_eq!(a.body_size, 512);
        assert_eq!(a.duration, Duration::from_millis(500));
        // `--body-size` still works and means the same.
        assert_eq!(run_args(&["--body-size", "7"]).body_size, 7);
        let streams = a.js.streams(&["lt-0", "lt-1"]);
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].name, "BENCH");
        let cfg = a.js.stream_config(&streams[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.name, "BENCH");
        assert_eq!(cfg.subjects, vec!["bench.x.>".to_string()]);
        assert_eq!(a.js.subject("lt-1", "dev-2"), "bench.x.lt-1.dev-2");
        assert_eq!(cfg.storage, async_nats::jetstream::stream::StorageType::File);
        assert_eq!(cfg.discard, async_nats::jetstream::stream::DiscardPolicy::Old);
        assert_eq!(cfg.max_bytes, 2048);
    }

    #[test]
    fn jetstream_streams_per_workspace() {
        let a = run_args(&["--target", "jetstream", "--js-stream-per-workspace"]);
        assert!(a.js.js_stream_per_workspace);
        let streams = a.js.streams(&["lt-0", "lt.1"]);
        let got: Vec<(&str, &str)> = streams
            .iter()
            .map(|s| (s.name.as_str(), s.subjects.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("WAPING_LT_lt-0", "waping.lt.lt-0.>"),
                ("WAPING_LT_lt_1", "waping.lt.lt_1.>")
            ]
        );
        // Every device subject falls in its workspace's stream.
        assert_eq!(a.js.subject("lt.1", "dev-0"), "waping.lt.lt_1.dev-0");
        for s in &streams {
            let cfg = a.js.stream_config(s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg.subjects, vec![s.subjects.clone()]);
        }
        // Recreating clears both layouts, which would overlap.
        assert_eq!(
            a.js.recreate_names(&["lt-0"]),
            vec!["WAPING_LT".to_string(), "WAPING_LT_lt-0".to_string()]
        );
        let bad = run_args(&["--target", "jetstream", "--js-stream", "A.B"]);
        assert!(bad.js.stream_config(&bad.js.streams(&["w"])[0]).is_err());
    }

    #[test]
    fn crash_parses_its_flags() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["waping-loadtest", "crash"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.cmd) {
                Ok(Cmd::Crash(a)) => *a,
                other => panic!("expected crash arguments, got {other:?}"),
            }
        };
        let d = parse(&[]);
        assert_eq!(d.gateway_bin, None);
        assert_eq!(d.rounds, 10);
        assert_eq!(d.per_round, 20_000);
        assert_eq!(d.connections, 4);
        assert_eq!(d.kill_after_ms, (20, 500));
        assert_eq!(d.seed, None);
        assert_eq!(d.settle, Duration::from_secs(120));
        let a = parse(&[
            "--gateway-bin",
            "/x/gw",
            "--out",
            "/tmp/c",
            "--rounds",
            "3",
            "--per-round",
            "7",
            "-c",
            "2",
            "--kill-after-ms",
            "5..9",
            "--seed",
            "42",
            "--sim-latency-ms",
            "1",
            "--sim-jitter-ms",
            "20",
            "--sim-lost-answer-rate",
            "0.02",
            "--json",
            "/tmp/c.json",
        ]);
        assert_eq!(a.gateway_bin.as_deref(), Some(std::path::Path::new("/x/gw")));
        assert_eq!(a.out, std::path::PathBuf::from("/tmp/c"));
        assert_eq!((a.rounds, a.per_round, a.connections), (3, 7, 2));
        assert_eq!(a.kill_after_ms, (5, 9));
        assert_eq!(a.seed, Some(42));
        let sim = a.sim.to_config();
        assert_eq!((sim.latency_ms, sim.latency_jitter_ms), (1, 20));
        assert!((sim.lost_answer_rate - 0.02).abs() < 1e-12);
        assert!(Cli::try_parse_from(["waping-loadtest", "crash", "--kill-after-ms", "9..5"]).is_err());
    }

    #[test]
    fn sim_flags_default_to_the_config_defaults_and_all_map() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["waping-loadtest", "sim"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.cmd) {
                Ok(Cmd::Sim { sim, .. }) => sim.to_config(),
                other => panic!("expected sim arguments, got {other:?}"),
            }
        };
        assert_eq!(parse(&[]), waping_gateway::config::SimConfig::default());
        let c = parse(&[
            "--sim-seed",
            "9",
            "--sim-lognormal-sigma",
            "0.5",
            "--sim-slow-ack-rate",
            "0.1",
            "--sim-slow-ack-ms",
            "700",
            "--sim-throttle-rate",
            "0.2",
            "--sim-throttle-retry-ms",
            "800",
            "--sim-disconnect-mean-s",
            "60",
            "--sim-logout-mean-s",
            "3600",
            "--sim-ban-mean-s",
            "7200",
            "--sim-ban-duration-s",
            "0",
            "--sim-duplicate-ack-rate",
            "0.3",
            "--sim-receipt-delivered-ms",
            "200",
            "--sim-receipt-read-rate",
            "0.4",
            "--sim-receipt-read-ms",
            "900",
        ]);
        assert_eq!(c.seed, 9);
        assert_eq!(
            (c.slow_ack_ms, c.throttle_retry_ms, c.ban_duration_s),
            (700, 800, 0)
        );
        assert_eq!((c.receipt_delivered_ms, c.receipt_read_ms), (200, 900));
        for (got, want) in [
            (c.latency_lognormal_sigma, 0.5),
            (c.slow_ack_rate, 0.1),
            (c.throttle_rate, 0.2),
            (c.disconnect_mean_s, 60.0),
            (c.logout_mean_s, 3600.0),
            (c.ban_mean_s, 7200.0),
            (c.duplicate_ack_rate, 0.3),
            (c.receipt_read_rate, 0.4),
        ] {
            assert!((got - want).abs() < 1e-12, "{got} != {want}");
        }
        let mut errors = Vec::new();
        c.validate_faults(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn storm_parses_its_flags() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["waping-loadtest", "storm"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.cmd) {
                Ok(Cmd::Storm(a)) => *a,
                other => panic!("expected storm arguments, got {other:?}"),
            }
        };
        let d = parse(&[]);
        assert_eq!(
            (d.devices, d.workspaces, d.connect_rate, d.connect_burst),
            (10_000, 10, 50, 50)
        );
        assert_eq!(d.drop, crate::storm::DropMode::Events);
        assert!(d.sim.is_none() && !d.no_drop && d.idle.is_zero());
        let a = parse(&[
            "--devices",
            "200",
            "--connect-rate",
            "100",
            "--connect-burst",
            "20",
            "--drop",
            "connections",
            "--sim",
            "127.0.0.1:7999",
            "--idle",
            "30s",
            "--no-drop",
        ]);
        assert_eq!((a.devices, a.connect_rate, a.connect_burst), (200, 100, 20));
        assert_eq!(a.drop, crate::storm::DropMode::Connections);
        assert_eq!(a.sim, Some("127.0.0.1:7999".parse().unwrap()));
        assert_eq!(a.idle, Duration::from_secs(30));
        assert!(a.no_drop);
    }

    #[test]
    fn run_rejects_an_unknown_target() {
        let r = Cli::try_parse_from(["waping-loadtest", "run", "--target", "kafka"]);
        assert!(r.is_err());
    }

    fn send(key: &str, device: &str, body_bytes: usize) -> Frame {
        Frame::Send {
            seq: 123_456_789,
            idempotency_key: Text::from(key),
            device_id: Text::from(device),
            recipient: Text::from("4915110000042"),
            body: Body::Text(Text::from("x".repeat(body_bytes))),
        }
    }

    #[test]
    fn jetstream_payload_is_the_gateway_send_frame() {
        let mut buf = BytesMut::new();
        for body_bytes in [0, 1, 200, 4096] {
            let frame = send("0badcafe-3-0-1234567", "dev-5", body_bytes);
            // What the gateway path writes for this message (FrameWriter::queue encodes it so).
            let mut wire = BytesMut::new();
            waping_protocol::encode(&frame, &mut wire).unwrap_or_else(|e| panic!("{e}"));
            let (seq, payload, msg_id) = publish_for(&frame, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seq, 123_456_789);
            assert_eq!(msg_id, "0badcafe-3-0-1234567");
            assert_eq!(payload.len(), wire.len(), "body {body_bytes}");
            assert_eq!(&payload[..], &wire[..]);
            // Frame header 6, seq 8, three 1-byte-length strings, body type 1 + length 4 + text.
            let expected = 6 + 8 + (1 + 20) + (1 + 5) + (1 + 13) + 1 + 4 + body_bytes;
            assert_eq!(payload.len(), expected, "body {body_bytes}");
        }
        assert!(publish_for(&Frame::Ping { nonce: 1 }, &mut buf).is_err());
    }

    #[test]
    fn jetstream_subjects_are_single_tokens() {
        let a = run_args(&["--target", "jetstream"]);
        assert_eq!(a.js.subject("lt-0", "dev-3"), "waping.lt.lt-0.dev-3");
        assert_eq!(a.js.subject("a.b", "c d*>"), "waping.lt.a_b.c_d__");
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            let a = run_args(&["--target", "jetstream", "--js-subject-prefix", bad]);
            let spec = &a.js.streams(&["lt-0"])[0];
            assert!(a.js.stream_config(spec).is_err(), "{bad:?}");
        }
    }
}
