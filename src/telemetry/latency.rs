//! Latency histograms: for each series (a metric about a region, a model or a tier), a
//! ring of ten-second hdrhistograms, merged on demand into 10 s, 1 m and 5 m windows.
//! Percentiles are read from merged histograms, never averaged.
//!
//! Recording takes one short lock per series; histograms are created lazily and slots
//! older than five minutes are dropped, so idle series cost little.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::clock;
use crate::domain::snapshot::LatencyView;

const SLOT: Duration = Duration::from_secs(10);
/// Five minutes of ten-second slots.
const SLOTS: u64 = 30;
/// Upper bounds of the bar chart's buckets, milliseconds; the last holds everything up to
/// the histograms' ten-minute ceiling (finite, so snapshots stay valid JSON).
const BUCKETS_MS: [f64; 10] = [
    1.0, 5.0, 25.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10_000.0, 600_000.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Time to the first streamed token.
    Ttft,
    /// Arrival to the last byte.
    EndToEnd,
    /// Waiting for a seat.
    Queue,
    /// The gateway's own share: end to end minus the queue minus the upstream.
    Overhead,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::EndToEnd => "e2e",
            Metric::Queue => "queue",
            Metric::Overhead => "overhead",
        }
    }
}

#[derive(Default)]
struct Series {
    /// (slot number, histogram of microseconds), oldest first.
    slots: VecDeque<(u64, Histogram<u32>)>,
}

/// One scope's series, one per metric in `Metric` order. A request finds its scopes'
/// once, when it is routed (`scope`), and records into them without further lookups.
#[derive(Default)]
pub struct ScopeSeries([Mutex<Series>; 4]);

impl Metric {
    const ALL: [Metric; 4] = [
        Metric::Ttft,
        Metric::EndToEnd,
        Metric::Queue,
        Metric::Overhead,
    ];

    fn index(self) -> usize {
        match self {
            Metric::Ttft => 0,
            Metric::EndToEnd => 1,
            Metric::Queue => 2,
            Metric::Overhead => 3,
        }
    }
}

pub struct Latency {
    started: Instant,
    /// By scope ("region:us-east", …), looked up by `&str`: no allocation per lookup.
    series: RwLock<HashMap<String, Arc<ScopeSeries>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            started: clock::now(),
            series: RwLock::new(HashMap::new()),
        }
    }
}

fn histogram() -> Option<Histogram<u32>> {
    // 1 µs to 10 minutes, two significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 2).ok()
}

impl Latency {
    fn slot(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / SLOT.as_secs()
    }

    /// Records one observation under each scope ("region:us-east", "model:gpt-4o", …),
    /// finding the scopes by name (requests use `record_in` with a route's scopes).
    #[cfg(test)]
    pub fn record(&self, metric: Metric, scopes: &[&str], value: Duration) {
        let scopes: Vec<Arc<ScopeSeries>> = scopes.iter().map(|s| self.scope(s)).collect();
        self.record_in(&scopes, metric, value);
    }

    /// Records one observation in each of the scopes found before (reading the clock
    /// once for all of them).
    pub fn record_in(&self, scopes: &[Arc<ScopeSeries>], metric: Metric, value: Duration) {
        let micros = (value.as_micros() as u64).clamp(1, 600_000_000);
        let slot = self.slot(clock::now());
        for scope in scopes {
            let Ok(mut series) = scope.0[metric.index()].lock() else {
                continue;
            };
            if series.slots.back().is_none_or(|(s, _)| *s != slot) {
                let Some(h) = histogram() else { continue };
                series.slots.push_back((slot, h));
                while series.slots.front().is_some_and(|(s, _)| slot - s >= SLOTS) {
                    series.slots.pop_front();
                }
            }
            if let Some((_, h)) = series.slots.back_mut() {
                let _ = h.record(micros);
            }
        }
    }

    /// A scope's series, made on first use.
    pub fn scope(&self, scope: &str) -> Arc<ScopeSeries> {
        if let Some(s) = self.series.read().ok().and_then(|m| m.get(scope).cloned()) {
            return s;
        }
        let mut map = match self.series.write() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        };
        map.entry(scope.to_string()).or_default().clone()
    }

    /// Every series over the 10 s, 1 m and 5 m windows, with data.
    pub fn views(&self) -> Vec<LatencyView> {
        let now = self.slot(clock::now());
        let scopes: Vec<(String, Arc<ScopeSeries>)> = self
            .series
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut keys: Vec<(Metric, &String, &ScopeSeries)> = scopes
            .iter()
            .flat_map(|(scope, series)| Metric::ALL.map(|m| (m, scope, &**series)))
            .collect();
        keys.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut out = Vec::new();
        for (metric, scope, series) in keys {
            let Ok(series) = series.0[metric.index()].lock() else {
                continue;
            };
            let history: Vec<f64> = (0..SLOTS)
                .rev()
                .filter_map(|back| now.checked_sub(back))
                .map(|slot| {
                    series
                        .slots
                        .iter()
                        .find(|(s, _)| *s == slot)
                        .map_or(0.0, |(_, h)| h.value_at_quantile(0.99) as f64 / 1000.0)
                })
                .collect();
            for (window, slots) in [("10s", 1u64), ("1m", 6), ("5m", SLOTS)] {
                let Some(mut merged) = histogram() else {
                    continue;
                };
                for (s, h) in &series.slots {
                    if now - s < slots {
                        let _ = merged.add(h);
                    }
                }
                if merged.is_empty() {
                    continue;
                }
                let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
                let mut buckets = vec![0u64; BUCKETS_MS.len()];
                for v in merged.iter_recorded() {
                    let value_ms = v.value_iterated_to() as f64 / 1000.0;
                    let i = BUCKETS_MS
                        .iter()
                        .position(|b| value_ms <= *b)
                        .unwrap_or(BUCKETS_MS.len() - 1);
                    buckets[i] += u64::from(v.count_at_value());
                }
                out.push(LatencyView {
                    metric: metric.name().to_string(),
                    scope: scope.clone(),
                    window: window.to_string(),
                    count: merged.len(),
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                    max_ms: merged.max() as f64 / 1000.0,
                    buckets,
                    bucket_ms: BUCKETS_MS.to_vec(),
                    p99_history_ms: history.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn windows_merge_slots_and_old_slots_age_out() {
        let latency = Latency::default();
        for ms in 1..=100 {
            latency.record(Metric::EndToEnd, &["region:us"], Duration::from_millis(ms));
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        latency.record(
            Metric::EndToEnd,
            &["region:us"],
            Duration::from_millis(1000),
        );
        let views = latency.views();
        let window = |w: &str| views.iter().find(|v| v.window == w).unwrap();
        assert_eq!(window("10s").count, 1, "only the newest slot");
        assert_eq!(window("1m").count, 101);
        // The median of 1..=100 ms and 1000 ms is 51 ms; two significant figures.
        assert!(
            (window("1m").p50_ms - 51.0).abs() < 1.0,
            "{}",
            window("1m").p50_ms
        );
        assert!((window("1m").max_ms - 1000.0).abs() < 10.0);
        tokio::time::advance(Duration::from_secs(300)).await;
        latency.record(Metric::EndToEnd, &["region:us"], Duration::from_millis(5));
        assert_eq!(
            latency
                .views()
                .iter()
                .find(|v| v.window == "5m")
                .unwrap()
                .count,
            1
        );
    }
}
