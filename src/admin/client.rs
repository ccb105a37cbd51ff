//! The admin API's client, for `switchyard ctl` and the remote console: plain HTTP or
//! HTTPS, trusting the system's roots or only the CA file the operator gives.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Time a single admin request gets; the event stream has none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("{0}")]
    Trust(String),
}

#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    operator: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `base` is the admin listener's URL, e.g. `http://127.0.0.1:8081` or
    /// `https://bastion-gw:8081`; with `ca_file`, an HTTPS server is trusted only if that
    /// CA signed its certificate (otherwise the system's roots decide).
    pub fn new(
        base: &str,
        token: &str,
        operator: &str,
        ca_file: Option<&Path>,
    ) -> Result<AdminClient, ClientError> {
        crate::tls::install_crypto();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(REQUEST_TIMEOUT);
        if let Some(ca_file) = ca_file {
            builder =
                builder.tls_certs_only(crate::tls::trusted(ca_file).map_err(ClientError::Trust)?);
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
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

    /// A GET with no time limit, for a stream such as `/admin/events`; the caller sends
    /// it and reads the body. Errors from it are best read through [`AdminClient::why`].
    pub fn stream(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.get(self.url(path)))
    }

    /// Why a request could not be sent, with a hint when the cause is TLS.
    pub fn why(&self, error: &reqwest::Error) -> String {
        let reason = crate::providers::root_cause(error);
        let https = self.base.starts_with("https:");
        let hint = if reason.contains("certificate") || reason.contains("UnknownIssuer") {
            "; the server's certificate is not trusted: pass the CA that signed it with --ca-file"
        } else if https
            && (reason.contains("corrupt message") || reason.contains("InvalidContentType"))
        {
            "; the server does not speak TLS here: try http://"
        } else if !https
            && ["invalid HTTP version", "closed", "reset"]
                .iter()
                .any(|sign| reason.contains(sign))
        {
            "; if the admin API has TLS (server.admin_tls_cert), use https://"
        } else {
            ""
        };
        format!("{reason}{hint}")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .bearer_auth(&self.token)
            .header("x-switchyard-operator", &self.operator)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = self
            .authorized(request)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: self.why(&e),
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
