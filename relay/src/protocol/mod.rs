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
    pub data: Value,
}

impl Message {
    /// A message with no event name.
    pub fn data(data: Value) -> Self {
        Self { event: None, data }
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
}

/// Every byte format a message can be encoded into; each encoding is made at most once per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutFormat {
    /// A complete WebSocket text frame of the ws-json profile.
    WsJson = 0,
}

impl OutFormat {
    /// Number of formats (size of the per-message cache).
    pub const COUNT: usize = 1;
}

/// Decoding and encoding of one wire profile.
pub trait Codec: Send + Sync + 'static {
    /// Output format of this codec's frames.
    fn format(&self) -> OutFormat;
    /// Decode one complete text message.
    fn decode_text(&self, text: String) -> ClientEvent;
    /// Encode a message into the complete bytes written to the socket.
    fn encode(&self, msg: &Message) -> Bytes;
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
        self.cache[codec.format() as usize]
            .get_or_init(|| codec.encode(&self.message))
            .clone()
    }
}
