//! Durable state in one sled database under the data directory. This is the only module
//! that knows sled; everything else hands it plain records.
//!
//! `Store` is what the rest of the gateway sees; `SledStore` keeps it in trees: `meta`
//! (schema version), `usage` (per tenant and budget period), `cache` (kept answers, by
//! key, encoded by the cache), `keys` (managed tenant keys, by public id), `tenants`
//! (operators' run-time overrides), `responses` (Responses API responses kept for
//! follow-ups, by id, encoded by `gateway::conversations`), `files` (uploaded files'
//! records; their contents are files under `<data_dir>/files/`), `batches` and
//! `flow_runs` (a run as of its last completed step, by id), `vectors` (rows of tenants'
//! vector collections, `vectors.rs`), `flow_values` (what flows' `store_put` steps kept,
//! by tenant and key); the audit log is JSON lines in segment files beside
//! the database (`audit_log.rs`). Writes are batched by their callers and never made
//! from the request path.

mod audit_json;
mod audit_log;
#[cfg(test)]
pub(crate) mod flaky;
mod vectors;
mod watched;

pub use audit_json::AuditLines;
pub use watched::{Persistence, Watched};

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::domain::UsageRecord;
use crate::domain::period::PeriodKey;
use crate::domain::records::{
    AuditQuery, AuditRecord, BatchRecord, FileRecord, FlowRun, KeyRecord, Overrides, VectorRecord,
};

