//! How many audit records a second the writer sustains into the log, and what a record
//! costs the request path (encoding it into the thread's buffer). Run with `cargo bench --bench audit`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::audit::{Audit, spawn_writer};
use switchyard::domain::AuditPolicy;
use switchyard::domain::records::{AuditKind, AuditRecord};
use switchyard::store::{SledStore, Store};

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        at_ms: switchyard::telemetry::now_ms(),
        kind: Some(AuditKind::Request),
        tenant: Some(format!("tenant-{}", n % 50)),
        request_id: Some(format!("req_{n:016x}").into()),
        key_id: Some("config:1a2b3c4d".into()),
        endpoint: Some("/v1/chat/completions".into()),
        model: Some("gpt-4o-mini".into()),
        stream: Some(n.is_multiple_of(3)),
        region: Some("us-east".into()),
        instance: Some("us-east-a".into()),
        status: Some(200),
        tokens_reserved: Some(4200),
        prompt_tokens: Some(104),
        completion_tokens: Some(230),
        estimated: Some(false),
        queue_ms: Some(0),
        latency_ms: Some(412),
        cache: Some("bypass".into()),
        route: Some("us-east-a: least loaded of two in us-east".into()),
        ..AuditRecord::default()
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Arc::new(Audit::new(AuditPolicy {
            enabled: true,
            keep: Duration::from_secs(86_400),
            max_bytes: usize::MAX,
            flush_interval: Duration::from_secs(1),
        }));
        let writer = spawn_writer(audit.clone(), store.clone());
        // Within one buffer's backlog (all from this thread), so nothing is dropped.
        let total = 100_000u64;
        let records: Vec<AuditRecord> = (0..total).map(record).collect();
        let started = Instant::now();
        for record in records {
            audit.record(record);
        }
        let handed = started.elapsed();
        while audit.written() < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let written = started.elapsed();
        writer.stop().await;
        assert_eq!(audit.dropped(), 0);
        let (count, bytes) = store.audit_size();
        println!(
            "audit: {total} records handed over in {handed:.2?} ({:.0} ns each on the request path); written in {written:.2?}: {:.0} records/s sustained; {count} records, {:.0} bytes each",
            handed.as_nanos() as f64 / total as f64,
            total as f64 / written.as_secs_f64(),
            bytes as f64 / count.max(1) as f64,
        );
        let query = Instant::now();
        let found = store
            .read_audit(&switchyard::domain::records::AuditQuery {
                tenant: Some("tenant-7".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        println!(
            "query: the newest 100 of one tenant (of 50) in {:.2?} ({} found)",
            query.elapsed(),
            found.len()
        );
    });
}
