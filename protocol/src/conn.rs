//! Connection state machines and version negotiation, without IO.
//!
//! The gateway feeds every frame a client sends through [`ServerConn`]; the
//! client library feeds every frame the server sends through [`ClientConn`].
//! Both answer whether the frame is allowed now, so the ordering rules of
//! PROTOCOL.md live in one place.

use crate::error::ErrorCode;
use crate::frame::{Direction, Frame};
use crate::limits::{MAX_VERSION, MIN_VERSION};

/// A frame that broke the ordering rules: answer with ERROR `code` and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Violation {
    /// Catalogue code.
    pub code: ErrorCode,
    /// Detail for the ERROR frame.
    pub message: String,
}

fn violation(code: ErrorCode, message: impl Into<String>) -> Violation {
    Violation {
        code,
        message: message.into(),
    }
}

/// A frame (or event kind) that the negotiated `version` does not define: for frame types
/// UNKNOWN_FRAME_TYPE, as if the type byte were unknown; for event kinds MALFORMED_FRAME,
/// as for an unknown `event_kind`. Both are what a peer of that version would answer.
fn too_new(frame: &Frame, version: u16) -> Option<Violation> {
    let since = frame.since_version();
    if since <= version {
        return None;
    }
    let code = match frame {
        Frame::Event(_) => ErrorCode::MALFORMED_FRAME,
        _ => ErrorCode::UNKNOWN_FRAME_TYPE,
    };
    Some(violation(
        code,
        format!(
            "{} needs protocol version {since}; the connection speaks {version}",
            frame.name()
        ),
    ))
}

/// Picks the highest version inside both ranges.
pub fn negotiate(client_min: u16, client_max: u16) -> Result<u16, Violation> {
    let lo = client_min.max(MIN_VERSION);
    let hi = client_max.min(MAX_VERSION);
    if client_min > client_max || lo > hi {
        return Err(violation(
            ErrorCode::UNSUPPORTED_VERSION,
            format!("client speaks {client_min}..={client_max}, server {MIN_VERSION}..={MAX_VERSION}"),
        ));
    }
    Ok(hi)
}

/// Server-side view of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerConn {
    /// Waiting for HELLO on the first stream.
    AwaitHello,
    /// HELLO seen; the gateway is checking the key.
    Authenticating {
        /// Negotiated version.
        version: u16,
    },
    /// Authenticated; requests flow.
    Open {
        /// Negotiated version.
        version: u16,
    },
    /// GOODBYE sent or received; no new SENDs are taken.
    Draining,
    /// Closed after an error.
    Closed,
}

/// What the server should do with an allowed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Check this key, then call [`ServerConn::auth_ok`] or [`ServerConn::auth_failed`].
    Authenticate {
        /// Negotiated version.
        version: u16,
    },
    /// Handle the request (SEND, SUBSCRIBE, DEVICE_CONTROL, PING, PONG).
    Handle,
    /// Refuse this one request with `code` (for DEVICE_CONTROL: a DEVICE_CONTROL_RESULT
    /// carrying it); the connection stays open.
    Refuse {
        /// Why.
        code: ErrorCode,
        /// Detail for the answer.
        message: String,
    },
    /// The client is leaving: stop taking SENDs, finish what is in flight.
    Drain,
    /// The client reported an error; log it and close.
    PeerError,
}

