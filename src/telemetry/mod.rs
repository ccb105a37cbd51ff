//! Logging setup: structured events to a daily rolling file in the data directory
//! and, unless a console owns the terminal, to stderr; both are written by background
//! threads, so the request path never waits on a disk or a terminal. `RUST_LOG` filters.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
