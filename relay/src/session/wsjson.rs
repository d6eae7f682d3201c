//! A ws-json session: the WebSocket handshake through the tenant's policy, then the
//! shared read loop handing each text message to the event hook, beside the batching
//! writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use tokio::time::Instant;

use super::{apply_decision, cfg_ms, disconnect_info, presented_offset};
use crate::hub::{ConnHandle, ConnId};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::policy::{HandshakeDecision, HandshakeRequest};
use crate::protocol::close;
use crate::tenant::Tenant;
use crate::transport::websocket::lazy::LazyReader;
use crate::transport::websocket::read::{read_loop, MessageSink, ReadOpts};
use crate::transport::websocket::{self, writer, CLOSE_WAIT};
use crate::transport::{ConnSlot, End, Peer};
use crate::web::{insert_headers, text_response, HttpResponse};

/// Answer a WebSocket upgrade request: ask the policy, then upgrade and spawn the session.
pub async fn handshake(
    mut req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    peer: Peer,
) -> HttpResponse {
    let Peer { remote, tls, slot } = peer;
    // A malformed upgrade is answered 400 before the policy is asked. Rejecting after
    // this is fine: the upgrade only happens if the response is the 101 built here.
    let (mut resp, fut) = match websocket::accept(&mut req) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let id = ConnId::random();
    let hreq = Arc::new(HandshakeRequest {
        conn: id.to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or("").to_owned(),
        // Moved, not copied: the request is done with them.
        headers: std::mem::take(req.headers_mut()),
        remote,
        tls,
        namespace: None,
        auth: None,
    });
    let recover = presented_offset(&tenant, &hreq);
    let mut decision = match node.handshake(&tenant, &hreq).await {
        Ok(d) => d,
        // A plugin that could not run now (its breaker open, no instance free, a missed
        // deadline) may answer later: 503 with Retry-After, not a 500.
        Err(e) if e.retryable() => {
            let mut r = text_response(503, "policy unavailable, retry later\n");
            crate::web::set_header(&mut r, "retry-after", "1");
            return r;
        }
        Err(_) => return text_response(500, "policy error\n"),
    };
    let extra_headers = match &mut decision {
        HandshakeDecision::Reject {
            status,
            headers,
            body,
            ..
        } => {
            let mut resp = text_response(*status, body);
            insert_headers(&mut resp, std::mem::take(headers));
            return resp;
        }
        HandshakeDecision::Accept { headers, .. } => std::mem::take(headers),
        HandshakeDecision::Defer { .. } => Vec::new(),
    };
    drop(hreq);
    insert_headers(&mut resp, extra_headers);
    let tracker = node.shutdown.tracker.clone();
    // Two tasks: this one waits for the upgrade and ends; the session's own task is just
    // `run`, so what only the upgrade needed is not carried for the connection's whole life
    // (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => {
                let session = Session {
                    slot,
                    tenant,
                    id,
                    remote,
                    decision,
                    recover,
                };
                node.shutdown
                    .tracker
                    .spawn(run(ws.into_inner(), node.clone(), Box::new(session)));
            }
            Err(e) => tracing::debug!(%remote, error = %e, "upgrade failed"),
        }
    });
    resp
}

/// What a session starts from (boxed: it is used once, at the start).
struct Session {
    /// The connection counts against the listener's limits until it ends.
    slot: Arc<ConnSlot>,
    tenant: Arc<Tenant>,
    id: ConnId,
    remote: SocketAddr,
    decision: HandshakeDecision,
    recover: Option<String>,
}

