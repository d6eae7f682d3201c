//! The pub/sub link: one managed RESP3 connection that carries every subscription of
//! this node, re-made (and every subscription with it) when Redis comes back.
//! Publications are handed to [`Inbound`] as they arrive, on the connection's task:
//! delivering is queueing on connections, which never blocks.

use std::sync::{Arc, OnceLock};

use redis::aio::{AsyncPushSender, ConnectionManager, SendError};
use redis::{PushInfo, PushKind, Value};

use super::{Cluster, ClusterError};
use crate::metrics::Metrics;

/// Where publications arriving from Redis go (the Redis broker).
pub trait Inbound: Send + Sync + 'static {
    /// A message on `channel`.
    fn publication(&self, channel: &str, payload: &[u8]);
}

struct Push {
    cluster: Arc<Cluster>,
    inbound: Arc<OnceLock<Arc<dyn Inbound>>>,
    ingress: Arc<OnceLock<Arc<dyn Inbound>>>,
    /// `P:ch:`: relay's own channels; any other is a tenant's `redis_ingress`.
    own: String,
}

impl AsyncPushSender for Push {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (info.data.first(), info.data.get(1))
                else {
                    return Ok(());
                };
                let Ok(ch) = std::str::from_utf8(ch) else {
                    return Ok(());
                };
                let to = match ch.starts_with(&self.own) {
                    true => {
                        Metrics::inc(&self.cluster.metrics.received);
                        self.inbound.get()
                    }
                    false => {
                        Metrics::inc(&self.cluster.metrics.ingress_received);
                        self.ingress.get()
                    }
                };
                match to {
                    Some(i) => i.publication(ch, payload),
                    None => tracing::debug!(ch, "message on a channel nothing takes yet"),
                }
            }
            PushKind::Disconnection => {
                Metrics::inc(&self.cluster.metrics.link_lost);
                tracing::warn!(node = %self.cluster.node, "redis pub/sub link lost; reconnecting");
            }
            _ => {}
        }
        Ok(())
    }
}

/// This node's subscriptions.
pub struct Subscriber {
    cluster: Arc<Cluster>,
    conn: ConnectionManager,
    inbound: Arc<OnceLock<Arc<dyn Inbound>>>,
    ingress: Arc<OnceLock<Arc<dyn Inbound>>>,
}

impl Subscriber {
    /// A lazily connected pub/sub link.
    pub fn new(cluster: Arc<Cluster>) -> Result<Self, ClusterError> {
        let inbound = Arc::new(OnceLock::new());
        let ingress = Arc::new(OnceLock::new());
        let conn = cluster.pubsub_manager(Push {
            own: format!("{}:ch:", cluster.prefix),
            cluster: cluster.clone(),
            inbound: inbound.clone(),
            ingress: ingress.clone(),
        })?;
        Ok(Subscriber {
            cluster,
            conn,
            inbound,
            ingress,
        })
    }

    /// Hand arriving publications to `to` (once, before the first subscription).
    pub fn set_inbound(&self, to: Arc<dyn Inbound>) {
        let _ = self.inbound.set(to);
    }

    /// Hand messages on tenants' `redis_ingress` channels to `to` (once).
    pub fn set_ingress(&self, to: Arc<dyn Inbound>) {
        let _ = self.ingress.set(to);
    }

    /// Subscribe to `channels` (one command for all of them).
    pub async fn subscribe(&self, channels: &[String]) -> Result<(), ClusterError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        self.cluster.call(c.subscribe(channels)).await
    }

    /// Unsubscribe from `channels`.
    pub async fn unsubscribe(&self, channels: &[String]) -> Result<(), ClusterError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        self.cluster.call(c.unsubscribe(channels)).await
    }

    /// Make sure the link is up (a command on a lost link starts reconnecting it).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut c = self.conn.clone();
        let _: Value = self
            .cluster
            .call(redis::cmd("PING").query_async(&mut c))
            .await?;
        Ok(())
    }
}
