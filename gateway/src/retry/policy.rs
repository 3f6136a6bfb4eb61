//! When to try a failed delivery again: exponential backoff with full jitter, per error code.
//!
//! [`RetryConfig`] is the serde shape embedded in the gateway config;
//! [`RetryPolicy::from_config`] validates it once into a table the hot path
//! reads without allocating. [`RetryPolicy::decide`] is pure: the caller
//! passes the wall-clock `now` and the random source.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use waping_protocol::error::{CATALOGUE, ErrorCode};

/// Longest delay or age a config may name: 30 days. Why: a message older
/// than a month is not worth sending, and the bound keeps `u64` ms arithmetic far from overflow.
const MAX_CONFIG_MS: u64 = 30 * 24 * 3_600_000;

/// Retry settings as written in the config file (`[retry]`).
///
/// Every field has a default, so an empty `[retry]` table (or none) is valid.
/// The per-code table `codes` only *overrides*: the built-in per-code
/// defaults (see [`RetryPolicy::builtin_override`]) stay in force for every
/// field an override leaves out.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Backoff window of the first retry. Default 1000 ms; 1..=30 days.
    pub base_delay_ms: u64,
    /// Largest backoff window (the "cap"). Default 300 000 ms (5 min); `base_delay_ms..=30 days`.
    pub max_delay_ms: u64,
    /// Smallest delay drawn; full jitter draws from `[min_delay_ms, window]`.
    /// Default 0 (pure full jitter); `0..=max_delay_ms`.
    pub min_delay_ms: u64,
    /// Growth of the window per attempt. Default 2.0; 1.0..=10.0 (1.0 = constant window).
    pub multiplier: f64,
    /// Attempts in total, the first send included, before a message is dead
    /// (`Exhausted`). Default 10; 1..=10 000.
    pub max_attempts: u32,
    /// Age after the first attempt beyond which no retry is scheduled (`TooOld`).
    /// Default 86 400 000 ms (24 h); 1000 ms..=30 days. Why: a late WhatsApp
    /// message can be worse than none (an OTP, a reminder).
    pub max_age_ms: u64,
    /// Most items the retry queue holds; a full queue hands the item back.
    /// Default 1 000 000; 1..=100 000 000. Why bounded: an upstream outage must
    /// not turn into unbounded memory.
    pub capacity: u32,
    /// Per-code overrides keyed by the code's catalogue name, e.g.
    /// `[retry.codes.UPSTREAM_TIMEOUT] permanent = true`. Default: empty.
    pub codes: BTreeMap<String, CodeOverride>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_delay_ms: 1000,
            max_delay_ms: 300_000,
            min_delay_ms: 0,
            multiplier: 2.0,
            max_attempts: 10,
            max_age_ms: 86_400_000,
            capacity: 1_000_000,
            codes: BTreeMap::new(),
        }
    }
}

/// Overrides for one error code; a field left out keeps its built-in or global value.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CodeOverride {
    /// Never retry this code (dead as `Permanent` at once). Default false.
    /// Only adds permanence: a code the catalogue calls permanent cannot be made retryable.
    pub permanent: bool,
    /// Backoff window of the first retry after this code.
    pub base_delay_ms: Option<u64>,
    /// Largest backoff window after this code.
    pub max_delay_ms: Option<u64>,
    /// Smallest delay drawn after this code.
    pub min_delay_ms: Option<u64>,
    /// Attempt limit while this code is the latest failure.
    pub max_attempts: Option<u32>,
}

/// Backoff of one class of errors, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Window of the first retry.
    pub base_ms: u64,
    /// Largest window.
    pub cap_ms: u64,
    /// Smallest delay drawn (`<= cap_ms`).
    pub min_ms: u64,
    /// Window growth per attempt (`>= 1`).
    pub multiplier: f64,
    /// Attempts in total before `Exhausted`.
    pub max_attempts: u32,
}

impl Backoff {
    /// Upper end of the jitter range after `attempt` attempts (1-based):
    /// `min(cap, base * multiplier^(attempt-1))`, never below `min_ms`.
    ///
    /// Non-decreasing in `attempt` and never above `cap_ms` (the "monotone cap").
    pub fn window_ms(&self, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1);
        // f64 keeps the growth exact enough for delays (53-bit mantissa) and
        // saturates to infinity instead of wrapping; the cap then applies.
        let grown = self.base_ms as f64 * self.multiplier.powi(exp.min(i32::MAX as u32) as i32);
        let w = if grown.is_finite() && grown < self.cap_ms as f64 {
            grown as u64
        } else {
            self.cap_ms
        };
        w.max(self.min_ms)
    }
}

