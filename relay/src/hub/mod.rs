//! The hub of one tenant: its connections, rooms and users, and fan-out.
//!
//! Every registry is a sharded concurrent map (`DashMap`), so fan-out to one
//! room takes one shard's read lock and never a global one. Delivery clones a
//! `Bytes` (a reference count) into each recipient's queue: the message is
//! encoded once per wire format and never copied per recipient.

mod conn;
mod link;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

pub use conn::{ConnHandle, ConnId, ConnState, Link, Outbound, RoomSet, Watcher, WrittenFn};

use crate::protocol::OutMessage;

type Members = HashMap<ConnId, Arc<ConnHandle>>;

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One connection, by id.
    Connection(String),
    /// Every connection of a user (all devices).
    User(String),
    /// Every member of any of these rooms (each connection once).
    Rooms(Vec<String>),
    /// Every connection of the tenant.
    Tenant,
}

/// One member of a room, for presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Connection id.
    pub conn: String,
    /// User id, if identified.
    pub user: Option<String>,
}

/// Presence queries a policy (and the node, for offline messages) can make.
///
/// Synchronous: hooks are synchronous calls into wasm. On one node the [`Hub`] answers
/// from memory; in a cluster (`cluster::presence`) an answer is a Redis round trip made
/// with the worker thread handed over to the runtime's other tasks meanwhile.
pub trait Presence: Send + Sync {
    /// Connections in a room.
    fn room_count(&self, room: &str) -> usize;
    /// Members of a room.
    fn room_members(&self, room: &str) -> Vec<Member>;
    /// Connection ids of a user.
    fn user_connections(&self, user: &str) -> Vec<String>;
    /// Connections of the tenant.
    fn connection_count(&self) -> usize;
    /// Whether a connection id is open.
    fn connection_exists(&self, conn: &str) -> bool;
}

/// Which of a hub's sets changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A room's members (joined or left).
    Room(&'a str),
    /// A user's connections.
    User(&'a str),
    /// A connection registered or unregistered.
    Connection(ConnId),
}

/// Told of every change of a hub's rooms, users and connections, after it is made; it
/// reads the hub's current state when it needs it (so changes may be coalesced).
/// Called under no lock of the hub's, and must not block.
pub trait HubObserver: Send + Sync + 'static {
    /// Something changed.
    fn changed(&self, change: Change<'_>);
}

/// Longest room or user name accepted, in bytes.
pub const MAX_NAME: usize = 256;

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The room name is empty or longer than [`MAX_NAME`].
    BadName,
    /// The connection is in `max_rooms` rooms already.
    TooManyRooms,
    /// The connection is gone.
    Closed,
}

/// Connections, rooms and users of one tenant.
#[derive(Debug)]
pub struct Hub {
    conns: DashMap<ConnId, Arc<ConnHandle>>,
    rooms: DashMap<Arc<str>, Members>,
    users: DashMap<Arc<str>, Members>,
    max_rooms: usize,
    /// In a cluster, who keeps subscriptions and presence in step with this hub.
    observer: std::sync::OnceLock<Arc<dyn HubObserver>>,
}

impl std::fmt::Debug for dyn HubObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubObserver")
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(1000)
    }
}

impl Hub {
    /// An empty hub allowing each connection in at most `max_rooms` rooms.
    pub fn new(max_rooms: usize) -> Self {
        Hub {
            conns: DashMap::new(),
            rooms: DashMap::new(),
            users: DashMap::new(),
            max_rooms,
            observer: Default::default(),
        }
    }

    /// Have `o` told of every change from now on (once; a second call is ignored).
    pub fn observe(&self, o: Arc<dyn HubObserver>) {
        let _ = self.observer.set(o);
    }

    fn changed(&self, c: Change<'_>) {
        if let Some(o) = self.observer.get() {
            o.changed(c);
        }
    }

    /// Add a connection.
    pub fn register(&self, h: Arc<ConnHandle>) {
        let id = h.id;
        self.conns.insert(id, h);
        self.changed(Change::Connection(id));
    }

    /// Remove a connection from every room and its user; returns the rooms it was in.
    pub fn unregister(&self, h: &ConnHandle) -> Vec<Arc<str>> {
        self.conns.remove(&h.id);
        let (user, rooms) = match h.state.lock() {
            Ok(mut s) => {
                s.closed = true;
                (s.user.take(), std::mem::take(&mut s.rooms))
            }
            Err(_) => (None, Default::default()),
        };
        if let Some(u) = user {
            remove_member(&self.users, &u, h.id);
            self.changed(Change::User(&u));
        }
        let rooms: Vec<Arc<str>> = rooms.into_iter().collect();
        for r in &rooms {
            remove_member(&self.rooms, r, h.id);
            self.changed(Change::Room(r));
        }
        self.changed(Change::Connection(h.id));
        rooms
    }

    /// Look a connection up by id.
    pub fn connection(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        self.conns.get(&id).map(|e| e.value().clone())
    }

