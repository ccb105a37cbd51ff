use serde_json::{Value, json};

use super::*;
use crate::streams::sse::SseParser;

fn request(chat: Value) -> Result<Value, String> {
    let bytes = Anthropic.request(ModelKind::Chat, Bytes::from(chat.to_string()))?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[test]
fn a_chat_request_becomes_a_messages_request() {
    let sent = request(json!({
        "model": "claude-sonnet-4-5",
        "max_completion_tokens": 300,
        "temperature": 1.6,
        "stop": "END",
        "user": "u-42",
        "stream": true,
        "stream_options": { "include_usage": true },
        "parallel_tool_calls": false,
        "tool_choice": { "type": "function", "function": { "name": "get_weather" } },
        "tools": [{ "type": "function", "function": {
            "name": "get_weather", "description": "Weather now",
            "parameters": { "type": "object", "properties": { "location": { "type": "string" } } }
        } }],
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "developer", "content": [{ "type": "text", "text": "Answer in French." }] },
            { "role": "user", "content": [
                { "type": "text", "text": "What is here?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } },
                { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } }
            ] },
            { "role": "user", "content": "And the weather?" },
            { "role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": { "name": "get_weather", "arguments": "{\"location\":\"Paris\"}" }
            }] },
            { "role": "tool", "tool_call_id": "call_1", "content": "18°C, clear" }
        ]
    }))
    .unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["temperature"], 1.0, "capped at Anthropic's maximum");
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["metadata"], json!({ "user_id": "u-42" }));
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none());
    assert_eq!(
        sent["system"],
        json!([{ "type": "text", "text": "Be brief." }, { "type": "text", "text": "Answer in French." }])
    );
    assert_eq!(
        sent["tools"],
        json!([{ "name": "get_weather", "description": "Weather now",
                 "input_schema": { "type": "object", "properties": { "location": { "type": "string" } } } }])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({ "type": "tool", "name": "get_weather", "disable_parallel_tool_use": true })
    );
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "the two user turns merged: {messages:?}");
    assert_eq!(
        messages[0],
        json!({ "role": "user", "content": [
            { "type": "text", "text": "What is here?" },
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
            { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
            { "type": "text", "text": "And the weather?" }
        ] })
    );
    assert_eq!(
        messages[1],
        json!({ "role": "assistant", "content": [
            { "type": "tool_use", "id": "call_1", "name": "get_weather", "input": { "location": "Paris" } }
        ] })
    );
    assert_eq!(
        messages[2],
        json!({ "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "call_1", "content": "18°C, clear" }
        ] })
    );
}

