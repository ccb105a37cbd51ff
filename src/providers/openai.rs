//! The OpenAI dialect (OpenAI itself, vLLM, llama.cpp, Ollama, LiteLLM…): the body goes
//! upstream as the pipeline made it, to `{url}/chat/completions`, `{url}/embeddings` or
//! `{url}/completions`, with the key as a bearer token.

use http::header::{AUTHORIZATION, HeaderName};

use super::dialect::Dialect;
use crate::domain::{Instance, ModelKind};

pub struct OpenAi;

impl Dialect for OpenAi {
    fn url(&self, instance: &Instance, kind: ModelKind, _deployment: &str) -> String {
        format!("{}{}", instance.url, kind.upstream_path())
    }

    fn key_header(&self, key: &str) -> (HeaderName, String) {
        (AUTHORIZATION, format!("Bearer {key}"))
    }
}
