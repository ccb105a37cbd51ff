//! Tools flows may call (`tool` steps, and `agent` steps through the model's
//! `tool_calls`): HTTP endpoints the operator declares under `[[flows.tools]]`, each with
//! a JSON schema for its arguments. A call POSTs the arguments as a JSON object; the
//! answer's body (JSON, or text) is the result.
//!
//! ```toml
//! [[flows.tools]]
//! name = "weather"
//! description = "Current weather for a city."
//! url = "http://127.0.0.1:9200/weather"
//! parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
//! timeout = "10s"
//! ```
//!
//! Arguments are checked against the schema's common core before a call (an object,
//! required properties present, each property of its declared `type`, `enum` values);
//! a model's bad arguments go back to it as the tool's answer, so it can correct them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// A tool, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub url: String,
    /// A JSON schema of an object.
    pub parameters: Value,
    pub timeout: Duration,
}

/// `[[flows.tools]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    #[serde(default)]
    pub parameters: Option<Value>,
    pub timeout: Option<String>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Tool {
    /// Checks a declared tool; errors are (field, why).
    pub fn check(raw: RawTool) -> Result<Tool, (&'static str, String)> {
        let valid = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err((
                "name",
                "a tool's name is 1 to 64 letters, digits, '_' or '-' (OpenAI's rule)".into(),
            ));
        }
        if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
            return Err(("url", format!("\"{}\" is not an http(s) URL", raw.url)));
        }
        let parameters = raw
            .parameters
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err((
                "parameters",
                "must be a JSON schema of an object (type = \"object\")".into(),
            ));
        }
        let timeout = match &raw.timeout {
            Some(text) => crate::domain::units::parse_duration(text).map_err(|m| ("timeout", m))?,
            None => DEFAULT_TIMEOUT,
        };
        Ok(Tool {
            name: raw.name,
            description: raw.description,
            url: raw.url,
            parameters,
            timeout,
        })
    }

    /// The tool as a chat request offers it (`tools` entry of type `function`).
    pub fn spec(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }

    /// What is wrong with `arguments` for this tool, if anything.
    pub fn check_arguments(&self, arguments: &Value) -> Result<(), String> {
        let Value::Object(given) = arguments else {
            return Err("arguments must be a JSON object".into());
        };
        let empty = Map::new();
        let properties = self.parameters["properties"].as_object().unwrap_or(&empty);
        for required in self.parameters["required"].as_array().into_iter().flatten() {
            if let Some(name) = required.as_str()
                && !given.contains_key(name)
            {
                return Err(format!("argument {name} is required"));
            }
        }
        for (name, value) in given {
            let Some(schema) = properties.get(name) else {
                continue;
            };
            if let Some(kind) = schema["type"].as_str()
                && !is_of(value, kind)
            {
                return Err(format!("argument {name} must be of type {kind}"));
            }
            if let Some(allowed) = schema["enum"].as_array()
                && !allowed.contains(value)
            {
                return Err(format!(
                    "argument {name} must be one of {}",
                    Value::Array(allowed.clone())
                ));
            }
        }
        Ok(())
    }
}

fn is_of(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// An MCP server whose tools agents may be offered (`[[flows.mcp]]`): its tools are
/// listed from it when an agent starts, and called on it, over streamable HTTP.
///
/// ```toml
/// [[flows.mcp]]
/// name = "inventory"
/// url = "http://127.0.0.1:9300/mcp"
/// timeout = "10s"
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct McpServer {
    pub name: String,
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    pub name: String,
    pub url: String,
    pub timeout: Option<String>,
}

impl McpServer {
    pub fn check(raw: RawMcp) -> Result<McpServer, (&'static str, String)> {
        let tool = Tool::check(RawTool {
            name: raw.name,
            description: String::new(),
            url: raw.url,
            parameters: None,
            timeout: raw.timeout,
        })?;
        Ok(McpServer {
            name: tool.name,
            url: tool.url,
            timeout: tool.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool::check(RawTool {
            name: "weather".into(),
            description: "Weather.".into(),
            url: "http://127.0.0.1:1/weather".into(),
            parameters: Some(json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["C", "F"]}
                },
                "required": ["city"]
            })),
            timeout: None,
        })
        .unwrap()
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let tool = weather();
        assert!(
            tool.check_arguments(&json!({"city": "Oslo", "days": 2}))
                .is_ok()
        );
        assert_eq!(
            tool.check_arguments(&json!({"days": 2})).unwrap_err(),
            "argument city is required"
        );
        assert_eq!(
            tool.check_arguments(&json!({"city": "Oslo", "days": 1.5}))
                .unwrap_err(),
            "argument days must be of type integer"
        );
        assert_eq!(
            tool.check_arguments(&json!({"city": "Oslo", "unit": "K"}))
                .unwrap_err(),
            r#"argument unit must be one of ["C","F"]"#
        );
        assert!(tool.check_arguments(&json!("Oslo")).is_err());
        assert_eq!(tool.spec()["function"]["name"], "weather");
    }

    #[test]
    fn a_bad_declaration_names_the_field() {
        let raw = |name: &str, url: &str, parameters: Option<Value>| RawTool {
            name: name.into(),
            description: String::new(),
            url: url.into(),
            parameters,
            timeout: None,
        };
        assert_eq!(
            Tool::check(raw("a b", "http://x", None)).unwrap_err().0,
            "name"
        );
        assert_eq!(Tool::check(raw("a", "ftp://x", None)).unwrap_err().0, "url");
        let not_object = Some(json!({"type": "string"}));
        assert_eq!(
            Tool::check(raw("a", "http://x", not_object)).unwrap_err().0,
            "parameters"
        );
    }
}
