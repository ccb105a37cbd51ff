//! The audit log: one record per request (answered or refused) and per operator action,
//! handed to a channel on the request path and written to the store in batches by a
//! writer task, which also flushes every `audit.flush_interval` and applies retention
//! (age and size) every minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::background::Background;
use crate::domain::AuditPolicy;
use crate::domain::records::AuditRecord;
use crate::store::{Store, StoreError};
use crate::telemetry::now_ms;

/// Records waiting for the writer at most (about 100 MiB); more are dropped and counted.
const BACKLOG: usize = 200_000;
/// Records written to the store in one batch at most.
const BATCH: usize = 4096;
/// How long the writer gathers records before a write: few large batches cost far less
/// (one hand-off to a blocking thread, one sled batch) than many small ones.
const GATHER: Duration = Duration::from_millis(25);
/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(60);

pub struct Audit {
    policy: AuditPolicy,
    records: OnceLock<mpsc::Sender<AuditRecord>>,
    /// This replica's id, stamped on every record, when replicas share state.
    replica: OnceLock<String>,
    queued: AtomicU64,
    /// Records dropped because the writer was `BACKLOG` records behind.
    dropped: AtomicU64,
    written: AtomicU64,
}

impl Audit {
    pub fn new(policy: AuditPolicy) -> Audit {
        Audit {
            policy,
            records: OnceLock::new(),
            replica: OnceLock::new(),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> &AuditPolicy {
        &self.policy
    }

    /// Puts a record on its way to the store; never waits. When the writer is a whole
    /// `BACKLOG` behind (the disk stalled), the record is dropped and counted rather than
    /// let memory grow without bound.
    /// Names this replica in every record from now on.
    pub fn set_replica(&self, replica: &str) {
        let _ = self.replica.set(replica.to_string());
    }

    pub fn record(&self, mut record: AuditRecord) {
        if !self.policy.enabled {
            return;
        }
        if record.replica.is_none() {
            record.replica = self.replica.get().cloned();
        }
        let Some(records) = self.records.get() else {
            return;
        };
        match records.try_send(record) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) % 10_000 == 0 {
                    tracing::error!(
                        backlog = BACKLOG,
                        "the audit writer is too far behind; audit records are being dropped (switchyard_audit_dropped_total)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Records dropped since start because the writer fell too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records handed over and not yet written.
    pub fn backlog(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.written.load(Ordering::Relaxed))
    }

    /// Records written since start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits (up to `patience`) until every record handed over before this call is
    /// written, so that a query sees them.
    pub async fn caught_up(&self, patience: Duration) {
        let target = self.queued.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + patience;
        while self.written.load(Ordering::Relaxed) < target
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Starts the task that writes audit records; stopping it writes what is queued and
/// flushes.
pub fn spawn_writer(audit: Arc<Audit>, store: Arc<dyn Store>) -> Background {
    let (sender, mut records) = mpsc::channel(BACKLOG);
    let _ = audit.records.set(sender);
    Background::spawn("audit writer", move |mut stopping| async move {
        let mut flush = tokio::time::interval(audit.policy.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        // Records a failed write gave back, written again with the next batch or tick.
        let mut pending: Vec<AuditRecord> = Vec::new();
        let mut dirty = false;
        loop {
            tokio::select! {
                n = records.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    if batch.len() < BATCH {
                        tokio::time::sleep(GATHER).await;
                        while batch.len() < BATCH {
                            match records.try_recv() {
                                Ok(record) => batch.push(record),
                                Err(_) => break,
                            }
                        }
                    }
                    pending.append(&mut batch);
                    pending = write(&audit, &store, std::mem::take(&mut pending), false).await;
                    dirty = true;
                }
                _ = flush.tick() => {
                    if std::mem::take(&mut dirty) || !pending.is_empty() {
                        pending = write(&audit, &store, std::mem::take(&mut pending), true).await;
                        dirty = !pending.is_empty();
                    }
                }
                _ = trim.tick() => retain(&audit, &store).await,
                () = stopping.requested() => {
                    pending.append(&mut batch);
                    while let Ok(record) = records.try_recv() {
                        pending.push(record);
                    }
                    let lost = write(&audit, &store, pending, true).await;
                    if !lost.is_empty() {
                        audit.dropped.fetch_add(lost.len() as u64, Ordering::Relaxed);
                        tracing::error!(records = lost.len(), "audit records could not be written before stopping");
                    }
                    return;
                }
            }
        }
    })
}

/// Writes `batch` (and flushes, with `flush`); returns what could not be written, to
/// be tried again, beyond `BACKLOG` records the oldest dropped and counted.
async fn write(
    audit: &Arc<Audit>,
    store: &Arc<dyn Store>,
    batch: Vec<AuditRecord>,
    flush: bool,
) -> Vec<AuditRecord> {
    let count = batch.len() as u64;
    let writing = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = (|| {
            if !batch.is_empty() {
                writing.append_audit(&batch)?;
            }
            if flush {
                writing.flush()?;
            }
            Ok::<_, StoreError>(())
        })();
        (result, batch)
    })
    .await;
    match written {
        Ok((Ok(()), _)) => {
            audit.written.fetch_add(count, Ordering::Relaxed);
            Vec::new()
        }
        Ok((Err(error), mut batch)) => {
            tracing::error!(%error, records = count, "audit records could not be written; trying again");
            let excess = batch.len().saturating_sub(BACKLOG);
            if excess > 0 {
                batch.drain(..excess);
                audit.dropped.fetch_add(excess as u64, Ordering::Relaxed);
            }
            batch
        }
        Err(error) => {
            tracing::error!(%error, records = count, "the audit writer task failed; records lost");
            audit.dropped.fetch_add(count, Ordering::Relaxed);
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
        let audit = Arc::new(Audit::new(AuditPolicy {
            enabled: true,
            keep: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            flush_interval: Duration::from_millis(50),
        }));
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
