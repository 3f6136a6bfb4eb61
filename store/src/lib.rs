//! Device store of the waping gateway: per-device session state and WhatsApp credentials of
//! every device of a node in **one** embedded database file (redb), sealed at rest.
//!
//! - [`Store::open`] opens `state/devices.redb` (exclusively) and starts one writer thread.
//! - [`Store::device`] gives a cheap [`DeviceStore`] handle; inside a device, namespaces
//!   ([`Ns`]) of byte keys hold byte values.
//! - Reads run on the caller's thread. Writes are queued to the writer, which commits
//!   everything queued in one durable transaction (group commit) and then completes each
//!   caller's future: a write has resolved only once it is on disk. Nothing runs on tokio's
//!   blocking pool. `*_blocking` variants serve CLIs and tests.
//! - Every value passes through a [`Sealer`] bound to (workspace, device, namespace, key), so an
//!   encrypting sealer (issue 5) drops in and values cannot be swapped between keys or devices.
//!
//! Design and measurements: `docs/design/0009-device-store.md`.
#![forbid(unsafe_code)]

mod error;
mod key;
mod seal;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Fault, SealError, StoreError};
pub use key::{DeviceId, MAX_ID_BYTES, MAX_KEY_BYTES, Ns};
pub use seal::{Aad, PlainSealer, Sealer};
pub use store::{Batch, BatchOp, DeviceStore, Page, Store, StoreOptions, StoreStats};
