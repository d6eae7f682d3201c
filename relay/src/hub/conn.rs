//! One connection as the hub sees it: its id, its outbound queue and its state.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use super::queue;
use bytes::Bytes;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::protocol::close::{self, Close};
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

impl<'de> serde::Deserialize<'de> for ConnId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ConnId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a connection id"))
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

/// The rooms of one connection: a sorted `Vec`, not a hash set. Most connections are in
/// one or a few rooms, and an empty or one-room hash set costs a ~100-byte table per
/// connection where this costs 16 bytes a room (idle memory per connection is a goal;
/// see docs/BENCHMARKS.md); lookups stay logarithmic up to `max_rooms_per_connection`.
#[derive(Debug, Default)]
pub struct RoomSet(Vec<Arc<str>>);

impl RoomSet {
    /// Whether `room` is in the set.
    pub fn contains(&self, room: &str) -> bool {
        self.0.binary_search_by(|r| (**r).cmp(room)).is_ok()
    }

    /// Add `room`; `false` if it was there already.
    pub fn insert(&mut self, room: Arc<str>) -> bool {
        match self.0.binary_search_by(|r| (**r).cmp(&room)) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, room);
                true
            }
        }
    }

    /// Remove `room`; `false` if it was not there.
    pub fn remove(&mut self, room: &str) -> bool {
        match self.0.binary_search_by(|r| (**r).cmp(room)) {
            Ok(i) => {
                self.0.remove(i);
                if self.0.capacity() > 4 * self.0.len().max(1) {
                    self.0.shrink_to_fit();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Rooms in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rooms, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }
}

impl IntoIterator for RoomSet {
    type Item = Arc<str>;
    type IntoIter = std::vec::IntoIter<Arc<str>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
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
    pub rooms: RoomSet,
    /// Set when the hub has forgotten the connection: it may not join rooms or users again.
    pub closed: bool,
    /// The room-history offset (`<epoch>:<n>`) the client presented at its handshake:
    /// rooms it joins replay what came after it.
    pub recover: Option<String>,
}

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

/// The hub's handle on a connection (a Socket.IO namespace socket counts as one): everything
/// fan-out needs, nothing more. Its [`Link`] is the way to the client, shared by the
/// namespaces of one Socket.IO client.
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

    /// Queue pre-encoded bytes for this connection (see [`Link::send`]).
    #[inline]
    pub fn send(&self, bytes: Bytes) -> bool {
        self.link.send(bytes)
    }

    /// Run `f` once everything queued so far is written (see [`Link::when_written`]).
    pub fn when_written(&self, f: WrittenFn) -> bool {
        self.link.when_written(f)
    }

    /// Disconnect on the server's initiative: tell the client in its profile's terms first
    /// (Socket.IO: the namespace's DISCONNECT, so it does not reconnect), then close the
    /// link after what is queued ([`Link::close`]). A Socket.IO client's whole connection
    /// closes.
    pub fn disconnect(&self, code: u16, reason: &str) {
        if self.link.is_closing() {
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
    use super::{ConnId, Link, RoomSet, Watcher};

    #[test]
    fn a_room_set_is_a_set() {
        let mut s = RoomSet::default();
        for r in ["b", "a", "c", "a"] {
            s.insert(r.into());
        }
        assert_eq!(s.len(), 3);
        assert!(s.contains("a") && s.contains("c") && !s.contains("d"));
        assert!(!s.insert("b".into()), "already there");
        assert!(s.remove("b") && !s.remove("b"));
        let v: Vec<String> = s.iter().map(|r| r.to_string()).collect();
        assert_eq!(v, ["a", "c"]);
        assert!(!s.is_empty());
    }

    use crate::metrics::Metrics;
    use std::sync::Arc;
    use std::time::Duration;

    fn link() -> Arc<Link> {
        Link::new(ConnId::random(), 8, 1 << 20, Arc::new(Metrics::default())).0
    }

    #[tokio::test]
    async fn watchers_wake_on_kill_and_the_reader_on_closing() {
        let l = link();
        // The reader: woken when the link starts closing.
        let reader = {
            let l = l.clone();
            tokio::spawn(async move {
                std::future::poll_fn(|cx| match l.watch(Watcher::Reader, cx) {
                    (_, true) => std::task::Poll::Ready(()),
                    _ => std::task::Poll::Pending,
                })
                .await
            })
        };
        // The writer and another task: woken by the kill only.
        let writer = {
            let l = l.clone();
            tokio::spawn(async move {
                std::future::poll_fn(|cx| match l.watch(Watcher::Writer, cx) {
                    (true, _) => std::task::Poll::Ready(()),
                    _ => std::task::Poll::Pending,
                })
                .await
            })
        };
        let other = {
            let l = l.clone();
            tokio::spawn(async move { l.killed().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.close(1000, "bye");
        tokio::time::timeout(Duration::from_secs(1), reader)
            .await
            .expect("reader woken by closing")
            .unwrap();
        assert!(l.is_closing() && !l.is_killed());
        assert!(!writer.is_finished() && !other.is_finished());
        l.abort(1011);
        for t in [writer, other] {
            tokio::time::timeout(Duration::from_secs(1), t)
                .await
                .expect("woken by the kill")
                .unwrap();
        }
        // Already killed: returns at once.
        tokio::time::timeout(Duration::from_millis(100), l.killed())
            .await
            .expect("already killed");
        assert_eq!(l.close_code(), 1000, "the close frame's code stays");
    }
}
