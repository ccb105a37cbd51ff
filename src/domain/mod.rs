//! Plain types that every stage shares: tenants, tiers, regions, instances, models.
//!
//! Nothing here does I/O, holds locks or knows about HTTP; these are the nouns the
//! config produces and the rest of the gateway reads.

pub mod period;
pub mod records;
pub mod snapshot;
pub mod units;

use period::PeriodKey;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A priority level. Tenants are assigned to exactly one tier; the tier gives their
/// default limits and their share of the upstream seats.
/// The address a request came from, when the listener knows it (it puts it on every
/// request it reads, for the fronts to limit failed authentications by).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<std::net::IpAddr>);

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Share of the seats, relative to the other tiers; idle shares are lent.
    pub share: u32,
    /// Requests that may wait in this tier's queue at once.
    pub max_queue: usize,
    /// Requests of one tenant that may wait in it at once, so no tenant fills it alone.
    pub max_queue_per_tenant: usize,
    /// Longest a request waits for a seat before it is refused.
    pub max_wait: Duration,
    pub limits: Limits,
}

/// What a tenant may use. `None` is unlimited; a tenant's own values override its tier's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt and completion).
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    /// Completion tokens reserved when a request sets no `max_tokens`, and the most reserved
    /// when it does.
    pub max_tokens_cap: Option<u64>,
    /// Batch lines of the tenant running at once, over all its batches.
    #[serde(default)]
    pub batch_concurrency: Option<u32>,
    /// Tokens the tenant's batch lines may use per UTC day (they count against the
    /// tenant's other limits too).
    #[serde(default)]
    pub batch_daily_tokens: Option<u64>,
}

impl Limits {
    /// These limits with every value that `over` sets replaced by it.
    pub fn overlay(&self, over: &Limits) -> Limits {
        Limits {
            rpm: over.rpm.or(self.rpm),
            tpm: over.tpm.or(self.tpm),
            max_concurrency: over.max_concurrency.or(self.max_concurrency),
            daily_tokens: over.daily_tokens.or(self.daily_tokens),
            monthly_tokens: over.monthly_tokens.or(self.monthly_tokens),
            daily_usd: over.daily_usd.or(self.daily_usd),
            monthly_usd: over.monthly_usd.or(self.monthly_usd),
            max_tokens_cap: over.max_tokens_cap.or(self.max_tokens_cap),
            batch_concurrency: over.batch_concurrency.or(self.batch_concurrency),
            batch_daily_tokens: over.batch_daily_tokens.or(self.batch_daily_tokens),
        }
    }

