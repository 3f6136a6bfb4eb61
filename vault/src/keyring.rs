//! The keyring file: wrapped data keys, their atomic rewrite, the cross-process lock and
//! master key rotation.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{Key, KeyInit as _, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{MasterKey, VaultError};

/// Name of the keyring file inside the vault directory.
pub const KEYRING_FILE: &str = "keyring.json";
/// Name of the lock file every keyring modification holds exclusively.
pub const LOCK_FILE: &str = "keyring.lock";
/// Temporary file a new keyring is written to before it is renamed over the old one.
const TMP_FILE: &str = "keyring.json.tmp";
/// The only keyring format version this build reads and writes.
const VERSION: u64 = 1;
/// Domain separation for wrapped data keys, so a wrapped key is never mistaken for (or
/// confused with) any other ciphertext under the master key.
const WRAP_DOMAIN: &[u8] = b"waping vault data key wrap v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// base64 payload of a wrapped key: nonce, 32-byte key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// The keyring as stored in `keyring.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Keyring {
    pub version: u64,
    pub master_key_id: String,
    /// Next data key id to hand out. Ids are never reused within a keyring, so a value sealed
    /// before a workspace was shredded and created again names a key id that no longer
    /// exists. Absent in hand-written files: then one past the largest id in use.
    #[serde(default)]
    pub next_key_id: u32,
    pub data_keys: BTreeMap<String, Entry>,
}

/// One workspace's wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub key_id: u32,
    pub created_at_ms: u64,
    /// base64 (standard, padded) of nonce ‖ ciphertext ‖ tag.
    pub wrapped: String,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

impl Keyring {
    pub fn empty(master_key_id: &str) -> Keyring {
        Keyring {
            version: VERSION,
            master_key_id: master_key_id.to_string(),
            next_key_id: 1,
            data_keys: BTreeMap::new(),
        }
    }

    /// A fresh key id, advancing the counter.
    pub fn allocate_key_id(&mut self) -> Result<u32, VaultError> {
        let in_use = self.data_keys.values().map(|e| e.key_id).max().unwrap_or(0);
        let id = self
            .next_key_id
            .max(in_use.checked_add(1).ok_or(VaultError::KeyIdsExhausted)?)
            .max(1);
        self.next_key_id = id.checked_add(1).ok_or(VaultError::KeyIdsExhausted)?;
        Ok(id)
    }
}

pub(crate) fn keyring_path(dir: &Path) -> PathBuf {
    dir.join(KEYRING_FILE)
}

/// Reads the keyring; `Ok(None)` when the file does not exist.
pub(crate) fn read(dir: &Path) -> Result<Option<Keyring>, VaultError> {
    let path = keyring_path(dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VaultError::Io {
                action: "reading",
                path,
                source,
            });
        }
    };
    let corrupt = |e: serde_json::Error| VaultError::KeyringCorrupt {
        path: path.clone(),
        detail: e.to_string(),
    };
    let probe: VersionProbe = serde_json::from_slice(&text).map_err(corrupt)?;
    if probe.version != VERSION {
        return Err(VaultError::KeyringVersion {
            path,
            version: probe.version,
        });
    }
    let keyring: Keyring = serde_json::from_slice(&text).map_err(corrupt)?;
    Ok(Some(keyring))
}

/// Replaces the keyring atomically: a 0600 temporary file, fsync, rename, fsync of the
/// directory. Callers hold the [`KeyringLock`].
pub(crate) fn write(dir: &Path, keyring: &Keyring) -> Result<(), VaultError> {
    let tmp = dir.join(TMP_FILE);
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| VaultError::Io { action, path, source }
    };
    let mut text = serde_json::to_vec_pretty(keyring).map_err(|e| VaultError::Io {
        action: "serialising",
        path: tmp.clone(),
        source: std::io::Error::other(e),
    })?;
    text.push(b'\n');
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io("creating", &tmp))?;
    // A temporary file left by a crash keeps its old mode through `open`; force 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("setting the mode of", &tmp))?;
    }
    file.write_all(&text).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    let path = keyring_path(dir);
    std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
    sync_dir(dir)
}

/// Fsyncs the directory holding `path`, so a new or renamed entry survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<(), VaultError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    #[cfg(unix)]
    {
        let io = |action| {
            move |source| VaultError::Io {
                action,
                path: dir.to_path_buf(),
                source,
            }
        };
        File::open(dir)
            .map_err(io("opening"))?
            .sync_all()
            .map_err(io("syncing"))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive lock on `keyring.lock`, held for the whole read-modify-write of the keyring.
/// Released when dropped (closing the file releases the lock).
#[derive(Debug)]
pub(crate) struct KeyringLock {
    _file: File,
}

impl KeyringLock {
    /// Blocks until this process holds the lock. Other holders only do a few file operations,
    /// so waits are short.
    pub fn acquire(dir: &Path) -> Result<KeyringLock, VaultError> {
        let path = dir.join(LOCK_FILE);
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| VaultError::Io { action, path, source }
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io("opening", &path))?;
        file.lock().map_err(io("locking", &path))?;
        Ok(KeyringLock { _file: file })
    }
}

/// A fresh random data key from the OS CSPRNG.
pub(crate) fn generate_dek() -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let mut dek = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng
        .try_fill_bytes(dek.as_mut_slice())
        .map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(dek)
}

