//! Showing a device's link codes to a person: QR codes for the terminal, SVG and PNG, and the
//! phone numbers and pairing codes of pairing-code linking.
//!
//! Nothing here talks to WhatsApp or the network: the session task publishes the codes
//! (`EventKind::LinkCode`), and the CLI (`waping-gateway device link`) and, later, the HTTP
//! API render them with these functions.
#![forbid(unsafe_code)]

pub mod cli;
pub mod pairing;
pub mod qr;

pub use pairing::{PairingCode, PairingCodeError, Phone, PhoneError};
pub use qr::{Qr, QrError, TerminalStyle};
