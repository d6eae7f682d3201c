//! `open`: the built-in development policy. Anyone may connect, join any room
//! and push; there is no authentication. Never use it in production.
//!
//! Client messages (ws-json, event field `event`):
//! `{"event":"join","room":"r"}`, `{"event":"leave","room":"r"}`,
//! `{"event":"emit","room":"r","data":…,"exclude_self":true}` (or `rooms`, `user`, `conn`, `broadcast`),
//! `{"event":"login","user":"u"}`, `{"event":"presence","room":"r"}`, `{"event":"whoami"}`,
//! `{"event":"close","code":4000}`, `{"event":"echo","data":…}` (replies with the data),
//! `{"event":"ask","id":7,"data":…}` (sends `question` asking for an acknowledgement with
//! id 7; the client's answer comes back as `answered`).
//!
//! Socket.IO clients emit the same objects as the first argument, with the event as the
//! Socket.IO event name: `socket.emit("join", {room: "r"})`; replies are emitted as events
//! named after their `event` field, or answer the client's ack callback when it gave one.
//! Handshake query: `user=u&rooms=a,b`. Settings: `require_user = true` refuses handshakes without `user` (401); `require_login = true` defers
//! authentication to the `login` event (to exercise the authentication deadline).
//! Ingress: `GET|POST <prefix>/push` with `room`/`rooms`/`user`/`conn`/`broadcast`,
//! `event`, `data` (query, form or JSON body), and `offline=1` to keep the message
//! (marked `"offline": true`) for one user or room with nobody online — answered once it
//! is durable; `GET <prefix>/presence?room=r`;
//! UDP datagrams carry the same JSON object as a `/push` body.

use serde_json::{json, Map, Value};

use super::PolicyError;
use super::{
    Action, BoxFuture, ClientEvent, ConnInfo, HandshakeDecision, HandshakeRequest, IngressOutcome,
    IngressRequest, IngressSource, Policy,
};
use crate::hub::{Presence, Target};
use crate::protocol::Message;

/// The development policy. See the module docs for its little protocol.
#[derive(Debug, Clone, Default)]
pub struct OpenPolicy {
    /// Defer authentication to a `login` event.
    pub require_login: bool,
    /// Refuse handshakes without a `user` query parameter (HTTP 401).
    pub require_user: bool,
}

