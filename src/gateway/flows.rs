//! Flow runs (`POST /v1/flows/{name}/runs`): the steps of a configured flow
//! (`crate::flows`), one after the other, as the tenant that started the run. Every
//! model call goes through `Gateway::serve` like a live request of that tenant, so its
//! priority, limits and budgets apply, it fails over like live traffic and it is in the
//! audit log under its own request id (the step names them). A step that fails with
//! something retrying can help (429, 5xx, its timeout) is tried again up to its
//! `retries`; otherwise the run ends `failed`, naming the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::tools::ToolError;
use super::{Gateway, Inbound, ReplyBody, now_secs, random_id};
use crate::domain::records::{FlowRun, StepError, StepRun};
use crate::domain::{Directives, ModelKind};
use crate::flows::loaders::{self, Document};
use crate::flows::splitters::{self, Split};
use crate::flows::vectors::Row;
use crate::flows::{Arg, Flow, Source, Step, StepKind};

/// Why a run could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    UnknownFlow {
        name: String,
        known: Vec<String>,
    },
    /// The run's `input` lacks a name the flow reads, or is not an object.
    BadInput(String),
}

/// Every run, in memory.
#[derive(Default)]
pub struct Runs {
    runs: Mutex<HashMap<String, FlowRun>>,
    /// A stop signal for each run being driven.
    cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// What `store_put` steps kept, by tenant and key (also in the store).
    values: Mutex<HashMap<(String, String), Value>>,
    /// Where a streamed run's states go, by run id, until it ends.
    observers: Mutex<HashMap<String, mpsc::UnboundedSender<FlowRun>>>,
}

/// The most items a `parallel` step runs its steps for.
pub const MAX_ITEMS: usize = 1000;

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FlowRun>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `id` of `tenant`.
    pub fn get(&self, tenant: &str, id: &str) -> Option<FlowRun> {
        self.lock().get(id).filter(|r| r.tenant == tenant).cloned()
    }

    /// `tenant`'s runs, newest first.
    pub fn list(&self, tenant: &str) -> Vec<FlowRun> {
        let mut runs: Vec<FlowRun> = self
            .lock()
            .values()
            .filter(|r| r.tenant == tenant)
            .cloned()
            .collect();
        runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        runs
    }

    /// Every tenant's runs, newest first (the operator's view).
    pub fn all(&self) -> Vec<FlowRun> {
        let mut runs: Vec<FlowRun> = self.lock().values().cloned().collect();
        runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        runs
    }

    fn put(&self, run: &FlowRun) {
        self.lock().insert(run.id.clone(), run.clone());
        let mut observers = self.observers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(observer) = observers.get(&run.id) {
            let ended = run.status != "running" && run.status != "cancelling";
            if observer.send(run.clone()).is_err() || ended {
                observers.remove(&run.id);
            }
        }
    }

    fn values(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Value>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back the values the store kept (at start).
    pub fn restore_values(&self, kept: Vec<(String, String, Value)>) {
        let mut values = self.values();
        for (tenant, key, value) in kept {
            values.insert((tenant, key), value);
        }
    }
}

/// Ends a run whose caller went away before it finished (the request was dropped
/// mid-step): it is `cancelled`, not left `running` for ever. Not when the daemon is
/// stopping: then the run resumes at the next start.
struct Unfinished<'g> {
    gateway: &'g Gateway,
    id: String,
    flow: &'g Flow,
}

/// Ends a run whose caller went away during `step`: `cancelled`, as `client_gone`, or
/// as `cancelled` when a cancel was asked first and its driver never saw it (the run
/// was `cancelling`). False for a run that had already ended.
fn end_left(run: &mut FlowRun, step: &str) -> bool {
    let error = match run.status.as_str() {
        "running" => StepError {
            step: step.to_string(),
            code: "client_gone".into(),
            message: "the client went away before the run ended; it was stopped".into(),
        },
        "cancelling" => cancelled_during(step),
        _ => return false,
    };
    run.status = "cancelled".into();
    run.ended_at = Some(now_secs());
    run.error = Some(error);
    true
}

