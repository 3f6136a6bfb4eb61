//! `[pacing]`: the account-safety rules of every device, and their per-workspace overrides.
//!
//! The defaults and the reasoning behind each are recorded in
//! `docs/design/0010-account-safety-pacing.md`; the doc comment of each field
//! repeats the default, the accepted range and the short why.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limiter::Quota;

/// Declares [`PacingConfig`] and [`PacingOverride`] from one field list, so an
/// override can never miss a field the section has.
macro_rules! pacing_fields {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, )*) => {
        /// The `[pacing]` section: how fast, how much and to whom one device (one linked
        /// number) may send. Applies to every device of every workspace unless the workspace
        /// overrides fields in its own `[workspaces.pacing]` table.
        ///
        /// A rule whose documented "off" value is set (usually 0) is not applied. All pacing is
        /// off when `limits.device_rate_per_second` is 0 (the load-test switch).
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct PacingConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for PacingConfig {
            fn default() -> Self {
                PacingConfig { $( $name: $default, )* }
            }
        }

        /// A workspace's `[workspaces.pacing]` table: any subset of the `[pacing]` fields;
        /// the fields it leaves out keep the node's `[pacing]` value.
        #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct PacingOverride {
            $(
                #[doc = concat!("Overrides `pacing.", stringify!($name), "`.")]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl PacingConfig {
            /// This section with the fields `o` sets replaced.
            pub fn with_override(&self, o: &PacingOverride) -> PacingConfig {
                PacingConfig { $( $name: o.$name.unwrap_or(self.$name), )* }
            }
        }
    };
}

pacing_fields! {
    /// Shortest gap between two sends of one device, ms. Default 2000; 0..=3 600 000.
    /// Never shorter than `1 / limits.device_rate_per_second`. WhatsApp answered 429
    /// rate-overlimit at ~3 msg/s per number; 2 s keeps a backlog ~6x below that.
    min_interval_ms: u64 = 2000,
    /// Extra random gap added to `min_interval_ms`, uniform in 0..=jitter, ms. Default 3000;
    /// 0..=3 600 000. Evenly spaced sends are a machine signature; users ask for random delays.
    jitter_ms: u64 = 3000,
    /// Per-device token bucket refill, messages per minute. Default 5; 0 = bucket off; 0..=6000.
    /// Users of other gateways call more than ~5 msg/min per number risky.
    bucket_per_minute: u32 = 5,
    /// Per-device token bucket capacity. Default 10; 1..=10 000. Lets a short exchange
    /// (a few replies in a row) go out at `min_interval_ms` pace before the refill rate rules.
    bucket_burst: u32 = 10,
    /// New contacts (recipients the device never exchanged a message with) per hour, as a
    /// token bucket refill. Default 10; 0 = off; 0..=100 000. Messaging strangers in bulk
    /// is what gets numbers reported and banned.
    first_contact_per_hour: u32 = 10,
    /// Capacity of the new-contact bucket. Default 3; 1..=100 000.
    first_contact_burst: u32 = 3,
    /// New contacts per UTC day. Default 50; 0 = off; 0..=1 000 000. A fifth of the 250
    /// new users a day Meta's official Business Platform grants a new sender.
    first_contact_per_day: u32 = 50,
    /// Messages per UTC day once warm-up is over. Default 1000; 0 = no daily cap and no
    /// warm-up; 0..=10 000 000.
    daily_cap: u32 = 1000,
    /// Daily cap on the day a device was linked (warm-up day 0). Default 20;
    /// 1..=`daily_cap`. A new number that sends hundreds of messages at once looks like spam.
    warmup_start: u32 = 20,
    /// Factor the warm-up cap grows by per full day since linking, until it reaches
    /// `daily_cap`. Default 1.5 (20, 30, 45, 67, … 1000 on day 10); 1.0..=10.0 (1.0 holds
    /// the cap at `warmup_start` forever).
    warmup_growth: f64 = 1.5,
    /// Pause of a device after its first upstream 429 (rate-overlimit), ms; doubled for each
    /// further 429 after a pause ended; a longer retry hint from upstream wins. Default 60 000;
    /// 0..=86 400 000 (0: only upstream's hint pauses).
    throttle_pause_ms: u64 = 60_000,
    /// Longest backoff pause after repeated 429s, ms. Default 3 600 000;
    /// `throttle_pause_ms`..=86 400 000.
    throttle_pause_max_ms: u64 = 3_600_000,
    /// A success this long after the end of the last pause resets the backoff, ms.
    /// Default 600 000; 0..=86 400 000.
    throttle_reset_ms: u64 = 600_000,
    /// Shortest "typing…" presence shown before a send, ms. Default 0; 0..=60 000.
    typing_min_ms: u64 = 0,
    /// Longest "typing…" presence, uniform in `typing_min_ms..=typing_max_ms`. Default 0 =
    /// no presence (one extra upstream stanza per message, and no public evidence it lowers
    /// ban risk); `typing_min_ms`..=60 000.
    typing_max_ms: u64 = 0,
    /// Recipients remembered per device as known (least recently used forgotten first; a
    /// forgotten one counts as a new contact again). Default 10 000 (~0.5 MB at most per
    /// device); 1..=1 000 000.
    contact_book_capacity: u32 = 10_000,
}