    /// Put a connection in a room (no-op if already there).
    pub fn join(&self, h: &Arc<ConnHandle>, room: &str) -> Result<(), JoinError> {
        if room.is_empty() || room.len() > MAX_NAME {
            return Err(JoinError::BadName);
        }
        let Ok(mut s) = h.state.lock() else {
            return Err(JoinError::Closed);
        };
        if s.closed {
            return Err(JoinError::Closed);
        }
        if s.rooms.contains(room) {
            return Ok(());
        }
        if s.rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let room: Arc<str> = Arc::from(room);
        s.rooms.insert(room.clone());
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(h.id, h.clone());
        drop(s);
        self.changed(Change::Room(&room));
        Ok(())
    }

    /// Take a connection out of a room.
    pub fn leave(&self, h: &ConnHandle, room: &str) {
        let Ok(mut s) = h.state.lock() else { return };
        if s.rooms.remove(room) {
            remove_member(&self.rooms, room, h.id);
            drop(s);
            self.changed(Change::Room(room));
        }
    }

    /// Bind a connection to a user (or unbind with `None`), replacing any earlier user.
    pub fn set_user(&self, h: &Arc<ConnHandle>, user: Option<&str>) {
        let Ok(mut s) = h.state.lock() else { return };
        if s.closed || s.user.as_deref() == user || user.is_some_and(|u| u.len() > MAX_NAME) {
            return;
        }
        let old = s.user.take();
        if let Some(old) = &old {
            remove_member(&self.users, old, h.id);
        }
        if let Some(u) = user {
            let u: Arc<str> = Arc::from(u);
            s.user = Some(u.clone());
            self.users.entry(u).or_default().insert(h.id, h.clone());
        }
        drop(s);
        if let Some(old) = &old {
            self.changed(Change::User(old));
        }
        if let Some(u) = user {
            self.changed(Change::User(u));
        }
    }

    /// Queue `msg` on every connection `target` names, except `exclude`; returns how many got it.
    pub fn deliver(&self, target: &Target, msg: &OutMessage, exclude: Option<ConnId>) -> usize {
        let send = |h: &Arc<ConnHandle>| -> usize {
            if Some(h.id) == exclude {
                return 0;
            }
            h.send(msg.encoded(&*h.codec)) as usize
        };
        match target {
            Target::Connection(id) => ConnId::parse(id)
                .and_then(|id| self.connection(id))
                .map_or(0, |h| send(&h)),
            Target::User(u) => self
                .users
                .get(u.as_str())
                .map_or(0, |m| m.values().map(send).sum()),
            Target::Rooms(rooms) if rooms.len() == 1 => self
                .rooms
                .get(rooms[0].as_str())
                .map_or(0, |m| m.values().map(send).sum()),
            Target::Rooms(rooms) => {
                let mut seen = HashSet::new();
                let mut n = 0;
                for r in rooms {
                    if let Some(m) = self.rooms.get(r.as_str()) {
                        for h in m.values() {
                            if seen.insert(h.id) {
                                n += send(h);
                            }
                        }
                    }
                }
                n
            }
            Target::Tenant => self.conns.iter().map(|e| send(e.value())).sum(),
        }
    }

    /// Deliver a copy of a publication to `rooms` that came for `rooms[part]` only (in a
    /// cluster each room's channel carries its own copy): its members, except those also
    /// in an earlier room of the list, who get the copy of that room. Each connection
    /// gets the message once, as [`Hub::deliver`] gives it.
    pub fn deliver_part(
        &self,
        rooms: &[String],
        part: usize,
        msg: &OutMessage,
        exclude: Option<ConnId>,
    ) -> usize {
        let Some(room) = rooms.get(part) else {
            return 0;
        };
        let Some(m) = self.rooms.get(room.as_str()) else {
            return 0;
        };
        let handles: Vec<Arc<ConnHandle>> = m.values().cloned().collect();
        drop(m);
        let earlier = &rooms[..part];
        let mut n = 0;
        for h in handles {
            if Some(h.id) == exclude {
                continue;
            }
            let in_earlier = earlier.iter().any(|r| {
                self.rooms
                    .get(r.as_str())
                    .is_some_and(|m| m.contains_key(&h.id))
            });
            if !in_earlier {
                n += h.send(msg.encoded(&*h.codec)) as usize;
            }
        }
        n
    }

    /// The names of every room with members here.
    pub fn room_names(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|e| e.key().clone()).collect()
    }

    /// The names of every user with connections here.
    pub fn user_names(&self) -> Vec<Arc<str>> {
        self.users.iter().map(|e| e.key().clone()).collect()
    }

    /// Every connection id here.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.iter().map(|e| *e.key()).collect()
    }

    /// Every connection (used by shutdown).
    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.conns.iter().map(|e| e.value().clone()).collect()
    }
}

impl Presence for Hub {
    fn room_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |m| m.len())
    }

    fn room_members(&self, room: &str) -> Vec<Member> {
        // Copy the handles out first: a connection's state lock is never taken under a shard lock
        // (join and set_user take them in the other order).
        let handles: Vec<Arc<ConnHandle>> = self
            .rooms
            .get(room)
            .map_or_else(Vec::new, |m| m.values().cloned().collect());
        handles
            .iter()
            .map(|h| Member {
                conn: h.id.to_string(),
                user: h.user().map(|u| u.to_string()),
            })
            .collect()
    }

    fn user_connections(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map_or_else(Vec::new, |m| m.keys().map(|id| id.to_string()).collect())
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn connection_exists(&self, conn: &str) -> bool {
        ConnId::parse(conn).is_some_and(|id| self.conns.contains_key(&id))
    }
}

