//! What streams cost the gateway's memory after they end: three rounds of 2,000 streamed
//! answers, 200 at a time, from a realistic upstream (first token after 200 ms, 100
//! tokens a second, 32 tokens), with the gateway's resident memory after each round and
//! once the finished streams it keeps for watchers have expired. A daemon runs for
//! months: what it holds after load matters as much as the peak.
//!
//! `cargo bench --bench stream_memory`; `SWITCHYARD_BIN=path` measures another build of
//! the gateway (e.g. an older commit's) against the same upstream and load;
//! `ROUNDS`, `STREAMS`, `CONCURRENCY` and `KEEP` (seconds) change the shape; `AUDIT=off`
//! leaves the audit log (and its database writes) out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{free_port, mock, rss_kib, serve, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (rounds, streams, concurrency, keep) = (
        env("ROUNDS", 3),
        env("STREAMS", 2000),
        env("CONCURRENCY", 200),
        env("KEEP", 10),
    );
    switchyard::tls::install_crypto();
    let gateway_bin = std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| BIN.to_string());
    let data = std::env::temp_dir().join(format!("switchyard-memory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let (mock_port, gw_port) = (free_port(), free_port());
    let _mock = mock(
        BIN,
        mock_port,
        &[
            "--ttft",
            "200ms",
            "--tokens-per-sec",
            "100",
            "--answer-tokens",
            "32",
        ],
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{gw_port}\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[streams]\nkeep_finished = \"{keep}s\"\n[audit]\nenabled = {audit}\n[health]\ninterval = \"1h\"\n[tiers.t]\nmax_queue = 100000\n[[tenants]]\nname = \"bench\"\ntier = \"t\"\nkeys = [\"{}\"]\n[[regions]]\nname = \"local\"\n  [[regions.instances]]\n  name = \"local-mock\"\n  url = \"http://127.0.0.1:{mock_port}/v1\"\n  max_concurrency = 100000\n[[models]]\nalias = \"gpt-4o-mini\"\n",
        data.display(),
        switchyard::auth::hash_key("sy-bench"),
        audit = std::env::var("AUDIT").map_or(true, |v| v != "off"),
    );
    let gateway = serve(&gateway_bin, &data, &config, gw_port);
    let pid = gateway.0.id();
    wait_for(mock_port);
    std::thread::sleep(Duration::from_secs(1));
    println!("gateway {gateway_bin}");
    println!("idle: {:.0} MiB", rss_mib(pid));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://127.0.0.1:{gw_port}/v1/chat/completions");
        for round in 1..=rounds {
            let started = Instant::now();
            let left = Arc::new(AtomicUsize::new(streams));
            let failed = Arc::new(AtomicUsize::new(0));
            let workers = (0..concurrency).map(|_| {
                let (client, url, left, failed) =
                    (client.clone(), url.clone(), left.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while left
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
                        .is_ok()
                    {
                        n += 1;
                        let body = format!(
                            r#"{{"model":"gpt-4o-mini","stream":true,"messages":[{{"role":"user","content":"round {round} request {n} {}"}}]}}"#,
                            fastrand::u64(..)
                        );
                        let ok = match client
                            .post(&url)
                            .bearer_auth("sy-bench")
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => r
                                .bytes()
                                .await
                                .is_ok_and(|b| b.ends_with(b"data: [DONE]\n\n")),
                            _ => false,
                        };
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
            futures_util::future::join_all(workers).await;
            let took = started.elapsed();
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!(
                "round {round}: {streams} streams ({} failed) in {took:.1?} ({:.0}/s); RSS {:.0} MiB",
                failed.load(Ordering::Relaxed),
                streams as f64 / took.as_secs_f64(),
                rss_mib(pid)
            );
        }
        // The clients go, the keep expires, and the sweep (every second) drops what the
        // hub held; pooled upstream connections close after 60 s idle.
        drop(client);
        tokio::time::sleep(Duration::from_secs(keep as u64 + 3)).await;
        println!(
            "clients gone, kept streams expired ({keep}s): RSS {:.0} MiB",
            rss_mib(pid)
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        println!(
            "a minute later (idle upstream connections closed): RSS {:.0} MiB",
            rss_mib(pid)
        );
    });
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
}
