//! Batch jobs and live traffic on the same upstream. Run with `cargo bench --bench batches`
//! (`LINES=N` for the big batch, 10,000 by default; `ROUNDS=N`, 3; `SECS=N` per live
//! run, 8; `SWITCHYARD_BIN=path` runs another build of the gateway on the same mock).
//!
//! The mock answers every request after 20 ms; the gateway has 16 seats to it. Printed:
//! lines/s of a batch alone; then, for live load that fills every seat (16 clients) and
//! load that leaves half of them idle (8 clients), live requests/s and p50/p99 without a
//! batch and with a big batch running, and the batch's lines/s during the live load and
//! right after it. Each figure is the median of the rounds, which interleave the runs
//! with and without the batch so a noisy machine shifts both alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use support::{env_or, free_port, mock, serve, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const SEATS: u32 = 16;

struct Bench {
    client: reqwest::Client,
    base: String,
}

/// What a live run measured.
struct Live {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

impl Bench {
    /// `clients` closed-loop clients of tenant "live" for `secs`.
    async fn live(&self, clients: u64, secs: u64) -> Live {
        let until = Instant::now() + Duration::from_secs(secs);
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;
        let url = Arc::new(format!("{}/v1/chat/completions", self.base));
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, url) = (self.client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                    let mut failed = 0;
                    while Instant::now() < until {
                        let asked = Instant::now();
                        let reply = client
                            .post(url.as_str())
                            .bearer_auth("sy-live")
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let ok = match reply {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if ok {
                            latencies
                                .record(asked.elapsed().as_micros() as u64)
                                .unwrap();
                        } else {
                            failed += 1;
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut failed = 0;
        for task in tasks {
            let (latencies, f) = task.await.unwrap();
            all.add(latencies).unwrap();
            failed += f;
        }
        Live {
            per_sec: all.len() as f64 / secs as f64,
            p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
            failed,
        }
    }

    /// Uploads a batch file of `lines` chat requests for tenant "jobs" and starts it.
    async fn start_batch(&self, lines: u64) -> String {
        let mut jsonl = String::new();
        for i in 0..lines {
            jsonl.push_str(&format!(
                "{{\"custom_id\":\"l{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"line {i}\"}}]}}}}\n"
            ));
        }
        let boundary = "switchyard-bench-boundary";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"lines.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{jsonl}\r\n--{boundary}--\r\n"
        );
        let file: Value = self
            .client
            .post(format!("{}/v1/files", self.base))
            .bearer_auth("sy-jobs")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let file_id = file["id"]
            .as_str()
            .expect("the file was refused")
            .to_string();
        let batch: Value = self
            .client
            .post(format!("{}/v1/batches", self.base))
            .bearer_auth("sy-jobs")
            .json(&serde_json::json!({
                "input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        batch["id"]
            .as_str()
            .expect("the batch was refused")
            .to_string()
    }

    /// A batch's status, lines done (completed + failed) and lines failed.
    async fn batch(&self, id: &str) -> (String, u64, u64) {
        let batch: Value = self
            .client
            .get(format!("{}/v1/batches/{id}", self.base))
            .bearer_auth("sy-jobs")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = |name: &str| batch["request_counts"][name].as_u64().unwrap_or(0);
        let status = batch["status"].as_str().unwrap_or("").to_string();
        (
            status,
            count("completed") + count("failed"),
            count("failed"),
        )
    }

    async fn cancel(&self, id: &str) {
        self.client
            .post(format!("{}/v1/batches/{id}/cancel", self.base))
            .bearer_auth("sy-jobs")
            .send()
            .await
            .unwrap();
        while !matches!(self.batch(id).await.0.as_str(), "cancelled" | "completed") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Lines/s of the batch over `secs` with nothing else running.
    async fn lines_per_sec(&self, id: &str, secs: u64) -> f64 {
        let (_, before, _) = self.batch(id).await;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (_, after, _) = self.batch(id).await;
        (after - before) as f64 / secs as f64
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let (lines, rounds, secs) = (
        env_or("LINES", 10_000),
        env_or("ROUNDS", 3),
        env_or("SECS", 8),
    );
    switchyard::tls::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data =
        std::env::temp_dir().join(format!("switchyard-batches-bench-{}", std::process::id()));
    let (mock_port, gw_port) = (free_port(), free_port());
    let _mock = mock(
        BIN,
        mock_port,
        &[
            "--ttft",
            "20ms",
            "--tokens-per-sec",
            "0",
            "--answer-tokens",
            "16",
        ],
    );
    let key = switchyard::auth::hash_key;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{gw_port}\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
         [health]\ninterval = \"1h\"\n[tiers.t]\nmax_queue = 100000\n\
         [[tenants]]\nname = \"live\"\ntier = \"t\"\nkeys = [\"{}\"]\n\
         [[tenants]]\nname = \"jobs\"\ntier = \"t\"\nkeys = [\"{}\"]\n\
         [[regions]]\nname = \"local\"\n  [[regions.instances]]\n  name = \"mock\"\n  url = \"http://127.0.0.1:{mock_port}/v1\"\n  max_concurrency = {SEATS}\n\
         [[models]]\nalias = \"gpt-4o-mini\"\n",
        data.display(),
        key("sy-live"),
        key("sy-jobs"),
    );
    let gateway_bin = std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| BIN.to_string());
    let _gateway = serve(&gateway_bin, &data, &config, gw_port);
    wait_for(mock_port);
    runtime.block_on(async move {
        let bench = Bench {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://127.0.0.1:{gw_port}"),
        };
        // A batch alone, to its end.
        let alone = 2_000.min(lines);
        let started = Instant::now();
        let id = bench.start_batch(alone).await;
        let deadline = started + Duration::from_secs(600);
        while bench.batch(&id).await.0 != "completed" {
            assert!(Instant::now() < deadline, "the batch did not complete in 10 minutes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed();
        let (_, done, failed) = bench.batch(&id).await;
        println!(
            "a batch of {alone} lines alone: {:.0} lines/s ({SEATS} seats, 20 ms answers; {done} done, {failed} failed)",
            alone as f64 / elapsed.as_secs_f64()
        );
        for clients in [16, 8] {
            let mut without = (vec![], vec![], vec![]);
            let mut with = (vec![], vec![], vec![]);
            let (mut during, mut after) = (vec![], vec![]);
            let mut failed = 0;
            for _ in 0..rounds {
                let run = bench.live(clients, secs).await;
                failed += run.failed;
                without.0.push(run.per_sec);
                without.1.push(run.p50_ms);
                without.2.push(run.p99_ms);
                let id = bench.start_batch(lines).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (_, before, _) = bench.batch(&id).await;
                let run = bench.live(clients, secs).await;
                let (_, done, _) = bench.batch(&id).await;
                failed += run.failed;
                with.0.push(run.per_sec);
                with.1.push(run.p50_ms);
                with.2.push(run.p99_ms);
                during.push((done - before) as f64 / secs as f64);
                // Live load gone: the batch takes the seats back.
                tokio::time::sleep(Duration::from_secs(2)).await;
                after.push(bench.lines_per_sec(&id, 3).await);
                bench.cancel(&id).await;
            }
            let ratio = |with: f64, without: f64| with / without;
            let (r0, r1, r2) = (
                median(&mut without.0),
                median(&mut without.1),
                median(&mut without.2),
            );
            let (w0, w1, w2) = (median(&mut with.0), median(&mut with.1), median(&mut with.2));
            println!(
                "live c={clients}: without a batch {r0:.0} req/s, p50 {r1:.1} ms, p99 {r2:.1} ms; \
                 with a {lines}-line batch {w0:.0} req/s ({:.2}x), p50 {w1:.1} ms, p99 {w2:.1} ms ({:.2}x); \
                 batch {:.0} lines/s during, {:.0} lines/s after; {failed} live requests failed",
                ratio(w0, r0),
                ratio(w2, r2),
                median(&mut during),
                median(&mut after),
            );
        }
    });
    let _ = std::fs::remove_dir_all(&data);
}
