//! Write relay plugins in Rust.
//!
//! A plugin implements [`Plugin`] (only `on_handshake` is required; the other
//! hooks default to doing nothing) in a block marked [`plugin`], which exports it
//! and tells relay which hooks to call:
//!
//! ```ignore
//! use relay_plugin_sdk::*;
//!
//! struct Hello;
//! #[plugin]
//! impl Plugin for Hello {
//!     fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
//!         match query_param(req.query(), "user") {
//!             Some(user) => Ok(accept(Some(user), vec![])),
//!             None => Ok(reject(401, "user required")),
//!         }
//!     }
//!     fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
//!         Ok(vec![reply(&serde_json::json!({"echo": ev.text}))])
//!     }
//! }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component relay loads. The
//! contract itself, documented item by item, is `wit/plugin.wit`.

pub mod jwt;
pub mod pool;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "relay_plugin_sdk::bindings",
    });
}

pub use bindings::relay::plugin::host::Level;
pub use bindings::relay::plugin::types::{
    Accept, Action, ClientEvent, Close, ConnInfo, DisconnectInfo, Emit, HandshakeDecision, Hooks,
    HttpRequest, Identity, IngressOutcome, IngressRequest, IngressSource, LogLine, Membership,
    Message, Offline, Pair, PluginInfo, Reject, Target, Webhook,
};

/// A WebSocket handshake being decided. The query string comes with the call; the rest
/// is read from relay when asked for, each method copying into the plugin only what it
/// returns (call one once and keep the result if you need it twice).
pub struct HandshakeRequest<'a> {
    query: String,
    req: &'a bindings::relay::plugin::types::HandshakeRequest,
}

impl<'a> HandshakeRequest<'a> {
    #[doc(hidden)]
    pub fn new(query: String, req: &'a bindings::relay::plugin::types::HandshakeRequest) -> Self {
        HandshakeRequest { query, req }
    }

    /// Raw query string without `?` (URL-encoded): read it with [`query_params`].
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The id the connection will have.
    pub fn conn(&self) -> String {
        self.req.conn()
    }

    /// Request path, e.g. `/live`.
    pub fn path(&self) -> String {
        self.req.path()
    }

    /// The request headers the plugin may see (names lowercase): those it names in
    /// `#[plugin(headers = [...])]` and the tenant's `plugin_headers` allows.
    pub fn headers(&self) -> Vec<Pair> {
        self.req.headers()
    }

    /// One of those headers (`name` in any case); none if absent or not visible.
    pub fn header(&self, name: &str) -> Option<String> {
        self.req.header(name)
    }

    /// Peer address, `ip:port`.
    pub fn remote(&self) -> String {
        self.req.remote()
    }

    /// Whether the connection is TLS.
    pub fn tls(&self) -> bool {
        self.req.tls()
    }

    /// Socket.IO: the namespace the client connects to; none for ws-json and engine.io.
    pub fn namespace(&self) -> Option<String> {
        self.req.namespace()
    }

    /// Socket.IO v3/v4: the CONNECT packet's `auth` payload as JSON text.
    pub fn auth(&self) -> Option<String> {
        self.req.auth()
    }
}
pub use serde_json;
pub use std::borrow::Cow;

