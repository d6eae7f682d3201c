//! Engine.IO (v3 and v4) and Socket.IO packet codecs: pure functions over the
//! wire strings, no I/O. Groundwork for the Socket.IO wire profile (the
//! transports, sessions and hub integration are not written yet).
//!
//! Engine.IO packet: one type digit (`0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop) and data. Polling payloads join packets
//! with the record separator `\x1e` (v4) or prefix each with `<length>:` where
//! the length counts UTF-16 code units, as JavaScript strings do (v3).
//! Socket.IO packet (inside an Engine.IO message): type digit, for binary
//! packets `<attachments>-`, a namespace other than `/` followed by `,`, an
//! optional ack id, then the JSON payload.

use serde_json::Value;
use thiserror::Error;

/// A malformed packet or payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Empty input where a packet was expected.
    #[error("empty packet")]
    Empty,
    /// An unknown packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A v3 payload whose length prefix is missing or wrong.
    #[error("bad payload framing: {0}")]
    Framing(&'static str),
    /// The JSON part does not parse.
    #[error("bad JSON in packet: {0}")]
    Json(String),
    /// The attachment count or ack id is not a number.
    #[error("bad number in packet")]
    Number,
}

/// Engine.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioType {
    /// `0`: handshake data from the server.
    Open,
    /// `1`: close the session.
    Close,
    /// `2`: ping (client → server in v3, server → client in v4; probe `2probe`).
    Ping,
    /// `3`: pong.
    Pong,
    /// `4`: a message (a Socket.IO packet).
    Message,
    /// `5`: upgrade completed.
    Upgrade,
    /// `6`: no-op (flushes a pending poll during upgrade).
    Noop,
}

impl EioType {
    fn from_char(c: char) -> Result<Self, CodecError> {
        Ok(match c {
            '0' => EioType::Open,
            '1' => EioType::Close,
            '2' => EioType::Ping,
            '3' => EioType::Pong,
            '4' => EioType::Message,
            '5' => EioType::Upgrade,
            '6' => EioType::Noop,
            other => return Err(CodecError::UnknownType(other)),
        })
    }

    fn digit(self) -> char {
        match self {
            EioType::Open => '0',
            EioType::Close => '1',
            EioType::Ping => '2',
            EioType::Pong => '3',
            EioType::Message => '4',
            EioType::Upgrade => '5',
            EioType::Noop => '6',
        }
    }
}

/// An Engine.IO text packet: its type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EioPacket {
    /// Type.
    pub kind: EioType,
    /// Data after the type digit (e.g. `probe`, or a Socket.IO packet).
    pub data: String,
}

impl EioPacket {
    /// Parse one text packet.
    pub fn decode(s: &str) -> Result<Self, CodecError> {
        let mut chars = s.chars();
        let kind = EioType::from_char(chars.next().ok_or(CodecError::Empty)?)?;
        Ok(EioPacket {
            kind,
            data: chars.as_str().to_owned(),
        })
    }

    /// Its wire form.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(1 + self.data.len());
        s.push(self.kind.digit());
        s.push_str(&self.data);
        s
    }
}

/// Engine.IO v4 polling payload: packets separated by `\x1e`.
pub fn decode_payload_v4(body: &str) -> Result<Vec<EioPacket>, CodecError> {
    body.split('\x1e').map(EioPacket::decode).collect()
}

/// Engine.IO v4 polling payload.
pub fn encode_payload_v4(packets: &[EioPacket]) -> String {
    packets
        .iter()
        .map(EioPacket::encode)
        .collect::<Vec<_>>()
        .join("\x1e")
}

