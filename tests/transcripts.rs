//! Real upstreams' wire formats, end to end: each recorded stream in
//! `tests/transcripts/` is replayed by the mock in 5-byte pieces (events and UTF-8
//! characters split anywhere) and must come out of the gateway whole, in canonical
//! framing, with the usage chunk only for clients that asked, cached, coalesced, and
//! charged exactly what the upstream reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard::mock::MockUpstream;
use switchyard::streams::parse_events;

/// What every transcript says, and what it reports using.
const TEXT: &str = "Café au lait, s'il vous plaît ☕!";
const PROMPT_TOKENS: u64 = 14;
const COMPLETION_TOKENS: u64 = 11;

/// A streamed answer as the client got it.
struct Streamed {
    cache: String,
    text: String,
    usage: Option<Value>,
    last: String,
}

async fn stream(gw: &TestGateway, seed: u64, include_usage: bool) -> Streamed {
    let mut body = hello_stream("gpt-4o-mini");
    body["temperature"] = json!(0);
    body["seed"] = json!(seed);
    if include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    let response = gw.chat(KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    let cache = header(&response, "x-switchyard-cache").to_string();
    let bytes = response.bytes().await.unwrap();
    let events = parse_events(&bytes);
    assert!(!events.is_empty());
    let mut text = String::new();
    let mut usage = None;
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("every event but the last is JSON ({e}): {}", event.data));
        assert!(chunk.get("error").is_none(), "an error event: {chunk}");
        if let Some(content) = chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(content);
        }
        if chunk["choices"].as_array().is_some_and(Vec::is_empty) {
            usage = Some(chunk["usage"].clone());
        }
    }
    Streamed {
        cache,
        text,
        usage,
        last: events[events.len() - 1].data.clone(),
    }
}

async fn month_tokens(gw: &TestGateway) -> u64 {
    gw.tenant("tenant-a").await["month"]["tokens"]
        .as_u64()
        .unwrap()
}

async fn check(file: &str) {
    let transcript = std::fs::read(format!("tests/transcripts/{file}")).unwrap();
    check_bytes(file, transcript, "openai").await;
}

