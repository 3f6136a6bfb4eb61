//! Async QUIC client for the waping gateway protocol (v1).
//!
//! Used by the load harness and the integration tests, and a reference for
//! client authors: it does the handshake of PROTOCOL.md, pins the gateway's
//! certificate, and moves frames over streams with batching.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use waping_protocol::conn::ClientConn;
use waping_protocol::limits::{ALPN, MAX_VERSION, MIN_VERSION};
use waping_protocol::{
    DecodeError, Decoder, DeviceAction, DeviceState, EncodeError, ErrorCode, Event, Frame, Text, encode,
};

/// How the client decides to trust the gateway's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept exactly the certificate whose DER SHA-256 is this (the gateway prints it at start).
    Pin([u8; 32]),
    /// Verify against these PEM CA certificates (or the self-signed cert itself) and the server name.
    CaFile(PathBuf),
}

impl Trust {
    /// Parses `sha256:<64 hex>` or bare hex (colons allowed) into a pin.
    pub fn parse_pin(s: &str) -> Result<Trust, ClientError> {
        let hexpart: String = s
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let bytes =
            hex::decode(&hexpart).map_err(|_| ClientError::Config(format!("pin {s:?} is not hex")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ClientError::Config("pin must be 32 bytes (SHA-256)".into()))?;
        Ok(Trust::Pin(arr))
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Gateway UDP address.
    pub addr: SocketAddr,
    /// TLS server name (SNI); the self-signed certificate covers `localhost`.
    pub server_name: String,
    /// Certificate trust.
    pub trust: Trust,
    /// The API key (`wpk_…`).
    pub api_key: String,
    /// Shown in gateway logs.
    pub client_name: String,
    /// Handshake deadline. Default 10 s.
    pub connect_timeout: Duration,
    /// Client certificate for gateways that require one (`server.client_auth`); `None`
    /// presents none.
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key (mutual TLS).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

impl ClientIdentity {
    fn load(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        ClientError,
    > {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| ClientError::Config(format!("{}: {e}", p.display())));
        let pem = read(&self.cert)?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("{}: {e}", self.cert.display())))?;
        if certs.is_empty() {
            return Err(ClientError::Config(format!(
                "{}: no certificate",
                self.cert.display()
            )));
        }
        let pem = read(&self.key)?;
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| ClientError::Config(format!("{}: {e}", self.key.display())))?
            .ok_or_else(|| ClientError::Config(format!("{}: no private key", self.key.display())))?;
        Ok((certs, key))
    }
}

/// Client-side failures, by cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad local configuration (pin, CA file, key).
    #[error("client configuration: {0}")]
    Config(String),
    /// QUIC connect failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection or a stream broke.
    #[error("connection: {0}")]
    Connection(String),
    /// The server sent bytes we cannot decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// We tried to encode an invalid frame.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The server broke the ordering rules.
    #[error("protocol violation: {0}")]
    Protocol(#[from] waping_protocol::conn::Violation),
    /// The server refused with an ERROR frame (or closed with an application code).
    #[error("server error {code}: {message}")]
    Server {
        /// Catalogue code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The handshake timed out.
    #[error("timed out")]
    Timeout,
    /// The server refused one request (DEVICE_CONTROL); the connection stays usable.
    #[error("refused with {code}: {message}")]
    Refused {
        /// Catalogue code.
        code: ErrorCode,
        /// The device's state when the server told it.
        state: Option<DeviceState>,
        /// Detail.
        message: String,
    },
    /// The gateway speaks a protocol version without this feature (e.g. device control
    /// needs version 2); upgrading the gateway helps, retrying does not.
    #[error("not supported by the gateway: {0}")]
    Unsupported(String),
}

impl ClientError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<quinn::ConnectionError> for ClientError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => ClientError::Server {
                code: ErrorCode(u16::try_from(c.error_code.into_inner()).unwrap_or(u16::MAX)),
                message: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            e => ClientError::Connection(e.to_string()),
        }
    }
}

impl From<quinn::WriteError> for ClientError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            e => ClientError::Connection(e.to_string()),
        }
    }
}

impl From<quinn::ReadError> for ClientError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => c.into(),
            e => ClientError::Connection(e.to_string()),
        }
    }
}

