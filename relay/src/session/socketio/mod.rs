//! The Socket.IO session: drives one Engine.IO session ([`transport::engineio`]) as a
//! Socket.IO client. One session is one client: a [`Link`](crate::hub::Link) shared by
//! one hub connection per namespace it joined. The driver task takes the client's packets
//! in order (typed: Engine.IO packets answered by the [`Heartbeat`], Socket.IO packets
//! decoded here), runs the hooks, keeps the authentication deadline and ends the session.
//! See docs/socketio.md.

mod namespaces;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::disconnect_info;
use crate::hub::ConnHandle;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::policy::ClientEvent;
use crate::protocol::close;
use crate::protocol::socketio::{self, insert_binary, packet_records, SioPacket, SioType};
use crate::protocol::Message;
use crate::tenant::Tenant;
use crate::transport::engineio::{
    self, next_step, EioSession, Env, Event, Heartbeat, Opened, Received, Sessions, Settings, Step,
};
use crate::transport::websocket::Origins;
use crate::transport::{End, Peer};
use crate::web::HttpResponse;

/// Most binary attachments one packet may announce.
const MAX_ATTACHMENTS: usize = 64;

/// Most namespaces one session may have connected at once (a tenant's patterns may
/// accept any number of them; each is a connection with its own hooks).
const MAX_SESSION_NAMESPACES: usize = 16;

/// What the listener a request came in on allows.
pub struct ListenerRules<'a> {
    /// Browser origins allowed.
    pub origins: &'a Origins,
    /// Largest polling POST body.
    pub max_body: usize,
    /// How long a polling POST's body may take.
    pub body_timeout: Duration,
}

/// Answer an Engine.IO request of a socket.io (or bare engine.io) tenant; a new session
/// gets its driver.
pub async fn handle(
    req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    rules: ListenerRules<'_>,
    peer: Peer,
) -> HttpResponse {
    let ListenerRules {
        origins,
        max_body,
        body_timeout,
    } = rules;
    let c = &tenant.config;
    let env = Arc::new(Env {
        settings: Settings {
            ping_interval: Duration::from_millis(c.timers.ping_interval_ms),
            ping_timeout: Duration::from_millis(c.timers.ping_timeout_ms),
            max_message: c.limits.max_message_bytes,
            queue: c.limits.outbound_queue,
            queue_bytes: c.limits.outbound_queue_bytes,
            max_body,
            body_timeout,
        },
        metrics: node.metrics.clone(),
        tracker: node.shutdown.tracker.clone(),
        keeps_header: {
            let policy = tenant.policy.clone();
            Arc::new(move |name| policy.shows_header(name))
        },
    });
    let (resp, opened) = engineio::handle(req, &sessions, env.clone(), origins, peer).await;
    if let Some(Opened { session, events }) = opened {
        Metrics::inc(&node.metrics.connections_total);
        node.metrics
            .connections_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hb = Heartbeat::new(session.v3(), &env.settings);
        let tracker = node.shutdown.tracker.clone();
        if tenant.config.profile == crate::config::WireProfile::EngineIo {
            tracker.spawn(super::engineio::drive(
                session, tenant, node, sessions, events, hb,
            ));
        } else {
            tracker.spawn(drive(session, tenant, node, sessions, events, hb));
        }
    }
    resp
}

