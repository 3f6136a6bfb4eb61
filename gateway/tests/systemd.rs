//! The binary speaks systemd's notification protocol: `READY=1` with a status once it
//! serves, `RELOADING=1` then `READY=1` around a SIGHUP reload, `WATCHDOG=1` at half of `WATCHDOG_USEC` while its journal commits, `STOPPING=1`
//! on SIGTERM. The test plays the service manager with a datagram socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Gateway, Ws};

#[test]
fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    let mut gw = Gateway::start(
        &[Ws {
            id: "acme",
            devices: &["d1"],
            rate: 10,
            burst: 10,
        }],
        "",
    );
    assert_eq!(gw.terminate(), Some(0));
    let path = gw.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let path_s = path.display().to_string();
    gw.respawn_env(&[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "400000")]);

    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while got.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3 {
        assert!(Instant::now() < deadline, "no watchdog pings: {got:?}");
        let n = sock.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY=1 first");
    assert!(
        ready.contains("STATUS=1 workspaces, 1 device sessions"),
        "{ready}"
    );
    assert!(got[0].contains("READY=1"), "READY comes before any ping: {got:?}");

    // SIGHUP: RELOADING=1 with the monotonic time (what `Type=notify-reload` matches), then
    // READY=1 again once the reload is done.
    let r = gw.reload_with(|t| t);
    assert_eq!(r["last_result"], "applied", "{r}");
    let (mut reloading, mut ready_again) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready_again {
        assert!(
            Instant::now() < deadline,
            "no RELOADING/READY pair: reloading={reloading}"
        );
        let n = sock.recv(&mut buf).expect("a notification");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains("RELOADING=1") {
            assert!(m.contains("MONOTONIC_USEC="), "{m}");
            reloading = true;
        } else if reloading && m.contains("READY=1") {
            ready_again = true;
        }
    }

    assert_eq!(gw.terminate(), Some(0));
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}