/// Replays `transcript` from an upstream speaking `dialect`; `file` names it in failures.
async fn check_bytes(file: &str, transcript: Vec<u8>, dialect: &str) {
    let mock = MockUpstream::builder()
        .transcript(transcript)
        .ttft(Duration::from_millis(1500))
        .spawn_local()
        .await
        .unwrap();
    mock.update_knobs(|k| k.wire_chunk_bytes = 5);
    let config = config_for(
        &[("us-east", mock.url())],
        "[cache]\nhits_use_tokens = true",
    )
    .replace(
        "name = \"us-east-a\"",
        &format!("name = \"us-east-a\"\n  dialect = \"{dialect}\""),
    );
    let gw = TestGateway::from_toml(&config).await;
    let used = PROMPT_TOKENS + COMPLETION_TOKENS;

    // Relayed without the usage chunk, which was asked for upstream all the same.
    let first = stream(&gw, 1, false).await;
    assert_eq!(first.cache, "miss");
    assert_eq!(first.text, TEXT);
    assert_eq!(first.usage, None, "{file}: the usage chunk leaked");
    assert_eq!(first.last, "[DONE]");
    assert_eq!(
        month_tokens(&gw).await,
        used,
        "{file}: charged what it reported"
    );

    // Kept, and replayed with the usage chunk to a client that asks for it.
    let again = stream(&gw, 1, true).await;
    assert_eq!(again.cache, "hit", "{file}: a clean stream is kept");
    assert_eq!(again.text, TEXT);
    let usage = again.usage.expect("the usage chunk");
    assert_eq!(usage["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(usage["completion_tokens"], COMPLETION_TOKENS);
    assert_eq!(month_tokens(&gw).await, 2 * used);

    // Two identical requests in flight: one upstream call; the follower is charged too.
    let before = mock.stats().streams_started;
    let leader = {
        let gw = &gw;
        async move { stream(gw, 2, true).await }
    };
    let follower = async {
        mock.wait_for(Duration::from_secs(10), |s| s.streams_started > before)
            .await;
        stream(&gw, 2, false).await
    };
    let (leader, follower) = tokio::join!(leader, follower);
    assert_eq!(
        mock.stats().streams_started,
        before + 1,
        "{file}: coalesced"
    );
    assert_eq!(follower.cache, "hit");
    assert_eq!((leader.text.as_str(), follower.text.as_str()), (TEXT, TEXT));
    assert!(leader.usage.is_some() && follower.usage.is_none());
    assert_eq!(
        month_tokens(&gw).await,
        4 * used,
        "{file}: the follower is charged"
    );
}

#[tokio::test]
async fn openai() {
    check("openai.sse").await;
}

#[tokio::test]
async fn vllm() {
    check("vllm.sse").await;
}

#[tokio::test]
async fn llama_cpp() {
    check("llamacpp.sse").await;
}

#[tokio::test]
async fn ollama() {
    check("ollama.sse").await;
}

#[tokio::test]
async fn litellm_with_python_spacing() {
    check("litellm.sse").await;
}

#[tokio::test]
async fn crlf_keepalive_comments_and_multiline_data() {
    check("crlf-keepalive.sse").await;
}

/// Anthropic's own events, translated to chat chunks by the gateway on the way.
#[tokio::test]
async fn anthropic_messages_events() {
    let transcript = std::fs::read("tests/transcripts/anthropic.sse").unwrap();
    check_bytes("anthropic.sse", transcript, "anthropic").await;
}

/// The same events as a server behind a proxy would send them: CRLF line ends and a
/// keep-alive comment before every event.
#[tokio::test]
async fn anthropic_messages_events_over_crlf_with_keepalive_comments() {
    let transcript = std::fs::read_to_string("tests/transcripts/anthropic.sse").unwrap();
    let proxied: String = transcript
        .split_terminator("\n\n")
        .map(|event| {
            format!(
                ": keep-alive\r\n\r\n{}\r\n\r\n",
                event.replace('\n', "\r\n")
            )
        })
        .collect();
    assert_eq!(proxied.matches(": keep-alive").count(), 8);
    check_bytes("anthropic.sse over CRLF", proxied.into_bytes(), "anthropic").await;
}

/// OpenAI's Responses API events from an instance that serves that API itself: relayed
/// as they came (event names, sequence numbers, `obfuscation`), whatever the framing,
/// ended by `response.completed` (no `[DONE]`), and charged the usage it carries.
async fn check_responses(file: &str, transcript: Vec<u8>) {
    let canonical = std::fs::read("tests/transcripts/openai-responses.sse").unwrap();
    let mock = MockUpstream::builder()
        .transcript(transcript)
        .spawn_local()
        .await
        .unwrap();
    mock.update_knobs(|k| k.wire_chunk_bytes = 5);
    let config = config_for(&[("us-east", mock.url())], "").replace(
        "name = \"us-east-a\"",
        "name = \"us-east-a\"\n  responses = \"native\"",
    );
    let gw = TestGateway::from_toml(&config).await;
    let body = json!({"model": "gpt-4o-mini", "input": "Un café ?", "stream": true});
    let response = gw.post("/v1/responses", KEY_A, &body).await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        parse_events(&bytes),
        parse_events(&canonical),
        "{file}: every event relayed as it came"
    );
    let text: String = parse_events(&bytes)
        .iter()
        .filter(|e| e.kind.as_deref() == Some("response.output_text.delta"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, TEXT);
    let used = PROMPT_TOKENS + COMPLETION_TOKENS;
    assert_eq!(
        gw.day_tokens_reaching(used).await,
        used,
        "{file}: charged what it reported"
    );
    // The audit writer batches: wait for the record.
    let mut record = Value::Null;
    for _ in 0..250 {
        record = gw.newest_record().await;
        if !record.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(record["status"], 200, "{record}");
    assert!(
        record.get("error").is_none_or(Value::is_null),
        "{file}: {record}"
    );
}

#[tokio::test]
async fn openai_responses_events() {
    let transcript = std::fs::read("tests/transcripts/openai-responses.sse").unwrap();
    check_responses("openai-responses.sse", transcript).await;
}

#[tokio::test]
async fn openai_responses_events_over_crlf_with_keepalive_comments() {
    let transcript = std::fs::read_to_string("tests/transcripts/openai-responses.sse").unwrap();
    let proxied: String = transcript
        .split_terminator("\n\n")
        .map(|event| format!(": keep-alive\r\n{}\r\n\r\n", event.replace('\n', "\r\n")))
        .collect();
    assert_eq!(proxied.matches(": keep-alive").count(), 19);
    check_responses("openai-responses.sse over CRLF", proxied.into_bytes()).await;
}
