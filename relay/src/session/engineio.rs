//! The Socket.IO wire profile: Engine.IO sessions (v4, and v3 for socket.io-client
//! 1.x/2.x, chosen by the `EIO` query parameter) over HTTP long-polling and WebSocket,
//! with the polling → WebSocket upgrade, and the Socket.IO packets inside them.
//!
//! One session is one client: a [`Link`] (its outbound queue) shared by one hub
//! connection per namespace it joined. Everything a client sends, over whichever
//! transport, goes through one channel to the session's driver task, which runs the
//! policy hooks in order, keeps the heartbeat and ends the session. Outbound messages
//! are Engine.IO packet records (see [`RecordsBuf`](crate::protocol::engineio::RecordsBuf)), encoded once per
//! namespace and framed by the transport that carries them: a WebSocket frame per packet,
//! or a polling payload of the client's version.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use fastwebsockets::OpCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::writer::{self, Framing};
use super::{apply_decision, info, read_loop, MessageSink, ReadOpts, CLOSE_WAIT};
use crate::hub::{queue, ConnHandle, ConnId, Link, Outbound};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::policy::{Action, ClientEvent, DisconnectInfo, HandshakeDecision, HandshakeRequest};
use crate::protocol::engineio::{decode_poll, encode_poll, text_record, EioIn};
use crate::protocol::socketio::{self, insert_binary, packet_records, SioPacket, SioType};
use crate::protocol::Message;
use crate::tenant::Tenant;
use crate::transport::websocket::Origins;
use crate::transport::{ConnSlot, Peer};
use crate::web::text_response;

/// Open Engine.IO sessions of a tenant, by session id.
pub type Sessions = DashMap<ConnId, Arc<EioSession>>;

/// Packets a session's driver may have waiting from its transports.
const INBOUND: usize = 256;
/// Most binary attachments one packet may announce.
const MAX_ATTACHMENTS: usize = 64;
/// How long a WebSocket upgrade may take between its probe and its upgrade packet.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// The transport a session uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Polling,
    /// Probe answered over WebSocket; polling is being paused.
    Upgrading,
    WebSocket,
}

/// What transports hand the driver.
#[derive(Debug)]
enum Event {
    Packet(EioIn),
    /// The WebSocket ended (or a polling request went wrong): end the session.
    TransportClosed(DisconnectInfo),
}

/// One Engine.IO session (one client).
pub struct EioSession {
    sid: ConnId,
    v3: bool,
    b64: bool,
    link: Arc<Link>,
    /// The outbound queue's receiver, held by whichever transport writes now.
    rx: Mutex<Option<queue::Receiver<Outbound>>>,
    inbound: mpsc::Sender<Event>,
    transport: Mutex<Transport>,
    /// Wakes a pending poll when an upgrade starts (it answers with a noop).
    upgrade: Notify,
    /// Cancelled when the driver has ended the session.
    ended: CancellationToken,
    /// The first request's details, for the handshake hook.
    path: String,
    query: String,
    headers: http::HeaderMap,
    remote: SocketAddr,
    tls: bool,
    /// A polling session counts against its listener's connection limits.
    _slot: Arc<ConnSlot>,
}

impl std::fmt::Debug for EioSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EioSession")
            .field("sid", &self.sid)
            .finish()
    }
}

impl EioSession {
    fn transport(&self) -> Transport {
        self.transport
            .lock()
            .map(|t| *t)
            .unwrap_or(Transport::WebSocket)
    }

    fn set_transport(&self, t: Transport) {
        if let Ok(mut g) = self.transport.lock() {
            *g = t;
        }
    }

    fn take_rx(&self) -> Option<queue::Receiver<Outbound>> {
        self.rx.lock().ok().and_then(|mut g| g.take())
    }

    fn put_rx(&self, rx: queue::Receiver<Outbound>) {
        if let Ok(mut g) = self.rx.lock() {
            *g = Some(rx);
        }
    }
}

/// The request's Engine.IO parameters.
struct Params {
    v3: bool,
    websocket: bool,
    sid: Option<String>,
    b64: bool,
}

