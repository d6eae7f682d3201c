//! Several relay nodes as one, through a shared Redis (`[cluster]`).
//!
//! - `mod.rs`: [`Cluster`]: this node's identity, its Redis links and key names, and
//!   running a Redis call from synchronous code (presence answers inside hooks).
//! - [`heartbeat`]: the node's liveness entry, and reaping nodes that died silently.
//! - [`sync`]: keeps Redis in step with this node's hubs: presence entries and the
//!   pub/sub subscriptions of rooms and users with members here (interest-based).
//! - [`presence`]: cluster-wide presence answers.
//! - [`subscriber`]: the pub/sub link; publications arrive through [`Inbound`].
//!
//! The key layout (prefix `P`, tenant `T`, node incarnation `N`) is in `docs/cluster.md`.

pub mod heartbeat;
pub mod holder;
pub mod presence;
pub mod subscriber;
pub mod sync;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, RedisError};

use crate::config::ClusterConfig;
use crate::metrics::Metrics;

pub use subscriber::Inbound;

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error, or the link is down.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis did not answer within `command_timeout_ms`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A synchronous caller cannot wait here (not on a multi-thread runtime).
    #[error("cannot wait for redis on this thread")]
    CannotBlock,
}

/// Counters of the cluster link (rendered with the node's metrics).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Publications sent to Redis.
    pub published: AtomicU64,
    /// Publications that could not be sent (each failed its push).
    pub publish_failed: AtomicU64,
    /// Publications received from Redis (this node had members for them).
    pub received: AtomicU64,
    /// Deliveries made here for publications another node sent.
    pub cross_node_deliveries: AtomicU64,
    /// Channels this node is subscribed to now.
    pub subscriptions: AtomicU64,
    /// Times a Redis link was lost.
    pub link_lost: AtomicU64,
    /// Presence answers that fell back to this node's own view (Redis failed).
    pub presence_fallbacks: AtomicU64,
    /// Key-value calls that failed (Redis failed; a write fails its plugin call).
    pub kv_failed: AtomicU64,
    /// Messages received on tenants' `redis_ingress` channels (by this node, as holder).
    pub ingress_received: AtomicU64,
    /// `redis_ingress` channels this node holds now.
    pub ingress_held: AtomicU64,
    /// Round-trip time of the last heartbeat, in microseconds.
    pub rtt_us: AtomicU64,
}

/// This node's place in a cluster: who it is, and its links to the shared Redis.
pub struct Cluster {
    /// Prefix of every key and channel.
    pub prefix: String,
    /// This run's identity (the configured name and a random suffix, so that a
    /// restarted node is never mistaken for its former self).
    pub node: String,
    /// The configured name, if any (a restart retires its former incarnations at once).
    pub name: Option<String>,
    /// Node expiry.
    pub node_ttl: Duration,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Commands.
    pub(crate) conn: ConnectionManager,
    client: redis::Client,
    /// Counters.
    pub metrics: ClusterMetrics,
    /// Whether the last command on the link succeeded (for `/healthz`).
    up: AtomicBool,
    started: Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

/// The client for a configured URL, speaking RESP3 (pub/sub and commands share the
/// protocol; RESP3 lets one managed connection carry subscriptions).
fn client(url: &str, tls: Option<redis::TlsCertificates>) -> Result<redis::Client, RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match tls {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
}

/// How a managed connection reconnects: quickly at first, then every 2 s at most.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
}

