//! The admin API, on its own listener: tenants' live state and the operator's controls
//! (tier, limits, pause, resume, budget reset) and the scheduler's queues.
//!
//! Every call needs the admin token as a bearer token; it is compared as a SHA-256 digest
//! in constant time, and a tenant key is never accepted. Every change is logged with the
//! operator who made it (`x-switchyard-operator`, as `switchyard ctl` sends it).

pub mod client;
mod records;

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::admission::{ControlError, TenantView};
use crate::auth::hash_key;
use crate::domain::snapshot::Action;
use crate::domain::{KeyHash, Limits};
use crate::gateway::Gateway;
use crate::scheduler::LevelView;

#[derive(Clone)]
struct Admin {
    gateway: Arc<Gateway>,
    token: KeyHash,
}

pub fn router(gateway: Arc<Gateway>, token: &str) -> Router {
    let state = Admin {
        gateway,
        token: hash_key(token),
    };
    Router::new()
        .route("/admin/tenants", get(tenants))
        .route("/admin/tenants/{name}", get(tenant))
        .route("/admin/tenants/{name}/detail", get(tenant_detail))
        .route("/admin/instances/{name}/detail", get(instance_detail))
        .route("/admin/tenants/{name}/tier", post(set_tier))
        .route("/admin/tenants/{name}/limits", post(set_limits))
        .route("/admin/tenants/{name}/pause", post(pause))
        .route("/admin/tenants/{name}/resume", post(resume))
        .route("/admin/tenants/{name}/reset-budget", post(reset_budget))
        .route("/admin/queues", get(queues))
        .route("/admin/snapshot", get(snapshot))
        .route("/admin/events", get(events))
        .route("/admin/actions", post(act))
        .route("/admin/streams/{id}", get(watch_stream))
        .route("/admin/keys", get(records::list).post(records::create))
        .route("/admin/keys/{id}/revoke", post(records::revoke))
        .route("/admin/keys/{id}/rotate", post(records::rotate))
        .route("/admin/audit", get(records::audit))
        .route("/admin/cache", get(cache))
        .route("/admin/cache/purge", post(purge_cache))
        .route("/admin/batches", get(batches))
        .route("/admin/flows/runs", get(flow_runs))
        .route("/admin/batches/{id}/cancel", post(cancel_batch))
        .route("/metrics", get(metrics))
        .route("/admin/regions", get(regions))
        .route("/admin/regions/{name}/drain", post(drain_region))
        .route("/admin/regions/{name}/undrain", post(undrain_region))
        .route("/admin/instances/{name}/drain", post(drain_instance))
        .route("/admin/instances/{name}/undrain", post(undrain_instance))
        .route("/admin/instances/{name}/eject", post(eject))
        .route("/admin/instances/{name}/restore", post(restore))
        .fallback(|req: Request| async move {
            error(
                StatusCode::NOT_FOUND,
                "unknown_url",
                format!("no admin endpoint at {} {}", req.method(), req.uri().path()),
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn(catch_panics))
        .with_state(state)
}

/// Turns a panic in an admin handler into a 500 instead of a dropped connection (and
/// keeps it from the console's terminal hook), as the public API does.
async fn catch_panics(req: Request, next: axum::middleware::Next) -> Response {
    use futures_util::FutureExt;
    let path = req.uri().path().to_owned();
    let handler = crate::telemetry::RequestScope::new(|| next.run(req));
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => crate::api::error::openai_shaped(response, "admin_error").await,
        Err(panic) => {
            let what = crate::telemetry::panic_text(panic.as_ref());
            tracing::error!(%path, panic = %what, "admin handler panicked");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the admin API failed while handling {path}; it has been logged"),
            )
        }
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({
        "error": { "message": message, "type": "admin_error", "param": null, "code": code }
    });
    (status, Json(body)).into_response()
}

fn control_error(e: ControlError) -> Response {
    let status = match e {
        ControlError::UnknownTenant(_) => StatusCode::NOT_FOUND,
        ControlError::UnknownTier(..) | ControlError::BadLimits(_) => StatusCode::BAD_REQUEST,
    };
    error(status, "invalid_control", e.to_string())
}

async fn authorize(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer)
        .unwrap_or_default();
    if presented.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing_admin_token",
            "the admin API needs the admin token as `Authorization: Bearer <token>`".into(),
        );
    }
    if !bool::from(hash_key(presented).0.ct_eq(&admin.token.0)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "the admin token is not valid (tenant API keys are not admin tokens)".into(),
        );
    }
    next.run(req).await
}

