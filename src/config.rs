//! The TOML configuration: a raw serde schema, then `validate` into the types the rest of
//! the gateway uses, so nothing downstream re-checks an `Option`.
//!
//! Every error names the key path (`regions[1].instances[0].url: ...`). This module never
//! opens sockets or spawns tasks; reading the file is the only I/O it does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{
    AuditPolicy, CachePolicy, CacheScope, DEFAULT_MAX_TOKENS_CAP, Deployment, Dialect, HealthCheck,
    Instance, KeyHash, Limits, Model, ModelKind, Price, Region, RoutingPolicy, StreamPolicy,
    Tenant, Tier, TokenizerKind, UpstreamTimeouts,
};

/// Environment variable that overrides `server.data_dir`.
pub const DATA_DIR_ENV: &str = "SWITCHYARD_DATA_DIR";

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub upstream: UpstreamTimeouts,
    /// Requests sent upstream at once, over all tiers: the scheduler's seats.
    pub seats: u32,
    /// Whether `seats` was set in the file; otherwise it follows the routable instances'
    /// capacity as health changes.
    pub seats_fixed: bool,
    /// How often in-memory usage counters are written to the database.
    pub checkpoint_interval: Duration,
    pub health: HealthCheck,
    pub routing: RoutingPolicy,
    pub streams: StreamPolicy,
    pub cache: CachePolicy,
    pub audit: AuditPolicy,
    pub tiers: Vec<Tier>,
    pub tenants: Vec<Tenant>,
    /// Sorted by failover order (then by position in the file).
    pub regions: Vec<Region>,
    pub models: Vec<Model>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Time in-flight requests and streams get to finish when the daemon stops.
    pub shutdown_grace: Duration,
}

/// The admin listener: run-time control, for operators and `switchyard ctl`.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Environment variable holding the admin token.
    pub token_env: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}{}{message}",
        line.map(|l| format!("line {l}: ")).unwrap_or_default(),
        if key.is_empty() { String::new() } else { format!("{key}: ") }
    )]
    Syntax {
        /// The key path, empty when the error is in the TOML syntax itself.
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates a file, then applies `SWITCHYARD_DATA_DIR`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml(&text)?;
        if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
            config.server.data_dir = PathBuf::from(dir);
        }
        Ok(config)
    }

    /// Parses and validates TOML text; reads no environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| syntax(text, "", &e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            syntax(text, &key, e.inner())
        })?;
        raw.validate()
    }

    pub fn model(&self, alias: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.alias == alias)
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

