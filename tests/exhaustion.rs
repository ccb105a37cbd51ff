//! The gateway out of file descriptors: what fails is this machine, not the upstream, so
//! neither requests nor health probes may hold it against an instance. This binary holds
//! one test because it lowers its own process's open-file limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

/// An upstream that closes every connection after answering, so each probe and request
/// needs a new descriptor rather than a pooled connection.
async fn closing_upstream(probes: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/models",
            axum::routing::get(move || {
                probes.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"object": "list", "data": []})) }
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                axum::Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
                }))
            }),
        )
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    "connection",
                    axum::http::HeaderValue::from_static("close"),
                );
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn hard_open_file_limit() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().to_string()
}

fn set_soft_open_file_limit(soft: &str, hard: &str) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_never_held_against_an_upstream() {
    let probes = Arc::new(AtomicUsize::new(0));
    let url = closing_upstream(probes.clone()).await;
    // Probes every 50 ms; one failure takes the instance out, and it would take a
    // thousand good ones to bring it back: a probe held against it shows to the end.
    let toml = config_for(&[("us-east", url)], "").replace(
        "[health]\ninterval = \"1h\"",
        "[health]\ninterval = \"50ms\"\nunhealthy_after = 1\nhealthy_after = 1000",
    );
    let gw = TestGateway::from_toml(&toml).await;
    let wait_for_probes = |n: usize| {
        let probes = probes.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while probes.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("probes reach the upstream");
        }
    };
    wait_for_probes(2).await;
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    // The client's connection to the gateway is open and pooled before the descriptors
    // run out; the gateway needs new ones only to reach the upstream.
    assert_eq!(
        gw.client
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let hard = hard_open_file_limit();
    set_soft_open_file_limit(&(open_descriptors() + 64).to_string(), &hard);
    let mut held = Vec::new();
    let use_up = |held: &mut Vec<std::fs::File>| loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => held.push(file),
            Err(e) if e.raw_os_error() == Some(24) => break,
            Err(e) => panic!("unexpected error while using up descriptors: {e}"),
        }
    };
    use_up(&mut held);
    // A probe in flight as the table filled frees its socket when it ends; take that
    // descriptor too, so the request below cannot have it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    use_up(&mut held);
    let refused = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    let status = refused.status();
    let body = error_of(refused).await;
    // Probes run every 50 ms meanwhile, and fail to open a socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    set_soft_open_file_limit(&hard, &hard);

    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "upstream_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("out of local resources"),
        "{body}"
    );
    let instance = gw.first_instance().await;
    assert_eq!(instance["health"]["state"], "healthy", "{instance}");
    assert_eq!(instance["health"]["consecutive_failures"], 0, "{instance}");
    assert_eq!(instance["health"]["ejections"], 0, "{instance}");
    let before = probes.load(Ordering::SeqCst);
    wait_for_probes(before + 1).await;
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    gw.stop().await;
}
