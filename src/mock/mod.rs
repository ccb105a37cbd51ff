//! A simulated OpenAI-compatible upstream: `switchyard mock`, and the same server built
//! in-process for tests, benchmarks and the demo.
//!
//! It speaks the wire format exactly (SSE framing, `usage`, error bodies, `retry-after`) and
//! misbehaves on request: latency, token pacing, injected errors, streams cut mid-way,
//! pooled connections dropped, outages started and stopped at run time through
//! `/_mock/*` control endpoints. It knows nothing of the gateway.

mod chat;
mod embeddings;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Behaviour that can be changed while the mock runs (`POST /_mock/knobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Delay before the first token (and before a non-streaming answer starts).
    pub ttft_ms: u64,
    /// Token pacing after the first; 0 sends as fast as possible.
    pub tokens_per_sec: f64,
    /// Length of an answer when `max_tokens` does not cut it shorter.
    pub answer_tokens: u32,
    /// Share of requests (0..=1) answered with `error_status` instead.
    pub error_rate: f64,
    pub error_status: u16,
    /// `retry-after` seconds sent with injected 429s.
    pub retry_after_secs: u64,
    /// Cut every stream off (connection aborted) after this many content tokens.
    pub fail_after_tokens: Option<u32>,
    /// Answer embeddings as float arrays even when base64 was asked for, like some upstreams.
    pub embeddings_floats_only: bool,
    /// Vector length when the request does not ask for `dimensions`.
    pub dimensions: usize,
    /// Close a kept-alive connection when a second request arrives on it, without an
    /// answer, as some upstreams do after a streamed answer.
    pub drop_reused_connections: bool,
    /// Go silent (connection open, nothing sent) after this many content tokens, as a
    /// stuck generation does.
    pub hang_after_tokens: Option<u32>,
    /// Answer `answer_tokens` whatever `max_tokens` says, as a misconfigured or lying
    /// upstream does.
    pub ignore_max_tokens: bool,
    /// Stream JSON with Python's spacing (`{"a": 1}`), as LiteLLM and other Python
    /// servers write it.
    pub wire_spaced: bool,
    /// Stream with CRLF line ends.
    pub wire_crlf: bool,
    /// Send a `: keep-alive` comment before every event.
    pub wire_keepalive: bool,
    /// Write streams in pieces of this many bytes, split anywhere (inside an event or a
    /// UTF-8 character); 0 writes whole events.
    pub wire_chunk_bytes: usize,
}

impl Knobs {
    pub fn framing(&self) -> wire::Framing {
        wire::Framing {
            spaced: self.wire_spaced,
            crlf: self.wire_crlf,
            keepalive: self.wire_keepalive,
        }
    }
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            ttft_ms: 150,
            tokens_per_sec: 50.0,
            answer_tokens: 32,
            error_rate: 0.0,
            error_status: 500,
            retry_after_secs: 1,
            fail_after_tokens: None,
            embeddings_floats_only: false,
            dimensions: 1536,
            drop_reused_connections: false,
            hang_after_tokens: None,
            ignore_max_tokens: false,
            wire_spaced: false,
            wire_crlf: false,
            wire_keepalive: false,
            wire_chunk_bytes: 0,
        }
    }
}

/// How an outage looks to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Outage {
    /// Connections are closed without an answer and live streams are cut, as when a host dies.
    #[default]
    Drop,
    /// Every request is answered 503 with an OpenAI error body.
    Error,
    /// Requests are accepted and never answered.
    Hang,
}

/// Counters a test or operator can read back (`GET /_mock/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub connections: u64,
    pub requests: u64,
    pub chat_requests: u64,
    pub embeddings_requests: u64,
    pub streams_started: u64,
    pub streams_completed: u64,
    /// Streams whose client went away before the end.
    pub streams_cancelled: u64,
    /// Streams the mock cut itself (`fail_after_tokens` or a `drop` outage).
    pub streams_failed: u64,
    pub errors_injected: u64,
    pub connections_dropped: u64,
    /// Non-streaming chat answers sent whole.
    pub plain_completed: u64,
    /// Non-streaming chat requests whose client went away while the answer was pending.
    pub plain_cancelled: u64,
    /// Chat answers (plain and streamed) being made now, and the most there were at once.
    pub answering: u64,
    pub most_answering: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    chat_requests: AtomicU64,
    embeddings_requests: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    streams_failed: AtomicU64,
    errors_injected: AtomicU64,
    connections_dropped: AtomicU64,
    plain_completed: AtomicU64,
    plain_cancelled: AtomicU64,
    answering: AtomicU64,
    most_answering: AtomicU64,
}

