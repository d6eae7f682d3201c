//! Engine.IO transports (v4, and v3 for socket.io-client 1.x/2.x, chosen by the `EIO`
//! query parameter): HTTP long-polling ([`polling`]), WebSocket ([`websocket`]) and the
//! polling → WebSocket upgrade ([`upgrade`]). They know nothing of Socket.IO.
//!
//! One [`EioSession`] is one client: a [`Link`] (its outbound queue) and one channel of
//! [`Event`]s to whoever drives the session. Everything the client sends, over whichever
//! transport, arrives there in order; the driver answers Engine.IO's own packets with a
//! [`Heartbeat`] and gives messages their meaning. What it queues on the link are
//! Engine.IO packet records ([`RecordsBuf`](crate::protocol::engineio::RecordsBuf)),
//! framed by the transport that carries them: a WebSocket frame per packet, or a
//! polling payload of the client's version.

mod heartbeat;
pub mod polling;
pub use polling::forget;
pub mod upgrade;
pub mod websocket;

pub use heartbeat::{next_step, Heartbeat, Received, Step};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::websocket::Origins;
use super::{ConnSlot, End, Peer};
use crate::hub::{queue, ConnId, Link, Outbound};
use crate::metrics::Metrics;
use crate::protocol::close;
use crate::protocol::engineio::{encode_poll, text_record, EioIn};
use crate::web::{set_header, text_response, HttpResponse};

/// Open Engine.IO sessions (of one tenant), by session id.
pub type Sessions = DashMap<ConnId, Arc<EioSession>>;

/// Packets a session's driver may have waiting from its transports.
const INBOUND: usize = 256;

/// What the transports need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// v4: how often the server pings; v3: how often the client pings.
    pub ping_interval: Duration,
    /// How long a ping's answer (v4) or the next ping (v3) may be late.
    pub ping_timeout: Duration,
    /// Largest message (the open packet's `maxPayload`; WebSocket messages beyond close with 1009).
    pub max_message: usize,
    /// Outbound queue bound, in packets…
    pub queue: usize,
    /// …and in bytes.
    pub queue_bytes: usize,
    /// Largest polling POST body.
    pub max_body: usize,
    /// How long a polling POST's body may take to arrive (the listener's
    /// `handshake_timeout_ms`, as for HTTP ingress).
    pub body_timeout: Duration,
}

/// The transports' surroundings: settings, counters, and the tracker of the tasks shutdown
/// waits for.
pub struct Env {
    /// Settings.
    pub settings: Settings,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where transport tasks are spawned.
    pub tracker: TaskTracker,
    /// Which of its first request's headers (lowercase names) a session keeps: those
    /// its hooks may still be shown.
    pub keeps_header: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// The transport a session uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Polling,
    /// Probe answered over WebSocket; polling is being paused.
    Upgrading,
    WebSocket,
}

/// What transports hand the session's driver.
#[derive(Debug)]
pub enum Event {
    /// A packet from the client.
    Packet(EioIn),
    /// The WebSocket ended (or a polling request went wrong): end the session.
    TransportClosed(End),
}

/// The request that opened a session, for the layer above (its handshake hook).
#[derive(Debug)]
pub struct Opening {
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
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
    /// The client ended the session itself (sent a close packet).
    client_closed: std::sync::atomic::AtomicBool,
    /// Polling, after the client's close: its last poll has been answered (`6`).
    final_poll: std::sync::atomic::AtomicBool,
    /// Wakes [`forget`] when that last poll is answered.
    final_polled: Notify,
    /// A WebSocket is upgrading (or has upgraded) this session: a second one is closed.
    upgrade_claimed: std::sync::atomic::AtomicBool,
    /// The first request.
    opening: Opening,
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
    /// The session id.
    pub fn sid(&self) -> ConnId {
        self.sid
    }

    /// Whether the client speaks Engine.IO v3 (socket.io-client 1.x/2.x).
    pub fn v3(&self) -> bool {
        self.v3
    }

    /// The way to the client.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The request that opened the session.
    pub fn opening(&self) -> &Opening {
        &self.opening
    }

