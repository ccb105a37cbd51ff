//! `switchyard bench`: the same load sent straight to a mock upstream and then through the
//! gateway to that mock, side by side, so the gateway's own cost is what differs.
//!
//! By default everything runs in this process (a mock answering instantly, a gateway in
//! front of it, and the load generator), which measures the gateway's CPU cost on the
//! request path. `--mock-url` and `--gateway-url` measure separately started processes.
//! Streams are timed to the first content event as well as to the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::say::say;
use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::mock::MockUpstream;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Requests per target (after a warm-up of 5%).
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Stream the answers and time the first token as well.
    #[arg(long)]
    pub stream: bool,
    /// Send deterministic requests (temperature 0): after the warm-up the gateway
    /// answers them from its cache, so this measures a cache hit against the upstream.
    #[arg(long)]
    pub cached: bool,
    /// Run the in-process gateway with the audit log off, to measure what it costs.
    #[arg(long)]
    pub no_audit: bool,
    /// Tokens in each answer (in-process mock only).
    #[arg(long, default_value_t = 16)]
    pub answer_tokens: u32,
    /// Base URL (with /v1) of an already running mock; needs --gateway-url too.
    #[arg(long, requires = "gateway_url")]
    pub mock_url: Option<String>,
    /// Base URL (with /v1) of an already running gateway in front of that mock.
    #[arg(long, requires = "mock_url")]
    pub gateway_url: Option<String>,
    /// Tenant key for --gateway-url.
    #[arg(long, default_value = "sy-demo-acme")]
    pub key: String,
    /// Model alias to ask for.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
}

const BENCH_KEY: &str = "sy-bench";

/// Prompts the load cycles through, so requests are not all identical.
const PROMPTS: &str = include_str!("../assets/prompts.txt");

/// What one target did under load.
struct Report {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Whole-request latency, microseconds.
    total: Histogram<u64>,
    /// Time to the first content event of a stream, microseconds.
    first_token: Histogram<u64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.requests > 0 && args.concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    // Keep the in-process servers alive for the whole run.
    let mut _mock = None;
    let mut _gateway = None;
    let bench_dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    let (mock_url, gateway_url, key) = match (&args.mock_url, &args.gateway_url) {
        (Some(m), Some(g)) => (m.clone(), g.clone(), args.key.clone()),
        _ => {
            let mock = MockUpstream::builder()
                .ttft(Duration::ZERO)
                .tokens_per_sec(0.0)
                .answer_tokens(args.answer_tokens)
                .spawn_local()
                .await
                .context("cannot start the mock upstream")?;
            let mut config = Config::from_toml(&bench_config(&mock.url(), &args.model))?;
            config.audit.enabled = !args.no_audit;
            config.server.data_dir = bench_dir.clone();
            let daemon = Daemon::start(config).await?;
            let urls = (mock.url(), format!("{}/v1", daemon.url()));
            _mock = Some(mock);
            _gateway = Some(daemon);
            (urls.0, urls.1, BENCH_KEY.to_string())
        }
    };

    say!(
        "switchyard bench: {} requests at concurrency {}, {}, model {}",
        args.requests,
        args.concurrency,
        match (args.stream, args.cached) {
            (false, false) => "plain",
            (true, false) => "streaming",
            (false, true) => "plain, cacheable (the gateway answers hits)",
            (true, true) => "streaming, cacheable (the gateway replays hits)",
        },
        args.model
    );
    let direct = load(&args, &mock_url, "unused").await?;
    let gateway = load(&args, &gateway_url, &key).await?;
    print(&args, &direct, &gateway);
    if let Some(daemon) = _gateway.take() {
        daemon.stop(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&bench_dir);
    }
    Ok(())
}

fn bench_config(mock_url: &str, model: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tiers.bench]

[[tenants]]
name = "bench"
tier = "bench"
keys = ["{key}"]

[[regions]]
name = "local"
  [[regions.instances]]
  name = "local-mock"
  url = "{mock_url}"
  max_concurrency = 100000

[[models]]
alias = "{model}"
"#,
        key = crate::auth::hash_key(BENCH_KEY),
    )
}

