//! Envelope encryption at rest (skeleton; filled by the vault work).
#![forbid(unsafe_code)]
