//! Envelope encryption at rest for waping-gateway.
//!
//! - Every workspace has a **data key** (DEK): 32 random bytes that seal its values (device
//!   store credentials, journal message bodies) with XChaCha20-Poly1305 and a random 24-byte
//!   nonce per value.
//! - DEKs are stored only **wrapped** (XChaCha20-Poly1305 again) by the node's **master key**,
//!   in `<dir>/keyring.json`; the wrap's associated data names the workspace and key id, so a
//!   wrapped key moved elsewhere does not unwrap. The master key itself lives outside the data
//!   directory (a 0600 file or a systemd credential) and is never written next to the data.
//! - **Rotating** the master key ([`rotate_master_key`]) re-wraps the DEKs and leaves them
//!   unchanged, so nothing sealed has to be re-encrypted and a running [`Vault`] keeps working.
//! - **Shredding** a workspace ([`Vault::shred`]) deletes its DEK, which makes everything
//!   sealed under it unreadable wherever copies of the ciphertext remain.
//!
//! Design: `docs/design/0013-encryption-at-rest.md`.
#![forbid(unsafe_code)]

mod error;
mod keyring;
mod master;
mod vault;

#[cfg(test)]
mod tests;

pub use error::{Fault, VaultError};
pub use keyring::{KEYRING_FILE, LOCK_FILE, RotationReport, rotate_master_key};
pub use master::{KeySource, MasterKey};
pub use vault::{MAX_WORKSPACE_LEN, SEAL_OVERHEAD, Vault};
