//! What the console sees and says: a `Snapshot` of the whole gateway, the `Event`s that
//! explain changes, and the `Action`s an operator can take. The same types travel
//! in-process and, as JSON, between a remote daemon and its console.

use serde::{Deserialize, Serialize};

use super::Limits;

/// The whole gateway at one moment, as the daemon acts on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    pub uptime_secs: u64,
    pub totals: Totals,
    pub regions: Vec<RegionView>,
    pub tenants: Vec<TenantView>,
    pub levels: Vec<LevelView>,
    pub streams: Vec<StreamView>,
    /// Batch jobs running, and the latest that ended; newest first.
    #[serde(default)]
    pub batches: Vec<BatchView>,
    /// Flow runs in progress, and the latest that ended; newest first.
    #[serde(default)]
    pub flow_runs: Vec<FlowRunView>,
    /// The most recent events, oldest first.
    pub events: Vec<Event>,
    /// Requests queued, one sample a second, oldest first (for sparklines).
    pub queue_history: Vec<u64>,
    pub latency: Vec<LatencyView>,
    /// Error answers by OpenAI error code, since start.
    #[serde(default)]
    pub errors_by_code: Vec<(String, u64)>,
    #[serde(default)]
    pub cache: CacheView,
    #[serde(default)]
    pub audit: AuditView,
    /// `Some(what failed last)` while writes to the database fail.
    #[serde(default)]
    pub persistence_degraded: Option<String>,
    /// With shared state (`[state] backend = "valkey"`): the cluster as this replica
    /// sees it.
    #[serde(default)]
    pub cluster: Option<ClusterView>,
}

/// The cluster as one replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This replica's id.
    pub replica: String,
    /// While the shared store cannot be reached: for how many seconds, and why.
    pub degraded: Option<(u64, String)>,
    /// Every replica heard from lately, this one included, by id.
    pub replicas: Vec<ReplicaView>,
}

/// A replica as its heartbeat last described it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: String,
    /// Milliseconds since its last heartbeat, by the store's clock.
    pub silent_ms: u64,
    /// What it says of itself: its address, requests in flight, version.
    pub about: serde_json::Value,
}

/// A batch job as operators follow it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchView {
    pub id: String,
    pub tenant: String,
    pub status: String,
    pub endpoint: String,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    /// Tokens its lines used.
    #[serde(default)]
    pub tokens: u64,
    /// Lines done per second since it started, once it has run a second.
    pub lines_per_sec: Option<f64>,
    /// Seconds left at that rate, while it runs.
    pub eta_secs: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: u64,
    /// Why its lines wait, while they do: a limit of the tenant's, a pause.
    #[serde(default)]
    pub held: Option<String>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl BatchView {
    /// Lines done, failed ones included.
    pub fn done(&self) -> u64 {
        self.completed + self.failed
    }

    pub fn running(&self) -> bool {
        matches!(
            self.status.as_str(),
            "validating" | "in_progress" | "finalizing" | "cancelling"
        )
    }

    /// Whether cancelling it would stop anything.
    pub fn cancellable(&self) -> bool {
        matches!(self.status.as_str(), "validating" | "in_progress")
    }
}

/// A flow run as operators follow it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowRunView {
    pub id: String,
    pub tenant: String,
    pub flow: String,
    pub status: String,
    /// The step in progress, while it runs.
    pub current: Option<String>,
    pub steps_done: usize,
    pub steps_total: usize,
    /// Seconds since it started (to its end, once ended).
    pub elapsed_secs: u64,
    pub tokens: u64,
    /// Why it failed or was cancelled: the step and the message.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Its steps so far.
    pub steps: Vec<FlowStepView>,
}

/// A step of a flow run, as it went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowStepView {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub elapsed_ms: u64,
    pub tokens: u64,
    /// Model calls it made.
    pub calls: usize,
    pub error: Option<String>,
}

impl FlowRunView {
    pub fn running(&self) -> bool {
        matches!(self.status.as_str(), "running" | "cancelling")
    }
}

/// The audit log's writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub enabled: bool,
    /// Records written since start.
    pub written: u64,
    /// Records handed over and not yet written.
    pub backlog: u64,
    /// Records dropped because the writer fell too far behind.
    #[serde(default)]
    pub dropped: u64,
}

