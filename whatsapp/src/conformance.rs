//! Conformance suite for [`DeviceKv`] implementations (cargo feature `conformance`).
//!
//! Proves that whatsapp-rust's storage `Backend` over a given `DeviceKv` ([`KvBackend`])
//! behaves like the crate's own reference `InMemoryBackend`, and that the `DeviceKv` itself
//! behaves like [`MemoryKv`]. Used by this crate's tests (over `MemoryKv`) and by the
//! gateway's (over its device store), so the production storage path is checked by the same
//! sequences as the reference one.
//!
//! Every function panics on the first difference, naming the observation, seed and step:
//! these are test helpers, never called by the gateway at run time. Device ids are
//! `"workspace/device"`, the form the gateway's store adapter requires.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::{
    AppStateSyncKey, Backend, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry,
    ProtocolStore, SignalStore, TcTokenEntry,
};

use crate::backend::{KvBackend, NAMESPACES, stored_devices};
use crate::kv::{DeviceKv, KvBatch, KvOp, MemoryKv};

/// Device id of the single-device checks.
pub const DEVICE: &str = "ws/dev-1";

/// Devices of the isolation checks: as plain strings "w/sa" and "ws/a" differ only in where
/// the separator sits, and "ws/a" is a string prefix of "ws/ab".
pub const DEVICES: [&str; 3] = ["ws/a", "ws/ab", "w/sa"];

/// Every stored row, by namespace and full key (device prefix included).
pub type Rows = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

