//! The quantized scan: each vector kept normalized and quantized to 8 bits per
//! dimension with its own scale; a query scans every row with integer dot products,
//! keeping the best `k` in a small heap.
//!
//! Why a quantized scan and not a graph index (HNSW): it is exact up to quantization
//! (no recall to tune, no result that depends on insertion order), it needs no
//! dependency, a row costs a quarter of its floats (100,000 rows of 1,536 dimensions
//! are 150 MiB, not 600), it takes rows one at a time with nothing to rebuild, and its
//! scan over that size stays inside the retriever's budget (`cargo bench --bench
//! retriever`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use serde_json::{Map, Value};

use super::{Hit, Index, Row};

/// One collection's rows and their quantized vectors.
#[derive(Debug, Default)]
pub struct Quantized {
    dimensions: usize,
    rows: Vec<Row>,
    /// `dimensions` codes per row, in row order.
    codes: Vec<i8>,
    /// Per row: the factor that turns a code back into its component.
    scales: Vec<f32>,
    by_id: HashMap<String, usize>,
}

impl Index for Quantized {
    fn name(&self) -> &'static str {
        "quantized"
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn put(&mut self, row: Row, vector: &[f32]) -> Result<(), String> {
        if vector.is_empty() {
            return Err("an empty vector cannot be put".into());
        }
        if self.dimensions != 0 && vector.len() != self.dimensions {
            return Err(format!(
                "a vector of {} dimensions cannot go into a collection of {} (embed with the model that filled it)",
                vector.len(),
                self.dimensions
            ));
        }
        let (codes, scale) = quantize(vector).ok_or("a vector of zero length cannot be put")?;
        self.dimensions = vector.len();
        match self.by_id.get(&row.id) {
            Some(&at) => {
                let start = at * self.dimensions;
                self.codes[start..start + self.dimensions].copy_from_slice(&codes);
                self.scales[at] = scale;
                self.rows[at] = row;
            }
            None => {
                self.by_id.insert(row.id.clone(), self.rows.len());
                self.codes.extend_from_slice(&codes);
                self.scales.push(scale);
                self.rows.push(row);
            }
        }
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, filter: &Map<String, Value>) -> Vec<Hit> {
        if k == 0 || query.len() != self.dimensions {
            return Vec::new();
        }
        let Some((query, query_scale)) = quantize(query) else {
            return Vec::new();
        };
        let mut best: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for (at, codes) in self.codes.chunks_exact(self.dimensions).enumerate() {
            if !filter.is_empty() && !matches(&self.rows[at].metadata, filter) {
                continue;
            }
            let score = dot(&query, codes) as f32 * query_scale * self.scales[at];
            if best.len() < k {
                best.push(Worst { score, at });
            } else if best.peek().is_some_and(|worst| score > worst.score) {
                best.pop();
                best.push(Worst { score, at });
            }
        }
        let mut hits: Vec<Hit> = best
            .into_iter()
            .map(|w| Hit {
                row: self.rows[w.at].clone(),
                score: w.score,
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.id.cmp(&b.row.id)));
        hits
    }
}

/// The metadata has every key of the filter, with the same value.
fn matches(metadata: &Map<String, Value>, filter: &Map<String, Value>) -> bool {
    filter
        .iter()
        .all(|(key, value)| metadata.get(key) == Some(value))
}

/// The vector made unit length and written as codes of -127..=127 with one scale, so
/// that `code * scale` is the unit vector's component. None for a zero vector.
fn quantize(vector: &[f32]) -> Option<(Vec<i8>, f32)> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    let largest = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !(norm > 0.0 && largest.is_finite()) {
        return None;
    }
    let unit_largest = largest / norm;
    let scale = unit_largest / 127.0;
    let codes = vector
        .iter()
        .map(|x| ((x / norm) / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    Some((codes, scale))
}

/// The integer dot product, written so the compiler vectorizes it.
fn dot(a: &[i8], b: &[i8]) -> i32 {
    let mut sums = [0i32; 16];
    let (a_blocks, b_blocks) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: i32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
            *sum += i32::from(*x) * i32::from(*y);
        }
    }
    sums.iter().sum::<i32>() + rest
}

/// A heap entry ordered so the heap's top is the worst hit kept.
struct Worst {
    score: f32,
    at: usize,
}

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst {}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, source: &str) -> Row {
        let mut metadata = Map::new();
        metadata.insert("source".into(), Value::String(source.into()));
        Row {
            id: id.into(),
            text: format!("text of {id}"),
            metadata,
        }
    }

    fn pseudo_random(seed: u64, dimensions: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..dimensions)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn the_nearest_rows_come_first_with_scores_close_to_exact_cosine() {
        let dimensions = 384;
        let mut collection = Quantized::default();
        let vectors: Vec<Vec<f32>> = (0..500).map(|i| pseudo_random(i, dimensions)).collect();
        for (i, v) in vectors.iter().enumerate() {
            collection.put(row(&format!("r{i}"), "a"), v).unwrap();
        }
        for probe in [3u64, 77, 420] {
            // A query near row `probe`: the row itself plus a little of another.
            let query: Vec<f32> = vectors[probe as usize]
                .iter()
                .zip(pseudo_random(10_000 + probe, dimensions))
                .map(|(x, n)| x + 0.3 * n)
                .collect();
            let hits = collection.search(&query, 5, &Map::new());
            assert_eq!(hits.len(), 5);
            assert_eq!(hits[0].row.id, format!("r{probe}"));
            let mut exact: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (cosine(&query, v), i))
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (hit, (score, _)) in hits.iter().zip(&exact) {
                assert!((hit.score - score).abs() < 0.01, "{} vs {score}", hit.score);
            }
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn a_filter_keeps_only_rows_whose_metadata_matches() {
        let mut collection = Quantized::default();
        for i in 0..20 {
            let source = if i % 2 == 0 { "even.md" } else { "odd.md" };
            collection
                .put(row(&format!("r{i}"), source), &pseudo_random(i, 16))
                .unwrap();
        }
        let mut filter = Map::new();
        filter.insert("source".into(), Value::String("odd.md".into()));
        let hits = collection.search(&pseudo_random(4, 16), 20, &filter);
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.row.metadata["source"] == "odd.md"));
    }

    #[test]
    fn putting_an_id_again_replaces_its_row_and_other_dimensions_are_refused() {
        let mut collection = Quantized::default();
        collection.put(row("a", "x"), &[1.0, 0.0, 0.0]).unwrap();
        collection.put(row("b", "x"), &[0.0, 1.0, 0.0]).unwrap();
        collection.put(row("a", "y"), &[0.0, 0.0, 1.0]).unwrap();
        assert_eq!(collection.len(), 2);
        let hits = collection.search(&[0.0, 0.0, 2.0], 1, &Map::new());
        assert_eq!(hits[0].row.id, "a");
        assert_eq!(hits[0].row.metadata["source"], "y");
        assert!((hits[0].score - 1.0).abs() < 0.01);
        let error = collection.put(row("c", "x"), &[1.0, 0.0]).unwrap_err();
        assert!(error.contains("2 dimensions"), "{error}");
        assert!(collection.put(row("c", "x"), &[0.0, 0.0, 0.0]).is_err());
        assert!(collection.search(&[1.0, 0.0], 1, &Map::new()).is_empty());
    }
}
