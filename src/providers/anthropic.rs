//! Anthropic's Messages API: the pipeline's chat completion becomes a Messages request
//! to `{url}/messages` (keyed by `x-api-key`, with `anthropic-version`), and the answer,
//! whole or streamed, comes back as a chat completion with its usage.
//!
//! Requests: system and developer messages become `system`; content parts become text
//! and image blocks (a `data:` URL as base64, any other URL by reference); assistant
//! `tool_calls` become `tool_use` blocks and `tool` messages `tool_result` blocks, in a
//! user turn; consecutive turns of one role are merged, as Anthropic requires them to
//! alternate. `max_tokens` is required there (the gateway always sets a limit);
//! `stop` becomes `stop_sequences`, `temperature` is capped at Anthropic's 1.0, `user`
//! becomes `metadata.user_id`, tools and `tool_choice` are mapped. What Anthropic cannot
//! express (`n` above 1, audio or file parts) fails the attempt before it is sent.
//!
//! Answers: text and `tool_use` blocks become the message's content and `tool_calls`;
//! `stop_reason` becomes `finish_reason`; usage counts cache reads and writes as prompt
//! tokens. Errors keep Anthropic's type as the code; 529 (`overloaded_error`) is a 503
//! to failover. Streams: `message_start`, `content_block_start`/`delta`, `message_delta`
//! and `message_stop` become chat chunks, a usage chunk and `[DONE]`.

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::dialect::{Dialect, Translate};
use crate::domain::{Instance, ModelKind};
use crate::streams::sse::{SseEvent, SseParser};

/// The API version this translation speaks.
const VERSION: &str = "2023-06-01";

/// The limit sent when a request names none (the gateway normally sets one).
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct Anthropic;

static HEADERS: [(HeaderName, HeaderValue); 1] = [(
    HeaderName::from_static("anthropic-version"),
    HeaderValue::from_static(VERSION),
)];

impl Dialect for Anthropic {
    /// Chat completions, translated; and Messages API requests, as they are.
    fn serves(&self, kind: ModelKind) -> bool {
        matches!(kind, ModelKind::Chat | ModelKind::Messages)
    }

    fn url(&self, instance: &Instance, _kind: ModelKind, _deployment: &str) -> String {
        format!("{}/messages", instance.url)
    }

    fn key_header(&self, key: &str) -> (HeaderName, String) {
        (HeaderName::from_static("x-api-key"), key.to_string())
    }

    fn headers(&self) -> &'static [(HeaderName, HeaderValue)] {
        &HEADERS
    }

    fn request(&self, kind: ModelKind, body: Bytes) -> Result<Bytes, String> {
        if kind == ModelKind::Messages {
            return Ok(body);
        }
        let chat: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| format!("the request is not a JSON object: {e}"))?;
        Ok(Bytes::from(messages_request(&chat)?.to_string()))
    }

    fn status(&self, status: StatusCode) -> StatusCode {
        if status.as_u16() == 529 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            status
        }
    }

    /// Errors always come back in OpenAI's shape, as the pipeline reads them; a Messages
    /// request's answer is otherwise its own.
    fn answer(&self, kind: ModelKind, status: StatusCode, body: Bytes) -> Bytes {
        if kind == ModelKind::Messages && status.is_success() {
            return body;
        }
        let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
            return body;
        };
        let translated = if status.is_success() {
            chat_completion(&answer)
        } else {
            openai_error(&answer)
        };
        translated.map_or(body, |value| Bytes::from(value.to_string()))
    }

    fn stream(&self, kind: ModelKind) -> Option<Box<dyn Translate>> {
        (kind != ModelKind::Messages).then(|| Box::new(Events::default()) as Box<dyn Translate>)
    }
}

