//! Neutral events of a linked device, mapped from whatsapp-rust's `Event`.

use std::time::Duration;

use tokio::sync::oneshot;
use whatsapp_rust::prelude::MessageExt;
use whatsapp_rust::types::events::{Event, InboundMessage};
use whatsapp_rust::wacore::types::presence::ReceiptType;

use crate::error::WaError;

/// Body of a message. Only text is implemented; media variants will be added here
/// without changing the events around them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageBody {
    /// Plain or extended text.
    Text(String),
    /// A kind this crate does not map yet (media, reaction, poll, ...).
    Unsupported,
}

/// One inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaMessage {
    /// Chat JID (the peer for a 1:1 chat, the group for a group).
    pub chat: String,
    /// Sender JID (a device JID may carry `:device`).
    pub from: String,
    /// Stanza id; unique only within `(chat, from)`, so deduplicate on all three.
    pub id: String,
    /// Server timestamp, unix seconds.
    pub timestamp: i64,
    /// Sender's push name, possibly empty.
    pub push_name: String,
    /// Sent by another device of this same account.
    pub from_me: bool,
    /// Chat is a group.
    pub is_group: bool,
    /// Drained from the offline queue on (re)connect rather than live.
    pub offline: bool,
    /// What was sent.
    pub body: MessageBody,
}

impl WaMessage {
    pub(crate) fn from_inbound(m: &InboundMessage) -> Self {
        let info = &m.info;
        let body = match m.message.get_base_message().text_content() {
            Some(t) => MessageBody::Text(t.to_owned()),
            None => MessageBody::Unsupported,
        };
        Self {
            chat: info.source.chat.to_string(),
            from: info.source.sender.to_string(),
            id: info.id.to_string(),
            timestamp: info.timestamp.timestamp(),
            push_name: info.push_name.clone(),
            from_me: info.source.is_from_me,
            is_group: info.source.is_group,
            offline: info.is_offline,
            body,
        }
    }
}

/// Kind of a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptKind {
    /// Reached the recipient's device.
    Delivered,
    /// Read by the recipient.
    Read,
    /// Media played by the recipient.
    Played,
    /// Accepted by the server but not deliverable to the peer (WhatsApp's `sent`
    /// downgrade, e.g. a LID peer that cannot receive it).
    Sent,
    /// The recipient could not decrypt and asked for a resend (handled by the library).
    Retry,
    /// Any other receipt type, by its wire name.
    Other(String),
}

impl ReceiptKind {
    fn from_wire(t: &ReceiptType) -> Self {
        match t {
            ReceiptType::Delivered => Self::Delivered,
            ReceiptType::Read | ReceiptType::ReadSelf => Self::Read,
            ReceiptType::Played | ReceiptType::PlayedSelf => Self::Played,
            ReceiptType::Sent => Self::Sent,
            ReceiptType::Retry => Self::Retry,
            other => Self::Other(format!("{other:?}")),
        }
    }
}

/// The consumer's answer to an inbound batch: WhatsApp is acknowledged only after
/// [`InboundCommit::commit`].
///
/// Dropping it (or [`InboundCommit::reject`]) leaves the batch unacknowledged; WhatsApp
/// redelivers it on a later connect, so the consumer must deduplicate on
/// `(chat, from, id)`. After `inbound_commit_timeout` without an answer the batch is
/// also left unacknowledged.
#[derive(Debug)]
pub struct InboundCommit {
    tx: Option<oneshot::Sender<Result<(), String>>>,
}

impl InboundCommit {
    pub(crate) fn gated() -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        (Self { tx: Some(tx) }, rx)
    }

    /// A handle for messages WhatsApp does not let us gate (newsletters, placeholder
    /// recoveries): they were acknowledged already, committing does nothing.
    pub(crate) fn ungated() -> Self {
        Self { tx: None }
    }

    /// A gated handle and the answer it will carry, for consumers' tests (feature
    /// `conformance`, never in production builds).
    #[cfg(feature = "conformance")]
    pub fn for_tests() -> (Self, oneshot::Receiver<Result<(), String>>) {
        Self::gated()
    }

    /// Whether WhatsApp's acknowledgement waits for this handle.
    pub fn is_gated(&self) -> bool {
        self.tx.is_some()
    }

    /// The batch is durably journaled: acknowledge it to WhatsApp.
    pub fn commit(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(()));
        }
    }

    /// The batch could not be journaled: leave it unacknowledged for redelivery.
    pub fn reject(mut self, reason: impl Into<String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(reason.into()));
        }
    }
}

