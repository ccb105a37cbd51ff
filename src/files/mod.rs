//! Files tenants upload for batch jobs (`/v1/files`): contents as files under
//! `<data_dir>/files/`, records in the store, and in memory for reads. An upload is
//! written to a temporary file as it arrives, checked line by line (`lines`), and kept
//! only when every line is a request the gateway can serve; its record is flushed to the
//! store before the client is answered. A tenant sees only its own files, within the
//! sizes `[files]` allows.

pub mod lines;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::AsyncWriteExt;

use crate::domain::records::FileRecord;
use crate::domain::{FilePolicy, ModelKind};
use crate::store::Store;
use lines::LineCheck;

/// The only purpose files are kept for.
pub const PURPOSE: &str = "batch";

/// Why a file operation failed, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Invalid(String),
    #[error("the file is larger than files.max_file_size ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "this tenant's files would hold {would} bytes, more than files.max_tenant_size ({limit}); delete files it no longer needs"
    )]
    TenantFull { would: u64, limit: u64 },
    #[error("no file {0} for this tenant")]
    NotFound(String),
    #[error("the file could not be stored: {0}")]
    Io(String),
}

pub struct Files {
    dir: PathBuf,
    policy: FilePolicy,
    records: Mutex<HashMap<String, FileRecord>>,
    store: OnceLock<Arc<dyn Store>>,
}

