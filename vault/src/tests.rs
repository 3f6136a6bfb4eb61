use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{Key, KeyInit as _, Tag, XChaCha20Poly1305, XNonce};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::keyring::{self, Keyring};
use crate::{Fault, KEYRING_FILE, KeySource, MasterKey, SEAL_OVERHEAD, Vault, VaultError, rotate_master_key};

fn key(n: u8) -> MasterKey {
    MasterKey::from_bytes([n; 32])
}

fn open(dir: &Path, n: u8) -> Vault {
    Vault::open(dir, key(n), None).unwrap()
}

fn read_ring(dir: &Path) -> Keyring {
    keyring::read(dir).unwrap().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A key file with `content` and `mode`.
fn key_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn load_bytes(dir: &Path, content: &[u8]) -> Result<MasterKey, VaultError> {
    let path = key_file(dir, "k", content, 0o600);
    MasterKey::load(&KeySource::File(path))
}

/// Installs `key` at `path`, replacing whatever is there, as an operator would.
fn install(key: &MasterKey, path: &Path) {
    let _ = std::fs::remove_file(path);
    key.write_new_file(path).unwrap();
}

#[test]
fn vault_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Vault>();
    check::<MasterKey>();
}

#[test]
fn seal_open_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    assert!(vault.ensure_workspace("acme").unwrap());
    assert!(!vault.ensure_workspace("acme").unwrap());
    let plaintext = b"hello, this is a message body that is long enough to look for".to_vec();
    let a = vault.seal("acme", b"journal/7", &plaintext).unwrap();
    let b = vault.seal("acme", b"journal/7", &plaintext).unwrap();
    assert_eq!(a.len(), plaintext.len() + SEAL_OVERHEAD);
    assert_eq!(a[0], 1);
    assert_ne!(a, b, "random nonces make every sealing different");
    assert!(!a.windows(16).any(|w| plaintext.windows(16).any(|p| p == w)));
    assert_eq!(vault.open_sealed("acme", b"journal/7", &a).unwrap(), plaintext);
    assert_eq!(vault.open_sealed("acme", b"journal/7", &b).unwrap(), plaintext);
    let empty = vault.seal("acme", b"", b"").unwrap();
    assert_eq!(vault.open_sealed("acme", b"", &empty).unwrap(), b"");
    // Long AADs take the heap path of the AAD concatenation.
    let long_aad = vec![9u8; 1000];
    let sealed = vault.seal("acme", &long_aad, b"x").unwrap();
    assert_eq!(vault.open_sealed("acme", &long_aad, &sealed).unwrap(), b"x");
    assert!(vault.open_sealed("acme", &long_aad[..999], &sealed).is_err());
}

#[test]
fn aad_mismatch_fails() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("acme").unwrap();
    let sealed = vault.seal("acme", b"device/1/identity", b"secret").unwrap();
    for aad in [
        &b"device/1/identitx"[..],
        b"device/2/identity",
        b"",
        b"device/1/identity\0",
    ] {
        let err = vault.open_sealed("acme", aad, &sealed).unwrap_err();
        assert!(matches!(err, VaultError::Tampered { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::Data);
        assert!(!err.retryable());
    }
}

#[test]
fn any_bit_flip_or_truncation_fails() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("acme").unwrap();
    let sealed = vault.seal("acme", b"aad", b"0123456789").unwrap();
    for byte in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[byte] ^= 1 << bit;
            let err = vault.open_sealed("acme", b"aad", &bad).unwrap_err();
            match (byte, &err) {
                (1..=4, VaultError::KeyIdMismatch { sealed_key_id, .. }) => {
                    assert_ne!(*sealed_key_id, 1)
                }
                (_, VaultError::Tampered { .. }) => {}
                _ => panic!("byte {byte} bit {bit}: unexpected {err:?}"),
            }
            assert_eq!(err.fault(), Fault::Data);
        }
    }
    for len in 0..sealed.len() {
        let err = vault.open_sealed("acme", b"aad", &sealed[..len]).unwrap_err();
        assert!(matches!(err, VaultError::Tampered { .. }), "len {len}: {err:?}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(matches!(
        vault.open_sealed("acme", b"aad", &longer),
        Err(VaultError::Tampered { .. })
    ));
    assert_eq!(vault.open_sealed("acme", b"aad", &sealed).unwrap(), b"0123456789");
}

