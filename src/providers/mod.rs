//! Talking to upstream model servers. This is the only module that sends requests
//! upstream; it knows dialects and HTTP, not tenants, limits or routing.
//!
//! Errors carry what failover needs: whether the attempt failed before the upstream saw
//! the request (connect), while waiting (timeout), or on a connection that broke under us
//! (often a pooled keep-alive connection the upstream had already closed).

mod anthropic;
mod azure;
mod client;
mod dialect;
mod h1;
mod messages;
mod openai;
mod pool;
mod responses;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt};

use crate::domain::{Instance, ModelKind, Region, UpstreamTimeouts};
use crate::telemetry::Map;
use client::Client;
use dialect::{Dialect, Translate};

pub use crate::telemetry::root_cause;

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
    /// The request cannot be said in the instance's dialect (an endpoint or a field it
    /// does not have); nothing was sent.
    #[error("{0}")]
    Unsupported(String),
}

/// Why a request in another API (Responses, Messages) cannot go to an instance that
/// speaks only chat completions: malformed (`invalid`, the client's mistake wherever it
/// goes), or beyond what chat completions can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub param: &'static str,
    pub message: String,
    pub invalid: bool,
}

impl Untranslatable {
    fn invalid(param: &'static str, message: String) -> Untranslatable {
        Untranslatable {
            param,
            message,
            invalid: true,
        }
    }

    /// `what` cannot be said in chat completions; `translated` is what can.
    fn unsupported(param: &'static str, what: &str, translated: &str) -> Untranslatable {
        Untranslatable {
            param,
            message: format!(
                "{what} cannot be served through a chat-completions upstream; the gateway translates {translated}"
            ),
            invalid: false,
        }
    }
}

/// Writes one named SSE event (`event: KIND`, then its data with `type` set to KIND), as
/// the Responses and Messages APIs frame theirs.
fn named_event(out: &mut Vec<u8>, kind: &str, mut event: serde_json::Value) {
    event["type"] = serde_json::Value::String(kind.to_string());
    out.extend_from_slice(format!("event: {kind}\ndata: {event}\n\n").as_bytes());
}

/// Turns a chat answer back into the API the client asked for.
trait Back: Send {
    /// A whole answer (2xx).
    fn whole(&self, body: Bytes) -> Bytes;
    /// A stream's chat chunks, as the API's events.
    fn stream(self: Box<Self>) -> Box<dyn Translate>;
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
    client: Client,
    /// What each instance is sent to and with, by name, worked out once.
    targets: Map<String, Target>,
}

/// One instance's dialect, endpoints (parsed once rather than per request) and key.
pub struct Target {
    dialect: &'static dyn Dialect,
    /// The key's header, resolved from the environment, and the dialect's own headers.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The endpoint of each kind, when it is the same for every deployment and parses
    /// (otherwise made per request, which reports what is wrong with it).
    chat: Option<Uri>,
    embeddings: Option<Uri>,
    completions: Option<Uri>,
    responses: Option<Uri>,
    messages: Option<Uri>,
    /// Its own keep-alive connections, where it is cleartext HTTP/1.1.
    pool: Option<pool::Pool>,
}

impl Target {
    fn new(instance: &Instance, workers: usize) -> Target {
        let dialect = dialect::of(instance.dialect);
        let endpoint = |kind: ModelKind| {
            (dialect.fixed_urls() && dialect.serves(kind))
                .then(|| dialect.url(instance, kind, "").parse().ok())
                .flatten()
        };
        Target {
            dialect,
            headers: dialect.headers().to_vec(),
            chat: endpoint(ModelKind::Chat),
            embeddings: endpoint(ModelKind::Embeddings),
            completions: endpoint(ModelKind::Completions),
            responses: endpoint(ModelKind::Responses),
            messages: endpoint(ModelKind::Messages),
            pool: pool::Pool::new(&instance.url, instance.http2, workers),
        }
    }

    fn url(&self, kind: ModelKind) -> Option<&Uri> {
        match kind {
            ModelKind::Chat => self.chat.as_ref(),
            ModelKind::Embeddings => self.embeddings.as_ref(),
            ModelKind::Completions => self.completions.as_ref(),
            ModelKind::Responses => self.responses.as_ref(),
            ModelKind::Messages => self.messages.as_ref(),
        }
    }

    fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.headers.iter().map(|(name, value)| (name, value))
    }
}

