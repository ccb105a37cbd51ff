//! Responses the gateway answered, kept so that a follow-up can name one
//! (`previous_response_id`) and a client can read or delete it.
//!
//! A response made by an instance that serves the Responses API itself is stored there:
//! the gateway keeps only which instance, and follow-ups go to it. A chat upstream keeps
//! nothing between requests, so for a translated response the gateway keeps the turn:
//! the items it added (the input, then the output), the response it returned, and the
//! turn before it. A follow-up walks that chain back to the first turn. Turns are held
//! in memory for `KEEP`, at most `MAX_TURNS` of them and `MAX_BYTES` in all, oldest
//! dropped first; a follow-up to a turn that is gone gets `previous_response_not_found`,
//! never an answer without its context. A tenant sees only its own responses.
//!
//! What is kept is also written to the store (`responses` tree) by a writer task, off the
//! request path, and read back at start, so follow-ups work across a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::background::Background;
use crate::store::{Pair, Store, StoreError};

/// How long a response is kept.
pub const KEEP: Duration = Duration::from_secs(6 * 3600);
/// At most this many responses are kept, the oldest dropped first.
pub const MAX_TURNS: usize = 20_000;
/// At most this many bytes of them (their JSON), the oldest dropped first.
pub const MAX_BYTES: usize = 64 << 20;
/// A conversation longer than this many turns is refused rather than walked.
const MAX_DEPTH: usize = 1_000;

/// One kept response, as text: kept often, read back rarely.
#[derive(Debug, Clone)]
pub struct Turn {
    pub tenant: String,
    /// The response this one followed, if any.
    pub previous: Option<String>,
    /// The instance that stores the response, when it serves the Responses API itself.
    pub instance: Option<String>,
    /// The Responses items this turn added (its input, then its output), as a JSON
    /// array; none for a response its instance stores.
    items: String,
    /// The Response object as the client got it; none for one its instance stores.
    response: Bytes,
    kept_ms: u64,
}

impl Turn {
    /// A response the gateway made from a chat answer: it keeps the conversation.
    pub fn held(tenant: &str, previous: Option<String>, items: &[Value], response: Bytes) -> Turn {
        Turn {
            tenant: tenant.to_string(),
            previous,
            instance: None,
            items: serde_json::to_string(items).unwrap_or_else(|_| "[]".into()),
            response,
            kept_ms: 0,
        }
    }

    /// A response `instance` stores itself.
    pub fn upstream(tenant: &str, previous: Option<String>, instance: &str) -> Turn {
        Turn {
            tenant: tenant.to_string(),
            previous,
            instance: Some(instance.to_string()),
            items: String::new(),
            response: Bytes::new(),
            kept_ms: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.tenant.len()
            + self.items.len()
            + self.response.len()
            + self.instance.as_ref().map_or(0, String::len)
            + 64
    }
}

/// Where a kept response is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Stored by this instance, which answers for it.
    Upstream(String),
    /// Kept here: the Response object.
    Here(Bytes),
}

/// What a follow-up continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Thread {
    /// A response stored by this instance: the follow-up goes there, as it is.
    Upstream(String),
    /// A conversation the gateway kept: every item of it, oldest first.
    Items(Vec<Value>),
}

/// Why a conversation could not be put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The named response (or one before it) is not kept, or is another tenant's.
    NotFound(String),
    /// The chain is longer than the gateway walks.
    TooLong,
}

#[derive(Default)]
struct Kept {
    turns: HashMap<String, Turn>,
    /// Ids in the order they were kept, for dropping the oldest.
    order: VecDeque<String>,
    bytes: usize,
}

pub struct Conversations {
    kept: Mutex<Kept>,
    max_turns: usize,
    max_bytes: usize,
    /// Where changes go to be written to the store, once a writer is attached.
    persist: OnceLock<mpsc::UnboundedSender<Change>>,
}

/// A change to write to the store.
enum Change {
    Keep(String, Vec<u8>),
    Forget(String),
}

/// A kept response as stored.
#[derive(Serialize, Deserialize)]
struct Saved {
    tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(default)]
    items: String,
    #[serde(default)]
    response: String,
    kept_ms: u64,
}

