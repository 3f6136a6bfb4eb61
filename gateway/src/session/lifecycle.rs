//! The lifecycle of one device's WhatsApp session: a sans-IO state machine.
//!
//! ```text
//!             link                 paired              connected
//! unlinked ─────────▶ linking ────────────▶ connecting ───────────▶ connected
//!    ▲   ▲   (timeout)   │                   ▲   │  (timeout/failure)   │
//!    │   └───────────────┘                   │   ▼                      │ dropped
//!    │                                   disconnected ◀─────────────────┘
//!    │ unlink (from any state)        (backoff elapsed → connecting)
//!    │
//!  logged_out (upstream ended the link: relink)   banned (temporary: reconnects at its end)
//!  disabled (operator; enable → connecting or unlinked)
//! ```
//!
//! The machine never does I/O and never reads a clock: every input carries the time
//! ([`At`]), and it answers with [`Action`]s for the session task to carry out (connect
//! through the node-wide gate, start a link, publish a state event, persist, fail the queue).
//! So every path, including hours of backoff, is tested on a simulated clock in microseconds.
//!
//! Reconnects back off along a Fibonacci sequence (1, 1, 2, 3, 5, … × `reconnect_initial`)
//! capped at `reconnect_max`, each delay jittered by ±`reconnect_jitter`, the schedule WhatsApp
//! Web itself follows (see `shared/README.md`); the counter is forgotten once a connection has
//! stayed up for `stable_after`, so one drop after a day of uptime retries in a second, while a
//! flapping device slows down.

use std::time::Duration;

use rand::Rng;
use waping_protocol::{DeviceState, ErrorCode};

use crate::limiter::Nanos;
use crate::upstream::{LinkMethod, SessionEvent, UpstreamError};

/// The time of an input: monotonic for timers, wall clock for what is persisted or shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Monotonic instant (timers compare these).
    pub now: Nanos,
    /// Unix ms (persisted deadlines, such as the end of a temporary ban, are wall-clock).
    pub wall_ms: u64,
}

impl At {
    fn plus(self, d: Duration) -> Nanos {
        self.now.saturating_add(d)
    }

    /// The monotonic instant of a future wall-clock time (the past maps to now).
    fn mono_of_wall(self, wall_ms: u64) -> Nanos {
        self.plus(Duration::from_millis(wall_ms.saturating_sub(self.wall_ms)))
    }
}

/// Timing of the lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleConfig {
    /// First reconnect delay and the Fibonacci unit. Default 1 s.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay. Default 900 s (WhatsApp Web's cap).
    pub reconnect_max: Duration,
    /// Each delay is scaled by a uniform factor in `1 ± jitter`. Default 0.1; 0.0..=0.5.
    pub reconnect_jitter: f64,
    /// A connection up this long resets the backoff. Default 60 s.
    pub stable_after: Duration,
    /// A link not completed within this ends as `unlinked` ("link timed out"). Default 180 s.
    pub link_timeout: Duration,
    /// A connect attempt (after the gate let it through) not connected within this counts as a
    /// failure and backs off. Default 30 s.
    pub connect_timeout: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(900),
            reconnect_jitter: 0.1,
            stable_after: Duration::from_secs(60),
            link_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Where the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No WhatsApp account linked.
    Unlinked,
    /// A link is under way; it ends at `deadline`.
    Linking {
        /// When the link times out.
        deadline: Nanos,
    },
    /// Waiting for the connect gate (`deadline: None`) or for the upstream to say connected.
    Connecting {
        /// When the attempt counts as failed.
        deadline: Option<Nanos>,
    },
    /// Connected and able to send.
    Connected {
        /// Since when (resets the backoff after `stable_after`).
        since: Nanos,
    },
    /// Waiting out a backoff before the next connect.
    Disconnected {
        /// When to try again.
        retry_at: Nanos,
    },
    /// WhatsApp ended the link; only a new link helps.
    LoggedOut,
    /// WhatsApp banned the account.
    Banned {
        /// End of a temporary ban (monotonic), `None` if permanent.
        until: Option<Nanos>,
        /// The same end, unix ms, for persistence.
        until_ms: Option<u64>,
    },
    /// An operator disabled the device.
    Disabled,
}

impl Phase {
    /// The state clients see.
    pub fn public(self) -> DeviceState {
        match self {
            Phase::Unlinked => DeviceState::Unlinked,
            Phase::Linking { .. } => DeviceState::Linking,
            Phase::Connecting { .. } | Phase::Disconnected { .. } => DeviceState::Disconnected,
            Phase::Connected { .. } => DeviceState::Connected,
            Phase::LoggedOut => DeviceState::LoggedOut,
            Phase::Banned { .. } => DeviceState::Banned,
            Phase::Disabled => DeviceState::Disabled,
        }
    }

