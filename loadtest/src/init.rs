//! `waping-loadtest init`: a gateway config and a key file for a load test.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use waping_gateway::config::{Config, KeyConfig, UpstreamKind, WorkspaceConfig};

use crate::{KeyEntry, KeyFile};

/// Options of `init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Output directory (created): gateway.toml, keys.toml, state/.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
    /// Workspaces.
    #[arg(long, default_value_t = 4)]
    pub workspaces: usize,
    /// Devices per workspace.
    #[arg(long, default_value_t = 8)]
    pub devices: usize,
    /// Workspace rate limit, messages per second (high: the test measures the gateway, not the limit).
    #[arg(long, default_value_t = 10_000_000)]
    pub rate: u32,
    /// Workspace burst.
    #[arg(long, default_value_t = 10_000_000)]
    pub burst: u32,
    /// Per-device pacing (0 = off, the load-test setting).
    #[arg(long, default_value_t = 0)]
    pub device_rate: u32,
    /// Gateway QUIC address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Gateway metrics address.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub metrics: SocketAddr,
    /// Use a simulator process at this address (`waping-loadtest sim` or `run --spawn-sim`) instead of the in-process one.
    #[arg(long)]
    pub remote_sim: Option<SocketAddr>,
}

/// Writes the files.
pub fn init(a: &InitArgs) -> anyhow::Result<()> {
    let (cfg, keys) = build(a)?;
    let (gw_path, key_path) = write(&a.out, &cfg, &keys)?;
    eprintln!(
        "wrote {} and {} ({} workspaces × {} devices)",
        gw_path.display(),
        key_path.display(),
        a.workspaces,
        a.devices
    );
    eprintln!(
        "start the gateway:  waping-gateway run --config {}",
        gw_path.display()
    );
    eprintln!(
        "then drive it:      waping-loadtest run --keys {} --gateway-state {} --rate 20000 --duration 10s",
        key_path.display(),
        a.out.join("state").display()
    );
    Ok(())
}

/// The gateway config (state in `out/state`) and the harness's keys, with fresh keys.
pub fn build(a: &InitArgs) -> anyhow::Result<(Config, KeyFile)> {
    let mut cfg = Config::default();
    cfg.server.listen = a.listen;
    // The harness drives QUIC only; an ephemeral API port lets several gateways run at once.
    cfg.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.server.state_dir = Some(std::path::absolute(a.out.join("state"))?);
    cfg.server.max_in_flight = 65_536;
    cfg.metrics.listen = a.metrics;
    cfg.limits.rate_per_second = a.rate;
    cfg.limits.burst = a.burst;
    cfg.limits.device_rate_per_second = a.device_rate;
    cfg.limits.device_window = 256;
    if let Some(sim) = a.remote_sim {
        cfg.upstream.kind = UpstreamKind::SimRemote;
        cfg.upstream.remote_addr = sim;
    }
    let mut keys = KeyFile {
        workspaces: Vec::new(),
    };
    for w in 0..a.workspaces {
        let id = format!("lt-{w}");
        let devices: Vec<String> = (0..a.devices).map(|d| format!("dev-{d}")).collect();
        let k = waping_gateway::auth::generate_key();
        cfg.workspaces.push(WorkspaceConfig {
            id: id.clone(),
            rate_per_second: None,
            burst: None,
            device_rate_per_second: None,
            pacing: None, // [workspaces.pacing] (issue 4): the harness paces nothing
            devices: devices.clone(),
            keys: vec![KeyConfig {
                id: k.id,
                hash: k.hash,
                role: waping_gateway::control::roles::Role::Owner,
            }],
            audit_full_numbers: false,
        });
        keys.workspaces.push(KeyEntry {
            id,
            key: k.key,
            devices,
        });
    }
    cfg.validate("generated")?;
    Ok((cfg, keys))
}

/// Writes `out/gateway.toml` and `out/keys.toml` (mode 0600); returns their paths.
pub fn write(out: &Path, cfg: &Config, keys: &KeyFile) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let gw_path = out.join("gateway.toml");
    std::fs::write(&gw_path, toml::to_string_pretty(cfg)?)?;
    let key_path = out.join("keys.toml");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&key_path)?
        .write_all(toml::to_string_pretty(keys)?.as_bytes())?;
    Ok((gw_path, key_path))
}
