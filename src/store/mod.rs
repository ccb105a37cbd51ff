//! Durable state in one sled database under the data directory. This is the only module
//! that knows sled; everything else hands it plain records.
//!
//! Trees: `meta` (schema version), `usage` (per tenant and budget period) and `cache`
//! (kept answers, by key, encoded by the cache). Writes are batched by their callers (the
//! ledger, the cache writer) and never made from the request path.

use std::path::{Path, PathBuf};

use crate::admission::{PeriodKey, UsageRecord};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

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
}

/// A stored key and its value, as written.
pub type Pair = (Vec<u8>, Vec<u8>);

pub struct Store {
    db: sled::Db,
    usage: sled::Tree,
    cache: sled::Tree,
}

impl Store {
    /// Opens (or creates) `<data_dir>/db`, checking the schema version.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
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
            }
        }
        let usage = db.open_tree("usage")?;
        let cache = db.open_tree("cache")?;
        Ok(Store { db, usage, cache })
    }

    /// Writes usage records as one batch; durable after the next `flush` (or sled's own
    /// periodic flush).
    pub fn save_usage(&self, records: &[(String, UsageRecord)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (tenant, record) in records {
            let value =
                serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            batch.insert(usage_key(tenant, record.period), value);
        }
        self.usage.apply_batch(batch)?;
        Ok(())
    }

    pub fn load_usage(&self) -> Result<Vec<(String, UsageRecord)>, StoreError> {
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

    /// Writes and removes kept answers as one batch.
    pub fn save_cache(
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

    /// Every kept answer, as written.
    pub fn load_cache(&self) -> Result<Vec<Pair>, StoreError> {
        self.cache
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
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
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_usage(&[("acme".into(), record)]).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
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
        let error = Store::open(dir.path()).err().unwrap();
        assert!(matches!(error, StoreError::Newer { found: 99, .. }));
        assert!(error.to_string().contains("newer switchyard"));
    }
}
