//! Connections of this node recovering a room's history in a cluster, and what arrives
//! for that room while they do.
//!
//! Recovering takes two Redis round trips (make sure the room's channel is subscribed,
//! then read the history after the client's position), and publications keep arriving
//! meanwhile. So each recovering connection has a waiter: every publication arriving on
//! the room's channel is copied into it, and delivered to the room's members, under one
//! lock. The history read publishes a barrier to this node's own channel; publications
//! reach a subscriber in the order Redis ran them, so once the barrier is back every
//! publication the read may have seen has been copied. The recovery then ends under the
//! lock: the connection joins the room, gets the history read, then the copies not
//! already in it (by offset), and only then can the next publication reach it through
//! the room. Nothing is lost or repeated in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::Publication;
use crate::cluster::sync::ClusterSync;

/// Publications kept for one recovering connection at most; beyond, it cannot recover.
pub const MAX_BUFFERED: usize = 10_000;

/// One recovering connection's copies.
struct Waiting {
    id: u64,
    got: Vec<Publication>,
    overflowed: bool,
}

/// Every recovering connection of this node, by tenant and room.
#[derive(Default)]
pub struct Recovering {
    /// Waiters now (read before taking the lock: zero almost always).
    count: AtomicUsize,
    next: AtomicU64,
    rooms: Mutex<HashMap<String, Vec<Waiting>>>,
    /// Barriers on their way back, by waiter id.
    barriers: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

/// The map key of a tenant's room.
fn key(tenant: &str, room: &str) -> String {
    format!("{tenant}\n{room}")
}

impl Recovering {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        // A poisoned lock: the map is still consistent (every change is one insert/remove).
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start copying what arrives for `room`, and keep its channel subscribed (`sync`)
    /// until the ticket is dropped.
    pub fn register(
        self: &Arc<Self>,
        sync: &Arc<ClusterSync>,
        tenant: Arc<str>,
        room: &str,
    ) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let k = key(&tenant, room);
        self.lock().entry(k.clone()).or_default().push(Waiting {
            id,
            got: Vec::new(),
            overflowed: false,
        });
        self.count.fetch_add(1, Ordering::AcqRel);
        sync.pin(&tenant, room);
        Ticket {
            recovering: self.clone(),
            sync: sync.clone(),
            tenant,
            room: room.to_owned(),
            key: k,
            id,
        }
    }

    /// Barrier `id` came back on this node's channel.
    pub fn passed(&self, id: u64) {
        let tx = self
            .barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }

    /// `p` arrived on `room`'s channel: copy it for the room's waiters, then `deliver`
    /// it, both under the lock when there are waiters.
    pub fn arrived(
        &self,
        tenant: &str,
        room: &str,
        p: Publication,
        deliver: impl FnOnce(Publication) -> usize,
    ) -> usize {
        if self.count.load(Ordering::Acquire) == 0 {
            return deliver(p);
        }
        let mut rooms = self.lock();
        let Some(waiting) = rooms.get_mut(&key(tenant, room)) else {
            drop(rooms);
            return deliver(p);
        };
        for w in waiting.iter_mut() {
            match w.got.len() < MAX_BUFFERED {
                true => w.got.push(p.clone()),
                false => w.overflowed = true,
            }
        }
        deliver(p)
    }

    /// Take `id`'s waiter out; `None` if it is gone already. The caller lowers `count`
    /// when done with it, still under the lock: until then, arrivals take the lock.
    fn take(rooms: &mut HashMap<String, Vec<Waiting>>, key: &str, id: u64) -> Option<Waiting> {
        let waiting = rooms.get_mut(key)?;
        let i = waiting.iter().position(|w| w.id == id)?;
        let w = waiting.swap_remove(i);
        if waiting.is_empty() {
            rooms.remove(key);
        }
        Some(w)
    }
}

/// A recovering connection's place in [`Recovering`]; dropping it (recovery done,
/// failed, or the connection gone mid-way) removes the waiter and the pin.
pub struct Ticket {
    recovering: Arc<Recovering>,
    sync: Arc<ClusterSync>,
    tenant: Arc<str>,
    room: String,
    key: String,
    id: u64,
}

impl Ticket {
    /// This waiter's id (its barrier's too).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves when barrier [`id`](Self::id) comes back.
    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.recovering
            .barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id, tx);
        rx
    }

    /// End the wait: `f` gets the copies (oldest first) and whether some were dropped,
    /// under the lock, so no publication reaches the room until `f` has returned.
    pub fn finish<R>(&self, f: impl FnOnce(Vec<Publication>, bool) -> R) -> R {
        let r = &self.recovering;
        let mut rooms = r.lock();
        let Some(w) = Recovering::take(&mut rooms, &self.key, self.id) else {
            return f(Vec::new(), true);
        };
        let out = f(w.got, w.overflowed);
        // Only now may arrivals skip the lock: the connection has had everything.
        r.count.fetch_sub(1, Ordering::AcqRel);
        out
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let r = &self.recovering;
        if Recovering::take(&mut r.lock(), &self.key, self.id).is_some() {
            r.count.fetch_sub(1, Ordering::AcqRel);
        }
        r.barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.sync.unpin(&self.tenant, &self.room);
    }
}
