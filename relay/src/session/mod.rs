//! A WebSocket session: handshake through the tenant's policy, then the read
//! loop (fragments, limits, ping/pong, close handshake, idle and
//! authentication deadlines) beside the batching [`writer`].

pub mod engineio;
mod lazy;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{OpCode, WebSocketError};
use hyper::body::Incoming;
use hyper::Request;
use std::future::Future;
use std::task::Poll;
use tokio::io::AsyncRead;

use tokio::time::Instant;

use crate::hub::{ConnHandle, ConnId, Link, Watcher};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::policy::{DisconnectInfo, HandshakeDecision, HandshakeRequest};
use crate::protocol::{close, frame};
use crate::store::Mailbox;
use crate::tenant::Tenant;
use crate::transport::{ConnSlot, Peer};
use crate::web::{insert_headers, switching_protocols, text_response, HttpResponse};

/// How long a session waits for the peer's close frame after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

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
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return text_response(400, &format!("bad websocket handshake: {e}\n")),
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
    let Ok(mut decision) = node.handshake(&tenant, &hreq).await else {
        return text_response(500, "policy error\n");
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
    let mut resp = switching_protocols(resp);
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
    let mut rd = lazy::LazyReader::new(r, tenant.config.max_message_bytes);

    let (h, rx) = ConnHandle::new(
        id,
        remote,
        tenant.codec.clone(),
        tenant.config.outbound_queue,
        tenant.config.outbound_queue_bytes,
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
        idle: (cfg_ms(tenant.config.idle_timeout_ms)),
        ping: (cfg_ms(tenant.config.ping_interval_ms)),
        auth: Some((
            Instant::now() + Duration::from_millis(tenant.config.auth_timeout_ms),
            h.clone(),
        )),
        max_message: tenant.config.max_message_bytes,
        auth_notice: tenant
            .auth_timeout_notice
            .as_ref()
            .map(|m| h.codec.encode(m)),
    };
    let mut sink = JsonSink {
        h: h.clone(),
        tenant: tenant.clone(),
        node: node.clone(),
    };
    // Boxed: inline, the loop's state machine made this task's future ~1.2 KB bigger than
    // the two apart (idle memory per connection is a goal; see docs/BENCHMARKS.md).
    let info = Box::pin(read_loop(&mut rd, &h.link, opts, &node, &mut sink)).await;

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

/// `Some(ms)` unless 0 (disabled).
fn cfg_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The room-history offset a client presents: the Socket.IO auth payload's `offset`
/// (the field socket.io-client's connection-state recovery uses) or the `offset` query
/// parameter. None when the tenant keeps no room history (nothing to recover, and the
/// query is not searched on every handshake).
pub(crate) fn presented_offset(tenant: &Tenant, req: &HandshakeRequest) -> Option<String> {
    if tenant.config.history_max == 0 {
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

fn info(code: Option<u16>, reason: &str) -> DisconnectInfo {
    DisconnectInfo {
        code,
        reason: reason.to_owned(),
    }
}

/// Close code for a read error, or `None` when the peer just went away.
fn error_close(e: &WebSocketError) -> Option<(u16, &'static str)> {
    match e {
        WebSocketError::FrameTooLarge => Some((1009, "message too big")),
        WebSocketError::InvalidUTF8 => Some((1007, "invalid UTF-8")),
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed => None,
        _ => Some((1002, "protocol error")),
    }
}

/// What the read loop enforces besides the WebSocket protocol itself.
pub(crate) struct ReadOpts {
    /// Close (1001) after this much silence.
    pub idle: Option<Duration>,
    /// Send a WebSocket ping after this much silence.
    pub ping: Option<Duration>,
    /// Close (1008) at this instant unless this connection is authenticated by then.
    pub auth: Option<(Instant, Arc<ConnHandle>)>,
    /// Sent just before that close.
    pub auth_notice: Option<Bytes>,
    /// Largest message, all fragments together (1009 beyond).
    pub max_message: usize,
}

/// Where the read loop hands complete messages.
pub(crate) trait MessageSink {
    /// One complete message; `Some` ends the session with that reason (the sink has
    /// queued any close frame itself).
    fn message(
        &mut self,
        binary: bool,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Option<DisconnectInfo>> + Send;
}

/// ws-json: text messages decoded by the tenant's codec and handed to the event hook.
struct JsonSink {
    h: Arc<ConnHandle>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
}

impl MessageSink for JsonSink {
    async fn message(&mut self, binary: bool, payload: Vec<u8>) -> Option<DisconnectInfo> {
        let (h, tenant, node) = (&self.h, &self.tenant, &self.node);
        let m = &node.metrics;
        if binary {
            Metrics::inc(&m.protocol_errors);
            h.link.close_as(close::BINARY_REFUSED);
            return Some(info(Some(close::UNSUPPORTED_DATA), "binary message"));
        }
        let text = match String::from_utf8(payload) {
            Ok(t) => t,
            Err(_) => {
                Metrics::inc(&m.protocol_errors);
                h.link.close_as(close::INVALID_UTF8);
                return Some(info(Some(close::INVALID_PAYLOAD), "invalid UTF-8"));
            }
        };
        Metrics::inc(&m.messages_in);
        let event = tenant.codec.decode_text(text);
        // Boxed: the read loop's state (kept for the connection's life) stays small.
        Box::pin(node.event(tenant, h, &event, false)).await;
        None
    }
}

pub(crate) async fn read_loop<R: AsyncRead + Unpin + Send + 'static, S: MessageSink>(
    rd: &mut lazy::LazyReader<R>,
    h: &Link,
    opts: ReadOpts,
    node: &Arc<Node>,
    sink: &mut S,
) -> DisconnectInfo {
    let m = &node.metrics;
    let mut last_rx = Instant::now();
    let mut pinged_at: Option<Instant> = None;
    let mut close_deadline: Option<Instant> = None;
    let mut fragments: Option<(OpCode, Vec<u8>)> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    let (auth_deadline, auth_conn) = match &opts.auth {
        Some((at, c)) => (*at, Some(c.clone())),
        None => (far(), None),
    };
    let authed = || auth_conn.as_ref().is_none_or(|c| c.is_authenticated());
    // One timer for the earliest deadline (each timer is ~100 bytes of every connection's
    // state), reset when that changes; which deadline it was is worked out on waking.
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;

    /// What woke the read loop.
    enum Woke<T> {
        Frame(T),
        Killed,
        Closing,
        Timer,
    }

    loop {
        let res = loop {
            let closing = h.is_closing();
            let idle_at = opts.idle.filter(|_| !closing).map(|d| last_rx + d);
            let ping_at = opts
                .ping
                .filter(|_| pinged_at.is_none() && !closing)
                .map(|d| last_rx + d);
            let auth_at = (!closing && !authed()).then_some(auth_deadline);
            let next = [close_deadline, auth_at, idle_at, ping_at]
                .into_iter()
                .flatten()
                .min();
            if next != armed {
                if let Some(t) = next {
                    timer.as_mut().reset(t);
                }
                armed = next;
            }
            // The frame first, then the link's flags (the reader's waker is registered
            // with the link: no per-flag future), then the timer.
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = rd.poll_frame(cx) {
                    return Poll::Ready(Woke::Frame(r));
                }
                match h.watch(Watcher::Reader, cx) {
                    (true, _) => return Poll::Ready(Woke::Killed),
                    (_, true) if close_deadline.is_none() => return Poll::Ready(Woke::Closing),
                    _ => {}
                }
                if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Frame(r) => break r,
                Woke::Killed => return info(Some(h.close_code()), "aborted"),
                Woke::Closing => close_deadline = Some(Instant::now() + CLOSE_WAIT),
                Woke::Timer => {
                    armed = None;
                    let now = Instant::now();
                    if close_deadline.is_some_and(|t| t <= now) {
                        return info(Some(h.close_code()), "no close reply from peer");
                    }
                    if auth_at.is_some_and(|t| t <= now) {
                        if !authed() {
                            Metrics::inc(&m.auth_timeouts);
                            if let Some(n) = &opts.auth_notice {
                                h.send(n.clone());
                            }
                            h.close(1008, "authentication timeout");
                        }
                    } else if idle_at.is_some_and(|t| t <= now) {
                        Metrics::inc(&m.idle_timeouts);
                        h.close(1001, "idle timeout");
                    } else if ping_at.is_some_and(|t| t <= now) {
                        pinged_at = Some(now);
                        h.send_control(frame::encode(frame::OP_PING, b""));
                    }
                }
            }
        };
        let frame = match res {
            Ok(f) => f,
            Err(e) => {
                return match error_close(&e) {
                    Some((code, reason)) => {
                        Metrics::inc(&m.protocol_errors);
                        h.close(code, reason);
                        info(Some(code), reason)
                    }
                    None => info(h.is_closing().then(|| h.close_code()), "connection lost"),
                };
            }
        };
        last_rx = Instant::now();
        pinged_at = None;
        let (fin, opcode) = (frame.fin, frame.opcode);
        let payload: Vec<u8> = frame.payload;
        if matches!(opcode, OpCode::Close | OpCode::Pong) && payload.len() > 125 {
            Metrics::inc(&m.protocol_errors);
            h.close(1002, "control frame too long");
            return info(Some(1002), "control frame too long");
        }
        match opcode {
            OpCode::Close => {
                if h.is_closing() {
                    // The peer answered our close: done.
                    return info(Some(h.close_code()), "closed");
                }
                let (code, reply) = match payload.len() {
                    0 => (None, frame::encode(frame::OP_CLOSE, b"")),
                    1 => (Some(1002), frame::close(1002, "bad close frame")),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !frame::valid_close_code(code) {
                            (Some(1002), frame::close(1002, "invalid close code"))
                        } else if std::str::from_utf8(&payload[2..]).is_err() {
                            (
                                Some(1007),
                                frame::close(1007, "invalid UTF-8 in close reason"),
                            )
                        } else {
                            (Some(code), frame::close(code, ""))
                        }
                    }
                };
                h.send_close(reply, code.unwrap_or(1000));
                return info(code, "closed by peer");
            }
            OpCode::Ping => {
                h.send_control(frame::encode(frame::OP_PONG, &payload));
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary if fragments.is_some() => {
                Metrics::inc(&m.protocol_errors);
                h.close(1002, "expected a continuation frame");
                return info(Some(1002), "expected a continuation frame");
            }
            OpCode::Text | OpCode::Binary if !fin => {
                fragments = Some((opcode, payload));
                continue;
            }
            OpCode::Continuation => {
                let Some((_, buf)) = fragments.as_mut() else {
                    Metrics::inc(&m.protocol_errors);
                    h.close(1002, "unexpected continuation frame");
                    return info(Some(1002), "unexpected continuation frame");
                };
                if buf.len() + payload.len() > opts.max_message {
                    Metrics::inc(&m.protocol_errors);
                    h.close(1009, "message too big");
                    return info(Some(1009), "message too big");
                }
                buf.extend_from_slice(&payload);
                if !fin {
                    continue;
                }
            }
            OpCode::Text | OpCode::Binary => {}
        }
        let (opcode, payload) = match (opcode, fragments.take()) {
            (OpCode::Continuation, Some(f)) => f,
            (op, _) => (op, payload),
        };
        if h.is_closing() {
            continue; // closing: messages after our close frame are dropped
        }
        // Boxed: the hook's future exists only while a message is handled, so an idle
        // connection does not carry its space.
        if let Some(end) = Box::pin(sink.message(opcode == OpCode::Binary, payload)).await {
            return end;
        }
    }
}
