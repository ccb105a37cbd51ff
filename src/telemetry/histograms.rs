//! What `/metrics` exports for Prometheus to aggregate across replicas and re-window:
//! latency as cumulative histograms (`_bucket`, `_sum`, `_count`) by region, model and
//! tier, and answers by tenant, model and code. Counting is a read lock and relaxed atomic
//! adds; a series is made on its first observation (label sets are bounded by the config:
//! regions, models, tiers, tenants, and the gateway's own codes).

use super::Map;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Bucket bounds in seconds: from a cache hit's milliseconds to a long stream's minutes.
const BOUNDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// The latencies measured, as Prometheus names them, with their help text.
pub const FAMILIES: [(&str, &str); 4] = [
    (
        "ttft",
        "Time to the first token of a streamed answer, from arrival.",
    ),
    ("e2e", "Time from arrival to the last byte of the answer."),
    ("queue", "Time waiting for an upstream seat."),
    (
        "overhead",
        "The gateway's own share: end to end minus the queue and the upstream.",
    ),
];

/// OpenTelemetry's GenAI server metrics, by operation and model, with the bucket
/// boundaries its semantic conventions advise: the gateway is the GenAI server its
/// clients call. (name, help, the `FAMILIES` entry measured, bounds)
const GEN_AI: [(&str, &str, &str, &[f64]); 2] = [
    (
        "gen_ai_server_request_duration_seconds",
        "Time from arrival to the last byte of a successful answer (gen_ai.server.request.duration).",
        "e2e",
        &[
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
        ],
    ),
    (
        "gen_ai_server_time_to_first_token_seconds",
        "Time from arrival to the first token of a streamed answer (gen_ai.server.time_to_first_token).",
        "ttft",
        &[
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0,
        ],
    ),
];

/// Bucket bounds for tokens per request, by powers of four.
const TOKEN_BOUNDS: [f64; 10] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
];

struct Series {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Microseconds for latencies, tokens for token counts.
    sum: AtomicU64,
}

