//! Batch jobs the gateway runs itself (`/v1/batches`), against any upstream: each line
//! of the input file goes through `Gateway::serve` as the tenant, in the scheduler's
//! batch level (only seats no tier waits for), a few at a time. A line's result is
//! appended to the output (2xx) or error file and flushed before it counts as done, so
//! after a crash the runner reads back the `custom_id`s already written and runs only the
//! rest: no line lost, none run twice. Retryable failures (429, 5xx) are retried with
//! backoff. A line the gateway itself holds back (the tenant's rate, batch and budget
//! limits, a pause, a long queue) is not failed: it waits, however long, and tries
//! again. `completion_window` ends the batch as `expired`, with what it finished and a
//! `batch_expired` error line for each line it did not run.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{Gateway, Inbound, ReplyBody, now_secs, random_id};
use crate::domain::records::BatchRecord;
use crate::domain::snapshot::BatchView;
use crate::domain::{Directives, ModelKind};
use crate::files::lines::ENDPOINTS;

/// Lines of one batch in flight at once: each still waits for a seat live traffic does
/// not need (the scheduler's batch level), and the tenant's `batch_concurrency` applies.
const LINES_AT_ONCE: usize = 32;
/// Attempts at a line that fails with a retryable status, and the first backoff.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The `completion_window` OpenAI's clients send: the configured `batch_window`.
const WINDOW: &str = "24h";

/// Why a batch could not be created or changed, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    Invalid {
        param: &'static str,
        message: String,
    },
    NotFound(String),
    Io(String),
}

/// Refusals of the gateway's own that say "not yet": a batch line waits them out.
const WAITS: &[&str] = &[
    "rate_limit_exceeded",
    "batch_limit_reached",
    "insufficient_quota",
    "queue_full",
    "tenant_queue_full",
    "queue_timeout",
    "tenant_paused",
];
/// The longest a waiting line sleeps before it looks again.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// Every batch, and a stop signal for each that runs.
#[derive(Default)]
pub struct Batches {
    records: Mutex<HashMap<String, BatchRecord>>,
    cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Why a batch's lines wait, while any does (for operators): how many wait, and
    /// the latest reason.
    held: Mutex<HashMap<String, (usize, String)>>,
    /// A batch line finished: lines held by `batch_concurrency` look again.
    freed: tokio::sync::Notify,
}

impl Batches {
    /// What `/metrics` exports: batches by status, and lines run by outcome.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let records = self.records();
        let mut by_status = std::collections::BTreeMap::<&str, u64>::new();
        let (mut completed, mut failed) = (0, 0);
        for batch in records.values() {
            *by_status.entry(batch.status.as_str()).or_default() += 1;
            completed += batch.completed;
            failed += batch.failed;
        }
        let _ = writeln!(out, "# HELP switchyard_batches Batch jobs, by status.");
        let _ = writeln!(out, "# TYPE switchyard_batches gauge");
        for (status, count) in by_status {
            let _ = writeln!(out, "switchyard_batches{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_batch_lines_total Batch lines run, by outcome."
        );
        let _ = writeln!(out, "# TYPE switchyard_batch_lines_total counter");
        let _ = writeln!(
            out,
            "switchyard_batch_lines_total{{outcome=\"completed\"}} {completed}"
        );
        let _ = writeln!(
            out,
            "switchyard_batch_lines_total{{outcome=\"failed\"}} {failed}"
        );
    }

    /// Every tenant's batches with their progress, newest first (the operator's view);
    /// of those that ended, the `ended` newest.
    pub fn views(&self, ended: usize) -> Vec<BatchView> {
        let mut batches: Vec<BatchRecord> = self.records().values().cloned().collect();
        batches.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let mut kept_ended = 0;
        batches.retain(|b| {
            let keep = !b.ended() || kept_ended < ended;
            kept_ended += usize::from(b.ended());
            keep
        });
        batches
            .iter()
            .map(|b| progress(b, self.held(&b.id)))
            .collect()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, BatchRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines waiting on a limit look again at once (an operator changed something).
    pub(crate) fn wake(&self) {
        self.freed.notify_waiters();
    }

    /// Why `id`'s lines are waiting now, if they are.
    pub fn held(&self, id: &str) -> Option<String> {
        self.held_lines().get(id).map(|(_, why)| why.clone())
    }

    fn held_lines(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, String)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line of batch `id` waits, for `why`, until the guard is dropped.
    fn hold<'b>(&'b self, id: &'b str, why: String) -> Held<'b> {
        let mut held = self.held_lines();
        let entry = held.entry(id.to_string()).or_insert((0, String::new()));
        *entry = (entry.0 + 1, why);
        Held { batches: self, id }
    }
}

/// A line waiting on a limit; the batch shows why while any of its lines waits.
struct Held<'b> {
    batches: &'b Batches,
    id: &'b str,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.batches.held_lines();
        if let Some((waiting, _)) = held.get_mut(self.id) {
            *waiting -= 1;
            if *waiting == 0 {
                held.remove(self.id);
            }
        }
    }
}