    /// Short name for logs and the transition metric (bounded: eight values).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unlinked => "unlinked",
            Phase::Linking { .. } => "linking",
            Phase::Connecting { .. } => "connecting",
            Phase::Connected { .. } => "connected",
            Phase::Disconnected { .. } => "disconnected",
            Phase::LoggedOut => "logged_out",
            Phase::Banned { .. } => "banned",
            Phase::Disabled => "disabled",
        }
    }
}

/// What survives a restart (the session store keeps it per device).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Persisted {
    /// Never linked or unlinked.
    Unlinked,
    /// Linked; reconnect on start.
    Linked,
    /// Logged out by WhatsApp.
    LoggedOut,
    /// Banned; `until_ms` ends a temporary ban.
    Banned {
        /// End of the ban, unix ms.
        until_ms: Option<u64>,
    },
    /// Disabled by an operator; `linked` says where `enable` leads.
    Disabled {
        /// Whether credentials are kept.
        linked: bool,
    },
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Link a WhatsApp account.
    Link(LinkMethod),
    /// Log out at WhatsApp and forget the credentials.
    Unlink,
    /// Stop the session; queued messages fail with DEVICE_DISABLED.
    Disable,
    /// Undo `Disable`.
    Enable,
}

/// Why a command was refused (the state is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `link` on a device that is linked.
    #[error("device is already linked (state {0}); unlink it first")]
    AlreadyLinked(&'static str),
    /// Any command but `enable` on a disabled device.
    #[error("device is disabled; enable it first")]
    Disabled,
}

impl CommandError {
    /// The catalogue code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::AlreadyLinked(_) => ErrorCode::INVALID_FIELD,
            CommandError::Disabled => ErrorCode::DEVICE_DISABLED,
        }
    }
}

/// What the session task must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect with stored credentials, after the node-wide connect gate lets it through;
    /// then report [`Input::ConnectAttempted`].
    Connect,
    /// Close the connection (credentials kept).
    Disconnect,
    /// Start linking.
    Link(LinkMethod),
    /// Log out upstream and forget credentials.
    Logout,
    /// Show a link code to the workspace.
    PublishCode(SessionEvent),
    /// The public state changed.
    Publish {
        /// New state.
        state: DeviceState,
        /// Why.
        detail: String,
    },
    /// Write [`Lifecycle::persisted`] to the store.
    Persist,
    /// Security-relevant: write an audit record (the audit issue ships them).
    Audit(AuditKind),
    /// Fail every queued message with this code (the device cannot send for a long time).
    FailQueued(ErrorCode),
}

/// Lifecycle events the audit trail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A WhatsApp account was linked.
    Linked,
    /// An operator unlinked the device.
    Unlinked,
    /// WhatsApp logged the device out.
    LoggedOut,
    /// WhatsApp banned the account.
    Banned,
    /// An operator disabled the device.
    Disabled,
    /// An operator enabled the device.
    Enabled,
}

impl AuditKind {
    /// Stable action name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Linked => "device.linked",
            AuditKind::Unlinked => "device.unlinked",
            AuditKind::LoggedOut => "device.logged_out",
            AuditKind::Banned => "device.banned",
            AuditKind::Disabled => "device.disabled",
            AuditKind::Enabled => "device.enabled",
        }
    }
}

/// An input to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Something happened upstream.
    Upstream(SessionEvent),
    /// The gate let the connect through and the upstream was asked.
    ConnectAttempted,
    /// The upstream refused to even try.
    ConnectFailed(UpstreamError),
    /// The upstream could not start a link.
    LinkFailed(String),
    /// Time passed (the task calls this when [`Lifecycle::next_wake`] is reached).
    Tick,
}

/// One device's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    cfg: LifecycleConfig,
    phase: Phase,
    /// Credentials exist (a link succeeded and nothing ended it).
    linked: bool,
    /// Consecutive failed connects since the last stable connection.
    failures: u32,
}

