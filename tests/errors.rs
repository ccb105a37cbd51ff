//! Every refusal a client can meet, in OpenAI's error shape with the right status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

async fn gateway() -> (switchyard::mock::MockHandle, TestGateway) {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &us)], "max_body = \"1KiB\"").await;
    (us, gw)
}

fn raw(gw: &TestGateway, body: &'static str) -> reqwest::RequestBuilder {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn a_missing_key_is_401_missing_api_key() {
    let (_us, gw) = gateway().await;
    let reply = raw(&gw, r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    let error = error_of(reply).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "missing_api_key");
}

#[tokio::test]
async fn a_wrong_key_is_401_invalid_api_key_and_never_echoed() {
    let (us, gw) = gateway().await;
    let reply = gw.chat("sy-not-a-real-key", &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 401);
    let error = error_of(reply).await;
    assert_eq!(error["code"], "invalid_api_key");
    assert!(!error.to_string().contains("sy-not-a-real-key"));
    assert_eq!(us.stats().requests, 0, "nothing went upstream");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (_us, gw) = gateway().await;
    let reply = raw(&gw, r#"{"model": "gpt-4o-mini", "#)
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert_eq!(error_of(reply).await["code"], "invalid_json");

    let reply = raw(&gw, r#"["an", "array"]"#)
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert_eq!(error_of(reply).await["code"], "invalid_json");
}

#[tokio::test]
async fn a_missing_model_is_400_naming_the_parameter() {
    let (_us, gw) = gateway().await;
    let reply = gw.chat(KEY_A, &json!({ "messages": [] })).await;
    assert_eq!(reply.status(), 400);
    let error = error_of(reply).await;
    assert_eq!(error["param"], "model");
    assert_eq!(error["code"], "missing_required_parameter");

    let reply = gw.chat(KEY_A, &json!({ "model": 4, "messages": [] })).await;
    assert_eq!(reply.status(), 400);
    assert_eq!(error_of(reply).await["param"], "model");
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found_listing_what_exists() {
    let (us, gw) = gateway().await;
    let reply = gw.chat(KEY_A, &hello("gpt-9")).await;
    assert_eq!(reply.status(), 404);
    let error = error_of(reply).await;
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("gpt-4o-mini"));
    assert_eq!(us.stats().requests, 0);
}

#[tokio::test]
async fn a_model_sent_to_the_wrong_endpoint_is_400() {
    let (_us, gw) = gateway().await;
    let reply = gw.chat(KEY_A, &hello("text-embedding-3-small")).await;
    assert_eq!(reply.status(), 400);
    let error = error_of(reply).await;
    assert_eq!(error["code"], "model_not_supported");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings")
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let (us, gw) = gateway().await;
    let mut body = hello("gpt-4o-mini");
    body["messages"][0]["content"] = json!("x".repeat(2048));
    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 413);
    assert_eq!(error_of(reply).await["code"], "request_too_large");
    assert_eq!(us.stats().requests, 0);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_404_and_405() {
    let (_us, gw) = gateway().await;
    let reply = gw
        .client
        .get(gw.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    assert!(header(&reply, "content-type").starts_with("application/json"));
    assert_eq!(error_of(reply).await["code"], "unknown_url");

    let reply = gw
        .client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 405);
    assert_eq!(error_of(reply).await["code"], "method_not_allowed");
}

/// The model calls go to their handlers without the router (`Api::dispatch`): each
/// answers as its route did, a missing key refused by the handler in its front's shape,
/// and the same path by another method still gets the router's 405.
#[tokio::test]
async fn every_model_call_reaches_its_handler_and_other_methods_the_router() {
    let (us, gw) = gateway().await;
    for (path, kind) in [
        ("/v1/chat/completions", "invalid_request_error"),
        ("/v1/completions", "invalid_request_error"),
        ("/v1/embeddings", "invalid_request_error"),
        ("/v1/responses", "invalid_request_error"),
        ("/v1/messages", "authentication_error"),
    ] {
        let reply = gw
            .client
            .post(gw.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401, "{path}");
        assert!(header(&reply, "x-request-id").starts_with("req_"), "{path}");
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind, "{path}: {body}");
        let reply = gw.client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(reply.status(), 405, "{path}");
        assert_eq!(error_of(reply).await["code"], "method_not_allowed");
    }
    assert_eq!(us.stats().requests, 0);
}

#[tokio::test]
async fn garbage_never_takes_the_gateway_down() {
    let (_us, gw) = gateway().await;
    let bodies: [&'static str; 8] = [
        "",
        "null",
        "{}",
        r#"{"model":null}"#,
        r#"{"model":"gpt-4o-mini","stream":"yes"}"#,
        r#"{"model":"gpt-4o-mini","messages":"hi"}"#,
        "\u{0}\u{1}\u{2}",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":-1}"#,
    ];
    for body in bodies {
        let reply = raw(&gw, body).bearer_auth(KEY_A).send().await.unwrap();
        let status = reply.status().as_u16();
        assert!(status < 500, "{body:?} gave {status}");
        if status != 200 {
            error_of(reply).await;
        }
    }
    let reply = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
}
