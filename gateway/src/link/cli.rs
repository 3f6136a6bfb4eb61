//! `waping-gateway device …`: link, unlink, disable, enable a device or show its state,
//! through a running gateway over QUIC (protocol version 2), as any client would.
//!
//! The API key never comes from the command line (argv is visible to every local user in
//! `ps`): it is read from `--key-file` or the `WAPING_API_KEY` environment variable.
//!
//! Exit codes: 0 done (for `link`: the device is connected), 1 connection or protocol
//! failure, 2 bad arguments or configuration, 3 timed out, 4 the gateway refused or the
//! device ended in a failure state (logged out, banned, disabled, unlinked).

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use waping_client::{ClientConfig, ClientError, Connection, Trust};
use waping_protocol::{DeviceAction, DeviceState, EventKind, LinkCodeKind, LinkMethod, subscribe};

use super::{PairingCode, Phone, Qr, TerminalStyle};
use crate::config::Config;

/// Arguments shared by every `device` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Workspace of the device. Picks the key from a key file listing several workspaces
    /// (`waping-loadtest init`'s keys.toml).
    #[arg(long)]
    pub workspace: String,
    /// Device id.
    #[arg(long)]
    pub device: String,
    /// Gateway UDP address, host:port. Default: read from the gateway's runtime.json.
    #[arg(long)]
    pub addr: Option<String>,
    /// Certificate pin `sha256:<hex>` (printed at gateway start). Default: runtime.json.
    #[arg(long)]
    pub pin: Option<String>,
    /// Gateway configuration file: its state directory holds runtime.json (address, pin).
    #[arg(long, short, env = "WAPING_CONFIG")]
    pub config: Option<PathBuf>,
    /// File holding the workspace's API key (`wpk_…` alone, or a keys.toml). Without it the
    /// key comes from the WAPING_API_KEY environment variable; never from the command line.
    #[arg(long, env = "WAPING_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Client certificate (PEM) for a gateway with `server.client_auth` set; with `--client-key`.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `--client-cert`.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// `waping-gateway device …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DeviceCmd {
    /// Link the device: shows QR codes as they rotate (or the pairing code with --phone) and
    /// waits until the phone has linked it and it is connected.
    Link {
        #[command(flatten)]
        target: Target,
        /// Link by pairing code for this phone number (with country code) instead of QR.
        #[arg(long)]
        phone: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// How to draw the QR: `ansi` (black on white, any terminal with colours; default on
        /// a terminal), `plain` (glyphs for dark modules; default when not a terminal) or
        /// `inverted` (glyphs for light modules, for dark terminals without colours).
        #[arg(long)]
        style: Option<Style>,
        /// Also write each QR code to this PNG file (replaced as the code rotates).
        #[arg(long)]
        qr_png: Option<PathBuf>,
        /// Also write each QR code to this SVG file.
        #[arg(long)]
        qr_svg: Option<PathBuf>,
    },
    /// Log the device out at WhatsApp and forget its credentials.
    Unlink {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the device's session; its sends are refused until enabled.
    Disable {
        #[command(flatten)]
        target: Target,
    },
    /// Resume a disabled device.
    Enable {
        #[command(flatten)]
        target: Target,
    },
    /// Print the device's state.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// QR drawing style on the command line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Black on white with ANSI colours.
    Ansi,
    /// Glyphs for dark modules (light terminals).
    Plain,
    /// Glyphs for light modules (dark terminals).
    Inverted,
}

/// Exit statuses (module docs).
const EXIT_CONNECTION: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_TIMEOUT: u8 = 3;
const EXIT_REFUSED: u8 = 4;

/// A failure with its exit status and the message for stderr.
#[derive(Debug)]
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused { code, message, .. } => {
                Fail(EXIT_REFUSED, format!("refused: {code}: {message}"))
            }
            ClientError::Unsupported(m) => Fail(EXIT_REFUSED, m),
            ClientError::Config(m) => Fail(EXIT_USAGE, m),
            e => Fail(EXIT_CONNECTION, e.to_string()),
        }
    }
}

