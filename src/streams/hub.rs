//! The one registry of streams: an append-only chunk log per streamed answer, read
//! through a cursor per subscriber, carrying what the console shows of it (tokens, tail)
//! and its kill switch.
//!
//! The upstream relay runs in a task that belongs to the log, not to the first client: it
//! appends whole events, and every reader (the client that asked, and any watchers) reads
//! them at its own pace. Nothing is dropped from the middle for anyone; a reader that
//! falls too far behind is cut off alone with an error event. When the last reader leaves
//! before the answer is complete, the upstream task is aborted, which cancels the
//! generation and settles what was produced. Finished logs stay readable for a while,
//! bounded by age, count and bytes; `sweep`, run on a timer, drops the rest.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{Relayed, error_frame};
use crate::domain::StreamPolicy;
use crate::domain::snapshot::StreamView;
use crate::shutdown::Shutdown;
use crate::telemetry::Map;

/// A stream of SSE frames for a client.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

/// Characters of text kept per stream for tailing.
const TAIL: usize = 400;

/// Who a stream belongs to and where it comes from.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub tenant: String,
    pub model: String,
    pub region: String,
    pub instance: String,
    /// Whether the client that asked left out the usage-only chunk; watchers see what
    /// it saw.
    pub strips_usage: bool,
}

/// The bit of `ChunkLog::progress` that says the log is complete.
const COMPLETE: u64 = 1 << 63;

pub struct ChunkLog {
    pub id: String,
    pub meta: StreamMeta,
    started: Instant,
    events: Mutex<Vec<Relayed>>,
    bytes: AtomicUsize,
    /// Events appended so far, and `COMPLETE` once the log is; written under the
    /// `events` lock. `progressed` wakes readers waiting on either (one notifier: a
    /// watch channel notifies eight lists on every event).
    progress: AtomicU64,
    progressed: Notify,
    readers: AtomicUsize,
    producer: Mutex<Option<AbortHandle>>,
    finished_at: Mutex<Option<Instant>>,
    /// Content deltas seen (about one token each), and the end of the text.
    tokens: AtomicU64,
    tail: Mutex<String>,
    /// Set once by an operator's kill; `kill_waiters` wakes the relay that waits on it
    /// (a flag and a notifier in place: a watch channel is ~330 bytes more a stream).
    killed: AtomicBool,
    kill_waiters: Notify,
}

impl ChunkLog {
    fn append(&self, event: Relayed) {
        self.bytes.fetch_add(event.bytes.len(), Ordering::Relaxed);
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(event);
        self.progress.store(events.len() as u64, Ordering::Release);
        drop(events);
        self.progressed.notify_waiters();
    }

