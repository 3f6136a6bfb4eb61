//! The daemon works inside the file-system sandbox of `systemd/waping-gateway.service`.
//!
//! These machines do not run systemd as PID 1, so the unit cannot be started for real.
//! This test rebuilds the parts of its sandbox that decide whether the daemon can work, with
//! the same kernel mechanisms systemd uses (a private mount namespace, read-only bind
//! remounts, an unprivileged user, no capabilities, no new privileges):
//!
//! - `ProtectSystem=strict`: every mount read-only;
//! - `ProtectHome=yes`: `/home` and `/root` empty;
//! - `PrivateTmp=yes`: a private `/tmp` and `/var/tmp`;
//! - writable `StateDirectory=` and `LogsDirectory=`, plus a read-only credentials
//!   directory, passed as `$STATE_DIRECTORY`, `$LOGS_DIRECTORY` and `$CREDENTIALS_DIRECTORY`
//!   like systemd passes them;
//! - `DynamicUser=yes`: an unprivileged uid;
//! - `CapabilityBoundingSet=` and `NoNewPrivileges=yes`.
//!
//! Inside it, the gateway starts, accepts and delivers messages over QUIC, creates a
//! workspace over HTTP, writes its audit file sink, passes `/readyz`, reloads on SIGHUP and
//! stops cleanly. The system-call filter and the address-family restriction are not
//! reproduced: that needs systemd's seccomp program.
//! The test needs root to build the namespace: CI and the development machines run as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use waping_client::{ClientConfig, Connection, Trust};
use waping_protocol::{Body, Frame, Text};

/// In the range systemd uses for `DynamicUser=` (61184–65519).
const DYNAMIC_UID: u32 = 61_184;

fn chown(path: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// The mount and privilege setup, run as root inside `unshare -m`; ends by exec'ing the
/// gateway as the unprivileged user. `$1` is the host directory holding state, logs, config
/// and credentials.
const SANDBOX: &str = r#"
set -eu
host="$1"; shift
mount --make-rprivate /
# The service's directories live under /mnt in the namespace (a tmpfs, so nothing is
# created on the host), bound from the test's directory before /tmp is made private.
mount -t tmpfs -o mode=0755 tmpfs /mnt
for d in state logs config credentials; do mkdir -p /mnt/$d; mount --bind "$host/$d" /mnt/$d; done
# PrivateTmp=, ProtectHome=.
for d in /tmp /var/tmp /home /root; do
  if [ -d "$d" ]; then mount -t tmpfs -o mode=1777 tmpfs "$d"; fi
done
chmod 0755 /home /root
# ProtectSystem=strict: every mount read-only but the kernel's API file systems, the
# private /tmp and the service's own writable directories.
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp|/var/tmp|/mnt/state|/mnt/logs) ;;
    *) mount -o remount,bind,ro "$mp" 2>/dev/null || true ;;
  esac
done
mount -o remount,bind,ro /mnt/config
mount -o remount,bind,ro /mnt/credentials
# The sandbox is real: the project tree is not writable from here, even as root.
if touch "$WAPING_PROBE" 2>/dev/null; then echo "sandbox leak: wrote $WAPING_PROBE" >&2; exit 97; fi
export STATE_DIRECTORY=/mnt/state LOGS_DIRECTORY=/mnt/logs CONFIGURATION_DIRECTORY=/mnt/config \
       CREDENTIALS_DIRECTORY=/mnt/credentials
exec setpriv --reuid="$WAPING_UID" --regid="$WAPING_UID" --clear-groups --no-new-privs \
     --inh-caps=-all --bounding-set=-all "$@"
"#;

fn send(seq: u64) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("s-{seq}")),
        device_id: "d1".into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from("hello from the sandbox")),
    }
}

