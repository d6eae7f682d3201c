//! The node: tenants, broker and metrics; runs policy actions.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::{Broker, Deliver, Publication};
use crate::hub::{ConnHandle, ConnId, Target};
use crate::metrics::Metrics;
use crate::policy::{Action, ConnInfo};
use crate::protocol::{Message, OutMessage};
use crate::shutdown::Shutdown;
use crate::tenant::Tenant;

/// Everything a running relay shares between its listeners and sessions.
pub struct Node {
    /// Tenants by name.
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// Carries publications (in memory on one node).
    pub broker: Arc<dyn Broker>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop signal and task tracker.
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("tenants", &self.tenants.keys())
            .finish()
    }
}

impl Node {
    /// Hand a message for `target` of `tenant` to the broker; returns local deliveries.
    pub fn publish(
        &self,
        tenant: &Tenant,
        target: Target,
        message: Message,
        exclude: Option<ConnId>,
    ) -> usize {
        Metrics::inc(&self.metrics.publications);
        let p = Publication {
            tenant: tenant.name.clone(),
            target,
            message: Arc::new(OutMessage::new(message)),
            exclude,
        };
        self.broker.publish(p, self)
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

    /// Carry out a policy's actions; `origin` is the connection the hook was about, if any.
    pub fn execute(&self, tenant: &Tenant, origin: Option<&Arc<ConnHandle>>, actions: Vec<Action>) {
        let resolve = |conn: &Option<String>| -> Option<Arc<ConnHandle>> {
            match conn {
                None => origin.cloned(),
                Some(id) => ConnId::parse(id).and_then(|id| tenant.hub.connection(id)),
            }
        };
        for action in actions {
            match action {
                Action::Reply { message } => match origin {
                    Some(h) => {
                        h.send(h.codec.encode(&message));
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, "reply action without a connection: ignored")
                    }
                },
                Action::Emit {
                    target,
                    message,
                    exclude_sender,
                } => {
                    let exclude = if exclude_sender {
                        origin.map(|h| h.id)
                    } else {
                        None
                    };
                    self.publish(tenant, target, message, exclude);
                }
                Action::Join { rooms, conn } => match resolve(&conn) {
                    Some(h) => {
                        for r in &rooms {
                            if let Err(e) = tenant.hub.join(&h, r) {
                                tracing::debug!(tenant = %tenant.name, conn = %h.id, room = %r, error = ?e, "join refused");
                            }
                        }
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "join: no such connection")
                    }
                },
                Action::Leave { rooms, conn } => match resolve(&conn) {
                    Some(h) => rooms.iter().for_each(|r| tenant.hub.leave(&h, r)),
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "leave: no such connection")
                    }
                },
                Action::SetIdentity { user, data, conn } => match resolve(&conn) {
                    Some(h) => {
                        if let Some(u) = user.as_deref() {
                            tenant.hub.set_user(&h, Some(u));
                        }
                        if let (Some(d), Ok(mut s)) = (data, h.state.lock()) {
                            s.data = d;
                        }
                        h.set_authenticated();
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "set_identity: no such connection")
                    }
                },
                Action::StoreOffline { user, .. } => {
                    Metrics::inc(&self.metrics.actions_dropped);
                    tracing::warn!(tenant = %tenant.name, %user, "store_offline is not carried out yet (no durable store): dropped");
                }
                Action::Webhook { url, .. } => {
                    Metrics::inc(&self.metrics.actions_dropped);
                    tracing::warn!(tenant = %tenant.name, %url, "webhook is not carried out yet (no webhook queue): dropped");
                }
                Action::Close { code, reason, conn } => match resolve(&conn) {
                    Some(h) if crate::protocol::frame::valid_close_code(code) => {
                        h.close(code, &reason)
                    }
                    Some(h) => {
                        tracing::warn!(tenant = %tenant.name, code, "policy asked for an invalid close code; closing with 1008");
                        h.close(1008, &reason);
                    }
                    None => {
                        tracing::debug!(tenant = %tenant.name, ?conn, "close: no such connection")
                    }
                },
            }
        }
    }
}

impl Deliver for Node {
    fn deliver(&self, p: &Publication) -> usize {
        self.tenants
            .get(&*p.tenant)
            .map_or(0, |t| t.hub.deliver(&p.target, &p.message, p.exclude))
    }
}