/// A chat completion request as a Messages request.
fn messages_request(chat: &Map<String, Value>) -> Result<Value, String> {
    if chat.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("Anthropic answers one choice; n must be 1".into());
    }
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    let messages = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(blocks(content, i)?);
                continue;
            }
            "user" => ("user", blocks(content, i)?),
            "assistant" => {
                let mut blocks = blocks(content, i)?;
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": function.get("name").cloned().unwrap_or(Value::Null),
                        "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
                    }));
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                })],
            ),
            other => {
                return Err(format!(
                    "messages[{i}] has role \"{other}\", which Anthropic has no counterpart for"
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, previous)) if last == role => previous.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        chat.get("model").cloned().unwrap_or(Value::Null),
    );
    let max_tokens = chat
        .get("max_completion_tokens")
        .or_else(|| chat.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    match chat.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(temperature) = chat.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
    }
    if let Some(top_p) = chat.get("top_p").filter(|v| v.is_number()) {
        out.insert("top_p".into(), top_p.clone());
    }
    if chat.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = chat.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = chat.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|f| {
                let mut tool = json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let Some(description) = f.get("description") {
                    tool["description"] = description.clone();
                }
                tool
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let mut choice = match chat.get("tool_choice") {
        Some(Value::String(mode)) => match mode.as_str() {
            "required" => Some(json!({ "type": "any" })),
            "none" => Some(json!({ "type": "none" })),
            _ => Some(json!({ "type": "auto" })),
        },
        Some(Value::Object(named)) => named
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|name| json!({ "type": "tool", "name": name })),
        _ => None,
    };
    if chat.get("parallel_tool_calls") == Some(&Value::Bool(false)) && out.contains_key("tools") {
        let choice = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(choice) = choice.filter(|_| out.contains_key("tools")) {
        out.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(out))
}

/// A message's content as Anthropic blocks; empty text is left out (Anthropic refuses it).
fn blocks(content: &Value, at: usize) -> Result<Vec<Value>, String> {
    let text = |text: &str| json!({ "type": "text", "text": text });
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let s = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !s.is_empty() {
                            out.push(text(s));
                        }
                    }
                    Some("image_url") => {
                        let url = part
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        out.push(image(url));
                    }
                    other => {
                        return Err(format!(
                            "messages[{at}].content[{j}] is of type {}, which the Anthropic dialect does not carry",
                            other.unwrap_or("(none)")
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(format!(
            "messages[{at}].content must be a string or an array of parts"
        )),
    }
}

/// An image part: a `data:` URL as base64, any other by reference.
fn image(url: &str) -> Value {
    if let Some((media_type, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        });
    }
    json!({ "type": "image", "source": { "type": "url", "url": url } })
}

/// The text of a message's content, its parts' texts joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's usage as OpenAI's: cache reads and writes are prompt tokens too.
fn usage(input: u64, output: u64, cache_read: u64) -> Value {
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input + output,
        "prompt_tokens_details": { "cached_tokens": cache_read },
    })
}

/// Prompt tokens of an Anthropic usage object (input, cache writes and reads), and the
/// cache reads among them.
fn prompt_tokens(usage: &Value) -> (u64, u64) {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    let read = field("cache_read_input_tokens");
    (
        field("input_tokens") + field("cache_creation_input_tokens") + read,
        read,
    )
}

/// A `tool_use` block as a chat tool call (its input as the arguments' JSON text).
pub(super) fn tool_call(block: &Value) -> Value {
    json!({
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
        },
    })
}

/// A Message as a chat completion; none when it is not one.
fn chat_completion(message: &Value) -> Option<Value> {
    let blocks = message.get("content")?.as_array()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(tool_call(block)),
            _ => {}
        }
    }
    let mut reply = json!({ "role": "assistant", "content": text, "refusal": null });
    if !calls.is_empty() {
        if text.is_empty() {
            reply["content"] = Value::Null;
        }
        reply["tool_calls"] = Value::Array(calls);
    }
    let anthropic_usage = message.get("usage").cloned().unwrap_or(Value::Null);
    let (input, cache_read) = prompt_tokens(&anthropic_usage);
    let output = anthropic_usage
        .get("output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(json!({
        "id": message.get("id"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": message.get("model"),
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": null,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage(input, output, cache_read),
        // OpenAI's answers carry both; clients that read them find them here too.
        "service_tier": match anthropic_usage.get("service_tier").and_then(Value::as_str) {
            Some("priority") => "priority",
            _ => "default",
        },
        "system_fingerprint": null,
    }))
}

