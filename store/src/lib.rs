//! Device store (skeleton; filled by the device-sessions work of issue 4).
#![forbid(unsafe_code)]
