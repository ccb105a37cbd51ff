//! Batch jobs run by the gateway: every line through the one pipeline, results in
//! OpenAI's line format, cancel, and a tenant's batches its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const BOUNDARY: &str = "switchyard-test-boundary";

async fn upload(gw: &TestGateway, key: &str, lines: &[Value]) -> String {
    let contents: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let body = format!(
        "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n{contents}\r\n--{BOUNDARY}--\r\n"
    );
    let response = gw
        .client
        .post(gw.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn chat_line(i: usize) -> Value {
    json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("question {i}")}]}})
}

async fn create(gw: &TestGateway, key: &str, file: &str, endpoint: &str) -> reqwest::Response {
    let body = json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"});
    gw.post("/v1/batches", key, &body).await
}

/// A batch's id, created over `file` for chat completions.
async fn started(gw: &TestGateway, file: &str) -> String {
    let batch: Value = create(gw, KEY_A, file, "/v1/chat/completions")
        .await
        .json()
        .await
        .unwrap();
    batch["id"].as_str().unwrap().to_string()
}

/// The text of one of the tenant's files.
async fn content(gw: &TestGateway, file: &Value) -> String {
    let path = format!("/v1/files/{}/content", file.as_str().unwrap());
    gw.get(KEY_A, &path).await.text().await.unwrap()
}

/// Polls the batch until it has ended (at most a minute).
async fn ended(gw: &TestGateway, id: &str) -> Value {
    reaches(gw, id, &["completed", "failed", "expired", "cancelled"]).await
}

