//! `[upstream.whatsapp]`, compiled whether or not the WhatsApp upstream is (cargo feature
//! `whatsapp`), so a config file means the same in every build.

use serde::{Deserialize, Serialize};

/// `[upstream.whatsapp]`: settings of the WhatsApp Web upstream (`upstream.kind = "whatsapp"`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppConfig {
    /// WhatsApp Web version every client advertises, set once for the node (no client
    /// fetches it: that made 1000 clients take minutes to start). Default the version the
    /// pinned whatsapp-rust 0.7.0 ships; raise it when WhatsApp reports "client outdated".
    pub web_version: [u32; 3],
    /// WebSocket URL of WhatsApp's chat server. Default `wss://web.whatsapp.com/ws/chat`.
    pub ws_url: String,
    /// Events buffered per device before the device waits (inbound) or counts lagged
    /// (informational). Default 256; 1..=65 536.
    pub event_capacity: usize,
    /// Dials to WhatsApp per second for the whole node, including the library's own
    /// reconnects, under the session connect gate. Default 20; 1..=10 000.
    pub connects_per_second: u32,
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        // The same values as waping-whatsapp's WaConfig::default (a test in `whatsapp.rs`
        // checks it), written out so the config parses in builds without the upstream.
        WhatsAppConfig {
            web_version: [2, 3000, 1_042_742_319],
            ws_url: "wss://web.whatsapp.com/ws/chat".into(),
            event_capacity: 256,
            connects_per_second: 20,
        }
    }
}

impl WhatsAppConfig {
    /// Appends every violation, each with its path.
    pub fn validate(&self, p: &mut Vec<String>) {
        if !(1..=65_536).contains(&self.event_capacity) {
            p.push(format!(
                "upstream.whatsapp.event_capacity: {} is outside 1..=65536",
                self.event_capacity
            ));
        }
        if !(1..=10_000).contains(&self.connects_per_second) {
            p.push(format!(
                "upstream.whatsapp.connects_per_second: {} is outside 1..=10000",
                self.connects_per_second
            ));
        }
        if !(self.ws_url.starts_with("wss://") || self.ws_url.starts_with("ws://")) {
            p.push(format!(
                "upstream.whatsapp.ws_url: {:?} is not a ws:// or wss:// URL",
                self.ws_url
            ));
        }
    }
}
