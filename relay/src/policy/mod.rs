//! The policy seam: every decision about a connection or an ingress request.
//!
//! A tenant's [`Policy`] has four hooks (handshake, client event, ingress,
//! disconnect) that return [`Action`]s for the host to carry out. The built-in
//! [`open::OpenPolicy`] serves development; the WASM plugin host implements
//! the same trait for production.

mod error;
pub mod open;

pub use error::{Failure, PolicyError};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hub::{Presence, Target};
pub use crate::protocol::ClientEvent;
use crate::protocol::Message;

/// A boxed future returned by policy hooks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the host knows about a WebSocket handshake.
#[derive(Debug, Clone)]
pub struct HandshakeRequest {
    /// Id the connection will have if accepted.
    pub conn: String,
    /// Request path.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// Request headers (names lowercase).
    pub headers: http::HeaderMap,
    /// Peer address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Socket.IO: the namespace being connected to.
    pub namespace: Option<String>,
    /// Socket.IO: the CONNECT packet's auth payload.
    pub auth: Option<Value>,
}

impl HandshakeRequest {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// First value of a query parameter, URL-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// The policy's answer to a handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeDecision {
    /// Accept: the connection is authenticated, optionally as a user, and joins `rooms`.
    Accept {
        /// User id, if known.
        user: Option<String>,
        /// Session data kept with the connection.
        data: Value,
        /// Rooms to join at once.
        rooms: Vec<String>,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// Actions to run once the connection is open (e.g. a welcome reply).
        actions: Vec<Action>,
    },
    /// Accept, but the client must authenticate in-band (by an event whose actions set an
    /// identity) before the tenant's `auth_timeout_ms`.
    Defer {
        /// Actions to run once the connection is open.
        actions: Vec<Action>,
    },
    /// Refuse with an HTTP response.
    Reject {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: String,
        /// Socket.IO: replies sent on the refused namespace instead of CONNECT_ERROR.
        actions: Vec<Action>,
    },
}

/// What a policy sees of a connection on each hook.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Connection id.
    pub id: String,
    /// User id, if identified.
    pub user: Option<String>,
    /// Session data set by the policy.
    pub data: Value,
    /// Whether the connection is authenticated.
    pub authenticated: bool,
    /// Peer address.
    pub remote: SocketAddr,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectInfo {
    /// Close code sent or received, if any.
    pub code: Option<u16>,
    /// Human-readable reason.
    pub reason: String,
}

/// Where an ingress request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressSource {
    /// An HTTP request.
    Http {
        /// Method, uppercase.
        method: String,
        /// Path relative to the route prefix (always starts with `/`).
        path: String,
        /// Raw query string.
        query: String,
        /// Headers (names lowercase).
        headers: Vec<(String, String)>,
    },
    /// A UDP datagram.
    Udp,
}

/// A backend's push: an HTTP request or a UDP datagram.
#[derive(Debug, Clone)]
pub struct IngressRequest {
    /// HTTP or UDP details.
    pub source: IngressSource,
    /// Peer address.
    pub remote: SocketAddr,
    /// Request body or datagram.
    pub body: Bytes,
}

impl IngressRequest {
    /// Parameters from the query string, then (for form bodies) the body; URL-decoded.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let IngressSource::Http { query, headers, .. } = &self.source {
            out.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
            let form = headers.iter().any(|(k, v)| {
                k == "content-type" && v.starts_with("application/x-www-form-urlencoded")
            });
            if form {
                out.extend(form_urlencoded::parse(&self.body).into_owned());
            }
        }
        out
    }
}

/// The policy's answer to an ingress request.
#[derive(Debug, Clone, PartialEq)]
pub struct IngressOutcome {
    /// HTTP status (ignored for UDP).
    pub status: u16,
    /// Response headers (ignored for UDP).
    pub headers: Vec<(String, String)>,
    /// Response body; for UDP the reply datagram (none when empty).
    pub body: Bytes,
    /// What to do.
    pub actions: Vec<Action>,
}

impl IngressOutcome {
    /// A JSON response.
    pub fn json(status: u16, body: &Value, actions: Vec<Action>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
            actions,
        }
    }
}

