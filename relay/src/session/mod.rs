//! Sessions: what a client's connection means in its wire profile. [`wsjson`] runs a
//! ws-json WebSocket; [`socketio`] drives Socket.IO over the Engine.IO transports, and
//! `engineio` bare Engine.IO sessions (its requests arrive through [`socketio::handle`]). All
//! only translate between their wire and the node's hooks (`Node::handshake`, `event`,
//! `disconnected`).

mod engineio;
pub mod socketio;
pub mod wsjson;

use std::sync::Arc;
use std::time::Duration;

use crate::hub::ConnHandle;
use crate::node::Node;
use crate::policy::{DisconnectInfo, HandshakeDecision, HandshakeRequest};
use crate::store::Mailbox;
use crate::tenant::Tenant;
use crate::transport::End;

/// `Some(ms)` unless 0 (disabled).
fn cfg_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// What the disconnect hook is told of how a transport ended.
fn disconnect_info(end: End) -> DisconnectInfo {
    DisconnectInfo {
        code: end.code,
        reason: end.reason,
    }
}

/// The room-history offset a client presents: the Socket.IO auth payload's `offset`
/// (the field socket.io-client's connection-state recovery uses) or the `offset` query
/// parameter. None when the tenant keeps no room history (nothing to recover, and the
/// query is not searched on every handshake).
pub(crate) fn presented_offset(tenant: &Tenant, req: &HandshakeRequest) -> Option<String> {
    if tenant.config.history.max == 0 {
        return None;
    }
    req.auth
        .as_ref()
        .and_then(|a| a.get("offset"))
        .and_then(|o| o.as_str())
        .map(str::to_owned)
        .or_else(|| req.query_param("offset"))
        .filter(|o| !o.is_empty() && o.len() <= 64)
}

/// Carry out an accepted (or deferred) handshake on a registered connection: identity,
/// session data, rooms (replaying missed history after `recover`), then the decision's
/// actions.
pub(crate) async fn apply_decision(
    tenant: &Arc<Tenant>,
    node: &Arc<Node>,
    h: &Arc<ConnHandle>,
    decision: HandshakeDecision,
    recover: Option<String>,
) {
    if let Ok(mut s) = h.state.lock() {
        s.recover = recover;
    }
    match decision {
        HandshakeDecision::Accept {
            user,
            data,
            rooms,
            actions,
            ..
        } => {
            if let Some(u) = user.as_deref() {
                tenant.hub.set_user(h, Some(u));
                node.settle().await;
            }
            if let Ok(mut s) = h.state.lock() {
                s.data = data;
            }
            h.set_authenticated();
            // Joining replays missed room history and the room's mailbox.
            for r in rooms {
                if let Err(e) = node.join_room(tenant, h, &r).await {
                    tracing::debug!(tenant = %tenant.name, conn = %h.id, room = %r, error = ?e, "join refused");
                }
            }
            // The handshake's own answer (e.g. a login frame), then the user's kept
            // messages in order, before anything else.
            node.execute(tenant, Some(h), actions).await;
            if let Some(u) = user {
                node.lifecycle(tenant, crate::node::Lifecycle::Login, &h.id.to_string());
                node.deliver_offline(tenant, h, Mailbox::User(u)).await;
            }
        }
        HandshakeDecision::Defer { actions } => {
            node.execute(tenant, Some(h), actions).await;
        }
        HandshakeDecision::Reject { .. } => {}
    }
}

/// Apply a connection's inbound rate limit to a message of `len` bytes: `None` to go on,
/// `Some(None)` to drop it (counted), `Some(Some(end))` when the connection is closed
/// (by `close`) for staying over its limit (1008).
pub(crate) fn over_rate(
    rate: &mut crate::rate::ConnRate,
    len: usize,
    m: &crate::metrics::Metrics,
    close: impl FnOnce(crate::protocol::close::Close),
) -> Option<Option<End>> {
    use crate::rate::Verdict;
    if rate.unlimited() {
        return None;
    }
    match rate.check(len) {
        Verdict::Pass => None,
        Verdict::Drop => {
            crate::metrics::Metrics::inc(&m.messages_rate_limited);
            Some(None)
        }
        Verdict::Close => {
            crate::metrics::Metrics::inc(&m.rate_limit_closes);
            let c = crate::protocol::close::RATE_LIMITED;
            close(c);
            Some(Some(End::closed(c)))
        }
    }
}
