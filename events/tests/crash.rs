//! A real crash: a child process (this test binary, re-executed) appends events from several
//! tasks and prints every append as soon as it is acknowledged; the parent SIGKILLs it in the
//! middle of that, reopens the store and checks that every acknowledged event is there with
//! its deliveries, and that sequence numbers are dense. Three rounds on the same file.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use waping_events::{
    DeviceState, DeviceStateChange, Event, EventData, EventId, EventStore, NewEvent, StoreOptions,
};

const CHILD_ENV: &str = "WAPING_EVENTS_CRASH_CHILD";
const TASKS: u64 = 8;
const SHARED_ENDPOINT: u64 = 1000;
const ACKS_BEFORE_KILL: usize = 200;

/// Runs only inside the child: appends until killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = EventStore::open(&path, StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let batch: Vec<NewEvent> = (0..1 + i % 3)
                        .map(|_| NewEvent {
                            event: Event::new(
                                "acme",
                                Some(format!("d{t}")),
                                1_795_705_445_000 + i,
                                EventData::DeviceState(DeviceStateChange {
                                    state: DeviceState::Connected,
                                    detail: Some(format!("task {t} append {i}")),
                                    until_ms: None,
                                }),
                            ),
                            endpoints: vec![t, SHARED_ENDPOINT],
                        })
                        .collect();
                    let appended = match store.append(batch).await {
                        Ok(a) => a,
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(3);
                        }
                    };
                    let mut out = std::io::stdout().lock();
                    for a in appended {
                        writeln!(out, "ACK {} {} {t}", a.seq, a.id).unwrap();
                    }
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Ack {
    seq: u64,
    id: EventId,
    task: u64,
}

/// Starts a child on `path`, kills it after `ACKS_BEFORE_KILL` acknowledgements, and returns
/// every acknowledgement it printed before it died.
fn run_and_kill(path: &Path) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks = Vec::new();
    let parse = |line: &str| -> Option<Ack> {
        let mut f = line.strip_prefix("ACK ")?.split(' ');
        Some(Ack {
            seq: f.next()?.parse().ok()?,
            id: f.next()?.parse().ok()?,
            task: f.next()?.parse().ok()?,
        })
    };
    while acks.len() < ACKS_BEFORE_KILL {
        match lines.next() {
            Some(line) => acks.extend(parse(&line.unwrap())),
            None => {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("child ended after {} acks: {err}", acks.len());
            }
        }
    }
    // SIGKILL: no destructor, no clean shutdown of the database.
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines already in the pipe were acknowledged before the kill, too.
    for line in lines {
        acks.extend(parse(&line.unwrap()));
    }
    acks
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let mut all = Vec::new();
    for round in 0..3 {
        let acks = run_and_kill(&path);
        assert!(acks.len() >= ACKS_BEFORE_KILL);
        let store = EventStore::open(&path, StoreOptions::default()).unwrap();
        let head = store.head();
        for a in &acks {
            assert!(
                a.seq <= head,
                "round {round}: acked seq {} above head {head}",
                a.seq
            );
            let stored = store
                .get(a.seq)
                .unwrap()
                .unwrap_or_else(|| panic!("seq {} lost", a.seq));
            assert_eq!(stored.event.unwrap().id, a.id, "round {round}, seq {}", a.seq);
            for ep in [a.task, SHARED_ENDPOINT] {
                let p = store.owed(ep, a.seq, 1).unwrap();
                assert_eq!(
                    p.first().map(|p| p.seq),
                    Some(a.seq),
                    "delivery {ep}/{} lost",
                    a.seq
                );
            }
        }
        // Dense: every number up to the head is an event (acknowledged or committed just
        // before the kill), each with its two deliveries.
        let stats = store.stats().unwrap();
        println!("round {round}: {} acknowledged, head {head}", acks.len());
        for seq in 1..=head {
            assert!(
                store.get(seq).unwrap().is_some(),
                "round {round}: seq {seq} missing"
            );
        }
        assert_eq!(stats.pending, 2 * head, "round {round}");
        all.extend(acks);
        drop(store);
    }
    let store = EventStore::open(&path, StoreOptions::default()).unwrap();
    for a in &all {
        assert_eq!(store.get(a.seq).unwrap().unwrap().event.unwrap().id, a.id);
    }
}
