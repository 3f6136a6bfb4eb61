//! Roles and permissions: the one place that decides who may do what.
//!
//! Every HTTP route and every QUIC frame names the [`Permission`] it needs; the
//! [`Role`] → permission matrix below is the only table. A key may hand out (create,
//! rotate, revoke) only keys whose role's permissions are a subset of its own, so no
//! role can mint a more powerful one.

use serde::{Deserialize, Serialize};

/// What an operation needs. Bit positions are private; names are stable (docs, errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Permission {
    /// Read the workspace's own settings, quotas and counts.
    WorkspaceRead = 1 << 0,
    /// List and read API keys (never their secrets: only hashes are stored).
    KeysRead = 1 << 1,
    /// Create, rotate and revoke API keys.
    KeysWrite = 1 << 2,
    /// List devices and read their state.
    DevicesRead = 1 << 3,
    /// Create, link, unlink, disable, enable devices; see link codes.
    DevicesWrite = 1 << 4,
    /// Send messages.
    MessagesSend = 1 << 5,
    /// Read the status of any message of the workspace.
    MessagesReadAll = 1 << 6,
    /// Read the status of messages sent with this same key.
    MessagesReadOwn = 1 << 7,
    /// List and read dead letters.
    DeadLettersRead = 1 << 8,
    /// Replay and purge dead letters.
    DeadLettersWrite = 1 << 9,
    /// Read retention settings.
    SettingsRead = 1 << 10,
    /// Change retention settings.
    SettingsWrite = 1 << 11,
    /// Request deletion of a device's or a recipient's data, and read deletion jobs.
    DeletionsWrite = 1 << 12,
    /// Delete the whole workspace (crypto-shredding its data key).
    WorkspaceDelete = 1 << 13,
    /// Read and export audit records.
    AuditRead = 1 << 14,
    /// Subscribe to live events (reports, inbound messages, device state).
    EventsSubscribe = 1 << 15,
    /// Create, read, change, rotate the secret of and delete webhook endpoints, and replay
    /// their failed deliveries. Admin and up: an endpoint URL decides where the workspace's
    /// messages go.
    WebhooksManage = 1 << 16,
    /// Create, read, change and delete automation rules and read the tags they set. Admin
    /// and up: a rule sends messages in the workspace's name.
    AutomationsManage = 1 << 17,
}

impl Permission {
    /// Every permission, for docs and tests.
    pub const ALL: [Permission; 18] = [
        Permission::WorkspaceRead,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::DevicesRead,
        Permission::DevicesWrite,
        Permission::MessagesSend,
        Permission::MessagesReadAll,
        Permission::MessagesReadOwn,
        Permission::DeadLettersRead,
        Permission::DeadLettersWrite,
        Permission::SettingsRead,
        Permission::SettingsWrite,
        Permission::DeletionsWrite,
        Permission::WorkspaceDelete,
        Permission::AuditRead,
        Permission::EventsSubscribe,
        Permission::WebhooksManage,
        Permission::AutomationsManage,
    ];

    /// Stable name (`devices.write`), as used in error bodies and the README matrix.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::WorkspaceRead => "workspace.read",
            Permission::KeysRead => "keys.read",
            Permission::KeysWrite => "keys.write",
            Permission::DevicesRead => "devices.read",
            Permission::DevicesWrite => "devices.write",
            Permission::MessagesSend => "messages.send",
            Permission::MessagesReadAll => "messages.read",
            Permission::MessagesReadOwn => "messages.read_own",
            Permission::DeadLettersRead => "dead_letters.read",
            Permission::DeadLettersWrite => "dead_letters.write",
            Permission::SettingsRead => "settings.read",
            Permission::SettingsWrite => "settings.write",
            Permission::DeletionsWrite => "deletions.write",
            Permission::WorkspaceDelete => "workspace.delete",
            Permission::AuditRead => "audit.read",
            Permission::EventsSubscribe => "events.subscribe",
            Permission::WebhooksManage => "webhooks.manage",
            Permission::AutomationsManage => "automations.manage",
        }
    }

    const fn bit(self) -> u32 {
        self as u32
    }
}

