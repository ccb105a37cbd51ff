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
/// answers the run, completed or failed at a step.
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
    let run = gateway
        .run_flow(&tenant, &name, input)
        .await
        .map_err(Refusal::flow)?;
    Ok(axum::Json(object(&run)).into_response())
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