fn remove_member(map: &DashMap<Arc<str>, Members>, key: &str, id: ConnId) {
    if let Some(mut m) = map.get_mut(key) {
        m.remove(&id);
    }
    map.remove_if(key, |_, m| m.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::protocol::{json::WsJson, Message};
    use serde_json::json;

    fn conn(hub: &Hub) -> (Arc<ConnHandle>, super::queue::Receiver<Outbound>) {
        let codec = Arc::new(WsJson {
            event_field: "event".into(),
            offset_field: "offset".into(),
        });
        let (h, rx) = ConnHandle::new(
            ConnId::random(),
            "127.0.0.1:1".parse().unwrap(),
            codec,
            4,
            1 << 20,
            Arc::new(Metrics::default()),
        );
        hub.register(h.clone());
        (h, rx)
    }

    #[test]
    fn conn_id_round_trips() {
        let id = ConnId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 20);
        assert_eq!(ConnId::parse(&s), Some(id));
        assert_eq!(ConnId::parse("short"), None);
        assert_ne!(ConnId::random(), ConnId::random());
    }

    #[test]
    fn rooms_users_exclusion() {
        let hub = Hub::default();
        let (a, _ra) = conn(&hub);
        let (b, _rb) = conn(&hub);
        let (c, _rc) = conn(&hub);
        for (h, r) in [(&a, "r"), (&b, "r"), (&b, "s"), (&c, "s")] {
            hub.join(h, r).unwrap();
        }
        hub.set_user(&a, Some("u"));
        hub.set_user(&c, Some("u"));
        let m = OutMessage::new(Message::data(json!({"x": 1})));
        assert_eq!(hub.deliver(&Target::Rooms(vec!["r".into()]), &m, None), 2);
        assert_eq!(
            hub.deliver(&Target::Rooms(vec!["r".into(), "s".into()]), &m, None),
            3
        );
        assert_eq!(
            hub.deliver(&Target::Rooms(vec!["r".into()]), &m, Some(a.id)),
            1
        );
        assert_eq!(hub.deliver(&Target::User("u".into()), &m, None), 2);
        assert_eq!(
            hub.deliver(&Target::Connection(b.id.to_string()), &m, None),
            1
        );
        assert_eq!(hub.room_count("s"), 2);
        hub.unregister(&b);
        assert_eq!(hub.room_count("s"), 1);
        hub.leave(&c, "s");
        assert_eq!(hub.room_count("s"), 0);
        assert!(hub.rooms.get("s").is_none(), "empty rooms are removed");
    }

    #[test]
    fn full_queue_aborts_with_1013() {
        let hub = Hub::default();
        let (a, _ra) = conn(&hub);
        let m = OutMessage::new(Message::data(json!(1)));
        for _ in 0..4 {
            assert_eq!(hub.deliver(&Target::Tenant, &m, None), 1);
        }
        assert_eq!(hub.deliver(&Target::Tenant, &m, None), 0);
        assert!(a.link.is_killed());
        assert_eq!(a.link.close_code(), 1013);
    }

    #[test]
    fn unregistered_connections_cannot_rejoin() {
        let hub = Hub::default();
        let (a, _ra) = conn(&hub);
        let found = hub.connection(a.id).unwrap();
        hub.unregister(&a);
        assert_eq!(hub.join(&found, "r"), Err(JoinError::Closed));
        hub.set_user(&found, Some("u"));
        assert_eq!(hub.room_count("r"), 0);
        assert!(hub.user_connections("u").is_empty());
    }

    #[test]
    fn room_limits() {
        let hub = Hub::new(2);
        let (a, _ra) = conn(&hub);
        assert_eq!(hub.join(&a, ""), Err(JoinError::BadName));
        assert_eq!(
            hub.join(&a, &"x".repeat(MAX_NAME + 1)),
            Err(JoinError::BadName)
        );
        hub.join(&a, "1").unwrap();
        hub.join(&a, "2").unwrap();
        hub.join(&a, "2").unwrap();
        assert_eq!(hub.join(&a, "3"), Err(JoinError::TooManyRooms));
    }

    #[test]
    fn queue_is_bounded_in_bytes_too() {
        let hub = Hub::default();
        let codec = Arc::new(WsJson {
            event_field: "event".into(),
            offset_field: "offset".into(),
        });
        let (h, _rx) = ConnHandle::new(
            ConnId::random(),
            "127.0.0.1:1".parse().unwrap(),
            codec,
            1000,
            100,
            Arc::new(Metrics::default()),
        );
        hub.register(h.clone());
        assert!(h.send(bytes::Bytes::from(vec![0u8; 60])));
        assert!(!h.send(bytes::Bytes::from(vec![0u8; 60])));
        assert!(h.link.is_killed());
    }
}
