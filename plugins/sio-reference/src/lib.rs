//! The reference servers of the official protocol test suites
//! (`socketio/socket.io-protocol` and `socketio/engine.io-protocol`, folder
//! `test-suite/`), as a relay plugin, so that anyone can run those suites
//! against relay (docs/socketio.md says how). One plugin serves both:
//!
//! - On a `socket.io` tenant, every namespace the tenant accepts (the suite uses
//!   `/` and `/custom`) is connected and first sent `auth` with the CONNECT
//!   packet's payload (`{}` when there is none). On `/`, `message` is answered with
//!   `message-back` and the same arguments, and `message-with-ack` acknowledged
//!   with its arguments; other events, and events on other namespaces, do nothing.
//! - On an `engine.io` tenant, every message (text or binary) is sent back as it came.
//!
//! Everyone is accepted: this is a conformance fixture, not a policy to deploy.

use relay_plugin_sdk::serde_json::{json, Value};
use relay_plugin_sdk::*;

struct Reference;

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for Reference {
    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let mut actions = Vec::new();
        if req.namespace().is_some() {
            // socket.emit("auth", socket.handshake.auth): `{}` when the client sent none.
            let auth = match parse_json(req.auth().as_deref()) {
                Value::Null => json!({}),
                a => a,
            };
            actions.push(Action::Reply(event("auth", &auth)));
        }
        Ok(HandshakeDecision::Accept(Accept {
            user: None,
            data: None,
            rooms: Vec::new(),
            headers: Vec::new(),
            actions,
        }))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let Some(nsp) = ev.namespace.as_deref() else {
            // Engine.IO: socket.send(data), text or binary as it came.
            let data = ev
                .data
                .unwrap_or_else(|| Value::String(ev.text).to_string());
            return Ok(vec![Action::Reply(Message {
                event: None,
                data,
                ack: None,
                spread: false,
            })]);
        };
        if nsp != "/" {
            return Ok(Vec::new());
        }
        let args = event_args(ev.data.as_deref());
        Ok(match (ev.name.as_deref(), ev.ack) {
            // An emit, not a reply: a reply would answer the client's ack, if it asked for one.
            (Some("message"), _) => vec![Action::Emit(Emit {
                target: Target::Connection(conn.id),
                message: event_with_args("message-back", &args),
                exclude_sender: false,
            })],
            (Some("message-with-ack"), Some(_)) => vec![ack_with_args(&args)],
            _ => Vec::new(),
        })
    }
}
