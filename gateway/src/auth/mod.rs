//! API keys: format, generation, hashing and constant-time verification.
//!
//! A key looks like `wpk_<id>_<secret>`: `id` is 16 lowercase hex characters
//! (public, used to find the record without scanning), `secret` is 32 random
//! bytes in unpadded base64url. Only `sha256:<hex>` of the whole key is stored.
//! SHA-256 without a slow KDF is enough because the secret has 256 bits of
//! entropy: there is nothing to brute-force that a password hash would slow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::control::roles::Role;
use crate::workspace::Workspace;

/// Prefix that makes keys recognisable to secret scanners.
pub const KEY_PREFIX: &str = "wpk_";

/// Why a presented key was refused. The client only ever learns AUTH_FAILED;
/// the variant is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not shaped like a key.
    #[error("malformed key")]
    Malformed,
    /// No key has this id.
    #[error("unknown key id")]
    UnknownId,
    /// The id exists but the secret is wrong.
    #[error("wrong secret")]
    WrongSecret,
    /// The key was revoked (or its workspace deleted).
    #[error("revoked")]
    Revoked,
    /// The key is past its expiry.
    #[error("expired")]
    Expired,
}

impl AuthError {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::UnknownId => "unknown_id",
            AuthError::WrongSecret => "wrong_secret",
            AuthError::Revoked => "revoked",
            AuthError::Expired => "expired",
        }
    }
}

/// Checks a key id (16 lowercase hex characters).
pub fn parse_key_id(id: &str) -> Result<(), String> {
    if id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{id:?} must be 16 lowercase hex characters"))
    }
}

/// Parses `sha256:<64 hex>`.
pub fn parse_hash(h: &str) -> Result<[u8; 32], String> {
    let hexpart = h
        .strip_prefix("sha256:")
        .ok_or_else(|| "must start with `sha256:`".to_string())?;
    let v = hex::decode(hexpart).map_err(|_| "is not hex after `sha256:`".to_string())?;
    v.try_into()
        .map_err(|_| "must be 32 bytes (64 hex characters)".to_string())
}

/// Splits a presented key into its id, or refuses it.
fn key_id(key: &str) -> Result<&str, AuthError> {
    let rest = key.strip_prefix(KEY_PREFIX).ok_or(AuthError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if parse_key_id(id).is_err() || secret.len() != 43 {
        return Err(AuthError::Malformed);
    }
    Ok(id)
}

/// SHA-256 of the key string.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A freshly generated key: show `key` once, store `id` and `hash`.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full key, to give to the client.
    pub key: String,
    /// Public id.
    pub id: String,
    /// `sha256:…` for the config file.
    pub hash: String,
}