/// A tenant's plugin. Every hook runs under relay's deadline and memory cap.
///
/// Implement it in a block marked [`#[plugin]`](plugin): relay calls only the optional
/// hooks the block defines; one left out behaves as its default here, without a call.
pub trait Plugin {
    /// Once per instance, with the tenant's `settings` as JSON text.
    fn init(_settings: &str) -> Result<(), String> {
        Ok(())
    }
    /// A WebSocket handshake: accept, defer authentication, or reject. `req.query()` comes
    /// with the call; its other methods (`req.header("x-token")`, `req.remote()`, ...) ask
    /// relay for just what they return.
    fn on_handshake(req: &HandshakeRequest<'_>) -> Result<HandshakeDecision, String>;
    /// A client message.
    fn on_event(_conn: ConnInfo, _event: ClientEvent) -> Result<Vec<Action>, String> {
        Ok(Vec::new())
    }
    /// A backend push over HTTP or UDP. Default: 404.
    fn on_ingress(_req: IngressRequest) -> Result<IngressOutcome, String> {
        Ok(respond(
            404,
            &serde_json::json!({"error": "not found"}),
            Vec::new(),
        ))
    }
    /// A connection ended.
    fn on_disconnect(_conn: ConnInfo, _info: DisconnectInfo) -> Result<Vec<Action>, String> {
        Ok(Vec::new())
    }
}

/// Export an `impl Plugin for YourType { ... }` block as the component's plugin: put
/// `#[relay_plugin_sdk::plugin]` on the block. relay calls only the optional hooks the
/// block defines (the others behave as the trait's defaults without a call).
pub use relay_plugin_sdk_macros::plugin;

/// Host services: logging, time, randomness, the tenant's key-value store, presence.
pub mod host {
    pub use crate::bindings::relay::plugin::host::*;

    /// Log at info level.
    pub fn info(msg: &str) {
        log(super::Level::Info, msg)
    }

    /// Log at warn level.
    pub fn warn(msg: &str) {
        log(super::Level::Warn, msg)
    }
}

/// Signature helpers: digests, hex, and comparison in constant time.
pub mod sign {
    use md5::{Digest, Md5};
    use subtle::ConstantTimeEq;

    /// Lowercase hex of `bytes`.
    pub fn hex(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = vec![0u8; bytes.len() * 2];
        for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        // Only ASCII hex digits were written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// `md5(data)` as lowercase hex, the form every seed scheme uses.
    pub fn md5_hex(data: &[u8]) -> String {
        hex(&Md5::digest(data))
    }

    /// `md5` of the concatenation of `parts` as lowercase hex: `md5_hex_of(&[user, ts, key])`
    /// is `md5_hex(format!("{user}{ts}{key}"))` without building the string.
    pub fn md5_hex_of(parts: &[&[u8]]) -> String {
        hex(&md5_of(parts))
    }

    /// The `md5` digest of the concatenation of `parts` (compare it with [`verify_hex`]).
    pub fn md5_of(parts: &[&[u8]]) -> [u8; 16] {
        let mut h = Md5::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    /// HMAC-SHA256 of `msg` under `key` (RFC 2104): sign [`canonical`] text with it.
    pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
            .expect("HMAC accepts keys of every length");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    /// [`hmac_sha256`] as lowercase hex.
    pub fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
        hex(&hmac_sha256(key, msg))
    }

    /// Whether `received` (hex, either case) is the HMAC-SHA256 of `msg` under `key`,
    /// compared in constant time.
    pub fn verify_hmac_sha256_hex(key: &[u8], msg: &[u8], received: &str) -> bool {
        verify_hex(&hmac_sha256(key, msg), received)
    }

    /// The text to sign for `fields`: each on its own line (`a\nb\nc`). Sign this, never
    /// the bare concatenation: with `user + ts`, a signature issued to user `bob0` at
    /// `ts = 1700000000` also fits user `bob` at `ts = 01700000000`. `None` when a field
    /// holds a line break or NUL (it could fake a field boundary).
    pub fn canonical(fields: &[&str]) -> Option<String> {
        if fields.iter().any(|f| f.contains(['\n', '\r', '\0'])) {
            return None;
        }
        Some(fields.join("\n"))
    }

    /// A Unix timestamp written the one canonical way: decimal digits only, no sign, no
    /// leading zero (but `0` itself), at most 19 digits. A lenient parse (`+17…`, `017…`)
    /// lets one signed text stand for several requests.
    pub fn unix_secs(ts: &str) -> Option<u64> {
        let b = ts.as_bytes();
        let canonical = !b.is_empty()
            && b.len() <= 19
            && b.iter().all(u8::is_ascii_digit)
            && (b[0] != b'0' || b.len() == 1);
        canonical.then(|| ts.parse().ok()).flatten()
    }

    /// Whether `received` is `expected` written in hex (either case), compared in constant
    /// time like [`verify`], without building the expected text. (Decoding `received`, the
    /// client's own text, uses a table: only the comparison with `expected` must not
    /// depend on its bytes.)
    pub fn verify_hex(expected: &[u8], received: &str) -> bool {
        let r = received.as_bytes();
        if r.len() != expected.len() * 2 {
            return false;
        }
        let mut diff = 0u8;
        for (pair, &want) in r.chunks_exact(2).zip(expected) {
            let (hi, lo) = (
                HEX_VALUE[usize::from(pair[0])],
                HEX_VALUE[usize::from(pair[1])],
            );
            if (hi | lo) & 0xf0 != 0 {
                return false; // not hex: says nothing about `expected`
            }
            diff |= ((hi << 4) | lo) ^ want;
        }
        bool::from(diff.ct_eq(&0))
    }

    /// Each byte's value as a hex digit, 0xff for non-digits.
    static HEX_VALUE: [u8; 256] = {
        let mut t = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };

    /// Compare a secret the client sent (an API key, a token, a base64 signature) with
    /// the expected one in constant time, byte for byte: case matters. Only the length
    /// can show through timing.
    pub fn equal(expected: &str, received: &str) -> bool {
        let (a, b) = (expected.as_bytes(), received.as_bytes());
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }

    /// Renamed [`verify_ignoring_case`]: it ignores ASCII case, which is right only for
    /// hex digests. Use [`equal`] for keys and tokens.
    #[deprecated(
        note = "use `equal` (case matters) or, for hex digests only, `verify_ignoring_case`"
    )]
    pub fn verify(expected: &str, received: &str) -> bool {
        verify_ignoring_case(expected, received)
    }

