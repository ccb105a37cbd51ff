//! What the gateway keeps on the record: managed keys, audit records, and the run-time
//! overrides operators made. Plain serde types; `store` writes them, the rest reads them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{KeyHash, Limits};

/// A file a tenant uploaded (`POST /v1/files`), validated line by line; its contents
/// live under the data directory, this in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `file-` and 24 letters and digits.
    pub id: String,
    pub tenant: String,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    /// The requests it holds (its non-empty lines).
    pub lines: u64,
}

/// A run of a flow (`POST /v1/flows/{name}/runs`): its steps as they went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRun {
    /// `run_` and 24 letters and digits.
    pub id: String,
    pub flow: String,
    pub tenant: String,
    /// running, completed or failed.
    pub status: String,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub ended_at: Option<u64>,
    pub input: serde_json::Value,
    pub steps: Vec<StepRun>,
    /// The output of the flow's output step, once it completed.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// Why it failed: the step, a code and a message.
    #[serde(default)]
    pub error: Option<StepError>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A row of a tenant's vector collection (filled by flows' `embed` steps), as the store
/// keeps it: the index is rebuilt from these at start.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    pub tenant: String,
    pub collection: String,
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub vector: Vec<f32>,
}

/// One step of a flow run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    pub kind: String,
    /// completed or failed.
    pub status: String,
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    pub attempts: u32,
    pub elapsed_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The model calls it made, by request id (each in the audit log).
    #[serde(default)]
    pub request_ids: Vec<String>,
    #[serde(default)]
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub step: String,
    pub code: String,
    pub message: String,
}

/// A batch job (`POST /v1/batches`): its state as OpenAI's batch object says it. The
/// results live in files under the data directory, line by line as they come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// `batch_` and 24 letters and digits.
    pub id: String,
    pub tenant: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    /// validating, in_progress, finalizing, completed, failed, expired, cancelling,
    /// cancelled.
    pub status: String,
    /// Unix seconds of each step reached.
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    pub in_progress_at: Option<u64>,
    #[serde(default)]
    pub finalizing_at: Option<u64>,
    #[serde(default)]
    pub completed_at: Option<u64>,
    #[serde(default)]
    pub failed_at: Option<u64>,
    #[serde(default)]
    pub expired_at: Option<u64>,
    #[serde(default)]
    pub cancelling_at: Option<u64>,
    #[serde(default)]
    pub cancelled_at: Option<u64>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    /// Tokens its lines used (read back from the output after a restart).
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    /// Why the batch failed validation, by line.
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

impl BatchRecord {
    /// Whether the batch has reached the end of its life.
    pub fn ended(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        )
    }
}

/// A tenant key made at run time. The key itself is shown once, at creation; only its
/// digest is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public and short, e.g. `key_3f9a2c71`: how the key is named in lists, audit and
    /// revocations.
    pub id: String,
    pub tenant: String,
    /// What the key is for, e.g. "ci".
    #[serde(default)]
    pub name: String,
    #[serde(with = "digest")]
    pub hash: KeyHash,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    /// The key this one replaced, when it was made by a rotation.
    #[serde(default)]
    pub replaces: Option<String>,
}

impl KeyRecord {
    /// Whether the key is accepted at `now_ms`.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|at| now_ms < at)
    }

    /// "active", "revoked" or "expired".
    pub fn state(&self, now_ms: u64) -> &'static str {
        match (self.revoked_ms, self.expires_ms) {
            (Some(_), _) => "revoked",
            (None, Some(at)) if now_ms >= at => "expired",
            _ => "active",
        }
    }
}

mod digest {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::KeyHash;