struct MockState {
    knobs: RwLock<Knobs>,
    outage: RwLock<Option<Outage>>,
    models: Vec<String>,
    api_key: Option<String>,
    /// The one API served, if limited to one.
    dialect: Option<MockDialect>,
    counters: Counters,
    /// A recorded upstream stream, replayed byte for byte as every streamed answer.
    transcript: Option<Bytes>,
    /// The last JSON body received on an API path, for tests that check what arrived.
    last_body: Mutex<Option<serde_json::Value>>,
    /// The path and query of the last API request.
    last_path: Mutex<Option<String>>,
    /// Bumped on every counter change so waiters wake up.
    changed: watch::Sender<u64>,
    /// Responses API responses stored (`store` true), by id.
    responses: Mutex<HashMap<String, Stored>>,
}

/// A stored response: its object, and the tokens it counted (input and output), which
/// a follow-up's input includes.
#[derive(Clone)]
struct Stored {
    object: serde_json::Value,
    tokens: u64,
}

impl MockState {
    fn knobs(&self) -> Knobs {
        self.knobs.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn outage(&self) -> Option<Outage> {
        self.outage.read().map(|o| *o).unwrap_or(None)
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.send_modify(|n| *n += 1);
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections: get(&c.connections),
            requests: get(&c.requests),
            chat_requests: get(&c.chat_requests),
            embeddings_requests: get(&c.embeddings_requests),
            streams_started: get(&c.streams_started),
            streams_completed: get(&c.streams_completed),
            streams_cancelled: get(&c.streams_cancelled),
            streams_failed: get(&c.streams_failed),
            errors_injected: get(&c.errors_injected),
            connections_dropped: get(&c.connections_dropped),
            plain_completed: get(&c.plain_completed),
            plain_cancelled: get(&c.plain_cancelled),
            answering: get(&c.answering),
            most_answering: get(&c.most_answering),
        }
    }

    fn stored(&self, id: &str) -> Option<Stored> {
        self.responses.lock().ok()?.get(id).cloned()
    }

    fn store_response(&self, id: &str, object: serde_json::Value, tokens: u64) {
        if let Ok(mut stored) = self.responses.lock() {
            stored.insert(id.to_string(), Stored { object, tokens });
        }
    }

    fn remember(&self, body: &serde_json::Value) {
        if let Ok(mut last) = self.last_body.lock() {
            *last = Some(body.clone());
        }
    }
}

/// The one API a mock may be limited to (`switchyard mock --dialect`): it then answers
/// only that API's paths, and 404s the others in that API's error shape, as the real
/// server would. Unlimited, a mock answers all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockDialect {
    /// `/v1/chat/completions`, `/v1/embeddings`, `/v1/completions`, `/v1/responses`,
    /// `/v1/models`.
    OpenAi,
    /// `/openai/deployments/{deployment}/…`, `/openai/models`.
    Azure,
    /// `/v1/messages`.
    Anthropic,
}

impl MockDialect {
    pub const NAMES: [&'static str; 3] = ["openai", "azure", "anthropic"];

    pub fn named(name: &str) -> Option<MockDialect> {
        match name {
            "openai" => Some(MockDialect::OpenAi),
            "azure" => Some(MockDialect::Azure),
            "anthropic" => Some(MockDialect::Anthropic),
            _ => None,
        }
    }

    /// The dialect whose API `path` belongs to.
    fn of(path: &str) -> MockDialect {
        if path.starts_with("/openai/") {
            MockDialect::Azure
        } else if path == "/v1/messages" {
            MockDialect::Anthropic
        } else {
            MockDialect::OpenAi
        }
    }
}

/// The model names a mock serves unless told otherwise.
pub const DEFAULT_MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
];

