//! `POST /v1/chat/completions` (and legacy `/v1/completions`), plain and streamed, with
//! OpenAI's exact SSE framing; `POST /v1/messages`, the same answers in Anthropic's
//! Messages format and events; and `POST /v1/responses`, OpenAI's Responses API, whose
//! responses the mock stores (`previous_response_id`, `GET`, `DELETE`, `cancel`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{MockState, Outage, wire};

/// What one request will produce, fixed before the first byte is sent.
struct Plan {
    id: String,
    created: u64,
    model: String,
    tokens: Vec<String>,
    finish_reason: &'static str,
    prompt_tokens: u64,
    include_usage: bool,
    ttft: Duration,
    /// Time between tokens; zero sends as fast as possible.
    gap: Duration,
    fail_after: Option<u32>,
    hang_after: Option<u32>,
    framing: wire::Framing,
    chunk_bytes: usize,
    shape: Shape,
    /// A chat request offering tools whose last user message names one: the answer
    /// calls it (OpenAI's `tool_calls` entry) instead of saying anything.
    tool_call: Option<Value>,
    /// A Responses request's `previous_response_id`, `instructions` and `store`.
    previous: Option<String>,
    instructions: Value,
    store: bool,
}

/// Which API a request came in on, and so the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    /// A legacy text completion (`/v1/completions`).
    Text,
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's Responses API.
    Responses,
}

impl Plan {
    fn usage(&self) -> Value {
        let arguments = self
            .tool_call
            .as_ref()
            .and_then(|call| call.pointer("/function/arguments"))
            .and_then(Value::as_str)
            .map_or(0, wire::text_tokens);
        let completion = self.tokens.len() as u64 + arguments;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        })
    }

    /// When token `i` (0-based) is due, counted from the request's arrival.
    fn due(&self, i: usize) -> Duration {
        self.ttft + self.gap * i as u32
    }
}

pub async fn completions(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    answer(state, body, Shape::Chat).await
}

/// Anthropic's Messages API: the same answers as a Message or Anthropic's events.
pub async fn messages(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    answer(state, body, Shape::Messages).await
}

