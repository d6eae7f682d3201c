//! The composition root: builds each part of a relay once from its config, binds the
//! listeners and starts the background tasks; [`check`] builds what `relay check` proves.

mod admin;
mod build;
mod cluster_parts;
mod listen;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::config::ListenerKind;
use crate::config::{self, Config};
use crate::error::Error;
use crate::node::Node;
use crate::shutdown::Shutdown;
use crate::tenant::Tenant;
use crate::{broker, ingress, metrics, msglog, node, store, webhook};

/// A started relay: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Bound address of each listener, by name.
    pub addrs: HashMap<String, SocketAddr>,
    /// The node (tenants, metrics).
    pub node: Arc<Node>,
    /// Its shutdown handle.
    pub shutdown: Shutdown,
    grace: Duration,
    /// Written out at the end of [`Running::stop`] (or when dropped).
    kv_log: Arc<store::kv::KvLog>,
}

impl Running {
    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        match self.addrs.get(name) {
            Some(a) => *a,
            None => panic!("no listener named {name:?}"),
        }
    }

    /// Stop accepting, send close frames after queued messages, and wait up to the grace period.
    /// Returns `true` if every task finished in time.
    pub async fn stop(self) -> bool {
        self.shutdown.trigger();
        self.shutdown.tracker.close();
        let done = tokio::time::timeout(self.grace, self.shutdown.tracker.wait())
            .await
            .is_ok();
        // Last: what the connections' final hook calls wrote goes to disk too.
        let kv_log = self.kv_log.clone();
        let _ = tokio::task::spawn_blocking(move || kv_log.close()).await;
        done
    }
}

/// Raise the soft descriptor limit to the hard limit; every connection needs one.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

/// Everything `relay check` verifies beyond [`Config::validate`]: TLS material loads,
/// webhook URLs are callable, policies accept their settings, plugins compile, fit the
/// contract, import nothing forbidden and accept their settings. Every error is
/// reported. (It does not open the store, which a running relay holds locked.)
pub fn check(config: &Config) -> Result<(), Error> {
    let memory = |t: &config::TenantConfig| -> Result<Arc<dyn store::KvStore>, Error> {
        Ok(Arc::new(store::TenantKv::in_memory(t.wasm.kv_max_bytes)))
    };
    let tls = build::tls_acceptors(config);
    let tenants = build::tenants(
        config,
        &Arc::new(metrics::Metrics::default()),
        &memory,
        None,
    );
    let tls = match (tls, cluster_parts::probe_redis(config)) {
        (Ok(t), Ok(())) => Ok(t),
        (Ok(_), Err(e)) => Err(config::ConfigErrors(vec![e])),
        (Err(mut a), Err(e)) => {
            a.0.push(e);
            Err(a)
        }
        (Err(a), Ok(())) => Err(a),
    };
    match (tls, tenants) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), Ok(_)) => Err(e.into()),
        (Ok(_), Err(e)) => Err(e),
        (Err(mut a), Err(Error::Config(b))) => {
            a.0.extend(b.0);
            Err(a.into())
        }
        (Err(_), Err(e)) => Err(e),
    }
}

/// Drop expired keys from the tenants' key-value stores every minute.
async fn purge_expired_keys(node: Arc<Node>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        for t in node.tenants.values() {
            t.kv.purge_expired();
        }
    }
}

/// At shutdown, queue a close frame (1001) on every connection, after what is queued.
/// WebSocket sessions wait for nothing else to learn of the shutdown (a waiter per
/// connection is memory an idle connection would carry); one registered just as this
/// runs looks at the token itself (`session::wsjson::run`).
async fn close_connections_at_shutdown(node: Arc<Node>) {
    node.shutdown.token.cancelled().await;
    for t in node.tenants.values() {
        for h in t.hub.all() {
            h.link.close_as(crate::protocol::close::SHUTDOWN);
        }
    }
}

/// Poll a tenant's plugin file and reload it when it changes.
async fn watch_plugin(
    tenant: Arc<Tenant>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let policy = tenant.policy.clone();
        let _ = tokio::task::spawn_blocking(move || policy.reload_if_changed()).await;
    }
}

