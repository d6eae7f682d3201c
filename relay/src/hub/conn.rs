//! One connection as the hub sees it: its id, its state, and its [`Link`] to the client.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::queue;
use bytes::Bytes;
use serde_json::Value;

pub use super::link::{Link, Watcher};
use crate::metrics::Metrics;
use crate::protocol::Codec;
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