#[test]
fn wrong_workspace_fails() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("a").unwrap();
    vault.ensure_workspace("b").unwrap();
    let sealed = vault.seal("a", b"aad", b"for a only").unwrap();
    let err = vault.open_sealed("b", b"aad", &sealed).unwrap_err();
    assert!(
        matches!(err, VaultError::Tampered { reason, .. } if reason.contains("another workspace")),
        "{err:?}"
    );
    // Same key id forged into the header: the data key itself differs.
    let b_id = read_ring(dir.path()).data_keys["b"].key_id;
    let mut forged = sealed.clone();
    forged[1..5].copy_from_slice(&b_id.to_le_bytes());
    assert!(matches!(
        vault.open_sealed("b", b"aad", &forged),
        Err(VaultError::Tampered { .. })
    ));
    assert!(matches!(
        vault.open_sealed("c", b"aad", &sealed),
        Err(VaultError::KeyShredded { .. })
    ));
    assert!(matches!(
        vault.seal("c", b"aad", b"x"),
        Err(VaultError::KeyShredded { .. })
    ));
}

#[test]
fn shred_then_open_is_key_shredded_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("gone").unwrap();
    vault.ensure_workspace("kept").unwrap();
    let sealed = vault.seal("gone", b"", b"credentials").unwrap();
    let kept = vault.seal("kept", b"", b"still here").unwrap();
    assert!(vault.shred("gone").unwrap());
    assert!(!vault.shred("gone").unwrap());
    assert!(!vault.has_workspace("gone"));
    let err = vault.open_sealed("gone", b"", &sealed).unwrap_err();
    assert!(
        matches!(&err, VaultError::KeyShredded { workspace } if workspace == "gone"),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Data);
    assert!(!err.retryable());
    assert!(!read_ring(dir.path()).data_keys.contains_key("gone"));
    drop(vault);
    let vault = open(dir.path(), 1);
    assert_eq!(vault.workspaces(), vec!["kept".to_string()]);
    assert!(matches!(
        vault.open_sealed("gone", b"", &sealed),
        Err(VaultError::KeyShredded { .. })
    ));
    assert_eq!(vault.open_sealed("kept", b"", &kept).unwrap(), b"still here");
}

#[test]
fn shred_then_ensure_creates_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("ws").unwrap();
    let old_dek = vault.dek_for_test("ws");
    let old_id = read_ring(dir.path()).data_keys["ws"].key_id;
    let sealed = vault.seal("ws", b"aad", b"old data").unwrap();
    vault.shred("ws").unwrap();
    assert!(vault.ensure_workspace("ws").unwrap());
    let new_id = read_ring(dir.path()).data_keys["ws"].key_id;
    assert_ne!(new_id, old_id, "key ids are never reused");
    assert_ne!(*vault.dek_for_test("ws"), *old_dek);
    let err = vault.open_sealed("ws", b"aad", &sealed).unwrap_err();
    assert!(
        matches!(err, VaultError::KeyIdMismatch { sealed_key_id, current_key_id, .. }
            if sealed_key_id == old_id && current_key_id == new_id),
        "{err:?}"
    );
    // Even with the new key id patched in, the new key cannot open old data.
    let mut patched = sealed.clone();
    patched[1..5].copy_from_slice(&new_id.to_le_bytes());
    assert!(matches!(
        vault.open_sealed("ws", b"aad", &patched),
        Err(VaultError::Tampered { .. })
    ));
}

#[test]
fn reopen_restores_keys() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    let mut sealed = Vec::new();
    for ws in ["a", "b", "c"] {
        vault.ensure_workspace(ws).unwrap();
        sealed.push((ws, vault.seal(ws, ws.as_bytes(), ws.as_bytes()).unwrap()));
    }
    drop(vault);
    let vault = open(dir.path(), 1);
    assert_eq!(vault.workspaces(), vec!["a", "b", "c"]);
    assert_eq!(vault.master_key_id(), key(1).id());
    for (ws, value) in sealed {
        assert!(vault.has_workspace(ws));
        assert_eq!(
            vault.open_sealed(ws, ws.as_bytes(), &value).unwrap(),
            ws.as_bytes()
        );
        assert!(!vault.ensure_workspace(ws).unwrap());
    }
}

