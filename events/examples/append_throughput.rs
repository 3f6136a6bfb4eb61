//! Append throughput of the event store on this machine: one caller appending one event at a
//! time (every append waits for its own fsync) against 64 concurrent callers (group commit).
//!
//! ```text
//! cargo run --release -p waping-events --example append_throughput -- [DIR] [SECONDS]
//! ```
//!
//! DIR (default: the system temp directory) should be on the disk the gateway's state lives
//! on; each scenario runs SECONDS (default 5) on a fresh file. Every event is a 60-character
//! inbound text message owed to two webhook endpoints, stored without a sealer except in the
//! last scenario, which seals like the gateway's vault (XChaCha20-Poly1305, one key).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use waping_events::{Content, Event, EventData, EventStore, MessageReceived, NewEvent, StoreOptions};
use waping_journal::{OpenFailure, RecordSealer, SealFailure};

/// Seals as the vault does (one key here; nonces from a counter, fine for a benchmark).
struct BenchSealer {
    cipher: XChaCha20Poly1305,
    nonce: AtomicU64,
}

impl std::fmt::Debug for BenchSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BenchSealer")
    }
}

impl RecordSealer for BenchSealer {
    fn seal(&self, _ws: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealFailure> {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.nonce.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let mut out = nonce.to_vec();
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[24..])
            .map_err(|_| SealFailure("encrypt".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, _ws: &str, _aad: &[u8], _sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        Err(OpenFailure::Invalid("not needed here".into()))
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event: Event::new(
            "acme",
            Some("d1".into()),
            1_795_705_445_000 + n,
            EventData::MessageReceived(MessageReceived {
                from: "+4915112345678".into(),
                upstream_id: format!("3EB0{n:016X}"),
                content: Content::Text("Hello, is my order on its way? It was due yesterday. Thanks!".into()),
            }),
        ),
        endpoints: vec![1, 2],
    }
}

async fn scenario(dir: &std::path::Path, name: &str, callers: u64, batch: u64, secs: u64, sealed: bool) {
    let path = dir.join("append-throughput.redb");
    let _ = std::fs::remove_file(&path);
    let sealer: Option<Arc<dyn RecordSealer>> = sealed.then(|| {
        Arc::new(BenchSealer {
            cipher: XChaCha20Poly1305::new(&[7u8; 32].into()),
            nonce: AtomicU64::new(0),
        }) as Arc<dyn RecordSealer>
    });
    let options = StoreOptions {
        sealer,
        ..StoreOptions::default()
    };
    let store = EventStore::open(&path, options).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (store, stop, counter) = (store.clone(), stop.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let base = counter.fetch_add(batch, Ordering::Relaxed);
                let events = (base..base + batch).map(event).collect();
                store.append(events).await.unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let st = store.stats().unwrap();
    println!(
        "{name:>28}: {:>8.0} events/s  {:>6.0} commits (fsyncs)/s  {:>6.1} events/commit  {:>5.2} ms/commit  {} events, file {} MiB",
        st.appended as f64 / elapsed,
        st.commits as f64 / elapsed,
        st.appended as f64 / st.commits.max(1) as f64,
        elapsed * 1000.0 / st.commits.max(1) as f64,
        st.appended,
        st.file_bytes >> 20,
    );
    drop(store);
    let _ = std::fs::remove_file(&path);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let secs: u64 = args.next().map_or(5, |s| s.parse().expect("SECONDS"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("dir {}, {secs} s per scenario", dir.display());
        scenario(&dir, "1 caller, batch 1", 1, 1, secs, false).await;
        scenario(&dir, "64 callers, batch 1", 64, 1, secs, false).await;
        scenario(&dir, "1 caller, batch 64", 1, 64, secs, false).await;
        scenario(&dir, "64 callers, batch 16", 64, 16, secs, false).await;
        scenario(&dir, "64 callers, batch 1, sealed", 64, 1, secs, true).await;
    });
}
