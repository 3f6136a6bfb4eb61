//! Inbound events of waping-gateway: the versioned model (`docs/events.md`) and the durable
//! event store that webhook delivery and live subscribers stand on.
//!
//! - [`Event`] (module `model`): envelope + typed [`EventData`], schema version
//!   [`SCHEMA_VERSION`]; [`Event::to_json`] / [`Event::from_json`] write and read exactly the
//!   documented JSON.
//! - [`EventStore`]: one redb file per node. [`EventStore::append`] journals events in one
//!   durable, group-committed transaction before anything is delivered, in chunks of one
//!   workspace's events (the event log). Webhook workers read the log from their endpoint's
//!   cursor ([`EventStore::scan`]) and [`EventStore::record`] outcomes with the cursor's move;
//!   retries live in per-delivery "owed" rows ([`EventStore::owed_due`]); subscribers resume
//!   with [`EventStore::read_after`]; [`EventStore::sweep`] bounds the disk. Payloads are
//!   sealed with the workspace's key through [`waping_journal::RecordSealer`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use waping_events::*;
//! let store = EventStore::open("state/events.redb", StoreOptions::default())?;
//! let cursor = store.open_cursor(7, "acme", None).await?;
//! let event = Event::new("acme", Some("d1".into()), 1_795_705_445_123, EventData::DeviceState(
//!     DeviceStateChange { state: DeviceState::Connected, detail: None, until_ms: None },
//! ));
//! store.append(vec![NewEvent { event, endpoints: vec![] }]).await?;
//! let page = store.scan("acme", cursor, 100, &|_type, _device| true)?;
//! for stored in &page.events {
//!     // deliver stored.event; a failure becomes Outcome::Retry (an owed row)
//!     let _ = stored;
//! }
//! store.record(vec![Outcome::Advance { endpoint: 7, to_seq: page.through }]).await?;
//! # Ok(()) }
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
    AutomationMatched, Content, DeadLettered, DeliveryStatus, DeviceState, DeviceStateChange, DisableReason,
    EndpointDisabled, ErrorInfo, Event, EventData, EventId, EventType, LinkCode, LinkMethod, MAX_ID_BYTES,
    Media, MessageReceived, MessageStatus, ModelError, SCHEMA_VERSION,
};
pub use store::{
    Appended, Backlog, DeadEntry, DeadSelector, Erase, EventStore, NewEvent, Outcome, Page, Pending,
    RecordReport, Removed, StoreOptions, StoreStats, Stored, SweepReport, deduplicated,
};
pub use timestamp::{format_ms as format_timestamp, parse_ms as parse_timestamp};
