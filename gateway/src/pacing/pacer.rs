//! One device's pacer: every rule of a [`PacingPolicy`] applied to one linked number.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::config::PacingPolicy;
use super::contacts::{ContactBook, ContactKey};
use crate::limiter::{Nanos, Quota};

/// Milliseconds in a UTC day; daily counters roll over at multiples of it.
pub const DAY_MS: u64 = 86_400_000;

/// Longest upstream retry hint honoured; a larger (bogus) hint is cut to this.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(86_400);

/// Why a send must wait. A small closed set: usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaceReason {
    /// Upstream answered 429 rate-overlimit; the device is paused with backoff.
    Throttled,
    /// The device's daily cap (warm-up schedule or ceiling) is used up until the next UTC day.
    DailyCap,
    /// The recipient is a new contact and today's new-contact cap is used up.
    FirstContactDaily,
    /// The recipient is a new contact and the new-contact bucket is empty.
    FirstContactRate,
    /// Too soon after the previous send (minimum interval plus its jitter).
    MinInterval,
    /// The device's token bucket is empty.
    Bucket,
}

impl PaceReason {
    /// Every reason, in the order ties are broken (first wins).
    pub const ALL: [PaceReason; 6] = [
        PaceReason::Throttled,
        PaceReason::DailyCap,
        PaceReason::FirstContactDaily,
        PaceReason::FirstContactRate,
        PaceReason::MinInterval,
        PaceReason::Bucket,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PaceReason::Throttled => "throttled",
            PaceReason::DailyCap => "daily_cap",
            PaceReason::FirstContactDaily => "first_contact_daily",
            PaceReason::FirstContactRate => "first_contact_rate",
            PaceReason::MinInterval => "min_interval",
            PaceReason::Bucket => "bucket",
        }
    }

    /// True when waiting is measured in hours (a day rollover or a backoff): the session
    /// should not hold the device's queue head on it if other messages could go (for
    /// first-contact reasons, messages to known contacts can).
    pub fn is_long(self) -> bool {
        matches!(
            self,
            PaceReason::Throttled | PaceReason::DailyCap | PaceReason::FirstContactDaily
        )
    }
}

/// The pacer's answer for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Send it; the send has been recorded as happening at `now + typing`. With
    /// `typing: Some(d)`, show "typing…" to the recipient now and start the send after `d`,
    /// not earlier.
    Go {
        /// Presence to show before the send, if the policy asks for it.
        typing: Option<Duration>,
    },
    /// Not before `until` (same clock as `now`); nothing was recorded.
    Wait {
        /// Earliest instant at which this rule allows the send. Other rules may still say
        /// wait then; poll again.
        until: Nanos,
        /// The rule that ends last.
        reason: PaceReason,
    },
}

/// A device's counters for one UTC day: persist them with the contact book so a restart
/// does not hand out a fresh daily cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DailyUsage {
    /// UTC day number (`wall_ms / DAY_MS`).
    pub day: u64,
    /// Messages sent that day.
    pub sent: u32,
    /// New contacts messaged that day.
    pub first_contacts: u32,
}

/// A single-threaded GCRA bucket (the pacer is owned by one task, so no atomics): the same
/// algorithm as [`crate::limiter::Cell`], with a read-only wait query beside the commit.
#[derive(Debug, Clone)]
struct Bucket {
    tat: u64,
    interval: u64,
    window: u64,
}

impl Bucket {
    fn new(q: Quota) -> Bucket {
        let interval = u64::try_from(q.interval().as_nanos()).unwrap_or(u64::MAX);
        let window = u64::try_from(q.window().as_nanos()).unwrap_or(u64::MAX);
        Bucket {
            tat: 0,
            interval,
            window,
        }
    }

    /// Earliest instant ≥ `now` at which one token is available.
    fn ready_at(&self, now: u64) -> u64 {
        // Admitted when max(tat, now) + interval <= now + window.
        let need = self.tat.saturating_add(self.interval).saturating_sub(self.window);
        need.max(now)
    }

    /// Takes one token at `at` (which must be ≥ `ready_at`).
    fn take(&mut self, at: u64) {
        self.tat = self.tat.max(at).saturating_add(self.interval);
    }
}

