//! One connection as the hub sees it: its id, its outbound queue and its state.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::queue;
use bytes::Bytes;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::protocol::{frame, Codec};

/// A connection id: 120 random bits as 20 URL-safe characters, unique and unguessable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u128);

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl ConnId {
    /// A fresh random id (from the OS-seeded thread RNG).
    pub fn random() -> Self {
        ConnId(rand::random::<u128>() >> 8)
    }

    /// Parse the 20-character form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 20 {
            return None;
        }
        let mut v: u128 = 0;
        for b in s.bytes() {
            let d = ALPHABET.iter().position(|&a| a == b)? as u128;
            v = (v << 6) | d;
        }
        Some(ConnId(v))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 20];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 6 * (19 - i);
            *slot = ALPHABET[((self.0 >> shift) & 63) as usize];
        }
        // ALPHABET is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

impl serde::Serialize for ConnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Called once everything queued before it has been written to the socket.
pub type WrittenFn = Box<dyn FnOnce() + Send>;

/// One item of a connection's outbound queue.
pub enum Outbound {
    /// A message as the link's transport expects it: complete WebSocket frames (ws-json) or
    /// Engine.IO packet records (Socket.IO, framed by the transport that writes them).
    Frame(Bytes),
    /// Complete WebSocket control frames (ping, pong), written as they are; a polling
    /// transport skips them.
    Control(Bytes),
    /// A close frame: written after everything queued before it; the writer stops after it.
    Close(Bytes),
    /// Run once everything queued before it is written (dropped unrun if the connection
    /// ends first).
    Written(WrittenFn),
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outbound::Frame(b) => write!(f, "Frame({} bytes)", b.len()),
            Outbound::Control(b) => write!(f, "Control({} bytes)", b.len()),
            Outbound::Close(b) => write!(f, "Close({} bytes)", b.len()),
            Outbound::Written(_) => f.write_str("Written"),
        }
    }
}

static NO_BYTES: Bytes = Bytes::new();

impl Outbound {
    /// The bytes carried.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Outbound::Frame(b) | Outbound::Control(b) | Outbound::Close(b) => b,
            Outbound::Written(_) => &NO_BYTES,
        }
    }
}

/// Mutable state of a connection (identity, rooms), guarded by a short-lived lock.
#[derive(Debug, Default)]
pub struct ConnState {
    /// The user this connection belongs to, once identified.
    pub user: Option<Arc<str>>,
    /// Policy data attached to the connection (session), handed back on every hook.
    pub data: Value,
    /// Rooms joined.
    pub rooms: HashSet<Arc<str>>,
    /// Set when the hub has forgotten the connection: it may not join rooms or users again.
    pub closed: bool,
    /// The room-history offset (`<epoch>:<n>`) the client presented at its handshake:
    /// rooms it joins replay what came after it.
    pub recover: Option<String>,
}

/// A one-way flag that tasks can wait for: what `CancellationToken` does for a link, held
/// inline (a token is a separate ~150-byte allocation, and a link has two).
#[derive(Default)]
pub struct Signal {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Signal {
    /// Set the flag and wake every waiter (once; later calls do nothing).
    pub fn cancel(&self) {
        if !self.set.swap(true, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Wait until the flag is set.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a `cancel` in between still wakes us.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The way to one client: a bounded outbound queue and the signals that end it. A
/// WebSocket connection has one link and one [`ConnHandle`]; a Socket.IO client has one
/// link shared by the handles of the namespaces it joined.
pub struct Link {
    /// Id used in log lines.
    pub id: ConnId,
    tx: queue::Sender<Outbound>,
    /// Cancelled to abort the connection now (slow consumer): the queue is dropped.
    pub kill: Signal,
    /// Cancelled once a close frame is queued: the session then waits for the peer's close.
    pub closing: Signal,
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
            kill: Signal::default(),
            closing: Signal::default(),
            close_code: AtomicU16::new(1013),
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

    #[inline]
    fn push(&self, item: Outbound) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        let n = item.bytes().len();
        if self.queued_bytes.fetch_add(n, Ordering::Relaxed) + n > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.abort(1013);
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
                    self.abort(1013);
                }
                false
            }
        }
    }

