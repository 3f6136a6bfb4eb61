//! Operator commands on dead letters: list, show, replay, purge.
//!
//! They open the journal directly, so they run while the gateway is stopped (the journal's
//! directory lock refuses a second opener and names the running pid). The REST control plane
//! will call the same journal functions on the live journal.

use std::fmt::Write as _;

use anyhow::Context;
use waping_journal::{DeadLetter, Journal, MessageId};
use waping_protocol::ErrorCode;

use crate::config::Config;

/// What to do.
#[derive(Debug, Clone)]
pub enum Op {
    /// One line per dead letter.
    List,
    /// Everything about one.
    Show(String),
    /// Put one (or all) back to work at the next start.
    Replay(Option<String>),
    /// Delete one (or all) for good.
    Purge(Option<String>),
}

/// Parses the 32 hex digits of a message id (as printed everywhere).
pub fn parse_id(s: &str) -> anyhow::Result<MessageId> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&clean).with_context(|| format!("{s:?} is not a message id (32 hex digits)"))?;
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a message id (32 hex digits)"))?;
    Ok(MessageId(arr))
}

fn code_name(code: u16) -> String {
    format!("{}({code})", ErrorCode(code).name())
}

fn line(d: &DeadLetter) -> String {
    let m = &d.message;
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        m.id,
        m.workspace,
        m.device,
        d.attempts,
        code_name(d.last_code),
        d.dead_at_ms,
        d.last_detail.replace(['\n', '\t'], " ")
    )
}

/// Runs `op` on the journal of `cfg`'s state directory; returns what to print.
pub fn run(cfg: &Config, op: Op) -> anyhow::Result<String> {
    let state_dir = cfg.server.resolved_state_dir();
    let dir = state_dir.join("journal");
    // Bodies and recipients are sealed with the workspaces' data keys.
    let (master, source) = crate::control::sealing::master_key(cfg, &state_dir)?;
    let vault = std::sync::Arc::new(
        waping_vault::Vault::open(&state_dir, master, Some(source)).context("opening the keyring")?,
    );
    let mut jcfg = cfg.journal.to_journal_config();
    jcfg.sealer = Some(std::sync::Arc::new(crate::control::sealing::VaultSealer(vault)));
    let (journal, _) =
        Journal::open(&dir, jcfg).with_context(|| format!("opening the journal in {}", dir.display()))?;
    let mut out = String::new();
    match op {
        Op::List => {
            let all = all(&journal)?;
            let _ = writeln!(
                out,
                "# id\tworkspace\tdevice\tattempts\tlast_code\tdead_at_ms\tdetail"
            );
            for d in &all {
                let _ = writeln!(out, "{}", line(d));
            }
            let _ = writeln!(out, "# {} dead letter(s)", all.len());
        }
        Op::Show(id) => {
            let d = journal
                .dead_letter(parse_id(&id)?)
                .wait()?
                .with_context(|| format!("{id} is not a dead letter"))?;
            let m = &d.message;
            let body = match &m.body {
                waping_journal::Body::Text(t) => format!("text: {t}"),
                waping_journal::Body::Media {
                    reference,
                    mime,
                    caption,
                } => format!("media: {reference} ({mime}) caption: {caption}"),
            };
            let _ = writeln!(
                out,
                "id: {}\nworkspace: {}\ndevice: {}\nrecipient: {}\nidempotency_key: {}\naccepted_at_ms: {}\n\
                 attempts: {}\nlast_code: {}\nlast_detail: {}\ndead_at_ms: {}\n{body}",
                m.id,
                m.workspace,
                m.device,
                m.recipient,
                m.idempotency_key,
                m.accepted_at_ms,
                d.attempts,
                code_name(d.last_code),
                d.last_detail,
                d.dead_at_ms
            );
        }
        Op::Replay(id) => {
            let ids = match id {
                Some(id) => vec![parse_id(&id)?],
                None => all(&journal)?.into_iter().map(|d| d.message.id).collect(),
            };
            for id in &ids {
                journal.replay_dead(*id).wait()?;
            }
            let _ = writeln!(
                out,
                "replayed {} dead letter(s); they are sent after the next start",
                ids.len()
            );
        }
        Op::Purge(Some(id)) => {
            journal.purge_dead(parse_id(&id)?).wait()?;
            let _ = writeln!(out, "purged 1 dead letter");
        }
        Op::Purge(None) => {
            let n = journal.purge_all_dead().wait()?;
            let _ = writeln!(out, "purged {n} dead letter(s)");
        }
    }
    journal.close()?;
    Ok(out)
}

fn all(journal: &Journal) -> anyhow::Result<Vec<DeadLetter>> {
    let mut v = Vec::new();
    let mut after = None;
    loop {
        let page = journal.dead_letters(after, 1000).wait()?;
        let Some(last) = page.last() else { break };
        after = Some(last.message.id);
        let n = page.len();
        v.extend(page);
        if n < 1000 {
            break;
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_or_without_hyphens() {
        let id = waping_protocol::MessageId([0xab; 16]);
        assert_eq!(parse_id(&id.to_string()).unwrap().0, id.0);
        assert_eq!(parse_id("abababab-abab-abab-abab-abababababab").unwrap().0, id.0);
        assert!(parse_id("xyz").is_err());
        assert!(parse_id("abab").is_err());
    }
}