    /// Compare a received hex signature with the expected one without leaking, through
    /// timing, how many leading characters matched. ASCII case is ignored, so use it for
    /// hex digests only (`ABC1` is `abc1`); for keys and tokens use [`equal`].
    pub fn verify_ignoring_case(expected: &str, received: &str) -> bool {
        let (a, b) = (expected.as_bytes(), received.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        // Every byte is looked at whatever the others hold (no early exit, no branch on
        // the data); eight at a time.
        let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let mut diff = 0u64;
        for (x, y) in (&mut ca).zip(&mut cb) {
            diff |= lower8(word(x)) ^ lower8(word(y));
        }
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            diff |= u64::from(x.to_ascii_lowercase() ^ y.to_ascii_lowercase());
        }
        bool::from(diff.ct_eq(&0))
    }

    fn word(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    }

    /// ASCII lowercase of eight bytes at once (bytes of 0x80 and above unchanged).
    fn lower8(w: u64) -> u64 {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let h = w & LOW7;
        // Per byte, no carries between bytes: the high bit says `h >= b'A'`, `h > b'Z'`.
        let at_least_a = h + 0x3f3f_3f3f_3f3f_3f3f;
        let past_z = h + 0x2525_2525_2525_2525;
        let upper = at_least_a & !past_z & !w & HIGH;
        w | (upper >> 2)
    }
}

/// Encodings the seed schemes use.
pub mod encoding {
    use base64::Engine as _;

    /// Decode base64 written in a variant alphabet: `subst` gives the characters used in
    /// place of `+`, `/` and `=` (e.g. `['*', ':', '_']`). Padding is optional.
    pub fn base64_decode(text: &str, subst: [char; 3]) -> Option<Vec<u8>> {
        let std: String = text
            .trim()
            .chars()
            .map(|c| match c {
                c if c == subst[0] => '+',
                c if c == subst[1] => '/',
                c if c == subst[2] => '=',
                c => c,
            })
            .collect();
        base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(std)
        .ok()
    }
}

