//! Budgets that cannot be beaten: the completion limit a request reserved is what the
//! upstream is asked for, a stream that runs past it is cut, and whatever an upstream
//! reports as usage is charged only within what is plausible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::streams::parse_events;

/// `tenant-a` in a tier whose reservation cap is `cap` tokens, with a daily budget.
fn capped(url: String, cap: u64, daily: u64) -> String {
    config_for(&[("us-east", url)], "")
        .replace(
            "[tiers.pro]",
            &format!("[tiers.pro]\nmax_tokens_cap = {cap}"),
        )
        .replace(
            "name = \"tenant-a\"\ntier = \"pro\"",
            &format!("name = \"tenant-a\"\ntier = \"pro\"\ndaily_tokens = {daily}"),
        )
}

async fn day_tokens(gw: &TestGateway) -> u64 {
    gw.tenant("tenant-a").await["day"]["tokens"]
        .as_u64()
        .unwrap()
}

/// Regression: `max_tokens_cap` sized the reservation but was never sent upstream, so a
/// budget with 5,000 tokens left ended 17,905 tokens over.
#[tokio::test]
async fn the_reserved_completion_is_the_limit_sent_upstream_and_a_budget_holds() {
    let mock = quick_mock().answer_tokens(500).spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&capped(mock.url(), 100, 2_000)).await;
    let mut served = 0;
    loop {
        let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        if response.status() == 429 {
            assert_eq!(error_of(response).await["code"], "insufficient_quota");
            break;
        }
        assert_eq!(response.status(), 200);
        served += 1;
        assert!(served < 100, "the budget never ran out");
    }
    assert_eq!(mock.last_request().unwrap()["max_tokens"], 100);
    let used = day_tokens(&gw).await;
    assert!(used <= 2_000, "within the budget: {used}");

    // A client's own smaller limit is kept; a larger one is brought down to the cap.
    let mut small = hello("gpt-4o-mini");
    small["max_completion_tokens"] = json!(7);
    gw.chat(KEY_B, &small).await;
    let sent = mock.last_request().unwrap();
    assert_eq!(sent["max_completion_tokens"], 7);
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let mut large = hello("gpt-4o-mini");
    large["max_tokens"] = json!(100_000);
    gw.chat(KEY_B, &large).await;
    assert_eq!(mock.last_request().unwrap()["max_tokens"], 100);
}

#[tokio::test]
async fn a_stream_that_runs_past_its_limit_is_cut_and_charged_what_it_produced() {
    let mock = quick_mock().answer_tokens(400).spawn_local().await.unwrap();
    mock.update_knobs(|k| k.ignore_max_tokens = true);
    let gw = TestGateway::from_toml(&capped(mock.url(), 40, 1_000_000)).await;
    let response = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let events = parse_events(&response.bytes().await.unwrap());
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "completion_limit_exceeded");
    let used = day_tokens(&gw).await;
    assert!(
        (40..=120).contains(&used),
        "charged what it produced: {used}"
    );
    assert_eq!(
        gw.newest_record().await["error"],
        "completion_limit_exceeded"
    );
}

/// Regression: `prompt_tokens = 2^64-1` wrapped the day's counter, set the month's cost
/// to $1.4e13 and locked the tenant out of TPM until restart.
#[tokio::test]
async fn implausible_usage_is_capped_flagged_and_never_wraps() {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(json!({
                "id": "chatcmpl-liar", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX, "total_tokens": u64::MAX}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let toml = config_for(&[("us-east", url)], "").replace(
        "[tiers.pro]",
        "[tiers.pro]\ntpm = 1000000\nmax_tokens_cap = 100\n\n[[models]]\nalias = \"priced\"\nupstream = \"gpt-4o-mini\"\nprice = { input_per_mtok = 1.0, output_per_mtok = 1.0 }",
    );
    let gw = TestGateway::from_toml(&toml).await;
    for model in ["gpt-4o-mini", "priced", "gpt-4o-mini"] {
        let response = gw.chat(KEY_A, &hello(model)).await;
        assert_eq!(response.status(), 200, "never locked out");
    }
    let tenant = gw.tenant("tenant-a").await;
    let tokens = tenant["day"]["tokens"].as_u64().unwrap();
    assert!(tokens < 200_000, "capped, not wrapped: {tokens}");
    let cost = tenant["month"]["cost_usd"].as_f64().unwrap();
    assert!(cost < 1.0, "a plausible cost: {cost}");
    assert_eq!(gw.newest_record().await["usage_capped"], true);
}
