//! The Anthropic Messages front: requests go through the one pipeline, as they are to
//! Anthropic-dialect instances and translated to chat completions for the others; keys
//! come in `x-api-key`; errors are in Anthropic's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::{MockHandle, Outage};

async fn messages(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_message_is_served_through_the_pipeline_and_audited() {
    let mock = quick_mock().answer_tokens(5).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Describe a switchyard."}]});
    let response = messages(&gw, KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-region"), "us-east");
    let request_id = header(&response, "x-request-id").to_string();
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "gpt-4o-mini");
    assert_eq!(message["usage"]["output_tokens"], 5);
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["max_tokens"], 50);

    let mut record = Value::Null;
    for _ in 0..500 {
        record = gw.newest_record().await;
        if record["request_id"] == request_id.as_str() {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(record["request_id"], request_id.as_str());
    assert_eq!(record["endpoint"], "/v1/messages");
    assert_eq!(record["completion_tokens"], 5);
}

#[tokio::test]
async fn refusals_are_in_anthropics_shape() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});

    let response = messages(&gw, "sy-wrong", &body).await;
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");

    let mut no_limit = body.clone();
    no_limit.as_object_mut().unwrap().remove("max_tokens");
    let response = messages(&gw, KEY_A, &no_limit).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );

    // The upstream down: the pipeline's 503, as Anthropic's overloaded_error.
    mock.start_outage(switchyard::mock::Outage::Error);
    let response = messages(&gw, KEY_A, &body).await;
    assert!(response.status().is_server_error(), "{}", response.status());
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert!(error["error"]["message"].as_str().is_some(), "{error}");
}

/// `us-east` speaks Anthropic's Messages API; `eu-west` OpenAI's chat completions.
fn anthropic_then_openai(anthropic: &MockHandle, openai: &MockHandle) -> String {
    config_for(
        &[("us-east", anthropic.url()), ("eu-west", openai.url())],
        "",
    )
    .replace(
        "name = \"us-east-a\"",
        "name = \"us-east-a\"\n  dialect = \"anthropic\"\n  api_key_env = \"PATH\"",
    )
}

#[tokio::test]
async fn an_anthropic_instance_is_sent_messages_as_they_are_and_its_events_pass_through() {
    let anthropic = quick_mock()
        .api_key(std::env::var("PATH").unwrap())
        .answer_tokens(6)
        .spawn_local()
        .await
        .unwrap();
    let openai = quick_mock().answer_tokens(6).spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&anthropic_then_openai(&anthropic, &openai)).await;
    // `top_k` and `cache_control` exist only in the Messages API: a translation to chat
    // and back would lose them.
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "top_k": 5,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Describe a switchyard."}]});
    let response = messages(&gw, KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "us-east-a");
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(anthropic.last_path().unwrap(), "/v1/messages");
    let sent = anthropic.last_request().unwrap();
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["system"], body["system"]);
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(sent["max_tokens"], 50);
    let first = message["usage"]["input_tokens"].as_u64().unwrap()
        + message["usage"]["output_tokens"].as_u64().unwrap();
    assert_eq!(gw.day_tokens_reaching(first).await, first);

    // Streamed: Anthropic's own events, `ping` included, which no translation makes;
    // usage from message_start (input) and message_delta (output) is charged.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = messages(&gw, KEY_A, &streamed).await;
    assert_eq!(response.status(), 200);
    let events = response.text().await.unwrap();
    let kinds: Vec<&str> = events
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert!(kinds.contains(&"ping"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert_eq!(anthropic.last_request().unwrap()["stream"], true);
    assert!(
        anthropic
            .last_request()
            .unwrap()
            .get("stream_options")
            .is_none()
    );
    assert_eq!(gw.day_tokens_reaching(first * 2).await, first * 2);

    // With the Anthropic region down, the same request is translated for chat, and the
    // client still gets a Message.
    anthropic.start_outage(Outage::Error);
    let plain = json!({"model": "gpt-4o-mini", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Describe a switchyard."}]});
    let response = messages(&gw, KEY_A, &plain).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-instance"), "eu-west-a");
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["usage"]["output_tokens"], 6);
    assert_eq!(openai.last_path().unwrap(), "/v1/chat/completions");
}

#[tokio::test]
async fn a_native_stream_that_breaks_ends_with_anthropics_error_event() {
    let anthropic = quick_mock()
        .api_key(std::env::var("PATH").unwrap())
        .answer_tokens(12)
        .fail_after_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let openai = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&anthropic_then_openai(&anthropic, &openai)).await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Describe a switchyard."}]});
    let response = messages(&gw, KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    let events = response.text().await.unwrap();
    let last = events.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{events}");
    let error: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed mid-stream"),
        "{error}"
    );
}
