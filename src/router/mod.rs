//! Which instance gets a request, and in what order the others are tried.
//!
//! Regions are priority levels (Envoy): all traffic goes to the first region while it is
//! healthy enough (routable share × overprovisioning ≥ 100%), and spills to the next as
//! it degrades. A region too sick to matter, when no other can take up the slack, routes
//! to all its instances (the panic threshold) rather than crush the few left. Inside a
//! region: a session's instance while it can keep it (rendezvous hashing with bounded
//! load picks it), otherwise the less loaded of two random instances by outstanding
//! estimated tokens, with peak-EWMA latency breaking ties. Instances report every
//! attempt; failures eject them for growing times, 429s cool them down. Operators drain
//! and eject. This module does no I/O; probes and deadlines are driven from outside.

pub mod health;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::sync::watch;
use tokio::time::Instant;

pub use health::{Change, Drain, Health, HealthView, Outcome};

use crate::clock;
use crate::domain::snapshot::{
    EventKind, InstanceDetail, InstanceView, RegionState as RegionStanding, RegionView,
};
use crate::domain::{Instance, Model, Region, RoutingPolicy};
use crate::telemetry::events::EventLog;
use crate::telemetry::meter::Tally;

/// One instance and its live state.
pub struct InstanceState {
    /// Shared, not copied, by every answer's headers and audit record.
    pub region: Arc<str>,
    pub instance: Instance,
    /// Its name and usual route reason as a request hands them on (headers, audit
    /// record): shared, not copied per request.
    pub names: Names,
    in_flight: AtomicU32,
    /// Estimated tokens of the requests in flight: the load that balancing compares.
    outstanding: AtomicU64,
    /// Peak-EWMA of time to response headers, microseconds.
    latency_us: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// Attempts, failures by kind and the upstream's time, second by second; and
    /// end-to-end latencies of what it answered.
    tally: Arc<Tally>,
    health: Mutex<Health>,
    /// What interrupts work on this instance, in one channel so an attempt watches it
    /// with one subscription: cuts (a drain deadline ends what still runs here) and
    /// removals from rotation (ejected, failing probes, or by an operator: attempts
    /// still waiting on it go elsewhere), each counted.
    interrupts: watch::Sender<Interrupts>,
}

/// An instance's name, and the reason routing gives most often for it, made once: every
/// answer carries them in its headers and audit record.
pub struct Names {
    pub instance: Arc<str>,
    least_loaded: Arc<str>,
}

impl Names {
    fn new(region: &str, instance: &str) -> Names {
        Names {
            instance: instance.into(),
            least_loaded: least_loaded(instance, region, false).into(),
        }
    }
}

/// The reason for a pick by power of two choices.
fn least_loaded(instance: &str, region: &str, in_panic: bool) -> String {
    let panic = if in_panic { "panic: " } else { "" };
    format!("{panic}{instance}: least loaded of two in {region}")
}

/// Cuts and removals from rotation of an instance so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Interrupts {
    cuts: u64,
    taken_out: u64,
}

