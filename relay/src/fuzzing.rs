//! Entry points of the fuzz targets in `fuzz/` (not an API): each feeds arbitrary bytes
//! to one decoder and checks what must hold for any input. A decoder may refuse input;
//! it must never panic, and what it accepts must survive its encoder.

use std::sync::Arc;

use crate::broker::{redis_history, Publication};
use crate::protocol::engineio::{decode_payload_v3, decode_payload_v4, decode_poll, EioPacket};
use crate::protocol::socketio::SioPacket;
use crate::protocol::{json::WsJson, Codec};

/// The config loader: refuses or accepts; an accepted config validates again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::Config::parse(text, None) {
        let _ = c.warnings();
    }
}

/// A ws-json client message (any text becomes an event).
pub fn ws_json(data: &[u8]) {
    let codec = WsJson {
        event_field: "event".into(),
        offset_field: "offset".into(),
    };
    let _ = codec.decode_text(String::from_utf8_lossy(data).into_owned());
}

/// Engine.IO: packets, v3 and v4 payloads, and polling bodies in every framing.
pub fn engineio(data: &[u8]) {
    let (flags, body) = data.split_first().unwrap_or((&0, &[]));
    for (v3, binary) in [(false, false), (true, false), (true, true)] {
        if flags & 3 == u8::from(v3) + u8::from(binary) {
            let _ = decode_poll(body, v3, binary);
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(p) = EioPacket::decode(text) {
            assert_eq!(
                EioPacket::decode(&p.encode()).ok(),
                Some(p),
                "packet round trip"
            );
        }
        let _ = decode_payload_v3(text);
        let _ = decode_payload_v4(text);
    }
}

/// A Socket.IO packet: what decodes encodes back to the same packet.
pub fn socketio(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = SioPacket::decode(text) {
        let again = SioPacket::decode(&p.encode());
        assert_eq!(
            again.as_ref().ok(),
            Some(&p),
            "socket.io round trip of {text:?}"
        );
    }
}

/// What travels between nodes: a publication, a payload's origin line, a room-history
/// entry in Redis.
pub fn cluster(data: &[u8]) {
    if let Ok(p) = Publication::decode(data) {
        let bytes = p.encode().expect("a decoded publication encodes");
        let back = Publication::decode(&bytes).expect("and decodes again");
        assert_eq!(back.tenant, p.tenant);
        assert_eq!(back.target, p.target);
        assert_eq!(back.exclude, p.exclude);
    }
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let _ = redis_history::parse_origin(line);
    let _ = redis_history::parse_entry(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::store::redis::parse_member(text);
    }
}

/// The embedded store's records: an offline or history entry, a key-value log record.
pub fn store(data: &[u8]) {
    let _ = crate::store::sled::read_entry(data);
    crate::store::kv::record::round_trip(data);
}

/// A request path: normalising is idempotent, and what comes out has no dot segment.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = crate::web::normalize_path(text) {
        assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
        let again = crate::web::normalize_path(&p).map(|q| q.into_owned());
        assert_eq!(again.as_deref(), Ok(&*p), "normalising {text:?} twice");
    }
}

/// A push to the open policy, over HTTP (query, form and JSON bodies) and UDP.
pub fn ingress(data: &[u8]) {
    use crate::policy::{IngressRequest, IngressSource, Policy};
    let (flags, body) = data.split_first().unwrap_or((&0, &[]));
    let Ok(policy) = crate::policy::open::OpenPolicy::from_settings(&toml::Table::new()) else {
        return;
    };
    let (query, body) = match flags & 1 {
        0 => (String::from_utf8_lossy(body).into_owned(), &[][..]),
        _ => (String::new(), body),
    };
    let content_type = match flags & 6 {
        0 => "application/json",
        2 => "application/x-www-form-urlencoded",
        _ => "text/plain",
    };
    let source = match flags & 8 {
        0 => IngressSource::Http {
            method: "POST".into(),
            path: "/push".into(),
            query,
            headers: vec![("content-type".into(), content_type.into())],
        },
        _ => IngressSource::Udp,
    };
    let req = IngressRequest {
        source,
        remote: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        body: bytes::Bytes::copy_from_slice(body),
    };
    let hub = Arc::new(crate::hub::Hub::default());
    let fut = policy.on_ingress(&req, &*hub);
    let _ = futures_lite_block_on(fut);
}

/// Run a future that never waits (the open policy answers at once).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
