//! From the raw schema to `Config`: every value checked, every error naming its key.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::domain::{AZURE_API_VERSION, FilePolicy};
use crate::domain::{
    DEFAULT_MAX_TOKENS_CAP, Deployment, Dialect, Instance, KeyHash, ModelKind, TokenizerKind,
};

impl RawStreams {
    fn validate(self) -> Result<StreamPolicy, ConfigError> {
        let keep_finished =
            parse_duration(&self.keep_finished).map_err(|m| invalid("streams.keep_finished", m))?;
        let max_finished_bytes = parse_size(&self.max_finished_size)
            .map_err(|m| invalid("streams.max_finished_size", m))?;
        let max_finished_bytes_per_tenant = parse_size(&self.max_finished_size_per_tenant)
            .map_err(|m| invalid("streams.max_finished_size_per_tenant", m))?;
        if self.max_lag_events == 0 {
            return Err(invalid("streams.max_lag_events", "must be at least 1"));
        }
        Ok(StreamPolicy {
            keep_finished,
            max_finished: self.max_finished,
            max_finished_bytes,
            max_finished_bytes_per_tenant,
            max_watchers_per_tenant: self.max_watchers_per_tenant,
            max_lag: self.max_lag_events,
        })
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

impl RawFiles {
    fn validate(self) -> Result<FilePolicy, ConfigError> {
        let max_file_bytes =
            parse_size(&self.max_file_size).map_err(|m| invalid("files.max_file_size", m))?;
        let max_tenant_bytes =
            parse_size(&self.max_tenant_size).map_err(|m| invalid("files.max_tenant_size", m))?;
        if max_file_bytes == 0 {
            return Err(invalid("files.max_file_size", "must be larger than zero"));
        }
        if max_file_bytes > max_tenant_bytes {
            return Err(invalid(
                "files.max_file_size",
                format!(
                    "\"{}\" is larger than files.max_tenant_size \"{}\"; no file that size could be kept",
                    self.max_file_size, self.max_tenant_size
                ),
            ));
        }
        let batch_window =
            parse_duration(&self.batch_window).map_err(|m| invalid("files.batch_window", m))?;
        if batch_window.is_zero() {
            return Err(invalid("files.batch_window", "must be longer than zero"));
        }
        Ok(FilePolicy {
            max_file_bytes: max_file_bytes as u64,
            max_tenant_bytes: max_tenant_bytes as u64,
            batch_window,
        })
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

impl RawConfig {
    pub(super) fn validate(mut self) -> Result<Config, ConfigError> {
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
        let admin_tls = tls_files(
            "server.admin_tls",
            self.server.admin_tls_cert.take(),
            self.server.admin_tls_key.take(),
        )?;
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
            if name == crate::scheduler::BATCH {
                return Err(invalid(
                    at,
                    "\"batch\" is the gateway's own level for batch jobs, below every tier; name this tier otherwise",
                ));
            }
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
            let overrides = raw.limits();
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
            let limit_field = match raw.limit_field.as_deref() {
                None | Some("max_tokens") => "max_tokens",
                Some("max_completion_tokens") => "max_completion_tokens",
                Some(other) => {
                    return Err(invalid(
                        format!("{at}.limit_field"),
                        format!(
                            "unknown field \"{other}\"; use \"max_tokens\" or \"max_completion_tokens\""
                        ),
                    ));
                }
            };
            models.push(Model {
                alias: raw.alias,
                kind,
                deployments,
                tokenizer,
                price: raw.price,
                limit_field,
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
        let state = self.state.validate()?;
        let audit = self.audit.validate()?;
        let files = self.files.validate()?;
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
            tls: admin_tls,
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
            state,
            audit,
            files,
            tiers,
            tenants,
            regions,
            models,
            flows: Vec::new(),
            flow_documents: None,
            flow_tools: Vec::new(),
            flow_mcp: Vec::new(),
        })
    }
}

impl RawState {
    fn validate(self) -> Result<crate::domain::StatePolicy, ConfigError> {
        use crate::domain::{StateBackend, StatePolicy};
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(invalid(
                "state.prefix",
                "must be non-empty, without braces (they make the hash tag)",
            ));
        }
        let backend = match (self.backend.as_str(), self.url) {
            ("local", _) => StateBackend::Local,
            ("valkey" | "redis", Some(url)) => {
                if url.starts_with("rediss://") {
                    return Err(invalid(
                        "state.url",
                        "TLS to the shared store (rediss://) is not supported yet; reach it over a private network or a local TLS tunnel, as redis://",
                    ));
                }
                if !url.starts_with("redis://") {
                    return Err(invalid(
                        "state.url",
                        format!("\"{url}\" is not a Valkey URL like \"redis://127.0.0.1:6379\""),
                    ));
                }
                if let Some((i, node)) = self
                    .cluster_nodes
                    .iter()
                    .enumerate()
                    .find(|(_, n)| !n.starts_with("redis://"))
                {
                    return Err(invalid(
                        format!("state.cluster_nodes[{i}]"),
                        format!("\"{node}\" is not a Valkey URL like \"redis://10.0.0.1:6379\""),
                    ));
                }
                StateBackend::Valkey {
                    url,
                    prefix: self.prefix,
                    cluster_nodes: self.cluster_nodes,
                }
            }
            ("valkey" | "redis", None) => {
                return Err(invalid(
                    "state.url",
                    "the valkey backend needs the server's URL, e.g. \"redis://127.0.0.1:6379\"",
                ));
            }
            (other, _) => {
                return Err(invalid(
                    "state.backend",
                    format!("\"{other}\" is not a backend; backends: local, valkey"),
                ));
            }
        };
        if !(0.0..=0.5).contains(&self.lease) {
            return Err(invalid(
                "state.lease",
                format!(
                    "{} is not a share between 0 (a round trip per request) and 0.5",
                    self.lease
                ),
            ));
        }
        if let Some(replica) = &self.replica {
            let fine = !replica.is_empty()
                && replica.len() <= 64
                && replica
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !fine {
                return Err(invalid(
                    "state.replica",
                    "a replica's id is 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
        }
        let grace = parse_duration(&self.grace).map_err(|m| invalid("state.grace", m))?;
        Ok(StatePolicy {
            backend,
            replica: self.replica,
            lease: self.lease,
            grace,
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
        let header_read_timeout =
            positive_duration("server.header_read_timeout", &self.header_read_timeout)?;
        let body_timeout = positive_duration("server.body_timeout", &self.body_timeout)?;
        let tls = tls_files("server.tls", self.tls_cert, self.tls_key)?;
        for (key, value) in [
            ("server.max_connections", self.max_connections),
            (
                "server.max_connections_per_address",
                self.max_connections_per_address,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.workers > MAX_WORKERS {
            return Err(invalid(
                "server.workers",
                format!(
                    "{} threads is more than {MAX_WORKERS}; use about one per core, or 0 for exactly that",
                    self.workers
                ),
            ));
        }
        Ok(Server {
            listen,
            data_dir: PathBuf::from(self.data_dir),
            max_body,
            shutdown_grace,
            connections: crate::listener::ConnectionLimits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
                header_read_timeout,
                max_body,
                body_timeout,
            },
            body_timeout,
            tls,
            workers: crate::workers::count(self.workers),
        })
    }
}

/// Connection worker threads at most: each has a runtime and an upstream pool.
const MAX_WORKERS: usize = 1024;

/// A listener's certificate and key: both or neither (`prefix` is `server.tls` or
/// `server.admin_tls`). The files are read when the daemon starts.
fn tls_files(
    prefix: &str,
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    let given = |name: &str, value: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        match value {
            Some(v) if v.trim().is_empty() => {
                Err(invalid(format!("{prefix}_{name}"), "must not be empty"))
            }
            v => Ok(v.map(PathBuf::from)),
        }
    };
    match (given("cert", cert)?, given("key", key)?) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            format!("{prefix}_key"),
            format!("{prefix}_cert is set, so the private key's file is needed too"),
        )),
        (None, Some(_)) => Err(invalid(
            format!("{prefix}_cert"),
            format!("{prefix}_key is set, so the certificate's file is needed too"),
        )),
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
            first_byte: positive("upstream.first_byte_timeout", &self.first_byte_timeout)?,
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
        let Some(dialect) = Dialect::ALL
            .into_iter()
            .find(|d| d.to_string() == self.dialect)
        else {
            let supported: Vec<String> = Dialect::ALL.iter().map(|d| format!("\"{d}\"")).collect();
            return Err(invalid(
                format!("{at}.dialect"),
                format!(
                    "unknown dialect \"{}\"; supported: {}",
                    self.dialect,
                    supported.join(", ")
                ),
            ));
        };
        let api_version = match (&self.api_version, dialect) {
            (Some(version), Dialect::Azure) => {
                let fine = !version.is_empty()
                    && version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !fine {
                    return Err(invalid(
                        format!("{at}.api_version"),
                        "must be an Azure OpenAI API version, e.g. \"2024-10-21\"",
                    ));
                }
                version.clone()
            }
            (None, Dialect::Azure) => AZURE_API_VERSION.to_string(),
            (Some(_), _) => {
                return Err(invalid(
                    format!("{at}.api_version"),
                    "applies only to dialect = \"azure\"",
                ));
            }
            (None, _) => String::new(),
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
        let native_responses = match (self.responses.as_deref(), dialect) {
            (None | Some("translate"), _) => false,
            (Some("native"), Dialect::OpenAi) => true,
            (Some("native"), _) => {
                return Err(invalid(
                    format!("{at}.responses"),
                    format!(
                        "\"native\" needs dialect = \"openai\"; {dialect} instances are sent Responses requests translated (\"translate\")"
                    ),
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    format!("{at}.responses"),
                    format!("must be \"native\" or \"translate\", found \"{other}\""),
                ));
            }
        };
        Ok(Instance {
            name: self.name,
            url: self.url.trim_end_matches('/').to_string(),
            dialect,
            api_version,
            api_key_env: self.api_key_env,
            max_concurrency: self.max_concurrency,
            weight: self.weight,
            http2: self.http2,
            native_responses,
        })
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
            max_tokens_cap: Some(self.max_tokens_cap.unwrap_or(DEFAULT_MAX_TOKENS_CAP)),
            ..self.limits()
        };
        check_limits(at, &limits)?;
        Ok(Tier {
            name,
            share: self.share,
            max_queue: self.max_queue,
            max_queue_per_tenant: self
                .max_queue_per_tenant
                .unwrap_or(self.max_queue.div_ceil(2))
                .clamp(1, self.max_queue),
            max_wait,
            limits,
        })
    }
}
