//! The one drain signal (linkerd2-proxy's idea): every request being served and every
//! stream being relayed holds a `Work` guard while it runs, and watches `cut`. Shutting
//! down waits for the work to end within a grace period, then cuts what remains, which
//! ends it with an explicit error, settled and recorded, before the writers' last flush.
//! Nothing here spawns a task or does I/O.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Shutdown {
    /// Shutting down has begun: nothing new should start.
    draining: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    running: watch::Sender<usize>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: watch::channel(false).0,
            cut: watch::channel(false).0,
            running: watch::channel(0).0,
        }
    }
}

/// Held by a request or a relay while it runs.
#[derive(Debug)]
pub struct Work(Arc<Shutdown>);

impl Drop for Work {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Shutdown {
    /// Counts work that shutdown waits for, until the guard is dropped.
    pub fn work(self: &Arc<Self>) -> Work {
        self.running.send_modify(|n| *n += 1);
        Work(self.clone())
    }

    /// Work in progress now.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Resolves once nothing runs.
    pub async fn idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
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