/// The response cache: what it holds and what it did since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheView {
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    /// Answered from a kept answer.
    pub hits: u64,
    /// Cacheable, went upstream.
    pub misses: u64,
    /// Not cacheable, or the client opted out.
    pub bypasses: u64,
    /// Answered by joining an identical request in flight.
    pub coalesced: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Per scope (a tenant, or "*" when the cache is shared), largest first.
    pub scopes: Vec<CacheScopeView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheScopeView {
    pub scope: String,
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
}

/// "1 answer", "2 answers": for messages about the cache.
pub fn answers(n: u64) -> String {
    format!("{n} answer{}", if n == 1 { "" } else { "s" })
}

impl CacheView {
    /// Hits (coalesced included) over cacheable requests, when there were any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let served = self.hits + self.coalesced;
        let cacheable = served + self.misses;
        (cacheable > 0).then(|| served as f64 / cacheable as f64)
    }
}

/// Counters since start, and rates over the last few seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub requests_per_sec: f64,
    pub tokens_per_sec: f64,
    /// Share of recent requests that ended in an error the gateway or upstream caused.
    pub error_rate: f64,
    /// Share of recent requests refused: limits, budgets, pauses, full queues.
    #[serde(default)]
    pub refusal_rate: f64,
    pub queued: u64,
    pub in_flight: u64,
}

/// A tenant's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    pub name: String,
    pub tier: String,
    pub paused: bool,
    /// The limits in force: the tier's, with the tenant's overrides applied.
    pub limits: Limits,
    pub overrides: Limits,
    pub in_flight: u32,
    pub requests_available: Option<u64>,
    pub tokens_available: Option<u64>,
    pub day: PeriodView,
    pub month: PeriodView,
    /// Batch lines running now, and what batch lines used today (within `day`).
    #[serde(default)]
    pub batch_in_flight: u32,
    #[serde(default)]
    pub batch_day: PeriodView,
    /// Requests of this tenant waiting for a seat.
    #[serde(default)]
    pub queued: u64,
    /// p99 of end-to-end latency over the tenant's last few hundred requests, milliseconds.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// What an operator changed at run time, differing from the config file: "tier",
    /// "rpm", "paused", ….
    #[serde(default)]
    pub changed: Vec<String>,
    /// Requests and tokens over the last minute, to read against `rpm` and `tpm`.
    #[serde(default)]
    pub requests_last_minute: u64,
    #[serde(default)]
    pub tokens_last_minute: u64,
    /// Answers refused or failed, by error code, since start.
    #[serde(default)]
    pub refused: Vec<(String, u64)>,
    /// With shared state: the whole cluster's spending (this replica's now, the
    /// others' as of the last round trip).
    #[serde(default)]
    pub cluster: Option<ClusterUsage>,
}

/// A tenant's spending over every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterUsage {
    pub day_tokens: u64,
    pub day_usd: f64,
    pub month_tokens: u64,
    pub month_usd: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodView {
    pub tokens: u64,
    pub cost_usd: f64,
    pub requests: u64,
    pub reserved_tokens: u64,
}

/// A priority level's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelView {
    pub tier: String,
    pub share: u32,
    pub seats: u32,
    pub in_use: u32,
    /// Seats in use beyond the level's own share.
    pub borrowed: u32,
    pub queued: usize,
    pub oldest_wait_ms: u64,
    pub dispatched: u64,
}

/// Where a region stands, as its instances add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RegionState {
    /// Every instance takes requests.
    #[default]
    #[serde(rename = "healthy")]
    Healthy,
    /// Some instances take requests.
    #[serde(rename = "degraded")]
    Degraded,
    /// No instance takes requests.
    #[serde(rename = "down")]
    Down,
    /// An operator drained every instance; some still finish work.
    #[serde(rename = "draining")]
    Draining,
    #[serde(rename = "drained")]
    Drained,
}

/// Where one instance stands, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InstanceState {
    #[default]
    #[serde(rename = "healthy")]
    Healthy,
    /// A 429 asked it to be left alone for a while.
    #[serde(rename = "cooling down")]
    CoolingDown,
    /// Outlier ejection after consecutive failures.
    #[serde(rename = "ejected")]
    Ejected,
    #[serde(rename = "probe failing")]
    ProbeFailing,
    #[serde(rename = "draining")]
    Draining,
    #[serde(rename = "drained")]
    Drained,
    #[serde(rename = "ejected by operator")]
    EjectedByOperator,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Healthy => "healthy",
            RegionState::Degraded => "degraded",
            RegionState::Down => "down",
            RegionState::Draining => "draining",
            RegionState::Drained => "drained",
        }
    }
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Healthy => "healthy",
            InstanceState::CoolingDown => "cooling down",
            InstanceState::Ejected => "ejected",
            InstanceState::ProbeFailing => "probe failing",
            InstanceState::Draining => "draining",
            InstanceState::Drained => "drained",
            InstanceState::EjectedByOperator => "ejected by operator",
        }
    }

    /// Set aside by an operator's drain, finishing or finished.
    pub fn drained(self) -> bool {
        matches!(self, InstanceState::Draining | InstanceState::Drained)
    }
}

