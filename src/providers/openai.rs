//! The OpenAI-compatible dialect: the body goes upstream as the client sent it (with the
//! model rewritten by the gateway), to `{base}/chat/completions` or `{base}/embeddings`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderValue};

use super::{ProbeFailure, SendError, SetupError, Target};

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
use crate::domain::{Dialect, Instance, ModelKind, UpstreamTimeouts};

pub struct OpenAi {
    /// HTTP/1.1, or HTTP/2 where TLS negotiates it.
    client: reqwest::Client,
    /// HTTP/2 from the first byte, for instances with `http2 = true`.
    h2: reqwest::Client,
    timeouts: UpstreamTimeouts,
}

impl OpenAi {
    pub fn new(timeouts: UpstreamTimeouts) -> Result<OpenAi, SetupError> {
        crate::tls::install_crypto();
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(timeouts.connect)
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .no_proxy()
                .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        };
        let build =
            |b: reqwest::ClientBuilder| b.build().map_err(|e| SetupError::Client(e.to_string()));
        Ok(OpenAi {
            client: build(builder())?,
            h2: build(
                builder()
                    .http2_prior_knowledge()
                    .http2_adaptive_window(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_while_idle(true),
            )?,
            timeouts,
        })
    }

    fn client(&self, instance: &Instance) -> &reqwest::Client {
        if instance.http2 {
            &self.h2
        } else {
            &self.client
        }
    }

    pub fn timeouts(&self) -> UpstreamTimeouts {
        self.timeouts
    }

    pub async fn send(
        &self,
        (instance, kind, deployment): (&Instance, ModelKind, &str),
        request_id: &str,
        target: &Target,
        body: Bytes,
        wait: Duration,
    ) -> Result<reqwest::Response, SendError> {
        let client = self.client(instance);
        let request = match (target.url(kind), instance.dialect) {
            (Some(url), _) => client.post(url.clone()),
            (None, Dialect::Azure) => client.post(azure_url(instance, deployment, kind)),
            (None, Dialect::OpenAi) => {
                client.post(format!("{}{}", instance.url, kind.upstream_path()))
            }
        };
        let mut request = request
            .header(header::CONTENT_TYPE, APPLICATION_JSON)
            .header(X_REQUEST_ID, request_id)
            .body(body);
        if let Some((name, key)) = &target.key {
            request = request.header(name, key.clone());
        }
        match tokio::time::timeout(wait, request.send()).await {
            Err(_) => Err(SendError::Timeout(wait)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error, self.timeouts)),
        }
    }

    pub async fn probe(
        &self,
        instance: &Instance,
        path: &str,
        key: Option<&(header::HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let url = match instance.dialect {
            Dialect::OpenAi => format!("{}{path}", instance.url),
            Dialect::Azure => format!(
                "{}/openai{path}?api-version={}",
                instance.url, instance.api_version
            ),
        };
        let mut request = self.client(instance).get(url);
        if let Some((name, key)) = key {
            request = request.header(name, key.clone());
        }
        let response = tokio::time::timeout(timeout, request.send())
            .await
            .map_err(|_| ProbeFailure::Upstream(format!("no answer within {timeout:?}")))?
            .map_err(|e| {
                if out_of_local_resources(&e) {
                    ProbeFailure::Local(root_cause(&e))
                } else {
                    ProbeFailure::Upstream(root_cause(&e))
                }
            })?;
        let status = response.status();
        // Read the body so the connection goes back to the pool.
        let _ = tokio::time::timeout(timeout, response.bytes()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeFailure::Upstream(format!("answered {status}")))
        }
    }
}

/// Azure OpenAI's URL for a deployment:
/// `{url}/openai/deployments/{deployment}/chat/completions?api-version=…`.
fn azure_url(instance: &Instance, deployment: &str, kind: ModelKind) -> String {
    let deployment: String = url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
    format!(
        "{}/openai/deployments/{deployment}{}?api-version={}",
        instance.url,
        kind.upstream_path(),
        instance.api_version
    )
}

/// A connect timeout is a failure to connect (503: nothing could be reached), not a slow
/// upstream (504).
fn classify(error: &reqwest::Error, timeouts: UpstreamTimeouts) -> SendError {
    let detail = root_cause(error);
    if out_of_local_resources(error) {
        return SendError::Local(detail);
    }
    if error.is_connect() {
        if error.is_timeout() {
            return SendError::Connect(format!(
                "no connection within {}",
                crate::config::format_duration(timeouts.connect)
            ));
        }
        SendError::Connect(detail)
    } else if error.is_timeout() {
        SendError::Timeout(timeouts.response)
    } else {
        SendError::Broken(detail)
    }
}

/// Whether an error comes from this machine's limits (EMFILE, ENFILE, ENOBUFS, ENOMEM)
/// rather than from the upstream.
fn out_of_local_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    const LOCAL: [i32; 4] = [24, 23, 105, 12];
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The innermost error's message: "connection refused" rather than "error sending request".
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}