/// Account-safety pacing of one device (one linked number).
///
/// Owned by the device's session task (`&mut self`, no locks). Sans-IO: every method takes
/// the time it is called at — `now` on the monotonic clock the session's timers use, and
/// `wall_ms` (Unix ms) where calendar days matter — so tests drive it on a simulated clock.
///
/// Protocol: call [`DevicePacer::poll`] when the session could dispatch a message; on
/// [`Pace::Go`] the send is *already recorded* (poll and commit are one step, so a burst of
/// polls cannot overtake the rules); dispatch it (after the typing delay, if any). On
/// [`Pace::Wait`] nothing is recorded; poll again at or after `until`. Report upstream
/// outcomes with [`DevicePacer::on_throttled`] / [`DevicePacer::on_success`], and inbound
/// messages with [`DevicePacer::on_inbound`]. A message that was recorded but never left
/// (disconnect) is not given back: counting it is the conservative error.
#[derive(Debug, Clone)]
pub struct DevicePacer {
    policy: Arc<PacingPolicy>,
    linked_at_ms: Option<u64>,
    /// Earliest next send by the minimum interval and its jitter (drawn at the last send:
    /// drawing it per poll would let frequent polling pick the shortest of many draws).
    next_at: u64,
    bucket: Option<Bucket>,
    first_contact_bucket: Option<Bucket>,
    usage: DailyUsage,
    paused_until: u64,
    /// Consecutive throttle episodes; the pause doubles with each.
    throttle_level: u32,
    contacts: ContactBook,
}

