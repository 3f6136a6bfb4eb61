//! `waping-gateway audit …`: verify record files, make and show the digest signing key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use waping_audit::{DigestSigner, PublicKey};

use crate::config::Config;

/// Audit subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check audit files (file sink, spool, or a dump from JetStream or an HTTP receiver):
    /// hash chain, sequence and signed digests. Exit 0 if intact, 1 at the first altered,
    /// missing, reordered or inserted record (printed with its file and line), 2 on usage errors.
    Verify {
        /// Files, or directories whose `*.jsonl` files are read in name order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A trusted digest public key (`ed25519:<hex>`, from `audit public-key`); repeatable
        /// (keys before and after a rotation).
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Trust the public key of the signing key this configuration uses (on the node itself;
        /// off-node verification should use --public-key kept elsewhere).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the chain only, not the digest signatures.
        #[arg(long)]
        no_signatures: bool,
    },
    /// Write a new digest signing key to a file created with mode 0600.
    Keygen {
        /// File to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of the node's digest signing key (for `audit verify --public-key`).
    PublicKey {
        /// TOML configuration file (its signing key source).
        #[arg(long, short, env = "WAPING_CONFIG")]
        config: Option<PathBuf>,
        /// Or read this key file directly.
        #[arg(long, conflicts_with = "config")]
        key_file: Option<PathBuf>,
    },
}

/// Runs an audit subcommand.
pub fn main(cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify {
            paths,
            public_keys,
            config,
            no_signatures,
        } => verify(&paths, &public_keys, config.as_deref(), no_signatures),
        AuditCmd::Keygen { out } => {
            let (_, seed) = DigestSigner::generate();
            match super::write_new_secret(&out, DigestSigner::encode_seed(&seed).as_bytes()) {
                Ok(()) => {
                    let pk = PublicKey::from_bytes(DigestSigner::from_seed(&seed).public_key());
                    eprintln!(
                        "wrote a new audit signing key to {} (mode 0600); its public key:",
                        out.display()
                    );
                    println!("{}", pk.to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCmd::PublicKey { config, key_file } => {
            match public_key(config.as_deref(), key_file.as_deref()) {
                Ok(pk) => {
                    println!("{}", pk.to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn public_key(config: Option<&Path>, key_file: Option<&Path>) -> anyhow::Result<PublicKey> {
    let signer = match key_file {
        Some(f) => DigestSigner::load(f)?,
        None => {
            let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let state_dir = cfg.server.resolved_state_dir();
            let path = match &cfg.audit.signing_key_file {
                Some(p) => p.clone(),
                None => match std::env::var_os("CREDENTIALS_DIRECTORY")
                    .map(|d| Path::new(&d).join("audit-signing-key"))
                    .filter(|p| p.exists())
                {
                    Some(p) => p,
                    None => state_dir.join("audit-signing.key"),
                },
            };
            DigestSigner::load(&path)?
        }
    };
    Ok(PublicKey::from_bytes(signer.public_key()))
}

fn verify(paths: &[PathBuf], keys: &[String], config: Option<&Path>, no_signatures: bool) -> ExitCode {
    let mut trusted = Vec::new();
    for k in keys {
        match PublicKey::from_hex(k) {
            Ok(pk) => trusted.push(pk),
            Err(e) => {
                eprintln!("error: --public-key {k:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(c) = config {
        match public_key(Some(c), None) {
            Ok(pk) => trusted.push(pk),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    if trusted.is_empty() && !no_signatures {
        eprintln!(
            "error: give --public-key (from `waping-gateway audit public-key`) or --config to check the signed digests, or --no-signatures to check the chain only"
        );
        return ExitCode::from(2);
    }
    match waping_audit::verify::verify_paths(paths, &trusted) {
        Ok(r) => {
            println!("OK: {} file(s)", r.files);
            for n in &r.nodes {
                let signed = if r.signatures_checked {
                    format!("signed through seq {}", n.signed_through)
                } else {
                    "signatures not checked".to_owned()
                };
                println!(
                    "  node {}: seq {}..={} ({} records, {} digests), {signed}{}{}",
                    n.node,
                    n.first_seq,
                    n.last_seq,
                    n.records,
                    n.digests,
                    if n.unsigned_tail > 0 {
                        format!(
                            "; {} record(s) after the last digest are covered by the chain only",
                            n.unsigned_tail
                        )
                    } else {
                        String::new()
                    },
                    if n.from_genesis {
                        String::new()
                    } else {
                        format!("; starts at seq {} (earlier records were not given)", n.first_seq)
                    },
                );
            }
            if !r.signatures_checked {
                println!("  signatures NOT checked (--no-signatures)");
            }
            ExitCode::SUCCESS
        }
        Err(waping_audit::verify::VerifyError::Tampered(f)) => {
            println!("TAMPERED: {f}");
            if let Some(seq) = f.seq {
                println!("  node {}, seq {seq}", f.node);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Drops a record of something a command-line tool did into the running (or next) gateway's
/// audit inbox; the gateway chains it like any other.
pub fn record_offline(cfg: &Config, ev: waping_audit::Event) -> anyhow::Result<()> {
    let dir = cfg
        .audit
        .dir
        .clone()
        .unwrap_or_else(|| cfg.server.resolved_state_dir().join("audit"));
    waping_audit::spool::write_inbox(&dir, &ev)
        .map_err(|e| anyhow::anyhow!("writing the audit record to {}: {e}", dir.display()))
}
