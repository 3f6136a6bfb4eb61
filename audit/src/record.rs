//! The audit record: what producers hand in ([`Event`]) and the versioned line
//! that is chained, stored and shipped ([`Record`]). Schema: `docs/audit.md`.
//!
//! A record never carries a message body, a secret or (unless the workspace opted
//! in) a full phone number: producers pass numbers through [`mask_phone`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Schema version written in every record's `v`. Bumped only for changes that an
/// existing reader would misread; new optional fields do not bump it.
pub const SCHEMA_VERSION: u8 = 1;

/// Longest `reason` kept, in bytes; longer ones are cut at a char boundary so a
/// hostile error string cannot bloat the log.
pub const MAX_REASON_LEN: usize = 256;

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A workspace API key, by id (never its secret).
    Key {
        /// Key id (`key_…`).
        id: String,
    },
    /// The node administrator (admin token).
    Admin,
    /// The gateway itself (sweeps, sessions, shutdown).
    System,
    /// A command-line tool run on the node (e.g. `rotate-master-key`).
    Cli,
    /// Nobody authenticated (failed authentication).
    Anonymous,
}

/// What was done. The string forms are the stable `action` values of the schema
/// and the `action` label of `waping_audit_records_total` (a closed set, so bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// A key authenticated (QUIC: per connection; HTTP: aggregated per key and interval).
    #[serde(rename = "auth.success")]
    AuthSuccess,
    /// A credential was refused.
    #[serde(rename = "auth.failure")]
    AuthFailure,
    /// An API key was created.
    #[serde(rename = "key.create")]
    KeyCreate,
    /// An API key was rotated (a new secret replaces the old one).
    #[serde(rename = "key.rotate")]
    KeyRotate,
    /// An API key was revoked.
    #[serde(rename = "key.revoke")]
    KeyRevoke,
    /// An API key's role changed.
    #[serde(rename = "key.role_change")]
    KeyRoleChange,
    /// A device was created.
    #[serde(rename = "device.create")]
    DeviceCreate,
    /// A device was linked to a WhatsApp account.
    #[serde(rename = "device.link")]
    DeviceLink,
    /// A device was unlinked on request.
    #[serde(rename = "device.unlink")]
    DeviceUnlink,
    /// WhatsApp logged the device out.
    #[serde(rename = "device.logout")]
    DeviceLogout,
    /// WhatsApp banned or restricted the device's account.
    #[serde(rename = "device.ban")]
    DeviceBan,
    /// A device was disabled by an operator.
    #[serde(rename = "device.disable")]
    DeviceDisable,
    /// A device was enabled by an operator.
    #[serde(rename = "device.enable")]
    DeviceEnable,
    /// A device and its data were deleted.
    #[serde(rename = "device.delete")]
    DeviceDelete,
    /// A workspace was created.
    #[serde(rename = "workspace.create")]
    WorkspaceCreate,
    /// A workspace was deleted (crypto-shredded).
    #[serde(rename = "workspace.delete")]
    WorkspaceDelete,
    /// The configuration was reloaded (or a reload was refused).
    #[serde(rename = "config.reload")]
    ConfigReload,
    /// A workspace's limits or quotas changed.
    #[serde(rename = "limits.change")]
    LimitsChange,
    /// Sends were refused by rate limits (aggregated per workspace and interval).
    #[serde(rename = "rate_limit.reject")]
    RateLimitReject,
    /// A dead letter was replayed.
    #[serde(rename = "dead_letter.replay")]
    DeadLetterReplay,
    /// A dead letter was purged.
    #[serde(rename = "dead_letter.purge")]
    DeadLetterPurge,
    /// A workspace's retention windows changed.
    #[serde(rename = "retention.change")]
    RetentionChange,
    /// The retention sweeper removed expired data.
    #[serde(rename = "retention.sweep")]
    RetentionSweep,
    /// A deletion (workspace, device, recipient) was requested.
    #[serde(rename = "deletion.request")]
    DeletionRequest,
    /// A deletion job finished (or failed).
    #[serde(rename = "deletion.finish")]
    DeletionFinish,
    /// A webhook endpoint was created.
    #[serde(rename = "webhook.create")]
    WebhookCreate,
    /// A webhook endpoint was changed (URL, filters, secret).
    #[serde(rename = "webhook.update")]
    WebhookUpdate,
    /// A webhook endpoint was deleted.
    #[serde(rename = "webhook.delete")]
    WebhookDelete,
    /// A webhook endpoint was disabled (by its owner, or by a 410 answer).
    #[serde(rename = "webhook.disable")]
    WebhookDisable,
    /// An automation rule was created.
    #[serde(rename = "automation.create")]
    AutomationCreate,
    /// An automation rule was changed.
    #[serde(rename = "automation.update")]
    AutomationUpdate,
    /// An automation rule was deleted.
    #[serde(rename = "automation.delete")]
    AutomationDelete,
    /// The master key was rotated.
    #[serde(rename = "master_key.rotate")]
    MasterKeyRotate,
    /// The audit log started on this node (after recovery).
    #[serde(rename = "audit.start")]
    AuditStart,
    /// The audit log stopped cleanly.
    #[serde(rename = "audit.stop")]
    AuditStop,
    /// A signed digest over the chain head.
    #[serde(rename = "audit.digest")]
    AuditDigest,
    /// Records were discarded under the `discard_oldest` spool policy (never silent).
    #[serde(rename = "audit.gap")]
    AuditGap,
}

