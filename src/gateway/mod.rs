//! The pipeline, `Gateway::serve`: one call that carries a parsed request from an
//! authenticated tenant to an answer, for every front (the OpenAI routes, and whatever
//! else builds an `Inbound`). In order: cache (hit, follow, lead), estimate, admission,
//! seat, route, attempts, then the answer relayed or returned whole, settled, recorded.
//!
//! Retries happen only here and only before anything reached the client: a stream is
//! relayed once its headers arrived, a plain answer returned once it arrived whole.
//! A 4xx that the request itself caused is the answer, never a reason to try elsewhere.

mod accounting;
mod agents;
pub mod batches;
mod cluster;
pub mod collections;
mod control;
pub mod conversations;
mod embedders;
pub mod flows;
mod keeping;
mod record;
mod refusal;
mod serve;
mod tools;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::admission::{self, Admission, Demand, RateHeaders, Reservation};
use crate::audit::Audit;
use crate::auth::{AuthError, FailedAuth, Keyring};
use crate::cache::Cache;
use crate::clock;
use crate::config::Config;
use crate::domain::records::{KeyRecord, Overrides};
use crate::domain::{Model, Tenant};
use crate::providers::{ProbeFailure, SendError, SetupError, Upstreams};
use crate::router::{Candidate, InFlight, Interrupt, Outcome, Router};
use crate::scheduler::{Rejection, Scheduler};
use crate::shutdown::Shutdown;
use crate::store::{Persistence, Store};
use crate::streams::hub::Hub;
use crate::telemetry::events::EventLog;
use crate::telemetry::latency::Latency;
use crate::telemetry::meter::Meter;

pub use crate::domain::Fields;
pub use crate::files::{FileError, PURPOSE as FILE_PURPOSE, Upload};
pub use accounting::{CachedTicket, Ticket};
pub use keeping::{KeyError, NewKey};
pub use refusal::{Headers, Refusal, openai_duration, rate_headers};
pub use serve::{Inbound, Reply, ReplyBody};

pub struct Gateway {
    config: Config,
    /// The runtime the gateway was made on, where jobs that outlive a request run
    /// (batches) rather than on the connection worker that started them.
    background: Option<tokio::runtime::Handle>,
    keyring: Keyring,
    /// Failed authentications per source address.
    failed_auth: FailedAuth,
    router: Arc<Router>,
    upstreams: Upstreams,
    admission: Arc<Admission>,
    scheduler: Arc<Scheduler>,
    events: Arc<EventLog>,
    /// The audit log, the counters and the latency series every request records in.
    sinks: Arc<record::Sinks>,
    /// Every stream, live or recently finished.
    hub: Hub,
    /// The drain signal every request and relay watches.
    shutdown: Arc<Shutdown>,
    /// Whether writes to the store succeed.
    persistence: Arc<Persistence>,
    /// Operators' writes (keys, overrides) take turns, so they are kept in the order
    /// they are acknowledged.
    writes: tokio::sync::Mutex<()>,
    /// Sharing and adopting the cluster's overrides take turns, and the versions of
    /// the cluster's overrides and keys this replica has.
    cluster_turn: tokio::sync::Mutex<()>,
    operator_version: std::sync::atomic::AtomicU64,
    keys_version: std::sync::atomic::AtomicU64,
    /// Operators' changes made here that could not be shared yet.
    pending_actions: Mutex<Vec<crate::domain::snapshot::Action>>,
    /// Whether the shared store was unreachable at the last look (for the event log).
    shared_degraded: std::sync::atomic::AtomicBool,
    cache: Arc<Cache>,
    /// Responses answered through chat upstreams, for follow-ups.
    conversations: Arc<conversations::Conversations>,
    /// Files tenants uploaded for batches.
    files: Arc<crate::files::Files>,
    /// Batch jobs, running and ended.
    batches: batches::Batches,
    /// Flow runs, running and ended.
    flow_runs: flows::Runs,
    /// Tenants' vector collections, for flows.
    collections: collections::Collections,
    /// Where keys and overrides are kept; attached by the daemon.
    store: OnceLock<Arc<dyn Store>>,
    /// The shared store, when limits are the cluster's (`[state] backend = "valkey"`).
    shared: OnceLock<Arc<crate::state::Shared>>,
    /// The connection workers' open connections; attached by the daemon.
    workers: OnceLock<crate::workers::Occupancy>,
    /// Keys made at run time, by id (revoked and expired ones included).
    keys: Mutex<BTreeMap<String, KeyRecord>>,
    overrides: Mutex<Overrides>,
    started: Instant,
}