impl DevicePacer {
    /// A pacer for a device linked at `linked_at_ms` (Unix ms; `None` when unknown, e.g.
    /// linked before the gateway recorded link times: treated as warmed up), knowing
    /// `contacts` (restored from the store, or `ContactBook::new(policy.contact_book_capacity())`).
    pub fn new(policy: Arc<PacingPolicy>, linked_at_ms: Option<u64>, contacts: ContactBook) -> DevicePacer {
        DevicePacer {
            bucket: policy.bucket.map(Bucket::new),
            first_contact_bucket: policy.first_contact_bucket.map(Bucket::new),
            policy,
            linked_at_ms,
            next_at: 0,
            usage: DailyUsage::default(),
            paused_until: 0,
            throttle_level: 0,
            contacts,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<PacingPolicy> {
        &self.policy
    }

    /// Swaps the policy (a reload), keeping the history: contacts, today's counters, the
    /// backoff, the next allowed instant. A bucket whose quota is unchanged keeps its level;
    /// a changed one restarts full (reloads are rare, and the interval and daily caps still
    /// hold across it).
    pub fn set_policy(&mut self, policy: Arc<PacingPolicy>) {
        if policy.bucket != self.policy.bucket {
            self.bucket = policy.bucket.map(Bucket::new);
        }
        if policy.first_contact_bucket != self.policy.first_contact_bucket {
            self.first_contact_bucket = policy.first_contact_bucket.map(Bucket::new);
        }
        self.policy = policy;
    }

    /// Known recipients, to persist with [`ContactBook::to_bytes`].
    pub fn contacts(&self) -> &ContactBook {
        &self.contacts
    }

    /// True if a message to `recipient` would count as a first contact.
    pub fn is_first_contact(&self, recipient: ContactKey) -> bool {
        !self.contacts.contains(recipient)
    }

    /// Today's counters, to persist.
    pub fn usage(&self) -> DailyUsage {
        self.usage
    }

    /// Restores counters persisted with [`DevicePacer::usage`] (a counter of another day is
    /// simply rolled over at the next poll).
    pub fn restore_usage(&mut self, usage: DailyUsage) {
        self.usage = usage;
    }

    /// Until when upstream throttling pauses the device (`Nanos::ZERO` if never).
    pub fn paused_until(&self) -> Nanos {
        Nanos(self.paused_until)
    }

    /// Throttle episodes since the last reset (0 = no backoff in force).
    pub fn throttle_level(&self) -> u32 {
        self.throttle_level
    }

    /// Whole days since linking at `wall_ms` (unknown link time: `u64::MAX`).
    pub fn age_days(&self, wall_ms: u64) -> u64 {
        match self.linked_at_ms {
            None => u64::MAX,
            Some(l) => wall_ms.saturating_sub(l) / DAY_MS,
        }
    }

    fn roll_day(&mut self, wall_ms: u64) {
        let day = wall_ms / DAY_MS;
        // A wall clock stepping back keeps today's counters (never a fresh cap from it).
        if day > self.usage.day {
            self.usage = DailyUsage {
                day,
                sent: 0,
                first_contacts: 0,
            };
        }
    }

    /// Decides whether a message to `recipient` may go at `now` (monotonic) / `wall_ms`
    /// (Unix ms), and records it if so. `rng` draws the jitter of the next gap and the typing
    /// time. See the type's documentation for the protocol.
    pub fn poll<R: Rng + ?Sized>(
        &mut self,
        now: Nanos,
        wall_ms: u64,
        recipient: ContactKey,
        rng: &mut R,
    ) -> Pace {
        let p = self.policy.clone();
        if !p.enabled {
            return Pace::Go { typing: None };
        }
        self.roll_day(wall_ms);
        let now_ns = now.0;
        let first = !self.contacts.contains(recipient);
        let mut wait: Option<(u64, PaceReason)> = None;
        let mut block = |until: u64, reason: PaceReason| {
            // Keep the rule that ends last; on a tie, the earlier one in `PaceReason::ALL`.
            if until > now_ns && wait.is_none_or(|(u, _)| until > u) {
                wait = Some((until, reason));
            }
        };
        block(self.paused_until, PaceReason::Throttled);
        // Instants on the monotonic clock at which the wall clock reaches a boundary.
        let wall_to_mono =
            |at_ms: u64| now_ns.saturating_add(at_ms.saturating_sub(wall_ms).saturating_mul(1_000_000));
        let next_day_ms = (self.usage.day + 1).saturating_mul(DAY_MS);
        let age = self.age_days(wall_ms);
        if let Some(cap) = p.daily_cap_for_age(age)
            && self.usage.sent >= cap
        {
            // Warm-up may raise the cap at the next link anniversary, before midnight.
            let mut until_ms = next_day_ms;
            if let Some(l) = self.linked_at_ms
                && p.daily_cap_for_age(age.saturating_add(1))
                    .is_some_and(|c| c > self.usage.sent)
            {
                until_ms = until_ms.min(l.saturating_add(age.saturating_add(1).saturating_mul(DAY_MS)));
            }
            block(wall_to_mono(until_ms), PaceReason::DailyCap);
        }
        if first {
            if p.first_contact_per_day > 0 && self.usage.first_contacts >= p.first_contact_per_day {
                block(wall_to_mono(next_day_ms), PaceReason::FirstContactDaily);
            }
            if let Some(b) = &self.first_contact_bucket {
                block(b.ready_at(now_ns), PaceReason::FirstContactRate);
            }
        }
        block(self.next_at, PaceReason::MinInterval);
        if let Some(b) = &self.bucket {
            block(b.ready_at(now_ns), PaceReason::Bucket);
        }
        if let Some((until, reason)) = wait {
            return Pace::Wait {
                until: Nanos(until),
                reason,
            };
        }
        let typing = p.typing.map(|(lo, hi)| rng.random_range(lo..=hi));
        let at = now_ns.saturating_add(typing.unwrap_or(0));
        let jitter = if p.jitter > 0 {
            rng.random_range(0..=p.jitter)
        } else {
            0
        };
        self.next_at = at.saturating_add(p.min_interval).saturating_add(jitter);
        if let Some(b) = &mut self.bucket {
            b.take(at);
        }
        if first {
            if let Some(b) = &mut self.first_contact_bucket {
                b.take(at);
            }
            self.usage.first_contacts = self.usage.first_contacts.saturating_add(1);
        }
        self.usage.sent = self.usage.sent.saturating_add(1);
        self.contacts.touch(recipient);
        Pace::Go {
            typing: typing.map(Duration::from_nanos),
        }
    }

    /// A message from `sender` arrived: the sender becomes a known contact (replying to
    /// someone who wrote first is not a first contact).
    pub fn on_inbound(&mut self, sender: ContactKey) {
        if self.policy.enabled {
            self.contacts.touch(sender);
        }
    }

    /// Upstream answered 429 rate-overlimit at `now`, with `retry_hint` if it gave one.
    /// Pauses the device and returns until when.
    ///
    /// The first 429 after a pause ended (or ever) starts a new episode and doubles the pause
    /// (`throttle_pause_ms`, ×2 per episode, at most `throttle_pause_max_ms`); 429s arriving
    /// during a pause answer sends made before it and only extend it to their hint. The
    /// hint is a floor (capped at [`MAX_RETRY_HINT`]).
    pub fn on_throttled(&mut self, now: Nanos, retry_hint: Option<Duration>) -> Nanos {
        let p = &self.policy;
        if !p.enabled {
            return now;
        }
        let now_ns = now.0;
        let mut pause = 0;
        if now_ns >= self.paused_until {
            self.throttle_level = self.throttle_level.saturating_add(1).min(63);
            let shift = self.throttle_level - 1;
            pause = p
                .throttle_pause
                .checked_shl(shift)
                .filter(|v| v >> shift == p.throttle_pause)
                .unwrap_or(u64::MAX)
                .min(p.throttle_pause_max);
        }
        let hint = retry_hint.map_or(0, |h| Nanos::from_duration(h.min(MAX_RETRY_HINT)).0);
        let until = now_ns.saturating_add(pause.max(hint));
        self.paused_until = self.paused_until.max(until);
        Nanos(self.paused_until)
    }

    /// Upstream accepted a send at `now`: after `throttle_reset_ms` of quiet since the last
    /// pause ended, the backoff starts over.
    pub fn on_success(&mut self, now: Nanos) {
        if self.throttle_level > 0 && now.0 >= self.paused_until.saturating_add(self.policy.throttle_reset) {
            self.throttle_level = 0;
        }
    }
}
