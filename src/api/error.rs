//! Renders a `Refusal` in OpenAI's shape `{"error":{"message","type","param","code"}}`
//! with its status and headers: the one place a client's error becomes HTTP.

use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use crate::gateway::Refusal;

/// Makes an error answer that some layer wrote as plain text (axum's extractor
/// rejections: a path that does not decode, a wrong content type) OpenAI-shaped, with
/// its status and text kept. Answers that are JSON already pass untouched.
pub(crate) async fn openai_shaped(response: Response, client_kind: &'static str) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status.as_u16() {
        400 => "invalid_request",
        404 => "unknown_url",
        405 => "method_not_allowed",
        413 => "request_too_large",
        415 => "unsupported_media_type",
        501 => "not_implemented",
        _ => "error",
    };
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        client_kind
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut shaped = (
        status,
        axum::Json(json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        })),
    )
        .into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}