/// Engine.IO v3 text polling payload: `<len>:<packet>` repeated, `len` in UTF-16 units.
pub fn decode_payload_v3(body: &str) -> Result<Vec<EioPacket>, CodecError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let colon = rest
            .find(':')
            .ok_or(CodecError::Framing("missing ':' after length"))?;
        let len: usize = rest[..colon]
            .parse()
            .map_err(|_| CodecError::Framing("length is not a number"))?;
        let data = &rest[colon + 1..];
        // Walk `len` UTF-16 code units into `data`.
        let mut units = 0;
        let mut end = data.len();
        for (i, c) in data.char_indices() {
            if units >= len {
                end = i;
                break;
            }
            units += c.len_utf16();
        }
        if units < len {
            return Err(CodecError::Framing("length runs past the payload"));
        }
        if units > len {
            return Err(CodecError::Framing("length splits a character"));
        }
        out.push(EioPacket::decode(&data[..end])?);
        rest = &data[end..];
    }
    Ok(out)
}

/// Engine.IO v3 text polling payload.
pub fn encode_payload_v3(packets: &[EioPacket]) -> String {
    let mut s = String::new();
    for p in packets {
        let e = p.encode();
        s.push_str(&e.encode_utf16().count().to_string());
        s.push(':');
        s.push_str(&e);
    }
    s
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    /// `0`: connect to a namespace (with auth payload) / connected (with sid).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event `["name", args…]`.
    Event,
    /// `3`: an acknowledgement `[args…]`.
    Ack,
    /// `4`: connection to a namespace refused.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl SioType {
    fn from_char(c: char) -> Result<Self, CodecError> {
        Ok(match c {
            '0' => SioType::Connect,
            '1' => SioType::Disconnect,
            '2' => SioType::Event,
            '3' => SioType::Ack,
            '4' => SioType::ConnectError,
            '5' => SioType::BinaryEvent,
            '6' => SioType::BinaryAck,
            other => return Err(CodecError::UnknownType(other)),
        })
    }

    fn digit(self) -> char {
        match self {
            SioType::Connect => '0',
            SioType::Disconnect => '1',
            SioType::Event => '2',
            SioType::Ack => '3',
            SioType::ConnectError => '4',
            SioType::BinaryEvent => '5',
            SioType::BinaryAck => '6',
        }
    }

    fn binary(self) -> bool {
        matches!(self, SioType::BinaryEvent | SioType::BinaryAck)
    }
}

/// A Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    /// Type.
    pub kind: SioType,
    /// Namespace (`/` by default).
    pub nsp: String,
    /// Ack id, if the sender wants an acknowledgement (or this is one).
    pub id: Option<u64>,
    /// Number of binary attachments that follow (binary types only).
    pub attachments: usize,
    /// The JSON payload, if any.
    pub data: Option<Value>,
}

impl SioPacket {
    /// An event `name(args…)` on `nsp`.
    pub fn event(nsp: &str, name: &str, args: Vec<Value>) -> Self {
        let mut arr = Vec::with_capacity(args.len() + 1);
        arr.push(Value::String(name.to_owned()));
        arr.extend(args);
        SioPacket {
            kind: SioType::Event,
            nsp: nsp.to_owned(),
            id: None,
            attachments: 0,
            data: Some(Value::Array(arr)),
        }
    }

