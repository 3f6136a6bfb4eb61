//! Webhook delivery primitives: signing, SSRF guard, schedule, circuit breaker, client.
//!
//! The pieces the gateway's per-endpoint delivery worker puts together. Everything but
//! [`resolve_and_check`] and [`deliver`] is pure: times are unix milliseconds (seconds for
//! signatures) passed in, randomness comes from a passed-in RNG, so the worker's decisions
//! are testable to the millisecond without sleeping.
//!
//! One attempt of one message, as the worker runs it:
//!
//! 1. [`resolve_and_check`] the endpoint's [`EndpointUrl`] under the operator's [`Policy`]:
//!    every address must be public (or allow-listed). A refusal is the endpoint owner's to
//!    fix ([`SsrfError::is_retryable`] is false) except a resolution failure.
//! 2. [`Breaker::allow`]: if the endpoint's breaker is open, leave the message queued and
//!    wait ([`Breaker::open_until`]).
//! 3. Sign with the endpoint's [`Signer`] at the attempt's time ([`Signer::sign`]; a retry
//!    is signed afresh, with the same `webhook-id`), then [`deliver`] to exactly the
//!    checked addresses.
//! 4. [`classify_status`] the answer (or take [`DeliveryError::verdict`] of a failure).
//! 5. Tell the breaker: [`Breaker::on_success`] for [`Verdict::Delivered`], otherwise
//!    [`Breaker::on_failure`] with `Some(retry_after.unwrap_or_default())` for
//!    [`Verdict::SlowDown`] and `None` for the rest.
//! 6. [`Schedule::plan`] the message: done, retry at a time (`Retry-After` honoured, never
//!    earlier than the schedule), give up (dead letter), or disable the endpoint (410).
//!
//! ```no_run
//! # async fn attempt(
//! #     url: &waping_webhooks::EndpointUrl, policy: &waping_webhooks::Policy,
//! #     signer: &waping_webhooks::Signer, breaker: &mut waping_webhooks::Breaker,
//! #     schedule: &waping_webhooks::Schedule, tls: &waping_webhooks::TlsClient,
//! #     msg_id: &str, body: bytes::Bytes, attempt_no: u32, now_ms: u64,
//! #     rng: &mut impl rand::RngCore,
//! # ) -> Result<waping_webhooks::Plan, Box<dyn std::error::Error>> {
//! use waping_webhooks::*;
//! let addrs = resolve_and_check(url, policy).await?;
//! if !breaker.allow(now_ms) {
//!     return Ok(Plan::RetryAt(breaker.open_until().unwrap_or(now_ms)));
//! }
//! let headers = signer.sign(msg_id, now_ms / 1000, &body)?;
//! let req = DeliveryRequest { url: url.clone(), headers, body };
//! let (verdict, retry_after) = match deliver(&req, &addrs, tls, DEFAULT_TIMEOUT).await {
//!     Ok(resp) => (classify_status(resp.status), resp.retry_after),
//!     Err(e) => (e.verdict(), None),
//! };
//! match verdict {
//!     Verdict::Delivered => breaker.on_success(now_ms),
//!     Verdict::SlowDown => breaker.on_failure(now_ms, Some(retry_after.unwrap_or_default())),
//!     _ => breaker.on_failure(now_ms, None),
//! }
//! Ok(schedule.plan(verdict, attempt_no, now_ms, retry_after, rng))
//! # }
//! ```
//!
//! Receivers verify with any Standard Webhooks library; [`verify`] is the same check in
//! Rust (see `docs/webhooks.md`, "Verifying signatures").
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod client;
pub mod schedule;
pub mod sign;
pub mod ssrf;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use client::{
    ConnPool, DEFAULT_TIMEOUT, DeliveryError, DeliveryRequest, DeliveryResponse, MAX_RESPONSE_BODY, Stage,
    TlsClient, TlsSetupError, deliver, deliver_pooled, parse_retry_after,
};
pub use schedule::{Plan, Schedule, ScheduleError, Verdict, classify as classify_status};
pub use sign::{
    DEFAULT_TOLERANCE, Secret, SecretError, SignError, SignedHeaders, Signer, VerifyError, verify,
};
pub use ssrf::{
    AddrClass, Cidr, CidrError, EndpointUrl, Host, Policy, SsrfError, classify as classify_addr,
    resolve_and_check,
};
