//! The one catalogue of numeric error codes.
//!
//! Codes are stable: once published a number keeps its meaning forever, and
//! a retired code is never reused. The thousands digit groups them by whose
//! fault it is; clients that meet a code they do not know should treat it by
//! its group (see [`ErrorCode::fault`]).

use std::fmt;

/// Who caused an error, which tells a client whether changing its request can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client sent something wrong or not allowed; retrying unchanged will fail again
    /// (except for limits, which say when to come back).
    Client,
    /// WhatsApp or the device session failed; the gateway is healthy.
    Upstream,
    /// The gateway itself failed or is going away.
    Internal,
}

impl Fault {
    /// Lower-case name used in docs, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

/// A numeric error code as carried on the wire (`u16`, big-endian).
///
/// Unknown numbers decode fine (a newer gateway may send codes this library
/// does not know); [`ErrorCode::info`] returns `None` for them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

/// Everything documented about one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    /// The code itself.
    pub code: ErrorCode,
    /// Stable upper-snake-case name, also used as the `reason` metric label.
    pub name: &'static str,
    /// Whose fault it is.
    pub fault: Fault,
    /// Whether the same request may succeed later without change.
    pub retryable: bool,
    /// Whether the gateway closes the connection after sending it.
    pub fatal: bool,
    /// One-line meaning, copied into PROTOCOL.md.
    pub summary: &'static str,
}

macro_rules! catalogue {
    ($( $konst:ident = $num:literal, $fault:ident, retry: $retry:literal, fatal: $fatal:literal, $summary:literal; )*) => {
        impl ErrorCode {
            $(
                #[doc = $summary]
                pub const $konst: ErrorCode = ErrorCode($num);
            )*
        }

        /// Every code the protocol defines, in numeric order.
        pub const CATALOGUE: &[CodeInfo] = &[
            $(
                CodeInfo {
                    code: ErrorCode($num),
                    name: stringify!($konst),
                    fault: Fault::$fault,
                    retryable: $retry,
                    fatal: $fatal,
                    summary: $summary,
                },
            )*
        ];
    };
}

catalogue! {
    // 1xxx: the bytes or the order of frames were wrong.
    MALFORMED_FRAME = 1000, Client, retry: false, fatal: true, "A frame's body does not match its type's layout (truncated field, bad length, trailing bytes).";
    FRAME_TOO_LARGE = 1001, Client, retry: false, fatal: true, "A frame's declared body length exceeds the negotiated maximum.";
    UNKNOWN_FRAME_TYPE = 1002, Client, retry: false, fatal: true, "The frame type byte is not defined in the negotiated version.";
    UNSUPPORTED_VERSION = 1003, Client, retry: false, fatal: true, "No protocol version is supported by both sides.";
    UNEXPECTED_FRAME = 1004, Client, retry: false, fatal: true, "A valid frame arrived where it is not allowed (before HELLO, a second HELLO, a server-only frame).";
    INVALID_UTF8 = 1005, Client, retry: false, fatal: true, "A text field is not valid UTF-8.";
    UNKNOWN_FLAGS = 1006, Client, retry: false, fatal: true, "A frame header sets flag bits this version does not define.";
    HANDSHAKE_TIMEOUT = 1007, Client, retry: true, fatal: true, "HELLO did not arrive within the handshake timeout.";
    INVALID_FIELD = 1008, Client, retry: false, fatal: false, "A field is empty, too long or out of range (the message says which).";
    DUPLICATE_SEQ = 1009, Client, retry: false, fatal: false, "A SEND reused a sequence number that is still in flight on the same stream.";
    PAYLOAD_TOO_LARGE = 1010, Client, retry: false, fatal: false, "An HTTP request body, batch or page is larger than the configured limit.";
    // 2xxx: who the caller is and what it may do.
    AUTH_FAILED = 2000, Client, retry: false, fatal: true, "The API key is unknown, malformed, expired or revoked.";
    FORBIDDEN = 2001, Client, retry: false, fatal: false, "The key is valid but its role does not allow this operation.";
    AUTH_THROTTLED = 2002, Client, retry: true, fatal: true, "Too many failed authentications from this source; wait retry_after_ms.";
    // 3xxx: limits. Always retryable; retry_after_ms says when.
    RATE_LIMITED = 3000, Client, retry: true, fatal: false, "The workspace's send rate limit is exhausted; retry after retry_after_ms.";
    DEVICE_BUSY = 3001, Client, retry: true, fatal: false, "The device's outbound queue is full (per-device pacing is holding messages back).";
    TOO_MANY_IN_FLIGHT = 3002, Client, retry: true, fatal: false, "The connection already has max_in_flight unacknowledged messages.";
    OVERLOADED = 3003, Internal, retry: true, fatal: false, "The gateway is shedding load; retry after retry_after_ms.";
    API_RATE_LIMITED = 3004, Client, retry: true, fatal: false, "Too many HTTP API requests from this key or source address; retry after retry_after_ms.";
    WORKSPACE_QUEUE_FULL = 3005, Client, retry: true, fatal: false, "The workspace already has its quota of queued messages; retry after retry_after_ms.";
    // 4xxx: the request names something that does not exist or cannot be done.
    UNKNOWN_DEVICE = 4000, Client, retry: false, fatal: false, "The device id does not exist in the caller's workspace.";
    INVALID_RECIPIENT = 4001, Client, retry: false, fatal: false, "The recipient is not a valid WhatsApp address.";
    UNSUPPORTED_BODY = 4002, Client, retry: false, fatal: false, "The body kind is defined but not supported by this gateway (e.g. media in v1).";
    UNKNOWN_BODY_KIND = 4003, Client, retry: false, fatal: true, "The body kind byte is not defined.";
    NOT_FOUND = 4004, Client, retry: false, fatal: false, "No such object in the caller's workspace (an object of another workspace is reported the same way).";
    CONFLICT = 4005, Client, retry: false, fatal: false, "The object already exists, or its state or origin (the configuration file) forbids the operation.";
    QUOTA_EXCEEDED = 4006, Client, retry: false, fatal: false, "A workspace quota (devices, keys, webhooks) is used up.";
    // 5xxx: WhatsApp or the device session.
    UPSTREAM_UNAVAILABLE = 5000, Upstream, retry: true, fatal: false, "The upstream (WhatsApp or its simulator) cannot be reached.";
    UPSTREAM_REJECTED = 5001, Upstream, retry: false, fatal: false, "The upstream refused the message permanently.";
    UPSTREAM_TIMEOUT = 5002, Upstream, retry: true, fatal: false, "The upstream did not answer in time; the message may or may not have been sent.";
    UPSTREAM_THROTTLED = 5003, Upstream, retry: true, fatal: false, "The upstream said the device sends too fast (WhatsApp rate-overlimit).";
    DEVICE_DISCONNECTED = 5004, Upstream, retry: true, fatal: false, "The device session is not connected to WhatsApp.";
    DEVICE_LOGGED_OUT = 5005, Upstream, retry: false, fatal: false, "The device was logged out and must be relinked.";
    DEVICE_BANNED = 5006, Upstream, retry: false, fatal: false, "WhatsApp banned or restricted the device's account (a temporary ban lifts by itself; the device then reconnects).";
    DEVICE_NOT_LINKED = 5007, Client, retry: false, fatal: false, "The device has no WhatsApp account linked yet; link it first.";
    DEVICE_DISABLED = 5008, Client, retry: false, fatal: false, "An operator disabled the device; enable it first.";
    // 9xxx: the gateway itself.
    INTERNAL = 9000, Internal, retry: true, fatal: false, "An unexpected gateway error; the request may be retried.";
    SHUTTING_DOWN = 9001, Internal, retry: true, fatal: true, "The gateway is draining; reconnect (to another node) and resend what was not acknowledged.";
    AUDIT_UNAVAILABLE = 9002, Internal, retry: true, fatal: false, "The audit log cannot take the record of this security-relevant operation (an audit sink is far behind and the spool is full, or the disk is stalled); nothing was changed.";
}