fn syntax(text: &str, key: &str, error: &toml::de::Error) -> ConfigError {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Syntax {
        key: if key == "." {
            String::new()
        } else {
            key.to_string()
        },
        line,
        message: error.message().trim().to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The raw schema, as users write it.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    streams: RawStreams,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    regions: Vec<RawRegion>,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    /// Address of the public OpenAI-compatible API.
    listen: String,
    /// Where logs (and later the database) live.
    data_dir: String,
    /// Largest request body accepted, e.g. "4MiB".
    max_body: String,
    /// Address of the admin API.
    admin_listen: String,
    /// Environment variable that holds the admin token.
    admin_token_env: String,
    /// Time in-flight requests and streams get to finish when the daemon stops.
    shutdown_grace: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./data".into(),
            max_body: "4MiB".into(),
            admin_listen: "127.0.0.1:8081".into(),
            admin_token_env: "SWITCHYARD_ADMIN_TOKEN".into(),
            shutdown_grace: "30s".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScheduler {
    /// Requests upstream at once over all tiers; default: the sum of the instances'
    /// `max_concurrency`.
    seats: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLedger {
    /// How often usage counters are written to the database.
    checkpoint_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStreams {
    /// How long a finished stream stays readable at GET /v1/streams/{id}.
    keep_finished: String,
    /// Finished streams kept readable at most; the oldest go first.
    max_finished: usize,
    /// Bytes of finished streams kept readable at most; the oldest go first.
    max_finished_size: String,
    /// Events a reader may fall behind before it is cut off alone.
    max_lag_events: usize,
}

impl RawStreams {
    fn validate(self) -> Result<StreamPolicy, ConfigError> {
        let keep_finished =
            parse_duration(&self.keep_finished).map_err(|m| invalid("streams.keep_finished", m))?;
        let max_finished_bytes = parse_size(&self.max_finished_size)
            .map_err(|m| invalid("streams.max_finished_size", m))?;
        if self.max_lag_events == 0 {
            return Err(invalid("streams.max_lag_events", "must be at least 1"));
        }
        Ok(StreamPolicy {
            keep_finished,
            max_finished: self.max_finished,
            max_finished_bytes,
            max_lag: self.max_lag_events,
        })
    }
}

impl Default for RawStreams {
    fn default() -> Self {
        RawStreams {
            keep_finished: "60s".into(),
            max_finished: 10_000,
            max_finished_size: "64MiB".into(),
            max_lag_events: 2048,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    enabled: bool,
    keep: String,
    max_size: String,
    flush_interval: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            keep: "30d".into(),
            max_size: "1GiB".into(),
            flush_interval: "1s".into(),
        }
    }
}

impl RawAudit {
    fn validate(self) -> Result<AuditPolicy, ConfigError> {
        let keep = parse_duration(&self.keep).map_err(|m| invalid("audit.keep", m))?;
        let max_bytes = parse_size(&self.max_size).map_err(|m| invalid("audit.max_size", m))?;
        let flush_interval =
            parse_duration(&self.flush_interval).map_err(|m| invalid("audit.flush_interval", m))?;
        if flush_interval.is_zero() {
            return Err(invalid("audit.flush_interval", "must be longer than 0s"));
        }
        Ok(AuditPolicy {
            enabled: self.enabled,
            keep,
            max_bytes,
            flush_interval,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    enabled: bool,
    ttl: String,
    max_size: String,
    max_entry_size: String,
    scope: CacheScope,
    hits_use_tokens: bool,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: true,
            ttl: "10m".into(),
            max_size: "64MiB".into(),
            max_entry_size: "1MiB".into(),
            scope: CacheScope::Tenant,
            hits_use_tokens: false,
        }
    }
}

impl RawCache {
    fn validate(self) -> Result<CachePolicy, ConfigError> {
        let ttl = parse_duration(&self.ttl).map_err(|m| invalid("cache.ttl", m))?;
        if ttl.is_zero() {
            return Err(invalid(
                "cache.ttl",
                "must be longer than 0s (set cache.enabled = false to turn the cache off)",
            ));
        }
        let max_bytes = parse_size(&self.max_size).map_err(|m| invalid("cache.max_size", m))?;
        let max_entry_bytes =
            parse_size(&self.max_entry_size).map_err(|m| invalid("cache.max_entry_size", m))?;
        if max_entry_bytes > max_bytes {
            return Err(invalid(
                "cache.max_entry_size",
                format!(
                    "\"{}\" is larger than cache.max_size \"{}\"; no answer that size could be kept",
                    self.max_entry_size, self.max_size
                ),
            ));
        }
        Ok(CachePolicy {
            enabled: self.enabled,
            ttl,
            max_bytes,
            max_entry_bytes,
            scope: self.scope,
            hits_use_tokens: self.hits_use_tokens,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    probe_path: String,
    interval: String,
    timeout: String,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            probe_path: "/models".into(),
            interval: "2s".into(),
            timeout: "1s".into(),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    overprovisioning: f64,
    panic_threshold: f64,
    consecutive_failures: u32,
    base_ejection: String,
    max_ejection: String,
    max_ejected_share: f64,
    retry_budget: f64,
    min_retries: u32,
    deadline: String,
    session_header: String,
    session_ttl: String,
    drain_grace: String,
    drain_deadline: String,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            overprovisioning: 1.4,
            panic_threshold: 0.5,
            consecutive_failures: 5,
            base_ejection: "30s".into(),
            max_ejection: "300s".into(),
            max_ejected_share: 1.0,
            retry_budget: 0.2,
            min_retries: 3,
            deadline: "600s".into(),
            session_header: "x-session-id".into(),
            session_ttl: "30m".into(),
            drain_grace: "30s".into(),
            drain_deadline: "5m".into(),
        }
    }
}

impl RawHealth {
    fn validate(self) -> Result<HealthCheck, ConfigError> {
        if !self.probe_path.starts_with('/') {
            return Err(invalid(
                "health.probe_path",
                format!(
                    "\"{}\" must start with '/' (it is appended to each instance's url)",
                    self.probe_path
                ),
            ));
        }
        for (key, n) in [
            ("health.unhealthy_after", self.unhealthy_after),
            ("health.healthy_after", self.healthy_after),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(HealthCheck {
            probe_path: self.probe_path,
            interval: positive_duration("health.interval", &self.interval)?,
            timeout: positive_duration("health.timeout", &self.timeout)?,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
        })
    }
}

impl RawRouting {
    fn validate(self) -> Result<RoutingPolicy, ConfigError> {
        let share = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(
                    key,
                    format!("{v} is not a share between 0.0 and 1.0"),
                ))
            }
        };
        if !(self.overprovisioning >= 1.0 && self.overprovisioning.is_finite()) {
            return Err(invalid(
                "routing.overprovisioning",
                "must be 1.0 or more (Envoy's default is 1.4)",
            ));
        }
        if self.consecutive_failures == 0 {
            return Err(invalid(
                "routing.consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.session_header.trim().is_empty()
            || axum::http::HeaderName::from_bytes(self.session_header.as_bytes()).is_err()
        {
            return Err(invalid(
                "routing.session_header",
                format!("\"{}\" is not a header name", self.session_header),
            ));
        }
        Ok(RoutingPolicy {
            overprovisioning: self.overprovisioning,
            panic_threshold: share("routing.panic_threshold", self.panic_threshold)?,
            consecutive_failures: self.consecutive_failures,
            base_ejection: positive_duration("routing.base_ejection", &self.base_ejection)?,
            max_ejection: positive_duration("routing.max_ejection", &self.max_ejection)?,
            max_ejected_share: share("routing.max_ejected_share", self.max_ejected_share)?,
            retry_budget: share("routing.retry_budget", self.retry_budget)?,
            min_retries: self.min_retries,
            deadline: positive_duration("routing.deadline", &self.deadline)?,
            session_header: self.session_header.to_ascii_lowercase(),
            session_ttl: positive_duration("routing.session_ttl", &self.session_ttl)?,
            drain_grace: parse_duration(&self.drain_grace)
                .map_err(|m| invalid("routing.drain_grace", m))?,
            drain_deadline: positive_duration("routing.drain_deadline", &self.drain_deadline)?,
        })
    }
}

fn positive_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(text).map_err(|m| invalid(key, m))?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(d)
}

impl Default for RawLedger {
    fn default() -> Self {
        RawLedger {
            checkpoint_interval: "1s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    /// Time allowed to connect to an upstream.
    connect_timeout: String,
    /// Time allowed until the upstream's response headers (non-streaming: the whole answer).
    timeout: String,
    /// Time a stream may take from its headers to its first event.
    stream_first_event_timeout: String,
    /// Time a stream may go without an event once it has started.
    stream_idle_timeout: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: "2s".into(),
            timeout: "300s".into(),
            stream_first_event_timeout: "120s".into(),
            stream_idle_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    #[serde(default = "default_share")]
    share: u32,
    #[serde(default = "default_max_queue")]
    max_queue: usize,
    #[serde(default = "default_max_wait")]
    max_wait: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    daily_tokens: Option<u64>,
    monthly_tokens: Option<u64>,
    daily_usd: Option<f64>,
    monthly_usd: Option<f64>,
    max_tokens_cap: Option<u64>,
}

fn default_share() -> u32 {
    10
}
fn default_max_queue() -> usize {
    1000
}
fn default_max_wait() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    tier: String,
    #[serde(default)]
    keys: Vec<String>,
    /// Data residency: the only regions this tenant may be routed to.
    regions: Option<Vec<String>>,
    #[serde(default)]
    audit_content: bool,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    daily_tokens: Option<u64>,
    monthly_tokens: Option<u64>,
    daily_usd: Option<f64>,
    monthly_usd: Option<f64>,
    max_tokens_cap: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    #[serde(default)]
    order: u32,
    #[serde(default)]
    instances: Vec<RawInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    name: String,
    url: String,
    #[serde(default = "default_dialect")]
    dialect: String,
    api_key_env: Option<String>,
    #[serde(default = "default_max_concurrency")]
    max_concurrency: u32,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    http2: bool,
}

fn default_dialect() -> String {
    "openai".into()
}
fn default_max_concurrency() -> u32 {
    64
}
fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    alias: String,
    #[serde(default = "default_kind")]
    kind: String,
    /// Name the upstream knows the model by; defaults to the alias.
    upstream: Option<String>,
    /// Regions that serve the alias; defaults to all.
    regions: Option<Vec<String>>,
    /// Per-region upstream names, for regions that call the model differently.
    #[serde(default)]
    upstream_by_region: BTreeMap<String, String>,
    /// "o200k_base", "cl100k_base" or "heuristic"; default: chosen from the upstream name.
    tokenizer: Option<String>,
    price: Option<Price>,
}

fn default_kind() -> String {
    "chat".into()
}

// ---------------------------------------------------------------------------------------
// Validation.

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let admin_listen = self.server.admin_listen.parse().map_err(|_| {
            invalid(
                "server.admin_listen",
                format!(
                    "\"{}\" is not an address like \"127.0.0.1:8081\"",
                    self.server.admin_listen
                ),
            )
        })?;
        let admin_token_env = self.server.admin_token_env.clone();
        check_env_name("server.admin_token_env", &admin_token_env)?;
        let server = self.server.validate()?;
        let upstream = self.upstream.validate()?;

        let checkpoint_interval = parse_duration(&self.ledger.checkpoint_interval)
            .map_err(|m| invalid("ledger.checkpoint_interval", m))?;
        if checkpoint_interval.is_zero() {
            return Err(invalid(
                "ledger.checkpoint_interval",
                "must be longer than zero",
            ));
        }

        if self.tiers.is_empty() {
            return Err(invalid(
                "tiers",
                "define at least one tier, e.g. [tiers.free]",
            ));
        }
        let mut tiers = Vec::with_capacity(self.tiers.len());
        for (name, raw) in self.tiers {
            let at = format!("tiers.{name}");
            check_name(&at, &name)?;
            tiers.push(raw.validate(&at, name)?);
        }

        let mut tenants = Vec::with_capacity(self.tenants.len());
        let mut tenant_names = HashSet::new();
        let mut key_owner: HashMap<KeyHash, String> = HashMap::new();
        for (i, raw) in self.tenants.into_iter().enumerate() {
            let at = format!("tenants[{i}]");
            check_name(&format!("{at}.name"), &raw.name)?;
            if !tenant_names.insert(raw.name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("tenant \"{}\" is defined twice", raw.name),
                ));
            }
            if !tiers.iter().any(|t| t.name == raw.tier) {
                return Err(invalid(
                    format!("{at}.tier"),
                    format!(
                        "unknown tier \"{}\"; defined tiers: {}",
                        raw.tier,
                        names(tiers.iter().map(|t| t.name.as_str()))
                    ),
                ));
            }
            let mut keys = Vec::with_capacity(raw.keys.len());
            for (k, text) in raw.keys.iter().enumerate() {
                let key_at = format!("{at}.keys[{k}]");
                let hash = KeyHash::parse(text).map_err(|m| {
                    invalid(
                        &key_at,
                        format!("{m}; store key hashes, not keys (`switchyard keys hash`)"),
                    )
                })?;
                if let Some(owner) = key_owner.insert(hash, raw.name.clone()) {
                    return Err(invalid(
                        key_at,
                        format!("this key hash is already used by tenant \"{owner}\""),
                    ));
                }
                keys.push(hash);
            }
            let overrides = Limits {
                rpm: raw.rpm,
                tpm: raw.tpm,
                max_concurrency: raw.max_concurrency,
                daily_tokens: raw.daily_tokens,
                monthly_tokens: raw.monthly_tokens,
                daily_usd: raw.daily_usd,
                monthly_usd: raw.monthly_usd,
                max_tokens_cap: raw.max_tokens_cap,
            };
            check_limits(&at, &overrides)?;
            tenants.push(Tenant {
                name: raw.name,
                tier: raw.tier,
                keys,
                overrides,
                regions: raw.regions,
                audit_content: raw.audit_content,
            });
        }

        if self.regions.is_empty() {
            return Err(invalid("regions", "define at least one region"));
        }
        let mut regions = Vec::with_capacity(self.regions.len());
        let mut region_names = HashSet::new();
        let mut instance_names = HashSet::new();
        for (i, raw) in self.regions.into_iter().enumerate() {
            let at = format!("regions[{i}]");
            check_name(&format!("{at}.name"), &raw.name)?;
            if !region_names.insert(raw.name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("region \"{}\" is defined twice", raw.name),
                ));
            }
            if raw.instances.is_empty() {
                return Err(invalid(
                    format!("{at}.instances"),
                    format!("region \"{}\" has no instances", raw.name),
                ));
            }
            let mut instances = Vec::with_capacity(raw.instances.len());
            for (j, inst) in raw.instances.into_iter().enumerate() {
                let inst_at = format!("{at}.instances[{j}]");
                check_name(&format!("{inst_at}.name"), &inst.name)?;
                if !instance_names.insert(inst.name.clone()) {
                    return Err(invalid(
                        format!("{inst_at}.name"),
                        format!("instance \"{}\" is defined twice", inst.name),
                    ));
                }
                instances.push(inst.validate(&inst_at)?);
            }
            regions.push(Region {
                name: raw.name,
                order: raw.order,
                instances,
            });
        }
        // A stable sort keeps file order among regions of equal `order`.
        regions.sort_by_key(|r| r.order);

        if self.models.is_empty() {
            return Err(invalid("models", "define at least one model alias"));
        }
        let mut models: Vec<Model> = Vec::with_capacity(self.models.len());
        for (i, raw) in self.models.into_iter().enumerate() {
            let at = format!("models[{i}]");
            if raw.alias.trim().is_empty() {
                return Err(invalid(format!("{at}.alias"), "must not be empty"));
            }
            if models.iter().any(|m| m.alias == raw.alias) {
                return Err(invalid(
                    format!("{at}.alias"),
                    format!("model alias \"{}\" is defined twice", raw.alias),
                ));
            }
            let kind = match raw.kind.as_str() {
                "chat" => ModelKind::Chat,
                "embeddings" => ModelKind::Embeddings,
                other => {
                    return Err(invalid(
                        format!("{at}.kind"),
                        format!("unknown kind \"{other}\"; expected \"chat\" or \"embeddings\""),
                    ));
                }
            };
            let served: Vec<&Region> = match &raw.regions {
                None => regions.iter().collect(),
                Some(list) => {
                    for (k, name) in list.iter().enumerate() {
                        if !region_names.contains(name) {
                            return Err(unknown_region(
                                &format!("{at}.regions[{k}]"),
                                name,
                                &regions,
                            ));
                        }
                    }
                    regions.iter().filter(|r| list.contains(&r.name)).collect()
                }
            };
            if served.is_empty() {
                return Err(invalid(
                    format!("{at}.regions"),
                    "must name at least one region",
                ));
            }
            for name in raw.upstream_by_region.keys() {
                if !served.iter().any(|r| &r.name == name) {
                    return Err(invalid(
                        format!("{at}.upstream_by_region.{name}"),
                        format!("region \"{name}\" does not serve \"{}\"", raw.alias),
                    ));
                }
            }
            let default_upstream = raw.upstream.clone().unwrap_or_else(|| raw.alias.clone());
            let deployments = served
                .iter()
                .map(|r| Deployment {
                    region: r.name.clone(),
                    upstream_model: raw
                        .upstream_by_region
                        .get(&r.name)
                        .cloned()
                        .unwrap_or_else(|| default_upstream.clone()),
                })
                .collect();
            let tokenizer = match raw.tokenizer.as_deref() {
                None => TokenizerKind::for_model(&default_upstream),
                Some("o200k_base") => TokenizerKind::O200kBase,
                Some("cl100k_base") => TokenizerKind::Cl100kBase,
                Some("heuristic") => TokenizerKind::Heuristic,
                Some(other) => {
                    return Err(invalid(
                        format!("{at}.tokenizer"),
                        format!(
                            "unknown tokenizer \"{other}\"; use \"o200k_base\", \"cl100k_base\" or \"heuristic\""
                        ),
                    ));
                }
            };
            if let Some(price) = &raw.price {
                for (key, value) in [
                    ("input_per_mtok", price.input_per_mtok),
                    ("output_per_mtok", price.output_per_mtok),
                ] {
                    if !(value.is_finite() && value >= 0.0) {
                        return Err(invalid(
                            format!("{at}.price.{key}"),
                            "must be a price of zero or more",
                        ));
                    }
                }
            }
            models.push(Model {
                alias: raw.alias,
                kind,
                deployments,
                tokenizer,
                price: raw.price,
            });
        }

        for (i, tenant) in tenants.iter().enumerate() {
            for (k, name) in tenant.regions.iter().flatten().enumerate() {
                if !region_names.contains(name) {
                    return Err(unknown_region(
                        &format!("tenants[{i}].regions[{k}]"),
                        name,
                        &regions,
                    ));
                }
            }
            if tenant.regions.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    format!("tenants[{i}].regions"),
                    "must name at least one region (leave it out to allow all)",
                ));
            }
        }
        let streams = self.streams.validate()?;
        let cache = self.cache.validate()?;
        let audit = self.audit.validate()?;
        let health = self.health.validate()?;
        let routing = self.routing.validate()?;
        let seats = match self.scheduler.seats {
            Some(0) => return Err(invalid("scheduler.seats", "must be at least 1")),
            Some(seats) => seats,
            None => regions
                .iter()
                .flat_map(|r| &r.instances)
                .map(|i| i.max_concurrency)
                .fold(0u32, u32::saturating_add),
        };
        let admin = Admin {
            listen: admin_listen,
            token_env: admin_token_env,
        };

        Ok(Config {
            server,
            admin,
            upstream,
            seats,
            seats_fixed: self.scheduler.seats.is_some(),
            checkpoint_interval,
            health,
            routing,
            streams,
            cache,
            audit,
            tiers,
            tenants,
            regions,
            models,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<Server, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "\"{}\" is not an address like \"127.0.0.1:8080\"",
                    self.listen
                ),
            )
        })?;
        if self.data_dir.trim().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        let max_body = parse_size(&self.max_body).map_err(|m| invalid("server.max_body", m))?;
        if max_body == 0 {
            return Err(invalid("server.max_body", "must be larger than zero"));
        }
        let shutdown_grace = parse_duration(&self.shutdown_grace)
            .map_err(|m| invalid("server.shutdown_grace", m))?;
        Ok(Server {
            listen,
            data_dir: PathBuf::from(self.data_dir),
            max_body,
            shutdown_grace,
        })
    }
}