impl Action {
    /// Every action, for docs and exhaustive tests.
    pub const ALL: &'static [Action] = &[
        Action::AuthSuccess,
        Action::AuthFailure,
        Action::KeyCreate,
        Action::KeyRotate,
        Action::KeyRevoke,
        Action::KeyRoleChange,
        Action::DeviceCreate,
        Action::DeviceLink,
        Action::DeviceUnlink,
        Action::DeviceLogout,
        Action::DeviceBan,
        Action::DeviceDisable,
        Action::DeviceEnable,
        Action::DeviceDelete,
        Action::WorkspaceCreate,
        Action::WorkspaceDelete,
        Action::ConfigReload,
        Action::LimitsChange,
        Action::RateLimitReject,
        Action::DeadLetterReplay,
        Action::DeadLetterPurge,
        Action::RetentionChange,
        Action::RetentionSweep,
        Action::DeletionRequest,
        Action::DeletionFinish,
        Action::WebhookCreate,
        Action::WebhookUpdate,
        Action::WebhookDelete,
        Action::WebhookDisable,
        Action::AutomationCreate,
        Action::AutomationUpdate,
        Action::AutomationDelete,
        Action::MasterKeyRotate,
        Action::AuditStart,
        Action::AuditStop,
        Action::AuditDigest,
        Action::AuditGap,
    ];

    /// The stable string form (same as the serialised one).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::AuthSuccess => "auth.success",
            Action::AuthFailure => "auth.failure",
            Action::KeyCreate => "key.create",
            Action::KeyRotate => "key.rotate",
            Action::KeyRevoke => "key.revoke",
            Action::KeyRoleChange => "key.role_change",
            Action::DeviceCreate => "device.create",
            Action::DeviceLink => "device.link",
            Action::DeviceUnlink => "device.unlink",
            Action::DeviceLogout => "device.logout",
            Action::DeviceBan => "device.ban",
            Action::DeviceDisable => "device.disable",
            Action::DeviceEnable => "device.enable",
            Action::DeviceDelete => "device.delete",
            Action::WorkspaceCreate => "workspace.create",
            Action::WorkspaceDelete => "workspace.delete",
            Action::ConfigReload => "config.reload",
            Action::LimitsChange => "limits.change",
            Action::RateLimitReject => "rate_limit.reject",
            Action::DeadLetterReplay => "dead_letter.replay",
            Action::DeadLetterPurge => "dead_letter.purge",
            Action::RetentionChange => "retention.change",
            Action::RetentionSweep => "retention.sweep",
            Action::DeletionRequest => "deletion.request",
            Action::DeletionFinish => "deletion.finish",
            Action::WebhookCreate => "webhook.create",
            Action::WebhookUpdate => "webhook.update",
            Action::WebhookDelete => "webhook.delete",
            Action::WebhookDisable => "webhook.disable",
            Action::AutomationCreate => "automation.create",
            Action::AutomationUpdate => "automation.update",
            Action::AutomationDelete => "automation.delete",
            Action::MasterKeyRotate => "master_key.rotate",
            Action::AuditStart => "audit.start",
            Action::AuditStop => "audit.stop",
            Action::AuditDigest => "audit.digest",
            Action::AuditGap => "audit.gap",
        }
    }
}

/// What it was done to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Object type: `workspace`, `key`, `device`, `message`, `recipient`, `job`, `webhook`, `node`.
    pub kind: String,
    /// Its id (a recipient is masked unless the workspace opted in).
    pub id: String,
}

