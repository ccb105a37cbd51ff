//! The OpenAI-compatible front, an HTTP adapter over `Gateway::serve`: routes, request
//! ids, body limits, authentication, and rendering replies as HTTP.
//!
//! Handlers read the body as top-level fields and pass them on untouched; the pipeline
//! decides. Every response carries `x-request-id`; every error is OpenAI-shaped (see
//! `error`), including unknown paths, wrong methods and panics.

mod batches;
mod completions;
pub(crate) mod error;
mod files;
mod flows;
mod messages;
mod responses;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use serde_json::json;
use tower::ServiceExt;

use crate::domain::headers;
use crate::domain::snapshot::InstanceState;
use crate::gateway::Gateway;

pub use error::Refusal;

pub use crate::domain::Source;

/// A request's id, generated on arrival and echoed as `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// A model request as a front reads it: its id (set by `request_context`), its source
/// (by the listener), its own headers and its body. One extractor taking the request apart, where the
/// `HeaderMap` extractor would copy every header of every request.
pub struct Call {
    pub id: RequestId,
    pub source: Option<std::net::IpAddr>,
    pub headers: HeaderMap,
    pub body: axum::body::Body,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _: &S) -> Result<Call, Self::Rejection> {
        let (parts, body) = request.into_parts();
        Ok(Call::from_parts(parts, body))
    }
}

impl Call {
    fn from_parts(parts: axum::http::request::Parts, body: axum::body::Body) -> Call {
        Call {
            // `request_context` gives every request an id before any handler runs.
            id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate),
            source: parts.extensions.get::<Source>().and_then(|s| s.0),
            headers: parts.headers,
            body,
        }
    }
}

impl RequestId {
    /// `req_` and 24 random hex digits, written on the stack (every request has one).
    fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = *b"req_000000000000000000000000";
        let random = (u128::from(fastrand::u64(..)) << 32) | u128::from(fastrand::u32(..));
        for (i, digit) in id[4..].iter_mut().enumerate() {
            *digit = HEX[(random >> (4 * (23 - i)) & 0xf) as usize];
        }
        RequestId(std::str::from_utf8(&id).unwrap_or("req_").into())
    }
}

/// The public API: its routes behind the context every request gets (see `Api`).
pub fn router(gateway: Arc<Gateway>) -> Api {
    let routes = Router::new()
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/embeddings", post(completions::embeddings))
        .route("/v1/completions", post(completions::text))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route(
            "/v1/files",
            post(files::upload)
                .get(files::list)
                // Uploads are streamed to disk and capped by `[files]`, not by the
                // request body limit.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/flows", get(flows::list_flows))
        .route("/v1/flows/runs", get(flows::list_runs))
        .route("/v1/flows/runs/{id}", get(flows::retrieve))
        .route("/v1/flows/runs/{id}/cancel", post(flows::cancel))
        .route("/v1/flows/{name}/runs", post(flows::run))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/streams/{id}", get(watch_stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|req: Request| async move {
            Refusal::not_found(req.method().as_str(), req.uri().path())
        })
        .method_not_allowed_fallback(|req: Request| async move {
            Refusal::method_not_allowed(req.method().as_str(), req.uri().path())
        })
        .with_state(gateway.clone());
    Api { routes, gateway }
}

/// The public API's routes, with `request_context` around them once, in front of the
/// routing, rather than as a layer on each route: axum's `from_fn` clones and boxes the
/// route it wraps for every request, and here that is a box of one future.
#[derive(Clone)]
pub struct Api {
    routes: Router,
    gateway: Arc<Gateway>,
}

/// The model calls, by method and exact path: what nearly every request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelCall {
    Chat,
    Completions,
    Embeddings,
    Messages,
    Responses,
}

impl ModelCall {
    fn of(req: &Request) -> Option<ModelCall> {
        if req.method() != axum::http::Method::POST {
            return None;
        }
        Some(match req.uri().path() {
            "/v1/chat/completions" => ModelCall::Chat,
            "/v1/completions" => ModelCall::Completions,
            "/v1/embeddings" => ModelCall::Embeddings,
            "/v1/messages" => ModelCall::Messages,
            "/v1/responses" => ModelCall::Responses,
            _ => return None,
        })
    }
}

