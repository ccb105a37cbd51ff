//! `/metrics` as Prometheus reads it: real histograms (`_bucket`, `_sum`, `_count`) by
//! region, model and tier, answers by tenant, model and code, HELP on every family, and
//! `promtool check metrics` satisfied (`.ci/run` installs promtool from Debian's
//! `prometheus` package).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_histograms_and_counters_prometheus_can_aggregate() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let toml =
        config_for(&[("us-east", mock.url())], "").replace("[tiers.pro]", "[tiers.pro]\nrpm = 3");
    let gw = TestGateway::from_toml(&toml).await;
    for _ in 0..2 {
        assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    }
    let mut streamed = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    while streamed.chunk().await.unwrap().is_some() {}
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 429);

    let text = gw.metrics().await;
    let labels = "region=\"us-east\",model=\"gpt-4o-mini\",tier=\"pro\"";
    assert_eq!(
        sample(&text, &format!("switchyard_e2e_seconds_count{{{labels}}}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("switchyard_e2e_seconds_bucket{{{labels},le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("switchyard_ttft_seconds_count{{{labels}}}")),
        Some(1.0),
        "one stream"
    );
    assert!(sample(&text, &format!("switchyard_queue_seconds_sum{{{labels}}}")).is_some());
    assert_eq!(
        sample(
            &text,
            "switchyard_answers_total{tenant=\"tenant-a\",model=\"gpt-4o-mini\",code=\"\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_answers_total{tenant=\"tenant-a\",model=\"\",code=\"rate_limit_exceeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // Tokens per request as OpenTelemetry's GenAI conventions count them.
    let chat = "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o-mini\"";
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_client_token_usage_count{{{chat},gen_ai_token_type=\"output\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    // Durations under OpenTelemetry's GenAI server names.
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_server_request_duration_seconds_count{{{chat}}}")
        ),
        Some(3.0),
        "{text}"
    );
    // Every family has its HELP and TYPE.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
    }

    // The dashboard only asks for what the gateway exports.
    let dashboard = std::fs::read_to_string("assets/grafana/switchyard.json").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    for expr in &exprs {
        let mut asked = 0;
        // Metric names; labels never start so (`gen_ai_request_model` is a label).
        for prefix in ["switchyard_", "gen_ai_client_", "gen_ai_server_"] {
            for (at, _) in expr.match_indices(prefix) {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                asked += 1;
                let family = name.trim_end_matches("_bucket");
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "the dashboard asks for {family}, which /metrics does not export: {expr}"
                );
            }
        }
        assert!(asked > 0, "no metric found in {expr}");
    }

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = promtool.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // The scrape config too, with its token file where the check can find it.
            let dir = tempfile::tempdir().unwrap();
            let token = dir.path().join("token");
            std::fs::write(&token, "sy-test-admin-token").unwrap();
            let config = std::fs::read_to_string("assets/prometheus.yml")
                .unwrap()
                .replace("/etc/prometheus/switchyard-token", token.to_str().unwrap());
            let path = dir.path().join("prometheus.yml");
            std::fs::write(&path, config).unwrap();
            let out = Command::new("promtool")
                .args(["check", "config", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check config: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("promtool is needed in CI (.ci/run installs it): {e}")
        }
        Err(e) => eprintln!(
            "promtool not installed ({e}); `apt-get install prometheus` to check the format too"
        ),
    }
    gw.stop().await;
}

/// Open connections on each worker, as `/metrics` reports them.
async fn worker_connections(gw: &TestGateway) -> Vec<f64> {
    let text = gw.metrics().await;
    (0..)
        .map_while(|w| {
            sample(
                &text,
                &format!("switchyard_worker_connections{{worker=\"{w}\"}}"),
            )
        })
        .collect()
}

/// Waits (ten seconds at most) until the workers hold `expected` connections.
async fn until_workers_hold(gw: &TestGateway, expected: &[f64]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open = worker_connections(gw).await;
        if open == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers hold {open:?}, not {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_goes_to_the_worker_holding_fewest_and_metrics_say_so() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], "workers = 2").await;
    let addr = gw.daemon.addr();
    until_workers_hold(&gw, &[0.0, 0.0]).await;
    // Four clients, each taken before the next connects: dealt 0, 1, 0, 1.
    let mut open = Vec::new();
    for held in [[1.0, 0.0], [1.0, 1.0], [2.0, 1.0], [2.0, 2.0]] {
        open.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        until_workers_hold(&gw, &held).await;
    }
    // The two on worker 0 close (a client's idle keep-alive connections timing out).
    drop(open.remove(2));
    drop(open.remove(0));
    until_workers_hold(&gw, &[0.0, 2.0]).await;
    // In turn the next two would go to 0 and 1; counted, both go to 0.
    for held in [[1.0, 2.0], [2.0, 2.0]] {
        open.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        until_workers_hold(&gw, &held).await;
    }
    // Served where they were placed, as any other connection.
    let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(response.status(), 200);
    // The client's own keep-alive connection stays: it came at a tie, whose turn was 0.
    drop(open);
    until_workers_hold(&gw, &[1.0, 0.0]).await;
}
