//! The router's pick cost with 100 instances, and the failover time when a region dies
//! under load. Run with `cargo bench --bench routing`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::config::Config;
use switchyard::daemon::Daemon;
use switchyard::domain::{Deployment, Dialect, Instance, Model, ModelKind, Region, TokenizerKind};
use switchyard::mock::{MockUpstream, Outage};
use switchyard::router::Router;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        pick_cost();
        failover().await;
    });
}

fn pick_cost() {
    let regions: Vec<Region> = (0..5)
        .map(|r| Region {
            name: format!("region-{r}"),
            order: r,
            instances: (0..20)
                .map(|i| Instance {
                    name: format!("region-{r}-{i}"),
                    url: format!("http://10.0.{r}.{i}/v1"),
                    dialect: Dialect::OpenAi,
                    api_version: String::new(),
                    api_key_env: None,
                    max_concurrency: 64,
                    weight: 1 + (i % 3),
                    http2: false,
                    native_responses: false,
                })
                .collect(),
        })
        .collect();
    let config = Config::from_toml(
        "[tiers.t]\n[[regions]]\nname = \"x\"\n  [[regions.instances]]\n  name = \"x\"\n  url = \"http://x/v1\"\n[[models]]\nalias = \"m\"\n",
    )
    .unwrap();
    let router = Router::new(&regions, config.routing.clone(), Default::default());
    let model = Model {
        alias: "m".into(),
        kind: ModelKind::Chat,
        deployments: regions
            .iter()
            .map(|r| Deployment {
                region: r.name.clone(),
                upstream_model: "m".into(),
            })
            .collect(),
        tokenizer: TokenizerKind::Heuristic,
        price: None,
        limit_field: "max_tokens",
    };
    let rounds = 200_000;
    for (label, session) in [("no session", false), ("sticky session (10k keys)", true)] {
        let keys: Vec<String> = (0..10_000).map(|i| format!("session-{i}")).collect();
        let started = Instant::now();
        for n in 0..rounds {
            let key = session.then(|| keys[n % keys.len()].as_str());
            let route = router.route(&model, None, key).unwrap();
            std::hint::black_box(&route);
        }
        let elapsed = started.elapsed();
        println!(
            "pick, 100 instances in 5 regions, {label}: {:.2} µs per route ({:.0} routes/s; the full candidate list included)",
            elapsed.as_secs_f64() * 1e6 / rounds as f64,
            rounds as f64 / elapsed.as_secs_f64()
        );
    }
}

async fn failover() {
    let quick = || {
        MockUpstream::builder()
            .ttft(Duration::from_millis(2))
            .tokens_per_sec(0.0)
            .answer_tokens(16)
    };
    let us = [
        quick().spawn_local().await.unwrap(),
        quick().spawn_local().await.unwrap(),
    ];
    let eu = quick().spawn_local().await.unwrap();
    let key = "sy-bench";
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[tiers.t]\n[[tenants]]\nname = \"bench\"\ntier = \"t\"\nkeys = [\"{}\"]\n\
         [[regions]]\nname = \"us-east\"\n  [[regions.instances]]\n  name = \"us-east-0\"\n  url = \"{}\"\n  [[regions.instances]]\n  name = \"us-east-1\"\n  url = \"{}\"\n\
         [[regions]]\nname = \"eu-west\"\norder = 1\n  [[regions.instances]]\n  name = \"eu-west-0\"\n  url = \"{}\"\n\
         [[models]]\nalias = \"gpt-4o-mini\"\n",
        switchyard::auth::hash_key(key),
        us[0].url(),
        us[1].url(),
        eu.url()
    );
    let mut config = Config::from_toml(&toml).unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-failover-{}", std::process::id()));
    config.server.data_dir = dir.clone();
    let daemon = Daemon::start_with_admin_token(config, None).await.unwrap();
    let url = format!("{}/v1/chat/completions", daemon.url());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;

    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let first_elsewhere: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, url, killed_at, first_elsewhere, failed, served, stop) = (
            client.clone(),
            url.clone(),
            killed_at.clone(),
            first_elsewhere.clone(),
            failed.clone(),
            served.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .post(&url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let Ok(reply) = reply else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let region = reply
                    .headers()
                    .get("x-switchyard-region")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let ok = reply.status().is_success() && reply.bytes().await.is_ok();
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                served.fetch_add(1, Ordering::Relaxed);
                if region == "eu-west" && killed_at.lock().unwrap().is_some() {
                    first_elsewhere
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = served.load(Ordering::Relaxed);
    *killed_at.lock().unwrap() = Some(Instant::now());
    for m in &us {
        m.start_outage(Outage::Drop);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let killed = killed_at.lock().unwrap().unwrap();
    let first = *first_elsewhere.lock().unwrap();
    println!(
        "failover, 16 clients, us-east (2 instances) killed after {before} requests: first success in eu-west {} after the kill; {} requests failed of {} served in 4 s",
        first
            .map(|f| format!(
                "{:.2} ms",
                f.saturating_duration_since(killed).as_secs_f64() * 1000.0
            ))
            .unwrap_or_else(|| "never".into()),
        failed.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed)
    );
    daemon.stop(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}
