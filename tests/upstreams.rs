//! What real upstreams do that the happy path never shows: streams that stall, every
//! instance rate limiting, and the small parts of the surface clients probe first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard::streams::parse_events;

#[tokio::test]
async fn a_stalled_stream_is_ended_settled_and_held_against_its_instance() {
    let mock = quick_mock()
        .answer_tokens(20)
        .hang_after_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions_and(
        &[("us-east", &mock)],
        "[upstream]\nstream_idle_timeout = \"1s\"",
    )
    .await;
    let response = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    assert_eq!(response.status(), 200);
    let events = parse_events(&response.bytes().await.unwrap());
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_stalled");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("sent nothing for 1s"), "{message}");
    let streamed: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|c| Some(c.pointer("/choices/0/delta/content")?.as_str()?.to_string()))
        .collect();
    assert_eq!(streamed.split_whitespace().count(), 3, "{streamed}");

    // Settled: seat, slot and reservation are free; what was produced is charged.
    let tenant = gw.tenant("tenant-a").await;
    assert_eq!(tenant["in_flight"], 0);
    assert!(tenant["day"]["tokens"].as_u64().unwrap() > 3);
    let instance = gw.first_instance().await;
    assert_eq!(instance["in_flight"], 0);
    assert_eq!(instance["health"]["consecutive_failures"], 1);
    // The upstream's connection was closed: its generation is cancelled.
    let stats = mock
        .wait_for(Duration::from_secs(5), |s| s.streams_cancelled == 1)
        .await;
    assert_eq!(stats.streams_cancelled, 1);
}

#[tokio::test]
async fn every_upstream_rate_limiting_is_a_429_with_the_soonest_wait() {
    let mock = quick_mock().errors(1.0, 429).spawn_local().await.unwrap();
    mock.update_knobs(|k| k.retry_after_secs = 2);
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "2");
    assert_eq!(header(&response, "retry-after-ms"), "2000");
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_rate_limited");
    assert_eq!(error["type"], "requests");
    assert_eq!(gw.first_instance().await["health"]["ejections"], 0);
}

#[tokio::test]
async fn an_upstream_retry_after_of_any_shape_never_fails_the_gateway() {
    // A hand-written upstream that answers 429 with a nonsense retry-after, then 200.
    use axum::response::IntoResponse;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let wait = ["NaN", "-1", "1e999", "Wed, 21 Oct 2015 07:28:00 GMT", "0.5"][n % 5];
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", wait)],
                    axum::Json(json!({"error": {"message": "slow down", "type": "requests", "param": null, "code": null}})),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = TestGateway::from_toml(&config_for(&[("us-east", url)], "")).await;
    for _ in 0..5 {
        let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        assert_eq!(response.status(), 429);
        let wait: f64 = header(&response, "retry-after").parse().unwrap();
        assert!((0.0..=3600.0).contains(&wait));
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_model_is_retrieved_by_its_alias() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let get = |path: &str| gw.client.get(gw.url(path)).bearer_auth(KEY_A).send();
    let found = get("/v1/models/chat-small").await.unwrap();
    assert_eq!(found.status(), 200);
    let model: Value = found.json().await.unwrap();
    assert_eq!(model["id"], "chat-small");
    assert_eq!(model["object"], "model");
    let missing = get("/v1/models/gpt-5-turbo").await.unwrap();
    assert_eq!(missing.status(), 404);
    let error = error_of(missing).await;
    assert_eq!(error["code"], "model_not_found");
    let anonymous = gw
        .client
        .get(gw.url("/v1/models/chat-small"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_chat_without_messages_is_refused_as_openai_refuses_it() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let response = gw
        .chat(KEY_A, &json!({ "model": "gpt-4o-mini", "messages": [] }))
        .await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["message"], "[] is too short - 'messages'");
    assert_eq!(error["param"], "messages");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(mock.stats().chat_requests, 0, "nothing went upstream");
}

/// Regression: a connect timeout was a 504 saying "timed out after 0ns". Nothing could
/// be reached: that is a 503 that says how long the gateway tried.
#[tokio::test]
async fn an_upstream_that_never_accepts_is_unavailable_not_slow() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a
    // connection attempt hangs until the gateway's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let gw = TestGateway::from_toml(&config_for(
        &[("us-east", format!("http://{addr}/v1"))],
        "[upstream]\nconnect_timeout = \"300ms\"",
    ))
    .await;
    let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(response.status(), 503);
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("no connection within 300ms"), "{message}");
    drop((listener, fillers));
}

/// Regression: a hung instance (no response headers) cost its in-flight requests the
/// whole `upstream.timeout` (300 s) even after probes marked it down within seconds.
#[tokio::test]
async fn a_request_waiting_on_an_instance_that_leaves_rotation_goes_elsewhere() {
    let hung = quick_mock().spawn_local().await.unwrap();
    let healthy = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", hung.url()), ("eu-west", healthy.url())], "").replace(
        "interval = \"1h\"",
        "interval = \"300ms\"\ntimeout = \"200ms\"\nunhealthy_after = 1",
    );
    let gw = TestGateway::from_toml(&toml).await;
    hung.start_outage(switchyard::mock::Outage::Hang);
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        gw.chat(KEY_A, &hello("gpt-4o-mini")),
    )
    .await
    .expect("answered long before upstream.timeout");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-region"), "eu-west");
    let route = header(&response, "x-switchyard-route");
    assert!(
        route.contains("us-east-a"),
        "it was tried there first: {route}"
    );
}
