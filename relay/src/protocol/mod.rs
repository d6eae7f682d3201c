//! Wire profiles: decode a client's message into a [`ClientEvent`], encode a
//! [`Message`] into bytes once per output format and share them.

pub mod close;
pub mod engineio;
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
    /// The payload. ws-json sends a JSON string's contents as they are and anything else as
    /// JSON; engine.io the same, but `{"$binary": "<base64>"}` as a binary message.
    /// Socket.IO sends it as the event's one argument (none when `null`), or its arguments
    /// with `spread`; objects `{"$binary": "<base64>"}` inside it travel as binary attachments.
    pub data: Value,
    /// Socket.IO: ask the client to acknowledge with this id; its answer reaches the event
    /// hook as an event without a name carrying this `ack` id. Ignored by ws-json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// Socket.IO: `data` is the array of the event's arguments (any number, `null`
    /// included) rather than its one argument. Checked to be an array where a plugin
    /// sets it. Ignored by the other profiles.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spread: bool,
    /// Set by the broker on messages to rooms with history: where the message stands in
    /// the tenant's stream. Clients see it as `<epoch>:<offset>` and present it to recover
    /// what they missed: Socket.IO as an extra last argument (as socket.io's
    /// connection-state recovery does), ws-json in object data as the tenant's
    /// `history_field`. Not stored with the message, not seen by plugins (a plugin cannot
    /// set it): a broker publication's byte encoding carries it.
    #[serde(skip)]
    pub position: Option<StreamPosition>,
}

impl Message {
    /// A message with no event name.
    pub fn data(data: Value) -> Self {
        Self {
            event: None,
            data,
            ack: None,
            spread: false,
            position: None,
        }
    }

    /// A named event.
    pub fn event(event: &str, data: Value) -> Self {
        Self {
            event: Some(event.to_owned()),
            data,
            ack: None,
            spread: false,
            position: None,
        }
    }
}

/// Where a message stands in a tenant's history stream (centrifuge's `StreamPosition`):
/// offsets increase with every message kept in history; the epoch names the stream, so an
/// offset from another epoch (a wiped store) is never taken for one of this stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream's identity: created once with the history, kept with it.
    pub epoch: String,
    /// The message's offset in the stream.
    pub offset: u64,
}

impl StreamPosition {
    /// Longest text form accepted from a client (`<epoch>:<offset>`).
    pub const MAX_TEXT: usize = 64;

    /// Parse the wire form `<epoch>:<offset>`; `None` when malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, offset) = text.split_once(':')?;
        if epoch.is_empty() || text.len() > Self::MAX_TEXT {
            return None;
        }
        Some(StreamPosition {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

/// The wire form clients see and present: `<epoch>:<offset>`.
impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
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
    /// Socket.IO: the namespace the event came from.
    pub namespace: Option<String>,
}

/// Every byte format a message can be encoded into; each encoding is made at most once per
/// message. `0` is ws-json, `1` bare Engine.IO; `2 + i` is the Socket.IO packet for a
/// tenant's listed namespace `i`. A namespace accepted by a pattern has no slot
/// ([`OutFormat::UNCACHED`]): its packets are encoded for each recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutFormat(u8);

impl OutFormat {
    /// A complete WebSocket text frame of the ws-json profile.
    pub const WS_JSON: OutFormat = OutFormat(0);
    /// Engine.IO packet records of the bare Engine.IO profile.
    pub const ENGINE_IO: OutFormat = OutFormat(1);
    /// Encoded anew for every recipient (not kept with the message).
    pub const UNCACHED: OutFormat = OutFormat(u8::MAX);
    /// Number of cached formats (size of the per-message cache).
    pub const COUNT: usize = 2 + MAX_NAMESPACES;

    /// Socket.IO packet records for namespace number `i` of the tenant (`i < MAX_NAMESPACES`).
    pub fn socketio(i: usize) -> OutFormat {
        OutFormat(2 + i.min(MAX_NAMESPACES - 1) as u8)
    }
}

/// Most Socket.IO namespaces a tenant may serve (a configuration limit).
pub use crate::config::MAX_NAMESPACES;

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
        match self.cache.get(codec.format().0 as usize) {
            Some(slot) => slot.get_or_init(|| codec.encode(&self.message)).clone(),
            None => codec.encode(&self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_positions_round_trip_through_their_wire_form() {
        let p = StreamPosition {
            epoch: "00ab".into(),
            offset: 42,
        };
        assert_eq!(p.to_string(), "00ab:42");
        assert_eq!(StreamPosition::parse("00ab:42"), Some(p));
        for bad in [
            "",
            "42",
            ":42",
            "e:",
            "e:x",
            "e:-1",
            &format!("e:{}", "9".repeat(70)),
        ] {
            assert_eq!(StreamPosition::parse(bad), None, "{bad:?}");
        }
    }
}