/// Runs a `device` subcommand to completion.
pub fn main(cmd: DeviceCmd) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cmd: DeviceCmd) -> Result<(), Fail> {
    let (target, action) = match &cmd {
        DeviceCmd::Link { target, phone, .. } => {
            let method = match phone {
                Some(p) => {
                    let phone = Phone::parse(p).map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
                    LinkMethod::PairingCode {
                        phone: phone.digits().into(),
                    }
                }
                None => LinkMethod::Qr,
            };
            (target, DeviceAction::Link(method))
        }
        DeviceCmd::Unlink { target } => (target, DeviceAction::Unlink),
        DeviceCmd::Disable { target } => (target, DeviceAction::Disable),
        DeviceCmd::Enable { target } => (target, DeviceAction::Enable),
        DeviceCmd::Status { target } => (target, DeviceAction::Status),
    };
    let cfg = client_config(target)?;
    let conn = Connection::connect(&cfg).await?;
    let result = match &cmd {
        DeviceCmd::Link {
            timeout,
            style,
            qr_png,
            qr_svg,
            ..
        } => {
            let out = Output {
                style: match style {
                    Some(Style::Ansi) => TerminalStyle::Ansi,
                    Some(Style::Plain) => TerminalStyle::Plain,
                    Some(Style::Inverted) => TerminalStyle::PlainInverted,
                    None if std::io::stdout().is_terminal() => TerminalStyle::Ansi,
                    None => TerminalStyle::Plain,
                },
                clear: std::io::stdout().is_terminal(),
                png: qr_png.clone(),
                svg: qr_svg.clone(),
            };
            link(&conn, &target.device, action, Duration::from_secs(*timeout), &out).await
        }
        _ => {
            let state = control(&conn, &target.device, action).await?;
            println!("device {}: {}", target.device, state.as_str());
            Ok(())
        }
    };
    conn.close().await;
    result
}

/// One DEVICE_CONTROL with a bound on how long the gateway may take.
async fn control(conn: &Connection, device: &str, action: DeviceAction) -> Result<DeviceState, Fail> {
    match tokio::time::timeout(Duration::from_secs(30), conn.device_control(device, action)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Fail(
            EXIT_TIMEOUT,
            "the gateway did not answer within 30 s".into(),
        )),
    }
}

/// Where QR codes go.
struct Output {
    style: TerminalStyle,
    /// Clear the screen before each QR (on a terminal) instead of appending.
    clear: bool,
    png: Option<PathBuf>,
    svg: Option<PathBuf>,
}

impl Output {
    fn qr(&self, device: &str, payload: &str, valid_for_ms: u32, n: u32) -> Result<(), Fail> {
        let qr = Qr::encode(payload)
            .map_err(|e| Fail(EXIT_CONNECTION, format!("cannot draw the QR code: {e}")))?;
        let mut text = String::new();
        if self.clear {
            // Clear the screen and home the cursor, so the new code replaces the old one.
            text.push_str("\x1b[2J\x1b[H");
        } else if n > 1 {
            text.push('\n');
        }
        text.push_str(&qr.to_terminal(2, self.style));
        let valid = if valid_for_ms > 0 {
            format!(" (valid for {} s)", valid_for_ms.div_ceil(1000))
        } else {
            String::new()
        };
        text.push_str(&format!(
            "QR code {n} for device {device}{valid}: on the phone open WhatsApp > Linked devices > Link a device and scan it.\n"
        ));
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        if let Some(path) = &self.png {
            let png = qr
                .to_png(8, 4)
                .map_err(|e| Fail(EXIT_CONNECTION, e.to_string()))?;
            write_replacing(path, &png)?;
        }
        if let Some(path) = &self.svg {
            write_replacing(path, qr.to_svg(8, 4).as_bytes())?;
        }
        Ok(())
    }
}

/// Writes via a temporary file and a rename, so a viewer never sees half an image.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Fail(EXIT_USAGE, format!("{}: {e}", path.display())))
}