impl Batches {
    pub fn get(&self, tenant: &str, id: &str) -> Option<BatchRecord> {
        self.records()
            .get(id)
            .filter(|b| b.tenant == tenant)
            .cloned()
    }

    /// `tenant`'s batches, newest first.
    pub fn list(&self, tenant: &str) -> Vec<BatchRecord> {
        let mut batches: Vec<BatchRecord> = self
            .records()
            .values()
            .filter(|b| b.tenant == tenant)
            .cloned()
            .collect();
        batches.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        batches
    }
}

/// A batch as operators see it (the console, the admin API, the audit log): its state
/// and progress.
pub fn progress(batch: &BatchRecord, held: Option<String>) -> BatchView {
    let done = batch.completed + batch.failed;
    let end = batch
        .completed_at
        .or(batch.cancelled_at)
        .or(batch.expired_at)
        .unwrap_or_else(now_secs);
    let running_secs = batch
        .in_progress_at
        .map_or(0, |started| end.saturating_sub(started));
    let rate = (running_secs > 0).then(|| done as f64 / running_secs as f64);
    let eta = rate
        .filter(|r| *r > 0.0 && batch.status == "in_progress")
        .map(|r| (batch.total.saturating_sub(done) as f64 / r).ceil() as u64);
    BatchView {
        id: batch.id.clone(),
        tenant: batch.tenant.clone(),
        status: batch.status.clone(),
        endpoint: batch.endpoint.clone(),
        total: batch.total,
        completed: batch.completed,
        failed: batch.failed,
        tokens: batch.tokens,
        lines_per_sec: rate,
        eta_secs: eta,
        created_at: batch.created_at,
        expires_at: batch.expires_at,
        held,
        errors: batch.errors.clone(),
    }
}

impl Gateway {
    /// The directory a batch's results are written in as they come.
    fn batch_dir(&self, id: &str) -> PathBuf {
        self.config.server.data_dir.join("batches").join(id)
    }

    /// Creates a batch of `tenant` over its file `input_file_id` and starts it.
    pub async fn create_batch(
        self: &Arc<Self>,
        tenant: &str,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<Value>,
    ) -> Result<BatchRecord, BatchError> {
        let invalid = |param, message: String| BatchError::Invalid { param, message };
        let Some(file) = self.files.get(tenant, input_file_id) else {
            return Err(invalid(
                "input_file_id",
                format!(
                    "no file {input_file_id} for this tenant; upload it with purpose \"batch\""
                ),
            ));
        };
        if !ENDPOINTS.iter().any(|(path, _)| *path == endpoint) {
            let served: Vec<&str> = ENDPOINTS.iter().map(|(path, _)| *path).collect();
            return Err(invalid(
                "endpoint",
                format!(
                    "endpoint \"{endpoint}\" is not one the gateway serves; use one of {}",
                    served.join(", ")
                ),
            ));
        }
        let longest = self.config.files.batch_window;
        let window = if completion_window == WINDOW {
            longest
        } else {
            match crate::config::parse_duration(completion_window) {
                Ok(window) if !window.is_zero() && window <= longest => window,
                _ => {
                    return Err(invalid(
                        "completion_window",
                        format!(
                            "completion_window must be \"{WINDOW}\" or a duration up to this gateway's batch_window, {}",
                            crate::config::format_duration(longest)
                        ),
                    ));
                }
            }
        };
        let created = now_secs();
        let record = BatchRecord {
            id: format!("batch_{}", random_id()),
            tenant: tenant.to_string(),
            input_file_id: file.id,
            endpoint: endpoint.to_string(),
            completion_window: completion_window.to_string(),
            status: "validating".into(),
            created_at: created,
            expires_at: created + window.as_secs().max(1),
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            total: file.lines,
            completed: 0,
            failed: 0,
            tokens: 0,
            output_file_id: None,
            error_file_id: None,
            errors: Vec::new(),
            metadata,
        };
        self.save_batch(&record).await?;
        self.batches
            .records()
            .insert(record.id.clone(), record.clone());
        let created = format!(
            "batch {} created over {} ({} lines)",
            record.id, record.input_file_id, record.total
        );
        self.audit_batch(
            &record,
            &format!("tenant {tenant}"),
            "batch.create",
            created,
        );
        self.start_batch(&record.id);
        Ok(record)
    }

