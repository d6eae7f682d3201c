//! Engine.IO (v3 and v4) packet and payload codecs: pure functions over the wire, no
//! I/O. The transports that carry them are in `transport::engineio`.
//!
//! Engine.IO packet: one type digit (`0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop) and data. Polling payloads join packets
//! with the record separator `\x1e` (v4) or prefix each with `<length>:` where
//! the length counts UTF-16 code units, as JavaScript strings do (v3).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
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
    split_payload_v3(body)?
        .iter()
        .map(|p| EioPacket::decode(p))
        .collect()
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

/// Engine.IO packets queued for one client, as records: a tag byte (`t` text, `b` binary),
/// the length as 4 big-endian bytes, then the bytes. Each transport frames them its own way
/// (a WebSocket frame per packet, or a polling payload of either version).
#[derive(Debug, Default)]
pub struct RecordsBuf(Vec<u8>);

impl RecordsBuf {
    /// Append a text packet (type digit included).
    pub fn text(&mut self, packet: &[u8]) -> &mut Self {
        self.push(b't', packet)
    }

    /// Append a binary message packet (the bytes only).
    pub fn binary(&mut self, data: &[u8]) -> &mut Self {
        self.push(b'b', data)
    }

    fn push(&mut self, tag: u8, data: &[u8]) -> &mut Self {
        self.0.push(tag);
        self.0
            .extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(data);
        self
    }

    /// The records.
    pub fn freeze(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// One text packet as records.
pub fn text_record(packet: &str) -> Bytes {
    let mut r = RecordsBuf::default();
    r.text(packet.as_bytes());
    r.freeze()
}

/// Iterator over records: `(is_binary, bytes)`. Stops at the first malformed record
/// (records are made by [`RecordsBuf`] only).
pub struct Records<'a>(&'a [u8]);

impl<'a> Records<'a> {
    /// Iterate over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Records(buf)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (bool, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.0.split_first()?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let data = rest.get(4..4 + len)?;
        self.0 = &rest[4 + len..];
        Some((tag == b'b', data))
    }
}

/// One Engine.IO packet received from a client: text, or binary message data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EioIn {
    /// A text packet (type digit first).
    Text(String),
    /// The data of a binary message packet.
    Binary(Vec<u8>),
}

/// Encode a polling response from queued records (each item holds one or more records).
/// Returns the content type and the body.
pub fn encode_poll<'a>(
    items: impl IntoIterator<Item = &'a [u8]>,
    v3: bool,
    b64: bool,
) -> (&'static str, Vec<u8>) {
    let packets: Vec<(bool, &[u8])> = items.into_iter().flat_map(Records::new).collect();
    const TEXT: &str = "text/plain; charset=UTF-8";
    if !v3 {
        let mut out = Vec::new();
        for (i, (binary, data)) in packets.iter().enumerate() {
            if i > 0 {
                out.push(0x1e);
            }
            if *binary {
                out.push(b'b');
                out.extend_from_slice(B64.encode(data).as_bytes());
            } else {
                out.extend_from_slice(data);
            }
        }
        return (TEXT, out);
    }
    let any_binary = packets.iter().any(|(b, _)| *b);
    if any_binary && !b64 {
        // v3 binary payload: per packet 0 (string) or 1 (binary), the length as decimal
        // digit bytes, 255, then the packet (binary packets start with the type byte 4).
        let mut out = Vec::new();
        for (binary, data) in &packets {
            let len = data.len() + usize::from(*binary);
            out.push(u8::from(*binary));
            out.extend(len.to_string().bytes().map(|d| d - b'0'));
            out.push(255);
            if *binary {
                out.push(4);
            }
            out.extend_from_slice(data);
        }
        return ("application/octet-stream", out);
    }
    let mut out = String::new();
    for (binary, data) in &packets {
        let packet = if *binary {
            format!("b4{}", B64.encode(data))
        } else {
            String::from_utf8_lossy(data).into_owned()
        };
        out.push_str(&packet.encode_utf16().count().to_string());
        out.push(':');
        out.push_str(&packet);
    }
    (TEXT, out.into_bytes())
}

/// Decode a polling request body (a client's POST) of either version.
pub fn decode_poll(body: &[u8], v3: bool, binary_body: bool) -> Result<Vec<EioIn>, CodecError> {
    if v3 && binary_body {
        return decode_binary_payload_v3(body);
    }
    let text = std::str::from_utf8(body).map_err(|_| CodecError::Framing("body is not UTF-8"))?;
    let parts: Vec<String> = if v3 {
        split_payload_v3(text)?
    } else {
        text.split('\x1e').map(str::to_owned).collect()
    };
    parts
        .into_iter()
        .map(|p| {
            let b64 = if v3 {
                p.strip_prefix("b4")
            } else {
                p.strip_prefix('b')
            };
            match b64 {
                Some(b) => B64
                    .decode(b)
                    .map(EioIn::Binary)
                    .map_err(|_| CodecError::Framing("bad base64 in binary packet")),
                None if p.is_empty() => Err(CodecError::Empty),
                None => Ok(EioIn::Text(p)),
            }
        })
        .collect()
}

fn split_payload_v3(body: &str) -> Result<Vec<String>, CodecError> {
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
        out.push(data[..end].to_owned());
        rest = &data[end..];
    }
    Ok(out)
}

