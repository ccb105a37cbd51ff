//! Telemetry: logging setup, the operator's event log (`events`), and request counters
//! with per-second samples (`meter`).
//!
//! Logging: structured events to a daily rolling file in the data directory
//! and, unless a console owns the terminal, to stderr; both are written by background
//! threads, so the request path never waits on a disk or a terminal. `RUST_LOG` filters.

pub mod events;
pub mod histograms;
pub mod latency;
pub mod meter;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Maps on every request's path keyed by what no client picks (configured tenants,
/// models, instances, routes; the digests of keys the gateway holds; its own ids):
/// foldhash, not SipHash.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Keeps the log writers alive; logs still buffered are flushed when it drops.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _writers: Vec<WorkerGuard>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create the log directory {dir}: {source}")]
pub struct LogError {
    dir: PathBuf,
    source: std::io::Error,
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to `<data_dir>/logs/switchyard.log.<date>` and, if `stderr`, to stderr too.
pub fn init(data_dir: &Path, stderr: bool) -> Result<LogGuard, LogError> {
    let dir = data_dir.join("logs");
    std::fs::create_dir_all(&dir).map_err(|source| LogError {
        dir: dir.clone(),
        source,
    })?;
    let (writer, guard) =
        tracing_appender::non_blocking(tracing_appender::rolling::daily(&dir, "switchyard.log"));
    let file = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    let mut guards = vec![guard];
    let console = stderr.then(|| {
        let (layer, guard) = stderr_layer();
        guards.push(guard);
        layer
    });
    // A second initialisation (tests, embedded use) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter("info"))
        .with(file)
        .with(console)
        .try_init();
    Ok(LogGuard { _writers: guards })
}

/// Logs to stderr only, for commands that have no data directory (`mock`, `bench`);
/// `default` is the filter when `RUST_LOG` is not set.
pub fn init_stderr(default: &str) -> LogGuard {
    let (layer, guard) = stderr_layer();
    let _ = tracing_subscriber::registry()
        .with(filter(default))
        .with(layer)
        .try_init();
    LogGuard {
        _writers: vec![guard],
    }
}

/// Stderr through a writer thread too: a slow terminal must not slow requests.
fn stderr_layer<S>() -> (impl tracing_subscriber::Layer<S>, WorkerGuard)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    (layer, guard)
}

