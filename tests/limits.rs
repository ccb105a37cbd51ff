//! Tenant limits, budgets and queues, end to end on real sockets: what a client sees when
//! it runs out, and what an operator changes at run time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchyard::mock::{MockHandle, MockUpstream};

/// A gateway in front of `mock` whose tier `pro` has `tier` (TOML lines), `seats` seats.
async fn gateway(mock: &MockHandle, tier: &str, seats: u32) -> TestGateway {
    TestGateway::from_toml(&config(&mock.url(), tier, seats)).await
}

fn config(url: &str, tier: &str, seats: u32) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[scheduler]
seats = {seats}

[health]
interval = "1h"

[tiers.pro]
{tier}

[tiers.enterprise]
share = 60

{tenants}
[[regions]]
name = "us-east"
  [[regions.instances]]
  name = "us-east-a"
  url = "{url}"

[[models]]
alias = "gpt-4o-mini"
"#,
        tenants = two_tenants(),
    )
}

/// "hello" costs 8 prompt tokens both by o200k_base and by the mock's count; with
/// `max_tokens` 10 and a mock that answers 10 tokens, estimate and usage agree: 18.
fn ten_tokens() -> Value {
    let mut body = hello("gpt-4o-mini");
    body["max_tokens"] = json!(10);
    body
}

fn mock_of(tokens: u32) -> MockUpstream {
    quick_mock().answer_tokens(tokens)
}

#[tokio::test]
async fn answers_carry_openai_rate_limit_headers_and_the_queue_time() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "rpm = 10\ntpm = 10000", 4).await;
    let reply = gw.chat(KEY_A, &ten_tokens()).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-ratelimit-limit-requests"), "10");
    assert_eq!(header(&reply, "x-ratelimit-remaining-requests"), "9");
    assert_eq!(header(&reply, "x-ratelimit-limit-tokens"), "10000");
    assert_eq!(header(&reply, "x-ratelimit-remaining-tokens"), "9982");
    assert!(header(&reply, "x-ratelimit-reset-requests").ends_with('s'));
    assert!(
        header(&reply, "x-switchyard-queue-ms")
            .parse::<u64>()
            .is_ok()
    );
}

/// A prompt too large to count where the request runs is counted on the blocking pool,
/// and its first request reads the vocabulary there too: the reservation is the exact
/// count all the same.
#[tokio::test]
async fn a_large_prompt_is_counted_exactly_off_the_runtime() {
    use serde_json::value::RawValue;
    use switchyard::admission::estimate::chat_prompt;
    use switchyard::domain::TokenizerKind;

    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "rpm = 10\ntpm = 10000000", 4).await;
    let text = "The yard sorts freight cars onto tracks by destination. ".repeat(2000);
    let mut body = ten_tokens();
    body["messages"] = json!([{"role": "user", "content": text}]);
    let messages = RawValue::from_string(body["messages"].to_string()).unwrap();
    let expected = chat_prompt(TokenizerKind::O200kBase, Some(&messages));
    assert!(expected > 20_000, "{expected}: really large");
    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 200);
    let remaining: u64 = header(&reply, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert_eq!(
        10_000_000 - remaining,
        expected + 10,
        "prompt and max_tokens"
    );
}

#[tokio::test]
async fn requests_over_the_rpm_get_429_with_an_honest_retry_after() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "rpm = 2", 4).await;
    for _ in 0..2 {
        assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 200);
    }
    let reply = gw.chat(KEY_A, &ten_tokens()).await;
    assert_eq!(reply.status(), 429);
    let wait_ms: u64 = header(&reply, "retry-after-ms").parse().unwrap();
    // One request comes back every 30 s.
    assert!((20_000..=30_000).contains(&wait_ms), "{wait_ms}");
    assert_eq!(
        header(&reply, "retry-after"),
        wait_ms.div_ceil(1000).to_string()
    );
    assert_eq!(header(&reply, "x-ratelimit-remaining-requests"), "0");
    let error = error_of(reply).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "requests");
    // The other tenant has its own window.
    assert_eq!(gw.chat(KEY_B, &ten_tokens()).await.status(), 200);
    assert_eq!(us.stats().chat_requests, 3);
}