impl ServerConn {
    /// Feeds one client frame; `Err` means answer with ERROR and close.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<ServerAction, Violation> {
        if frame.direction() == Direction::ServerToClient {
            return Err(self.fail(violation(
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} is a server-to-client frame", frame.name()),
            )));
        }
        match (&*self, frame) {
            (
                ServerConn::AwaitHello,
                Frame::Hello {
                    min_version,
                    max_version,
                    ..
                },
            ) => match negotiate(*min_version, *max_version) {
                Ok(version) => {
                    *self = ServerConn::Authenticating { version };
                    Ok(ServerAction::Authenticate { version })
                }
                Err(v) => Err(self.fail(v)),
            },
            (ServerConn::AwaitHello, f) => Err(self.fail(violation(
                ErrorCode::UNEXPECTED_FRAME,
                format!("expected HELLO, got {}", f.name()),
            ))),
            (ServerConn::Authenticating { .. }, f) => Err(self.fail(violation(
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} before HELLO_OK", f.name()),
            ))),
            (ServerConn::Open { .. } | ServerConn::Draining, Frame::Hello { .. }) => {
                Err(self.fail(violation(ErrorCode::UNEXPECTED_FRAME, "second HELLO")))
            }
            // A GOODBYE while already draining (the client answering the server's
            // GOODBYE, or saying it twice) is the same request again, not an error.
            (ServerConn::Open { .. } | ServerConn::Draining, Frame::Goodbye { .. }) => {
                *self = ServerConn::Draining;
                Ok(ServerAction::Drain)
            }
            (_, Frame::Error { .. }) => {
                *self = ServerConn::Closed;
                Ok(ServerAction::PeerError)
            }
            (ServerConn::Open { version }, f) => match too_new(f, *version) {
                Some(v) => Err(self.fail(v)),
                None => Ok(ServerAction::Handle),
            },
            // Like a SEND while draining: one request refused, the connection kept, so the
            // client can still read what it is owed.
            (ServerConn::Draining, Frame::DeviceControl { .. } | Frame::SubscribeFrom { .. }) => {
                Ok(ServerAction::Refuse {
                    code: ErrorCode::SHUTTING_DOWN,
                    message: "gateway is draining".into(),
                })
            }
            (ServerConn::Draining, Frame::Send { .. } | Frame::Subscribe { .. }) => {
                Err(violation(ErrorCode::SHUTTING_DOWN, "connection is draining"))
            }
            (ServerConn::Draining, _) => Ok(ServerAction::Handle),
            (ServerConn::Closed, f) => Err(violation(
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} after close", f.name()),
            )),
        }
    }

    /// The key checked out.
    pub fn auth_ok(&mut self) {
        if let ServerConn::Authenticating { version } = *self {
            *self = ServerConn::Open { version };
        }
    }

    /// The key was refused.
    pub fn auth_failed(&mut self) {
        *self = ServerConn::Closed;
    }

    /// The server starts draining (shutdown).
    pub fn drain(&mut self) {
        if matches!(self, ServerConn::Open { .. }) {
            *self = ServerConn::Draining;
        }
    }

    /// True once requests may flow.
    pub fn is_open(&self) -> bool {
        matches!(self, ServerConn::Open { .. })
    }

    /// The negotiated version while open; `None` before HELLO_OK and once draining or closed.
    pub fn version(&self) -> Option<u16> {
        match self {
            ServerConn::Authenticating { version } | ServerConn::Open { version } => Some(*version),
            _ => None,
        }
    }

    fn fail(&mut self, v: Violation) -> Violation {
        *self = ServerConn::Closed;
        v
    }
}

/// Client-side view of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientConn {
    /// HELLO sent, waiting for HELLO_OK.
    AwaitHelloOk,
    /// Handshake done.
    Open {
        /// Negotiated version.
        version: u16,
    },
    /// The server said GOODBYE or ERROR.
    Closed,
}

