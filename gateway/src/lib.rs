//! The waping gateway daemon as a library: everything `main.rs` wires together.
//!
//! Subsystems, one folder each: [`config`], [`auth`], [`limiter`],
//! [`workspace`], [`session`], [`upstream`], [`server`] (QUIC data plane),
//! [`control`] (workspaces, keys, roles, deletions) and [`http`] (the HTTP API);
//! [`app`] wires them.
#![deny(unsafe_code)]

pub mod admit;
pub mod app;
pub mod audit;
pub mod auth;
pub mod automations;
pub mod config;
pub mod control;
pub mod durable;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod limiter;
pub mod link;
pub mod metrics;
pub mod pacing;
pub mod reload;
pub mod retry;
pub mod server;
pub mod session;
pub mod subscribe;
pub mod systemd;
pub mod tls;
pub mod upstream;
pub mod webhooks;
pub mod workspace;

pub use app::Gateway;

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
