//! Shared state for replicas (`[state] backend = "valkey"`): the cluster's limits and
//! budgets kept in Valkey (or Redis), so N replicas behind a load balancer enforce one
//! limit, not N; and the heartbeats by which replicas know each other.
//!
//! Admission spends from leases (`admission::lease`); this module makes the round
//! trips. When a request finds its replica's lease short, `Shared::reserve` asks the
//! store for at least what the request needs and at most the lease share more. A
//! tenant's round trips take turns: requests arriving meanwhile wait, then find the
//! grant; and a budget hold is absolute, so two questions of one tenant in flight at
//! once could leave the store holding less than the replica believes (routine reports
//! take the same turn). Every `SYNC_EVERY` a routine round trip per active tenant
//! reports what the replica spent (absolute totals, so a repeated report counts once),
//! renews its budget hold, pays what it owes and gives back rates it does not use.
//!
//! When a round trip fails, admission falls back to this replica's share of each
//! limit (`Admission::degrade`) until a heartbeat is answered again.

mod valkey;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::{Admission, Demand, Refusal, Reservation};
use crate::domain::snapshot::{ClusterView, ReplicaView};
use crate::domain::{StateBackend, StatePolicy};

pub use valkey::{Heard, Valkey, Versions};

/// How often each active tenant's spending is reported and its lease tidied.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// A replica's budget hold counts this long without being renewed (then it is taken
/// to have died, and its hold is free again).
pub const HOLD_TTL: Duration = Duration::from_secs(10);
/// A tenant whose lease went unused this long gives its unused rates back.
pub const QUIET: Duration = Duration::from_secs(1);
/// How often a replica says it is alive; one silent for `ALIVE` is not counted.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
pub const ALIVE: Duration = Duration::from_secs(3);
/// How long a silent replica stays listed (as gone) before it is forgotten.
const FORGET: Duration = Duration::from_secs(3600);

/// Round trips one request may make for its lease.
const ROUND_TRIPS: usize = 8;

/// This replica's link to the shared store.
pub struct Shared {
    store: Valkey,
    replica: String,
    admission: Arc<Admission>,
    /// One round trip at a time per tenant.
    asking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    health: Mutex<Health>,
    /// The operators' state's versions, as the last heartbeat learned them.
    versions: tokio::sync::watch::Sender<Versions>,
}

/// How the link to the store is, as operators see it.
#[derive(Debug, Clone, Default)]
struct Health {
    /// Since when the store could not be reached, and why.
    degraded: Option<(Instant, String)>,
    /// Every replica heard from lately, this one included.
    replicas: Vec<ReplicaView>,
}

