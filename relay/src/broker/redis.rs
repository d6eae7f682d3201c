//! The cluster broker: publications travel through Redis pub/sub and come back to every
//! node subscribed to their channel, this one included, through the same handler as on
//! one node.
//!
//! Channels (`cluster::Cluster::channel`): one per room and per user, subscribed by a
//! node only while it has members there (`cluster::sync`), and one per tenant for
//! tenant-wide emits and for messages to one connection (which may live on any node).
//! A publication to several rooms goes to each room's channel; a node delivers each copy
//! to the members of that room not in an earlier room of the list, so every connection
//! gets it once. The payload is `<origin node>\n<publication bytes>`: encoded once,
//! decoded once per receiving node; the origin line also carries the position of a
//! publication kept in room history (`<origin> <epoch>:<offset>`).
//!
//! Room history is kept in Redis by the script that publishes ([`super::redis_history`]);
//! a connection recovering it on any node gets exactly what it missed
//! ([`super::redis_recovery`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use super::redis_history::{parse_origin, Gap, RedisHistory, Tag, COMMAND};
use super::redis_recovery::Recovering;
use super::{
    Broker, BrokerError, HistoryOptions, Publication, PublicationHandler, Published, RecoverFrom,
    Recovery, RecoverySink,
};
use crate::cluster::subscriber::Subscriber;
use crate::cluster::sync::ClusterSync;
use crate::cluster::{ChannelKind, Cluster, ClusterError, Inbound};
use crate::hub::Target;
use crate::metrics::Metrics;

/// Publications between the nodes of a cluster.
pub struct RedisBroker {
    cluster: Arc<Cluster>,
    sync: Arc<ClusterSync>,
    handler: Arc<OnceLock<Arc<dyn PublicationHandler>>>,
    history: RedisHistory,
    recovering: Arc<Recovering>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.cluster.node)
            .finish()
    }
}

/// Hands what arrives on the pub/sub link to the node's handler.
struct Receive {
    cluster: Arc<Cluster>,
    handler: Arc<OnceLock<Arc<dyn PublicationHandler>>>,
    recovering: Arc<Recovering>,
    /// This node's own channel (recovery barriers).
    node_channel: String,
}

impl Inbound for Receive {
    fn publication(&self, channel: &str, payload: &[u8]) {
        if channel == self.node_channel {
            if let Some(id) = std::str::from_utf8(payload)
                .ok()
                .and_then(|p| p.parse().ok())
            {
                self.recovering.passed(id);
            }
            return;
        }
        let Some((tenant, of)) = self.cluster.parse_channel(channel) else {
            return;
        };
        let Some(split) = payload.iter().position(|&b| b == b'\n') else {
            tracing::warn!(channel, "publication without its origin line; dropped");
            return;
        };
        let (first, body) = (&payload[..split], &payload[split + 1..]);
        let Some((origin, tag)) = parse_origin(first) else {
            tracing::warn!(channel, "publication with a malformed origin line; dropped");
            return;
        };
        let position = match tag {
            Tag::Plain => None,
            Tag::Position(p) => Some(p),
            Tag::Command => {
                if let (None, Some(handler)) = (of, self.handler.get()) {
                    handler.handle_command(tenant, body);
                }
                return;
            }
        };
        let mut p = match Publication::decode(body) {
            Ok(p) if &*p.tenant == tenant => p,
            Ok(_) => {
                tracing::warn!(channel, "publication for another tenant's channel; dropped");
                return;
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "undecodable publication; dropped");
                return;
            }
        };
        if position.is_some() {
            p.message.position = position;
        }
        let Some(handler) = self.handler.get() else {
            return;
        };
        let deliver = |p: Publication| {
            let part = match (&p.target, of) {
                (Target::Rooms(rooms), Some((ChannelKind::Room, room))) if rooms.len() > 1 => {
                    rooms.iter().position(|r| r == room)
                }
                _ => None,
            };
            match part {
                Some(i) => handler.handle_part(p, i),
                None => handler.handle_publication(p),
            }
        };
        let delivered = match of {
            Some((ChannelKind::Room, room)) => self.recovering.arrived(tenant, room, p, deliver),
            _ => deliver(p),
        };
        if origin != self.cluster.node.as_bytes() {
            self.cluster
                .metrics
                .cross_node_deliveries
                .fetch_add(delivered as u64, Relaxed);
        }
    }
}

impl RedisBroker {
    /// A broker on `cluster`, receiving through `subscriber`, whose subscriptions `sync`
    /// keeps.
    pub fn new(cluster: Arc<Cluster>, sync: Arc<ClusterSync>, subscriber: &Subscriber) -> Self {
        let handler = Arc::new(OnceLock::new());
        let recovering = Arc::new(Recovering::default());
        subscriber.set_inbound(Arc::new(Receive {
            cluster: cluster.clone(),
            handler: handler.clone(),
            recovering: recovering.clone(),
            node_channel: cluster.node_channel(),
        }));
        RedisBroker {
            history: RedisHistory::new(cluster.clone()),
            cluster,
            sync,
            handler,
            recovering,
        }
    }