/// What the server granted in HELLO_OK.
#[derive(Debug, Clone)]
pub struct Session {
    /// Negotiated version.
    pub version: u16,
    /// Largest frame body the server accepts.
    pub max_frame_len: u32,
    /// Unacknowledged SENDs allowed per connection.
    pub max_in_flight: u32,
    /// Bidirectional streams allowed.
    pub max_streams: u16,
    /// Server idle timeout.
    pub idle_timeout_ms: u32,
    /// Server's id for this connection.
    pub connection_id: u64,
    /// Server software.
    pub server: String,
}

/// An authenticated connection.
#[derive(Debug)]
pub struct Connection {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// Handshake result.
    pub session: Session,
    control: Option<FrameStream>,
    /// Set once an event stream was opened: the server opens at most one per connection.
    events_open: std::sync::atomic::AtomicBool,
    /// Numbers DEVICE_CONTROL requests.
    next_req: std::sync::atomic::AtomicU64,
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        // Pinning replaces name and chain checks: the fingerprint identifies the one key we trust.
        if got == self.pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint sha256:{} does not match pin",
                hex::encode(got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_config(trust: &Trust, identity: Option<&ClientIdentity>) -> Result<rustls::ClientConfig, ClientError> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let identity = identity.map(ClientIdentity::load).transpose()?;
    let finish =
        |b: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>| match &identity {
            Some((certs, key)) => b
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| ClientError::Config(format!("client certificate: {e}"))),
            None => Ok(b.with_no_client_auth()),
        };
    let mut cfg = match trust {
        Trust::Pin(pin) => finish(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier { pin: *pin, provider })),
        )?,
        Trust::CaFile(path) => {
            let pem =
                std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| ClientError::Config(e.to_string()))?;
            }
            finish(builder.with_root_certificates(roots))?
        }
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A QUIC connection with its first stream open and nothing sent: for tests
/// and tools that need to send their own (possibly wrong) HELLO.
pub async fn connect_raw(
    cfg: &ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection, FrameStream), ClientError> {
    let endpoint = client_endpoint(cfg)?;
    let conn = endpoint
        .connect(cfg.addr, &cfg.server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((
        endpoint,
        conn,
        FrameStream::new(
            send,
            recv,
            Decoder::new(waping_protocol::limits::HARD_MAX_FRAME_LEN),
        ),
    ))
}

fn client_endpoint(cfg: &ClientConfig) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if cfg.addr.is_ipv6() {
        "[::]:0".parse().unwrap_or(cfg.addr)
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_config(&cfg.trust, cfg.identity.as_ref())?)
            .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut qcfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.stream_receive_window((1u32 << 20).into());
    transport.receive_window((8u32 << 20).into());
    transport.send_window(8 << 20);
    qcfg.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(qcfg);
    Ok(endpoint)
}

