//! Measures the WhatsApp upstream's per-client cost without WhatsApp.
//!
//! ```sh
//! cargo run --release -p waping-whatsapp --example wa_scale -- 1000
//! ```
//!
//! Phases, each timed and with the process RSS before and after:
//! 1. create N new devices (fresh identity keys written to the KV store);
//! 2. drop them and reopen the same N devices from the store (a restart);
//! 3. start all N connection loops against a local WebSocket listener given as a
//!    static address (no DNS), with the node's connect pacer set to 100k/s, and wait
//!    until the listener has received every client's Noise hello.
//!
//! RSS after dropping clients is not returned to the OS, so the reopen cost is
//! measured in a second process: `wa_scale N --dump FILE` writes the store after phase
//! 1, and `wa_scale N --reopen FILE` loads it and measures opening N stored devices.
//!
//! Nothing here talks to WhatsApp; phase 3 measures our dial path (pacer, TCP,
//! WebSocket upgrade, first Noise frame), not a login.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use waping_whatsapp::{MemoryKv, WaConfig, WaNode};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

async fn dump(kv: &MemoryKv, path: &str) {
    use waping_whatsapp::DeviceKv;
    let mut out = Vec::new();
    for ns in waping_whatsapp::backend::NAMESPACES {
        for (k, v) in kv.scan_prefix(ns, b"").await.expect("scan") {
            for part in [ns.as_bytes(), &k[..], &v[..]] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
    }
    std::fs::write(path, out).expect("write dump");
}

async fn load(kv: &MemoryKv, path: &str) {
    use waping_whatsapp::{DeviceKv, KvBatch};
    let data = std::fs::read(path).expect("read dump");
    let mut parts = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().expect("len")) as usize;
        parts.push(&data[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    let mut batch = KvBatch::new();
    for rec in parts.chunks(3) {
        let ns = waping_whatsapp::backend::NAMESPACES
            .iter()
            .find(|n| n.as_bytes() == rec[0])
            .expect("known namespace");
        batch.put(ns, rec[1].to_vec(), rec[2].to_vec());
    }
    kv.apply(batch).await.expect("load");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(path) = flag("--reopen") {
        let kv = Arc::new(MemoryKv::new());
        load(&kv, &path).await;
        let node = WaNode::new(WaConfig::default(), kv.clone()).expect("node");
        {
            let _ = node.device("warmup").await.expect("warmup");
        }
        let base = rss_bytes();
        let t = Instant::now();
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            devices.push(node.device(&format!("dev{i}")).await.expect("reopen"));
        }
        let took = t.elapsed();
        let after = rss_bytes();
        println!(
            "reopen {n} stored devices (fresh process): {:.2} s ({:.0} µs each); RSS {:.1} -> {:.1} MiB, {:.1} KiB per client",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64,
            mib(base),
            mib(after),
            (after.saturating_sub(base)) as f64 / 1024.0 / n as f64,
        );
        std::process::exit(0);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = WaConfig {
        ws_url: "ws://chat.invalid/ws/chat".into(),
        static_addrs: vec![addr],
        connects_per_sec: 100_000,
        connect_burst: 100_000,
        connect_timeout: Duration::from_secs(60),
        ..WaConfig::default()
    };
    let kv = Arc::new(MemoryKv::new());
    let node = WaNode::new(cfg, kv.clone()).expect("node");

    // Warm-up: one device, so one-time allocations are not charged to the N.
    {
        let _ = node.device("warmup").await.expect("warmup");
    }
    let base = rss_bytes();

    let t = Instant::now();
    let mut devices = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        let (d, rx) = node.device(&format!("dev{i}")).await.expect("device");
        devices.push(d);
        receivers.push(rx);
    }
    let create = t.elapsed();
    let after_create = rss_bytes();
    println!(
        "create {n} new devices: {:.2} s ({:.0} µs each); RSS {:.1} -> {:.1} MiB, {:.1} KiB per client; store {} keys, {:.1} KiB payload per device",
        create.as_secs_f64(),
        create.as_secs_f64() * 1e6 / n as f64,
        mib(base),
        mib(after_create),
        (after_create.saturating_sub(base)) as f64 / 1024.0 / n as f64,
        kv.len(),
        kv.payload_bytes() as f64 / 1024.0 / (n + 1) as f64,
    );

    if let Some(path) = flag("--dump") {
        dump(&kv, &path).await;
        std::process::exit(0);
    }
    drop(devices);
    drop(receivers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_reopen = rss_bytes();
    let t = Instant::now();
    let mut devices = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        let (d, rx) = node.device(&format!("dev{i}")).await.expect("reopen");
        devices.push(d);
        receivers.push(rx);
    }
    let reopen = t.elapsed();
    let after_reopen = rss_bytes();
    println!(
        "reopen {n} devices from the store: {:.2} s ({:.0} µs each); RSS {:.1} -> {:.1} MiB, {:.1} KiB per client",
        reopen.as_secs_f64(),
        reopen.as_secs_f64() * 1e6 / n as f64,
        mib(before_reopen),
        mib(after_reopen),
        (after_reopen.saturating_sub(before_reopen)) as f64 / 1024.0 / n as f64,
    );

    // Phase 3: every client dials the local listener and sends its Noise hello.
    let (hello_tx, mut hello_rx) = tokio::sync::mpsc::channel::<()>(n);
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let hello_tx = hello_tx.clone();
            held.push(tokio::spawn(async move {
                let Ok((_, mut ws)) = tokio_websockets::ServerBuilder::new().accept(tcp).await else {
                    return;
                };
                if let Some(Ok(m)) = ws.next().await
                    && m.is_binary()
                {
                    let _ = hello_tx.send(()).await;
                }
                // Hold the connection open (silent server) until the run ends.
                let _ = ws.next().await;
            }));
        }
    });
    let t = Instant::now();
    for d in &devices {
        d.connect();
    }
    let spawned = t.elapsed();
    for _ in 0..n {
        hello_rx.recv().await.expect("hello");
    }
    let all_hello = t.elapsed();
    println!(
        "start {n} connection loops: spawned in {:.3} s; all {n} Noise hellos received after {:.2} s; DNS lookups: {}",
        spawned.as_secs_f64(),
        all_hello.as_secs_f64(),
        node.dns_lookups(),
    );
    server.abort();
    std::process::exit(0);
}