    /// Every limit by name, with its value as text when set: for messages and
    /// confirmations that read `rpm 600`, never `Some(600)`.
    pub fn fields(&self) -> [(&'static str, Option<String>); 10] {
        let whole = |v: Option<u64>| v.map(|v| v.to_string());
        let usd = |v: Option<f64>| v.map(|v| format!("${v:.2}"));
        [
            ("rpm", whole(self.rpm)),
            ("tpm", whole(self.tpm)),
            (
                "max_concurrency",
                whole(self.max_concurrency.map(u64::from)),
            ),
            ("daily_tokens", whole(self.daily_tokens)),
            ("monthly_tokens", whole(self.monthly_tokens)),
            ("daily_usd", usd(self.daily_usd)),
            ("monthly_usd", usd(self.monthly_usd)),
            ("max_tokens_cap", whole(self.max_tokens_cap)),
            (
                "batch_concurrency",
                whole(self.batch_concurrency.map(u64::from)),
            ),
            ("batch_daily_tokens", whole(self.batch_daily_tokens)),
        ]
    }

    /// The limits set, as `rpm 600, tpm 100000`; "no limits" when none is.
    pub fn summary(&self) -> String {
        let set: Vec<String> = self
            .fields()
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("{name} {v}")))
            .collect();
        if set.is_empty() {
            "no limits".into()
        } else {
            set.join(", ")
        }
    }

    /// What `change` would do to these limits, as `rpm 600 → 10`, one per limit it sets.
    pub fn changes_to(&self, change: &Limits) -> Vec<String> {
        self.fields()
            .into_iter()
            .zip(change.fields())
            .filter_map(|((name, now), (_, to))| {
                let to = to?;
                Some(format!(
                    "{name} {} → {to}",
                    now.unwrap_or_else(|| "none".into())
                ))
            })
            .collect()
    }

    /// These run-time overrides after `change`, where a value equal to the file's
    /// (`file`) is no override at all.
    pub fn apply_change(&self, change: &Limits, file: &Limits) -> Limits {
        let mut out = *self;
        macro_rules! each {
            ($($field:ident),*) => {$(
                if change.$field.is_some() {
                    out.$field = change.$field.filter(|_| change.$field != file.$field);
                }
            )*};
        }
        each!(
            rpm,
            tpm,
            max_concurrency,
            daily_tokens,
            monthly_tokens,
            daily_usd,
            monthly_usd,
            max_tokens_cap
        );
        out
    }

    /// The names of the limits that are set.
    pub fn set_fields(&self) -> Vec<&'static str> {
        [
            ("rpm", self.rpm.is_some()),
            ("tpm", self.tpm.is_some()),
            ("max_concurrency", self.max_concurrency.is_some()),
            ("daily_tokens", self.daily_tokens.is_some()),
            ("monthly_tokens", self.monthly_tokens.is_some()),
            ("daily_usd", self.daily_usd.is_some()),
            ("monthly_usd", self.monthly_usd.is_some()),
            ("max_tokens_cap", self.max_tokens_cap.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Completion tokens reserved when neither the request nor the limits say otherwise.
pub const DEFAULT_MAX_TOKENS_CAP: u64 = 4096;

/// An organisation that calls the gateway with one or more API keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub tier: String,
    /// Hashes of the keys that authenticate as this tenant.
    pub keys: Vec<KeyHash>,
    /// Limits that replace the tier's.
    pub overrides: Limits,
    /// Data residency: the only regions this tenant's requests may go to (`None`: any).
    pub regions: Option<Vec<String>>,
    /// Whether audit records keep this tenant's prompts and answers (off by default).
    pub audit_content: bool,
}

/// A group of upstream instances tried together; regions are tried in failover order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    /// Lower goes first.
    pub order: u32,
    pub instances: Vec<Instance>,
}

/// One upstream model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Base URL including the API prefix, without a trailing slash, e.g. `http://127.0.0.1:9101/v1`.
    pub url: String,
    pub dialect: Dialect,
    /// Azure OpenAI's `api-version` (empty for other dialects).
    pub api_version: String,
    /// Environment variable that holds the upstream API key, if the upstream wants one.
    pub api_key_env: Option<String>,
    pub max_concurrency: u32,
    pub weight: u32,
    /// Speak HTTP/2 from the first byte (h2c on `http://`), many requests per connection.
    pub http2: bool,
    /// Whether the instance serves OpenAI's Responses API itself (`responses =
    /// "native"`); otherwise the gateway translates Responses requests to chat
    /// completions for it.
    pub native_responses: bool,
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    /// Azure OpenAI: the OpenAI wire format at deployment URLs
    /// (`{url}/openai/deployments/{deployment}/chat/completions?api-version=…`, the
    /// deployment being the model's upstream name), keyed by an `api-key` header.
    Azure,
    /// Anthropic's Messages API (`{url}/messages`), keyed by `x-api-key`; requests and
    /// answers translated from and to OpenAI's chat completions.
    Anthropic,
}

impl Dialect {
    /// Every dialect; `dialect = "…"` in the config names one (its `Display`).
    pub const ALL: [Dialect; 3] = [Dialect::OpenAi, Dialect::Azure, Dialect::Anthropic];
}

/// The Azure OpenAI API version used when an instance names none (the newest GA).
pub const AZURE_API_VERSION: &str = "2024-10-21";

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dialect::OpenAi => f.write_str("openai"),
            Dialect::Azure => f.write_str("azure"),
            Dialect::Anthropic => f.write_str("anthropic"),
        }
    }
}

