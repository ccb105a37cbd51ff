//! Operators' state shared by the cluster's replicas (`[state] backend = "valkey"`):
//! a tier change, limit override, pause, drain or ejection made on any replica, and a
//! key made, revoked or rotated on any, takes effect on all.
//!
//! The overrides are one document in the store, replaced by compare-and-set on its
//! version: a replica shares its overrides after an operator's lasting change; when
//! another replica changed them first, it adopts theirs, applies its action again on
//! top, and tries again. Every replica hears the new version on the operators'
//! channel and adopts the document (what differs is applied and kept in its own
//! store); a heartbeat carries the versions too, so a replica that missed a message
//! catches up within a second. Key records (digests only) are shared by id the same
//! way. At start the cluster's document wins over the one this replica kept, and the
//! first replica of a new cluster brings its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::Gateway;
use crate::domain::records::{KeyRecord, Overrides};
use crate::domain::snapshot::{Action, EventKind};
use crate::state::{Heard, Shared};

/// Tries at sharing one change while other replicas keep changing the document.
const SHARE_TRIES: usize = 5;

impl Gateway {
    /// Shares this replica's overrides after `action` changed them for good, made
    /// when this replica had the cluster's version `then`.
    pub(super) async fn share_overrides(&self, action: &Action, then: u64) -> Result<(), String> {
        let Some(shared) = self.shared.get() else {
            return Ok(());
        };
        let _turn = self.cluster_turn.lock().await;
        // Another replica's change adopted since the action took effect undid it here.
        if self.operator_version.load(Ordering::Acquire) != then && self.carry_out(action).is_ok() {
            self.remember(action);
        }
        for _ in 0..SHARE_TRIES {
            let seen = self.operator_version.load(Ordering::Acquire);
            let document = serde_json::to_string(&*self.overrides()).unwrap_or_default();
            let published = match shared.store().publish_overrides(seen, &document).await {
                Ok(published) => published,
                Err(why) => {
                    // Applied again on the cluster's overrides and shared when the
                    // store answers (`catch_up_overrides`).
                    self.pending_actions().push(action.clone());
                    return Err(why);
                }
            };
            match published {
                Ok(version) => {
                    self.operator_version.store(version, Ordering::Release);
                    return Ok(());
                }
                Err((version, theirs)) => {
                    // Another replica was first: theirs, then this action again.
                    self.adopt_overrides(version, &theirs).await;
                    if self.carry_out(action).is_ok() {
                        self.remember(action);
                    }
                }
            }
        }
        Err(format!(
            "other replicas kept changing the shared overrides; {} holds here only",
            action.describe()
        ))
    }

    /// Adopts the cluster's overrides `document` at `version`: what differs from this
    /// replica's is applied, and the document kept in its store.
    async fn adopt_overrides(&self, version: u64, document: &str) {
        let theirs: Overrides = match serde_json::from_str(document) {
            Ok(theirs) => theirs,
            Err(error) if !document.is_empty() => {
                tracing::error!(%error, version, "the cluster's overrides are not understood; keeping this replica's");
                return;
            }
            Err(_) => Overrides::default(),
        };
        let changed = self.apply_overrides(&theirs);
        self.operator_version.store(version, Ordering::Release);
        if changed.is_empty() {
            return;
        }
        if let Err(error) = self.keep_overrides().await {
            tracing::error!(%error, "the cluster's overrides took effect but could not be kept here");
        }
        self.events.record(
            EventKind::Operator,
            Some("cluster"),
            format!("applied from another replica: {}", changed.join("; ")),
        );
    }