impl Series {
    fn new(bounds: usize) -> Series {
        Series {
            buckets: (0..bounds).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, bounds: &[f64], value: f64, sum: u64) {
        if let Some(at) = bounds.iter().position(|b| value <= *b) {
            self.buckets[at].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(sum, Ordering::Relaxed);
    }

    /// `name`'s `_bucket`, `_sum` and `_count` lines for this series; the sum is kept
    /// in units `sum_per` to one of the metric's (microseconds: 1e6).
    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64], sum_per: f64) {
        let mut cumulative = 0;
        for (bound, bucket) in bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / sum_per;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// A request's latency series, one per family in `FAMILIES` order by where it went, and
/// one per `GEN_AI` metric by operation and model; found once when it is routed so that
/// each observation is a few relaxed adds.
#[derive(Clone)]
pub struct LatencySeries {
    ours: Arc<[Series; FAMILIES.len()]>,
    gen_ai: GenAiSeries,
    /// The model's tokens per request.
    tokens: TokenSeries,
}

type GenAiSeries = Arc<[Series; GEN_AI.len()]>;

impl LatencySeries {
    /// Counts `value` of `metric` (a name in `FAMILIES`).
    pub fn observe(&self, metric: &str, value: Duration) {
        let (seconds, micros) = (value.as_secs_f64(), value.as_micros() as u64);
        if let Some(at) = FAMILIES.iter().position(|(name, _)| *name == metric) {
            self.ours[at].observe(&BOUNDS, seconds, micros);
        }
        if let Some(at) = GEN_AI.iter().position(|g| g.2 == metric) {
            self.gen_ai[at].observe(GEN_AI[at].3, seconds, micros);
        }
    }

    /// Counts a request's input and output tokens for `operation` ("chat",
    /// "embeddings").
    pub fn tokens_used(&self, operation: &'static str, input: u64, output: u64) {
        count_tokens(&self.tokens, operation, input, output);
    }
}

fn count_tokens(series: &TokenSeries, operation: &str, input: u64, output: u64) {
    for (at, (op, kind)) in TOKEN_KINDS.iter().enumerate() {
        if *op == operation {
            let n = if *kind == "input" { input } else { output };
            series[at].observe(&TOKEN_BOUNDS, n as f64, n);
        }
    }
}

/// One tenant's answers: by model, then by code.
type AnswersByModel = Map<String, Map<&'static str, AtomicU64>>;

/// Token series per model: chat input, chat output, embeddings input.
type TokenSeries = Arc<[Series; 3]>;
const TOKEN_KINDS: [(&str, &str); 3] = [
    ("chat", "input"),
    ("chat", "output"),
    ("embeddings", "input"),
];

#[derive(Default)]
pub struct Histograms {
    /// Latency by the labels of where requests went.
    series: RwLock<Map<Labels, Arc<[Series; FAMILIES.len()]>>>,
    /// OpenTelemetry's latency metrics by operation and model.
    gen_ai: RwLock<Map<(&'static str, String), GenAiSeries>>,
    /// Answers by tenant, model and code (code "" for a success); looked up by `&str`
    /// at every level, so counting allocates nothing once a series exists.
    answers: RwLock<Map<String, AnswersByModel>>,
    /// Tokens per request by model, as OpenTelemetry's GenAI conventions count them.
    tokens: RwLock<Map<String, TokenSeries>>,
}

impl Histograms {
    /// The latency series of `operation` ("chat", "embeddings") requests routed as
    /// `labels`, made on first use.
    pub fn latency_series(&self, labels: &Labels, operation: &'static str) -> LatencySeries {
        let found = self.series.read().ok().and_then(|s| s.get(labels).cloned());
        let ours = found.unwrap_or_else(|| {
            let mut all = self.series.write().unwrap_or_else(|e| e.into_inner());
            all.entry(labels.clone())
                .or_insert_with(|| Arc::new(std::array::from_fn(|_| Series::new(BOUNDS.len()))))
                .clone()
        });
        let found = self.gen_ai.read().ok().and_then(|g| {
            g.iter()
                .find(|((op, model), _)| *op == operation && *model == labels.model)
                .map(|(_, series)| series.clone())
        });
        let gen_ai = found.unwrap_or_else(|| {
            let mut all = self.gen_ai.write().unwrap_or_else(|e| e.into_inner());
            all.entry((operation, labels.model.clone()))
                .or_insert_with(|| {
                    Arc::new(std::array::from_fn(|i| Series::new(GEN_AI[i].3.len())))
                })
                .clone()
        });
        let tokens = self.token_series(&labels.model);
        LatencySeries {
            ours,
            gen_ai,
            tokens,
        }
    }

    /// Counts a request's input and output tokens for `operation` ("chat",
    /// "embeddings") on `model`. (Requests count theirs through their route's series,
    /// found once when routed.)
    #[cfg(test)]
    pub fn tokens_used(&self, operation: &'static str, model: &str, input: u64, output: u64) {
        count_tokens(&self.token_series(model), operation, input, output);
    }

    /// `model`'s token series, made on first use.
    fn token_series(&self, model: &str) -> TokenSeries {
        let found = self.tokens.read().ok().and_then(|t| t.get(model).cloned());
        found.unwrap_or_else(|| {
            let mut all = self.tokens.write().unwrap_or_else(|e| e.into_inner());
            all.entry(model.to_string())
                .or_insert_with(|| {
                    Arc::new(std::array::from_fn(|_| Series::new(TOKEN_BOUNDS.len())))
                })
                .clone()
        })
    }

    /// Counts an answer to `tenant` for `model` with `code` ("" when it succeeded).
    pub fn answered(&self, tenant: &str, model: &str, code: &'static str) {
        if let Ok(answers) = self.answers.read()
            && let Some(counter) = answers
                .get(tenant)
                .and_then(|models| models.get(model))
                .and_then(|codes| codes.get(code))
        {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut answers = self.answers.write().unwrap_or_else(|e| e.into_inner());
        answers
            .entry(tenant.to_string())
            .or_default()
            .entry(model.to_string())
            .or_default()
            .entry(code)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The histograms and answer counters in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let series = self.series.read().map(|s| s.clone()).unwrap_or_default();
        let mut labelled: Vec<(&Labels, &Arc<[Series; FAMILIES.len()]>)> = series.iter().collect();
        labelled.sort_by(|a, b| a.0.cmp(b.0));
        for (at, (metric, help)) in FAMILIES.iter().enumerate() {
            let name = format!("switchyard_{metric}_seconds");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, series) in &labelled {
                let labels = format!(
                    "region=\"{}\",model=\"{}\",tier=\"{}\"",
                    escape(&labels.region),
                    escape(&labels.model),
                    escape(&labels.tier)
                );
                series[at].render(out, &name, &labels, &BOUNDS, 1e6);
            }
        }
        let gen_ai = self.gen_ai.read().map(|g| g.clone()).unwrap_or_default();
        let mut by_model: Vec<(&(&str, String), &GenAiSeries)> = gen_ai.iter().collect();
        by_model.sort_by(|a, b| a.0.cmp(b.0));
        for (at, (name, help, _, bounds)) in GEN_AI.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for ((operation, model), series) in &by_model {
                if series[at].count.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let labels = format!(
                    "gen_ai_operation_name=\"{operation}\",gen_ai_request_model=\"{}\"",
                    escape(model)
                );
                series[at].render(out, name, &labels, bounds, 1e6);
            }
        }
        let tokens = self.tokens.read().map(|t| t.clone()).unwrap_or_default();
        let mut models: Vec<(&String, &TokenSeries)> = tokens.iter().collect();
        models.sort_by(|a, b| a.0.cmp(b.0));
        let name = "gen_ai_client_token_usage";
        let _ = writeln!(
            out,
            "# HELP {name} Tokens per request by type, as OpenTelemetry's GenAI semantic conventions count them (gen_ai.client.token.usage)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (model, series) in models {
            for (at, (operation, kind)) in TOKEN_KINDS.iter().enumerate() {
                if series[at].count.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let labels = format!(
                    "gen_ai_operation_name=\"{operation}\",gen_ai_request_model=\"{}\",gen_ai_token_type=\"{kind}\"",
                    escape(model)
                );
                series[at].render(out, name, &labels, &TOKEN_BOUNDS, 1.0);
            }
        }
        let name = "switchyard_answers_total";
        let _ = writeln!(
            out,
            "# HELP {name} Answers to clients by tenant, model and OpenAI error code (empty when it succeeded)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let answers = self.answers.read().unwrap_or_else(|e| e.into_inner());
        let mut lines = Vec::new();
        for (tenant, models) in answers.iter() {
            for (model, codes) in models {
                for (code, n) in codes {
                    lines.push(format!(
                        "{name}{{tenant=\"{}\",model=\"{}\",code=\"{}\"}} {}",
                        escape(tenant),
                        escape(model),
                        escape(code),
                        n.load(Ordering::Relaxed)
                    ));
                }
            }
        }
        lines.sort();
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Where a request went, as its metrics are labelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    pub region: String,
    pub model: String,
    pub tier: String,
}

/// A label value as the text format needs it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_in_the_count() {
        let histograms = Histograms::default();
        let labels = Labels {
            region: "us-east".into(),
            model: "gpt-4o-mini".into(),
            tier: "pro".into(),
        };
        let series = histograms.latency_series(&labels, "chat");
        for ms in [3, 30, 300, 3_000, 400_000] {
            series.observe("e2e", Duration::from_millis(ms));
        }
        histograms.answered("acme", "gpt-4o-mini", "");
        histograms.answered("acme", "gpt-4o-mini", "rate_limit_exceeded");
        let mut out = String::new();
        histograms.render(&mut out);
        let labels = "region=\"us-east\",model=\"gpt-4o-mini\",tier=\"pro\"";
        for (le, n) in [
            ("0.005", 1),
            ("0.05", 2),
            ("0.5", 3),
            ("5", 4),
            ("300", 4),
            ("+Inf", 5),
        ] {
            let line = format!("switchyard_e2e_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(out.contains(&format!("switchyard_e2e_seconds_count{{{labels}}} 5\n")));
        assert!(out.contains(&format!("switchyard_e2e_seconds_sum{{{labels}}} 403.333\n")));
        assert!(out.contains(
            "switchyard_answers_total{tenant=\"acme\",model=\"gpt-4o-mini\",code=\"rate_limit_exceeded\"} 1\n"
        ));
        assert!(out.contains("# TYPE switchyard_ttft_seconds histogram\n"));
        // The same durations under OpenTelemetry's names, its buckets and attributes.
        let otel = "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o-mini\"";
        for (le, n) in [
            ("0.01", 1),
            ("0.04", 2),
            ("0.16", 2),
            ("0.32", 3),
            ("5.12", 4),
        ] {
            let line = format!(
                "gen_ai_server_request_duration_seconds_bucket{{{otel},le=\"{le}\"}} {n}\n"
            );
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(out.contains(&format!(
            "gen_ai_server_request_duration_seconds_count{{{otel}}} 5\n"
        )));
        assert!(out.contains("# TYPE gen_ai_server_time_to_first_token_seconds histogram\n"));
        assert!(
            !out.contains("gen_ai_server_time_to_first_token_seconds_count"),
            "no first token was observed"
        );
        histograms.tokens_used("chat", "gpt-4o-mini", 20, 300);
        histograms.tokens_used("embeddings", "text-embedding-3-small", 8, 0);
        let mut out = String::new();
        histograms.render(&mut out);
        let chat = "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o-mini\"";
        assert!(out.contains(&format!(
            "gen_ai_client_token_usage_bucket{{{chat},gen_ai_token_type=\"output\",le=\"256\"}} 0\n"
        )));
        assert!(out.contains(&format!(
            "gen_ai_client_token_usage_bucket{{{chat},gen_ai_token_type=\"output\",le=\"1024\"}} 1\n"
        )));
        assert!(out.contains(&format!(
            "gen_ai_client_token_usage_sum{{{chat},gen_ai_token_type=\"input\"}} 20\n"
        )));
        assert!(!out.contains("text-embedding-3-small\",gen_ai_token_type=\"output\""));
    }
}
