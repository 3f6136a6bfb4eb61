//! Node-wide settings of the WhatsApp upstream.

use std::net::SocketAddr;
use std::time::Duration;

/// WhatsApp Web version the crate 0.7.0 ships as its own fallback.
pub const DEFAULT_WEB_VERSION: (u32, u32, u32) = (2, 3000, 1_042_742_319);

/// Settings shared by every device of a [`crate::WaNode`].
///
/// Everything here is decided once per node: no client fetches the WhatsApp Web
/// version or resolves a host on its own (that is what made 1000 default clients take
/// 274 s to start, see the design record 0008).
#[derive(Debug, Clone)]
pub struct WaConfig {
    /// WhatsApp Web version advertised by every client. Default [`DEFAULT_WEB_VERSION`].
    /// Set once for the node (`with_version_override` on each client); an outdated value
    /// shows up as [`crate::WaEvent::ClientOutdated`] and is fixed by configuration.
    pub web_version: (u32, u32, u32),
    /// WebSocket URL of the chat server. Default `wss://web.whatsapp.com/ws/chat`.
    pub ws_url: String,
    /// Fixed addresses for the chat host instead of DNS (closed networks, tests).
    /// Default empty: resolve the host of `ws_url`, once per `dns_ttl`.
    pub static_addrs: Vec<SocketAddr>,
    /// How long a resolved address list is reused. Default 5 min; bounded below by 1 s.
    pub dns_ttl: Duration,
    /// Capacity of each device's event channel. Default 256; at least 1. A full
    /// channel backpressures inbound messages (the WhatsApp ack waits) and drops
    /// informational events, counted and reported as [`crate::WaEvent::Lagged`].
    pub event_capacity: usize,
    /// TCP + TLS + WebSocket upgrade deadline of one connection attempt. Default 20 s.
    pub connect_timeout: Duration,
    /// Deadline of one HTTP exchange (media, not used for text). Default 30 s.
    pub http_timeout: Duration,
    /// Largest HTTP response body accepted. Default 64 MiB (media-sized).
    pub http_max_body: usize,
    /// How long [`crate::WaDevice::send`] waits for WhatsApp's server ack. Default 20 s.
    pub send_ack_timeout: Duration,
    /// How long an inbound batch may wait for the consumer's commit before it is left
    /// unacknowledged (WhatsApp then redelivers it). Default 30 s.
    pub inbound_commit_timeout: Duration,
    /// Node-wide cap on new connection attempts per second (all devices together), so a
    /// mass disconnect or a restart never dials WhatsApp in a thundering herd.
    /// Default 20/s.
    pub connects_per_sec: u32,
    /// Attempts allowed at once before the rate applies. Default 20.
    pub connect_burst: u32,
    /// Fallback period of the device-state saver; state is also saved right after
    /// every change (pairing, keys). Default 30 s, as whatsapp-rust's own bot uses.
    pub device_save_interval: Duration,
    /// Skip the history sync after linking (a gateway does not mirror old chats).
    /// Default true.
    pub skip_history_sync: bool,
}

impl Default for WaConfig {
    fn default() -> Self {
        Self {
            web_version: DEFAULT_WEB_VERSION,
            ws_url: "wss://web.whatsapp.com/ws/chat".to_owned(),
            static_addrs: Vec::new(),
            dns_ttl: Duration::from_secs(300),
            event_capacity: 256,
            connect_timeout: Duration::from_secs(20),
            http_timeout: Duration::from_secs(30),
            http_max_body: 64 << 20,
            send_ack_timeout: Duration::from_secs(20),
            inbound_commit_timeout: Duration::from_secs(30),
            connects_per_sec: 20,
            connect_burst: 20,
            device_save_interval: Duration::from_secs(30),
            skip_history_sync: true,
        }
    }
}
