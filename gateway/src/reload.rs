//! Configuration reload (SIGHUP): all or nothing, without dropping a connection or a session.
//!
//! A reload reads and validates the whole file, plans the control plane's change, and
//! builds the new TLS configuration before it changes anything. If any of that fails the
//! node keeps the configuration it had and says why (log, `config.reload` audit record with
//! outcome `failure`, `waping_config_reloads_total{result="rejected"}`). Otherwise:
//!
//! - workspaces, their rate and burst, keys and roles, `audit_full_numbers` and added
//!   devices follow the file at once (token buckets are updated in place, so live
//!   connections see the new limit on their next SEND);
//! - the node defaults for objects made from now on (`limits.rate_per_second`, `burst`,
//!   `quotas`, `retention`) are swapped;
//! - `log.level` is applied (unless `RUST_LOG` overrides it);
//! - the certificate, key and client-certificate settings are re-read (even when their
//!   paths did not change, since renewals replace files in place) and new QUIC and HTTPS
//!   handshakes use them; open connections keep the session they negotiated.
//!
//! Every other setting (listen addresses, journal, audit sinks, pacing of running device
//! sessions…) is fixed for the life of the process: a change is listed as
//! `restart_required` rather than silently ignored, and `waping_config_restart_pending`
//! counts them until the next start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::config::Config;

/// Applies a `log.level` filter; returns `Ok(false)` when something else (e.g. `RUST_LOG`)
/// decides the level, so the setting was read but not applied.
pub type LogHook = Box<dyn Fn(&str) -> Result<bool, String> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration is in force (for the settings that can change live).
    Applied {
        /// Settings that changed and took effect.
        applied: Vec<String>,
        /// Settings that changed but wait for a restart.
        restart_required: Vec<String>,
    },
    /// Nothing changed; why.
    Rejected {
        /// Every reason, each with its setting path (and line, for file errors).
        problems: Vec<String>,
    },
}

#[derive(Debug)]
struct TlsNow {
    fingerprint: String,
    cert_path: PathBuf,
    client_trust: String,
}

#[derive(Debug, Default, Clone)]
struct Summary {
    attempts: u64,
    applied: u64,
    rejected: u64,
    last_result: Option<&'static str>,
    last_at_ms: u64,
    restart_pending: Vec<String>,
}

/// What a running gateway keeps for reloads.
pub struct ReloadState {
    boot: Arc<Config>,
    endpoint: quinn::Endpoint,
    https: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    tls: Mutex<TlsNow>,
    log_hook: OnceLock<LogHook>,
    lock: tokio::sync::Mutex<()>,
    summary: Mutex<Summary>,
}

impl std::fmt::Debug for ReloadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadState")
            .field("tls", &self.tls)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl ReloadState {
    /// State for a node that started on `boot` with the listeners' TLS from `prepared`.
    pub fn new(
        boot: Arc<Config>,
        endpoint: quinn::Endpoint,
        https: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
        prepared: &crate::tls::Prepared,
    ) -> ReloadState {
        metrics::gauge!("waping_config_restart_pending").set(0.0);
        ReloadState {
            boot,
            endpoint,
            https,
            tls: Mutex::new(TlsNow {
                fingerprint: prepared.material.fingerprint_string(),
                cert_path: prepared.material.cert_path.clone(),
                client_trust: prepared.client_trust.clone(),
            }),
            log_hook: OnceLock::new(),
            lock: tokio::sync::Mutex::new(()),
            summary: Mutex::new(Summary::default()),
        }
    }

    /// Installs how `log.level` is applied (the binary owns the subscriber). Once.
    pub fn set_log_hook(&self, hook: LogHook) {
        let _ = self.log_hook.set(hook);
    }

    /// The certificate in use: fingerprint (`sha256:…`) and PEM path.
    pub fn certificate(&self) -> (String, PathBuf) {
        let t = self.tls.lock().expect("tls lock");
        (t.fingerprint.clone(), t.cert_path.clone())
    }

    /// For `runtime.json`: reload counts, the last result, settings waiting for a restart.
    pub fn summary(&self) -> serde_json::Value {
        let s = self.summary.lock().expect("summary lock").clone();
        serde_json::json!({
            "attempts": s.attempts,
            "applied": s.applied,
            "rejected": s.rejected,
            "last_result": s.last_result,
            "last_at_ms": s.last_at_ms,
            "restart_pending": s.restart_pending,
        })
    }
}

/// Everything read from disk for a reload, before anything changes.
struct Loaded {
    cfg: Config,
    sha256: String,
    tls: crate::tls::Prepared,
}

/// Reads the file (or the embedded defaults), validates it and builds its TLS configuration.
fn load(path: Option<&Path>, state_dir: &Path) -> Result<Loaded, (String, Vec<String>)> {
    let (cfg, sha256) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| (String::new(), vec![format!("{}: {e}", p.display())]))?;
            let sha = hex::encode(Sha256::digest(text.as_bytes()));
            let cfg =
                Config::parse(&text, &p.display().to_string()).map_err(|e| (sha.clone(), problems_of(&e)))?;
            (cfg, sha)
        }
        None => (
            Config::load(None).map_err(|e| (String::new(), problems_of(&e)))?,
            String::new(),
        ),
    };
    let tls = crate::tls::prepare(&cfg.server, state_dir)
        .map_err(|e| (sha256.clone(), vec![format!("TLS: {e:#}")]))?;
    Ok(Loaded { cfg, sha256, tls })
}

