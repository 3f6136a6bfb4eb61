//! WhatsApp Web multi-device upstream of the waping gateway.
//!
//! Wraps the `whatsapp-rust` crates (pinned `=0.7.0`) behind a neutral API so their
//! churn stays inside this crate: the gateway sees [`WaNode`], [`WaDevice`],
//! [`WaEvent`], [`WaError`] and the [`DeviceKv`] storage contract, never a
//! whatsapp-rust type. See `docs/design/0008-whatsapp-upstream.md`.
#![forbid(unsafe_code)]

pub mod backend;
/// Test suite for `DeviceKv` implementations; never in normal builds.
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod kv;
mod net;

pub use kv::{DeviceKv, KvBatch, KvError, KvOp, MemoryKv};
pub mod config;
pub mod error;
pub mod event;
mod node;
#[cfg(test)]
mod offline_tests;

pub use config::WaConfig;
pub use error::{Fault, WaError};
pub use event::{InboundCommit, MessageBody, ReceiptKind, WaEvent, WaMessage};
pub use node::{OutboundBody, SendReceipt, WaDevice, WaNode, parse_recipient, wa_message_id};