/// Something that happened to a device.
#[derive(Debug)]
#[non_exhaustive]
pub enum WaEvent {
    /// A QR payload to render for linking; the next one replaces it after `valid_for`.
    Qr { code: String, valid_for: Duration },
    /// No QR refs left on this connection; reconnect to get new ones.
    QrExhausted,
    /// A pairing code to type on the phone (Linked devices > Link with phone number).
    PairingCode { code: String, valid_for: Duration },
    /// The pending pairing code is no longer valid; request a new one.
    PairingCodeExpired,
    /// Linking failed.
    PairingFailed {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Linked: the device now acts for `jid`.
    Paired {
        jid: String,
        lid: String,
        platform: String,
    },
    /// Connected and logged in.
    Connected,
    /// The connection dropped; the library reconnects with backoff unless stopped.
    Disconnected { reason: String, clean: bool },
    /// Logged out by WhatsApp or by us: credentials are useless, relink needed.
    LoggedOut { code: i32, on_connect: bool },
    /// Temporarily banned.
    TemporaryBan {
        code: i32,
        reason: String,
        expires: Duration,
    },
    /// Another client took over this session.
    StreamReplaced,
    /// The server refused the connection (not a logout).
    ConnectFailure { code: i32, message: Option<String> },
    /// The configured WhatsApp Web version is too old.
    ClientOutdated,
    /// Inbound messages; acknowledge through `commit` once journaled.
    Messages {
        batch: Vec<WaMessage>,
        commit: InboundCommit,
    },
    /// A receipt for messages this device sent.
    Receipt {
        chat: String,
        from: String,
        ids: Vec<String>,
        kind: ReceiptKind,
        timestamp: i64,
    },
    /// The server acknowledged (error = None) or refused a sent message.
    ServerAck { id: String, error: Option<WaError> },
    /// A message arrived that could not be decrypted (the library asks for a resend).
    Undecryptable {
        chat: String,
        from: String,
        id: String,
        timestamp: i64,
    },
    /// `missed` informational events were dropped because the consumer was slow.
    Lagged { missed: u64 },
}

/// What one library event means to this crate.
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    pub event: Option<WaEvent>,
    /// A sent message's server ack, for a waiting `send`.
    pub ack: Option<(String, Option<WaError>)>,
}

/// Maps one library event. `hook_installed`: messages committed through the durability
/// hook were already delivered by it and are skipped here.
pub(crate) fn map_event(ev: &Event) -> Mapped {
    let event = match ev {
        Event::PairingQrCode(q) => WaEvent::Qr {
            code: q.code.clone(),
            valid_for: q.timeout,
        },
        Event::PairingQrCodesExhausted(_) => WaEvent::QrExhausted,
        Event::PairingCode(c) => WaEvent::PairingCode {
            code: c.code.clone(),
            valid_for: c.timeout,
        },
        Event::PairingCodeRefresh(_) => WaEvent::PairingCodeExpired,
        Event::PairingCodeError(e) => WaEvent::PairingFailed {
            reason: e.error.clone(),
            retry_after: e.backoff,
        },
        Event::PairError(e) => WaEvent::PairingFailed {
            reason: e.error.clone(),
            retry_after: None,
        },
        Event::QrScannedWithoutMultidevice(_) => WaEvent::PairingFailed {
            reason: "phone scanned the QR without multi-device support".into(),
            retry_after: None,
        },
        Event::PairSuccess(p) => WaEvent::Paired {
            jid: p.id.to_string(),
            lid: p.lid.to_string(),
            platform: p.platform.clone(),
        },
        Event::Connected(_) => WaEvent::Connected,
        Event::Disconnected(d) => WaEvent::Disconnected {
            reason: d.reason.to_string(),
            clean: d.reason.is_clean_shutdown(),
        },
        Event::LoggedOut(l) => WaEvent::LoggedOut {
            code: l.reason.code(),
            on_connect: l.on_connect,
        },
        Event::TemporaryBan(b) => WaEvent::TemporaryBan {
            code: b.code.code(),
            reason: b.code.to_string(),
            expires: b.expire.to_std().unwrap_or_default(),
        },
        Event::StreamReplaced(_) => WaEvent::StreamReplaced,
        Event::ConnectFailure(f) => WaEvent::ConnectFailure {
            code: f.reason.code(),
            message: f.message.clone(),
        },
        Event::ClientOutdated(_) => WaEvent::ClientOutdated,
        Event::Messages(batch) => {
            if batch.hook_committed {
                return Mapped::default();
            }
            WaEvent::Messages {
                batch: batch.iter().map(WaMessage::from_inbound).collect(),
                commit: InboundCommit::ungated(),
            }
        }
        Event::Receipt(r) => WaEvent::Receipt {
            chat: r.source.chat.to_string(),
            from: r.source.sender.to_string(),
            ids: r.message_ids.iter().map(|i| i.to_string()).collect(),
            kind: ReceiptKind::from_wire(&r.r#type),
            timestamp: r.timestamp.timestamp(),
        },
        Event::ServerAck(a) => {
            if a.class.as_deref().is_some_and(|c| c != "message") {
                return Mapped::default();
            }
            let error = a.error.as_deref().map(WaError::from_nack);
            return Mapped {
                ack: Some((a.id.clone(), error.clone())),
                event: Some(WaEvent::ServerAck {
                    id: a.id.clone(),
                    error,
                }),
            };
        }
        Event::UndecryptableMessage(u) => WaEvent::Undecryptable {
            chat: u.info.source.chat.to_string(),
            from: u.info.source.sender.to_string(),
            id: u.info.id.to_string(),
            timestamp: u.info.timestamp.timestamp(),
        },
        _ => return Mapped::default(),
    };
    Mapped {
        event: Some(event),
        ack: None,
    }
}

/// The library event kinds [`map_event`] uses; nothing else is dispatched to us.
pub(crate) fn interest() -> whatsapp_rust::types::events::EventInterest {
    use whatsapp_rust::types::events::{EventInterest, EventKind as K};
    [
        K::PairingQrCode,
        K::PairingQrCodesExhausted,
        K::PairingCode,
        K::PairingCodeRefresh,
        K::PairingCodeError,
        K::PairError,
        K::QrScannedWithoutMultidevice,
        K::PairSuccess,
        K::Connected,
        K::Disconnected,
        K::LoggedOut,
        K::TemporaryBan,
        K::StreamReplaced,
        K::ConnectFailure,
        K::ClientOutdated,
        K::Messages,
        K::Receipt,
        K::ServerAck,
        K::UndecryptableMessage,
    ]
    .into_iter()
    .fold(EventInterest::none(), EventInterest::with)
}