/// The session's driver: heartbeat, Socket.IO packets, hooks, and the end of the session.
async fn drive(
    s: Arc<EioSession>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    sessions: Arc<Sessions>,
    mut rx: mpsc::Receiver<Event>,
    mut hb: Heartbeat,
) {
    let mut d = Driver {
        s: s.clone(),
        tenant: tenant.clone(),
        node: node.clone(),
        sessions,
        sockets: HashMap::new(),
        pending: None,
        rate: tenant.conn_rate(),
    };
    let auth_at = Instant::now() + Duration::from_millis(tenant.config.timers.auth_timeout_ms);
    let mut auth_checked = false;
    let shutdown = node.shutdown.token.clone();
    let link = s.link().clone();
    if s.v3() && tenant.namespace_codec("/").is_some() {
        // Socket.IO v2 connects every client to `/` without a CONNECT packet.
        d.connect("/", None, None).await;
    }
    let end: End = loop {
        tokio::select! {
            step = next_step(&mut rx, &link, &mut hb, &shutdown) => match step {
                Step::Received(r) => {
                    if let Some(end) = d.received(r).await {
                        break end;
                    }
                }
                Step::End(end) => break end,
            },
            _ = sleep_until(auth_at), if !auth_checked => {
                auth_checked = true;
                if let Some(end) = d.auth_deadline() {
                    break end;
                }
            }
        }
    };
    d.finish(end).await;
}

/// A session's Socket.IO state.
struct Driver {
    s: Arc<EioSession>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    /// The tenant's open sessions (this one leaves it when it ends).
    sessions: Arc<Sessions>,
    /// Connected namespaces.
    sockets: HashMap<String, Arc<ConnHandle>>,
    /// A binary packet waiting for its attachments.
    pending: Option<Pending>,
    /// The client's inbound rate limits (all namespaces together).
    rate: crate::rate::ConnRate,
}

/// A binary packet and the attachments received so far. The packet and all its
/// attachments together must fit `max_message_bytes`; a packet for a namespace the
/// session has not connected is counted through and dropped (as the reference server
/// ignores events of namespaces a client is not in), so a session that has connected
/// no namespace holds no attachment at all.
struct Pending {
    packet: SioPacket,
    atts: Vec<Vec<u8>>,
    /// Attachments received (kept or not).
    received: usize,
    /// Bytes of the packet and its attachments so far.
    bytes: usize,
    /// Whether the packet's namespace is connected (else its attachments are dropped).
    keep: bool,
}

impl Driver {
    fn protocol_error(&self, why: &str) -> Option<End> {
        Metrics::inc(&self.node.metrics.protocol_errors);
        tracing::debug!(sid = %self.s.sid(), why, "engine.io protocol error");
        self.s.link().close(close::PROTOCOL_ERROR, why);
        Some(End::new(Some(close::PROTOCOL_ERROR), why))
    }

    /// What the client sent, once Engine.IO has answered its own packets.
    async fn received(&mut self, r: Received) -> Option<End> {
        match r {
            Received::Message(text) => {
                let link = self.s.link();
                let close = |c: close::Close| link.close(c.code, c.reason);
                let m = &self.node.metrics;
                if let Some(end) = super::over_rate(&mut self.rate, text.len(), m, close) {
                    return end;
                }
                self.message(&text).await
            }
            Received::Binary(data) => {
                self.rate.charge(data.len());
                self.attachment(data).await
            }
            Received::Handled => None,
            Received::Closed(end) => {
                self.s.closed_by_client();
                Some(end)
            }
            Received::Malformed(why) => self.protocol_error(why),
        }
    }

    /// A binary message: the next attachment of the pending binary packet.
    async fn attachment(&mut self, data: Vec<u8>) -> Option<End> {
        let max = self.tenant.config.limits.max_message_bytes;
        let Some(pending) = self.pending.as_mut() else {
            return self.protocol_error("binary packet without a binary event");
        };
        pending.received += 1;
        pending.bytes = pending.bytes.saturating_add(data.len());
        if pending.bytes > max {
            self.pending = None;
            Metrics::inc(&self.node.metrics.protocol_errors);
            self.s.link().close_as(close::TOO_BIG);
            return Some(End::closed(close::TOO_BIG));
        }
        if pending.keep {
            pending.atts.push(data);
        }
        let done = self
            .pending
            .take_if(|p| p.received >= p.packet.attachments)?;
        match done.keep {
            true => self.socketio(done.packet, done.atts).await,
            false => None,
        }
    }