/// An Engine.IO error answer: `{"code":…,"message":…}` with status 400 (403 for code 4).
fn eio_error(code: u8, message: &str) -> Response<Full<Bytes>> {
    let status = if code == 4 { 403 } else { 400 };
    let mut r = text_response(
        status,
        &json!({"code": code, "message": message}).to_string(),
    );
    set(&mut r, "content-type", "application/json");
    r
}

fn set(r: &mut Response<Full<Bytes>>, k: &'static str, v: &str) {
    if let Ok(v) = http::HeaderValue::try_from(v) {
        r.headers_mut().insert(k, v);
    }
}

/// Whether a request on a socket.io tenant's route is an Engine.IO request (an `EIO`
/// parameter, or a WebSocket upgrade); other requests go to HTTP ingress.
pub fn is_engine_request(req: &Request<Incoming>) -> bool {
    fastwebsockets::upgrade::is_upgrade_request(req)
        || req
            .uri()
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "EIO"))
}

/// Answer an Engine.IO request: handshake, poll, post, or WebSocket (new or upgrade).
pub async fn handle(
    req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    origins: &Origins,
    max_body: usize,
    peer: Peer,
) -> Response<Full<Bytes>> {
    let Peer { remote, tls, slot } = peer;
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !origins.allowed(req.headers()) {
        Metrics::inc(&node.metrics.handshakes_rejected);
        return eio_error(4, "Forbidden");
    }
    let mut resp = if req.method() == Method::OPTIONS {
        preflight(&req)
    } else {
        route(req, tenant, node, sessions, max_body, remote, tls, slot).await
    };
    if let Some(o) = origin {
        set(&mut resp, "access-control-allow-origin", &o);
        set(&mut resp, "access-control-allow-credentials", "true");
    }
    resp
}

