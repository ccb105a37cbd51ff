//! How a vector row is kept: the key `tenant \0 collection \0 id` (so a row's id again
//! replaces it, and rows of a collection sit together), and the value a little JSON
//! (text and metadata, its length first) followed by the vector as little-endian f32s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;
use crate::domain::records::VectorRecord;

#[derive(Serialize, Deserialize)]
struct Header {
    text: String,
    #[serde(default)]
    metadata: Map<String, Value>,
}

pub(super) fn key(row: &VectorRecord) -> Vec<u8> {
    [
        row.tenant.as_bytes(),
        row.collection.as_bytes(),
        row.id.as_bytes(),
    ]
    .join(&0u8)
}

pub(super) fn encode(row: &VectorRecord) -> Result<Vec<u8>, StoreError> {
    let header = serde_json::to_vec(&Header {
        text: row.text.clone(),
        metadata: row.metadata.clone(),
    })
    .map_err(|e| StoreError::Corrupt(format!("vector {}: {e}", row.id)))?;
    let mut value = Vec::with_capacity(4 + header.len() + row.vector.len() * 4);
    value.extend_from_slice(&(header.len() as u32).to_le_bytes());
    value.extend_from_slice(&header);
    for x in &row.vector {
        value.extend_from_slice(&x.to_le_bytes());
    }
    Ok(value)
}

pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<VectorRecord, StoreError> {
    let corrupt = |why: &str| {
        StoreError::Corrupt(format!(
            "vector {}: {why}",
            String::from_utf8_lossy(key).replace('\0', "/")
        ))
    };
    let mut parts = key.splitn(3, |b| *b == 0);
    let mut part = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_string)
            .ok_or_else(|| corrupt("a key that is not tenant, collection and id"))
    };
    let (tenant, collection, id) = (part()?, part()?, part()?);
    let length = value
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("too short"))?;
    let header: Header = value
        .get(4..4 + length)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or_else(|| corrupt("a header that is not JSON"))?;
    let floats = &value[4 + length..];
    if !floats.len().is_multiple_of(4) {
        return Err(corrupt("a vector cut short"));
    }
    let vector = floats
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(VectorRecord {
        tenant,
        collection,
        id,
        text: header.text,
        metadata: header.metadata,
        vector,
    })
}