impl Cluster {
    /// Links for `config`, made lazily: Redis need not be up yet (the first commands
    /// fail and are retried; see [`heartbeat`]). `tls`: a private CA and a client
    /// certificate for `rediss://`, read from `tls_*` (the system's roots without).
    pub fn new(
        config: &ClusterConfig,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<Arc<Self>, ClusterError> {
        // rediss:// builds a rustls client config, which needs a process-wide provider.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let client = client(config.redis.get_ref(), tls)?;
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))?;
        let suffix = format!("{:08x}", rand::random::<u32>());
        let name = config.node.as_ref().map(|n| n.get_ref().clone());
        let node = match &name {
            Some(n) => format!("{n}.{suffix}"),
            None => format!("node-{suffix}"),
        };
        Ok(Arc::new(Cluster {
            prefix: config.prefix.get_ref().clone(),
            node,
            name,
            node_ttl: Duration::from_millis(config.node_ttl_ms),
            timeout,
            conn,
            client,
            metrics: ClusterMetrics::default(),
            up: AtomicBool::new(false),
            started: Instant::now(),
        }))
    }

    /// Whether Redis answered the last command (`/healthz`).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Run one Redis call under the command timeout; records whether the link is up.
    pub async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ClusterError> {
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClusterError::Redis(e)),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        };
        let ok = r.is_ok()
            || matches!(&r, Err(ClusterError::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError));
        if self.up.swap(ok, Relaxed) && !ok {
            Metrics::inc(&self.metrics.link_lost);
            tracing::warn!(node = %self.node, "redis link lost");
        }
        r
    }

    /// Wait for `f` from synchronous code: the worker thread is handed to the runtime's
    /// other tasks meanwhile (`block_in_place`), so other connections are served.
    /// Fails with [`ClusterError::CannotBlock`] outside a multi-thread runtime.
    pub fn block<T>(&self, f: impl Future<Output = T>) -> Result<T, ClusterError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| ClusterError::CannotBlock)?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(ClusterError::CannotBlock);
        }
        Ok(tokio::task::block_in_place(|| handle.block_on(f)))
    }

    /// A tenant's key: `P:t:T:<rest>`.
    pub fn key(&self, tenant: &str, rest: &str) -> String {
        format!("{}:t:{tenant}:{rest}", self.prefix)
    }

    /// The sorted set of live nodes (score: expiry, Redis server milliseconds).
    pub fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The set of keys node `node` wrote presence into (reaped when it dies).
    pub fn node_keys(&self, node: &str) -> String {
        format!("{}:node:{node}:keys", self.prefix)
    }

    /// The channel of a room, a user, or (`None`) the tenant: `P:ch:T:r:<room>`,
    /// `P:ch:T:u:<user>`, `P:ch:T:t`.
    pub fn channel(&self, tenant: &str, of: Option<(ChannelKind, &str)>) -> String {
        match of {
            Some((ChannelKind::Room, r)) => format!("{}:ch:{tenant}:r:{r}", self.prefix),
            Some((ChannelKind::User, u)) => format!("{}:ch:{tenant}:u:{u}", self.prefix),
            None => format!("{}:ch:{tenant}:t", self.prefix),
        }
    }

    /// This node incarnation's own channel (`P:ch::n:N`; no tenant is empty).
    pub fn node_channel(&self) -> String {
        format!("{}:ch::n:{}", self.prefix, self.node)
    }

    /// What a channel name carries: tenant, and the room or user (or none: tenant-wide).
    pub fn parse_channel<'c>(
        &self,
        ch: &'c str,
    ) -> Option<(&'c str, Option<(ChannelKind, &'c str)>)> {
        let rest = ch
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ch:")?;
        let (tenant, rest) = rest.split_once(':')?;
        match rest.split_once(':') {
            None if rest == "t" => Some((tenant, None)),
            Some(("r", r)) => Some((tenant, Some((ChannelKind::Room, r)))),
            Some(("u", u)) => Some((tenant, Some((ChannelKind::User, u)))),
            _ => None,
        }
    }

    /// The cluster counters as Prometheus text (appended to the node's `/metrics`).
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let m = &self.metrics;
        let mut out = String::new();
        for (name, kind, v) in [
            ("cluster_published", "counter", &m.published),
            ("cluster_publish_failed", "counter", &m.publish_failed),
            ("cluster_received", "counter", &m.received),
            (
                "cluster_cross_node_deliveries",
                "counter",
                &m.cross_node_deliveries,
            ),
            ("cluster_subscriptions", "gauge", &m.subscriptions),
            ("cluster_link_lost", "counter", &m.link_lost),
            (
                "cluster_presence_fallbacks",
                "counter",
                &m.presence_fallbacks,
            ),
            ("cluster_kv_failed", "counter", &m.kv_failed),
            ("cluster_ingress_received", "counter", &m.ingress_received),
            ("cluster_ingress_held", "gauge", &m.ingress_held),
            ("cluster_redis_rtt_us", "gauge", &m.rtt_us),
        ] {
            let _ = writeln!(out, "# TYPE relay_{name} {kind}");
            let _ = writeln!(out, "relay_{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(out, "# TYPE relay_cluster_up gauge");
        let _ = writeln!(out, "relay_cluster_up {}", u8::from(self.is_up()));
        out
    }

    /// Seconds since this node started (`/healthz`).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A second managed connection for pub/sub, pushing what arrives to `push`.
    pub(crate) fn pubsub_manager(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<ConnectionManager, RedisError> {
        let config = manager_config(self.timeout)
            .set_push_sender(push)
            .set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(self.client.clone(), config)
    }

    /// A fresh command connection for `relay check` (fails at once if Redis is down).
    pub async fn probe(&self) -> Result<(), ClusterError> {
        let mut conn =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| ClusterError::Timeout(self.timeout))??;
        let _: String = self.call(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

/// What a channel belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// A room's members.
    Room,
    /// A user's connections.
    User,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_names_round_trip_whatever_the_room_holds() {
        let text = "[cluster]\nredis = \"redis://127.0.0.1:1\"\nprefix = \"px\"\n\n[[listener]]\nname = \"x\"\nkind = \"udp\"\nbind = \"127.0.0.1:0\"\ntenant = \"a\"\n\n[[tenant]]\nname = \"a\"\npolicy = \"open\"\n";
        let config = crate::Config::parse(text, None).unwrap();
        let c = Cluster::new(config.cluster.as_ref().unwrap(), None).unwrap();
        for of in [
            None,
            Some((ChannelKind::Room, "a:b:c")),
            Some((ChannelKind::User, "u:1")),
            Some((ChannelKind::Room, "")),
        ] {
            let ch = c.channel("ten", of);
            assert_eq!(c.parse_channel(&ch), Some(("ten", of)), "{ch}");
        }
        assert_eq!(c.parse_channel("other:ch:ten:t"), None);
        assert_eq!(c.parse_channel("px:ch:ten:x:1"), None);
    }
}
