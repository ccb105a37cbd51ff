//! The admin API's client, for `switchyard ctl` (and later the remote console).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {url}: {reason}; is switchyard running, with its admin token set?"
    )]
    Unreachable { url: String, reason: String },
    #[error("the admin API refused: {message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("the admin API answered something unreadable: {0}")]
    Unreadable(String),
}

pub struct AdminClient {
    base: String,
    token: String,
    operator: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `base` is the admin listener's URL, e.g. `http://127.0.0.1:8081`.
    pub fn new(base: &str, token: &str, operator: &str) -> Result<AdminClient, ClientError> {
        crate::providers::install_crypto();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            operator: operator.to_string(),
            http,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .header("x-switchyard-operator", &self.operator)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: crate::providers::root_cause(&e),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreadable(e.to_string()))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ClientError::Unreadable(format!("{e}: {}", String::from_utf8_lossy(&body)))
        })?;
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(value)
    }
}
