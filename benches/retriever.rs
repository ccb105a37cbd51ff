//! The retriever's index against a plain scan of the floats, in one run: 100,000 rows of
//! 1,536 dimensions (OpenAI's text-embedding-3-small), top-10 queries with and without a
//! metadata filter. Prints build time, memory of the vectors held, and query latency
//! (p50, p99 of 200 queries) for both, and how often the index's top 10 is the exact one.
//!
//!   cargo bench --bench retriever
//!   ROWS=20000 DIMENSIONS=768 cargo bench --bench retriever
//!
//! It measures, it asserts nothing.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use switchyard::flows::vectors::{Row, index};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Vectors around 200 topics, as embeddings of a real corpus cluster.
struct Corpus {
    state: u64,
    topics: Vec<Vec<f32>>,
}

impl Corpus {
    fn next(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn new(dimensions: usize) -> Corpus {
        let mut corpus = Corpus {
            state: 0x2545_f491_4f6c_dd1d,
            topics: Vec::new(),
        };
        corpus.topics = (0..200)
            .map(|_| (0..dimensions).map(|_| corpus.next()).collect())
            .collect();
        corpus
    }

    fn vector(&mut self) -> Vec<f32> {
        let topic = (self.next().abs() * 199.0) as usize;
        let base = self.topics[topic].clone();
        base.iter().map(|x| x + 0.6 * self.next()).collect()
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// The baseline: every float kept, every row scored exactly.
fn exact_top(
    rows: &[Vec<f32>],
    query: &[f32],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let query = unit(query);
    let mut scored: Vec<(f32, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, row)| (row.iter().zip(&query).map(|(a, b)| a * b).sum(), i))
        .collect();
    let k = k.min(scored.len());
    scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn main() {
    let rows = env("ROWS", 100_000);
    let dimensions = env("DIMENSIONS", 1536);
    let queries = env("QUERIES", 200);
    let k = 10;
    println!("{rows} rows of {dimensions} dimensions, top {k}, {queries} queries");

    let mut corpus = Corpus::new(dimensions);
    let vectors: Vec<Vec<f32>> = (0..rows).map(|_| unit(&corpus.vector())).collect();
    let started = Instant::now();
    let mut built_index =
        index("quantized").unwrap_or_else(|| panic!("no quantized index is registered"));
    for (i, v) in vectors.iter().enumerate() {
        let mut metadata = Map::new();
        metadata.insert("shard".into(), Value::from(i % 10));
        let row = Row {
            id: format!("doc-{i}"),
            text: String::new(),
            metadata,
        };
        built_index.put(row, v).unwrap_or_else(|e| panic!("{e}"));
    }
    let built = started.elapsed();
    let probes: Vec<Vec<f32>> = (0..queries).map(|_| corpus.vector()).collect();

    let mut filter = Map::new();
    filter.insert("shard".into(), Value::from(3));
    for (label, filter) in [("no filter", Map::new()), ("filter 1 in 10", filter)] {
        let shard = filter.get("shard").and_then(Value::as_u64);
        let keep = |i: usize| shard.is_none_or(|s| i as u64 % 10 == s);
        let (mut ours, mut scan) = (Vec::new(), Vec::new());
        let mut same = 0;
        for query in &probes {
            let t = Instant::now();
            let hits = built_index.search(query, k, &filter);
            ours.push(t.elapsed());
            let t = Instant::now();
            let exact = exact_top(&vectors, query, k, keep);
            scan.push(t.elapsed());
            let found: Vec<usize> = hits
                .iter()
                .filter_map(|h| h.row.id.strip_prefix("doc-")?.parse().ok())
                .collect();
            same += found.iter().filter(|i| exact.contains(i)).count();
        }
        println!(
            "{label:<15} quantized index p50 {:>7.2} ms  p99 {:>7.2} ms | float scan p50 {:>7.2} ms  p99 {:>7.2} ms | recall@{k} {:.3}",
            percentile(&mut ours, 0.5).as_secs_f64() * 1e3,
            percentile(&mut ours, 0.99).as_secs_f64() * 1e3,
            percentile(&mut scan, 0.5).as_secs_f64() * 1e3,
            percentile(&mut scan, 0.99).as_secs_f64() * 1e3,
            same as f64 / (queries * k) as f64,
        );
    }
    println!(
        "memory of the vectors: quantized index {:.0} MiB, floats {:.0} MiB; index built in {:.1} s",
        (rows * (dimensions + 4)) as f64 / (1 << 20) as f64,
        (rows * dimensions * 4) as f64 / (1 << 20) as f64,
        built.as_secs_f64()
    );
}
