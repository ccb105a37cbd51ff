//! The TOML configuration: a raw serde schema (`raw`), then `validate` into the types
//! the rest of the gateway uses, so nothing downstream re-checks an `Option`. Durations
//! and sizes have one parser and one formatter each (`domain::units`), which round-trip.
//!
//! Every error names the key path (`regions[1].instances[0].url: ...`). This module never
//! opens sockets or spawns tasks; reading the file is the only I/O it does.

mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::{
    AuditPolicy, CachePolicy, HealthCheck, Limits, Model, Region, RoutingPolicy, StreamPolicy,
    Tenant, Tier, UpstreamTimeouts,
};

pub use crate::domain::units::{format_duration, format_size, parse_duration, parse_size};
use raw::RawConfig;

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
    /// Where limits, budgets and operator state live.
    pub state: crate::domain::StatePolicy,
    pub audit: AuditPolicy,
    pub files: crate::domain::FilePolicy,
    pub tiers: Vec<Tier>,
    pub tenants: Vec<Tenant>,
    /// Sorted by failover order (then by position in the file).
    pub regions: Vec<Region>,
    pub models: Vec<Model>,
    /// Flows tenants may run (`[flows] files`), checked whole at load.
    pub flows: Vec<crate::flows::Flow>,
    /// Where flows' `embed` steps may load documents from (`[flows] documents`).
    pub flow_documents: Option<std::path::PathBuf>,
    /// Tools flows may call (`[[flows.tools]]`).
    pub flow_tools: Vec<crate::flows::tools::Tool>,
    /// MCP servers whose tools agents may be offered (`[[flows.mcp]]`).
    pub flow_mcp: Vec<crate::flows::tools::McpServer>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Time in-flight requests and streams get to finish when the daemon stops.
    pub shutdown_grace: Duration,
    /// How client connections are capped and timed out.
    pub connections: crate::listener::ConnectionLimits,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// The public API speaks HTTPS with these.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Threads that serve client connections (`server.workers`, 0 resolved to the
    /// number of cores).
    pub workers: usize,
}

/// The admin listener: run-time control, for operators and `switchyard ctl`.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Environment variable holding the admin token.
    pub token_env: String,
    /// The admin API speaks HTTPS with these.
    pub tls: Option<crate::tls::TlsFiles>,
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
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml_in(&text, base)?;
        if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
            config.server.data_dir = PathBuf::from(dir);
        }
        Ok(config)
    }

    /// Parses and validates TOML text; reads no environment. Flow files are found
    /// from the working directory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_in(text, Path::new("."))
    }

    /// The same, with flow files found from `base` (the config file's directory).
    pub fn from_toml_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| syntax(text, "", &e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            syntax(text, &key, e.inner())
        })?;
        let mut raw = raw;
        let flow_files = std::mem::take(&mut raw.flows.files);
        let documents = raw.flows.documents.as_ref().map(|d| base.join(d));
        let tools = check_tools(std::mem::take(&mut raw.flows.tools))?;
        let urls = std::mem::take(&mut raw.flows.urls);
        let mut mcp: Vec<crate::flows::tools::McpServer> = Vec::new();
        for (i, server) in std::mem::take(&mut raw.flows.mcp).into_iter().enumerate() {
            let server = crate::flows::tools::McpServer::check(server)
                .map_err(|(field, why)| invalid(format!("flows.mcp[{i}].{field}"), why))?;
            if mcp.iter().any(|m| m.name == server.name)
                || tools.iter().any(|t| t.name == server.name)
            {
                return Err(invalid(
                    format!("flows.mcp[{i}].name"),
                    format!("\"{}\" already names a tool or an MCP server", server.name),
                ));
            }
            mcp.push(server);
        }
        let mut config = raw.validate()?;
        if let Some((i, url)) = urls
            .iter()
            .enumerate()
            .find(|(_, u)| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(invalid(
                format!("flows.urls[{i}]"),
                format!("\"{url}\" is not an http(s) URL prefix"),
            ));
        }
        let offered = Offered {
            documents: documents.is_some(),
            urls: urls.iter().map(String::as_str).collect(),
            mcp: mcp.iter().map(|m| m.name.as_str()).collect(),
            tools: tools
                .iter()
                .map(|t| t.name.as_str())
                .chain(mcp.iter().map(|m| m.name.as_str()))
                .collect(),
        };
        config.flows = load_flows(&flow_files, base, &config.models, &offered)?;
        config.flow_documents = documents;
        config.flow_tools = tools;
        config.flow_mcp = mcp;
        Ok(config)
    }

    pub fn model(&self, alias: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.alias == alias)
    }

    /// Every instance in the regions that `model` is deployed in.
    pub fn instances_of<'c>(
        &'c self,
        model: &'c Model,
    ) -> impl Iterator<Item = &'c crate::domain::Instance> {
        model.deployments.iter().flat_map(|d| {
            self.regions
                .iter()
                .filter(move |r| r.name == d.region)
                .flat_map(|r| &r.instances)
        })
    }

    /// The instance called `name`, in whichever region.
    pub fn instance(&self, name: &str) -> Option<&crate::domain::Instance> {
        self.regions
            .iter()
            .flat_map(|r| &r.instances)
            .find(|i| i.name == name)
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

/// What flows may use besides models: a documents directory, declared tools.
struct Offered<'a> {
    documents: bool,
    urls: Vec<&'a str>,
    mcp: Vec<&'a str>,
    tools: Vec<&'a str>,
}

