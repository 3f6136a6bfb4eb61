//! Inbound events: the versioned model (`docs/events.md`) and the durable event store.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