fn decode_binary_payload_v3(mut body: &[u8]) -> Result<Vec<EioIn>, CodecError> {
    let mut out = Vec::new();
    while let Some((&kind, rest)) = body.split_first() {
        let end = rest
            .iter()
            .position(|&b| b == 255)
            .ok_or(CodecError::Framing("missing length terminator"))?;
        if end == 0 || end > 10 || rest[..end].iter().any(|&d| d > 9) {
            return Err(CodecError::Framing("bad length digits"));
        }
        let len = rest[..end]
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d));
        let data = rest
            .get(end + 1..end + 1 + len)
            .ok_or(CodecError::Framing("length runs past the payload"))?;
        body = &rest[end + 1 + len..];
        match kind {
            0 => out
                .push(EioIn::Text(String::from_utf8(data.to_vec()).map_err(
                    |_| CodecError::Framing("text packet is not UTF-8"),
                )?)),
            1 => match data.split_first() {
                Some((4, d)) => out.push(EioIn::Binary(d.to_vec())),
                _ => return Err(CodecError::Framing("binary packet is not a message")),
            },
            _ => return Err(CodecError::Framing("bad packet kind")),
        }
    }
    Ok(out)
}

/// The bare Engine.IO profile's codec: a message is one Engine.IO message. A JSON string
/// goes out as its text, `{"$binary": "<base64>"}` as a binary message, anything else
/// as its JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct EioCodec;

impl EioCodec {
    /// The bytes of `{"$binary": "<base64>"}` (that object and nothing else).
    fn binary(data: &Value) -> Option<Vec<u8>> {
        let o = data.as_object().filter(|o| o.len() == 1)?;
        B64.decode(o.get("$binary")?.as_str()?).ok()
    }
}

impl crate::protocol::Codec for EioCodec {
    fn format(&self) -> crate::protocol::OutFormat {
        crate::protocol::OutFormat::ENGINE_IO
    }

    fn decode_text(&self, text: String) -> crate::protocol::ClientEvent {
        crate::protocol::ClientEvent {
            name: None,
            data: Some(Value::String(text.clone())),
            text,
            ack: None,
            namespace: None,
        }
    }

    fn encode(&self, msg: &crate::protocol::Message) -> Bytes {
        let mut r = RecordsBuf::default();
        match (&msg.data, Self::binary(&msg.data)) {
            (_, Some(bytes)) => r.binary(&bytes),
            (Value::String(s), _) => r.text(format!("4{s}").as_bytes()),
            (other, _) => r.text(format!("4{other}").as_bytes()),
        };
        r.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn records(packets: &[(bool, &[u8])]) -> Bytes {
        let mut r = RecordsBuf::default();
        for (b, d) in packets {
            if *b {
                r.binary(d);
            } else {
                r.text(d);
            }
        }
        r.freeze()
    }

    #[test]
    fn poll_payloads_of_both_versions() {
        let items = records(&[
            (false, b"42[\"a\"]"),
            (true, &[1, 2, 3]),
            (false, "4\u{20ac}".as_bytes()),
        ]);
        let (_, v4) = encode_poll([&items[..]], false, false);
        assert_eq!(v4, b"42[\"a\"]\x1ebAQID\x1e4\xe2\x82\xac");
        let (ct, v3b64) = encode_poll([&items[..]], true, true);
        assert!(ct.starts_with("text/plain"));
        assert_eq!(
            String::from_utf8(v3b64).unwrap(),
            "7:42[\"a\"]6:b4AQID2:4\u{20ac}"
        );
        let (ct, v3bin) = encode_poll([&items[..]], true, false);
        assert_eq!(ct, "application/octet-stream");
        assert_eq!(
            v3bin,
            [
                &[0u8, 7, 255][..],
                b"42[\"a\"]",
                &[1, 4, 255, 4, 1, 2, 3],
                &[0, 4, 255],
                "4\u{20ac}".as_bytes()
            ]
            .concat()
        );
        // Round trips through the decoders.
        let want = vec![
            EioIn::Text("42[\"a\"]".into()),
            EioIn::Binary(vec![1, 2, 3]),
            EioIn::Text("4\u{20ac}".into()),
        ];
        assert_eq!(decode_poll(&v4, false, false).unwrap(), want);
        assert_eq!(
            decode_poll(b"7:42[\"a\"]6:b4AQID2:4\xe2\x82\xac", true, false).unwrap(),
            want
        );
        assert_eq!(decode_poll(&v3bin, true, true).unwrap(), want);
        assert!(decode_poll(&[0, 9, 255, b'4'], true, true).is_err());
        assert!(decode_poll(b"", false, false).is_err());
    }

    #[test]
    fn the_bare_profile_sends_one_message_per_message() {
        use crate::protocol::{Codec, Message};
        use serde_json::json;
        let c = EioCodec;
        assert_eq!(
            c.encode(&Message::data(json!("hello"))),
            records(&[(false, b"4hello")])
        );
        assert_eq!(
            c.encode(&Message::data(json!({"a": 1}))),
            records(&[(false, br#"4{"a":1}"#)])
        );
        assert_eq!(
            c.encode(&Message::data(json!({"$binary": "AQID"}))),
            records(&[(true, &[1, 2, 3])])
        );
        // Not base64, or not alone in its object: JSON text.
        assert_eq!(
            c.encode(&Message::data(json!({"$binary": "!!"}))),
            records(&[(false, br#"4{"$binary":"!!"}"#)])
        );
        let ev = c.decode_text("hi".into());
        assert_eq!(
            (ev.name, ev.data, ev.text),
            (None, Some(json!("hi")), "hi".into())
        );
    }
}
