//! A webhook receiver for benchmarks: HTTP/1.1 on loopback, answers `204` at once (or after
//! `--delay-ms`), counts requests and distinct `webhook-id`s.
//!
//! ```text
//! cargo run --release -p waping-webhooks --example receiver -- \
//!     [--listen 127.0.0.1:7480] [--delay-ms 0] [--expect N]
//! ```
//!
//! Every second with traffic it prints one JSON line to stderr (`t_s`, `requests`,
//! `distinct`, `per_s`: new distinct ids in that second). It exits when `--expect N` distinct
//! ids have arrived, or on SIGINT/SIGTERM, and then prints one JSON summary line to stdout:
//! counts, the wall-clock time (Unix ms) of the first request and of the last new id, and the
//! seconds between them with the rate they give. Signatures are not checked: this measures
//! the sender, and a verifying receiver is what `tests/standard_webhooks.rs` is for.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Command line.
#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    delay: Duration,
    expect: Option<u64>,
}

const USAGE: &str = "usage: receiver [--listen ADDR (127.0.0.1:7480)] [--delay-ms MS (0)] [--expect N]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
        delay: Duration::ZERO,
        expect: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}\n{USAGE}");
        match flag.as_str() {
            "--listen" => a.listen = value.parse().map_err(|e| bad(&e))?,
            "--delay-ms" => a.delay = Duration::from_millis(value.parse().map_err(|e| bad(&e))?),
            "--expect" => a.expect = Some(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// What the receiver has seen.
#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    /// Requests without a `webhook-id` header (not a webhook; counted, not deduplicated).
    without_id: u64,
    ids: HashSet<String>,
    first_request: Option<(Instant, u64)>,
    last_new_id: Option<(Instant, u64)>,
}

#[derive(Debug)]
struct Shared {
    counts: Mutex<Counts>,
    expect: Option<u64>,
    /// Signalled when `expect` distinct ids have arrived.
    reached: Notify,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    delay: Duration,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The body is read in full, as a real receiver must before verifying; a read error is
    // the sender's problem and still answered.
    let _ = req.into_body().collect().await;
    {
        let now = (Instant::now(), unix_ms());
        let mut c = shared.counts.lock().expect("counts lock");
        c.requests += 1;
        c.first_request.get_or_insert(now);
        match id {
            Some(id) => {
                if c.ids.insert(id) {
                    c.last_new_id = Some(now);
                    if shared.expect == Some(c.ids.len() as u64) {
                        shared.reached.notify_one();
                    }
                }
            }
            None => c.without_id += 1,
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// One line per second with traffic: cumulative counts and new distinct ids in that second.
async fn progress(shared: Arc<Shared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_requests, mut last_distinct) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let (requests, distinct) = {
            let c = shared.counts.lock().expect("counts lock");
            (c.requests, c.ids.len() as u64)
        };
        if requests != last_requests {
            eprintln!(
                "{}",
                serde_json::json!({
                    "t_s": started.elapsed().as_secs(),
                    "requests": requests,
                    "distinct": distinct,
                    "per_s": distinct - last_distinct,
                })
            );
        }
        (last_requests, last_distinct) = (requests, distinct);
    }
}

fn summary(shared: &Shared, why: &str) -> serde_json::Value {
    let c = shared.counts.lock().expect("counts lock");
    let distinct = c.ids.len() as u64;
    let span = match (c.first_request, c.last_new_id) {
        (Some((a, _)), Some((b, _))) => Some(b.duration_since(a).as_secs_f64()),
        _ => None,
    };
    serde_json::json!({
        "exit": why,
        "requests": c.requests,
        "distinct": distinct,
        "duplicates": c.requests - c.without_id - distinct,
        "without_id": c.without_id,
        "first_request_unix_ms": c.first_request.map(|f| f.1),
        "last_new_id_unix_ms": c.last_new_id.map(|l| l.1),
        "elapsed_s": span,
        // Ids after the first over the time since the first: the delivery rate.
        "distinct_per_s": span.filter(|s| *s > 0.0).map(|s| distinct.saturating_sub(1) as f64 / s),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "listening on {} (delay {} ms, expect {:?})",
        listener.local_addr()?,
        args.delay.as_millis(),
        args.expect
    );
    let shared = Arc::new(Shared {
        counts: Mutex::new(Counts::default()),
        expect: args.expect,
        reached: Notify::new(),
    });
    tokio::spawn(progress(shared.clone(), Instant::now()));
    let accept = {
        let shared = shared.clone();
        let delay = args.delay;
        async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors and the like: say so, back off, keep serving.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone(), delay));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let why = tokio::select! {
        _ = accept => "accept loop ended",
        () = shared.reached.notified() => "expected count reached",
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    println!("{}", summary(&shared, why));
    Ok(())
}
