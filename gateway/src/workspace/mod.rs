//! Workspaces (tenants): ids, limits, devices and their live event bus.
//!
//! A connection resolves its workspace once, at authentication, and keeps
//! an `Arc<Workspace>`; the per-message path then touches only that
//! workspace's limiter cell and its device map, never a global lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::broadcast;
use waping_protocol::{ErrorCode, EventKind};

use crate::limiter;
use crate::metrics::{WorkspaceLabels, WorkspaceMetrics};

/// Dense index of a workspace in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceIdx(pub u32);

/// One event published to a workspace's live subscribers.
#[derive(Debug, Clone)]
pub struct WsEvent {
    /// Unix milliseconds when observed.
    pub timestamp_ms: u64,
    /// Payload.
    pub kind: EventKind,
}

/// Live event fan-out capacity per workspace. A subscriber further behind than
/// this is told how many it missed (`Lagged`); durable delivery is the webhook's job.
pub const EVENT_BUS_CAPACITY: usize = 4096;

/// A tenant.
#[derive(Debug)]
pub struct Workspace {
    /// Index.
    pub idx: WorkspaceIdx,
    /// Stable id from the configuration.
    pub id: Arc<str>,
    /// Send-rate limiter cell (token bucket), shared with the registry's limiter for reloads.
    pub limiter: Arc<limiter::Cell>,
    /// Per-device pacing, messages per second (0 = off).
    pub device_rate_per_second: u32,
    /// Account-safety pacing of this workspace's devices (`[pacing]` with the workspace's
    /// overrides); every device session builds its pacer from it.
    pub pacing: Arc<crate::pacing::PacingPolicy>,
    /// Live subscribers.
    pub events: broadcast::Sender<Arc<WsEvent>>,
    /// Set when the workspace is deleted: keys and connections holding it stop working.
    deleted: AtomicBool,
    /// Messages in the workspace's device queues, refreshed once a second.
    pub queued: AtomicU64,
    /// Quota on `queued` (0 = none until the control plane sets it).
    pub max_queued: AtomicU64,
    /// The send pipeline counted under this workspace's `workspace` label (or the shared
    /// `_other`); `None` unless `metrics.per_workspace` is on, and then counting costs nothing.
    pub metrics: Option<Arc<WorkspaceMetrics>>,
    /// Where events also go for webhooks (set once for the node; empty in unit tests).
    sink: SinkCell,
}

/// Receives every workspace event besides the live subscribers: the webhook runtime, which
/// stores those an endpoint wants.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// One event of `ws`, observed at `at_ms`.
    fn offer(&self, ws: &Workspace, at_ms: u64, kind: &EventKind);
    /// An event with no live-subscriber form (a dead letter).
    fn offer_event(&self, event: waping_events::Event);
}

/// The node's event sink, shared by the registry and every workspace.
pub type SinkCell = Arc<std::sync::OnceLock<Arc<dyn EventSink>>>;

impl Workspace {
    /// Whether the workspace was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Counts a SEND received (per-workspace metrics only; a branch when they are off).
    #[inline]
    pub fn count_received(&self) {
        if let Some(m) = &self.metrics {
            m.received.increment(1);
        }
    }

    /// Counts a SEND refused with `code` (per-workspace metrics only).
    #[inline]
    pub fn count_rejected(&self, code: ErrorCode) {
        if let Some(m) = &self.metrics {
            m.rejected(code);
        }
    }

    /// Counts a message the upstream confirmed (per-workspace metrics only).
    #[inline]
    pub fn count_delivered(&self) {
        if let Some(m) = &self.metrics {
            m.delivered.increment(1);
        }
    }

    /// Counts an accepted message that failed with `code` (per-workspace metrics only).
    #[inline]
    pub fn count_failed(&self, code: ErrorCode) {
        if let Some(m) = &self.metrics {
            m.failed(code);
        }
    }

    /// A message of this workspace became a dead letter: a `message.dead_lettered` event for
    /// the endpoints that want it.
    pub fn dead_lettered(
        &self,
        device: &str,
        message_id: &waping_protocol::MessageId,
        attempts: u32,
        code: ErrorCode,
        detail: &str,
        at_ms: u64,
    ) {
        let Some(sink) = self.sink.get() else { return };
        let message_id = message_id.to_string();
        let mut e = waping_events::Event::new(
            self.id.to_string(),
            Some(device.to_string()),
            at_ms,
            waping_events::EventData::MessageDeadLettered(waping_events::DeadLettered {
                message_id: message_id.clone(),
                attempts,
                error: waping_events::ErrorInfo {
                    code: code.0,
                    name: code.name().to_string(),
                    detail: (!detail.is_empty()).then(|| detail.chars().take(500).collect()),
                },
            }),
        );
        // The same death is the same event; a replayed dead letter that dies again is a new one.
        e.id = waping_events::EventId::derived(&[
            b"message.dead_lettered",
            message_id.as_bytes(),
            &attempts.to_le_bytes(),
        ]);
        sink.offer_event(e);
    }

    /// Publishes to live subscribers and offers the event to the webhook runtime; free when
    /// nobody listens and no endpoint wants it.
    pub fn publish(&self, kind: EventKind) {
        let now = crate::unix_ms();
        if let Some(sink) = self.sink.get() {
            sink.offer(self, now, &kind);
        }
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(WsEvent {
                timestamp_ms: now,
                kind,
            }));
        }
    }
}

