//! The streams being relayed right now: who, where, how far, and the end of their text,
//! for the console's Streams view; and the operator's kill switch for each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::domain::snapshot::StreamView;

/// Characters of text kept per stream for tailing.
const TAIL: usize = 400;

#[derive(Default)]
pub struct LiveStreams {
    streams: Mutex<HashMap<String, Arc<LiveStream>>>,
    next: AtomicU64,
}

pub struct LiveStream {
    pub id: String,
    tenant: String,
    model: String,
    region: String,
    instance: String,
    started: Instant,
    tokens: AtomicU64,
    tail: Mutex<String>,
    kill: watch::Sender<bool>,
}

/// A registered stream; dropping it removes the stream from the registry.
pub struct StreamHandle {
    live: Arc<LiveStream>,
    registry: Arc<LiveStreams>,
}

impl LiveStreams {
    pub fn register(
        self: &Arc<Self>,
        tenant: &str,
        model: &str,
        region: &str,
        instance: &str,
    ) -> StreamHandle {
        let id = format!(
            "str_{:x}{:04x}",
            crate::telemetry::now_ms(),
            self.next.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        let live = Arc::new(LiveStream {
            id: id.clone(),
            tenant: tenant.to_string(),
            model: model.to_string(),
            region: region.to_string(),
            instance: instance.to_string(),
            started: Instant::now(),
            tokens: AtomicU64::new(0),
            tail: Mutex::new(String::new()),
            kill: watch::channel(false).0,
        });
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(id, live.clone());
        }
        StreamHandle {
            live,
            registry: self.clone(),
        }
    }

    /// Ends a live stream; false when there is no such stream.
    pub fn kill(&self, id: &str) -> bool {
        let stream = self.streams.lock().ok().and_then(|s| s.get(id).cloned());
        match stream {
            Some(stream) => {
                stream.kill.send_replace(true);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.streams.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live stream, oldest first.
    pub fn views(&self) -> Vec<StreamView> {
        let now = Instant::now();
        let mut views: Vec<StreamView> = self
            .streams
            .lock()
            .map(|s| s.values().map(|l| l.view(now)).collect())
            .unwrap_or_default();
        views.sort_by_key(|v| std::cmp::Reverse(v.age_ms));
        views
    }
}

impl LiveStream {
    fn view(&self, now: Instant) -> StreamView {
        let age = now.saturating_duration_since(self.started);
        let tokens = self.tokens.load(Ordering::Relaxed);
        StreamView {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            model: self.model.clone(),
            region: self.region.clone(),
            instance: self.instance.clone(),
            tokens,
            tokens_per_sec: tokens as f64 / age.as_secs_f64().max(0.001),
            age_ms: age.as_millis() as u64,
            tail: self.tail.lock().map(|t| t.clone()).unwrap_or_default(),
        }
    }
}

impl StreamHandle {
    pub fn id(&self) -> &str {
        &self.live.id
    }

    /// Records a content delta (about one token).
    pub fn text(&self, delta: &str) {
        self.live.tokens.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tail) = self.live.tail.lock() {
            tail.push_str(delta);
            if tail.len() > TAIL * 2 {
                let cut = tail.len() - TAIL;
                let cut = (cut..tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
    }

    /// Resolves when an operator kills the stream.
    pub fn killed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut kill = self.live.kill.subscribe();
        async move {
            let _ = kill.wait_for(|k| *k).await;
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.registry.streams.lock() {
            streams.remove(&self.live.id);
        }
    }
}
