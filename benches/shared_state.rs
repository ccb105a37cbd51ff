//! What sharing limits through Valkey adds per request. Run with
//! `cargo bench --bench shared_state` (`ROUNDS=N`, 3; `SECS=N` per run, 5).
//!
//! Needs `valkey-server` or `redis-server`; the bench starts its own on loopback. The
//! mock answers at once (16 tokens). Side by side, interleaved, medians of the rounds,
//! at 1 and 50 closed-loop clients: a chat request straight to the mock, through a
//! gateway with local limits, through one with shared limits and leases (the default,
//! 2% of each limit), and through one with shared limits and no lease (a round trip
//! per admission). Every limit is on (RPM, TPM, a daily token budget) and far out of
//! the way. Printed: requests per second, p50/p99 latency, what each adds over local
//! limits, and the store's script calls per request (reports and heartbeats included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{Process, env_or, free_port, median, mock, serve, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

struct Measured {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
}

async fn run(client: &reqwest::Client, base: &str, clients: u64, secs: u64) -> Measured {
    let until = Instant::now() + Duration::from_secs(secs);
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                while Instant::now() < until {
                    let started = Instant::now();
                    let reply = client
                        .post(url.as_str())
                        .bearer_auth("sy-bench")
                        .header("content-type", "application/json")
                        .body(CHAT)
                        .send()
                        .await
                        .unwrap();
                    assert!(reply.status().is_success(), "{}", reply.status());
                    reply.bytes().await.unwrap();
                    latencies
                        .record(started.elapsed().as_micros() as u64)
                        .unwrap();
                }
                latencies
            })
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        all.add(task.await.unwrap()).unwrap();
    }
    Measured {
        per_sec: all.len() as f64 / secs as f64,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        requests: all.len(),
    }
}

/// Script calls the store has answered so far (EVALSHA and EVAL).
async fn script_calls(store: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(store)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?.split(',').next()?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

fn config(port: u16, mock_port: u16, data: &std::path::Path, state: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\
         [health]\ninterval = \"1h\"\n{state}\n\
         [tiers.t]\nmax_queue = 100000\nrpm = 100_000_000\ntpm = 10_000_000_000\ndaily_tokens = 1_000_000_000_000\n\
         [[tenants]]\nname = \"bench\"\ntier = \"t\"\nkeys = [\"{}\"]\n\
         [[regions]]\nname = \"local\"\n  [[regions.instances]]\n  name = \"mock\"\n  url = \"http://127.0.0.1:{mock_port}/v1\"\n  max_concurrency = 256\n\
         [[models]]\nalias = \"gpt-4o-mini\"\n",
        switchyard::auth::hash_key("sy-bench"),
        data = data.display(),
    )
}

fn main() {
    switchyard::tls::install_crypto();
    let rounds = env_or("ROUNDS", 3);
    let secs = env_or("SECS", 5);
    let root = std::env::temp_dir().join(format!("switchyard-state-bench-{}", std::process::id()));
    let server = ["valkey-server", "redis-server"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("valkey-server or redis-server (apt-get install redis-server)");
    let valkey_port = free_port();
    let _valkey = Process(
        std::process::Command::new(server)
            .args(["--port", &valkey_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(valkey_port);
    let mock_port = free_port();
    let _mock = mock(
        BIN,
        mock_port,
        &[
            "--ttft",
            "0ms",
            "--tokens-per-sec",
            "0",
            "--answer-tokens",
            "16",
        ],
    );
    wait_for(mock_port);
    let url = format!("redis://127.0.0.1:{valkey_port}");
    let states = [
        ("local limits", String::new()),
        (
            "shared, leases (2%)",
            format!(
                "[state]\nbackend = \"valkey\"\nurl = \"{url}\"\nprefix = \"leases\"\nlease = 0.02\n"
            ),
        ),
        (
            "shared, no lease",
            format!(
                "[state]\nbackend = \"valkey\"\nurl = \"{url}\"\nprefix = \"exact\"\nlease = 0\n"
            ),
        ),
    ];
    let mut gateways = Vec::new();
    let mut cases = vec![(
        "direct to the mock",
        format!("http://127.0.0.1:{mock_port}"),
    )];
    for (i, (label, state)) in states.iter().enumerate() {
        let port = free_port();
        let data = root.join(format!("gateway-{i}"));
        std::fs::create_dir_all(&data).unwrap();
        gateways.push(serve(
            BIN,
            &data,
            &config(port, mock_port, &data, state),
            port,
        ));
        cases.push((label, format!("http://127.0.0.1:{port}")));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut store = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for clients in [1, 50] {
            for (_, base) in &cases {
                run(&client, base, clients, 1).await;
            }
            let mut results: Vec<Vec<(Measured, u64)>> =
                (0..cases.len()).map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (i, (_, base)) in cases.iter().enumerate() {
                    let before = script_calls(&mut store).await;
                    let measured = run(&client, base, clients, secs).await;
                    let calls = script_calls(&mut store).await - before;
                    results[i].push((measured, calls));
                }
            }
            println!("\n{clients} closed-loop client(s), medians of {rounds} rounds of {secs} s:");
            println!(
                "{:<24} {:>10} {:>9} {:>9} {:>13} {:>13} {:>14}",
                "", "req/s", "p50 ms", "p99 ms", "p50 added", "p99 added", "store calls/req"
            );
            let local = (
                median(results[1].iter().map(|(m, _)| m.p50_ms).collect()),
                median(results[1].iter().map(|(m, _)| m.p99_ms).collect()),
            );
            for (i, (label, _)) in cases.iter().enumerate() {
                let m = &results[i];
                let rate = median(m.iter().map(|(x, _)| x.per_sec).collect());
                let p50 = median(m.iter().map(|(x, _)| x.p50_ms).collect());
                let p99 = median(m.iter().map(|(x, _)| x.p99_ms).collect());
                let calls = median(
                    m.iter()
                        .map(|(x, calls)| *calls as f64 / x.requests.max(1) as f64)
                        .collect(),
                );
                let added = |v: f64, base: f64| {
                    if i >= 2 {
                        format!("{:+.3}", v - base)
                    } else {
                        "-".to_string()
                    }
                };
                let calls = if i >= 2 {
                    format!("{calls:.3}")
                } else {
                    "-".to_string()
                };
                println!(
                    "{label:<24} {rate:>10.0} {p50:>9.3} {p99:>9.3} {:>13} {:>13} {calls:>14}",
                    added(p50, local.0),
                    added(p99, local.1)
                );
            }
        }
    });
    drop(gateways);
    let _ = std::fs::remove_dir_all(&root);
}
