//! The node master key: loading (with a permission check), generating, writing and its id.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::VaultError;

/// Domain string hashed before the key to derive its public id.
const ID_DOMAIN: &[u8] = b"waping master key id v1";

/// Largest key file read, in bytes. The longest accepted encoding is 64 hex characters plus
/// whitespace; anything much larger is not a key file, and reading it whole would only copy
/// more possibly-secret bytes around.
const MAX_KEY_FILE: u64 = 4096;

/// The node master key: 32 bytes that wrap every workspace's data key.
///
/// The bytes live on the heap (moves do not leave copies on the stack) and are zeroized on
/// drop. `Debug` prints only the id.
pub struct MasterKey {
    bytes: Box<[u8; 32]>,
    id: String,
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let mut bytes = Zeroizing::new(bytes);
        let mut boxed = Box::new([0u8; 32]);
        boxed.copy_from_slice(bytes.as_slice());
        bytes.zeroize();
        let id = key_id(&boxed);
        MasterKey { bytes: boxed, id }
    }

    /// A new random master key from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails (on Linux: only before the entropy pool is
    /// initialised at boot, and `getrandom` blocks rather than fails then).
    pub fn generate() -> MasterKey {
        let mut bytes = Box::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(bytes.as_mut_slice())
            .expect("the OS random number generator failed");
        let id = key_id(&bytes);
        MasterKey { bytes, id }
    }

    /// The key's public id: 16 hex characters, the first 8 bytes of
    /// SHA-256(`"waping master key id v1"` ‖ key). Not secret; it tells keys apart in
    /// messages and in the keyring.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    pub(crate) fn id_str(&self) -> &str {
        &self.id
    }

    /// Loads the key from `source`, refusing files that other users can access.
    ///
    /// Accepted content, after trimming ASCII whitespace: 64 hex characters, or base64
    /// (standard or url-safe, padded or not) of exactly 32 bytes; or, untrimmed, exactly 32
    /// raw bytes that are not all printable ASCII (32 printable characters are far more likely
    /// a mistyped text key than random bytes, which are all printable with probability
    /// 2^-45).
    pub fn load(source: &KeySource) -> Result<MasterKey, VaultError> {
        let path = source.resolve()?;
        let unreadable = |source| VaultError::KeyFileUnreadable {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(unreadable)?;
        // The mode of the opened file, not of the path, so a swap after the check cannot
        // slip an open file through.
        let meta = file.metadata().map_err(unreadable)?;
        check_mode(&path, &meta)?;
        // Capacity above the limit: read_to_end never reallocates, so no stray copies.
        let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 64));
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut content)
            .map_err(unreadable)?;
        parse_key(&content).map_err(|found| VaultError::KeyFileFormat { path, found })
    }

    /// Writes the key to a new file: 64 lowercase hex characters and a newline, mode 0600,
    /// fsynced with its directory. Refuses to overwrite an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<(), VaultError> {
        let io = |action| {
            move |source: std::io::Error| VaultError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                VaultError::KeyFileExists {
                    path: path.to_path_buf(),
                }
            } else {
                io("creating")(source)
            }
        })?;
        let mut text = Zeroizing::new(String::with_capacity(65));
        for b in self.bytes.iter() {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        drop(file);
        crate::keyring::sync_parent(path)
    }

    /// A cipher under this key, for wrapping data keys. Zeroizes its copy on drop.
    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.bytes.as_slice()))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

fn key_id(bytes: &[u8; 32]) -> String {
    let mut hash = Sha256::new();
    hash.update(ID_DOMAIN);
    hash.update(bytes);
    hex::encode(&hash.finalize()[..8])
}

/// Decodes a key file's content; on failure describes what was found without quoting it.
fn parse_key(content: &[u8]) -> Result<MasterKey, String> {
    let trimmed = content.trim_ascii();
    let mut key = Zeroizing::new([0u8; 32]);
    if trimmed.len() == 64 && trimmed.iter().all(u8::is_ascii_hexdigit) {
        hex::decode_to_slice(trimmed, key.as_mut_slice())
            .map_err(|_| "64 characters that are not valid hex".to_string())?;
        return Ok(MasterKey::from_bytes(*key));
    }
    if matches!(trimmed.len(), 43 | 44) {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            // decode_slice needs room for up to 33 bytes from 44 characters before it knows
            // about padding; anything but exactly 32 is rejected below.
            let mut out = Zeroizing::new([0u8; 36]);
            if let Ok(32) = engine.decode_slice(trimmed, out.as_mut_slice()) {
                key.copy_from_slice(&out[..32]);
                return Ok(MasterKey::from_bytes(*key));
            }
        }
    }
    if content.len() == 32 {
        if content.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(
                "32 printable characters (text, not raw bytes; a 32-hex-character key is only 16 bytes)"
                    .to_string(),
            );
        }
        key.copy_from_slice(content);
        return Ok(MasterKey::from_bytes(*key));
    }
    if content.len() as u64 > MAX_KEY_FILE {
        return Err(format!("more than {MAX_KEY_FILE} bytes"));
    }
    let kind = if trimmed.is_empty() {
        "nothing but whitespace"
    } else if trimmed.iter().all(u8::is_ascii_hexdigit) {
        "hex characters"
    } else if trimmed.is_ascii() {
        "text"
    } else {
        "binary data"
    };
    Err(format!(
        "{} bytes ({} after trimming whitespace) of {kind}",
        content.len(),
        trimmed.len()
    ))
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    // Group write, or any access by others.
    if mode & 0o027 != 0 {
        return Err(VaultError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), VaultError> {
    Ok(())
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file.
    File(PathBuf),
    /// A systemd credential: the file `$CREDENTIALS_DIRECTORY/<name>`, as provided by
    /// `LoadCredential=` or `LoadCredentialEncrypted=`.
    Credential(String),
}

impl KeySource {
    /// A human-readable description for messages, e.g. `file /etc/waping/master.key`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(path) => format!("file {}", path.display()),
            KeySource::Credential(name) => match self.resolve() {
                Ok(path) => format!("systemd credential `{name}` ({})", path.display()),
                Err(_) => format!("systemd credential `{name}` ($CREDENTIALS_DIRECTORY unset)"),
            },
        }
    }

    /// The file the key is read from.
    pub fn resolve(&self) -> Result<PathBuf, VaultError> {
        self.resolve_in(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
    }

    /// [`KeySource::resolve`] with the credentials directory given, so tests need not set
    /// the process environment.
    pub(crate) fn resolve_in(
        &self,
        credentials_dir: Option<&std::ffi::OsStr>,
    ) -> Result<PathBuf, VaultError> {
        match self {
            KeySource::File(path) => Ok(path.clone()),
            KeySource::Credential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(VaultError::InvalidCredentialName { name: name.clone() });
                }
                match credentials_dir {
                    Some(dir) if !dir.is_empty() => Ok(Path::new(dir).join(name)),
                    _ => Err(VaultError::CredentialsDirectoryUnset { name: name.clone() }),
                }
            }
        }
    }
}
