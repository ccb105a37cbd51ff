//! Sustained concurrent streams through the gateway, and the cost of fan-out.
//! Run with `cargo bench --bench streams` (`STREAMS=N` to choose how many, `HTTP1=1` to
//! reach the upstream over HTTP/1.1 instead of HTTP/2, `CLIENT_HTTP2=1` for clients that
//! share HTTP/2 connections instead of one HTTP/1.1 connection per stream).
//!
//! Over HTTP/1.1 a client connection costs hyper two fixed 8 KiB buffers (read and
//! write) for as long as it is open, whatever it carries; HTTP/2 clients share theirs.
//!
//! The mock and the gateway run as separate `switchyard` processes, so each has its own
//! file-descriptor budget. Over HTTP/1.1 every stream costs the gateway two sockets
//! (client and upstream), which caps it near half the open-file limit; over HTTP/2 the
//! upstream streams share one connection. Memory is the gateway's resident set from
//! /proc, and its anonymous part (heap and stacks) apart: the first streams also fault in
//! the executable's pages for code they run, a one-time cost the resident set spreads
//! over them. CPU is the gateway's user+system time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{Process, anon_kib, free_port, rss_kib, serve, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn main() {
    // Ten thousand, or as many client connections as the gateway will hold under the
    // open-file limit it inherits from here (more would be shed, and counted failed).
    let fit = switchyard::listener::connections_allowed().unwrap_or(usize::MAX);
    let streams: usize = std::env::var("STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000.min(fit));
    let http2 = std::env::var_os("HTTP1").is_none();
    let client_http2 = std::env::var_os("CLIENT_HTTP2").is_some();
    switchyard::tls::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data =
        std::env::temp_dir().join(format!("switchyard-streams-bench-{}", std::process::id()));
    let (mock_port, gw_port) = (free_port(), free_port());
    let _mock = Process(
        Command::new(BIN)
            .args([
                "mock",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--ttft",
                "0ms",
                "--tokens-per-sec",
                "1",
                "--answer-tokens",
                "60",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{gw_port}\"\nmax_connections_per_address = 100000\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[streams]\nmax_watchers_per_tenant = 100000\n[health]\ninterval = \"1h\"\n[tiers.t]\nmax_queue = 100000\n[[tenants]]\nname = \"bench\"\ntier = \"t\"\nkeys = [\"{}\"]\n[[regions]]\nname = \"local\"\n  [[regions.instances]]\n  name = \"local-mock\"\n  url = \"http://127.0.0.1:{mock_port}/v1\"\n  max_concurrency = 100000\n  http2 = {http2}\n[[models]]\nalias = \"gpt-4o-mini\"\n",
        data.display(),
        switchyard::auth::hash_key("sy-bench")
    );
    let gateway = serve(BIN, &data, &config, gw_port);
    let pid = gateway.0.id();
    wait_for(mock_port);
    let (idle_rss, idle_anon) = (rss_kib(pid), anon_kib(pid));

    let gateway_log = data.join("stderr.log");
    runtime.block_on(async move {
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
        // HTTP/2 clients of 100 streams each, within a server's 200 streams a connection.
        let h2_clients: Vec<reqwest::Client> = (0..streams.div_ceil(100))
            .map(|_| reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap())
            .collect();
        let client_for = |i: usize| if client_http2 { &h2_clients[i / 100] } else { &client };
        let url = format!("http://127.0.0.1:{gw_port}/v1/chat/completions");
        let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
        let started = Instant::now();
        let mut open = Vec::with_capacity(streams);
        let mut failed = 0;
        // Why streams failed, by reason, so a failure says what ran out.
        let mut reasons = std::collections::BTreeMap::<String, usize>::new();
        for chunk in (0..streams).collect::<Vec<_>>().chunks(500) {
            let batch = futures_util::future::join_all(chunk.iter().map(|&i| {
                client_for(i).post(&url).bearer_auth("sy-bench").header("content-type", "application/json").body(body).send()
            }))
            .await;
            for reply in batch {
                match reply {
                    Ok(mut r) if r.status().is_success() => {
                        // Wait for the first event so the stream is really flowing.
                        match r.chunk().await {
                            Ok(_) => open.push(r),
                            Err(e) => {
                                failed += 1;
                                *reasons.entry(format!("first event: {}", switchyard::providers::root_cause(&e))).or_default() += 1;
                            }
                        }
                    }
                    Ok(r) => {
                        failed += 1;
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        *reasons.entry(format!("status {status}: {}", body.chars().take(300).collect::<String>())).or_default() += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        *reasons.entry(switchyard::providers::root_cause(&e)).or_default() += 1;
                    }
                }
            }
        }
        let ramp = started.elapsed();
        for (reason, count) in &reasons {
            println!("failed: {count} x {reason}");
        }
        if !reasons.is_empty() {
            let log = std::fs::read_to_string(&gateway_log).unwrap_or_default();
            for line in log.lines().take(5) {
                println!("gateway: {line}");
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, anon) = (rss_kib(pid), anon_kib(pid));
        let cpu_before = cpu_secs(pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu = cpu_secs(pid) - cpu_before;
        println!(
            "{} streams open through the gateway (clients over {}, upstream over {}; {failed} failed) after {:.1?}; gateway RSS {} MiB idle, {} MiB with them: {:.1} KiB per stream ({:.1} KiB of it anonymous memory, the rest the executable's pages first used); {:.2} CPU cores relaying one token per second each",
            open.len(),
            if client_http2 { "HTTP/2" } else { "HTTP/1.1" },
            if http2 { "HTTP/2" } else { "HTTP/1.1" },
            ramp,
            idle_rss / 1024,
            rss / 1024,
            (rss.saturating_sub(idle_rss)) as f64 / open.len().max(1) as f64,
            (anon.saturating_sub(idle_anon)) as f64 / open.len().max(1) as f64,
            cpu / 5.0
        );
        drop(open);
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Fan-out: one fast stream and W watchers; CPU per watcher.
        for watchers in [0usize, 100] {
            let cpu_before = cpu_secs(pid);
            let mut runs = Vec::new();
            for _ in 0..20 {
                let origin = client.post(&url).bearer_auth("sy-bench").header("content-type", "application/json").body(body).send().await.unwrap();
                let id = origin.headers().get("x-switchyard-stream-id").unwrap().to_str().unwrap().to_string();
                let mut readers = Vec::new();
                for _ in 0..watchers {
                    readers.push(client.get(format!("http://127.0.0.1:{gw_port}/v1/streams/{id}")).bearer_auth("sy-bench").send());
                }
                let readers = futures_util::future::join_all(readers).await;
                runs.push((origin, readers));
            }
            for (origin, readers) in runs {
                let _ = origin.bytes().await;
                for r in readers.into_iter().flatten() {
                    let _ = r.bytes().await;
                }
            }
            println!(
                "fan-out: 20 streams of 60 tokens with {watchers} watchers each: gateway CPU {:.3} s",
                cpu_secs(pid) - cpu_before
            );
        }
    });
    let _ = std::fs::remove_dir_all(&data);
}