    pub fn serialize<S: Serializer>(hash: &KeyHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hash.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyHash, D::Error> {
        let text = String::deserialize(d)?;
        KeyHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A client request, answered or refused.
    Request,
    /// An operator's action (tier, limits, pause, drain, keys, purge, …).
    Operator,
    /// A flow's call of a tool: `action` the tool, `target` the step, `key_id` the run.
    Tool,
}

/// One decision on the record. Request records fill the request fields, operator
/// records the operator fields; absent fields are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: u64,
    pub kind: Option<AuditKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    // A request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Arc<str>>,
    /// The key's public id (`key_…`), or `config:<digest prefix>` for keys in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The OpenAI error code the client got, e.g. `rate_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_reserved: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// The usage was counted by the gateway, not reported by the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<bool>,
    /// The upstream reported more than is plausible for the request; what was charged
    /// was capped (see the log for what it reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_capped: Option<bool>,
    /// The client's address, on records that stand for requests without a tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How many requests this one record stands for (failed authentications are
    /// recorded once per source and interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// `hit`, `miss` or `bypass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cow<'static, str>>,
    /// Why the request went where it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    /// The request's messages or input, for tenants that opted in (`audit_content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<serde_json::Value>,
    /// The answer's text, for tenants that opted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    // An operator's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// What the gateway answered the operator: done, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The replica that made the record, when replicas share state (each keeps its
    /// own audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl AuditRecord {
    /// One line for a person: what happened, to whom, how it ended.
    pub fn summary(&self) -> String {
        if self.kind == Some(AuditKind::Operator) {
            return format!(
                "operator {}: {}",
                self.actor.as_deref().unwrap_or("?"),
                self.outcome.as_deref().unwrap_or("")
            );
        }
        let mut line = format!(
            "request  {} {} {}",
            self.tenant.as_deref().unwrap_or("(no tenant)"),
            self.status.map_or("-".into(), |s| s.to_string()),
            self.model.as_deref().unwrap_or("-"),
        );
        if let Some(error) = &self.error {
            line.push_str(&format!(" {error}"));
        }
        if let (Some(p), Some(c)) = (self.prompt_tokens, self.completion_tokens) {
            let estimated = if self.estimated == Some(true) {
                " (estimated)"
            } else {
                ""
            };
            line.push_str(&format!(" {p}+{c} tokens{estimated}"));
        }
        if let Some(ms) = self.latency_ms {
            line.push_str(&format!(" {ms}ms"));
        }
        if self.cache.as_deref() == Some("hit") {
            line.push_str(" cache hit");
        } else if let Some(instance) = &self.instance {
            line.push_str(&format!(" via {instance}"));
        }
        line
    }
}

/// Which audit records to read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// From this time (inclusive), milliseconds since the epoch.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Until this time (exclusive).
    #[serde(default)]
    pub until_ms: Option<u64>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub kind: Option<AuditKind>,
    /// An exact status (`429`), a class (`5xx`), or `error` (any status of 400 or more).
    #[serde(default)]
    pub status: Option<String>,
    /// At most this many, the newest; 0 means no limit.
    #[serde(default)]
    pub limit: usize,
}

impl AuditQuery {
    /// Whether `record` passes the filters other than time.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        if self.tenant.is_some() && record.tenant != self.tenant {
            return false;
        }
        if self.kind.is_some() && record.kind != self.kind {
            return false;
        }
        match (&self.status, record.status) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(wanted), Some(status)) => match wanted.as_str() {
                "error" => status >= 400,
                class if class.len() == 3 && class.ends_with("xx") => class
                    .chars()
                    .next()
                    .and_then(|c| c.to_digit(10))
                    .is_some_and(|d| u32::from(status) / 100 == d),
                exact => exact.parse::<u16>().is_ok_and(|s| s == status),
            },
        }
    }
}

/// What operators changed at run time, kept so it survives restarts. Empty means the
/// config file rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantOverride>,
    #[serde(default)]
    pub drained_regions: Vec<String>,
    #[serde(default)]
    pub drained_instances: Vec<String>,
    #[serde(default)]
    pub ejected_instances: Vec<String>,
}

/// A tenant's run-time changes: only what an operator set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Only the limits an operator set (others are `None`).
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub paused: bool,
}

impl TenantOverride {
    /// The names of what differs from the config file: "tier", "rpm", "paused", ….
    pub fn changed(&self) -> Vec<String> {
        let mut changed = Vec::new();
        if self.tier.is_some() {
            changed.push("tier".to_string());
        }
        changed.extend(self.limits.set_fields().into_iter().map(str::to_string));
        if self.paused {
            changed.push("paused".to_string());
        }
        changed
    }

    pub fn is_empty(&self) -> bool {
        self.changed().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_take_codes_classes_and_errors() {
        let record = |status| AuditRecord {
            status: Some(status),
            ..AuditRecord::default()
        };
        let query = |status: &str| AuditQuery {
            status: Some(status.into()),
            ..AuditQuery::default()
        };
        assert!(query("429").matches(&record(429)));
        assert!(!query("429").matches(&record(200)));
        assert!(query("4xx").matches(&record(403)));
        assert!(!query("5xx").matches(&record(403)));
        assert!(query("error").matches(&record(503)));
        assert!(!query("error").matches(&record(200)));
    }

    #[test]
    fn a_limit_put_back_to_the_files_value_is_no_override() {
        let file = Limits {
            rpm: Some(600),
            ..Limits::default()
        };
        let set = |rpm, tpm| Limits {
            rpm,
            tpm,
            ..Limits::default()
        };
        let changed = Limits::default().apply_change(&set(Some(10), Some(5_000)), &file);
        assert_eq!(changed.set_fields(), ["rpm", "tpm"]);
        let back = changed.apply_change(&set(Some(600), None), &file);
        assert_eq!(back.set_fields(), ["tpm"]);
        assert_eq!(back.tpm, Some(5_000));
    }

    #[test]
    fn a_key_stops_at_revocation_or_expiry() {
        let mut key = KeyRecord {
            id: "key_1".into(),
            tenant: "acme".into(),
            name: String::new(),
            hash: KeyHash([0; 32]),
            created_ms: 0,
            expires_ms: Some(100),
            revoked_ms: None,
            replaces: None,
        };
        assert!(key.valid_at(99));
        assert_eq!(key.state(100), "expired");
        key.expires_ms = None;
        key.revoked_ms = Some(5);
        assert!(!key.valid_at(1));
        assert_eq!(key.state(1), "revoked");
        let back: KeyRecord =
            serde_json::from_str(&serde_json::to_string(&key).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, key);
    }
}
