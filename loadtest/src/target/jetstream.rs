//! The JetStream baseline: the same messages, published to a file-storage
//! stream of a NATS server with `async-nats`, the publish ack standing for
//! the gateway's ACCEPTED.
//!
//! Each message's payload is the encoded gateway SEND frame itself (the exact
//! bytes the gateway path writes for it), its `Nats-Msg-Id` header the
//! idempotency key (JetStream's deduplication, the counterpart of ours), its
//! subject `waping.lt.<workspace>.<device>` (prefix set by `--js-subject-prefix`). `--connections` N gives N NATS
//! clients; `--streams` S gives S independent publishers on each.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::context::{ContextBuilder, PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, Subject};
use bytes::{Bytes, BytesMut};
use clap::Args;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use waping_protocol::{Frame, Text};

use super::{Answer, Answers, Sink, StreamEnds, Target};
use crate::run::RunArgs;

/// Options of `run --target jetstream`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "JetStream target (--target jetstream)")]
pub struct JetStreamArgs {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Stream name (created with FILE storage and subjects `<prefix>.>` if missing).
    #[arg(long, default_value = "WAPING_LT")]
    pub js_stream: String,
    /// One stream per workspace instead, `<name>_<workspace>` with subjects
    /// `<prefix>.<workspace>.>` (JetStream stores and syncs each stream on its own).
    #[arg(long)]
    pub js_stream_per_workspace: bool,
    /// Subject prefix: messages go to `<prefix>.<workspace>.<device>`. Streams on one
    /// server cannot share subjects, so a second stream needs its own prefix.
    #[arg(long, default_value = "waping.lt")]
    pub js_subject_prefix: String,
    /// Delete and create the stream(s) before the run (a fresh, empty store). Deletes
    /// both layouts' streams, single and per workspace, as they would overlap.
    #[arg(long)]
    pub js_recreate: bool,
    /// Delete the stream(s) after the run.
    #[arg(long)]
    pub js_delete_after: bool,
    /// Stream size limit in bytes; the oldest messages are discarded beyond it.
    #[arg(long, default_value_t = 1 << 30)]
    pub js_max_bytes: u64,
    /// Deduplication window of the stream (`Nats-Msg-Id`).
    #[arg(long, default_value = "2m", value_parser = crate::run::parse_duration)]
    pub js_dedup_window: Duration,
}

/// One stream a run publishes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Its one subject filter.
    pub subjects: String,
}

impl JetStreamArgs {
    /// The single stream's subject filter: `<prefix>.>`.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.js_subject_prefix)
    }

    /// The per-workspace stream of `workspace`.
    fn workspace_stream(&self, workspace: &str) -> StreamSpec {
        StreamSpec {
            name: format!("{}_{}", self.js_stream, token(workspace)),
            subjects: format!("{}.{}.>", self.js_subject_prefix, token(workspace)),
        }
    }

    /// The streams a run over `workspaces` publishes to: one, or one per workspace.
    pub fn streams(&self, workspaces: &[&str]) -> Vec<StreamSpec> {
        if self.js_stream_per_workspace {
            workspaces.iter().map(|w| self.workspace_stream(w)).collect()
        } else {
            vec![StreamSpec {
                name: self.js_stream.clone(),
                subjects: self.subjects(),
            }]
        }
    }

    /// Every stream name `--js-recreate` clears for a run over `workspaces`:
    /// the single stream and the per-workspace ones, whichever layout is used.
    pub fn recreate_names(&self, workspaces: &[&str]) -> Vec<String> {
        std::iter::once(self.js_stream.clone())
            .chain(workspaces.iter().map(|w| self.workspace_stream(w).name))
            .collect()
    }

    /// The subject a device's messages go to.
    pub fn subject(&self, workspace: &str, device: &str) -> String {
        format!(
            "{}.{}.{}",
            self.js_subject_prefix,
            token(workspace),
            token(device)
        )
    }

    /// The configuration of one of the baseline's streams.
    pub fn stream_config(&self, spec: &StreamSpec) -> anyhow::Result<Config> {
        let p = &self.js_subject_prefix;
        if p.split('.').any(|t| t.is_empty() || t != token(t)) {
            bail!("--js-subject-prefix {p:?} is not a literal NATS subject");
        }
        if spec.name.is_empty() || spec.name != token(&spec.name) {
            bail!("stream name {:?} is not a valid JetStream name", spec.name);
        }
        Ok(Config {
            name: spec.name.clone(),
            subjects: vec![spec.subjects.clone()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_bytes: i64::try_from(self.js_max_bytes).context("--js-max-bytes")?,
            num_replicas: 1,
            duplicate_window: self.js_dedup_window,
            ..Default::default()
        })
    }
}

