//! The vault: per-workspace data keys in memory, sealing and opening values.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

use crate::keyring::{self, Entry, Keyring, KeyringLock};
use crate::{KeySource, MasterKey, VaultError};

/// Version byte of sealed values.
const SEAL_VERSION: u8 = 1;
/// Version byte and key id.
const HEADER_LEN: usize = 1 + 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value has on top of its plaintext: header, nonce, tag (45).
pub const SEAL_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Longest workspace name the vault stores, in bytes. The gateway's own limit is 64.
pub const MAX_WORKSPACE_LEN: usize = 255;

/// One workspace's data key, as a ready cipher (which zeroizes its key on drop).
struct DataKey {
    key_id: u32,
    cipher: XChaCha20Poly1305,
}

/// What the read path needs; replaced as a whole under the write lock by modifications.
struct State {
    master: Arc<MasterKey>,
    keys: HashMap<String, Arc<DataKey>>,
}

/// Per-workspace data keys wrapped by a node master key, stored in `dir/keyring.json`.
///
/// `seal` and `open_sealed` take a read lock only long enough to clone the workspace's key
/// handle. Keyring modifications (`ensure_workspace` creating a key, `shred`) are serialised
/// within the process by a mutex and across processes by an exclusive lock on
/// `dir/keyring.lock`, and each re-reads the keyring under the lock before writing it.
pub struct Vault {
    dir: PathBuf,
    source: Option<KeySource>,
    state: RwLock<State>,
    modify: Mutex<()>,
}

/// Everything a keyring modification works on, with both locks held.
struct Locked<'a> {
    _modify: MutexGuard<'a, ()>,
    _flock: KeyringLock,
    ring: Keyring,
    master: Arc<MasterKey>,
    keys: HashMap<String, Arc<DataKey>>,
}

impl Vault {
    /// Opens the vault in `dir` (created with mode 0700 if missing), creating an empty keyring
    /// for `master` if there is none, and unwraps every data key.
    ///
    /// `source` is where `master` came from; when the master key is rotated while the vault
    /// runs, the vault reloads the key from there (see [`crate::rotate_master_key`]). `None`
    /// means such a rotation makes keyring modifications fail until a restart.
    pub fn open(dir: &Path, master: MasterKey, source: Option<KeySource>) -> Result<Vault, VaultError> {
        create_dir(dir)?;
        let path = keyring::keyring_path(dir);
        let ring = match keyring::read(dir)? {
            Some(ring) => ring,
            None => {
                let _lock = KeyringLock::acquire(dir)?;
                match keyring::read(dir)? {
                    Some(ring) => ring,
                    None => {
                        let ring = Keyring::empty(master.id_str());
                        keyring::write(dir, &ring)?;
                        ring
                    }
                }
            }
        };
        if ring.master_key_id != master.id_str() {
            return Err(VaultError::MasterKeyMismatch {
                path,
                keyring_id: ring.master_key_id,
                key_id: master.id(),
            });
        }
        let mut keys = HashMap::with_capacity(ring.data_keys.len());
        for (workspace, entry) in &ring.data_keys {
            keys.insert(workspace.clone(), unwrap_key(&master, workspace, entry, &path)?);
        }
        Ok(Vault {
            dir: dir.to_path_buf(),
            source,
            state: RwLock::new(State {
                master: Arc::new(master),
                keys,
            }),
            modify: Mutex::new(()),
        })
    }

    /// Id of the master key in use (changes when the vault follows a rotation).
    pub fn master_key_id(&self) -> String {
        self.read().master.id()
    }

    /// Makes sure `workspace` has a data key, creating and durably storing a new random one if
    /// it has none. Returns whether a key was created by this call.
    pub fn ensure_workspace(&self, workspace: &str) -> Result<bool, VaultError> {
        validate_workspace(workspace)?;
        if self.read().keys.contains_key(workspace) {
            return Ok(false);
        }
        let mut locked = self.lock_and_sync()?;
        // Another process (or thread) may have created it; the sync picked that up.
        if locked.keys.contains_key(workspace) {
            self.commit(locked);
            return Ok(false);
        }
        let dek = keyring::generate_dek()?;
        let key_id = locked.ring.allocate_key_id()?;
        let wrapped = keyring::wrap(&locked.master, workspace, key_id, &dek)?;
        locked.ring.data_keys.insert(
            workspace.to_string(),
            Entry {
                key_id,
                created_at_ms: now_ms(),
                wrapped,
            },
        );
        keyring::write(&self.dir, &locked.ring)?;
        locked.keys.insert(
            workspace.to_string(),
            Arc::new(DataKey {
                key_id,
                cipher: keyring::data_cipher(&dek),
            }),
        );
        self.commit(locked);
        Ok(true)
    }

