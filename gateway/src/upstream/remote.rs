//! The simulator in another process, over TCP.
//!
//! The load harness runs [`serve`] so WhatsApp's side uses its own cores;
//! the gateway uses [`RemoteUpstream`]. Requests are pipelined on one
//! connection and matched to answers by id. The wire is internal to this
//! pair (not part of PROTOCOL.md): frames of `u32 length`, `u8 type`, body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::{DashMap, DashSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use waping_protocol::{Body, DeviceState, Text};

use super::sim::{self, SimUpstream};
use super::*;
use crate::config::SimConfig;

const T_ATTACH: u8 = 1;
const T_SEND: u8 = 2;
const T_RESULT: u8 = 3;
const T_INBOUND: u8 = 4;
const T_STATE: u8 = 5;
const MAX_FRAME: usize = 1 << 20;

/// A malformed simulator frame.
#[derive(Debug, thiserror::Error)]
#[error("sim wire: {0}")]
pub struct WireError(&'static str);

#[derive(Debug, PartialEq)]
enum Msg {
    Attach {
        id: u64,
        ws: String,
        device: String,
    },
    Send {
        id: u64,
        ws: String,
        device: String,
        recipient: String,
        upstream_id: String,
        text: String,
    },
    Result {
        id: u64,
        status: u8,
        retry_after_ms: u32,
        text: String,
    },
    Inbound {
        ws: String,
        device: String,
        from: String,
        upstream_id: String,
        text: String,
    },
    State {
        ws: String,
        device: String,
        state: u8,
        detail: String,
    },
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

fn get_str(b: &mut Bytes) -> Result<String, WireError> {
    if b.remaining() < 2 {
        return Err(WireError("truncated length"));
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return Err(WireError("truncated string"));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| WireError("invalid utf-8"))
}

fn get_n<const N: usize>(b: &mut Bytes) -> Result<[u8; N], WireError> {
    if b.remaining() < N {
        return Err(WireError("truncated integer"));
    }
    let mut a = [0u8; N];
    b.copy_to_slice(&mut a);
    Ok(a)
}

impl Msg {
    fn encode(&self, b: &mut BytesMut) {
        let start = b.len();
        b.put_u32(0);
        match self {
            Msg::Attach { id, ws, device } => {
                b.put_u8(T_ATTACH);
                b.put_u64(*id);
                put_str(b, ws);
                put_str(b, device);
            }
            Msg::Send {
                id,
                ws,
                device,
                recipient,
                upstream_id,
                text,
            } => {
                b.put_u8(T_SEND);
                b.put_u64(*id);
                for s in [ws, device, recipient, upstream_id, text] {
                    put_str(b, s);
                }
            }
            Msg::Result {
                id,
                status,
                retry_after_ms,
                text,
            } => {
                b.put_u8(T_RESULT);
                b.put_u64(*id);
                b.put_u8(*status);
                b.put_u32(*retry_after_ms);
                put_str(b, text);
            }
            Msg::Inbound {
                ws,
                device,
                from,
                upstream_id,
                text,
            } => {
                b.put_u8(T_INBOUND);
                for s in [ws, device, from, upstream_id, text] {
                    put_str(b, s);
                }
            }
            Msg::State {
                ws,
                device,
                state,
                detail,
            } => {
                b.put_u8(T_STATE);
                put_str(b, ws);
                put_str(b, device);
                b.put_u8(*state);
                put_str(b, detail);
            }
        }
        let len = (b.len() - start - 4) as u32;
        b[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn decode(buf: &mut BytesMut) -> Result<Option<Msg>, WireError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(WireError("bad frame length"));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let mut b = buf.split_to(len).freeze();
        let t = b.get_u8();
        let m = match t {
            T_ATTACH => Msg::Attach {
                id: u64::from_be_bytes(get_n(&mut b)?),
                ws: get_str(&mut b)?,
                device: get_str(&mut b)?,
            },
            T_SEND => Msg::Send {
                id: u64::from_be_bytes(get_n(&mut b)?),
                ws: get_str(&mut b)?,
                device: get_str(&mut b)?,
                recipient: get_str(&mut b)?,
                upstream_id: get_str(&mut b)?,
                text: get_str(&mut b)?,
            },
            T_RESULT => Msg::Result {
                id: u64::from_be_bytes(get_n(&mut b)?),
                status: get_n::<1>(&mut b)?[0],
                retry_after_ms: u32::from_be_bytes(get_n(&mut b)?),
                text: get_str(&mut b)?,
            },
            T_INBOUND => Msg::Inbound {
                ws: get_str(&mut b)?,
                device: get_str(&mut b)?,
                from: get_str(&mut b)?,
                upstream_id: get_str(&mut b)?,
                text: get_str(&mut b)?,
            },
            T_STATE => Msg::State {
                ws: get_str(&mut b)?,
                device: get_str(&mut b)?,
                state: get_n::<1>(&mut b)?[0],
                detail: get_str(&mut b)?,
            },
            _ => return Err(WireError("unknown frame type")),
        };
        if b.has_remaining() {
            return Err(WireError("trailing bytes"));
        }
        Ok(Some(m))
    }
}

const S_OK: u8 = 0;
const S_UNAVAILABLE: u8 = 1;
const S_REJECTED: u8 = 2;
const S_TIMEOUT: u8 = 3;
const S_THROTTLED: u8 = 4;
const S_DISCONNECTED: u8 = 5;
const S_LOGGED_OUT: u8 = 6;
const S_ALREADY_SENT: u8 = 7;

fn result_msg(id: u64, r: Result<UpstreamAck, UpstreamError>) -> Msg {
    let (status, retry_after_ms, text) = match r {
        Ok(a) if a.already_sent => (S_ALREADY_SENT, 0, a.upstream_id),
        Ok(a) => (S_OK, 0, a.upstream_id),
        Err(UpstreamError::Unavailable(s)) => (S_UNAVAILABLE, 0, s),
        Err(UpstreamError::Rejected(s)) => (S_REJECTED, 0, s),
        Err(UpstreamError::Timeout) => (S_TIMEOUT, 0, String::new()),
        Err(UpstreamError::Throttled { retry_after }) => (
            S_THROTTLED,
            retry_after.as_millis().min(u32::MAX as u128) as u32,
            String::new(),
        ),
        Err(UpstreamError::Disconnected) => (S_DISCONNECTED, 0, String::new()),
        Err(UpstreamError::LoggedOut) => (S_LOGGED_OUT, 0, String::new()),
    };
    Msg::Result {
        id,
        status,
        retry_after_ms,
        text,
    }
}

fn result_from(status: u8, retry_after_ms: u32, text: String) -> Result<UpstreamAck, UpstreamError> {
    match status {
        S_OK | S_ALREADY_SENT => Ok(UpstreamAck {
            upstream_id: text,
            already_sent: status == S_ALREADY_SENT,
        }),
        S_UNAVAILABLE => Err(UpstreamError::Unavailable(text)),
        S_REJECTED => Err(UpstreamError::Rejected(text)),
        S_TIMEOUT => Err(UpstreamError::Timeout),
        S_THROTTLED => Err(UpstreamError::Throttled {
            retry_after: Duration::from_millis(retry_after_ms.into()),
        }),
        S_DISCONNECTED => Err(UpstreamError::Disconnected),
        S_LOGGED_OUT => Err(UpstreamError::LoggedOut),
        other => Err(UpstreamError::Unavailable(format!(
            "simulator sent unknown status {other}"
        ))),
    }
}

/// Runs the simulator server until the listener fails.
///
/// Each gateway connection gets its own device and rate state, but all share one
/// record of deliveries: a gateway that reconnects (after a crash) and resends
/// is answered "already sent", never delivered twice.
pub async fn serve(listener: TcpListener, cfg: SimConfig) -> std::io::Result<()> {
    let deliveries = Arc::new(sim::Deliveries::new(cfg.dedup_capacity, cfg.ledger.as_deref())?);
    serve_with(listener, cfg, deliveries).await
}

/// [`serve`] with a delivery record the caller keeps (tests read its counters).
pub async fn serve_with(
    listener: TcpListener,
    cfg: SimConfig,
    deliveries: Arc<sim::Deliveries>,
) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let cfg = cfg.clone();
        let deliveries = deliveries.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(sock, cfg, deliveries).await {
                tracing::debug!(%peer, error = %e, "simulator connection ended");
            }
        });
    }
}