#[tokio::test]
async fn a_request_larger_than_the_tpm_is_told_not_to_retry() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "tpm = 100", 4).await;
    let mut body = hello("gpt-4o-mini");
    body["max_tokens"] = json!(500);
    let reply = gw.chat(KEY_A, &body).await;
    assert_eq!(reply.status(), 429);
    assert_eq!(header(&reply, "x-should-retry"), "false");
    let error = error_of(reply).await;
    assert_eq!(error["type"], "tokens");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit")
    );
}

#[tokio::test]
async fn a_spent_budget_is_insufficient_quota_and_not_worth_retrying() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "daily_tokens = 40", 4).await;
    assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 200);
    assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 200);
    let reply = gw.chat(KEY_A, &ten_tokens()).await;
    assert_eq!(reply.status(), 429);
    assert_eq!(header(&reply, "x-should-retry"), "false");
    let error = error_of(reply).await;
    assert_eq!(error["code"], "insufficient_quota");
    assert_eq!(error["type"], "insufficient_quota");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("36 tokens used of 40")
    );

    // An operator resets it, and the tenant is served again.
    let reset = gw
        .admin(Method::POST, "/admin/tenants/tenant-a/reset-budget", None)
        .await;
    assert_eq!(reset.status(), 200);
    assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 200);
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_overspend_a_budget_that_covers_fifty() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let gw = gateway(&us, "daily_tokens = 900", 64).await;
    let body = ten_tokens();
    let replies = futures_util::future::join_all((0..200).map(|_| gw.chat(KEY_A, &body))).await;
    let ok = replies.iter().filter(|r| r.status() == 200).count();
    let quota = replies.iter().filter(|r| r.status() == 429).count();
    assert_eq!(ok, 50, "exactly the budget's worth was served");
    assert_eq!(quota, 150);
    let day = &gw.tenant("tenant-a").await["day"];
    assert_eq!(day["tokens"], 900);
    assert_eq!(day["reserved_tokens"], 0);
    assert_eq!(us.stats().chat_requests, 50);
}

#[tokio::test]
async fn usage_is_reconciled_with_what_the_upstream_reports() {
    // The mock answers 4 tokens; the reservation assumed the cap of 100.
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "tpm = 1000\nmax_tokens_cap = 100", 4).await;
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-ratelimit-remaining-tokens"), "892");
    let tenant = gw.tenant("tenant-a").await;
    assert_eq!(tenant["day"]["tokens"], 12, "8 prompt + 4 completion");
    assert_eq!(tenant["tokens_available"], 988, "the unused 96 came back");
}

#[tokio::test]
async fn a_stream_cut_off_is_charged_what_it_produced() {
    let us = mock_of(20)
        .fail_after_tokens(3)
        .spawn_local()
        .await
        .unwrap();
    let gw = gateway(&us, "tpm = 1000\nmax_tokens_cap = 100", 4).await;
    let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let body = reply.text().await.unwrap();
    assert!(body.contains("upstream_stream_error"));
    let tenant = gw.tenant("tenant-a").await;
    let charged = tenant["day"]["tokens"].as_u64().unwrap();
    // 8 prompt tokens plus three words, counted by the tokenizer.
    assert!((11..=16).contains(&charged), "charged {charged}");
    assert_eq!(tenant["in_flight"], 0);
}

#[tokio::test]
async fn nothing_is_charged_when_no_upstream_answers() {
    let urls = [("us-east", dead_url().await)];
    let toml = config(&urls[0].1, "tpm = 1000", 4);
    let gw = TestGateway::from_toml(&toml).await;
    assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 503);
    let tenant = gw.tenant("tenant-a").await;
    assert_eq!(tenant["tokens_available"], 1000);
    assert_eq!(tenant["day"]["tokens"], 0);
}