impl std::fmt::Display for RegionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A region and its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionView {
    pub name: String,
    pub order: u32,
    pub state: RegionState,
    /// Share of instance weight that takes new requests.
    pub routable: f64,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    pub url: String,
    pub weight: u32,
    pub max_concurrency: u32,
    pub in_flight: u32,
    pub outstanding_tokens: u64,
    /// Peak-EWMA of time to response headers, as the balancer sees it.
    pub latency_ms: f64,
    /// End-to-end percentiles over the instance's last few hundred requests.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Share of attempts that failed (connect, timeout, 5xx), since start.
    #[serde(default)]
    pub error_rate: f64,
    pub health: HealthView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    pub state: InstanceState,
    pub probe_ok: bool,
    pub consecutive_failures: u32,
    pub ejections: u32,
    pub ejected_for_ms: Option<u64>,
    pub cooling_for_ms: Option<u64>,
    pub manual_eject: bool,
}

/// One tenant in depth, for the console's drill-down: its state, the last five minutes
/// second by second, and its newest audit records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDetail {
    pub tenant: TenantView,
    /// Requests, tokens and refused answers in each of the last seconds, oldest first.
    pub requests_per_sec: Vec<u64>,
    pub tokens_per_sec: Vec<u64>,
    pub refused_per_sec: Vec<u64>,
    /// The same seconds: refusals per code, end-to-end p50 and p99 and queue-wait p99
    /// (none in a second when no request finished).
    #[serde(default)]
    pub refused_by_code_per_sec: Vec<(String, Vec<u64>)>,
    #[serde(default)]
    pub e2e_p50_ms: Vec<Option<f64>>,
    #[serde(default)]
    pub e2e_p99_ms: Vec<Option<f64>>,
    #[serde(default)]
    pub queue_p99_ms: Vec<Option<f64>>,
    /// Its newest audit records (requests and operators' actions), newest last.
    pub audit: Vec<super::records::AuditRecord>,
    /// Why the audit records are missing, when the log could not be read.
    #[serde(default)]
    pub audit_unreadable: Option<String>,
}

/// A tenant's or an instance's seconds in full, aligned: element `i` of every series is
/// the same second, oldest first (up to five minutes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub requests: Vec<u64>,
    pub tokens: Vec<u64>,
    /// Refusals (a tenant) or failed attempts (an instance).
    pub refused: Vec<u64>,
    /// The same, per code, in each second.
    pub refused_by_code: Vec<(String, Vec<u64>)>,
    /// End to end for a tenant, the upstream's time for an instance; none in a second
    /// when nothing finished.
    pub e2e_p50_ms: Vec<Option<f64>>,
    pub e2e_p99_ms: Vec<Option<f64>>,
    pub queue_p99_ms: Vec<Option<f64>>,
}

/// One upstream instance in depth, for the console's drill-down: its last five minutes,
/// second by second (attempts, failures by kind, the upstream's latency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDetail {
    pub instance: String,
    pub region: String,
    pub history: History,
}

/// A live streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamView {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub region: String,
    pub instance: String,
    /// Content tokens relayed so far (by the model's tokenizer).
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub age_ms: u64,
    /// The end of the text so far, for tailing.
    pub tail: String,
}

/// Percentiles of one latency series over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyView {
    /// "ttft", "e2e", "queue" or "overhead".
    pub metric: String,
    /// What the series is about: "region:us-east", "model:gpt-4o-mini", "tier:pro".
    pub scope: String,
    /// "10s", "1m" or "5m".
    pub window: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Counts per bucket, for a bar chart; bucket upper bounds in `bucket_ms`.
    pub buckets: Vec<u64>,
    pub bucket_ms: Vec<f64>,
    /// p99 per ten seconds over the last five minutes, oldest first.
    pub p99_history_ms: Vec<f64>,
}