/// All workspaces of the node. Copy-on-write: workspaces are created and deleted rarely
/// (control plane) and looked up on every inbound event and authentication, so readers take
/// no lock.
#[derive(Debug, Default)]
pub struct Registry {
    inner: arc_swap::ArcSwap<Inner>,
    /// Per-workspace metric handles (`metrics.per_workspace`); `None`: not counted.
    labels: Option<WorkspaceLabels>,
    sink: SinkCell,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    /// Indexed by `WorkspaceIdx`; a deleted workspace leaves a hole so indices stay stable.
    list: Vec<Option<Arc<Workspace>>>,
    by_id: HashMap<Arc<str>, WorkspaceIdx>,
}

impl Registry {
    /// An empty registry whose workspaces count their send pipeline under a `workspace` label
    /// when `per_workspace_max` is set (`metrics.per_workspace`): the first that many
    /// workspaces added get their own label value, the rest share `_other`. `None` is
    /// [`Registry::default`]: no per-workspace series.
    pub fn with_workspace_metrics(per_workspace_max: Option<u32>) -> Registry {
        Registry {
            inner: Default::default(),
            labels: per_workspace_max.map(WorkspaceLabels::new),
            sink: SinkCell::default(),
        }
    }

    /// Adds a workspace and returns it; an existing one with the same id is returned as is.
    pub fn add(
        &self,
        id: &str,
        limiter: Arc<limiter::Cell>,
        device_rate_per_second: u32,
        pacing: Arc<crate::pacing::PacingPolicy>,
    ) -> Arc<Workspace> {
        // Outside the retried closure; the same id always gets the same handles.
        let metrics = self.labels.as_ref().map(|l| l.of(id));
        let mut made = None;
        self.inner.rcu(|cur| {
            let mut next = Inner::clone(cur);
            if let Some(ws) = next.by_id.get(id).and_then(|i| next.list[i.0 as usize].clone()) {
                made = Some(ws);
                return next;
            }
            let idx = WorkspaceIdx(next.list.len() as u32);
            let (events, _) = broadcast::channel(EVENT_BUS_CAPACITY);
            let ws = Arc::new(Workspace {
                idx,
                id: id.into(),
                limiter: limiter.clone(),
                device_rate_per_second,
                pacing: pacing.clone(),
                events,
                deleted: AtomicBool::new(false),
                queued: AtomicU64::new(0),
                max_queued: AtomicU64::new(0),
                metrics: metrics.clone(),
                sink: self.sink.clone(),
            });
            next.by_id.insert(ws.id.clone(), idx);
            next.list.push(Some(ws.clone()));
            made = Some(ws);
            next
        });
        made.expect("rcu ran at least once")
    }

    /// Sets where every workspace's events also go (once; later calls are ignored).
    pub fn set_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    /// Removes a workspace (it is being deleted): it is marked deleted, so keys and
    /// connections holding it stop working, and its id can be created anew later.
    pub fn remove(&self, id: &str) -> Option<Arc<Workspace>> {
        let mut removed = None;
        self.inner.rcu(|cur| {
            let mut next = Inner::clone(cur);
            removed = next.by_id.remove(id).and_then(|i| next.list[i.0 as usize].take());
            next
        });
        if let Some(ws) = &removed {
            ws.deleted.store(true, Ordering::Release);
        }
        removed
    }

    /// By index.
    pub fn get(&self, idx: WorkspaceIdx) -> Option<Arc<Workspace>> {
        self.inner.load().list.get(idx.0 as usize).cloned().flatten()
    }

    /// By id.
    pub fn by_id(&self, id: &str) -> Option<Arc<Workspace>> {
        let inner = self.inner.load();
        inner.by_id.get(id).and_then(|i| inner.list[i.0 as usize].clone())
    }

    /// Number of workspaces.
    pub fn len(&self) -> usize {
        self.inner.load().by_id.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All of them, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = Arc<Workspace>> {
        self.inner.load_full().list.clone().into_iter().flatten()
    }

    /// A workspace with default limits, for unit tests.
    #[cfg(test)]
    pub fn add_for_tests(&self, id: &str) -> Arc<Workspace> {
        let lim: crate::limiter::Limiter<Arc<str>> = crate::limiter::Limiter::new();
        let cell = lim
            .upsert_many(
                vec![(
                    Arc::<str>::from(id),
                    crate::limiter::Quota::per_second(100, 100).unwrap(),
                )],
                crate::limiter::Nanos::ZERO,
            )
            .pop()
            .unwrap();
        self.add(id, cell, 0, Arc::new(crate::pacing::PacingPolicy::off()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_workspace_metrics_only_when_configured() {
        let off = Registry::default();
        assert!(off.add_for_tests("a").metrics.is_none());
        // Counting without handles is a no-op, not a panic.
        off.add_for_tests("a").count_rejected(ErrorCode::RATE_LIMITED);

        let on = Registry::with_workspace_metrics(Some(1));
        let a = on.add_for_tests("a");
        let b = on.add_for_tests("b");
        let c = on.add_for_tests("c");
        assert_eq!(a.metrics.as_ref().unwrap().label(), "a");
        assert_eq!(
            b.metrics.as_ref().unwrap().label(),
            crate::metrics::OTHER_WORKSPACES
        );
        assert!(Arc::ptr_eq(
            b.metrics.as_ref().unwrap(),
            c.metrics.as_ref().unwrap()
        ));
        // Deleted and created again, a workspace keeps its label value.
        on.remove("a");
        let a2 = on.add_for_tests("a");
        assert!(!Arc::ptr_eq(&a, &a2));
        assert!(Arc::ptr_eq(
            a.metrics.as_ref().unwrap(),
            a2.metrics.as_ref().unwrap()
        ));
    }
}
