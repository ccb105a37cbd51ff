//! The read side: an exact cache of deterministic answers, and coalescing of identical
//! requests in flight.
//!
//! A request is cacheable when its body settles its answer (`key::deterministic`), or
//! when the client opts in; `Cache-Control: no-store` and `x-switchyard-cache: off` opt
//! out, `no-cache` asks for a fresh answer that is then kept. Its key hashes the scope
//! (the tenant, unless the cache is shared), the endpoint and the canonical body.
//!
//! Entries live in memory, bounded in bytes, least recently used evicted first, each
//! valid for the TTL. Every change is also sent to a writer task (`persist`) that keeps
//! them in the store, so a restart starts warm and the request path never waits on disk.
//!
//! The first of identical cacheable requests leads: it goes upstream and lands the
//! answer for the others, who wait for it (plain answers) or read the leader's chunk log
//! (streams). A leader that fails, or whose client leaves, lands nothing; its followers
//! then go on their own, one of them leading.

pub mod key;
pub mod persist;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use key::{Directives, HEADER, Key};

use crate::admission::Usage;
use crate::domain::Fields;
use crate::domain::snapshot::{CacheScopeView, CacheView};
use crate::domain::{CachePolicy, CacheScope, ModelKind};
use crate::streams::hub::ChunkLog;
use crate::streams::usage_in_events;
use crate::telemetry::now_ms;

/// A kept answer.
#[derive(Debug)]
pub struct Entry {
    /// The tenant it belongs to, or "*" in a shared cache.
    pub scope: String,
    pub body: Stored,
    /// What the answer used when it was produced.
    pub usage: Usage,
    pub stored_ms: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone)]
pub enum Stored {
    Whole {
        content_type: String,
        bytes: Bytes,
    },
    /// A stream's SSE events, usage chunk and `[DONE]` included.
    Events(Vec<Bytes>),
}

impl Entry {
    pub fn size(&self) -> usize {
        let body = match &self.body {
            Stored::Whole {
                content_type,
                bytes,
            } => content_type.len() + bytes.len(),
            Stored::Events(events) => events.iter().map(|e| e.len() + 16).sum(),
        };
        body + self.scope.len() + 96
    }

    /// Seconds since the answer was stored, for the `age` header.
    pub fn age_secs(&self) -> u64 {
        now_ms().saturating_sub(self.stored_ms) / 1000
    }
}

/// How a request meets the cache, decided from its body and headers.
#[derive(Debug, Clone)]
pub struct Ask {
    /// `None`: not cacheable, or the client opted out.
    key: Option<Key>,
    scope: String,
    /// Whether a kept answer (or one in flight) may serve it; false for `no-cache`.
    read: bool,
}

/// What to do with a request.
pub enum Lookup {
    /// Not for the cache: go upstream, keep nothing.
    Bypass,
    Hit(Arc<Entry>),
    /// An identical request is in flight: wait for its answer.
    Follow(Follower),
    /// Go upstream and land the answer for whoever follows.
    Lead(Flight),
}

/// The answer of a flight, as its followers see it.
#[derive(Clone)]
pub enum Landing {
    Pending,
    Whole(Arc<Entry>),
    Stream(Arc<ChunkLog>),
    /// The leader got no answer worth sharing; followers go on their own.
    Failed,
}

/// A change the writer task makes in the store.
pub enum Write {
    Put(Key, Arc<Entry>),
    Remove(Vec<Key>),
}

pub struct Cache {
    policy: CachePolicy,
    entries: Mutex<Entries>,
    flights: Mutex<HashMap<Key, watch::Receiver<Landing>>>,
    counters: Counters,
    writes: OnceLock<mpsc::UnboundedSender<Write>>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    coalesced: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Slot>,
    /// Last use → key: the first is the least recently used.
    by_use: BTreeMap<u64, Key>,
    clock: u64,
    bytes: usize,
    /// Hits per scope since start.
    hits: HashMap<String, u64>,
}

struct Slot {
    entry: Arc<Entry>,
    used: u64,
    /// `entry.size()`, counted once.
    size: usize,
}

