//! The waping gateway daemon as a library: everything `main.rs` wires together.
#![deny(unsafe_code)]

pub mod limiter;
