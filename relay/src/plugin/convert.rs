//! WIT values ↔ relay's policy types. Everything a plugin returns is checked
//! here: JSON text must parse, statuses must be valid, lists are bounded.

use bytes::Bytes;
use serde_json::Value;

use super::bindings::relay::plugin::types as w;
use crate::hub::Target;
use crate::policy::{
    Action, ClientEvent, ConnInfo, DisconnectInfo, HandshakeDecision, IngressOutcome,
    IngressRequest, IngressSource,
};
use crate::protocol::Message;

/// Most actions one hook may return.
pub const MAX_ACTIONS: usize = 4096;

fn unpairs(v: Vec<w::PairResult>) -> Vec<(String, String)> {
    v.into_iter().map(|p| (p.name, p.value)).collect()
}

/// `ip:port` as text, without the formatting machinery or an allocation for the common
/// IPv4 case (every hook call carries the peer's address).
pub struct AddrText {
    buf: [u8; 21],
    len: u8,
    other: Option<String>,
}

impl AddrText {
    /// `a` as text.
    pub fn new(a: &std::net::SocketAddr) -> Self {
        let std::net::SocketAddr::V4(v4) = a else {
            return AddrText {
                buf: [0; 21],
                len: 0,
                other: Some(a.to_string()),
            };
        };
        let mut t = AddrText {
            buf: [0; 21],
            len: 0,
            other: None,
        };
        for (i, o) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                t.push(b'.');
            }
            t.number(o.into());
        }
        t.push(b':');
        t.number(v4.port().into());
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    fn number(&mut self, n: u32) {
        let mut digits = [0u8; 5];
        let (mut i, mut n) = (digits.len(), n);
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[i..].iter().for_each(|&d| self.push(d));
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.other {
            Some(s) => s,
            // Only ASCII digits, dots and a colon were written.
            None => std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default(),
        }
    }
}

fn json_text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

fn parse_json(what: &str, s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("{what} is not valid JSON ({e}): {:.80}", s))
}

// Hook arguments borrow relay's values: each `*Args` holds the little that has to be
// made into text first (addresses, JSON, the header list), and `wit()` lends it all.

/// Headers of the WebSocket upgrade itself: relay handles them, a plugin has no use for
/// them (and each header passed costs the call two strings).
const UPGRADE_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// Which request headers hooks see: the tenant's `plugin_headers`, or all (but, for
/// handshakes, the upgrade's own).
/// Cheap to clone (each handshake call hands its filter to the store).
#[derive(Debug, Clone, Default)]
pub struct HeaderFilter {
    only: Option<std::sync::Arc<[String]>>,
    /// Names a hook asked for that this filter hides, each reported once.
    refused: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// How many distinct refused names are remembered (and so logged) per filter.
const MAX_REFUSED: usize = 32;

impl HeaderFilter {
    /// Only `names` (lowercase), or every header when `None`.
    pub fn new(names: Option<&[String]>) -> Self {
        HeaderFilter {
            only: names.map(Into::into),
            refused: Default::default(),
        }
    }

    /// The names shown (`None`: every header).
    pub fn names(&self) -> Option<Vec<String>> {
        self.only.as_ref().map(|n| n.to_vec())
    }

    /// Whether a hook asking for header `name` (lowercase) is refused for the first time
    /// because the plugin (or the tenant's `plugin_headers`) did not declare it: the
    /// caller logs it, once per name (up to 32 names).
    pub fn first_refusal(&self, name: &str) -> bool {
        if self.only.is_none() || self.passes(name, true) {
            return false;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.len() < MAX_REFUSED && refused.insert(name.to_owned())
    }

    /// This filter narrowed to the headers a plugin says it reads (`None`: all).
    pub fn narrowed(&self, plugin: Option<&[String]>) -> Self {
        let only = match (&self.only, plugin) {
            (None, None) => None,
            (Some(tenant), None) => Some(tenant.clone()),
            (None, Some(wanted)) => Some(wanted.iter().map(|n| n.to_ascii_lowercase()).collect()),
            (Some(tenant), Some(wanted)) => Some(
                tenant
                    .iter()
                    .filter(|t| wanted.iter().any(|w| w.eq_ignore_ascii_case(t)))
                    .cloned()
                    .collect(),
            ),
        };
        HeaderFilter {
            only,
            refused: Default::default(),
        }
    }

    /// Whether header `name` (lowercase) is shown, on a handshake or a push.
    pub fn passes(&self, name: &str, handshake: bool) -> bool {
        match &self.only {
            Some(names) => names.iter().any(|n| n == name),
            None => !(handshake && UPGRADE_HEADERS.contains(&name)),
        }
    }

    /// The value of a handshake's header `name` (lowercase), if it passes and is text.
    pub fn handshake_header<'h>(
        &self,
        headers: &'h http::HeaderMap,
        name: &str,
    ) -> Option<&'h str> {
        if !self.passes(name, true) {
            return None;
        }
        headers.get(name)?.to_str().ok()
    }

