//! Keeps the cache in the store: a task takes the changes the cache makes in memory and
//! writes them in batches, off the request path (in a blocking task), sweeping expired
//! entries as it goes; at shutdown it writes what is left and flushes.

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
/// writes what is left and flushes.
pub fn spawn_writer(cache: Arc<Cache>, store: Arc<dyn Store>) -> Background {
    let (sender, mut changes) = mpsc::unbounded_channel();
    cache.persist_to(sender);
    Background::spawn("cache writer", move |mut stopping| async move {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = changes.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                    write(&store, std::mem::take(&mut batch), false).await;
                }
                _ = sweep.tick() => {
                    cache.sweep();
                }
                () = stopping.requested() => {
                    while let Ok(change) = changes.try_recv() {
                        batch.push(change);
                    }
                    write(&store, batch, true).await;
                    return;
                }
            }
        }
    })
}

async fn write(store: &Arc<dyn Store>, changes: Vec<Write>, flush: bool) {
    let mut puts = Vec::new();
    let mut removes = Vec::new();
    for change in changes {
        match change {
            Write::Put(key, entry) => {
                if let Some(raw) = encode(&entry) {
                    puts.push((key, raw));
                }
            }
            Write::Remove(keys) => {
                // A later removal wins over an earlier put of the same key.
                puts.retain(|(key, _)| !keys.contains(key));
                removes.extend(keys);
            }
        }
    }
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.save_cache(&puts, &removes)?;
        if flush {
            store.flush()?;
        }
        Ok::<_, StoreError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        // The cache only saves work: an entry not written is an entry recomputed.
        Ok(Err(error)) => tracing::warn!(%error, "cached answers could not be written"),
        Err(error) => tracing::warn!(%error, "the cache writer task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
