//! A small reconnect storm against the real gateway binary: 200 devices on a simulator in
//! this process, all dropped at once (both ways: per-device session events, and the
//! simulator closing the gateway's connection), all back — and the simulated WhatsApp never
//! saw more connects in one second than the gateway's connect gate allows.
//!
//! Bounds on completion are generous (the gate needs ~2 s per round here); nothing is timed.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Ws};
use waping_gateway::config::SimConfig;
use waping_gateway::upstream::remote::serve_hub;
use waping_gateway::upstream::sim::SimHub;

const DEVICES: usize = 200;
const RATE: u32 = 100;
const BURST: u32 = 20;

fn wait_for(hub: &SimHub, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while hub.connected() != n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} devices connected after 120 s",
            hub.connected()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mass_disconnect_recovers_within_the_connect_cap() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = SimHub::new(SimConfig::default()).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve_hub(listener, hub.clone()));

    // Two workspaces of 100 devices; the device lists must be 'static for the helper.
    let names: Vec<&'static str> = (0..DEVICES)
        .map(|i| &*Box::leak(format!("dev-{i}").into_boxed_str()))
        .collect();
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let (a, b) = names.split_at(DEVICES / 2);
    let upstream = format!(
        "[upstream]\nkind = \"sim-remote\"\nremote_addr = \"{addr}\"\n\
         [sessions]\nconnect_rate_per_second = {RATE}\nconnect_burst = {BURST}\nreconnect_initial_ms = 100\n"
    );
    let _gw = Gateway::start_upstream(
        &[
            Ws {
                id: "storm-a",
                devices: a,
                rate: 1000,
                burst: 1000,
            },
            Ws {
                id: "storm-b",
                devices: b,
                rate: 1000,
                burst: 1000,
            },
        ],
        &upstream,
        false,
    );
    wait_for(&hub, DEVICES, "start");
    let cap = RATE + BURST;
    let start = hub.connect_stats();
    assert_eq!(start.attempts, DEVICES as u64, "one connect per device at start");
    assert!(start.peak_per_second <= cap, "start: {start:?}");

    // Every device dropped by a session event each.
    hub.mark();
    let dropped = rt.block_on(hub.mass_disconnect("storm"));
    assert_eq!(dropped, DEVICES);
    wait_for(&hub, DEVICES, "after the mass disconnect");
    let s = hub.connect_stats();
    assert!(s.attempts_since_mark >= DEVICES as u64, "{s:?}");
    assert!(
        s.peak_per_second_since_mark <= cap,
        "{} connects in one second, cap {cap}: {:?}",
        s.peak_per_second_since_mark,
        s.per_second_since_mark
    );
    // With 200 devices and a cap of 120/s, the gate must have spread them over 2+ seconds.
    assert!(s.per_second_since_mark.len() >= 2, "{s:?}");

    // The simulator closes the gateway's connection: the gateway reports every device
    // disconnected itself and brings them back through the same gate.
    hub.mark();
    let mut ctl = rt
        .block_on(waping_gateway::upstream::remote::SimControl::connect(addr))
        .unwrap();
    assert_eq!(rt.block_on(ctl.close_connections()).unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.connected() == DEVICES {
        assert!(Instant::now() < deadline, "closing the connection dropped nobody");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for(&hub, DEVICES, "after the connection was closed");
    let s = hub.connect_stats();
    assert!(s.attempts_since_mark >= DEVICES as u64, "{s:?}");
    assert!(
        s.peak_per_second_since_mark <= cap,
        "{} connects in one second, cap {cap}: {:?}",
        s.peak_per_second_since_mark,
        s.per_second_since_mark
    );
    assert!(hub.connect_stats().peak_per_second <= cap);
}