/// Why a run that was cancelled ended.
fn cancelled_during(step: &str) -> StepError {
    StepError {
        step: step.to_string(),
        code: "cancelled".into(),
        message: format!("the run was cancelled during step {step}"),
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        // Nobody reads a streamed run's states any more.
        self.gateway
            .flow_runs
            .observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let shutdown = &self.gateway.shutdown;
        if shutdown.is_draining() || shutdown.is_cut() {
            return;
        }
        let mut runs = self.gateway.flow_runs.lock();
        let Some(run) = runs.get_mut(&self.id) else {
            return;
        };
        // The step in progress: the first not recorded.
        let step = self
            .flow
            .steps
            .get(run.steps.len())
            .map(|s| s.name.as_str());
        if !end_left(run, step.unwrap_or_default()) {
            return;
        }
        let run = run.clone();
        drop(runs);
        if let (Some(store), Ok(runtime)) = (
            self.gateway.store.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn_blocking(move || {
                if store
                    .save_flow_run(&run)
                    .and_then(|()| store.flush())
                    .is_err()
                {
                    tracing::warn!(run = %run.id, "a cancelled flow run could not be written");
                }
            });
        }
    }
}

/// A step's one attempt that did not work: its code, its message, and whether trying
/// again can help.
pub(super) struct Failure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    /// A template of `step` that could not be filled.
    pub(super) fn template(step: &Step, message: String) -> Failure {
        Failure {
            code: "template_error".into(),
            message: format!("step {}: {message}", step.name),
            retryable: false,
        }
    }
}

impl Gateway {
    /// A model call of a flow step, through the pipeline as `tenant` (`caller` names the
    /// run in the audit log): the answer as JSON, or why there is none. Its request id is
    /// added to `request_ids`.
    pub(super) async fn model_call(
        &self,
        tenant: &str,
        caller: &str,
        (endpoint, kind): (&'static str, ModelKind),
        body: Value,
        request_ids: &mut Vec<String>,
    ) -> Result<Value, Failure> {
        let request_id = format!("req_{}", random_id());
        request_ids.push(request_id.clone());
        let inbound = Inbound {
            request_id: request_id.into(),
            endpoint,
            tenant: tenant.to_string(),
            key_id: caller.into(),
            kind,
            fields: serde_json::from_value(body).unwrap_or_default(),
            directives: Directives::default(),
            session: None,
            pin: None,
            batch: false,
            arrival: Instant::now(),
        };
        let reply = self.serve(inbound).await.map_err(|refusal| {
            let status = refusal.status.as_u16();
            Failure {
                code: refusal.code.unwrap_or("refused").to_string(),
                message: refusal.message,
                retryable: status == 429 || status >= 500,
            }
        })?;
        let status = reply.status.as_u16();
        let answer = match reply.body {
            ReplyBody::Whole { bytes, .. } => {
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
            }
            ReplyBody::Stream(_) => Value::Null,
        };
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        Err(Failure {
            code: answer["error"]["code"]
                .as_str()
                .unwrap_or("upstream_error")
                .to_string(),
            message: answer["error"]["message"]
                .as_str()
                .unwrap_or("the model call failed")
                .to_string(),
            retryable: status == 429 || status >= 500,
        })
    }
}

impl Gateway {
    pub fn flows(&self) -> &[Flow] {
        &self.config.flows
    }

    pub fn flow_runs(&self) -> &Runs {
        &self.flow_runs
    }

    /// Runs flow `name` for `tenant` with `input` (an object naming every input the
    /// flow reads) to its end: completed, or failed at a step.
    pub async fn run_flow(
        &self,
        tenant: &str,
        name: &str,
        input: Value,
    ) -> Result<FlowRun, FlowError> {
        self.run_flow_observed(tenant, name, input, None).await
    }

