//! The usage ledger: a named task that takes the counters admission changed and writes
//! them to the store every `checkpoint_interval`, off the request path (in a blocking
//! task), and once more, flushed, at shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::Admission;
use crate::background::Background;
use crate::store::Store;

/// Starts the ledger; stopping it writes what is left and flushes.
pub fn spawn(admission: Arc<Admission>, store: Arc<dyn Store>, interval: Duration) -> Background {
    Background::spawn("ledger", move |mut stopping| async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => checkpoint(&admission, &store, false).await,
                () = stopping.requested() => {
                    checkpoint(&admission, &store, true).await;
                    return;
                }
            }
        }
    })
}

async fn checkpoint(admission: &Arc<Admission>, store: &Arc<dyn Store>, flush: bool) {
    let records = admission.take_dirty();
    if records.is_empty() && !flush {
        return;
    }
    let store = store.clone();
    let count = records.len();
    let written = tokio::task::spawn_blocking(move || {
        store.save_usage(&records)?;
        if flush {
            store.flush()?;
        }
        Ok::<_, crate::store::StoreError>(records)
    })
    .await;
    match written {
        Ok(Ok(_)) => tracing::debug!(records = count, flush, "usage checkpointed"),
        Ok(Err(error)) => {
            tracing::error!(%error, "usage checkpoint failed; the counters stay in memory and are retried");
            admission.mark_all_dirty();
        }
        Err(error) => {
            tracing::error!(%error, "usage checkpoint task failed");
            admission.mark_all_dirty();
        }
    }
}
