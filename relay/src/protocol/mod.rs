//! Wire profiles: decode a client's message into a [`ClientEvent`], encode a
//! [`Message`] into bytes once per output format and share them.

pub mod frame;
pub mod json;
pub mod socketio;

use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message to deliver, as policies and ingress produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Event name (used by profiles that carry one, e.g. Socket.IO; ws-json ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The payload. ws-json sends a JSON string's contents as they are and anything else as JSON.
    /// Socket.IO sends it as the event's one argument (none when `null`); objects
    /// `{"$binary": "<base64>"}` inside it travel as binary attachments.
    pub data: Value,
    /// Socket.IO: ask the client to acknowledge with this id; its answer reaches the event
    /// hook as an event without a name carrying this `ack` id. Ignored by ws-json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// Set by relay on messages to rooms with history: `<epoch>:<offset>`, which clients
    /// present to recover what they missed. Socket.IO sends it as an extra last argument
    /// (as socket.io's connection-state recovery does); ws-json adds it to object data
    /// as the tenant's `history_field`. Not stored, not seen by plugins.
    #[serde(skip)]
    pub offset: Option<String>,
}

impl Message {
    /// A message with no event name.
    pub fn data(data: Value) -> Self {
        Self {
            event: None,
            data,
            ack: None,
            offset: None,
        }
    }

    /// A named event.
    pub fn event(event: &str, data: Value) -> Self {
        Self {
            event: Some(event.to_owned()),
            data,
            ack: None,
            offset: None,
        }
    }
}

/// A client message after decoding by the connection's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    /// Event name, when the profile finds one (ws-json: the tenant's `event_field`).
    pub name: Option<String>,
    /// The parsed JSON payload, or `None` when the text is not JSON.
    pub data: Option<Value>,
    /// The raw text as received.
    pub text: String,
    /// Socket.IO: the acknowledgement id. With a name, the client waits for an answer (the
    /// hook's first reply is sent as the acknowledgement); without one, this is the client's
    /// acknowledgement of a message the relay sent with this id.
    pub ack: Option<u64>,
}

/// Every byte format a message can be encoded into; each encoding is made at most once per
/// message. `0` is ws-json; `1 + i` is the Socket.IO packet for a tenant's namespace `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutFormat(u8);

impl OutFormat {
    /// A complete WebSocket text frame of the ws-json profile.
    pub const WS_JSON: OutFormat = OutFormat(0);
    /// Number of formats (size of the per-message cache).
    pub const COUNT: usize = 1 + MAX_NAMESPACES;

    /// Socket.IO packet records for namespace number `i` of the tenant (`i < MAX_NAMESPACES`).
    pub fn socketio(i: usize) -> OutFormat {
        OutFormat(1 + i.min(MAX_NAMESPACES - 1) as u8)
    }
}

/// Most Socket.IO namespaces a tenant may serve.
pub const MAX_NAMESPACES: usize = 8;

/// Decoding and encoding of one wire profile.
pub trait Codec: Send + Sync + 'static {
    /// Output format of this codec's frames.
    fn format(&self) -> OutFormat;
    /// Decode one complete text message.
    fn decode_text(&self, text: String) -> ClientEvent;
    /// Encode a message into the complete bytes written to the socket.
    fn encode(&self, msg: &Message) -> Bytes;
    /// What to send before closing a connection on the server's initiative, if the profile
    /// has such a message (Socket.IO: the namespace's DISCONNECT, so the client does not
    /// reconnect).
    fn disconnect_packet(&self) -> Option<Bytes> {
        None
    }
}

/// A message shared by every recipient: encoded lazily, once per format.
#[derive(Debug)]
pub struct OutMessage {
    /// The message itself.
    pub message: Message,
    cache: [OnceLock<Bytes>; OutFormat::COUNT],
}

impl OutMessage {
    /// Wrap a message for fan-out.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            cache: Default::default(),
        }
    }

    /// The bytes for `codec`, encoded on first use; later calls clone a reference.
    #[inline]
    pub fn encoded(&self, codec: &dyn Codec) -> Bytes {
        self.cache[codec.format().0 as usize]
            .get_or_init(|| codec.encode(&self.message))
            .clone()
    }
}