/// What an alias is used for; a chat alias cannot be asked for embeddings. As a
/// request's kind, `Completions` is the legacy text completions endpoint, which chat
/// aliases serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embeddings,
    Completions,
    /// OpenAI's Responses API (`/v1/responses`), which chat aliases serve.
    Responses,
    /// Anthropic's Messages API (`/v1/messages`), which chat aliases serve.
    Messages,
}

impl ModelKind {
    /// The kind of model that serves a request of this kind.
    pub fn served_by(self) -> ModelKind {
        match self {
            ModelKind::Completions | ModelKind::Responses | ModelKind::Messages => ModelKind::Chat,
            kind => kind,
        }
    }

    /// Whether an answer of this kind has a completion (and so may stream).
    pub fn completes(self) -> bool {
        self != ModelKind::Embeddings
    }

    /// The path below an instance's base URL that serves this kind.
    pub fn upstream_path(self) -> &'static str {
        match self {
            ModelKind::Chat => "/chat/completions",
            ModelKind::Embeddings => "/embeddings",
            ModelKind::Completions => "/completions",
            ModelKind::Responses => "/responses",
            ModelKind::Messages => "/messages",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::Chat => f.write_str("chat"),
            ModelKind::Embeddings => f.write_str("embeddings"),
            ModelKind::Completions => f.write_str("completions"),
            ModelKind::Responses => f.write_str("responses"),
            ModelKind::Messages => f.write_str("messages"),
        }
    }
}

/// A model alias that clients ask for, and where it is deployed.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub alias: String,
    pub kind: ModelKind,
    /// One entry per region that serves this alias, in failover order.
    pub deployments: Vec<Deployment>,
    /// How prompts are counted for reservations.
    pub tokenizer: TokenizerKind,
    /// Per-token prices, for cost budgets.
    pub price: Option<Price>,
    /// The body field that limits a chat answer's length upstream, when the client set
    /// none: `max_tokens` (most servers) or `max_completion_tokens` (OpenAI's o-series).
    pub limit_field: &'static str,
}

/// A byte-pair encoding of the OpenAI model families, or the fallback for unknown models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// GPT-4o, GPT-4.1, o-series.
    O200kBase,
    /// GPT-4, GPT-3.5, text-embedding-3.
    Cl100kBase,
    /// One token per four characters, rounded up: for models whose vocabulary is unknown.
    Heuristic,
}

impl TokenizerKind {
    /// The encoding OpenAI uses for a model name; the heuristic for anything else.
    pub fn for_model(name: &str) -> TokenizerKind {
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ];
        let cl100k = ["gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"];
        if o200k.iter().any(|p| name.starts_with(p)) {
            TokenizerKind::O200kBase
        } else if cl100k.iter().any(|p| name.starts_with(p)) {
            TokenizerKind::Cl100kBase
        } else {
            TokenizerKind::Heuristic
        }
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// An alias as served by one region: the name the upstream knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub region: String,
    pub upstream_model: String,
}

/// How the gateway talks to upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect: Duration,
    /// Time allowed until the response headers arrive; for non-streaming requests, until
    /// the whole answer has arrived.
    pub response: Duration,
    /// Time a streamed request may wait for the upstream's response headers.
    pub first_byte: Duration,
    /// Time a stream may take from its headers to its first event.
    pub stream_first_event: Duration,
    /// Time a stream may go without an event once it has started.
    pub stream_idle: Duration,
}

impl UpstreamTimeouts {
    /// The same limit for every wait (for tests).
    #[cfg(test)]
    pub fn all(limit: Duration) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: limit,
            response: limit,
            first_byte: limit,
            stream_first_event: limit,
            stream_idle: limit,
        }
    }
}