/// An Anthropic error body as OpenAI's; its type is kept as the code.
fn openai_error(body: &Value) -> Option<Value> {
    let error = body.get("error")?;
    let kind = error.get("type").and_then(Value::as_str)?;
    Some(json!({
        "error": {
            "message": error.get("message").and_then(Value::as_str).unwrap_or(kind),
            "type": kind,
            "param": null,
            "code": kind,
        }
    }))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Messages stream read as chat chunks.
#[derive(Default)]
struct Events {
    parser: SseParser,
    /// Every chunk's fields up to its `choices`, rendered once at `message_start`.
    head: String,
    /// The chat `tool_calls` index of each content block that is a tool use.
    tools: Vec<(u64, usize)>,
    prompt_tokens: u64,
    cache_read: u64,
    completion_tokens: u64,
}

impl Events {
    /// The chunks' head; a stream that skipped `message_start` gets one with no id.
    fn head(&self) -> &str {
        if self.head.is_empty() {
            r#"{"id":"","object":"chat.completion.chunk","created":0,"model":"","choices":"#
        } else {
            &self.head
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let choice =
            json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish });
        frame(out, &format!("{}[{choice}]}}", self.head()));
    }

    fn event(&mut self, event: &SseEvent, out: &mut BytesMut) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.kind.as_deref())
            .unwrap_or("");
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                let text = |name: &str| message.get(name).and_then(Value::as_str).unwrap_or("");
                self.head = format!(
                    r#"{{"id":{},"object":"chat.completion.chunk","created":{},"model":{},"choices":"#,
                    Value::from(text("id")),
                    now_secs(),
                    Value::from(text("model")),
                );
                let usage = message.get("usage").unwrap_or(&Value::Null);
                (self.prompt_tokens, self.cache_read) = prompt_tokens(usage);
                self.chunk(out, json!({ "role": "assistant", "content": "" }), None);
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let call = self.tools.len();
                        self.tools.push((index, call));
                        self.chunk(
                            out,
                            json!({ "tool_calls": [{
                                "index": call,
                                "id": block.get("id"),
                                "type": "function",
                                "function": { "name": block.get("name"), "arguments": "" },
                            }] }),
                            None,
                        );
                    }
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.chunk(out, json!({ "content": text }), None);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                        self.chunk(out, json!({ "content": text }), None);
                    }
                    Some("input_json_delta") => {
                        let Some(&(_, call)) = self.tools.iter().find(|(i, _)| *i == index) else {
                            return;
                        };
                        let partial = delta.get("partial_json").and_then(Value::as_str);
                        self.chunk(
                            out,
                            json!({ "tool_calls": [{
                                "index": call,
                                "function": { "arguments": partial.unwrap_or("") },
                            }] }),
                            None,
                        );
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(output) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.completion_tokens = output;
                }
                let stop = data.pointer("/delta/stop_reason").and_then(Value::as_str);
                self.chunk(out, json!({}), Some(finish_reason(stop)));
            }
            "message_stop" => {
                let usage = usage(self.prompt_tokens, self.completion_tokens, self.cache_read);
                frame(out, &format!(r#"{}[],"usage":{usage}}}"#, self.head()));
                frame(out, "[DONE]");
            }
            "error" => {
                if let Some(error) = openai_error(&data) {
                    frame(out, &error.to_string());
                }
            }
            // `ping`, block stops, and whatever Anthropic adds later.
            _ => {}
        }
    }
}

fn frame(out: &mut BytesMut, data: &str) {
    out.put_slice(b"data: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
}

impl Translate for Events {
    fn push(&mut self, bytes: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        for event in self.parser.push(bytes) {
            self.event(&event, &mut out);
        }
        out.freeze()
    }

    fn finish(&mut self) -> Bytes {
        // A stream cut before `message_stop` stays cut: the relay reports it.
        Bytes::new()
    }
}

#[cfg(test)]
mod tests;
