//! The node: tenants, broker, stores and metrics; carries out policy actions.
//!
//! - `mod.rs`: [`Node`], publishing, lifecycle webhooks.
//! - [`hooks`]: the hook façade: every policy call, counted and logged in one place.
//! - [`actions`]: carrying out a policy's [`Action`](crate::policy::Action)s.
//! - [`rooms`]: joining rooms (with history recovery) and offline mailboxes.
//! - [`delivery`]: the publication handler the broker calls back.

mod actions;
pub mod delivery;
mod hooks;
mod rooms;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, BrokerError, HistoryOptions, Publication, Published};
use crate::hub::{ConnHandle, ConnId, Target};
use crate::metrics::Metrics;
use crate::policy::ConnInfo;
use crate::protocol::Message;
use crate::shutdown::Shutdown;
use crate::store::commit::Committer;
use crate::store::OfflineStore;
use crate::tenant::Tenant;
use crate::webhook::{with_param, Call, Webhooks};

pub use actions::Executed;
pub use hooks::IngressError;

/// A connection's lifecycle moments that may call a tenant's webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Identified as a user.
    Login,
    /// An identified connection ended.
    Disconnect,
}

/// Everything a running relay shares between its listeners and sessions.
pub struct Node {
    /// Tenants by name.
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// Carries publications and keeps room history (in memory on one node).
    pub broker: Arc<dyn Broker>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop signal and task tracker.
    pub shutdown: Shutdown,
    /// Offline mailboxes.
    pub offline: Arc<dyn OfflineStore>,
    /// Makes stored messages durable (group commit).
    pub committer: Committer,
    /// Outgoing HTTP calls.
    pub webhooks: Webhooks,
    /// Tenants' message logs.
    pub msglog: crate::msglog::MessageLog,
    /// In a cluster: what keeps this node's hubs in Redis.
    pub cluster: Option<Arc<crate::cluster::sync::ClusterSync>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("tenants", &self.tenants.keys())
            .finish()
    }
}

impl Node {
    /// Hand a message for `target` of `tenant` to the broker, which keeps it in room
    /// history when the tenant does and brings it back to every node's hub.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        target: Target,
        message: Message,
        exclude: Option<ConnId>,
    ) -> Result<Published, BrokerError> {
        Metrics::inc(&self.metrics.publications);
        let history = match (&target, tenant.config.history.max) {
            (Target::Rooms(_), max) if max > 0 => Some(HistoryOptions {
                max,
                ttl: Duration::from_millis(tenant.config.history.ttl_ms),
            }),
            _ => None,
        };
        let p = Publication {
            tenant: tenant.name.clone(),
            target,
            message,
            exclude,
        };
        self.broker.publish(p, history).await
    }

    /// Everything `/metrics` shows: the counters, gauges read now (tasks alive in the
    /// runtime; bytes waiting in connection queues, summed over the connections, so the
    /// hot path keeps no shared counter), and the cluster's.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut text = self.metrics.render();
        let mut links = std::collections::HashSet::new();
        let mut queued = 0usize;
        for t in self.tenants.values() {
            for h in t.hub.all() {
                // Socket.IO namespaces of one client share a link: count it once.
                if links.insert(Arc::as_ptr(&h.link) as usize) {
                    queued += h.link.queued_bytes();
                }
            }
        }
        let tasks = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks())
            .unwrap_or(0);
        for (name, help, v) in [
            (
                "queued_bytes",
                "Bytes waiting in connection queues now.",
                queued,
            ),
            ("runtime_tasks", "Tasks alive in the runtime now.", tasks),
        ] {
            let _ = writeln!(
                text,
                "# HELP relay_{name} {help}\n# TYPE relay_{name} gauge\nrelay_{name} {v}"
            );
        }
        if let Some(c) = &self.cluster {
            text.push_str(&c.cluster().render_metrics());
        }
        text
    }

    /// In a cluster, wait until this node's membership changes so far are in Redis
    /// (subscriptions made, presence written), so that what a client was told it joined
    /// gets every publication from then on, sent from any node. At once on one node.
    pub async fn settle(&self) {
        if let Some(c) = &self.cluster {
            if !c.settle().await {
                tracing::debug!("cluster changes not confirmed in time");
            }
        }
    }

    /// Reload the plugins of every tenant (or of `only`); blocking (compiles).
    /// Returns, per tenant, `{"ok":true,"loaded":...}` or `{"ok":false,"error":...}`.
    pub fn reload_plugins(&self, only: Option<&str>) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, t) in &self.tenants {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let r = match t.policy.reload() {
                None => continue,
                Some(Ok(hash)) => serde_json::json!({"ok": true, "loaded": hash}),
                Some(Err(e)) => serde_json::json!({"ok": false, "error": e}),
            };
            out.insert(name.clone(), r);
        }
        serde_json::Value::Object(out)
    }

    /// What a policy sees of a connection.
    pub fn conn_info(h: &ConnHandle) -> ConnInfo {
        let (user, data) = match h.state.lock() {
            Ok(s) => (s.user.as_ref().map(|u| u.to_string()), s.data.clone()),
            Err(_) => (None, serde_json::Value::Null),
        };
        ConnInfo {
            id: h.id.to_string(),
            user,
            data,
            authenticated: h.is_authenticated(),
            remote: h.remote,
        }
    }

    /// Call the tenant's lifecycle webhook, if configured (GET with `sid=<conn>`).
    pub fn lifecycle(&self, tenant: &Tenant, moment: Lifecycle, conn: &str) {
        let url = match moment {
            Lifecycle::Login => &tenant.config.login_webhook,
            Lifecycle::Disconnect => &tenant.config.disconnect_webhook,
        };
        let Some(url) = url else { return };
        self.webhook(
            tenant,
            "GET",
            &with_param(url.get_ref(), "sid", conn),
            Vec::new(),
            String::new(),
        );
    }

    /// Queue a webhook call for `tenant`; an invalid call is logged and counted.
    pub(crate) fn webhook(
        &self,
        tenant: &Tenant,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: String,
    ) {
        let call = Call::new(
            tenant.name.clone(),
            method,
            url,
            headers,
            bytes::Bytes::from(body),
            Duration::from_millis(tenant.config.webhook.timeout_ms),
            tenant.config.webhook.retries,
        );
        match call {
            Ok(c) => {
                self.webhooks.enqueue(c);
            }
            Err(e) => {
                Metrics::inc(&self.metrics.webhooks_dropped);
                tracing::warn!(tenant = %tenant.name, error = %e, "webhook not made");
            }
        }
    }
}
