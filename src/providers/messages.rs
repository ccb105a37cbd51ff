//! Anthropic's Messages API for instances that do not speak it (every dialect but
//! `anthropic`, which is sent Messages requests as they are): the request is translated
//! to a chat request, and the chat answer back into a Message, or the chat stream into
//! Anthropic's events as it arrives. Server tools and content chat cannot carry are
//! refused with the parameter named.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::dialect::Translate;
use super::{Untranslatable, named_event};
use crate::streams::SseParser;
use crate::streams::chat::{ChatEvent, read_chat_data};

/// What turns a chat answer back into the Message the client asked for.
pub struct Back {
    id: String,
    model: Value,
}

impl super::Back for Back {
    /// A chat completion becomes a Message; anything else (an error in OpenAI's shape,
    /// which the Messages front renders in Anthropic's) passes.
    fn whole(&self, body: Bytes) -> Bytes {
        match from_chat(&body, &self.id, &self.model) {
            Some(message) => Bytes::from(message.to_string()),
            None => body,
        }
    }

    /// Chat chunks become Anthropic's events.
    fn stream(self: Box<Self>) -> Box<dyn Translate> {
        Box::new(Events::new(self.id, self.model))
    }
}

/// A Messages request (JSON) as the chat request to send for it, and how the answer
/// comes back. The message's id is made from the request's.
pub fn translate(body: &[u8], request_id: &str) -> Result<(Bytes, Back), Untranslatable> {
    let request: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| invalid("messages", "the request body is not a JSON object".into()))?;
    let chat = to_chat(&request)?;
    let back = Back {
        id: format!("msg_{}", request_id.trim_start_matches("req_")),
        model: request.get("model").cloned().unwrap_or(Value::Null),
    };
    Ok((
        Bytes::from(serde_json::to_vec(&chat).unwrap_or_default()),
        back,
    ))
}

/// Why a Messages request cannot be served through a chat-completions upstream.
fn unsupported(param: &'static str, what: &str) -> Untranslatable {
    Untranslatable::unsupported(param, what, "text, images, tools and tool results")
}

fn invalid(param: &'static str, message: String) -> Untranslatable {
    Untranslatable::invalid(param, message)
}

/// A Messages request as a chat-completions request.
pub fn to_chat(request: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    let value = |name: &str| request.get(name).filter(|v| !v.is_null()).cloned();
    let mut messages = Vec::new();
    match value("system") {
        None => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
        Some(_) => {
            return Err(invalid(
                "system",
                "'system' must be a string or a list of text blocks".into(),
            ));
        }
    }
    let Some(Value::Array(turns)) = value("messages") else {
        return Err(invalid(
            "messages",
            "'messages' must be a list of messages".into(),
        ));
    };
    if turns.is_empty() {
        return Err(invalid(
            "messages",
            "'messages' must hold at least one message".into(),
        ));
    }
    for (at, turn) in turns.iter().enumerate() {
        message(turn, at, &mut messages)?;
    }
    let Some(max_tokens) = value("max_tokens").filter(Value::is_u64) else {
        return Err(invalid(
            "max_tokens",
            "'max_tokens' is required: the most tokens the answer may have".into(),
        ));
    };

    let mut chat = Map::new();
    if let Some(model) = value("model") {
        chat.insert("model".into(), model);
    }
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("max_tokens".into(), max_tokens);
    for name in ["temperature", "top_p"] {
        if let Some(v) = value(name) {
            chat.insert(name.into(), v);
        }
    }
    if let Some(stop) = value("stop_sequences") {
        chat.insert("stop".into(), stop);
    }
    if let Some(user) = value("metadata").and_then(|m| m.get("user_id").cloned()) {
        chat.insert("user".into(), user);
    }
    if let Some(Value::Array(tools)) = value("tools") {
        let tools = tools
            .iter()
            .enumerate()
            .map(
                |(at, tool)| match tool.get("type").and_then(Value::as_str) {
                    None | Some("custom") => Ok(json!({"type": "function", "function": {
                        "name": tool.get("name"),
                        "description": tool.get("description"),
                        "parameters": tool.get("input_schema"),
                    }})),
                    Some(other) => Err(unsupported(
                        "tools",
                        &format!("tools[{at}] of type \"{other}\" (a server tool)"),
                    )),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = value("tool_choice") {
        let chat_choice = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice.get("name")}}),
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "'tool_choice' must be auto, any, tool or none".into(),
                ));
            }
        };
        chat.insert("tool_choice".into(), chat_choice);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if value("stream") == Some(Value::Bool(true)) {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(chat)
}