    /// The headers of a handshake that pass (and are UTF-8 text), as (name, value).
    pub fn handshake_headers<'h>(
        &'h self,
        headers: &'h http::HeaderMap,
    ) -> impl Iterator<Item = (&'h str, &'h str)> {
        headers
            .iter()
            .filter(|(name, _)| self.passes(name.as_str(), true))
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
    }
}

/// A connection for the plugin.
pub struct ConnArgs<'r> {
    conn: &'r ConnInfo,
    data: Option<String>,
    remote: AddrText,
}

impl<'r> ConnArgs<'r> {
    /// Prepare `conn`.
    pub fn new(conn: &'r ConnInfo) -> Self {
        ConnArgs {
            conn,
            data: json_text(&conn.data),
            remote: AddrText::new(&conn.remote),
        }
    }

    /// The WIT value.
    pub fn wit(&self) -> w::ConnInfo<'_> {
        w::ConnInfo {
            id: &self.conn.id,
            user: self.conn.user.as_deref(),
            data: self.data.as_deref(),
            authenticated: self.conn.authenticated,
            remote: self.remote.as_str(),
        }
    }
}

/// A client event for the plugin.
pub struct EventArgs<'r> {
    event: &'r ClientEvent,
    data: Option<String>,
}

impl<'r> EventArgs<'r> {
    /// Prepare `event`.
    pub fn new(event: &'r ClientEvent) -> Self {
        EventArgs {
            event,
            data: event.data.as_ref().map(Value::to_string),
        }
    }

    /// The WIT value.
    pub fn wit(&self) -> w::ClientEvent<'_> {
        w::ClientEvent {
            name: self.event.name.as_deref(),
            data: self.data.as_deref(),
            text: &self.event.text,
            ack: self.event.ack,
            namespace: self.event.namespace.as_deref(),
        }
    }
}

/// Disconnect details for the plugin.
pub fn disconnect_info(d: &DisconnectInfo) -> w::DisconnectInfo<'_> {
    w::DisconnectInfo {
        code: d.code,
        reason: &d.reason,
    }
}

/// An ingress request for the plugin.
pub struct IngressArgs<'r> {
    req: &'r IngressRequest,
    headers: Vec<w::PairParam<'r>>,
    remote: AddrText,
}

impl<'r> IngressArgs<'r> {
    /// Prepare `req` with the headers `filter` lets through.
    pub fn new(req: &'r IngressRequest, filter: &HeaderFilter) -> Self {
        let headers = match &req.source {
            IngressSource::Http { headers, .. } => headers
                .iter()
                .filter(|(name, _)| filter.passes(name, false))
                .map(|(name, value)| w::PairParam { name, value })
                .collect(),
            IngressSource::Udp => Vec::new(),
        };
        IngressArgs {
            req,
            headers,
            remote: AddrText::new(&req.remote),
        }
    }

    /// The WIT value.
    pub fn wit(&self) -> w::IngressRequest<'_> {
        let source = match &self.req.source {
            IngressSource::Http {
                method,
                path,
                query,
                ..
            } => w::IngressSource::Http(w::HttpRequest {
                method,
                path,
                query,
                headers: &self.headers,
            }),
            IngressSource::Udp => w::IngressSource::Udp,
        };
        w::IngressRequest {
            source,
            remote: self.remote.as_str(),
            body: &self.req.body,
        }
    }
}

fn message(m: w::Message) -> Result<Message, String> {
    let data = parse_json("message data", &m.data)?;
    if m.spread && !data.is_array() {
        return Err("a message with `spread` needs data that is a JSON array".into());
    }
    Ok(Message {
        event: m.event,
        data,
        ack: m.ack,
        spread: m.spread,
        position: None,
    })
}

fn target(t: w::Target) -> Target {
    match t {
        w::Target::Connection(c) => Target::Connection(c),
        w::Target::User(u) => Target::User(u),
        w::Target::Rooms(r) => Target::Rooms(r),
        w::Target::Tenant => Target::Tenant,
    }
}

/// The plugin's actions, checked.
pub fn actions(v: Vec<w::Action>) -> Result<Vec<Action>, String> {
    if v.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions returned; at most {MAX_ACTIONS} are allowed",
            v.len()
        ));
    }
    v.into_iter()
        .map(|a| {
            Ok(match a {
                w::Action::Reply(m) => Action::Reply {
                    message: message(m)?,
                },
                w::Action::Emit(e) => Action::Emit {
                    target: target(e.target),
                    message: message(e.message)?,
                    exclude_sender: e.exclude_sender,
                },
                w::Action::Join(m) => Action::Join {
                    rooms: m.rooms,
                    conn: m.conn,
                },
                w::Action::Leave(m) => Action::Leave {
                    rooms: m.rooms,
                    conn: m.conn,
                },
                w::Action::SetIdentity(i) => Action::SetIdentity {
                    user: i.user,
                    data: i
                        .data
                        .as_deref()
                        .map(|d| parse_json("identity data", d))
                        .transpose()?,
                    conn: i.conn,
                },
                w::Action::Close(c) => Action::Close {
                    code: c.code,
                    reason: c.reason,
                    conn: c.conn,
                },
                w::Action::StoreOffline(o) => Action::StoreOffline {
                    user: o.user,
                    room: o.room,
                    message: message(o.message)?,
                },
                w::Action::AppendLog(l) => Action::AppendLog {
                    file: l.file,
                    line: l.line,
                },
                w::Action::Webhook(h) => Action::Webhook {
                    method: h.method,
                    url: h.url,
                    headers: unpairs(h.headers),
                    body: h.body,
                },
            })
        })
        .collect()
}

