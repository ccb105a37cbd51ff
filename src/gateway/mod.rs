//! The pipeline that carries one call from an authenticated tenant to an upstream answer:
//! admit (limits and budgets), wait for a seat (the scheduler), route, then attempt
//! candidates in order until one answers, and settle the real usage at the end.
//!
//! Retries happen only here and only before anything reached the client: a stream is
//! handed to the API layer once its headers arrived, a plain answer once it arrived whole.
//! A 4xx that the request itself caused is the answer, never a reason to try elsewhere.

mod accounting;
mod control;
mod keeping;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::admission::{Admission, Demand, RateHeaders, Refusal};
use crate::audit::Audit;
use crate::auth::{AuthError, Keyring};
use crate::cache::Cache;
use crate::config::Config;
use crate::domain::records::{KeyRecord, Overrides};
use crate::domain::{Model, Tenant};
use crate::providers::{SendError, SetupError, Upstreams};
use crate::router::{Candidate, InFlight, Outcome, Router};
use crate::scheduler::{Rejection, Scheduler};
use crate::store::Store;
use crate::streams::hub::Hub;
use crate::streams::live::LiveStreams;
use crate::telemetry::events::EventLog;
use crate::telemetry::latency::{Latency, Recent};
use crate::telemetry::meter::Meter;

pub use accounting::{CachedTicket, StreamAccount, Ticket, audit_usage, usage_of_answer};
pub use keeping::{KeyError, NewKey};

pub struct Gateway {
    config: Config,
    keyring: Keyring,
    router: Router,
    upstreams: Upstreams,
    admission: Arc<Admission>,
    scheduler: Arc<Scheduler>,
    events: Arc<EventLog>,
    meter: Arc<Meter>,
    latency: Arc<Latency>,
    /// Recent end-to-end latency per tenant and per instance.
    recent: Arc<Recent>,
    streams: Arc<LiveStreams>,
    hub: Hub,
    cache: Arc<Cache>,
    audit: Arc<Audit>,
    /// Where keys and overrides are kept; attached by the daemon.
    store: OnceLock<Arc<dyn Store>>,
    /// Keys made at run time, by id (revoked and expired ones included).
    keys: Mutex<BTreeMap<String, KeyRecord>>,
    overrides: Mutex<Overrides>,
    started: Instant,
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
    /// Estimated tokens, the load the request puts on an instance.
    pub tokens: u64,
    /// Data residency: the only regions allowed (`None`: any).
    pub regions: Option<&'a [String]>,
    /// A session key that keeps the conversation on one instance.
    pub session: Option<&'a str>,
}