/// Why a message will not be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// `max_attempts` attempts failed.
    Exhausted,
    /// The next attempt would come after `first_attempt + max_age`.
    TooOld,
    /// The error can never succeed unchanged (UPSTREAM_REJECTED, DEVICE_LOGGED_OUT, client errors).
    Permanent,
}

impl DeadReason {
    /// Lower-case name for logs, metric labels and the journal.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::TooOld => "too_old",
            DeadReason::Permanent => "permanent",
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this wall-clock time (unix ms); always `>= now` and `<= first + max_age`.
    RetryAt(u64),
    /// Give up; the message goes to the dead-letter store.
    Dead(DeadReason),
}

/// A [`RetryConfig`] that broke a rule; lists every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry config: {}", problems.join("; "))]
pub struct RetryConfigError {
    /// One line per violated rule, each starting with the field's path.
    pub problems: Vec<String>,
}

/// A validated retry policy: global backoff plus a small per-code table.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    default: Backoff,
    max_age_ms: u64,
    capacity: usize,
    /// Sorted by code; `None` = permanent. A handful of entries, so a binary search beats a hash.
    codes: Vec<(ErrorCode, Option<Backoff>)>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from_config(&RetryConfig::default()).expect("default retry config is valid")
    }
}

impl RetryPolicy {
    /// Built-in per-code overrides applied before the config's `codes` table.
    ///
    /// - `UPSTREAM_THROTTLED` (WhatsApp's 429 `rate-overlimit`): base 30 s,
    ///   cap 30 min, at least 10 s. Why: the number is being punished for
    ///   sending fast; retrying within seconds prolongs the throttle and risks a ban.
    /// - `DEVICE_DISCONNECTED`: base 10 s, cap 15 min, up to 100 attempts. Why:
    ///   a phone can be offline for hours; `max_age` bounds the total instead of the count.
    pub fn builtin_override(code: ErrorCode) -> Option<CodeOverride> {
        match code {
            ErrorCode::UPSTREAM_THROTTLED => Some(CodeOverride {
                base_delay_ms: Some(30_000),
                max_delay_ms: Some(1_800_000),
                min_delay_ms: Some(10_000),
                ..CodeOverride::default()
            }),
            ErrorCode::DEVICE_DISCONNECTED => Some(CodeOverride {
                base_delay_ms: Some(10_000),
                max_delay_ms: Some(900_000),
                max_attempts: Some(100),
                ..CodeOverride::default()
            }),
            _ => None,
        }
    }

    /// Validates `cfg`; on error lists every problem, each prefixed with its path under `retry.`.
    pub fn from_config(cfg: &RetryConfig) -> Result<RetryPolicy, RetryConfigError> {
        let mut p = Vec::new();
        let default = Backoff {
            base_ms: cfg.base_delay_ms,
            cap_ms: cfg.max_delay_ms,
            min_ms: cfg.min_delay_ms,
            multiplier: cfg.multiplier,
            max_attempts: cfg.max_attempts,
        };
        check_backoff(&mut p, "retry", &default);
        // Checked once here: code rows inherit the global multiplier.
        if !(cfg.multiplier.is_finite() && (1.0..=10.0).contains(&cfg.multiplier)) {
            p.push(format!(
                "retry.multiplier: {} is outside 1.0..=10.0",
                cfg.multiplier
            ));
        }
        if !(1000..=MAX_CONFIG_MS).contains(&cfg.max_age_ms) {
            p.push(format!(
                "retry.max_age_ms: {} is outside 1000..={MAX_CONFIG_MS}",
                cfg.max_age_ms
            ));
        }
        if !(1..=100_000_000).contains(&cfg.capacity) {
            p.push(format!(
                "retry.capacity: {} is outside 1..=100000000",
                cfg.capacity
            ));
        }
        for (name, _) in cfg.codes.iter() {
            if code_by_name(name).is_none() {
                p.push(format!(
                    "retry.codes.{name}: not an error code name (see PROTOCOL.md)"
                ));
            }
        }

        // Every code with a built-in or configured override gets a row; the rest use `default`.
        let mut rows: BTreeMap<ErrorCode, CodeOverride> = BTreeMap::new();
        for info in CATALOGUE {
            if let Some(o) = RetryPolicy::builtin_override(info.code) {
                rows.insert(info.code, o);
            }
        }
        for (name, o) in cfg.codes.iter() {
            let Some(code) = code_by_name(name) else { continue };
            let row = rows.entry(code).or_default();
            row.permanent |= o.permanent;
            row.base_delay_ms = o.base_delay_ms.or(row.base_delay_ms);
            row.max_delay_ms = o.max_delay_ms.or(row.max_delay_ms);
            row.min_delay_ms = o.min_delay_ms.or(row.min_delay_ms);
            row.max_attempts = o.max_attempts.or(row.max_attempts);
            let tunes = o.base_delay_ms.is_some()
                || o.max_delay_ms.is_some()
                || o.min_delay_ms.is_some()
                || o.max_attempts.is_some();
            if !code.retryable() && tunes {
                p.push(format!(
                    "retry.codes.{name}: {name} is permanent (never retried); only `permanent` may be set"
                ));
            }
        }
        let mut codes = Vec::with_capacity(rows.len());
        for (code, o) in rows {
            if o.permanent || !code.retryable() {
                codes.push((code, None));
                continue;
            }
            let b = Backoff {
                base_ms: o.base_delay_ms.unwrap_or(default.base_ms),
                cap_ms: o.max_delay_ms.unwrap_or(default.cap_ms),
                min_ms: o.min_delay_ms.unwrap_or(default.min_ms),
                multiplier: default.multiplier,
                max_attempts: o.max_attempts.unwrap_or(default.max_attempts),
            };
            check_backoff(&mut p, &format!("retry.codes.{}", code.name()), &b);
            codes.push((code, Some(b)));
        }
        if !p.is_empty() {
            return Err(RetryConfigError { problems: p });
        }
        Ok(RetryPolicy {
            default,
            max_age_ms: cfg.max_age_ms,
            capacity: cfg.capacity as usize,
            codes,
        })
    }