impl Upstreams {
    /// `workers`: the connection workers, each of which gets an upstream pool of its own.
    pub fn new(
        regions: &[Region],
        timeouts: UpstreamTimeouts,
        workers: usize,
    ) -> Result<Upstreams, SetupError> {
        let mut targets = Map::default();
        for instance in regions.iter().flat_map(|r| &r.instances) {
            let target = targets
                .entry(instance.name.clone())
                .or_insert_with(|| Target::new(instance, workers));
            let Some(var) = &instance.api_key_env else {
                continue;
            };
            let key = std::env::var(var).map_err(|_| SetupError::MissingKey {
                instance: instance.name.clone(),
                var: var.clone(),
            })?;
            let (name, text) = target.dialect.key_header(&key);
            let mut value = HeaderValue::from_str(&text).map_err(|_| SetupError::BadKey {
                instance: instance.name.clone(),
                var: var.clone(),
            })?;
            value.set_sensitive(true);
            target.headers.push((name, value));
        }
        let https = regions
            .iter()
            .flat_map(|r| &r.instances)
            .find(|i| i.url.starts_with("https://"))
            .map(|i| i.name.as_str());
        Ok(Upstreams {
            client: Client::new(timeouts, https, workers)?,
            targets,
        })
    }

    /// Sends one request body (OpenAI's format), for the model the instance calls
    /// `deployment`, to one instance in its dialect and waits up to `wait` for the
    /// response headers. The answer reads as OpenAI's, whatever the dialect.
    pub async fn send(
        &self,
        instance: &Instance,
        (kind, deployment): (ModelKind, &str),
        request_id: &str,
        body: Bytes,
        wait: std::time::Duration,
    ) -> Result<Response, SendError> {
        let Some(target) = self.targets.get(&instance.name) else {
            return Err(SendError::Connect(format!(
                "instance {} is not configured",
                instance.name
            )));
        };
        if let Some(unsupported) = unsupported(instance, kind) {
            return Err(unsupported);
        }
        // A Responses or Messages request to an instance that does not speak that API
        // goes as chat.
        let (kind, body, back) = if sent_as(instance, kind) == kind {
            (kind, body, None)
        } else {
            let translated = match kind {
                ModelKind::Messages => messages::translate(&body, request_id)
                    .map(|(chat, back)| (chat, Box::new(back) as Box<dyn Back>)),
                _ => responses::translate(&body, request_id)
                    .map(|(chat, back)| (chat, Box::new(back) as Box<dyn Back>)),
            };
            let (chat, back) = translated.map_err(|refused| {
                SendError::Unsupported(format!("instance {}: {}", instance.name, refused.message))
            })?;
            (ModelKind::Chat, chat, Some(back))
        };
        let dialect = target.dialect;
        // The configured URL is borrowed, not cloned: its count is one every worker's
        // requests would share.
        let made;
        let uri = match target.url(kind) {
            Some(uri) => uri,
            None => {
                made = client::parse(dialect.url(instance, kind, deployment))?;
                &made
            }
        };
        let body = dialect
            .request(kind, body)
            .map_err(SendError::Unsupported)?;
        let response = self
            .client
            .send(
                (instance, target.pool.as_ref()),
                (http::Method::POST, uri),
                target.headers(),
                request_id,
                body,
                wait,
            )
            .await?;
        Ok(Response {
            inner: response,
            dialect,
            kind,
            back,
        })
    }

    pub fn timeouts(&self) -> UpstreamTimeouts {
        self.client.timeouts()
    }

    /// A response `instance` stores (it serves the Responses API itself): `GET` or
    /// `DELETE {url}/responses/{id}`, or `POST {url}/responses/{id}/cancel`. The whole
    /// answer, status and body, as the upstream gave it.
    pub async fn stored_response(
        &self,
        instance: &Instance,
        (method, id, cancel): (http::Method, &str, bool),
        request_id: &str,
    ) -> Result<(StatusCode, Bytes), SendError> {
        let Some(target) = self.targets.get(&instance.name) else {
            return Err(SendError::Connect(format!(
                "instance {} is not configured",
                instance.name
            )));
        };
        let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let action = if cancel { "/cancel" } else { "" };
        let uri = client::parse(format!("{}/responses/{id}{action}", instance.url))?;
        let wait = self.client.timeouts().response;
        let response = self
            .client
            .send(
                (instance, target.pool.as_ref()),
                (method, &uri),
                target.headers(),
                request_id,
                Bytes::new(),
                wait,
            )
            .await?;
        let status = response.status();
        let body = tokio::time::timeout(wait, response.into_body().collect())
            .await
            .map_err(|_| SendError::Timeout(wait))?
            .map_err(|e| SendError::Broken(root_cause(&e)))?;
        Ok((status, body.to_bytes()))
    }

