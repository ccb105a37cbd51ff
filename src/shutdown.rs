//! The one drain signal (linkerd2-proxy's idea): every request being served and every
//! stream being relayed holds a `Work` guard while it runs, and watches `cut`. Shutting
//! down waits for the work to end within a grace period, then cuts what remains, which
//! ends it with an explicit error, settled and recorded, before the writers' last flush.
//! Nothing here spawns a task or does I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

#[derive(Debug)]
pub struct Shutdown {
    /// Shutting down has begun: nothing new should start.
    draining: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    /// Work in progress: a plain counter, as every request moves it twice; `idle` hears
    /// only when it reaches zero.
    running: AtomicUsize,
    none_running: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: watch::channel(false).0,
            cut: watch::channel(false).0,
            running: AtomicUsize::new(0),
            none_running: Notify::new(),
        }
    }
}

/// Held by a request or a relay while it runs.
#[derive(Debug)]
pub struct Work(Arc<Shutdown>);

impl Drop for Work {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_running.notify_waiters();
        }
    }
}

impl Shutdown {
    /// Counts work that shutdown waits for, until the guard is dropped.
    pub fn work(self: &Arc<Self>) -> Work {
        self.running.fetch_add(1, Ordering::AcqRel);
        Work(self.clone())
    }

    /// Work in progress now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Resolves once nothing runs.
    pub async fn idle(&self) {
        loop {
            // Listening before looking: a last guard dropped in between still wakes us.
            let none_running = self.none_running.notified();
            tokio::pin!(none_running);
            none_running.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            none_running.await;
        }
    }

    /// Shutting down begins: work that starts work of its own (a batch's lines) stops
    /// starting more.
    pub fn begin(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when shutting down begins (at once if it has).
    pub fn draining_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            let _ = draining.wait_for(|d| *d).await;
        }
    }

    /// Tells all work to end now.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Resolves when work is told to end (at once if it was already).
    pub fn cut_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut cut = self.cut.subscribe();
        async move {
            let _ = cut.wait_for(|c| *c).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard_and_cut_reaches_every_watcher() {
        let shutdown = Arc::new(Shutdown::default());
        let (a, b) = (shutdown.work(), shutdown.work());
        assert_eq!(shutdown.running(), 2);
        let signal = shutdown.cut_signal();
        shutdown.cut();
        signal.await;
        shutdown.cut_signal().await;
        drop(a);
        assert_eq!(shutdown.running(), 1);
        let idle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.idle().await }
        });
        drop(b);
        assert!(idle.await.is_ok());
    }
}
