//! Replicas sharing limits and budgets through Valkey (`[state] backend = "valkey"`):
//! three gateways in this process, one Valkey (or Redis) server of the test's own on
//! loopback, requests spread across the replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::mock::MockHandle;

/// A replica's config: tier `pro` given `limits`, sharing `valkey`.
fn replica_toml(valkey: &Valkey, mock: &MockHandle, limits: &str, lease: f64) -> String {
    let state = format!(
        "\n[state]\nbackend = \"valkey\"\nurl = \"{}\"\nlease = {lease}\n",
        valkey.url()
    );
    config_for(&[("us", mock.url())], &state)
        .replace("[tiers.pro]\n", &format!("[tiers.pro]\n{limits}\n"))
}

/// Three replicas of one config (`replica_toml`).
async fn replicas(
    valkey: &Valkey,
    mock: &MockHandle,
    limits: &str,
    lease: f64,
) -> Vec<TestGateway> {
    let toml = replica_toml(valkey, mock, limits, lease);
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::from_toml(&toml).await);
    }
    gateways
}

/// Tenant A's tokens today over the replicas: each one's own spending, summed.
async fn day_tokens(gateways: &[TestGateway]) -> u64 {
    let mut sum = 0;
    for gateway in gateways {
        sum += gateway.tenant("tenant-a").await["day"]["tokens"]
            .as_u64()
            .unwrap();
    }
    sum
}

