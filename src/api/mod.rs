//! The OpenAI-compatible front: routes, request ids, body limits, and turning gateway
//! answers into HTTP responses.
//!
//! Handlers parse only what routing needs (`model`, `stream`, `encoding_format`) and pass
//! every other field through untouched. Every response carries `x-request-id`; every
//! error is OpenAI-shaped (see `error`), including unknown paths, wrong methods and panics.

mod completions;
mod error;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use serde_json::json;

use crate::admission::RateHeaders;
use crate::gateway::Gateway;

pub use error::ApiError;

/// A request's id, generated on arrival and echoed as `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    fn generate() -> RequestId {
        RequestId(format!("req_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..)).into())
    }
}

/// The public API's router.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/embeddings", post(completions::embeddings))
        .route("/v1/models", get(models))
        .route("/v1/streams/{id}", get(watch_stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|req: Request| async move {
            ApiError::not_found(req.method().as_str(), req.uri().path())
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
        })
        .layer(axum::middleware::from_fn(request_context))
        .with_state(gateway)
}

/// Gives every request an id, and turns a panic in a handler into a 500 in OpenAI's shape
/// instead of a dropped connection.
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = RequestId::generate();
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let handler = crate::telemetry::RequestScope::new(next.run(req));
    let mut response = match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(request_id = %id.0, %method, %path, panic = %what, "request handler panicked");
            ApiError::internal().into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `GET /v1/models`: the configured aliases, in OpenAI's list shape.
async fn models(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    gateway.authenticate(authorization(&headers))?;
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

/// `GET /v1/streams/{id}`: follow a live (or recently finished) stream of the same tenant
/// from the start, or after `Last-Event-ID`. Events carry their index as the SSE id.
async fn watch_stream(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (tenant, _) = gateway.authenticate(authorization(&headers))?;
    // Another tenant's stream does not exist, as far as this tenant can tell.
    let log = gateway
        .hub()
        .get(&id)
        .filter(|log| log.tenant == tenant.name)
        .ok_or_else(|| ApiError::stream_not_found(&id))?;
    let from = crate::streams::resume_from(&headers);
    let reader = gateway
        .hub()
        .reader(&log, from, true, log.origin_strips_usage);
    let mut response = Response::new(axum::body::Body::from_stream(reader));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-switchyard-stream-id", value);
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
        .filter(|i| i.health.state == "healthy")
        .count();
    let instances: usize = regions.iter().map(|r| r.instances.len()).sum();
    let status = if routable > 0 {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if routable > 0 { "ready" } else { "not ready: no instance takes requests" },
        "instances": instances,
        "routable_instances": routable,
        "regions": regions.iter().map(|r| json!({ "name": r.name, "state": r.state })).collect::<Vec<_>>(),
    });
    (status, axum::Json(body)).into_response()
}

/// OpenAI's `x-ratelimit-*` headers for the limits a tenant has.
pub(crate) fn rate_headers(headers: &RateHeaders) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(r) = &headers.requests {
        out.push(("x-ratelimit-limit-requests", r.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", r.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", openai_duration(r.reset)));
    }
    if let Some(t) = &headers.tokens {
        out.push(("x-ratelimit-limit-tokens", t.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", t.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", openai_duration(t.reset)));
    }
    out
}

/// Durations as OpenAI writes them in headers and messages: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = format!("{}.{:03}", rest / 1000, rest % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_the_way_openai_writes_them() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }
}
