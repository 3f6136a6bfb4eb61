//! Behaviour of the device store through its public API.

use std::collections::BTreeSet;

use waping_store::{Batch, DeviceId, Fault, MAX_KEY_BYTES, Ns, Store, StoreError, StoreOptions};

const CREDS: Ns = Ns::new(1);
const SESSIONS: Ns = Ns::new(2);

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("state/devices.redb"), StoreOptions::default()).unwrap()
}

fn id(w: &str, d: &str) -> DeviceId {
    DeviceId {
        workspace: w.into(),
        device: d.into(),
    }
}

#[test]
fn data_survives_reopen_and_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let err = Store::open(store.path(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.retryable());
        assert_eq!(err.fault(), Fault::Operator);

        let d = store.device("w1", "d1").unwrap();
        d.put_blocking(CREDS, b"identity", b"id-bytes").unwrap();
        d.put_blocking(SESSIONS, b"peer", b"session").unwrap();
        store
            .device("w2", "d9")
            .unwrap()
            .put_blocking(CREDS, b"identity", b"other")
            .unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.list_devices().unwrap(),
        vec![id("w1", "d1"), id("w2", "d9")]
    );
    let d = store.device("w1", "d1").unwrap();
    assert_eq!(d.get(CREDS, b"identity").unwrap().unwrap(), b"id-bytes");
    assert_eq!(d.get(SESSIONS, b"peer").unwrap().unwrap(), b"session");
    assert_eq!(d.get(SESSIONS, b"identity").unwrap(), None);

    d.delete_device_blocking().unwrap();
    assert_eq!(d.get(CREDS, b"identity").unwrap(), None);
    assert_eq!(store.list_devices().unwrap(), vec![id("w2", "d9")]);
    drop((d, store));
    let store = open(&dir);
    assert_eq!(store.list_devices().unwrap(), vec![id("w2", "d9")]);
}

#[test]
fn file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mode = std::fs::metadata(store.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

#[test]
fn adversarial_ids_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let pairs = [("a", "b/c"), ("a/b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")];
    for (w, d) in pairs {
        let dev = store.device(w, d).unwrap();
        dev.put_blocking(CREDS, b"", format!("{w}|{d}").as_bytes())
            .unwrap();
        dev.put_blocking(CREDS, b"\x00", b"zero").unwrap();
        dev.put_blocking(CREDS, b"\xff\xff", b"ff").unwrap();
    }
    for (w, d) in pairs {
        let page = store
            .device(w, d)
            .unwrap()
            .scan_prefix(CREDS, b"", None, 100)
            .unwrap();
        assert_eq!(
            page.entries,
            vec![
                (b"".to_vec(), format!("{w}|{d}").into_bytes()),
                (b"\x00".to_vec(), b"zero".to_vec()),
                (b"\xff\xff".to_vec(), b"ff".to_vec()),
            ],
            "{w} {d}"
        );
        assert_eq!(page.next, None);
    }
    // Deleting ("a", "b") must not touch ("a", "bc") or ("a", "b/c"); deleting workspace "a"
    // must not touch "a/b" or "ab".
    store.device("a", "b").unwrap().delete_device_blocking().unwrap();
    let left: BTreeSet<_> = store.list_devices().unwrap().into_iter().collect();
    assert_eq!(left.len(), 4);
    assert!(!left.contains(&id("a", "b")));
    store.delete_workspace_blocking("a").unwrap();
    assert_eq!(store.list_devices().unwrap(), vec![id("a/b", "c"), id("ab", "c")]);
    for (w, d) in [("a/b", "c"), ("ab", "c")] {
        let got = store.device(w, d).unwrap().get(CREDS, b"").unwrap();
        assert_eq!(got.unwrap(), format!("{w}|{d}").as_bytes());
    }
    assert_eq!(store.device("a", "b/c").unwrap().get(CREDS, b"").unwrap(), None);
}

