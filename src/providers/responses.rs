//! OpenAI's Responses API for instances that speak only chat completions (`responses =
//! "translate"`, the default; many llama.cpp, vLLM and Ollama servers): the request is
//! translated to a chat request, and the chat answer back into a Response object, or
//! the chat stream into Responses events as it arrives. What a chat upstream cannot do
//! (built-in tools, files by id, item references, background responses, a response
//! stored upstream) is refused with the parameter named.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::dialect::Translate;
use super::{Untranslatable, named_event};
use crate::streams::SseParser;
use crate::streams::chat::{ChatEvent, read_chat_data};

fn invalid(param: &'static str, message: String) -> Untranslatable {
    Untranslatable::invalid(param, message)
}

fn unsupported(param: &'static str, what: &str) -> Untranslatable {
    let translated = "text, images by URL, function tools and their outputs";
    Untranslatable::unsupported(param, what, translated)
}

/// What turns a chat answer back into the Response the client asked for.
pub struct Back {
    id: String,
    echo: Echo,
}

impl super::Back for Back {
    /// A chat completion becomes a Response; anything else (an error in OpenAI's shape,
    /// which the Responses API shares) passes.
    fn whole(&self, body: Bytes) -> Bytes {
        match from_chat(&body, &self.id, &self.echo) {
            Some(object) => Bytes::from(object.to_string()),
            None => body,
        }
    }

    /// Chat chunks become Responses events.
    fn stream(self: Box<Self>) -> Box<dyn Translate> {
        Box::new(Events::new(self.id, self.echo))
    }
}

/// A Responses request (JSON) as the chat request to send for it, and how the answer
/// comes back. The response's id is made from the request's.
pub fn translate(body: &[u8], request_id: &str) -> Result<(Bytes, Back), Untranslatable> {
    let request: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| invalid("input", "the request body is not a JSON object".into()))?;
    let chat = to_chat(&request)?;
    let back = Back {
        id: format!("resp_{}", request_id.trim_start_matches("req_")),
        echo: Echo::of(&request),
    };
    let bytes = serde_json::to_vec(&chat).unwrap_or_default();
    Ok((Bytes::from(bytes), back))
}

/// The fields of a Responses request that its answer repeats.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    model: Value,
    instructions: Value,
    max_output_tokens: Value,
    temperature: Value,
    top_p: Value,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: Value,
    text: Value,
    metadata: Value,
    user: Value,
    previous_response_id: Value,
    store: bool,
}

impl Echo {
    fn of(request: &Map<String, Value>) -> Echo {
        let get = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
        let or = |value: Value, default: Value| if value.is_null() { default } else { value };
        Echo {
            model: get("model"),
            instructions: get("instructions"),
            max_output_tokens: get("max_output_tokens"),
            temperature: or(get("temperature"), json!(1.0)),
            top_p: or(get("top_p"), json!(1.0)),
            tools: or(get("tools"), json!([])),
            tool_choice: or(get("tool_choice"), json!("auto")),
            parallel_tool_calls: or(get("parallel_tool_calls"), json!(true)),
            text: or(get("text"), json!({"format": {"type": "text"}})),
            metadata: or(get("metadata"), json!({})),
            user: get("user"),
            previous_response_id: get("previous_response_id"),
            store: request.get("store") != Some(&Value::Bool(false)),
        }
    }

    /// A Response object in `status`, with `output` and `usage`.
    fn response(
        &self,
        id: &str,
        created_at: u64,
        status: &str,
        output: Value,
        usage: Value,
    ) -> Value {
        let incomplete = match status {
            "incomplete" => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": self.user,
            "metadata": self.metadata,
        })
    }
}

fn now_secs() -> u64 {
    crate::telemetry::now_ms() / 1000
}

