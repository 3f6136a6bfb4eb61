//! `waping-gateway`: the daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waping_gateway::config::{Config, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "waping-gateway",
    version,
    about = "Self-hosted high-throughput WhatsApp message gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon (embedded defaults when no config file is given).
    Run {
        /// TOML configuration file.
        #[arg(long, short, env = "WAPING_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and report every problem at once.
    CheckConfig {
        /// TOML configuration file (omit to check the embedded defaults).
        #[arg(long, short, env = "WAPING_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Generate an API key: prints the key once and the line to put in the config.
    Keygen {
        /// Workspace the key is for (only used to print the config snippet).
        #[arg(long, default_value = "default")]
        workspace: String,
    },
    /// Print the embedded default configuration as TOML.
    DefaultConfig,
    // ---- device linking (gateway/src/link/cli.rs) ----
    /// Link, unlink, disable or enable a device, or show its state, through the running gateway.
    Device {
        #[command(subcommand)]
        op: waping_gateway::link::cli::DeviceCmd,
    },
    // ---- end device linking ----
    /// Inspect and act on dead letters (run with the gateway stopped).
    DeadLetters {
        /// TOML configuration file (its state directory holds the journal).
        #[arg(long, short, env = "WAPING_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        op: DeadOp,
    },
}

#[derive(Subcommand, Debug)]
enum DeadOp {
    /// One line per dead letter: id, workspace, device, attempts, last code, time, detail.
    List,
    /// Everything about one dead letter, including its recipient and body.
    Show {
        /// Message id (32 hex digits).
        id: String,
    },
    /// Put a dead letter (or all, with --all) back to work; it is sent after the next start.
    Replay {
        /// Message id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete a dead letter (or all, with --all) for good.
    Purge {
        /// Message id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                println!(
                    "configuration OK: {} workspace(s), {} device(s), {} key(s), QUIC on udp {}",
                    c.workspaces.len(),
                    c.workspaces.iter().map(|w| w.devices.len()).sum::<usize>(),
                    c.workspaces.iter().map(|w| w.keys.len()).sum::<usize>(),
                    c.server.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Keygen { workspace } => {
            let k = waping_gateway::auth::generate_key();
            eprintln!("API key (shown once; the gateway stores only its hash):");
            println!("{}", k.key);
            eprintln!("\nAdd to the workspace {workspace:?} in the configuration:\n");
            eprintln!("[[workspaces.keys]]\nid = \"{}\"\nhash = \"{}\"", k.id, k.hash);
            ExitCode::SUCCESS
        }
        Cmd::Device { op } => waping_gateway::link::cli::main(op),
        Cmd::DefaultConfig => match toml::to_string_pretty(&Config::default()) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::DeadLetters { config, op } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            use waping_gateway::durable::dead_letters::{Op, run};
            let op = match op {
                DeadOp::List => Op::List,
                DeadOp::Show { id } => Op::Show(id),
                DeadOp::Replay { id, .. } => Op::Replay(id),
                DeadOp::Purge { id, .. } => Op::Purge(id),
            };
            match run(&cfg, op) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "gateway failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.workspaces.is_empty() {
        tracing::warn!(
            "no workspaces configured: nobody can authenticate. Create a key with `waping-gateway keygen` \
             or a load-test setup with `waping-loadtest init`"
        );
    }
    let gw = waping_gateway::Gateway::start(cfg).await?;
    println!(
        "waping-gateway listening on udp {} (certificate {})",
        gw.quic_addr, gw.fingerprint
    );
    println!("runtime info: {}", gw.state_dir.join("runtime.json").display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested; draining");
    gw.shutdown();
    gw.wait().await;
    tracing::info!("stopped");
    Ok(())
}
