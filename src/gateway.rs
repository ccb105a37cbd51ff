//! The pipeline that carries one call from an authenticated tenant to an upstream answer:
//! route, then attempt candidates in order until one answers.
//!
//! Retries happen only here and only before anything reached the client: a stream is
//! handed to the API layer once its headers arrived, a plain answer once it arrived whole.
//! A 4xx that the request itself caused is the answer, never a reason to try elsewhere.

use std::fmt;

use bytes::Bytes;
use indexmap::IndexMap;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::auth::{AuthError, Keyring};
use crate::config::Config;
use crate::domain::{Model, Tenant};
use crate::providers::{SendError, SetupError, Upstreams};
use crate::router::{Candidate, InFlight, Router};

pub struct Gateway {
    config: Config,
    keyring: Keyring,
    router: Router,
    upstreams: Upstreams,
}

/// A request body's top-level fields, each value kept as the exact JSON text the client
/// sent: fields the gateway does not read are never parsed, and pass through verbatim.
pub type Fields = IndexMap<String, Box<RawValue>>;

/// One client request on its way upstream.
pub struct Call<'a> {
    pub request_id: &'a str,
    pub model: &'a Model,
    /// The client's body, every field kept; `model` is rewritten per deployment.
    pub body: Fields,
    pub stream: bool,
}

/// What an upstream answered, and who answered it.
pub struct Answer {
    pub region: String,
    pub instance: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: AnswerBody,
}

pub enum AnswerBody {
    /// A whole answer (plain requests, and every error status).
    Whole(Bytes),
    /// A stream whose headers arrived; the slot is held until the stream ends.
    Stream {
        response: reqwest::Response,
        slot: InFlight,
    },
}

/// One failed attempt, kept to explain the final error.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub region: String,
    pub instance: String,
    pub failure: Failure,
}

#[derive(Debug, Clone)]
pub enum Failure {
    AtCapacity,
    Send(SendError),
    Status { status: u16, message: String },
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: {}", self.region, self.instance, self.failure)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::AtCapacity => f.write_str("at max_concurrency"),
            Failure::Send(e) => write!(f, "{e}"),
            Failure::Status { status, message } if message.is_empty() => {
                write!(f, "answered {status}")
            }
            Failure::Status { status, message } => write!(f, "answered {status} ({message})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no upstream could answer for model \"{model}\": {}", list(.attempts))]
    Exhausted {
        model: String,
        attempts: Vec<Attempt>,
    },
}

fn list(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no region serves it".to_string();
    }
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl GatewayError {
    /// 504 when every attempt timed out, 503 when nothing could be reached or had room,
    /// 502 when upstreams answered badly.
    pub fn status(&self) -> StatusCode {
        let GatewayError::Exhausted { attempts, .. } = self;
        let all = |p: fn(&Failure) -> bool| attempts.iter().all(|a| p(&a.failure));
        if !attempts.is_empty() && all(|f| matches!(f, Failure::Send(SendError::Timeout(_)))) {
            StatusCode::GATEWAY_TIMEOUT
        } else if all(|f| {
            matches!(
                f,
                Failure::AtCapacity | Failure::Send(SendError::Connect(_))
            )
        }) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// Statuses that say the request itself is wrong; the same request fails everywhere.
fn request_fault(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, SetupError> {
        Ok(Gateway {
            keyring: Keyring::new(&config.tenants),
            router: Router::new(&config.regions),
            upstreams: Upstreams::new(&config.regions, config.upstream)?,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Tenant, AuthError> {
        let index = self.keyring.authenticate(authorization)?;
        self.config.tenants.get(index).ok_or(AuthError::Invalid)
    }

    /// Tries candidates in order until one answers with something the client should see.
    pub async fn forward(&self, call: Call<'_>) -> Result<Answer, GatewayError> {
        let Call {
            request_id,
            model,
            mut body,
            stream,
        } = call;
        let timeouts = self.upstreams.timeouts();
        let mut attempts = Vec::new();
        let mut encoded: Option<(String, Bytes)> = None;

        for Candidate {
            instance,
            upstream_model,
        } in self.router.candidates(model)
        {
            let region = instance.region.clone();
            let name = instance.instance.name.clone();
            let fail = |failure: Failure| {
                tracing::warn!(%request_id, %region, instance = %name, %failure, "upstream attempt failed");
                Attempt {
                    region: region.clone(),
                    instance: name.clone(),
                    failure,
                }
            };
            let Some(slot) = instance.try_acquire() else {
                attempts.push(fail(Failure::AtCapacity));
                continue;
            };
            let payload = match &encoded {
                Some((model, bytes)) if *model == upstream_model => bytes.clone(),
                _ => {
                    body.insert("model".into(), json_string(&upstream_model));
                    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                    encoded = Some((upstream_model.clone(), bytes.clone()));
                    bytes
                }
            };
            let deadline = Instant::now() + timeouts.response;

            // A connection that broke before an answer is most often a pooled keep-alive
            // connection the upstream had closed: try the same instance once more, on a
            // fresh connection, before moving on.
            let mut sent = self
                .upstreams
                .send(&instance.instance, model.kind, request_id, payload.clone())
                .await;
            if let Err(SendError::Broken(reason)) = &sent {
                tracing::debug!(%request_id, instance = %name, %reason, "retrying on a fresh connection");
                sent = self
                    .upstreams
                    .send(&instance.instance, model.kind, request_id, payload)
                    .await;
            }
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    attempts.push(fail(Failure::Send(e)));
                    continue;
                }
            };

            let status = response.status();
            let headers = response.headers().clone();
            if status.is_success() && stream {
                return Ok(Answer {
                    region,
                    instance: name,
                    status,
                    headers,
                    body: AnswerBody::Stream { response, slot },
                });
            }
            let whole = match tokio::time::timeout_at(deadline, response.bytes()).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    let reason = crate::providers::root_cause(&e);
                    attempts.push(fail(Failure::Send(SendError::Broken(reason))));
                    continue;
                }
                Err(_) => {
                    attempts.push(fail(Failure::Send(SendError::Timeout(timeouts.response))));
                    continue;
                }
            };
            drop(slot);
            if status.is_success() || request_fault(status) {
                return Ok(Answer {
                    region,
                    instance: name,
                    status,
                    headers,
                    body: AnswerBody::Whole(whole),
                });
            }
            attempts.push(fail(Failure::Status {
                status: status.as_u16(),
                message: error_message(&whole),
            }));
        }
        Err(GatewayError::Exhausted {
            model: model.alias.clone(),
            attempts,
        })
    }
}

/// The `error.message` of an OpenAI-shaped error body, shortened; empty if there is none.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    match message.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

/// A JSON string literal as a raw value.
fn json_string(text: &str) -> Box<RawValue> {
    let literal = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string());
    RawValue::from_string(literal).unwrap_or_else(|_| Box::<RawValue>::default())
}