async fn load(args: &BenchArgs, base: &str, key: &str) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    let url = format!("{base}/chat/completions");
    let bodies: Vec<String> = PROMPTS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|prompt| {
            let mut body = serde_json::json!({
                "model": args.model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": args.stream,
            });
            if args.cached {
                body["temperature"] = serde_json::json!(0);
            }
            body.to_string()
        })
        .collect();
    let shared = Arc::new(Target {
        client,
        url,
        bodies,
        key: key.to_string(),
        stream: args.stream,
    });

    // Warm up connections so the measurement does not include TCP handshakes.
    let warmup = (args.requests / 20).max(args.concurrency);
    run_load(shared.clone(), warmup, args.concurrency).await?;
    run_load(shared, args.requests, args.concurrency).await
}

/// Where the load goes and what it sends.
struct Target {
    client: reqwest::Client,
    url: String,
    bodies: Vec<String>,
    key: String,
    stream: bool,
}

type Shared = Arc<Target>;

async fn run_load(shared: Shared, requests: usize, concurrency: usize) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let shared = shared.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut report = Report::new()?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    match one(&shared, n).await {
                        Ok((total, first)) => {
                            report.ok += 1;
                            report.total.saturating_record(total.as_micros() as u64);
                            if let Some(first) = first {
                                report
                                    .first_token
                                    .saturating_record(first.as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            report.errors += 1;
                            report.first_error.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
                anyhow::Ok(report)
            })
        })
        .collect();
    let mut merged = Report::new()?;
    for worker in workers {
        let report = worker.await.context("a load worker panicked")??;
        merged.ok += report.ok;
        merged.errors += report.errors;
        if merged.first_error.is_none() {
            merged.first_error = report.first_error;
        }
        merged.total.add(&report.total)?;
        merged.first_token.add(&report.first_token)?;
    }
    merged.elapsed = started.elapsed();
    Ok(merged)
}

async fn one(target: &Target, n: usize) -> anyhow::Result<(Duration, Option<Duration>)> {
    let body = target.bodies[n % target.bodies.len()].clone();
    let started = Instant::now();
    let mut response = target
        .client
        .post(&target.url)
        .bearer_auth(&target.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("status {}", response.status());
    }
    if !target.stream {
        response.bytes().await?;
        return Ok((started.elapsed(), None));
    }
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if first.is_none() && chunk.windows(9).any(|w| w == b"\"content\"") {
            first = Some(started.elapsed());
        }
        seen.extend_from_slice(&chunk[chunk.len().saturating_sub(16)..]);
    }
    if !seen.windows(6).any(|w| w == b"[DONE]") {
        bail!("the stream ended without [DONE]");
    }
    Ok((started.elapsed(), first))
}

impl Report {
    fn new() -> anyhow::Result<Report> {
        Ok(Report {
            ok: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            total: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            first_token: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

fn ms(micros: u64) -> String {
    format!("{:.3}ms", micros as f64 / 1000.0)
}

fn print(args: &BenchArgs, direct: &Report, gateway: &Report) {
    let quantiles = [0.5, 0.9, 0.99, 0.999];
    say!(
        "{:<10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "target",
        "req/s",
        "errors",
        "p50",
        "p90",
        "p99",
        "p99.9"
    );
    for (name, r) in [("direct", direct), ("gateway", gateway)] {
        let q: Vec<String> = quantiles
            .iter()
            .map(|&q| ms(r.total.value_at_quantile(q)))
            .collect();
        say!(
            "{:<10} {:>10.1} {:>7} {:>10} {:>10} {:>10} {:>10}",
            name,
            r.rate(),
            r.errors,
            q[0],
            q[1],
            q[2],
            q[3]
        );
    }
    let added: Vec<String> = quantiles
        .iter()
        .map(|&q| {
            let d = gateway.total.value_at_quantile(q) as f64
                - direct.total.value_at_quantile(q) as f64;
            format!("{:+.3}ms", d / 1000.0)
        })
        .collect();
    say!(
        "{:<10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "added",
        format!("{:.2}x", gateway.rate() / direct.rate().max(f64::EPSILON)),
        "",
        added[0],
        added[1],
        added[2],
        added[3]
    );
    if args.stream {
        say!("time to first token:");
        for (name, r) in [("direct", direct), ("gateway", gateway)] {
            say!(
                "{:<10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}",
                name,
                "",
                "",
                ms(r.first_token.value_at_quantile(0.5)),
                ms(r.first_token.value_at_quantile(0.9)),
                ms(r.first_token.value_at_quantile(0.99)),
                ms(r.first_token.value_at_quantile(0.999))
            );
        }
    }
    for (name, r) in [("direct", direct), ("gateway", gateway)] {
        if let Some(e) = &r.first_error {
            say!("{name}: {} errors, the first: {e}", r.errors);
        }
    }
}
