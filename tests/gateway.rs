//! The request path end to end: a client, the gateway and mock regions on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use switchyard::mock::{MockUpstream, Outage};

#[tokio::test]
async fn plain_chat_returns_the_upstream_answer_with_routing_headers() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;

    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-switchyard-region"), "us-east");
    assert_eq!(header(&reply, "x-switchyard-instance"), "us-east-a");
    assert!(header(&reply, "x-request-id").starts_with("req_"));
    let through: Value = reply.json().await.unwrap();

    let direct: Value = gw
        .client
        .post(format!("{}/chat/completions", us.url()))
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(through["object"], "chat.completion");
    assert_eq!(
        through.pointer("/choices/0/message/content"),
        direct.pointer("/choices/0/message/content")
    );
    assert_eq!(through["usage"], direct["usage"]);
    assert_eq!(through.pointer("/usage/completion_tokens"), Some(&json!(8)));
}

#[tokio::test]
async fn the_body_passes_through_with_unknown_fields_and_the_model_rewritten() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let mut body = hello("chat-small");
    body["x_vendor_extension"] = json!({ "keep": [1, 2, 3] });
    body["temperature"] = json!(0.25);

    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    let seen = us.last_request().expect("the mock saw the request");
    assert_eq!(
        seen["model"], "gpt-4o-mini",
        "alias rewritten to the upstream name"
    );
    assert_eq!(seen["x_vendor_extension"], json!({ "keep": [1, 2, 3] }));
    assert_eq!(seen["temperature"], json!(0.25));
    assert_eq!(seen["messages"], body["messages"]);
}

#[tokio::test]
async fn a_stream_matches_the_upstream_stream_event_for_event() {
    let us = quick_mock().answer_tokens(12).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let mut body = hello_stream("gpt-4o-mini");
    body["stream_options"] = json!({ "include_usage": true });

    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    assert!(header(&reply, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&reply, "x-switchyard-region"), "us-east");
    let through = reply.text().await.unwrap();

    let direct = gw
        .client
        .post(format!("{}/chat/completions", us.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(streamed_text(&through), streamed_text(&direct));
    assert_eq!(streamed_text(&through).split(' ').count(), 12);
    let events = sse_data(&through);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage.pointer("/usage/completion_tokens"), Some(&json!(12)));
}

#[tokio::test]
async fn stream_events_reach_the_client_while_the_upstream_is_still_generating() {
    // One token a second: the mock is still generating for seconds after the first token.
    let us = MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(1.0)
        .answer_tokens(20)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let mut reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || streamed_text(&seen).is_empty() {
        let chunk = reply.chunk().await.unwrap().expect("stream continues");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let stats = us.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(
        stats.streams_completed, 0,
        "the first token arrived before the upstream finished"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let us = MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(5.0)
        .answer_tokens(100)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let mut reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let first = reply.chunk().await.unwrap();
    assert!(first.is_some());
    drop(reply);

    let stats = us
        .wait_for(Duration::from_secs(10), |s| s.streams_cancelled == 1)
        .await;
    assert_eq!(stats.streams_cancelled, 1, "{stats:?}");
    assert_eq!(stats.streams_completed, 0);
}

#[tokio::test]
async fn a_stream_that_dies_mid_way_ends_with_an_error_event_not_a_clean_close() {
    let us = quick_mock()
        .answer_tokens(10)
        .fail_after_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    let body = reply.text().await.unwrap();

    let events = sse_data(&body);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{body}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last.pointer("/error/type"), Some(&json!("server_error")));
    assert_eq!(
        last.pointer("/error/code"),
        Some(&json!("upstream_stream_error"))
    );
    assert_eq!(streamed_text(&body).split(' ').count(), 3);
    assert_eq!(us.stats().streams_failed, 1);
}

#[tokio::test]
async fn failover_moves_on_when_the_first_region_refuses_connections() {
    let eu = quick_mock().spawn_local().await.unwrap();
    let urls = [("us-east", dead_url().await), ("eu-west", eu.url())];
    let gw = TestGateway::from_toml(&config_for(&urls, "")).await;

    for body in [hello("gpt-4o-mini"), hello_stream("gpt-4o-mini")] {
        let reply = gw.chat(KEY_A, &body).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(header(&reply, "x-switchyard-region"), "eu-west");
        assert!(!reply.text().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn failover_moves_on_when_the_first_region_answers_5xx() {
    let us = quick_mock().errors(1.0, 500).spawn_local().await.unwrap();
    let eu = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us), ("eu-west", &eu)]).await;

    let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-switchyard-region"), "eu-west");
    assert!(reply.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(us.stats().errors_injected, 1);
}

#[tokio::test]
async fn failover_follows_an_outage_started_and_stopped_at_run_time() {
    let us = quick_mock().spawn_local().await.unwrap();
    let eu = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us), ("eu-west", &eu)]).await;
    let region = |r: &reqwest::Response| header(r, "x-switchyard-region").to_owned();

    assert_eq!(
        region(&gw.chat(KEY_A, &hello("gpt-4o-mini")).await),
        "us-east"
    );
    us.start_outage(Outage::Drop);
    let during = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(during.status(), 200);
    assert_eq!(region(&during), "eu-west");
    us.stop_outage();
    assert_eq!(
        region(&gw.chat(KEY_A, &hello("gpt-4o-mini")).await),
        "us-east"
    );
}