/// Replay defence: timestamp windows and one-time nonces kept in the tenant's store.
pub mod replay {
    /// Whether `ts_secs` (Unix seconds) is within `window_secs` of the host's clock.
    pub fn within_window(ts_secs: i64, window_secs: u64) -> bool {
        let now = (crate::host::now_ms() / 1000) as i64;
        now.abs_diff(ts_secs) <= window_secs
    }

    /// For a timestamp inside the window (as [`within_window`]), the seconds (at least 1)
    /// until it leaves it: how long its nonce must be remembered (`first_use`'s `ttl_secs`).
    /// `None` outside the window. One clock read for both checks.
    pub fn window_left(ts_secs: i64, window_secs: u64) -> Option<u32> {
        let now = (crate::host::now_ms() / 1000) as i64;
        if now.abs_diff(ts_secs) > window_secs {
            return None;
        }
        let until = ts_secs.saturating_add(window_secs.min(i64::MAX as u64) as i64);
        Some(until.saturating_sub(now).clamp(1, u32::MAX.into()) as u32)
    }

    /// `true` the first time `nonce` is presented within `ttl_secs` (per `scope`), `false`
    /// on every reuse. Backed by the tenant's key-value store, so it holds across
    /// instances; pick `ttl_secs` at least as long as the nonce could be valid.
    pub fn first_use(scope: &str, nonce: &str, ttl_secs: u32) -> bool {
        let mut key = String::with_capacity(8 + scope.len() + nonce.len());
        for part in ["replay:", scope, ":", nonce] {
            key.push_str(part);
        }
        crate::host::kv_set_if_absent(&key, b"", Some(ttl_secs))
    }
}

/// First value of a query parameter in a raw (URL-encoded) query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let [v] = query_params(query, [name]);
    v.map(Cow::into_owned)
}

/// The first value of each of `names` in a raw (URL-encoded) query string, decoded, in
/// one pass over the query: `let [user, ts] = query_params(query, ["user", "ts"]);`.
/// Values that need no decoding are borrowed from the query (no copy).
pub fn query_params<'q, const N: usize>(
    query: &'q str,
    names: [&str; N],
) -> [Option<Cow<'q, str>>; N] {
    // Decodes only what it must (the keys that need it and the values returned) and
    // reads the query once: hooks run on every handshake. (One loop that notes `=`,
    // `%` and `+` as it looks for `&` compiles to less WebAssembly work than `split`,
    // `split_once` or separate searches.)
    let mut found: [Option<Cow<'q, str>>; N] = std::array::from_fn(|_| None);
    let mut missing = N;
    let b = query.as_bytes();
    let mut i = 0;
    while i < b.len() && missing > 0 {
        // One pair, in one pass: where it ends, its `=`, whether key or value is encoded.
        let start = i;
        let mut eq = None;
        let (mut key_encoded, mut value_encoded) = (false, false);
        while i < b.len() && b[i] != b'&' {
            match (b[i], eq) {
                (b'=', None) => eq = Some(i),
                (b'%' | b'+', None) => key_encoded = true,
                (b'%' | b'+', Some(_)) => value_encoded = true,
                _ => {}
            }
            i += 1;
        }
        let end = i;
        i += 1;
        if start == end {
            continue;
        }
        // Cut at ASCII bytes, so every piece is still a `str`.
        let (k, v) = match eq {
            Some(e) => (&query[start..e], &query[e + 1..end]),
            None => (&query[start..end], ""),
        };
        let decoded_key = key_encoded.then(|| decode_bytes(k.as_bytes()));
        let key = decoded_key.as_deref().unwrap_or(k.as_bytes());
        for (slot, name) in found.iter_mut().zip(names) {
            if slot.is_none() && key == name.as_bytes() {
                *slot = Some(if value_encoded {
                    Cow::Owned(utf8(decode_bytes(v.as_bytes())))
                } else {
                    Cow::Borrowed(v)
                });
                missing -= 1;
            }
        }
    }
    found
}

/// Text from decoded bytes (invalid UTF-8 becomes U+FFFD).
fn utf8(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Percent- and `+`-decoding of URL-encoded bytes.
fn decode_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// All parameters of a URL-encoded string (`a=1&b=x%20y`: a query or an
/// `application/x-www-form-urlencoded` body), decoded (`+` is a space).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// Percent-decode (and `+` → space); invalid escapes are kept as they are.
pub fn url_decode(s: &str) -> String {
    utf8(decode_bytes(s.as_bytes()))
}

/// Parameters of a form body (`application/x-www-form-urlencoded`); invalid UTF-8 is replaced.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    query_pairs(&String::from_utf8_lossy(body))
}

/// Parse JSON text a hook was given (`conn.data`, `event.data`, `req.auth()`):
/// `Value::Null` when absent or not JSON.
pub fn parse_json(text: Option<&str>) -> serde_json::Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A Socket.IO event's arguments (`event.data`, a JSON array); empty when absent.
pub fn event_args(data: Option<&str>) -> Vec<serde_json::Value> {
    match parse_json(data) {
        serde_json::Value::Array(a) => a,
        _ => Vec::new(),
    }
}

/// A header's value (names are lowercase).
pub fn header<'a>(headers: &'a [Pair], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_str())
}