/// CORS preflight of a browser's polling POST.
fn preflight(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut r = text_response(204, "");
    set(&mut r, "access-control-allow-methods", "GET, POST, OPTIONS");
    let asked = req
        .headers()
        .get("access-control-request-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("content-type")
        .to_owned();
    set(&mut r, "access-control-allow-headers", &asked);
    set(&mut r, "access-control-max-age", "86400");
    r
}

#[allow(clippy::too_many_arguments)]
async fn route(
    req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    max_body: usize,
    remote: SocketAddr,
    tls: bool,
    slot: Arc<ConnSlot>,
) -> Response<Full<Bytes>> {
    let q: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let v3 = match q.get("EIO").map(String::as_str) {
        Some("4") => false,
        Some("3") => true,
        _ => return eio_error(5, "Unsupported protocol version"),
    };
    let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
    let websocket = match q.get("transport").map(String::as_str) {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return eio_error(0, "Transport unknown"),
    };
    if websocket != is_upgrade {
        return eio_error(3, "Bad request");
    }
    let p = Params {
        v3,
        websocket,
        sid: q.get("sid").cloned(),
        b64: q.get("b64").is_some_and(|v| v == "1" || v == "true"),
    };
    let Some(sid) = &p.sid else {
        if !p.websocket && req.method() != Method::GET {
            return eio_error(2, "Bad handshake method");
        }
        return open(req, tenant, node, sessions, &p, remote, tls, slot).await;
    };
    let session = ConnId::parse(sid).and_then(|id| sessions.get(&id).map(|s| s.clone()));
    let Some(session) = session.filter(|s| s.v3 == p.v3) else {
        return eio_error(1, "Session ID unknown");
    };
    if p.websocket {
        return upgrade(req, tenant, node, session, slot).await;
    }
    match *req.method() {
        Method::GET => poll(session).await,
        Method::POST => post(req, session, max_body).await,
        _ => eio_error(2, "Bad handshake method"),
    }
}

/// The open packet's data.
fn open_packet(tenant: &Tenant, sid: ConnId, v3: bool, upgrades: bool) -> String {
    let c = &tenant.config;
    let mut o = json!({
        "sid": sid.to_string(),
        "upgrades": if upgrades { vec!["websocket"] } else { vec![] },
        "pingInterval": c.ping_interval_ms,
        "pingTimeout": c.ping_timeout_ms,
    });
    if !v3 {
        o["maxPayload"] = json!(c.max_message_bytes);
    }
    format!("0{o}")
}

/// A new session: a polling handshake answers with the open packet; a WebSocket one
/// upgrades and sends it as the first frame.
#[allow(clippy::too_many_arguments)]
async fn open(
    mut req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    p: &Params,
    remote: SocketAddr,
    tls: bool,
    slot: Arc<ConnSlot>,
) -> Response<Full<Bytes>> {
    let sid = ConnId::random();
    let (link, rx) = Link::new(
        sid,
        tenant.config.outbound_queue,
        tenant.config.outbound_queue_bytes,
        node.metrics.clone(),
    );
    let (tx, inbound) = mpsc::channel(INBOUND);
    let session = Arc::new(EioSession {
        sid,
        v3: p.v3,
        b64: p.b64,
        link: link.clone(),
        rx: Mutex::new(Some(rx)),
        inbound: tx,
        transport: Mutex::new(if p.websocket {
            Transport::WebSocket
        } else {
            Transport::Polling
        }),
        upgrade: Notify::new(),
        ended: CancellationToken::new(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or("").to_owned(),
        headers: req.headers().clone(),
        remote,
        tls,
        _slot: slot,
    });
    let open = open_packet(&tenant, sid, p.v3, !p.websocket);
    let ws = if p.websocket {
        match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(x) => Some(x),
            Err(e) => return text_response(400, &format!("bad websocket handshake: {e}\n")),
        }
    } else {
        None
    };
    sessions.insert(sid, session.clone());
    Metrics::inc(&node.metrics.connections_total);
    node.metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if ws.is_some() {
        link.send(text_record(&open));
    }
    node.shutdown.tracker.spawn(drive(
        session.clone(),
        tenant.clone(),
        node.clone(),
        sessions,
        inbound,
    ));
    match ws {
        Some((resp, fut)) => {
            let (parts, _) = resp.into_parts();
            let s = session.clone();
            let tracker = node.shutdown.tracker.clone();
            tracker.spawn(async move {
                match fut.await {
                    Ok(ws) => websocket(ws.into_inner(), s, tenant, node, false).await,
                    Err(e) => {
                        let reason = format!("upgrade failed: {e}");
                        let _ = s
                            .inbound
                            .send(Event::TransportClosed(info(None, &reason)))
                            .await;
                    }
                }
            });
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        None => {
            let (ct, body) = encode_poll([&text_record(&open)[..]], p.v3, p.b64);
            let mut r = Response::new(Full::new(Bytes::from(body)));
            set(&mut r, "content-type", ct);
            r
        }
    }
}

/// A long-poll: answer with everything queued, waiting for at least one packet (or an
/// upgrade, which answers with a noop, or the end of the session, which answers `1`).
async fn poll(s: Arc<EioSession>) -> Response<Full<Bytes>> {
    if s.transport() == Transport::WebSocket {
        return eio_error(3, "Bad request");
    }
    if s.transport() == Transport::Upgrading {
        // The client has not seen the probe's answer yet and polls on: answer soon (with a
        // noop when nothing is queued) so it can pause polling.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(mut rx) = s.take_rx() else {
        // Engine.IO allows one pending poll per session.
        return eio_error(3, "Bad request");
    };
    let upgrade = s.upgrade.notified();
    tokio::pin!(upgrade);
    upgrade.as_mut().enable();
    let mut batch = Vec::new();
    if s.transport() == Transport::Polling && !s.ended.is_cancelled() {
        tokio::select! {
            _ = rx.recv_many(&mut batch, 512) => {}
            _ = &mut upgrade => {}
            _ = s.ended.cancelled() => {}
        }
    }
    // Take whatever else is ready without waiting.
    while let Some(item) = rx.try_recv() {
        batch.push(item);
    }
    s.put_rx(rx);
    let taken: usize = batch.iter().map(|o| o.bytes().len()).sum();
    s.link.dequeued(taken);
    let close = text_record("1");
    let noop = text_record("6");
    let mut items: Vec<&[u8]> = Vec::new();
    let mut closed = false;
    let mut written = Vec::new();
    for o in &mut batch {
        match o {
            Outbound::Frame(b) => items.push(b),
            Outbound::Control(_) => {}
            Outbound::Written(f) => {
                written.push(std::mem::replace(f, Box::new(|| ())));
            }
            Outbound::Close(_) => {
                closed = true;
                break;
            }
        }
    }
    if closed || (items.is_empty() && s.ended.is_cancelled()) {
        items.push(&close);
        // The client learns of the close now: end the session if the driver has not yet.
        let _ = s
            .inbound
            .try_send(Event::TransportClosed(info(None, "closed by server")));
    } else if items.is_empty() {
        items.push(&noop);
    }
    let (ct, body) = encode_poll(items, s.v3, s.b64);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    set(&mut r, "content-type", ct);
    // The response carries everything queued before these: as written as polling gets.
    written.into_iter().for_each(|f| f());
    r
}

/// A polling POST: packets from the client.
async fn post(
    req: Request<Incoming>,
    s: Arc<EioSession>,
    max_body: usize,
) -> Response<Full<Bytes>> {
    if s.transport() == Transport::WebSocket {
        return eio_error(3, "Bad request");
    }
    let binary = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                let _ = s
                    .inbound
                    .send(Event::TransportClosed(info(None, "payload too large")))
                    .await;
                return text_response(413, "payload too large\n");
            }
            return text_response(400, "body read failed\n");
        }
    };
    let packets = match decode_poll(&body, s.v3, binary) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("malformed polling payload: {e}");
            let _ = s
                .inbound
                .send(Event::TransportClosed(info(None, &reason)))
                .await;
            return eio_error(3, "Bad request");
        }
    };
    for p in packets {
        if s.inbound.send(Event::Packet(p)).await.is_err() {
            return eio_error(1, "Session ID unknown");
        }
    }
    let mut r = text_response(200, "ok");
    set(&mut r, "content-type", "text/html");
    r
}

