//! Tests that need the raw database: moving sealed bytes between keys behind the store's back.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::store::KV;
use crate::{Aad, DeviceStore, Ns, PlainSealer, SealError, Sealer, Store, StoreError, StoreOptions};

/// Test-only authenticating sealer: version 0x7f | plaintext | HMAC-SHA256(aad, plaintext).
/// Not encryption; it proves that the AAD reaching the sealer pins the value to its place.
#[derive(Debug)]
struct HmacSealer {
    key: [u8; 32],
}

impl HmacSealer {
    const VERSION: u8 = 0x7f;

    fn tag(&self, aad: &[u8], plaintext: &[u8]) -> [u8; 32] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut h = Sha256::new();
        h.update(ipad);
        h.update((aad.len() as u32).to_be_bytes());
        h.update(aad);
        h.update(plaintext);
        let inner = h.finalize();
        let mut h = Sha256::new();
        h.update(opad);
        h.update(inner);
        h.finalize().into()
    }
}

impl Sealer for HmacSealer {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = vec![Self::VERSION];
        out.extend_from_slice(plaintext);
        out.extend_from_slice(&self.tag(aad.as_bytes(), plaintext));
        Ok(out)
    }

    fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&v, rest) = sealed.split_first().ok_or(SealError::Truncated)?;
        if v != Self::VERSION {
            return Err(SealError::UnknownVersion(v));
        }
        let split = rest.len().checked_sub(32).ok_or(SealError::Truncated)?;
        let (plaintext, tag) = rest.split_at(split);
        if self.tag(aad.as_bytes(), plaintext) != tag {
            return Err(SealError::Unauthentic);
        }
        Ok(plaintext.to_vec())
    }
}

const CREDS: Ns = Ns::new(1);
const SESSIONS: Ns = Ns::new(2);

fn raw_get(d: &DeviceStore, ns: Ns, key: &[u8]) -> Vec<u8> {
    use redb::ReadableDatabase;
    let txn = d.raw_db().begin_read().unwrap();
    let table = txn.open_table(KV).unwrap();
    let v = table.get(d.full_key(ns, key).as_slice()).unwrap().unwrap();
    v.value().to_vec()
}

/// Writes `sealed` under (device, ns, key) directly, as an attacker with file access would.
fn raw_put(d: &DeviceStore, ns: Ns, key: &[u8], sealed: &[u8]) {
    let txn = d.raw_db().begin_write().unwrap();
    {
        let mut table = txn.open_table(KV).unwrap();
        table.insert(d.full_key(ns, key).as_slice(), sealed).unwrap();
    }
    txn.commit().unwrap();
}

fn is_unauthentic(r: Result<Option<Vec<u8>>, StoreError>) -> bool {
    matches!(
        r,
        Err(StoreError::Unseal {
            source: SealError::Unauthentic,
            ..
        })
    )
}

#[test]
fn swapped_sealed_values_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        sealer: Arc::new(HmacSealer { key: [7; 32] }),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("devices.redb"), opts).unwrap();
    // Adversarial pair: same bytes once the ids are concatenated.
    let a = store.device("a", "b/c").unwrap();
    let b = store.device("a/b", "c").unwrap();
    a.put_blocking(CREDS, b"noise", b"secret of a").unwrap();
    b.put_blocking(CREDS, b"noise", b"secret of b").unwrap();
    a.put_blocking(CREDS, b"other", b"x").unwrap();
    assert_eq!(a.get(CREDS, b"noise").unwrap().unwrap(), b"secret of a");

    let sealed_a = raw_get(&a, CREDS, b"noise");
    // Same key, other device.
    raw_put(&b, CREDS, b"noise", &sealed_a);
    assert!(is_unauthentic(b.get(CREDS, b"noise")));
    // Same device, other key.
    raw_put(&a, CREDS, b"other", &sealed_a);
    assert!(is_unauthentic(a.get(CREDS, b"other")));
    // Same device and key, other namespace.
    raw_put(&a, SESSIONS, b"noise", &sealed_a);
    assert!(is_unauthentic(a.get(SESSIONS, b"noise")));
    // A scan reports it too rather than skipping it.
    assert!(matches!(
        a.scan_prefix(SESSIONS, b"", None, 10),
        Err(StoreError::Unseal { .. })
    ));
    // Back in its own place it still opens: the check is about place, not about the bytes.
    raw_put(&b, CREDS, b"noise", &sealed_a);
    raw_put(&a, CREDS, b"moved-back", &sealed_a);
    assert!(is_unauthentic(a.get(CREDS, b"moved-back")));
    assert_eq!(a.get(CREDS, b"noise").unwrap().unwrap(), b"secret of a");

    // A flipped bit in place is caught as well.
    let mut flipped = sealed_a.clone();
    flipped[3] ^= 1;
    raw_put(&a, CREDS, b"noise", &flipped);
    assert!(is_unauthentic(a.get(CREDS, b"noise")));
}

#[test]
fn plain_values_open_only_under_a_sealer_that_knows_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let d = store.device("w", "d").unwrap();
        d.put_blocking(CREDS, b"k", b"plain").unwrap();
        assert_eq!(
            raw_get(&d, CREDS, b"k"),
            [&[PlainSealer::VERSION][..], b"plain"].concat()
        );
    }
    // A stricter sealer refuses version-0 values instead of misreading them, which is what a
    // migrating sealer relies on to tell old values from new ones.
    let opts = StoreOptions {
        sealer: Arc::new(HmacSealer { key: [1; 32] }),
        ..StoreOptions::default()
    };
    let store = Store::open(&path, opts).unwrap();
    let d = store.device("w", "d").unwrap();
    assert!(matches!(
        d.get(CREDS, b"k"),
        Err(StoreError::Unseal {
            source: SealError::UnknownVersion(0),
            ..
        })
    ));
}
