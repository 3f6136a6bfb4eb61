//! Encryption at rest: what sealing costs per value and per journal append.
//!
//! - `vault`: [`Vault::seal`] and [`Vault::open_sealed`] of 100-byte and 4-KiB values, the
//!   calls the journal and the device store make, against the bare XChaCha20-Poly1305 of the
//!   same sizes with the same associated data (measured in the same run). The difference is
//!   the vault's own work: the key look-up under its read lock, a fresh random nonce from the
//!   thread's CSPRNG, and the output allocation.
//! - `journal_append`: batches of 64 `Accepted` records with 200-byte bodies (the load test's
//!   message) appended to a journal in a temporary directory, sealed through the gateway's
//!   `VaultSealer` and unsealed. `SyncMode::None` takes `fdatasync` out so the figure is the
//!   CPU the appending thread and the writer spend; with the default sync the disk would hide
//!   the difference.
//!
//! Kept short (about 40 s for the file on the 2-core development VM): criterion medians of
//! small samples are enough to compare peers measured minutes apart.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use waping_gateway::control::sealing::VaultSealer;
use waping_journal::{AcceptedMessage, Body, Journal, JournalConfig, MessageId, Record, SyncMode};
use waping_vault::{MasterKey, Vault};

const WORKSPACE: &str = "workspace-1";
/// Value sizes: a short text with its recipient, and a long one (4 KiB, near the protocol's
/// text limit).
const SIZES: [(&str, usize); 2] = [("100B", 100), ("4KiB", 4096)];
/// Records per journal append: about what one read of a pipelining connection carries at
/// window 256, and enough that the per-append handoff to the writer does not dominate.
const BATCH: usize = 64;

/// Associated data as long as the journal's for a sealed `Accepted` record (kind, id,
/// workspace, device, idempotency key, submitter, timestamp: ~75 bytes).
fn aad() -> Vec<u8> {
    (0..75u8).collect()
}

fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A vault with one workspace key, in a directory that lives as long as the returned guard.
fn vault() -> (tempfile::TempDir, Arc<Vault>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let vault = Vault::open(dir.path(), MasterKey::generate(), None).expect("vault opens");
    vault.ensure_workspace(WORKSPACE).expect("workspace key");
    (dir, Arc::new(vault))
}

fn seal_open(c: &mut Criterion) {
    let (_dir, vault) = vault();
    let aad = aad();
    // The bare cipher gets a fixed key of its own: the cost does not depend on the key.
    let cipher = XChaCha20Poly1305::new(&[0x42u8; 32].into());
    let nonce = XNonce::from([7u8; 24]);

    let mut g = c.benchmark_group("vault");
    for (name, len) in SIZES {
        let plain = value(len);
        g.throughput(Throughput::Bytes(len as u64));

        g.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| {
                vault
                    .seal(WORKSPACE, black_box(&aad), black_box(&plain))
                    .expect("seal")
            })
        });
        // The same work without the vault: in place on a buffer reused across iterations, so
        // no allocation and no nonce generation (each iteration encrypts the previous
        // ciphertext, which costs the same).
        let mut buf = plain.clone();
        g.bench_function(format!("bare_encrypt/{name}"), |b| {
            b.iter(|| {
                cipher
                    .encrypt_in_place_detached(&nonce, black_box(&aad), black_box(&mut buf[..]))
                    .expect("encrypt")
            })
        });

        let sealed = vault.seal(WORKSPACE, &aad, &plain).expect("seal");
        g.bench_function(format!("open_sealed/{name}"), |b| {
            b.iter(|| {
                vault
                    .open_sealed(WORKSPACE, black_box(&aad), black_box(&sealed))
                    .expect("open")
            })
        });
        // Decryption verifies the tag before decrypting, so the buffer must stay the
        // ciphertext: decrypt a fresh copy each time (a memcpy the vault's open also does).
        let mut ct = plain.clone();
        let tag: Tag = cipher
            .encrypt_in_place_detached(&nonce, &aad, &mut ct)
            .expect("encrypt");
        g.bench_function(format!("bare_decrypt/{name}"), |b| {
            b.iter(|| {
                let mut out = ct.clone();
                cipher
                    .decrypt_in_place_detached(&nonce, black_box(&aad), &mut out, &tag)
                    .expect("decrypt");
                out
            })
        });
    }
    g.finish();
}

/// A 200-byte pseudo-random text (the load test's body size).
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

fn accepted(i: u64) -> Record {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    Record::Accepted(AcceptedMessage {
        id: MessageId(id),
        workspace: WORKSPACE.into(),
        device: "device-07".into(),
        idempotency_key: format!("idem-{i:016}"),
        recipient: "4915112345678".into(),
        body: Body::Text(text200(i)),
        accepted_at_ms: 1_764_000_000_000 + i / 1000,
        submitted_by: "key-0001".into(),
    })
}

fn journal_append(c: &mut Criterion) {
    let (_vault_dir, vault) = vault();
    let mut g = c.benchmark_group("journal_append");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, sealer) in [
        ("plain", None),
        (
            "sealed",
            Some(Arc::new(VaultSealer(vault.clone())) as Arc<dyn waping_journal::RecordSealer>),
        ),
    ] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cfg = JournalConfig {
            sync: SyncMode::None,
            sealer,
            // Nothing finishes here, so the journal only grows (~300 MB per arm); keep the
            // disk bound out of the way.
            max_disk_bytes: 64 << 30,
            ..JournalConfig::default()
        };
        let (journal, _) = Journal::open(dir.path(), cfg).expect("journal opens");
        let next = AtomicU64::new(0);
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let from = next.fetch_add(BATCH as u64, Ordering::Relaxed);
                    (from..from + BATCH as u64).map(accepted).collect::<Vec<_>>()
                },
                |batch| journal.append(batch).wait().expect("append"),
                BatchSize::SmallInput,
            )
        });
        journal.close().expect("journal closes");
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = seal_open, journal_append
}
criterion_main!(benches);