/// A message whose data is `value` serialized as JSON. Its event name (for Socket.IO
/// clients) is the value's `event` field when that is a string; ws-json ignores it.
pub fn message(value: &serde_json::Value) -> Message {
    Message {
        event: value
            .get("event")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        data: value.to_string(),
        ack: None,
        spread: false,
    }
}

/// A Socket.IO event `name` with `data` as its one argument.
pub fn event(name: &str, data: &serde_json::Value) -> Message {
    Message {
        event: Some(name.to_owned()),
        data: data.to_string(),
        ack: None,
        spread: false,
    }
}

/// A Socket.IO event `name` with any number of arguments, sent as they are (`null`
/// among them): `event_with_args("message-back", &[json!(1), json!("2")])` goes out as
/// `42["message-back",1,"2"]`. Objects `{"$binary": "<base64>"}` among them travel as
/// binary attachments.
pub fn event_with_args(name: &str, args: &[serde_json::Value]) -> Message {
    Message {
        event: Some(name.to_owned()),
        data: serde_json::Value::Array(args.to_vec()).to_string(),
        ack: None,
        spread: true,
    }
}

/// The answer to a client's acknowledgement request with any number of arguments:
/// returned as a `reply` from `on_event`, `ack_with_args(&[json!(null)])` goes out as
/// `43<id>[null]` and `ack_with_args(&[])` as `43<id>[]`.
pub fn ack_with_args(args: &[serde_json::Value]) -> Action {
    Action::Reply(Message {
        event: None,
        data: serde_json::Value::Array(args.to_vec()).to_string(),
        ack: None,
        spread: true,
    })
}

/// engine.io profile: a text message (sent as it is) for `reply`/`emit` actions.
pub fn text_message(text: &str) -> Message {
    Message {
        event: None,
        data: serde_json::Value::String(text.to_owned()).to_string(),
        ack: None,
        spread: false,
    }
}

/// engine.io profile: a binary message (`{"$binary": "<base64>"}`); the other profiles
/// send the same object as JSON (ws-json) or as a binary attachment (Socket.IO).
pub fn binary_message(bytes: &[u8]) -> Message {
    Message {
        event: None,
        data: {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            serde_json::json!({ "$binary": b64 }).to_string()
        },
        ack: None,
        spread: false,
    }
}

/// Reply to the connection the hook is about.
pub fn reply(value: &serde_json::Value) -> Action {
    Action::Reply(message(value))
}