/// One Messages turn, appended as chat messages: tool results become tool messages of
/// their own, before what else the turn says.
fn message(turn: &Value, at: usize, messages: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{at}].role must be user or assistant"),
            ));
        }
    };
    let blocks = match turn.get("content") {
        Some(Value::String(text)) => {
            messages.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{at}].content must be a string or a list of blocks"),
            ));
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": block.get("text")})),
            Some("image") => {
                let source = block.get("source");
                let url = match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .and_then(|s| s["media_type"].as_str())
                            .unwrap_or("image/png"),
                        source.and_then(|s| s["data"].as_str()).unwrap_or("")
                    ),
                    Some("url") => source
                        .and_then(|s| s["url"].as_str())
                        .unwrap_or("")
                        .to_string(),
                    _ => {
                        return Err(unsupported(
                            "messages",
                            &format!(
                                "messages[{at}].content[{b}], an image that is neither base64 nor a URL,"
                            ),
                        ));
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") => calls.push(super::anthropic::tool_call(block)),
            Some("tool_result") => {
                let content = match block.get("content") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(blocks)) => blocks
                        .iter()
                        .filter_map(|b| b.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => String::new(),
                };
                let content = if block.get("is_error") == Some(&Value::Bool(true)) {
                    format!("Error: {content}")
                } else {
                    content
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": content,
                }));
            }
            // Earlier reasoning: a chat upstream takes none back.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(unsupported(
                    "messages",
                    &format!(
                        "messages[{at}].content[{b}] of type \"{}\"",
                        other.unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let mut message =
            json!({"role": "assistant", "content": (!text.is_empty()).then(|| text.join(""))});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        messages.push(message);
    } else if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// Chat's `finish_reason` as Anthropic's `stop_reason`.
fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ => "end_turn",
    }
}

fn usage(chat: Option<&Value>) -> (u64, u64) {
    let count = |name: &str| {
        chat.and_then(|u| u.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (count("prompt_tokens"), count("completion_tokens"))
}

/// A tool call's arguments as the `input` object Anthropic gives.
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// A whole chat completion as a Message; none when it is not one.
pub fn from_chat(body: &[u8], id: &str, model: &Value) -> Option<Value> {
    let chat: Value = serde_json::from_slice(body).ok()?;
    let choice = chat.get("choices")?.get(0)?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id"),
                "name": call["function"].get("name"),
                "input": tool_input(arguments),
            }));
        }
    }
    let (input, output) = usage(chat.get("usage"));
    Some(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }))
}

/// The content block being streamed.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A tool call, by its index in the chat stream.
    Tool(u64),
}

/// Translates a chat stream into Anthropic's stream events as its bytes arrive.
pub struct Events {
    parser: SseParser,
    id: String,
    model: Value,
    started: bool,
    /// The open block and its index; `next` is the index the next block gets.
    open: Option<(Block, usize)>,
    next: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
    ended: bool,
}

impl Events {
    pub fn new(id: String, model: Value) -> Events {
        Events {
            parser: SseParser::default(),
            id,
            model,
            started: false,
            open: None,
            next: 0,
            finish_reason: None,
            usage: None,
            ended: false,
        }
    }

    /// The events that chat stream bytes complete (none, for bytes that add nothing).
    pub fn translate(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if !self.started {
            self.started = true;
            // Input tokens are known only at the end, from the usage chunk; they come
            // again in message_delta, which the SDKs read.
            let message = json!({
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            });
            named_event(&mut out, "message_start", json!({"message": message}));
        }
        for event in self.parser.push(bytes) {
            read_chat_data(&event.data, |event| self.on(&mut out, event));
        }
        out
    }

    fn on(&mut self, out: &mut Vec<u8>, event: ChatEvent<'_>) {
        if self.ended {
            return;
        }
        match event {
            ChatEvent::Text(text) => {
                let index = self.open(out, Block::Text, json!({"type": "text", "text": ""}));
                let delta = json!({"type": "text_delta", "text": text});
                named_event(
                    out,
                    "content_block_delta",
                    json!({"index": index, "delta": delta}),
                );
            }
            ChatEvent::Call {
                index,
                id,
                name,
                arguments,
            } => {
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let index = self.open(out, Block::Tool(index), start);
                if !arguments.is_empty() {
                    let delta = json!({"type": "input_json_delta", "partial_json": arguments});
                    named_event(
                        out,
                        "content_block_delta",
                        json!({"index": index, "delta": delta}),
                    );
                }
            }
            ChatEvent::Finish(reason) => self.finish_reason = Some(reason.to_string()),
            ChatEvent::Usage(usage) => self.usage = Some(usage.clone()),
            ChatEvent::Done => self.finish(out),
            ChatEvent::Error(error) => {
                let message = error["message"]
                    .as_str()
                    .unwrap_or("the upstream stream failed");
                let body = json!({"error": {"type": "api_error", "message": message}});
                named_event(out, "error", body);
                self.ended = true;
            }
        }
    }