/// OpenAI's Responses API: the same answers as a Response object or Responses events.
pub async fn responses(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    answer(state, body, Shape::Responses).await
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn stored(State(state): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    match state.stored(&id) {
        Some(stored) => axum::Json(stored.object).into_response(),
        None => response_not_found(&id),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_stored(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    let deleted = state
        .responses
        .lock()
        .is_ok_and(|mut stored| stored.remove(&id).is_some());
    if deleted {
        axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        response_not_found(&id)
    }
}

/// `POST /v1/responses/{id}/cancel`: the mock runs no background responses.
pub async fn cancel_stored(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    if state.stored(&id).is_none() {
        return response_not_found(&id);
    }
    wire::error(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        "Cannot cancel a synchronous response.",
    )
}

fn response_not_found(id: &str) -> Response {
    wire::error(
        axum::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        &format!("Response with id '{id}' not found."),
    )
}

/// A Responses request's `input` as messages: a text is one user message.
fn input_messages(input: Option<&Value>) -> Option<Vec<Value>> {
    match input {
        Some(Value::String(text)) => Some(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => Some(items.clone()),
        _ => None,
    }
}

/// Legacy text completions: the same answers, as `text_completion` objects.
pub async fn text_completions(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    answer(state, body, Shape::Text).await
}

async fn answer(state: Arc<MockState>, body: Bytes, shape: Shape) -> Response {
    let text = shape == Shape::Text;
    let anthropic = shape == Shape::Messages;
    state.bump(&state.counters.chat_requests);
    let arrived = Instant::now();
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) if anthropic => {
            return wire::anthropic_error(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("There was an error parsing the body: {e}"),
            );
        }
        Err(e) => return wire::bad_json(&e),
    };
    if !request.is_object() {
        return wire::error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "The request body must be a JSON object.",
        );
    }
    state.remember(&request);
    if anthropic && let Some(refusal) = anthropic_refusal(&request) {
        return refusal;
    }
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return wire::missing_parameter("model");
    };
    if !state.models.iter().any(|m| m == model) {
        return if anthropic {
            wire::anthropic_error(
                axum::http::StatusCode::NOT_FOUND,
                "not_found_error",
                &format!("model: {model}"),
            )
        } else {
            wire::unknown_model(model)
        };
    }
    let responses = shape == Shape::Responses;
    let prompt = match shape {
        Shape::Text => "prompt",
        Shape::Responses => "input",
        _ => "messages",
    };
    let messages = match request.get(prompt) {
        Some(Value::Array(messages)) => messages.clone(),
        Some(Value::String(single)) if text => vec![Value::String(single.clone())],
        input if responses => match input_messages(input) {
            Some(messages) => messages,
            None => return wire::missing_parameter(prompt),
        },
        _ => return wire::missing_parameter(prompt),
    };
    let previous = request
        .get("previous_response_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    // What an earlier response of the conversation counted, input and output.
    let mut earlier = 0;
    if let Some(previous) = previous.as_deref().filter(|_| responses) {
        match state.stored(previous) {
            Some(stored) => earlier = stored.tokens,
            None => {
                let error = json!({"error": {
                    "message": format!("Previous response with id '{previous}' not found."),
                    "type": "invalid_request_error",
                    "param": "previous_response_id",
                    "code": "previous_response_not_found",
                }});
                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
            }
        }
    }
    let messages = &messages;
    let knobs = state.knobs();
    let limit = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .or_else(|| request.get("max_output_tokens"))
        .and_then(Value::as_u64);
    let wanted = u64::from(knobs.answer_tokens);
    let tool_call = (shape == Shape::Chat)
        .then(|| tool_call(&request, messages))
        .flatten();
    let (count, finish_reason) = match limit {
        _ if tool_call.is_some() => (0, "tool_calls"),
        Some(limit) if limit < wanted && !knobs.ignore_max_tokens => (limit, "length"),
        _ => (wanted, "stop"),
    };
    let seed = wire::fnv(
        serde_json::to_string(messages)
            .unwrap_or_default()
            .as_bytes(),
    );
    let plan = Plan {
        id: wire::id(match shape {
            Shape::Chat => "chatcmpl-",
            Shape::Text => "cmpl-",
            Shape::Messages => "msg_",
            Shape::Responses => "resp_",
        }),
        created: wire::now_secs(),
        model: model.to_string(),
        tokens: {
            // Cut a full answer short, as a length-limited model does: no closing period.
            let mut tokens = wire::answer_tokens(seed, wanted as usize);
            tokens.truncate(count as usize);
            tokens
        },
        finish_reason,
        prompt_tokens: wire::prompt_tokens(messages)
            + earlier
            + request
                .get("system")
                .or_else(|| request.get("instructions"))
                .map(|system| wire::text_tokens(&system_text(system)))
                .unwrap_or(0),
        include_usage: request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ttft: Duration::from_millis(knobs.ttft_ms),
        gap: if knobs.tokens_per_sec > 0.0 {
            Duration::from_secs_f64(1.0 / knobs.tokens_per_sec)
        } else {
            Duration::ZERO
        },
        fail_after: knobs.fail_after_tokens,
        hang_after: knobs.hang_after_tokens,
        framing: knobs.framing(),
        chunk_bytes: knobs.wire_chunk_bytes,
        shape,
        tool_call,
        previous,
        instructions: request.get("instructions").cloned().unwrap_or(Value::Null),
        store: request.get("store") != Some(&Value::Bool(false)),
    };
    if responses && plan.store {
        state.store_response(
            &plan.id,
            response_object(&plan, "completed"),
            plan.prompt_tokens + plan.tokens.len() as u64,
        );
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        stream_answer(state, plan, arrived)
    } else {
        let mut end = AnswerEnd::new(&state, Kind::Plain);
        let last = plan.tokens.len().saturating_sub(1);
        pause_until(arrived + plan.due(last)).await;
        end.outcome = Some(Outcome::Completed);
        plain_answer(&plan)
    }
}

/// The Response object of a plan, in `status`, with its output once completed.
fn response_object(plan: &Plan, status: &str) -> Value {
    let done = status != "in_progress";
    let output = if done {
        json!([output_message(plan, plan.tokens.concat(), "completed")])
    } else {
        json!([])
    };
    let status = match (done, plan.finish_reason) {
        (true, "length") => "incomplete",
        _ => status,
    };
    let usage = if done {
        let output = plan.tokens.len() as u64;
        json!({
            "input_tokens": plan.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": plan.prompt_tokens + output,
        })
    } else {
        Value::Null
    };
    json!({
        "id": plan.id,
        "object": "response",
        "created_at": plan.created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": plan.instructions,
        "max_output_tokens": null,
        "model": plan.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": plan.previous,
        "reasoning": {"effort": null, "summary": null},
        "store": plan.store,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {},
    })
}

fn output_message(plan: &Plan, text: String, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    } else {
        json!([])
    };
    json!({
        "id": format!("msg_{}", plan.id.trim_start_matches("resp_")),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

/// OpenAI's Responses events for one answer: the response created and in progress, a
/// message item whose text comes delta by delta, then done and completed with usage.
/// Every event carries its `sequence_number`.
fn responses_events(plan: &Plan) -> Vec<Event> {
    let sequence = std::cell::Cell::new(0u64);
    let named = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(sequence.replace(sequence.get() + 1));
        plan.framing.named(kind, &data)
    };
    let item_id = format!("msg_{}", plan.id.trim_start_matches("resp_"));
    let empty_part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
    let head = [
        named(
            "response.created",
            json!({"response": response_object(plan, "in_progress")}),
        ),
        named(
            "response.in_progress",
            json!({"response": response_object(plan, "in_progress")}),
        ),
        named(
            "response.output_item.added",
            json!({"output_index": 0, "item": output_message(plan, String::new(), "in_progress")}),
        ),
        named(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": empty_part}),
        ),
    ];
    let mut events = vec![Event {
        due: plan.ttft,
        data: Bytes::from(head.concat()),
        tokens_after: 0,
    }];
    for (i, token) in plan.tokens.iter().enumerate() {
        events.push(Event {
            due: plan.due(i),
            data: named(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": token, "logprobs": []}),
            ),
            tokens_after: i as u32 + 1,
        });
    }
    let text = plan.tokens.concat();
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let tail = [
        named(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        ),
        named(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        ),
        named(
            "response.output_item.done",
            json!({"output_index": 0, "item": output_message(plan, text.clone(), "completed")}),
        ),
        {
            let last = response_object(plan, "completed");
            let kind = if last["status"] == "incomplete" {
                "response.incomplete"
            } else {
                "response.completed"
            };
            named(kind, json!({"response": last}))
        },
    ];
    events.push(Event {
        due: plan.due(plan.tokens.len().saturating_sub(1)),
        data: Bytes::from(tail.concat()),
        tokens_after: plan.tokens.len() as u32,
    });
    events
}

fn plain_answer(plan: &Plan) -> Response {
    if plan.shape == Shape::Responses {
        return axum::Json(response_object(plan, "completed")).into_response();
    }
    if plan.shape == Shape::Messages {
        return axum::Json(json!({
            "id": plan.id,
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": [{ "type": "text", "text": plan.tokens.concat() }],
            "stop_reason": stop_reason(plan),
            "stop_sequence": null,
            "usage": anthropic_usage(plan, plan.tokens.len() as u64),
        }))
        .into_response();
    }
    if plan.shape == Shape::Text {
        return axum::Json(json!({
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [{
                "text": plan.tokens.concat(),
                "index": 0,
                "logprobs": null,
                "finish_reason": plan.finish_reason,
            }],
            "usage": plan.usage(),
            "system_fingerprint": "fp_switchyard_mock",
        }))
        .into_response();
    }
    let body = json!({
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [{
            "index": 0,
            "message": match &plan.tool_call {
                Some(call) => json!({ "role": "assistant", "content": null, "tool_calls": [call], "refusal": null, "annotations": [] }),
                None => json!({ "role": "assistant", "content": plan.tokens.concat(), "refusal": null, "annotations": [] }),
            },
            "logprobs": null,
            "finish_reason": plan.finish_reason,
        }],
        "usage": plan.usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_switchyard_mock",
    });
    axum::Json(body).into_response()
}

/// Counts an answer as completed, cancelled or failed when it ends, however it ends:
/// dropped unfinished means the client went away.
struct AnswerEnd {
    state: Arc<MockState>,
    kind: Kind,
    outcome: Option<Outcome>,
}

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Stream,
}

enum Outcome {
    Completed,
    Failed,
}

impl AnswerEnd {
    fn new(state: &Arc<MockState>, kind: Kind) -> AnswerEnd {
        let c = &state.counters;
        let now = c.answering.fetch_add(1, Ordering::Relaxed) + 1;
        c.most_answering.fetch_max(now, Ordering::Relaxed);
        AnswerEnd {
            state: state.clone(),
            kind,
            outcome: None,
        }
    }
}

impl Drop for AnswerEnd {
    fn drop(&mut self) {
        let c = &self.state.counters;
        c.answering.fetch_sub(1, Ordering::Relaxed);
        let counter = match (self.kind, &self.outcome) {
            (Kind::Plain, Some(_)) => &c.plain_completed,
            (Kind::Plain, None) => &c.plain_cancelled,
            (Kind::Stream, Some(Outcome::Completed)) => &c.streams_completed,
            (Kind::Stream, Some(Outcome::Failed)) => &c.streams_failed,
            (Kind::Stream, None) => &c.streams_cancelled,
        };
        self.state.bump(counter);
    }
}

#[derive(Debug)]
struct StreamCut;

impl std::fmt::Display for StreamCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream cut by the mock")
    }
}

