//! Flows run by the gateway: steps in order, each model call through the one pipeline
//! as the tenant, checked whole at load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::MockHandle;

const QA: &str = r#"
description = "Summarizes a text, then answers a question about it."
inputs = ["text", "question"]

[[steps]]
name = "summary"
kind = "llm"
model = "gpt-4o-mini"
system = "You summarize."
prompt = "Summarize: {{ text }}"
max_tokens = 5

[[steps]]
name = "answer"
kind = "llm"
model = "gpt-4o-mini"
prompt = "Given {{ summary }}, answer: {{ question }}"
max_tokens = 5

[[steps]]
name = "report"
kind = "template"
template = "Q: {{ question }} A: {{ answer }}"
"#;

/// A gateway whose flows are these (name, TOML) files, and the directory holding them.
async fn with_flows(
    mock: &MockHandle,
    flows: &[(&str, &str)],
    extra: &str,
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, text) in flows {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        files.push(format!("\"{}\"", path.display()));
    }
    // Documents for `embed` steps go under docs/.
    let documents = dir.path().join("docs");
    std::fs::create_dir_all(&documents).unwrap();
    let toml = config_for(
        &[("us-east", mock.url())],
        &format!(
            "{extra}\n[flows]\nfiles = [{}]\ndocuments = \"{}\"\n",
            files.join(", "),
            documents.display()
        ),
    );
    (TestGateway::from_toml(&toml).await, dir)
}

/// Run `id` of tenant A once it has ended (or after five seconds).
async fn ended(gw: &TestGateway, id: &str) -> Value {
    let mut run = Value::Null;
    for _ in 0..250 {
        run = gw
            .get(KEY_A, &format!("/v1/flows/runs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if run["status"] != "running" && run["status"] != "cancelling" {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    run
}

/// Starts a run of `flow` for tenant A in the background; its id once the run waits on
/// its first model call at `mock`, and the request still waiting for the answer.
async fn waiting_run(
    gw: &TestGateway,
    mock: &MockHandle,
    flow: &str,
    input: Value,
) -> (
    String,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let client = gw.client.clone();
    let url = gw.url(&format!("/v1/flows/{flow}/runs"));
    let asking = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(KEY_A)
            .json(&json!({ "input": input }))
            .send()
            .await
    });
    let mut runs = Value::Null;
    for _ in 0..250 {
        runs = gw.get(KEY_A, "/v1/flows/runs").await.json().await.unwrap();
        if runs["data"][0]["status"] == "running" && mock.stats().answering == 1 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(mock.stats().answering, 1, "{runs}");
    (runs["data"][0]["id"].as_str().unwrap().to_string(), asking)
}

async fn run(gw: &TestGateway, key: &str, flow: &str, input: Value) -> reqwest::Response {
    gw.post(
        &format!("/v1/flows/{flow}/runs"),
        key,
        &json!({ "input": input }),
    )
    .await
}

/// A run of `flow` for `key`'s tenant, to its end, as the answer's JSON.
async fn ran(gw: &TestGateway, key: &str, flow: &str, input: Value) -> Value {
    run(gw, key, flow, input).await.json().await.unwrap()
}

#[tokio::test]
async fn a_flow_runs_its_steps_in_order_through_the_pipeline_as_the_tenant() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let listed: Value = gw.get(KEY_A, "/v1/flows").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["name"], "qa");
    assert_eq!(listed["data"][0]["inputs"], json!(["text", "question"]));

    let response = run(
        &gw,
        KEY_A,
        "qa",
        json!({"text": "Switchyards sort cars.", "question": "What do they sort?"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["object"], "flow.run");
    assert_eq!(done["status"], "completed", "{done}");
    let steps = done["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["summary", "answer", "report"]);
    // The second call was made from the first one's answer, and the output from both.
    let summary = steps[0]["output"].as_str().unwrap();
    let answer = steps[1]["output"].as_str().unwrap();
    assert!(!summary.is_empty() && !answer.is_empty());
    let last = mock.last_request().unwrap();
    assert_eq!(
        last["messages"][0]["content"],
        format!("Given {summary}, answer: What do they sort?")
    );
    assert_eq!(last["max_tokens"], 5);
    assert_eq!(done["output"], format!("Q: What do they sort? A: {answer}"));
    assert_eq!(mock.stats().chat_requests, 2);

    // Charged to the tenant like its own requests, and each call is in the audit log.
    let total = done["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(gw.day_tokens_reaching(total).await, total);
    let request_id = steps[1]["request_ids"][0].as_str().unwrap();
    let record = gw.newest_record().await;
    assert_eq!(record["request_id"], request_id, "{record}");
    assert_eq!(record["tenant"], "tenant-a");
    assert_eq!(
        record["key_id"],
        format!("flow:{}", done["id"].as_str().unwrap())
    );

    // The run is the tenant's own.
    let id = done["id"].as_str().unwrap();
    let path = format!("/v1/flows/runs/{id}");
    let again: Value = gw.get(KEY_A, &path).await.json().await.unwrap();
    assert_eq!(again, done);
    let theirs = gw.get(KEY_B, &path).await;
    assert_eq!(theirs.status(), 404);
    assert_eq!(error_of(theirs).await["code"], "run_not_found");
    let listed: Value = gw.get(KEY_B, "/v1/flows/runs").await.json().await.unwrap();
    assert_eq!(listed["data"], json!([]));
}

#[tokio::test]
async fn a_run_that_cannot_start_is_refused_with_what_is_wrong() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let missing = run(&gw, KEY_A, "qa", json!({"text": "x"})).await;
    assert_eq!(missing.status(), 400);
    let error = error_of(missing).await;
    assert_eq!(error["param"], "input");
    assert_eq!(
        error["message"],
        "input.question is missing; flow qa reads text, question"
    );
    let unknown = run(&gw, KEY_A, "rag", json!({})).await;
    assert_eq!(unknown.status(), 404);
    let error = error_of(unknown).await;
    assert_eq!(error["code"], "flow_not_found");
    assert!(error["message"].as_str().unwrap().contains("flows: qa"));
    assert_eq!(mock.stats().chat_requests, 0);
}

#[tokio::test]
async fn a_paused_tenants_run_stops_before_its_next_step_of_any_kind() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA), ("recall", RECALL)], "").await;
    let paused = gw
        .admin(reqwest::Method::POST, "/admin/tenants/tenant-a/pause", None)
        .await;
    assert_eq!(paused.status(), 200);
    let done: Value = ran(&gw, KEY_A, "qa", json!({"text": "t", "question": "q"})).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["step"], "summary");
    assert_eq!(done["error"]["code"], "tenant_paused");
    assert_eq!(done["steps"].as_array().unwrap().len(), 1);
    assert_eq!(mock.stats().chat_requests, 0);
    // A step that calls no model stops too.
    let done: Value = ran(&gw, KEY_A, "recall", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "tenant_paused");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("before step recalled"), "{message}");
    gw.admin(
        reqwest::Method::POST,
        "/admin/tenants/tenant-a/resume",
        None,
    )
    .await;
    let done: Value = ran(&gw, KEY_A, "recall", json!({})).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn a_step_past_its_timeout_is_tried_again_then_fails_the_run() {
    let mock = quick_mock()
        .ttft(Duration::from_secs(3))
        .spawn_local()
        .await
        .unwrap();
    let slow = r#"
[[steps]]
name = "only"
kind = "llm"
model = "gpt-4o-mini"
prompt = "hello"
timeout = "300ms"
retries = 1
"#;
    let (gw, _dir) = with_flows(&mock, &[("slow", slow)], "").await;
    let done: Value = ran(&gw, KEY_A, "slow", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "step_timeout");
    assert_eq!(done["steps"][0]["attempts"], 2);
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than its timeout, 300ms")
    );
}

