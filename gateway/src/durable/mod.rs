//! The durable core as the gateway uses it: journal, idempotency index and retry queue together.
//!
//! Invariants (the crash test in `gateway/tests/crash.rs` checks them end to end):
//!
//! - A SEND is answered ACCEPTED only after its `Accepted` record is synced (group commit in
//!   [`waping_journal`]), and it reaches a device session only after that, so nothing is ever
//!   delivered that a restart would not know about.
//! - Every attempt is recorded (`Dispatched`) before its outcome, and every outcome
//!   (`Sent`, `Failed`, `RetryScheduled`, `Dead`) after it. A crash in between leaves the
//!   message unfinished; replay dispatches it again under the same upstream id, which
//!   WhatsApp (and the simulator) answer with "already sent" — at-least-once on the wire,
//!   exactly-once delivered.
//! - Transition records are appended in the background: they ride along with the next group
//!   commit and no one waits for them, because losing one only causes a harmless resend.

use std::sync::Arc;

use waping_journal::{AcceptedMessage, Journal, Record};
use waping_protocol::{Body, MessageId, Text};

use crate::idempotency::IdempotencyIndex;
use crate::limiter::MonotonicClock;
use crate::retry::{RetryHandle, RetryPolicy};
use crate::session::{Outbound, SessionHandle};

pub mod dead_letters;

/// A message waiting in the retry queue, with the session it goes back to.
#[derive(Debug)]
pub struct RetryItem {
    /// Where it goes when due.
    pub session: Arc<SessionHandle>,
    /// The message, with its attempt count.
    pub msg: Outbound,
}

/// Shared handles of the durable core.
#[derive(Debug)]
pub struct Durable {
    /// The journal.
    pub journal: Arc<Journal>,
    /// Idempotency keys.
    pub idem: Arc<IdempotencyIndex>,
    /// Producers' side of the retry queue.
    pub retry: RetryHandle<MessageId, RetryItem>,
    /// Validated retry policy.
    pub policy: Arc<RetryPolicy>,
    /// The monotonic clock the retry queue runs on.
    pub clock: MonotonicClock,
}

impl Durable {
    /// Appends transition records without waiting; a failure is logged and counted, never
    /// fatal: the message stays unfinished in the journal and is resent after a restart.
    pub fn note(&self, records: Vec<Record>) {
        if let Err(e) = self.journal.append_background(records) {
            metrics::counter!("waping_journal_errors_total", "op" => "transition").increment(1);
            tracing::error!(error = %e, "journal refused a state transition");
        }
    }
}

impl crate::upstream::InboundJournal for Durable {
    fn journal_inbound(
        &self,
        device: &crate::upstream::DeviceRef,
        from: &Text,
        upstream_id: &Text,
        body: &Body,
    ) -> crate::upstream::BoxFuture<'static, Result<(), String>> {
        use sha2::Digest as _;
        // The same message redelivered by WhatsApp (its ack was lost) gets the same id.
        let mut h = sha2::Sha256::new();
        for part in [
            device.workspace.as_bytes(),
            device.device.as_str().as_bytes(),
            upstream_id.as_str().as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let rec = Record::Inbound(waping_journal::InboundMessage {
            id: MessageId(id),
            workspace: device.workspace.to_string(),
            device: device.device.to_string(),
            from: from.to_string(),
            upstream_id: upstream_id.to_string(),
            body: jbody(body),
            received_at_ms: crate::unix_ms(),
        });
        let done = self.journal.append(vec![rec]);
        Box::pin(async move { done.await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}

/// The journal's body from the protocol's.
pub fn jbody(b: &Body) -> waping_journal::Body {
    match b {
        Body::Text(t) => waping_journal::Body::Text(t.as_str().to_owned()),
        Body::Media {
            reference,
            mime,
            caption,
        } => waping_journal::Body::Media {
            reference: reference.as_str().to_owned(),
            mime: mime.as_str().to_owned(),
            caption: caption.as_str().to_owned(),
        },
    }
}

/// The protocol's body from the journal's.
pub fn pbody(b: waping_journal::Body) -> Body {
    match b {
        waping_journal::Body::Text(t) => Body::Text(Text::from(t)),
        waping_journal::Body::Media {
            reference,
            mime,
            caption,
        } => Body::Media {
            reference: Text::from(reference),
            mime: Text::from(mime),
            caption: Text::from(caption),
        },
    }
}

/// The `Accepted` record of a SEND.
#[allow(clippy::too_many_arguments)]
pub fn accepted_record(
    id: MessageId,
    workspace: &str,
    device: &Text,
    idempotency_key: &Text,
    recipient: &Text,
    body: &Body,
    now_ms: u64,
    submitted_by: String,
) -> Record {
    Record::Accepted(AcceptedMessage {
        id,
        workspace: workspace.to_owned(),
        device: device.as_str().to_owned(),
        idempotency_key: idempotency_key.as_str().to_owned(),
        recipient: recipient.as_str().to_owned(),
        body: jbody(body),
        accepted_at_ms: now_ms,
        submitted_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_convert_both_ways() {
        for b in [
            Body::Text(Text::from("hello")),
            Body::Media {
                reference: Text::from("s3://x"),
                mime: Text::from("image/png"),
                caption: Text::from("cap"),
            },
        ] {
            assert_eq!(pbody(jbody(&b)), b);
        }
    }
}
