//! Azure OpenAI: OpenAI's bodies and error shapes (content-filter fields pass through
//! untouched) at deployment URLs,
//! `{url}/openai/deployments/{deployment}/chat/completions?api-version=…`, the deployment
//! being the model's upstream name; the key goes in an `api-key` header.

use http::header::HeaderName;

use super::dialect::Dialect;
use crate::domain::{Instance, ModelKind};

pub struct Azure;

impl Dialect for Azure {
    fn url(&self, instance: &Instance, kind: ModelKind, deployment: &str) -> String {
        let deployment: String =
            url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
        format!(
            "{}/openai/deployments/{deployment}{}?api-version={}",
            instance.url,
            kind.upstream_path(),
            instance.api_version
        )
    }

    fn fixed_urls(&self) -> bool {
        false
    }

    fn key_header(&self, key: &str) -> (HeaderName, String) {
        (HeaderName::from_static("api-key"), key.to_string())
    }

    fn probe_url(&self, instance: &Instance, path: &str) -> String {
        format!(
            "{}/openai{path}?api-version={}",
            instance.url, instance.api_version
        )
    }
}
