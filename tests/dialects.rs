//! Upstream dialects: Azure OpenAI's deployment URLs and `api-key`, and one alias served
//! by instances of different dialects with failover between them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::{MockHandle, Outage};

/// `us-east` speaks OpenAI at `openai`; `eu-west` is an Azure resource at `azure`, whose
/// key (PATH's value, set wherever tests run) comes from the environment.
fn mixed(openai: &MockHandle, azure: &MockHandle) -> String {
    let root = azure.url().trim_end_matches("/v1").to_string();
    config_for(&[("us-east", openai.url()), ("eu-west", root)], "").replace(
        "name = \"eu-west-a\"",
        "name = \"eu-west-a\"\n  dialect = \"azure\"\n  api_version = \"2024-06-01\"\n  api_key_env = \"PATH\"",
    )
}

fn azure_mock() -> switchyard::mock::MockUpstream {
    quick_mock().api_key(std::env::var("PATH").unwrap())
}

#[tokio::test]
async fn an_azure_instance_is_called_at_its_deployment_url_with_its_api_key() {
    let openai = quick_mock().spawn_local().await.unwrap();
    let azure = azure_mock().answer_tokens(6).spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&mixed(&openai, &azure)).await;
    gw.admin(reqwest::Method::POST, "/admin/regions/us-east/drain", None)
        .await;

    let reply = gw.chat(KEY_A, &hello("chat-small")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-switchyard-instance"), "eu-west-a");
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 6);
    // The deployment is the model's upstream name; the key travels as `api-key`.
    assert_eq!(
        azure.last_path().unwrap(),
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-06-01"
    );

    let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(
        streamed_text(&reply.text().await.unwrap())
            .split(' ')
            .count(),
        6
    );

    let body = json!({"model": "text-embedding-3-small", "input": "yard"});
    let reply = gw.post("/v1/embeddings", KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(
        azure.last_path().unwrap(),
        "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-06-01"
    );
    assert_eq!(openai.stats().chat_requests, 0, "us-east was drained");
}

#[tokio::test]
async fn an_alias_fails_over_from_an_openai_region_to_an_azure_region_unseen() {
    let openai = quick_mock().spawn_local().await.unwrap();
    let azure = azure_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&mixed(&openai, &azure)).await;
    let first = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(header(&first, "x-switchyard-region"), "us-east");
    let shape: Vec<String> = {
        let body: Value = first.json().await.unwrap();
        body.as_object().unwrap().keys().cloned().collect()
    };

    openai.start_outage(Outage::Error);
    for _ in 0..5 {
        let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        assert_eq!(reply.status(), 200, "the client never sees the outage");
        assert_eq!(header(&reply, "x-switchyard-region"), "eu-west");
        let body: Value = reply.json().await.unwrap();
        let keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, shape, "the same answer shape from either dialect");
    }
    assert!(azure.stats().chat_requests >= 5);
}

#[tokio::test]
async fn a_wrong_azure_key_is_the_upstreams_refusal_not_the_clients() {
    let openai = quick_mock().spawn_local().await.unwrap();
    let azure = quick_mock()
        .api_key("another-key")
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::from_toml(&mixed(&openai, &azure)).await;
    gw.admin(reqwest::Method::POST, "/admin/regions/us-east/drain", None)
        .await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    // The client's key was good: an upstream that refuses the gateway's key is a
    // failed upstream (5xx naming it), never a 401 the client would blame itself for.
    assert!(reply.status().is_server_error(), "{}", reply.status());
    let error = error_of(reply).await;
    assert!(
        error["message"].as_str().unwrap().contains("eu-west-a"),
        "{error}"
    );
    assert_eq!(azure.stats().chat_requests, 0, "refused at the key");
    assert!(
        azure
            .last_path()
            .unwrap()
            .starts_with("/openai/deployments/gpt-4o-mini/")
    );
}
