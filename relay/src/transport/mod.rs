//! Transports: what carries bytes to and from a client, knowing nothing of the wire
//! profile's meaning: listener limits, TLS, WebSocket, and Engine.IO's polling and
//! WebSocket transports. Request routing is the server's (`server::listen`).

pub mod limits;
pub mod tls;
pub mod websocket;

pub use limits::{ConnLimits, ConnSlot, Peer};