    /// The backoff applied after `code`, or `None` if `code` is never retried.
    ///
    /// Codes the catalogue does not know follow [`ErrorCode::retryable`] (only the 3xxx limits group).
    pub fn backoff(&self, code: ErrorCode) -> Option<&Backoff> {
        match self.codes.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => self.codes[i].1.as_ref(),
            Err(_) if code.retryable() => Some(&self.default),
            Err(_) => None,
        }
    }

    /// Most age after the first attempt, in ms.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms
    }

    /// The retry queue bound from the config.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// What to do after attempt number `attempt` (1 = the first send) failed with `code`.
    ///
    /// `first_attempt_at_ms` and `now_ms` are wall-clock unix ms (the durable
    /// schedule outlives the process). Checks, in order: permanent code →
    /// `Dead(Permanent)`; `attempt >= max_attempts` → `Dead(Exhausted)`; no
    /// time left before `first + max_age` for even the smallest delay →
    /// `Dead(TooOld)`. Otherwise the delay is drawn uniformly from
    /// `[min, min(window(attempt), time left)]` ("full jitter"), so a retry
    /// is never scheduled beyond the maximum age.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        code: ErrorCode,
        attempt: u32,
        first_attempt_at_ms: u64,
        now_ms: u64,
        rng: &mut R,
    ) -> Decision {
        let Some(b) = self.backoff(code) else {
            return Decision::Dead(DeadReason::Permanent);
        };
        if attempt >= b.max_attempts {
            return Decision::Dead(DeadReason::Exhausted);
        }
        let deadline = first_attempt_at_ms.saturating_add(self.max_age_ms);
        // A wall clock stepped back before `first` counts as age 0, not as an error.
        let left = deadline.saturating_sub(now_ms);
        let window = b.window_ms(attempt);
        let lo = b.min_ms.min(window);
        if left == 0 || lo > left {
            return Decision::Dead(DeadReason::TooOld);
        }
        let hi = window.min(left);
        let delay = rng.random_range(lo..=hi);
        Decision::RetryAt(now_ms.saturating_add(delay))
    }
}

fn code_by_name(name: &str) -> Option<ErrorCode> {
    CATALOGUE.iter().find(|c| c.name == name).map(|c| c.code)
}

fn check_backoff(p: &mut Vec<String>, at: &str, b: &Backoff) {
    if !(1..=MAX_CONFIG_MS).contains(&b.base_ms) {
        p.push(format!(
            "{at}.base_delay_ms: {} is outside 1..={MAX_CONFIG_MS}",
            b.base_ms
        ));
    }
    if b.cap_ms < b.base_ms || b.cap_ms > MAX_CONFIG_MS {
        p.push(format!(
            "{at}.max_delay_ms: {} is outside base_delay_ms ({})..={MAX_CONFIG_MS}",
            b.cap_ms, b.base_ms
        ));
    }
    if b.min_ms > b.cap_ms {
        p.push(format!(
            "{at}.min_delay_ms: {} exceeds max_delay_ms ({})",
            b.min_ms, b.cap_ms
        ));
    }
    if !(1..=10_000).contains(&b.max_attempts) {
        p.push(format!(
            "{at}.max_attempts: {} is outside 1..=10000",
            b.max_attempts
        ));
    }
}