impl ErrorCode {
    /// The catalogue entry, or `None` for a code this version does not define.
    pub fn info(self) -> Option<&'static CodeInfo> {
        CATALOGUE
            .binary_search_by_key(&self.0, |c| c.code.0)
            .ok()
            .map(|i| &CATALOGUE[i])
    }

    /// Stable name, or `"UNKNOWN"`.
    pub fn name(self) -> &'static str {
        self.info().map_or("UNKNOWN", |i| i.name)
    }

    /// Whose fault; unknown codes are classified by their thousands group.
    pub fn fault(self) -> Fault {
        if let Some(i) = self.info() {
            return i.fault;
        }
        match self.0 / 1000 {
            5 => Fault::Upstream,
            9 => Fault::Internal,
            _ => Fault::Client,
        }
    }

    /// Whether retrying unchanged can succeed; unknown codes: only the 3xxx (limits) group.
    pub fn retryable(self) -> bool {
        self.info().map_or(self.0 / 1000 == 3, |i| i.retryable)
    }

    /// Whether the sender closes the connection after this error.
    pub fn fatal(self) -> bool {
        self.info().is_some_and(|i| i.fatal)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_and_unique() {
        for pair in CATALOGUE.windows(2) {
            assert!(
                pair[0].code.0 < pair[1].code.0,
                "{:?} before {:?}",
                pair[0].code,
                pair[1].code
            );
        }
        for c in CATALOGUE {
            assert_eq!(c.code.info(), Some(c));
            assert_ne!(c.code.0, 0, "0 means success in REPORT frames");
        }
    }

    #[test]
    fn unknown_codes_classified_by_group() {
        let c = ErrorCode(3999);
        assert_eq!(c.name(), "UNKNOWN");
        assert!(c.retryable());
        assert_eq!(ErrorCode(5999).fault(), Fault::Upstream);
        assert_eq!(ErrorCode(9999).fault(), Fault::Internal);
        assert_eq!(ErrorCode(1999).fault(), Fault::Client);
        assert!(!ErrorCode(1999).fatal());
    }

    #[test]
    fn limits_are_retryable() {
        for c in CATALOGUE.iter().filter(|c| c.code.0 / 1000 == 3) {
            assert!(c.retryable, "{}", c.name);
        }
    }
}
