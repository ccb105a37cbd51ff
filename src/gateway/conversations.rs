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

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

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
        let mut kept = self.kept();
        kept.bytes += turn.bytes();
        if let Some(old) = kept.turns.insert(id.to_string(), turn.clone()) {
            kept.bytes -= old.bytes();
        } else {
            kept.order.push_back(id.to_string());
        }
        self.expire(&mut kept, now_ms);
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
            if let Some(id) = kept.order.pop_front()
                && let Some(turn) = kept.turns.remove(&id)
            {
                kept.bytes -= turn.bytes();
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
