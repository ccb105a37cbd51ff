//! Flows' tools and agents. A tool call is an HTTP POST of the arguments to the declared
//! endpoint (`flows::tools`), checked against its schema first and audited (kind `tool`:
//! the tenant, the run, the tool, the status, the time; never the arguments). An agent
//! is a model calling tools until it answers, every model call through the pipeline as
//! the tenant, bounded in model calls and tokens; with a memory session, the
//! conversation is carried from run to run in the tenant's flow values, older turns
//! folded by the model into a running summary.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::Gateway;
use super::flows::Failure;
use crate::domain::ModelKind;
use crate::domain::records::{AuditKind, AuditRecord, StepRun};
use crate::flows::tools::{McpServer, Tool};
use crate::flows::{Step, Template};

/// The most of a tool's answer that is read.
const MAX_ANSWER: usize = 1024 * 1024;

/// What an agent step is, as the runner hands it over.
pub(super) struct Agent<'s> {
    pub model: &'s str,
    pub system: Option<&'s Template>,
    pub prompt: &'s Template,
    pub tools: &'s [String],
    pub max_turns: u32,
    pub budget_tokens: u64,
    pub memory: Option<&'s Template>,
    pub memory_window: usize,
}

/// A session's conversation as an agent keeps it between runs.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Memory {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    messages: Vec<Value>,
}

pub(super) fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

impl Gateway {
    fn tool(&self, name: &str) -> Option<&Tool> {
        self.config.flow_tools.iter().find(|t| t.name == name)
    }

    /// Calls tool `name` with `arguments` for `tenant` (`caller` names the run): its
    /// answer, or why there is none.
    pub(super) async fn call_tool(
        &self,
        (tenant, caller, step): (&str, &str, &str),
        name: &str,
        arguments: &Value,
    ) -> Result<Value, String> {
        let Some(tool) = self.tool(name) else {
            return Err(format!("no tool {name} is declared"));
        };
        tool.check_arguments(arguments)?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(tool.timeout, post(tool, arguments)).await;
        let (status, result) = match outcome {
            Ok(Ok((status, answer))) if (200..300).contains(&status) => (Some(status), Ok(answer)),
            Ok(Ok((status, answer))) => {
                let shown = match &answer {
                    Value::String(text) => text.chars().take(200).collect(),
                    other => other.to_string().chars().take(200).collect::<String>(),
                };
                (
                    Some(status),
                    Err(format!("tool {name} answered {status}: {shown}")),
                )
            }
            Ok(Err(error)) => (
                None,
                Err(format!("tool {name} could not be reached: {error}")),
            ),
            Err(_) => (
                None,
                Err(format!(
                    "tool {name} did not answer within {}",
                    crate::config::format_duration(tool.timeout)
                )),
            ),
        };
        self.audit_tool((tenant, caller, step), name, status, started, &result);
        result
    }

    /// Calls `tool` of MCP server `server`, audited as `server.tool`.
    pub(super) async fn call_mcp_tool(
        &self,
        who: (&str, &str, &str),
        server: &str,
        tool: &str,
        arguments: &Value,
    ) -> Result<Value, String> {
        let Some(declared) = self.config.flow_mcp.iter().find(|m| m.name == server) else {
            return Err(format!("no MCP server {server} is declared"));
        };
        let started = Instant::now();
        let result = super::mcp::call(declared, tool, arguments).await;
        self.audit_tool(who, &format!("{server}.{tool}"), None, started, &result);
        result
    }

    /// The audit record of a tool call: who, which tool, for which step, how it went;
    /// never the arguments.
    fn audit_tool(
        &self,
        (tenant, caller, step): (&str, &str, &str),
        name: &str,
        status: Option<u16>,
        started: Instant,
        result: &Result<Value, String>,
    ) {
        self.audit.record(AuditRecord {
            at_ms: crate::telemetry::now_ms(),
            kind: Some(AuditKind::Tool),
            tenant: Some(tenant.to_string()),
            key_id: Some(caller.to_string()),
            action: Some(name.to_string()),
            target: Some(step.to_string()),
            status,
            latency_ms: Some(started.elapsed().as_millis() as u64),
            outcome: Some(match result {
                Ok(_) => "ok".to_string(),
                Err(why) => why.clone(),
            }),
            ..AuditRecord::default()
        });
    }

