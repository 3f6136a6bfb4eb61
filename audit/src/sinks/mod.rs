//! The sinks. Each implements [`crate::sink::Sink`]; [`build`] makes one from its config.

pub mod file;
pub mod http;
pub mod nats;
pub mod stdout;
