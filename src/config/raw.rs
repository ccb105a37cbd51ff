//! The schema as users write it: every table `deny_unknown_fields`, every default here.
//! Nothing is checked here beyond TOML types; `validate` does the rest.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::{CacheScope, Limits, Price};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) scheduler: RawScheduler,
    #[serde(default)]
    pub(super) ledger: RawLedger,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) streams: RawStreams,
    #[serde(default)]
    pub(super) routing: RawRouting,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) files: RawFiles,
    #[serde(default)]
    pub(super) flows: RawFlows,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    pub(super) tenants: Vec<RawTenant>,
    #[serde(default)]
    pub(super) regions: Vec<RawRegion>,
    #[serde(default)]
    pub(super) models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    /// Address of the public OpenAI-compatible API.
    pub(super) listen: String,
    /// Where logs (and later the database) live.
    pub(super) data_dir: String,
    /// Largest request body accepted, e.g. "4MiB".
    pub(super) max_body: String,
    /// Address of the admin API.
    pub(super) admin_listen: String,
    /// Environment variable that holds the admin token.
    pub(super) admin_token_env: String,
    /// Time in-flight requests and streams get to finish when the daemon stops.
    pub(super) shutdown_grace: String,
    /// Time a client has to send a request's headers (and to start the next one on a
    /// kept-alive connection).
    pub(super) header_read_timeout: String,
    /// Time a client has to send a request's body.
    pub(super) body_timeout: String,
    /// Open client connections at most (also bounded by the open-file limit).
    pub(super) max_connections: usize,
    /// Open client connections from one address at most.
    pub(super) max_connections_per_address: usize,
    /// Threads that serve client connections, each with its own runtime and upstream
    /// pool; 0 is one per core.
    pub(super) workers: usize,
    /// PEM certificate chain for the public API; with `tls_key`, it speaks HTTPS.
    pub(super) tls_cert: Option<String>,
    /// PEM private key for the public API.
    pub(super) tls_key: Option<String>,
    /// PEM certificate chain for the admin API; with `admin_tls_key`, it speaks HTTPS.
    pub(super) admin_tls_cert: Option<String>,
    /// PEM private key for the admin API.
    pub(super) admin_tls_key: Option<String>,
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
            header_read_timeout: "30s".into(),
            body_timeout: "60s".into(),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            workers: 0,
            tls_cert: None,
            tls_key: None,
            admin_tls_cert: None,
            admin_tls_key: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawScheduler {
    /// Requests upstream at once over all tiers; default: the sum of the instances'
    /// `max_concurrency`.
    pub(super) seats: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLedger {
    /// How often usage counters are written to the database.
    pub(super) checkpoint_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStreams {
    /// How long a finished stream stays readable at GET /v1/streams/{id}.
    pub(super) keep_finished: String,
    /// Finished streams kept readable at most; the oldest go first.
    pub(super) max_finished: usize,
    /// Bytes of finished streams kept readable at most; the oldest go first.
    pub(super) max_finished_size: String,
    /// Bytes of one tenant's finished streams kept at most.
    pub(super) max_finished_size_per_tenant: String,
    /// Watchers one tenant may have at once.
    pub(super) max_watchers_per_tenant: usize,
    /// Events a reader may fall behind before it is cut off alone.
    pub(super) max_lag_events: usize,
}

impl Default for RawStreams {
    fn default() -> Self {
        RawStreams {
            keep_finished: "60s".into(),
            max_finished: 10_000,
            max_finished_size: "64MiB".into(),
            max_finished_size_per_tenant: "16MiB".into(),
            max_watchers_per_tenant: 100,
            max_lag_events: 2048,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) enabled: bool,
    pub(super) keep: String,
    pub(super) max_size: String,
    pub(super) flush_interval: String,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    pub(super) enabled: bool,
    pub(super) ttl: String,
    pub(super) max_size: String,
    pub(super) max_entry_size: String,
    pub(super) scope: CacheScope,
    pub(super) hits_use_tokens: bool,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFiles {
    pub(super) max_file_size: String,
    pub(super) max_tenant_size: String,
    pub(super) batch_window: String,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            max_file_size: "200MiB".into(),
            max_tenant_size: "1GiB".into(),
            batch_window: "24h".into(),
        }
    }
}

/// `[flows]`: the flow files tenants may run and the directory their `embed` steps may
/// load documents from, both relative to the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFlows {
    pub(super) files: Vec<String>,
    pub(super) documents: Option<String>,
    pub(super) urls: Vec<String>,
    pub(super) tools: Vec<crate::flows::tools::RawTool>,
    pub(super) mcp: Vec<crate::flows::tools::RawMcp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    pub(super) probe_path: String,
    pub(super) interval: String,
    pub(super) timeout: String,
    pub(super) unhealthy_after: u32,
    pub(super) healthy_after: u32,
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
pub(super) struct RawRouting {
    pub(super) overprovisioning: f64,
    pub(super) panic_threshold: f64,
    pub(super) consecutive_failures: u32,
    pub(super) base_ejection: String,
    pub(super) max_ejection: String,
    pub(super) max_ejected_share: f64,
    pub(super) retry_budget: f64,
    pub(super) min_retries: u32,
    pub(super) deadline: String,
    pub(super) session_header: String,
    pub(super) session_ttl: String,
    pub(super) drain_grace: String,
    pub(super) drain_deadline: String,
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

impl Default for RawLedger {
    fn default() -> Self {
        RawLedger {
            checkpoint_interval: "1s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    /// Time allowed to connect to an upstream.
    pub(super) connect_timeout: String,
    /// Time allowed until the upstream's response headers (non-streaming: the whole answer).
    pub(super) timeout: String,
    /// Time a streamed request may wait for the upstream's response headers.
    pub(super) first_byte_timeout: String,
    /// Time a stream may take from its headers to its first event.
    pub(super) stream_first_event_timeout: String,
    /// Time a stream may go without an event once it has started.
    pub(super) stream_idle_timeout: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: "2s".into(),
            timeout: "300s".into(),
            first_byte_timeout: "30s".into(),
            stream_first_event_timeout: "120s".into(),
            stream_idle_timeout: "60s".into(),
        }
    }
}

/// Declares a table that carries the eight limit fields beside its own, listed here
/// once, and `limits()` to read them. The fields are written out (not `flatten`ed), so
/// `deny_unknown_fields` still names a mistyped key.
macro_rules! with_limits {
    ($(#[$meta:meta])* struct $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        pub(super) struct $name {
            $($(#[$field_meta])* pub(super) $field: $ty,)*
            /// Requests per minute.
            pub(super) rpm: Option<u64>,
            /// Tokens per minute.
            pub(super) tpm: Option<u64>,
            pub(super) max_concurrency: Option<u32>,
            pub(super) daily_tokens: Option<u64>,
            pub(super) monthly_tokens: Option<u64>,
            pub(super) daily_usd: Option<f64>,
            pub(super) monthly_usd: Option<f64>,
            /// Completion tokens reserved when a request sets no `max_tokens`.
            pub(super) max_tokens_cap: Option<u64>,
            /// Batch lines running at once, and batch tokens per day.
            pub(super) batch_concurrency: Option<u32>,
            pub(super) batch_daily_tokens: Option<u64>,
        }

        impl $name {
            pub(super) fn limits(&self) -> Limits {
                Limits {
                    rpm: self.rpm,
                    tpm: self.tpm,
                    max_concurrency: self.max_concurrency,
                    daily_tokens: self.daily_tokens,
                    monthly_tokens: self.monthly_tokens,
                    daily_usd: self.daily_usd,
                    monthly_usd: self.monthly_usd,
                    max_tokens_cap: self.max_tokens_cap,
                    batch_concurrency: self.batch_concurrency,
                    batch_daily_tokens: self.batch_daily_tokens,
                }
            }
        }
    };
}

with_limits! {
    /// A priority level (`[tiers.NAME]`).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawTier {
        #[serde(default = "default_share")]
        share: u32,
        #[serde(default = "default_max_queue")]
        max_queue: usize,
        /// Requests of one tenant waiting at once; default half of `max_queue`.
        max_queue_per_tenant: Option<usize>,
        #[serde(default = "default_max_wait")]
        max_wait: String,
    }
}

pub(super) fn default_share() -> u32 {
    10
}

pub(super) fn default_max_queue() -> usize {
    1000
}

pub(super) fn default_max_wait() -> String {
    "30s".into()
}

with_limits! {
    /// A tenant (`[[tenants]]`); its limits override its tier's.
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
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    pub(super) name: String,
    #[serde(default)]
    pub(super) order: u32,
    #[serde(default)]
    pub(super) instances: Vec<RawInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    pub(super) name: String,
    pub(super) url: String,
    #[serde(default = "default_dialect")]
    pub(super) dialect: String,
    /// Azure OpenAI's `api-version` query parameter.
    pub(super) api_version: Option<String>,
    pub(super) api_key_env: Option<String>,
    #[serde(default = "default_max_concurrency")]
    pub(super) max_concurrency: u32,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) http2: bool,
    /// `"native"` or `"translate"`: how the instance is sent Responses API requests.
    pub(super) responses: Option<String>,
}

pub(super) fn default_dialect() -> String {
    "openai".into()
}

pub(super) fn default_max_concurrency() -> u32 {
    64
}

pub(super) fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) alias: String,
    #[serde(default = "default_kind")]
    pub(super) kind: String,
    /// Name the upstream knows the model by; defaults to the alias.
    pub(super) upstream: Option<String>,
    /// Regions that serve the alias; defaults to all.
    pub(super) regions: Option<Vec<String>>,
    /// Per-region upstream names, for regions that call the model differently.
    #[serde(default)]
    pub(super) upstream_by_region: BTreeMap<String, String>,
    /// "o200k_base", "cl100k_base" or "heuristic"; default: chosen from the upstream name.
    pub(super) tokenizer: Option<String>,
    pub(super) price: Option<Price>,
    /// "max_tokens" (default) or "max_completion_tokens": the field that limits an
    /// answer's length upstream when the client sets none.
    pub(super) limit_field: Option<String>,
}

pub(super) fn default_kind() -> String {
    "chat".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawState {
    /// "local" or "valkey".
    pub(super) backend: String,
    pub(super) url: Option<String>,
    pub(super) prefix: String,
    pub(super) replica: Option<String>,
    pub(super) lease: f64,
    pub(super) grace: String,
    pub(super) cluster_nodes: Vec<String>,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: "local".into(),
            url: None,
            prefix: "switchyard".into(),
            replica: None,
            lease: 0.02,
            grace: "5m".into(),
            cluster_nodes: Vec::new(),
        }
    }
}