/// AAD of a wrapped key: binds it to its workspace and key id, so an entry copied to another
/// workspace or renumbered fails to unwrap.
fn wrap_aad(workspace: &str, key_id: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_DOMAIN.len() + 1 + 4 + workspace.len() + 4);
    aad.extend_from_slice(WRAP_DOMAIN);
    aad.push(0);
    aad.extend_from_slice(&(workspace.len() as u32).to_le_bytes());
    aad.extend_from_slice(workspace.as_bytes());
    aad.extend_from_slice(&key_id.to_le_bytes());
    aad
}

/// Wraps `dek` under `master` for `workspace`/`key_id`: base64 of nonce ‖ ciphertext ‖ tag.
pub(crate) fn wrap(
    master: &MasterKey,
    workspace: &str,
    key_id: u32,
    dek: &[u8; 32],
) -> Result<String, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut buf = Zeroizing::new([0u8; WRAPPED_LEN]);
    buf[..NONCE_LEN].copy_from_slice(&nonce);
    buf[NONCE_LEN..NONCE_LEN + 32].copy_from_slice(dek);
    let tag = master
        .cipher()
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &wrap_aad(workspace, key_id),
            &mut buf[NONCE_LEN..NONCE_LEN + 32],
        )
        .map_err(|_| VaultError::Encrypt)?;
    buf[NONCE_LEN + 32..].copy_from_slice(&tag);
    Ok(STANDARD.encode(buf.as_slice()))
}

/// Unwraps a keyring entry of `workspace` with `master`.
pub(crate) fn unwrap(
    master: &MasterKey,
    workspace: &str,
    entry: &Entry,
    path: &Path,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let corrupt = |detail: String| VaultError::KeyringCorrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut raw = Zeroizing::new([0u8; WRAPPED_LEN + 3]);
    let n = STANDARD
        .decode_slice(entry.wrapped.as_bytes(), raw.as_mut_slice())
        .map_err(|e| corrupt(format!("data key of workspace `{workspace}`: bad base64 ({e})")))?;
    if n != WRAPPED_LEN {
        return Err(corrupt(format!(
            "data key of workspace `{workspace}`: {n} bytes, expected {WRAPPED_LEN}"
        )));
    }
    let mut dek = Zeroizing::new([0u8; 32]);
    dek.copy_from_slice(&raw[NONCE_LEN..NONCE_LEN + 32]);
    master
        .cipher()
        .decrypt_in_place_detached(
            XNonce::from_slice(&raw[..NONCE_LEN]),
            &wrap_aad(workspace, entry.key_id),
            dek.as_mut_slice(),
            Tag::from_slice(&raw[NONCE_LEN + 32..WRAPPED_LEN]),
        )
        .map_err(|_| {
            corrupt(format!(
                "data key {} of workspace `{workspace}` fails authentication under master key {} \
                 (modified, or moved from another workspace)",
                entry.key_id,
                master.id_str()
            ))
        })?;
    Ok(dek)
}

/// A data cipher for `dek`. The cipher keeps its own copy of the key and zeroizes it on drop.
pub(crate) fn data_cipher(dek: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(dek))
}

/// What [`rotate_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Id of the master key the keyring was under.
    pub old_id: String,
    /// Id of the master key it is under now.
    pub new_id: String,
    /// Data keys re-wrapped (or, when the keyring was already under `new`, verified).
    pub data_keys: usize,
}

/// Re-wraps every data key in `dir`'s keyring from `old` to `new`, atomically, under the
/// keyring lock. Data keys do not change, so everything sealed stays readable and running
/// vaults keep working: their next keyring modification notices the new master key id and
/// reloads the key from their [`crate::KeySource`].
///
/// Idempotent: when the keyring is already under `new` (a repeated run), every key is checked
/// to unwrap under `new` and nothing is written.
pub fn rotate_master_key(dir: &Path, old: &MasterKey, new: &MasterKey) -> Result<RotationReport, VaultError> {
    if old.id_str() == new.id_str() {
        return Err(VaultError::SameMasterKey { id: old.id() });
    }
    let path = keyring_path(dir);
    let _lock = KeyringLock::acquire(dir)?;
    let mut keyring = read(dir)?.ok_or_else(|| VaultError::KeyringMissing { path: path.clone() })?;
    let report = |data_keys| RotationReport {
        old_id: old.id(),
        new_id: new.id(),
        data_keys,
    };
    if keyring.master_key_id == new.id_str() {
        for (workspace, entry) in &keyring.data_keys {
            unwrap(new, workspace, entry, &path)?;
        }
        return Ok(report(keyring.data_keys.len()));
    }
    if keyring.master_key_id != old.id_str() {
        return Err(VaultError::MasterKeyMismatch {
            path,
            keyring_id: keyring.master_key_id,
            key_id: old.id(),
        });
    }
    for (workspace, entry) in keyring.data_keys.iter_mut() {
        let dek = unwrap(old, workspace, entry, &path)?;
        entry.wrapped = wrap(new, workspace, entry.key_id, &dek)?;
    }
    keyring.master_key_id = new.id();
    write(dir, &keyring)?;
    Ok(report(keyring.data_keys.len()))
}
