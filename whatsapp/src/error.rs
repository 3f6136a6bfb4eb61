//! Typed errors of the WhatsApp upstream, mapped from whatsapp-rust's errors.

use std::time::Duration;

use whatsapp_rust::ErrorChainExt;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is wrong (bad recipient, unpaired device): do not retry as is.
    Client,
    /// WhatsApp or the network refused or failed.
    Upstream,
    /// Our own side (store, bug).
    Internal,
}

/// Failure of a WhatsApp operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaError {
    /// WhatsApp answered 429 `rate-overlimit`: this number sends too fast. Pause the
    /// device (not just the message) for `retry_after`, or a conservative default.
    #[error("WhatsApp rate limit (429 rate-overlimit)")]
    RateOverlimit {
        /// Server-directed delay, when WhatsApp named one.
        retry_after: Option<Duration>,
    },
    /// The device was logged out (unlinked from the phone, or removed): relink needed.
    #[error("device logged out by WhatsApp (code {code})")]
    LoggedOut {
        /// WhatsApp's reason code (401 logged out, 403 locked, ...).
        code: i32,
    },
    /// The account is temporarily banned from sending.
    #[error("account temporarily banned (reason {code}) for {expires:?}")]
    TemporaryBan {
        /// WhatsApp's ban reason code (101 too many messages to strangers, ...).
        code: i32,
        /// How long the ban lasts, from when it was reported.
        expires: Duration,
    },
    /// Another client took over this session; reconnecting would fight it.
    #[error("stream replaced by another client of the same device")]
    StreamReplaced,
    /// The device has no live connection right now.
    #[error("device not connected")]
    NotConnected,
    /// The device is not linked yet.
    #[error("device not paired")]
    NotPaired,
    /// WhatsApp did not answer in time (the message may or may not have been sent).
    #[error("timed out waiting for WhatsApp ({op})")]
    Timeout {
        /// What was waited for.
        op: &'static str,
    },
    /// The recipient or request is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// WhatsApp refused with another code.
    #[error("WhatsApp refused with code {code}: {text}")]
    Rejected {
        /// The `code` WhatsApp sent.
        code: u16,
        /// Its `text`, possibly empty.
        text: String,
    },
    /// The device store failed.
    #[error("device store failed: {0}")]
    Storage(String),
    /// The device or node was shut down.
    #[error("device closed")]
    Closed,
    /// Anything else inside the protocol library.
    #[error("internal WhatsApp client error: {0}")]
    Internal(String),
}

