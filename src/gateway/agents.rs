//! Agents: a model calling tools (from any kind of toolbox, `tools`) until it answers,
//! every model call through the pipeline as the tenant, bounded in model calls and
//! tokens; with a memory session, the
//! conversation is carried from run to run in the tenant's flow values, older turns
//! folded by the model into a running summary.

use serde_json::{Map, Value, json};

use super::Gateway;
use super::flows::Failure;
use crate::domain::ModelKind;
use crate::domain::records::StepRun;
use crate::flows::{Step, Template};

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

impl Gateway {
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
        // Every toolbox's tools as it lists them now, each remembered with its toolbox.
        let mut specs: Vec<Value> = Vec::new();
        let mut toolboxes = Vec::new();
        let mut offered: Vec<(String, usize)> = Vec::new();
        for name in agent.tools {
            let Some(toolbox) = super::tools::toolbox(&self.config, name) else {
                continue;
            };
            let listed = toolbox.list().await.map_err(|why| Failure {
                code: "tool_failed".into(),
                message: format!("step {}: {why}", step.name),
                retryable: true,
            })?;
            for spec in listed {
                let tool = spec["function"]["name"].as_str().unwrap_or_default();
                offered.push((tool.to_string(), toolboxes.len()));
                specs.push(spec);
            }
            toolboxes.push(toolbox);
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
                let answer = match offered.iter().find(|(tool, _)| tool == name) {
                    Some((_, at)) => Some(
                        self.call_tool(who, toolboxes[*at].as_ref(), name, &arguments)
                            .await,
                    ),
                    None => None,
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