/// A Responses request as a chat-completions request. The conversation is all in
/// `input`: a follow-up to a stored response reaches a chat upstream only after the
/// gateway has put the conversation back together.
pub fn to_chat(request: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    let value = |name: &str| request.get(name).filter(|v| !v.is_null()).cloned();
    if value("previous_response_id").is_some() {
        return Err(unsupported(
            "previous_response_id",
            "a response stored upstream",
        ));
    }
    if value("background") == Some(Value::Bool(true)) {
        return Err(unsupported("background", "a background response"));
    }
    // Instructions are the request's own: a follow-up does not inherit them.
    let system = match value("instructions") {
        None => None,
        Some(Value::String(text)) => Some(json!({"role": "system", "content": text})),
        Some(_) => {
            return Err(invalid(
                "instructions",
                "'instructions' must be a string".into(),
            ));
        }
    };
    let mut messages = Vec::new();
    match value("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (at, item) in items.iter().enumerate() {
                input_item(item, at, &mut messages)?;
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "'input' must be a string or a list of input items".into(),
            ));
        }
    }
    if messages.is_empty() {
        return Err(invalid("input", "'input' holds no messages".into()));
    }
    let messages: Vec<Value> = system.into_iter().chain(messages).collect();

    let mut chat = Map::new();
    let mut put = |name: &str, value: &Value| {
        chat.insert(name.to_string(), value.clone());
    };
    if let Some(model) = value("model") {
        put("model", &model);
    }
    put("messages", &Value::Array(messages));
    for name in [
        "temperature",
        "top_p",
        "user",
        "parallel_tool_calls",
        "seed",
    ] {
        if let Some(v) = value(name) {
            put(name, &v);
        }
    }
    if let Some(max) = value("max_output_tokens") {
        put("max_tokens", &max);
    }
    if let Some(reasoning) = value("reasoning")
        && let Some(effort) = reasoning.get("effort").filter(|e| !e.is_null())
    {
        put("reasoning_effort", effort);
    }
    if let Some(tools) = value("tools") {
        put("tools", &chat_tools(&tools)?);
    }
    if let Some(choice) = value("tool_choice") {
        let choice = match choice {
            Value::Object(ref object) if object.get("type") == Some(&json!("function")) => {
                json!({"type": "function", "function": {"name": object.get("name")}})
            }
            Value::String(_) => choice,
            _ => {
                return Err(unsupported("tool_choice", "a built-in tool choice"));
            }
        };
        put("tool_choice", &choice);
    }
    if let Some(format) = value("text").and_then(|text| text.get("format").cloned()) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = Map::new();
                for key in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(key) {
                        schema.insert(key.into(), v.clone());
                    }
                }
                put(
                    "response_format",
                    &json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some("json_object") => put("response_format", &json!({"type": "json_object"})),
            _ => {}
        }
    }
    if value("stream") == Some(Value::Bool(true)) {
        put("stream", &Value::Bool(true));
        put("stream_options", &json!({"include_usage": true}));
    }
    Ok(chat)
}

/// One item of `input`, appended to the chat messages.
fn input_item(item: &Value, at: usize, messages: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer" | "system") => "system",
                Some(role @ ("user" | "assistant")) => role,
                _ => {
                    return Err(invalid(
                        "input",
                        format!("input[{at}].role must be user, assistant, system or developer"),
                    ));
                }
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => Value::String(text.clone()),
                Some(Value::Array(parts)) => {
                    let parts = parts
                        .iter()
                        .enumerate()
                        .map(|(p, part)| content_part(part, at, p))
                        .collect::<Result<Vec<_>, _>>()?;
                    // Assistant and system turns take text only, in chat.
                    if role != "user" {
                        let text: Vec<&str> = parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect();
                        Value::String(text.join(""))
                    } else {
                        Value::Array(parts)
                    }
                }
                _ => {
                    return Err(invalid(
                        "input",
                        format!("input[{at}].content must be a string or a list of parts"),
                    ));
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        Some("function_call") => {
            let call = json!({
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            });
            // Calls made in one turn travel in one assistant message.
            match messages.last_mut() {
                Some(last)
                    if last.get("role") == Some(&json!("assistant"))
                        && last.get("tool_calls").is_some() =>
                {
                    if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => String::new(),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id"),
                "content": output,
            }));
        }
        // Reasoning the model did in an earlier turn: a chat upstream takes none back.
        Some("reasoning") => {}
        Some("item_reference") => {
            return Err(invalid(
                "input",
                format!(
                    "input[{at}] refers to a stored item, which the gateway does not keep yet; send the item itself"
                ),
            ));
        }
        Some(other) => {
            return Err(unsupported(
                "input",
                &format!("input[{at}] of type \"{other}\""),
            ));
        }
    }
    Ok(())
}