async fn serve_conn(sock: TcpStream, cfg: SimConfig, deliveries: Arc<sim::Deliveries>) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let (mut rd, mut wr) = sock.into_split();
    let (ev_tx, mut ev_rx) = mpsc::channel::<UpstreamEvent>(1024);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Msg>();
    let sim = SimUpstream::with_deliveries(cfg, ev_tx, deliveries);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                n = out_rx.recv_many(&mut batch, 256) => {
                    if n == 0 { break; }
                    for m in batch.drain(..) { m.encode(&mut buf); }
                }
                Some(ev) = ev_rx.recv() => event_msg(ev).encode(&mut buf),
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(m) = Msg::decode(&mut buf)? {
            match m {
                Msg::Attach { id, ws, device } => {
                    let r = sim
                        .attach(DeviceRef {
                            workspace: ws.into(),
                            device: device.into(),
                        })
                        .await;
                    let _ = out_tx.send(result_msg(
                        id,
                        r.map(|()| UpstreamAck {
                            upstream_id: String::new(),
                            already_sent: false,
                        }),
                    ));
                }
                Msg::Send {
                    id,
                    ws,
                    device,
                    recipient,
                    upstream_id,
                    text,
                } => {
                    let fut = sim.send(UpstreamSend {
                        device: DeviceRef {
                            workspace: ws.into(),
                            device: device.into(),
                        },
                        recipient: recipient.into(),
                        body: Body::Text(text.into()),
                        upstream_id,
                    });
                    let out = out_tx.clone();
                    tokio::spawn(async move {
                        let _ = out.send(result_msg(id, fut.await));
                    });
                }
                _ => return Err(WireError("unexpected frame from gateway").into()),
            }
        }
        if rd.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    writer.abort();
    Ok(())
}