#[test]
fn a_broken_flow_file_stops_the_config_naming_the_flow_the_step_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rag.toml"),
        "[[steps]]\nname = \"a\"\nkind = \"template\"\ntemplate = \"{{ chunks }}\"\n",
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    let toml = config_for(&[("us-east", "http://127.0.0.1:9/v1".into())], "")
        + "\n[flows]\nfiles = [\"rag.toml\"]\n";
    std::fs::write(&config, toml).unwrap();
    let error = switchyard::config::Config::load(&config)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(
            "flows.rag.steps[0].template: unknown output \"chunks\"; this step can read nothing yet (in "
        ),
        "{error}"
    );
    std::fs::remove_file(dir.path().join("rag.toml")).unwrap();
    let error = switchyard::config::Config::load(&config)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("flows.files[0]: cannot read"), "{error}");
}

#[test]
fn the_example_flow_loads_with_the_example_config() {
    let example = std::fs::read_to_string("config.toml.example").unwrap();
    // The [flows] section, its settings uncommented.
    let start = example.find("[flows]").unwrap();
    let end = start + example[start..].find("[scheduler]").unwrap();
    let settings = [
        "files",
        "documents",
        "[[flows",
        "name",
        "desc",
        "url",
        "param",
        "timeout",
    ];
    let flows: Vec<&str> = example[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if settings.iter().any(|s| rest.starts_with(s)) => rest,
            _ => line,
        })
        .collect();
    let toml = format!(
        "{}{}\n{}",
        &example[..start],
        flows.join("\n"),
        &example[end..]
    );
    assert_ne!(toml, example, "the example names its flows");
    let config = switchyard::config::Config::from_toml(&toml).unwrap();
    let names: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["qa", "handbook-ingest", "handbook-ask", "support-agent"]
    );
    assert_eq!(config.flow_tools[0].name, "order_status");
    assert_eq!(config.flows[0].output, "report");
    assert!(config.flow_documents.unwrap().join("handbook").is_dir());
}

#[tokio::test]
async fn the_example_handbook_flows_answer_from_the_example_documents() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let read = |name: &str| std::fs::read_to_string(format!("examples/flows/{name}.toml")).unwrap();
    let (ingest, ask) = (read("handbook-ingest"), read("handbook-ask"));
    let flows = [
        ("handbook-ingest", ingest.as_str()),
        ("handbook-ask", ask.as_str()),
    ];
    let (gw, dir) = with_flows(&mock, &flows, "").await;
    let handbook = dir.path().join("docs/handbook");
    std::fs::create_dir_all(&handbook).unwrap();
    for entry in std::fs::read_dir("examples/docs/handbook").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, handbook.join(path.file_name().unwrap())).unwrap();
    }
    let ingested: Value = ran(&gw, KEY_A, "handbook-ingest", json!({})).await;
    assert_eq!(ingested["status"], "completed", "{ingested}");
    assert!(
        ingested["output"]["rows"].as_u64().unwrap() >= 6,
        "{ingested}"
    );
    let question = "Which warehouse do orders ship from?";
    let done: Value = ran(&gw, KEY_A, "handbook-ask", json!({"question": question})).await;
    assert_eq!(done["status"], "completed", "{done}");
    let prompt = mock.last_request().unwrap()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("Rotterdam warehouse"), "{prompt}");
    assert!(
        prompt.ends_with(&format!("Question: {question}")),
        "{prompt}"
    );
}

