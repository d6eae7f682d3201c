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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;
    use crate::store::{Mailbox, Pushed, StoredMessage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts flushes; each takes 20 ms, long enough for requests to pile up.
    #[derive(Default)]
    struct Flushes(AtomicUsize);

    impl MessageStore for Flushes {
        fn push(&self, _: &str, _: &Mailbox, _: &Message, _: usize) -> Result<Pushed, String> {
            Err("unused".into())
        }
        fn pending(
            &self,
            _: &str,
            _: &Mailbox,
            _: Duration,
        ) -> Result<(Vec<StoredMessage>, usize), String> {
            Err("unused".into())
        }
        fn has_offline(&self, _: &str) -> Result<bool, String> {
            Ok(false)
        }
        fn remove(&self, _: &str, _: &Mailbox, _: &[u64]) -> Result<(), String> {
            Ok(())
        }
        fn flush(&self) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(20));
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn history_epoch(&self, _: &str) -> Result<String, String> {
            Err("unused".into())
        }
        fn history_offset(&self) -> Result<u64, String> {
            Err("unused".into())
        }
        fn history_append(
            &self,
            _: &str,
            _: &str,
            _: u64,
            _: &Message,
            _: usize,
        ) -> Result<(), String> {
            Err("unused".into())
        }
        fn history_since(
            &self,
            _: &str,
            _: &str,
            _: u64,
            _: Duration,
        ) -> Result<Option<Vec<(u64, Message)>>, String> {
            Err("unused".into())
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
            assert_eq!(w.await.expect("join"), Ok(()));
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
