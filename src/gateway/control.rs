//! The operator's side of the gateway: the snapshot the console and the admin API read,
//! and every control (`act`, and the methods it calls), each logged and recorded as an
//! event with who made it.

use std::time::Duration;

use super::Gateway;
use super::batches::BatchError;
use crate::admission::ControlError;
use crate::domain::Limits;
use crate::domain::records::{AuditKind, AuditQuery, AuditRecord};
use crate::domain::snapshot::answers;
use crate::domain::snapshot::{
    Action, AuditView, EventKind, InstanceDetail, Snapshot, TenantDetail, TenantView, Totals,
};

/// Audit records a tenant's drill-down shows.
const DETAIL_AUDIT_RECORDS: usize = 50;
/// Batches that ended shown in a snapshot, besides those still running.
const SNAPSHOT_ENDED_BATCHES: usize = 20;
use crate::router::RouteControlError;

impl Gateway {
    /// The whole gateway now, for the console and `GET /admin/snapshot`. Each part is read
    /// under its own short lock; the request path never waits for a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let reading = self.sinks.meter.read(120);
        let queued_by_tenant = self.scheduler.queued_by_tenant();
        let tenants = self
            .admission
            .views()
            .into_iter()
            .map(|t| self.dress(t, &queued_by_tenant))
            .collect::<Vec<_>>();
        let regions = self.router.views();
        let in_flight = regions
            .iter()
            .flat_map(|r| &r.instances)
            .map(|i| u64::from(i.in_flight))
            .sum();
        Snapshot {
            taken_at_ms: crate::telemetry::now_ms(),
            uptime_secs: self.started.elapsed().as_secs(),
            totals: Totals {
                requests: reading.requests,
                errors: reading.errors,
                tokens: reading.tokens,
                requests_per_sec: reading.requests_per_sec,
                tokens_per_sec: reading.tokens_per_sec,
                error_rate: reading.error_rate,
                refusal_rate: reading.refusal_rate,
                queued: self.scheduler.queued() as u64,
                in_flight,
            },
            regions,
            tenants,
            levels: self.scheduler.levels(),
            streams: self.hub.views(),
            batches: self.batches.views(SNAPSHOT_ENDED_BATCHES),
            flow_runs: self.flow_run_views(SNAPSHOT_ENDED_BATCHES),
            events: self.events.recent(200),
            queue_history: reading.queue_history,
            latency: self.sinks.latency.views(),
            errors_by_code: self.sinks.meter.codes(),
            cache: self.cache.view(),
            audit: AuditView {
                enabled: self.sinks.audit.policy().enabled,
                written: self.sinks.audit.written(),
                backlog: self.sinks.audit.backlog(),
                dropped: self.sinks.audit.dropped(),
            },
            persistence_degraded: self.persistence.degraded(),
            cluster: self.shared.get().map(|shared| shared.view()),
        }
    }

    /// A tenant's view from admission, with what the scheduler, the latency recorder,
    /// the overrides and the meter know of it.
    fn dress(
        &self,
        mut t: TenantView,
        queued_by_tenant: &std::collections::HashMap<String, u64>,
    ) -> TenantView {
        t.queued = queued_by_tenant.get(&t.name).copied().unwrap_or(0);
        t.p99_ms = self
            .sinks
            .meter
            .tenant_if_seen(&t.name)
            .and_then(|m| m.recent_percentiles())
            .map(|p| p.1);
        t.changed = self.tenant_override(&t.name).changed();
        let used = self.sinks.meter.tenant_reading(&t.name);
        t.requests_last_minute = used.requests_per_min;
        t.tokens_last_minute = used.tokens_per_min;
        t.refused = used.refused;
        t
    }

    /// One tenant in depth: as the snapshot shows it, its last five minutes second by
    /// second, and its newest audit records.
    pub async fn tenant_detail(&self, name: &str) -> Result<TenantDetail, String> {
        let tenant = self.admission.view(name).map_err(|e| e.to_string())?;
        let tenant = self.dress(tenant, &self.scheduler.queued_by_tenant());
        let seconds = self
            .sinks
            .meter
            .tenant_if_seen(name)
            .map(|m| m.seconds())
            .unwrap_or_default();
        let query = AuditQuery {
            tenant: Some(name.to_string()),
            limit: DETAIL_AUDIT_RECORDS,
            ..AuditQuery::default()
        };
        // A failing disk costs the records, not the rest of the picture.
        let (audit, audit_unreadable) = match self.read_audit(query).await {
            Ok(records) => (records, None),
            Err(e) => (
                Vec::new(),
                Some(format!("the audit log cannot be read: {e}")),
            ),
        };
        Ok(TenantDetail {
            tenant,
            requests_per_sec: seconds.requests,
            tokens_per_sec: seconds.tokens,
            refused_per_sec: seconds.refused,
            refused_by_code_per_sec: seconds.refused_by_code,
            e2e_p50_ms: seconds.e2e_p50_ms,
            e2e_p99_ms: seconds.e2e_p99_ms,
            queue_p99_ms: seconds.queue_p99_ms,
            audit,
            audit_unreadable,
        })
    }

    /// One instance's last five minutes, second by second.
    pub fn instance_detail(&self, name: &str) -> Result<InstanceDetail, String> {
        self.router.instance_detail(name).ok_or_else(|| {
            format!("no instance is named {name}; `switchyard ctl regions` lists them")
        })
    }

    /// Drops one tenant's kept answers, or all of them.
    fn purge_cache(&self, tenant: Option<&str>) -> Result<String, String> {
        let Some(tenant) = tenant else {
            let n = self.cache.purge(None) as u64;
            return Ok(format!("the cache is purged: {} dropped", answers(n)));
        };
        if self.config.tenants.iter().all(|t| t.name != tenant) {
            return Err(format!(
                "no tenant is named {tenant}; `switchyard ctl tenants` lists them"
            ));
        }
        if self.cache.policy().scope == crate::domain::CacheScope::Shared {
            return Err(format!(
                "the cache is shared by all tenants (cache.scope = \"shared\"), so {tenant} has no answers of its own; purge the whole cache instead"
            ));
        }
        let n = self.cache.purge(Some(tenant)) as u64;
        Ok(format!(
            "{tenant}'s cache is purged: {} dropped",
            answers(n)
        ))
    }

    /// Carries out an operator's action and records it; the answer says what happened.
    pub async fn act(&self, action: &Action, actor: &str) -> Result<String, String> {
        if let Action::CancelBatch { id } = action {
            // Audited as batches are (batch.cancel), with the batch's progress.
            let outcome = self
                .cancel_batch(None, id, actor)
                .await
                .map_err(|e| match e {
                    BatchError::NotFound(id) => format!("no batch is named {id}"),
                    other => format!("the batch's new state could not be stored: {other:?}"),
                });
            let outcome = outcome.map(|b| {
                format!(
                    "batch {id} of {} stops: {} of {} lines done, the rest not run",
                    b.tenant,
                    b.completed + b.failed,
                    b.total
                )
            });
            let said = match &outcome {
                Ok(done) => done.clone(),
                Err(why) => format!("{} refused: {why}", action.describe()),
            };
            self.events.record(EventKind::Operator, Some(actor), said);
            return outcome;
        }
        let before = self.state_of(action);
        let version = self.operator_version();
        let mut outcome = self.carry_out(action);
        // An action that finds things already as it would leave them changes nothing and
        // is no change on the record (a drain may still move its deadline).
        let redrain = matches!(
            action,
            Action::DrainRegion { .. } | Action::DrainInstance { .. }
        );
        if outcome.is_ok() && !redrain && before.is_some() && before == self.state_of(action) {
            return Ok(format!("{}: nothing to change", action.describe()));
        }
        // A change that lasts is kept, and shared with the cluster, before it is
        // acknowledged.
        if outcome.is_ok() && self.remember(action) {
            if let Err(error) = self.keep_overrides().await {
                outcome = Err(format!(
                    "{} took effect but could not be kept, and will not survive a restart: {error}",
                    action.describe()
                ));
            } else if let Err(why) = self.share_overrides(action, version).await {
                outcome = Err(format!(
                    "{} took effect here but not on the other replicas: {why}",
                    action.describe()
                ));
            }
        }
        self.sinks.audit.record(AuditRecord {
            at_ms: crate::telemetry::now_ms(),
            kind: Some(AuditKind::Operator),
            actor: Some(actor.to_string()),
            action: Some(action.name()),
            target: action.target().map(str::to_owned),
            tenant: self.tenant_of(action),
            before,
            after: self.state_of(action),
            outcome: Some(match &outcome {
                Ok(done) => done.clone(),
                Err(why) => format!("{} refused: {why}", action.describe()),
            }),
            ..AuditRecord::default()
        });
        match &outcome {
            Ok(done) => self
                .events
                .record(EventKind::Operator, Some(actor), done.clone()),
            Err(why) => self.events.record(
                EventKind::Operator,
                Some(actor),
                format!("{} refused: {why}", action.describe()),
            ),
        }
        outcome
    }

    /// The tenant an action concerns, so a tenant's audit query finds it.
    fn tenant_of(&self, action: &Action) -> Option<String> {
        match action {
            Action::SetTier { tenant, .. }
            | Action::SetLimits { tenant, .. }
            | Action::PauseTenant { tenant }
            | Action::ResumeTenant { tenant }
            | Action::ResetBudget { tenant } => Some(tenant.clone()),
            Action::PurgeCache { tenant } => tenant.clone(),
            Action::KillStream { id } => self.hub.get(id).map(|log| log.meta.tenant.clone()),
            _ => None,
        }
    }

    /// The state an action changes, as JSON, for the audit record's before and after.
    fn state_of(&self, action: &Action) -> Option<serde_json::Value> {
        let region = |name: &str| {
            let views = self.router.views();
            let view = views.into_iter().find(|r| r.name == name)?;
            Some(serde_json::json!({ "state": view.state }))
        };
        let instance = |name: &str| {
            let views = self.router.views();
            let view = views
                .into_iter()
                .flat_map(|r| r.instances)
                .find(|i| i.name == name)?;
            Some(serde_json::json!({ "health": view.health }))
        };
        match action {
            Action::DrainRegion { region: name, .. } | Action::UndrainRegion { region: name } => {
                region(name)
            }
            Action::DrainInstance { instance: name, .. }
            | Action::UndrainInstance { instance: name }
            | Action::EjectInstance { instance: name }
            | Action::RestoreInstance { instance: name } => instance(name),
            Action::SetTier { tenant, .. }
            | Action::SetLimits { tenant, .. }
            | Action::PauseTenant { tenant }
            | Action::ResumeTenant { tenant }
            | Action::ResetBudget { tenant } => {
                let view = self.admission.view(tenant).ok()?;
                Some(serde_json::json!({
                    "tier": view.tier,
                    "paused": view.paused,
                    "limits": view.limits,
                    "day_tokens": view.day.tokens,
                    "month_tokens": view.month.tokens,
                }))
            }
            Action::PurgeCache { tenant } => {
                let cache = self.cache.view();
                let entries = match tenant {
                    None => cache.entries,
                    Some(t) => cache
                        .scopes
                        .iter()
                        .find(|s| &s.scope == t)
                        .map_or(0, |s| s.entries),
                };
                Some(serde_json::json!({ "entries": entries }))
            }
            Action::KillStream { id } => {
                let live = self.hub.views().into_iter().any(|s| &s.id == id);
                Some(serde_json::json!({ "live": live }))
            }
            // Carried out and audited apart (`act`), as every batch change is.
            Action::CancelBatch { .. } => None,
            Action::CancelFlowRun { id } => self
                .flow_runs
                .all()
                .into_iter()
                .find(|r| &r.id == id)
                .map(|r| {
                    serde_json::json!({
                        "tenant": r.tenant,
                        "flow": r.flow,
                        "status": r.status,
                        "steps_done": r.steps.len(),
                    })
                }),
        }
    }

    pub(super) fn carry_out(&self, action: &Action) -> Result<String, String> {
        let deadline = |secs: &Option<f64>| secs.and_then(|s| Duration::try_from_secs_f64(s).ok());
        match action {
            Action::CancelBatch { id } => Err(format!(
                "batch {id}: batches are cancelled by Gateway::act, not here"
            )),
            Action::DrainRegion {
                region,
                deadline_secs,
            } => self
                .drain(Some(region), None, deadline(deadline_secs))
                .map(|n| {
                    format!("{region} is draining; {n} in flight finish or are cut at the deadline")
                })
                .map_err(|e| e.to_string()),
            Action::DrainInstance {
                instance,
                deadline_secs,
            } => self
                .drain(None, Some(instance), deadline(deadline_secs))
                .map(|n| format!("{instance} is draining; {n} in flight"))
                .map_err(|e| e.to_string()),
            Action::UndrainRegion { region } => self
                .undrain(Some(region), None)
                .map(|()| format!("{region} takes requests again"))
                .map_err(|e| e.to_string()),
            Action::UndrainInstance { instance } => self
                .undrain(None, Some(instance))
                .map(|()| format!("{instance} takes requests again"))
                .map_err(|e| e.to_string()),
            Action::EjectInstance { instance } => self
                .eject(instance)
                .map(|()| format!("{instance} is out of rotation"))
                .map_err(|e| e.to_string()),
            Action::RestoreInstance { instance } => self
                .restore(instance)
                .map(|()| format!("{instance} is back in rotation"))
                .map_err(|e| e.to_string()),
            Action::SetTier { tenant, tier } => self
                .set_tier(tenant, tier)
                .map(|()| format!("{tenant} is now in tier {tier}"))
                .map_err(|e| e.to_string()),
            Action::SetLimits { tenant, limits } => self
                .set_limits(tenant, limits)
                .map(|l| format!("{tenant}'s limits: {}", l.summary()))
                .map_err(|e| e.to_string()),
            Action::PauseTenant { tenant } => self
                .pause(tenant)
                .map(|n| format!("{tenant} is paused; {n} waiting requests refused"))
                .map_err(|e| e.to_string()),
            Action::ResumeTenant { tenant } => self
                .resume(tenant)
                .map(|()| format!("{tenant} is resumed"))
                .map_err(|e| e.to_string()),
            Action::ResetBudget { tenant } => self
                .reset_budget(tenant)
                .map(|()| format!("{tenant}'s budget is reset"))
                .map_err(|e| e.to_string()),
            Action::PurgeCache { tenant } => self.purge_cache(tenant.as_deref()),
            Action::KillStream { id } => {
                if self.hub.kill(id) {
                    Ok(format!("stream {id} is ended"))
                } else {
                    Err(format!("no live stream is named {id}"))
                }
            }
            Action::CancelFlowRun { id } => {
                let Some(run) = self.flow_runs.all().into_iter().find(|r| &r.id == id) else {
                    return Err(format!("no flow run is named {id}"));
                };
                // Running when asked: its driver may have stopped it already by the
                // time the answer is read.
                match self.cancel_flow_run(&run.tenant, id) {
                    Some(now)
                        if run.status == "running"
                            && matches!(now.status.as_str(), "cancelling" | "cancelled") =>
                    {
                        Ok(format!(
                            "flow run {id} of {} stops: {} of its steps done",
                            run.tenant,
                            run.steps.len()
                        ))
                    }
                    Some(now) => Err(format!("flow run {id} has ended ({})", now.status)),
                    None => Err(format!("no flow run is named {id}")),
                }
            }
        }
    }

    /// Moves a tenant to another tier; its waiting requests move with it.
    pub fn set_tier(&self, tenant: &str, tier: &str) -> Result<(), ControlError> {
        let before = self.admission.tier_of(tenant);
        self.admission.set_tier(tenant, tier)?;
        let moved = self.scheduler.move_tenant(tenant, tier);
        tracing::info!(%tenant, before = ?before, after = %tier, moved, "tenant tier changed");
        Ok(())
    }

    /// Overrides some of a tenant's limits; returns the limits now in force.
    pub fn set_limits(&self, tenant: &str, change: &Limits) -> Result<Limits, ControlError> {
        let before = self.admission.view(tenant)?.limits;
        let after = self.admission.set_limits(tenant, change)?;
        tracing::info!(%tenant, ?before, ?after, "tenant limits changed");
        self.batches.wake();
        Ok(after)
    }

    /// Refuses the tenant's new requests and the ones waiting; returns how many waited.
    pub fn pause(&self, tenant: &str) -> Result<usize, ControlError> {
        self.admission.set_paused(tenant, true)?;
        let refused = self.scheduler.reject_tenant(tenant);
        tracing::info!(%tenant, refused_waiting = refused, "tenant paused");
        Ok(refused)
    }

    pub fn resume(&self, tenant: &str) -> Result<(), ControlError> {
        self.admission.set_paused(tenant, false)?;
        tracing::info!(%tenant, "tenant resumed");
        self.batches.wake();
        Ok(())
    }

    /// Drains a region (`region`) or one instance: no new requests; sessions move after
    /// the grace period; what still runs at the deadline is cut. Returns requests in flight.
    pub fn drain(
        &self,
        region: Option<&str>,
        instance: Option<&str>,
        deadline: Option<Duration>,
    ) -> Result<u32, RouteControlError> {
        let targets = self.router.targets(region, instance)?;
        let in_flight = self.router.drain(&targets, deadline);
        let deadline = deadline.unwrap_or(self.router.policy().drain_deadline);
        tracing::info!(region = ?region, instance = ?instance, in_flight, ?deadline, "drain started");
        Ok(in_flight)
    }

    pub fn undrain(
        &self,
        region: Option<&str>,
        instance: Option<&str>,
    ) -> Result<(), RouteControlError> {
        let targets = self.router.targets(region, instance)?;
        self.router.undrain(&targets);
        tracing::info!(region = ?region, instance = ?instance, "drain ended");
        Ok(())
    }

    /// Takes an instance out of rotation until restored.
    pub fn eject(&self, instance: &str) -> Result<(), RouteControlError> {
        let targets = self.router.targets(None, Some(instance))?;
        self.router.eject(&targets);
        tracing::info!(%instance, "instance ejected by operator");
        Ok(())
    }

    /// Ends an instance's manual or automatic ejection and cool-down.
    pub fn restore(&self, instance: &str) -> Result<(), RouteControlError> {
        let targets = self.router.targets(None, Some(instance))?;
        self.router.restore(&targets);
        tracing::info!(%instance, "instance restored by operator");
        Ok(())
    }

    pub fn reset_budget(&self, tenant: &str) -> Result<(), ControlError> {
        let before = self.admission.view(tenant)?;
        self.admission.reset_budget(tenant)?;
        tracing::info!(%tenant, day_tokens = before.day.tokens, month_tokens = before.month.tokens, "tenant budget reset");
        self.batches.wake();
        Ok(())
    }
}