#[test]
fn wrong_master_key_is_refused_with_both_ids() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1));
    let err = Vault::open(dir.path(), key(2), None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VaultError::MasterKeyMismatch { .. }), "{err:?}");
    assert!(text.contains(&key(1).id()), "{text}");
    assert!(text.contains(&key(2).id()), "{text}");
    assert!(text.contains("rotate-master-key"), "{text}");
    assert_eq!(err.fault(), Fault::Operator);
}

#[test]
fn keyring_files_are_private_and_hold_no_clear_keys() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    let ring_path = dir.path().join(KEYRING_FILE);
    assert_eq!(mode(&ring_path), 0o600, "created 0600");
    vault.ensure_workspace("acme").unwrap();
    vault.ensure_workspace("other").unwrap();
    assert_eq!(mode(&ring_path), 0o600, "rewritten 0600");
    assert_eq!(mode(&dir.path().join(crate::LOCK_FILE)), 0o600);

    let dek = vault.dek_for_test("acme");
    // The accessor returns the key actually in use: open a vault-sealed value with it by hand.
    let sealed = vault.seal("acme", b"aad", b"body").unwrap();
    let cipher = XChaCha20Poly1305::new(Key::from_slice(dek.as_slice()));
    let (header, rest) = sealed.split_at(5);
    let (nonce, rest) = rest.split_at(24);
    let (body, tag) = rest.split_at(rest.len() - 16);
    let mut out = body.to_vec();
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &[header, b"aad"].concat(),
            &mut out,
            Tag::from_slice(tag),
        )
        .unwrap();
    assert_eq!(out, b"body");

    let file = std::fs::read(&ring_path).unwrap();
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(!file.windows(32).any(|w| w == dek.as_slice()));
    for encoded in [
        hex::encode(dek.as_slice()),
        hex::encode_upper(dek.as_slice()),
        STANDARD.encode(dek.as_slice()),
        URL_SAFE_NO_PAD.encode(dek.as_slice()),
    ] {
        assert!(!text.contains(&encoded));
    }
    let master_hex = hex::encode([1u8; 32]);
    assert!(!text.contains(&master_hex));
    let debug = format!("{vault:?} {:?}", key(1));
    assert!(!debug.contains(&master_hex) && !debug.contains(&hex::encode(dek.as_slice())));
    assert!(debug.contains(&key(1).id()));
}

#[test]
fn moved_or_modified_wrapped_key_fails_to_unwrap() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("a").unwrap();
    drop(vault);
    let mut ring = read_ring(dir.path());
    let entry = ring.data_keys["a"].clone();
    ring.data_keys.insert("b".into(), entry.clone());
    keyring::write(dir.path(), &ring).unwrap();
    let err = Vault::open(dir.path(), key(1), None).unwrap_err();
    assert!(
        matches!(&err, VaultError::KeyringCorrupt { detail, .. } if detail.contains("`b`")),
        "{err:?}"
    );

    ring.data_keys.remove("b");
    ring.data_keys.get_mut("a").unwrap().key_id += 1;
    keyring::write(dir.path(), &ring).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), key(1), None),
        Err(VaultError::KeyringCorrupt { .. })
    ));

    std::fs::write(
        dir.path().join(KEYRING_FILE),
        br#"{"version":2,"master_key_id":"x","data_keys":{}}"#,
    )
    .unwrap();
    assert!(matches!(
        Vault::open(dir.path(), key(1), None),
        Err(VaultError::KeyringVersion { version: 2, .. })
    ));
    std::fs::write(dir.path().join(KEYRING_FILE), b"{not json").unwrap();
    assert!(matches!(
        Vault::open(dir.path(), key(1), None),
        Err(VaultError::KeyringCorrupt { .. })
    ));
}

#[test]
fn key_file_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let content = format!("{}\n", hex::encode([7u8; 32]));
    for bad in [0o644, 0o604, 0o620, 0o666, 0o601, 0o602, 0o640 | 0o020] {
        let path = key_file(dir.path(), "bad.key", content.as_bytes(), bad);
        let err = MasterKey::load(&KeySource::File(path.clone())).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, VaultError::KeyFilePermissions { mode, .. } if mode == bad),
            "{bad:o}: {err:?}"
        );
        assert!(text.contains(&format!("{bad:04o}")), "{text}");
        assert!(text.contains(&format!("chmod 600 {}", path.display())), "{text}");
        assert!(!text.contains(content.trim()));
        assert_eq!(err.fault(), Fault::Operator);
        assert!(!err.retryable());
    }
    for good in [0o600, 0o400, 0o440, 0o640] {
        let path = key_file(dir.path(), &format!("good{good:o}.key"), content.as_bytes(), good);
        let loaded = MasterKey::load(&KeySource::File(path)).unwrap();
        assert_eq!(loaded.id(), MasterKey::from_bytes([7; 32]).id(), "{good:o}");
    }
    let missing = MasterKey::load(&KeySource::File(dir.path().join("nope"))).unwrap_err();
    assert!(matches!(missing, VaultError::KeyFileUnreadable { .. }));
    assert!(missing.to_string().contains("nope"));
}