    /// Why a run of flow `name` with `input` could not start, if anything.
    pub fn check_flow_input<'f>(
        &'f self,
        name: &str,
        input: &Value,
    ) -> Result<&'f Flow, FlowError> {
        let Some(flow) = self.config.flows.iter().find(|f| f.name == name) else {
            return Err(FlowError::UnknownFlow {
                name: name.to_string(),
                known: self.config.flows.iter().map(|f| f.name.clone()).collect(),
            });
        };
        let Value::Object(given) = &input else {
            return Err(FlowError::BadInput("input must be an object".into()));
        };
        if let Some(missing) = flow.inputs.iter().find(|i| !given.contains_key(*i)) {
            return Err(FlowError::BadInput(format!(
                "input.{missing} is missing; flow {name} reads {}",
                flow.inputs.join(", ")
            )));
        }
        Ok(flow)
    }

    /// The same, with the run as it is sent to `observer` when it starts, after each
    /// step, and when it ends (a streamed run's events).
    pub async fn run_flow_observed(
        &self,
        tenant: &str,
        name: &str,
        input: Value,
        observer: Option<mpsc::UnboundedSender<FlowRun>>,
    ) -> Result<FlowRun, FlowError> {
        let flow = self.check_flow_input(name, &input)?;
        let run = FlowRun {
            id: format!("run_{}", random_id()),
            flow: flow.name.clone(),
            tenant: tenant.to_string(),
            status: "running".into(),
            created_at: now_secs(),
            ended_at: None,
            input,
            steps: Vec::new(),
            output: None,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        if let Some(observer) = observer {
            self.flow_runs
                .observers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run.id.clone(), observer);
        }
        self.keep_run_as(&run, false).await;
        let unfinished = Unfinished {
            gateway: self,
            id: run.id.clone(),
            flow,
        };
        let run = self.drive(flow, run).await;
        drop(unfinished);
        Ok(run)
    }

    /// Runs a run's steps from the first it has not completed to its end, keeping it in
    /// the store after each. Stopped by shutdown, it stays `running` as of its last
    /// completed step, and resumes there at the next start.
    async fn drive(&self, flow: &Flow, run: FlowRun) -> FlowRun {
        let mut values: Map<String, Value> = match &run.input {
            Value::Object(given) => given.clone(),
            _ => Map::new(),
        };
        for done in &run.steps {
            if let Some(output) = &done.output {
                values.insert(done.name.clone(), output.clone());
            }
        }
        let (cancel, mut cancelled) = watch::channel(false);
        self.flow_runs
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id.clone(), cancel);
        let run = self
            .drive_steps(flow, run, &mut values, &mut cancelled)
            .await;
        self.flow_runs
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run.id);
        run
    }

    async fn drive_steps(
        &self,
        flow: &Flow,
        mut run: FlowRun,
        values: &mut Map<String, Value>,
        cancelled: &mut watch::Receiver<bool>,
    ) -> FlowRun {
        for step in flow.steps.iter().skip(run.steps.len()) {
            let stopping = |run: &FlowRun| {
                tracing::info!(run = %run.id, step = %step.name, "flow run stopped with the daemon; it resumes at the next start");
            };
            if self.shutdown.is_draining() {
                stopping(&run);
                return run;
            }
            // A cancel stops the step in flight: its model call is dropped, not waited for.
            let done = tokio::select! {
                done = self.run_step(&run.tenant, &run.id, step, values) => Some(done),
                _ = cancelled.wait_for(|c| *c) => None,
            };
            let Some(done) = done else {
                tracing::info!(run = %run.id, step = %step.name, "flow run cancelled");
                run.status = "cancelled".into();
                run.error = Some(cancelled_during(&step.name));
                run.ended_at = Some(now_secs());
                self.keep_run(&run).await;
                return run;
            };
            if self.shutdown.is_cut() {
                // Cut short by shutdown, not failed: it runs again after the restart.
                stopping(&run);
                return run;
            }
            run.prompt_tokens += done.prompt_tokens;
            run.completion_tokens += done.completion_tokens;
            let failed = done.error.clone();
            if let Some(output) = &done.output {
                values.insert(step.name.clone(), output.clone());
            }
            run.steps.push(done);
            if let Some(error) = failed {
                tracing::info!(run = %run.id, flow = %flow.name, step = %step.name, code = %error.code, "flow run failed");
                run.status = "failed".into();
                run.error = Some(error);
                break;
            }
            // After the last step, the run's end is kept at once instead.
            if run.steps.len() < flow.steps.len() {
                self.keep_run(&run).await;
            }
        }
        if run.error.is_none() {
            run.status = "completed".into();
            run.output = values.get(&flow.output).cloned();
        }
        run.ended_at = Some(now_secs());
        self.keep_run(&run).await;
        run
    }

    /// Asks run `id` of `tenant` to stop: the step in flight is dropped, no other
    /// starts, and the run ends `cancelled`. The run as it is now (`cancelling` until its
    /// driver has stopped it); an ended run is left as it ended.
    pub fn cancel_flow_run(&self, tenant: &str, id: &str) -> Option<FlowRun> {
        let mut run = self.flow_runs.get(tenant, id)?;
        if run.status != "running" {
            return Some(run);
        }
        if let Some(cancel) = self
            .flow_runs
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            let _ = cancel.send(true);
        }
        tracing::info!(run = %id, %tenant, "flow run cancel asked");
        // The driver may already have stopped the run (it runs on another thread and
        // was just told): answer with what it kept, not the copy read before.
        if let Some(kept) = self.flow_runs.lock().get_mut(id) {
            if kept.status == "running" {
                kept.status = "cancelling".into();
            }
            run = kept.clone();
        }
        Some(run)
    }

    /// Takes back the runs the store kept (at start) and resumes those still running,
    /// each from its first step not completed. A run whose flow is gone from the config
    /// ends failed, saying so.
    pub fn restore_flow_runs(self: &Arc<Self>, runs: Vec<FlowRun>) {
        for mut run in runs {
            if run.status != "running" {
                self.flow_runs.put(&run);
                continue;
            }
            let Some(flow) = self.config.flows.iter().find(|f| f.name == run.flow) else {
                run.status = "failed".into();
                run.ended_at = Some(now_secs());
                run.error = Some(StepError {
                    step: String::new(),
                    code: "flow_removed".into(),
                    message: format!(
                        "flow {} is no longer configured; the run cannot resume",
                        run.flow
                    ),
                });
                self.flow_runs.put(&run);
                let gateway = self.clone();
                tokio::spawn(async move { gateway.keep_run(&run).await });
                continue;
            };
            tracing::info!(run = %run.id, flow = %run.flow, from = run.steps.len(), "resuming a flow run");
            self.flow_runs.put(&run);
            let (gateway, flow) = (self.clone(), flow.clone());
            tokio::spawn(async move {
                gateway.drive(&flow, run).await;
            });
        }
    }

    /// Keeps a run as it is now, in memory and in the store (off the runtime threads).
    async fn keep_run(&self, run: &FlowRun) {
        self.keep_run_as(run, true).await;
    }

    /// Keeps a run; `durable`: flushed to disk before this returns (after a step, so
    /// a restart resumes after it), else written and flushed with the store's next
    /// periodic flush (a run just started: lost in a crash, it had done nothing).
    async fn keep_run_as(&self, run: &FlowRun, durable: bool) {
        self.flow_runs.put(run);
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let saved = run.clone();
        let written = tokio::task::spawn_blocking(move || {
            store.save_flow_run(&saved)?;
            if durable { store.flush() } else { Ok(()) }
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(run = %run.id, "a flow run's progress could not be written; it is kept in memory");
        }
    }

    /// One step, with its retries: what it made, or why it failed.
    async fn run_step(
        &self,
        tenant: &str,
        run: &str,
        step: &Step,
        values: &Map<String, Value>,
    ) -> StepRun {
        let started = Instant::now();
        let mut done = StepRun {
            name: step.name.clone(),
            kind: step.kind.name().into(),
            status: "completed".into(),
            output: None,
            attempts: 0,
            elapsed_ms: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            request_ids: Vec::new(),
            error: None,
        };
        // A paused tenant's run stops before its next step, whatever the step is.
        if self.admission.view(tenant).is_ok_and(|v| v.paused) {
            done.status = "failed".into();
            done.error = Some(StepError {
                step: step.name.clone(),
                code: "tenant_paused".into(),
                message: format!(
                    "tenant {tenant} is paused by an operator; the run stopped before step {}",
                    step.name
                ),
            });
            return done;
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            done.attempts += 1;
            let outcome = tokio::time::timeout(
                step.timeout,
                self.attempt(tenant, run, step, values, &mut done),
            )
            .await;
            let failure = match outcome {
                Ok(Ok(output)) => {
                    done.output = Some(output);
                    break;
                }
                Ok(Err(failure)) => failure,
                Err(_) => Failure {
                    code: "step_timeout".into(),
                    message: format!(
                        "step {} took longer than its timeout, {}",
                        step.name,
                        crate::config::format_duration(step.timeout)
                    ),
                    retryable: true,
                },
            };
            if failure.retryable && done.attempts <= step.retries {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            done.status = "failed".into();
            done.error = Some(StepError {
                step: step.name.clone(),
                code: failure.code,
                message: failure.message,
            });
            break;
        }
        done.elapsed_ms = started.elapsed().as_millis() as u64;
        done
    }

    /// One attempt at a step.
    async fn attempt(
        &self,
        tenant: &str,
        run: &str,
        step: &Step,
        values: &Map<String, Value>,
        done: &mut StepRun,
    ) -> Result<Value, Failure> {
        let template_failure = |message| Failure::template(step, message);
        let render = |template: &crate::flows::Template| {
            template
                .render(|name| values.get(name))
                .map_err(template_failure)
        };
        let caller = format!("flow:{run}");
        match &step.kind {
            StepKind::Template { template } => render(template).map(Value::String),
            StepKind::Tool { tool, arguments } => {
                let mut given = Map::new();
                for (name, arg) in arguments {
                    let value = match arg {
                        Arg::Literal(value) => value.clone(),
                        Arg::Template(template) => template
                            .value(|name| values.get(name))
                            .map_err(template_failure)?,
                    };
                    given.insert(name.clone(), value);
                }
                let given = Value::Object(given);
                let (name, tool) = super::tools::address(tool);
                let Some(toolbox) = super::tools::toolbox(&self.config, name) else {
                    return Err(Failure {
                        code: "tool_failed".into(),
                        message: format!("step {}: no tool {name} is declared", step.name),
                        retryable: false,
                    });
                };
                self.call_tool(
                    (tenant, &caller, &step.name),
                    toolbox.as_ref(),
                    tool,
                    &given,
                )
                .await
                .map_err(|why| Failure {
                    code: match why {
                        ToolError::Arguments(_) => "bad_tool_arguments",
                        ToolError::Failed(_) => "tool_failed",
                    }
                    .into(),
                    retryable: matches!(why, ToolError::Failed(_)),
                    message: format!("step {}: {why}", step.name),
                })
            }
            StepKind::Agent {
                model,
                system,
                prompt,
                tools,
                max_turns,
                budget_tokens,
                memory,
                memory_window,
            } => {
                let agent = super::agents::Agent {
                    model,
                    system: system.as_ref(),
                    prompt,
                    tools,
                    max_turns: *max_turns,
                    budget_tokens: *budget_tokens,
                    memory: memory.as_ref(),
                    memory_window: *memory_window,
                };
                self.run_agent((tenant, run, step), agent, values, done)
                    .await
            }
            StepKind::StoreGet { key } => {
                let key = render(key)?;
                Ok(self.flow_value(tenant, &key).unwrap_or(Value::Null))
            }
            StepKind::StorePut { key, value } => {
                let key = render(key)?;
                let value = value
                    .value(|name| values.get(name))
                    .map_err(template_failure)?;
                self.keep_flow_value(tenant, key, &value).await;
                Ok(value)
            }
            StepKind::Branch {
                value,
                cases,
                default,
            } => {
                let text = render(value)?;
                let steps = cases
                    .iter()
                    .find(|(test, _)| test.passes(&text))
                    .map_or(default.as_slice(), |(_, steps)| steps.as_slice());
                if steps.is_empty() {
                    return Ok(Value::String(String::new()));
                }
                let (last, _) = self
                    .run_block(tenant, run, steps, values.clone(), done)
                    .await?;
                Ok(last)
            }
            StepKind::Loop { max, until, steps } => {
                let mut previous = Value::String(String::new());
                for pass in 1..=*max {
                    let mut inside = values.clone();
                    inside.insert(step.name.clone(), previous);
                    inside.insert("pass".into(), json!(pass));
                    let (last, after) = self.run_block(tenant, run, steps, inside, done).await?;
                    previous = last;
                    if let Some((value, test)) = until {
                        let text = value
                            .render(|name| after.get(name))
                            .map_err(template_failure)?;
                        if test.passes(&text) {
                            break;
                        }
                    }
                }
                Ok(previous)
            }
            StepKind::Parallel {
                over,
                item_name,
                concurrency,
                steps,
            } => {
                let list = over
                    .value(|name| values.get(name))
                    .map_err(template_failure)?;
                let Value::Array(items) = list else {
                    return Err(Failure {
                        code: "not_a_list".into(),
                        message: format!(
                            "step {}: over is {}, not a list",
                            step.name,
                            kind_of(&list)
                        ),
                        retryable: false,
                    });
                };
                if items.len() > MAX_ITEMS {
                    return Err(Failure {
                        code: "too_many_items".into(),
                        message: format!(
                            "step {}: over holds {} items; a parallel step runs at most {MAX_ITEMS}",
                            step.name,
                            items.len()
                        ),
                        retryable: false,
                    });
                }
                let branches = items.into_iter().map(|item| {
                    let mut inside = values.clone();
                    inside.insert(item_name.clone(), item);
                    async move {
                        let mut part = StepRun::default();
                        let outcome = self.run_block(tenant, run, steps, inside, &mut part).await;
                        (outcome, part)
                    }
                });
                let ended: Vec<_> = futures_util::stream::iter(branches)
                    .buffered(*concurrency)
                    .collect()
                    .await;
                let mut outputs = Vec::with_capacity(ended.len());
                let mut failed = None;
                for (outcome, part) in ended {
                    done.prompt_tokens += part.prompt_tokens;
                    done.completion_tokens += part.completion_tokens;
                    done.request_ids.extend(part.request_ids);
                    match outcome {
                        Ok((last, _)) => outputs.push(last),
                        Err(failure) => failed = failed.or(Some(failure)),
                    }
                }
                match failed {
                    Some(failure) => Err(failure),
                    None => Ok(Value::Array(outputs)),
                }
            }
            StepKind::Embed {
                model,
                source,
                split,
                collection,
            } => {
                let documents = match source {
                    Source::Files(path) => self.load_documents(step, path).await?,
                    Source::Url(url) => self.fetch_documents(step, url).await?,
                    Source::Text(template) => vec![text_document(render(template)?)],
                };
                let tokenizer = self
                    .config
                    .model(model)
                    .map_or(crate::domain::TokenizerKind::Heuristic, |m| m.tokenizer);
                let split = split.clone();
                let rows = tokio::task::spawn_blocking(move || chunks(documents, split, tokenizer))
                    .await
                    .unwrap_or_default();
                let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
                let embedded = self
                    .embed_texts((tenant, &caller), model, &texts, &mut done.request_ids)
                    .await?;
                done.prompt_tokens += embedded.prompt_tokens;
                let Some(collection) = collection else {
                    return Ok(json!({"chunks": rows.len(), "embeddings": embedded.vectors}));
                };
                let count = rows.len();
                let rows = rows.into_iter().zip(embedded.vectors).collect();
                self.put_rows(tenant, collection, rows)
                    .await
                    .map_err(|message| Failure {
                        code: "collection_error".into(),
                        message: format!("step {}: {message}", step.name),
                        retryable: false,
                    })?;
                Ok(json!({
                    "chunks": count,
                    "collection": collection,
                    "rows": self.collections().len(tenant, collection),
                }))
            }
            StepKind::Retrieve {
                model,
                collection,
                query,
                top_k,
                filter,
            } => {
                let query = render(query)?;
                let query = std::slice::from_ref(&query);
                let embedded = self
                    .embed_texts((tenant, &caller), model, query, &mut done.request_ids)
                    .await?;
                done.prompt_tokens += embedded.prompt_tokens;
                let vector = embedded.vectors.into_iter().next().unwrap_or_default();
                let Some(hits) = self
                    .search(tenant, collection, vector, *top_k, filter.clone())
                    .await
                else {
                    let names = self.collections().names(tenant);
                    return Err(Failure {
                        code: "collection_not_found".into(),
                        message: format!(
                            "step {}: there is no collection \"{collection}\" of this tenant's; it has {}",
                            step.name,
                            if names.is_empty() {
                                "none (an embed step with a collection makes one)".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                        retryable: false,
                    });
                };
                let text = hits
                    .iter()
                    .map(|h| h.row.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n");
                let chunks: Vec<Value> = hits
                    .into_iter()
                    .map(|h| {
                        json!({
                            "id": h.row.id,
                            "text": h.row.text,
                            "score": h.score,
                            "metadata": h.row.metadata,
                        })
                    })
                    .collect();
                Ok(json!({"text": text, "chunks": chunks}))
            }
            StepKind::Llm {
                model,
                system,
                prompt,
                max_tokens,
            } => {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(json!({"role": "system", "content": render(system)?}));
                }
                messages.push(json!({"role": "user", "content": render(prompt)?}));
                let mut body = json!({"model": model, "messages": messages});
                if let Some(max) = max_tokens {
                    body["max_tokens"] = json!(max);
                }
                let chat = ("/v1/chat/completions", ModelKind::Chat);
                let answer = self
                    .model_call(tenant, &caller, chat, body, &mut done.request_ids)
                    .await?;
                let usage = &answer["usage"];
                done.prompt_tokens += usage["prompt_tokens"].as_u64().unwrap_or(0);
                done.completion_tokens += usage["completion_tokens"].as_u64().unwrap_or(0);
                let text = answer["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default();
                Ok(Value::String(text.to_string()))
            }
        }
    }
}

impl Gateway {
    /// The documents an `embed` step loads, read off the runtime threads.
    async fn load_documents(&self, step: &Step, path: &str) -> Result<Vec<Document>, Failure> {
        let failure = |message: String| Failure {
            code: "load_failed".into(),
            message: format!("step {}: {message}", step.name),
            retryable: false,
        };
        let Some(root) = self.config.flow_documents.clone() else {
            return Err(failure("no documents directory is configured".into()));
        };
        let path = path.to_string();
        tokio::task::spawn_blocking(move || loaders::load(&root, &path))
            .await
            .map_err(|e| failure(e.to_string()))?
            .map_err(failure)
    }
}

impl Gateway {
    /// The documents of a page an `embed` step loads from an allowed URL. Redirects are
    /// not followed (one could lead off the allowed URLs); 64 MiB at most.
    async fn fetch_documents(&self, step: &Step, url: &str) -> Result<Vec<Document>, Failure> {
        let failure = |message: String, retryable: bool| Failure {
            code: "load_failed".into(),
            message: format!("step {}: {url}: {message}", step.name),
            retryable,
        };
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let client = CLIENT.get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        });
        let mut response = client
            .get(url)
            .send()
            .await
            .map_err(|e| failure(crate::telemetry::root_cause(&e), true))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failure(
                format!("answered {status}"),
                status.is_server_error() || status.as_u16() == 429,
            ));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failure(crate::telemetry::root_cause(&e), true))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > loaders::MAX_LOAD_BYTES {
                return Err(failure("larger than 64 MiB".into(), false));
            }
        }
        let text = String::from_utf8(body).map_err(|_| failure("not UTF-8 text".into(), false))?;
        loaders::from_url(url, &content_type, text).map_err(|m| failure(m, false))
    }
}

