//! The one recorder of a request: its audit record, its latencies and its counters, the
//! same for whole answers, cache hits, followers, refusals and streams. A whole answer
//! is recorded as `serve` returns; a stream's recorder moves into its account and is
//! recorded when the stream ends, however it ends.

use crate::clock;
use crate::telemetry::Map;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::audit::Audit;
use crate::domain::Usage;
use crate::domain::records::{AuditKind, AuditRecord};
use crate::telemetry::histograms::{Histograms, Labels, LatencySeries};
use crate::telemetry::latency::{Latency, Metric, ScopeSeries};
use crate::telemetry::meter::{Meter, Tally};

use super::Gateway;

/// Where every request's recording goes, shared by all of them: one count a request
/// to take and give back, not one for each (each is an atomic on a line every worker
/// writes).
pub(crate) struct Sinks {
    pub audit: Arc<Audit>,
    pub meter: Arc<Meter>,
    pub latency: Arc<Latency>,
    pub histograms: Arc<Histograms>,
    pub routes: Routes,
}

pub(crate) struct Recorder {
    /// The audit record, filled as the request goes (none when the audit log is off).
    record: Option<AuditRecord>,
    sinks: Arc<Sinks>,
    arrival: Instant,
    tenant: String,
    /// The tenant's own counters (none before authentication).
    tenant_meter: Option<Arc<Tally>>,
    keep_content: bool,
    /// The series of the route taken, once routed.
    route: Option<Arc<RouteSeries>>,
    /// OpenTelemetry's `gen_ai.operation.name`: "chat", "embeddings" or "text_completion".
    operation: &'static str,
    /// The instance that answered, to record its end-to-end latency.
    instance: Option<Arc<Tally>>,
    first_token: bool,
    done: bool,
}

impl Recorder {
    /// Starts recording a request of `tenant` that arrived at `arrival`.
    pub fn new(
        gateway: &Gateway,
        request_id: &Arc<str>,
        endpoint: &'static str,
        arrival: Instant,
        tenant: Option<(&str, &Arc<str>)>,
    ) -> Recorder {
        let sinks = gateway.sinks();
        let record = sinks.audit.policy().enabled.then(|| AuditRecord {
            at_ms: crate::telemetry::now_ms(),
            kind: Some(AuditKind::Request),
            request_id: Some(request_id.clone()),
            endpoint: Some(endpoint.into()),
            tenant: tenant.map(|(name, _)| name.to_string()),
            key_id: tenant.map(|(_, key)| key.clone()),
            ..AuditRecord::default()
        });
        let tenant_meter = tenant.map(|(name, _)| sinks.meter.tenant(name));
        if let Some(meter) = &tenant_meter {
            sinks.meter.request();
            meter.request();
        }
        Recorder {
            record,
            sinks: sinks.clone(),
            arrival,
            tenant: tenant.map(|(name, _)| name.to_string()).unwrap_or_default(),
            tenant_meter,
            keep_content: false,
            route: None,
            operation: match endpoint {
                "/v1/embeddings" => "embeddings",
                "/v1/completions" => "text_completion",
                _ => "chat",
            },
            instance: None,
            first_token: false,
            done: false,
        }
    }

    /// Fills the audit record, when there is one.
    pub fn note(&mut self, fill: impl FnOnce(&mut AuditRecord)) {
        if let Some(record) = self.record.as_mut() {
            fill(record);
        }
    }

    /// Keep prompts and answers on the audit record (the tenant opted in).
    pub fn keep_content(&mut self, keep: bool) {
        self.keep_content = keep;
    }

    pub fn keeps_content(&self) -> bool {
        self.keep_content && self.record.is_some()
    }

    /// Answered without going upstream: from the cache, or by an identical request.
    pub fn hit(&mut self, route: &str, usage: Option<Usage>) {
        self.note(|r| {
            r.cache = Some("hit".into());
            r.route = Some(route.into());
        });
        if let Some(usage) = usage {
            self.used(usage, false);
        }
    }