impl Turn {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Saved {
            tenant: self.tenant.clone(),
            previous: self.previous.clone(),
            instance: self.instance.clone(),
            items: self.items.clone(),
            response: String::from_utf8_lossy(&self.response).into_owned(),
            kept_ms: self.kept_ms,
        })
        .unwrap_or_default()
    }

    fn decode(raw: &[u8]) -> Option<Turn> {
        let saved: Saved = serde_json::from_slice(raw).ok()?;
        Some(Turn {
            tenant: saved.tenant,
            previous: saved.previous,
            instance: saved.instance,
            items: saved.items,
            response: Bytes::from(saved.response),
            kept_ms: saved.kept_ms,
        })
    }
}

impl Default for Conversations {
    fn default() -> Self {
        Conversations::with_limits(MAX_TURNS, MAX_BYTES)
    }
}

impl Conversations {
    pub fn new() -> Conversations {
        Conversations::default()
    }

    fn with_limits(max_turns: usize, max_bytes: usize) -> Conversations {
        Conversations {
            kept: Mutex::default(),
            max_turns,
            max_bytes,
            persist: OnceLock::new(),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `turn` as response `id`.
    pub fn keep(&self, id: &str, mut turn: Turn) {
        self.keep_at(id, &mut turn, crate::telemetry::now_ms());
    }

    fn keep_at(&self, id: &str, turn: &mut Turn, now_ms: u64) {
        turn.kept_ms = now_ms;
        if let Some(persist) = self.persist.get() {
            let _ = persist.send(Change::Keep(id.to_string(), turn.encode()));
        }
        self.insert(id, turn.clone(), now_ms);
    }

    fn insert(&self, id: &str, turn: Turn, now_ms: u64) {
        let mut kept = self.kept();
        kept.bytes += turn.bytes();
        if let Some(old) = kept.turns.insert(id.to_string(), turn) {
            kept.bytes -= old.bytes();
        } else {
            kept.order.push_back(id.to_string());
        }
        self.expire(&mut kept, now_ms);
    }

    fn forget(&self, id: String) {
        if let Some(persist) = self.persist.get() {
            let _ = persist.send(Change::Forget(id));
        }
    }

    /// Takes back what the store kept (at start): what is still within `KEEP`, oldest
    /// first, within the bounds; the rest is removed from the store.
    pub fn restore(&self, saved: Vec<Pair>) {
        self.restore_at(saved, crate::telemetry::now_ms());
    }

    fn restore_at(&self, saved: Vec<Pair>, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(KEEP.as_millis() as u64);
        let mut turns = Vec::with_capacity(saved.len());
        for (id, raw) in saved {
            let id = String::from_utf8_lossy(&id).into_owned();
            match Turn::decode(&raw).filter(|turn| turn.kept_ms >= cutoff) {
                Some(turn) => turns.push((id, turn)),
                None => self.forget(id),
            }
        }
        turns.sort_by_key(|(_, turn)| turn.kept_ms);
        let restored = turns.len();
        for (id, turn) in turns {
            self.insert(&id, turn, now_ms);
        }
        if restored > 0 {
            tracing::info!(restored, "kept responses restored");
        }
    }

    /// Drops what is past `KEEP`, then the oldest beyond the bounds.
    fn expire(&self, kept: &mut Kept, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(KEEP.as_millis() as u64);
        while let Some(oldest) = kept.order.front() {
            let over = kept.turns.len() > self.max_turns || kept.bytes > self.max_bytes;
            let stale = kept.turns.get(oldest).is_none_or(|t| t.kept_ms < cutoff);
            if !over && !stale {
                break;
            }
            if let Some(id) = kept.order.pop_front() {
                if let Some(turn) = kept.turns.remove(&id) {
                    kept.bytes -= turn.bytes();
                }
                self.forget(id);
            }
        }
    }

    /// Response `id` of `tenant`, if kept.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Held> {
        self.get_at(tenant, id, crate::telemetry::now_ms())
    }

    fn get_at(&self, tenant: &str, id: &str, now_ms: u64) -> Option<Held> {
        let cutoff = now_ms.saturating_sub(KEEP.as_millis() as u64);
        let kept = self.kept();
        let turn = kept
            .turns
            .get(id)
            .filter(|t| t.tenant == tenant && t.kept_ms >= cutoff)?;
        Some(match &turn.instance {
            Some(instance) => Held::Upstream(instance.clone()),
            None => Held::Here(turn.response.clone()),
        })
    }

    /// Forgets response `id` of `tenant`; whether it was kept.
    pub fn delete(&self, tenant: &str, id: &str) -> bool {
        let mut kept = self.kept();
        if kept.turns.get(id).is_none_or(|t| t.tenant != tenant) {
            return false;
        }
        if let Some(turn) = kept.turns.remove(id) {
            kept.bytes -= turn.bytes();
        }
        kept.order.retain(|kept_id| kept_id != id);
        self.forget(id.to_string());
        true
    }

    /// What a follow-up to response `id` continues: the instance that stores it, or
    /// every item of the conversation it ends, oldest first.
    pub fn history(&self, tenant: &str, id: &str) -> Result<Thread, Missing> {
        self.history_at(tenant, id, crate::telemetry::now_ms())
    }

    fn history_at(&self, tenant: &str, id: &str, now_ms: u64) -> Result<Thread, Missing> {
        let cutoff = now_ms.saturating_sub(KEEP.as_millis() as u64);
        let kept = self.kept();
        let mut turns = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(id) = next {
            if turns.len() >= MAX_DEPTH {
                return Err(Missing::TooLong);
            }
            let turn = kept
                .turns
                .get(&id)
                .filter(|t| t.tenant == tenant && t.kept_ms >= cutoff)
                .ok_or_else(|| Missing::NotFound(id.clone()))?;
            match &turn.instance {
                Some(instance) if turns.is_empty() => {
                    return Ok(Thread::Upstream(instance.clone()));
                }
                // A turn the gateway kept never follows one stored upstream (that
                // follow-up went to the upstream): the chain cannot be put together.
                Some(_) => return Err(Missing::NotFound(id)),
                None => {}
            }
            turns.push(turn);
            next = turn.previous.clone();
        }
        let mut items = Vec::new();
        for turn in turns.iter().rev() {
            let added: Vec<Value> = serde_json::from_str(&turn.items).unwrap_or_default();
            items.extend(added);
        }
        Ok(Thread::Items(items))
    }

    /// Responses kept, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.kept();
        (kept.turns.len(), kept.bytes)
    }
}