impl WaError {
    /// Whether trying the same operation again later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::RateOverlimit { .. }
            | Self::TemporaryBan { .. }
            | Self::NotConnected
            | Self::Timeout { .. }
            | Self::Storage(_) => true,
            Self::Rejected { code, .. } => *code >= 500 || *code == 408,
            Self::LoggedOut { .. }
            | Self::StreamReplaced
            | Self::NotPaired
            | Self::InvalidRequest(_)
            | Self::Closed
            | Self::Internal(_) => false,
        }
    }

    /// The earliest useful retry, when the error says so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateOverlimit { retry_after } => *retry_after,
            Self::TemporaryBan { expires, .. } => Some(*expires),
            _ => None,
        }
    }

    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidRequest(_) | Self::NotPaired => Fault::Client,
            Self::Storage(_) | Self::Internal(_) | Self::Closed => Fault::Internal,
            _ => Fault::Upstream,
        }
    }

    /// Maps a server rejection (`code`, `text`, `backoff` seconds).
    pub fn from_rejection(code: u16, text: &str, backoff: Option<u32>) -> Self {
        if code == 429 || text == "rate-overlimit" {
            Self::RateOverlimit {
                retry_after: backoff.map(|s| Duration::from_secs(u64::from(s))),
            }
        } else if code == 401 {
            Self::LoggedOut { code: 401 }
        } else {
            Self::Rejected {
                code,
                text: text.to_owned(),
            }
        }
    }

    /// Maps the `error` attribute of a negative server ack of a sent message.
    pub fn from_nack(code: &str) -> Self {
        match code.trim().parse::<u16>() {
            Ok(c) => Self::from_rejection(c, "", None),
            Err(_) => Self::Rejected {
                code: 0,
                text: code.to_owned(),
            },
        }
    }

    /// Maps any error of the protocol library by walking its cause chain.
    pub fn from_chain(err: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(r) = err.server_rejection() {
            return Self::from_rejection(r.code, r.text, r.backoff);
        }
        for cause in ErrorChainExt::sources(err) {
            if let Some(send) = cause.downcast_ref::<whatsapp_rust::SendError>() {
                match send {
                    whatsapp_rust::SendError::NotLoggedIn => return Self::NotPaired,
                    whatsapp_rust::SendError::InvalidRequest(s) => {
                        return Self::InvalidRequest(s.clone());
                    }
                    _ => {}
                }
            }
            if let Some(whatsapp_rust::ClientError::NotLoggedIn) = cause.downcast_ref() {
                return Self::NotPaired;
            }
            if let Some(whatsapp_rust::ClientError::NotConnected) = cause.downcast_ref() {
                return Self::NotConnected;
            }
        }
        if err.is_timeout() {
            return Self::Timeout { op: "request" };
        }
        if err.is_transport_unavailable() {
            return Self::NotConnected;
        }
        if let Some(s) = err.store_failure() {
            return Self::Storage(s.to_string());
        }
        Self::Internal(err.to_string())
    }
}

impl From<whatsapp_rust::SendError> for WaError {
    fn from(e: whatsapp_rust::SendError) -> Self {
        Self::from_chain(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_overlimit_is_distinct_retryable_and_carries_backoff() {
        let e = WaError::from_rejection(429, "rate-overlimit", Some(30));
        assert_eq!(
            e,
            WaError::RateOverlimit {
                retry_after: Some(Duration::from_secs(30))
            }
        );
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(e.fault(), Fault::Upstream);
        assert_eq!(
            WaError::from_nack("429"),
            WaError::RateOverlimit { retry_after: None }
        );
    }

    #[test]
    fn terminal_states_are_not_retryable() {
        for e in [
            WaError::LoggedOut { code: 401 },
            WaError::StreamReplaced,
            WaError::NotPaired,
        ] {
            assert!(!e.retryable(), "{e:?}");
        }
        let ban = WaError::TemporaryBan {
            code: 101,
            expires: Duration::from_secs(3600),
        };
        assert_eq!(ban.retry_after(), Some(Duration::from_secs(3600)));
        assert_eq!(WaError::from_nack("401"), WaError::LoggedOut { code: 401 });
    }

    #[test]
    fn other_rejections_keep_their_code() {
        let e = WaError::from_nack("479");
        assert_eq!(
            e,
            WaError::Rejected {
                code: 479,
                text: String::new()
            }
        );
        assert!(!e.retryable());
        assert!(WaError::from_rejection(503, "", None).retryable());
        assert_eq!(
            WaError::from_nack("bogus"),
            WaError::Rejected {
                code: 0,
                text: "bogus".into()
            }
        );
    }

    #[test]
    fn library_errors_map_by_type() {
        assert_eq!(
            WaError::from(whatsapp_rust::SendError::NotLoggedIn),
            WaError::NotPaired
        );
        assert_eq!(
            WaError::from(whatsapp_rust::SendError::InvalidRequest("bad jid".into())),
            WaError::InvalidRequest("bad jid".into())
        );
        let not_connected = whatsapp_rust::SendError::Client(whatsapp_rust::ClientError::NotConnected);
        assert_eq!(WaError::from(not_connected), WaError::NotConnected);
        let store = whatsapp_rust::SendError::Internal(whatsapp_rust::anyhow::Error::new(
            whatsapp_rust::wacore::store::error::StoreError::Validation("x".into()),
        ));
        assert!(matches!(WaError::from(store), WaError::Storage(_)));
    }
}