    /// Whether `workspace` has a data key in this vault.
    pub fn has_workspace(&self, workspace: &str) -> bool {
        self.read().keys.contains_key(workspace)
    }

    /// Workspaces with a data key, sorted.
    pub fn workspaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Seals `plaintext` with `workspace`'s data key, bound to `aad` (which must be given
    /// again, byte for byte, to open it). Output: `0x01 | key_id u32 LE | nonce[24] |
    /// ciphertext | tag[16]`, [`SEAL_OVERHEAD`] bytes longer than the plaintext.
    pub fn seal(&self, workspace: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let key = self.data_key(workspace)?;
        let mut nonce = [0u8; NONCE_LEN];
        // ThreadRng is a CSPRNG (ChaCha12 reseeded from the OS); a syscall per value would
        // cost more than the encryption of a small value.
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&key.key_id.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let header = header(&out);
        let tag = with_full_aad(&header, aad, |full| {
            key.cipher.encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                full,
                &mut out[HEADER_LEN + NONCE_LEN..],
            )
        })
        .map_err(|_| VaultError::Encrypt)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed by [`Vault::seal`] for `workspace` under the same `aad`.
    ///
    /// Errors: [`VaultError::KeyShredded`] when the workspace has no key (callers treat the
    /// data as deleted); [`VaultError::KeyIdMismatch`] when it was sealed under a key id the
    /// workspace no longer has; [`VaultError::Tampered`] for everything else that fails.
    pub fn open_sealed(&self, workspace: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        let key = self.data_key(workspace)?;
        let tampered = |reason| VaultError::Tampered {
            workspace: workspace.to_string(),
            reason,
        };
        match sealed.first() {
            None => return Err(tampered("empty")),
            Some(&SEAL_VERSION) => {}
            Some(_) => return Err(tampered("unknown format version")),
        }
        if sealed.len() < SEAL_OVERHEAD {
            return Err(tampered("too short"));
        }
        let header = header(sealed);
        let key_id = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        if key_id != key.key_id {
            return Err(self.key_id_error(workspace, key_id, key.key_id));
        }
        let nonce = XNonce::from_slice(&sealed[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let (body, tag) = sealed[HEADER_LEN + NONCE_LEN..].split_at(sealed.len() - SEAL_OVERHEAD);
        let mut out = body.to_vec();
        with_full_aad(&header, aad, |full| {
            key.cipher
                .decrypt_in_place_detached(nonce, full, &mut out, Tag::from_slice(tag))
        })
        .map_err(|_| tampered("authentication failed (modified, or wrong associated data)"))?;
        Ok(out)
    }

    /// Destroys `workspace`'s data key: removed from the keyring (durably, fsynced) and from
    /// memory, where it is zeroized once in-flight seals using it finish. Everything sealed
    /// under it becomes unreadable for good. Returns whether the workspace had a key.
    pub fn shred(&self, workspace: &str) -> Result<bool, VaultError> {
        let mut locked = self.lock_and_sync()?;
        let on_disk = locked.ring.data_keys.remove(workspace).is_some();
        if on_disk {
            keyring::write(&self.dir, &locked.ring)?;
        }
        let in_memory = locked.keys.remove(workspace).is_some();
        self.commit(locked);
        Ok(on_disk || in_memory)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // State is only ever replaced whole, so a panic elsewhere cannot leave it half-done.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn data_key(&self, workspace: &str) -> Result<Arc<DataKey>, VaultError> {
        self.read()
            .keys
            .get(workspace)
            .cloned()
            .ok_or_else(|| VaultError::KeyShredded {
                workspace: workspace.to_string(),
            })
    }

    /// Key ids are unique within a keyring, so one held by another workspace means the value
    /// was moved; otherwise it names a key this workspace no longer has.
    fn key_id_error(&self, workspace: &str, sealed_key_id: u32, current_key_id: u32) -> VaultError {
        let elsewhere = self
            .read()
            .keys
            .iter()
            .any(|(name, key)| name != workspace && key.key_id == sealed_key_id);
        if elsewhere {
            VaultError::Tampered {
                workspace: workspace.to_string(),
                reason: "sealed under another workspace's data key",
            }
        } else {
            VaultError::KeyIdMismatch {
                workspace: workspace.to_string(),
                sealed_key_id,
                current_key_id,
            }
        }
    }

    /// Takes both locks, re-reads the keyring, follows a master key rotation if one happened
    /// and brings the key set in line with the file (keys created or shredded by other
    /// processes). Nothing is installed until [`Vault::commit`].
    fn lock_and_sync(&self) -> Result<Locked<'_>, VaultError> {
        let modify = self.modify.lock().unwrap_or_else(PoisonError::into_inner);
        let flock = KeyringLock::acquire(&self.dir)?;
        let path = keyring::keyring_path(&self.dir);
        let ring =
            keyring::read(&self.dir)?.ok_or_else(|| VaultError::KeyringMissing { path: path.clone() })?;
        let (current_master, current_keys) = {
            let state = self.read();
            (state.master.clone(), state.keys.clone())
        };
        let master = if ring.master_key_id == current_master.id_str() {
            current_master
        } else {
            self.reload_master(&ring.master_key_id, &current_master)?
        };
        let mut keys = HashMap::with_capacity(ring.data_keys.len() + 1);
        for (workspace, entry) in &ring.data_keys {
            // Rotation re-wraps but keeps data keys, so an unchanged key id means an unchanged key.
            let key = match current_keys.get(workspace) {
                Some(key) if key.key_id == entry.key_id => key.clone(),
                _ => unwrap_key(&master, workspace, entry, &path)?,
            };
            keys.insert(workspace.clone(), key);
        }
        Ok(Locked {
            _modify: modify,
            _flock: flock,
            ring,
            master,
            keys,
        })
    }

    fn reload_master(&self, keyring_id: &str, current: &MasterKey) -> Result<Arc<MasterKey>, VaultError> {
        let rotated = |location, installed_id| VaultError::MasterKeyRotated {
            keyring_id: keyring_id.to_string(),
            current_id: current.id(),
            location,
            installed_id,
        };
        let Some(source) = &self.source else {
            return Err(rotated(
                "the gateway's key source and restart it (this vault was opened without a source \
                 to reload from)"
                    .to_string(),
                None,
            ));
        };
        let key = MasterKey::load(source)?;
        if key.id_str() == keyring_id {
            Ok(Arc::new(key))
        } else {
            Err(rotated(source.describe(), Some(key.id())))
        }
    }

    fn commit(&self, locked: Locked<'_>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.master = locked.master;
        state.keys = locked.keys;
        // The locks are released after the new state is visible (fields drop after this).
    }

    /// The raw data key of `workspace`, unwrapped from the file, for tests that look for it.
    #[cfg(test)]
    pub(crate) fn dek_for_test(&self, workspace: &str) -> zeroize::Zeroizing<[u8; 32]> {
        let ring = keyring::read(&self.dir).unwrap().unwrap();
        let master = self.read().master.clone();
        keyring::unwrap(&master, workspace, &ring.data_keys[workspace], &self.dir).unwrap()
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .field("master_key_id", &state.master.id_str())
            .field("workspaces", &state.keys.len())
            .field("source", &self.source.as_ref().map(KeySource::describe))
            .finish()
    }
}

fn unwrap_key(
    master: &MasterKey,
    workspace: &str,
    entry: &Entry,
    path: &Path,
) -> Result<Arc<DataKey>, VaultError> {
    let dek = keyring::unwrap(master, workspace, entry, path)?;
    Ok(Arc::new(DataKey {
        key_id: entry.key_id,
        cipher: keyring::data_cipher(&dek),
    }))
}

fn header(sealed: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&sealed[..HEADER_LEN]);
    header
}

/// Calls `f` with the AEAD's associated data: the header (so the version and key id are
/// authenticated too) followed by the caller's `aad`. On the stack for the usual short AADs.
fn with_full_aad<R>(header: &[u8; HEADER_LEN], aad: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut stack = [0u8; 256];
    if aad.len() <= stack.len() - HEADER_LEN {
        stack[..HEADER_LEN].copy_from_slice(header);
        stack[HEADER_LEN..HEADER_LEN + aad.len()].copy_from_slice(aad);
        f(&stack[..HEADER_LEN + aad.len()])
    } else {
        f(&[&header[..], aad].concat())
    }
}

fn validate_workspace(workspace: &str) -> Result<(), VaultError> {
    let reason = if workspace.is_empty() {
        "empty"
    } else if workspace.len() > MAX_WORKSPACE_LEN {
        "longer than 255 bytes"
    } else if workspace.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(VaultError::InvalidWorkspace { reason })
}

fn create_dir(dir: &Path) -> Result<(), VaultError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| VaultError::Io {
        action: "creating the directory",
        path: dir.to_path_buf(),
        source,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
