//! The seam between device sessions and WhatsApp.
//!
//! [`Upstream`] is what a device session needs from "WhatsApp": attach a
//! device, send one message, and a stream of events (inbound messages,
//! device state) pushed into an [`EventSink`]. Implementations: [`sim`]
//! (in-process simulator), [`remote`] (the simulator in another process,
//! so the load harness can play WhatsApp on its own cores) and `whatsapp` (WhatsApp Web
//! multi-device over the `waping-whatsapp` crate; cargo feature `whatsapp`, on by default).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use waping_protocol::{Body, ErrorCode, Text};

pub mod remote;
pub mod sim;
#[cfg(feature = "whatsapp")]
pub mod whatsapp;
pub mod whatsapp_config;

/// A boxed send future; one allocation per message, negligible next to the upstream round trip.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies a device across workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    /// Workspace id (not index: upstream processes outlive reloads).
    pub workspace: Arc<str>,
    /// Device id within the workspace.
    pub device: Text,
}

/// One message handed to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSend {
    /// Sending device.
    pub device: DeviceRef,
    /// Recipient address.
    pub recipient: Text,
    /// Content.
    pub body: Body,
    /// Stable id derived from the gateway message id: a resend after a timeout
    /// carries the same id, so the upstream can recognise "already sent".
    pub upstream_id: String,
}

/// The upstream took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAck {
    /// The upstream's id of the message.
    pub upstream_id: String,
    /// The upstream had already taken a message with this `upstream_id` (a resend
    /// after a lost answer or a crash); it was not delivered a second time.
    pub already_sent: bool,
}

/// Why an upstream send failed; each maps to a catalogue code and says whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Upstream not reachable.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Refused permanently.
    #[error("upstream rejected the message: {0}")]
    Rejected(String),
    /// No answer in time; the message may or may not have been sent.
    #[error("upstream timed out")]
    Timeout,
    /// Too fast for this device (WhatsApp's rate-overlimit).
    #[error("upstream throttled the device, retry after {retry_after:?}")]
    Throttled {
        /// Upstream's hint.
        retry_after: Duration,
    },
    /// The device is not connected.
    #[error("device disconnected")]
    Disconnected,
    /// The device must be relinked.
    #[error("device logged out")]
    LoggedOut,
    /// WhatsApp banned or restricted the account.
    #[error("device banned")]
    Banned,
    /// The device has no WhatsApp account linked yet.
    #[error("device not linked")]
    NotLinked,
}

impl UpstreamError {
    /// The catalogue code.
    pub fn code(&self) -> ErrorCode {
        match self {
            UpstreamError::Unavailable(_) => ErrorCode::UPSTREAM_UNAVAILABLE,
            UpstreamError::Rejected(_) => ErrorCode::UPSTREAM_REJECTED,
            UpstreamError::Timeout => ErrorCode::UPSTREAM_TIMEOUT,
            UpstreamError::Throttled { .. } => ErrorCode::UPSTREAM_THROTTLED,
            UpstreamError::Disconnected => ErrorCode::DEVICE_DISCONNECTED,
            UpstreamError::LoggedOut => ErrorCode::DEVICE_LOGGED_OUT,
            UpstreamError::Banned => ErrorCode::DEVICE_BANNED,
            UpstreamError::NotLinked => ErrorCode::DEVICE_NOT_LINKED,
        }
    }

    /// Whether the same send may succeed later (the retry queue of the durable core uses this).
    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }
}

/// How a device is linked to a WhatsApp account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMethod {
    /// Show QR codes (refs rotate); the phone scans one.
    Qr,
    /// Ask WhatsApp for an 8-character pairing code for this phone number (digits, country code
    /// first); the user types it into the phone.
    PairingCode {
        /// E.164 digits without `+`.
        phone: String,
    },
}