#[tokio::test]
async fn a_run_whose_client_goes_away_ends_cancelled() {
    let mock = quick_mock()
        .ttft(Duration::from_secs(30))
        .spawn_local()
        .await
        .unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let input = json!({"text": "t", "question": "q"});
    let (id, asking) = waiting_run(&gw, &mock, "qa", input).await;
    asking.abort();
    let run = ended(&gw, &id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["error"]["code"], "client_gone");
    assert_eq!(run["error"]["step"], "summary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_with_the_daemon_resumes_from_its_last_completed_step() {
    let flow = r#"
inputs = ["question"]
[[steps]]
name = "framed"
kind = "template"
template = "Please answer: {{ question }}"
[[steps]]
name = "answer"
kind = "llm"
model = "gpt-4o-mini"
prompt = "{{ framed }}"
"#;
    let slow = quick_mock()
        .ttft(Duration::from_secs(30))
        .spawn_local()
        .await
        .unwrap();
    let (gw, dir) = with_flows(&slow, &[("resumable", flow)], "").await;
    let client = gw.client.clone();
    let url = gw.url("/v1/flows/resumable/runs");
    let asking = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(KEY_A)
            .json(&json!({"input": {"question": "why?"}}))
            .send()
            .await
    });
    let mut runs = Value::Null;
    for _ in 0..250 {
        runs = gw.get(KEY_A, "/v1/flows/runs").await.json().await.unwrap();
        if runs["data"][0]["steps"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
            && slow.stats().answering == 1
        {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(slow.stats().answering, 1, "{runs}");
    let id = runs["data"][0]["id"].as_str().unwrap().to_string();
    // The daemon stops while the second step waits on its model call.
    let data = gw.stop().await;
    asking.abort();

    let fast = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let path = dir.path().join("resumable.toml");
    let toml = config_for(
        &[("us-east", fast.url())],
        &format!("[flows]\nfiles = [\"{}\"]\n", path.display()),
    );
    let gw = TestGateway::from_toml_in(&toml, data).await;
    let run = ended(&gw, &id).await;
    assert_eq!(run["status"], "completed", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["output"], "Please answer: why?");
    assert_eq!(
        fast.stats().chat_requests,
        1,
        "only the step not completed ran"
    );
    assert_eq!(
        fast.last_request().unwrap()["messages"][0]["content"],
        "Please answer: why?"
    );
    assert_eq!(run["output"], steps[1]["output"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_every_tenants_runs_with_ctl() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let input = json!({"text": "t", "question": "q"});
    let done: Value = ran(&gw, KEY_A, "qa", input.clone()).await;
    gw.admin(reqwest::Method::POST, "/admin/tenants/tenant-b/pause", None)
        .await;
    let failed: Value = ran(&gw, KEY_B, "qa", input).await;
    let url = gw.daemon.admin_url().unwrap();
    let out = tokio::task::block_in_place(|| ctl(&url, &["flows"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("RUN"), "{table}");
    let row = |id: &Value| {
        lines
            .iter()
            .find(|l| l.starts_with(id.as_str().unwrap()))
            .copied()
            .unwrap_or_default()
    };
    let ok = row(&done["id"]);
    assert!(
        ok.contains("tenant-a") && ok.contains("completed") && ok.contains("3/3"),
        "{table}"
    );
    let refused = row(&failed["id"]);
    assert!(
        refused.contains("tenant-b")
            && refused.contains("failed")
            && refused.contains("0/3")
            && refused.contains("tenant_paused at summary"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_its_step_in_flight_and_ends_cancelled() {
    let mock = quick_mock()
        .ttft(Duration::from_secs(30))
        .spawn_local()
        .await
        .unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let input = json!({"text": "t", "question": "q"});
    let (id, asking) = waiting_run(&gw, &mock, "qa", input).await;
    let path = format!("/v1/flows/runs/{id}/cancel");
    let theirs = gw.post(&path, KEY_B, &json!({})).await;
    assert_eq!(theirs.status(), 404);
    let cancelling: Value = gw
        .post(&path, KEY_A, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        ["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()),
        "{cancelling}"
    );
    let run = ended(&gw, &id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["error"]["code"], "cancelled");
    assert_eq!(run["error"]["step"], "summary");
    // The caller gets the run as it ended, and the model call was dropped, not waited for.
    let answered: Value = asking.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answered["status"], "cancelled");
    for _ in 0..250 {
        if mock.stats().answering == 0 {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(mock.stats().answering, 0);
    assert_eq!(mock.stats().chat_requests, 1, "no later step started");
}

#[tokio::test]
async fn the_mock_calls_the_tool_the_last_user_message_names_plain_and_streamed() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let tools = json!([
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object",
            "properties": {"id": {"type": "integer"}}, "required": ["id"]}}},
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"]}}}
    ]);
    let ask = |content: &str, stream: bool| {
        json!({"model": "gpt-4o-mini", "tools": tools, "stream": stream,
            "messages": [{"role": "user", "content": content}]})
    };
    // Arguments written after the tool's name are used as they are.
    let answer: Value = gw
        .chat(KEY_A, &ask(r#"please lookup {"id": 42}"#, false))
        .await
        .json()
        .await
        .unwrap();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], r#"{"id":42}"#);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    // Otherwise the required parameters are filled plainly; streamed as OpenAI does.
    let body = gw
        .chat(KEY_A, &ask("what is the weather", true))
        .await
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = sse_data(&body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 2, "{body}");
    assert_eq!(calls[0][0]["function"]["name"], "weather");
    let arguments: Value =
        serde_json::from_str(calls[1][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "what is the weather", "days": 0}));
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    // After the tool's result, the model answers in words; naming no tool, too.
    let follow_up = json!({"model": "gpt-4o-mini", "tools": tools, "messages": [
        {"role": "user", "content": "please lookup {\"id\": 42}"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"name\": \"Ada\"}"}
    ]});
    for request in [follow_up, ask("hello there", false)] {
        let answer: Value = gw.chat(KEY_A, &request).await.json().await.unwrap();
        assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
        assert!(
            answer["choices"][0]["message"]["content"]
                .as_str()
                .is_some()
        );
    }
}

const INGEST: &str = r#"
[[steps]]
name = "ingest"
kind = "embed"
model = "text-embedding-3-small"
load = "kb"
split = { by = "headings", size = 60, overlap = 5 }
collection = "handbook"
"#;

const ASK: &str = r#"
inputs = ["question"]

[[steps]]
name = "context"
kind = "retrieve"
model = "text-embedding-3-small"
collection = "handbook"
query = "{{ question }}"
top_k = 1

[[steps]]
name = "answer"
kind = "llm"
model = "gpt-4o-mini"
prompt = "Context: {{ context.text }}\nQuestion: {{ question }}"
max_tokens = 5
"#;

#[tokio::test]
async fn a_rag_flow_loads_splits_embeds_and_answers_from_the_right_chunk() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let (gw, dir) = with_flows(&mock, &[("ingest", INGEST), ("ask", ASK)], "").await;
    let kb = dir.path().join("docs/kb");
    std::fs::create_dir_all(&kb).unwrap();
    std::fs::write(
        kb.join("policies.md"),
        "# Refunds\nRefunds are paid within thirty days to the original card.\n\n\
         # Shipping\nParcels ship from Rotterdam every weekday morning.\n",
    )
    .unwrap();
    std::fs::write(
        kb.join("faq.jsonl"),
        "{\"text\": \"Support answers by email within one business day.\", \"team\": \"support\"}\n",
    )
    .unwrap();

    let ingested: Value = ran(&gw, KEY_A, "ingest", json!({})).await;
    assert_eq!(ingested["status"], "completed", "{ingested}");
    assert_eq!(ingested["output"]["chunks"], 3, "{ingested}");
    assert_eq!(ingested["output"]["rows"], 3);
    let embed_calls = mock.stats().embeddings_requests;
    assert_eq!(embed_calls, 1, "three chunks go in one batch");
    let ingest_tokens = ingested["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(ingest_tokens > 0, "{ingested}");

    for (question, expected, not) in [
        (
            "When are refunds paid to the card?",
            "thirty days",
            "Rotterdam",
        ),
        ("Where do parcels ship from?", "Rotterdam", "thirty days"),
        (
            "How does support answer, by email?",
            "business day",
            "Rotterdam",
        ),
    ] {
        let done: Value = ran(&gw, KEY_A, "ask", json!({"question": question})).await;
        assert_eq!(done["status"], "completed", "{done}");
        let chunk = &done["steps"][0]["output"]["chunks"][0];
        let prompt = mock.last_request().unwrap()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(prompt.contains(expected), "{question}: {prompt}");
        assert!(!prompt.contains(not), "{question}: {prompt}");
        assert!(prompt.ends_with(&format!("Question: {question}")));
        assert!(chunk["score"].as_f64().unwrap() > 0.0, "{chunk}");
        assert!(
            chunk["metadata"]["source"]
                .as_str()
                .unwrap()
                .starts_with("kb/")
        );
    }
    // Headings and JSON lines fields are kept as metadata.
    let done: Value = ran(&gw, KEY_A, "ask", json!({"question": "refunds"})).await;
    let chunk = &done["steps"][0]["output"]["chunks"][0];
    assert_eq!(chunk["metadata"]["heading"], "Refunds", "{chunk}");
    assert_eq!(chunk["id"], "kb/policies.md#0");

    // Ingesting again replaces the rows rather than adding copies.
    let again: Value = ran(&gw, KEY_A, "ingest", json!({})).await;
    assert_eq!(again["output"]["rows"], 3, "{again}");

    // Another tenant has no collection of that name: its run fails, naming it.
    let theirs: Value = ran(&gw, KEY_B, "ask", json!({"question": "refunds"})).await;
    assert_eq!(theirs["status"], "failed", "{theirs}");
    assert_eq!(theirs["error"]["code"], "collection_not_found");
    assert_eq!(theirs["error"]["step"], "context");
}

const CONTROL: &str = r#"
inputs = ["intent", "items"]

[[steps]]
name = "route"
kind = "branch"
value = "{{ intent }}"
[[steps.cases]]
contains = "refund"
[[steps.cases.steps]]
name = "refund_reply"
kind = "template"
template = "refund desk"
[[steps.cases]]
equals = "ship"
[[steps.cases.steps]]
name = "ship_reply"
kind = "template"
template = "shipping desk"
[steps.default]
[[steps.default.steps]]
name = "other_reply"
kind = "template"
template = "front desk"

[[steps]]
name = "draft"
kind = "loop"
max = 5
until = { value = "{{ grow }}", contains = "xxx" }
[[steps.steps]]
name = "grow"
kind = "template"
template = "{{ draft }}x"

[[steps]]
name = "bounded"
kind = "loop"
max = 2
until = { value = "{{ step }}", equals = "never" }
[[steps.steps]]
name = "step"
kind = "template"
template = "{{ bounded }}{{ pass }}"

[[steps]]
name = "each"
kind = "parallel"
over = "{{ items }}"
as = "item"
max_concurrency = 2
[[steps.steps]]
name = "shout"
kind = "llm"
model = "gpt-4o-mini"
prompt = "Say {{ item.word }}"
max_tokens = 3
[[steps.steps]]
name = "tag"
kind = "template"
template = "{{ item.word }}"

[[steps]]
name = "remember"
kind = "store_put"
key = "last-route"
value = "{{ route }}"
"#;

const RECALL: &str = r#"
[[steps]]
name = "recalled"
kind = "store_get"
key = "last-route"
"#;

#[tokio::test]
async fn branches_loops_and_parallel_steps_run_as_declared() {
    let mock = quick_mock().answer_tokens(2).spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("control", CONTROL), ("recall", RECALL)], "").await;
    let items = json!([{"word": "a"}, {"word": "b"}, {"word": "c"}]);
    let mut routes = Vec::new();
    for intent in ["I want a REFUND please", "ship", "shipping?"] {
        let done: Value = ran(
            &gw,
            KEY_A,
            "control",
            json!({"intent": intent, "items": items}),
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
        let output = |name: &str| {
            done["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .map(|s| s["output"].clone())
                .unwrap()
        };
        routes.push(output("route"));
        // Until passes after the third pass; the bound stops the other after two.
        assert_eq!(output("draft"), "xxx");
        assert_eq!(output("bounded"), "12");
        // One branch per item, joined in the list's order, each model call charged.
        assert_eq!(output("each"), json!(["a", "b", "c"]));
        let each = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "each")
            .unwrap();
        assert_eq!(each["request_ids"].as_array().unwrap().len(), 3);
        assert!(each["completion_tokens"].as_u64().unwrap() >= 3, "{each}");
    }
    assert_eq!(routes, ["refund desk", "shipping desk", "front desk"]);
    assert_eq!(mock.stats().chat_requests, 9);

    // What store_put kept is the tenant's, for its later runs.
    let recalled: Value = ran(&gw, KEY_A, "recall", json!({})).await;
    assert_eq!(recalled["output"], "front desk", "{recalled}");
    let theirs: Value = ran(&gw, KEY_B, "recall", json!({})).await;
    assert_eq!(theirs["output"], Value::Null, "{theirs}");

    // A branch of a parallel step that fails fails the step, naming where.
    let broken = json!([{"word": "a"}, {"text": "no word"}]);
    let failed: Value = ran(
        &gw,
        KEY_A,
        "control",
        json!({"intent": "x", "items": broken}),
    )
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["step"], "each");
    assert_eq!(failed["error"]["code"], "template_error");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("item has no field word"), "{message}");
    let not_a_list: Value = ran(
        &gw,
        KEY_A,
        "control",
        json!({"intent": "x", "items": "a,b"}),
    )
    .await;
    assert_eq!(not_a_list["error"]["code"], "not_a_list", "{not_a_list}");
}

/// A weather service on loopback: it answers every POST with the city it was asked
/// about, and remembers each body it received.
async fn weather_service() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/weather",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.clone());
                axum::Json(json!({"city": body["city"], "forecast": "sunny, 21C"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/weather", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn weather_tool(url: &str) -> String {
    format!(
        r#"
[[flows.tools]]
name = "weather"
description = "The weather in a city."
url = "{url}"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }}, days = {{ type = "integer" }} }}, required = ["city"] }}
timeout = "5s"
"#
    )
}