/// Who made a change: the operator `switchyard ctl` names, or just "admin".
fn operator(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-switchyard-operator")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "admin".into())
}

async fn tenants(State(admin): State<Admin>) -> Response {
    let mut tenants: Vec<TenantView> = admin.gateway.admission().views();
    for t in &mut tenants {
        t.changed = admin.gateway.tenant_override(&t.name).changed();
    }
    Json(json!({ "tenants": tenants })).into_response()
}

async fn tenant(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.gateway.admission().view(&name) {
        Ok(mut view) => {
            view.changed = admin.gateway.tenant_override(&name).changed();
            Json(view).into_response()
        }
        Err(e) => control_error(e),
    }
}

/// One tenant in depth: its view, the last five minutes per second, its newest audit
/// records (the console's drill-down).
async fn tenant_detail(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.gateway.tenant_detail(&name).await {
        Ok(detail) => Json(detail).into_response(),
        Err(why) => not_found(why),
    }
}

async fn instance_detail(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.gateway.instance_detail(&name) {
        Ok(detail) => Json(detail).into_response(),
        Err(why) => not_found(why),
    }
}

fn not_found(why: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"message": why, "type": "invalid_request_error", "param": null, "code": "not_found"}})),
    )
        .into_response()
}

async fn queues(State(admin): State<Admin>) -> Response {
    let levels: Vec<LevelView> = admin.gateway.scheduler().levels();
    Json(json!({ "levels": levels })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierChange {
    tier: String,
}

/// Parses a JSON body into `T`, or answers 400 naming what was wrong.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the request body is not what this endpoint takes: {e}"),
        ))
    })
}

/// Like `parse`, for endpoints whose body may be left out: no body is `T::default()`.
fn parse_optional<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(body)
    }
}

/// Carries out an action on a tenant (through `Gateway::act`, so it is recorded and
/// kept) and answers with the tenant's state afterwards.
async fn changed(admin: &Admin, name: &str, who: &str, action: &Action) -> Response {
    if let Err(e) = admin.gateway.admission().view(name) {
        return control_error(e);
    }
    if let Err(why) = admin.gateway.act(action, who).await {
        return error(StatusCode::BAD_REQUEST, "invalid_control", why);
    }
    match admin.gateway.admission().view(name) {
        Ok(view) => Json(view).into_response(),
        Err(e) => control_error(e),
    }
}

