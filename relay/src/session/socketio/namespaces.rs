//! Namespaces: a client's CONNECT decided by the handshake hook (CONNECT or
//! CONNECT_ERROR in the client's version), and the authentication deadline.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Driver, MAX_SESSION_NAMESPACES};
use crate::hub::{ConnHandle, ConnId};
use crate::metrics::Metrics;
use crate::policy::{Action, HandshakeDecision, HandshakeRequest};
use crate::protocol::close;
use crate::protocol::socketio::{SioPacket, SioType};
use crate::protocol::Codec;
use crate::session::{apply_decision, disconnect_info, presented_offset};
use crate::transport::End;

/// How long a namespace CONNECT may take to be written to a WebSocket before the
/// decision's actions are carried out anyway.
const CONNECT_WRITE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Driver {
    /// Refuse a namespace: CONNECT_ERROR `{"message", "data"?}` (v4) or, for v2 clients,
    /// the message string (the object when there is data), which their `error` event gets.
    fn connect_error(&self, nsp: &str, message: &str, data: Option<Value>) {
        let payload = match (self.s.v3(), data) {
            (true, None) => Value::String(message.to_owned()),
            (_, None) => json!({"message": message}),
            (_, Some(d)) => json!({"message": message, "data": d}),
        };
        self.send(
            &SioPacket {
                kind: SioType::ConnectError,
                nsp: nsp.to_owned(),
                id: None,
                attachments: 0,
                data: Some(payload),
            },
            &[],
        );
    }

    /// A namespace CONNECT: the handshake hook decides.
    pub(super) async fn connect(&mut self, nsp: &str, query: Option<String>, auth: Option<Value>) {
        let (tenant, node, s) = (self.tenant.clone(), self.node.clone(), self.s.clone());
        let Some(codec) = tenant.namespace_codec(nsp) else {
            self.connect_error(nsp, "Invalid namespace", None);
            return;
        };
        if self.sockets.len() >= MAX_SESSION_NAMESPACES {
            self.connect_error(nsp, "Too many namespaces", None);
            return;
        }
        // The v2 root socket has the session's id; other sockets get their own.
        let id = if s.v3() && nsp == "/" {
            s.sid()
        } else {
            ConnId::random()
        };
        let opening = s.opening();
        let hreq = Arc::new(HandshakeRequest {
            conn: id.to_string(),
            path: opening.path.clone(),
            query: query.unwrap_or_else(|| opening.query.clone()),
            headers: opening.headers.clone(),
            remote: opening.remote,
            tls: opening.tls,
            namespace: Some(nsp.to_owned()),
            auth,
        });
        let recover = presented_offset(&tenant, &hreq);
        let decision = match node.handshake(&tenant, &hreq).await {
            Ok(d) => d,
            Err(e) if e.retryable() => {
                self.connect_error(nsp, "policy unavailable, retry later", None);
                return;
            }
            Err(_) => {
                self.connect_error(nsp, "policy error", None);
                return;
            }
        };
        if let HandshakeDecision::Reject {
            body,
            status,
            actions,
            ..
        } = &decision
        {
            self.refused(nsp, &codec, *status, body, actions);
            return;
        }
        let h = ConnHandle::attach(id, opening.remote, codec, s.link().clone());
        tenant.hub.register(h.clone());
        self.sockets.insert(nsp.to_owned(), h.clone());
        // CONNECT first, so the client is connected before the decision's actions reach it.
        let data = (!s.v3()).then(|| json!({"sid": id.to_string()}));
        self.send(
            &SioPacket {
                kind: SioType::Connect,
                nsp: nsp.to_owned(),
                id: None,
                attachments: 0,
                data,
            },
            &[],
        );
        // As the reference server, the CONNECT goes out in a write of its own before what
        // the decision sends (a client that handles one read's frames at once, as the
        // official suite's does, would otherwise miss the first of them).
        // (Over polling, where one response carries both, there is nothing to wait for.)
        let (tx, rx) = tokio::sync::oneshot::channel();
        if s.on_websocket()
            && s.link().when_written(Box::new(move || {
                let _ = tx.send(());
            }))
        {
            let _ = tokio::time::timeout(CONNECT_WRITE_WAIT, rx).await;
        }
        Box::pin(apply_decision(&tenant, &node, &h, decision, recover)).await;
        tracing::debug!(tenant = %tenant.name, sid = %s.sid(), conn = %id, nsp, "socket.io connected");
    }

    /// The handshake hook refused a namespace: its replies when it gave some, else a
    /// CONNECT_ERROR made of its status and body.
    fn refused(
        &self,
        nsp: &str,
        codec: &Arc<dyn Codec>,
        status: u16,
        body: &str,
        actions: &[Action],
    ) {
        if !actions.is_empty() {
            // The policy speaks to the refused namespace itself (no CONNECT_ERROR,
            // no CONNECT): only its replies are sent.
            for a in actions {
                if let Action::Reply { message } = a {
                    self.s.link().send(codec.encode(message));
                }
            }
            return;
        }
        let body = if body.trim().is_empty() {
            // No text from the policy: the status's reason phrase ("Forbidden").
            hyper::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("refused")
                .to_owned()
        } else {
            body.to_owned()
        };
        let body = body.as_str();
        // A JSON object body is the error's data; its `message` (or `error`) the text.
        let (message, data) = match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(o)) => {
                let text = ["message", "error"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str))
                    .unwrap_or(body.trim())
                    .to_owned();
                let only_message = o.len() == 1 && o.contains_key("message");
                (text, (!only_message).then_some(Value::Object(o)))
            }
            _ => (body.trim().to_owned(), None),
        };
        self.connect_error(nsp, &message, data);
    }

    /// At the authentication deadline: namespaces still unauthenticated are disconnected;
    /// a session with no namespace left (or none ever joined) ends.
    pub(super) fn auth_deadline(&mut self) -> Option<End> {
        let late: Vec<String> = self
            .sockets
            .iter()
            .filter(|(_, h)| !h.is_authenticated())
            .map(|(n, _)| n.clone())
            .collect();
        if late.is_empty() && !self.sockets.is_empty() {
            return None;
        }
        Metrics::inc(&self.node.metrics.auth_timeouts);
        if let Some(notice) = &self.tenant.auth_timeout_notice {
            for n in &late {
                if let Some(h) = self.sockets.get(n) {
                    h.send(h.codec.encode(notice));
                }
            }
        }
        let link = self.s.link().clone();
        if late.len() == self.sockets.len() {
            for n in &late {
                if let Some(h) = self.sockets.get(n) {
                    if let Some(p) = h.codec.disconnect_packet() {
                        link.send(p);
                    }
                }
            }
            link.close_as(close::AUTH_TIMEOUT);
            return Some(End::closed(close::AUTH_TIMEOUT));
        }
        for n in late {
            if let Some(h) = self.sockets.remove(&n) {
                if let Some(p) = h.codec.disconnect_packet() {
                    link.send(p);
                }
                let (tenant, node) = (self.tenant.clone(), self.node.clone());
                let tracker = node.shutdown.tracker.clone();
                tracker.spawn(async move {
                    let i = disconnect_info(End::closed(close::AUTH_TIMEOUT));
                    node.disconnected(&tenant, &h, &i).await;
                });
            }
        }
        None
    }
}
