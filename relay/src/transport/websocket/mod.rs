//! WebSocket: the upgrade checks and the upgrade itself, the frame reader that holds a
//! buffer only while a client talks ([`lazy`]), the read loop ([`read`]) and the batching
//! writer ([`writer`]).

pub mod lazy;
pub mod read;
pub mod writer;

use std::time::Duration;

use fastwebsockets::upgrade::UpgradeFut;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::Request;

use crate::web::{switching_protocols, text_response, HttpResponse};

/// How long a connection waits for the peer's close frame after sending its own (and for
/// its writer to drain).
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The `Origin` values a listener accepts for WebSocket and Engine.IO requests.
#[derive(Debug, Default, Clone)]
pub struct Origins(Vec<String>);

impl Origins {
    /// Accept these origins (`*`: any); none at all accepts every origin.
    pub fn new(allowed: Vec<String>) -> Self {
        Origins(allowed)
    }

    /// Whether `origin` is listed by name (`*` does not count): only those get Engine.IO's
    /// `access-control-allow-credentials`.
    pub fn listed(&self, origin: &str) -> bool {
        self.0
            .iter()
            .any(|a| a != "*" && a.eq_ignore_ascii_case(origin))
    }

    /// Whether a request's `Origin` is allowed (no header: not a browser, allowed).
    pub fn allowed(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match headers.get(hyper::header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            Some(Ok(o)) => self.0.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
            Some(Err(_)) => false,
        }
    }
}

/// Accept a WebSocket upgrade: the `101` to answer with and the connection to come. A
/// malformed upgrade gets its `400` instead (boxed: the error path is rare). Rejecting after this is still possible: the
/// upgrade only happens if the `101` is sent.
pub fn accept(
    req: &mut Request<Incoming>,
) -> Result<(HttpResponse, UpgradeFut), Box<HttpResponse>> {
    if !key_well_formed(req.headers()) {
        // fastwebsockets checks only that the key is there; RFC 6455 §4.2.1 wants 16
        // random bytes, base64-encoded.
        return Err(Box::new(text_response(
            400,
            "bad websocket handshake: Sec-WebSocket-Key must be 16 bytes in base64\n",
        )));
    }
    match fastwebsockets::upgrade::upgrade(req) {
        Ok((resp, fut)) => Ok((switching_protocols(resp), fut)),
        Err(e) => Err(Box::new(text_response(
            400,
            &format!("bad websocket handshake: {e}\n"),
        ))),
    }
}

/// Whether `Sec-WebSocket-Key` is present and is the base64 of exactly 16 bytes.
fn key_well_formed(headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    headers
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .ok()
        })
        .is_some_and(|bytes| bytes.len() == 16)
}