/// A text given to an `embed` step as a document, named by its digest so that
/// embedding the same text again replaces its rows.
fn text_document(text: String) -> Document {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut metadata = Map::new();
    metadata.insert("source".into(), Value::String("input".into()));
    Document {
        source: format!("text:{name}"),
        text,
        metadata,
        markdown: false,
    }
}

/// Documents cut into rows to embed: a document whole without a split; markdown by
/// its headings when the split says so (other kinds then by tokens). Each row's id is
/// its document's source and its place (`guide.md#3`), its metadata the document's with
/// `chunk` and, under a heading, `heading`.
fn chunks(
    documents: Vec<Document>,
    split: Option<Split>,
    tokenizer: crate::domain::TokenizerKind,
) -> Vec<Row> {
    let count = |text: &str| crate::admission::estimate::count(tokenizer, text);
    let mut rows = Vec::new();
    for document in documents {
        let pieces = match &split {
            None => vec![splitters::Chunk {
                text: document.text.clone(),
                heading: None,
            }],
            Some(split) => splitters::split(&document.text, document.markdown, split, &count),
        };
        for (i, piece) in pieces.into_iter().enumerate() {
            if piece.text.trim().is_empty() {
                continue;
            }
            let mut metadata = document.metadata.clone();
            metadata.insert("chunk".into(), json!(i));
            if let Some(heading) = piece.heading {
                metadata.insert("heading".into(), Value::String(heading));
            }
            rows.push(Row {
                id: format!("{}#{i}", document.source),
                text: piece.text,
                metadata,
            });
        }
    }
    rows
}

