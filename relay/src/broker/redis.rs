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
//! decoded once per receiving node.
//!
//! Room history is not kept in cluster mode yet: `relay check` refuses a tenant with
//! `history_max` in a cluster.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use super::{
    Broker, BrokerError, HistoryOptions, Publication, PublicationHandler, Published, RecoverFrom,
    Recovery, RecoverySink,
};
use crate::cluster::subscriber::Subscriber;
use crate::cluster::{ChannelKind, Cluster, Inbound};
use crate::hub::Target;
use crate::metrics::Metrics;

/// Publications between the nodes of a cluster.
pub struct RedisBroker {
    cluster: Arc<Cluster>,
    handler: Arc<OnceLock<Arc<dyn PublicationHandler>>>,
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
}

impl Inbound for Receive {
    fn publication(&self, channel: &str, payload: &[u8]) {
        let Some((tenant, of)) = self.cluster.parse_channel(channel) else {
            return;
        };
        let Some(split) = payload.iter().position(|&b| b == b'\n') else {
            tracing::warn!(channel, "publication without its origin line; dropped");
            return;
        };
        let (origin, body) = (&payload[..split], &payload[split + 1..]);
        let p = match Publication::decode(body) {
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
        let Some(handler) = self.handler.get() else {
            return;
        };
        let part = match (&p.target, of) {
            (Target::Rooms(rooms), Some((ChannelKind::Room, room))) if rooms.len() > 1 => {
                rooms.iter().position(|r| r == room)
            }
            _ => None,
        };
        let delivered = match part {
            Some(i) => handler.handle_part(p, i),
            None => handler.handle_publication(p),
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
    /// A broker on `cluster`, receiving through `subscriber`.
    pub fn new(cluster: Arc<Cluster>, subscriber: &Subscriber) -> Self {
        let handler = Arc::new(OnceLock::new());
        subscriber.set_inbound(Arc::new(Receive {
            cluster: cluster.clone(),
            handler: handler.clone(),
        }));
        RedisBroker { cluster, handler }
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
        _history: Option<HistoryOptions>,
    ) -> Result<Published, BrokerError> {
        let handler = self.handler.get().ok_or(BrokerError::NoHandler)?;
        let mut payload = Vec::with_capacity(self.cluster.node.len() + 256);
        payload.extend_from_slice(self.cluster.node.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(&p.encode()?);
        let mut pipe = redis::pipe();
        for ch in self.channels(&p) {
            pipe.publish(ch, &payload).ignore();
        }
        let mut conn = self.cluster.conn.clone();
        match self.cluster.call(pipe.query_async::<()>(&mut conn)).await {
            Ok(()) => {
                Metrics::inc(&self.cluster.metrics.published);
                Ok(Published::default())
            }
            Err(e) => {
                // Those connected here still get it; the caller learns the rest did not.
                Metrics::inc(&self.cluster.metrics.publish_failed);
                handler.handle_publication(p);
                Err(e.into())
            }
        }
    }

    async fn recover(
        &self,
        _from: RecoverFrom<'_>,
        sink: &dyn RecoverySink,
    ) -> Result<Recovery, BrokerError> {
        match sink.attach() {
            Ok(()) => Ok(Recovery::Unrecoverable(
                "room history is not kept in cluster mode".into(),
            )),
            Err(e) => Ok(Recovery::NotJoined(e)),
        }
    }
}
