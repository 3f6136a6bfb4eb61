//! What the control plane can ask the live journal about single messages and dead letters.

use crate::record::MessageId;

/// Where a message stands, as [`crate::Journal::message_status`] reports it.
///
/// Carries no recipient and no content: the status of finished messages is kept in memory
/// for a while (`JournalConfig::status_capacity`, `status_retention`) and must stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatus {
    /// Message.
    pub id: MessageId,
    /// Workspace it belongs to (check it before showing the status to a tenant).
    pub workspace: String,
    /// Device it is sent from.
    pub device: String,
    /// API key id that submitted it; empty when unknown.
    pub submitted_by: String,
    /// When it was accepted, unix ms.
    pub accepted_at_ms: u64,
    /// Where it stands.
    pub state: StatusState,
    /// Attempts made (0 while queued, and after a dead letter was replayed).
    pub attempts: u32,
    /// Time of the newest journal record about it that carries one, unix ms: acceptance,
    /// dispatch, death, replay, or finish. A scheduled retry and a purge carry no time (the
    /// previous one stays), and a dispatch carried forward by compaction keeps its time only
    /// while the journal stays open.
    pub updated_at_ms: u64,
}

/// State in [`MessageStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusState {
    /// Waiting for its first attempt (or replayed from the dead letters).
    Queued,
    /// An attempt was dispatched; its outcome is not known yet.
    InFlight,
    /// An attempt failed; the next is due at `due_at_ms`.
    RetryWait {
        /// When the next attempt is due, unix ms.
        due_at_ms: u64,
        /// Error code of the failed attempt.
        last_code: u16,
    },
    /// Upstream took it.
    Sent {
        /// Upstream's id for it.
        upstream_id: String,
    },
    /// Failed permanently and was reported to the client.
    Failed {
        /// Error code reported.
        code: u16,
    },
    /// A dead letter: attempts exhausted, waiting to be replayed or purged.
    Dead {
        /// Last error code.
        last_code: u16,
    },
    /// A dead letter that was purged.
    Purged,
}

/// Which dead letters of a workspace [`crate::Journal::purge_dead_where`] purges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadFilter {
    /// Those sent from this device.
    Device(String),
    /// Those addressed to this recipient (opens each of the workspace's dead letters).
    Recipient(String),
}
