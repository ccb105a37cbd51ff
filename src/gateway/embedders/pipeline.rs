//! The pipeline embedder: texts embedded by any embeddings alias through
//! `Gateway::serve` as the tenant, `EMBED_BATCH` texts a request, so embeddings obey
//! the tenant's limits and budgets and fail over like any request of its own.

use base64::Engine;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{Asker, EMBED_BATCH, Embedded, Embedder};
use crate::domain::ModelKind;
use crate::gateway::Gateway;
use crate::gateway::flows::Failure;

pub(super) struct Pipeline;

impl Embedder for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn embed<'a>(
        &'a self,
        gateway: &'a Gateway,
        asker: Asker<'a>,
        model: &'a str,
        texts: &'a [String],
        request_ids: &'a mut Vec<String>,
    ) -> BoxFuture<'a, Result<Embedded, Failure>> {
        Box::pin(embed(gateway, asker, model, texts, request_ids))
    }
}

async fn embed(
    gateway: &Gateway,
    (tenant, caller): Asker<'_>,
    model: &str,
    texts: &[String],
    request_ids: &mut Vec<String>,
) -> Result<Embedded, Failure> {
    let mut out = Embedded::default();
    for batch in texts.chunks(EMBED_BATCH) {
        let body = json!({"model": model, "input": batch});
        let embeddings = ("/v1/embeddings", ModelKind::Embeddings);
        let answer = gateway
            .model_call(tenant, caller, embeddings, body, request_ids)
            .await?;
        out.prompt_tokens += answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        let vectors = vectors_of(&answer, batch.len()).ok_or_else(|| Failure {
            code: "bad_embeddings".into(),
            message: format!(
                "the embeddings answer of model {model} did not hold {} vectors",
                batch.len()
            ),
            retryable: false,
        })?;
        out.vectors.extend(vectors);
    }
    Ok(out)
}

/// The vectors of an embeddings answer, in input order, as floats or base64.
fn vectors_of(answer: &Value, expected: usize) -> Option<Vec<Vec<f32>>> {
    let data = answer["data"].as_array()?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for item in data {
        let index = item["index"].as_u64()? as usize;
        let vector = match &item["embedding"] {
            Value::Array(floats) => floats
                .iter()
                .map(|f| f.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()?,
            Value::String(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => return None,
        };
        *vectors.get_mut(index)? = Some(vector);
    }
    vectors.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_read_as_floats_or_base64_in_input_order() {
        let packed: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let answer = json!({"data": [
            {"index": 1, "embedding": base64::engine::general_purpose::STANDARD.encode(packed)},
            {"index": 0, "embedding": [1.0, 0.25]},
        ]});
        assert_eq!(
            vectors_of(&answer, 2),
            Some(vec![vec![1.0, 0.25], vec![0.5, -2.0]])
        );
        // One vector short, or one out of range: not an answer to these texts.
        assert_eq!(vectors_of(&answer, 3), None);
        assert_eq!(vectors_of(&answer, 1), None);
    }
}
