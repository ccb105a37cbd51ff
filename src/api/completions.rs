//! `POST /v1/chat/completions` and `POST /v1/embeddings`: authenticate, read and check the
//! body, forward, and shape the answer (streamed, or whole with embeddings converted to
//! the encoding the client asked for).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use serde_json::Value;

use super::{ApiError, RequestId, authorization, rate_headers};
use crate::admission::{Demand, Usage, estimate};
use crate::cache::{self, Directives, Entry, Landing, Lookup, Stored};
use crate::domain::records::{AuditKind, AuditRecord};
use crate::domain::{Model, ModelKind, Tenant};
use crate::gateway::{
    AnswerBody, Call, Fields, Gateway, StreamAccount, audit_usage, usage_of_answer,
};
use crate::streams;
use crate::streams::hub::ChunkLog;
use crate::telemetry::latency::Metric;

pub async fn chat(
    State(gateway): State<Arc<Gateway>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    proxy(&gateway, ModelKind::Chat, &id, &headers, body).await
}

pub async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    proxy(&gateway, ModelKind::Embeddings, &id, &headers, body).await
}

async fn proxy(
    gateway: &Gateway,
    kind: ModelKind,
    id: &RequestId,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    // The audit record, filled as the request goes (none when the audit log is off).
    let mut record = gateway.audit().policy().enabled.then(|| AuditRecord {
        at_ms: crate::telemetry::now_ms(),
        kind: Some(AuditKind::Request),
        request_id: Some(id.0.to_string()),
        endpoint: Some(format!("/v1{}", kind.upstream_path())),
        ..AuditRecord::default()
    });
    let outcome = match gateway.authenticate(authorization(headers)) {
        Err(error) => Err(ApiError::from(error)),
        Ok((tenant, key_id)) => {
            note(&mut record, |r| {
                r.tenant = Some(tenant.name.clone());
                r.key_id = Some(key_id.to_string());
            });
            gateway.meter().request();
            answer(gateway, kind, id, headers, body, tenant, &mut record).await
        }
    };
    // A stream's record was handed to its account, which writes it when the stream ends.
    if let Some(mut record) = record {
        match &outcome {
            Ok(response) => record.status = Some(response.status().as_u16()),
            Err(error) => {
                record.status = Some(error.status.as_u16());
                record.error = error.code.map(str::to_string);
            }
        }
        record.latency_ms = Some(started.elapsed().as_millis() as u64);
        gateway.audit().record(record);
    }
    if let Err(error) = &outcome {
        gateway.meter().code(error.code.unwrap_or("error"));
    }
    if outcome.as_ref().is_err_and(|e| e.status.is_server_error())
        || outcome.as_ref().is_ok_and(|r| r.status().is_server_error())
    {
        gateway.meter().error();
    }
    outcome
}

