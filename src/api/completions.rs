//! `POST /v1/chat/completions` and `POST /v1/embeddings`: read and parse the body,
//! authenticate, hand the request to `Gateway::serve`, and render its reply (SSE, or a
//! whole answer with embeddings in the encoding the client asked for).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::Value;

use super::{Call, Refusal, authorization};
use crate::domain::{CACHE_HEADER, Directives, Fields, ModelKind};
use crate::gateway::{Gateway, Headers, Inbound, Reply, ReplyBody};

pub async fn chat(State(gateway): State<Arc<Gateway>>, call: Call) -> Result<Response, Refusal> {
    proxy(&gateway, ModelKind::Chat, call).await
}

/// `POST /v1/completions`: legacy text completions, which chat aliases serve, passed
/// through for clients that still use them (llama-index's `OpenAILike` defaults to it).
pub async fn text(State(gateway): State<Arc<Gateway>>, call: Call) -> Result<Response, Refusal> {
    proxy(&gateway, ModelKind::Completions, call).await
}

pub async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    call: Call,
) -> Result<Response, Refusal> {
    proxy(&gateway, ModelKind::Embeddings, call).await
}

async fn proxy(gateway: &Gateway, kind: ModelKind, call: Call) -> Result<Response, Refusal> {
    let Call {
        id,
        source,
        ref headers,
        body,
    } = call;
    let arrival = crate::clock::now();
    let endpoint = match kind {
        ModelKind::Chat => "/v1/chat/completions",
        ModelKind::Embeddings => "/v1/embeddings",
        ModelKind::Completions => "/v1/completions",
        ModelKind::Responses => "/v1/responses",
        ModelKind::Messages => "/v1/messages",
    };
    // Failed authentications are counted and audited per source and window, not here.
    let (tenant, key_id) = gateway
        .authenticate(authorization(headers), source)
        .map(|(tenant, key_id)| (tenant.name.clone(), key_id))?;
    let server = &gateway.config().server;
    let fields = match read_fields(body, server.max_body, server.body_timeout).await {
        Ok(fields) => fields,
        Err(refusal) => {
            gateway.refused_early(&id.0, endpoint, Some((&tenant, &key_id)), &refusal);
            return Err(refusal);
        }
    };
    let wants_base64 = fields
        .get("encoding_format")
        .is_some_and(|raw| raw.get().trim() == "\"base64\"");
    let session = session(gateway, headers);
    let reply = gateway
        .serve(Inbound {
            request_id: id.0,
            endpoint,
            tenant,
            key_id,
            kind,
            fields,
            directives: cache_directives(headers),
            session,
            pin: None,
            batch: false,
            arrival,
        })
        .await?;
    Ok(render(reply, kind == ModelKind::Embeddings, wants_base64))
}

/// What the client's headers say about caching: `Cache-Control` and
/// `x-switchyard-cache`.
pub(super) fn cache_directives(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().unwrap_or_default().split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-store" => directives.no_store = true,
                "no-cache" => directives.no_cache = true,
                _ => {}
            }
        }
    }
    directives.opt_in = headers
        .get(CACHE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Some(true),
            "off" | "false" | "0" => Some(false),
            _ => None,
        });
    directives
}

/// The body as top-level fields, each kept as the client wrote it.
pub(super) async fn read_fields(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Fields, Refusal> {
    let bytes = tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .map_err(|_| Refusal::body_timeout(timeout))??;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refusal::not_an_object(),
        _ => Refusal::bad_json(&e),
    })
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Refusal::too_large(limit)
        } else {
            Refusal::unreadable_body(&e.to_string())
        }
    })
}

