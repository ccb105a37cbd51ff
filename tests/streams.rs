//! Streams as first-class objects: one chunk log per answer, the client that asked and
//! any number of watchers reading it through their own cursors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use switchyard::mock::MockUpstream;

fn paced(tokens_per_sec: f64, answer: u32) -> MockUpstream {
    MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(tokens_per_sec)
        .answer_tokens(answer)
}

/// The `data:` payloads of an SSE body whose events may carry `id:` lines.
fn payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

async fn watch(gw: &TestGateway, key: &str, id: &str, last: Option<usize>) -> reqwest::Response {
    let mut request = gw
        .client
        .get(gw.url(&format!("/v1/streams/{id}")))
        .bearer_auth(key);
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_watchers_see_exactly_what_the_client_sees() {
    let us = paced(100.0, 30).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&origin, "x-switchyard-stream-id").to_string();
    let watchers = futures_util::future::join_all((0..100).map(|_| async {
        let reply = watch(&gw, KEY_A, &id, None).await;
        assert_eq!(reply.status(), 200);
        reply.text().await.unwrap()
    }));
    let (origin_body, watched) = tokio::join!(origin.text(), watchers);
    let origin_events = payloads(&origin_body.unwrap());
    assert_eq!(origin_events.last().map(String::as_str), Some("[DONE]"));
    for body in watched {
        assert_eq!(payloads(&body), origin_events);
    }
    assert_eq!(
        us.stats().streams_started,
        1,
        "one upstream call for all readers"
    );
}

#[tokio::test]
async fn a_watcher_resumes_after_its_last_event_id() {
    let us = paced(0.0, 10).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&origin, "x-switchyard-stream-id").to_string();
    let all = payloads(&origin.text().await.unwrap());
    // Finished streams stay readable; resume after event 4.
    let body = watch(&gw, KEY_A, &id, Some(4)).await.text().await.unwrap();
    assert!(body.starts_with("id: 5\n"), "{body}");
    assert_eq!(payloads(&body), all[5..].to_vec());
}

#[tokio::test]
async fn another_tenant_cannot_see_the_stream() {
    let us = paced(0.0, 5).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&origin, "x-switchyard-stream-id").to_string();
    origin.text().await.unwrap();
    let reply = watch(&gw, KEY_B, &id, None).await;
    assert_eq!(reply.status(), 404);
    assert_eq!(error_of(reply).await["code"], "stream_not_found");
    assert_eq!(watch(&gw, KEY_A, "str_nope", None).await.status(), 404);
}

#[tokio::test]
async fn a_watcher_keeps_the_generation_alive_and_the_last_to_leave_cancels_it() {
    let us = paced(20.0, 400).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let mut origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&origin, "x-switchyard-stream-id").to_string();
    origin.chunk().await.unwrap();
    let mut watcher = watch(&gw, KEY_A, &id, None).await;
    watcher.chunk().await.unwrap();
    drop(origin);
    // The client that asked left; the watcher still reads new tokens.
    let mut seen = String::new();
    for _ in 0..10 {
        seen.push_str(&String::from_utf8_lossy(
            &watcher.chunk().await.unwrap().unwrap(),
        ));
    }
    assert!(seen.contains("\"content\""));
    assert_eq!(us.stats().streams_cancelled, 0);
    drop(watcher);
    let stats = us
        .wait_for(Duration::from_secs(10), |s| s.streams_cancelled == 1)
        .await;
    assert_eq!(stats.streams_cancelled, 1, "cancelled when nobody listens");
    // And charged what it produced.
    let charged = gw.tenant("tenant-a").await["day"]["tokens"]
        .as_u64()
        .unwrap();
    assert!(charged > 8, "{charged}");
    // Its audit record says how it ended, with what it used, counted by the gateway.
    let audit: serde_json::Value = gw
        .admin_json(reqwest::Method::GET, "/admin/audit?kind=request", None)
        .await;
    let record = &audit["records"][0];
    assert_eq!(record["error"], "stream_cancelled", "{audit}");
    assert_eq!(record["estimated"], true);
}

#[tokio::test]
async fn an_operator_can_follow_any_tenants_stream() {
    let us = paced(0.0, 5).spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&origin, "x-switchyard-stream-id").to_string();
    let all = payloads(&origin.text().await.unwrap());
    let reply = gw
        .admin(reqwest::Method::GET, &format!("/admin/streams/{id}"), None)
        .await;
    assert_eq!(reply.status(), 200);
    assert_eq!(payloads(&reply.text().await.unwrap()), all);
    let tenant_key = gw
        .client
        .get(format!(
            "{}/admin/streams/{id}",
            gw.daemon.admin_url().unwrap()
        ))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(tenant_key.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_an_http2_upstream_share_one_connection_a_worker() {
    let us = paced(50.0, 20).spawn_local().await.unwrap();
    let url = us.url();
    let toml = config_for(&[("us-east", url.clone())], "")
        .replace(
            &format!("url = \"{url}\""),
            &format!("url = \"{url}\"\n  http2 = true"),
        )
        .replace("[server]\n", "[server]\nworkers = 2\n");
    assert!(toml.contains("http2 = true") && toml.contains("workers = 2"));
    let gw = TestGateway::from_toml(&toml).await;
    // One request on each worker first (client connections go to the workers in
    // turn): twenty at a cold start may race to open a worker's connection (the client
    // then keeps the spare), which is not what this checks.
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    let another_connection = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(another_connection.status(), 200);
    assert_eq!(us.stats().connections, 2, "one connection a worker");
    let bodies = futures_util::future::join_all((0..20).map(|_| async {
        let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
        assert_eq!(reply.status(), 200);
        reply.text().await.unwrap()
    }))
    .await;
    for body in &bodies {
        assert_eq!(payloads(body).last().map(String::as_str), Some("[DONE]"));
    }
    let stats = us.stats();
    assert_eq!(stats.streams_completed, 20);
    assert_eq!(
        stats.connections, 2,
        "twenty streams, one HTTP/2 connection for each of the two workers"
    );
    // Plain requests use them too.
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    assert_eq!(us.stats().connections, 2);
}