impl Target {
    /// A target of `kind` with `id`.
    pub fn new(kind: &str, id: impl Into<String>) -> Target {
        Target {
            kind: kind.to_owned(),
            id: id.into(),
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Success,
    /// Attempted and failed (the reason says why).
    Failure,
    /// Refused by authentication, authorisation or a limit.
    Denied,
}

/// Typed detail of a record; which variant goes with which action is listed in `docs/audit.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Detail {
    /// A key's role (create, rotate, role change).
    Key {
        /// Role after the action.
        role: String,
        /// Role before the action (role change only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_role: Option<String>,
        /// The replacement key's id (rotate only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_key: Option<String>,
        /// Expiry, unix milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// An aggregate over an interval (HTTP authentications, rate-limit rejections).
    Count {
        /// Events in the interval.
        count: u64,
        /// Interval length in seconds.
        interval_s: u64,
        /// Which limit or method (`workspace_rate`, `workspace_queue`, `device_queue`, `http`, `quic`…).
        scope: String,
    },
    /// Removed data (retention sweep, deletion job).
    Removed {
        /// Dead letters removed.
        #[serde(default)]
        dead_letters: u64,
        /// Devices removed.
        #[serde(default)]
        devices: u64,
        /// Journal cutoff applied, unix milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cutoff_ms: Option<u64>,
    },
    /// A settings change: the names of the fields that changed (never their secret values).
    Changed {
        /// Changed field names.
        fields: Vec<String>,
    },
    /// The client certificate a QUIC connection presented (action `auth.success`, with
    /// `server.client_auth` on): which machine connected, beside which key it used.
    ClientCert {
        /// SHA-256 of the leaf certificate's DER, hex (`sha256:…`).
        sha256: String,
    },
    /// A configuration reload (action `config.reload`): what took effect, what waits for a
    /// restart, and why a refused reload was refused. Setting names only, never values.
    Reload {
        /// SHA-256 of the file that was read (hex), so the record names the exact version.
        config_sha256: String,
        /// Settings that changed and took effect without a restart.
        #[serde(default)]
        applied: Vec<String>,
        /// Settings that changed in the file but take effect only after a restart.
        #[serde(default)]
        restart_required: Vec<String>,
        /// Why the reload was refused (validation problems, at most 20); empty on success.
        #[serde(default)]
        problems: Vec<String>,
    },
    /// A signed digest over the chain head (action `audit.digest`).
    Digest(DigestDetail),
    /// Records lost under the `discard_oldest` policy, inclusive range.
    Gap {
        /// First lost sequence number.
        from_seq: u64,
        /// Last lost sequence number.
        to_seq: u64,
        /// Sinks that had not received them.
        sinks: Vec<String>,
    },
    /// The audit log started: where the chain resumed.
    Start {
        /// Gateway version.
        version: String,
        /// Records found on disk at start (head sequence number).
        resumed_at_seq: u64,
        /// Bytes of a torn last line cut off during recovery (0 after a clean stop).
        truncated_bytes: u64,
    },
}

/// The signed part of an `audit.digest` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestDetail {
    /// Sequence number of the record just before the digest.
    pub head_seq: u64,
    /// Hash (hex SHA-256 of the line) of that record; equal to the digest's own `prev`.
    pub head_hash: String,
    /// Hash of the previous digest record's line (64 zeros for the node's first digest).
    pub prev_digest: String,
    /// First 16 hex digits of SHA-256 of the Ed25519 public key that signed.
    pub key_id: String,
    /// Ed25519 signature (base64, standard alphabet) over [`crate::chain::digest_message`].
    pub sig: String,
}

/// What a producer hands in; the spool writer turns it into a [`Record`] by adding the
/// node, the sequence number and the link to the previous record. Serialisable so a
/// command-line tool can drop one into the running gateway's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When it happened, unix milliseconds.
    pub at_ms: u64,
    /// The workspace concerned, if any.
    pub workspace: Option<String>,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// To what.
    pub target: Option<Target>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why (for failures and denials), cut to [`MAX_REASON_LEN`].
    pub reason: Option<String>,
    /// The HTTP request id, if it came through the API.
    pub request_id: Option<String>,
    /// The client's address, if any.
    pub source: Option<IpAddr>,
    /// Typed detail.
    pub detail: Option<Detail>,
}

impl Event {
    /// A successful `action` by `actor` now-ish (`at_ms`), without target or detail.
    pub fn new(at_ms: u64, actor: Actor, action: Action) -> Event {
        Event {
            at_ms,
            workspace: None,
            actor,
            action,
            target: None,
            outcome: Outcome::Success,
            reason: None,
            request_id: None,
            source: None,
            detail: None,
        }
    }

    /// Sets the workspace.
    pub fn workspace(mut self, ws: impl Into<String>) -> Event {
        self.workspace = Some(ws.into());
        self
    }

    /// Sets the target.
    pub fn target(mut self, kind: &str, id: impl Into<String>) -> Event {
        self.target = Some(Target::new(kind, id));
        self
    }

    /// Sets the outcome and its reason.
    pub fn outcome(mut self, outcome: Outcome, reason: impl Into<String>) -> Event {
        self.outcome = outcome;
        let mut r: String = reason.into();
        if r.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
        }
        self.reason = Some(r);
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: impl Into<String>) -> Event {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the source address.
    pub fn source(mut self, ip: IpAddr) -> Event {
        self.source = Some(ip);
        self
    }

    /// Sets the detail when there is one.
    pub fn detail_opt(mut self, d: Option<Detail>) -> Event {
        if d.is_some() {
            self.detail = d;
        }
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, d: Detail) -> Event {
        self.detail = Some(d);
        self
    }
}