/// Generates a key from the OS random source.
pub fn generate_key() -> GeneratedKey {
    // ThreadRng is a CSPRNG reseeded from the OS; fine for key material.
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let key = format!(
        "{KEY_PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = format!("sha256:{}", hex::encode(hash_key(&key)));
    GeneratedKey { key, id, hash }
}

/// A key as the node holds it while running: found by id, checked per request.
///
/// Connections and requests keep the `Arc` they authenticated with and ask
/// [`LiveKey::check`] before each operation, so a revocation or an expiry takes
/// effect on the next frame or request, and [`LiveKey::revoked`] lets a QUIC
/// connection close the moment its key is revoked.
#[derive(Debug)]
pub struct LiveKey {
    /// Public id (16 hex characters).
    pub id: String,
    /// Owning workspace.
    pub workspace: Arc<Workspace>,
    /// What it may do.
    pub role: Role,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<u64>,
    hash: [u8; 32],
    /// Read on every frame by every connection using the key: a plain atomic, because
    /// `CancellationToken::is_cancelled` takes a mutex that connections sharing a key would
    /// contend on.
    revoked_flag: AtomicBool,
    /// Wakes the connections holding the key when it is revoked.
    revoked: CancellationToken,
    last_used_ms: AtomicU64,
}

impl LiveKey {
    /// A key record ready for verification; `hash` is `sha256:…`.
    pub fn new(
        id: &str,
        hash: &str,
        workspace: Arc<Workspace>,
        role: Role,
        expires_at_ms: Option<u64>,
    ) -> Result<LiveKey, String> {
        parse_key_id(id)?;
        Ok(LiveKey {
            id: id.to_string(),
            workspace,
            role,
            expires_at_ms,
            hash: parse_hash(hash)?,
            revoked_flag: AtomicBool::new(false),
            revoked: CancellationToken::new(),
            last_used_ms: AtomicU64::new(0),
        })
    }

    /// Whether the key may still be used at `now_ms` (not revoked, not expired, its
    /// workspace not deleted).
    pub fn check(&self, now_ms: u64) -> Result<(), AuthError> {
        if self.revoked_flag.load(Ordering::Acquire) || self.workspace.is_deleted() {
            return Err(AuthError::Revoked);
        }
        if self.expires_at_ms.is_some_and(|e| now_ms >= e) {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// Resolves when the key is revoked (or its workspace deleted).
    pub fn revoked(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.revoked.cancelled()
    }

    /// Marks it revoked; every holder sees it at once.
    pub fn revoke(&self) {
        self.revoked_flag.store(true, Ordering::Release);
        self.revoked.cancel();
    }

    /// Last successful authentication, unix ms (0 = never since start).
    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    fn touch(&self, now_ms: u64) {
        self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// Every usable key of the node, by id. Concurrent: keys are added, rotated and revoked
/// while connections authenticate.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_id: DashMap<String, Arc<LiveKey>>,
}

impl ApiKeys {
    /// Adds (or replaces) a key.
    pub fn insert(&self, key: LiveKey) -> Arc<LiveKey> {
        let key = Arc::new(key);
        if let Some(old) = self.by_id.insert(key.id.clone(), key.clone()) {
            old.revoke();
        }
        key
    }

    /// Removes and revokes a key; true if it was there.
    pub fn revoke(&self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some((_, k)) => {
                k.revoke();
                true
            }
            None => false,
        }
    }

    /// Revokes every key of a workspace (it is being deleted); returns how many.
    pub fn revoke_workspace(&self, workspace: &str) -> usize {
        let ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|e| &*e.value().workspace.id == workspace)
            .map(|e| e.key().clone())
            .collect();
        ids.iter().filter(|id| self.revoke(id)).count()
    }

    /// A key by id.
    pub fn get(&self, id: &str) -> Option<Arc<LiveKey>> {
        self.by_id.get(id).map(|e| e.value().clone())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Verifies a presented key at `now_ms`. The work done (one SHA-256 and one 32-byte
    /// constant-time compare) is the same whether or not the id exists, so timing reveals
    /// neither ids nor secrets.
    pub fn verify(&self, presented: &str, now_ms: u64) -> Result<Arc<LiveKey>, AuthError> {
        const DUMMY: [u8; 32] = [0u8; 32];
        let id = key_id(presented);
        let digest = hash_key(presented);
        let rec = id.ok().and_then(|id| self.get(id));
        let expected = rec.as_ref().map_or(&DUMMY, |r| &r.hash);
        let equal: bool = digest.ct_eq(expected).into();
        match (id, rec) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(AuthError::UnknownId),
            (Ok(_), Some(r)) if equal => {
                r.check(now_ms)?;
                r.touch(now_ms);
                Ok(r)
            }
            (Ok(_), Some(_)) => Err(AuthError::WrongSecret),
        }
    }
}

/// Shared key table.
pub type SharedKeys = Arc<ApiKeys>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> Arc<Workspace> {
        crate::workspace::Registry::default().add_for_tests("w")
    }

    #[test]
    fn generated_keys_verify_and_others_do_not() {
        let g = generate_key();
        assert!(g.key.starts_with("wpk_"));
        assert_eq!(g.key.len(), 4 + 16 + 1 + 43);
        let ks = ApiKeys::default();
        ks.insert(LiveKey::new(&g.id, &g.hash, ws(), Role::Sender, None).unwrap());
        let k = ks.verify(&g.key, 1).unwrap();
        assert_eq!(k.role, Role::Sender);
        assert_eq!(k.last_used_ms(), 1);

        let other = generate_key();
        assert_eq!(ks.verify(&other.key, 1).unwrap_err(), AuthError::UnknownId);
        // Same id, different secret.
        let forged = format!("wpk_{}_{}", g.id, &other.key[21..]);
        assert_eq!(ks.verify(&forged, 1).unwrap_err(), AuthError::WrongSecret);
        for bad in [
            "",
            "wpk_",
            "wpk_zz_",
            "abc",
            &g.key[..g.key.len() - 1],
            "wpk_0123456789abcdef",
        ] {
            assert_eq!(ks.verify(bad, 1).unwrap_err(), AuthError::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn expiry_and_revocation_apply_to_holders_at_once() {
        let g = generate_key();
        let ks = ApiKeys::default();
        ks.insert(LiveKey::new(&g.id, &g.hash, ws(), Role::Owner, Some(100)).unwrap());
        let held = ks.verify(&g.key, 99).unwrap();
        assert_eq!(ks.verify(&g.key, 100).unwrap_err(), AuthError::Expired);
        assert_eq!(held.check(100), Err(AuthError::Expired));
        assert_eq!(held.check(50), Ok(()));
        assert!(ks.revoke(&g.id));
        assert_eq!(
            held.check(50),
            Err(AuthError::Revoked),
            "a connection holding it sees the revocation"
        );
        assert_eq!(ks.verify(&g.key, 50).unwrap_err(), AuthError::UnknownId);
        assert!(!ks.revoke(&g.id));
    }

    #[test]
    fn keys_are_unique() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.key, b.key);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn hash_format() {
        assert!(parse_hash("sha256:00").is_err());
        assert!(parse_hash("md5:00").is_err());
        assert!(parse_hash(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(parse_key_id("0123456789abcdef").is_ok());
        assert!(parse_key_id("0123456789ABCDEF").is_err());
    }
}