    /// Parse a Socket.IO packet (the data of an Engine.IO message).
    pub fn decode(s: &str) -> Result<Self, CodecError> {
        let mut chars = s.chars();
        let kind = SioType::from_char(chars.next().ok_or(CodecError::Empty)?)?;
        let mut rest = chars.as_str();
        let mut attachments = 0;
        if kind.binary() {
            let dash = rest.find('-').ok_or(CodecError::Number)?;
            attachments = rest[..dash].parse().map_err(|_| CodecError::Number)?;
            rest = &rest[dash + 1..];
        }
        let mut nsp = "/".to_owned();
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            nsp = rest[..end].to_owned();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            Some(rest[..digits].parse().map_err(|_| CodecError::Number)?)
        } else {
            None
        };
        rest = &rest[digits..];
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str(rest).map_err(|e| CodecError::Json(e.to_string()))?)
        };
        Ok(SioPacket {
            kind,
            nsp,
            id,
            attachments,
            data,
        })
    }

    /// Its wire form.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        s.push(self.kind.digit());
        if self.kind.binary() {
            s.push_str(&self.attachments.to_string());
            s.push('-');
        }
        if self.nsp != "/" {
            s.push_str(&self.nsp);
            s.push(',');
        }
        if let Some(id) = self.id {
            s.push_str(&id.to_string());
        }
        if let Some(d) = &self.data {
            s.push_str(&d.to_string());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engineio_packets() {
        assert_eq!(
            EioPacket::decode("2probe").unwrap(),
            EioPacket {
                kind: EioType::Ping,
                data: "probe".into()
            }
        );
        assert_eq!(
            EioPacket {
                kind: EioType::Pong,
                data: "probe".into()
            }
            .encode(),
            "3probe"
        );
        assert_eq!(EioPacket::decode("6").unwrap().kind, EioType::Noop);
        assert_eq!(EioPacket::decode("9"), Err(CodecError::UnknownType('9')));
        assert_eq!(EioPacket::decode(""), Err(CodecError::Empty));
    }

    #[test]
    fn v4_payload_uses_record_separator() {
        let body = "4hello\x1e2\x1e4€";
        let p = decode_payload_v4(body).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].data, "€");
        assert_eq!(encode_payload_v4(&p), body);
    }

    #[test]
    fn v3_payload_counts_utf16_units() {
        // "4€" is 2 UTF-16 units; "4😀" is 3 (a surrogate pair).
        let body = "2:4€3:4😀7:42[\"a\"]";
        let p = decode_payload_v3(body).unwrap();
        assert_eq!(
            p.iter().map(|p| p.data.as_str()).collect::<Vec<_>>(),
            ["€", "😀", "2[\"a\"]"]
        );
        assert_eq!(encode_payload_v3(&p), body);
        assert_eq!(
            decode_payload_v3("5:4ab"),
            Err(CodecError::Framing("length runs past the payload"))
        );
        assert_eq!(
            decode_payload_v3("x:4"),
            Err(CodecError::Framing("length is not a number"))
        );
        assert_eq!(
            decode_payload_v3("2:4😀"),
            Err(CodecError::Framing("length splits a character"))
        );
    }

    #[test]
    fn socketio_packets_from_the_protocol() {
        let p = SioPacket::decode(r#"2["hello",1]"#).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id, p.data),
            (SioType::Event, "/", None, Some(json!(["hello", 1])))
        );
        let p = SioPacket::decode(r#"2/admin,456["project:delete",123]"#).unwrap();
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(456)));
        assert_eq!(p.encode(), r#"2/admin,456["project:delete",123]"#);
        let p = SioPacket::decode(r#"3/admin,456[]"#).unwrap();
        assert_eq!((p.kind, p.data), (SioType::Ack, Some(json!([]))));
        let p = SioPacket::decode(r#"51-["hello",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments), (SioType::BinaryEvent, 1));
        assert_eq!(p.encode(), r#"51-["hello",{"_placeholder":true,"num":0}]"#);
        let p = SioPacket::decode("0").unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data),
            (SioType::Connect, "/", None)
        );
        assert_eq!(SioPacket::decode("1/chat,").unwrap().nsp, "/chat");
        assert_eq!(
            SioPacket::decode(r#"4{"message":"Not authorized"}"#)
                .unwrap()
                .kind,
            SioType::ConnectError
        );
        assert_eq!(
            SioPacket::event("/", "server_return", vec![json!({"errcode": 0})]).encode(),
            r#"2["server_return",{"errcode":0}]"#
        );
        assert!(matches!(
            SioPacket::decode("2[oops"),
            Err(CodecError::Json(_))
        ));
        assert_eq!(SioPacket::decode("5x-[]"), Err(CodecError::Number));
    }
}