#[tokio::test]
async fn when_every_region_is_down_the_error_names_each_region_tried() {
    let urls = [("us-east", dead_url().await), ("eu-west", dead_url().await)];
    let gw = TestGateway::from_toml(&config_for(&urls, "")).await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 503);
    assert!(header(&reply, "x-request-id").starts_with("req_"));
    let error = error_of(reply).await;
    assert_eq!(error["code"], "upstream_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("us-east/us-east-a"), "{message}");
    assert!(message.contains("eu-west/eu-west-a"), "{message}");
}

#[tokio::test]
async fn upstreams_answering_5xx_everywhere_give_502() {
    let us = quick_mock().errors(1.0, 503).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 502);
    let error = error_of(reply).await;
    assert_eq!(error["code"], "upstream_error");
    assert!(error["message"].as_str().unwrap().contains("answered 503"));
}

#[tokio::test]
async fn an_upstream_that_never_answers_gives_504() {
    let us = quick_mock().spawn_local().await.unwrap();
    us.start_outage(Outage::Hang);
    let gw =
        TestGateway::with_regions_and(&[("us-east", &us)], "[upstream]\ntimeout = \"300ms\"").await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 504);
    assert_eq!(error_of(reply).await["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_request_the_upstream_rejects_as_invalid_is_not_retried_elsewhere() {
    let us = quick_mock().spawn_local().await.unwrap();
    let eu = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us), ("eu-west", &eu)]).await;
    // No messages: the upstream answers 400, which every region would.
    let reply = gw.chat(KEY_A, &json!({ "model": "gpt-4o-mini" })).await;
    assert_eq!(reply.status(), 400);
    assert_eq!(header(&reply, "x-switchyard-region"), "us-east");
    let error = error_of(reply).await;
    assert_eq!(error["param"], "messages");
    assert_eq!(eu.stats().requests, 0);
}

#[tokio::test]
async fn a_dead_pooled_connection_is_retried_before_the_client_sees_anything() {
    // Like llama.cpp's server: keep-alive advertised, the connection dropped after an answer.
    let us = quick_mock()
        .drop_reused_connections()
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    for body in [
        hello_stream("gpt-4o-mini"),
        hello("gpt-4o-mini"),
        hello_stream("gpt-4o-mini"),
        hello("gpt-4o-mini"),
    ] {
        let reply = gw.chat(KEY_A, &body).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(header(&reply, "x-switchyard-region"), "us-east");
        reply.text().await.unwrap();
    }
    assert!(
        us.stats().connections_dropped >= 1,
        "the test must meet a dropped connection: {:?}",
        us.stats()
    );
}

#[tokio::test]
async fn the_upstream_key_comes_from_the_named_environment_variable() {
    // PATH is set wherever tests run; its value stands in for an upstream API key.
    let key = std::env::var("PATH").unwrap();
    let us = quick_mock().api_key(key).spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "").replace(
        "name = \"us-east-a\"",
        "name = \"us-east-a\"\n  api_key_env = \"PATH\"",
    );
    let gw = TestGateway::from_toml(&toml).await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
}

