//! `waping-loadtest`: simulated clients and a simulated WhatsApp side for the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod init;
mod run;
mod stats;

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
    /// Drive load against a running gateway and report throughput and latency.
    Run(Box<run::RunArgs>),
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
            seed: 1,
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