/// What happened to a device's WhatsApp session. The session's lifecycle state machine
/// ([`crate::session::lifecycle`]) turns these into state transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A QR payload to show while linking; replaces the previous one.
    Qr {
        /// The text to encode in the QR code.
        code: String,
        /// How long WhatsApp accepts it.
        valid_for: Duration,
    },
    /// The pairing code to type into the phone.
    PairingCode {
        /// The code, e.g. `ABCD-EFGH`.
        code: String,
    },
    /// The phone accepted the link; the account is known.
    Paired {
        /// The linked account (WhatsApp JID or phone number).
        account: String,
    },
    /// The device is connected and can send.
    Connected,
    /// The connection dropped; the gateway reconnects with backoff.
    Disconnected {
        /// Why, as the upstream said it.
        reason: String,
    },
    /// WhatsApp ended the link (the user removed the device, or the credentials are no longer
    /// valid). Only a new link brings it back.
    LoggedOut {
        /// Why.
        reason: String,
    },
    /// WhatsApp banned or restricted the account.
    Banned {
        /// End of a temporary ban, unix ms; `None` for a permanent one.
        until_ms: Option<u64>,
        /// Why (WhatsApp's code or text).
        reason: String,
    },
    /// Another client took over this session with the same credentials. Reconnecting at once
    /// would fight it for the session, so the device waits the longest backoff.
    StreamReplaced,
}

/// Kind of a delivery receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// Reached the recipient's phone.
    Delivered,
    /// The recipient opened it.
    Read,
    /// The recipient played it (voice, video).
    Played,
}

impl ReceiptKind {
    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
            ReceiptKind::Played => "played",
        }
    }
}

/// Something the upstream observed.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamEvent {
    /// A message arrived for a device.
    Inbound {
        /// Receiving device.
        device: DeviceRef,
        /// Sender.
        from: Text,
        /// Upstream id.
        upstream_id: Text,
        /// Content.
        body: Body,
    },
    /// A recipient's phone reported on messages the device sent.
    Receipt {
        /// Sending device.
        device: DeviceRef,
        /// Whose phone.
        from: Text,
        /// Upstream ids of the messages (as in [`UpstreamAck::upstream_id`]).
        upstream_ids: Vec<Text>,
        /// What happened to them.
        kind: ReceiptKind,
    },
    /// A device's session changed.
    Session {
        /// The device.
        device: DeviceRef,
        /// What happened.
        event: SessionEvent,
    },
}

/// Makes an inbound message durable before the upstream acknowledges it to WhatsApp: a
/// crash after the acknowledgement then cannot lose it (WhatsApp would not send it again).
pub trait InboundJournal: Send + Sync + 'static {
    /// Journals one inbound message; resolves once it is on disk.
    fn journal_inbound(
        &self,
        device: &DeviceRef,
        from: &Text,
        upstream_id: &Text,
        body: &Body,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// Where upstreams push events. Bounded: a slow consumer makes the upstream
/// wait (the WhatsApp upstream will hold its server ack), never grow memory.
pub type EventSink = mpsc::Sender<UpstreamEvent>;

/// What device sessions need from WhatsApp.
///
/// The session task is the only caller for its device and drives these from its lifecycle
/// state machine: `connect` when the machine says so (after the node-wide connect gate),
/// `link` when an operator links, `disconnect` on disable or shutdown, `logout` on unlink.
/// Outcomes that arrive later (QR codes, pairing, drops, logouts, bans) come as
/// [`UpstreamEvent::Session`] events.
pub trait Upstream: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether credentials for the device exist, so a device seen for the first time starts
    /// `connecting` rather than `unlinked` (the simulator provisions its devices unless told not
    /// to; the WhatsApp upstream looks in the device store).
    fn provisioned(&self, device: &DeviceRef) -> bool;

    /// Opens the device's connection with its stored credentials. `Ok` means the attempt was
    /// made; [`SessionEvent::Connected`] (or a failure event) follows.
    fn connect(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// Closes the device's connection (credentials are kept).
    fn disconnect(&self, device: DeviceRef) -> BoxFuture<'static, ()>;

    /// Starts linking a device that has no credentials; QR or pairing codes arrive as events,
    /// then [`SessionEvent::Paired`] and [`SessionEvent::Connected`].
    fn link(&self, device: DeviceRef, method: LinkMethod) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// Unlinks the device at WhatsApp (where possible) and forgets its credentials.
    fn logout(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// Sends one message.
    fn send(&self, msg: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>>;

    /// Shows "typing…" to `to` before a send (account-safety pacing may ask for it). Best
    /// effort: a failure only means the presence was not shown. The simulators ignore it.
    fn typing(&self, _device: DeviceRef, _to: Text) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