/// Emit to a target.
pub fn emit(target: Target, value: &serde_json::Value) -> Action {
    Action::Emit(Emit {
        target,
        message: message(value),
        exclude_sender: false,
    })
}

/// Deliver `value` to `user` now if they are online, else keep it durably until one of
/// their connections is next identified. Shape it as an offline message should look.
pub fn keep_for_user(user: &str, value: &serde_json::Value) -> Action {
    Action::StoreOffline(Offline {
        user: Some(user.to_owned()),
        room: None,
        message: message(value),
    })
}

/// Deliver `value` to `room` now if anyone is in it, else keep it durably until someone
/// next joins the room (then the whole room gets it).
pub fn keep_for_room(room: &str, value: &serde_json::Value) -> Action {
    Action::StoreOffline(Offline {
        user: None,
        room: Some(room.to_owned()),
        message: message(value),
    })
}

/// Append `line` (add your own newline) to the tenant's message log file `file`.
pub fn append_log(file: &str, line: &str) -> Action {
    Action::AppendLog(LogLine {
        file: file.to_owned(),
        line: line.to_owned(),
    })
}

/// Join rooms (the hook's connection).
pub fn join(rooms: Vec<String>) -> Action {
    Action::Join(Membership { rooms, conn: None })
}

/// Identify the hook's connection as `user` (marks it authenticated).
pub fn identify(user: &str) -> Action {
    Action::SetIdentity(Identity {
        user: Some(user.to_owned()),
        data: None,
        conn: None,
    })
}

/// Close the hook's connection.
pub fn close(code: u16, reason: &str) -> Action {
    Action::Close(Close {
        code,
        reason: reason.to_owned(),
        conn: None,
    })
}

/// Accept a handshake as `user`, joining `rooms`.
pub fn accept(user: Option<String>, rooms: Vec<String>) -> HandshakeDecision {
    HandshakeDecision::Accept(Accept {
        user,
        data: None,
        rooms,
        headers: Vec::new(),
        actions: Vec::new(),
    })
}

/// Reject a handshake with a status and a plain-text body.
pub fn reject(status: u16, body: &str) -> HandshakeDecision {
    HandshakeDecision::Reject(Reject {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
        actions: Vec::new(),
    })
}

