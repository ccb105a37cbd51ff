//! Tenants' vector collections, as flows' `embed` steps fill them and `retrieve` steps
//! query them: the index (`flows::vectors`) in memory, each row also in the store, from
//! which every collection is rebuilt at start. Texts are embedded by `embedders`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use super::Gateway;
use crate::domain::records::VectorRecord;
use crate::flows::vectors::{Hit, Index, Row, default_index};

/// One collection, shared by the steps that fill and query it.
type Shared = Arc<RwLock<Box<dyn Index>>>;

/// Every tenant's collections, by tenant and name.
#[derive(Default)]
pub struct Collections {
    by_name: RwLock<HashMap<(String, String), Shared>>,
}

impl Collections {
    fn get(&self, tenant: &str, name: &str) -> Option<Shared> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_string(), name.to_string()))
            .cloned()
    }

    fn get_or_create(&self, tenant: &str, name: &str) -> Shared {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((tenant.to_string(), name.to_string()))
            .or_insert_with(|| Arc::new(RwLock::new(default_index())))
            .clone()
    }

    /// `tenant`'s collection names, sorted.
    pub fn names(&self, tenant: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, name)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Rows of `tenant`'s collection `name` (0 when there is none).
    pub fn len(&self, tenant: &str, name: &str) -> usize {
        self.get(tenant, name)
            .map_or(0, |c| c.read().unwrap_or_else(|e| e.into_inner()).len())
    }

    /// Puts rows kept in the store back (at start). A row that no longer fits its
    /// collection (other dimensions) is skipped and counted.
    pub fn restore(&self, row: VectorRecord) -> bool {
        let collection = self.get_or_create(&row.tenant, &row.collection);
        let mut collection = collection.write().unwrap_or_else(|e| e.into_inner());
        collection
            .put(
                Row {
                    id: row.id,
                    text: row.text,
                    metadata: row.metadata,
                },
                &row.vector,
            )
            .is_ok()
    }
}

impl Gateway {
    pub fn collections(&self) -> &Collections {
        &self.collections
    }

    /// Puts rows into `tenant`'s collection `name` (made on first use) and the store.
    pub async fn put_rows(
        &self,
        tenant: &str,
        name: &str,
        rows: Vec<(Row, Vec<f32>)>,
    ) -> Result<(), String> {
        let collection = self.collections.get_or_create(tenant, name);
        {
            let mut collection = collection.write().unwrap_or_else(|e| e.into_inner());
            for (row, vector) in &rows {
                collection.put(row.clone(), vector)?;
            }
        }
        let Some(store) = self.store.get().cloned() else {
            return Ok(());
        };
        let records: Vec<VectorRecord> = rows
            .into_iter()
            .map(|(row, vector)| VectorRecord {
                tenant: tenant.to_string(),
                collection: name.to_string(),
                id: row.id,
                text: row.text,
                metadata: row.metadata,
                vector,
            })
            .collect();
        let written = tokio::task::spawn_blocking(move || {
            store.save_vectors(&records)?;
            store.flush()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(format!(
                "collection {name} could not be written to the store; its rows are kept in memory until the daemon stops"
            )),
        }
    }

    /// The `k` rows of `tenant`'s collection `name` nearest `query` that match `filter`.
    /// None when the tenant has no such collection.
    pub async fn search(
        &self,
        tenant: &str,
        name: &str,
        query: Vec<f32>,
        k: usize,
        filter: Map<String, Value>,
    ) -> Option<Vec<Hit>> {
        let collection = self.collections.get(tenant, name)?;
        // A scan of a large collection takes milliseconds: off the runtime threads.
        tokio::task::spawn_blocking(move || {
            let collection = collection.read().unwrap_or_else(|e| e.into_inner());
            collection.search(&query, k, &filter)
        })
        .await
        .ok()
    }
}
