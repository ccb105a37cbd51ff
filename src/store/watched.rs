//! A store that keeps account of its own health: every write that fails marks
//! persistence degraded (what failed, since when, how often), the next that succeeds
//! clears it. Readiness, `/metrics` and the console read it, so a failing disk is seen
//! while it lasts instead of found in the logs afterwards.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    AuditQuery, AuditRecord, BatchRecord, FileRecord, FlowRun, KeyRecord, Overrides, Pair, Store,
    StoreError, VectorRecord,
};
use crate::domain::UsageRecord;
use crate::store::AuditLines;

/// What persistence looks like now.
#[derive(Debug, Default)]
pub struct Persistence {
    /// Writes that failed since the last one that succeeded.
    failing: AtomicU64,
    /// Writes that failed since start.
    failures: AtomicU64,
    /// The last failure: what was written, and the error.
    last: Mutex<Option<String>>,
}

impl Persistence {
    /// `Some(what failed last)` while writes fail.
    pub fn degraded(&self) -> Option<String> {
        if self.failing.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Writes that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn note<T>(&self, what: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => {
                if self.failing.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!(what, "persistence works again");
                }
            }
            Err(error) => {
                self.failing.fetch_add(1, Ordering::Relaxed);
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last.lock() {
                    *last = Some(format!("{what}: {error}"));
                }
            }
        }
        result
    }
}

/// `inner`, with every write's outcome noted in `health`.
pub struct Watched<S> {
    pub inner: S,
    pub health: std::sync::Arc<Persistence>,
}

impl<S: Store> Store for Watched<S> {
    fn save_usage(&self, records: &[(String, UsageRecord)]) -> Result<(), StoreError> {
        self.health.note("usage", self.inner.save_usage(records))
    }
    fn load_usage(&self) -> Result<Vec<(String, UsageRecord)>, StoreError> {
        self.inner.load_usage()
    }
    fn save_cache(
        &self,
        puts: &[([u8; 32], Vec<u8>)],
        removes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        self.health
            .note("cache", self.inner.save_cache(puts, removes))
    }
    fn load_cache(&self) -> Result<Vec<Pair>, StoreError> {
        self.inner.load_cache()
    }
    fn save_responses(
        &self,
        puts: &[(String, Vec<u8>)],
        removes: &[String],
    ) -> Result<(), StoreError> {
        self.health
            .note("responses", self.inner.save_responses(puts, removes))
    }
    fn load_responses(&self) -> Result<Vec<Pair>, StoreError> {
        self.inner.load_responses()
    }
    fn save_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.health.note("batches", self.inner.save_batch(batch))
    }
    fn load_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.inner.load_batches()
    }
    fn save_flow_run(&self, run: &FlowRun) -> Result<(), StoreError> {
        self.health.note("flow_runs", self.inner.save_flow_run(run))
    }
    fn load_flow_runs(&self) -> Result<Vec<FlowRun>, StoreError> {
        self.inner.load_flow_runs()
    }
    fn save_flow_value(
        &self,
        tenant: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let saved = self.inner.save_flow_value(tenant, key, value);
        self.health.note("flow_values", saved)
    }
    fn load_flow_values(&self) -> Result<Vec<(String, String, serde_json::Value)>, StoreError> {
        self.inner.load_flow_values()
    }
    fn save_vectors(&self, rows: &[VectorRecord]) -> Result<(), StoreError> {
        self.health.note("vectors", self.inner.save_vectors(rows))
    }
    fn each_vector(&self, row: &mut dyn FnMut(VectorRecord)) -> Result<(), StoreError> {
        self.inner.each_vector(row)
    }
    fn save_file(&self, id: &str, file: Option<&FileRecord>) -> Result<(), StoreError> {
        self.health.note("files", self.inner.save_file(id, file))
    }
    fn load_files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.load_files()
    }
    fn save_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.health.note("keys", self.inner.save_key(key))
    }
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.load_keys()
    }
    fn save_overrides(&self, overrides: &Overrides) -> Result<(), StoreError> {
        self.health
            .note("overrides", self.inner.save_overrides(overrides))
    }
    fn load_overrides(&self) -> Result<Overrides, StoreError> {
        self.inner.load_overrides()
    }
    fn append_audit(&self, lines: &[AuditLines]) -> Result<(), StoreError> {
        self.health.note("audit", self.inner.append_audit(lines))
    }
    fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.read_audit(query)
    }
    fn trim_audit(&self, before_ms: u64, max_bytes: u64) -> Result<u64, StoreError> {
        self.health.note(
            "audit retention",
            self.inner.trim_audit(before_ms, max_bytes),
        )
    }
    fn audit_size(&self) -> (u64, u64) {
        self.inner.audit_size()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.health.note("flush", self.inner.flush())
    }
}
