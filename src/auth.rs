//! Bearer key → tenant. Keys are hashed with SHA-256 on arrival and only the digest is
//! ever compared, stored or logged (as a short prefix).
//!
//! Lookup goes by digest, and the digest found is then compared with the presented one
//! in constant time, so the comparison itself leaks nothing about stored hashes.
//!
//! Keys from the config file and keys made at run time (`KeyRecord`s) live in one ring;
//! run-time keys can be added, expire, and be removed (revoked) while the gateway runs.

use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;

use crate::domain::{KeyHash, Tenant};
use crate::telemetry::Map;

/// Hashes a key the way config files and the key store expect.
/// The credentials of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110), surrounding whitespace ignored.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn hash_key(key: &str) -> KeyHash {
    KeyHash::of(key)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was provided; send it as `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key {id} has expired; ask your operator for a new one")]
    Expired { id: Arc<str> },
    #[error("too many failed authentications from this address; try again in {} s", .retry_after.as_secs().max(1))]
    TooManyFailures { retry_after: std::time::Duration },
}

impl AuthError {
    /// The OpenAI-style code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Invalid => "invalid_api_key",
            AuthError::Expired { .. } => "expired_api_key",
            AuthError::TooManyFailures { .. } => "too_many_failed_authentications",
        }
    }
}

/// Who is calling: the tenant (by index in the config) and the key's public id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: usize,
    pub key_id: Arc<str>,
}

#[derive(Debug, Clone)]
struct Held {
    tenant: usize,
    id: Arc<str>,
    expires_ms: Option<u64>,
}

/// Every accepted key, by digest.
#[derive(Debug, Default)]
pub struct Keyring {
    by_hash: RwLock<Map<KeyHash, Held>>,
}

/// The public id of a key written in the config file: `config:` and a digest prefix.
pub fn config_key_id(hash: &KeyHash) -> String {
    format!(
        "config:{:02x}{:02x}{:02x}{:02x}",
        hash.0[0], hash.0[1], hash.0[2], hash.0[3]
    )
}

impl Keyring {
    pub fn new(tenants: &[Tenant]) -> Keyring {
        let by_hash = tenants
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                t.keys.iter().map(move |k| {
                    let held = Held {
                        tenant: i,
                        id: config_key_id(k).into(),
                        expires_ms: None,
                    };
                    (*k, held)
                })
            })
            .collect();
        Keyring {
            by_hash: RwLock::new(by_hash),
        }
    }

    /// Accepts a key from now on, for `tenant` (an index), until `expires_ms` if given.
    pub fn insert(&self, hash: KeyHash, tenant: usize, id: &str, expires_ms: Option<u64>) {
        if let Ok(mut keys) = self.by_hash.write() {
            keys.insert(
                hash,
                Held {
                    tenant,
                    id: id.into(),
                    expires_ms,
                },
            );
        }
    }

    /// Stops accepting a key at once.
    pub fn remove(&self, hash: &KeyHash) {
        if let Ok(mut keys) = self.by_hash.write() {
            keys.remove(hash);
        }
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let key = authorization.and_then(bearer).unwrap_or_default();
        if key.is_empty() {
            return Err(AuthError::Missing);
        }
        let presented = hash_key(key);
        let keys = self.by_hash.read().map_err(|_| AuthError::Invalid)?;
        match keys.get_key_value(&presented) {
            Some((stored, held)) if bool::from(stored.0.ct_eq(&presented.0)) => {
                if held
                    .expires_ms
                    .is_some_and(|at| crate::telemetry::now_ms() >= at)
                {
                    return Err(AuthError::Expired {
                        id: held.id.clone(),
                    });
                }
                Ok(Caller {
                    tenant: held.tenant,
                    key_id: held.id.clone(),
                })
            }
            _ => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer("Bearer sy-1"), Some("sy-1"));
        assert_eq!(bearer("  bearer \t sy-1  "), Some("sy-1"));
        assert_eq!(bearer("BEARER sy-1"), Some("sy-1"));
        assert_eq!(bearer("Basic c3k="), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer   "), None);
    }

    fn keyring() -> Keyring {
        Keyring::new(&[
            Tenant {
                name: "acme".into(),
                tier: "pro".into(),
                keys: vec![hash_key("sy-acme")],
                overrides: Default::default(),
                regions: None,
                audit_content: false,
            },
            Tenant {
                name: "globex".into(),
                tier: "free".into(),
                keys: vec![hash_key("sy-globex-1"), hash_key("sy-globex-2")],
                overrides: Default::default(),
                regions: None,
                audit_content: false,
            },
        ])
    }

    #[test]
    fn bearer_keys_map_to_their_tenant() {
        let ring = keyring();
        let tenant = |key: &str| ring.authenticate(Some(key)).map(|c| c.tenant);
        assert_eq!(tenant("Bearer sy-acme"), Ok(0));
        assert_eq!(tenant("Bearer sy-globex-2"), Ok(1));
        let caller = ring.authenticate(Some("Bearer sy-acme"));
        assert_eq!(
            caller.map(|c| c.key_id.to_string()),
            Ok(config_key_id(&hash_key("sy-acme")))
        );
    }

    #[test]
    fn run_time_keys_come_expire_and_go() {
        let ring = keyring();
        ring.insert(hash_key("sy-new"), 1, "key_1", None);
        ring.insert(hash_key("sy-old"), 1, "key_2", Some(1));
        let caller = ring.authenticate(Some("Bearer sy-new"));
        assert_eq!(
            caller.map(|c| (c.tenant, c.key_id.to_string())),
            Ok((1, "key_1".into()))
        );
        assert_eq!(
            ring.authenticate(Some("Bearer sy-old")),
            Err(AuthError::Expired { id: "key_2".into() })
        );
        ring.remove(&hash_key("sy-new"));
        assert_eq!(
            ring.authenticate(Some("Bearer sy-new")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn missing_and_wrong_keys_are_told_apart() {
        let ring = keyring();
        assert_eq!(ring.authenticate(None), Err(AuthError::Missing));
        assert_eq!(ring.authenticate(Some("Bearer ")), Err(AuthError::Missing));
        assert_eq!(
            ring.authenticate(Some("Basic abc")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            ring.authenticate(Some("Bearer sy-acme2")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn hashes_round_trip_through_their_text_form() {
        let hash = hash_key("sy-demo-acme");
        assert_eq!(KeyHash::parse(&hash.to_string()), Ok(hash));
        assert!(!format!("{hash:?}").contains(&hash.to_string()[12..]));
    }
}

/// Failed authentications per source address, counted in fixed windows: a source that
/// fails too often is refused (429) until its window ends, and each window's failures
/// become one audit record per source and code (with a count) instead of one per
/// request, so a flood of bad keys can neither hammer the keyring nor flush the audit
/// log. The number of sources tracked is bounded; beyond it, failures are counted under
/// one "other sources" entry.
pub struct FailedAuth {
    max_failures: u32,
    window: std::time::Duration,
    tallies: std::sync::Mutex<FailedAuthWindow>,
}

struct FailedAuthWindow {
    started: tokio::time::Instant,
    by_source: std::collections::HashMap<Option<std::net::IpAddr>, Tally>,
}

#[derive(Default)]
struct Tally {
    failures: u32,
    by_code: std::collections::BTreeMap<&'static str, u64>,
}

/// One source's failures in a window, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAuthReport {
    /// `None`: sources beyond the bound, counted together.
    pub source: Option<std::net::IpAddr>,
    pub code: &'static str,
    pub count: u64,
}

/// Sources tracked in one window at most.
const MAX_SOURCES: usize = 10_000;

impl FailedAuth {
    pub fn new(max_failures: u32, window: std::time::Duration) -> FailedAuth {
        FailedAuth {
            max_failures,
            window,
            tallies: std::sync::Mutex::new(FailedAuthWindow {
                started: tokio::time::Instant::now(),
                by_source: std::collections::HashMap::new(),
            }),
        }
    }

    /// `Err(wait)` when `source` failed too often in this window.
    pub fn check(&self, source: Option<std::net::IpAddr>) -> Result<(), std::time::Duration> {
        let tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        match tallies.by_source.get(&source) {
            Some(t) if source.is_some() && t.failures >= self.max_failures => Err(self
                .window
                .saturating_sub(tallies.started.elapsed())
                .max(std::time::Duration::from_secs(1))),
            _ => Ok(()),
        }
    }

    /// Counts a failure with `code` from `source`.
    pub fn failed(&self, source: Option<std::net::IpAddr>, code: &'static str) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let key =
            if tallies.by_source.len() >= MAX_SOURCES && !tallies.by_source.contains_key(&source) {
                None
            } else {
                source
            };
        let tally = tallies.by_source.entry(key).or_default();
        tally.failures = tally.failures.saturating_add(1);
        *tally.by_code.entry(code).or_default() += 1;
    }

    /// Ends the window: what failed in it, by source and code, and a fresh count.
    pub fn take(&self) -> Vec<FailedAuthReport> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        tallies.started = tokio::time::Instant::now();
        let ended = std::mem::take(&mut tallies.by_source);
        drop(tallies);
        ended
            .into_iter()
            .flat_map(|(source, tally)| {
                tally
                    .by_code
                    .into_iter()
                    .map(move |(code, count)| FailedAuthReport {
                        source,
                        code,
                        count,
                    })
            })
            .collect()
    }

    /// How long a window lasts.
    pub fn window(&self) -> std::time::Duration {
        self.window
    }
}
