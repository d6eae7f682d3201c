//! Round-trip properties of every decoder that has an encoder (proptest): what an encoder
//! writes, its decoder reads back unchanged. The fuzz targets (`fuzz/`) cover the other
//! direction, arbitrary bytes into the decoders.

use std::sync::Arc;

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::Value;

use crate::broker::Publication;
use crate::hub::{ConnId, Target};
use crate::protocol::engineio::{
    decode_payload_v3, decode_payload_v4, decode_poll, encode_payload_v3, encode_payload_v4,
    encode_poll, EioIn, EioPacket, EioType, RecordsBuf,
};
use crate::protocol::socketio::{extract_binary, insert_binary, SioPacket, SioType};
use crate::protocol::{Message, StreamPosition};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Any JSON value serde_json writes and reads back as itself (finite numbers).
fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn eio_kind() -> impl Strategy<Value = EioType> {
    prop_oneof![
        Just(EioType::Open),
        Just(EioType::Close),
        Just(EioType::Ping),
        Just(EioType::Pong),
        Just(EioType::Message),
        Just(EioType::Upgrade),
        Just(EioType::Noop),
    ]
}

/// A text packet; v4 payloads separate packets with `\x1e`, so it has none.
fn eio_packet() -> impl Strategy<Value = EioPacket> {
    (eio_kind(), "[^\u{1e}]{0,12}").prop_map(|(kind, data)| EioPacket { kind, data })
}

/// What a client sends in one polling request: text packets and binary messages.
fn eio_in() -> impl Strategy<Value = Vec<EioIn>> {
    let one = prop_oneof![
        eio_packet().prop_map(|p| EioIn::Text(p.encode())),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(EioIn::Binary),
    ];
    prop::collection::vec(one, 1..6)
}

/// A Socket.IO packet of a valid shape for its type.
fn sio_packet() -> impl Strategy<Value = SioPacket> {
    let nsp = prop_oneof![Just("/".to_owned()), "/[a-z]{1,8}"];
    let args = prop::collection::vec(json(), 0..3);
    let kind_data = prop_oneof![
        (Just(SioType::Connect), prop::option::of(json_object())),
        (Just(SioType::Disconnect), Just(None)),
        (
            Just(SioType::ConnectError),
            any::<String>().prop_map(|s| Some(Value::String(s)))
        ),
        (Just(SioType::ConnectError), json_object().prop_map(Some)),
        (
            prop_oneof![Just(SioType::Event), Just(SioType::BinaryEvent)],
            (any::<String>(), args.clone()).prop_map(|(name, mut a)| {
                a.insert(0, Value::String(name));
                Some(Value::Array(a))
            })
        ),
        (
            prop_oneof![Just(SioType::Ack), Just(SioType::BinaryAck)],
            args.prop_map(|a| Some(Value::Array(a)))
        ),
    ];
    (kind_data, nsp, prop::option::of(any::<u64>()), 0usize..5).prop_map(
        |((kind, data), nsp, id, attachments)| SioPacket {
            kind,
            nsp,
            id,
            attachments: match kind {
                SioType::BinaryEvent | SioType::BinaryAck => attachments,
                _ => 0,
            },
            data,
        },
    )
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{0,6}", json(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// JSON with `{"$binary": "<base64>"}` objects (binary attachments) in it.
fn json_with_binary() -> impl Strategy<Value = Value> {
    let binary = prop::collection::vec(any::<u8>(), 0..12)
        .prop_map(|b| serde_json::json!({"$binary": B64.encode(b)}));
    prop_oneof![json(), binary].prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop::option::of(any::<String>()),
        json(),
        prop::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(event, data, ack, spread)| Message {
            event,
            data,
            ack,
            spread,
            position: None,
        })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        any::<String>().prop_map(Target::Connection),
        any::<String>().prop_map(Target::User),
        prop::collection::vec(any::<String>(), 0..4).prop_map(Target::Rooms),
        Just(Target::Tenant),
    ]
}