impl Gateway {
    /// Runs `steps` in order with `values` (the block's own copy: what they make stays
    /// inside), charging what they use to `done`. The last output, and the values as the
    /// block left them. A step that fails ends the block with its failure.
    fn run_block<'a>(
        &'a self,
        tenant: &'a str,
        run: &'a str,
        steps: &'a [Step],
        mut values: Map<String, Value>,
        done: &'a mut StepRun,
    ) -> BoxFuture<'a, Result<Ended, Failure>> {
        Box::pin(async move {
            let mut last = Value::Null;
            for step in steps {
                let inner = self.run_step(tenant, run, step, &values).await;
                done.prompt_tokens += inner.prompt_tokens;
                done.completion_tokens += inner.completion_tokens;
                done.request_ids.extend(inner.request_ids);
                if let Some(error) = inner.error {
                    let message = if error.message.starts_with("step ") {
                        error.message
                    } else {
                        format!("step {}: {}", step.name, error.message)
                    };
                    return Err(Failure {
                        code: error.code,
                        message,
                        // Retried where it failed, as that step says.
                        retryable: false,
                    });
                }
                last = inner.output.unwrap_or(Value::Null);
                values.insert(step.name.clone(), last.clone());
            }
            Ok((last, values))
        })
    }

    /// A value the tenant's flows kept under `key`.
    pub(super) fn flow_value(&self, tenant: &str, key: &str) -> Option<Value> {
        self.flow_runs
            .values()
            .get(&(tenant.to_string(), key.to_string()))
            .cloned()
    }

    /// Keeps a value for the tenant's flows, in memory and in the store.
    pub(super) async fn keep_flow_value(&self, tenant: &str, key: String, value: &Value) {
        self.flow_runs
            .values()
            .insert((tenant.to_string(), key.clone()), value.clone());
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let (tenant, saved) = (tenant.to_string(), value.clone());
        let written = tokio::task::spawn_blocking(move || {
            store.save_flow_value(&tenant, &key, &saved)?;
            store.flush()
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("a flow's stored value could not be written; it is kept in memory");
        }
    }
}

