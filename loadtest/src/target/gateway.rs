//! The gateway target: QUIC connections, SEND frames, ACCEPTED/REJECTED/REPORT answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use waping_client::{ClientConfig, Connection, FrameReader, FrameWriter, Trust};
use waping_protocol::{DeliveryStatus, Frame, Text, subscribe};

use super::{Answer, Answers, Sink, StreamEnds, Target};
use crate::run::{Live, RunArgs};
use crate::stats::code_name;

/// Connections to keep open for the run, and the event subscribers.
#[derive(Debug)]
pub struct Gateway {
    conns: Vec<Connection>,
    event_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Writing half of a QUIC stream.
#[derive(Debug)]
pub struct GatewaySink(FrameWriter);

/// Reading half of a QUIC stream.
#[derive(Debug)]
pub struct GatewayAnswers(FrameReader);

impl Sink for GatewaySink {
    fn queue(&mut self, _device: usize, send: Frame) -> anyhow::Result<()> {
        self.0.queue(&send)?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.0.flush().await?;
        Ok(())
    }
}

impl Answers for GatewayAnswers {
    async fn next(&mut self) -> anyhow::Result<Option<Answer>> {
        let Some(frame) = self.0.next().await? else {
            return Ok(None);
        };
        Ok(Some(match frame {
            Frame::Accepted { seq, .. } => Answer::Accepted { seq },
            Frame::Rejected { code, .. } => Answer::Rejected {
                reason: code_name(code.0),
            },
            Frame::Report(rep) => match rep.status {
                DeliveryStatus::Sent => Answer::Report {
                    seq: rep.seq,
                    failed: None,
                },
                DeliveryStatus::Failed => Answer::Report {
                    seq: rep.seq,
                    failed: Some(code_name(rep.code.0)),
                },
                DeliveryStatus::Deferred => Answer::Deferred { seq: rep.seq },
            },
            Frame::Goodbye { code, message } => {
                eprintln!("gateway said GOODBYE {code}: {message}");
                Answer::Other
            }
            Frame::Error { code, message, .. } => bail!("gateway error {code}: {message}"),
            _ => Answer::Other,
        }))
    }
}

impl Target for Gateway {
    type Sink = GatewaySink;
    type Answers = GatewayAnswers;
    const NAME: &'static str = "gateway";
    const REPORTS: bool = true;

    async fn finish(self) -> anyhow::Result<()> {
        for c in self.conns {
            c.close().await;
        }
        for t in self.event_tasks {
            t.abort();
        }
        Ok(())
    }
}

/// Address and certificate fingerprint from `dir/runtime.json` of a running gateway.
pub fn runtime_info(dir: &std::path::Path) -> anyhow::Result<(SocketAddr, String)> {
    let p = dir.join("runtime.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("{} (is the gateway running?)", p.display()))?,
    )?;
    let addr: SocketAddr = v["quic"].as_str().context("runtime.json: quic")?.parse()?;
    let fp = v["fingerprint"]
        .as_str()
        .context("runtime.json: fingerprint")?
        .to_string();
    // The gateway may listen on 0.0.0.0; connect over loopback then.
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    Ok((addr, fp))
}

/// The client side of connection `i` of the harness.
pub fn client_config(addr: SocketAddr, trust: &Trust, key: &str, i: usize) -> ClientConfig {
    ClientConfig {
        addr,
        server_name: "localhost".into(),
        trust: trust.clone(),
        api_key: key.to_string(),
        client_name: format!("waping-loadtest/{i}"),
        connect_timeout: Duration::from_secs(10),
        identity: None,
    }
}

/// Starts the simulator if asked, connects `--connections` QUIC connections
/// with `--streams` streams each, and the event subscribers if `--subscribe`.
pub async fn connect(
    a: &RunArgs,
    live: &Arc<Live>,
) -> anyhow::Result<(Gateway, Vec<StreamEnds<GatewaySink, GatewayAnswers>>)> {
    if let Some(listen) = a.spawn_sim {
        let addr = crate::spawn_sim(listen, &a.sim).await?;
        eprintln!("simulated WhatsApp listening on tcp {addr}");
    }
    let workspaces = super::workspaces(&a.keys, false)?;
    let (mut addr, mut pin) = (a.addr, a.pin.clone());
    if let Some(dir) = &a.gateway_state {
        let (ra, rp) = runtime_info(dir)?;
        addr = addr.or(Some(ra));
        pin = pin.or(Some(rp));
    }
    let addr = addr.context("give --addr or --gateway-state")?;
    let trust = match (&a.ca_cert, &pin) {
        (Some(ca), _) => Trust::CaFile(ca.clone()),
        (None, Some(p)) => Trust::parse_pin(p)?,
        (None, None) => {
            bail!("give --pin, --ca-cert or --gateway-state so the gateway's certificate can be verified")
        }
    };
    let client_cfg = |key: &str, i: usize| client_config(addr, &trust, key, i);

    let mut event_tasks = Vec::new();
    if a.subscribe {
        for (i, w) in workspaces.iter().enumerate() {
            let mut conn = Connection::connect(&client_cfg(&w.key, 10_000 + i)).await?;
            let mut control = conn.take_control().context("control stream")?;
            control.send(&Frame::Subscribe { mask: subscribe::ALL }).await?;
            match control.next().await? {
                Some(Frame::Subscribed { .. }) => {}
                other => bail!("expected SUBSCRIBED, got {other:?}"),
            }
            let live = live.clone();
            // The gateway opens the event stream (a QUIC uni stream) when it has
            // the first event to write, and the peer only sees it then: accept it
            // in the task, not before the load that causes the events starts.
            event_tasks.push(tokio::spawn(async move {
                if let Ok(mut events) = conn.accept_event_stream().await {
                    while let Ok(Some(Frame::Event(_))) = events.next().await {
                        live.events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(control);
                drop(conn);
            }));
        }
    }

    let mut conns = Vec::new();
    let mut ends = Vec::new();
    for c in 0..a.connections {
        let w = &workspaces[c % workspaces.len()];
        let mut conn = Connection::connect(&client_cfg(&w.key, c))
            .await
            .with_context(|| format!("connection {c}"))?;
        let devices: Vec<Text> = w.devices.iter().map(|d| Text::from(d.as_str())).collect();
        if devices.is_empty() {
            bail!("workspace {} has no devices", w.id);
        }
        for s in 0..a.streams {
            let st = if s == 0 {
                conn.take_control().context("control stream")?
            } else {
                conn.open_stream().await?
            };
            let (writer, reader) = st.split();
            ends.push(StreamEnds {
                conn: c,
                stream: s,
                devices: devices.clone(),
                sink: GatewaySink(writer),
                answers: GatewayAnswers(reader),
            });
        }
        conns.push(conn);
    }
    Ok((Gateway { conns, event_tasks }, ends))
}
