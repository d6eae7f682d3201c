//! Graceful shutdown: one token to stop, one tracker to wait for every task.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every long-running task: `token` says stop, `tracker` counts who is still running.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled when relay should stop accepting and close its connections.
    pub token: CancellationToken,
    /// Every task relay spawns; shutdown waits until it is empty.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, un-cancelled shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everything to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }
}