    /// Runs an agent step: the model is offered the tools and called again after each
    /// round of tool calls, until it answers in words.
    pub(super) async fn run_agent(
        &self,
        (tenant, run, step): (&str, &str, &Step),
        agent: Agent<'_>,
        values: &Map<String, Value>,
        done: &mut StepRun,
    ) -> Result<Value, Failure> {
        let caller = format!("flow:{run}");
        let render = |template: &Template| {
            template
                .render(|name| values.get(name))
                .map_err(|message| Failure::template(step, message))
        };
        let memory_key = match agent.memory {
            Some(session) => Some(format!("agent:{}:{}", step.name, render(session)?)),
            None => None,
        };
        let mut memory: Memory = memory_key
            .as_ref()
            .and_then(|key| self.flow_value(tenant, key))
            .and_then(|kept| serde_json::from_value(kept).ok())
            .unwrap_or_default();
        let question = render(agent.prompt)?;
        let mut messages = Vec::new();
        if let Some(system) = agent.system {
            messages.push(json!({"role": "system", "content": render(system)?}));
        }
        if !memory.summary.is_empty() {
            messages.push(json!({
                "role": "system",
                "content": format!("Summary of the conversation so far: {}", memory.summary),
            }));
        }
        messages.extend(memory.messages.iter().cloned());
        messages.push(json!({"role": "user", "content": question}));
        // HTTP tools by their declaration; an MCP server's tools as it lists them now,
        // each remembered with its server.
        let mut specs: Vec<Value> = Vec::new();
        let mut on_server: Vec<(String, &McpServer)> = Vec::new();
        for name in agent.tools {
            if let Some(tool) = self.tool(name) {
                specs.push(tool.spec());
            } else if let Some(server) = self.config.flow_mcp.iter().find(|m| &m.name == name) {
                let listed = super::mcp::list(server).await.map_err(|why| Failure {
                    code: "tool_failed".into(),
                    message: format!("step {}: {why}", step.name),
                    retryable: true,
                })?;
                for spec in listed {
                    let tool = spec["function"]["name"].as_str().unwrap_or_default();
                    on_server.push((tool.to_string(), server));
                    specs.push(spec);
                }
            }
        }
        let chat = ("/v1/chat/completions", ModelKind::Chat);
        let mut used = 0u64;
        for _ in 0..agent.max_turns {
            let mut body = json!({"model": agent.model, "messages": messages});
            if !specs.is_empty() {
                body["tools"] = Value::Array(specs.clone());
            }
            let answer = self
                .model_call(tenant, &caller, chat, body, &mut done.request_ids)
                .await?;
            let (prompt, completion) = usage_of(&answer);
            done.prompt_tokens += prompt;
            done.completion_tokens += completion;
            used += prompt + completion;
            if used > agent.budget_tokens {
                return Err(Failure {
                    code: "agent_budget_exceeded".into(),
                    message: format!(
                        "step {}: the agent used {used} tokens, over its budget of {}",
                        step.name, agent.budget_tokens
                    ),
                    retryable: false,
                });
            }
            let message = answer["choices"][0]["message"].clone();
            let calls = message["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if calls.is_empty() {
                let text = message["content"].as_str().unwrap_or_default().to_string();
                if let Some(key) = &memory_key {
                    memory
                        .messages
                        .push(json!({"role": "user", "content": question}));
                    memory
                        .messages
                        .push(json!({"role": "assistant", "content": text}));
                    if memory.messages.len() > agent.memory_window {
                        self.fold(
                            tenant,
                            &caller,
                            agent.model,
                            &mut memory,
                            agent.memory_window,
                            done,
                        )
                        .await?;
                    }
                    let kept = serde_json::to_value(&memory).unwrap_or(Value::Null);
                    self.keep_flow_value(tenant, key.clone(), &kept).await;
                }
                return Ok(Value::String(text));
            }
            messages.push(message);
            for call in calls {
                let name = call["function"]["name"].as_str().unwrap_or_default();
                let arguments = call["function"]["arguments"]
                    .as_str()
                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
                    .unwrap_or(Value::Null);
                let who = (tenant, caller.as_str(), step.name.as_str());
                let answer = if self.tool(name).is_some() && agent.tools.iter().any(|t| t == name) {
                    Some(self.call_tool(who, name, &arguments).await)
                } else if let Some((_, server)) = on_server.iter().find(|(t, _)| t == name) {
                    Some(
                        self.call_mcp_tool(who, &server.name, name, &arguments)
                            .await,
                    )
                } else {
                    None
                };
                let content = match answer {
                    Some(Ok(Value::String(text))) => text,
                    Some(Ok(other)) => other.to_string(),
                    // The model reads why, and may correct its call.
                    Some(Err(why)) => format!("error: {why}"),
                    None => format!("error: {name} is not a tool offered to you"),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": content,
                }));
            }
        }
        Err(Failure {
            code: "agent_turns_exhausted".into(),
            message: format!(
                "step {}: the agent made {} model calls without answering",
                step.name, agent.max_turns
            ),
            retryable: false,
        })
    }

    /// Folds the older half of a session's messages into its summary (a model call of
    /// its own, charged to the step), keeping the newest ones as they are.
    async fn fold(
        &self,
        tenant: &str,
        caller: &str,
        model: &str,
        memory: &mut Memory,
        window: usize,
        done: &mut StepRun,
    ) -> Result<(), Failure> {
        let keep = (window / 2).max(2) & !1;
        let older: Vec<Value> = memory
            .messages
            .drain(..memory.messages.len() - keep)
            .collect();
        let transcript: String = older
            .iter()
            .map(|m| {
                format!(
                    "{}: {}\n",
                    m["role"].as_str().unwrap_or("?"),
                    m["content"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You keep a running summary of a conversation. Write the new summary in a few sentences, keeping names, numbers and decisions."},
                {"role": "user", "content": format!("Summary so far: {}\n\nNewer messages:\n{transcript}", memory.summary)},
            ],
        });
        let chat = ("/v1/chat/completions", ModelKind::Chat);
        let answer = self
            .model_call(tenant, caller, chat, body, &mut done.request_ids)
            .await?;
        let (prompt, completion) = usage_of(&answer);
        done.prompt_tokens += prompt;
        done.completion_tokens += completion;
        memory.summary = answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(())
    }
}

fn usage_of(answer: &Value) -> (u64, u64) {
    let usage = &answer["usage"];
    (
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    )
}

/// POSTs the arguments; the status and the answer (JSON, else text).
async fn post(tool: &Tool, arguments: &Value) -> Result<(u16, Value), String> {
    let mut response = http()
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
