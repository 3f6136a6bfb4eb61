//! One bidirectional stream: decode requests, answer on the same stream,
//! and write each accepted message's delivery report when it arrives.
//!
//! Responses produced while handling one read are encoded into one buffer
//! and written together, so a client that batches gets batched answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{broadcast, mpsc};
use waping_protocol::conn::{ServerAction, ServerConn};
use waping_protocol::{
    DecodeError, Decoder, DeviceAction, ErrorCode, Event, EventKind, Frame, LinkMethod, Text, subscribe,
    validate,
};

use super::{ConnCtx, close};
use crate::admit::{self, NotAdmitted, ceil_ms};
use crate::control::roles::Permission;
use crate::idempotency::ClaimToken;
use crate::session::{Outbound, ReplySink, StreamReply};
use crate::workspace::WsEvent;

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Bad bytes.
    Decode(DecodeError),
    /// The stream or connection broke.
    Io(quinn::ReadError),
}

/// A stream with its buffers.
pub(crate) struct FrameIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbuf: BytesMut,
    out: BytesMut,
    decoder: Decoder,
    recv_done: bool,
}

impl FrameIo {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream, decoder: Decoder) -> Self {
        FrameIo {
            send,
            recv,
            inbuf: super::new_buf(),
            out: super::new_buf(),
            decoder,
            recv_done: false,
        }
    }

    /// Reads until one frame is complete (handshake only; the stream loop decodes in place).
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.inbuf).map_err(ReadError::Decode)? {
                return Ok(Some(f));
            }
            match self
                .recv
                .read_chunk(64 * 1024, true)
                .await
                .map_err(ReadError::Io)?
            {
                Some(c) => self.inbuf.extend_from_slice(&c.bytes),
                None => return Ok(None),
            }
        }
    }

    /// Encodes a frame into the output buffer.
    pub(crate) fn queue(&mut self, f: &Frame) {
        if let Err(e) = waping_protocol::encode(f, &mut self.out) {
            // Only our own frames are encoded here; a failure is a gateway bug, not the client's.
            tracing::error!(frame = f.name(), error = %e, "failed to encode a response");
        }
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        if !self.out.is_empty() {
            let chunk = self.out.split().freeze();
            self.send.write_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Sends ERROR, lets it reach the client, and closes the connection with the same code.
    pub(crate) async fn fail(&mut self, conn: &quinn::Connection, code: ErrorCode, message: &str) {
        let message: String = message.chars().take(1024).collect();
        self.queue(&Frame::Error {
            code,
            retry_after_ms: 0,
            message: Text::from(message.clone()),
        });
        if self.flush().await.is_ok() && self.send.finish().is_ok() {
            // Closing at once could discard the ERROR frame still in flight; wait
            // (briefly) for the client to acknowledge or stop the stream.
            let _ = tokio::time::timeout(Duration::from_millis(500), self.send.stopped()).await;
        }
        close(conn, code, &message);
    }
}

/// Serves one stream until the client finishes it and every report is written, or the connection ends.
pub(crate) async fn run(ctx: Arc<ConnCtx>, mut io: FrameIo, mut state: ServerConn, control: bool) {
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    // Seqs we still owe the client something for (ACCEPTED or a final REPORT); each holds
    // one unit of the connection's in-flight allowance.
    let mut pending: HashSet<u64> = HashSet::new();
    let mut staged: Vec<Staged> = Vec::new();
    let mut reports = Vec::with_capacity(256);
    let mut shutdown = ctx.shared.shutdown.clone();
    let mut drain_seen = false;
    // DEVICE_CONTROL answers come back here from their tasks; the stream stays open until
    // every one is written (PROTOCOL.md 6.7).
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Frame>();
    let mut ctl_pending = 0usize;
    // A resumable subscription (SUBSCRIBE_FROM, version 3) makes this a subscription stream.
    let mut log_sub: Option<LogSub> = None;
    let mut log_open: Option<crate::subscribe::Request> = None;
    loop {
        loop {
            match io.decoder.decode(&mut io.inbuf) {
                Ok(Some(f)) => {
                    let r = match f {
                        Frame::DeviceControl { .. } => {
                            device_control(&ctx, &mut io, &mut state, f, &ctl_tx, &mut ctl_pending)
                        }
                        Frame::SubscribeFrom { .. } => {
                            let busy = log_sub.is_some() || log_open.is_some();
                            subscribe_from(&ctx, &mut io, &mut state, f, control, busy, &mut log_open)
                        }
                        f => handle(&ctx, &mut io, &mut state, f, &mut pending, &mut staged, &reply_tx),
                    };
                    if let Err((code, msg)) = r {
                        commit_staged(&ctx, &mut staged, &reply_tx);
                        ctx.shared.metrics.connection_error(code);
                        io.fail(&ctx.conn, code, &msg).await;
                        release(&ctx, &pending);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    commit_staged(&ctx, &mut staged, &reply_tx);
                    ctx.shared.metrics.connection_error(e.code());
                    tracing::debug!(conn = ctx.id, error = %e, "bad frame");
                    io.fail(&ctx.conn, e.code(), &e.to_string()).await;
                    release(&ctx, &pending);
                    return;
                }
            }
        }
        // Everything this read produced goes to the journal as one append: one wake-up of the
        // writer, and one share of the next group commit.
        commit_staged(&ctx, &mut staged, &reply_tx);
        if let Some(req) = log_open.take() {
            log_sub = open_log_sub(&ctx, &mut io, &req).await;
        }
        if io.flush().await.is_err() {
            release(&ctx, &pending);
            return;
        }
        let draining = ctx.draining.load(Ordering::Acquire);
        if pending.is_empty()
            && ctl_pending == 0
            && (io.recv_done || draining)
            && (log_sub.is_none() || draining)
        {
            // Closing the connection right after would discard reports still in
            // flight; wait until the client has acknowledged every byte.
            if io.send.finish().is_ok() {
                let grace = Duration::from_millis(ctx.shared.cfg.drain_timeout_ms.max(100));
                let _ = tokio::time::timeout(grace, io.send.stopped()).await;
            }
            return;
        }
        tokio::select! {
            r = io.recv.read_chunk(64 * 1024, true), if !io.recv_done => match r {
                Ok(Some(c)) => io.inbuf.extend_from_slice(&c.bytes),
                Ok(None) => {
                    io.recv_done = true;
                    if !io.inbuf.is_empty() {
                        let code = ErrorCode::MALFORMED_FRAME;
                        ctx.shared.metrics.connection_error(code);
                        io.fail(&ctx.conn, code, "stream ended inside a frame").await;
                        release(&ctx, &pending);
                        return;
                    }
                }
                Err(_) => {
                    release(&ctx, &pending);
                    return;
                }
            },
            _ = reply_rx.recv_many(&mut reports, 256) => {
                for r in reports.drain(..) {
                    let (seq, done) = match &r {
                        StreamReply::Accepted { seq, id } => {
                            io.queue(&Frame::Accepted { seq: *seq, message_id: *id });
                            (*seq, false)
                        }
                        StreamReply::Duplicate { seq, id } => {
                            io.queue(&Frame::Accepted { seq: *seq, message_id: *id });
                            (*seq, true)
                        }
                        StreamReply::Rejected { seq, code, retry_after_ms, reason } => {
                            // Refused after admission passed (the journal append failed, or
                            // the original of a duplicate was not persisted): not yet counted
                            // for the workspace.
                            ctx.ws.count_rejected(*code);
                            reject(&ctx, &mut io, *seq, *code, *retry_after_ms, reason);
                            (*seq, true)
                        }
                        // DEFERRED also ends what the stream owes: a retry can take hours and must
                        // not hold the connection's in-flight allowance.
                        StreamReply::Report(rep) => {
                            io.queue(&Frame::Report(rep.clone()));
                            (rep.seq, true)
                        }
                    };
                    if done && pending.remove(&seq) {
                        ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            Some(answer) = ctl_rx.recv() => {
                ctl_pending -= 1;
                io.queue(&answer);
            }
            // The client stopped its subscription (STOP_SENDING): nothing more is wanted here.
            _ = io.send.stopped(), if log_sub.is_some() => {
                release(&ctx, &pending);
                return;
            }
            page = next_log_page(&mut log_sub) => match page {
                Ok(items) => queue_log_page(&mut io, items),
                Err(e) => {
                    tracing::warn!(conn = ctx.id, error = %e, "resumable subscription ended: event log");
                    log_sub = None;
                }
            },
            _ = super::wait_shutdown(&mut shutdown), if !drain_seen => {
                drain_seen = true;
                ctx.draining.store(true, Ordering::Release);
                state.drain();
                if control {
                    io.queue(&Frame::Goodbye {
                        code: ErrorCode::SHUTTING_DOWN,
                        message: Text::from("gateway is draining; resend unacknowledged messages elsewhere"),
                    });
                }
            }
        }
    }
}

/// Gives back the connection-wide in-flight allowance held by a dying stream.
fn release(ctx: &ConnCtx, pending: &HashSet<u64>) {
    ctx.in_flight.fetch_sub(pending.len() as u32, Ordering::AcqRel);
}

type Fatal = (ErrorCode, String);

fn handle(
    ctx: &Arc<ConnCtx>,
    io: &mut FrameIo,
    state: &mut ServerConn,
    frame: Frame,
    pending: &mut HashSet<u64>,
    staged: &mut Vec<Staged>,
    reply: &ReplySink,
) -> Result<(), Fatal> {
    key_still_valid(ctx)?;
    if let Frame::Send {
        seq,
        idempotency_key,
        device_id,
        recipient,
        body,
    } = frame
    {
        // Checked before the state machine so draining refuses one message, not the connection.
        if ctx.draining.load(Ordering::Acquire) && state.is_open() {
            state.drain();
        }
        if !state.is_open() {
            if matches!(state, ServerConn::Draining) {
                reject(
                    ctx,
                    io,
                    seq,
                    ErrorCode::SHUTTING_DOWN,
                    1000,
                    "gateway is draining",
                );
                return Ok(());
            }
            return Err((ErrorCode::UNEXPECTED_FRAME, "SEND not allowed now".into()));
        }
        handle_send(
            ctx,
            io,
            seq,
            idempotency_key,
            device_id,
            recipient,
            body,
            pending,
            staged,
            reply,
        );
        return Ok(());
    }
    match state.on_frame(&frame).map_err(|v| (v.code, v.message))? {
        ServerAction::Handle => {}
        ServerAction::Drain => {
            ctx.draining.store(true, Ordering::Release);
            return Ok(());
        }
        ServerAction::PeerError => {
            if let Frame::Error { code, message, .. } = &frame {
                tracing::info!(conn = ctx.id, %code, %message, "client reported an error");
            }
            close(&ctx.conn, ErrorCode::INTERNAL, "peer error");
            return Ok(());
        }
        ServerAction::Authenticate { .. } => {
            return Err((ErrorCode::UNEXPECTED_FRAME, "second HELLO".into()));
        }
        // Only DEVICE_CONTROL is refused per request, and it is handled in `device_control`.
        ServerAction::Refuse { code, message } => return Err((code, message)),
    }
    match frame {
        Frame::Ping { nonce } => io.queue(&Frame::Pong { nonce }),
        Frame::Pong { .. } => {}
        Frame::Subscribe { mask } => {
            // Bits of a later version than the connection's are never granted (PROTOCOL.md 6.6),
            // nor bits the key's role does not allow.
            let granted =
                mask & subscribe::allowed(state.version().unwrap_or(1)) & subscribe_allowed(ctx.key.role);
            ctx.subscription.store(granted, Ordering::Release);
            // One event stream per connection: later SUBSCRIBEs (even after a mask of 0) only
            // change the mask it filters with.
            if granted != 0 && !ctx.events_open.swap(true, Ordering::AcqRel) {
                // Subscribe before answering so no event published after SUBSCRIBED is missed.
                let rx = ctx.ws.events.subscribe();
                tokio::spawn(event_stream(ctx.clone(), rx));
            }
            io.queue(&Frame::Subscribed { mask: granted });
        }
        other => {
            return Err((
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} not allowed here", other.name()),
            ));
        }
    }
    Ok(())
}

// ---- SUBSCRIBE_FROM (protocol version 3): resumable subscriptions from the event log ---------

/// A stream's resumable subscription: its log reader, counted while it lives.
struct LogSub {
    reader: Box<crate::subscribe::Reader>,
    _active: crate::subscribe::Active,
}

fn refuse_subscription(io: &mut FrameIo, code: ErrorCode, detail: String) {
    io.queue(&Frame::SubscribedFrom {
        code,
        cursor: 0,
        oldest: 0,
        detail: Text::from(detail),
    });
}

/// Checks a SUBSCRIBE_FROM (state, version, stream, permission, fields); a valid one is left
/// in `open` for the stream loop to open (reading the log's start is async). Refusals are
/// answered here and keep the connection; a violation (too old a version) is fatal.
fn subscribe_from(
    ctx: &Arc<ConnCtx>,
    io: &mut FrameIo,
    state: &mut ServerConn,
    frame: Frame,
    control: bool,
    busy: bool,
    open: &mut Option<crate::subscribe::Request>,
) -> Result<(), Fatal> {
    key_still_valid(ctx)?;
    if ctx.draining.load(Ordering::Acquire) && state.is_open() {
        state.drain();
    }
    match state.on_frame(&frame).map_err(|v| (v.code, v.message))? {
        ServerAction::Handle => {}
        ServerAction::Refuse { code, message } => {
            refuse_subscription(io, code, message);
            return Ok(());
        }
        other => {
            return Err((
                ErrorCode::UNEXPECTED_FRAME,
                format!("SUBSCRIBE_FROM gave {other:?}"),
            ));
        }
    }
    let Frame::SubscribeFrom {
        cursor,
        types,
        devices,
    } = frame
    else {
        return Ok(());
    };
    if control {
        refuse_subscription(
            io,
            ErrorCode::UNEXPECTED_FRAME,
            "SUBSCRIBE_FROM belongs on a request stream, not the control stream".into(),
        );
        return Ok(());
    }
    if busy {
        refuse_subscription(
            io,
            ErrorCode::UNEXPECTED_FRAME,
            "this stream already carries a subscription; open another stream".into(),
        );
        return Ok(());
    }
    if !ctx.key.role.allows(Permission::EventsSubscribe) {
        refuse_subscription(
            io,
            ErrorCode::FORBIDDEN,
            "the key's role does not grant events.subscribe".into(),
        );
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut req = crate::subscribe::Request {
        cursor,
        ..Default::default()
    };
    if !types.is_empty() {
        req.filter.types = Some(crate::subscribe::parse_types(types.as_str(), &mut problems));
    }
    if !devices.is_empty() {
        req.filter.devices = Some(crate::subscribe::parse_devices(devices.as_str(), &mut problems));
    }
    if !problems.is_empty() {
        refuse_subscription(io, ErrorCode::INVALID_FIELD, problems.join("; "));
        return Ok(());
    }
    if !ctx.key.role.allows(Permission::DevicesWrite) {
        req.filter
            .forbidden
            .insert(waping_events::EventType::DeviceLinkCode);
    }
    *open = Some(req);
    Ok(())
}

/// Opens the log reader of a checked SUBSCRIBE_FROM and answers SUBSCRIBED_FROM.
async fn open_log_sub(ctx: &ConnCtx, io: &mut FrameIo, req: &crate::subscribe::Request) -> Option<LogSub> {
    use crate::subscribe::{Active, Reader, StartError, Transport};
    let Some(store) = ctx.shared.control.webhook_runtime().map(|rt| rt.event_store()) else {
        refuse_subscription(io, ErrorCode::INTERNAL, StartError::NoLog.to_string());
        return None;
    };
    match Reader::open(store, &ctx.ws.id, req).await {
        Ok((reader, start)) => {
            if start.gap_until.is_some() {
                crate::subscribe::count_gap(Transport::Quic);
            }
            io.queue(&Frame::SubscribedFrom {
                code: ErrorCode(0),
                cursor: start.cursor,
                oldest: start.gap_until.unwrap_or(0),
                detail: Text::default(),
            });
            Some(LogSub {
                reader: Box::new(reader),
                _active: Active::new(Transport::Quic),
            })
        }
        Err(e) => {
            refuse_subscription(io, ErrorCode::INVALID_FIELD, e.to_string());
            None
        }
    }
}

/// The next page of the stream's subscription; never resolves without one.
async fn next_log_page(sub: &mut Option<LogSub>) -> Result<Vec<crate::subscribe::Item>, String> {
    match sub {
        Some(s) => s.reader.next_page().await,
        None => std::future::pending().await,
    }
}

/// Encodes a page as LOG_EVENT frames (written by the loop's next flush, which waits for the
/// stream's flow control: a slow reader holds back only its own subscription).
fn queue_log_page(io: &mut FrameIo, items: Vec<crate::subscribe::Item>) {
    use crate::subscribe::Item;
    let mut sent = 0;
    for item in items {
        let frame = match item {
            Item::Event { cursor, event } => {
                sent += 1;
                Frame::LogEvent {
                    cursor,
                    timestamp_ms: event.at_ms,
                    readable: true,
                    text: Text::from(event.to_json()),
                }
            }
            Item::Unreadable { cursor, reason } => Frame::LogEvent {
                cursor,
                timestamp_ms: 0,
                readable: false,
                text: Text::from(reason),
            },
        };
        io.queue(&frame);
    }
    crate::subscribe::count_sent(crate::subscribe::Transport::Quic, sent);
}

// ---- DEVICE_CONTROL (protocol version 2): link, unlink, disable, enable, status --------------

/// Checks a DEVICE_CONTROL against the connection's state and its fields, then lets a task
/// apply it through the session manager; the answer comes back on `answers`.
/// A refusal is answered here; a violation (a version 1 connection) is returned as fatal.
fn device_control(
    ctx: &Arc<ConnCtx>,
    io: &mut FrameIo,
    state: &mut ServerConn,
    frame: Frame,
    answers: &mpsc::UnboundedSender<Frame>,
    in_progress: &mut usize,
) -> Result<(), Fatal> {
    key_still_valid(ctx)?;
    // Like a SEND: a gateway drain seen by another stream refuses this request, not the connection.
    if ctx.draining.load(Ordering::Acquire) && state.is_open() {
        state.drain();
    }
    let action = state.on_frame(&frame).map_err(|v| (v.code, v.message))?;
    let Frame::DeviceControl {
        req,
        device_id,
        action: what,
    } = frame
    else {
        return Ok(());
    };
    let refuse = |io: &mut FrameIo, code, detail: String| {
        io.queue(&Frame::DeviceControlResult {
            req,
            code,
            state: None,
            detail: Text::from(detail),
        });
        Ok(())
    };
    match action {
        ServerAction::Handle => {}
        ServerAction::Refuse { code, message } => return refuse(io, code, message),
        other => {
            return Err((
                ErrorCode::UNEXPECTED_FRAME,
                format!("DEVICE_CONTROL gave {other:?}"),
            ));
        }
    }
    let action = what;
    if let Err(e) = validate::device_control(&device_id, &action) {
        return refuse(io, e.code, e.message);
    }
    let need = frame_permission(&action);
    if !ctx.key.role.allows(need) {
        return refuse(
            io,
            ErrorCode::FORBIDDEN,
            format!("the key's role does not grant {}", need.as_str()),
        );
    }
    use crate::session::DeviceCommand;
    use crate::upstream::LinkMethod as Method;
    let name = action.as_str();
    let cmd = match action {
        DeviceAction::Link(LinkMethod::Qr) => DeviceCommand::Link(Method::Qr),
        DeviceAction::Link(LinkMethod::PairingCode { phone }) => DeviceCommand::Link(Method::PairingCode {
            phone: phone.to_string(),
        }),
        DeviceAction::Unlink => DeviceCommand::Unlink,
        DeviceAction::Disable => DeviceCommand::Disable,
        DeviceAction::Enable => DeviceCommand::Enable,
        DeviceAction::Status => DeviceCommand::Status,
    };
    *in_progress += 1;
    let ctx = ctx.clone();
    let answers = answers.clone();
    tokio::spawn(async move {
        let audit_action = crate::audit::device_action(&cmd);
        if audit_action.is_some()
            && let Err(crate::control::Error::Code { code, message, .. }) = ctx.shared.control.audit.gate()
        {
            let _ = answers.send(Frame::DeviceControlResult {
                req,
                code,
                state: None,
                detail: Text::from(message),
            });
            return;
        }
        let result = ctx.shared.sessions.control(ctx.ws.idx, &device_id, cmd).await;
        // An unknown device is answered as such and not recorded: it names nothing.
        if let Some(action) = audit_action
            && !matches!(result, Err(crate::session::ControlError::UnknownDevice))
        {
            let actor = waping_audit::Actor::Key {
                id: ctx.key.id.clone(),
            };
            let ev = crate::audit::device_event(action, actor, &ctx.ws.id, device_id.as_str(), &result)
                .source(ctx.conn.remote_address().ip());
            ctx.shared.control.audit.emit_durable(ev).await;
        }
        let answer = match result {
            Ok(st) => {
                tracing::info!(conn = ctx.id, workspace = %ctx.ws.id, device = %device_id, action = name,
                    state = st.as_str(), "device control");
                Frame::DeviceControlResult {
                    req,
                    code: ErrorCode(0),
                    state: Some(st),
                    detail: Text::default(),
                }
            }
            Err(e) => {
                tracing::info!(conn = ctx.id, workspace = %ctx.ws.id, device = %device_id, action = name,
                    code = %e.code(), error = %e, "device control refused");
                Frame::DeviceControlResult {
                    req,
                    code: e.code(),
                    state: None,
                    detail: Text::from(e.to_string()),
                }
            }
        };
        let _ = answers.send(answer);
    });
    Ok(())
}

/// The permission a DEVICE_CONTROL action needs (the QUIC side of the role matrix; SEND
/// needs `messages.send`, SUBSCRIBE `events.subscribe`, link codes `devices.write`).
pub(crate) fn frame_permission(action: &DeviceAction) -> Permission {
    match action {
        DeviceAction::Status => Permission::DevicesRead,
        _ => Permission::DevicesWrite,
    }
}

/// Subscription bits a role may receive: nothing without `events.subscribe`, and QR refs
/// and pairing codes (which let a phone link to the workspace) only with `devices.write`.
pub(crate) fn subscribe_allowed(role: crate::control::roles::Role) -> u32 {
    if !role.allows(Permission::EventsSubscribe) {
        return 0;
    }
    if role.allows(Permission::DevicesWrite) {
        u32::MAX
    } else {
        !subscribe::LINK_CODES
    }
}

/// A key revoked or expired while the connection was open ends it: it must not keep
/// working until the client reconnects.
fn key_still_valid(ctx: &ConnCtx) -> Result<(), Fatal> {
    ctx.key
        .check(crate::unix_ms())
        .map_err(|e| (ErrorCode::AUTH_FAILED, format!("API key {e}")))
}

fn reject(ctx: &ConnCtx, io: &mut FrameIo, seq: u64, code: ErrorCode, retry_after_ms: u32, reason: &str) {
    ctx.shared.metrics.rejected(code);
    io.queue(&Frame::Rejected {
        seq,
        code,
        retry_after_ms,
        reason: Text::from(reason),
    });
}

/// A SEND that passed every check and waits for its journal append.
pub(crate) struct Staged {
    seq: u64,
    token: ClaimToken,
    permit: crate::session::Permit,
    out: Outbound,
    /// Taken when the batch is appended.
    record: Option<waping_journal::Record>,
}

#[allow(clippy::too_many_arguments)]
fn handle_send(
    ctx: &Arc<ConnCtx>,
    io: &mut FrameIo,
    seq: u64,
    idempotency_key: Text,
    device_id: Text,
    recipient: Text,
    body: waping_protocol::Body,
    pending: &mut HashSet<u64>,
    staged: &mut Vec<Staged>,
    reply: &ReplySink,
) {
    if !ctx.key.role.allows(Permission::MessagesSend) {
        ctx.shared.metrics.received.increment(1);
        ctx.ws.count_received();
        ctx.ws.count_rejected(ErrorCode::FORBIDDEN);
        return reject(
            ctx,
            io,
            seq,
            ErrorCode::FORBIDDEN,
            0,
            "the key's role does not grant messages.send",
        );
    }
    if pending.contains(&seq) {
        ctx.shared.metrics.received.increment(1);
        ctx.ws.count_received();
        ctx.ws.count_rejected(ErrorCode::DUPLICATE_SEQ);
        return reject(
            ctx,
            io,
            seq,
            ErrorCode::DUPLICATE_SEQ,
            0,
            "seq is still in flight on this stream",
        );
    }
    let max = ctx.shared.cfg.max_in_flight;
    if ctx.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
        ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
        ctx.shared.metrics.received.increment(1);
        ctx.ws.count_received();
        ctx.ws.count_rejected(ErrorCode::TOO_MANY_IN_FLIGHT);
        ctx.shared
            .control
            .audit
            .note_rejection(&ctx.ws.id, ErrorCode::TOO_MANY_IN_FLIGHT);
        return reject(
            ctx,
            io,
            seq,
            ErrorCode::TOO_MANY_IN_FLIGHT,
            10,
            "wait for reports before sending more",
        );
    }
    let sh = &ctx.shared;
    let node = admit::Node {
        sessions: &sh.sessions,
        durable: &sh.durable,
        ids: &sh.ids,
        clock: sh.clock,
        metrics: &sh.metrics,
        audit: &sh.control.audit,
    };
    let req = admit::Request {
        idempotency_key,
        device: device_id,
        recipient,
        body,
        seq,
        reply: Some(reply.clone()),
        submitted_by: ctx.key.id.clone(),
    };
    match admit::admit(node, &ctx.ws, req) {
        Ok(a) => {
            pending.insert(seq);
            staged.push(Staged {
                seq,
                token: a.token,
                permit: a.permit,
                out: a.out,
                record: Some(a.record),
            });
        }
        Err(NotAdmitted::Refused(r)) => {
            ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
            reject(ctx, io, seq, r.code, r.retry_after_ms, &r.reason);
        }
        Err(NotAdmitted::Duplicate { id, pending: None }) => {
            ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
            io.queue(&Frame::Accepted { seq, message_id: id });
        }
        Err(NotAdmitted::Duplicate {
            id,
            pending: Some(wait),
        }) => {
            // The original is still being written: answer when it is durable, without
            // stalling this stream.
            pending.insert(seq);
            let reply = reply.clone();
            tokio::spawn(async move {
                let r = if wait.wait().await {
                    StreamReply::Duplicate { seq, id }
                } else {
                    StreamReply::Rejected {
                        seq,
                        code: ErrorCode::INTERNAL,
                        retry_after_ms: 100,
                        reason: "the original message with this idempotency key was not persisted; resend"
                            .into(),
                    }
                };
                let _ = reply.send(r);
            });
        }
    }
}

/// Sends what one read staged to the journal; a task answers when the group commit is done.
///
/// The task, not the stream, finishes the batch, so a message that became durable is queued
/// for delivery even if its stream or connection is gone by then (the client will resend and
/// get the same id from the idempotency index).
fn commit_staged(ctx: &Arc<ConnCtx>, staged: &mut Vec<Staged>, reply: &ReplySink) {
    if staged.is_empty() {
        return;
    }
    let mut batch = std::mem::take(staged);
    let records = batch.iter_mut().filter_map(|s| s.record.take()).collect();
    let durable = ctx.shared.durable.clone();
    let metrics = ctx.shared.metrics.clone();
    let appended = durable.journal.append(records);
    let reply = reply.clone();
    tokio::spawn(async move {
        match appended.await {
            Ok(_) => {
                for s in batch {
                    durable.idem.commit(s.token);
                    metrics.accepted.increment(1);
                    // ACCEPTED is queued before the message can produce a report.
                    let _ = reply.send(StreamReply::Accepted {
                        seq: s.seq,
                        id: s.out.id,
                    });
                    s.permit.send(s.out);
                }
            }
            Err(e) => {
                let (code, after) = match e.retry_after() {
                    Some(d) => (ErrorCode::OVERLOADED, ceil_ms(d)),
                    None => {
                        metrics::counter!("waping_journal_errors_total", "op" => "accept").increment(1);
                        tracing::error!(error = %e, "journal append failed; refusing the batch");
                        (ErrorCode::INTERNAL, 1000)
                    }
                };
                for s in batch {
                    // The slot reservation is dropped with the permit; the key is free for the resend.
                    durable.idem.release(s.token);
                    let _ = reply.send(StreamReply::Rejected {
                        seq: s.seq,
                        code,
                        retry_after_ms: after,
                        reason: format!("not persisted: {e}"),
                    });
                }
            }
        }
    });
}

/// Pushes workspace events to the client on a server-opened unidirectional stream.
async fn event_stream(ctx: Arc<ConnCtx>, mut rx: broadcast::Receiver<Arc<WsEvent>>) {
    let m = &ctx.shared.metrics;
    m.subscriptions_active.increment(1.0);
    let result = async {
        let mut send = ctx.conn.open_uni().await?;
        let mut seq = 0u64;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = ctx.conn.closed() => return anyhow::Ok(()),
            };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    r => batch.push(r.map_err(|e| match e {
                        broadcast::error::TryRecvError::Lagged(n) => broadcast::error::RecvError::Lagged(n),
                        _ => broadcast::error::RecvError::Closed,
                    })),
                }
            }
            let mask = ctx.subscription.load(Ordering::Acquire);
            let mut sent = 0;
            for item in batch {
                let (ts, kind) = match item {
                    Ok(ev) => {
                        // LAGGED has no bit: it is sent whatever the mask.
                        let bit = ev.kind.mask_bit().unwrap_or(u32::MAX);
                        if mask & bit == 0 {
                            continue;
                        }
                        (ev.timestamp_ms, ev.kind.clone())
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        m.subscriber_lagged(n);
                        (crate::unix_ms(), EventKind::Lagged { missed: n })
                    }
                    Err(broadcast::error::RecvError::Closed) => return anyhow::Ok(()),
                };
                seq += 1;
                sent += 1;
                waping_protocol::encode(
                    &Frame::Event(Event {
                        seq,
                        timestamp_ms: ts,
                        kind,
                    }),
                    &mut buf,
                )?;
            }
            if !buf.is_empty() {
                send.write_chunk(buf.split().freeze()).await?;
                m.events_sent(sent);
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(conn = ctx.id, error = %e, "event stream ended");
    }
    m.subscriptions_active.decrement(1.0);
}
