//! Workspaces (tenants): ids, limits, devices and their live event bus.
//!
//! A connection resolves its workspace once, at authentication, and keeps
//! an `Arc<Workspace>`; the per-message path then touches only that
//! workspace's limiter cell and its device map, never a global lock.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use waping_protocol::EventKind;

use crate::limiter;

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
}

impl Workspace {
    /// Publishes to live subscribers; free when nobody listens.
    pub fn publish(&self, kind: EventKind) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(WsEvent {
                timestamp_ms: crate::unix_ms(),
                kind,
            }));
        }
    }
}

/// All workspaces of the node.
#[derive(Debug, Default)]
pub struct Registry {
    list: Vec<Arc<Workspace>>,
    by_id: HashMap<Arc<str>, WorkspaceIdx>,
}

impl Registry {
    /// Adds a workspace and returns it.
    pub fn add(
        &mut self,
        id: &str,
        limiter: Arc<limiter::Cell>,
        device_rate_per_second: u32,
        pacing: Arc<crate::pacing::PacingPolicy>,
    ) -> Arc<Workspace> {
        let idx = WorkspaceIdx(self.list.len() as u32);
        let (events, _) = broadcast::channel(EVENT_BUS_CAPACITY);
        let ws = Arc::new(Workspace {
            idx,
            id: id.into(),
            limiter,
            device_rate_per_second,
            pacing,
            events,
        });
        self.by_id.insert(ws.id.clone(), idx);
        self.list.push(ws.clone());
        ws
    }

    /// By index.
    pub fn get(&self, idx: WorkspaceIdx) -> Option<&Arc<Workspace>> {
        self.list.get(idx.0 as usize)
    }

    /// By id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Workspace>> {
        self.by_id.get(id).and_then(|i| self.get(*i))
    }

    /// Number of workspaces.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workspace>> {
        self.list.iter()
    }
}