impl RawUpstream {
    fn validate(self) -> Result<UpstreamTimeouts, ConfigError> {
        let positive = |key: &str, text: &str| -> Result<Duration, ConfigError> {
            let d = parse_duration(text).map_err(|m| invalid(key, m))?;
            if d.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
            Ok(d)
        };
        Ok(UpstreamTimeouts {
            connect: positive("upstream.connect_timeout", &self.connect_timeout)?,
            response: positive("upstream.timeout", &self.timeout)?,
            stream_first_event: positive(
                "upstream.stream_first_event_timeout",
                &self.stream_first_event_timeout,
            )?,
            stream_idle: positive("upstream.stream_idle_timeout", &self.stream_idle_timeout)?,
        })
    }
}

impl RawInstance {
    fn validate(self, at: &str) -> Result<Instance, ConfigError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| invalid(format!("{at}.url"), format!("{e}: \"{}\"", self.url)))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid(
                format!("{at}.url"),
                format!("scheme must be http or https, found \"{}\"", url.scheme()),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                format!("{at}.url"),
                "must not carry a query or fragment",
            ));
        }
        let dialect = match self.dialect.as_str() {
            "openai" => Dialect::OpenAi,
            other => {
                return Err(invalid(
                    format!("{at}.dialect"),
                    format!("unknown dialect \"{other}\"; supported: \"openai\""),
                ));
            }
        };
        if let Some(var) = &self.api_key_env {
            check_env_name(&format!("{at}.api_key_env"), var)?;
        }
        if self.max_concurrency == 0 {
            return Err(invalid(
                format!("{at}.max_concurrency"),
                "must be at least 1",
            ));
        }
        if self.weight == 0 {
            return Err(invalid(format!("{at}.weight"), "must be at least 1"));
        }
        Ok(Instance {
            name: self.name,
            url: self.url.trim_end_matches('/').to_string(),
            dialect,
            api_key_env: self.api_key_env,
            max_concurrency: self.max_concurrency,
            weight: self.weight,
            http2: self.http2,
        })
    }
}