#[tokio::test]
async fn the_daemon_works_inside_the_units_file_system_sandbox() {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join(".sandbox-probe");
    let _ = std::fs::remove_file(&probe);
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path();
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["state", "logs", "config", "credentials"] {
        std::fs::create_dir(host.join(d)).unwrap();
    }
    // Credentials as LoadCredential= would provide them.
    let master: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
    std::fs::write(host.join("credentials/master-key"), master).unwrap();
    std::fs::write(host.join("credentials/admin-token"), common::ADMIN_TOKEN).unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["audit", "keygen", "--out"])
        .arg(host.join("credentials/audit-signing-key"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let k = waping_gateway::auth::generate_key();
    std::fs::write(
        host.join("config/waping-gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nscheme = \"http\"\n[limits]\ndevice_rate_per_second = 0\n\
             [[workspaces]]\nid = \"edge\"\nrate_per_second = 100\nburst = 100\ndevices = [\"d1\"]\n\
             [[workspaces.keys]]\nid = \"{}\"\nhash = \"{}\"\n",
            k.id, k.hash
        ),
    )
    .unwrap();
    chown(&host.join("state"), DYNAMIC_UID);
    chown(&host.join("logs"), DYNAMIC_UID);
    chown(&host.join("credentials"), DYNAMIC_UID);
    for f in ["master-key", "admin-token", "audit-signing-key"] {
        std::fs::set_permissions(
            host.join("credentials").join(f),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
    }

    let mut child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SANDBOX,
            "sandbox",
        ])
        .arg(host)
        .arg(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["run", "--config", "/mnt/config/waping-gateway.toml"])
        .env("WAPING_PROBE", &probe)
        .env("WAPING_UID", DYNAMIC_UID.to_string())
        .env("RUST_LOG", std::env::var("IT_LOG").unwrap_or("warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("unshare (util-linux) and root are needed to build the sandbox");
    let runtime_path = host.join("state/runtime.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let runtime: serde_json::Value = loop {
        if let Some(v) = std::fs::read_to_string(&runtime_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break v;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "the gateway exited inside the sandbox: {st} (97 = the sandbox let it write the project tree)"
            );
        }
        assert!(
            Instant::now() < deadline,
            "no runtime.json from the sandboxed gateway"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!probe.exists(), "the sandbox let root write {}", probe.display());
    // Everything the daemon wrote belongs to the dynamic user (it never ran as root).
    let meta = std::fs::metadata(&runtime_path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), DYNAMIC_UID);

    // QUIC: messages accepted (journal fsync) and delivered (device store, reports).
    let cfg = ClientConfig {
        addr: runtime["quic"].as_str().unwrap().parse().unwrap(),
        server_name: "localhost".into(),
        trust: Trust::parse_pin(runtime["fingerprint"].as_str().unwrap()).unwrap(),
        api_key: k.key.clone(),
        client_name: "sandbox".into(),
        connect_timeout: Duration::from_secs(10),
        identity: None,
    };
    let mut conn = Connection::connect(&cfg)
        .await
        .expect("connect to the sandboxed gateway");
    let mut s = conn.take_control().unwrap();
    for seq in 1..=5 {
        s.writer.queue(&send(seq)).unwrap();
    }
    s.writer.flush().await.unwrap();
    let (mut accepted, mut reports) = (0, 0);
    while accepted < 5 || reports < 5 {
        match common::next_frame(&mut s).await {
            Frame::Accepted { .. } => accepted += 1,
            Frame::Report(_) => reports += 1,
            other => panic!("unexpected {other:?}"),
        }
    }

    // HTTP: a workspace through the control plane (store, keyring, audit), then readiness
    // (which writes a probe file in the state directory).
    let http: std::net::SocketAddr = runtime["http"].as_str().unwrap().parse().unwrap();
    let r = common::http_raw(
        http,
        "POST",
        "/v1/admin/workspaces",
        Some(common::ADMIN_TOKEN),
        Some(r#"{"id":"made-in-sandbox"}"#),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = common::http_raw(http, "GET", "/readyz", None, None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);

    // SIGHUP: the configuration is read again and applied.
    let cfg_path = host.join("config/waping-gateway.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("burst = 100", "burst = 200")).unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value = std::fs::read_to_string(&runtime_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if r["reload"]["last_result"] == "applied" {
            break;
        }
        assert!(Instant::now() < deadline, "no reload inside the sandbox: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    drop(conn);

    // SIGTERM: drains and exits 0, having written its audit file sink.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the sandboxed gateway did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status inside the sandbox");
    let audit_dir = host.join("logs/audit");
    let lines: usize = std::fs::read_dir(&audit_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", audit_dir.display()))
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum();
    assert!(lines >= 4, "audit file sink in $LOGS_DIRECTORY has {lines} lines");
    // Put the test directory back in the test user's hands so it can be removed.
    chown(host, 0);
}