impl Lifecycle {
    /// A machine resumed from what was persisted; returns the actions to start with.
    pub fn restore(cfg: LifecycleConfig, p: &Persisted, at: At) -> (Lifecycle, Vec<Action>) {
        let mut m = Lifecycle {
            cfg,
            phase: Phase::Unlinked,
            linked: false,
            failures: 0,
        };
        let mut out = Vec::new();
        match *p {
            Persisted::Unlinked => {}
            Persisted::Linked => {
                m.linked = true;
                m.phase = Phase::Connecting { deadline: None };
                out.push(Action::Connect);
            }
            Persisted::LoggedOut => m.phase = Phase::LoggedOut,
            Persisted::Banned { until_ms } => {
                m.linked = true;
                m.phase = Phase::Banned {
                    until: until_ms.map(|ms| at.mono_of_wall(ms)),
                    until_ms,
                };
            }
            Persisted::Disabled { linked } => {
                m.linked = linked;
                m.phase = Phase::Disabled;
            }
        }
        // The initial state is published so subscribers and metrics start from the truth.
        out.push(Action::Publish {
            state: m.phase.public(),
            detail: "restored".into(),
        });
        if matches!(m.phase, Phase::Banned { .. }) {
            // A ban may already be over.
            out.extend(m.handle(
                at,
                Input::Tick,
                &mut <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(0),
            ));
        }
        (m, out)
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether credentials exist.
    pub fn linked(&self) -> bool {
        self.linked
    }

    /// Consecutive failed connects (for metrics and tests).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether queued messages may go upstream now.
    pub fn can_send(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// The code a new message for this device is refused with, if the device cannot send for
    /// a long time (messages for a device that is merely reconnecting wait in its queue).
    pub fn refusal(&self) -> Option<ErrorCode> {
        match self.phase {
            Phase::Unlinked | Phase::Linking { .. } => Some(ErrorCode::DEVICE_NOT_LINKED),
            Phase::LoggedOut => Some(ErrorCode::DEVICE_LOGGED_OUT),
            Phase::Banned { .. } => Some(ErrorCode::DEVICE_BANNED),
            Phase::Disabled => Some(ErrorCode::DEVICE_DISABLED),
            Phase::Connecting { .. } | Phase::Connected { .. } | Phase::Disconnected { .. } => None,
        }
    }

    /// What to persist.
    pub fn persisted(&self) -> Persisted {
        match self.phase {
            Phase::Disabled => Persisted::Disabled { linked: self.linked },
            Phase::LoggedOut => Persisted::LoggedOut,
            Phase::Banned { until_ms, .. } => Persisted::Banned { until_ms },
            _ if self.linked => Persisted::Linked,
            _ => Persisted::Unlinked,
        }
    }

    /// When the task must call [`Input::Tick`] next, if any timer runs.
    pub fn next_wake(&self) -> Option<Nanos> {
        match self.phase {
            Phase::Linking { deadline } => Some(deadline),
            Phase::Connecting { deadline } => deadline,
            Phase::Disconnected { retry_at } => Some(retry_at),
            Phase::Banned { until, .. } => until,
            Phase::Unlinked | Phase::Connected { .. } | Phase::LoggedOut | Phase::Disabled => None,
        }
    }

    /// Applies an operator command.
    pub fn command(&mut self, at: At, cmd: Command) -> Result<Vec<Action>, CommandError> {
        let mut out = Vec::new();
        match cmd {
            Command::Link(method) => match self.phase {
                Phase::Disabled => return Err(CommandError::Disabled),
                Phase::Connecting { .. } | Phase::Connected { .. } | Phase::Disconnected { .. } => {
                    return Err(CommandError::AlreadyLinked(self.phase.as_str()));
                }
                Phase::Unlinked | Phase::Linking { .. } | Phase::LoggedOut | Phase::Banned { .. } => {
                    if self.linked {
                        // A banned account's credentials are useless for a new link.
                        out.push(Action::Logout);
                        self.linked = false;
                    }
                    out.push(Action::Link(method));
                    self.go(
                        Phase::Linking {
                            deadline: at.plus(self.cfg.link_timeout),
                        },
                        "link started",
                        &mut out,
                    );
                }
            },
            Command::Unlink => {
                if matches!(self.phase, Phase::Disabled) {
                    return Err(CommandError::Disabled);
                }
                if self.linked || !matches!(self.phase, Phase::Unlinked) {
                    out.push(Action::Logout);
                    self.linked = false;
                    self.failures = 0;
                    out.push(Action::FailQueued(ErrorCode::DEVICE_NOT_LINKED));
                    out.push(Action::Audit(AuditKind::Unlinked));
                    self.go(Phase::Unlinked, "unlinked by operator", &mut out);
                    out.push(Action::Persist);
                }
            }
            Command::Disable => {
                if !matches!(self.phase, Phase::Disabled) {
                    if matches!(self.phase, Phase::Linking { .. }) {
                        // A half-done link leaves nothing worth keeping.
                        out.push(Action::Logout);
                    } else {
                        out.push(Action::Disconnect);
                    }
                    out.push(Action::FailQueued(ErrorCode::DEVICE_DISABLED));
                    out.push(Action::Audit(AuditKind::Disabled));
                    self.go(Phase::Disabled, "disabled by operator", &mut out);
                    out.push(Action::Persist);
                }
            }
            Command::Enable => {
                if matches!(self.phase, Phase::Disabled) {
                    self.failures = 0;
                    out.push(Action::Audit(AuditKind::Enabled));
                    if self.linked {
                        out.push(Action::Connect);
                        self.go(
                            Phase::Connecting { deadline: None },
                            "enabled by operator",
                            &mut out,
                        );
                    } else {
                        self.go(Phase::Unlinked, "enabled by operator", &mut out);
                    }
                    out.push(Action::Persist);
                }
            }
        }
        Ok(out)
    }

    /// Applies an upstream event, a connect outcome or the passing of time.
    pub fn handle(&mut self, at: At, input: Input, rng: &mut impl Rng) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick => self.tick(at, rng, &mut out),
            Input::ConnectAttempted => {
                if let Phase::Connecting { deadline: None } = self.phase {
                    self.phase = Phase::Connecting {
                        deadline: Some(at.plus(self.cfg.connect_timeout)),
                    };
                }
            }
            Input::ConnectFailed(e) => {
                if matches!(self.phase, Phase::Connecting { .. }) {
                    match e {
                        UpstreamError::LoggedOut => self.logged_out(e.to_string(), &mut out),
                        UpstreamError::NotLinked => {
                            self.linked = false;
                            self.failures = 0;
                            out.push(Action::FailQueued(ErrorCode::DEVICE_NOT_LINKED));
                            self.go(Phase::Unlinked, "no credentials: link the device first", &mut out);
                            out.push(Action::Persist);
                        }
                        UpstreamError::Banned => {
                            // Refusing a connect does not say whether the ban is temporary:
                            // look again after the longest backoff rather than give up.
                            let again = at
                                .wall_ms
                                .saturating_add(self.cfg.reconnect_max.as_millis() as u64);
                            self.banned(
                                at,
                                Some(again),
                                "connect refused: account banned".into(),
                                &mut out,
                            )
                        }
                        other => self.backoff(at, None, &format!("connect failed: {other}"), rng, &mut out),
                    }
                }
            }
            Input::Upstream(ev) => self.upstream(at, ev, rng, &mut out),
            Input::LinkFailed(why) => {
                if matches!(self.phase, Phase::Linking { .. }) {
                    self.go(Phase::Unlinked, &format!("link failed: {why}"), &mut out);
                }
            }
        }
        out
    }

