//! The `ws-json` profile: raw WebSocket text frames carrying JSON.

use bytes::Bytes;
use serde_json::Value;

use super::{frame, ClientEvent, Codec, Message, OutFormat};

/// ws-json codec; the event name is read from a configurable field (seed 004 uses `method`).
#[derive(Debug, Clone)]
pub struct WsJson {
    /// JSON field naming the event.
    pub event_field: String,
    /// Field added to object messages carrying a room-history offset.
    pub offset_field: String,
}

impl Codec for WsJson {
    fn format(&self) -> OutFormat {
        OutFormat::WS_JSON
    }

    fn decode_text(&self, text: String) -> ClientEvent {
        let data: Option<Value> = serde_json::from_str(&text).ok();
        let name = data
            .as_ref()
            .and_then(|v| v.get(&self.event_field))
            .and_then(Value::as_str)
            .map(str::to_owned);
        ClientEvent {
            name,
            data,
            text,
            ack: None,
            namespace: None,
        }
    }

    fn encode(&self, msg: &Message) -> Bytes {
        match (&msg.data, &msg.position) {
            (Value::Object(o), Some(off)) => {
                let mut o = o.clone();
                o.insert(self.offset_field.clone(), Value::String(off.to_string()));
                frame::text(Value::Object(o).to_string().as_bytes())
            }
            (Value::String(s), _) => frame::text(s.as_bytes()),
            (other, _) => frame::text(other.to_string().as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_event_field() {
        let c = WsJson {
            event_field: "method".into(),
            offset_field: "offset".into(),
        };
        let e = c.decode_text(r#"{"method":"index.index.index","x":1}"#.into());
        assert_eq!(e.name.as_deref(), Some("index.index.index"));
        assert_eq!(e.data, Some(json!({"method":"index.index.index","x":1})));
        let e = c.decode_text("not json".into());
        assert_eq!((e.name, e.data, e.text.as_str()), (None, None, "not json"));
    }

    #[test]
    fn strings_go_out_raw() {
        let c = WsJson {
            event_field: "event".into(),
            offset_field: "offset".into(),
        };
        assert_eq!(&c.encode(&Message::data(json!("3")))[..], b"\x81\x013");
        assert_eq!(
            &c.encode(&Message::data(json!({"a":1})))[..],
            b"\x81\x07{\"a\":1}"
        );
    }
}