fn check_env_name(key: &str, var: &str) -> Result<(), ConfigError> {
    let valid = !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "\"{var}\" is not an environment variable name; give the variable's name, never the secret itself"
            ),
        ))
    }
}

impl RawTier {
    fn validate(self, at: &str, name: String) -> Result<Tier, ConfigError> {
        if self.share == 0 {
            return Err(invalid(format!("{at}.share"), "must be at least 1"));
        }
        if self.max_queue == 0 {
            return Err(invalid(format!("{at}.max_queue"), "must be at least 1"));
        }
        let max_wait =
            parse_duration(&self.max_wait).map_err(|m| invalid(format!("{at}.max_wait"), m))?;
        let limits = Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            daily_tokens: self.daily_tokens,
            monthly_tokens: self.monthly_tokens,
            daily_usd: self.daily_usd,
            monthly_usd: self.monthly_usd,
            max_tokens_cap: Some(self.max_tokens_cap.unwrap_or(DEFAULT_MAX_TOKENS_CAP)),
        };
        check_limits(at, &limits)?;
        Ok(Tier {
            name,
            share: self.share,
            max_queue: self.max_queue,
            max_wait,
            limits,
        })
    }
}

/// Zero limits would refuse everything; pausing a tenant is the way to do that.
pub fn check_limits(at: &str, limits: &Limits) -> Result<(), ConfigError> {
    let counts = [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_concurrency", limits.max_concurrency.map(u64::from)),
        ("daily_tokens", limits.daily_tokens),
        ("monthly_tokens", limits.monthly_tokens),
        ("max_tokens_cap", limits.max_tokens_cap),
    ];
    for (key, value) in counts {
        if value == Some(0) {
            return Err(invalid(
                format!("{at}.{key}"),
                "must be at least 1 (leave it out for no limit; pause a tenant to stop it)",
            ));
        }
    }
    for (key, value) in [
        ("daily_usd", limits.daily_usd),
        ("monthly_usd", limits.monthly_usd),
    ] {
        if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(invalid(
                format!("{at}.{key}"),
                "must be more than zero (leave it out for no limit)",
            ));
        }
    }
    Ok(())
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("\"{name}\" is not a valid name; use 1 to 64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

fn unknown_region(key: &str, name: &str, regions: &[Region]) -> ConfigError {
    invalid(
        key,
        format!(
            "unknown region \"{name}\"; defined regions: {}",
            names(regions.iter().map(|r| r.name.as_str()))
        ),
    )
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Parses durations written as `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"` or `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{text}\" has no unit; write e.g. \"250ms\", \"2s\" or \"5m\""))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration like \"250ms\", \"2s\" or \"5m\""))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{unit}\"; use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("\"{text}\" is out of range"))
}

/// Writes a duration the way `parse_duration` reads it, in the largest unit that keeps it
/// exact: `"30d"`, `"2h"`, `"90s"`, `"250ms"`, `"1.5ms"`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ] {
        if nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{}ms", nanos as f64 / 1e6)
}

/// Parses sizes written as `"4MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`, `"100B"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size like \"4MiB\""))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\"; use B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        for text in ["30d", "2h", "90m", "45s", "250ms", "1.5ms"] {
            let parsed = parse_duration(text).unwrap_or_default();
            assert_eq!(format_duration(parsed), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("4 parsecs").is_err());
    }
}
