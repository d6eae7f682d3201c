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
