//! Webhook delivery primitives: signing, SSRF guard, schedule, circuit breaker, client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
