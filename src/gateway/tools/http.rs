//! HTTP tools (`[[flows.tools]]`): the arguments, checked against the declared schema,
//! POSTed as a JSON object; the answer's body (JSON, else text) is the result.

use std::time::Duration;

use serde_json::Value;

use futures_util::future::BoxFuture;

use super::{Called, ToolError, Toolbox};
use crate::config::Config;
use crate::flows::tools::Tool;

/// The most of a tool's answer that is read.
const MAX_ANSWER: usize = 1024 * 1024;

pub(super) fn declared(config: &Config) -> Vec<Box<dyn Toolbox + '_>> {
    config
        .flow_tools
        .iter()
        .map(|tool| Box::new(Http(tool)) as Box<dyn Toolbox>)
        .collect()
}

/// A declared HTTP tool: a toolbox holding one tool, its own.
struct Http<'c>(&'c Tool);

impl Toolbox for Http<'_> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Value>, String>> {
        Box::pin(std::future::ready(Ok(vec![self.0.spec()])))
    }

    fn call<'a>(&'a self, tool: &'a str, arguments: &'a Value) -> BoxFuture<'a, Called> {
        Box::pin(call(self.0, tool, arguments))
    }

    fn qualified(&self, _tool: &str) -> String {
        self.0.name.clone()
    }
}

async fn call(tool: &Tool, asked: &str, arguments: &Value) -> Called {
    let failed = |status, why| Called {
        status,
        result: Err(ToolError::Failed(why)),
    };
    let name = &tool.name;
    if asked != name {
        return failed(None, format!("tool {name} has no tool {asked}"));
    }
    if let Err(why) = tool.check_arguments(arguments) {
        return Called {
            status: None,
            result: Err(ToolError::Arguments(why)),
        };
    }
    match tokio::time::timeout(tool.timeout, post(tool, arguments)).await {
        Ok(Ok((status, answer))) if (200..300).contains(&status) => Called {
            status: Some(status),
            result: Ok(answer),
        },
        Ok(Ok((status, answer))) => {
            let shown: String = match &answer {
                Value::String(text) => text.chars().take(200).collect(),
                other => other.to_string().chars().take(200).collect(),
            };
            failed(
                Some(status),
                format!("tool {name} answered {status}: {shown}"),
            )
        }
        Ok(Err(error)) => failed(None, format!("tool {name} could not be reached: {error}")),
        Err(_) => failed(
            None,
            format!(
                "tool {name} did not answer within {}",
                crate::config::format_duration(tool.timeout)
            ),
        ),
    }
}

/// POSTs the arguments; the status and the answer (JSON, else text).
async fn post(tool: &Tool, arguments: &Value) -> Result<(u16, Value), String> {
    let mut response = super::http()
        .post(&tool.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(arguments.to_string())
        .timeout(tool.timeout.max(Duration::from_millis(1)))
        .send()
        .await
        .map_err(|e| crate::telemetry::root_cause(&e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| crate::telemetry::root_cause(&e))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            return Err(format!(
                "its answer is larger than {} KiB",
                MAX_ANSWER / 1024
            ));
        }
    }
    let answer = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, answer))
}
