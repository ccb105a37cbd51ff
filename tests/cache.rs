//! The read side on real sockets: deterministic answers served from the cache (plain and
//! streamed), opt-outs, expiry, persistence across restarts, coalescing of identical
//! requests in flight, accounting of hits, and the operator's stats and purge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::MockUpstream;

fn settled(content: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{ "role": "user", "content": content }]
    })
}

fn settled_stream(content: &str) -> Value {
    let mut body = settled(content);
    body["stream"] = json!(true);
    body
}

async fn chat_with(
    gw: &TestGateway,
    key: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// A mock that takes `ms` to start answering: long enough for requests to meet in flight.
async fn slow_mock(ms: u64) -> switchyard::mock::MockHandle {
    MockUpstream::builder()
        .ttft(Duration::from_millis(ms))
        .tokens_per_sec(0.0)
        .answer_tokens(8)
        .spawn_local()
        .await
        .unwrap()
}

async fn cache_stats(gw: &TestGateway) -> Value {
    gw.admin_json(reqwest::Method::GET, "/admin/cache", None)
        .await
}

/// The answer's text and what the cache did.
async fn answer(response: reqwest::Response) -> (String, String) {
    assert_eq!(response.status(), 200);
    let cache = header(&response, "x-switchyard-cache").to_string();
    (response.text().await.unwrap(), cache)
}

#[tokio::test]
async fn a_settled_answer_is_served_again_from_the_cache() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let (first, cache) = answer(gw.chat(KEY_A, &settled("hi")).await).await;
    assert_eq!(cache, "miss");
    let again = gw.chat(KEY_A, &settled("hi")).await;
    assert_eq!(header(&again, "x-switchyard-route"), "cache");
    assert!(header(&again, "age").parse::<u64>().is_ok());
    let (second, cache) = answer(again).await;
    assert_eq!(cache, "hit");
    assert_eq!(second, first);
    assert_eq!(us.stats().chat_requests, 1);

    // Written differently, the same request is the same entry.
    let reordered: Value = serde_json::from_str(
        r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"gpt-4o-mini"}"#,
    )
    .unwrap();
    assert_eq!(answer(gw.chat(KEY_A, &reordered).await).await.1, "hit");
    // Another tenant has its own entries; a sampled request is never cached.
    assert_eq!(answer(gw.chat(KEY_B, &settled("hi")).await).await.1, "miss");
    assert_eq!(
        answer(gw.chat(KEY_A, &hello("gpt-4o-mini")).await).await.1,
        "bypass"
    );
    assert_eq!(us.stats().chat_requests, 3);
}

#[tokio::test]
async fn a_cached_stream_is_replayed_as_a_stream() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let (first, cache) = answer(gw.chat(KEY_A, &settled_stream("hi")).await).await;
    assert_eq!(cache, "miss");
    // The cache keeps the stream once it is complete.
    let mut replay = String::new();
    for _ in 0..50 {
        let response = gw.chat(KEY_A, &settled_stream("hi")).await;
        assert_eq!(
            header(&response, "content-type"),
            "text/event-stream; charset=utf-8"
        );
        let (body, cache) = answer(response).await;
        if cache == "hit" {
            replay = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sse_data(&replay), sse_data(&first));
    assert!(!replay.contains("\"usage\":{"), "usage was not asked for");
    assert_eq!(sse_data(&replay).last().map(String::as_str), Some("[DONE]"));

    // A client that asks for usage gets the upstream's usage chunk from the cache too.
    let mut asking = settled_stream("hi");
    asking["stream_options"] = json!({ "include_usage": true });
    let (with_usage, cache) = answer(gw.chat(KEY_A, &asking).await).await;
    assert_eq!(cache, "hit");
    assert!(with_usage.contains("\"usage\":{"), "{with_usage}");
    assert_eq!(us.stats().streams_started, 1);
}

#[tokio::test]
async fn clients_opt_out_with_no_store_and_ask_fresh_with_no_cache() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let no_store = [("cache-control", "no-store")];
    for _ in 0..2 {
        let reply = chat_with(&gw, KEY_A, &settled("hi"), &no_store).await;
        assert_eq!(answer(reply).await.1, "bypass");
    }
    assert_eq!(us.stats().chat_requests, 2);
    // no-store kept nothing: the next plain request misses.
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "miss");
    let no_cache = [("cache-control", "no-cache")];
    let reply = chat_with(&gw, KEY_A, &settled("hi"), &no_cache).await;
    assert_eq!(answer(reply).await.1, "miss");
    assert_eq!(us.stats().chat_requests, 4);
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "hit");

    // The explicit switch: on for a sampled request, off for a settled one.
    let on = [("x-switchyard-cache", "on")];
    let sampled = hello("gpt-4o-mini");
    assert_eq!(
        answer(chat_with(&gw, KEY_A, &sampled, &on).await).await.1,
        "miss"
    );
    assert_eq!(
        answer(chat_with(&gw, KEY_A, &sampled, &on).await).await.1,
        "hit"
    );
    let off = [("x-switchyard-cache", "off")];
    let reply = chat_with(&gw, KEY_A, &settled("hi"), &off).await;
    assert_eq!(answer(reply).await.1, "bypass");
}