    /// Asks a running batch of `tenant` (any tenant's, for an operator: `None`) to stop:
    /// lines in flight finish, no new one starts. `actor` is who asked, for the audit.
    pub async fn cancel_batch(
        &self,
        tenant: Option<&str>,
        id: &str,
        actor: &str,
    ) -> Result<BatchRecord, BatchError> {
        let record = {
            let mut records = self.batches.records();
            let record = records
                .get_mut(id)
                .filter(|b| tenant.is_none_or(|t| b.tenant == t))
                .ok_or_else(|| BatchError::NotFound(id.to_string()))?;
            if record.ended() || record.status == "cancelling" {
                return Ok(record.clone());
            }
            record.status = "cancelling".into();
            record.cancelling_at = Some(now_secs());
            record.clone()
        };
        self.save_batch(&record).await?;
        self.audit_batch(
            &record,
            actor,
            "batch.cancel",
            format!("batch {id} cancelled"),
        );
        if let Some(cancel) = self
            .batches
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            let _ = cancel.send(true);
        }
        Ok(record)
    }

    pub fn batches(&self) -> &Batches {
        &self.batches
    }

    /// An audit record of something done to a batch, by `actor`.
    fn audit_batch(&self, batch: &BatchRecord, actor: &str, action: &str, outcome: String) {
        use crate::domain::records::{AuditKind, AuditRecord};
        self.sinks.audit.record(AuditRecord {
            at_ms: crate::telemetry::now_ms(),
            kind: Some(AuditKind::Operator),
            actor: Some(actor.to_string()),
            action: Some(action.to_string()),
            target: Some(batch.id.clone()),
            tenant: Some(batch.tenant.clone()),
            after: serde_json::to_value(progress(batch, None)).ok(),
            outcome: Some(outcome),
            ..AuditRecord::default()
        });
    }

    /// Takes back the batches the store kept (at start) and resumes those still running.
    pub fn restore_batches(self: &Arc<Self>, batches: Vec<BatchRecord>) {
        let running: Vec<String> = batches
            .iter()
            .filter(|b| !b.ended())
            .map(|b| b.id.clone())
            .collect();
        self.batches
            .records()
            .extend(batches.into_iter().map(|b| (b.id.clone(), b)));
        for id in running {
            tracing::info!(batch = %id, "resuming a batch");
            self.start_batch(&id);
        }
    }

    async fn save_batch(&self, record: &BatchRecord) -> Result<(), BatchError> {
        let Some(store) = self.store.get().cloned() else {
            return Ok(());
        };
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            store.save_batch(&record)?;
            store.flush()
        })
        .await
        .map_err(|e| BatchError::Io(e.to_string()))?
        .map_err(|e| BatchError::Io(e.to_string()))
    }

    /// Changes a batch's record in memory and in the store.
    async fn update_batch(
        &self,
        id: &str,
        change: impl FnOnce(&mut BatchRecord),
    ) -> Option<BatchRecord> {
        let record = {
            let mut records = self.batches.records();
            let record = records.get_mut(id)?;
            change(record);
            record.clone()
        };
        if let Err(error) = self.save_batch(&record).await {
            tracing::warn!(batch = %id, ?error, "a batch's progress could not be written; it is kept in memory");
        }
        Some(record)
    }

    fn start_batch(self: &Arc<Self>, id: &str) {
        let (cancel, cancelled) = watch::channel(false);
        self.batches
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), cancel);
        let (gateway, id) = (self.clone(), id.to_string());
        self.spawn_background(async move {
            if let Err(error) = gateway.run_batch(&id, cancelled).await {
                tracing::error!(batch = %id, %error, "a batch failed");
                let now = now_secs();
                gateway
                    .update_batch(&id, |b| {
                        b.status = "failed".into();
                        b.failed_at = Some(now);
                        b.errors.push(error);
                    })
                    .await;
            }
            gateway
                .batches
                .cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Runs a batch to its end: every line not yet written, then the output files.
    async fn run_batch(
        self: &Arc<Self>,
        id: &str,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let Some(record) = self.batches.records().get(id).cloned() else {
            return Ok(());
        };
        let input = self.files.path(&record.input_file_id);
        let dir = self.batch_dir(id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let (output_path, errors_path) = (dir.join("output.jsonl"), dir.join("errors.jsonl"));
        // What an earlier run already wrote is done; a line a crash cut short is not.
        for path in [&output_path, &errors_path] {
            drop_partial_line(path).await?;
        }
        let (done_ok, tokens) = written(&output_path).await;
        let (done_failed, _) = written(&errors_path).await;
        let mut lines = read_lines(&input).await?;
        // Every line must be for the batch's endpoint.
        let mismatched: Vec<String> = lines
            .iter()
            .filter(|(_, line)| {
                line.get("url").and_then(Value::as_str) != Some(record.endpoint.as_str())
            })
            .take(10)
            .map(|(at, line)| {
                format!(
                    "line {at}: url {} is not the batch's endpoint {}",
                    line.get("url").unwrap_or(&Value::Null),
                    record.endpoint
                )
            })
            .collect();
        if !mismatched.is_empty() {
            let now = now_secs();
            self.update_batch(id, |b| {
                b.status = "failed".into();
                b.failed_at = Some(now);
                b.errors = mismatched;
            })
            .await;
            return Ok(());
        }
        let now = now_secs();
        let (completed, failed) = (done_ok.len() as u64, done_failed.len() as u64);
        self.update_batch(id, |b| {
            if b.status == "validating" {
                b.status = "in_progress".into();
                b.in_progress_at = Some(now);
            }
            b.total = lines.len() as u64;
            b.completed = completed;
            b.failed = failed;
            b.tokens = tokens;
        })
        .await;
        lines.retain(|(_, line)| {
            let custom_id = line.get("custom_id").and_then(Value::as_str).unwrap_or("");
            !done_ok.contains(custom_id) && !done_failed.contains(custom_id)
        });
        let open = |path: PathBuf| async move {
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let mut output = open(output_path.clone()).await?;
        let mut errors = open(errors_path.clone()).await?;
        let kind = ENDPOINTS
            .iter()
            .find(|(path, _)| *path == record.endpoint)
            .map_or(ModelKind::Chat, |(_, kind)| *kind);
        let endpoint: &'static str = ENDPOINTS
            .iter()
            .find(|(path, _)| *path == record.endpoint)
            .map_or("/v1/chat/completions", |(path, _)| path);
        let deadline = record.expires_at;
        // Cancelled before a restart: it ends as it was asked to, running nothing more.
        let mut stopped = (record.status == "cancelling").then_some("cancelled");
        // Shutdown waits for the lines in flight and their results being written.
        let _work = self.shutdown.work();
        let draining = self.shutdown.draining_signal();
        tokio::pin!(draining);
        let mut pending = lines.into_iter();
        let mut running = tokio::task::JoinSet::new();
        // Stops lines that wait on a limit (they are not done) once the batch stops.
        let (halt, halted) = watch::channel(false);
        loop {
            if stopped.is_some() {
                let _ = halt.send(true);
            }
            while stopped.is_none() && running.len() < LINES_AT_ONCE {
                let Some((_, line)) = pending.next() else {
                    break;
                };
                let gateway = self.clone();
                let tenant = record.tenant.clone();
                let batch = id.to_string();
                let halted = halted.clone();
                running.spawn(async move {
                    gateway
                        .run_line(&tenant, &batch, (endpoint, kind), line, halted)
                        .await
                });
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some(result) = running.join_next() => {
                    // Cut by shutdown: not done, it runs after the restart.
                    let Ok(Some((ok, text, tokens))) = result else { continue };
                    let file = if ok { &mut output } else { &mut errors };
                    file.write_all(text.as_bytes())
                        .await
                        .and(file.flush().await)
                        .map_err(|e| format!("writing a result: {e}"))?;
                    self.update_batch_counts(id, ok, tokens);
                }
                _ = cancelled.changed(), if stopped.is_none() => stopped = Some("cancelled"),
                () = &mut draining, if stopped.is_none() => stopped = Some("draining"),
                () = tokio::time::sleep(Duration::from_secs(deadline.saturating_sub(now_secs()))), if stopped.is_none() => stopped = Some("expired"),
            }
        }
        if stopped == Some("expired") {
            // What did not run gets OpenAI's `batch_expired` line, and counts as failed.
            let (mut done, _) = written(&output_path).await;
            done.extend(written(&errors_path).await.0);
            let mut expired = String::new();
            let mut count = 0;
            for (_, line) in read_lines(&input).await? {
                let custom_id = line.get("custom_id").and_then(Value::as_str).unwrap_or("");
                if done.contains(custom_id) {
                    continue;
                }
                let result = json!({
                    "id": format!("batch_req_{}", random_id()),
                    "custom_id": custom_id,
                    "response": null,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                });
                expired.push_str(&format!("{result}\n"));
                count += 1;
            }
            errors
                .write_all(expired.as_bytes())
                .await
                .and(errors.flush().await)
                .map_err(|e| format!("writing expired lines: {e}"))?;
            if let Some(record) = self.batches.records().get_mut(id) {
                record.failed += count;
            }
        }
        output
            .sync_all()
            .await
            .map_err(|e| format!("{}: {e}", output_path.display()))?;
        errors
            .sync_all()
            .await
            .map_err(|e| format!("{}: {e}", errors_path.display()))?;
        drop((output, errors));
        if stopped == Some("draining") {
            // The daemon stops: the batch stays in progress and resumes at the next start.
            self.update_batch(id, |_| {}).await;
            return Ok(());
        }
        self.finish_batch(id, stopped, (&output_path, &errors_path))
            .await
    }

    fn update_batch_counts(&self, id: &str, ok: bool, tokens: u64) {
        if let Some(record) = self.batches.records().get_mut(id) {
            record.tokens += tokens;
            if ok {
                record.completed += 1;
            } else {
                record.failed += 1;
            }
        }
    }

    /// The batch's end: its output and error files kept as the tenant's files, and its
    /// final status.
    async fn finish_batch(
        &self,
        id: &str,
        stopped: Option<&str>,
        (output, errors): (&std::path::Path, &std::path::Path),
    ) -> Result<(), String> {
        let Some(record) = self.batches.records().get(id).cloned() else {
            return Ok(());
        };
        if stopped.is_none() {
            let now = now_secs();
            self.update_batch(id, |b| {
                b.status = "finalizing".into();
                b.finalizing_at = Some(now);
            })
            .await;
        }
        let keep = |path: &std::path::Path, name: &str| {
            let filename = format!("{id}_{name}.jsonl");
            let (tenant, path) = (record.tenant.clone(), path.to_path_buf());
            async move {
                let empty = tokio::fs::metadata(&path)
                    .await
                    .map_or(true, |m| m.len() == 0);
                if empty {
                    return Ok(None);
                }
                self.files
                    .adopt(&tenant, &path, filename, "batch_output")
                    .await
                    .map(|f| Some(f.id))
                    .map_err(|e| e.to_string())
            }
        };
        let output_file_id = keep(output, "output").await?;
        let error_file_id = keep(errors, "errors").await?;
        let now = now_secs();
        self.update_batch(id, |b| {
            b.output_file_id = output_file_id;
            b.error_file_id = error_file_id;
            match stopped {
                Some("cancelled") => {
                    b.status = "cancelled".into();
                    b.cancelled_at = Some(now);
                }
                Some(_) => {
                    b.status = "expired".into();
                    b.expired_at = Some(now);
                }
                None => {
                    b.status = "completed".into();
                    b.completed_at = Some(now);
                }
            }
        })
        .await;
        let _ = tokio::fs::remove_dir_all(self.batch_dir(id)).await;
        tracing::info!(batch = %id, status = stopped.unwrap_or("completed"), "batch ended");
        if let Some(ended) = self.batches.records().get(id).cloned() {
            let outcome = format!(
                "batch {id} {}: {} of {} lines completed, {} failed",
                ended.status, ended.completed, ended.total, ended.failed
            );
            self.audit_batch(&ended, "gateway", "batch.end", outcome);
        }
        Ok(())
    }

    /// One line through the pipeline as the tenant, retried on retryable failures: its
    /// result line, and whether it succeeded; none when shutdown cut it, or the batch
    /// stopped while it waited (it is not done).
    async fn run_line(
        self: Arc<Self>,
        tenant: &str,
        batch: &str,
        (endpoint, kind): (&'static str, ModelKind),
        line: Value,
        mut halted: watch::Receiver<bool>,
    ) -> Option<(bool, String, u64)> {
        let custom_id = line.get("custom_id").cloned().unwrap_or(Value::Null);
        let mut body = line.get("body").cloned().unwrap_or(Value::Null);
        if let Some(body) = body.as_object_mut() {
            body.remove("stream");
            body.remove("stream_options");
        }
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let request_id = format!("req_{}", random_id());
            let fields = serde_json::from_value(body.clone()).unwrap_or_default();
            let inbound = Inbound {
                request_id: request_id.clone().into(),
                endpoint,
                tenant: tenant.to_string(),
                key_id: format!("batch:{batch}").into(),
                kind,
                fields,
                directives: Directives::default(),
                session: None,
                pin: None,
                batch: true,
                arrival: tokio::time::Instant::now(),
            };
            let freed = self.batches.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let (status, answer) = match self.serve(inbound).await {
                Ok(reply) => {
                    let body = match reply.body {
                        ReplyBody::Whole { bytes, .. } => {
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                        }
                        ReplyBody::Stream(_) => Value::Null,
                    };
                    (reply.status.as_u16(), body)
                }
                Err(refusal) if refusal.code.is_some_and(|code| WAITS.contains(&code)) => {
                    // Held back by the gateway, not failed: wait and look again.
                    let wait = refusal
                        .retry_after()
                        .unwrap_or(Duration::from_secs(5))
                        .min(LONGEST_WAIT);
                    let _held = self.batches.hold(batch, refusal.message.clone());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut freed => {}
                        _ = halted.wait_for(|h| *h) => return None,
                    }
                    continue;
                }
                Err(refusal) => (refusal.status.as_u16(), refusal.body()),
            };
            // The line ran (or failed): one held by batch_concurrency may go.
            self.batches.wake();
            if self.shutdown.is_cut() {
                return None;
            }
            attempt += 1;
            let retryable = status == 429 || status >= 500;
            if retryable && attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            let result = json!({
                "id": format!("batch_req_{}", request_id.trim_start_matches("req_")),
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": request_id, "body": answer},
                "error": null,
            });
            let tokens = result["response"]["body"]["usage"]["total_tokens"]
                .as_u64()
                .unwrap_or(0);
            return Some(((200..300).contains(&status), format!("{result}\n"), tokens));
        }
    }
}

/// Cuts a results file back to its last whole line (a crash may have cut one short).
async fn drop_partial_line(path: &std::path::Path) -> Result<(), String> {
    let Ok(contents) = tokio::fs::read(path).await else {
        return Ok(());
    };
    let whole = contents
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if whole == contents.len() {
        return Ok(());
    }
    tracing::warn!(path = %path.display(), cut = contents.len() - whole, "a result line was cut short by a crash; it runs again");
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(whole as u64)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The `custom_id`s a results file holds (written by an earlier run of the batch), and
/// the tokens its answers used.
async fn written(path: &std::path::Path) -> (HashSet<String>, u64) {
    let (mut ids, mut tokens) = (HashSet::new(), 0);
    let Ok(file) = tokio::fs::File::open(path).await else {
        return (ids, tokens);
    };
    let mut lines = tokio::io::BufReader::new(file).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A line cut short by a crash did not count: it runs again.
        let Ok(result) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(id) = result.get("custom_id").and_then(Value::as_str) {
            ids.insert(id.to_string());
            tokens += result["response"]["body"]["usage"]["total_tokens"]
                .as_u64()
                .unwrap_or(0);
        }
    }
    (ids, tokens)
}

/// The requests of an input file, with their line numbers.
async fn read_lines(path: &std::path::Path) -> Result<Vec<(u64, Value)>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("the input file {}: {e}", path.display()))?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut requests = Vec::new();
    let mut at = 0;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("the input file {}: {e}", path.display()))?
    {
        at += 1;
        if line.trim().is_empty() {
            continue;
        }
        let request = serde_json::from_str(&line).map_err(|e| format!("line {at}: {e}"))?;
        requests.push((at, request));
    }
    Ok(requests)
}
