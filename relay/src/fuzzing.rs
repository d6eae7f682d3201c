//! Entry points of the fuzz targets in `fuzz/` (not an API): each feeds arbitrary bytes
//! to one decoder and checks what must hold for any input. A decoder may refuse input;
//! it must never panic, and what it accepts must survive its encoder.

use std::sync::Arc;

use crate::broker::{redis_history, Publication};
use crate::plugin::bindings::relay::plugin::types as w;
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

/// A plugin's returned actions, handshake decision and ingress outcome, built from the
/// bytes: the host's checks refuse or accept them, and what it accepts crosses to another
/// node (the JSON of a forwarded action) intact. The raw bytes are also tried as such a
/// forwarded action.
pub fn actions(data: &[u8]) {
    use crate::plugin::convert;
    use crate::policy::Action;
    if let Ok(a) = serde_json::from_slice::<Action>(data) {
        let json = serde_json::to_vec(&a).expect("a decoded action encodes");
        let back: Action = serde_json::from_slice(&json).expect("and decodes again");
        assert_eq!(back, a, "forwarded action round trip");
    }
    let mut r = WitReader(data);
    let checked = match r.byte() % 3 {
        0 => convert::actions(r.actions()).ok(),
        1 => convert::decision(r.decision()).ok().map(|d| match d {
            crate::policy::HandshakeDecision::Accept { actions, .. }
            | crate::policy::HandshakeDecision::Defer { actions }
            | crate::policy::HandshakeDecision::Reject { actions, .. } => actions,
        }),
        _ => convert::outcome(r.outcome()).ok().map(|o| o.actions),
    };
    for a in checked.into_iter().flatten() {
        let json = serde_json::to_vec(&a).expect("an action encodes");
        let back: Action = serde_json::from_slice(&json).expect("a forwarded action decodes");
        assert_eq!(back, a, "forwarded action round trip");
        if let Action::Close { code, reason, .. } = &a {
            // A close frame's payload (code and reason) fits a control frame: 125 bytes.
            let frame = crate::protocol::frame::close(*code, reason);
            assert!(frame.len() <= 2 + 125 && usize::from(frame[1]) == frame.len() - 2);
        }
    }
}

/// Builds the WIT values a plugin could return from fuzz bytes (a byte picks a variant,
/// a length byte precedes each string; running out of bytes gives zeros and empties).
struct WitReader<'a>(&'a [u8]);

impl WitReader<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn string(&mut self) -> String {
        let n = usize::from(self.byte()).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }

    fn opt(&mut self) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.string())
    }

    fn strings(&mut self) -> Vec<String> {
        (0..self.byte() % 4).map(|_| self.string()).collect()
    }

    fn pairs(&mut self) -> Vec<w::PairResult> {
        (0..self.byte() % 3)
            .map(|_| w::PairResult {
                name: self.string(),
                value: self.string(),
            })
            .collect()
    }

    fn message(&mut self) -> w::Message {
        let flags = self.byte();
        w::Message {
            event: self.opt(),
            data: self.string(),
            spread: flags & 1 == 1,
            ack: (flags & 2 == 2).then(|| u64::from(self.u16())),
        }
    }

    fn membership(&mut self) -> w::Membership {
        w::Membership {
            rooms: self.strings(),
            conn: self.opt(),
        }
    }

    fn action(&mut self) -> w::Action {
        match self.byte() % 10 {
            0 => w::Action::Reply(self.message()),
            1 => w::Action::Emit(w::Emit {
                target: match self.byte() % 4 {
                    0 => w::Target::Connection(self.string()),
                    1 => w::Target::User(self.string()),
                    2 => w::Target::Rooms(self.strings()),
                    _ => w::Target::Tenant,
                },
                message: self.message(),
                exclude_sender: self.byte() & 1 == 1,
            }),
            2 => w::Action::Join(self.membership()),
            3 => w::Action::Leave(self.membership()),
            4 => w::Action::SetIdentity(w::Identity {
                user: self.opt(),
                data: self.opt(),
                conn: self.opt(),
            }),
            5 => w::Action::Close(w::Close {
                code: self.u16(),
                reason: self.string(),
                conn: self.opt(),
            }),
            6 => w::Action::StoreOffline(w::Offline {
                user: self.opt(),
                room: self.opt(),
                message: self.message(),
            }),
            7 => w::Action::AppendLog(w::LogLine {
                file: self.string(),
                line: self.string(),
            }),
            _ => w::Action::Webhook(w::Webhook {
                method: self.string(),
                url: self.string(),
                headers: self.pairs(),
                body: self.string(),
            }),
        }
    }

    fn actions(&mut self) -> Vec<w::Action> {
        (0..self.byte() % 8).map(|_| self.action()).collect()
    }

    fn decision(&mut self) -> w::HandshakeDecision {
        match self.byte() % 3 {
            0 => w::HandshakeDecision::Accept(w::Accept {
                user: self.opt(),
                data: self.opt(),
                rooms: self.strings(),
                headers: self.pairs(),
                actions: self.actions(),
            }),
            1 => w::HandshakeDecision::Defer(self.actions()),
            _ => w::HandshakeDecision::Reject(w::Reject {
                status: self.u16(),
                headers: self.pairs(),
                body: self.string(),
                actions: self.actions(),
            }),
        }
    }

    fn outcome(&mut self) -> w::IngressOutcome {
        w::IngressOutcome {
            status: self.u16(),
            headers: self.pairs(),
            body: self.string().into_bytes(),
            actions: self.actions(),
        }
    }
}
