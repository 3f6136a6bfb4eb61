//! Store and group-commit measurements for docs/design/0004-journal.md.
//!
//! ```sh
//! cargo bench -p waping-journal --features compare --bench journal_bench -- stores      # journal vs redb vs fjall
//! cargo bench -p waping-journal --features compare --bench journal_bench -- replay      # replay of 1M unfinished
//! cargo bench -p waping-journal --features compare --bench journal_bench -- concurrency # 1/8/64 appenders
//! cargo bench -p waping-journal --features compare --bench journal_bench -- rawsync     # fdatasync, preallocated or not
//! cargo bench -p waping-journal --features compare --bench journal_bench -- prealloc    # the journal with and without
//! ```
//!
//! Every number printed is a median of 3 to 5 runs. Directories are created under
//! `$JOURNAL_BENCH_DIR` (default: the system temp dir), which must be on the disk measured.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use waping_journal::{AcceptedMessage, Body, Journal, JournalConfig, MessageId, Record, SyncMode};

const RUNS: usize = 3;

// Same allocator as the gateway binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let base = std::env::var_os("JOURNAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    println!("bench dir: {}", base.display());
    if matches!(which, "all" | "rawsync") {
        rawsync(&base);
    }
    if matches!(which, "all" | "stores") {
        stores(&base);
    }
    if matches!(which, "all" | "concurrency") {
        concurrency(&base);
    }
    if matches!(which, "all" | "prealloc") {
        prealloc(&base);
    }
    if matches!(which, "all" | "replay") {
        replay(&base);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn id(i: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_be_bytes());
    MessageId(b)
}

/// A message with a 200-byte text body (the issue's workload).
fn msg(i: u64) -> Record {
    Record::Accepted(AcceptedMessage {
        id: id(i),
        workspace: "workspace-1".into(),
        device: "device-07".into(),
        idempotency_key: format!("idem-{i:016}"),
        recipient: "4915112345678".into(),
        body: Body::Text(text200(i)),
        accepted_at_ms: now_ms() + i / 1000,
        submitted_by: String::new(),
    })
}

/// 200 pseudo-random alphanumeric bytes (so that compressing stores get no free lunch).
fn text200(seed: u64) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..200)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % ALNUM.len() as u64) as usize] as char
        })
        .collect()
}

fn done(i: u64) -> Record {
    Record::Sent {
        id: id(i),
        upstream_id: format!("3EB0{i:016X}"),
        at_ms: 1_700_000_000_500 + i,
    }
}