/// A WebSocket request carrying a session id: the upgrade of a polling session.
async fn upgrade(
    mut req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    s: Arc<EioSession>,
    slot: Arc<ConnSlot>,
) -> Response<Full<Bytes>> {
    if s.transport() != Transport::Polling {
        return eio_error(3, "Bad request");
    }
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return text_response(400, &format!("bad websocket handshake: {e}\n")),
    };
    let tracker = node.shutdown.tracker.clone();
    tracker.spawn(async move {
        let _slot = slot;
        match fut.await {
            Ok(ws) => websocket(ws.into_inner(), s, tenant, node, true).await,
            Err(e) => tracing::debug!(error = %e, "engine.io upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// Forwards a WebSocket's messages to the session's driver.
struct EngineSink {
    tx: mpsc::Sender<Event>,
    v3: bool,
    metrics: Arc<Metrics>,
    link: Arc<Link>,
}

impl MessageSink for EngineSink {
    async fn message(&mut self, binary: bool, payload: Vec<u8>) -> Option<DisconnectInfo> {
        let packet = if binary {
            if self.v3 {
                // Engine.IO v3 binary frames start with the packet type (4, message).
                match payload.split_first() {
                    Some((4, rest)) => EioIn::Binary(rest.to_vec()),
                    _ => {
                        Metrics::inc(&self.metrics.protocol_errors);
                        self.link
                            .close(1003, "binary frame is not a message packet");
                        return Some(info(Some(1003), "bad binary frame"));
                    }
                }
            } else {
                EioIn::Binary(payload)
            }
        } else {
            match String::from_utf8(payload) {
                Ok(t) => EioIn::Text(t),
                Err(_) => {
                    Metrics::inc(&self.metrics.protocol_errors);
                    self.link.close(1007, "invalid UTF-8");
                    return Some(info(Some(1007), "invalid UTF-8"));
                }
            }
        };
        if self.tx.send(Event::Packet(packet)).await.is_err() {
            return Some(info(None, "session ended"));
        }
        None
    }
}

/// Run a session's WebSocket: for an upgrade, the probe exchange first; then the writer
/// (which takes the outbound queue over from polling) and the read loop.
async fn websocket<S>(io: S, s: Arc<EioSession>, tenant: Arc<Tenant>, node: Arc<Node>, probe: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = tokio::io::split(io);
    let mut rd = super::lazy::LazyReader::new(r, tenant.config.max_message_bytes);
    if probe {
        // `2probe` → `3probe`, then the client pauses polling and sends `5` (upgrade).
        let ok = tokio::time::timeout(UPGRADE_TIMEOUT, async {
            let mut probed = false;
            loop {
                let f = match rd.read_frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(sid = %s.sid, error = %e, "websocket upgrade: read failed");
                        return None;
                    }
                };
                tracing::trace!(sid = %s.sid, opcode = ?f.opcode, payload = ?String::from_utf8_lossy(&f.payload), "upgrade frame");
                if f.opcode != OpCode::Text {
                    return None;
                }
                match (&*f.payload, probed) {
                    (b"2probe", _) => {
                        let pong = crate::protocol::frame::text(b"3probe");
                        w.write_all(&pong).await.ok()?;
                        w.flush().await.ok()?;
                        if !probed {
                            probed = true;
                            s.set_transport(Transport::Upgrading);
                            s.upgrade.notify_waiters();
                        }
                    }
                    (b"5", true) => return Some(()),
                    _ => return None,
                }
            }
        })
        .await;
        if !matches!(ok, Ok(Some(()))) {
            // A failed upgrade leaves the session on polling.
            if s.transport() == Transport::Upgrading {
                s.set_transport(Transport::Polling);
            }
            tracing::debug!(sid = %s.sid, "websocket upgrade abandoned");
            return;
        }
        s.set_transport(Transport::WebSocket);
    }
    // Take the queue over (a poll being answered gives it back within moments).
    let rx = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(rx) = s.take_rx() {
                break Some(rx);
            }
            if Instant::now() > deadline || s.ended.is_cancelled() {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let Some(rx) = rx else {
        let _ = s
            .inbound
            .send(Event::TransportClosed(info(None, "transport busy")))
            .await;
        return;
    };
    let metrics = node.metrics.clone();
    let writer = node.shutdown.tracker.spawn(writer::run_framed(
        w,
        rx,
        s.link.clone(),
        metrics.clone(),
        Framing::EngineIo { v3: s.v3 },
    ));
    let opts = ReadOpts {
        idle: None, // the Engine.IO heartbeat watches liveness
        ping: None,
        auth: None,
        auth_notice: None,
        max_message: tenant.config.max_message_bytes,
    };
    let mut sink = EngineSink {
        tx: s.inbound.clone(),
        v3: s.v3,
        metrics: metrics.clone(),
        link: s.link.clone(),
    };
    let end = Box::pin(read_loop(&mut rd, &s.link, opts, &node, &mut sink)).await;
    let _ = s.inbound.send(Event::TransportClosed(end)).await;
    let abort = writer.abort_handle();
    if !s.link.is_closing() && !s.link.is_killed() {
        s.link.abort(1000);
    }
    if tokio::time::timeout(CLOSE_WAIT, writer).await.is_err() {
        abort.abort();
    }
}

/// The session's driver: heartbeat, Socket.IO packets, hooks, and the end of the session.
async fn drive(
    s: Arc<EioSession>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    mut rx: mpsc::Receiver<Event>,
) {
    let mut d = Driver {
        s: s.clone(),
        tenant: tenant.clone(),
        node: node.clone(),
        sessions,
        sockets: HashMap::new(),
        pending: None,
    };
    let cfg = &tenant.config;
    let interval = Duration::from_millis(cfg.ping_interval_ms);
    let timeout = Duration::from_millis(cfg.ping_timeout_ms);
    let auth_at = Instant::now() + Duration::from_millis(cfg.auth_timeout_ms);
    let mut auth_checked = false;
    // v4: the server pings every `interval` and wants a pong within `timeout`.
    // v3: the client pings; the next ping is due within `interval + timeout`.
    let mut next_ping = Instant::now() + interval;
    let mut pong_due: Option<Instant> = None;
    let mut ping_due = Instant::now() + interval + timeout;
    let shutdown = node.shutdown.token.clone();
    if s.v3 && tenant.namespaces.iter().any(|(n, _)| n == "/") {
        // Socket.IO v2 connects every client to `/` without a CONNECT packet.
        d.connect("/", None, None).await;
    }
    let end: DisconnectInfo = loop {
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Packet(p)) => {
                    if let Some(end) = d.packet(p, &mut pong_due, &mut ping_due, interval + timeout).await {
                        break end;
                    }
                }
                Some(Event::TransportClosed(i)) => break i,
                None => break info(None, "session ended"),
            },
            _ = s.link.killed() => break info(Some(s.link.close_code()), "aborted"),
            _ = shutdown.cancelled() => {
                s.link.close(1001, "server shutting down");
                break info(Some(1001), "server shutting down");
            }
            _ = sleep_until(next_ping), if !s.v3 && pong_due.is_none() => {
                s.link.send(text_record("2"));
                pong_due = Some(Instant::now() + timeout);
            }
            _ = sleep_until(pong_due.unwrap_or(far)), if pong_due.is_some() => {
                s.link.close(1000, "ping timeout");
                break info(None, "ping timeout");
            }
            _ = sleep_until(ping_due), if s.v3 => {
                s.link.close(1000, "ping timeout");
                break info(None, "ping timeout");
            }
            _ = sleep_until(auth_at), if !auth_checked => {
                auth_checked = true;
                if let Some(end) = d.auth_deadline() {
                    break end;
                }
            }
        }
        if !s.v3 && pong_due.is_none() && Instant::now() >= next_ping {
            next_ping = Instant::now() + interval;
        }
    };
    d.finish(end).await;
}

