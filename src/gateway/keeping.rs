//! What the gateway keeps across restarts beyond usage: tenant keys made at run time and
//! the operators' run-time overrides. Both are written to the store and flushed before
//! the operator is answered, so nothing acknowledged is lost to a crash.

use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::auth::hash_key;
use crate::domain::records::{
    AuditKind, AuditQuery, AuditRecord, KeyRecord, Overrides, TenantOverride,
};
use crate::domain::snapshot::{Action, EventKind};
use crate::store::{Store, StoreError};
use crate::telemetry::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no tenant is named {0}; `switchyard ctl tenants` lists them")]
    UnknownTenant(String),
    #[error("no key has the id {0}; `switchyard keys list` shows them")]
    UnknownKey(String),
    #[error("key {0} is already revoked")]
    Revoked(String),
    #[error("the key store is not available: {0}")]
    Store(String),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e.to_string())
    }
}

/// A key just made: its record, and the key itself, which is shown this once.
pub struct NewKey {
    pub record: KeyRecord,
    pub secret: String,
}

impl Gateway {
    /// Gives the gateway its store, for keys and overrides; once, at start.
    pub fn attach_store(&self, store: Arc<dyn Store>) {
        self.files.attach_store(store.clone());
        let _ = self.store.set(store);
    }

    /// Writes with the store off the async threads, then flushes.
    pub(super) async fn keep(
        &self,
        write: impl FnOnce(&dyn Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let Some(store) = self.store.get().cloned() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            write(store.as_ref())?;
            store.flush()
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the store task failed: {e}")))?
    }

    /// Puts back keys read from the store: the valid ones are accepted again.
    pub fn restore_keys(&self, records: Vec<KeyRecord>) {
        for record in records {
            self.hold_key(record);
        }
    }

    /// Makes the keyring follow a key's record (accepted while valid, refused once
    /// revoked or expired) and remembers the record.
    pub(super) fn hold_key(&self, record: KeyRecord) {
        // Expired keys stay known, so they are refused as expired, not as unknown.
        match self.tenant_index(&record.tenant) {
            Some(index) if record.revoked_ms.is_none() => {
                self.keyring
                    .insert(record.hash, index, &record.id, record.expires_ms);
            }
            _ => self.keyring.remove(&record.hash),
        }
        self.lock_keys().insert(record.id.clone(), record);
    }

    /// Keeps a key's record (written and flushed), then acts on it.
    async fn put_key(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let kept = record.clone();
        self.keep(move |store| store.save_key(&kept)).await?;
        self.hold_key(record.clone());
        self.share_key(record).await;
        Ok(())
    }

    /// A key that exists and is not revoked.
    fn live_key(&self, id: &str) -> Result<KeyRecord, KeyError> {
        let record = self
            .lock_keys()
            .get(id)
            .cloned()
            .ok_or_else(|| KeyError::UnknownKey(id.to_string()))?;
        match record.revoked_ms {
            Some(_) => Err(KeyError::Revoked(id.to_string())),
            None => Ok(record),
        }
    }

    pub(super) fn lock_keys(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, KeyRecord>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tenant_index(&self, tenant: &str) -> Option<usize> {
        self.config.tenants.iter().position(|t| t.name == tenant)
    }

    /// Keys made at run time, of one tenant or all, oldest first.
    pub fn keys(&self, tenant: Option<&str>) -> Vec<KeyRecord> {
        let mut keys: Vec<KeyRecord> = self
            .lock_keys()
            .values()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .cloned()
            .collect();
        keys.sort_by_key(|k| k.created_ms);
        keys
    }

    /// Makes a key for `tenant`, kept before it is returned.
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        expires_in: Option<Duration>,
        actor: &str,
    ) -> Result<NewKey, KeyError> {
        let _turn = self.writes.lock().await;
        self.make_key(tenant, name, expires_in, None, actor).await
    }

    async fn make_key(
        &self,
        tenant: &str,
        name: &str,
        expires_in: Option<Duration>,
        replaces: Option<String>,
        actor: &str,
    ) -> Result<NewKey, KeyError> {
        if self.tenant_index(tenant).is_none() {
            return Err(KeyError::UnknownTenant(tenant.to_string()));
        }
        let secret = format!("sy-{}", hex(&random::<24>()?));
        let id = loop {
            let id = format!("key_{}", hex(&random::<4>()?));
            if !self.lock_keys().contains_key(&id) {
                break id;
            }
        };
        let created_ms = now_ms();
        let record = KeyRecord {
            id,
            tenant: tenant.to_string(),
            name: name.to_string(),
            hash: hash_key(&secret),
            created_ms,
            expires_ms: expires_in.map(|d| {
                created_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
            revoked_ms: None,
            replaces,
        };
        self.put_key(&record).await?;
        let expiry = match record.expires_ms {
            Some(at) => format!(", expires in {}", human(at - created_ms)),
            None => String::new(),
        };
        self.record_key_action(
            actor,
            "create_key",
            &record,
            None,
            format!(
                "key {} made for {tenant}{}{expiry}",
                record.id,
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                },
            ),
        );
        Ok(NewKey { record, secret })
    }

    /// Stops a key at once, kept before it is returned.
    pub async fn revoke_key(&self, id: &str, actor: &str) -> Result<KeyRecord, KeyError> {
        let _turn = self.writes.lock().await;
        self.revoke(id, actor).await
    }

    /// Revokes a key; the caller holds the write turn.
    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, KeyError> {
        let before = self.live_key(id)?;
        let mut record = before.clone();
        record.revoked_ms = Some(now_ms());
        self.put_key(&record).await?;
        self.record_key_action(
            actor,
            "revoke_key",
            &record,
            Some(&before),
            format!("key {id} of {} revoked", record.tenant),
        );
        Ok(record)
    }

    /// Makes a new key for the same tenant and name; the old one stops after `grace`
    /// (at once without). Returns the new key.
    pub async fn rotate_key(
        &self,
        id: &str,
        grace: Option<Duration>,
        actor: &str,
    ) -> Result<NewKey, KeyError> {
        // One turn for the whole rotation: a revoke racing it waits, and then finds
        // (and keeps) the key as the rotation left it, never the other way round.
        let _turn = self.writes.lock().await;
        let old = self.live_key(id)?;
        let expires_in = old
            .expires_ms
            .map(|at| Duration::from_millis(at.saturating_sub(old.created_ms)));
        let new = self
            .make_key(
                &old.tenant,
                &old.name,
                expires_in,
                Some(old.id.clone()),
                actor,
            )
            .await?;
        match grace.filter(|g| !g.is_zero()) {
            None => {
                self.revoke(id, actor).await?;
            }
            Some(grace) => {
                let mut record = old.clone();
                let until = now_ms() + grace.as_millis() as u64;
                record.expires_ms = Some(record.expires_ms.map_or(until, |at| at.min(until)));
                self.put_key(&record).await?;
                self.record_key_action(
                    actor,
                    "expire_key",
                    &record,
                    Some(&old),
                    format!(
                        "key {id} of {} stops in {}",
                        record.tenant,
                        human(grace.as_millis() as u64)
                    ),
                );
            }
        }
        Ok(new)
    }

    fn record_key_action(
        &self,
        actor: &str,
        action: &str,
        record: &KeyRecord,
        before: Option<&KeyRecord>,
        message: String,
    ) {
        // The record without its digest: enough to know the key, nothing to guess it by.
        let public = |k: &KeyRecord| {
            serde_json::json!({
                "id": k.id, "tenant": k.tenant, "name": k.name,
                "expires_ms": k.expires_ms, "revoked_ms": k.revoked_ms,
            })
        };
        self.sinks.audit.record(AuditRecord {
            at_ms: now_ms(),
            kind: Some(AuditKind::Operator),
            tenant: Some(record.tenant.clone()),
            actor: Some(actor.to_string()),
            action: Some(action.to_string()),
            target: Some(record.id.clone()),
            before: before.map(public),
            after: Some(public(record)),
            outcome: Some(message.clone()),
            ..AuditRecord::default()
        });
        self.events
            .record(EventKind::Operator, Some(actor), message);
    }

    /// Audit records that match, oldest first; records made before the call included.
    pub async fn read_audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let Some(store) = self.store.get().cloned() else {
            return Ok(Vec::new());
        };
        self.sinks.audit.caught_up(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(move || store.read_audit(&query))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the store task failed: {e}")))?
    }

    /// Notes what an action changed for good (tier, limits, pause, drains, ejections).
    /// Returns whether anything did.
    pub(super) fn remember(&self, action: &Action) -> bool {
        let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let file_tier = |tenant: &str| {
            self.config
                .tenants
                .iter()
                .find(|t| t.name == tenant)
                .map(|t| t.tier.clone())
        };
        let set = |list: &mut Vec<String>, name: &str, on: bool| {
            list.retain(|n| n != name);
            if on {
                list.push(name.to_string());
            }
        };
        match action {
            Action::SetTier { tenant, tier } => {
                let entry = overrides.tenants.entry(tenant.clone()).or_default();
                entry.tier = (file_tier(tenant).as_deref() != Some(tier)).then(|| tier.clone());
            }
            Action::SetLimits { tenant, limits } => {
                let file = self.file_limits(tenant);
                let entry = overrides.tenants.entry(tenant.clone()).or_default();
                entry.limits = entry.limits.apply_change(limits, &file);
            }
            Action::PauseTenant { tenant } | Action::ResumeTenant { tenant } => {
                let entry = overrides.tenants.entry(tenant.clone()).or_default();
                entry.paused = matches!(action, Action::PauseTenant { .. });
            }
            Action::DrainRegion { region, .. } => set(&mut overrides.drained_regions, region, true),
            Action::UndrainRegion { region } => set(&mut overrides.drained_regions, region, false),
            Action::DrainInstance { instance, .. } => {
                set(&mut overrides.drained_instances, instance, true);
            }
            Action::UndrainInstance { instance } => {
                set(&mut overrides.drained_instances, instance, false);
            }
            Action::EjectInstance { instance } => {
                set(&mut overrides.ejected_instances, instance, true);
            }
            Action::RestoreInstance { instance } => {
                set(&mut overrides.ejected_instances, instance, false);
            }
            Action::ResetBudget { .. }
            | Action::KillStream { .. }
            | Action::CancelBatch { .. }
            | Action::CancelFlowRun { .. }
            | Action::PurgeCache { .. } => {
                return false;
            }
        }
        overrides.tenants.retain(|_, o| !o.is_empty());
        true
    }

    /// A tenant's limits as the config file sets them: its tier's, then its own.
    fn file_limits(&self, tenant: &str) -> crate::domain::Limits {
        let Some(t) = self.config.tenants.iter().find(|t| t.name == tenant) else {
            return crate::domain::Limits::default();
        };
        self.config
            .tier(&t.tier)
            .map(|tier| tier.limits)
            .unwrap_or_default()
            .overlay(&t.overrides)
    }

    /// Writes the overrides to the store and flushes.
    pub(super) async fn keep_overrides(&self) -> Result<(), StoreError> {
        // In turn, so the last write is always of the latest overrides.
        let _turn = self.writes.lock().await;
        let overrides = self.overrides().clone();
        self.keep(move |store| store.save_overrides(&overrides))
            .await
    }

    pub(super) fn overrides(&self) -> std::sync::MutexGuard<'_, Overrides> {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A tenant's run-time changes (empty when the config file rules).
    pub fn tenant_override(&self, tenant: &str) -> TenantOverride {
        self.overrides()
            .tenants
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Applies overrides read from the store at start, without recording them as new
    /// actions; what no longer fits the config (a tier or tenant removed) is dropped.
    pub fn restore_overrides(&self, overrides: Overrides) {
        let mut kept = Overrides::default();
        let mut applied = Vec::new();
        for (tenant, o) in overrides.tenants {
            let mut k = TenantOverride::default();
            if let Some(tier) = &o.tier
                && self.set_tier(&tenant, tier).is_ok()
            {
                k.tier = Some(tier.clone());
            }
            if !o.limits.set_fields().is_empty() && self.set_limits(&tenant, &o.limits).is_ok() {
                k.limits = o.limits;
            }
            if o.paused && self.pause(&tenant).is_ok() {
                k.paused = true;
            }
            if !k.is_empty() {
                applied.push(format!("{tenant} ({})", k.changed().join(", ")));
                kept.tenants.insert(tenant, k);
            }
        }
        for region in overrides.drained_regions {
            if self.drain(Some(&region), None, None).is_ok() {
                applied.push(format!("{region} drained"));
                kept.drained_regions.push(region);
            }
        }
        for instance in overrides.drained_instances {
            if self.drain(None, Some(&instance), None).is_ok() {
                applied.push(format!("{instance} drained"));
                kept.drained_instances.push(instance);
            }
        }
        for instance in overrides.ejected_instances {
            if self.eject(&instance).is_ok() {
                applied.push(format!("{instance} ejected"));
                kept.ejected_instances.push(instance);
            }
        }
        if !applied.is_empty() {
            self.events.record(
                EventKind::Operator,
                None,
                format!("run-time overrides restored: {}", applied.join("; ")),
            );
        }
        *self.overrides() = kept;
    }
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| KeyError::Store(format!("no randomness for a key: {e}")))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds as "30d", "2h", "15m" or "40s".
fn human(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
