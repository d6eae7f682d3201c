//! The broker seam: every emit goes through a [`Broker`] and comes back to
//! each node's [`Deliver`], so one node and many share one delivery path.
//! [`LocalBroker`] is the in-memory loop-back; a Redis broker slots in later.

use std::sync::Arc;

use crate::hub::{ConnId, Target};
use crate::protocol::OutMessage;

/// One message on its way to recipients.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Tenant whose hub delivers it.
    pub tenant: Arc<str>,
    /// Recipients.
    pub target: Target,
    /// The message, encoded lazily once per wire format.
    pub message: Arc<OutMessage>,
    /// A connection not to deliver to (the sender, for "emit to others").
    pub exclude: Option<ConnId>,
}

/// Delivers a publication to this node's local connections.
pub trait Deliver: Send + Sync {
    /// Deliver; returns how many local connections got it.
    fn deliver(&self, p: &Publication) -> usize;
}

/// Carries publications to every node, this one included.
pub trait Broker: Send + Sync + 'static {
    /// Publish; returns local deliveries made synchronously (remote ones are not counted).
    fn publish(&self, p: Publication, local: &dyn Deliver) -> usize;
}

/// The single-node broker: publishing is delivering here.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn publish(&self, p: Publication, local: &dyn Deliver) -> usize {
        local.deliver(&p)
    }
}
