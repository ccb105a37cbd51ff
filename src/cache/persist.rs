//! Keeps the cache in the store: a task takes the changes the cache makes in memory and
//! writes them in batches, off the request path (in a blocking task), sweeping expired
//! entries as it goes; at shutdown it writes what is left and flushes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Cache, Entry, Key, Stored, Write};
use crate::admission::Usage;
use crate::background::Background;
use crate::store::{Store, StoreError};

/// How often expired entries are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// An entry as stored: text, since every answer kept is JSON or SSE.
#[derive(Serialize, Deserialize)]
struct Record {
    scope: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    stored_ms: u64,
    expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    events: Option<Vec<String>>,
}

fn text(bytes: &Bytes) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// The stored form of an entry; `None` for an answer that is not UTF-8 (kept in memory
/// only).
fn encode(entry: &Entry) -> Option<Vec<u8>> {
    let (content_type, body, events) = match &entry.body {
        Stored::Whole {
            content_type,
            bytes,
        } => (Some(content_type.clone()), Some(text(bytes)?), None),
        Stored::Events(events) => (
            None,
            None,
            Some(events.iter().map(text).collect::<Option<Vec<_>>>()?),
        ),
    };
    serde_json::to_vec(&Record {
        scope: entry.scope.clone(),
        prompt_tokens: entry.usage.prompt_tokens,
        completion_tokens: entry.usage.completion_tokens,
        stored_ms: entry.stored_ms,
        expires_ms: entry.expires_ms,
        content_type,
        body,
        events,
    })
    .ok()
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let record: Record = serde_json::from_slice(raw).ok()?;
    let body = match (record.content_type, record.body, record.events) {
        (Some(content_type), Some(body), None) => Stored::Whole {
            content_type,
            bytes: Bytes::from(body),
        },
        (None, None, Some(events)) => Stored::Events(events.into_iter().map(Bytes::from).collect()),
        _ => return None,
    };
    Some(Entry {
        scope: record.scope,
        body,
        usage: Usage {
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            estimated: false,
        },
        stored_ms: record.stored_ms,
        expires_ms: record.expires_ms,
    })
}

/// Reads the kept answers back from the store; unreadable ones are skipped (and logged),
/// never fatal: the cache only ever saves work.
pub fn load(store: &dyn Store) -> Result<Vec<(Key, Entry)>, StoreError> {
    let mut kept = Vec::new();
    let mut unreadable = 0;
    for (key, raw) in store.load_cache()? {
        match (<Key>::try_from(key.as_slice()), decode(&raw)) {
            (Ok(key), Some(entry)) => kept.push((key, entry)),
            _ => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            "some cached answers in the database were unreadable and are ignored"
        );
    }
    Ok(kept)
}

/// Connects the cache to the store and starts writing its changes; stopping the writer
/// writes what is left and flushes. Changes a failed write could not keep are tried
/// again with the next batch and at every sweep, until the disk recovers.
pub fn spawn_writer(cache: Arc<Cache>, store: Arc<dyn Store>) -> Background {
    let (sender, mut changes) = mpsc::unbounded_channel();
    cache.persist_to(sender);
    Background::spawn("cache writer", move |mut stopping| async move {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut unwritten = Unwritten::default();
        loop {
            tokio::select! {
                n = changes.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                    unwritten.add(std::mem::take(&mut batch));
                    unwritten.write(&store, false).await;
                }
                _ = sweep.tick() => {
                    cache.sweep();
                    if !unwritten.is_empty() {
                        unwritten.write(&store, false).await;
                    }
                }
                () = stopping.requested() => {
                    while let Ok(change) = changes.try_recv() {
                        batch.push(change);
                    }
                    unwritten.add(batch);
                    if !unwritten.write(&store, true).await {
                        tracing::error!(
                            keys = unwritten.changes.len(),
                            "cache changes could not be written before stopping; removed answers may be served again after a restart until they expire"
                        );
                    }
                    return;
                }
            }
        }
    })
}

/// Keys a failed write left unwritten before the writer stops tracking them one by one.
const MAX_UNWRITTEN: usize = 100_000;