    /// The client sent a close packet: the session ends at its request.
    pub fn closed_by_client(&self) {
        self.client_closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the client ended the session itself.
    fn client_closed(&self) -> bool {
        self.client_closed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The driver has ended the session. Its link closes: a WebSocket with a close frame
    /// (also when the client asked, so that its socket and slot are not held open), a
    /// waiting poll with a close packet — or, when the client itself closed, with a noop
    /// (as the reference server answers), the session being gone for what follows.
    pub fn end(&self) {
        self.ended.cancel();
        let noop_answers = self.transport() != Transport::WebSocket && self.client_closed();
        if !self.link.is_closing() && !noop_answers {
            self.link.close(close::NORMAL, "");
        }
    }

    /// Whether the session's transport is a WebSocket (upgraded or from the start).
    pub fn on_websocket(&self) -> bool {
        self.transport() == Transport::WebSocket
    }

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

    /// Tell the driver the transport ended.
    async fn transport_closed(&self, reason: &str) {
        let _ = self
            .inbound
            .send(Event::TransportClosed(End::new(None, reason)))
            .await;
    }
}

/// A session just opened: the driver runs it from its events.
#[derive(Debug)]
pub struct Opened {
    /// The session.
    pub session: Arc<EioSession>,
    /// Its events, in order.
    pub events: mpsc::Receiver<Event>,
}

/// The request's Engine.IO parameters.
struct Params {
    v3: bool,
    websocket: bool,
    sid: Option<String>,
    b64: bool,
}

impl Params {
    /// The parameters, or the Engine.IO error (code and message) to answer with.
    fn parse(req: &Request<Incoming>) -> Result<Self, (u8, &'static str)> {
        let q: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        // The reference server checks the transport first, then the version.
        let websocket = match q.get("transport").map(String::as_str) {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return Err((0, "Transport unknown")),
        };
        let v3 = match q.get("EIO").map(String::as_str) {
            Some("4") => false,
            Some("3") => true,
            _ => return Err((5, "Unsupported protocol version")),
        };
        let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(req);
        if websocket != is_upgrade {
            return Err((3, "Bad request"));
        }
        Ok(Params {
            v3,
            websocket,
            sid: q.get("sid").cloned(),
            b64: q.get("b64").is_some_and(|v| v == "1" || v == "true"),
        })
    }
}

/// An Engine.IO error answer: `{"code":…,"message":…}` with status 400 (403 for code 4).
fn eio_error(code: u8, message: &str) -> HttpResponse {
    let status = if code == 4 { 403 } else { 400 };
    crate::web::json_response(status, &json!({"code": code, "message": message}))
}

/// A polling response body of the session's version, with its content type.
fn poll_response<'a>(
    items: impl IntoIterator<Item = &'a [u8]>,
    v3: bool,
    b64: bool,
) -> HttpResponse {
    let (ct, body) = encode_poll(items, v3, b64);
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    set_header(&mut r, "content-type", ct);
    r
}

/// Whether a request on a socket.io or engine.io tenant's route is an Engine.IO request: on the
/// Engine.IO path (`…/socket.io/` or `…/engine.io/`, valid or not: a bad one gets the reference's 400), with
/// an `EIO` parameter, or a WebSocket upgrade. Other requests go to HTTP ingress.
pub fn is_engine_request(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    fastwebsockets::upgrade::is_upgrade_request(req)
        || path.ends_with("/socket.io/")
        || path.ends_with("/socket.io")
        || path.ends_with("/engine.io/")
        || path.ends_with("/engine.io")
        || req
            .uri()
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "EIO"))
}

/// Answer an Engine.IO request: handshake, poll, post, or WebSocket (new or upgrade). A
/// handshake also returns the session it opened, for the caller to drive.
pub async fn handle(
    req: Request<Incoming>,
    sessions: &Arc<Sessions>,
    env: Arc<Env>,
    origins: &Origins,
    peer: Peer,
) -> (HttpResponse, Option<Opened>) {
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !origins.allowed(req.headers()) {
        Metrics::inc(&env.metrics.handshakes_rejected);
        return (eio_error(4, "Forbidden"), None);
    }
    let (mut resp, opened) = if req.method() == Method::OPTIONS {
        (polling::preflight(&req), None)
    } else {
        route(req, sessions, env, peer).await
    };
    // Cookies cross-site only for origins the operator listed; any other allowed origin
    // gets a CORS answer without credentials (a credentialed request from it fails in
    // the browser, as it should: any site could otherwise act with its visitors' cookies).
    if let Some(o) = origin {
        match origins.listed(&o) {
            true => {
                set_header(&mut resp, "access-control-allow-origin", &o);
                set_header(&mut resp, "access-control-allow-credentials", "true");
            }
            false => set_header(&mut resp, "access-control-allow-origin", "*"),
        }
        set_header(&mut resp, "vary", "origin");
    }
    (resp, opened)
}

