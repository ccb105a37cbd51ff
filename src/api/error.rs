//! The one place where a failure becomes an HTTP response, always in OpenAI's shape
//! `{"error":{"message","type","param","code"}}`. Messages never carry keys or internals
//! beyond what the client needs to act.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::gateway::GatewayError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
}

const INVALID_REQUEST: &str = "invalid_request_error";

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code: Some(code),
            param: None,
            message,
        }
    }

    fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn bad_json(detail: &serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {detail}"),
        )
    }

    pub fn not_an_object() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_json",
            "the request body must be a JSON object".into(),
        )
    }

    pub fn missing_model() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "missing_required_parameter",
            "missing required parameter: 'model'".into(),
        )
        .param("model")
    }

    pub fn bad_parameter(param: &'static str, message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_parameter",
            message,
        )
        .param(param)
    }

    pub fn unknown_model(alias: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "model_not_found",
            format!(
                "the model `{alias}` does not exist on this gateway; available: {}",
                known.join(", ")
            ),
        )
        .param("model")
    }

    pub fn wrong_endpoint(alias: &str, kind: &str, path: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "model_not_supported",
            format!("the model `{alias}` is a {kind} model; send it to {path}"),
        )
        .param("model")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            "request_too_large",
            format!("the request body is larger than this gateway accepts ({limit} bytes)"),
        )
    }

    pub fn unreadable_body(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_body",
            format!("the request body could not be read: {detail}"),
        )
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "unknown_url",
            format!("invalid URL ({method} {path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "the gateway failed while handling this request; it has been logged with the request id"
                .into(),
        )
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let code = match error {
            AuthError::Missing => "missing_api_key",
            AuthError::Invalid => "invalid_api_key",
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            code,
            error.to_string(),
        )
    }
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        let status = error.status();
        let code = match status {
            StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "upstream_unavailable",
            _ => "upstream_error",
        };
        Self::new(status, "server_error", code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}