impl PacingConfig {
    /// Every rule this section breaks, each as `"{at}.{field}: …"`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        let mut range = |name: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                p.push(format!("{at}.{name}: {v} is outside {lo}..={hi}"));
            }
        };
        range("min_interval_ms", self.min_interval_ms, 0, 3_600_000);
        range("jitter_ms", self.jitter_ms, 0, 3_600_000);
        range("bucket_per_minute", self.bucket_per_minute.into(), 0, 6000);
        range("bucket_burst", self.bucket_burst.into(), 1, 10_000);
        range(
            "first_contact_per_hour",
            self.first_contact_per_hour.into(),
            0,
            100_000,
        );
        range("first_contact_burst", self.first_contact_burst.into(), 1, 100_000);
        range(
            "first_contact_per_day",
            self.first_contact_per_day.into(),
            0,
            1_000_000,
        );
        range("daily_cap", self.daily_cap.into(), 0, 10_000_000);
        if self.daily_cap > 0 {
            range("warmup_start", self.warmup_start.into(), 1, self.daily_cap.into());
        }
        range("throttle_pause_ms", self.throttle_pause_ms, 0, 86_400_000);
        range(
            "throttle_pause_max_ms",
            self.throttle_pause_max_ms,
            self.throttle_pause_ms,
            86_400_000,
        );
        range("throttle_reset_ms", self.throttle_reset_ms, 0, 86_400_000);
        range("typing_min_ms", self.typing_min_ms, 0, 60_000);
        range("typing_max_ms", self.typing_max_ms, self.typing_min_ms, 60_000);
        range(
            "contact_book_capacity",
            self.contact_book_capacity.into(),
            1,
            1_000_000,
        );
        // NaN fails both comparisons, so it is reported too.
        if !(1.0..=10.0).contains(&self.warmup_growth) {
            p.push(format!(
                "{at}.warmup_growth: {} is outside 1.0..=10.0",
                self.warmup_growth
            ));
        }
        p
    }
}

/// A pacing section that cannot be turned into a policy: a configuration mistake, so the
/// operator must fix the file; retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pacing configuration: {}", .problems.join("; "))]
pub struct PacingConfigError {
    /// Each problem, prefixed by the field's path under `pacing`.
    pub problems: Vec<String>,
}

/// The rules of [`PacingConfig`] in the units the pacer computes with.
///
/// Built once per workspace at start or reload and shared (`Arc`) by the pacers of its
/// devices. Default: none; built by [`PacingPolicy::new`] or [`PacingPolicy::off`].
#[derive(Debug, Clone, PartialEq)]
pub struct PacingPolicy {
    pub(super) enabled: bool,
    /// Minimum gap, ns (already raised to `1 / device_rate_per_second`).
    pub(super) min_interval: u64,
    /// Jitter upper bound, ns.
    pub(super) jitter: u64,
    pub(super) bucket: Option<Quota>,
    pub(super) first_contact_bucket: Option<Quota>,
    /// 0 = off.
    pub(super) first_contact_per_day: u32,
    /// 0 = off.
    pub(super) daily_cap: u32,
    pub(super) warmup_start: u32,
    pub(super) warmup_growth: f64,
    pub(super) throttle_pause: u64,
    pub(super) throttle_pause_max: u64,
    pub(super) throttle_reset: u64,
    /// Typing range, ns; `None` = no presence.
    pub(super) typing: Option<(u64, u64)>,
    pub(super) contact_book_capacity: usize,
}

const MS: u64 = 1_000_000;

