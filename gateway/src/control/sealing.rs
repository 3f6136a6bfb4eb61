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