/// Subscribes, starts the link, shows its codes and waits for the device's final state.
async fn link(
    conn: &Connection,
    device: &str,
    action: DeviceAction,
    timeout: Duration,
    out: &Output,
) -> Result<(), Fail> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe first: codes published before SUBSCRIBED would be lost.
    let wanted = subscribe::LINK_CODES | subscribe::DEVICE_STATE;
    let mut events = conn.subscribe(wanted).await?;
    if events.granted() & wanted != wanted {
        return Err(Fail(
            EXIT_REFUSED,
            "the gateway does not publish link codes (protocol version 1?)".into(),
        ));
    }
    let state = control(conn, device, action).await?;
    if state == DeviceState::Connected {
        println!("device {device} is already linked and connected");
        return Ok(());
    }
    eprintln!(
        "linking device {device} (state {}); waiting up to {} s",
        state.as_str(),
        timeout.as_secs()
    );
    let mut shown = 0u32;
    loop {
        let event = tokio::select! {
            e = events.next() => e?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Fail(EXIT_TIMEOUT, format!(
                    "timed out after {} s: the phone did not link device {device}", timeout.as_secs()
                )));
            }
        };
        let Some(event) = event else {
            return Err(Fail(
                EXIT_CONNECTION,
                "the gateway closed the event stream".into(),
            ));
        };
        match event.kind {
            EventKind::LinkCode {
                device_id,
                kind,
                code,
                valid_for_ms,
            } if device_id == device => match kind {
                LinkCodeKind::Qr => {
                    shown += 1;
                    out.qr(device, code.as_str(), valid_for_ms, shown)?;
                }
                LinkCodeKind::PairingCode => {
                    let shown_code =
                        PairingCode::parse(code.as_str()).map_or(code.to_string(), |c| c.to_string());
                    println!(
                        "Pairing code for device {device}: {shown_code}\n\
                         On the phone open WhatsApp > Linked devices > Link a device > Link with phone number instead, and type it."
                    );
                }
            },
            EventKind::DeviceState {
                device_id,
                state,
                detail,
            } if device_id == device => {
                let why = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                match state {
                    DeviceState::Connected => {
                        println!("device {device} is linked and connected");
                        return Ok(());
                    }
                    DeviceState::Linking | DeviceState::Disconnected => {
                        eprintln!("device {device}: {}{why}", state.as_str());
                    }
                    DeviceState::Unlinked
                    | DeviceState::LoggedOut
                    | DeviceState::Banned
                    | DeviceState::Disabled => {
                        return Err(Fail(
                            EXIT_REFUSED,
                            format!("linking device {device} failed: {}{why}", state.as_str()),
                        ));
                    }
                }
            }
            EventKind::Lagged { missed } => {
                // The final state may be among the missed events: ask for it.
                eprintln!("missed {missed} events; checking the device's state");
                if control(conn, device, DeviceAction::Status).await? == DeviceState::Connected {
                    println!("device {device} is linked and connected");
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

/// Address, certificate pin and key from the arguments, runtime.json and the key source.
fn client_config(t: &Target) -> Result<ClientConfig, Fail> {
    let usage = |m: String| Fail(EXIT_USAGE, m);
    let runtime = if t.addr.is_none() || t.pin.is_none() {
        let cfg = Config::load(t.config.as_deref()).map_err(|e| usage(e.to_string()))?;
        let path = cfg.server.resolved_state_dir().join("runtime.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            usage(format!(
                "{}: {e}; is the gateway running? Pass --config, or --addr and --pin",
                path.display()
            ))
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        Some(v)
    } else {
        None
    };
    let field = |name: &str| {
        runtime
            .as_ref()
            .and_then(|v| v[name].as_str().map(str::to_string))
            .ok_or_else(|| usage(format!("runtime.json has no {name:?}")))
    };
    let addr = match &t.addr {
        Some(a) => resolve(a).map_err(usage)?,
        None => {
            let mut a: SocketAddr = field("quic")?
                .parse()
                .map_err(|e| usage(format!("runtime.json quic address: {e}")))?;
            // A gateway listening on every interface is reached on loopback.
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                });
            }
            a
        }
    };
    let pin = match &t.pin {
        Some(p) => p.clone(),
        None => field("fingerprint")?,
    };
    Ok(ClientConfig {
        addr,
        server_name: "localhost".into(),
        trust: Trust::parse_pin(&pin).map_err(|e| usage(e.to_string()))?,
        api_key: api_key(t.key_file.as_deref(), &t.workspace).map_err(usage)?,
        client_name: format!("waping-gateway-cli/{}", env!("CARGO_PKG_VERSION")),
        connect_timeout: Duration::from_secs(10),
        identity: match (&t.client_cert, &t.client_key) {
            (Some(cert), Some(key)) => Some(waping_client::ClientIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
    })
}

fn resolve(a: &str) -> Result<SocketAddr, String> {
    a.to_socket_addrs()
        .map_err(|e| format!("--addr {a}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {a}: no address"))
}

/// The API key: from the key file (a bare `wpk_…` key, or a keys.toml with one entry per
/// workspace), else from `WAPING_API_KEY`.
fn api_key(file: Option<&Path>, workspace: &str) -> Result<String, String> {
    let Some(path) = file else {
        return std::env::var("WAPING_API_KEY")
            .map(|k| k.trim().to_string())
            .map_err(|_| "no API key: pass --key-file FILE or set WAPING_API_KEY".into());
    };
    warn_if_readable_by_others(path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    key_from_text(&text, workspace).map_err(|e| format!("{}: {e}", path.display()))
}

fn key_from_text(text: &str, workspace: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("wpk_") && !trimmed.contains(char::is_whitespace) {
        return Ok(trimmed.to_string());
    }
    #[derive(serde::Deserialize)]
    struct KeyFile {
        workspaces: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        key: String,
    }
    let file: KeyFile = toml::from_str(text).map_err(|_| {
        "neither a bare wpk_ key nor a key file with [[workspaces]] id/key entries".to_string()
    })?;
    file.workspaces
        .into_iter()
        .find(|e| e.id == workspace)
        .map(|e| e.key)
        .ok_or_else(|| format!("no key for workspace {workspace:?}"))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_a_bare_file_or_a_key_file() {
        assert_eq!(key_from_text("wpk_a_b\n", "any"), Ok("wpk_a_b".into()));
        let toml = "[[workspaces]]\nid = \"w1\"\nkey = \"wpk_1_x\"\ndevices = [\"d\"]\n\
                    [[workspaces]]\nid = \"w2\"\nkey = \"wpk_2_y\"\ndevices = []\n";
        assert_eq!(key_from_text(toml, "w2"), Ok("wpk_2_y".into()));
        assert!(key_from_text(toml, "w3").unwrap_err().contains("w3"));
        assert!(key_from_text("hello world", "w").is_err());
    }

    #[test]
    fn arguments_parse() {
        use clap::Parser;
        #[derive(clap::Parser, Debug)]
        struct T {
            #[command(subcommand)]
            cmd: DeviceCmd,
        }
        let t = T::try_parse_from([
            "t",
            "link",
            "--workspace",
            "w",
            "--device",
            "d",
            "--phone",
            "+49 151 2345678",
            "--timeout",
            "5",
            "--style",
            "inverted",
        ])
        .unwrap();
        let DeviceCmd::Link {
            target,
            phone,
            timeout,
            style,
            ..
        } = t.cmd
        else {
            panic!("link");
        };
        assert_eq!((target.workspace.as_str(), target.device.as_str()), ("w", "d"));
        assert_eq!(phone.as_deref(), Some("+49 151 2345678"));
        assert_eq!((timeout, style), (5, Some(Style::Inverted)));
        // The key has no command-line option at all.
        assert!(
            T::try_parse_from([
                "t",
                "status",
                "--workspace",
                "w",
                "--device",
                "d",
                "--api-key",
                "k"
            ])
            .is_err()
        );
    }
}