    /// `PUBLISH` `p` to its channels (no history).
    async fn publish_plain(&self, p: &Publication, body: &[u8]) -> Result<(), ClusterError> {
        let mut payload = Vec::with_capacity(self.cluster.node.len() + 1 + body.len());
        payload.extend_from_slice(self.cluster.node.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(body);
        let mut pipe = redis::pipe();
        for ch in self.channels(p) {
            pipe.publish(ch, &payload).ignore();
        }
        let mut conn = self.cluster.conn.clone();
        self.cluster.call(pipe.query_async::<()>(&mut conn)).await
    }

    /// The channels a publication goes to.
    fn channels(&self, p: &Publication) -> Vec<String> {
        let c = &self.cluster;
        match &p.target {
            Target::Rooms(rooms) => rooms
                .iter()
                .map(|r| c.channel(&p.tenant, Some((ChannelKind::Room, r))))
                .collect(),
            Target::User(u) => vec![c.channel(&p.tenant, Some((ChannelKind::User, u)))],
            Target::Connection(_) | Target::Tenant => vec![c.channel(&p.tenant, None)],
        }
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn register_handler(&self, handler: Arc<dyn PublicationHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        p: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Published, BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::NoHandler)?;
        let body = p.encode()?;
        let was_up = self.cluster.is_up();
        let sent = match (history, &p.target) {
            (Some(h), Target::Rooms(rooms)) => self
                .history
                .publish(&p, rooms, &body, h.max, h.ttl)
                .await
                .map(Some),
            _ => self.publish_plain(&p, &body).await.map(|()| None),
        };
        match sent {
            Ok(position) => {
                Metrics::inc(&self.cluster.metrics.published);
                Ok(Published {
                    position,
                    delivered: 0,
                })
            }
            Err(e) => {
                // Those connected here still get it; the caller learns the rest did not.
                // Not after a timeout on a link that was up: Redis may have taken it (and
                // sent it back here), and a member must not get it twice; the caller is
                // told to retry.
                Metrics::inc(&self.cluster.metrics.publish_failed);
                if !(was_up && matches!(e, ClusterError::Timeout(_))) {
                    handler.handle_publication(p);
                }
                Err(e.into())
            }
        }
    }

    /// `PUBLISH` the command on the tenant's channel: every node gets it, and the one
    /// holding the connection carries it out, in order with the publications before it.
    async fn command(&self, tenant: &str, command: Vec<u8>) -> Result<(), BrokerError> {
        let mut payload = Vec::with_capacity(self.cluster.node.len() + 5 + command.len());
        payload.extend_from_slice(self.cluster.node.as_bytes());
        payload.push(b' ');
        payload.extend_from_slice(COMMAND.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(&command);
        let mut conn = self.cluster.conn.clone();
        let channel = self.cluster.channel(tenant, None);
        self.cluster
            .call(
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<()>(&mut conn),
            )
            .await
            .map_err(|e| {
                Metrics::inc(&self.cluster.metrics.publish_failed);
                e.into()
            })
    }

    /// Pin the room's channel and wait until it is subscribed, read the history after
    /// the client's position and wait for the read's barrier, then (under the recovery
    /// lock) attach, replay the history and what arrived meanwhile that it did not hold.
    async fn recover(
        &self,
        from: RecoverFrom<'_>,
        sink: &dyn RecoverySink,
    ) -> Result<Recovery, BrokerError> {
        let ticket = self
            .recovering
            .register(&self.sync, Arc::from(from.tenant), from.room);
        let timeout = ClusterError::Timeout(self.cluster.timeout);
        if !self.sync.settle().await {
            return Err(timeout.into());
        }
        // The read also publishes a barrier to this node: once it is back, every
        // publication the read may have seen has come through `arrived` (one link, in
        // Redis's order), so none can reach the connection after it joins.
        let passed = ticket.barrier();
        let gap = self
            .history
            .since(from.tenant, from.room, from.since, from.ttl, ticket.id())
            .await?;
        if tokio::time::timeout(self.cluster.timeout, passed)
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(timeout.into());
        }
        Ok(ticket.finish(|got, overflowed| {
            if let Err(e) = sink.attach() {
                return Recovery::NotJoined(e);
            }
            let entries = match gap {
                Gap::EpochChanged => return Recovery::Unrecoverable("epoch changed".into()),
                Gap::TooOld => return Recovery::Unrecoverable("too old".into()),
                Gap::Entries(_) if overflowed => {
                    return Recovery::Unrecoverable("too many messages during recovery".into())
                }
                Gap::Entries(e) => e,
            };
            let mut last = from.since.offset;
            let mut n = 0;
            for m in entries {
                last = m.position.as_ref().map_or(last, |p| p.offset.max(last));
                sink.replay(m);
                n += 1;
            }
            for p in got {
                if p.message
                    .position
                    .as_ref()
                    .is_some_and(|p| p.offset <= last)
                {
                    continue;
                }
                sink.replay(p.message);
                n += 1;
            }
            Recovery::Replayed(n)
        }))
    }
}