    /// Admitted after `queued`; went to `instance` in `region`, whose tally is
    /// `instance_tally`.
    pub fn routed(
        &mut self,
        (region, instance, reason): (&Arc<str>, &Arc<str>, &Arc<str>),
        model: &str,
        tier: &str,
        queued: Duration,
        instance_tally: Arc<Tally>,
    ) {
        self.note(|r| {
            r.region = Some(region.clone());
            r.instance = Some(instance.clone());
            r.route = Some(reason.clone());
        });
        let place = (&**region, model, tier, self.operation);
        let sinks = &self.sinks;
        self.route = Some(sinks.routes.get(place, &sinks.latency, &sinks.histograms));
        self.instance = Some(instance_tally);
        self.record_latency(Metric::Queue, queued);
        if let Some(meter) = &self.tenant_meter {
            meter.queued(queued);
        }
    }

    /// A stream's first content arrived.
    pub fn first_token(&mut self) {
        if !self.first_token {
            self.first_token = true;
            self.record_latency(Metric::Ttft, clock::since(self.arrival));
        }
    }

    /// What the request used (as charged; `capped` when the upstream reported more than
    /// was plausible), counted and put on the record.
    pub fn used(&mut self, usage: Usage, capped: bool) {
        self.sinks.meter.tokens(usage.total());
        if let Some(meter) = &self.tenant_meter {
            meter.tokens(usage.total());
        }
        if let Some(route) = &self.route {
            route
                .series
                .tokens_used(self.operation, usage.prompt_tokens, usage.completion_tokens);
        }
        self.note(|r| {
            r.prompt_tokens = Some(usage.prompt_tokens);
            r.completion_tokens = Some(usage.completion_tokens);
            r.estimated = Some(usage.estimated);
            r.usage_capped = capped.then_some(true);
        });
    }

    /// An upstream answered after `upstream` of the request's time: end to end and the
    /// gateway's own overhead (total less queue and upstream), when one is known.
    pub fn answered(&mut self, queued: Duration, upstream: Option<Duration>) {
        let total = clock::since(self.arrival);
        self.record_latency(Metric::EndToEnd, total);
        if let Some(upstream) = upstream {
            let overhead = total.saturating_sub(queued).saturating_sub(upstream);
            self.record_latency(Metric::Overhead, overhead);
        }
        if let Some(meter) = &self.tenant_meter {
            meter.answered(total);
            meter.recent(total);
        }
        if let Some(instance) = &self.instance {
            instance.recent(total);
        }
    }

    fn record_latency(&self, metric: Metric, value: Duration) {
        if let Some(route) = &self.route {
            route.series.observe(metric.name(), value);
            self.sinks.latency.record_in(&route.scopes, metric, value);
        }
    }

    /// Ends the request: the client got `status`, with `error` as its code (a refusal, or
    /// the error event that ended a stream). Writes the audit record and counts errors.
    pub fn finish(&mut self, status: u16, error: Option<&'static str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(code) = error.filter(|_| status >= 400) {
            self.sinks.meter.code(code);
            if let Some(meter) = &self.tenant_meter {
                meter.code(code);
            }
        }
        if status >= 500 {
            self.sinks.meter.error();
        }
        if !self.tenant.is_empty() {
            let model = self.route.as_ref().map_or("", |r| r.labels.model.as_str());
            let code = error.filter(|_| status >= 400).unwrap_or("");
            self.sinks.histograms.answered(&self.tenant, model, code);
        }
        let latency_ms = clock::since(self.arrival).as_millis() as u64;
        if let Some(mut record) = self.record.take() {
            record.status = Some(status);
            record.error = error.map(str::to_string);
            record.latency_ms = Some(latency_ms);
            self.sinks.audit.record(record);
        }
    }

    /// Hands the recording over to whoever finishes the request (a stream's account),
    /// leaving this one with nothing to record.
    pub fn hand_over(&mut self) -> Recorder {
        Recorder {
            record: self.record.take(),
            sinks: self.sinks.clone(),
            arrival: self.arrival,
            tenant: std::mem::take(&mut self.tenant),
            tenant_meter: self.tenant_meter.take(),
            keep_content: self.keep_content,
            route: self.route.take(),
            operation: self.operation,
            instance: self.instance.take(),
            first_token: self.first_token,
            done: std::mem::replace(&mut self.done, true),
        }
    }
}

