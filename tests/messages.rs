//! The Anthropic Messages front: requests translated to chat completions go through the
//! one pipeline; keys come in `x-api-key`; errors are in Anthropic's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

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