/// Wall-clock milliseconds since the Unix epoch, for events and snapshots.
pub fn now_ms() -> u64 {
    crate::clock::wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The snapshot in Prometheus' text exposition format.
pub fn prometheus(s: &crate::domain::snapshot::Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP switchyard_{name} {help}");
        let _ = writeln!(out, "# TYPE switchyard_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "switchyard_{name}{labels} {value}");
        }
    };
    let t = &s.totals;
    metric(
        "requests_total",
        "counter",
        "Requests received.",
        vec![(String::new(), t.requests as f64)],
    );
    metric(
        "errors_total",
        "counter",
        "Requests that ended in a 5xx.",
        vec![(String::new(), t.errors as f64)],
    );
    metric(
        "tokens_total",
        "counter",
        "Tokens used (prompt and completion).",
        vec![(String::new(), t.tokens as f64)],
    );
    metric(
        "error_answers_total",
        "counter",
        "Error answers to clients, by OpenAI error code.",
        s.errors_by_code
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), *n as f64))
            .collect(),
    );
    metric(
        "audit_records_written_total",
        "counter",
        "Audit records written to the database.",
        vec![(String::new(), s.audit.written as f64)],
    );
    metric(
        "audit_backlog",
        "gauge",
        "Audit records waiting to be written; growing means the disk cannot keep up.",
        vec![(String::new(), s.audit.backlog as f64)],
    );
    metric(
        "audit_dropped_total",
        "counter",
        "Audit records dropped because the writer fell too far behind.",
        vec![(String::new(), s.audit.dropped as f64)],
    );
    metric(
        "persistence_degraded",
        "gauge",
        "1 while writes to the database fail.",
        vec![(
            String::new(),
            f64::from(u8::from(s.persistence_degraded.is_some())),
        )],
    );
    let c = &s.cache;
    metric(
        "cache_lookups_total",
        "counter",
        "Requests by what the response cache did: hit, coalesced, miss or bypass.",
        [
            ("hit", c.hits),
            ("coalesced", c.coalesced),
            ("miss", c.misses),
            ("bypass", c.bypasses),
        ]
        .into_iter()
        .map(|(result, n)| (format!("{{result=\"{result}\"}}"), n as f64))
        .collect(),
    );
    metric(
        "cache_bytes",
        "gauge",
        "Bytes of answers kept in the response cache.",
        vec![(String::new(), c.bytes as f64)],
    );
    metric(
        "cache_entries",
        "gauge",
        "Answers kept in the response cache.",
        vec![(String::new(), c.entries as f64)],
    );
    metric(
        "cache_evictions_total",
        "counter",
        "Answers dropped from the response cache to make room.",
        vec![(String::new(), c.evictions as f64)],
    );
    metric(
        "in_flight",
        "gauge",
        "Requests upstream now.",
        vec![(String::new(), t.in_flight as f64)],
    );
    metric(
        "queue_depth",
        "gauge",
        "Requests waiting for a seat, by tier.",
        s.levels
            .iter()
            .map(|l| (format!("{{tier=\"{}\"}}", l.tier), l.queued as f64))
            .collect(),
    );
    metric(
        "queue_oldest_wait_seconds",
        "gauge",
        "Wait of the oldest queued request, by tier.",
        s.levels
            .iter()
            .map(|l| {
                (
                    format!("{{tier=\"{}\"}}", l.tier),
                    l.oldest_wait_ms as f64 / 1000.0,
                )
            })
            .collect(),
    );
    metric(
        "instance_up",
        "gauge",
        "1 when the instance takes new requests.",
        s.regions
            .iter()
            .flat_map(|r| r.instances.iter().map(move |i| (r, i)))
            .map(|(r, i)| {
                (
                    format!(
                        "{{region=\"{}\",instance=\"{}\",state=\"{}\"}}",
                        r.name, i.name, i.health.state
                    ),
                    if i.health.state == crate::domain::snapshot::InstanceState::Healthy {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect(),
    );
    metric(
        "instance_in_flight",
        "gauge",
        "Requests in flight per instance.",
        s.regions
            .iter()
            .flat_map(|r| r.instances.iter().map(move |i| (r, i)))
            .map(|(r, i)| {
                (
                    format!("{{region=\"{}\",instance=\"{}\"}}", r.name, i.name),
                    f64::from(i.in_flight),
                )
            })
            .collect(),
    );
    metric(
        "tenant_tokens_today",
        "gauge",
        "Tokens a tenant used today (UTC).",
        s.tenants
            .iter()
            .map(|t| (format!("{{tenant=\"{}\"}}", t.name), t.day.tokens as f64))
            .collect(),
    );
    metric(
        "latency_last_minute_seconds",
        "gauge",
        "Latency percentiles over the last minute as the console shows them, by metric and scope; for dashboards and alerts use the *_seconds histograms, which aggregate.",
        s.latency
            .iter()
            .filter(|l| l.window == "1m")
            .flat_map(|l| {
                [
                    ("0.5", l.p50_ms),
                    ("0.9", l.p90_ms),
                    ("0.99", l.p99_ms),
                    ("0.999", l.p999_ms),
                ]
                .into_iter()
                .map(move |(q, ms)| {
                    (
                        format!(
                            "{{metric=\"{}\",scope=\"{}\",percentile=\"{q}\"}}",
                            l.metric, l.scope
                        ),
                        ms / 1000.0,
                    )
                })
            })
            .collect(),
    );
    metric(
        "streams_live",
        "gauge",
        "Streams being relayed now.",
        vec![(String::new(), s.streams.len() as f64)],
    );
    out
}

thread_local! {
    static IN_REQUEST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is polling a request handler now. A panic hook uses it to tell a
/// request's panic (caught, answered 500, logged) from one that must restore the terminal.
pub fn in_request() -> bool {
    IN_REQUEST.with(|flag| flag.get())
}

/// Marks the thread as inside a request handler for the duration of each poll.
pub struct RequestScope<F> {
    inner: std::pin::Pin<Box<F>>,
}

impl<F: std::future::Future> RequestScope<F> {
    /// The handler `make` makes, made in its box (see [`crate::wake::boxed`]).
    pub fn new(make: impl FnOnce() -> F) -> Self {
        RequestScope {
            inner: crate::wake::boxed(make),
        }
    }
}

impl<F: std::future::Future> std::future::Future for RequestScope<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let outer = IN_REQUEST.with(|flag| flag.replace(true));
        let result = self.inner.as_mut().poll(cx);
        IN_REQUEST.with(|flag| flag.set(outer));
        result
    }
}

/// The innermost error's message: "connection refused" rather than "error sending request".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}

/// The text of a caught panic's payload.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A stream polled on a request's behalf (a relay, a reader, a response body): each poll
/// counts as inside a request, and a panic ends the stream with `last` (an error event)
/// instead of unwinding into the runtime, the connection or the terminal.
pub struct Guarded<S, F> {
    inner: std::pin::Pin<Box<S>>,
    last: Option<F>,
    what: &'static str,
}

/// Guards `stream`; `what` names it in the log when it panics.
pub fn guarded<S, F>(stream: S, what: &'static str, last: F) -> Guarded<S, F>
where
    S: futures_util::Stream,
    F: FnOnce() -> S::Item,
{
    Guarded {
        inner: Box::pin(stream),
        last: Some(last),
        what,
    }
}

impl<S, F> futures_util::Stream for Guarded<S, F>
where
    S: futures_util::Stream,
    F: FnOnce() -> S::Item + Unpin,
{
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if self.last.is_none() {
            return std::task::Poll::Ready(None);
        }
        let outer = IN_REQUEST.with(|flag| flag.replace(true));
        let inner = &mut self.inner;
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.as_mut().poll_next(cx)
        }));
        IN_REQUEST.with(|flag| flag.set(outer));
        match polled {
            Ok(std::task::Poll::Ready(None)) => {
                self.last = None;
                std::task::Poll::Ready(None)
            }
            Ok(poll) => poll,
            Err(panic) => {
                tracing::error!(stream = self.what, panic = %panic_text(panic.as_ref()), "a stream panicked; it is ended with an error");
                std::task::Poll::Ready(self.last.take().map(|last| last()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guarded_stream_ends_with_its_last_item_when_it_panics() {
        use futures_util::StreamExt;
        let stream = futures_util::stream::iter([1, 2, 3]).map(|n| {
            assert!(n < 3, "boom at {n}");
            n
        });
        let items: Vec<i32> = guarded(stream, "test", || -1).collect().await;
        assert_eq!(items, [1, 2, -1]);
    }

    #[tokio::test]
    async fn request_scope_marks_only_the_polls_of_its_future() {
        assert!(!in_request());
        let inside = RequestScope::new(|| async { in_request() }).await;
        assert!(inside);
        assert!(!in_request());
    }
}
