//! Live subscriptions with resume (issue 8): what the WebSocket endpoint
//! (`GET /v1/events/stream`, [`crate::http::events_ws`]) and QUIC SUBSCRIBE with a cursor
//! ([`crate::server::stream`]) share.
//!
//! A subscriber reads the node's event log ([`waping_events::EventStore`]) from its own
//! cursor: it catches up with [`EventStore::read_after`] one bounded page at a time, then
//! waits on [`EventStore::watch_head`] for new durable events. Nothing is pushed to it, so a
//! slow subscriber costs one page of memory and never makes anyone else wait or drop; it
//! just falls behind the head. The cursor is the log's node-wide `seq`; a client that
//! reconnects with the last cursor it saw gets exactly the events after it (within the
//! retention). Design: docs/design/0020-live-subscriptions.md.

use std::collections::BTreeSet;
use std::fmt;

use tokio::sync::watch;
use waping_events::{Event, EventStore, EventType};

/// Events read from the log per page (bounded memory per subscriber).
pub const PAGE: usize = 256;

/// Most devices a filter may name.
pub const MAX_DEVICES: usize = 64;

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event types; `None` = every type the caller may see.
    pub types: Option<BTreeSet<EventType>>,
    /// Devices; `None` = every device. With a device list, workspace-level events
    /// (no device) are not delivered.
    pub devices: Option<BTreeSet<String>>,
    /// Types the caller's role may not see (link codes without `devices.write`).
    pub forbidden: BTreeSet<EventType>,
}

impl Filter {
    /// True when `ev` passes the filter.
    pub fn matches(&self, ev: &Event) -> bool {
        let kind = ev.kind();
        if self.forbidden.contains(&kind) {
            return false;
        }
        if let Some(t) = &self.types
            && !t.contains(&kind)
        {
            return false;
        }
        match (&self.devices, &ev.device) {
            (None, _) => true,
            (Some(d), Some(dev)) => d.contains(dev),
            (Some(_), None) => false,
        }
    }
}

/// A subscription request, parsed: filter and where to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// What to deliver.
    pub filter: Filter,
    /// Resume after this `seq`; `None` = from now (the log's head when subscribing).
    pub cursor: Option<u64>,
}

/// What was wrong with a subscription request: every problem, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub Vec<String>);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for BadRequest {}

fn valid_device(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 64
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses comma-separated event types (`message.received,message.status`); collects errors.
pub fn parse_types(s: &str, problems: &mut Vec<String>) -> BTreeSet<EventType> {
    let mut out = BTreeSet::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match EventType::parse(t) {
            Ok(k) => {
                out.insert(k);
            }
            Err(_) => problems.push(format!(
                "types: unknown event type {t:?} (known: {})",
                EventType::ALL.map(EventType::as_str).join(", ")
            )),
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push("types: empty (omit it for every type)".into());
    }
    out
}

/// Parses comma-separated device ids; collects errors.
pub fn parse_devices(s: &str, problems: &mut Vec<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if valid_device(d) {
            out.insert(d.to_string());
        } else {
            problems.push(format!(
                "devices: {:?} is not a device id (1-64 of A-Z a-z 0-9 . _ -)",
                d.chars().take(80).collect::<String>()
            ));
        }
    }
    if out.len() > MAX_DEVICES {
        problems.push(format!("devices: {} listed, at most {MAX_DEVICES}", out.len()));
    }
    if out.is_empty() && problems.is_empty() {
        problems.push("devices: empty (omit it for every device)".into());
    }
    out
}