fn event_msg(ev: UpstreamEvent) -> Msg {
    match ev {
        UpstreamEvent::Inbound {
            device,
            from,
            upstream_id,
            body,
        } => Msg::Inbound {
            ws: device.workspace.to_string(),
            device: device.device.to_string(),
            from: from.to_string(),
            upstream_id: upstream_id.to_string(),
            text: match body {
                Body::Text(t) => t.to_string(),
                Body::Media { caption, .. } => caption.to_string(),
            },
        },
        UpstreamEvent::State {
            device,
            state,
            detail,
        } => Msg::State {
            ws: device.workspace.to_string(),
            device: device.device.to_string(),
            state: state as u8,
            detail,
        },
    }
}

type Pending = DashMap<u64, oneshot::Sender<Result<UpstreamAck, UpstreamError>>>;

/// Gateway side: one pipelined TCP connection to a simulator process, reconnected with backoff.
#[derive(Clone)]
pub struct RemoteUpstream {
    inner: Arc<RemoteInner>,
}

impl std::fmt::Debug for RemoteUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteUpstream")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

struct RemoteInner {
    addr: SocketAddr,
    next_id: AtomicU64,
    pending: Pending,
    attached: DashSet<DeviceRef>,
    out: arc_swap::ArcSwapOption<mpsc::UnboundedSender<Msg>>,
    connected: AtomicBool,
}

impl RemoteUpstream {
    /// Starts connecting in the background; sends fail with UPSTREAM_UNAVAILABLE until connected.
    pub fn start(addr: SocketAddr, events: EventSink) -> Self {
        let inner = Arc::new(RemoteInner {
            addr,
            next_id: AtomicU64::new(1),
            pending: DashMap::new(),
            attached: DashSet::new(),
            out: arc_swap::ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(connection_loop(weak, events));
        RemoteUpstream { inner }
    }

    /// Whether the TCP connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    fn request(
        &self,
        make: impl FnOnce(u64) -> Msg,
    ) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        let inner = self.inner.clone();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let sent = match &*inner.out.load() {
            Some(out) => {
                inner.pending.insert(id, tx);
                out.send(make(id)).is_ok()
            }
            None => false,
        };
        Box::pin(async move {
            if !sent {
                inner.pending.remove(&id);
                return Err(UpstreamError::Unavailable(format!(
                    "simulator at {} not connected",
                    inner.addr
                )));
            }
            rx.await
                .unwrap_or_else(|_| Err(UpstreamError::Unavailable("simulator connection lost".into())))
        })
    }
}

