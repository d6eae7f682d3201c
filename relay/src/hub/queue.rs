//! A connection's outbound queue: bounded, one consumer (the writer), many producers
//! (fan-out from any thread).
//!
//! tokio's mpsc channel allocates a 32-slot block and its shared state up front,
//! about 1.7 KB per connection, even for a client that never receives anything.
//! Idle connections are most of a push server's connections, so this queue is a
//! `VecDeque` behind a mutex that allocates only when something is queued and gives
//! its memory back once the writer has drained it. The critical sections are a push
//! or a drain; fan-out holds the lock for nanoseconds.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// Capacity kept by a drained queue: enough for a small burst without reallocating.
const KEEP: usize = 8;

struct State<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    /// The sender is gone: the receiver sees the end once the queue is empty.
    sender_gone: bool,
    /// The receiver is gone: sends fail.
    receiver_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a send failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds `capacity` items.
    Full,
    /// The receiver is gone.
    Closed,
}

/// The producing end (one per connection; it is not cloned: the `Link` is shared instead).
pub struct Sender<T>(Arc<Shared<T>>);

/// The consuming end (the writer, or the Engine.IO polling transport).
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queue `item` without waiting.
    pub fn try_send(&self, item: T) -> Result<(), SendError> {
        let waker = {
            let mut s = self.0.lock();
            if s.receiver_gone {
                return Err(SendError::Closed);
            }
            if s.items.len() >= self.0.capacity {
                return Err(SendError::Full);
            }
            s.items.push_back(item);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Wake the receiver if it is waiting (something besides an item changed).
    pub fn wake_receiver(&self) {
        let waker = self.0.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.lock();
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Wait for items and move up to `limit` of them into `buf`; 0 means the sender is
    /// gone and nothing is left.
    pub async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        poll_fn(|cx| self.poll_recv_many(cx, buf, limit)).await
    }

    /// [`Receiver::recv_many`] as a poll: `Pending` registers the task to be woken by the
    /// next send (or [`Sender::wake_receiver`]).
    pub fn poll_recv_many(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<T>,
        limit: usize,
    ) -> Poll<usize> {
        {
            let mut s = self.0.lock();
            if s.items.is_empty() {
                if s.sender_gone {
                    return Poll::Ready(0);
                }
                // About to wait: nothing to do, so give back what a burst grew.
                if s.items.capacity() > KEEP {
                    s.items.shrink_to(KEEP);
                }
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            let n = s.items.len().min(limit.max(1));
            buf.extend(s.items.drain(..n));
            Poll::Ready(n)
        }
    }

    /// Take one item if there is one.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.lock().items.pop_front()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receiver_gone = true;
        s.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_ordered_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = channel(3);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(tx.try_send(4), Err(SendError::Full));
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 2).await, 2);
        assert_eq!(buf, [1, 2]);
        assert_eq!(rx.try_recv(), Some(3));
        assert!(rx.is_empty());

        // A waiting receiver is woken by a send from another task.
        let waiting = tokio::spawn(async move {
            let mut buf = Vec::new();
            let n = rx.recv_many(&mut buf, 10).await;
            (rx, n, buf)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tx.try_send(5), Ok(()));
        let (mut rx, n, buf) = waiting.await.unwrap();
        assert_eq!((n, buf), (1, vec![5]));

        assert_eq!(tx.try_send(6), Ok(()));
        drop(tx);
        let mut buf = Vec::new();
        assert_eq!(
            rx.recv_many(&mut buf, 10).await,
            1,
            "queued items survive the sender"
        );
        assert_eq!(rx.recv_many(&mut buf, 10).await, 0, "then the end");
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone() {
        let (tx, rx) = channel::<u8>(3);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel(10_000);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 5000).await, 1000);
        // The next wait finds it empty and shrinks it.
        let mut buf = Vec::new();
        let wait = tokio::time::timeout(Duration::from_millis(10), rx.recv_many(&mut buf, 1));
        assert!(wait.await.is_err());
        assert!(rx.0.lock().items.capacity() <= KEEP * 2);
        drop(tx);
    }
}
