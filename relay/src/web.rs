//! Small HTTP response helpers shared by the router, the sessions and ingress. A leaf:
//! it imports nothing else of the crate, so any layer may use it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderMap;
use hyper::Response;

/// What every handler answers with.
pub type HttpResponse = Response<Full<Bytes>>;

/// A plain-text response (or whatever body is given) with a status; invalid statuses become 500.
pub fn text_response(status: u16, body: &str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// A JSON response: `body` with status and `content-type: application/json`.
pub fn json_response(status: u16, body: &serde_json::Value) -> HttpResponse {
    let mut r = text_response(status, &body.to_string());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Set a header; a value that is not a valid header value is left out.
pub fn set_header(r: &mut HttpResponse, name: &'static str, value: &str) {
    if let Ok(v) = http::HeaderValue::try_from(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Add (name, value) pairs, as policies give them; invalid names or values are left out.
pub fn insert_headers(r: &mut HttpResponse, pairs: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
}

/// Headers as (lowercase name, value) pairs; values that are not UTF-8 are skipped.
pub fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

/// An upgrade's `101 Switching Protocols` with the body type every handler answers with.
pub fn switching_protocols(resp: Response<http_body_util::Empty<Bytes>>) -> HttpResponse {
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The path a front proxy routes on, so relay routes the same way: percent-encoded
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, other escapes kept (hex in
/// upper case). Refused: dot segments (`/./`, `/../`, after decoding too), malformed
/// escapes, and an encoded NUL or slash (`%00`, `%2F`), which proxies disagree on.
pub fn normalize_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    let dots = |p: &str| p.split('/').any(|seg| seg == "." || seg == "..");
    let b = raw.as_bytes();
    if !b.contains(&b'%') {
        // Nothing to decode (a path need not start with `/`: `./` has a dot segment too;
        // found by the `path` fuzz target).
        return match dots(raw) {
            true => Err("dot segments in the path"),
            false => Ok(std::borrow::Cow::Borrowed(raw)),
        };
    }
    let hex = |c: &u8| (*c as char).to_digit(16).map(|d| d as u8);
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('%') {
        // Text between escapes is copied as text (it may hold UTF-8; found by the `path`
        // fuzz target when bytes were copied one by one).
        out.push_str(&rest[..i]);
        let esc = rest.as_bytes();
        let (Some(h), Some(l)) = (esc.get(i + 1).and_then(hex), esc.get(i + 2).and_then(hex))
        else {
            return Err("malformed percent-escape in the path");
        };
        match h << 4 | l {
            0 | b'/' | b'\\' => return Err("encoded NUL, slash or backslash in the path"),
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(c as char)
            }
            c => out.push_str(&format!("%{c:02X}")),
        }
        // Two ASCII hex digits: `i + 3` is a character boundary.
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if dots(&out) {
        return Err("dot segments in the path");
    }
    Ok(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn paths_are_normalised_as_a_proxy_sees_them_or_refused() {
        for (raw, want) in [
            ("/push", "/push"),
            ("/%6Fther/push", "/other/push"),
            ("/a%2db/%7e", "/a-b/~"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/b.", "/a/b."),
            ("/\u{3a4}%31", "/\u{3a4}1"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "/other/../push",
            "/other/..",
            "/./push",
            "/%2e%2e/push",
            "/%2E/x",
            "/a%2Fb",
            "/a%00",
            "/a%5c",
            "/a%zz",
            "/a%4",
            "./",
            "../x",
            ".",
            "x/..",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }
}
