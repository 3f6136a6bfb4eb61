//! The hash chain and the signed digests over it.
//!
//! A record's link is SHA-256 over its exact line bytes (no trailing newline), so a
//! verifier never re-serialises anything: whatever bytes a sink holds are what was
//! hashed. Each record carries the previous record's link in `prev`. At an interval
//! the writer appends an `audit.digest` record whose Ed25519 signature covers the node,
//! the chain head and the previous digest, so rewriting the chain after the fact
//! (recomputing every link) still fails verification at the next digest.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use sha2::{Digest as _, Sha256};

use crate::record::DigestDetail;

/// A SHA-256 link.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The link before a node's first record.
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of `line` (the record's bytes without the newline).
    pub fn of_line(line: &[u8]) -> Hash {
        Hash(Sha256::digest(line).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// The bytes an `audit.digest` signature covers. Domain-separated so a signature
/// made for anything else can never pass as a digest.
pub fn digest_message(node: &str, head_seq: u64, head_hash: &str, prev_digest: &str) -> Vec<u8> {
    format!("waping-audit-digest-v1\n{node}\n{head_seq}\n{head_hash}\n{prev_digest}\n").into_bytes()
}

/// First 16 hex digits of SHA-256 of a public key: names the key in digests so a
/// verifier holding several (after a rotation) knows which to try.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Errors loading or using the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("audit signing key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a key in the expected format.
    #[error(
        "audit signing key {path}: expected `ed25519:` followed by 64 hex digits (a 32-byte seed), as written by `waping-gateway audit keygen`"
    )]
    Format {
        /// The file.
        path: String,
    },
    /// The file is readable by others.
    #[error("audit signing key {path} has mode {mode:o}; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// A public key string is not 64 hex digits.
    #[error("audit public key must be 64 hex digits (as printed by `waping-gateway audit public-key`)")]
    PublicKey,
}

/// The node's Ed25519 signing key for digests.
pub struct DigestSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for DigestSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl DigestSigner {
    /// A signer from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> DigestSigner {
        // from_seed_unchecked only fails for a wrong length, which the type rules out.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("32-byte Ed25519 seed");
        let key_id = key_id(pair.public_key().as_ref());
        DigestSigner { pair, key_id }
    }

    /// A fresh random key; returns the signer and the seed to store.
    pub fn generate() -> (DigestSigner, [u8; 32]) {
        let seed: [u8; 32] = rand::random();
        (DigestSigner::from_seed(&seed), seed)
    }

    /// The file format: `ed25519:<64 hex>` and a newline.
    pub fn encode_seed(seed: &[u8; 32]) -> String {
        format!("ed25519:{}\n", hex::encode(seed))
    }

    /// Reads a key file written by [`DigestSigner::encode_seed`]; refuses group/other-readable files.
    pub fn load(path: &Path) -> Result<DigestSigner, KeyError> {
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
            path: p.clone(),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            // systemd credentials are 0400/0440 under a private directory; refuse only world access
            // and group write, which no legitimate deployment needs.
            if mode & 0o027 != 0 {
                return Err(KeyError::Permissions { path: p, mode });
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: p.clone(),
            source,
        })?;
        let hexpart = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| KeyError::Format { path: p.clone() })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut seed).map_err(|_| KeyError::Format { path: p })?;
        Ok(DigestSigner::from_seed(&seed))
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The key id written into digests.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The digest detail over a chain whose last record is `head_seq` with link `head`.
    pub fn digest(&self, node: &str, head_seq: u64, head: &Hash, prev_digest: &Hash) -> DigestDetail {
        let head_hash = head.to_hex();
        let prev_digest = prev_digest.to_hex();
        let msg = digest_message(node, head_seq, &head_hash, &prev_digest);
        let sig = self.pair.sign(&msg);
        DigestDetail {
            head_seq,
            head_hash,
            prev_digest,
            key_id: self.key_id.clone(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        }
    }
}

/// A public key a verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    id: String,
}

impl PublicKey {
    /// From 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey {
            id: key_id(&bytes),
            bytes,
        }
    }

    /// From 64 hex digits (optionally prefixed `ed25519:`).
    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        let s = s.trim();
        let s = s.strip_prefix("ed25519:").unwrap_or(s);
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| KeyError::PublicKey)?;
        Ok(PublicKey::from_bytes(b))
    }

    /// `ed25519:<hex>`, the form `audit public-key` prints.
    pub fn to_text(&self) -> String {
        format!("ed25519:{}", hex::encode(self.bytes))
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `d` is a valid signature by this key for `node`.
    pub fn verifies(&self, node: &str, d: &DigestDetail) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&d.sig) else {
            return false;
        };
        let msg = digest_message(node, d.head_seq, &d.head_hash, &d.prev_digest);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.bytes)
            .verify(&msg, &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_signatures_verify_and_bind_every_field() {
        let (signer, _) = DigestSigner::generate();
        let pk = PublicKey::from_bytes(signer.public_key());
        assert_eq!(pk.id(), signer.key_id());
        let head = Hash::of_line(b"{}");
        let d = signer.digest("edge-1", 41, &head, &Hash::ZERO);
        assert!(pk.verifies("edge-1", &d));
        assert!(!pk.verifies("edge-2", &d), "node is bound");
        let mut e = d.clone();
        e.head_seq = 42;
        assert!(!pk.verifies("edge-1", &e), "seq is bound");
        let mut e = d.clone();
        e.head_hash = Hash::ZERO.to_hex();
        assert!(!pk.verifies("edge-1", &e), "head is bound");
        let mut e = d.clone();
        e.prev_digest = head.to_hex();
        assert!(!pk.verifies("edge-1", &e), "previous digest is bound");
        let (other, _) = DigestSigner::generate();
        assert!(!PublicKey::from_bytes(other.public_key()).verifies("edge-1", &d));
    }

    #[test]
    fn key_file_round_trip_and_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (s, seed) = DigestSigner::generate();
        std::fs::write(&path, DigestSigner::encode_seed(&seed)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let back = DigestSigner::load(&path).unwrap();
        assert_eq!(back.public_key(), s.public_key());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            DigestSigner::load(&path),
            Err(KeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(DigestSigner::load(&path), Err(KeyError::Format { .. })));
        let pk = PublicKey::from_bytes(s.public_key());
        assert_eq!(PublicKey::from_hex(&pk.to_text()).unwrap(), pk);
    }

    #[test]
    fn hash_hex_round_trip() {
        let h = Hash::of_line(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("zz"), None);
    }
}
