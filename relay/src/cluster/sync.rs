//! Keeping Redis in step with this node's hubs, one task per node.
//!
//! Hubs report what changed ([`HubObserver`]); the task writes the *current* state of
//! each changed room, user and connection, so a burst of joins to one room is one write,
//! and a write that failed is simply made again (state, not deltas: nothing to replay).
//! For each room and user it also keeps the pub/sub subscription: subscribed while this
//! node has members, so a publication reaches only nodes with recipients.
//!
//! Presence entries (prefix `P`, tenant `T`, this node's incarnation `N`):
//! - `P:t:T:room:<room>` hash, field `N`: `<count> <json [[conn, user|null], ...]>`
//! - `P:t:T:rc:<room>` hash, field `N`: the count alone (counting a big room must not
//!   fetch its member lists)
//! - `P:t:T:user:<user>` hash, field `N`: `<count> <json [conn, ...]>`
//! - `P:t:T:nc:N` hash: this node's connections (field: connection id)
//! - `P:node:N:keys` set: every key above holding an entry of `N` (`h|key`: a field of
//!   `N` in a shared hash; `d|key`: a key of `N`'s own), for reaping.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::subscriber::Subscriber;
use super::{ChannelKind, Cluster, ClusterError};
use crate::hub::{Change, ConnId, Hub, HubObserver, Presence};

/// What changed since the last write.
#[derive(Default)]
struct Dirty {
    sets: HashSet<(Arc<str>, ChannelKind, Arc<str>)>,
    conns: HashSet<(Arc<str>, ConnId)>,
    /// Changes marked so far (a write covers every change marked before it started).
    marked: u64,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.conns.is_empty()
    }
}

/// A tenant's room.
type TenantRoom = (Arc<str>, Arc<str>);

/// The node's writer of presence and subscriptions.
pub struct ClusterSync {
    cluster: Arc<Cluster>,
    /// The hubs attached so far (all of them before the task starts).
    hubs: std::sync::RwLock<HashMap<Arc<str>, Arc<Hub>>>,
    subscriber: Arc<Subscriber>,
    // A std mutex: held for set inserts only, never across an await.
    dirty: Mutex<Dirty>,
    wake: Notify,
    flushed: watch::Sender<u64>,
    /// Channels subscribed now (the task's own; a mutex for the gauge readers).
    subscribed: Mutex<HashSet<String>>,
    /// Rooms kept subscribed without a member here yet (connections recovering their
    /// history), with how many hold each.
    pinned: Mutex<HashMap<TenantRoom, usize>>,
}

/// A tenant hub's observer: marks what changed.
struct Observer {
    tenant: Arc<str>,
    sync: Arc<ClusterSync>,
}

impl HubObserver for Observer {
    fn changed(&self, change: Change<'_>) {
        self.sync.mark(&self.tenant, change);
    }
}

/// `<count> <json>`: a presence entry's value.
fn entry<T: serde::Serialize>(items: &[T]) -> String {
    let json = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
    format!("{} {json}", items.len())
}

impl ClusterSync {
    /// A writer with no hubs yet ([`ClusterSync::attach`] adds them).
    pub fn new(cluster: Arc<Cluster>, subscriber: Arc<Subscriber>) -> Arc<Self> {
        Arc::new(ClusterSync {
            cluster,
            hubs: Default::default(),
            subscriber,
            dirty: Default::default(),
            wake: Notify::new(),
            flushed: watch::channel(0).0,
            subscribed: Default::default(),
            pinned: Default::default(),
        })
    }

    /// Mark `change` of `tenant`'s hub for the next write.
    fn mark(&self, tenant: &Arc<str>, change: Change<'_>) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let t = tenant.clone();
        match change {
            Change::Room(r) => d.sets.insert((t, ChannelKind::Room, Arc::from(r))),
            Change::User(u) => d.sets.insert((t, ChannelKind::User, Arc::from(u))),
            Change::Connection(id) => d.conns.insert((t, id)),
        };
        d.marked += 1;
        drop(d);
        self.wake.notify_one();
    }

    /// Keep `room`'s channel subscribed, members here or not, until as many
    /// [`unpin`](Self::unpin)s: a connection recovering the room's history must receive
    /// its publications before it joins. [`settle`](Self::settle) waits for it.
    pub fn pin(&self, tenant: &Arc<str>, room: &str) {
        {
            let mut p = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
            *p.entry((tenant.clone(), Arc::from(room))).or_default() += 1;
        }
        self.mark(tenant, Change::Room(room));
    }