impl ClientConn {
    /// Feeds one server frame; `Err` means the server broke the protocol.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<(), Violation> {
        if frame.direction() == Direction::ClientToServer {
            *self = ClientConn::Closed;
            return Err(violation(
                ErrorCode::UNEXPECTED_FRAME,
                format!("server sent {}", frame.name()),
            ));
        }
        match (*self, frame) {
            (ClientConn::AwaitHelloOk, Frame::HelloOk { version, .. }) => {
                if !(MIN_VERSION..=MAX_VERSION).contains(version) {
                    *self = ClientConn::Closed;
                    return Err(violation(
                        ErrorCode::UNSUPPORTED_VERSION,
                        format!("server chose version {version}"),
                    ));
                }
                *self = ClientConn::Open { version: *version };
                Ok(())
            }
            (_, Frame::Error { .. } | Frame::Goodbye { .. }) => {
                *self = ClientConn::Closed;
                Ok(())
            }
            (ClientConn::AwaitHelloOk, f) => {
                *self = ClientConn::Closed;
                Err(violation(
                    ErrorCode::UNEXPECTED_FRAME,
                    format!("{} before HELLO_OK", f.name()),
                ))
            }
            (ClientConn::Open { .. }, Frame::HelloOk { .. }) => {
                *self = ClientConn::Closed;
                Err(violation(ErrorCode::UNEXPECTED_FRAME, "second HELLO_OK"))
            }
            (ClientConn::Open { version }, f) => match too_new(f, version) {
                Some(v) => {
                    *self = ClientConn::Closed;
                    Err(v)
                }
                None => Ok(()),
            },
            (ClientConn::Closed, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Body, DeviceAction, DeviceState, Event, EventKind, LinkCodeKind, LinkMethod, Text};

    fn hello(min: u16, max: u16) -> Frame {
        Frame::Hello {
            min_version: min,
            max_version: max,
            api_key: "wpk_x".into(),
            client_name: Text::default(),
        }
    }

    fn send() -> Frame {
        Frame::Send {
            seq: 1,
            idempotency_key: "k".into(),
            device_id: "d".into(),
            recipient: "4915112345678".into(),
            body: Body::Text("hi".into()),
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(1, 1), Ok(1));
        assert_eq!(negotiate(1, 2), Ok(2));
        assert_eq!(negotiate(1, 9), Ok(3));
        assert_eq!(negotiate(0, 1), Ok(1));
        assert_eq!(negotiate(2, 9), Ok(3));
        assert_eq!(negotiate(2, 2), Ok(2));
        assert_eq!(negotiate(4, 9).unwrap_err().code, ErrorCode::UNSUPPORTED_VERSION);
        assert_eq!(negotiate(0, 0).unwrap_err().code, ErrorCode::UNSUPPORTED_VERSION);
        assert_eq!(negotiate(3, 1).unwrap_err().code, ErrorCode::UNSUPPORTED_VERSION);
    }

    #[test]
    fn resumable_subscriptions_need_version_3() {
        let sub = Frame::SubscribeFrom {
            cursor: Some(1),
            types: Text::default(),
            devices: Text::default(),
        };
        let mut s = ServerConn::Open { version: 2 };
        assert_eq!(s.on_frame(&sub).unwrap_err().code, ErrorCode::UNKNOWN_FRAME_TYPE);
        let mut s = ServerConn::Open { version: 3 };
        assert_eq!(s.on_frame(&sub), Ok(ServerAction::Handle));
        s.drain();
        assert!(matches!(s.on_frame(&sub), Ok(ServerAction::Refuse { .. })));
        let log = Frame::LogEvent {
            cursor: 1,
            timestamp_ms: 0,
            readable: true,
            text: Text::default(),
        };
        let mut c = ClientConn::Open { version: 2 };
        assert!(c.on_frame(&log).is_err());
        let mut c = ClientConn::Open { version: 3 };
        assert_eq!(c.on_frame(&log), Ok(()));
    }

    #[test]
    fn server_happy_path() {
        let mut s = ServerConn::AwaitHello;
        assert_eq!(
            s.on_frame(&hello(1, 1)),
            Ok(ServerAction::Authenticate { version: 1 })
        );
        s.auth_ok();
        assert!(s.is_open());
        assert_eq!(s.on_frame(&send()), Ok(ServerAction::Handle));
        assert_eq!(s.on_frame(&Frame::Ping { nonce: 1 }), Ok(ServerAction::Handle));
        assert_eq!(
            s.on_frame(&Frame::Goodbye {
                code: ErrorCode::SHUTTING_DOWN,
                message: Text::default()
            }),
            Ok(ServerAction::Drain)
        );
        assert_eq!(s.on_frame(&send()).unwrap_err().code, ErrorCode::SHUTTING_DOWN);
    }

    /// Found while writing PROTOCOL.md: a GOODBYE on a draining connection
    /// (e.g. the client's answer to the server's GOODBYE) came back as
    /// `Handle`, which the gateway turned into a fatal UNEXPECTED_FRAME.
    #[test]
    fn goodbye_while_draining_is_idempotent() {
        let bye = Frame::Goodbye {
            code: ErrorCode::SHUTTING_DOWN,
            message: Text::default(),
        };
        let mut s = ServerConn::Open { version: 1 };
        s.drain();
        assert_eq!(s, ServerConn::Draining);
        assert_eq!(s.on_frame(&bye), Ok(ServerAction::Drain));
        assert_eq!(s.on_frame(&bye), Ok(ServerAction::Drain));
        assert_eq!(s, ServerConn::Draining);
        assert_eq!(s.on_frame(&Frame::Ping { nonce: 1 }), Ok(ServerAction::Handle));
    }

    #[test]
    fn server_ordering_violations() {
        let mut s = ServerConn::AwaitHello;
        assert_eq!(s.on_frame(&send()).unwrap_err().code, ErrorCode::UNEXPECTED_FRAME);
        assert_eq!(s, ServerConn::Closed);

        let mut s = ServerConn::AwaitHello;
        s.on_frame(&hello(1, 1)).unwrap();
        assert_eq!(
            s.on_frame(&send()).unwrap_err().code,
            ErrorCode::UNEXPECTED_FRAME,
            "send during auth"
        );

        let mut s = ServerConn::Open { version: 1 };
        assert_eq!(
            s.on_frame(&hello(1, 1)).unwrap_err().code,
            ErrorCode::UNEXPECTED_FRAME
        );

        let mut s = ServerConn::Open { version: 1 };
        let ack = Frame::Accepted {
            seq: 1,
            message_id: Default::default(),
        };
        assert_eq!(s.on_frame(&ack).unwrap_err().code, ErrorCode::UNEXPECTED_FRAME);

        let mut s = ServerConn::AwaitHello;
        assert_eq!(
            s.on_frame(&hello(5, 7)).unwrap_err().code,
            ErrorCode::UNSUPPORTED_VERSION
        );
        s = ServerConn::AwaitHello;
        s.on_frame(&hello(1, 1)).unwrap();
        s.auth_failed();
        assert_eq!(s.on_frame(&send()).unwrap_err().code, ErrorCode::UNEXPECTED_FRAME);
    }

    #[test]
    fn client_side() {
        let mut c = ClientConn::AwaitHelloOk;
        assert!(
            c.on_frame(&Frame::Accepted {
                seq: 1,
                message_id: Default::default()
            })
            .is_err()
        );
        let hello_ok = |version| Frame::HelloOk {
            version,
            max_frame_len: 1024,
            max_in_flight: 1,
            max_streams: 1,
            idle_timeout_ms: 1,
            connection_id: 1,
            server: Text::default(),
        };
        let ok = hello_ok(1);
        let mut c = ClientConn::AwaitHelloOk;
        c.on_frame(&ok).unwrap();
        assert_eq!(c, ClientConn::Open { version: 1 });
        assert!(c.on_frame(&ok).is_err());
        let mut c = ClientConn::AwaitHelloOk;
        assert!(c.on_frame(&send()).is_err());
        let mut c = ClientConn::AwaitHelloOk;
        let bad = hello_ok(7);
        assert_eq!(c.on_frame(&bad).unwrap_err().code, ErrorCode::UNSUPPORTED_VERSION);
    }

    fn control() -> Frame {
        Frame::DeviceControl {
            req: 1,
            device_id: "dev-1".into(),
            action: DeviceAction::Link(LinkMethod::Qr),
        }
    }

    fn control_result() -> Frame {
        Frame::DeviceControlResult {
            req: 1,
            code: ErrorCode(0),
            state: Some(DeviceState::Linking),
            detail: Text::default(),
        }
    }

    fn link_code_event() -> Frame {
        Frame::Event(Event {
            seq: 1,
            timestamp_ms: 1,
            kind: EventKind::LinkCode {
                device_id: "dev-1".into(),
                kind: LinkCodeKind::Qr,
                code: "2@abc".into(),
                valid_for_ms: 20_000,
            },
        })
    }

    #[test]
    fn device_control_needs_version_2() {
        let mut s = ServerConn::AwaitHello;
        assert_eq!(
            s.on_frame(&hello(1, 2)),
            Ok(ServerAction::Authenticate { version: 2 })
        );
        assert_eq!(s.version(), Some(2));
        s.auth_ok();
        assert_eq!(s.on_frame(&control()), Ok(ServerAction::Handle));

        // A version 1 connection treats the type byte as undefined.
        let mut s = ServerConn::Open { version: 1 };
        assert_eq!(
            s.on_frame(&control()).unwrap_err().code,
            ErrorCode::UNKNOWN_FRAME_TYPE
        );
        assert_eq!(s, ServerConn::Closed);

        // The answer is server-to-client only.
        let mut s = ServerConn::Open { version: 2 };
        assert_eq!(
            s.on_frame(&control_result()).unwrap_err().code,
            ErrorCode::UNEXPECTED_FRAME
        );
    }

    #[test]
    fn device_control_while_draining_is_refused_per_request() {
        let mut s = ServerConn::Open { version: 2 };
        s.drain();
        assert_eq!(s.version(), None);
        assert_eq!(
            s.on_frame(&control()),
            Ok(ServerAction::Refuse {
                code: ErrorCode::SHUTTING_DOWN,
                message: "gateway is draining".into()
            })
        );
        assert_eq!(s, ServerConn::Draining, "the connection stays up");
    }

    #[test]
    fn client_refuses_version_2_frames_on_a_version_1_connection() {
        let mut c = ClientConn::Open { version: 2 };
        assert_eq!(c.on_frame(&control_result()), Ok(()));
        assert_eq!(c.on_frame(&link_code_event()), Ok(()));
        assert!(c.on_frame(&control()).is_err(), "client-to-server frame");

        let mut c = ClientConn::Open { version: 1 };
        assert_eq!(
            c.on_frame(&control_result()).unwrap_err().code,
            ErrorCode::UNKNOWN_FRAME_TYPE
        );
        let mut c = ClientConn::Open { version: 1 };
        assert_eq!(
            c.on_frame(&link_code_event()).unwrap_err().code,
            ErrorCode::MALFORMED_FRAME
        );
        assert_eq!(c, ClientConn::Closed);
        // Version 1 events are fine on either version.
        let mut c = ClientConn::Open { version: 1 };
        let lagged = Frame::Event(Event {
            seq: 1,
            timestamp_ms: 1,
            kind: EventKind::Lagged { missed: 1 },
        });
        assert_eq!(c.on_frame(&lagged), Ok(()));
    }
}
