//! The cluster's parts, when `[cluster]` is configured: the link to Redis, the writer of
//! this node's presence and subscriptions, the pub/sub link, the broker on them, and
//! the holder of `redis_ingress` channels; and `relay check`'s probe of Redis.

use std::sync::Arc;

use crate::config::{self, Config};
use crate::error::Error;
use crate::node::Node;
use crate::shutdown::Shutdown;
use crate::{broker, cluster, ingress};

/// The cluster link, its writer and its pub/sub link, when `[cluster]` is configured.
/// Made lazily: a node starts while Redis is down, and connects when it comes up.
pub(super) type ClusterParts = (
    Arc<cluster::Cluster>,
    Arc<cluster::sync::ClusterSync>,
    Arc<cluster::subscriber::Subscriber>,
);

/// The `tls_*` files of `[cluster]`, read (paths relative to the config file), or an
/// error at the key that names an unreadable one.
fn tls_files(config: &Config) -> Result<Option<redis::TlsCertificates>, config::ConfigError> {
    let Some(cc) = &config.cluster else {
        return Ok(None);
    };
    let read = |name: &str, v: &Option<toml::Spanned<std::path::PathBuf>>| {
        v.as_ref()
            .map(|p| {
                let path = config.resolve(p.get_ref());
                std::fs::read(&path).map_err(|e| {
                    config.error_at(
                        Some(p.span()),
                        format!("cluster.{name}"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })
            })
            .transpose()
    };
    let root_cert = read("tls_ca", &cc.tls_ca)?;
    let cert = read("tls_cert", &cc.tls_cert)?;
    let key = read("tls_key", &cc.tls_key)?;
    let client_tls = match (cert, key) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

pub(super) fn parts(config: &Config) -> Result<Option<ClusterParts>, Error> {
    let Some(cc) = &config.cluster else {
        return Ok(None);
    };
    let tls = tls_files(config).map_err(|e| Error::Cluster(e.to_string()))?;
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Err(Error::Cluster(
            "cluster mode needs tokio's multi-thread runtime".into(),
        ));
    }
    let c = cluster::Cluster::new(cc, tls).map_err(|e| Error::Cluster(e.to_string()))?;
    let subscriber = Arc::new(
        cluster::subscriber::Subscriber::new(c.clone())
            .map_err(|e| Error::Cluster(e.to_string()))?,
    );
    let sync = cluster::sync::ClusterSync::new(c.clone(), subscriber.clone());
    tracing::info!(node = %c.node, prefix = %c.prefix, "cluster mode: sharing rooms, users and presence through redis");
    Ok(Some((c, sync, subscriber)))
}

/// `[cluster]`: whether its Redis answers a PING (on a thread of its own: `check` may be
/// called from inside a runtime).
pub(super) fn probe_redis(config: &Config) -> Result<(), config::ConfigError> {
    let Some(cc) = config.cluster.clone() else {
        return Ok(());
    };
    let span = cc.redis.span();
    let tls = tls_files(config)?;
    let probe = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let c = cluster::Cluster::new(&cc, tls).map_err(|e| e.to_string())?;
            c.probe().await.map_err(|e| e.to_string())
        })
    });
    let result = probe
        .join()
        .unwrap_or_else(|_| Err("the probe failed".into()));
    result.map_err(|e| {
        config.error_at(
            Some(span),
            "cluster.redis".into(),
            format!("cannot reach redis: {e}"),
        )
    })
}

/// The cluster broker; starts the writer and the heartbeat.
pub(super) fn broker(parts: &ClusterParts, shutdown: &Shutdown) -> Arc<dyn broker::Broker> {
    let (c, sync, subscriber) = parts;
    shutdown
        .tracker
        .spawn(sync.clone().run(shutdown.token.clone()));
    shutdown.tracker.spawn(cluster::heartbeat::run(
        c.clone(),
        sync.clone(),
        shutdown.token.clone(),
    ));
    Arc::new(broker::redis::RedisBroker::new(
        c.clone(),
        sync.clone(),
        subscriber,
    ))
}

/// Route `redis_ingress` messages to their tenants, and hold what channels can be held.
pub(super) fn hold_ingress_channels(parts: &ClusterParts, node: &Arc<Node>) {
    let (c, _, subscriber) = parts;
    let ingress = Arc::new(ingress::redis::RedisIngress::new(node));
    let channels = ingress.channels();
    subscriber.set_ingress(ingress);
    node.shutdown.tracker.spawn(cluster::holder::run(
        c.clone(),
        subscriber.clone(),
        channels,
        node.shutdown.token.clone(),
    ));
}