/// Something that happened that an operator should see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
    /// Who did it, for operator actions.
    pub actor: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Ejections, cool-downs, probes, failover.
    Routing,
    /// An operator changed something.
    Operator,
    /// Streams cut, budgets spent, queues overflowing.
    Traffic,
}

/// Everything an operator can do, from the console, `ctl` or the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    DrainRegion {
        region: String,
        /// Seconds until what still runs is cut; default `routing.drain_deadline`.
        #[serde(default)]
        deadline_secs: Option<f64>,
    },
    UndrainRegion {
        region: String,
    },
    DrainInstance {
        instance: String,
        #[serde(default)]
        deadline_secs: Option<f64>,
    },
    UndrainInstance {
        instance: String,
    },
    EjectInstance {
        instance: String,
    },
    RestoreInstance {
        instance: String,
    },
    SetTier {
        tenant: String,
        tier: String,
    },
    SetLimits {
        tenant: String,
        limits: Limits,
    },
    PauseTenant {
        tenant: String,
    },
    ResumeTenant {
        tenant: String,
    },
    ResetBudget {
        tenant: String,
    },
    KillStream {
        id: String,
    },
    /// Stops a batch job: lines in flight finish, what finished is kept.
    CancelBatch {
        id: String,
    },
    /// Stops a flow run: the step in flight is dropped, no other starts.
    CancelFlowRun {
        id: String,
    },
    /// Drops kept answers: one tenant's, or all of them.
    PurgeCache {
        #[serde(default)]
        tenant: Option<String>,
    },
}

impl Action {
    /// Whether the action takes capacity or service away, and so asks first.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            Action::DrainRegion { .. }
                | Action::DrainInstance { .. }
                | Action::EjectInstance { .. }
                | Action::PauseTenant { .. }
                | Action::KillStream { .. }
                | Action::CancelBatch { .. }
                | Action::CancelFlowRun { .. }
                | Action::SetTier { .. }
                | Action::SetLimits { .. }
                | Action::ResetBudget { .. }
                | Action::PurgeCache { .. }
        )
    }

    /// What the action is done to: a region, instance, tenant or stream (`None`: the
    /// whole cache).
    pub fn target(&self) -> Option<&str> {
        match self {
            Action::DrainRegion { region, .. } | Action::UndrainRegion { region } => Some(region),
            Action::DrainInstance { instance, .. }
            | Action::UndrainInstance { instance }
            | Action::EjectInstance { instance }
            | Action::RestoreInstance { instance } => Some(instance),
            Action::SetTier { tenant, .. }
            | Action::SetLimits { tenant, .. }
            | Action::PauseTenant { tenant }
            | Action::ResumeTenant { tenant }
            | Action::ResetBudget { tenant } => Some(tenant),
            Action::PurgeCache { tenant } => tenant.as_deref(),
            Action::KillStream { id }
            | Action::CancelBatch { id }
            | Action::CancelFlowRun { id } => Some(id),
        }
    }

    /// The action's name as the admin API takes it: "drain_region".
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("action")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// A short description naming the target: "drain us-east".
    pub fn describe(&self) -> String {
        match self {
            Action::DrainRegion { region, .. } => format!("drain {region}"),
            Action::UndrainRegion { region } => format!("undrain {region}"),
            Action::DrainInstance { instance, .. } => format!("drain instance {instance}"),
            Action::UndrainInstance { instance } => format!("undrain instance {instance}"),
            Action::EjectInstance { instance } => format!("eject {instance}"),
            Action::RestoreInstance { instance } => format!("restore {instance}"),
            Action::SetTier { tenant, tier } => format!("move {tenant} to tier {tier}"),
            Action::SetLimits { tenant, .. } => format!("change {tenant}'s limits"),
            Action::PauseTenant { tenant } => format!("pause {tenant}"),
            Action::ResumeTenant { tenant } => format!("resume {tenant}"),
            Action::ResetBudget { tenant } => format!("reset {tenant}'s budget"),
            Action::KillStream { id } => format!("kill stream {id}"),
            Action::CancelBatch { id } => format!("cancel batch {id}"),
            Action::CancelFlowRun { id } => format!("cancel flow run {id}"),
            Action::PurgeCache {
                tenant: Some(tenant),
            } => format!("purge {tenant}'s cache"),
            Action::PurgeCache { tenant: None } => "purge the whole cache".to_string(),
        }
    }
}
