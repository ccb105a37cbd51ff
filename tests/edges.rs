//! The edges of the surface: every error JSON in OpenAI's shape whatever layer wrote it,
//! keys whose expiry survives restarts, and the admin API's own edges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn errors_from_any_layer_are_json_in_openai_shape() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    // A path that does not decode as UTF-8.
    let response = gw
        .client
        .get(gw.url("/v1/streams/%ff"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    error_of(response).await;
    // The admin API's wrong method and unknown path.
    let response = gw.admin(Method::GET, "/admin/actions", None).await;
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // Requests hyper cannot parse, and a transfer coding the gateway does not decode.
    let cases: [(&str, u16, &str); 4] = [
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
            400,
            "invalid_request",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nhost: x\r\nnot a header\r\n\r\n",
            400,
            "invalid_request",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: br\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = raw_exchange(gw.daemon.addr(), request).await;
        assert_eq!(got, status, "{request:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{request:?}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
}

/// Sends raw bytes, reads the answer until the server closes, and parses its status and
/// JSON body (checking the content-length it declared).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after an unparseable request")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length: {text}"));
    assert_eq!(declared.parse::<usize>().unwrap(), body.len(), "{text}");
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn an_upstream_error_that_is_not_json_reaches_the_client_in_openai_shape() {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "<html><body>413 Request Entity Too Large</body></html>",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = TestGateway::from_toml(&config_for(&[("us-east", url)], "")).await;
    let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(response.status(), 413, "the upstream's status is kept");
    assert_eq!(header(&response, "content-type"), "application/json");
    let error = error_of(response).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("413 Request Entity Too Large"),
        "{message}"
    );
}

#[tokio::test]
async fn an_expired_key_stays_expired_after_a_restart() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", mock.url())], "");
    let gw = TestGateway::from_toml(&toml).await;
    let made: Value = gw
        .admin_json(
            Method::POST,
            "/admin/keys",
            Some(json!({ "tenant": "tenant-a", "expires": "1s" })),
        )
        .await;
    let key = made["key"].as_str().unwrap().to_string();
    for expires in ["0s", "99999999d"] {
        let refused = gw
            .admin(
                Method::POST,
                "/admin/keys",
                Some(json!({ "tenant": "tenant-a", "expires": expires })),
            )
            .await;
        assert_eq!(refused.status(), 400, "expires {expires}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = gw.chat(&key, &hello("gpt-4o-mini")).await;
    assert_eq!(error_of(response).await["code"], "expired_api_key");
    let data = gw.stop().await;
    let gw = TestGateway::from_toml_in(&toml, data).await;
    let response = gw.chat(&key, &hello("gpt-4o-mini")).await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_of(response).await["code"], "expired_api_key");
}

#[tokio::test]
async fn the_admin_api_takes_the_bearer_scheme_in_any_case() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let url = format!("{}/admin/regions", gw.daemon.admin_url().unwrap());
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = gw
            .client
            .get(&url)
            .header("authorization", format!("{scheme}  {ADMIN_TOKEN} "))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn a_spent_budget_still_says_where_the_rate_limits_stand() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let toml = config_for(&[("us-east", mock.url())], "").replace(
        "[tiers.pro]",
        "[tiers.pro]\nrpm = 100\ndaily_tokens = 50\nmax_tokens_cap = 10",
    );
    let gw = TestGateway::from_toml(&toml).await;
    let mut last = None;
    for _ in 0..10 {
        let response = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        if response.status() == 429 {
            last = Some(response);
            break;
        }
    }
    let response = last.expect("the budget runs out");
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "100");
    assert!(!header(&response, "x-ratelimit-remaining-requests").is_empty());
    assert_eq!(error_of(response).await["code"], "insufficient_quota");
}

/// Regression: ~8,600 unauthenticated 401s a second flushed operator actions and real
/// request records out of the audit log.
#[tokio::test]
async fn failed_authentications_are_limited_per_address_and_audited_in_aggregate() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            gw.chat("sy-guess", &hello("gpt-4o-mini"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    let refused = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(
        refused.status(),
        429,
        "even a good key, from this address, this window"
    );
    assert!(!header(&refused, "retry-after").is_empty());
    assert_eq!(
        error_of(refused).await["code"],
        "too_many_failed_authentications"
    );
    assert_eq!(mock.stats().chat_requests, 0);

    gw.daemon.gateway().audit_failed_auth();
    assert_eq!(
        gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(),
        200,
        "a new window"
    );
    // The audit writer lands records within its flush interval: wait for them, bounded.
    let mut counts: Vec<(String, u64)> = Vec::new();
    for _ in 0..100 {
        let records: Value = gw
            .admin_json(Method::GET, "/admin/audit?status=error", None)
            .await;
        counts = records["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["error"].as_str().unwrap().to_string(),
                    r["count"].as_u64().unwrap_or(1),
                )
            })
            .collect();
        counts.sort();
        if counts.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counts,
        [
            ("invalid_api_key".to_string(), 20),
            ("too_many_failed_authentications".to_string(), 11)
        ]
    );
}

#[tokio::test]
async fn a_last_event_id_beyond_any_stream_never_wraps() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let response = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&response, "x-switchyard-stream-id").to_string();
    response.bytes().await.unwrap();
    for last in ["18446744073709551615", "99999999999999999999999", "-1"] {
        let watched = gw
            .client
            .get(gw.url(&format!("/v1/streams/{id}")))
            .bearer_auth(KEY_A)
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        assert_eq!(watched.status(), 200, "{last}");
        let body = watched.text().await.unwrap();
        // Past the end: nothing more to send. Unreadable: from the start.
        if last == "18446744073709551615" {
            assert!(body.is_empty(), "{body}");
        } else {
            assert!(body.contains("data: [DONE]"), "{last}: {body}");
        }
    }
}
