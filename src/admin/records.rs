//! The admin API's records: tenant keys made at run time, and the audit log.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Admin, error, operator, parse, parse_optional};
use crate::domain::records::{AuditKind, AuditQuery, KeyRecord};
use crate::gateway::{KeyError, NewKey};
use crate::telemetry::now_ms;

fn key_error(e: KeyError) -> Response {
    let status = match e {
        KeyError::UnknownTenant(_) | KeyError::UnknownKey(_) => StatusCode::NOT_FOUND,
        KeyError::Revoked(_) => StatusCode::CONFLICT,
        KeyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, "key_error", e.to_string())
}

/// A key as listed: never its digest.
fn public(k: &KeyRecord) -> serde_json::Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "state": k.state(now_ms()),
        "created_ms": k.created_ms,
        "expires_ms": k.expires_ms,
        "revoked_ms": k.revoked_ms,
        "replaces": k.replaces,
    })
}

fn made(new: NewKey) -> Response {
    let mut body = public(&new.record);
    body["key"] = json!(new.secret);
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `GET /admin/keys[?tenant=NAME]`
pub(super) async fn list(
    State(admin): State<Admin>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let keys: Vec<_> = admin
        .gateway
        .keys(params.get("tenant").map(String::as_str))
        .iter()
        .map(public)
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    tenant: String,
    #[serde(default)]
    name: String,
    /// How long the key works, e.g. "30d"; forever when left out.
    #[serde(default)]
    expires: Option<String>,
}

fn duration(field: &str, text: Option<&str>) -> Result<Option<std::time::Duration>, String> {
    text.map(crate::config::parse_duration)
        .transpose()
        .map_err(|m| format!("{field}: {m}"))
}

/// The furthest a key's expiry may be set.
const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(36_500 * 86_400);

/// `POST /admin/keys` with `{"tenant": "acme", "name": "ci", "expires": "30d"}`: the key
/// is in the answer, once.
pub(super) async fn create(
    State(admin): State<Admin>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: NewKeyRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let expires = match duration("expires", request.expires.as_deref()) {
        Ok(Some(d)) if d.is_zero() => {
            let m = "expires: a key that expires at once is no key; leave it out for one that never expires";
            return error(StatusCode::BAD_REQUEST, "invalid_body", m.into());
        }
        Ok(Some(d)) if d > MAX_EXPIRY => {
            let m =
                "expires: at most 36500d (100 years); leave it out for a key that never expires";
            return error(StatusCode::BAD_REQUEST, "invalid_body", m.into());
        }
        Ok(d) => d,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_body", m),
    };
    match admin
        .gateway
        .create_key(&request.tenant, &request.name, expires, &operator(&headers))
        .await
    {
        Ok(new) => made(new),
        Err(e) => key_error(e),
    }
}

/// `POST /admin/keys/{id}/revoke`
pub(super) async fn revoke(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    match admin.gateway.revoke_key(&id, &operator(&headers)).await {
        Ok(record) => Json(public(&record)).into_response(),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old key keeps working, e.g. "1h"; it stops at once when left out.
    #[serde(default)]
    grace: Option<String>,
}

/// `POST /admin/keys/{id}/rotate` with an optional `{"grace": "1h"}`: a new key (in the
/// answer, once) for the same tenant and name.
pub(super) async fn rotate(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: RotateRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let grace = match duration("grace", request.grace.as_deref()) {
        Ok(d) => d,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_body", m),
    };
    match admin
        .gateway
        .rotate_key(&id, grace, &operator(&headers))
        .await
    {
        Ok(new) => made(new),
        Err(e) => key_error(e),
    }
}

/// A point in time as a query gives it: milliseconds since the epoch, or a duration ago
/// ("1h").
fn moment(field: &str, text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    crate::config::parse_duration(text)
        .map(|ago| now_ms().saturating_sub(ago.as_millis() as u64))
        .map_err(|m| format!("{field}: {m} (or milliseconds since the epoch)"))
}

/// `GET /admin/audit?since=1h&until=…&tenant=acme&kind=request&status=429&limit=100`,
/// as JSON, or one record per line with `format=jsonl`.
pub(super) async fn audit(
    State(admin): State<Admin>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let time = |field: &str| params.get(field).map(|t| moment(field, t)).transpose();
    let (since_ms, until_ms) = match (time("since"), time("until")) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(m), _) | (_, Err(m)) => return error(StatusCode::BAD_REQUEST, "invalid_query", m),
    };
    let kind = match params.get("kind").map(String::as_str) {
        None => None,
        Some("request") => Some(AuditKind::Request),
        Some("operator") => Some(AuditKind::Operator),
        Some("tool") => Some(AuditKind::Tool),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("kind: {other} is not a kind; use request or operator"),
            );
        }
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 1000,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "limit: must be a whole number (0 for no limit)".into(),
            );
        }
    };
    let query = AuditQuery {
        since_ms,
        until_ms,
        tenant: params.get("tenant").cloned(),
        kind,
        status: params.get("status").cloned(),
        limit,
    };
    let records = match admin.gateway.read_audit(query).await {
        Ok(records) => records,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_error",
                format!("the audit log cannot be read: {e}"),
            );
        }
    };
    if params.get("format").is_some_and(|f| f == "jsonl") {
        let mut lines = String::new();
        for record in &records {
            lines.push_str(&serde_json::to_string(record).unwrap_or_default());
            lines.push('\n');
        }
        return (
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            lines,
        )
            .into_response();
    }
    Json(json!({ "records": records })).into_response()
}