/// What a policy asks the host to do. `conn: None` means the connection the hook is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
#[non_exhaustive]
pub enum Action {
    /// Send a message to the connection the hook is about.
    Reply {
        /// The message.
        message: Message,
    },
    /// Send a message to a target, optionally not to the connection the hook is about.
    Emit {
        /// Recipients.
        target: Target,
        /// The message.
        message: Message,
        /// Skip the connection the hook is about.
        #[serde(default)]
        exclude_sender: bool,
    },
    /// Join rooms.
    Join {
        /// Rooms.
        rooms: Vec<String>,
        /// Connection (default: the hook's).
        #[serde(default)]
        conn: Option<String>,
    },
    /// Leave rooms.
    Leave {
        /// Rooms.
        rooms: Vec<String>,
        /// Connection (default: the hook's).
        #[serde(default)]
        conn: Option<String>,
    },
    /// Identify a connection (marks it authenticated) and/or set its session data.
    SetIdentity {
        /// User id; `None` keeps the current one.
        #[serde(default)]
        user: Option<String>,
        /// Session data; `None` keeps the current data.
        #[serde(default)]
        data: Option<Value>,
        /// Connection (default: the hook's).
        #[serde(default)]
        conn: Option<String>,
    },
    /// Deliver to a user or room now if any of its connections is online, else keep the
    /// message durably for them (see `Node::execute`). `user` wins over `room`.
    StoreOffline {
        /// The user.
        #[serde(default)]
        user: Option<String>,
        /// The room.
        #[serde(default)]
        room: Option<String>,
        /// The message.
        message: Message,
    },
    /// Call a URL. Not carried out yet (needs the webhook queue): logged, counted, dropped.
    Webhook {
        /// `GET` or `POST`.
        method: String,
        /// Absolute URL.
        url: String,
        /// Request headers.
        headers: Vec<(String, String)>,
        /// Request body.
        body: String,
    },
    /// Append a line to the tenant's message log (see `msglog`).
    AppendLog {
        /// Plain file name.
        file: String,
        /// Bytes to append (no newline added).
        line: String,
    },
    /// Close a connection with a code, after what is already queued for it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Reason text.
        #[serde(default)]
        reason: String,
        /// Connection (default: the hook's).
        #[serde(default)]
        conn: Option<String>,
    },
}

/// A tenant's decisions. Hooks other than the handshake default to doing nothing.
pub trait Policy: Send + Sync + 'static {
    /// A WebSocket handshake arrived. (Shared: a WASM plugin reads it through a handle
    /// during the call.)
    fn on_handshake<'a>(
        &'a self,
        req: &'a std::sync::Arc<HandshakeRequest>,
        presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<HandshakeDecision, PolicyError>>;

    /// A client sent a message.
    fn on_event<'a>(
        &'a self,
        _conn: &'a ConnInfo,
        _event: &'a ClientEvent,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<Vec<Action>, PolicyError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A backend pushed over HTTP or UDP.
    fn on_ingress<'a>(
        &'a self,
        _req: &'a IngressRequest,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<IngressOutcome, PolicyError>> {
        Box::pin(async {
            Ok(IngressOutcome::json(
                404,
                &serde_json::json!({"error": "not found"}),
                Vec::new(),
            ))
        })
    }

    /// Whether a handshake hook may be shown request header `name` (lowercase). An
    /// Engine.IO session keeps, of its first request's headers, only those (its
    /// namespace handshakes are decided later with them).
    fn shows_header(&self, _name: &str) -> bool {
        true
    }

    /// Reload the policy's code (WASM plugins); `None` if this policy cannot reload.
    /// Blocking: call it off the async runtime. `Ok` carries a description of what is loaded now.
    fn reload(&self) -> Option<Result<String, String>> {
        None
    }

    /// Reload if the policy's file changed since it was loaded; `None` when unchanged or not reloadable.
    /// Blocking: call it off the async runtime.
    fn reload_if_changed(&self) -> Option<Result<String, String>> {
        None
    }

    /// A connection ended.
    fn on_disconnect<'a>(
        &'a self,
        _conn: &'a ConnInfo,
        _info: &'a DisconnectInfo,
        _presence: &'a dyn Presence,
    ) -> BoxFuture<'a, Result<Vec<Action>, PolicyError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
