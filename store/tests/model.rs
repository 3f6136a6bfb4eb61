//! Property test: random operation sequences over several devices against a `BTreeMap` model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use waping_store::{Batch, DeviceId, Ns, Store, StoreOptions};

/// Pairs that collide under naive concatenation, so isolation bugs show up as model mismatches.
const DEVICES: [(&str, &str); 4] = [("a", "b/c"), ("a/b", "c"), ("a", "bc"), ("ab", "c")];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8, Vec<u8>, Vec<u8>),
    Delete(usize, u8, Vec<u8>),
    Batch(usize, Vec<(u8, Vec<u8>, Option<Vec<u8>>)>),
    DeleteDevice(usize),
    Get(usize, u8, Vec<u8>),
    Scan(usize, u8, Vec<u8>, usize),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct bytes, short keys: many collisions, prefixes, and 0x00/0xff edges.
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..DEVICES.len();
    let ns = 0u8..3;
    prop_oneof![
        6 => (dev.clone(), ns.clone(), key(), value()).prop_map(|(d, n, k, v)| Op::Put(d, n, k, v)),
        3 => (dev.clone(), ns.clone(), key()).prop_map(|(d, n, k)| Op::Delete(d, n, k)),
        2 => (
            dev.clone(),
            prop::collection::vec((ns.clone(), key(), prop::option::of(value())), 0..6)
        )
            .prop_map(|(d, ops)| Op::Batch(d, ops)),
        1 => dev.clone().prop_map(Op::DeleteDevice),
        3 => (dev.clone(), ns.clone(), key()).prop_map(|(d, n, k)| Op::Get(d, n, k)),
        3 => (dev.clone(), ns.clone(), prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..2), 1usize..4)
            .prop_map(|(d, n, p, l)| Op::Scan(d, n, p, l)),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<(usize, u8, Vec<u8>), Vec<u8>>;

fn check_scan(store: &Store, model: &Model, d: usize, ns: u8, prefix: &[u8], limit: usize) {
    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .range((d, ns, prefix.to_vec())..)
        .take_while(|((md, mn, k), _)| *md == d && *mn == ns && k.starts_with(prefix))
        .map(|((_, _, k), v)| (k.clone(), v.clone()))
        .collect();
    let mut got = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = dev
            .scan_prefix(Ns::new(ns), prefix, after.as_deref(), limit)
            .unwrap();
        assert!(page.entries.len() <= limit);
        // `next` is set exactly when something is left.
        let done = got.len() + page.entries.len();
        assert_eq!(page.next.is_some(), done < want.len(), "page {page:?}");
        got.extend(page.entries);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.redb");
        let mut store = Store::open(&path, StoreOptions::default()).unwrap();
        let mut model = Model::new();
        let mut registered = BTreeSet::new();
        for op in ops {
            match op {
                Op::Put(d, n, k, v) => {
                    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
                    dev.put_blocking(Ns::new(n), &k, &v).unwrap();
                    model.insert((d, n, k), v);
                    registered.insert(d);
                }
                Op::Delete(d, n, k) => {
                    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
                    dev.delete_blocking(Ns::new(n), &k).unwrap();
                    model.remove(&(d, n, k));
                }
                Op::Batch(d, ops) => {
                    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
                    let mut batch = Batch::new();
                    for (n, k, v) in &ops {
                        match v {
                            Some(v) => batch.put(Ns::new(*n), k.clone(), v.clone()),
                            None => batch.delete(Ns::new(*n), k.clone()),
                        };
                    }
                    dev.apply_blocking(&batch).unwrap();
                    for (n, k, v) in ops {
                        match v {
                            Some(v) => {
                                model.insert((d, n, k), v);
                                registered.insert(d);
                            }
                            None => {
                                model.remove(&(d, n, k));
                            }
                        }
                    }
                }
                Op::DeleteDevice(d) => {
                    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
                    dev.delete_device_blocking().unwrap();
                    model.retain(|(md, _, _), _| *md != d);
                    registered.remove(&d);
                }
                Op::Get(d, n, k) => {
                    let dev = store.device(DEVICES[d].0, DEVICES[d].1).unwrap();
                    prop_assert_eq!(dev.get(Ns::new(n), &k).unwrap(), model.get(&(d, n, k)).cloned());
                }
                Op::Scan(d, n, p, limit) => check_scan(&store, &model, d, n, &p, limit),
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&path, StoreOptions::default()).unwrap();
                }
            }
            let mut want: Vec<DeviceId> = registered
                .iter()
                .map(|&d| DeviceId { workspace: DEVICES[d].0.into(), device: DEVICES[d].1.into() })
                .collect();
            want.sort();
            prop_assert_eq!(store.list_devices().unwrap(), want);
        }
        // Final full comparison, after a reopen.
        drop(store);
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for d in 0..DEVICES.len() {
            for n in 0..3 {
                check_scan(&store, &model, d, n, b"", 3);
            }
        }
    }
}