/// The key prefix [`KvBackend`] gives device `id`: its id with a 4-byte big-endian length.
pub fn device_prefix(id: &str) -> Vec<u8> {
    let mut v = (id.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(id.as_bytes());
    v
}

/// Asserts that `rows` is strictly ascending by key and every key starts with `prefix`.
fn assert_scan_shape(ns: &str, prefix: &[u8], rows: &[(Vec<u8>, Vec<u8>)]) {
    for w in rows.windows(2) {
        assert!(w[0].0 < w[1].0, "{ns}: scan of {prefix:?} not strictly ascending");
    }
    for (k, _) in rows {
        assert!(k.starts_with(prefix), "{ns}: scan of {prefix:?} returned {k:?}");
    }
}

/// Every row of every namespace [`KvBackend`] uses, read through `kv`'s own scans (an empty
/// prefix, i.e. across all devices, as `stored_devices` reads).
pub async fn snapshot(kv: &dyn DeviceKv) -> Rows {
    let mut rows = Rows::new();
    for ns in NAMESPACES {
        let scanned = kv.scan_prefix(ns, b"").await.expect("scan every device");
        assert_scan_shape(ns, b"", &scanned);
        for (k, v) in scanned {
            rows.insert((ns, k), v);
        }
    }
    rows
}

/// The rows of `rows` whose key belongs to device `id`.
fn rows_of(rows: &Rows, id: &str) -> Rows {
    let p = device_prefix(id);
    rows.iter()
        .filter(|((_, k), _)| k.starts_with(&p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Small deterministic generator (SplitMix64): the sequences only need to be varied and
/// reproducible from their seed, and the crate has no random-number dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, of: &'a [T]) -> &'a T {
        &of[self.below(of.len() as u64) as usize]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn lid_key(e: &LidPnMappingEntry) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        e.lid, e.phone_number, e.created_at, e.updated_at, e.learning_source
    )
}

fn tc(e: &Option<TcTokenEntry>) -> String {
    format!(
        "{:?}",
        e.as_ref()
            .map(|e| (&e.token, e.token_timestamp, e.sender_timestamp))
    )
}

/// Runs a fixed script covering every trait method on a fresh device; returns one line per
/// observation.
pub async fn script(b: &dyn Backend) -> Vec<String> {
    let mut out = Vec::new();
    let now = whatsapp_rust::wacore::time::now_secs();
    macro_rules! obs {
        ($e:expr) => {
            out.push(format!("{}: {:?}", stringify!($e), $e));
        };
    }

    // Device lifecycle.
    obs!(b.exists().await.unwrap());
    obs!(b.create().await.unwrap());
    obs!(b.exists().await.unwrap());
    let mut dev = b.load().await.unwrap().expect("device after create");
    dev.push_name = "gateway".into();
    dev.registration_id = 4242;
    dev.pn = Some("15551234567@s.whatsapp.net".parse().unwrap());
    b.save(&dev).await.unwrap();
    let loaded = b.load().await.unwrap().unwrap();
    // The persisted form of the device must survive the round trip unchanged.
    obs!(serde_json::to_string(&loaded).unwrap() == serde_json::to_string(&dev).unwrap());
    obs!((
        loaded.push_name.clone(),
        loaded.registration_id,
        loaded.pn.as_ref().map(|j| j.to_string())
    ));

    // Identities and sessions.
    b.put_identity("111@s.whatsapp.net", [1; 32]).await.unwrap();
    b.put_identities_batch(&[
        (Arc::from("111:2@s.whatsapp.net"), [2; 32]),
        (Arc::from("222@lid"), [3; 32]),
    ])
    .await
    .unwrap();
    obs!(b.load_identity("111:2@s.whatsapp.net").await.unwrap());
    obs!(b.load_identity("nobody@s.whatsapp.net").await.unwrap());
    b.delete_identity("222@lid").await.unwrap();
    obs!(b.load_identity("222@lid").await.unwrap());
    b.put_session("111@s.whatsapp.net", b"s1").await.unwrap();
    b.put_sessions_batch(&[
        (Arc::from("333:5@lid"), Bytes::from_static(b"s2")),
        (Arc::from("111@s.whatsapp.net"), Bytes::from_static(b"s1b")),
    ])
    .await
    .unwrap();
    obs!(b.get_session("111@s.whatsapp.net").await.unwrap());
    obs!(b.has_session("333:5@lid").await.unwrap());
    obs!(b.has_session("333@lid").await.unwrap());
    for user in ["111", "11", "333", "1111", "222", "44"] {
        out.push(format!(
            "has_signal_state_for_user({user}) = {:?}",
            b.has_signal_state_for_user(user).await.unwrap()
        ));
    }
    b.delete_session("333:5@lid").await.unwrap();
    obs!(b.get_session("333:5@lid").await.unwrap());
    obs!(b.has_signal_state_for_user("333").await.unwrap());
    // An empty session record is a value like any other (a store must not drop it).
    b.put_session("444@lid", b"").await.unwrap();
    obs!(b.get_session("444@lid").await.unwrap());
    obs!(b.has_session("444@lid").await.unwrap());

    // Pre-keys.
    obs!(b.get_max_prekey_id().await.unwrap());
    b.store_prekey(7, b"pk7", false).await.unwrap();
    b.store_prekeys_batch(
        &[
            (300, Bytes::from_static(b"pk300")),
            (2, Bytes::from_static(b"pk2")),
        ],
        true,
    )
    .await
    .unwrap();
    obs!(b.get_max_prekey_id().await.unwrap());
    obs!(b.load_prekey(300).await.unwrap());
    obs!(b.load_prekeys_batch(&[2, 3, 7, 300]).await.unwrap());
    b.remove_prekey(300).await.unwrap();
    b.mark_prekeys_uploaded(&[7, 300]).await.unwrap();
    obs!(b.load_prekey(300).await.unwrap());
    obs!(b.load_prekey(7).await.unwrap());
    obs!(b.get_max_prekey_id().await.unwrap());
    b.store_signed_prekey(1, b"spk1").await.unwrap();
    b.store_signed_prekey(9, b"spk9").await.unwrap();
    obs!(b.load_signed_prekey(9).await.unwrap());
    obs!(sorted(b.load_all_signed_prekeys().await.unwrap()));
    b.remove_signed_prekey(1).await.unwrap();
    obs!(sorted(b.load_all_signed_prekeys().await.unwrap()));

    // Sender keys.
    b.put_sender_key("g1::111:2", b"sk").await.unwrap();
    b.put_sender_keys_batch(&[(Arc::from("g1::222"), Bytes::from_static(b"sk2"))])
        .await
        .unwrap();
    obs!(b.get_sender_key("g1::222").await.unwrap());
    b.delete_sender_key("g1::222").await.unwrap();
    obs!(b.get_sender_key("g1::222").await.unwrap());

    // App state.
    obs!(b.get_latest_sync_key_id().await.unwrap());
    let key = AppStateSyncKey {
        key_data: vec![1, 2],
        fingerprint: vec![3],
        timestamp: 99,
    };
    b.set_sync_key(b"k1", key.clone()).await.unwrap();
    b.set_sync_key(b"k0", AppStateSyncKey { timestamp: 7, ..key })
        .await
        .unwrap();
    obs!(
        b.get_sync_key(b"k1")
            .await
            .unwrap()
            .map(|k| (k.key_data, k.fingerprint, k.timestamp))
    );
    obs!(b.get_sync_key(b"zz").await.unwrap().is_some());
    obs!(b.get_latest_sync_key_id().await.unwrap());
    let v0 = b.get_version("regular").await.unwrap();
    obs!((v0.version, v0.index_value_map.len()));
    let mut hs = HashState {
        version: 12,
        ..Default::default()
    };
    hs.hash[0] = 0xAB;
    hs.index_value_map.insert("idx".into(), vec![9]);
    b.set_version("regular", hs).await.unwrap();
    let v1 = b.get_version("regular").await.unwrap();
    obs!((v1.version, v1.hash[0], v1.index_value_map.get("idx").cloned()));
    let macs = |pairs: &[(&[u8], &[u8])]| -> Vec<AppStateMutationMAC> {
        pairs
            .iter()
            .map(|(i, v)| AppStateMutationMAC {
                index_mac: i.to_vec(),
                value_mac: v.to_vec(),
            })
            .collect()
    };
    b.put_mutation_macs("regular", 1, &macs(&[(b"i1", b"v1"), (b"i2", b"v2")]))
        .await
        .unwrap();
    b.put_mutation_macs("critical", 1, &macs(&[(b"i1", b"c1")]))
        .await
        .unwrap();
    obs!(b.get_mutation_mac("regular", b"i1").await.unwrap());
    obs!(b.get_mutation_mac("critical", b"i1").await.unwrap());
    // Index MACs are binary; all-0xff bytes probe the end bound of a store's prefix scan.
    let mut idx = [[0u8; 32]; 2];
    idx[0][0] = 1;
    idx[1] = [0xff; 32];
    b.put_mutation_macs("regular", 2, &macs(&[(&idx[0], b"v32"), (&idx[1], b"vff")]))
        .await
        .unwrap();
    obs!(sorted(
        b.get_mutation_macs("regular", &idx)
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>()
    ));
    b.delete_mutation_macs("regular", &[b"i2".to_vec()])
        .await
        .unwrap();
    obs!(b.get_mutation_mac("regular", b"i2").await.unwrap());
    b.clear_mutation_macs("regular").await.unwrap();
    obs!(b.get_mutation_mac("regular", b"i1").await.unwrap());
    obs!(b.get_mutation_mac("regular", &idx[1]).await.unwrap());
    obs!(b.get_mutation_mac("critical", b"i1").await.unwrap());

    // Sender-key device tracking.
    b.set_sender_key_status("g1@g.us", &[("a:1@lid", true), ("b:2@lid", false)])
        .await
        .unwrap();
    b.set_sender_key_status("g2@g.us", &[("a:1@lid", true)])
        .await
        .unwrap();
    b.set_sender_key_status("g1@g.us", &[("b:2@lid", true)])
        .await
        .unwrap();
    obs!(sorted(b.get_sender_key_devices("g1@g.us").await.unwrap()));
    b.delete_sender_key_device_rows(&["a:1@lid"]).await.unwrap();
    obs!(sorted(b.get_sender_key_devices("g1@g.us").await.unwrap()));
    obs!(sorted(b.get_sender_key_devices("g2@g.us").await.unwrap()));
    b.clear_sender_key_devices("g1@g.us").await.unwrap();
    obs!(b.get_sender_key_devices("g1@g.us").await.unwrap());
    b.set_sender_key_status("g3@g.us", &[("c@lid", false)])
        .await
        .unwrap();
    b.clear_all_sender_key_devices().await.unwrap();
    obs!(b.get_sender_key_devices("g3@g.us").await.unwrap());

    // LID <-> PN.
    let m = |lid: &str, pn: &str, t: i64| LidPnMappingEntry {
        lid: lid.into(),
        phone_number: pn.into(),
        created_at: t,
        updated_at: t,
        learning_source: "usync".into(),
    };
    b.put_lid_mapping(&m("100", "555", 1)).await.unwrap();
    b.put_lid_mappings(&[m("200", "666", 2), m("100", "777", 3)])
        .await
        .unwrap();
    obs!(b.get_pn_mapping("555").await.unwrap().map(|e| lid_key(&e)));
    obs!(b.get_pn_mapping("777").await.unwrap().map(|e| lid_key(&e)));
    obs!(b.get_lid_mapping("100").await.unwrap().map(|e| lid_key(&e)));
    obs!(sorted(
        b.get_all_lid_mappings()
            .await
            .unwrap()
            .iter()
            .map(lid_key)
            .collect()
    ));

    // Base keys.
    b.save_base_key("a@lid", "m1", b"bk").await.unwrap();
    obs!(b.has_same_base_key("a@lid", "m1", b"bk").await.unwrap());
    obs!(b.has_same_base_key("a@lid", "m1", b"other").await.unwrap());
    obs!(b.has_same_base_key("a@lid", "m2", b"bk").await.unwrap());
    b.delete_base_key("a@lid", "m1").await.unwrap();
    obs!(b.has_same_base_key("a@lid", "m1", b"bk").await.unwrap());

    // Device lists and group metadata.
    let rec = |user: &str, n: u32| DeviceListRecord {
        user: user.into(),
        devices: (0..n).map(|d| DeviceInfo::new(d, Some(d))).collect(),
        timestamp: 5,
        phash: Some("ph".into()),
        raw_id: None,
    };
    b.update_device_list(rec("u1", 2)).await.unwrap();
    b.update_device_lists(vec![rec("u2", 1), rec("u1", 3)])
        .await
        .unwrap();
    obs!(
        b.get_devices("u1")
            .await
            .unwrap()
            .map(|r| (r.user, r.devices.len(), r.phash, r.raw_id))
    );
    b.delete_devices("u2").await.unwrap();
    obs!(b.get_devices("u2").await.unwrap().is_some());
    b.put_group_metadata("g@g.us", b"blob").await.unwrap();
    obs!(b.get_group_metadata("g@g.us").await.unwrap());
    b.delete_group_metadata("g@g.us").await.unwrap();
    obs!(b.get_group_metadata("g@g.us").await.unwrap());

    // Trusted-contact tokens.
    b.touch_tc_token_sender_timestamp("x@lid", 100).await.unwrap();
    out.push(tc(&b.get_tc_token("x@lid").await.unwrap()));
    b.store_received_tc_token("x@lid", b"tok", 200).await.unwrap();
    b.store_received_tc_token("x@lid", b"old", 150).await.unwrap();
    b.touch_tc_token_sender_timestamp("x@lid", 90).await.unwrap();
    out.push(tc(&b.get_tc_token("x@lid").await.unwrap()));
    b.put_tc_token(
        "y@lid",
        &TcTokenEntry {
            token: vec![],
            token_timestamp: 10,
            sender_timestamp: None,
        },
    )
    .await
    .unwrap();
    b.put_tc_token(
        "z@lid",
        &TcTokenEntry {
            token: vec![1],
            token_timestamp: 10,
            sender_timestamp: Some(500),
        },
    )
    .await
    .unwrap();
    obs!(sorted(b.get_all_tc_token_jids().await.unwrap()));
    obs!(b.delete_expired_tc_tokens(150, 400).await.unwrap());
    obs!(sorted(b.get_all_tc_token_jids().await.unwrap()));
    b.delete_tc_token("x@lid").await.unwrap();
    out.push(tc(&b.get_tc_token("x@lid").await.unwrap()));

    // Sent messages (retry store).
    b.store_sent_message("c@s.whatsapp.net", "M1", b"p1")
        .await
        .unwrap();
    b.store_sent_message("c@s.whatsapp.net", "M2", b"p2")
        .await
        .unwrap();
    obs!(b.take_sent_message("c@s.whatsapp.net", "M1").await.unwrap());
    obs!(b.take_sent_message("c@s.whatsapp.net", "M1").await.unwrap());
    obs!(b.delete_expired_sent_messages(now - 3600).await.unwrap());
    obs!(b.delete_expired_sent_messages(now + 3600).await.unwrap());
    obs!(b.take_sent_message("c@s.whatsapp.net", "M2").await.unwrap());

    // Pending inbound (durability buffer).
    b.store_pending_inbound("c", "s", "i1", b"m1").await.unwrap();
    obs!(b.get_pending_inbound("c", "s", "i1").await.unwrap());
    obs!(b.get_pending_inbound("c", "other", "i1").await.unwrap());
    b.delete_pending_inbound("c", "s", "i1").await.unwrap();
    obs!(b.get_pending_inbound("c", "s", "i1").await.unwrap());
    b.store_pending_inbound("c", "s", "i2", b"m2").await.unwrap();
    obs!(b.delete_expired_pending_inbound(now - 3600).await.unwrap());
    obs!(b.delete_expired_pending_inbound(now + 3600).await.unwrap());

    // Message secrets.
    let sec = |id: &str, s: u8, exp: i64, ts: i64| MsgSecretEntry {
        chat: Arc::from("c@s.whatsapp.net"),
        sender: Arc::from("c@s.whatsapp.net"),
        msg_id: Arc::from(id),
        secret: [s; 32],
        expires_at: exp,
        message_ts: ts,
    };
    obs!(
        b.put_msg_secrets(vec![sec("a", 1, 100, 10), sec("b", 2, 0, 0), sec("a", 3, 50, 0)])
            .await
            .unwrap()
    );
    obs!(
        b.get_msg_secret_with_ts("c@s.whatsapp.net", "c@s.whatsapp.net", "a")
            .await
            .unwrap()
    );
    b.put_msg_secret("c@s.whatsapp.net", "c@s.whatsapp.net", "c", &[4; 32])
        .await
        .unwrap();
    obs!(
        b.get_msg_secret("c@s.whatsapp.net", "c@s.whatsapp.net", "c")
            .await
            .unwrap()
    );
    obs!(
        b.get_msg_secret("c@s.whatsapp.net", "someone", "c")
            .await
            .unwrap()
    );
    obs!(b.put_msg_secrets(vec![sec("d", 5, 20, 1)]).await.unwrap());
    obs!(b.delete_expired_msg_secrets(100).await.unwrap());
    obs!(
        b.get_msg_secret("c@s.whatsapp.net", "c@s.whatsapp.net", "a")
            .await
            .unwrap()
            .is_some()
    );
    obs!(
        b.get_msg_secret("c@s.whatsapp.net", "c@s.whatsapp.net", "b")
            .await
            .unwrap()
            .is_some()
    );
    out
}

/// Asserts that two script runs observed the same, naming the first difference.
fn assert_same_observations(expected: &[String], got: &[String], what: &str) {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(e, g, "{what}: observation #{i} differs");
    }
    assert_eq!(expected.len(), got.len(), "{what}: number of observations");
}

/// The fixed script on device [`DEVICE`] over `kv` observes what it observes on a fresh
/// `InMemoryBackend`, and leaves its state in `kv`.
pub async fn scripted_sequence(kv: Arc<dyn DeviceKv>) {
    let expected = script(&InMemoryBackend::new()).await;
    let got = script(&KvBackend::new(kv.clone(), DEVICE)).await;
    assert_same_observations(&expected, &got, "scripted sequence");
    // The script ends with data in the store: it really exercised the KV.
    let rows = snapshot(kv.as_ref()).await;
    assert!(rows.len() > 10, "only {} rows after the script", rows.len());
    assert_eq!(
        rows_of(&rows, DEVICE).len(),
        rows.len(),
        "rows outside the device"
    );
}

/// Populates every device of `ids` with the script (each must observe what a lone fresh
/// reference device observes) and checks `stored_devices` lists them in key order.
async fn populate(kv: &Arc<dyn DeviceKv>, ids: &[&str]) {
    let expected = script(&InMemoryBackend::new()).await;
    for id in ids {
        let got = script(&KvBackend::new(kv.clone(), id)).await;
        assert_same_observations(&expected, &got, &format!("script on {id} beside others"));
    }
    let mut want: Vec<&str> = ids.to_vec();
    want.sort_by_key(|id| device_prefix(id));
    let listed = stored_devices(kv.as_ref()).await.expect("stored_devices");
    let listed: Vec<(&str, Option<&str>)> =
        listed.iter().map(|d| (d.id.as_str(), d.jid.as_deref())).collect();
    let want: Vec<(&str, Option<&str>)> = want
        .into_iter()
        .map(|id| (id, Some("15551234567@s.whatsapp.net")))
        .collect();
    assert_eq!(listed, want, "stored_devices after populating");
}

/// After `gone` were removed (by whatever means) from a store holding `before`: exactly their
/// rows are gone, every other row is byte-for-byte unchanged, their backends see a device
/// that never existed, and `stored_devices` lists the rest.
async fn assert_removed(kv: &Arc<dyn DeviceKv>, before: &Rows, gone: &[&str], kept: &[&str], how: &str) {
    for id in gone {
        assert!(
            !rows_of(before, id).is_empty(),
            "{how}: {id} had no rows to remove"
        );
    }
    let expected: Rows = before
        .iter()
        .filter(|((_, k), _)| !gone.iter().any(|id| k.starts_with(&device_prefix(id))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let after = snapshot(kv.as_ref()).await;
    assert_eq!(after.len(), expected.len(), "{how}: rows left");
    assert!(after == expected, "{how}: the rows of other devices changed");

    let mut listed: Vec<String> = stored_devices(kv.as_ref())
        .await
        .expect("stored_devices")
        .into_iter()
        .map(|d| d.id)
        .collect();
    listed.sort();
    let mut want: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "{how}: stored_devices");

    for id in kept {
        let b = KvBackend::new(kv.clone(), id);
        assert!(b.exists().await.unwrap(), "{how}: {id} lost its device record");
        assert_eq!(
            b.get_session("111@s.whatsapp.net").await.unwrap().as_deref(),
            Some(&b"s1b"[..]),
            "{how}: {id} lost a session"
        );
    }
    for id in gone {
        let b = KvBackend::new(kv.clone(), id);
        assert!(!b.exists().await.unwrap(), "{how}: {id} still exists");
        assert!(b.load().await.unwrap().is_none(), "{how}: {id} still loads");
        assert_eq!(b.get_session("111@s.whatsapp.net").await.unwrap(), None);
        assert_eq!(b.load_identity("111:2@s.whatsapp.net").await.unwrap(), None);
        assert_eq!(b.get_max_prekey_id().await.unwrap(), 0);
        assert!(b.get_all_lid_mappings().await.unwrap().is_empty());
        assert!(b.get_all_tc_token_jids().await.unwrap().is_empty());
        assert!(!b.has_signal_state_for_user("111").await.unwrap());
    }
    // A removed device starts over like a fresh one (a new link after an unlink).
    let fresh = script(&InMemoryBackend::new()).await;
    for id in gone {
        let got = script(&KvBackend::new(kv.clone(), id)).await;
        assert_same_observations(&fresh, &got, &format!("{how}: script on {id} after removal"));
    }
}

/// Devices sharing one `kv` are isolated, and [`KvBackend::wipe`] removes exactly the wiped
/// device's rows.
pub async fn isolation_and_wipe(kv: Arc<dyn DeviceKv>) {
    populate(&kv, &DEVICES).await;
    let before = snapshot(kv.as_ref()).await;
    let per_device = rows_of(&before, DEVICES[0]).len();
    for id in DEVICES {
        assert_eq!(
            rows_of(&before, id).len(),
            per_device,
            "{id}: same script, same rows"
        );
    }
    assert_eq!(before.len(), per_device * DEVICES.len(), "rows of no device");
    KvBackend::new(kv.clone(), DEVICES[0]).wipe().await.unwrap();
    assert_removed(&kv, &before, &DEVICES[..1], &DEVICES[1..], "wipe").await;
}

/// Devices removed behind whatsapp-rust's back by `remove` (e.g. the store deleting a device
/// or a workspace) are gone for the backend, and nothing of the other devices changes.
///
/// Populates `gone` and `kept` with the script first; `kv` must start empty.
pub async fn external_removal<F, Fut>(kv: Arc<dyn DeviceKv>, gone: &[&str], kept: &[&str], remove: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let all: Vec<&str> = gone.iter().chain(kept).copied().collect();
    populate(&kv, &all).await;
    let before = snapshot(kv.as_ref()).await;
    remove().await;
    assert_removed(&kv, &before, gone, kept, "external removal").await;
}

/// Random operations over a small key space on device [`DEVICE`], compared with a fresh
/// `InMemoryBackend` after every step; a fresh `kv` from `kv_factory` per seed.
pub async fn random_sequences(
    kv_factory: &dyn Fn() -> Arc<dyn DeviceKv>,
    seeds: std::ops::Range<u64>,
    steps: i64,
) {
    for seed in seeds {
        let reference = InMemoryBackend::new();
        let ours = KvBackend::new(kv_factory(), DEVICE);
        let mut rng = Rng(seed);
        let addrs = ["1@s.whatsapp.net", "1:2@s.whatsapp.net", "12@lid", "2@lid"];
        let groups = ["g1", "g2"];
        for step in 0..steps {
            let addr = *rng.pick(&addrs);
            let group = *rng.pick(&groups);
            let id = rng.below(6) as u32;
            let byte = rng.byte();
            let op = rng.below(16);
            let mut obs = Vec::new();
            for b in [&reference as &dyn Backend, &ours as &dyn Backend] {
                let o = match op {
                    0 => format!("{:?}", b.put_session(addr, &[byte]).await.unwrap()),
                    1 => format!("{:?}", b.delete_session(addr).await.unwrap()),
                    2 => format!("{:?}", b.get_session(addr).await.unwrap()),
                    3 => format!(
                        "{:?}",
                        b.store_prekey(id, &[byte], byte.is_multiple_of(2)).await.unwrap()
                    ),
                    4 => format!("{:?}", b.remove_prekey(id).await.unwrap()),
                    5 => format!("{:?}", b.get_max_prekey_id().await.unwrap()),
                    6 => format!("{:?}", b.load_prekeys_batch(&[0, 1, 2, 3, 4, 5]).await.unwrap()),
                    7 => format!(
                        "{:?}",
                        b.set_sender_key_status(group, &[(addr, byte.is_multiple_of(2))])
                            .await
                            .unwrap()
                    ),
                    8 => format!("{:?}", sorted(b.get_sender_key_devices(group).await.unwrap())),
                    9 => format!("{:?}", b.delete_sender_key_device_rows(&[addr]).await.unwrap()),
                    10 => format!("{:?}", b.has_signal_state_for_user(&addr[..1]).await.unwrap()),
                    11 => format!("{:?}", b.put_identity(addr, [byte; 32]).await.unwrap()),
                    12 => {
                        let pn = format!("pn{}", id % 3);
                        let lid = format!("lid{}", byte % 3);
                        b.put_lid_mapping(&LidPnMappingEntry {
                            lid,
                            phone_number: pn.clone(),
                            created_at: 0,
                            updated_at: step,
                            learning_source: "x".into(),
                        })
                        .await
                        .unwrap();
                        format!("{:?}", b.get_pn_mapping(&pn).await.unwrap().map(|e| lid_key(&e)))
                    }
                    13 => format!(
                        "{:?}",
                        b.get_pn_mapping(&format!("pn{}", id % 3))
                            .await
                            .unwrap()
                            .map(|e| lid_key(&e))
                    ),
                    14 => format!(
                        "{:?}",
                        b.put_msg_secrets(vec![MsgSecretEntry {
                            chat: Arc::from("c"),
                            sender: Arc::from(addr),
                            msg_id: Arc::from(format!("m{id}").as_str()),
                            secret: [byte; 32],
                            expires_at: i64::from(byte % 4) * 10,
                            message_ts: i64::from(byte % 3),
                        }])
                        .await
                        .unwrap()
                    ),
                    _ => format!(
                        "{:?} {:?}",
                        b.delete_expired_msg_secrets(15).await.unwrap(),
                        b.get_msg_secret_with_ts("c", addr, &format!("m{id}"))
                            .await
                            .unwrap()
                    ),
                };
                obs.push(o);
            }
            assert_eq!(obs[0], obs[1], "seed {seed} step {step} op {op}");
        }
    }
}

/// The `DeviceKv` contract itself: random batches of puts, deletes and prefix deletes (one
/// device per batch, as [`KvBackend`] writes them) applied to `kv_factory()` and to a
/// [`MemoryKv`]; point reads, prefix scans (inside a device, across devices) and full
/// snapshots must agree after every batch.
pub async fn kv_contract(
    kv_factory: &dyn Fn() -> Arc<dyn DeviceKv>,
    seeds: std::ops::Range<u64>,
    steps: usize,
) {
    // Binary tails with 0x00 and 0xff probe ordering and the end bound of prefix scans.
    const ALPHABET: [u8; 4] = [0x00, b'a', b'b', 0xff];
    const SPACE: [&str; 2] = ["wa.session", "wa.sk_device"];
    for seed in seeds {
        let ours = kv_factory();
        let reference = MemoryKv::new();
        let mut rng = Rng(seed ^ 0x5EED);
        let tail = |rng: &mut Rng, max: u64| -> Vec<u8> {
            (0..rng.below(max + 1)).map(|_| *rng.pick(&ALPHABET)).collect()
        };
        for step in 0..steps {
            let id: &str = rng.pick::<&str>(&DEVICES);
            let dev = device_prefix(id);
            let mut batch = KvBatch::new();
            for _ in 0..1 + rng.below(4) {
                let ns = *rng.pick(&SPACE);
                let key = [dev.as_slice(), &tail(&mut rng, 3)].concat();
                match rng.below(5) {
                    0..=2 => {
                        let value = tail(&mut rng, 2);
                        batch.put(ns, key, value)
                    }
                    3 => batch.delete(ns, key),
                    _ => {
                        let short = [dev.as_slice(), &tail(&mut rng, 1)].concat();
                        batch.delete_prefix(ns, short)
                    }
                };
            }
            let ops: Vec<KvOp> = batch.ops().to_vec();
            reference.apply(batch.clone()).await.unwrap();
            ours.apply(batch)
                .await
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: apply {ops:?}: {e}"));

            let ns = *rng.pick(&SPACE);
            let key = [dev.as_slice(), &tail(&mut rng, 3)].concat();
            assert_eq!(
                ours.get(ns, &key).await.unwrap(),
                reference.get(ns, &key).await.unwrap(),
                "seed {seed} step {step}: get {ns} {key:?} after {ops:?}"
            );
            let prefix = [dev.as_slice(), &tail(&mut rng, 2)].concat();
            let got = ours.scan_prefix(ns, &prefix).await.unwrap();
            assert_scan_shape(ns, &prefix, &got);
            assert_eq!(
                got,
                reference.scan_prefix(ns, &prefix).await.unwrap(),
                "seed {seed} step {step}: scan {ns} {prefix:?} after {ops:?}"
            );
            // A prefix shorter than any device id: the across-devices path.
            let cut = rng.below(dev.len() as u64) as usize;
            let got = ours.scan_prefix(ns, &dev[..cut]).await.unwrap();
            assert_eq!(
                got,
                reference.scan_prefix(ns, &dev[..cut]).await.unwrap(),
                "seed {seed} step {step}: scan {ns} {:?} after {ops:?}",
                &dev[..cut]
            );
        }
        for ns in SPACE {
            assert_eq!(
                ours.scan_prefix(ns, b"").await.unwrap(),
                reference.scan_prefix(ns, b"").await.unwrap(),
                "seed {seed}: final contents of {ns}"
            );
        }
    }
}

/// Every check of this module over fresh stores from `kv_factory` (each must start empty).
pub async fn run_all(kv_factory: impl Fn() -> Arc<dyn DeviceKv>) {
    scripted_sequence(kv_factory()).await;
    isolation_and_wipe(kv_factory()).await;
    random_sequences(&kv_factory, 0..20, 300).await;
    kv_contract(&kv_factory, 0..20, 200).await;
}
