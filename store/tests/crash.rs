//! Crash safety: a child process writing through the store is killed with SIGKILL; after
//! reopening, every write it reported as acknowledged must be there.
//!
//! The child is this test binary re-executed on the ignored test `crash_child`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use waping_store::{Batch, Ns, Store, StoreOptions};

const NS: Ns = Ns::new(3);
const CHILD_DIR: &str = "WAPING_STORE_CRASH_DIR";
const CHILD_ROUND: &str = "WAPING_STORE_CRASH_ROUND";
const TASKS: usize = 24;

/// Deterministic value of write `i` of task `t` in round `r`: 100..2000 bytes.
fn value(r: u32, t: usize, i: u64) -> Vec<u8> {
    let seed = (r as u64) << 40 ^ (t as u64) << 24 ^ i;
    let len = 100 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 53) as usize % 1900;
    (0..len).map(|j| (seed as usize + j * 31) as u8).collect()
}

fn key(r: u32, t: usize, i: u64) -> Vec<u8> {
    format!("r{r}/t{t}/{i:08}").into_bytes()
}

/// Every 10th step of a task also deletes its key from 5 steps back; which keys get a delete
/// is fixed, so the parent knows them.
fn deleted_later(i: u64) -> bool {
    i % 10 == 4
}

#[test]
#[ignore = "child process of kill_9_loses_no_acknowledged_write; does nothing on its own"]
fn crash_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) else {
        return;
    };
    let round: u32 = round.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open(Path::new(&dir).join("devices.redb"), StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let dev = store.device("w", &format!("d{}", t % 6)).unwrap();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    if i % 7 == 6 {
                        // Some writes go in as two-key batches.
                        let mut b = Batch::new();
                        b.put(NS, key(round, t, i), value(round, t, i));
                        b.put(NS, [&key(round, t, i)[..], b"+"].concat(), vec![1; 10]);
                        dev.apply(&b).await.unwrap();
                    } else {
                        dev.put(NS, &key(round, t, i), &value(round, t, i)).await.unwrap();
                    }
                    ack(&format!("put {t} {i}"));
                    if i % 10 == 9 {
                        let d = i - 5;
                        assert!(deleted_later(d));
                        dev.delete(NS, &key(round, t, d)).await.unwrap();
                        ack(&format!("del {t} {d}"));
                    }
                }
            }));
        }
        // Bounded in case the parent never kills us.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        std::process::exit(2);
    });
}

fn ack(line: &str) {
    // One write(2) per line; a pipe keeps what was written when the writer is killed.
    let mut out = std::io::stdout().lock();
    out.write_all(format!("ack {line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

#[derive(Default)]
struct Acks {
    puts: BTreeMap<(usize, u64), ()>,
    dels: BTreeMap<(usize, u64), ()>,
}

fn run_child(dir: &Path, round: u32, kill_after: usize) -> Acks {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "-q",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("child-{round}.stderr"))).unwrap())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut seen = 0;
    let mut line = String::new();
    while seen < kill_after {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            let stderr = std::fs::read_to_string(dir.join(format!("child-{round}.stderr")));
            panic!("child exited before {kill_after} acknowledgements:\n{text}\n{stderr:?}");
        }
        seen += line.matches("ack ").count();
        text.push_str(&line);
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    reader.read_to_string(&mut text).unwrap();

    let mut acks = Acks::default();
    // Only complete lines count; the harness may print around them.
    let complete = &text[..text.rfind('\n').map_or(0, |p| p + 1)];
    for part in complete.split("ack ").skip(1) {
        let line = part.lines().next().unwrap();
        let mut f = line.split(' ');
        let kind = f.next().unwrap();
        let t: usize = f.next().unwrap().parse().unwrap();
        let i: u64 = f.next().unwrap().parse().unwrap();
        match kind {
            "put" => acks.puts.insert((t, i), ()),
            "del" => acks.dels.insert((t, i), ()),
            other => panic!("bad ack {other}"),
        };
    }
    acks
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut rounds = Vec::new();
    for (round, kill_after) in [(0u32, 400usize), (1, 150), (2, 700)] {
        let acks = run_child(dir.path(), round, kill_after);
        assert!(acks.puts.len() >= kill_after / 2);
        rounds.push(acks);

        // Every round so far, checked after this crash (repair must not lose older data).
        let store = Store::open(dir.path().join("devices.redb"), StoreOptions::default()).unwrap();
        let mut checked = 0;
        for (r, acks) in rounds.iter().enumerate() {
            let r = r as u32;
            for &(t, i) in acks.puts.keys() {
                let dev = store.device("w", &format!("d{}", t % 6)).unwrap();
                let got = dev.get(NS, &key(r, t, i)).unwrap();
                if acks.dels.contains_key(&(t, i)) {
                    assert_eq!(got, None, "acknowledged delete r{r} t{t} {i} is back");
                } else if deleted_later(i) {
                    // Its delete may or may not have committed before the kill.
                    assert!(got.is_none() || got == Some(value(r, t, i)));
                } else {
                    assert_eq!(got, Some(value(r, t, i)), "acknowledged put r{r} t{t} {i} lost");
                    if i % 7 == 6 {
                        let pair = dev.get(NS, &[&key(r, t, i)[..], b"+"].concat()).unwrap();
                        assert_eq!(pair, Some(vec![1; 10]), "half a batch r{r} t{t} {i}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
        assert_eq!(store.list_devices().unwrap().len(), 6);
    }
}
