//! The same operation sequences against whatsapp-rust's own `InMemoryBackend`
//! (the reference) and against `KvBackend` over `MemoryKv`: every observable
//! result must be equal.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use waping_whatsapp::backend::KvBackend;
use waping_whatsapp::kv::MemoryKv;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::{
    AppStateSyncKey, Backend, DeviceInfo, DeviceListRecord, LidPnMappingEntry, MsgSecretEntry, TcTokenEntry,
};

fn pair() -> (Arc<dyn Backend>, Arc<dyn Backend>, Arc<MemoryKv>) {
    let kv = Arc::new(MemoryKv::new());
    let ours: Arc<dyn Backend> = Arc::new(KvBackend::new(kv.clone(), "dev-1"));
    let reference: Arc<dyn Backend> = Arc::new(InMemoryBackend::new());
    (reference, ours, kv)
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

/// Runs a fixed script covering every trait method; returns one line per observation.
async fn script(b: &dyn Backend) -> Vec<String> {
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
    let mut idx = [[0u8; 32]; 2];
    idx[0][0] = 1;
    b.put_mutation_macs("regular", 2, &macs(&[(&idx[0], b"v32")]))
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

#[tokio::test]
async fn scripted_sequence_matches_reference_backend() {
    let (reference, ours, _kv) = pair();
    let expected = script(reference.as_ref()).await;
    let got = script(ours.as_ref()).await;
    assert_eq!(expected.len(), got.len());
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(e, g, "observation #{i} differs");
    }
    // The script ends with data in the store: it really exercised the KV.
    assert!(_kv.len() > 10);
}

#[tokio::test]
async fn devices_sharing_one_kv_are_isolated_and_wipe_is_complete() {
    let kv = Arc::new(MemoryKv::new());
    let a = KvBackend::new(kv.clone(), "a");
    // "a" is a prefix of "ab" as a string; the length prefix must keep them apart.
    let ab = KvBackend::new(kv.clone(), "ab");
    script(&a).await;
    script(&ab).await;
    let both = kv.len();
    let listed = waping_whatsapp::backend::stored_devices(kv.as_ref())
        .await
        .unwrap();
    let ids: Vec<_> = listed.iter().map(|d| (d.id.as_str(), d.jid.as_deref())).collect();
    assert_eq!(
        ids,
        vec![
            ("a", Some("15551234567@s.whatsapp.net")),
            ("ab", Some("15551234567@s.whatsapp.net"))
        ]
    );
    a.wipe().await.unwrap();
    assert_eq!(
        waping_whatsapp::backend::stored_devices(kv.as_ref())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(kv.len(), both / 2, "wiping one device removes exactly its rows");
    use whatsapp_rust::wacore::store::traits::{DeviceStore, SignalStore};
    assert!(!a.exists().await.unwrap());
    assert!(ab.exists().await.unwrap());
    assert_eq!(
        ab.get_session("111@s.whatsapp.net").await.unwrap().as_deref(),
        Some(&b"s1b"[..])
    );
}

/// Random operations over a small key space, compared after every step.
#[tokio::test]
async fn random_sequences_match_reference_backend() {
    for seed in 0..20u64 {
        let (reference, ours, _kv) = pair();
        let mut rng = SmallRng::seed_from_u64(seed);
        let addrs = ["1@s.whatsapp.net", "1:2@s.whatsapp.net", "12@lid", "2@lid"];
        let groups = ["g1", "g2"];
        for step in 0..300 {
            let addr = addrs[rng.random_range(0..addrs.len())];
            let group = groups[rng.random_range(0..groups.len())];
            let id = rng.random_range(0..6u32);
            let byte = rng.random::<u8>();
            let op = rng.random_range(0..16);
            let mut obs = Vec::new();
            for b in [reference.as_ref(), ours.as_ref()] {
                let o = match op {
                    0 => format!("{:?}", b.put_session(addr, &[byte]).await.unwrap()),
                    1 => format!("{:?}", b.delete_session(addr).await.unwrap()),
                    2 => format!("{:?}", b.get_session(addr).await.unwrap()),
                    3 => format!("{:?}", b.store_prekey(id, &[byte], byte % 2 == 0).await.unwrap()),
                    4 => format!("{:?}", b.remove_prekey(id).await.unwrap()),
                    5 => format!("{:?}", b.get_max_prekey_id().await.unwrap()),
                    6 => format!("{:?}", b.load_prekeys_batch(&[0, 1, 2, 3, 4, 5]).await.unwrap()),
                    7 => format!(
                        "{:?}",
                        b.set_sender_key_status(group, &[(addr, byte % 2 == 0)])
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