async fn answer(
    gateway: &Gateway,
    kind: ModelKind,
    id: &RequestId,
    headers: &HeaderMap,
    body: Body,
    tenant: &Tenant,
    record: &mut Option<AuditRecord>,
) -> Result<Response, ApiError> {
    let arrival = tokio::time::Instant::now();
    let bytes = read_body(body, gateway.config().server.max_body).await?;
    let mut object: Fields = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::not_an_object(),
        _ => ApiError::bad_json(&e),
    })?;
    let alias = match object
        .get("model")
        .map(|raw| serde_json::from_str(raw.get()))
    {
        Some(Ok(Value::String(alias))) if !alias.is_empty() => alias,
        None | Some(Ok(Value::Null | Value::String(_))) => return Err(ApiError::missing_model()),
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "model",
                "'model' must be a string".into(),
            ));
        }
    };
    let alias = alias.as_str();
    let config = gateway.config();
    let model = config.model(alias).ok_or_else(|| {
        let known: Vec<&str> = config
            .models
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.alias.as_str())
            .collect();
        ApiError::unknown_model(alias, &known)
    })?;
    if model.kind != kind {
        let path = match model.kind {
            ModelKind::Chat => "/v1/chat/completions",
            ModelKind::Embeddings => "/v1/embeddings",
        };
        return Err(ApiError::wrong_endpoint(
            alias,
            &model.kind.to_string(),
            path,
        ));
    }
    let stream = match object.get("stream").map(|raw| raw.get()) {
        None | Some("null" | "false") => false,
        Some("true") => kind == ModelKind::Chat,
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "stream",
                "'stream' must be a boolean".into(),
            ));
        }
    };
    note(record, |r| {
        r.model = Some(model.alias.clone());
        r.stream = Some(stream);
        if tenant.audit_content {
            let content = object.get("messages").or(object.get("input"));
            r.prompt = content.and_then(|raw| serde_json::from_str(raw.get()).ok());
        }
    });
    let wants_base64 = object
        .get("encoding_format")
        .is_some_and(|raw| raw.get() == "\"base64\"");
    // Streams always ask the upstream for usage, so they are charged exactly; clients
    // that did not ask for the usage chunk do not get it.
    let strip_usage = stream && !ask_for_usage(&mut object);

    // The read side: a kept answer, or an identical request in flight, may serve it.
    let cache = gateway.cache();
    let ask = cache.ask(
        &tenant.name,
        kind,
        &object,
        Directives::from_headers(headers),
    );
    let flight = loop {
        match cache.lookup(&ask) {
            Lookup::Bypass => break None,
            Lookup::Lead(flight) => break Some(flight),
            Lookup::Hit(entry) => {
                note_hit(record, "cache", Some(entry.usage));
                return from_cache(gateway, tenant, model, &entry, strip_usage, "cache");
            }
            Lookup::Follow(follower) => match follower.landed().await {
                Landing::Whole(entry) => {
                    note_hit(record, "coalesced", Some(entry.usage));
                    return from_cache(gateway, tenant, model, &entry, strip_usage, "coalesced");
                }
                Landing::Stream(log) => {
                    note_hit(record, "coalesced", None);
                    return follow(gateway, tenant, model, log, strip_usage);
                }
                // The leader got no answer to share: try again, perhaps leading.
                Landing::Pending | Landing::Failed => {}
            },
        }
    };
    let cache_result = if flight.is_some() { "miss" } else { "bypass" };
    note(record, |r| r.cache = Some(cache_result.to_string()));
    let field = |name: &str| object.get(name).map(|raw| &**raw);
    let demand = Demand {
        prompt_tokens: match kind {
            ModelKind::Chat => estimate::chat_prompt(model.tokenizer, field("messages")),
            ModelKind::Embeddings => estimate::embeddings_input(model.tokenizer, field("input")),
        },
        max_tokens: field("max_completion_tokens")
            .or(field("max_tokens"))
            .and_then(|raw| raw.get().parse().ok()),
        completion: kind == ModelKind::Chat,
        price: model.price,
    };

    let ticket = gateway
        .admit(&tenant.name, &demand)
        .await
        .map_err(|refused| {
            tracing::debug!(request_id = %id.0, tenant = %tenant.name, ?refused, "request refused");
            ApiError::from(refused)
        })?;
    note(record, |r| {
        r.tokens_reserved = Some(ticket.tokens());
        r.queue_ms = Some(ticket.queued.as_millis() as u64);
    });
    let mut extra = rate_headers(ticket.headers());
    extra.push((
        "x-switchyard-queue-ms",
        ticket.queued.as_millis().to_string(),
    ));
    extra.push((cache::HEADER, cache_result.to_string()));

    let session = headers
        .get(gateway.router().policy().session_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let user = object.get("user")?;
            serde_json::from_str::<String>(user.get()).ok()
        })
        .filter(|key| !key.is_empty());
    let started = tokio::time::Instant::now();
    let tokens = ticket.tokens();
    let answer = gateway
        .forward(Call {
            request_id: &id.0,
            model,
            body: object,
            stream,
            tokens,
            regions: tenant.regions.as_deref(),
            session: session.as_deref(),
        })
        .await
        .map_err(|error| {
            tracing::warn!(request_id = %id.0, tenant = %tenant.name, model = %model.alias, %error, "request failed");
            let mut api = ApiError::from(error).with_headers(extra.clone());
            if let Some(regions) = &tenant.regions {
                api.message.push_str(&format!(
                    " (tenant {} is restricted to {} by data residency)",
                    tenant.name,
                    regions.join(", ")
                ));
            }
            api
        })?;
    tracing::debug!(
        request_id = %id.0,
        tenant = %tenant.name,
        model = %model.alias,
        region = %answer.region,
        instance = %answer.instance,
        status = answer.status.as_u16(),
        stream,
        upstream_ms = started.elapsed().as_millis() as u64,
        "request answered"
    );
    note(record, |r| {
        r.region = Some(answer.region.clone());
        r.instance = Some(answer.instance.clone());
        r.route = Some(answer.reason.clone());
    });

    let mut response = match answer.body {
        AnswerBody::Whole(bytes) => {
            // What the answer used, when it is one to keep.
            let mut kept_usage = None;
            if answer.status.is_success() {
                let upstream = started.elapsed();
                let usage = usage_of_answer(kind, &bytes, &ticket, model.tokenizer);
                kept_usage = Some(usage);
                note(record, |r| {
                    audit_usage(r, usage);
                    if tenant.audit_content {
                        r.answer = answer_text(&bytes);
                    }
                });
                gateway.meter().tokens(usage.total());
                let scopes = scopes(&answer.region, &model.alias, ticket.tier());
                let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                let latency = gateway.latency();
                let total = arrival.elapsed();
                latency.record(Metric::Queue, &scopes, ticket.queued);
                latency.record(Metric::EndToEnd, &scopes, total);
                let recent = gateway.recent();
                recent.record(&format!("tenant:{}", tenant.name), total);
                recent.record(&format!("instance:{}", answer.instance), total);
                latency.record(
                    Metric::Overhead,
                    &scopes,
                    total.saturating_sub(ticket.queued).saturating_sub(upstream),
                );
                ticket.settle(usage);
            } else {
                // The upstream refused the request itself: nothing was used.
                drop(ticket);
            }
            let bytes = if kind == ModelKind::Embeddings && answer.status.is_success() {
                encode_embeddings(bytes, wants_base64)
            } else {
                bytes
            };
            let content_type = answer
                .headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/json"));
            if let (Some(flight), Some(usage)) = (flight, kept_usage) {
                let kept_type = content_type.to_str().unwrap_or("application/json");
                flight.land_whole(kept_type.to_string(), bytes.clone(), usage);
            }
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = answer.status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            response
        }
        AnswerBody::Stream { response, slot } => {
            let describe = format!("{}/{}", answer.region, answer.instance);
            let live = gateway.streams().register(
                &tenant.name,
                &model.alias,
                &answer.region,
                &answer.instance,
            );
            let stream_id = live.id().to_string();
            extra.push(("x-switchyard-stream-id", stream_id.clone()));
            let drained = slot.instance().cut_signal();
            let killed = live.killed();
            let upstream = describe.clone();
            let cut = async move {
                tokio::select! {
                    () = drained => streams::Cut {
                        code: "upstream_drained",
                        message: format!(
                            "the upstream {upstream} was drained by an operator and this stream outlived the drain deadline; the answer is incomplete"
                        ),
                    },
                    () = killed => streams::Cut {
                        code: "stream_killed",
                        message: "an operator ended this stream; the answer is incomplete".into(),
                    },
                }
            };
            let scopes = scopes(&answer.region, &model.alias, ticket.tier());
            gateway.latency().record(
                Metric::Queue,
                &scopes.iter().map(String::as_str).collect::<Vec<_>>(),
                ticket.queued,
            );
            let account =
                StreamAccount::new(ticket, slot, model.tokenizer, live, gateway.meter().clone())
                    .timed(
                        gateway.latency().clone(),
                        (
                            gateway.recent().clone(),
                            vec![
                                format!("tenant:{}", tenant.name),
                                format!("instance:{}", answer.instance),
                            ],
                        ),
                        arrival,
                        scopes,
                    )
                    .audited(gateway.audit().clone(), record.take(), tenant.audit_content);
            let relay = streams::relay(
                response.bytes_stream(),
                account,
                cut,
                describe,
                id.0.to_string(),
            );
            // The relay belongs to the stream's chunk log; this client is its first reader.
            let log = gateway
                .hub()
                .publish(&stream_id, &tenant.name, strip_usage, relay);
            if let Some(flight) = flight {
                flight.land_stream(log.clone());
            }
            let reader = gateway.hub().reader(&log, 0, false, strip_usage);
            event_stream(Body::from_stream(reader))
        }
    };
    extra.push(("x-switchyard-region", answer.region));
    extra.push(("x-switchyard-instance", answer.instance));
    extra.push(("x-switchyard-route", answer.reason));
    add_headers(&mut response, extra);
    Ok(response)
}

