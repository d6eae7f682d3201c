//! [`Link`]: the way to one client — a bounded outbound queue and the flags that end it,
//! watched by the session's reader and writer.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use bytes::Bytes;

use super::conn::{ConnId, Outbound, WrittenFn};
use super::queue;
use crate::metrics::Metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::frame;

/// [`Link`] state bit: aborted now (slow consumer); what is queued is dropped.
const KILLED: u8 = 1;
/// [`Link`] state bit: a close frame is queued; the session waits for the peer's close.
const CLOSING: u8 = 2;

/// Who watches a link: the session's reader and its writer, each woken when the link is
/// killed (the reader also when it starts closing). Two waker slots instead of a
/// `Notify` future in every waiting state keep an idle connection's futures small
/// (idle memory per connection is a goal; see docs/BENCHMARKS.md).
#[derive(Clone, Copy)]
pub enum Watcher {
    /// The task reading from the client.
    Reader = 0,
    /// The task writing to the client.
    Writer = 1,
}

/// The way to one client: a bounded outbound queue and the flags that end it. A
/// WebSocket connection has one link and one [`ConnHandle`]; a Socket.IO client has one
/// link shared by the handles of the namespaces it joined.
pub struct Link {
    /// Id used in log lines.
    pub id: ConnId,
    tx: queue::Sender<Outbound>,
    /// [`KILLED`] and [`CLOSING`].
    state: AtomicU8,
    watchers: Mutex<[Option<Waker>; 2]>,
    /// Other tasks waiting for the kill (Engine.IO's driver).
    killed: tokio::sync::Notify,
    close_code: AtomicU16,
    /// Bytes queued and not yet taken by the writer.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("id", &self.id).finish()
    }
}

impl Link {
    /// A link and the receiving end of its queue, bounded to `capacity` items and `max_bytes` bytes.
    pub fn new(
        id: ConnId,
        capacity: usize,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, queue::Receiver<Outbound>) {
        let (tx, rx) = queue::channel(capacity.max(1));
        let l = Arc::new(Link {
            id,
            tx,
            state: AtomicU8::new(0),
            watchers: Mutex::new([None, None]),
            killed: tokio::sync::Notify::new(),
            close_code: AtomicU16::new(close::TRY_AGAIN_LATER),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: max_bytes,
            metrics,
        });
        (l, rx)
    }

    /// Queue bytes without waiting. A full queue (frames or bytes) means the client does not
    /// keep up: it is disconnected with 1013 and counted, and `false` is returned. Nothing is
    /// queued after a close frame.
    #[inline]
    pub fn send(&self, bytes: Bytes) -> bool {
        self.push(Outbound::Frame(bytes))
    }

    /// Queue complete WebSocket control frames (see [`Outbound::Control`]).
    pub fn send_control(&self, bytes: Bytes) -> bool {
        self.push(Outbound::Control(bytes))
    }

    /// Run `f` once everything queued so far has been written to the socket; `false` (and
    /// `f` is never run) when the connection is closing or gone.
    pub fn when_written(&self, f: WrittenFn) -> bool {
        self.push(Outbound::Written(f))
    }

    /// Whether the link was aborted.
    #[inline]
    pub fn is_killed(&self) -> bool {
        self.state.load(Ordering::Acquire) & KILLED != 0
    }

    /// Whether a close frame is queued (or the link was aborted while closing).
    #[inline]
    pub fn is_closing(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSING != 0
    }

    /// `(killed, closing)` now; unless killed, the task of `cx` is woken (as `who`) when
    /// that changes: when the link is killed, and for the reader also when it starts
    /// closing.
    pub fn watch(&self, who: Watcher, cx: &mut Context<'_>) -> (bool, bool) {
        let before = self.state.load(Ordering::Acquire);
        if before & KILLED == 0 {
            if let Ok(mut w) = self.watchers.lock() {
                let slot = &mut w[who as usize];
                if !slot.as_ref().is_some_and(|s| s.will_wake(cx.waker())) {
                    *slot = Some(cx.waker().clone());
                }
            }
        }
        // Look again after registering: a change in between is seen here or wakes us.
        let now = self.state.load(Ordering::Acquire);
        (now & KILLED != 0, now & CLOSING != 0)
    }

    /// Wait until the link is killed (for tasks other than the reader and the writer).
    pub async fn killed(&self) {
        loop {
            let notified = self.killed.notified();
            tokio::pin!(notified);
            // Register before looking, so a kill in between still wakes us.
            notified.as_mut().enable();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }

    /// Set state bits and wake the watchers concerned.
    fn set(&self, bit: u8) {
        let before = self.state.fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            return;
        }
        let wake: Vec<Waker> = match self.watchers.lock() {
            Ok(mut w) => {
                let reader = w[Watcher::Reader as usize].take();
                let writer = if bit == KILLED {
                    w[Watcher::Writer as usize].take()
                } else {
                    None
                };
                reader.into_iter().chain(writer).collect()
            }
            Err(_) => Vec::new(),
        };
        wake.into_iter().for_each(Waker::wake);
        if bit == KILLED {
            self.killed.notify_waiters();
            // The writer may be waiting on the queue.
            self.tx.wake_receiver();
        }
    }

    #[inline]
    fn push(&self, item: Outbound) -> bool {
        if self.is_closing() {
            return false;
        }
        let n = item.bytes().len();
        if self.queued_bytes.fetch_add(n, Ordering::Relaxed) + n > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.abort(close::TRY_AGAIN_LATER);
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                Metrics::inc(&self.metrics.frames_queued);
                true
            }
            Err(e) => {
                self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
                if e == queue::SendError::Full {
                    self.abort(close::TRY_AGAIN_LATER);
                }
                false
            }
        }
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// The writer took `n` bytes off the queue.
    #[inline]
    pub fn dequeued(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Abort: drop what is queued, send a close frame with `code` if the socket allows, disconnect.
    pub fn abort(&self, code: u16) {
        if !self.is_killed() {
            if !self.is_closing() {
                self.close_code.store(code, Ordering::Relaxed);
            }
            if code == close::TRY_AGAIN_LATER {
                Metrics::inc(&self.metrics.slow_consumers);
                tracing::warn!(conn = %self.id, "slow consumer: outbound queue full, disconnecting (1013)");
            }
            self.set(KILLED);
        }
    }

    /// The close code of this connection's close frame (queued or aborting).
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }

    /// [`Link::close`] with one of relay's named closes.
    pub fn close_as(&self, c: Close) {
        self.close(c.code, c.reason)
    }

    /// Queue a close frame after everything already queued; the session ends once the peer answers.
    pub fn close(&self, code: u16, reason: &str) {
        if self.is_closing() {
            return;
        }
        self.send_close(frame::close(code, reason), code);
    }

    /// Queue an already encoded close frame carrying `code`.
    pub fn send_close(&self, frame: Bytes, code: u16) {
        if self.is_closing() {
            return;
        }
        self.close_code.store(code, Ordering::Relaxed);
        self.set(CLOSING);
        self.queued_bytes.fetch_add(frame.len(), Ordering::Relaxed);
        if let Err(queue::SendError::Full) = self.tx.try_send(Outbound::Close(frame)) {
            self.abort(code);
        }
    }
}