/// One problem per line of a configuration error, in its own words.
fn problems_of(e: &crate::config::ConfigError) -> Vec<String> {
    let text = e.to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("- ").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() { vec![text] } else { lines }
}

/// The configuration a running node actually follows after taking the live parts of `new`:
/// `boot` for everything fixed at start.
fn effective(boot: &Config, new: &Config) -> Config {
    let mut e = boot.clone();
    e.workspaces = new.workspaces.clone();
    e.limits.rate_per_second = new.limits.rate_per_second;
    e.limits.burst = new.limits.burst;
    e.quotas = new.quotas;
    e.retention = new.retention;
    e.log.level = new.log.level.clone();
    e.server.tls_cert = new.server.tls_cert.clone();
    e.server.tls_key = new.server.tls_key.clone();
    e.server.client_auth = new.server.client_auth;
    e.server.client_ca = new.server.client_ca.clone();
    e
}

/// Dotted paths of the leaves that differ between `a` and `b` (arrays compare whole).
fn changed_paths(a: &toml::Value, b: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => changed_paths(x, y, &path, out),
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        (x, y) if x != y => {
            out.insert(prefix.to_string());
        }
        _ => {}
    }
}

/// Settings of `new` that differ from what the running node follows and cannot change live.
fn restart_only_changes(boot: &Config, new: &Config) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let eff = effective(boot, new);
    match (toml::Value::try_from(&eff), toml::Value::try_from(new)) {
        (Ok(a), Ok(b)) => changed_paths(&a, &b, "", &mut out),
        // Not expected (both serialise for `default-config`); say so rather than guess.
        _ => {
            out.insert("(configuration could not be compared)".into());
        }
    }
    out
}

/// Runs one reload of `path` against the running node.
pub(crate) async fn run(
    st: &ReloadState,
    control: &Arc<crate::control::Control>,
    state_dir: &Path,
    path: Option<&Path>,
) -> Outcome {
    // One at a time: two SIGHUPs in a row apply in order, never interleaved.
    let _one = st.lock.lock().await;
    let owned = path.map(Path::to_path_buf);
    let dir = state_dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || load(owned.as_deref(), &dir))
        .await
        .unwrap_or_else(|e| Err((String::new(), vec![format!("reload task failed: {e}")])));
    let (mut loaded, sha) = match loaded {
        Ok(l) => {
            let sha = l.sha256.clone();
            (Some(l), sha)
        }
        Err((sha, problems)) => return reject(st, control, sha, problems).await,
    };
    let l = loaded.take().expect("loaded");
    let plan = match control.plan_reload(&l.cfg, &st.boot) {
        Ok(p) => p,
        Err(problems) => return reject(st, control, sha, problems).await,
    };
    // A reload changes keys and limits: like any control-plane change, only if it can be
    // recorded.
    if let Err(e) = control.audit.gate() {
        return reject(st, control, sha, vec![format!("audit log: {e}")]).await;
    }
    let mut applied = plan.applied.clone();
    let mut restart = plan.restart_required.clone();
    restart.extend(
        restart_only_changes(&st.boot, &l.cfg)
            .into_iter()
            .filter(|p| !p.starts_with("workspaces")),
    );
    let new = Arc::new(effective(&st.boot, &l.cfg));
    let old = control.config();
    let errors = control.apply_reload(plan, new.clone());
    for e in &errors {
        tracing::error!(error = %e, "reload: applying a change failed");
    }
    // Log level.
    if old.log.level != new.log.level {
        match st.log_hook.get().map(|h| h(&new.log.level)) {
            Some(Ok(true)) => {
                applied.insert("log.level".into());
            }
            Some(Ok(false)) => {
                tracing::warn!("log.level changed but RUST_LOG decides the level; unset it to use log.level");
            }
            Some(Err(e)) => tracing::error!(error = %e, "reload: log.level not applied"),
            None => {
                restart.insert("log.level".into());
            }
        }
    }
    // TLS: swap when the certificate or the client-certificate trust changed.
    {
        let mut t = st.tls.lock().expect("tls lock");
        let fp = l.tls.material.fingerprint_string();
        let changed_cert = fp != t.fingerprint;
        let changed_trust = l.tls.client_trust != t.client_trust;
        if changed_cert || changed_trust {
            st.endpoint.set_server_config(Some(l.tls.quic.clone()));
            st.https.store(l.tls.https.clone());
            if changed_cert {
                applied.insert("server.tls_cert (certificate)".into());
            }
            if changed_trust {
                applied.insert("server.client_auth/client_ca".into());
            }
            tracing::info!(fingerprint = %fp, client_auth = ?new.server.client_auth, "TLS configuration reloaded; new handshakes use it");
            metrics::counter!("waping_tls_reloads_total", "result" => "applied").increment(1);
            *t = TlsNow {
                fingerprint: fp,
                cert_path: l.tls.material.cert_path.clone(),
                client_trust: l.tls.client_trust.clone(),
            };
        }
    }
    let applied: Vec<String> = applied.into_iter().collect();
    let restart_required: Vec<String> = restart.into_iter().collect();
    if !restart_required.is_empty() {
        tracing::warn!(settings = ?restart_required, "these changed settings take effect only after a restart");
    }
    tracing::info!(applied = ?applied, config_sha256 = %sha, "configuration reloaded");
    control
        .audit
        .emit_durable(
            waping_audit::Event::new(
                crate::unix_ms(),
                waping_audit::Actor::System,
                waping_audit::Action::ConfigReload,
            )
            .detail(waping_audit::Detail::Reload {
                config_sha256: sha,
                applied: applied.clone(),
                restart_required: restart_required.clone(),
                problems: errors.into_iter().take(20).collect(),
            }),
        )
        .await;
    metrics::counter!("waping_config_reloads_total", "result" => "applied").increment(1);
    metrics::gauge!("waping_config_reload_timestamp_seconds").set(crate::unix_ms() as f64 / 1000.0);
    metrics::gauge!("waping_config_restart_pending").set(restart_required.len() as f64);
    {
        let mut s = st.summary.lock().expect("summary lock");
        s.attempts += 1;
        s.applied += 1;
        s.last_result = Some("applied");
        s.last_at_ms = crate::unix_ms();
        s.restart_pending = restart_required.clone();
    }
    Outcome::Applied {
        applied,
        restart_required,
    }
}