#[test]
fn key_file_encodings() {
    let dir = tempfile::tempdir().unwrap();
    // Bytes whose base64 uses `+`, `/` (standard) vs `-`, `_` (url-safe).
    let bytes: [u8; 32] = std::array::from_fn(|i| 0xf8 | (i as u8 & 7));
    let want = MasterKey::from_bytes(bytes).id();
    let texts = [
        hex::encode(bytes),
        hex::encode_upper(bytes),
        format!("  {}\r\n\n", hex::encode(bytes)),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        format!("{}\n", URL_SAFE.encode(bytes)),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    assert!(texts[3].contains('+') || texts[3].contains('/'));
    assert!(texts[5].contains('-') || texts[5].contains('_'));
    for text in &texts {
        let loaded = load_bytes(dir.path(), text.as_bytes()).unwrap();
        assert_eq!(loaded.id(), want, "{text:?}");
    }
    // Raw bytes, including ones that start and end with whitespace bytes.
    assert_eq!(load_bytes(dir.path(), &bytes).unwrap().id(), want);
    let mut raw = [0u8; 32];
    raw[0] = b' ';
    raw[1] = 0x80;
    raw[31] = b'\n';
    assert_eq!(
        load_bytes(dir.path(), &raw).unwrap().id(),
        MasterKey::from_bytes(raw).id()
    );

    let secret_text = "correct horse battery staple 123"; // 32 printable bytes
    assert_eq!(secret_text.len(), 32);
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" \n\t".to_vec(),
        b"hello".to_vec(),
        secret_text.as_bytes().to_vec(),
        hex::encode([1u8; 16]).into_bytes(), // 32 hex characters: a 16-byte key
        hex::encode(bytes).as_bytes()[..63].to_vec(),
        format!("{}0", hex::encode(bytes)).into_bytes(),
        format!("{}g", &hex::encode(bytes)[..63]).into_bytes(),
        STANDARD.encode([3u8; 31]).into_bytes(),
        STANDARD.encode([3u8; 33]).into_bytes(),
        vec![0x80; 31],
        vec![0x80; 33],
        vec![0x80; 5000],
    ];
    for content in garbage {
        let err = load_bytes(dir.path(), &content).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VaultError::KeyFileFormat { .. }), "{err:?}");
        assert!(text.contains(&dir.path().join("k").display().to_string()));
        assert!(text.contains("64 hex characters"), "{text}");
        assert!(!text.contains(secret_text));
        if content.len() > 4 && content.is_ascii() {
            assert!(!text.contains(std::str::from_utf8(&content).unwrap().trim()));
        }
    }
}

