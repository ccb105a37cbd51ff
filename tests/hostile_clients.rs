//! Clients that hold connections without using them: silent ones, slow bodies, idle
//! keep-alives, and one address opening too many. The gateway must close or shed them
//! and keep answering everyone else, the admin API included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str =
    "header_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_connections_per_address = 5";

async fn gateway() -> (switchyard::mock::MockHandle, TestGateway) {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &mock)], LIMITS).await;
    (mock, gw)
}

/// Everything the server sends until it closes the connection (bounded wait).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection was never closed; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let (_mock, gw) = gateway().await;
    let mut silent = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    read_until_closed(&mut silent).await;
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed() {
    let (_mock, gw) = gateway().await;
    let mut stream = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[tokio::test]
async fn a_body_that_never_finishes_is_refused_with_408() {
    let (_mock, gw) = gateway().await;
    let mut stream = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(
        answered.contains("\"code\":\"request_timeout\""),
        "{answered}"
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let (_mock, gw) = gateway().await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(gw.daemon.addr()).await.unwrap());
    }
    let mut sixth = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    let shed = read_until_closed(&mut sixth).await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(shed.contains("too_many_connections"), "{shed}");
    // Operators still get in.
    let regions = gw.admin(Method::GET, "/admin/regions", None).await;
    assert_eq!(regions.status(), 200);
    // A place freed is a place taken again.
    drop(held.pop());
    let mut answered = false;
    for _ in 0..50 {
        if gw
            .client
            .get(gw.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "a freed place is taken again");
}
