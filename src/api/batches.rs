//! `/v1/batches`: OpenAI's Batches API, run by the gateway itself (`gateway::batches`).
//! A tenant sees only its own batches.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::completions::read_fields;
use super::{Caller, Refusal};
use crate::domain::records::BatchRecord;
use crate::gateway::Gateway;

/// OpenAI's batch object.
fn object(batch: &BatchRecord) -> Value {
    let errors = (!batch.errors.is_empty()).then(|| {
        let data: Vec<Value> = batch
            .errors
            .iter()
            .map(|message| json!({"code": "invalid_request", "message": message, "param": null, "line": null}))
            .collect();
        json!({"object": "list", "data": data})
    });
    json!({
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
    })
}

/// `POST /v1/batches`.
pub async fn create(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    let server = &gateway.config().server;
    let fields = read_fields(body, server.max_body, server.body_timeout).await?;
    let text = |name: &'static str| -> Result<String, Refusal> {
        fields
            .get(name)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .ok_or_else(|| Refusal::bad_parameter(name, format!("'{name}' is required (a string)")))
    };
    let metadata = fields
        .get("metadata")
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .filter(|m| !m.is_null());
    let batch = gateway
        .create_batch(
            &tenant,
            &text("input_file_id")?,
            &text("endpoint")?,
            &text("completion_window")?,
            metadata,
        )
        .await
        .map_err(Refusal::batch)?;
    tracing::info!(%tenant, batch = %batch.id, lines = batch.total, "batch created");
    Ok(axum::Json(object(&batch)).into_response())
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let batch = gateway
        .batches()
        .get(&tenant, &id)
        .ok_or_else(|| Refusal::batch(crate::gateway::batches::BatchError::NotFound(id)))?;
    Ok(axum::Json(object(&batch)).into_response())
}

/// `POST /v1/batches/{id}/cancel`.
pub async fn cancel(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let batch = gateway
        .cancel_batch(Some(&tenant), &id, &format!("tenant {tenant}"))
        .await
        .map_err(Refusal::batch)?;
    Ok(axum::Json(object(&batch)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches`: newest first, `limit` at a time (default 20), after the id `after`.
pub async fn list(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response, Refusal> {
    let mut batches = gateway.batches().list(&tenant);
    if let Some(after) = &query.after {
        let start = batches
            .iter()
            .position(|b| &b.id == after)
            .map_or(0, |i| i + 1);
        batches.drain(..start);
    }
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let has_more = batches.len() > limit;
    batches.truncate(limit);
    let data: Vec<Value> = batches.iter().map(object).collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "first_id": batches.first().map(|b| b.id.clone()),
        "last_id": batches.last().map(|b| b.id.clone()),
        "has_more": has_more,
    }))
    .into_response())
}
