//! The gateway's records on real sockets and real sled files: keys made, rotated and
//! revoked at run time; the audit log complete and queryable; operator overrides and
//! keys surviving restarts and `kill -9`; tenants kept apart on every id endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::MockUpstream;

async fn admin_json(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let reply = gw.admin(method, path, body).await;
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn admin_post(gw: &TestGateway, path: &str, body: Value) -> (u16, Value) {
    admin_json(gw, reqwest::Method::POST, path, Some(body)).await
}

async fn audit(gw: &TestGateway, query: &str) -> Vec<Value> {
    let (status, body) = admin_json(
        gw,
        reqwest::Method::GET,
        &format!("/admin/audit?{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn keys_are_made_rotated_and_revoked_at_run_time_and_survive_a_restart() {
    let us = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "");
    let gw = TestGateway::from_toml(&toml).await;
    let (status, made) = admin_post(
        &gw,
        "/admin/keys",
        json!({ "tenant": "tenant-a", "name": "ci", "expires": "1h" }),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sy-") && key.len() > 40);
    assert!(id.starts_with("key_"));
    assert_eq!(gw.chat(&key, &hello("gpt-4o-mini")).await.status(), 200);

    // Listed without the key or its digest.
    let (_, listed) = admin_json(
        &gw,
        reqwest::Method::GET,
        "/admin/keys?tenant=tenant-a",
        None,
    )
    .await;
    let text = listed.to_string();
    assert!(text.contains(&id) && text.contains("\"active\""));
    assert!(!text.contains(&key) && !text.contains("sha256:"), "{text}");
    let (status, _) = admin_post(&gw, "/admin/keys", json!({ "tenant": "nobody" })).await;
    assert_eq!(status, 404);

    // Rotation with a grace: both work, then only the new one.
    let (status, rotated) = admin_post(
        &gw,
        &format!("/admin/keys/{id}/rotate"),
        json!({ "grace": "300ms" }),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_string();
    let new_id = rotated["id"].as_str().unwrap().to_string();
    assert_eq!(rotated["replaces"], id.as_str());
    assert_eq!(gw.chat(&new_key, &hello("gpt-4o-mini")).await.status(), 200);
    assert_eq!(gw.chat(&key, &hello("gpt-4o-mini")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = gw.chat(&key, &hello("gpt-4o-mini")).await;
    assert_eq!(expired.status(), 401);
    let error = error_of(expired).await;
    assert_eq!(error["code"], "expired_api_key");
    assert!(error["message"].as_str().unwrap().contains(&id));

    // A second key, revoked: it stops at once.
    let (_, other) = admin_post(&gw, "/admin/keys", json!({ "tenant": "tenant-b" })).await;
    let other_key = other["key"].as_str().unwrap().to_string();
    let other_id = other["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.chat(&other_key, &hello("gpt-4o-mini")).await.status(),
        200
    );
    let (status, _) = admin_post(&gw, &format!("/admin/keys/{other_id}/revoke"), json!({})).await;
    assert_eq!(status, 200);
    let refused = gw.chat(&other_key, &hello("gpt-4o-mini")).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(error_of(refused).await["code"], "invalid_api_key");
    let (status, _) = admin_post(&gw, &format!("/admin/keys/{other_id}/revoke"), json!({})).await;
    assert_eq!(status, 409, "revoking twice says so");

    // The audit names the key, never the key itself.
    let records = audit(&gw, "kind=request&tenant=tenant-a").await;
    assert!(records.iter().any(|r| r["key_id"] == new_id.as_str()));
    let operator = audit(&gw, "kind=operator").await;
    let actions: Vec<&str> = operator
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "create_key",
            "create_key",
            "expire_key",
            "create_key",
            "revoke_key"
        ]
    );
    let everything = serde_json::to_string(&audit(&gw, "").await).unwrap();
    for secret in [&key, &new_key, &other_key] {
        assert!(!everything.contains(secret.as_str()));
    }

    // After a restart: the new key works, the revoked and expired ones do not, config
    // keys work alongside.
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&toml, data).await;
    assert_eq!(gw.chat(&new_key, &hello("gpt-4o-mini")).await.status(), 200);
    assert_eq!(
        gw.chat(&other_key, &hello("gpt-4o-mini")).await.status(),
        401
    );
    assert_eq!(gw.chat(&key, &hello("gpt-4o-mini")).await.status(), 401);
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
}

#[tokio::test]
async fn every_request_and_action_is_on_the_record() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    for _ in 0..4 {
        assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    }
    for _ in 0..3 {
        let reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
        reply.text().await.unwrap();
    }
    let settled = json!({ "model": "gpt-4o-mini", "temperature": 0, "messages": [{ "role": "user", "content": "hello" }] });
    gw.chat(KEY_A, &settled).await.text().await.unwrap();
    gw.chat(KEY_A, &settled).await.text().await.unwrap();
    assert_eq!(gw.chat(KEY_A, &hello("no-such-model")).await.status(), 404);
    assert_eq!(
        gw.chat("sy-wrong", &hello("gpt-4o-mini")).await.status(),
        401
    );
    // Failed authentications are recorded once per source and window; end the window.
    gw.daemon.gateway().audit_failed_auth();
    // Streams write their record when they end; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let records = audit(&gw, "kind=request").await;
    assert_eq!(records.len(), 11, "{records:#?}");
    let tenant_a: Vec<&Value> = records
        .iter()
        .filter(|r| r["tenant"] == "tenant-a")
        .collect();
    assert_eq!(tenant_a.len(), 10);
    let plain = tenant_a
        .iter()
        .find(|r| r["stream"] == false && r["cache"] == "bypass")
        .unwrap();
    for field in [
        "request_id",
        "key_id",
        "region",
        "instance",
        "route",
        "tokens_reserved",
        "prompt_tokens",
        "completion_tokens",
        "queue_ms",
        "latency_ms",
    ] {
        assert!(!plain[field].is_null(), "{field} missing: {plain}");
    }
    assert_eq!(plain["status"], 200);
    assert_eq!(plain["model"], "gpt-4o-mini");
    assert_eq!(plain["region"], "us-east");
    assert_eq!(plain["estimated"], false);
    assert!(plain["key_id"].as_str().unwrap().starts_with("config:"));
    let streams: Vec<&&Value> = tenant_a.iter().filter(|r| r["stream"] == true).collect();
    assert_eq!(streams.len(), 3);
    assert!(
        streams
            .iter()
            .all(|r| r["completion_tokens"].as_u64() > Some(0) && r["estimated"] == false)
    );
    assert_eq!(tenant_a.iter().filter(|r| r["cache"] == "hit").count(), 1);
    let missing = tenant_a.iter().find(|r| r["status"] == 404).unwrap();
    assert_eq!(missing["error"], "model_not_found");
    let unknown = records.iter().find(|r| r["status"] == 401).unwrap();
    assert!(unknown["tenant"].is_null());
    assert_eq!(unknown["source"], "127.0.0.1");
    assert_eq!(unknown["count"], 1);
    // No prompt or answer text: the tenant did not opt in.
    assert!(
        records
            .iter()
            .all(|r| r.get("prompt").is_none() && r.get("answer").is_none())
    );

    // An operator's action: who, what, before and after.
    let paused = gw
        .client
        .post(format!(
            "{}/admin/tenants/tenant-b/pause",
            gw.daemon.admin_url().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-switchyard-operator", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let actions = audit(&gw, "kind=operator&tenant=tenant-b").await;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["actor"], "alice");
    assert_eq!(actions[0]["action"], "pause_tenant");
    assert_eq!(actions[0]["before"]["paused"], false);
    assert_eq!(actions[0]["after"]["paused"], true);

    // Filters and the JSONL export.
    assert_eq!(audit(&gw, "status=4xx").await.len(), 2);
    assert_eq!(audit(&gw, "kind=request&limit=3").await.len(), 3);
    let jsonl = gw
        .admin(
            reqwest::Method::GET,
            "/admin/audit?format=jsonl&kind=request",
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(jsonl.lines().count(), 11);
    assert!(
        jsonl
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    let (status, body) = admin_json(
        &gw,
        reqwest::Method::GET,
        "/admin/audit?since=yesterday",
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("since"));
}

#[tokio::test]
async fn tenants_that_opt_in_have_their_prompts_and_answers_kept() {
    let us = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "").replace(
        "name = \"tenant-a\"\ntier = \"pro\"",
        "name = \"tenant-a\"\ntier = \"pro\"\naudit_content = true",
    );
    assert!(toml.contains("audit_content = true"));
    let gw = TestGateway::from_toml(&toml).await;
    gw.chat(KEY_A, &hello("gpt-4o-mini"))
        .await
        .text()
        .await
        .unwrap();
    gw.chat(KEY_A, &hello_stream("gpt-4o-mini"))
        .await
        .text()
        .await
        .unwrap();
    gw.chat(KEY_B, &hello("gpt-4o-mini"))
        .await
        .text()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kept = audit(&gw, "kind=request&tenant=tenant-a").await;
    assert_eq!(kept.len(), 2);
    for record in &kept {
        assert_eq!(record["prompt"][0]["content"], "hello", "{record}");
        assert!(
            !record["answer"].as_str().unwrap_or("").is_empty(),
            "{record}"
        );
    }
    let other = audit(&gw, "kind=request&tenant=tenant-b").await;
    assert!(other[0].get("prompt").is_none());
}

#[tokio::test]
async fn operator_overrides_survive_a_restart_and_show_as_overrides() {
    let us = quick_mock().spawn_local().await.unwrap();
    let eu = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url()), ("eu-west", eu.url())], "")
        .replace("[tiers.pro]", "[tiers.pro]\n\n[tiers.free]");
    let gw = TestGateway::from_toml(&toml).await;
    for (path, body) in [
        ("/admin/tenants/tenant-a/tier", json!({ "tier": "free" })),
        ("/admin/tenants/tenant-a/limits", json!({ "rpm": 7 })),
        ("/admin/tenants/tenant-b/pause", json!({})),
        ("/admin/regions/us-east/drain", json!({})),
    ] {
        let (status, body) = admin_post(&gw, path, body).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let data = gw.stop().await;

    let gw = TestGateway::from_toml_in(&toml, data).await;
    let a = gw.tenant("tenant-a").await;
    assert_eq!(a["tier"], "free");
    assert_eq!(a["limits"]["rpm"], 7);
    assert_eq!(a["changed"], json!(["tier", "rpm"]));
    let b = gw.tenant("tenant-b").await;
    assert_eq!(b["paused"], true);
    assert_eq!(b["changed"], json!(["paused"]));
    assert_eq!(gw.chat(KEY_B, &hello("gpt-4o-mini")).await.status(), 403);
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(
        header(&reply, "x-switchyard-region"),
        "eu-west",
        "us-east is still drained"
    );

    // Putting a value back to the file's clears the override.
    let (status, _) = admin_post(
        &gw,
        "/admin/tenants/tenant-a/tier",
        json!({ "tier": "pro" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(gw.tenant("tenant-a").await["changed"], json!(["rpm"]));
    let (status, _) = admin_post(&gw, "/admin/tenants/tenant-b/resume", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(gw.tenant("tenant-b").await["changed"], json!([]));
}

#[tokio::test]
async fn a_tenant_cannot_reach_across_by_id() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let (_, made) = admin_post(&gw, "/admin/keys", json!({ "tenant": "tenant-a" })).await;
    let key_id = made["id"].as_str().unwrap().to_string();
    let origin = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let stream_id = header(&origin, "x-switchyard-stream-id").to_string();
    origin.text().await.unwrap();

    // The other tenant's stream does not exist for B, whatever the path.
    let watch = gw
        .client
        .get(gw.url(&format!("/v1/streams/{stream_id}")))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 404);
    // Tenant keys never open the admin API: streams, keys, audit, usage, cache.
    let admin = gw.daemon.admin_url().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, format!("/admin/streams/{stream_id}")),
        (
            reqwest::Method::POST,
            format!("/admin/keys/{key_id}/revoke"),
        ),
        (
            reqwest::Method::POST,
            format!("/admin/keys/{key_id}/rotate"),
        ),
        (
            reqwest::Method::GET,
            "/admin/keys?tenant=tenant-a".to_string(),
        ),
        (
            reqwest::Method::GET,
            "/admin/audit?tenant=tenant-a".to_string(),
        ),
        (reqwest::Method::GET, "/admin/tenants/tenant-a".to_string()),
        (reqwest::Method::GET, "/admin/cache".to_string()),
    ] {
        for key in [KEY_A, KEY_B] {
            let reply = gw
                .client
                .request(method.clone(), format!("{admin}{path}"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 401, "{method} {path}");
        }
    }
    // The key is still there and working: nothing above reached it.
    let (_, listed) = admin_json(&gw, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(listed["keys"][0]["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_budgets_audit_keys_and_overrides_are_all_there() {
    let us = quick_mock().spawn_local().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let toml = for_process(
        &config_for(&[("us-east", us.url())], ""),
        (port, admin_port),
        data.path(),
    )
    .replace("[tiers.pro]", "[tiers.pro]\n[tiers.free]")
        + "\n[ledger]\ncheckpoint_interval = \"200ms\"\n[audit]\nflush_interval = \"200ms\"\n";
    let config = data.path().join("config.toml");
    std::fs::write(&config, &toml).unwrap();
    switchyard::tls::install_crypto();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let admin = format!("http://127.0.0.1:{admin_port}");

    let serve = tokio::task::block_in_place(|| Serve::start(&config, &[port, admin_port]));
    let requests = 30;
    let mut load = Vec::new();
    for _ in 0..requests {
        load.push(
            client
                .post(&api)
                .bearer_auth(KEY_A)
                .json(&hello("gpt-4o-mini"))
                .send(),
        );
    }
    for reply in futures_util::future::join_all(load).await {
        assert_eq!(reply.unwrap().status(), 200);
    }
    let post = |path: &str, body: Value| {
        client
            .post(format!("{admin}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let made: Value = post("/admin/keys", json!({ "tenant": "tenant-b" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoked_key = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap();
    assert_eq!(
        post(&format!("/admin/keys/{id}/revoke"), json!({}))
            .await
            .unwrap()
            .status(),
        200
    );
    let kept: Value = post("/admin/keys", json!({ "tenant": "tenant-b" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept_key = kept["key"].as_str().unwrap().to_string();
    assert_eq!(
        post("/admin/tenants/tenant-a/tier", json!({ "tier": "free" }))
            .await
            .unwrap()
            .status(),
        200
    );
    let before: Value = client
        .get(format!("{admin}/admin/tenants/tenant-a"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Past the flush window, then no goodbye.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(serve);

    let _serve = tokio::task::block_in_place(|| Serve::start(&config, &[port, admin_port]));
    let get = |path: &str| {
        client
            .get(format!("{admin}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let after: Value = get("/admin/tenants/tenant-a")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["month"]["tokens"], before["month"]["tokens"],
        "the budget is whole"
    );
    assert_eq!(after["month"]["requests"], requests);
    assert_eq!(
        after["tier"], "free",
        "the tier change was acknowledged, so it is kept"
    );
    let audit: Value = get("/admin/audit?kind=request&limit=0")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        audit["records"].as_array().unwrap().len(),
        requests as usize
    );
    let operator: Value = get("/admin/audit?kind=operator")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(operator["records"].as_array().unwrap().len(), 4);
    let chat = |key: String| {
        client
            .post(&api)
            .bearer_auth(key)
            .json(&hello("gpt-4o-mini"))
            .send()
    };
    assert_eq!(chat(revoked_key).await.unwrap().status(), 401);
    assert_eq!(chat(kept_key).await.unwrap().status(), 200);
}

#[tokio::test]
async fn retention_drops_records_older_than_keep() {
    let us = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "") + "\n[audit]\nkeep = \"400ms\"\n";
    let gw = TestGateway::from_toml(&toml).await;
    for _ in 0..3 {
        gw.chat(KEY_A, &hello("gpt-4o-mini"))
            .await
            .text()
            .await
            .unwrap();
    }
    assert_eq!(audit(&gw, "kind=request").await.len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Retention runs when the writer starts, and every minute after.
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&toml, data).await;
    gw.chat(KEY_A, &hello("gpt-4o-mini"))
        .await
        .text()
        .await
        .unwrap();
    let mut left = Vec::new();
    for _ in 0..50 {
        left = audit(&gw, "kind=request").await;
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left.len(),
        1,
        "only the record made after the restart is left"
    );
}

/// Regression: streams still running at shutdown were settled after the last
/// checkpoint, and their audit records dropped.
#[tokio::test]
async fn streams_in_flight_at_shutdown_are_cut_settled_audited_and_kept() {
    let crawl = MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(5.0)
        .answer_tokens(200)
        .spawn_local()
        .await
        .unwrap();
    let toml = config_for(&[("us-east", crawl.url())], "shutdown_grace = \"1s\"");
    let gw = TestGateway::from_toml(&toml).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut response = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.unwrap().unwrap();
        streams.push((response, first));
    }
    let read_all =
        futures_util::future::join_all(streams.into_iter().map(|(response, first)| async move {
            let rest = response.bytes().await.unwrap();
            let events = switchyard::streams::parse_events(&[&first[..], &rest[..]].concat());
            let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
            last["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }));
    let (endings, data) = tokio::join!(read_all, gw.shutdown());
    assert_eq!(endings, ["server_shutting_down"; 3]);

    let gw = TestGateway::from_toml_in(&toml, data).await;
    let charged = gw.tenant("tenant-a").await["month"]["tokens"]
        .as_u64()
        .unwrap();
    let records = audit(&gw, "kind=request").await;
    let cut: Vec<&Value> = records
        .iter()
        .filter(|r| r["error"] == "server_shutting_down")
        .collect();
    assert_eq!(cut.len(), 3, "{records:?}");
    let audited: u64 = cut
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap())
        .sum();
    assert!(audited > 3 * 8, "each produced something: {audited}");
    assert_eq!(charged, audited, "what was audited is what was charged");
}

/// Regression: a rotation racing a revoke could write the key back unrevoked, because
/// each read the key, then wrote what it had read, in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_a_revoke_never_brings_the_key_back() {
    let us = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", us.url())], "");
    let gw = TestGateway::from_toml(&toml).await;
    let mut keys = Vec::new();
    for _ in 0..12 {
        let (_, made) = admin_post(&gw, "/admin/keys", json!({ "tenant": "tenant-a" })).await;
        keys.push((
            made["id"].as_str().unwrap().to_string(),
            made["key"].as_str().unwrap().to_string(),
        ));
    }
    let races = keys.iter().map(|(id, _)| {
        let gw = &gw;
        async move {
            let (rotate, revoke) = (
                format!("/admin/keys/{id}/rotate"),
                format!("/admin/keys/{id}/revoke"),
            );
            let rotate = admin_post(gw, &rotate, json!({ "grace": "1h" }));
            let revoke = admin_post(gw, &revoke, json!({}));
            let ((rotated, _), (revoked, _)) = tokio::join!(rotate, revoke);
            assert!(matches!(rotated, 201 | 409), "{rotated}");
            assert_eq!(
                revoked, 200,
                "the revoke of {id} lands, before or after the rotation"
            );
        }
    });
    futures_util::future::join_all(races).await;
    let states = |listed: Value| -> Vec<(String, String)> {
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_string(),
                    k["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (_, listed) = admin_json(&gw, reqwest::Method::GET, "/admin/keys", None).await;
    let before = states(listed);
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&toml, data).await;
    let (_, listed) = admin_json(&gw, reqwest::Method::GET, "/admin/keys", None).await;
    assert_eq!(states(listed), before, "kept as acknowledged");
    for (id, key) in &keys {
        let state = &before.iter().find(|(k, _)| k == id).unwrap().1;
        assert_eq!(state, "revoked", "{id}");
        assert_eq!(gw.chat(key, &hello("gpt-4o-mini")).await.status(), 401);
    }
}