impl PacingPolicy {
    /// The policy of `cfg` for devices whose `device_rate_per_second` is as given.
    ///
    /// `device_rate_per_second` is `limits.device_rate_per_second` (or the workspace's
    /// override): 0 turns pacing off ([`PacingPolicy::off`]); otherwise `1 / rate` is a floor
    /// under `min_interval_ms`, so that older setting keeps meaning "never faster than this".
    pub fn new(cfg: &PacingConfig, device_rate_per_second: u32) -> Result<PacingPolicy, PacingConfigError> {
        let problems = cfg.problems("pacing");
        if !problems.is_empty() {
            return Err(PacingConfigError { problems });
        }
        if device_rate_per_second == 0 {
            return Ok(PacingPolicy::off());
        }
        let rate_floor = 1_000_000_000u64.div_ceil(u64::from(device_rate_per_second));
        let bad = |field: &str, e: crate::limiter::QuotaError| PacingConfigError {
            problems: vec![format!("pacing.{field}: {e}")],
        };
        let bucket = match cfg.bucket_per_minute {
            0 => None,
            n => Some(
                Quota::new(n, Duration::from_secs(60), cfg.bucket_burst)
                    .map_err(|e| bad("bucket_per_minute", e))?,
            ),
        };
        let first_contact_bucket = match cfg.first_contact_per_hour {
            0 => None,
            n => Some(
                Quota::new(n, Duration::from_secs(3600), cfg.first_contact_burst)
                    .map_err(|e| bad("first_contact_per_hour", e))?,
            ),
        };
        Ok(PacingPolicy {
            enabled: true,
            min_interval: (cfg.min_interval_ms * MS).max(rate_floor),
            jitter: cfg.jitter_ms * MS,
            bucket,
            first_contact_bucket,
            first_contact_per_day: cfg.first_contact_per_day,
            daily_cap: cfg.daily_cap,
            warmup_start: cfg.warmup_start,
            warmup_growth: cfg.warmup_growth,
            throttle_pause: cfg.throttle_pause_ms * MS,
            throttle_pause_max: cfg.throttle_pause_max_ms * MS,
            throttle_reset: cfg.throttle_reset_ms * MS,
            typing: (cfg.typing_max_ms > 0).then_some((cfg.typing_min_ms * MS, cfg.typing_max_ms * MS)),
            contact_book_capacity: cfg.contact_book_capacity as usize,
        })
    }

    /// No pacing at all: every poll says go and nothing is recorded (load tests against the
    /// simulator, `limits.device_rate_per_second = 0`).
    pub fn off() -> PacingPolicy {
        PacingPolicy {
            enabled: false,
            min_interval: 0,
            jitter: 0,
            bucket: None,
            first_contact_bucket: None,
            first_contact_per_day: 0,
            daily_cap: 0,
            warmup_start: 0,
            warmup_growth: 1.0,
            throttle_pause: 0,
            throttle_pause_max: 0,
            throttle_reset: 0,
            typing: None,
            contact_book_capacity: 1,
        }
    }

    /// False for [`PacingPolicy::off`]: the session may then skip persisting contacts.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The shortest gap between two sends (after the `device_rate_per_second` floor).
    pub fn min_interval(&self) -> Duration {
        Duration::from_nanos(self.min_interval)
    }

    /// The largest random extra gap.
    pub fn jitter(&self) -> Duration {
        Duration::from_nanos(self.jitter)
    }

    /// The per-device bucket, if on.
    pub fn bucket(&self) -> Option<Quota> {
        self.bucket
    }

    /// The new-contact bucket, if on.
    pub fn first_contact_bucket(&self) -> Option<Quota> {
        self.first_contact_bucket
    }

    /// New contacts per UTC day, if capped.
    pub fn first_contact_per_day(&self) -> Option<u32> {
        (self.first_contact_per_day > 0).then_some(self.first_contact_per_day)
    }

    /// Capacity of the contact book a pacer under this policy keeps.
    pub fn contact_book_capacity(&self) -> usize {
        self.contact_book_capacity
    }

    /// The daily cap of a device `age_days` full days after it was linked; `None` = no cap.
    ///
    /// `min(daily_cap, floor(warmup_start · warmup_growth^age_days))`: non-decreasing in
    /// the age, reaching `daily_cap` and staying there (with growth 1.0, staying at
    /// `warmup_start`). `u64::MAX` stands for an unknown link time: the device is treated
    /// as warmed up and gets `daily_cap`.
    pub fn daily_cap_for_age(&self, age_days: u64) -> Option<u32> {
        if !self.enabled || self.daily_cap == 0 {
            return None;
        }
        if age_days == u64::MAX {
            return Some(self.daily_cap);
        }
        // Growth is at least 1.0 and the cap at most 10^7, so beyond 64 days (1.5^40 is
        // already 10^7) the power is either capped or, for growth 1.0, constant.
        let exp = i32::try_from(age_days.min(64)).unwrap_or(64);
        let grown = f64::from(self.warmup_start) * self.warmup_growth.powi(exp);
        let cap = if grown >= f64::from(self.daily_cap) {
            self.daily_cap
        } else {
            // In 1..daily_cap here, so the cast is exact after floor.
            grown.floor() as u32
        };
        Some(cap.max(1))
    }
}