/// A key's role inside its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the workspace, including deleting it.
    Owner,
    /// Keys, devices, settings, sending and dead letters; not workspace deletion, not audit.
    Admin,
    /// Devices, sending, dead letters.
    Operator,
    /// Send, and read the status of its own messages.
    Sender,
    /// Read-only: workspace, keys (ids and names), devices, messages, dead letters, settings.
    Viewer,
    /// Audit read and export only.
    Auditor,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 6] = [
        Role::Owner,
        Role::Admin,
        Role::Operator,
        Role::Sender,
        Role::Viewer,
        Role::Auditor,
    ];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Sender => "sender",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The permission set as a bit mask. This is the role matrix.
    pub const fn mask(self) -> u32 {
        use Permission as P;
        const READ: u32 = P::WorkspaceRead.bit()
            | P::KeysRead.bit()
            | P::DevicesRead.bit()
            | P::MessagesReadAll.bit()
            | P::MessagesReadOwn.bit()
            | P::DeadLettersRead.bit()
            | P::SettingsRead.bit()
            | P::EventsSubscribe.bit();
        const OPERATOR: u32 =
            READ | P::DevicesWrite.bit() | P::MessagesSend.bit() | P::DeadLettersWrite.bit();
        const ADMIN: u32 = OPERATOR
            | P::KeysWrite.bit()
            | P::SettingsWrite.bit()
            | P::DeletionsWrite.bit()
            | P::WebhooksManage.bit()
            | P::AutomationsManage.bit();
        match self {
            Role::Owner => ADMIN | P::WorkspaceDelete.bit() | P::AuditRead.bit(),
            Role::Admin => ADMIN,
            Role::Operator => OPERATOR & !P::KeysRead.bit(),
            Role::Sender => P::WorkspaceRead.bit() | P::MessagesSend.bit() | P::MessagesReadOwn.bit(),
            Role::Viewer => READ,
            Role::Auditor => P::WorkspaceRead.bit() | P::AuditRead.bit(),
        }
    }

    /// Whether the role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        self.mask() & p.bit() != 0
    }

    /// Whether a key with this role may create, rotate or revoke a key with role `other`:
    /// only when `other` grants nothing this role lacks.
    pub fn may_manage(self, other: Role) -> bool {
        self.allows(Permission::KeysWrite) && other.mask() & !self.mask() == 0
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role matrix as Markdown rows (`| permission | owner | … |`), for the README test.
pub fn matrix_markdown() -> String {
    let mut s = String::from("| permission |");
    for r in Role::ALL {
        s.push_str(&format!(" {} |", r.as_str()));
    }
    s.push_str("\n|---|");
    for _ in Role::ALL {
        s.push_str("---|");
    }
    s.push('\n');
    for p in Permission::ALL {
        s.push_str(&format!("| `{}` |", p.as_str()));
        for r in Role::ALL {
            s.push_str(if r.allows(p) { " ✔ |" } else { "   |" });
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_has_everything_and_roles_nest() {
        for p in Permission::ALL {
            assert!(Role::Owner.allows(p), "{}", p.as_str());
        }
        // Every other role is a subset of owner; admin ⊇ operator ⊇ sender (minus key reads).
        for r in Role::ALL {
            assert!(Role::Owner.may_manage(r));
        }
        assert!(Role::Admin.may_manage(Role::Operator));
        assert!(Role::Admin.may_manage(Role::Sender));
        assert!(Role::Admin.may_manage(Role::Viewer));
        assert!(Role::Admin.may_manage(Role::Admin));
        assert!(!Role::Admin.may_manage(Role::Owner));
        assert!(
            !Role::Admin.may_manage(Role::Auditor),
            "audit is separated from admin"
        );
        for r in [Role::Operator, Role::Sender, Role::Viewer, Role::Auditor] {
            for other in Role::ALL {
                assert!(!r.may_manage(other), "{r} has no keys.write");
            }
        }
    }

    #[test]
    fn least_privilege_rows() {
        assert!(!Role::Sender.allows(Permission::DevicesRead));
        assert!(!Role::Sender.allows(Permission::MessagesReadAll));
        assert!(Role::Sender.allows(Permission::MessagesReadOwn));
        assert!(!Role::Viewer.allows(Permission::MessagesSend));
        assert!(!Role::Viewer.allows(Permission::DevicesWrite));
        assert!(!Role::Viewer.allows(Permission::AuditRead));
        assert!(!Role::Auditor.allows(Permission::MessagesSend));
        assert!(!Role::Auditor.allows(Permission::DevicesRead));
        assert!(!Role::Operator.allows(Permission::KeysWrite));
        assert!(!Role::Admin.allows(Permission::WorkspaceDelete));
        assert!(!Role::Admin.allows(Permission::AuditRead));
    }

    #[test]
    fn names_round_trip_and_readme_lists_the_matrix() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        assert!(
            readme.contains(matrix_markdown().trim()),
            "README.md must contain the role matrix exactly as roles::matrix_markdown() prints it:\n{}",
            matrix_markdown()
        );
    }
}
