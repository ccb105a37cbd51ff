//! What a dialect is: how the pipeline's requests (always OpenAI's wire format) are sent
//! to an upstream that speaks it, and how its answers come back in OpenAI's format. The
//! stages above never learn which dialect answered.
//!
//! Adding one: a file beside this one implementing `Dialect`, a variant of
//! `domain::Dialect` (in `Dialect::ALL`, with its config name), and its arm in `of`.
//! No stage changes.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

use super::{anthropic, azure, openai};
use crate::domain::{self, Instance, ModelKind};

/// The implementation of each dialect: the table that registers them.
pub fn of(dialect: domain::Dialect) -> &'static dyn Dialect {
    match dialect {
        domain::Dialect::OpenAi => &openai::OpenAi,
        domain::Dialect::Azure => &azure::Azure,
        domain::Dialect::Anthropic => &anthropic::Anthropic,
    }
}

/// One wire protocol. Only `url` and `key_header` have no default: the defaults are
/// OpenAI's format, passed through untouched.
pub trait Dialect: Send + Sync {
    /// Whether the dialect has an endpoint for requests of `kind`.
    fn serves(&self, _kind: ModelKind) -> bool {
        true
    }

    /// Where a request of `kind` (one it serves) goes, for the model the instance calls
    /// `deployment`.
    fn url(&self, instance: &Instance, kind: ModelKind, deployment: &str) -> String;

    /// Whether `url` is the same for every deployment (worked out once, at start).
    fn fixed_urls(&self) -> bool {
        true
    }

    /// The header that carries the instance's key.
    fn key_header(&self, key: &str) -> (HeaderName, String);

    /// Headers every request and probe carries besides the key.
    fn headers(&self) -> &'static [(HeaderName, HeaderValue)] {
        &[]
    }

    /// The URL of an active health probe of `path` (`health.probe_path`).
    fn probe_url(&self, instance: &Instance, path: &str) -> String {
        format!("{}{path}", instance.url)
    }

    /// The upstream's body for the pipeline's request (OpenAI's format); an error says
    /// what this dialect cannot express, and fails the attempt before anything is sent.
    fn request(&self, _kind: ModelKind, body: Bytes) -> Result<Bytes, String> {
        Ok(body)
    }

    /// The upstream's status as failover reads it (Anthropic's 529 "overloaded" is a 503).
    fn status(&self, status: StatusCode) -> StatusCode {
        status
    }

    /// A whole answer, 2xx or not, in OpenAI's format.
    fn answer(&self, _kind: ModelKind, _status: StatusCode, body: Bytes) -> Bytes {
        body
    }

    /// How a 2xx stream of a request of `kind` becomes OpenAI's chat chunks; none passes
    /// it through.
    fn stream(&self, _kind: ModelKind) -> Option<Box<dyn Translate>> {
        None
    }
}

/// Turns a stream in a dialect's framing into OpenAI's SSE chunks as bytes arrive.
pub trait Translate: Send {
    /// The OpenAI events that `bytes` complete (possibly none).
    fn push(&mut self, bytes: &[u8]) -> Bytes;
    /// Whatever is owed once the upstream's body ends.
    fn finish(&mut self) -> Bytes;
}