/// Builds a mock upstream: `MockUpstream::builder().ttft(ms(20)).spawn_local().await`.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    knobs: Knobs,
    models: Vec<String>,
    api_key: Option<String>,
    transcript: Option<Bytes>,
    dialect: Option<MockDialect>,
}

impl Default for MockUpstream {
    fn default() -> Self {
        MockUpstream {
            knobs: Knobs::default(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            api_key: None,
            transcript: None,
            dialect: None,
        }
    }
}

impl MockUpstream {
    pub fn builder() -> MockUpstream {
        MockUpstream::default()
    }

    pub fn knobs(mut self, knobs: Knobs) -> Self {
        self.knobs = knobs;
        self
    }
    pub fn ttft(mut self, ttft: Duration) -> Self {
        self.knobs.ttft_ms = ttft.as_millis() as u64;
        self
    }
    pub fn tokens_per_sec(mut self, rate: f64) -> Self {
        self.knobs.tokens_per_sec = rate;
        self
    }
    pub fn answer_tokens(mut self, tokens: u32) -> Self {
        self.knobs.answer_tokens = tokens;
        self
    }
    pub fn errors(mut self, rate: f64, status: u16) -> Self {
        self.knobs.error_rate = rate;
        self.knobs.error_status = status;
        self
    }
    pub fn fail_after_tokens(mut self, tokens: u32) -> Self {
        self.knobs.fail_after_tokens = Some(tokens);
        self
    }
    pub fn embeddings_floats_only(mut self) -> Self {
        self.knobs.embeddings_floats_only = true;
        self
    }
    pub fn drop_reused_connections(mut self) -> Self {
        self.knobs.drop_reused_connections = true;
        self
    }
    /// Require this bearer key, answering 401 otherwise.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Answers every streamed chat request with `transcript`, the bytes a real server
    /// sent (its framing, spacing and usage as recorded), in `wire_chunk_bytes` pieces.
    pub fn transcript(mut self, transcript: impl Into<Bytes>) -> Self {
        self.transcript = Some(transcript.into());
        self
    }

    /// Answers only `dialect`'s API, as a real server of it would.
    pub fn dialect(mut self, dialect: MockDialect) -> Self {
        self.dialect = Some(dialect);
        self
    }

    pub fn hang_after_tokens(mut self, tokens: u32) -> Self {
        self.knobs.hang_after_tokens = Some(tokens);
        self
    }

    /// Binds `127.0.0.1:0` and serves in the background.
    pub async fn spawn_local(self) -> std::io::Result<MockHandle> {
        self.spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and serves in the background until the handle is shut down or dropped.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<MockHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            knobs: RwLock::new(self.knobs),
            outage: RwLock::new(None),
            models: self.models,
            api_key: self.api_key,
            dialect: self.dialect,
            counters: Counters::default(),
            transcript: self.transcript,
            last_body: Mutex::new(None),
            last_path: Mutex::new(None),
            changed: watch::channel(0).0,
            responses: Mutex::default(),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), stopped));
        Ok(MockHandle { addr, state, stop })
    }
}

/// A running mock. Dropping it stops the server.
pub struct MockHandle {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: watch::Sender<bool>,
}