struct Driver {
    s: Arc<EioSession>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    /// The tenant's open sessions (this one leaves it when it ends).
    sessions: Arc<Sessions>,
    /// Connected namespaces.
    sockets: HashMap<String, Arc<ConnHandle>>,
    /// A binary packet waiting for its attachments.
    pending: Option<(SioPacket, Vec<Vec<u8>>)>,
}

impl Driver {
    fn protocol_error(&self, why: &str) -> Option<DisconnectInfo> {
        Metrics::inc(&self.node.metrics.protocol_errors);
        tracing::debug!(sid = %self.s.sid, why, "engine.io protocol error");
        self.s.link.close(1002, why);
        Some(info(Some(1002), why))
    }

    async fn packet(
        &mut self,
        p: EioIn,
        pong_due: &mut Option<Instant>,
        ping_due: &mut Instant,
        v3_window: Duration,
    ) -> Option<DisconnectInfo> {
        let text = match p {
            EioIn::Binary(data) => {
                let Some((_, atts)) = self.pending.as_mut() else {
                    return self.protocol_error("binary packet without a binary event");
                };
                atts.push(data);
                if let Some((p, atts)) = self.pending.take_if(|(p, a)| a.len() >= p.attachments) {
                    return self.socketio(p, atts).await;
                }
                return None;
            }
            EioIn::Text(t) => t,
        };
        let (kind, rest) = text.split_at(text.chars().next().map_or(0, char::len_utf8));
        match kind {
            "2" => {
                // v3 heartbeat (and any client ping): answer with a pong.
                *ping_due = Instant::now() + v3_window;
                self.s.link.send(text_record(&format!("3{rest}")));
                None
            }
            "3" => {
                *pong_due = None;
                None
            }
            "4" => {
                if self.pending.is_some() {
                    return self.protocol_error("text packet while attachments are due");
                }
                match SioPacket::decode(rest) {
                    Ok(p) if p.attachments > MAX_ATTACHMENTS => {
                        self.protocol_error("too many attachments")
                    }
                    Ok(p) if p.attachments > 0 => {
                        self.pending = Some((p, Vec::new()));
                        None
                    }
                    Ok(p) => self.socketio(p, Vec::new()).await,
                    Err(e) => self.protocol_error(&format!("malformed socket.io packet: {e}")),
                }
            }
            "1" => Some(info(None, "closed by client")),
            "5" | "6" => None,
            _ => self.protocol_error("unknown engine.io packet"),
        }
    }