#[test]
fn what_anthropic_cannot_say_fails_the_attempt_naming_it() {
    let several =
        request(json!({ "model": "m", "n": 2, "messages": [{ "role": "user", "content": "hi" }] }));
    assert!(several.unwrap_err().contains("n must be 1"));
    let audio = request(json!({ "model": "m", "messages": [
        { "role": "user", "content": "hi" },
        { "role": "user", "content": [{ "type": "input_audio", "input_audio": { "data": "", "format": "wav" } }] }
    ] }));
    let error = audio.unwrap_err();
    assert!(
        error.contains("messages[1].content[0]") && error.contains("input_audio"),
        "{error}"
    );
    let limitless =
        request(json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
            .unwrap();
    assert_eq!(
        limitless["max_tokens"], DEFAULT_MAX_TOKENS,
        "Anthropic requires a limit"
    );
}

#[test]
fn a_message_becomes_a_chat_completion_with_its_usage() {
    let message = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            { "type": "text", "text": "Checking." },
            { "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": { "location": "Paris" } }
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": { "input_tokens": 20, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 30 }
    });
    let bytes = Anthropic.answer(
        ModelKind::Chat,
        StatusCode::OK,
        Bytes::from(message.to_string()),
    );
    let chat: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "claude-sonnet-4-5");
    let choice = &chat["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking.");
    assert_eq!(choice["message"]["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let arguments: Value = serde_json::from_str(
        choice["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments, json!({ "location": "Paris" }));
    assert_eq!(
        chat["usage"],
        json!({ "prompt_tokens": 125, "completion_tokens": 30, "total_tokens": 155,
                "prompt_tokens_details": { "cached_tokens": 100 } })
    );
    let limited = json!({ "id": "m", "content": [{ "type": "text", "text": "Cut" }], "stop_reason": "max_tokens",
                          "usage": { "input_tokens": 1, "output_tokens": 2 } });
    let bytes = Anthropic.answer(
        ModelKind::Chat,
        StatusCode::OK,
        Bytes::from(limited.to_string()),
    );
    let chat: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    assert!(chat["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn errors_come_back_in_openai_shape_and_overloaded_is_a_failover() {
    let overloaded = json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } });
    let status = StatusCode::from_u16(529).unwrap();
    assert_eq!(Anthropic.status(status), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        Anthropic.status(StatusCode::TOO_MANY_REQUESTS),
        StatusCode::TOO_MANY_REQUESTS
    );
    let bytes = Anthropic.answer(ModelKind::Chat, status, Bytes::from(overloaded.to_string()));
    let error: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        error,
        json!({ "error": { "message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error" } })
    );
    // Not JSON (a proxy's page): left for the gateway to shape.
    let page = Bytes::from_static(b"<html>502</html>");
    assert_eq!(
        Anthropic.answer(ModelKind::Chat, StatusCode::BAD_GATEWAY, page.clone()),
        page
    );
}

/// The chat chunks a transcript becomes, fed in pieces of `size` bytes.
fn translated(transcript: &[u8], size: usize) -> Vec<Value> {
    let mut events = Anthropic.stream(ModelKind::Chat).unwrap();
    let mut out = Vec::new();
    for piece in transcript.chunks(size) {
        out.extend_from_slice(&events.push(piece));
    }
    out.extend_from_slice(&events.finish());
    let mut parser = SseParser::default();
    parser
        .push(&out)
        .into_iter()
        .map(|e| {
            let mut chunk = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
            // The clock's second, which two runs may straddle.
            if let Some(chunk) = chunk.as_object_mut() {
                chunk.remove("created");
            }
            chunk
        })
        .collect()
}

#[test]
fn a_recorded_stream_becomes_chat_chunks_whatever_the_pieces() {
    let transcript = include_bytes!("../../../tests/transcripts/anthropic.sse");
    let whole = translated(transcript, transcript.len());
    for size in [1, 3, 17, 64] {
        assert_eq!(
            translated(transcript, size),
            whole,
            "pieces of {size} bytes"
        );
    }
    assert_eq!(
        whole.first().unwrap()["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "" })
    );
    assert_eq!(whole.first().unwrap()["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    let text: String = whole
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Café au lait, s'il vous plaît ☕!");
    let finish: Vec<&Value> = whole
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let n = whole.len();
    assert_eq!(whole[n - 1], Value::String("[DONE]".into()));
    assert_eq!(whole[n - 2]["choices"], json!([]));
    assert_eq!(
        whole[n - 2]["usage"]["prompt_tokens"],
        14,
        "input and cache reads"
    );
    assert_eq!(whole[n - 2]["usage"]["completion_tokens"], 11);
    assert_eq!(whole[n - 2]["usage"]["total_tokens"], 25);
}

#[test]
fn a_streamed_tool_call_becomes_chat_tool_call_deltas() {
    let transcript = include_bytes!("../../../tests/transcripts/anthropic-tools.sse");
    let chunks = translated(transcript, 5);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({ "location": "Paris" })
    );
    assert!(calls.iter().all(|c| c["index"] == 0), "one call, one index");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    let usage = &chunks[chunks.len() - 2]["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(472), Some(89))
    );
}

#[test]
fn an_error_event_mid_stream_is_relayed_in_openai_shape() {
    let transcript = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let chunks = translated(transcript, 9);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1]["error"]["type"], "overloaded_error");
}