/// Bind every listener and start serving. Returns once all sockets are bound.
pub async fn start(config: Config) -> Result<Running, Error> {
    raise_fd_limit();
    let shutdown = Shutdown::new();
    let metrics = Arc::new(metrics::Metrics::default());
    let db = store::sled::SledStore::open(&config.data_dir().join("store"))?;
    let kv_log = store::kv::KvLog::start(db.cell())?;
    {
        let metrics = metrics.clone();
        db.cell().on_reopen(Box::new(move |db| {
            if db.is_none() {
                metrics::Metrics::inc(&metrics.store_reopens);
            }
        }));
    }
    let tls = build::tls_acceptors(&config)?;
    let cluster = cluster_parts::parts(&config)?;
    let shared = cluster.as_ref().map(|c| c.0.clone());
    let logged_kv = |t: &config::TenantConfig| -> Result<Arc<dyn store::KvStore>, Error> {
        match &shared {
            Some(c) => Ok(Arc::new(store::redis_kv::RedisKv::new(
                c.clone(),
                t.name.get_ref(),
                t.redis_read.clone(),
            ))),
            None => Ok(kv_log.open(t.name.get_ref(), t.wasm.kv_max_bytes)?),
        }
    };
    let tenants = build::tenants(
        &config,
        &metrics,
        &logged_kv,
        cluster.as_ref().map(|c| &c.1),
    )?;
    let offline: Arc<dyn store::OfflineStore> = match (&cluster, &config.cluster) {
        (Some((c, _, _)), Some(cc)) => {
            Arc::new(store::redis::RedisOffline::new(c.clone(), cc.wait_replicas))
        }
        _ => Arc::new(db.clone()),
    };
    let (committer, commit_task) = store::commit::Committer::start(
        offline.clone(),
        config.server.sync,
        Duration::from_millis(config.server.sync_window_ms),
        shutdown.token.clone(),
    );
    shutdown.tracker.spawn(commit_task);
    for t in tenants.values() {
        // Messages kept before a restart must still be found.
        let used = offline.has_offline(&t.name).await?;
        t.offline_used
            .store(used, std::sync::atomic::Ordering::Relaxed);
    }
    let (webhooks, webhook_task) =
        webhook::Webhooks::start(metrics.clone(), shutdown.token.clone())
            .map_err(Error::Webhooks)?;
    shutdown.tracker.spawn(webhook_task);
    let msglog = msglog::MessageLog::start(metrics.clone())?;
    let broker: Arc<dyn broker::Broker> = match &cluster {
        Some(parts) => cluster_parts::broker(parts, &shutdown),
        None => Arc::new(broker::MemoryBroker::new(Arc::new(db.clone()))),
    };
    let delivery = Arc::new(node::delivery::HubDelivery::new(
        tenants.values().map(|t| (t.name.clone(), t.hub.clone())),
    ));
    broker.register_handler(delivery.clone());
    let node = Arc::new(Node {
        tenants,
        broker,
        metrics,
        shutdown: shutdown.clone(),
        offline,
        committer,
        webhooks,
        msglog,
        cluster: cluster.as_ref().map(|c| c.1.clone()),
    });
    delivery.set_node(&node);
    if let Some(parts) = &cluster {
        cluster_parts::hold_ingress_channels(parts, &node);
    }
    shutdown
        .tracker
        .spawn(purge_expired_keys(node.clone(), shutdown.token.clone()));
    shutdown
        .tracker
        .spawn(close_connections_at_shutdown(node.clone()));
    for tenant in node.tenants.values() {
        if tenant.config.wasm.watch_ms > 0 && tenant.config.policy.get_ref() == "wasm" {
            let every = Duration::from_millis(tenant.config.wasm.watch_ms);
            shutdown
                .tracker
                .spawn(watch_plugin(tenant.clone(), every, shutdown.token.clone()));
        }
    }
    let addrs = bind_listeners(&config, &node, tls).await?;
    Ok(Running {
        addrs,
        node,
        shutdown,
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
        kv_log,
    })
}

/// Bind every listener and start serving it; returns the bound addresses by name.
async fn bind_listeners(
    config: &Config,
    node: &Arc<Node>,
    mut tls: HashMap<usize, tokio_rustls::TlsAcceptor>,
) -> Result<HashMap<String, SocketAddr>, Error> {
    let shutdown = &node.shutdown;
    let mut addrs = HashMap::new();
    let engines = listen::engine_tables(node);
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let admin = admin::AdminGuard::new(&config.server);
    for (i, l) in config.listeners.iter().enumerate() {
        let name = l.name.get_ref().clone();
        let bind: SocketAddr = l.bind.get_ref().parse().map_err(|_| Error::BindAddress {
            name: name.clone(),
            addr: l.bind.get_ref().clone(),
        })?;
        let bind_err = |source| Error::Bind {
            name: name.clone(),
            addr: bind.to_string(),
            source,
        };
        if l.kind == ListenerKind::Udp {
            let sock = UdpSocket::bind(bind).await.map_err(bind_err)?;
            addrs.insert(name.clone(), sock.local_addr()?);
            let tenant = l
                .tenant
                .as_ref()
                .and_then(|t| node.tenants.get(t.get_ref()))
                .cloned();
            let Some(tenant) = tenant else { continue };
            shutdown.tracker.spawn(ingress::udp::serve(
                sock,
                name,
                tenant,
                node.clone(),
                l.max_body_bytes,
            ));
            continue;
        }
        let tls = tls.remove(&i);
        let ctx = Arc::new(listen::TcpListenerCtx::new(
            l,
            node,
            &engines,
            tls,
            admin.clone(),
        ));
        let listener = TcpListener::bind(bind).await.map_err(bind_err)?;
        addrs.insert(name, listener.local_addr()?);
        shutdown
            .tracker
            .spawn(listen::serve(listener, ctx, node.clone()));
    }
    Ok(addrs)
}
