//! The seam between device sessions and WhatsApp.
//!
//! [`Upstream`] is what a device session needs from "WhatsApp": attach a
//! device, send one message, and a stream of events (inbound messages,
//! device state) pushed into an [`EventSink`]. Implementations: [`sim`]
//! (in-process simulator) and [`remote`] (the simulator in another process,
//! so the load harness can play WhatsApp on its own cores). The real
//! WhatsApp Web implementation plugs in here later.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use waping_protocol::{Body, DeviceState, ErrorCode, Text};

pub mod remote;
pub mod sim;

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
        }
    }

    /// Whether the same send may succeed later (the retry queue of the durable core uses this).
    pub fn retryable(&self) -> bool {
        self.code().retryable()
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
    /// A device changed state.
    State {
        /// The device.
        device: DeviceRef,
        /// New state.
        state: DeviceState,
        /// Why.
        detail: String,
    },
}

/// Where upstreams push events. Bounded: a slow consumer makes the upstream
/// wait (the WhatsApp upstream will hold its server ack), never grow memory.
pub type EventSink = mpsc::Sender<UpstreamEvent>;

/// What device sessions need from WhatsApp.
pub trait Upstream: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Brings a device online; its state changes arrive on the event sink.
    fn attach(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// Sends one message.
    fn send(&self, msg: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>>;
}