impl std::error::Error for StreamCut {}

/// One SSE event: the bytes and when they are due.
struct Event {
    due: Duration,
    data: Bytes,
    /// Content tokens sent once this event is out.
    tokens_after: u32,
}

/// The fields every `chat.completion.chunk` of a stream shares.
fn envelope(plan: &Plan, choices: Value) -> Value {
    json!({
        "id": plan.id,
        "object": if plan.shape == Shape::Text { "text_completion" } else { "chat.completion.chunk" },
        "created": plan.created,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": "fp_switchyard_mock",
        "choices": choices,
    })
}

fn chunk(plan: &Plan, delta: Value, finish_reason: Option<&str>) -> Bytes {
    let choice = if plan.shape == Shape::Text {
        let text = delta.get("content").cloned().unwrap_or(json!(""));
        json!([{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason }])
    } else {
        json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }])
    };
    let mut chunk = envelope(plan, choice);
    if plan.include_usage {
        chunk["usage"] = Value::Null;
    }
    plan.framing.event(&chunk)
}

/// The call a tool-calling model would make: the first offered tool (`tools` with
/// `type: function`) that the last message, a user's, names. Its arguments are the JSON
/// object written after the name in that message if there is one, else each required
/// parameter filled plainly (strings with the message, numbers 0, booleans false).
/// After a tool's result (a last message of role `tool`) the model answers in words.
fn tool_call(request: &Value, messages: &[Value]) -> Option<Value> {
    let tools = request.get("tools")?.as_array()?;
    let last = messages.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match last.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => return None,
    };
    let function = tools
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| t.get("function"))
        .find(|f| {
            f.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| !name.is_empty() && text.contains(name))
        })?;
    let name = function.get("name")?.as_str()?;
    let after = &text[text.find(name)? + name.len()..];
    let written = after.find('{').and_then(|at| {
        serde_json::Deserializer::from_str(&after[at..])
            .into_iter::<Value>()
            .next()?
            .ok()
            .filter(Value::is_object)
    });
    let arguments = written.unwrap_or_else(|| {
        let properties = function.pointer("/parameters/properties");
        let mut filled = serde_json::Map::new();
        for required in function
            .pointer("/parameters/required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let kind = properties
                .and_then(|p| p.pointer(&format!("/{required}/type")))
                .and_then(Value::as_str);
            let value = match kind {
                Some("integer" | "number") => json!(0),
                Some("boolean") => json!(false),
                _ => json!(text),
            };
            filled.insert(required.to_string(), value);
        }
        Value::Object(filled)
    });
    Some(json!({
        "id": format!("call_{:016x}", wire::fnv(format!("{name}{arguments}").as_bytes())),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    }))
}

