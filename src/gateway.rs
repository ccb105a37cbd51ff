//! The pipeline that carries one call from an authenticated tenant to an upstream answer:
//! admit (limits and budgets), wait for a seat (the scheduler), route, then attempt
//! candidates in order until one answers, and settle the real usage at the end.
//!
//! Retries happen only here and only before anything reached the client: a stream is
//! handed to the API layer once its headers arrived, a plain answer once it arrived whole.
//! A 4xx that the request itself caused is the answer, never a reason to try elsewhere.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::admission::{
    Admission, ControlError, Demand, RateHeaders, Refusal, Reservation, Usage, estimate,
};
use crate::auth::{AuthError, Keyring};
use crate::config::Config;
use crate::domain::{Limits, Model, ModelKind, Tenant, TokenizerKind};
use crate::providers::{SendError, SetupError, Upstreams};
use crate::router::{Candidate, InFlight, Router};
use crate::scheduler::{Rejection, Scheduler, Seat};
use crate::streams::{Watch, data_payloads};

pub struct Gateway {
    config: Config,
    keyring: Keyring,
    router: Router,
    upstreams: Upstreams,
    admission: Arc<Admission>,
    scheduler: Arc<Scheduler>,
}

/// Why a request was refused before it went upstream.
#[derive(Debug)]
pub enum Refused {
    Limits(Refusal),
    Queue {
        rejection: Rejection,
        headers: RateHeaders,
    },
}

/// An admitted request: its reservation and its seat upstream. Settle it with the real
/// usage; dropping it unsettled refunds the reservation.
pub struct Ticket {
    reservation: Reservation,
    seat: Seat,
    /// Time spent waiting for the seat.
    pub queued: Duration,
}

impl Ticket {
    pub fn headers(&self) -> &RateHeaders {
        self.reservation.headers()
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.reservation.prompt_tokens()
    }

    pub fn settle(self, usage: Usage) {
        let Ticket {
            reservation,
            mut seat,
            ..
        } = self;
        seat.set_actual(usage.total());
        reservation.settle(usage);
        drop(seat);
    }
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
            admission: Arc::new(Admission::new(&config.tiers, &config.tenants)),
            scheduler: Scheduler::new(config.seats, &config.tiers),
            config,
        })
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Reserves the request's estimated cost, then waits for a seat upstream.
    pub async fn admit(&self, tenant: &str, demand: &Demand) -> Result<Ticket, Refused> {
        let reservation = self
            .admission
            .reserve(tenant, demand)
            .map_err(Refused::Limits)?;
        let waiting = Instant::now();
        let seat = self
            .scheduler
            .acquire(tenant, reservation.tier(), reservation.tokens())
            .await
            .map_err(|rejection| Refused::Queue {
                rejection,
                headers: *reservation.headers(),
            })?;
        Ok(Ticket {
            reservation,
            seat,
            queued: waiting.elapsed(),
        })
    }

    /// Moves a tenant to another tier; its waiting requests move with it.
    pub fn set_tier(&self, tenant: &str, tier: &str) -> Result<(), ControlError> {
        let before = self.admission.tier_of(tenant);
        self.admission.set_tier(tenant, tier)?;
        let moved = self.scheduler.move_tenant(tenant, tier);
        tracing::info!(%tenant, before = ?before, after = %tier, moved, "tenant tier changed");
        Ok(())
    }

    /// Overrides some of a tenant's limits; returns the limits now in force.
    pub fn set_limits(&self, tenant: &str, change: &Limits) -> Result<Limits, ControlError> {
        let before = self.admission.view(tenant)?.limits;
        let after = self.admission.set_limits(tenant, change)?;
        tracing::info!(%tenant, ?before, ?after, "tenant limits changed");
        Ok(after)
    }

    /// Refuses the tenant's new requests and the ones waiting; returns how many waited.
    pub fn pause(&self, tenant: &str) -> Result<usize, ControlError> {
        self.admission.set_paused(tenant, true)?;
        let refused = self.scheduler.reject_tenant(tenant);
        tracing::info!(%tenant, refused_waiting = refused, "tenant paused");
        Ok(refused)
    }

    pub fn resume(&self, tenant: &str) -> Result<(), ControlError> {
        self.admission.set_paused(tenant, false)?;
        tracing::info!(%tenant, "tenant resumed");
        Ok(())
    }

    pub fn reset_budget(&self, tenant: &str) -> Result<(), ControlError> {
        let before = self.admission.view(tenant)?;
        self.admission.reset_budget(tenant)?;
        tracing::info!(%tenant, day_tokens = before.day.tokens, month_tokens = before.month.tokens, "tenant budget reset");
        Ok(())
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

#[derive(serde::Deserialize)]
struct UsageView {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceView<'a>>,
    usage: Option<UsageView>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow)]
    delta: Option<TextView<'a>>,
    #[serde(borrow)]
    message: Option<TextView<'a>>,
}

#[derive(serde::Deserialize)]
struct TextView<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

/// What a whole answer used: the upstream's `usage`, or else the prompt estimate plus
/// the answer's text counted with the model's tokenizer, marked as estimated.
pub fn usage_of_answer(
    kind: ModelKind,
    body: &[u8],
    ticket: &Ticket,
    tokenizer: TokenizerKind,
) -> Usage {
    let parsed = serde_json::from_slice::<ChunkView<'_>>(body).ok();
    if let Some(usage) = parsed.as_ref().and_then(|p| p.usage.as_ref()) {
        return Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            estimated: false,
        };
    }
    let completion = match kind {
        ModelKind::Embeddings => 0,
        ModelKind::Chat => parsed
            .iter()
            .flat_map(|p| &p.choices)
            .filter_map(|c| c.message.as_ref()?.content.as_deref())
            .map(|text| estimate::count(tokenizer, text))
            .sum(),
    };
    Usage {
        prompt_tokens: ticket.prompt_tokens(),
        completion_tokens: completion,
        estimated: true,
    }
}

/// Accounts a stream as it passes: the upstream's usage chunk when there is one, the
/// content otherwise. When the relay ends, however it ends (done, broken, or the client
/// gone), the ticket is settled with what was produced.
pub struct StreamAccount {
    ticket: Option<Ticket>,
    _slot: InFlight,
    tokenizer: TokenizerKind,
    content: String,
    usage: Option<Usage>,
}

impl StreamAccount {
    pub fn new(ticket: Ticket, slot: InFlight, tokenizer: TokenizerKind) -> StreamAccount {
        StreamAccount {
            ticket: Some(ticket),
            _slot: slot,
            tokenizer,
            content: String::new(),
            usage: None,
        }
    }
}

impl Watch for StreamAccount {
    fn events(&mut self, events: &[u8]) {
        for data in data_payloads(events) {
            let Ok(chunk) = serde_json::from_slice::<ChunkView<'_>>(data) else {
                continue;
            };
            if let Some(usage) = chunk.usage {
                self.usage = Some(Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    estimated: false,
                });
            }
            for choice in &chunk.choices {
                if let Some(text) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    self.content.push_str(text);
                }
            }
        }
    }
}

impl Drop for StreamAccount {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let usage = self.usage.unwrap_or_else(|| Usage {
            prompt_tokens: ticket.prompt_tokens(),
            completion_tokens: estimate::count(self.tokenizer, &self.content),
            estimated: true,
        });
        ticket.settle(usage);
    }
}