/// The session after the upgrade.
async fn run<S>(io: S, node: Arc<Node>, session: Box<Session>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let Session {
        slot: _slot,
        tenant,
        id,
        remote,
        decision,
        recover,
    } = *session;
    let metrics = node.metrics.clone();
    let (r, w) = tokio::io::split(io);
    // fastwebsockets reads (only while the client is sending: an idle connection holds no
    // read buffer); our writer writes pre-encoded frames.
    let mut rd = LazyReader::new(r, tenant.config.limits.max_message_bytes);

    let (h, rx) = ConnHandle::new(
        id,
        remote,
        tenant.codec.clone(),
        tenant.config.limits.outbound_queue,
        tenant.config.limits.outbound_queue_bytes,
        metrics.clone(),
    );
    tenant.hub.register(h.clone());
    // Registered after the shutdown's sweep of the hub? Then close here (see
    // `close_connections_at_shutdown`).
    if node.shutdown.token.is_cancelled() {
        h.link.close_as(close::SHUTDOWN);
    }
    // Whatever happens below (even a panic in a hook), the hub forgets the connection
    // and the gauge comes down.
    let _guard = SessionGuard::new(tenant.clone(), h.clone(), metrics.clone());
    Metrics::inc(&metrics.connections_total);
    let writer = node
        .shutdown
        .tracker
        .spawn(writer::run(w, rx, h.link.clone(), metrics.clone()));

    // Boxed: what runs once at the start need not be part of the state every open
    // connection carries (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    Box::pin(apply_decision(&tenant, &node, &h, decision, recover)).await;
    tracing::debug!(tenant = %tenant.name, conn = %h.id, %remote, "connected");

    let opts = ReadOpts {
        idle: (cfg_ms(tenant.config.timers.idle_timeout_ms)),
        ping: (cfg_ms(tenant.config.timers.ping_interval_ms)),
        auth: Some((
            Instant::now() + Duration::from_millis(tenant.config.timers.auth_timeout_ms),
            h.clone(),
        )),
        max_message: tenant.config.limits.max_message_bytes,
        auth_notice: tenant
            .auth_timeout_notice
            .as_ref()
            .map(|m| h.codec.encode(m)),
    };
    let mut sink = JsonSink {
        h: h.clone(),
        tenant: tenant.clone(),
        node: node.clone(),
        rate: tenant.conn_rate(),
    };
    // Boxed: inline, the loop's state machine made this task's future ~1.2 KB bigger than
    // the two apart (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    let end = Box::pin(read_loop(&mut rd, &h.link, opts, &metrics, &mut sink)).await;
    let info = disconnect_info(end);

    // Boxed like the read loop: what runs once at the end need not be part of the state
    // every connection carries while it is open.
    Box::pin(node.disconnected(&tenant, &h, &info)).await;
    // Let the writer drain what is queued (graceful close) but never wait forever.
    if !h.link.is_closing() && !h.link.is_killed() {
        h.link.abort(info.code.unwrap_or(close::NORMAL));
    }
    let abort = writer.abort_handle();
    if Box::pin(tokio::time::timeout(CLOSE_WAIT, writer))
        .await
        .is_err()
    {
        abort.abort();
    }
    tracing::debug!(tenant = %tenant.name, conn = %h.id, code = ?info.code, reason = %info.reason, "disconnected");
}

/// Unregisters the connection and lowers the open-connections gauge when the session ends.
struct SessionGuard {
    tenant: Arc<Tenant>,
    h: Arc<ConnHandle>,
    metrics: Arc<Metrics>,
}

impl SessionGuard {
    fn new(tenant: Arc<Tenant>, h: Arc<ConnHandle>, metrics: Arc<Metrics>) -> Self {
        metrics
            .connections_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SessionGuard { tenant, h, metrics }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.tenant.hub.unregister(&self.h);
        self.metrics
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// ws-json: text messages decoded by the tenant's codec and handed to the event hook.
struct JsonSink {
    h: Arc<ConnHandle>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    rate: crate::rate::ConnRate,
}

impl MessageSink for JsonSink {
    async fn message(&mut self, binary: bool, payload: Vec<u8>) -> Option<End> {
        let (h, tenant, node) = (&self.h, &self.tenant, &self.node);
        let m = &node.metrics;
        if binary {
            Metrics::inc(&m.protocol_errors);
            h.link.close_as(close::BINARY_REFUSED);
            return Some(End::new(Some(close::UNSUPPORTED_DATA), "binary message"));
        }
        let text = match String::from_utf8(payload) {
            Ok(t) => t,
            Err(_) => {
                Metrics::inc(&m.protocol_errors);
                h.link.close_as(close::INVALID_UTF8);
                return Some(End::closed(close::INVALID_UTF8));
            }
        };
        Metrics::inc(&m.messages_in);
        let close = |c: close::Close| h.disconnect(c.code, c.reason);
        if let Some(end) = super::over_rate(&mut self.rate, text.len(), m, close) {
            return end;
        }
        let event = tenant.codec.decode_text(text);
        // Boxed: the read loop's state (kept for the connection's life) stays small.
        Box::pin(node.event(tenant, h, &event, false)).await;
        None
    }
}
