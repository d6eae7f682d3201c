//! WIT values ↔ relay's policy types. Everything a plugin returns is checked
//! here: JSON text must parse, statuses must be valid, lists are bounded.

use bytes::Bytes;
use serde_json::Value;

use super::bindings::relay::plugin::types as w;
use crate::hub::Target;
use crate::policy::{
    Action, ClientEvent, ConnInfo, DisconnectInfo, HandshakeDecision, HandshakeRequest,
    IngressOutcome, IngressRequest, IngressSource,
};
use crate::protocol::Message;

/// Most actions one hook may return.
pub const MAX_ACTIONS: usize = 4096;

fn pairs(v: &[(String, String)]) -> Vec<w::Pair> {
    v.iter()
        .map(|(n, v)| w::Pair {
            name: n.clone(),
            value: v.clone(),
        })
        .collect()
}

fn unpairs(v: Vec<w::Pair>) -> Vec<(String, String)> {
    v.into_iter().map(|p| (p.name, p.value)).collect()
}

fn json_text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

fn parse_json(what: &str, s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("{what} is not valid JSON ({e}): {:.80}", s))
}

/// A handshake for the plugin.
pub fn handshake_request(r: &HandshakeRequest) -> w::HandshakeRequest {
    w::HandshakeRequest {
        conn: r.conn.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: pairs(&r.headers),
        remote: r.remote.to_string(),
        tls: r.tls,
        namespace: r.namespace.clone(),
        auth: r.auth.as_ref().map(Value::to_string),
    }
}

/// A connection for the plugin.
pub fn conn_info(c: &ConnInfo) -> w::ConnInfo {
    w::ConnInfo {
        id: c.id.clone(),
        user: c.user.clone(),
        data: json_text(&c.data),
        authenticated: c.authenticated,
        remote: c.remote.to_string(),
    }
}

/// A client event for the plugin.
pub fn client_event(e: &ClientEvent) -> w::ClientEvent {
    w::ClientEvent {
        name: e.name.clone(),
        data: e.data.as_ref().map(Value::to_string),
        text: e.text.clone(),
        ack: e.ack,
    }
}

/// Disconnect details for the plugin.
pub fn disconnect_info(d: &DisconnectInfo) -> w::DisconnectInfo {
    w::DisconnectInfo {
        code: d.code,
        reason: d.reason.clone(),
    }
}

/// An ingress request for the plugin.
pub fn ingress_request(r: &IngressRequest) -> w::IngressRequest {
    let source = match &r.source {
        IngressSource::Http {
            method,
            path,
            query,
            headers,
        } => w::IngressSource::Http(w::HttpRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: pairs(headers),
        }),
        IngressSource::Udp => w::IngressSource::Udp,
    };
    w::IngressRequest {
        source,
        remote: r.remote.to_string(),
        body: r.body.to_vec(),
    }
}

fn message(m: w::Message) -> Result<Message, String> {
    Ok(Message {
        event: m.event,
        data: parse_json("message data", &m.data)?,
        ack: m.ack,
        offset: None,
    })
}

fn target(t: w::Target) -> Target {
    match t {
        w::Target::Connection(c) => Target::Connection(c),
        w::Target::User(u) => Target::User(u),
        w::Target::Rooms(r) => Target::Rooms(r),
        w::Target::Tenant => Target::Tenant,
    }
}

/// The plugin's actions, checked.
pub fn actions(v: Vec<w::Action>) -> Result<Vec<Action>, String> {
    if v.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions returned; at most {MAX_ACTIONS} are allowed",
            v.len()
        ));
    }
    v.into_iter()
        .map(|a| {
            Ok(match a {
                w::Action::Reply(m) => Action::Reply {
                    message: message(m)?,
                },
                w::Action::Emit(e) => Action::Emit {
                    target: target(e.target),
                    message: message(e.message)?,
                    exclude_sender: e.exclude_sender,
                },
                w::Action::Join(m) => Action::Join {
                    rooms: m.rooms,
                    conn: m.conn,
                },
                w::Action::Leave(m) => Action::Leave {
                    rooms: m.rooms,
                    conn: m.conn,
                },
                w::Action::SetIdentity(i) => Action::SetIdentity {
                    user: i.user,
                    data: i
                        .data
                        .as_deref()
                        .map(|d| parse_json("identity data", d))
                        .transpose()?,
                    conn: i.conn,
                },
                w::Action::Close(c) => Action::Close {
                    code: c.code,
                    reason: c.reason,
                    conn: c.conn,
                },
                w::Action::StoreOffline(o) => Action::StoreOffline {
                    user: o.user,
                    room: o.room,
                    message: message(o.message)?,
                },
                w::Action::AppendLog(l) => Action::AppendLog {
                    file: l.file,
                    line: l.line,
                },
                w::Action::Webhook(h) => Action::Webhook {
                    method: h.method,
                    url: h.url,
                    headers: unpairs(h.headers),
                    body: h.body,
                },
            })
        })
        .collect()
}

fn status(s: u16) -> Result<u16, String> {
    if (100..=999).contains(&s) && http::StatusCode::from_u16(s).is_ok() {
        Ok(s)
    } else {
        Err(format!("invalid HTTP status {s}"))
    }
}

/// The plugin's handshake decision, checked.
pub fn decision(d: w::HandshakeDecision) -> Result<HandshakeDecision, String> {
    Ok(match d {
        w::HandshakeDecision::Accept(a) => HandshakeDecision::Accept {
            user: a.user,
            data: match a.data {
                Some(d) => parse_json("accept data", &d)?,
                None => Value::Null,
            },
            rooms: a.rooms,
            headers: unpairs(a.headers),
            actions: actions(a.actions)?,
        },
        w::HandshakeDecision::Defer(v) => HandshakeDecision::Defer {
            actions: actions(v)?,
        },
        w::HandshakeDecision::Reject(r) => HandshakeDecision::Reject {
            status: status(r.status)?,
            headers: unpairs(r.headers),
            body: r.body,
            actions: actions(r.actions)?,
        },
    })
}

/// The plugin's ingress outcome, checked.
pub fn outcome(o: w::IngressOutcome) -> Result<IngressOutcome, String> {
    Ok(IngressOutcome {
        status: status(o.status)?,
        headers: unpairs(o.headers),
        body: Bytes::from(o.body),
        actions: actions(o.actions)?,
    })
}