/// Changes a failed write left unwritten beyond which new responses are no longer
/// tracked (they stay in memory; only a restart would lose them).
const MAX_UNWRITTEN: usize = 100_000;

/// How often changes a failed write left are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Connects `conversations` to the store: every response kept or forgotten is written
/// in batches, off the request path (in a blocking task). Stopping the writer writes
/// what is left and flushes.
pub fn spawn_writer(conversations: &Conversations, store: Arc<dyn Store>) -> Background {
    let (sender, mut changes) = mpsc::unbounded_channel();
    let _ = conversations.persist.set(sender);
    Background::spawn("responses writer", move |mut stopping| async move {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut unwritten: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        loop {
            tokio::select! {
                n = changes.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                    note(&mut unwritten, batch.drain(..));
                    write(&store, &mut unwritten, false).await;
                }
                _ = retry.tick(), if !unwritten.is_empty() => {
                    write(&store, &mut unwritten, false).await;
                }
                () = stopping.requested() => {
                    while let Ok(change) = changes.try_recv() {
                        batch.push(change);
                    }
                    note(&mut unwritten, batch.drain(..));
                    if !write(&store, &mut unwritten, true).await {
                        tracing::error!(
                            responses = unwritten.len(),
                            "kept responses could not be written before stopping; follow-ups to them will be refused after a restart"
                        );
                    }
                    return;
                }
            }
        }
    })
}

/// Adds changes to those not yet written, the newest for each id winning.
fn note(unwritten: &mut HashMap<String, Option<Vec<u8>>>, changes: impl Iterator<Item = Change>) {
    for change in changes {
        let (id, value) = match change {
            Change::Keep(id, raw) => (id, Some(raw)),
            Change::Forget(id) => (id, None),
        };
        if value.is_some() && unwritten.len() >= MAX_UNWRITTEN && !unwritten.contains_key(&id) {
            continue;
        }
        unwritten.insert(id, value);
    }
}