    /// Makes this replica's state follow `theirs`; says what changed.
    fn apply_overrides(&self, theirs: &Overrides) -> Vec<String> {
        let ours = self.overrides().clone();
        let mut changed = Vec::new();
        let tenants: BTreeSet<&String> = ours.tenants.keys().chain(theirs.tenants.keys()).collect();
        for tenant in tenants {
            let (mine, new) = (
                ours.tenants.get(tenant).cloned().unwrap_or_default(),
                theirs.tenants.get(tenant).cloned().unwrap_or_default(),
            );
            let file = self.config.tenants.iter().find(|t| &t.name == tenant);
            let Some(file) = file else { continue };
            if mine.tier != new.tier {
                let tier = new.tier.clone().unwrap_or_else(|| file.tier.clone());
                if self.set_tier(tenant, &tier).is_ok() {
                    changed.push(format!("{tenant} in tier {tier}"));
                }
            }
            if mine.limits != new.limits
                && self
                    .admission
                    .replace_overrides(tenant, file.overrides.overlay(&new.limits))
                    .is_ok()
            {
                self.batches.wake();
                changed.push(format!("{tenant}'s limits"));
            }
            if mine.paused != new.paused {
                let done = if new.paused {
                    self.pause(tenant).map(|_| ())
                } else {
                    self.resume(tenant)
                };
                if done.is_ok() {
                    let state = if new.paused { "paused" } else { "resumed" };
                    changed.push(format!("{tenant} {state}"));
                }
            }
        }
        let differ = |mine: &[String], new: &[String]| {
            let on: Vec<String> = new.iter().filter(|n| !mine.contains(n)).cloned().collect();
            let off: Vec<String> = mine.iter().filter(|m| !new.contains(m)).cloned().collect();
            (on, off)
        };
        let (on, off) = differ(&ours.drained_regions, &theirs.drained_regions);
        for region in on {
            if self.drain(Some(&region), None, None).is_ok() {
                changed.push(format!("{region} drained"));
            }
        }
        for region in off {
            if self.undrain(Some(&region), None).is_ok() {
                changed.push(format!("{region} undrained"));
            }
        }
        let (on, off) = differ(&ours.drained_instances, &theirs.drained_instances);
        for instance in on {
            if self.drain(None, Some(&instance), None).is_ok() {
                changed.push(format!("{instance} drained"));
            }
        }
        for instance in off {
            if self.undrain(None, Some(&instance)).is_ok() {
                changed.push(format!("{instance} undrained"));
            }
        }
        let (on, off) = differ(&ours.ejected_instances, &theirs.ejected_instances);
        for instance in on {
            if self.eject(&instance).is_ok() {
                changed.push(format!("{instance} ejected"));
            }
        }
        for instance in off {
            if self.restore(&instance).is_ok() {
                changed.push(format!("{instance} restored"));
            }
        }
        *self.overrides() = theirs.clone();
        changed
    }

