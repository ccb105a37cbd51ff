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

/// The HTTP/2 frames (type, stream id) a server sends until it closes (bounded wait).
async fn h2_frames_until_closed(stream: &mut TcpStream) -> Vec<(u8, u32)> {
    let bytes = read_until_closed_bytes(stream).await;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream_id =
            u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                & 0x7fff_ffff;
        frames.push((bytes[at + 3], stream_id));
        at += 9 + length;
    }
    frames
}

async fn read_until_closed_bytes(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was never closed; got {} bytes", seen.len()),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const GOAWAY: u8 = 7;
const HEADERS: u8 = 1;

#[tokio::test]
async fn an_http2_connection_left_idle_is_closed_with_goaway() {
    let (_mock, gw) = gateway().await;
    // Never a request.
    let mut silent = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    silent.write_all(H2_PREFACE).await.unwrap();
    silent.write_all(&H2_SETTINGS).await.unwrap();
    let frames = h2_frames_until_closed(&mut silent).await;
    assert!(frames.contains(&(GOAWAY, 0)), "{frames:?}");

    // One request (GET /healthz, HPACK: :method GET, :scheme http, :path literal), then
    // idle.
    let mut stream = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(&H2_SETTINGS).await.unwrap();
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    let mut headers = vec![0, 0, block.len() as u8, HEADERS, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    stream.write_all(&headers).await.unwrap();
    let frames = h2_frames_until_closed(&mut stream).await;
    assert!(frames.contains(&(HEADERS, 1)), "answered first: {frames:?}");
    assert!(frames.contains(&(GOAWAY, 0)), "{frames:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_idle_timeout_is_not_idle() {
    // 25 tokens at 10 a second: well past the 1 s idle timeout, with nothing but the
    // response body moving.
    let slow = switchyard::mock::MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(10.0)
        .answer_tokens(25)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &slow)], LIMITS).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut reply = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&hello_stream("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.version(), reqwest::Version::HTTP_2);
    let mut body = Vec::new();
    while let Some(chunk) = reply.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        streamed_text(&text).split_whitespace().count(),
        25,
        "{text}"
    );
}

#[tokio::test]
async fn a_connection_that_never_sent_a_byte_does_not_hold_up_a_shutdown() {
    let mock = quick_mock().spawn_local().await.unwrap();
    // The default header timeout (30 s): without the listener's closing, the spare
    // connection would keep the stop waiting until it is cut (5 s).
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let mut spare = TcpStream::connect(gw.daemon.addr()).await.unwrap();
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 200);
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(gw.stop());
    read_until_closed(&mut spare).await;
    stopping.await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
}

/// A connection reads through one 8 KiB buffer (two fifths of what an open stream costs
/// when it doubled): a head up to that size is served, a larger one gets a 431 in
/// OpenAI's shape, and a body of any allowed size still streams through it.
#[tokio::test]
async fn request_heads_past_8_kib_get_a_431_and_large_bodies_still_pass() {
    let (_mock, gw) = gateway().await;
    let ask = |padding: usize, content: usize| {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "a ".repeat(content / 2)
        );
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\nx-padding: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            "p".repeat(padding),
            body.len()
        )
    };
    for (padding, content, status) in [
        (7 << 10, 100, "200"),
        (9 << 10, 100, "431"),
        (100, 200 << 10, "200"),
    ] {
        let mut stream = TcpStream::connect(gw.daemon.addr()).await.unwrap();
        stream
            .write_all(ask(padding, content).as_bytes())
            .await
            .unwrap();
        let answered = read_until_closed(&mut stream).await;
        assert!(
            answered.starts_with(&format!("HTTP/1.1 {status}")),
            "head padded by {padding}, body of {content}: {answered}"
        );
        if status == "431" {
            assert!(
                answered.contains("\"code\":\"request_header_fields_too_large\""),
                "{answered}"
            );
        }
    }
}
