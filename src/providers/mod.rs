//! Talking to upstream model servers. This is the only module that sends requests
//! upstream; it knows dialects and HTTP, not tenants, limits or routing.
//!
//! Errors carry what failover needs: whether the attempt failed before the upstream saw
//! the request (connect), while waiting (timeout), or on a connection that broke under us
//! (often a pooled keep-alive connection the upstream had already closed).

mod openai;

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt};
use hyper::body::Incoming;

use crate::domain::{Dialect, Instance, ModelKind, Region, UpstreamTimeouts};

pub use openai::OpenAi;
pub use openai::root_cause;

/// Why an attempt produced no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("timed out after {}", crate::config::format_duration(*.0))]
    Timeout(std::time::Duration),
    #[error("connection broke: {0}")]
    Broken(String),
    /// This machine ran out of something (descriptors, buffers, memory): the upstream
    /// did nothing wrong and is never held to account for it.
    #[error("the gateway is out of local resources: {0}")]
    Local(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "instance {instance}: environment variable {var} (api_key_env) is not set; export it or remove api_key_env"
    )]
    MissingKey { instance: String, var: String },
    #[error("instance {instance}: the key in {var} is not a valid header value")]
    BadKey { instance: String, var: String },
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(String),
}

/// Every configured upstream instance, reachable through one pooled HTTP client.
pub struct Upstreams {
    openai: OpenAi,
    /// What each instance is sent to and with, by name, worked out once.
    targets: HashMap<String, Target>,
}

/// One instance's endpoints, parsed once rather than per request, and its key.
#[derive(Default)]
pub struct Target {
    /// The key's header, resolved from the environment: `Authorization: Bearer …`, or
    /// Azure's `api-key`.
    pub key: Option<(HeaderName, HeaderValue)>,
    /// `{url}/chat/completions` and `{url}/embeddings`; none when the base URL does not
    /// parse (the request then reports that as it is sent) and for Azure, whose URLs
    /// name the deployment.
    pub chat: Option<Uri>,
    pub embeddings: Option<Uri>,
    pub completions: Option<Uri>,
}

impl Target {
    pub fn url(&self, kind: ModelKind) -> Option<&Uri> {
        match kind {
            ModelKind::Chat => self.chat.as_ref(),
            ModelKind::Embeddings => self.embeddings.as_ref(),
            ModelKind::Completions => self.completions.as_ref(),
        }
    }
}

impl Upstreams {
    pub fn new(regions: &[Region], timeouts: UpstreamTimeouts) -> Result<Upstreams, SetupError> {
        let mut targets = HashMap::new();
        for instance in regions.iter().flat_map(|r| &r.instances) {
            let endpoint = |kind: ModelKind| {
                format!("{}{}", instance.url, kind.upstream_path())
                    .parse()
                    .ok()
            };
            let fixed = instance.dialect == Dialect::OpenAi;
            let target = targets.entry(instance.name.clone()).or_insert(Target {
                key: None,
                chat: endpoint(ModelKind::Chat).filter(|_| fixed),
                embeddings: endpoint(ModelKind::Embeddings).filter(|_| fixed),
                completions: endpoint(ModelKind::Completions).filter(|_| fixed),
            });
            let Some(var) = &instance.api_key_env else {
                continue;
            };
            let key = std::env::var(var).map_err(|_| SetupError::MissingKey {
                instance: instance.name.clone(),
                var: var.clone(),
            })?;
            let (name, text) = match instance.dialect {
                Dialect::OpenAi => (http::header::AUTHORIZATION, format!("Bearer {key}")),
                Dialect::Azure => (HeaderName::from_static("api-key"), key),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| SetupError::BadKey {
                instance: instance.name.clone(),
                var: var.clone(),
            })?;
            value.set_sensitive(true);
            target.key = Some((name, value));
        }
        let https = regions
            .iter()
            .flat_map(|r| &r.instances)
            .find(|i| i.url.starts_with("https://"))
            .map(|i| i.name.as_str());
        Ok(Upstreams {
            openai: OpenAi::new(timeouts, https)?,
            targets,
        })
    }

    /// Sends one request body, for the model the instance calls `deployment`, to one
    /// instance and waits up to `wait` for the response headers.
    pub async fn send(
        &self,
        instance: &Instance,
        (kind, deployment): (ModelKind, &str),
        request_id: &str,
        body: Bytes,
        wait: std::time::Duration,
    ) -> Result<Response, SendError> {
        let target = self.target(instance);
        // Both speak OpenAI's wire format; they differ in URLs and the key's header.
        let to = (instance, kind, deployment);
        self.openai.send(to, request_id, target, body, wait).await
    }

    pub fn timeouts(&self) -> UpstreamTimeouts {
        self.openai.timeouts()
    }

    /// An active health probe: `GET {url}{path}` must answer 2xx within `timeout`.
    pub async fn probe(
        &self,
        instance: &Instance,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<(), ProbeFailure> {
        let key = self.target(instance).key.as_ref();
        self.openai.probe(instance, path, key, timeout).await
    }

    fn target(&self, instance: &Instance) -> &Target {
        static NONE: Target = Target {
            key: None,
            chat: None,
            embeddings: None,
            completions: None,
        };
        self.targets.get(&instance.name).unwrap_or(&NONE)
    }
}

/// An upstream's answer: its status and headers, and a body read whole or as a stream.
pub struct Response(http::Response<Incoming>);

impl Response {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, hyper::Error> {
        Ok(self.0.into_body().collect().await?.to_bytes())
    }

    /// The body's bytes as they arrive.
    pub fn bytes_stream(self) -> BodyDataStream<Incoming> {
        BodyDataStream::new(self.0.into_body())
    }
}

/// Why a health probe did not pass.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeFailure {
    /// The instance answered badly, late or not at all: it counts against its health.
    #[error("{0}")]
    Upstream(String),
    /// This machine could not even try (out of descriptors or buffers): it says nothing
    /// about the instance.
    #[error("the gateway is out of local resources: {0}")]
    Local(String),
}
