//! WebSocket: the upgrade checks and the upgrade itself.

use hyper::header::HeaderMap;

/// The `Origin` values a listener accepts for WebSocket and Engine.IO requests.
#[derive(Debug, Default, Clone)]
pub struct Origins(Vec<String>);

impl Origins {
    /// Accept these origins (`*`: any); none at all accepts every origin.
    pub fn new(allowed: Vec<String>) -> Self {
        Origins(allowed)
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