#[tokio::test]
async fn answers_expire_after_the_ttl() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &us)], "[cache]\nttl = \"300ms\"").await;
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "miss");
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "hit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "miss");
    assert_eq!(us.stats().chat_requests, 2);
    let stats = cache_stats(&gw).await;
    assert_eq!(stats["expirations"], 1, "{stats}");
}

#[tokio::test]
async fn ten_identical_requests_in_flight_make_one_upstream_call() {
    let us = slow_mock(300).await;
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let replies = futures_util::future::join_all(
        (0..10).map(|_| async { answer(gw.chat(KEY_A, &settled("together")).await).await }),
    )
    .await;
    assert_eq!(us.stats().chat_requests, 1, "one upstream call for all ten");
    let misses = replies.iter().filter(|(_, c)| c == "miss").count();
    assert_eq!(misses, 1);
    assert!(replies.iter().all(|(body, _)| body == &replies[0].0));

    // Streams too: the followers read the leader's chunk log.
    let replies = futures_util::future::join_all(
        (0..10).map(|_| async { answer(gw.chat(KEY_A, &settled_stream("together")).await).await }),
    )
    .await;
    assert_eq!(
        us.stats().streams_started,
        1,
        "one upstream stream for all ten"
    );
    let first = sse_data(&replies[0].0);
    assert_eq!(first.last().map(String::as_str), Some("[DONE]"));
    assert!(replies.iter().all(|(body, _)| sse_data(body) == first));
    let view = cache_stats(&gw).await;
    assert_eq!(view["coalesced"], 18, "{view}");
}

#[tokio::test]
async fn a_failed_leader_leaves_its_followers_to_go_on_their_own() {
    let us = slow_mock(200).await;
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    // A first request reads the tokenizer's vocabulary; the leader must not spend its
    // 50 ms on that.
    answer(gw.chat(KEY_A, &settled("warm")).await).await;
    // The leader's client leaves before the answer; the follower still gets one.
    let body = settled("left");
    let leader = tokio::time::timeout(Duration::from_millis(50), gw.chat(KEY_A, &body));
    let follower = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer(gw.chat(KEY_A, &settled("left")).await).await
    };
    let (gone, (body, _)) = tokio::join!(leader, follower);
    assert!(gone.is_err(), "the leader was meant to give up");
    assert!(body.contains("\"choices\""), "{body}");
    // The leader's call was cancelled with it; the follower made its own.
    let stats = us.stats();
    assert_eq!((stats.plain_cancelled, stats.chat_requests), (1, 3));
}

#[tokio::test]
async fn hits_count_as_requests_but_not_as_tokens() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let reply = gw
        .admin(
            reqwest::Method::POST,
            "/admin/tenants/tenant-a/limits",
            Some(json!({ "rpm": 3 })),
        )
        .await;
    assert_eq!(reply.status(), 200);
    answer(gw.chat(KEY_A, &settled("hi")).await).await;
    let after_miss = gw.tenant("tenant-a").await["month"].clone();
    for _ in 0..2 {
        assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "hit");
    }
    let month = gw.tenant("tenant-a").await["month"].clone();
    assert_eq!(month["requests"], 3);
    assert_eq!(month["tokens"], after_miss["tokens"], "hits used no tokens");
    let refused = gw.chat(KEY_A, &settled("hi")).await;
    assert_eq!(refused.status(), 429, "the fourth request is over the RPM");
    assert_eq!(error_of(refused).await["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn with_hits_use_tokens_hits_are_charged_their_tokens() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw =
        TestGateway::with_regions_and(&[("us-east", &us)], "[cache]\nhits_use_tokens = true").await;
    answer(gw.chat(KEY_A, &settled("hi")).await).await;
    let once = gw.tenant("tenant-a").await["month"]["tokens"]
        .as_u64()
        .unwrap();
    assert!(once > 0);
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "hit");
    let twice = gw.tenant("tenant-a").await["month"]["tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(twice, 2 * once);
}

#[tokio::test]
async fn kept_answers_survive_a_restart() {
    let us = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "");
    let gw = TestGateway::from_toml(&toml).await;
    let (first, _) = answer(gw.chat(KEY_A, &settled("hi")).await).await;
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&toml, data).await;
    let (again, cache) = answer(gw.chat(KEY_A, &settled("hi")).await).await;
    assert_eq!(cache, "hit");
    assert_eq!(again, first);
    assert_eq!(us.stats().chat_requests, 1);
}