impl Api {
    /// A model call goes straight to its handler, the handler its route names; anything
    /// else through the router. axum's routing (the route's boxed service cloned, its
    /// futures nested, the path's parameters stored) cost a whole answer about 3,000 of
    /// its 101,000 instructions and 5 of its 62 allocations.
    async fn dispatch(self, req: Request) -> Response {
        let Some(kind) = ModelCall::of(&req) else {
            let Ok(response) = self.routes.oneshot(req).await;
            return response;
        };
        let gateway = State(self.gateway);
        let (parts, body) = req.into_parts();
        let call = Call::from_parts(parts, body);
        match kind {
            ModelCall::Chat => completions::chat(gateway, call).await.into_response(),
            ModelCall::Completions => completions::text(gateway, call).await.into_response(),
            ModelCall::Embeddings => completions::embeddings(gateway, call).await.into_response(),
            ModelCall::Messages => messages::create(gateway, call).await,
            ModelCall::Responses => responses::create(gateway, call).await.into_response(),
        }
    }
}

impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // A router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        crate::wake::boxed(|| request_context(req, self.clone()).map(Ok))
    }
}

/// Gives every request an id, and turns a panic in a handler into a 500 in OpenAI's shape
/// instead of a dropped connection.
async fn request_context(mut req: Request, api: Api) -> Response {
    let id = RequestId::generate();
    req.extensions_mut().insert(id.clone());
    // The listener tells where the request came from; a router served some other way
    // cannot say.
    if req.extensions().get::<Source>().is_none() {
        req.extensions_mut().insert(Source(None));
    }
    let method = req.method().clone();
    // For the panic report only: a shared count, not a copy.
    let uri = req.uri().clone();
    if let Some(coding) = unsupported_transfer_coding(req.headers()) {
        let mut response = Refusal::unsupported_transfer_coding(&coding).into_response();
        // The body's length cannot be known, so the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let handler = crate::telemetry::RequestScope::new(|| api.dispatch(req));
    let mut response = match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => error::openai_shaped(response, "invalid_request_error").await,
        Err(panic) => {
            let what = crate::telemetry::panic_text(panic.as_ref());
            let path = uri.path();
            tracing::error!(request_id = %id.0, %method, %path, panic = %what, "request handler panicked");
            Refusal::internal().into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(headers::REQUEST_ID, value);
    }
    response
}

/// The first transfer coding other than `chunked` (which HTTP/1.1 decodes), if any.
fn unsupported_transfer_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|value| value.to_str().unwrap_or("(not text)"))
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("chunked"))
        .map(str::to_owned)
}

/// The tenant a request acts for, by its bearer key: for handlers that only read or
/// change a tenant's own things (files, kept responses).
pub struct Caller(pub String);

impl axum::extract::FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Caller, Refusal> {
        let source = parts.extensions.get::<Source>().and_then(|s| s.0);
        let (tenant, _) = gateway.authenticate(authorization(&parts.headers), source)?;
        Ok(Caller(tenant.name.clone()))
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `GET /v1/models`: the configured aliases, in OpenAI's list shape.
async fn models(
    State(gateway): State<Arc<Gateway>>,
    Extension(Source(source)): Extension<Source>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    gateway.authenticate(authorization(&headers), source)?;
    let data: Vec<_> = gateway
        .config()
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.alias,
                "object": "model",
                "created": 0,
                "owned_by": "switchyard",
            })
        })
        .collect();
    Ok(axum::Json(json!({ "object": "list", "data": data })).into_response())
}

/// `GET /v1/models/{id}`: one configured alias in OpenAI's shape, or 404 `model_not_found`.
async fn model(
    State(gateway): State<Arc<Gateway>>,
    Extension(Source(source)): Extension<Source>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    gateway.authenticate(authorization(&headers), source)?;
    let config = gateway.config();
    let Some(model) = config.model(&id) else {
        let known: Vec<&str> = config.models.iter().map(|m| m.alias.as_str()).collect();
        return Err(Refusal::unknown_model(&id, &known));
    };
    Ok(axum::Json(json!({
        "id": model.alias,
        "object": "model",
        "created": 0,
        "owned_by": "switchyard",
    }))
    .into_response())
}