/// Polls the batch until its status is one of `statuses` (at most a minute).
async fn reaches(gw: &TestGateway, id: &str, statuses: &[&str]) -> Value {
    for _ in 0..1200 {
        let batch: Value = gw
            .get(KEY_A, &format!("/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if statuses.contains(&batch["status"].as_str().unwrap()) {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("batch {id} did not reach {statuses:?}");
}

#[tokio::test]
async fn a_batch_runs_every_line_through_the_pipeline_once() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let lines: Vec<Value> = (0..30).map(chat_line).collect();
    let file = upload(&gw, KEY_A, &lines).await;
    let response = gw
        .post(
            "/v1/batches",
            KEY_A,
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"job": "nightly"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["metadata"], json!({"job": "nightly"}));
    let id = batch["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.get(KEY_B, &format!("/v1/batches/{id}")).await.status(),
        404
    );

    let done = ended(&gw, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 30, "completed": 30, "failed": 0})
    );
    assert!(done["error_file_id"].is_null());
    let output = content(&gw, &done["output_file_id"]).await;
    let mut seen: Vec<String> = output
        .lines()
        .map(|line| {
            let result: Value = serde_json::from_str(line).unwrap();
            assert_eq!(result["response"]["status_code"], 200, "{result}");
            assert!(result["id"].as_str().unwrap().starts_with("batch_req_"));
            assert_eq!(result["response"]["body"]["object"], "chat.completion");
            result["custom_id"].as_str().unwrap().to_string()
        })
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("line-{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "every line once");
    assert_eq!(mock.stats().chat_requests, 30);
    // Charged to the tenant like live traffic, and listed.
    assert!(
        gw.tenant("tenant-a").await["day"]["tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let listed: Value = gw.get(KEY_A, "/v1/batches").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], json!(id));
}

#[tokio::test]
async fn failed_lines_go_to_the_error_file_and_a_cancelled_batch_keeps_what_it_did() {
    let mock = quick_mock()
        .ttft(Duration::from_millis(200))
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    // A request the gateway refuses (no messages) is the client's mistake: recorded in
    // the error file, not retried.
    let mut lines: Vec<Value> = (0..3).map(chat_line).collect();
    lines[1]["body"]["messages"] = json!([]);
    let file = upload(&gw, KEY_A, &lines).await;
    let done = ended(&gw, &started(&gw, &file).await).await;
    assert_eq!(done["status"], "completed", "{done}");
    let counts = &done["request_counts"];
    assert_eq!(
        (counts["completed"].as_u64(), counts["failed"].as_u64()),
        (Some(2), Some(1)),
        "{done}"
    );
    let errors = content(&gw, &done["error_file_id"]).await;
    let failed: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(failed["custom_id"], "line-1");
    assert_eq!(failed["response"]["status_code"], 400);

    // 200 slow lines, cancelled at once: it ends cancelled, with what finished.
    let lines: Vec<Value> = (0..200).map(chat_line).collect();
    let file = upload(&gw, KEY_A, &lines).await;
    let id = &started(&gw, &file).await;
    let cancelling: Value = gw
        .client
        .post(gw.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelling["status"], "cancelling");
    let done = ended(&gw, id).await;
    assert_eq!(done["status"], "cancelled");
    let completed = done["request_counts"]["completed"].as_u64().unwrap();
    assert!(completed < 200, "{done}");

    // Validation: the endpoint must be served and match the lines.
    let response = gw
        .post(
            "/v1/batches",
            KEY_A,
            &json!({"input_file_id": file, "endpoint": "/v1/images", "completion_window": "24h"}),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await["param"], "endpoint");
    let response = create(&gw, KEY_B, &file, "/v1/chat/completions").await;
    assert_eq!(response.status(), 400, "another tenant's file");
    let batch: Value = create(&gw, KEY_A, &file, "/v1/embeddings")
        .await
        .json()
        .await
        .unwrap();
    let done = ended(&gw, batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["errors"]["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{done}"
    );
}

#[tokio::test]
async fn a_batch_stopped_with_the_daemon_resumes_after_the_restart_and_runs_each_line_once() {
    let mock = quick_mock()
        .ttft(Duration::from_millis(50))
        .spawn_local()
        .await
        .unwrap();
    let config = config_for(&[("us-east", mock.url())], "");
    let gw = TestGateway::from_toml(&config).await;
    let lines: Vec<Value> = (0..120).map(chat_line).collect();
    let file = upload(&gw, KEY_A, &lines).await;
    let id = started(&gw, &file).await;
    mock.wait_for(Duration::from_secs(30), |s| s.chat_requests >= 20)
        .await;
    let data = gw.stop().await;
    let before = mock.stats().chat_requests;
    assert!(before < 120, "stopped mid-way ({before} lines ran)");

    let gw = TestGateway::from_toml_in(&config, data).await;
    let done = ended(&gw, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 120, "completed": 120, "failed": 0})
    );
    let output = content(&gw, &done["output_file_id"]).await;
    let ids: std::collections::HashSet<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        (output.lines().count(), ids.len()),
        (120, 120),
        "each custom_id once"
    );
    assert_eq!(
        mock.stats().chat_requests,
        120,
        "no line ran twice upstream"
    );
}

/// A 2,000-line batch, the daemon killed with SIGKILL mid-way and started again: the
/// batch completes with every `custom_id` exactly once in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_batch_completes_with_every_line_once() {
    let mock = quick_mock()
        .ttft(Duration::from_millis(2))
        .spawn_local()
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let toml = for_process(
        &config_for(&[("us-east", mock.url())], ""),
        (port, admin_port),
        data.path(),
    );
    let config = data.path().join("config.toml");
    std::fs::write(&config, &toml).unwrap();
    switchyard::tls::install_crypto();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let serve = tokio::task::block_in_place(|| Serve::start(&config, &[port, admin_port]));

    let contents: String = (0..2000).map(|i| format!("{}\n", chat_line(i))).collect();
    let body = format!(
        "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n{contents}\r\n--{BOUNDARY}--\r\n"
    );
    let file: Value = client
        .post(format!("{base}/v1/files"))
        .bearer_auth(KEY_A)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = client
        .post(format!("{base}/v1/batches"))
        .bearer_auth(KEY_A)
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = batch["id"].as_str().unwrap().to_string();
    mock.wait_for(Duration::from_secs(60), |s| s.chat_requests >= 400)
        .await;
    drop(serve); // SIGKILL
    let ran = mock.stats().chat_requests;
    assert!(ran < 2000, "killed mid-way ({ran} lines ran)");

    let _serve = tokio::task::block_in_place(|| Serve::start(&config, &[port, admin_port]));
    let mut done = Value::Null;
    for _ in 0..1200 {
        done = client
            .get(format!("{base}/v1/batches/{id}"))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 2000, "{done}");
    let output = client
        .get(format!(
            "{base}/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: std::collections::HashSet<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        (output.lines().count(), ids.len()),
        (2000, 2000),
        "every custom_id exactly once"
    );
    // Lines in flight at the kill ran again; nothing else did.
    let upstream = mock.stats().chat_requests;
    assert!(
        (2000..2000 + 64).contains(&upstream),
        "{upstream} upstream calls"
    );
}

/// What operators see of batches: `ctl batches` (and cancel), `/metrics`, the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_cancel_count_and_audit_batches() {
    let mock = quick_mock()
        .ttft(Duration::from_millis(100))
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let small = upload(&gw, KEY_A, &(0..5).map(chat_line).collect::<Vec<_>>()).await;
    let done = ended(&gw, &started(&gw, &small).await).await;
    assert_eq!(done["status"], "completed");
    let big = upload(&gw, KEY_A, &(0..500).map(chat_line).collect::<Vec<_>>()).await;
    let running = started(&gw, &big).await;
    // Its file is read and checked first ("validating"), on a loaded machine for longer
    // than `ctl` takes to start; 500 lines of 100 ms, 32 at a time, then run for about
    // a second and a half.
    reaches(&gw, &running, &["in_progress"]).await;

    let url = gw.daemon.admin_url().unwrap();
    let ctl = |args: &[&str]| ctl(&url, args);
    let out = tokio::task::block_in_place(|| ctl(&["batches"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("BATCH"), "{table}");
    assert!(
        table.contains(&running) && table.contains("in_progress"),
        "{table}"
    );
    assert!(table.contains("5/5"), "{table}");
    let out = tokio::task::block_in_place(|| ctl(&["batches", "cancel", &running]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelling"));
    assert_eq!(ended(&gw, &running).await["status"], "cancelled");

    let metrics = gw
        .client
        .get(format!("{url}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_batches{status=\"completed\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_batches{status=\"cancelled\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_batch_lines_total{outcome=\"completed\"}"));

    // The audit log: created by the tenant, cancelled by the operator, ended by the gateway.
    let mut actions = Vec::new();
    for _ in 0..250 {
        let records: Value = gw
            .client
            .get(format!("{url}/admin/audit?kind=operator"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        actions = records["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["target"] == json!(running))
            .map(|r| {
                format!(
                    "{} {}",
                    r["actor"].as_str().unwrap(),
                    r["action"].as_str().unwrap()
                )
            })
            .collect();
        if actions.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        actions,
        [
            "tenant tenant-a batch.create",
            "alice batch.cancel",
            "gateway batch.end"
        ]
    );
}

/// A chat line asking for at most `max_tokens`.
fn short_line(i: usize, max_tokens: u64) -> Value {
    let mut line = chat_line(i);
    line["body"]["max_tokens"] = json!(max_tokens);
    line
}

/// The batch as `/admin/batches` shows it.
async fn admin_view(gw: &TestGateway, id: &str) -> Value {
    let all: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/batches", None)
        .await;
    all["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == json!(id))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_batch_limits_hold_lines_back_and_an_operator_lets_them_go() {
    let mock = quick_mock()
        .ttft(ms(50))
        .answer_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let toml = config_for(&[("us-east", mock.url())], "").replace(
        "[tiers.pro]\n",
        "[tiers.pro]\nbatch_concurrency = 2\nbatch_daily_tokens = 60\n",
    );
    let gw = TestGateway::from_toml(&toml).await;
    let lines: Vec<Value> = (0..12).map(|i| short_line(i, 3)).collect();
    let id = started(&gw, &upload(&gw, KEY_A, &lines).await).await;

    // The day's batch tokens run out: the lines left wait, none fails.
    let mut view = Value::Null;
    for _ in 0..500 {
        view = admin_view(&gw, &id).await;
        if view["held"]
            .as_str()
            .is_some_and(|h| h.contains("batch_daily_tokens"))
        {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(
        view["held"]
            .as_str()
            .is_some_and(|h| h.contains("batch_daily_tokens (60)")),
        "{view}"
    );
    // Once the last line let through has settled, the batch's count and the tenant's
    // agree, within the allowance.
    let mut tenant = Value::Null;
    for _ in 0..250 {
        (view, tenant) = (admin_view(&gw, &id).await, gw.tenant("tenant-a").await);
        if tenant["batch_in_flight"] == 0 && view["tokens"] == tenant["batch_day"]["tokens"] {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    let batch_tokens = tenant["batch_day"]["tokens"].as_u64().unwrap();
    assert!(batch_tokens > 0 && batch_tokens <= 60, "{tenant}");
    assert_eq!(view["tokens"].as_u64().unwrap(), batch_tokens, "{view}");
    let completed = view["completed"].as_u64().unwrap();
    assert!((1..12).contains(&completed), "{view}");
    assert_eq!(view["failed"], 0, "{view}");
    assert_eq!(view["status"], "in_progress");
    // Live requests of the same tenant are not batch lines.
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);

    // An operator raises the allowance: the waiting lines go at once.
    let raised = gw
        .admin(
            reqwest::Method::POST,
            "/admin/tenants/tenant-a/limits",
            Some(json!({"batch_daily_tokens": 1_000_000})),
        )
        .await;
    assert_eq!(raised.status(), 200);
    let done = ended(&gw, &id).await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 12, "completed": 12, "failed": 0}),
        "{done}"
    );
    assert!(admin_view(&gw, &id).await["held"].is_null());
    let most = mock.stats().most_answering;
    assert!(
        (1..=2).contains(&most),
        "{most} lines ran at once with batch_concurrency 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_window_expires_with_what_it_finished_and_the_rest_marked() {
    let mock = quick_mock().ttft(ms(300)).spawn_local().await.unwrap();
    let toml = config_for(
        &[("us-east", mock.url())],
        "[files]\nbatch_window = \"2s\"\n",
    )
    .replace("[tiers.pro]\n", "[tiers.pro]\nbatch_concurrency = 1\n");
    let gw = TestGateway::from_toml(&toml).await;
    let file = upload(&gw, KEY_A, &(0..20).map(chat_line).collect::<Vec<_>>()).await;
    let too_long = gw
        .post(
            "/v1/batches",
            KEY_A,
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
        )
        .await;
    assert_eq!(too_long.status(), 400);
    let error = error_of(too_long).await;
    assert_eq!(error["param"], "completion_window");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("batch_window, 2s"),
        "{error}"
    );

    let id = started(&gw, &file).await;
    let done = ended(&gw, &id).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert_eq!(
        done["expires_at"].as_u64().unwrap() - done["created_at"].as_u64().unwrap(),
        2
    );
    let counts = &done["request_counts"];
    let completed = counts["completed"].as_u64().unwrap();
    assert!((1..20).contains(&completed), "{done}");
    assert_eq!(counts["failed"].as_u64().unwrap(), 20 - completed, "{done}");
    // Every line once: run in the output, or `batch_expired` in the errors.
    let output = content(&gw, &done["output_file_id"]).await;
    let errors = content(&gw, &done["error_file_id"]).await;
    let mut seen: Vec<String> = Vec::new();
    for line in output.lines() {
        let result: Value = serde_json::from_str(line).unwrap();
        assert_eq!(result["response"]["status_code"], 200, "{result}");
        seen.push(result["custom_id"].as_str().unwrap().to_string());
    }
    for line in errors.lines() {
        let result: Value = serde_json::from_str(line).unwrap();
        assert_eq!(result["error"]["code"], "batch_expired", "{result}");
        assert!(result["response"].is_null());
        assert!(result["id"].as_str().unwrap().starts_with("batch_req_"));
        seen.push(result["custom_id"].as_str().unwrap().to_string());
    }
    seen.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("line-{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_batches_and_cancels_one_through_the_admin_api() {
    let mock = quick_mock().ttft(ms(100)).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let file = upload(&gw, KEY_A, &(0..300).map(chat_line).collect::<Vec<_>>()).await;
    let id = started(&gw, &file).await;
    let snapshot: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/snapshot", None)
        .await;
    let shown = snapshot["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == json!(id))
        .cloned()
        .unwrap_or_default();
    assert_eq!(shown["tenant"], "tenant-a", "{snapshot}");
    assert_eq!(shown["total"], 300);
    // What the console sends once the operator confirmed.
    let acted = gw
        .client
        .post(format!("{}/admin/actions", gw.daemon.admin_url().unwrap()))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-switchyard-operator", "bob")
        .json(&json!({"action": "cancel_batch", "id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(acted.status(), 200);
    let said: Value = acted.json().await.unwrap();
    assert!(
        said["ok"]
            .as_str()
            .unwrap()
            .starts_with(&format!("batch {id} of tenant-a stops")),
        "{said}"
    );
    assert_eq!(ended(&gw, &id).await["status"], "cancelled");
    let unknown = gw
        .admin(
            reqwest::Method::POST,
            "/admin/actions",
            Some(json!({"action": "cancel_batch", "id": "batch_nope"})),
        )
        .await;
    assert_eq!(unknown.status(), 400);
    let records: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/audit?kind=operator", None)
        .await;
    assert!(
        records["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "batch.cancel" && r["actor"] == "bob"),
        "{records}"
    );
}
