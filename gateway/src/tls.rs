//! TLS material for the QUIC listener: a configured certificate, or a
//! self-signed one created on first start and kept in the state directory
//! so its fingerprint (which clients pin) survives restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuth, ServerConfig};

/// Loaded certificate chain and key.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate's DER, what clients pin.
    pub fingerprint: [u8; 32],
    /// Where the PEM certificate lives (for clients that want a CA file).
    pub cert_path: PathBuf,
    /// True when this start created it.
    pub created: bool,
}

impl TlsMaterial {
    /// `sha256:<hex>`.
    pub fn fingerprint_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.fingerprint))
    }
}

fn read_pem(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found", cert.display());
    }
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing {}", key.display()))?
        .with_context(|| format!("{}: no private key found", key.display()))?;
    Ok((certs, key))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Loads the configured certificate, or the self-signed one from `state_dir/tls/`, creating it if absent.
pub fn load_or_create(cfg: &ServerConfig, state_dir: &Path) -> anyhow::Result<TlsMaterial> {
    let (cert_path, key_path, created) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = state_dir.join("tls");
            let cert = dir.join("cert.pem");
            let key = dir.join("key.pem");
            let mut created = false;
            if !cert.exists() || !key.exists() {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut names = vec!["localhost".to_string()];
                names.extend(cfg.tls_names.iter().cloned());
                let ck = rcgen::generate_simple_self_signed(names)
                    .context("generating self-signed certificate")?;
                // Key first: a crash between the two writes leaves no certificate without its key.
                let _ = std::fs::remove_file(&key);
                let _ = std::fs::remove_file(&cert);
                write_private(&key, ck.key_pair.serialize_pem().as_bytes())?;
                write_private(&cert, ck.cert.pem().as_bytes())?;
                created = true;
            }
            (cert, key, created)
        }
    };
    let (certs, key) = read_pem(&cert_path, &key_path)?;
    let fingerprint = Sha256::digest(certs[0].as_ref()).into();
    Ok(TlsMaterial {
        certs,
        key,
        fingerprint,
        cert_path,
        created,
    })
}

/// The client-certificate verifier for `server.client_auth`, or `None` for no client auth.
fn client_verifier(
    cfg: &ServerConfig,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
    if cfg.client_auth == ClientAuth::None {
        return Ok(None);
    }
    let Some(path) = &cfg.client_ca else {
        bail!("server.client_ca: required when server.client_auth is not \"none\"");
    };
    let pem = std::fs::read(path).with_context(|| format!("server.client_ca: reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.with_context(|| format!("server.client_ca: parsing {}", path.display()))?;
        roots.add(c).with_context(|| {
            format!(
                "server.client_ca: a certificate in {} is not a usable CA",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!("server.client_ca: {} holds no certificate", path.display());
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match cfg.client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    Ok(Some(
        builder
            .build()
            .context("server.client_ca: building the verifier")?,
    ))
}

/// Fingerprint (`sha256:<hex>`) of every CA in `server.client_ca`, to tell whether a reload
/// changed the trust; empty without client auth.
pub fn client_trust_id(cfg: &ServerConfig) -> String {
    match (&cfg.client_auth, &cfg.client_ca) {
        (ClientAuth::None, _) | (_, None) => String::new(),
        (mode, Some(p)) => {
            let bytes = std::fs::read(p).unwrap_or_default();
            format!("{mode:?}:sha256:{}", hex::encode(Sha256::digest(&bytes)))
        }
    }
}

/// TLS configuration built from files, ready to swap in; see [`prepare`].
pub struct Prepared {
    /// The certificate and key.
    pub material: TlsMaterial,
    /// For `quinn::Endpoint::set_server_config`.
    pub quic: quinn::ServerConfig,
    /// For the HTTPS acceptor.
    pub https: Arc<rustls::ServerConfig>,
    /// What [`client_trust_id`] returned for it.
    pub client_trust: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("fingerprint", &self.material.fingerprint_string())
            .field("client_trust", &self.client_trust)
            .finish_non_exhaustive()
    }
}

/// Reads the certificate, key and client CAs and builds both listeners' TLS configurations.
/// Used at start and on every reload: a reload swaps them in only if all of this succeeded.
pub fn prepare(cfg: &ServerConfig, state_dir: &Path) -> anyhow::Result<Prepared> {
    let material = load_or_create(cfg, state_dir)?;
    let quic = quic_server_config(&material, cfg)?;
    let https = https_server_config(&material)?;
    Ok(Prepared {
        material,
        quic,
        https,
        client_trust: client_trust_id(cfg),
    })
}

/// The quinn server configuration: TLS 1.3, ALPN `waping/1`, client certificates per
/// `server.client_auth`, stream and idle limits.
pub fn quic_server_config(mat: &TlsMaterial, cfg: &ServerConfig) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(cfg, &provider)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(mat.certs.clone(), mat.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![waping_protocol::limits::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    // Memory is reserved per allowed stream; keep the allowance small and pipeline instead.
    t.max_concurrent_bidi_streams(u32::from(cfg.max_streams).into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(
        Duration::from_millis(cfg.idle_timeout_ms.into()).try_into()?,
    ));
    // Large enough windows that one pipelining client is not flow-control bound on loopback.
    t.stream_receive_window((1u32 << 20).into());
    t.receive_window((8u32 << 20).into());
    t.send_window(8 << 20);
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// The HTTPS API's rustls configuration: the same certificate as QUIC, TLS 1.2 and 1.3,
/// ALPN `http/1.1`.
pub fn https_server_config(mat: &TlsMaterial) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(mat.certs.clone(), mat.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
