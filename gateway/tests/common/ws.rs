//! A WebSocket client of `GET /v1/events/stream` for the integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// One subscriber connection.
pub struct Sub {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What a subscriber read next.
#[derive(Debug)]
pub enum Got {
    /// A JSON text message.
    Json(Value),
    /// The server closed: code and reason.
    Closed(u16, String),
}

/// Connects with the key as a bearer header and the query (`types=…&cursor=…`).
pub async fn open(http: SocketAddr, key: &str, query: &str) -> Sub {
    try_open(http, Some(key), None, query)
        .await
        .expect("WebSocket connect")
}

/// Connects; `key` as a bearer header and/or `protocols` as `Sec-WebSocket-Protocol`.
pub async fn try_open(
    http: SocketAddr,
    key: Option<&str>,
    protocols: Option<&str>,
    query: &str,
) -> Result<Sub, tokio_websockets::Error> {
    let mut b = ClientBuilder::new()
        .uri(&format!("ws://{http}/v1/events/stream?{query}"))
        .expect("uri");
    if let Some(k) = key {
        b = b.add_header(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_str(&format!("Bearer {k}")).unwrap(),
        )?;
    }
    if let Some(p) = protocols {
        b = b.add_header(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            axum::http::HeaderValue::from_str(p).unwrap(),
        )?;
    }
    let (ws, _) = b.connect().await?;
    Ok(Sub { ws })
}

impl Sub {
    /// The next text message or the close; `None` when nothing arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Got> {
        loop {
            let m = match tokio::time::timeout(within, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Got::Closed(1006, String::new())),
                Ok(Some(Err(e))) => return Some(Got::Closed(1006, e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            if let Some((code, reason)) = m.as_close() {
                return Some(Got::Closed(code.into(), reason.to_string()));
            }
            if let Some(t) = m.as_text() {
                return Some(Got::Json(serde_json::from_str(t).expect("JSON message")));
            }
        }
    }

    /// The next text message (panics after 30 s or on a close).
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(Duration::from_secs(30)).await {
            Some(Got::Json(v)) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns the close code and reason and the messages
    /// before it (panics after 30 s).
    pub async fn until_close(&mut self) -> (u16, String, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match self.next_within(Duration::from_secs(30)).await {
                Some(Got::Json(v)) => before.push(v),
                Some(Got::Closed(c, r)) => return (c, r, before),
                None => panic!("no close within 30 s"),
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.send(Message::close(None, "")).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