const FORECAST: &str = r#"
inputs = ["city"]
[[steps]]
name = "forecast"
kind = "tool"
tool = "weather"
arguments = { city = "{{ city }}", days = 2 }
"#;

const HELPER: &str = r#"
inputs = ["question", "session"]
[[steps]]
name = "helper"
kind = "agent"
model = "gpt-4o-mini"
system = "You help with travel."
prompt = "{{ question }}"
tools = ["weather"]
memory = "{{ session }}"
memory_window = 4
max_turns = 4
"#;

#[tokio::test]
async fn a_tool_step_calls_a_declared_http_tool_with_checked_arguments() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let (url, seen) = weather_service().await;
    let (gw, _dir) = with_flows(&mock, &[("forecast", FORECAST)], &weather_tool(&url)).await;
    let done: Value = ran(&gw, KEY_A, "forecast", json!({"city": "Oslo"})).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["output"],
        json!({"city": "Oslo", "forecast": "sunny, 21C"})
    );
    assert_eq!(seen.lock().unwrap()[0], json!({"city": "Oslo", "days": 2}));
    // A city that is not a string never reaches the tool.
    let bad: Value = ran(&gw, KEY_A, "forecast", json!({"city": 7})).await;
    assert_eq!(bad["error"]["code"], "bad_tool_arguments", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("city must be of type string")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The call is on the audit record: the tool, the step, the run; not the arguments.
    let audit: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/audit?kind=tool", None)
        .await;
    let record = &audit["records"][0];
    assert_eq!(record["kind"], "tool", "{audit}");
    assert_eq!(record["action"], "weather");
    assert_eq!(record["target"], "forecast");
    assert_eq!(record["status"], 200);
    assert_eq!(record["tenant"], "tenant-a");
    assert!(!record.to_string().contains("Oslo"), "{record}");
}

