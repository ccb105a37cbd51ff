//! `/v1/flows`: the configured flows, and runs of them (`gateway::flows`). A tenant sees
//! only its own runs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::completions::read_fields;
use super::{Caller, Refusal};
use crate::domain::records::FlowRun;
use crate::gateway::Gateway;

/// A run as clients see it.
fn object(run: &FlowRun) -> Value {
    let mut value = serde_json::to_value(run).unwrap_or_default();
    value["object"] = json!("flow.run");
    value["usage"] = json!({
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
    });
    if let Some(fields) = value.as_object_mut() {
        fields.remove("prompt_tokens");
        fields.remove("completion_tokens");
    }
    value
}

/// `GET /v1/flows`: what can be run, with the inputs each reads.
pub async fn list_flows(State(gateway): State<Arc<Gateway>>, Caller(_): Caller) -> Response {
    let data: Vec<Value> = gateway
        .flows()
        .iter()
        .map(|f| {
            let steps: Vec<Value> = f
                .steps
                .iter()
                .map(|s| json!({"name": s.name, "kind": s.kind.name()}))
                .collect();
            json!({"object": "flow", "name": f.name, "description": f.description,
                "inputs": f.inputs, "steps": steps, "output": f.output})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/flows/{name}/runs` with `{"input": {...}}`: runs the flow to its end and
/// answers the run, completed or failed at a step. With `"stream": true`, the answer is
/// server-sent events as the run goes: `run.started`, a `step.completed` or
/// `step.failed` per step, then `run.completed`, `run.failed` or `run.cancelled` with the
/// whole run. A client that leaves cancels the run, streamed or not.
pub async fn run(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    let server = &gateway.config().server;
    let fields = read_fields(body, server.max_body, server.body_timeout).await?;
    let input = match fields.get("input") {
        Some(raw) => serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null),
        None => json!({}),
    };
    let stream = fields
        .get("stream")
        .is_some_and(|raw| raw.get().trim() == "true");
    if stream {
        gateway
            .check_flow_input(&name, &input)
            .map_err(Refusal::flow)?;
        return Ok(streamed(gateway, tenant, name, input));
    }
    let run = gateway
        .run_flow(&tenant, &name, input)
        .await
        .map_err(Refusal::flow)?;
    Ok(axum::Json(object(&run)).into_response())
}

/// A run as server-sent events: the run drives the response body, so a client that
/// leaves drops it (and the run ends `cancelled`).
fn streamed(gateway: Arc<Gateway>, tenant: String, name: String, input: Value) -> Response {
    let (observer, states) = tokio::sync::mpsc::unbounded_channel();
    let run = Box::pin(async move {
        gateway
            .run_flow_observed(&tenant, &name, input, Some(observer))
            .await
    });
    let state = Events {
        run,
        states,
        started: false,
        steps_sent: 0,
        end_sent: false,
        ended: false,
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        if state.ended {
            return None;
        }
        let mut out = String::new();
        tokio::select! {
            biased;
            Some(run) = state.states.recv() => state.frames(&run, &mut out),
            ended = &mut state.run => {
                state.ended = true;
                while let Ok(run) = state.states.try_recv() {
                    state.frames(&run, &mut out);
                }
                if let Ok(run) = ended {
                    state.frames(&run, &mut out);
                }
            }
        }
        Some((Ok::<_, std::convert::Infallible>(out), state))
    });
    super::completions::event_stream(axum::body::Body::from_stream(frames))
}

type Driving = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<FlowRun, crate::gateway::flows::FlowError>> + Send>,
>;

/// A streamed run: the run itself, its states as they come, and what was sent.
struct Events {
    run: Driving,
    states: tokio::sync::mpsc::UnboundedReceiver<FlowRun>,
    started: bool,
    steps_sent: usize,
    end_sent: bool,
    ended: bool,
}

impl Events {
    /// The events a new state of the run adds to what was sent. The last state comes
    /// twice (from the observer and as the run's result); it is written once.
    fn frames(&mut self, run: &FlowRun, out: &mut String) {
        let mut event = |kind: &str, data: Value| {
            out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        };
        if !self.started {
            self.started = true;
            event(
                "run.started",
                json!({"type": "run.started", "run": object(run)}),
            );
        }
        for step in run.steps.iter().skip(self.steps_sent) {
            let kind = if step.error.is_some() {
                "step.failed"
            } else {
                "step.completed"
            };
            event(kind, json!({"type": kind, "run_id": run.id, "step": step}));
        }
        self.steps_sent = self.steps_sent.max(run.steps.len());
        let ended = !matches!(run.status.as_str(), "running" | "cancelling");
        if ended && !self.end_sent {
            self.end_sent = true;
            let kind = format!("run.{}", run.status);
            event(&kind, json!({"type": kind, "run": object(run)}));
        }
    }
}

/// `GET /v1/flows/runs/{id}`.
pub async fn retrieve(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let run = gateway
        .flow_runs()
        .get(&tenant, &id)
        .ok_or_else(|| Refusal::unknown_run(&id))?;
    Ok(axum::Json(object(&run)).into_response())
}

/// `POST /v1/flows/runs/{id}/cancel`: the run stops; it answers `cancelling`, then
/// reads `cancelled`.
pub async fn cancel(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let run = gateway
        .cancel_flow_run(&tenant, &id)
        .ok_or_else(|| Refusal::unknown_run(&id))?;
    Ok(axum::Json(object(&run)).into_response())
}

/// `GET /v1/flows/runs`: the tenant's runs, newest first.
pub async fn list_runs(State(gateway): State<Arc<Gateway>>, Caller(tenant): Caller) -> Response {
    let data: Vec<Value> = gateway
        .flow_runs()
        .list(&tenant)
        .iter()
        .map(object)
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
