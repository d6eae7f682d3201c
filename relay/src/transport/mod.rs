//! Transports: what carries bytes to and from a client, knowing nothing of what they
//! mean to the wire profile: listener limits, TLS, WebSocket (reader, read loop,
//! batching writer), and Engine.IO's polling and WebSocket transports. The sessions
//! above (`session`) give the bytes their meaning; request routing is the server's
//! (`server::listen`).

pub mod drain;
pub mod engineio;
pub mod limits;
pub mod tls;
pub mod websocket;

pub use limits::{ConnLimits, ConnSlot, Peer};

use crate::protocol::close::Close;

/// How a transport ended: the close code, when a close frame was sent or received, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The close code.
    pub code: Option<u16>,
    /// Why, for logs and the disconnect hook.
    pub reason: String,
}

impl End {
    /// An end with a code (or none) and a reason.
    pub fn new(code: Option<u16>, reason: &str) -> Self {
        End {
            code,
            reason: reason.to_owned(),
        }
    }

    /// The end a named close stands for.
    pub fn closed(c: Close) -> Self {
        End::new(Some(c.code), c.reason)
    }
}
