//! Inbound events of waping-gateway: the versioned model (`docs/events.md`) and the durable
//! event store that webhook delivery and live subscribers stand on.
//!
//! - [`Event`] (module `model`): envelope + typed [`EventData`], schema version
//!   [`SCHEMA_VERSION`]; [`Event::to_json`] / [`Event::from_json`] write and read exactly the
//!   documented JSON.
//! - [`EventStore`]: one redb file per node. [`EventStore::append`] journals events and their
//!   webhook deliveries in one durable, group-committed transaction before anything is
//!   delivered; workers read [`EventStore::due`] / [`EventStore::pending`] and
//!   [`EventStore::record`] outcomes; subscribers resume with [`EventStore::read_after`];
//!   [`EventStore::sweep`] bounds the disk. Payloads are sealed with the workspace's key
//!   through [`waping_journal::RecordSealer`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use waping_events::*;
//! let store = EventStore::open("state/events.redb", StoreOptions::default())?;
//! let event = Event::new("acme", Some("d1".into()), 1_795_705_445_123, EventData::DeviceState(
//!     DeviceStateChange { state: DeviceState::Connected, detail: None, until_ms: None },
//! ));
//! let appended = store.append(vec![NewEvent { event, endpoints: vec![7] }]).await?;
//! for p in store.due(7, 1_795_705_445_123, 100)? {
//!     // deliver p.event, then:
//!     store.record(vec![Outcome::Delivered { endpoint: 7, seq: p.seq }]).await?;
//! }
//! # let _ = appended; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod error;
mod model;
mod store;
mod timestamp;
mod writer;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod store_tests;

pub use codec::MAX_ERROR_BYTES;
pub use error::{EventStoreError, Fault};
pub use model::{
    Content, DeadLettered, DeliveryStatus, DeviceState, DeviceStateChange, DisableReason, EndpointDisabled,
    ErrorInfo, Event, EventData, EventId, EventType, LinkCode, LinkMethod, MAX_ID_BYTES, Media,
    MessageReceived, MessageStatus, ModelError, SCHEMA_VERSION,
};
pub use store::{
    Appended, DeadEntry, DeadSelector, EventStore, NewEvent, Outcome, Pending, RecordReport, Removed,
    StoreOptions, StoreStats, Stored, SweepReport,
};
pub use timestamp::{format_ms as format_timestamp, parse_ms as parse_timestamp};