/// One content part of an input message, as a chat content part.
fn content_part(part: &Value, at: usize, p: usize) -> Result<Value, Untranslatable> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => Ok(
            json!({"type": "text", "text": part.get("text").and_then(Value::as_str).unwrap_or("")}),
        ),
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                    image["detail"] = detail.clone();
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None => Err(unsupported(
                "input",
                &format!("input[{at}].content[{p}], an image by file id,"),
            )),
        },
        Some("refusal") => Ok(
            json!({"type": "text", "text": part.get("refusal").and_then(Value::as_str).unwrap_or("")}),
        ),
        other => Err(unsupported(
            "input",
            &format!(
                "input[{at}].content[{p}] of type \"{}\"",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

/// Responses tools as chat tools: functions only.
fn chat_tools(tools: &Value) -> Result<Value, Untranslatable> {
    let Value::Array(tools) = tools else {
        return Err(invalid("tools", "'tools' must be a list".into()));
    };
    tools
        .iter()
        .enumerate()
        .map(
            |(at, tool)| match tool.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut function = Map::new();
                    for key in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                            function.insert(key.into(), v.clone());
                        }
                    }
                    Ok(json!({"type": "function", "function": function}))
                }
                other => Err(unsupported(
                    "tools",
                    &format!(
                        "tools[{at}] of type \"{}\" (a built-in tool)",
                        other.unwrap_or("(none)")
                    ),
                )),
            },
        )
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Chat's usage as the Responses API counts it.
fn usage(chat: Option<&Value>) -> Value {
    let Some(usage) = chat.filter(|u| u.is_object()) else {
        return Value::Null;
    };
    let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    let detail = |outer: &str, inner: &str| {
        usage
            .get(outer)
            .and_then(|d| d.get(inner))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (input, output) = (count("prompt_tokens"), count("completion_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": detail("prompt_tokens_details", "cached_tokens")},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": detail("completion_tokens_details", "reasoning_tokens")},
        "total_tokens": input + output,
    })
}

/// The status a chat `finish_reason` ends a response in.
fn status_of(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "incomplete",
        _ => "completed",
    }
}

/// A whole chat completion as a Response object; none when it is not one.
pub fn from_chat(body: &[u8], id: &str, echo: &Echo) -> Option<Value> {
    let chat: Value = serde_json::from_slice(body).ok()?;
    let choice = chat.get("choices")?.get(0)?;
    let message = choice.get("message")?;
    let mut output = Vec::new();
    let suffix = id.trim_start_matches("resp_");
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        output.push(message_item(&format!("msg_{suffix}"), text, "completed"));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (i, call) in calls.iter().enumerate() {
            let function = call.get("function");
            output.push(json!({
                "type": "function_call",
                "id": format!("fc_{suffix}_{i}"),
                "call_id": call.get("id"),
                "name": function.and_then(|f| f.get("name")),
                "arguments": function.and_then(|f| f.get("arguments")).cloned().unwrap_or(json!("")),
                "status": "completed",
            }));
        }
    }
    let status = status_of(choice.get("finish_reason").and_then(Value::as_str));
    let created = chat
        .get("created")
        .and_then(Value::as_u64)
        .unwrap_or_else(now_secs);
    let object = echo.response(
        id,
        created,
        status,
        Value::Array(output),
        usage(chat.get("usage")),
    );
    Some(object)
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": if status == "completed" {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        } else {
            json!([])
        },
    })
}

/// A function call being streamed.
struct Call {
    output_index: usize,
    id: String,
    call_id: Value,
    name: Value,
    arguments: String,
    done: bool,
}

/// Translates a chat stream into Responses events as its bytes arrive.
pub struct Events {
    parser: SseParser,
    id: String,
    echo: Echo,
    created_at: u64,
    sequence: u64,
    started: bool,
    /// The message item: its output index and text, once text has come.
    text: Option<(usize, String)>,
    text_done: bool,
    calls: Vec<Call>,
    outputs: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
    ended: bool,
}