    /// Send a Socket.IO packet (with attachments) to the client.
    fn send(&self, p: &SioPacket, atts: &[Vec<u8>]) {
        self.s.link.send(packet_records(p, atts));
    }

    /// Refuse a namespace: CONNECT_ERROR `{"message", "data"?}` (v4) or, for v2 clients,
    /// the message string (the object when there is data), which their `error` event gets.
    fn connect_error(&self, nsp: &str, message: &str, data: Option<Value>) {
        let payload = match (self.s.v3, data) {
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

    async fn socketio(&mut self, mut p: SioPacket, atts: Vec<Vec<u8>>) -> Option<DisconnectInfo> {
        Metrics::inc(&self.node.metrics.messages_in);
        match p.kind {
            SioType::Connect => {
                // v2 clients put the namespace's query after `?`.
                let (nsp, query) = match p.nsp.split_once('?') {
                    Some((n, q)) => (n.to_owned(), Some(q.to_owned())),
                    None => (p.nsp.clone(), None),
                };
                if !self.sockets.contains_key(&nsp) {
                    self.connect(&nsp, query, p.data.take()).await;
                }
                None
            }
            SioType::Disconnect => {
                if let Some(h) = self.sockets.remove(&p.nsp) {
                    self.disconnected(&h, info(None, "client namespace disconnect"))
                        .await;
                }
                None
            }
            SioType::Event | SioType::BinaryEvent | SioType::Ack | SioType::BinaryAck => {
                let Some(h) = self.sockets.get(&p.nsp).cloned() else {
                    tracing::debug!(sid = %self.s.sid, nsp = %p.nsp, "packet for a namespace not connected: ignored");
                    return None;
                };
                let text = p.encode();
                let Some(Value::Array(mut args)) = p.data.take() else {
                    return self.protocol_error("event without an argument array");
                };
                for a in args.iter_mut() {
                    if !insert_binary(a, &atts) {
                        return self.protocol_error("placeholder for a missing attachment");
                    }
                }
                let is_event = matches!(p.kind, SioType::Event | SioType::BinaryEvent);
                let name = if is_event {
                    match args.first() {
                        Some(Value::String(_)) => match args.remove(0) {
                            Value::String(n) => Some(n),
                            _ => None,
                        },
                        _ => return self.protocol_error("event without a name"),
                    }
                } else {
                    if p.id.is_none() {
                        return self.protocol_error("acknowledgement without an id");
                    }
                    None
                };
                let ev = ClientEvent {
                    name,
                    data: Some(Value::Array(args)),
                    text,
                    ack: p.id,
                };
                self.event(&h, &ev, is_event.then_some(p.id).flatten())
                    .await;
                None
            }
            SioType::ConnectError => self.protocol_error("CONNECT_ERROR from a client"),
        }
    }

    /// The event hook; with `ack`, its first reply answers the client's acknowledgement.
    async fn event(&self, h: &Arc<ConnHandle>, ev: &ClientEvent, ack: Option<u64>) {
        let answer = Box::pin(self.node.event(&self.tenant, h, ev, ack.is_some())).await;
        if let (Some(id), Some(message)) = (ack, answer) {
            self.ack(h, id, &message);
        }
    }

    /// Answer a client's acknowledgement with a message's data as the one argument.
    fn ack(&self, h: &ConnHandle, id: u64, m: &Message) {
        let nsp = self
            .sockets
            .iter()
            .find(|(_, s)| s.id == h.id)
            .map_or("/", |(n, _)| n.as_str());
        let (mut p, atts) = socketio::message_packet(nsp, m);
        // An ack carries the arguments only (no event name).
        if let Some(Value::Array(a)) = p.data.as_mut() {
            a.remove(0);
        }
        p.kind = if atts.is_empty() {
            SioType::Ack
        } else {
            SioType::BinaryAck
        };
        p.id = Some(id);
        self.send(&p, &atts);
    }

    /// A namespace CONNECT: the handshake hook decides.
    async fn connect(&mut self, nsp: &str, query: Option<String>, auth: Option<Value>) {
        let (tenant, node, s) = (self.tenant.clone(), self.node.clone(), self.s.clone());
        let Some(codec) = tenant
            .namespaces
            .iter()
            .find(|(n, _)| n == nsp)
            .map(|(_, c)| c.clone())
        else {
            self.connect_error(nsp, "Invalid namespace", None);
            return;
        };
        // The v2 root socket has the session's id; other sockets get their own.
        let id = if s.v3 && nsp == "/" {
            s.sid
        } else {
            ConnId::random()
        };
        let hreq = Arc::new(HandshakeRequest {
            conn: id.to_string(),
            path: s.path.clone(),
            query: query.unwrap_or_else(|| s.query.clone()),
            headers: s.headers.clone(),
            remote: s.remote,
            tls: s.tls,
            namespace: Some(nsp.to_owned()),
            auth,
        });
        let recover = super::presented_offset(&tenant, &hreq);
        let Ok(decision) = node.handshake(&tenant, &hreq).await else {
            self.connect_error(nsp, "policy error", None);
            return;
        };
        if let HandshakeDecision::Reject {
            body,
            status,
            actions,
            ..
        } = &decision
        {
            if !actions.is_empty() {
                // The policy speaks to the refused namespace itself (no CONNECT_ERROR,
                // no CONNECT): only its replies are sent.
                for a in actions {
                    if let Action::Reply { message } = a {
                        s.link.send(codec.encode(message));
                    }
                }
                return;
            }
            let body = if body.trim().is_empty() {
                // No text from the policy: the status's reason phrase ("Forbidden").
                hyper::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("refused")
                    .to_owned()
            } else {
                body.clone()
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
            return;
        }
        let h = ConnHandle::attach(id, s.remote, codec, s.link.clone());
        tenant.hub.register(h.clone());
        self.sockets.insert(nsp.to_owned(), h.clone());
        // CONNECT first, so the client is connected before the decision's actions reach it.
        let data = (!s.v3).then(|| json!({"sid": id.to_string()}));
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
        Box::pin(apply_decision(&tenant, &node, &h, decision, recover)).await;
        tracing::debug!(tenant = %tenant.name, sid = %s.sid, conn = %id, nsp, "socket.io connected");
    }

    /// At the authentication deadline: namespaces still unauthenticated are disconnected;
    /// a session with no namespace left (or none ever joined) ends.
    fn auth_deadline(&mut self) -> Option<DisconnectInfo> {
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
        if late.len() == self.sockets.len() {
            for n in &late {
                if let Some(h) = self.sockets.get(n) {
                    if let Some(p) = h.codec.disconnect_packet() {
                        self.s.link.send(p);
                    }
                }
            }
            self.s.link.close(1008, "authentication timeout");
            return Some(info(Some(1008), "authentication timeout"));
        }
        for n in late {
            if let Some(h) = self.sockets.remove(&n) {
                if let Some(p) = h.codec.disconnect_packet() {
                    self.s.link.send(p);
                }
                let (tenant, node) = (self.tenant.clone(), self.node.clone());
                let tracker = node.shutdown.tracker.clone();
                tracker.spawn(async move {
                    let i = info(Some(1008), "authentication timeout");
                    node.disconnected(&tenant, &h, &i).await;
                });
            }
        }
        None
    }

    /// A namespace socket ended: forget it and run the disconnect hook.
    async fn disconnected(&self, h: &Arc<ConnHandle>, why: DisconnectInfo) {
        self.node.disconnected(&self.tenant, h, &why).await;
    }

    /// End the session: every namespace socket disconnects (hooks run), the session is
    /// forgotten, and a waiting poll answers with a close packet.
    async fn finish(mut self, end: DisconnectInfo) {
        let s = self.s.clone();
        self.sessions.remove(&s.sid);
        for (_, h) in std::mem::take(&mut self.sockets) {
            self.disconnected(&h, end.clone()).await;
        }
        s.ended.cancel();
        self.node
            .metrics
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if s.transport() != Transport::WebSocket && !s.link.is_closing() {
            s.link.close(1000, "");
        }
        tracing::debug!(tenant = %self.tenant.name, sid = %s.sid, reason = %end.reason, "engine.io session ended");
    }
}