/// Fills the audit record, when there is one.
fn note(record: &mut Option<AuditRecord>, fill: impl FnOnce(&mut AuditRecord)) {
    if let Some(record) = record.as_mut() {
        fill(record);
    }
}

/// A request answered without going upstream: the cache's answer, or a leader's.
fn note_hit(record: &mut Option<AuditRecord>, route: &str, usage: Option<Usage>) {
    note(record, |r| {
        r.cache = Some("hit".into());
        r.route = Some(route.into());
        if let Some(usage) = usage {
            audit_usage(r, usage);
        }
    });
}

/// The text of a whole chat answer (every choice's message), for tenants that opted in.
fn answer_text(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let text: Vec<&str> = answer
        .get("choices")?
        .as_array()?
        .iter()
        .filter_map(|c| c.pointer("/message/content")?.as_str())
        .collect();
    (!text.is_empty()).then(|| text.join("\n"))
}

/// Answers from a kept answer (or one an identical request just got): counted as a
/// request, its tokens as `cache.hits_use_tokens` says; a kept stream is replayed as one.
fn from_cache(
    gateway: &Gateway,
    tenant: &Tenant,
    model: &Model,
    entry: &Entry,
    strip_usage: bool,
    route: &str,
) -> Result<Response, ApiError> {
    let ticket = gateway.admit_cached(&tenant.name, model)?;
    let mut extra = rate_headers(ticket.headers());
    ticket.settle(entry.usage);
    let mut response = match &entry.body {
        Stored::Whole {
            content_type,
            bytes,
        } => {
            let mut response = Response::new(Body::from(bytes.clone()));
            if let Ok(value) = HeaderValue::from_str(content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Stored::Events(events) => {
            let events = events.clone().into_iter().map(move |event| {
                Ok::<_, std::convert::Infallible>(if strip_usage {
                    streams::without_usage_chunk(event)
                } else {
                    event
                })
            });
            event_stream(Body::from_stream(futures_util::stream::iter(events)))
        }
    };
    extra.push((cache::HEADER, "hit".into()));
    extra.push(("age", entry.age_secs().to_string()));
    extra.push(("x-switchyard-route", route.into()));
    add_headers(&mut response, extra);
    Ok(response)
}

/// Answers with the chunk log of an identical stream in flight, from its start. The
/// follower is charged when the stream ends, like a hit.
fn follow(
    gateway: &Gateway,
    tenant: &Tenant,
    model: &Model,
    log: Arc<ChunkLog>,
    strip_usage: bool,
) -> Result<Response, ApiError> {
    let ticket = gateway.admit_cached(&tenant.name, model)?;
    let mut extra = rate_headers(ticket.headers());
    let reader = gateway.hub().reader(&log, 0, false, strip_usage);
    if log.tenant == tenant.name {
        extra.push(("x-switchyard-stream-id", log.id.clone()));
    }
    tokio::spawn(async move {
        log.wait_finished().await;
        let usage = streams::usage_in_events(&log.events()).unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            estimated: false,
        });
        ticket.settle(usage);
    });
    let mut response = event_stream(Body::from_stream(reader));
    extra.push((cache::HEADER, "hit".into()));
    extra.push(("x-switchyard-route", "coalesced".into()));
    add_headers(&mut response, extra);
    Ok(response)
}

