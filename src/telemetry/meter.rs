//! Request, token and error counters, and per-second samples of them for rates and
//! sparklines. Counting is a few relaxed atomic adds; a once-a-second task takes samples.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of samples kept (five minutes).
const KEEP: usize = 300;
/// Seconds that rates are averaged over.
const RATE_WINDOW: usize = 5;

#[derive(Default)]
pub struct Meter {
    requests: AtomicU64,
    errors: AtomicU64,
    tokens: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
    /// Refusals and failures by their OpenAI error code.
    codes: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    requests: u64,
    errors: u64,
    tokens: u64,
    queued: u64,
}

/// Totals and recent rates.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub requests_per_sec: f64,
    pub tokens_per_sec: f64,
    pub error_rate: f64,
    pub queue_history: Vec<u64>,
}

impl Meter {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error answer by its code (`rate_limit_exceeded`, `upstream_error`, …).
    pub fn code(&self, code: &'static str) {
        if let Ok(mut codes) = self.codes.lock() {
            *codes.entry(code).or_insert(0) += 1;
        }
    }

    /// Error answers by code, since start.
    pub fn codes(&self) -> Vec<(String, u64)> {
        self.codes
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default()
    }

    pub fn tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes this second's sample; `queued` is the scheduler's depth now.
    pub fn sample(&self, queued: u64) {
        let sample = Sample {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            queued,
        };
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == KEEP {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    pub fn read(&self, history: usize) -> Reading {
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let now = Sample {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            queued: 0,
        };
        let span = samples.len().min(RATE_WINDOW);
        let (requests_per_sec, tokens_per_sec, error_rate) = match samples.len() {
            0 => (0.0, 0.0, 0.0),
            n => {
                let last = samples[n - 1];
                let first = samples[n - span];
                let secs = (span.max(2) - 1) as f64;
                let requests = last.requests.saturating_sub(first.requests);
                let errors = last.errors.saturating_sub(first.errors);
                (
                    requests as f64 / secs,
                    last.tokens.saturating_sub(first.tokens) as f64 / secs,
                    if requests == 0 {
                        0.0
                    } else {
                        errors as f64 / requests as f64
                    },
                )
            }
        };
        Reading {
            requests: now.requests,
            errors: now.errors,
            tokens: now.tokens,
            requests_per_sec,
            tokens_per_sec,
            error_rate,
            queue_history: samples
                .iter()
                .skip(samples.len().saturating_sub(history))
                .map(|s| s.queued)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_last_seconds_of_samples() {
        let meter = Meter::default();
        meter.sample(0);
        for second in 1..=5u64 {
            for _ in 0..10 {
                meter.request();
                meter.tokens(100);
            }
            meter.error();
            meter.sample(second);
        }
        let reading = meter.read(3);
        assert_eq!(reading.requests, 50);
        assert_eq!(reading.requests_per_sec, 10.0);
        assert_eq!(reading.tokens_per_sec, 1000.0);
        assert!((reading.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(reading.queue_history, [3, 4, 5]);
    }
}