impl Shared {
    /// Connects to the store `policy` names, as `replica`.
    pub async fn connect(
        policy: &StatePolicy,
        replica: String,
        admission: Arc<Admission>,
    ) -> Result<Shared, String> {
        let StateBackend::Valkey {
            url,
            prefix,
            cluster_nodes,
        } = &policy.backend
        else {
            return Err("the state backend is local: nothing to connect to".into());
        };
        let store = Valkey::connect_to(url, cluster_nodes, prefix).await?;
        store.ping().await?;
        Ok(Shared {
            store,
            replica,
            admission,
            asking: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
            versions: tokio::sync::watch::channel(Versions::default()).0,
        })
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replicas alive now (at least this one).
    fn alive(&self) -> u32 {
        let alive = self
            .health()
            .replicas
            .iter()
            .filter(|r| r.silent_ms < ALIVE.as_millis() as u64)
            .count();
        (alive as u32).max(1)
    }

    /// The store failed to answer: limits fall back to this replica's share.
    fn failed(&self, why: &str) {
        let first = {
            let mut health = self.health();
            let first = health.degraded.is_none();
            if first {
                health.degraded = Some((Instant::now(), why.to_string()));
            }
            first
        };
        if first {
            let replicas = self.alive();
            self.admission.degrade(replicas);
            tracing::error!(
                %why,
                replicas,
                "shared state degraded: limits are enforced by this replica alone, at its share, until the store answers"
            );
        }
    }

    /// The store answered: leases again, if they had stopped.
    fn answered(&self) {
        let since = self.health().degraded.take();
        if let Some((since, _)) = since {
            self.admission.recover();
            tracing::warn!(
                after = %crate::config::format_duration(since.elapsed()),
                "shared state recovered: limits are the cluster's again"
            );
        }
    }

    /// Whether the store could not be reached at the last try.
    pub fn is_degraded(&self) -> bool {
        self.health().degraded.is_some()
    }

    pub fn view(&self) -> ClusterView {
        let health = self.health();
        ClusterView {
            replica: self.replica.clone(),
            degraded: health
                .degraded
                .as_ref()
                .map(|(since, why)| (since.elapsed().as_secs(), why.clone())),
            replicas: health.replicas.clone(),
        }
    }

    /// Says this replica is alive, telling `about` itself, and learns who else is.
    pub async fn heartbeat(&self, about: &serde_json::Value) {
        match self.store.heartbeat(&self.replica, about, FORGET).await {
            Ok((heard, versions)) => {
                self.health().replicas = heard;
                self.versions.send_if_modified(|seen| {
                    let changed = *seen != versions;
                    *seen = versions;
                    changed
                });
                self.answered();
            }
            Err(why) => self.failed(&why),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The store, for the operators' shared state (`gateway::cluster`).
    pub fn store(&self) -> &Valkey {
        &self.store
    }

    /// The operators' state's versions as heartbeats learn them: a replica that missed
    /// a message on the channel catches up within a heartbeat.
    pub fn versions(&self) -> tokio::sync::watch::Receiver<Versions> {
        self.versions.subscribe()
    }

    fn gate(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
        asking.entry(tenant.to_string()).or_default().clone()
    }

    /// Reserves `demand` for `tenant` when this replica's lease was short: asks the
    /// store for more (or waits for the round trip under way), then reserves.
    pub async fn reserve(&self, tenant: &str, demand: &Demand) -> Result<Reservation, Refusal> {
        // One round trip at a time per tenant: requests that come meanwhile share its
        // grant, and a hold (absolute) is never set from two questions at once.
        let gate = self.gate(tenant);
        let _turn = gate.lock().await;
        // The round trip under way when this request came may have granted enough.
        match self.admission.reserve(tenant, demand) {
            Err(Refusal::Unleased) => {}
            decided => return decided,
        }
        // Requests reserving from the lease meanwhile (they need no round trip) may
        // leave the grant short of this one: then another round trip, a few at most.
        for _ in 0..ROUND_TRIPS {
            let Some(ask) = self.admission.ask(tenant, demand) else {
                return Err(Refusal::UnknownTenant);
            };
            let answer = match self.store.lease(&self.replica, &ask, HOLD_TTL).await {
                Ok(answer) => answer,
                Err(why) => {
                    // This replica's share, alone, until the store answers again.
                    self.failed(&why);
                    return self.admission.reserve(tenant, demand);
                }
            };
            // Reserved from the grant as it is taken.
            match self.admission.reserve_granted(demand, &ask, &answer) {
                Err(Refusal::Unleased) => {}
                decided => return decided,
            }
        }
        tracing::warn!(%tenant, "a request found its lease short after {ROUND_TRIPS} round trips");
        Err(Refusal::Unleased)
    }

    /// One routine round trip for every tenant with something to report.
    pub async fn sync(&self) {
        let tenants: Vec<String> = self.admission.tenant_names().map(str::to_string).collect();
        for tenant in tenants {
            let gate = self.gate(&tenant);
            let _turn = gate.lock().await;
            let Some(ask) = self.admission.report(&tenant, QUIET) else {
                continue;
            };
            match self.store.lease(&self.replica, &ask, HOLD_TTL).await {
                Ok(answer) => self.admission.answer(&ask, &answer),
                Err(why) => {
                    self.admission.unask(&ask);
                    self.failed(&why);
                    // The others would fail alike; the next tick tries again.
                    return;
                }
            }
        }
    }

    /// Reports every `SYNC_EVERY` and beats every `HEARTBEAT_EVERY` (telling what
    /// `about` says of this replica) until the daemon stops.
    pub async fn run(
        self: Arc<Self>,
        about: impl Fn() -> serde_json::Value + Send,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.is_degraded() {
                        self.sync().await;
                    }
                }
                _ = beat.tick() => self.heartbeat(&about()).await,
                _ = stop.changed() => break,
            }
        }
        // Spending of the last moments reported, unused rates given back.
        self.sync().await;
    }
}

/// This replica's id: `[state] replica`, else one made once and kept in the data
/// directory, so that the spending it reported before a restart stays its own.
pub fn replica_id(policy: &StatePolicy, data_dir: &Path) -> Result<String, String> {
    if let Some(id) = &policy.replica {
        return Ok(id.clone());
    }
    let path = data_dir.join("replica-id");
    if let Ok(kept) = std::fs::read_to_string(&path) {
        let kept = kept.trim();
        if !kept.is_empty() {
            return Ok(kept.to_string());
        }
    }
    let mut bytes = [0u8; 6];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no random replica id: {e}"))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("replica-{id}");
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .map_err(|e| {
            format!(
                "the replica id could not be kept in {}: {e}",
                path.display()
            )
        })?;
    Ok(id)
}