/// Where one route's requests are recorded: the console's `region:…`, `model:…` and
/// `tier:…` latency scopes, and `/metrics`' labels and series.
pub(crate) struct RouteSeries {
    scopes: [Arc<ScopeSeries>; 3],
    labels: Labels,
    series: LatencySeries,
    operation: &'static str,
}

/// Every route's series, found once per (region, model, tier, operation) rather than
/// formatted, hashed and looked up in three maps on every request.
#[derive(Default)]
pub(crate) struct Routes(RwLock<Map<u64, Vec<Arc<RouteSeries>>>>);

impl Routes {
    fn get(
        &self,
        (region, model, tier, operation): (&str, &str, &str, &'static str),
        latency: &Latency,
        histograms: &Histograms,
    ) -> Arc<RouteSeries> {
        // A bucket's key; the labels are compared within it.
        let key = foldhash::fast::FixedState::default().hash_one((region, model, tier, operation));
        let same = |r: &&Arc<RouteSeries>| {
            r.operation == operation
                && r.labels.region == region
                && r.labels.model == model
                && r.labels.tier == tier
        };
        let known = self.0.read().ok();
        if let Some(route) = known.as_ref().and_then(|m| m.get(&key)?.iter().find(same)) {
            return route.clone();
        }
        drop(known);
        let labels = Labels {
            region: region.to_string(),
            model: model.to_string(),
            tier: tier.to_string(),
        };
        let route = Arc::new(RouteSeries {
            scopes: [
                latency.scope(&format!("region:{region}")),
                latency.scope(&format!("model:{model}")),
                latency.scope(&format!("tier:{tier}")),
            ],
            series: histograms.latency_series(&labels, operation),
            labels,
            operation,
        });
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        let routes = all.entry(key).or_default();
        match routes.iter().find(same) {
            Some(raced) => raced.clone(),
            None => {
                routes.push(route.clone());
                route
            }
        }
    }
}

impl Drop for Recorder {
    /// A request dropped before it finished: its client went away (or a shutdown cut
    /// the connection). Recorded as nginx does, 499.
    fn drop(&mut self) {
        self.finish(499, Some("request_cancelled"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_route_is_found_once_and_kept_apart_from_its_neighbours() {
        let (latency, histograms) = (Latency::default(), Histograms::default());
        let routes = Routes::default();
        let pro = routes.get(("us-east", "gpt-4o", "pro", "chat"), &latency, &histograms);
        let again = routes.get(("us-east", "gpt-4o", "pro", "chat"), &latency, &histograms);
        assert!(
            Arc::ptr_eq(&pro, &again),
            "the same route is looked up, not made again"
        );
        let free = routes.get(("us-east", "gpt-4o", "free", "chat"), &latency, &histograms);
        assert!(!Arc::ptr_eq(&pro, &free));
        assert_eq!(free.labels.tier, "free");
        // Routes share the scopes they have in common, as the console shows them.
        assert!(
            Arc::ptr_eq(&pro.scopes[0], &free.scopes[0]),
            "region:us-east"
        );
        assert!(
            !Arc::ptr_eq(&pro.scopes[2], &free.scopes[2]),
            "tier:pro, tier:free"
        );

        latency.record_in(&pro.scopes, Metric::EndToEnd, Duration::from_millis(5));
        let mut scopes: Vec<String> = latency
            .views()
            .into_iter()
            .filter(|v| v.metric == "e2e" && v.window == "10s")
            .map(|v| format!("{} {}", v.scope, v.count))
            .collect();
        scopes.sort();
        assert_eq!(
            scopes,
            ["model:gpt-4o 1", "region:us-east 1", "tier:pro 1"],
            "one observation lands in each of the route's scopes"
        );
    }
}