/// Wall clock at first use (messages look freshly accepted, inside the idempotency window).
fn now_ms() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    })
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let d = base.join(format!("waping-journal-bench-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes allocated on disk (like `du`; preallocated journal segments are sparse).
fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() {
                du(&e.path())
            } else {
                m.blocks() * 512
            };
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// raw fdatasync cost: growing file vs preallocated (fallocate-like zero fill)

fn rawsync(base: &Path) {
    const OPS: u64 = 500;
    println!(
        "\n## raw pwrite(200 B) + fdatasync at increasing offsets, {OPS} ops, modes interleaved, median of 5"
    );
    println!("| file | p50 µs | p99 µs |");
    println!("|---|---|---|");
    let modes = ["growing", "set_len (sparse)", "zero-filled"];
    let mut res = vec![(vec![], vec![]); modes.len()];
    for _ in 0..5 {
        for (mi, _) in modes.iter().enumerate() {
            let d = fresh(base, "raw");
            let p = d.join("f");
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let size = OPS * 200 + 4096;
            match mi {
                1 => f.set_len(size).unwrap(),
                2 => std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; size as usize], 0).unwrap(),
                _ => {}
            }
            f.sync_all().unwrap();
            let buf = [7u8; 200];
            let mut lat = Vec::with_capacity(OPS as usize);
            for k in 0..OPS {
                let t = Instant::now();
                std::os::unix::fs::FileExt::write_all_at(&f, &buf, k * 200).unwrap();
                f.sync_data().unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat.sort_by(f64::total_cmp);
            res[mi].0.push(lat[lat.len() / 2]);
            res[mi].1.push(lat[lat.len() * 99 / 100]);
            drop(f);
            let _ = fs::remove_dir_all(&d);
        }
    }
    for (mi, m) in modes.iter().enumerate() {
        println!(
            "| {m} | {:.0} | {:.0} |",
            median(res[mi].0.clone()),
            median(res[mi].1.clone())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// store candidates

trait Store {
    fn append(&mut self, from: u64, n: u64);
    fn mark_done(&mut self, from: u64, n: u64);
    /// Reopens and reads every unfinished message; returns how many.
    fn reopen_count(&mut self) -> u64;
}

struct JournalStore {
    dir: PathBuf,
    j: Option<Journal>,
}

impl JournalStore {
    fn new(dir: PathBuf) -> Self {
        let (j, _) = Journal::open(&dir, JournalConfig::default()).unwrap();
        JournalStore { dir, j: Some(j) }
    }
}

impl Store for JournalStore {
    fn append(&mut self, from: u64, n: u64) {
        let recs = (from..from + n).map(msg).collect();
        self.j.as_ref().unwrap().append(recs).wait().unwrap();
    }
    fn mark_done(&mut self, from: u64, n: u64) {
        let recs = (from..from + n).map(done).collect();
        self.j.as_ref().unwrap().append(recs).wait().unwrap();
    }
    fn reopen_count(&mut self) -> u64 {
        self.j.take();
        let (j, rec) = Journal::open(&self.dir, JournalConfig::default()).unwrap();
        self.j = Some(j);
        rec.unfinished.len() as u64
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");

struct RedbStore {
    path: PathBuf,
    db: Option<redb::Database>,
}

impl RedbStore {
    fn new(dir: PathBuf) -> Self {
        let path = dir.join("db.redb");
        let db = redb::Database::create(&path).unwrap();
        RedbStore { path, db: Some(db) }
    }
    fn write(&mut self, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>), durable: bool) {
        let db = self.db.as_ref().unwrap();
        let mut tx = db.begin_write().unwrap();
        let d = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        tx.set_durability(d).unwrap();
        {
            let mut t = tx.open_table(REDB_TABLE).unwrap();
            f(&mut t);
        }
        tx.commit().unwrap();
    }
}

impl Store for RedbStore {
    fn append(&mut self, from: u64, n: u64) {
        self.write(
            |t| {
                for i in from..from + n {
                    let v = msg(i).encode();
                    t.insert(&id(i).0[..], &v[..]).unwrap();
                }
            },
            true,
        );
    }
    fn mark_done(&mut self, from: u64, n: u64) {
        self.write(
            |t| {
                for i in from..from + n {
                    t.remove(&id(i).0[..]).unwrap();
                }
            },
            true,
        );
    }
    fn reopen_count(&mut self) -> u64 {
        self.db.take();
        let db = redb::Database::create(&self.path).unwrap();
        let n = {
            use redb::{ReadableDatabase, ReadableTable};
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(REDB_TABLE).unwrap();
            let mut n = 0;
            for kv in t.iter().unwrap() {
                let (_, v) = kv.unwrap();
                // Decode like the journal does, so the comparison is fair.
                let body = &v.value()[8..];
                std::hint::black_box(Record::decode_body(body).unwrap());
                n += 1;
            }
            n
        };
        self.db = Some(db);
        n
    }
}

struct FjallStore {
    dir: PathBuf,
    db: Option<(fjall::Database, fjall::Keyspace)>,
}

impl FjallStore {
    fn open(dir: &Path) -> (fjall::Database, fjall::Keyspace) {
        let db = fjall::Database::builder(dir).open().unwrap();
        let ks = db
            .keyspace("messages", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        (db, ks)
    }
    fn new(dir: PathBuf) -> Self {
        let db = Self::open(&dir);
        FjallStore { dir, db: Some(db) }
    }
}

impl Store for FjallStore {
    fn append(&mut self, from: u64, n: u64) {
        let (db, ks) = self.db.as_ref().unwrap();
        let mut b = db.batch().durability(Some(fjall::PersistMode::SyncData));
        for i in from..from + n {
            b.insert(ks, id(i).0.to_vec(), msg(i).encode());
        }
        b.commit().unwrap();
    }
    fn mark_done(&mut self, from: u64, n: u64) {
        let (db, ks) = self.db.as_ref().unwrap();
        let mut b = db.batch().durability(Some(fjall::PersistMode::SyncData));
        for i in from..from + n {
            b.remove(ks, id(i).0.to_vec());
        }
        b.commit().unwrap();
    }
    fn reopen_count(&mut self) -> u64 {
        self.db.take();
        let (db, ks) = Self::open(&self.dir);
        let mut n = 0;
        for kv in ks.iter() {
            let (_, v) = kv.into_inner().unwrap();
            std::hint::black_box(Record::decode_body(&v[8..]).unwrap());
            n += 1;
        }
        self.db = Some((db, ks));
        n
    }
}

fn stores(base: &Path) {
    const STORE_RUNS: usize = 5;
    println!("\n## store candidates: durable append batches, durable mark-done batches, reopen");
    println!("(runs interleaved across stores so that disk noise hits all alike; median of {STORE_RUNS})");
    println!("| store | batch | msgs | append rec/s | mark-done rec/s | disk B/msg | reopen+read ms |");
    println!("|---|---|---|---|---|---|---|");
    let names = ["journal", "redb", "fjall"];
    let sizes = [(1u64, 300u64), (16, 150), (256, 40)];
    // results[size][store] = (append, mark, bytes, reopen) samples
    let mut res = vec![vec![(vec![], vec![], vec![], vec![]); names.len()]; sizes.len()];
    for _ in 0..STORE_RUNS {
        for (si, &(batch, batches)) in sizes.iter().enumerate() {
            for (ni, name) in names.iter().enumerate() {
                let n = batch * batches;
                let dir = fresh(base, name);
                let mut s: Box<dyn Store> = match *name {
                    "journal" => Box::new(JournalStore::new(dir.clone())),
                    "redb" => Box::new(RedbStore::new(dir.clone())),
                    _ => Box::new(FjallStore::new(dir.clone())),
                };
                let r = &mut res[si][ni];
                let t = Instant::now();
                for k in 0..batches {
                    s.append(k * batch, batch);
                }
                r.0.push(n as f64 / t.elapsed().as_secs_f64());
                r.2.push(du(&dir) as f64 / n as f64);
                let t = Instant::now();
                assert_eq!(s.reopen_count(), n);
                r.3.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                for k in 0..batches {
                    s.mark_done(k * batch, batch);
                }
                r.1.push(n as f64 / t.elapsed().as_secs_f64());
                drop(s);
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    for (si, &(batch, batches)) in sizes.iter().enumerate() {
        for (ni, name) in names.iter().enumerate() {
            let (a, m, b, r) = res[si][ni].clone();
            println!(
                "| {name} | {batch} | {} | {:.0} | {:.0} | {:.0} | {:.1} |",
                batch * batches,
                median(a),
                median(m),
                median(b),
                median(r)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// replay of 1M unfinished messages

fn replay(base: &Path) {
    const N: u64 = 1_000_000;
    println!("\n## replay of {N} unfinished 200-byte messages (page cache warm), median of {RUNS}");
    let dir = fresh(base, "replay");
    {
        let cfg = JournalConfig {
            sync: SyncMode::None,
            max_disk_bytes: 8 << 30,
            ..Default::default()
        };
        let (j, _) = Journal::open(&dir, cfg).unwrap();
        let t = Instant::now();
        for k in 0..N / 1000 {
            let batch: Vec<Record> = (k * 1000..(k + 1) * 1000).map(msg).collect();
            // Respect backpressure like the gateway would.
            while let Err(e) = j.append_background(batch.clone()) {
                std::thread::sleep(e.retry_after().expect("only Overloaded is expected"));
            }
        }
        j.close().unwrap();
        println!(
            "journal fill: {:.2} s (sync none), {} MB on disk",
            t.elapsed().as_secs_f64(),
            du(&dir) >> 20
        );
    }
    let mut v = vec![];
    let mut mem = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let (j, rec) = Journal::open(&dir, JournalConfig::default()).unwrap();
        v.push(t.elapsed().as_secs_f64());
        println!(
            "  open {:.3} s, of which scan+rebuild {:.3} s",
            t.elapsed().as_secs_f64(),
            rec.stats.elapsed.as_secs_f64()
        );
        assert_eq!(rec.unfinished.len() as u64, N);
        mem = rec.stats.bytes;
        drop(rec);
        drop(j);
    }
    println!(
        "journal replay: {:.2} s (runs {:?}), {} MB read",
        median(v.clone()),
        v,
        mem >> 20
    );
    {
        // Finish everything, then compact: what stays is the idempotency window (1 h default).
        let cfg = JournalConfig {
            sync: SyncMode::None,
            ..Default::default()
        };
        let (j, _) = Journal::open(&dir, cfg).unwrap();
        let t = Instant::now();
        for k in 0..N / 1000 {
            j.append_background((k * 1000..(k + 1) * 1000).map(done).collect())
                .unwrap();
        }
        j.flush().wait().unwrap();
        let marked = t.elapsed().as_secs_f64();
        let before = du(&dir);
        let t = Instant::now();
        let rep = j.compact_now().wait().unwrap();
        println!(
            "journal mark-done 1M: {marked:.2} s; disk {} MB -> compact_now {:.2} s -> {} MB ({} B/msg kept for the idempotency window, {} records carried)",
            before >> 20,
            t.elapsed().as_secs_f64(),
            du(&dir) >> 20,
            du(&dir) / N,
            rep.records_carried
        );
    }
    let _ = fs::remove_dir_all(&dir);

    let dir = fresh(base, "replay-fjall");
    let mut s = FjallStore::new(dir.clone());
    let t = Instant::now();
    {
        let (db, ks) = s.db.as_ref().unwrap();
        for k in 0..N / 10_000 {
            let mode = if k + 1 == N / 10_000 {
                fjall::PersistMode::SyncData
            } else {
                fjall::PersistMode::Buffer
            };
            let mut b = db.batch().durability(Some(mode));
            for i in k * 10_000..(k + 1) * 10_000 {
                b.insert(ks, id(i).0.to_vec(), msg(i).encode());
            }
            b.commit().unwrap();
        }
    }
    println!(
        "fjall fill: {:.2} s, {} MB on disk",
        t.elapsed().as_secs_f64(),
        du(&dir) >> 20
    );
    let mut v = vec![];
    for _ in 0..RUNS {
        let t = Instant::now();
        assert_eq!(s.reopen_count(), N);
        v.push(t.elapsed().as_secs_f64());
    }
    println!(
        "fjall reopen + read all: {:.2} s (runs {:?}), {} MB on disk",
        median(v.clone()),
        v,
        du(&dir) >> 20
    );
    drop(s);
    let _ = fs::remove_dir_all(&dir);

    let dir = fresh(base, "replay-redb");
    let mut s = RedbStore::new(dir.clone());
    let t = Instant::now();
    for k in 0..N / 10_000 {
        s.write(
            |tb| {
                for i in k * 10_000..(k + 1) * 10_000 {
                    let v = msg(i).encode();
                    tb.insert(&id(i).0[..], &v[..]).unwrap();
                }
            },
            k + 1 == N / 10_000,
        );
    }
    println!(
        "redb fill: {:.2} s, {} MB on disk",
        t.elapsed().as_secs_f64(),
        du(&dir) >> 20
    );
    let mut v = vec![];
    for _ in 0..RUNS {
        let t = Instant::now();
        assert_eq!(s.reopen_count(), N);
        v.push(t.elapsed().as_secs_f64());
    }
    println!(
        "redb reopen + read all: {:.2} s (runs {:?})",
        median(v.clone()),
        v
    );
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// group commit under concurrency

/// `threads` appenders for `dur`; returns (appends/s, syncs/s, records per sync, p50 µs, p99 µs).
fn run_appenders(base: &Path, threads: u64, cfg: JournalConfig, dur: Duration) -> [f64; 5] {
    let dir = fresh(base, "conc");
    let (j, _) = Journal::open(&dir, cfg).unwrap();
    let j = Arc::new(j);
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(4096);
                let mut k = 0u64;
                while start.elapsed() < dur {
                    let r = msg(t << 40 | k);
                    let t0 = Instant::now();
                    j.append(vec![r]).wait().unwrap();
                    lat.push(t0.elapsed().as_micros() as u64);
                    k += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let el = start.elapsed().as_secs_f64();
    let st = j.stats();
    lat.sort_unstable();
    drop(j);
    let _ = fs::remove_dir_all(&dir);
    [
        lat.len() as f64 / el,
        st.syncs as f64 / el,
        st.records as f64 / st.syncs.max(1) as f64,
        lat[lat.len() / 2] as f64,
        lat[lat.len() * 99 / 100] as f64,
    ]
}

fn row(label: &str, samples: &[[f64; 5]]) {
    let col = |i: usize| median(samples.iter().map(|s| s[i]).collect());
    println!(
        "| {label} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
}

fn concurrency(base: &Path) {
    println!(
        "\n## durable appends of one 200-byte message per call, fdatasync group commit (median of {RUNS} x 2 s)"
    );
    println!("| appenders | appends/s | syncs/s | records per sync | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for threads in [1u64, 8, 64] {
        let v: Vec<[f64; 5]> = (0..RUNS)
            .map(|_| run_appenders(base, threads, JournalConfig::default(), Duration::from_secs(2)))
            .collect();
        row(&threads.to_string(), &v);
    }
}

fn prealloc(base: &Path) {
    println!(
        "\n## preallocated (sparse, fixed-size) segments vs growing files, runs interleaved, median of 5 x 1 s"
    );
    println!("| appenders, preallocate | appends/s | syncs/s | records per sync | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for threads in [1u64, 8] {
        let mut res = [vec![], vec![]];
        for _ in 0..5 {
            for (i, preallocate) in [false, true].into_iter().enumerate() {
                let cfg = JournalConfig {
                    preallocate,
                    ..Default::default()
                };
                res[i].push(run_appenders(base, threads, cfg, Duration::from_secs(1)));
            }
        }
        row(&format!("{threads}, false"), &res[0]);
        row(&format!("{threads}, true"), &res[1]);
    }
}
