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
    /// Write a new random master key (encryption at rest) to a file created with mode 0600.
    GenMasterKey {
        /// File to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rewrap every workspace data key under a new master key. Safe while the gateway runs:
    /// it keeps its unwrapped keys and picks up the new master key from its configured source
    /// at the next keyring change; install the new key there (e.g. `--install`) before that.
    RotateMasterKey {
        /// TOML configuration file (its state directory and master key source).
        #[arg(long, short, env = "WAPING_CONFIG")]
        config: Option<PathBuf>,
        /// The new master key (create one with `gen-master-key`).
        #[arg(long)]
        new_key_file: PathBuf,
        /// Then copy the new key over the configured `security.master_key_file` (atomically).
        #[arg(long)]
        install: bool,
    },
    /// Verify audit records; make or show the digest signing key.
    Audit {
        #[command(subcommand)]
        op: waping_gateway::audit::cli::AuditCmd,
    },
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

/// Installs the log subscriber and returns how a reload changes its level: `RUST_LOG`, when
/// set, wins over `log.level` at start and on every reload.
fn init_logging(cfg: &Config) -> waping_gateway::reload::LogHook {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
    Box::new(move |level: &str| {
        if from_env {
            return Ok(false);
        }
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())?;
        Ok(true)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load_report(config.as_deref()) {
            Ok(r) => {
                let c = &r.config;
                println!(
                    "configuration OK: {} workspace(s), {} device(s), {} key(s), QUIC on udp {}",
                    c.workspaces.len(),
                    c.workspaces.iter().map(|w| w.devices.len()).sum::<usize>(),
                    c.workspaces.iter().map(|w| w.keys.len()).sum::<usize>(),
                    c.server.listen
                );
                if !r.env_overrides.is_empty() {
                    println!(
                        "{} environment override(s) applied: {}",
                        r.env_overrides.len(),
                        r.env_overrides.join(", ")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(waping_gateway::config::ConfigError::Invalid { file, problems }) => {
                // One problem per line (`file:line:column: path: message`), then a count.
                for p in &problems {
                    eprintln!("{}", p.render(&file));
                }
                eprintln!("{} problem(s) in {file}", problems.len());
                ExitCode::from(2)
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
        Cmd::Audit { op } => waping_gateway::audit::cli::main(op),
        Cmd::GenMasterKey { out } => match waping_vault::MasterKey::generate().write_new_file(&out) {
            Ok(()) => {
                eprintln!("wrote a new master key to {} (mode 0600)", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::RotateMasterKey {
            config,
            new_key_file,
            install,
        } => match rotate_master_key(config.as_deref(), &new_key_file, install) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
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
            let (op, audited) = match op {
                DeadOp::List => (Op::List, None),
                DeadOp::Show { id } => (Op::Show(id), None),
                DeadOp::Replay { id, .. } => (
                    Op::Replay(id.clone()),
                    Some((waping_audit::Action::DeadLetterReplay, id)),
                ),
                DeadOp::Purge { id, .. } => (
                    Op::Purge(id.clone()),
                    Some((waping_audit::Action::DeadLetterPurge, id)),
                ),
            };
            match run(&cfg, op) {
                Ok(out) => {
                    print!("{out}");
                    if let Some((action, id)) = audited {
                        let ev = waping_audit::Event::new(
                            waping_gateway::unix_ms(),
                            waping_audit::Actor::Cli,
                            action,
                        )
                        .target("message", id.unwrap_or_else(|| "all".into()));
                        if let Err(e) = waping_gateway::audit::cli::record_offline(&cfg, ev) {
                            eprintln!("WARNING: the audit record was not written: {e:#}");
                        }
                    }
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
            let log_hook = init_logging(&cfg);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg, config, log_hook)) {
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

/// `rotate-master-key`: rewraps the keyring under the new key, then optionally installs it.
fn rotate_master_key(
    config: Option<&std::path::Path>,
    new_key_file: &std::path::Path,
    install: bool,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state_dir = cfg.server.resolved_state_dir();
    if !state_dir.join(waping_vault::KEYRING_FILE).exists() {
        anyhow::bail!(
            "no keyring in {}: nothing to rotate (is --config right?)",
            state_dir.display()
        );
    }
    let (old, source) = waping_gateway::control::sealing::master_key(&cfg, &state_dir)?;
    let new = waping_vault::MasterKey::load(&waping_vault::KeySource::File(new_key_file.to_path_buf()))?;
    let report = waping_vault::rotate_master_key(&state_dir, &old, &new)?;
    let mut msg = format!(
        "rewrapped {} data key(s): master key {} -> {}",
        report.data_keys, report.old_id, report.new_id
    );
    let ev = waping_audit::Event::new(
        waping_gateway::unix_ms(),
        waping_audit::Actor::Cli,
        waping_audit::Action::MasterKeyRotate,
    )
    .target("master_key", report.new_id.to_string())
    .detail(waping_audit::Detail::Changed {
        fields: vec![format!("master_key:{}->{}", report.old_id, report.new_id)],
    });
    if let Err(e) = waping_gateway::audit::cli::record_offline(&cfg, ev) {
        msg.push_str(&format!(
            "; WARNING: the audit record of this rotation was not written: {e:#}"
        ));
    }
    match (install, source) {
        (true, waping_vault::KeySource::File(path)) => {
            let tmp = path.with_extension("rotating");
            std::fs::copy(new_key_file, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            msg.push_str(&format!("; installed at {}", path.display()));
        }
        (true, other) => anyhow::bail!(
            "{msg}; but the master key comes from {}, which this command cannot replace: install the new key there yourself",
            other.describe()
        ),
        (false, other) => msg.push_str(&format!(
            "; now install the new key at {} (the old key no longer opens the keyring)",
            other.describe()
        )),
    }
    Ok(msg)
}

async fn run(
    cfg: Config,
    path: Option<PathBuf>,
    log_hook: waping_gateway::reload::LogHook,
) -> anyhow::Result<()> {
    if cfg.workspaces.is_empty() {
        tracing::warn!(
            "no workspaces in the configuration file: only workspaces created through the HTTP API \
             (node-admin token: api.admin_token_file or the `admin-token` credential) can be used. \
             For a quick start, `waping-gateway keygen` prints a key for the file, and \
             `waping-loadtest init` writes a whole load-test setup"
        );
    }
    let gw = waping_gateway::Gateway::start(cfg).await?;
    gw.set_log_hook(log_hook);
    println!(
        "waping-gateway listening on udp {} (certificate {})",
        gw.quic_addr, gw.fingerprint
    );
    println!("runtime info: {}", gw.state_dir.join("runtime.json").display());
    // The journal is replayed and every listener bound: tell systemd (Type=notify).
    use waping_gateway::systemd;
    systemd::ready(&gw.status_line());
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(period) = systemd::watchdog_period() {
        tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
        tokio::spawn(systemd::watchdog(
            period,
            gw.health_probe(),
            systemd::ping,
            stop.clone(),
        ));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut status = tokio::time::interval(std::time::Duration::from_secs(10));
    status.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = status.tick() => systemd::status(&gw.status_line()),
            _ = hup.recv() => {
                systemd::reloading();
                // The outcome is logged (and audited) by the reload itself.
                let _ = gw.reload(path.as_deref()).await;
                systemd::ready(&gw.status_line());
            }
        }
    }
    tracing::info!("shutdown requested; draining");
    systemd::stopping();
    stop.cancel();
    gw.shutdown();
    gw.wait().await;
    tracing::info!("stopped");
    Ok(())
}