/// A `text/event-stream` response.
fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn add_headers(response: &mut Response, extra: Vec<(&'static str, String)>) {
    let headers = response.headers_mut();
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// Makes sure the request asks for `stream_options.include_usage`; returns whether the
/// client had asked for it itself.
fn ask_for_usage(object: &mut Fields) -> bool {
    let mut options = object
        .get("stream_options")
        .and_then(|raw| serde_json::from_str::<serde_json::Map<String, Value>>(raw.get()).ok())
        .unwrap_or_default();
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return true;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    if let Ok(raw) = serde_json::value::to_raw_value(&options) {
        object.insert("stream_options".into(), raw);
    }
    false
}

/// The series a request's latency is recorded under.
fn scopes(region: &str, model: &str, tier: &str) -> Vec<String> {
    vec![
        format!("region:{region}"),
        format!("model:{model}"),
        format!("tier:{tier}"),
    ]
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::too_large(limit)
        } else {
            ApiError::unreadable_body(&e.to_string())
        }
    })
}

/// Puts every embedding in the encoding the client asked for: base64 of little-endian
/// f32s, or float arrays. Upstreams that ignore `encoding_format` answer floats, and the
/// Node SDK decodes base64 unconditionally, so this must hold whatever the upstream did.
fn encode_embeddings(bytes: Bytes, base64: bool) -> Bytes {
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    let Some(data) = answer.get_mut("data").and_then(Value::as_array_mut) else {
        return bytes;
    };
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut changed = false;
    for embedding in data.iter_mut().filter_map(|item| item.get_mut("embedding")) {
        match embedding {
            Value::Array(floats) if base64 => {
                let raw: Vec<u8> = floats
                    .iter()
                    .flat_map(|f| (f.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                    .collect();
                *embedding = Value::String(engine.encode(raw));
                changed = true;
            }
            Value::String(text) if !base64 => {
                let Ok(raw) = engine.decode(text.as_bytes()) else {
                    continue;
                };
                let floats: Vec<Value> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .map(|f| Value::from(f64::from(f)))
                    .collect();
                *embedding = Value::Array(floats);
                changed = true;
            }
            _ => {}
        }
    }
    if !changed {
        return bytes;
    }
    serde_json::to_vec(&answer)
        .map(Bytes::from)
        .unwrap_or(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_embeddings_become_base64_and_back() {
        let floats = Bytes::from_static(br#"{"data":[{"embedding":[0.5,-1.0]}],"model":"m"}"#);
        let encoded = encode_embeddings(floats, true);
        let v: Value = serde_json::from_slice(&encoded).unwrap_or_default();
        let text = v.pointer("/data/0/embedding").and_then(Value::as_str);
        let expected = base64::engine::general_purpose::STANDARD
            .encode([0.5f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat());
        assert_eq!(text, Some(expected.as_str()));
        assert_eq!(v["model"], "m");

        let decoded = encode_embeddings(encoded, false);
        let v: Value = serde_json::from_slice(&decoded).unwrap_or_default();
        assert_eq!(
            v.pointer("/data/0/embedding"),
            Some(&serde_json::json!([0.5, -1.0]))
        );
    }

    #[test]
    fn embeddings_already_in_the_right_form_are_untouched() {
        let body = Bytes::from_static(br#"{"data":[{"embedding":"AAAAPw=="}]}"#);
        assert_eq!(encode_embeddings(body.clone(), true), body);
    }
}