/// Why work on an instance was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A drain deadline cut what still ran there.
    Cut,
    /// The instance left rotation.
    TakenOut,
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("name", &self.instance.name)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl InstanceState {
    fn new(region: &str, instance: &Instance) -> InstanceState {
        InstanceState {
            region: region.into(),
            instance: instance.clone(),
            names: Names::new(region, &instance.name),
            in_flight: AtomicU32::new(0),
            outstanding: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tally: Arc::new(Tally::new()),
            health: Mutex::new(Health::default()),
            interrupts: watch::channel(Interrupts::default()).0,
        }
    }

    pub fn name(&self) -> &str {
        &self.instance.name
    }

    /// Its attempts, failures and latencies, second by second.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Load per unit of weight, for comparing instances.
    fn load(&self) -> f64 {
        (self.outstanding.load(Ordering::Relaxed) as f64 + f64::from(self.in_flight()))
            / f64::from(self.instance.weight.max(1))
    }

    fn latency(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// Takes a concurrency slot carrying `tokens` of estimated load, or `None` when the
    /// instance is at `max_concurrency`.
    pub fn try_acquire(self: &Arc<Self>, tokens: u64) -> Option<InFlight> {
        let max = self.instance.max_concurrency;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.outstanding.fetch_add(tokens, Ordering::Relaxed);
        Some(InFlight {
            instance: self.clone(),
            tokens,
        })
    }

    /// A watch on drain deadlines cutting this instance's in-flight requests after this
    /// call. A long-lived stream holds it (24 bytes) and makes the wait (`CutWatch::cut`)
    /// only inside its own select, so the wait is not stored twice.
    pub fn cut_watch(&self) -> CutWatch {
        let mut interrupts = self.interrupts.subscribe();
        let cuts = interrupts.borrow_and_update().cuts;
        CutWatch { interrupts, cuts }
    }

    /// A watch on a drain deadline cutting this instance's in-flight requests, or the
    /// instance being taken out of rotation, after this call. An attempt makes the wait
    /// (`InterruptWatch::interrupted`) inside each of its selects, stored once there.
    pub fn interrupt_watch(&self) -> InterruptWatch {
        let mut interrupts = self.interrupts.subscribe();
        let before = *interrupts.borrow_and_update();
        InterruptWatch { interrupts, before }
    }

    fn take_out(&self) {
        self.interrupts.send_modify(|n| n.taken_out += 1);
    }

    fn record_latency(&self, sample: Duration) {
        let sample = sample.as_micros() as u64;
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                // Peak-EWMA: jump to a slower sample at once, decay towards faster ones.
                Some(if sample >= current || current == 0 {
                    sample
                } else {
                    (current * 9 + sample) / 10
                })
            });
    }
}

/// A held concurrency slot; released on drop, wherever the request ends.
#[derive(Debug)]
pub struct InFlight {
    instance: Arc<InstanceState>,
    tokens: u64,
}

impl InFlight {
    pub fn instance(&self) -> &Arc<InstanceState> {
        &self.instance
    }
}

/// A subscription to an instance's cuts, from the moment it was made.
pub struct CutWatch {
    interrupts: watch::Receiver<Interrupts>,
    cuts: u64,
}

impl CutWatch {
    /// Resolves when the instance was cut since the watch was made.
    pub async fn cut(mut self) {
        let cuts = self.cuts;
        let _ = self.interrupts.wait_for(|now| now.cuts != cuts).await;
    }
}

/// A subscription to an instance's cuts and removals from rotation, from the moment it
/// was made.
pub struct InterruptWatch {
    interrupts: watch::Receiver<Interrupts>,
    before: Interrupts,
}

impl InterruptWatch {
    /// Resolves when the instance was cut or taken out of rotation since the watch was
    /// made (at once, if it already was).
    pub async fn interrupted(&mut self) -> Interrupt {
        let before = self.before;
        match self.interrupts.wait_for(|now| *now != before).await {
            Ok(now) if now.cuts != before.cuts => Interrupt::Cut,
            // Taken out, or gone from the configuration with its router.
            Ok(_) | Err(_) => Interrupt::TakenOut,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.instance
            .outstanding
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

struct RegionState {
    name: String,
    order: u32,
    instances: Vec<Arc<InstanceState>>,
}

/// A place to send one attempt.
#[derive(Debug, Clone)]
pub struct Candidate<'m> {
    /// Borrowed from the router: a request's attempts take no count on the instances
    /// every worker's requests share.
    pub instance: &'m Arc<InstanceState>,
    /// The model name this region's upstream knows the alias by.
    pub upstream_model: &'m str,
}

/// Where a request goes, in order, and why.
#[derive(Debug, Clone)]
pub struct Route<'m> {
    pub candidates: Vec<Candidate<'m>>,
    pub reason: Arc<str>,
}

/// Instances a request may try: the first choice and the best fallbacks. More attempts
/// than this would only spend the retry budget on a gateway-wide outage.
const MAX_CANDIDATES: usize = 6;

struct Session {
    instance: Arc<InstanceState>,
    expires: Instant,
}

/// Retries allowed over a ten-second window.
struct RetryWindow {
    started: Instant,
    requests: u64,
    retries: u64,
    previous_requests: u64,
    previous_retries: u64,
}

/// Errors of the operator's controls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteControlError {
    #[error("no region is named \"{0}\"; regions: {1}")]
    UnknownRegion(String, String),
    #[error("no instance is named \"{0}\"; instances: {1}")]
    UnknownInstance(String, String),
}