    /// An active health probe: `GET {url}{path}` (as the dialect spells it) must answer
    /// 2xx within `timeout`.
    pub async fn probe(
        &self,
        instance: &Instance,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<(), ProbeFailure> {
        let Some(target) = self.targets.get(&instance.name) else {
            return Err(ProbeFailure::Upstream(format!(
                "instance {} is not configured",
                instance.name
            )));
        };
        let url = target.dialect.probe_url(instance, path);
        self.client
            .probe(instance, url, target.headers(), timeout)
            .await
    }
}

/// Why `instance` cannot be sent requests of `kind` at all: its dialect has no such
/// endpoint (Anthropic and embeddings). Known before anything is sent or reserved.
pub fn unsupported(instance: &Instance, kind: ModelKind) -> Option<SendError> {
    let sent = sent_as(instance, kind);
    (!dialect::of(instance.dialect).serves(sent)).then(|| {
        SendError::Unsupported(format!(
            "instance {} speaks {}, which has no {} endpoint",
            instance.name,
            instance.dialect,
            sent.upstream_path()
        ))
    })
}

/// The kind of request `instance` is sent for one of `kind`: Responses and Messages API
/// requests go as chat completions to instances that do not serve that API themselves.
fn sent_as(instance: &Instance, kind: ModelKind) -> ModelKind {
    match kind {
        ModelKind::Responses if !instance.native_responses => ModelKind::Chat,
        ModelKind::Messages if instance.dialect != crate::domain::Dialect::Anthropic => {
            ModelKind::Chat
        }
        kind => kind,
    }
}

/// Whether `instance` is sent requests of `kind` as they are (it serves that API).
pub fn speaks(instance: &Instance, kind: ModelKind) -> bool {
    sent_as(instance, kind) == kind
}

/// Whether a request of `kind` (a Responses or Messages request, its JSON object) can be
/// translated for an instance that speaks only chat completions, and if not, why.
pub fn translatable(
    kind: ModelKind,
    request: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Untranslatable> {
    match kind {
        ModelKind::Responses => responses::to_chat(request).map(drop),
        ModelKind::Messages => messages::to_chat(request).map(drop),
        _ => Ok(()),
    }
}

/// An upstream's answer, read as OpenAI's whatever the dialect: its status and headers,
/// and a body read whole or as a stream.
pub struct Response {
    inner: http::Response<pool::Body>,
    dialect: &'static dyn Dialect,
    /// The kind of request sent (chat, for a translated Responses request).
    kind: ModelKind,
    /// Turns a chat answer back into the API asked for.
    back: Option<Box<dyn Back>>,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.dialect.status(self.inner.status())
    }

    /// The response's headers, taken from it: the body is all that is read after them.
    pub fn take_headers(&mut self) -> HeaderMap {
        std::mem::take(self.inner.headers_mut())
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, std::io::Error> {
        let status = self.inner.status();
        let bytes = self.inner.into_body().collect().await?.to_bytes();
        let bytes = self.dialect.answer(self.kind, status, bytes);
        Ok(match &self.back {
            Some(back) if status.is_success() => back.whole(bytes),
            _ => bytes,
        })
    }

    /// The body's bytes as they arrive, as OpenAI's SSE chunks.
    pub fn bytes_stream(self) -> BodyStream {
        let dialect = self.dialect.stream(self.kind);
        let translate: Option<Box<dyn Translate>> = match (dialect, self.back) {
            (dialect, None) => dialect,
            (None, Some(back)) => Some(back.stream()),
            (Some(dialect), Some(back)) => Some(Box::new(Then(dialect, back.stream()))),
        };
        BodyStream {
            body: BodyDataStream::new(self.inner.into_body()),
            translate,
            ended: false,
        }
    }
}

/// An upstream body's bytes, translated by the dialect where it has its own framing.
pub struct BodyStream {
    body: BodyDataStream<pool::Body>,
    translate: Option<Box<dyn Translate>>,
    ended: bool,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(translate) = &mut this.translate else {
            return Pin::new(&mut this.body).poll_next(cx);
        };
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_next(cx)) {
                Some(Ok(bytes)) => {
                    let out = translate.push(&bytes);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.ended = true;
                    let out = translate.finish();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
            }
        }
    }
}

/// One translation after another: a dialect's framing into chat chunks, then chat into
/// Responses events.
struct Then<A, B>(A, B);

impl Translate for Then<Box<dyn Translate>, Box<dyn Translate>> {
    fn push(&mut self, bytes: &[u8]) -> Bytes {
        let chat = self.0.push(bytes);
        self.1.push(&chat)
    }

    fn finish(&mut self) -> Bytes {
        let chat = self.0.finish();
        let mut out = self.1.push(&chat).to_vec();
        out.extend_from_slice(&self.1.finish());
        Bytes::from(out)
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