#[test]
fn key_id_and_new_file() {
    let bytes = [42u8; 32];
    let key = MasterKey::from_bytes(bytes);
    let mut hash = Sha256::new();
    hash.update(b"waping master key id v1");
    hash.update(bytes);
    assert_eq!(key.id(), hex::encode(&hash.finalize()[..8]));
    assert_eq!(key.id().len(), 16);
    assert_ne!(MasterKey::generate().id(), MasterKey::generate().id());
    assert_eq!(format!("{key:?}"), format!("MasterKey {{ id: {:?} }}", key.id()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    key.write_new_file(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", hex::encode(bytes))
    );
    assert_eq!(
        MasterKey::load(&KeySource::File(path.clone())).unwrap().id(),
        key.id()
    );
    let err = MasterKey::generate().write_new_file(&path).unwrap_err();
    assert!(matches!(err, VaultError::KeyFileExists { .. }), "{err:?}");
    assert_eq!(
        MasterKey::load(&KeySource::File(path)).unwrap().id(),
        key.id(),
        "left untouched"
    );
}

#[test]
fn credential_source() {
    let source = KeySource::Credential("waping-master-key".into());
    assert_eq!(
        source
            .resolve_in(Some(std::ffi::OsStr::new("/run/credentials/waping.service")))
            .unwrap(),
        PathBuf::from("/run/credentials/waping.service/waping-master-key")
    );
    assert!(matches!(
        source.resolve_in(None),
        Err(VaultError::CredentialsDirectoryUnset { .. })
    ));
    for bad in ["", "a/b", "..", "."] {
        assert!(matches!(
            KeySource::Credential(bad.into()).resolve_in(Some(std::ffi::OsStr::new("/x"))),
            Err(VaultError::InvalidCredentialName { .. })
        ));
    }
    assert!(source.describe().contains("waping-master-key"));
    let file = KeySource::File("/etc/waping/master.key".into());
    assert_eq!(file.describe(), "file /etc/waping/master.key");
    assert_eq!(file.resolve().unwrap(), PathBuf::from("/etc/waping/master.key"));
}

#[test]
fn rotation_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("a").unwrap();
    vault.ensure_workspace("b").unwrap();
    let sealed = vault.seal("a", b"aad", b"survives rotation").unwrap();
    drop(vault);
    let before = read_ring(dir.path());

    let report = rotate_master_key(dir.path(), &key(1), &key(2)).unwrap();
    assert_eq!(report.old_id, key(1).id());
    assert_eq!(report.new_id, key(2).id());
    assert_eq!(report.data_keys, 2);
    let after = read_ring(dir.path());
    assert_eq!(after.master_key_id, key(2).id());
    for (ws, entry) in &after.data_keys {
        assert_eq!(entry.key_id, before.data_keys[ws].key_id);
        assert_ne!(entry.wrapped, before.data_keys[ws].wrapped);
    }
    assert_eq!(mode(&dir.path().join(KEYRING_FILE)), 0o600);

    let vault = open(dir.path(), 2);
    assert_eq!(
        vault.open_sealed("a", b"aad", &sealed).unwrap(),
        b"survives rotation"
    );
    drop(vault);
    let err = Vault::open(dir.path(), key(1), None).unwrap_err();
    assert!(matches!(err, VaultError::MasterKeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&key(2).id()));

    // A repeated run is a no-op that verifies; wrong or identical keys are refused.
    let again = rotate_master_key(dir.path(), &key(1), &key(2)).unwrap();
    assert_eq!(again.data_keys, 2);
    assert_eq!(read_ring(dir.path()).data_keys, after.data_keys);
    assert!(matches!(
        rotate_master_key(dir.path(), &key(3), &key(4)),
        Err(VaultError::MasterKeyMismatch { .. })
    ));
    assert!(matches!(
        rotate_master_key(dir.path(), &key(2), &key(2)),
        Err(VaultError::SameMasterKey { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        rotate_master_key(empty.path(), &key(1), &key(2)),
        Err(VaultError::KeyringMissing { .. })
    ));
}

#[test]
fn rotation_while_open_follows_the_installed_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("master.key");
    install(&key(1), &key_path);
    let source = KeySource::File(key_path.clone());
    let vault = Vault::open(dir.path(), MasterKey::load(&source).unwrap(), Some(source)).unwrap();
    vault.ensure_workspace("a").unwrap();
    let before = vault.seal("a", b"", b"before").unwrap();

    rotate_master_key(dir.path(), &key(1), &key(2)).unwrap();
    // Data keys in memory are still valid.
    let during = vault.seal("a", b"", b"during").unwrap();
    assert_eq!(vault.open_sealed("a", b"", &before).unwrap(), b"before");

    // The source still holds the old key: modifications fail, typed and retryable.
    let err = vault.ensure_workspace("b").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, VaultError::MasterKeyRotated { keyring_id, installed_id: Some(installed), .. }
            if *keyring_id == key(2).id() && *installed == key(1).id()),
        "{err:?}"
    );
    assert!(text.contains(&key_path.display().to_string()), "{text}");
    assert!(err.retryable());
    assert_eq!(err.fault(), Fault::Operator);
    assert!(!vault.has_workspace("b"));
    assert_eq!(vault.master_key_id(), key(1).id());
    assert_eq!(vault.open_sealed("a", b"", &during).unwrap(), b"during");

    // The operator installs the new key; the same call now succeeds.
    install(&key(2), &key_path);
    assert!(vault.ensure_workspace("b").unwrap());
    assert_eq!(vault.master_key_id(), key(2).id());
    let b = vault.seal("b", b"", b"new workspace").unwrap();
    assert_eq!(vault.open_sealed("a", b"", &during).unwrap(), b"during");
    drop(vault);

    let reopened = open(dir.path(), 2);
    assert_eq!(reopened.open_sealed("a", b"", &before).unwrap(), b"before");
    assert_eq!(reopened.open_sealed("a", b"", &during).unwrap(), b"during");
    assert_eq!(reopened.open_sealed("b", b"", &b).unwrap(), b"new workspace");
}