    fn upstream(&mut self, at: At, ev: SessionEvent, rng: &mut impl Rng, out: &mut Vec<Action>) {
        // Events that do not fit the phase are stale (a late event from an older connection)
        // and are ignored: a disabled or unlinked device must stay so whatever arrives late.
        match ev {
            SessionEvent::Qr { .. } | SessionEvent::PairingCode { .. } => {
                if matches!(self.phase, Phase::Linking { .. }) {
                    out.push(Action::PublishCode(ev));
                }
            }
            SessionEvent::Paired { account } => {
                if matches!(self.phase, Phase::Linking { .. }) {
                    self.linked = true;
                    self.failures = 0;
                    out.push(Action::Audit(AuditKind::Linked));
                    out.push(Action::Persist);
                    // The upstream connects by itself after pairing; give it the connect timeout.
                    self.go(
                        Phase::Connecting {
                            deadline: Some(at.plus(self.cfg.connect_timeout)),
                        },
                        &format!("linked to {}", mask(&account)),
                        out,
                    );
                }
            }
            SessionEvent::Connected => {
                if matches!(self.phase, Phase::Connecting { .. } | Phase::Disconnected { .. })
                    || (matches!(self.phase, Phase::Linking { .. }) && self.linked)
                {
                    self.go(Phase::Connected { since: at.now }, "connected", out);
                }
            }
            SessionEvent::Disconnected { reason } => {
                if matches!(self.phase, Phase::Connected { .. } | Phase::Connecting { .. }) {
                    self.backoff(at, None, &reason, rng, out);
                }
            }
            SessionEvent::StreamReplaced => {
                if matches!(self.phase, Phase::Connected { .. } | Phase::Connecting { .. }) {
                    let max = self.cfg.reconnect_max;
                    self.backoff(
                        at,
                        Some(max),
                        "stream replaced: another client took over this session",
                        rng,
                        out,
                    );
                }
            }
            SessionEvent::LoggedOut { reason } => {
                if !matches!(self.phase, Phase::Unlinked | Phase::LoggedOut | Phase::Disabled) {
                    self.logged_out(reason, out);
                }
            }
            SessionEvent::Banned { until_ms, reason } => {
                if !matches!(self.phase, Phase::Unlinked | Phase::Disabled) {
                    self.banned(at, until_ms, reason, out);
                }
            }
        }
    }