#[tokio::test]
async fn operators_see_stats_and_purge_per_tenant_or_all() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    for key in [KEY_A, KEY_B] {
        answer(gw.chat(key, &settled("hi")).await).await;
        answer(gw.chat(key, &settled("hi")).await).await;
    }
    let view = cache_stats(&gw).await;
    assert_eq!(
        (view["entries"].as_u64(), view["hits"].as_u64()),
        (Some(2), Some(2))
    );
    let scopes: Vec<&str> = view["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["scope"].as_str())
        .collect();
    assert!(scopes.contains(&"tenant-a") && scopes.contains(&"tenant-b"));

    let purged = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({ "tenant": "tenant-a" })),
        )
        .await;
    assert_eq!(purged.status(), 200);
    let purged: Value = purged.json().await.unwrap();
    assert_eq!(purged["cache"]["entries"], 1);
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "miss");
    assert_eq!(answer(gw.chat(KEY_B, &settled("hi")).await).await.1, "hit");

    let unknown = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({ "tenant": "nobody" })),
        )
        .await;
    assert_eq!(unknown.status(), 400);
    let all = gw
        .admin(reqwest::Method::POST, "/admin/cache/purge", None)
        .await;
    let all: Value = all.json().await.unwrap();
    assert_eq!(all["cache"]["entries"], 0);
    // The purge is on the record with who did it.
    let snapshot: Value = gw
        .admin_json(reqwest::Method::GET, "/admin/snapshot", None)
        .await;
    let purges = snapshot["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"].as_str().unwrap_or("").contains("purged"))
        .count();
    assert_eq!(purges, 2);
}

#[tokio::test]
async fn embeddings_are_cached_in_the_encoding_asked_for() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let floats = json!({ "model": "text-embedding-3-small", "input": "hello" });
    let mut base64 = floats.clone();
    base64["encoding_format"] = json!("base64");
    let embed = |body: Value| {
        let gw = &gw;
        async move { answer(gw.post("/v1/embeddings", KEY_A, &body).await).await }
    };
    let (first, cache) = embed(floats.clone()).await;
    assert_eq!(cache, "miss");
    let (encoded, cache) = embed(base64.clone()).await;
    assert_eq!(cache, "miss", "another encoding is another answer");
    assert_eq!(embed(floats).await, (first, "hit".to_string()));
    assert_eq!(embed(base64).await, (encoded, "hit".to_string()));
    assert_eq!(us.stats().embeddings_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_the_cache_and_purges_it() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    answer(gw.chat(KEY_A, &settled("hi")).await).await;
    answer(gw.chat(KEY_A, &settled("hi")).await).await;
    let url = gw.daemon.admin_url().unwrap();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("ctl")
            .args(["--url", &url])
            .args(args)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = tokio::task::block_in_place(|| ctl(&["cache"]));
    assert!(shown.starts_with("1 answer kept"), "{shown}");
    assert!(
        shown.contains("hits 1, coalesced 0, misses 1 (hit ratio 50%)"),
        "{shown}"
    );
    assert!(shown.contains("tenant-a"), "{shown}");
    let purged = tokio::task::block_in_place(|| ctl(&["cache", "purge", "--tenant", "tenant-a"]));
    assert_eq!(
        purged.trim(),
        "tenant-a's cache is purged: 1 answer dropped"
    );
    assert_eq!(answer(gw.chat(KEY_A, &settled("hi")).await).await.1, "miss");
}

/// Regression: ten identical requests behind a failing leader waited one failure time
/// each (6, 8, … 24 s), one new leader after another, outside every queue bound.
#[tokio::test]
async fn followers_of_a_failed_leader_go_upstream_together() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // An upstream whose every answer fails after 2 s: one after another, seven take 14 s.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = TestGateway::from_toml(&config_for(&[("us-east", url)], "")).await;
    let body = settled("doomed");
    let leader = gw.chat(KEY_A, &body);
    let followers = async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let requests = (0..6).map(|_| gw.chat(KEY_A, &body));
        futures_util::future::join_all(requests).await
    };
    let together = async { tokio::join!(leader, followers) };
    let (leader, followers) = tokio::time::timeout(Duration::from_secs(10), together)
        .await
        .expect("the followers retried together, not one after another");
    assert_eq!(leader.status(), 502);
    for follower in followers {
        // Each went on its own: upstream (502), or refused once the instance was
        // ejected for the failures (503).
        assert!(follower.status().is_server_error(), "{}", follower.status());
        error_of(follower).await;
    }
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the followers went upstream themselves"
    );
}