/// An ingress response with a JSON body.
pub fn respond(status: u16, body: &serde_json::Value, actions: Vec<Action>) -> IngressOutcome {
    IngressOutcome {
        status,
        headers: vec![Pair {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: body.to_string().into_bytes(),
        actions,
    }
}

// Run on the host: `cargo test -p relay-plugin-sdk --target <host triple>` in `plugins/`
// (relay's `tests/tests/e2e/sdk.rs` does, as part of the workspace's tests).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_is_exact_and_hmac_matches_rfc_4231() {
        assert!(sign::equal("Key-123", "Key-123"));
        assert!(!sign::equal("Key-123", "key-123"), "case matters for keys");
        assert!(!sign::equal("Key-123", "Key-12"));
        assert!(!sign::equal("", "x"));
        assert!(sign::equal("", ""));
        // RFC 4231, test case 2.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            sign::hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            want
        );
        assert!(sign::verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &want.to_ascii_uppercase()
        ));
        assert!(!sign::verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want?",
            want
        ));
    }

    #[test]
    fn canonical_signing_text_and_timestamps_have_one_form() {
        assert_eq!(
            sign::canonical(&["bob0", "1700000000", "k"]).as_deref(),
            Some("bob0\n1700000000\nk")
        );
        assert_ne!(
            sign::canonical(&["bob0", "1700000000", "k"]),
            sign::canonical(&["bob", "01700000000", "k"])
        );
        assert_eq!(sign::canonical(&["a\nb", "1", "k"]), None);
        assert_eq!(sign::canonical(&["a", "1\r", "k"]), None);
        assert_eq!(sign::unix_secs("1700000000"), Some(1_700_000_000));
        assert_eq!(sign::unix_secs("0"), Some(0));
        for bad in [
            "",
            "01700000000",
            "+1700000000",
            "-1",
            "1e9",
            " 1",
            "17000000000000000000",
        ] {
            assert_eq!(sign::unix_secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_param_decodes_only_what_it_returns() {
        let q = "a=1&user=ann%20b&b+c=x+y&empty=&flag&a=2&bad=%zz&utf=%E4%BD%A0";
        assert_eq!(
            query_param(q, "a").as_deref(),
            Some("1"),
            "the first of two"
        );
        assert_eq!(query_param(q, "user").as_deref(), Some("ann b"));
        assert_eq!(
            query_param(q, "b c").as_deref(),
            Some("x y"),
            "keys decode too"
        );
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(
            query_param(q, "bad").as_deref(),
            Some("%zz"),
            "bad escapes stay"
        );
        assert_eq!(query_param(q, "utf").as_deref(), Some("你"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("", "a"), None);
        assert_eq!(
            query_params(q, ["utf", "a", "missing", "user"]),
            [
                Some("你".into()),
                Some("1".into()),
                None,
                Some("ann b".into())
            ],
            "several names in one pass"
        );
        assert_eq!(
            url_decode("%E4%BD"),
            "\u{FFFD}",
            "invalid UTF-8 is replaced"
        );
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn signatures_compare_ignoring_hex_case() {
        let good = sign::md5_hex(b"ann1700000000key");
        assert_eq!(
            sign::md5_hex_of(&[b"ann", b"1700000000", b"key"]),
            good,
            "parts hash as their concatenation"
        );
        assert!(sign::verify_ignoring_case(
            &good,
            &good.to_ascii_uppercase()
        ));
        assert!(
            !sign::verify_ignoring_case(&good, &good[1..]),
            "length differs"
        );
        let mut bad = good.clone().into_bytes();
        bad[31] = if bad[31] == b'0' { b'1' } else { b'0' };
        assert!(!sign::verify_ignoring_case(
            &good,
            std::str::from_utf8(&bad).unwrap()
        ));
        assert_eq!(sign::md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(sign::hex(&[0x00, 0x9f, 0xff]), "009fff");
        let digest = sign::md5_of(&[b"ann", b"1700000000", b"key"]);
        assert_eq!(sign::hex(&digest), good);
        assert!(sign::verify_hex(&digest, &good));
        assert!(sign::verify_hex(&digest, &good.to_ascii_uppercase()));
        assert!(!sign::verify_hex(&digest, &good[..31]));
        for (i, c) in [(0, 'g'), (5, ':'), (31, '@'), (30, '`'), (2, ' ')] {
            let mut bad = good.clone().into_bytes();
            bad[i] = c as u8;
            assert!(
                !sign::verify_hex(&digest, std::str::from_utf8(&bad).unwrap()),
                "{c} at {i}"
            );
        }
        let other = sign::md5_hex(b"other");
        assert!(!sign::verify_hex(&digest, &other));
        // Case folding eight bytes at a time agrees with the byte-wise one, for every byte.
        for b in 0..=255u8 {
            let s = [b; 11];
            let t = [b.to_ascii_lowercase(); 11];
            let (s, t) = (String::from_utf8_lossy(&s), String::from_utf8_lossy(&t));
            assert!(sign::verify_ignoring_case(&s, &t), "byte {b:#x}");
        }
        assert!(sign::verify_ignoring_case(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ@[`{",
            "abcdefghijklmnopqrstuvwxyz@[`{"
        ));
        assert!(
            !sign::verify_ignoring_case("@[`{@[`{", "`{@[`{@["),
            "neighbours of A-Z are not letters"
        );
        assert!(
            !sign::verify_ignoring_case("ÄÖÜÉ", "äöüé"),
            "only ASCII case is ignored"
        );
        assert!(sign::verify_ignoring_case("ÄÖxÜÉ", "ÄÖXÜÉ"));
    }
}
