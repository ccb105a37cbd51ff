//! Renders a `Refusal` in OpenAI's shape `{"error":{"message","type","param","code"}}`
//! with its status and headers: the one place a client's error becomes HTTP.

use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use crate::gateway::Refusal;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
