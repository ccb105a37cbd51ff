//! Which requests may be answered from the cache, and the key they are kept under.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::Fields;
use crate::domain::ModelKind;
pub use crate::domain::{CACHE_HEADER as HEADER, Directives};

/// A request's identity in the cache: SHA-256 over its scope, endpoint and body.
pub type Key = [u8; 32];

/// Whether the body alone determines the answer: embeddings always; chat at temperature
/// 0 or with a seed.
pub fn deterministic(kind: ModelKind, body: &Fields) -> bool {
    if kind == ModelKind::Embeddings {
        return true;
    }
    let temperature_zero = body
        .get("temperature")
        .and_then(|raw| raw.get().parse::<f64>().ok())
        .is_some_and(|t| t == 0.0);
    let seeded = body.get("seed").is_some_and(|raw| raw.get() != "null");
    temperature_zero || seeded
}

/// The key of a request: its scope, its endpoint, and its body with every object's keys
/// sorted, so that the same request written differently is the same entry. Left out:
/// `stream_options` (usage is always asked upstream and stripped per reader) and `user`
/// (it names the end user for abuse tracking and sessions; it does not change the
/// answer, and the scope already keeps tenants apart).
pub fn key(scope: &str, kind: ModelKind, body: &Fields) -> Key {
    let mut canonical = Vec::with_capacity(256);
    canonical.extend_from_slice(scope.as_bytes());
    canonical.push(0);
    canonical.extend_from_slice(kind.to_string().as_bytes());
    canonical.push(0);
    let mut fields: Vec<(&String, &serde_json::value::RawValue)> = body
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "stream_options" | "user"))
        .map(|(name, raw)| (name, &**raw))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, raw) in fields {
        canonical.extend_from_slice(name.as_bytes());
        canonical.push(0);
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => write_canonical(&value, &mut canonical),
            Err(_) => canonical.extend_from_slice(raw.get().as_bytes()),
        }
        canonical.push(0);
    }
    Sha256::digest(&canonical).into()
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (name, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, name);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // 0 and 0.0 are the same temperature.
        Value::Number(n)
            if n.is_f64()
                && n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15) =>
        {
            let whole = n.as_f64().unwrap_or_default() as i64;
            out.extend_from_slice(whole.to_string().as_bytes());
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        serde_json::from_str(json).unwrap_or_default()
    }

    #[test]
    fn the_same_request_written_differently_has_one_key() {
        let a =
            fields(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = fields(
            r#"{ "messages": [ {"content":"hi", "role":"user"} ], "temperature": 0, "model": "m",
                "stream_options": {"include_usage": true}, "user": "end-user-7" }"#,
        );
        assert_eq!(
            key("acme", ModelKind::Chat, &a),
            key("acme", ModelKind::Chat, &b)
        );
    }

    #[test]
    fn scope_endpoint_and_content_separate_keys() {
        let a = fields(r#"{"model":"m","temperature":0,"messages":[]}"#);
        let b = fields(r#"{"model":"m","temperature":0,"messages":[],"stream":true}"#);
        let base = key("acme", ModelKind::Chat, &a);
        assert_ne!(base, key("globex", ModelKind::Chat, &a));
        assert_ne!(base, key("acme", ModelKind::Embeddings, &a));
        assert_ne!(base, key("acme", ModelKind::Chat, &b));
    }

    #[test]
    fn only_settled_answers_are_deterministic() {
        let chat = |json| deterministic(ModelKind::Chat, &fields(json));
        assert!(chat(r#"{"temperature":0}"#));
        assert!(chat(r#"{"temperature":0.0}"#));
        assert!(chat(r#"{"seed":7,"temperature":1}"#));
        assert!(!chat(r#"{"temperature":0.2}"#));
        assert!(!chat(r#"{"seed":null}"#));
        assert!(!chat(r#"{}"#));
        assert!(deterministic(ModelKind::Embeddings, &fields("{}")));
    }
}
