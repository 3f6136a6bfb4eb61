//! Account-safety pacing per device (issue 4): how fast, how much and to whom one linked
//! WhatsApp number may send, so that gateway traffic does not get numbers banned.
//!
//! - [`PacingConfig`] (`[pacing]`) and [`PacingOverride`] (`[workspaces.pacing]`): the rules
//!   and their defaults; [`PacingPolicy`]: the same in the pacer's units, one per workspace.
//! - [`DevicePacer`]: one per device session, sans-IO (`now` and `wall_ms` are arguments,
//!   randomness comes from a caller's `Rng`). Rules: minimum interval plus random jitter,
//!   a token bucket, first-contact limits (hourly bucket and daily cap), a warm-up daily
//!   cap that grows with days since linking, a pause with exponential backoff after an
//!   upstream 429, and optional "typing" presence before a send.
//! - [`ContactBook`]: the bounded, persistable set of recipients a device knows.
//!
//! The workspace token bucket ([`crate::limiter`]) still gates *admission* of SENDs; the
//! pacer gates *dispatch* to WhatsApp. `docs/design/0010-account-safety-pacing.md` records
//! the rules, the defaults and where they come from.
#![forbid(unsafe_code)]

mod config;
mod contacts;
mod pacer;

#[cfg(test)]
mod tests;

pub use config::{PacingConfig, PacingConfigError, PacingOverride, PacingPolicy};
pub use contacts::{ContactBook, ContactBookError, ContactKey};
pub use pacer::{DAY_MS, DailyUsage, DevicePacer, MAX_RETRY_HINT, Pace, PaceReason};
