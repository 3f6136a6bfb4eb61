//! The production storage path of the WhatsApp upstream: whatsapp-rust's storage backend over
//! the gateway's `StoreKv` (the redb device store in a temporary directory) must behave like
//! whatsapp-rust's own `InMemoryBackend`, by the same conformance suite `waping-whatsapp`
//! runs over `MemoryKv`; and the store's own deletions (unlink, workspace deletion) must
//! remove what the backend sees of those devices and nothing of others.
#![cfg(feature = "whatsapp")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use waping_gateway::upstream::whatsapp::StoreKv;
use waping_store::{Store, StoreOptions};
use waping_whatsapp::DeviceKv;
use waping_whatsapp::conformance::{self, DEVICES};

/// Fresh stores, each its own database file in one temporary directory (kept alive by the
/// caller for as long as the stores are used).
struct Stores {
    dir: tempfile::TempDir,
    opened: AtomicUsize,
}

impl Stores {
    fn new() -> Self {
        Stores {
            dir: tempfile::tempdir().unwrap(),
            opened: AtomicUsize::new(0),
        }
    }

    fn open(&self) -> Arc<Store> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("devices-{n}.redb"));
        Arc::new(Store::open(path, StoreOptions::default()).unwrap())
    }

    fn kv(&self) -> Arc<dyn DeviceKv> {
        Arc::new(StoreKv::new(self.open()))
    }
}

#[tokio::test]
async fn scripted_sequence_matches_reference_backend() {
    let stores = Stores::new();
    conformance::scripted_sequence(stores.kv()).await;
}

#[tokio::test]
async fn devices_sharing_the_store_are_isolated_and_wipe_is_complete() {
    let stores = Stores::new();
    conformance::isolation_and_wipe(stores.kv()).await;
}

#[tokio::test]
async fn random_sequences_match_reference_backend() {
    let stores = Stores::new();
    conformance::random_sequences(&|| stores.kv(), 0..20, 300).await;
}

#[tokio::test]
async fn store_kv_meets_the_kv_contract() {
    let stores = Stores::new();
    conformance::kv_contract(&|| stores.kv(), 0..20, 200).await;
}

/// Unlink: the store deletes the device (every namespace, and its registry entry).
#[tokio::test]
async fn deleting_a_device_in_the_store_removes_it_from_the_backend_only() {
    let stores = Stores::new();
    let store = stores.open();
    let kv: Arc<dyn DeviceKv> = Arc::new(StoreKv::new(store.clone()));
    // "ws/ab": its workspace is shared with "ws/a", and "ws/a" is a string prefix of it.
    let gone = DEVICES[1];
    let (ws, dev) = gone.split_once('/').unwrap();
    conformance::external_removal(kv, &[gone], &[DEVICES[0], DEVICES[2]], || async {
        store.device(ws, dev).unwrap().delete_device().await.unwrap();
        assert!(
            !store
                .list_devices()
                .unwrap()
                .iter()
                .any(|d| d.workspace == ws && d.device == dev),
            "the store still lists the deleted device"
        );
    })
    .await;
}

/// Workspace deletion: every device of the workspace goes, devices of a workspace whose id
/// only looks similar ("w" against "ws") stay.
#[tokio::test]
async fn deleting_a_workspace_removes_its_devices_from_the_backend_only() {
    let stores = Stores::new();
    let store = stores.open();
    let kv: Arc<dyn DeviceKv> = Arc::new(StoreKv::new(store.clone()));
    conformance::external_removal(kv, &DEVICES[..2], &DEVICES[2..], || async {
        store.delete_workspace("ws").await.unwrap();
    })
    .await;
}