/// A reply as HTTP: SSE for streams; embeddings put in the encoding asked for.
pub(super) fn render(reply: Reply, embeddings: bool, wants_base64: bool) -> Response {
    let mut response = match reply.body {
        ReplyBody::Whole {
            content_type,
            bytes,
        } => {
            let bytes = if embeddings && reply.status.is_success() {
                encode_embeddings(bytes, wants_base64)
            } else {
                bytes
            };
            let mut response = Response::new(Body::from(bytes));
            *response.headers_mut() = answer_headers(content_type, reply.headers);
            response
        }
        ReplyBody::Stream(events) => {
            let mut response = event_stream(Body::from_stream(events));
            let headers = response.headers_mut();
            for (name, value) in reply.headers {
                headers.insert(name, value);
            }
            response
        }
    };
    *response.status_mut() =
        StatusCode::from_u16(reply.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    response
}

thread_local! {
    /// The names of the last whole answer this worker rendered, in a map with empty
    /// values. Answers carry the same names in the same order (the content type, the
    /// limits, where they were served), so the next one is this map copied and its
    /// values put in place: a map built name by name hashes each name a byte at a time,
    /// which cost rendering an answer three times what the copy does.
    static SHAPE: std::cell::RefCell<HeaderMap> = std::cell::RefCell::new(HeaderMap::new());
}

/// A whole answer's headers: its content type, then the gateway's in the order given
/// (a name given twice keeps its last value).
fn answer_headers(content_type: HeaderValue, headers: Headers) -> HeaderMap {
    SHAPE.with_borrow_mut(|shape| {
        let names = std::iter::once(&header::CONTENT_TYPE).chain(headers.iter().map(|(n, _)| n));
        // Names made from the same constant share their text: its address answers first.
        let same =
            |(a, b): (&HeaderName, &HeaderName)| std::ptr::eq(a.as_str(), b.as_str()) || a == b;
        if shape.len() == headers.len() + 1 && shape.keys().zip(names).all(same) {
            let mut map = shape.clone();
            let values = std::iter::once(content_type).chain(headers.into_iter().map(|(_, v)| v));
            for (slot, value) in map.values_mut().zip(values) {
                *slot = value;
            }
            return map;
        }
        let mut map = HeaderMap::with_capacity(headers.len() + 1);
        map.insert(header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            map.insert(name, value);
        }
        // Room for the request id and the connection's headers, which come next: a
        // copy keeps it.
        *shape = HeaderMap::with_capacity(map.len() + 4);
        for name in map.keys() {
            shape.insert(name.clone(), HeaderValue::from_static(""));
        }
        map
    })
}

/// The pipeline's request for a chat body that a front read (and translated) for
/// `tenant`, with the client's session and cache headers.
pub(super) fn chat_inbound(
    gateway: &Gateway,
    (request_id, endpoint): (Arc<str>, &'static str),
    (tenant, key_id): (String, Arc<str>),
    headers: &HeaderMap,
    fields: Fields,
    arrival: tokio::time::Instant,
) -> Inbound {
    Inbound {
        request_id,
        endpoint,
        tenant,
        key_id,
        kind: ModelKind::Chat,
        fields,
        directives: cache_directives(headers),
        session: session(gateway, headers),
        pin: None,
        batch: false,
        arrival,
    }
}

/// The session key a client sent in the configured header.
fn session(gateway: &Gateway, headers: &HeaderMap) -> Option<String> {
    headers
        .get(gateway.router().policy().session_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A `text/event-stream` response.
pub(super) fn event_stream(body: Body) -> Response {
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

    /// Each answer's headers as one built name by name would have them: its own values
    /// (never the last answer's), in order, whatever shape came before.
    #[test]
    fn answer_headers_are_each_answers_own_whatever_came_before() {
        let named = |names: &[&'static str], tag: &str| -> Headers {
            names
                .iter()
                .map(|n| {
                    let value = HeaderValue::from_str(&format!("{n}={tag}")).unwrap();
                    (HeaderName::from_static(n), value)
                })
                .collect()
        };
        let built = |content_type: &HeaderValue, headers: &Headers| {
            let mut map = HeaderMap::new();
            map.insert(header::CONTENT_TYPE, content_type.clone());
            for (name, value) in headers {
                map.insert(name.clone(), value.clone());
            }
            map.into_iter().collect::<Vec<_>>()
        };
        let json = HeaderValue::from_static("application/json");
        let text = HeaderValue::from_static("text/plain");
        let limits = ["x-ratelimit-limit-requests", "x-switchyard-region"];
        let other = ["x-switchyard-region", "x-ratelimit-limit-requests"];
        let answers = [
            (json.clone(), named(&limits, "1")),
            (text.clone(), named(&limits, "2")),
            (json.clone(), named(&other, "3")),
            (json.clone(), named(&limits[..1], "4")),
            // A name given twice: its last value, as `insert` keeps.
            (text.clone(), named(&[limits[0], limits[1], limits[0]], "5")),
            (json.clone(), named(&limits, "6")),
            (json.clone(), named(&limits, "7")),
        ];
        for (content_type, headers) in answers {
            let expected = built(&content_type, &headers);
            let map = answer_headers(content_type, headers);
            assert_eq!(map.into_iter().collect::<Vec<_>>(), expected);
        }
    }

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
    fn directives_come_from_cache_control_and_the_opt_in_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cache-control",
            "max-age=0, No-Store"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        headers.insert(
            CACHE_HEADER,
            "on".parse().unwrap_or_else(|_| unreachable!()),
        );
        let d = cache_directives(&headers);
        assert!(d.no_store && !d.no_cache);
        assert_eq!(d.opt_in, Some(true));
        assert_eq!(cache_directives(&HeaderMap::new()), Directives::default());
    }

    #[test]
    fn embeddings_already_in_the_right_form_are_untouched() {
        let body = Bytes::from_static(br#"{"data":[{"embedding":"AAAAPw=="}]}"#);
        assert_eq!(encode_embeddings(body.clone(), true), body);
    }
}
