//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API, so
//! clients of the `anthropic` SDKs use the gateway with their own SDK. The request goes
//! through `Gateway::serve` as it came (`ModelKind::Messages`); Anthropic-dialect
//! instances are sent it as it is, every other instance as chat completions, translated
//! there and back (`providers`), so the answer is a Message, whole or as Anthropic's
//! stream events, either way. Keys come in `x-api-key` (or `Authorization: Bearer`);
//! errors are in Anthropic's shape, `{"type":"error","error":{"type","message"}}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::completions::{chat_inbound, read_fields, render};
use super::{Call, Refusal, Source};
use crate::domain::ModelKind;
use crate::gateway::{Gateway, Reply, ReplyBody};

const ENDPOINT: &str = "/v1/messages";

/// The key as Anthropic's SDKs send it (`x-api-key`), or as OpenAI's do.
fn credentials(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (header("x-api-key"), header("authorization")) {
        (Some(key), _) => Some(format!("Bearer {}", key.trim())),
        (None, Some(authorization)) => Some(authorization.to_string()),
        (None, None) => None,
    }
}

/// A refusal in Anthropic's error shape, with its status and headers.
fn anthropic_error(refusal: Refusal) -> Response {
    let mut response = (
        refusal.status,
        axum::Json(error_body(refusal.status.as_u16(), &refusal.message)),
    )
        .into_response();
    response.headers_mut().extend(refusal.headers);
    response
}

/// Anthropic's error object for an HTTP status.
fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

pub async fn create(State(gateway): State<Arc<Gateway>>, call: Call) -> Response {
    serve(&gateway, call).await.unwrap_or_else(anthropic_error)
}

async fn serve(gateway: &Gateway, call: Call) -> Result<Response, Refusal> {
    let (id, source, headers, body) = (call.id, call.source, &call.headers, call.body);
    let arrival = crate::clock::now();
    let (tenant, key_id) = gateway
        .authenticate(credentials(headers).as_deref(), source)
        .map(|(tenant, key_id)| (tenant.name.clone(), key_id))?;
    let server = &gateway.config().server;
    let fields = match read_fields(body, server.max_body, server.body_timeout).await {
        Ok(fields) => fields,
        Err(refusal) => {
            gateway.refused_early(&id.0, ENDPOINT, Some((&tenant, &key_id)), &refusal);
            return Err(refusal);
        }
    };
    let mut inbound = chat_inbound(
        gateway,
        (id.0, ENDPOINT),
        (tenant, key_id),
        headers,
        fields,
        arrival,
    );
    inbound.kind = ModelKind::Messages;
    let reply = gateway.serve(inbound).await?;
    Ok(render(anthropic_reply(reply), false, false))
}

/// The pipeline's reply as Anthropic's clients read it: a Message or Anthropic's events
/// pass as they are; an upstream's refusal (OpenAI-shaped, as the pipeline reads every
/// error) and the gateway's own error frame on a broken stream become Anthropic's.
fn anthropic_reply(mut reply: Reply) -> Reply {
    reply.body = match reply.body {
        ReplyBody::Whole {
            content_type,
            bytes,
        } if !reply.status.is_success() => {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|e| e["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let body = error_body(reply.status.as_u16(), &message).to_string();
            ReplyBody::Whole {
                content_type,
                bytes: Bytes::from(body),
            }
        }
        ReplyBody::Stream(frames) => ReplyBody::Stream(Box::pin(frames.map(|frame| {
            let Ok(bytes) = frame;
            Ok(anthropic_error_frame(bytes))
        }))),
        whole => whole,
    };
    reply
}

/// The gateway's error frame (`data: {"error": …}`, no event name: a stream that broke,
/// stalled or was cut) as Anthropic's `error` event; any other frame as it is.
fn anthropic_error_frame(frame: Bytes) -> Bytes {
    let Some(data) = frame.strip_prefix(b"data: {\"error\"") else {
        return frame;
    };
    let data = [b"{\"error\"".as_slice(), data].concat();
    let message = serde_json::from_slice::<Value>(data.trim_ascii_end())
        .ok()
        .and_then(|e| e["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the upstream stream failed".to_string());
    let event = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    Bytes::from(format!("event: error\ndata: {event}\n\n"))
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as admission counts them.
pub async fn count_tokens(
    State(gateway): State<Arc<Gateway>>,
    Extension(Source(source)): Extension<Source>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let counted = async {
        gateway.authenticate(credentials(&headers).as_deref(), source)?;
        let server = &gateway.config().server;
        let fields = read_fields(body, server.max_body, server.body_timeout).await?;
        if !fields
            .get("messages")
            .is_some_and(|raw| raw.get().trim_start().starts_with('['))
        {
            return Err(Refusal::bad_parameter(
                "messages",
                "'messages' must be a list of messages".into(),
            ));
        }
        gateway.count_prompt(ModelKind::Messages, &fields).await
    };
    match counted.await {
        Ok(tokens) => axum::Json(json!({"input_tokens": tokens})).into_response(),
        Err(refusal) => anthropic_error(refusal),
    }
}