#[tokio::test]
async fn an_agent_calls_its_tool_and_remembers_its_session_across_runs() {
    let mock = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let (url, seen) = weather_service().await;
    let (gw, _dir) = with_flows(&mock, &[("helper", HELPER)], &weather_tool(&url)).await;
    let ask = |question: &str, session: &str| {
        let input = json!({"question": question, "session": session});
        let gw = &gw;
        async move {
            run(gw, KEY_A, "helper", input)
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = ask(r#"Check the weather {"city": "Oslo"} for me"#, "trip-1").await;
    assert_eq!(first["status"], "completed", "{first}");
    assert!(!first["output"].as_str().unwrap().is_empty());
    // The model asked for the tool, the gateway called it, and the model read its answer.
    assert_eq!(seen.lock().unwrap().as_slice(), [json!({"city": "Oslo"})]);
    let last = mock.last_request().unwrap();
    let messages = last["messages"].as_array().unwrap();
    let tool_answer = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert!(
        tool_answer["content"]
            .as_str()
            .unwrap()
            .contains("sunny, 21C")
    );
    assert_eq!(
        first["steps"][0]["request_ids"].as_array().unwrap().len(),
        2
    );
    let first_answer = first["output"].as_str().unwrap().to_string();

    // The same session carries the conversation; another starts afresh.
    ask("And what should I pack?", "trip-1").await;
    let messages = mock.last_request().unwrap()["messages"].clone();
    let contents: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        contents.contains(&r#"Check the weather {"city": "Oslo"} for me"#),
        "{messages}"
    );
    assert!(contents.contains(&first_answer.as_str()), "{messages}");
    ask("Hello?", "trip-2").await;
    let fresh = mock.last_request().unwrap()["messages"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(fresh, 2, "system and the question only");

    // Past the window (4 messages), the older turns are folded into a summary.
    let third = ask("Anything else?", "trip-1").await;
    assert_eq!(
        third["steps"][0]["request_ids"].as_array().unwrap().len(),
        2,
        "{third}"
    );
    ask("Thanks.", "trip-1").await;
    let messages = mock.last_request().unwrap()["messages"].clone();
    let summary = messages[1]["content"].as_str().unwrap();
    assert!(
        summary.starts_with("Summary of the conversation so far: "),
        "{messages}"
    );
    assert_eq!(messages.as_array().unwrap().len(), 2 + 2 + 1, "{messages}");
}

#[tokio::test]
async fn the_example_agent_looks_an_order_up_with_the_mocks_tool() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let agent = std::fs::read_to_string("examples/flows/support-agent.toml").unwrap();
    let base = mock.url().trim_end_matches("/v1").to_string();
    let tool = format!(
        "[[flows.tools]]\nname = \"order_status\"\nurl = \"{base}/_mock/tools/order_status\"\nparameters = {{ type = \"object\", properties = {{ order = {{ type = \"string\" }} }}, required = [\"order\"] }}\n"
    );
    let (gw, _dir) = with_flows(&mock, &[("support-agent", agent.as_str())], &tool).await;
    let question = r#"Where is my order_status {"order": "A-1001"}?"#;
    let done: Value = ran(
        &gw,
        KEY_A,
        "support-agent",
        json!({"question": question, "customer": "c-1"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let messages = mock.last_request().unwrap()["messages"].clone();
    let answer = messages
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .and_then(|m| m["content"].as_str())
        .unwrap()
        .to_string();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["tool"], "order_status");
    assert_eq!(answer["arguments"], json!({"order": "A-1001"}));
    assert!(
        answer["result"]
            .as_str()
            .unwrap()
            .starts_with("found: shipped")
    );
}

#[tokio::test]
async fn a_streamed_run_sends_an_event_per_step_then_the_whole_run() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let input = json!({"text": "Switchyards sort cars.", "question": "What?"});
    let response = gw
        .post(
            "/v1/flows/qa/runs",
            KEY_A,
            &json!({"input": input, "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    let kinds: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("event: ")))
        .collect();
    assert_eq!(
        kinds,
        [
            "run.started",
            "step.completed",
            "step.completed",
            "step.completed",
            "run.completed"
        ],
        "{body}"
    );
    let events: Vec<Value> = sse_data(&body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let names: Vec<&str> = events[1..4]
        .iter()
        .map(|e| e["step"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["summary", "answer", "report"]);
    let run = &events[4]["run"];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["output"], events[3]["step"]["output"]);
    // The streamed run is the same as the one kept.
    let id = run["id"].as_str().unwrap();
    let kept: Value = gw
        .get(KEY_A, &format!("/v1/flows/runs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&kept, run);

    // A run that cannot start is refused before any event, like an unstreamed one.
    let refused = gw
        .post(
            "/v1/flows/qa/runs",
            KEY_A,
            &json!({"input": {}, "stream": true}),
        )
        .await;
    assert_eq!(refused.status(), 400);
    // A failing step streams its failure, then the failed run.
    let failing = json!({"input": {"text": "t", "question": "q"}, "stream": true});
    mock.update_knobs(|k| {
        k.error_rate = 1.0;
        k.error_status = 400;
    });
    let body = gw
        .post("/v1/flows/qa/runs", KEY_A, &failing)
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: step.failed"), "{body}");
    assert!(
        body.trim_end().ends_with('}') && body.contains("event: run.failed"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_run_in_flight_and_an_operator_cancels_it() {
    let mock = quick_mock()
        .ttft(Duration::from_secs(30))
        .spawn_local()
        .await
        .unwrap();
    let (gw, _dir) = with_flows(&mock, &[("qa", QA)], "").await;
    let input = json!({"text": "t", "question": "q"});
    let (id, asking) = waiting_run(&gw, &mock, "qa", input).await;
    let snapshot: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/snapshot", None)
        .await;
    let shown = snapshot["flow_runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(shown["tenant"], "tenant-a", "{snapshot}");
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["current"], "summary");
    assert_eq!(shown["steps_total"], 3);
    // What the console sends once the operator confirmed.
    let acted = gw
        .client
        .post(format!("{}/admin/actions", gw.daemon.admin_url().unwrap()))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-switchyard-operator", "bob")
        .json(&json!({"action": "cancel_flow_run", "id": id}))
        .send()
        .await
        .unwrap();
    let said: Value = acted.json().await.unwrap();
    assert!(
        said["ok"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("flow run {id} of tenant-a stops")),
        "{said}"
    );
    assert_eq!(ended(&gw, &id).await["status"], "cancelled");
    let answered: Value = asking.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answered["status"], "cancelled");
    let again = gw
        .admin(
            reqwest::Method::POST,
            "/admin/actions",
            Some(json!({"action": "cancel_flow_run", "id": id})),
        )
        .await;
    assert_eq!(again.status(), 400, "an ended run is not cancelled twice");
    let records: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/audit?kind=operator", None)
        .await;
    let record = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "cancel_flow_run")
        .cloned()
        .unwrap_or_default();
    assert_eq!(record["actor"], "bob", "{records}");
    assert_eq!(record["before"]["flow"], "qa", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_and_stored_values_outlive_a_restart() {
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let put = r#"
[[steps]]
name = "kept"
kind = "store_put"
key = "last-route"
value = "front desk"
"#;
    let flows = [
        ("ingest", INGEST),
        ("ask", ASK),
        ("recall", RECALL),
        ("put", put),
    ];
    let (gw, dir) = with_flows(&mock, &flows, "").await;
    let kb = dir.path().join("docs/kb");
    std::fs::create_dir_all(&kb).unwrap();
    std::fs::write(
        kb.join("policies.md"),
        "# Refunds\nRefunds are paid within thirty days.\n\n# Shipping\nParcels ship from Rotterdam.\n",
    )
    .unwrap();
    let ingested: Value = ran(&gw, KEY_A, "ingest", json!({})).await;
    assert_eq!(ingested["output"]["rows"], 2, "{ingested}");
    let kept: Value = ran(&gw, KEY_A, "put", json!({})).await;
    assert_eq!(kept["status"], "completed", "{kept}");
    let data = gw.stop().await;
    // The documents are gone: what the run finds after the restart comes from the store.
    std::fs::remove_dir_all(&kb).unwrap();
    let embedded = mock.stats().embeddings_requests;

    let files: Vec<String> = flows
        .iter()
        .map(|(name, _)| format!("\"{}\"", dir.path().join(format!("{name}.toml")).display()))
        .collect();
    let toml = config_for(
        &[("us-east", mock.url())],
        &format!(
            "[flows]\nfiles = [{}]\ndocuments = \"{}\"\n",
            files.join(", "),
            dir.path().join("docs").display()
        ),
    );
    let gw = TestGateway::from_toml_in(&toml, data).await;
    let done: Value = ran(
        &gw,
        KEY_A,
        "ask",
        json!({"question": "Where do parcels ship from?"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let prompt = mock.last_request().unwrap()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("Rotterdam"), "{prompt}");
    assert_eq!(
        mock.stats().embeddings_requests,
        embedded + 1,
        "only the question"
    );
    let theirs: Value = ran(&gw, KEY_B, "ask", json!({"question": "Rotterdam?"})).await;
    assert_eq!(theirs["error"]["code"], "collection_not_found", "{theirs}");
    let recalled: Value = ran(&gw, KEY_A, "recall", json!({})).await;
    assert_eq!(recalled["output"], "front desk", "{recalled}");
}

/// The MCP server of tests/mcp/inventory.py (the official Python SDK), on a free port;
/// stopped when dropped.
struct Inventory(std::process::Child, String);

impl Drop for Inventory {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn inventory() -> Inventory {
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args(["tests/mcp/inventory.py", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the test MCP server (pip install -r tests/sdk/requirements.txt)");
    let mut server = Inventory(child, format!("http://127.0.0.1:{port}/mcp"));
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        if let Ok(Some(_)) = server.0.try_wait() {
            let mut why = String::new();
            use std::io::Read;
            let _ = server.0.stderr.take().unwrap().read_to_string(&mut why);
            panic!(
                "the test MCP server stopped (is the mcp package installed? pip install -r tests/sdk/requirements.txt):\n{why}"
            );
        }
        tokio::time::sleep(ms(50)).await;
    }
    panic!("the test MCP server did not listen within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_an_http_tool_and_an_mcp_tool_remembering_its_session() {
    let mock = quick_mock().answer_tokens(4).spawn_local().await.unwrap();
    let (url, seen) = weather_service().await;
    let inventory = inventory().await;
    let extra = format!(
        "{}\n[[flows.mcp]]\nname = \"inventory\"\nurl = \"{}\"\ntimeout = \"10s\"\n",
        weather_tool(&url),
        inventory.1
    );
    let helper = HELPER.replace(
        r#"tools = ["weather"]"#,
        r#"tools = ["weather", "inventory"]"#,
    );
    let count = "inputs = [\"item\"]\n[[steps]]\nname = \"count\"\nkind = \"tool\"\ntool = \"inventory.stock\"\narguments = { item = \"{{ item }}\" }\n";
    let flows = [("helper", helper.as_str()), ("count", count)];
    let (gw, _dir) = with_flows(&mock, &flows, &extra).await;
    let ask = |question: &str| {
        let input = json!({"question": question, "session": "shop-1"});
        let gw = &gw;
        async move {
            run(gw, KEY_A, "helper", input)
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = ask(r#"Check the weather {"city": "Oslo"} please"#).await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // The model is offered the MCP server's tools as it lists them, and calls one.
    let second = ask(r#"Do you have stock {"item": "bolts"}?"#).await;
    assert_eq!(second["status"], "completed", "{second}");
    let request = mock.last_request().unwrap();
    let offered: Vec<&str> = request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(offered, ["weather", "stock"]);
    let messages = request["messages"].as_array().unwrap();
    let answer = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(answer["content"], "bolts: 12 in stock", "{request}");
    // The session carried the first run's turn.
    assert!(
        messages
            .iter()
            .any(|m| m["content"] == r#"Check the weather {"city": "Oslo"} please"#),
        "{request}"
    );
    // Both calls are on the audit record, the MCP one named with its server.
    let audit: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/audit?kind=tool", None)
        .await;
    let tools: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(
        tools.contains(&"weather") && tools.contains(&"inventory.stock"),
        "{audit}"
    );

    // A tool step calls an MCP server's tool by its qualified name.
    let counted: Value = ran(&gw, KEY_A, "count", json!({"item": "nuts"})).await;
    assert_eq!(counted["output"], "nuts: 12 in stock", "{counted}");
}

#[tokio::test]
async fn an_embed_step_loads_a_page_from_an_allowed_url() {
    let app = axum::Router::new()
        .route(
            "/docs/guide.md",
            axum::routing::get(|| async {
                (
                    [("content-type", "text/markdown")],
                    "# Returns\nReturns are free within thirty days.\n\n# Shipping\nParcels leave Rotterdam daily.\n",
                )
            }),
        )
        .route(
            "/docs/moved.md",
            axum::routing::get(|| async { axum::response::Redirect::temporary("/private/secret.md") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mock = quick_mock().answer_tokens(3).spawn_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flow = |page: &str| {
        format!(
            "[[steps]]\nname = \"ingest\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"{site}/docs/{page}\"\nsplit = {{ by = \"headings\" }}\ncollection = \"web\"\n"
        )
    };
    std::fs::write(dir.path().join("web.toml"), flow("guide.md")).unwrap();
    std::fs::write(dir.path().join("moved.toml"), flow("moved.md")).unwrap();
    let files =
        ["web", "moved"].map(|n| format!("\"{}\"", dir.path().join(format!("{n}.toml")).display()));
    let toml = config_for(
        &[("us-east", mock.url())],
        &format!(
            "[flows]\nfiles = [{}]\nurls = [\"{site}/docs/\"]\n",
            files.join(", ")
        ),
    );
    let gw = TestGateway::from_toml(&toml).await;
    let done: Value = ran(&gw, KEY_A, "web", json!({})).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["chunks"], 2, "{done}");
    // A redirect is not followed: it could lead off the allowed URLs.
    let moved: Value = ran(&gw, KEY_A, "moved", json!({})).await;
    assert_eq!(moved["error"]["code"], "load_failed", "{moved}");
    assert!(
        moved["error"]["message"].as_str().unwrap().contains("307"),
        "{moved}"
    );
    // A flow naming a URL outside the list does not load.
    let outside = format!(
        "[[steps]]\nname = \"x\"\nkind = \"embed\"\nmodel = \"text-embedding-3-small\"\nload = \"{site}/private/secret.md\"\n"
    );
    std::fs::write(dir.path().join("web.toml"), outside).unwrap();
    let error = switchyard::config::Config::from_toml(&toml)
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not under an allowed URL"), "{error}");
}