/// One audit line as written, chained and shipped. Field order is the serialised order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u8,
    /// Node name: one hash chain per node.
    pub node: String,
    /// Position in the node's chain, from 1, without gaps.
    pub seq: u64,
    /// Event time, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Workspace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// To what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// HTTP request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Typed detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
    /// Hex SHA-256 of the previous record's line in this node's chain (64 zeros for seq 1).
    pub prev: String,
}

impl Record {
    /// Builds the record for `ev` at position `seq` after a record whose line hashed to `prev`.
    pub fn from_event(ev: &Event, node: &str, seq: u64, prev: &crate::chain::Hash) -> Record {
        Record {
            v: SCHEMA_VERSION,
            node: node.to_owned(),
            seq,
            ts: rfc3339_ms(ev.at_ms),
            workspace: ev.workspace.clone(),
            actor: ev.actor.clone(),
            action: ev.action,
            target: ev.target.clone(),
            outcome: ev.outcome,
            reason: ev.reason.clone(),
            request_id: ev.request_id.clone(),
            source: ev.source.map(|ip| ip.to_string()),
            detail: ev.detail.clone(),
            prev: prev.to_hex(),
        }
    }

    /// The line (no trailing newline) whose SHA-256 is this record's link.
    pub fn to_line(&self) -> Vec<u8> {
        // A Record holds only strings, integers and enums: serialisation cannot fail.
        serde_json::to_vec(self).expect("audit record serialises")
    }
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds (`2026-11-26T12:00:00.123Z`).
/// Fixed width, so lines of one node sort by time as text too.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Masks a phone number or WhatsApp address for the log: keeps a leading `+`, the
/// first three and last two digits, stars the rest, drops any `@server` part.
/// Short inputs are starred entirely. Workspaces that opt in log numbers in full.
pub fn mask_phone(s: &str) -> String {
    let user = s.split('@').next().unwrap_or("");
    let user = user.split(':').next().unwrap_or(user);
    let (plus, digits) = match user.strip_prefix('+') {
        Some(d) => ("+", d),
        None => ("", user),
    };
    let chars: Vec<char> = digits.chars().collect();
    if chars.len() <= 6 {
        return format!("{plus}{}", "*".repeat(chars.len().max(1)));
    }
    let n = chars.len();
    let mut out = String::with_capacity(n + 1);
    out.push_str(plus);
    for (i, c) in chars.iter().enumerate() {
        out.push(if i < 3 || i >= n - 2 { *c } else { '*' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Hash;

    #[test]
    fn action_strings_match_serde() {
        for a in Action::ALL {
            let s = serde_json::to_string(a).unwrap();
            assert_eq!(s, format!("\"{}\"", a.as_str()));
            let back: Action = serde_json::from_str(&s).unwrap();
            assert_eq!(back, *a);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_694_400_123), "2026-11-26T12:00:00.123Z");
    }

    #[test]
    fn masking_keeps_only_edges() {
        assert_eq!(mask_phone("+4915112345678"), "+491********78");
        assert_eq!(mask_phone("4915112345678@s.whatsapp.net"), "491********78");
        assert_eq!(mask_phone("4915112345678:12@s.whatsapp.net"), "491********78");
        assert_eq!(mask_phone("12345"), "*****");
        assert_eq!(mask_phone(""), "*");
        assert!(!mask_phone("+4915112345678").contains("123456"));
    }

    #[test]
    fn reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(300);
        let ev = Event::new(0, Actor::System, Action::AuthFailure).outcome(Outcome::Denied, long);
        let r = ev.reason.unwrap();
        assert!(r.len() <= MAX_REASON_LEN && r.len() >= MAX_REASON_LEN - 1);
    }

    #[test]
    fn record_line_round_trips_and_omits_empty_fields() {
        let ev = Event::new(1_000, Actor::Key { id: "key_1".into() }, Action::KeyCreate)
            .workspace("acme")
            .target("key", "key_2")
            .detail(Detail::Key {
                role: "sender".into(),
                previous_role: None,
                new_key: None,
                expires_at_ms: None,
            });
        let rec = Record::from_event(&ev, "edge-1", 7, &Hash::ZERO);
        let line = rec.to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with(r#"{"v":1,"node":"edge-1","seq":7,"#), "{text}");
        assert!(!text.contains("reason") && !text.contains("request_id"));
        assert!(
            text.contains(r#""detail":{"type":"key","role":"sender"}"#),
            "{text}"
        );
        let back: Record = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, rec);
    }
}