impl OpenPolicy {
    /// Build from the tenant's `settings` table.
    pub fn from_settings(settings: &toml::Table) -> Result<Self, String> {
        let mut p = OpenPolicy::default();
        for (k, v) in settings {
            match (k.as_str(), v) {
                ("require_login", toml::Value::Boolean(b)) => p.require_login = *b,
                ("require_user", toml::Value::Boolean(b)) => p.require_user = *b,
                _ => {
                    return Err(format!(
                        "open policy: unknown or mistyped setting {k:?} (known: require_login, require_user; both bool)"
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// A reply; Socket.IO clients get it as an event named after its `event` field.
fn reply(data: Value) -> Action {
    let event = data.get("event").and_then(Value::as_str).map(str::to_owned);
    Action::Reply {
        message: Message {
            event,
            data,
            ack: None,
            spread: false,
            position: None,
        },
    }
}

fn error(msg: &str) -> Vec<Action> {
    vec![reply(json!({"event": "error", "error": msg}))]
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The target named by `room`, `rooms`, `user`, `conn` or `broadcast`.
fn target(o: &Map<String, Value>) -> Option<Target> {
    let rooms: Vec<String> = [o.get("room"), o.get("rooms")]
        .into_iter()
        .flat_map(str_list)
        .collect();
    if !rooms.is_empty() {
        return Some(Target::Rooms(rooms));
    }
    if let Some(u) = o.get("user").and_then(Value::as_str) {
        return Some(Target::User(u.to_owned()));
    }
    if let Some(c) = o.get("conn").and_then(Value::as_str) {
        return Some(Target::Connection(c.to_owned()));
    }
    match o.get("broadcast") {
        Some(Value::Bool(true)) => Some(Target::Tenant),
        Some(Value::String(s)) if s == "1" || s == "true" => Some(Target::Tenant),
        _ => None,
    }
}

fn online(t: &Target, p: &dyn Presence) -> usize {
    match t {
        Target::Rooms(r) => r.iter().map(|r| p.room_count(r)).sum(),
        Target::User(u) => p.user_connections(u).len(),
        Target::Connection(c) => usize::from(p.connection_exists(c)),
        Target::Tenant => p.connection_count(),
    }
}

impl OpenPolicy {
    fn event(&self, conn: &ConnInfo, ev: &ClientEvent, presence: &dyn Presence) -> Vec<Action> {
        if ev.name.is_none() {
            if let Some(id) = ev.ack {
                // A Socket.IO client acknowledged a `question`.
                let args = ev.data.clone().unwrap_or(Value::Null);
                return vec![reply(json!({"event": "answered", "id": id, "args": args}))];
            }
        }
        let o = match ev.data.as_ref() {
            Some(Value::Object(o)) => Some(o),
            // Socket.IO: the arguments; the first one is the object.
            Some(Value::Array(a)) => a.first().and_then(Value::as_object),
            _ => None,
        };
        let Some(o) = o else {
            return error("messages are JSON objects with an \"event\" field");
        };
        let name = ev.name.as_deref().unwrap_or("");
        if !conn.authenticated && name != "login" {
            return error("log in first: {\"event\":\"login\",\"user\":\"...\"}");
        }
        match name {
            "login" => match o.get("user").and_then(Value::as_str) {
                Some(u) if !u.is_empty() => vec![
                    Action::SetIdentity {
                        user: Some(u.to_owned()),
                        data: None,
                        conn: None,
                    },
                    reply(json!({"event": "login", "ok": true, "conn": conn.id, "user": u})),
                ],
                _ => error("login needs a non-empty \"user\""),
            },
            "join" | "leave" => join_or_leave(name == "join", o),
            "emit" => emit(conn, o),
            "presence" => match o.get("room").and_then(Value::as_str) {
                Some(r) => vec![reply(presence_json(r, presence, Some("presence")))],
                None => error("presence needs \"room\""),
            },
            "echo" => vec![reply(
                json!({"event": "echo", "data": o.get("data").cloned().unwrap_or(Value::Null)}),
            )],
            "ask" => match o.get("id").and_then(Value::as_u64) {
                Some(id) => vec![Action::Reply {
                    message: Message {
                        event: Some("question".into()),
                        data: o.get("data").cloned().unwrap_or(Value::Null),
                        ack: Some(id),
                        spread: false,
                        position: None,
                    },
                }],
                None => error("ask needs a numeric \"id\""),
            },
            "whoami" => vec![reply(
                json!({"event": "whoami", "conn": conn.id, "user": conn.user}),
            )],
            "close" => {
                let code = o.get("code").and_then(Value::as_u64).unwrap_or(1000);
                match u16::try_from(code) {
                    Ok(code) if (1000..5000).contains(&code) => vec![Action::Close {
                        code,
                        reason: "requested".into(),
                        conn: None,
                    }],
                    _ => error("close code must be 1000..4999"),
                }
            }
            "" => error("missing \"event\" field"),
            other => error(&format!("unknown event {other:?}")),
        }
    }

    /// `/push` and UDP: parameters → an emit, answered with how many connections are online for it.
    fn push(&self, o: &Map<String, Value>, presence: &dyn Presence) -> IngressOutcome {
        let Some(target) = target(o) else {
            return IngressOutcome::json(
                400,
                &json!({"ok": false, "error": "need one of room, rooms, user, conn or broadcast"}),
                vec![],
            );
        };
        let Some(data) = o.get("data").cloned() else {
            return IngressOutcome::json(
                400,
                &json!({"ok": false, "error": "need \"data\""}),
                vec![],
            );
        };
        let event = o
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_owned();
        let online = online(&target, presence);
        let keep = matches!(o.get("offline"), Some(Value::Bool(true)))
            || matches!(o.get("offline").and_then(Value::as_str), Some("1" | "true"));
        if keep && online == 0 {
            let (user, room) = match &target {
                Target::User(u) => (Some(u.clone()), None),
                Target::Rooms(r) if r.len() == 1 => (None, Some(r[0].clone())),
                _ => return bad_request("offline=1 needs one user or one room".into()),
            };
            let message = Message {
                event: Some(event.clone()),
                data: json!({"event": event, "data": data, "offline": true}),
                ack: None,
                spread: false,
                position: None,
            };
            return IngressOutcome::json(
                200,
                &json!({"ok": true, "online": 0, "stored": true}),
                vec![Action::StoreOffline {
                    user,
                    room,
                    message,
                }],
            );
        }
        let message = Message {
            event: Some(event.clone()),
            data: json!({"event": event, "data": data}),
            ack: None,
            spread: false,
            position: None,
        };
        IngressOutcome::json(
            200,
            &json!({"ok": true, "online": online}),
            vec![Action::Emit {
                target,
                message,
                exclude_sender: false,
            }],
        )
    }
}

/// Most members listed in a presence answer (the count is always exact).
const MAX_MEMBERS_LISTED: usize = 1000;

fn presence_json(room: &str, presence: &dyn Presence, event: Option<&str>) -> Value {
    let mut members = presence.room_members(room);
    let truncated = members.len() > MAX_MEMBERS_LISTED;
    members.truncate(MAX_MEMBERS_LISTED);
    let mut v = json!({"room": room, "count": presence.room_count(room), "members": members, "truncated": truncated});
    if let (Some(e), Value::Object(o)) = (event, &mut v) {
        o.insert("event".into(), Value::String(e.into()));
    }
    v
}

fn bad_request(msg: String) -> IngressOutcome {
    IngressOutcome::json(400, &json!({"ok": false, "error": msg}), vec![])
}

impl Policy for OpenPolicy {
    fn on_handshake<'a>(
        &'a self,
        req: &'a std::sync::Arc<HandshakeRequest>,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<HandshakeDecision, PolicyError>> {
        Box::pin(async move {
            if self.require_login {
                return Ok(HandshakeDecision::Defer { actions: vec![] });
            }
            let user = req.query_param("user").filter(|u| !u.is_empty());
            if self.require_user && user.is_none() {
                return Ok(HandshakeDecision::Reject {
                    status: 401,
                    headers: vec![("x-relay-error".into(), "user required".into())],
                    body: json!({"error": "a user query parameter is required"}).to_string(),
                    actions: vec![],
                });
            }
            let rooms = req
                .query_param("rooms")
                .map(|r| {
                    r.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            Ok(HandshakeDecision::Accept {
                user,
                data: Value::Null,
                rooms,
                headers: vec![],
                actions: vec![],
            })
        })
    }

    fn on_event<'a>(
        &'a self,
        conn: &'a ConnInfo,
        event: &'a ClientEvent,
        presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<Vec<Action>, PolicyError>> {
        Box::pin(async move { Ok(self.event(conn, event, presence)) })
    }

    fn on_ingress<'a>(
        &'a self,
        req: &'a IngressRequest,
        presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<IngressOutcome, PolicyError>> {
        Box::pin(async move {
            let (method, path, headers) = match &req.source {
                IngressSource::Udp => {
                    return Ok(match serde_json::from_slice::<Value>(&req.body) {
                        Ok(Value::Object(o)) => self.push(&o, presence),
                        Ok(_) => bad_request("datagram must be a JSON object".into()),
                        Err(e) => bad_request(format!("datagram is not JSON: {e}")),
                    });
                }
                IngressSource::Http {
                    method,
                    path,
                    headers,
                    ..
                } => (method, path, headers),
            };
            match (method.as_str(), path.as_str()) {
                ("GET" | "POST", "/push") => {
                    let is_json = headers
                        .iter()
                        .any(|(k, v)| k == "content-type" && v.starts_with("application/json"));
                    let o = if is_json {
                        match serde_json::from_slice::<Value>(&req.body) {
                            Ok(Value::Object(o)) => o,
                            Ok(_) => return Ok(bad_request("JSON body must be an object".into())),
                            Err(e) => return Ok(bad_request(format!("invalid JSON body: {e}"))),
                        }
                    } else {
                        req.params()
                            .into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect()
                    };
                    Ok(self.push(&o, presence))
                }
                ("GET", "/presence") => {
                    let room = req
                        .params()
                        .into_iter()
                        .find(|(k, _)| k == "room")
                        .map(|(_, v)| v);
                    Ok(match room {
                        Some(r) => {
                            IngressOutcome::json(200, &presence_json(&r, presence, None), vec![])
                        }
                        None => bad_request("need ?room=".into()),
                    })
                }
                (_, "/push" | "/presence") => Ok(IngressOutcome::json(
                    405,
                    &json!({"ok": false, "error": "method not allowed"}),
                    vec![],
                )),
                _ => Ok(IngressOutcome::json(
                    404,
                    &json!({"ok": false, "error": format!("no such endpoint {path:?}; try /push or /presence")}),
                    vec![],
                )),
            }
        })
    }
}

/// `join` / `leave`: the rooms, then the answer (`joined` / `left`).
fn join_or_leave(join: bool, o: &Map<String, Value>) -> Vec<Action> {
    let rooms: Vec<String> = [o.get("room"), o.get("rooms")]
        .into_iter()
        .flat_map(str_list)
        .collect();
    if rooms.is_empty() {
        return error("join/leave needs \"room\" or \"rooms\"");
    }
    let ack = reply(json!({"event": if join {"joined"} else {"left"}, "rooms": rooms}));
    let act = if join {
        Action::Join { rooms, conn: None }
    } else {
        Action::Leave { rooms, conn: None }
    };
    vec![act, ack]
}

/// `emit`: the data, wrapped with who sent it, to the named target.
fn emit(conn: &ConnInfo, o: &Map<String, Value>) -> Vec<Action> {
    let Some(target) = target(o) else {
        return error("emit needs one of room, rooms, user, conn or broadcast");
    };
    let message = Message {
        event: Some("message".into()),
        ack: None,
        spread: false,
        position: None,
        data: json!({
            "event": "message",
            "from": conn.id,
            "user": conn.user,
            "data": o.get("data").cloned().unwrap_or(Value::Null),
        }),
    };
    let exclude_sender = matches!(o.get("exclude_self"), Some(Value::Bool(true)));
    vec![Action::Emit {
        target,
        message,
        exclude_sender,
    }]
}