    /// Shares a key's record after it was made, revoked or rotated here.
    pub(super) async fn share_key(&self, record: &KeyRecord) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let json = serde_json::to_string(record).unwrap_or_default();
        if let Err(why) = shared.store().put_key(&record.id, &json).await {
            tracing::error!(key = %record.id, %why, "a key's change holds on this replica only: the shared store could not be told");
        }
    }

    /// Takes the cluster's key records: a key made elsewhere is accepted here, one
    /// revoked or expiring elsewhere stops here too (the stricter of two records wins).
    async fn adopt_keys(&self, shared: &Shared) {
        let records = match shared.store().keys().await {
            Ok(records) => records,
            Err(why) => {
                tracing::warn!(%why, "the cluster's keys could not be read");
                return;
            }
        };
        let mut theirs = BTreeSet::new();
        for (id, json) in records {
            let Ok(record) = serde_json::from_str::<KeyRecord>(&json) else {
                tracing::error!(key = %id, "a shared key record is not understood; skipped");
                continue;
            };
            theirs.insert(id.clone());
            let mine = self.lock_keys().get(&id).cloned();
            let merged = match &mine {
                Some(mine) => stricter(mine, record),
                None => record,
            };
            if mine.as_ref() != Some(&merged) {
                let kept = merged.clone();
                if let Err(error) = self.keep(move |store| store.save_key(&kept)).await {
                    tracing::error!(key = %id, %error, "a shared key change holds here but could not be kept");
                }
                self.hold_key(merged);
            }
        }
        // Keys this replica made before it joined, or while the store was away.
        let missing: Vec<KeyRecord> = self
            .lock_keys()
            .values()
            .filter(|k| !theirs.contains(&k.id))
            .cloned()
            .collect();
        for record in missing {
            self.share_key(&record).await;
        }
    }

    /// Follows the cluster's operators' state until the daemon stops: at once, then on
    /// every message on the channel and every other version a heartbeat learns (a restarted store starts again from 1).
    pub async fn follow_cluster(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(shared) = self.shared.get().cloned() else {
            return;
        };
        self.catch_up(&shared).await;
        let mut versions = shared.versions();
        // Changes made here while the store was away are tried again every second.
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let heard = match shared.store().listen().await {
                Ok(heard) => Some(heard),
                Err(why) => {
                    tracing::debug!(%why, "the operators' channel is not open; heartbeats carry the changes");
                    None
                }
            };
            let mut heard = std::pin::pin!(futures_util::stream::iter(heard).flatten());
            // A message may have been missed while the channel was closed.
            self.catch_up(&shared).await;
            loop {
                tokio::select! {
                    message = heard.next() => match message {
                        Some(Heard::Overrides(version)) => {
                            if version != self.operator_version.load(Ordering::Acquire) {
                                self.catch_up_overrides(&shared).await;
                            }
                        }
                        Some(Heard::Key(_)) => self.adopt_keys(&shared).await,
                        // The channel closed: open it again, after a pause.
                        None => break,
                    },
                    Ok(()) = versions.changed() => {
                        let now = *versions.borrow_and_update();
                        if now.overrides != self.operator_version.load(Ordering::Acquire) {
                            self.catch_up_overrides(&shared).await;
                        }
                        if now.keys != self.keys_version.swap(now.keys, Ordering::AcqRel) {
                            self.adopt_keys(&shared).await;
                        }
                    }
                    _ = retry.tick() => {
                        if !self.pending_actions().is_empty() {
                            self.catch_up_overrides(&shared).await;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Notes in the event log when the shared store stops or starts answering (called
    /// every second).
    pub fn note_shared_state(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let view = shared.view();
        let degraded = view.degraded.is_some();
        if self.shared_degraded.swap(degraded, Ordering::AcqRel) == degraded {
            return;
        }
        let said = match view.degraded {
            Some((_, why)) => format!(
                "shared state degraded ({why}): this replica enforces its share of each limit alone until the store answers"
            ),
            None => "shared state recovered: limits are the cluster's again".to_string(),
        };
        self.events.record(EventKind::Traffic, None, said);
    }

    /// The version of the cluster's overrides this replica has.
    pub(super) fn operator_version(&self) -> u64 {
        self.operator_version.load(Ordering::Acquire)
    }

    /// Takes the cluster's operators' state before this replica serves (or brings its
    /// own to a new cluster).
    pub async fn join_cluster(&self) {
        if let Some(shared) = self.shared.get().cloned() {
            self.catch_up(&shared).await;
        }
    }

    async fn catch_up(&self, shared: &Shared) {
        self.catch_up_overrides(shared).await;
        self.adopt_keys(shared).await;
    }

    fn pending_actions(&self) -> std::sync::MutexGuard<'_, Vec<Action>> {
        self.pending_actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adopts the cluster's overrides, or brings this replica's when there are none
    /// (a new cluster, or a store that restarted empty); then the changes operators
    /// made here while the store was away, applied again on top and shared.
    async fn catch_up_overrides(&self, shared: &Shared) {
        {
            let _turn = self.cluster_turn.lock().await;
            match shared.store().overrides().await {
                Ok((0, _)) => {
                    let document = serde_json::to_string(&*self.overrides()).unwrap_or_default();
                    if let Ok(Ok(version)) = shared.store().publish_overrides(0, &document).await {
                        self.operator_version.store(version, Ordering::Release);
                    }
                }
                Ok((version, document))
                    if version != self.operator_version.load(Ordering::Acquire) =>
                {
                    self.adopt_overrides(version, &document).await;
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(%why, "the cluster's overrides could not be read");
                    return;
                }
            }
        }
        let pending = std::mem::take(&mut *self.pending_actions());
        for action in pending {
            if self.carry_out(&action).is_ok()
                && self.remember(&action)
                && let Err(error) = self.keep_overrides().await
            {
                tracing::error!(%error, "a change made during the outage could not be kept");
            }
            let then = self.operator_version.load(Ordering::Acquire);
            match self.share_overrides(&action, then).await {
                Ok(()) => self.events.record(
                    EventKind::Operator,
                    Some("cluster"),
                    format!(
                        "{}, made during the outage, shared with the cluster",
                        action.describe()
                    ),
                ),
                Err(why) => {
                    tracing::warn!(%why, "a change made during the outage is not shared yet")
                }
            }
        }
    }
}

/// Two records of one key: the one that stops it sooner.
fn stricter(mine: &KeyRecord, theirs: KeyRecord) -> KeyRecord {
    let earliest = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    KeyRecord {
        revoked_ms: earliest(mine.revoked_ms, theirs.revoked_ms),
        expires_ms: earliest(mine.expires_ms, theirs.expires_ms),
        ..theirs
    }
}
