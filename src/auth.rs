//! Bearer key → tenant. Keys are hashed with SHA-256 on arrival and only the digest is
//! ever compared, stored or logged (as a short prefix).
//!
//! Lookup goes by digest, and the digest found is then compared with the presented one
//! in constant time, so the comparison itself leaks nothing about stored hashes.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{KeyHash, Tenant};

/// Hashes a key the way config files and the key store expect.
pub fn hash_key(key: &str) -> KeyHash {
    KeyHash(Sha256::digest(key.as_bytes()).into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was provided; send it as `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
}

/// Every accepted key, by digest, pointing at the index of its tenant.
#[derive(Debug, Default)]
pub struct Keyring {
    by_hash: HashMap<KeyHash, usize>,
}

impl Keyring {
    pub fn new(tenants: &[Tenant]) -> Keyring {
        let by_hash = tenants
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.keys.iter().map(move |k| (*k, i)))
            .collect();
        Keyring { by_hash }
    }

    /// Authenticates the value of an `Authorization` header, returning the tenant index.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<usize, AuthError> {
        let header = authorization.map(str::trim).unwrap_or_default();
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if key.is_empty() {
            return Err(AuthError::Missing);
        }
        let presented = hash_key(key);
        match self.by_hash.get_key_value(&presented) {
            Some((stored, &tenant)) if bool::from(stored.0.ct_eq(&presented.0)) => Ok(tenant),
            _ => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(&[
            Tenant {
                name: "acme".into(),
                tier: "pro".into(),
                keys: vec![hash_key("sy-acme")],
                overrides: Default::default(),
                regions: None,
            },
            Tenant {
                name: "globex".into(),
                tier: "free".into(),
                keys: vec![hash_key("sy-globex-1"), hash_key("sy-globex-2")],
                overrides: Default::default(),
                regions: None,
            },
        ])
    }

    #[test]
    fn bearer_keys_map_to_their_tenant() {
        let ring = keyring();
        assert_eq!(ring.authenticate(Some("Bearer sy-acme")), Ok(0));
        assert_eq!(ring.authenticate(Some("Bearer sy-globex-2")), Ok(1));
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