/// The layout this build reads and writes.
/// 2 added the keys, tenants and audit trees; 3 moved the audit log to files (a
/// version-2 database's records are moved there when it is opened); 4 added the
/// responses, files and batches trees.
pub const SCHEMA_VERSION: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the database in {path}: {source}; is another switchyard using this data_dir?"
    )]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the database in {path} was written by a newer switchyard (schema {found}, this build reads {SCHEMA_VERSION}); upgrade switchyard or point data_dir elsewhere"
    )]
    Newer { path: PathBuf, found: u32 },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("a stored usage record is unreadable: {0}")]
    Corrupt(String),
    #[error("the audit log in {path}: {source}")]
    AuditLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A stored key and its value, as written.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Durable state. Writes are made by background tasks (the ledger, the cache writer, the
/// audit writer) or, for what must survive before it is acknowledged (a key revoked, an
/// override), by the admin path followed by `flush`; never from the request path.
pub trait Store: Send + Sync + 'static {
    /// Writes usage records as one batch.
    fn save_usage(&self, records: &[(String, UsageRecord)]) -> Result<(), StoreError>;
    fn load_usage(&self) -> Result<Vec<(String, UsageRecord)>, StoreError>;
    /// Writes and removes kept answers (encoded by the cache) as one batch.
    fn save_cache(
        &self,
        puts: &[([u8; 32], Vec<u8>)],
        removes: &[[u8; 32]],
    ) -> Result<(), StoreError>;
    fn load_cache(&self) -> Result<Vec<Pair>, StoreError>;
    /// Writes and removes kept responses (encoded by `gateway::conversations`), by id, as
    /// one batch.
    fn save_responses(
        &self,
        puts: &[(String, Vec<u8>)],
        removes: &[String],
    ) -> Result<(), StoreError>;
    fn load_responses(&self) -> Result<Vec<Pair>, StoreError>;
    fn save_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;
    fn load_batches(&self) -> Result<Vec<BatchRecord>, StoreError>;
    fn save_flow_run(&self, run: &FlowRun) -> Result<(), StoreError>;
    fn load_flow_runs(&self) -> Result<Vec<FlowRun>, StoreError>;
    /// Keeps a value a flow's `store_put` step wrote for a tenant, by key.
    fn save_flow_value(
        &self,
        tenant: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError>;
    fn load_flow_values(&self) -> Result<Vec<(String, String, serde_json::Value)>, StoreError>;
    /// Writes rows of vector collections as one batch (a row's id again replaces it).
    fn save_vectors(&self, rows: &[VectorRecord]) -> Result<(), StoreError>;
    /// Every row of every collection, one at a time (there may be many).
    fn each_vector(&self, row: &mut dyn FnMut(VectorRecord)) -> Result<(), StoreError>;
    /// Writes a file's record (`None` removes it).
    fn save_file(&self, id: &str, file: Option<&FileRecord>) -> Result<(), StoreError>;
    fn load_files(&self) -> Result<Vec<FileRecord>, StoreError>;
    fn save_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    fn save_overrides(&self, overrides: &Overrides) -> Result<(), StoreError>;
    fn load_overrides(&self) -> Result<Overrides, StoreError>;
    /// Appends audit records, encoded as the log's lines, in order, as one batch.
    fn append_audit(&self, lines: &[AuditLines]) -> Result<(), StoreError>;
    /// The newest records that match, oldest first.
    fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Drops audit records older than `before_ms`, then the oldest until at most
    /// `max_bytes` remain; returns how many were dropped.
    fn trim_audit(&self, before_ms: u64, max_bytes: u64) -> Result<u64, StoreError>;
    /// Audit records and their bytes.
    fn audit_size(&self) -> (u64, u64);
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Memory sled may keep of the database's pages. Its default is 1 GiB, which a daemon
/// that writes an audit record per request would grow into over weeks; the hot state
/// lives in memory anyway, and reads of old audit records may go to disk.
const PAGE_CACHE: u64 = 64 << 20;

/// The store in one sled database under the data directory.
pub struct SledStore {
    db: sled::Db,
    usage: sled::Tree,
    cache: sled::Tree,
    responses: sled::Tree,
    files: sled::Tree,
    batches: sled::Tree,
    flow_runs: sled::Tree,
    vectors: sled::Tree,
    flow_values: sled::Tree,
    keys: sled::Tree,
    tenants: sled::Tree,
    audit: audit_log::AuditLog,
    audit_dir: PathBuf,
}

impl SledStore {
    fn audit_error(&self) -> impl Fn(std::io::Error) -> StoreError + '_ {
        |source| StoreError::AuditLog {
            path: self.audit_dir.clone(),
            source,
        }
    }

    /// Opens (or creates) `<data_dir>/db`, checking the schema version.
    pub fn open(data_dir: &Path) -> Result<SledStore, StoreError> {
        let path = data_dir.join("db");
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // sled releases its file lock from a background thread after the last handle is
        // dropped: a restart in the same process (or right after the previous one) may
        // find it still held for a moment.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(&path)
                .flush_every_ms(Some(1000))
                .cache_capacity(PAGE_CACHE)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if tries < 50 && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(open(e)),
            }
        };
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("schema_version".into()))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Newer { path, found });
                }
                if found < SCHEMA_VERSION {
                    // Every change so far only added trees: record the new version.
                    meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                }
            }
        }
        let audit_dir = data_dir.join("audit");
        let audit =
            audit_log::AuditLog::open(&audit_dir).map_err(|source| StoreError::AuditLog {
                path: audit_dir.clone(),
                source,
            })?;
        let store = SledStore {
            usage: db.open_tree("usage")?,
            cache: db.open_tree("cache")?,
            responses: db.open_tree("responses")?,
            files: db.open_tree("files")?,
            batches: db.open_tree("batches")?,
            flow_runs: db.open_tree("flow_runs")?,
            vectors: db.open_tree("vectors")?,
            flow_values: db.open_tree("flow_values")?,
            keys: db.open_tree("keys")?,
            tenants: db.open_tree("tenants")?,
            audit,
            audit_dir,
            db,
        };
        store.move_audit_out_of_sled()?;
        Ok(store)
    }

    /// Moves the records a version-2 database kept in its `audit` tree to the log files,
    /// in order, then empties the tree: nothing is lost in the upgrade.
    fn move_audit_out_of_sled(&self) -> Result<(), StoreError> {
        let tree = self.db.open_tree("audit")?;
        if tree.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(1000);
        for entry in tree.iter() {
            let (_, value) = entry?;
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(&value) {
                records.push(record);
            }
            if records.len() == 1000 {
                self.audit.append(&records).map_err(self.audit_error())?;
                records.clear();
            }
        }
        self.audit.append(&records).map_err(self.audit_error())?;
        self.audit.flush().map_err(self.audit_error())?;
        tree.clear()?;
        self.db.flush()?;
        Ok(())
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store for SledStore {
    fn save_usage(&self, records: &[(String, UsageRecord)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (tenant, record) in records {
            batch.insert(usage_key(tenant, record.period), encode(record)?);
        }
        self.usage.apply_batch(batch)?;
        Ok(())
    }

    fn load_usage(&self) -> Result<Vec<(String, UsageRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.usage.iter() {
            let (key, value) = entry?;
            let tenant = key
                .split(|b| *b == 0)
                .next()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default();
            let record: UsageRecord = serde_json::from_slice(&value)
                .map_err(|e| StoreError::Corrupt(format!("usage of {tenant}: {e}")))?;
            out.push((tenant, record));
        }
        Ok(out)
    }

    fn save_cache(
        &self,
        puts: &[([u8; 32], Vec<u8>)],
        removes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in removes {
            batch.remove(key.as_slice());
        }
        for (key, value) in puts {
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.cache.apply_batch(batch)?;
        Ok(())
    }

    fn load_cache(&self) -> Result<Vec<Pair>, StoreError> {
        self.cache
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    fn save_responses(
        &self,
        puts: &[(String, Vec<u8>)],
        removes: &[String],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in removes {
            batch.remove(id.as_bytes());
        }
        for (id, value) in puts {
            batch.insert(id.as_bytes(), value.as_slice());
        }
        self.responses.apply_batch(batch)?;
        Ok(())
    }

    fn load_responses(&self) -> Result<Vec<Pair>, StoreError> {
        self.responses
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    fn save_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.batches.insert(batch.id.as_bytes(), encode(batch)?)?;
        Ok(())
    }

    fn load_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.batches
            .iter()
            .map(|entry| {
                let (id, value) = entry?;
                serde_json::from_slice(&value).map_err(|e| {
                    StoreError::Corrupt(format!("batch {}: {e}", String::from_utf8_lossy(&id)))
                })
            })
            .collect()
    }

    fn save_flow_run(&self, run: &FlowRun) -> Result<(), StoreError> {
        self.flow_runs.insert(run.id.as_bytes(), encode(run)?)?;
        Ok(())
    }

    fn save_flow_value(
        &self,
        tenant: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let id = [tenant.as_bytes(), key.as_bytes()].join(&0u8);
        self.flow_values.insert(id, encode(value)?)?;
        Ok(())
    }

    fn load_flow_values(&self) -> Result<Vec<(String, String, serde_json::Value)>, StoreError> {
        self.flow_values
            .iter()
            .map(|entry| {
                let (id, value) = entry?;
                let corrupt = |why: String| {
                    StoreError::Corrupt(format!(
                        "flow value {}: {why}",
                        String::from_utf8_lossy(&id).replace('\0', "/")
                    ))
                };
                let text = std::str::from_utf8(&id).map_err(|e| corrupt(e.to_string()))?;
                let (tenant, key) = text
                    .split_once('\0')
                    .ok_or_else(|| corrupt("a key without a tenant".into()))?;
                let value = serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
                Ok((tenant.to_string(), key.to_string(), value))
            })
            .collect()
    }

    fn save_vectors(&self, rows: &[VectorRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for row in rows {
            batch.insert(vectors::key(row), vectors::encode(row)?);
        }
        self.vectors.apply_batch(batch)?;
        Ok(())
    }

    fn each_vector(&self, each: &mut dyn FnMut(VectorRecord)) -> Result<(), StoreError> {
        for entry in self.vectors.iter() {
            let (key, value) = entry?;
            each(vectors::decode(&key, &value)?);
        }
        Ok(())
    }

    fn load_flow_runs(&self) -> Result<Vec<FlowRun>, StoreError> {
        self.flow_runs
            .iter()
            .map(|entry| {
                let (id, value) = entry?;
                serde_json::from_slice(&value).map_err(|e| {
                    StoreError::Corrupt(format!("flow run {}: {e}", String::from_utf8_lossy(&id)))
                })
            })
            .collect()
    }

    fn save_file(&self, id: &str, file: Option<&FileRecord>) -> Result<(), StoreError> {
        match file {
            Some(file) => self.files.insert(id.as_bytes(), encode(file)?).map(drop)?,
            None => self.files.remove(id.as_bytes()).map(drop)?,
        }
        Ok(())
    }

    fn load_files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.files
            .iter()
            .map(|entry| {
                let (id, value) = entry?;
                serde_json::from_slice(&value).map_err(|e| {
                    StoreError::Corrupt(format!("file {}: {e}", String::from_utf8_lossy(&id)))
                })
            })
            .collect()
    }

    fn save_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.keys.insert(key.id.as_bytes(), encode(key)?)?;
        Ok(())
    }

    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys
            .iter()
            .map(|entry| {
                let (id, value) = entry?;
                serde_json::from_slice(&value).map_err(|e| {
                    StoreError::Corrupt(format!("key {}: {e}", String::from_utf8_lossy(&id)))
                })
            })
            .collect()
    }

    fn save_overrides(&self, overrides: &Overrides) -> Result<(), StoreError> {
        self.tenants.insert("overrides", encode(overrides)?)?;
        Ok(())
    }

    fn load_overrides(&self) -> Result<Overrides, StoreError> {
        match self.tenants.get("overrides")? {
            None => Ok(Overrides::default()),
            Some(raw) => serde_json::from_slice(&raw)
                .map_err(|e| StoreError::Corrupt(format!("run-time overrides: {e}"))),
        }
    }

    fn append_audit(&self, lines: &[AuditLines]) -> Result<(), StoreError> {
        self.audit.append_lines(lines).map_err(self.audit_error())
    }

    fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit.read(query).map_err(self.audit_error())
    }

    fn trim_audit(&self, before_ms: u64, max_bytes: u64) -> Result<u64, StoreError> {
        self.audit
            .trim(before_ms, max_bytes)
            .map_err(self.audit_error())
    }

    fn audit_size(&self) -> (u64, u64) {
        self.audit.size()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.audit.flush().map_err(self.audit_error())?;
        self.db.flush()?;
        Ok(())
    }
}

