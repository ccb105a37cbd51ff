//! Plain types that every stage shares: tenants, tiers, regions, instances, models.
//!
//! Nothing here does I/O, holds locks or knows about HTTP; these are the nouns the
//! config produces and the rest of the gateway reads.

use std::fmt;
use std::time::Duration;

/// A priority level. Tenants are assigned to exactly one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
}

/// An organisation that calls the gateway with one or more API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub tier: String,
    /// Hashes of the keys that authenticate as this tenant.
    pub keys: Vec<KeyHash>,
}

/// A group of upstream instances tried together; regions are tried in failover order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    /// Lower goes first.
    pub order: u32,
    pub instances: Vec<Instance>,
}

/// One upstream model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Base URL including the API prefix, without a trailing slash, e.g. `http://127.0.0.1:9101/v1`.
    pub url: String,
    pub dialect: Dialect,
    /// Environment variable that holds the upstream API key, if the upstream wants one.
    pub api_key_env: Option<String>,
    pub max_concurrency: u32,
    pub weight: u32,
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dialect::OpenAi => f.write_str("openai"),
        }
    }
}

/// What an alias is used for; a chat alias cannot be asked for embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embeddings,
}

impl ModelKind {
    /// The path below an instance's base URL that serves this kind.
    pub fn upstream_path(self) -> &'static str {
        match self {
            ModelKind::Chat => "/chat/completions",
            ModelKind::Embeddings => "/embeddings",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::Chat => f.write_str("chat"),
            ModelKind::Embeddings => f.write_str("embeddings"),
        }
    }
}

/// A model alias that clients ask for, and where it is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub alias: String,
    pub kind: ModelKind,
    /// One entry per region that serves this alias, in failover order.
    pub deployments: Vec<Deployment>,
}

/// An alias as served by one region: the name the upstream knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub region: String,
    pub upstream_model: String,
}

/// How the gateway talks to upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect: Duration,
    /// Time allowed until the response headers arrive; for non-streaming requests, until
    /// the whole answer has arrived.
    pub response: Duration,
}

/// The SHA-256 digest of a tenant API key. The key itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Parses the `sha256:<64 hex digits>` form that config files and `keys hash` use.
    pub fn parse(text: &str) -> Result<KeyHash, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| "expected \"sha256:<64 hex digits>\"".to_string())?;
        if hex.len() != 64 {
            return Err(format!(
                "expected 64 hex digits after \"sha256:\", found {}",
                hex.len()
            ));
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "expected only hex digits after \"sha256:\"".to_string())?;
        }
        Ok(KeyHash(digest))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Debug shows only a prefix: enough to tell hashes apart in a log, too little to matter.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash(sha256:{:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}
