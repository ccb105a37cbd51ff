//! `POST /v1/embeddings`: deterministic unit vectors, as floats or base64 like OpenAI.
//! A text's vector is the sum of a fixed random vector per word (lowercased), made unit
//! length, so texts that share words are near each other as a real model's would be
//! for texts on one subject; retrieval can be tested on it end to end.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::{MockState, wire};

pub async fn create(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    state.bump(&state.counters.embeddings_requests);
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return wire::bad_json(&e),
    };
    state.remember(&request);
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return wire::missing_parameter("model");
    };
    if !state.models.iter().any(|m| m == model) {
        return wire::unknown_model(model);
    }
    let inputs = match inputs(request.get("input")) {
        Some(Ok(inputs)) => inputs,
        Some(Err(())) => {
            return wire::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "'input' must be a string, an array of strings, or an array of token arrays.",
            );
        }
        None => return wire::missing_parameter("input"),
    };
    let knobs = state.knobs();
    let dimensions = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .map(|d| d as usize)
        .unwrap_or(knobs.dimensions)
        .clamp(1, 8192);
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64")
        && !knobs.embeddings_floats_only;

    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += input.tokens;
            let vector = text_vector(&input.seeds, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    }))
    .into_response()
}

struct Input {
    /// One per word (or one for the whole input when it has no words).
    seeds: Vec<u64>,
    tokens: u64,
}

/// Accepts what OpenAI accepts: a string, an array of strings, an array of token ids, or
/// an array of arrays of token ids. `None` when there is no input at all.
fn inputs(input: Option<&Value>) -> Option<Result<Vec<Input>, ()>> {
    let text = |s: &str| {
        let mut seeds: Vec<u64> = s
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| wire::fnv(w.to_lowercase().as_bytes()))
            .collect();
        if seeds.is_empty() {
            seeds.push(wire::fnv(s.as_bytes()));
        }
        Input {
            seeds,
            tokens: wire::text_tokens(s),
        }
    };
    let tokens = |ids: &[Value]| Input {
        seeds: vec![wire::fnv(Value::Array(ids.to_vec()).to_string().as_bytes())],
        tokens: ids.len() as u64,
    };
    Some(match input? {
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(items) if items.is_empty() => Err(()),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![tokens(items)]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(text(s)),
                Value::Array(ids) if ids.iter().all(Value::is_number) => Ok(tokens(ids)),
                _ => Err(()),
            })
            .collect(),
        _ => Err(()),
    })
}

/// The unit vector of the sum of the seeds' vectors.
fn text_vector(seeds: &[u64], dimensions: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dimensions];
    for seed in seeds {
        for (total, x) in sum.iter_mut().zip(vector(*seed, dimensions)) {
            *total += x;
        }
    }
    let norm = sum
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    sum.iter_mut().for_each(|x| *x /= norm);
    sum
}

/// A unit vector derived from the seed.
fn vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = (seed ^ 0x9e37_79b9_7f4a_7c15).max(1);
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