impl Upstream for RemoteUpstream {
    fn name(&self) -> &'static str {
        "sim-remote"
    }

    fn attach(&self, device: DeviceRef) -> BoxFuture<'static, Result<(), UpstreamError>> {
        // Remembered so a reconnect re-attaches it.
        self.inner.attached.insert(device.clone());
        let fut = self.request(|id| Msg::Attach {
            id,
            ws: device.workspace.to_string(),
            device: device.device.to_string(),
        });
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn send(&self, msg: UpstreamSend) -> BoxFuture<'static, Result<UpstreamAck, UpstreamError>> {
        let Body::Text(text) = msg.body else {
            return Box::pin(async { Err(UpstreamError::Rejected("simulator carries text only".into())) });
        };
        self.request(move |id| Msg::Send {
            id,
            ws: msg.device.workspace.to_string(),
            device: msg.device.device.to_string(),
            recipient: msg.recipient.to_string(),
            upstream_id: msg.upstream_id,
            text: text.to_string(),
        })
    }
}

async fn connection_loop(weak: std::sync::Weak<RemoteInner>, events: EventSink) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let addr = inner.addr;
        drop(inner);
        match TcpStream::connect(addr).await {
            Ok(sock) => {
                backoff = Duration::from_millis(50);
                let _ = sock.set_nodelay(true);
                tracing::info!(%addr, "connected to simulator");
                if let Err(e) = run_connection(&weak, sock, &events).await {
                    tracing::warn!(%addr, error = %e, "simulator connection failed");
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.connected.store(false, Ordering::Release);
                inner.out.store(None);
                // Answers will never come: fail what is outstanding instead of leaving it pending forever.
                let ids: Vec<u64> = inner.pending.iter().map(|e| *e.key()).collect();
                for id in ids {
                    if let Some((_, tx)) = inner.pending.remove(&id) {
                        let _ = tx.send(Err(UpstreamError::Unavailable(
                            "simulator connection lost".into(),
                        )));
                    }
                }
            }
            Err(e) => tracing::debug!(%addr, error = %e, "simulator not reachable"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn run_connection(
    weak: &std::sync::Weak<RemoteInner>,
    sock: TcpStream,
    events: &EventSink,
) -> anyhow::Result<()> {
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        for d in inner.attached.iter() {
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Msg::Attach {
                id,
                ws: d.workspace.to_string(),
                device: d.device.to_string(),
            });
        }
        inner.out.store(Some(Arc::new(tx)));
        inner.connected.store(true, Ordering::Release);
    }
    let writer = async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            for m in batch.drain(..) {
                m.encode(&mut buf);
            }
            wr.write_all(&buf).await?;
            buf.clear();
        }
        anyhow::Ok(())
    };
    let reader = async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(m) = Msg::decode(&mut buf)? {
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                match m {
                    Msg::Result {
                        id,
                        status,
                        retry_after_ms,
                        text,
                    } => {
                        if let Some((_, tx)) = inner.pending.remove(&id) {
                            let _ = tx.send(result_from(status, retry_after_ms, text));
                        }
                    }
                    Msg::Inbound {
                        ws,
                        device,
                        from,
                        upstream_id,
                        text,
                    } => {
                        let ev = UpstreamEvent::Inbound {
                            device: DeviceRef {
                                workspace: ws.into(),
                                device: device.into(),
                            },
                            from: from.into(),
                            upstream_id: upstream_id.into(),
                            body: Body::Text(Text::from(text)),
                        };
                        events.send(ev).await?;
                    }
                    Msg::State {
                        ws,
                        device,
                        state,
                        detail,
                    } => {
                        let state = DeviceState::from_u8(state).ok_or(WireError("bad device state"))?;
                        let device = DeviceRef {
                            workspace: ws.into(),
                            device: device.into(),
                        };
                        events
                            .send(UpstreamEvent::State {
                                device,
                                state,
                                detail,
                            })
                            .await?;
                    }
                    _ => return Err(WireError("unexpected frame from simulator").into()),
                }
            }
            if rd.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("simulator closed the connection");
            }
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_roundtrip_and_bad_input() {
        let msgs = vec![
            Msg::Attach {
                id: 1,
                ws: "w".into(),
                device: "d".into(),
            },
            Msg::Send {
                id: 2,
                ws: "w".into(),
                device: "d".into(),
                recipient: "49".into(),
                upstream_id: "u".into(),
                text: "hé".into(),
            },
            Msg::Result {
                id: 3,
                status: S_THROTTLED,
                retry_after_ms: 9,
                text: String::new(),
            },
            Msg::Inbound {
                ws: "w".into(),
                device: "d".into(),
                from: "1".into(),
                upstream_id: "x".into(),
                text: "t".into(),
            },
            Msg::State {
                ws: "w".into(),
                device: "d".into(),
                state: 3,
                detail: "ok".into(),
            },
        ];
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let mut got = Vec::new();
        while let Some(m) = Msg::decode(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
        for bad in [
            &[0u8, 0, 0, 0][..],
            &[0, 0, 0, 1, 99],
            &[0, 0, 0, 2, T_STATE, 0],
            &[0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(Msg::decode(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let mut partial = BytesMut::from(&[0u8, 0, 0, 9, T_ATTACH][..]);
        assert!(Msg::decode(&mut partial).unwrap().is_none());
    }

    #[test]
    fn statuses_roundtrip() {
        for e in [
            Ok(UpstreamAck {
                upstream_id: "a".into(),
                already_sent: false,
            }),
            Ok(UpstreamAck {
                upstream_id: "b".into(),
                already_sent: true,
            }),
            Err(UpstreamError::Unavailable("x".into())),
            Err(UpstreamError::Rejected("y".into())),
            Err(UpstreamError::Timeout),
            Err(UpstreamError::Throttled {
                retry_after: Duration::from_millis(250),
            }),
            Err(UpstreamError::Disconnected),
            Err(UpstreamError::LoggedOut),
        ] {
            let Msg::Result {
                status,
                retry_after_ms,
                text,
                ..
            } = result_msg(1, e.clone())
            else {
                unreachable!()
            };
            assert_eq!(result_from(status, retry_after_ms, text), e);
        }
    }

    #[tokio::test]
    async fn remote_end_to_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, SimConfig::default()));
        let (tx, mut rx) = mpsc::channel(16);
        let up = RemoteUpstream::start(addr, tx);
        for _ in 0..200 {
            if up.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(up.is_connected());
        let dev = DeviceRef {
            workspace: "w".into(),
            device: "d".into(),
        };
        up.attach(dev.clone()).await.unwrap();
        assert!(matches!(
            rx.recv().await.unwrap(),
            UpstreamEvent::State {
                state: DeviceState::Connected,
                ..
            }
        ));
        let ack = up
            .send(UpstreamSend {
                device: dev,
                recipient: "4915112345678".into(),
                body: Body::Text("hi".into()),
                upstream_id: "m1".into(),
            })
            .await
            .unwrap();
        assert_eq!(ack.upstream_id, "SIM.m1");
    }

    #[tokio::test]
    async fn unreachable_simulator_fails_fast() {
        let (tx, _rx) = mpsc::channel(16);
        // Port 9 (discard) on loopback is closed here; nothing listens.
        let up = RemoteUpstream::start("127.0.0.1:9".parse().unwrap(), tx);
        let dev = DeviceRef {
            workspace: "w".into(),
            device: "d".into(),
        };
        let r = up
            .send(UpstreamSend {
                device: dev,
                recipient: "4915112345678".into(),
                body: Body::Text("hi".into()),
                upstream_id: "m".into(),
            })
            .await;
        assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{r:?}");
    }
}