impl Connection {
    /// Connects, performs HELLO / HELLO_OK, and returns the authenticated connection.
    pub async fn connect(cfg: &ClientConfig) -> Result<Connection, ClientError> {
        let endpoint = client_endpoint(cfg)?;
        let fut = async {
            let conn = endpoint
                .connect(cfg.addr, &cfg.server_name)
                .map_err(|e| ClientError::Connect(e.to_string()))?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            let mut control = FrameStream::new(send, recv, Decoder::default());
            control
                .send(&Frame::Hello {
                    min_version: MIN_VERSION,
                    max_version: MAX_VERSION,
                    api_key: Text::from(cfg.api_key.as_str()),
                    client_name: Text::from(cfg.client_name.as_str()),
                })
                .await?;
            let mut state = ClientConn::AwaitHelloOk;
            let frame = match control.next().await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(ClientError::Connection("server closed the control stream".into())),
                // The server may close right after its ERROR frame; prefer the close code.
                Err(e) => return Err(conn.close_reason().map(ClientError::from).unwrap_or(e)),
            };
            state.on_frame(&frame)?;
            match frame {
                Frame::HelloOk {
                    version,
                    max_frame_len,
                    max_in_flight,
                    max_streams,
                    idle_timeout_ms,
                    connection_id,
                    server,
                } => Ok((
                    conn,
                    control,
                    Session {
                        version,
                        max_frame_len,
                        max_in_flight,
                        max_streams,
                        idle_timeout_ms,
                        connection_id,
                        server: server.to_string(),
                    },
                )),
                Frame::Error { code, message, .. } => Err(ClientError::Server {
                    code,
                    message: message.to_string(),
                }),
                other => Err(ClientError::Connection(format!("unexpected {}", other.name()))),
            }
        };
        let (conn, control, session) = tokio::time::timeout(cfg.connect_timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(Connection {
            conn,
            endpoint,
            session,
            control: Some(control),
            events_open: std::sync::atomic::AtomicBool::new(false),
            next_req: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Subscribes to the workspace's events (`mask`: bits of [`waping_protocol::subscribe`])
    /// on a stream of its own and returns the event stream the server opens.
    ///
    /// Every event published after this returns is delivered (PROTOCOL.md section 8), so
    /// subscribe before triggering what you want to watch. Bits the negotiated version
    /// lacks are not granted ([`EventStream::granted`]). A connection has one event stream:
    /// a second call fails with [`ClientError::Unsupported`]; send another SUBSCRIBE
    /// yourself to change the mask of the first.
    pub async fn subscribe(&self, mask: u32) -> Result<EventStream, ClientError> {
        use std::sync::atomic::Ordering;
        if self.events_open.load(Ordering::Acquire) {
            return Err(ClientError::Unsupported(
                "this connection already has its event stream".into(),
            ));
        }
        let mut stream = self.open_stream().await?;
        stream.send(&Frame::Subscribe { mask }).await?;
        let granted = loop {
            match stream.next().await? {
                Some(Frame::Subscribed { mask }) => break mask,
                Some(Frame::Ping { .. } | Frame::Pong { .. }) => {}
                Some(f) => return Err(self.unexpected(f)),
                None => return Err(ClientError::Connection("stream ended before SUBSCRIBED".into())),
            }
        };
        // Nothing more to say on this stream; the subscription lives on the connection.
        let _ = stream.writer.finish();
        if granted == 0 {
            return Err(ClientError::Unsupported(format!(
                "the gateway granted none of the event kinds 0x{mask:08x}"
            )));
        }
        self.events_open.store(true, Ordering::Release);
        // QUIC announces a stream with its first bytes, so the server's event stream is only
        // seen once an event is written: accept it on the first `next`, not here, or a caller
        // that subscribes before causing the first event would wait forever.
        Ok(EventStream {
            reader: None,
            conn: self.conn.clone(),
            granted,
            state: ClientConn::Open {
                version: self.session.version,
            },
        })
    }

    /// Sends DEVICE_CONTROL on a stream of its own and waits for its DEVICE_CONTROL_RESULT:
    /// the device's state after the action, or [`ClientError::Refused`] with the server's
    /// code. Needs protocol version 2 ([`ClientError::Unsupported`] otherwise, without
    /// sending anything). Wrap it in a timeout: taking an action may wait for the device.
    pub async fn device_control(
        &self,
        device_id: &str,
        action: DeviceAction,
    ) -> Result<DeviceState, ClientError> {
        if self.session.version < 2 {
            return Err(ClientError::Unsupported(format!(
                "device control needs protocol version 2; the gateway speaks {}",
                self.session.version
            )));
        }
        let req = self.next_req.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut stream = self.open_stream().await?;
        stream
            .send(&Frame::DeviceControl {
                req,
                device_id: Text::from(device_id),
                action,
            })
            .await?;
        let _ = stream.writer.finish();
        loop {
            match stream.next().await? {
                Some(Frame::DeviceControlResult {
                    req: r,
                    code,
                    state,
                    detail,
                }) if r == req => {
                    return match (code.0, state) {
                        (0, Some(state)) => Ok(state),
                        _ => Err(ClientError::Refused {
                            code,
                            state,
                            message: detail.to_string(),
                        }),
                    };
                }
                Some(Frame::Ping { .. } | Frame::Pong { .. }) => {}
                Some(f) => return Err(self.unexpected(f)),
                None => {
                    return Err(ClientError::Connection(
                        "stream ended before DEVICE_CONTROL_RESULT".into(),
                    ));
                }
            }
        }
    }

    /// Opens a resumable subscription (protocol version 3, PROTOCOL.md 6.8) on a stream of
    /// its own: the workspace's events from the gateway's event log after `cursor` (`None` =
    /// from now), filtered by comma-separated `types` and `devices` (empty = all). Resuming
    /// with the last [`LogEntry::cursor`] processed misses nothing within the retention.
    /// Refusals are [`ClientError::Refused`] with the server's code and every problem.
    pub async fn subscribe_from(
        &self,
        cursor: Option<u64>,
        types: &str,
        devices: &str,
    ) -> Result<LogSubscription, ClientError> {
        if self.session.version < 3 {
            return Err(ClientError::Unsupported(format!(
                "resumable subscriptions need protocol version 3; the gateway speaks {}",
                self.session.version
            )));
        }
        let mut stream = self.open_stream().await?;
        stream
            .send(&Frame::SubscribeFrom {
                cursor,
                types: Text::from(types),
                devices: Text::from(devices),
            })
            .await?;
        loop {
            match stream.next().await? {
                Some(Frame::SubscribedFrom {
                    code,
                    cursor,
                    oldest,
                    detail,
                }) => {
                    if code.0 != 0 {
                        return Err(ClientError::Refused {
                            code,
                            state: None,
                            message: detail.to_string(),
                        });
                    }
                    return Ok(LogSubscription {
                        stream,
                        start: cursor,
                        oldest: (oldest != 0).then_some(oldest),
                    });
                }
                Some(Frame::Ping { .. } | Frame::Pong { .. }) => {}
                Some(f) => return Err(self.unexpected(f)),
                None => {
                    return Err(ClientError::Connection(
                        "stream ended before SUBSCRIBED_FROM".into(),
                    ));
                }
            }
        }
    }

    /// The error for a frame a request stream should not carry: ERROR and GOODBYE say why
    /// the server is leaving, anything else breaks the protocol.
    fn unexpected(&self, f: Frame) -> ClientError {
        match f {
            Frame::Error { code, message, .. } | Frame::Goodbye { code, message } => ClientError::Server {
                code,
                message: message.to_string(),
            },
            f => {
                let mut state = ClientConn::Open {
                    version: self.session.version,
                };
                match state.on_frame(&f) {
                    Err(v) => ClientError::Protocol(v),
                    Ok(()) => ClientError::Connection(format!("unexpected {} on this stream", f.name())),
                }
            }
        }
    }

    /// The control stream (first stream), usable for SEND like any other; `None` once taken.
    pub fn take_control(&mut self) -> Option<FrameStream> {
        self.control.take()
    }

    /// Opens another bidirectional stream for SENDs.
    pub async fn open_stream(&self) -> Result<FrameStream, ClientError> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok(FrameStream::new(
            send,
            recv,
            Decoder::new(waping_protocol::limits::HARD_MAX_FRAME_LEN),
        ))
    }

    /// Waits for the server-opened event stream (after SUBSCRIBE).
    pub async fn accept_event_stream(&self) -> Result<FrameReader, ClientError> {
        let recv = self.conn.accept_uni().await?;
        Ok(FrameReader::new(
            recv,
            Decoder::new(waping_protocol::limits::HARD_MAX_FRAME_LEN),
        ))
    }

    /// The underlying QUIC connection (for stats and close reasons).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes with code 0 and waits briefly for the peer to see it.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// The server's event stream of one connection ([`Connection::subscribe`]).
#[derive(Debug)]
pub struct EventStream {
    reader: Option<FrameReader>,
    conn: quinn::Connection,
    granted: u32,
    state: ClientConn,
}

impl EventStream {
    /// The mask the server granted.
    pub fn granted(&self) -> u32 {
        self.granted
    }

    /// The next event; `None` when the server finished the stream (the connection is ending).
    /// A frame other than EVENT, or an event kind the negotiated version lacks, is a
    /// protocol violation.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        if self.reader.is_none() {
            let recv = self.conn.accept_uni().await?;
            self.reader = Some(FrameReader::new(
                recv,
                Decoder::new(waping_protocol::limits::HARD_MAX_FRAME_LEN),
            ));
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        match reader.next().await? {
            None => Ok(None),
            Some(f) => {
                self.state.on_frame(&f)?;
                match f {
                    Frame::Event(e) => Ok(Some(e)),
                    f => Err(ClientError::Connection(format!(
                        "{} on the event stream",
                        f.name()
                    ))),
                }
            }
        }
    }
}

/// A resumable subscription ([`Connection::subscribe_from`]): its own stream.
#[derive(Debug)]
pub struct LogSubscription {
    stream: FrameStream,
    /// The cursor reading started after: resuming from it misses nothing.
    pub start: u64,
    /// A possible gap: the workspace's oldest retained event, newer than the cursor asked
    /// for + 1 (events in between may have been removed by retention).
    pub oldest: Option<u64>,
}

/// One event of a [`LogSubscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position in the gateway's event log: resume after it.
    pub cursor: u64,
    /// When the gateway observed it (Unix ms; 0 when unreadable).
    pub timestamp_ms: u64,
    /// False: the stored event could not be read and `text` says why.
    pub readable: bool,
    /// The event as JSON (docs/events.md), or why it is unreadable.
    pub text: String,
}

impl LogSubscription {
    /// The next event; `Ok(None)` when the server ended the subscription (it drains).
    pub async fn next(&mut self) -> Result<Option<LogEntry>, ClientError> {
        loop {
            match self.stream.next().await? {
                None => return Ok(None),
                Some(Frame::LogEvent {
                    cursor,
                    timestamp_ms,
                    readable,
                    text,
                }) => {
                    return Ok(Some(LogEntry {
                        cursor,
                        timestamp_ms,
                        readable,
                        text: text.to_string(),
                    }));
                }
                Some(Frame::Ping { .. } | Frame::Pong { .. }) => {}
                Some(Frame::Error { code, message, .. } | Frame::Goodbye { code, message }) => {
                    return Err(ClientError::Server {
                        code,
                        message: message.to_string(),
                    });
                }
                Some(f) => {
                    return Err(ClientError::Protocol(waping_protocol::conn::Violation {
                        code: ErrorCode::UNEXPECTED_FRAME,
                        message: format!("unexpected {} on a subscription stream", f.name()),
                    }));
                }
            }
        }
    }