fn status(s: u16) -> Result<u16, String> {
    if (100..=999).contains(&s) && http::StatusCode::from_u16(s).is_ok() {
        Ok(s)
    } else {
        Err(format!("invalid HTTP status {s}"))
    }
}

/// The plugin's handshake decision, checked.
pub fn decision(d: w::HandshakeDecision) -> Result<HandshakeDecision, String> {
    Ok(match d {
        w::HandshakeDecision::Accept(a) => HandshakeDecision::Accept {
            user: a.user,
            data: match a.data {
                Some(d) => parse_json("accept data", &d)?,
                None => Value::Null,
            },
            rooms: a.rooms,
            headers: unpairs(a.headers),
            actions: actions(a.actions)?,
        },
        w::HandshakeDecision::Defer(v) => HandshakeDecision::Defer {
            actions: actions(v)?,
        },
        w::HandshakeDecision::Reject(r) => HandshakeDecision::Reject {
            status: status(r.status)?,
            headers: unpairs(r.headers),
            body: r.body,
            actions: actions(r.actions)?,
        },
    })
}

/// The plugin's ingress outcome, checked.
pub fn outcome(o: w::IngressOutcome) -> Result<IngressOutcome, String> {
    Ok(IngressOutcome {
        status: status(o.status)?,
        headers: unpairs(o.headers),
        body: Bytes::from(o.body),
        actions: actions(o.actions)?,
    })
}

#[cfg(test)]
mod tests {
    use super::HeaderFilter;

    #[test]
    fn a_header_the_plugin_did_not_declare_is_reported_once_per_name() {
        let all = HeaderFilter::default();
        assert!(
            !all.first_refusal("x-api-key"),
            "nothing declared: all are shown"
        );
        let f = HeaderFilter::default().narrowed(Some(&["Host".to_owned()]));
        assert!(!f.first_refusal("host"), "declared");
        assert!(f.first_refusal("x-api-key"));
        assert!(!f.first_refusal("x-api-key"), "once per name");
        assert!(
            f.clone().first_refusal("x-token"),
            "clones share what was reported"
        );
        assert!(!f.first_refusal("x-token"));
        for i in 0..100 {
            f.first_refusal(&format!("x-{i}"));
        }
        assert!(
            !f.first_refusal("x-late"),
            "at most 32 names are remembered"
        );
    }

    #[test]
    fn a_spread_message_needs_an_array_of_arguments() {
        let m = |data: &str, spread: bool| {
            super::message(super::w::Message {
                event: Some("e".into()),
                data: data.into(),
                ack: None,
                spread,
            })
        };
        assert!(m("[1,null]", true).is_ok_and(|m| m.spread));
        assert!(m("[]", true).is_ok());
        assert!(m("{\"a\":1}", true).is_err());
        assert!(m("null", true).is_err());
        assert!(m("null", false).is_ok_and(|m| !m.spread));
    }

    #[test]
    fn a_plugin_narrows_the_headers_to_those_it_reads() {
        let names = |f: &HeaderFilter, handshake: bool| -> Vec<&str> {
            ["host", "x-token", "cookie", "upgrade"]
                .into_iter()
                .filter(|n| f.passes(n, handshake))
                .collect()
        };
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let all = HeaderFilter::default();
        // The plugin names none: all (but the upgrade's own on a handshake).
        assert_eq!(
            names(&all.narrowed(None), true),
            ["host", "x-token", "cookie"]
        );
        assert_eq!(names(&all.narrowed(None), false).len(), 4);
        // It names some: those only, on handshakes and pushes alike.
        let token = all.narrowed(Some(&s(&["X-Token"])));
        assert_eq!(names(&token, true), ["x-token"]);
        assert_eq!(names(&token, false), ["x-token"]);
        assert!(names(&all.narrowed(Some(&[])), true).is_empty());
        // The tenant's plugin_headers and the plugin's list: what both allow.
        let tenant = HeaderFilter::new(Some(&s(&["host", "x-token"])));
        assert_eq!(names(&tenant.narrowed(None), true), ["host", "x-token"]);
        let both = tenant.narrowed(Some(&s(&["x-token", "cookie"])));
        assert_eq!(names(&both, true), ["x-token"]);
    }

    #[test]
    fn addresses_read_as_their_display() {
        for a in [
            "127.0.0.1:1",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.30.4:8080",
            "[::1]:443",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(super::AddrText::new(&a).as_str(), a.to_string());
        }
    }
}
