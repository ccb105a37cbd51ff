//! One append-only chunk log per streamed answer, read through a cursor per subscriber.
//!
//! The upstream relay runs in a task that belongs to the log, not to the first client: it
//! appends whole SSE events, and every reader (the client that asked, and any watchers)
//! reads them at its own pace. Nothing is dropped from the middle for anyone; a reader
//! that falls too far behind is cut off alone with an error event. When the last reader
//! leaves before the answer is complete, the upstream task is aborted, which cancels the
//! generation and settles what was produced. Finished logs stay readable for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{error_frame, without_usage_chunk};

pub struct ChunkLog {
    pub id: String,
    pub tenant: String,
    /// Whether the client that asked wanted the usage-only chunk; watchers see what it saw.
    pub origin_strips_usage: bool,
    events: Mutex<Vec<Bytes>>,
    /// Events appended so far; `usize::MAX` once the log is complete.
    progress: watch::Sender<(usize, bool)>,
    readers: AtomicUsize,
    producer: Mutex<Option<AbortHandle>>,
    finished_at: Mutex<Option<Instant>>,
}

impl ChunkLog {
    fn append(&self, batch: &Bytes) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = batch.clone();
        while !rest.is_empty() {
            let end = rest
                .windows(2)
                .position(|w| w == b"\n\n")
                .map_or(rest.len(), |i| i + 2);
            events.push(rest.split_to(end));
        }
        let count = events.len();
        drop(events);
        self.progress.send_replace((count, false));
    }

    fn finish(&self) {
        let count = self.events.lock().map(|e| e.len()).unwrap_or(0);
        if let Ok(mut at) = self.finished_at.lock() {
            *at = Some(Instant::now());
        }
        self.progress.send_replace((count, true));
    }

    pub fn finished(&self) -> bool {
        self.progress.borrow().1
    }

    pub fn len(&self) -> usize {
        self.progress.borrow().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns once the log is complete (the upstream ended, or was cancelled).
    pub async fn wait_finished(&self) {
        let mut progress = self.progress.subscribe();
        let _ = progress.wait_for(|(_, finished)| *finished).await;
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Bytes> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Whether the log is complete and its last event is `data: [DONE]`: the answer is
    /// whole, not cut by an error.
    pub fn completed_cleanly(&self) -> bool {
        self.finished() && self.last_event().is_some_and(|last| is_done(&last))
    }

    fn last_event(&self) -> Option<Bytes> {
        self.events.lock().ok().and_then(|e| e.last().cloned())
    }
}

fn is_done(event: &[u8]) -> bool {
    event.trim_ascii() == b"data: [DONE]"
}

/// Completes a log whose producer was aborted before its relay ended (every reader
/// left), with an error event for anyone who reads it later.
struct Completes(Arc<ChunkLog>);

impl Drop for Completes {
    fn drop(&mut self) {
        if !self.0.finished() {
            self.0.append(&error_frame(
                "this stream was cancelled because every reader left; the answer is incomplete",
                "stream_cancelled",
            ));
            self.0.finish();
        }
    }
}

/// Every chunk log, live or recently finished.
pub struct Hub {
    logs: Mutex<HashMap<String, Arc<ChunkLog>>>,
    /// How long finished logs stay readable.
    keep: Duration,
    /// Events a reader may fall behind before it is cut off.
    max_lag: usize,
}

impl Hub {
    pub fn new(keep: Duration, max_lag: usize) -> Hub {
        Hub {
            logs: Mutex::new(HashMap::new()),
            keep,
            max_lag,
        }
    }

    /// Starts a log fed by `relay`, in a task of its own, and returns the log.
    pub fn publish<R>(
        &self,
        id: &str,
        tenant: &str,
        origin_strips_usage: bool,
        relay: R,
    ) -> Arc<ChunkLog>
    where
        R: Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
    {
        let log = Arc::new(ChunkLog {
            id: id.to_string(),
            tenant: tenant.to_string(),
            origin_strips_usage,
            events: Mutex::new(Vec::new()),
            progress: watch::channel((0, false)).0,
            readers: AtomicUsize::new(0),
            producer: Mutex::new(None),
            finished_at: Mutex::new(None),
        });
        let feeding = Completes(log.clone());
        let task = tokio::spawn(async move {
            let mut relay = std::pin::pin!(relay);
            while let Some(Ok(batch)) = relay.next().await {
                feeding.0.append(&batch);
            }
            feeding.0.finish();
        });
        if let Ok(mut producer) = log.producer.lock() {
            *producer = Some(task.abort_handle());
        }
        let now = Instant::now();
        if let Ok(mut logs) = self.logs.lock() {
            let keep = self.keep;
            logs.retain(|_, l| {
                l.finished_at
                    .lock()
                    .map(|at| at.is_none_or(|at| now.saturating_duration_since(at) < keep))
                    .unwrap_or(true)
            });
            logs.insert(id.to_string(), log.clone());
        }
        log
    }

    pub fn get(&self, id: &str) -> Option<Arc<ChunkLog>> {
        let log = self.logs.lock().ok()?.get(id).cloned()?;
        let expired = log
            .finished_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() >= self.keep);
        (!expired).then_some(log)
    }

    /// A reader from event `from` (0: the start). With `ids`, each event carries its index
    /// as the SSE `id`, for `Last-Event-ID` resumption; with `strip_usage` the usage-only
    /// chunk is left out.
    pub fn reader(
        &self,
        log: &Arc<ChunkLog>,
        from: usize,
        ids: bool,
        strip_usage: bool,
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
        log.readers.fetch_add(1, Ordering::AcqRel);
        // A late joiner replaying from the start is not slow: it is allowed the lag it
        // starts with, plus `max_lag` more.
        let behind_at_start = log.len().saturating_sub(from);
        let cursor = Cursor {
            log: log.clone(),
            next: from,
            ids,
            strip_usage,
            max_lag: self.max_lag + behind_at_start,
            progress: log.progress.subscribe(),
            done: false,
        };
        futures_util::stream::unfold(cursor, |mut cursor| async move {
            loop {
                if cursor.done {
                    return None;
                }
                let (count, finished) = *cursor.progress.borrow_and_update();
                if cursor.next < count {
                    if count - cursor.next > cursor.max_lag && !finished {
                        cursor.done = true;
                        let frame = error_frame(
                            "this reader fell too far behind the stream and was cut off; the others continue",
                            "reader_too_slow",
                        );
                        return Some((Ok(frame), cursor));
                    }
                    let event = cursor
                        .log
                        .events
                        .lock()
                        .ok()
                        .and_then(|e| e.get(cursor.next).cloned())
                        .unwrap_or_default();
                    let index = cursor.next;
                    cursor.next += 1;
                    let event = if cursor.strip_usage {
                        without_usage_chunk(event)
                    } else {
                        event
                    };
                    if event.is_empty() {
                        continue;
                    }
                    let frame = if cursor.ids {
                        let mut framed = format!("id: {index}\n").into_bytes();
                        framed.extend_from_slice(&event);
                        Bytes::from(framed)
                    } else {
                        event
                    };
                    return Some((Ok(frame), cursor));
                }
                if finished {
                    return None;
                }
                if cursor.progress.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

struct Cursor {
    log: Arc<ChunkLog>,
    next: usize,
    ids: bool,
    strip_usage: bool,
    max_lag: usize,
    progress: watch::Receiver<(usize, bool)>,
    done: bool,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let left = self.log.readers.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && !self.log.finished() {
            // Nobody listens any more: stop the upstream; what it produced is settled as
            // the relay drops.
            if let Some(task) = self.log.producer.lock().ok().and_then(|mut p| p.take()) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Bytes {
        Bytes::from(format!("data: {{\"n\":{n}}}\n\n"))
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_cut_off_alone() {
        let hub = Hub::new(Duration::from_secs(60), 5);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        // Paced: the producer yields between events, as a real upstream does.
        let relay = futures_util::stream::iter(0..20)
            .then(|n| async move {
                tokio::task::yield_now().await;
                Ok(event(n))
            })
            .chain(futures_util::stream::once(async move {
                let _ = gate.await;
                Ok(event(20))
            }));
        let log = hub.publish("str_t", "acme", false, relay);
        let mut keen = Box::pin(hub.reader(&log, 0, false, false));
        let mut slow = Box::pin(hub.reader(&log, 0, false, false));
        // The keen reader keeps up; the slow one has not read anything.
        for n in 0..20 {
            assert_eq!(keen.next().await, Some(Ok(event(n))));
        }
        let cut = slow.next().await.and_then(Result::ok).unwrap_or_default();
        assert!(String::from_utf8_lossy(&cut).contains("reader_too_slow"));
        assert_eq!(slow.next().await, None);
        let _ = release.send(());
        assert_eq!(keen.next().await, Some(Ok(event(20))));
        assert_eq!(keen.next().await, None);
        assert!(log.finished());
    }

    #[tokio::test]
    async fn readers_start_where_they_ask_and_number_events_when_asked() {
        let hub = Hub::new(Duration::from_secs(60), 100);
        let relay = futures_util::stream::iter(vec![Ok(Bytes::from_static(
            b"data: {\"n\":0}\n\ndata: {\"n\":1}\n\ndata: [DONE]\n\n",
        ))]);
        let log = hub.publish("str_u", "acme", false, relay);
        let frames: Vec<Bytes> = hub
            .reader(&log, 1, true, false)
            .map(|r| r.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(
            frames,
            [
                Bytes::from_static(b"id: 1\ndata: {\"n\":1}\n\n"),
                Bytes::from_static(b"id: 2\ndata: [DONE]\n\n")
            ]
        );
        assert!(hub.get("str_u").is_some());
    }
}
