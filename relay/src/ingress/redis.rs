//! Redis channel ingress (`redis_ingress`): a message a backend published on a tenant's
//! channel is handed to the tenant's ingress hook as `POST <path>` with the message as
//! body, exactly as an HTTP push would be (and so verified by the tenant's plugin); the
//! hook's answer goes nowhere. Only the node holding the channel receives it
//! (`cluster::holder`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use crate::cluster::Inbound;
use crate::node::{IngressError, Node};
use crate::policy::{IngressRequest, IngressSource};
use crate::tenant::Tenant;

/// Where a channel's messages go.
struct Route {
    tenant: Arc<Tenant>,
    path: String,
    content_type: String,
}

/// Hands channel messages to their tenants' ingress hooks.
pub struct RedisIngress {
    node: Weak<Node>,
    routes: HashMap<String, Route>,
}

impl RedisIngress {
    /// Routes from every tenant's `redis_ingress`.
    pub fn new(node: &Arc<Node>) -> Self {
        let mut routes = HashMap::new();
        for t in node.tenants.values() {
            for ing in &t.config.redis_ingress {
                routes.insert(
                    ing.channel.get_ref().clone(),
                    Route {
                        tenant: t.clone(),
                        path: ing.path.clone(),
                        content_type: ing.content_type.clone(),
                    },
                );
            }
        }
        RedisIngress {
            node: Arc::downgrade(node),
            routes,
        }
    }

    /// The channels to hold.
    pub fn channels(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }
}

impl Inbound for RedisIngress {
    fn publication(&self, channel: &str, payload: &[u8]) {
        let (Some(route), Some(node)) = (self.routes.get(channel), self.node.upgrade()) else {
            return;
        };
        let req = IngressRequest {
            source: IngressSource::Http {
                method: "POST".into(),
                path: route.path.clone(),
                query: String::new(),
                headers: vec![
                    ("content-type".into(), route.content_type.clone()),
                    ("x-relay-redis-channel".into(), channel.to_owned()),
                ],
            },
            // No peer: the message came through Redis.
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            body: Bytes::copy_from_slice(payload),
        };
        let tenant = route.tenant.clone();
        let tracker = node.shutdown.tracker.clone();
        tracker.spawn(async move {
            match node.ingress(&tenant, &req).await {
                Ok(out) if out.status < 300 => {}
                Ok(out) => tracing::debug!(tenant = %tenant.name, status = out.status, "redis ingress message refused by the tenant's hook"),
                Err(e @ IngressError::RateLimited(_)) => tracing::debug!(tenant = %tenant.name, error = %e, "redis ingress message refused"),
                Err(e) => tracing::warn!(tenant = %tenant.name, error = %e, "redis ingress message failed"),
            }
        });
    }
}