fn events(plan: &Plan) -> Vec<Event> {
    if plan.shape == Shape::Messages {
        return anthropic_events(plan);
    }
    if plan.shape == Shape::Responses {
        return responses_events(plan);
    }
    let mut events = Vec::with_capacity(plan.tokens.len() + 5);
    events.push(Event {
        due: plan.ttft,
        data: chunk(
            plan,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        tokens_after: 0,
    });
    if let Some(call) = &plan.tool_call {
        // As OpenAI streams a call: its id and name first, then its arguments.
        let named = json!([{"index": 0, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""}}]);
        let arguments =
            json!([{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]);
        for delta in [named, arguments] {
            events.push(Event {
                due: plan.ttft,
                data: chunk(plan, json!({ "tool_calls": delta }), None),
                tokens_after: 0,
            });
        }
    }
    for (i, token) in plan.tokens.iter().enumerate() {
        events.push(Event {
            due: plan.due(i),
            data: chunk(plan, json!({ "content": token }), None),
            tokens_after: i as u32 + 1,
        });
    }
    let end = plan.due(plan.tokens.len().saturating_sub(1));
    let sent = plan.tokens.len() as u32;
    events.push(Event {
        due: end,
        data: chunk(plan, json!({}), Some(plan.finish_reason)),
        tokens_after: sent,
    });
    if plan.include_usage {
        let mut usage = envelope(plan, json!([]));
        usage["usage"] = plan.usage();
        events.push(Event {
            due: end,
            data: plan.framing.event(&usage),
            tokens_after: sent,
        });
    }
    events.push(Event {
        due: end,
        data: plan.framing.frame("[DONE]"),
        tokens_after: sent,
    });
    events
}

fn stream_answer(state: Arc<MockState>, plan: Plan, arrived: Instant) -> Response {
    state.bump(&state.counters.streams_started);
    let events = match &state.transcript {
        Some(transcript) => vec![Event {
            due: plan.ttft,
            data: transcript.clone(),
            tokens_after: 0,
        }],
        None => events(&plan),
    };
    let end = AnswerEnd::new(&state, Kind::Stream);
    let fail_after = plan.fail_after;
    let hang_after = plan.hang_after;
    let chunk_bytes = plan.chunk_bytes;
    let body = stream::unfold(
        (events.into_iter(), end),
        move |(mut events, mut end)| async move {
            let Some(event) = events.next() else {
                end.outcome = Some(Outcome::Completed);
                drop(end);
                return None;
            };
            pause_until(arrived + event.due).await;
            let cut = end.state.outage() == Some(Outage::Drop)
                || fail_after.is_some_and(|n| event.tokens_after > n);
            if cut {
                // Let the connection flush what was already sent, as a dying server's
                // kernel would, before the connection is aborted.
                tokio::time::sleep(Duration::from_millis(10)).await;
                end.outcome = Some(Outcome::Failed);
                return Some((Err(StreamCut), (events, end)));
            }
            if hang_after.is_some_and(|n| event.tokens_after > n) {
                // Stuck: the connection stays open and nothing more comes.
                std::future::pending::<()>().await;
            }
            Some((Ok::<_, StreamCut>(event.data), (events, end)))
        },
    )
    .flat_map(move |piece| {
        let pieces = match piece {
            Ok(bytes) => wire::pieces(bytes, chunk_bytes)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(cut) => vec![Err(cut)],
        };
        stream::iter(pieces)
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Sleeps until `deadline`, without a trip through the timer (a millisecond's resolution)
/// when it has already passed: an instant mock must answer instantly.
async fn pause_until(deadline: Instant) {
    if deadline > Instant::now() {
        tokio::time::sleep_until(deadline).await;
    }
}

/// What Anthropic refuses before it looks at the model: a request without `max_tokens`
/// or without messages.
fn anthropic_refusal(request: &Value) -> Option<Response> {
    let refuse = |message: &str| {
        Some(wire::anthropic_error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
        ))
    };
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return refuse("max_tokens: Field required");
    }
    if !request.get("messages").is_some_and(Value::is_array) {
        return refuse("messages: Field required");
    }
    None
}

/// A `system` string or list of text blocks as text.
fn system_text(system: &Value) -> String {
    match system {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn stop_reason(plan: &Plan) -> &'static str {
    if plan.finish_reason == "length" {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_usage(plan: &Plan, output: u64) -> Value {
    json!({
        "input_tokens": plan.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
        "service_tier": "standard",
    })
}

/// Anthropic's events for one answer: `message_start`, a text block delta by delta,
/// `message_delta` with the stop reason and output tokens, `message_stop`.
fn anthropic_events(plan: &Plan) -> Vec<Event> {
    let named = |kind: &str, data: Value| plan.framing.named(kind, &data);
    let start = json!({
        "type": "message_start",
        "message": {
            "id": plan.id, "type": "message", "role": "assistant", "model": plan.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": anthropic_usage(plan, 1),
        },
    });
    let mut events = vec![Event {
        due: plan.ttft,
        data: Bytes::from(
            [
                named("message_start", start),
                named(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
                ),
                named("ping", json!({ "type": "ping" })),
            ]
            .concat(),
        ),
        tokens_after: 0,
    }];
    for (i, token) in plan.tokens.iter().enumerate() {
        events.push(Event {
            due: plan.due(i),
            data: named(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": token } }),
            ),
            tokens_after: i as u32 + 1,
        });
    }
    let end = plan.due(plan.tokens.len().saturating_sub(1));
    let sent = plan.tokens.len() as u32;
    let tail = [
        named(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        named(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason(plan), "stop_sequence": null },
                "usage": { "output_tokens": plan.tokens.len() },
            }),
        ),
        named("message_stop", json!({ "type": "message_stop" })),
    ];
    events.push(Event {
        due: end,
        data: Bytes::from(tail.concat()),
        tokens_after: sent,
    });
    events
}
