//! Admission of one SEND, shared by the QUIC data plane and the HTTP API.
//!
//! The order of the checks is the product's contract and lives only here: validate,
//! find the device in the caller's workspace, refuse early if the device cannot send,
//! push back when the retry queue is full, claim the idempotency key (a resend gets its
//! original id and costs no token), reserve a queue slot, then take a token from the
//! workspace bucket. What passes is returned with the journal record to append; the
//! caller appends (batched on QUIC, one at a time on HTTP) and then commits or releases.

use std::time::Duration;

use waping_journal::Record;
use waping_protocol::{Body, ErrorCode, MessageId, Text, validate};

use crate::durable::{Durable, accepted_record};
use crate::idempotency::{Claim, ClaimToken, Pending};
use crate::ids::IdGen;
use crate::limiter::{MonotonicClock, RefusalReason};
use crate::metrics::Metrics;
use crate::session::{Outbound, Permit, ReplySink, SessionManager};
use crate::workspace::Workspace;

/// What admission needs of the node.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// Device sessions.
    pub sessions: &'a SessionManager,
    /// Journal, idempotency index, retry queue.
    pub durable: &'a Durable,
    /// Message ids.
    pub ids: &'a IdGen,
    /// Limiter clock.
    pub clock: MonotonicClock,
    /// Counters.
    pub metrics: &'a Metrics,
    /// Audit log (refusals by limits are aggregated there).
    pub audit: &'a crate::audit::AuditHub,
}

/// One SEND as the caller decoded it.
#[derive(Debug)]
pub struct Request {
    /// Client's key for exactly-once acceptance, unique per workspace within the window.
    pub idempotency_key: Text,
    /// Device to send from.
    pub device: Text,
    /// Recipient address.
    pub recipient: Text,
    /// Content.
    pub body: Body,
    /// The stream's sequence number (0 on HTTP).
    pub seq: u64,
    /// Where the delivery report goes (`None` on HTTP: its status is polled).
    pub reply: Option<ReplySink>,
    /// Id of the API key that submitted it (kept with the message for `read_own`).
    pub submitted_by: String,
}

/// A refusal: the message is handed back untouched, with why and when to retry.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Catalogue code.
    pub code: ErrorCode,
    /// Milliseconds before a retry can succeed (0 = waiting does not help).
    pub retry_after_ms: u32,
    /// Human text.
    pub reason: String,
}

/// A message that passed every check and waits for its journal append.
#[derive(Debug)]
pub struct Admitted {
    /// Idempotency claim; commit after the append, release if it fails.
    pub token: ClaimToken,
    /// Reserved slot in the device queue.
    pub permit: Permit,
    /// The message for the session.
    pub out: Outbound,
    /// The `Accepted` record to append.
    pub record: Record,
}

/// Why a message was not admitted as new.
#[derive(Debug)]
pub enum NotAdmitted {
    /// The idempotency key is known: answer with the original id; if `pending`, only once
    /// the original is durable.
    Duplicate {
        /// The original message's id.
        id: MessageId,
        /// Set while the original is still being written.
        pending: Option<Pending>,
    },
    /// Refused.
    Refused(Refusal),
}

fn refused(code: ErrorCode, retry_after_ms: u32, reason: impl Into<String>) -> Result<Admitted, NotAdmitted> {
    Err(NotAdmitted::Refused(Refusal {
        code,
        retry_after_ms,
        reason: reason.into(),
    }))
}

/// Milliseconds, rounded up, at least 1.
pub fn ceil_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    ms.clamp(1, u32::MAX as u128) as u32
}

/// Runs the admission checks for one message of workspace `ws`: `Ok` is a new message to
/// append, then commit.
pub fn admit(node: Node<'_>, ws: &Workspace, req: Request) -> Result<Admitted, NotAdmitted> {
    let audit = node.audit;
    let r = admit_inner(node, ws, req);
    if let Err(NotAdmitted::Refused(f)) = &r {
        // Only the limit codes are recorded (the hub ignores the rest); counted, not one record each.
        audit.note_rejection(&ws.id, f.code);
        // The node's `rejected` is counted by the caller (it also refuses before admission);
        // the workspace's here, once for both protocols.
        ws.count_rejected(f.code);
    }
    r
}

fn admit_inner(node: Node<'_>, ws: &Workspace, req: Request) -> Result<Admitted, NotAdmitted> {
    node.metrics.received.increment(1);
    ws.count_received();
    if let Err(e) = validate::send(&req.idempotency_key, &req.device, &req.recipient, &req.body) {
        return refused(e.code, 0, e.message);
    }
    let Some(session) = node.sessions.get(ws.idx, &req.device) else {
        // Ids of other workspaces are invisible: the same answer as for an id that exists nowhere.
        return refused(ErrorCode::UNKNOWN_DEVICE, 0, "no such device in this workspace");
    };
    // A device that cannot send for a long time (not linked, logged out, banned, disabled)
    // refuses here, handing the message back, rather than accepting it only to fail it.
    if let Some(code) = session.refusal() {
        return refused(code, 0, format!("device is {}", session.state().as_str()));
    }
    let max_queued = ws.max_queued.load(std::sync::atomic::Ordering::Relaxed);
    if max_queued > 0 && ws.queued.load(std::sync::atomic::Ordering::Relaxed) >= max_queued {
        return refused(
            ErrorCode::WORKSPACE_QUEUE_FULL,
            1000,
            "the workspace has its quota of queued messages",
        );
    }
    let d = node.durable;
    // A retry queue at its bound means the upstream is failing faster than it recovers:
    // accepting more would only turn them into dead letters. Push back instead.
    if d.retry.len() >= d.retry.capacity() {
        return refused(
            ErrorCode::OVERLOADED,
            1000,
            "retry queue is full; the upstream is failing",
        );
    }
    let now_ms = crate::unix_ms();
    let id = node.ids.next();
    let token = match d.idem.claim(&ws.id, req.idempotency_key.as_str(), id, now_ms) {
        Claim::New(t) => t,
        Claim::Duplicate { id, pending } => {
            node.metrics.deduplicated.increment(1);
            return Err(NotAdmitted::Duplicate { id, pending });
        }
    };
    let busy_after = match ws.device_rate_per_second {
        0 => 10,
        r => 1000u32.div_ceil(r),
    };
    // The queue slot is reserved before the limiter so a refusal here costs no token, and
    // before the journal so a persisted message always finds room.
    let Some(permit) = session.reserve() else {
        d.idem.release(token);
        return refused(ErrorCode::DEVICE_BUSY, busy_after, "device queue is full");
    };
    if let Err(r) = ws.limiter.check(node.clock.now(), 1) {
        d.idem.release(token);
        return match r.reason {
            RefusalReason::RateExceeded => refused(
                ErrorCode::RATE_LIMITED,
                ceil_ms(r.retry_after),
                "workspace send rate exceeded",
            ),
            // No wait admits it, so not a 3xxx code (those are always retryable).
            RefusalReason::ExceedsBurst => refused(
                ErrorCode::INVALID_FIELD,
                0,
                "more than the workspace burst at once",
            ),
        };
    }
    let record = accepted_record(
        id,
        &ws.id,
        &req.device,
        &req.idempotency_key,
        &req.recipient,
        &req.body,
        now_ms,
        req.submitted_by,
    );
    Ok(Admitted {
        token,
        permit,
        out: Outbound {
            id,
            seq: req.seq,
            recipient: req.recipient,
            body: req.body,
            reply: req.reply,
            attempts: 0,
            first_attempt_ms: 0,
        },
        record,
    })
}
