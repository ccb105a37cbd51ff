//! Upstream dialects: Azure OpenAI's deployment URLs and `api-key`, Anthropic's Messages
//! API behind chat completions, and one alias served by instances of different dialects
//! with failover between them.
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

/// `us-east` is Anthropic's Messages API at `anthropic`; `eu-west` an Azure resource.
fn anthropic_then_azure(anthropic: &MockHandle, azure: &MockHandle) -> String {
    mixed(anthropic, azure).replace(
        "name = \"us-east-a\"",
        "name = \"us-east-a\"\n  dialect = \"anthropic\"\n  api_key_env = \"PATH\"",
    )
}

#[tokio::test]
async fn an_anthropic_instance_serves_chat_completions_plain_and_streamed() {
    let anthropic = azure_mock().answer_tokens(7).spawn_local().await.unwrap();
    let azure = azure_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&anthropic_then_azure(&anthropic, &azure)).await;

    let mut body = hello("chat-small");
    body["messages"] = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Say hello." }
    ]);
    body["stop"] = json!(["END"]);
    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-switchyard-instance"), "us-east-a");
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"], 7);
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // What went upstream was a Messages request, keyed and versioned as Anthropic wants.
    assert_eq!(anthropic.last_path().unwrap(), "/v1/messages");
    let sent = anthropic.last_request().unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["system"],
        json!([{ "type": "text", "text": "Be brief." }])
    );
    assert_eq!(
        sent["messages"],
        json!([{ "role": "user", "content": [{ "type": "text", "text": "Say hello." }] }])
    );
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert!(
        sent["max_tokens"].as_u64().unwrap() > 0,
        "the gateway's limit: {sent}"
    );

    // A stream: OpenAI's chunks, the usage chunk only when asked for, then [DONE].
    let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    let text = reply.text().await.unwrap();
    assert_eq!(streamed_text(&text).split(' ').count(), 7, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"usage\":{"), "not asked for: {text}");
    let mut asked = hello_stream("gpt-4o-mini");
    asked["stream_options"] = json!({ "include_usage": true });
    let text = gw.chat(KEY_A, &asked).await.text().await.unwrap();
    let usage: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .unwrap_or_else(|| panic!("no usage chunk: {text}"));
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(
        azure.stats().chat_requests,
        0,
        "us-east answered everything"
    );

    // Anthropic has no embeddings: the alias goes on to Azure, and with Azure drained
    // the error says why the Anthropic instance could not serve it.
    let embed = json!({"model": "text-embedding-3-small", "input": "yard"});
    assert_eq!(gw.post("/v1/embeddings", KEY_A, &embed).await.status(), 200);
    gw.admin(reqwest::Method::POST, "/admin/regions/eu-west/drain", None)
        .await;
    // Another input: the first answer is cached.
    let embed = json!({"model": "text-embedding-3-small", "input": "switch"});
    let reply = gw.post("/v1/embeddings", KEY_A, &embed).await;
    assert!(reply.status().is_server_error(), "{}", reply.status());
    let error = error_of(reply).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("us-east-a speaks anthropic, which has no /embeddings endpoint"),
        "{message}"
    );
}

#[tokio::test]
async fn an_alias_fails_over_from_an_anthropic_region_to_an_azure_region_mid_load() {
    let anthropic = azure_mock().spawn_local().await.unwrap();
    let azure = azure_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&anthropic_then_azure(&anthropic, &azure)).await;
    let first = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(header(&first, "x-switchyard-region"), "us-east");
    let keys =
        |body: &Value| -> Vec<String> { body.as_object().unwrap().keys().cloned().collect() };
    let shape = keys(&first.json().await.unwrap());

    // Forty requests, plain and streamed, eight at a time; Anthropic overloads (529)
    // after the first round.
    let mut errors = Vec::new();
    let mut regions = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..5 {
        if round == 1 {
            anthropic.start_outage(Outage::Error);
        }
        let replies = futures_util::future::join_all((0..8).map(|i| {
            let body = if i % 2 == 0 {
                hello("gpt-4o-mini")
            } else {
                hello_stream("gpt-4o-mini")
            };
            let gw = &gw;
            async move {
                let reply = gw.chat(KEY_A, &body).await;
                let region = header(&reply, "x-switchyard-region").to_string();
                let status = reply.status();
                let text = reply.text().await.unwrap();
                (i, status, region, text)
            }
        }))
        .await;
        for (i, status, region, text) in replies {
            if status != 200 {
                errors.push(format!("{status}: {text}"));
                continue;
            }
            *regions.entry(region).or_default() += 1;
            if i % 2 == 0 {
                assert_eq!(
                    keys(&serde_json::from_str(&text).unwrap()),
                    shape,
                    "the same answer shape"
                );
            } else {
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            }
        }
    }
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(
        regions.get("eu-west").copied().unwrap_or(0) >= 32,
        "{regions:?}"
    );
    assert!(anthropic.stats().errors_injected == 0 && anthropic.stats().requests > 8);
}

/// `switchyard mock --dialect anthropic` answers only Anthropic's API, as Anthropic
/// would: a gateway in front of it must speak Messages, and does.
#[tokio::test]
async fn a_mock_limited_to_anthropic_answers_only_messages_and_the_gateway_speaks_them() {
    let anthropic = azure_mock()
        .dialect(switchyard::mock::MockDialect::Anthropic)
        .answer_tokens(5)
        .spawn_local()
        .await
        .unwrap();
    let azure = azure_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&anthropic_then_azure(&anthropic, &azure)).await;
    let refused = gw
        .client
        .post(format!("{}/chat/completions", anthropic.url()))
        .bearer_auth(std::env::var("PATH").unwrap())
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");

    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-switchyard-instance"), "us-east-a");
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(anthropic.last_path().unwrap(), "/v1/messages");
}