/// The SHA-256 digest of a tenant API key. The key itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The digest of a key.
    pub fn of(key: &str) -> KeyHash {
        use sha2::Digest;
        KeyHash(sha2::Sha256::digest(key.as_bytes()).into())
    }

    /// Parses the `sha256:<64 hex digits>` form that config files and `keys hash` use.
    pub fn parse(text: &str) -> Result<KeyHash, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| "expected \"sha256:<64 hex digits>\"".to_string())?;
        if hex.len() != 64 {
            return Err(format!(
                "expected 64 hex digits after \"sha256:\", found {}",
                hex.len()
            ));
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "expected only hex digits after \"sha256:\"".to_string())?;
        }
        Ok(KeyHash(digest))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Debug shows only a prefix: enough to tell hashes apart in a log, too little to matter.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash(sha256:{:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Active health checking of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path below the instance's base URL that answers 200 when it is up.
    pub probe_path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that mark an instance down.
    pub unhealthy_after: u32,
    /// Consecutive good probes that mark it up again.
    pub healthy_after: u32,
}

/// How requests are spread over regions and instances, and when instances are set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingPolicy {
    /// A region at this share of healthy capacity takes all traffic (Envoy's 1.4).
    pub overprovisioning: f64,
    /// Below this share of routable instances, and with no better region, a region
    /// routes to all its instances rather than overload the few left.
    pub panic_threshold: f64,
    /// Consecutive failures (connect, timeout, 5xx) that eject an instance.
    pub consecutive_failures: u32,
    /// Ejection time for a first ejection; it grows with each repeat.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Most of a region's instances that may be ejected at once (one always may). The
    /// default, all, lets a dead region be ejected whole; the panic threshold, not this
    /// cap, keeps a sick region from being emptied when nothing better exists.
    pub max_ejected_share: f64,
    /// Retries allowed as a share of requests, over a ten-second window.
    pub retry_budget: f64,
    /// Retries always allowed per second, however few the requests.
    pub min_retries: u32,
    /// Longest a request may spend on attempts, all retries included.
    pub deadline: Duration,
    /// Header carrying a session key; the body's `user` is the fallback.
    pub session_header: String,
    pub session_ttl: Duration,
    /// How long sessions stay on a draining instance before moving.
    pub drain_grace: Duration,
    /// When a drain cuts what is still running, unless the operator says otherwise.
    pub drain_deadline: Duration,
}

/// A period's usage, as the ledger stores it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub period: PeriodKey,
    pub tokens: u64,
    pub cost: f64,
    pub requests: u64,
    /// Of `tokens`, those batch lines used (day records only).
    #[serde(default)]
    pub batch_tokens: u64,
}

/// What the client's headers say about caching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `Cache-Control: no-store`: neither read nor keep.
    pub no_store: bool,
    /// `Cache-Control: no-cache`: a fresh answer, which may be kept.
    pub no_cache: bool,
    /// `x-switchyard-cache: on | off`: the client's explicit choice.
    pub opt_in: Option<bool>,
}

/// The request header a client uses to opt in or out, and the response header that says
/// what the cache did.
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// The response headers the gateway writes, named once: a name made from a string is
/// checked byte by byte every time it is used.
pub mod headers {
    use http::header::HeaderName;

    const fn named(name: &'static str) -> HeaderName {
        HeaderName::from_static(name)
    }

    pub const AGE: HeaderName = named("age");
    pub const RETRY_AFTER: HeaderName = named("retry-after");
    pub const RETRY_AFTER_MS: HeaderName = named("retry-after-ms");
    pub const SHOULD_RETRY: HeaderName = named("x-should-retry");
    pub const LIMIT_REQUESTS: HeaderName = named("x-ratelimit-limit-requests");
    pub const REMAINING_REQUESTS: HeaderName = named("x-ratelimit-remaining-requests");
    pub const RESET_REQUESTS: HeaderName = named("x-ratelimit-reset-requests");
    pub const LIMIT_TOKENS: HeaderName = named("x-ratelimit-limit-tokens");
    pub const REMAINING_TOKENS: HeaderName = named("x-ratelimit-remaining-tokens");
    pub const RESET_TOKENS: HeaderName = named("x-ratelimit-reset-tokens");
    pub const CACHE: HeaderName = named(super::CACHE_HEADER);
    pub const QUEUE_MS: HeaderName = named("x-switchyard-queue-ms");
    pub const REGION: HeaderName = named("x-switchyard-region");
    pub const INSTANCE: HeaderName = named("x-switchyard-instance");
    pub const ROUTE: HeaderName = named("x-switchyard-route");
    pub const STREAM_ID: HeaderName = named("x-switchyard-stream-id");
    pub const REQUEST_ID: HeaderName = named("x-request-id");
}