#[tokio::test]
async fn embeddings_come_back_as_base64_even_from_an_upstream_that_only_sends_floats() {
    let us = quick_mock()
        .embeddings_floats_only()
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let ask = |format: &str| {
        json!({
            "model": "text-embedding-3-small",
            "input": ["switch", "yard"],
            "dimensions": 8,
            "encoding_format": format,
        })
    };
    let reply = gw.post("/v1/embeddings", KEY_A, &ask("base64")).await;
    assert_eq!(reply.status(), 200);
    let b64: Value = reply.json().await.unwrap();
    let floats: Value = gw
        .post("/v1/embeddings", KEY_A, &ask("float"))
        .await
        .json()
        .await
        .unwrap();

    for i in 0..2 {
        let text = b64["data"][i]["embedding"]
            .as_str()
            .expect("a base64 string");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let expected: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, expected);
        assert_eq!(decoded.len(), 8);
    }
    assert_eq!(b64["usage"], floats["usage"]);
}

#[tokio::test]
async fn models_lists_the_configured_aliases() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let reply = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let list: Value = reply.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "chat-small", "text-embedding-3-small"]);
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    for path in ["/healthz", "/readyz"] {
        let reply = gw.client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        assert!(header(&reply, "x-request-id").starts_with("req_"));
    }
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_plain_request_cancels_the_upstream_request() {
    let us = MockUpstream::builder()
        .ttft(Duration::from_secs(30))
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let body = hello("gpt-4o-mini");
    let request = gw.chat(KEY_A, &body);
    // Give up once the upstream has the request.
    tokio::select! {
        _ = request => panic!("the mock answers only after 30 s"),
        _ = us.wait_for(Duration::from_secs(10), |s| s.chat_requests == 1) => {}
    }
    let stats = us
        .wait_for(Duration::from_secs(10), |s| s.plain_cancelled == 1)
        .await;
    assert_eq!(stats.plain_cancelled, 1, "{stats:?}");
    assert_eq!(stats.plain_completed, 0);
}

#[tokio::test]
async fn streams_ask_upstream_for_usage_but_only_those_who_asked_get_the_usage_chunk() {
    let us = quick_mock().answer_tokens(6).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;

    let plain_stream = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let body = plain_stream.text().await.unwrap();
    let seen = us.last_request().unwrap();
    assert_eq!(
        seen.pointer("/stream_options/include_usage"),
        Some(&json!(true))
    );
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e.contains("\"choices\":[]")),
        "no usage chunk for a client that did not ask: {body}"
    );
    assert_eq!(streamed_text(&body).split(' ').count(), 6);

    let mut asked = hello_stream("gpt-4o-mini");
    asked["stream_options"] = json!({ "include_usage": true });
    let body = gw.chat(KEY_B, &asked).await.text().await.unwrap();
    assert!(
        body.contains("\"choices\":[]"),
        "the usage chunk for one that asked"
    );
    assert!(body.contains("\"completion_tokens\":6"));
}

/// Legacy text completions (llama-index's `OpenAILike` defaults to them) pass through
/// the pipeline on chat aliases: limited, streamed, counted and audited like chat.
#[tokio::test]
async fn legacy_text_completions_pass_through_plain_and_streamed() {
    let us = quick_mock().answer_tokens(9).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let body = json!({"model": "gpt-4o-mini", "prompt": "Once upon a time", "max_tokens": 5});
    let reply = gw.post("/v1/completions", KEY_A, &body).await;
    if reply.status() != 200 {
        panic!("{}", reply.text().await.unwrap());
    }
    assert_eq!(header(&reply, "x-switchyard-region"), "us-east");
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(
        answer["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        5
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(us.last_path().unwrap(), "/v1/completions");

    let mut body = body;
    body["stream"] = json!(true);
    let reply = gw.post("/v1/completions", KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    let text = reply.text().await.unwrap();
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed.split(' ').count(), 5, "{streamed:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "the usage chunk is the client's to ask for"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Both were charged what they used, and audited at their endpoint.
    let mut record = Value::Null;
    for _ in 0..500 {
        record = gw.newest_record().await;
        if record["stream"] == true {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(record["stream"], true, "{record}");
    assert_eq!(record["endpoint"], "/v1/completions");
    assert_eq!(record["completion_tokens"], 5);

    // An embeddings alias is not served here.
    let body = json!({"model": "text-embedding-3-small", "prompt": "x"});
    let reply = gw.post("/v1/completions", KEY_A, &body).await;
    assert_eq!(reply.status(), 400);
}