    fn tick(&mut self, at: At, rng: &mut impl Rng, out: &mut Vec<Action>) {
        let Some(wake) = self.next_wake() else { return };
        if at.now < wake {
            return;
        }
        match self.phase {
            Phase::Linking { .. } => {
                out.push(Action::Logout);
                let secs = self.cfg.link_timeout.as_secs();
                self.go(
                    Phase::Unlinked,
                    &format!("link timed out after {secs} s without the phone confirming"),
                    out,
                );
            }
            Phase::Connecting { .. } => {
                out.push(Action::Disconnect);
                let secs = self.cfg.connect_timeout.as_secs();
                self.backoff(at, None, &format!("not connected within {secs} s"), rng, out);
            }
            Phase::Disconnected { .. } => {
                out.push(Action::Connect);
                self.phase = Phase::Connecting { deadline: None };
            }
            Phase::Banned { .. } => {
                out.push(Action::Connect);
                self.go(Phase::Connecting { deadline: None }, "temporary ban ended", out);
                out.push(Action::Persist);
            }
            Phase::Unlinked | Phase::Connected { .. } | Phase::LoggedOut | Phase::Disabled => {}
        }
    }

    /// Schedules the next connect; `fixed` overrides the Fibonacci delay.
    fn backoff(
        &mut self,
        at: At,
        fixed: Option<Duration>,
        why: &str,
        rng: &mut impl Rng,
        out: &mut Vec<Action>,
    ) {
        if let Phase::Connected { since } = self.phase
            && at.now.0.saturating_sub(since.0) >= Nanos::from_duration(self.cfg.stable_after).0
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = fixed.unwrap_or_else(|| self.delay(self.failures, rng));
        self.go(
            Phase::Disconnected {
                retry_at: at.plus(delay),
            },
            &format!("{why}; reconnecting in {} ms", delay.as_millis()),
            out,
        );
    }

    /// The jittered delay before connect attempt number `failures + 1`.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let base = fib(failures).saturating_mul(self.cfg.reconnect_initial.as_millis() as u64);
        let capped = base.min(self.cfg.reconnect_max.as_millis() as u64) as f64;
        let j = self.cfg.reconnect_jitter.clamp(0.0, 0.5);
        let factor = if j > 0.0 {
            rng.random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        Duration::from_millis((capped * factor).round() as u64)
    }

    fn logged_out(&mut self, reason: String, out: &mut Vec<Action>) {
        self.linked = false;
        self.failures = 0;
        out.push(Action::Logout);
        out.push(Action::FailQueued(ErrorCode::DEVICE_LOGGED_OUT));
        out.push(Action::Audit(AuditKind::LoggedOut));
        self.go(Phase::LoggedOut, &format!("logged out: {reason}"), out);
        out.push(Action::Persist);
    }

    fn banned(&mut self, at: At, until_ms: Option<u64>, reason: String, out: &mut Vec<Action>) {
        out.push(Action::Disconnect);
        out.push(Action::FailQueued(ErrorCode::DEVICE_BANNED));
        out.push(Action::Audit(AuditKind::Banned));
        let detail = match until_ms {
            Some(ms) => format!("banned until unix ms {ms}: {reason}"),
            None => format!("banned: {reason}"),
        };
        self.go(
            Phase::Banned {
                until: until_ms.map(|ms| at.mono_of_wall(ms)),
                until_ms,
            },
            &detail,
            out,
        );
        out.push(Action::Persist);
    }

    fn go(&mut self, to: Phase, detail: &str, out: &mut Vec<Action>) {
        let from = self.phase.public();
        self.phase = to;
        // Linking restarts and backoff re-arms keep the public state; they are not news.
        if from != to.public() || matches!(to, Phase::Linking { .. }) {
            out.push(Action::Publish {
                state: to.public(),
                detail: detail.to_string(),
            });
        }
    }
}

/// Fibonacci number `n` (1, 1, 2, 3, 5, …), saturating.
fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.saturating_add(b));
    }
    a.max(1)
}

/// An account id with all but its last four characters masked (phone numbers are personal
/// data; the audit issue lets a workspace opt in to full numbers).
pub fn mask(account: &str) -> String {
    let (user, server) = account.split_at(account.find('@').unwrap_or(account.len()));
    let n = user.chars().count();
    let masked: String = user
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect();
    masked + server
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
