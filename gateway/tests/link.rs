//! Device linking end to end: the real binary with the sim upstream, linked through
//! `waping-gateway device link` (QR and pairing code), its clean timeout, and DEVICE_CONTROL
//! over the protocol, including what a version 1 connection gets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Gateway, Ws, next_frame};
use waping_client::ClientError;
use waping_protocol::limits::ALPN;
use waping_protocol::{DeviceAction, DeviceState, ErrorCode, Frame, LinkMethod, Text, subscribe};

const WS: &[Ws] = &[Ws {
    id: "w1",
    devices: &["d1", "d2"],
    rate: 1000,
    burst: 1000,
}];

/// Devices start unlinked; the simulated phone scans after `pair_after_ms` (0 = never) while
/// QR codes rotate every 300 ms.
fn gateway(pair_after_ms: u64) -> Gateway {
    Gateway::start(
        WS,
        &format!("require_link = true\nlink_pair_after_ms = {pair_after_ms}\nqr_rotate_ms = 300"),
    )
}

fn key_file(gw: &Gateway) -> PathBuf {
    let path = gw.dir.path().join("w1.key");
    std::fs::write(&path, format!("{}\n", gw.key("w1"))).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Runs `waping-gateway device <args> --config <gateway.toml>` with a clean key environment.
fn cli(gw: &Gateway, args: &[&str], env_key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waping-gateway"));
    cmd.arg("device")
        .args(args)
        .arg("--config")
        .arg(gw.dir.path().join("gateway.toml"))
        .env_remove("WAPING_API_KEY")
        .env_remove("WAPING_KEY_FILE")
        .env_remove("WAPING_CONFIG");
    if let Some(k) = env_key {
        cmd.env("WAPING_API_KEY", k);
    }
    cmd.output().expect("run the CLI")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Decodes the PNG the CLI wrote with rqrr.
fn decode_png(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("the CLI wrote the PNG");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        if buf[y * info.line_size + x / 8] & (0x80 >> (x % 8)) == 0 {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1);
    grids[0].decode().expect("decodable QR").1
}

#[test]
fn device_link_by_qr_draws_rotating_codes_and_reaches_connected() {
    let gw = gateway(1500);
    let keys = key_file(&gw);
    let png = gw.dir.path().join("qr.png");
    let out = cli(
        &gw,
        &[
            "link",
            "--workspace",
            "w1",
            "--device",
            "d1",
            "--timeout",
            "30",
            "--key-file",
            keys.to_str().unwrap(),
            "--qr-png",
            png.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("QR code 1 for device d1"), "{stdout}");
    assert!(
        stdout.contains("QR code 2 for device d1"),
        "codes rotate and are redrawn: {stdout}"
    );
    assert!(
        stdout.contains('▀') && stdout.contains('▄'),
        "half-block QR drawn"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colour codes when stdout is not a terminal"
    );
    assert!(
        stdout.trim_end().ends_with("device d1 is linked and connected"),
        "{stdout}"
    );
    assert!(
        !stderr.contains("readable by other users"),
        "the key file is private"
    );
    // The PNG holds the last QR payload the sim showed.
    assert!(decode_png(&png).starts_with("2@sim"), "the sim's payload");

    let status = cli(
        &gw,
        &["status", "--workspace", "w1", "--device", "d1"],
        Some(&gw.key("w1")),
    );
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    assert_eq!(text(&status.stdout).trim(), "device d1: connected");
}

#[test]
fn device_link_by_pairing_code_prints_the_code() {
    let gw = gateway(800);
    let out = cli(
        &gw,
        &[
            "link",
            "--workspace",
            "w1",
            "--device",
            "d2",
            "--phone",
            "+49 151 2345-6789",
            "--timeout",
            "30",
        ],
        Some(&gw.key("w1")),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Pairing code for device d2: "))
        .expect("pairing code line");
    let code = line.rsplit(": ").next().unwrap();
    assert!(waping_gateway::link::PairingCode::parse(code).is_ok(), "{code}");
    assert!(stdout.trim_end().ends_with("device d2 is linked and connected"));
}

#[test]
fn device_link_times_out_with_the_reason() {
    let gw = gateway(0);
    let out = cli(
        &gw,
        &["link", "--workspace", "w1", "--device", "d1", "--timeout", "2"],
        Some(&gw.key("w1")),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out after 2 s"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("QR code 1"),
        "codes were shown meanwhile"
    );
}

#[test]
fn cli_refuses_bad_input_before_connecting() {
    let gw = gateway(0);
    // No key anywhere: usage error, and the key has no command-line option at all.
    let out = cli(&gw, &["status", "--workspace", "w1", "--device", "d1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("WAPING_API_KEY"),
        "{}",
        text(&out.stderr)
    );
    // A phone number that is not one.
    let out = cli(
        &gw,
        &[
            "link",
            "--workspace",
            "w1",
            "--device",
            "d1",
            "--phone",
            "0151 234",
        ],
        Some(&gw.key("w1")),
    );
    assert_eq!(out.status.code(), Some(2));
    // Unknown device: the gateway refuses.
    let out = cli(
        &gw,
        &["status", "--workspace", "w1", "--device", "nope"],
        Some(&gw.key("w1")),
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("UNKNOWN_DEVICE"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_control_over_the_protocol() {
    let gw = gateway(0);
    let conn = gw.connect("w1").await;
    assert!(conn.session.version >= 2, "device control needs version 2");
    let refused = |r: Result<DeviceState, ClientError>| match r {
        Err(ClientError::Refused { code, state, .. }) => (code, state),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Other workspaces' ids and ids that exist nowhere look the same.
    let (code, state) = refused(conn.device_control("nope", DeviceAction::Status).await);
    assert_eq!((code, state), (ErrorCode::UNKNOWN_DEVICE, None));
    // Field checks answer per request; the connection stays usable.
    let bad_phone = DeviceAction::Link(LinkMethod::PairingCode {
        phone: "+4915".into(),
    });
    assert_eq!(
        refused(conn.device_control("d1", bad_phone).await).0,
        ErrorCode::INVALID_FIELD
    );
    assert_eq!(
        refused(conn.device_control("d/1", DeviceAction::Status).await).0,
        ErrorCode::INVALID_FIELD
    );
    assert_eq!(
        conn.device_control("d1", DeviceAction::Status).await.unwrap(),
        DeviceState::Unlinked
    );
    assert_eq!(
        conn.device_control("d1", DeviceAction::Disable).await.unwrap(),
        DeviceState::Disabled
    );
    assert_eq!(
        conn.device_control("d1", DeviceAction::Status).await.unwrap(),
        DeviceState::Disabled
    );
    assert_ne!(
        conn.device_control("d1", DeviceAction::Enable).await.unwrap(),
        DeviceState::Disabled
    );

    // A link publishes QR codes as LINK_CODE events of the workspace.
    let mut events = conn.subscribe(subscribe::ALL).await.unwrap();
    assert_eq!(events.granted(), subscribe::ALL);
    let state = conn
        .device_control("d2", DeviceAction::Link(LinkMethod::Qr))
        .await
        .unwrap();
    assert_eq!(state, DeviceState::Linking);
    let code = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("open stream");
        if let waping_protocol::EventKind::LinkCode { device_id, code, .. } = e.kind {
            assert_eq!(device_id, "d2");
            break code;
        }
    };
    assert!(waping_gateway::link::Qr::encode(code.as_str()).is_ok());
    conn.close().await;
}

/// A version 1 client keeps version 1: no version 2 bits granted, DEVICE_CONTROL is an
/// unknown frame type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_connections_do_not_see_version_2() {
    let gw = gateway(0);
    let cfg = gw.client_config(&gw.key("w1"));
    assert_eq!(ALPN, b"waping/1");
    let (_endpoint, conn, mut ctl) = waping_client::connect_raw(&cfg).await.unwrap();
    ctl.send(&Frame::Hello {
        min_version: 1,
        max_version: 1,
        api_key: Text::from(gw.key("w1")),
        client_name: "v1".into(),
    })
    .await
    .unwrap();
    let Frame::HelloOk { version, .. } = next_frame(&mut ctl).await else {
        panic!("HELLO_OK");
    };
    assert_eq!(version, 1);
    ctl.send(&Frame::Subscribe { mask: u32::MAX }).await.unwrap();
    assert_eq!(
        next_frame(&mut ctl).await,
        Frame::Subscribed {
            mask: subscribe::ALL_V1
        }
    );
    ctl.send(&Frame::DeviceControl {
        req: 1,
        device_id: "d1".into(),
        action: DeviceAction::Status,
    })
    .await
    .unwrap();
    match next_frame(&mut ctl).await {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::UNKNOWN_FRAME_TYPE),
        other => panic!("expected ERROR, got {other:?}"),
    }
    drop(conn);
}