/// `GET /v1/streams/{id}`: follow a live (or recently finished) stream of the same tenant
/// from the start, or after `Last-Event-ID`. Events carry their index as the SSE id.
async fn watch_stream(
    State(gateway): State<Arc<Gateway>>,
    Extension(Source(source)): Extension<Source>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (tenant, _) = gateway.authenticate(authorization(&headers), source)?;
    // Another tenant's stream does not exist, as far as this tenant can tell.
    let log = gateway
        .hub()
        .get(&id)
        .filter(|log| log.meta.tenant == tenant.name)
        .ok_or_else(|| Refusal::stream_not_found(&id))?;
    let from = resume_from(&headers);
    let reader = gateway
        .hub()
        .watch(&log, from, Some(&tenant.name))
        .map_err(Refusal::too_many_watchers)?;
    let mut response = completions::event_stream(axum::body::Body::from_stream(reader));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(headers::STREAM_ID, value);
    }
    Ok(response)
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: at least one instance takes requests. A load balancer in front of several
/// gateways takes this one out while every upstream is ejected, drained or failing probes.
async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let regions = gateway.router().views();
    let routable: usize = regions
        .iter()
        .flat_map(|r| &r.instances)
        .filter(|i| i.health.state == InstanceState::Healthy)
        .count();
    let instances: usize = regions.iter().map(|r| r.instances.len()).sum();
    let degraded = gateway.persistence().degraded();
    let (status, text) = match (routable, &degraded) {
        (0, _) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no instance takes requests".to_string(),
        ),
        (_, Some(what)) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: persistence degraded ({what})"),
        ),
        _ => (axum::http::StatusCode::OK, "ready".to_string()),
    };
    // Degraded shared state keeps a replica ready: every replica would be alike, and
    // each still enforces its share of the limits (see `[state] grace`).
    let shared_state = match gateway.shared() {
        None => "local",
        Some(shared) if shared.is_degraded() => "degraded",
        Some(_) => "ok",
    };
    let text = match (status, shared_state) {
        (axum::http::StatusCode::OK, "degraded") => {
            "ready; shared state degraded: limits enforced by this replica alone".to_string()
        }
        _ => text,
    };
    let body = json!({
        "status": text,
        "persistence": if degraded.is_some() { "degraded" } else { "ok" },
        "shared_state": shared_state,
        "instances": instances,
        "routable_instances": routable,
        "regions": regions.iter().map(|r| json!({ "name": r.name, "state": r.state })).collect::<Vec<_>>(),
    });
    (status, axum::Json(body)).into_response()
}

/// Where a watcher resumes: the event after its `Last-Event-ID`, or the start.
pub(crate) fn resume_from(headers: &HeaderMap) -> usize {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |last| last.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Api, ModelCall, RequestId};
    use crate::gateway::Gateway;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    /// What `Api` answers to `path` in front of routes where `/boom` panics.
    async fn ask(path: &str) -> (StatusCode, String, serde_json::Value) {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let routes = Router::new().route("/boom", get(boom));
        let request = Request::get(path).body(Body::empty()).unwrap();
        let api = Api {
            routes,
            gateway: Arc::new(Gateway::example()),
        };
        let Ok(response) = api.oneshot(request).await;
        let status = response.status();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, id, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_in_openai_shape_with_the_request_id() {
        let (status, id, body) = ask("/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(id.starts_with("req_"), "{id}");
        assert_eq!(body["error"]["type"], "server_error", "{body}");
    }

    #[tokio::test]
    async fn what_no_route_answers_is_in_openai_shape_with_the_request_id() {
        let (status, id, body) = ask("/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(id.starts_with("req_"), "{id}");
        assert_eq!(body["error"]["code"], "unknown_url", "{body}");
    }

    #[test]
    fn only_a_model_calls_exact_path_and_post_skip_the_router() {
        let of = |method: &str, uri: &str| {
            ModelCall::of(
                &Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        assert_eq!(of("POST", "/v1/chat/completions"), Some(ModelCall::Chat));
        assert_eq!(
            of("POST", "/v1/chat/completions?stream=1"),
            Some(ModelCall::Chat)
        );
        assert_eq!(of("POST", "/v1/completions"), Some(ModelCall::Completions));
        assert_eq!(of("POST", "/v1/embeddings"), Some(ModelCall::Embeddings));
        assert_eq!(of("POST", "/v1/messages"), Some(ModelCall::Messages));
        assert_eq!(of("POST", "/v1/responses"), Some(ModelCall::Responses));
        assert_eq!(of("GET", "/v1/chat/completions"), None);
        assert_eq!(of("POST", "/v1/chat/completions/"), None);
        assert_eq!(of("POST", "/v1/messages/count_tokens"), None);
        assert_eq!(of("POST", "/v1/responses/resp_1/cancel"), None);
    }

    #[test]
    fn request_ids_are_req_and_24_hex_digits_and_differ() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::generate()).collect();
        for id in &ids {
            let digits = id.0.strip_prefix("req_").unwrap_or_default();
            assert_eq!(digits.len(), 24, "{}", id.0);
            assert!(
                digits
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{}",
                id.0
            );
        }
        let distinct: std::collections::HashSet<&str> = ids.iter().map(|id| &*id.0).collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position varies: the random bits reach all of them.
        for position in 4..28 {
            let seen: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.0.as_bytes()[position]).collect();
            assert!(seen.len() > 8, "position {position} barely varies");
        }
    }
}