    /// Ends the subscription: finishes the stream and tells the server to stop sending
    /// (STOP_SENDING); dropping it does the same.
    pub fn close(mut self) {
        let _ = self.stream.writer.finish();
        let _ = self.stream.reader.recv.stop(quinn::VarInt::from_u32(0));
    }
}

/// A bidirectional stream of frames.
#[derive(Debug)]
pub struct FrameStream {
    /// Write half.
    pub writer: FrameWriter,
    /// Read half.
    pub reader: FrameReader,
}

impl FrameStream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream, decoder: Decoder) -> Self {
        FrameStream {
            writer: FrameWriter {
                send,
                buf: BytesMut::with_capacity(16 * 1024),
            },
            reader: FrameReader::new(recv, decoder),
        }
    }

    /// Encodes and writes one frame.
    pub async fn send(&mut self, f: &Frame) -> Result<(), ClientError> {
        self.writer.send(f).await
    }

    /// Reads the next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        self.reader.next().await
    }

    /// Splits into halves that can live in different tasks.
    pub fn split(self) -> (FrameWriter, FrameReader) {
        (self.writer, self.reader)
    }
}

/// Write half: frames are encoded into a buffer and written together on `flush`.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: BytesMut,
}

impl FrameWriter {
    /// Queues a frame without writing (batching).
    pub fn queue(&mut self, f: &Frame) -> Result<(), ClientError> {
        encode(f, &mut self.buf)?;
        Ok(())
    }

    /// Writes raw bytes (tests use this to send malformed frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Writes everything queued in one stream write.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send.write_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Queues and flushes one frame.
    pub async fn send(&mut self, f: &Frame) -> Result<(), ClientError> {
        self.queue(f)?;
        self.flush().await
    }

    /// Bytes queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Finishes the stream (no more frames from us).
    pub fn finish(&mut self) -> Result<(), ClientError> {
        self.send
            .finish()
            .map_err(|e| ClientError::Connection(e.to_string()))
    }
}

/// Read half: decodes frames from stream chunks.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, decoder: Decoder) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder,
        }
    }

    /// Next frame; `None` when the server finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ClientError::Connection("stream ended inside a frame".into())),
            }
        }
    }
}
