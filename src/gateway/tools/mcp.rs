//! MCP servers (`[[flows.mcp]]`): their tools listed when an agent starts and called
//! as the model asks or a tool step names them (`server.tool`), over streamable HTTP with the official Rust SDK
//! (`rmcp`) on the gateway's own HTTP client. A session is opened for each listing and
//! each call, and closed after it: simple, and on loopback a handshake is a millisecond.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Map, Value, json};

use futures_util::future::BoxFuture;

use super::{Called, ToolError, Toolbox};
use crate::config::Config;
use crate::flows::tools::McpServer;

pub(super) fn declared(config: &Config) -> Vec<Box<dyn Toolbox + '_>> {
    config
        .flow_mcp
        .iter()
        .map(|server| Box::new(Mcp(server)) as Box<dyn Toolbox>)
        .collect()
}

/// A declared MCP server: a toolbox holding the tools it lists.
struct Mcp<'c>(&'c McpServer);

impl Toolbox for Mcp<'_> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Value>, String>> {
        Box::pin(list(self.0))
    }

    fn call<'a>(&'a self, tool: &'a str, arguments: &'a Value) -> BoxFuture<'a, Called> {
        let arguments: Map<String, Value> = match arguments {
            Value::Object(fields) => fields.clone(),
            Value::Null => Map::new(),
            _ => {
                let why = "arguments must be a JSON object".to_string();
                return Box::pin(std::future::ready(Called {
                    status: None,
                    result: Err(ToolError::Arguments(why)),
                }));
            }
        };
        Box::pin(async move {
            Called {
                status: None,
                result: call(self.0, tool, arguments)
                    .await
                    .map_err(ToolError::Failed),
            }
        })
    }
}

/// A session with `server`, or why there is none.
async fn connect(
    server: &McpServer,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>, String> {
    let config = StreamableHttpClientTransportConfig::with_uri(server.url.clone());
    let transport = StreamableHttpClientTransport::with_client(super::http().clone(), config);
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("switchyard", env!("CARGO_PKG_VERSION")),
    );
    info.serve(transport)
        .await
        .map_err(|e| format!("MCP server {} could not be reached: {e}", server.name))
}

/// The server's tools, as a chat request offers them (`tools` entries).
async fn list(server: &McpServer) -> Result<Vec<Value>, String> {
    let listing = async {
        let client = connect(server).await?;
        let tools = client
            .list_tools(Default::default())
            .await
            .map_err(|e| format!("MCP server {} did not list its tools: {e}", server.name));
        let _ = client.cancel().await;
        tools
    };
    let tools = tokio::time::timeout(server.timeout, listing)
        .await
        .map_err(|_| format!("MCP server {} did not list its tools in time", server.name))??;
    Ok(tools
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description.clone().unwrap_or_default(),
                    "parameters": Value::Object((*tool.input_schema).clone()),
                }
            })
        })
        .collect())
}

/// Calls `tool` on the server: its text content (or its structured content when it has
/// no text), or why the call failed.
async fn call(
    server: &McpServer,
    tool: &str,
    arguments: Map<String, Value>,
) -> Result<Value, String> {
    let calling = async {
        let client = connect(server).await?;
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let result = client
            .call_tool(params)
            .await
            .map_err(|e| format!("MCP tool {}.{tool} failed: {e}", server.name));
        let _ = client.cancel().await;
        result
    };
    let result = tokio::time::timeout(server.timeout, calling)
        .await
        .map_err(|_| format!("MCP tool {}.{tool} did not answer in time", server.name))??;
    let value = serde_json::to_value(&result).unwrap_or(Value::Null);
    let text: Vec<&str> = value["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect();
    if value["isError"] == Value::Bool(true) {
        return Err(format!(
            "MCP tool {}.{tool} answered an error: {}",
            server.name,
            text.join(" ")
        ));
    }
    Ok(match (text.is_empty(), value.get("structuredContent")) {
        (true, Some(structured)) => structured.clone(),
        _ => Value::String(text.join("\n")),
    })
}