impl Events {
    pub fn new(id: String, echo: Echo) -> Events {
        Events {
            parser: SseParser::default(),
            id,
            echo,
            created_at: now_secs(),
            sequence: 0,
            started: false,
            text: None,
            text_done: false,
            calls: Vec::new(),
            outputs: 0,
            finish_reason: None,
            usage: None,
            ended: false,
        }
    }

    fn suffix(&self) -> &str {
        self.id.trim_start_matches("resp_")
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut event: Value) {
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        named_event(out, kind, event);
    }

    /// The events that chat stream bytes complete (none, for bytes that add nothing).
    pub fn translate(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if !self.started {
            self.started = true;
            let response = self.snapshot("in_progress");
            self.emit(&mut out, "response.created", json!({"response": response}));
            let response = self.snapshot("in_progress");
            self.emit(
                &mut out,
                "response.in_progress",
                json!({"response": response}),
            );
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
            ChatEvent::Text(text) => self.text_delta(out, text),
            ChatEvent::Call {
                index,
                id,
                name,
                arguments,
            } => self.call_delta(out, index as usize, (id, name), arguments),
            ChatEvent::Finish(reason) => self.finish_reason = Some(reason.to_string()),
            ChatEvent::Usage(usage) => self.usage = Some(usage.clone()),
            ChatEvent::Done => self.finish(out),
            ChatEvent::Error(error) => self.fail(out, error),
        }
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, delta: &str) {
        let item_id = format!("msg_{}", self.suffix());
        let index = match &mut self.text {
            Some((index, text)) => {
                text.push_str(delta);
                *index
            }
            None => {
                let index = self.outputs;
                self.outputs += 1;
                self.text = Some((index, delta.to_string()));
                let item = message_item(&item_id, "", "in_progress");
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({
                        "item_id": item_id, "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    }),
                );
                index
            }
        };
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn call_delta(
        &mut self,
        out: &mut Vec<u8>,
        index: usize,
        (id, name): (Option<&Value>, Option<&Value>),
        arguments: &str,
    ) {
        if index >= self.calls.len() {
            // A new call: the text before it is complete.
            self.close_text(out);
            let output_index = self.outputs;
            self.outputs += 1;
            let call = Call {
                output_index,
                id: format!("fc_{}_{index}", self.suffix()),
                call_id: id.cloned().unwrap_or(Value::Null),
                name: name.cloned().unwrap_or(Value::Null),
                arguments: String::new(),
                done: false,
            };
            let item = call_item(&call, "in_progress");
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            );
            self.calls.push(call);
        }
        let Some(call) = self.calls.get_mut(index) else {
            return;
        };
        if !arguments.is_empty() {
            call.arguments.push_str(arguments);
            let event =
                json!({"item_id": call.id, "output_index": call.output_index, "delta": arguments});
            self.emit(out, "response.function_call_arguments.delta", event);
        }
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        let Some((index, text)) = self.text.clone() else {
            return;
        };
        if std::mem::replace(&mut self.text_done, true) {
            return;
        }
        let item_id = format!("msg_{}", self.suffix());
        let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
        self.emit(
            out,
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
        );
        self.emit(
            out,
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
        );
        let item = message_item(&item_id, &text, "completed");
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }

    fn close_calls(&mut self, out: &mut Vec<u8>) {
        for i in 0..self.calls.len() {
            if std::mem::replace(&mut self.calls[i].done, true) {
                continue;
            }
            let call = &self.calls[i];
            let done = json!({
                "item_id": call.id, "output_index": call.output_index,
                "name": call.name, "arguments": call.arguments,
            });
            let item = call_item(call, "completed");
            let index = call.output_index;
            self.emit(out, "response.function_call_arguments.done", done);
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
        }
    }

    /// Every output item as it stands.
    fn output(&self) -> Value {
        let mut items: Vec<(usize, Value)> = Vec::new();
        if let Some((index, text)) = &self.text {
            items.push((
                *index,
                message_item(&format!("msg_{}", self.suffix()), text, "completed"),
            ));
        }
        for call in &self.calls {
            items.push((call.output_index, call_item(call, "completed")));
        }
        items.sort_by_key(|(index, _)| *index);
        Value::Array(items.into_iter().map(|(_, item)| item).collect())
    }

    fn snapshot(&self, status: &str) -> Value {
        let output = if status == "in_progress" {
            json!([])
        } else {
            self.output()
        };
        self.echo.response(
            &self.id,
            self.created_at,
            status,
            output,
            usage(self.usage.as_ref()),
        )
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.close_text(out);
        self.close_calls(out);
        let status = status_of(self.finish_reason.as_deref());
        let response = self.snapshot(status);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, kind, json!({"response": response}));
        self.ended = true;
    }