/// Why a request was refused before it went upstream.
#[derive(Debug)]
pub enum Refused {
    Limits(admission::Refusal),
    Queue {
        rejection: Rejection,
        headers: RateHeaders,
    },
}

/// One client request on its way upstream.
struct Call<'a> {
    pub request_id: &'a str,
    pub model: &'a Model,
    /// What is asked of the model (text completions are asked of chat models).
    pub kind: crate::domain::ModelKind,
    /// The client's body, every field kept; `model` is rewritten per deployment.
    pub body: Fields,
    pub stream: bool,
    /// Estimated tokens, the load the request puts on an instance.
    pub tokens: u64,
    /// Data residency: the only regions allowed (`None`: any).
    pub regions: Option<&'a [String]>,
    /// A session key that keeps the conversation on one instance.
    pub session: Option<&'a str>,
    /// The one instance that may serve the call (it stores what the call follows).
    pub pin: Option<&'a str>,
}

/// What an upstream answered, and who answered it.
struct Answer {
    pub region: Arc<str>,
    pub instance: Arc<str>,
    /// The answering instance's tally, for the end-to-end latency of what it answered.
    pub tally: Arc<crate::telemetry::meter::Tally>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Why the request went where it went.
    pub reason: Arc<str>,
    /// When the attempt that answered was sent.
    pub started: Instant,
    pub body: AnswerBody,
}