/// Writes the changes (and flushes, with `flush`); whether they are in the store now.
/// What fails stays unwritten, unless a newer change came for it meanwhile.
async fn write(
    store: &Arc<dyn Store>,
    unwritten: &mut HashMap<String, Option<Vec<u8>>>,
    flush: bool,
) -> bool {
    let (mut puts, mut removes) = (Vec::new(), Vec::new());
    for (id, change) in unwritten.drain() {
        match change {
            Some(raw) => puts.push((id, raw)),
            None => removes.push(id),
        }
    }
    let writer = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let outcome = writer.save_responses(&puts, &removes).and_then(|()| {
            if flush {
                writer.flush()?;
            }
            Ok::<_, StoreError>(())
        });
        (outcome, puts, removes)
    })
    .await;
    match written {
        Ok((Ok(()), _, _)) => true,
        Ok((Err(error), puts, removes)) => {
            tracing::warn!(%error, responses = puts.len() + removes.len(), "kept responses could not be written; trying again");
            for (id, raw) in puts {
                unwritten.entry(id).or_insert(Some(raw));
            }
            for id in removes {
                unwritten.entry(id).or_insert(None);
            }
            false
        }
        Err(error) => {
            tracing::error!(%error, "the responses writer's blocking task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn turn(tenant: &str, previous: Option<&str>, text: &str) -> Turn {
        Turn::held(
            tenant,
            previous.map(str::to_string),
            &[
                json!({"role": "user", "content": text}),
                json!({"role": "assistant", "content": format!("re: {text}")}),
            ],
            Bytes::from(json!({"id": text}).to_string()),
        )
    }

    #[test]
    fn a_follow_up_gets_the_whole_conversation_in_order() {
        let c = Conversations::new();
        c.keep_at("r1", &mut turn("a", None, "one"), 1_000);
        c.keep_at("r2", &mut turn("a", Some("r1"), "two"), 2_000);
        c.keep_at("r3", &mut turn("a", Some("r2"), "three"), 3_000);
        let Thread::Items(history) = c.history_at("a", "r3", 4_000).unwrap() else {
            panic!("kept here");
        };
        let texts: Vec<&str> = history
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(
            texts,
            ["one", "re: one", "two", "re: two", "three", "re: three"]
        );
        assert_eq!(
            c.get_at("a", "r2", 4_000),
            Some(Held::Here(Bytes::from(r#"{"id":"two"}"#)))
        );
    }

    #[test]
    fn a_response_stored_upstream_is_followed_up_there() {
        let c = Conversations::new();
        c.keep_at("r1", &mut turn("a", None, "one"), 1_000);
        c.keep_at(
            "r2",
            &mut Turn::upstream("a", Some("r1".into()), "east-1"),
            2_000,
        );
        assert_eq!(
            c.history_at("a", "r2", 3_000),
            Ok(Thread::Upstream("east-1".into()))
        );
        assert_eq!(
            c.get_at("a", "r2", 3_000),
            Some(Held::Upstream("east-1".into()))
        );
        assert_eq!(
            c.history_at("b", "r2", 3_000),
            Err(Missing::NotFound("r2".into()))
        );
        // A kept turn after an upstream one cannot be walked back.
        c.keep_at("r3", &mut turn("a", Some("r2"), "three"), 3_000);
        assert_eq!(
            c.history_at("a", "r3", 4_000),
            Err(Missing::NotFound("r2".into()))
        );
    }

    #[test]
    fn what_the_store_kept_comes_back_and_what_expired_is_removed_from_it() {
        let (sender, mut written) = mpsc::unbounded_channel();
        let before = Conversations::new();
        let _ = before.persist.set(sender);
        before.keep_at("r1", &mut turn("a", None, "one"), 1_000);
        before.keep_at(
            "r2",
            &mut Turn::upstream("a", Some("r1".into()), "east-1"),
            2_000,
        );
        before.delete("a", "r1");
        let mut saved = HashMap::new();
        while let Ok(change) = written.try_recv() {
            match change {
                Change::Keep(id, raw) => saved.insert(id.into_bytes(), raw),
                Change::Forget(id) => saved.remove(id.as_bytes()),
            };
        }
        assert_eq!(saved.len(), 1, "r1 was forgotten");
        saved.insert(b"old".to_vec(), turn("a", None, "old").encode());
        saved.insert(b"junk".to_vec(), b"not json".to_vec());

        let (sender, mut removed) = mpsc::unbounded_channel();
        let after = Conversations::new();
        let _ = after.persist.set(sender);
        after.restore_at(saved.into_iter().collect(), 3_000);
        assert_eq!(
            after.history_at("a", "r2", 3_000),
            Ok(Thread::Upstream("east-1".into()))
        );
        // `old` was kept at 0 ms: with `now` at 3 s it is within KEEP too.
        assert!(after.get_at("a", "old", 3_000).is_some());
        let mut gone = Vec::new();
        while let Ok(Change::Forget(id)) = removed.try_recv() {
            gone.push(id);
        }
        assert_eq!(gone, ["junk"]);
        let later = KEEP.as_millis() as u64 + 1_500;
        let fresh = Conversations::new();
        let (sender, mut removed) = mpsc::unbounded_channel();
        let _ = fresh.persist.set(sender);
        fresh.restore_at(
            vec![(b"r2".to_vec(), Turn::upstream("a", None, "x").encode())],
            later,
        );
        assert!(
            matches!(removed.try_recv(), Ok(Change::Forget(id)) if id == "r2"),
            "expired"
        );
    }

    #[test]
    fn another_tenants_response_is_not_found() {
        let c = Conversations::new();
        c.keep_at("r1", &mut turn("a", None, "one"), 1_000);
        assert_eq!(
            c.history_at("b", "r1", 2_000),
            Err(Missing::NotFound("r1".into()))
        );
        assert_eq!(c.get_at("b", "r1", 2_000), None);
        assert!(!c.delete("b", "r1"));
        assert!(c.delete("a", "r1"));
        assert_eq!(c.size(), (0, 0));
    }

    #[test]
    fn a_conversation_with_a_turn_gone_is_not_found_rather_than_cut_short() {
        let c = Conversations::new();
        c.keep_at("r1", &mut turn("a", None, "one"), 1_000);
        c.keep_at("r2", &mut turn("a", Some("r1"), "two"), 2_000);
        assert!(c.delete("a", "r1"));
        assert_eq!(
            c.history_at("a", "r2", 3_000),
            Err(Missing::NotFound("r1".into()))
        );
    }

    #[test]
    fn responses_expire_and_the_oldest_go_first_beyond_the_bounds() {
        let c = Conversations::with_limits(4, 10_000);
        let keep = KEEP.as_millis() as u64;
        c.keep_at("old", &mut turn("a", None, "old"), 1_000);
        assert!(c.get_at("a", "old", 1_000 + keep).is_some());
        assert_eq!(
            c.get_at("a", "old", 1_001 + keep),
            None,
            "past KEEP, unreadable"
        );
        // Keeping another after KEEP sweeps the expired one out.
        c.keep_at("new", &mut turn("a", None, "new"), 2_000 + keep);
        assert_eq!(c.size().0, 1);
        let big = "x".repeat(1_000);
        for i in 0..4 {
            c.keep_at(&format!("big{i}"), &mut turn("a", None, &big), 3_000 + keep);
        }
        let (count, bytes) = c.size();
        assert!(bytes <= 10_000, "{bytes}");
        assert_eq!(count, 3, "bytes bound: the oldest were dropped");
        assert!(c.get_at("a", "new", 3_000 + keep).is_none());
        assert!(
            c.get_at("a", "big3", 3_000 + keep).is_some(),
            "the newest stays"
        );
        for i in 4..8 {
            c.keep_at(
                &format!("small{i}"),
                &mut turn("a", None, "s"),
                4_000 + keep,
            );
        }
        assert_eq!(c.size().0, 4, "count bound");
    }
}
