//! Flows' tools, by kind. A toolbox is a declared source of tools: an HTTP tool
//! (`[[flows.tools]]`, one tool of its own name, `http.rs`) or an MCP server
//! (`[[flows.mcp]]`, the tools it lists, `mcp.rs`). Each kind is one file behind the
//! `Toolbox` trait, registered in `KINDS`; steps and agents find a toolbox by name and
//! never ask which kind it is.
//!
//! A tool is addressed as `toolbox.tool`, or by the toolbox's name alone when the
//! toolbox is the tool (HTTP). Every call is an audit record (kind `tool`: the tenant,
//! the run, the tool, the step, the status, the time; never the arguments).

mod http;
mod mcp;

use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

use super::Gateway;
use crate::config::Config;
use crate::domain::records::{AuditKind, AuditRecord};

/// A declared source of tools.
pub(super) trait Toolbox: Send + Sync {
    /// The name steps and agents use for it.
    fn name(&self) -> &str;
    /// Its tools as a chat request offers them (`tools` entries of type `function`).
    fn list(&self) -> BoxFuture<'_, Result<Vec<Value>, String>>;
    /// Calls its tool `tool` with `arguments`.
    fn call<'a>(&'a self, tool: &'a str, arguments: &'a Value) -> BoxFuture<'a, Called>;
    /// How its tool `tool` is named in the audit log and in errors.
    fn qualified(&self, tool: &str) -> String {
        format!("{}.{tool}", self.name())
    }
}

/// How a tool call went.
pub(super) struct Called {
    /// The tool's HTTP status, when it answered one.
    pub status: Option<u16>,
    pub result: Result<Value, ToolError>,
}

/// Why a tool call has no answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ToolError {
    /// The arguments do not fit the tool's schema: no call was made, and another try
    /// with the same arguments fails the same way.
    Arguments(String),
    /// The tool failed or could not be reached; another try may succeed.
    Failed(String),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Arguments(why) | ToolError::Failed(why) => f.write_str(why),
        }
    }
}

/// Each kind of toolbox, by the config section declaring them, with the declared ones.
type Declared = fn(&Config) -> Vec<Box<dyn Toolbox + '_>>;
static KINDS: &[(&str, Declared)] = &[
    ("flows.tools", http::declared),
    ("flows.mcp", mcp::declared),
];

/// The HTTP client tools and pages are fetched with: no proxy, the gateway's TLS.
pub(super) fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// The declared toolbox named `name`, of whatever kind.
pub(super) fn toolbox<'c>(config: &'c Config, name: &str) -> Option<Box<dyn Toolbox + 'c>> {
    KINDS
        .iter()
        .flat_map(|(_, declared)| declared(config))
        .find(|toolbox| toolbox.name() == name)
}

/// A tool's address (`toolbox.tool`, or the toolbox's name alone) as (toolbox, tool).
pub(super) fn address(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or((name, name))
}

impl Gateway {
    /// Calls `tool` of `toolbox` for the run `caller` of `tenant`, in step `step`, and
    /// audits the call.
    pub(super) async fn call_tool(
        &self,
        (tenant, caller, step): (&str, &str, &str),
        toolbox: &dyn Toolbox,
        tool: &str,
        arguments: &Value,
    ) -> Result<Value, ToolError> {
        let started = Instant::now();
        let Called { status, result } = toolbox.call(tool, arguments).await;
        self.sinks.audit.record(AuditRecord {
            at_ms: crate::telemetry::now_ms(),
            kind: Some(AuditKind::Tool),
            tenant: Some(tenant.to_string()),
            key_id: Some(caller.into()),
            action: Some(toolbox.qualified(tool)),
            target: Some(step.to_string()),
            status,
            latency_ms: Some(started.elapsed().as_millis() as u64),
            outcome: Some(match &result {
                Ok(_) => "ok".to_string(),
                Err(why) => why.to_string(),
            }),
            ..AuditRecord::default()
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_name_and_addressed() {
        let toml = format!(
            "{}\n{}",
            include_str!("../../../config.toml.example"),
            r#"
            [[flows.tools]]
            name = "weather"
            url = "http://127.0.0.1:1/weather"
            [[flows.mcp]]
            name = "inventory"
            url = "http://127.0.0.1:1/mcp"
            "#
        );
        let config = Config::from_toml(&toml).unwrap();
        let weather = toolbox(&config, "weather").unwrap();
        assert_eq!(weather.qualified("weather"), "weather");
        let inventory = toolbox(&config, "inventory").unwrap();
        assert_eq!(inventory.qualified("check"), "inventory.check");
        assert!(toolbox(&config, "nowhere").is_none());
        assert_eq!(address("inventory.check"), ("inventory", "check"));
        assert_eq!(address("weather"), ("weather", "weather"));
    }
}