async fn set_tier(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let change: TierChange = match parse(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let action = Action::SetTier {
        tenant: name.clone(),
        tier: change.tier,
    };
    changed(&admin, &name, &operator(&headers), &action).await
}

async fn set_limits(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let change: Limits = match parse(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let action = Action::SetLimits {
        tenant: name.clone(),
        limits: change,
    };
    changed(&admin, &name, &operator(&headers), &action).await
}

async fn pause(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::PauseTenant {
        tenant: name.clone(),
    };
    changed(&admin, &name, &operator(&headers), &action).await
}

async fn resume(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::ResumeTenant {
        tenant: name.clone(),
    };
    changed(&admin, &name, &operator(&headers), &action).await
}

async fn snapshot(State(admin): State<Admin>) -> Response {
    Json(admin.gateway.snapshot()).into_response()
}

/// Server-sent events: a `snapshot` event every second and an `event` for each event as
/// it happens. A console attached remotely lives on this.
async fn events(State(admin): State<Admin>) -> Response {
    use axum::response::sse::{Event as Sse, KeepAlive};
    let gateway = admin.gateway.clone();
    let live = gateway.events().subscribe();
    let stream = futures_util::stream::unfold(
        (
            gateway,
            live,
            tokio::time::interval(std::time::Duration::from_secs(1)),
        ),
        |(gateway, mut live, mut tick)| async move {
            let event = tokio::select! {
                _ = tick.tick() => {
                    let data = serde_json::to_string(&gateway.snapshot()).unwrap_or_default();
                    Sse::default().event("snapshot").data(data)
                }
                received = live.recv() => match received {
                    Ok(event) => Sse::default()
                        .event("event")
                        .data(serde_json::to_string(&event).unwrap_or_default()),
                    Err(_) => Sse::default().comment("events skipped"),
                },
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (gateway, live, tick),
            ))
        },
    );
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /admin/streams/{id}`: an operator follows any tenant's stream, from the start or
/// after `Last-Event-ID`, like the tenant's own watchers do.
async fn watch_stream(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(log) = admin.gateway.hub().get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("no stream {id} is live or recently finished"),
        );
    };
    let from = crate::api::resume_from(&headers);
    // Operators are not counted against a tenant's watchers.
    let Ok(reader) = admin.gateway.hub().watch(&log, from, None) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an operator's watcher was refused".into(),
        );
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8",
        )],
        axum::body::Body::from_stream(reader),
    )
        .into_response()
}

/// `POST /admin/actions` with an `Action` as JSON, e.g. `{"action":"drain_region","region":"us-east"}`.
async fn act(
    State(admin): State<Admin>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let action: Action = match parse(&body) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match admin.gateway.act(&action, &operator(&headers)).await {
        Ok(done) => Json(json!({ "ok": done })).into_response(),
        Err(why) => error(StatusCode::BAD_REQUEST, "action_refused", why),
    }
}

async fn cache(State(admin): State<Admin>) -> Response {
    Json(admin.gateway.cache().view()).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Only this tenant's answers; all when left out.
    tenant: Option<String>,
}

/// `POST /admin/cache/purge`, optionally with `{"tenant": "acme"}`.
async fn purge_cache(
    State(admin): State<Admin>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: PurgeRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let action = Action::PurgeCache {
        tenant: request.tenant,
    };
    match admin.gateway.act(&action, &operator(&headers)).await {
        Ok(done) => {
            Json(json!({ "ok": done, "cache": admin.gateway.cache().view() })).into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, "action_refused", why),
    }
}

/// Every tenant's batches with their progress.
async fn batches(State(admin): State<Admin>) -> Response {
    let batches = admin.gateway.batches().views(usize::MAX);
    Json(json!({ "batches": batches })).into_response()
}

/// Every tenant's flow runs, newest first, with the step each is at.
async fn flow_runs(State(admin): State<Admin>) -> Response {
    let flows = admin.gateway.flows();
    let runs: Vec<serde_json::Value> = admin
        .gateway
        .flow_runs()
        .all()
        .iter()
        .map(|run| {
            let steps = flows
                .iter()
                .find(|f| f.name == run.flow)
                .map_or(run.steps.len(), |f| f.steps.len());
            json!({
                "id": run.id, "tenant": run.tenant, "flow": run.flow, "status": run.status,
                "steps_done": run.steps.iter().filter(|s| s.status == "completed").count(),
                "steps": steps,
                "tokens": run.prompt_tokens + run.completion_tokens,
                "created_at": run.created_at, "ended_at": run.ended_at, "error": run.error,
            })
        })
        .collect();
    Json(json!({ "runs": runs })).into_response()
}

/// Cancels a batch, whosever it is; audited with the operator's name.
async fn cancel_batch(
    State(admin): State<Admin>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    use crate::gateway::batches::{BatchError, progress};
    match admin
        .gateway
        .cancel_batch(None, &id, &operator(&headers))
        .await
    {
        Ok(batch) => {
            let held = admin.gateway.batches().held(&batch.id);
            Json(json!({ "batch": progress(&batch, held) })).into_response()
        }
        Err(BatchError::NotFound(id)) => error(
            StatusCode::NOT_FOUND,
            "unknown_batch",
            format!("no batch {id}"),
        ),
        Err(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "batch_not_stored",
            format!("{other:?}"),
        ),
    }
}

/// Prometheus text format.
async fn metrics(State(admin): State<Admin>) -> Response {
    let mut text = crate::telemetry::prometheus(&admin.gateway.snapshot());
    admin.gateway.histograms().render(&mut text);
    admin.gateway.batches().render_metrics(&mut text);
    render_workers(&mut text, &admin.gateway.worker_connections());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Open client connections by worker: the spread the listener keeps (`Workers::take`).
fn render_workers(out: &mut String, open: &[usize]) {
    use std::fmt::Write;
    if open.is_empty() {
        return;
    }
    out.push_str("# HELP switchyard_worker_connections Client connections open on each connection worker (server.workers).\n");
    out.push_str("# TYPE switchyard_worker_connections gauge\n");
    for (worker, n) in open.iter().enumerate() {
        let _ = writeln!(
            out,
            "switchyard_worker_connections{{worker=\"{worker}\"}} {n}"
        );
    }
}

async fn regions(State(admin): State<Admin>) -> Response {
    Json(json!({ "regions": admin.gateway.router().views() })).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// When to cut what still runs, e.g. "60s"; default `routing.drain_deadline`.
    deadline: Option<String>,
}

/// Carries out an action on a region or instance (through `Gateway::act`) and answers
/// with the requests that were in flight there and every region's state afterwards.
async fn routed(
    admin: &Admin,
    who: &str,
    action: &Action,
    region: Option<&str>,
    instance: Option<&str>,
) -> Response {
    if let Err(e) = admin.gateway.router().targets(region, instance) {
        return error(StatusCode::NOT_FOUND, "unknown_target", e.to_string());
    }
    let in_flight: u32 = admin
        .gateway
        .router()
        .views()
        .iter()
        .filter(|r| region.is_none_or(|name| r.name == name))
        .flat_map(|r| &r.instances)
        .filter(|i| instance.is_none_or(|name| i.name == name))
        .map(|i| i.in_flight)
        .sum();
    match admin.gateway.act(action, who).await {
        Ok(_) => Json(json!({
            "in_flight": in_flight,
            "regions": admin.gateway.router().views(),
        }))
        .into_response(),
        Err(why) => error(StatusCode::BAD_REQUEST, "invalid_control", why),
    }
}

async fn drain(
    admin: Admin,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
    region: Option<String>,
    instance: Option<String>,
) -> Response {
    let request: DrainRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let deadline = match request
        .deadline
        .as_deref()
        .map(crate::config::parse_duration)
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(m)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("deadline: {m}"),
            );
        }
    };
    let deadline_secs = deadline.map(|d| d.as_secs_f64());
    let action = match (&region, &instance) {
        (Some(region), _) => Action::DrainRegion {
            region: region.clone(),
            deadline_secs,
        },
        (None, instance) => Action::DrainInstance {
            instance: instance.clone().unwrap_or_default(),
            deadline_secs,
        },
    };
    routed(
        &admin,
        &operator(&headers),
        &action,
        region.as_deref(),
        instance.as_deref(),
    )
    .await
}

async fn drain_region(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    drain(admin, headers, body, Some(name), None).await
}

async fn drain_instance(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    drain(admin, headers, body, None, Some(name)).await
}

async fn undrain_region(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::UndrainRegion {
        region: name.clone(),
    };
    routed(&admin, &operator(&headers), &action, Some(&name), None).await
}

async fn undrain_instance(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::UndrainInstance {
        instance: name.clone(),
    };
    routed(&admin, &operator(&headers), &action, None, Some(&name)).await
}

async fn eject(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::EjectInstance {
        instance: name.clone(),
    };
    routed(&admin, &operator(&headers), &action, None, Some(&name)).await
}

async fn restore(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::RestoreInstance {
        instance: name.clone(),
    };
    routed(&admin, &operator(&headers), &action, None, Some(&name)).await
}

async fn reset_budget(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let action = Action::ResetBudget {
        tenant: name.clone(),
    };
    changed(&admin, &name, &operator(&headers), &action).await
}