async fn reject(
    st: &ReloadState,
    control: &crate::control::Control,
    sha: String,
    problems: Vec<String>,
) -> Outcome {
    tracing::error!(
        problems = problems.len(),
        "configuration reload refused; the running configuration is unchanged"
    );
    for p in &problems {
        tracing::error!("reload: {p}");
    }
    control
        .audit
        .emit_durable(
            waping_audit::Event::new(
                crate::unix_ms(),
                waping_audit::Actor::System,
                waping_audit::Action::ConfigReload,
            )
            .outcome(waping_audit::Outcome::Failure, "invalid")
            .detail(waping_audit::Detail::Reload {
                config_sha256: sha,
                applied: Vec::new(),
                restart_required: Vec::new(),
                problems: problems.iter().take(20).cloned().collect(),
            }),
        )
        .await;
    metrics::counter!("waping_config_reloads_total", "result" => "rejected").increment(1);
    {
        let mut s = st.summary.lock().expect("summary lock");
        s.attempts += 1;
        s.rejected += 1;
        s.last_result = Some("rejected");
        s.last_at_ms = crate::unix_ms();
    }
    Outcome::Rejected { problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Config {
        Config::parse(s, "t.toml").unwrap()
    }

    #[test]
    fn fixed_settings_are_listed_as_restart_required() {
        let boot = Config::default();
        let new = parse(
            "[server]\nlisten = \"127.0.0.1:9999\"\n[journal]\nsegment_size_mib = 32\n[limits]\nburst = 7\ndevice_queue = 5\n[log]\nlevel = \"debug\"\n",
        );
        let r = restart_only_changes(&boot, &new);
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            ["journal.segment_size_mib", "limits.device_queue", "server.listen"]
        );
    }

    #[test]
    fn live_settings_are_not_restart_required() {
        let boot = Config::default();
        let new = parse(
            "[limits]\nrate_per_second = 5\nburst = 9\n[quotas]\nmax_devices = 3\n[log]\nlevel = \"warn\"\n",
        );
        assert!(restart_only_changes(&boot, &new).is_empty());
        let eff = effective(&boot, &new);
        assert_eq!(eff.limits.burst, 9);
        assert_eq!(eff.log.level, "warn");
        assert_eq!(eff.quotas, new.quotas);
    }

    #[test]
    fn a_reload_after_a_restart_only_change_still_reports_it() {
        // The comparison is against the boot configuration, not the previous reload: a
        // second SIGHUP on the same file must still say the listener waits for a restart.
        let boot = Config::default();
        let new = parse("[server]\nlisten = \"127.0.0.1:9999\"\n");
        let eff = effective(&boot, &new);
        assert_eq!(eff.server.listen, boot.server.listen);
        assert_eq!(restart_only_changes(&boot, &new).len(), 1);
    }

    #[test]
    fn changed_paths_walks_tables_and_compares_arrays_whole() {
        let a: toml::Value = toml::from_str("x = 1\n[t]\ny = [1, 2]\nz = \"a\"\n").unwrap();
        let b: toml::Value = toml::from_str("x = 1\n[t]\ny = [1, 3]\nw = true\nz = \"a\"\n").unwrap();
        let mut out = BTreeSet::new();
        changed_paths(&a, &b, "", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["t.w", "t.y"]);
    }
}
