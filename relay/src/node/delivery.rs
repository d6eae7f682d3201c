//! The node's publication handler: a publication coming back from the broker is
//! delivered by the tenant's hub, encoded once per wire format.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use super::Node;
use crate::broker::{Publication, PublicationHandler};
use crate::hub::{ConnId, Hub, Target};
use crate::policy::Action;
use crate::protocol::OutMessage;

/// Delivers publications to this node's connections; registered with the broker once.
pub struct HubDelivery {
    hubs: HashMap<Arc<str>, Arc<Hub>>,
    /// The node, for commands (set once it exists: the handler is registered before).
    node: OnceLock<Weak<Node>>,
}

impl HubDelivery {
    /// A handler for these tenants' hubs.
    pub fn new(hubs: impl IntoIterator<Item = (Arc<str>, Arc<Hub>)>) -> Self {
        HubDelivery {
            hubs: hubs.into_iter().collect(),
            node: OnceLock::new(),
        }
    }

    /// Carry out commands on `node` from now on.
    pub fn set_node(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

/// The connection a forwardable action names (`Join`, `Leave`, `SetIdentity`, `Close`
/// with an explicit `conn`).
pub(super) fn addressed_conn(action: &Action) -> Option<&str> {
    match action {
        Action::Join { conn, .. }
        | Action::Leave { conn, .. }
        | Action::SetIdentity { conn, .. }
        | Action::Close { conn, .. } => conn.as_deref(),
        _ => None,
    }
}

impl PublicationHandler for HubDelivery {
    fn handle_publication(&self, p: Publication) -> usize {
        let Some(hub) = self.hubs.get(&p.tenant) else {
            tracing::debug!(tenant = %p.tenant, "publication for a tenant this node does not serve");
            return 0;
        };
        hub.deliver(&p.target, &OutMessage::new(p.message), p.exclude)
    }

    fn handle_part(&self, p: Publication, part: usize) -> usize {
        let (Some(hub), Target::Rooms(rooms)) = (self.hubs.get(&p.tenant), &p.target) else {
            return self.handle_publication(p);
        };
        hub.deliver_part(rooms, part, &OutMessage::new(p.message.clone()), p.exclude)
    }

    /// An action on a connection, sent by another node: carried out here if the
    /// connection is here (as a task: joining may replay history), else ignored.
    fn handle_command(&self, tenant: &str, command: &[u8]) {
        let action: Action = match serde_json::from_slice(command) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "undecodable command from another node; dropped");
                return;
            }
        };
        let (Some(hub), Some(id)) = (self.hubs.get(tenant), addressed_conn(&action)) else {
            return;
        };
        if ConnId::parse(id)
            .and_then(|id| hub.connection(id))
            .is_none()
        {
            return;
        }
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some(t) = node.tenants.get(tenant).cloned() else {
            return;
        };
        tokio::spawn(async move {
            node.execute(&t, None, vec![action]).await;
        });
    }
}
