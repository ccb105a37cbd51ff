//! The audit log: one record per request (answered or refused) and per operator action.
//!
//! A record is encoded as the log's JSON line where it is made, into a buffer of the
//! thread that made it (one per connection worker, one shared by everything else), and
//! the record is dropped there. The writer task takes the buffers whole a moment after
//! the first line lands in one, writes them to the store on a blocking thread, and
//! hands the emptied buffers back for use again. So the request path touches nothing
//! another thread writes: no channel, no counter shared between workers, and no
//! record's strings freed on another core (measured: those frees and the channel cost
//! a request about a tenth of the gateway's CPU at c=50). The writer also flushes every
//! `audit.flush_interval` and applies retention (age and size) every minute.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::background::Background;
use crate::domain::AuditPolicy;
use crate::domain::records::AuditRecord;
use crate::store::{AuditLines, Store, StoreError};
use crate::telemetry::now_ms;

/// Records one buffer holds at most before more are dropped and counted: the writer is
/// that far behind only when the disk stalls (about 35 MiB of lines a buffer).
const BACKLOG: u64 = 100_000;
/// Buffers: one for whatever runs off the connection workers, and one for each worker
/// (workers beyond the sixteenth share).
const BUFFERS: usize = 17;
/// How long the writer gathers after the first line lands: few large writes cost far
/// less (one hand-off to a blocking thread) than many small ones.
const GATHER: Duration = Duration::from_millis(25);
/// An emptied buffer larger than this (a burst while the disk stalled) is let go rather
/// than kept for use again.
const KEEP_BUFFER: usize = 1 << 20;
/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(60);

pub struct Audit {
    policy: AuditPolicy,
    buffers: Box<[Buffer]>,
    /// The writer is running: records are kept.
    writing: AtomicBool,
    /// Told when a line lands in an empty buffer (or a reader wants what is recorded).
    landed: Notify,
    /// This replica's id, stamped on every record, when replicas share state.
    replica: OnceLock<String>,
    /// Records dropped: a buffer `BACKLOG` records behind, or a write given up.
    dropped: AtomicU64,
    written: AtomicU64,
    /// Records accepted into a buffer and then given up (counted in `dropped` too).
    lost: AtomicU64,
}

