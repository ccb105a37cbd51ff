//! The operator's event log: routing changes, operator actions and notable traffic, kept
//! as a bounded ring for snapshots and broadcast to live subscribers (the console's
//! Events view, `GET /admin/events`). Each event is also written to the tracing log.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::domain::snapshot::{Event, EventKind};

/// Events kept for snapshots.
const KEEP: usize = 500;

pub struct EventLog {
    recent: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
            live: broadcast::channel(256).0,
        }
    }
}

impl EventLog {
    pub fn record(&self, kind: EventKind, actor: Option<&str>, message: String) {
        let event = Event {
            at_ms: crate::telemetry::now_ms(),
            kind,
            actor: actor.map(str::to_owned),
            message,
        };
        match &event.actor {
            Some(actor) => tracing::info!(kind = ?event.kind, %actor, "{}", event.message),
            None => tracing::info!(kind = ?event.kind, "{}", event.message),
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.live.send(event);
    }

    /// The most recent events, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        self.recent
            .lock()
            .map(|r| {
                r.iter()
                    .skip(r.len().saturating_sub(limit))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