/// `tenant \0 kind index`, so one tenant's periods sort together.
fn usage_key(tenant: &str, period: PeriodKey) -> Vec<u8> {
    let (kind, index) = match period {
        PeriodKey::Day(d) => (b'd', d),
        PeriodKey::Month(m) => (b'm', m),
    };
    let mut key = Vec::with_capacity(tenant.len() + 6);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.push(kind);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = UsageRecord {
            period: PeriodKey::Day(20_000),
            tokens: 1234,
            cost: 0.5,
            requests: 7,
            batch_tokens: 3,
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.save_usage(&[("acme".into(), record)]).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.load_usage().unwrap(),
            vec![("acme".to_string(), record)]
        );
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let error = SledStore::open(dir.path()).err().unwrap();
        assert!(matches!(error, StoreError::Newer { found: 99, .. }));
        assert!(error.to_string().contains("newer switchyard"));
    }

    fn record(at_ms: u64, tenant: &str, status: u16) -> AuditRecord {
        AuditRecord {
            at_ms,
            kind: Some(crate::domain::records::AuditKind::Request),
            tenant: Some(tenant.into()),
            status: Some(status),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn audit_is_read_by_time_and_filters_and_trimmed_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let records: Vec<AuditRecord> = (0..100)
            .map(|i| {
                record(
                    1_000 + i,
                    if i % 2 == 0 { "acme" } else { "globex" },
                    200 + (i % 3) as u16 * 100,
                )
            })
            .collect();
        store
            .append_audit(&[AuditLines::from(&records[..])])
            .unwrap();
        assert_eq!(store.audit_size().0, 100);
        let acme = store
            .read_audit(&AuditQuery {
                since_ms: Some(1_050),
                tenant: Some("acme".into()),
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(acme.len(), 25);
        assert!(
            acme.windows(2).all(|w| w[0].at_ms < w[1].at_ms),
            "oldest first"
        );
        let newest = store
            .read_audit(&AuditQuery {
                status: Some("4xx".into()),
                limit: 3,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(
            newest.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            [1_092, 1_095, 1_098]
        );

        assert_eq!(store.trim_audit(1_010, u64::MAX).unwrap(), 10);
        let (_, bytes) = store.audit_size();
        let dropped = store.trim_audit(0, bytes / 2).unwrap();
        let (left, left_bytes) = store.audit_size();
        assert!(left_bytes <= bytes / 2 && (40..=50).contains(&dropped));
        assert_eq!(left, 90 - dropped);
        // The oldest went first.
        let all = store.read_audit(&AuditQuery::default()).unwrap();
        assert_eq!(all.first().map(|r| r.at_ms), Some(1_010 + dropped));
        drop(store);
        // The counts are rebuilt on open.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.audit_size(), (left, left_bytes));
    }

    #[test]
    fn a_version_2_databases_audit_records_move_to_the_log_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert("schema_version", &2u32.to_be_bytes()).unwrap();
            let tree = db.open_tree("audit").unwrap();
            for i in 0..2500u64 {
                let mut key = (1_000 + i).to_be_bytes().to_vec();
                key.extend_from_slice(&i.to_be_bytes());
                tree.insert(key, encode(&record(1_000 + i, "acme", 200)).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.audit_size().0, 2500);
        let all = store.read_audit(&AuditQuery::default()).unwrap();
        assert_eq!(all.len(), 2500);
        assert!(all.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(store.db.open_tree("audit").unwrap().is_empty());
        drop(store);
        // Opened again, nothing moves twice.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.audit_size().0, 2500);
    }

    #[test]
    fn over_its_size_the_audit_log_drops_records_of_no_tenant_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut records: Vec<AuditRecord> =
            (0..50).map(|i| record(1_000 + i, "acme", 200)).collect();
        records.extend((0..50).map(|i| AuditRecord {
            tenant: None,
            status: Some(401),
            ..record(2_000 + i, "", 401)
        }));
        store
            .append_audit(&[AuditLines::from(&records[..])])
            .unwrap();
        let (_, bytes) = store.audit_size();
        store.trim_audit(0, bytes * 2 / 3).unwrap();
        let left = store.read_audit(&AuditQuery::default()).unwrap();
        assert_eq!(
            left.iter().filter(|r| r.tenant.is_some()).count(),
            50,
            "every tenant's record kept"
        );
        assert!(
            left.iter().any(|r| r.tenant.is_none()),
            "anonymous ones trimmed as needed"
        );
    }

    #[test]
    fn keys_and_overrides_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyRecord {
            id: "key_00aa11bb".into(),
            tenant: "acme".into(),
            name: "ci".into(),
            hash: crate::domain::KeyHash::of("sy-secret"),
            created_ms: 5,
            expires_ms: Some(10),
            revoked_ms: None,
            replaces: None,
        };
        let mut overrides = Overrides::default();
        overrides.tenants.insert(
            "acme".into(),
            crate::domain::records::TenantOverride {
                tier: Some("pro".into()),
                paused: true,
                ..Default::default()
            },
        );
        overrides.drained_regions.push("us-east".into());
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.save_key(&key).unwrap();
            store.save_overrides(&overrides).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.load_keys().unwrap(), vec![key]);
        assert_eq!(store.load_overrides().unwrap(), overrides);
    }
}