pub struct Router {
    regions: Vec<RegionState>,
    policy: RoutingPolicy,
    events: Arc<EventLog>,
    sessions: Mutex<HashMap<String, Session>>,
    retries: Mutex<RetryWindow>,
}

const RETRY_WINDOW: Duration = Duration::from_secs(10);
const MAX_SESSIONS: usize = 100_000;

impl Router {
    /// `regions` must already be in failover order, as `Config` keeps them.
    pub fn new(regions: &[Region], policy: RoutingPolicy, events: Arc<EventLog>) -> Router {
        let regions = regions
            .iter()
            .map(|r| RegionState {
                name: r.name.clone(),
                order: r.order,
                instances: r
                    .instances
                    .iter()
                    .map(|i| Arc::new(InstanceState::new(&r.name, i)))
                    .collect(),
            })
            .collect();
        Router {
            regions,
            policy,
            events,
            sessions: Mutex::new(HashMap::new()),
            retries: Mutex::new(RetryWindow {
                started: clock::now(),
                requests: 0,
                retries: 0,
                previous_requests: 0,
                previous_retries: 0,
            }),
        }
    }

    pub fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<InstanceState>> {
        self.regions.iter().flat_map(|r| &r.instances)
    }

    /// The route to instance `name` alone, for a request only it can serve (a follow-up
    /// to a response it stores): no other instance is tried.
    pub fn route_to<'m>(
        &'m self,
        model: &'m Model,
        allowed: Option<&[String]>,
        name: &str,
    ) -> Result<Route<'m>, String> {
        let found = model
            .deployments
            .iter()
            .filter(|d| allowed.is_none_or(|a| a.contains(&d.region)))
            .find_map(|d| {
                let region = self.regions.iter().find(|r| r.name == d.region)?;
                let instance = region.instances.iter().find(|i| i.name() == name)?;
                Some((instance, d.upstream_model.as_str()))
            });
        let Some((instance, upstream_model)) = found else {
            return Err(format!(
                "instance {name} does not serve model \"{}\" for this tenant",
                model.alias
            ));
        };
        if !instance.health().routable(clock::now()) {
            return Err(format!(
                "instance {name}, which holds the previous response, is not taking requests (drained, ejected or failing); retry when it is back"
            ));
        }
        Ok(Route {
            candidates: vec![Candidate {
                instance,
                upstream_model,
            }],
            reason: format!("{name}: holds the previous response").into(),
        })
    }

    /// Plans a request: candidates best first, or why there are none.
    /// `allowed` restricts regions (data residency); `session` keeps a session in place.
    pub fn route<'m>(
        &'m self,
        model: &'m Model,
        allowed: Option<&[String]>,
        session: Option<&str>,
    ) -> Result<Route<'m>, String> {
        let now = clock::now();
        let serving: Few<(&'m RegionState, &'m str)> = model
            .deployments
            .iter()
            .filter(|d| allowed.is_none_or(|a| a.contains(&d.region)))
            .filter_map(|d| {
                let region = self.regions.iter().find(|r| r.name == d.region)?;
                Some((region, d.upstream_model.as_str()))
            })
            .collect();
        if serving.is_empty() {
            return Err(match allowed {
                Some(allowed) => format!(
                    "this tenant may use only {}, and model \"{}\" is not deployed there",
                    allowed.join(", "),
                    model.alias
                ),
                None => format!("model \"{}\" is deployed in no region", model.alias),
            });
        }

        // Each region's routable share, and the traffic it should take.
        let healths: Few<Few<(&'m Arc<InstanceState>, bool, bool)>> = serving
            .iter()
            .map(|(region, _)| {
                region
                    .instances
                    .iter()
                    .map(|i| {
                        let h = i.health();
                        (i, h.routable(now), h.panic_routable())
                    })
                    .collect()
            })
            .collect();
        let routable_share: Few<f64> = healths
            .iter()
            .map(|instances| {
                let total: u32 = instances.iter().map(|(i, ..)| i.instance.weight).sum();
                let up: u32 = instances
                    .iter()
                    .filter(|(_, routable, _)| *routable)
                    .map(|(i, ..)| i.instance.weight)
                    .sum();
                if total == 0 {
                    0.0
                } else {
                    f64::from(up) / f64::from(total)
                }
            })
            .collect();
        let level_health: Few<f64> = routable_share
            .iter()
            .map(|h| (h * self.policy.overprovisioning).min(1.0))
            .collect();
        let total_health: f64 = level_health.iter().sum();
        let panic_all = total_health <= 0.0;

        let chosen = if panic_all {
            healths
                .iter()
                .position(|instances| instances.iter().any(|(_, _, p)| *p))
        } else {
            Some(pick_level(&level_health, total_health, fastrand::f64()))
        };
        let Some(chosen) = chosen else {
            return Err(self.nothing_routable(model, &serving, now));
        };
        let in_panic = panic_all
            || (total_health < 1.0 && routable_share[chosen] < self.policy.panic_threshold);
        let eligible: Few<&'m Arc<InstanceState>> = healths[chosen]
            .iter()
            .filter(|(_, routable, panic_ok)| if in_panic { *panic_ok } else { *routable })
            .map(|(i, ..)| *i)
            .collect();
        if eligible.is_empty() {
            return Err(self.nothing_routable(model, &serving, now));
        }

        let (primary, reason) = match session {
            Some(key) => self.sticky(key, &eligible, &serving, now),
            None => {
                let pick = power_of_two(&eligible);
                let reason = if in_panic {
                    least_loaded(pick.name(), &pick.region, true).into()
                } else {
                    pick.names.least_loaded.clone()
                };
                (pick, reason)
            }
        };
        let reason = if chosen > 0 && !reason.starts_with("session") {
            let skipped: Vec<String> = serving[..chosen]
                .iter()
                .zip(&routable_share)
                .map(|((r, _), share)| format!("{} at {:.0}%", r.name, share * 100.0))
                .collect();
            format!("{} (spilled over from {})", reason, skipped.join(", ")).into()
        } else {
            reason
        };

        // The primary (possibly a sticky session's, in another region), then the least
        // loaded of the chosen region, then the other regions in failover order.
        let mut candidates = Vec::with_capacity(MAX_CANDIDATES);
        let primary_region = serving
            .iter()
            .find(|(r, _)| *r.name == *primary.region)
            .map_or(serving[chosen].1, |(_, m)| *m);
        candidates.push(Candidate {
            upstream_model: primary_region,
            instance: primary,
        });
        let order = std::iter::once(chosen).chain((0..serving.len()).filter(|i| *i != chosen));
        for index in order {
            if candidates.len() >= MAX_CANDIDATES {
                break;
            }
            let mut fallbacks: Few<&'m Arc<InstanceState>> = if index == chosen {
                eligible.clone()
            } else {
                healths[index]
                    .iter()
                    .filter(|(_, routable, _)| *routable)
                    .map(|(i, ..)| *i)
                    .collect()
            };
            fallbacks.retain(|i| !Arc::ptr_eq(i, primary));
            fallbacks.sort_by(|a, b| a.load().total_cmp(&b.load()));
            let room = MAX_CANDIDATES - candidates.len();
            candidates.extend(fallbacks.into_iter().take(room).map(|i| Candidate {
                instance: i,
                upstream_model: serving[index].1,
            }));
        }
        Ok(Route { candidates, reason })
    }

    fn nothing_routable(
        &self,
        model: &Model,
        serving: &[(&RegionState, &str)],
        now: Instant,
    ) -> String {
        let states: Vec<String> = serving
            .iter()
            .flat_map(|(r, _)| &r.instances)
            .map(|i| {
                let view = i.health().view(now, i.in_flight());
                format!("{}/{}: {}", i.region, i.name(), view.state)
            })
            .collect();
        format!(
            "no instance can take requests for model \"{}\" now ({})",
            model.alias,
            states.join("; ")
        )
    }

    /// The session's instance while it can keep it; otherwise a new one by rendezvous
    /// hashing with bounded load among `eligible`.
    fn sticky<'m>(
        &'m self,
        key: &str,
        eligible: &[&'m Arc<InstanceState>],
        serving: &[(&'m RegionState, &str)],
        now: Instant,
    ) -> (&'m Arc<InstanceState>, Arc<str>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let previous = sessions
            .get(key)
            .filter(|s| now < s.expires)
            .map(|s| s.instance.clone());
        // Where the router holds it, in a region the request may use.
        let allowed = previous.as_ref().and_then(|previous| {
            serving
                .iter()
                .flat_map(|(r, _)| &r.instances)
                .find(|i| Arc::ptr_eq(i, previous))
        });
        if let Some(instance) = allowed
            && instance
                .health()
                .keeps_sessions(now, self.policy.drain_grace)
        {
            if let Some(s) = sessions.get_mut(key) {
                s.expires = now + self.policy.session_ttl;
            }
            let reason = format!("session sticky on {}", instance.name());
            return (instance, reason.into());
        }
        let pick = rendezvous(key, eligible);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| now < s.expires);
        }
        // Full of live sessions: this one is not remembered, and rendezvous hashing still
        // sends it to the same instance while the eligible set stays the same.
        if sessions.len() < MAX_SESSIONS {
            sessions.insert(
                key.to_string(),
                Session {
                    instance: pick.clone(),
                    expires: now + self.policy.session_ttl,
                },
            );
        }
        let reason = match previous {
            Some(old) => {
                let why = old.health().view(now, old.in_flight()).state;
                format!(
                    "session moved from {} ({why}) to {}",
                    old.name(),
                    pick.name()
                )
            }
            None => format!("session placed on {} by rendezvous hash", pick.name()),
        };
        (pick, reason.into())
    }

    /// Requests the routable instances can take at once: the scheduler's seats.
    /// When nothing is routable, routing panics onto every instance not set aside by an
    /// operator, and so does the capacity.
    pub fn routable_capacity(&self) -> u32 {
        let now = clock::now();
        let sum = |routable: &dyn Fn(&Health) -> bool| {
            self.instances()
                .filter(|i| routable(&i.health()))
                .map(|i| i.instance.max_concurrency)
                .fold(0u32, u32::saturating_add)
        };
        match sum(&|h| h.routable(now)) {
            0 => sum(&|h| h.panic_routable()),
            capacity => capacity,
        }
    }

    /// Records an attempt's outcome on its instance.
    pub fn report(
        &self,
        instance: &Arc<InstanceState>,
        outcome: Outcome,
        latency: Option<Duration>,
    ) {
        let now = clock::now();
        if let (Outcome::Success, Some(latency)) = (outcome, latency) {
            instance.record_latency(latency);
        }
        instance.attempts.fetch_add(1, Ordering::Relaxed);
        instance.tally.request();
        match outcome {
            Outcome::Success => {
                if let Some(latency) = latency {
                    instance.tally.answered(latency);
                }
            }
            Outcome::RateLimited(_) => instance.tally.code("rate_limited"),
            Outcome::Failure => {
                instance.failures.fetch_add(1, Ordering::Relaxed);
                instance.tally.code("failed");
            }
        }
        let may_eject = match outcome {
            Outcome::Failure => self.may_eject(instance, now),
            _ => true,
        };
        let change = instance
            .health()
            .report(outcome, now, &self.policy, may_eject);
        match change {
            Change::Ejected(length) => {
                instance.take_out();
                self.events.record(
                    EventKind::Routing,
                    None,
                    format!(
                        "{}/{} ejected for {:?} after {} consecutive failures",
                        instance.region,
                        instance.name(),
                        length,
                        self.policy.consecutive_failures
                    ),
                );
            }
            Change::CoolingDown(wait) => tracing::info!(
                instance = %instance.name(),
                ?wait,
                "instance answered 429; cooling down"
            ),
            Change::None => {}
        }
    }

    fn may_eject(&self, instance: &Arc<InstanceState>, now: Instant) -> bool {
        let Some(region) = self.regions.iter().find(|r| *r.name == *instance.region) else {
            return true;
        };
        let others_ejected = region
            .instances
            .iter()
            .filter(|i| !Arc::ptr_eq(i, instance))
            .filter(|i| i.health().ejected(now))
            .count();
        others_ejected == 0
            || (others_ejected + 1) as f64 / region.instances.len() as f64
                <= self.policy.max_ejected_share
    }

    /// Records an active probe's result.
    pub fn probed(
        &self,
        instance: &InstanceState,
        ok: bool,
        unhealthy_after: u32,
        healthy_after: u32,
    ) {
        let change = instance.health().probe(ok, unhealthy_after, healthy_after);
        if let Some(up) = change {
            let message = if up {
                format!(
                    "{}/{} passes its health probes again",
                    instance.region,
                    instance.name()
                )
            } else {
                instance.take_out();
                format!(
                    "{}/{} fails its health probes; out of rotation",
                    instance.region,
                    instance.name()
                )
            };
            self.events.record(EventKind::Routing, None, message);
        }
    }

    /// Counts a request for the retry budget.
    pub fn count_request(&self) {
        self.retry_window(|w| w.requests += 1);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self) -> bool {
        // The floor is per second (like Linkerd's minRetriesPerSecond), over the window.
        let floor = u64::from(self.policy.min_retries) * RETRY_WINDOW.as_secs();
        let budget = self.policy.retry_budget;
        self.retry_window(|w| {
            let requests = w.requests + w.previous_requests;
            let allowed = ((requests as f64 * budget) as u64).max(floor);
            if w.retries + w.previous_retries < allowed {
                w.retries += 1;
                true
            } else {
                false
            }
        })
    }

    fn retry_window<T>(&self, f: impl FnOnce(&mut RetryWindow) -> T) -> T {
        let mut w = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock::now();
        if now.saturating_duration_since(w.started) >= RETRY_WINDOW {
            let stale = now.saturating_duration_since(w.started) >= RETRY_WINDOW * 2;
            w.previous_requests = if stale { 0 } else { w.requests };
            w.previous_retries = if stale { 0 } else { w.retries };
            w.requests = 0;
            w.retries = 0;
            w.started = now;
        }
        f(&mut w)
    }

    fn region(&self, name: &str) -> Result<&RegionState, RouteControlError> {
        self.regions.iter().find(|r| r.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
            RouteControlError::UnknownRegion(name.to_string(), names.join(", "))
        })
    }

    fn instance(&self, name: &str) -> Result<&Arc<InstanceState>, RouteControlError> {
        self.instances().find(|i| i.name() == name).ok_or_else(|| {
            let names: Vec<&str> = self.instances().map(|i| i.name()).collect();
            RouteControlError::UnknownInstance(name.to_string(), names.join(", "))
        })
    }

    /// The instances a control names: a region's, or one.
    pub fn targets(
        &self,
        region: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Vec<Arc<InstanceState>>, RouteControlError> {
        match (region, instance) {
            (Some(r), _) => Ok(self.region(r)?.instances.clone()),
            (None, Some(i)) => Ok(vec![self.instance(i)?.clone()]),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Drains instances: no new requests; what runs is cut at the deadline.
    pub fn drain(&self, targets: &[Arc<InstanceState>], deadline: Option<Duration>) -> u32 {
        let now = clock::now();
        let deadline = now + deadline.unwrap_or(self.policy.drain_deadline);
        let mut in_flight = 0;
        for i in targets {
            let mut h = i.health();
            if !h.draining() {
                h.drain = Drain::Draining {
                    since: now,
                    deadline,
                };
            }
            in_flight += i.in_flight();
        }
        in_flight
    }

    pub fn undrain(&self, targets: &[Arc<InstanceState>]) {
        for i in targets {
            i.health().drain = Drain::Active;
        }
    }

    pub fn eject(&self, targets: &[Arc<InstanceState>]) {
        for i in targets {
            i.health().manual_eject = true;
            i.take_out();
        }
    }

    pub fn restore(&self, targets: &[Arc<InstanceState>]) {
        for i in targets {
            i.health().restore();
        }
    }

    /// Cuts what still runs on instances whose drain deadline passed; returns their names.
    pub fn enforce_drains(&self) -> Vec<String> {
        let now = clock::now();
        let mut cut = Vec::new();
        for i in self.instances() {
            let due =
                matches!(i.health().drain, Drain::Draining { deadline, .. } if now >= deadline);
            if due && i.in_flight() > 0 {
                i.interrupts.send_modify(|n| n.cuts += 1);
                self.events.record(
                    EventKind::Routing,
                    None,
                    format!(
                        "{}: drain deadline passed; cutting {} in flight",
                        i.name(),
                        i.in_flight()
                    ),
                );
                cut.push(i.name().to_string());
            }
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| now < s.expires);
        cut
    }

    /// Takes this second's sample of every instance's tally.
    pub fn sample(&self) {
        for instance in self.instances() {
            instance.tally.sample();
        }
    }

    /// An instance's last five minutes, second by second.
    pub fn instance_detail(&self, name: &str) -> Option<InstanceDetail> {
        let instance = self.instances().find(|i| i.name() == name)?;
        Some(InstanceDetail {
            instance: name.to_string(),
            region: instance.region.to_string(),
            history: instance.tally.seconds(),
        })
    }

    pub fn views(&self) -> Vec<RegionView> {
        let now = clock::now();
        self.regions
            .iter()
            .map(|r| {
                let instances: Vec<InstanceView> = r
                    .instances
                    .iter()
                    .map(|i| (i, i.tally.recent_percentiles()))
                    .map(|(i, recent)| InstanceView {
                        name: i.name().to_string(),
                        url: i.instance.url.clone(),
                        weight: i.instance.weight,
                        max_concurrency: i.instance.max_concurrency,
                        in_flight: i.in_flight(),
                        outstanding_tokens: i.outstanding.load(Ordering::Relaxed),
                        latency_ms: i.latency() as f64 / 1000.0,
                        p50_ms: recent.map(|p| p.0),
                        p99_ms: recent.map(|p| p.1),
                        error_rate: {
                            let attempts = i.attempts.load(Ordering::Relaxed);
                            let failures = i.failures.load(Ordering::Relaxed);
                            if attempts == 0 {
                                0.0
                            } else {
                                failures as f64 / attempts as f64
                            }
                        },
                        health: i.health().view(now, i.in_flight()),
                    })
                    .collect();
                let total: u32 = r.instances.iter().map(|i| i.instance.weight).sum();
                let up: u32 = r
                    .instances
                    .iter()
                    .filter(|i| i.health().routable(now))
                    .map(|i| i.instance.weight)
                    .sum();
                let routable = if total == 0 {
                    0.0
                } else {
                    f64::from(up) / f64::from(total)
                };
                let draining = instances
                    .iter()
                    .filter(|i| i.health.state.drained())
                    .count();
                let state = if draining == instances.len() {
                    if instances.iter().all(|i| i.in_flight == 0) {
                        RegionStanding::Drained
                    } else {
                        RegionStanding::Draining
                    }
                } else if routable >= 1.0 {
                    RegionStanding::Healthy
                } else if routable > 0.0 {
                    RegionStanding::Degraded
                } else {
                    RegionStanding::Down
                };
                RegionView {
                    name: r.name.clone(),
                    order: r.order,
                    state,
                    routable,
                    instances,
                }
            })
            .collect()
    }
}

/// Envoy's priority load: level `i` takes its health (capped at 100%) of what the levels
/// before it left, normalised when the total health is short of 100%. `draw` in [0, 1).
/// Regions of a model, or instances of a region: a handful, kept on the stack while a
/// request is routed.
type Few<T> = SmallVec<[T; 8]>;

fn pick_level(health: &[f64], total: f64, draw: f64) -> usize {
    let mut remaining = 1.0;
    let mut cumulative = 0.0;
    for (i, h) in health.iter().enumerate() {
        let share = if total < 1.0 {
            h / total
        } else {
            h.min(remaining)
        };
        remaining -= share;
        cumulative += share;
        if draw < cumulative {
            return i;
        }
    }
    health.iter().rposition(|h| *h > 0.0).unwrap_or(0)
}

/// The less loaded of two instances drawn by weight.
fn power_of_two<'m>(eligible: &[&'m Arc<InstanceState>]) -> &'m Arc<InstanceState> {
    if eligible.len() == 1 {
        return eligible[0];
    }
    let total: u32 = eligible.iter().map(|i| i.instance.weight.max(1)).sum();
    let draw = |skip: Option<usize>| -> usize {
        loop {
            let mut ticket = fastrand::u32(0..total);
            for (index, i) in eligible.iter().enumerate() {
                let w = i.instance.weight.max(1);
                if ticket < w {
                    if Some(index) != skip {
                        return index;
                    }
                    break;
                }
                ticket -= w;
            }
        }
    };
    let a = draw(None);
    let b = draw(Some(a));
    let (x, y) = (eligible[a], eligible[b]);
    match x.load().total_cmp(&y.load()) {
        std::cmp::Ordering::Less => x,
        std::cmp::Ordering::Greater => y,
        std::cmp::Ordering::Equal if x.latency() <= y.latency() => x,
        std::cmp::Ordering::Equal => y,
    }
}

/// Weighted rendezvous hashing with bounded load: the highest-scoring instance whose
/// in-flight count is within 25% (plus one) of the average.
fn rendezvous<'m>(key: &str, eligible: &[&'m Arc<InstanceState>]) -> &'m Arc<InstanceState> {
    let mut scored: Vec<(f64, &'m Arc<InstanceState>)> = eligible
        .iter()
        .map(|i| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            i.name().hash(&mut hasher);
            let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
            let score = -f64::from(i.instance.weight.max(1)) / unit.max(f64::MIN_POSITIVE).ln();
            (score, *i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: u32 = eligible.iter().map(|i| i.in_flight()).sum();
    let bound = (f64::from(total) / eligible.len() as f64 * 1.25).ceil() as u32 + 1;
    scored
        .iter()
        .find(|(_, i)| i.in_flight() < bound)
        .or(scored.first())
        .map_or(eligible[0], |(_, i)| *i)
}

#[cfg(test)]
mod tests;
