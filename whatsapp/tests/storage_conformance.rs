//! The storage conformance suite (`waping_whatsapp::conformance`) over `MemoryKv`: the same
//! operation sequences against whatsapp-rust's own `InMemoryBackend` (the reference) and
//! against `KvBackend` over `MemoryKv` must observe the same. The gateway runs the same suite
//! over its device store (gateway/tests/whatsapp_store.rs).

use std::sync::Arc;

use waping_whatsapp::conformance::{self, DEVICES};
use waping_whatsapp::kv::{DeviceKv, KvBatch, MemoryKv};

fn memory() -> Arc<dyn DeviceKv> {
    Arc::new(MemoryKv::new())
}

#[tokio::test]
async fn scripted_sequence_matches_reference_backend() {
    conformance::scripted_sequence(memory()).await;
}

#[tokio::test]
async fn devices_sharing_one_kv_are_isolated_and_wipe_is_complete() {
    conformance::isolation_and_wipe(memory()).await;
}

/// Random operations over a small key space, compared after every step.
#[tokio::test]
async fn random_sequences_match_reference_backend() {
    conformance::random_sequences(&memory, 0..20, 300).await;
}

#[tokio::test]
async fn memory_kv_meets_the_kv_contract() {
    // MemoryKv is the reference of this check, so this mainly proves the check runs; it
    // still verifies scan order and prefix bounds on the across-devices scans.
    conformance::kv_contract(&memory, 0..5, 200).await;
}

/// Removing a device's keys from under the backend (what a store's device deletion does).
#[tokio::test]
async fn removal_from_under_the_backend_is_seen_and_isolated() {
    let kv = memory();
    let gone = DEVICES[1];
    let prefix = conformance::device_prefix(gone);
    conformance::external_removal(kv.clone(), &[gone], &[DEVICES[0], DEVICES[2]], || async {
        let mut b = KvBatch::new();
        for ns in waping_whatsapp::backend::NAMESPACES {
            b.delete_prefix(ns, prefix.clone());
        }
        kv.apply(b).await.unwrap();
    })
    .await;
}
