//! The waping gateway's wire protocol, versions 1 and 2, without IO.
//!
//! Frames ([`frame`]), their byte encoding ([`codec`]), the numeric error
//! catalogue ([`error`]), per-field validation ([`validate`]) and the
//! ordering rules of a connection ([`conn`]). `PROTOCOL.md` beside this
//! crate is the normative description; tests keep the two in step.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod conn;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod validate;

pub use codec::{DecodeError, Decoder, EncodeError, decode_body, encode};
pub use error::{CATALOGUE, CodeInfo, ErrorCode, Fault};
pub use frame::{
    Body, DeliveryReport, DeliveryStatus, DeviceAction, DeviceState, Event, EventKind, Frame, LinkCodeKind,
    LinkMethod, MessageId, ReceiptStatus, Text, subscribe,
};