#[tokio::test]
async fn a_request_that_waits_past_max_wait_gets_429_queue_timeout() {
    let slow = MockUpstream::builder()
        .ttft(Duration::from_secs(5))
        .spawn_local()
        .await
        .unwrap();
    let gw = gateway(&slow, "max_wait = \"300ms\"", 1).await;
    let body = hello("gpt-4o-mini");
    let holder = gw.chat(KEY_A, &body);
    let waiter = async {
        slow.wait_for(Duration::from_secs(5), |s| s.chat_requests == 1)
            .await;
        gw.chat(KEY_B, &body).await
    };
    let reply = tokio::select! {
        _ = holder => panic!("the slow answer takes 5 s"),
        reply = waiter => reply,
    };
    assert_eq!(reply.status(), 429);
    assert!(header(&reply, "retry-after-ms").parse::<u64>().unwrap() >= 1000);
    assert_eq!(error_of(reply).await["code"], "queue_timeout");
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let slow = MockUpstream::builder()
        .ttft(Duration::from_secs(5))
        .spawn_local()
        .await
        .unwrap();
    let gw = gateway(&slow, "max_wait = \"60s\"", 1).await;
    let scheduler = gw.daemon.gateway().scheduler().clone();
    let body = hello("gpt-4o-mini");
    let holder = gw.chat(KEY_A, &body);
    let queued = async {
        slow.wait_for(Duration::from_secs(5), |s| s.chat_requests == 1)
            .await;
        let waiting = gw.chat(KEY_B, &body);
        tokio::select! {
            _ = waiting => panic!("no seat is free"),
            _ = async {
                while scheduler.queued() == 0 {
                    tokio::task::yield_now().await;
                }
            } => {}
        }
        // The waiting request's future is dropped here: its client went away.
    };
    tokio::select! {
        _ = holder => panic!("the slow answer takes 5 s"),
        _ = queued => {}
    }
    for _ in 0..1000 {
        if scheduler.queued() == 0 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test]
async fn pausing_a_tenant_refuses_it_with_403_until_resumed() {
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "", 4).await;
    let paused = gw
        .admin(Method::POST, "/admin/tenants/tenant-a/pause", None)
        .await;
    assert_eq!(paused.status(), 200);
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(reply.status(), 403);
    assert_eq!(header(&reply, "x-should-retry"), "false");
    assert_eq!(error_of(reply).await["code"], "tenant_paused");
    assert_eq!(gw.chat(KEY_B, &hello("gpt-4o-mini")).await.status(), 200);
    gw.admin(Method::POST, "/admin/tenants/tenant-a/resume", None)
        .await;
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
}

#[tokio::test]
async fn limits_and_tiers_changed_at_run_time_apply_to_the_next_request() {
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "rpm = 100", 4).await;
    let changed = gw
        .admin(
            Method::POST,
            "/admin/tenants/tenant-a/limits",
            Some(json!({ "rpm": 1 })),
        )
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 429);

    let moved = gw
        .admin(
            Method::POST,
            "/admin/tenants/tenant-b/tier",
            Some(json!({ "tier": "enterprise" })),
        )
        .await;
    assert_eq!(moved.status(), 200);
    let tenant = gw.tenant("tenant-b").await;
    assert_eq!(tenant["tier"], "enterprise");
    assert_eq!(
        tenant["limits"]["rpm"],
        Value::Null,
        "enterprise sets no rpm"
    );

    let unknown = gw
        .admin(
            Method::POST,
            "/admin/tenants/tenant-b/tier",
            Some(json!({ "tier": "gold" })),
        )
        .await;
    assert_eq!(unknown.status(), 400);
    assert!(
        error_of(unknown).await["message"]
            .as_str()
            .unwrap()
            .contains("gold")
    );
}

