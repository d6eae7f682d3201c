//! Group commit: requests for durability that arrive together share one flush.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::MessageStore;

/// When a write that must be durable (an acknowledged offline message) is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// One flush per request, one after the other.
    Always,
    /// Requests arriving within the window share one flush (group commit).
    #[default]
    Batch,
    /// No flush: acknowledged at once; the store flushes in the background (a crash may
    /// lose the last few hundred milliseconds).
    None,
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// Hands out durability: `durable().await` returns once everything written before the
/// call is on disk (per the [`SyncMode`]).
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
    mode: SyncMode,
}

impl Committer {
    /// Start the committer task on the current runtime; it stops with `stop`.
    pub fn start(
        store: Arc<dyn MessageStore>,
        mode: SyncMode,
        window: Duration,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Committer { tx, mode }, run(store, mode, window, rx, stop))
    }

    /// Wait until what was written so far is durable.
    pub async fn durable(&self) -> Result<(), String> {
        if self.mode == SyncMode::None {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| "the store is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the store is shutting down".to_owned())?
    }
}

async fn flush(store: &Arc<dyn MessageStore>) -> Result<(), String> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.flush())
        .await
        .unwrap_or_else(|e| Err(format!("flush task failed: {e}")))
}

async fn run(
    store: Arc<dyn MessageStore>,
    mode: SyncMode,
    window: Duration,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            w = rx.recv() => match w { Some(w) => w, None => return },
            _ = stop.cancelled() => {
                let _ = flush(&store).await;
                return;
            }
        };
        let mut waiters = vec![first];
        if mode == SyncMode::Batch && !window.is_zero() {
            tokio::time::sleep(window).await;
        }
        if mode == SyncMode::Batch {
            while let Ok(w) = rx.try_recv() {
                waiters.push(w);
            }
        }
        let r = flush(&store).await;
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}