/// Parses a cursor (a decimal `seq`).
pub fn parse_cursor(s: &str, problems: &mut Vec<String>) -> Option<u64> {
    match s.parse::<u64>() {
        Ok(c) => Some(c),
        Err(_) => {
            problems.push(format!(
                "cursor: {:?} is not a cursor (the decimal `cursor` of an event received earlier)",
                s.chars().take(40).collect::<String>()
            ));
            None
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the WebSocket endpoint's query string (`types=…&devices=…&cursor=…`; `access_token`
/// is read by the access layer and ignored here). Unknown parameters and repeated ones are
/// errors, so a typo never silently widens a subscription.
pub fn parse_query(query: Option<&str>) -> Result<Request, BadRequest> {
    let mut problems = Vec::new();
    let mut req = Request::default();
    let mut seen = BTreeSet::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else {
            problems.push(format!("{k}: not valid percent-encoded UTF-8"));
            continue;
        };
        if k != "access_token" && !seen.insert(k.to_string()) {
            problems.push(format!("{k}: given more than once (use a comma-separated list)"));
            continue;
        }
        match k {
            "types" => req.filter.types = Some(parse_types(&v, &mut problems)),
            "devices" => req.filter.devices = Some(parse_devices(&v, &mut problems)),
            "cursor" => req.cursor = parse_cursor(&v, &mut problems),
            "access_token" => {}
            other => problems.push(format!(
                "{:?}: unknown parameter (known: types, devices, cursor)",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
    if problems.is_empty() {
        Ok(req)
    } else {
        Err(BadRequest(problems))
    }
}

/// Something a subscriber is told, in log order.
#[derive(Debug)]
pub enum Item {
    /// An event that passed the filter, with its cursor.
    Event {
        /// Its `seq`: resume after it.
        cursor: u64,
        /// The event.
        event: Event,
    },
    /// A stored event of the workspace that cannot be read (its key was shredded, or it is
    /// damaged): skipped, the subscriber is told so.
    Unreadable {
        /// Its `seq`.
        cursor: u64,
        /// Why.
        reason: String,
    },
}

/// Where a resumed subscription starts, decided once when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The cursor reading starts after.
    pub cursor: u64,
    /// Set when the client's cursor is older than the workspace's oldest retained event:
    /// events between may have been removed by retention. `Some(oldest seq)`.
    pub gap_until: Option<u64>,
}

/// Why a subscription cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The cursor is beyond this node's log (from another node, or made up).
    CursorAhead {
        /// The cursor given.
        cursor: u64,
        /// The log's head.
        head: u64,
    },
    /// No event log (the webhook runtime is not running).
    NoLog,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::CursorAhead { cursor, head } => write!(
                f,
                "cursor: {cursor} is ahead of this node's event log (head {head}); it comes from another node or was made up"
            ),
            StartError::NoLog => f.write_str("live subscriptions need the event log, which is not running"),
        }
    }
}

/// Decides where a subscription starts: pure, so the rules are unit-tested.
///
/// `head` is the log's head; `oldest` the `seq` of the workspace's oldest retained event
/// (if any). Without a cursor: the head (from now). With one: after it; a cursor above the
/// head is refused; a cursor before `oldest - 1` reports a possible gap (the log's `seq` is
/// node-wide, so the events between may also be other workspaces' — see the design note).
pub fn plan_start(cursor: Option<u64>, head: u64, oldest: Option<u64>) -> Result<Start, StartError> {
    let Some(c) = cursor else {
        return Ok(Start {
            cursor: head,
            gap_until: None,
        });
    };
    if c > head {
        return Err(StartError::CursorAhead { cursor: c, head });
    }
    let gap_until = oldest.filter(|&o| o > c.saturating_add(1));
    Ok(Start { cursor: c, gap_until })
}

/// Reads one workspace's events from the log after a cursor, filtered.
#[derive(Debug)]
pub struct Reader {
    store: EventStore,
    workspace: String,
    filter: Filter,
    cursor: u64,
    head: watch::Receiver<u64>,
}

impl Reader {
    /// Opens a subscription on `store` for `workspace`: decides the start (see
    /// [`plan_start`]) and returns the reader with it.
    pub async fn open(
        store: EventStore,
        workspace: &str,
        req: &Request,
    ) -> Result<(Reader, Start), StartError> {
        // Subscribe to the head before reading it: an append in between still wakes us.
        let head_rx = store.watch_head();
        let head = store.head();
        let oldest = match req.cursor {
            Some(_) => {
                let (s, ws) = (store.clone(), workspace.to_string());
                tokio::task::spawn_blocking(move || s.read_after(&ws, 0, 1))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|v| v.first().map(|s| s.seq))
            }
            None => None,
        };
        let start = plan_start(req.cursor, head, oldest)?;
        Ok((
            Reader {
                store,
                workspace: workspace.to_string(),
                filter: req.filter.clone(),
                cursor: start.cursor,
                head: head_rx,
            },
            start,
        ))
    }

    /// The cursor: every event of the workspace up to it has been handed out (or filtered).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next page of items after the cursor (at most [`PAGE`] events read); waits for new
    /// events when caught up. Cancel-safe: dropping the future loses nothing (the cursor
    /// moves only when a page is returned). `Err` = the log is gone (node shutting down) or
    /// failed.
    pub async fn next_page(&mut self) -> Result<Vec<Item>, String> {
        loop {
            // Mark the current head seen before reading, so an append during the read wakes
            // the next wait.
            let _ = self.head.borrow_and_update();
            let (s, ws, after) = (self.store.clone(), self.workspace.clone(), self.cursor);
            let page = tokio::task::spawn_blocking(move || s.read_after(&ws, after, PAGE))
                .await
                .map_err(|e| format!("event log read failed: {e}"))?
                .map_err(|e| format!("event log read failed: {e}"))?;
            if let Some(last) = page.last() {
                self.cursor = last.seq;
                let items: Vec<Item> = page
                    .into_iter()
                    .filter_map(|st| match st.event {
                        // Strict isolation: the log is per workspace, and this is checked again.
                        Ok(ev) if ev.workspace == self.workspace && self.filter.matches(&ev) => {
                            Some(Item::Event {
                                cursor: st.seq,
                                event: ev,
                            })
                        }
                        Ok(_) => None,
                        Err(e) => Some(Item::Unreadable {
                            cursor: st.seq,
                            reason: e.to_string(),
                        }),
                    })
                    .collect();
                if !items.is_empty() {
                    return Ok(items);
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                return Err("event log closed".into());
            }
        }
    }
}

/// Metric label of a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC SUBSCRIBE with a cursor.
    Quic,
    /// `GET /v1/events/stream`.
    WebSocket,
}

impl Transport {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Counts a resumable subscriber while alive (`waping_log_subscribers{transport}`).
#[derive(Debug)]
pub struct Active(Transport);

impl Active {
    /// One more subscriber.
    pub fn new(t: Transport) -> Active {
        metrics::gauge!("waping_log_subscribers", "transport" => t.as_str()).increment(1.0);
        Active(t)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!("waping_log_subscribers", "transport" => self.0.as_str()).decrement(1.0);
    }
}

/// Counts events sent to resumable subscribers.
pub fn count_sent(t: Transport, n: u64) {
    metrics::counter!("waping_log_subscriber_events_total", "transport" => t.as_str()).increment(n);
}

/// Counts a possible gap reported to a resumable subscriber.
pub fn count_gap(t: Transport) {
    metrics::counter!("waping_log_subscriber_gaps_total", "transport" => t.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use waping_events::{DeviceState, DeviceStateChange, EventData};

    fn ev(device: Option<&str>) -> Event {
        let data = EventData::DeviceState(DeviceStateChange {
            state: DeviceState::Connected,
            detail: None,
            until_ms: None,
        });
        Event::new("ws", device.map(String::from), 1, data)
    }

    #[test]
    fn query_parses_types_devices_and_cursor() {
        let r = parse_query(Some(
            "types=message.received,message.status&devices=d1,d%32&cursor=42",
        ))
        .unwrap();
        assert_eq!(
            r.filter.types,
            Some(BTreeSet::from([
                EventType::MessageReceived,
                EventType::MessageStatus
            ]))
        );
        assert_eq!(
            r.filter.devices,
            Some(BTreeSet::from(["d1".to_string(), "d2".to_string()]))
        );
        assert_eq!(r.cursor, Some(42));
        assert_eq!(parse_query(None).unwrap(), Request::default());
        assert_eq!(parse_query(Some("access_token=x")).unwrap(), Request::default());
    }

    #[test]
    fn query_errors_list_every_problem() {
        let e = parse_query(Some(
            "types=message.nope&devices=bad%20id&cursor=-1&colour=red&types=x",
        ))
        .unwrap_err();
        assert_eq!(e.0.len(), 5, "{e}");
        assert!(e.0[0].contains("message.nope"), "{e}");
        assert!(e.0[1].starts_with("devices:"), "{e}");
        assert!(e.0[2].starts_with("cursor:"), "{e}");
        assert!(e.0[3].contains("unknown parameter"), "{e}");
        assert!(e.0[4].contains("more than once"), "{e}");
        assert!(parse_query(Some("types=")).is_err());
        assert!(parse_query(Some("cursor=18446744073709551616")).is_err());
        let many: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("d{i}")).collect();
        assert!(parse_query(Some(&format!("devices={}", many.join(",")))).is_err());
    }

    #[test]
    fn filter_by_type_device_and_role() {
        let all = Filter::default();
        let d1 = ev(Some("d1"));
        let ws_level = ev(None);
        assert!(all.matches(&d1) && all.matches(&ws_level));
        let f = Filter {
            devices: Some(BTreeSet::from(["d1".to_string()])),
            ..Filter::default()
        };
        assert!(f.matches(&d1));
        assert!(!f.matches(&ev(Some("d2"))));
        assert!(
            !f.matches(&ws_level),
            "a device filter leaves workspace-level events out"
        );
        let f = Filter {
            types: Some(BTreeSet::from([EventType::MessageStatus])),
            ..Filter::default()
        };
        assert!(!f.matches(&d1));
        let f = Filter {
            forbidden: BTreeSet::from([EventType::DeviceState]),
            ..Filter::default()
        };
        assert!(!f.matches(&d1));
    }

    #[test]
    fn start_rules() {
        // From now: the head, never a gap.
        assert_eq!(
            plan_start(None, 10, Some(3)),
            Ok(Start {
                cursor: 10,
                gap_until: None
            })
        );
        // Resume inside the retained range: no gap.
        assert_eq!(
            plan_start(Some(5), 10, Some(3)),
            Ok(Start {
                cursor: 5,
                gap_until: None
            })
        );
        assert_eq!(
            plan_start(Some(2), 10, Some(3)),
            Ok(Start {
                cursor: 2,
                gap_until: None
            })
        );
        // Older than the oldest retained event: a possible gap, reading resumes there.
        assert_eq!(
            plan_start(Some(1), 10, Some(7)),
            Ok(Start {
                cursor: 1,
                gap_until: Some(7)
            })
        );
        assert_eq!(
            plan_start(Some(0), 10, None),
            Ok(Start {
                cursor: 0,
                gap_until: None
            })
        );
        // At the head is fine, beyond it is refused.
        assert_eq!(
            plan_start(Some(10), 10, None),
            Ok(Start {
                cursor: 10,
                gap_until: None
            })
        );
        assert_eq!(
            plan_start(Some(11), 10, None),
            Err(StartError::CursorAhead { cursor: 11, head: 10 })
        );
    }
}