impl Entries {
    fn touch(&mut self, key: &Key) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(slot) = self.map.get_mut(key) {
            self.by_use.remove(&slot.used);
            slot.used = clock;
            self.by_use.insert(clock, *key);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Entry>> {
        let slot = self.map.remove(key)?;
        self.by_use.remove(&slot.used);
        self.bytes -= slot.size;
        Some(slot.entry)
    }

    fn insert(&mut self, key: Key, entry: Arc<Entry>) {
        self.remove(&key);
        self.clock += 1;
        let size = entry.size();
        self.bytes += size;
        self.by_use.insert(self.clock, key);
        self.map.insert(
            key,
            Slot {
                entry,
                used: self.clock,
                size,
            },
        );
    }

    /// Evicts the least recently used until `bytes` fit; returns the keys evicted.
    fn shrink_to(&mut self, bytes: usize) -> Vec<Key> {
        let mut evicted = Vec::new();
        while self.bytes > bytes {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(slot) = self.map.remove(&key) {
                self.bytes -= slot.size;
            }
            evicted.push(key);
        }
        evicted
    }
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Cache {
        Cache {
            policy,
            entries: Mutex::default(),
            flights: Mutex::default(),
            counters: Counters::default(),
            writes: OnceLock::new(),
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<Key, watch::Receiver<Landing>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, write: Write) {
        if let Some(writes) = self.writes.get() {
            let _ = writes.send(write);
        }
    }

    /// How a request meets the cache.
    pub fn ask(&self, tenant: &str, kind: ModelKind, body: &Fields, directives: Directives) -> Ask {
        let wanted = match directives.opt_in {
            Some(choice) => choice,
            None => key::deterministic(kind, body),
        };
        if !(self.policy.enabled && wanted && !directives.no_store) {
            return Ask {
                key: None,
                scope: String::new(),
                read: false,
            };
        }
        let scope = match self.policy.scope {
            CacheScope::Tenant => tenant.to_string(),
            CacheScope::Shared => "*".to_string(),
        };
        Ask {
            key: Some(key::key(&scope, kind, body)),
            scope,
            read: !directives.no_cache,
        }
    }

    /// Finds a kept answer or a flight to follow, or makes this request the leader.
    pub fn lookup(self: &Arc<Self>, ask: &Ask) -> Lookup {
        let Some(key) = ask.key else {
            self.counters.bypasses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Bypass;
        };
        // Flights first, then entries: a leader stores its entry before it ends its
        // flight, so a request always finds one or the other.
        let mut flights = self.flights();
        if ask.read {
            if let Some(entry) = self.get(&key) {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit(entry);
            }
            if let Some(landing) = flights.get(&key) {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                return Lookup::Follow(Follower(landing.clone()));
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let (landing, receiver) = watch::channel(Landing::Pending);
        let registered = !flights.contains_key(&key);
        if registered {
            flights.insert(key, receiver);
        }
        Lookup::Lead(Flight {
            cache: self.clone(),
            key,
            scope: ask.scope.clone(),
            landing,
            registered,
            landed: false,
        })
    }

    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let mut entries = self.entries();
        let entry = entries.map.get(key)?.entry.clone();
        if entry.expires_ms <= now_ms() {
            entries.remove(key);
            drop(entries);
            self.counters.expirations.fetch_add(1, Ordering::Relaxed);
            self.write(Write::Remove(vec![*key]));
            return None;
        }
        entries.touch(key);
        *entries.hits.entry(entry.scope.clone()).or_default() += 1;
        Some(entry)
    }

    /// Keeps an answer, evicting the least recently used beyond the size cap. Answers
    /// larger than `max_entry_size` are not kept.
    fn keep(&self, key: Key, entry: Arc<Entry>) {
        if entry.size() > self.policy.max_entry_bytes {
            return;
        }
        let evicted = {
            let mut entries = self.entries();
            entries.insert(key, entry.clone());
            entries.shrink_to(self.policy.max_bytes)
        };
        self.write(Write::Put(key, entry));
        if !evicted.is_empty() {
            self.counters
                .evictions
                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            self.write(Write::Remove(evicted));
        }
    }

    /// Drops every kept answer of `scope` (a tenant), or all of them; returns how many.
    pub fn purge(&self, scope: Option<&str>) -> usize {
        self.remove_where(|entry| scope.is_none_or(|s| entry.scope == s))
    }

    /// Drops expired entries; returns how many.
    pub fn sweep(&self) -> usize {
        let now = now_ms();
        let count = self.remove_where(|entry| entry.expires_ms <= now);
        self.counters
            .expirations
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// Drops the entries `doomed` picks, from memory and from the store.
    fn remove_where(&self, doomed: impl Fn(&Entry) -> bool) -> usize {
        let removed: Vec<Key> = {
            let mut entries = self.entries();
            let keys: Vec<Key> = entries
                .map
                .iter()
                .filter(|(_, slot)| doomed(&slot.entry))
                .map(|(key, _)| *key)
                .collect();
            for key in &keys {
                entries.remove(key);
            }
            keys
        };
        let count = removed.len();
        if count > 0 {
            self.write(Write::Remove(removed));
        }
        count
    }

    /// Puts back entries read from the store at start, oldest first so the newest
    /// survive the size cap; expired ones are dropped (and removed from the store).
    pub fn restore(&self, mut kept: Vec<(Key, Entry)>) {
        let now = now_ms();
        kept.sort_by_key(|(_, entry)| entry.stored_ms);
        let mut stale = Vec::new();
        let mut entries = self.entries();
        for (key, entry) in kept {
            if entry.expires_ms <= now || entry.size() > self.policy.max_entry_bytes {
                stale.push(key);
            } else {
                entries.insert(key, Arc::new(entry));
            }
        }
        stale.extend(entries.shrink_to(self.policy.max_bytes));
        drop(entries);
        if !stale.is_empty() {
            self.write(Write::Remove(stale));
        }
    }

    pub fn view(&self) -> CacheView {
        let entries = self.entries();
        let mut scopes: HashMap<&str, CacheScopeView> = HashMap::new();
        for slot in entries.map.values() {
            let scope = scopes
                .entry(&slot.entry.scope)
                .or_insert_with(|| CacheScopeView {
                    scope: slot.entry.scope.clone(),
                    ..CacheScopeView::default()
                });
            scope.entries += 1;
            scope.bytes += slot.size as u64;
        }
        let mut scopes: Vec<CacheScopeView> = scopes.into_values().collect();
        for (scope, hits) in &entries.hits {
            match scopes.iter_mut().find(|s| &s.scope == scope) {
                Some(view) => view.hits = *hits,
                None => scopes.push(CacheScopeView {
                    scope: scope.clone(),
                    hits: *hits,
                    ..CacheScopeView::default()
                }),
            }
        }
        scopes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.scope.cmp(&b.scope)));
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheView {
            enabled: self.policy.enabled,
            entries: entries.map.len() as u64,
            bytes: entries.bytes as u64,
            max_bytes: self.policy.max_bytes as u64,
            hits: count(&self.counters.hits),
            misses: count(&self.counters.misses),
            bypasses: count(&self.counters.bypasses),
            coalesced: count(&self.counters.coalesced),
            evictions: count(&self.counters.evictions),
            expirations: count(&self.counters.expirations),
            scopes,
        }
    }

    /// Routes every later change to `writes` (the writer task); once.
    pub fn persist_to(&self, writes: mpsc::UnboundedSender<Write>) {
        let _ = self.writes.set(writes);
    }

    fn entry(&self, scope: String, body: Stored, usage: Usage) -> Entry {
        let stored_ms = now_ms();
        Entry {
            scope,
            body,
            usage,
            stored_ms,
            expires_ms: stored_ms.saturating_add(self.policy.ttl.as_millis() as u64),
        }
    }
}

/// Waits for the leader of an identical request.
pub struct Follower(watch::Receiver<Landing>);

impl Follower {
    /// The leader's answer; `Failed` when it got none (or went away).
    pub async fn landed(mut self) -> Landing {
        match self
            .0
            .wait_for(|landing| !matches!(landing, Landing::Pending))
            .await
        {
            Ok(landing) => landing.clone(),
            Err(_) => Landing::Failed,
        }
    }
}

/// The leader's duty: land its answer for its followers and the cache. Dropped without
/// landing (an error, or the client left), it tells its followers to go on their own.
pub struct Flight {
    cache: Arc<Cache>,
    key: Key,
    scope: String,
    landing: watch::Sender<Landing>,
    /// Whether followers can find this flight (a `no-cache` request that found another
    /// flight under way leads alone).
    registered: bool,
    landed: bool,
}

impl Flight {
    /// Lands a whole answer: kept, and handed to the followers. Returns it as kept.
    pub fn land_whole(mut self, content_type: String, bytes: Bytes, usage: Usage) -> Arc<Entry> {
        let entry = Arc::new(self.cache.entry(
            self.scope.clone(),
            Stored::Whole {
                content_type,
                bytes,
            },
            usage,
        ));
        self.cache.keep(self.key, entry.clone());
        self.landing.send_replace(Landing::Whole(entry.clone()));
        self.end();
        entry
    }

    /// Lands a stream: followers read its chunk log from the start. The flight stays
    /// open, for late identical requests to join, until the log is complete; a stream
    /// that ended cleanly is then kept.
    pub fn land_stream(mut self, log: Arc<ChunkLog>) {
        self.landing.send_replace(Landing::Stream(log.clone()));
        self.landed = true;
        tokio::spawn(async move {
            log.wait_finished().await;
            let events = log.events();
            if log.completed_cleanly()
                && let Some(usage) = usage_in_events(&events)
            {
                let entry = Arc::new(self.cache.entry(
                    self.scope.clone(),
                    Stored::Events(events),
                    usage,
                ));
                self.cache.keep(self.key, entry);
            }
            self.end();
        });
    }

    fn end(&mut self) {
        self.landed = true;
        if self.registered {
            let mut flights = self.cache.flights();
            if flights
                .get(&self.key)
                .is_some_and(|r| r.same_channel(&self.landing.subscribe()))
            {
                flights.remove(&self.key);
            }
            self.registered = false;
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.landed {
            self.landing.send_replace(Landing::Failed);
        }
        self.end();
    }
}

#[cfg(test)]
mod tests;