/// How a block of steps ended: its last output, and the values as it left them.
type Ended = (Value, Map<String, Value>);

/// What a JSON value is, for a message.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Gateway {
    /// Runs as the console shows them: every one in progress and the `ended` latest
    /// that ended, newest first.
    pub fn flow_run_views(&self, ended: usize) -> Vec<crate::domain::snapshot::FlowRunView> {
        use crate::domain::snapshot::{FlowRunView, FlowStepView};
        let now = now_secs();
        let flows = &self.config.flows;
        let mut shown = 0;
        self.flow_runs
            .all()
            .into_iter()
            .filter(|r| {
                let running = matches!(r.status.as_str(), "running" | "cancelling");
                running || {
                    shown += 1;
                    shown <= ended
                }
            })
            .map(|r| {
                let total = flows
                    .iter()
                    .find(|f| f.name == r.flow)
                    .map_or(r.steps.len(), |f| f.steps.len());
                let running = matches!(r.status.as_str(), "running" | "cancelling");
                let current = running
                    .then(|| flows.iter().find(|f| f.name == r.flow))
                    .flatten()
                    .and_then(|f| f.steps.get(r.steps.len()))
                    .map(|s| s.name.clone());
                let steps = r
                    .steps
                    .iter()
                    .map(|s| FlowStepView {
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        status: s.status.clone(),
                        attempts: s.attempts,
                        elapsed_ms: s.elapsed_ms,
                        tokens: s.prompt_tokens + s.completion_tokens,
                        calls: s.request_ids.len(),
                        error: s
                            .error
                            .as_ref()
                            .map(|e| format!("{}: {}", e.code, e.message)),
                    })
                    .collect();
                FlowRunView {
                    elapsed_secs: r.ended_at.unwrap_or(now).saturating_sub(r.created_at),
                    tokens: r.prompt_tokens + r.completion_tokens,
                    error: r
                        .error
                        .as_ref()
                        .map(|e| format!("{} at {}: {}", e.code, e.step, e.message)),
                    steps_done: r.steps.len(),
                    steps_total: total,
                    current,
                    steps,
                    id: r.id,
                    tenant: r.tenant,
                    flow: r.flow,
                    status: r.status,
                    created_at: r.created_at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &str) -> FlowRun {
        FlowRun {
            id: "run_test".into(),
            flow: "qa".into(),
            tenant: "tenant-a".into(),
            status: status.into(),
            created_at: 1,
            ended_at: None,
            input: Value::Null,
            steps: Vec::new(),
            output: None,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    #[test]
    fn a_run_left_by_its_caller_ends_cancelled_saying_why() {
        let mut left = run("running");
        assert!(end_left(&mut left, "summary"));
        assert_eq!(left.status, "cancelled");
        assert!(left.ended_at.is_some());
        let error = left.error.expect("an error");
        assert_eq!(
            (error.step.as_str(), error.code.as_str()),
            ("summary", "client_gone")
        );

        // Cancelled first, and the caller gone before the driver saw it: not stuck
        // `cancelling`, and the cancel is what it says.
        let mut asked = run("cancelling");
        assert!(end_left(&mut asked, "answer"));
        assert_eq!(asked.status, "cancelled");
        let error = asked.error.expect("an error");
        assert_eq!(
            (error.step.as_str(), error.code.as_str()),
            ("answer", "cancelled")
        );
        assert_eq!(error.message, "the run was cancelled during step answer");
    }

    #[test]
    fn a_run_that_ended_is_left_as_it_ended() {
        for status in ["completed", "failed", "cancelled"] {
            let mut ended = run(status);
            assert!(!end_left(&mut ended, "summary"));
            assert_eq!(ended, run(status));
        }
    }
}