    /// Undo one [`pin`](Self::pin).
    pub fn unpin(&self, tenant: &Arc<str>, room: &str) {
        {
            let mut p = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
            let key = (tenant.clone(), Arc::from(room));
            if let Some(n) = p.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    p.remove(&key);
                }
            }
        }
        self.mark(tenant, Change::Room(room));
    }

    /// Keep `tenant`'s hub in Redis: it reports its changes here from now on.
    pub fn attach(self: &Arc<Self>, tenant: Arc<str>, hub: Arc<Hub>) {
        hub.observe(Arc::new(Observer {
            tenant: tenant.clone(),
            sync: self.clone(),
        }));
        if let Ok(mut h) = self.hubs.write() {
            h.insert(tenant, hub);
        }
    }

    /// The hubs attached (a copy: held across no await).
    fn hubs(&self) -> HashMap<Arc<str>, Arc<Hub>> {
        self.hubs.read().map(|h| h.clone()).unwrap_or_default()
    }

    /// The cluster this node is part of.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Mark everything this node holds as changed (Redis lost it, or came back).
    pub fn resync(&self) {
        let hubs = self.hubs();
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        for (t, hub) in &hubs {
            for r in hub.room_names() {
                d.sets.insert((t.clone(), ChannelKind::Room, r));
            }
            for u in hub.user_names() {
                d.sets.insert((t.clone(), ChannelKind::User, u));
            }
            for id in hub.connection_ids() {
                d.conns.insert((t.clone(), id));
            }
        }
        d.marked += 1;
        drop(d);
        self.wake.notify_one();
        tracing::info!(node = %self.cluster.node, "writing this node's presence to redis again");
    }

    /// Wait (at most the command timeout) until every change made before this call is in
    /// Redis: its presence entries written, its subscriptions made. `false` on timeout.
    pub async fn settle(&self) -> bool {
        let target = {
            let d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            d.marked
        };
        let mut rx = self.flushed.subscribe();
        tokio::time::timeout(self.cluster.timeout, rx.wait_for(|f| *f >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Ping the pub/sub link (reconnects it if lost).
    pub async fn ping_subscriber(&self) {
        let _ = self.subscriber.ping().await;
    }

    /// Write changes as they come until `stop`; a failed write is retried with backoff.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tenants: Vec<String> = self
            .hubs()
            .keys()
            .map(|t| self.cluster.channel(t, None))
            .collect();
        tenants.push(self.cluster.node_channel());
        let mut backoff = Duration::from_millis(50);
        let mut tenant_channels = false;
        loop {
            if !tenant_channels {
                tenant_channels = self.subscriber.subscribe(&tenants).await.is_ok();
            }
            let batch = {
                let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                let marked = d.marked;
                let b = std::mem::take(&mut *d);
                d.marked = marked;
                b
            };
            let result = match (batch.is_empty(), tenant_channels) {
                (_, false) => Err(None),
                (true, true) => Ok(()),
                (false, true) => self.write(&batch).await.map_err(Some),
            };
            match result {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    self.flushed.send_replace(batch.marked);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    if let Some(e) = e {
                        tracing::warn!(node = %self.cluster.node, error = %e, "writing presence to redis failed; retrying");
                    }
                    self.requeue(batch);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn requeue(&self, batch: Dirty) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        d.sets.extend(batch.sets);
        d.conns.extend(batch.conns);
    }

    /// One write of the current state of everything in `batch`.
    async fn write(&self, batch: &Dirty) -> Result<(), ClusterError> {
        let c = &self.cluster;
        let node = c.node.as_str();
        let keys = c.node_keys(node);
        let mut pipe = redis::pipe();
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let subscribed = self
            .subscribed
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let hubs = self.hubs();
        let pinned: HashSet<TenantRoom> = self
            .pinned
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for (t, kind, name) in &batch.sets {
            let pin = *kind == ChannelKind::Room && pinned.contains(&(t.clone(), name.clone()));
            let Some(hub) = hubs.get(t) else { continue };
            let (key, value) = match kind {
                ChannelKind::Room => {
                    let m: Vec<(String, Option<String>)> = hub
                        .room_members(name)
                        .into_iter()
                        .map(|m| (m.conn, m.user))
                        .collect();
                    (
                        c.key(t, &format!("room:{name}")),
                        (!m.is_empty()).then(|| entry(&m)),
                    )
                }
                ChannelKind::User => {
                    let m = hub.user_connections(name);
                    (
                        c.key(t, &format!("user:{name}")),
                        (!m.is_empty()).then(|| entry(&m)),
                    )
                }
            };
            let channel = c.channel(t, Some((*kind, name)));
            if *kind == ChannelKind::Room {
                let rc = c.key(t, &format!("rc:{name}"));
                match value.as_deref().and_then(|v| v.split_once(' ')) {
                    Some((n, _)) => {
                        pipe.hset(&rc, node, n).ignore();
                        pipe.sadd(&keys, format!("h|{rc}")).ignore();
                    }
                    None => {
                        pipe.hdel(&rc, node).ignore();
                        pipe.srem(&keys, format!("h|{rc}")).ignore();
                    }
                }
            }
            let wanted = value.is_some() || pin;
            match value {
                Some(v) => {
                    pipe.hset(&key, node, v).ignore();
                    pipe.sadd(&keys, format!("h|{key}")).ignore();
                }
                None => {
                    pipe.hdel(&key, node).ignore();
                    pipe.srem(&keys, format!("h|{key}")).ignore();
                }
            }
            match (wanted, subscribed.contains(&channel)) {
                (true, false) => subscribe.push(channel),
                (false, true) => unsubscribe.push(channel),
                _ => {}
            }
        }
        for (t, id) in &batch.conns {
            let Some(hub) = hubs.get(t) else { continue };
            let key = c.key(t, &format!("nc:{node}"));
            match hub.connection(*id) {
                Some(_) => {
                    pipe.hset(&key, id.to_string(), 1).ignore();
                    pipe.sadd(&keys, format!("d|{key}")).ignore();
                }
                None => {
                    pipe.hdel(&key, id.to_string()).ignore();
                }
            }
        }
        let mut conn = c.conn.clone();
        c.call(pipe.query_async::<()>(&mut conn)).await?;
        self.subscriber.subscribe(&subscribe).await?;
        self.subscriber.unsubscribe(&unsubscribe).await?;
        if let Ok(mut s) = self.subscribed.lock() {
            s.extend(subscribe);
            for ch in &unsubscribe {
                s.remove(ch);
            }
            c.metrics.subscriptions.store(s.len() as u64, Relaxed);
        }
        Ok(())
    }
}