    /// Opens `block` unless it is the open one, closing the open one first.
    fn open(&mut self, out: &mut Vec<u8>, block: Block, start: Value) -> usize {
        if let Some((open, index)) = self.open
            && open == block
        {
            return index;
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((block, index));
        named_event(
            out,
            "content_block_start",
            json!({"index": index, "content_block": start}),
        );
        index
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            named_event(out, "content_block_stop", json!({"index": index}));
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let (input, output) = usage(self.usage.as_ref());
        let delta = json!({
            "stop_reason": stop_reason(self.finish_reason.as_deref()),
            "stop_sequence": null,
        });
        let usage = json!({"input_tokens": input, "output_tokens": output});
        named_event(
            out,
            "message_delta",
            json!({"delta": delta, "usage": usage}),
        );
        named_event(out, "message_stop", json!({}));
        self.ended = true;
    }
}

impl Translate for Events {
    fn push(&mut self, bytes: &[u8]) -> Bytes {
        Bytes::from(self.translate(bytes))
    }

    fn finish(&mut self) -> Bytes {
        // A last event without its blank line still counts; a stream that ended
        // without `[DONE]` is the relay's to report.
        Bytes::from(self.translate(b"\n\n"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::providers::responses::testing::{named_events, openai_frames};

    fn fields(body: Value) -> Map<String, Value> {
        body.as_object().unwrap().clone()
    }

    fn chat(body: Value) -> Value {
        Value::Object(to_chat(&fields(body)).unwrap())
    }

    fn translated(frames: &[String]) -> Vec<(String, Value)> {
        let mut events = Events::new("msg_1".into(), json!("claude"));
        let out: String = frames
            .iter()
            .map(|f| String::from_utf8(events.translate(f.as_bytes())).unwrap())
            .collect();
        named_events(&out)
    }

    #[test]
    fn a_messages_request_becomes_a_chat_request() {
        let chat = chat(json!({
            "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "x"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                    {"type": "text", "text": "So?"},
                ]},
            ],
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        }));
        assert_eq!(chat["max_tokens"], json!(100));
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], json!("u1"));
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            messages[1]["content"][1]["image_url"]["url"],
            json!("data:image/jpeg;base64,AAAA")
        );
        assert_eq!(messages[2]["content"], json!("Let me look."));
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            json!("{\"q\":\"x\"}")
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"})
        );
        assert_eq!(
            messages[4],
            json!({"role": "user", "content": [{"type": "text", "text": "So?"}]})
        );
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(chat["tool_choice"], json!("required"));
    }

    #[test]
    fn max_tokens_is_required_as_anthropic_requires_it() {
        let refused = to_chat(&fields(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        ));
        assert_eq!(refused.unwrap_err().param, "max_tokens");
        let refused = to_chat(&fields(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ));
        assert!(refused.unwrap_err().message.contains("tools[0]"));
    }

    #[test]
    fn a_whole_chat_answer_becomes_a_message() {
        let answer = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        });
        let m = from_chat(answer.to_string().as_bytes(), "msg_1", &json!("claude")).unwrap();
        assert_eq!(m["type"], json!("message"));
        assert_eq!(m["content"][0], json!({"type": "text", "text": "Hi"}));
        assert_eq!(m["content"][1]["input"], json!({"a": 1}));
        assert_eq!(m["stop_reason"], json!("tool_use"));
        assert_eq!(m["usage"]["input_tokens"], json!(7));
        assert_eq!(m["usage"]["output_tokens"], json!(3));
    }

    #[test]
    fn a_recorded_openai_chat_stream_becomes_anthropic_events() {
        let frames = openai_frames();
        let events = translated(&frames);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds[..2], ["message_start", "content_block_start"]);
        assert_eq!(
            kinds[kinds.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let text: String = events
            .iter()
            .filter(|(k, _)| k == "content_block_delta")
            .map(|(_, e)| e["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Café au lait, s'il vous plaît ☕!");
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], json!("end_turn"));
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 14, "output_tokens": 11})
        );
    }

    #[test]
    fn streamed_tool_calls_become_tool_use_blocks_and_errors_error_events() {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let frames = [
            chunk(json!({"content": "Checking."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "look", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":1}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            "data: [DONE]\n\n".to_string(),
        ];
        let events = translated(&frames);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[4].1["index"], json!(1));
        assert_eq!(events[4].1["content_block"]["name"], json!("look"));
        assert_eq!(events[5].1["delta"]["partial_json"], json!("{\"q\":1}"));
        assert_eq!(events[7].1["delta"]["stop_reason"], json!("tool_use"));

        let broken = translated(&[
            chunk(json!({"content": "Hel"}), Value::Null),
            "data: {\"error\":{\"message\":\"the upstream stopped\",\"code\":\"x\"}}\n\n"
                .to_string(),
        ]);
        let (kind, error) = broken.last().unwrap();
        assert_eq!(kind, "error");
        assert_eq!(error["error"]["message"], json!("the upstream stopped"));
    }
}