impl MockHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL including `/v1`, as an instance's `url` in the gateway config.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    pub fn last_request(&self) -> Option<serde_json::Value> {
        self.state.last_body.lock().ok().and_then(|b| b.clone())
    }

    /// The path and query of the last API request (`/v1/chat/completions`, or Azure's
    /// `/openai/deployments/…?api-version=…`).
    pub fn last_path(&self) -> Option<String> {
        self.state.last_path.lock().ok().and_then(|p| p.clone())
    }

    pub fn update_knobs(&self, change: impl FnOnce(&mut Knobs)) {
        if let Ok(mut knobs) = self.state.knobs.write() {
            change(&mut knobs);
        }
    }

    pub fn start_outage(&self, kind: Outage) {
        set_outage(&self.state, Some(kind));
    }

    pub fn stop_outage(&self) {
        set_outage(&self.state, None);
    }

    /// Waits until `done` holds for the stats, or the timeout passes; returns the last stats
    /// either way so a failing assertion can show them.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Stats) -> bool) -> Stats {
        let mut changed = self.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.stats(),
            }
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn set_outage(state: &MockState, kind: Option<Outage>) {
    if let Ok(mut outage) = state.outage.write() {
        *outage = kind;
    }
    match kind {
        Some(kind) => tracing::info!(?kind, "mock outage started"),
        None => tracing::info!("mock outage stopped"),
    }
}

/// Returned from the connection's service to make hyper close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the mock")
    }
}

impl std::error::Error for DropConnection {}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<MockState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = routes(state.clone());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "mock accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        state.bump(&state.counters.connections);
        let state = state.clone();
        let app = app.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let served = Arc::new(AtomicU32::new(0));
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                let app = app.clone();
                let nth = served.fetch_add(1, Ordering::Relaxed);
                async move {
                    let control = req.uri().path().starts_with("/_mock/");
                    if !control {
                        let dropped = state.outage() == Some(Outage::Drop)
                            || (nth > 0 && state.knobs().drop_reused_connections);
                        if dropped {
                            state.bump(&state.counters.connections_dropped);
                            return Err(DropConnection);
                        }
                    }
                    let response = app.oneshot(req.map(Body::new)).await;
                    Ok::<_, DropConnection>(response.unwrap_or_else(|e| match e {}))
                }
            });
            // HTTP/1.1, or HTTP/2 for clients that start with its preface (h2c), with no
            // cap on concurrent streams: one connection may carry thousands.
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().keep_alive(true);
            builder.http2().max_concurrent_streams(None);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// `POST /_mock/tools/{name}`: a tool's answer, deterministic, naming the tool and
/// echoing its arguments (which must be a JSON object, as a real tool's would).
async fn tool(
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let arguments = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(arguments @ serde_json::Value::Object(_)) => arguments,
        _ => {
            return wire::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "a tool's arguments are a JSON object",
            );
        }
    };
    let seed = wire::fnv(format!("{name}{arguments}").as_bytes());
    let days = 1 + seed % 5;
    axum::Json(serde_json::json!({
        "tool": name,
        "arguments": arguments,
        "result": format!("found: shipped, arriving in {days} days"),
    }))
    .into_response()
}

