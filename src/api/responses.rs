//! `POST /v1/responses`, OpenAI's Responses API, through `Gateway::serve` like any other
//! request (admission, seats, routing, failover, cache, audit, watchers). Each instance
//! is sent it in its own way (`providers`): as it is, when the instance serves the
//! Responses API itself (`responses = "native"`), or translated to chat completions and
//! back. Either way the client gets a Response object or Responses events.
//!
//! `previous_response_id`: a response that its instance stores is followed up on that
//! instance alone; a translated one the gateway kept (`conversations`), so it puts the
//! conversation back together in `input` and the follow-up may go anywhere. A response
//! that is gone, or whose instance is gone, is `previous_response_not_found`, never an
//! answer without its context. `GET`/`DELETE /v1/responses/{id}` and `cancel` are asked
//! of the instance that stores the response, or answered from what the gateway kept.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::completions::{chat_inbound, read_fields, render};
use super::{Call, Caller, Refusal, RequestId, authorization};
use crate::domain::{Fields, ModelKind};
use crate::gateway::conversations::{Conversations, Held, Missing, Thread, Turn};
use crate::gateway::{Gateway, Reply, ReplyBody};

const ENDPOINT: &str = "/v1/responses";

pub async fn create(
    State(gateway): State<Arc<Gateway>>,
    Call {
        id,
        source,
        headers,
        body,
    }: Call,
) -> Result<Response, Refusal> {
    let arrival = crate::clock::now();
    let (tenant, key_id) = gateway
        .authenticate(authorization(&headers), source)
        .map(|(tenant, key_id)| (tenant.name.clone(), key_id))?;
    let server = &gateway.config().server;
    let prepared = read_fields(body, server.max_body, server.body_timeout)
        .await
        .and_then(|fields| prepare(&gateway, &tenant, fields));
    let (fields, pin, keeper) = match prepared {
        Ok(prepared) => prepared,
        Err(refusal) => {
            gateway.refused_early(&id.0, ENDPOINT, Some((&tenant, &key_id)), &refusal);
            return Err(refusal);
        }
    };
    let mut inbound = chat_inbound(
        &gateway,
        (id.0, ENDPOINT),
        (tenant, key_id),
        &headers,
        fields,
        arrival,
    );
    inbound.kind = ModelKind::Responses;
    inbound.pin = pin;
    let reply = gateway.serve(inbound).await?;
    Ok(render(keeper.watch(&gateway, reply), false, false))
}

/// The request as the pipeline takes it (a kept conversation put back in `input`), the
/// instance it must go to (the one that stores the response it follows), and what keeps
/// its answer.
fn prepare(
    gateway: &Gateway,
    tenant: &str,
    mut fields: Fields,
) -> Result<(Fields, Option<String>, Keeper), Refusal> {
    let previous = previous_response(&fields)?;
    let input = input_items(&fields);
    let mut pin = None;
    let mut expanded = false;
    if let Some(previous) = &previous {
        match gateway.conversations().history(tenant, previous) {
            Err(missing) => return Err(previous_not_found(previous, missing)),
            Ok(Thread::Upstream(instance)) if gateway.serves_responses(&instance) => {
                pin = Some(instance);
            }
            Ok(Thread::Upstream(instance)) => {
                return Err(Refusal::previous_response_not_found(&format!(
                    "previous response {previous} is stored by instance {instance}, which no longer serves the Responses API here; send the conversation in 'input'"
                )));
            }
            Ok(Thread::Items(mut items)) => {
                items.extend(input.iter().cloned());
                let raw =
                    serde_json::value::to_raw_value(&items).map_err(|_| Refusal::internal())?;
                fields.insert("input".into(), raw);
                fields.shift_remove("previous_response_id");
                expanded = true;
            }
        }
    }
    let keeper = Keeper {
        conversations: gateway.conversations().clone(),
        tenant: tenant.to_string(),
        previous,
        input,
        store: keeps(&fields),
        expanded,
    };
    Ok((fields, pin, keeper))
}