fn publication() -> impl Strategy<Value = Publication> {
    let position = prop::option::of(
        ("[0-9a-z]{1,12}", any::<u64>())
            .prop_map(|(epoch, offset)| StreamPosition { epoch, offset }),
    );
    (
        any::<String>(),
        target(),
        message(),
        position,
        any::<bool>(),
    )
        .prop_map(|(tenant, target, mut message, position, exclude)| {
            message.position = position;
            Publication {
                tenant: Arc::from(tenant),
                target,
                message,
                exclude: exclude.then(ConnId::random),
            }
        })
}

proptest! {
    #[test]
    fn an_engineio_packet_round_trips(p in eio_packet()) {
        prop_assert_eq!(EioPacket::decode(&p.encode()).ok(), Some(p));
    }

    #[test]
    fn engineio_text_payloads_round_trip(ps in prop::collection::vec(eio_packet(), 1..6)) {
        prop_assert_eq!(decode_payload_v4(&encode_payload_v4(&ps)).ok(), Some(ps.clone()));
        prop_assert_eq!(decode_payload_v3(&encode_payload_v3(&ps)).ok(), Some(ps));
    }

    /// A polling response in every framing (v4; v3 text with base64 binaries; v3 binary)
    /// decodes to the packets queued, by the decoder of clients' bodies.
    #[test]
    fn engineio_polling_bodies_round_trip(packets in eio_in()) {
        let mut r = RecordsBuf::default();
        for p in &packets {
            match p {
                EioIn::Text(t) => r.text(t.as_bytes()),
                EioIn::Binary(b) => r.binary(b),
            };
        }
        let records = r.freeze();
        for (v3, b64) in [(false, false), (true, true), (true, false)] {
            let (content_type, body) = encode_poll([&records[..]], v3, b64);
            let binary_body = content_type == "application/octet-stream";
            prop_assert_eq!(
                decode_poll(&body, v3, binary_body).ok(),
                Some(packets.clone()),
                "v3 {} b64 {}", v3, b64
            );
        }
    }

    #[test]
    fn a_socketio_packet_round_trips(p in sio_packet()) {
        let text = p.encode();
        prop_assert_eq!(SioPacket::decode(&text).ok(), Some(p), "{}", text);
    }

    /// Binary data leaves a packet as attachments and comes back in its place.
    #[test]
    fn socketio_attachments_round_trip(v in json_with_binary()) {
        let mut sent = v.clone();
        let mut attachments = Vec::new();
        extract_binary(&mut sent, &mut attachments);
        prop_assert!(insert_binary(&mut sent, &attachments));
        prop_assert_eq!(sent, v);
    }

    /// What one node publishes, another decodes with every field, the position included.
    #[test]
    fn a_publication_round_trips(p in publication()) {
        let bytes = p.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Publication::decode(&bytes).ok(), Some(p));
    }

    /// A message kept in the embedded store reads back as it was written.
    #[test]
    fn a_stored_message_round_trips(m in message()) {
        let value = crate::store::sled::entry_value(&m)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (stored, back) = crate::store::sled::read_entry(&value);
        prop_assert!(stored.is_some());
        prop_assert_eq!(back, Some(m));
    }

    /// The key-value log's records: sets and deletes decode to what was written.
    #[test]
    fn kv_log_records_round_trip(
        ops in prop::collection::vec(
            (any::<String>(), prop::option::of((prop::collection::vec(any::<u8>(), 0..32), any::<u64>()))),
            0..8,
        )
    ) {
        use crate::store::kv::record::{ops as decode, put_delete, put_set, Op};
        let mut rec = Vec::new();
        for (key, set) in &ops {
            match set {
                Some((value, exp)) => put_set(&mut rec, key, value, *exp),
                None => put_delete(&mut rec, key),
            }
        }
        let back: Vec<_> = decode(&rec)
            .map(|op| match op {
                Some(Op::Set(k, v, e)) => Some((k.to_owned(), Some((v.to_vec(), e)))),
                Some(Op::Delete(k)) => Some((k.to_owned(), None)),
                None => None,
            })
            .collect();
        let want: Vec<_> = ops.into_iter().map(Some).collect();
        prop_assert_eq!(back, want);
    }
}