/// Cache changes not yet in the store, by key: the newest put, or a removal.
#[derive(Default)]
struct Unwritten {
    changes: HashMap<Key, Option<Vec<u8>>>,
    /// Too many changes went unwritten: once the store takes writes again, every kept
    /// answer is removed from it (the cache only saves work; a removed answer must never
    /// come back).
    forget_all: bool,
}

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.forget_all
    }

    fn add(&mut self, changes: Vec<Write>) {
        for change in changes {
            match change {
                // An entry that cannot be encoded is removed, so no older one stays.
                Write::Put(key, entry) => {
                    self.changes.insert(key, encode(&entry));
                }
                Write::Remove(keys) => self.changes.extend(keys.into_iter().map(|k| (k, None))),
            }
        }
        if self.changes.len() > MAX_UNWRITTEN {
            tracing::error!(
                keys = self.changes.len(),
                "too many cache changes are unwritten; the kept cache will be cleared from the database once it takes writes again"
            );
            self.changes.clear();
            self.forget_all = true;
        }
    }

    /// Writes the changes (and flushes, with `flush`); whether they are in the store now.
    /// What fails is kept as removals: a lost put only costs a recomputed answer.
    async fn write(&mut self, store: &Arc<dyn Store>, flush: bool) -> bool {
        let (mut puts, mut removes) = (Vec::new(), Vec::new());
        for (key, change) in self.changes.drain() {
            match change {
                Some(raw) => puts.push((key, raw)),
                None => removes.push(key),
            }
        }
        let forget_all = self.forget_all;
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let outcome = (|| {
                if forget_all {
                    let kept: Vec<Key> = store
                        .load_cache()?
                        .into_iter()
                        .filter_map(|(key, _)| key.try_into().ok())
                        .collect();
                    store.save_cache(&[], &kept)?;
                }
                store.save_cache(&puts, &removes)?;
                if flush {
                    store.flush()?;
                }
                Ok::<_, StoreError>(())
            })();
            (outcome, puts, removes)
        })
        .await;
        let (error, puts, removes) = match written {
            Ok((Ok(()), _, _)) => {
                self.forget_all = false;
                return true;
            }
            Ok((Err(error), puts, removes)) => (error.to_string(), puts, removes),
            // The blocking task panicked: what it held is gone, so clear it all later.
            Err(error) => {
                self.forget_all = true;
                (error.to_string(), Vec::new(), Vec::new())
            }
        };
        tracing::warn!(%error, keys = puts.len() + removes.len(), "cached answers could not be written; trying again");
        for key in puts.into_iter().map(|(key, _)| key).chain(removes) {
            self.changes.entry(key).or_insert(None);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::cache::{Ask, Lookup};
    use crate::domain::{CachePolicy, CacheScope, Directives, Fields, ModelKind};
    use crate::store::flaky::Flaky;
    use crate::store::{Persistence, SledStore, Watched};

    fn land(cache: &Arc<Cache>, tenant: &str, text: &str) -> Ask {
        let body: Fields = serde_json::from_str(&format!(
            r#"{{"model":"m","temperature":0,"messages":[{{"role":"user","content":"{text}"}}]}}"#
        ))
        .unwrap_or_default();
        let ask = cache.ask(tenant, ModelKind::Chat, &body, Directives::default());
        let Lookup::Lead(flight) = cache.lookup(&ask) else {
            panic!("expected to lead");
        };
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 1,
            estimated: false,
        };
        flight.land_whole("application/json".into(), Bytes::from_static(b"{}"), usage);
        ask
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn too_many_unwritten_changes_clear_the_kept_cache_once_the_store_takes_writes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sled = SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let raw = b"{}".to_vec();
        sled.save_cache(&[([1; 32], raw.clone()), ([2; 32], raw)], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn Store> = Arc::new(sled);
        let mut unwritten = Unwritten::default();
        let many = (0..=MAX_UNWRITTEN as u32)
            .map(|n| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&n.to_be_bytes());
                key[31] = 9;
                key
            })
            .collect();
        unwritten.add(vec![Write::Remove(many)]);
        assert!(unwritten.changes.is_empty() && unwritten.forget_all);
        assert!(unwritten.write(&store, true).await);
        assert!(
            store
                .load_cache()
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty()
        );
        assert!(unwritten.is_empty());
    }

    /// Regression: a failed batch was dropped, so an answer purged while the disk failed
    /// came back from the database after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_a_failing_disk_refused_are_written_once_it_recovers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let watched = Arc::new(Watched {
            inner: Flaky {
                inner: SledStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")),
                failing: AtomicBool::new(false),
            },
            health: Arc::new(Persistence::default()),
        });
        let store: Arc<dyn Store> = watched.clone();
        let policy = CachePolicy {
            enabled: true,
            ttl: Duration::from_secs(3600),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            scope: CacheScope::Tenant,
            hits_use_tokens: false,
        };
        let cache = Arc::new(Cache::new(policy.clone()));
        let writer = spawn_writer(cache.clone(), store.clone());
        let kept = || load(store.as_ref()).map(|k| k.len()).unwrap_or(usize::MAX);

        let purged = land(&cache, "acme", "purged while the disk fails");
        let on_disk = |ask: &Ask| {
            load(store.as_ref())
                .unwrap_or_default()
                .iter()
                .any(|(key, _)| Some(*key) == ask.key)
        };
        until("the answer is kept", || kept() == 1).await;

        watched.inner.failing.store(true, Ordering::SeqCst);
        assert_eq!(cache.purge(Some("acme")), 1);
        until("the failure shows", || watched.health.degraded().is_some()).await;
        land(&cache, "acme", "landed while the disk fails");
        assert_eq!(kept(), 1, "nothing written while the disk fails");

        watched.inner.failing.store(false, Ordering::SeqCst);
        let after = land(&cache, "globex", "landed after it recovered");
        // (The answer landed during the failure may be written or not, depending on
        // whether its batch came before the recovery.)
        until("the purge is written", || {
            on_disk(&after) && !on_disk(&purged) && watched.health.degraded().is_none()
        })
        .await;
        writer.stop().await;

        let restarted = Arc::new(Cache::new(policy));
        restarted.restore(load(store.as_ref()).unwrap_or_default());
        assert!(matches!(restarted.lookup(&after), Lookup::Hit(_)));
        assert!(
            matches!(restarted.lookup(&purged), Lookup::Lead(_)),
            "a purged answer came back after the restart"
        );
    }

    #[test]
    fn entries_survive_the_round_trip() {
        let entry = Entry {
            scope: "acme".into(),
            body: Stored::Events(vec![
                Bytes::from_static(b"data: {\"x\":1}\n\n"),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ]),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                estimated: false,
            },
            stored_ms: 10,
            expires_ms: 20,
        };
        let back = encode(&entry).and_then(|raw| decode(&raw));
        let Some(back) = back else {
            panic!("the entry did not come back");
        };
        assert_eq!(back.scope, "acme");
        assert_eq!(back.usage, entry.usage);
        assert_eq!((back.stored_ms, back.expires_ms), (10, 20));
        match back.body {
            Stored::Events(events) => {
                assert_eq!(events[1], Bytes::from_static(b"data: [DONE]\n\n"))
            }
            Stored::Whole { .. } => panic!("a stream came back whole"),
        }
    }
}