    /// The writer took `n` bytes off the queue.
    #[inline]
    pub fn dequeued(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Abort: drop what is queued, send a close frame with `code` if the socket allows, disconnect.
    pub fn abort(&self, code: u16) {
        if !self.kill.is_cancelled() {
            if !self.closing.is_cancelled() {
                self.close_code.store(code, Ordering::Relaxed);
            }
            if code == 1013 {
                Metrics::inc(&self.metrics.slow_consumers);
                tracing::warn!(conn = %self.id, "slow consumer: outbound queue full, disconnecting (1013)");
            }
            self.kill.cancel();
        }
    }

    /// The close code of this connection's close frame (queued or aborting).
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }

    /// Queue a close frame after everything already queued; the session ends once the peer answers.
    pub fn close(&self, code: u16, reason: &str) {
        if self.closing.is_cancelled() {
            return;
        }
        self.send_close(frame::close(code, reason), code);
    }

    /// Queue an already encoded close frame carrying `code`.
    pub fn send_close(&self, frame: Bytes, code: u16) {
        if self.closing.is_cancelled() {
            return;
        }
        self.close_code.store(code, Ordering::Relaxed);
        self.closing.cancel();
        self.queued_bytes.fetch_add(frame.len(), Ordering::Relaxed);
        if let Err(queue::SendError::Full) = self.tx.try_send(Outbound::Close(frame)) {
            self.abort(code);
        }
    }
}

/// The hub's handle on a connection (a Socket.IO namespace socket counts as one): everything
/// fan-out needs, nothing more. It dereferences to its [`Link`].
pub struct ConnHandle {
    /// Unique id.
    pub id: ConnId,
    /// Peer address.
    pub remote: SocketAddr,
    /// Encoder for this connection's wire profile (and Socket.IO namespace).
    pub codec: Arc<dyn Codec>,
    /// The way to the client.
    pub link: Arc<Link>,
    authenticated: AtomicBool,
    /// Identity and rooms.
    pub state: Mutex<ConnState>,
}

impl std::ops::Deref for ConnHandle {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.link
    }
}

impl fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("remote", &self.remote)
            .finish()
    }
}

impl ConnHandle {
    /// A handle with its own link, and the receiving end of the link's queue, bounded to
    /// `capacity` frames and `max_bytes` bytes.
    pub fn new(
        id: ConnId,
        remote: SocketAddr,
        codec: Arc<dyn Codec>,
        capacity: usize,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, queue::Receiver<Outbound>) {
        let (link, rx) = Link::new(id, capacity, max_bytes, metrics);
        (Self::attach(id, remote, codec, link), rx)
    }

    /// A handle on an existing link (another Socket.IO namespace of the same client).
    pub fn attach(
        id: ConnId,
        remote: SocketAddr,
        codec: Arc<dyn Codec>,
        link: Arc<Link>,
    ) -> Arc<Self> {
        Arc::new(ConnHandle {
            id,
            remote,
            codec,
            link,
            authenticated: AtomicBool::new(false),
            state: Mutex::new(ConnState::default()),
        })
    }

    /// Close the connection after what is queued, telling the client first when its profile
    /// has a way to (Socket.IO DISCONNECT). A Socket.IO client's whole connection closes.
    pub fn close(&self, code: u16, reason: &str) {
        if self.closing.is_cancelled() {
            return;
        }
        if let Some(p) = self.codec.disconnect_packet() {
            self.link.send(p);
        }
        self.link.close(code, reason);
    }

    /// Whether the policy has identified this connection (or accepted it at handshake).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Mark the connection authenticated (stops the authentication deadline).
    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// The user id, if identified.
    pub fn user(&self) -> Option<Arc<str>> {
        self.state.lock().ok().and_then(|s| s.user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_signal_wakes_waiters_set_before_or_after_they_wait() {
        let s = Arc::new(Signal::default());
        assert!(!s.is_cancelled());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.cancelled().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.cancel();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(1), w)
                .await
                .expect("woken")
                .unwrap();
        }
        // Already set: returns at once; setting again changes nothing.
        s.cancel();
        tokio::time::timeout(Duration::from_millis(100), s.cancelled())
            .await
            .expect("already set");
        assert!(s.is_cancelled());
    }
}
