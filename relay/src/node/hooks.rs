//! The hook façade: the one place that calls a tenant's policy. Each method calls its
//! hook, counts and logs a failure by whose fault it was, carries out the actions, and
//! (for ingress) waits until what it kept is durable, so that HTTP, UDP, ws-json and
//! Socket.IO only translate between their wire and these calls.

use std::sync::Arc;

use super::{Lifecycle, Node};
use crate::fault::Fault;
use crate::hub::ConnHandle;
use crate::metrics::Metrics;
use crate::policy::{
    Action, ClientEvent, DisconnectInfo, HandshakeDecision, HandshakeRequest, IngressOutcome,
    IngressRequest, PolicyError,
};
use crate::protocol::{close, Message};
use crate::store::commit::CommitError;
use crate::tenant::Tenant;

/// Why an ingress request was not carried out; each maps to one answer on the wire.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The policy failed (HTTP 500, no UDP reply).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// An offline message it asked to keep was refused or could not be stored (HTTP 503).
    #[error("message not stored: {0}")]
    NotStored(String),
    /// Stored, but the flush that makes it durable failed (HTTP 503).
    #[error("message not stored durably: {0}")]
    NotDurable(#[from] CommitError),
    /// A message could not be handed to the broker: in a cluster, Redis did not take it,
    /// so only this node's connections got it (HTTP 503).
    #[error("message not published: {0}")]
    NotPublished(String),
    /// Over the tenant's `max_pushes_per_sec`: refused before the policy saw it (HTTP
    /// 429 with `Retry-After`).
    #[error("too many pushes: over the tenant's max_pushes_per_sec; retry in {0:?}")]
    RateLimited(std::time::Duration),
}

impl IngressError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            IngressError::Policy(e) => e.fault(),
            IngressError::NotStored(_) | IngressError::NotDurable(_) => Fault::Store,
            IngressError::NotPublished(_) => Fault::Broker,
            IngressError::RateLimited(_) => Fault::Client,
        }
    }
}

impl Node {
    /// Count a failed hook and log it at the level its fault deserves.
    fn hook_failed(&self, tenant: &Tenant, conn: Option<&ConnHandle>, e: &PolicyError) {
        Metrics::inc(&self.metrics.policy_errors);
        let conn = conn.map(|h| h.id.to_string()).unwrap_or_default();
        // The level follows whose fault it was: a plugin's is the tenant's to fix (warn),
        // relay's or a store's is ours (error).
        if e.fault().level() == tracing::Level::ERROR {
            tracing::error!(tenant = %tenant.name, conn, hook = e.hook, failure = ?e.failure, retryable = e.retryable(), "{e}")
        } else {
            tracing::warn!(tenant = %tenant.name, conn, hook = e.hook, failure = ?e.failure, retryable = e.retryable(), "{e}")
        }
    }

    /// A WebSocket handshake or Socket.IO namespace CONNECT: the policy decides. A refusal
    /// is counted here; what it looks like on the wire is the caller's.
    pub async fn handshake(
        &self,
        tenant: &Tenant,
        req: &Arc<HandshakeRequest>,
    ) -> Result<HandshakeDecision, PolicyError> {
        let decision = tenant.policy.on_handshake(req, &*tenant.presence).await;
        match &decision {
            Ok(HandshakeDecision::Reject { .. }) => Metrics::inc(&self.metrics.handshakes_rejected),
            Ok(_) => {}
            Err(e) => self.hook_failed(tenant, None, e),
        }
        decision
    }

    /// A client's message on connection `h`: the event hook, then its actions. With
    /// `answer_ack`, the hook's first reply is taken out and returned for the caller to
    /// send as the client's acknowledgement (Socket.IO).
    pub async fn event(
        &self,
        tenant: &Tenant,
        h: &Arc<ConnHandle>,
        event: &ClientEvent,
        answer_ack: bool,
    ) -> Option<Message> {
        let conn = Self::conn_info(h);
        let mut actions = match tenant
            .policy
            .on_event(&conn, event, &*tenant.presence)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // A tenant failing closed does not keep connections it cannot police.
                if matches!(e.failure, crate::policy::Failure::CircuitOpen(_)) {
                    Metrics::inc(&self.metrics.plugin_breaker_closes);
                    h.disconnect(close::TRY_AGAIN_LATER, "plugin unavailable");
                    return None;
                }
                self.hook_failed(tenant, Some(h), &e);
                return None;
            }
        };
        let mut ack = None;
        if answer_ack {
            if let Some(i) = actions
                .iter()
                .position(|a| matches!(a, Action::Reply { .. }))
            {
                if let Action::Reply { message } = actions.remove(i) {
                    ack = Some(message);
                }
            }
        }
        self.execute(tenant, Some(h), actions).await;
        ack
    }

    /// A backend's push over HTTP or UDP: the ingress hook, its actions, and the answer
    /// only once every offline message it kept is durable.
    pub async fn ingress(
        &self,
        tenant: &Tenant,
        req: &IngressRequest,
    ) -> Result<IngressOutcome, IngressError> {
        if let Some(Err(wait)) = tenant.pushes.as_ref().map(|b| b.take()) {
            Metrics::inc(&self.metrics.pushes_rate_limited);
            return Err(IngressError::RateLimited(wait));
        }
        let mut out = match tenant.policy.on_ingress(req, &*tenant.presence).await {
            Ok(out) => out,
            Err(e) => {
                self.hook_failed(tenant, None, &e);
                return Err(e.into());
            }
        };
        let done = self
            .execute(tenant, None, std::mem::take(&mut out.actions))
            .await;
        if let Some(e) = done.store_error {
            return Err(IngressError::NotStored(e));
        }
        if let Some(e) = done.publish_error {
            return Err(IngressError::NotPublished(e));
        }
        if done.stored > 0 {
            if let Err(e) = self.committer.durable().await {
                tracing::error!(tenant = %tenant.name, error = %e, "flushing offline messages failed");
                return Err(e.into());
            }
        }
        Ok(out)
    }

    /// A connection ended: forget it, call the disconnect webhook for an identified
    /// connection, run the disconnect hook and its actions.
    pub async fn disconnected(&self, tenant: &Tenant, h: &ConnHandle, info: &DisconnectInfo) {
        let ci = Self::conn_info(h);
        tenant.hub.unregister(h);
        if ci.user.is_some() {
            self.lifecycle(tenant, Lifecycle::Disconnect, &ci.id);
        }
        match tenant
            .policy
            .on_disconnect(&ci, info, &*tenant.presence)
            .await
        {
            Ok(actions) => {
                self.execute(tenant, None, actions).await;
            }
            Err(e) => self.hook_failed(tenant, Some(h), &e),
        }
    }
}