impl Files {
    pub fn new(data_dir: &std::path::Path, policy: FilePolicy) -> Files {
        Files {
            dir: data_dir.join("files"),
            policy,
            records: Mutex::default(),
            store: OnceLock::new(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, FileRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where records are written from now on.
    pub fn attach_store(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
    }

    /// Takes back the records the store kept (at start); one whose contents are gone is
    /// dropped, and said so. Contents no record names (an upload or a batch's output cut
    /// by a crash before its record was written) are removed.
    pub fn restore(&self, records: Vec<FileRecord>) {
        let mut kept = self.records();
        for record in records {
            if self.path(&record.id).exists() {
                kept.insert(record.id.clone(), record);
            } else {
                tracing::warn!(file = %record.id, path = %self.path(&record.id).display(), "a file's contents are missing; its record is ignored");
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .is_some_and(|id| kept.contains_key(id));
            if !named {
                tracing::info!(path = %path.display(), "removing a file no record names (left by a crash)");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Where a kept file's contents are.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// File `id` of `tenant`.
    pub fn get(&self, tenant: &str, id: &str) -> Option<FileRecord> {
        self.records()
            .get(id)
            .filter(|r| r.tenant == tenant)
            .cloned()
    }

    /// `tenant`'s files, newest first.
    pub fn list(&self, tenant: &str) -> Vec<FileRecord> {
        let mut files: Vec<FileRecord> = self
            .records()
            .values()
            .filter(|r| r.tenant == tenant)
            .cloned()
            .collect();
        files.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        files
    }

    /// Starts receiving a file for `tenant`, checked against `models` (every configured
    /// alias and its kind).
    pub async fn receive(
        self: &Arc<Self>,
        tenant: &str,
        filename: &str,
        models: HashMap<String, ModelKind>,
    ) -> Result<Upload, FileError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| FileError::Io(format!("{}: {e}", self.dir.display())))?;
        let id = format!(
            "file-{}",
            std::iter::repeat_with(fastrand::alphanumeric)
                .take(24)
                .collect::<String>()
        );
        let partial = self.dir.join(format!("{id}.part"));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| FileError::Io(format!("{}: {e}", partial.display())))?;
        Ok(Upload {
            files: self.clone(),
            record: FileRecord {
                id,
                tenant: tenant.to_string(),
                bytes: 0,
                created_at: crate::telemetry::now_ms() / 1000,
                filename: filename.to_string(),
                purpose: PURPOSE.to_string(),
                lines: 0,
            },
            partial,
            file: Some(file),
            lines: LineCheck::new(models),
        })
    }

    /// Keeps an upload that passed its checks, within the tenant's room, and writes its
    /// record through to the store.
    async fn keep(&self, record: FileRecord, partial: &std::path::Path) -> Result<(), FileError> {
        {
            let mut records = self.records();
            let used: u64 = records
                .values()
                .filter(|r| r.tenant == record.tenant)
                .map(|r| r.bytes)
                .sum();
            let would = used + record.bytes;
            if would > self.policy.max_tenant_bytes {
                return Err(FileError::TenantFull {
                    would,
                    limit: self.policy.max_tenant_bytes,
                });
            }
            // Held in its place while it is written, so a concurrent upload counts it.
            records.insert(record.id.clone(), record.clone());
        }
        let kept = async {
            tokio::fs::rename(partial, self.path(&record.id))
                .await
                .map_err(|e| FileError::Io(format!("{}: {e}", partial.display())))?;
            self.write_record(&record.id, Some(record.clone())).await
        };
        if let Err(error) = kept.await {
            self.records().remove(&record.id);
            let _ = tokio::fs::remove_file(self.path(&record.id)).await;
            return Err(error);
        }
        Ok(())
    }

    /// Keeps a file the gateway wrote for `tenant` (a batch's output), copying it from
    /// `written` into place. It does not count against the tenant's room: results are
    /// never refused.
    pub async fn adopt(
        &self,
        tenant: &str,
        written: &std::path::Path,
        filename: String,
        purpose: &str,
    ) -> Result<FileRecord, FileError> {
        let io = |e: std::io::Error| FileError::Io(format!("{}: {e}", written.display()));
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let contents = tokio::fs::read(written).await.map_err(io)?;
        let record = FileRecord {
            id: format!(
                "file-{}",
                std::iter::repeat_with(fastrand::alphanumeric)
                    .take(24)
                    .collect::<String>()
            ),
            tenant: tenant.to_string(),
            bytes: contents.len() as u64,
            created_at: crate::telemetry::now_ms() / 1000,
            filename,
            purpose: purpose.to_string(),
            lines: contents.iter().filter(|b| **b == b'\n').count() as u64,
        };
        // Copied, not moved: until the record is written, the batch's own copy is what a
        // restart finds, and it is removed only after.
        tokio::fs::write(self.path(&record.id), &contents)
            .await
            .map_err(io)?;
        self.write_record(&record.id, Some(record.clone())).await?;
        self.records().insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Deletes file `id` of `tenant`: its record (flushed) and its contents.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<FileRecord, FileError> {
        let record = {
            let mut records = self.records();
            if records.get(id).is_none_or(|r| r.tenant != tenant) {
                return Err(FileError::NotFound(id.to_string()));
            }
            records.remove(id)
        }
        .ok_or_else(|| FileError::NotFound(id.to_string()))?;
        self.write_record(id, None).await?;
        if let Err(error) = tokio::fs::remove_file(self.path(id)).await {
            tracing::warn!(file = %id, %error, "a deleted file's contents could not be removed");
        }
        Ok(record)
    }

    /// Writes a record (or its removal) and flushes, off the runtime's threads.
    async fn write_record(&self, id: &str, record: Option<FileRecord>) -> Result<(), FileError> {
        let Some(store) = self.store.get().cloned() else {
            return Ok(());
        };
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            store.save_file(&id, record.as_ref())?;
            store.flush()
        })
        .await
        .map_err(|e| FileError::Io(e.to_string()))?
        .map_err(|e| FileError::Io(e.to_string()))
    }
}

/// A file being received: written to a temporary file and checked as it arrives.
/// Dropped unfinished, its temporary file is removed.
pub struct Upload {
    files: Arc<Files>,
    record: FileRecord,
    partial: PathBuf,
    file: Option<tokio::fs::File>,
    lines: LineCheck,
}

impl Upload {
    /// The next piece of the file.
    pub async fn push(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.record.bytes += bytes.len() as u64;
        let limit = self.files.policy.max_file_bytes;
        if self.record.bytes > limit {
            return Err(FileError::TooLarge { limit });
        }
        self.lines.push(bytes);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| FileError::Io("closed".into()))?;
        file.write_all(bytes)
            .await
            .map_err(|e| FileError::Io(format!("{}: {e}", self.partial.display())))
    }

    /// The whole file has arrived: kept when every line is a request the gateway serves.
    pub async fn finish(mut self) -> Result<FileRecord, FileError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| FileError::Io("closed".into()))?;
        file.flush()
            .await
            .and(file.sync_all().await)
            .map_err(|e| FileError::Io(format!("{}: {e}", self.partial.display())))?;
        drop(file);
        let lines = std::mem::replace(&mut self.lines, LineCheck::new(HashMap::new()));
        self.record.lines = lines.finish().map_err(FileError::Invalid)?;
        let record = self.record.clone();
        self.files.keep(record.clone(), &self.partial).await?;
        Ok(record)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Kept files were renamed away; anything left is an upload that did not finish.
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LINE: &[u8] = b"{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\n";

    fn files(dir: &std::path::Path, max_file: u64, max_tenant: u64) -> Arc<Files> {
        Arc::new(Files::new(
            dir,
            FilePolicy {
                max_file_bytes: max_file,
                max_tenant_bytes: max_tenant,
                batch_window: std::time::Duration::from_secs(86_400),
            },
        ))
    }

    fn models() -> HashMap<String, ModelKind> {
        HashMap::from([("m".to_string(), ModelKind::Chat)])
    }

    async fn upload(
        files: &Arc<Files>,
        tenant: &str,
        body: &[u8],
    ) -> Result<FileRecord, FileError> {
        let mut upload = files.receive(tenant, "in.jsonl", models()).await?;
        for piece in body.chunks(7) {
            upload.push(piece).await?;
        }
        upload.finish().await
    }

    #[tokio::test]
    async fn a_file_is_kept_for_its_tenant_and_deleted_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path(), 1 << 20, 1 << 20);
        let kept = upload(&files, "a", LINE).await.unwrap();
        assert_eq!((kept.bytes, kept.lines), (LINE.len() as u64, 1));
        assert_eq!(std::fs::read(files.path(&kept.id)).unwrap(), LINE);
        assert_eq!(files.get("a", &kept.id), Some(kept.clone()));
        assert_eq!(files.get("b", &kept.id), None, "another tenant's");
        assert_eq!(files.list("b"), vec![]);
        assert_eq!(
            files.delete("b", &kept.id).await,
            Err(FileError::NotFound(kept.id.clone()))
        );
        files.delete("a", &kept.id).await.unwrap();
        assert!(!files.path(&kept.id).exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("files"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "no temporary file is left");
    }