#[test]
fn scan_pages_are_bounded_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("devices.redb"),
        StoreOptions {
            max_page_entries: 100,
            max_page_bytes: 10_000,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let d = store.device("w", "d").unwrap();
    let mut batch = Batch::new();
    for i in 0..250u32 {
        batch.put(SESSIONS, format!("peer:{i:04}"), vec![b'v'; 10]);
        batch.put(SESSIONS, format!("zzz:{i:04}"), vec![b'z'; 10]);
    }
    d.apply_blocking(&batch).unwrap();

    // Asking for 1000 gets max_page_entries.
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = d.scan_prefix(SESSIONS, b"peer:", after.as_deref(), 1000).unwrap();
        assert!(page.entries.len() <= 100);
        pages += 1;
        keys.extend(page.entries.into_iter().map(|(k, _)| k));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<Vec<u8>> = (0..250u32).map(|i| format!("peer:{i:04}").into_bytes()).collect();
    assert_eq!(keys, want);

    // The byte bound ends a page early but always makes progress.
    let big = vec![b'b'; 6_000];
    d.put_blocking(CREDS, b"big1", &big).unwrap();
    d.put_blocking(CREDS, b"big2", &big).unwrap();
    let page = d.scan_prefix(CREDS, b"big", None, 10).unwrap();
    assert_eq!(page.entries.len(), 2);
    let page = d.scan_prefix(CREDS, b"big", None, 1).unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next.as_deref(), Some(&b"big1"[..]));
    d.put_blocking(CREDS, b"big3", &big).unwrap();
    let page = d.scan_prefix(CREDS, b"big", None, 10).unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.next.as_deref(), Some(&b"big2"[..]));
}

#[test]
fn limits_are_caller_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("devices.redb"),
        StoreOptions {
            max_value_bytes: 100,
            max_batch_bytes: 150,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let d = store.device("w", "d").unwrap();
    let err = d.put_blocking(CREDS, &[0; MAX_KEY_BYTES + 1], b"v").unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { what: "key", .. }));
    assert_eq!(err.fault(), Fault::Caller);
    let err = d.put_blocking(CREDS, b"k", &[0; 101]).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { what: "value", .. }));
    let mut batch = Batch::new();
    batch.put(CREDS, "a", vec![0; 80]).put(CREDS, "b", vec![0; 80]);
    let err = d.apply_blocking(&batch).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { what: "batch", .. }));
    assert!(matches!(
        store.device("", "d"),
        Err(StoreError::InvalidId {
            what: "workspace",
            ..
        })
    ));
    assert!(matches!(
        store.device("w", &"d".repeat(256)),
        Err(StoreError::InvalidId { what: "device", .. })
    ));
    assert_eq!(store.stats().requests, 0);
    assert!(store.list_devices().unwrap().is_empty());
}

#[test]
fn batches_are_atomic_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let d = store.device("w", "d").unwrap();
    d.put_blocking(CREDS, b"old", b"1").unwrap();
    let mut batch = Batch::new();
    batch
        .put(CREDS, "k", "first")
        .put(CREDS, "k", "second")
        .delete(CREDS, "old")
        .put(SESSIONS, "s", "x")
        .delete(SESSIONS, "s");
    d.apply_blocking(&batch).unwrap();
    assert_eq!(d.get(CREDS, b"k").unwrap().unwrap(), b"second");
    assert_eq!(d.get(CREDS, b"old").unwrap(), None);
    assert_eq!(d.get(SESSIONS, b"s").unwrap(), None);
    assert_eq!(store.stats().requests, 2);
}

#[test]
fn garbage_file_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Storage);
    assert!(!err.retryable());
}

#[test]
fn damaged_pages_are_reported_when_verifying_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let d = store.device("w", "d").unwrap();
        let mut batch = Batch::new();
        for i in 0..500u32 {
            batch.put(CREDS, format!("k{i:04}"), vec![0xab; 300]);
        }
        d.apply_blocking(&batch).unwrap();
    }
    // Flip bytes in the middle of the data pages (past the header region).
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(300)
        .position(|w| w.iter().all(|&b| b == 0xab))
        .unwrap();
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let opts = StoreOptions {
        verify_on_open: true,
        ..StoreOptions::default()
    };
    let err = Store::open(&path, opts).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Storage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits_and_are_durable_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.redb");
    const TASKS: usize = 64;
    const PER_TASK: usize = 40;
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let d = store.device("w", &format!("dev{}", t % 8)).unwrap();
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let key = format!("t{t}:{i}");
                    d.put(CREDS, key.as_bytes(), key.as_bytes()).await.unwrap();
                    // Durable on return also means visible on return.
                    assert_eq!(d.get(CREDS, key.as_bytes()).unwrap().unwrap(), key.as_bytes());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.requests, (TASKS * PER_TASK) as u64);
        assert!(
            stats.commits < stats.requests,
            "no group commit happened: {stats:?}"
        );
    }
    // Reopen (all handles dropped: file released) and check everything is there.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.list_devices().unwrap().len(), 8);
    for t in 0..TASKS {
        let d = store.device("w", &format!("dev{}", t % 8)).unwrap();
        for i in 0..PER_TASK {
            let key = format!("t{t}:{i}");
            assert_eq!(d.get(CREDS, key.as_bytes()).unwrap().unwrap(), key.as_bytes());
        }
    }
}
