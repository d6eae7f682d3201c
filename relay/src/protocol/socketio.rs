//! Socket.IO packet codecs (the packets inside Engine.IO messages) and the Socket.IO
//! profile's [`Codec`]: pure functions over the wire strings, no I/O. The Engine.IO
//! framing around them is in [`super::engineio`]; the session driving them is in
//! `session::socketio`.
//!
//! Socket.IO packet (inside an Engine.IO message): type digit, for binary
//! packets `<attachments>-`, a namespace other than `/` followed by `,`, an
//! optional ack id, then the JSON payload.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use super::engineio::{CodecError, RecordsBuf};
use super::{ClientEvent, Codec, Message, OutFormat};

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
        let data: Option<Value> = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str(rest).map_err(|e| CodecError::Json(e.to_string()))?)
        };
        // What each type may carry, as the reference parser checks it. Besides refusing
        // nonsense, this keeps the form unambiguous: no payload can start with a digit
        // and run into the ack id (`20 20` was read as id 0 with data 20, and wrote back
        // as id 2020; found by the `socketio` fuzz target).
        let valid = match (kind, &data) {
            (SioType::Connect, None | Some(Value::Object(_))) => true,
            (SioType::Disconnect, None) => true,
            (SioType::ConnectError, Some(Value::String(_) | Value::Object(_))) => true,
            (SioType::Event | SioType::BinaryEvent, Some(Value::Array(a))) => !a.is_empty(),
            (SioType::Ack | SioType::BinaryAck, Some(Value::Array(_))) => true,
            _ => false,
        };
        if !valid {
            return Err(CodecError::Json(format!(
                "invalid payload for a {kind:?} packet"
            )));
        }
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

/// Replace `{"$binary": "<base64>"}` objects by attachment placeholders; returns the
/// attachments in order.
pub fn extract_binary(v: &mut Value, out: &mut Vec<Vec<u8>>) {
    match v {
        Value::Object(m) => {
            if m.len() == 1 {
                if let Some(Value::String(b)) = m.get("$binary") {
                    if let Ok(bytes) = B64.decode(b) {
                        let num = out.len();
                        out.push(bytes);
                        *v = serde_json::json!({"_placeholder": true, "num": num});
                        return;
                    }
                }
            }
            m.values_mut().for_each(|x| extract_binary(x, out));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| extract_binary(x, out)),
        _ => {}
    }
}

/// Replace attachment placeholders by `{"$binary": "<base64>"}`; `false` if a placeholder
/// names a missing attachment.
pub fn insert_binary(v: &mut Value, attachments: &[Vec<u8>]) -> bool {
    match v {
        Value::Object(m) => {
            if m.get("_placeholder") == Some(&Value::Bool(true)) {
                let Some(data) = m
                    .get("num")
                    .and_then(Value::as_u64)
                    .and_then(|n| attachments.get(n as usize))
                else {
                    return false;
                };
                *v = serde_json::json!({"$binary": B64.encode(data)});
                return true;
            }
            m.values_mut().all(|x| insert_binary(x, attachments))
        }
        Value::Array(a) => a.iter_mut().all(|x| insert_binary(x, attachments)),
        _ => true,
    }
}

/// Records of a Socket.IO packet with its attachments (an Engine.IO message each).
pub fn packet_records(p: &SioPacket, attachments: &[Vec<u8>]) -> Bytes {
    let mut r = RecordsBuf::default();
    let mut text = String::from("4");
    text.push_str(&p.encode());
    r.text(text.as_bytes());
    for a in attachments {
        r.binary(a);
    }
    r.freeze()
}

/// A message's arguments: its data as the one argument (none when null), or with
/// `spread` the data's elements; `{"$binary": …}` objects become attachments.
pub fn message_args(msg: &Message, attachments: &mut Vec<Vec<u8>>) -> Vec<Value> {
    let mut args = match (&msg.data, msg.spread) {
        (Value::Array(a), true) => a.clone(),
        (Value::Null, _) => Vec::new(),
        (d, _) => vec![d.clone()],
    };
    for a in args.iter_mut() {
        extract_binary(a, attachments);
    }
    args
}