    #[tokio::test]
    async fn at_start_contents_no_record_names_are_removed_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path(), 1 << 20, 1 << 20);
        let kept = upload(&files, "a", LINE).await.unwrap();
        // A crash left a batch's output copied in without its record, and half an upload.
        let orphan = files.path("file-orphan");
        std::fs::write(&orphan, LINE).unwrap();
        std::fs::write(dir.path().join("files").join("file-cut.part"), b"{").unwrap();
        let restarted = super::tests::files(dir.path(), 1 << 20, 1 << 20);
        restarted.restore(vec![kept.clone()]);
        assert_eq!(restarted.get("a", &kept.id), Some(kept.clone()));
        assert!(files.path(&kept.id).exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("files"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [format!("{}.jsonl", kept.id)]);
    }

    #[tokio::test]
    async fn files_too_large_or_beyond_the_tenants_room_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let line = LINE.len() as u64;
        let files = files(dir.path(), line + 10, line + line / 2);
        let twice = [LINE, LINE].concat();
        assert_eq!(
            upload(&files, "a", &twice).await,
            Err(FileError::TooLarge { limit: line + 10 })
        );
        upload(&files, "a", LINE).await.unwrap();
        assert!(matches!(
            upload(&files, "a", LINE).await,
            Err(FileError::TenantFull { .. })
        ));
        upload(&files, "b", LINE).await.unwrap();
        assert!(matches!(
            upload(&files, "a", b"{}\n").await,
            Err(FileError::Invalid(_))
        ));
        let left = std::fs::read_dir(dir.path().join("files")).unwrap().count();
        assert_eq!(left, 2, "only the two kept files");
    }
}