fn routes(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/completions", post(chat::text_completions))
        // Anthropic's Messages API: the same answers in its format, keyed by `x-api-key`.
        .route("/v1/messages", post(chat::messages))
        .route("/v1/responses", post(chat::responses))
        .route(
            "/v1/responses/{id}",
            get(chat::stored).delete(chat::delete_stored),
        )
        .route("/v1/responses/{id}/cancel", post(chat::cancel_stored))
        .route("/v1/models", get(list_models))
        // Azure OpenAI's deployment URLs: the same answers, keyed by `api-key`.
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat::completions),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings::create),
        )
        .route(
            "/openai/deployments/{deployment}/completions",
            post(chat::text_completions),
        )
        .route("/openai/models", get(list_models))
        // A tool service for flows' tool and agent steps (`[[flows.tools]]`).
        .route("/_mock/tools/{name}", post(tool))
        .route("/_mock/stats", get(stats))
        .route("/_mock/knobs", get(get_knobs).post(patch_knobs))
        .route("/_mock/outage", post(start_outage).delete(stop_outage))
        .fallback(|req: Request<Body>| async move {
            wire::error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                &format!("Invalid URL ({} {})", req.method(), req.uri().path()),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Applies what every API request goes through first: counting, the outage, the key.
async fn gate(
    State(state): State<Arc<MockState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/_mock/") {
        return next.run(req).await;
    }
    state.bump(&state.counters.requests);
    if let Ok(mut last) = state.last_path.lock() {
        *last = req.uri().path_and_query().map(|p| p.to_string());
    }
    let asked = MockDialect::of(req.uri().path());
    let (azure, anthropic) = (asked == MockDialect::Azure, asked == MockDialect::Anthropic);
    if let Some(only) = state.dialect.filter(|only| *only != asked) {
        let message = format!("Invalid URL ({} {})", req.method(), req.uri().path());
        return match only {
            MockDialect::Anthropic => {
                wire::anthropic_error(StatusCode::NOT_FOUND, "not_found_error", "Not Found")
            }
            MockDialect::Azure => wire::error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("404"),
                "Resource not found",
            ),
            MockDialect::OpenAi => wire::error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                &message,
            ),
        };
    }
    if anthropic && !req.headers().contains_key("anthropic-version") {
        return wire::anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    if azure && !req.uri().query().unwrap_or("").contains("api-version=") {
        // What Azure answers without an api-version.
        return wire::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("404"),
            "Resource not found",
        );
    }
    match state.outage() {
        Some(Outage::Error) if anthropic => {
            return wire::anthropic_error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
            );
        }
        Some(Outage::Error) => {
            return wire::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "The server is overloaded or not ready yet.",
            );
        }
        Some(Outage::Hang) => std::future::pending::<()>().await,
        Some(Outage::Drop) | None => {}
    }
    if let Some(expected) = &state.api_key {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let presented = if azure {
            header("api-key")
        } else if anthropic {
            header("x-api-key")
        } else {
            header("authorization").and_then(|v| v.strip_prefix("Bearer "))
        };
        if presented != Some(expected.as_str()) && anthropic {
            return wire::anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            );
        }
        if presented != Some(expected.as_str()) {
            return wire::error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided.",
            );
        }
    }
    let knobs = state.knobs();
    if knobs.error_rate > 0.0 && fastrand::f64() < knobs.error_rate {
        state.bump(&state.counters.errors_injected);
        if anthropic {
            return wire::anthropic_injected_error(&knobs);
        }
        return wire::injected_error(&knobs);
    }
    next.run(req).await
}

async fn list_models(State(state): State<Arc<MockState>>) -> Response {
    let data: Vec<_> = state
        .models
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "switchyard-mock",
            })
        })
        .collect();
    Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn stats(State(state): State<Arc<MockState>>) -> Response {
    Json(serde_json::json!({
        "stats": state.stats(),
        "knobs": state.knobs(),
        "outage": state.outage(),
    }))
    .into_response()
}

async fn get_knobs(State(state): State<Arc<MockState>>) -> Response {
    Json(state.knobs()).into_response()
}

/// Merges a partial JSON object into the knobs.
async fn patch_knobs(State(state): State<Arc<MockState>>, body: axum::body::Bytes) -> Response {
    let patch: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return wire::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &format!("expected a JSON object of knobs: {e}"),
            );
        }
    };
    let mut merged = match serde_json::to_value(state.knobs()) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    merged.extend(patch);
    match serde_json::from_value::<Knobs>(serde_json::Value::Object(merged)) {
        Ok(knobs) => {
            if let Ok(mut current) = state.knobs.write() {
                *current = knobs.clone();
            }
            tracing::info!(?knobs, "mock knobs changed");
            Json(knobs).into_response()
        }
        Err(e) => wire::error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            &format!("bad knobs: {e}"),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutageRequest {
    #[serde(default)]
    kind: Outage,
}

async fn start_outage(State(state): State<Arc<MockState>>, body: axum::body::Bytes) -> Response {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        OutageRequest::default()
    } else {
        match serde_json::from_slice::<OutageRequest>(&body) {
            Ok(r) => r,
            Err(e) => {
                return wire::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    None,
                    &format!("expected {{\"kind\": \"drop\" | \"error\" | \"hang\"}}: {e}"),
                );
            }
        }
    };
    set_outage(&state, Some(request.kind));
    Json(serde_json::json!({ "outage": request.kind })).into_response()
}

async fn stop_outage(State(state): State<Arc<MockState>>) -> Response {
    set_outage(&state, None);
    Json(serde_json::json!({ "outage": null })).into_response()
}
