//! Group commit: requests for durability that arrive together share one flush.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{OfflineStore, StoreError};
pub use crate::config::SyncMode;

/// Why durability could not be had; shared by every request of a group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The flush failed.
    #[error(transparent)]
    Flush(Arc<StoreError>),
    /// The committer has stopped (shutdown).
    #[error("the store is shutting down")]
    ShuttingDown,
}

type Waiter = oneshot::Sender<Result<(), CommitError>>;

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
        store: Arc<dyn OfflineStore>,
        mode: SyncMode,
        window: Duration,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Committer { tx, mode }, run(store, mode, window, rx, stop))
    }

    /// Wait until what was written so far is durable.
    pub async fn durable(&self) -> Result<(), CommitError> {
        if self.mode == SyncMode::None {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| CommitError::ShuttingDown)?;
        rx.await.map_err(|_| CommitError::ShuttingDown)?
    }
}

async fn flush(store: &Arc<dyn OfflineStore>) -> Result<(), CommitError> {
    store
        .flush()
        .await
        .map_err(|e| CommitError::Flush(Arc::new(e)))
}

async fn run(
    store: Arc<dyn OfflineStore>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;
    use crate::store::{Mailbox, Pushed, StoredMessage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts flushes; each takes 20 ms, long enough for requests to pile up.
    #[derive(Default)]
    struct Flushes(AtomicUsize);

    #[async_trait::async_trait]
    impl OfflineStore for Flushes {
        async fn push(
            &self,
            _: &str,
            _: &Mailbox,
            _: &Message,
            _: usize,
        ) -> Result<Pushed, StoreError> {
            Err(StoreError::ShuttingDown)
        }
        async fn pending(
            &self,
            _: &str,
            _: &Mailbox,
            _: Duration,
        ) -> Result<(Vec<StoredMessage>, usize), StoreError> {
            Err(StoreError::ShuttingDown)
        }
        async fn has_offline(&self, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn remove(&self, _: &str, _: &Mailbox, _: &[u64]) -> Result<(), StoreError> {
            Ok(())
        }
        async fn flush(&self) -> Result<(), StoreError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Flushes made for 20 concurrent requests in `mode`.
    async fn flushes(mode: SyncMode) -> usize {
        let store = Arc::new(Flushes::default());
        let (c, task) = Committer::start(
            store.clone(),
            mode,
            Duration::ZERO,
            CancellationToken::new(),
        );
        tokio::spawn(task);
        let waits: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.durable().await })
            })
            .collect();
        for w in waits {
            assert!(w.await.expect("join").is_ok());
        }
        store.0.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_shares_flushes_always_does_not_none_skips_them() {
        assert_eq!(flushes(SyncMode::Always).await, 20);
        let batch = flushes(SyncMode::Batch).await;
        assert!(
            (1..=3).contains(&batch),
            "20 concurrent requests took {batch} flushes"
        );
        assert_eq!(flushes(SyncMode::None).await, 0);
    }
}
