//! Admission and scheduling decisions per second, with 1,000 tenants and 10,000 queued
//! requests, and the memory they take. Run with `cargo bench --bench admission`.
//!
//! Each phase prints its own line; memory is the process's resident set, read from
//! /proc before and after, so it includes allocator overhead (and, for queued requests,
//! the tokio task each waiting request is).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::admission::{Admission, Demand, Usage};
use switchyard::domain::{Limits, Tenant, Tier};
use switchyard::scheduler::Scheduler;

const TENANTS: usize = 1000;
const QUEUED: usize = 10_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn tiers() -> Vec<Tier> {
    let limits = Limits {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        daily_tokens: Some(u64::MAX / 4),
        ..Limits::default()
    };
    [("enterprise", 60), ("pro", 30), ("free", 10)]
        .into_iter()
        .map(|(name, share)| Tier {
            name: name.into(),
            share,
            max_queue: QUEUED * 2,
            max_queue_per_tenant: QUEUED * 2,
            max_wait: Duration::from_secs(3600),
            limits,
        })
        .collect()
}

fn tenants() -> Vec<Tenant> {
    (0..TENANTS)
        .map(|i| Tenant {
            name: format!("tenant-{i:04}"),
            tier: ["enterprise", "pro", "free"][i % 3].into(),
            keys: vec![],
            overrides: Limits::default(),
            regions: None,
            audit_content: false,
        })
        .collect()
}

fn demand() -> Demand {
    Demand {
        prompt_tokens: 120,
        max_tokens: Some(256),
        completion: true,
        price: None,
        batch: false,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    tokens();
    runtime.block_on(run());
}

/// Counting a prompt's tokens, as every request does to reserve them: a one-line chat
/// prompt and a 4 KiB document, with the o200k_base vocabulary.
fn tokens() {
    use switchyard::admission::estimate;
    use switchyard::domain::TokenizerKind;

    let short = r#"[{"role":"user","content":"Say hello in one short sentence."}]"#;
    let paragraph = "The gateway reserves a request's tokens before it is sent upstream, \
        and settles them from the usage the answer reports.\n\n    Indented, with numbers \
        like 1234567 and punctuation!? ";
    let document = paragraph.repeat(4096 / paragraph.len() + 1);
    let long =
        serde_json::to_string(&serde_json::json!([{"role": "user", "content": document}])).unwrap();
    for (what, messages) in [("one-line prompt", short), ("4 KiB prompt", long.as_str())] {
        let raw = serde_json::value::RawValue::from_string(messages.to_string()).unwrap();
        let rounds = if messages.len() < 100 { 200_000 } else { 2_000 };
        let mut tokens = estimate::chat_prompt(TokenizerKind::O200kBase, Some(&raw));
        let started = Instant::now();
        for _ in 0..rounds {
            tokens = std::hint::black_box(estimate::chat_prompt(
                TokenizerKind::O200kBase,
                Some(std::hint::black_box(&raw)),
            ));
        }
        let elapsed = started.elapsed();
        println!(
            "tokens: {what} ({tokens} tokens) counted in {:.2} µs",
            elapsed.as_secs_f64() * 1e6 / rounds as f64
        );
    }
}

async fn run() {
    let tiers = tiers();
    let tenants = tenants();
    let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();

    let before = rss_bytes();
    let admission = Arc::new(Admission::new(&tiers, &tenants));
    let after_tenants = rss_bytes();
    println!(
        "{TENANTS} tenants: {} resident ({} bytes each)",
        mib(after_tenants - before),
        (after_tenants - before) / TENANTS as u64
    );

    // Admission alone: reserve and settle, round robin over the tenants.
    let rounds = 1_000_000;
    let started = Instant::now();
    for i in 0..rounds {
        let reservation = admission.reserve(&names[i % TENANTS], &demand()).unwrap();
        reservation.settle(Usage {
            prompt_tokens: 120,
            completion_tokens: 200,
            estimated: false,
        });
    }
    let elapsed = started.elapsed();
    println!(
        "admission: {rounds} reserve+settle in {:.2?}: {:.0} decisions/s, {:.0} ns each",
        elapsed,
        rounds as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / rounds as f64
    );

    // Scheduling: 10,000 requests queued behind one seat, then drained one by one.
    let scheduler = Scheduler::new(1, &tiers);
    let holder = scheduler.acquire("holder", "enterprise", 1).await.unwrap();
    let before_queue = rss_bytes();
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(QUEUED);
    for i in 0..QUEUED {
        let scheduler = scheduler.clone();
        let admission = admission.clone();
        let tenant = names[i % TENANTS].clone();
        waiting.push(tokio::spawn(async move {
            let reservation = admission.reserve(&tenant, &demand()).unwrap();
            let tier = reservation.tier().to_string();
            let seat = scheduler
                .acquire(&tenant, &tier, reservation.tokens())
                .await
                .unwrap();
            drop(seat);
            drop(reservation);
        }));
    }
    while scheduler.queued() < QUEUED {
        tokio::task::yield_now().await;
    }
    let enqueue = started.elapsed();
    let queued_bytes = rss_bytes() - before_queue;
    println!(
        "queue: {QUEUED} admitted and queued in {:.2?} ({:.0}/s); {} resident, {} bytes per queued request (task included)",
        enqueue,
        QUEUED as f64 / enqueue.as_secs_f64(),
        mib(queued_bytes),
        queued_bytes / QUEUED as u64
    );
    let levels = scheduler.levels();
    let depths: Vec<String> = levels
        .iter()
        .map(|l| format!("{} {}", l.tier, l.queued))
        .collect();
    println!("queue depths: {}", depths.join(", "));

    let started = Instant::now();
    drop(holder);
    for task in waiting {
        task.await.unwrap();
    }
    let drain = started.elapsed();
    println!(
        "dispatch: {QUEUED} seats handed out one at a time in {:.2?}: {:.0} dispatches/s (each wakes its waiting task)",
        drain,
        QUEUED as f64 / drain.as_secs_f64()
    );
}