#[tokio::test]
async fn the_admin_api_refuses_tenant_keys_and_missing_tokens() {
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "", 4).await;
    let url = format!("{}/admin/tenants", gw.daemon.admin_url().unwrap());
    let none = gw.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let tenant_key = gw.client.get(&url).bearer_auth(KEY_A).send().await.unwrap();
    assert_eq!(tenant_key.status(), 401);
    assert_eq!(error_of(tenant_key).await["code"], "invalid_admin_token");
    let listing: Value = gw.admin_json(Method::GET, "/admin/tenants", None).await;
    assert_eq!(listing["tenants"].as_array().unwrap().len(), 2);
    let missing = gw.admin(Method::GET, "/admin/tenants/nobody", None).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn usage_and_budgets_survive_a_restart() {
    let us = mock_of(10).spawn_local().await.unwrap();
    let toml = config(&us.url(), "daily_tokens = 1000", 4);
    let gw = TestGateway::from_toml(&toml).await;
    for _ in 0..3 {
        assert_eq!(gw.chat(KEY_A, &ten_tokens()).await.status(), 200);
    }
    let data = gw.stop().await;

    let gw = TestGateway::from_toml_in(&toml, data).await;
    let tenant = gw.tenant("tenant-a").await;
    assert_eq!(tenant["day"]["tokens"], 54);
    assert_eq!(tenant["day"]["requests"], 3);
    assert_eq!(tenant["month"]["tokens"], 54);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_ctl_drives_the_admin_api() {
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "rpm = 100", 4).await;
    let url = gw.daemon.admin_url().unwrap();
    let ctl = |args: &[&str]| ctl(&url, args);
    let out = tokio::task::block_in_place(|| ctl(&["limits", "tenant-a", "--rpm", "7"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.tenant("tenant-a").await["limits"]["rpm"], 7);

    let out = tokio::task::block_in_place(|| ctl(&["pause", "tenant-b"]));
    assert!(out.status.success());
    assert_eq!(gw.tenant("tenant-b").await["paused"], true);

    let out = tokio::task::block_in_place(|| ctl(&["tenants"]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("tenant-a"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tenant-b") && l.contains("yes")),
        "{table}"
    );

    let out = tokio::task::block_in_place(|| ctl(&["tier", "tenant-a", "gold"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tier is named \"gold\""));
}

#[tokio::test]
async fn a_completed_stream_is_charged_the_upstreams_exact_usage() {
    // Each mock word is one token in its usage; the BPE would count the final period as
    // a token of its own, so an estimate would charge one more.
    let us = mock_of(4).spawn_local().await.unwrap();
    let gw = gateway(&us, "tpm = 1000\nmax_tokens_cap = 100", 4).await;
    let body = gw
        .chat(KEY_A, &hello_stream("gpt-4o-mini"))
        .await
        .text()
        .await
        .unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let tenant = gw.tenant("tenant-a").await;
    assert_eq!(
        tenant["day"]["tokens"], 12,
        "8 prompt + 4 completion, from the usage chunk"
    );
}

/// A batch line through the one pipeline waits below every tier: with the only seat
/// taken, a live request that arrives after it still goes first.
#[tokio::test]
async fn a_batch_line_waits_for_seats_no_live_request_wants() {
    use switchyard::domain::{Directives, ModelKind};
    use switchyard::gateway::Inbound;
    let mock = quick_mock().spawn_local().await.unwrap();
    let config = config_for(&[("us-east", mock.url())], "")
        .replace("[health]", "[scheduler]\nseats = 1\n\n[health]");
    let gw = TestGateway::from_toml(&config).await;
    let gateway = gw.daemon.gateway().clone();
    let inbound = |id: &str, batch: bool| Inbound {
        request_id: id.into(),
        endpoint: if batch {
            "/v1/batches"
        } else {
            "/v1/chat/completions"
        },
        tenant: "tenant-a".into(),
        key_id: "test".into(),
        kind: ModelKind::Chat,
        fields: serde_json::from_value(hello("gpt-4o-mini")).unwrap(),
        directives: Directives {
            no_store: true,
            ..Directives::default()
        },
        session: None,
        pin: None,
        batch,
        arrival: tokio::time::Instant::now(),
    };
    // The only seat is held by a request the upstream does not answer.
    mock.start_outage(switchyard::mock::Outage::Hang);
    let holder = tokio::spawn({
        let gateway = gateway.clone();
        let request = inbound("req_holder", false);
        async move { gateway.serve(request).await.map(|_| ()) }
    });
    mock.wait_for(Duration::from_secs(10), |s| s.requests >= 1)
        .await;
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let run = |id: &'static str, batch: bool| {
        let (gateway, done, request) = (gateway.clone(), done.clone(), inbound(id, batch));
        tokio::spawn(async move {
            let reply = gateway.serve(request).await;
            let _ = done.send((id, reply.map(|r| r.status.as_u16())));
        })
    };
    let line = run("req_line", true);
    for _ in 0..500 {
        if gateway.scheduler().queued() == 1 {
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    let live = run("req_live", false);
    for _ in 0..500 {
        if gateway.scheduler().queued() == 2 {
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(
        gateway.scheduler().queued(),
        2,
        "both wait for the one seat"
    );
    mock.stop_outage();
    holder.abort();
    let first = finished.recv().await.unwrap();
    let second = finished.recv().await.unwrap();
    assert_eq!(first, ("req_live", Ok(200)), "live traffic goes first");
    assert_eq!(second, ("req_line", Ok(200)));
    line.await.unwrap();
    live.await.unwrap();
    let levels = gateway.scheduler().levels();
    let batch = levels.iter().find(|l| l.tier == "batch").unwrap();
    assert_eq!((batch.seats, batch.dispatched), (0, 1));
}
