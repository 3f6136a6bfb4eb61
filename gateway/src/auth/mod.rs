//! API keys: format, generation, hashing and constant-time verification.
//!
//! A key looks like `wpk_<id>_<secret>`: `id` is 16 lowercase hex characters
//! (public, used to find the record without scanning), `secret` is 32 random
//! bytes in unpadded base64url. Only `sha256:<hex>` of the whole key is stored.
//! SHA-256 without a slow KDF is enough because the secret has 256 bits of
//! entropy: there is nothing to brute-force that a password hash would slow.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::workspace::WorkspaceIdx;

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
}

impl AuthError {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::UnknownId => "unknown_id",
            AuthError::WrongSecret => "wrong_secret",
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

/// A stored key record.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Owning workspace.
    pub workspace: WorkspaceIdx,
    hash: [u8; 32],
}

/// All keys of the node, by id. Rebuilt whole on reload and swapped atomically by the caller.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_id: HashMap<String, KeyRecord>,
}

impl KeyStore {
    /// Adds a key (already validated by the config loader).
    pub fn insert(&mut self, id: &str, hash: &str, workspace: WorkspaceIdx) -> Result<(), String> {
        let hash = parse_hash(hash)?;
        parse_key_id(id)?;
        self.by_id.insert(id.to_string(), KeyRecord { workspace, hash });
        Ok(())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Verifies a presented key. The work done (one SHA-256 and one 32-byte
    /// constant-time compare) is the same whether or not the id exists, so
    /// timing reveals neither ids nor secrets.
    pub fn verify(&self, presented: &str) -> Result<WorkspaceIdx, AuthError> {
        const DUMMY: [u8; 32] = [0u8; 32];
        let id = key_id(presented);
        let digest = hash_key(presented);
        let rec = id.ok().and_then(|id| self.by_id.get(id));
        let expected = rec.map_or(&DUMMY, |r| &r.hash);
        let equal: bool = digest.ct_eq(expected).into();
        match (id, rec) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(AuthError::UnknownId),
            (Ok(_), Some(r)) if equal => Ok(r.workspace),
            (Ok(_), Some(_)) => Err(AuthError::WrongSecret),
        }
    }
}

/// Shared, swappable key store.
pub type SharedKeys = Arc<arc_swap::ArcSwap<KeyStore>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_others_do_not() {
        let g = generate_key();
        assert!(g.key.starts_with("wpk_"));
        assert_eq!(g.key.len(), 4 + 16 + 1 + 43);
        let mut ks = KeyStore::default();
        ks.insert(&g.id, &g.hash, WorkspaceIdx(7)).unwrap();
        assert_eq!(ks.verify(&g.key), Ok(WorkspaceIdx(7)));

        let other = generate_key();
        assert_eq!(ks.verify(&other.key), Err(AuthError::UnknownId));
        // Same id, different secret.
        let forged = format!("wpk_{}_{}", g.id, &other.key[21..]);
        assert_eq!(ks.verify(&forged), Err(AuthError::WrongSecret));
        for bad in [
            "",
            "wpk_",
            "wpk_zz_",
            "abc",
            &g.key[..g.key.len() - 1],
            "wpk_0123456789abcdef",
        ] {
            assert_eq!(ks.verify(bad), Err(AuthError::Malformed), "{bad:?}");
        }
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
