//! `GET /v1/events/stream`: live events over a WebSocket, filtered by type and device,
//! resumable from a cursor (docs/events.md "Live subscriptions", design 0020).
//!
//! The access layer has already authenticated the caller (bearer header, or the
//! `waping.key.<key>` subprotocol for browsers) and checked `events.subscribe`; refusals
//! there are HTTP answers before any upgrade. This handler parses the query and the cursor,
//! upgrades, and then runs one task per subscriber that reads the event log from its cursor
//! ([`crate::subscribe::Reader`]) and writes one text message per event.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_websockets::{CloseCode, Message};
use waping_events::EventType;
use waping_protocol::ErrorCode;

use super::{Api, ApiError, Caller};
use crate::control::Principal;
use crate::control::roles::Permission;
use crate::subscribe::{self, Item, Reader, Transport};

/// The route.
pub const ROUTE: &str = "/v1/events/stream";

/// The subprotocol a browser offers with its key (`waping.key.<key>`), and the one the
/// server answers with (never the key).
pub const PROTOCOL: &str = "waping.v1";
/// Prefix of the subprotocol entry that carries an API key.
pub const KEY_PROTOCOL_PREFIX: &str = "waping.key.";

/// How often the server pings; a subscriber silent (no pong, nothing) for three intervals
/// is closed.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Longest a single page may take to write before the subscriber is dropped as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Close codes (4000 + the HTTP status they correspond to), documented in docs/events.md.
pub mod close {
    /// The query was refused (a JSON `error` message listing every problem precedes it).
    pub const BAD_REQUEST: u16 = 4400;
    /// The API key was revoked, expired or its workspace deleted while the stream was open.
    pub const AUTH: u16 = 4401;
    /// The subscriber did not answer pings.
    pub const TIMEOUT: u16 = 4408;
    /// The event log is not running (or failed).
    pub const UNAVAILABLE: u16 = 4503;
}

/// What the connection task needs from the HTTP server: its shutdown signal and its task
/// tracker (so a drain waits for subscribers to be told and closed).
#[derive(Debug, Clone)]
pub struct Upgrades {
    /// Flips to true when the node drains.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The server's connection tracker.
    pub tracker: tokio_util::task::TaskTracker,
}

/// The API key a browser passed as a subprotocol (`Sec-WebSocket-Protocol: waping.v1,
/// waping.key.<key>`), for the access layer.
pub fn key_from_protocols(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX))
}

fn offered(headers: &HeaderMap, proto: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == proto)
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

fn bad_upgrade(msg: &str) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::INVALID_FIELD, msg).into_response()
}

/// What the subscriber task starts with once upgraded.
enum Opening {
    Run(Box<Reader>, subscribe::Start),
    Refuse(u16, serde_json::Value),
}

/// Live events over a WebSocket (`Upgrade: websocket`): one JSON text message per event,
/// `{"cursor": <seq>, "event": {…}}`, filtered by `types` and `devices`, resuming after
/// `cursor` (absent: from now). Browsers may pass the key as the subprotocol
/// `waping.key.<key>` next to `waping.v1`. Refusals after the upgrade are an `error`
/// message and a 44xx close code; see docs/events.md "Live subscriptions".
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", security(("api_key" = [])),
    params(
        ("types" = Option<String>, Query, description = "Comma-separated event types (default: all)"),
        ("devices" = Option<String>, Query, description = "Comma-separated device ids (default: all)"),
        ("cursor" = Option<u64>, Query, description = "Resume after this cursor (default: from now)"),
    ),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = "4XX", body = super::ErrorBody)))]
pub async fn stream(State(api): State<Arc<Api>>, Caller(p): Caller, mut req: Request) -> Response {
    let Principal::Key(key) = p else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::FORBIDDEN,
            "a workspace key is required",
        )
        .into_response();
    };
    let h = req.headers();
    let is_upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return bad_upgrade("this endpoint is a WebSocket: send `Upgrade: websocket` (see docs/events.md)");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return bad_upgrade("Sec-WebSocket-Version must be 13");
    }
    let Some(ws_key) = h.get(header::SEC_WEBSOCKET_KEY).map(|v| v.as_bytes().to_vec()) else {
        return bad_upgrade("missing Sec-WebSocket-Key");
    };
    let answer_protocol = offered(h, PROTOCOL);
    let Some(ctx) = req.extensions().get::<Upgrades>().cloned() else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::INTERNAL,
            "no upgrade support",
        )
        .into_response();
    };

    // Everything that can be refused is decided before the upgrade; a refusal is still
    // delivered over the WebSocket (an `error` message, then a 44xx close), because a
    // browser cannot read an HTTP error body.
    let workspace = key.workspace.id.to_string();
    let opening = match subscribe::parse_query(req.uri().query()) {
        Err(bad) => Opening::Refuse(
            close::BAD_REQUEST,
            error_json(ErrorCode::INVALID_FIELD, "invalid subscription", &bad.0),
        ),
        Ok(mut sub) => {
            if !key.role.allows(Permission::DevicesWrite) {
                // QR payloads and pairing codes let a phone join the workspace.
                sub.filter.forbidden.insert(EventType::DeviceLinkCode);
            }
            match api.control.webhook_runtime().map(|rt| rt.event_store()) {
                None => Opening::Refuse(
                    close::UNAVAILABLE,
                    error_json(
                        ErrorCode::INTERNAL,
                        &subscribe::StartError::NoLog.to_string(),
                        &[],
                    ),
                ),
                Some(store) => match Reader::open(store, &workspace, &sub).await {
                    Ok((r, start)) => Opening::Run(Box::new(r), start),
                    Err(e) => Opening::Refuse(
                        close::BAD_REQUEST,
                        error_json(ErrorCode::INVALID_FIELD, "invalid subscription", &[e.to_string()]),
                    ),
                },
            }
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = ctx.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws = tokio_websockets::ServerBuilder::new().serve(TokioIo::new(upgraded));
        run(ws, opening, key, workspace, ctx.shutdown).await;
    });

    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let hm = resp.headers_mut();
    hm.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hm.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&ws_key)) {
        hm.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if answer_protocol {
        hm.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    }
    resp
}

