//! Connection workers, as Envoy and nginx run them: one thread per core, each with a
//! single-threaded runtime of its own. An accepted connection is handed to one worker
//! and lives there, with everything its requests spawn (a stream's relay, a count too
//! large to run inline) and the upstream connections they take from that worker's own
//! pool (see `providers::client`). A request then never crosses threads: on a shared,
//! work-stealing runtime each request woke the other worker thread once, which cost a
//! request at one connection a third of what the gateway adds to its latency
//! (benches/peers.sh, the c=1 row).
//!
//! Background work (health probes, the writers, the admin API, the console) stays on the
//! runtime that started the daemon.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread is, if any.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many workers `configured` means: 0 is one per core.
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The running workers. Dropping this lets each worker's thread end: what still runs
/// there is cancelled, as a runtime's tasks are when it stops.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let (mut handles, mut stops) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Blocking work still running (a file being written) gets a moment.
                    runtime.shutdown_timeout(Duration::from_secs(5));
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// The worker for the next connection, in turn.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_each_worker_in_turn_and_run_on_its_thread() {
        let workers = Workers::start(3).expect("workers start");
        assert_eq!(current(), None, "a test's own thread is no worker");
        let mut seen = Vec::new();
        for _ in 0..6 {
            let task = workers.next().spawn(async {
                // Whatever a connection spawns stays on its worker too.
                let inner = tokio::spawn(async { (current(), std::thread::current().id()) });
                let outer = (current(), std::thread::current().id());
                (outer, inner.await.expect("inner task"))
            });
            let (outer, inner) = task.await.expect("task");
            assert_eq!(outer, inner);
            seen.push(outer.0);
        }
        assert_eq!(seen, [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]);
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads_and_cancels_what_runs_there() {
        let workers = Workers::start(2).expect("workers start");
        let (_hold, held) = oneshot::channel::<()>();
        let task = workers.next().spawn(async move {
            let _ = held.await;
        });
        drop(workers);
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the worker stopped");
        assert!(ended.expect_err("cancelled").is_cancelled());
    }
}
