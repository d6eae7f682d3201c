//! The node's publication handler: a publication coming back from the broker is
//! delivered by the tenant's hub, encoded once per wire format.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::{Publication, PublicationHandler};
use crate::hub::{Hub, Target};
use crate::protocol::OutMessage;

/// Delivers publications to this node's connections; registered with the broker once.
pub struct HubDelivery {
    hubs: HashMap<Arc<str>, Arc<Hub>>,
}

impl HubDelivery {
    /// A handler for these tenants' hubs.
    pub fn new(hubs: impl IntoIterator<Item = (Arc<str>, Arc<Hub>)>) -> Self {
        HubDelivery {
            hubs: hubs.into_iter().collect(),
        }
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
}