fn error_json(code: ErrorCode, message: &str, problems: &[String]) -> serde_json::Value {
    json!({"error": {
        "code": code.0,
        "name": code.name(),
        "message": message,
        "problems": problems,
    }})
}

/// The JSON text of one event message: `{"cursor": seq, "event": {…}}`.
pub fn event_message(cursor: u64, event_json: &str) -> String {
    format!("{{\"cursor\":{cursor},\"event\":{event_json}}}")
}

type Ws = tokio_websockets::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn close_with(ws: &mut Ws, code: u16, reason: &str) {
    let code = CloseCode::try_from(code).unwrap_or(CloseCode::NORMAL_CLOSURE);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        ws.send(Message::close(Some(code), reason)),
    )
    .await;
    // Wait briefly for the client's close so the TCP connection ends cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn run(
    mut ws: Ws,
    opening: Opening,
    key: Arc<crate::auth::LiveKey>,
    workspace: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (mut reader, start) = match opening {
        Opening::Run(r, s) => (r, s),
        Opening::Refuse(code, body) => {
            let _ = ws.send(Message::text(body.to_string())).await;
            close_with(&mut ws, code, "subscription refused").await;
            return;
        }
    };
    let _active = subscribe::Active::new(Transport::WebSocket);
    tracing::debug!(%workspace, cursor = start.cursor, "WebSocket subscriber");
    let hello = json!({"subscribed": {"cursor": start.cursor}}).to_string();
    if ws.send(Message::text(hello)).await.is_err() {
        return;
    }
    if let Some(oldest) = start.gap_until {
        subscribe::count_gap(Transport::WebSocket);
        let gap = json!({"gap": {"after": start.cursor, "oldest": oldest, "reason": "retention"}});
        if ws.send(Message::text(gap.to_string())).await.is_err() {
            return;
        }
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            page = reader.next_page() => {
                let items = match page {
                    Ok(items) => items,
                    Err(e) => {
                        tracing::warn!(%workspace, error = %e, "WebSocket subscriber: event log");
                        close_with(&mut ws, close::UNAVAILABLE, "event log unavailable").await;
                        return;
                    }
                };
                let mut sent = 0u64;
                let write = async {
                    for item in items {
                        let text = match item {
                            Item::Event { cursor, event } => {
                                sent += 1;
                                event_message(cursor, &event.to_json())
                            }
                            Item::Unreadable { cursor, reason } => {
                                json!({"skipped": {"cursor": cursor, "reason": reason}}).to_string()
                            }
                        };
                        ws.feed(Message::text(text)).await?;
                    }
                    ws.flush().await
                };
                let r = tokio::time::timeout(SEND_TIMEOUT, write).await;
                subscribe::count_sent(Transport::WebSocket, sent);
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::info!(%workspace, "WebSocket subscriber stuck; closing");
                        return;
                    }
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(m)) => {
                    last_heard = tokio::time::Instant::now();
                    if m.is_close() {
                        let _ = ws.close().await;
                        return;
                    }
                }
                _ => return,
            },
            _ = ping.tick() => {
                if let Err(e) = key.check(crate::unix_ms()) {
                    close_with(&mut ws, close::AUTH, &format!("API key {e}")).await;
                    return;
                }
                if last_heard.elapsed() > 3 * PING_EVERY {
                    close_with(&mut ws, close::TIMEOUT, "no answer to pings").await;
                    return;
                }
                if ws.send(Message::ping(bytes::Bytes::new())).await.is_err() {
                    return;
                }
            }
            _ = key.revoked() => {
                close_with(&mut ws, close::AUTH, "API key revoked").await;
                return;
            }
            _ = crate::server::wait_shutdown(&mut shutdown) => {
                close_with(&mut ws, CloseCode::GOING_AWAY.into(), "server shutting down; reconnect with your last cursor").await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn key_is_read_from_the_subprotocol_list() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("waping.v1, waping.key.wpk_ab_cd"),
        );
        assert_eq!(key_from_protocols(&h), Some("wpk_ab_cd"));
        assert!(offered(&h, PROTOCOL));
        assert_eq!(key_from_protocols(&HeaderMap::new()), None);
    }

    #[test]
    fn event_message_embeds_the_event_json() {
        let v: serde_json::Value = serde_json::from_str(&event_message(7, r#"{"id":"evt_x"}"#)).unwrap();
        assert_eq!(v, json!({"cursor": 7, "event": {"id": "evt_x"}}));
    }
}