/// One subject token (or stream-name part) from an id: NATS tokens cannot
/// hold `.`, `*`, `>` or whitespace, stream names no path separators either.
fn token(id: &str) -> String {
    id.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The publish for one gateway SEND: the encoded frame as payload (appended to
/// `buf`, then split off) and the idempotency key as `Nats-Msg-Id`.
pub fn publish_for(send: &Frame, buf: &mut BytesMut) -> anyhow::Result<(u64, Bytes, Text)> {
    let Frame::Send {
        seq, idempotency_key, ..
    } = send
    else {
        bail!("not a SEND frame: {}", send.name());
    };
    buf.clear();
    waping_protocol::encode(send, buf)?;
    Ok((*seq, buf.split().freeze(), idempotency_key.clone()))
}

/// The clients, kept for the end of the run.
#[derive(Debug)]
pub struct JetStream {
    clients: Vec<Client>,
    ctx: jetstream::Context,
    streams: Vec<StreamSpec>,
    delete_after: bool,
}

/// An ack to wait for, tagged with the seq of its message.
struct Tagged {
    seq: u64,
    fut: <PublishAckFuture as IntoFuture>::IntoFuture,
}

impl Future for Tagged {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Answer> {
        let seq = self.seq;
        self.fut.as_mut().poll(cx).map(|r| answer_for(seq, r))
    }
}

fn answer_for(seq: u64, r: Result<PublishAck, PublishError>) -> Answer {
    match r {
        // A duplicate was not stored again: not a durable accept of this message.
        Ok(ack) if ack.duplicate => Answer::Rejected {
            reason: "jetstream-duplicate".into(),
        },
        Ok(_) => Answer::Accepted { seq },
        Err(e) => Answer::Rejected { reason: reason(&e) },
    }
}

fn reason(e: &PublishError) -> String {
    let k = match e.kind() {
        PublishErrorKind::StreamNotFound => "stream-not-found",
        PublishErrorKind::WrongLastMessageId => "wrong-last-message-id",
        PublishErrorKind::WrongLastSequence => "wrong-last-sequence",
        PublishErrorKind::TimedOut => "ack-timeout",
        PublishErrorKind::BrokenPipe => "broken-pipe",
        PublishErrorKind::MaxAckPending => "max-ack-pending",
        PublishErrorKind::MaxPayloadExceeded => "max-payload",
        PublishErrorKind::Other => "other",
    };
    format!("jetstream-{k}")
}

/// A pending ack, or a publish that failed before it was sent.
type Pending = Result<Tagged, String>;

/// Publishes one stream's messages.
pub struct JetStreamSink {
    ctx: jetstream::Context,
    subjects: Vec<Subject>,
    buf: BytesMut,
    queued: Vec<(usize, u64, Bytes, Text)>,
    acks: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for JetStreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSink")
            .field("subjects", &self.subjects)
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

impl Sink for JetStreamSink {
    fn queue(&mut self, device: usize, send: Frame) -> anyhow::Result<()> {
        let (seq, payload, key) = publish_for(&send, &mut self.buf)?;
        self.queued.push((device, seq, payload, key));
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let mut queued = std::mem::take(&mut self.queued);
        for (device, seq, payload, key) in queued.drain(..) {
            let msg = PublishMessage::build().payload(payload).message_id(key.as_str());
            let pending = match self.ctx.send_publish(self.subjects[device].clone(), msg).await {
                Ok(ack) => Ok(Tagged {
                    seq,
                    fut: ack.into_future(),
                }),
                Err(e) => Err(reason(&e)),
            };
            if self.acks.send(pending).is_err() {
                bail!("ack reader stopped");
            }
        }
        self.queued = queued;
        Ok(())
    }
}

/// Waits for one stream's acks, in whatever order they come.
pub struct JetStreamAnswers {
    rx: mpsc::UnboundedReceiver<Pending>,
    pending: FuturesUnordered<Tagged>,
    closed: bool,
}

impl std::fmt::Debug for JetStreamAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamAnswers")
            .field("pending", &self.pending.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Answers for JetStreamAnswers {
    async fn next(&mut self) -> anyhow::Result<Option<Answer>> {
        loop {
            if self.closed && self.pending.is_empty() {
                return Ok(None);
            }
            tokio::select! {
                Some(a) = self.pending.next(), if !self.pending.is_empty() => return Ok(Some(a)),
                p = self.rx.recv(), if !self.closed => match p {
                    Some(Ok(t)) => self.pending.push(t),
                    Some(Err(reason)) => return Ok(Some(Answer::Rejected { reason })),
                    None => self.closed = true,
                },
            }
        }
    }
}

impl Target for JetStream {
    type Sink = JetStreamSink;
    type Answers = JetStreamAnswers;
    const NAME: &'static str = "jetstream";
    const REPORTS: bool = false;

    async fn finish(self) -> anyhow::Result<()> {
        for spec in &self.streams {
            match self.ctx.get_stream(&spec.name).await {
                Ok(mut s) => {
                    let info = s.info().await?;
                    eprintln!(
                        "stream {} now holds {} messages, {} bytes (sequence {}..={})",
                        spec.name,
                        info.state.messages,
                        info.state.bytes,
                        info.state.first_sequence,
                        info.state.last_sequence
                    );
                }
                Err(e) => eprintln!("stream {}: {e}", spec.name),
            }
            if self.delete_after {
                self.ctx
                    .delete_stream(&spec.name)
                    .await
                    .with_context(|| format!("deleting stream {}", spec.name))?;
            }
        }
        for c in self.clients {
            let _ = c.flush().await;
        }
        Ok(())
    }
}

/// Deletes a stream; one that does not exist is fine.
async fn delete_if_present(ctx: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    match ctx.delete_stream(name).await {
        Ok(_) => {
            eprintln!("deleted stream {name}");
            Ok(())
        }
        Err(e) => {
            let not_found = matches!(
                e.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND
            );
            if not_found {
                Ok(())
            } else {
                Err(e).with_context(|| format!("deleting stream {name}"))
            }
        }
    }
}

/// Creates a stream if missing and checks an existing one is file-backed and
/// takes the baseline's subjects.
async fn ensure_stream(
    ctx: &jetstream::Context,
    js: &JetStreamArgs,
    spec: &StreamSpec,
) -> anyhow::Result<()> {
    let cfg = js.stream_config(spec)?;
    let mut stream = ctx
        .get_or_create_stream(cfg)
        .await
        .with_context(|| format!("creating stream {}", spec.name))?;
    let info = stream.info().await?;
    if info.config.storage != StorageType::File {
        bail!(
            "stream {} exists with {:?} storage; the baseline needs file storage (use --js-recreate)",
            spec.name,
            info.config.storage
        );
    }
    if !info.config.subjects.contains(&spec.subjects) {
        bail!(
            "stream {} exists with subjects {:?}, not {:?} (use --js-recreate)",
            spec.name,
            info.config.subjects,
            spec.subjects
        );
    }
    eprintln!(
        "stream {} ({}): file storage, {} messages, {} bytes, max_bytes {}, dedup window {:?}",
        spec.name,
        spec.subjects,
        info.state.messages,
        info.state.bytes,
        info.config.max_bytes,
        info.config.duplicate_window
    );
    Ok(())
}

/// Connects `--connections` NATS clients, sets up the stream, and gives each
/// client `--streams` publishers.
pub async fn connect(
    a: &RunArgs,
) -> anyhow::Result<(JetStream, Vec<StreamEnds<JetStreamSink, JetStreamAnswers>>)> {
    if a.subscribe {
        bail!("--subscribe applies to --target gateway only");
    }
    if a.spawn_sim.is_some() {
        bail!("--spawn-sim applies to --target gateway only");
    }
    let js = &a.js;
    let workspaces = super::workspaces(&a.keys, true)?;
    // Acks are awaited until the run's drain ends; the harness, not the
    // client library, bounds what is in flight.
    let ack_timeout = (a.duration + a.drain).max(Duration::from_secs(5));
    // Connection c uses workspace c mod W, so the first min(N, W) are in use.
    let used: Vec<&str> = workspaces
        .iter()
        .take(a.connections)
        .map(|w| w.id.as_str())
        .collect();
    let streams = js.streams(&used);
    let mut clients = Vec::new();
    let mut ends = Vec::new();
    let mut first_ctx = None;
    for c in 0..a.connections {
        let client = async_nats::ConnectOptions::new()
            .name(format!("waping-loadtest/{c}"))
            .connection_timeout(Duration::from_secs(5))
            .connect(js.nats_url.as_str())
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {} (client {c}); is nats-server running with JetStream (-js)?",
                    js.nats_url
                )
            })?;
        let ctx = ContextBuilder::new()
            .timeout(ack_timeout)
            .max_ack_inflight(1 << 20)
            .build(client.clone());
        if c == 0 {
            if js.js_recreate {
                for name in js.recreate_names(&used) {
                    delete_if_present(&ctx, &name).await?;
                }
            }
            for spec in &streams {
                ensure_stream(&ctx, js, spec).await?;
            }
            first_ctx = Some(ctx.clone());
        }
        let w = &workspaces[c % workspaces.len()];
        if w.devices.is_empty() {
            bail!("workspace {} has no devices", w.id);
        }
        let subjects: Vec<Subject> = w
            .devices
            .iter()
            .map(|d| Subject::from(js.subject(&w.id, d)))
            .collect();
        let devices: Vec<Text> = w.devices.iter().map(|d| Text::from(d.as_str())).collect();
        for s in 0..a.streams {
            let (tx, rx) = mpsc::unbounded_channel();
            ends.push(StreamEnds {
                conn: c,
                stream: s,
                devices: devices.clone(),
                sink: JetStreamSink {
                    ctx: ctx.clone(),
                    subjects: subjects.clone(),
                    buf: BytesMut::with_capacity(64 * 1024),
                    queued: Vec::new(),
                    acks: tx,
                },
                answers: JetStreamAnswers {
                    rx,
                    pending: FuturesUnordered::new(),
                    closed: false,
                },
            });
        }
        clients.push(client);
    }
    let ctx = first_ctx.context("no connection")?;
    Ok((
        JetStream {
            clients,
            ctx,
            streams,
            delete_after: js.js_delete_after,
        },
        ends,
    ))
}
