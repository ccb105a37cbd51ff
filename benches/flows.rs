//! What a flow step adds to the model call it makes. Run with `cargo bench --bench flows`
//! (`ROUNDS=N`, 3; `SECS=N` per run, 5; `CLIENTS=N` closed-loop clients, 1 and 8).
//!
//! The mock answers at once (16 tokens). Side by side, interleaved, medians of the
//! rounds: a chat request straight to the mock, the same through the gateway, a
//! one-step flow (`llm`) making that request, and a three-step flow (`llm`,
//! `template`, `llm`) against two requests through the gateway one after the other.
//! Printed: requests (or runs) per second and p50/p99 latency, and the difference per
//! step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{env_or, free_port, median, mock, serve, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

/// One thing a client does, to the end, before doing it again.
#[derive(Clone, Copy)]
enum Work {
    Chat,
    TwoChats,
    Flow(&'static str),
}

struct Measured {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(
    client: &reqwest::Client,
    base: &str,
    work: Work,
    clients: u64,
    secs: u64,
) -> Measured {
    let until = Instant::now() + Duration::from_secs(secs);
    let base = Arc::new(base.to_string());
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let mut latencies = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                while Instant::now() < until {
                    let started = Instant::now();
                    let chat = || {
                        client
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth("sy-bench")
                            .header("content-type", "application/json")
                            .body(CHAT)
                            .send()
                    };
                    let ok = match work {
                        Work::Chat => chat().await.is_ok_and(|r| r.status().is_success()),
                        Work::TwoChats => {
                            chat().await.is_ok_and(|r| r.status().is_success())
                                && chat().await.is_ok_and(|r| r.status().is_success())
                        }
                        Work::Flow(name) => {
                            let reply = client
                                .post(format!("{base}/v1/flows/{name}/runs"))
                                .bearer_auth("sy-bench")
                                .header("content-type", "application/json")
                                .body(r#"{"input":{"question":"Say hello."}}"#)
                                .send()
                                .await;
                            match reply {
                                Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"completed\"")),
                                Err(_) => false,
                            }
                        }
                    };
                    assert!(ok, "a request failed");
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
    }
}

fn main() {
    switchyard::tls::install_crypto();
    let rounds = env_or("ROUNDS", 3);
    let secs = env_or("SECS", 5);
    let data = std::env::temp_dir().join(format!("switchyard-flows-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let (mock_port, gw_port) = (free_port(), free_port());
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
    std::fs::write(
        data.join("one.toml"),
        "inputs = [\"question\"]\n[[steps]]\nname = \"answer\"\nkind = \"llm\"\nmodel = \"gpt-4o-mini\"\nprompt = \"{{ question }}\"\nmax_tokens = 16\n",
    )
    .unwrap();
    std::fs::write(
        data.join("three.toml"),
        "inputs = [\"question\"]\n[[steps]]\nname = \"first\"\nkind = \"llm\"\nmodel = \"gpt-4o-mini\"\nprompt = \"{{ question }}\"\nmax_tokens = 16\n\
         [[steps]]\nname = \"middle\"\nkind = \"template\"\ntemplate = \"{{ first }}\"\n\
         [[steps]]\nname = \"second\"\nkind = \"llm\"\nmodel = \"gpt-4o-mini\"\nprompt = \"Say hello.\"\nmax_tokens = 16\n",
    )
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{gw_port}\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\
         [health]\ninterval = \"1h\"\n[tiers.t]\nmax_queue = 100000\n\
         [[tenants]]\nname = \"bench\"\ntier = \"t\"\nkeys = [\"{}\"]\n\
         [[regions]]\nname = \"local\"\n  [[regions.instances]]\n  name = \"mock\"\n  url = \"http://127.0.0.1:{mock_port}/v1\"\n  max_concurrency = 64\n\
         [[models]]\nalias = \"gpt-4o-mini\"\n\
         [flows]\nfiles = [\"{data}/one.toml\", \"{data}/three.toml\"]\n",
        switchyard::auth::hash_key("sy-bench"),
        data = data.display(),
    );
    let gateway_bin = std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| BIN.to_string());
    let _gateway = serve(&gateway_bin, &data, &config, gw_port);
    wait_for(mock_port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let (mock, gateway) = (
            format!("http://127.0.0.1:{mock_port}"),
            format!("http://127.0.0.1:{gw_port}"),
        );
        let clients: Vec<u64> = match std::env::var("CLIENTS") {
            Ok(c) => vec![c.parse().unwrap()],
            Err(_) => vec![1, 8],
        };
        let cases: [(&str, &str, Work); 5] = [
            ("chat, direct to the mock", mock.as_str(), Work::Chat),
            ("chat through the gateway", gateway.as_str(), Work::Chat),
            ("flow: one llm step", gateway.as_str(), Work::Flow("one")),
            ("two chats through the gateway", gateway.as_str(), Work::TwoChats),
            ("flow: llm, template, llm", gateway.as_str(), Work::Flow("three")),
        ];
        for c in clients {
            // Warm up every path once.
            for (_, base, work) in &cases {
                run(&client, base, *work, c, 1).await;
            }
            let mut results: Vec<Vec<Measured>> = (0..cases.len()).map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (i, (_, base, work)) in cases.iter().enumerate() {
                    results[i].push(run(&client, base, *work, c, secs).await);
                }
            }
            println!("\n{c} closed-loop client(s), medians of {rounds} rounds of {secs} s:");
            println!("{:<32} {:>10} {:>10} {:>10}", "", "per sec", "p50 ms", "p99 ms");
            let mut p50 = Vec::new();
            for (i, (label, _, _)) in cases.iter().enumerate() {
                let m = &results[i];
                let (rate, p50_ms, p99_ms) = (
                    median(m.iter().map(|x| x.per_sec).collect()),
                    median(m.iter().map(|x| x.p50_ms).collect()),
                    median(m.iter().map(|x| x.p99_ms).collect()),
                );
                p50.push(p50_ms);
                println!("{label:<32} {rate:>10.0} {p50_ms:>10.3} {p99_ms:>10.3}");
            }
            println!(
                "a one-step flow adds {:+.3} ms (p50) to the request it makes; the three-step flow {:+.3} ms to its two requests",
                p50[2] - p50[1],
                p50[4] - p50[3]
            );
        }
    });
    let _ = std::fs::remove_dir_all(&data);
}