/// `GET /v1/responses/{id}`: a response this tenant was given, while it is kept.
pub async fn retrieve(
    State(gateway): State<Arc<Gateway>>,
    Extension(id): Extension<RequestId>,
    Caller(tenant): Caller,
    Path(response_id): Path<String>,
) -> Result<Response, Refusal> {
    match gateway.conversations().get(&tenant, &response_id) {
        Some(Held::Here(object)) => Ok(json_bytes(object)),
        Some(Held::Upstream(instance)) => {
            let asked = (Method::GET, response_id.as_str(), false);
            upstream_answer(gateway.stored_response(&instance, asked, &id.0).await?)
        }
        None => Err(Refusal::response_not_found(&response_id)),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a response (and has its instance delete it);
/// follow-ups to it are refused.
pub async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Extension(id): Extension<RequestId>,
    Caller(tenant): Caller,
    Path(response_id): Path<String>,
) -> Result<Response, Refusal> {
    let conversations = gateway.conversations();
    match conversations.get(&tenant, &response_id) {
        Some(Held::Here(_)) => {
            conversations.delete(&tenant, &response_id);
            Ok(json_bytes(Bytes::from(
                json!({"id": response_id, "object": "response", "deleted": true}).to_string(),
            )))
        }
        Some(Held::Upstream(instance)) => {
            let asked = (Method::DELETE, response_id.as_str(), false);
            let (status, body) = gateway.stored_response(&instance, asked, &id.0).await?;
            if status.is_success() || status.as_u16() == 404 {
                conversations.delete(&tenant, &response_id);
            }
            upstream_answer((status, body))
        }
        None => Err(Refusal::response_not_found(&response_id)),
    }
}

/// `POST /v1/responses/{id}/cancel`: only a background response can be cancelled, which
/// only an instance that serves the Responses API itself runs.
pub async fn cancel(
    State(gateway): State<Arc<Gateway>>,
    Extension(id): Extension<RequestId>,
    Caller(tenant): Caller,
    Path(response_id): Path<String>,
) -> Result<Response, Refusal> {
    match gateway.conversations().get(&tenant, &response_id) {
        Some(Held::Here(_)) => Err(Refusal::bad_parameter(
            "response_id",
            format!(
                "response {response_id} is not a background response and has already finished; only background responses can be cancelled"
            ),
        )),
        Some(Held::Upstream(instance)) => {
            let asked = (Method::POST, response_id.as_str(), true);
            upstream_answer(gateway.stored_response(&instance, asked, &id.0).await?)
        }
        None => Err(Refusal::response_not_found(&response_id)),
    }
}

fn upstream_answer((status, body): (http::StatusCode, Bytes)) -> Result<Response, Refusal> {
    let mut response = json_bytes(body);
    *response.status_mut() = status;
    Ok(response)
}

/// The `previous_response_id` a request names, if any.
fn previous_response(fields: &Fields) -> Result<Option<String>, Refusal> {
    match fields
        .get("previous_response_id")
        .map(|raw| raw.get().trim())
    {
        None | Some("null") => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw).map(Some).map_err(|_| {
            Refusal::bad_parameter(
                "previous_response_id",
                "'previous_response_id' must be a string".into(),
            )
        }),
    }
}