/// What a request really used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Counted by the gateway because the upstream reported nothing.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A request body's top-level fields, each value kept as the exact JSON text the client
/// sent: fields the gateway does not read are never parsed, and pass through verbatim.
///
/// Hashed with foldhash (seeded per process), not SipHash: a request's fields are looked
/// up a dozen times on the way (SipHash was 5% of a request's instructions), and a body's
/// size limit bounds how many keys a client can send.
pub type Fields =
    indexmap::IndexMap<String, Box<serde_json::value::RawValue>, foldhash::fast::RandomState>;

/// How live and finished streams are kept for their readers.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPolicy {
    /// How long a finished stream stays readable by watchers.
    pub keep_finished: Duration,
    /// Finished streams kept at most; the oldest go first.
    pub max_finished: usize,
    /// Bytes of finished streams' events kept at most; the oldest go first.
    pub max_finished_bytes: usize,
    /// Bytes of one tenant's finished streams kept at most, so no tenant crowds out the
    /// others' watchers.
    pub max_finished_bytes_per_tenant: usize,
    /// Watchers one tenant may have following streams at once.
    pub max_watchers_per_tenant: usize,
    /// Events a reader may fall behind before it is cut off.
    pub max_lag: usize,
}

impl Default for StreamPolicy {
    fn default() -> Self {
        StreamPolicy {
            keep_finished: Duration::from_secs(60),
            max_finished: 10_000,
            max_finished_bytes: 64 << 20,
            max_finished_bytes_per_tenant: 16 << 20,
            max_watchers_per_tenant: 100,
            max_lag: 2048,
        }
    }
}

/// Files tenants upload for batches: how large one may be, and all of one tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePolicy {
    pub max_file_bytes: u64,
    pub max_tenant_bytes: u64,
    /// The longest a batch runs before it expires; the `completion_window` "24h" that
    /// OpenAI's clients send means this.
    pub batch_window: Duration,
}

/// Where limits, budgets and operator state live (`[state]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatePolicy {
    pub backend: StateBackend,
    /// This replica's id; `None`: one made once and kept in the data directory.
    pub replica: Option<String>,
    /// The share of each limit a replica may hold beyond what a request needs (0: a
    /// round trip to the shared store per admission).
    pub lease: f64,
    /// How long a replica enforces budgets alone while the shared store cannot be
    /// reached; then it refuses requests of tenants with budgets.
    pub grace: Duration,
}

impl Default for StatePolicy {
    fn default() -> Self {
        StatePolicy {
            backend: StateBackend::Local,
            replica: None,
            lease: 0.02,
            grace: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StateBackend {
    /// In this process (and its sled store): one machine.
    Local,
    /// Shared by every replica through Valkey or Redis at `url`, keys under `prefix`;
    /// with `cluster_nodes`, a Valkey Cluster reached through those seed nodes.
    Valkey {
        url: String,
        prefix: String,
        cluster_nodes: Vec<String>,
    },
}

/// The response cache: which answers may be kept, for how long, and in how much room.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub enabled: bool,
    /// How long an answer may be served from the cache after it was stored.
    pub ttl: Duration,
    /// Bytes of answers kept at most; the least recently used go first.
    pub max_bytes: usize,
    /// Larger answers are served but not kept.
    pub max_entry_bytes: usize,
    pub scope: CacheScope,
    /// Whether cache hits count against token limits and budgets, not only requests.
    pub hits_use_tokens: bool,
}

/// Who may be answered from whose cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Each tenant has its own entries (the default).
    Tenant,
    /// One cache for all tenants: identical requests share answers across tenants.
    Shared,
}

/// The audit log's switches and retention.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPolicy {
    pub enabled: bool,
    /// Records older than this are dropped.
    pub keep: Duration,
    /// The oldest records are dropped beyond this many bytes.
    pub max_bytes: usize,
    /// Records are on disk at most this long after they were made.
    pub flush_interval: Duration,
}
