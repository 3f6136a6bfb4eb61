//! The vault plugged into the two places that keep tenant data on disk: the device store
//! (WhatsApp credentials, session records, pacing state) and the journal (message bodies,
//! recipients, inbound senders).

use std::sync::Arc;

use waping_journal::{OpenFailure, RecordSealer, SealFailure};
use waping_store::{Aad, SealError, Sealer};
use waping_vault::{Vault, VaultError};

/// Seals device-store values and journal record fields with the workspace's data key.
#[derive(Debug, Clone)]
pub struct VaultSealer(pub Arc<Vault>);

impl Sealer for VaultSealer {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0
            .seal(aad.workspace(), aad.as_bytes(), plaintext)
            .map_err(|e| match e {
                VaultError::KeyShredded { .. } => SealError::KeyUnavailable(aad.workspace().to_string()),
                other => SealError::KeyUnavailable(other.to_string()),
            })
    }

    fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        // Values written before encryption at rest existed (the store's plain format,
        // version 0) still open; every write since is sealed.
        if let Some((&waping_store::PlainSealer::VERSION, rest)) = sealed.split_first() {
            return Ok(rest.to_vec());
        }
        self.0
            .open_sealed(aad.workspace(), aad.as_bytes(), sealed)
            .map_err(|e| match e {
                VaultError::KeyShredded { .. } => SealError::KeyUnavailable(aad.workspace().to_string()),
                _ => SealError::Unauthentic,
            })
    }
}

impl RecordSealer for VaultSealer {
    fn seal(&self, workspace: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealFailure> {
        self.0
            .seal(workspace, aad, plaintext)
            .map_err(|e| SealFailure(e.to_string()))
    }

    fn open(&self, workspace: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        self.0.open_sealed(workspace, aad, sealed).map_err(|e| match e {
            VaultError::KeyShredded { .. } => OpenFailure::KeyGone,
            other => OpenFailure::Invalid(other.to_string()),
        })
    }
}

/// The master key as configured: `security.master_key_file`, else the systemd credential
/// `master-key`, else a key generated once beside the data (with a warning).
pub fn master_key(
    cfg: &crate::config::Config,
    state_dir: &std::path::Path,
) -> anyhow::Result<(waping_vault::MasterKey, waping_vault::KeySource)> {
    use waping_vault::{KeySource, MasterKey};
    let source = if let Some(p) = &cfg.security.master_key_file {
        KeySource::File(p.clone())
    } else if std::env::var_os("CREDENTIALS_DIRECTORY")
        .is_some_and(|d| std::path::Path::new(&d).join("master-key").exists())
    {
        KeySource::Credential("master-key".into())
    } else {
        let p = state_dir.join("master.key");
        if !p.exists() {
            MasterKey::generate().write_new_file(&p)?;
            tracing::warn!(path = %p.display(), "generated a master key beside the data it protects; \
                for production set security.master_key_file or LoadCredential=master-key:… so a copy \
                of the state directory alone cannot be decrypted");
        }
        KeySource::File(p)
    };
    let key = MasterKey::load(&source)?;
    Ok((key, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waping_store::{Ns, Store, StoreOptions};

    fn vault(dir: &std::path::Path) -> Arc<Vault> {
        let v = Vault::open(dir, waping_vault::MasterKey::generate(), None).unwrap();
        v.ensure_workspace("w").unwrap();
        v.ensure_workspace("other").unwrap();
        Arc::new(v)
    }

    fn sealed_store(path: &std::path::Path, v: &Arc<Vault>) -> Store {
        let options = StoreOptions {
            sealer: Arc::new(VaultSealer(v.clone())),
            ..StoreOptions::default()
        };
        Store::open(path, options).unwrap()
    }

    #[test]
    fn device_store_values_are_sealed_on_disk_and_bound_to_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let path = dir.path().join("devices.redb");
        // What a WhatsApp identity key looks like to the store: opaque bytes.
        let credential = b"NOISE-IDENTITY-KEY-0123456789abcdef-credential".to_vec();
        {
            let store = sealed_store(&path, &v);
            let d = store.device("w", "d1").unwrap();
            d.put_blocking(Ns::new(16), b"identity", &credential).unwrap();
            assert_eq!(
                d.get(Ns::new(16), b"identity").unwrap().as_deref(),
                Some(&credential[..])
            );
        }
        let raw = std::fs::read(&path).unwrap();
        assert!(
            !raw.windows(credential.len()).any(|w| w == &credential[..]),
            "the credential is in the file in clear"
        );
        // The same sealed bytes under another workspace, device or key do not open.
        let aad_other = |ws: &str| -> Vec<u8> { [ws.as_bytes(), b"|d1|identity"].concat() };
        let sealed = v.seal("w", &aad_other("w"), &credential).unwrap();
        assert!(v.open_sealed("other", &aad_other("w"), &sealed).is_err());
        assert!(v.open_sealed("w", &aad_other("x"), &sealed).is_err());
        // After crypto-shredding, the store reports the key as unavailable, not as data.
        let store = sealed_store(&path, &v);
        v.shred("w").unwrap();
        let err = store
            .device("w", "d1")
            .unwrap()
            .get(Ns::new(16), b"identity")
            .unwrap_err();
        assert!(err.to_string().contains("unavailable"), "{err}");
    }

    #[test]
    fn journal_fields_open_only_in_their_workspace_and_shredding_reads_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = VaultSealer(vault(dir.path()));
        let sealed = RecordSealer::seal(&s, "w", b"aad", b"4915112345678|hello").unwrap();
        assert_eq!(
            RecordSealer::open(&s, "w", b"aad", &sealed).unwrap(),
            b"4915112345678|hello"
        );
        assert!(matches!(
            RecordSealer::open(&s, "other", b"aad", &sealed),
            Err(OpenFailure::Invalid(_))
        ));
        assert!(matches!(
            RecordSealer::open(&s, "w", b"other", &sealed),
            Err(OpenFailure::Invalid(_))
        ));
        s.0.shred("w").unwrap();
        assert_eq!(
            RecordSealer::open(&s, "w", b"aad", &sealed),
            Err(OpenFailure::KeyGone)
        );
        assert!(
            RecordSealer::seal(&s, "w", b"aad", b"x").is_err(),
            "no new data under a shredded key"
        );
    }
}