/// The items a request's `input` adds to a conversation: a text is one user message.
fn input_items(fields: &Fields) -> Vec<Value> {
    match fields
        .get("input")
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn previous_not_found(id: &str, missing: Missing) -> Refusal {
    match missing {
        Missing::NotFound(gone) if gone == id => Refusal::previous_response_not_found(&format!(
            "previous response {id} is not kept by the gateway (it expired, was deleted, or was made by another tenant); send the conversation in 'input'"
        )),
        Missing::NotFound(gone) => Refusal::previous_response_not_found(&format!(
            "previous response {id} follows {gone}, which is no longer kept, so the conversation cannot be put back together; send it in 'input'"
        )),
        Missing::TooLong => Refusal::previous_response_not_found(&format!(
            "the conversation ending with {id} is longer than the gateway walks back; send it in 'input'"
        )),
    }
}

/// Whether the client lets the response be kept (`store`, true unless it says false).
fn keeps(fields: &Fields) -> bool {
    fields
        .get("store")
        .is_none_or(|raw| raw.get().trim() != "false")
}

/// Keeps a finished response for follow-ups: where it is stored, or the conversation.
struct Keeper {
    conversations: Arc<Conversations>,
    tenant: String,
    previous: Option<String>,
    /// The items this request added.
    input: Vec<Value>,
    store: bool,
    /// The conversation was put back in `input`, so the upstream never saw
    /// `previous_response_id`: the answer gets it back.
    expanded: bool,
}

impl Keeper {
    /// The reply as it goes to the client, noting the response it carries when it ends.
    fn watch(self, gateway: &Gateway, mut reply: Reply) -> Reply {
        if !reply.status.is_success() {
            return reply;
        }
        let previous = self.previous.clone().filter(|_| self.expanded);
        if let Some(previous) = previous {
            reply.body = with_previous(reply.body, previous);
        }
        if !self.store {
            return reply;
        }
        let instance = reply
            .headers
            .iter()
            .find(|(name, _)| *name == crate::domain::headers::INSTANCE)
            .and_then(|(_, value)| value.to_str().ok())
            .map(str::to_owned);
        // A reply with no instance came from the cache: its response was made for
        // another request, and is kept as that one's.
        let Some(instance) = instance else {
            return reply;
        };
        let upstream = gateway.serves_responses(&instance).then_some(instance);
        match reply.body {
            ReplyBody::Whole { ref bytes, .. } => {
                if let Ok(object) = serde_json::from_slice::<Value>(bytes) {
                    self.keep(&object, upstream.as_deref(), bytes.clone());
                }
            }
            ReplyBody::Stream(frames) => {
                let mut keeper = Some((self, upstream));
                let frames = frames.inspect(move |frame| {
                    let Ok(frame) = frame else { return };
                    // Only the last event is read: every delta is passed over unparsed.
                    let last_event = |name: &[u8]| frame.windows(name.len()).any(|w| w == name);
                    if !last_event(b"response.completed") && !last_event(b"response.incomplete") {
                        return;
                    }
                    for data in frame_data(frame) {
                        let Ok(event) = serde_json::from_str::<Value>(data) else {
                            continue;
                        };
                        let last = matches!(
                            event.get("type").and_then(Value::as_str),
                            Some("response.completed" | "response.incomplete")
                        );
                        if let (true, Some(object)) = (last, event.get("response"))
                            && let Some((keeper, upstream)) = keeper.take()
                        {
                            let bytes = Bytes::from(object.to_string());
                            keeper.keep(object, upstream.as_deref(), bytes);
                        }
                    }
                });
                reply.body = ReplyBody::Stream(Box::pin(frames));
            }
        }
        reply
    }

    fn keep(self, object: &Value, upstream: Option<&str>, bytes: Bytes) {
        let Some(id) = object.get("id").and_then(Value::as_str) else {
            return;
        };
        let turn = match upstream {
            Some(instance) => Turn::upstream(&self.tenant, self.previous, instance),
            None => {
                let mut items = self.input;
                if let Some(Value::Array(output)) = object.get("output") {
                    items.extend(output.iter().cloned());
                }
                Turn::held(&self.tenant, self.previous, &items, bytes)
            }
        };
        self.conversations.keep(id, turn);
    }
}

/// An answer whose Response objects name `previous` as the response they follow.
fn with_previous(body: ReplyBody, previous: String) -> ReplyBody {
    let set = move |object: &mut Value| {
        if let Some(fields) = object.as_object_mut()
            && fields.get("object") == Some(&json!("response"))
        {
            fields.insert("previous_response_id".into(), json!(previous));
        }
    };
    match body {
        ReplyBody::Whole {
            content_type,
            bytes,
        } => {
            let bytes = match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut object) => {
                    set(&mut object);
                    Bytes::from(object.to_string())
                }
                Err(_) => bytes,
            };
            ReplyBody::Whole {
                content_type,
                bytes,
            }
        }
        // Only the lifecycle events carry the Response: `response.created`, …
        ReplyBody::Stream(frames) => ReplyBody::Stream(Box::pin(frames.map(move |frame| {
            let Ok(bytes) = frame;
            if !bytes.windows(22).any(|w| w == b"\"previous_response_id\"") {
                return Ok(bytes);
            }
            let mut out = Vec::with_capacity(bytes.len() + 32);
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                let event = line
                    .strip_prefix(b"data: ")
                    .and_then(|data| serde_json::from_slice::<Value>(data.trim_ascii_end()).ok());
                match event {
                    Some(mut event) if event.get("response").is_some() => {
                        if let Some(object) = event.get_mut("response") {
                            set(object);
                        }
                        out.extend_from_slice(format!("data: {event}\n").as_bytes());
                    }
                    _ => out.extend_from_slice(line),
                }
            }
            Ok(Bytes::from(out))
        }))),
    }
}

/// The `data:` payloads of one canonical SSE frame.
fn frame_data(frame: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(frame)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
}

fn json_bytes(bytes: Bytes) -> Response {
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