/// The Socket.IO packet for a message: `event(data)` (no argument when `data` is null;
/// with `spread`, the data's elements as the arguments), a binary event when the data
/// holds `{"$binary": …}` objects.
pub fn message_packet(nsp: &str, msg: &Message) -> (SioPacket, Vec<Vec<u8>>) {
    let name = msg.event.as_deref().unwrap_or("message");
    let mut attachments = Vec::new();
    let mut args = message_args(msg, &mut attachments);
    if let Some(off) = &msg.position {
        // As socket.io's connection-state recovery: the offset is the last argument.
        args.push(Value::String(off.to_string()));
    }
    let mut p = SioPacket::event(nsp, name, args);
    p.id = msg.ack;
    if !attachments.is_empty() {
        p.kind = SioType::BinaryEvent;
        p.attachments = attachments.len();
    }
    (p, attachments)
}

/// The Socket.IO profile's codec for one namespace: a message becomes Engine.IO packet
/// records, the same for v3 and v4 clients and for every transport.
#[derive(Debug, Clone)]
pub struct SioCodec {
    /// Namespace.
    pub nsp: String,
    /// Cache slot of this namespace's encoding.
    pub format: OutFormat,
}

impl Codec for SioCodec {
    fn format(&self) -> OutFormat {
        self.format
    }

    fn decode_text(&self, text: String) -> ClientEvent {
        // Socket.IO packets are decoded by the session; this serves callers that only have text.
        let p = SioPacket::decode(&text).ok();
        let (name, data) = match p.and_then(|p| p.data) {
            Some(Value::Array(mut a)) if a.first().is_some_and(Value::is_string) => {
                let name = a.remove(0).as_str().map(str::to_owned);
                (name, Some(Value::Array(a)))
            }
            other => (None, other),
        };
        ClientEvent {
            name,
            data,
            text,
            ack: None,
            namespace: Some(self.nsp.clone()),
        }
    }

    fn encode(&self, msg: &Message) -> Bytes {
        let (p, attachments) = message_packet(&self.nsp, msg);
        packet_records(&p, &attachments)
    }

    fn disconnect_packet(&self) -> Option<Bytes> {
        let p = SioPacket {
            kind: SioType::Disconnect,
            nsp: self.nsp.clone(),
            id: None,
            attachments: 0,
            data: None,
        };
        Some(packet_records(&p, &[]))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn payloads_are_what_each_type_may_carry_so_the_form_is_unambiguous() {
        for ok in [
            "0",
            "0{\"token\":1}",
            "1",
            "2[\"a\"]",
            "220[\"a\",1]",
            "3[]",
            "31[null]",
            "4\"no\"",
            "4{\"message\":\"no\"}",
            "51-[\"a\",{\"_placeholder\":true,\"num\":0}]",
            "2/chat,[\"x\"]",
        ] {
            let p = SioPacket::decode(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(SioPacket::decode(&p.encode()).ok(), Some(p), "{ok}");
        }
        // `20 20` was read as ack id 0 with data 20, and written back as id 2020.
        for bad in [
            "20 20", "2 20", "2\"x\"", "2[]", "2{}", "1[1]", "0\"x\"", "0[1]", "3{}", "4[1]",
        ] {
            assert!(SioPacket::decode(bad).is_err(), "{bad}");
        }
        // Numbers keep their exact value through decode and encode (float_roundtrip).
        let p = SioPacket::decode("2[2.2222222262222222e54,0.1]").unwrap();
        assert_eq!(SioPacket::decode(&p.encode()).ok(), Some(p));
    }

    use super::super::engineio::Records;
    use super::*;
    use serde_json::json;

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

    #[test]
    fn messages_encode_with_binary_attachments_and_ack_ids() {
        let c = SioCodec {
            nsp: "/chat".into(),
            format: OutFormat::socketio(1),
        };
        let mut m = Message::event("file", json!({"name": "a", "body": {"$binary": "AQID"}}));
        m.ack = Some(7);
        let r = c.encode(&m);
        let got: Vec<(bool, Vec<u8>)> = Records::new(&r).map(|(b, d)| (b, d.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (
                    false,
                    br#"451-/chat,7["file",{"name":"a","body":{"_placeholder":true,"num":0}}]"#
                        .to_vec()
                ),
                (true, vec![1, 2, 3])
            ]
        );
        let r = SioCodec {
            nsp: "/".into(),
            format: OutFormat::socketio(0),
        }
        .encode(&Message::event("hi", serde_json::Value::Null));
        assert_eq!(Records::new(&r).next(), Some((false, &br#"42["hi"]"#[..])));
        let mut v = json!(["x", {"_placeholder": true, "num": 0}]);
        assert!(insert_binary(&mut v, &[vec![255]]));
        assert_eq!(v, json!(["x", {"$binary": "/w=="}]));
        let mut v = json!([{"_placeholder": true, "num": 3}]);
        assert!(!insert_binary(&mut v, &[]));
    }
}
