//! WebSocket close codes relay sends (RFC 6455 §7.4.1), named, with the reason text
//! each close carries.

/// A close code and the reason sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The code.
    pub code: u16,
    /// The reason text (at most 123 bytes on the wire).
    pub reason: &'static str,
}

/// 1000: the purpose of the connection is fulfilled.
pub const NORMAL: u16 = 1000;
/// 1001: the server is going away (shutdown) or the peer went quiet (idle timeout).
pub const GOING_AWAY: u16 = 1001;
/// 1002: the peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: data of a type this profile does not accept (binary in ws-json).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: data not consistent with its type (text that is not UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: a policy was violated (the authentication deadline, an invalid close code
/// a plugin asked for).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: a message over `max_message_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: the server failed.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1013: try again later: the client did not keep up with its queue (slow consumer).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Shutdown: every connection is closed after what is queued for it.
pub const SHUTDOWN: Close = Close {
    code: GOING_AWAY,
    reason: "server shutting down",
};
/// Nothing received for `idle_timeout_ms`.
pub const IDLE: Close = Close {
    code: GOING_AWAY,
    reason: "idle timeout",
};
/// Not authenticated within `auth_timeout_ms`.
pub const AUTH_TIMEOUT: Close = Close {
    code: POLICY_VIOLATION,
    reason: "authentication timeout",
};
/// The outbound queue filled up.
pub const SLOW_CONSUMER: Close = Close {
    code: TRY_AGAIN_LATER,
    reason: "slow consumer",
};
/// A message over the size limit.
pub const TOO_BIG: Close = Close {
    code: MESSAGE_TOO_BIG,
    reason: "message too big",
};
/// Text that is not UTF-8.
pub const INVALID_UTF8: Close = Close {
    code: INVALID_PAYLOAD,
    reason: "invalid UTF-8",
};
/// Binary data where the profile takes text.
pub const BINARY_REFUSED: Close = Close {
    code: UNSUPPORTED_DATA,
    reason: "binary messages are not supported by this profile",
};
/// A frame or message that breaks the WebSocket protocol (what fastwebsockets refused).
pub const PROTOCOL: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "protocol error",
};
/// A close or pong frame over the 125-byte control frame limit.
pub const CONTROL_TOO_LONG: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "control frame too long",
};
/// A new text or binary frame while a fragmented message is unfinished.
pub const EXPECTED_CONTINUATION: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "expected a continuation frame",
};
/// A continuation frame with no fragmented message to continue.
pub const UNEXPECTED_CONTINUATION: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "unexpected continuation frame",
};
/// The answer to a close frame with a one-byte payload.
pub const BAD_CLOSE_FRAME: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "bad close frame",
};
/// The answer to a close frame whose code may not be sent.
pub const INVALID_CLOSE_CODE: Close = Close {
    code: PROTOCOL_ERROR,
    reason: "invalid close code",
};
/// The answer to a close frame whose reason is not UTF-8.
pub const INVALID_CLOSE_REASON: Close = Close {
    code: INVALID_PAYLOAD,
    reason: "invalid UTF-8 in close reason",
};
/// Engine.IO: the client's heartbeat stopped (no pong, or no v3 ping, in time).
pub const PING_TIMEOUT: Close = Close {
    code: NORMAL,
    reason: "ping timeout",
};
/// The client kept sending over its rate limit (`rate_limit_close_secs`).
pub const RATE_LIMITED: Close = Close {
    code: POLICY_VIOLATION,
    reason: "rate limit exceeded",
};
/// Engine.IO v3: a binary WebSocket frame that is not a message packet.
pub const BINARY_NOT_MESSAGE: Close = Close {
    code: UNSUPPORTED_DATA,
    reason: "binary frame is not a message packet",
};