#[test]
fn rotation_while_open_without_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    vault.ensure_workspace("a").unwrap();
    rotate_master_key(dir.path(), &key(1), &key(2)).unwrap();
    let err = vault.shred("a").unwrap_err();
    assert!(
        matches!(
            &err,
            VaultError::MasterKeyRotated {
                installed_id: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(vault.has_workspace("a"), "nothing changed");
    assert!(read_ring(dir.path()).data_keys.contains_key("a"));
}

#[test]
fn modifications_pick_up_other_vaults_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), 1);
    let b = open(dir.path(), 1);
    a.ensure_workspace("shared").unwrap();
    a.ensure_workspace("doomed").unwrap();
    // b opened before these existed: it learns of them under the lock, without a new key.
    assert!(!b.has_workspace("shared"));
    assert!(!b.ensure_workspace("shared").unwrap());
    let sealed = a.seal("shared", b"", b"from a").unwrap();
    assert_eq!(b.open_sealed("shared", b"", &sealed).unwrap(), b"from a");
    assert!(b.has_workspace("doomed"));
    // A shred by b removes the key from a at a's next modification.
    assert!(b.shred("doomed").unwrap());
    assert!(a.has_workspace("doomed"));
    a.ensure_workspace("another").unwrap();
    assert!(!a.has_workspace("doomed"));
    assert_eq!(a.workspaces(), vec!["another", "shared"]);
}

#[test]
fn concurrent_vaults_keep_each_others_keys() {
    const PER_VAULT: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let vaults = [open(dir.path(), 1), open(dir.path(), 1)];
    let barrier = Barrier::new(vaults.len());
    std::thread::scope(|scope| {
        for (v, vault) in vaults.iter().enumerate() {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for i in 0..PER_VAULT {
                    assert!(vault.ensure_workspace(&format!("v{v}-{i}")).unwrap());
                }
            });
        }
    });
    let ring = read_ring(dir.path());
    assert_eq!(ring.data_keys.len(), 2 * PER_VAULT);
    let mut ids: Vec<u32> = ring.data_keys.values().map(|e| e.key_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2 * PER_VAULT, "key ids are unique");
    let reopened = open(dir.path(), 1);
    for (v, vault) in vaults.iter().enumerate() {
        for i in 0..PER_VAULT {
            let ws = format!("v{v}-{i}");
            let sealed = vault.seal(&ws, b"", ws.as_bytes()).unwrap();
            assert_eq!(reopened.open_sealed(&ws, b"", &sealed).unwrap(), ws.as_bytes());
        }
    }
}

#[test]
fn invalid_workspace_names() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), 1);
    for bad in [String::new(), "a\nb".into(), "x".repeat(256)] {
        let err = vault.ensure_workspace(&bad).unwrap_err();
        assert!(matches!(err, VaultError::InvalidWorkspace { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::Internal);
    }
    assert!(vault.ensure_workspace(&"x".repeat(255)).unwrap());
    assert!(vault.ensure_workspace("ünïcode ok").unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any_input(
        workspace in "[a-z0-9_-]{1,12}",
        aad in proptest::collection::vec(any::<u8>(), 0..300),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        thread_local! {
            static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
        }
        let dir = DIR.with(|d| d.path().to_path_buf());
        let vault = open(&dir, 1);
        vault.ensure_workspace(&workspace).unwrap();
        let sealed = vault.seal(&workspace, &aad, &plaintext).unwrap();
        prop_assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
        prop_assert_eq!(vault.open_sealed(&workspace, &aad, &sealed).unwrap(), plaintext);
        let mut other_aad = aad.clone();
        other_aad.push(0);
        prop_assert!(vault.open_sealed(&workspace, &other_aad, &sealed).is_err());
    }
}