    /// The stream broke or was cut: the client gets an `error` event and the response
    /// as failed, with what it had so far.
    fn fail(&mut self, out: &mut Vec<u8>, error: &Value) {
        let code = error.get("code").cloned().unwrap_or(Value::Null);
        let message = error
            .get("message")
            .cloned()
            .unwrap_or(json!("the upstream stream failed"));
        // The documented fields, and `error` too, on which the SDKs raise mid-stream.
        let event = json!({
            "code": code, "message": message, "param": null,
            "error": {"type": "server_error", "code": code, "message": message, "param": null},
        });
        self.emit(out, "error", event);
        let mut response = self.snapshot("failed");
        response["error"] = json!({"code": code, "message": message});
        self.emit(out, "response.failed", json!({"response": response}));
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

fn call_item(call: &Call, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": call.id,
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    })
}

/// What the translations' tests share.
#[cfg(test)]
pub(super) mod testing {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    /// OpenAI's recorded chat stream, frame by frame.
    pub fn openai_frames() -> Vec<String> {
        include_str!("../../tests/transcripts/openai.sse")
            .split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|f| format!("{f}\n\n"))
            .collect()
    }

    /// Named SSE events as (type, data), each data's `type` checked against its name.
    pub fn named_events(text: &str) -> Vec<(String, Value)> {
        crate::streams::parse_events(text.as_bytes())
            .into_iter()
            .map(|event| {
                let data: Value = serde_json::from_str(&event.data).unwrap();
                let kind = event.kind.unwrap();
                assert_eq!(data["type"], json!(kind));
                (kind, data)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::testing::{named_events, openai_frames};
    use super::*;

    fn fields(body: Value) -> Map<String, Value> {
        body.as_object().unwrap().clone()
    }

    fn chat(body: Value) -> Value {
        Value::Object(to_chat(&fields(body)).unwrap())
    }

    /// Every event of a translated stream: (type, data).
    fn events(frames: &[&str], echo: Echo) -> Vec<(String, Value)> {
        let mut events = Events::new("resp_1".into(), echo);
        let out: String = frames
            .iter()
            .map(|f| String::from_utf8(events.translate(f.as_bytes())).unwrap())
            .collect();
        named_events(&out)
    }

    #[test]
    fn instructions_and_text_input_become_system_and_user_messages() {
        let chat = chat(json!({
            "model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 20, "temperature": 0, "store": true, "metadata": {"a": "b"},
        }));
        assert_eq!(
            chat,
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "temperature": 0, "max_tokens": 20,
            })
        );
    }

    #[test]
    fn items_tools_and_formats_translate_to_chat() {
        let chat = chat(json!({
            "model": "m",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather in "},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
            ],
            "tools": [{"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"},
            "stream": true,
        }));
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "Use tools."})
        );
        assert_eq!(
            chat["messages"][1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}})
        );
        // Two calls of one turn in one assistant message, then the tool's output.
        assert_eq!(chat["messages"][2]["tool_calls"][1]["id"], json!("call_2"));
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"],
            json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(
            chat["messages"][4],
            json!({"role": "assistant", "content": "It is sunny."})
        );
        assert_eq!(chat["messages"].as_array().unwrap().len(), 5);
        assert_eq!(
            chat["tools"][0],
            json!({"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(chat["response_format"]["json_schema"]["name"], json!("w"));
        assert_eq!(chat["reasoning_effort"], json!("low"));
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn a_response_stored_upstream_cannot_be_continued_through_chat() {
        let body = json!({"model": "m", "input": "And now?", "previous_response_id": "resp_1"});
        let refused = to_chat(&fields(body)).unwrap_err();
        assert_eq!(
            (refused.param, refused.invalid),
            ("previous_response_id", false)
        );
    }

    #[test]
    fn what_a_chat_upstream_cannot_do_is_refused_by_name() {
        let refused = |body: Value| to_chat(&fields(body)).unwrap_err();
        let r = refused(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
        assert_eq!((r.param, r.invalid), ("tools", false));
        assert!(
            r.message.contains("tools[0] of type \"web_search\""),
            "{}",
            r.message
        );
        let r =
            refused(json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}));
        assert!(r.message.contains("input[0]"), "{}", r.message);
        let r = refused(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        );
        assert!(
            r.message
                .contains("input[0].content[0] of type \"input_file\""),
            "{}",
            r.message
        );
        let r = refused(json!({"model": "m"}));
        assert_eq!((r.param, r.invalid), ("input", true));
    }

    #[test]
    fn a_whole_chat_answer_becomes_a_response() {
        let echo = Echo::of(&fields(
            json!({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 5}),
        ));
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "length"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14,
                "prompt_tokens_details": {"cached_tokens": 3}},
        });
        let r = from_chat(answer.to_string().as_bytes(), "resp_1", &echo).unwrap();
        assert_eq!(r["object"], json!("response"));
        assert_eq!(
            r["model"],
            json!("gpt-4o-mini"),
            "the model the request named"
        );
        assert_eq!(r["status"], json!("incomplete"));
        assert_eq!(
            r["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(r["output"][0]["content"][0]["text"], json!("Hello there"));
        assert_eq!(r["output"][1]["call_id"], json!("call_1"));
        assert_eq!(r["usage"]["input_tokens"], json!(9));
        assert_eq!(r["usage"]["output_tokens"], json!(5));
        assert_eq!(r["usage"]["total_tokens"], json!(14));
        assert_eq!(
            r["usage"]["input_tokens_details"]["cached_tokens"],
            json!(3)
        );
        assert!(from_chat(b"{\"data\": []}", "resp_1", &echo).is_none());
    }

    #[test]
    fn a_recorded_openai_chat_stream_becomes_responses_events() {
        let frames = openai_frames();
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        let events = events(&frames, Echo::default());
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            kinds[kinds.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let text: String = events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, e)| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Café au lait, s'il vous plaît ☕!");
        let sequence: Vec<u64> = events
            .iter()
            .map(|(_, e)| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], json!("completed"));
        assert_eq!(done["output"][0]["content"][0]["text"], json!(text));
        assert_eq!(done["usage"]["input_tokens"], json!(14));
        assert_eq!(done["usage"]["output_tokens"], json!(11));
    }

    #[test]
    fn streamed_tool_calls_become_function_call_items() {
        // OpenAI's chat stream for one call, its arguments in pieces.
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null})
            )
        };
        let frames = [
            chunk(json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "weather", "arguments": ""}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":15,\"total_tokens\":65}}\n\n".to_string(),
            "data: [DONE]\n\n".to_string(),
        ];
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        let events = events(&frames, Echo::default());
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[2].1["item"]["name"], json!("weather"));
        assert_eq!(events[5].1["arguments"], json!("{\"city\":\"Paris\"}"));
        let done = &events[7].1["response"];
        assert_eq!(done["output"][0]["call_id"], json!("call_abc"));
        assert_eq!(
            done["output"][0]["arguments"],
            json!("{\"city\":\"Paris\"}")
        );
        assert_eq!(done["usage"]["total_tokens"], json!(65));
    }

    #[test]
    fn a_broken_stream_ends_in_an_error_and_a_failed_response() {
        let frames = [
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"the upstream stopped\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_stream_broken\"}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        ];
        let events = events(&frames, Echo::default());
        let (kind, error) = &events[events.len() - 2];
        assert_eq!(kind, "error");
        assert_eq!(error["code"], json!("upstream_stream_broken"));
        let (kind, failed) = events.last().unwrap();
        assert_eq!(kind, "response.failed");
        assert_eq!(failed["response"]["status"], json!("failed"));
        assert_eq!(
            failed["response"]["error"]["message"],
            json!("the upstream stopped")
        );
    }
}