    fn finish(&self) {
        if let Ok(mut at) = self.finished_at.lock() {
            *at = Some(Instant::now());
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.shrink_to_fit();
        self.progress
            .store(events.len() as u64 | COMPLETE, Ordering::Release);
        drop(events);
        self.progressed.notify_waiters();
    }

    /// Events appended so far, and whether the log is complete.
    fn progress(&self) -> (usize, bool) {
        let progress = self.progress.load(Ordering::Acquire);
        ((progress & !COMPLETE) as usize, progress & COMPLETE != 0)
    }

    pub fn finished(&self) -> bool {
        self.progress().1
    }

    pub fn len(&self) -> usize {
        self.progress().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of events kept.
    pub fn size(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Returns once the log is complete (the upstream ended, or was cancelled).
    pub async fn wait_finished(&self) {
        loop {
            // Made before the flag is read (see the readers' wait).
            let notified = self.progressed.notified();
            if self.finished() {
                return;
            }
            notified.await;
        }
    }

    /// Every event so far, as relayed.
    pub fn events(&self) -> Vec<Bytes> {
        self.events
            .lock()
            .map(|e| e.iter().map(|r| r.bytes.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether the log is complete and its last event is `data: [DONE]`: the answer is
    /// whole, not cut by an error.
    pub fn completed_cleanly(&self) -> bool {
        self.finished()
            && self
                .events
                .lock()
                .ok()
                .and_then(|e| {
                    e.last()
                        .map(|last| last.bytes.trim_ascii() == b"data: [DONE]")
                })
                .unwrap_or(false)
    }

    /// Records a content delta (about one token), for the console.
    pub fn text(&self, delta: &str) {
        self.tokens.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tail) = self.tail.lock() {
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
    pub fn killed(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let log = self.clone();
        async move {
            loop {
                let notified = log.kill_waiters.notified();
                let mut notified = std::pin::pin!(notified);
                // Waiting before the flag is read: a kill in between still wakes it.
                notified.as_mut().enable();
                if log.killed.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        }
    }

    fn view(&self, now: Instant) -> StreamView {
        let age = now.saturating_duration_since(self.started);
        let tokens = self.tokens.load(Ordering::Relaxed);
        StreamView {
            id: self.id.clone(),
            tenant: self.meta.tenant.clone(),
            model: self.meta.model.clone(),
            region: self.meta.region.clone(),
            instance: self.meta.instance.clone(),
            tokens,
            tokens_per_sec: tokens as f64 / age.as_secs_f64().max(0.001),
            age_ms: age.as_millis() as u64,
            tail: self.tail.lock().map(|t| t.clone()).unwrap_or_default(),
        }
    }

    fn finished_at(&self) -> Option<Instant> {
        self.finished_at.lock().ok().and_then(|at| *at)
    }
}

/// Finishes a log and hands it to the finished logs kept, when its relay ends or, with
/// an error event for anyone who reads it later, when its producer was aborted first
/// (every reader left).
struct Completes {
    log: Arc<ChunkLog>,
    finished: Arc<Mutex<Finished>>,
}

impl Completes {
    fn finish(&self) {
        // Under the lock: the logs are kept in the order they finished.
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        self.log.finish();
        finished.add(self.log.clone());
    }
}

impl Drop for Completes {
    fn drop(&mut self) {
        if !self.log.finished() {
            self.log.append(Relayed {
                bytes: error_frame(
                    "this stream was cancelled because every reader left; the answer is incomplete",
                    "stream_cancelled",
                ),
                usage_only: false,
            });
            self.finish();
        }
    }
}

/// The finished logs kept, oldest first, overall and by tenant, with their counts and
/// bytes: the sweep takes what it drops from the fronts, under a lock of its own, where
/// it once sorted every kept log each second under the lock that opening a stream takes
/// (with 2,000 kept, a worker waited up to 1.8 ms for it). A log dropped leaves both
/// orders at once, so its memory goes with it.
#[derive(Default)]
struct Finished {
    /// By the order they finished in.
    order: BTreeMap<u64, Arc<ChunkLog>>,
    next: u64,
    bytes: usize,
    tenants: HashMap<String, Held>,
}

/// One tenant's finished logs kept, oldest first (by their place in `order`), and their
/// bytes.
#[derive(Default)]
struct Held {
    order: VecDeque<u64>,
    bytes: usize,
}

impl Finished {
    fn add(&mut self, log: Arc<ChunkLog>) {
        let (at, size) = (self.next, log.size());
        self.next += 1;
        self.bytes += size;
        let held = match self.tenants.get_mut(&log.meta.tenant) {
            Some(held) => held,
            None => self.tenants.entry(log.meta.tenant.clone()).or_default(),
        };
        held.bytes += size;
        held.order.push_back(at);
        self.order.insert(at, log);
    }

    fn count(&self) -> usize {
        self.order.len()
    }

    fn oldest(&self) -> Option<&Arc<ChunkLog>> {
        self.order.first_key_value().map(|(_, log)| log)
    }

    /// Takes `tenant`'s oldest kept log out of what is kept.
    fn sweep_oldest_of(&mut self, tenant: &str) -> Option<Arc<ChunkLog>> {
        let held = self.tenants.get_mut(tenant)?;
        let at = held.order.pop_front()?;
        let log = self.order.remove(&at)?;
        let size = log.size();
        held.bytes -= size;
        if held.order.is_empty() {
            self.tenants.remove(tenant);
        }
        self.bytes -= size;
        Some(log)
    }

    /// Takes the oldest kept log out of what is kept (its tenant's oldest too).
    fn sweep_oldest(&mut self) -> Option<Arc<ChunkLog>> {
        let oldest = self.oldest()?.clone();
        self.sweep_oldest_of(&oldest.meta.tenant)
    }
}

/// Every chunk log, live or recently finished.
pub struct Hub {
    /// By id (the gateway's own; lookups by a client's id insert nothing): foldhash.
    logs: Mutex<Map<String, Arc<ChunkLog>>>,
    finished: Arc<Mutex<Finished>>,
    /// Watchers following streams now, by tenant.
    watchers: Arc<Mutex<HashMap<String, usize>>>,
    policy: StreamPolicy,
    next: AtomicU64,
    /// Every relay counts as work that shutdown waits for.
    shutdown: Arc<Shutdown>,
}

impl Hub {
    pub fn new(policy: StreamPolicy, shutdown: Arc<Shutdown>) -> Hub {
        Hub {
            logs: Mutex::new(Map::default()),
            finished: Arc::default(),
            watchers: Arc::default(),
            policy,
            next: AtomicU64::new(0),
            shutdown,
        }
    }

    /// Opens a log for a stream about to be relayed; it is live (listed, killable) from
    /// now on, and readable once `start`ed.
    pub fn open(&self, meta: StreamMeta) -> Arc<ChunkLog> {
        let id = format!(
            "str_{:x}{:04x}",
            crate::telemetry::now_ms(),
            self.next.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        let log = Arc::new(ChunkLog {
            id: id.clone(),
            meta,
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
            bytes: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            progressed: Notify::new(),
            readers: AtomicUsize::new(0),
            producer: Mutex::new(None),
            finished_at: Mutex::new(None),
            tokens: AtomicU64::new(0),
            tail: Mutex::new(String::new()),
            killed: AtomicBool::new(false),
            kill_waiters: Notify::new(),
        });
        if let Ok(mut logs) = self.logs.lock() {
            logs.insert(id, log.clone());
        }
        log
    }

    /// Feeds `log` from `relay` in a task of its own, and returns the publisher's reader.
    /// The reader exists before the task starts, so no other reader coming and going can
    /// leave the log without one and cancel the upstream.
    pub fn start<R>(&self, log: &Arc<ChunkLog>, relay: R) -> EventStream
    where
        R: Stream<Item = Relayed> + Send + 'static,
    {
        let reader = self.reader(log, 0, false, log.meta.strips_usage);
        let feeding = Completes {
            log: log.clone(),
            finished: self.finished.clone(),
        };
        let work = self.shutdown.work();
        let relay = crate::telemetry::guarded(relay, "relay", internal_error);
        let task = tokio::spawn(async move {
            let _work = work;
            let mut relay = std::pin::pin!(relay);
            while let Some(event) = relay.next().await {
                feeding.log.append(event);
            }
            feeding.finish();
        });
        if let Ok(mut producer) = log.producer.lock() {
            *producer = Some(task.abort_handle());
        }
        reader
    }

    pub fn get(&self, id: &str) -> Option<Arc<ChunkLog>> {
        let log = self.logs.lock().ok()?.get(id).cloned()?;
        let expired = log
            .finished_at()
            .is_some_and(|at| at.elapsed() >= self.policy.keep_finished);
        (!expired).then_some(log)
    }

    /// Ends a live stream; false when there is no such stream.
    pub fn kill(&self, id: &str) -> bool {
        match self.get(id).filter(|log| !log.finished()) {
            Some(log) => {
                log.killed.store(true, Ordering::Release);
                log.kill_waiters.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Every live stream, oldest first.
    pub fn views(&self) -> Vec<StreamView> {
        let now = Instant::now();
        let mut views: Vec<StreamView> = self
            .logs
            .lock()
            .map(|logs| {
                logs.values()
                    .filter(|log| !log.finished())
                    .map(|log| log.view(now))
                    .collect()
            })
            .unwrap_or_default();
        views.sort_by_key(|v| std::cmp::Reverse(v.age_ms));
        views
    }

    /// Streams being relayed now.
    pub fn live(&self) -> usize {
        self.logs
            .lock()
            .map(|logs| logs.values().filter(|log| !log.finished()).count())
            .unwrap_or(0)
    }

    /// Finished streams kept, and the bytes of their events.
    pub fn kept(&self) -> (usize, usize) {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        (finished.count(), finished.bytes)
    }

    /// Drops finished logs past `keep_finished`, then each tenant's oldest until its
    /// rest fit in `max_finished_bytes_per_tenant`, then the oldest until the rest fit
    /// in `max_finished` and `max_finished_bytes`. Returns how many were dropped. The
    /// logs' lock is held only to take out what was dropped.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let policy = &self.policy;
        let mut swept = Vec::new();
        {
            let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(log) = finished.oldest() {
                let expired = log
                    .finished_at()
                    .is_none_or(|at| now.saturating_duration_since(at) >= policy.keep_finished);
                if !expired {
                    break;
                }
                swept.extend(finished.sweep_oldest());
            }
            let over: Vec<String> = finished
                .tenants
                .iter()
                .filter(|(_, held)| held.bytes > policy.max_finished_bytes_per_tenant)
                .map(|(tenant, _)| tenant.clone())
                .collect();
            for tenant in over {
                while finished
                    .tenants
                    .get(&tenant)
                    .is_some_and(|held| held.bytes > policy.max_finished_bytes_per_tenant)
                {
                    swept.extend(finished.sweep_oldest_of(&tenant));
                }
            }
            while finished.count() > policy.max_finished
                || finished.bytes > policy.max_finished_bytes
            {
                let Some(log) = finished.sweep_oldest() else {
                    break;
                };
                swept.push(log);
            }
        }
        if swept.is_empty() {
            return 0;
        }
        if let Ok(mut logs) = self.logs.lock() {
            for log in &swept {
                logs.remove(&log.id);
            }
            // Given back once a burst has passed, not rehashed every second.
            if logs.capacity() > 4 * logs.len().max(256) {
                let room = logs.len() * 2;
                logs.shrink_to(room);
            }
        }
        // The logs themselves are freed here, with no lock held.
        swept.len()
    }

    /// A watcher for `tenant` (a tenant's own, or an operator's with `None`): a reader
    /// numbered for resumption, seeing what the client saw. `Err(n)` when the tenant
    /// already has `n` watchers, its most.
    pub fn watch(
        &self,
        log: &Arc<ChunkLog>,
        from: usize,
        tenant: Option<&str>,
    ) -> Result<EventStream, usize> {
        let reader = self.reader(log, from, true, log.meta.strips_usage);
        let Some(tenant) = tenant else {
            return Ok(reader);
        };
        {
            let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let n = watchers.entry(tenant.to_string()).or_default();
            if *n >= self.policy.max_watchers_per_tenant {
                return Err(*n);
            }
            *n += 1;
        }
        let slot = WatcherSlot {
            watchers: self.watchers.clone(),
            tenant: tenant.to_string(),
        };
        Ok(Box::pin(reader.map(move |frame| {
            let _held = &slot;
            frame
        })))
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
    ) -> EventStream {
        log.readers.fetch_add(1, Ordering::AcqRel);
        // A late joiner replaying from the start is not slow: it is allowed the lag it
        // starts with, plus `max_lag` more.
        let behind_at_start = log.len().saturating_sub(from);
        let cursor = Cursor {
            log: log.clone(),
            next: from,
            ids,
            strip_usage,
            max_lag: self.policy.max_lag + behind_at_start,
            done: false,
        };
        let reader = futures_util::stream::unfold(cursor, |mut cursor| async move {
            loop {
                if cursor.done {
                    return None;
                }
                let (count, finished) = cursor.log.progress();
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
                        .and_then(|e| e.get(cursor.next).cloned());
                    let index = cursor.next;
                    cursor.next += 1;
                    let Some(event) = event else { continue };
                    if cursor.strip_usage && event.usage_only {
                        continue;
                    }
                    let frame = if cursor.ids {
                        let mut framed = format!("id: {index}\n").into_bytes();
                        framed.extend_from_slice(&event.bytes);
                        Bytes::from(framed)
                    } else {
                        event.bytes
                    };
                    return Some((Ok(frame), cursor));
                }
                if finished {
                    return None;
                }
                // Made before the count is read again: `notify_waiters` wakes every
                // `Notified` made before it, polled or not, so an event in between
                // still wakes this one.
                let notified = cursor.log.progressed.notified();
                if cursor.log.progress() == (count, finished) {
                    notified.await;
                }
            }
        });
        Box::pin(crate::telemetry::guarded(reader, "stream reader", || {
            Ok(internal_error().bytes)
        }))
    }
}

/// The event that ends a stream whose relay or reader panicked.
fn internal_error() -> Relayed {
    Relayed {
        bytes: error_frame(
            "the gateway failed while relaying this stream; it has been logged",
            "internal_error",
        ),
        usage_only: false,
    }
}

/// A tenant's place among its watchers, given back when the watcher's stream drops.
struct WatcherSlot {
    watchers: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = watchers.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                watchers.remove(&self.tenant);
            }
        }
    }
}

struct Cursor {
    log: Arc<ChunkLog>,
    next: usize,
    ids: bool,
    strip_usage: bool,
    max_lag: usize,
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
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    fn event(n: usize) -> Relayed {
        Relayed {
            bytes: Bytes::from(format!("data: {{\"n\":{n}}}\n\n")),
            usage_only: false,
        }
    }

    fn meta() -> StreamMeta {
        StreamMeta {
            tenant: "acme".into(),
            model: "m".into(),
            region: "r".into(),
            instance: "i".into(),
            strips_usage: false,
        }
    }

    /// A stream of `tenant`'s relayed to the end (two events, 30 bytes) and read.
    async fn finished(hub: &Hub, tenant: &str) -> Arc<ChunkLog> {
        let log = hub.open(StreamMeta {
            tenant: tenant.into(),
            ..meta()
        });
        let reader = hub.start(&log, futures_util::stream::iter(vec![event(0), event(1)]));
        let _: Vec<_> = reader.collect().await;
        log.wait_finished().await;
        log
    }

    /// A hub whose tenants keep one finished stream of `finished`'s each (30 bytes).
    fn hub_keeping_40_bytes_a_tenant() -> Hub {
        Hub::new(
            StreamPolicy {
                max_finished_bytes_per_tenant: 40,
                ..StreamPolicy::default()
            },
            Arc::default(),
        )
    }

    fn hub(max_lag: usize) -> Hub {
        Hub::new(
            StreamPolicy {
                max_lag,
                ..StreamPolicy::default()
            },
            Arc::default(),
        )
    }

    /// Readers waiting at the end of the log are woken by each event appended and by
    /// the end; a wake-up lost would leave them waiting, and paused time would run
    /// their timeout out instead of hanging.
    #[tokio::test(start_paused = true)]
    async fn waiting_readers_wake_for_each_event_and_for_the_end() {
        let hub = hub(100);
        let (send, events) = tokio::sync::mpsc::unbounded_channel::<Relayed>();
        let relay = futures_util::stream::unfold(events, |mut events| async move {
            events.recv().await.map(|event| (event, events))
        });
        let log = hub.open(meta());
        let mut origin = hub.start(&log, relay);
        let mut watcher = hub.reader(&log, 0, false, false);
        let wait = Duration::from_secs(5);
        for n in 0..3 {
            let (first, second, ()) = tokio::join!(
                tokio::time::timeout(wait, origin.next()),
                tokio::time::timeout(wait, watcher.next()),
                async {
                    // Both readers are waiting by the time the event comes.
                    tokio::task::yield_now().await;
                    send.send(event(n)).unwrap();
                },
            );
            assert_eq!(first.unwrap(), Some(Ok(event(n).bytes)));
            assert_eq!(second.unwrap(), Some(Ok(event(n).bytes)));
        }
        let (first, second, ()) = tokio::join!(
            tokio::time::timeout(wait, origin.next()),
            tokio::time::timeout(wait, watcher.next()),
            async {
                tokio::task::yield_now().await;
                drop(send);
            },
        );
        assert_eq!(first.unwrap(), None);
        assert_eq!(second.unwrap(), None);
        assert!(log.finished());
        tokio::time::timeout(wait, log.wait_finished())
            .await
            .unwrap();
    }

    /// A stream published from a relay fed by hand, one event at a time: the sender that
    /// feeds it, its log, the publisher's reader and a watcher's.
    fn published_by_hand(
        hub: &Hub,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Relayed>,
        Arc<ChunkLog>,
        EventStream,
        EventStream,
    ) {
        let (send, events) = tokio::sync::mpsc::unbounded_channel::<Relayed>();
        let relay = futures_util::stream::unfold(events, |mut events| async move {
            events.recv().await.map(|event| (event, events))
        });
        let log = hub.open(meta());
        let origin = hub.start(&log, relay);
        let watcher = hub.reader(&log, 0, false, false);
        (send, log, origin, watcher)
    }

    /// Sends `events` down the relay and closes it; what `watcher` then reads to the end
    /// (paused time runs out the wait instead of hanging, should it never end).
    async fn sent_and_watched(
        send: tokio::sync::mpsc::UnboundedSender<Relayed>,
        events: std::ops::Range<usize>,
        watcher: EventStream,
    ) -> Vec<Result<Bytes, Infallible>> {
        for n in events {
            send.send(event(n)).unwrap();
        }
        drop(send);
        tokio::time::timeout(Duration::from_secs(5), watcher.collect())
            .await
            .expect("the watcher reads to the end")
    }

    /// A publisher that stops reading (a slow client) holds up nobody: the relay's task
    /// goes on to the end for the watchers.
    #[tokio::test(start_paused = true)]
    async fn a_publisher_that_stops_reading_holds_up_no_watcher() {
        let hub = hub(100);
        let (send, log, mut origin, watcher) = published_by_hand(&hub);
        send.send(event(0)).unwrap();
        assert_eq!(origin.next().await, Some(Ok(event(0).bytes)));
        let seen = sent_and_watched(send, 1..4, watcher).await;
        assert_eq!(seen, (0..4).map(|n| Ok(event(n).bytes)).collect::<Vec<_>>());
        assert!(log.finished());
        let rest: Vec<_> = origin.collect().await;
        assert_eq!(rest.len(), 3, "the publisher still gets the rest");
    }

    /// A publisher that leaves while it waits, with a watcher still reading, cancels
    /// nothing: the watcher reads to the end.
    #[tokio::test(start_paused = true)]
    async fn a_publisher_leaving_with_a_watcher_left_cancels_nothing() {
        let hub = hub(100);
        let (send, log, mut origin, watcher) = published_by_hand(&hub);
        assert_eq!(origin.next().now_or_never(), None, "waiting");
        drop(origin);
        let seen = sent_and_watched(send, 0..3, watcher).await;
        assert_eq!(seen, (0..3).map(|n| Ok(event(n).bytes)).collect::<Vec<_>>());
        assert!(!String::from_utf8_lossy(&log.events().concat()).contains("stream_cancelled"));
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_cut_off_alone() {
        let hub = hub(5);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        // Paced: the producer yields between events, as a real upstream does.
        let relay = futures_util::stream::iter(0..20)
            .then(|n| async move {
                tokio::task::yield_now().await;
                event(n)
            })
            .chain(futures_util::stream::once(async move {
                let _ = gate.await;
                event(20)
            }));
        let log = hub.open(meta());
        let mut keen = hub.start(&log, relay);
        let mut slow = hub.reader(&log, 0, false, false);
        // The keen reader keeps up; the slow one has not read anything.
        for n in 0..20 {
            assert_eq!(keen.next().await, Some(Ok(event(n).bytes)));
        }
        let cut = slow.next().await.and_then(Result::ok).unwrap_or_default();
        assert!(String::from_utf8_lossy(&cut).contains("reader_too_slow"));
        assert_eq!(slow.next().await, None);
        let _ = release.send(());
        assert_eq!(keen.next().await, Some(Ok(event(20).bytes)));
        assert_eq!(keen.next().await, None);
        assert!(log.finished());
    }

    #[tokio::test]
    async fn readers_start_where_they_ask_and_skip_usage_when_asked() {
        let hub = hub(100);
        let usage = Relayed {
            bytes: Bytes::from_static(b"data: {\"choices\":[],\"usage\":{}}\n\n"),
            usage_only: true,
        };
        let done = Relayed {
            bytes: Bytes::from_static(b"data: [DONE]\n\n"),
            usage_only: false,
        };
        let relay = futures_util::stream::iter(vec![event(0), event(1), usage, done]);
        let log = hub.open(meta());
        let origin: Vec<Bytes> = hub
            .start(&log, relay)
            .map(|r| r.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(origin.len(), 4);
        let frames: Vec<Bytes> = hub
            .reader(&log, 1, true, true)
            .map(|r| r.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(
            frames,
            [
                Bytes::from_static(b"id: 1\ndata: {\"n\":1}\n\n"),
                Bytes::from_static(b"id: 3\ndata: [DONE]\n\n")
            ]
        );
        assert!(log.completed_cleanly());
        assert!(hub.get(&log.id).is_some());
    }

    /// Regression: a follower attaching and leaving between publishing and the
    /// publisher's first read cancelled the upstream.
    #[tokio::test]
    async fn a_reader_leaving_before_the_publisher_reads_cancels_nothing() {
        let hub = hub(100);
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let relay = futures_util::stream::once(async move {
            let _ = gate.await;
            event(0)
        });
        let log = hub.open(meta());
        let mut origin = hub.start(&log, relay);
        drop(hub.reader(&log, 0, false, false));
        let _ = release.send(());
        assert_eq!(origin.next().await, Some(Ok(event(0).bytes)));
        assert_eq!(origin.next().await, None);
        assert!(!String::from_utf8_lossy(&log.events().concat()).contains("stream_cancelled"));
    }

    #[tokio::test]
    async fn a_relay_that_panics_ends_its_stream_with_an_error_and_frees_its_work() {
        let shutdown = Arc::new(Shutdown::default());
        let hub = Hub::new(StreamPolicy::default(), shutdown.clone());
        let relay = futures_util::stream::iter(0..3).map(|n| {
            assert!(n < 1, "a bug in the relay");
            event(n)
        });
        let log = hub.open(meta());
        let frames: Vec<Bytes> = hub
            .start(&log, relay)
            .map(|r| r.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], event(0).bytes);
        assert!(String::from_utf8_lossy(&frames[1]).contains("internal_error"));
        log.wait_finished().await;
        shutdown.idle().await;
        assert_eq!(shutdown.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_streams_are_bounded_by_age_count_and_bytes() {
        let hub = Hub::new(
            StreamPolicy {
                keep_finished: Duration::from_secs(60),
                max_finished: 3,
                max_finished_bytes: 1 << 20,
                max_lag: 100,
                ..StreamPolicy::default()
            },
            Arc::default(),
        );
        let mut ids = Vec::new();
        for n in 0..5 {
            let log = hub.open(meta());
            let reader = hub.start(&log, futures_util::stream::iter(vec![event(n)]));
            let _: Vec<_> = reader.collect().await;
            log.wait_finished().await;
            ids.push(log.id.clone());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let live = hub.open(meta());
        assert_eq!(hub.sweep(), 2, "the two oldest beyond max_finished");
        assert!(hub.get(&ids[0]).is_none() && hub.get(&ids[1]).is_none());
        assert!(hub.get(&ids[4]).is_some());
        assert_eq!(hub.kept().0, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(hub.sweep(), 3, "expired");
        assert!(hub.get(&live.id).is_some(), "a live stream is never swept");
        assert_eq!(hub.views().len(), 1);
        assert!(hub.kill(&live.id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kill_reaches_waits_made_before_and_after_it() {
        let hub = Hub::new(StreamPolicy::default(), Arc::default());
        let log = hub.open(meta());
        let before = tokio::spawn(log.killed());
        let other = hub.open(meta());
        let untouched = tokio::spawn(other.killed());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!before.is_finished(), "nothing killed yet");
        assert!(hub.kill(&log.id));
        tokio::time::timeout(Duration::from_secs(1), before)
            .await
            .expect("a wait made before the kill ends")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), log.killed())
            .await
            .expect("a wait made after the kill ends at once");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!untouched.is_finished(), "another stream's wait goes on");
        assert!(!hub.kill("str_unknown"));
    }

    #[tokio::test]
    async fn no_tenant_keeps_more_than_its_share_of_finished_bytes() {
        let hub = hub_keeping_40_bytes_a_tenant();
        let mut kept = Vec::new();
        for tenant in ["greedy", "greedy", "greedy", "modest"] {
            kept.push(finished(&hub, tenant).await.id.clone());
        }
        // Each log holds 30 bytes of events: within 40, the greedy tenant keeps its newest.
        assert_eq!(hub.sweep(), 2);
        assert!(hub.get(&kept[0]).is_none() && hub.get(&kept[1]).is_none());
        assert!(hub.get(&kept[2]).is_some() && hub.get(&kept[3]).is_some());
    }

    /// The sweep takes from the front of the finished logs: each tenant's oldest beyond
    /// its bytes, then the oldest of all beyond the count, then whatever outlived its keep;
    /// and what it keeps is counted as it goes.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_drops_the_oldest_by_tenant_then_overall_then_by_age() {
        let hub = Hub::new(
            StreamPolicy {
                keep_finished: Duration::from_secs(60),
                max_finished: 3,
                max_finished_bytes_per_tenant: 40,
                ..StreamPolicy::default()
            },
            Arc::default(),
        );
        let finish = async |tenant: &str| {
            let log = finished(&hub, tenant).await;
            tokio::time::advance(Duration::from_secs(1)).await;
            log.id.clone()
        };
        // Each log holds 30 bytes: a tenant keeps one within its 40.
        let mut ids = Vec::new();
        for tenant in ["a", "b", "a", "c", "b", "a"] {
            ids.push(finish(tenant).await);
        }
        assert_eq!(hub.kept(), (6, 180));
        assert_eq!(hub.sweep(), 3, "a's two oldest and b's oldest");
        let kept =
            |ids: &[String]| -> Vec<bool> { ids.iter().map(|id| hub.get(id).is_some()).collect() };
        assert_eq!(kept(&ids), [false, false, false, true, true, true]);
        assert_eq!(hub.kept(), (3, 90));
        ids.push(finish("d").await);
        assert_eq!(hub.sweep(), 1, "the oldest of all, beyond three");
        assert_eq!(kept(&ids), [false, false, false, false, true, true, true]);
        assert_eq!(hub.sweep(), 0, "nothing more to drop");
        tokio::time::advance(Duration::from_secs(57)).await;
        assert_eq!(hub.sweep(), 1, "b's, finished 60 s ago");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(hub.sweep(), 2);
        assert_eq!(hub.kept(), (0, 0));
        assert!(hub.logs.lock().unwrap().is_empty());
        assert!(hub.finished.lock().unwrap().tenants.is_empty());
    }

    /// A log dropped for its tenant's bytes is freed by the sweep that drops it, even with
    /// older logs of other tenants still kept in front of it.
    #[tokio::test]
    async fn a_log_dropped_for_its_tenants_bytes_is_freed_at_once() {
        let hub = hub_keeping_40_bytes_a_tenant();
        let mut kept = Vec::new();
        for tenant in ["modest", "greedy", "greedy"] {
            kept.push(Arc::downgrade(&finished(&hub, tenant).await));
        }
        assert_eq!(hub.sweep(), 1);
        assert!(
            kept[0].upgrade().is_some(),
            "the modest tenant's, older, is kept"
        );
        assert!(
            kept[1].upgrade().is_none(),
            "the greedy tenant's oldest is gone"
        );
        assert!(kept[2].upgrade().is_some());
    }

    /// A stream cancelled because its last reader left is finished with an error event,
    /// kept as any finished stream is, and swept when its keep is over.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_stream_is_kept_and_swept_as_a_finished_one() {
        let hub = Hub::new(
            StreamPolicy {
                keep_finished: Duration::from_secs(60),
                ..StreamPolicy::default()
            },
            Arc::default(),
        );
        let log = hub.open(meta());
        let relay =
            futures_util::stream::iter(vec![event(0)]).chain(futures_util::stream::pending());
        let mut reader = hub.start(&log, relay);
        assert_eq!(reader.next().await, Some(Ok(event(0).bytes)));
        drop(reader);
        tokio::time::timeout(Duration::from_secs(5), log.wait_finished())
            .await
            .expect("the cancelled log is finished");
        assert!(String::from_utf8_lossy(&log.events().concat()).contains("stream_cancelled"));
        assert_eq!(hub.kept(), (1, log.size()));
        assert_eq!(hub.sweep(), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(hub.sweep(), 1);
        assert!(hub.get(&log.id).is_none());
        assert_eq!(hub.kept(), (0, 0));
    }

    #[tokio::test]
    async fn a_tenant_has_at_most_its_watchers_and_a_closed_one_frees_its_place() {
        let hub = Hub::new(
            StreamPolicy {
                max_watchers_per_tenant: 2,
                ..StreamPolicy::default()
            },
            Arc::default(),
        );
        let log = hub.open(meta());
        let _origin = hub.start(&log, futures_util::stream::pending());
        let first = hub.watch(&log, 0, Some("acme"));
        let second = hub.watch(&log, 0, Some("acme"));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(hub.watch(&log, 0, Some("acme")).err(), Some(2));
        assert!(
            hub.watch(&log, 0, Some("globex")).is_ok(),
            "another tenant's own count"
        );
        assert!(
            hub.watch(&log, 0, None).is_ok(),
            "operators are not counted"
        );
        drop(first);
        assert!(hub.watch(&log, 0, Some("acme")).is_ok());
    }
}