/// Sends `count` requests of `body`, `concurrency` at once, request i to replica
/// i mod 3; the status and the error code of each.
async fn spread(
    gateways: &[TestGateway],
    body: &Value,
    count: usize,
    concurrency: usize,
) -> Vec<(u16, String)> {
    futures_util::stream::iter(0..count)
        .map(|i| async move {
            let response = gateways[i % gateways.len()].chat(KEY_A, body).await;
            let status = response.status().as_u16();
            let code = if status == 200 {
                String::new()
            } else {
                error_of(response).await["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            (status, code)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_a_tenant_to_one_requests_per_minute_limit() {
    let mock = quick_mock().spawn_local().await.unwrap();
    // With leases (the default share) and without (a round trip per admission).
    for lease in [0.0, 0.01] {
        let valkey = Valkey::start();
        let gateways = replicas(&valkey, &mock, "rpm = 300", lease).await;
        let started = Instant::now();
        let answers = spread(&gateways, &hello("gpt-4o-mini"), 450, 30).await;
        let elapsed = started.elapsed().as_secs_f64();

        let ok = answers.iter().filter(|(s, _)| *s == 200).count() as f64;
        for (status, code) in &answers {
            assert!(
                *status == 200 || (*status == 429 && code == "rate_limit_exceeded"),
                "{status} {code}"
            );
        }
        // A full bucket of 300 and its refill (5 a second) while the test ran: one
        // limit for the three, within 5%, not three.
        let allowed = 300.0 + 5.0 * elapsed;
        assert!(
            ok <= allowed * 1.05,
            "lease {lease}: {ok} admitted, {allowed:.0} allowed"
        );
        assert!(ok >= 300.0 * 0.95, "lease {lease}: only {ok} admitted");
        for gateway in gateways {
            gateway.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_a_tenant_to_one_tokens_per_minute_limit() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let valkey = Valkey::start();
    let gateways = replicas(&valkey, &mock, "tpm = 3000", 0.01).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let started = Instant::now();
    let answers = spread(&gateways, &body, 400, 30).await;
    let elapsed = started.elapsed().as_secs_f64();
    for (status, code) in &answers {
        assert!(
            *status == 200 || (*status == 429 && code == "rate_limit_exceeded"),
            "{status} {code}"
        );
    }
    let used = day_tokens(&gateways).await;
    // The bucket's 3000 and its refill (50 a second) while the test ran, within 5%:
    // a request reserves its prompt and 20 completion tokens and gives back what it
    // did not use.
    let allowed = 3000.0 + 50.0 * elapsed;
    assert!(
        used as f64 <= allowed * 1.05,
        "{used} tokens used, {allowed:.0} allowed"
    );
    assert!(used as f64 >= 3000.0 * 0.95, "only {used} tokens used");
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_is_never_overspent_by_200_requests_across_replicas() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let valkey = Valkey::start();
    let gateways = replicas(&valkey, &mock, "daily_tokens = 1500", 0.01).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let answers = spread(&gateways, &body, 200, 200).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count() as u64;
    for (status, code) in &answers {
        assert!(
            *status == 200 || (*status == 429 && code == "insufficient_quota"),
            "{status} {code}"
        );
    }
    let spent = day_tokens(&gateways).await;
    assert!(spent <= 1500, "{spent} tokens spent of a 1500 budget");
    // A request holds its prompt and 20 completion tokens while in flight; about
    // fifty fit at once, and all of them ran.
    let each = spent / ok;
    assert!(ok >= 45, "only {ok} admitted ({each} tokens each)");
    assert!(
        ok < 200,
        "every request was admitted: the budget was not enforced"
    );
    for gateway in gateways {
        gateway.stop().await;
    }
}

/// A budget question from `replica`'s point of view: it spent `spent` tokens today and
/// wants to hold between `min` and `want` more.
fn budget_ask(spent: u64, min: f64, want: f64) -> switchyard::admission::lease::Ask {
    use switchyard::admission::PeriodKey;
    use switchyard::admission::lease::{Ask, Range};
    let now = std::time::SystemTime::now();
    Ask {
        tenant: "acme".into(),
        day: PeriodKey::day(now),
        month: PeriodKey::month(now),
        rpm: 0,
        tpm: 0,
        requests_back: 0.0,
        tokens_back: 0.0,
        requests: Range::default(),
        tokens: Range::default(),
        day_tokens: Some(1000),
        day_usd: None,
        month_tokens: None,
        month_usd: None,
        spent_day: (spent, 0.0),
        spent_month: (spent, 0.0),
        held_tokens: Range { min, want },
        held_usd: Range::default(),
        held_then: (0.0, 0.0),
    }
}

#[tokio::test]
async fn spending_reported_twice_counts_once_and_a_silent_replicas_hold_lapses() {
    use switchyard::admission::lease::Shortage;
    let valkey = Valkey::start();
    let store = switchyard::state::Valkey::connect(&valkey.url(), "t")
        .await
        .unwrap();
    let ttl = ms(300);

    let first = store
        .lease("r1", &budget_ask(100, 0.0, 500.0), ttl)
        .await
        .unwrap();
    assert_eq!((first.refused, first.held_tokens), (None, 500.0));
    assert_eq!(first.cluster.day_tokens, 100);
    // The same report again (an answer lost on the way back): still 100 spent.
    let again = store
        .lease("r1", &budget_ask(100, 0.0, 500.0), ttl)
        .await
        .unwrap();
    assert_eq!((again.held_tokens, again.cluster.day_tokens), (500.0, 100));

    // r1 spent 100 and holds 500 of 1000: r2 cannot hold 600, and may hold 400.
    let refused = store
        .lease("r2", &budget_ask(0, 600.0, 600.0), ttl)
        .await
        .unwrap();
    assert_eq!(refused.refused, Some(Shortage::DayTokens));
    let granted = store
        .lease("r2", &budget_ask(0, 300.0, 600.0), ttl)
        .await
        .unwrap();
    assert_eq!((granted.refused, granted.held_tokens), (None, 400.0));

    // r1 goes silent: once its hold is not renewed within the ttl, it is free again;
    // what it spent stays spent.
    tokio::time::sleep(ms(1200)).await;
    let later = store
        .lease("r2", &budget_ask(0, 800.0, 900.0), ttl)
        .await
        .unwrap();
    assert_eq!((later.refused, later.held_tokens), (None, 900.0));
    assert_eq!(later.cluster.day_tokens, 100);
}

/// `gateway`'s view of the shared state, by `/readyz` and the console's snapshot.
async fn shared_state(gateway: &TestGateway) -> (String, Option<Value>) {
    let ready: Value = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let snapshot: Value = gateway
        .admin_json(reqwest::Method::GET, "/admin/snapshot", None)
        .await;
    let mut state = ready["shared_state"].as_str().unwrap().to_string();
    let seen = snapshot["cluster"]["replicas"]
        .as_array()
        .map_or(0, Vec::len);
    if state == "ok" && seen < 3 {
        state = format!("ok, {seen} replicas seen");
    }
    (
        state,
        snapshot["cluster"]["degraded"]
            .as_array()
            .map(|d| d[1].clone()),
    )
}

/// Whether `gateway`'s event log says `text` within three seconds (events about the
/// shared state are noted every second).
async fn event_says(gateway: &TestGateway, text: &str) -> bool {
    for _ in 0..60 {
        let snapshot: Value = gateway
            .admin_json(reqwest::Method::GET, "/admin/snapshot", None)
            .await;
        if snapshot["events"].to_string().contains(text) {
            return true;
        }
        tokio::time::sleep(ms(50)).await;
    }
    false
}

/// Waits (ten seconds at most) until every replica says `state` ("ok": and sees all
/// three replicas).
async fn until_all(gateways: &[TestGateway], state: &str) {
    for _ in 0..200 {
        let mut all = true;
        for gateway in gateways {
            all &= shared_state(gateway).await.0 == state;
        }
        if all {
            return;
        }
        tokio::time::sleep(ms(50)).await;
    }
    panic!("the replicas did not all say {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_store_falls_back_to_shares_and_recovers_without_charging_twice() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let mut valkey = Valkey::start();
    let limits = "rpm = 300\ndaily_tokens = 1_000_000";
    let gateways = replicas(&valkey, &mock, limits, 0.01).await;
    let started = Instant::now();
    until_all(&gateways, "ok").await;
    let before = spread(&gateways, &hello("gpt-4o-mini"), 150, 10).await;
    assert!(before.iter().all(|(s, _)| *s == 200));
    // Operators' changes before the outage take the overrides to version 3.
    for (action, paused) in [("pause", true), ("resume", false)] {
        let path = format!("/admin/tenants/tenant-b/{action}");
        admin_post(&gateways[0], &path, None).await;
        for gateway in &gateways {
            let seen = || async { gateway.tenant("tenant-b").await["paused"] == paused };
            assert!(within_a_second(seen).await, "{action} on every replica");
        }
    }

    // The store goes away in the middle of the load: every replica notices (at its
    // next round trip, or heartbeat), says so, and goes on alone at its share of what
    // the cluster had left; no request fails for it.
    let killing = async {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while mock.stats().chat_requests < 150 + 30 && Instant::now() < deadline {
            tokio::time::sleep(ms(2)).await;
        }
        valkey.kill();
    };
    let body = hello("gpt-4o-mini");
    let (during, ()) = tokio::join!(spread(&gateways, &body, 300, 10), killing);
    until_all(&gateways, "degraded").await;
    let (_, why) = shared_state(&gateways[0]).await;
    assert!(why.is_some(), "the console shows the degradation");
    assert!(event_says(&gateways[1], "shared state degraded").await);
    // An operator's change meanwhile holds where it was made, and says so.
    let response = gateways[1]
        .admin(reqwest::Method::POST, "/admin/tenants/tenant-b/pause", None)
        .await;
    let said = response.text().await.unwrap();
    assert!(said.contains("not on the other replicas"), "{said}");
    let admitted = during.iter().filter(|(s, _)| *s == 200).count() as f64;
    for (status, code) in &during {
        assert!(
            *status == 200 || (*status == 429 && code == "rate_limit_exceeded"),
            "{status} {code}"
        );
    }
    let allowed = 300.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(
        150.0 + admitted <= allowed * 1.05,
        "{admitted} admitted after 150, {allowed:.0} allowed in all"
    );
    assert!(admitted >= 100.0, "only {admitted} admitted after 150");

    // Back, empty: the replicas' absolute totals fill it again, each once.
    valkey.restart();
    until_all(&gateways, "ok").await;
    let (_, why) = shared_state(&gateways[0]).await;
    assert_eq!(why, None, "the console shows the recovery");
    assert!(event_says(&gateways[1], "shared state recovered").await);
    let spent = day_tokens(&gateways).await;
    let store = switchyard::state::Valkey::connect(&valkey.url(), "switchyard")
        .await
        .unwrap();
    let mut ask = budget_ask(0, 0.0, 0.0);
    ask.tenant = "tenant-a".into();
    let mut counted = 0;
    for _ in 0..100 {
        counted = store
            .lease("observer", &ask, ms(1000))
            .await
            .unwrap()
            .cluster
            .day_tokens;
        if counted == spent {
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert_eq!(counted, spent, "the cluster's spending after recovery");

    // The change made during the outage reached the others once the store returned.
    let mut reached = false;
    for _ in 0..100 {
        reached = gateways[0].tenant("tenant-b").await["paused"] == true;
        if reached {
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(reached, "the pause made during the outage, after it");

    // Operators' changes still travel on the restarted store (its versions start
    // again from 1).
    admin_post(&gateways[0], "/admin/tenants/tenant-a/pause", None).await;
    let paused = || async {
        let response = gateways[2].chat(KEY_A, &hello("gpt-4o-mini")).await;
        response.status() == 403
    };
    assert!(within_a_second(paused).await, "a pause after the restart");
    for gateway in gateways {
        gateway.stop().await;
    }
}

/// Polls `check` until it holds, for one second at most: whether it came to hold.
async fn within_a_second<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + std::time::Duration::from_secs(1);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(ms(20)).await;
    }
    false
}

async fn admin_post(gateway: &TestGateway, path: &str, body: Option<Value>) -> Value {
    let response = gateway.admin(reqwest::Method::POST, path, body).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_pause_a_drain_and_a_revocation_on_one_replica_reach_the_others() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let valkey = Valkey::start();
    let gateways = replicas(&valkey, &mock, "\n[tiers.free]", 0.01).await;
    until_all(&gateways, "ok").await;
    let g = &gateways;
    // A key made on replica 0 works on replica 2.
    let made = admin_post(
        &gateways[0],
        "/admin/keys",
        Some(json!({"tenant": "tenant-a", "name": "ci"})),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    let works = |i: usize| {
        let (gateway, key) = (&gateways[i], key.clone());
        async move { gateway.chat(&key, &hello("gpt-4o-mini")).await.status() == 200 }
    };
    assert!(
        within_a_second(|| works(2)).await,
        "the new key on replica 2"
    );

    // Paused on replica 1: refused on replica 2; resumed there: served on replica 0.
    admin_post(&gateways[1], "/admin/tenants/tenant-a/pause", None).await;
    let paused = |i: usize| async move {
        let response = g[i].chat(KEY_A, &hello("gpt-4o-mini")).await;
        response.status() == 403 && error_of(response).await["code"] == "tenant_paused"
    };
    assert!(
        within_a_second(|| paused(2)).await,
        "the pause on replica 2"
    );
    admin_post(&gateways[2], "/admin/tenants/tenant-a/resume", None).await;
    let served =
        |i: usize| async move { g[i].chat(KEY_A, &hello("gpt-4o-mini")).await.status() == 200 };
    assert!(
        within_a_second(|| served(0)).await,
        "the resume on replica 0"
    );

    // Drained on replica 0: replica 1 sends nothing there either.
    admin_post(&gateways[0], "/admin/regions/us/drain", None).await;
    let drained = |i: usize| async move {
        let view = g[i]
            .admin_json::<Value>(reqwest::Method::GET, "/admin/regions", None)
            .await;
        matches!(
            view["regions"][0]["state"].as_str(),
            Some("draining" | "drained")
        )
    };
    assert!(
        within_a_second(|| drained(1)).await,
        "the drain on replica 1"
    );

    // Revoked on replica 1: refused on replicas 0 and 2.
    admin_post(&gateways[1], &format!("/admin/keys/{id}/revoke"), None).await;
    for i in [0, 2] {
        let refused = || {
            let (gateway, key) = (&gateways[i], key.clone());
            async move { gateway.chat(&key, &hello("gpt-4o-mini")).await.status() == 401 }
        };
        assert!(
            within_a_second(refused).await,
            "the revocation on replica {i}"
        );
    }
    // A tier on replica 2 and a limit on replica 0, both seen on replica 1.
    let tier = json!({"tier": "free"});
    admin_post(&gateways[2], "/admin/tenants/tenant-a/tier", Some(tier)).await;
    let limit = json!({"rpm": 7});
    admin_post(&gateways[0], "/admin/tenants/tenant-a/limits", Some(limit)).await;
    let changed = |i: usize| async move {
        let tenant = g[i].tenant("tenant-a").await;
        tenant["tier"] == "free" && tenant["limits"]["rpm"] == 7
    };
    assert!(
        within_a_second(|| changed(1)).await,
        "the tier and limit on replica 1"
    );

    // A replica that starts now takes all of it from the shared state.
    let toml = replica_toml(&valkey, &mock, "\n[tiers.free]", 0.01);
    let late = TestGateway::from_toml(&toml).await;
    let tenant = late.tenant("tenant-a").await;
    assert_eq!(tenant["tier"], "free");
    assert_eq!(tenant["limits"]["rpm"], 7);
    assert_eq!(late.chat(&key, &hello("gpt-4o-mini")).await.status(), 401);
    let regions: Value = late
        .admin_json(reqwest::Method::GET, "/admin/regions", None)
        .await;
    let state = regions["regions"][0]["state"].as_str();
    assert!(matches!(state, Some("draining" | "drained")), "{state:?}");
    late.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_past_the_grace_period_a_tenant_with_a_budget_is_refused_until_the_store_returns() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let mut valkey = Valkey::start();
    let toml = replica_toml(&valkey, &mock, "daily_tokens = 1_000_000", 0.01)
        .replace("lease = 0.01\n", "lease = 0.01\ngrace = \"1s\"\n");
    let gateway = TestGateway::from_toml(&toml).await;
    for _ in 0..100 {
        if shared_state(&gateway).await.0.starts_with("ok") {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(
        gateway.chat(KEY_A, &hello("gpt-4o-mini")).await.status(),
        200
    );

    valkey.kill();
    for _ in 0..200 {
        if shared_state(&gateway).await.0 == "degraded" {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    // Within the grace period the budget is enforced from what was last known.
    assert_eq!(
        gateway.chat(KEY_A, &hello("gpt-4o-mini")).await.status(),
        200
    );
    // Past it, no replica can vouch for the budget alone.
    tokio::time::sleep(ms(1500)).await;
    let refused = gateway.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_of(refused).await["code"], "shared_state_unavailable");

    valkey.restart();
    let mut served = false;
    for _ in 0..250 {
        served = gateway.chat(KEY_A, &hello("gpt-4o-mini")).await.status() == 200;
        if served {
            break;
        }
        tokio::time::sleep(ms(20)).await;
    }
    assert!(served, "served again once the store returned");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_replicas_hold_one_limit_and_share_operators_changes() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let cluster = ValkeyCluster::start();
    let urls = cluster.urls();
    let nodes: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let state = format!(
        "\n[state]\nbackend = \"valkey\"\nurl = \"{}\"\ncluster_nodes = [{}]\n",
        urls[1],
        nodes.join(", ")
    );
    let toml = config_for(&[("us", mock.url())], &state)
        .replace("[tiers.pro]\n", "[tiers.pro]\nrpm = 300\n");
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::from_toml(&toml).await);
    }
    until_all(&gateways, "ok").await;
    // Both tenants' keys land in the slots of different nodes, or the same: either way
    // one limit for the three replicas.
    let started = Instant::now();
    let answers = spread(&gateways, &hello("gpt-4o-mini"), 450, 30).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count() as f64;
    let allowed = 300.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(ok <= allowed * 1.05, "{ok} admitted, {allowed:.0} allowed");
    assert!(ok >= 300.0 * 0.95, "only {ok} admitted");

    let g = &gateways;
    admin_post(&gateways[0], "/admin/tenants/tenant-b/pause", None).await;
    let paused =
        |i: usize| async move { g[i].chat(KEY_B, &hello("gpt-4o-mini")).await.status() == 403 };
    assert!(
        within_a_second(|| paused(2)).await,
        "the pause on replica 2"
    );
    for gateway in gateways {
        gateway.stop().await;
    }
}
