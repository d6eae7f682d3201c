//! The bare Engine.IO session (`profile = "engine.io"`, for engine.io-client users): one
//! Engine.IO session is one connection. Its handshake hook runs when the session opens
//! (an Engine.IO handshake has no later packet to wait for); a refusal ends the session
//! at once with a close packet. Every Engine.IO message, text or binary, is a client
//! event; every message to the connection is one Engine.IO message
//! ([`EioCodec`](crate::protocol::engineio::EioCodec)). See docs/socketio.md.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::{apply_decision, disconnect_info, presented_offset};
use crate::hub::ConnHandle;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::policy::{ClientEvent, HandshakeDecision, HandshakeRequest};
use crate::protocol::close;
use crate::tenant::Tenant;
use crate::transport::engineio::{
    next_step, EioSession, Event, Heartbeat, Received, Sessions, Step,
};
use crate::transport::End;

/// Drive one bare Engine.IO session until it ends.
pub(super) async fn drive(
    s: Arc<EioSession>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    mut rx: mpsc::Receiver<Event>,
    mut hb: Heartbeat,
) {
    let link = s.link().clone();
    let h = match admit(&s, &tenant, &node).await {
        Some(h) => h,
        None => {
            link.close_as(close::Close {
                code: close::POLICY_VIOLATION,
                reason: "handshake refused",
            });
            finish(
                &s,
                &tenant,
                &node,
                &sessions,
                None,
                End::new(None, "refused"),
            )
            .await;
            return;
        }
    };
    let auth_at = Instant::now() + Duration::from_millis(tenant.config.timers.auth_timeout_ms);
    let mut auth_checked = h.is_authenticated();
    let shutdown = node.shutdown.token.clone();
    let mut rate = tenant.conn_rate();
    let end: End = loop {
        tokio::select! {
            step = next_step(&mut rx, &link, &mut hb, &shutdown) => {
                let data = match step {
                    Step::End(end) => break end,
                    Step::Received(Received::Message(text)) => Value::String(text),
                    Step::Received(Received::Binary(b)) => json!({"$binary": B64.encode(b)}),
                    Step::Received(Received::Handled) => continue,
                    Step::Received(Received::Closed(end)) => {
                        s.closed_by_client();
                        break end;
                    }
                    Step::Received(Received::Malformed(why)) => {
                        Metrics::inc(&node.metrics.protocol_errors);
                        link.close(close::PROTOCOL_ERROR, why);
                        break End::new(Some(close::PROTOCOL_ERROR), why);
                    }
                };
                Metrics::inc(&node.metrics.messages_in);
                let len = match &data {
                    Value::String(t) => t.len(),
                    other => other["$binary"].as_str().map_or(0, |b| b.len() / 4 * 3),
                };
                let close = |c: close::Close| link.close(c.code, c.reason);
                match crate::session::over_rate(&mut rate, len, &node.metrics, close) {
                    Some(Some(end)) => break end,
                    Some(None) => continue,
                    None => {}
                }
                let text = match &data {
                    Value::String(t) => t.clone(),
                    _ => String::new(),
                };
                let ev = ClientEvent { name: None, data: Some(data), text, ack: None, namespace: None };
                Box::pin(node.event(&tenant, &h, &ev, false)).await;
            },
            _ = sleep_until(auth_at), if !auth_checked => {
                auth_checked = true;
                if !h.is_authenticated() {
                    Metrics::inc(&node.metrics.auth_timeouts);
                    if let Some(notice) = &tenant.auth_timeout_notice {
                        h.send(h.codec.encode(notice));
                    }
                    link.close_as(close::AUTH_TIMEOUT);
                    break End::closed(close::AUTH_TIMEOUT);
                }
            }
        }
    };
    finish(&s, &tenant, &node, &sessions, Some(h), end).await;
}

/// The handshake hook, with the session's opening request; the connection when accepted.
async fn admit(s: &EioSession, tenant: &Arc<Tenant>, node: &Arc<Node>) -> Option<Arc<ConnHandle>> {
    let opening = s.opening();
    let hreq = Arc::new(HandshakeRequest {
        conn: s.sid().to_string(),
        path: opening.path.clone(),
        query: opening.query.clone(),
        headers: opening.headers.clone(),
        remote: opening.remote,
        tls: opening.tls,
        namespace: None,
        auth: None,
    });
    let recover = presented_offset(tenant, &hreq);
    let decision = node.handshake(tenant, &hreq).await.ok()?;
    if let HandshakeDecision::Reject { status, .. } = &decision {
        Metrics::inc(&node.metrics.handshakes_rejected);
        tracing::debug!(tenant = %tenant.name, sid = %s.sid(), status, "engine.io session refused");
        return None;
    }
    let h = ConnHandle::attach(
        s.sid(),
        opening.remote,
        tenant.codec.clone(),
        s.link().clone(),
    );
    tenant.hub.register(h.clone());
    Box::pin(apply_decision(tenant, node, &h, decision, recover)).await;
    Some(h)
}

/// The session ended: its disconnect hook runs, it is forgotten, a waiting poll answers.
async fn finish(
    s: &Arc<EioSession>,
    tenant: &Arc<Tenant>,
    node: &Arc<Node>,
    sessions: &Arc<Sessions>,
    h: Option<Arc<ConnHandle>>,
    end: End,
) {
    crate::transport::engineio::forget(sessions, s, &node.shutdown.tracker);
    if let Some(h) = h {
        node.disconnected(tenant, &h, &disconnect_info(end.clone()))
            .await;
    }
    s.end();
    node.metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(tenant = %tenant.name, sid = %s.sid(), reason = %end.reason, "engine.io session ended");
}
