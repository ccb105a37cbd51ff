//! Connection workers, as Envoy and nginx run them: one thread per core, each with a
//! single-threaded runtime of its own. An accepted connection is handed to the worker
//! serving the fewest connections (ties in turn) and lives there, with everything its
//! requests spawn (a stream's relay, a count too large to run inline) and the upstream
//! connections they take from that worker's own pool (see `providers::client`). A request then never crosses threads: on a shared,
//! work-stealing runtime each request woke the other worker thread once, which cost a
//! request at one connection a third of what the gateway adds to its latency
//! (benches/peers.sh, the c=1 row).
//!
//! Counting open connections rather than dealing them in turn matters to a daemon that
//! runs for months: clients close idle keep-alive connections and open new ones, and
//! dealt in turn, whatever closed, the live ones drift onto one worker (as Envoy's
//! `exact_balance` exists to prevent).
//!
//! Background work (health probes, the writers, the admin API, the console) stays on the
//! runtime that started the daemon.

use std::cell::Cell;
use std::sync::Arc;
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
    open: Occupancy,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

/// The client connections open on each worker, for whoever reports them (`/metrics`).
#[derive(Clone)]
pub struct Occupancy(Arc<[AtomicUsize]>);

impl Occupancy {
    fn count(&self, worker: usize) -> usize {
        self.0[worker].load(Ordering::Relaxed)
    }

    /// Open connections, by worker.
    pub fn open(&self) -> Vec<usize> {
        (0..self.0.len()).map(|w| self.count(w)).collect()
    }
}

/// A connection's assignment to its worker, counted until it is dropped.
pub struct Assignment {
    open: Occupancy,
    worker: usize,
}

impl Assignment {
    /// The worker assigned.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.open.0[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
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
            open: Occupancy((0..n).map(|_| AtomicUsize::new(0)).collect()),
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// The worker for a new connection: the one with the fewest open, the first of
    /// them from a starting point that moves on each time, so ties go to each in turn.
    /// The connection holds the assignment while it lives. (Connections are accepted one at a
    /// time, so two never pick at once; closing ones only lower the counts meanwhile.)
    pub fn take(&self) -> (&Handle, Assignment) {
        let n = self.handles.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let worker = (start..start + n)
            .map(|i| i % n)
            .min_by_key(|&i| self.open.count(i))
            .unwrap_or(start);
        self.open.0[worker].fetch_add(1, Ordering::Relaxed);
        let assignment = Assignment {
            open: self.open.clone(),
            worker,
        };
        (&self.handles[worker], assignment)
    }

    /// The workers' open connections, counted live.
    pub fn occupancy(&self) -> Occupancy {
        self.open.clone()
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
            let (worker, _assigned) = workers.take();
            let task = worker.spawn(async {
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
    async fn a_new_connection_goes_to_the_worker_serving_fewest() {
        let workers = Workers::start(2).expect("workers start");
        // Six open, dealt evenly; then the three on worker 0 close.
        let mut assigned: Vec<Assignment> = (0..6).map(|_| workers.take().1).collect();
        let places: Vec<usize> = assigned.iter().map(Assignment::worker).collect();
        assert_eq!(places, [0, 1, 0, 1, 0, 1]);
        assigned.retain(|a| a.worker() == 1);
        // In turn, the next four would go 0, 1, 0, 1 and leave worker 1 with five of
        // seven; counted, worker 0 takes three before they are even again.
        let next: Vec<Assignment> = (0..4).map(|_| workers.take().1).collect();
        let places: Vec<usize> = next.iter().map(Assignment::worker).collect();
        assert_eq!(places, [0, 0, 0, 1]);
        // A worker's assignments are its connections: each counted once, and let go.
        let occupancy = workers.occupancy();
        assert_eq!(occupancy.open(), [3, 4]);
        drop((assigned, next));
        assert_eq!(occupancy.open(), [0, 0]);
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads_and_cancels_what_runs_there() {
        let workers = Workers::start(2).expect("workers start");
        let (_hold, held) = oneshot::channel::<()>();
        let (worker, _assigned) = workers.take();
        let task = worker.spawn(async move {
            let _ = held.await;
        });
        drop(workers);
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the worker stopped");
        assert!(ended.expect_err("cancelled").is_cancelled());
    }
}
