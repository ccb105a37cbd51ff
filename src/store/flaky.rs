//! A store for tests whose writes fail while `failing` is set, as a full or failing disk
//! does; reads always work.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Pair, SledStore, Store, StoreError};
use crate::domain::UsageRecord;
use crate::domain::records::{
    AuditQuery, AuditRecord, BatchRecord, FileRecord, FlowRun, KeyRecord, Overrides, VectorRecord,
};
use crate::store::AuditLines;

/// A store whose writes fail while `failing` is set, as a full or failing disk does.
pub struct Flaky {
    pub inner: SledStore,
    pub failing: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Corrupt("no space left on device".into()));
        }
        Ok(())
    }
}

impl Store for Flaky {
    fn save_usage(&self, r: &[(String, UsageRecord)]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_usage(r)
    }
    fn load_usage(&self) -> Result<Vec<(String, UsageRecord)>, StoreError> {
        self.inner.load_usage()
    }
    fn save_cache(&self, p: &[([u8; 32], Vec<u8>)], r: &[[u8; 32]]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_cache(p, r)
    }
    fn load_cache(&self) -> Result<Vec<Pair>, StoreError> {
        self.inner.load_cache()
    }
    fn save_responses(&self, p: &[(String, Vec<u8>)], r: &[String]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_responses(p, r)
    }
    fn load_responses(&self) -> Result<Vec<Pair>, StoreError> {
        self.inner.load_responses()
    }
    fn save_batch(&self, b: &BatchRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_batch(b)
    }
    fn load_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.inner.load_batches()
    }
    fn save_flow_run(&self, r: &FlowRun) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_flow_run(r)
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
        self.check()?;
        self.inner.save_flow_value(tenant, key, value)
    }
    fn load_flow_values(&self) -> Result<Vec<(String, String, serde_json::Value)>, StoreError> {
        self.inner.load_flow_values()
    }
    fn save_vectors(&self, rows: &[VectorRecord]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_vectors(rows)
    }
    fn each_vector(&self, row: &mut dyn FnMut(VectorRecord)) -> Result<(), StoreError> {
        self.inner.each_vector(row)
    }
    fn save_file(&self, id: &str, f: Option<&FileRecord>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_file(id, f)
    }
    fn load_files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.load_files()
    }
    fn save_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_key(k)
    }
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.load_keys()
    }
    fn save_overrides(&self, o: &Overrides) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_overrides(o)
    }
    fn load_overrides(&self) -> Result<Overrides, StoreError> {
        self.inner.load_overrides()
    }
    fn append_audit(&self, r: &[AuditLines]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append_audit(r)
    }
    fn read_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.read_audit(q)
    }
    fn trim_audit(&self, before: u64, max: u64) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.trim_audit(before, max)
    }
    fn audit_size(&self) -> (u64, u64) {
        self.inner.audit_size()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.flush()
    }
}