/// Checks `[[flows.tools]]`: each declaration, and that no two share a name.
fn check_tools(
    raw: Vec<crate::flows::tools::RawTool>,
) -> Result<Vec<crate::flows::tools::Tool>, ConfigError> {
    let mut tools: Vec<crate::flows::tools::Tool> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let tool = crate::flows::tools::Tool::check(raw)
            .map_err(|(field, message)| invalid(format!("flows.tools[{i}].{field}"), message))?;
        if tools.iter().any(|t| t.name == tool.name) {
            return Err(invalid(
                format!("flows.tools[{i}].name"),
                format!("a second tool is named \"{}\"", tool.name),
            ));
        }
        tools.push(tool);
    }
    Ok(tools)
}

/// Reads and checks every flow file; a flow is named by its file's stem.
fn load_flows(
    files: &[String],
    base: &Path,
    models: &[Model],
    offered: &Offered<'_>,
) -> Result<Vec<crate::flows::Flow>, ConfigError> {
    let of_kind = |kind| -> Vec<&str> {
        models
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.alias.as_str())
            .collect()
    };
    let (chat, embeddings) = (
        of_kind(crate::domain::ModelKind::Chat),
        of_kind(crate::domain::ModelKind::Embeddings),
    );
    let catalog = crate::flows::Catalog {
        chat: &chat,
        embeddings: &embeddings,
        documents: offered.documents,
        urls: &offered.urls,
        tools: &offered.tools,
        mcp: &offered.mcp,
    };
    let mut flows: Vec<crate::flows::Flow> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let key = format!("flows.files[{i}]");
        let path = base.join(file);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(&key, format!("\"{file}\" names no file")))?
            .to_string();
        if flows.iter().any(|f| f.name == name) {
            return Err(invalid(
                &key,
                format!("a second flow is named \"{name}\" (flows are named by their file)"),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
        let flow =
            crate::flows::parse(&name, &text, &catalog).map_err(|e| ConfigError::Invalid {
                key: e.key,
                message: format!("{} (in {})", e.message, path.display()),
            })?;
        flows.push(flow);
    }
    Ok(flows)
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

/// Zero limits would refuse everything; pausing a tenant is the way to do that.
pub fn check_limits(at: &str, limits: &Limits) -> Result<(), ConfigError> {
    let counts = [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_concurrency", limits.max_concurrency.map(u64::from)),
        ("daily_tokens", limits.daily_tokens),
        ("monthly_tokens", limits.monthly_tokens),
        ("max_tokens_cap", limits.max_tokens_cap),
        ("batch_concurrency", limits.batch_concurrency.map(u64::from)),
        ("batch_daily_tokens", limits.batch_daily_tokens),
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