/// What an upstream answered, and who answered it.
pub struct Answer {
    pub region: String,
    pub instance: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Why the request went where it went.
    pub reason: String,
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
    /// No more attempts: the retry budget or the deadline.
    Stopped(&'static str),
    Send(SendError),
    Status {
        status: u16,
        message: String,
    },
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
            Failure::Stopped(why) => write!(f, "not tried: {why}"),
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
    #[error("{reason}")]
    NoRoute { reason: String },
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
    /// 504 when every attempt timed out, 503 when nothing could be reached (refused or
    /// dropped connections) or had room, 502 when upstreams answered badly.
    pub fn status(&self) -> StatusCode {
        let attempts = match self {
            GatewayError::NoRoute { .. } => return StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Exhausted { attempts, .. } => attempts,
        };
        let all = |p: fn(&Failure) -> bool| attempts.iter().all(|a| p(&a.failure));
        if !attempts.is_empty() && all(|f| matches!(f, Failure::Send(SendError::Timeout(_)))) {
            StatusCode::GATEWAY_TIMEOUT
        } else if all(|f| {
            matches!(
                f,
                Failure::AtCapacity
                    | Failure::Stopped(_)
                    | Failure::Send(SendError::Connect(_) | SendError::Broken(_))
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
        let events = Arc::new(EventLog::default());
        Ok(Gateway {
            keyring: Keyring::new(&config.tenants),
            router: Router::new(&config.regions, config.routing.clone(), events.clone()),
            events,
            meter: Arc::default(),
            latency: Arc::default(),
            recent: Arc::default(),
            streams: Arc::default(),
            hub: Hub::new(config.streams_keep, config.streams_max_lag),
            cache: Arc::new(Cache::new(config.cache.clone())),
            audit: Arc::new(Audit::new(config.audit.clone())),
            store: OnceLock::new(),
            keys: Mutex::default(),
            overrides: Mutex::default(),
            started: Instant::now(),
            upstreams: Upstreams::new(&config.regions, config.upstream)?,
            admission: Arc::new(Admission::new(&config.tiers, &config.tenants)),
            scheduler: Scheduler::new(config.seats, &config.tiers),
            config,
        })
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    pub fn latency(&self) -> &Arc<Latency> {
        &self.latency
    }

    pub fn recent(&self) -> &Arc<Recent> {
        &self.recent
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn streams(&self) -> &Arc<LiveStreams> {
        &self.streams
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// Admits a request answered without going upstream (a cache hit, or a follower of
    /// an identical request in flight): it counts against the request limits, and takes
    /// no seat.
    pub fn admit_cached(&self, tenant: &str, model: &Model) -> Result<CachedTicket, Refused> {
        let demand = Demand {
            prompt_tokens: 0,
            max_tokens: Some(0),
            completion: false,
            price: model.price,
        };
        let reservation = self
            .admission
            .reserve(tenant, &demand)
            .map_err(Refused::Limits)?;
        Ok(CachedTicket {
            reservation,
            use_tokens: self.cache.policy().hits_use_tokens,
        })
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

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Probes every instance once, concurrently, and records the results.
    pub async fn probe_all(&self) {
        let check = &self.config.health;
        let probes = self.router.instances().map(|instance| async move {
            let result = self
                .upstreams
                .probe(&instance.instance, &check.probe_path, check.timeout)
                .await;
            if let Err(reason) = &result {
                tracing::debug!(instance = %instance.name(), %reason, "health probe failed");
            }
            self.router.probed(
                instance,
                result.is_ok(),
                check.unhealthy_after,
                check.healthy_after,
            );
        });
        futures_util::future::join_all(probes).await;
    }

    /// The tenant a request's key belongs to, and the key's public id.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(&Tenant, Arc<str>), AuthError> {
        let caller = self.keyring.authenticate(authorization)?;
        let tenant = self
            .config
            .tenants
            .get(caller.tenant)
            .ok_or(AuthError::Invalid)?;
        Ok((tenant, caller.key_id))
    }

    /// Routes the call and tries its candidates in order until one answers with something
    /// the client should see. Retries (beyond the first attempt) come out of the retry
    /// budget and stop at the routing deadline.
    pub async fn forward(&self, call: Call<'_>) -> Result<Answer, GatewayError> {
        let Call {
            request_id,
            model,
            mut body,
            stream,
            tokens,
            regions,
            session,
        } = call;
        let route = self
            .router
            .route(model, regions, session)
            .map_err(|reason| GatewayError::NoRoute { reason })?;
        tracing::debug!(%request_id, reason = %route.reason, "routed");
        self.router.count_request();
        let timeouts = self.upstreams.timeouts();
        let give_up = Instant::now() + self.router.policy().deadline;
        let mut attempts = Vec::new();
        let mut sent = 0;
        let mut encoded: Option<(&str, Bytes)> = None;

        for Candidate {
            instance,
            upstream_model,
        } in route.candidates
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
            if sent > 0 {
                if Instant::now() >= give_up {
                    attempts.push(fail(Failure::Stopped("the routing deadline passed")));
                    break;
                }
                if !self.router.try_retry() {
                    attempts.push(fail(Failure::Stopped("the retry budget is spent")));
                    break;
                }
            }
            let Some(slot) = instance.try_acquire(tokens) else {
                attempts.push(fail(Failure::AtCapacity));
                continue;
            };
            sent += 1;
            let payload = match &encoded {
                Some((model, bytes)) if *model == upstream_model => bytes.clone(),
                _ => {
                    body.insert("model".into(), json_string(upstream_model));
                    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                    encoded = Some((upstream_model, bytes.clone()));
                    bytes
                }
            };
            // A send that failed counts against the instance's health.
            let send_failed = |e: SendError| {
                self.router.report(&instance, Outcome::Failure, None);
                fail(Failure::Send(e))
            };
            let started = Instant::now();
            let deadline = started + timeouts.response;
            let cut = instance.cut_signal();
            tokio::pin!(cut);

            // A connection that broke before an answer is most often a pooled keep-alive
            // connection the upstream had closed: try the same instance once more, on a
            // fresh connection, before moving on.
            let attempt = async {
                let first = self
                    .upstreams
                    .send(&instance.instance, model.kind, request_id, payload.clone())
                    .await;
                if let Err(SendError::Broken(reason)) = &first {
                    tracing::debug!(%request_id, instance = %name, %reason, "retrying on a fresh connection");
                    return self
                        .upstreams
                        .send(&instance.instance, model.kind, request_id, payload)
                        .await;
                }
                first
            };
            let response = match unless_cut(attempt, &mut cut).await {
                Ok(response) => response,
                Err(e) => {
                    attempts.push(send_failed(e));
                    continue;
                }
            };
            let latency = started.elapsed();

            let status = response.status();
            let headers = response.headers().clone();
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.router
                    .report(&instance, Outcome::RateLimited(retry_after(&headers)), None);
            } else if status.is_success() || request_fault(status) {
                self.router
                    .report(&instance, Outcome::Success, Some(latency));
            } else {
                self.router.report(&instance, Outcome::Failure, None);
            }
            if status.is_success() && stream {
                return Ok(Answer {
                    region,
                    instance: name,
                    status,
                    headers,
                    reason: route.reason,
                    body: AnswerBody::Stream { response, slot },
                });
            }
            let read = async {
                match tokio::time::timeout_at(deadline, response.bytes()).await {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(e)) => Err(SendError::Broken(crate::providers::root_cause(&e))),
                    Err(_) => Err(SendError::Timeout(timeouts.response)),
                }
            };
            let whole = match unless_cut(read, &mut cut).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    attempts.push(send_failed(e));
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
                    reason: route.reason,
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

/// Runs `work` unless a drain deadline cuts the instance first.
async fn unless_cut<T>(
    work: impl std::future::Future<Output = Result<T, SendError>>,
    cut: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<T, SendError> {
    tokio::select! {
        done = work => done,
        () = cut => Err(SendError::Broken("cut by a drain deadline".into())),
    }
}

/// How long an upstream's 429 asks us to wait: `retry-after-ms`, `retry-after` (seconds),
/// or OpenAI's `x-ratelimit-reset-requests`; one second when it says nothing.
fn retry_after(headers: &HeaderMap) -> Duration {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0));
    }
    if let Some(secs) = text("retry-after").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::from_secs_f64(secs.clamp(0.0, 3600.0));
    }
    if let Some(reset) =
        text("x-ratelimit-reset-requests").and_then(|v| crate::config::parse_duration(v).ok())
    {
        return reset.min(Duration::from_secs(3600));
    }
    Duration::from_secs(1)
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