async fn route(
    req: Request<Incoming>,
    sessions: &Arc<Sessions>,
    env: Arc<Env>,
    peer: Peer,
) -> (HttpResponse, Option<Opened>) {
    let p = match Params::parse(&req) {
        Ok(p) => p,
        Err((code, message)) => return (eio_error(code, message), None),
    };
    let Some(sid) = &p.sid else {
        if !p.websocket && req.method() != Method::GET {
            return (eio_error(2, "Bad handshake method"), None);
        }
        return match open(req, sessions, env, &p, peer) {
            Ok((resp, opened)) => (resp, Some(opened)),
            Err(resp) => (*resp, None),
        };
    };
    let session = ConnId::parse(sid).and_then(|id| sessions.get(&id).map(|s| s.clone()));
    let Some(session) = session.filter(|s| s.v3 == p.v3) else {
        return (eio_error(1, "Session ID unknown"), None);
    };
    let resp = if p.websocket {
        upgrade::upgrade(req, env, session, peer.slot)
    } else {
        match *req.method() {
            Method::GET => polling::poll(session).await,
            Method::POST => polling::post(req, session, &env.settings).await,
            _ => eio_error(2, "Bad handshake method"),
        }
    };
    (resp, None)
}

/// The open packet's data.
fn open_packet(settings: &Settings, sid: ConnId, v3: bool, upgrades: bool) -> String {
    let mut o = json!({
        "sid": sid.to_string(),
        "upgrades": if upgrades { vec!["websocket"] } else { vec![] },
        "pingInterval": settings.ping_interval.as_millis() as u64,
        "pingTimeout": settings.ping_timeout.as_millis() as u64,
    });
    if !v3 {
        o["maxPayload"] = json!(settings.max_message);
    }
    format!("0{o}")
}

/// A new session: a polling handshake answers with the open packet; a WebSocket one
/// upgrades and sends it as the first frame.
fn open(
    mut req: Request<Incoming>,
    sessions: &Arc<Sessions>,
    env: Arc<Env>,
    p: &Params,
    peer: Peer,
) -> Result<(HttpResponse, Opened), Box<HttpResponse>> {
    // A polling session counts against the listener's limits itself (its requests'
    // connections come and go); a WebSocket session holds its connection's place.
    let slot = match p.websocket {
        true => peer.slot,
        false => match peer.slot.another() {
            Ok(slot) => Arc::new(slot),
            Err(why) => {
                Metrics::inc(&env.metrics.connections_refused);
                return Err(Box::new(text_response(503, &format!("{why}\n"))));
            }
        },
    };
    let sid = ConnId::random();
    let settings = &env.settings;
    let (link, rx) = Link::new(
        sid,
        settings.queue,
        settings.queue_bytes,
        env.metrics.clone(),
    );
    let (tx, events) = mpsc::channel(INBOUND);
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
        client_closed: Default::default(),
        final_poll: Default::default(),
        final_polled: Notify::new(),
        upgrade_claimed: Default::default(),
        opening: Opening {
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
            headers: req
                .headers()
                .iter()
                .filter(|(name, _)| (env.keeps_header)(name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            remote: peer.remote,
            tls: peer.tls,
        },
        _slot: slot,
    });
    let open = open_packet(settings, sid, p.v3, !p.websocket);
    let ws = if p.websocket {
        Some(super::websocket::accept(&mut req)?)
    } else {
        None
    };
    sessions.insert(sid, session.clone());
    let opened = Opened {
        session: session.clone(),
        events,
    };
    let Some((resp, fut)) = ws else {
        return Ok((
            poll_response([&text_record(&open)[..]], p.v3, p.b64),
            opened,
        ));
    };
    link.send(text_record(&open));
    let tracker = env.tracker.clone();
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => websocket::run(ws.into_inner(), session, env, false).await,
            Err(e) => {
                let reason = format!("upgrade failed: {e}");
                session.transport_closed(&reason).await;
            }
        }
    });
    Ok((resp, opened))
}