    /// A text message: one Socket.IO packet.
    async fn message(&mut self, text: &str) -> Option<End> {
        if self.pending.is_some() {
            return self.protocol_error("text packet while attachments are due");
        }
        match SioPacket::decode(text) {
            Ok(p) if p.attachments > MAX_ATTACHMENTS => self.protocol_error("too many attachments"),
            Ok(p) if p.attachments > 0 => {
                let keep = self.sockets.contains_key(&p.nsp);
                self.pending = Some(Pending {
                    packet: p,
                    atts: Vec::new(),
                    received: 0,
                    bytes: text.len(),
                    keep,
                });
                None
            }
            Ok(p) => self.socketio(p, Vec::new()).await,
            Err(e) => self.protocol_error(&format!("malformed socket.io packet: {e}")),
        }
    }

    /// Send a Socket.IO packet (with attachments) to the client.
    fn send(&self, p: &SioPacket, atts: &[Vec<u8>]) {
        self.s.link().send(packet_records(p, atts));
    }

    async fn socketio(&mut self, mut p: SioPacket, atts: Vec<Vec<u8>>) -> Option<End> {
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
                    self.disconnected(&h, End::new(None, "client namespace disconnect"))
                        .await;
                }
                None
            }
            SioType::Event | SioType::BinaryEvent | SioType::Ack | SioType::BinaryAck => {
                self.event_packet(p, atts).await
            }
            SioType::ConnectError => self.protocol_error("CONNECT_ERROR from a client"),
        }
    }

    /// An event or an acknowledgement: the event hook.
    async fn event_packet(&mut self, mut p: SioPacket, atts: Vec<Vec<u8>>) -> Option<End> {
        let Some(h) = self.sockets.get(&p.nsp).cloned() else {
            tracing::debug!(sid = %self.s.sid(), nsp = %p.nsp, "packet for a namespace not connected: ignored");
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
            namespace: Some(p.nsp.clone()),
        };
        self.event(&h, &ev, is_event.then_some(p.id).flatten())
            .await;
        None
    }

    /// The event hook; with `ack`, its first reply answers the client's acknowledgement.
    async fn event(&self, h: &Arc<ConnHandle>, ev: &ClientEvent, ack: Option<u64>) {
        let answer = Box::pin(self.node.event(&self.tenant, h, ev, ack.is_some())).await;
        if let (Some(id), Some(message)) = (ack, answer) {
            self.ack(h, id, &message);
        }
    }

    /// Answer a client's acknowledgement with a message's data as the one argument (with
    /// `spread`, its elements as the arguments).
    fn ack(&self, h: &ConnHandle, id: u64, m: &Message) {
        let nsp = self
            .sockets
            .iter()
            .find(|(_, s)| s.id == h.id)
            .map_or("/", |(n, _)| n.as_str());
        let mut atts = Vec::new();
        let args = socketio::message_args(m, &mut atts);
        let p = SioPacket {
            kind: if atts.is_empty() {
                SioType::Ack
            } else {
                SioType::BinaryAck
            },
            nsp: nsp.to_owned(),
            id: Some(id),
            attachments: atts.len(),
            data: Some(Value::Array(args)),
        };
        self.send(&p, &atts);
    }

    /// A namespace socket ended: run its disconnect hook.
    async fn disconnected(&self, h: &Arc<ConnHandle>, why: End) {
        let info = disconnect_info(why);
        self.node.disconnected(&self.tenant, h, &info).await;
    }

    /// End the session: every namespace socket disconnects (hooks run), the session is
    /// forgotten, and a waiting poll answers with a close packet.
    async fn finish(mut self, end: End) {
        let s = self.s.clone();
        engineio::forget(&self.sessions, &s, &self.node.shutdown.tracker);
        for (_, h) in std::mem::take(&mut self.sockets) {
            self.disconnected(&h, end.clone()).await;
        }
        s.end();
        self.node
            .metrics
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(tenant = %self.tenant.name, sid = %s.sid(), reason = %end.reason, "engine.io session ended");
    }
}
