//! Request, token and error counters, and per-second samples of them for rates and
//! sparklines. Counting is a few relaxed atomic adds; a once-a-second task takes samples.

use std::collections::{BTreeMap, VecDeque};

use super::Map;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::domain::snapshot::History;

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
    /// Answers that carried an error code: refusals (4xx) and failures (5xx).
    coded: AtomicU64,
    /// Refusals and failures by their OpenAI error code.
    codes: Mutex<BTreeMap<&'static str, u64>>,
    /// Each tenant's own counters, made on its first request.
    tenants: RwLock<Map<String, Arc<Tally>>>,
}

/// One tenant's or one instance's counters: what it used over the last minute (to show
/// next to a tenant's rpm and tpm limits), what it was refused or failed, by code, and
/// five minutes of its seconds for the console's drill-downs.
#[derive(Default)]
pub struct Tally {
    requests: AtomicU64,
    tokens: AtomicU64,
    codes: Mutex<BTreeMap<&'static str, u64>>,
    refused: AtomicU64,
    /// (requests, tokens, refused) at each of the last one-second samples, oldest first:
    /// five minutes of history for the console's drill-down, the last minute for rates.
    history: Mutex<VecDeque<(u64, u64, u64)>>,
    /// This second's end-to-end latencies and queue waits.
    e2e: Quick,
    queue: Quick,
    /// This second's refusals by code; taken at each sample.
    refused_now: Mutex<Vec<(&'static str, u32)>>,
    /// What each sampled second saw, oldest first, one per sample.
    seconds: Mutex<VecDeque<Second>>,
    /// The last few hundred end-to-end latencies (µs), for p50/p99 in listings.
    recent: Mutex<VecDeque<u32>>,
}

/// End-to-end latencies kept per tenant and instance for their listings.
const RECENT: usize = 512;

/// One second of a tenant's history beyond its counters.
#[derive(Debug, Clone, Default)]
struct Second {
    /// End-to-end p50 and p99, and the queue wait's p99, in microseconds, when any
    /// request finished in that second.
    e2e: Option<(u32, u32)>,
    queue_p99: Option<u32>,
    /// Refusals by code; empty (no allocation) in most seconds.
    refused: Vec<(&'static str, u32)>,
}

/// Quarter-octave buckets of microseconds (1 µs to 71 minutes): a second's percentiles
/// to within 9 %, for 512 bytes and one atomic add per observation. Enough for a chart;
/// the hdr histograms stay the precise record.
struct Quick {
    counts: [AtomicU32; QUICK_BUCKETS],
}

const QUICK_BUCKETS: usize = 128;

impl Default for Quick {
    fn default() -> Self {
        Quick {
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Quick {
    fn bucket(micros: u64) -> usize {
        let micros = micros.max(1) as f64;
        ((micros.log2() * 4.0) as usize).min(QUICK_BUCKETS - 1)
    }

    fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.counts[Quick::bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The percentiles `qs` of what was recorded since the last take (each bucket's
    /// geometric middle), and a fresh start; none when nothing was recorded.
    fn take<const N: usize>(&self, qs: [f64; N]) -> Option<[u32; N]> {
        let counts: Vec<u32> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        Some(qs.map(|q| {
            let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
            let mut seen = 0u64;
            let bucket = counts
                .iter()
                .position(|&c| {
                    seen += u64::from(c);
                    seen >= rank
                })
                .unwrap_or(QUICK_BUCKETS - 1);
            2f64.powf((bucket as f64 + 0.5) / 4.0)
                .min(f64::from(u32::MAX)) as u32
        }))
    }
}

/// One-second samples kept per tenant: five minutes, and the one before.
const TENANT_HISTORY: usize = 301;

impl Tally {
    /// A tally starting at zero, so the requests before its first sample count in its
    /// first second.
    pub fn new() -> Tally {
        let fresh = Tally::default();
        if let Ok(mut history) = fresh.history.lock() {
            history.push_back((0, 0, 0));
        }
        fresh
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn code(&self, code: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut codes) = self.codes.lock() {
            *codes.entry(code).or_insert(0) += 1;
        }
        if let Ok(mut now) = self.refused_now.lock() {
            match now.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => now.push((code, 1)),
            }
        }
    }

    /// A request of this tenant finished after `value`, end to end.
    pub fn answered(&self, value: Duration) {
        self.e2e.record(value);
    }

    /// A request of this tenant, or to this instance, took `value` end to end.
    pub fn recent(&self, value: Duration) {
        let micros = value.as_micros().min(u128::from(u32::MAX)) as u32;
        if let Ok(mut ring) = self.recent.lock() {
            if ring.len() == RECENT {
                ring.pop_front();
            }
            ring.push_back(micros);
        }
    }

    /// (p50, p99) in milliseconds over the last few hundred latencies, if any.
    pub fn recent_percentiles(&self) -> Option<(f64, f64)> {
        let mut sorted: Vec<u32> = self.recent.lock().ok()?.iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            f64::from(sorted[i]) / 1000.0
        };
        Some((at(0.5), at(0.99)))
    }

    /// A request of this tenant waited `value` for a seat.
    pub fn queued(&self, value: Duration) {
        self.queue.record(value);
    }

    fn now(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Takes this second's sample.
    pub fn sample(&self) {
        let now = self.now();
        if let Ok(mut history) = self.history.lock() {
            if history.len() == TENANT_HISTORY {
                history.pop_front();
            }
            history.push_back(now);
        }
        let second = Second {
            e2e: self.e2e.take([0.5, 0.99]).map(|[p50, p99]| (p50, p99)),
            queue_p99: self.queue.take([0.99]).map(|[p99]| p99),
            refused: self
                .refused_now
                .lock()
                .map(|mut now| std::mem::take(&mut *now))
                .unwrap_or_default(),
        };
        if let Ok(mut seconds) = self.seconds.lock() {
            if seconds.len() == TENANT_HISTORY - 1 {
                seconds.pop_front();
            }
            seconds.push_back(second);
        }
    }

    /// Every series of the sampled seconds, aligned and oldest first (up to five
    /// minutes).
    pub fn seconds(&self) -> History {
        let (requests, tokens, refused) = self.per_second();
        let seconds = self.seconds.lock().map(|s| s.clone()).unwrap_or_default();
        // The first counter sample has no second before it; the seconds align with the
        // differences between samples, newest last.
        let seconds: Vec<&Second> = seconds
            .iter()
            .skip(seconds.len().saturating_sub(requests.len()))
            .collect();
        let ms = |micros: u32| f64::from(micros) / 1000.0;
        let mut by_code: Vec<(String, Vec<u64>)> = Vec::new();
        for (i, second) in seconds.iter().enumerate() {
            for (code, n) in &second.refused {
                let at = match by_code.iter().position(|(c, _)| c == code) {
                    Some(at) => at,
                    None => {
                        by_code.push((code.to_string(), vec![0; seconds.len()]));
                        by_code.len() - 1
                    }
                };
                by_code[at].1[i] += u64::from(*n);
            }
        }
        by_code.sort_by(|a, b| a.0.cmp(&b.0));
        History {
            e2e_p50_ms: seconds.iter().map(|s| s.e2e.map(|e| ms(e.0))).collect(),
            e2e_p99_ms: seconds.iter().map(|s| s.e2e.map(|e| ms(e.1))).collect(),
            queue_p99_ms: seconds.iter().map(|s| s.queue_p99.map(ms)).collect(),
            refused_by_code: by_code,
            requests,
            tokens,
            refused,
        }
    }

    /// Requests, tokens and refusals in each second sampled, oldest first (up to five
    /// minutes).
    pub fn per_second(&self) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let history = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        let steps = history.iter().zip(history.iter().skip(1));
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (before, after) in steps {
            out.0.push(after.0.saturating_sub(before.0));
            out.1.push(after.1.saturating_sub(before.1));
            out.2.push(after.2.saturating_sub(before.2));
        }
        out
    }

    /// Requests and tokens since the sample a minute ago (everything, while the tenant
    /// is younger than a minute), and refusals by code since start.
    pub fn read(&self) -> TenantReading {
        let oldest = self
            .history
            .lock()
            .ok()
            .and_then(|h| h.get(h.len().saturating_sub(61)).copied())
            .unwrap_or((0, 0, 0));
        let now = self.now();
        let (requests_per_min, tokens_per_min) = (
            now.0.saturating_sub(oldest.0),
            now.1.saturating_sub(oldest.1),
        );
        TenantReading {
            requests_per_min,
            tokens_per_min,
            refused: self
                .codes
                .lock()
                .map(|c| c.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
        }
    }
}

/// What a tenant used and was refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantReading {
    pub requests_per_min: u64,
    pub tokens_per_min: u64,
    pub refused: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    requests: u64,
    errors: u64,
    coded: u64,
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
    /// Share of recent requests refused (4xx with a code: limits, budgets, pauses).
    pub refusal_rate: f64,
    pub queue_history: Vec<u64>,
}

impl Meter {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A tenant's counters, made on first use.
    pub fn tenant(&self, name: &str) -> Arc<Tally> {
        if let Some(found) = self.tenants.read().ok().and_then(|t| t.get(name).cloned()) {
            return found;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Tally::new()))
            .clone()
    }

    /// `name`'s counters, if it made a request yet.
    pub fn tenant_if_seen(&self, name: &str) -> Option<Arc<Tally>> {
        self.tenants.read().ok().and_then(|t| t.get(name).cloned())
    }

    /// What `name` used over the last minute and was refused; zeros before its first
    /// request.
    pub fn tenant_reading(&self, name: &str) -> TenantReading {
        self.tenants
            .read()
            .ok()
            .and_then(|t| t.get(name).map(|m| m.read()))
            .unwrap_or_default()
    }

    /// Counts an error answer by its code (`rate_limit_exceeded`, `upstream_error`, …).
    pub fn code(&self, code: &'static str) {
        self.coded.fetch_add(1, Ordering::Relaxed);
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
            coded: self.coded.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            queued,
        };
        if let Ok(tenants) = self.tenants.read() {
            for tenant in tenants.values() {
                tenant.sample();
            }
        }
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
            coded: self.coded.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            queued: 0,
        };
        let span = samples.len().min(RATE_WINDOW);
        let (requests_per_sec, tokens_per_sec, error_rate, refusal_rate) = match samples.len() {
            0 => (0.0, 0.0, 0.0, 0.0),
            n => {
                let last = samples[n - 1];
                let first = samples[n - span];
                let secs = (span.max(2) - 1) as f64;
                let requests = last.requests.saturating_sub(first.requests);
                let errors = last.errors.saturating_sub(first.errors);
                // Coded answers that were not failures are refusals.
                let refused = last
                    .coded
                    .saturating_sub(first.coded)
                    .saturating_sub(errors);
                let share = |n: u64| {
                    if requests == 0 {
                        0.0
                    } else {
                        (n as f64 / requests as f64).min(1.0)
                    }
                };
                (
                    requests as f64 / secs,
                    last.tokens.saturating_sub(first.tokens) as f64 / secs,
                    share(errors),
                    share(refused),
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
            refusal_rate,
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

    #[test]
    fn a_tenant_reads_its_last_minute_and_its_refusals_by_code() {
        let meter = Meter::default();
        let acme = meter.tenant("acme");
        assert!(Arc::ptr_eq(&acme, &meter.tenant("acme")));
        // Younger than a minute: everything so far.
        acme.request();
        meter.sample(0);
        acme.request();
        assert_eq!(meter.tenant_reading("acme").requests_per_min, 2);
        // 12 requests a second for 90 seconds: a steady 720 a minute.
        for _ in 0..90 {
            for _ in 0..12 {
                acme.request();
                acme.tokens(50);
            }
            meter.sample(0);
        }
        acme.code("rate_limit_exceeded");
        acme.code("rate_limit_exceeded");
        acme.code("tenant_paused");
        let reading = meter.tenant_reading("acme");
        assert_eq!(reading.requests_per_min, 720);
        assert_eq!(reading.tokens_per_min, 720 * 50);
        assert_eq!(
            reading.refused,
            [
                ("rate_limit_exceeded".to_string(), 2),
                ("tenant_paused".to_string(), 1)
            ]
        );
        assert_eq!(meter.tenant_reading("nobody"), TenantReading::default());
        let (requests, tokens, refused) = acme.per_second();
        assert_eq!(requests.len(), 91, "every second sampled");
        assert!(requests[2..].iter().all(|n| *n == 12), "{requests:?}");
        assert!(tokens[2..].iter().all(|n| *n == 600));
        assert_eq!(
            refused.iter().sum::<u64>(),
            0,
            "refused after the last sample"
        );
    }

    #[test]
    fn recent_percentiles_keep_the_last_samples() {
        let tally = Tally::new();
        assert_eq!(tally.recent_percentiles(), None);
        for ms in 1..=1000u64 {
            tally.recent(Duration::from_millis(ms));
        }
        // The last 512 samples are 489..=1000 ms.
        assert_eq!(tally.recent_percentiles(), Some((744.0, 995.0)));
    }

    #[test]
    fn a_tenant_keeps_each_seconds_latency_and_refusals_by_code() {
        let meter = Meter::default();
        let acme = meter.tenant("acme");
        // Second 1: 100 requests of 1..=100 ms, two rate refusals.
        for ms in 1..=100u64 {
            acme.request();
            acme.answered(Duration::from_millis(ms));
            acme.queued(Duration::from_millis(ms / 10));
        }
        acme.code("rate_limit_exceeded");
        acme.code("rate_limit_exceeded");
        meter.sample(0);
        // Second 2: nothing finished; one paused refusal.
        acme.code("tenant_paused");
        meter.sample(0);
        let s = acme.seconds();
        assert_eq!(s.requests, [100, 0]);
        assert_eq!(s.refused, [2, 1]);
        assert_eq!(
            s.refused_by_code,
            [
                ("rate_limit_exceeded".to_string(), vec![2, 0]),
                ("tenant_paused".to_string(), vec![0, 1]),
            ]
        );
        // Quarter-octave buckets: within 10 % of the true percentiles.
        let p50 = s.e2e_p50_ms[0].expect("a p50 in the first second");
        let p99 = s.e2e_p99_ms[0].expect("a p99 in the first second");
        assert!((p50 - 50.0).abs() <= 5.0, "p50 {p50}");
        assert!((p99 - 99.0).abs() <= 10.0, "p99 {p99}");
        let queue = s.queue_p99_ms[0].expect("a queue p99");
        assert!((queue - 9.0).abs() <= 1.0, "queue p99 {queue}");
        assert_eq!(s.e2e_p99_ms[1], None, "no request finished in the second");
        // Five minutes kept, aligned.
        for _ in 0..400 {
            acme.answered(Duration::from_millis(7));
            meter.sample(0);
        }
        let s = acme.seconds();
        assert_eq!(s.requests.len(), 300);
        assert_eq!(s.e2e_p99_ms.len(), 300);
        assert_eq!(s.refused_by_code, [], "refusals older than five minutes");
        let p = s.e2e_p99_ms[299].unwrap();
        assert!((p - 7.0).abs() < 0.7, "{p}");
    }
}