// One lives on each request's stack, moved a few times, never stored in bulk: a box for
// the stream would cost an allocation to save a move of 200 bytes.
#[expect(clippy::large_enum_variant)]
enum AnswerBody {
    /// A whole answer (plain requests, and every error status).
    Whole(Bytes),
    /// A stream whose headers arrived; the slot is held until the stream ends.
    Stream {
        response: crate::providers::Response,
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
    /// A 429: the upstream asked to wait this long.
    RateLimited(Duration),
    /// A drain deadline cut the attempt; the instance did nothing wrong.
    Drained,
    /// The instance left rotation while the attempt waited on it.
    TakenOut,
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
            Failure::RateLimited(wait) => {
                write!(f, "rate limited (retry after {})", openai_duration(*wait))
            }
            Failure::Drained => f.write_str("cut by a drain deadline"),
            Failure::TakenOut => f.write_str("taken out of rotation while waiting on it"),
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
    /// When every upstream that was tried refused with 429 (others being full or not
    /// tried), the soonest any of them asked to wait.
    pub fn rate_limited_for(&self) -> Option<Duration> {
        let GatewayError::Exhausted { attempts, .. } = self else {
            return None;
        };
        let only_waiting = attempts.iter().all(|a| {
            matches!(
                a.failure,
                Failure::RateLimited(_) | Failure::AtCapacity | Failure::Stopped(_)
            )
        });
        let soonest = attempts
            .iter()
            .filter_map(|a| match a.failure {
                Failure::RateLimited(wait) => Some(wait),
                _ => None,
            })
            .min()?;
        only_waiting.then_some(soonest)
    }

    /// 429 when every upstream asked to wait, 504 when every attempt timed out, 503 when
    /// nothing could be reached (refused or dropped connections) or had room, 502 when
    /// upstreams answered badly.
    pub fn status(&self) -> StatusCode {
        let attempts = match self {
            GatewayError::NoRoute { .. } => return StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Exhausted { attempts, .. } => attempts,
        };
        if self.rate_limited_for().is_some() {
            return StatusCode::TOO_MANY_REQUESTS;
        }
        let all = |p: fn(&Failure) -> bool| attempts.iter().all(|a| p(&a.failure));
        if !attempts.is_empty() && all(|f| matches!(f, Failure::Send(SendError::Timeout(_)))) {
            StatusCode::GATEWAY_TIMEOUT
        } else if all(|f| {
            matches!(
                f,
                Failure::AtCapacity
                    | Failure::Stopped(_)
                    | Failure::Drained
                    | Failure::TakenOut
                    | Failure::Send(
                        SendError::Connect(_) | SendError::Broken(_) | SendError::Local(_)
                    )
            )
        }) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// Failed authentications one address may make per window before it is refused.
const FAILED_AUTH_LIMIT: u32 = 20;
const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(10);

/// Statuses that say the request itself is wrong; the same request fails everywhere.
fn request_fault(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

/// Limits of this replica alone, or leases of the cluster's.
fn admission_for(config: &Config) -> Admission {
    let admission = Admission::new(&config.tiers, &config.tenants);
    match config.state.backend {
        crate::domain::StateBackend::Local => admission,
        crate::domain::StateBackend::Valkey { .. } => {
            admission.shared(config.state.lease, config.state.grace)
        }
    }
}

impl Gateway {
    /// A gateway on the example configuration, for tests of what sits in front of one.
    #[cfg(test)]
    pub fn example() -> Gateway {
        let config = Config::from_toml(include_str!("../../config.toml.example"))
            .unwrap_or_else(|e| panic!("the example configuration: {e}"));
        Gateway::new(config).unwrap_or_else(|e| panic!("a gateway on the example: {e}"))
    }

    pub fn new(config: Config) -> Result<Gateway, SetupError> {
        let events = Arc::new(EventLog::default());
        let shutdown = Arc::new(Shutdown::default());
        Ok(Gateway {
            background: tokio::runtime::Handle::try_current().ok(),
            keyring: Keyring::new(&config.tenants),
            failed_auth: FailedAuth::new(FAILED_AUTH_LIMIT, FAILED_AUTH_WINDOW),
            router: Arc::new(Router::new(
                &config.regions,
                config.routing.clone(),
                events.clone(),
            )),
            events,
            sinks: Arc::new(record::Sinks {
                audit: Arc::new(Audit::new(config.audit.clone())),
                meter: Arc::default(),
                latency: Arc::default(),
                histograms: Arc::default(),
                routes: record::Routes::default(),
            }),
            hub: Hub::new(config.streams.clone(), shutdown.clone()),
            shutdown,
            persistence: Arc::default(),
            writes: tokio::sync::Mutex::new(()),
            cluster_turn: tokio::sync::Mutex::new(()),
            operator_version: std::sync::atomic::AtomicU64::new(0),
            keys_version: std::sync::atomic::AtomicU64::new(0),
            pending_actions: Mutex::default(),
            shared_degraded: std::sync::atomic::AtomicBool::new(false),
            cache: Arc::new(Cache::new(config.cache.clone())),
            conversations: Arc::new(conversations::Conversations::new()),
            batches: batches::Batches::default(),
            flow_runs: flows::Runs::default(),
            collections: collections::Collections::default(),
            files: Arc::new(crate::files::Files::new(
                &config.server.data_dir,
                config.files,
            )),
            store: OnceLock::new(),
            shared: OnceLock::new(),
            workers: OnceLock::new(),
            keys: Mutex::default(),
            overrides: Mutex::default(),
            started: clock::now(),
            upstreams: Upstreams::new(&config.regions, config.upstream, config.server.workers)?,
            admission: Arc::new(admission_for(&config)),
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
        &self.sinks.meter
    }

    /// The histograms and answer counters `/metrics` exports.
    pub fn histograms(&self) -> &Arc<crate::telemetry::histograms::Histograms> {
        &self.sinks.histograms
    }

    pub fn latency(&self) -> &Arc<Latency> {
        &self.sinks.latency
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn conversations(&self) -> &Arc<conversations::Conversations> {
        &self.conversations
    }

    pub fn files(&self) -> &Arc<crate::files::Files> {
        &self.files
    }

    /// Every configured model alias and its kind: what a batch line may name.
    pub fn model_kinds(&self) -> std::collections::HashMap<String, crate::domain::ModelKind> {
        self.config
            .models
            .iter()
            .map(|m| (m.alias.clone(), m.kind))
            .collect()
    }

    /// Whether instance `name` is configured and serves the Responses API itself.
    pub fn serves_responses(&self, name: &str) -> bool {
        self.config
            .instance(name)
            .is_some_and(|i| i.native_responses)
    }

    /// Asks the instance that stores response `id` for it (`GET`), to delete it
    /// (`DELETE`) or to cancel it (`POST`, `cancel`): the upstream's whole answer, errors
    /// in OpenAI's shape. Not a model call: no admission, seat or routing.
    pub async fn stored_response(
        &self,
        instance: &str,
        (method, id, cancel): (http::Method, &str, bool),
        request_id: &str,
    ) -> Result<(StatusCode, Bytes), Refusal> {
        let Some(config) = self.config.instance(instance) else {
            return Err(Refusal::response_not_found(id));
        };
        let (status, body) = self
            .upstreams
            .stored_response(config, (method, id, cancel), request_id)
            .await
            .map_err(|e| Refusal::upstream_unreachable(instance, &e.to_string()))?;
        let body = if status.is_success() {
            body
        } else {
            openai_error_body(status, body)
        };
        Ok((status, body))
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.sinks.audit
    }

    pub(crate) fn sinks(&self) -> &Arc<record::Sinks> {
        &self.sinks
    }

    pub fn shutdown(&self) -> &Arc<Shutdown> {
        &self.shutdown
    }

    pub fn persistence(&self) -> &Arc<Persistence> {
        &self.persistence
    }

    /// Admits a request answered without going upstream (a cache hit, or a follower of
    /// an identical request in flight): it counts against the request limits, and takes
    /// no seat.
    pub async fn admit_cached(&self, tenant: &str, model: &Model) -> Result<CachedTicket, Refused> {
        let demand = Demand {
            prompt_tokens: 0,
            max_tokens: Some(0),
            completion: false,
            price: model.price,
            batch: false,
        };
        let reservation = self.reserve(tenant, &demand).await?;
        Ok(CachedTicket {
            reservation,
            use_tokens: self.cache.policy().hits_use_tokens,
        })
    }

    /// Reserves `demand` against the tenant's limits: this replica's own, or its lease
    /// of the cluster's, asking the shared store when the lease is short.
    async fn reserve(&self, tenant: &str, demand: &Demand) -> Result<Reservation, Refused> {
        match self.admission.reserve(tenant, demand) {
            Err(admission::Refusal::Unleased) => match self.shared.get() {
                Some(shared) => shared.reserve(tenant, demand).await,
                None => Err(admission::Refusal::Unleased),
            },
            decided => decided,
        }
        .map_err(Refused::Limits)
    }

    /// Connects this replica to the shared store; until then, a lease found short is
    /// refused as the store being unreachable.
    pub fn attach_shared(&self, shared: Arc<crate::state::Shared>) {
        self.sinks.audit.set_replica(shared.replica());
        let _ = self.shared.set(shared);
    }

    pub fn shared(&self) -> Option<&Arc<crate::state::Shared>> {
        self.shared.get()
    }

    /// Lets `/metrics` report the connection workers' open connections.
    pub fn attach_workers(&self, occupancy: crate::workers::Occupancy) {
        let _ = self.workers.set(occupancy);
    }

    /// Client connections open on each connection worker (none before the daemon's
    /// workers start).
    pub fn worker_connections(&self) -> Vec<usize> {
        self.workers.get().map(|o| o.open()).unwrap_or_default()
    }

    /// Reserves the request's estimated cost, then waits for a seat upstream.
    pub async fn admit(
        &self,
        tenant: &str,
        demand: &Demand,
        batch: bool,
    ) -> Result<Ticket, Refused> {
        let reservation = self.reserve(tenant, demand).await?;
        let waiting = clock::now();
        let level = if batch {
            crate::scheduler::BATCH
        } else {
            reservation.tier()
        };
        let seat = self
            .scheduler
            .acquire(tenant, level, reservation.tokens())
            .await
            .map_err(|rejection| Refused::Queue {
                rejection,
                headers: *reservation.headers(),
            })?;
        Ok(Ticket {
            reservation,
            seat,
            queued: clock::since(waiting),
        })
    }

    /// Runs `job` on the runtime the gateway was made on (the current one if it was
    /// made outside any).
    pub(crate) fn spawn_background<F>(&self, job: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.background {
            Some(runtime) => runtime.spawn(job),
            None => tokio::spawn(job),
        }
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
            match &result {
                Err(ProbeFailure::Local(reason)) => {
                    tracing::error!(instance = %instance.name(), %reason, "health probe could not be sent; the instance is not held to account");
                    return;
                }
                Err(ProbeFailure::Upstream(reason)) => {
                    tracing::debug!(instance = %instance.name(), %reason, "health probe failed");
                }
                Ok(()) => {}
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

    /// The tenant a request's key belongs to, and the key's public id. Failures are
    /// counted per `source` address; a source that fails too often is refused for the
    /// rest of the window without its key being looked at.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        source: Option<std::net::IpAddr>,
    ) -> Result<(&Tenant, Arc<str>), AuthError> {
        if let Err(retry_after) = self.failed_auth.check(source) {
            let error = AuthError::TooManyFailures { retry_after };
            self.failed_auth.failed(source, error.code());
            self.sinks.meter.code(error.code());
            return Err(error);
        }
        let found = self.keyring.authenticate(authorization).and_then(|caller| {
            let tenant = self
                .config
                .tenants
                .get(caller.tenant)
                .ok_or(AuthError::Invalid)?;
            Ok((tenant, caller.key_id))
        });
        if let Err(error) = &found {
            self.failed_auth.failed(source, error.code());
            self.sinks.meter.code(error.code());
        }
        found
    }

    /// Ends the window of failed authentications: one audit record per source and code,
    /// with how many there were. Called by the daemon every window.
    pub fn audit_failed_auth(&self) {
        let now = crate::telemetry::now_ms();
        for report in self.failed_auth.take() {
            let source = report
                .source
                .map_or_else(|| "other sources".to_string(), |ip| ip.to_string());
            tracing::info!(%source, code = report.code, count = report.count, "failed authentications");
            self.sinks
                .audit
                .record(crate::domain::records::AuditRecord {
                    at_ms: now,
                    kind: Some(crate::domain::records::AuditKind::Request),
                    status: Some(401),
                    error: Some(report.code.to_string()),
                    source: Some(source),
                    count: Some(report.count),
                    ..Default::default()
                });
        }
    }

    pub fn failed_auth_window(&self) -> Duration {
        self.failed_auth.window()
    }

    /// Routes the call and tries its candidates in order until one answers with something
    /// the client should see. Retries (beyond the first attempt) come out of the retry
    /// budget and stop at the routing deadline.
    async fn forward(&self, call: Call<'_>) -> Result<Answer, GatewayError> {
        let Call {
            request_id,
            model,
            kind,
            mut body,
            stream,
            tokens,
            regions,
            session,
            pin,
        } = call;
        let route = match pin {
            Some(instance) => self.router.route_to(model, regions, instance),
            None => self.router.route(model, regions, session),
        }
        .map_err(|reason| GatewayError::NoRoute { reason })?;
        tracing::debug!(%request_id, reason = %route.reason, "routed");
        self.router.count_request();
        let timeouts = self.upstreams.timeouts();
        let give_up = clock::now() + self.router.policy().deadline;
        let mut attempts = Vec::new();
        let mut sent = 0;
        let mut encoded: Option<(&str, Bytes)> = None;

        for Candidate {
            instance,
            upstream_model,
        } in route.candidates
        {
            let region = instance.region.clone();
            let name = instance.names.instance.clone();
            let fail = |failure: Failure| {
                tracing::warn!(%request_id, %region, instance = %name, %failure, "upstream attempt failed");
                Attempt {
                    region: region.to_string(),
                    instance: name.to_string(),
                    failure,
                }
            };
            // Skipped before it costs a slot or a retry: nothing would be sent.
            if let Some(unsupported) = crate::providers::unsupported(&instance.instance, kind) {
                attempts.push(fail(Failure::Send(unsupported)));
                continue;
            }
            if sent > 0 {
                if clock::now() >= give_up {
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
            // A send that failed counts against the instance's health; a drain
            // deadline's cut, or the instance leaving rotation, does not (again).
            let send_failed = |stop: Stop| match stop {
                Stop::Failed(e @ SendError::Local(_)) => {
                    tracing::error!(%request_id, error = %e, "out of local resources; the upstream is not held to account");
                    fail(Failure::Send(e))
                }
                // Nothing was sent: the instance's dialect cannot say this request
                // (`n` above 1 to Anthropic, say): no fault of the instance.
                Stop::Failed(e @ SendError::Unsupported(_)) => fail(Failure::Send(e)),
                Stop::Failed(e) => {
                    self.router.report(instance, Outcome::Failure, None);
                    fail(Failure::Send(e))
                }
                Stop::Drained => fail(Failure::Drained),
                Stop::TakenOut => fail(Failure::TakenOut),
            };
            let started = clock::fresh();
            let deadline = started + timeouts.response;
            // Streams send their headers at once; a plain answer's come with the answer.
            let wait = if stream {
                timeouts.first_byte
            } else {
                timeouts.response
            };
            let mut interrupts = instance.interrupt_watch();
            // Each wait is made inside its select, where it is stored once: a future
            // made out here and moved in would take its size twice in this one.
            let sent = tokio::select! {
                biased;
                sent = self.send_once_more_if_broken(&instance.instance, (kind, upstream_model), request_id, payload.clone(), wait) => {
                    sent.map_err(Stop::Failed)
                }
                stop = interrupts.interrupted() => Err(Stop::from(stop)),
            };
            let mut response = match sent {
                Ok(response) => response,
                Err(e) => {
                    attempts.push(send_failed(e));
                    continue;
                }
            };
            let latency = clock::since(started);

            let status = response.status();
            let headers = response.take_headers();
            // How long a 429 asks to wait (read only then: most answers are not 429s).
            let rate_limited =
                (status == StatusCode::TOO_MANY_REQUESTS).then(|| retry_after(&headers));
            if let Some(wait) = rate_limited {
                self.router
                    .report(instance, Outcome::RateLimited(wait), None);
            } else if status.is_success() || request_fault(status) {
                self.router
                    .report(instance, Outcome::Success, Some(latency));
            } else {
                self.router.report(instance, Outcome::Failure, None);
            }
            if status.is_success() && stream {
                return Ok(Answer {
                    region,
                    instance: name,
                    tally: instance.tally().clone(),
                    status,
                    headers,
                    reason: route.reason,
                    started,
                    body: AnswerBody::Stream { response, slot },
                });
            }
            let read = tokio::select! {
                biased;
                read = read_whole(response, deadline, timeouts.response) => read.map_err(Stop::Failed),
                stop = interrupts.interrupted() => Err(Stop::from(stop)),
            };
            let whole = match read {
                Ok(bytes) => bytes,
                Err(e) => {
                    attempts.push(send_failed(e));
                    continue;
                }
            };
            drop(slot);
            if status.is_success() || request_fault(status) {
                let mut headers = headers;
                let whole = if status.is_success() {
                    whole
                } else {
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        http::header::HeaderValue::from_static("application/json"),
                    );
                    openai_error_body(status, whole)
                };
                return Ok(Answer {
                    region,
                    instance: name,
                    tally: instance.tally().clone(),
                    status,
                    headers,
                    reason: route.reason,
                    started,
                    body: AnswerBody::Whole(whole),
                });
            }
            attempts.push(fail(if let Some(wait) = rate_limited {
                Failure::RateLimited(wait)
            } else {
                Failure::Status {
                    status: status.as_u16(),
                    message: error_message(&whole, 120),
                }
            }));
        }
        Err(GatewayError::Exhausted {
            model: model.alias.clone(),
            attempts,
        })
    }

    /// Sends a request to `instance`. A connection that broke before an answer is most
    /// often a pooled keep-alive connection the upstream had closed: the same instance
    /// is tried once more, on a fresh connection, before the caller moves on.
    async fn send_once_more_if_broken(
        &self,
        instance: &crate::domain::Instance,
        target: (crate::domain::ModelKind, &str),
        request_id: &str,
        payload: Bytes,
        wait: Duration,
    ) -> Result<crate::providers::Response, SendError> {
        let first = self
            .upstreams
            .send(instance, target, request_id, payload.clone(), wait)
            .await;
        if let Err(SendError::Broken(reason)) = &first {
            tracing::debug!(%request_id, instance = %instance.name, %reason, "retrying on a fresh connection");
            return self
                .upstreams
                .send(instance, target, request_id, payload, wait)
                .await;
        }
        first
    }
}

/// Why an attempt stopped before it had an answer.
enum Stop {
    Failed(SendError),
    /// A drain deadline cut the instance.
    Drained,
    /// The instance left rotation (ejected, failing probes, an operator) while the
    /// attempt waited on it.
    TakenOut,
}

impl From<Interrupt> for Stop {
    fn from(interrupt: Interrupt) -> Stop {
        match interrupt {
            Interrupt::Cut => Stop::Drained,
            Interrupt::TakenOut => Stop::TakenOut,
        }
    }
}

/// A whole answer's body, read by `deadline`.
async fn read_whole(
    response: crate::providers::Response,
    deadline: Instant,
    limit: Duration,
) -> Result<Bytes, SendError> {
    match tokio::time::timeout_at(deadline, response.bytes()).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(SendError::Broken(crate::providers::root_cause(&e))),
        Err(_) => Err(SendError::Timeout(limit)),
    }
}

/// Longest wait an upstream may ask for; anything beyond (or nonsense) is capped here.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long an upstream's 429 asks us to wait: `retry-after-ms`, `retry-after` (seconds
/// or an HTTP date), or OpenAI's `x-ratelimit-reset-requests` (`6m0s`); one second when
/// it says nothing readable. Never panics, whatever the values: NaN, negative, huge.
/// The hand-written HTTP/1.1 client keeps only the fields named in its `KEPT`: a field
/// read here must be there too.
fn retry_after(headers: &HeaderMap) -> Duration {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |v: &str| -> Option<Duration> {
        let secs = v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)?;
        Some(Duration::from_secs_f64(
            secs.clamp(0.0, MAX_RETRY_AFTER.as_secs_f64()),
        ))
    };
    text("retry-after-ms")
        .and_then(|ms| seconds(ms).map(|d| d / 1000))
        .or_else(|| {
            let value = text("retry-after")?;
            seconds(value).or_else(|| http_date_from_now(value))
        })
        .or_else(|| text("x-ratelimit-reset-requests").and_then(go_duration))
        .unwrap_or(Duration::from_secs(1))
        .min(MAX_RETRY_AFTER)
}

/// A duration as OpenAI and Go write them: `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += number
            * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = tail;
    }
    (total.is_finite() && total >= 0.0)
        .then(|| Duration::from_secs_f64(total.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// The time from now until an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`); zero if past.
fn http_date_from_now(text: &str) -> Option<Duration> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_whitespace().skip(1);
    let day: u64 = parts
        .next()?
        .parse()
        .ok()
        .filter(|d| (1..=31).contains(d))?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let year: u32 = parts
        .next()?
        .parse()
        .ok()
        .filter(|y| (1970..=9999).contains(y))?;
    let mut clock = parts.next()?.split(':').map(|n| n.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    let days = crate::domain::period::days_from_civil(year, month) + day - 1;
    let at_secs = days * 86_400 + h * 3600 + m * 60 + s;
    let now_secs = crate::telemetry::now_ms() / 1000;
    Some(Duration::from_secs(at_secs.saturating_sub(now_secs)))
}

/// The `error.message` of an OpenAI-shaped error body, shortened; empty if there is none.
/// The message of an upstream's error body: OpenAI's `error.message`, or else the body's
/// text (a plain-text 413 from a proxy), shortened to `limit` characters.
fn error_message(body: &[u8], limit: usize) -> String {
    let message = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    match message.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

/// An upstream's refusal of the request, in OpenAI's shape whatever the upstream wrote:
/// kept as it is when it already is, otherwise its status and message wrapped.
fn openai_error_body(status: StatusCode, body: Bytes) -> Bytes {
    let shaped = serde_json::from_slice::<Value>(&body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(Value::is_object));
    if shaped {
        return body;
    }
    let message = match error_message(&body, 500) {
        m if m.is_empty() => format!("the upstream answered {status}"),
        m => m,
    };
    let error = serde_json::json!({
        "error": { "message": message, "type": "invalid_request_error", "param": null, "code": null }
    });
    Bytes::from(error.to_string())
}

/// A JSON string literal as a raw value.
fn json_string(text: &str) -> Box<RawValue> {
    let literal = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string());
    RawValue::from_string(literal).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// 24 random letters and digits, for the ids the gateway makes (`batch_…`, `run_…`).
fn random_id() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect()
}

/// Now, in Unix seconds, as OpenAI's objects give times.
fn now_secs() -> u64 {
    crate::telemetry::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = value.parse() {
                map.insert(*name, value);
            }
        }
        map
    }

    #[test]
    fn retry_after_survives_whatever_upstreams_write() {
        let wait = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs));
        assert_eq!(wait(&[("retry-after", "2")]), Duration::from_secs(2));
        assert_eq!(wait(&[("retry-after", "1.5")]), Duration::from_millis(1500));
        assert_eq!(
            wait(&[("retry-after-ms", "250")]),
            Duration::from_millis(250)
        );
        for nonsense in ["NaN", "-3", "inf", "soon", ""] {
            assert_eq!(
                wait(&[("retry-after", nonsense)]),
                Duration::from_secs(1),
                "{nonsense}"
            );
        }
        assert_eq!(wait(&[("retry-after", "1e300")]), MAX_RETRY_AFTER);
        assert_eq!(wait(&[("retry-after-ms", "NaN")]), Duration::from_secs(1));
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Duration::ZERO
        );
        let future = wait(&[("retry-after", "Fri, 01 Jan 9999 00:00:00 GMT")]);
        assert_eq!(future, MAX_RETRY_AFTER);
        // What the gateway itself writes, read back.
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "6m0s")]),
            Duration::from_secs(360)
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "2m3.5s")]),
            Duration::from_secs_f64(123.5)
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "20ms")]),
            Duration::from_millis(20)
        );
    }
}
