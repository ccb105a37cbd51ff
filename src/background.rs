//! A task behind the request path that is asked to stop and waited for: the writers that
//! batch usage, kept answers and audit records into the store. Asked to stop, each writes
//! what it still holds, flushes, and ends; `stop` returns when it has.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Background {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Handed to the task: resolves when the task is asked to stop.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl Background {
    pub fn spawn<F, T>(name: &'static str, body: F) -> Background
    where
        F: FnOnce(Stopping) -> T,
        T: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopping) = watch::channel(false);
        Background {
            name,
            stop,
            task: tokio::spawn(body(Stopping(stopping))),
        }
    }

    /// Asks the task to stop and waits until it has written what it held.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, task = self.name, "a background task failed at shutdown");
        }
    }
}