/// One thread's lines waiting for the writer, on a cache line of its own.
#[repr(align(128))]
struct Buffer {
    lines: Mutex<AuditLines>,
    /// Records ever accepted into this buffer.
    accepted: AtomicU64,
}

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, AuditLines> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Audit {
    pub fn new(policy: AuditPolicy) -> Audit {
        Audit {
            policy,
            buffers: (0..BUFFERS)
                .map(|_| Buffer {
                    lines: Mutex::new(AuditLines::default()),
                    accepted: AtomicU64::new(0),
                })
                .collect(),
            writing: AtomicBool::new(false),
            landed: Notify::new(),
            replica: OnceLock::new(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> &AuditPolicy {
        &self.policy
    }

    /// Names this replica in every record from now on.
    pub fn set_replica(&self, replica: &str) {
        let _ = self.replica.set(replica.to_string());
    }

    /// Puts a record on its way to the store; never waits. When the writer is a whole
    /// `BACKLOG` behind (the disk stalled), the record is dropped and counted rather than
    /// let memory grow without bound.
    pub fn record(&self, mut record: AuditRecord) {
        if !self.policy.enabled || !self.writing.load(Ordering::Relaxed) {
            return;
        }
        if record.replica.is_none() {
            record.replica = self.replica.get().cloned();
        }
        let buffer = match crate::workers::current() {
            Some(worker) => &self.buffers[1 + worker % (BUFFERS - 1)],
            None => &self.buffers[0],
        };
        let mut lines = buffer.lock();
        if lines.records() >= BACKLOG {
            drop(lines);
            if self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::error!(
                    backlog = BACKLOG,
                    "the audit writer is too far behind; audit records are being dropped (switchyard_audit_dropped_total)"
                );
            }
            return;
        }
        let first = lines.is_empty();
        if let Err(error) = lines.push(&record) {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "an audit record could not be encoded; dropped");
            return;
        }
        buffer.accepted.fetch_add(1, Ordering::Relaxed);
        drop(lines);
        if first {
            self.landed.notify_one();
        }
    }

    /// Records dropped since start because the writer fell too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn accepted(&self) -> u64 {
        self.buffers
            .iter()
            .map(|b| b.accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// Records accepted and not yet written.
    pub fn backlog(&self) -> u64 {
        let settled = self.written.load(Ordering::Relaxed) + self.lost.load(Ordering::Relaxed);
        self.accepted().saturating_sub(settled)
    }

    /// Records written since start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits (up to `patience`) until every record accepted before this call is
    /// written, so that a query sees them.
    pub async fn caught_up(&self, patience: Duration) {
        let target = self.accepted();
        let deadline = tokio::time::Instant::now() + patience;
        self.landed.notify_one();
        while self.written.load(Ordering::Relaxed) + self.lost.load(Ordering::Relaxed) < target
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `n` accepted records given up: counted as dropped, and settled for `caught_up`.
    fn give_up(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Every buffer's lines, each buffer replaced by an emptied one from `spare`.
    fn take(&self, spare: &mut Vec<Vec<u8>>) -> Vec<AuditLines> {
        let mut taken = Vec::new();
        for buffer in self.buffers.iter() {
            let mut lines = buffer.lock();
            if !lines.is_empty() {
                let fresh = AuditLines::reusing(spare.pop().unwrap_or_default());
                taken.push(std::mem::replace(&mut *lines, fresh));
            }
        }
        taken
    }
}

/// Starts the task that writes audit records; stopping it writes what is recorded and
/// flushes.
pub fn spawn_writer(audit: Arc<Audit>, store: Arc<dyn Store>) -> Background {
    audit.writing.store(true, Ordering::Relaxed);
    Background::spawn("audit writer", move |mut stopping| async move {
        let mut flush = tokio::time::interval(audit.policy.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Lines a failed write gave back, written again with the next batch or tick.
        let mut pending: Vec<AuditLines> = Vec::new();
        // Emptied buffers, handed back to the recorders.
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut dirty = false;
        loop {
            tokio::select! {
                () = audit.landed.notified() => {
                    tokio::time::sleep(GATHER).await;
                    pending.append(&mut audit.take(&mut spare));
                    if !pending.is_empty() {
                        pending = write(&audit, &store, pending, false, &mut spare).await;
                        dirty = true;
                    }
                }
                _ = flush.tick() => {
                    if std::mem::take(&mut dirty) || !pending.is_empty() {
                        pending = write(&audit, &store, pending, true, &mut spare).await;
                        dirty = !pending.is_empty();
                    }
                }
                _ = trim.tick() => retain(&audit, &store).await,
                () = stopping.requested() => {
                    // Nothing recorded from now on waits for a writer that is gone.
                    audit.writing.store(false, Ordering::Relaxed);
                    pending.append(&mut audit.take(&mut spare));
                    let lost = write(&audit, &store, pending, true, &mut spare).await;
                    let lost: u64 = lost.iter().map(AuditLines::records).sum();
                    if lost > 0 {
                        audit.give_up(lost);
                        tracing::error!(records = lost, "audit records could not be written before stopping");
                    }
                    return;
                }
            }
        }
    })
}

/// Writes `batches` (and flushes, with `flush`); returns what could not be written, to
/// be tried again, beyond `BACKLOG` records the oldest dropped and counted. Written
/// buffers go to `spare`.
async fn write(
    audit: &Arc<Audit>,
    store: &Arc<dyn Store>,
    batches: Vec<AuditLines>,
    flush: bool,
    spare: &mut Vec<Vec<u8>>,
) -> Vec<AuditLines> {
    let count: u64 = batches.iter().map(AuditLines::records).sum();
    let writing = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = (|| {
            if !batches.is_empty() {
                writing.append_audit(&batches)?;
            }
            if flush {
                writing.flush()?;
            }
            Ok::<_, StoreError>(())
        })();
        (result, batches)
    })
    .await;
    match written {
        Ok((Ok(()), batches)) => {
            audit.written.fetch_add(count, Ordering::Relaxed);
            for lines in batches {
                let buffer = lines.into_buffer();
                if buffer.capacity() <= KEEP_BUFFER && spare.len() < BUFFERS {
                    spare.push(buffer);
                }
            }
            Vec::new()
        }
        Ok((Err(error), mut batches)) => {
            tracing::error!(%error, records = count, "audit records could not be written; trying again");
            let mut excess = count.saturating_sub(BACKLOG);
            while excess > 0 && !batches.is_empty() {
                let oldest = batches.remove(0);
                excess = excess.saturating_sub(oldest.records());
                audit.give_up(oldest.records());
            }
            batches
        }
        Err(error) => {
            tracing::error!(%error, records = count, "the audit writer task failed; records lost");
            audit.give_up(count);
            Vec::new()
        }
    }
}

async fn retain(audit: &Arc<Audit>, store: &Arc<dyn Store>) {
    let before = now_ms().saturating_sub(audit.policy.keep.as_millis() as u64);
    let max = audit.policy.max_bytes as u64;
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.trim_audit(before, max)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(dropped)) => tracing::info!(dropped, "old audit records dropped by retention"),
        Ok(Err(error)) => tracing::error!(%error, "audit retention failed"),
        Err(error) => tracing::error!(%error, "the audit retention task failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::domain::AuditPolicy;
    use crate::store::flaky::Flaky;
    use crate::store::{Persistence, SledStore, Watched};

    /// An audit log that keeps everything, flushed every `flush`.
    fn kept(flush: Duration) -> Arc<Audit> {
        Arc::new(Audit::new(AuditPolicy {
            enabled: true,
            keep: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            flush_interval: flush,
        }))
    }

    /// Records made on two connection workers and off them land in three buffers; all
    /// are written, each thread's in the order it made them, and `caught_up` waits for
    /// exactly those recorded before it.
    #[tokio::test]
    async fn records_from_every_thread_are_written_in_each_threads_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
        let audit = kept(Duration::from_secs(1));
        let writer = spawn_writer(audit.clone(), store.clone());
        let workers = crate::workers::Workers::start(2).unwrap_or_else(|e| panic!("{e}"));
        // Made now: retention, which runs as the writer starts, keeps an hour.
        let now = now_ms();
        let made = move |from: &str, n: u64| AuditRecord {
            at_ms: now + n,
            tenant: Some(from.to_string()),
            request_id: Some(format!("{from}-{n}").into()),
            ..AuditRecord::default()
        };
        let mut tasks = Vec::new();
        for from in ["w0", "w1"] {
            let (worker, _assigned) = workers.take();
            let audit = audit.clone();
            tasks.push(worker.spawn(async move {
                for n in 0..300 {
                    audit.record(made(from, n));
                    if n % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for n in 0..300 {
            audit.record(made("daemon", n));
        }
        for task in tasks {
            task.await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(audit.backlog() + audit.written(), 900);
        audit.caught_up(Duration::from_secs(10)).await;
        assert_eq!(audit.written(), 900);
        assert_eq!(audit.backlog(), 0);
        for from in ["w0", "w1", "daemon"] {
            let read = store
                .read_audit(&crate::domain::records::AuditQuery {
                    tenant: Some(from.into()),
                    limit: 1000,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let ids: Vec<String> = read
                .iter()
                .filter_map(|r| r.request_id.as_deref().map(str::to_string))
                .collect();
            let expected: Vec<String> = (0..300).map(|n| format!("{from}-{n}")).collect();
            assert_eq!(ids, expected, "{from}'s records, oldest first");
        }
        // A record made after the writer stopped waits for no one.
        writer.stop().await;
        audit.record(made("late", 0));
        assert_eq!(audit.backlog(), 0);
        assert_eq!(audit.dropped(), 0);
    }

    #[tokio::test]
    async fn records_survive_a_failing_disk_and_persistence_shows_it_while_it_lasts() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let flaky = Arc::new(Watched {
            inner: Flaky {
                inner: SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")),
                failing: AtomicBool::new(true),
            },
            health: Arc::new(Persistence::default()),
        });
        let store: Arc<dyn Store> = flaky.clone();
        let audit = kept(Duration::from_millis(50));
        let writer = spawn_writer(audit.clone(), store.clone());
        for n in 0..10 {
            audit.record(AuditRecord {
                at_ms: 1_000 + n,
                ..AuditRecord::default()
            });
        }
        // The disk fails: nothing is written, nothing is lost, and it shows.
        let mut degraded = None;
        for _ in 0..200 {
            degraded = flaky.health.degraded();
            if degraded.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let degraded = degraded.unwrap_or_default();
        assert!(degraded.contains("no space left"), "{degraded}");
        assert_eq!(audit.written(), 0);
        // The disk recovers: everything is written, the state clears.
        flaky.inner.failing.store(false, Ordering::Relaxed);
        audit.caught_up(Duration::from_secs(10)).await;
        writer.stop().await;
        assert_eq!(audit.written(), 10);
        assert_eq!(audit.dropped(), 0);
        assert_eq!(flaky.health.degraded(), None);
        assert_eq!(store.audit_size().0, 10);
    }
}
